//! The lease table and address allocation. Pure data: the state machine
//! (`server.rs`) decides, this module remembers and finds addresses.
//!
//! Every address the server has touched has one [`Lease`]: offered (in
//! memory only), bound, released or expired (kept to give the client the
//! same address again), or declined (quarantined). A client is known by its
//! [`ClientKey`] per segment.

use std::{collections::HashMap, net::Ipv4Addr, ops::RangeInclusive};

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

#[derive(Default)]
pub struct Table {
    by_addr: HashMap<Ipv4Addr, Lease>,
    by_client: HashMap<(usize, ClientKey), Ipv4Addr>,
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

    /// Stores `lease`, replacing whatever the address had.
    pub fn put(&mut self, lease: Lease) {
        if let Some(old) = self.by_addr.get(&lease.addr)
            && let Some(c) = &old.client
            && (old.client != lease.client || old.segment != lease.segment)
        {
            let k = (old.segment, c.clone());
            if self.by_client.get(&k) == Some(&lease.addr) {
                self.by_client.remove(&k);
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
        self.by_addr.insert(lease.addr, lease);
    }

    pub fn remove(&mut self, a: Ipv4Addr) -> Option<Lease> {
        let l = self.by_addr.remove(&a)?;
        if let Some(c) = &l.client {
            let k = (l.segment, c.clone());
            if self.by_client.get(&k) == Some(&a) {
                self.by_client.remove(&k);
            }
        }
        Some(l)
    }

    /// Free for a new client now: nobody holds it and it is not quarantined.
    pub fn is_free(&self, a: Ipv4Addr, now: u64) -> bool {
        self.by_addr.get(&a).is_none_or(|l| !l.active(now) && !l.quarantined(now))
    }

    /// An address of `ranges` for a new client: first one never used, then
    /// the one freed longest ago (so a returning client's old address stays
    /// its own as long as possible). `excluded` are static addresses.
    pub fn allocate(&self, ranges: &mut [Range], now: u64, excluded: &dyn Fn(Ipv4Addr) -> bool) -> Option<Ipv4Addr> {
        for r in ranges.iter_mut() {
            while r.cursor <= *r.range.end() {
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
        let mut best: Option<(u64, Ipv4Addr)> = None;
        for r in ranges.iter() {
            for n in r.range.clone() {
                let a = Ipv4Addr::from(n);
                if excluded(a) {
                    continue;
                }
                let freed_at = match self.by_addr.get(&a) {
                    None => 0,
                    Some(l) if !l.active(now) && !l.quarantined(now) => l.expires,
                    Some(_) => continue,
                };
                if best.is_none_or(|(t, _)| freed_at < t) {
                    best = Some((freed_at, a));
                }
            }
        }
        best.map(|(_, a)| a)
    }

    /// Forgets offers whose hold has passed and ends quarantines; returns
    /// the leases that expired now (bound → expired), for DNS removal.
    pub fn expire(&mut self, now: u64) -> Vec<Lease> {
        let mut gone = Vec::new();
        let mut expired = Vec::new();
        for l in self.by_addr.values_mut() {
            if l.expires > now {
                continue;
            }
            match l.state {
                State::Offered | State::Declined => gone.push(l.addr),
                State::Bound => {
                    l.state = State::Released;
                    expired.push(l.clone());
                }
                State::Released => {}
            }
        }
        for a in gone {
            self.remove(a);
        }
        expired
    }
}
