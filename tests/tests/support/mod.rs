//! The BPF_PROG_TEST_RUN harness shared by the progtest suites: a
//! namespace whose FIB stands in for the gateway's, and the programs loaded
//! and configured as the agent would.
#![allow(dead_code)]

use std::{net::Ipv4Addr, process::Command};

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use coresvc::{
    config::Config,
    dataplane::{iface_entry, rules, set_iface},
};
use coresvc_common::conntrack as ct;
use coresvc_lab::{frames, raw::in_netns};
use coresvc_maps_schema::{
    self as schema, CtEntry, CtKey, IfaceInfo, NatBind, NatKey, PacketCount, ROLE_SEGMENT, ROLE_UPLINK,
    SETTINGS_F_DROP_INVALID_IPV4, SETTINGS_F_FAST_FORWARD, SETTINGS_F_FIREWALL, Settings,
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
        // (This kernel has no dummy interfaces: veth pairs with both ends here.)
        for (dev, addr) in [("d_mgmt", "10.10.0.1/24"), ("d_dvnt", "10.20.0.1/24"), ("d_up", "192.0.2.2/24")] {
            let peer = dev.replace("d_", "p_");
            sh(&["link", "add", dev, "type", "veth", "peer", "name", &peer]);
            sh(&["addr", "add", addr, "dev", dev]);
            sh(&["link", "set", dev, "up"]);
            sh(&["link", "set", &peer, "up"]);
        }
        sh(&["neigh", "add", "10.10.0.10", "lladdr", "02:00:00:0a:00:0a", "dev", "d_mgmt", "nud", "permanent"]);
        sh(&["neigh", "add", "10.20.0.50", "lladdr", "02:00:00:14:00:32", "dev", "d_dvnt", "nud", "permanent"]);
        sh(&["neigh", "add", "192.0.2.1", "lladdr", "02:00:00:c0:00:01", "dev", "d_up", "nud", "permanent"]);
        sh(&["route", "add", "default", "via", "192.0.2.1"]);
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
        let mut ebpf = coresvc::dataplane::load(None, aya_log::Level::Error, conntrack_max).unwrap();
        let (mgmt, dvnt, up) = (ifindex("d_mgmt"), ifindex("d_dvnt"), ifindex("d_up"));
        {
            let mut s: Array<&mut MapData, Settings> = Array::try_from(ebpf.map_mut("SETTINGS").unwrap()).unwrap();
            let flags = SETTINGS_F_DROP_INVALID_IPV4 | SETTINGS_F_FIREWALL | SETTINGS_F_FAST_FORWARD;
            s.set(0, Settings { schema_version: schema::SCHEMA_VERSION, flags, ..Default::default() }, 0).unwrap();
        }
        {
            let info = |role, segment, a: [u8; 4], slot| IfaceInfo {
                role,
                segment,
                ipv4: a,
                prefix_len: 24,
                stats_slot: slot,
                cidr: if role == ROLE_SEGMENT { [a[0], a[1], a[2], 0] } else { [0; 4] },
                cidr_len: if role == ROLE_SEGMENT { 24 } else { 0 },
                ..Default::default()
            };
            set_iface(&mut ebpf, mgmt, info(ROLE_SEGMENT, 0, [10, 10, 0, 1], 1)).unwrap();
            set_iface(&mut ebpf, dvnt, info(ROLE_SEGMENT, 1, [10, 20, 0, 1], 2)).unwrap();
            set_iface(&mut ebpf, up, info(ROLE_UPLINK, 0, [192, 0, 2, 2], 3)).unwrap();
        }
        {
            let mut m: BpfHashMap<&mut MapData, [u8; 4], u32> =
                BpfHashMap::try_from(ebpf.map_mut("LOCAL_ADDRS").unwrap()).unwrap();
            for a in LOCAL {
                m.insert(a, 1, 0).unwrap();
            }
        }
        let mut fw = Fw { ebpf, mgmt, dvnt, up };
        fw.install(cfg);
        fw
    }

    pub fn install(&mut self, cfg: &Config) {
        rules::install(&mut self.ebpf, &rules::compile(cfg).unwrap()).unwrap();
        let local: Vec<Ipv4Addr> = LOCAL.iter().map(|a| Ipv4Addr::from(*a)).collect();
        coresvc::dataplane::write_src_guard(&mut self.ebpf, cfg, &local).unwrap();
    }

    /// Changes the settings entry.
    pub fn settings(&mut self, f: impl FnOnce(&mut Settings)) {
        let mut s: Array<&mut MapData, Settings> = Array::try_from(self.ebpf.map_mut("SETTINGS").unwrap()).unwrap();
        let mut v = s.get(&0, 0).unwrap();
        f(&mut v);
        s.set(0, v, 0).unwrap();
    }

    /// Runs the TC egress program on `frame` as the stack forwards it,
    /// received on `ingress_ifindex` (0: sent by the gateway itself):
    /// (verdict, the frame as sent).
    pub fn egress_from(&mut self, ingress_ifindex: u32, frame: &[u8]) -> (u32, Vec<u8>) {
        let prog: &mut SchedClassifier = self.ebpf.program_mut(schema::programs::EGRESS).unwrap().try_into().unwrap();
        // struct __sk_buff (192 bytes): ingress_ifindex at offset 36.
        let mut ctx = vec![0u8; 192];
        ctx[36..40].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        let mut out = vec![0u8; frame.len() + 256];
        let mut o = TestRunOptions::new();
        o.data_in = Some(frame);
        o.data_out = Some(&mut out);
        o.ctx_in = Some(&ctx);
        let r = prog.test_run(o).expect("BPF_PROG_TEST_RUN");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    /// Runs the XDP program on `frame` arriving on `ifindex`: (verdict, output).
    pub fn xdp(&mut self, ifindex: u32, frame: &[u8]) -> (u32, Vec<u8>) {
        self.xdp_prog(schema::programs::SEGMENT_INGRESS, ifindex, frame)
    }

    /// Runs XDP program `prog` on `frame` arriving on `ifindex`: (verdict, output).
    pub fn xdp_prog(&mut self, prog: &str, ifindex: u32, frame: &[u8]) -> (u32, Vec<u8>) {
        let prog: &mut Xdp = self.ebpf.program_mut(prog).unwrap().try_into().unwrap();
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
        let mut ctx = Vec::new();
        for v in [0u32, frame.len() as u32, 0, ifindex, 0, 0] {
            ctx.extend_from_slice(&v.to_ne_bytes());
        }
        // Room for frames the program grows (DNS answers).
        let mut out = vec![0u8; frame.len() + 2048];
        let mut o = TestRunOptions::new();
        o.data_in = Some(frame);
        o.data_out = Some(&mut out);
        o.ctx_in = Some(&ctx);
        let r = prog.test_run(o).expect("BPF_PROG_TEST_RUN");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
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
        {
            let mut s: Array<&mut MapData, Settings> = Array::try_from(self.ebpf.map_mut("SETTINGS").unwrap()).unwrap();
            let mut v = s.get(&0, 0).unwrap();
            v.nat_addr = [192, 0, 2, 2];
            v.nat_port_min = min;
            v.nat_port_max = max;
            s.set(0, v, 0).unwrap();
        }
        for i in [self.mgmt, self.dvnt] {
            let mut info = iface_entry(&self.ebpf, i).unwrap().unwrap();
            info.flags |= schema::IFACE_F_NAT;
            set_iface(&mut self.ebpf, i, info).unwrap();
        }
        let mut m: BpfHashMap<&mut MapData, NatKey, NatBind> =
            BpfHashMap::try_from(self.ebpf.map_mut("NAT_FWD").unwrap()).unwrap();
        for &(port, proto, to, to_port) in forwards {
            let k = NatKey { addr: [192, 0, 2, 2], port, proto, dir: schema::NAT_DIR_IN };
            m.insert(k, NatBind { addr: ip(to).octets(), port: to_port, ..Default::default() }, 0).unwrap();
        }
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
        let mut s: Array<&mut MapData, Settings> = Array::try_from(self.ebpf.map_mut("SETTINGS").unwrap()).unwrap();
        let mut v = s.get(&0, 0).unwrap();
        if on {
            v.flags |= flag;
        } else {
            v.flags &= !flag;
        }
        s.set(0, v, 0).unwrap();
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
