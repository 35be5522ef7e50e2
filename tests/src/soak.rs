//! A mixed load over a long run, with `kill -9`s (issue 17): a flood of
//! random DNS names the upstream answers (every one a cache miss), DHCP
//! churn (perfdhcp, every ACK captured), TFTP downloads, NAT'd transfers of
//! well-behaved clients, UDP filling the connection table from one host,
//! and the agent killed at regular intervals. `cargo xtask soak` runs it for
//! 30 minutes; a test runs it briefly. It reports RSS and open files of the
//! agent, errors, ACKed leases lost, well-behaved flows broken and the
//! drops by reason.

use std::{
    fmt::Write as _,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{AgentOpts, Lab, dhcp::acks_in, dns::Knot};

/// What a soak saw.
#[derive(Debug, Default)]
pub struct Report {
    pub duration: Duration,
    pub kills: u32,
    /// The first agent's RSS (KiB) and open files after warm-up, the last
    /// agent's at the end, and the largest seen.
    pub rss_kib: (u64, u64, u64),
    pub fds: (u64, u64, u64),
    pub dns_queries_sent: u64,
    pub dns_answered: u64,
    /// A well-behaved client's questions for a local name that got no
    /// NOERROR answer.
    pub local_dns_failed: u64,
    pub local_dns_asked: u64,
    pub tftp_ok: u64,
    pub tftp_failed: u64,
    pub nat_transfers_ok: u64,
    /// Well-behaved NAT'd transfers that did not arrive whole.
    pub nat_transfers_broken: u64,
    /// How each broken transfer ended: node, curl's exit code, bytes, seconds.
    pub nat_broken_how: Vec<String>,
    /// When each kill -9 happened, from the start.
    pub kills_at: Vec<Duration>,
    pub acks_seen: usize,
    /// ACKed addresses not in the store at the end, or ACKed to two clients.
    pub acked_leases_lost: usize,
    /// Drop reasons with a count, from the last agent.
    pub drops: Vec<(String, u64)>,
    pub connections_at_end: u64,
}

impl Report {
    /// The figures, one per line.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "soak: {:?}, {} kill -9 (at {:?})", self.duration, self.kills, self.kills_at);
        let _ = writeln!(
            s,
            "  agent RSS: {} KiB at start, {} KiB at end, {} KiB at most",
            self.rss_kib.0, self.rss_kib.1, self.rss_kib.2
        );
        let _ =
            writeln!(s, "  agent open files: {} at start, {} at end, {} at most", self.fds.0, self.fds.1, self.fds.2);
        let _ = writeln!(s, "  random-name DNS flood: {} sent, {} answered", self.dns_queries_sent, self.dns_answered);
        let _ = writeln!(
            s,
            "  a well-behaved client's local name: {} asked, {} failed",
            self.local_dns_asked, self.local_dns_failed
        );
        let _ = writeln!(s, "  TFTP downloads: {} whole, {} failed", self.tftp_ok, self.tftp_failed);
        let _ = writeln!(
            s,
            "  NAT'd transfers of well-behaved clients: {} whole, {} broken",
            self.nat_transfers_ok, self.nat_transfers_broken
        );
        for how in &self.nat_broken_how {
            let _ = writeln!(s, "    broken: {how}");
        }
        let _ = writeln!(s, "  DHCP: {} ACKs captured, {} ACKed leases lost", self.acks_seen, self.acked_leases_lost);
        let _ = writeln!(s, "  connections at the end: {}", self.connections_at_end);
        let drops: Vec<String> = self.drops.iter().map(|(n, c)| format!("{n} {c}")).collect();
        let _ = writeln!(s, "  drops by reason: {}", if drops.is_empty() { "none".into() } else { drops.join(", ") });
        s
    }
}

/// An upstream zone that answers every name (the flood's random names).
const EXAMPLE_ORG: &str = "$ORIGIN example.org.\n$TTL 300\n\
@ IN SOA ns.example.org. hostmaster.example.org. 1 3600 600 604800 120\n\
@ IN NS ns\nns IN A 192.0.2.1\n* IN A 192.0.2.80\n";

/// A loop on a thread until `stop`, counting its successes and failures.
struct Loop {
    handle: JoinHandle<()>,
}

fn spawn_loop(stop: &Arc<AtomicBool>, mut step: impl FnMut() + Send + 'static) -> Loop {
    let stop = stop.clone();
    Loop {
        handle: std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                step();
            }
        }),
    }
}

fn proc_figures(pid: u32) -> (u64, u64) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0);
    (rss, fds)
}

/// Runs the soak for `duration` in a fresh lab, killing the agent every
/// `kill_every`.
pub fn run(duration: Duration, kill_every: Duration) -> Result<Report> {
    let mut lab = Lab::for_test()?;
    // A wide dvnt pool for perfdhcp's clients (the lab's own keep 10.20.0.x),
    // and a connection table small enough to be filled.
    let cfg = lab.config_with("coresvc.toml", |s| {
        s.replace("cidr = \"10.20.0.0/24\"", "cidr = \"10.20.0.0/16\"")
            .replace("start = \"10.20.0.100\"\nend = \"10.20.0.199\"", "start = \"10.20.1.0\"\nend = \"10.20.32.255\"")
            .replace("conntrack_max = 65536", "conntrack_max = 16384\nmax_flows_per_host = 1024")
    })?;
    lab.start_agent(&AgentOpts::new(&cfg))?;
    let zone = lab.write_file("example.org.zone", EXAMPLE_ORG)?;
    let _knot = Knot::start(&lab, "upstream", &["192.0.2.1@53"], &[("example.org", &zone)])?;
    let www = lab.paths.run_dir.join("www");
    std::fs::create_dir_all(&www)?;
    let file: Vec<u8> = (0..(2 << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(www.join("f"), &file)?;
    let _http = lab.http_server("upstream", "192.0.2.1", 80, &www)?;
    let lab = Arc::new(std::sync::Mutex::new(lab));
    let stop = Arc::new(AtomicBool::new(false));
    let mut loops = Vec::new();
    let mut report = Report::default();
    let start = Instant::now();

    // DHCP churn, every ACK captured.
    let pcap = lab.lock().unwrap().paths.run_dir.join("acks.pcap");
    let (capture, perfdhcp) = {
        let l = lab.lock().unwrap();
        (l.capture_dhcp_replies("dvnt-client", &pcap)?, l.perfdhcp_load("dvnt-client", "10.20.0.1", 50, 11)?)
    };

    // The random-name flood: dnsperf reading fresh names, at a steady rate.
    let names = lab.lock().unwrap().paths.run_dir.join("random-names");
    {
        let mut q = String::new();
        for i in 0..200_000u32 {
            let _ = writeln!(q, "r{:08x}{i}.example.org A", rand_u32(i));
        }
        std::fs::write(&names, q)?;
    }
    let dnsperf_out = lab.lock().unwrap().paths.run_dir.join("dnsperf.out");
    let dnsperf = lab
        .lock()
        .unwrap()
        .cmd(
            "dvnt-client",
            ["dnsperf", "-s", "10.20.0.1", "-Q", "1000", "-t", "2", "-l", &duration.as_secs().max(1).to_string(), "-d"],
        )
        .arg(&names)
        .stdout(std::fs::File::create(&dnsperf_out)?)
        .stderr(Stdio::null())
        .spawn()
        .context("dnsperf (package dnsperf)")?;

    // UDP filling the connection table from one host (a new flow per datagram).
    let filler = lab
        .lock()
        .unwrap()
        .cmd("dvnt-client", ["hping3", "--udp", "-q", "-i", "u500", "-p", "++1", "192.0.2.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("hping3 (package hping3)")?;

    // A well-behaved client asks a local name once a second.
    let (asked, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    {
        let (lab, asked, failed) = (lab.clone(), asked.clone(), failed.clone());
        loops.push(spawn_loop(&stop, move || {
            let out = lab.lock().unwrap().cmd(
                "dvntm-client",
                ["kdig", "+timeout=2", "+retry=2", "+short", "@10.30.0.1", "artifacts.dvntm.deevnet.net", "A"],
            );
            let ok = run_ok(out);
            asked.fetch_add(1, Ordering::Relaxed);
            if !ok {
                failed.fetch_add(1, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_secs(1));
        }));
    }
    // TFTP downloads.
    let want_tftp = std::fs::metadata(crate::workspace_root().join("examples/tftp/README.txt"))?.len();
    let (tftp_ok, tftp_failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    {
        let (lab, ok, bad) = (lab.clone(), tftp_ok.clone(), tftp_failed.clone());
        loops.push(spawn_loop(&stop, move || {
            let c = lab.lock().unwrap().cmd(
                "dvntm-client",
                ["curl", "-s", "-m", "20", "-o", "/dev/null", "-w", "%{size_download}", "tftp://10.30.0.1/README.txt"],
            );
            if output_of(c).trim() == want_tftp.to_string() {
                ok.fetch_add(1, Ordering::Relaxed);
            } else {
                bad.fetch_add(1, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(500));
        }));
    }
    // Well-behaved NAT'd transfers, from two segments (2 MB each, slowed so
    // that kills land in the middle of some).
    let (nat_ok, nat_broken) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let nat_broken_how = Arc::new(std::sync::Mutex::new(Vec::new()));
    for node in ["provisioner", "dvntm-client"] {
        let (lab, ok, bad, how) = (lab.clone(), nat_ok.clone(), nat_broken.clone(), nat_broken_how.clone());
        let want = file.len();
        loops.push(spawn_loop(&stop, move || {
            let c = lab.lock().unwrap().cmd(
                node,
                [
                    "curl",
                    "-s",
                    "-m",
                    "60",
                    "--limit-rate",
                    "1M",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{size_download} exit %{exitcode} after %{time_total}s (connect %{time_connect}s)",
                ],
            );
            let mut c = c;
            c.arg("http://192.0.2.1/f");
            let out = output_of(c);
            if out.split_whitespace().next() == Some(want.to_string().as_str()) && out.contains("exit 0 ") {
                ok.fetch_add(1, Ordering::Relaxed);
            } else {
                bad.fetch_add(1, Ordering::Relaxed);
                how.lock().unwrap().push(format!("{node}: {} bytes, at {:?}", out.trim(), start.elapsed()));
            }
        }));
    }

    // Warm up, then the first figures.
    std::thread::sleep(Duration::from_secs(5).min(duration / 4));
    let first = proc_figures(lab.lock().unwrap().agent_pid().unwrap_or(0));
    let (mut max_rss, mut max_fds) = first;
    let mut next_kill = Instant::now() + kill_every;
    while start.elapsed() < duration {
        std::thread::sleep(Duration::from_millis(500));
        let pid = lab.lock().unwrap().agent_pid().unwrap_or(0);
        let (rss, fds) = proc_figures(pid);
        max_rss = max_rss.max(rss);
        max_fds = max_fds.max(fds);
        if Instant::now() >= next_kill && start.elapsed() + Duration::from_secs(10) < duration {
            let mut l = lab.lock().unwrap();
            l.stop_agent(libc::SIGKILL, Duration::from_secs(5))?;
            std::thread::sleep(Duration::from_millis(500));
            l.start_agent(&AgentOpts::new(&cfg))?;
            report.kills += 1;
            report.kills_at.push(start.elapsed());
            next_kill = Instant::now() + kill_every;
        }
    }
    let last = proc_figures(lab.lock().unwrap().agent_pid().unwrap_or(0));
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        let _ = l.handle.join();
    }
    perfdhcp.interrupt();
    std::thread::sleep(Duration::from_millis(300));
    capture.interrupt();
    for mut c in [filler, dnsperf] {
        // SAFETY: kill(2) on our children.
        unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
        let _ = c.wait();
    }
    let lab = Arc::try_unwrap(lab).map_err(|_| anyhow::anyhow!("a load thread still holds the lab"))?.into_inner()?;

    report.duration = start.elapsed();
    report.rss_kib = (first.0, last.0, max_rss.max(last.0));
    report.fds = (first.1, last.1, max_fds.max(last.1));
    let perf = std::fs::read_to_string(&dnsperf_out).unwrap_or_default();
    report.dns_queries_sent = dnsperf_figure(&perf, "Queries sent:");
    report.dns_answered = dnsperf_figure(&perf, "Queries completed:");
    report.local_dns_asked = asked.load(Ordering::Relaxed);
    report.local_dns_failed = failed.load(Ordering::Relaxed);
    report.tftp_ok = tftp_ok.load(Ordering::Relaxed);
    report.tftp_failed = tftp_failed.load(Ordering::Relaxed);
    report.nat_transfers_ok = nat_ok.load(Ordering::Relaxed);
    report.nat_transfers_broken = nat_broken.load(Ordering::Relaxed);
    report.nat_broken_how = std::mem::take(&mut *nat_broken_how.lock().unwrap());
    let acked = acks_in(&pcap)?;
    report.acks_seen = acked.len();
    report.acked_leases_lost = leases_lost(&lab, &acked)?;
    let st = lab.status_json()?;
    report.connections_at_end = st["dataplane"]["firewall"]["connections"].as_u64().unwrap_or(0);
    report.drops = st["dataplane"]["drop_reasons"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|r| r["packets"].as_u64().unwrap_or(0) > 0)
                .map(|r| (r["name"].as_str().unwrap_or("?").to_string(), r["packets"].as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    Ok(report)
}

/// ACKed addresses missing from the store (or held by another client), and
/// addresses ACKed to two clients.
fn leases_lost(lab: &Lab, acked: &[(std::net::Ipv4Addr, String)]) -> Result<usize> {
    let out = lab.coresvc(["leases", "--json"])?;
    let leases: serde_json::Value = serde_json::from_slice(&out.stdout).context("coresvc leases --json")?;
    let store: std::collections::HashMap<String, String> = leases
        .as_array()
        .map(|a| {
            a.iter()
                .map(|l| (l["address"].as_str().unwrap_or("").to_string(), l["mac"].as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default();
    let mut owner: std::collections::HashMap<std::net::Ipv4Addr, &str> = std::collections::HashMap::new();
    let mut lost = 0;
    // The last ACK of each address is the one that must be in the store.
    let mut last: std::collections::HashMap<std::net::Ipv4Addr, &str> = std::collections::HashMap::new();
    for (addr, mac) in acked {
        if owner.insert(*addr, mac).is_some_and(|prev| prev != mac) {
            lost += 1;
        }
        last.insert(*addr, mac);
    }
    for (addr, mac) in last {
        if store.get(&addr.to_string()).map(String::as_str) != Some(mac) {
            lost += 1;
        }
    }
    Ok(lost)
}

fn dnsperf_figure(out: &str, label: &str) -> u64 {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn run_ok(mut c: std::process::Command) -> bool {
    c.stdout(Stdio::piped()).stderr(Stdio::null());
    c.output().is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
}

fn output_of(mut c: std::process::Command) -> String {
    c.stdout(Stdio::piped()).stderr(Stdio::null());
    c.output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}

/// A cheap deterministic scramble (xorshift), so the names differ.
fn rand_u32(i: u32) -> u32 {
    let mut x = i.wrapping_mul(0x9e37_79b9) ^ 0x5bd1_e995;
    x ^= x << 13;
    x ^= x >> 17;
    x ^ (x << 5)
}
