//! BPF_PROG_TEST_RUN tests of the XDP DNS answer cache, with the agent's
//! real DNS service (no sockets) filling it: for a corpus of queries the
//! frames the program sends equal the agent's answer to the same query,
//! byte for byte except TTL fields; malformed and unsupported queries pass
//! untouched, counted by reason; changes invalidate entries at once.

mod support;

use std::{collections::HashSet, net::IpAddr, sync::Arc, time::Instant};

use coresvc::{
    config::Config,
    dns::{
        Dns,
        cache::{Entry, Key, now_ns},
        handler::{Step, Transport},
        wire,
        xdp::{XdpCache, key_of},
    },
};
use coresvc_lab::frames;
use coresvc_maps_schema::{self as schema, DnsAnswer, SETTINGS_F_DNS_CACHE, dns_counter as counter, reason};
use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{
        Name, RData, Record, RecordType,
        rdata::{A, SOA, opt::EdnsOption},
    },
};
use support::*;

const TX: u32 = 3;
/// The dvnt segment (index 1 in the example configuration).
const DVNT: u32 = 1;
const CLIENT: &str = "10.20.0.50";
const GW: &str = "10.20.0.1";

fn config(extra: &str) -> Config {
    let base = coresvc_lab::default_config();
    let text = std::fs::read_to_string(&base).unwrap() + coresvc_lab::dns::EXTRA_ZONES + extra;
    let mut cfg = Config::parse_str_in(&text, "dns-progtest.toml", base.parent().unwrap()).unwrap();
    let dir = std::env::temp_dir().join(format!("coresvc-dns-progtest-{}-{:?}", std::process::id(), Instant::now()));
    std::fs::create_dir_all(&dir).unwrap();
    cfg.agent.state_dir = dir;
    cfg
}

/// The programs configured as the agent would, and the DNS service filling
/// their cache.
struct Setup {
    fw: Fw,
    dns: Dns,
    cfg: Config,
    gw_mac: [u8; 6],
}

/// A record whose answers grow a frame by more than the headroom XDP
/// frames have (only growth at the tail fits them).
const LARGE: &str = r#"
[[zone.record]]
name = "large"
type = "TXT"
data = '"0123456789012345678901234567890123456789012345678901234567890123456789" "0123456789012345678901234567890123456789012345678901234567890123456789" "0123456789012345678901234567890123456789012345678901234567890123456789" "0123456789012345678901234567890123456789012345678901234567890123456789"'
"#;

impl Setup {
    fn new() -> Self {
        Self::with(LARGE)
    }

    /// With `extra` zone data (TOML) instead of LARGE.
    fn with(extra: &str) -> Self {
        let cfg = config(extra);
        let mut fw = Fw::new(&cfg, 1024);
        fw.set_flag(SETTINGS_F_DNS_CACHE, true);
        let cache = fw.ebpf.take_map(schema::DNS_CACHE.name).unwrap();
        let epochs = fw.ebpf.take_map(schema::DNS_EPOCHS.name).unwrap();
        let rrl = fw.ebpf.take_map(schema::DNS_RRL_CFG.name).unwrap();
        let dns = Dns::new(&cfg).unwrap();
        let x = XdpCache::from_maps(cache, epochs, true).unwrap().with_rate_limit_map(rrl).unwrap();
        dns.attach_xdp(Arc::new(x)).unwrap();
        Setup { fw, dns, cfg, gw_mac: mac_of("d_dvnt") }
    }

    /// A query from the dvnt client to its gateway's DNS service.
    fn frame(&self, payload: &[u8], sport: u16) -> Vec<u8> {
        self.frame_from(CLIENT, payload, sport)
    }

    fn frame_from(&self, client: &str, payload: &[u8], sport: u16) -> Vec<u8> {
        let (c, g) = (ip(client), ip(GW));
        frames::ipv4(CLIENT_MAC, self.gw_mac, c, g, 17, 64, 0, &frames::udp(c, sport, g, 53, payload))
    }

    fn xdp(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let dvnt = self.fw.dvnt;
        self.fw.xdp(dvnt, frame)
    }

    /// The agent's answer (which also fills the cache).
    fn agent(&self, payload: &[u8]) -> Vec<u8> {
        match self.dns.resolver.handle(payload, IpAddr::V4(ip(CLIENT)), Transport::Udp) {
            Step::Reply(b) => b,
            other => panic!("the agent did not answer at once: {other:?}"),
        }
    }

    fn stat(&self, n: u32) -> u64 {
        self.fw.dns_stats(DVNT).get(n)
    }
}

#[derive(Clone, Copy)]
struct Opt {
    payload: u16,
    dnssec_ok: bool,
    cookie: bool,
}

fn query(id: u16, name: &str, t: RecordType, edns: Option<Opt>) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = id.is_multiple_of(2);
    m.metadata.checking_disabled = id.is_multiple_of(3);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    if let Some(o) = edns {
        let mut e = Edns::new();
        e.set_max_payload(o.payload);
        e.set_dnssec_ok(o.dnssec_ok);
        if o.cookie {
            // A client cookie (RFC 7873), as dig sends.
            e.options_mut().insert(EdnsOption::Unknown(10, vec![0x5a; 8]));
        }
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

/// `name` with the case of some letters flipped (a 0x20 client).
fn mix_case(name: &str, seed: usize) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| if (i + seed).is_multiple_of(3) { c.to_ascii_uppercase() } else { c })
        .collect()
}

/// An answer sent by the program: headers turned around, every checksum
/// right, and the DNS message equal to the agent's `reference` except that
/// TTL fields may be lower by the seconds since `at`.
fn check_answer(query: &[u8], out: &[u8], reference: &[u8], at: Instant) {
    let q = frames::parse(query);
    let p = frames::parse(out);
    assert!(p.all_ok(), "checksums: {p:?}");
    assert_eq!((p.src, p.dst, p.proto, p.ttl), (q.dst, q.src, 17, 64));
    assert_eq!((p.sport, p.dport), (53, q.sport));
    assert_eq!(&out[0..6], &query[6..12], "to the sender's MAC");
    assert_eq!(&out[6..12], &query[0..6], "from the MAC it was sent to");
    let dns = &out[42..];
    assert_eq!(dns.len(), reference.len(), "length of {reference:02x?}");
    let ttls: Vec<usize> =
        wire::records(reference).unwrap().iter().filter(|r| r.rtype != wire::TYPE_OPT).map(|r| r.ttl_at).collect();
    let (mut a, mut b) = (dns.to_vec(), reference.to_vec());
    let slack = at.elapsed().as_secs() as u32 + 1;
    for &t in &ttls {
        let ttl = |m: &[u8]| u32::from_be_bytes(m[t..t + 4].try_into().unwrap());
        assert!(ttl(dns) <= ttl(reference), "never a larger TTL than the agent's");
        assert!(ttl(dns) + slack >= ttl(reference), "aged by the time passed only");
        a[t..t + 4].fill(0);
        b[t..t + 4].fill(0);
    }
    assert_eq!(a, b, "byte for byte except TTLs");
}

/// Answers from upstream, as the forwarder would have cached them some
/// seconds ago.
fn seed_upstream(dns: &Dns) {
    let stored = now_ns() - 7_400_000_000;
    let www = Name::from_ascii("www.example.org.").unwrap();
    let a = Record::from_rdata(www.clone(), 300, RData::A(A::new(192, 0, 2, 80)));
    let nope = Name::from_ascii("nope.example.org.").unwrap();
    let origin = Name::from_ascii("example.org.").unwrap();
    let soa =
        RData::SOA(SOA::new(Name::from_ascii("ns.example.org.").unwrap(), origin.clone(), 1, 3600, 600, 86400, 120));
    let soa = Record::from_rdata(origin, 120, soa);
    for dnssec_ok in [false, true] {
        let e = Entry::new(ResponseCode::NoError, vec![a.clone()], vec![], vec![]);
        dns.resolver.cache.put(Key::new(&www, RecordType::A, dnssec_ok), e, stored);
        let e = Entry::new(ResponseCode::NXDomain, vec![], vec![soa.clone()], vec![]);
        dns.resolver.cache.put(Key::new(&nope, RecordType::A, dnssec_ok), e, stored);
    }
}

#[test]
fn xdp_answers_equal_the_agents_byte_for_byte() {
    in_fib_ns(|| {
        let mut s = Setup::new();
        seed_upstream(&s.dns);
        let corpus: &[(&str, RecordType)] = &[
            ("provisioner-01.mgmt.deevnet.net.", RecordType::A),
            ("artifacts.dvntm.deevnet.net.", RecordType::A),
            ("artifacts.dvntm.deevnet.net.", RecordType::CNAME),
            ("web.ref.deevnet.net.", RecordType::A),
            ("web.ref.deevnet.net.", RecordType::AAAA),
            ("ref.deevnet.net.", RecordType::MX),
            ("ref.deevnet.net.", RecordType::TXT),
            ("ref.deevnet.net.", RecordType::CAA),
            ("ref.deevnet.net.", RecordType::NS),
            ("ref.deevnet.net.", RecordType::SOA),
            ("_http._tcp.ref.deevnet.net.", RecordType::SRV),
            ("chain.ref.deevnet.net.", RecordType::A),
            ("nope.ref.deevnet.net.", RecordType::A),
            ("web.ref.deevnet.net.", RecordType::MX),
            ("x.wild.ref.deevnet.net.", RecordType::A),
            ("host.sub.ref.deevnet.net.", RecordType::A),
            ("10.0.10.10.in-addr.arpa.", RecordType::PTR),
            ("big.dvntm.deevnet.net.", RecordType::TXT),
            ("large.ref.deevnet.net.", RecordType::TXT),
            ("www.example.org.", RecordType::A),
            ("nope.example.org.", RecordType::A),
            ("outside.ref.deevnet.net.", RecordType::A),
        ];
        let opts = [
            None,
            Some(Opt { payload: 1232, dnssec_ok: false, cookie: false }),
            Some(Opt { payload: 4096, dnssec_ok: true, cookie: false }),
            Some(Opt { payload: 512, dnssec_ok: false, cookie: true }),
        ];
        let mut seen = HashSet::new();
        let (mut answered, mut asked_agent) = (0, 0);
        for (i, (name, t)) in corpus.iter().enumerate() {
            for (j, o) in opts.iter().enumerate() {
                let what = format!("{name} {t} {}", if o.is_some() { "edns" } else { "" });
                let id = (i * 7 + j) as u16;
                let asked = query(id, &mix_case(name, i + j), *t, *o);
                let frame = s.frame(&asked, 40000 + id);
                let key = key_of(&asked).unwrap().key;
                if seen.insert(key) {
                    let misses = s.stat(counter::MISSES);
                    let (v, out) = s.xdp(&frame);
                    assert_eq!((v, &out), (PASS, &frame), "{what}: not cached yet, passed untouched");
                    assert_eq!(s.stat(counter::MISSES), misses + 1, "{what}");
                }
                // Another client asks with another case, ID and flags: the agent fills the cache.
                s.agent(&query(id ^ 0x5555, &mix_case(name, i + j + 1), *t, *o));
                let reference = s.agent(&asked);
                asked_agent += 2;
                if name.starts_with("outside.") && !id.is_multiple_of(2) {
                    // A chain followed upstream, asked without RD: the agent
                    // answers with the local CNAME alone; the cache's entry
                    // (filled for RD=1) is not for this query.
                    let m = Message::from_vec(&reference).unwrap();
                    assert_eq!((m.metadata.response_code, m.answers.len()), (ResponseCode::NoError, 1), "{what}");
                    let misses = s.stat(counter::MISSES);
                    let (v, out) = s.xdp(&frame);
                    assert_eq!((v, &out), (PASS, &frame), "{what}: RD=0 is the agent's");
                    assert_eq!(s.stat(counter::MISSES), misses + 1, "{what}");
                    continue;
                }
                let at = Instant::now();
                let (v, out) = s.xdp(&frame);
                assert_eq!(v, TX, "{what}: answered from the cache");
                check_answer(&frame, &out, &reference, at);
                answered += 1;
            }
        }
        assert_eq!(s.stat(counter::HITS), answered);
        // A query without a UDP checksum (allowed over IPv4) is answered too.
        let asked = query(77, "Provisioner-01.MGMT.deevnet.net.", RecordType::A, None);
        let mut frame = s.frame(&asked, 41000);
        frame[40..42].fill(0);
        let (v, out) = s.xdp(&frame);
        assert_eq!(v, TX);
        check_answer(&frame, &out, &s.agent(&asked), Instant::now());
        // The DNS service's own query counter saw none of the answers above.
        assert_eq!(
            s.dns.resolver.stats.snapshot().queries_udp,
            asked_agent + 1,
            "the agent answered only what it was asked directly"
        );
        let _ = std::fs::remove_dir_all(&s.cfg.agent.state_dir);
    });
}

#[test]
fn malformed_and_unsupported_queries_pass_untouched() {
    in_fib_ns(|| {
        let mut s = Setup::new();
        let base = query(0x4242, "provisioner-01.mgmt.deevnet.net.", RecordType::A, None);
        s.agent(&base);
        let good = s.frame(&base, 40123);
        assert_eq!(s.xdp(&good).0, TX, "the question is cached");
        // Payload variants (frames built around them are otherwise right).
        let with = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut p = base.clone();
            f(&mut p);
            p
        };
        let mut long_label = base[..12].to_vec();
        long_label.push(64);
        long_label.extend_from_slice(&[b'a'; 64]);
        long_label.extend_from_slice(&[0, 0, 1, 0, 1]);
        let mut name_256 = base[..12].to_vec();
        for _ in 0..4 {
            name_256.push(63);
            name_256.extend_from_slice(&[b'x'; 63]);
        }
        name_256.extend_from_slice(&[0, 0, 1, 0, 1]);
        let long_ok = query(1, &format!("{}.mgmt.deevnet.net.", "a".repeat(50)), RecordType::A, None);
        let mut pointer = base[..12].to_vec();
        pointer.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        let mut ecs = Message::from_vec(&query(5, "provisioner-01.mgmt.deevnet.net.", RecordType::A, None)).unwrap();
        let mut e = Edns::new();
        e.options_mut().insert(EdnsOption::Unknown(8, vec![0, 1, 24, 0, 10, 20, 0]));
        ecs.set_edns(e);
        let mut v1 = Message::from_vec(&base).unwrap();
        let mut e = Edns::new();
        e.set_version(1);
        v1.set_edns(e);
        let payloads: Vec<(&str, Vec<u8>, u32)> = vec![
            ("a label of 64 bytes", long_label, counter::MALFORMED),
            ("a name of 256 bytes", name_256, counter::TOO_LONG),
            ("a name longer than the program handles", long_ok, counter::TOO_LONG),
            ("a compression pointer in the question", pointer, counter::MALFORMED),
            ("a truncated header", base[..7].to_vec(), counter::MALFORMED),
            ("a truncated question", base[..base.len() - 1].to_vec(), counter::MALFORMED),
            ("qdcount 0", with(&|p| p[5] = 0), counter::COUNTS),
            ("qdcount 2", with(&|p| p[5] = 2), counter::COUNTS),
            ("an answer record", with(&|p| p[7] = 1), counter::COUNTS),
            ("a byte after the question", with(&|p| p.push(0)), counter::MALFORMED),
            ("a response", with(&|p| p[2] |= 0x80), counter::NOT_QUERY),
            ("a NOTIFY", with(&|p| p[2] = 4 << 3), counter::NOT_QUERY),
            ("TC set", with(&|p| p[2] |= 0x02), counter::NOT_QUERY),
            ("EDNS version 1", v1.to_vec().unwrap(), counter::EDNS),
            ("client subnet", ecs.to_vec().unwrap(), counter::EDNS),
        ];
        let mut cases: Vec<(&str, Vec<u8>, u32)> =
            payloads.into_iter().map(|(w, p, c)| (w, s.frame(&p, 40200), c)).collect();
        // Frame-level variants of the cached question.
        let mut f = good.clone();
        f[38..40].copy_from_slice(&((good.len() - 34 + 2) as u16).to_be_bytes());
        cases.push(("a UDP length longer than the datagram", f, counter::MALFORMED));
        cases.push(("an IPv4 length beyond the frame", frames::with_tot_len(good.clone(), 400), counter::MALFORMED));
        let mut f = good.clone();
        f[41] ^= 0x01;
        cases.push(("a bad UDP checksum", f, counter::CHECKSUM));
        let mut spoofed = good.clone();
        spoofed[14 + 12] = 10;
        spoofed[14 + 13] = 99;
        frames::refresh_ip_checksum(&mut spoofed);
        let mut f = good.clone();
        f[0..6].fill(0xff);
        cases.push(("a broadcast frame", f, counter::SOURCE));
        let mut f = good.clone();
        f[14 + 6] = 0x20;
        frames::refresh_ip_checksum(&mut f);
        cases.push(("a first fragment", f, counter::IP));
        let (c, g) = (ip(CLIENT), ip(GW));
        let mut opts = good[..34].to_vec();
        opts[14] = 0x46;
        opts.extend_from_slice(&[1, 1, 1, 0]);
        opts.extend_from_slice(&good[34..]);
        let ip_len = (opts.len() - 14) as u16;
        opts[16..18].copy_from_slice(&ip_len.to_be_bytes());
        frames::refresh_ip_checksum(&mut opts);
        cases.push(("IP options", opts, counter::IP));
        let tcp = frames::ipv4(CLIENT_MAC, s.gw_mac, c, g, 6, 64, 0, &frames::tcp(c, 40300, g, 53, SYN, b""));
        cases.push(("DNS over TCP", tcp, counter::TCP));
        for (what, frame, c) in &cases {
            let (before, hits) = (s.stat(*c), s.stat(counter::HITS));
            let (v, out) = s.xdp(frame);
            assert_eq!(v, PASS, "{what}");
            assert_eq!(&out, frame, "{what}: untouched");
            assert_eq!(s.stat(*c), before + 1, "{what}: counted as {}", schema::DNS_COUNTER_NAMES[*c as usize].1);
            assert_eq!(s.stat(counter::HITS), hits, "{what}");
        }
        // A source outside the segment: not answered, and then dropped by
        // the firewall's source check (BCP 38).
        let before = s.stat(counter::SOURCE);
        let (v, out) = s.xdp(&spoofed);
        assert_eq!((v, &out), (DROP, &spoofed));
        assert_eq!(s.stat(counter::SOURCE), before + 1);
        assert_eq!(s.fw.drops(reason::SPOOFED), 1);
        // A bad IPv4 header checksum: not answered, and dropped by the
        // header checks as before.
        let drops = s.fw.drops(reason::IPV4_BAD_CHECKSUM);
        let before = s.stat(counter::CHECKSUM);
        let bad = frames::corrupt_ip_checksum(good.clone());
        let (v, out) = s.xdp(&bad);
        assert_eq!((v, &out), (DROP, &bad));
        assert_eq!(s.stat(counter::CHECKSUM), before + 1);
        assert_eq!(s.fw.drops(reason::IPV4_BAD_CHECKSUM), drops + 1);
        // UDP to port 53 of another address, and other traffic: not counted.
        let other = frames::ipv4(CLIENT_MAC, s.gw_mac, c, ip("10.10.0.1"), 17, 64, 0, &frames::udp(c, 1, g, 53, &base));
        let before = s.fw.dns_stats(DVNT);
        for f in [other, frame_udp(CLIENT_MAC, CLIENT, 5000, "10.10.0.10", 9)] {
            assert_ne!(s.xdp(&f).0, TX);
        }
        assert_eq!(s.fw.dns_stats(DVNT), before);
        assert_eq!(s.xdp(&good).0, TX, "still answering");
        let _ = std::fs::remove_dir_all(&s.cfg.agent.state_dir);
    });
}

#[test]
fn changes_invalidate_entries_before_they_return() {
    in_fib_ns(|| {
        let mut s = Setup::new();
        let ask = |s: &mut Setup, name: &str, t: RecordType| -> (u32, Vec<u8>, Vec<u8>) {
            let q = query(9, name, t, None);
            let f = s.frame(&q, 40400);
            let (v, out) = s.xdp(&f);
            (v, out, f)
        };
        let fill = |s: &mut Setup, name: &str, t: RecordType| {
            s.agent(&query(10, name, t, None));
            assert_eq!(ask(s, name, t).0, TX, "{name} cached");
        };
        fill(&mut s, "artifacts.dvntm.deevnet.net.", RecordType::A);
        fill(&mut s, "ref.deevnet.net.", RecordType::TXT);
        fill(&mut s, "box1.dvnt.deevnet.net.", RecordType::A);
        fill(&mut s, "50.0.20.10.in-addr.arpa.", RecordType::PTR);
        // A service move: answers through the service are gone when it returns.
        s.dns.service_move("artifacts.mgmt.deevnet.net", "provisioner-01").unwrap();
        let invalidated = s.stat(counter::INVALIDATED);
        let (v, out, f) = ask(&mut s, "artifacts.dvntm.deevnet.net.", RecordType::A);
        assert_eq!((v, &out), (PASS, &f), "the old answer is not served");
        assert_eq!(s.stat(counter::INVALIDATED), invalidated + 1);
        let fresh = s.agent(&query(9, "artifacts.dvntm.deevnet.net.", RecordType::A, None));
        let m = Message::from_vec(&fresh).unwrap();
        assert_eq!(
            m.answers[1].data,
            RData::CNAME(hickory_proto::rr::rdata::CNAME(
                Name::from_ascii("provisioner-01.mgmt.deevnet.net.").unwrap()
            ))
        );
        let (v, out, f) = ask(&mut s, "artifacts.dvntm.deevnet.net.", RecordType::A);
        assert_eq!(v, TX);
        check_answer(&f, &out, &fresh, Instant::now());
        // Another zone's entries were not touched.
        assert_eq!(ask(&mut s, "ref.deevnet.net.", RecordType::TXT).0, TX);
        // A DHCP registration: the cached NXDOMAIN and the reverse zone's answers go.
        s.dns.register("dvnt.deevnet.net", "box1", ip(CLIENT)).unwrap();
        assert_eq!(ask(&mut s, "box1.dvnt.deevnet.net.", RecordType::A).0, PASS);
        assert_eq!(ask(&mut s, "50.0.20.10.in-addr.arpa.", RecordType::PTR).0, PASS);
        let a = Message::from_vec(&s.agent(&query(11, "box1.dvnt.deevnet.net.", RecordType::A, None))).unwrap();
        assert_eq!(a.answers.len(), 1);
        assert_eq!(ask(&mut s, "box1.dvnt.deevnet.net.", RecordType::A).0, TX);
        s.dns.unregister(&Name::from_ascii("box1.dvnt.deevnet.net.").unwrap(), ip(CLIENT));
        assert_eq!(ask(&mut s, "box1.dvnt.deevnet.net.", RecordType::A).0, PASS);
        // A reload that changes nothing keeps every entry; one that changes
        // a zone invalidates that zone's entries only.
        fill(&mut s, "box1.dvnt.deevnet.net.", RecordType::A);
        s.dns.zone_reload().unwrap();
        for (n, t) in [("ref.deevnet.net.", RecordType::TXT), ("box1.dvnt.deevnet.net.", RecordType::A)] {
            assert_eq!(ask(&mut s, n, t).0, TX, "{n} after a reload that changed nothing");
        }
        let mut changed =
            config(&format!("{LARGE}\n[[zone.record]]\nname = \"new\"\ntype = \"A\"\ndata = \"10.0.0.9\"\n"));
        let _ = std::fs::remove_dir_all(&changed.agent.state_dir);
        changed.agent.state_dir = s.cfg.agent.state_dir.clone();
        s.dns.reconfigure(&changed).unwrap();
        assert_eq!(ask(&mut s, "ref.deevnet.net.", RecordType::TXT).0, PASS, "the changed zone's entries go");
        assert_eq!(ask(&mut s, "box1.dvnt.deevnet.net.", RecordType::A).0, TX, "another zone's stay");
        // Expiry: an entry is never served at or after it.
        fill(&mut s, "ref.deevnet.net.", RecordType::TXT);
        let xdp = s.dns.resolver.xdp().unwrap().clone();
        let key = key_of(&query(1, "ref.deevnet.net.", RecordType::TXT, None)).unwrap().key;
        let mut e = xdp.get(&key).unwrap();
        e.expires_ns = now_ns();
        xdp.insert(&key, &e);
        let expired = s.stat(counter::EXPIRED);
        assert_eq!(ask(&mut s, "ref.deevnet.net.", RecordType::TXT).0, PASS);
        assert_eq!(s.stat(counter::EXPIRED), expired + 1);
        // An entry for another question under this one's hash (a
        // collision) is never served for it.
        fill(&mut s, "ref.deevnet.net.", RecordType::TXT);
        let other = key_of(&query(1, "box1.dvnt.deevnet.net.", RecordType::A, None)).unwrap().key;
        xdp.insert_under(key.hash(), &DnsAnswer { question: other, ..xdp.get(&key).unwrap() }).unwrap();
        let misses = s.stat(counter::MISSES);
        assert_eq!(ask(&mut s, "ref.deevnet.net.", RecordType::TXT).0, PASS);
        assert_eq!(s.stat(counter::MISSES), misses + 1, "counted as a miss");
        // Switched off: nothing is answered (or counted) from XDP.
        fill(&mut s, "ref.deevnet.net.", RecordType::TXT);
        s.fw.set_flag(SETTINGS_F_DNS_CACHE, false);
        let before = s.fw.dns_stats(DVNT);
        assert_eq!(ask(&mut s, "ref.deevnet.net.", RecordType::TXT).0, PASS);
        assert_eq!(s.fw.dns_stats(DVNT), before);
        s.fw.set_flag(SETTINGS_F_DNS_CACHE, true);
        // Never on the uplink.
        let (_, _, f) = ask(&mut s, "ref.deevnet.net.", RecordType::TXT);
        let up = s.fw.up;
        assert_ne!(s.fw.xdp_prog(schema::programs::UPLINK_INGRESS, up, &f).0, TX);
        assert_ne!(s.fw.xdp(up, &f).0, TX, "nor on an uplink interface with the segment program");
        // The firewall decides as for every packet to the gateway.
        let deny = config(
            "\n[[firewall.rule]]\nname = \"no-dns-from-dvnt\"\nfrom = \"dvnt\"\nto = \"gateway\"\nproto = \"udp\"\nports = [53]\naction = \"deny\"\n",
        );
        s.fw.install(&deny);
        let denied = s.fw.drops(reason::FW_DENY);
        let fw_passes = s.stat(counter::FIREWALL);
        assert_eq!(ask(&mut s, "ref.deevnet.net.", RecordType::TXT).0, DROP);
        assert_eq!(s.fw.drops(reason::FW_DENY), denied + 1);
        assert_eq!(s.stat(counter::FIREWALL), fw_passes + 1);
        assert_eq!(s.fw.rule_packets(&deny, "no-dns-from-dvnt"), 1, "counted once");
        // The agent writes the decision for DNS with the rule bank; a rule
        // with prefixes leaves it to the program's scan, which decides alike.
        let by_prefix = config(
            "\n[[firewall.rule]]\nname = \"no-dns-to-dvnt-gw\"\nfrom = \"any\"\nto = \"gateway\"\nproto = \"udp\"\nports = [53]\ndst = [\"10.20.0.1/32\"]\naction = \"deny\"\n",
        );
        s.fw.install(&by_prefix);
        assert_eq!(ask(&mut s, "ref.deevnet.net.", RecordType::TXT).0, DROP);
        assert_eq!(s.stat(counter::FIREWALL), fw_passes + 2);
        assert_eq!(s.fw.rule_packets(&by_prefix, "no-dns-to-dvnt-gw"), 1);
        s.fw.install(&s.cfg.clone());
        assert_eq!(ask(&mut s, "ref.deevnet.net.", RecordType::TXT).0, TX);
        assert!(
            s.fw.rule_packets(&s.cfg.clone(), "default:gateway-dns") >= 1,
            "hits count for the rule that allows them"
        );
        for c in [&s.cfg.agent.state_dir, &deny.agent.state_dir, &by_prefix.agent.state_dir] {
            let _ = std::fs::remove_dir_all(c);
        }
    });
}

/// Issue 17.11 in the program: over the client prefix's rate the cache's
/// answers are dropped, every slip-th sent truncated (TC, the question and
/// nothing else, checksums right), counted; another prefix is answered;
/// off again, everything is.
#[test]
fn the_xdp_cache_limits_answers_per_prefix() {
    in_fib_ns(|| {
        let mut s = Setup::new();
        let limit = |rate: u32, burst: u32, prefix: u8| coresvc::config::RateLimit {
            responses_per_second: rate,
            burst,
            slip: 2,
            ipv4_prefix_length: prefix,
            ..Default::default()
        };
        // One answer per second, four at once, per /32 (so that a second
        // host of the segment is another prefix).
        s.dns.resolver.set_rate_limit(&limit(1, 4, 32));
        let q = query(
            0x4242,
            "provisioner-01.mgmt.deevnet.net.",
            RecordType::A,
            Some(Opt { payload: 1232, dnssec_ok: false, cookie: false }),
        );
        s.agent(&q);
        let f = s.frame(&q, 40500);
        let mut verdicts = Vec::new();
        let mut slipped = Vec::new();
        for _ in 0..10 {
            let (v, out) = s.xdp(&f);
            if v == TX && out.len() < f.len() {
                slipped.push(out);
                verdicts.push("slip");
            } else {
                verdicts.push(match v {
                    TX => "answer",
                    DROP => "drop",
                    _ => "pass",
                });
            }
        }
        assert_eq!(
            verdicts,
            ["answer", "answer", "answer", "answer", "drop", "slip", "drop", "slip", "drop", "slip"],
            "a burst of four, then every second one slips"
        );
        assert_eq!((s.stat(counter::RATE_LIMITED), s.stat(counter::SLIPPED)), (3, 3));
        let qf = frames::parse(&f);
        for out in &slipped {
            let p = frames::parse(out);
            assert!(p.all_ok(), "checksums: {p:?}");
            assert_eq!((p.src, p.dst, p.sport, p.dport), (qf.dst, qf.src, 53, qf.sport));
            let m = Message::from_vec(&out[42..]).unwrap();
            assert!(m.metadata.truncation && m.metadata.message_type == MessageType::Response);
            assert_eq!((m.metadata.id, m.answers.len(), m.authorities.len(), m.additionals.len()), (0x4242, 0, 0, 0));
            assert_eq!(&out[42 + 12..], &q[12..q.len() - 11], "the question as asked");
        }
        // Another host (another /32) is answered.
        let other = s.frame_from("10.20.0.51", &q, 40501);
        assert_eq!(s.xdp(&other).0, TX);
        // Per /24 it is the same prefix, and over its rate.
        s.dns.resolver.set_rate_limit(&limit(1, 1, 24));
        let (_, out) = s.xdp(&other);
        assert_eq!(s.xdp(&other).0, DROP, "the segment's /24 is over its rate ({})", out.len());
        // Off: answered.
        s.dns.resolver.set_rate_limit(&limit(0, 0, 24));
        for _ in 0..5 {
            let (v, out) = s.xdp(&f);
            assert_eq!((v, out.len() > f.len()), (TX, true));
        }
        let _ = std::fs::remove_dir_all(&s.cfg.agent.state_dir);
    });
}

/// With the XDP cache on, the agent's kept answers serve only what the
/// program cannot hold (here an answer over 512 bytes); an answer the
/// program takes is computed again on every miss, which refills the cache.
#[test]
fn kept_answers_leave_to_the_xdp_cache_what_it_holds() {
    in_fib_ns(|| {
        // Answers of over 512 bytes: more than an entry of the program's holds.
        let huge: String = (0..8)
            .map(|i| format!("[[zone.record]]\nname = \"huge\"\ntype = \"TXT\"\ndata = '\"{i}{}\"'\n", "x".repeat(90)))
            .collect();
        let s = Setup::with(&huge);
        let r = &s.dns.resolver;
        let mut kept = coresvc::dns::answers::AnswerCache::new(16);
        let mut out = Vec::new();
        let client = IpAddr::V4(ip(CLIENT));
        let edns = Some(Opt { payload: 1232, dnssec_ok: false, cookie: false });
        let serve = |kept: &mut coresvc::dns::answers::AnswerCache, out: &mut Vec<u8>, q: &[u8]| {
            let before = r.stats.snapshot().answered_kept;
            assert!(matches!(r.serve(q, client, Transport::Udp, kept, out), coresvc::dns::handler::Served::Replied));
            kept.flush(&r.stats);
            r.stats.snapshot().answered_kept - before
        };
        let small = query(2, "provisioner-01.mgmt.deevnet.net.", RecordType::A, edns);
        let large = query(2, "huge.ref.deevnet.net.", RecordType::TXT, edns);
        assert_eq!(serve(&mut kept, &mut out, &small), 0);
        assert!(s.dns.resolver.xdp().unwrap().get(&key_of(&small).unwrap().key).is_some(), "in the XDP cache");
        assert_eq!(serve(&mut kept, &mut out, &small), 0, "a miss of the program's is computed again");
        assert_eq!(serve(&mut kept, &mut out, &large), 0);
        assert!(out.len() > 512 && s.dns.resolver.xdp().unwrap().get(&key_of(&large).unwrap().key).is_none());
        assert_eq!(serve(&mut kept, &mut out, &large), 1, "what the program cannot hold is the agent's to copy");
        let _ = std::fs::remove_dir_all(&s.cfg.agent.state_dir);
    });
}
