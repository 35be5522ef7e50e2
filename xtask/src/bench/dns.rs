//! `cargo xtask bench dns`: dnsperf from a segment client against coresvc's
//! DNS service (the agent path) and against dnsmasq serving the same records,
//! in one lab, one after the other; queries per second for both and the ratio.

use std::{process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};
use coresvc_lab::{AgentOpts, Lab};

use super::{BenchLab, ratio};
use crate::util::step;

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
    let cfg = lab.config_with("bench-dns.toml", |s| s.replace("dns_cache = true", "dns_cache = false"))?;
    lab.start_agent(&AgentOpts::new(cfg))?;
    // dnsmasq on a second address of the same segment, in the gateway.
    let gw = lab.gw_ns();
    coresvc_lab::run(Command::new("ip").args(["-n", &gw, "addr", "add", "10.20.0.3/24", "dev", "dvnt0"]))?;
    let mut dnsmasq = lab
        .cmd("gw", ["dnsmasq"])
        .args(dnsmasq_args("10.20.0.3"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting dnsmasq (package dnsmasq-base)")?;
    std::thread::sleep(Duration::from_millis(500));
    let result = (|| -> Result<()> {
        check_same_answers(&lab)?;
        let qfile =
            lab.write_file("queries.txt", &QUERIES.iter().map(|(n, t)| format!("{n} {t}\n")).collect::<String>())?;
        step("bench", &format!("dnsperf for {seconds} s against coresvc (10.20.0.1) and dnsmasq (10.20.0.3)"));
        let ours = dnsperf(&lab, "10.20.0.1", &qfile, seconds)?;
        let theirs = dnsperf(&lab, "10.20.0.3", &qfile, seconds)?;
        println!(
            "\nDNS, dnsperf from dvnt-client, {} names (authoritative data, CNAME chains, PTR, NXDOMAIN):",
            QUERIES.len()
        );
        println!("  coresvc (agent path, XDP cache off)  {:>10.0} queries/s  ({:.2}% lost)", ours.qps, ours.lost);
        println!("  dnsmasq 2.90                         {:>10.0} queries/s  ({:.2}% lost)", theirs.qps, theirs.lost);
        println!("  ratio coresvc/dnsmasq                {:>10}", ratio(ours.qps, theirs.qps));
        Ok(())
    })();
    let _ = dnsmasq.kill();
    let _ = dnsmasq.wait();
    drop(lab);
    result
}

/// Both servers must give the same rcode and answer data for the mix.
fn check_same_answers(lab: &Lab) -> Result<()> {
    for (name, t) in QUERIES {
        let a = lab.kdig("dvnt-client", "10.20.0.1", name, t, &[])?;
        let b = lab.kdig("dvnt-client", "10.20.0.3", name, t, &[])?;
        let data = |r: &coresvc_lab::dns::Reply| {
            let mut v: Vec<(String, String, String)> =
                r.answers.iter().map(|x| (x.name.clone(), x.rtype.clone(), x.rdata.clone())).collect();
            v.sort();
            v
        };
        if a.rcode != b.rcode || data(&a) != data(&b) {
            bail!("coresvc and dnsmasq answer {name} {t} differently:\n  {a:?}\n  {b:?}");
        }
    }
    Ok(())
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
