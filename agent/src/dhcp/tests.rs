//! The state machine without sockets: requests as bytes in, replies,
//! journal records and DNS effects out (RFC 2131 §4.3 case by case).

use std::{net::Ipv4Addr, path::Path};

use dhcproto::{
    Decodable as _, Decoder, Encodable as _, Encoder,
    v4::{
        DhcpOption, Flags, Message, MessageType, OptionCode, UnknownOption,
        relay::{RelayAgentInformation, RelayCode, RelayInfo},
    },
};

use super::{
    journal::{self, RecordState},
    leases::{DECLINE_QUARANTINE_SECS, State},
    server::{Dest, Effect, Outcome, Server},
};
use crate::config::Config;

const T0: u64 = 1_800_000_000;
const DVNT: usize = 1;
const DVNTM: usize = 2;
const MGMT: usize = 0;
const SRV: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 1);

fn config() -> Config {
    Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/coresvc.toml")).unwrap()
}

fn server() -> Server {
    Server::new(&config(), Vec::new())
}

fn mac(n: u8) -> [u8; 6] {
    [2, 0, 0, 0x14, 0, n]
}

fn msg(kind: MessageType, hw: [u8; 6]) -> Message {
    let mut m = Message::default();
    m.set_chaddr(&hw).set_xid(0x1234_0000 + u32::from(hw[5]));
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    m.opts_mut().insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::DomainName,
    ]));
    m
}

fn bytes(m: &Message) -> Vec<u8> {
    let mut b = Vec::new();
    m.encode(&mut Encoder::new(&mut b)).unwrap();
    b
}

/// Runs `m` as if it came from its relay (giaddr), else from a client
/// without an address.
fn run(s: &mut Server, seg: usize, m: &Message, now: u64) -> (Outcome, Option<Message>) {
    run_from(s, seg, m.giaddr(), m, now)
}

fn run_from(s: &mut Server, seg: usize, source: Ipv4Addr, m: &Message, now: u64) -> (Outcome, Option<Message>) {
    let out = s.handle(Some(seg), source, &bytes(m), now);
    let reply = out.reply.as_ref().map(|r| Message::decode(&mut Decoder::new(&r.bytes)).unwrap());
    (out, reply)
}

fn kind(m: &Message) -> MessageType {
    m.opts().msg_type().unwrap()
}

/// DISCOVER, then REQUEST of the offered address: the ACKed address.
fn dora(s: &mut Server, seg: usize, hw: [u8; 6], now: u64) -> (Ipv4Addr, Outcome) {
    let (_, offer) = run(s, seg, &msg(MessageType::Discover, hw), now);
    let offer = offer.expect("an offer");
    assert_eq!(kind(&offer), MessageType::Offer);
    let sid = s.segments[seg].server_id;
    let mut req = msg(MessageType::Request, hw);
    req.opts_mut().insert(DhcpOption::ServerIdentifier(sid));
    req.opts_mut().insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
    let (out, ack) = run(s, seg, &req, now);
    let ack = ack.expect("an ack");
    assert_eq!(kind(&ack), MessageType::Ack, "{ack}");
    assert_eq!(ack.yiaddr(), offer.yiaddr());
    (ack.yiaddr(), out)
}

#[test]
fn four_way_exchange_gives_a_pool_address_with_the_options() {
    let mut s = server();
    let (_, offer) = run(&mut s, DVNT, &msg(MessageType::Discover, mac(1)), T0);
    let offer = offer.unwrap();
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 20, 0, 100));
    let o = offer.opts();
    assert_eq!(o.get(OptionCode::SubnetMask), Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0))));
    assert_eq!(o.get(OptionCode::Router), Some(&DhcpOption::Router(vec![SRV])));
    assert_eq!(o.get(OptionCode::DomainNameServer), Some(&DhcpOption::DomainNameServer(vec![SRV])));
    assert_eq!(o.get(OptionCode::DomainName), Some(&DhcpOption::DomainName("dvnt.deevnet.net".into())));
    assert!(o.get(OptionCode::DomainSearch).is_some());
    assert_eq!(o.get(OptionCode::ServerIdentifier), Some(&DhcpOption::ServerIdentifier(SRV)));
    assert_eq!(o.get(OptionCode::AddressLeaseTime), Some(&DhcpOption::AddressLeaseTime(3600)));
    assert_eq!(o.get(OptionCode::Renewal), Some(&DhcpOption::Renewal(1800)));
    assert_eq!(o.get(OptionCode::Rebinding), Some(&DhcpOption::Rebinding(3150)));
    // The configured option 252 for every segment.
    assert!(matches!(o.get(OptionCode::from(252)), Some(DhcpOption::Unknown(u)) if u.data().starts_with(b"http://")));
    // No flag, no address: unicast to the hardware address (RFC 2131 §4.1).
    let (out, ack) = {
        let mut req = msg(MessageType::Request, mac(1));
        req.opts_mut().insert(DhcpOption::ServerIdentifier(SRV));
        req.opts_mut().insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
        run(&mut s, DVNT, &req, T0)
    };
    assert_eq!(kind(&ack.unwrap()), MessageType::Ack);
    assert_eq!(out.reply.as_ref().unwrap().dest, Dest::Hardware { ip: offer.yiaddr(), hw: mac(1) });
    assert_eq!(out.records.len(), 1, "an ACK is journaled");
    let r = &out.records[0];
    assert_eq!(
        (r.addr, r.state, r.expires, r.segment.as_str()),
        (offer.yiaddr(), RecordState::Bound, T0 + 3600, "dvnt")
    );
    // dvntm's pool has its own search list (RFC 3397), dvnt's is the zone.
    let search = |m: &Message| match m.opts().get(OptionCode::DomainSearch) {
        Some(DhcpOption::DomainSearch(n)) => n.iter().map(ToString::to_string).collect::<Vec<_>>(),
        o => panic!("{o:?}"),
    };
    assert_eq!(search(&offer), ["dvnt.deevnet.net."]);
    let (_, o) = run(&mut s, DVNTM, &msg(MessageType::Discover, mac(1)), T0);
    assert_eq!(search(&o.unwrap()), ["dvntm.deevnet.net.", "mgmt.deevnet.net."]);
    // The pool's own lease time on dvntm (30m).
    let (a, out) = dora(&mut s, DVNTM, mac(1), T0);
    assert_eq!(a, Ipv4Addr::new(10, 30, 0, 100));
    assert_eq!(out.records[0].expires, T0 + 1800);
    assert_eq!((s.counters.discovers, s.counters.offers, s.counters.acks), (3, 3, 2));
}

#[test]
fn the_same_client_gets_the_same_address_back() {
    let mut s = server();
    let (a1, _) = dora(&mut s, DVNT, mac(1), T0);
    let (a2, _) = dora(&mut s, DVNT, mac(2), T0);
    assert_ne!(a1, a2);
    // Again while bound, after a release, and after expiry.
    assert_eq!(dora(&mut s, DVNT, mac(1), T0 + 10).0, a1);
    let mut rel = msg(MessageType::Release, mac(1));
    rel.set_ciaddr(a1);
    rel.opts_mut().insert(DhcpOption::ServerIdentifier(SRV));
    let (out, reply) = run(&mut s, DVNT, &rel, T0 + 20);
    assert!(reply.is_none());
    assert_eq!(out.records[0].state, RecordState::Released);
    assert_eq!(s.leases.get(a1).unwrap().state, State::Released);
    // A new client takes a never-used address, not the released one.
    assert_ne!(dora(&mut s, DVNT, mac(3), T0 + 30).0, a1);
    assert_eq!(dora(&mut s, DVNT, mac(1), T0 + 40).0, a1);
    s.expire(T0 + 100_000);
    assert_eq!(dora(&mut s, DVNT, mac(1), T0 + 100_001).0, a1);
}

#[test]
fn client_identifier_wins_over_the_hardware_address() {
    let mut s = server();
    let with_id = |kind, hw, id: &[u8]| {
        let mut m = msg(kind, hw);
        m.opts_mut().insert(DhcpOption::ClientIdentifier(id.to_vec()));
        m
    };
    let (_, o1) = run(&mut s, DVNT, &with_id(MessageType::Discover, mac(1), b"\x01id-one"), T0);
    // Same client id on another NIC: the same offer.
    let (_, o2) = run(&mut s, DVNT, &with_id(MessageType::Discover, mac(9), b"\x01id-one"), T0);
    assert_eq!(o1.unwrap().yiaddr(), o2.unwrap().yiaddr());
    // Same MAC, another client id: another client.
    let (_, o3) = run(&mut s, DVNT, &with_id(MessageType::Discover, mac(1), b"\x01id-two"), T0);
    assert_ne!(o3.unwrap().yiaddr(), Ipv4Addr::new(10, 20, 0, 100));
}

#[test]
fn static_hosts_by_mac_and_by_client_id() {
    let mut cfg = config();
    cfg.dhcp.hosts.push(crate::config::DhcpHost {
        mac: None,
        client_id: Some("ff:00:01".parse().unwrap()),
        address: Ipv4Addr::new(10, 20, 0, 20),
        hostname: Some("byid".into()),
        lease_time: Some(crate::config::Duration(7200)),
        pxe: None,
    });
    let mut s = Server::new(&cfg, Vec::new());
    let provisioner = [2, 0, 0, 0x0a, 0, 0x0a];
    let (a, out) = dora(&mut s, MGMT, provisioner, T0);
    assert_eq!(a, Ipv4Addr::new(10, 10, 0, 10));
    assert!(out.effects.is_empty(), "static names come from the DNS configuration");
    let (_, offer) = run(&mut s, MGMT, &msg(MessageType::Discover, provisioner), T0);
    assert_eq!(offer.unwrap().opts().get(OptionCode::Hostname), Some(&DhcpOption::Hostname("provisioner-01".into())));
    // A stranger on mgmt (no pool) gets nothing.
    let (_, none) = run(&mut s, MGMT, &msg(MessageType::Discover, mac(5)), T0);
    assert!(none.is_none());
    assert_eq!(s.counters.pool_exhausted, 1);
    let mut d = msg(MessageType::Discover, mac(6));
    d.opts_mut().insert(DhcpOption::ClientIdentifier(vec![0xff, 0, 1]));
    let (_, o) = run(&mut s, DVNT, &d, T0);
    let o = o.unwrap();
    assert_eq!(o.yiaddr(), Ipv4Addr::new(10, 20, 0, 20));
    assert_eq!(o.opts().get(OptionCode::AddressLeaseTime), Some(&DhcpOption::AddressLeaseTime(7200)));
    // A static host asking for another address is refused.
    let mut r = msg(MessageType::Request, provisioner);
    r.opts_mut().insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 10, 0, 50)));
    assert_eq!(kind(&run(&mut s, MGMT, &r, T0).1.unwrap()), MessageType::Nak);
}

#[test]
fn a_static_address_still_leased_to_another_client_is_never_given_twice() {
    // A client leases an address; then the configuration makes that address
    // another host's static one (a reload, or a restart with the journal).
    let mut s = server();
    let (taken, _) = dora(&mut s, DVNT, mac(1), T0);
    let mut cfg = config();
    cfg.dhcp.hosts.push(crate::config::DhcpHost {
        mac: Some(crate::config::MacAddr(mac(9))),
        client_id: None,
        address: taken,
        hostname: Some("fixed".into()),
        lease_time: None,
        pxe: None,
    });
    let mut s = Server::new(&cfg, s.snapshot());
    // The host is served from the pool meanwhile, counted; asking for its
    // static address is refused.
    let (a, _) = dora(&mut s, DVNT, mac(9), T0 + 10);
    assert_ne!(a, taken);
    assert!(s.counters.static_conflicts >= 1);
    let mut r = msg(MessageType::Request, mac(9));
    r.opts_mut().insert(DhcpOption::RequestedIpAddress(taken));
    assert_eq!(kind(&run(&mut s, DVNT, &r, T0 + 10).1.unwrap()), MessageType::Nak);
    // The holder's renewal is refused (the address is reserved now, as Kea
    // does); it starts over and gets a pool address, which frees the old one.
    let mut renew = msg(MessageType::Request, mac(1));
    renew.set_ciaddr(taken);
    assert_eq!(kind(&run(&mut s, DVNT, &renew, T0 + 20).1.unwrap()), MessageType::Nak);
    let (b, _) = dora(&mut s, DVNT, mac(1), T0 + 21);
    assert_ne!(b, taken);
    assert_ne!(b, a);
    // Then the host gets its static address.
    let (a, _) = dora(&mut s, DVNT, mac(9), T0 + 40);
    assert_eq!(a, taken);
}

#[test]
fn init_reboot_renewing_and_rebinding() {
    let mut s = server();
    let (a, _) = dora(&mut s, DVNT, mac(1), T0);
    let (b, _) = dora(&mut s, DVNT, mac(2), T0);
    // INIT-REBOOT (requested address, no server id): own address ACKed,
    // another segment's address and another client's address NAKed.
    let reboot = |hw, addr| {
        let mut m = msg(MessageType::Request, hw);
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(addr));
        m
    };
    let (out, ack) = run(&mut s, DVNT, &reboot(mac(1), a), T0 + 5);
    assert_eq!(kind(&ack.unwrap()), MessageType::Ack);
    assert_eq!(out.records.len(), 1);
    let (out, nak) = run(&mut s, DVNT, &reboot(mac(1), Ipv4Addr::new(10, 30, 0, 100)), T0 + 5);
    let nak = nak.unwrap();
    assert_eq!(kind(&nak), MessageType::Nak);
    assert_eq!(nak.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(out.reply.unwrap().dest, Dest::Broadcast);
    assert!(out.records.is_empty());
    assert_eq!(kind(&run(&mut s, DVNT, &reboot(mac(1), b), T0 + 5).1.unwrap()), MessageType::Nak);
    // A client we do not know asking for a free pool address on its segment
    // (our state was lost): it may have it.
    assert_eq!(
        kind(&run(&mut s, DVNT, &reboot(mac(7), Ipv4Addr::new(10, 20, 0, 150)), T0).1.unwrap()),
        MessageType::Ack
    );
    // RENEWING / REBINDING: ciaddr, no requested address, no server id.
    let mut renew = msg(MessageType::Request, mac(1));
    renew.set_ciaddr(a);
    let (out, ack) = run(&mut s, DVNT, &renew, T0 + 1800);
    let ack = ack.unwrap();
    assert_eq!((kind(&ack), ack.yiaddr(), ack.ciaddr()), (MessageType::Ack, a, Ipv4Addr::UNSPECIFIED));
    assert_eq!(out.reply.unwrap().dest, Dest::Client(a));
    assert_eq!(out.records[0].expires, T0 + 1800 + 3600, "the lease is extended");
    let mut steal = msg(MessageType::Request, mac(1));
    steal.set_ciaddr(b);
    assert_eq!(kind(&run(&mut s, DVNT, &steal, T0 + 1800).1.unwrap()), MessageType::Nak);
    assert_eq!(s.leases.get(b).unwrap().client, s.leases.get(b).unwrap().client.clone(), "b stays with its client");
}

#[test]
fn a_request_for_another_server_releases_our_offer() {
    let mut s = server();
    let (_, offer) = run(&mut s, DVNT, &msg(MessageType::Discover, mac(1)), T0);
    let a = offer.unwrap().yiaddr();
    let mut req = msg(MessageType::Request, mac(1));
    req.opts_mut().insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 20, 0, 254)));
    req.opts_mut().insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 20, 0, 240)));
    let (out, r) = run(&mut s, DVNT, &req, T0);
    assert!(r.is_none() && out.records.is_empty());
    assert!(s.leases.get(a).is_none());
    assert_eq!(s.counters.drops["other_server"], 1);
}

#[test]
fn declined_addresses_are_quarantined() {
    let mut s = server();
    let (a, _) = dora(&mut s, DVNT, mac(1), T0);
    let mut d = msg(MessageType::Decline, mac(1));
    d.opts_mut().insert(DhcpOption::RequestedIpAddress(a));
    d.opts_mut().insert(DhcpOption::ServerIdentifier(SRV));
    let (out, r) = run(&mut s, DVNT, &d, T0 + 1);
    assert!(r.is_none());
    assert_eq!(out.records[0].state, RecordState::Declined);
    // Nobody gets it, not even the decliner, until the quarantine ends.
    let (b, _) = dora(&mut s, DVNT, mac(1), T0 + 2);
    assert_ne!(a, b);
    let mut want = msg(MessageType::Discover, mac(2));
    want.opts_mut().insert(DhcpOption::RequestedIpAddress(a));
    assert_ne!(run(&mut s, DVNT, &want, T0 + 3).1.unwrap().yiaddr(), a);
    s.expire(T0 + 2 + DECLINE_QUARANTINE_SECS);
    assert_eq!(run(&mut s, DVNT, &want, T0 + 3 + DECLINE_QUARANTINE_SECS).1.unwrap().yiaddr(), a);
}

#[test]
fn a_full_pool_gives_no_offer_and_is_counted() {
    let mut cfg = config();
    cfg.dhcp.pools[0].end = Ipv4Addr::new(10, 20, 0, 101);
    let mut s = Server::new(&cfg, Vec::new());
    let a = dora(&mut s, DVNT, mac(1), T0).0;
    let b = dora(&mut s, DVNT, mac(2), T0).0;
    assert_ne!(a, b);
    let (out, r) = run(&mut s, DVNT, &msg(MessageType::Discover, mac(3)), T0);
    assert!(r.is_none() && out.records.is_empty());
    assert_eq!(s.counters.pool_exhausted, 1);
    // Once a lease expires, its address is reused.
    let mut rel = msg(MessageType::Release, mac(1));
    rel.set_ciaddr(a);
    run(&mut s, DVNT, &rel, T0 + 1);
    assert_eq!(dora(&mut s, DVNT, mac(3), T0 + 2).0, a);
}

/// A relay for dvntm that sends from dvnt (a router with a leg on each).
fn with_dvntm_relay(mut cfg: Config) -> Config {
    cfg.dhcp.relays.push(crate::config::Relay {
        segment: "dvntm".into(),
        addresses: vec![Ipv4Addr::new(10, 30, 0, 50)],
        sources: vec![Ipv4Addr::new(10, 20, 0, 50)],
    });
    cfg
}

#[test]
fn relayed_requests_are_served_from_the_relays_segment_with_option_82() {
    let mut s = Server::new(&with_dvntm_relay(config()), Vec::new());
    let mut d = msg(MessageType::Discover, mac(1));
    d.set_giaddr(Ipv4Addr::new(10, 30, 0, 50)).set_hops(1);
    let mut info = RelayAgentInformation::default();
    info.insert(RelayInfo::AgentCircuitId(b"port-7".to_vec()));
    d.opts_mut().insert(DhcpOption::RelayAgentInformation(info.clone()));
    // Arriving on dvnt's interface from the relay's dvnt address, relayed for dvntm.
    let (out, offer) = run_from(&mut s, DVNT, Ipv4Addr::new(10, 20, 0, 50), &d, T0);
    let offer = offer.unwrap();
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 30, 0, 100));
    assert_eq!(offer.giaddr(), Ipv4Addr::new(10, 30, 0, 50));
    assert_eq!(
        offer.opts().get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 30, 0, 1)))
    );
    match offer.opts().get(OptionCode::RelayAgentInformation) {
        Some(DhcpOption::RelayAgentInformation(r)) => assert!(r.get(RelayCode::AgentCircuitId).is_some()),
        o => panic!("option 82 not echoed: {o:?}"),
    }
    let reply = out.reply.unwrap();
    assert_eq!((reply.segment, reply.dest), (DVNTM, Dest::Relay(Ipv4Addr::new(10, 30, 0, 50))));
    // The example's relay on dvnt (perfdhcp on dvnt-client) sends from its giaddr.
    let mut d2 = msg(MessageType::Discover, mac(2));
    d2.set_giaddr(Ipv4Addr::new(10, 20, 0, 50));
    assert_eq!(run(&mut s, DVNT, &d2, T0).1.unwrap().yiaddr(), Ipv4Addr::new(10, 20, 0, 100));
    // A relay outside every segment: dropped and counted.
    d.set_giaddr(Ipv4Addr::new(172, 16, 0, 1));
    assert!(run_from(&mut s, DVNT, Ipv4Addr::new(10, 20, 0, 50), &d, T0).1.is_none());
    assert_eq!(s.counters.drops["unknown_relay"], 1);
}

/// Issue 17 item 14: a host on one segment cannot draw from another
/// segment's pool by writing an address of that segment in giaddr; only
/// the configured relay, from its own source addresses, can.
#[test]
fn a_giaddr_is_served_only_from_its_configured_relay() {
    let mut s = server();
    let mut d = msg(MessageType::Discover, mac(1));
    // A host on dvnt claims to relay for dvntm (no relay is configured there).
    d.set_giaddr(Ipv4Addr::new(10, 30, 0, 77));
    let (out, r) = run_from(&mut s, DVNT, Ipv4Addr::new(10, 20, 0, 60), &d, T0);
    assert!(r.is_none() && out.records.is_empty());
    assert_eq!(s.counters.drops.get("unknown_relay"), Some(&1), "{:?}", s.counters.drops);
    // An address of its own segment that is no configured relay: the same.
    d.set_giaddr(Ipv4Addr::new(10, 20, 0, 60));
    assert!(run_from(&mut s, DVNT, Ipv4Addr::new(10, 20, 0, 60), &d, T0).1.is_none());
    assert_eq!(s.counters.drops.get("unknown_relay"), Some(&2));
    // The configured relay's giaddr, from another source (a host on dvntm
    // writing dvnt's relay address): refused too.
    d.set_giaddr(Ipv4Addr::new(10, 20, 0, 50));
    assert!(run_from(&mut s, DVNTM, Ipv4Addr::new(10, 30, 0, 60), &d, T0).1.is_none());
    assert_eq!(s.counters.drops.get("relay_source"), Some(&1), "{:?}", s.counters.drops);
    // REQUESTs are held to the same rule (INIT-REBOOT for a dvntm address).
    let mut r = msg(MessageType::Request, mac(1));
    r.set_giaddr(Ipv4Addr::new(10, 30, 0, 77));
    r.opts_mut().insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 30, 0, 100)));
    assert!(run_from(&mut s, DVNT, Ipv4Addr::new(10, 20, 0, 60), &r, T0).1.is_none());
    assert!(s.leases.is_empty(), "nothing was offered or bound");
    // Once dvntm's relay is configured (sending from dvnt), it is served.
    let mut s = Server::new(&with_dvntm_relay(config()), Vec::new());
    d.set_giaddr(Ipv4Addr::new(10, 30, 0, 50));
    let offer = run_from(&mut s, DVNT, Ipv4Addr::new(10, 20, 0, 50), &d, T0).1.expect("an offer");
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 30, 0, 100));
    // ... but not from another host writing its giaddr.
    assert!(run_from(&mut s, DVNT, Ipv4Addr::new(10, 20, 0, 60), &d, T0).1.is_none());
    assert_eq!(s.counters.drops.get("relay_source"), Some(&1));
}

fn pxe_offer(s: &mut Server, hw: [u8; 6], arch: Option<u16>, extra: &[DhcpOption]) -> Message {
    let mut d = msg(MessageType::Discover, hw);
    d.set_flags(Flags::default().set_broadcast());
    if let Some(a) = arch {
        d.opts_mut().insert(DhcpOption::ClientSystemArchitecture(a.into()));
        let class = if a == 16 || a == 19 { "HTTPClient:Arch:00016" } else { "PXEClient:Arch:00007:UNDI:003016" };
        d.opts_mut().insert(DhcpOption::ClassIdentifier(class.as_bytes().to_vec()));
    }
    for o in extra {
        d.opts_mut().insert(o.clone());
    }
    let (out, offer) = run(s, DVNT, &d, T0);
    assert_eq!(out.reply.unwrap().dest, Dest::Broadcast);
    offer.unwrap()
}

#[test]
fn pxe_boot_files_by_architecture_and_ipxe_scripts() {
    let mut s = server();
    let file = |m: &Message| m.fname_str().and_then(Result::ok).map(|f| f.trim_end_matches('\0').to_string());
    for (arch, want) in [(0, "undionly.kpxe"), (7, "ipxe.efi"), (9, "ipxe.efi"), (11, "ipxe-arm64.efi")] {
        let o = pxe_offer(&mut s, mac(arch as u8 + 1), Some(arch), &[]);
        assert_eq!(file(&o).as_deref(), Some(want), "arch {arch}");
        assert_eq!(o.siaddr(), SRV, "next-server is the segment's address");
        assert!(o.opts().get(OptionCode::ClassIdentifier).is_none());
    }
    let http = pxe_offer(&mut s, mac(40), Some(16), &[]);
    assert_eq!(file(&http).as_deref(), Some("http://artifacts.mgmt.deevnet.net/ipxe.efi"));
    assert_eq!(
        http.opts().get(OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()))
    );
    // iPXE by user class, and by option 175: the script, never the binary.
    let script = Some("http://artifacts.mgmt.deevnet.net/boot.ipxe".to_string());
    let o = pxe_offer(&mut s, mac(41), Some(7), &[DhcpOption::UserClass(b"iPXE".to_vec())]);
    assert_eq!(file(&o), script);
    let o175 = DhcpOption::Unknown(UnknownOption::new(OptionCode::from(175), vec![1, 1, 1]));
    assert_eq!(file(&pxe_offer(&mut s, mac(42), Some(0), &[o175])), script);
    // Not a booting client: no boot file.
    assert_eq!(file(&pxe_offer(&mut s, mac(43), None, &[])), None);
    // Option 67 when asked for.
    let prl = DhcpOption::ParameterRequestList(vec![OptionCode::BootfileName, OptionCode::TFTPServerName]);
    let o = pxe_offer(&mut s, mac(44), Some(7), &[prl]);
    assert_eq!(o.opts().get(OptionCode::BootfileName), Some(&DhcpOption::BootfileName(b"ipxe.efi".to_vec())));
    assert_eq!(o.opts().get(OptionCode::TFTPServerName), Some(&DhcpOption::TFTPServerName(b"10.20.0.1".to_vec())));
}

#[test]
fn client_names_are_registered_and_removed() {
    let mut s = server();
    let (_, offer) = run(&mut s, DVNT, &msg(MessageType::Discover, mac(1)), T0);
    let a = offer.unwrap().yiaddr();
    let mut req = msg(MessageType::Request, mac(1));
    req.opts_mut().insert(DhcpOption::ServerIdentifier(SRV));
    req.opts_mut().insert(DhcpOption::RequestedIpAddress(a));
    req.opts_mut().insert(DhcpOption::Hostname("Bob's Laptop.local".into()));
    let (out, _) = run(&mut s, DVNT, &req, T0);
    let reg = Effect::Register { zone: "dvnt.deevnet.net".into(), hostname: "bob-s-laptop".into(), addr: a };
    assert_eq!(out.effects, std::slice::from_ref(&reg));
    assert_eq!(out.records[0].hostname.as_deref(), Some("bob-s-laptop"));
    // A restart re-registers it.
    let again = Server::new(&config(), s.snapshot());
    assert_eq!(again.registrations(T0 + 1), [reg]);
    // Release unregisters; so does expiry.
    let mut rel = msg(MessageType::Release, mac(1));
    rel.set_ciaddr(a);
    let unreg = Effect::Unregister { zone: "dvnt.deevnet.net".into(), hostname: "bob-s-laptop".into(), addr: a };
    assert_eq!(run(&mut s, DVNT, &rel, T0 + 2).0.effects, std::slice::from_ref(&unreg));
    let (_, out) = {
        let (_, o) = run(&mut s, DVNT, &msg(MessageType::Discover, mac(1)), T0 + 3);
        let mut r = msg(MessageType::Request, mac(1));
        r.opts_mut().insert(DhcpOption::ServerIdentifier(SRV));
        r.opts_mut().insert(DhcpOption::RequestedIpAddress(o.unwrap().yiaddr()));
        r.opts_mut().insert(DhcpOption::Hostname("bob-s-laptop".into()));
        run(&mut s, DVNT, &r, T0 + 3)
    };
    assert!(out.is_some());
    assert_eq!(s.expire(T0 + 3 + 3600), [unreg]);
}

#[test]
fn inform_gets_options_but_no_lease() {
    let mut s = server();
    let mut m = msg(MessageType::Inform, mac(1));
    m.set_ciaddr(Ipv4Addr::new(10, 20, 0, 50));
    let (out, ack) = run(&mut s, DVNT, &m, T0);
    let ack = ack.unwrap();
    assert_eq!((kind(&ack), ack.yiaddr(), ack.ciaddr()), (MessageType::Ack, Ipv4Addr::UNSPECIFIED, m.ciaddr()));
    assert!(ack.opts().get(OptionCode::AddressLeaseTime).is_none());
    assert!(out.records.is_empty());
    assert_eq!(out.reply.unwrap().dest, Dest::Client(m.ciaddr()));
}

#[test]
fn requested_lease_times_are_capped() {
    let mut s = server();
    let (_, o) = run(&mut s, DVNT, &msg(MessageType::Discover, mac(1)), T0);
    let mut r = msg(MessageType::Request, mac(1));
    r.opts_mut().insert(DhcpOption::ServerIdentifier(SRV));
    r.opts_mut().insert(DhcpOption::RequestedIpAddress(o.unwrap().yiaddr()));
    r.opts_mut().insert(DhcpOption::AddressLeaseTime(u32::MAX));
    let (out, ack) = run(&mut s, DVNT, &r, T0);
    assert_eq!(ack.unwrap().opts().get(OptionCode::AddressLeaseTime), Some(&DhcpOption::AddressLeaseTime(86_400)));
    assert_eq!(out.records[0].expires, T0 + 86_400);
}

#[test]
fn malformed_input_is_dropped_with_a_reason() {
    let mut s = server();
    let good = bytes(&msg(MessageType::Discover, mac(1)));
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (good[..100].to_vec(), "malformed"),
        (
            {
                let mut b = good.clone();
                b[0] = 2;
                b
            },
            "not_a_request",
        ),
        (
            {
                let mut b = good.clone();
                b[2] = 200;
                b
            },
            "bad_hardware_length",
        ),
        (
            {
                let mut b = good.clone();
                b[236] = 0;
                b
            },
            "no_magic_cookie",
        ),
        (good[..240].to_vec(), "no_message_type"),
        (bytes(&msg(MessageType::Offer, mac(1))), "unexpected_type"),
    ];
    for (b, why) in cases {
        let out = s.handle(Some(DVNT), Ipv4Addr::UNSPECIFIED, &b, T0);
        assert!(out.reply.is_none() && out.records.is_empty(), "{why}");
        assert_eq!(s.counters.drops.get(why), Some(&1), "{why}: {:?}", s.counters.drops);
    }
    // A segment without pools or hosts (none here: every example segment is
    // served) and an interface that is no segment.
    assert!(s.handle(None, Ipv4Addr::UNSPECIFIED, &good, T0).reply.is_none());
    assert_eq!(s.counters.drops["not_served"], 1);
}

/// A deterministic generator (xorshift) so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_input_never_panics_or_corrupts_the_lease_store() {
    let mut s = server();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let kinds = [
        MessageType::Discover,
        MessageType::Request,
        MessageType::Release,
        MessageType::Decline,
        MessageType::Inform,
        MessageType::Unknown(99),
    ];
    let mut journal_bytes = Vec::new();
    let mut all = Vec::new();
    for i in 0..20_000u64 {
        let now = T0 + i / 10;
        let b = if rng.below(3) == 0 {
            // Pure noise of any length.
            let n = rng.below(700) as usize;
            (0..n).map(|_| rng.next() as u8).collect()
        } else {
            // A plausible request, then random damage.
            let mut m = msg(kinds[rng.below(kinds.len() as u64) as usize], mac(rng.below(40) as u8));
            if rng.below(2) == 0 {
                m.opts_mut().insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(
                    10,
                    20,
                    0,
                    90 + rng.below(120) as u8,
                )));
            }
            if rng.below(2) == 0 {
                m.opts_mut().insert(DhcpOption::ServerIdentifier(SRV));
            }
            if rng.below(3) == 0 {
                m.set_ciaddr(Ipv4Addr::new(10, 20, 0, 90 + rng.below(120) as u8));
            }
            if rng.below(4) == 0 {
                let relay = [Ipv4Addr::new(10, 20, 0, 50), Ipv4Addr::new(10, rng.below(40) as u8, 0, 7)];
                m.set_giaddr(relay[rng.below(2) as usize]);
            }
            if rng.below(4) == 0 {
                m.opts_mut().insert(DhcpOption::Hostname(format!("h{}", rng.below(10))));
            }
            let mut b = bytes(&m);
            for _ in 0..rng.below(4) {
                let at = rng.below(b.len() as u64) as usize;
                b[at] = rng.next() as u8;
            }
            if rng.below(5) == 0 {
                b.truncate(rng.below(b.len() as u64) as usize);
            }
            b
        };
        let seg = [Some(MGMT), Some(DVNT), Some(DVNTM), None][rng.below(4) as usize];
        let source = [Ipv4Addr::UNSPECIFIED, Ipv4Addr::new(10, 20, 0, 50)][rng.below(2) as usize];
        let out = s.handle(seg, source, &b, now);
        for r in &out.records {
            journal::encode(r, &mut journal_bytes);
            all.push(r.clone());
        }
        if let Some(r) = &out.reply {
            Message::decode(&mut Decoder::new(&r.bytes)).expect("our replies parse");
        }
        if i % 1000 == 0 {
            s.expire(now);
        }
    }
    // No address is bound to two clients, and no client holds two addresses.
    let now = T0 + 2000;
    let mut clients = std::collections::HashSet::new();
    for l in s.leases.iter().filter(|l| l.state == State::Bound && l.expires > now) {
        assert!(clients.insert((l.segment, l.client.clone())), "{l:?}");
    }
    // Everything journaled reads back, and rebuilds the same bound leases.
    let mut file = Vec::from(&b"CSVCLEAS\x01\0\0\0\0\0\0\0"[..]);
    file.extend_from_slice(&journal_bytes);
    let replay = journal::replay(&file, Path::new("j")).unwrap();
    assert_eq!(replay.records, all);
    assert!(replay.cut.is_none());
    let back = Server::new(&config(), replay.records);
    // (Expiry is not journaled: it follows from the time.)
    let bound = |s: &Server| {
        let mut v: Vec<_> = s
            .leases
            .iter()
            .filter(|l| l.state == State::Bound && l.expires > now)
            .map(|l| (l.addr, l.client.clone(), l.expires))
            .collect();
        v.sort_by_key(|x| u32::from(x.0));
        v
    };
    assert_eq!(bound(&back), bound(&s));
    assert!(s.counters.acks > 100, "the random requests reached the state machine: {:?}", s.counters);
}

/// RFC 3396: an option split into fragments of the same code is one
/// option of their concatenated length. dhcproto concatenates them and
/// then asserts the length of fixed-size options in debug builds; the
/// server must refuse such packets before that, and keep serving.
#[test]
fn repeated_option_fragments_are_refused_without_a_panic() {
    let mut s = server();
    let good = bytes(&msg(MessageType::Discover, mac(1)));
    // The options of `good` start at 240; splice fragments in after option 53.
    let with = |frags: &[&[u8]]| {
        let mut b = good[..240].to_vec();
        b.extend_from_slice(&[53, 1, 1]);
        for f in frags {
            b.extend_from_slice(f);
        }
        b.push(255);
        b
    };
    let cases: Vec<Vec<u8>> = vec![
        // Client network interface (94, 3 bytes) twice: 6 bytes.
        with(&[&[94, 3, 1, 3, 0], &[94, 3, 1, 3, 0]]),
        // Rapid commit (80, empty) with a one-byte fragment.
        with(&[&[80, 0], &[80, 1, 0]]),
        // RFC 6926 times (4 bytes) as two fragments of 4.
        with(&[&[152, 4, 0, 0, 0, 1], &[152, 4, 0, 0, 0, 1]]),
        // Bulk lease query status code (151) without a code byte.
        with(&[&[151, 0]]),
        // The same code many times (fragments of one byte each).
        with(&(0..200).map(|_| &[94u8, 1, 7][..]).collect::<Vec<_>>()),
    ];
    for (i, b) in cases.iter().enumerate() {
        let out = s.handle(Some(DVNT), Ipv4Addr::UNSPECIFIED, b, T0);
        assert!(out.reply.is_none() && out.records.is_empty(), "case {i}");
    }
    assert_eq!(s.counters.drops.get("malformed"), Some(&(cases.len() as u64)), "{:?}", s.counters.drops);
    // Fragments that add up to a valid option are one option (RFC 3396 §5):
    // a host name in two pieces is served.
    let b = with(&[&[12, 3, b'b', b'o', b'x'], &[12, 2, b'-', b'1'], &[55, 2, 1, 3]]);
    let (_, offer) = {
        let out = s.handle(Some(DVNT), Ipv4Addr::UNSPECIFIED, &b, T0);
        let r = out.reply.as_ref().map(|r| Message::decode(&mut Decoder::new(&r.bytes)).unwrap());
        (out, r)
    };
    assert_eq!(kind(&offer.expect("an offer")), MessageType::Offer);
    assert_eq!(
        s.leases.of_client(DVNT, &super::leases::ClientKey::from_hw(1, &mac(1))).and_then(|l| l.hostname.clone()),
        Some("box-1".to_string())
    );
}

/// Issue 17 item 15: with the pool full, a DISCOVER from a new client must
/// not look at every address of the pool (under the lock every receive
/// task shares); nor may picking a freed address cost more in a large pool.
/// Counted in addresses examined, not timed.
#[test]
fn allocation_cost_does_not_grow_with_the_pool_size() {
    let mut per_discover = Vec::new();
    for size in [200u32, 60_000] {
        let mut cfg = config();
        cfg.segments[DVNT].cidr = "10.20.0.0/16".parse().unwrap();
        let start = Ipv4Addr::new(10, 20, 1, 0);
        cfg.dhcp.pools[0].start = start;
        cfg.dhcp.pools[0].end = Ipv4Addr::from(u32::from(start) + size - 1);
        let mut s = Server::new(&cfg, Vec::new());
        // Every address bound to its own client.
        for i in 0..size {
            let hw = (u64::from(i) + 0x0200_0000_0000).to_be_bytes()[2..].to_vec();
            s.leases.put(super::leases::Lease {
                addr: Ipv4Addr::from(u32::from(start) + i),
                segment: DVNT,
                state: State::Bound,
                expires: T0 + 3600,
                client: Some(super::leases::ClientKey::from_hw(1, &hw)),
                hw,
                hostname: None,
            });
        }
        // The first DISCOVER may walk past the never-used addresses once.
        run(&mut s, DVNT, &msg(MessageType::Discover, [4, 0, 0, 0, 0, 0]), T0);
        let before = s.leases.examined;
        let t = std::time::Instant::now();
        for n in 1..=50u8 {
            let (out, r) = run(&mut s, DVNT, &msg(MessageType::Discover, [4, 0, 0, 0, 1, n]), T0);
            assert!(r.is_none() && out.records.is_empty());
        }
        let exhausted = (s.leases.examined - before) / 50;
        eprintln!("pool of {size}: {exhausted} addresses examined per DISCOVER when full ({:?} for 50)", t.elapsed());
        assert_eq!(s.counters.pool_exhausted, 51);
        // Ten clients release; new clients get exactly those, oldest freed first.
        for i in 0..10u32 {
            let hw = (u64::from(i * 7) + 0x0200_0000_0000).to_be_bytes()[2..].to_vec();
            let mut rel = msg(MessageType::Release, hw[..].try_into().unwrap());
            rel.set_ciaddr(Ipv4Addr::from(u32::from(start) + i * 7));
            run(&mut s, DVNT, &rel, T0 + 10 + u64::from(i));
        }
        let before = s.leases.examined;
        for n in 0..10u32 {
            let (_, offer) = run(&mut s, DVNT, &msg(MessageType::Discover, [5, 0, 0, 0, 0, n as u8]), T0 + 30);
            assert_eq!(offer.expect("a freed address").yiaddr(), Ipv4Addr::from(u32::from(start) + n * 7));
        }
        let freed = (s.leases.examined - before) / 10;
        eprintln!("pool of {size}: {freed} addresses examined per DISCOVER for a freed address");
        per_discover.push((size, exhausted, freed));
    }
    for (size, exhausted, freed) in per_discover {
        assert!(
            exhausted <= 2 && freed <= 2,
            "pool of {size}: {exhausted} and {freed} addresses examined per DISCOVER"
        );
    }
}

/// Issue 17 item 15: registering a group commit's client names copies the
/// DNS zones they touch once, not once per name (each copy is of the whole
/// zone, every registered name included): the catalog is published once
/// for the lot. Counted by the epochs publishing gives the zones.
#[test]
fn a_batch_of_registrations_publishes_the_catalog_once() {
    let mut cfg = config();
    let dir = std::env::temp_dir().join(format!("coresvc-dhcp-reg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    cfg.agent.state_dir = dir.clone();
    let dns = crate::dns::Dns::new(&cfg).unwrap();
    let zone = hickory_proto::rr::Name::from_ascii("dvnt.deevnet.net.").unwrap();
    let epoch = |d: &crate::dns::Dns| {
        let c = d.resolver.catalog();
        c.zone_epochs[c.zone_index(&zone).unwrap()]
    };
    let before = epoch(&dns);
    let effects: Vec<Effect> = (0..100u8)
        .map(|i| Effect::Register {
            zone: "dvnt.deevnet.net".into(),
            hostname: format!("client-{i}"),
            addr: Ipv4Addr::new(10, 20, 0, 100 + i),
        })
        .chain([Effect::Unregister {
            zone: "dvnt.deevnet.net".into(),
            hostname: "client-7".into(),
            addr: Ipv4Addr::new(10, 20, 0, 107),
        }])
        .collect();
    super::apply(&dns, &effects);
    let published = epoch(&dns) - before;
    // (Each publication gives new epochs to the forward and the reverse zone.)
    assert!(published <= 2, "the catalog was published {published} times for one batch");
    let c = dns.resolver.catalog();
    let a = |n: &str| c.lookup(&hickory_proto::rr::Name::from_ascii(n).unwrap(), hickory_proto::rr::RecordType::A);
    assert_eq!(a("client-99.dvnt.deevnet.net.").unwrap().answers.len(), 1);
    assert_eq!(a("client-7.dvnt.deevnet.net.").unwrap().answers.len(), 0, "unregistered in the same batch");
    let ptr = c
        .lookup(
            &hickory_proto::rr::Name::from_ascii("150.0.20.10.in-addr.arpa.").unwrap(),
            hickory_proto::rr::RecordType::PTR,
        )
        .unwrap();
    assert_eq!(ptr.answers.len(), 1);
    let _ = std::fs::remove_dir_all(dir);
}
