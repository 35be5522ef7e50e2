//! `cargo xtask bench nat`: 64-byte UDP frames from dvnt-client through the
//! gateway to the upstream node, masqueraded behind the uplink address and
//! counted by an XDP sink on the upstream's interface (which also counts
//! every frame that did not arrive translated), for (1) coresvc's NAT in the
//! fast path, (2) the kernel with nftables masquerade (coresvc stopped, its
//! programs detached), (3) the lab's limit: a bare XDP redirect without NAT.
//! Plus iperf3 TCP through (1) and (2). One lab, one run, one generator.

use std::time::Duration;

use anyhow::Result;
use coresvc_lab::AgentOpts;

use super::{
    BenchLab, Opts,
    forward::{Target, coresvc_row, counted, end_tool, gateway_tool, peer_row},
    isolation::{self, Flat},
    report::{Check, Ratio, Row, Section},
    traffic,
};
use crate::util::step;

const NFT_MASQUERADE: &str = "table ip bench_nat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname \"up0\" masquerade
  }
}
table inet bench_filter {
  counter out_udp {}
  counter out_tcp {}
  chain forward {
    type filter hook forward priority 0; policy drop;
    oifname \"up0\" udp dport 9 counter name out_udp accept
    oifname \"up0\" tcp dport 5201 counter name out_tcp accept
    ct state established,related accept
    iifname { \"mgmt0\", \"dvnt0\", \"dvntm0\" } oifname \"up0\" accept
  }
}
";

const TO_UPSTREAM: Target<'static> = Target { sink_node: "upstream", ping: "192.0.2.1", expect_src: Some("192.0.2.2") };

pub fn run(b: &BenchLab, o: &Opts) -> Result<Vec<Section>> {
    let mut lab = b.lab()?;
    // The example configuration masquerades every segment to the uplink.
    let cfg = super::config(&lab, "bench-nat.toml", |s| s)?;
    lab.start_agent(&AgentOpts::new(&cfg))?;
    let frame =
        traffic::udp64(traffic::mac(&lab, "gw", "dvnt0")?, traffic::mac(&lab, "dvnt-client", "eth0")?, "192.0.2.1");
    let secs = o.seconds;
    let ours_name = "coresvc NAT fast path (firewall + conntrack + NAT)";
    let kernel_name = "kernel + nftables masquerade (coresvc stopped)";
    let bare_name = "bare XDP redirect, no NAT (the lab's limit)";

    step("bench", "coresvc: masquerade in the XDP fast path");
    let gw_ifaces = [("dvnt0", "segment_ingress"), ("up0", "uplink_ingress")];
    let ours = coresvc_row(&lab, ours_name, &frame, &TO_UPSTREAM, o, &gw_ifaces)?;
    let before = traffic::coresvc_verdict(&lab, "dvnt0", "redirect")?;
    let tcp_ours = traffic::iperf(&lab, "upstream", "192.0.2.1", secs)?;
    let redirected = traffic::coresvc_verdict(&lab, "dvnt0", "redirect")? - before;
    let mut tcp_ours_row = Row::new("coresvc");
    tcp_ours_row.achieved = Some(tcp_ours / 1e9);
    tcp_ours_row.check(Check::that(redirected > 0, "the transfer took coresvc's fast path", || "no redirects".into()));
    tcp_ours_row.counts.push(format!("coresvc XDP redirects {redirected}"));

    step("bench", "kernel forwarding with nftables masquerade");
    lab.stop_agent(libc::SIGTERM, Duration::from_secs(10))?;
    lab.nft("gw", NFT_MASQUERADE)?;
    traffic::kernel_forwarding(&lab, true)?;
    let counter = |name: &str| traffic::nft_counter(&lab, "gw", "inet", "bench_filter", name);
    let before = counter("out_udp")?;
    let (mut kernel, delivered) = peer_row(&lab, kernel_name, &frame, &TO_UPSTREAM, o, &[])?;
    counted(&mut kernel, "nftables counter out_udp", counter("out_udp")? - before, delivered);
    let flat = Flat::start(&lab.paths.pin_dir)?;
    let before = counter("out_tcp")?;
    let tcp_kernel = traffic::iperf(&lab, "upstream", "192.0.2.1", secs)?;
    let mut tcp_kernel_row = Row::new("kernel + nftables masquerade (coresvc stopped)");
    tcp_kernel_row.checks = isolation::peer_checks(&lab, &[])?;
    tcp_kernel_row.check(flat.check());
    let n = counter("out_tcp")? - before;
    tcp_kernel_row.check(Check::that(n > 0, "nftables counted the transfer", || "out_tcp did not rise".into()));
    tcp_kernel_row.counts.push(format!("nftables out_tcp {n}"));
    tcp_kernel_row.achieved = Some(tcp_kernel / 1e9);
    coresvc_lab::run(&mut lab.cmd("gw", ["nft", "flush", "ruleset"]))?;

    step("bench", "bare XDP redirect, no NAT (the lab's limit)");
    let tool = gateway_tool(&lab, "bare redirect", "redirect", "bare_redirect", &["dvnt0", "up0"])?;
    let expect = [("gw", "dvnt0", "bare_redirect"), ("gw", "up0", "bare_redirect")];
    let untranslated = Target { expect_src: None, ..TO_UPSTREAM };
    let (mut bare, delivered) = peer_row(&lab, bare_name, &frame, &untranslated, o, &expect)?;
    let n = end_tool(&mut bare, tool);
    counted(&mut bare, "the bare redirect", n, delivered);
    // (bpf_fib_lookup, like the kernel, forwards only what arrives where forwarding is on.)
    traffic::kernel_forwarding(&lab, false)?;

    let mut pps = Section::new("nat", "NAT dvnt -> upstream, 64-byte UDP, delivered to an XDP sink", "pps");
    pps.generator = traffic::generator_text();
    pps.rows = vec![ours, kernel, bare];
    pps.ratios = vec![Ratio::noted(ours_name, bare_name, "target >= 0.90x"), Ratio::new(ours_name, kernel_name)];
    pps.notes.push(format!("{secs} s per row, one run; the bare redirect does not translate"));
    let mut tcp = Section::new("nat", "NAT dvnt -> upstream, iperf3 TCP (one stream)", "Gbit/s");
    tcp.generator = "iperf3 -c on dvnt-client (closed loop: no offered rate)".into();
    tcp.rows = vec![tcp_ours_row, tcp_kernel_row];
    tcp.ratios = vec![Ratio::noted("coresvc", "kernel + nftables masquerade (coresvc stopped)", "target >= 0.90x")];
    Ok(vec![pps, tcp])
}
