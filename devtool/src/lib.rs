//! `coresvc-devtool`: helpers for benchmarks and lab experiments, a binary
//! of its own (nothing of it ships in `coresvc`): a counting XDP sink, a bare XDP forwarder and a bare DNS
//! reflector (the lab's limits), a frame generator, which load the separate
//! `coresvc-devtools` object; and the data path's cost per packet, measured
//! with BPF_PROG_TEST_RUN on the data path's own object (nothing attached,
//! [`offline`]: the setup the progtest suites use too).
//!
//! The long-running tools (`redirect`, `reflect`) print one line to stderr
//! once their program is attached and, when SIGINT or SIGTERM ends them,
//! their counters as JSON on stdout; failures go to stderr and the exit
//! status, so a benchmark sees why a tool is not doing its job.

pub mod cost;
pub mod offline;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
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
        /// Seconds the sink stays attached after counting (still dropping):
        /// a veth whose XDP program goes while a flood fills its ring can be
        /// left with a full ring nothing drains.
        #[arg(long, default_value_t = 0.0)]
        linger: f64,
    },
    /// Forward with nothing but a FIB lookup, TTL decrement and redirect,
    /// until SIGINT/SIGTERM.
    Redirect {
        #[arg(long)]
        netns: Option<String>,
        #[arg(long, required = true)]
        iface: Vec<String>,
    },
    /// Send every DNS query (UDP to port 53) back with addresses and ports
    /// swapped (XDP_TX), until SIGINT/SIGTERM.
    Reflect {
        #[arg(long)]
        netns: Option<String>,
        #[arg(long)]
        iface: String,
    },
    /// Transmit frames out of an interface as fast as the kernel takes them
    /// (BPF_PROG_TEST_RUN's live-frames mode: each run sends the frame,
    /// batched, no copy through userspace), from several threads, each on
    /// its own CPU; print JSON (frames sent).
    Blast {
        #[arg(long)]
        netns: Option<String>,
        #[arg(long)]
        iface: String,
        /// A frame in hex (Ethernet header first); several are sent in turn.
        #[arg(long = "frame", required = true)]
        frames: Vec<String>,
        /// Threads, one per CPU (0, 1, ...).
        #[arg(long, default_value_t = 2)]
        threads: u32,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
    /// The data path's cost per packet in the program (BPF_PROG_TEST_RUN
    /// on the offline dataplane, in a network namespace of its own with
    /// stand-ins for the example configuration's interfaces); print JSON.
    ProgCost {
        /// The configuration (the example's topology: mgmt, dvnt, uplink).
        #[arg(long)]
        config: PathBuf,
        /// DNS questions, one `name TYPE` per line (kxdpgun's format).
        #[arg(long)]
        queries: Option<PathBuf>,
        /// What to measure (default: everything).
        #[arg(long = "case", value_enum)]
        cases: Vec<cost::Case>,
        /// User rule counts for the firewall case.
        #[arg(long = "rules", default_values_t = [1, 100, 1000])]
        rules: Vec<u32>,
        /// Runs per frame.
        #[arg(long, default_value_t = 20_000)]
        runs: u32,
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
    /// Of the packets from UDP port 53: DNS responses by rcode, and
    /// messages that are not responses (a reflector's).
    dns_noerror: u64,
    dns_nxdomain: u64,
    dns_other_rcode: u64,
    dns_not_response: u64,
}

/// What `redirect` and `reflect` did.
#[derive(Serialize)]
struct Handled {
    /// Frames redirected or reflected.
    handled: u64,
    /// Frames passed to the stack (not forwardable, not a DNS query).
    passed: u64,
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
    let attach_any = |p: &mut Xdp| p.attach(iface, XdpMode::Driver).or_else(|_| p.attach(iface, XdpMode::Skb));
    if attach_any(p).is_ok() {
        return Ok(());
    }
    // The lab's nodes run a pass program attached by netlink (for XDP_TX
    // frames from the gateway): a devtool takes the interface over.
    let off = std::process::Command::new("ip").args(["link", "set", "dev", iface, "xdp", "off"]).status();
    if !off.is_ok_and(|s| s.success()) {
        bail!(
            "attaching {prog} to {iface}: another XDP program is attached and `ip link set dev {iface} xdp off` failed"
        );
    }
    attach_any(p).with_context(|| format!("attaching {prog} to {iface}"))?;
    Ok(())
}

/// A per-CPU counter array of the devtools object, summed over CPUs.
fn totals<const N: usize>(ebpf: &Ebpf, name: &str) -> Result<[u64; N]> {
    let m: PerCpuArray<&MapData, [u64; N]> =
        PerCpuArray::try_from(ebpf.map(name).ok_or_else(|| anyhow!("no map {name}"))?)?;
    let mut sum = [0u64; N];
    for c in m.get(&0, 0)?.iter() {
        for (s, v) in sum.iter_mut().zip(c) {
            *s += v;
        }
    }
    Ok(sum)
}

fn handled(ebpf: &Ebpf) -> Result<()> {
    let [handled, passed] = totals::<2>(ebpf, "TOOL_COUNT")?;
    println!("{}", serde_json::to_string(&Handled { handled, passed })?);
    Ok(())
}

pub fn main(cmd: Devtool) -> Result<()> {
    let ns = match &cmd {
        Devtool::Sink { netns, .. }
        | Devtool::Redirect { netns, .. }
        | Devtool::Reflect { netns, .. }
        | Devtool::Blast { netns, .. } => netns.clone(),
        Devtool::ProgCost { .. } => None,
    };
    if let Some(ns) = ns {
        coresvc::netns::enter(&ns)?;
    }
    match cmd {
        Devtool::Sink { iface, warmup, seconds, expect_src, linger, .. } => {
            let mut ebpf = object(expect_src)?;
            attach(&mut ebpf, "sink", &iface)?;
            eprintln!("counting on {iface}");
            std::thread::sleep(Duration::from_secs_f64(warmup));
            let a = totals::<8>(&ebpf, "SINK_COUNT")?;
            let t0 = Instant::now();
            std::thread::sleep(Duration::from_secs_f64(seconds));
            let b = totals::<8>(&ebpf, "SINK_COUNT")?;
            let secs = t0.elapsed().as_secs_f64();
            let d = |i: usize| b[i] - a[i];
            let c = Count {
                packets: d(0),
                bytes: d(1),
                seconds: secs,
                pps: d(0) as f64 / secs,
                other_source: d(2),
                dns_noerror: d(3),
                dns_nxdomain: d(4),
                dns_other_rcode: d(5),
                dns_not_response: d(6),
            };
            std::thread::sleep(Duration::from_secs_f64(linger));
            println!("{}", serde_json::to_string(&c)?);
            Ok(())
        }
        Devtool::Redirect { iface, .. } => {
            let mut ebpf = object(None)?;
            for i in &iface {
                attach(&mut ebpf, "bare_redirect", i)?;
            }
            eprintln!("bare redirect on {}; Ctrl-C ends it", iface.join(", "));
            until_signal()?;
            handled(&ebpf)
        }
        Devtool::Reflect { iface, .. } => {
            let mut ebpf = object(None)?;
            attach(&mut ebpf, "reflect", &iface)?;
            eprintln!("reflecting DNS on {iface}; Ctrl-C ends it");
            until_signal()?;
            handled(&ebpf)
        }
        Devtool::Blast { iface, frames, threads, seconds, .. } => {
            let frames = frames.iter().map(|h| hex(h)).collect::<Result<Vec<_>>>()?;
            println!("{}", serde_json::to_string(&blast(&iface, &frames, threads, seconds)?)?);
            Ok(())
        }
        Devtool::ProgCost { config, queries, cases, rules, runs } => {
            fib_namespace()?;
            let cases = if cases.is_empty() {
                vec![cost::Case::Dns, cost::Case::Forward, cost::Case::Nat, cost::Case::Firewall]
            } else {
                cases
            };
            let c = cost::measure(&config, queries.as_deref(), &cases, &rules, runs)?;
            println!("{}", serde_json::to_string(&c)?);
            Ok(())
        }
    }
}

/// Moves this process (still one thread) into a new network namespace
/// with the stand-ins of [`offline::FIB`]; it ends with the process.
fn fib_namespace() -> Result<()> {
    // SAFETY: unshare(2) on the calling thread; no other thread exists yet.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        bail!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
    }
    for args in offline::fib_commands() {
        // Children inherit this thread's namespace.
        let out = std::process::Command::new("ip").args(&args).output().context("running ip")?;
        if !out.status.success() {
            bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
    }
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enabling forwarding in the namespace")?;
    Ok(())
}

fn hex(s: &str) -> Result<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        bail!("a frame in hex has an even number of digits: {s}");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).with_context(|| format!("not hex: {s}")))
        .collect()
}

#[derive(Serialize)]
struct Blasted {
    sent: u64,
    seconds: f64,
    pps: f64,
    threads: u32,
}

/// Frames handed to the interface per BPF_PROG_TEST_RUN call (and batch).
const BLAST_REPEAT: u32 = 1 << 14;
const BLAST_BATCH: u32 = 64;
/// The generator's frames: at most 16 of at most 128 bytes (the `tx`
/// program's `BLAST_FRAMES`).
const BLAST_MAX_FRAMES: usize = 16;
const BLAST_BYTES: usize = 128;

/// `threads` threads, thread `i` on CPU `i`, each sending `frames` in turn
/// out of `iface` for `seconds` with the `tx` program in live-frames mode
/// (which writes each frame itself: the kernel recycles its pages unwritten).
fn blast(iface: &str, frames: &[Vec<u8>], threads: u32, seconds: f64) -> Result<Blasted> {
    let ifindex = coresvc::dataplane::ifindex(iface).with_context(|| format!("no interface {iface}"))?;
    if frames.is_empty() || frames.len() > BLAST_MAX_FRAMES {
        bail!("1 to {BLAST_MAX_FRAMES} frames, not {}", frames.len());
    }
    let n = frames.len() as u32;
    let mut ebpf = aya::EbpfLoader::new()
        .override_global("BLAST_N", &n, true)
        .load(DEVTOOLS_OBJECT)
        .context("loading the devtools object")?;
    {
        let mut m: aya::maps::Array<&mut MapData, [u64; 1 + BLAST_BYTES / 8]> =
            aya::maps::Array::try_from(ebpf.map_mut("BLAST_FRAMES").ok_or_else(|| anyhow!("no map BLAST_FRAMES"))?)?;
        for (i, f) in frames.iter().enumerate() {
            if !(14..=BLAST_BYTES).contains(&f.len()) {
                bail!("a frame of {} bytes; the generator sends 14 to {BLAST_BYTES}", f.len());
            }
            let mut bytes = [0u8; BLAST_BYTES];
            bytes[..f.len()].copy_from_slice(f);
            let mut v = [0u64; 1 + BLAST_BYTES / 8];
            v[0] = f.len() as u64;
            for (w, c) in v[1..].iter_mut().zip(bytes.chunks(8)) {
                *w = u64::from_ne_bytes(c.try_into().expect("8 bytes"));
            }
            m.set(i as u32, v, 0)?;
        }
    }
    let tx: &mut Xdp = ebpf.program_mut("tx").ok_or_else(|| anyhow!("no program tx"))?.try_into()?;
    tx.load()?;
    let tx: &Xdp = ebpf.program("tx").ok_or_else(|| anyhow!("no program tx"))?.try_into()?;
    // The program writes every frame over this one.
    let template = [0u8; BLAST_BYTES];
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let sent = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|cpu| {
                s.spawn(move || -> Result<u64> {
                    pin_to_cpu(cpu)?;
                    let mut sent = 0u64;
                    let ctx = offline::xdp_md(template.len(), ifindex);
                    while Instant::now() < until {
                        let mut o = TestRunOptions::new();
                        o.data_in = Some(&template);
                        o.ctx_in = Some(&ctx);
                        o.repeat = BLAST_REPEAT;
                        o.attrs = TestRunAttrs::new().xdp_live_frames(BLAST_BATCH);
                        tx.test_run(o).context("BPF_PROG_TEST_RUN (live frames)")?;
                        sent += u64::from(BLAST_REPEAT);
                    }
                    Ok(sent)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().map_err(|_| anyhow!("a sender thread panicked"))?).sum::<Result<u64>>()
    })?;
    let secs = start.elapsed().as_secs_f64();
    Ok(Blasted { sent, seconds: secs, pps: sent as f64 / secs, threads })
}

fn pin_to_cpu(cpu: u32) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; sched_setaffinity on this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!("pinning a sender to CPU {cpu}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Waits for SIGINT or SIGTERM (the attached programs stay until then).
fn until_signal() -> Result<()> {
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
