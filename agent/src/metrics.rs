//! Prometheus metrics (text exposition format 0.0.4) on the opt-in
//! `agent.metrics_listen` address: everything `coresvc status` and
//! `coresvc rules` show, as counters and gauges. Rendering is a pure
//! function of those views; the server is a minimal HTTP/1.1 responder
//! (`GET /metrics`), local by default.

use std::{collections::BTreeMap, fmt::Write as _, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tracing::{debug, info, warn};

use crate::{ctl::Status, dataplane::rules::RuleStatus};

/// The text of one scrape.
#[derive(Default)]
struct Out {
    text: String,
    declared: std::collections::BTreeSet<String>,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        if self.declared.insert(name.to_string()) {
            let _ = writeln!(self.text, "# HELP {name} {help}");
            let _ = writeln!(self.text, "# TYPE {name} {kind}");
        }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape(v));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// One family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// Every numeric field of a serialised counter struct as
    /// `<prefix>_<field>_total` (maps of counters become one family with
    /// the key as `label`).
    fn counters(&mut self, prefix: &str, what: &str, v: &Value, label: &str, labels: &[(&str, &str)]) {
        let Some(obj) = v.as_object() else { return };
        for (field, val) in obj {
            if let Some(n) = val.as_u64() {
                let name = format!("{prefix}_{field}_total");
                self.family(&name, "counter", &format!("{what}: {}", field.replace('_', " ")));
                self.sample(&name, labels, n);
            } else if let Some(map) = val.as_object() {
                let name = format!("{prefix}_{field}_total");
                self.family(&name, "counter", &format!("{what}: {} by {label}", field.replace('_', " ")));
                for (k, n) in map {
                    if let Some(n) = n.as_u64() {
                        let mut l = labels.to_vec();
                        l.push((label, k));
                        self.sample(&name, &l, n);
                    }
                }
            }
        }
    }
}

/// Label values escape backslash, double quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The metrics for a status snapshot and the rules with their counters.
pub fn render(s: &Status, rules: &[RuleStatus]) -> String {
    let mut o = Out::default();
    o.family("coresvc_info", "gauge", "the running coresvc: version and authority mode");
    let authority = crate::authority::name(s.authority);
    o.sample("coresvc_info", &[("version", &s.version), ("authority", authority)], 1);
    o.single("coresvc_uptime_seconds", "gauge", "seconds since the agent started", s.uptime_secs);
    o.single(
        "coresvc_authority_bootstrap",
        "gauge",
        "1 in bootstrap mode (coresvc is the DNS/DHCP/TFTP authority), 0 in production mode",
        u8::from(authority == "bootstrap"),
    );
    o.family("coresvc_segment_refused", "gauge", "1 for a segment coresvc did not activate on (another authority)");
    for p in &s.refused {
        o.sample("coresvc_segment_refused", &[("segment", &p.segment), ("interface", &p.interface)], 1);
    }
    o.family(
        "coresvc_foreign_dhcp_answers_total",
        "counter",
        "answers seen from another DHCP server on a segment coresvc serves",
    );
    for f in &s.foreign_dhcp {
        let server = f.server.to_string();
        o.sample("coresvc_foreign_dhcp_answers_total", &[("segment", &f.segment), ("server", &server)], f.answers);
    }
    if let Some(t) = &s.truth {
        o.single(
            "coresvc_authority_conflicting_truth",
            "gauge",
            "differences the last periodic check found between the production infrastructure and coresvc's records",
            t.differences as u64,
        );
        o.single(
            "coresvc_authority_unverified",
            "gauge",
            "what the last periodic check could not compare (nothing configured to ask)",
            t.unverified as u64,
        );
        o.single(
            "coresvc_authority_checks_total",
            "counter",
            "periodic checks of the production infrastructure",
            t.checks,
        );
        o.single("coresvc_authority_last_check_timestamp_seconds", "gauge", "when the last periodic check ran", t.at);
    }

    // Dataplane.
    let d = &s.dataplane;
    o.family("coresvc_xdp_packets_total", "counter", "packets seen by XDP, per interface and verdict");
    o.family("coresvc_xdp_bytes_total", "counter", "bytes seen by XDP, per interface and verdict");
    for i in &d.interfaces {
        for (verdict, c) in &i.verdicts {
            let l = [("interface", i.name.as_str()), ("verdict", verdict.as_str())];
            o.sample("coresvc_xdp_packets_total", &l, c.packets);
            o.sample("coresvc_xdp_bytes_total", &l, c.bytes);
        }
    }
    o.family("coresvc_drops_total", "counter", "packets dropped by the programs, per numbered reason");
    o.family("coresvc_drop_bytes_total", "counter", "bytes dropped by the programs, per numbered reason");
    for r in &d.drop_reasons {
        let code = r.reason.to_string();
        let l = [("reason", r.name.as_str()), ("code", code.as_str())];
        o.sample("coresvc_drops_total", &l, r.packets);
        o.sample("coresvc_drop_bytes_total", &l, r.bytes);
    }
    o.single("coresvc_conntrack_connections", "gauge", "tracked connections", d.firewall.connections);
    o.single(
        "coresvc_firewall_generation",
        "gauge",
        "rule-set generation (bumped by every install)",
        d.firewall.generation,
    );
    o.single("coresvc_nat_bindings", "gauge", "masquerade bindings (inside endpoint <-> outside port)", d.nat.bindings);
    o.single(
        "coresvc_dns_xdp_answering",
        "gauge",
        "1 while the segment programs answer from the XDP DNS cache",
        u8::from(d.dns_cache.answering),
    );
    o.family(
        "coresvc_dns_xdp_total",
        "counter",
        "XDP DNS answer cache per segment: hits, misses, expired, invalidated",
    );
    o.family("coresvc_dns_xdp_passes_total", "counter", "queries the XDP DNS cache passed to the agent, by reason");
    for c in &d.dns_cache.segments {
        for (result, n) in [("hit", c.hits), ("miss", c.misses), ("expired", c.expired), ("invalidated", c.invalidated)]
        {
            o.sample("coresvc_dns_xdp_total", &[("segment", c.segment.as_str()), ("result", result)], n);
        }
        for (reason, n) in &c.passes {
            o.sample(
                "coresvc_dns_xdp_passes_total",
                &[("segment", c.segment.as_str()), ("reason", reason.as_str())],
                n,
            );
        }
    }
    o.family("coresvc_firewall_rule_packets_total", "counter", "packets matched per firewall rule (active bank)");
    o.family("coresvc_firewall_rule_bytes_total", "counter", "bytes matched per firewall rule (active bank)");
    for r in rules {
        let index = r.index.to_string();
        let l = [("index", index.as_str()), ("rule", r.name.as_str()), ("action", r.action.as_str())];
        o.sample("coresvc_firewall_rule_packets_total", &l, r.packets);
        o.sample("coresvc_firewall_rule_bytes_total", &l, r.bytes);
    }

    // Services.
    if let Some(dns) = &s.dns {
        o.single("coresvc_dns_cache_entries", "gauge", "answers in the agent's DNS cache", dns.cache_entries);
        o.counters("coresvc_dns", "DNS", &serde_json::to_value(&dns.counters).unwrap_or_default(), "kind", &[]);
    }
    if let Some(dhcp) = &s.dhcp {
        o.counters("coresvc_dhcp", "DHCP", &serde_json::to_value(&dhcp.counters).unwrap_or_default(), "reason", &[]);
        o.family("coresvc_dhcp_leases_bound", "gauge", "bound leases per segment");
        o.family("coresvc_dhcp_pool_size", "gauge", "dynamic addresses per segment");
        for u in &dhcp.segments {
            let l = [("segment", u.segment.as_str())];
            o.sample("coresvc_dhcp_leases_bound", &l, u.bound);
            o.sample("coresvc_dhcp_pool_size", &l, u.pool_size);
        }
        o.single(
            "coresvc_dhcp_journal_commits_total",
            "counter",
            "group commits (fdatasync) of the lease journal",
            dhcp.journal.commits,
        );
        o.single(
            "coresvc_dhcp_journal_failures_total",
            "counter",
            "lease journal commits that failed",
            dhcp.journal.failures,
        );
    }
    if let Some(t) = &s.tftp {
        let mut v = serde_json::to_value(t).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            // Gauges and non-counters, below.
            for k in ["active", "serving", "root", "listening"] {
                obj.remove(k);
            }
        }
        o.counters("coresvc_tftp", "TFTP", &v, "reason", &[]);
        o.single("coresvc_tftp_active_transfers", "gauge", "TFTP transfers running now", t.active);
    }
    o.text
}

/// What the server asks of the agent for a scrape.
pub trait Source: Send + Sync + 'static {
    fn scrape(&self) -> Result<String>;
}

/// Binds `addr` (at start, before anything changes: a taken port refuses
/// the start).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("binding agent.metrics_listen {addr}"))
}

/// Answers `GET /metrics` on `listener` until aborted.
pub fn serve<S: Source>(listener: TcpListener, source: Arc<S>) -> tokio::task::JoinHandle<()> {
    if let Ok(addr) = listener.local_addr() {
        info!("metrics: serving http://{addr}/metrics");
    }
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let source = source.clone();
            tokio::spawn(async move {
                if let Err(e) = tokio::time::timeout(Duration::from_secs(10), answer(stream, source)).await {
                    debug!(%peer, "metrics: {e}");
                }
            });
        }
    })
}

async fn answer<S: Source>(mut stream: TcpStream, source: Arc<S>) {
    let mut req = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(req.split(|&b| b == b'\r').next().unwrap_or_default()).to_string();
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, body, ctype) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => match source.scrape() {
            Ok(text) => ("200 OK", text, "text/plain; version=0.0.4; charset=utf-8"),
            Err(e) => {
                warn!("metrics: {e:#}");
                ("503 Service Unavailable", format!("{e:#}\n"), "text/plain; charset=utf-8")
            }
        },
        ("GET", _) => ("404 Not Found", "try /metrics\n".to_string(), "text/plain; charset=utf-8"),
        _ => ("405 Method Not Allowed", "GET only\n".to_string(), "text/plain; charset=utf-8"),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// A parsed exposition, for tests: `name{labels}` -> value.
pub fn parse(text: &str) -> Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line.rsplit_once(' ').with_context(|| format!("line {}: no value: {line:?}", n + 1))?;
        let v: f64 = value.parse().with_context(|| format!("line {}: bad value {value:?}", n + 1))?;
        out.insert(key.to_string(), v);
    }
    Ok(out)
}
