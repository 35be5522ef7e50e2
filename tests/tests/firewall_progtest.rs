//! BPF_PROG_TEST_RUN of every firewall, conntrack and fast-path verdict.
//!
//! The programs look routes up in the kernel's FIB, so each test runs in a
//! network namespace of its own with veth interfaces standing in for the
//! segments and the uplink (addresses, routes and permanent neighbour
//! entries), and feeds frames as if they arrived on one of them.

mod support;

use coresvc_common::conntrack as ct;
use coresvc_lab::frames;
use coresvc_maps_schema::reason;
use support::*;

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
