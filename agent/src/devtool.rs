//! `coresvc devtool`: helpers for benchmarks and lab experiments (hidden
//! from `--help`): a counting XDP sink and a bare XDP forwarder (the lab's
//! limit). They load the separate `coresvc-devtools` object, never the
//! data path's.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
    programs::{Xdp, XdpMode},
};
use clap::Subcommand;
use serde::Serialize;

/// The helper programs built by `build.rs`.
static DEVTOOLS_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/coresvc-devtools"));

#[derive(Subcommand, Debug)]
pub enum Devtool {
    /// Count (and drop) every frame arriving on an interface; print JSON.
    Sink {
        #[arg(long)]
        netns: Option<String>,
        #[arg(long)]
        iface: String,
        /// Seconds before counting starts.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// Seconds counted.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Also count the packets whose source is not this address.
        #[arg(long)]
        expect_src: Option<std::net::Ipv4Addr>,
    },
    /// Forward with nothing but a FIB lookup, TTL decrement and redirect,
    /// until SIGINT/SIGTERM.
    Redirect {
        #[arg(long)]
        netns: Option<String>,
        #[arg(long, required = true)]
        iface: Vec<String>,
    },
}

#[derive(Serialize)]
struct Count {
    packets: u64,
    bytes: u64,
    seconds: f64,
    pps: f64,
    /// Counted packets from another source than `--expect-src`.
    other_source: u64,
}

fn object(expect_src: Option<std::net::Ipv4Addr>) -> Result<Ebpf> {
    let src = expect_src.map(|a| a.octets()).unwrap_or([0; 4]);
    aya::EbpfLoader::new()
        .override_global("SINK_EXPECT_SRC", &src, false)
        .load(DEVTOOLS_OBJECT)
        .context("loading the devtools object")
}

fn attach(ebpf: &mut Ebpf, prog: &str, iface: &str) -> Result<()> {
    let p: &mut Xdp = ebpf.program_mut(prog).ok_or_else(|| anyhow!("no program {prog}"))?.try_into()?;
    if p.fd().is_err() {
        p.load()?;
    }
    if p.attach(iface, XdpMode::Driver).is_err() {
        p.attach(iface, XdpMode::Skb).with_context(|| format!("attaching {prog} to {iface}"))?;
    }
    Ok(())
}

fn sink_total(ebpf: &Ebpf) -> Result<(u64, u64, u64)> {
    let m: PerCpuArray<&MapData, [u64; 3]> =
        PerCpuArray::try_from(ebpf.map("SINK_COUNT").ok_or_else(|| anyhow!("no map"))?)?;
    let v = m.get(&0, 0)?;
    Ok(v.iter().fold((0, 0, 0), |(p, b, o), c| (p + c[0], b + c[1], o + c[2])))
}

pub fn main(cmd: Devtool) -> Result<()> {
    let ns = match &cmd {
        Devtool::Sink { netns, .. } | Devtool::Redirect { netns, .. } => netns.clone(),
    };
    if let Some(ns) = ns {
        crate::netns::enter(&ns)?;
    }
    match cmd {
        Devtool::Sink { iface, warmup, seconds, expect_src, .. } => {
            let mut ebpf = object(expect_src)?;
            attach(&mut ebpf, "sink", &iface)?;
            std::thread::sleep(Duration::from_secs_f64(warmup));
            let (p0, b0, o0) = sink_total(&ebpf)?;
            let t0 = Instant::now();
            std::thread::sleep(Duration::from_secs_f64(seconds));
            let (p1, b1, o1) = sink_total(&ebpf)?;
            let secs = t0.elapsed().as_secs_f64();
            let c = Count {
                packets: p1 - p0,
                bytes: b1 - b0,
                seconds: secs,
                pps: (p1 - p0) as f64 / secs,
                other_source: o1 - o0,
            };
            println!("{}", serde_json::to_string(&c)?);
            Ok(())
        }
        Devtool::Redirect { iface, .. } => {
            let mut ebpf = object(None)?;
            for i in &iface {
                attach(&mut ebpf, "bare_redirect", i)?;
            }
            eprintln!("bare redirect on {}; Ctrl-C ends it", iface.join(", "));
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                anyhow::Ok(())
            })
        }
    }
}
