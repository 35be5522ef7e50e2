//! The configuration's own rules: every section and field, and how they
//! refer to each other. Each problem names the field (as a path) and says
//! what would be valid; all problems are reported together. What only a
//! service can check (zone data, secrets, URLs) is in `crate::check`.
//!
//! One file per section: [`segments`] (with the uplink and routes),
//! [`zones`], [`dns`], [`dhcp`], [`tftp`], [`firewall`], [`nat`],
//! [`authority`]; `[agent]` is here.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::{Config, PathSeg, Problem};
use crate::cfg_path;

mod authority;
mod dhcp;
mod dns;
mod firewall;
mod nat;
mod segments;
mod tftp;
mod zones;

/// Names a rule may use besides segment names.
const RULE_FROM_WORDS: &[&str] = &["uplink", "any"];
const RULE_TO_WORDS: &[&str] = &["uplink", "gateway", "any"];

/// Every problem the configuration's own rules find in `c`.
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
    v.problems
}

struct Validator<'a> {
    c: &'a Config,
    problems: Vec<Problem>,
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

    fn interface_name(&mut self, path: Vec<PathSeg>, name: &str) {
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', ':']) || name == "." || name == ".." {
            self.err(path, format!("{name:?} is not an interface name: 1 to 15 bytes, no '/', ':' or spaces"));
        }
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
}
