//! Filling the XDP answer cache (`DNS_CACHE`, read by the segments' XDP
//! program) with the agent's own answers, and invalidating them.
//!
//! An entry is the agent's encoded answer minus its header and question,
//! under the key `coresvc_common::dns::parse_query` computes from the query,
//! the same code the program runs. With it go an absolute expiry, the
//! instant the TTLs of forwarded records were stored (the program lowers
//! them by the whole seconds since, as the agent does), and the epochs of
//! the data it came from: the catalog's and those of the zones it touched.
//! A change to the data publishes new epochs in `DNS_EPOCHS` (one map write
//! per zone) before it is acknowledged, which invalidates every affected
//! entry at once; epochs are never reused, also across restarts.

use std::{
    path::Path,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::{Context as _, Result, anyhow};
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData};
use coresvc_common::dns::{self as cdns, QueryBuf};
use coresvc_maps_schema::{
    self as schema, DNS_MAX_AGING, DNS_MAX_ANSWER, DNS_MAX_SECTIONS, DNS_MAX_ZONES, DnsAnswer, DnsKey,
};
use tracing::debug;

/// The key of a query the program could answer from the cache, and the
/// length of its question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XKey {
    pub key: DnsKey,
    pub question_len: usize,
}

/// The cache key of `query` (a DNS message as received over UDP), or
/// `None` when the program would pass such a query to the agent anyway.
pub fn key_of(query: &[u8]) -> Option<XKey> {
    let buf = QueryBuf::from_msg(query)?;
    let mut key = DnsKey::default();
    let q = cdns::parse_query(&buf, query.len(), key.name_words()).ok()?;
    key.qtype = q.qtype;
    key.qclass = q.qclass;
    key.flags = q.flags;
    key.name_len = q.name_len as u8;
    Some(XKey { key, question_len: q.question_len() })
}

/// A data epoch an answer depends on: (`DNS_EPOCHS` slot, value).
pub type Epoch = (u8, u64);

/// The slot of zone `i` of a catalog (slot 0 is the catalog's own).
pub fn zone_slot(i: usize) -> Option<u8> {
    u8::try_from(i + 1).ok()
}

/// The entry for `reply`, the agent's answer to a query whose question is
/// `question_len` bytes long: `aging` are the offsets (in `reply`) of the
/// TTL fields that age from `stored_ns`. With `rd_only` the answer is for
/// queries with RD set only (the program passes the others to the agent).
/// `None` when it does not fit the program's limits (then the program keeps
/// passing the question).
pub fn entry(
    reply: &[u8],
    question_len: usize,
    aging: &[usize],
    stored_ns: u64,
    expires_ns: u64,
    epochs: &[Epoch],
    rd_only: bool,
) -> Option<DnsAnswer> {
    let start = cdns::HDR_LEN + question_len;
    if reply.len() > DNS_MAX_ANSWER || reply.len() <= start {
        return None;
    }
    let sections = &reply[start..];
    if sections.len() > DNS_MAX_SECTIONS
        || aging.len() > DNS_MAX_AGING
        || epochs.is_empty()
        || epochs.len() > DNS_MAX_ZONES
        || epochs[0].0 != 0
    {
        return None;
    }
    let mut a = DnsAnswer {
        expires_ns,
        stored_ns,
        zones: epochs.len() as u8,
        aging: aging.len() as u8,
        // RD comes from the query; in the entry it marks an RD-only answer.
        flags: [(reply[2] & !cdns::FLAG_RD) | if rd_only { cdns::FLAG_RD } else { 0 }, reply[3] & !cdns::FLAG_CD],
        sections_len: sections.len() as u16,
        sections_sum: cdns::sections_sum(sections),
        ..bytemuck::Zeroable::zeroed()
    };
    a.counts.copy_from_slice(&reply[6..12]);
    for (i, (slot, epoch)) in epochs.iter().enumerate() {
        a.slots[i] = *slot;
        a.epochs[i] = *epoch;
    }
    for (i, at) in aging.iter().enumerate() {
        let rel = at.checked_sub(start)?;
        if rel + 4 > sections.len() {
            return None;
        }
        a.ttl_at[i] = rel as u16;
    }
    a.sections[..sections.len()].copy_from_slice(sections);
    Some(a)
}

/// The agent's handles on the cache maps.
pub struct XdpCache {
    /// `DNS_RRL_CFG`: the program's rate limit.
    rrl: Mutex<Option<Array<MapData, schema::DnsRrlConfig>>>,
    /// Keyed by the question's hash ([`DnsKey::hash`]).
    answers: Mutex<BpfHashMap<MapData, u64, DnsAnswer>>,
    epochs: Mutex<Array<MapData, u64>>,
    /// `dataplane.dns_cache`: fill only while the program answers.
    enabled: AtomicBool,
}

impl XdpCache {
    /// The maps pinned under `pin_dir` by the dataplane.
    pub fn open(pin_dir: &Path, enabled: bool) -> Result<Self> {
        let pin = |spec: &schema::MapSpec| {
            let path = pin_dir.join(spec.pin);
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))
        };
        Self::from_maps(Map::LruHashMap(pin(&schema::DNS_CACHE)?), Map::Array(pin(&schema::DNS_EPOCHS)?), enabled)?
            .with_rate_limit_map(Map::Array(pin(&schema::DNS_RRL_CFG)?))
    }

    /// Writes the program's rate limit to `rrl` (`DNS_RRL_CFG`) from now on.
    pub fn with_rate_limit_map(self, rrl: Map) -> Result<Self> {
        let a = Array::try_from(rrl).map_err(|e| anyhow!("{}: {e}", schema::DNS_RRL_CFG.name))?;
        *self.rrl.lock().expect("rrl lock") = Some(a);
        Ok(self)
    }

    /// Sets the program's rate limit (`[dns.rate_limit]`).
    pub fn set_rate_limit(&self, c: &crate::config::RateLimit) {
        if let Some(a) = self.rrl.lock().expect("rrl lock").as_mut()
            && let Err(e) = a.set(0, super::rrl::xdp_config(c), 0)
        {
            tracing::warn!("dns: writing {}: {e}", schema::DNS_RRL_CFG.name);
        }
    }

    /// Handles on maps of a loaded object (tests and benchmarks).
    pub fn from_maps(answers: Map, epochs: Map, enabled: bool) -> Result<Self> {
        Ok(XdpCache {
            rrl: Mutex::new(None),
            answers: Mutex::new(BpfHashMap::try_from(answers).map_err(|e| anyhow!("{}: {e}", schema::DNS_CACHE.name))?),
            epochs: Mutex::new(Array::try_from(epochs).map_err(|e| anyhow!("{}: {e}", schema::DNS_EPOCHS.name))?),
            enabled: AtomicBool::new(enabled),
        })
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// The highest epoch in the map: new epochs start above it (a
    /// restarted agent never reuses one that old entries carry).
    pub fn max_epoch(&self) -> u64 {
        let m = self.epochs.lock().expect("epochs lock");
        m.iter().filter_map(|v| v.ok()).max().unwrap_or(0)
    }

    /// Publishes epochs (slot, value), in order.
    pub fn write_epochs(&self, writes: &[Epoch]) -> Result<()> {
        let mut m = self.epochs.lock().expect("epochs lock");
        for (slot, v) in writes {
            m.set(u32::from(*slot), *v, 0)
                .with_context(|| format!("writing {} slot {slot}", schema::DNS_EPOCHS.name))?;
        }
        Ok(())
    }

    /// Stores an answer to question `key` (replacing the one for the same
    /// key, or for another question with the same hash).
    pub fn insert(&self, key: &DnsKey, a: &DnsAnswer) {
        let a = DnsAnswer { question: *key, ..*a };
        if let Err(e) = self.answers.lock().expect("answers lock").insert(key.hash(), a, 0) {
            debug!("dns: xdp cache insert: {e}");
        }
    }

    /// Stores `a` as it is under `hash` (tests: an entry of another
    /// question that has the same hash).
    #[doc(hidden)]
    pub fn insert_under(&self, hash: u64, a: &DnsAnswer) -> Result<()> {
        Ok(self.answers.lock().expect("answers lock").insert(hash, a, 0)?)
    }

    /// Entries in the map (valid or not: stale ones wait for LRU reuse).
    pub fn entries(&self) -> usize {
        self.answers.lock().expect("answers lock").keys().filter(|k| k.is_ok()).count()
    }

    /// The entry for question `key`, if any (tests).
    pub fn get(&self, key: &DnsKey) -> Option<DnsAnswer> {
        self.answers.lock().expect("answers lock").get(&key.hash(), 0).ok().filter(|a| a.question == *key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &[u8], edns: bool) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x20, 0, 1, 0, 0, 0, 0, 0, u8::from(edns)];
        q.extend_from_slice(name);
        q.extend_from_slice(&[0, 1, 0, 1]);
        if edns {
            q.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0x80, 0, 0, 0]);
        }
        q
    }

    #[test]
    fn keys_ignore_case_and_follow_edns() {
        let a = key_of(&query(b"\x03WwW\x07example\x03org\x00", false)).unwrap();
        let b = key_of(&query(b"\x03www\x07EXAMPLE\x03org\x00", false)).unwrap();
        let c = key_of(&query(b"\x03www\x07example\x03org\x00", true)).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.question_len, 17 + 4);
        assert_ne!(a.key, c.key);
        assert_eq!(c.key.flags, cdns::KEY_F_EDNS | cdns::KEY_F_DO);
        assert!(key_of(&query(b"\xc0\x0c", false)).is_none(), "a pointer in the question");
    }

    #[test]
    fn entries_hold_the_sections_and_relative_ttl_offsets() {
        let q = query(b"\x01a\x00", false);
        let mut reply = q.clone();
        reply[2] = 0x85;
        reply[3] = 0x90;
        reply[6..8].copy_from_slice(&[0, 1]);
        reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, 1]);
        let k = key_of(&q).unwrap();
        let e = entry(&reply, k.question_len, &[12 + 7 + 6], 5, 10, &[(0, 7), (3, 9)], false).unwrap();
        assert_eq!(e.flags, [0x84, 0x80], "RD and CD come from each query");
        assert_eq!(e.counts, [0, 1, 0, 0, 0, 0]);
        assert_eq!(usize::from(e.sections_len), 16);
        assert_eq!(e.ttl_at[0], 6);
        assert_eq!((e.zones, e.slots[1], e.epochs[1]), (2, 3, 9));
        let rd = entry(&reply, k.question_len, &[12 + 7 + 6], 5, 10, &[(0, 7)], true).unwrap();
        assert_eq!(rd.flags, [0x85, 0x80], "RD marks an answer for RD=1 queries only");
        assert!(entry(&reply, k.question_len, &[], 5, 10, &[(1, 7)], false).is_none(), "slot 0 first");
        let big = [reply.clone(), vec![0; 500]].concat();
        assert!(entry(&big, k.question_len, &[], 5, 10, &[(0, 7)], false).is_none(), "over 512 bytes");
    }
}
