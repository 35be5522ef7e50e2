//! The benchmarks' packet generator and counter: `coresvc-devtool blast`
//! (BPF_PROG_TEST_RUN's live-frames mode from dvnt-client's veth, one
//! sender thread per CPU, no per-packet userspace work: stronger than
//! trafgen or kxdpgun on this 2-core machine, whose single sender thread
//! was the limit of several rows) and `coresvc-devtool sink` (an XDP
//! program on the receiving node's veth that counts and drops what
//! arrives, DNS responses by rcode).

use std::{process::Command, time::Duration};

use anyhow::{Context as _, Result};
use coresvc_lab::Lab;
use serde_json::Value;

use super::{
    isolation::{self, Tool},
    report::{Check, Row},
};

/// Sender threads: one per CPU of this machine.
pub fn threads() -> u32 {
    std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1).min(4)
}

pub fn generator_text() -> String {
    format!(
        "coresvc-devtool blast: BPF_PROG_TEST_RUN live frames out of dvnt-client's veth, {} sender thread(s), \
         one per CPU",
        threads()
    )
}

/// `node`'s MAC address of `iface`.
pub fn mac(lab: &Lab, node: &str, iface: &str) -> Result<[u8; 6]> {
    let out = lab.exec(node, ["cat", &format!("/sys/class/net/{iface}/address")])?;
    let s = String::from_utf8_lossy(&out.stdout);
    let mut m = [0u8; 6];
    for (b, p) in m.iter_mut().zip(s.trim().split(':')) {
        *b = u8::from_str_radix(p, 16).with_context(|| format!("MAC of {node}:{iface}: {s}"))?;
    }
    Ok(m)
}

/// A 64-byte frame (60 + FCS on the wire) from dvnt-client (`src` MAC) to
/// the gateway (`dst` MAC): UDP 10.20.0.50:4000 -> `to`:9.
pub fn udp64(dst: [u8; 6], src: [u8; 6], to: &str) -> Vec<u8> {
    let payload = [0u8; 18];
    let (s, d) = ("10.20.0.50".parse().unwrap(), to.parse().unwrap());
    coresvc_lab::frames::ipv4(src, dst, s, d, 17, 64, 0, &coresvc_lab::frames::udp(s, 4000, d, 9, &payload))
}

/// A DNS query frame from dvnt-client to `server` (`dst` MAC the
/// gateway's): `name` `rtype`, recursion desired, no EDNS.
pub fn dns_query(dst: [u8; 6], src: [u8; 6], server: &str, name: &str, rtype: u16, id: u16) -> Vec<u8> {
    let mut msg = Vec::new();
    msg.extend_from_slice(&id.to_be_bytes());
    msg.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        msg.push(label.len() as u8);
        msg.extend_from_slice(label.as_bytes());
    }
    msg.push(0);
    msg.extend_from_slice(&rtype.to_be_bytes());
    msg.extend_from_slice(&1u16.to_be_bytes());
    let (s, d) = ("10.20.0.50".parse().unwrap(), server.parse().unwrap());
    coresvc_lab::frames::ipv4(src, dst, s, d, 17, 64, 0, &coresvc_lab::frames::udp(s, 40000, d, 53, &msg))
}

fn hex(f: &[u8]) -> String {
    f.iter().map(|b| format!("{b:02x}")).collect()
}

/// What one flood saw.
pub struct Flood {
    /// Frames per second the generator handed to the veth.
    pub offered: f64,
    /// Frames per second counted by the sink.
    pub achieved: f64,
    /// The sink's counters (`devtool sink` JSON).
    pub sink: Value,
    /// The sink was attached where it counts; both tools ended cleanly.
    pub checks: Vec<Check>,
    /// The node's veth had to be reset afterwards ([`reachable_after`]).
    pub reset: bool,
}

impl Flood {
    /// A row of this flood: offered, achieved, the generator's checks.
    pub fn row(&self, name: &str) -> Row {
        let mut row = Row::new(name);
        row.offered = Some(self.offered);
        row.achieved = Some(self.achieved);
        row.checks.extend(self.checks.iter().cloned());
        if self.reset {
            row.counts.push("the receiving veth was stuck afterwards and was reset".into());
        }
        row
    }

    pub fn count(&self, k: &str) -> u64 {
        self.sink[k].as_u64().unwrap_or(0)
    }
}

/// Floods `frames` (in turn) from dvnt-client's eth0 for `seconds` and
/// counts what arrives on `sink_node`'s eth0 (with `expect_src`: also the
/// frames from another source). The lab's XDP pass program goes back on
/// the sink's interface afterwards.
pub fn flood(lab: &Lab, frames: &[Vec<u8>], sink_node: &str, expect_src: Option<&str>, seconds: u64) -> Result<Flood> {
    let mut checks = Vec::new();
    let mut args: Vec<String> =
        ["sink", "--netns", &lab.ns(sink_node), "--iface", "eth0", "--warmup", "1", "--seconds"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    args.push(seconds.to_string());
    if let Some(src) = expect_src {
        args.extend(["--expect-src".to_string(), src.to_string()]);
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut sink = Tool::devtool(lab, &format!("sink on {sink_node}"), &argv)?;
    sink.wait_until(Duration::from_secs(10), || {
        isolation::attached(lab).is_ok_and(|a| isolation::present(&a, sink_node, "eth0", "sink").failure.is_none())
    })?;
    checks.push(Check::ok(format!("sink attached on {sink_node}:eth0")));
    let mut bargs: Vec<String> = ["blast", "--netns", &lab.ns("dvnt-client"), "--iface", "eth0", "--threads"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    bargs.push(threads().to_string());
    bargs.extend(["--seconds".to_string(), format!("{}.5", seconds + 1)]);
    for f in frames {
        bargs.extend(["--frame".to_string(), hex(f)]);
    }
    let bargv: Vec<&str> = bargs.iter().map(String::as_str).collect();
    let blaster = Tool::devtool(lab, "generator", &bargv)?;
    let wait = Duration::from_secs(seconds + 20);
    let (c, blast_out) = blaster.finish(wait);
    checks.push(c);
    let (c, sink_out) = sink.finish(wait);
    checks.push(c);
    let restored = coresvc_lab::xdp_pass::attach(&lab.ns(sink_node), "eth0");
    checks.push(Check::that(restored.is_ok(), format!("lab pass program back on {sink_node}:eth0"), || {
        format!("{:#}", restored.as_ref().expect_err("an error"))
    }));
    let (c, reset) = reachable_after(lab, sink_node);
    checks.push(c);
    let sink: Value = serde_json::from_str(sink_out.trim()).unwrap_or(Value::Null);
    let blast: Value = serde_json::from_str(blast_out.trim()).unwrap_or(Value::Null);
    let offered = blast["pps"].as_f64().unwrap_or(0.0);
    checks.push(Check::that(offered > 0.0, "the generator sent frames", || format!("it printed {blast_out:?}")));
    Ok(Flood { offered, achieved: sink["pps"].as_f64().unwrap_or(0.0), sink, checks, reset })
}

/// The gateway reaches `node` after a flood into it. A flood of XDP_TX or
/// redirected frames into a veth can leave its receive ring full with
/// nothing draining it (kernel 6.18, seen here after the XDP answer cache's
/// and the reflector's floods: every later frame to the node is dropped at
/// the gateway's transmit); taking the node's link down and up empties it.
/// Returns the check and whether that reset was needed.
fn reachable_after(lab: &Lab, node: &str) -> (Check, bool) {
    let what = format!("the gateway reaches {node} after the flood");
    let Some(link) = lab.topo.link_of(node).cloned() else {
        return (Check::failed(what, "no link"), false);
    };
    let addr = link.address.as_deref().unwrap_or("").split('/').next().unwrap_or("").to_string();
    let ping = || {
        let _ = lab.exec(&lab.topo.gateway, ["ip", "neigh", "flush", "dev", &link.gw_iface]);
        lab.exec(&lab.topo.gateway, ["ping", "-c", "1", "-W", "2", &addr]).is_ok_and(|o| o.status.success())
    };
    if ping() {
        return (Check::ok(what), false);
    }
    let mut reset = format!("ip link set {0} down && ip link set {0} up && sleep 1", link.iface);
    if let Some(via) = &link.via {
        reset.push_str(&format!(" && ip route replace default via {via}"));
    }
    let _ = lab.exec(node, ["sh", "-c", &reset]);
    (Check::that(ping(), what, || "not even after taking its link down and up".into()), true)
}

/// A packet counter of a named nftables counter object on `node`.
pub fn nft_counter(lab: &Lab, node: &str, family: &str, table: &str, name: &str) -> Result<u64> {
    let text = coresvc_lab::dns::check(&mut lab.cmd(node, ["nft", "-j", "list", "counter", family, table, name]))?;
    let v: Value = serde_json::from_str(&text)?;
    v["nftables"]
        .as_array()
        .and_then(|a| a.iter().find_map(|e| e["counter"]["packets"].as_u64()))
        .with_context(|| format!("no counter {name} in {text}"))
}

/// iperf3 TCP from dvnt-client to a server on `node` at `addr`: bits/s.
pub fn iperf(lab: &Lab, node: &str, addr: &str, seconds: u64) -> Result<f64> {
    let mut server = lab.cmd(node, ["iperf3", "-s", "-1", "-B", addr]).stdout(std::process::Stdio::null()).spawn()?;
    lab.wait_tcp(node, addr, 5201)?;
    let out = lab.exec("dvnt-client", ["iperf3", "-c", addr, "-t", &seconds.to_string(), "-J"])?;
    let _ = server.kill();
    let _ = server.wait();
    let v: Value = serde_json::from_slice(&out.stdout).context("iperf3 -J output")?;
    v["end"]["sum_received"]["bits_per_second"].as_f64().with_context(|| {
        format!("no iperf3 result: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })
}

/// The gateway's interfaces as the lab's nodes have theirs: GRO on (a veth
/// needs NAPI on its receiving side for frames a peer transmits from XDP,
/// the generator's, with or without an XDP program there, so every row
/// receives the same way) and transmit checksums computed (a peer's server
/// on the gateway, Knot or tftpd-hpa, would otherwise leave them to an
/// offload the nodes' XDP programs do not keep).
pub fn prepare(lab: &Lab) -> Result<()> {
    for l in &lab.topo.links {
        coresvc_lab::run(&mut lab.cmd(&lab.topo.gateway, ["ethtool", "-K", &l.gw_iface, "gro", "on", "tx", "off"]))?;
    }
    Ok(())
}

/// A `redirect` verdict counter of coresvc on the gateway interface `iface`.
pub fn coresvc_verdict(lab: &Lab, iface: &str, verdict: &str) -> Result<u64> {
    let status = lab.status_json()?;
    status["dataplane"]["interfaces"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == iface))
        .and_then(|i| i["verdicts"][verdict]["packets"].as_u64())
        .with_context(|| format!("no {verdict} counter for {iface} in coresvc status"))
}

/// The kernel's IPv4 forwarding in the gateway (every interface): the
/// kernel rows' router. coresvc turns it on per interface while its
/// programs judge it and off when they go.
pub fn kernel_forwarding(lab: &Lab, on: bool) -> Result<()> {
    let v = if on { "net.ipv4.ip_forward=1" } else { "net.ipv4.ip_forward=0" };
    coresvc_lab::run(&mut lab.cmd(&lab.topo.gateway, ["sysctl", "-qw", v]))
}

/// `ip` on the gateway.
pub fn gw_ip(lab: &Lab, args: &[&str]) -> Result<()> {
    coresvc_lab::run(Command::new("ip").args(["-n", &lab.gw_ns()]).args(args))
}
