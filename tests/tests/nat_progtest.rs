//! BPF_PROG_TEST_RUN of NAT: masquerade both ways (slow path and fast
//! path), endpoint-independent bindings and port collisions, ICMP errors with
//! their quoted packets, port forwards and hairpinning. Every translated
//! packet is read back by a parser that checks every checksum.

mod support;

use coresvc_common::conntrack as ct;
use coresvc_lab::frames::{self, Parsed};
use coresvc_maps_schema::{NAT_DIR_IN, NAT_DIR_OUT, NAT_DNAT, NAT_HAIRPIN, NAT_SNAT, NatKey, reason};
use support::*;

const CLIENT2_MAC: [u8; 6] = [0x02, 0, 0, 0x14, 0, 0x33];
const GW: [u8; 6] = [0x02, 0xff, 0, 0, 0, 1];

fn parse(f: &[u8]) -> Parsed {
    let p = frames::parse(f);
    assert!(p.all_ok(), "every checksum right: {p:?}");
    p
}

fn tcp_from(mac: [u8; 6], src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Vec<u8> {
    frame_tcp(mac, src, sport, dst, dport, flags)
}

/// A ping (echo request, or reply with `reply`) with identifier `id`.
fn echo(mac: [u8; 6], src: &str, dst: &str, id: u16, reply: bool) -> Vec<u8> {
    let [a, b] = id.to_be_bytes();
    let typ = if reply { 0 } else { 8 };
    frames::ipv4(mac, GW, ip(src), ip(dst), 1, 64, 0, &frames::icmp(typ, 0, [a, b, 0, 1], b"ping"))
}

/// An ICMP error of `typ`/`code` from `from`, quoting all of `pkt`'s IP packet.
fn icmp_error(from: &str, to: &str, typ: u8, code: u8, rest: [u8; 4], pkt: &[u8]) -> Vec<u8> {
    let quoted = &pkt[frames::IP..];
    frames::ipv4(UPSTREAM_MAC, GW, ip(from), ip(to), 1, 64, 0, &frames::icmp(typ, code, rest, quoted))
}

fn nat_fw(min: u16, max: u16, forwards: &[(u16, u8, &str, u16)], conntrack_max: u32) -> Fw {
    let mut fw = Fw::new(&example(), conntrack_max);
    fw.enable_nat(min, max, forwards);
    fw
}

#[test]
fn masquerade_translates_both_ways_in_the_slow_and_the_fast_path() {
    in_fib_ns(|| {
        let mut fw = nat_fw(20000, 32767, &[], 1024);
        let (dvnt, up) = (fw.dvnt, fw.up);
        // The first packet goes through the stack untouched; the binding and
        // the connection are made, the source is rewritten after routing.
        let syn = tcp_from(CLIENT_MAC, "10.20.0.50", 21000, "192.0.2.1", 443, SYN);
        let (v, out) = fw.xdp(dvnt, &syn);
        assert_eq!(v, PASS);
        assert_eq!(out, syn, "ingress leaves the source alone");
        let flows = fw.flows();
        assert_eq!(flows.len(), 1);
        let e = flows[0].1;
        assert_eq!((e.nat_kind, e.nat_addr, e.snat_port), (NAT_SNAT, [192, 0, 2, 2], 21000), "port preserved");
        assert_eq!(fw.bindings().len(), 2, "one pair: inside -> outside and back");
        let (_, sent) = fw.forwarded(&syn);
        let s = parse(&sent);
        assert_eq!((s.src, s.sport, s.dst, s.dport), (ip("192.0.2.2"), 21000, ip("192.0.2.1"), 443));
        // The answer comes back to the uplink address and is translated before routing.
        let (v, out) = fw.xdp(up, &tcp_from(UPSTREAM_MAC, "192.0.2.1", 443, "192.0.2.2", 21000, SYNACK));
        assert_eq!(v, PASS);
        let r = parse(&out);
        assert_eq!((r.src, r.sport, r.dst, r.dport), (ip("192.0.2.1"), 443, ip("10.20.0.50"), 21000));
        // Established: both directions are translated and forwarded from XDP.
        let (v, out) = fw.xdp(dvnt, &tcp_from(CLIENT_MAC, "10.20.0.50", 21000, "192.0.2.1", 443, ACK));
        assert_eq!(v, REDIRECT);
        let f = parse(&out);
        assert_eq!((f.src, f.sport, f.ttl), (ip("192.0.2.2"), 21000, 63));
        assert_eq!(&out[0..6], &UPSTREAM_MAC);
        let (v, out) = fw.xdp(up, &tcp_from(UPSTREAM_MAC, "192.0.2.1", 443, "192.0.2.2", 21000, ACK));
        assert_eq!(v, REDIRECT);
        let b = parse(&out);
        assert_eq!((b.dst, b.dport), (ip("10.20.0.50"), 21000));
        assert_eq!(&out[0..6], &CLIENT_MAC);
        assert_eq!(fw.flows()[0].1.state, ct::CT_ESTABLISHED);
    });
}

#[test]
fn clients_with_the_same_source_port_get_distinct_outside_ports_kept_for_every_destination() {
    in_fib_ns(|| {
        let mut fw = nat_fw(20000, 32767, &[], 1024);
        let (dvnt, up) = (fw.dvnt, fw.up);
        let mut outside = Vec::new();
        for (mac, client) in [(CLIENT_MAC, "10.20.0.50"), (CLIENT2_MAC, "10.20.0.51")] {
            let q = frame_udp(mac, client, 21000, "192.0.2.1", 53);
            assert_eq!(fw.xdp(dvnt, &q).0, PASS);
            let s = parse(&fw.forwarded(&q).1);
            assert_eq!(s.src, ip("192.0.2.2"));
            assert!((20000..=32767).contains(&s.sport), "{}", s.sport);
            outside.push(s.sport);
        }
        assert_eq!(outside[0], 21000, "the first keeps its port");
        assert_ne!(outside[0], outside[1], "no collision");
        // Each answer reaches its own client.
        for (port, client) in [(outside[0], "10.20.0.50"), (outside[1], "10.20.0.51")] {
            let (v, out) = fw.xdp(up, &frame_udp(UPSTREAM_MAC, "192.0.2.1", 53, "192.0.2.2", port));
            assert!(v == PASS || v == REDIRECT, "{v} {client} {:?}", fw.all_drops());
            let a = parse(&out);
            assert_eq!((a.dst, a.dport), (ip(client), 21000));
        }
        // Endpoint-independent: the same inside endpoint keeps its outside
        // port towards another destination.
        let q = frame_udp(CLIENT2_MAC, "10.20.0.51", 21000, "198.51.100.7", 3478);
        assert_eq!(fw.xdp(dvnt, &q).0, PASS);
        assert_eq!(parse(&fw.forwarded(&q).1).sport, outside[1]);
        assert_eq!(fw.bindings().len(), 4, "two pairs for two inside endpoints");
        // A source port outside the range is mapped into it.
        let q = frame_udp(CLIENT_MAC, "10.20.0.50", 40000, "192.0.2.1", 53);
        assert_eq!(fw.xdp(dvnt, &q).0, PASS);
        let p = parse(&fw.forwarded(&q).1).sport;
        assert!((20000..=32767).contains(&p) && !outside.contains(&p), "{p}");
    });
}

#[test]
fn an_exhausted_port_range_refuses_the_flow_and_counts_it() {
    in_fib_ns(|| {
        let mut fw = nat_fw(21000, 21000, &[], 1024);
        let dvnt = fw.dvnt;
        assert_eq!(fw.xdp(dvnt, &tcp_from(CLIENT_MAC, "10.20.0.50", 21000, "192.0.2.1", 443, SYN)).0, PASS);
        let (v, _) = fw.xdp(dvnt, &tcp_from(CLIENT2_MAC, "10.20.0.51", 21000, "192.0.2.1", 443, SYN));
        assert_eq!(v, DROP, "never a collision");
        assert_eq!(fw.drops(reason::NAT_EXHAUSTED), 1);
        assert_eq!(fw.flows().len(), 1, "the refused flow leaves no connection");
        assert_eq!(fw.bindings().len(), 2, "and no binding");
        // The first client's other connections share its binding.
        let (v, _) = fw.xdp(dvnt, &tcp_from(CLIENT_MAC, "10.20.0.50", 21000, "198.51.100.7", 80, SYN));
        assert_eq!(v, PASS);
    });
}

#[test]
fn a_refused_connection_leaves_no_binding_behind() {
    in_fib_ns(|| {
        let mut fw = nat_fw(20000, 32767, &[], 1024);
        fw.settings(|s| s.flow_quota = 1);
        let dvnt = fw.dvnt;
        assert_eq!(fw.xdp(dvnt, &tcp_from(CLIENT_MAC, "10.20.0.50", 21000, "192.0.2.1", 443, SYN)).0, PASS);
        // The host's second connection, from another port, is over its quota.
        let (v, _) = fw.xdp(dvnt, &tcp_from(CLIENT_MAC, "10.20.0.50", 22000, "192.0.2.1", 443, SYN));
        assert_eq!(v, DROP);
        assert_eq!(fw.drops(reason::FLOW_QUOTA), 1);
        let b = fw.bindings();
        assert_eq!(b.len(), 2, "only the tracked connection's pair: {b:?}");
        assert!(b.iter().all(|(k, v)| k.port != 22000 && v.port != 22000));
    });
}

#[test]
fn a_half_made_binding_is_mended_with_its_port() {
    in_fib_ns(|| {
        let mut fw = nat_fw(20000, 32767, &[], 1024);
        let dvnt = fw.dvnt;
        let q = frame_udp(CLIENT_MAC, "10.20.0.50", 40000, "192.0.2.1", 53);
        assert_eq!(fw.xdp(dvnt, &q).0, PASS);
        let port = parse(&fw.forwarded(&q).1).sport;
        fw.remove_binding(NatKey { addr: [192, 0, 2, 2], port, proto: 17, dir: NAT_DIR_IN });
        // A new connection of the same inside endpoint finds the OUT half.
        let q2 = frame_udp(CLIENT_MAC, "10.20.0.50", 40000, "198.51.100.7", 53);
        assert_eq!(fw.xdp(dvnt, &q2).0, PASS);
        assert_eq!(parse(&fw.forwarded(&q2).1).sport, port, "same outside port");
        let b = fw.bindings();
        assert_eq!(b.len(), 2, "{b:?}");
        let inb = b.iter().find(|(k, _)| k.dir == NAT_DIR_IN).unwrap();
        assert_eq!((inb.0.port, inb.1.addr, inb.1.port), (port, [10, 20, 0, 50], 40000));
        assert!(b.iter().any(|(k, v)| k.dir == NAT_DIR_OUT && v.port == port));
    });
}

#[test]
fn pings_are_masqueraded_by_identifier() {
    in_fib_ns(|| {
        let mut fw = nat_fw(20000, 32767, &[], 1024);
        let (dvnt, up) = (fw.dvnt, fw.up);
        let mut ids = Vec::new();
        for (mac, client) in [(CLIENT_MAC, "10.20.0.50"), (CLIENT2_MAC, "10.20.0.51")] {
            let req = echo(mac, client, "192.0.2.1", 7, false);
            assert_eq!(fw.xdp(dvnt, &req).0, PASS);
            let s = parse(&fw.forwarded(&req).1);
            assert_eq!((s.src, s.icmp_type), (ip("192.0.2.2"), 8));
            ids.push(s.sport);
        }
        assert_ne!(ids[0], ids[1], "two clients, one identifier: distinct outside identifiers");
        for (id, client) in [(ids[0], "10.20.0.50"), (ids[1], "10.20.0.51")] {
            let (v, out) = fw.xdp(up, &echo(UPSTREAM_MAC, "192.0.2.1", "192.0.2.2", id, true));
            assert!(v == PASS || v == REDIRECT, "{v} {client} {:?}", fw.all_drops());
            let r = parse(&out);
            assert_eq!((r.dst, r.sport, r.icmp_type), (ip(client), 7, 0));
        }
    });
}

#[test]
fn icmp_errors_about_masqueraded_flows_reach_the_inside_host_translated() {
    in_fib_ns(|| {
        let mut fw = nat_fw(20000, 32767, &[], 1024);
        let (dvnt, up) = (fw.dvnt, fw.up);
        // A traceroute probe (UDP) and a TCP connection.
        let probe = frame_udp(CLIENT_MAC, "10.20.0.50", 40000, "192.0.2.1", 33434);
        assert_eq!(fw.xdp(dvnt, &probe).0, PASS);
        let (_, probe_out) = fw.forwarded(&probe);
        let syn = tcp_from(CLIENT_MAC, "10.20.0.50", 21000, "192.0.2.1", 443, SYN);
        assert_eq!(fw.xdp(dvnt, &syn).0, PASS);
        let (_, syn_out) = fw.forwarded(&syn);
        let ping = echo(CLIENT_MAC, "10.20.0.50", "192.0.2.1", 9, false);
        assert_eq!(fw.xdp(dvnt, &ping).0, PASS);
        let (_, ping_out) = fw.forwarded(&ping);
        type Case<'a> = (&'a str, u8, u8, [u8; 4], &'a [u8], u16);
        let cases: [Case; 5] = [
            ("time exceeded (traceroute hop)", 11, 0, [0; 4], &probe_out, 40000),
            ("port unreachable (traceroute end)", 3, 3, [0; 4], &probe_out, 40000),
            ("fragmentation needed (path MTU)", 3, 4, [0, 0, 0x05, 0x78], &syn_out, 21000),
            ("host unreachable about a connection", 3, 1, [0; 4], &syn_out, 21000),
            ("time exceeded about a ping", 11, 0, [0; 4], &ping_out, 9),
        ];
        for (what, typ, code, rest, quoted, inside_port) in cases {
            // From a router on the way, not the destination.
            let err = icmp_error("198.51.100.1", "192.0.2.2", typ, code, rest, quoted);
            let (v, out) = fw.xdp(up, &err);
            assert_eq!(v, PASS, "{what}");
            let e = parse(&out);
            assert_eq!((e.src, e.dst, e.icmp_type), (ip("198.51.100.1"), ip("10.20.0.50"), typ), "{what}");
            let inner = e.inner.as_ref().unwrap();
            assert_eq!((inner.src, inner.sport, inner.dst), (ip("10.20.0.50"), inside_port, ip("192.0.2.1")), "{what}");
            assert_eq!(inner.l4_ok, Some(true), "{what}: the quoted packet is whole and its checksum right");
            assert_eq!(&out[frames::IP + 24..frames::IP + 28], &rest, "{what}: the MTU is kept");
        }
        // Only the 8 quoted bytes every router must send: still translated.
        let short = icmp_error("198.51.100.1", "192.0.2.2", 11, 0, [0; 4], &probe_out[..frames::IP + 28]);
        let e = parse(&fw.xdp(up, &short).1);
        assert_eq!((e.dst, e.inner.unwrap().sport), (ip("10.20.0.50"), 40000));
        // An error quoting a port nobody holds goes nowhere.
        let mut stranger = probe_out.clone();
        stranger[frames::IP + 20..frames::IP + 22].copy_from_slice(&31999u16.to_be_bytes());
        let err = icmp_error("198.51.100.1", "192.0.2.2", 11, 0, [0; 4], &stranger);
        assert_eq!(fw.xdp(up, &err).0, DROP);
    });
}

#[test]
fn port_forwards_reach_the_inside_host_and_answer_from_the_uplink_address() {
    in_fib_ns(|| {
        let mut fw = nat_fw(20000, 32767, &[(8080, 6, "10.10.0.10", 80)], 1024);
        let (mgmt, up) = (fw.mgmt, fw.up);
        let (v, out) = fw.xdp(up, &tcp_from(UPSTREAM_MAC, "192.0.2.1", 50000, "192.0.2.2", 8080, SYN));
        assert_eq!(v, PASS);
        let s = parse(&out);
        assert_eq!((s.src, s.dst, s.dport), (ip("192.0.2.1"), ip("10.10.0.10"), 80));
        let e = fw.flows()[0].1;
        assert_eq!((e.nat_kind, e.dnat_port), (NAT_DNAT, 8080));
        // The inside host answers; it leaves as the uplink address and port.
        let answer = tcp_from(PROV_MAC, "10.10.0.10", 80, "192.0.2.1", 50000, SYNACK);
        assert_eq!(fw.xdp(mgmt, &answer).0, PASS);
        let a = parse(&fw.forwarded(&answer).1);
        assert_eq!((a.src, a.sport, a.dst, a.dport), (ip("192.0.2.2"), 8080, ip("192.0.2.1"), 50000));
        // Established: the fast path translates.
        let (v, out) = fw.xdp(up, &tcp_from(UPSTREAM_MAC, "192.0.2.1", 50000, "192.0.2.2", 8080, ACK));
        assert_eq!(v, REDIRECT);
        let f = parse(&out);
        assert_eq!((f.dst, f.dport), (ip("10.10.0.10"), 80));
        assert_eq!(&out[0..6], &PROV_MAC);
        let (v, out) = fw.xdp(mgmt, &tcp_from(PROV_MAC, "10.10.0.10", 80, "192.0.2.1", 50000, ACK));
        assert_eq!(v, REDIRECT);
        let b = parse(&out);
        assert_eq!((b.src, b.sport), (ip("192.0.2.2"), 8080));
        // Ports nobody forwards stay closed; UDP is not forwarded by a TCP forward.
        assert_eq!(fw.xdp(up, &tcp_from(UPSTREAM_MAC, "192.0.2.1", 50001, "192.0.2.2", 8081, SYN)).0, DROP);
        assert_eq!(fw.xdp(up, &frame_udp(UPSTREAM_MAC, "192.0.2.1", 50001, "192.0.2.2", 8080)).0, DROP);
    });
}

#[test]
fn a_segment_host_reaches_a_forwarded_port_through_the_uplink_address() {
    in_fib_ns(|| {
        let mut fw = nat_fw(20000, 32767, &[(8080, 6, "10.10.0.10", 80)], 1024);
        let (dvnt, mgmt) = (fw.dvnt, fw.mgmt);
        // The client addresses the uplink address; the forward sends it to the
        // inside host, seen as coming from the uplink address so the answer
        // comes back through the gateway.
        let syn = tcp_from(CLIENT_MAC, "10.20.0.50", 21000, "192.0.2.2", 8080, SYN);
        let (v, out) = fw.xdp(dvnt, &syn);
        assert_eq!(v, PASS);
        let d = parse(&out);
        assert_eq!((d.dst, d.dport), (ip("10.10.0.10"), 80));
        assert_eq!(fw.flows()[0].1.nat_kind, NAT_HAIRPIN);
        let s = parse(&fw.forwarded(&out).1);
        assert_eq!((s.src, s.sport, s.dst, s.dport), (ip("192.0.2.2"), 21000, ip("10.10.0.10"), 80));
        // The answer to the uplink address goes back to the client, from the
        // address and port it addressed.
        let answer = tcp_from(PROV_MAC, "10.10.0.10", 80, "192.0.2.2", 21000, SYNACK);
        let (v, out) = fw.xdp(mgmt, &answer);
        assert_eq!(v, PASS);
        let a = parse(&out);
        assert_eq!((a.dst, a.dport), (ip("10.20.0.50"), 21000));
        let a = parse(&fw.forwarded(&out).1);
        assert_eq!((a.src, a.sport, a.dst, a.dport), (ip("192.0.2.2"), 8080, ip("10.20.0.50"), 21000));
        // And in the fast path once established.
        let (v, out) = fw.xdp(dvnt, &tcp_from(CLIENT_MAC, "10.20.0.50", 21000, "192.0.2.2", 8080, ACK));
        assert_eq!(v, REDIRECT);
        let f = parse(&out);
        assert_eq!((f.src, f.sport, f.dst, f.dport), (ip("192.0.2.2"), 21000, ip("10.10.0.10"), 80));
        let (v, out) = fw.xdp(mgmt, &tcp_from(PROV_MAC, "10.10.0.10", 80, "192.0.2.2", 21000, ACK));
        assert_eq!(v, REDIRECT);
        let b = parse(&out);
        assert_eq!((b.src, b.sport, b.dst, b.dport), (ip("192.0.2.2"), 8080, ip("10.20.0.50"), 21000));
    });
}

#[test]
fn a_datagram_no_longer_than_its_header_is_translated() {
    in_fib_ns(|| {
        let mut fw = nat_fw(20000, 32767, &[], 1024);
        let (dvnt, up) = (fw.dvnt, fw.up);
        let (c, u) = (ip("10.20.0.50"), ip("192.0.2.1"));
        let empty = frames::ipv4(CLIENT_MAC, GW, c, u, 17, 64, 0, &frames::udp(c, 21000, u, 9, b""));
        assert_eq!(fw.xdp(dvnt, &empty).0, PASS);
        assert_eq!(parse(&fw.forwarded(&empty).1).src, ip("192.0.2.2"));
        let g = ip("192.0.2.2");
        let back = frames::ipv4(UPSTREAM_MAC, GW, u, g, 17, 64, 0, &frames::udp(u, 9, g, 21000, b""));
        let (v, out) = fw.xdp(up, &back);
        assert!(v == PASS || v == REDIRECT, "{v} {:?}", fw.all_drops());
        assert_eq!(parse(&out).dst, c);
    });
}

#[test]
fn icmp_errors_from_inside_about_translated_flows_leave_with_the_outside_addresses() {
    in_fib_ns(|| {
        let mut fw = nat_fw(20000, 32767, &[(7071, 17, "10.10.0.10", 7001)], 1024);
        let (mgmt, dvnt, up) = (fw.mgmt, fw.dvnt, fw.up);
        // A datagram to a forwarded port nobody listens on: the inside host
        // answers port unreachable, quoting the datagram as it got it.
        let (_, fwd) = fw.xdp(up, &frame_udp(UPSTREAM_MAC, "192.0.2.1", 40000, "192.0.2.2", 7071));
        let unreachable = frames::ipv4(
            PROV_MAC,
            GW,
            ip("10.10.0.10"),
            ip("192.0.2.1"),
            1,
            64,
            0,
            &frames::icmp(3, 3, [0; 4], &fwd[frames::IP..]),
        );
        assert_eq!(fw.xdp(mgmt, &unreachable).0, PASS, "related to a tracked flow");
        let e = parse(&fw.forwarded(&unreachable).1);
        assert_eq!((e.src, e.dst), (ip("192.0.2.2"), ip("192.0.2.1")), "no inside address leaves");
        let q = e.inner.unwrap();
        assert_eq!((q.src, q.sport, q.dst, q.dport), (ip("192.0.2.1"), 40000, ip("192.0.2.2"), 7071));
        assert_eq!(q.l4_ok, Some(true));

        // A masqueraded client refusing an answer (its socket closed).
        let q = frame_udp(CLIENT_MAC, "10.20.0.50", 21000, "192.0.2.1", 53);
        assert_eq!(fw.xdp(dvnt, &q).0, PASS);
        let (_, answer) = fw.xdp(up, &frame_udp(UPSTREAM_MAC, "192.0.2.1", 53, "192.0.2.2", 21000));
        let refusal = frames::ipv4(
            CLIENT_MAC,
            GW,
            ip("10.20.0.50"),
            ip("192.0.2.1"),
            1,
            64,
            0,
            &frames::icmp(3, 3, [0; 4], &answer[frames::IP..]),
        );
        assert_eq!(fw.xdp(dvnt, &refusal).0, PASS);
        let e = parse(&fw.forwarded(&refusal).1);
        assert_eq!(e.src, ip("192.0.2.2"));
        let q = e.inner.unwrap();
        assert_eq!((q.src, q.sport, q.dst, q.dport), (ip("192.0.2.1"), 53, ip("192.0.2.2"), 21000));
    });
}
