//! `cargo xtask bench nat`: 64-byte UDP frames from dvnt-client through the
//! gateway to the upstream node, masqueraded behind the uplink address and
//! counted by an XDP sink on the upstream's interface (which also checks
//! that every frame arrived translated), for (1) coresvc's NAT in the fast
//! path, (2) the kernel with nftables masquerade, (3) the lab's limit: a
//! bare XDP redirect without NAT. Plus iperf3 TCP through (1) and (2). One
//! lab, one run, one generator (trafgen on one CPU).

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Result, bail};
use coresvc_lab::AgentOpts;

use super::{
    BenchLab,
    forward::{Bg, Measured, Target, ensure_fast_path, frame, iperf, mac, measure},
    ratio,
};
use crate::util::step;

const NFT_MASQUERADE: &str = "table ip bench_nat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname \"up0\" masquerade
  }
}
table inet bench_filter {
  chain forward {
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    iifname { \"mgmt0\", \"dvnt0\", \"dvntm0\" } oifname \"up0\" accept
  }
}
";

const TO_UPSTREAM: Target<'static> = Target { sink_node: "upstream", ping: "192.0.2.1", expect_src: Some("192.0.2.2") };

fn check_translated(what: &str, m: &Measured) -> Result<()> {
    if m.other_source > 0 {
        bail!("{what}: {} of the delivered packets were not translated to 192.0.2.2", m.other_source);
    }
    Ok(())
}

pub fn run(b: &BenchLab, seconds: u64) -> Result<()> {
    let mut lab = b.lab()?;
    // The example configuration masquerades every segment to the uplink.
    let cfg = lab.config_with("bench-nat.toml", |s| s)?;
    lab.start_agent(&AgentOpts::new(&cfg))?;
    let f = frame(mac(&lab, "gw", "dvnt0")?, mac(&lab, "dvnt-client", "eth0")?, "192.0.2.1");

    step("bench", "coresvc: masquerade in the XDP fast path (firewall + conntrack + NAT)");
    let ours = measure(&lab, &f, seconds, &TO_UPSTREAM)?;
    check_translated("coresvc", &ours)?;
    ensure_fast_path(&lab, &format!("{:.0} pps delivered", ours.pps))?;
    let tcp_ours = iperf(&lab, "upstream", "192.0.2.1", seconds)?;

    step("bench", "kernel forwarding with nftables masquerade");
    lab.stop_agent(libc::SIGTERM, Duration::from_secs(10))?;
    let nft = lab.write_file("bench-nat.nft", NFT_MASQUERADE)?;
    coresvc_lab::run(lab.cmd("gw", ["nft", "-f"]).arg(&nft))?;
    let kernel = measure(&lab, &f, seconds, &TO_UPSTREAM);
    let tcp_kernel = kernel.as_ref().ok().map(|_| iperf(&lab, "upstream", "192.0.2.1", seconds));
    coresvc_lab::run(&mut lab.cmd("gw", ["nft", "flush", "ruleset"]))?;
    let kernel = kernel?;
    check_translated("nftables", &kernel)?;
    let tcp_kernel = tcp_kernel.expect("measured")?;

    step("bench", "bare XDP redirect, no NAT (the lab's limit)");
    let redirect = Bg(Command::new(coresvc_lab::agent_bin()?)
        .args(["devtool", "redirect", "--netns", &lab.gw_ns(), "--iface", "dvnt0", "--iface", "up0"])
        .stderr(Stdio::null())
        .spawn()?);
    std::thread::sleep(Duration::from_millis(500));
    let bare = measure(&lab, &f, seconds, &Target { expect_src: None, ..TO_UPSTREAM })?;
    drop(redirect);

    println!("\nNAT dvnt -> upstream, 64-byte UDP, delivered to an XDP sink ({seconds} s each, one run):");
    println!(
        "  generator offered              {:>10.0} / {:>10.0} / {:>10.0} pps",
        ours.offered, kernel.offered, bare.offered
    );
    println!("  coresvc NAT fast path          {:>10.0} pps (all from 192.0.2.2)", ours.pps);
    println!("  kernel + nftables masquerade   {:>10.0} pps (all from 192.0.2.2)", kernel.pps);
    println!("  bare XDP redirect (limit)      {:>10.0} pps (untranslated)", bare.pps);
    println!("  coresvc / bare redirect        {:>10}   (target >= 0.90x)", ratio(ours.pps, bare.pps));
    println!("  coresvc / nftables masquerade  {:>10}", ratio(ours.pps, kernel.pps));
    println!("TCP, iperf3 dvnt-client -> upstream through the NAT ({seconds} s):");
    println!("  coresvc                        {:>10.2} Gbit/s", tcp_ours / 1e9);
    println!("  kernel + nftables masquerade   {:>10.2} Gbit/s", tcp_kernel / 1e9);
    println!("  coresvc / nftables             {:>10}   (target >= 0.90x)", ratio(tcp_ours, tcp_kernel));
    Ok(())
}
