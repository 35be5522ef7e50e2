//! The DNS service: authoritative for the local zones (the seed's naming
//! model), a caching forwarder for everything else, on UDP and TCP port 53 of
//! each segment's active address. Only clients on the segments are served.
//!
//! Live changes: `coresvc service move` repoints a service (persisted in the
//! state directory and applied again at start), `coresvc zone reload` re-reads
//! zone files; both swap in a new catalog atomically and refuse bad data.

pub mod build;
pub mod cache;
pub mod forward;
pub mod handler;
pub mod server;
pub mod stats;
pub mod zone;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, anyhow, bail};
use hickory_proto::rr::{Name, RData, Record, RecordType, rdata::CNAME};
use serde::{Deserialize, Serialize};
use tokio::{sync::Semaphore, task::JoinHandle};
use tracing::{info, warn};

use self::{
    cache::Cache,
    forward::Forwarder,
    handler::Resolver,
    stats::{Snapshot, Stats},
    zone::Catalog,
};
use crate::config::{AuthorityMode, Config};

/// The file under the state directory that keeps service moves across restarts.
const MOVES_FILE: &str = "dns-service-moves.json";

pub struct Dns {
    pub resolver: Arc<Resolver>,
    config: Config,
    /// service FQDN → target FQDN, applied on top of the configuration.
    moves: Mutex<BTreeMap<String, String>>,
    moves_path: PathBuf,
    listen: Vec<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

/// `coresvc status`'s DNS part.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DnsStatus {
    pub listen: Vec<SocketAddr>,
    pub zones: Vec<ZoneStatus>,
    pub cache_entries: usize,
    pub service_moves: BTreeMap<String, String>,
    pub counters: Snapshot,
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
    pub fn start(cfg: &Config) -> Result<Option<Dns>> {
        if !cfg.dns.enabled {
            info!("dns: disabled in the configuration");
            return Ok(None);
        }
        if cfg.agent.authority == AuthorityMode::Production {
            info!("dns: inactive in production mode");
            return Ok(None);
        }
        let moves_path = cfg.agent.state_dir.join(MOVES_FILE);
        let moves = load_moves(&moves_path);
        let catalog = build_with_moves(cfg, &moves)?;
        let stats = Arc::new(Stats::default());
        let forwarder = Forwarder::new(
            cfg.dns.upstreams.iter().map(|e| e.0).collect(),
            cfg.dns
                .forwards
                .iter()
                .filter_map(|f| {
                    let d = build::name(&f.domain.to_ascii_lowercase()).ok()?;
                    Some((d, f.upstreams.iter().map(|e| e.0).collect()))
                })
                .collect(),
            Duration::from_secs(u64::from(cfg.dns.upstream_timeout.secs().max(1))),
            stats.clone(),
        );
        let cache = Cache::new(cfg.dns.cache_size, cfg.dns.max_ttl.secs(), cfg.dns.max_negative_ttl.secs());
        let clients = cfg.segments.iter().map(|s| ipnet::IpNet::V4(s.cidr.trunc())).collect();
        let resolver = Arc::new(Resolver::new(catalog, forwarder, cache, stats, clients));
        let tcp = server::TcpLimits {
            slots: Arc::new(Semaphore::new(cfg.dns.tcp_max_connections as usize)),
            idle: Duration::from_secs(u64::from(cfg.dns.tcp_idle_timeout.secs())),
        };
        let mut tasks = Vec::new();
        let mut listen = Vec::new();
        for s in &cfg.segments {
            let addr = SocketAddr::new(s.gateway.into(), 53);
            tasks.extend(server::serve(addr, resolver.clone(), tcp.clone())?);
            listen.push(addr);
        }
        info!(
            "dns: serving {} zone(s) on {}",
            resolver.catalog().zones().count(),
            listen.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
        );
        Ok(Some(Dns { resolver, config: cfg.clone(), moves: Mutex::new(moves), moves_path, listen, tasks }))
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
            service_moves: self.moves.lock().expect("moves lock").clone(),
            counters: self.resolver.stats.snapshot(),
        }
    }

    /// The zones served right now in zone-file format (all, or `zone`).
    pub fn export(&self, zone: Option<&str>) -> Option<String> {
        export(&self.resolver.catalog(), zone)
    }

    /// Repoints `service` (a CNAME in a local zone) to `host`. Every query
    /// after this returns sees the new target.
    pub fn service_move(&self, service: &str, host: &str) -> Result<Moved> {
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
        self.resolver.set_catalog(next);
        info!(service = %svc, from = %old, to = %target, "dns: service moved");
        Ok(Moved { service: svc.to_string(), from: old.to_string(), to: target.to_string() })
    }

    /// Re-reads the zone files (and the configured zone data). A bad file is
    /// refused and the current data keeps serving.
    pub fn zone_reload(&self) -> Result<Vec<ZoneStatus>> {
        let moves = self.moves.lock().expect("moves lock").clone();
        let catalog = build_with_moves(&self.config, &moves)?;
        self.resolver.set_catalog(catalog);
        info!("dns: zones reloaded");
        Ok(self.status().zones)
    }

    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
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
