//! The lease table and address allocation. Pure data: the state machine
//! (`server.rs`) decides, this module remembers and finds addresses.
//!
//! Every address the server has touched has one [`Lease`]: offered (in
//! memory only), bound, released or expired (kept to give the client the
//! same address again), or declined (quarantined). A client is known by its
//! [`ClientKey`] per segment.

use std::{
    collections::{BTreeSet, HashMap},
    net::Ipv4Addr,
    ops::RangeInclusive,
};

use super::journal::{LeaseRecord, RecordState};

/// How long an offered address is held for the client that was offered it
/// (RFC 2131 §4.3.1: the server need not reserve it, but it should not offer
/// it to another client meanwhile).
pub const OFFER_HOLD_SECS: u64 = 60;
/// How long a DECLINEd address stays out of use (RFC 2131 §4.3.3 leaves it to
/// the server; Kea's default is a day, an hour lets a fixed conflict resurface sooner).
pub const DECLINE_QUARANTINE_SECS: u64 = 3600;

/// A client's identity: the client identifier (option 61) if it sent one,
/// else the hardware type and address (RFC 2131 §4.2). The first byte tells
/// which: 0 = client identifier, 1 = hardware address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientKey(pub Vec<u8>);

impl ClientKey {
    pub fn from_client_id(id: &[u8]) -> Self {
        let mut v = Vec::with_capacity(id.len() + 1);
        v.push(0);
        v.extend_from_slice(id);
        ClientKey(v)
    }

    pub fn from_hw(htype: u8, chaddr: &[u8]) -> Self {
        let mut v = Vec::with_capacity(chaddr.len() + 2);
        v.extend_from_slice(&[1, htype]);
        v.extend_from_slice(chaddr);
        ClientKey(v)
    }

    /// The client identifier, when the client sent one.
    pub fn client_id(&self) -> Option<&[u8]> {
        (self.0.first() == Some(&0)).then(|| &self.0[1..])
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Offered,
    Bound,
    Released,
    Declined,
}

#[derive(Debug, Clone)]
pub struct Lease {
    pub addr: Ipv4Addr,
    pub segment: usize,
    pub state: State,
    pub expires: u64,
    pub client: Option<ClientKey>,
    pub hw: Vec<u8>,
    pub hostname: Option<String>,
}

impl Lease {
    /// Held by its client right now (an offer or a lease).
    pub fn active(&self, now: u64) -> bool {
        matches!(self.state, State::Offered | State::Bound) && self.expires > now
    }

    /// Out of use: quarantined after a DECLINE.
    pub fn quarantined(&self, now: u64) -> bool {
        self.state == State::Declined && self.expires > now
    }

    pub fn record(&self, segment: &str) -> Option<LeaseRecord> {
        let state = match self.state {
            State::Offered => return None,
            State::Bound => RecordState::Bound,
            State::Released => RecordState::Released,
            State::Declined => RecordState::Declined,
        };
        Some(LeaseRecord {
            addr: self.addr,
            state,
            expires: self.expires,
            client: self.client.as_ref().map(|c| c.0.clone()).unwrap_or_default(),
            hw: self.hw.clone(),
            hostname: self.hostname.clone(),
            segment: segment.to_string(),
        })
    }
}

/// A dynamic range of one segment, with a cursor for never-used addresses.
#[derive(Debug, Clone)]
pub struct Range {
    pub range: RangeInclusive<u32>,
    cursor: u32,
}

impl Range {
    pub fn new(start: Ipv4Addr, end: Ipv4Addr) -> Self {
        let (s, e) = (u32::from(start), u32::from(end));
        Range { range: s..=e, cursor: s }
    }

    pub fn size(&self) -> u64 {
        u64::from(self.range.end() - self.range.start()) + 1
    }

    pub fn contains(&self, a: Ipv4Addr) -> bool {
        self.range.contains(&u32::from(a))
    }
}

/// The leases, indexed so that no operation the receive path makes walks
/// the pool: by address, by client, free addresses by the time they were
/// freed, and held addresses by the time their hold ends.
#[derive(Default)]
pub struct Table {
    by_addr: HashMap<Ipv4Addr, Lease>,
    by_client: HashMap<(usize, ClientKey), Ipv4Addr>,
    /// Per segment, the addresses a new client may get, oldest freed first:
    /// released or expired leases at their `expires`, and addresses
    /// forgotten (an offer's hold or a quarantine ended) at 0, as never
    /// used. Addresses outside the pools (a static host's, a shrunk pool's)
    /// may be here: `allocate` skips and forgets them.
    free: HashMap<usize, BTreeSet<(u64, Ipv4Addr)>>,
    /// Offers, bound leases and quarantines by the time they end.
    ends: BTreeSet<(u64, Ipv4Addr)>,
    /// Addresses `allocate` looked at (its cost, for tests).
    pub examined: u64,
}

impl Table {
    pub fn get(&self, a: Ipv4Addr) -> Option<&Lease> {
        self.by_addr.get(&a)
    }

    /// The address this client holds or last held on `segment`.
    pub fn of_client(&self, segment: usize, c: &ClientKey) -> Option<&Lease> {
        let a = self.by_client.get(&(segment, c.clone()))?;
        self.by_addr.get(a).filter(|l| l.client.as_ref() == Some(c))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.by_addr.values()
    }

    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }

    /// Enters `l` in the free or the ends index (the one its state belongs to).
    fn index(&mut self, l: &Lease) {
        match l.state {
            State::Released => {
                self.free.entry(l.segment).or_default().insert((l.expires, l.addr));
            }
            State::Offered | State::Bound | State::Declined => {
                self.ends.insert((l.expires, l.addr));
            }
        }
    }

    fn unindex(&mut self, l: &Lease) {
        match l.state {
            State::Released => {
                if let Some(f) = self.free.get_mut(&l.segment) {
                    f.remove(&(l.expires, l.addr));
                }
            }
            State::Offered | State::Bound | State::Declined => {
                self.ends.remove(&(l.expires, l.addr));
            }
        }
    }

    /// Stores `lease`, replacing whatever the address had.
    pub fn put(&mut self, lease: Lease) {
        match self.by_addr.get(&lease.addr).cloned() {
            Some(old) => {
                self.unindex(&old);
                if let Some(c) = &old.client
                    && (old.client != lease.client || old.segment != lease.segment)
                {
                    let k = (old.segment, c.clone());
                    if self.by_client.get(&k) == Some(&lease.addr) {
                        self.by_client.remove(&k);
                    }
                }
            }
            None => {
                if let Some(f) = self.free.get_mut(&lease.segment) {
                    f.remove(&(0, lease.addr));
                }
            }
        }
        if let Some(c) = &lease.client {
            // The client's previous address (if another) stays remembered
            // as its lease, but the client now points here; except that an
            // offer leaves it pointing at a bound lease elsewhere, so that
            // the REQUEST which takes the offer finds and frees that one.
            let k = (lease.segment, c.clone());
            let bound_elsewhere =
                lease.state == State::Offered
                    && self.by_client.get(&k).and_then(|a| self.by_addr.get(a)).is_some_and(|l| {
                        l.addr != lease.addr && l.state == State::Bound && l.client.as_ref() == Some(c)
                    });
            if !bound_elsewhere {
                self.by_client.insert(k, lease.addr);
            }
        }
        self.index(&lease);
        self.by_addr.insert(lease.addr, lease);
    }

    /// Forgets the address: free again, as if never used.
    pub fn remove(&mut self, a: Ipv4Addr) -> Option<Lease> {
        let l = self.by_addr.remove(&a)?;
        self.unindex(&l);
        if let Some(c) = &l.client {
            let k = (l.segment, c.clone());
            if self.by_client.get(&k) == Some(&a) {
                self.by_client.remove(&k);
            }
        }
        self.free.entry(l.segment).or_default().insert((0, a));
        Some(l)
    }

    /// Free for a new client now: nobody holds it and it is not quarantined.
    pub fn is_free(&self, a: Ipv4Addr, now: u64) -> bool {
        self.by_addr.get(&a).is_none_or(|l| !l.active(now) && !l.quarantined(now))
    }

    /// An address of `segment`'s `ranges` for a new client: first one never
    /// used (each range's cursor passes every address once), then the one
    /// freed longest ago (so a returning client's old address stays its own
    /// as long as possible). `excluded` are static addresses. Amortised
    /// O(log n): a full pool costs a look at each range's cursor.
    pub fn allocate(
        &mut self,
        segment: usize,
        ranges: &mut [Range],
        now: u64,
        excluded: &dyn Fn(Ipv4Addr) -> bool,
    ) -> Option<Ipv4Addr> {
        for r in ranges.iter_mut() {
            while r.cursor <= *r.range.end() {
                self.examined += 1;
                let a = Ipv4Addr::from(r.cursor);
                if !self.by_addr.contains_key(&a) && !excluded(a) {
                    return Some(a);
                }
                if r.cursor == u32::MAX {
                    break;
                }
                r.cursor += 1;
            }
        }
        let free = self.free.get_mut(&segment)?;
        while let Some(&(t, a)) = free.first() {
            self.examined += 1;
            let usable = ranges.iter().any(|r| r.contains(a)) && !excluded(a);
            // (Only released or forgotten addresses are here: free by construction.)
            if usable && self.by_addr.get(&a).is_none_or(|l| !l.active(now) && !l.quarantined(now)) {
                return Some(a);
            }
            free.remove(&(t, a));
        }
        None
    }

    /// Forgets offers whose hold has passed and ends quarantines; returns
    /// the leases that expired now (bound → expired), for DNS removal.
    pub fn expire(&mut self, now: u64) -> Vec<Lease> {
        let mut expired = Vec::new();
        while let Some(&(t, a)) = self.ends.first() {
            if t > now {
                break;
            }
            let Some(l) = self.by_addr.get(&a).cloned() else {
                self.ends.remove(&(t, a));
                continue;
            };
            match l.state {
                State::Offered | State::Declined => {
                    self.remove(a);
                }
                State::Bound => {
                    let mut gone = l.clone();
                    gone.state = State::Released;
                    self.put(gone);
                    expired.push(l);
                }
                State::Released => {
                    self.ends.remove(&(t, a));
                }
            }
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The allocation rule written the slow way (every address of every
    /// range, as before the indexes): never used first, else freed longest ago.
    fn by_scan(t: &Table, ranges: &[Range], now: u64, excluded: &dyn Fn(Ipv4Addr) -> bool) -> Option<Ipv4Addr> {
        let addrs = || ranges.iter().flat_map(|r| r.range.clone()).map(Ipv4Addr::from).filter(|a| !excluded(*a));
        if let Some(a) = addrs().find(|a| t.get(*a).is_none()) {
            return Some(a);
        }
        addrs()
            .filter_map(|a| match t.get(a) {
                Some(l) if !l.active(now) && !l.quarantined(now) => Some((l.expires, a)),
                _ => None,
            })
            .min()
            .map(|(_, a)| a)
    }

    #[test]
    fn the_indexes_allocate_what_a_scan_of_the_pool_would() {
        let mut seed = 0x853c_49e6_748f_ea9bu64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let a = |n: u64| Ipv4Addr::new(10, 20, 0, n as u8);
        let excluded = |x: Ipv4Addr| x == Ipv4Addr::new(10, 20, 0, 105);
        let mut t = Table::default();
        let mut ranges = vec![Range::new(a(100), a(119)), Range::new(a(140), a(149))];
        let mut now = 1000;
        for step in 0..20_000 {
            now += next(3);
            t.expire(now);
            // Freed addresses are reused only in the order the scan uses
            // once the never-used ones are gone; before that both take the
            // lowest never-used address.
            let want = by_scan(&t, &ranges, now, &excluded);
            let got = t.allocate(0, &mut ranges, now, &excluded);
            let key = |x: Ipv4Addr| t.get(x).map_or(0, |l| l.expires);
            match (got, want) {
                (Some(g), Some(w)) => assert_eq!(key(g), key(w), "step {step}: {g} and {w}"),
                _ => assert_eq!(got, want, "step {step}"),
            }
            let client = Some(ClientKey::from_hw(1, &[2, 0, 0, 0, 0, next(40) as u8]));
            let target = match got {
                Some(x) if next(2) == 0 => x,
                _ => a(95 + next(60)),
            };
            let state = [State::Offered, State::Bound, State::Released, State::Declined][next(4) as usize];
            match next(5) {
                0 => {
                    t.remove(target);
                }
                _ => t.put(Lease {
                    addr: target,
                    segment: 0,
                    state,
                    expires: now + next(50),
                    client: client.filter(|_| state != State::Declined),
                    hw: Vec::new(),
                    hostname: None,
                }),
            }
            // The indexes hold exactly what the table says.
            if step % 500 == 0 {
                let free: BTreeSet<_> = t.free.get(&0).cloned().unwrap_or_default();
                for l in t.iter() {
                    let usable = ranges.iter().any(|r| r.contains(l.addr)) && !excluded(l.addr);
                    let in_free = free.contains(&(l.expires, l.addr));
                    // (allocate forgets addresses it can never give.)
                    assert_eq!(in_free || !usable, l.state == State::Released || !usable, "{l:?}");
                    assert!(!in_free || l.state == State::Released, "{l:?}");
                    assert_eq!(t.ends.contains(&(l.expires, l.addr)), l.state != State::Released, "{l:?}");
                }
                assert!(t.ends.iter().all(|(e, x)| t.get(*x).is_some_and(|l| l.expires == *e)));
            }
        }
    }
}
