//! `coresvc-devtool prog-cost`: what the data path costs per packet in the
//! program itself, from BPF_PROG_TEST_RUN on the offline dataplane
//! ([`crate::offline`]): no generator, link or stack in the figure.
//!
//! Each row is the median of single runs (`repeat` would run the program
//! again on the frame its previous run wrote: the DNS answer, a decremented
//! TTL), every run's verdict checked and the first run's output checked
//! against what the path must produce. A single run's duration includes
//! the kernel's clock reads around it; an empty program's median is that
//! share (`empty_ns`), reported beside every row.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{Ebpf, programs::Xdp};
use coresvc_common::{checksum, conntrack as ct, dns::FRAME_DNS};
use coresvc_maps_schema::{self as schema, ROLE_SEGMENT, ROLE_UPLINK};
use serde::Serialize;

use crate::offline::{self, FIB, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX};
use coresvc::config::Config;

/// What `prog-cost` measures.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    /// An answer from the XDP DNS cache, a query passed on with the cache
    /// off, the bare reflector.
    Dns,
    /// An established TCP flow forwarded by the fast path (dvnt -> mgmt).
    Forward,
    /// An established masqueraded TCP flow (dvnt -> uplink), fast path.
    Nat,
    /// A new flow judged after N user rules (none matches; the default
    /// denies), for each `--rules N`.
    Firewall,
}

#[derive(Serialize)]
pub struct Cost {
    /// Runs per frame.
    pub runs: u32,
    /// An empty program (XDP_PASS), measured the same way: the part of
    /// every figure that is the measurement's own.
    pub empty_ns: f64,
    pub rows: Vec<Row>,
}

#[derive(Serialize)]
pub struct Row {
    pub case: &'static str,
    pub name: String,
    /// Median ns per run (all frames of the row together); none when the
    /// row cannot run.
    pub ns_median: Option<f64>,
    /// Distinct frames measured.
    pub frames: usize,
    /// The verdict every run returned.
    pub verdict: &'static str,
    /// What was checked in the output.
    pub checked: String,
    /// Why the row cannot run (e.g. more rules than a bank holds).
    pub cannot_run: Option<String>,
}

fn verdict_name(v: u32) -> &'static str {
    schema::VERDICT_NAMES.get(v as usize).copied().unwrap_or("?")
}

/// The example topology's interfaces in this namespace: (mgmt, dvnt, up).
fn stand_ins() -> Result<(u32, u32, u32)> {
    let idx =
        |n: &str| coresvc::dataplane::ifindex(n).with_context(|| format!("no interface {n}: not in a FIB namespace"));
    Ok((idx(FIB[0].name)?, idx(FIB[1].name)?, idx(FIB[2].name)?))
}

/// The programs configured for `cfg` on the stand-ins, as the agent would
/// for the example configuration (mgmt segment 0, dvnt segment 1, uplink).
fn dataplane(cfg: &Config, flags: u32) -> Result<Ebpf> {
    let (mgmt, dvnt, up) = stand_ins()?;
    offline::configure(
        cfg,
        1024,
        flags,
        &[
            (mgmt, offline::stand_in_entry(&FIB[0], ROLE_SEGMENT, 0, 1)),
            (dvnt, offline::stand_in_entry(&FIB[1], ROLE_SEGMENT, 1, 2)),
            (up, offline::stand_in_entry(&FIB[2], ROLE_UPLINK, 0, 3)),
        ],
    )
}

/// Runs `prog` on `frame` (arriving on `ifindex`) `runs` times, one run
/// per call: each run's duration (ns); every verdict must be `want`.
fn time_runs(prog: &Xdp, ifindex: u32, frame: &[u8], runs: u32, want: u32) -> Result<Vec<u64>> {
    let mut v = Vec::with_capacity(runs as usize);
    for _ in 0..runs {
        let (verdict, _, ns) = offline::run_xdp(prog, ifindex, frame)?;
        if verdict != want {
            bail!("verdict {} where {} was expected", verdict_name(verdict), verdict_name(want));
        }
        v.push(ns);
    }
    Ok(v)
}

fn median(mut v: Vec<u64>) -> f64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0) as f64
}

/// An Ethernet + IPv4 frame carrying `l4` (protocol `proto`, its checksum
/// field at `csum` within it filled in), padded to 60 bytes.
fn ipv4_frame(
    macs: ([u8; 6], [u8; 6]),
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    mut l4: Vec<u8>,
    csum: usize,
) -> Vec<u8> {
    let mut f = vec![0u8; 34];
    f[0..6].copy_from_slice(&macs.1);
    f[6..12].copy_from_slice(&macs.0);
    f[12..14].copy_from_slice(&[8, 0]);
    f[14..24].copy_from_slice(&[0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto]);
    f[16..18].copy_from_slice(&(20 + l4.len() as u16).to_be_bytes());
    f[26..30].copy_from_slice(&src);
    f[30..34].copy_from_slice(&dst);
    let c = checksum::checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    let sum = checksum::add_bytes(0, &f[26..34]) + u32::from(proto) + l4.len() as u32;
    let c = !checksum::fold(checksum::add_bytes(sum, &l4));
    l4[csum..csum + 2].copy_from_slice(&(if c == 0 && proto == 17 { 0xffff } else { c }).to_be_bytes());
    f.extend(l4);
    f.resize(f.len().max(60), 0);
    f
}

/// A TCP segment (no options, no payload) in a frame.
fn tcp_frame(macs: ([u8; 6], [u8; 6]), src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, flags: u8) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&1u32.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    ipv4_frame(macs, src, dst, 6, t, 16)
}

/// A MAC the gateway's interfaces are given in frames to it.
const GW_MAC: [u8; 6] = [0x02, 0xff, 0, 0, 0, 1];

/// Every case asked for, in order.
pub fn measure(
    config: &std::path::Path,
    queries: Option<&std::path::Path>,
    cases: &[Case],
    rules: &[u32],
    runs: u32,
) -> Result<Cost> {
    let cfg = Config::load(config)?;
    let mut tools = crate::object(None)?;
    for p in ["pass", "reflect"] {
        let x: &mut Xdp = tools.program_mut(p).ok_or_else(|| anyhow!("no program {p}"))?.try_into()?;
        x.load()?;
    }
    let (_, dvnt, _) = stand_ins()?;
    let mut rows = Vec::new();
    let mut empty_frames: Vec<Vec<u8>> = Vec::new();
    for case in cases {
        match case {
            Case::Dns => {
                let q = queries.context("the dns case needs --queries")?;
                rows.extend(dns(&cfg, q, &tools, runs, &mut empty_frames)?);
            }
            Case::Forward => rows.push(forward(&cfg, runs, &mut empty_frames)?),
            Case::Nat => rows.push(nat(&cfg, runs, &mut empty_frames)?),
            Case::Firewall => {
                for &n in rules {
                    rows.push(firewall(&cfg, n, runs, &mut empty_frames)?);
                }
            }
        }
    }
    let empty = offline::xdp_prog(&tools, "pass")?;
    let mut nothing = Vec::new();
    for f in &empty_frames {
        nothing.extend(time_runs(empty, dvnt, f, runs, XDP_PASS)?);
    }
    Ok(Cost { runs, empty_ns: median(nothing), rows })
}

fn dns(cfg: &Config, queries: &std::path::Path, tools: &Ebpf, runs: u32, seen: &mut Vec<Vec<u8>>) -> Result<Vec<Row>> {
    use hickory_proto::{
        op::{Message, MessageType, OpCode, Query},
        rr::{Name, RecordType},
    };

    use coresvc::dns::handler::{Step, Transport};
    let mut cfg = cfg.clone();
    let state = std::env::temp_dir().join(format!("coresvc-prog-cost-{}", std::process::id()));
    std::fs::create_dir_all(&state)?;
    cfg.agent.state_dir = state.clone();
    let (_, dvnt, _) = stand_ins()?;
    let mut ebpf = dataplane(&cfg, offline::FLAGS | schema::SETTINGS_F_DNS_CACHE)?;
    let service = offline::dns_service(&mut ebpf, &cfg)?;
    let (client, gw) = (Ipv4Addr::from(FIB[1].neighbour), Ipv4Addr::from(FIB[1].addr));
    // (question, frame, the agent's reply)
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
        let reply = match service.resolver.handle(&payload, IpAddr::V4(client), Transport::Udp) {
            Step::Reply(r) => r,
            _ => bail!("{name} {t} is not answered from local data"),
        };
        let mut f = vec![0; FRAME_DNS + payload.len()];
        let n = coresvc_common::dns::query_frame(&mut f, client.octets(), gw.octets(), 40000, &payload);
        f.truncate(n.unwrap_or(0));
        frames.push((format!("{name} {t}"), f, reply));
    }
    let prog = offline::xdp_prog(&ebpf, schema::programs::SEGMENT_INGRESS)?;
    let mut answers = Vec::new();
    for (q, f, reply) in &frames {
        let (v, out, _) = offline::run_xdp(prog, dvnt, f)?;
        // The answer's header (flags and counts) is the agent's, its ID the query's.
        if v != XDP_TX
            || out.get(FRAME_DNS..FRAME_DNS + 2) != f.get(FRAME_DNS..FRAME_DNS + 2)
            || out.get(FRAME_DNS + 2..FRAME_DNS + 12) != reply.get(2..12)
        {
            bail!("{q}: the XDP cache did not answer as the agent does (verdict {})", verdict_name(v));
        }
        answers.extend(time_runs(prog, dvnt, f, runs, XDP_TX)?);
    }
    offline::set_flag(&mut ebpf, schema::SETTINGS_F_DNS_CACHE, false)?;
    let prog = offline::xdp_prog(&ebpf, schema::programs::SEGMENT_INGRESS)?;
    let mut passes = Vec::new();
    for (q, f, _) in &frames {
        let (v, out, _) = offline::run_xdp(prog, dvnt, f)?;
        if v != XDP_PASS || out != *f {
            bail!("{q}: with the cache off the query was not passed on untouched ({})", verdict_name(v));
        }
        passes.extend(time_runs(prog, dvnt, f, runs, XDP_PASS)?);
    }
    let reflect = offline::xdp_prog(tools, "reflect")?;
    let mut reflected = Vec::new();
    for (q, f, _) in &frames {
        let (v, out, _) = offline::run_xdp(reflect, dvnt, f)?;
        if v != XDP_TX || out[34..36] != f[36..38] || out[FRAME_DNS..] != f[FRAME_DNS..] {
            bail!("{q}: the reflector did not send the query back with its ports swapped");
        }
        reflected.extend(time_runs(reflect, dvnt, f, runs, XDP_TX)?);
    }
    let _ = std::fs::remove_dir_all(&state);
    seen.extend(frames.iter().map(|(_, f, _)| f.clone()));
    let n = frames.len();
    let row = |name: &str, v: Vec<u64>, verdict: u32, checked: &str| Row {
        case: "dns",
        name: name.into(),
        ns_median: Some(median(v)),
        frames: n,
        verdict: verdict_name(verdict),
        checked: checked.into(),
        cannot_run: None,
    };
    Ok(vec![
        row("DNS answer from the XDP cache", answers, XDP_TX, "answer header = the agent's, ID = the query's"),
        row("DNS query passed to the agent (cache off)", passes, XDP_PASS, "frame untouched"),
        row("bare DNS reflector (devtool)", reflected, XDP_TX, "ports swapped, message as sent"),
    ])
}

/// The SYN, SYN-ACK and ACK of a TCP flow from the dvnt client to `dst`
/// on the stand-ins (the answer arrives on `back_on`, addressed to
/// `back_to`): after them the flow is established and its packets take the
/// fast path. Returns the data frame to time.
fn establish(ebpf: &Ebpf, dst: [u8; 4], dst_mac: [u8; 6], back_to: [u8; 4], back_on: u32) -> Result<Vec<u8>> {
    let (_, dvnt, uplink) = stand_ins()?;
    let client = (FIB[1].neighbour_mac, GW_MAC);
    let server = (dst_mac, GW_MAC);
    let prog = offline::xdp_prog(ebpf, schema::programs::SEGMENT_INGRESS)?;
    let c = FIB[1].neighbour;
    // A source port inside the NAT range: masquerade keeps it.
    let syn = tcp_frame(client, c, 21000, dst, 80, ct::TCP_SYN);
    let (v, _, _) = offline::run_xdp(prog, dvnt, &syn)?;
    if v != XDP_PASS {
        bail!("the flow's SYN was not admitted ({})", verdict_name(v));
    }
    // The stack forwards it (TC egress: translation, if any).
    offline::run_egress(ebpf, dvnt, &syn)?;
    let back = if back_on == uplink { offline::xdp_prog(ebpf, schema::programs::UPLINK_INGRESS)? } else { prog };
    let synack = tcp_frame(server, dst, 80, back_to, 21000, ct::TCP_SYN | ct::TCP_ACK);
    let (v, _, _) = offline::run_xdp(back, back_on, &synack)?;
    if v != XDP_PASS && v != XDP_REDIRECT {
        bail!("the SYN-ACK was refused ({})", verdict_name(v));
    }
    Ok(tcp_frame(client, c, 21000, dst, 80, ct::TCP_ACK))
}

fn forward(cfg: &Config, runs: u32, seen: &mut Vec<Vec<u8>>) -> Result<Row> {
    let (mgmt, dvnt, _) = stand_ins()?;
    let ebpf = dataplane(cfg, offline::FLAGS)?;
    let data = establish(&ebpf, FIB[0].neighbour, FIB[0].neighbour_mac, FIB[1].neighbour, mgmt)?;
    let prog = offline::xdp_prog(&ebpf, schema::programs::SEGMENT_INGRESS)?;
    let (v, out, _) = offline::run_xdp(prog, dvnt, &data)?;
    if v != XDP_REDIRECT || out[0..6] != FIB[0].neighbour_mac || out[22] != 63 || out[26..] != data[26..] {
        bail!("the established flow was not fast-forwarded to the next hop with TTL 63 ({})", verdict_name(v));
    }
    let v = time_runs(prog, dvnt, &data, runs, XDP_REDIRECT)?;
    seen.push(data);
    Ok(Row {
        case: "forward",
        name: "forward: established TCP, fast path (firewall + conntrack + FIB + redirect)".into(),
        ns_median: Some(median(v)),
        frames: 1,
        verdict: verdict_name(XDP_REDIRECT),
        checked: "next hop's MAC, TTL 63, addresses and ports untouched".into(),
        cannot_run: None,
    })
}

fn nat(cfg: &Config, runs: u32, seen: &mut Vec<Vec<u8>>) -> Result<Row> {
    let (mgmt, dvnt, up) = stand_ins()?;
    let mut ebpf = dataplane(cfg, offline::FLAGS)?;
    offline::enable_nat(&mut ebpf, FIB[2].addr, (20000, 32767), &[mgmt, dvnt], &[])?;
    let data = establish(&ebpf, FIB[2].neighbour, FIB[2].neighbour_mac, FIB[2].addr, up)?;
    let prog = offline::xdp_prog(&ebpf, schema::programs::SEGMENT_INGRESS)?;
    let (v, out, _) = offline::run_xdp(prog, dvnt, &data)?;
    if v != XDP_REDIRECT
        || out[0..6] != FIB[2].neighbour_mac
        || out[26..30] != FIB[2].addr
        || out[30..34] != data[30..34]
    {
        bail!("the masqueraded flow was not fast-forwarded from the uplink address ({})", verdict_name(v));
    }
    let v = time_runs(prog, dvnt, &data, runs, XDP_REDIRECT)?;
    seen.push(data);
    Ok(Row {
        case: "nat",
        name: "NAT: established masqueraded TCP, fast path (+ source translation)".into(),
        ns_median: Some(median(v)),
        frames: 1,
        verdict: verdict_name(XDP_REDIRECT),
        checked: "source = the uplink address, next hop's MAC".into(),
        cannot_run: None,
    })
}

fn firewall(cfg: &Config, n: u32, runs: u32, seen: &mut Vec<Vec<u8>>) -> Result<Row> {
    use coresvc::config::{Action, PortRange, Proto, Rule};
    let name = format!("firewall: a new flow judged after {n} user rule(s), none matching (default deny)");
    let mut cfg = cfg.clone();
    // Rules for other ports first: the flow's packet is compared with each.
    let extra = (0..n).map(|i| Rule {
        name: format!("bench-{i}"),
        from: "dvnt".into(),
        to: "mgmt".into(),
        proto: Proto::Udp,
        ports: vec![PortRange { first: 20000 + i as u16, last: 20000 + i as u16 }],
        dst: vec![],
        action: Action::Allow,
    });
    cfg.firewall.rules.splice(0..0, extra);
    if let Err(e) = coresvc::dataplane::rules::compile(&cfg) {
        return Ok(Row {
            case: "firewall",
            name,
            ns_median: None,
            frames: 0,
            verdict: "-",
            checked: String::new(),
            cannot_run: Some(format!(
                "{e} (RULES_PER_BANK = {}, schema {})",
                schema::RULES_PER_BANK,
                schema::SCHEMA_VERSION
            )),
        });
    }
    let (_, dvnt, _) = stand_ins()?;
    let ebpf = dataplane(&cfg, offline::FLAGS)?;
    let prog = offline::xdp_prog(&ebpf, schema::programs::SEGMENT_INGRESS)?;
    // UDP to port 9 of provisioner: no user rule's port, so every rule is
    // compared and the inter-segment default denies it.
    let frame = udp_frame(FIB[1].neighbour, FIB[0].neighbour, 4000, 9);
    let (v, _, _) = offline::run_xdp(prog, dvnt, &frame)?;
    if v != XDP_DROP {
        bail!("{name}: verdict {} where the default should deny", verdict_name(v));
    }
    let v = time_runs(prog, dvnt, &frame, runs, XDP_DROP)?;
    seen.push(frame);
    Ok(Row {
        case: "firewall",
        name,
        ns_median: Some(median(v)),
        frames: 1,
        verdict: verdict_name(XDP_DROP),
        checked: "dropped, no connection made".into(),
        cannot_run: None,
    })
}

/// A UDP datagram with an 18-byte payload (64 bytes on the wire) from the
/// dvnt client to the gateway.
fn udp_frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut u = vec![0u8; 26];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&26u16.to_be_bytes());
    ipv4_frame((FIB[1].neighbour_mac, GW_MAC), src, dst, 17, u, 6)
}
