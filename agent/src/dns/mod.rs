//! The DNS service: authoritative for the local zones (the seed's naming
//! model), a caching forwarder for everything else, on UDP and TCP port 53 of
//! each segment's active address. Only clients on the segments are served.
//!
//! Live changes: `coresvc service move` repoints a service (persisted in the
//! state directory and applied again at start), `coresvc zone reload` re-reads
//! zone files; both swap in a new catalog atomically and refuse bad data.
//!
//! Every change (those two, DHCP registrations, reloads) goes through
//! [`Dns::publish`], one at a time: the new catalog gets new epochs for what
//! changed, is swapped in, and the epochs are written to the XDP answer
//! cache before the change returns, so no cached answer of the old data is
//! served after it (see `xdp`).
//!
//! `publish` also gives every zone whose content changed a higher serial
//! and journals the differences (`journal`, for IXFR), and hands the zone
//! to the NOTIFY task (`notify`); transfers and TSIG are `xfr` and `tsig`.

pub mod answers;
pub mod build;
pub mod cache;
pub mod check;
pub mod forward;
pub mod handler;
pub mod journal;
mod mmsg;
pub mod notify;
pub mod rrl;
pub mod server;
pub mod stats;
pub mod tsig;
pub mod wire;
pub mod xdp;
pub mod xfr;
pub mod zone;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    str::FromStr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, anyhow, bail};
use hickory_proto::rr::{
    Name, RData, Record, RecordType,
    rdata::{A, CNAME, PTR},
};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use self::{
    cache::Cache,
    forward::Forwarder,
    handler::Resolver,
    stats::{Snapshot, Stats},
    xdp::{Epoch, XdpCache},
    zone::Catalog,
};
use crate::config::{AuthorityMode, Config};

/// The file under the state directory that keeps service moves across restarts.
const MOVES_FILE: &str = "dns-service-moves.json";

pub struct Dns {
    pub resolver: Arc<Resolver>,
    config: Mutex<Config>,
    /// service FQDN → target FQDN, applied on top of the configuration.
    moves: Mutex<BTreeMap<String, String>>,
    /// Names registered by DHCP clients: FQDN → address.
    dynamic: Mutex<BTreeMap<Name, Ipv4Addr>>,
    /// Held while a change reads, changes and publishes the catalog: one
    /// change at a time, none lost.
    changing: Mutex<()>,
    /// The last epoch handed out; never reused (see `xdp`).
    epoch: AtomicU64,
    moves_path: PathBuf,
    listen: Vec<SocketAddr>,
    tasks: Mutex<Vec<server::Worker>>,
    /// The differences IXFR answers with (see `journal`).
    journal: Arc<Mutex<journal::Journal>>,
    /// Zone serials saved across restarts.
    serials: Mutex<journal::Serials>,
    /// NOTIFY to the secondaries (while serving).
    notifier: Mutex<Option<notify::Notifier>>,
}

/// `coresvc status`'s DNS part.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DnsStatus {
    pub listen: Vec<SocketAddr>,
    pub zones: Vec<ZoneStatus>,
    pub cache_entries: usize,
    /// The bytes the cache's entries are counted for (at most `dns.cache_bytes`).
    #[serde(default)]
    pub cache_bytes: usize,
    /// Entries evicted to stay within `dns.cache_size` and `dns.cache_bytes`.
    #[serde(default)]
    pub cache_evictions: u64,
    pub service_moves: BTreeMap<String, String>,
    pub counters: Snapshot,
    /// The XDP answer cache as the service sees it (absent without a dataplane).
    #[serde(default)]
    pub xdp_cache: Option<XdpCacheStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct XdpCacheStatus {
    /// Filled and answering (`dataplane.dns_cache`).
    pub enabled: bool,
    /// Entries in the map, current or waiting to be reused.
    pub entries: usize,
    /// The catalog's epoch (entries of older ones are never served).
    pub epoch: u64,
}

/// What a change to the zone data touched.
enum Changed {
    /// Everything (a rebuild: zones may have come or gone).
    All,
    /// The zones containing these names.
    Names(Vec<Name>),
    /// These zones (indices in the catalog), the zone list unchanged.
    Zones(Vec<usize>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ZoneStatus {
    pub name: String,
    pub kind: zone::ZoneKind,
    pub serial: u32,
    pub names: usize,
}

/// The result of `coresvc service move`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Moved {
    pub service: String,
    pub from: String,
    pub to: String,
}

fn now_serial() -> u32 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as u32).unwrap_or(1)
}

/// A user's name as an absolute lower-case name: `a.b.c` and `a.b.c.` are
/// absolute; a single label is relative to `zone` when given.
fn user_name(s: &str, zone: Option<&Name>) -> Result<Name> {
    let t = s.trim();
    let n = match (t.contains('.'), zone) {
        (false, Some(z)) => Name::from_str(t)?.append_domain(z)?,
        _ => Name::from_str(&format!("{}.", t.trim_end_matches('.')))?,
    };
    Ok(n.to_lowercase())
}

impl Dns {
    /// Builds the zones and starts serving, unless DNS is disabled or the
    /// authority mode is production (dedicated infrastructure answers then).
    /// With `xdp`, its answers go into the XDP answer cache.
    pub fn start(cfg: &Config, xdp: Option<XdpCache>) -> Result<Option<Dns>> {
        if !cfg.dns.enabled {
            info!("dns: disabled in the configuration");
            return Ok(None);
        }
        if cfg.agent.authority == AuthorityMode::Production {
            info!("dns: inactive in production mode");
            return Ok(None);
        }
        let mut dns = Dns::new(cfg)?;
        if let Some(x) = xdp {
            dns.attach_xdp(Arc::new(x))?;
        }
        dns.serve(cfg)?;
        Ok(Some(dns))
    }

    /// Fills `x` from now on. Epochs continue above any in its map, and the
    /// catalog gets new ones: entries of a previous run are never served.
    pub fn attach_xdp(&self, x: Arc<XdpCache>) -> Result<()> {
        self.epoch.fetch_max(x.max_epoch(), Ordering::SeqCst);
        self.resolver.set_xdp(x);
        self.renew_all()
    }

    /// New epochs for everything in force: every XDP cache entry is invalid.
    fn renew_all(&self) -> Result<()> {
        let _one = self.changing.lock().expect("changing lock");
        self.publish((*self.resolver.catalog()).clone(), Changed::All)
    }

    /// `coresvc dns flush`: empties the forwarder's cache and invalidates
    /// every entry of the XDP answer cache (new epochs) before it returns.
    /// Returns how many entries the agent's cache held.
    pub fn flush(&self) -> Result<usize> {
        let entries = self.resolver.cache.len();
        self.resolver.cache.clear();
        self.renew_all()?;
        Ok(entries)
    }

    fn next_epoch(&self) -> u64 {
        self.epoch.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Gives `catalog` new epochs for what `changed`, swaps it in, then
    /// writes the epochs to the XDP cache (the catalog's first, so entries
    /// of older catalogs are invalid before anything else is written).
    /// Called with `changing` held.
    fn publish(&self, mut catalog: Catalog, changed: Changed) -> Result<()> {
        let mut writes: Vec<Epoch> = Vec::new();
        let bump = |catalog: &mut Catalog, i: usize, writes: &mut Vec<Epoch>| {
            let e = self.next_epoch();
            catalog.zone_epochs[i] = e;
            if let Some(slot) = xdp::zone_slot(i) {
                writes.push((slot, e));
            }
        };
        let zones: Vec<usize> = match changed {
            Changed::All => {
                catalog.epoch = self.next_epoch();
                writes.push((0, catalog.epoch));
                (0..catalog.zone_epochs.len()).collect()
            }
            Changed::Zones(zones) => zones,
            Changed::Names(names) => {
                let mut zones: Vec<usize> = names.iter().filter_map(|n| catalog.zone_index(n)).collect();
                zones.sort_unstable();
                zones.dedup();
                zones
            }
        };
        for i in zones {
            bump(&mut catalog, i, &mut writes);
        }
        let notify = self.stamp(&mut catalog);
        self.resolver.set_catalog(catalog);
        self.serials.lock().expect("serials lock").save(self.resolver.catalog().zones());
        if let Some(n) = self.notifier.lock().expect("notifier lock").as_ref() {
            n.changed(notify);
        }
        if let Some(x) = self.resolver.xdp() {
            x.write_epochs(&writes).context("invalidating the XDP answer cache")?;
        }
        Ok(())
    }

    /// Serials for `next` after the catalog in force: a zone whose content
    /// changed gets a serial above its old one and a journal entry; one
    /// whose content did not keeps its serial. Returns the zones changed.
    fn stamp(&self, next: &mut Catalog) -> Vec<Name> {
        let old = self.resolver.catalog();
        let mut journal = self.journal.lock().expect("journal lock");
        let mut changed = Vec::new();
        for n in next.zone_arcs_mut() {
            let Some(o) = old.zone_arcs().iter().find(|o| o.origin == n.origin) else {
                journal.clear(&n.origin);
                changed.push(n.origin.clone());
                continue;
            };
            if Arc::ptr_eq(o, n) {
                continue;
            }
            if o.same_data(n) {
                *n = o.clone();
                continue;
            }
            if !journal::serial_gt(n.serial(), o.serial()) {
                Arc::make_mut(n).set_serial(journal::next_serial(o.serial(), now_serial()));
            }
            journal.record(o, n);
            changed.push(n.origin.clone());
        }
        for o in old.zones() {
            if !next.zones().any(|z| z.origin == o.origin) {
                journal.clear(&o.origin);
            }
        }
        changed
    }

    /// The service's state (zones, cache, forwarder) without sockets.
    pub fn new(cfg: &Config) -> Result<Dns> {
        let moves_path = cfg.agent.state_dir.join(MOVES_FILE);
        let moves = load_moves(&moves_path);
        let mut catalog = build_with_moves(cfg, &moves)?;
        // Serials go on from the last run's (the same content keeps its serial).
        let serials = journal::Serials::load(&cfg.agent.state_dir);
        for z in catalog.zone_arcs_mut() {
            let s = serials.resume(z, now_serial());
            if s != z.serial() {
                Arc::make_mut(z).set_serial(s);
            }
        }
        let stats = Arc::new(Stats::default());
        let forwarder = forwarder_for(cfg, stats.clone());
        let cache = Cache::new(
            cfg.dns.cache_size,
            cfg.dns.cache_bytes.0,
            cfg.dns.max_ttl.secs(),
            cfg.dns.max_negative_ttl.secs(),
        );
        let clients = cfg.segments.iter().map(|s| ipnet::IpNet::V4(s.cidr.trunc())).collect();
        let resolver = Arc::new(Resolver::new(catalog, forwarder, cache, stats, clients));
        resolver.set_rate_limit(&cfg.dns.rate_limit);
        let journal = Arc::new(Mutex::new(journal::Journal::default()));
        resolver.set_xfr(xfr_for(cfg, &journal)?);
        let mut serials = serials;
        serials.save(resolver.catalog().zones());
        Ok(Dns {
            resolver,
            config: Mutex::new(cfg.clone()),
            moves: Mutex::new(moves),
            dynamic: Mutex::new(BTreeMap::new()),
            changing: Mutex::new(()),
            epoch: AtomicU64::new(0),
            moves_path,
            listen: Vec::new(),
            tasks: Mutex::new(Vec::new()),
            journal,
            serials: Mutex::new(serials),
            notifier: Mutex::new(None),
        })
    }

    /// Binds UDP and TCP port 53 on every segment's gateway address.
    fn serve(&mut self, cfg: &Config) -> Result<()> {
        let tcp = server::TcpLimits::new(
            cfg.dns.tcp_max_connections as usize,
            cfg.dns.tcp_max_per_client as usize,
            Duration::from_secs(u64::from(cfg.dns.tcp_idle_timeout.secs())),
            Duration::from_secs(u64::from(cfg.dns.tcp_write_timeout.secs())),
        );
        for s in &cfg.segments {
            let addr = SocketAddr::new(s.gateway.into(), 53);
            let tasks = server::serve(addr, self.resolver.clone(), tcp.clone())?;
            self.tasks.get_mut().expect("dns tasks lock").extend(tasks);
            self.listen.push(addr);
        }
        let sources = cfg.segments.iter().map(|s| (s.cidr.trunc(), s.gateway)).collect();
        let n = notify::Notifier::start(self.resolver.clone(), sources);
        // Secondaries learn of this run's serials at once.
        n.changed(self.resolver.catalog().zones().map(|z| z.origin.clone()));
        *self.notifier.get_mut().expect("notifier lock") = Some(n);
        info!(
            "dns: serving {} zone(s) on {}",
            self.resolver.catalog().zones().count(),
            self.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
        );
        Ok(())
    }

    pub fn status(&self) -> DnsStatus {
        let catalog = self.resolver.catalog();
        DnsStatus {
            listen: self.listen.clone(),
            zones: catalog
                .zones()
                .map(|z| ZoneStatus {
                    name: z.origin.to_string(),
                    kind: z.kind,
                    serial: z.serial(),
                    names: z.nodes.len(),
                })
                .collect(),
            cache_entries: self.resolver.cache.len(),
            cache_bytes: self.resolver.cache.bytes(),
            cache_evictions: self.resolver.cache.evicted(),
            service_moves: self.moves.lock().expect("moves lock").clone(),
            counters: self.resolver.stats.snapshot(),
            xdp_cache: self.resolver.xdp().map(|x| XdpCacheStatus {
                enabled: x.enabled(),
                entries: x.entries(),
                epoch: catalog.epoch,
            }),
        }
    }

    /// The zones served right now in zone-file format (all, or `zone`).
    pub fn export(&self, zone: Option<&str>) -> Option<String> {
        export(&self.resolver.catalog(), zone)
    }

    /// Repoints `service` (a CNAME in a local zone) to `host`. Every query
    /// after this returns sees the new target.
    pub fn service_move(&self, service: &str, host: &str) -> Result<Moved> {
        let _one = self.changing.lock().expect("changing lock");
        let catalog = self.resolver.catalog();
        let svc = user_name(service, None)?;
        let zone = catalog.zone_for(&svc).ok_or_else(|| anyhow!("{svc} is not in a local zone"))?;
        let node = zone.nodes.get(&(&svc).into());
        let old = match node.and_then(|n| n.get(RecordType::CNAME)).and_then(|s| s.first()) {
            Some(Record { data: RData::CNAME(c), .. }) => c.0.clone(),
            _ => bail!("{svc} is not a service (a CNAME) of zone {}", zone.origin),
        };
        let target = user_name(host, Some(&zone.origin))?;
        if catalog.zone_for(&target).is_some() && !catalog.exists(&target) {
            bail!("{target} does not exist in the local zones; define the host first");
        }
        if target == svc {
            bail!("a service cannot point to itself");
        }
        let mut next = (*catalog).clone();
        apply_move(&mut next, &svc, &target)?;
        {
            let mut moves = self.moves.lock().expect("moves lock");
            let mut new_moves = moves.clone();
            new_moves.insert(svc.to_string(), target.to_string());
            save_moves(&self.moves_path, &new_moves)?;
            *moves = new_moves;
        }
        self.publish(next, Changed::Names(vec![svc.clone()]))?;
        info!(service = %svc, from = %old, to = %target, "dns: service moved");
        Ok(Moved { service: svc.to_string(), from: old.to_string(), to: target.to_string() })
    }

    /// Registers `hostname` (one label, already sanitised) in `zone` with an A
    /// record for `addr` and the matching PTR (RFC 4702 style, as dnsmasq and
    /// Kea+DDNS do for DHCP clients). Refused when the name is taken: by
    /// static data (a host, service or record) or by another address.
    /// Registering the same name and address again is a no-op.
    pub fn register(&self, zone: &str, hostname: &str, addr: Ipv4Addr) -> Result<Name, RegisterError> {
        let change = NameChange::Register { zone: zone.to_string(), hostname: hostname.to_string(), addr };
        self.change_names(vec![change]).pop().expect("one result per change")
    }

    /// Removes a registration made by [`Dns::register`] (release, expiry).
    pub fn unregister(&self, fqdn: &Name, addr: Ipv4Addr) {
        let _ = self.change_names(vec![NameChange::Unregister { fqdn: fqdn.clone(), addr }]);
    }

    /// [`Dns::register`] and [`Dns::unregister`] for many names, in order,
    /// with one new catalog: each zone they touch is copied (a copy holds
    /// every name registered there) and re-indexed once, and the catalog is
    /// published once. One result per change (`Ok` for an unregistration).
    pub fn change_names(&self, changes: Vec<NameChange>) -> Vec<Result<Name, RegisterError>> {
        let _one = self.changing.lock().expect("changing lock");
        let mut dynamic = self.dynamic.lock().expect("dynamic lock");
        let mut next: Option<Catalog> = None;
        let mut touched: Vec<Name> = Vec::new();
        let mut names: Vec<Name> = Vec::new();
        let mut results = Vec::with_capacity(changes.len());
        for change in changes {
            let catalog = next.get_or_insert_with(|| (*self.resolver.catalog()).clone());
            match change {
                NameChange::Register { zone, hostname, addr } => {
                    let r = (|| {
                        let origin = build::name(&zone).map_err(|e| RegisterError::BadName(e.to_string()))?;
                        let fqdn = Name::from_ascii(&hostname)
                            .and_then(|n| n.append_domain(&origin))
                            .map_err(|e| RegisterError::BadName(format!("{hostname}: {e}")))?
                            .to_lowercase();
                        if hostname.is_empty() || hostname.contains('.') {
                            return Err(RegisterError::BadName(hostname.clone()));
                        }
                        match dynamic.get(&fqdn) {
                            Some(a) if *a == addr => return Ok(fqdn),
                            Some(a) => {
                                return Err(RegisterError::Taken {
                                    name: fqdn.to_string(),
                                    by: format!("a lease of {a}"),
                                });
                            }
                            None => {}
                        }
                        if catalog.zone_for(&fqdn).map(|z| z.origin.clone()) != Some(origin.clone()) {
                            return Err(RegisterError::NoZone(zone.clone()));
                        }
                        if catalog.exists(&fqdn) {
                            return Err(RegisterError::Taken { name: fqdn.to_string(), by: "static zone data".into() });
                        }
                        if let Err(e) = add_registration(catalog, &fqdn, addr, &mut touched) {
                            remove_registration(catalog, &fqdn, addr, &mut touched);
                            return Err(RegisterError::BadName(format!("{e:#}")));
                        }
                        dynamic.insert(fqdn.clone(), addr);
                        names.extend([fqdn.clone(), build::ptr_name(addr)]);
                        info!(name = %fqdn, %addr, "dns: registered");
                        Ok(fqdn)
                    })();
                    results.push(r);
                }
                NameChange::Unregister { fqdn, addr } => {
                    if dynamic.get(&fqdn) == Some(&addr) {
                        dynamic.remove(&fqdn);
                        remove_registration(catalog, &fqdn, addr, &mut touched);
                        names.extend([fqdn.clone(), build::ptr_name(addr)]);
                        info!(name = %fqdn, %addr, "dns: unregistered");
                    }
                    results.push(Ok(fqdn));
                }
            }
        }
        if let Some(mut catalog) = next.filter(|_| !names.is_empty()) {
            for origin in &touched {
                if let Some(Err(e)) = catalog.zone_mut(origin).map(|z| z.finish()) {
                    warn!(zone = %origin, "dns: {e}");
                }
            }
            if let Err(e) = self.publish(catalog, Changed::Names(names)) {
                warn!("dns: {e:#}");
            }
        }
        results
    }

    /// Re-reads the zone files (and the configured zone data). A bad file is
    /// refused and the current data keeps serving.
    pub fn zone_reload(&self) -> Result<Vec<ZoneStatus>> {
        let cfg = self.config.lock().expect("config lock").clone();
        self.rebuild(&cfg)?;
        info!("dns: zones reloaded");
        Ok(self.status().zones)
    }

    /// Applies a changed configuration: zones, services and upstreams. The
    /// cache and DHCP registrations stay. Refused (nothing changes) when the
    /// new zones do not build.
    pub fn reconfigure(&self, cfg: &Config) -> Result<()> {
        self.rebuild(cfg)?;
        if let Some(x) = self.resolver.xdp() {
            x.set_enabled(cfg.dns_cache_on());
        }
        self.resolver.set_rate_limit(&cfg.dns.rate_limit);
        self.resolver.set_xfr(xfr_for(cfg, &self.journal)?);
        self.resolver.set_forwarder(forwarder_for(cfg, self.resolver.stats.clone()));
        *self.config.lock().expect("config lock") = cfg.clone();
        Ok(())
    }

    fn rebuild(&self, cfg: &Config) -> Result<()> {
        let _one = self.changing.lock().expect("changing lock");
        let moves = self.moves.lock().expect("moves lock").clone();
        let mut catalog = build_with_moves(cfg, &moves)?;
        // Registrations stay: they belong to live leases.
        let dynamic = self.dynamic.lock().expect("dynamic lock");
        let mut touched = Vec::new();
        for (name, addr) in dynamic.iter() {
            if !catalog.exists(name) {
                let _ = add_registration(&mut catalog, name, *addr, &mut touched);
            }
        }
        drop(dynamic);
        for origin in &touched {
            if let Some(z) = catalog.zone_mut(origin) {
                z.finish()?;
            }
        }
        // Unchanged zones carry over (serials and epochs): their answers, and
        // forwarded ones, stay valid in the XDP cache.
        let changed = match catalog.carry_over(&self.resolver.catalog()) {
            Some(zones) => Changed::Zones(zones),
            None => Changed::All,
        };
        self.publish(catalog, changed)
    }

    /// Closes the sockets (the service stays shared with DHCP until it stops too).
    pub fn stop(&self) {
        self.notifier.lock().expect("notifier lock").take();
        for t in self.tasks.lock().expect("dns tasks lock").drain(..) {
            t.stop();
        }
        info!("dns: stopped");
    }
}

impl Drop for Dns {
    /// A service that failed to start, or was never stopped, serves nothing.
    fn drop(&mut self) {
        for t in self.tasks.get_mut().expect("dns tasks lock").drain(..) {
            t.stop();
        }
    }
}

/// Transfers and TSIG when secondaries or keys are configured.
fn xfr_for(cfg: &Config, journal: &Arc<Mutex<journal::Journal>>) -> Result<Option<xfr::Xfr>> {
    if cfg.dns.secondaries.is_empty() && cfg.dns.tsig_keys.is_empty() {
        return Ok(None);
    }
    Ok(Some(xfr::Xfr::new(cfg, journal.clone())?))
}

fn forwarder_for(cfg: &Config, stats: Arc<Stats>) -> Forwarder {
    Forwarder::new(
        cfg.dns.upstreams.iter().map(|e| e.0).collect(),
        cfg.dns
            .forwards
            .iter()
            .filter_map(|f| {
                let d = build::name(&f.domain.to_ascii_lowercase()).ok()?;
                Some((d, f.upstreams.iter().map(|e| e.0).collect()))
            })
            .collect(),
        forward::Limits {
            timeout: Duration::from_secs(u64::from(cfg.dns.upstream_timeout.secs().max(1))),
            forward_max: cfg.dns.forward_max as usize,
            sockets: cfg.dns.upstream_sockets as usize,
        },
        stats,
    )
}

/// Zone-file text of `zone` (or of every zone) of `catalog`.
pub fn export(catalog: &Catalog, zone: Option<&str>) -> Option<String> {
    let want = zone.map(|z| format!("{}.", z.trim_end_matches('.').to_ascii_lowercase()));
    let text: String = catalog
        .zones()
        .filter(|z| want.as_deref().is_none_or(|w| z.origin.to_string() == w))
        .map(|z| z.to_zone_file())
        .collect();
    (!text.is_empty()).then_some(text)
}

fn build_with_moves(cfg: &Config, moves: &BTreeMap<String, String>) -> Result<Catalog> {
    let mut catalog = build::build(cfg, now_serial())
        .map_err(|errs| anyhow!("{}", errs.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")))?;
    for (svc, target) in moves {
        let (Ok(s), Ok(t)) = (user_name(svc, None), user_name(target, None)) else { continue };
        if let Err(e) = apply_move(&mut catalog, &s, &t) {
            warn!("dns: not re-applying service move {svc} -> {target}: {e:#}");
        }
    }
    Ok(catalog)
}

fn apply_move(catalog: &mut Catalog, svc: &Name, target: &Name) -> Result<()> {
    let zone_origin = catalog.zone_for(svc).map(|z| z.origin.clone()).ok_or_else(|| anyhow!("{svc} is not local"))?;
    let zone = catalog.zone_mut(&zone_origin).expect("zone exists");
    let ttl = zone
        .nodes
        .get(&svc.into())
        .and_then(|n| n.get(RecordType::CNAME))
        .and_then(|s| s.first())
        .map(|r| r.ttl)
        .ok_or_else(|| anyhow!("{svc} is no longer a service"))?;
    zone.insert(Record::from_rdata(svc.clone(), ttl, RData::CNAME(CNAME(target.clone()))))?;
    zone.set_serial(zone.serial().wrapping_add(1).max(now_serial()));
    zone.finish()?;
    Ok(())
}

/// Why a DHCP client's name was not registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error("{0:?} is not a usable host name")]
    BadName(String),
    #[error("zone {0} is not served here")]
    NoZone(String),
    #[error("{name} is taken by {by}")]
    Taken { name: String, by: String },
}

/// One change [`Dns::change_names`] makes.
#[derive(Debug, Clone)]
pub enum NameChange {
    Register { zone: String, hostname: String, addr: Ipv4Addr },
    Unregister { fqdn: Name, addr: Ipv4Addr },
}

/// Adds A `fqdn` → `addr` and, where a reverse zone covers `addr`, its PTR.
/// The zones changed are added to `touched` (they need `finish`).
fn add_registration(catalog: &mut Catalog, fqdn: &Name, addr: Ipv4Addr, touched: &mut Vec<Name>) -> Result<()> {
    let origin = catalog.zone_for(fqdn).map(|z| z.origin.clone()).ok_or_else(|| anyhow!("no zone for {fqdn}"))?;
    let zone = catalog.zone_mut(&origin).expect("zone exists");
    let ttl = zone.negative_soa().ttl.max(60);
    zone.insert(Record::from_rdata(fqdn.clone(), ttl, RData::A(A(addr))))?;
    touch(touched, origin);
    let ptr = build::ptr_name(addr);
    if let Some(rev) = catalog.zone_for(&ptr).map(|z| z.origin.clone()) {
        let z = catalog.zone_mut(&rev).expect("zone exists");
        z.insert(Record::from_rdata(ptr, ttl, RData::PTR(PTR(fqdn.clone()))))?;
        touch(touched, rev);
    }
    Ok(())
}

fn remove_registration(catalog: &mut Catalog, fqdn: &Name, addr: Ipv4Addr, touched: &mut Vec<Name>) {
    if let Some(origin) = catalog.zone_for(fqdn).map(|z| z.origin.clone()) {
        let zone = catalog.zone_mut(&origin).expect("zone exists");
        zone.remove(fqdn, RecordType::A, Some(&RData::A(A(addr))));
        touch(touched, origin);
    }
    let ptr = build::ptr_name(addr);
    if let Some(rev) = catalog.zone_for(&ptr).map(|z| z.origin.clone()) {
        let z = catalog.zone_mut(&rev).expect("zone exists");
        z.remove(&ptr, RecordType::PTR, Some(&RData::PTR(PTR(fqdn.clone()))));
        touch(touched, rev);
    }
}

fn touch(touched: &mut Vec<Name>, origin: Name) {
    if !touched.contains(&origin) {
        touched.push(origin);
    }
}

fn load_moves(path: &Path) -> BTreeMap<String, String> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            warn!("dns: ignoring unreadable {}: {e}", path.display());
            BTreeMap::new()
        }),
        Err(_) => BTreeMap::new(),
    }
}

/// Writes atomically: a temporary file, fsync, rename.
fn save_moves(path: &Path, moves: &BTreeMap<String, String>) -> Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec_pretty(moves)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::ResponseCode;

    use super::*;

    fn dns() -> (Dns, std::path::PathBuf) {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/coresvc.toml");
        let mut cfg = Config::load(&p).unwrap();
        let dir =
            std::env::temp_dir().join(format!("coresvc-dns-{}-{:?}", std::process::id(), std::thread::current().id()));
        std::fs::create_dir_all(&dir).unwrap();
        cfg.agent.state_dir = dir.clone();
        (Dns::new(&cfg).unwrap(), dir)
    }

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    #[test]
    fn registrations_add_a_and_ptr_and_go_away() {
        let (d, dir) = dns();
        let addr: Ipv4Addr = "10.20.0.150".parse().unwrap();
        let fqdn = d.register("dvnt.deevnet.net", "client-7", addr).unwrap();
        assert_eq!(fqdn.to_string(), "client-7.dvnt.deevnet.net.");
        let c = d.resolver.catalog();
        let a = c.lookup(&n("client-7.dvnt.deevnet.net."), RecordType::A).unwrap();
        assert_eq!(a.answers.len(), 1);
        let p = c.lookup(&n("150.0.20.10.in-addr.arpa."), RecordType::PTR).unwrap();
        assert_eq!(p.answers.len(), 1);
        // Again with the same address: fine. Another address: taken.
        assert!(d.register("dvnt.deevnet.net", "client-7", addr).is_ok());
        let other = d.register("dvnt.deevnet.net", "client-7", "10.20.0.151".parse().unwrap());
        assert!(matches!(other, Err(RegisterError::Taken { .. })), "{other:?}");
        d.unregister(&fqdn, addr);
        let c = d.resolver.catalog();
        assert_eq!(c.lookup(&n("client-7.dvnt.deevnet.net."), RecordType::A).unwrap().rcode, ResponseCode::NXDomain);
        assert_eq!(c.lookup(&n("150.0.20.10.in-addr.arpa."), RecordType::PTR).unwrap().rcode, ResponseCode::NXDomain);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn every_change_of_content_moves_the_serial_on_and_is_journaled() {
        let (d, dir) = dns();
        let serial = |d: &Dns, z: &str| d.status().zones.iter().find(|s| s.name == z).unwrap().serial;
        let (fwd, rev) = ("dvnt.deevnet.net.", "0.20.10.in-addr.arpa.");
        let (f0, r0) = (serial(&d, fwd), serial(&d, rev));
        let addr: Ipv4Addr = "10.20.0.170".parse().unwrap();
        let fqdn = d.register("dvnt.deevnet.net", "serial-box", addr).unwrap();
        let (f1, r1) = (serial(&d, fwd), serial(&d, rev));
        assert!(journal::serial_gt(f1, f0) && journal::serial_gt(r1, r0), "{f0}->{f1} {r0}->{r1}");
        // The same registration again changes nothing.
        d.register("dvnt.deevnet.net", "serial-box", addr).unwrap();
        assert_eq!(serial(&d, fwd), f1);
        d.unregister(&fqdn, addr);
        let f2 = serial(&d, fwd);
        assert!(journal::serial_gt(f2, f1));
        let j = d.journal.lock().unwrap();
        let diffs = j.since(&n(fwd), f0, f2).expect("both changes journaled");
        assert_eq!(diffs.len(), 2);
        assert_eq!(diffs[0].added.len(), 1);
        assert_eq!(diffs[1].removed, diffs[0].added);
        drop(j);
        // A zone reload with the same data keeps the serial.
        d.zone_reload().unwrap();
        assert_eq!(serial(&d, fwd), f2);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A burst of 40 registrations in two zones is one NOTIFY per zone,
    /// signed; answered, none is sent again.
    #[test]
    fn a_burst_of_changes_is_one_signed_notify_per_zone() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let sec = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let port = sec.local_addr().unwrap().port();
            let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/coresvc.toml");
            let mut cfg = Config::load(&p).unwrap();
            let dir = std::env::temp_dir().join(format!("coresvc-notify-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            cfg.agent.state_dir = dir.clone();
            let secret = "c2VjcmV0c2VjcmV0c2VjcmV0";
            cfg.dns.tsig_keys.push(crate::config::TsigKey {
                name: "burst-key".into(),
                algorithm: "hmac-sha256".into(),
                secret: Some(secret.into()),
                secret_file: None,
            });
            cfg.dns.secondaries.push(crate::config::Secondary {
                address: Ipv4Addr::LOCALHOST,
                port,
                key: Some("burst-key".into()),
                zones: Vec::new(),
                notify: true,
            });
            let d = Dns::new(&cfg).unwrap();
            *d.notifier.lock().unwrap() = Some(notify::Notifier::start(d.resolver.clone(), Vec::new()));
            for i in 0..40u8 {
                d.register("dvnt.deevnet.net", &format!("burst-{i}"), Ipv4Addr::new(10, 20, 0, 100 + i)).unwrap();
                // Spread out (the notifier runs in between), as a burst of leases comes.
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            let key = tsig::Key::new(&n("burst-key."), &tsig::decode_secret(secret).unwrap());
            let mut keys = tsig::Keys::default();
            keys.insert(tsig::Key::new(&n("burst-key."), &tsig::decode_secret(secret).unwrap()));
            let mut seen = Vec::new();
            let mut buf = vec![0u8; 4096];
            let end = tokio::time::Instant::now() + notify::COALESCE * 2 + std::time::Duration::from_millis(1500);
            while let Ok(Ok((len, from))) = tokio::time::timeout_at(end, sec.recv_from(&mut buf)).await {
                let b = &buf[..len];
                let t = tsig::find(b).expect("signed").unwrap();
                assert!(matches!(tsig::verify(&keys, b, &t, tsig::now()), tsig::Verdict::Good(_)));
                let m = hickory_proto::op::Message::from_vec(&tsig::stripped(b, &t)).unwrap();
                assert_eq!(m.metadata.op_code, hickory_proto::op::OpCode::Notify);
                seen.push(m.queries[0].name().to_string());
                let mut r = hickory_proto::op::Message::response(m.metadata.id, m.metadata.op_code);
                r.queries = m.queries.clone();
                let mut rb = r.to_vec().unwrap();
                tsig::sign(&mut rb, &key, tsig::Chain::Response(&t.mac), tsig::now(), 0, &[]);
                sec.send_to(&rb, from).await.unwrap();
            }
            // One per zone (two if a slow machine spread the burst over two
            // windows), never one per change; each answered, none repeated.
            for z in ["0.20.10.in-addr.arpa.", "dvnt.deevnet.net."] {
                let k = seen.iter().filter(|s| *s == z).count();
                assert!((1..=2).contains(&k), "{z}: {k} NOTIFYs for 40 changes: {seen:?}");
            }
            assert_eq!(
                seen.len(),
                seen.iter().filter(|s| s.ends_with("in-addr.arpa.") || *s == "dvnt.deevnet.net.").count()
            );
            let c = d.resolver.stats.snapshot();
            assert_eq!((c.notify_sent, c.notify_answered), (seen.len() as u64, seen.len() as u64));
            let _ = std::fs::remove_dir_all(dir);
        });
    }

    #[test]
    fn static_and_service_names_are_never_overridden() {
        let (d, dir) = dns();
        for name in ["artifacts", "provisioner-01", "ns"] {
            let r = d.register("mgmt.deevnet.net", name, "10.10.0.150".parse().unwrap());
            assert!(matches!(r, Err(RegisterError::Taken { .. })), "{name}: {r:?}");
        }
        assert!(matches!(
            d.register("nowhere.example", "x", "10.20.0.9".parse().unwrap()),
            Err(RegisterError::NoZone(_))
        ));
        assert!(matches!(
            d.register("dvnt.deevnet.net", "a.b", "10.20.0.9".parse().unwrap()),
            Err(RegisterError::BadName(_))
        ));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn registrations_survive_a_zone_reload() {
        let (d, dir) = dns();
        let addr: Ipv4Addr = "10.20.0.160".parse().unwrap();
        d.register("dvnt.deevnet.net", "keep", addr).unwrap();
        d.zone_reload().unwrap();
        let c = d.resolver.catalog();
        assert_eq!(c.lookup(&n("keep.dvnt.deevnet.net."), RecordType::A).unwrap().answers.len(), 1);
        let _ = std::fs::remove_dir_all(dir);
    }
}
