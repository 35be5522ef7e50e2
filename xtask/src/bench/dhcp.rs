//! `cargo xtask bench dhcp`: perfdhcp (as a relay, from dvnt-client) against
//! coresvc's DHCP service with durable leases (every ACK fsynced, group
//! commit), then Kea (memfile) and dnsmasq serving the same pool from the
//! gateway namespace with coresvc stopped and detached, one after the
//! other in one lab; completed 4-way exchanges per second for each at
//! several offered rates. Every run is captured (tcpdump on dvnt-client:
//! the servers' replies) and checked: NAKs, addresses ACKed to two clients,
//! and ACKed leases missing from the server's own store afterwards
//! (coresvc's journal through `coresvc leases --json`, Kea's memfile CSV,
//! dnsmasq's lease file). perfdhcp runs on the same two cores: past some
//! rate it drops replies itself, so one offered rate alone measures
//! perfdhcp as much as the server.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use coresvc_lab::{AgentOpts, Lab};

use super::{
    BenchLab, Opts,
    isolation::{self, Flat, Tool},
    report::{Check, Plot, Ratio, Row, Section},
};
use crate::util::step;

const SUBNET: &str = "10.20.0.0/16";
const POOL: (&str, &str) = ("10.20.1.0", "10.20.254.255");
/// perfdhcp's offered loads (4-way exchanges per second).
const RATES: &[u32] = &[2000, 5000, 8000, 12000];
const SMOKE_RATES: &[u32] = &[500];
/// Fewer clients than pool addresses: returning clients renew, none is refused.
const CLIENTS: &str = "50000";

/// A reply seen on the wire: DHCP message type, address, client MAC.
struct Reply {
    kind: dhcproto::v4::MessageType,
    addr: Ipv4Addr,
    mac: String,
}

fn replies(pcap: &Path) -> Result<Vec<Reply>> {
    use dhcproto::{Decodable as _, Decoder, v4::Message};
    let bytes = std::fs::read(pcap).unwrap_or_default();
    Ok(coresvc_lab::dhcp::pcap_udp_payloads(&bytes)?
        .into_iter()
        .filter_map(|c| Message::decode(&mut Decoder::new(&c.payload)).ok())
        .filter_map(|m| {
            Some(Reply {
                kind: m.opts().msg_type()?,
                addr: m.yiaddr(),
                mac: m.chaddr().iter().take(6).map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"),
            })
        })
        .collect())
}

/// A server's lease store afterwards: address -> MAC.
type Store = HashMap<Ipv4Addr, String>;

/// What a server is, for one sweep.
struct Server<'a> {
    name: &'a str,
    /// Its lease store, read after each run.
    store: &'a dyn Fn() -> Result<Store>,
    /// Its own count of ACKs (or leases), read before and after each run.
    counter: (&'a str, &'a dyn Fn() -> Result<u64>),
    /// The isolation checks before each run.
    pre: &'a dyn Fn() -> Result<Vec<Check>>,
    /// coresvc's counters flat through a peer's runs.
    peer: bool,
}

/// One perfdhcp run per offered rate, each captured and checked.
fn sweep(lab: &Lab, s: &Server, rates: &[u32], seconds: u64) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &rate in rates {
        let mut row = Row::new(format!("{} at {rate}/s", s.name));
        row.series = Some(s.name.to_string());
        row.checks = (s.pre)()?;
        let flat = Flat::start(&lab.paths.pin_dir)?;
        let pcap = lab.paths.run_dir.join(format!("dhcp-{}-{rate}.pcap", s.name.split(' ').next().unwrap_or("x")));
        let mut tcpdump = Tool::spawn(lab, "tcpdump", {
            let mut c = lab.cmd("dvnt-client", ["tcpdump", "-i", "eth0", "-U", "-n", "-B", "32768", "-s", "400", "-w"]);
            c.arg(&pcap).arg("udp and src port 67");
            c
        })?;
        tcpdump.wait_until(Duration::from_secs(5), || pcap.exists())?;
        std::thread::sleep(Duration::from_millis(500));
        let before = (s.counter.1)()?;
        let (offered, acks) = perfdhcp(lab, rate, seconds)?;
        std::thread::sleep(Duration::from_millis(500));
        let counted = (s.counter.1)()? - before;
        let (c, _) = tcpdump.stop();
        row.check(c);
        if s.peer {
            row.check(flat.check());
        }
        row.offered = Some(offered);
        row.achieved = Some(acks);
        let seen = replies(&pcap)?;
        let _ = std::fs::remove_file(&pcap);
        let acked: Vec<&Reply> =
            seen.iter().filter(|r| r.kind == dhcproto::v4::MessageType::Ack && !r.addr.is_unspecified()).collect();
        let naks = seen.iter().filter(|r| r.kind == dhcproto::v4::MessageType::Nak).count();
        let mut owner: HashMap<Ipv4Addr, &str> = HashMap::new();
        let mut twice = Vec::new();
        for r in &acked {
            if let Some(prev) = owner.insert(r.addr, &r.mac)
                && prev != r.mac
            {
                twice.push(format!("{} to {prev} and {}", r.addr, r.mac));
            }
        }
        let store = (s.store)()?;
        let missing: Vec<String> = owner
            .iter()
            .filter(|(a, m)| store.get(a).map(String::as_str) != Some(**m))
            .map(|(a, m)| format!("{a} ({m})"))
            .collect();
        let acks_on_wire = acked.len() as u64;
        row.check(Check::that(acks_on_wire > 0, "ACKs seen on the wire", || "none".into()));
        row.check(Check::that(naks == 0, "no NAK", || format!("{naks} NAKs")));
        row.check(Check::that(twice.is_empty(), "no address ACKed to two clients", || {
            format!("{}: {}", twice.len(), twice.iter().take(3).cloned().collect::<Vec<_>>().join(", "))
        }));
        row.check(Check::that(missing.is_empty(), "every ACKed lease in the server's store afterwards", || {
            format!(
                "{} missing, e.g. {}",
                missing.len(),
                missing.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
            )
        }));
        row.check(Check::that(counted > 0, format!("{} rose", s.counter.0), || "it did not".into()));
        row.counts.push(format!("ACKs on the wire {acks_on_wire} ({} addresses)", owner.len()));
        row.counts.push(format!("NAKs {naks}"));
        row.counts.push(format!("{} +{counted}", s.counter.0));
        rows.push(row);
    }
    Ok(rows)
}

/// A peer's sweep, its process checked still running at the end.
fn peer_sweep(lab: &Lab, s: &Server, rates: &[u32], seconds: u64, mut tool: Tool) -> Result<Vec<Row>> {
    let mut rows = sweep(lab, s, rates, seconds)?;
    let alive = tool.alive();
    if let Some(r) = rows.last_mut() {
        r.check(alive);
    }
    Ok(rows)
}

/// perfdhcp for `seconds` at `rate`: (DISCOVERs sent per second, ACKs
/// received per second).
fn perfdhcp(lab: &Lab, rate: u32, seconds: u64) -> Result<(f64, f64)> {
    let out = lab
        .cmd(
            "dvnt-client",
            ["perfdhcp", "-4", "-l", "eth0", "-r", &rate.to_string(), "-R", CLIENTS, "-p", &seconds.to_string()],
        )
        .arg("10.20.0.1")
        .output()
        .context("running perfdhcp (package kea-admin)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut section = "";
    let (mut sent, mut acks) = (None, None);
    for l in text.lines().map(str::trim) {
        if l.starts_with("***Statistics for:") {
            section = if l.contains("DISCOVER-OFFER") { "do" } else { "ra" };
        }
        let num = |p: &str| l.strip_prefix(p).and_then(|v| v.trim().parse::<u64>().ok());
        if section == "do" {
            sent = sent.or(num("sent packets:"));
        } else if section == "ra" {
            acks = acks.or(num("received packets:"));
        }
    }
    let (Some(sent), Some(acks)) = (sent, acks) else {
        bail!("perfdhcp printed no statistics:\n{text}{}", String::from_utf8_lossy(&out.stderr));
    };
    Ok((sent as f64 / seconds as f64, acks as f64 / seconds as f64))
}

fn coresvc_store(lab: &Lab) -> Result<Store> {
    let out = lab.coresvc(["leases", "--json"])?;
    if !out.status.success() {
        bail!("coresvc leases: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| Some((l["address"].as_str()?.parse().ok()?, l["mac"].as_str()?.to_string())))
        .collect())
}

/// Kea's memfile CSV (header names, the last row of an address wins).
fn kea_store(csv: &Path) -> Result<Store> {
    let text = std::fs::read_to_string(csv).with_context(|| format!("reading {}", csv.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col =
        |n: &str| header.iter().position(|h| *h == n).with_context(|| format!("no column {n} in {}", csv.display()));
    let (a, h, st) = (col("address")?, col("hwaddr")?, col("state")?);
    let mut store = Store::new();
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        let (Some(addr), Some(mac), Some(state)) = (f.get(a), f.get(h), f.get(st)) else { continue };
        let Ok(addr) = addr.parse() else { continue };
        if *state == "0" {
            store.insert(addr, mac.to_ascii_lowercase());
        } else {
            store.remove(&addr);
        }
    }
    Ok(store)
}

/// dnsmasq's lease file: `expiry mac address name client-id` per line.
fn dnsmasq_store(file: &Path) -> Result<Store> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (_, mac, addr) = (w.next()?, w.next()?, w.next()?);
            Some((addr.parse().ok()?, mac.to_ascii_lowercase()))
        })
        .collect())
}

pub fn run(b: &BenchLab, o: &Opts) -> Result<Vec<Section>> {
    // The state directory on a disk, never tmpfs: durable means fsynced to a device.
    let state = PathBuf::from(format!("/var/tmp/coresvc-bench-dhcp-{}", std::process::id()));
    let mut lab = b.lab()?;
    lab.paths.state_dir = state.clone();
    let result = measure(&mut lab, o, &state);
    drop(lab);
    let _ = std::fs::remove_dir_all(&state);
    result
}

fn measure(lab: &mut Lab, o: &Opts, state: &Path) -> Result<Vec<Section>> {
    let rates = if o.smoke { SMOKE_RATES } else { RATES };
    std::fs::create_dir_all(state)?;
    let state_fs = fs_type(state)?;
    let cfg = super::config(lab, "bench-dhcp.toml", |s| {
        s.replace("cidr = \"10.20.0.0/24\"", &format!("cidr = \"{SUBNET}\"")).replace(
            "start = \"10.20.0.100\"\nend = \"10.20.0.199\"",
            &format!("start = \"{}\"\nend = \"{}\"", POOL.0, POOL.1),
        )
    })?;
    lab.start_agent(&AgentOpts::new(&cfg))?;
    step("bench", &format!("perfdhcp at {rates:?} exchanges/s, {} s each: coresvc, Kea, dnsmasq", o.seconds));
    let ours = {
        let lab = &*lab;
        let acks = || -> Result<u64> {
            lab.status_json()?["dhcp"]["journal"]["records"].as_u64().context("no dhcp.journal.records in status")
        };
        let pre = || -> Result<Vec<Check>> {
            Ok(isolation::coresvc_present(&isolation::attached(lab)?, "gw", &[("dvnt0", "segment_ingress")]))
        };
        let store = || coresvc_store(lab);
        let s = Server {
            name: "coresvc",
            store: &store,
            counter: ("coresvc journal records", &acks),
            pre: &pre,
            peer: false,
        };
        sweep(lab, &s, rates, o.seconds)?
    };
    let status = lab.status_json()?;
    let j = &status["dhcp"]["journal"];
    let (commits, records) = (j["commits"].as_u64().unwrap_or(0), j["records"].as_u64().unwrap_or(0));
    lab.stop_agent(libc::SIGTERM, Duration::from_secs(5))?;

    let pre = || isolation::peer_checks(lab, &[]);
    let kea_dir = lab.paths.run_dir.join("kea");
    let kea = {
        let (cmd, socket) = kea_command(lab, &kea_dir)?;
        let mut tool = Tool::spawn(lab, "kea-dhcp4", cmd)?;
        tool.wait_until(Duration::from_secs(10), || socket.exists())?;
        let acks = || kea_stat(&socket, "pkt4-ack-sent");
        let csv = kea_dir.join("kea-leases4.csv");
        let store = || kea_store(&csv);
        let s = Server { name: "Kea", store: &store, counter: ("Kea pkt4-ack-sent", &acks), pre: &pre, peer: true };
        peer_sweep(lab, &s, rates, o.seconds, tool)?
    };
    let dnsmasq = {
        let leases = lab.paths.run_dir.join("dnsmasq.leases");
        let mut tool = Tool::spawn(lab, "dnsmasq", dnsmasq_command(lab, &leases))?;
        tool.wait_until(Duration::from_secs(10), || {
            lab.exec("gw", ["ss", "-Hulnp", "sport = :67"])
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("dnsmasq"))
        })?;
        let count = || Ok(dnsmasq_store(&leases)?.len() as u64);
        let store = || dnsmasq_store(&leases);
        let s = Server { name: "dnsmasq", store: &store, counter: ("dnsmasq leases", &count), pre: &pre, peer: true };
        peer_sweep(lab, &s, rates, o.seconds, tool)?
    };

    let mut s = Section::new("dhcp", "DHCP, perfdhcp from dvnt-client as a relay: completed 4-way exchanges", "ACKs/s");
    s.generator = format!(
        "perfdhcp -r RATE -R {CLIENTS} (offered = DISCOVERs sent per second), pool {}-{}, {} s per rate",
        POOL.0, POOL.1, o.seconds
    );
    s.plot = Plot::RateVsOffered;
    let best = |rows: &[Row]| {
        rows.iter()
            .filter(|r| r.figure().is_some())
            .max_by(|a, b| a.achieved.partial_cmp(&b.achieved).unwrap())
            .map(|r| r.name.clone())
    };
    let (bo, bk, bd) = (best(&ours), best(&kea), best(&dnsmasq));
    if let (Some(o_), Some(k)) = (&bo, &bk) {
        s.ratios.push(Ratio::noted(o_, k, "the bests"));
    }
    if let (Some(o_), Some(d)) = (&bo, &bd) {
        s.ratios.push(Ratio::noted(o_, d, "the bests"));
    }
    s.rows = ours.into_iter().chain(kea).chain(dnsmasq).collect();
    s.notes.push(format!(
        "coresvc: every ACK fdatasynced (journal on {state_fs}), group commit: {records} lease records in {commits} \
         fdatasyncs ({:.1} per sync); Kea 2.2 memfile appends without fsync; dnsmasq 2.90 rewrites its lease file \
         (--no-ping)",
        records as f64 / commits.max(1) as f64
    ));
    Ok(vec![s])
}

/// The file system type of `p` (`stat -f`; ext4 shows as ext2/ext3).
fn fs_type(p: &Path) -> Result<String> {
    let out = Command::new("stat").args(["-f", "-c", "%T"]).arg(p).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Kea's command and its control socket (for its statistics).
fn kea_command(lab: &Lab, dir: &Path) -> Result<(Command, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let socket = dir.join("kea.sock");
    let conf = format!(
        r#"{{ "Dhcp4": {{
  "interfaces-config": {{ "interfaces": [ "dvnt0" ], "dhcp-socket-type": "udp" }},
  "control-socket": {{ "socket-type": "unix", "socket-name": "{s}" }},
  "lease-database": {{ "type": "memfile", "persist": true, "name": "{d}/kea-leases4.csv", "lfc-interval": 0 }},
  "valid-lifetime": 3600,
  "subnet4": [ {{ "id": 1, "subnet": "{SUBNET}", "pools": [ {{ "pool": "{} - {}" }} ],
                 "option-data": [ {{ "name": "routers", "data": "10.20.0.1" }} ] }} ],
  "loggers": [ {{ "name": "kea-dhcp4", "severity": "WARN", "output_options": [ {{ "output": "{d}/kea.log" }} ] }} ]
}} }}"#,
        POOL.0,
        POOL.1,
        d = dir.display(),
        s = socket.display()
    );
    let path = dir.join("kea-dhcp4.json");
    std::fs::write(&path, conf)?;
    let mut c = lab.cmd("gw", ["kea-dhcp4", "-c"]);
    c.arg(&path).env("KEA_LOCKFILE_DIR", dir).env("KEA_PIDFILE_DIR", dir);
    Ok((c, socket))
}

/// A statistic of Kea's (`statistic-get` over its control socket).
fn kea_stat(socket: &Path, name: &str) -> Result<u64> {
    use std::io::{Read as _, Write as _};
    let mut s = std::os::unix::net::UnixStream::connect(socket).with_context(|| format!("{}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, r#"{{ "command": "statistic-get", "arguments": {{ "name": "{name}" }} }}"#)?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("Kea answered {text}"))?;
    // {"arguments": {"pkt4-ack-sent": [[N, "time"], ...]}, "result": 0}
    Ok(v["arguments"][name][0][0].as_u64().unwrap_or(0))
}

fn dnsmasq_command(lab: &Lab, leases: &Path) -> Command {
    let mut c = lab.cmd(
        "gw",
        [
            "dnsmasq",
            "--keep-in-foreground",
            "--port=0",
            "--interface=dvnt0",
            "--dhcp-authoritative",
            "--no-ping",
            "--dhcp-lease-max=70000",
            "--user=root",
            "--pid-file",
            "--quiet-dhcp",
        ],
    );
    c.arg(format!("--dhcp-range={},{},255.255.0.0,1h", POOL.0, POOL.1))
        .arg(format!("--dhcp-leasefile={}", leases.display()));
    c
}
