//! `coresvc run`: the long-running agent. Loads the configuration, brings up
//! the dataplane, serves the control socket. On SIGINT/SIGTERM it stops its
//! services (leases durable) and, with `agent.on_stop = "keep"` (the
//! default), leaves the programs attached through their pinned links, as
//! after SIGKILL: they keep forwarding until a new agent adopts them. With
//! `"detach"` it detaches them. Maps always stay pinned for the next start.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::{Context as _, Result};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};
use tracing::{error, info, warn};

use crate::{
    config::Config,
    ctl::{self, Request, Response},
    dataplane::{self, Dataplane},
    tftp::Tftp,
};

/// Overrides of the configuration's agent paths (the lab gives each instance its own).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub pin_dir: Option<PathBuf>,
    pub control_socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
}

impl Overrides {
    pub fn apply(&self, cfg: &mut Config) {
        if let Some(p) = &self.pin_dir {
            cfg.agent.pin_dir = p.clone();
        }
        if let Some(p) = &self.control_socket {
            cfg.agent.control_socket = p.clone();
        }
        if let Some(p) = &self.state_dir {
            cfg.agent.state_dir = p.clone();
        }
    }
}

struct Agent {
    started: Instant,
    config_path: PathBuf,
    overrides: Overrides,
    config: std::sync::RwLock<Arc<Config>>,
    plan: std::sync::RwLock<crate::routing::Plan>,
    routing: Arc<crate::routing::Routing>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    dataplane: Mutex<Option<Dataplane>>,
    /// DNS and DHCP: started and stopped by authority switches.
    services: std::sync::RwLock<Services>,
    tftp: Option<Tftp>,
    /// The last comparison with the production infrastructure (production mode).
    truth: crate::authority::check::Monitor,
}

/// The services an authority switch starts and stops.
#[derive(Default)]
struct Services {
    dns: Option<Arc<crate::dns::Dns>>,
    dhcp: Option<crate::dhcp::Dhcp>,
    /// Watches the served segments for other DHCP servers.
    watcher: Option<crate::authority::Watcher>,
    /// Segments refused at the last activation, and why.
    refused: Vec<crate::authority::SegmentProbe>,
}

impl Services {
    /// Starts DNS, then DHCP (which registers names in DNS), on the
    /// segments `refused` leaves, and the watch for other DHCP servers.
    fn start(
        cfg: &Config,
        refused: Vec<crate::authority::SegmentProbe>,
        plan: &crate::routing::Plan,
    ) -> Result<Services> {
        // DNS fills the XDP answer cache in the maps the dataplane pinned.
        let xdp_cache = crate::dns::xdp::XdpCache::open(&cfg.agent.pin_dir, cfg.dns_cache_on())?;
        let dns = crate::dns::Dns::start(cfg, Some(xdp_cache))?.map(Arc::new);
        let skip: Vec<String> = refused.iter().map(|p| p.segment.clone()).collect();
        let dhcp = match crate::dhcp::Dhcp::start(cfg, dns.clone(), &skip) {
            Ok(d) => d,
            Err(e) => {
                if let Some(d) = &dns {
                    d.stop();
                }
                return Err(e);
            }
        };
        let watcher = dhcp.as_ref().filter(|_| cfg.dhcp.probe_wait_ms > 0).map(|d| {
            let watched = cfg
                .segments
                .iter()
                .filter(|s| d.interfaces().contains(&s.interface))
                .map(|s| (s.name.clone(), s.interface.clone()))
                .collect();
            let every = std::time::Duration::from_secs(u64::from(cfg.dhcp.watch_interval.secs()));
            crate::authority::Watcher::start(watched, crate::authority::held(plan), every)
        });
        Ok(Services { dns, dhcp, watcher, refused })
    }

    /// Stops DHCP first (its leases made durable), then DNS.
    fn stop(&mut self) -> Vec<String> {
        let mut done = Vec::new();
        if let Some(w) = self.watcher.take() {
            w.stop();
        }
        if let Some(d) = self.dhcp.take() {
            d.stop();
            done.push("dhcp: stopped serving (leases kept)".to_string());
        }
        if let Some(d) = self.dns.take() {
            d.stop();
            done.push("dns: stopped serving".to_string());
        }
        self.refused.clear();
        done
    }
}

/// The segment addresses of `mode`, without those another host holds.
fn plan_for(
    cfg: &Config,
    mode: crate::config::AuthorityMode,
    refused: &[crate::authority::SegmentProbe],
) -> crate::routing::Plan {
    let mut plan = crate::routing::plan(cfg, mode);
    for p in refused.iter().filter(|p| p.address_conflict()) {
        plan.addresses.retain(|a| a.ifname != p.interface);
    }
    plan
}

impl Agent {
    fn config(&self) -> Arc<Config> {
        self.config.read().expect("config lock").clone()
    }

    /// Applies the configuration file again: the firewall (atomically), the
    /// dataplane settings, addresses and routes, and DNS (zones, services,
    /// upstreams). Everything fallible is prepared before anything changes,
    /// so a bad file changes nothing. Changes to the segments, the uplink
    /// interface or the agent's paths need a restart.
    async fn reload(&self) -> Result<Vec<String>> {
        let _one = self.reloading.lock().await;
        let mut next = crate::check::load(&self.config_path)?;
        self.overrides.apply(&mut next);
        let cur = self.config();
        // The authority mode is run-time state (`coresvc authority`), not the file's.
        next.agent.authority = cur.agent.authority;
        let mut restart = Vec::new();
        let seg =
            |c: &Config| c.segments.iter().map(|s| (s.name.clone(), s.interface.clone(), s.cidr)).collect::<Vec<_>>();
        if seg(&cur) != seg(&next) {
            restart.push("segments (names, interfaces, networks)");
        }
        if cur.uplink.as_ref().map(|u| &u.interface) != next.uplink.as_ref().map(|u| &u.interface) {
            restart.push("uplink.interface");
        }
        if cur.agent.pin_dir != next.agent.pin_dir
            || cur.agent.control_socket != next.agent.control_socket
            || cur.agent.state_dir != next.agent.state_dir
            || (&cur.agent.control_group, &cur.agent.control_users)
                != (&next.agent.control_group, &next.agent.control_users)
        {
            restart.push("agent paths (and control socket access)");
        }
        if cur.dataplane.conntrack_max != next.dataplane.conntrack_max
            || cur.dataplane.xdp_mode != next.dataplane.xdp_mode
        {
            restart.push("dataplane.conntrack_max / xdp_mode");
        }
        if serde_json::to_string(&cur.tftp).ok() != serde_json::to_string(&next.tftp).ok() {
            restart.push("[tftp]");
        }
        if cur.agent.metrics_listen != next.agent.metrics_listen {
            restart.push("agent.metrics_listen");
        }
        if !restart.is_empty() {
            anyhow::bail!("not reloaded, nothing changed: these changes need a restart: {}", restart.join(", "));
        }
        // Prepare: everything that can fail, before anything changes.
        let compiled = crate::dataplane::rules::compile(&next)?;
        let dns = self.services.read().expect("services lock").dns.clone();
        if dns.is_some() {
            crate::dns::build::build(&next, 1).map_err(|errs| {
                anyhow::anyhow!("{}", errs.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))
            })?;
        }
        let refused = self.services.read().expect("services lock").refused.clone();
        let plan = plan_for(&next, next.agent.authority, &refused);
        crate::routing::check_plan(&plan)?;
        // Apply.
        let mut done = Vec::new();
        {
            let mut dp = self.dataplane.lock().expect("dataplane lock");
            let dp = dp.as_mut().ok_or_else(|| anyhow::anyhow!("the dataplane is shutting down"))?;
            dp.reconfigure(&next, &plan, compiled)?;
            done.push(format!("firewall: {} rules active", dp.rules_count()));
        }
        let applied = self.routing.apply(&plan).await?;
        done.extend(applied.added.iter().map(|a| format!("routing: added {a}")));
        done.extend(applied.removed.iter().map(|a| format!("routing: removed {a}")));
        if let Some(dns) = &dns {
            dns.reconfigure(&next)?;
            done.push(format!("dns: {} zones", dns.status().zones.len()));
        }
        if dhcp_changed(&cur, &next) {
            // Pools, hosts and options: DHCP starts again on the new
            // configuration with every lease kept (the journal).
            let mut services = self.services.write().expect("services lock");
            if let Some(d) = services.dhcp.take() {
                d.stop();
                let skip: Vec<String> = services.refused.iter().map(|p| p.segment.clone()).collect();
                services.dhcp = crate::dhcp::Dhcp::start(&next, services.dns.clone(), &skip)?;
                done.push(format!(
                    "dhcp: serving the new pools, hosts and options on {}",
                    services.dhcp.as_ref().map(|d| d.interfaces().join(", ")).unwrap_or_else(|| "nothing".into())
                ));
            }
        }
        *self.plan.write().expect("plan lock") = plan;
        *self.config.write().expect("config lock") = Arc::new(next);
        for d in &done {
            info!("reload: {d}");
        }
        Ok(done)
    }

    /// `coresvc status`: everything in one view.
    fn status(&self) -> Result<ctl::Status> {
        let services = self.services.read().expect("services lock");
        let dp = self.dataplane.lock().expect("dataplane lock");
        let dp = dp.as_ref().ok_or_else(|| anyhow::anyhow!("the dataplane is shutting down"))?;
        let d = dp.status().context("reading counters")?;
        Ok(ctl::Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            config: self.config_path.clone(),
            authority: self.config().agent.authority,
            dataplane: d,
            dns: services.dns.as_ref().map(|d| d.status()),
            routing: self.plan.read().expect("plan lock").clone(),
            dhcp: services.dhcp.as_ref().map(|d| d.status()),
            refused: services.refused.clone(),
            foreign_dhcp: services.watcher.as_ref().map(|w| w.sightings()).unwrap_or_default(),
            tftp: self.tftp.as_ref().map(Tftp::status),
            control: ctl::stats(),
            truth: self.truth.last(),
        })
    }

    fn dns(&self) -> Result<Arc<crate::dns::Dns>, Response> {
        self.services.read().expect("services lock").dns.clone().ok_or_else(|| Response::Error {
            message: "DNS is not running (disabled in the configuration, or production mode)".into(),
        })
    }

    /// `coresvc authority MODE`: switches live, in an order that never has
    /// two authorities answering: to production, stop serving, then release
    /// the gateway addresses (and persist); to bootstrap, make sure nobody
    /// else serves DHCP or holds the addresses, take them, then serve (and
    /// persist). Every step is logged and returned.
    async fn switch(&self, to: crate::config::AuthorityMode, force: bool) -> Result<Vec<String>> {
        use crate::{authority, config::AuthorityMode};
        let _one = self.reloading.lock().await;
        let cur = self.config();
        if cur.agent.authority == to {
            return Ok(vec![format!("already in {} mode; nothing changed", authority::name(to))]);
        }
        let mut next = (*cur).clone();
        next.agent.authority = to;
        let mut steps = Vec::new();
        let log = |steps: &mut Vec<String>, s: String| {
            info!("authority: {s}");
            steps.push(s);
        };
        match to {
            AuthorityMode::Production => {
                // Only onto a production side that serves the same records.
                let held = authority::held(&self.plan.read().expect("plan lock"));
                for s in crate::handoff::verify(&cur, held, force).await? {
                    log(&mut steps, s);
                }
                // The fast path stops answering first, then the agent's services.
                if let Some(dp) = self.dataplane.lock().expect("dataplane lock").as_mut() {
                    dp.set_dns_serving(false, &next)?;
                    log(&mut steps, "dns: XDP answer cache off".to_string());
                }
                let stopped = self.services.write().expect("services lock").stop();
                for s in stopped {
                    log(&mut steps, s);
                }
                // Every lease is durable now: hand them over.
                for s in crate::handoff::hand_over(&next).await {
                    log(&mut steps, s);
                }
                if let Some(t) = &self.tftp {
                    t.apply_authority(to)?;
                    log(
                        &mut steps,
                        format!(
                            "tftp: {}",
                            if t.status().serving { "serving on the reserved addresses" } else { "stopped serving" }
                        ),
                    );
                }
                // From here a restart comes back in production: never two authorities.
                authority::persist(&next.agent.state_dir, to)?;
                log(
                    &mut steps,
                    format!("persisted production mode in {}", authority::mode_file(&next.agent.state_dir).display()),
                );
                let plan = plan_for(&next, to, &[]);
                self.apply_plan(&next, &plan, &mut steps).await?;
            }
            AuthorityMode::Bootstrap => {
                // The production DHCP stops answering (lease API), so its leases are final.
                let paused = crate::handoff::pause_production(&next).await?;
                if let Some(s) = &paused {
                    log(&mut steps, s.clone());
                }
                let wait = std::time::Duration::from_millis(u64::from(next.dhcp.probe_wait_ms));
                if !wait.is_zero() {
                    let held = authority::held(&self.plan.read().expect("plan lock"));
                    let probes = authority::probe(&next, wait, held).await?;
                    let conflicts: Vec<String> = probes
                        .iter()
                        .filter(|p| !p.findings.is_empty())
                        .map(|p| {
                            let f: Vec<String> = p.findings.iter().map(ToString::to_string).collect();
                            format!("segment {} ({}): {}", p.segment, p.interface, f.join("; "))
                        })
                        .collect();
                    if !conflicts.is_empty() {
                        if paused.is_some() {
                            crate::handoff::resume_production(&next).await;
                        }
                        anyhow::bail!(
                            "not switched to bootstrap, nothing changed: another authority is active:\n  {}\n\
                             switch it off first (exclusive activation, seed §3)",
                            conflicts.join("\n  ")
                        );
                    }
                    log(
                        &mut steps,
                        format!("probed {} segment(s): no other DHCP server, gateway addresses free", probes.len()),
                    );
                }
                // The production leases into the journal before DHCP serves.
                match crate::handoff::take_back(&next).await {
                    Ok(taken) => {
                        for s in taken {
                            log(&mut steps, s);
                        }
                    }
                    Err(e) => {
                        if paused.is_some() {
                            crate::handoff::resume_production(&next).await;
                        }
                        return Err(e.context("not switched to bootstrap, nothing changed"));
                    }
                }
                let plan = plan_for(&next, to, &[]);
                self.apply_plan(&next, &plan, &mut steps).await?;
                if let Some(t) = &self.tftp {
                    t.apply_authority(to)?;
                    log(&mut steps, "tftp: serving on the gateway addresses".to_string());
                }
                let services = Services::start(&next, Vec::new(), &plan)?;
                if let Some(d) = &services.dns {
                    log(
                        &mut steps,
                        format!(
                            "dns: serving on {}",
                            d.status().listen.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                        ),
                    );
                }
                if let Some(d) = &services.dhcp {
                    log(&mut steps, format!("dhcp: serving on {}", d.interfaces().join(", ")));
                }
                if let Some(dp) = self.dataplane.lock().expect("dataplane lock").as_mut() {
                    dp.set_dns_serving(services.dns.is_some(), &next)?;
                    if services.dns.is_some() && next.dns_cache_on() {
                        log(&mut steps, "dns: XDP answer cache on".to_string());
                    }
                }
                *self.services.write().expect("services lock") = services;
                self.truth.clear();
                authority::persist(&next.agent.state_dir, to)?;
                log(
                    &mut steps,
                    format!("persisted bootstrap mode in {}", authority::mode_file(&next.agent.state_dir).display()),
                );
            }
        }
        *self.config.write().expect("config lock") = Arc::new(next);
        Ok(steps)
    }

    /// Brings addresses and routes to `plan`, and the dataplane with them.
    async fn apply_plan(&self, cfg: &Config, plan: &crate::routing::Plan, steps: &mut Vec<String>) -> Result<()> {
        let applied = self.routing.apply(plan).await?;
        // (In the order they happened.)
        for a in &applied.removed {
            info!("authority: routing: released {a}");
            steps.push(format!("routing: released {a}"));
        }
        for a in &applied.added {
            info!("authority: routing: took {a}");
            steps.push(format!("routing: took {a}"));
        }
        if let Some(dp) = self.dataplane.lock().expect("dataplane lock").as_mut() {
            dp.set_addresses(cfg, plan)?;
        }
        // Neighbours that knew the previous holder learn the new one at once.
        for a in plan.addresses.iter().filter(|a| cfg.segments.iter().any(|s| s.interface == a.ifname)) {
            if let Err(e) = crate::authority::announce(&a.ifname, a.addr.addr()) {
                warn!("authority: announcing {} on {}: {e:#}", a.addr.addr(), a.ifname);
            }
        }
        *self.plan.write().expect("plan lock") = plan.clone();
        Ok(())
    }
}

impl crate::metrics::Source for Agent {
    fn scrape(&self) -> Result<String> {
        let status = self.status()?;
        let rules = match self.dataplane.lock().expect("dataplane lock").as_ref() {
            Some(dp) => dp.rules_status(&self.config())?,
            None => Vec::new(),
        };
        Ok(crate::metrics::render(&status, &rules))
    }
}

impl ctl::Handler for Agent {
    async fn handle(&self, req: Request) -> Response {
        match req {
            Request::Status => match self.status() {
                Ok(st) => Response::Status(Box::new(st)),
                Err(e) => Response::Error { message: format!("{e:#}") },
            },
            Request::Rules => match self.dataplane.lock().expect("dataplane lock").as_ref() {
                Some(dp) => match dp.rules_status(&self.config()) {
                    Ok(rules) => Response::Rules { rules },
                    Err(e) => Response::Error { message: format!("reading rules: {e:#}") },
                },
                None => Response::Error { message: "the dataplane is shutting down".into() },
            },
            Request::Flows => match self.dataplane.lock().expect("dataplane lock").as_ref() {
                Some(dp) => match dp.flows() {
                    Ok(flows) => Response::Flows { flows },
                    Err(e) => Response::Error { message: format!("reading connections: {e:#}") },
                },
                None => Response::Error { message: "the dataplane is shutting down".into() },
            },
            Request::ServiceMove { service, host } => match self.dns() {
                Ok(dns) => match dns.service_move(&service, &host) {
                    Ok(m) => Response::Moved(m),
                    Err(e) => Response::Error { message: format!("{e:#}") },
                },
                Err(r) => r,
            },
            Request::ZoneExport { zone } => match self.dns() {
                Ok(dns) => match dns.export(zone.as_deref()) {
                    Some(text) => Response::ZoneText { text },
                    None => Response::Error { message: format!("no zone {} is served", zone.unwrap_or_default()) },
                },
                Err(r) => r,
            },
            Request::Reload => match self.reload().await {
                Ok(changes) => Response::Reloaded { changes },
                Err(e) => Response::Error { message: format!("{e:#}") },
            },
            Request::DnsCache => match self.dns() {
                Ok(dns) => Response::Cache { entries: dns.resolver.cache.list(crate::dns::cache::now_ns()) },
                Err(r) => r,
            },
            Request::DnsFlush => match self.dns() {
                Ok(dns) => match dns.flush() {
                    Ok(entries) => {
                        info!("dns: cache flushed ({entries} entries; XDP answer cache invalidated)");
                        Response::Flushed { entries }
                    }
                    Err(e) => Response::Error { message: format!("{e:#}") },
                },
                Err(r) => r,
            },
            Request::Authority { mode, force } => match self.switch(mode, force).await {
                Ok(steps) => Response::Switched { steps },
                Err(e) => Response::Error { message: format!("{e:#}") },
            },
            Request::AuthorityCheck => {
                let held = crate::authority::held(&self.plan.read().expect("plan lock"));
                match crate::authority::check::run(&self.config(), held).await {
                    Ok(r) => Response::Checked { report: Box::new(r) },
                    Err(e) => Response::Error { message: format!("{e:#}") },
                }
            }
            Request::ImportLeases { leases } => {
                let dhcp = self.services.read().expect("services lock").dhcp.as_ref().map(|d| d.importer());
                match dhcp {
                    Some(d) => match crate::handoff::import(&self.config(), &d, leases).await {
                        Ok((records, conflicts, skipped)) => Response::Imported { records, conflicts, skipped },
                        Err(e) => Response::Error { message: format!("{e:#}") },
                    },
                    None => Response::Error {
                        message: "DHCP is not running here (production mode?): stop the agent and use \
                                  `coresvc import-leases --offline`, or switch to bootstrap (which imports)"
                            .into(),
                    },
                }
            }
            Request::Leases => match &self.services.read().expect("services lock").dhcp {
                Some(d) => Response::Leases { leases: d.leases() },
                None => Response::Error {
                    message: "DHCP is not running (disabled, no pools or static hosts, or production mode)".into(),
                },
            },
            Request::ZoneReload => match self.dns() {
                Ok(dns) => match dns.zone_reload() {
                    Ok(zones) => Response::Zones { zones },
                    Err(e) => Response::Error {
                        message: format!("zone reload refused, the current zones keep serving:\n{e:#}"),
                    },
                },
                Err(r) => r,
            },
        }
    }
}

/// In production mode, compares the production infrastructure with
/// coresvc's records every `authority.check_interval` ("conflicting truth":
/// a log line and a metric).
async fn watch_truth(agent: Arc<Agent>) {
    loop {
        let cfg = agent.config();
        let every = cfg.authority.as_ref().map_or(0, |a| a.check_interval.secs());
        if every == 0 {
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            continue;
        }
        tokio::time::sleep(std::time::Duration::from_secs(u64::from(every))).await;
        let cfg = agent.config();
        if cfg.agent.authority != crate::config::AuthorityMode::Production {
            continue;
        }
        let held = crate::authority::held(&agent.plan.read().expect("plan lock"));
        match crate::authority::check::run(&cfg, held).await {
            Ok(r) => agent.truth.record(&r),
            Err(e) => warn!("authority: the periodic check failed: {e:#}"),
        }
    }
}

pub async fn run(config_path: PathBuf, mut config: Config, overrides: Overrides) -> Result<()> {
    overrides.apply(&mut config);
    dataplane::ensure_supported()?;
    std::fs::create_dir_all(&config.agent.state_dir)
        .with_context(|| format!("creating state directory {}", config.agent.state_dir.display()))?;
    // The control socket first: it refuses to start a second agent on the
    // same socket before that one's dataplane is touched.
    let listener = ctl::bind(&config.agent).await?;
    let metrics_listener = match config.agent.metrics_listen {
        Some(addr) => Some(crate::metrics::bind(addr).await?),
        None => None,
    };
    let level = dataplane::aya_level(&config.agent.log);
    // Addresses, routes and forwarding first: the interfaces' addresses are
    // the "gateway" zone of the firewall.
    config.agent.authority = crate::authority::effective(&config)?;
    info!("authority: {} mode", crate::authority::name(config.agent.authority));
    // Exclusive activation: in bootstrap mode, nobody else may serve DHCP on
    // a segment coresvc serves, or hold a gateway address it takes.
    let mut refused = Vec::new();
    if config.agent.authority == crate::config::AuthorityMode::Bootstrap && config.dhcp.probe_wait_ms > 0 {
        let wait = std::time::Duration::from_millis(u64::from(config.dhcp.probe_wait_ms));
        // Nothing of coresvc's answers yet: every answer is someone else's.
        for p in crate::authority::probe(&config, wait, Vec::new()).await? {
            if p.findings.is_empty() {
                continue;
            }
            for f in &p.findings {
                error!(
                    segment = %p.segment, interface = %p.interface,
                    "authority: {f}: coresvc does not activate there ({})",
                    if p.address_conflict() { "no gateway address, no DHCP" } else { "no DHCP" }
                );
            }
            refused.push(p);
        }
    }
    let plan = plan_for(&config, config.agent.authority, &refused);
    crate::routing::check_plan(&plan)?;
    let routing = Arc::new(crate::routing::Routing::new()?);
    let applied = routing.apply(&plan).await?;
    for m in &applied.missing {
        warn!("routing: {m} does not exist yet; applied when it appears");
    }
    // The uplink's address when the host configures it (DHCP, by hand).
    let uplink_found = match config.uplink.as_ref().filter(|u| u.address.is_none()) {
        Some(u) => routing.ipv4_of(&u.interface).await?,
        None => None,
    };
    check_nat_ports(&config)?;
    let mut dp = Dataplane::start(&config, &config.agent.pin_dir, level, &plan, uplink_found)?;
    if let Some(logger) = dp.logger.take() {
        // SAFETY: the logger owns its ring buffer's fd, which stays open for
        // as long as the AsyncFd holds the logger.
        let mut fd = unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("registering the eBPF log buffer: {e}"))?;
        tokio::spawn(async move {
            loop {
                let Ok(mut guard) = fd.readable_mut().await else { break };
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        });
    }
    // Services: each starts only if the configuration and the authority
    // mode ask for it; DHCP not on segments another server answers.
    let overrides = overrides.clone();
    let services = match Services::start(&config, refused, &plan) {
        Ok(s) => s,
        Err(e) => {
            dp.detach();
            return Err(e);
        }
    };
    // The programs answer from the DNS cache only while the DNS service runs.
    dp.set_dns_serving(services.dns.is_some(), &config)?;
    // ---- services, after the dataplane is up -------------------------------
    // TFTP (issue 5): boot files on the segments, while the authority mode allows.
    let tftp = match Tftp::start(&config, config.agent.authority) {
        Ok(t) => t,
        Err(e) => {
            dp.detach();
            return Err(anyhow::Error::new(e).context("starting the tftp server"));
        }
    };
    // ---- end of services ----------------------------------------------------
    let agent = Arc::new(Agent {
        started: Instant::now(),
        config_path,
        overrides,
        config: std::sync::RwLock::new(Arc::new(config.clone())),
        plan: std::sync::RwLock::new(plan.clone()),
        routing: routing.clone(),
        reloading: tokio::sync::Mutex::new(()),
        dataplane: Mutex::new(Some(dp)),
        services: std::sync::RwLock::new(services),
        tftp,
        truth: Default::default(),
    });
    let gc = tokio::spawn(conntrack_gc(agent.clone()));
    let truth = tokio::spawn(watch_truth(agent.clone()));
    let names: Vec<String> = dataplane::interfaces(&config, &plan, None).into_iter().map(|i| i.name).collect();
    let links = tokio::spawn(follow_links(agent.clone(), crate::routing::watch_links(names)?));
    // Everything privileged is done: only what running needs stays (privileges.rs).
    if let Err(e) = crate::privileges::drop_after_start() {
        error!("privileges: {e:#}; running with the capabilities it was started with");
    }
    // The control socket answers (and so the agent looks ready) only once
    // the capabilities are gone: nobody sees a started agent holding more.
    let metrics = metrics_listener.map(|l| crate::metrics::serve(l, agent.clone()));
    let server = tokio::spawn(ctl::serve(listener, agent.clone()));
    info!(socket = %config.agent.control_socket.display(), "coresvc {} running", env!("CARGO_PKG_VERSION"));

    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut hup = tokio::signal::unix::signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: stopping"); break; }
            _ = int.recv() => { info!("SIGINT: stopping"); break; }
            _ = hup.recv() => {
                info!("SIGHUP: reloading {}", agent.config_path.display());
                if let Err(e) = agent.reload().await {
                    error!("reload refused: {e:#}");
                }
            }
        }
    }
    server.abort();
    if let Some(m) = metrics {
        m.abort();
    }
    gc.abort();
    truth.abort();
    links.abort();
    let _ = std::fs::remove_file(&config.agent.control_socket);
    // Leases durable before the process ends.
    let _ = agent.services.write().expect("services lock").stop();
    let dp = agent.dataplane.lock().expect("dataplane lock").take();
    let on_stop = agent.config().agent.on_stop;
    match dp {
        Some(dp) if on_stop == crate::config::OnStop::Detach => dp.detach(),
        Some(mut dp) => {
            let grace = std::time::Duration::from_secs(u64::from(config.agent.dns_after_stop.secs()));
            if let Err(e) = dp.end_dns_cache_after(grace) {
                warn!("cannot set the end of the XDP DNS answers: {e:#}");
            }
            // The pinned links hold the programs: closing our handles at exit
            // changes nothing for them (as after a crash).
            std::mem::forget(dp);
            info!(
                "programs stay attached (agent.on_stop = \"keep\"): forwarding and NAT go on until the next start \
                 adopts them, cached DNS answers for {}s more; `coresvc unpin` takes them down",
                grace.as_secs()
            );
        }
        None => error!("dataplane already gone at shutdown"),
    }
    info!("stopped; maps stay pinned in {}", config.agent.pin_dir.display());
    Ok(())
}

/// Removes expired connections every few seconds.
async fn conntrack_gc(agent: Arc<Agent>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tick.tick().await;
        let mut dp = agent.dataplane.lock().expect("dataplane lock");
        let Some(dp) = dp.as_mut() else { break };
        match dp.gc() {
            Ok(0) => {}
            Ok(n) => tracing::debug!("conntrack: removed {n} expired connection(s)"),
            Err(e) => warn!("conntrack gc: {e:#}"),
        }
        match dp.gc_bindings() {
            Ok(0) => {}
            Ok(n) => tracing::debug!("nat: removed {n} unused binding(s)"),
            Err(e) => warn!("nat gc: {e:#}"),
        }
        if let Err(e) = dp.reconcile_quotas() {
            warn!("quotas: {e:#}");
        }
    }
}

/// Interfaces that disappear and return get their programs, addresses and
/// routes back without a restart.
async fn follow_links(agent: Arc<Agent>, mut events: tokio::sync::mpsc::Receiver<crate::routing::LinkEvent>) {
    use crate::routing::LinkEvent;
    while let Some(ev) = events.recv().await {
        match ev {
            LinkEvent::Present(name) => {
                let attached = {
                    let mut dp = agent.dataplane.lock().expect("dataplane lock");
                    match dp.as_mut().map(|dp| dp.attach_iface(&name)) {
                        Some(Ok(done)) => done,
                        Some(Err(e)) => {
                            warn!(interface = %name, "attaching: {e:#}");
                            false
                        }
                        None => return,
                    }
                };
                if attached {
                    info!(interface = %name, "interface (re)appeared: programs attached");
                }
                let plan = agent.plan.read().expect("plan lock").clone();
                if let Err(e) = agent.routing.apply(&plan).await {
                    warn!(interface = %name, "routing: {e:#}");
                }
            }
            LinkEvent::Gone(name) => {
                if let Some(dp) = agent.dataplane.lock().expect("dataplane lock").as_mut() {
                    dp.forget_iface(&name);
                }
            }
        }
    }
}

/// True when DHCP's part of the configuration changed (pools, hosts,
/// options, times, PXE).
fn dhcp_changed(cur: &Config, next: &Config) -> bool {
    let j = |c: &Config| serde_json::to_string(&c.dhcp).unwrap_or_default();
    j(cur) != j(next)
}

/// Masqueraded connections and the gateway's own share the uplink address:
/// the NAT port range must stay clear of the kernel's ephemeral ports.
fn check_nat_ports(cfg: &Config) -> Result<()> {
    if cfg.uplink.is_none() || !cfg.segments.iter().any(|s| s.nat) {
        return Ok(());
    }
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut it = text.split_whitespace().filter_map(|n| n.parse::<u16>().ok());
    let (Some(lo), Some(hi)) = (it.next(), it.next()) else { return Ok(()) };
    let (min, max) = (cfg.nat.port_min, cfg.nat.port_max);
    if min <= hi && lo <= max {
        anyhow::bail!(
            "nat.port_min..nat.port_max ({min}-{max}) overlaps the kernel's ephemeral ports ({lo}-{hi}, \
             net.ipv4.ip_local_port_range) that the gateway uses for its own connections on the same address; \
             choose a NAT range outside {lo}-{hi}, e.g. 20000-{}",
            lo.saturating_sub(1)
        );
    }
    Ok(())
}
