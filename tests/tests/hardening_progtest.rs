//! BPF_PROG_TEST_RUN of the fail-closed rules (issue 17): every frame gets a
//! verdict from the rules or a counted drop, whatever the FIB says, whatever
//! its family, its source or its fragment; the connection table and the NAT
//! ports cannot be taken by one host; RSTs and FINs must fit the window.
//! Each test runs in a namespace of its own whose FIB stands in for the
//! gateway's (`support::FibNs`). Expected verdicts and bytes are written by
//! hand here, never computed by coresvc's own code.

mod support;

use coresvc_common::conntrack as ct;
use coresvc_lab::frames::{self, TcpSeg};
use coresvc_maps_schema::reason;
use support::*;

const GW_MAC: [u8; 6] = [0x02, 0xff, 0, 0, 0, 1];
const DF: u16 = 0x4000;
const MF: u16 = 0x2000;

fn sh(args: &[&str]) {
    let out = std::process::Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn udp_sized(mac: [u8; 6], s: &str, sport: u16, d: &str, dport: u16, len: usize, frag: u16) -> Vec<u8> {
    let (s, d) = (ip(s), ip(d));
    frames::ipv4(mac, GW_MAC, s, d, 17, 64, frag, &frames::udp(s, sport, d, dport, &vec![7u8; len]))
}

fn tcp_full(mac: [u8; 6], s: &str, sport: u16, d: &str, dport: u16, seg: TcpSeg) -> Vec<u8> {
    let (s, d) = (ip(s), ip(d));
    frames::ipv4(mac, GW_MAC, s, d, 6, 64, DF, &frames::tcp_seg(s, sport, d, dport, seg, b""))
}

// ------------------------------------------------------------ FIB outcomes

#[test]
fn an_oversize_packet_without_df_is_judged_by_the_rules() {
    in_fib_ns(|| {
        sh(&["link", "set", "d_mgmt", "mtu", "1280"]);
        let cfg = example();
        let mut fw = Fw::new(&cfg, 1024);
        // dvnt -> mgmt:5555 is denied between segments; at 1400 bytes the
        // FIB answers "fragmentation needed", which used to pass unjudged.
        let big = udp_sized(CLIENT_MAC, "10.20.0.50", 40000, "10.10.0.10", 5555, 1400, 0);
        assert_eq!(fw.xdp(fw.dvnt, &big).0, DROP);
        assert_eq!(fw.drops(reason::FW_DENY), 1, "{:?}", fw.all_drops());
        // An allowed one is tracked and left to the stack, which fragments it.
        let (s, d) = (ip("10.20.0.50"), ip("10.10.0.10"));
        let syn = frames::ipv4(CLIENT_MAC, GW_MAC, s, d, 6, 64, 0, &frames::tcp(s, 40001, d, 80, SYN, &[0u8; 1300]));
        assert_eq!(fw.xdp(fw.dvnt, &syn).0, PASS);
        assert_eq!(fw.flows().len(), 1, "tracked");
    });
}

#[test]
fn a_gateway_address_coresvc_did_not_configure_is_the_gateway_zone() {
    in_fib_ns(|| {
        // A secondary address (or a renewed uplink address) not in LOCAL_ADDRS.
        sh(&["addr", "add", "10.20.0.99/24", "dev", "d_dvnt"]);
        let cfg = example();
        let mut fw = Fw::new(&cfg, 1024);
        let ssh = frame_tcp(CLIENT_MAC, "10.20.0.50", 40000, "10.20.0.99", 22, SYN);
        assert_eq!(fw.xdp(fw.dvnt, &ssh).0, DROP, "ssh to the gateway is not a segment's service");
        assert_eq!(fw.drops(reason::FW_DENY), 1);
        assert!(fw.flows().is_empty(), "judged as traffic to the gateway: not tracked");
        assert_eq!(fw.xdp(fw.dvnt, &frame_udp(CLIENT_MAC, "10.20.0.50", 5000, "10.20.0.99", 53)).0, PASS, "DNS is");
        // With forwarding off on the interface the FIB says only "forwarding
        // disabled", for local addresses too: still the gateway's rules.
        let out = std::process::Command::new("sysctl").args(["-qw", "net.ipv4.conf.d_dvnt.forwarding=0"]).output();
        assert!(out.unwrap().status.success());
        assert_eq!(fw.xdp(fw.dvnt, &ssh).0, DROP);
        assert_eq!(fw.drops(reason::FW_DENY), 2);
    });
}

#[test]
fn no_route_is_left_to_the_stack_and_nothing_is_tracked() {
    in_fib_ns(|| {
        sh(&["route", "add", "blackhole", "198.18.0.0/15"]);
        let cfg = example();
        let mut fw = Fw::new(&cfg, 1024);
        let syn = frame_tcp(CLIENT_MAC, "10.20.0.50", 40000, "198.18.1.1", 443, SYN);
        assert_eq!(fw.xdp(fw.dvnt, &syn).0, PASS, "the stack drops it (the same FIB)");
        assert!(fw.flows().is_empty());
    });
}

// ------------------------------------------------------------ what is not IPv4

#[test]
fn frames_the_gateway_does_not_serve_are_dropped_and_counted() {
    in_fib_ns(|| {
        let cfg = example();
        let mut fw = Fw::new(&cfg, 1024);
        let mut v6 = vec![0u8; 14 + 40 + 8];
        v6[0..6].copy_from_slice(&GW_MAC);
        v6[6..12].copy_from_slice(&CLIENT_MAC);
        v6[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        v6[14] = 0x60;
        v6[14 + 4..14 + 6].copy_from_slice(&8u16.to_be_bytes());
        v6[14 + 6] = 17;
        v6[14 + 7] = 64;
        assert_eq!(fw.xdp(fw.dvnt, &v6).0, DROP);
        assert_eq!(fw.drops(reason::IPV6_POLICY), 1);
        fw.set_flag(coresvc_maps_schema::SETTINGS_F_IPV6_STACK, true);
        assert_eq!(fw.xdp(fw.dvnt, &v6).0, PASS, "firewall.ipv6 = \"stack\"");
        // A VLAN-tagged IPv4 frame: 802.1Q header before the ethertype.
        let plain = frame_udp(CLIENT_MAC, "10.20.0.50", 5000, "10.10.0.10", 80);
        let mut tagged = plain[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x0a]);
        tagged.extend_from_slice(&plain[12..]);
        assert_eq!(fw.xdp(fw.dvnt, &tagged).0, DROP);
        assert_eq!(fw.drops(reason::L2_UNSERVED), 1);
        let mut arp = vec![0xffu8; 6];
        arp.extend_from_slice(&CLIENT_MAC);
        arp.extend_from_slice(&[0x08, 0x06]);
        arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&[0u8; 20]);
        assert_eq!(fw.xdp(fw.dvnt, &arp).0, PASS, "ARP is the stack's");
    });
}

#[test]
fn an_interface_without_an_entry_or_unconfigured_settings_pass_nothing() {
    in_fib_ns(|| {
        let cfg = example();
        let mut fw = Fw::new(&cfg, 1024);
        let f = frame_udp(CLIENT_MAC, "10.20.0.50", 5000, "10.20.0.1", 53);
        let stranger = ifindex("p_dvnt");
        assert_eq!(fw.xdp(stranger, &f).0, DROP);
        assert_eq!(fw.drops(reason::IFACE_UNKNOWN), 1);
        fw.settings(|s| s.schema_version = 0);
        assert_eq!(fw.xdp(fw.dvnt, &f).0, DROP);
        assert_eq!(fw.drops(reason::NOT_CONFIGURED), 1);
    });
}

#[test]
fn a_truncated_transport_header_is_dropped_not_passed() {
    in_fib_ns(|| {
        let cfg = example();
        let mut fw = Fw::new(&cfg, 1024);
        // A first fragment carrying 8 bytes of a TCP header (RFC 1858's
        // tiny fragment), and a plain TCP packet cut after 12 bytes.
        let (s, d) = (ip("10.20.0.50"), ip("10.10.0.10"));
        let t = frames::tcp(s, 40000, d, 22, SYN, b"");
        let tiny = frames::ipv4(CLIENT_MAC, GW_MAC, s, d, 6, 64, MF, &t[..8]);
        assert_eq!(fw.xdp(fw.dvnt, &tiny).0, DROP);
        let cut = frames::ipv4(CLIENT_MAC, GW_MAC, s, d, 6, 64, 0, &t[..12]);
        assert_eq!(fw.xdp(fw.dvnt, &cut).0, DROP);
        assert_eq!(fw.drops(reason::L4_TRUNCATED), 2, "{:?}", fw.all_drops());
        // A TCP fragment at offset 8 could rewrite the judged flags.
        let overlap = frames::ipv4(CLIENT_MAC, GW_MAC, s, d, 6, 64, 1, &[0u8; 16]);
        assert_eq!(fw.xdp(fw.dvnt, &overlap).0, DROP);
        assert_eq!(fw.drops(reason::FRAG_INVALID), 1);
    });
}

// ------------------------------------------------------------ anti-spoofing

#[test]
fn sources_that_cannot_be_on_the_interface_are_dropped() {
    in_fib_ns(|| {
        let mut cfg = example();
        cfg.routes.push(coresvc::config::Route {
            prefix: "10.99.0.0/16".parse().unwrap(),
            via: Some(ip("10.10.0.254")),
            dev: None,
        });
        let mut fw = Fw::new(&cfg, 1024);
        let (dvnt, mgmt, up) = (fw.dvnt, fw.mgmt, fw.up);
        let cases: &[(u32, [u8; 6], &str, &str)] = &[
            (dvnt, CLIENT_MAC, "10.10.0.10", "another segment's host"),
            (dvnt, CLIENT_MAC, "10.20.0.1", "the gateway's own address"),
            (dvnt, CLIENT_MAC, "127.0.0.1", "loopback"),
            (dvnt, CLIENT_MAC, "10.99.1.1", "a network routed behind another segment"),
            (up, UPSTREAM_MAC, "10.20.0.50", "an inside host, from outside"),
            (up, UPSTREAM_MAC, "10.99.1.1", "an inside network, from outside"),
            (up, UPSTREAM_MAC, "192.0.2.2", "the uplink address, from outside"),
            (up, UPSTREAM_MAC, "224.0.0.5", "a multicast source"),
        ];
        for (n, &(iface, mac, src, what)) in cases.iter().enumerate() {
            let f = frame_udp(mac, src, 5000, "192.0.2.1", 53);
            assert_eq!(fw.xdp(iface, &f).0, DROP, "{what}");
            assert_eq!(fw.drops(reason::SPOOFED), n as u64 + 1, "{what}: {:?}", fw.all_drops());
        }
        // What may arrive: a segment's hosts, the networks routed behind it,
        // DHCP from 0.0.0.0, and the internet from the uplink.
        assert_eq!(fw.xdp(dvnt, &frame_udp(CLIENT_MAC, "10.20.0.50", 5000, "192.0.2.1", 53)).0, PASS);
        assert_eq!(fw.xdp(mgmt, &frame_udp(PROV_MAC, "10.99.1.1", 5000, "192.0.2.1", 53)).0, PASS);
        assert_eq!(fw.xdp(dvnt, &frame_udp(CLIENT_MAC, "0.0.0.0", 68, "255.255.255.255", 67)).0, PASS);
        assert_eq!(fw.xdp(dvnt, &frame_udp(CLIENT_MAC, "0.0.0.0", 68, "255.255.255.255", 69)).0, DROP, "only DHCP");
        let syn = frame_tcp(UPSTREAM_MAC, "198.51.100.7", 40000, "192.0.2.2", 22, SYN);
        assert_eq!(fw.xdp(up, &syn).0, DROP);
        assert_eq!(fw.drops(reason::FW_DENY), 1, "judged by the rules, not as spoofed");
    });
}

#[test]
fn a_tracked_connections_packets_must_arrive_on_their_sides_interface() {
    in_fib_ns(|| {
        let cfg = example();
        let mut fw = Fw::new(&cfg, 1024);
        let (dvnt, mgmt, up) = (fw.dvnt, fw.mgmt, fw.up);
        assert_eq!(fw.xdp(dvnt, &frame_udp(CLIENT_MAC, "10.20.0.50", 5000, "192.0.2.1", 53)).0, PASS);
        assert_eq!(fw.xdp(up, &frame_udp(UPSTREAM_MAC, "192.0.2.1", 53, "10.20.0.50", 5000)).0, REDIRECT, "the reply");
        // The same reply, forged on a segment.
        assert_eq!(fw.xdp(mgmt, &frame_udp(PROV_MAC, "192.0.2.1", 53, "10.20.0.50", 5000)).0, DROP);
        assert_eq!(fw.drops(reason::SPOOFED), 1);
        // The originator's packets, forged from the uplink.
        assert_eq!(fw.xdp(up, &frame_udp(UPSTREAM_MAC, "10.20.0.50", 5000, "192.0.2.1", 53)).0, DROP);
        assert_eq!(fw.drops(reason::SPOOFED), 2);
        let e = fw.flows()[0].1;
        assert_eq!((e.packets_orig, e.packets_reply), (1, 1), "forgeries are not accounted");
    });
}

// ------------------------------------------------------------ ICMP errors

fn icmp_error(mac: [u8; 6], from: &str, to: &str, quoted: &[u8]) -> Vec<u8> {
    // Type 3 code 3 (port unreachable), quoting the IP header + 8 bytes.
    let body = &quoted[frames::IP..frames::IP + 28];
    frames::ipv4(mac, GW_MAC, ip(from), ip(to), 1, 64, 0, &frames::icmp(3, 3, [0; 4], body))
}

#[test]
fn an_icmp_error_is_related_only_going_back_to_the_quoted_source_from_its_destination() {
    in_fib_ns(|| {
        // The defaults only: nothing between segments.
        let mut cfg = example();
        cfg.firewall.rules.clear();
        let mut fw = Fw::new(&cfg, 1024);
        let (dvnt, mgmt, up) = (fw.dvnt, fw.mgmt, fw.up);
        // dvnt -> an outside host: a tracked UDP flow.
        let out = frame_udp(CLIENT_MAC, "10.20.0.50", 5000, "198.51.100.9", 9999);
        assert_eq!(fw.xdp(dvnt, &out).0, PASS);
        // A router beyond the uplink says so: related.
        assert_eq!(fw.xdp(up, &icmp_error(UPSTREAM_MAC, "192.0.2.1", "10.20.0.50", &out)).0, PASS);
        assert_eq!(fw.all_drops(), vec![]);
        // The same error sent to another host than the quoted source: not
        // related, judged as new traffic (uplink -> segment is denied).
        assert_eq!(fw.xdp(up, &icmp_error(UPSTREAM_MAC, "192.0.2.1", "10.20.0.77", &out)).0, DROP);
        assert_eq!(fw.drops(reason::FW_DENY), 1, "{:?}", fw.all_drops());
        // From the wrong side: a host on mgmt quoting dvnt's packet to the
        // outside; mgmt -> dvnt ICMP is denied between segments.
        assert_eq!(fw.xdp(mgmt, &icmp_error(PROV_MAC, "10.10.0.10", "10.20.0.50", &out)).0, DROP);
        assert_eq!(fw.drops(reason::FW_DENY), 2, "{:?}", fw.all_drops());
    });
}

// ------------------------------------------------------------ TCP windows

/// A handshake through the gateway: client 10.20.0.50:40000 (ISN 1000,
/// window 64240, scale 7) to 10.10.0.10:80 (ISN 5000, window 65160, scale
/// 7), then the server sends 100,000 bytes and the client's window opens
/// to 24000 << 7.
fn established(fw: &mut Fw) {
    let (dvnt, mgmt) = (fw.dvnt, fw.mgmt);
    // MSS 1460, SACK permitted, NOP, window scale 7 (padded).
    let opts = [2, 4, 5, 0xb4, 4, 2, 1, 1, 1, 3, 3, 7];
    let c = |flags, seq, ack, win, options: &'static [u8]| {
        tcp_full(CLIENT_MAC, "10.20.0.50", 40000, "10.10.0.10", 80, TcpSeg { flags, seq, ack, win, options })
    };
    let s = |flags, seq, ack, win, options: &'static [u8]| {
        tcp_full(PROV_MAC, "10.10.0.10", 80, "10.20.0.50", 40000, TcpSeg { flags, seq, ack, win, options })
    };
    let opts: &'static [u8] = Box::leak(Box::new(opts));
    assert_eq!(fw.xdp(dvnt, &c(SYN, 1000, 0, 64240, opts)).0, PASS);
    assert_eq!(fw.xdp(mgmt, &s(SYNACK, 5000, 1001, 65160, opts)).0, PASS);
    assert_eq!(fw.xdp(dvnt, &c(ACK, 1001, 5001, 502, &[])).0, REDIRECT);
    let (srv, cli) = (ip("10.10.0.10"), ip("10.20.0.50"));
    let data = |seq| {
        let seg = TcpSeg { flags: ACK, seq, ack: 1001, win: 509, options: &[] };
        frames::ipv4(PROV_MAC, GW_MAC, srv, cli, 6, 64, DF, &frames::tcp_seg(srv, 80, cli, 40000, seg, &[1u8; 1000]))
    };
    assert_eq!(fw.xdp(mgmt, &data(5001)).0, REDIRECT);
    assert_eq!(fw.xdp(mgmt, &data(104001)).0, REDIRECT);
    assert_eq!(fw.xdp(dvnt, &c(ACK, 1001, 105001, 24000, &[])).0, REDIRECT);
    assert_eq!(fw.flows()[0].1.state, ct::CT_ESTABLISHED);
}

#[test]
fn a_blind_rst_or_fin_outside_the_window_kills_nothing() {
    in_fib_ns(|| {
        let cfg = example();
        let mut fw = Fw::new(&cfg, 1024);
        established(&mut fw);
        let mgmt = fw.mgmt;
        let rst = |flags, seq| {
            tcp_full(
                PROV_MAC,
                "10.10.0.10",
                80,
                "10.20.0.50",
                40000,
                TcpSeg { flags, seq, ack: 0, win: 0, options: &[] },
            )
        };
        for seq in [2_000_000_000u32, 105001 + 3_100_000, 105001u32.wrapping_sub(3_100_000), 0x8000_0000] {
            assert_eq!(fw.xdp(mgmt, &rst(ct::TCP_RST, seq)).0, DROP, "seq {seq}");
        }
        assert_eq!(fw.xdp(mgmt, &rst(ct::TCP_FIN | ACK, 900_000_000)).0, DROP, "a FIN far outside");
        assert_eq!(fw.drops(reason::TCP_WINDOW), 5);
        assert_eq!(fw.flows()[0].1.state, ct::CT_ESTABLISHED, "the connection lives");
        // Within the client's window (24000 << 7 = 3,072,000 past 105001): believed.
        assert_eq!(fw.xdp(mgmt, &rst(ct::TCP_RST, 105001 + 2_000_000)).0, PASS);
        assert_eq!(fw.flows()[0].1.state, ct::CT_CLOSED);
    });
}

#[test]
fn before_the_synack_only_an_rst_acknowledging_the_syn_closes() {
    in_fib_ns(|| {
        let cfg = example();
        let mut fw = Fw::new(&cfg, 1024);
        let (dvnt, mgmt) = (fw.dvnt, fw.mgmt);
        let syn = TcpSeg { flags: SYN, seq: 77, ack: 0, win: 1000, options: &[] };
        assert_eq!(fw.xdp(dvnt, &tcp_full(CLIENT_MAC, "10.20.0.50", 40000, "10.10.0.10", 80, syn)).0, PASS);
        let rst = |ack| {
            let seg = TcpSeg { flags: ct::TCP_RST | ACK, seq: 0, ack, win: 0, options: &[] };
            tcp_full(PROV_MAC, "10.10.0.10", 80, "10.20.0.50", 40000, seg)
        };
        assert_eq!(fw.xdp(mgmt, &rst(12345)).0, DROP);
        assert_eq!(fw.flows()[0].1.state, ct::CT_SYN_SENT);
        assert_eq!(fw.xdp(mgmt, &rst(78)).0, PASS, "port closed: RST/ACK of ISN + 1");
        assert_eq!(fw.flows()[0].1.state, ct::CT_CLOSED);
    });
}

// ------------------------------------------------------------ fragments

#[test]
fn later_fragments_follow_their_first_fragments_verdict() {
    in_fib_ns(|| {
        let cfg = example();
        let mut fw = Fw::new(&cfg, 1024);
        let (dvnt, up) = (fw.dvnt, fw.up);
        // A 3000-byte datagram from dvnt to the outside, in two fragments
        // (same IP id): the first with the UDP header, MF set.
        let whole = udp_sized(CLIENT_MAC, "10.20.0.50", 5000, "198.51.100.9", 9999, 3000, 0);
        let first =
            frames::ipv4(CLIENT_MAC, GW_MAC, ip("10.20.0.50"), ip("198.51.100.9"), 17, 64, MF, &whole[34..34 + 1480]);
        let later =
            frames::ipv4(CLIENT_MAC, GW_MAC, ip("10.20.0.50"), ip("198.51.100.9"), 17, 64, 185, &whole[34 + 1480..]);
        assert_eq!(fw.xdp(dvnt, &first).0, PASS);
        assert_eq!(fw.xdp(dvnt, &later).0, PASS, "allowed like its first fragment");
        // Inbound later fragments of a datagram whose first was never seen,
        // or was denied, go nowhere.
        let stray = frames::ipv4(UPSTREAM_MAC, GW_MAC, ip("198.51.100.9"), ip("10.20.0.50"), 17, 64, 185, &[0u8; 64]);
        assert_eq!(fw.xdp(up, &stray).0, DROP);
        let denied_first =
            frames::ipv4(UPSTREAM_MAC, GW_MAC, ip("198.51.100.9"), ip("10.20.0.50"), 17, 64, MF, &whole[34..34 + 1480]);
        assert_eq!(fw.xdp(up, &denied_first).0, DROP, "uplink -> segment is denied");
        assert_eq!(fw.xdp(up, &stray).0, DROP);
        assert_eq!(fw.drops(reason::FRAG_UNTRACKED), 2, "{:?}", fw.all_drops());
        // The reply to the tracked flow, fragmented: both parts arrive.
        let rwhole = udp_sized(UPSTREAM_MAC, "198.51.100.9", 9999, "10.20.0.50", 5000, 3000, 0);
        let rfirst = frames::ipv4(
            UPSTREAM_MAC,
            GW_MAC,
            ip("198.51.100.9"),
            ip("10.20.0.50"),
            17,
            64,
            MF,
            &rwhole[34..34 + 1480],
        );
        let rlater =
            frames::ipv4(UPSTREAM_MAC, GW_MAC, ip("198.51.100.9"), ip("10.20.0.50"), 17, 64, 185, &rwhole[34 + 1480..]);
        assert_eq!(fw.xdp(up, &rfirst).0, PASS);
        assert_eq!(fw.xdp(up, &rlater).0, PASS);
    });
}

#[test]
fn fragmented_replies_through_nat_are_translated_whole() {
    in_fib_ns(|| {
        let cfg = example();
        let mut fw = Fw::new(&cfg, 1024);
        fw.enable_nat(20000, 20009, &[]);
        let (dvnt, up) = (fw.dvnt, fw.up);
        let q = frame_udp(CLIENT_MAC, "10.20.0.50", 5353, "192.0.2.1", 53);
        assert_eq!(fw.xdp(dvnt, &q).0, PASS);
        // (The stack routes it; TC egress masquerades it.)
        let (v, sent) = fw.egress_from(dvnt, &q);
        assert_eq!(v, TC_OK);
        let oport = u16::from_be_bytes([sent[34], sent[35]]);
        assert_eq!(&sent[frames::IP + 12..frames::IP + 16], &[192, 0, 2, 2]);
        // A big answer to 192.0.2.2:oport, fragmented by the upstream.
        let whole = udp_sized(UPSTREAM_MAC, "192.0.2.1", 53, "192.0.2.2", oport, 3000, 0);
        let first =
            frames::ipv4(UPSTREAM_MAC, GW_MAC, ip("192.0.2.1"), ip("192.0.2.2"), 17, 64, MF, &whole[34..34 + 1480]);
        let later =
            frames::ipv4(UPSTREAM_MAC, GW_MAC, ip("192.0.2.1"), ip("192.0.2.2"), 17, 64, 185, &whole[34 + 1480..]);
        let (v, f1) = fw.xdp(up, &first);
        assert_eq!(v, PASS);
        assert_eq!(&f1[frames::IP + 16..frames::IP + 20], &[10, 20, 0, 50], "first fragment to the inside host");
        assert_eq!(u16::from_be_bytes([f1[36], f1[37]]), 5353);
        let (v, f2) = fw.xdp(up, &later);
        assert_eq!(v, PASS, "{:?}", fw.all_drops());
        assert_eq!(&f2[frames::IP + 16..frames::IP + 20], &[10, 20, 0, 50], "the later one too");
        assert!(frames::ip_checksum_ok(&f2));
        assert_eq!(&f2[34..], &later[34..], "payload untouched");
        // Outbound: the stack fragments a big datagram of the flow; TC
        // egress masquerades every fragment.
        let big = udp_sized(CLIENT_MAC, "10.20.0.50", 5353, "192.0.2.1", 53, 3000, 0);
        let o1 =
            frames::ipv4(CLIENT_MAC, UPSTREAM_MAC, ip("10.20.0.50"), ip("192.0.2.1"), 17, 63, MF, &big[34..34 + 1480]);
        let o2 =
            frames::ipv4(CLIENT_MAC, UPSTREAM_MAC, ip("10.20.0.50"), ip("192.0.2.1"), 17, 63, 185, &big[34 + 1480..]);
        let (v, s1) = fw.egress_from(dvnt, &o1);
        assert_eq!(v, TC_OK);
        assert_eq!(&s1[frames::IP + 12..frames::IP + 16], &[192, 0, 2, 2]);
        let (v, s2) = fw.egress_from(dvnt, &o2);
        assert_eq!(v, TC_OK);
        assert_eq!(&s2[frames::IP + 12..frames::IP + 16], &[192, 0, 2, 2], "the later fragment is masqueraded too");
        assert!(frames::ip_checksum_ok(&s2));
    });
}

// ------------------------------------------------------------ TC egress

#[test]
fn nothing_forwarded_leaves_without_a_tracked_connection() {
    in_fib_ns(|| {
        let cfg = example();
        let mut fw = Fw::new(&cfg, 1024);
        let (dvnt, up) = (fw.dvnt, fw.up);
        // Something reached the stack unjudged (an interface coresvc does
        // not manage, a race): it does not leave through coresvc's.
        let stray = frame_udp(CLIENT_MAC, "10.20.0.50", 5000, "198.51.100.9", 9999);
        assert_eq!(fw.egress_from(dvnt, &stray).0, TC_SHOT);
        assert_eq!(fw.drops(reason::EGRESS_UNTRACKED), 1);
        // Judged and tracked at ingress: it leaves.
        assert_eq!(fw.xdp(dvnt, &stray).0, PASS);
        assert_eq!(fw.egress_from(dvnt, &stray).0, TC_OK);
        // A router's ICMP error about it, forwarded to the inside host.
        let err = icmp_error(UPSTREAM_MAC, "192.0.2.1", "10.20.0.50", &stray);
        assert_eq!(fw.egress_from(up, &err).0, TC_OK, "related");
        // The gateway's own packets are not forwarded ones.
        let own = frame_udp(CLIENT_MAC, "10.20.0.1", 53, "10.20.0.50", 5000);
        assert_eq!(fw.egress_from(0, &own).0, TC_OK);
        assert_eq!(fw.drops(reason::EGRESS_UNTRACKED), 1);
    });
}

// ------------------------------------------------------------ exhaustion

#[test]
fn one_host_cannot_take_the_connection_table() {
    in_fib_ns(|| {
        let cfg = example();
        let mut fw = Fw::new(&cfg, 256);
        fw.settings(|s| s.flow_quota = 8);
        let dvnt = fw.dvnt;
        let mut passed = 0;
        for port in 0..40u16 {
            let f = frame_udp(CLIENT_MAC, "10.20.0.50", 30000 + port, "198.51.100.9", 9999);
            if fw.xdp(dvnt, &f).0 == PASS {
                passed += 1;
            }
        }
        assert_eq!(passed, 8, "{:?}", fw.all_drops());
        assert_eq!(fw.drops(reason::FLOW_QUOTA), 32);
        // Another host is not affected.
        assert_eq!(fw.xdp(dvnt, &frame_udp(CLIENT_MAC, "10.20.0.51", 30000, "198.51.100.9", 9999)).0, PASS);
        // Once nobody has counted again for a minute (the agent is gone),
        // the host's count is halved rather than kept forever.
        let m: aya::maps::HashMap<_, [u8; 4], coresvc_maps_schema::SrcUse> =
            aya::maps::HashMap::try_from(fw.ebpf.map_mut("SRC_QUOTA").unwrap()).unwrap();
        let mut m = m;
        let mut u = m.get(&[10, 20, 0, 50], 0).unwrap();
        assert_eq!(u.flows, 8);
        u.reconciled_ns = 1;
        m.insert([10, 20, 0, 50], u, 0).unwrap();
        let f = frame_udp(CLIENT_MAC, "10.20.0.50", 31000, "198.51.100.9", 9999);
        assert_eq!(fw.xdp(dvnt, &f).0, PASS);
    });
}

#[test]
fn a_full_table_makes_room_for_new_connections_by_itself() {
    in_fib_ns(|| {
        let cfg = example();
        // No quota: 64 hosts fill a 64-entry table (an LRU table).
        let mut fw = Fw::new(&cfg, 64);
        let dvnt = fw.dvnt;
        for h in 0..64u8 {
            let src = format!("10.20.0.{}", 100 + h);
            assert_eq!(fw.xdp(dvnt, &frame_udp(CLIENT_MAC, &src, 5000, "198.51.100.9", 9999)).0, PASS);
        }
        // A new connection still gets an entry (the least recently used
        // makes way), also with no agent to collect anything.
        let syn = frame_tcp(CLIENT_MAC, "10.20.0.50", 40000, "198.51.100.9", 443, SYN);
        assert_eq!(fw.xdp(dvnt, &syn).0, PASS);
        assert_eq!(fw.drops(reason::CT_FULL), 0);
        assert!(fw.flows().iter().any(|(k, _)| k.proto == 6), "tracked");
        // The gateway's own connections too.
        let query = frames::ipv4(
            GW_MAC,
            UPSTREAM_MAC,
            ip("192.0.2.2"),
            ip("192.0.2.1"),
            17,
            64,
            0,
            &frames::udp(ip("192.0.2.2"), 33333, ip("192.0.2.1"), 53, b"q"),
        );
        assert_eq!(fw.egress(&query), TC_OK);
        assert!(fw.flows().iter().any(|(k, e)| e.flags & ct::CT_F_LOCAL != 0 && (k.port_a == 53 || k.port_b == 53)));
    });
}

#[test]
fn one_host_cannot_take_every_nat_port() {
    in_fib_ns(|| {
        let cfg = example();
        let mut fw = Fw::new(&cfg, 1024);
        fw.enable_nat(20000, 20099, &[]);
        fw.settings(|s| s.nat_port_quota = 4);
        let dvnt = fw.dvnt;
        let mut passed = 0;
        for port in 0..10u16 {
            let f = frame_udp(CLIENT_MAC, "10.20.0.50", 40000 + port, "192.0.2.1", 53);
            if fw.xdp(dvnt, &f).0 == PASS {
                passed += 1;
            }
        }
        assert_eq!(passed, 4, "{:?}", fw.all_drops());
        assert_eq!(fw.drops(reason::NAT_QUOTA), 6);
        // The same inside port to another destination keeps its binding.
        assert_eq!(fw.xdp(dvnt, &frame_udp(CLIENT_MAC, "10.20.0.50", 40000, "192.0.2.1", 123)).0, PASS);
        assert_eq!(fw.xdp(dvnt, &frame_udp(CLIENT_MAC, "10.20.0.51", 40000, "192.0.2.1", 53)).0, PASS, "another host");
    });
}
