//! The BPF_PROG_TEST_RUN harness shared by the progtest suites: a
//! namespace whose FIB stands in for the gateway's, and the programs loaded
//! and configured as the agent would (the offline dataplane of
//! `coresvc_devtool::offline`, which `coresvc-devtool prog-cost` measures).
#![allow(dead_code)]

use std::{net::Ipv4Addr, process::Command};

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray},
};
use coresvc::{config::Config, dataplane::rules};
use coresvc_common::conntrack as ct;
use coresvc_devtool::offline;
use coresvc_lab::{frames, raw::in_netns};
use coresvc_maps_schema::{
    self as schema, CtEntry, CtKey, NatBind, NatKey, PacketCount, ROLE_SEGMENT, ROLE_UPLINK, Settings,
};

/// The gateway's addresses in the FIB namespace.
pub const LOCAL: [[u8; 4]; 3] = [[10, 10, 0, 1], [10, 20, 0, 1], [192, 0, 2, 2]];

/// TC verdicts.
pub const TC_OK: u32 = 0;
pub const TC_SHOT: u32 = 2;

pub const DROP: u32 = 1;
pub const PASS: u32 = 2;
pub const REDIRECT: u32 = 4;

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0x14, 0, 0x32];
pub const PROV_MAC: [u8; 6] = [0x02, 0, 0, 0x0a, 0, 0x0a];
pub const UPSTREAM_MAC: [u8; 6] = [0x02, 0, 0, 0xc0, 0, 0x01];

pub fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// A namespace with stand-in interfaces: `d_mgmt` (10.10.0.1/24), `d_dvnt`
/// (10.20.0.1/24) and `d_up` (192.0.2.2/24, default route via 192.0.2.1).
pub struct FibNs {
    pub name: String,
}

impl FibNs {
    pub fn new() -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        coresvc_lab::cleanup_stale_test_labs();
        let name = format!("cst{}x{}-fib", std::process::id(), 1000 + N.fetch_add(1, Ordering::Relaxed));
        let out = Command::new("ip").args(["netns", "add", &name]).output().unwrap();
        assert!(out.status.success(), "ip netns add: {}", String::from_utf8_lossy(&out.stderr));
        // From here on the namespace is removed on drop, also when a step fails.
        let guard = FibNs { name };
        let name = guard.name.clone();
        let sh = |args: &[&str]| {
            let out = Command::new("ip").args(["-n", &name]).args(args).output().unwrap();
            assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        // The stand-ins of the offline dataplane `coresvc-devtool prog-cost` measures.
        for args in offline::fib_commands() {
            sh(&args.iter().map(String::as_str).collect::<Vec<_>>());
        }
        let out = Command::new("ip")
            .args(["netns", "exec", &name, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
            .output()
            .unwrap();
        assert!(out.status.success());
        guard
    }
}

impl Drop for FibNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

pub fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid C string; called inside the test namespace.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

pub fn mac_of(name: &str) -> [u8; 6] {
    // sysfs shows the host's view; ask the kernel through ip instead.
    let out = Command::new("ip").args(["-o", "link", "show", name]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let m = text.split("link/ether ").nth(1).unwrap().split_whitespace().next().unwrap();
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(m.split(':')) {
        *b = u8::from_str_radix(p, 16).unwrap();
    }
    mac
}

/// The loaded programs and maps, configured like coresvc would for the
/// example configuration on the dummy interfaces. Lives inside the namespace.
pub struct Fw {
    pub ebpf: Ebpf,
    pub mgmt: u32,
    pub dvnt: u32,
    pub up: u32,
}

pub fn example() -> Config {
    Config::load(&coresvc_lab::default_config()).unwrap()
}

impl Fw {
    pub fn new(cfg: &Config, conntrack_max: u32) -> Self {
        let (mgmt, dvnt, up) = (ifindex("d_mgmt"), ifindex("d_dvnt"), ifindex("d_up"));
        let entry = offline::stand_in_entry;
        let ifaces = [
            (mgmt, entry(&offline::FIB[0], ROLE_SEGMENT, 0, 1)),
            (dvnt, entry(&offline::FIB[1], ROLE_SEGMENT, 1, 2)),
            (up, entry(&offline::FIB[2], ROLE_UPLINK, 0, 3)),
        ];
        let ebpf = offline::configure(cfg, conntrack_max, offline::FLAGS, &ifaces).unwrap();
        Fw { ebpf, mgmt, dvnt, up }
    }

    pub fn install(&mut self, cfg: &Config) {
        let local: Vec<Ipv4Addr> = LOCAL.iter().map(|a| Ipv4Addr::from(*a)).collect();
        offline::install(&mut self.ebpf, cfg, &local).unwrap();
    }

    /// Changes the settings entry.
    pub fn settings(&mut self, f: impl FnOnce(&mut Settings)) {
        offline::update_settings(&mut self.ebpf, f).unwrap();
    }

    /// Runs the TC egress program on `frame` as the stack forwards it,
    /// received on `ingress_ifindex` (0: sent by the gateway itself):
    /// (verdict, the frame as sent).
    pub fn egress_from(&mut self, ingress_ifindex: u32, frame: &[u8]) -> (u32, Vec<u8>) {
        offline::run_egress(&self.ebpf, ingress_ifindex, frame).expect("BPF_PROG_TEST_RUN")
    }

    /// Runs the XDP program on `frame` arriving on `ifindex`: (verdict, output).
    pub fn xdp(&mut self, ifindex: u32, frame: &[u8]) -> (u32, Vec<u8>) {
        self.xdp_prog(schema::programs::SEGMENT_INGRESS, ifindex, frame)
    }

    /// Runs XDP program `prog` on `frame` arriving on `ifindex`: (verdict, output).
    pub fn xdp_prog(&mut self, prog: &str, ifindex: u32, frame: &[u8]) -> (u32, Vec<u8>) {
        let prog = offline::xdp_prog(&self.ebpf, prog).unwrap();
        let (verdict, out, _) = offline::run_xdp(prog, ifindex, frame).expect("BPF_PROG_TEST_RUN");
        (verdict, out)
    }

    /// Runs the TC egress program on `frame` (as the gateway sends it).
    pub fn egress(&mut self, frame: &[u8]) -> u32 {
        self.egress_out(frame).0
    }

    /// Runs the TC egress program on `frame`: (verdict, the frame as sent).
    pub fn egress_out(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.egress_from(0, frame)
    }

    /// Runs the TC egress program on `frame` as the stack forwards it,
    /// received on the interface of its source (10.10/16 mgmt, 10.20/16
    /// dvnt, else the uplink): (verdict, the frame as sent).
    pub fn forwarded(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let src = &frame[frames::IP + 12..frames::IP + 14];
        let from = match src {
            [10, 10] => self.mgmt,
            [10, 20] => self.dvnt,
            _ => self.up,
        };
        self.egress_from(from, frame)
    }

    /// Turns on masquerade for both segments behind the uplink address
    /// 192.0.2.2, outside ports `min..=max`, and the given port forwards
    /// (outside port, proto, inside address, inside port).
    pub fn enable_nat(&mut self, min: u16, max: u16, forwards: &[(u16, u8, &str, u16)]) {
        let forwards: Vec<(u16, u8, [u8; 4], u16)> =
            forwards.iter().map(|&(p, proto, to, to_port)| (p, proto, ip(to).octets(), to_port)).collect();
        offline::enable_nat(&mut self.ebpf, [192, 0, 2, 2], (min, max), &[self.mgmt, self.dvnt], &forwards).unwrap();
    }

    /// The masquerade bindings.
    pub fn bindings(&self) -> Vec<(NatKey, NatBind)> {
        let m: BpfHashMap<&MapData, NatKey, NatBind> =
            BpfHashMap::try_from(self.ebpf.map("NAT_BIND").unwrap()).unwrap();
        m.iter().map(|r| r.unwrap()).collect()
    }

    pub fn remove_binding(&mut self, k: NatKey) {
        let mut m: BpfHashMap<&mut MapData, NatKey, NatBind> =
            BpfHashMap::try_from(self.ebpf.map_mut("NAT_BIND").unwrap()).unwrap();
        m.remove(&k).unwrap();
    }

    pub fn flows(&self) -> Vec<(CtKey, CtEntry)> {
        let m: BpfHashMap<&MapData, CtKey, CtEntry> =
            BpfHashMap::try_from(self.ebpf.map("CONNTRACK").unwrap()).unwrap();
        m.iter().map(|r| r.unwrap()).collect()
    }

    /// Sets or clears `SETTINGS_F_*` bits.
    pub fn set_flag(&mut self, flag: u32, on: bool) {
        offline::set_flag(&mut self.ebpf, flag, on).unwrap();
    }

    /// The DNS cache counters of segment `segment` (summed over CPUs).
    pub fn dns_stats(&self, segment: u32) -> schema::DnsStats {
        let m: PerCpuArray<&MapData, schema::DnsStats> =
            PerCpuArray::try_from(self.ebpf.map("DNS_STATS").unwrap()).unwrap();
        let mut total = schema::DnsStats::default();
        for c in m.get(&segment, 0).unwrap().iter() {
            total.add(c);
        }
        total
    }

    pub fn drops(&self, reason: u32) -> u64 {
        let m: PerCpuArray<&MapData, PacketCount> =
            PerCpuArray::try_from(self.ebpf.map("DROP_STATS").unwrap()).unwrap();
        m.get(&reason, 0).unwrap().iter().map(|c| c.packets).sum()
    }

    /// Every drop reason counted so far: (name, packets).
    pub fn all_drops(&self) -> Vec<(&'static str, u64)> {
        schema::DROP_REASON_NAMES.iter().map(|&(r, name)| (name, self.drops(r))).filter(|&(_, n)| n > 0).collect()
    }

    /// Packets counted for the rule named `name` (active bank).
    pub fn rule_packets(&self, cfg: &Config, name: &str) -> u64 {
        let s: Array<&MapData, Settings> = Array::try_from(self.ebpf.map("SETTINGS").unwrap()).unwrap();
        let base = (s.get(&0, 0).unwrap().active_bank & 1) * schema::RULES_PER_BANK;
        let stats: PerCpuArray<&MapData, PacketCount> =
            PerCpuArray::try_from(self.ebpf.map("RULE_STATS").unwrap()).unwrap();
        rules::compile(cfg)
            .unwrap()
            .iter()
            .enumerate()
            .filter(|(_, c)| c.name == name)
            .map(|(i, _)| stats.get(&(base + i as u32), 0).unwrap().iter().map(|c| c.packets).sum::<u64>())
            .sum()
    }
}

pub fn frame_tcp(from_mac: [u8; 6], src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Vec<u8> {
    let (s, d) = (ip(src), ip(dst));
    frames::ipv4(from_mac, [0x02, 0xff, 0, 0, 0, 1], s, d, 6, 64, 0, &frames::tcp(s, sport, d, dport, flags, b""))
}

pub fn frame_udp(from_mac: [u8; 6], src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    let (s, d) = (ip(src), ip(dst));
    frames::ipv4(from_mac, [0x02, 0xff, 0, 0, 0, 1], s, d, 17, 64, 0, &frames::udp(s, sport, d, dport, b"hi"))
}

pub const SYN: u8 = ct::TCP_SYN;
pub const SYNACK: u8 = ct::TCP_SYN | ct::TCP_ACK;
pub const ACK: u8 = ct::TCP_ACK;

/// Runs `f` inside a fresh FIB namespace.
pub fn in_fib_ns(f: impl FnOnce() + Send + 'static) {
    let ns = FibNs::new();
    in_netns(&ns.name, move || {
        f();
        Ok(())
    })
    .unwrap();
}
