//! Compiles the configuration's firewall into rule rows: the user's rules
//! in order, then the defaults as ordinary rules, so the data path has no
//! special cases and `coresvc rules` shows every decision with counters.

use coresvc_common::firewall::{
    ACTION_ALLOW, ACTION_DENY, RULE_F_PREFIXES, ZONE_ANY, ZONE_ANY_SEGMENT, ZONE_GATEWAY, ZONE_SEGMENT0, ZONE_UPLINK,
};
use coresvc_maps_schema::{RULES_PER_BANK, Rule};
use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use crate::config::{Action, Config, GatewayPolicy, Proto};

/// One compiled rule and the configuration rule it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    /// The configuration rule's name, or `default:<what>`.
    pub name: String,
    pub rule: Rule,
    /// Destination prefixes (IPv4; the set id is assigned when written).
    pub prefixes: Vec<Ipv4Net>,
}

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error(
        "the firewall compiles to {0} rules, more than the {RULES_PER_BANK} a bank holds (each port range of a rule \
         is one); merge rules or port ranges"
    )]
    TooMany(usize),
}

fn zone(cfg: &Config, name: &str) -> u16 {
    match name {
        "any" => ZONE_ANY,
        "uplink" => ZONE_UPLINK,
        "gateway" => ZONE_GATEWAY,
        seg => cfg.segments.iter().position(|s| s.name == seg).map(|i| ZONE_SEGMENT0 + i as u16).unwrap_or(ZONE_ANY),
    }
}

fn proto(p: Proto) -> u8 {
    match p {
        Proto::Any => 0,
        Proto::Tcp => 6,
        Proto::Udp => 17,
        Proto::Icmp => 1,
    }
}

fn action(a: Action) -> u8 {
    match a {
        Action::Allow => ACTION_ALLOW,
        Action::Deny => ACTION_DENY,
    }
}

fn row(from: u16, to: u16, proto: u8, lo: u16, hi: u16, action: u8) -> Rule {
    Rule { from, to, proto, action, flags: 0, _pad: 0, port_lo: lo, port_hi: hi, prefix_set: 0 }
}

pub fn compile(cfg: &Config) -> Result<Vec<Compiled>, CompileError> {
    let mut out = Vec::new();
    for r in &cfg.firewall.rules {
        let prefixes: Vec<Ipv4Net> = r
            .dst
            .iter()
            .filter_map(|n| match n {
                IpNet::V4(v4) => Some(v4.trunc()),
                // IPv6 is not forwarded by coresvc; such prefixes match nothing.
                IpNet::V6(_) => None,
            })
            .collect();
        if !r.dst.is_empty() && prefixes.is_empty() {
            continue;
        }
        let mut base = row(zone(cfg, &r.from), zone(cfg, &r.to), proto(r.proto), 0, u16::MAX, action(r.action));
        if !prefixes.is_empty() {
            base.flags |= RULE_F_PREFIXES;
        }
        if r.ports.is_empty() {
            out.push(Compiled { name: r.name.clone(), rule: base, prefixes: prefixes.clone() });
        } else {
            for p in &r.ports {
                let rule = Rule { port_lo: p.first, port_hi: p.last, ..base };
                out.push(Compiled { name: r.name.clone(), rule, prefixes: prefixes.clone() });
            }
        }
    }
    let fw = &cfg.firewall;
    let mut d = |name: &str, rule: Rule| out.push(Compiled { name: format!("default:{name}"), rule, prefixes: vec![] });
    match fw.to_gateway {
        GatewayPolicy::Services => {
            // Port 68: other DHCP servers' answers, which coresvc watches for
            // (exclusive activation, authority.rs).
            for (what, p, port) in
                [("dns", 17, 53), ("dns-tcp", 6, 53), ("dhcp", 17, 67), ("dhcp-replies", 17, 68), ("tftp", 17, 69)]
            {
                d(&format!("gateway-{what}"), row(ZONE_ANY_SEGMENT, ZONE_GATEWAY, p, port, port, ACTION_ALLOW));
            }
            d("gateway-ping", row(ZONE_ANY_SEGMENT, ZONE_GATEWAY, 1, 0, u16::MAX, ACTION_ALLOW));
            d("to-gateway", row(ZONE_ANY_SEGMENT, ZONE_GATEWAY, 0, 0, u16::MAX, ACTION_DENY));
        }
        GatewayPolicy::Allow => d("to-gateway", row(ZONE_ANY_SEGMENT, ZONE_GATEWAY, 0, 0, u16::MAX, ACTION_ALLOW)),
        GatewayPolicy::Deny => d("to-gateway", row(ZONE_ANY_SEGMENT, ZONE_GATEWAY, 0, 0, u16::MAX, ACTION_DENY)),
    }
    d("inter-segment", row(ZONE_ANY_SEGMENT, ZONE_ANY_SEGMENT, 0, 0, u16::MAX, action(fw.inter_segment)));
    d("egress", row(ZONE_ANY_SEGMENT, ZONE_UPLINK, 0, 0, u16::MAX, action(fw.egress)));
    d("inbound", row(ZONE_UPLINK, ZONE_ANY, 0, 0, u16::MAX, action(fw.inbound)));
    d("deny", row(ZONE_ANY, ZONE_ANY, 0, 0, u16::MAX, ACTION_DENY));
    if out.len() > RULES_PER_BANK as usize {
        return Err(CompileError::TooMany(out.len()));
    }
    Ok(out)
}

/// Installs `compiled` atomically: the rules, their prefixes and zeroed
/// counters go to the inactive bank, then one write of the settings entry
/// makes it active and bumps the generation (connections admitted under the
/// old rules are checked again on their next packet). Returns the bank and
/// the generation now in force.
pub fn install(ebpf: &mut aya::Ebpf, compiled: &[Compiled]) -> anyhow::Result<(u32, u32)> {
    use anyhow::{Context as _, anyhow};
    use aya::maps::{Array, LpmTrie, MapData, PerCpuArray, PerCpuValues, lpm_trie::Key};
    use coresvc_maps_schema::{self as schema, PacketCount, PrefixData, Settings};

    if compiled.len() > RULES_PER_BANK as usize {
        anyhow::bail!("{} rules do not fit a bank of {RULES_PER_BANK}", compiled.len());
    }
    fn map<'e>(ebpf: &'e mut aya::Ebpf, spec: &schema::MapSpec) -> anyhow::Result<&'e mut aya::maps::Map> {
        ebpf.map_mut(spec.name).ok_or_else(|| anyhow!("map {} missing", spec.name))
    }
    let s: Settings = Array::<&MapData, Settings>::try_from(&*map(ebpf, &schema::SETTINGS)?)?.get(&0, 0)?;
    let bank = (s.active_bank & 1) ^ 1;
    let base = bank * RULES_PER_BANK;
    {
        let mut rows: Array<&mut MapData, Rule> = Array::try_from(map(ebpf, &schema::RULES)?)?;
        for (i, c) in compiled.iter().enumerate() {
            let mut r = c.rule;
            if !c.prefixes.is_empty() {
                r.prefix_set = base + i as u32 + 1;
            }
            rows.set(base + i as u32, r, 0)?;
        }
    }
    {
        let mut trie: LpmTrie<&mut MapData, PrefixData, u32> = LpmTrie::try_from(map(ebpf, &schema::RULE_PREFIXES)?)?;
        // The prefixes of this bank's previous rule set go first.
        let stale: Vec<Key<PrefixData>> = trie
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| {
                let set = u32::from_be_bytes(k.data().set);
                set > base && set <= base + RULES_PER_BANK
            })
            .collect();
        for k in stale {
            let _ = trie.remove(&k);
        }
        for (i, c) in compiled.iter().enumerate() {
            let set = base + i as u32 + 1;
            for p in &c.prefixes {
                let data = PrefixData { set: set.to_be_bytes(), addr: p.network().octets() };
                trie.insert(&Key::new(32 + u32::from(p.prefix_len()), data), 1, 0).context("writing rule prefixes")?;
            }
        }
    }
    {
        let ncpu = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let mut stats: PerCpuArray<&mut MapData, PacketCount> = PerCpuArray::try_from(map(ebpf, &schema::RULE_STATS)?)?;
        for i in 0..RULES_PER_BANK {
            stats.set(base + i, PerCpuValues::try_from(vec![PacketCount::default(); ncpu])?, 0)?;
        }
    }
    let mut settings: Array<&mut MapData, Settings> = Array::try_from(map(ebpf, &schema::SETTINGS)?)?;
    let mut s = settings.get(&0, 0)?;
    s.rule_count[bank as usize] = compiled.len() as u32;
    s.dns_verdict[bank as usize] = dns_verdicts(compiled, base);
    settings.set(0, s, 0)?;
    // The switch: one update of the settings entry.
    s.active_bank = bank;
    s.generation = s.generation.wrapping_add(1);
    settings.set(0, s, 0)?;
    Ok((bank, s.generation))
}

/// The decision of rules `compiled` (installed from absolute index `base`)
/// for DNS queries from each segment to the gateway, in the encoding of
/// `Settings::dns_verdict`: the answer cache reads it instead of scanning.
/// Left to the scan where the first rule that could match has
/// destination prefixes.
pub fn dns_verdicts(compiled: &[Compiled], base: u32) -> [u16; 64] {
    use coresvc_common::{
        firewall::{Flow, RuleMatch, matches},
        proto::{ipproto, port},
    };
    use coresvc_maps_schema::{NO_RULE, dns_verdict};
    std::array::from_fn(|seg| {
        let flow = Flow { from: ZONE_SEGMENT0 + seg as u16, to: ZONE_GATEWAY, proto: ipproto::UDP, dport: port::DNS };
        for (i, c) in compiled.iter().enumerate() {
            let r = &c.rule;
            // Whether a rule with prefixes matches is the scan's to say.
            if matches(&RuleMatch::from(r), &flow, || true) {
                if r.flags & RULE_F_PREFIXES != 0 {
                    return dns_verdict::SCAN;
                }
                return dns_verdict::encode(base + i as u32, r.action == ACTION_ALLOW);
            }
        }
        dns_verdict::encode(NO_RULE, false)
    })
}

/// A rule and its counters, for `coresvc rules`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuleStatus {
    pub index: u32,
    pub name: String,
    pub from: String,
    pub to: String,
    pub proto: String,
    pub ports: String,
    pub dst: Vec<String>,
    pub action: String,
    pub packets: u64,
    pub bytes: u64,
}

pub fn zone_name(cfg: &Config, z: u16) -> String {
    match z {
        ZONE_ANY => "any".into(),
        ZONE_ANY_SEGMENT => "any-segment".into(),
        ZONE_UPLINK => "uplink".into(),
        ZONE_GATEWAY => "gateway".into(),
        s => cfg
            .segments
            .get(usize::from(s.saturating_sub(ZONE_SEGMENT0)))
            .map(|s| s.name.clone())
            .unwrap_or_else(|| format!("zone{s}")),
    }
}

pub fn describe(cfg: &Config, index: u32, c: &Compiled, packets: u64, bytes: u64) -> RuleStatus {
    let r = &c.rule;
    RuleStatus {
        index,
        name: c.name.clone(),
        from: zone_name(cfg, r.from),
        to: zone_name(cfg, r.to),
        proto: match r.proto {
            0 => "any".into(),
            6 => "tcp".into(),
            17 => "udp".into(),
            1 => "icmp".into(),
            n => n.to_string(),
        },
        ports: if r.proto == 0 || (r.port_lo == 0 && r.port_hi == u16::MAX) {
            "-".into()
        } else if r.port_lo == r.port_hi {
            r.port_lo.to_string()
        } else {
            format!("{}-{}", r.port_lo, r.port_hi)
        },
        dst: c.prefixes.iter().map(ToString::to_string).collect(),
        action: if r.action == ACTION_ALLOW { "allow".into() } else { "deny".into() },
        packets,
        bytes,
    }
}

#[cfg(test)]
mod tests {
    use coresvc_common::firewall::{Flow, RuleMatch, matches};

    use super::*;

    fn example() -> Config {
        Config::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/coresvc.toml")).unwrap()
    }

    /// The first matching rule, as the XDP program decides.
    fn decide(rules: &[Compiled], f: Flow, dst: std::net::Ipv4Addr) -> (String, bool) {
        for c in rules {
            let r = &c.rule;
            if matches(&RuleMatch::from(r), &f, || c.prefixes.iter().any(|p| p.contains(&dst))) {
                return (c.name.clone(), r.action == ACTION_ALLOW);
            }
        }
        ("none".into(), false)
    }

    #[test]
    fn the_example_compiles_to_rules_then_defaults() {
        let cfg = example();
        let rules = compile(&cfg).unwrap();
        let (mgmt, dvnt, dvntm) = (ZONE_SEGMENT0, ZONE_SEGMENT0 + 1, ZONE_SEGMENT0 + 2);
        let any_ip = "192.0.2.1".parse().unwrap();
        let cases = [
            (Flow { from: mgmt, to: dvnt, proto: 6, dport: 22 }, "mgmt-to-sites", true),
            (Flow { from: dvnt, to: mgmt, proto: 6, dport: 8080 }, "sites-to-artifacts", true),
            (Flow { from: dvnt, to: mgmt, proto: 6, dport: 22 }, "default:inter-segment", false),
            (Flow { from: dvnt, to: dvntm, proto: 17, dport: 53 }, "default:inter-segment", false),
            (Flow { from: dvntm, to: mgmt, proto: 1, dport: 0 }, "sites-ping-mgmt", true),
            (Flow { from: dvnt, to: ZONE_UPLINK, proto: 6, dport: 443 }, "default:egress", true),
            (Flow { from: ZONE_UPLINK, to: dvnt, proto: 6, dport: 80 }, "default:inbound", false),
            (Flow { from: ZONE_UPLINK, to: ZONE_GATEWAY, proto: 17, dport: 53 }, "default:inbound", false),
            (Flow { from: dvnt, to: ZONE_GATEWAY, proto: 17, dport: 53 }, "default:gateway-dns", true),
            (Flow { from: dvnt, to: ZONE_GATEWAY, proto: 17, dport: 69 }, "default:gateway-tftp", true),
            (Flow { from: dvnt, to: ZONE_GATEWAY, proto: 6, dport: 22 }, "default:to-gateway", false),
            (Flow { from: mgmt, to: ZONE_GATEWAY, proto: 6, dport: 22 }, "mgmt-ssh-to-gateway", true),
        ];
        for (f, name, allow) in cases {
            assert_eq!(decide(&rules, f, any_ip), (name.to_string(), allow), "{f:?}");
        }
    }

    #[test]
    fn port_ranges_and_prefixes() {
        let mut cfg = example();
        cfg.firewall.rules = vec![crate::config::Rule {
            name: "web-out".into(),
            from: "dvnt".into(),
            to: "uplink".into(),
            proto: Proto::Tcp,
            ports: vec![
                crate::config::PortRange { first: 80, last: 80 },
                crate::config::PortRange { first: 8000, last: 8080 },
            ],
            dst: vec!["198.51.100.0/24".parse().unwrap()],
            action: Action::Deny,
        }];
        let rules = compile(&cfg).unwrap();
        assert_eq!(rules.iter().filter(|r| r.name == "web-out").count(), 2);
        let f = Flow { from: ZONE_SEGMENT0 + 1, to: ZONE_UPLINK, proto: 6, dport: 8001 };
        assert_eq!(decide(&rules, f, "198.51.100.7".parse().unwrap()), ("web-out".into(), false));
        assert_eq!(decide(&rules, f, "203.0.113.7".parse().unwrap()), ("default:egress".into(), true));
    }

    #[test]
    fn dns_verdicts_are_the_scans_decisions() {
        use coresvc_maps_schema::{NO_RULE, dns_verdict};
        let mut cfg = example();
        let deny = |from: &str| crate::config::Rule {
            name: format!("no-dns-{from}"),
            from: from.into(),
            to: "gateway".into(),
            proto: Proto::Udp,
            ports: vec![crate::config::PortRange { first: 50, last: 60 }],
            dst: Vec::new(),
            action: Action::Deny,
        };
        cfg.firewall.rules.insert(0, deny("dvnt"));
        let base = 128;
        let rules = compile(&cfg).unwrap();
        let v = dns_verdicts(&rules, base);
        let gw = "10.20.0.1".parse().unwrap();
        for seg in 0..3u16 {
            let f = Flow { from: ZONE_SEGMENT0 + seg, to: ZONE_GATEWAY, proto: 17, dport: 53 };
            let (name, allow) = decide(&rules, f, gw);
            let slot = base + rules.iter().position(|r| r.name == name).unwrap() as u32;
            assert_eq!(dns_verdict::decode(v[seg as usize]), Some((slot, allow)), "segment {seg}: {name}");
        }
        assert_eq!(dns_verdict::decode(v[1]).map(|d| d.1), Some(false), "dvnt's queries are denied");
        // A rule with prefixes could decide: left to the scan.
        cfg.firewall.rules[0].dst = vec!["10.20.0.1/32".parse().unwrap()];
        assert_eq!(dns_verdicts(&compile(&cfg).unwrap(), base)[1], dns_verdict::SCAN);
        // No rule matches: denied, counted nowhere.
        assert_eq!(dns_verdict::decode(dns_verdicts(&[], 0)[0]), Some((NO_RULE, false)));
    }

    #[test]
    fn too_many_rules_are_refused() {
        let mut cfg = example();
        let r = cfg.firewall.rules[0].clone();
        cfg.firewall.rules = (0..coresvc_maps_schema::RULES_PER_BANK + 10)
            .map(|i| crate::config::Rule { name: format!("r{i}"), ..r.clone() })
            .collect();
        assert!(matches!(compile(&cfg), Err(CompileError::TooMany(_))));
    }
}
