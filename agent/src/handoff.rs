//! The lease handoff of the authority switches (issue 18): coresvc's active
//! leases go to the production Kea when coresvc steps down, and Kea's come
//! back before coresvc serves again, so no address either side ACKed is
//! ever given to another client.
//!
//! Two ways, as configured in `[authority]`:
//! - Kea's control agent (`kea_control_agent`, HTTP): `lease4-add` per
//!   lease (a lease Kea already has for the same client is updated with
//!   `lease4-update`; one it has for another client is a conflict, listed
//!   and not touched); back: `dhcp-disable` (Kea stops answering, so its
//!   lease table is final), `lease4-get-all`, and `dhcp-enable` again if
//!   the switch does not happen.
//! - Kea's memfile (`kea_lease_file`): rows appended to the lease file, as
//!   Kea itself appends them (a Kea that starts or reloads reads them);
//!   back: the file read as Kea reads it at start (`dhcp::kea`).

use std::{collections::BTreeMap, net::Ipv4Addr, path::Path, time::Duration};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use tracing::{error, warn};

use crate::{
    authority::check,
    config::Config,
    dhcp::{
        journal::{self, LeaseRecord, RecordState},
        kea::{self, KeaLease},
    },
};

/// The largest answer read from the control agent (a `lease4-get-all` of a
/// few hundred thousand leases).
const MAX_ANSWER: usize = 64 << 20;

/// Kea's control agent at an `http://host:port/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeaApi {
    pub host: String,
    pub port: u16,
    pub path: String,
    pub timeout: Duration,
}

/// What pushing leases did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub added: usize,
    /// Kea had the lease for the same client already (refreshed).
    pub updated: usize,
    /// Kea has these addresses leased to another client (left as they are).
    pub conflicts: Vec<String>,
}

impl KeaApi {
    /// Parses `http://host[:port][/path]` (port 8000 by default, Kea's).
    pub fn parse(url: &str) -> Result<KeaApi, String> {
        let bad = |why: &str| {
            format!("{url:?} is not a control agent URL ({why}); use http://HOST:PORT/, e.g. http://10.20.0.3:8000/")
        };
        if url.starts_with("https://") {
            return Err(bad(
                "https is not supported: put the control agent behind a local TLS proxy, or use http on the management segment",
            ));
        }
        let rest = url.strip_prefix("http://").ok_or_else(|| bad("it must start with http://"))?;
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad("the port is not a number"))?),
            None => (hostport, 8000),
        };
        if host.is_empty() || host.contains(['@', ' ', '[', ']']) || port == 0 {
            return Err(bad("no host"));
        }
        Ok(KeaApi { host: host.to_string(), port, path: path.to_string(), timeout: Duration::from_secs(10) })
    }

    pub fn url(&self) -> String {
        format!("http://{}:{}{}", self.host, self.port, self.path)
    }

    /// Sends one command to Kea's DHCPv4 server through the agent; returns
    /// Kea's `result` code, `text` and `arguments`.
    pub async fn command(&self, command: &str, arguments: Option<Value>) -> Result<(i64, String, Value)> {
        let mut body = json!({ "command": command, "service": ["dhcp4"] });
        if let Some(a) = arguments {
            body["arguments"] = a;
        }
        let answer =
            tokio::time::timeout(self.timeout, self.post(&serde_json::to_vec(&body)?)).await.map_err(|_| {
                anyhow!("Kea's control agent at {} did not answer {command} within {:?}", self.url(), self.timeout)
            })??;
        parse_answer(&answer).with_context(|| format!("{command} at {}", self.url()))
    }

    async fn post(&self, body: &[u8]) -> Result<Vec<u8>> {
        let mut s = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .with_context(|| format!("connecting to Kea's control agent at {}", self.url()))?;
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.path,
            self.host,
            self.port,
            body.len()
        );
        s.write_all(head.as_bytes()).await?;
        s.write_all(body).await?;
        let mut buf = Vec::new();
        s.take(MAX_ANSWER as u64 + 1).read_to_end(&mut buf).await?;
        if buf.len() > MAX_ANSWER {
            bail!("the answer is larger than {MAX_ANSWER} bytes");
        }
        http_body(&buf)
    }

    /// Kea answers: the server is up (`version-get`).
    pub async fn ping(&self) -> Result<()> {
        match self.command("version-get", None).await? {
            (0, _, _) => Ok(()),
            (r, text, _) => bail!("Kea's DHCPv4 server does not answer through {}: result {r}: {text}", self.url()),
        }
    }

    /// Adds `leases`: new ones with `lease4-add`; one Kea has for the same
    /// client is refreshed (`lease4-update`, the later expiry kept); one
    /// Kea has for another client is a conflict and stays Kea's.
    pub async fn push(&self, leases: &[KeaLease]) -> Result<Pushed> {
        let mut out = Pushed::default();
        for l in leases {
            let (r, text, _) = self.command("lease4-add", Some(lease_args(l))).await?;
            if r == 0 {
                out.added += 1;
                continue;
            }
            let (gr, gtext, theirs) =
                self.command("lease4-get", Some(json!({ "ip-address": l.address.to_string() }))).await?;
            if gr != 0 {
                bail!("lease4-add {}: {text}; lease4-get: {gtext}", l.address);
            }
            let theirs = lease_from_json(&theirs).with_context(|| format!("lease4-get {}", l.address))?;
            if theirs.client_key() != l.client_key() {
                out.conflicts.push(format!(
                    "{}: Kea has leased it to {} (coresvc: {}); left as Kea has it",
                    l.address,
                    kea::hex(&theirs.hwaddr),
                    kea::hex(&l.hwaddr)
                ));
                continue;
            }
            let mut newer = l.clone();
            newer.expire = newer.expire.max(theirs.expire);
            let (ur, utext, _) = self.command("lease4-update", Some(lease_args(&newer))).await?;
            if ur != 0 {
                bail!("lease4-update {}: {utext}", l.address);
            }
            out.updated += 1;
        }
        Ok(out)
    }

    /// Every lease Kea holds (`lease4-get-all`; result 3 is "none").
    pub async fn get_all(&self) -> Result<Vec<KeaLease>> {
        let (r, text, args) = self.command("lease4-get-all", None).await?;
        match r {
            0 => args["leases"]
                .as_array()
                .ok_or_else(|| anyhow!("lease4-get-all: no leases list in the answer"))?
                .iter()
                .map(lease_from_json)
                .collect(),
            3 => Ok(Vec::new()),
            _ => bail!("lease4-get-all at {}: result {r}: {text}", self.url()),
        }
    }

    /// Kea stops (`false`) or resumes (`true`) answering DHCP.
    pub async fn set_serving(&self, on: bool) -> Result<()> {
        let cmd = if on { "dhcp-enable" } else { "dhcp-disable" };
        match self.command(cmd, None).await? {
            (0, _, _) => Ok(()),
            (r, text, _) => bail!("{cmd} at {}: result {r}: {text}", self.url()),
        }
    }
}

fn lease_args(l: &KeaLease) -> Value {
    let mut a = json!({
        "ip-address": l.address.to_string(),
        "hw-address": kea::hex(&l.hwaddr),
        "valid-lft": l.valid_lifetime,
        "expire": l.expire,
        "fqdn-fwd": l.fqdn_fwd,
        "fqdn-rev": l.fqdn_rev,
        "hostname": l.hostname,
        "state": l.state,
    });
    if !l.client_id.is_empty() {
        a["client-id"] = json!(kea::hex(&l.client_id));
    }
    a
}

/// A lease as Kea's lease commands give it (`cltt` + `valid-lft` is its end).
pub fn lease_from_json(v: &Value) -> Result<KeaLease> {
    let s = |k: &str| v[k].as_str().unwrap_or("");
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    let address: Ipv4Addr = s("ip-address").parse().map_err(|_| anyhow!("not an IPv4 lease: {v}"))?;
    let hex = |k: &str| kea::parse_hex(s(k)).ok_or_else(|| anyhow!("{k} {:?} is not hex bytes", s(k)));
    let valid = u32::try_from(n("valid-lft")).unwrap_or(u32::MAX);
    Ok(KeaLease {
        address,
        hwaddr: hex("hw-address")?,
        client_id: hex("client-id")?,
        valid_lifetime: valid,
        expire: n("cltt") + u64::from(valid),
        subnet_id: n("subnet-id") as u32,
        fqdn_fwd: v["fqdn-fwd"].as_bool().unwrap_or(false),
        fqdn_rev: v["fqdn-rev"].as_bool().unwrap_or(false),
        hostname: s("hostname").to_string(),
        state: n("state") as u32,
    })
}

/// The body of an HTTP/1.1 answer that must be 200 (Content-Length, chunked,
/// or up to the end).
pub fn http_body(raw: &[u8]) -> Result<Vec<u8>> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| anyhow!("not an HTTP answer"))?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    let code = status.split_whitespace().nth(1).unwrap_or("");
    if !status.starts_with("HTTP/1.") || code != "200" {
        bail!("the control agent answered {status:?}");
    }
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let body = &raw[end + 4..];
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut out = Vec::new();
        let mut rest = body;
        loop {
            let nl = rest.windows(2).position(|w| w == b"\r\n").ok_or_else(|| anyhow!("a chunk is cut short"))?;
            let size_text = String::from_utf8_lossy(&rest[..nl]);
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| anyhow!("bad chunk size {size_text:?}"))?;
            rest = &rest[nl + 2..];
            if size == 0 {
                return Ok(out);
            }
            let chunk = rest.get(..size).ok_or_else(|| anyhow!("a chunk is cut short"))?;
            out.extend_from_slice(chunk);
            rest = rest.get(size + 2..).unwrap_or(&[]);
        }
    }
    match header("content-length") {
        Some(l) => {
            let l: usize = l.parse().map_err(|_| anyhow!("bad Content-Length {l:?}"))?;
            Ok(body.get(..l).ok_or_else(|| anyhow!("the answer is cut short"))?.to_vec())
        }
        None => Ok(body.to_vec()),
    }
}

/// Kea's answer: one object, or (from the control agent) a list of one per service.
pub fn parse_answer(body: &[u8]) -> Result<(i64, String, Value)> {
    let v: Value = serde_json::from_slice(body).context("the control agent's answer is not JSON")?;
    let o = match &v {
        Value::Array(a) => a.first().cloned().ok_or_else(|| anyhow!("an empty answer"))?,
        other => other.clone(),
    };
    let result = o["result"].as_i64().ok_or_else(|| anyhow!("no result in {o}"))?;
    Ok((result, o["text"].as_str().unwrap_or("").to_string(), o["arguments"].clone()))
}

/// What appending to a lease file did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Appended {
    pub rows: usize,
    /// The file has these addresses leased, in force, to another client.
    pub conflicts: Vec<String>,
}

/// Appends `leases` to Kea's lease file `path` as Kea does (one row each,
/// at the end, one write; the header first if the file is new) and syncs
/// it. Addresses the file already leases to another client, in force, are
/// conflicts and are not written.
pub fn append_to_memfile(path: &Path, leases: &[KeaLease], now: u64) -> Result<Appended> {
    use std::io::Write as _;
    let theirs: BTreeMap<Ipv4Addr, KeaLease> = kea::load_memfile(path)?;
    let mut out = Appended::default();
    let mut text = String::new();
    let new = std::fs::metadata(path).map(|m| m.len() == 0).unwrap_or(true);
    if new {
        text.push_str(kea::HEADER);
        text.push('\n');
    }
    for l in leases {
        if let Some(t) = theirs.get(&l.address).filter(|t| t.active(now) && t.client_key() != l.client_key()) {
            out.conflicts.push(format!(
                "{}: {} leases it to {} (coresvc: {}); left as it is",
                l.address,
                path.display(),
                kea::hex(&t.hwaddr),
                kea::hex(&l.hwaddr)
            ));
            continue;
        }
        text.push_str(&l.row());
        text.push('\n');
        out.rows += 1;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {} to append leases", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("appending to {}", path.display()))?;
    f.sync_all().with_context(|| format!("syncing {}", path.display()))?;
    Ok(out)
}

/// Can `path` be appended to (its directory exists and is writable)?
pub fn memfile_writable(path: &Path) -> Result<()> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(|_| ())
        .with_context(|| format!("Kea's lease file {} cannot be written", path.display()))
}

// ------------------------------------------------------------------ the switches

/// Before stepping down: the production side answers as coresvc does (see
/// `authority::check`) and can take the leases. Refuses with every
/// difference listed, unless `force` (then logged).
pub async fn verify(cfg: &Config, held: Vec<Ipv4Addr>, force: bool) -> Result<Vec<String>> {
    let report = check::run(cfg, held).await?;
    let mut problems: Vec<String> = report.unverified.iter().map(|u| format!("unverified: {u}")).collect();
    problems.extend(report.differences());
    if let Some(a) = &cfg.authority {
        if let Some(f) = &a.kea_lease_file
            && let Err(e) = memfile_writable(f)
        {
            problems.push(format!("lease handoff: {e:#}"));
        }
        if let Some(u) = &a.kea_control_agent {
            match KeaApi::parse(u) {
                Ok(api) => {
                    if let Err(e) = api.ping().await {
                        problems.push(format!("lease handoff: {e:#}"));
                    }
                }
                Err(e) => problems.push(format!("lease handoff: {e}")),
            }
        }
    }
    let servers: usize = report.segments.iter().map(|s| s.dns.len()).sum();
    let dhcp: Vec<&str> = report.segments.iter().filter(|s| s.dhcp.is_some()).map(|s| s.segment.as_str()).collect();
    if problems.is_empty() {
        return Ok(vec![format!(
            "check: the production DNS answers all {} RRset(s) as coresvc ({servers} server check(s)); a DHCP server \
             answers on {}",
            report.rrsets,
            if dhcp.is_empty() { "no segment (none needed)".to_string() } else { dhcp.join(", ") }
        )]);
    }
    if !force {
        bail!(
            "not switched to production, nothing changed: the production infrastructure does not serve what coresvc \
             serves ({} difference(s)):\n  {}\nfix the production side (`coresvc export knot|kea`), compare again with \
             `coresvc authority check`, or override with --force",
            problems.len(),
            problems.join("\n  ")
        );
    }
    warn!(
        differences = problems.len(),
        "authority: switching to production although the production infrastructure differs (--force): {}",
        problems.join(" | ")
    );
    let mut steps = vec![format!("check: FORCED past {} difference(s) (--force):", problems.len())];
    steps.extend(problems.into_iter().map(|p| format!("  {p}")));
    Ok(steps)
}

/// coresvc's active leases, from its journal (every lease granted is in it
/// once DHCP has stopped).
pub fn active_leases(cfg: &Config, now: u64) -> Result<Vec<KeaLease>> {
    let mut last: BTreeMap<Ipv4Addr, LeaseRecord> = BTreeMap::new();
    for r in journal::read(&cfg.agent.state_dir)? {
        last.insert(r.addr, r);
    }
    Ok(kea::from_records(cfg, &last.into_values().collect::<Vec<_>>(), now))
}

/// After DHCP stopped: the active leases go to the production Kea (its
/// lease file and/or its lease API). Never fails the switch: what could
/// not be handed over is written to the state directory and said loudly.
pub async fn hand_over(cfg: &Config) -> Vec<String> {
    let now = crate::dhcp::unix_now();
    let leases = match active_leases(cfg, now) {
        Ok(l) => l,
        Err(e) => return vec![format!("leases: HANDOFF FAILED: reading the journal: {e:#}")],
    };
    let auth = cfg.authority.clone().unwrap_or_default();
    let mut steps = Vec::new();
    let mut failed = Vec::new();
    if let Some(f) = &auth.kea_lease_file {
        match append_to_memfile(f, &leases, now) {
            Ok(a) => {
                steps.push(format!("leases: appended {} active lease(s) to {}", a.rows, f.display()));
                steps.extend(a.conflicts.into_iter().map(|c| format!("leases: conflict: {c}")));
            }
            Err(e) => failed.push(format!("{e:#}")),
        }
    }
    if let Some(u) = &auth.kea_control_agent {
        let pushed = match KeaApi::parse(u) {
            Ok(api) => api.push(&leases).await,
            Err(e) => Err(anyhow!(e)),
        };
        match pushed {
            Ok(p) => {
                steps.push(format!("leases: {} added, {} refreshed in Kea through {u}", p.added, p.updated));
                steps.extend(p.conflicts.into_iter().map(|c| format!("leases: conflict: {c}")));
            }
            Err(e) => failed.push(format!("{e:#}")),
        }
    }
    if auth.kea_lease_file.is_none() && auth.kea_control_agent.is_none() {
        steps.push(format!(
            "leases: no handoff configured (authority.kea_lease_file, authority.kea_control_agent); {} active \
             lease(s) stay in coresvc's journal (`coresvc export kea` writes them)",
            leases.len()
        ));
    }
    if !failed.is_empty() {
        let path = cfg.agent.state_dir.join("handoff-leases4.csv");
        let saved = std::fs::write(&path, kea::render(&leases)).map(|_| path.display().to_string());
        let e = failed.join("; ");
        error!("authority: lease handoff failed: {e}");
        steps.push(format!(
            "leases: HANDOFF FAILED: {e}; the {} active lease(s) are in {}: load them into Kea before it serves",
            leases.len(),
            saved.unwrap_or_else(|e| format!("no file either ({e})"))
        ));
    }
    steps
}

/// Before the switch to bootstrap: Kea's DHCP is disabled through its
/// lease API, so its lease table is final. `None` without a control agent
/// or when it does not answer (no production Kea running).
pub async fn pause_production(cfg: &Config) -> Result<Option<String>> {
    let Some(u) = cfg.authority.as_ref().and_then(|a| a.kea_control_agent.clone()) else { return Ok(None) };
    let api = KeaApi::parse(&u).map_err(|e| anyhow!(e))?;
    match api.set_serving(false).await {
        Ok(()) => Ok(Some(format!("kea: DHCP disabled through {u} (dhcp-disable)"))),
        Err(e) => {
            warn!(
                "authority: Kea's control agent does not answer ({e:#}): taking its leases from the lease file, if any"
            );
            Ok(None)
        }
    }
}

/// Kea serves again (the switch to bootstrap did not happen).
pub async fn resume_production(cfg: &Config) {
    if let Some(u) = cfg.authority.as_ref().and_then(|a| a.kea_control_agent.clone())
        && let Ok(api) = KeaApi::parse(&u)
        && let Err(e) = api.set_serving(true).await
    {
        error!("authority: Kea's DHCP stays disabled: dhcp-enable through {u}: {e:#}");
    }
}

/// Before coresvc serves DHCP again: the production leases (lease API, else
/// Kea's lease file) go into the journal, so no address Kea ACKed is
/// given to another client.
pub async fn take_back(cfg: &Config) -> Result<Vec<String>> {
    let auth = cfg.authority.clone().unwrap_or_default();
    let mut leases = BTreeMap::new();
    let from = match (&auth.kea_control_agent, &auth.kea_lease_file) {
        (Some(u), file) => {
            let api = KeaApi::parse(u).map_err(|e| anyhow!(e))?;
            match api.get_all().await {
                Ok(l) => {
                    kea::fold(l, &mut leases);
                    format!("Kea through {u}")
                }
                Err(e) => match file {
                    Some(f) => {
                        warn!("authority: lease4-get-all: {e:#}; reading {}", f.display());
                        leases = kea::load_memfile(f)?;
                        f.display().to_string()
                    }
                    None => return Ok(vec![format!("leases: none taken back: {e:#}")]),
                },
            }
        }
        (None, Some(f)) => {
            leases = kea::load_memfile(f)?;
            f.display().to_string()
        }
        (None, None) => {
            return Ok(vec![
                "leases: none taken back (no authority.kea_lease_file or authority.kea_control_agent)".into(),
            ]);
        }
    };
    let c = kea::to_records(cfg, &leases, crate::dhcp::unix_now());
    crate::dhcp::import_offline(&cfg.agent.state_dir, &c.records)?;
    let bound = c.records.iter().filter(|r| r.state == RecordState::Bound).count();
    let mut steps = vec![format!(
        "leases: took {} record(s) back from {from} ({bound} in force) into the journal",
        c.records.len()
    )];
    steps.extend(c.skipped.into_iter().map(|s| format!("leases: skipped {s}")));
    Ok(steps)
}

/// `coresvc import-leases FILE` into the running agent: `leases` in file
/// order (the last row for an address wins).
pub async fn import(
    cfg: &Config,
    dhcp: &crate::dhcp::Importer,
    leases: Vec<KeaLease>,
) -> Result<(usize, Vec<String>, Vec<String>)> {
    let mut folded = BTreeMap::new();
    kea::fold(leases, &mut folded);
    let c = kea::to_records(cfg, &folded, crate::dhcp::unix_now());
    let (n, conflicts) = dhcp.import(c.records).await?;
    Ok((n, conflicts, c.skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_agent_urls() {
        let a = KeaApi::parse("http://10.20.0.3:8000/").unwrap();
        assert_eq!((a.host.as_str(), a.port, a.path.as_str()), ("10.20.0.3", 8000, "/"));
        let b = KeaApi::parse("http://kea.mgmt.deevnet.net").unwrap();
        assert_eq!((b.port, b.path.as_str()), (8000, "/"));
        assert!(KeaApi::parse("https://x/").unwrap_err().contains("https is not supported"));
        assert!(KeaApi::parse("10.20.0.3:8000").unwrap_err().contains("http://"));
        assert!(KeaApi::parse("http://x:port/").is_err());
        assert!(KeaApi::parse("http://:80/").is_err());
    }

    #[test]
    fn http_answers_by_length_chunks_or_end() {
        let body = b"[ { \"result\": 0, \"text\": \"ok\" } ]";
        let mut raw =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/json\r\n\r\n", body.len())
                .into_bytes();
        raw.extend_from_slice(body);
        assert_eq!(http_body(&raw).unwrap(), body);
        assert_eq!(parse_answer(&http_body(&raw).unwrap()).unwrap().0, 0);
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"re\r\n11\r\nsult\": 3, \"x\": 1}\r\n0\r\n\r\n";
        assert_eq!(parse_answer(&http_body(chunked).unwrap()).unwrap().0, 3);
        assert!(http_body(b"HTTP/1.1 400 Bad Request\r\n\r\n").unwrap_err().to_string().contains("400"));
        assert!(http_body(b"garbage").is_err());
    }

    #[test]
    fn leases_from_the_lease_api_end_at_cltt_plus_lifetime() {
        // As kea-dhcp4 2.2.0's lease4-get-all gave it here.
        let v: Value = serde_json::from_str(
            r#"{ "client-id": "01:02:00:00:00:00:05", "cltt": 1796307954, "fqdn-fwd": false, "fqdn-rev": false,
                 "hostname": "x.y.z", "hw-address": "02:00:00:00:00:05", "ip-address": "10.99.0.105", "state": 0,
                 "subnet-id": 1, "valid-lft": 600 }"#,
        )
        .unwrap();
        let l = lease_from_json(&v).unwrap();
        assert_eq!((l.expire, l.valid_lifetime, l.subnet_id), (1796308554, 600, 1));
        assert_eq!(l.client_id, vec![1, 2, 0, 0, 0, 0, 5]);
        let a = lease_args(&l);
        assert_eq!(a["hw-address"], "02:00:00:00:00:05");
        assert_eq!(a["expire"], 1796308554u64);
    }

    #[test]
    fn appending_to_a_lease_file_skips_what_it_leases_to_others() {
        let d = std::env::temp_dir().join(format!("coresvc-handoff-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("leases4.csv");
        let lease = |a: u8, mac: u8| KeaLease {
            address: Ipv4Addr::new(10, 20, 0, a),
            hwaddr: vec![2, 0, 0, 0, 0, mac],
            client_id: Vec::new(),
            valid_lifetime: 600,
            expire: 2000,
            subnet_id: 2,
            fqdn_fwd: false,
            fqdn_rev: false,
            hostname: String::new(),
            state: 0,
        };
        let r = append_to_memfile(&f, &[lease(100, 1)], 1000).unwrap();
        assert_eq!(r.rows, 1);
        let r = append_to_memfile(&f, &[lease(100, 2), lease(101, 3), lease(100, 1)], 1000).unwrap();
        assert_eq!(r.rows, 2);
        assert_eq!(r.conflicts.len(), 1, "{r:?}");
        let text = std::fs::read_to_string(&f).unwrap();
        assert_eq!(text.matches(kea::HEADER).count(), 1, "{text}");
        assert_eq!(kea::load_memfile(&f).unwrap().len(), 2);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
