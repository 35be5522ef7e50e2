//! `cargo xtask bench dns`, one lab, one run, the same names throughout,
//! each server measured alone (coresvc stopped with its programs detached
//! for every peer's rows):
//!
//! 1. The agent path, dnsperf from dvnt-client over UDP and over TCP:
//!    coresvc's DNS service with the XDP answer cache off, Knot (knotd,
//!    authoritative for the same zones, exported by `coresvc zone export`)
//!    and dnsmasq (the same records); for UDP, dnsperf against the bare XDP
//!    reflector is the generator's ceiling, the offered rate of the others.
//! 2. A flood from the benchmarks' generator (gen.rs), answers counted by
//!    rcode by an XDP sink on dvnt-client: the XDP answer cache (warmed, its
//!    answers first checked against the agent's), the agent alone, Knot,
//!    dnsmasq, and the lab's limit: `devtool reflect`, which sends each
//!    query back as it came (the sink checks they come back as queries).
//!
//! Before a server's rows, each name of the mix is asked with kdig and the
//! rcode and answer records compared with the hand-written expectations
//! ([`QUERIES`]); during them the server's own counter must rise by at least
//! what was answered, and every response must be NOERROR or NXDOMAIN.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use coresvc_lab::{AgentOpts, Lab, dns::Knot};

use super::{
    BenchLab, Opts,
    forward::{end_tool, gateway_tool},
    isolation::{self, Flat, Tool},
    report::{Check, Ratio, Row, Section},
    traffic,
};
use crate::util::step;

/// The segment the clients query, coresvc's, dnsmasq's and Knot's addresses.
const SEGMENT: &str = "dvnt";
const CORESVC: &str = "10.20.0.1";
const DNSMASQ: &str = "10.20.0.3";
const KNOT: &str = "10.20.0.4";

/// One question of the mix and what every server must answer (the data
/// of examples/coresvc.toml).
pub struct Question {
    pub name: &'static str,
    pub rtype: &'static str,
    pub code: u16,
    pub rcode: &'static str,
    /// The answer records: (type, presentation).
    pub answers: &'static [(&'static str, &'static str)],
}

const fn q(
    name: &'static str,
    rtype: &'static str,
    code: u16,
    rcode: &'static str,
    answers: &'static [(&'static str, &'static str)],
) -> Question {
    Question { name, rtype, code, rcode, answers }
}

/// The query mix.
pub const QUERIES: &[Question] = &[
    q("provisioner-01.mgmt.deevnet.net", "A", 1, "NOERROR", &[("A", "10.10.0.10")]),
    q(
        "artifacts.mgmt.deevnet.net",
        "A",
        1,
        "NOERROR",
        &[("CNAME", "provisioner-01-dvntm.mgmt.deevnet.net."), ("A", "10.10.0.10")],
    ),
    q("pxe.mgmt.deevnet.net", "A", 1, "NOERROR", &[("CNAME", "provisioner-01.mgmt.deevnet.net."), ("A", "10.10.0.10")]),
    q("ns.mgmt.deevnet.net", "A", 1, "NOERROR", &[("A", "10.10.0.1")]),
    q("1.0.10.10.in-addr.arpa", "PTR", 12, "NOERROR", &[("PTR", "ns.mgmt.deevnet.net.")]),
    q("nothing-here.mgmt.deevnet.net", "A", 1, "NXDOMAIN", &[]),
];

/// The zones Knot serves, as coresvc exports them.
const ZONES: &[&str] = &["mgmt.deevnet.net", "0.10.10.in-addr.arpa"];

/// The same records for dnsmasq, authoritative for nothing else.
fn dnsmasq_args() -> Vec<String> {
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
        "--port=53",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(format!("--listen-address={DNSMASQ}"));
    a.push("--host-record=provisioner-01.mgmt.deevnet.net,10.10.0.10".into());
    a.push("--host-record=provisioner-01-dvntm.mgmt.deevnet.net,10.10.0.10".into());
    a.push("--host-record=ns.mgmt.deevnet.net,10.10.0.1".into());
    a.push("--cname=artifacts.mgmt.deevnet.net,provisioner-01-dvntm.mgmt.deevnet.net".into());
    a.push("--cname=pxe.mgmt.deevnet.net,provisioner-01.mgmt.deevnet.net".into());
    a
}

/// Every name of the mix answered by `server` as [`QUERIES`] says.
fn expected_answers(lab: &Lab, server: &str, args: &[&str]) -> Check {
    let mut wrong = Vec::new();
    for Question { name, rtype: t, rcode, answers: want, .. } in QUERIES {
        match lab.kdig("dvnt-client", server, name, t, args) {
            Ok(r) => {
                let mut got: Vec<(String, String)> =
                    r.answers.iter().map(|a| (a.rtype.clone(), a.text.to_ascii_lowercase())).collect();
                let mut want: Vec<(String, String)> =
                    want.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
                got.sort();
                want.sort();
                if r.rcode != *rcode || got != want {
                    wrong.push(format!("{name} {t}: {} {got:?}, expected {rcode} {want:?}", r.rcode));
                }
            }
            Err(e) => wrong.push(format!("{name} {t}: {e:#}")),
        }
    }
    Check::that(wrong.is_empty(), format!("answers of the {} names as expected", QUERIES.len()), || wrong.join("; "))
}

/// What dnsperf printed for one run.
struct Perf {
    sent: u64,
    completed: u64,
    lost: u64,
    qps: f64,
    rcodes: Vec<(String, u64)>,
}

fn dnsperf(lab: &Lab, server: &str, qfile: &std::path::Path, seconds: u64, tcp: bool) -> Result<Perf> {
    let mode = if tcp { "tcp" } else { "udp" };
    let out = lab
        .cmd(
            "dvnt-client",
            ["dnsperf", "-m", mode, "-s", server, "-l", &seconds.to_string(), "-c", "8", "-q", "500", "-T", "2", "-d"],
        )
        .arg(qfile)
        .output()
        .context("running dnsperf (package dnsperf)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let first = |label: &str| -> Option<f64> {
        let l = text.lines().find(|l| l.trim_start().starts_with(label))?;
        l.trim_start()[label.len()..].split_whitespace().next()?.parse().ok()
    };
    let (Some(sent), Some(completed), Some(qps)) =
        (first("Queries sent:"), first("Queries completed:"), first("Queries per second:"))
    else {
        // What a single client sees, and who listens: the reason, in the error.
        let probe = lab.exec(
            "dvnt-client",
            ["kdig", "+timeout=2", "+retry=0", &format!("+{mode}"), &format!("@{server}"), "ns.mgmt.deevnet.net"],
        )?;
        let listen = lab.exec("gw", ["ss", "-Hnlp", &format!("src {server}")])?;
        bail!(
            "dnsperf printed no statistics ({}):\n{text}{}\nkdig +{mode}: {}{}\nlistening on {server}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&probe.stdout),
            String::from_utf8_lossy(&probe.stderr),
            String::from_utf8_lossy(&listen.stdout)
        );
    };
    // "Response codes:       NOERROR 24396 (50.00%), NXDOMAIN 24395 (50.00%)"
    let rcodes = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("Response codes:"))
        .map(|r| {
            r.split(',')
                .filter_map(|p| {
                    let mut w = p.split_whitespace();
                    Some((w.next()?.to_string(), w.next()?.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Perf {
        sent: sent as u64,
        completed: completed as u64,
        lost: first("Queries lost:").unwrap_or(0.0) as u64,
        qps,
        rcodes,
    })
}

/// The mix has names that exist and one that does not: NOERROR and
/// NXDOMAIN, both, and nothing else.
fn rcode_checks(row: &mut Row, noerror: u64, nxdomain: u64, other: &[(String, u64)]) {
    row.check(Check::that(noerror > 0 && nxdomain > 0, "NOERROR and NXDOMAIN answers", || {
        format!("NOERROR {noerror}, NXDOMAIN {nxdomain}")
    }));
    let other: Vec<String> = other.iter().filter(|(_, n)| *n > 0).map(|(r, n)| format!("{r} {n}")).collect();
    row.check(Check::that(other.is_empty(), "no other rcode", || other.join(", ")));
    row.counts.push(format!("NOERROR {noerror}"));
    row.counts.push(format!("NXDOMAIN {nxdomain}"));
}

/// A dnsperf run as a row: the rcodes checked, the server's counter risen
/// by at least every completed query (`counter.2`: by at least this much,
/// when it counts something else).
fn perf_row(name: &str, p: &Perf, counter: (&str, u64)) -> Row {
    perf_row_min(name, p, counter, p.completed)
}

fn perf_row_min(name: &str, p: &Perf, counter: (&str, u64), need: u64) -> Row {
    let mut row = Row::new(name);
    row.achieved = Some(p.qps);
    let get = |r: &str| p.rcodes.iter().find(|(n, _)| n == r).map(|(_, c)| *c).unwrap_or(0);
    let other: Vec<(String, u64)> =
        p.rcodes.iter().filter(|(n, _)| n != "NOERROR" && n != "NXDOMAIN").cloned().collect();
    rcode_checks(&mut row, get("NOERROR"), get("NXDOMAIN"), &other);
    row.check(Check::that(counter.1 >= need, format!("{} rose by {need} or more", counter.0), || {
        format!("{} counted, {} answered", counter.1, p.completed)
    }));
    row.counts.push(format!("sent {}, answered {}, lost {}", p.sent, p.completed, p.lost));
    row.counts.push(format!("{} {}", counter.0, counter.1));
    row
}

/// A row that could not be measured: why, as its failed check.
fn failed(name: &str, e: anyhow::Error) -> Row {
    let mut r = Row::new(name);
    r.check(Check::failed("measured", format!("{e:#}")));
    r
}

/// The flood's frames: each name of the mix, to `server`.
fn frames(lab: &Lab, server: &str) -> Result<Vec<Vec<u8>>> {
    let (gw, client) = (traffic::mac(lab, "gw", "dvnt0")?, traffic::mac(lab, "dvnt-client", "eth0")?);
    Ok(QUERIES
        .iter()
        .enumerate()
        .map(|(i, q)| traffic::dns_query(gw, client, server, q.name, q.code, 0x4000 + i as u16))
        .collect())
}

/// A flood as a row: what came back counted by rcode (responses; with
/// `reflected`, queries sent back unchanged instead).
fn flood_row(lab: &Lab, name: &str, server: &str, o: &Opts, reflected: bool) -> Result<(Row, u64)> {
    let f = traffic::flood(lab, &frames(lab, server)?, "dvnt-client", None, o.seconds)?;
    let mut row = f.row(name);
    let (noerror, nxdomain, other, queries) =
        (f.count("dns_noerror"), f.count("dns_nxdomain"), f.count("dns_other_rcode"), f.count("dns_not_response"));
    if reflected {
        row.check(Check::that(
            queries > 0 && noerror + nxdomain + other == 0,
            "what came back are the queries",
            || format!("{queries} queries, {} responses", noerror + nxdomain + other),
        ));
        row.counts.push(format!("queries reflected {queries}"));
        Ok((row, queries))
    } else {
        rcode_checks(&mut row, noerror, nxdomain, &[("other".into(), other)]);
        row.check(Check::that(queries == 0, "every message back is a response", || format!("{queries} were not")));
        Ok((row, noerror + nxdomain + other))
    }
}

/// The server's counter rose by `n`, at least the `answered` count.
fn counted(row: &mut Row, who: &str, n: u64, answered: u64) {
    row.check(Check::that(n >= answered, format!("{who} counted every answer"), || {
        format!("{n} counted, {answered} answered")
    }));
    row.counts.push(format!("{who} {n}"));
}

/// A DNS counter of coresvc (`dns.counters.NAME`).
fn coresvc_counter(lab: &Lab, name: &str) -> Result<u64> {
    lab.status_json()?["dns"]["counters"][name].as_u64().with_context(|| format!("no DNS counter {name}"))
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

/// Warms the cache with the flood's questions (no EDNS, as the flood asks
/// them), then asks each again: answered by XDP (the hit counter rises by
/// one each), with the rcode and data the agent itself gives (over TCP,
/// which the cache never answers).
fn cache_answers_as_the_agent(lab: &Lab) -> Result<Check> {
    for q in QUERIES {
        lab.kdig("dvnt-client", CORESVC, q.name, q.rtype, &["+noedns"])?;
    }
    let before = cache_counter(lab, "hits")?;
    let mut wrong = Vec::new();
    for Question { name, rtype: t, .. } in QUERIES {
        let fast = lab.kdig("dvnt-client", CORESVC, name, t, &["+noedns"])?;
        let agent = lab.kdig("dvnt-client", CORESVC, name, t, &["+noedns", "+tcp"])?;
        let data = |r: &coresvc_lab::dns::Reply| {
            let mut v: Vec<(String, String)> = r.answers.iter().map(|a| (a.rtype.clone(), a.rdata.clone())).collect();
            v.sort();
            v
        };
        if fast.rcode != agent.rcode || data(&fast) != data(&agent) {
            wrong.push(format!("{name} {t}: {fast:?} vs {agent:?}"));
        }
    }
    let hits = cache_counter(lab, "hits")? - before;
    if hits != QUERIES.len() as u64 {
        wrong.push(format!("{hits} of {} questions answered from the XDP cache after warming it", QUERIES.len()));
    }
    Ok(Check::that(wrong.is_empty(), "the XDP cache answers as the agent does", || wrong.join("; ")))
}

/// An address of the gateway's dvnt interface for a peer (again after an
/// agent start or stop: routing may have flushed it).
fn address(lab: &Lab, a: &str) -> Result<()> {
    traffic::gw_ip(lab, &["addr", "replace", &format!("{a}/24"), "dev", "dvnt0"])
}

/// The rows of one server, grouped by section.
#[derive(Default)]
struct Rows {
    udp: Vec<Row>,
    tcp: Vec<Row>,
    flood: Vec<Row>,
}

pub fn run(b: &BenchLab, o: &Opts) -> Result<Vec<Section>> {
    let mut lab = b.lab()?;
    let secs = o.seconds;
    let cache_off = super::config(&lab, "bench-dns.toml", |s| s.replace("dns_cache = true", "dns_cache = false"))?;
    let cache_on = super::config(&lab, "bench-dns-xdp.toml", |s| s)?;
    let qfile = lab
        .write_file("queries.txt", &QUERIES.iter().map(|q| format!("{} {}\n", q.name, q.rtype)).collect::<String>())?;
    let mut rows = Rows::default();
    let gw_ifaces = [("dvnt0", "segment_ingress")];

    step("bench", "coresvc, the agent path (XDP cache off): dnsperf UDP and TCP, a flood");
    lab.start_agent(&AgentOpts::new(&cache_off))?;
    let mut zones = Vec::new();
    for z in ZONES {
        let out = lab.coresvc(["zone", "export", z])?;
        if !out.status.success() {
            bail!("coresvc zone export {z}: {}", String::from_utf8_lossy(&out.stderr));
        }
        zones.push((*z, lab.write_file(&format!("{z}.zone"), &String::from_utf8_lossy(&out.stdout))?));
    }
    let pre = {
        let mut v = isolation::coresvc_present(&isolation::attached(&lab)?, "gw", &gw_ifaces);
        v.push(expected_answers(&lab, CORESVC, &[]));
        v
    };
    for tcp in [false, true] {
        let c = if tcp { "queries_tcp" } else { "queries_udp" };
        let before = coresvc_counter(&lab, c)?;
        let mut row = match dnsperf(&lab, CORESVC, &qfile, secs, tcp) {
            Ok(p) => perf_row("coresvc agent (XDP cache off)", &p, ("coresvc", coresvc_counter(&lab, c)? - before)),
            Err(e) => failed("coresvc agent (XDP cache off)", e),
        };
        row.checks.splice(0..0, pre.clone());
        if tcp { rows.tcp.push(row) } else { rows.udp.push(row) }
    }
    let before = coresvc_counter(&lab, "queries_udp")?;
    let (mut row, answered) = flood_row(&lab, "coresvc agent (XDP cache off)", CORESVC, o, false)?;
    counted(&mut row, "coresvc queries_udp", coresvc_counter(&lab, "queries_udp")? - before, answered);
    row.checks.splice(0..0, pre.clone());
    rows.flood.push(row);

    step("bench", "coresvc with the XDP cache: warmed, checked against the agent, flooded");
    lab.stop_agent(libc::SIGTERM, Duration::from_secs(10))?;
    lab.start_agent(&AgentOpts::new(&cache_on))?;
    let mut pre = isolation::coresvc_present(&isolation::attached(&lab)?, "gw", &gw_ifaces);
    pre.push(cache_answers_as_the_agent(&lab)?);
    let (hits, asked) = (cache_counter(&lab, "hits")?, coresvc_counter(&lab, "queries_udp")?);
    let (mut row, answered) = flood_row(&lab, "coresvc XDP answer cache", CORESVC, o, false)?;
    counted(&mut row, "XDP cache hits", cache_counter(&lab, "hits")? - hits, answered);
    row.counts.push(format!("queries that reached the agent {}", coresvc_counter(&lab, "queries_udp")? - asked));
    row.checks.splice(0..0, pre);
    rows.flood.push(row);
    lab.stop_agent(libc::SIGTERM, Duration::from_secs(10))?;

    step("bench", "Knot alone (coresvc stopped, programs detached): the same zones");
    address(&lab, KNOT)?;
    let zone_refs: Vec<(&str, &std::path::Path)> = zones.iter().map(|(z, p)| (*z, p.as_path())).collect();
    let knot = Knot::start(&lab, "gw", &[&format!("{KNOT}@53")], &zone_refs)?;
    let pre = {
        let mut v = isolation::peer_checks(&lab, &[])?;
        v.push(expected_answers(&lab, KNOT, &[]));
        v
    };
    for tcp in [false, true] {
        let c = if tcp { "mod-stats.request-protocol[tcp4]" } else { "mod-stats.request-protocol[udp4]" };
        let (flat, before) = (Flat::start(&lab.paths.pin_dir)?, knot.stat(c)?);
        let mut row = match dnsperf(&lab, KNOT, &qfile, secs, tcp) {
            Ok(p) => perf_row("Knot (knotd, authoritative)", &p, ("Knot mod-stats", knot.stat(c)? - before)),
            Err(e) => failed("Knot (knotd, authoritative)", e),
        };
        row.checks.splice(0..0, pre.clone());
        row.check(flat.check());
        if tcp { rows.tcp.push(row) } else { rows.udp.push(row) }
    }
    let c = "mod-stats.request-protocol[udp4]";
    let (flat, before) = (Flat::start(&lab.paths.pin_dir)?, knot.stat(c)?);
    let (mut row, answered) = flood_row(&lab, "Knot (knotd, authoritative)", KNOT, o, false)?;
    counted(&mut row, "Knot mod-stats udp4", knot.stat(c)? - before, answered);
    row.checks.splice(0..0, pre);
    row.check(flat.check());
    rows.flood.push(row);
    drop(knot);

    step("bench", "dnsmasq alone (coresvc stopped): the same records");
    address(&lab, DNSMASQ)?;
    let mut dnsmasq = Tool::spawn(&lab, "dnsmasq", {
        let mut c = lab.cmd("gw", ["dnsmasq"]);
        c.args(dnsmasq_args());
        c
    })?;
    dnsmasq.wait_until(Duration::from_secs(10), || {
        lab.kdig("dvnt-client", DNSMASQ, "ns.mgmt.deevnet.net", "A", &[]).is_ok()
    })?;
    let stats = || -> Result<u64> {
        let mut n = 0;
        for s in ["hits.bind", "misses.bind"] {
            let r = lab.kdig("dvnt-client", DNSMASQ, s, "TXT", &["-c", "CH"])?;
            // kdig's JSON keeps the TXT string's quotes, escaped.
            let text = r.answers.first().map(|a| a.text.replace(['\\', '"'], "")).unwrap_or_default();
            n += text.trim().parse::<u64>().with_context(|| format!("dnsmasq's {s}: {text:?}"))?;
        }
        Ok(n)
    };
    let pre = {
        let mut v = isolation::peer_checks(&lab, &[])?;
        v.push(expected_answers(&lab, DNSMASQ, &[]));
        v
    };
    // dnsmasq answers TCP in forked children, whose counts its own
    // statistics never see: for TCP its counter is the connections the
    // gateway's stack accepted for it (the only TCP server there).
    let accepted = || -> Result<u64> {
        let t = coresvc_lab::dns::check(&mut lab.cmd("gw", ["cat", "/proc/net/snmp"]))?;
        let mut tcp = t.lines().filter(|l| l.starts_with("Tcp:"));
        let (names, values) = (tcp.next().unwrap_or(""), tcp.next().unwrap_or(""));
        let i = names.split_whitespace().position(|n| n == "PassiveOpens").context("no Tcp PassiveOpens")?;
        values.split_whitespace().nth(i).and_then(|v| v.parse().ok()).context("Tcp PassiveOpens")
    };
    for tcp in [false, true] {
        let (flat, before, opens) = (Flat::start(&lab.paths.pin_dir)?, stats()?, accepted()?);
        let mut row = match dnsperf(&lab, DNSMASQ, &qfile, secs, tcp) {
            Ok(p) if tcp => perf_row_min("dnsmasq", &p, ("connections accepted for dnsmasq", accepted()? - opens), 1),
            Ok(p) => perf_row("dnsmasq", &p, ("dnsmasq hits+misses", stats()? - before)),
            Err(e) => failed("dnsmasq", e),
        };
        row.checks.splice(0..0, pre.clone());
        row.check(flat.check());
        if tcp { rows.tcp.push(row) } else { rows.udp.push(row) }
    }
    let (flat, before) = (Flat::start(&lab.paths.pin_dir)?, stats()?);
    let (mut row, answered) = flood_row(&lab, "dnsmasq", DNSMASQ, o, false)?;
    counted(&mut row, "dnsmasq hits+misses", stats()? - before, answered);
    row.checks.splice(0..0, pre);
    row.check(flat.check());
    row.check(dnsmasq.alive());
    rows.flood.push(row);
    let (c, _) = dnsmasq.stop();
    rows.flood.last_mut().expect("a row").check(c);

    step("bench", "the bare XDP reflector on dvnt0 (the lab's limit; dnsperf's ceiling)");
    let reflector = "bare XDP reflector (devtool, the lab's limit)";
    let expect = [("gw", "dvnt0", "reflect")];
    let tool = gateway_tool(&lab, "reflector", "reflect", "reflect", &["dvnt0"])?;
    let pre = isolation::peer_checks(&lab, &expect)?;
    let flat = Flat::start(&lab.paths.pin_dir)?;
    let mut ceiling = match dnsperf(&lab, CORESVC, &qfile, secs, false) {
        Ok(p) => {
            let mut r = Row::new(reflector);
            r.achieved = Some(p.qps);
            r.counts.push(format!("sent {}, answered {} (the queries sent back)", p.sent, p.completed));
            r
        }
        Err(e) => failed(reflector, e),
    };
    ceiling.checks.splice(0..0, pre.clone());
    let (mut row, reflected) = flood_row(&lab, reflector, CORESVC, o, true)?;
    row.checks.splice(0..0, pre);
    let handled = end_tool(&mut row, tool);
    counted(&mut row, "the reflector", handled, reflected);
    row.check(flat.check());
    ceiling.check(flat.check());
    rows.flood.push(row);

    // dnsperf's ceiling is what it offers every server.
    for r in &mut rows.udp {
        r.offered = ceiling.figure();
    }
    rows.udp.push(ceiling);

    let ours = "coresvc agent (XDP cache off)";
    let knot = "Knot (knotd, authoritative)";
    let mut udp = Section::new("dns", "DNS agent path, dnsperf over UDP", "queries/s");
    udp.generator = format!(
        "dnsperf -c 8 -q 500 -T 2 from dvnt-client, {} names; offered = dnsperf's own ceiling (its rate against the \
         bare reflector)",
        QUERIES.len()
    );
    udp.rows = rows.udp;
    udp.ratios = vec![Ratio::noted(ours, "dnsmasq", "target >= 1.5x"), Ratio::noted(ours, knot, "target >= 1.0x")];
    let mut tcp = Section::new("dns", "DNS agent path, dnsperf over TCP", "queries/s");
    tcp.generator = "dnsperf -m tcp -c 8 -q 500 -T 2 from dvnt-client (closed loop: no offered rate)".into();
    tcp.rows = rows.tcp;
    tcp.ratios = vec![Ratio::noted(ours, "dnsmasq", "target >= 1.5x"), Ratio::noted(ours, knot, "target >= 1.0x")];
    let mut flood = Section::new("dns", "DNS flood, answers counted by an XDP sink on dvnt-client", "answers/s");
    flood.generator = traffic::generator_text();
    flood.rows = rows.flood;
    let xdp = "coresvc XDP answer cache";
    flood.ratios = vec![
        Ratio::noted(xdp, reflector, "target >= 0.90x"),
        Ratio::new(xdp, "dnsmasq"),
        Ratio::new(xdp, ours),
        Ratio::new(ours, "dnsmasq"),
        Ratio::new(ours, knot),
    ];
    flood.notes.push(format!("{secs} s per row, one run; the reflector sends each query back unchanged"));
    Ok(vec![udp, tcp, flood])
}
