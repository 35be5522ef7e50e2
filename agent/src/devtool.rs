//! `coresvc devtool`: helpers for benchmarks and lab experiments (hidden
//! from `--help`): a counting XDP sink, a bare XDP forwarder and a bare DNS
//! reflector (the lab's limits), which load the separate `coresvc-devtools`
//! object; and the DNS answer cache's cost per answer, measured with
//! BPF_PROG_TEST_RUN on the data path's own object (nothing attached).

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp, XdpMode},
};
use clap::Subcommand;
use coresvc_maps_schema::{self as schema, IfaceInfo, ROLE_SEGMENT, Settings};
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
    /// Send every UDP frame to port 53 back with addresses and ports
    /// swapped (XDP_TX), until SIGINT/SIGTERM.
    Reflect {
        #[arg(long)]
        netns: Option<String>,
        #[arg(long)]
        iface: String,
    },
    /// The segment program's cost per DNS answer from the cache (and per
    /// query passed on with the cache off, the reflector's per frame
    /// and an empty program's), from BPF_PROG_TEST_RUN, one run per call
    /// (medians); print JSON.
    DnsCost {
        #[arg(long)]
        netns: Option<String>,
        /// The configuration whose zones answer (its first segment asks).
        #[arg(long)]
        config: PathBuf,
        /// Questions, one `name TYPE` per line (kxdpgun's format).
        #[arg(long)]
        queries: PathBuf,
        /// Runs per question.
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

fn sink_total(ebpf: &Ebpf) -> Result<(u64, u64, u64)> {
    let m: PerCpuArray<&MapData, [u64; 3]> =
        PerCpuArray::try_from(ebpf.map("SINK_COUNT").ok_or_else(|| anyhow!("no map"))?)?;
    let v = m.get(&0, 0)?;
    Ok(v.iter().fold((0, 0, 0), |(p, b, o), c| (p + c[0], b + c[1], o + c[2])))
}

pub fn main(cmd: Devtool) -> Result<()> {
    let ns = match &cmd {
        Devtool::Sink { netns, .. }
        | Devtool::Redirect { netns, .. }
        | Devtool::Reflect { netns, .. }
        | Devtool::DnsCost { netns, .. } => netns.clone(),
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
            until_signal()
        }
        Devtool::Reflect { iface, .. } => {
            let mut ebpf = object(None)?;
            attach(&mut ebpf, "reflect", &iface)?;
            eprintln!("reflecting DNS on {iface}; Ctrl-C ends it");
            until_signal()
        }
        Devtool::DnsCost { config, queries, runs, .. } => {
            println!("{}", serde_json::to_string(&dns_cost(&config, &queries, runs)?)?);
            Ok(())
        }
    }
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

#[derive(Serialize)]
struct DnsCost {
    /// Program runs per question.
    runs: u32,
    /// Nanoseconds per answer from the cache (XDP_TX): median and mean.
    answer_ns_median: f64,
    answer_ns_mean: f64,
    /// The same queries with the cache off: the segment program's work to
    /// hand them to the stack (firewall included).
    pass_ns_median: f64,
    /// The bare reflector's nanoseconds per frame, measured the same way.
    reflect_ns_median: f64,
    /// An empty program (XDP_PASS) measured the same way: the part of every
    /// figure above that is the measurement's own (clock reads).
    empty_ns_median: f64,
    /// Per question: (name, type, median ns per answer).
    questions: Vec<(String, String, f64)>,
}

/// XDP verdicts (`enum xdp_action`).
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

/// Median and mean of `v` (ns).
fn stats(mut v: Vec<u64>) -> (f64, f64) {
    v.sort_unstable();
    let median = v.get(v.len() / 2).copied().unwrap_or(0) as f64;
    let mean = v.iter().sum::<u64>() as f64 / v.len().max(1) as f64;
    (median, mean)
}

/// An Ethernet + IPv4 + UDP frame to port 53 (checksums complete).
fn udp_frame(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, msg: &[u8]) -> Vec<u8> {
    let mut f = vec![0; coresvc_common::dns::FRAME_DNS + msg.len()];
    let n = coresvc_common::dns::query_frame(&mut f, src.octets(), dst.octets(), sport, msg);
    f.truncate(n.unwrap_or(0));
    f
}

fn map<'e>(e: &'e mut Ebpf, m: &schema::MapSpec) -> Result<&'e mut aya::maps::Map> {
    e.map_mut(m.name).ok_or_else(|| anyhow!("no map {}", m.name))
}

/// Runs `prog` on `frame` `runs` times, one run per call; the durations
/// (ns), each run's verdict checked against `want`.
///
/// Not BPF_PROG_TEST_RUN's `repeat`: its runs share one buffer, so every
/// run after the first would see the answer the first one wrote (the
/// segment program then passes it) instead of the query. A single run's
/// duration includes the kernel's two clock reads around it; the empty
/// program's median (`DnsCost::empty_ns_median`) is that share.
fn time_runs(prog: &mut Xdp, frame: &[u8], runs: u32, want: u32) -> Result<Vec<u64>> {
    let mut out = vec![0u8; frame.len() + 2048];
    let mut v = Vec::with_capacity(runs as usize);
    for _ in 0..runs {
        let mut o = TestRunOptions::new();
        o.data_in = Some(frame);
        o.data_out = Some(&mut out);
        let r = prog.test_run(o).context("BPF_PROG_TEST_RUN")?;
        if r.return_value != want {
            bail!("verdict {} where {want} was expected", r.return_value);
        }
        v.push(r.duration.as_nanos() as u64);
    }
    Ok(v)
}

/// The segment program on loopback, configured as the agent would for the
/// configuration's first segment, its cache filled by the DNS service.
fn dns_cost(config: &Path, queries: &Path, runs: u32) -> Result<DnsCost> {
    use crate::{
        config::Config,
        dataplane::{self, rules},
        dns::{
            Dns,
            handler::{Step, Transport},
            xdp::XdpCache,
        },
    };
    use hickory_proto::{
        op::{Message, MessageType, OpCode, Query},
        rr::{Name, RecordType},
    };
    let mut cfg = Config::load(config)?;
    let state = std::env::temp_dir().join(format!("coresvc-dns-cost-{}", std::process::id()));
    std::fs::create_dir_all(&state)?;
    cfg.agent.state_dir = state.clone();
    let seg = cfg.segments.first().ok_or_else(|| anyhow!("{} has no segment", config.display()))?.clone();
    let client = seg.cidr.hosts().find(|a| *a != seg.gateway && Some(*a) != seg.reserved).context("no host")?;
    let mut ebpf = dataplane::load(None, aya_log::Level::Error, 1024)?;
    let lo = dataplane::ifindex("lo").context("no loopback")?;
    let flags = schema::SETTINGS_F_DROP_INVALID_IPV4
        | schema::SETTINGS_F_FIREWALL
        | schema::SETTINGS_F_FAST_FORWARD
        | schema::SETTINGS_F_DNS_CACHE;
    let mut settings: Array<&mut MapData, Settings> = Array::try_from(map(&mut ebpf, &schema::SETTINGS)?)?;
    settings.set(0, Settings { schema_version: schema::SCHEMA_VERSION, flags, ..Default::default() }, 0)?;
    let info = IfaceInfo {
        role: ROLE_SEGMENT,
        segment: 0,
        ipv4: seg.gateway.octets(),
        prefix_len: seg.cidr.prefix_len(),
        ..Default::default()
    };
    dataplane::set_iface(&mut ebpf, lo, info)?;
    let mut local: BpfHashMap<&mut MapData, [u8; 4], u32> =
        BpfHashMap::try_from(map(&mut ebpf, &schema::LOCAL_ADDRS)?)?;
    local.insert(seg.gateway.octets(), lo, 0)?;
    rules::install(&mut ebpf, &rules::compile(&cfg)?)?;
    let take = |e: &mut Ebpf, m: &schema::MapSpec| e.take_map(m.name).ok_or_else(|| anyhow!("no map {}", m.name));
    let xdp = XdpCache::from_maps(take(&mut ebpf, &schema::DNS_CACHE)?, take(&mut ebpf, &schema::DNS_EPOCHS)?, true)?;
    let dns = Dns::new(&cfg)?;
    dns.attach_xdp(Arc::new(xdp))?;
    let mut frames = Vec::new();
    for line in std::fs::read_to_string(queries)?.lines().filter(|l| !l.trim().is_empty()) {
        let mut w = line.split_whitespace();
        let (name, t) = (w.next().unwrap_or_default(), w.next().unwrap_or("A"));
        let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        let rtype: RecordType = t.parse().map_err(|e| anyhow!("{t}: {e}"))?;
        m.add_query(Query::query(Name::from_ascii(name)?, rtype));
        let payload = m.to_vec()?;
        // The agent answers once: that fills the cache.
        match dns.resolver.handle(&payload, IpAddr::V4(client), Transport::Udp) {
            Step::Reply(_) => {}
            _ => bail!("{name} {t} is not answered from local data"),
        }
        frames.push((name.to_string(), t.to_string(), udp_frame(client, seg.gateway, 40000, &payload)));
    }
    let prog: &mut Xdp =
        ebpf.program_mut(schema::programs::SEGMENT_INGRESS).ok_or_else(|| anyhow!("no segment program"))?.try_into()?;
    let (mut answers, mut questions) = (Vec::new(), Vec::new());
    for (name, t, f) in &frames {
        let v = time_runs(prog, f, runs, XDP_TX)?;
        questions.push((name.clone(), t.clone(), stats(v.clone()).0));
        answers.extend(v);
    }
    let mut settings: Array<&mut MapData, Settings> = Array::try_from(map(&mut ebpf, &schema::SETTINGS)?)?;
    settings.set(0, Settings { flags: flags & !schema::SETTINGS_F_DNS_CACHE, ..settings.get(&0, 0)? }, 0)?;
    let prog: &mut Xdp =
        ebpf.program_mut(schema::programs::SEGMENT_INGRESS).ok_or_else(|| anyhow!("no segment program"))?.try_into()?;
    let mut passes = Vec::new();
    for (_, _, f) in &frames {
        passes.extend(time_runs(prog, f, runs, XDP_PASS)?);
    }
    let mut tools = object(None)?;
    let reflect: &mut Xdp = tools.program_mut("reflect").ok_or_else(|| anyhow!("no reflect program"))?.try_into()?;
    reflect.load()?;
    let mut reflected = Vec::new();
    for (_, _, f) in &frames {
        reflected.extend(time_runs(reflect, f, runs, XDP_TX)?);
    }
    let empty: &mut Xdp = tools.program_mut("pass").ok_or_else(|| anyhow!("no pass program"))?.try_into()?;
    empty.load()?;
    let mut nothing = Vec::new();
    for (_, _, f) in &frames {
        nothing.extend(time_runs(empty, f, runs, XDP_PASS)?);
    }
    let _ = std::fs::remove_dir_all(&state);
    let (answer_ns_median, answer_ns_mean) = stats(answers);
    Ok(DnsCost {
        runs,
        answer_ns_median,
        answer_ns_mean,
        pass_ns_median: stats(passes).0,
        reflect_ns_median: stats(reflected).0,
        empty_ns_median: stats(nothing).0,
        questions,
    })
}
