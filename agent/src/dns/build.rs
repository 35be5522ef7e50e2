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
    ProtoError,
    rr::{
        LowerName, Name, RData, Record, RecordType,
        rdata::{A, AAAA, CNAME, NS, PTR, SOA},
    },
    serialize::txt::{ParseError, Parser},
};
use ipnet::Ipv4Net;

use super::zone::{Catalog, Zone, ZoneError, ZoneKind};
use crate::{
    cfg_path,
    config::{self, Config, PathSeg, ZoneRole},
    names::{ManagementZones, fqdn},
};

/// A problem building the zones: the zone, the part of the configuration
/// it comes from, and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("zone {zone}: {problem}")]
pub struct BuildError {
    pub zone: String,
    /// Where in the configuration: `zone[1]`, `zone[1].file` for what a zone
    /// file brings, `segment[0]` for a segment's reverse zone.
    pub path: Vec<PathSeg>,
    pub problem: ZoneDataError,
}

/// What is wrong with a zone's data.
#[derive(Debug, thiserror::Error)]
pub enum ZoneDataError {
    /// The zone's own name.
    #[error(transparent)]
    Origin(NameError),
    #[error("soa: {0}")]
    Soa(NameError),
    #[error("ns {ns:?}: {error}")]
    Ns { ns: String, error: NameError },
    #[error("host {name:?}: {error}")]
    Host { name: String, error: NameError },
    #[error("service {name:?}: {error}")]
    Service { name: String, error: NameError },
    #[error("record {name} {rtype}: {error}")]
    Record { name: String, rtype: String, error: RecordError },
    #[error(transparent)]
    File(ZoneFileError),
    /// Seed §2.3: a site zone never serves management-plane records.
    #[error("{from}: {name} is a management-plane name; site zones must not define it")]
    ManagementName { from: RecordFrom, name: Name },
    #[error("{from}: {error}")]
    Conflict { from: RecordFrom, error: ZoneError },
    /// The zone as a whole (its SOA, CNAME conflicts).
    #[error(transparent)]
    Zone(ZoneError),
    #[error("cannot build")]
    Reverse,
}

/// Where a record of a zone came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordFrom {
    Soa,
    Ns,
    Host(String),
    Service(String),
    Record { name: String, rtype: String },
    DhcpHost(String),
    File(PathBuf),
    DefaultNs,
}

impl std::fmt::Display for RecordFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordFrom::Soa => f.write_str("soa"),
            RecordFrom::Ns => f.write_str("ns"),
            RecordFrom::Host(h) => write!(f, "host {h}"),
            RecordFrom::Service(s) => write!(f, "service {s}"),
            RecordFrom::Record { name, rtype } => write!(f, "record {name} {rtype}"),
            RecordFrom::DhcpHost(h) => write!(f, "dhcp host {h}"),
            RecordFrom::File(p) => write!(f, "file {}", p.display()),
            RecordFrom::DefaultNs => f.write_str("default ns"),
        }
    }
}

/// A name that is not a DNS name.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct NameError(#[from] ProtoError);

/// A record that does not parse as zone-file text.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Origin(#[from] NameError),
    #[error("{rtype} {data:?}: {error}")]
    Parse { rtype: String, data: String, error: ParseError },
}

/// A zone file that cannot be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum ZoneFileError {
    #[error("cannot read {}: {error}", path.display())]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{}: {error}", path.display())]
    Parse { path: PathBuf, error: ParseError },
    #[error(transparent)]
    Origin(#[from] NameError),
}

/// An absolute name from the text of a (lower-case, dot-less) FQDN.
pub fn name(fqdn_text: &str) -> Result<Name, NameError> {
    let t = fqdn_text.trim_end_matches('.');
    let n = if t.is_empty() { Name::root() } else { Name::from_str(&format!("{t}."))? };
    Ok(n.to_lowercase())
}

/// Parses one record written as in a zone file (`name`, `type`, `data`
/// relative to `origin`), e.g. `("_http._tcp", "SRV", "0 5 80 web")`.
pub fn parse_record(origin: &str, owner: &str, rtype: &str, data: &str, ttl: u32) -> Result<Vec<Record>, RecordError> {
    let origin_name = name(origin)?;
    // One line of zone-file text, parsed by hickory's RFC 1035 parser.
    let line = format!("{owner} {ttl} IN {rtype} {data}\n");
    let (_, sets) = Parser::new(line.as_str(), None, Some(origin_name))
        .parse()
        .map_err(|error| RecordError::Parse { rtype: rtype.to_string(), data: data.to_string(), error })?;
    Ok(sets.into_values().flat_map(|s| s.records_without_rrsigs().cloned().collect::<Vec<_>>()).collect())
}

/// Parses a zone file for `origin`.
pub fn parse_zone_file(path: &Path, origin: &str) -> Result<Vec<Record>, ZoneFileError> {
    let text =
        std::fs::read_to_string(path).map_err(|error| ZoneFileError::Read { path: path.to_path_buf(), error })?;
    let (_, sets) = Parser::new(text.as_str(), Some(path.to_path_buf()), Some(name(origin)?))
        .parse()
        .map_err(|error| ZoneFileError::Parse { path: path.to_path_buf(), error })?;
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
    let mgmt = ManagementZones::new(
        cfg.zones.iter().enumerate().filter(|(_, z)| z.role == ZoneRole::Management).map(|(i, z)| (i, z.name.as_str())),
    );
    for (i, z) in cfg.zones.iter().enumerate() {
        match build_zone(cfg, i, z, serial, &mgmt) {
            Ok(zone) => zones.push(zone),
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        zones.extend(reverse_zones(cfg, &zones, serial, &mut errors));
    }
    if errors.is_empty() { Ok(Catalog::new(zones)) } else { Err(errors) }
}

fn soa_record(origin: &Name, soa: &config::Soa, ttl: u32, serial: u32, apex: &str) -> Result<Record, NameError> {
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
    origin: Name,
    /// The zone's default TTL.
    ttl: u32,
    /// The zone's index in the configuration.
    index: usize,
    kind: ZoneKind,
    mgmt: &'a ManagementZones,
    zone: Zone,
    errors: Vec<BuildError>,
}

impl ZoneBuilder<'_> {
    /// A problem with the zone's configured data (`zone[i]`).
    fn problem(&mut self, problem: ZoneDataError) {
        let path = cfg_path!("zone", self.index);
        self.errors.push(BuildError { zone: self.apex.clone(), path, problem });
    }

    /// A problem with what `from` brought: in its zone file, if it came from one.
    fn problem_from(&mut self, from: &RecordFrom, problem: ZoneDataError) {
        let path = match from {
            RecordFrom::File(_) => cfg_path!("zone", self.index, "file"),
            _ => cfg_path!("zone", self.index),
        };
        self.errors.push(BuildError { zone: self.apex.clone(), path, problem });
    }

    fn add(&mut self, r: Record, from: RecordFrom) {
        if self.kind == ZoneKind::Site && self.mgmt.contains(&r.name.to_ascii()) {
            let problem = ZoneDataError::ManagementName { from: from.clone(), name: r.name };
            self.problem_from(&from, problem);
            return;
        }
        if let Err(error) = self.zone.insert(r) {
            self.problem_from(&from, ZoneDataError::Conflict { from: from.clone(), error });
        }
    }
}

fn build_zone(
    cfg: &Config,
    index: usize,
    z: &config::Zone,
    serial: u32,
    mgmt: &ManagementZones,
) -> Result<Zone, Vec<BuildError>> {
    let apex = z.name.trim_end_matches('.').to_ascii_lowercase();
    let origin = name(&apex).map_err(|e| {
        vec![BuildError { zone: apex.clone(), path: cfg_path!("zone", index), problem: ZoneDataError::Origin(e) }]
    })?;
    let kind = match z.role {
        ZoneRole::Management => ZoneKind::Management,
        ZoneRole::Site => ZoneKind::Site,
    };
    let zone = Zone::new(&origin, kind);
    let mut b = ZoneBuilder { apex, origin, ttl: z.ttl.secs(), index, kind, mgmt, zone, errors: Vec::new() };
    b.configured(z, serial);
    b.dhcp_hosts(cfg);
    if let Some(f) = &z.file {
        b.file(&cfg.resolve_path(f));
    }
    if z.ns.is_empty() {
        b.default_ns(cfg);
    }
    if let Err(e) = b.zone.finish() {
        b.problem(ZoneDataError::Zone(e));
    }
    if b.errors.is_empty() { Ok(b.zone) } else { Err(b.errors) }
}

impl ZoneBuilder<'_> {
    /// The zone's own data: SOA, NS, hosts, services and records.
    fn configured(&mut self, z: &config::Zone, serial: u32) {
        let (apex, origin, ttl) = (self.apex.clone(), self.origin.clone(), self.ttl);
        match soa_record(&origin, &z.soa, ttl, serial, &apex) {
            Ok(r) => self.add(r, RecordFrom::Soa),
            Err(e) => self.problem(ZoneDataError::Soa(e)),
        }
        let ns_names: Vec<String> = if z.ns.is_empty() { vec!["ns".to_string()] } else { z.ns.clone() };
        for ns in &ns_names {
            match name(&fqdn(ns, &apex)) {
                Ok(target) => self.add(Record::from_rdata(origin.clone(), ttl, RData::NS(NS(target))), RecordFrom::Ns),
                Err(error) => self.problem(ZoneDataError::Ns { ns: ns.clone(), error }),
            }
        }
        for h in &z.hosts {
            let owner = match name(&fqdn(&h.name, &apex)) {
                Ok(n) => n,
                Err(error) => {
                    self.problem(ZoneDataError::Host { name: h.name.clone(), error });
                    continue;
                }
            };
            let t = h.ttl.map_or(ttl, |d| d.secs());
            for a in &h.addresses {
                let data = match a {
                    IpAddr::V4(v4) => RData::A(A(*v4)),
                    IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
                };
                self.add(Record::from_rdata(owner.clone(), t, data), RecordFrom::Host(h.name.clone()));
            }
        }
        for s in &z.services {
            match (name(&fqdn(&s.name, &apex)), name(&fqdn(&s.target, &apex))) {
                (Ok(owner), Ok(target)) => {
                    let t = s.ttl.map_or(ttl, |d| d.secs());
                    let from = RecordFrom::Service(s.name.clone());
                    self.add(Record::from_rdata(owner, t, RData::CNAME(CNAME(target))), from)
                }
                (Err(error), _) | (_, Err(error)) => {
                    self.problem(ZoneDataError::Service { name: s.name.clone(), error })
                }
            }
        }
        for r in &z.records {
            let t = r.ttl.map_or(ttl, |d| d.secs());
            let from = || RecordFrom::Record { name: r.name.clone(), rtype: r.rtype.clone() };
            match parse_record(&apex, &r.name, &r.rtype, &r.data, t) {
                Ok(recs) => {
                    for rec in recs {
                        self.add(rec, from());
                    }
                }
                Err(error) => {
                    self.problem(ZoneDataError::Record { name: r.name.clone(), rtype: r.rtype.clone(), error })
                }
            }
        }
    }

    /// Static DHCP hosts: A records in the zone of their segment.
    fn dhcp_hosts(&mut self, cfg: &Config) {
        for h in &cfg.dhcp.hosts {
            let Some(hostname) = &h.hostname else { continue };
            let Some(seg) = cfg.segments.iter().find(|s| s.cidr.trunc().contains(&h.address)) else { continue };
            if seg.zone.as_deref().map(|z| z.trim_end_matches('.').to_ascii_lowercase()).as_ref() != Some(&self.apex) {
                continue;
            }
            if let Ok(owner) = name(&fqdn(hostname, &self.apex)) {
                let from = RecordFrom::DhcpHost(hostname.clone());
                self.add(Record::from_rdata(owner, self.ttl, RData::A(A(h.address))), from);
            }
        }
    }

    /// The records of a zone file. Its SOA and apex NS set replace the
    /// generated ones (a zone has one SOA and one NS set at its apex: the
    /// data a file brings is the zone's own).
    fn file(&mut self, path: &Path) {
        let from = RecordFrom::File(path.to_path_buf());
        match parse_zone_file(path, &self.apex) {
            Ok(recs) => {
                let apex = LowerName::new(&self.origin);
                for t in [RecordType::SOA, RecordType::NS] {
                    if recs.iter().any(|r| r.record_type() == t && LowerName::new(&r.name) == apex) {
                        self.zone.remove(&self.origin, t, None);
                    }
                }
                for rec in recs {
                    self.add(rec, from.clone());
                }
            }
            Err(e) => self.problem_from(&from, ZoneDataError::File(e)),
        }
    }

    /// Default name server, when no `ns` is configured: `ns.<zone>` at the
    /// gateway of the segments using the zone, when the apex NS set still
    /// names it (a zone file's may not) and nothing else defines it.
    fn default_ns(&mut self, cfg: &Config) {
        let ns_owner = self.origin.prepend_label("ns").expect("a valid label");
        let named =
            self.zone.nodes.get(&LowerName::new(&self.origin)).and_then(|n| n.get(RecordType::NS)).is_some_and(|set| {
                set.iter().any(|r| matches!(&r.data, RData::NS(NS(t)) if t.to_lowercase() == ns_owner))
            });
        if !named || self.zone.nodes.contains_key(&(&ns_owner).into()) {
            return;
        }
        let apex = &self.apex;
        let mut addrs: Vec<Ipv4Addr> = cfg
            .segments
            .iter()
            .filter(|s| s.zone.as_deref().is_some_and(|x| x.trim_end_matches('.').eq_ignore_ascii_case(apex)))
            .map(|s| s.gateway)
            .collect();
        if addrs.is_empty() {
            addrs = cfg.segments.iter().map(|s| s.gateway).take(1).collect();
        }
        for a in addrs {
            self.add(Record::from_rdata(ns_owner.clone(), self.ttl, RData::A(A(a))), RecordFrom::DefaultNs);
        }
    }
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
    for (si, seg) in cfg.segments.iter().enumerate() {
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
            let error = |problem| BuildError { zone: origin.to_string(), path: cfg_path!("segment", si), problem };
            for r in records {
                if let Err(e) = z.insert(r) {
                    errors.push(error(ZoneDataError::Zone(e)));
                }
            }
            match z.finish() {
                Ok(()) => out.push(z),
                Err(_) => errors.push(error(ZoneDataError::Reverse)),
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
        assert!(e.iter().any(|e| e.to_string().contains("management-plane")), "{e:?}");
        assert!(e.iter().all(|e| e.path == cfg_path!("zone", 1, "file")), "{e:?}");
    }
}
