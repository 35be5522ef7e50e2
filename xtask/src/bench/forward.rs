//! `cargo xtask bench forward`: 64-byte UDP frames from dvnt-client through
//! the gateway to provisioner, counted by an XDP sink on provisioner's
//! interface, for (1) coresvc's fast path with the firewall and conntrack in
//! the path, (2) the kernel's forwarding with an equivalent nftables
//! ruleset, (3) the lab's limit: a bare XDP program that only looks the route
//! up, rewrites MACs, decrements the TTL and redirects. Plus iperf3 TCP for
//! (1) and (2). One lab, one run, one generator: trafgen (netsniff-ng) on
//! one CPU, as the issue's reference figures were measured.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use coresvc_lab::{AgentOpts, Lab};
use serde_json::Value;

use super::{BenchLab, ratio};
use crate::util::step;

const BENCH_RULES: &str = r#"
[[firewall.rule]]
name = "bench-udp"
from = "dvnt"
to = "mgmt"
proto = "udp"
ports = [9]
action = "allow"

[[firewall.rule]]
name = "bench-iperf"
from = "dvnt"
to = "mgmt"
proto = "tcp"
ports = [5201]
action = "allow"
"#;

const NFT_RULES: &str = "table inet bench {
  chain forward {
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    iifname \"dvnt0\" oifname \"mgmt0\" udp dport 9 accept
    iifname \"dvnt0\" oifname \"mgmt0\" tcp dport 5201 accept
    iifname \"mgmt0\" accept
  }
}
";

pub(super) fn mac(lab: &Lab, node: &str, iface: &str) -> Result<[u8; 6]> {
    let out = lab.exec(node, ["cat", &format!("/sys/class/net/{iface}/address")])?;
    let s = String::from_utf8_lossy(&out.stdout);
    let mut m = [0u8; 6];
    for (b, p) in m.iter_mut().zip(s.trim().split(':')) {
        *b = u8::from_str_radix(p, 16)?;
    }
    Ok(m)
}

/// A 64-byte frame (60 + FCS on the wire): UDP 10.20.0.50:4000 -> `to`:9.
pub(super) fn frame(dst: [u8; 6], src: [u8; 6], to: &str) -> String {
    let payload = [0u8; 18];
    let (s, d) = ("10.20.0.50".parse().unwrap(), to.parse().unwrap());
    let f = coresvc_lab::frames::ipv4(src, dst, s, d, 17, 64, 0, &coresvc_lab::frames::udp(s, 4000, d, 9, &payload));
    f.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where a measurement's frames go: the sink's node (its `eth0`), the
/// address pinged first (neighbour entries on both sides, so the first frames
/// are not queued), and the source every delivered frame must have, if any.
pub(super) struct Target<'a> {
    pub sink_node: &'a str,
    pub ping: &'a str,
    pub expect_src: Option<&'a str>,
}

pub(super) const TO_PROVISIONER: Target<'static> =
    Target { sink_node: "provisioner", ping: "10.10.0.10", expect_src: None };

/// What a measurement saw.
pub(super) struct Measured {
    /// Delivered packets per second at the sink.
    pub pps: f64,
    /// trafgen's own rate.
    pub offered: f64,
    /// Delivered packets with another source than expected.
    pub other_source: u64,
}

/// Delivered packets per second at the sink while trafgen (one CPU, as fast
/// as it can) sends `frame` from dvnt-client; also trafgen's own rate.
pub(super) fn measure(lab: &Lab, frame: &str, seconds: u64, t: &Target) -> Result<Measured> {
    let _ = lab.exec("dvnt-client", ["ping", "-c", "1", "-W", "1", t.ping]);
    let bin = coresvc_lab::agent_bin()?;
    let mut sink = Command::new(&bin);
    sink.args(["devtool", "sink", "--netns", &lab.ns(t.sink_node), "--iface", "eth0", "--warmup", "1"])
        .args(["--seconds", &seconds.to_string()]);
    if let Some(src) = t.expect_src {
        sink.args(["--expect-src", src]);
    }
    let sink = sink.stdout(Stdio::piped()).spawn().context("starting the sink")?;
    std::thread::sleep(Duration::from_millis(300));
    let bytes: Vec<String> = (0..frame.len()).step_by(2).map(|i| format!("0x{}", &frame[i..i + 2])).collect();
    let conf = lab.write_file("trafgen.cfg", &format!("{{ {} }}\n", bytes.join(", ")))?;
    let started = std::time::Instant::now();
    // Bounded by a packet count (it stops by itself), in its own process
    // group (trafgen forks a worker per CPU; the group gets the signal).
    use std::os::unix::process::CommandExt as _;
    let limit = (seconds + 10) * 4_000_000;
    let mut trafgen = lab
        .cmd("dvnt-client", ["trafgen", "--dev", "eth0", "--cpus", "1", "--num", &limit.to_string(), "--conf"])
        .arg(&conf)
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting trafgen (package netsniff-ng)")?;
    let out = sink.wait_with_output();
    // SAFETY: kill(2) on our child's process group: trafgen prints its totals on SIGINT.
    unsafe { libc::kill(-(trafgen.id() as i32), libc::SIGINT) };
    let out = out?;
    let elapsed = started.elapsed().as_secs_f64();
    let mut err = String::new();
    use std::io::Read as _;
    if let Some(mut e) = trafgen.stdout.take() {
        let _ = e.read_to_string(&mut err);
    }
    let _ = trafgen.wait();
    let v: Value = serde_json::from_slice(&out.stdout).context("sink output")?;
    // "N packets outgoing" in trafgen's summary.
    if !err.contains("packets outgoing") {
        bail!("trafgen sent nothing: {err}");
    }
    let sent = err
        .lines()
        .find(|l| l.contains("packets outgoing"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or(0.0);
    Ok(Measured {
        pps: v["pps"].as_f64().unwrap_or(0.0),
        offered: sent / elapsed,
        other_source: v["other_source"].as_u64().unwrap_or(0),
    })
}

/// iperf3 TCP from dvnt-client to a server on `node` at `addr`: bits/s.
pub(super) fn iperf(lab: &Lab, node: &str, addr: &str, seconds: u64) -> Result<f64> {
    let mut server = lab.cmd(node, ["iperf3", "-s", "-1", "-B", addr]).stdout(Stdio::null()).spawn()?;
    lab.wait_tcp(node, addr, 5201)?;
    let out = lab.exec("dvnt-client", ["iperf3", "-c", addr, "-t", &seconds.to_string(), "-J"])?;
    let _ = server.wait();
    let v: Value = serde_json::from_slice(&out.stdout).context("iperf3 -J output")?;
    v["end"]["sum_received"]["bits_per_second"].as_f64().context("no iperf3 result")
}

/// Fails unless coresvc redirected frames from XDP on dvnt0: otherwise a
/// measurement would not be of the fast path.
pub(super) fn ensure_fast_path(lab: &Lab, what: &str) -> Result<()> {
    let status = lab.status_json()?;
    let redirected = status["dataplane"]["interfaces"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == "dvnt0"))
        .and_then(|i| i["verdicts"]["redirect"]["packets"].as_u64())
        .unwrap_or(0);
    if redirected == 0 {
        bail!(
            "coresvc forwarded nothing from XDP: the measurement would not be of the fast path ({what})\n{}\n{}",
            serde_json::to_string_pretty(&status["dataplane"])?,
            String::from_utf8_lossy(&lab.coresvc(["flows"])?.stdout)
        );
    }
    Ok(())
}

pub(super) struct Bg(pub Child);
impl Drop for Bg {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

pub fn run(b: &BenchLab, seconds: u64) -> Result<()> {
    let mut lab = b.lab()?;
    let cfg = lab.config_with("bench-forward.toml", |s| s + BENCH_RULES)?;
    lab.start_agent(&AgentOpts::new(&cfg))?;
    let f = frame(mac(&lab, "gw", "dvnt0")?, mac(&lab, "dvnt-client", "eth0")?, "10.10.0.10");

    step("bench", "coresvc: firewall + conntrack + XDP fast path");
    let Measured { pps: ours, offered: offered1, .. } = measure(&lab, &f, seconds, &TO_PROVISIONER)?;
    ensure_fast_path(&lab, &format!("{ours:.0} pps delivered, {offered1:.0} offered"))?;
    let tcp_ours = iperf(&lab, "provisioner", "10.10.0.10", seconds)?;

    step("bench", "kernel forwarding with an equivalent nftables ruleset");
    lab.stop_agent(libc::SIGTERM, Duration::from_secs(10))?;
    let nft = lab.write_file("bench.nft", NFT_RULES)?;
    coresvc_lab::run(lab.cmd("gw", ["nft", "-f"]).arg(&nft))?;
    let Measured { pps: kernel, offered: offered2, .. } = measure(&lab, &f, seconds, &TO_PROVISIONER)?;
    let tcp_kernel = iperf(&lab, "provisioner", "10.10.0.10", seconds)?;
    coresvc_lab::run(&mut lab.cmd("gw", ["nft", "flush", "ruleset"]))?;

    step("bench", "bare XDP redirect (the lab's limit)");
    let redirect = Bg(Command::new(coresvc_lab::agent_bin()?)
        .args(["devtool", "redirect", "--netns", &lab.gw_ns(), "--iface", "dvnt0", "--iface", "mgmt0"])
        .stderr(Stdio::null())
        .spawn()?);
    std::thread::sleep(Duration::from_millis(500));
    let Measured { pps: bare, offered: offered3, .. } = measure(&lab, &f, seconds, &TO_PROVISIONER)?;
    drop(redirect);

    println!("\nForwarding dvnt -> mgmt, 64-byte UDP, delivered to an XDP sink ({seconds} s each, one run):");
    println!("  generator offered              {:>10.0} / {:>10.0} / {:>10.0} pps", offered1, offered2, offered3);
    println!("  coresvc fast path (fw + ct)    {ours:>10.0} pps");
    println!("  kernel + nftables              {kernel:>10.0} pps");
    println!("  bare XDP redirect (limit)      {bare:>10.0} pps");
    println!("  coresvc / bare redirect        {:>10}", ratio(ours, bare));
    println!("  coresvc / kernel + nftables    {:>10}", ratio(ours, kernel));
    println!("TCP, iperf3 dvnt-client -> provisioner ({seconds} s):");
    println!("  coresvc                        {:>10.2} Gbit/s", tcp_ours / 1e9);
    println!("  kernel + nftables              {:>10.2} Gbit/s", tcp_kernel / 1e9);
    println!("  coresvc / kernel + nftables    {:>10}", ratio(tcp_ours, tcp_kernel));
    Ok(())
}
