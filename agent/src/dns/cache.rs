//! The answer cache for forwarded names: TTLs respected (with caps), negative
//! answers cached per RFC 2308, bounded in entries and in bytes (least
//! recently used first out). An entry's bytes are its records' wire size
//! plus what each record, the entry and the key take in memory: an
//! upstream's large answers cannot grow the cache past its byte bound.
//!
//! Time is CLOCK_MONOTONIC in nanoseconds ([`now_ns`]), the clock of the XDP
//! programs (`bpf_ktime_get_ns`): an entry's `stored_ns` and `expires_ns` go
//! into the XDP answer cache unchanged, so both age TTLs at the same
//! instants (the program reads the precise clock for answers that age). The
//! program stops serving an entry up to 20 ms before its expiry (it judges
//! entries far from it by the coarse clock), never after.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hickory_proto::{
    op::ResponseCode,
    rr::{LowerName, Name, RData, Record, RecordType},
    serialize::binary::BinEncodable as _,
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

/// The bytes an entry is counted for (see the module doc).
pub fn entry_bytes(key: &Key, e: &Entry) -> usize {
    let records = e.answers.iter().chain(&e.authorities).chain(&e.additionals);
    let wire: usize = records.map(|r| r.to_bytes().map_or(512, |b| b.len()) + size_of::<Record>()).sum();
    // The LRU's node and map slot: about two pointers and the hash besides.
    wire + key.name.len() + size_of::<Key>() + size_of::<Entry>() + 4 * size_of::<usize>()
}

/// The entries with their sizes, and the sum.
struct Inner {
    lru: lru::LruCache<Key, (Entry, usize)>,
    bytes: usize,
}

impl Inner {
    fn pop(&mut self, key: &Key) {
        if let Some((_, n)) = self.lru.pop(key) {
            self.bytes -= n;
        }
    }
}

pub struct Cache {
    inner: Mutex<Inner>,
    max_entries: usize,
    max_bytes: usize,
    max_ttl: u32,
    max_negative_ttl: u32,
    /// Entries evicted to stay within the bounds.
    evicted: AtomicU64,
}

impl Cache {
    /// A cache of at most `max_entries` entries and `max_bytes` bytes.
    pub fn new(max_entries: u32, max_bytes: u64, max_ttl: u32, max_negative_ttl: u32) -> Self {
        Cache {
            inner: Mutex::new(Inner { lru: lru::LruCache::unbounded(), bytes: 0 }),
            max_entries: (max_entries as usize).max(1),
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            max_ttl,
            max_negative_ttl,
            evicted: AtomicU64::new(0),
        }
    }

    /// A live entry for `key` at `now` (ns), as stored: [`Entry::aged`]
    /// gives the TTLs to serve.
    pub fn get(&self, key: &Key, now: u64) -> Option<Entry> {
        let mut c = self.inner.lock().expect("cache lock");
        match c.lru.get(key) {
            Some((e, _)) if e.expires_ns > now => Some(e.clone()),
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
        let n = entry_bytes(&key, &entry);
        if n > self.max_bytes {
            // Bigger than the whole cache: not kept.
            return None;
        }
        let mut c = self.inner.lock().expect("cache lock");
        c.pop(&key);
        c.lru.put(key, (entry, n));
        c.bytes += n;
        while c.bytes > self.max_bytes || c.lru.len() > self.max_entries {
            let Some((_, (_, m))) = c.lru.pop_lru() else { break };
            c.bytes -= m;
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
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
        self.inner.lock().expect("cache lock").lru.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes the entries are counted for.
    pub fn bytes(&self) -> usize {
        self.inner.lock().expect("cache lock").bytes
    }

    /// Entries evicted (least recently used) to stay within the bounds.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    pub fn clear(&self) {
        let mut c = self.inner.lock().expect("cache lock");
        c.lru.clear();
        c.bytes = 0;
    }

    /// The live entries, most recently used first (`coresvc dns cache`).
    pub fn list(&self, now_ns: u64) -> Vec<CachedAnswer> {
        let c = self.inner.lock().expect("cache lock");
        c.lru
            .iter()
            .map(|(k, (e, _))| (k, e))
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
        let c = Cache::new(10, 1 << 20, 86400, 3600);
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
        let c = Cache::new(10, 1 << 20, 60, 3600);
        let k = Key::new(&n("www.example.org."), RecordType::A, false);
        let t0 = now_ns();
        c.put(k.clone(), Entry::new(ResponseCode::NoError, vec![a(86400)], vec![], vec![]), t0);
        assert_eq!(c.get(&k, t0).unwrap().answers[0].ttl, 60);
    }

    #[test]
    fn negative_answers_use_the_soa_minimum() {
        let c = Cache::new(10, 1 << 20, 86400, 3600);
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
        let c = Cache::new(2, 1 << 20, 86400, 3600);
        for i in 0..5 {
            let k = Key::new(&n(&format!("h{i}.example.org.")), RecordType::A, false);
            c.put(k, Entry::new(ResponseCode::NoError, vec![a(100)], vec![], vec![]), now_ns());
        }
        assert_eq!(c.len(), 2);
        assert_eq!(c.evicted(), 3);
    }

    /// Answers of 1, 10 and 40 TXT records of 200 bytes: the byte bound holds
    /// whatever their mix, the least recently used go first, and an answer
    /// bigger than the whole cache is not kept.
    #[test]
    fn bounded_in_bytes_least_recently_used_first() {
        use hickory_proto::rr::rdata::TXT;
        let txt = |name: &Name, count: usize| -> Vec<Record> {
            (0..count)
                .map(|i| {
                    Record::from_rdata(
                        name.clone(),
                        300,
                        RData::TXT(TXT::new(vec![format!("{i:03}{}", "x".repeat(197))])),
                    )
                })
                .collect()
        };
        let max = 64 * 1024;
        let c = Cache::new(100_000, max as u64, 86400, 3600);
        let key = |i: usize| Key::new(&n(&format!("t{i}.example.org.")), RecordType::TXT, false);
        let t0 = now_ns();
        let small =
            entry_bytes(&key(0), &Entry::new(ResponseCode::NoError, txt(&n("t0.example.org."), 1), vec![], vec![]));
        assert!(small > 200 + size_of::<Record>(), "{small}");
        for i in 0..200 {
            let name = n(&format!("t{i}.example.org."));
            let e = Entry::new(ResponseCode::NoError, txt(&name, [1, 10, 40][i % 3]), vec![], vec![]);
            c.put(key(i), e, t0);
            assert!(c.bytes() <= max, "{} bytes after {i} answers", c.bytes());
            // t0 is asked for all along: it stays.
            assert!(c.get(&key(0), t0).is_some(), "the most recently used entry stays ({i})");
        }
        assert!(c.evicted() > 100, "{} evicted", c.evicted());
        assert!(c.get(&key(1), t0).is_none(), "an early, unused entry went first");
        assert!(c.get(&key(199), t0).is_some(), "the newest is there");
        let counted: usize = (0..200).filter_map(|i| c.get(&key(i), t0).map(|e| entry_bytes(&key(i), &e))).sum();
        assert_eq!(counted, c.bytes(), "the sum is the entries' sizes");
        let huge = Entry::new(ResponseCode::NoError, txt(&n("huge.example.org."), 400), vec![], vec![]);
        assert_eq!(c.put(key(1000), huge, t0), None, "bigger than the cache");
        assert!(c.bytes() <= max);
        c.clear();
        assert_eq!((c.len(), c.bytes()), (0, 0));
    }

    #[test]
    fn dnssec_ok_is_part_of_the_key() {
        assert_ne!(Key::new(&n("a."), RecordType::A, true), Key::new(&n("a."), RecordType::A, false));
    }
}
