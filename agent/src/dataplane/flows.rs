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
            if let Ok(e) = ct.get(&k, 0) {
                if now.saturating_sub(e.last_ns) > ct::timeout_ns(k.proto, e.state) && ct.remove(&k).is_ok() {
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}
