//! `[firewall]`: rules between segments, the uplink and the gateway.

use std::collections::HashMap;

use super::{RULE_FROM_WORDS, RULE_TO_WORDS, Validator};
use crate::{cfg_path, config::Proto};

impl Validator<'_> {
    pub(super) fn firewall(&mut self) {
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
}
