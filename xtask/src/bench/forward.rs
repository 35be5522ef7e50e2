//! `cargo xtask bench forward`: 64-byte UDP frames from dvnt-client through
//! the gateway to provisioner, counted by an XDP sink on provisioner's
//! interface, for (1) coresvc's fast path with the firewall and conntrack in
//! the path, (2) the kernel's forwarding with an equivalent nftables ruleset
//! (coresvc stopped, its programs detached), (3) the lab's limit: a bare XDP
//! program that only looks the route up, rewrites MACs, decrements the TTL
//! and redirects. Plus iperf3 TCP for (1) and (2). One lab, one run; the
//! generator is `devtool blast` (gen.rs).

use std::time::Duration;

use anyhow::Result;
use coresvc_lab::{AgentOpts, Lab};

use super::{
    BenchLab, Opts,
    isolation::{self, Flat, Tool},
    report::{Check, Ratio, Row, Section},
    traffic::{self, Flood},
};
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
  counter fwd_udp {}
  counter fwd_tcp {}
  chain forward {
    type filter hook forward priority 0; policy drop;
    ct state established,related tcp dport 5201 counter name fwd_tcp accept
    ct state established,related accept
    iifname \"dvnt0\" oifname \"mgmt0\" udp dport 9 counter name fwd_udp accept
    iifname \"dvnt0\" oifname \"mgmt0\" tcp dport 5201 accept
    iifname \"mgmt0\" accept
  }
}
";

/// Where a flood's frames go: the sink's node (its `eth0`), the address
/// pinged first (neighbour entries on both sides, so the first frames are
/// not queued), and the source every delivered frame must have, if any.
pub(super) struct Target<'a> {
    pub sink_node: &'a str,
    pub ping: &'a str,
    pub expect_src: Option<&'a str>,
}

const TO_PROVISIONER: Target<'static> = Target { sink_node: "provisioner", ping: "10.10.0.10", expect_src: None };

/// One flood into a row: offered, achieved and the generator's checks.
pub(super) fn flood_row(lab: &Lab, name: &str, frame: &[u8], t: &Target, o: &Opts) -> Result<(Row, Flood)> {
    let _ = lab.exec("dvnt-client", ["ping", "-c", "1", "-W", "1", t.ping]);
    let f = traffic::flood(lab, &[frame.to_vec()], t.sink_node, t.expect_src, o.seconds)?;
    let mut row = f.row(name);
    row.check(Check::that(f.count("packets") > 0, format!("frames delivered to {}", t.sink_node), || "none".into()));
    if let Some(src) = t.expect_src {
        let other = f.count("other_source");
        row.check(Check::that(other == 0, format!("every delivered frame from {src}"), || format!("{other} were not")));
    }
    Ok((row, f))
}

/// A coresvc row: its programs where they belong, and its fast path (XDP
/// redirects on `iface`) carrying at least every delivered frame.
pub(super) fn coresvc_row(
    lab: &Lab,
    name: &str,
    frame: &[u8],
    t: &Target,
    o: &Opts,
    gw_ifaces: &[(&str, &str)],
) -> Result<Row> {
    let mut checks = isolation::coresvc_present(&isolation::attached(lab)?, &lab.topo.gateway, gw_ifaces);
    let before = traffic::coresvc_verdict(lab, "dvnt0", "redirect")?;
    let (mut row, f) = flood_row(lab, name, frame, t, o)?;
    let redirected = traffic::coresvc_verdict(lab, "dvnt0", "redirect")? - before;
    let delivered = f.count("packets");
    checks.push(Check::that(redirected >= delivered, "every delivered frame redirected by coresvc's XDP", || {
        format!("{redirected} redirected, {delivered} delivered")
    }));
    row.checks.splice(0..0, checks);
    row.counts.push(format!("coresvc XDP redirects {redirected}"));
    Ok(row)
}

/// A peer's row: checked isolated before (`expect`: the peer's programs),
/// coresvc's counters flat through it. Returns it with the frames
/// delivered, for the peer's own counter ([`counted`]).
pub(super) fn peer_row(
    lab: &Lab,
    name: &str,
    frame: &[u8],
    t: &Target,
    o: &Opts,
    expect: &[(&str, &str, &str)],
) -> Result<(Row, u64)> {
    let mut checks = isolation::peer_checks(lab, expect)?;
    let flat = Flat::start(&lab.paths.pin_dir)?;
    let (mut row, f) = flood_row(lab, name, frame, t, o)?;
    checks.push(flat.check());
    row.checks.splice(0..0, checks);
    Ok((row, f.count("packets")))
}

/// The peer's own counter `who` rose by `counted`: at least every
/// delivered frame.
pub(super) fn counted(row: &mut Row, who: &str, counted: u64, delivered: u64) {
    row.check(Check::that(counted >= delivered, format!("{who} counted every delivered frame"), || {
        format!("{counted} counted, {delivered} delivered")
    }));
    row.counts.push(format!("{who} {counted}"));
}

/// A devtool (`redirect`, `reflect`) on the gateway: started, checked
/// attached on every interface of `ifaces` as `prog`.
pub(super) fn gateway_tool(lab: &Lab, what: &str, tool: &str, prog: &str, ifaces: &[&str]) -> Result<Tool> {
    let gw = lab.gw_ns();
    let mut args = vec![tool, "--netns", &gw];
    for i in ifaces {
        args.extend(["--iface", i]);
    }
    let mut t = Tool::devtool(lab, what, &args)?;
    t.wait_until(Duration::from_secs(10), || {
        isolation::attached(lab)
            .is_ok_and(|a| ifaces.iter().all(|i| isolation::present(&a, "gw", i, prog).failure.is_none()))
    })?;
    Ok(t)
}

/// Ends a gateway tool: checks it ran through the row and ended cleanly;
/// the frames it handled (its own counter).
pub(super) fn end_tool(row: &mut Row, mut tool: Tool) -> u64 {
    row.check(tool.alive());
    let (c, out) = tool.stop();
    row.check(c);
    match serde_json::from_str::<serde_json::Value>(out.trim()).ok().and_then(|v| v["handled"].as_u64()) {
        Some(n) => n,
        None => {
            row.check(Check::failed("the tool's own count", format!("it printed {out:?}")));
            0
        }
    }
}

pub fn run(b: &BenchLab, o: &Opts) -> Result<Vec<Section>> {
    let mut lab = b.lab()?;
    let cfg = super::config(&lab, "bench-forward.toml", |s| s + BENCH_RULES)?;
    lab.start_agent(&AgentOpts::new(&cfg))?;
    let frame =
        traffic::udp64(traffic::mac(&lab, "gw", "dvnt0")?, traffic::mac(&lab, "dvnt-client", "eth0")?, "10.10.0.10");
    let secs = o.seconds;
    let ours_name = "coresvc fast path (firewall + conntrack)";
    let kernel_name = "kernel + nftables (coresvc stopped)";
    let bare_name = "bare XDP redirect (the lab's limit)";
    let gw_ifaces = [("dvnt0", "segment_ingress"), ("mgmt0", "segment_ingress")];

    step("bench", "coresvc: firewall + conntrack + XDP fast path");
    let ours = coresvc_row(&lab, ours_name, &frame, &TO_PROVISIONER, o, &gw_ifaces)?;
    let tcp_before = traffic::coresvc_verdict(&lab, "dvnt0", "redirect")?;
    let tcp_ours = traffic::iperf(&lab, "provisioner", "10.10.0.10", secs)?;
    let mut tcp_ours_row = Row::new("coresvc");
    tcp_ours_row.achieved = Some(tcp_ours / 1e9);
    let redirected = traffic::coresvc_verdict(&lab, "dvnt0", "redirect")? - tcp_before;
    tcp_ours_row.check(Check::that(redirected > 0, "the transfer took coresvc's fast path", || "no redirects".into()));
    tcp_ours_row.counts.push(format!("coresvc XDP redirects {redirected}"));

    step("bench", "kernel forwarding with an equivalent nftables ruleset");
    lab.stop_agent(libc::SIGTERM, Duration::from_secs(10))?;
    lab.nft("gw", NFT_RULES)?;
    traffic::kernel_forwarding(&lab, true)?;
    let counter = |name: &'static str| {
        let lab = &lab;
        move || traffic::nft_counter(lab, "gw", "inet", "bench", name)
    };
    let before = counter("fwd_udp")()?;
    let (mut kernel, delivered) = peer_row(&lab, kernel_name, &frame, &TO_PROVISIONER, o, &[])?;
    counted(&mut kernel, "nftables counter fwd_udp", counter("fwd_udp")()? - before, delivered);
    let flat = Flat::start(&lab.paths.pin_dir)?;
    let tcp_before = counter("fwd_tcp")()?;
    let tcp_kernel = traffic::iperf(&lab, "provisioner", "10.10.0.10", secs)?;
    let mut tcp_kernel_row = Row::new("kernel + nftables (coresvc stopped)");
    tcp_kernel_row.checks = isolation::peer_checks(&lab, &[])?;
    tcp_kernel_row.check(flat.check());
    let tcp_counted = counter("fwd_tcp")()? - tcp_before;
    tcp_kernel_row
        .check(Check::that(tcp_counted > 0, "nftables counted the transfer", || "fwd_tcp did not rise".into()));
    tcp_kernel_row.counts.push(format!("nftables fwd_tcp {tcp_counted}"));
    tcp_kernel_row.achieved = Some(tcp_kernel / 1e9);
    coresvc_lab::run(&mut lab.cmd("gw", ["nft", "flush", "ruleset"]))?;

    step("bench", "bare XDP redirect (the lab's limit)");
    let tool = gateway_tool(&lab, "bare redirect", "redirect", "bare_redirect", &["dvnt0", "mgmt0"])?;
    let expect = [("gw", "dvnt0", "bare_redirect"), ("gw", "mgmt0", "bare_redirect")];
    let (mut bare, delivered) = peer_row(&lab, bare_name, &frame, &TO_PROVISIONER, o, &expect)?;
    let n = end_tool(&mut bare, tool);
    counted(&mut bare, "the bare redirect", n, delivered);
    // (bpf_fib_lookup, like the kernel, forwards only what arrives where forwarding is on.)
    traffic::kernel_forwarding(&lab, false)?;

    let mut pps = Section::new("forward", "Forwarding dvnt -> mgmt, 64-byte UDP, delivered to an XDP sink", "pps");
    pps.generator = traffic::generator_text();
    pps.rows = vec![ours, kernel, bare];
    pps.ratios = vec![Ratio::new(ours_name, bare_name), Ratio::new(ours_name, kernel_name)];
    pps.notes.push(format!("{secs} s per row, one run"));
    let mut tcp = Section::new("forward", "Forwarding dvnt -> mgmt, iperf3 TCP (one stream)", "Gbit/s");
    tcp.generator = "iperf3 -c on dvnt-client (closed loop: no offered rate)".into();
    tcp.rows = vec![tcp_ours_row, tcp_kernel_row];
    tcp.ratios = vec![Ratio::new("coresvc", "kernel + nftables (coresvc stopped)")];
    Ok(vec![pps, tcp])
}
