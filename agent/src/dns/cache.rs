//! The answer cache for forwarded names: TTLs respected (with caps), negative
//! answers cached per RFC 2308, bounded in entries (least recently used
//! first out).
//!
//! Time is CLOCK_MONOTONIC in nanoseconds ([`now_ns`]), the clock of the XDP
//! programs (`bpf_ktime_get_ns`): an entry's `stored_ns` and `expires_ns` go
//! into the XDP answer cache unchanged, so both age TTLs at the same
//! instants (the program reads the precise clock for answers that age). The
//! program stops serving an entry up to 20 ms before its expiry (it judges
//! entries far from it by the coarse clock), never after.

use std::{num::NonZeroUsize, sync::Mutex, time::Duration};

use hickory_proto::{
    op::ResponseCode,
    rr::{LowerName, Name, RData, Record, RecordType},
};

/// What makes two questions the same for the cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub name: LowerName,
    pub qtype: RecordType,
    /// DNSSEC OK: upstream answers differ with it.
    pub dnssec_ok: bool,
}

impl Key {
    pub fn new(name: &Name, qtype: RecordType, dnssec_ok: bool) -> Self {
        Key { name: LowerName::new(name), qtype, dnssec_ok }
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of the cache and of the XDP
/// programs.
pub fn now_ns() -> u64 {
    crate::dataplane::flows::monotonic_ns()
}

const NS_PER_SEC: u64 = 1_000_000_000;

/// An upstream answer as cached.
#[derive(Debug, Clone)]
pub struct Entry {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
    /// When the TTLs were stored (they age from here) and when the entry
    /// expires, CLOCK_MONOTONIC ns.
    pub stored_ns: u64,
    pub expires_ns: u64,
}

impl Entry {
    pub fn new(rcode: ResponseCode, answers: Vec<Record>, authorities: Vec<Record>, additionals: Vec<Record>) -> Self {
        let now = now_ns();
        Entry { rcode, answers, authorities, additionals, stored_ns: now, expires_ns: now }
    }

    /// Whole seconds the entry has been in the cache at `now` (what every
    /// TTL is lowered by when it is served).
    pub fn age_secs(&self, now: u64) -> u32 {
        (now.saturating_sub(self.stored_ns) / NS_PER_SEC).min(u64::from(u32::MAX)) as u32
    }

    /// The entry as served at `now`: every TTL lowered by the time it spent
    /// in the cache, so no answer outlives its source's TTL.
    pub fn aged(&self, now: u64) -> Entry {
        let age = self.age_secs(now);
        let fix = |rs: &[Record]| -> Vec<Record> {
            rs.iter()
                .map(|r| {
                    let mut r = r.clone();
                    r.ttl = r.ttl.saturating_sub(age);
                    r
                })
                .collect()
        };
        Entry {
            rcode: self.rcode,
            answers: fix(&self.answers),
            authorities: fix(&self.authorities),
            additionals: fix(&self.additionals),
            stored_ns: self.stored_ns,
            expires_ns: self.expires_ns,
        }
    }
}

pub struct Cache {
    inner: Mutex<lru::LruCache<Key, Entry>>,
    max_ttl: u32,
    max_negative_ttl: u32,
}

impl Cache {
    pub fn new(capacity: u32, max_ttl: u32, max_negative_ttl: u32) -> Self {
        let cap = NonZeroUsize::new(capacity.max(1) as usize).expect("at least 1");
        Cache { inner: Mutex::new(lru::LruCache::new(cap)), max_ttl, max_negative_ttl }
    }

    /// A live entry for `key` at `now` (ns), as stored: [`Entry::aged`]
    /// gives the TTLs to serve.
    pub fn get(&self, key: &Key, now: u64) -> Option<Entry> {
        let mut c = self.inner.lock().expect("cache lock");
        match c.get(key) {
            Some(e) if e.expires_ns > now => Some(e.clone()),
            Some(_) => {
                c.pop(key);
                None
            }
            None => None,
        }
    }

    /// Stores an upstream answer for as long as its TTLs allow (capped). Returns
    /// the lifetime chosen, or `None` when the answer is not cacheable.
    pub fn put(&self, key: Key, mut entry: Entry, now: u64) -> Option<Duration> {
        let ttl = self.lifetime(&entry)?;
        // Cap every record's TTL so served answers never exceed the cap.
        for r in entry.answers.iter_mut().chain(entry.authorities.iter_mut()).chain(entry.additionals.iter_mut()) {
            r.ttl = r.ttl.min(ttl);
        }
        entry.stored_ns = now;
        entry.expires_ns = now + u64::from(ttl) * NS_PER_SEC;
        self.inner.lock().expect("cache lock").put(key, entry);
        Some(Duration::from_secs(u64::from(ttl)))
    }

    /// RFC 2308 §5: a negative answer lives for min(SOA TTL, SOA MINIMUM);
    /// without an SOA it is not cached. A positive one for its smallest TTL.
    fn lifetime(&self, e: &Entry) -> Option<u32> {
        let negative = e.rcode == ResponseCode::NXDomain || (e.rcode == ResponseCode::NoError && e.answers.is_empty());
        let ttl = if negative {
            let soa = e.authorities.iter().find(|r| r.record_type() == RecordType::SOA)?;
            let min = match &soa.data {
                RData::SOA(s) => s.minimum,
                _ => 0,
            };
            soa.ttl.min(min).min(self.max_negative_ttl)
        } else if e.rcode == ResponseCode::NoError {
            e.answers.iter().chain(e.authorities.iter()).map(|r| r.ttl).min()?.min(self.max_ttl)
        } else {
            return None;
        };
        (ttl > 0).then_some(ttl)
    }

    /// The cap on cached TTLs (seconds).
    pub fn max_ttl(&self) -> u32 {
        self.max_ttl
    }

    pub fn len(&self) -> usize {
        self.inner.lock().expect("cache lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&self) {
        self.inner.lock().expect("cache lock").clear();
    }

    /// The live entries, most recently used first (`coresvc dns cache`).
    pub fn list(&self, now_ns: u64) -> Vec<CachedAnswer> {
        let c = self.inner.lock().expect("cache lock");
        c.iter()
            .filter(|(_, e)| e.expires_ns > now_ns)
            .map(|(k, e)| CachedAnswer {
                name: k.name.to_string(),
                qtype: k.qtype.to_string(),
                dnssec_ok: k.dnssec_ok,
                rcode: e.rcode.to_string(),
                answers: e.answers.len(),
                expires_in_secs: (e.expires_ns - now_ns) / NS_PER_SEC,
            })
            .collect()
    }
}

/// One cached answer, as `coresvc dns cache` shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CachedAnswer {
    pub name: String,
    pub qtype: String,
    pub dnssec_ok: bool,
    pub rcode: String,
    pub answers: usize,
    pub expires_in_secs: u64,
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::rr::rdata::{A, SOA};

    use super::*;

    fn n(s: &str) -> Name {
        Name::from_str(s).unwrap()
    }

    fn a(ttl: u32) -> Record {
        Record::from_rdata(n("www.example.org."), ttl, RData::A(A::new(192, 0, 2, 80)))
    }

    fn soa(ttl: u32, minimum: u32) -> Record {
        Record::from_rdata(
            n("example.org."),
            ttl,
            RData::SOA(SOA::new(n("ns.example.org."), n("h.example.org."), 1, 1, 1, 1, minimum)),
        )
    }

    #[test]
    fn ttls_decrease_and_entries_expire() {
        let c = Cache::new(10, 86400, 3600);
        let k = Key::new(&n("WWW.example.org."), RecordType::A, false);
        let t0 = now_ns();
        assert_eq!(
            c.put(k.clone(), Entry::new(ResponseCode::NoError, vec![a(100)], vec![], vec![]), t0),
            Some(Duration::from_secs(100))
        );
        let t30 = t0 + 30 * NS_PER_SEC + 999_999_999;
        let e = c.get(&Key::new(&n("www.EXAMPLE.org."), RecordType::A, false), t30).unwrap();
        assert_eq!(e.answers[0].ttl, 100, "stored as received");
        assert_eq!(e.age_secs(t30), 30, "whole seconds");
        assert_eq!(e.aged(t30).answers[0].ttl, 70);
        assert_eq!(e.expires_ns, t0 + 100 * NS_PER_SEC);
        assert!(c.get(&k, t0 + 100 * NS_PER_SEC).is_none());
        assert!(c.is_empty(), "expired entries are removed");
    }

    #[test]
    fn ttl_cap_applies_to_served_records() {
        let c = Cache::new(10, 60, 3600);
        let k = Key::new(&n("www.example.org."), RecordType::A, false);
        let t0 = now_ns();
        c.put(k.clone(), Entry::new(ResponseCode::NoError, vec![a(86400)], vec![], vec![]), t0);
        assert_eq!(c.get(&k, t0).unwrap().answers[0].ttl, 60);
    }

    #[test]
    fn negative_answers_use_the_soa_minimum() {
        let c = Cache::new(10, 86400, 3600);
        let k = Key::new(&n("nope.example.org."), RecordType::A, false);
        let got = c.put(k, Entry::new(ResponseCode::NXDomain, vec![], vec![soa(900, 120)], vec![]), now_ns());
        assert_eq!(got, Some(Duration::from_secs(120)));
        let k = Key::new(&n("nope2.example.org."), RecordType::A, false);
        assert_eq!(
            c.put(k, Entry::new(ResponseCode::NXDomain, vec![], vec![], vec![]), now_ns()),
            None,
            "no SOA: not cached"
        );
        let k = Key::new(&n("x.example.org."), RecordType::A, false);
        assert_eq!(c.put(k, Entry::new(ResponseCode::ServFail, vec![], vec![], vec![]), now_ns()), None);
    }

    #[test]
    fn bounded() {
        let c = Cache::new(2, 86400, 3600);
        for i in 0..5 {
            let k = Key::new(&n(&format!("h{i}.example.org.")), RecordType::A, false);
            c.put(k, Entry::new(ResponseCode::NoError, vec![a(100)], vec![], vec![]), now_ns());
        }
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn dnssec_ok_is_part_of_the_key() {
        assert_ne!(Key::new(&n("a."), RecordType::A, true), Key::new(&n("a."), RecordType::A, false));
    }
}
