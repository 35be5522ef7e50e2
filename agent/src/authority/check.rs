//! Is the production infrastructure a true copy? (issue 18, seed §3:
//! "intentional duplication with exclusive activation, not conflicting
//! truth".) Before coresvc steps down, and periodically while it is in
//! production mode, every RRset of coresvc's zones (built from the
//! configuration and the persisted service moves, as a fresh start would
//! serve them; names DHCP clients registered follow the leases, which the
//! production DHCP owns, and are left out) is asked of each segment's
//! production DNS servers and compared: the same records with the same
//! TTLs, authoritatively (a delegation: the same NS in the referral; the
//! SOA's serial is not compared, every other field is). And on every
//! segment coresvc serves DHCP, a DHCP server other than coresvc must
//! answer a DHCPDISCOVER.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Mutex,
    time::Duration,
};

use anyhow::Result;
use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RData, Record, RecordType, rdata::SOA},
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpStream, UdpSocket},
};
use tracing::{info, warn};

use crate::config::Config;

/// One RRset coresvc serves.
#[derive(Debug, Clone)]
pub struct RrSet {
    pub name: Name,
    pub rtype: RecordType,
    pub records: Vec<Record>,
    /// NS records of a delegation (answered as a referral, not authoritatively).
    pub delegation: bool,
}

/// One way the production side does not answer as coresvc would.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    pub name: String,
    pub rtype: String,
    /// What coresvc serves ("TTL RDATA" each).
    pub coresvc: Vec<String>,
    /// What the production server answered.
    pub production: Vec<String>,
    pub why: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerReport {
    pub server: SocketAddr,
    /// RRsets it answered exactly as coresvc would.
    pub agreed: usize,
    pub differences: Vec<Difference>,
    /// Set when it stopped answering (the RRsets not asked are not listed).
    pub unreachable: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentReport {
    pub segment: String,
    pub interface: String,
    pub dns: Vec<ServerReport>,
    /// `None`: coresvc serves no DHCP here, nothing to find. Else the DHCP
    /// servers that answered (none is a difference).
    pub dhcp: Option<Vec<String>>,
}

/// A whole comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Unix seconds.
    pub at: u64,
    /// The RRsets each production DNS server was asked for.
    pub rrsets: usize,
    pub segments: Vec<SegmentReport>,
    /// What could not be checked because nothing is configured to check it.
    pub unverified: Vec<String>,
}

/// The last periodic comparison, for `coresvc status` and the metrics.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    pub at: u64,
    pub checks: u64,
    pub differences: usize,
    pub unverified: usize,
    /// The first few, one line each.
    pub lines: Vec<String>,
}

impl Report {
    /// Each production DNS server's report once, with the segments it serves.
    pub fn servers(&self) -> Vec<(&ServerReport, Vec<&str>)> {
        let mut out: Vec<(&ServerReport, Vec<&str>)> = Vec::new();
        for s in &self.segments {
            for d in &s.dns {
                match out.iter_mut().find(|(r, _)| r.server == d.server) {
                    Some((_, segs)) => segs.push(&s.segment),
                    None => out.push((d, vec![s.segment.as_str()])),
                }
            }
        }
        out
    }

    /// Every difference, one line each: per DNS server (once, whichever
    /// segments it serves), then the segments without a DHCP server.
    pub fn differences(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (d, segs) in self.servers() {
            let who = format!("DNS {} (segment {})", d.server, segs.join(", "));
            if let Some(u) = &d.unreachable {
                out.push(format!("{who}: {u}"));
            }
            for x in &d.differences {
                out.push(format!(
                    "{who}: {} {}: {}: coresvc [{}], production [{}]",
                    x.name,
                    x.rtype,
                    x.why,
                    x.coresvc.join("; "),
                    x.production.join("; ")
                ));
            }
        }
        for s in &self.segments {
            if s.dhcp.as_ref().is_some_and(Vec::is_empty) {
                out.push(format!(
                    "segment {} ({}): no DHCP server answers (coresvc serves DHCP here in bootstrap mode)",
                    s.segment, s.interface
                ));
            }
        }
        out
    }

    /// Nothing differs and everything was checked.
    pub fn agrees(&self) -> bool {
        self.unverified.is_empty() && self.differences().is_empty()
    }

    /// The report as the CLI prints it.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        for (d, segs) in self.servers() {
            let state = d.unreachable.as_ref().map(|u| format!("{u}; ")).unwrap_or_default();
            let _ = writeln!(
                o,
                "DNS  {:<22} segment {:<20} {state}{} of {} RRsets as coresvc, {} differ",
                d.server.to_string(),
                segs.join(", "),
                d.agreed,
                self.rrsets,
                d.differences.len()
            );
        }
        for s in &self.segments {
            if let Some(found) = s.dhcp.as_ref().filter(|f| !f.is_empty()) {
                let _ = writeln!(o, "DHCP segment {:<10} {}", s.segment, found.join("; "));
            }
        }
        for u in &self.unverified {
            let _ = writeln!(o, "UNVERIFIED  {u}");
        }
        for d in self.differences() {
            let _ = writeln!(o, "DIFFERS     {d}");
        }
        if self.agrees() {
            let _ = writeln!(o, "the production infrastructure agrees with coresvc");
        }
        o
    }

    pub fn summary(&self, checks: u64) -> Summary {
        let mut lines = self.unverified.clone();
        lines.extend(self.differences());
        let differences = lines.len() - self.unverified.len();
        lines.truncate(20);
        Summary { at: self.at, checks, differences, unverified: self.unverified.len(), lines }
    }
}

/// The RRsets coresvc would serve on a fresh start: the configuration's
/// zones with the persisted service moves (no sockets are opened).
pub fn expected(cfg: &Config) -> Result<Vec<RrSet>> {
    let dns = crate::dns::Dns::new(cfg)?;
    Ok(rrsets_of(&dns.resolver.catalog()))
}

/// Every RRset of `catalog`'s authoritative data (below a delegation only
/// the NS of the cut), in a stable order.
pub fn rrsets_of(catalog: &crate::dns::zone::Catalog) -> Vec<RrSet> {
    let mut out = Vec::new();
    for z in catalog.zones() {
        let apex = z.origin.clone();
        let cuts: Vec<Name> = z
            .nodes
            .iter()
            .filter(|(n, node)| {
                Name::from((*n).clone()) != apex && node.get(RecordType::NS).is_some_and(|s| !s.is_empty())
            })
            .map(|(n, _)| Name::from(n.clone()))
            .collect();
        let mut names: Vec<Name> = z.nodes.keys().map(|n| Name::from(n.clone())).collect();
        names.sort();
        for name in names {
            let cut = cuts.contains(&name);
            if !cut && cuts.iter().any(|c| c.zone_of(&name)) {
                // Glue and occluded data below a delegation.
                continue;
            }
            let node = &z.nodes[&(&name).into()];
            for set in node.rrsets.values().filter(|s| !s.is_empty()) {
                let rtype = set[0].record_type();
                if cut && rtype != RecordType::NS {
                    continue;
                }
                out.push(RrSet { name: name.clone(), rtype, records: set.clone(), delegation: cut });
            }
        }
    }
    out
}

/// A record as the reports show it.
fn show(r: &Record) -> String {
    format!("{} {}", r.ttl, r.data)
}

/// A record's comparable form: TTL and data, the SOA's serial set aside.
fn comparable(r: &Record) -> (u32, RData) {
    let data = match &r.data {
        RData::SOA(s) => {
            RData::SOA(SOA::new(s.mname.clone(), s.rname.clone(), 0, s.refresh, s.retry, s.expire, s.minimum))
        }
        d => d.clone(),
    };
    (r.ttl, data)
}

fn same_records(a: &[Record], b: &[Record]) -> bool {
    let key = |v: &[Record]| {
        let mut k: Vec<(u32, String, RData)> = v
            .iter()
            .map(|r| {
                let (ttl, d) = comparable(r);
                (ttl, d.to_string(), d)
            })
            .collect();
        k.sort_by(|x, y| (x.0, &x.1).cmp(&(y.0, &y.1)));
        k.into_iter().map(|(t, _, d)| (t, d)).collect::<Vec<_>>()
    };
    a.len() == b.len() && key(a) == key(b)
}

/// Compares the production answer to `want`; `None` when they agree.
pub fn compare(want: &RrSet, reply: &Message) -> Option<Difference> {
    let diff = |why: String, production: Vec<String>| Difference {
        name: want.name.to_string(),
        rtype: want.rtype.to_string(),
        coresvc: want.records.iter().map(show).collect(),
        production,
        why,
    };
    let rcode = reply.metadata.response_code;
    if rcode != ResponseCode::NoError {
        return Some(diff(format!("answered {rcode}"), Vec::new()));
    }
    let section = if want.delegation { &reply.authorities } else { &reply.answers };
    let got: Vec<Record> =
        section.iter().filter(|r| r.name == want.name && r.record_type() == want.rtype).cloned().collect();
    let shown = got.iter().map(show).collect();
    if !want.delegation && !reply.metadata.authoritative {
        return Some(diff("not an authoritative answer (AA not set)".into(), shown));
    }
    if got.is_empty() {
        return Some(diff("missing".into(), section.iter().map(|r| format!("{} {}", r.name, show(r))).collect()));
    }
    (!same_records(&want.records, &got)).then(|| diff("records differ".into(), shown))
}

/// One question to `server`: UDP, then TCP when the answer is truncated.
pub async fn ask(server: SocketAddr, name: &Name, rtype: RecordType, timeout: Duration) -> Result<Message, String> {
    let id: u16 = rand::random();
    let mut q = Message::new(id, MessageType::Query, OpCode::Query);
    q.add_query(Query::query(name.clone(), rtype));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    q.set_edns(edns);
    let bytes = q.to_vec().map_err(|e| e.to_string())?;
    let matches = |m: &Message| {
        m.metadata.id == id
            && m.metadata.message_type == MessageType::Response
            && m.queries.first().is_some_and(|x| x.name() == name && x.query_type() == rtype)
    };
    let udp = async {
        let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await.map_err(|e| e.to_string())?;
        sock.connect(server).await.map_err(|e| e.to_string())?;
        sock.send(&bytes).await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 65535];
        loop {
            let n = sock.recv(&mut buf).await.map_err(|e| e.to_string())?;
            if let Ok(m) = Message::from_vec(&buf[..n])
                && matches(&m)
            {
                return Ok::<Message, String>(m);
            }
        }
    };
    let reply = tokio::time::timeout(timeout, udp).await.map_err(|_| format!("no answer within {timeout:?}"))??;
    if !reply.metadata.truncation {
        return Ok(reply);
    }
    let tcp = async {
        let mut s = TcpStream::connect(server).await.map_err(|e| e.to_string())?;
        let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&bytes);
        s.write_all(&out).await.map_err(|e| e.to_string())?;
        let len = s.read_u16().await.map_err(|e| e.to_string())? as usize;
        let mut buf = vec![0u8; len];
        s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        let m = Message::from_vec(&buf).map_err(|e| e.to_string())?;
        if matches(&m) { Ok(m) } else { Err("the TCP answer does not match the question".to_string()) }
    };
    tokio::time::timeout(timeout, tcp).await.map_err(|_| format!("no TCP answer within {timeout:?}"))?
}

/// Questions in flight at once per server.
const IN_FLIGHT: usize = 16;

/// Asks `server` for every RRset. A server that leaves a whole batch of
/// questions unanswered is reported unreachable and asked nothing more.
pub async fn check_server(server: SocketAddr, rrsets: &[RrSet], timeout: Duration) -> ServerReport {
    let mut r = ServerReport { server, agreed: 0, differences: Vec::new(), unreachable: None };
    for batch in rrsets.chunks(IN_FLIGHT) {
        let answers = futures::future::join_all(batch.iter().map(|s| ask(server, &s.name, s.rtype, timeout))).await;
        if answers.iter().all(Result::is_err) {
            let why = answers.into_iter().find_map(Result::err).unwrap_or_default();
            r.unreachable = Some(format!("does not answer ({why})"));
            return r;
        }
        for (want, got) in batch.iter().zip(answers) {
            match got {
                Ok(m) => match compare(want, &m) {
                    None => r.agreed += 1,
                    Some(d) => r.differences.push(d),
                },
                Err(e) => r.differences.push(Difference {
                    name: want.name.to_string(),
                    rtype: want.rtype.to_string(),
                    coresvc: want.records.iter().map(show).collect(),
                    production: Vec::new(),
                    why: e,
                }),
            }
        }
    }
    r
}

/// Segments where coresvc serves DHCP in bootstrap mode (a pool, or a
/// static host in its network).
pub fn dhcp_segments(cfg: &Config) -> Vec<usize> {
    if !cfg.dhcp.enabled {
        return Vec::new();
    }
    (0..cfg.segments.len())
        .filter(|&i| {
            let s = &cfg.segments[i];
            cfg.dhcp.pools.iter().any(|p| p.segment == s.name)
                || cfg.dhcp.hosts.iter().any(|h| s.cidr.trunc().contains(&h.address))
        })
        .collect()
}

/// Compares the production infrastructure with coresvc. `ours`: the
/// addresses coresvc holds (DHCP answers from them are its own).
pub async fn run(cfg: &Config, ours: Vec<Ipv4Addr>) -> Result<Report> {
    let auth = cfg.authority.clone().unwrap_or_default();
    let rrsets = if cfg.dns.enabled { expected(cfg)? } else { Vec::new() };
    let timeout = Duration::from_millis(u64::from(auth.query_timeout_ms));
    let mut unverified = Vec::new();
    // Each server once, whichever segments name it.
    let mut servers: Vec<SocketAddr> = Vec::new();
    for s in &cfg.segments {
        let list = auth.dns_for(&s.name);
        if cfg.dns.enabled && list.is_empty() {
            unverified.push(format!(
                "segment {}: no production DNS server is configured (authority.dns, or authority.segment's dns), \
                 so its answers cannot be compared",
                s.name
            ));
        }
        for e in list {
            if !servers.contains(&e.0) {
                servers.push(e.0);
            }
        }
    }
    let dns = futures::future::join_all(servers.iter().map(|s| check_server(*s, &rrsets, timeout)));
    let wait = Duration::from_millis(u64::from(cfg.dhcp.probe_wait_ms.max(500)));
    let dhcp_at = dhcp_segments(cfg);
    let probes = dhcp_at.iter().map(|&i| {
        let iface = cfg.segments[i].interface.clone();
        let ours = ours.clone();
        async move {
            // Up to three DHCPDISCOVERs: a lost datagram is no missing server.
            let found = tokio::task::spawn_blocking(move || {
                let mut last = Ok(Vec::new());
                for _ in 0..3 {
                    last = super::dhcp_servers(&iface, &ours, wait);
                    if last.as_ref().is_ok_and(|f| !f.is_empty()) {
                        break;
                    }
                }
                last
            })
            .await;
            match found {
                Ok(Ok(f)) => f.iter().map(ToString::to_string).collect::<Vec<_>>(),
                Ok(Err(e)) => {
                    warn!("authority check: DHCP probe: {e:#}");
                    Vec::new()
                }
                Err(e) => {
                    warn!("authority check: DHCP probe task: {e}");
                    Vec::new()
                }
            }
        }
    });
    let (dns, dhcp) = futures::future::join(dns, futures::future::join_all(probes)).await;
    let mut segments = Vec::new();
    for (i, s) in cfg.segments.iter().enumerate() {
        let mine: Vec<ServerReport> =
            dns.iter().filter(|r| auth.dns_for(&s.name).iter().any(|e| e.0 == r.server)).cloned().collect();
        let found = dhcp_at.iter().position(|&j| j == i).map(|k| dhcp[k].clone());
        segments.push(SegmentReport {
            segment: s.name.clone(),
            interface: s.interface.clone(),
            dns: mine,
            dhcp: found,
        });
    }
    Ok(Report { at: crate::dhcp::unix_now(), rrsets: rrsets.len(), segments, unverified })
}

/// The periodic comparison's last result (production mode).
#[derive(Default)]
pub struct Monitor {
    last: Mutex<Option<Summary>>,
}

impl Monitor {
    /// Keeps `r` as the last result and logs it: every difference while the
    /// truth conflicts, one line when it agrees again.
    pub fn record(&self, r: &Report) {
        let mut last = self.last.lock().expect("truth monitor lock");
        let checks = last.as_ref().map_or(0, |s| s.checks) + 1;
        let s = r.summary(checks);
        let was = last.as_ref().map_or(0, |l| l.differences);
        if s.differences > 0 {
            warn!(
                differences = s.differences,
                "authority: conflicting truth: the production infrastructure does not answer as coresvc's records say: {}",
                s.lines.join(" | ")
            );
        } else if was > 0 {
            info!("authority: the production infrastructure agrees with coresvc again");
        }
        *last = Some(s);
    }

    /// Forgets the last result (back in bootstrap mode nothing is compared).
    pub fn clear(&self) {
        *self.last.lock().expect("truth monitor lock") = None;
    }

    pub fn last(&self) -> Option<Summary> {
        self.last.lock().expect("truth monitor lock").clone()
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr as _;

    use hickory_proto::rr::rdata::{A, CNAME, NS};

    use super::*;

    fn n(s: &str) -> Name {
        Name::from_str(s).unwrap()
    }

    fn reply(aa: bool, answers: Vec<Record>) -> Message {
        let mut m = Message::new(1, MessageType::Response, OpCode::Query);
        m.metadata.authoritative = aa;
        for a in answers {
            m.add_answer(a);
        }
        m
    }

    fn a(name: &str, ttl: u32, ip: [u8; 4]) -> Record {
        Record::from_rdata(n(name), ttl, RData::A(A::from(Ipv4Addr::from(ip))))
    }

    #[test]
    fn an_rrset_agrees_only_with_the_same_records_and_ttls_authoritatively() {
        let want = RrSet {
            name: n("web.ref.deevnet.net."),
            rtype: RecordType::A,
            records: vec![
                a("web.ref.deevnet.net.", 120, [10, 20, 0, 80]),
                a("web.ref.deevnet.net.", 120, [10, 20, 0, 81]),
            ],
            delegation: false,
        };
        let same = reply(
            true,
            vec![a("WEB.ref.deevnet.net.", 120, [10, 20, 0, 81]), a("web.ref.deevnet.net.", 120, [10, 20, 0, 80])],
        );
        assert_eq!(compare(&want, &same), None, "order and case do not matter");
        let d = compare(&want, &reply(true, vec![a("web.ref.deevnet.net.", 120, [10, 20, 0, 80])])).unwrap();
        assert_eq!(d.why, "records differ");
        assert_eq!(d.production, ["120 10.20.0.80"]);
        let ttl = reply(
            true,
            vec![a("web.ref.deevnet.net.", 60, [10, 20, 0, 80]), a("web.ref.deevnet.net.", 60, [10, 20, 0, 81])],
        );
        assert!(compare(&want, &ttl).is_some(), "another TTL differs");
        let d = compare(&want, &reply(false, same.answers.clone())).unwrap();
        assert!(d.why.contains("not an authoritative"), "{d:?}");
        let mut nx = reply(true, vec![]);
        nx.metadata.response_code = ResponseCode::NXDomain;
        assert!(
            compare(&want, &nx).unwrap().why.contains("NXDOMAIN")
                || compare(&want, &nx).unwrap().why.contains("Non-Existent")
        );
        // A CNAME chain's other records are not this RRset's.
        let cname = RrSet {
            name: n("www.ref.deevnet.net."),
            rtype: RecordType::CNAME,
            records: vec![Record::from_rdata(
                n("www.ref.deevnet.net."),
                120,
                RData::CNAME(CNAME(n("web.ref.deevnet.net."))),
            )],
            delegation: false,
        };
        let mut chain = cname.records.clone();
        chain.push(a("web.ref.deevnet.net.", 120, [10, 20, 0, 80]));
        assert_eq!(compare(&cname, &reply(true, chain)), None);
    }

    #[test]
    fn the_soa_serial_is_not_compared_but_the_rest_is_and_referrals_count() {
        let soa = |serial, minimum| {
            Record::from_rdata(
                n("ref.deevnet.net."),
                120,
                RData::SOA(SOA::new(
                    n("ns.ref.deevnet.net."),
                    n("hostmaster.ref.deevnet.net."),
                    serial,
                    3600,
                    600,
                    604800,
                    minimum,
                )),
            )
        };
        let want =
            RrSet { name: n("ref.deevnet.net."), rtype: RecordType::SOA, records: vec![soa(1, 60)], delegation: false };
        assert_eq!(compare(&want, &reply(true, vec![soa(2026, 60)])), None);
        assert!(compare(&want, &reply(true, vec![soa(1, 300)])).is_some());
        let ns = Record::from_rdata(n("sub.ref.deevnet.net."), 120, RData::NS(NS(n("ns.sub.ref.deevnet.net."))));
        let cut = RrSet {
            name: n("sub.ref.deevnet.net."),
            rtype: RecordType::NS,
            records: vec![ns.clone()],
            delegation: true,
        };
        let mut referral = reply(false, vec![]);
        referral.add_authority(ns);
        assert_eq!(compare(&cut, &referral), None, "a referral is not authoritative");
        assert_eq!(compare(&cut, &reply(false, vec![])).unwrap().why, "missing");
    }

    #[test]
    fn every_authoritative_rrset_of_the_example_is_listed_and_glue_is_not() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/coresvc.toml")).unwrap();
        let extra = "\n[[zone]]\nname = \"ref.deevnet.net\"\nrole = \"site\"\n[[zone.host]]\nname = \"ns\"\naddresses = [\"10.20.0.1\"]\n\
                     [[zone.record]]\nname = \"sub\"\ntype = \"NS\"\ndata = \"ns.sub\"\n\
                     [[zone.record]]\nname = \"ns.sub\"\ntype = \"A\"\ndata = \"10.20.0.53\"\n";
        let cfg = Config::parse_str_in(
            &(text + extra),
            "coresvc.toml",
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples"),
        )
        .unwrap();
        let catalog = crate::dns::build::build(&cfg, 7).unwrap();
        let sets = rrsets_of(&catalog);
        let has = |name: &str, t: RecordType| sets.iter().any(|s| s.name == n(name) && s.rtype == t);
        assert!(has("mgmt.deevnet.net.", RecordType::SOA) && has("mgmt.deevnet.net.", RecordType::NS));
        assert!(has("artifacts.dvnt.deevnet.net.", RecordType::CNAME));
        assert!(has("provisioner-01.mgmt.deevnet.net.", RecordType::A));
        assert!(has("10.0.10.10.in-addr.arpa.", RecordType::PTR), "reverse zones too");
        assert!(sets.iter().any(|s| s.name == n("sub.ref.deevnet.net.") && s.delegation));
        assert!(!has("ns.sub.ref.deevnet.net.", RecordType::A), "glue is not authoritative data");
    }
}
