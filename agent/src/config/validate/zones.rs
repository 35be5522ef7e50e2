//! `[[zone]]`: zone names, owner names of hosts, services and records, the
//! management-plane rule, and where services point.

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
};

use super::Validator;
use crate::{
    cfg_path,
    config::{PathSeg, Problem, ZoneRole},
    names::{ManagementZones, fqdn, in_zone, valid_label, valid_name},
};

const SUPPORTED_RECORD_TYPES: &[&str] = &["A", "AAAA", "CNAME", "MX", "NS", "PTR", "SRV", "TXT", "CAA"];

impl Validator<'_> {
    pub(super) fn zones(&mut self) {
        let c = self.c;
        let mgmt = ManagementZones::new(
            c.zones
                .iter()
                .enumerate()
                .filter(|(_, z)| z.role == ZoneRole::Management)
                .map(|(i, z)| (i, z.name.as_str())),
        );
        let mut zone_names = HashMap::new();
        for (zi, z) in c.zones.iter().enumerate() {
            let apex = z.name.trim_end_matches('.').to_ascii_lowercase();
            if !valid_name(&apex) {
                self.err(cfg_path!("zone", zi, "name"), format!("{:?} is not a valid domain name", z.name));
                continue;
            }
            if let Some(j) = zone_names.insert(apex.clone(), zi) {
                self.err(cfg_path!("zone", zi, "name"), format!("zone {apex} is already defined as zone[{j}]"));
            }
            if z.role == ZoneRole::Site
                && let Some((mi, m)) = mgmt.containing(&apex)
            {
                self.err(
                    cfg_path!("zone", zi, "name"),
                    format!(
                        "site zone {apex} lies inside the management zone {m} (zone[{mi}]); site zones must not \
                             define management-plane records (seed §2.3)"
                    ),
                );
            }
            if let Some(f) = &z.file {
                let p = c.resolve_path(f);
                if !p.is_file() {
                    self.err(
                        cfg_path!("zone", zi, "file"),
                        format!("zone file {} does not exist or is not a file", p.display()),
                    );
                }
            }
            // Owner names of the zone's data: host, service, record.
            let mut owners: HashMap<String, (&str, Vec<PathSeg>)> = HashMap::new();
            let mut check_owner = |v: &mut Self,
                                   name: &str,
                                   kind: &'static str,
                                   path: Vec<PathSeg>,
                                   exclusive: bool| {
                let (rel, absolute) = match name.strip_suffix('.') {
                    Some(abs) => (abs, true),
                    None => (name, false),
                };
                // A `*` leftmost label makes a wildcard (RFC 4592).
                let labels = rel.strip_prefix("*.").unwrap_or(rel);
                let rel_ok =
                    rel == "@" && !absolute || rel == "*" || (!labels.is_empty() && labels.split('.').all(valid_label));
                if !rel_ok {
                    v.err(
                        path.clone(),
                        format!("{name:?} is not a valid name (labels of letters, digits, hyphens; `@` for the apex)"),
                    );
                    return;
                }
                if absolute && !in_zone(rel, &apex) && !mgmt.contains(rel) {
                    v.err(
                        path.clone(),
                        format!("{name} is outside zone {apex}; write names relative to the zone, or absolute names inside it"),
                    );
                    return;
                }
                let full = fqdn(name, &apex);
                if z.role == ZoneRole::Site
                    && let Some((mi, m)) = mgmt.containing(&full)
                {
                    v.err(
                            path.clone(),
                            format!(
                                "{full} is a management-plane name ({m}, zone[{mi}]); a site zone must not define \
                                 management-plane records (seed §2.3): define it in zone[{mi}] and alias it with a service"
                            ),
                        );
                }
                match owners.get(&full) {
                    Some((other_kind, other_path)) if exclusive || *other_kind != "record" => {
                        let other = Problem::new(other_path.clone(), "").dotted_path();
                        v.err(
                            path,
                            format!(
                                "{full} is already defined as a {other_kind} ({other}); a name is either a host, a \
                                 service (CNAME) or records, not several"
                            ),
                        );
                    }
                    _ => {
                        owners.insert(full, (kind, path));
                    }
                }
            };
            for (hi, h) in z.hosts.iter().enumerate() {
                check_owner(self, &h.name, "host", cfg_path!("zone", zi, "host", hi, "name"), true);
                if h.addresses.is_empty() {
                    self.err(
                        cfg_path!("zone", zi, "host", hi, "addresses"),
                        "a host needs at least one address (IPv4 for A, IPv6 for AAAA)",
                    );
                }
            }
            for (si, s) in z.services.iter().enumerate() {
                check_owner(self, &s.name, "service", cfg_path!("zone", zi, "service", si, "name"), true);
            }
            for (ri, r) in z.records.iter().enumerate() {
                let t = r.rtype.to_ascii_uppercase();
                if !SUPPORTED_RECORD_TYPES.contains(&t.as_str()) {
                    self.err(
                        cfg_path!("zone", zi, "record", ri, "type"),
                        format!(
                            "record type {:?} is not supported here; use one of {} (SOA comes from [zone.soa], hosts \
                             and services from [[zone.host]] and [[zone.service]])",
                            r.rtype,
                            SUPPORTED_RECORD_TYPES.join(", ")
                        ),
                    );
                }
                if r.data.trim().is_empty() {
                    self.err(cfg_path!("zone", zi, "record", ri, "data"), "record data is empty");
                }
                check_owner(self, &r.name, "record", cfg_path!("zone", zi, "record", ri, "name"), t == "CNAME");
            }
        }
        self.service_targets();
    }

    /// Every service points to a host or service that exists in the local
    /// zones, or to a name outside them; and no chain of services loops.
    fn service_targets(&mut self) {
        let c = self.c;
        let apexes: Vec<String> = c.zones.iter().map(|z| z.name.trim_end_matches('.').to_ascii_lowercase()).collect();
        let mut hosts = HashSet::new();
        let mut services: HashMap<String, String> = HashMap::new();
        let mut other = HashSet::new();
        for (z, apex) in c.zones.iter().zip(&apexes) {
            for h in &z.hosts {
                hosts.insert(fqdn(&h.name, apex));
            }
            for s in &z.services {
                services.insert(fqdn(&s.name, apex), fqdn(&s.target, apex));
            }
            for r in &z.records {
                other.insert(fqdn(&r.name, apex));
            }
            // Static DHCP hosts register in their segment's zone too.
        }
        for h in &c.dhcp.hosts {
            if let (Some(name), Some(zone)) = (&h.hostname, self.zone_of_address(h.address)) {
                hosts.insert(fqdn(name, &zone));
            }
        }
        for (zi, (z, apex)) in c.zones.iter().zip(&apexes).enumerate() {
            for (si, s) in z.services.iter().enumerate() {
                let path = cfg_path!("zone", zi, "service", si, "target");
                let t = s.target.trim();
                let labels_ok = t.trim_end_matches('.').split('.').all(valid_label);
                if t.is_empty() || !labels_ok {
                    self.err(path, format!("{:?} is not a valid host name", s.target));
                    continue;
                }
                let target = fqdn(t, apex);
                let local = apexes.iter().any(|a| in_zone(&target, a));
                if local && !hosts.contains(&target) && !services.contains_key(&target) && !other.contains(&target) {
                    let known: Vec<String> = z.hosts.iter().map(|h| h.name.clone()).collect();
                    self.err(
                        path,
                        format!(
                            "service {} points to {target}, which is not a host or service of the local zones; \
                             define it as a [[zone.host]]{}, or use an absolute name ending in '.'",
                            fqdn(&s.name, apex),
                            if known.is_empty() {
                                String::new()
                            } else {
                                format!(" (hosts of {apex}: {})", known.join(", "))
                            }
                        ),
                    );
                    continue;
                }
                // Loop detection along the chain.
                let start = fqdn(&s.name, apex);
                let mut seen = HashSet::from([start.clone()]);
                let mut cur = target;
                while let Some(next) = services.get(&cur) {
                    if !seen.insert(cur.clone()) {
                        break;
                    }
                    cur = next.clone();
                    if cur == start {
                        self.err(
                            cfg_path!("zone", zi, "service", si, "target"),
                            format!("service {start} is part of a CNAME loop; point one of its services at a host"),
                        );
                        break;
                    }
                }
            }
        }
    }

    fn zone_of_address(&self, a: Ipv4Addr) -> Option<String> {
        self.c
            .segments
            .iter()
            .find(|s| s.cidr.trunc().contains(&a))
            .and_then(|s| s.zone.clone())
            .map(|z| z.trim_end_matches('.').to_ascii_lowercase())
    }
}
