//! Whole-configuration checks. Each problem names the field (as a path) and
//! says what would be valid; all problems are reported together.

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
};

use ipnet::Ipv4Net;

use super::{Config, PathSeg, Problem, Proto, ZoneRole};
use crate::cfg_path;

/// Names a rule may use besides segment names.
const RULE_FROM_WORDS: &[&str] = &["uplink", "any"];
const RULE_TO_WORDS: &[&str] = &["uplink", "gateway", "any"];
/// DHCP options the server sets itself; configuring them would break the protocol.
const SERVER_OWNED_OPTIONS: &[(u8, &str)] = &[
    (0, "pad"),
    (51, "lease time (use lease_time)"),
    (52, "option overload"),
    (53, "message type"),
    (54, "server identifier"),
    (55, "parameter request list"),
    (58, "renewal time (derived from lease_time)"),
    (59, "rebinding time (derived from lease_time)"),
    (61, "client identifier"),
    (82, "relay agent information"),
    (255, "end"),
];
pub const SUPPORTED_RECORD_TYPES: &[&str] = &["A", "AAAA", "CNAME", "MX", "NS", "PTR", "SRV", "TXT", "CAA"];

pub fn validate(c: &Config) -> Vec<Problem> {
    let mut v = Validator { c, problems: Vec::new() };
    v.agent();
    v.segments();
    v.uplink();
    v.routes();
    v.zones();
    v.dns();
    v.dhcp();
    v.tftp();
    v.firewall();
    v.nat();
    v.authority();
    if v.problems.is_empty() {
        v.zone_data();
    }
    v.problems
}

struct Validator<'a> {
    c: &'a Config,
    problems: Vec<Problem>,
}

/// True for a DNS label: 1-63 of letters, digits and hyphens, not starting or
/// ending with a hyphen (RFC 1123 host names; `_` allowed for SRV-style names).
pub fn valid_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

/// True for a domain name written without the trailing dot.
pub fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 253 && n.split('.').all(valid_label)
}

/// `name` relative to `zone` (`@` is the apex) as a lower-case absolute name
/// without the trailing dot; absolute names (ending in `.`) are kept.
pub fn fqdn(name: &str, zone: &str) -> String {
    let n = if name == "@" {
        zone.to_string()
    } else if let Some(abs) = name.strip_suffix('.') {
        abs.to_string()
    } else {
        format!("{name}.{zone}")
    };
    n.to_ascii_lowercase()
}

/// True when `name` equals `apex` or lies below it.
pub fn in_zone(name: &str, apex: &str) -> bool {
    let (name, apex) = (name.to_ascii_lowercase(), apex.to_ascii_lowercase());
    name == apex || name.ends_with(&format!(".{apex}"))
}

fn usable_host(net: &Ipv4Net, a: Ipv4Addr) -> bool {
    net.contains(&a) && (net.prefix_len() >= 31 || (a != net.network() && a != net.broadcast()))
}

impl<'a> Validator<'a> {
    fn err(&mut self, path: Vec<PathSeg>, msg: impl Into<String>) {
        self.problems.push(Problem::new(path, msg));
    }

    fn segment_names(&self) -> Vec<&'a str> {
        let c: &'a Config = self.c;
        c.segments.iter().map(|s| s.name.as_str()).collect()
    }

    fn one_of(names: &[&str]) -> String {
        if names.is_empty() { "none are defined".to_string() } else { format!("one of: {}", names.join(", ")) }
    }

    /// `[agent]`: who may use the control socket must exist on this system.
    fn agent(&mut self) {
        let a = &self.c.agent;
        if let Some(g) = &a.control_group
            && crate::users::resolve_group(g).is_none()
        {
            self.err(
                cfg_path!("agent", "control_group"),
                format!("no group {g:?} on this system; give an existing group name or a numeric gid"),
            );
        }
        for (i, u) in a.control_users.iter().enumerate() {
            if crate::users::resolve_user(u).is_none() {
                self.err(
                    cfg_path!("agent", "control_users", i),
                    format!("no user {u:?} on this system; give an existing user name or a numeric uid"),
                );
            }
        }
    }

    fn segments(&mut self) {
        let c = self.c;
        if c.segments.is_empty() {
            self.err(cfg_path!("segment"), "no [[segment]] is defined: coresvc needs at least one segment to serve");
        }
        let mut names = HashMap::new();
        let mut ifaces: HashMap<&str, usize> = HashMap::new();
        for (i, s) in c.segments.iter().enumerate() {
            if !valid_label(&s.name) || s.name.contains('_') {
                self.err(
                    cfg_path!("segment", i, "name"),
                    format!("{:?} is not a valid segment name: use letters, digits and hyphens", s.name),
                );
            }
            if RULE_TO_WORDS.contains(&s.name.as_str()) {
                self.err(
                    cfg_path!("segment", i, "name"),
                    format!("{:?} is reserved for firewall rules; choose another segment name", s.name),
                );
            }
            if let Some(j) = names.insert(s.name.as_str(), i) {
                self.err(
                    cfg_path!("segment", i, "name"),
                    format!("segment name {:?} is already used by segment[{j}]; names must be unique", s.name),
                );
            }
            self.interface_name(cfg_path!("segment", i, "interface"), &s.interface);
            if let Some(j) = ifaces.insert(s.interface.as_str(), i) {
                self.err(
                    cfg_path!("segment", i, "interface"),
                    format!("interface {:?} is already used by segment[{j}]; each segment needs its own", s.interface),
                );
            }
            let net = s.cidr;
            if net.addr() != net.network() {
                self.err(
                    cfg_path!("segment", i, "cidr"),
                    format!("{net} has host bits set: did you mean {}/{}?", net.network(), net.prefix_len()),
                );
            }
            if net.prefix_len() > 30 {
                self.err(
                    cfg_path!("segment", i, "cidr"),
                    format!("{net} is too small for a segment: use a prefix of /30 or shorter"),
                );
            }
            if !usable_host(&net.trunc(), s.gateway) {
                self.err(
                    cfg_path!("segment", i, "gateway"),
                    format!(
                        "{} is outside the segment's cidr {} (or is its network or broadcast address); \
                         use a host address inside {}",
                        s.gateway,
                        net.trunc(),
                        net.trunc()
                    ),
                );
            }
            if let Some(r) = s.reserved {
                if !usable_host(&net.trunc(), r) {
                    self.err(
                        cfg_path!("segment", i, "reserved"),
                        format!(
                            "{r} is outside the segment's cidr {} (or is its network or broadcast address); \
                             use a host address inside {}",
                            net.trunc(),
                            net.trunc()
                        ),
                    );
                } else if r == s.gateway {
                    self.err(
                        cfg_path!("segment", i, "reserved"),
                        format!("{r} is the gateway address; the reserved address must differ from it"),
                    );
                }
            }
            if let Some(z) = &s.zone
                && !c.zones.iter().any(|zone| zone.name.eq_ignore_ascii_case(z))
            {
                let zones: Vec<&str> = c.zones.iter().map(|z| z.name.as_str()).collect();
                self.err(
                    cfg_path!("segment", i, "zone"),
                    format!("zone {z:?} is not defined; use {}", Self::one_of(&zones)),
                );
            }
            if let Some(mtu) = s.mtu
                && !(576..=9216).contains(&mtu)
            {
                self.err(cfg_path!("segment", i, "mtu"), format!("{mtu} is not a usable MTU: use 576 to 9216"));
            }
        }
        // Overlaps, pairwise.
        for (i, a) in c.segments.iter().enumerate() {
            for (j, b) in c.segments.iter().enumerate().skip(i + 1) {
                let (na, nb) = (a.cidr.trunc(), b.cidr.trunc());
                if na.contains(&nb.network()) || nb.contains(&na.network()) {
                    self.err(
                        cfg_path!("segment", j, "cidr"),
                        format!("{nb} overlaps segment[{i}] ({:?}, {na}); segment networks must not overlap", a.name),
                    );
                }
            }
        }
    }

    fn interface_name(&mut self, path: Vec<PathSeg>, name: &str) {
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', ':']) || name == "." || name == ".." {
            self.err(path, format!("{name:?} is not an interface name: 1 to 15 bytes, no '/', ':' or spaces"));
        }
    }

    fn uplink(&mut self) {
        let c = self.c;
        let Some(up) = &c.uplink else { return };
        self.interface_name(cfg_path!("uplink", "interface"), &up.interface);
        if let Some(i) = c.segments.iter().position(|s| s.interface == up.interface) {
            self.err(
                cfg_path!("uplink", "interface"),
                format!("{:?} is also segment[{i}]'s interface; the uplink needs its own", up.interface),
            );
        }
        if let Some(addr) = up.address {
            let net = addr.trunc();
            for (i, s) in c.segments.iter().enumerate() {
                let sn = s.cidr.trunc();
                if sn.contains(&net.network()) || net.contains(&sn.network()) {
                    self.err(
                        cfg_path!("uplink", "address"),
                        format!(
                            "{addr} overlaps segment[{i}] ({:?}, {sn}); the uplink network must be separate",
                            s.name
                        ),
                    );
                }
            }
            if let Some(gw) = up.gateway
                && (!net.contains(&gw) || gw == addr.addr())
            {
                self.err(
                    cfg_path!("uplink", "gateway"),
                    format!("{gw} is not another host of the uplink network {net}; use the upstream router's address"),
                );
            }
        }
    }

    fn routes(&mut self) {
        let c = self.c;
        for (i, r) in c.routes.iter().enumerate() {
            match (r.via, &r.dev) {
                (Some(_), Some(_)) | (None, None) => self.err(
                    cfg_path!("route", i),
                    "give exactly one of `via` (a next-hop address) or `dev` (an interface)",
                ),
                (Some(via), None) => {
                    let connected = c.segments.iter().any(|s| s.cidr.trunc().contains(&via))
                        || c.uplink.as_ref().and_then(|u| u.address).is_some_and(|a| a.trunc().contains(&via));
                    if !connected {
                        self.err(
                            cfg_path!("route", i, "via"),
                            format!("next hop {via} is not in a segment or uplink network; use an address on a connected network"),
                        );
                    }
                }
                (None, Some(dev)) => {
                    let known = c.segments.iter().any(|s| &s.interface == dev)
                        || c.uplink.as_ref().is_some_and(|u| &u.interface == dev);
                    if !known {
                        self.err(
                            cfg_path!("route", i, "dev"),
                            format!("{dev:?} is not a segment or uplink interface of this configuration"),
                        );
                    }
                }
            }
        }
    }

    fn zones(&mut self) {
        let c = self.c;
        let mgmt_apexes: Vec<(usize, String)> = c
            .zones
            .iter()
            .enumerate()
            .filter(|(_, z)| z.role == ZoneRole::Management)
            .map(|(i, z)| (i, z.name.to_ascii_lowercase()))
            .collect();
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
                && let Some((mi, m)) = mgmt_apexes.iter().find(|(_, m)| in_zone(&apex, m))
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
                if absolute && !in_zone(rel, &apex) && !mgmt_apexes.iter().any(|(_, m)| in_zone(rel, m)) {
                    v.err(
                        path.clone(),
                        format!("{name} is outside zone {apex}; write names relative to the zone, or absolute names inside it"),
                    );
                    return;
                }
                let full = fqdn(name, &apex);
                if z.role == ZoneRole::Site
                    && let Some((mi, m)) = mgmt_apexes.iter().find(|(_, m)| in_zone(&full, m))
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

    /// Builds the zones as the DNS service will (record data, zone files,
    /// CNAME conflicts, management-plane names in site zone files).
    fn zone_data(&mut self) {
        let Err(errors) = crate::dns::build::build(self.c, 0) else { return };
        for e in errors {
            let idx = self.c.zones.iter().position(|z| z.name.trim_end_matches('.').eq_ignore_ascii_case(&e.zone));
            let path = match idx {
                Some(i) if e.message.starts_with("file ") || e.message.contains(".zone") => {
                    cfg_path!("zone", i, "file")
                }
                Some(i) => cfg_path!("zone", i),
                None => cfg_path!("segment"),
            };
            self.err(path, e.message);
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

    fn dns(&mut self) {
        let c = self.c;
        for (i, f) in c.dns.forwards.iter().enumerate() {
            if !valid_name(f.domain.trim_end_matches('.')) {
                self.err(
                    cfg_path!("dns", "forward", i, "domain"),
                    format!("{:?} is not a valid domain name", f.domain),
                );
            }
            if f.upstreams.is_empty() {
                self.err(cfg_path!("dns", "forward", i, "upstreams"), "give at least one upstream server");
            }
        }
        if c.dns.tcp_max_connections == 0 {
            self.err(cfg_path!("dns", "tcp_max_connections"), "allow at least one TCP connection; use e.g. 256");
        }
        if c.dns.tcp_idle_timeout.secs() == 0 {
            self.err(cfg_path!("dns", "tcp_idle_timeout"), "use at least 1 second");
        }
        if c.dns.tcp_max_per_client == 0 {
            self.err(
                cfg_path!("dns", "tcp_max_per_client"),
                "allow at least one TCP connection per client; use e.g. 16",
            );
        }
        if c.dns.tcp_write_timeout.secs() == 0 {
            self.err(cfg_path!("dns", "tcp_write_timeout"), "use at least 1 second, e.g. \"2s\"");
        }
        if c.dns.cache_size == 0 {
            self.err(cfg_path!("dns", "cache_size"), "the cache needs at least one entry; use e.g. 10000");
        }
        if !(1..=10_000).contains(&c.dns.forward_max) {
            self.err(
                cfg_path!("dns", "forward_max"),
                format!(
                    "{} is not a usable cap on questions outstanding upstream; use 1 to 10000, e.g. 150",
                    c.dns.forward_max
                ),
            );
        }
        if !(1..=1024).contains(&c.dns.upstream_sockets) {
            self.err(
                cfg_path!("dns", "upstream_sockets"),
                format!("{} is not a usable pool of upstream sockets; use 1 to 1024, e.g. 32", c.dns.upstream_sockets),
            );
        }
        let rl = &c.dns.rate_limit;
        if rl.responses_per_second > 1_000_000 {
            self.err(
                cfg_path!("dns", "rate_limit", "responses_per_second"),
                format!(
                    "{} is beyond what rate limiting measures; use 1 to 1000000 (or 0: off)",
                    rl.responses_per_second
                ),
            );
        }
        if rl.burst > 1_000_000 {
            self.err(
                cfg_path!("dns", "rate_limit", "burst"),
                format!("{} is too large; use up to 1000000 (0: the rate)", rl.burst),
            );
        }
        if rl.slip > 10 {
            self.err(
                cfg_path!("dns", "rate_limit", "slip"),
                format!("{} is not a slip; use 0 (drop every limited answer) to 10, e.g. 2", rl.slip),
            );
        }
        if !(8..=32).contains(&rl.ipv4_prefix_length) {
            self.err(cfg_path!("dns", "rate_limit", "ipv4_prefix_length"), "use a prefix length of 8 to 32, e.g. 24");
        }
        if !(16..=128).contains(&rl.ipv6_prefix_length) {
            self.err(cfg_path!("dns", "rate_limit", "ipv6_prefix_length"), "use a prefix length of 16 to 128, e.g. 56");
        }
        if c.dns.cache_bytes.0 < 64 * 1024 {
            self.err(
                cfg_path!("dns", "cache_bytes"),
                format!(
                    "{} bytes is too small for a cache of answers; use at least \"64KiB\", e.g. \"16MiB\"",
                    c.dns.cache_bytes.0
                ),
            );
        }
        self.transfers();
        if c.dataplane.dns_cache == Some(true) && !c.dns.enabled {
            self.err(
                cfg_path!("dataplane", "dns_cache"),
                "the XDP answer cache answers with the DNS service's data, and dns.enabled is false; \
                 set dataplane.dns_cache = false (or remove it), or enable DNS",
            );
        }
    }

    /// `[[dns.tsig_key]]` and `[[dns.secondary]]`.
    fn transfers(&mut self) {
        let c = self.c;
        let mut names: Vec<String> = Vec::new();
        for (i, k) in c.dns.tsig_keys.iter().enumerate() {
            let n = k.name.trim_end_matches('.').to_ascii_lowercase();
            if !valid_name(&n) {
                self.err(
                    cfg_path!("dns", "tsig_key", i, "name"),
                    format!("{:?} is not a valid key name (a domain name, e.g. \"xfr-knot\")", k.name),
                );
            } else if names.contains(&n) {
                self.err(cfg_path!("dns", "tsig_key", i, "name"), format!("key {n} is defined twice"));
            }
            names.push(n);
            if !k.algorithm.eq_ignore_ascii_case("hmac-sha256") {
                self.err(
                    cfg_path!("dns", "tsig_key", i, "algorithm"),
                    format!("{:?} is not offered; use \"hmac-sha256\"", k.algorithm),
                );
            }
            match crate::dns::xfr::key_secret(c, k) {
                Ok(_) => {}
                Err(e) => {
                    let field = if k.secret_file.is_some() { "secret_file" } else { "secret" };
                    self.err(cfg_path!("dns", "tsig_key", i, field), e);
                }
            }
        }
        if c.dns.transfer_max == 0 || c.dns.transfer_max > 1024 {
            self.err(
                cfg_path!("dns", "transfer_max"),
                format!(
                    "{} is not a usable cap on concurrent zone transfers; use 1 to 1024, e.g. 8",
                    c.dns.transfer_max
                ),
            );
        }
        let zones: Vec<String> = c.zones.iter().map(|z| z.name.trim_end_matches('.').to_ascii_lowercase()).collect();
        for (i, s) in c.dns.secondaries.iter().enumerate() {
            if !c.segments.iter().any(|g| g.cidr.trunc().contains(&s.address)) {
                self.err(
                    cfg_path!("dns", "secondary", i, "address"),
                    format!("{} is on no segment; DNS (and so zone transfers) is served on the segments only: use an address inside a segment's cidr", s.address),
                );
            }
            if let Some(k) = &s.key {
                let k = k.trim_end_matches('.').to_ascii_lowercase();
                if !names.contains(&k) {
                    self.err(
                        cfg_path!("dns", "secondary", i, "key"),
                        format!(
                            "no [[dns.tsig_key]] is named {k:?}; define it or name one of: {}",
                            if names.is_empty() { "(none defined)".to_string() } else { names.join(", ") }
                        ),
                    );
                }
            }
            for (j, z) in s.zones.iter().enumerate() {
                let z = z.trim_end_matches('.').to_ascii_lowercase();
                if !zones.contains(&z) && !z.ends_with(".in-addr.arpa") {
                    self.err(
                        cfg_path!("dns", "secondary", i, "zones", j),
                        format!("{z:?} is not a local zone; use one of: {}", zones.join(", ")),
                    );
                }
            }
            if s.port == 0 {
                self.err(cfg_path!("dns", "secondary", i, "port"), "use the port the secondary listens on, e.g. 53");
            }
        }
    }

    fn segment_index(&self, name: &str) -> Option<usize> {
        self.c.segments.iter().position(|s| s.name == name)
    }

    fn dhcp(&mut self) {
        let c = self.c;
        if c.dhcp.probe_wait_ms > 30_000 {
            self.err(
                cfg_path!("dhcp", "probe_wait_ms"),
                format!("{} ms is more than 30 s; a few seconds is plenty (0 skips the probe)", c.dhcp.probe_wait_ms),
            );
        }
        if c.dhcp.watch_interval.secs() == 0 {
            self.err(cfg_path!("dhcp", "watch_interval"), "must be at least 1s");
        }
        let seg_names = self.segment_names();
        let mut ranges: Vec<(usize, u32, u32)> = Vec::new();
        for (pi, p) in c.dhcp.pools.iter().enumerate() {
            let Some(si) = self.segment_index(&p.segment) else {
                self.err(
                    cfg_path!("dhcp", "pool", pi, "segment"),
                    format!("segment {:?} is not defined; use {}", p.segment, Self::one_of(&seg_names)),
                );
                continue;
            };
            let s = &c.segments[si];
            let net = s.cidr.trunc();
            let (start, end) = (u32::from(p.start), u32::from(p.end));
            if start > end {
                self.err(
                    cfg_path!("dhcp", "pool", pi, "end"),
                    format!("end {} is before start {}; the range is inclusive, start first", p.end, p.start),
                );
                continue;
            }
            for (field, a) in [("start", p.start), ("end", p.end)] {
                if !usable_host(&net, a) {
                    self.err(
                        cfg_path!("dhcp", "pool", pi, field),
                        format!(
                            "{a} is outside segment {:?}'s cidr {net} (or is its network or broadcast address); \
                             pools must lie inside {net}",
                            s.name
                        ),
                    );
                }
            }
            for (what, a) in [("gateway", Some(s.gateway)), ("reserved address", s.reserved)] {
                if let Some(a) = a
                    && (start..=end).contains(&u32::from(a))
                {
                    self.err(
                        cfg_path!("dhcp", "pool", pi),
                        format!(
                            "the pool {}-{} contains segment {:?}'s {what} {a}; shrink the pool so it excludes {a}",
                            p.start, p.end, s.name
                        ),
                    );
                }
            }
            for &(pj, a, b) in &ranges {
                if start <= b && a <= end {
                    self.err(
                        cfg_path!("dhcp", "pool", pi),
                        format!("the pool {}-{} overlaps dhcp.pool[{pj}]; pools must not overlap", p.start, p.end),
                    );
                }
            }
            ranges.push((pi, start, end));
            self.options(&p.options, cfg_path!("dhcp", "pool", pi, "option"));
            if let Some(list) = &p.domain_search {
                self.domain_search(list, cfg_path!("dhcp", "pool", pi, "domain_search"));
            }
            if let Some(lt) = p.lease_time {
                self.lease_time(cfg_path!("dhcp", "pool", pi, "lease_time"), lt.secs());
            }
        }
        self.lease_time(cfg_path!("dhcp", "lease_time"), c.dhcp.lease_time.secs());
        if c.dhcp.max_lease_time < c.dhcp.lease_time {
            self.err(
                cfg_path!("dhcp", "max_lease_time"),
                format!(
                    "{}s is shorter than lease_time ({}s); it must be at least as long",
                    c.dhcp.max_lease_time.secs(),
                    c.dhcp.lease_time.secs()
                ),
            );
        }
        self.options(&c.dhcp.options, cfg_path!("dhcp", "option"));
        self.domain_search(&c.dhcp.domain_search, cfg_path!("dhcp", "domain_search"));

        let mut macs = HashMap::new();
        let mut cids = HashMap::new();
        let mut addrs = HashMap::new();
        let mut names = HashMap::new();
        for (hi, h) in c.dhcp.hosts.iter().enumerate() {
            if h.mac.is_none() && h.client_id.is_none() {
                self.err(cfg_path!("dhcp", "host", hi), "a static host needs `mac` or `client_id` to be recognised");
            }
            if let Some(mac) = h.mac
                && let Some(j) = macs.insert(mac, hi)
            {
                self.err(
                    cfg_path!("dhcp", "host", hi, "mac"),
                    format!("MAC {mac} is already used by dhcp.host[{j}]; each MAC maps to one address"),
                );
            }
            if let Some(cid) = &h.client_id
                && let Some(j) = cids.insert(cid.clone(), hi)
            {
                self.err(
                    cfg_path!("dhcp", "host", hi, "client_id"),
                    format!("client id {cid} is already used by dhcp.host[{j}]"),
                );
            }
            if let Some(j) = addrs.insert(h.address, hi) {
                self.err(
                    cfg_path!("dhcp", "host", hi, "address"),
                    format!("{} is already given to dhcp.host[{j}]; each static host needs its own address", h.address),
                );
            }
            match c.segments.iter().find(|s| s.cidr.trunc().contains(&h.address)) {
                None => self.err(
                    cfg_path!("dhcp", "host", hi, "address"),
                    format!(
                        "{} is not inside any segment's cidr; use an address of the segment the host is on",
                        h.address
                    ),
                ),
                Some(s) => {
                    let net = s.cidr.trunc();
                    if !usable_host(&net, h.address) || h.address == s.gateway || Some(h.address) == s.reserved {
                        self.err(
                            cfg_path!("dhcp", "host", hi, "address"),
                            format!(
                                "{} is segment {:?}'s gateway, reserved, network or broadcast address; use another host address",
                                h.address, s.name
                            ),
                        );
                    }
                    if let Some(name) = &h.hostname {
                        if !valid_label(name) || name.contains('_') {
                            self.err(
                                cfg_path!("dhcp", "host", hi, "hostname"),
                                format!("{name:?} is not a host name: one label of letters, digits and hyphens"),
                            );
                        } else if let Some(j) = names.insert((s.name.clone(), name.to_ascii_lowercase()), hi) {
                            self.err(
                                cfg_path!("dhcp", "host", hi, "hostname"),
                                format!("host name {name:?} is already used by dhcp.host[{j}] on segment {:?}", s.name),
                            );
                        } else if let Some(zone) = s.zone.as_deref() {
                            // The registration must not clash with a service name.
                            let full = fqdn(name, zone.trim_end_matches('.'));
                            let clash = c.zones.iter().find(|z| z.name.eq_ignore_ascii_case(zone)).and_then(|z| {
                                z.services.iter().find(|sv| fqdn(&sv.name, zone.trim_end_matches('.')) == full)
                            });
                            if clash.is_some() {
                                self.err(
                                    cfg_path!("dhcp", "host", hi, "hostname"),
                                    format!(
                                        "{full} is a service name in zone {zone}; a host cannot take a service's name"
                                    ),
                                );
                            }
                        }
                    }
                }
            }
            if let Some(lt) = h.lease_time {
                self.lease_time(cfg_path!("dhcp", "host", hi, "lease_time"), lt.secs());
            }
            if let Some(pxe) = &h.pxe {
                self.pxe(pxe, cfg_path!("dhcp", "host", hi, "pxe"));
            }
        }
        self.pxe(&c.dhcp.pxe, cfg_path!("dhcp", "pxe"));
        self.relays();
    }

    /// `[[dhcp.relay]]`: a giaddr selects one segment, reachable through
    /// that segment's interface (the replies go back to it there).
    fn relays(&mut self) {
        let c = self.c;
        let seg_names = self.segment_names();
        let own: HashSet<Ipv4Addr> = c
            .segments
            .iter()
            .flat_map(|s| [Some(s.gateway), s.reserved])
            .chain(c.uplink.iter().map(|u| u.address.map(|a| a.addr())))
            .flatten()
            .collect();
        let mut giaddrs: HashMap<Ipv4Addr, usize> = HashMap::new();
        for (ri, r) in c.dhcp.relays.iter().enumerate() {
            let Some(si) = self.segment_index(&r.segment) else {
                self.err(
                    cfg_path!("dhcp", "relay", ri, "segment"),
                    format!("segment {:?} is not defined; use {}", r.segment, Self::one_of(&seg_names)),
                );
                continue;
            };
            let s = &c.segments[si];
            let served = c.dhcp.pools.iter().any(|p| p.segment == s.name)
                || c.dhcp.hosts.iter().any(|h| s.cidr.trunc().contains(&h.address));
            if !served {
                self.err(
                    cfg_path!("dhcp", "relay", ri, "segment"),
                    format!(
                        "segment {:?} has no dhcp.pool and no dhcp.host: its relays' clients would get nothing; \
                         add a pool for it or name a served segment",
                        s.name
                    ),
                );
            }
            if r.addresses.is_empty() {
                self.err(
                    cfg_path!("dhcp", "relay", ri, "addresses"),
                    "give the relay's addresses as it writes them in giaddr, e.g. [\"10.20.0.254\"]",
                );
            }
            let net = s.cidr.trunc();
            let routed = |a: Ipv4Addr| {
                net.contains(&a)
                    || c.routes.iter().any(|rt| {
                        rt.prefix.trunc().contains(&a)
                            && (rt.via.is_some_and(|v| net.contains(&v)) || rt.dev.as_deref() == Some(&s.interface))
                    })
            };
            for (field, list) in [("addresses", &r.addresses), ("sources", &r.sources)] {
                for (ai, &a) in list.iter().enumerate() {
                    let path = cfg_path!("dhcp", "relay", ri, field, ai);
                    if a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback() {
                        self.err(path, format!("{a} is not a relay agent's unicast address"));
                    } else if own.contains(&a) {
                        self.err(path, format!("{a} is one of coresvc's own addresses, not a relay agent's"));
                    } else if field == "addresses" && !routed(a) {
                        self.err(
                            path,
                            format!(
                                "{a} is not reachable through segment {:?}'s interface {} (replies go to the relay \
                                 there): use an address inside {net} or add a [[route]] for it through that segment",
                                s.name, s.interface
                            ),
                        );
                    } else if field == "addresses"
                        && let Some(j) = giaddrs.insert(a, ri)
                    {
                        self.err(
                            path,
                            format!(
                                "{a} is already a relay address of dhcp.relay[{j}] (segment {:?}); a giaddr selects \
                                 one segment",
                                c.dhcp.relays[j].segment
                            ),
                        );
                    }
                }
            }
        }
    }

    fn domain_search(&mut self, list: &[String], base: Vec<PathSeg>) {
        for (i, d) in list.iter().enumerate() {
            if !valid_name(d.trim_end_matches('.')) {
                let mut path = base.clone();
                path.push(PathSeg::Index(i));
                self.err(path, format!("{d:?} is not a domain name; use names like dvnt.deevnet.net"));
            }
        }
    }

    fn lease_time(&mut self, path: Vec<PathSeg>, secs: u32) {
        if secs < 60 {
            self.err(path, format!("{secs}s is too short a lease; use at least 60 seconds"));
        }
    }

    fn options(&mut self, opts: &[super::DhcpOption], base: Vec<PathSeg>) {
        for (i, o) in opts.iter().enumerate() {
            let mut path = base.clone();
            path.push(PathSeg::Index(i));
            if let Some((_, what)) = SERVER_OWNED_OPTIONS.iter().find(|(c, _)| *c == o.code) {
                self.err(
                    path.clone(),
                    format!("option {} ({what}) is set by the server and cannot be configured", o.code),
                );
            }
            let n =
                [o.text.is_some(), o.ip.is_some(), o.u8.is_some(), o.u16.is_some(), o.u32.is_some(), o.hex.is_some()]
                    .iter()
                    .filter(|b| **b)
                    .count();
            if n != 1 {
                self.err(path, "give exactly one value: `text`, `ip`, `u8`, `u16`, `u32` or `hex`");
            }
        }
    }

    fn pxe(&mut self, pxe: &super::Pxe, path: Vec<PathSeg>) {
        let files = [
            ("bios", &pxe.bios),
            ("uefi_x64", &pxe.uefi_x64),
            ("uefi_arm64", &pxe.uefi_arm64),
            ("http_x64", &pxe.http_x64),
            ("http_arm64", &pxe.http_arm64),
        ];
        for (field, f) in files {
            let Some(f) = f else { continue };
            let http = f.starts_with("http://") || f.starts_with("https://");
            let mut p = path.clone();
            p.push(PathSeg::Key(field.to_string()));
            if field.starts_with("http_") && !http {
                self.err(p, format!("{f:?} must be an http:// or https:// URL for HTTP boot clients"));
            } else if !http && self.c.tftp.is_none() {
                self.err(p, format!("boot file {f:?} is fetched over TFTP, but there is no [tftp] section"));
            }
        }
    }

    fn tftp(&mut self) {
        let c = self.c;
        let Some(t) = &c.tftp else { return };
        let root = c.resolve_path(&t.root);
        if !root.is_dir() {
            self.err(cfg_path!("tftp", "root"), format!("{} is not a directory", root.display()));
        }
        if let Some(segs) = &t.segments {
            let names = self.segment_names();
            for (i, s) in segs.iter().enumerate() {
                if !names.contains(&s.as_str()) {
                    self.err(
                        cfg_path!("tftp", "segments", i),
                        format!("segment {s:?} is not defined; use {}", Self::one_of(&names)),
                    );
                }
            }
        }
        if t.max_transfers_per_client == 0 {
            self.err(cfg_path!("tftp", "max_transfers_per_client"), "allow at least one transfer per client");
        }
        if t.max_transfers == 0 {
            self.err(cfg_path!("tftp", "max_transfers"), "allow at least one transfer");
        }
        // RFC 2349 §3.1: timeouts are 1 to 255 seconds.
        if !(1..=255).contains(&t.timeout.secs()) {
            self.err(
                cfg_path!("tftp", "timeout"),
                format!("{}s is not a tftp timeout: use 1 to 255 seconds", t.timeout.secs()),
            );
        }
        if !(1..=50).contains(&t.retries) {
            self.err(cfg_path!("tftp", "retries"), format!("{} is not a retry count: use 1 to 50", t.retries));
        }
        // RFC 2348 §2: 8 to 65464; below 512, the size without the option, it only slows clients down.
        if !(512..=65464).contains(&t.max_blksize) {
            self.err(
                cfg_path!("tftp", "max_blksize"),
                format!("{} is not a block size limit: use 512 to 65464 bytes", t.max_blksize),
            );
        }
        // RFC 7440 §3: 1 to 65535 blocks.
        if t.max_windowsize == 0 {
            self.err(cfg_path!("tftp", "max_windowsize"), "0 is not a window size limit: use 1 to 65535 blocks");
        }
    }

    fn firewall(&mut self) {
        let c = self.c;
        let names = self.segment_names();
        let mut rule_names = HashMap::new();
        for (i, r) in c.firewall.rules.iter().enumerate() {
            if let Some(j) = rule_names.insert(r.name.as_str(), i) {
                self.err(
                    cfg_path!("firewall", "rule", i, "name"),
                    format!("rule name {:?} is already used by firewall.rule[{j}]", r.name),
                );
            }
            if !names.contains(&r.from.as_str()) && !RULE_FROM_WORDS.contains(&r.from.as_str()) {
                self.err(
                    cfg_path!("firewall", "rule", i, "from"),
                    format!(
                        "{:?} is not a segment; use a segment name ({}) or {}",
                        r.from,
                        names.join(", "),
                        RULE_FROM_WORDS.join(", ")
                    ),
                );
            }
            if !names.contains(&r.to.as_str()) && !RULE_TO_WORDS.contains(&r.to.as_str()) {
                self.err(
                    cfg_path!("firewall", "rule", i, "to"),
                    format!(
                        "{:?} is not a segment; use a segment name ({}) or {}",
                        r.to,
                        names.join(", "),
                        RULE_TO_WORDS.join(", ")
                    ),
                );
            }
            if !r.ports.is_empty() && !matches!(r.proto, Proto::Tcp | Proto::Udp) {
                self.err(
                    cfg_path!("firewall", "rule", i, "ports"),
                    "ports need `proto = \"tcp\"` or `proto = \"udp\"`",
                );
            }
            for (k, d) in r.dst.iter().enumerate() {
                if d.addr() != d.network() {
                    self.err(
                        cfg_path!("firewall", "rule", i, "dst", k),
                        format!("{d} has host bits set: did you mean {}/{}?", d.network(), d.prefix_len()),
                    );
                }
            }
        }
    }

    fn nat(&mut self) {
        let c = self.c;
        let n = &c.nat;
        if n.port_min == 0 || n.port_min > n.port_max {
            self.err(
                cfg_path!("nat", "port_min"),
                format!("the range {}-{} is empty or starts at 0; use e.g. 20000-60999", n.port_min, n.port_max),
            );
        }
        let range = (u32::from(n.port_max) + 1).saturating_sub(u32::from(n.port_min));
        if let Some(q) = n.max_ports_per_host.filter(|q| *q > range) {
            self.err(
                cfg_path!("nat", "max_ports_per_host"),
                format!("{q} is more than the {range} ports of nat.port_min..nat.port_max; use at most {range} (0: no limit)"),
            );
        }
        let dp = &c.dataplane;
        if let Some(q) = dp.max_flows_per_host.filter(|q| *q > dp.conntrack_max) {
            self.err(
                cfg_path!("dataplane", "max_flows_per_host"),
                format!(
                    "{q} is more than the table holds (dataplane.conntrack_max = {}); use at most that (0: no limit)",
                    dp.conntrack_max
                ),
            );
        }
        let mut seen = HashMap::new();
        for (i, f) in n.forwards.iter().enumerate() {
            if f.proto == Proto::Icmp {
                self.err(cfg_path!("nat", "forward", i, "proto"), "port forwarding needs tcp, udp or any");
            }
            for p in match f.proto {
                Proto::Any => vec![Proto::Tcp, Proto::Udp],
                other => vec![other],
            } {
                if let Some(j) = seen.insert((p, f.port), i) {
                    self.err(
                        cfg_path!("nat", "forward", i, "port"),
                        format!("{:?} port {} is already forwarded by nat.forward[{j}]", p, f.port),
                    );
                }
            }
            if (n.port_min..=n.port_max).contains(&f.port) {
                self.err(
                    cfg_path!("nat", "forward", i, "port"),
                    format!(
                        "port {} is inside the masquerade range {}-{}; forward a port outside it",
                        f.port, n.port_min, n.port_max
                    ),
                );
            }
            let to = *f.to.ip();
            if !c.segments.iter().any(|s| usable_host(&s.cidr.trunc(), to)) {
                self.err(
                    cfg_path!("nat", "forward", i, "to"),
                    format!("{to} is not a host address of any segment; forward to an inside host"),
                );
            }
        }
        if c.uplink.is_none() && (!n.forwards.is_empty() || c.segments.iter().any(|s| s.nat)) {
            // NAT needs an uplink; segments default to nat = true, so only
            // complain when port forwards are configured.
            if !n.forwards.is_empty() {
                self.err(cfg_path!("nat", "forward"), "port forwarding needs an [uplink]");
            }
        }
    }

    /// `[authority]`: the production servers are someone else's addresses
    /// (coresvc checking itself would prove nothing), known segments, a
    /// control agent URL coresvc can speak to.
    fn authority(&mut self) {
        let c = self.c;
        let Some(a) = &c.authority else { return };
        let own: Vec<(Ipv4Addr, &str)> = c
            .segments
            .iter()
            .flat_map(|s| [Some((s.gateway, s.name.as_str())), s.reserved.map(|r| (r, s.name.as_str()))])
            .flatten()
            .collect();
        let check_servers = |v: &mut Self, list: &[super::Endpoint], path: Vec<PathSeg>| {
            for (i, e) in list.iter().enumerate() {
                let mut p = path.clone();
                p.push(PathSeg::Index(i));
                let std::net::IpAddr::V4(ip) = e.0.ip() else {
                    v.err(p, format!("{e} is not an IPv4 address; the segments are IPv4"));
                    continue;
                };
                if let Some((_, seg)) = own.iter().find(|(a, _)| *a == ip) {
                    v.err(
                        p,
                        format!(
                            "{ip} is coresvc's own address on segment {seg:?}: the production DNS must be checked at \
                             an address of its own (checking coresvc against itself proves nothing)"
                        ),
                    );
                }
            }
        };
        check_servers(self, &a.dns, cfg_path!("authority", "dns"));
        let names = self.segment_names();
        let mut seen = HashMap::new();
        for (i, s) in a.segments.iter().enumerate() {
            if !names.contains(&s.segment.as_str()) {
                self.err(
                    cfg_path!("authority", "segment", i, "segment"),
                    format!("{:?} is not a segment; use {}", s.segment, Self::one_of(&names)),
                );
            }
            if let Some(j) = seen.insert(s.segment.as_str(), i) {
                self.err(
                    cfg_path!("authority", "segment", i, "segment"),
                    format!("segment {:?} is already described by authority.segment[{j}]", s.segment),
                );
            }
            if let Some(d) = &s.dns {
                check_servers(self, d, cfg_path!("authority", "segment", i, "dns"));
            }
            if let Some(k) = &s.kea_interface {
                self.interface_name(cfg_path!("authority", "segment", i, "kea_interface"), k);
            }
        }
        if !(100..=10_000).contains(&a.query_timeout_ms) {
            self.err(
                cfg_path!("authority", "query_timeout_ms"),
                format!("{} ms is out of range; use 100 to 10000 (e.g. 1000)", a.query_timeout_ms),
            );
        }
        if let Some(u) = &a.kea_control_agent
            && let Err(e) = crate::handoff::KeaApi::parse(u)
        {
            self.err(cfg_path!("authority", "kea_control_agent"), e);
        }
        if let Some(f) = &a.kea_lease_file
            && (f.as_os_str().is_empty() || f.file_name().is_none())
        {
            self.err(
                cfg_path!("authority", "kea_lease_file"),
                "give the path of Kea's memfile lease file (a CSV file)",
            );
        }
    }
}
