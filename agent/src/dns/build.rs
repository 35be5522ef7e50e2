//! Builds the [`Catalog`] from the configuration: hosts (A/AAAA), services
//! (CNAMEs), records, imported zone files, static DHCP hosts registered in
//! their segment's zone, and a reverse zone for every segment.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    str::FromStr,
};

use hickory_proto::{
    rr::{
        LowerName, Name, RData, Record, RecordType,
        rdata::{A, AAAA, CNAME, NS, PTR, SOA},
    },
    serialize::txt::Parser,
};
use ipnet::Ipv4Net;

use super::zone::{Catalog, Zone, ZoneError, ZoneKind};
use crate::config::{self, Config, ZoneRole, validate::fqdn};

/// A problem building the zones: the zone, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("zone {zone}: {message}")]
pub struct BuildError {
    pub zone: String,
    pub message: String,
}

fn err(zone: &str, message: impl Into<String>) -> BuildError {
    BuildError { zone: zone.to_string(), message: message.into() }
}

/// An absolute name from the text of a (lower-case, dot-less) FQDN.
pub fn name(fqdn_text: &str) -> Result<Name, String> {
    let t = fqdn_text.trim_end_matches('.');
    let n = if t.is_empty() { Name::root() } else { Name::from_str(&format!("{t}.")).map_err(|e| e.to_string())? };
    Ok(n.to_lowercase())
}

/// Parses one record written as in a zone file (`name`, `type`, `data`
/// relative to `origin`), e.g. `("_http._tcp", "SRV", "0 5 80 web")`.
pub fn parse_record(origin: &str, owner: &str, rtype: &str, data: &str, ttl: u32) -> Result<Vec<Record>, String> {
    let origin_name = name(origin)?;
    // One line of zone-file text, parsed by hickory's RFC 1035 parser.
    let line = format!("{owner} {ttl} IN {rtype} {data}\n");
    let (_, sets) =
        Parser::new(line.as_str(), None, Some(origin_name)).parse().map_err(|e| format!("{rtype} {data:?}: {e}"))?;
    Ok(sets.into_values().flat_map(|s| s.records_without_rrsigs().cloned().collect::<Vec<_>>()).collect())
}

/// Parses a zone file for `origin`.
pub fn parse_zone_file(path: &Path, origin: &str) -> Result<Vec<Record>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let (_, sets) = Parser::new(text.as_str(), Some(path.to_path_buf()), Some(name(origin)?))
        .parse()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(sets.into_values().flat_map(|s| s.records_without_rrsigs().cloned().collect::<Vec<_>>()).collect())
}

/// The zone files the configuration names (for `zone reload`).
pub fn zone_files(cfg: &Config) -> Vec<PathBuf> {
    cfg.zones.iter().filter_map(|z| z.file.as_ref().map(|f| cfg.resolve_path(f))).collect()
}

/// Builds every zone. `serial` is used for zones without a configured one
/// (the caller passes a value that grows with every build).
pub fn build(cfg: &Config, serial: u32) -> Result<Catalog, Vec<BuildError>> {
    let mut errors = Vec::new();
    let mut zones = Vec::new();
    let mgmt_apexes: Vec<Name> =
        cfg.zones.iter().filter(|z| z.role == ZoneRole::Management).filter_map(|z| name(&z.name).ok()).collect();
    for z in &cfg.zones {
        match build_zone(cfg, z, serial, &mgmt_apexes) {
            Ok(zone) => zones.push(zone),
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        zones.extend(reverse_zones(cfg, &zones, serial, &mut errors));
    }
    if errors.is_empty() { Ok(Catalog::new(zones)) } else { Err(errors) }
}

fn soa_record(origin: &Name, soa: &config::Soa, ttl: u32, serial: u32, apex: &str) -> Result<Record, String> {
    let mname = name(&fqdn(&soa.mname, apex))?;
    let rname = name(&fqdn(&soa.rname, apex))?;
    let s = SOA::new(
        mname,
        rname,
        soa.serial.unwrap_or(serial),
        soa.refresh.secs() as i32,
        soa.retry.secs() as i32,
        soa.expire.secs() as i32,
        soa.minimum.secs(),
    );
    Ok(Record::from_rdata(origin.clone(), ttl, RData::SOA(s)))
}

/// Collects a zone's records and the problems found on the way.
struct ZoneBuilder<'a> {
    apex: String,
    kind: ZoneKind,
    mgmt: &'a [Name],
    zone: Zone,
    errors: Vec<BuildError>,
}

impl ZoneBuilder<'_> {
    fn problem(&mut self, msg: impl Into<String>) {
        self.errors.push(err(&self.apex, msg));
    }

    fn add(&mut self, r: Record, what: &str) {
        // Seed §2.3: a site zone never serves management-plane records.
        if self.kind == ZoneKind::Site && self.mgmt.iter().any(|m| m.zone_of(&r.name)) {
            let msg = format!("{what}: {} is a management-plane name; site zones must not define it", r.name);
            self.problem(msg);
            return;
        }
        if let Err(e) = self.zone.insert(r) {
            self.problem(format!("{what}: {e}"));
        }
    }
}

fn build_zone(cfg: &Config, z: &config::Zone, serial: u32, mgmt: &[Name]) -> Result<Zone, Vec<BuildError>> {
    let apex = z.name.trim_end_matches('.').to_ascii_lowercase();
    let origin = name(&apex).map_err(|e| vec![err(&apex, e)])?;
    let kind = match z.role {
        ZoneRole::Management => ZoneKind::Management,
        ZoneRole::Site => ZoneKind::Site,
    };
    let ttl = z.ttl.secs();
    let mut b = ZoneBuilder { apex: apex.clone(), kind, mgmt, zone: Zone::new(&origin, kind), errors: Vec::new() };
    match soa_record(&origin, &z.soa, ttl, serial, &apex) {
        Ok(r) => b.add(r, "soa"),
        Err(e) => b.problem(format!("soa: {e}")),
    }
    let ns_names: Vec<String> = if z.ns.is_empty() { vec!["ns".to_string()] } else { z.ns.clone() };
    for ns in &ns_names {
        match name(&fqdn(ns, &apex)) {
            Ok(target) => b.add(Record::from_rdata(origin.clone(), ttl, RData::NS(NS(target))), "ns"),
            Err(e) => b.problem(format!("ns {ns:?}: {e}")),
        }
    }
    for h in &z.hosts {
        let owner = match name(&fqdn(&h.name, &apex)) {
            Ok(n) => n,
            Err(e) => {
                b.problem(format!("host {:?}: {e}", h.name));
                continue;
            }
        };
        let t = h.ttl.map_or(ttl, |d| d.secs());
        for a in &h.addresses {
            let data = match a {
                IpAddr::V4(v4) => RData::A(A(*v4)),
                IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
            };
            b.add(Record::from_rdata(owner.clone(), t, data), &format!("host {}", h.name));
        }
    }
    for s in &z.services {
        match (name(&fqdn(&s.name, &apex)), name(&fqdn(&s.target, &apex))) {
            (Ok(owner), Ok(target)) => {
                let t = s.ttl.map_or(ttl, |d| d.secs());
                b.add(Record::from_rdata(owner, t, RData::CNAME(CNAME(target))), &format!("service {}", s.name))
            }
            (Err(e), _) | (_, Err(e)) => b.problem(format!("service {:?}: {e}", s.name)),
        }
    }
    for r in &z.records {
        let t = r.ttl.map_or(ttl, |d| d.secs());
        match parse_record(&apex, &r.name, &r.rtype, &r.data, t) {
            Ok(recs) => {
                for rec in recs {
                    b.add(rec, &format!("record {} {}", r.name, r.rtype));
                }
            }
            Err(e) => b.problem(format!("record {} {}: {e}", r.name, r.rtype)),
        }
    }
    // Static DHCP hosts: A records in the zone of their segment.
    for h in &cfg.dhcp.hosts {
        let Some(hostname) = &h.hostname else { continue };
        let Some(seg) = cfg.segments.iter().find(|s| s.cidr.trunc().contains(&h.address)) else { continue };
        if seg.zone.as_deref().map(|z| z.trim_end_matches('.').to_ascii_lowercase()) != Some(apex.clone()) {
            continue;
        }
        if let Ok(owner) = name(&fqdn(hostname, &apex)) {
            b.add(Record::from_rdata(owner, ttl, RData::A(A(h.address))), &format!("dhcp host {hostname}"));
        }
    }
    if let Some(f) = &z.file {
        let path = cfg.resolve_path(f);
        match parse_zone_file(&path, &apex) {
            Ok(recs) => {
                // The file's SOA and apex NS set replace the generated ones
                // (a zone has one SOA and one NS set at its apex: the data
                // a file brings is the zone's own).
                for t in [RecordType::SOA, RecordType::NS] {
                    if recs.iter().any(|r| r.record_type() == t && LowerName::new(&r.name) == LowerName::new(&origin)) {
                        b.zone.remove(&origin, t, None);
                    }
                }
                for rec in recs {
                    b.add(rec, &format!("file {}", path.display()));
                }
            }
            Err(e) => b.problem(e),
        }
    }
    // Default name server: `ns.<zone>` at the gateway of the segments using
    // the zone, when no `ns` is configured, the apex NS set still names it
    // (a zone file's may not) and nothing else defines it.
    let ns_owner = origin.prepend_label("ns").expect("a valid label");
    let named = b
        .zone
        .nodes
        .get(&LowerName::new(&origin))
        .and_then(|n| n.get(RecordType::NS))
        .is_some_and(|set| set.iter().any(|r| matches!(&r.data, RData::NS(NS(t)) if t.to_lowercase() == ns_owner)));
    if z.ns.is_empty() && named && !b.zone.nodes.contains_key(&(&ns_owner).into()) {
        let mut addrs: Vec<Ipv4Addr> = cfg
            .segments
            .iter()
            .filter(|s| s.zone.as_deref().is_some_and(|x| x.trim_end_matches('.').eq_ignore_ascii_case(&apex)))
            .map(|s| s.gateway)
            .collect();
        if addrs.is_empty() {
            addrs = cfg.segments.iter().map(|s| s.gateway).take(1).collect();
        }
        for a in addrs {
            b.add(Record::from_rdata(ns_owner.clone(), ttl, RData::A(A(a))), "default ns");
        }
    }
    if let Err(e) = b.zone.finish() {
        b.problem(e.to_string());
    }
    if b.errors.is_empty() { Ok(b.zone) } else { Err(b.errors) }
}

/// The reverse zones of a segment: at octet boundaries covering its CIDR
/// (a /23 gives two /24 zones, a /26 the /24 that contains it).
pub fn reverse_zone_nets(cidr: Ipv4Net) -> Vec<Ipv4Net> {
    let p = cidr.prefix_len();
    let boundary = if p == 0 { 8 } else { p.div_ceil(8) * 8 };
    let boundary = boundary.min(24);
    if p >= boundary {
        return vec![Ipv4Net::new(cidr.network(), boundary).expect("valid prefix").trunc()];
    }
    cidr.subnets(boundary).map(|s| s.take(256).collect()).unwrap_or_default()
}

/// `0.10.10.in-addr.arpa.` for 10.10.0.0/24.
pub fn reverse_origin(net: Ipv4Net) -> Name {
    let octets = net.network().octets();
    let n = usize::from(net.prefix_len() / 8);
    let mut labels: Vec<String> = octets[..n].iter().rev().map(|o| o.to_string()).collect();
    labels.push("in-addr".into());
    labels.push("arpa".into());
    name(&labels.join(".")).expect("a valid reverse name")
}

pub fn ptr_name(a: Ipv4Addr) -> Name {
    let o = a.octets();
    name(&format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])).expect("a valid reverse name")
}

fn reverse_zones(cfg: &Config, forward: &[Zone], serial: u32, errors: &mut Vec<BuildError>) -> Vec<Zone> {
    // Every address record of the forward zones, for PTRs.
    let mut addr_names: BTreeSet<(Ipv4Addr, Name)> = BTreeSet::new();
    for z in forward {
        for node in z.nodes.values() {
            if let Some(set) = node.get(RecordType::A) {
                for r in set {
                    if let RData::A(a) = &r.data
                        && !r.name.is_wildcard()
                    {
                        addr_names.insert((a.0, r.name.clone()));
                    }
                }
            }
        }
    }
    let mut out: Vec<Zone> = Vec::new();
    for seg in &cfg.segments {
        // The SOA and NS of the segment's zone (or the first zone).
        let fz = seg
            .zone
            .as_deref()
            .and_then(|zn| forward.iter().find(|z| z.origin == name(zn).unwrap_or_default()))
            .or_else(|| forward.first());
        let Some(fz) = fz else { continue };
        let soa = fz.soa().clone();
        let ttl = soa.ttl;
        let ns: Vec<Record> = fz.nodes.get(&fz.apex()).and_then(|n| n.get(RecordType::NS)).cloned().unwrap_or_default();
        for net in reverse_zone_nets(seg.cidr.trunc()) {
            let origin = reverse_origin(net);
            if out.iter().any(|z| z.origin == origin) {
                continue;
            }
            let mut z = Zone::new(&origin, ZoneKind::Reverse);
            let mut soa_here = soa.clone();
            soa_here.name = origin.clone();
            if let RData::SOA(s) = &mut soa_here.data {
                s.serial = serial;
            }
            let mut records = vec![soa_here];
            records.extend(ns.iter().map(|r| Record::from_rdata(origin.clone(), r.ttl, r.data.clone())));
            for (a, target) in &addr_names {
                if net.contains(a) {
                    records.push(Record::from_rdata(ptr_name(*a), ttl, RData::PTR(PTR(target.clone()))));
                }
            }
            for r in records {
                if let Err(e) = z.insert(r) {
                    errors.push(err(&origin.to_string(), e.to_string()));
                }
            }
            match z.finish() {
                Ok(()) => out.push(z),
                Err(ZoneError::NoSoa { .. }) | Err(_) => errors.push(err(&origin.to_string(), "cannot build")),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::ResponseCode;

    use super::*;

    fn example() -> Config {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/coresvc.toml");
        Config::load(&p).unwrap()
    }

    fn n(s: &str) -> Name {
        Name::from_str(s).unwrap()
    }

    #[test]
    fn a_rebuild_keeps_unchanged_zones_with_their_serials_and_raises_changed_ones() {
        let old = build(&example(), 100).unwrap();
        let mut same = build(&example(), 200).unwrap();
        assert_eq!(same.carry_over(&old), Some(vec![]), "nothing changed");
        assert!(same.zones().all(|z| z.serial() == 100), "serials kept");
        let mut cfg = example();
        cfg.zones[0].hosts.push(config::Host {
            name: "new".into(),
            addresses: vec!["10.10.0.99".parse().unwrap()],
            ttl: None,
        });
        let origin = cfg.zones[0].name.trim_end_matches('.').to_lowercase();
        let mut next = build(&cfg, 50).unwrap();
        let changed = next.carry_over(&old).unwrap();
        let zones: Vec<&Zone> = next.zones().collect();
        assert!(!changed.is_empty());
        for (i, z) in zones.iter().enumerate() {
            // The zone with the host and its reverse zone changed.
            if changed.contains(&i) {
                assert_eq!(z.serial(), 101, "{}: above the old serial", z.origin);
            } else {
                assert_eq!(z.serial(), 100, "{}", z.origin);
            }
        }
        assert!(changed.iter().any(|&i| zones[i].origin.to_string().trim_end_matches('.') == origin), "{changed:?}");
        assert!(changed.len() <= 2, "{changed:?}");
        // Another zone list: everything is new.
        cfg.zones.pop();
        assert_eq!(build(&cfg, 300).unwrap().carry_over(&old), None);
    }

    #[test]
    fn example_config_builds_the_seed_chain() {
        let c = build(&example(), 7).unwrap();
        let a = c.lookup(&n("artifacts.dvntm.deevnet.net."), RecordType::A).unwrap();
        let chain: Vec<String> = a.answers.iter().map(|r| format!("{} {}", r.name, r.record_type())).collect();
        assert_eq!(
            chain,
            [
                "artifacts.dvntm.deevnet.net. CNAME",
                "artifacts.mgmt.deevnet.net. CNAME",
                "provisioner-01-dvntm.mgmt.deevnet.net. A",
            ]
        );
    }

    #[test]
    fn reverse_zones_have_ptrs_for_hosts_and_static_dhcp_hosts() {
        let c = build(&example(), 7).unwrap();
        let a = c.lookup(&n("10.0.10.10.in-addr.arpa."), RecordType::PTR).unwrap();
        let targets: Vec<String> = a
            .answers
            .iter()
            .map(|r| match &r.data {
                RData::PTR(p) => p.0.to_string(),
                _ => panic!(),
            })
            .collect();
        assert!(targets.contains(&"provisioner-01.mgmt.deevnet.net.".to_string()), "{targets:?}");
        assert!(targets.contains(&"provisioner-01-dvntm.mgmt.deevnet.net.".to_string()), "{targets:?}");
        // Every segment has its zone.
        for z in ["0.10.10.in-addr.arpa.", "0.20.10.in-addr.arpa.", "0.30.10.in-addr.arpa."] {
            assert!(c.zone_for(&n(z)).is_some(), "{z}");
        }
        let a = c.lookup(&n("99.0.20.10.in-addr.arpa."), RecordType::PTR).unwrap();
        assert_eq!(a.rcode, ResponseCode::NXDomain);
    }

    #[test]
    fn reverse_zone_boundaries() {
        let nets = |s: &str| -> Vec<String> {
            reverse_zone_nets(s.parse().unwrap()).into_iter().map(|n| reverse_origin(n).to_string()).collect()
        };
        assert_eq!(nets("10.10.0.0/24"), ["0.10.10.in-addr.arpa."]);
        assert_eq!(nets("10.10.0.0/23"), ["0.10.10.in-addr.arpa.", "1.10.10.in-addr.arpa."]);
        assert_eq!(nets("10.10.0.64/26"), ["0.10.10.in-addr.arpa."]);
        assert_eq!(nets("10.16.0.0/16"), ["16.10.in-addr.arpa."]);
    }

    #[test]
    fn records_parse_in_zone_file_syntax() {
        let r = parse_record("z.example", "_http._tcp", "SRV", "0 5 80 web", 60).unwrap();
        assert_eq!(r[0].name.to_string(), "_http._tcp.z.example.");
        assert!(parse_record("z.example", "@", "MX", "ten mail", 60).is_err());
        let r = parse_record("z.example", "@", "TXT", "\"a b\" c", 60).unwrap();
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn a_zone_files_apex_ns_set_replaces_the_generated_one() {
        let dir = std::env::temp_dir().join(format!("coresvc-zone-ns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("files.zone");
        std::fs::write(&f, "$TTL 60\n@ IN NS ns1.elsewhere.example.\n@ IN NS ns2\nns2 IN A 10.20.0.7\n").unwrap();
        let mut cfg = example();
        cfg.zones.push(config::Zone {
            name: "files.example".into(),
            role: ZoneRole::Site,
            ttl: config::Duration(300),
            soa: config::Soa::default(),
            ns: vec![],
            hosts: vec![],
            services: vec![],
            records: vec![],
            file: Some(f),
        });
        let c = build(&cfg, 1).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let a = c.lookup(&n("files.example."), RecordType::NS).unwrap();
        let mut ns: Vec<String> = a.answers.iter().map(|r| r.data.to_string()).collect();
        ns.sort();
        assert_eq!(ns, ["ns1.elsewhere.example.", "ns2.files.example."], "only the file's NS set");
        assert_eq!(a.additionals.len(), 1, "ns2's address: {a:?}");
        // The generated ns.<zone> went with the generated NS record.
        let a = c.lookup(&n("ns.files.example."), RecordType::A).unwrap();
        assert_eq!(a.rcode, ResponseCode::NXDomain);
    }

    #[test]
    fn site_zone_file_with_management_records_is_refused() {
        let dir = std::env::temp_dir().join(format!("coresvc-zone-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("site.zone");
        std::fs::write(&f, "$TTL 60\nx IN A 10.20.0.9\nconsole.mgmt.deevnet.net. IN A 10.20.0.9\n").unwrap();
        let mut cfg = example();
        cfg.zones[1].file = Some(f);
        let e = build(&cfg, 1).unwrap_err();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(e.iter().any(|e| e.message.contains("management-plane")), "{e:?}");
    }
}
