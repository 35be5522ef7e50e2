//! BPF_PROG_TEST_RUN tests of the XDP programs: crafted frames in, verdict,
//! output bytes and counters checked. No network is involved; the maps are
//! private to each loaded object (nothing is pinned).
//!
//! With no context given, the kernel runs the program as if the frame came in
//! on the loopback device of the calling thread's network namespace, so the
//! interface-specific state is keyed by loopback's ifindex.

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
};
use coresvc_lab::frames::{self, Udp4};
use coresvc_maps_schema::{
    self as schema, IfaceInfo, PacketCount, ROLE_SEGMENT, SETTINGS_F_DROP_INVALID_IPV4, Settings, reason,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

struct Harness {
    ebpf: Ebpf,
    /// Where its verdicts are counted (0 when loopback is not configured).
    slot: u8,
}

/// The stats slot loopback gets when configured.
const SLOT: u8 = 3;

impl Harness {
    /// Loads the object with `flags` in SETTINGS and loopback configured as a segment.
    fn new(flags: u32, configure_iface: bool) -> Self {
        let mut ebpf =
            coresvc::dataplane::load(None, aya_log::Level::Error, 1024).expect("load and verify the eBPF object");
        let ifindex = loopback_ifindex();
        let mut settings: Array<&mut MapData, Settings> =
            Array::try_from(ebpf.map_mut(schema::SETTINGS.name).unwrap()).unwrap();
        settings.set(0, Settings { schema_version: schema::SCHEMA_VERSION, flags, ..Default::default() }, 0).unwrap();
        if configure_iface {
            let info = IfaceInfo { role: ROLE_SEGMENT, stats_slot: SLOT, ..Default::default() };
            coresvc::dataplane::set_iface(&mut ebpf, ifindex, info).unwrap();
        }
        Self { ebpf, slot: if configure_iface { SLOT } else { 0 } }
    }

    /// Runs `prog` on `frame`; returns (verdict, output bytes).
    fn run(&mut self, prog: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        let p: &mut Xdp = self.ebpf.program_mut(prog).unwrap().try_into().unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        let r = p.test_run(opts).expect("BPF_PROG_TEST_RUN");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    fn verdict_count(&self, verdict: u32) -> PacketCount {
        let m: PerCpuArray<&MapData, PacketCount> =
            PerCpuArray::try_from(self.ebpf.map(schema::IF_STATS.name).unwrap()).unwrap();
        let mut sum = PacketCount::default();
        for c in m.get(&schema::if_stats_index(self.slot, verdict), 0).unwrap().iter() {
            sum.add(c);
        }
        sum
    }

    fn drops(&self, reason: u32) -> PacketCount {
        let m: PerCpuArray<&MapData, PacketCount> =
            PerCpuArray::try_from(self.ebpf.map(schema::DROP_STATS.name).unwrap()).unwrap();
        let mut sum = PacketCount::default();
        for c in m.get(&reason, 0).unwrap().iter() {
            sum.add(c);
        }
        sum
    }
}

fn loopback_ifindex() -> u32 {
    // SAFETY: valid C string.
    unsafe { libc::if_nametoindex(c"lo".as_ptr()) }
}

fn good_frame() -> Vec<u8> {
    Udp4::default().build()
}

#[test]
fn valid_ipv4_passes_unchanged_and_is_counted() {
    let mut h = Harness::new(SETTINGS_F_DROP_INVALID_IPV4, true);
    let f = good_frame();
    for prog in [schema::programs::SEGMENT_INGRESS, schema::programs::UPLINK_INGRESS] {
        let (v, out) = h.run(prog, &f);
        assert_eq!(v, XDP_PASS, "{prog}");
        assert_eq!(out, f, "{prog} must not touch a passed frame");
    }
    let c = h.verdict_count(XDP_PASS);
    assert_eq!(c.packets, 2);
    assert_eq!(c.bytes, 2 * f.len() as u64);
    assert_eq!(h.verdict_count(XDP_DROP).packets, 0);
}

#[test]
fn bad_ipv4_checksum_is_dropped_with_its_reason() {
    let mut h = Harness::new(SETTINGS_F_DROP_INVALID_IPV4, true);
    let f = frames::corrupt_ip_checksum(good_frame());
    let (v, _) = h.run(schema::programs::SEGMENT_INGRESS, &f);
    assert_eq!(v, XDP_DROP);
    assert_eq!(h.drops(reason::IPV4_BAD_CHECKSUM), PacketCount { packets: 1, bytes: f.len() as u64 });
    assert_eq!(h.verdict_count(XDP_DROP).packets, 1);
    assert_eq!(h.verdict_count(XDP_PASS).packets, 0);
}

#[test]
fn malformed_ipv4_headers_are_dropped_with_their_reasons() {
    let mut h = Harness::new(SETTINGS_F_DROP_INVALID_IPV4, true);
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        ("version 6 in an IPv4 frame", frames::with_ver_ihl(good_frame(), 0x65), reason::IPV4_BAD_HEADER),
        ("IHL 4 (16 bytes)", frames::with_ver_ihl(good_frame(), 0x44), reason::IPV4_BAD_HEADER),
        ("total length below the header length", frames::with_tot_len(good_frame(), 12), reason::IPV4_BAD_HEADER),
        ("frame ends inside the IPv4 header", good_frame()[..14 + 12].to_vec(), reason::IPV4_TRUNCATED),
    ];
    for (what, f, r) in &cases {
        let before = h.drops(*r).packets;
        let (v, _) = h.run(schema::programs::SEGMENT_INGRESS, f);
        assert_eq!(v, XDP_DROP, "{what}");
        assert_eq!(h.drops(*r).packets, before + 1, "{what}: reason {r} counted");
    }
    assert_eq!(h.verdict_count(XDP_DROP).packets, cases.len() as u64);
}

#[test]
fn frames_the_program_does_not_judge_pass() {
    let mut h = Harness::new(SETTINGS_F_DROP_INVALID_IPV4, true);
    let mut arp = good_frame();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    let mut ipv6 = good_frame();
    ipv6[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    // IPv4 with options: the stack verifies those headers.
    let mut options = frames::with_ver_ihl(good_frame(), 0x46);
    options[frames::IP + 10] ^= 0xff;
    // Claims more bytes than the frame holds: the stack decides (a frame can
    // be non-linear), the program does not drop it.
    let long_claim = frames::with_tot_len(good_frame(), 1400);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("ARP", arp),
        ("IPv6", ipv6),
        ("IPv4 with options and a bad checksum", options),
        ("IPv4 claiming more bytes than the frame", long_claim),
        // (A runt shorter than an Ethernet header cannot be fed here: the
        // kernel refuses test frames below ETH_HLEN with EINVAL.)
    ];
    for (what, f) in &cases {
        let (v, out) = h.run(schema::programs::SEGMENT_INGRESS, f);
        assert_eq!(v, XDP_PASS, "{what}");
        assert_eq!(&out, f, "{what}: unchanged");
    }
    assert_eq!(h.verdict_count(XDP_PASS).packets, cases.len() as u64);
}

#[test]
fn checks_follow_the_configuration() {
    // The setting off: a bad checksum passes to the stack.
    let mut h = Harness::new(0, true);
    let (v, _) = h.run(schema::programs::SEGMENT_INGRESS, &frames::corrupt_ip_checksum(good_frame()));
    assert_eq!(v, XDP_PASS);
    // An interface the agent did not configure: counted and dropped, never
    // passed unjudged (the agent writes an entry before it forwards).
    let mut h = Harness::new(SETTINGS_F_DROP_INVALID_IPV4, false);
    let (v, _) = h.run(schema::programs::SEGMENT_INGRESS, &good_frame());
    assert_eq!(v, XDP_DROP);
    assert_eq!(h.verdict_count(XDP_DROP).packets, 1);
}

#[test]
fn object_matches_the_schema() {
    let ebpf = coresvc::dataplane::load(None, aya_log::Level::Error, schema::CONNTRACK.max_entries).unwrap();
    for spec in schema::ALL_MAPS {
        let map = ebpf.map(spec.name).unwrap_or_else(|| panic!("map {} missing from the object", spec.name));
        let info = match map {
            aya::maps::Map::Array(d)
            | aya::maps::Map::HashMap(d)
            | aya::maps::Map::PerCpuArray(d)
            | aya::maps::Map::PerCpuHashMap(d)
            | aya::maps::Map::LruHashMap(d)
            | aya::maps::Map::LpmTrie(d) => d.info().unwrap(),
            other => panic!("{}: unexpected map kind {other:?}", spec.name),
        };
        assert_eq!(info.map_type().unwrap() as u32, spec.kind as u32, "{} kind", spec.name);
        assert_eq!(info.key_size(), spec.key_size, "{} key size", spec.name);
        assert_eq!(info.value_size(), spec.value_size, "{} value size", spec.name);
        assert_eq!(info.max_entries(), spec.max_entries, "{} max entries", spec.name);
    }
    let names: Vec<&str> = ebpf.maps().map(|(n, _)| n).filter(|n| !n.starts_with('.') && *n != "AYA_LOGS").collect();
    for n in names {
        assert!(schema::ALL_MAPS.iter().any(|m| m.name == n), "map {n} is in the object but not in maps-schema");
    }
}

/// The kernel verifies at most a million instructions per program; the
/// segment program (with the DNS cache) must stay well below, so that a
/// change that makes it much harder to verify fails here and not at a
/// customer's load. Not a timing: the count is the verifier's own.
#[test]
fn programs_leave_verifier_headroom() {
    let mut ebpf = coresvc::dataplane::load(None, aya_log::Level::Error, 1024).unwrap();
    for name in [schema::programs::SEGMENT_INGRESS, schema::programs::UPLINK_INGRESS, schema::programs::EGRESS] {
        let info = ebpf.program_mut(name).unwrap().info().unwrap();
        let n = info.verified_instruction_count().expect("the kernel reports verified instructions");
        eprintln!("{name}: {n} instructions verified");
        assert!(n < 700_000, "{name}: {n} instructions verified, close to the kernel's limit of 1000000");
    }
}
