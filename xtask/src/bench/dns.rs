//! `cargo xtask bench dns`, one lab, one run, the same names throughout:
//!
//! 1. dnsperf from a segment client against coresvc's DNS service (the
//!    agent path, XDP cache off) and against dnsmasq serving the same
//!    records: queries per second and the ratio.
//! 2. A kxdpgun flood (knot-dnsutils: AF_XDP, one thread, the client's veth)
//!    against (a) coresvc with the XDP answer cache, warmed by one query per
//!    name, (b) coresvc's agent alone (cache off), (c) dnsmasq alone,
//!    (d) the lab's limit: `coresvc devtool reflect`, a bare XDP program on
//!    the gateway's segment interface that sends every query back with
//!    addresses and ports swapped. Queries and answers per second, the
//!    share answered, the responses' rcodes, and the ratios of (a) to the
//!    others. Before (a)'s flood every name answered by the fast path is
//!    checked against the agent's own answer (over TCP, which XDP never
//!    answers); after it, the cache's counters show who answered.
//! 3. `coresvc devtool dns-cost`: the segment program's cost per answer from
//!    BPF_PROG_TEST_RUN, against passing the query on, the reflector and an
//!    empty program.

use std::{process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};
use coresvc_lab::{AgentOpts, Lab};
use serde_json::Value;

use super::{BenchLab, forward::Bg, ratio};
use crate::util::step;

/// The segment the clients flood, its gateway address and dnsmasq's.
const SEGMENT: &str = "dvnt";
const CORESVC: &str = "10.20.0.1";
const DNSMASQ: &str = "10.20.0.3";

/// The query mix: names both servers answer the same way.
const QUERIES: &[(&str, &str)] = &[
    ("provisioner-01.mgmt.deevnet.net", "A"),
    ("artifacts.mgmt.deevnet.net", "A"),
    ("artifacts.dvntm.deevnet.net", "A"),
    ("pxe.mgmt.deevnet.net", "A"),
    ("ns.mgmt.deevnet.net", "A"),
    ("1.0.10.10.in-addr.arpa", "PTR"),
    ("nothing-here.mgmt.deevnet.net", "A"),
];

/// The same records for dnsmasq, authoritative for nothing else.
fn dnsmasq_args(listen: &str) -> Vec<String> {
    let mut a: Vec<String> = [
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        "--bind-interfaces",
        "--local=/deevnet.net/",
        "--local=/10.in-addr.arpa/",
        "--cache-size=10000",
        "--dns-forward-max=1000",
        "--pid-file",
        "--user=root",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(format!("--listen-address={listen}"));
    a.push("--port=53".into());
    a.push("--host-record=provisioner-01.mgmt.deevnet.net,10.10.0.10".into());
    a.push("--host-record=provisioner-01-dvntm.mgmt.deevnet.net,10.10.0.10".into());
    a.push("--host-record=ns.mgmt.deevnet.net,10.10.0.1".into());
    a.push("--cname=artifacts.mgmt.deevnet.net,provisioner-01-dvntm.mgmt.deevnet.net".into());
    a.push("--cname=artifacts.dvntm.deevnet.net,artifacts.mgmt.deevnet.net".into());
    a.push("--cname=pxe.mgmt.deevnet.net,provisioner-01.mgmt.deevnet.net".into());
    a
}

pub fn run(b: &BenchLab, seconds: u64) -> Result<()> {
    let mut lab = b.lab()?;
    let cache_off = lab.config_with("bench-dns.toml", |s| s.replace("dns_cache = true", "dns_cache = false"))?;
    let cache_on = lab.config_with("bench-dns-xdp.toml", |s| s)?;
    lab.start_agent(&AgentOpts::new(&cache_off))?;
    // dnsmasq on a second address of the same segment, in the gateway.
    dnsmasq_address(&lab)?;
    let dnsmasq = Bg(lab
        .cmd("gw", ["dnsmasq"])
        .args(dnsmasq_args(DNSMASQ))
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting dnsmasq (package dnsmasq-base)")?);
    std::thread::sleep(Duration::from_millis(500));
    let result = measure(&mut lab, seconds, &cache_on);
    drop(dnsmasq);
    drop(lab);
    result
}

/// dnsmasq's address on the segment (again: an agent that starts or stops
/// may have flushed it).
fn dnsmasq_address(lab: &Lab) -> Result<()> {
    coresvc_lab::run(Command::new("ip").args(["-n", &lab.gw_ns(), "addr", "replace", "10.20.0.3/24", "dev", "dvnt0"]))
}

fn measure(lab: &mut Lab, seconds: u64, cache_on: &std::path::Path) -> Result<()> {
    check_same_answers(lab)?;
    let qfile =
        lab.write_file("queries.txt", &QUERIES.iter().map(|(n, t)| format!("{n} {t}\n")).collect::<String>())?;
    step("bench", &format!("dnsperf for {seconds} s against coresvc ({CORESVC}) and dnsmasq ({DNSMASQ})"));
    let ours = dnsperf(lab, CORESVC, &qfile, seconds)?;
    let theirs = dnsperf(lab, DNSMASQ, &qfile, seconds)?;
    let gw_mac = super::forward::mac(lab, "gw", "dvnt0")?;

    step("bench", &format!("kxdpgun for {seconds} s against the agent alone (XDP cache off)"));
    let agent = kxdpgun(lab, CORESVC, gw_mac, &qfile, seconds)?;
    agent.check_rcodes("the agent")?;

    step("bench", "coresvc with the XDP cache: warm it, check its answers against the agent's");
    lab.stop_agent(libc::SIGTERM, Duration::from_secs(10))?;
    lab.start_agent(&AgentOpts::new(cache_on))?;
    dnsmasq_address(lab)?;
    check_fast_path(lab)?;
    step("bench", &format!("kxdpgun for {seconds} s against the XDP cache"));
    let (hits, misses, asked) = (cache_counter(lab, "hits")?, cache_counter(lab, "misses")?, agent_queries(lab)?);
    let xdp = kxdpgun(lab, CORESVC, gw_mac, &qfile, seconds)?;
    xdp.check_rcodes("the XDP cache")?;
    let (hits, misses, asked) =
        (cache_counter(lab, "hits")? - hits, cache_counter(lab, "misses")? - misses, agent_queries(lab)? - asked);

    step("bench", &format!("kxdpgun for {seconds} s against dnsmasq alone (coresvc stopped)"));
    lab.stop_agent(libc::SIGTERM, Duration::from_secs(10))?;
    dnsmasq_address(lab)?;
    let peer = kxdpgun(lab, DNSMASQ, gw_mac, &qfile, seconds)?;
    peer.check_rcodes("dnsmasq")?;

    step("bench", &format!("kxdpgun for {seconds} s against a bare XDP reflector on dvnt0 (the lab's limit)"));
    let bin = coresvc_lab::agent_bin()?;
    let reflector = Bg(Command::new(&bin)
        .args(["devtool", "reflect", "--netns", &lab.gw_ns(), "--iface", "dvnt0"])
        .stderr(std::process::Stdio::null())
        .spawn()?);
    std::thread::sleep(Duration::from_millis(500));
    let limit = kxdpgun(lab, CORESVC, gw_mac, &qfile, seconds);
    drop(reflector);
    let limit = limit?;

    step("bench", "the segment program's cost per answer (BPF_PROG_TEST_RUN)");
    let cost: Value = serde_json::from_str(&crate::util::cmd_output(
        Command::new(&bin)
            .args(["devtool", "dns-cost", "--netns", &lab.gw_ns(), "--config"])
            .arg(cache_on)
            .arg("--queries")
            .arg(&qfile),
    )?)?;
    let ns = |k: &str| cost[k].as_f64().unwrap_or(f64::NAN);

    println!(
        "\nDNS, dnsperf from dvnt-client, {} names (authoritative data, CNAME chains, PTR, NXDOMAIN):",
        QUERIES.len()
    );
    println!("  coresvc (agent path, XDP cache off)  {:>10.0} queries/s  ({:.2}% lost)", ours.qps, ours.lost);
    println!("  dnsmasq 2.90                         {:>10.0} queries/s  ({:.2}% lost)", theirs.qps, theirs.lost);
    println!("  ratio coresvc/dnsmasq                {:>10}", ratio(ours.qps, theirs.qps));
    println!("\nDNS flood, kxdpgun from dvnt-client (AF_XDP, one thread, {seconds} s each), the same names:");
    println!("                                       sent/s   answers/s  answered     NOERROR    NXDOMAIN");
    for (what, f) in [
        ("coresvc XDP answer cache", &xdp),
        ("coresvc agent (cache off)", &agent),
        ("dnsmasq 2.90 (coresvc stopped)", &peer),
        ("bare XDP reflector (limit)", &limit),
    ] {
        println!(
            "  {what:<31} {:>10.0}  {:>10.0}  {:>7.2}%  {:>10}  {:>10}",
            f.sent_pps,
            f.answers_pps,
            f.answered_pct(),
            f.rcode("NOERROR"),
            f.rcode("NXDOMAIN")
        );
    }
    println!("  (the reflector sends each query back as it came: no rcode of its own)");
    println!("  XDP cache / reflector           {:>10}   (target >= 0.90x)", ratio(xdp.answers_pps, limit.answers_pps));
    println!("  XDP cache / dnsmasq             {:>10}", ratio(xdp.answers_pps, peer.answers_pps));
    println!("  XDP cache / agent               {:>10}", ratio(xdp.answers_pps, agent.answers_pps));
    println!(
        "  during the XDP flood: {hits} answers from the cache, {misses} misses, {asked} queries to the agent \
         ({} answers counted by kxdpgun)",
        xdp.answers
    );
    let runs = cost["runs"].as_u64().unwrap_or(0);
    println!("\nCost per packet in the program, BPF_PROG_TEST_RUN (median of {runs} single runs per name):");
    let empty = ns("empty_ns_median");
    for (what, v) in [
        ("answer from the XDP cache", ns("answer_ns_median")),
        ("query passed on (cache off)", ns("pass_ns_median")),
        ("bare reflector", ns("reflect_ns_median")),
    ] {
        println!("  {what:<31} {v:>6.0} ns  ({:>4.0} ns net of the measurement's own)", v - empty);
    }
    println!("  empty program (the measurement) {empty:>5.0} ns");
    println!("  target: an answer from the cache under 300 ns");
    Ok(())
}

/// The answer data of a reply, sorted: (name, type, rdata).
fn data(r: &coresvc_lab::dns::Reply) -> Vec<(String, String, String)> {
    let mut v: Vec<(String, String, String)> =
        r.answers.iter().map(|x| (x.name.clone(), x.rtype.clone(), x.rdata.clone())).collect();
    v.sort();
    v
}

/// Both servers must give the same rcode and answer data for the mix.
fn check_same_answers(lab: &Lab) -> Result<()> {
    for (name, t) in QUERIES {
        let a = lab.kdig("dvnt-client", CORESVC, name, t, &[])?;
        let b = lab.kdig("dvnt-client", DNSMASQ, name, t, &[])?;
        if a.rcode != b.rcode || data(&a) != data(&b) {
            bail!("coresvc and dnsmasq answer {name} {t} differently:\n  {a:?}\n  {b:?}");
        }
    }
    Ok(())
}

/// Warms the cache with the flood's questions (no EDNS, as kxdpgun asks
/// them), then asks each again: answered by XDP (the hit counter rises by
/// one each), with the rcode and data the agent itself gives (over TCP,
/// which the cache never answers).
fn check_fast_path(lab: &Lab) -> Result<()> {
    for (name, t) in QUERIES {
        lab.kdig("dvnt-client", CORESVC, name, t, &["+noedns"])?;
    }
    let before = cache_counter(lab, "hits")?;
    for (name, t) in QUERIES {
        let fast = lab.kdig("dvnt-client", CORESVC, name, t, &["+noedns"])?;
        let agent = lab.kdig("dvnt-client", CORESVC, name, t, &["+noedns", "+tcp"])?;
        if fast.rcode != agent.rcode || data(&fast) != data(&agent) {
            bail!("the XDP cache and the agent answer {name} {t} differently:\n  {fast:?}\n  {agent:?}");
        }
    }
    let hits = cache_counter(lab, "hits")? - before;
    if hits != QUERIES.len() as u64 {
        bail!("{hits} of {} questions were answered from the XDP cache after warming it", QUERIES.len());
    }
    Ok(())
}

/// The XDP cache's counter `field` on the flooded segment.
fn cache_counter(lab: &Lab, field: &str) -> Result<u64> {
    let st = lab.status_json()?;
    st["dataplane"]["dns_cache"]["segments"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["segment"] == SEGMENT))
        .and_then(|s| s[field].as_u64())
        .with_context(|| format!("no XDP cache counter {field} for {SEGMENT} in coresvc status"))
}

/// UDP queries the agent's DNS service received.
fn agent_queries(lab: &Lab) -> Result<u64> {
    lab.status_json()?["dns"]["counters"]["queries_udp"].as_u64().context("no DNS counter queries_udp")
}

/// What kxdpgun printed for one flood.
struct Flood {
    sent_pps: f64,
    answers_pps: f64,
    sent: u64,
    answers: u64,
    /// `responded <RCODE>: <n>` lines.
    rcodes: Vec<(String, u64)>,
}

impl Flood {
    fn answered_pct(&self) -> f64 {
        if self.sent == 0 { 0.0 } else { 100.0 * self.answers as f64 / self.sent as f64 }
    }

    fn rcode(&self, name: &str) -> u64 {
        self.rcodes.iter().find(|(n, _)| n == name).map(|(_, c)| *c).unwrap_or(0)
    }

    /// The mix has names that exist and one that does not: any other rcode
    /// (SERVFAIL, REFUSED, FORMERR...) is a wrong answer.
    fn check_rcodes(&self, who: &str) -> Result<()> {
        if self.answers == 0 {
            bail!("{who} answered none of kxdpgun's {} queries", self.sent);
        }
        if let Some((n, c)) = self.rcodes.iter().find(|(n, _)| n != "NOERROR" && n != "NXDOMAIN") {
            bail!("{who} answered {c} of kxdpgun's queries with {n}");
        }
        if self.rcode("NOERROR") == 0 || self.rcode("NXDOMAIN") == 0 {
            bail!("{who}: kxdpgun saw {:?}, expected both NOERROR and NXDOMAIN answers", self.rcodes);
        }
        Ok(())
    }
}

/// kxdpgun on dvnt-client's veth (it replaces the lab's XDP pass program
/// there with its own, which also lets XDP_TX answers in) flooding
/// `server` for `seconds`.
fn kxdpgun(lab: &Lab, server: &str, gw_mac: [u8; 6], qfile: &std::path::Path, seconds: u64) -> Result<Flood> {
    let mac = gw_mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    let out = lab
        .cmd("dvnt-client", ["kxdpgun", "-t", &seconds.to_string(), "-Q", "10000000", "-I", "eth0", "-R", &mac, "-i"])
        .arg(qfile)
        .arg(server)
        .output()
        .context("running kxdpgun (package knot-dnsutils)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("kxdpgun failed ({}):\n{text}{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    // "total queries:     949580 (316526 pps)", "responded NOERROR:   813926".
    let numbers = |label: &str| -> Option<(u64, f64)> {
        let l = text.lines().find(|l| l.starts_with(label))?;
        let mut w = l[label.len()..].split_whitespace();
        let n = w.next()?.parse().ok()?;
        let pps = w.next()?.trim_start_matches('(').parse().ok()?;
        Some((n, pps))
    };
    let (Some((sent, sent_pps)), Some((answers, answers_pps))) = (numbers("total queries:"), numbers("total replies:"))
    else {
        bail!("kxdpgun printed no totals:\n{text}");
    };
    let rcodes = text
        .lines()
        .filter_map(|l| l.strip_prefix("responded "))
        .filter_map(|l| {
            let (name, n) = l.split_once(':')?;
            Some((name.trim().to_string(), n.trim().parse().ok()?))
        })
        .collect();
    Ok(Flood { sent_pps, answers_pps, sent, answers, rcodes })
}

struct Perf {
    qps: f64,
    lost: f64,
}

fn dnsperf(lab: &Lab, server: &str, qfile: &std::path::Path, seconds: u64) -> Result<Perf> {
    let out = lab
        .cmd(
            "dvnt-client",
            ["dnsperf", "-s", server, "-l", &seconds.to_string(), "-c", "8", "-q", "500", "-T", "2", "-d"],
        )
        .arg(qfile)
        .output()
        .context("running dnsperf (package dnsperf)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |label: &str| -> Option<f64> {
        text.lines().find(|l| l.trim_start().starts_with(label)).and_then(|l| {
            l.split_whitespace().find_map(|w| w.trim_end_matches('%').trim_start_matches('(').parse::<f64>().ok())
        })
    };
    let qps = field("Queries per second:").with_context(|| format!("dnsperf printed no rate:\n{text}"))?;
    let lost = text
        .lines()
        .find(|l| l.trim_start().starts_with("Queries lost:"))
        .and_then(|l| l.split('(').nth(1))
        .and_then(|p| p.trim_end_matches(['%', ')']).parse().ok())
        .unwrap_or(0.0);
    Ok(Perf { qps, lost })
}
