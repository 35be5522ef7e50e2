//! `[nat]` and the dataplane's quotas: the masquerade port range, port
//! forwards and per-host limits.

use std::collections::HashMap;

use super::{Validator, usable_host};
use crate::{cfg_path, config::Proto};

impl Validator<'_> {
    pub(super) fn nat(&mut self) {
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
}
