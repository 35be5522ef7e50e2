//! `coresvc run`: the long-running agent. Loads the configuration, brings up
//! the dataplane, serves the control socket, and on SIGINT/SIGTERM detaches
//! cleanly (maps stay pinned for the next start). On SIGKILL the pinned links
//! keep the programs running until a new agent adopts them.

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
    dns: Option<Arc<crate::dns::Dns>>,
    dhcp: Option<crate::dhcp::Dhcp>,
    tftp: Option<Tftp>,
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
        let mut next = Config::load(&self.config_path)?;
        self.overrides.apply(&mut next);
        let cur = self.config();
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
        {
            restart.push("agent paths");
        }
        if cur.dataplane.conntrack_max != next.dataplane.conntrack_max
            || cur.dataplane.xdp_mode != next.dataplane.xdp_mode
        {
            restart.push("dataplane.conntrack_max / xdp_mode");
        }
        if !restart.is_empty() {
            anyhow::bail!("not reloaded, nothing changed: these changes need a restart: {}", restart.join(", "));
        }
        // Prepare: everything that can fail, before anything changes.
        let compiled = crate::dataplane::rules::compile(&next)?;
        if self.dns.is_some() {
            crate::dns::build::build(&next, 1).map_err(|errs| {
                anyhow::anyhow!("{}", errs.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))
            })?;
        }
        let plan = crate::routing::plan(&next, next.agent.authority);
        crate::routing::check_plan(&plan)?;
        // Apply.
        let mut done = Vec::new();
        {
            let mut dp = self.dataplane.lock().expect("dataplane lock");
            let dp = dp.as_mut().ok_or_else(|| anyhow::anyhow!("the dataplane is shutting down"))?;
            dp.reconfigure(&next, compiled)?;
            done.push(format!("firewall: {} rules active", dp.rules_count()));
        }
        let applied = self.routing.apply(&plan).await?;
        done.extend(applied.added.iter().map(|a| format!("routing: added {a}")));
        done.extend(applied.removed.iter().map(|a| format!("routing: removed {a}")));
        if let Some(dns) = &self.dns {
            dns.reconfigure(&next)?;
            done.push(format!("dns: {} zones", dns.status().zones.len()));
        }
        *self.plan.write().expect("plan lock") = plan;
        *self.config.write().expect("config lock") = Arc::new(next);
        for d in &done {
            info!("reload: {d}");
        }
        Ok(done)
    }

    fn dns(&self) -> Result<&crate::dns::Dns, Response> {
        self.dns.as_deref().ok_or_else(|| Response::Error {
            message: "DNS is not running (disabled in the configuration, or production mode)".into(),
        })
    }
}

impl ctl::Handler for Agent {
    async fn handle(&self, req: Request) -> Response {
        match req {
            Request::Status => {
                let dp = self.dataplane.lock().expect("dataplane lock");
                let Some(dp) = dp.as_ref() else {
                    return Response::Error { message: "the dataplane is shutting down".into() };
                };
                match dp.status() {
                    Ok(d) => Response::Status(Box::new(ctl::Status {
                        version: env!("CARGO_PKG_VERSION").to_string(),
                        pid: std::process::id(),
                        uptime_secs: self.started.elapsed().as_secs(),
                        config: self.config_path.clone(),
                        authority: self.config().agent.authority,
                        dataplane: d,
                        dns: self.dns.as_ref().map(|d| d.status()),
                        routing: self.plan.read().expect("plan lock").clone(),
                        dhcp: self.dhcp.as_ref().map(|d| d.status()),
                        tftp: self.tftp.as_ref().map(Tftp::status),
                    })),
                    Err(e) => Response::Error { message: format!("reading counters: {e:#}") },
                }
            }
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
            Request::Leases => match &self.dhcp {
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

pub async fn run(config_path: PathBuf, mut config: Config, overrides: Overrides) -> Result<()> {
    overrides.apply(&mut config);
    dataplane::ensure_supported()?;
    std::fs::create_dir_all(&config.agent.state_dir)
        .with_context(|| format!("creating state directory {}", config.agent.state_dir.display()))?;
    // The control socket first: it refuses to start a second agent on the
    // same socket before that one's dataplane is touched.
    let listener = ctl::bind(&config.agent.control_socket).await?;
    let level = dataplane::aya_level(&config.agent.log);
    // Addresses, routes and forwarding first: the interfaces' addresses are
    // the "gateway" zone of the firewall.
    let plan = crate::routing::plan(&config, config.agent.authority);
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
    // Services: each starts only if the configuration and the authority mode ask for it.
    // DNS fills the XDP answer cache in the maps the dataplane pinned.
    let xdp_cache = crate::dns::xdp::XdpCache::open(&config.agent.pin_dir, config.dns_cache_on())?;
    let dns = crate::dns::Dns::start(&config, Some(xdp_cache))?.map(Arc::new);
    dp.set_dns_serving(dns.is_some(), &config)?;
    let overrides = overrides.clone();
    // DHCP: leases from the state directory; client names go into DNS.
    let dhcp = crate::dhcp::Dhcp::start(&config, dns.clone())?;
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
        dns,
        dhcp,
        tftp,
    });
    let server = tokio::spawn(ctl::serve(listener, agent.clone()));
    let gc = tokio::spawn(conntrack_gc(agent.clone()));
    let names: Vec<String> = dataplane::interfaces(&config, &plan, None).into_iter().map(|i| i.name).collect();
    let links = tokio::spawn(follow_links(agent.clone(), crate::routing::watch_links(names)?));
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
    gc.abort();
    links.abort();
    let _ = std::fs::remove_file(&config.agent.control_socket);
    let dp = agent.dataplane.lock().expect("dataplane lock").take();
    if let Some(dp) = dp {
        dp.detach();
    } else {
        error!("dataplane already gone at shutdown");
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
