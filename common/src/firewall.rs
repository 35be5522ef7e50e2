//! Firewall rule matching: the decision the XDP program makes for a new flow
//! and the agent reproduces for `coresvc rules` and tests, from one source.
//!
//! A packet is described by its zones (where it came from, where it goes),
//! its protocol and destination port. Rules are checked in order; the first
//! match decides. The agent appends the configured defaults as ordinary rules
//! after the user's rules, so the data path has no special cases.

/// Zone numbers. Segment `i` of the configuration is zone `ZONE_SEGMENT0 + i`.
pub const ZONE_GATEWAY: u16 = 0;
pub const ZONE_SEGMENT0: u16 = 1;
pub const MAX_SEGMENTS: u16 = 64;
pub const ZONE_UPLINK: u16 = 100;
/// Matches every segment (not the uplink or the gateway).
pub const ZONE_ANY_SEGMENT: u16 = 0xfffe;
/// Matches every zone.
pub const ZONE_ANY: u16 = 0xffff;

/// Rule protocol numbers (IANA), 0 for any.
pub const PROTO_ANY: u8 = 0;

pub const ACTION_DENY: u8 = 0;
pub const ACTION_ALLOW: u8 = 1;

/// The rule has destination prefixes (checked through the prefix set).
pub const RULE_F_PREFIXES: u8 = 1 << 0;

/// The parts of a rule the matcher needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleMatch {
    pub from: u16,
    pub to: u16,
    pub proto: u8,
    pub flags: u8,
    /// Inclusive destination port range; 0..=65535 for any.
    pub port_lo: u16,
    pub port_hi: u16,
}

/// What is known about a new flow's first packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub from: u16,
    pub to: u16,
    pub proto: u8,
    /// Destination port (TCP/UDP), 0 otherwise.
    pub dport: u16,
}

#[inline(always)]
fn zone_matches(rule: u16, zone: u16) -> bool {
    rule == ZONE_ANY
        || rule == zone
        || (rule == ZONE_ANY_SEGMENT && (ZONE_SEGMENT0..ZONE_SEGMENT0 + MAX_SEGMENTS).contains(&zone))
}

/// True when `r` matches `f`; `in_prefixes` answers whether the flow's
/// destination is in the rule's prefix set (asked only when the rule has one).
#[inline(always)]
pub fn matches(r: &RuleMatch, f: &Flow, in_prefixes: impl FnOnce() -> bool) -> bool {
    if !zone_matches(r.from, f.from) || !zone_matches(r.to, f.to) {
        return false;
    }
    if r.proto != PROTO_ANY && r.proto != f.proto {
        return false;
    }
    if r.proto != PROTO_ANY && (f.dport < r.port_lo || f.dport > r.port_hi) {
        return false;
    }
    if r.flags & RULE_F_PREFIXES != 0 && !in_prefixes() {
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(from: u16, to: u16, proto: u8, lo: u16, hi: u16) -> RuleMatch {
        RuleMatch { from, to, proto, flags: 0, port_lo: lo, port_hi: hi }
    }

    #[test]
    fn zones_ports_and_protocols() {
        let f = Flow { from: ZONE_SEGMENT0 + 1, to: ZONE_SEGMENT0, proto: 6, dport: 443 };
        assert!(matches(&rule(ZONE_ANY, ZONE_ANY, PROTO_ANY, 0, 65535), &f, || false));
        assert!(matches(&rule(ZONE_ANY_SEGMENT, ZONE_SEGMENT0, 6, 443, 443), &f, || false));
        assert!(!matches(&rule(ZONE_ANY_SEGMENT, ZONE_SEGMENT0, 17, 443, 443), &f, || false), "protocol");
        assert!(!matches(&rule(ZONE_ANY_SEGMENT, ZONE_SEGMENT0, 6, 80, 90), &f, || false), "port");
        assert!(!matches(&rule(ZONE_UPLINK, ZONE_ANY, PROTO_ANY, 0, 65535), &f, || false), "from");
        assert!(!matches(
            &rule(ZONE_ANY_SEGMENT, ZONE_ANY_SEGMENT, 6, 0, 65535),
            &Flow { to: ZONE_UPLINK, ..f },
            || false
        ));
        assert!(!matches(&rule(ZONE_ANY_SEGMENT, ZONE_ANY, 6, 0, 65535), &Flow { from: ZONE_GATEWAY, ..f }, || false));
    }

    #[test]
    fn prefixes_are_asked_only_when_the_rule_has_them() {
        let f = Flow { from: ZONE_SEGMENT0, to: ZONE_UPLINK, proto: 17, dport: 53 };
        let mut r = rule(ZONE_ANY, ZONE_UPLINK, PROTO_ANY, 0, 65535);
        assert!(matches(&r, &f, || panic!("not asked")));
        r.flags = RULE_F_PREFIXES;
        assert!(matches(&r, &f, || true));
        assert!(!matches(&r, &f, || false));
    }
}
