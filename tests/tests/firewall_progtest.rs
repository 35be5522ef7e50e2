//! BPF_PROG_TEST_RUN of every firewall, conntrack and fast-path verdict.
//!
//! The programs look routes up in the kernel's FIB, so each test runs in a
//! network namespace of its own with veth interfaces standing in for the
//! segments and the uplink (addresses, routes and permanent neighbour
//! entries), and feeds frames as if they arrived on one of them.

use std::{net::Ipv4Addr, process::Command};

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use coresvc::{config::Config, dataplane::rules};
use coresvc_common::conntrack as ct;
use coresvc_lab::{frames, raw::in_netns};
use coresvc_maps_schema::{
    self as schema, CtEntry, CtKey, IfaceInfo, PacketCount, ROLE_SEGMENT, ROLE_UPLINK, SETTINGS_F_DROP_INVALID_IPV4,
    SETTINGS_F_FAST_FORWARD, SETTINGS_F_FIREWALL, Settings, reason,
};

const DROP: u32 = 1;
const PASS: u32 = 2;
const REDIRECT: u32 = 4;

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0x14, 0, 0x32];
const PROV_MAC: [u8; 6] = [0x02, 0, 0, 0x0a, 0, 0x0a];
const UPSTREAM_MAC: [u8; 6] = [0x02, 0, 0, 0xc0, 0, 0x01];

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// A namespace with stand-in interfaces: `d_mgmt` (10.10.0.1/24), `d_dvnt`
/// (10.20.0.1/24) and `d_up` (192.0.2.2/24, default route via 192.0.2.1).
struct FibNs {
    name: String,
}

impl FibNs {
    fn new() -> Self {
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

fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid C string; called inside the test namespace.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

fn mac_of(name: &str) -> [u8; 6] {
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
struct Fw {
    ebpf: Ebpf,
    mgmt: u32,
    dvnt: u32,
    up: u32,
}

fn example() -> Config {
    Config::load(&coresvc_lab::default_config()).unwrap()
}

impl Fw {
    fn new(cfg: &Config, conntrack_max: u32) -> Self {
        let mut ebpf = coresvc::dataplane::load(None, aya_log::Level::Error, conntrack_max).unwrap();
        let (mgmt, dvnt, up) = (ifindex("d_mgmt"), ifindex("d_dvnt"), ifindex("d_up"));
        {
            let mut s: Array<&mut MapData, Settings> = Array::try_from(ebpf.map_mut("SETTINGS").unwrap()).unwrap();
            let flags = SETTINGS_F_DROP_INVALID_IPV4 | SETTINGS_F_FIREWALL | SETTINGS_F_FAST_FORWARD;
            s.set(0, Settings { schema_version: schema::SCHEMA_VERSION, flags, ..Default::default() }, 0).unwrap();
        }
        {
            let mut m: BpfHashMap<&mut MapData, u32, IfaceInfo> =
                BpfHashMap::try_from(ebpf.map_mut("IFACES").unwrap()).unwrap();
            let info =
                |role, segment, a: [u8; 4]| IfaceInfo { role, segment, ipv4: a, prefix_len: 24, ..Default::default() };
            m.insert(mgmt, info(ROLE_SEGMENT, 0, [10, 10, 0, 1]), 0).unwrap();
            m.insert(dvnt, info(ROLE_SEGMENT, 1, [10, 20, 0, 1]), 0).unwrap();
            m.insert(up, info(ROLE_UPLINK, 0, [192, 0, 2, 2]), 0).unwrap();
        }
        {
            let mut m: BpfHashMap<&mut MapData, [u8; 4], u32> =
                BpfHashMap::try_from(ebpf.map_mut("LOCAL_ADDRS").unwrap()).unwrap();
            for a in [[10, 10, 0, 1], [10, 20, 0, 1], [192, 0, 2, 2]] {
                m.insert(a, 1, 0).unwrap();
            }
        }
        let mut fw = Fw { ebpf, mgmt, dvnt, up };
        fw.install(cfg);
        fw
    }

    fn install(&mut self, cfg: &Config) {
        rules::install(&mut self.ebpf, &rules::compile(cfg).unwrap()).unwrap();
    }

    /// Runs the XDP program on `frame` arriving on `ifindex`: (verdict, output).
    fn xdp(&mut self, ifindex: u32, frame: &[u8]) -> (u32, Vec<u8>) {
        let prog: &mut Xdp = self.ebpf.program_mut(schema::programs::SEGMENT_INGRESS).unwrap().try_into().unwrap();
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
        let mut ctx = Vec::new();
        for v in [0u32, frame.len() as u32, 0, ifindex, 0, 0] {
            ctx.extend_from_slice(&v.to_ne_bytes());
        }
        let mut out = vec![0u8; frame.len() + 256];
        let mut o = TestRunOptions::new();
        o.data_in = Some(frame);
        o.data_out = Some(&mut out);
        o.ctx_in = Some(&ctx);
        let r = prog.test_run(o).expect("BPF_PROG_TEST_RUN");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    /// Runs the TC egress program on `frame` (as the gateway sends it).
    fn egress(&mut self, frame: &[u8]) -> u32 {
        let prog: &mut SchedClassifier = self.ebpf.program_mut(schema::programs::EGRESS).unwrap().try_into().unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        let mut o = TestRunOptions::new();
        o.data_in = Some(frame);
        o.data_out = Some(&mut out);
        prog.test_run(o).expect("BPF_PROG_TEST_RUN").return_value
    }

    fn flows(&self) -> Vec<(CtKey, CtEntry)> {
        let m: BpfHashMap<&MapData, CtKey, CtEntry> =
            BpfHashMap::try_from(self.ebpf.map("CONNTRACK").unwrap()).unwrap();
        m.iter().map(|r| r.unwrap()).collect()
    }

    fn drops(&self, reason: u32) -> u64 {
        let m: PerCpuArray<&MapData, PacketCount> =
            PerCpuArray::try_from(self.ebpf.map("DROP_STATS").unwrap()).unwrap();
        m.get(&reason, 0).unwrap().iter().map(|c| c.packets).sum()
    }

    /// Packets counted for the rule named `name` (active bank).
    fn rule_packets(&self, cfg: &Config, name: &str) -> u64 {
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

fn frame_tcp(from_mac: [u8; 6], src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Vec<u8> {
    let (s, d) = (ip(src), ip(dst));
    frames::ipv4(from_mac, [0x02, 0xff, 0, 0, 0, 1], s, d, 6, 64, 0, &frames::tcp(s, sport, d, dport, flags, b""))
}

fn frame_udp(from_mac: [u8; 6], src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    let (s, d) = (ip(src), ip(dst));
    frames::ipv4(from_mac, [0x02, 0xff, 0, 0, 0, 1], s, d, 17, 64, 0, &frames::udp(s, sport, d, dport, b"hi"))
}

const SYN: u8 = ct::TCP_SYN;
const SYNACK: u8 = ct::TCP_SYN | ct::TCP_ACK;
const ACK: u8 = ct::TCP_ACK;

/// Runs `f` inside a fresh FIB namespace.
fn in_fib_ns(f: impl FnOnce() + Send + 'static) {
    let ns = FibNs::new();
    in_netns(&ns.name, move || {
        f();
        Ok(())
    })
    .unwrap();
}

#[test]
fn a_rule_allows_and_the_flow_is_tracked() {
    in_fib_ns(|| {
        let cfg = example();
        let mut fw = Fw::new(&cfg, 1024);
        let (v, _) = fw.xdp(fw.dvnt, &frame_tcp(CLIENT_MAC, "10.20.0.50", 40000, "10.10.0.10", 80, SYN));
        assert_eq!(v, PASS, "the first packet goes through the stack");
        let flows = fw.flows();
        assert_eq!(flows.len(), 1);
        let (k, e) = flows[0];
        assert_eq!((k.proto, e.state), (6, ct::CT_SYN_SENT));
        assert_eq!(fw.rule_packets(&cfg, "sites-to-artifacts"), 1);
    });
}

#[test]
fn the_default_denies_between_segments_with_a_counted_reason() {
    in_fib_ns(|| {
        let cfg = example();
        let mut fw = Fw::new(&cfg, 1024);
        let (v, _) = fw.xdp(fw.dvnt, &frame_tcp(CLIENT_MAC, "10.20.0.50", 40000, "10.10.0.10", 22, SYN));
        assert_eq!(v, DROP);
        assert_eq!(fw.drops(reason::FW_DENY), 1);
        assert_eq!(fw.rule_packets(&cfg, "default:inter-segment"), 1);
        assert!(fw.flows().is_empty(), "a denied flow leaves no state");
    });
}

#[test]
fn a_user_deny_rule_wins_over_the_defaults() {
    in_fib_ns(|| {
        let mut cfg = example();
        cfg.firewall.rules.insert(
            0,
            coresvc::config::Rule {
                name: "no-smtp-out".into(),
                from: "any".into(),
                to: "uplink".into(),
                proto: coresvc::config::Proto::Tcp,
                ports: vec![coresvc::config::PortRange { first: 25, last: 25 }],
                dst: vec![],
                action: coresvc::config::Action::Deny,
            },
        );
        let mut fw = Fw::new(&cfg, 1024);
        let (v, _) = fw.xdp(fw.dvnt, &frame_tcp(CLIENT_MAC, "10.20.0.50", 40001, "198.51.100.9", 25, SYN));
        assert_eq!(v, DROP);
        assert_eq!(fw.rule_packets(&cfg, "no-smtp-out"), 1);
        let (v, _) = fw.xdp(fw.dvnt, &frame_tcp(CLIENT_MAC, "10.20.0.50", 40002, "198.51.100.9", 443, SYN));
        assert_eq!(v, PASS, "egress is allowed by default");
        assert_eq!(fw.rule_packets(&cfg, "default:egress"), 1);
    });
}

#[test]
fn the_gateway_serves_segments_but_not_the_uplink() {
    in_fib_ns(|| {
        let cfg = example();
        let mut fw = Fw::new(&cfg, 1024);
        assert_eq!(fw.xdp(fw.dvnt, &frame_udp(CLIENT_MAC, "10.20.0.50", 5000, "10.20.0.1", 53)).0, PASS);
        assert_eq!(fw.xdp(fw.dvnt, &frame_udp(CLIENT_MAC, "0.0.0.0", 68, "255.255.255.255", 67)).0, PASS, "DHCP");
        assert_eq!(fw.xdp(fw.dvnt, &frame_tcp(CLIENT_MAC, "10.20.0.50", 40000, "10.20.0.1", 22, SYN)).0, DROP);
        assert_eq!(
            fw.xdp(fw.mgmt, &frame_tcp(PROV_MAC, "10.10.0.10", 40000, "10.10.0.1", 22, SYN)).0,
            PASS,
            "mgmt ssh"
        );
        assert_eq!(fw.xdp(fw.up, &frame_udp(UPSTREAM_MAC, "192.0.2.1", 5000, "192.0.2.2", 53)).0, DROP);
        assert!(fw.flows().is_empty(), "traffic to the gateway is judged packet by packet");
        assert_eq!(fw.rule_packets(&cfg, "default:inbound"), 1);
    });
}

#[test]
fn an_established_flow_is_fast_forwarded_as_the_kernel_would() {
    in_fib_ns(|| {
        let cfg = example();
        let mut fw = Fw::new(&cfg, 1024);
        let (dvnt, mgmt) = (fw.dvnt, fw.mgmt);
        assert_eq!(fw.xdp(dvnt, &frame_tcp(CLIENT_MAC, "10.20.0.50", 40000, "10.10.0.10", 80, SYN)).0, PASS);
        assert_eq!(fw.xdp(mgmt, &frame_tcp(PROV_MAC, "10.10.0.10", 80, "10.20.0.50", 40000, SYNACK)).0, PASS);
        // The handshake completes: this ACK is the first fast-forwarded packet.
        let data = frame_tcp(CLIENT_MAC, "10.20.0.50", 40000, "10.10.0.10", 80, ACK);
        let (v, out) = fw.xdp(dvnt, &data);
        assert_eq!(v, REDIRECT);
        assert_eq!(fw.flows()[0].1.state, ct::CT_ESTABLISHED);
        assert_eq!(&out[0..6], &PROV_MAC, "the next hop's MAC");
        assert_eq!(&out[6..12], &mac_of("d_mgmt"), "the egress interface's MAC");
        assert_eq!(out[frames::IP + 8], 63, "TTL decremented");
        assert!(frames::ip_checksum_ok(&out), "header checksum fixed");
        assert_eq!(&out[frames::IP + 12..], &data[frames::IP + 12..], "addresses and payload untouched");
        // And back.
        let (v, out) = fw.xdp(mgmt, &frame_tcp(PROV_MAC, "10.10.0.10", 80, "10.20.0.50", 40000, ACK));
        assert_eq!(v, REDIRECT);
        assert_eq!(&out[0..6], &CLIENT_MAC);
        // TTL 1: not forwarded here; the stack answers with time exceeded.
        let (s, d) = (ip("10.20.0.50"), ip("10.10.0.10"));
        let ttl1 =
            frames::ipv4(CLIENT_MAC, [2, 0xff, 0, 0, 0, 1], s, d, 6, 1, 0, &frames::tcp(s, 40000, d, 80, ACK, b""));
        assert_eq!(fw.xdp(dvnt, &ttl1).0, PASS);
        // A FIN leaves the fast path: teardown goes through the stack.
        let (v, _) = fw.xdp(dvnt, &frame_tcp(CLIENT_MAC, "10.20.0.50", 40000, "10.10.0.10", 80, ACK | ct::TCP_FIN));
        assert_eq!(v, PASS);
    });
}

#[test]
fn tcp_without_a_syn_opens_nothing() {
    in_fib_ns(|| {
        let cfg = example();
        let mut fw = Fw::new(&cfg, 1024);
        // Allowed by the rules, but mid-stream: invalid.
        let (v, _) = fw.xdp(fw.dvnt, &frame_tcp(CLIENT_MAC, "10.20.0.50", 40000, "10.10.0.10", 80, ACK));
        assert_eq!(v, DROP);
        assert_eq!(fw.drops(reason::CT_INVALID), 1);
        assert!(fw.flows().is_empty());
        assert_eq!(fw.rule_packets(&cfg, "sites-to-artifacts"), 0, "rules are not consulted");
    });
}

#[test]
fn replies_from_the_uplink_pass_but_new_inbound_flows_do_not() {
    in_fib_ns(|| {
        let cfg = example();
        let mut fw = Fw::new(&cfg, 1024);
        let (dvnt, up) = (fw.dvnt, fw.up);
        assert_eq!(fw.xdp(dvnt, &frame_tcp(CLIENT_MAC, "10.20.0.50", 41000, "192.0.2.1", 443, SYN)).0, PASS);
        assert_eq!(fw.xdp(up, &frame_tcp(UPSTREAM_MAC, "192.0.2.1", 443, "10.20.0.50", 41000, SYNACK)).0, PASS);
        assert_eq!(fw.xdp(up, &frame_tcp(UPSTREAM_MAC, "192.0.2.1", 443, "10.20.0.50", 41001, SYN)).0, DROP);
        assert_eq!(fw.flows().len(), 1);
    });
}

#[test]
fn icmp_errors_about_tracked_flows_are_related() {
    in_fib_ns(|| {
        let cfg = example();
        let mut fw = Fw::new(&cfg, 1024);
        let (dvnt, up) = (fw.dvnt, fw.up);
        let out = frame_udp(CLIENT_MAC, "10.20.0.50", 5353, "192.0.2.1", 9999);
        assert_eq!(fw.xdp(dvnt, &out).0, PASS);
        // Port unreachable from the upstream, quoting our datagram.
        let quoted = &out[frames::IP..frames::IP + 28];
        let (s, d) = (ip("192.0.2.1"), ip("10.20.0.50"));
        let err =
            frames::ipv4(UPSTREAM_MAC, [2, 0xff, 0, 0, 0, 1], s, d, 1, 64, 0, &frames::icmp(3, 3, [0; 4], quoted));
        assert_eq!(fw.xdp(up, &err).0, PASS);
        // The same error about a flow nobody opened: inbound, denied.
        let stranger = frame_udp(CLIENT_MAC, "10.20.0.50", 7777, "192.0.2.1", 9999);
        let quoted = &stranger[frames::IP..frames::IP + 28];
        let err =
            frames::ipv4(UPSTREAM_MAC, [2, 0xff, 0, 0, 0, 1], s, d, 1, 64, 0, &frames::icmp(3, 3, [0; 4], quoted));
        assert_eq!(fw.xdp(up, &err).0, DROP);
    });
}

#[test]
fn a_flow_the_new_rules_forbid_is_cut_on_its_next_packet() {
    in_fib_ns(|| {
        let mut cfg = example();
        let mut fw = Fw::new(&cfg, 1024);
        let (dvnt, mgmt) = (fw.dvnt, fw.mgmt);
        assert_eq!(fw.xdp(dvnt, &frame_tcp(CLIENT_MAC, "10.20.0.50", 40000, "10.10.0.10", 80, SYN)).0, PASS);
        assert_eq!(fw.xdp(mgmt, &frame_tcp(PROV_MAC, "10.10.0.10", 80, "10.20.0.50", 40000, SYNACK)).0, PASS);
        // Another flow the new rules still allow (ping to mgmt).
        let (s, d) = (ip("10.20.0.50"), ip("10.10.0.10"));
        let ping =
            frames::ipv4(CLIENT_MAC, [2, 0xff, 0, 0, 0, 1], s, d, 1, 64, 0, &frames::icmp(8, 0, [0, 7, 0, 1], b"x"));
        assert_eq!(fw.xdp(dvnt, &ping).0, PASS);
        assert_eq!(fw.flows().len(), 2);
        cfg.firewall.rules.retain(|r| r.name != "sites-to-artifacts");
        fw.install(&cfg);
        let (v, _) = fw.xdp(dvnt, &frame_tcp(CLIENT_MAC, "10.20.0.50", 40000, "10.10.0.10", 80, ACK));
        assert_eq!(v, DROP);
        assert_eq!(fw.drops(reason::FW_REVOKED), 1);
        assert_eq!(fw.flows().len(), 1, "the revoked connection is gone, the allowed one stays");
        // Its other side cannot bring it back (mgmt may open flows to sites,
        // but not mid-stream).
        let (v, _) = fw.xdp(mgmt, &frame_tcp(PROV_MAC, "10.10.0.10", 80, "10.20.0.50", 40000, ACK));
        assert_eq!(v, DROP);
        assert_eq!(fw.drops(reason::CT_INVALID), 1);
        assert_eq!(fw.xdp(dvnt, &ping).0, PASS, "still allowed under the new rules");
    });
}

#[test]
fn a_full_table_refuses_new_flows_instead_of_allowing_them_untracked() {
    in_fib_ns(|| {
        let cfg = example();
        let mut fw = Fw::new(&cfg, 1);
        let dvnt = fw.dvnt;
        assert_eq!(fw.xdp(dvnt, &frame_tcp(CLIENT_MAC, "10.20.0.50", 40000, "192.0.2.1", 443, SYN)).0, PASS);
        assert_eq!(fw.xdp(dvnt, &frame_tcp(CLIENT_MAC, "10.20.0.50", 40001, "192.0.2.1", 443, SYN)).0, DROP);
        assert_eq!(fw.drops(reason::CT_FULL), 1);
        // The tracked one keeps working.
        assert_eq!(fw.xdp(dvnt, &frame_tcp(CLIENT_MAC, "10.20.0.50", 40000, "192.0.2.1", 443, ACK)).0, PASS);
    });
}

#[test]
fn connections_the_gateway_opens_let_their_replies_in() {
    in_fib_ns(|| {
        let cfg = example();
        let mut fw = Fw::new(&cfg, 1024);
        let up = fw.up;
        // The DNS forwarder's query to the upstream, seen on egress.
        let query = frames::ipv4(
            [2, 0xff, 0, 0, 0, 1],
            UPSTREAM_MAC,
            ip("192.0.2.2"),
            ip("192.0.2.1"),
            17,
            64,
            0,
            &frames::udp(ip("192.0.2.2"), 33333, ip("192.0.2.1"), 53, b"q"),
        );
        assert_eq!(fw.egress(&query), 0, "TC_ACT_OK");
        let flows = fw.flows();
        assert_eq!(flows.len(), 1);
        assert!(flows[0].1.flags & ct::CT_F_LOCAL != 0);
        let answer = frame_udp(UPSTREAM_MAC, "192.0.2.1", 53, "192.0.2.2", 33333);
        assert_eq!(fw.xdp(up, &answer).0, PASS);
        // Answers of the gateway's own services create no state.
        let dns_answer = frames::ipv4(
            [2, 0xff, 0, 0, 0, 1],
            CLIENT_MAC,
            ip("10.20.0.1"),
            ip("10.20.0.50"),
            17,
            64,
            0,
            &frames::udp(ip("10.20.0.1"), 53, ip("10.20.0.50"), 5000, b"a"),
        );
        fw.egress(&dns_answer);
        assert_eq!(fw.flows().len(), 1);
    });
}

#[test]
fn later_fragments_are_judged_without_ports() {
    in_fib_ns(|| {
        let cfg = example();
        let mut fw = Fw::new(&cfg, 1024);
        let (dvnt, up) = (fw.dvnt, fw.up);
        let body = [0u8; 16];
        let frag =
            |mac, s: &str, d: &str| frames::ipv4(mac, [2, 0xff, 0, 0, 0, 1], ip(s), ip(d), 17, 64, 0x0010, &body);
        assert_eq!(fw.xdp(dvnt, &frag(CLIENT_MAC, "10.20.0.50", "192.0.2.1")).0, PASS, "egress allows");
        assert_eq!(fw.xdp(up, &frag(UPSTREAM_MAC, "192.0.2.1", "10.20.0.50")).0, DROP, "inbound denies");
        assert!(fw.flows().is_empty());
    });
}
