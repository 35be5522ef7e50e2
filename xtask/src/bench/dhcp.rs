//! `cargo xtask bench dhcp`: perfdhcp (as a relay, from dvnt-client) against
//! coresvc's DHCP service with durable leases (every ACK fsynced, group
//! commit), then Kea (memfile) and dnsmasq serving the same pool from the
//! gateway namespace, one after the other in one lab; completed 4-way
//! exchanges per second for each at several offered rates, each server's
//! best, and the ratios of the bests. (perfdhcp runs on the same two cores:
//! past some rate it drops replies itself, so one offered rate alone
//! measures perfdhcp as much as the server.)

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};
use coresvc_lab::{AgentOpts, Lab};

use super::{BenchLab, ratio};
use crate::util::step;

const SUBNET: &str = "10.20.0.0/16";
const POOL: (&str, &str) = ("10.20.1.0", "10.20.254.255");
/// perfdhcp's offered loads (4-way exchanges per second).
const RATES: &[u32] = &[2000, 5000, 8000, 12000];
/// Fewer clients than pool addresses: returning clients renew, none is refused.
const CLIENTS: &str = "50000";

pub fn run(b: &BenchLab, seconds: u64) -> Result<()> {
    // The state directory on a disk, never tmpfs: durable means fsynced to a device.
    let state = std::env::temp_dir().join(format!("coresvc-bench-dhcp-{}", std::process::id()));
    let state = if state.starts_with("/tmp") { Path::new("/var/tmp").join(state.file_name().unwrap()) } else { state };
    let mut lab = b.lab_with(|p| p.state_dir = state.clone())?;
    let result = (|| -> Result<()> {
        std::fs::create_dir_all(&state)?;
        let state_fs = fs_type(&state)?;
        let cfg = lab.config_with("bench-dhcp.toml", |s| {
            s.replace("cidr = \"10.20.0.0/24\"", &format!("cidr = \"{SUBNET}\"")).replace(
                "start = \"10.20.0.100\"\nend = \"10.20.0.199\"",
                &format!("start = \"{}\"\nend = \"{}\"", POOL.0, POOL.1),
            )
        })?;
        lab.start_agent(&AgentOpts::new(&cfg))?;
        step(
            "bench",
            &format!(
                "perfdhcp at {RATES:?} exchanges/s, {seconds} s each, against coresvc, Kea and dnsmasq (pool {}-{})",
                POOL.0, POOL.1
            ),
        );
        let ours = sweep(&lab, seconds)?;
        let status = lab.status_json()?;
        let j = &status["dhcp"]["journal"];
        let (commits, records) = (j["commits"].as_u64().unwrap_or(0), j["records"].as_u64().unwrap_or(0));
        lab.stop_agent(libc::SIGTERM, Duration::from_secs(5))?;
        let kea = with_server(&lab, kea_command(&lab)?, "Kea", seconds)?;
        let dnsmasq = with_server(&lab, dnsmasq_command(&lab), "dnsmasq", seconds)?;

        println!("\nDHCP, perfdhcp from dvnt-client as a relay, {seconds} s per rate, pool {}-{}:", POOL.0, POOL.1);
        println!("  completed 4-way exchanges/s (ACKs received / s) at each offered rate:");
        println!("  {:>8} {:>10} {:>10} {:>10}", "offered", "coresvc", "Kea", "dnsmasq");
        for (i, rate) in RATES.iter().enumerate() {
            println!("  {rate:>8} {:>10.0} {:>10.0} {:>10.0}", ours[i], kea[i], dnsmasq[i]);
        }
        let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        let (o, k, d) = (best(&ours), best(&kea), best(&dnsmasq));
        println!("  best:");
        println!("    coresvc (every ACK fdatasynced, journal on {state_fs})  {o:>8.0} exchanges/s");
        println!("    Kea 2.2 (memfile, appends without fsync)              {k:>8.0} exchanges/s");
        println!("    dnsmasq 2.90 (rewrites its lease file, --no-ping)      {d:>8.0} exchanges/s");
        println!(
            "  coresvc group commit: {records} lease records in {commits} fdatasyncs ({:.1} per sync)",
            records as f64 / commits.max(1) as f64
        );
        println!("  ratio coresvc/Kea      {:>8}", ratio(o, k));
        println!("  ratio coresvc/dnsmasq  {:>8}", ratio(o, d));
        Ok(())
    })();
    drop(lab);
    let _ = std::fs::remove_dir_all(&state);
    result
}

/// The file system type of `p` (`stat -f`; ext4 shows as ext2/ext3).
fn fs_type(p: &Path) -> Result<String> {
    let out = Command::new("stat").args(["-f", "-c", "%T"]).arg(p).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs a peer server in the gateway namespace for one perfdhcp run.
fn with_server(lab: &Lab, mut cmd: Command, name: &str, seconds: u64) -> Result<Vec<f64>> {
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {name} (installed by cargo xtask setup)"))?;
    std::thread::sleep(Duration::from_secs(2));
    if let Some(st) = child.try_wait()? {
        bail!("{name} exited at start ({st}); run its command by hand in the lab to see why: {cmd:?}");
    }
    let r = sweep(lab, seconds);
    let _ = child.kill();
    let _ = child.wait();
    r
}

fn kea_command(lab: &Lab) -> Result<Command> {
    let dir = lab.paths.run_dir.join("kea");
    std::fs::create_dir_all(&dir)?;
    let conf = format!(
        r#"{{ "Dhcp4": {{
  "interfaces-config": {{ "interfaces": [ "dvnt0" ], "dhcp-socket-type": "udp" }},
  "lease-database": {{ "type": "memfile", "persist": true, "name": "{d}/kea-leases4.csv", "lfc-interval": 0 }},
  "valid-lifetime": 3600,
  "subnet4": [ {{ "id": 1, "subnet": "{SUBNET}", "pools": [ {{ "pool": "{} - {}" }} ],
                 "option-data": [ {{ "name": "routers", "data": "10.20.0.1" }} ] }} ],
  "loggers": [ {{ "name": "kea-dhcp4", "severity": "WARN", "output_options": [ {{ "output": "{d}/kea.log" }} ] }} ]
}} }}"#,
        POOL.0,
        POOL.1,
        d = dir.display()
    );
    let path = dir.join("kea-dhcp4.json");
    std::fs::write(&path, conf)?;
    let mut c = lab.cmd("gw", ["kea-dhcp4", "-c"]);
    c.arg(&path).env("KEA_LOCKFILE_DIR", &dir).env("KEA_PIDFILE_DIR", &dir);
    Ok(c)
}

fn dnsmasq_command(lab: &Lab) -> Command {
    let leases = lab.paths.run_dir.join("dnsmasq.leases");
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

/// One perfdhcp run per offered rate against the server on 10.20.0.1.
fn sweep(lab: &Lab, seconds: u64) -> Result<Vec<f64>> {
    RATES.iter().map(|r| perfdhcp(lab, *r, seconds)).collect()
}

/// Completed exchanges per second: ACKs received over the run's length.
fn perfdhcp(lab: &Lab, rate: u32, seconds: u64) -> Result<f64> {
    let out = lab
        .cmd(
            "dvnt-client",
            [
                "perfdhcp",
                "-4",
                "-l",
                "eth0",
                "-r",
                &rate.to_string(),
                "-R",
                CLIENTS,
                "-p",
                &seconds.to_string(),
                "10.20.0.1",
            ],
        )
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
    let (Some(_sent), Some(acks)) = (sent, acks) else {
        bail!("perfdhcp printed no statistics:\n{text}{}", String::from_utf8_lossy(&out.stderr));
    };
    Ok(acks as f64 / seconds as f64)
}
