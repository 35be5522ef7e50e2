//! `[[segment]]`, `[uplink]` and `[[route]]`: the networks coresvc serves,
//! its way out, and the routes between them.

use std::collections::HashMap;

use super::{RULE_TO_WORDS, Validator, usable_host};
use crate::{cfg_path, names::valid_label};

impl Validator<'_> {
    pub(super) fn segments(&mut self) {
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

    pub(super) fn uplink(&mut self) {
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

    pub(super) fn routes(&mut self) {
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
}
