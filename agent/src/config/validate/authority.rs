//! `[authority]`: the production servers coresvc stands in for.

use std::{collections::HashMap, net::Ipv4Addr};

use super::Validator;
use crate::{
    cfg_path,
    config::{Endpoint, PathSeg},
};

impl Validator<'_> {
    /// `[authority]`: the production servers are someone else's addresses
    /// (coresvc checking itself would prove nothing), known segments (the
    /// control agent URL is checked by `crate::check`).
    pub(super) fn authority(&mut self) {
        let c = self.c;
        let Some(a) = &c.authority else { return };
        let own: Vec<(Ipv4Addr, &str)> = c
            .segments
            .iter()
            .flat_map(|s| [Some((s.gateway, s.name.as_str())), s.reserved.map(|r| (r, s.name.as_str()))])
            .flatten()
            .collect();
        let check_servers = |v: &mut Self, list: &[Endpoint], path: Vec<PathSeg>| {
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
