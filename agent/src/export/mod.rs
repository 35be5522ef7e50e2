//! `coresvc export knot|kea DIR` (issue 18 item 2): the dedicated
//! infrastructure's configuration written from coresvc's one source of
//! truth, so the production side serves the same records (seed §3:
//! intentional duplication with exclusive activation).
//!
//! The data is the running agent's where it answers (zones as served, with
//! service moves and registered client names; its leases), else the
//! configuration's with the persisted service moves and the lease journal
//! of the state directory (read, not changed).

pub mod kea;
pub mod knot;

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

use crate::{
    config::Config,
    ctl::{self, Request, Response},
    dhcp::{
        journal::{self, LeaseRecord, RecordState},
        kea::{self as memfile, KeaLease},
        leases::ClientKey,
        server::LeaseInfo,
    },
};

/// What an export is made of.
pub struct Source {
    pub cfg: Config,
    /// Zone origin (no trailing dot) and its zone-file text.
    pub zones: Vec<(String, String)>,
    /// The active leases, as Kea stores them.
    pub leases: Vec<KeaLease>,
    /// Where the data came from ("the running agent", or the files).
    pub from: String,
}

/// Reads the export's data: from the agent at `socket` when it answers
/// (and `offline` is not set), else from the configuration and `state_dir`.
pub fn gather(cfg: Config, socket: Option<&Path>, offline: bool) -> Result<Source> {
    let catalog = crate::dns::Dns::new(&cfg)?.resolver.catalog();
    let origins: Vec<String> =
        catalog.zones().map(|z| z.origin.to_string().trim_end_matches('.').to_string()).collect();
    let now = crate::dhcp::unix_now();
    if let Some(sock) = socket.filter(|s| !offline && s.exists())
        && let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build()
        && let Ok(Response::Leases { leases }) = rt.block_on(ctl::call(sock, &Request::Leases))
    {
        let mut zones = Vec::new();
        for o in &origins {
            match rt.block_on(ctl::call(sock, &Request::ZoneExport { zone: Some(o.clone()) }))? {
                Response::ZoneText { text } => zones.push((o.clone(), text)),
                Response::Error { message } => anyhow::bail!("the agent at {}: zone {o}: {message}", sock.display()),
                other => anyhow::bail!("unexpected answer from coresvc: {other:?}"),
            }
        }
        let records: Vec<LeaseRecord> = leases.iter().filter_map(record_of).collect();
        let leases = memfile::from_records(&cfg, &records, now);
        return Ok(Source { cfg, zones, leases, from: format!("the running agent ({})", sock.display()) });
    }
    // Offline: as a fresh start would serve.
    let zones = origins.iter().filter_map(|o| crate::dns::export(&catalog, Some(o)).map(|t| (o.clone(), t))).collect();
    let records = journal::read(&cfg.agent.state_dir)
        .with_context(|| format!("reading the lease journal in {}", cfg.agent.state_dir.display()))?;
    let mut last: BTreeMap<Ipv4Addr, LeaseRecord> = BTreeMap::new();
    for r in records {
        last.insert(r.addr, r);
    }
    let records: Vec<LeaseRecord> = last.into_values().collect();
    let leases = memfile::from_records(&cfg, &records, now);
    let from = format!("the configuration and {}", cfg.agent.state_dir.display());
    Ok(Source { cfg, zones, leases, from })
}

/// A bound lease the agent lists, as a journal record.
fn record_of(l: &LeaseInfo) -> Option<LeaseRecord> {
    if l.state != crate::dhcp::leases::State::Bound {
        return None;
    }
    let hw = memfile::parse_hex(&l.mac)?;
    let client = match l.client_id.as_deref().and_then(memfile::parse_hex) {
        Some(id) => ClientKey::from_client_id(&id),
        None => ClientKey::from_hw(1, &hw),
    };
    Some(LeaseRecord {
        addr: l.address,
        state: RecordState::Bound,
        expires: l.expires,
        client: client.0,
        hw,
        hostname: l.hostname.clone(),
        segment: l.segment.clone(),
    })
}

/// Writes `text` to `dir/name` (the directory made if needed) and returns its path.
pub fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let p = dir.join(name);
    std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    Ok(p)
}
