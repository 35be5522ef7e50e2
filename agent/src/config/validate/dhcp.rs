//! `[dhcp]`: pools, static hosts, options, PXE boot files and relays.

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
};

use super::{Validator, usable_host};
use crate::{
    cfg_path,
    config::{DhcpOption, PathSeg, Pxe},
    names::{fqdn, valid_label, valid_name},
};

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

impl Validator<'_> {
    fn segment_index(&self, name: &str) -> Option<usize> {
        self.c.segments.iter().position(|s| s.name == name)
    }

    pub(super) fn dhcp(&mut self) {
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
        self.pools();
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
        self.static_hosts();
        self.pxe(&c.dhcp.pxe, cfg_path!("dhcp", "pxe"));
        self.relays();
    }

    /// `[[dhcp.pool]]`: inside their segment, without its gateway or
    /// reserved address, not overlapping.
    fn pools(&mut self) {
        let c = self.c;
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
    }

    /// `[[dhcp.host]]`: one identity, one address and one name each.
    fn static_hosts(&mut self) {
        let c = self.c;
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

    fn options(&mut self, opts: &[DhcpOption], base: Vec<PathSeg>) {
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

    fn pxe(&mut self, pxe: &Pxe, path: Vec<PathSeg>) {
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
}
