//! The DHCP service in the lab: real clients (dhclient, udhcpc, dhcpcd,
//! perfdhcp) against the real binary, crafted relay and PXE requests from a
//! small client in the test, and a crash under load.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, UdpSocket},
    time::Duration,
};

use coresvc_lab::{
    AgentOpts, Lab,
    dhcp::{acks_in, assert_acks_kept},
    raw::in_netns,
};
use dhcproto::{
    Decodable as _, Decoder, Encodable as _, Encoder,
    v4::{DhcpOption, Message, MessageType, OptionCode, relay},
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);
const DVNT_CLIENT_MAC: &str = "02:00:00:14:00:32";

fn lab_with(edit: impl FnOnce(String) -> String) -> Lab {
    let mut lab = Lab::for_test().unwrap();
    let cfg = lab.config_with("coresvc.toml", edit).unwrap();
    lab.start_agent(&AgentOpts::new(cfg)).unwrap();
    lab
}

fn lab() -> Lab {
    lab_with(|s| s)
}

/// dvntm's relay: a router with a leg on dvnt (10.20.0.50, where its
/// datagrams come from) that writes its dvntm address (10.30.0.50) in giaddr.
fn dvntm_relay(s: String) -> String {
    s + "\n[[dhcp.relay]]\nsegment = \"dvntm\"\naddresses = [\"10.30.0.50\"]\nsources = [\"10.20.0.50\"]\n"
}

fn bytes(m: &Message) -> Vec<u8> {
    let mut b = Vec::new();
    m.encode(&mut Encoder::new(&mut b)).unwrap();
    b
}

/// A wide dvnt segment for load: 10.20.0.0/16 with 8,192 pool addresses
/// (the lab's clients keep their 10.20.0.x addresses as relay addresses).
fn wide_pool(s: String) -> String {
    s.replace("cidr = \"10.20.0.0/24\"", "cidr = \"10.20.0.0/16\"")
        .replace("start = \"10.20.0.100\"\nend = \"10.20.0.199\"", "start = \"10.20.1.0\"\nend = \"10.20.32.255\"")
}

fn leases(lab: &Lab) -> Vec<Value> {
    let out = lab.coresvc(["leases", "--json"]).unwrap();
    assert!(out.status.success(), "coresvc leases: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout).unwrap().as_array().unwrap().clone()
}

fn lease_of(lab: &Lab, addr: Ipv4Addr) -> Option<Value> {
    leases(lab).into_iter().find(|l| l["address"] == addr.to_string())
}

fn counter(lab: &Lab, name: &str) -> u64 {
    lab.status_json().unwrap()["dhcp"]["counters"][name].as_u64().unwrap()
}

fn in_dvnt_pool(a: Ipv4Addr) -> bool {
    (u32::from(Ipv4Addr::new(10, 20, 0, 100))..=u32::from(Ipv4Addr::new(10, 20, 0, 199))).contains(&u32::from(a))
}

/// A lease from dvnt's pool with dvnt's options; its address.
fn dvnt_lease(ev: &coresvc_lab::dhcp::Event) -> Ipv4Addr {
    let ip = ev.ip().unwrap_or_else(|| panic!("no address: {ev:?}"));
    assert!(in_dvnt_pool(ip), "{ev:?}");
    assert_eq!((ev.mask(), ev.routers(), ev.dns()), (Some("255.255.255.0"), Some("10.20.0.1"), Some("10.20.0.1")));
    assert_eq!(ev.domain(), Some("dvnt.deevnet.net"));
    ip
}

#[test]
fn dhclient_gets_an_address_and_options_keeps_it_across_a_reboot_and_releases_it() {
    let lab = lab();
    lab.flush_address("dvnt-client").unwrap();
    let mut c = lab.dhclient("dvnt-client", "dhclient-1", &[]).unwrap();
    let ev = c.wait_for(&["bound"], 1, WAIT).unwrap();
    let ip = dvnt_lease(&ev);
    assert_eq!(ev.vars.get("new_dhcp_lease_time").map(String::as_str), Some("3600"));
    assert_eq!(ev.vars.get("new_dhcp_server_identifier").map(String::as_str), Some("10.20.0.1"));
    let l = lease_of(&lab, ip).expect("the lease is listed");
    assert_eq!(
        (l["state"].as_str(), l["mac"].as_str(), l["segment"].as_str()),
        (Some("bound"), Some(DVNT_CLIENT_MAC), Some("dvnt"))
    );
    // The address works: the gateway answers from it.
    let ping = lab.exec("dvnt-client", ["ping", "-c", "1", "-W", "2", "10.20.0.1"]).unwrap();
    assert!(ping.status.success(), "ping from the leased address");

    // Reboot: the client comes back with its lease file (INIT-REBOOT).
    drop(c);
    lab.flush_address("dvnt-client").unwrap();
    let mut c = lab.dhclient("dvnt-client", "dhclient-1", &[]).unwrap();
    // (The events file is shared with the first run: its BOUND is the first.)
    let ev = c.wait_for(&["reboot", "bound"], 2, WAIT).unwrap();
    assert_eq!(ev.reason, "reboot", "INIT-REBOOT, not a new DISCOVER: {ev:?}");
    assert_eq!(ev.ip(), Some(ip), "{ev:?}");

    // Release frees it.
    let said = lab.dhclient_release("dvnt-client", "dhclient-1").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let l = lease_of(&lab, ip).unwrap();
    assert_eq!(l["state"], "released", "{l}\n{said}\n{}", c.diagnostics());
    assert_eq!(counter(&lab, "releases"), 1);
}

#[test]
fn udhcpc_renews_registers_its_name_and_releases() {
    let lab = lab();
    lab.flush_address("dvntm-client").unwrap();
    let mut c = lab.udhcpc("dvntm-client", "udhcpc-1", &["-x", "hostname:Udhcp-Box"]).unwrap();
    let ev = c.wait_for(&["bound"], 1, WAIT).unwrap();
    let ip = ev.ip().unwrap_or_else(|| panic!("{ev:?}{}", c.diagnostics()));
    assert_eq!(ip.octets()[..3], [10, 30, 0]);
    assert_eq!((ev.mask(), ev.routers(), ev.dns()), (Some("255.255.255.0"), Some("10.30.0.1"), Some("10.30.0.1")));
    assert_eq!(ev.domain(), Some("dvntm.deevnet.net"));
    assert_eq!(ev.vars.get("lease").map(String::as_str), Some("1800"), "the dvntm pool's lease time");
    // The name it sent is in DNS, A and PTR.
    let r = lab.kdig("dvntm-client", "10.30.0.1", "udhcp-box.dvntm.deevnet.net", "A", &[]).unwrap();
    assert_eq!(r.answer_texts(), [format!("udhcp-box.dvntm.deevnet.net. A {ip}")]);
    let o = ip.octets();
    let ptr = format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0]);
    let r = lab.kdig("dvntm-client", "10.30.0.1", &ptr, "PTR", &[]).unwrap();
    assert_eq!(r.answer_texts().len(), 1, "{r:?}");

    // Renew (RENEWING: unicast from the leased address).
    let acks = counter(&lab, "acks");
    let before = c.events().iter().filter(|e| e.reason == "renew" || e.reason == "bound").count();
    c.signal(libc::SIGUSR1);
    let ev = c.wait_for(&["renew", "bound"], before + 1, WAIT).unwrap();
    assert_eq!((ev.reason.as_str(), ev.ip()), ("renew", Some(ip)), "{ev:?}");
    assert!(counter(&lab, "acks") > acks);

    // Release: the lease and the name go.
    c.signal(libc::SIGUSR2);
    for _ in 0..50 {
        if lease_of(&lab, ip).is_some_and(|l| l["state"] == "released") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(lease_of(&lab, ip).unwrap()["state"], "released");
    // (udhcpc removed its address: ask from the other site.)
    let r = lab.kdig("dvnt-client", "10.20.0.1", "udhcp-box.dvntm.deevnet.net", "A", &[]).unwrap();
    assert_eq!(r.rcode, "NXDOMAIN", "{r:?}");
}

#[test]
fn dhcpcd_gets_an_address_and_options() {
    let lab = lab();
    lab.flush_address("dvnt-client").unwrap();
    let mut c = lab.dhcpcd("dvnt-client", "dhcpcd-1", &[]).unwrap();
    let ev = c.wait_for(&["bound"], 1, WAIT).unwrap();
    let ip = dvnt_lease(&ev);
    // dhcpcd configured the interface itself.
    let out = lab.exec("dvnt-client", ["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{ip}/24")));
    assert!(lease_of(&lab, ip).is_some_and(|l| l["mac"] == DVNT_CLIENT_MAC));
}

#[test]
fn the_static_host_gets_its_address_and_name() {
    let lab = lab();
    lab.flush_address("provisioner").unwrap();
    let mut c = lab.dhclient("provisioner", "provisioner", &[]).unwrap();
    let ev = c.wait_for(&["bound"], 1, WAIT).unwrap();
    assert_eq!(ev.ip(), Some(Ipv4Addr::new(10, 10, 0, 10)), "{ev:?}");
    assert_eq!(ev.vars.get("new_host_name").map(String::as_str), Some("provisioner-01"));
    assert_eq!(ev.domain(), Some("mgmt.deevnet.net"));
}

/// A relay agent in a test: sends DHCP messages from `node` (bound to
/// `local`:67, as relays do) to the gateway, and reads replies sent to
/// `listen_node`'s `listen`:67.
fn relay(lab: &Lab, node: &str, local: Ipv4Addr, server: Ipv4Addr, msgs: Vec<Message>) -> Vec<Message> {
    relay_to(lab, node, local, server, None, msgs)
}

fn relay_to(
    lab: &Lab,
    node: &str,
    local: Ipv4Addr,
    server: Ipv4Addr,
    listen: Option<(&str, Ipv4Addr)>,
    msgs: Vec<Message>,
) -> Vec<Message> {
    let listener = listen.map(|(n, addr)| {
        let ns = lab.ns(n);
        let (tx, rx) = std::sync::mpsc::channel();
        let h = std::thread::spawn(move || {
            in_netns(&ns, move || {
                let s = UdpSocket::bind((addr, 67))?;
                s.set_read_timeout(Some(Duration::from_secs(3)))?;
                tx.send(()).ok();
                Ok(recv_all(&s))
            })
        });
        rx.recv_timeout(Duration::from_secs(5)).expect("listener up");
        h
    });
    let sent = in_netns(&lab.ns(node), move || {
        let s = UdpSocket::bind((local, 67))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut replies = Vec::new();
        for m in msgs {
            let mut b = Vec::new();
            m.encode(&mut Encoder::new(&mut b))?;
            s.send_to(&b, (server, 67))?;
            replies.extend(recv_all(&s));
        }
        Ok(replies)
    })
    .unwrap();
    match listener {
        Some(h) => h.join().unwrap().unwrap(),
        None => sent,
    }
}

/// Sent from dvnt-client (10.20.0.50) to dvnt's gateway as dvntm's relay
/// would send them (see [`dvntm_relay`]); the replies to the relay's
/// dvntm address, heard on dvntm-client (10.30.0.50).
fn through_dvntm_relay(lab: &Lab, msgs: Vec<Message>) -> Vec<Message> {
    let (dvnt, dvntm) = (Ipv4Addr::new(10, 20, 0, 50), Ipv4Addr::new(10, 30, 0, 50));
    relay_to(lab, "dvnt-client", dvnt, Ipv4Addr::new(10, 20, 0, 1), Some(("dvntm-client", dvntm)), msgs)
}

fn recv_all(s: &UdpSocket) -> Vec<Message> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1500];
    // One reply per request here; stop at the first quiet period.
    if let Ok((n, _)) = s.recv_from(&mut buf) {
        out.push(Message::decode(&mut Decoder::new(&buf[..n])).expect("a DHCP reply"));
    }
    out
}

fn request(kind: MessageType, mac: [u8; 6], giaddr: Ipv4Addr, opts: Vec<DhcpOption>) -> Message {
    let mut m = Message::default();
    m.set_chaddr(&mac).set_giaddr(giaddr).set_hops(1);
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    for o in opts {
        m.opts_mut().insert(o);
    }
    m
}

fn kind(m: &Message) -> MessageType {
    m.opts().msg_type().unwrap()
}

#[test]
fn relayed_requests_are_served_from_the_relays_segment_with_option_82_and_bad_packets_are_counted() {
    let lab = lab_with(dvntm_relay);
    let mut info = relay::RelayAgentInformation::default();
    info.insert(relay::RelayInfo::AgentCircuitId(b"rack-4/port-7".to_vec()));
    let mac = [2, 0, 0, 0x99, 0, 1];
    // Sent from dvnt's side by dvntm's configured relay (a router with a leg
    // on each): the reply goes to the relay address on dvntm, through
    // dvntm's interface.
    let d = request(
        MessageType::Discover,
        mac,
        Ipv4Addr::new(10, 30, 0, 50),
        vec![DhcpOption::RelayAgentInformation(info.clone())],
    );
    let offers = through_dvntm_relay(&lab, vec![d]);
    let offer = offers.first().expect("an offer at the relay address");
    assert_eq!(kind(offer), MessageType::Offer);
    let yi = offer.yiaddr();
    assert_eq!(yi.octets()[..3], [10, 30, 0], "from dvntm's pool: {offer}");
    assert_eq!(
        offer.opts().get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 30, 0, 1)))
    );
    assert_eq!(
        offer.opts().get(OptionCode::RelayAgentInformation),
        Some(&DhcpOption::RelayAgentInformation(info.clone()))
    );
    // The 4-way exchange through the relay's dvntm address.
    let r = request(
        MessageType::Request,
        mac,
        Ipv4Addr::new(10, 30, 0, 50),
        vec![
            DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 30, 0, 1)),
            DhcpOption::RequestedIpAddress(yi),
            DhcpOption::RelayAgentInformation(info),
        ],
    );
    let acks = through_dvntm_relay(&lab, vec![r]);
    assert_eq!(acks.iter().map(kind).collect::<Vec<_>>(), [MessageType::Ack]);
    assert_eq!(acks[0].yiaddr(), yi);
    assert!(lease_of(&lab, yi).is_some_and(|l| l["state"] == "bound" && l["segment"] == "dvntm"));

    // Garbage to port 67 is dropped and counted; the server keeps serving.
    // (The last: option 94 in two RFC 3396 fragments, which dhcproto
    // concatenates and then asserts the length of in a debug build, as the
    // lab runs.)
    let fragments = {
        let mut b = bytes(&request(MessageType::Discover, mac, Ipv4Addr::UNSPECIFIED, vec![]));
        b.truncate(240);
        b.extend_from_slice(&[53, 1, 1, 94, 3, 1, 3, 0, 94, 3, 1, 3, 0, 255]);
        b
    };
    in_netns(&lab.ns("dvnt-client"), move || {
        let s = UdpSocket::bind((Ipv4Addr::new(10, 20, 0, 50), 0))?;
        for p in [&b"hello"[..], &[0u8; 300][..], &[1u8; 240][..], &fragments[..]] {
            s.send_to(p, (Ipv4Addr::new(10, 20, 0, 1), 67))?;
        }
        Ok(())
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let drops = &lab.status_json().unwrap()["dhcp"]["counters"]["drops"];
    let total: u64 = drops.as_object().unwrap().values().filter_map(Value::as_u64).sum();
    assert!(total >= 4, "{drops}");
    let again =
        through_dvntm_relay(&lab, vec![request(MessageType::Discover, mac, Ipv4Addr::new(10, 30, 0, 50), vec![])]);
    assert_eq!(again.first().map(Message::yiaddr), Some(yi), "the same client, the same address");
}

/// Issue 17 item 14: a host on one segment cannot draw from another
/// segment's pool by writing that segment's address in giaddr, nor use the
/// address of a configured relay; only a relay named in `dhcp.relay`, from
/// its source addresses, is served (crafted relayed requests and perfdhcp,
/// which always relays).
#[test]
fn a_host_cannot_draw_from_another_segments_pool_through_giaddr() {
    let lab = lab();
    let mac = [2, 0, 0, 0x99, 0, 2];
    let gw_dvnt = Ipv4Addr::new(10, 20, 0, 1);
    let dvnt_client = Ipv4Addr::new(10, 20, 0, 50);
    let dvntm_client = Ipv4Addr::new(10, 30, 0, 50);
    let drops =
        |lab: &Lab, why: &str| lab.status_json().unwrap()["dhcp"]["counters"]["drops"][why].as_u64().unwrap_or(0);
    // dvnt-client writes an address of dvntm (no relay is configured there).
    let discover = request(MessageType::Discover, mac, dvntm_client, vec![]);
    let got = relay_to(
        &lab,
        "dvnt-client",
        dvnt_client,
        gw_dvnt,
        Some(("dvntm-client", dvntm_client)),
        vec![discover.clone()],
    );
    assert!(got.is_empty(), "a dvntm address for a host on dvnt: {got:?}");
    assert_eq!(drops(&lab, "unknown_relay"), 1);
    // Nor by INIT-REBOOT: a REQUEST for a dvntm address gets no ACK.
    let reboot = request(
        MessageType::Request,
        mac,
        dvntm_client,
        vec![DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 30, 0, 150))],
    );
    let got = through_dvntm_relay(&lab, vec![reboot]);
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(drops(&lab, "unknown_relay"), 2);
    // dvntm-client writes the configured dvnt relay's address: not from
    // that relay, refused (the reply would have gone to the relay).
    let spoof = request(MessageType::Discover, mac, dvnt_client, vec![]);
    let got = relay_to(
        &lab,
        "dvntm-client",
        dvntm_client,
        Ipv4Addr::new(10, 30, 0, 1),
        Some(("dvnt-client", dvnt_client)),
        vec![spoof],
    );
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(drops(&lab, "relay_source"), 1);
    // perfdhcp on dvntm-client relays with giaddr 10.30.0.50, which is no
    // configured relay: nothing is offered.
    let out = lab
        .cmd("dvntm-client", ["perfdhcp", "-4", "-l", "eth0", "-r", "20", "-n", "40", "-p", "6", "10.30.0.1"])
        .output()
        .expect("perfdhcp (package kea-admin, installed by cargo xtask setup)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let st = perfdhcp_stats(&text);
    assert!(st.get("DISCOVER-OFFER sent packets").copied().unwrap_or(0) >= 40, "{text}");
    assert_eq!(st.get("DISCOVER-OFFER received packets").copied().unwrap_or(0), 0, "{text}");
    assert!(drops(&lab, "unknown_relay") >= 42, "{text}");
    assert!(leases(&lab).is_empty(), "nothing was leased: {:?}", leases(&lab));

    // Once dvntm's relay is configured (its dvnt leg as source), the same
    // DISCOVER is served from dvntm's pool, through the relay address.
    let cfg = lab.paths.run_dir.join("coresvc.toml");
    std::fs::write(&cfg, dvntm_relay(std::fs::read_to_string(&cfg).unwrap())).unwrap();
    let out = lab.coresvc(["reload"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = through_dvntm_relay(&lab, vec![discover]);
    let offer = got.first().expect("an offer through dvntm's configured relay");
    assert_eq!(offer.yiaddr().octets()[..3], [10, 30, 0], "{offer}");
}

#[test]
fn pxe_answers_per_architecture_and_ipxe_gets_the_script() {
    let lab = lab();
    let file = |m: &Message| m.fname_str().and_then(Result::ok).map(|f| f.trim_end_matches('\0').to_string());
    let relay_addr = Ipv4Addr::new(10, 20, 0, 50);
    let srv = Ipv4Addr::new(10, 20, 0, 1);
    // (architecture, vendor class, extra options, boot file, HTTPClient echoed)
    type Case<'a> = (u16, &'a [u8], Vec<DhcpOption>, Option<&'a str>, bool);
    let cases: Vec<Case> = vec![
        (0, b"PXEClient:Arch:00000:UNDI:002001", vec![], Some("undionly.kpxe"), false),
        (7, b"PXEClient:Arch:00007:UNDI:003016", vec![], Some("ipxe.efi"), false),
        (9, b"PXEClient:Arch:00009:UNDI:003016", vec![], Some("ipxe.efi"), false),
        (11, b"PXEClient:Arch:00011:UNDI:003016", vec![], Some("ipxe-arm64.efi"), false),
        (16, b"HTTPClient:Arch:00016:UNDI:003001", vec![], Some("http://artifacts.mgmt.deevnet.net/ipxe.efi"), true),
        (
            7,
            b"PXEClient:Arch:00007:UNDI:003016",
            vec![DhcpOption::UserClass(b"iPXE".to_vec())],
            Some("http://artifacts.mgmt.deevnet.net/boot.ipxe"),
            false,
        ),
        (
            0,
            b"PXEClient:Arch:00000:UNDI:002001",
            vec![DhcpOption::Unknown(dhcproto::v4::UnknownOption::new(OptionCode::from(175), vec![0x13, 1, 1]))],
            Some("http://artifacts.mgmt.deevnet.net/boot.ipxe"),
            false,
        ),
    ];
    for (i, (arch, class, extra, want, http)) in cases.into_iter().enumerate() {
        let mut opts = vec![
            DhcpOption::ClientSystemArchitecture(arch.into()),
            DhcpOption::ClassIdentifier(class.to_vec()),
            DhcpOption::ParameterRequestList(vec![OptionCode::SubnetMask, OptionCode::BootfileName]),
        ];
        opts.extend(extra);
        let d = request(MessageType::Discover, [2, 0, 0, 0x77, 0, i as u8], relay_addr, opts);
        let replies = relay(&lab, "dvnt-client", relay_addr, srv, vec![d]);
        let o = replies.first().unwrap_or_else(|| panic!("case {i}: no offer"));
        assert_eq!(file(o).as_deref(), want, "case {i}: {o}");
        assert_eq!(o.siaddr(), srv, "case {i}: next-server is the TFTP service");
        assert_eq!(
            o.opts().get(OptionCode::BootfileName),
            want.map(|w| DhcpOption::BootfileName(w.as_bytes().to_vec())).as_ref(),
            "case {i}"
        );
        let echoed =
            o.opts().get(OptionCode::ClassIdentifier) == Some(&DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()));
        assert_eq!(echoed, http, "case {i}: option 60 HTTPClient");
    }
}

/// perfdhcp's "sent packets" / "received packets" / "drops" per exchange.
fn perfdhcp_stats(text: &str) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    let mut section = String::new();
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with("***Statistics for:") {
            section = l.trim_start_matches("***Statistics for:").trim_end_matches('*').trim().replace(' ', "");
        }
        for key in ["sent packets", "received packets", "drops", "orphans", "rejected leases", "non unique addresses"] {
            if let Some(v) = l.strip_prefix(&format!("{key}:"))
                && let Ok(n) = v.trim().parse()
            {
                out.insert(format!("{section} {key}"), n);
            }
        }
    }
    out
}

fn perfdhcp(lab: &Lab, args: &[&str]) -> (String, HashMap<String, u64>) {
    let out = lab
        .cmd("dvnt-client", ["perfdhcp", "-4", "-l", "eth0"])
        .args(args)
        .arg("10.20.0.1")
        .output()
        .expect("perfdhcp (package kea-admin, installed by cargo xtask setup)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let stats = perfdhcp_stats(&text);
    (text, stats)
}

#[test]
fn perfdhcp_runs_thousands_of_four_way_exchanges() {
    let lab = lab_with(wide_pool);
    let (text, st) = perfdhcp(&lab, &["-r", "300", "-R", "1500", "-n", "3000"]);
    let get = |k: &str| st.get(k).copied().unwrap_or_else(|| panic!("no {k:?} in perfdhcp output:\n{text}"));
    assert!(get("DISCOVER-OFFER sent packets") >= 3000, "{text}");
    let acks = get("REQUEST-ACK received packets");
    // A lost datagram is possible on a loaded machine; errors are not.
    assert!(acks >= 2970, "{text}");
    assert_eq!(st.get("REQUEST-ACK rejected leases").copied().unwrap_or(0), 0, "{text}");
    let status = lab.status_json().unwrap();
    let c = &status["dhcp"]["counters"];
    assert_eq!(c["naks"], 0, "{c}");
    assert_eq!(c["pool_exhausted"], 0, "{c}");
    assert!(c["acks"].as_u64().unwrap() >= acks, "{c}");
    let j = &status["dhcp"]["journal"];
    assert!(j["records"].as_u64().unwrap() >= acks, "every ACK journaled: {j}");
    assert!(j["commits"].as_u64().unwrap() >= 1, "{j}");
    assert_eq!(j["failures"], 0);
    let bound = leases(&lab).iter().filter(|l| l["state"] == "bound").count();
    assert!(bound >= 1000, "{bound} leases bound");
    // The operator's views.
    let text = |args: &[&str]| String::from_utf8_lossy(&lab.coresvc(args).unwrap().stdout).into_owned();
    let st = text(&["status"]);
    assert!(st.contains("dhcp     serving on mgmt0, dvnt0, dvntm0"), "{st}");
    assert!(st.contains("segment dvnt"), "{st}");
    let table = text(&["leases"]);
    assert!(table.starts_with("ADDRESS"), "{table}");
    assert!(table.lines().filter(|l| l.contains(" bound ") && l.ends_with(" dvnt")).count() >= 1000, "{table}");
}

#[test]
fn kill_9_under_perfdhcp_load_loses_no_acked_lease_and_never_gives_an_address_twice() {
    let mut lab = lab_with(wide_pool);
    let cfg = lab.paths.run_dir.join("coresvc.toml");
    let mut acked = Vec::new();
    for (round, seed) in [(1, 11), (2, 22)] {
        let pcap = lab.paths.run_dir.join(format!("acks-{round}.pcap"));
        let tcpdump = lab.capture_dhcp_replies("dvnt-client", &pcap).unwrap();
        let load = lab.perfdhcp_load("dvnt-client", "10.20.0.1", 400, seed).unwrap();
        std::thread::sleep(Duration::from_millis(2500));
        if round == 1 {
            // In the middle of the load: no clean shutdown, no flush.
            lab.stop_agent(libc::SIGKILL, Duration::from_secs(5)).unwrap();
            std::thread::sleep(Duration::from_millis(300));
        }
        load.interrupt();
        std::thread::sleep(Duration::from_millis(300));
        tcpdump.interrupt();
        let got = acks_in(&pcap).unwrap();
        assert!(got.len() > 100, "round {round}: only {} ACKs captured", got.len());
        acked.extend(got);
        if round == 1 {
            lab.start_agent(&AgentOpts::new(&cfg)).unwrap();
        }
    }
    assert_acks_kept(&lab, &acked, true);
    assert!(lab.log().contains("leases from"), "{}", lab.log_tail(20));
}

/// Issue 17 item 15: a full pool of 60,000 addresses under a perfdhcp flood
/// of new clients (every one refused, counted) still answers the clients it
/// knows: each gets its own address offered and acknowledged again. (With
/// allocation that scans the pool under the lock, every refused DISCOVER
/// cost a walk over 60,000 addresses and the known clients went unanswered.)
#[test]
fn a_full_pool_under_a_perfdhcp_flood_still_answers_known_clients() {
    const SIZE: u32 = 60_000;
    let first = Ipv4Addr::new(10, 20, 1, 0);
    let last = Ipv4Addr::from(u32::from(first) + SIZE - 1);
    let mut lab = Lab::for_test().unwrap();
    let cfg = lab
        .config_with("coresvc.toml", |s| {
            s.replace("cidr = \"10.20.0.0/24\"", "cidr = \"10.20.0.0/16\"")
                .replace(
                    "start = \"10.20.0.100\"\nend = \"10.20.0.199\"",
                    &format!("start = \"{first}\"\nend = \"{last}\""),
                )
                .replace("addresses = [\"10.20.0.50\"]", "addresses = [\"10.20.0.50\", \"10.20.0.51\"]")
        })
        .unwrap();
    // The pool is full before the start: a lease journal with every address
    // bound (to clients 06:00:00:xx:xx:xx) for an hour.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let hw = |i: u32| -> Vec<u8> { [&[6u8, 0][..], &(i + 1).to_be_bytes()[..]].concat() };
    let mut journal = b"CSVCLEAS\x01\0\0\0\0\0\0\0".to_vec();
    for i in 0..SIZE {
        let rec = coresvc::dhcp::journal::LeaseRecord {
            addr: Ipv4Addr::from(u32::from(first) + i),
            state: coresvc::dhcp::journal::RecordState::Bound,
            expires: now + 3600,
            client: [&[1u8, 1][..], &hw(i)[..]].concat(),
            hw: hw(i),
            hostname: None,
            segment: "dvnt".into(),
        };
        coresvc::dhcp::journal::encode(&rec, &mut journal);
    }
    std::fs::create_dir_all(&lab.paths.state_dir).unwrap();
    std::fs::write(lab.paths.state_dir.join(coresvc::dhcp::journal::FILE_NAME), journal).unwrap();
    lab.start_agent(&AgentOpts::new(&cfg)).unwrap();
    let st = lab.status_json().unwrap();
    let dvnt = st["dhcp"]["segments"].as_array().unwrap().iter().find(|s| s["segment"] == "dvnt").unwrap().clone();
    assert_eq!((dvnt["pool_size"].as_u64(), dvnt["bound"].as_u64()), (Some(u64::from(SIZE)), Some(u64::from(SIZE))));

    // The flood: perfdhcp relays new clients from 10.20.0.50; the known
    // clients come through a second relay address on the same host.
    let known_relay = Ipv4Addr::new(10, 20, 0, 51);
    run_in(&lab, "dvnt-client", &["ip", "addr", "add", "10.20.0.51/24", "dev", "eth0"]);
    let flood = lab
        .cmd("dvnt-client", ["perfdhcp", "-4", "-l", "eth0", "-r", "400", "-R", "1000000", "-p", "40", "10.20.0.1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("perfdhcp (package kea-admin, installed by cargo xtask setup)");
    std::thread::sleep(Duration::from_secs(3));
    let exhausted_before = counter(&lab, "pool_exhausted");
    assert!(exhausted_before > 0, "the flood reaches the full pool");
    // Known clients (every 6,000th lease), as a client retransmits: up to
    // three tries of 3 s for each message.
    let exchange = |m: Message| -> Option<Message> {
        (0..3).find_map(|_| relay(&lab, "dvnt-client", known_relay, Ipv4Addr::new(10, 20, 0, 1), vec![m.clone()]).pop())
    };
    for i in (0..SIZE).step_by(6_000) {
        let mac: [u8; 6] = hw(i).try_into().unwrap();
        let own = Ipv4Addr::from(u32::from(first) + i);
        let offer = exchange(request(MessageType::Discover, mac, known_relay, vec![]))
            .unwrap_or_else(|| panic!("no offer for the known client of {own} under the flood"));
        assert_eq!((kind(&offer), offer.yiaddr()), (MessageType::Offer, own));
        let ack = exchange(request(
            MessageType::Request,
            mac,
            known_relay,
            vec![DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 20, 0, 1)), DhcpOption::RequestedIpAddress(own)],
        ))
        .unwrap_or_else(|| panic!("no ACK for the known client of {own} under the flood"));
        assert_eq!((kind(&ack), ack.yiaddr()), (MessageType::Ack, own));
    }
    let exhausted = counter(&lab, "pool_exhausted");
    assert!(exhausted > exhausted_before, "the flood went on meanwhile: {exhausted_before} -> {exhausted}");
    // SIGINT: perfdhcp prints its statistics.
    // SAFETY: kill(2) on our child's pid.
    unsafe { libc::kill(flood.id() as i32, libc::SIGINT) };
    let out = flood.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let st = perfdhcp_stats(&text);
    eprintln!(
        "flood: {:?} DISCOVERs sent, {:?} offers; pool_exhausted {exhausted}",
        st.get("DISCOVER-OFFER sent packets"),
        st.get("DISCOVER-OFFER received packets")
    );
    assert_eq!(st.get("DISCOVER-OFFER received packets").copied().unwrap_or(0), 0, "the pool is full: {text}");
    assert_eq!(counter(&lab, "naks"), 0);
}

fn run_in(lab: &Lab, node: &str, args: &[&str]) {
    let out = lab.exec(node, args).unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A private mount namespace, kept by a sleeping process, with a small
/// tmpfs on the lab's state directory: the agent runs in it (nsenter), so
/// its lease journal lives on a file system the test can fill. The mount
/// goes away with the holder (killed on drop), also after a failed test.
struct TinyStateDir {
    holder: std::process::Child,
    dir: std::path::PathBuf,
}

impl TinyStateDir {
    fn new(lab: &Lab, size: &str) -> TinyStateDir {
        use std::io::BufRead as _;
        let dir = lab.paths.state_dir.clone();
        std::fs::create_dir_all(&dir).unwrap();
        let mut holder = std::process::Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(format!("mount -t tmpfs -o size={size},mode=0700 tmpfs \"$0\" && echo ready && exec sleep 100000"))
            .arg(&dir)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("unshare (util-linux)");
        let mut line = String::new();
        std::io::BufReader::new(holder.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "mounting a tmpfs in a private mount namespace");
        TinyStateDir { holder, dir }
    }

    /// `rel` in the state directory, as the agent sees it.
    fn path(&self, rel: &str) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("/proc/{}/root", self.holder.id()))
            .join(self.dir.strip_prefix("/").unwrap())
            .join(rel)
    }

    /// Takes every free block of the file system.
    fn fill(&self) {
        use std::io::Write as _;
        let mut f = std::fs::File::create(self.path("filler")).unwrap();
        while f.write_all(&[0u8; 4096]).is_ok() {}
        let _ = f.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.path("filler")).unwrap();
    }

    /// A command in the holder's mount namespace.
    fn cmd(&self, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new("nsenter");
        c.arg(format!("--mount=/proc/{}/ns/mnt", self.holder.id())).arg("--").args(args);
        c
    }

    /// Starts the lab's agent in the holder's mount namespace; waits until it answers.
    fn start_agent(&self, lab: &Lab, cfg: &std::path::Path) -> AgentChild {
        let inner = lab.agent_command(cfg).unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&lab.paths.log).unwrap();
        let mut c = self.cmd(&[]);
        c.arg(inner.get_program()).args(inner.get_args()).stdin(std::process::Stdio::null());
        c.stdout(log.try_clone().unwrap()).stderr(log);
        let mut child = AgentChild(c.spawn().expect("nsenter (util-linux)"));
        let start = std::time::Instant::now();
        while lab.status_json().is_err() {
            if let Some(st) = child.0.try_wait().unwrap() {
                panic!("coresvc exited during start-up ({st}):\n{}", lab.log_tail(30));
            }
            assert!(start.elapsed() < Duration::from_secs(30), "coresvc did not start:\n{}", lab.log_tail(30));
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }
}

impl Drop for TinyStateDir {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// The agent, killed (SIGKILL) on drop.
struct AgentChild(std::process::Child);

impl Drop for AgentChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a four-way exchange from the lab's relay (dvnt-client) got.
#[derive(Debug, PartialEq)]
enum Got {
    Ack(Ipv4Addr),
    /// An OFFER of this address, then no ACK.
    OfferOnly(Ipv4Addr),
    Nothing,
}

fn exchange(lab: &Lab, mac: [u8; 6]) -> Got {
    let (relay_addr, srv) = (Ipv4Addr::new(10, 20, 0, 50), Ipv4Addr::new(10, 20, 0, 1));
    let Some(offer) =
        relay(lab, "dvnt-client", relay_addr, srv, vec![request(MessageType::Discover, mac, relay_addr, vec![])]).pop()
    else {
        return Got::Nothing;
    };
    let ip = offer.yiaddr();
    request_again(lab, mac, ip).map_or(Got::OfferOnly(ip), Got::Ack)
}

/// A REQUEST (SELECTING) for `ip`; the ACKed address.
fn request_again(lab: &Lab, mac: [u8; 6], ip: Ipv4Addr) -> Option<Ipv4Addr> {
    let (relay_addr, srv) = (Ipv4Addr::new(10, 20, 0, 50), Ipv4Addr::new(10, 20, 0, 1));
    let r = request(
        MessageType::Request,
        mac,
        relay_addr,
        vec![DhcpOption::ServerIdentifier(srv), DhcpOption::RequestedIpAddress(ip)],
    );
    relay(lab, "dvnt-client", relay_addr, srv, vec![r])
        .pop()
        .filter(|m| kind(m) == MessageType::Ack)
        .map(|m| m.yiaddr())
}

fn journal_status(lab: &Lab) -> Value {
    lab.status_json().unwrap()["dhcp"]["journal"].clone()
}

/// An address and the client's hardware address.
type Leased = (Ipv4Addr, [u8; 6]);

/// Leases for new clients until one gets an OFFER but no ACK (its commit
/// failed); the ACKed ones and that client.
fn lease_until_a_commit_fails(lab: &Lab) -> (Vec<Leased>, [u8; 6], Ipv4Addr) {
    let mut acked = Vec::new();
    // (Records are about 44 bytes: a 4 KiB page holds some 90.)
    for i in 0..250u8 {
        let mac = [2, 0, 0, 0x55, 1, i];
        match exchange(lab, mac) {
            Got::Ack(ip) => acked.push((ip, mac)),
            Got::OfferOnly(ip) => return (acked, mac, ip),
            Got::Nothing => panic!("no offer for client {i}:\n{}", lab.log_tail(20)),
        }
    }
    panic!("no commit failed on the full file system: {}", journal_status(lab));
}

/// Issue 17 item 16: a lease journal on a file system that fills up. The
/// commit that does not fit gets no ACK, and the journal is cut back to its
/// last good record (nothing torn or unacknowledged stays in the file to be
/// replayed); when space returns, the same client's retry is ACKed, and
/// after kill -9 every ACK seen on the wire is in the store with no torn
/// tail to cut.
#[test]
fn a_full_disk_fails_the_commit_cuts_the_journal_back_and_leases_resume_when_space_returns() {
    let lab = Lab::for_test().unwrap();
    let cfg = lab.config_with("coresvc.toml", |s| s).unwrap();
    let tiny = TinyStateDir::new(&lab, "64k");
    let agent = tiny.start_agent(&lab, &cfg);
    let pcap = lab.paths.run_dir.join("acks.pcap");
    let tcpdump = lab.capture_dhcp_replies("dvnt-client", &pcap).unwrap();
    assert!(matches!(exchange(&lab, [2, 0, 0, 0x55, 0, 1]), Got::Ack(_)));
    tiny.fill();
    // The journal's last page still has room for a few records: leases go
    // on until a commit needs a new block.
    let (mut seen, mac, ip) = lease_until_a_commit_fails(&lab);
    let j = journal_status(&lab);
    assert!(j["failures"].as_u64().unwrap() >= 1, "{j}");
    assert_eq!(j.get("broken"), None, "cut back, not broken: {j}");
    let on_disk = std::fs::metadata(tiny.path("dhcp-leases.journal")).unwrap().len();
    assert_eq!(on_disk, j["bytes"].as_u64().unwrap(), "the file is cut back to its last good record: {j}");
    assert!(lab.log().contains("the journal was cut back to its last good record"), "{}", lab.log_tail(10));
    // Still full: the client's retry is not ACKed either.
    assert_eq!(request_again(&lab, mac, ip), None);
    // Space returns: the retry is ACKed.
    tiny.free();
    assert_eq!(request_again(&lab, mac, ip), Some(ip));
    let on_disk = std::fs::metadata(tiny.path("dhcp-leases.journal")).unwrap().len();
    assert_eq!(on_disk, journal_status(&lab)["bytes"].as_u64().unwrap());
    seen.push((ip, mac));
    std::thread::sleep(Duration::from_millis(300));
    tcpdump.interrupt();
    // Every ACK on the wire, and every one the test's client received.
    let mut acked = acks_in(&pcap).unwrap();
    let hex = |m: &[u8; 6]| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    acked.extend(seen.iter().map(|(a, m)| (*a, hex(m))));
    // kill -9 and a start on the same journal.
    drop(agent);
    let log_before = lab.log().len();
    let _agent = tiny.start_agent(&lab, &cfg);
    let after = lab.log()[log_before..].to_string();
    assert!(!after.contains("torn tail"), "nothing to cut after the cut-back:\n{after}");
    assert_acks_kept(&lab, &acked, true);
}

/// Issue 17 item 16: when a failed commit cannot even be cut back out of
/// the journal (here: the disk is full and the file is append-only, so the
/// write fails and so does the truncation), DHCP fail-stops: no ACK, no
/// OFFER either, the error in `coresvc status`; a restart on a writable
/// file system replays the journal, cuts the torn tail and serves again
/// with every ACKed lease.
#[test]
fn a_commit_that_cannot_be_cut_back_fail_stops_dhcp_until_a_restart() {
    let lab = Lab::for_test().unwrap();
    let cfg = lab.config_with("coresvc.toml", |s| s).unwrap();
    let tiny = TinyStateDir::new(&lab, "64k");
    let agent = tiny.start_agent(&lab, &cfg);
    let Got::Ack(first) = exchange(&lab, [2, 0, 0, 0x56, 0, 1]) else { panic!("no first lease") };
    tiny.fill();
    let journal = tiny.path("dhcp-leases.journal");
    let chattr = |flag: &str| {
        let out = std::process::Command::new("chattr").arg(flag).arg(&journal).output().expect("chattr (e2fsprogs)");
        assert!(out.status.success(), "chattr {flag}: {}", String::from_utf8_lossy(&out.stderr));
    };
    chattr("+a");
    struct Unattr<'a>(&'a dyn Fn(&str));
    impl Drop for Unattr<'_> {
        fn drop(&mut self) {
            (self.0)("-a");
        }
    }
    let _unattr = Unattr(&chattr);
    let (acked, mac, ip) = lease_until_a_commit_fails(&lab);
    let j = journal_status(&lab);
    let broken = j["broken"].as_str().unwrap_or_else(|| panic!("the journal is broken: {j}"));
    assert!(broken.contains("restart coresvc"), "{broken}");
    // Fail-stop: nothing is answered, not even an OFFER; counted.
    assert_eq!(exchange(&lab, [2, 0, 0, 0x56, 0, 2]), Got::Nothing);
    assert_eq!(request_again(&lab, mac, ip), None);
    let drops = lab.status_json().unwrap()["dhcp"]["counters"]["drops"]["journal_broken"].as_u64().unwrap_or(0);
    assert!(drops >= 2, "{drops}");
    let text = String::from_utf8_lossy(&lab.coresvc(["status"]).unwrap().stdout).to_string();
    assert!(text.contains("JOURNAL BROKEN"), "{text}");
    assert!(lab.log().contains("DHCP stops answering (fail-stop)"), "{}", lab.log_tail(10));
    // The file system is repaired; a restart serves again.
    drop(agent);
    chattr("-a");
    tiny.free();
    let _agent = tiny.start_agent(&lab, &cfg);
    assert_eq!(request_again(&lab, mac, ip), Some(ip));
    let leases = leases(&lab);
    for a in acked.iter().map(|(a, _)| *a).chain([first]) {
        assert!(leases.iter().any(|l| l["address"] == a.to_string() && l["state"] == "bound"), "{a} kept: {leases:?}");
    }
}
