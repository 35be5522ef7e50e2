//! The connection table seen from the agent: listing for `coresvc flows`
//! and garbage collection of expired entries (the programs ignore expired
//! entries; the agent removes them so the table never fills with the dead).

use std::net::Ipv4Addr;

use anyhow::Result;
use aya::maps::{HashMap as BpfHashMap, MapData};
use coresvc_common::conntrack::{self as ct, CT_F_LOCAL, CT_F_ORIG_IS_A, CT_STATE_NAMES};
use coresvc_maps_schema::{self as schema, CtEntry, CtKey};
use serde::{Deserialize, Serialize};

use super::Dataplane;

/// CLOCK_MONOTONIC in nanoseconds, the programs' bpf_ktime_get_ns clock.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime with a valid out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One connection, originator first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Flow {
    pub proto: String,
    pub src: String,
    pub dst: String,
    pub state: String,
    /// Opened by the gateway itself.
    pub local: bool,
    pub age_secs: u64,
    pub idle_secs: u64,
    pub expires_in_secs: u64,
    pub packets_orig: u64,
    pub bytes_orig: u64,
    pub packets_reply: u64,
    pub bytes_reply: u64,
    /// The rule that admitted it (index in `coresvc rules`), if any.
    pub rule: Option<u16>,
    /// NAT: `masquerade`, `port-forward` or `hairpin`.
    pub nat: Option<String>,
    /// How the originator is seen outside (masquerade, hairpin).
    pub nat_source: Option<String>,
    /// What the originator addressed (port forward, hairpin).
    pub nat_destination: Option<String>,
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        n => n.to_string(),
    }
}

fn endpoint(addr: [u8; 4], port: u16, proto: u8) -> String {
    let a = Ipv4Addr::from(addr);
    match proto {
        6 | 17 => format!("{a}:{port}"),
        1 => format!("{a} id {port}"),
        _ => a.to_string(),
    }
}

pub fn describe(k: &CtKey, e: &CtEntry, now: u64) -> Flow {
    let (a, b) = ((k.addr_a, k.port_a), (k.addr_b, k.port_b));
    let (orig, reply) = if e.flags & CT_F_ORIG_IS_A != 0 { (a, b) } else { (b, a) };
    let idle = now.saturating_sub(e.last_ns);
    let timeout = ct::timeout_ns(k.proto, e.state);
    Flow {
        proto: proto_name(k.proto),
        src: endpoint(orig.0, orig.1, k.proto),
        dst: endpoint(reply.0, reply.1, k.proto),
        state: CT_STATE_NAMES.get(usize::from(e.state)).copied().unwrap_or("?").to_string(),
        local: e.flags & CT_F_LOCAL != 0,
        age_secs: now.saturating_sub(e.created_ns) / 1_000_000_000,
        idle_secs: idle / 1_000_000_000,
        expires_in_secs: timeout.saturating_sub(idle) / 1_000_000_000,
        packets_orig: e.packets_orig,
        bytes_orig: e.bytes_orig,
        packets_reply: e.packets_reply,
        bytes_reply: e.bytes_reply,
        rule: (u32::from(e.rule) < 2 * schema::RULES_PER_BANK).then_some(e.rule % schema::RULES_PER_BANK as u16),
        nat: match e.nat_kind {
            schema::NAT_SNAT => Some("masquerade".into()),
            schema::NAT_DNAT => Some("port-forward".into()),
            schema::NAT_HAIRPIN => Some("hairpin".into()),
            _ => None,
        },
        nat_source: matches!(e.nat_kind, schema::NAT_SNAT | schema::NAT_HAIRPIN)
            .then(|| endpoint(e.nat_addr, e.snat_port, k.proto)),
        nat_destination: matches!(e.nat_kind, schema::NAT_DNAT | schema::NAT_HAIRPIN)
            .then(|| endpoint(e.nat_addr, e.dnat_port, k.proto)),
    }
}

impl Dataplane {
    fn conntrack(&self) -> Result<BpfHashMap<&MapData, CtKey, CtEntry>> {
        Ok(BpfHashMap::try_from(self.map(&schema::CONNTRACK)?)?)
    }

    pub fn connection_count(&self) -> Result<usize> {
        Ok(self.conntrack()?.keys().filter(|k| k.is_ok()).count())
    }

    /// Live connections (expired ones are left out).
    pub fn flows(&self) -> Result<Vec<Flow>> {
        let now = monotonic_ns();
        let ct = self.conntrack()?;
        let mut v: Vec<Flow> = ct
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(k, e)| now.saturating_sub(e.last_ns) <= ct::timeout_ns(k.proto, e.state))
            .map(|(k, e)| describe(&k, &e, now))
            .collect();
        v.sort_by(|a, b| (&a.proto, &a.src, &a.dst).cmp(&(&b.proto, &b.src, &b.dst)));
        Ok(v)
    }

    /// Removes NAT binding pairs that no connection uses and that have been
    /// idle for a while; returns how many pairs.
    pub fn gc_bindings(&mut self) -> Result<usize> {
        use std::collections::HashSet;

        use schema::{NAT_DIR_IN, NAT_DIR_OUT, NatBind, NatKey};
        const IDLE_NS: u64 = 30_000_000_000;
        let now = monotonic_ns();
        // Inside endpoints with a live masqueraded connection.
        let used: HashSet<([u8; 4], u16, u8)> = self
            .conntrack()?
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(_, e)| matches!(e.nat_kind, schema::NAT_SNAT | schema::NAT_HAIRPIN))
            .map(|(k, e)| {
                let (orig_addr, orig_port) =
                    if e.flags & CT_F_ORIG_IS_A != 0 { (k.addr_a, k.port_a) } else { (k.addr_b, k.port_b) };
                (orig_addr, orig_port, k.proto)
            })
            .collect();
        let mut m: BpfHashMap<&mut MapData, NatKey, NatBind> = BpfHashMap::try_from(self.map_mut(&schema::NAT_BIND)?)?;
        let dead: Vec<(NatKey, NatBind)> = m
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(k, v)| {
                k.dir == NAT_DIR_OUT
                    && now.saturating_sub(v.last_ns) > IDLE_NS
                    && !used.contains(&(k.addr, k.port, k.proto))
            })
            .collect();
        let mut n = 0;
        for (out_key, v) in dead {
            // IN first (frees the port), then OUT; a program that finds the
            // OUT half alone mends or replaces the pair.
            let in_key = NatKey { addr: v.addr, port: v.port, proto: out_key.proto, dir: NAT_DIR_IN };
            let _ = m.remove(&in_key);
            let _ = m.remove(&out_key);
            n += 1;
        }
        Ok(n)
    }

    /// The binding pairs in use (`coresvc status`).
    pub fn binding_count(&self) -> Result<usize> {
        let m: BpfHashMap<&MapData, schema::NatKey, schema::NatBind> =
            BpfHashMap::try_from(self.map(&schema::NAT_BIND)?)?;
        Ok(m.keys().filter_map(|k| k.ok()).filter(|k| k.dir == schema::NAT_DIR_OUT).count())
    }

    /// Counts again, from the tables, what each source uses (forwarded
    /// connections it originated, outside ports it holds) and writes the
    /// exact figures the programs' quotas check (they only count up
    /// between two recounts). Sources that use nothing are removed.
    pub fn reconcile_quotas(&mut self) -> Result<()> {
        use std::collections::BTreeMap;

        use schema::{NAT_DIR_OUT, NatBind, NatKey, SrcUse};
        let now = monotonic_ns();
        let mut uses: BTreeMap<[u8; 4], SrcUse> = BTreeMap::new();
        for (k, e) in self.conntrack()?.iter().filter_map(|r| r.ok()) {
            if e.flags & CT_F_LOCAL != 0 || now.saturating_sub(e.last_ns) > ct::timeout_ns(k.proto, e.state) {
                continue;
            }
            let orig = if e.flags & CT_F_ORIG_IS_A != 0 { k.addr_a } else { k.addr_b };
            uses.entry(orig).or_default().flows += 1;
        }
        let binds: BpfHashMap<&MapData, NatKey, NatBind> = BpfHashMap::try_from(self.map(&schema::NAT_BIND)?)?;
        for k in binds.keys().filter_map(|k| k.ok()).filter(|k| k.dir == NAT_DIR_OUT) {
            uses.entry(k.addr).or_default().nat_ports += 1;
        }
        let mut m: BpfHashMap<&mut MapData, [u8; 4], SrcUse> = BpfHashMap::try_from(self.map_mut(&schema::SRC_QUOTA)?)?;
        let old: Vec<[u8; 4]> = m.keys().filter_map(|k| k.ok()).collect();
        for a in old {
            if !uses.contains_key(&a) {
                let _ = m.remove(&a);
            }
        }
        for (a, mut u) in uses {
            u.reconciled_ns = now;
            m.insert(a, u, 0)?;
        }
        Ok(())
    }

    /// Removes expired connections; returns how many.
    pub fn gc(&mut self) -> Result<usize> {
        let now = monotonic_ns();
        let mut ct: BpfHashMap<&mut MapData, CtKey, CtEntry> = BpfHashMap::try_from(self.map_mut(&schema::CONNTRACK)?)?;
        let dead: Vec<CtKey> = ct
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(k, e)| now.saturating_sub(e.last_ns) > ct::timeout_ns(k.proto, e.state))
            .map(|(k, _)| k)
            .collect();
        let mut n = 0;
        for k in dead {
            // Re-check: a packet may have revived it since the scan.
            if let Ok(e) = ct.get(&k, 0)
                && now.saturating_sub(e.last_ns) > ct::timeout_ns(k.proto, e.state)
                && ct.remove(&k).is_ok()
            {
                n += 1;
            }
        }
        Ok(n)
    }
}
