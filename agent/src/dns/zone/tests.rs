use std::str::FromStr;

use hickory_proto::rr::rdata::{A, CNAME, MX, NS, SOA, SRV};

use super::*;

fn n(s: &str) -> Name {
    Name::from_str(s).unwrap()
}

fn rec(name: &str, ttl: u32, data: RData) -> Record {
    Record::from_rdata(n(name), ttl, data)
}

fn a(name: &str, ip: [u8; 4]) -> Record {
    rec(name, 300, RData::A(A::new(ip[0], ip[1], ip[2], ip[3])))
}

fn cname(name: &str, target: &str) -> Record {
    rec(name, 300, RData::CNAME(CNAME(n(target))))
}

fn zone(origin: &str, records: Vec<Record>) -> Zone {
    let mut z = Zone::new(&n(origin), ZoneKind::Management);
    z.insert(rec(
        origin,
        300,
        RData::SOA(SOA::new(n(&format!("ns.{origin}")), n(&format!("hostmaster.{origin}")), 1, 3600, 600, 604800, 60)),
    ))
    .unwrap();
    for r in records {
        z.insert(r).unwrap();
    }
    z.finish().unwrap();
    z
}

fn catalog() -> Catalog {
    let mgmt = zone(
        "mgmt.example.",
        vec![
            rec("mgmt.example.", 300, RData::NS(NS(n("ns.mgmt.example.")))),
            a("ns.mgmt.example.", [10, 0, 0, 1]),
            a("prov.mgmt.example.", [10, 0, 0, 10]),
            cname("artifacts.mgmt.example.", "prov.mgmt.example."),
            cname("chain.mgmt.example.", "artifacts.mgmt.example."),
            cname("out.mgmt.example.", "www.elsewhere.org."),
            cname("loop1.mgmt.example.", "loop2.mgmt.example."),
            cname("loop2.mgmt.example.", "loop1.mgmt.example."),
            rec("mgmt.example.", 300, RData::MX(MX::new(10, n("prov.mgmt.example.")))),
            rec("_x._tcp.mgmt.example.", 300, RData::SRV(SRV::new(0, 5, 80, n("prov.mgmt.example.")))),
            a("a.b.c.mgmt.example.", [10, 0, 0, 30]),
            a("*.wild.mgmt.example.", [10, 0, 0, 40]),
            rec("sub.mgmt.example.", 300, RData::NS(NS(n("ns.sub.mgmt.example.")))),
            a("ns.sub.mgmt.example.", [10, 0, 0, 50]),
        ],
    );
    let site = zone("site.example.", vec![cname("artifacts.site.example.", "artifacts.mgmt.example.")]);
    Catalog::new(vec![mgmt, site])
}

fn names(rs: &[Record]) -> Vec<String> {
    rs.iter().map(|r| format!("{} {}", r.name, r.record_type())).collect()
}

#[test]
fn not_local() {
    assert!(catalog().lookup(&n("www.elsewhere.org."), RecordType::A).is_none());
}

#[test]
fn cname_chain_across_zones_in_one_answer() {
    let a = catalog().lookup(&n("artifacts.site.example."), RecordType::A).unwrap();
    assert_eq!(a.rcode, ResponseCode::NoError);
    assert!(a.authoritative);
    assert_eq!(
        names(&a.answers),
        ["artifacts.site.example. CNAME", "artifacts.mgmt.example. CNAME", "prov.mgmt.example. A"]
    );
    assert!(a.authorities.is_empty() && a.external.is_none());
}

#[test]
fn case_insensitive() {
    let a = catalog().lookup(&n("PROV.Mgmt.EXAMPLE."), RecordType::A).unwrap();
    assert_eq!(a.answers.len(), 1);
}

#[test]
fn nxdomain_and_nodata_carry_the_soa_with_the_negative_ttl() {
    let c = catalog();
    let a = c.lookup(&n("nope.mgmt.example."), RecordType::A).unwrap();
    assert_eq!(a.rcode, ResponseCode::NXDomain);
    assert_eq!(names(&a.authorities), ["mgmt.example. SOA"]);
    assert_eq!(a.authorities[0].ttl, 60, "min(SOA TTL 300, MINIMUM 60)");
    let a = c.lookup(&n("prov.mgmt.example."), RecordType::AAAA).unwrap();
    assert_eq!(a.rcode, ResponseCode::NoError);
    assert!(a.answers.is_empty());
    assert_eq!(names(&a.authorities), ["mgmt.example. SOA"]);
    // An empty non-terminal is NODATA, not NXDOMAIN.
    let a = c.lookup(&n("b.c.mgmt.example."), RecordType::A).unwrap();
    assert_eq!(a.rcode, ResponseCode::NoError);
    assert!(a.answers.is_empty());
}

#[test]
fn chain_ending_in_nxdomain_has_nxdomain_rcode() {
    let mut site = zone("s2.example.", vec![cname("x.s2.example.", "gone.mgmt.example.")]);
    site.finish().unwrap();
    let mut zones: Vec<Zone> = catalog().zones().cloned().collect();
    zones.push(site);
    let c = Catalog::new(zones);
    let a = c.lookup(&n("x.s2.example."), RecordType::A).unwrap();
    assert_eq!(a.rcode, ResponseCode::NXDomain, "RFC 6604: the rcode is the last name's");
    assert_eq!(names(&a.answers), ["x.s2.example. CNAME"]);
    assert_eq!(names(&a.authorities), ["mgmt.example. SOA"]);
}

#[test]
fn external_cname_is_left_to_the_caller() {
    let a = catalog().lookup(&n("out.mgmt.example."), RecordType::A).unwrap();
    assert_eq!(names(&a.answers), ["out.mgmt.example. CNAME"]);
    assert_eq!(a.external, Some(n("www.elsewhere.org.")));
}

#[test]
fn loops_end() {
    let a = catalog().lookup(&n("loop1.mgmt.example."), RecordType::A).unwrap();
    assert_eq!(a.answers.len(), 2);
}

#[test]
fn cname_query_returns_the_cname_only() {
    let a = catalog().lookup(&n("chain.mgmt.example."), RecordType::CNAME).unwrap();
    assert_eq!(names(&a.answers), ["chain.mgmt.example. CNAME"]);
}

#[test]
fn additional_section_for_mx_srv_and_ns() {
    let c = catalog();
    for (q, t) in [("mgmt.example.", RecordType::MX), ("_x._tcp.mgmt.example.", RecordType::SRV)] {
        let a = c.lookup(&n(q), t).unwrap();
        assert_eq!(names(&a.additionals), ["prov.mgmt.example. A"], "{q} {t}");
    }
    let a = c.lookup(&n("mgmt.example."), RecordType::NS).unwrap();
    assert_eq!(names(&a.additionals), ["ns.mgmt.example. A"]);
}

#[test]
fn wildcards_synthesize_the_query_name() {
    let c = catalog();
    let a = c.lookup(&n("x.wild.mgmt.example."), RecordType::A).unwrap();
    assert_eq!(names(&a.answers), ["x.wild.mgmt.example. A"]);
    let a = c.lookup(&n("x.wild.mgmt.example."), RecordType::AAAA).unwrap();
    assert!(a.answers.is_empty() && a.rcode == ResponseCode::NoError);
    // The wildcard's parent is an empty non-terminal.
    let a = c.lookup(&n("wild.mgmt.example."), RecordType::A).unwrap();
    assert!(a.answers.is_empty() && a.rcode == ResponseCode::NoError);
}

#[test]
fn referrals_below_a_cut() {
    let c = catalog();
    for q in ["sub.mgmt.example.", "host.sub.mgmt.example.", "ns.sub.mgmt.example."] {
        let a = c.lookup(&n(q), RecordType::A).unwrap();
        assert!(!a.authoritative, "{q}");
        assert!(a.answers.is_empty());
        assert_eq!(names(&a.authorities), ["sub.mgmt.example. NS"]);
        assert_eq!(names(&a.additionals), ["ns.sub.mgmt.example. A"]);
    }
    // DS at the cut is the parent's.
    let a = c.lookup(&n("sub.mgmt.example."), RecordType::DS).unwrap();
    assert!(a.authoritative);
}

#[test]
fn any_returns_one_rrset() {
    let a = catalog().lookup(&n("mgmt.example."), RecordType::ANY).unwrap();
    assert_eq!(names(&a.answers), ["mgmt.example. NS"]);
}

#[test]
fn zone_file_export_parses_back_to_the_same_records() {
    use hickory_proto::rr::rdata::TXT;
    let z = zone(
        "t.example.",
        vec![
            rec("t.example.", 60, RData::TXT(TXT::new(vec!["a b".into(), "q\"uote\\".into()]))),
            a("h.t.example.", [10, 0, 0, 1]),
            rec("t.example.", 60, RData::MX(MX::new(10, n("h.t.example.")))),
            rec("_s._tcp.t.example.", 60, RData::SRV(SRV::new(1, 2, 3, n("h.t.example.")))),
        ],
    );
    let text = z.to_zone_file();
    let (_, sets) = hickory_proto::serialize::txt::Parser::new(text.as_str(), None, None).parse().unwrap();
    let mut back = 0;
    for set in sets.values() {
        for r in set.records_without_rrsigs() {
            let node = z.nodes.get(&LowerName::new(&r.name)).unwrap();
            assert!(node.get(r.record_type()).unwrap().iter().any(|x| x.data == r.data), "{r} lost in {text}");
            back += 1;
        }
    }
    assert_eq!(back, z.nodes.values().map(|n| n.rrsets.values().map(Vec::len).sum::<usize>()).sum::<usize>());
}

#[test]
fn cname_and_other_data_conflict() {
    let mut z = Zone::new(&n("z.example."), ZoneKind::Site);
    z.insert(a("x.z.example.", [1, 2, 3, 4])).unwrap();
    assert!(matches!(z.insert(cname("x.z.example.", "y.z.example.")), Err(ZoneError::CnameAndOther { .. })));
    assert!(matches!(z.insert(a("x.other.", [1, 2, 3, 4])), Err(ZoneError::OutOfZone { .. })));
    assert!(matches!(z.finish(), Err(ZoneError::NoSoa { .. })));
}
