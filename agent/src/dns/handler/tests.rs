use hickory_proto::{op::Query, rr::rdata::TXT};
use rand::{Rng as _, SeedableRng as _};

use super::*;

fn resolver_with(extra: &str) -> Resolver {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/coresvc.toml");
    let text = std::fs::read_to_string(&p).unwrap() + extra;
    let cfg =
        crate::config::Config::parse_str_in(&text, "test.toml", p.parent().unwrap()).unwrap_or_else(|e| panic!("{e}"));
    Resolver::offline(&cfg).unwrap()
}

fn resolver() -> Resolver {
    resolver_with("")
}

/// `n` TXT records of 62 bytes at `big` (in the last zone).
fn big_txt(n: usize) -> String {
    (0..n)
        .map(|i| format!("[[zone.record]]\nname = \"big\"\ntype = \"TXT\"\ndata = '\"{i:02}{}\"'\n", "x".repeat(60)))
        .collect()
}

const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 20, 0, 50));

fn query(name: &str, t: RecordType, edns: Option<u16>) -> Message {
    let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    // from_ascii keeps the case (from_str would lower-case it).
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    if let Some(p) = edns {
        let mut e = Edns::new();
        e.set_max_payload(p);
        m.set_edns(e);
    }
    m
}

fn ask(r: &Resolver, m: &Message, t: Transport) -> Message {
    match r.handle(&m.to_vec().unwrap(), CLIENT, t) {
        Step::Reply(b) => Message::from_vec(&b).unwrap(),
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[test]
fn answers_echo_id_question_case_and_flags() {
    let r = resolver();
    let m = query("ArtiFacts.DVNTM.deevnet.net.", RecordType::A, None);
    let a = ask(&r, &m, Transport::Udp);
    assert_eq!(a.metadata.id, 0x1234);
    assert_eq!(a.metadata.message_type, MessageType::Response);
    assert!(a.metadata.authoritative && a.metadata.recursion_desired && a.metadata.recursion_available);
    assert_eq!(a.queries[0].name().to_string(), "ArtiFacts.DVNTM.deevnet.net.", "question case as received");
    assert_eq!(a.answers.len(), 3, "the whole chain in one answer");
    assert!(a.edns.is_none(), "no OPT without one in the query");
}

#[test]
fn edns_is_answered_with_our_payload_size() {
    let a = ask(&resolver(), &query("ns.mgmt.deevnet.net.", RecordType::A, Some(4096)), Transport::Udp);
    assert_eq!(a.edns.as_ref().unwrap().max_payload(), 1232);
    let mut q = query("ns.mgmt.deevnet.net.", RecordType::A, Some(1232));
    q.edns.as_mut().unwrap().set_version(1);
    let a = ask(&resolver(), &q, Transport::Udp);
    // 16 is BADVERS in an OPT answer (hickory decodes it as BADSIG, same number).
    assert_eq!(u16::from(a.metadata.response_code), 16);
}

#[test]
fn large_answers_are_truncated_over_udp_and_whole_over_tcp() {
    let r = resolver_with(&big_txt(40));
    let q = query("big.dvntm.deevnet.net.", RecordType::TXT, None);
    let a = ask(&r, &q, Transport::Udp);
    assert!(a.metadata.truncation && a.answers.is_empty() && a.queries.len() == 1);
    let a = ask(&r, &query("big.dvntm.deevnet.net.", RecordType::TXT, Some(1232)), Transport::Udp);
    assert!(a.metadata.truncation, "more than 1232 bytes");
    assert!(a.edns.is_some(), "OPT kept when truncated");
    let a = ask(&r, &q, Transport::Tcp);
    assert!(!a.metadata.truncation);
    assert_eq!(a.answers.len(), 40);
    assert!(a.answers.iter().all(|r| matches!(r.data, RData::TXT(TXT { .. }))));
}

#[test]
fn clients_outside_the_segments_are_refused() {
    let r = resolver();
    let b = query("ns.mgmt.deevnet.net.", RecordType::A, None).to_vec().unwrap();
    let Step::Reply(b) = r.handle(&b, "192.0.2.1".parse().unwrap(), Transport::Udp) else { panic!() };
    assert_eq!(Message::from_vec(&b).unwrap().metadata.response_code, ResponseCode::Refused);
}

#[test]
fn protocol_errors() {
    let r = resolver();
    // Responses are never answered.
    let mut m = query("ns.mgmt.deevnet.net.", RecordType::A, None);
    m.metadata.message_type = MessageType::Response;
    assert!(matches!(r.handle(&m.to_vec().unwrap(), CLIENT, Transport::Udp), Step::Drop));
    // Too short for a header.
    assert!(matches!(r.handle(&[1, 2, 3], CLIENT, Transport::Udp), Step::Drop));
    // A header and garbage: FORMERR with the ID.
    let Step::Reply(b) = r.handle(&[0xab, 0xcd, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xff], CLIENT, Transport::Udp) else {
        panic!()
    };
    assert_eq!(&b[..2], &[0xab, 0xcd]);
    assert_eq!(b[3] & 0x0f, 1, "FORMERR");
    assert_eq!(b[2] & 0x81, 0x81, "QR and RD");
    // Other opcodes: NOTIMP.
    let mut m = query("ns.mgmt.deevnet.net.", RecordType::A, None);
    m.metadata.op_code = OpCode::Status;
    assert_eq!(ask(&r, &m, Transport::Udp).metadata.response_code, ResponseCode::NotImp);
    // Two questions: FORMERR.
    let mut m = query("ns.mgmt.deevnet.net.", RecordType::A, None);
    m.add_query(Query::query(Name::from_ascii("x.").unwrap(), RecordType::A));
    assert_eq!(ask(&r, &m, Transport::Udp).metadata.response_code, ResponseCode::FormErr);
    // Zone transfers: REFUSED.
    let m = query("mgmt.deevnet.net.", RecordType::AXFR, None);
    assert_eq!(ask(&r, &m, Transport::Tcp).metadata.response_code, ResponseCode::Refused);
    // Unknown types get NODATA, not silence (RFC 8906).
    let m = query("ns.mgmt.deevnet.net.", RecordType::Unknown(65280), None);
    let a = ask(&r, &m, Transport::Udp);
    assert_eq!(a.metadata.response_code, ResponseCode::NoError);
    assert!(a.answers.is_empty() && a.authorities.len() == 1);
}

#[test]
fn names_outside_the_zones_go_upstream() {
    let r = resolver();
    let b = query("www.example.org.", RecordType::A, None).to_vec().unwrap();
    assert!(matches!(r.handle(&b, CLIENT, Transport::Udp), Step::Forward(_)));
}

/// What the XDP cache relies on: an answer's bytes after the question
/// depend on the question's name only up to case.
#[test]
fn answers_after_the_question_do_not_depend_on_its_case() {
    let r = resolver();
    for (lower, mixed, t) in [
        ("artifacts.dvntm.deevnet.net.", "ArtiFacts.DvNtM.deevnet.NET.", RecordType::A),
        ("mgmt.deevnet.net.", "MGMT.deevnet.net.", RecordType::TXT),
        ("nope.mgmt.deevnet.net.", "NoPe.mgmt.deevnet.net.", RecordType::A),
        ("_http._tcp.dvntm.deevnet.net.", "_HTTP._tcp.DVNTM.deevnet.net.", RecordType::SRV),
        ("10.0.10.10.in-addr.arpa.", "10.0.10.10.IN-ADDR.arpa.", RecordType::PTR),
    ] {
        for edns in [None, Some(1232)] {
            let bytes = |name: &str| match r.handle(&query(name, t, edns).to_vec().unwrap(), CLIENT, Transport::Udp) {
                Step::Reply(b) => b,
                other => panic!("{other:?}"),
            };
            let (a, b) = (bytes(lower), bytes(mixed));
            let qlen = Name::from_ascii(lower).unwrap().len() + 1 + 4;
            assert_eq!(a.len(), b.len(), "{mixed}");
            assert_eq!(a[..12], b[..12], "{mixed}: header");
            assert_eq!(a[12 + qlen..], b[12 + qlen..], "{mixed}: everything after the question");
            let back = Message::from_vec(&b).unwrap();
            assert_eq!(back.queries[0].name().to_string(), mixed, "the question as asked");
        }
    }
}

/// The XDP cache's key parser (common code, also run by the program)
/// accepts only queries hickory reads the same way: one question whose
/// lower-cased name, type and class are the key's, with EDNS and DO as
/// the key says.
#[test]
fn the_cache_key_parser_agrees_with_hickory() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xcace);
    let seeds: Vec<Vec<u8>> = [
        query("ArtiFacts.dvntm.deevnet.net.", RecordType::A, Some(1232)),
        query("www.Example.org.", RecordType::AAAA, None),
        query("x.", RecordType::MX, Some(512)),
    ]
    .iter()
    .map(|m| m.to_vec().unwrap())
    .collect();
    let mut accepted = 0;
    for i in 0..30_000 {
        let mut b = seeds[i % seeds.len()].clone();
        for _ in 0..rng.random_range(0..4) {
            let at = rng.random_range(0..b.len());
            match rng.random_range(0..4) {
                0 => b[at] = rng.random(),
                1 => b[at] ^= 0x20,
                2 => b.truncate(at.max(1)),
                _ => b.insert(at, rng.random()),
            }
        }
        let Some(k) = super::xdp::key_of(&b) else { continue };
        accepted += 1;
        let m = Message::from_vec(&b).unwrap_or_else(|e| panic!("accepted {b:02x?}, hickory: {e}"));
        assert_eq!(m.metadata.message_type, MessageType::Query);
        assert_eq!(m.metadata.op_code, OpCode::Query);
        assert_eq!(m.queries.len(), 1);
        let q = &m.queries[0];
        let wire = hickory_proto::serialize::binary::BinEncodable::to_bytes(&q.name().to_lowercase()).unwrap();
        assert_eq!(&k.key.name[..usize::from(k.key.name_len)], wire.as_slice(), "{b:02x?}");
        assert_eq!((k.key.qtype, k.key.qclass), (u16::from(q.query_type()), u16::from(q.query_class())));
        assert_eq!(m.edns.is_some(), k.key.flags & coresvc_common::dns::KEY_F_EDNS != 0);
        assert_eq!(
            m.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok),
            k.key.flags & coresvc_common::dns::KEY_F_DO != 0
        );
        assert_eq!(m.edns.as_ref().map_or(0, |e| e.version()), 0);
    }
    assert!(accepted > 5_000, "the mutations left enough valid queries ({accepted})");
}

/// The kept answers (the agent's own hot path) equal what the zones
/// give for the same query byte for byte, whatever the case, ID, RD, CD
/// and EDNS of the query; are not used past the client's UDP size; and
/// are forgotten when the catalog changes.
#[test]
fn kept_answers_equal_the_lookup_and_follow_the_catalog() {
    let r = resolver_with(&big_txt(12));
    let mut kept = AnswerCache::new(64);
    let mut out = Vec::new();
    let corpus = [
        ("artifacts.dvntm.deevnet.net.", RecordType::A),
        ("provisioner-01.mgmt.deevnet.net.", RecordType::AAAA),
        ("nope.mgmt.deevnet.net.", RecordType::A),
        ("mgmt.deevnet.net.", RecordType::TXT),
        ("10.0.10.10.in-addr.arpa.", RecordType::PTR),
        ("big.dvntm.deevnet.net.", RecordType::TXT),
    ];
    let mixed = |n: &str, k: usize| -> String {
        n.chars().enumerate().map(|(i, c)| if (i + k).is_multiple_of(3) { c.to_ascii_uppercase() } else { c }).collect()
    };
    let mut reused = 0;
    for (k, (name, t)) in corpus.iter().enumerate() {
        for edns in [None, Some(1232), Some(4096)] {
            for v in 0..4u16 {
                let mut m = query(&mixed(name, k + usize::from(v)), *t, edns);
                m.metadata.id = 0x1000 + v;
                m.metadata.recursion_desired = v % 2 == 0;
                m.metadata.checking_disabled = v >= 2;
                let b = m.to_vec().unwrap();
                for transport in [Transport::Udp, Transport::Tcp] {
                    let before = r.stats.snapshot().answered_kept;
                    assert!(matches!(r.serve(&b, CLIENT, transport, &mut kept, &mut out), Served::Replied));
                    let Step::Reply(reference) = r.handle(&b, CLIENT, transport) else { panic!() };
                    kept.flush(&r.stats);
                    assert_eq!(out, reference, "{name} {t} {edns:?} {v} {transport:?}");
                    reused += r.stats.snapshot().answered_kept - before;
                }
            }
        }
    }
    assert!(reused > 100, "answers were reused ({reused})");
    // Over UDP without EDNS the big answer is truncated, never the kept whole one.
    let b = query("big.dvntm.deevnet.net.", RecordType::TXT, None).to_vec().unwrap();
    r.serve(&b, CLIENT, Transport::Udp, &mut kept, &mut out);
    assert!(Message::from_vec(&out).unwrap().metadata.truncation);
    // A new catalog: the kept answers are not used.
    let b = query("provisioner-01.mgmt.deevnet.net.", RecordType::A, None).to_vec().unwrap();
    r.serve(&b, CLIENT, Transport::Udp, &mut kept, &mut out);
    assert!(!kept.is_empty());
    let mut c = (*r.catalog()).clone();
    let origin = Name::from_ascii("mgmt.deevnet.net.").unwrap();
    let z = c.zone_mut(&origin).unwrap();
    let owner = Name::from_ascii("provisioner-01.mgmt.deevnet.net.").unwrap();
    z.remove(&owner, RecordType::A, None);
    z.insert(Record::from_rdata(owner, 60, RData::A(hickory_proto::rr::rdata::A::new(10, 10, 0, 99)))).unwrap();
    z.finish().unwrap();
    r.set_catalog(c);
    r.serve(&b, CLIENT, Transport::Udp, &mut kept, &mut out);
    assert_eq!(Message::from_vec(&out).unwrap().answers[0].data.to_string(), "10.10.0.99");
    // Clients outside the segments are refused, kept answers or not.
    r.serve(&b, "192.0.2.9".parse().unwrap(), Transport::Tcp, &mut kept, &mut out);
    assert_eq!(Message::from_vec(&out).unwrap().metadata.response_code, ResponseCode::Refused);
}

/// Forwarded records age by the whole seconds they spent in the cache.
#[test]
fn cached_upstream_answers_age() {
    let r = resolver();
    let name = Name::from_ascii("www.example.org.").unwrap();
    let rec = Record::from_rdata(name.clone(), 300, RData::A(hickory_proto::rr::rdata::A::new(192, 0, 2, 80)));
    let entry = Entry::new(ResponseCode::NoError, vec![rec], vec![], vec![]);
    let stored = now_ns() - 30 * 1_000_000_000 - 1;
    r.cache.put(Key::new(&name, RecordType::A, false), entry, stored);
    for edns in [None, Some(1232)] {
        let a = ask(&r, &query("WWW.example.org.", RecordType::A, edns), Transport::Udp);
        assert_eq!(a.answers[0].ttl, 270, "300 - 30");
        assert!(!a.metadata.authoritative);
    }
}

/// Random and mutated queries through the real query path: nothing
/// panics, and every reply parses or is a bare header.
#[test]
fn fuzz_smoke() {
    let r = resolver();
    let (mut kept, mut got) = (AnswerCache::new(256), Vec::new());
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let seeds: Vec<Vec<u8>> = [
        query("artifacts.dvntm.deevnet.net.", RecordType::A, Some(1232)),
        query("10.0.10.10.in-addr.arpa.", RecordType::PTR, None),
        query("_http._tcp.dvntm.deevnet.net.", RecordType::SRV, None),
    ]
    .iter()
    .map(|m| m.to_vec().unwrap())
    .collect();
    for i in 0..20_000 {
        let mut b = if i % 4 == 0 {
            let len = rng.random_range(0..80);
            (0..len).map(|_| rng.random()).collect()
        } else {
            seeds[i % seeds.len()].clone()
        };
        for _ in 0..rng.random_range(1..6) {
            if b.is_empty() {
                break;
            }
            let at = rng.random_range(0..b.len());
            match rng.random_range(0..3) {
                0 => b[at] = rng.random(),
                1 => b.truncate(at),
                _ => b.insert(at, rng.random()),
            }
        }
        if let Step::Reply(out) = r.handle(&b, CLIENT, Transport::Udp) {
            assert!(out.len() >= 12);
            assert!(out.len() <= 1232);
            // Asked twice through the kept answers: what the lookup gives.
            for _ in 0..2 {
                if let Served::Replied = r.serve(&b, CLIENT, Transport::Udp, &mut kept, &mut got) {
                    assert_eq!(got, out, "{b:02x?}");
                }
            }
        }
    }
    kept.flush(&r.stats);
    assert!(r.stats.snapshot().answered_kept > 100, "mutated queries were answered from the kept answers");
}
