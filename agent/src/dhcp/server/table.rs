//! The server's lease table from the outside: built from the configuration
//! and the journal's records, imported into, listed, expired, summarised.

use super::*;

impl Server {
    /// The server for `cfg`, with the leases the journal had (records for
    /// segments or addresses that are no longer served are left out).
    pub fn new(cfg: &Config, records: Vec<LeaseRecord>) -> Server {
        let mut segments: Vec<Segment> = cfg
            .segments
            .iter()
            .map(|s| Segment {
                name: s.name.clone(),
                interface: s.interface.clone(),
                net: s.cidr.trunc(),
                server_id: s.gateway,
                zone: s.zone.as_ref().map(|z| z.trim_end_matches('.').to_ascii_lowercase()),
                mtu: s.mtu,
                ranges: Vec::new(),
                pool_of_range: Vec::new(),
                served: false,
                last_exhausted_log: None,
                last_conflict_log: None,
            })
            .collect();
        for (pi, p) in cfg.dhcp.pools.iter().enumerate() {
            if let Some(s) = segments.iter_mut().find(|s| s.name == p.segment) {
                s.ranges.push(Range::new(p.start, p.end));
                s.pool_of_range.push(pi);
                s.served = true;
            }
        }
        let mut hosts = Vec::new();
        let mut excluded: HashSet<Ipv4Addr> =
            cfg.segments.iter().flat_map(|s| [Some(s.gateway), s.reserved]).flatten().collect();
        for h in &cfg.dhcp.hosts {
            let Some(si) = segments.iter().position(|s| s.net.contains(&h.address)) else { continue };
            segments[si].served = true;
            excluded.insert(h.address);
            hosts.push(StaticHost {
                segment: si,
                mac: h.mac.map(|m| m.0),
                client_id: h.client_id.as_ref().map(|c| c.0.clone()),
                addr: h.address,
                hostname: h.hostname.clone(),
                lease_time: h.lease_time.map(|d| d.secs()),
                pxe: h.pxe.clone(),
            });
        }
        let mut relays = HashMap::new();
        for r in &cfg.dhcp.relays {
            let Some(si) = segments.iter().position(|s| s.name == r.segment) else { continue };
            for &a in &r.addresses {
                relays.insert(a, (si, r.sources().to_vec()));
            }
        }
        let mut server = Server {
            segments,
            hosts,
            relays,
            excluded,
            cfg: cfg.dhcp.clone(),
            dns_enabled: cfg.dns.enabled,
            leases: Table::default(),
            counters: Counters::default(),
        };
        let mut skipped = 0;
        for r in records {
            let Some(si) = server.segments.iter().position(|s| s.name == r.segment && s.net.contains(&r.addr)) else {
                skipped += 1;
                continue;
            };
            let state = match r.state {
                RecordState::Bound => State::Bound,
                RecordState::Released => State::Released,
                RecordState::Declined => State::Declined,
            };
            server.leases.put(Lease {
                addr: r.addr,
                segment: si,
                state,
                expires: r.expires,
                client: (!r.client.is_empty()).then_some(ClientKey(r.client)),
                hw: r.hw,
                hostname: r.hostname,
            });
        }
        if skipped > 0 {
            info!("dhcp: {skipped} journal records are for segments or addresses no longer configured; ignored");
        }
        server
    }

    /// The names of live leases, to register again after a restart.
    pub fn registrations(&self, now: u64) -> Vec<Effect> {
        self.leases
            .iter()
            .filter(|l| l.state == State::Bound && l.expires > now)
            .filter_map(|l| self.effect(l, true))
            .collect()
    }

    pub(super) fn effect(&self, l: &Lease, register: bool) -> Option<Effect> {
        let zone = self.segments[l.segment].zone.clone()?;
        let hostname = l.hostname.clone()?;
        Some(if register {
            Effect::Register { zone, hostname, addr: l.addr }
        } else {
            Effect::Unregister { zone, hostname, addr: l.addr }
        })
    }

    /// Takes leases another server granted (the production Kea's, on the
    /// way back to bootstrap, or `coresvc import kea-leases`): each record
    /// replaces what the table had for its address, so an address that
    /// server gave to a client is never given to another. Returns the
    /// records to journal, the DNS effects, and the addresses coresvc had
    /// leased, in force, to another client (that client is NAKed at its
    /// next renewal and gets another address).
    pub fn import(&mut self, records: Vec<LeaseRecord>, now: u64) -> (Vec<LeaseRecord>, Vec<Effect>, Vec<String>) {
        let (mut kept, mut effects, mut conflicts) = (Vec::new(), Vec::new(), Vec::new());
        for r in records {
            let Some(si) = self.segments.iter().position(|s| s.name == r.segment && s.net.contains(&r.addr)) else {
                continue;
            };
            let client = (!r.client.is_empty()).then(|| ClientKey(r.client.clone()));
            let state = match r.state {
                RecordState::Bound => State::Bound,
                RecordState::Released => State::Released,
                RecordState::Declined => State::Declined,
            };
            if let Some(old) = self.leases.get(r.addr).cloned() {
                if old.state == State::Bound && old.expires > now && old.client != client {
                    conflicts.push(format!(
                        "{}: coresvc had leased it to {} until {}; the imported lease ({}, {}) replaces it",
                        r.addr,
                        hex(&old.hw, ":"),
                        old.expires,
                        if r.hw.is_empty() { "declined".to_string() } else { hex(&r.hw, ":") },
                        if state == State::Bound { format!("until {}", r.expires) } else { "not in force".into() }
                    ));
                }
                if old.state == State::Bound {
                    effects.extend(self.effect(&old, false));
                }
            }
            let lease = Lease {
                addr: r.addr,
                segment: si,
                state,
                expires: r.expires,
                client,
                hw: r.hw.clone(),
                hostname: r.hostname.clone(),
            };
            if state == State::Bound && r.expires > now {
                effects.extend(self.effect(&lease, true));
            }
            self.leases.put(lease);
            kept.push(r);
        }
        (kept, effects, conflicts)
    }

    /// The records that describe the table now (for compaction).
    pub fn snapshot(&self) -> Vec<LeaseRecord> {
        self.leases.iter().filter_map(|l| l.record(&self.segments[l.segment].name)).collect()
    }

    /// Ends leases, offers and quarantines whose time has come; the names
    /// of expired leases go out of DNS.
    pub fn expire(&mut self, now: u64) -> Vec<Effect> {
        let expired = self.leases.expire(now);
        expired.iter().filter_map(|l| self.effect(l, false)).collect()
    }

    pub fn usage(&self, now: u64) -> Vec<SegmentUse> {
        let mut out: Vec<SegmentUse> = self
            .segments
            .iter()
            .filter(|s| s.served)
            .map(|s| SegmentUse {
                segment: s.name.clone(),
                interface: s.interface.clone(),
                pool_size: s.ranges.iter().map(Range::size).sum(),
                bound: 0,
                offered: 0,
                declined: 0,
                static_hosts: 0,
            })
            .collect();
        for l in self.leases.iter() {
            let Some(u) = out.iter_mut().find(|u| u.segment == self.segments[l.segment].name) else { continue };
            match l.state {
                State::Bound if l.expires > now => u.bound += 1,
                State::Offered if l.expires > now => u.offered += 1,
                State::Declined if l.expires > now => u.declined += 1,
                _ => {}
            }
        }
        for h in &self.hosts {
            if let Some(u) = out.iter_mut().find(|u| u.segment == self.segments[h.segment].name) {
                u.static_hosts += 1;
            }
        }
        out
    }

    pub fn list(&self) -> Vec<LeaseInfo> {
        let mut v: Vec<LeaseInfo> = self
            .leases
            .iter()
            .map(|l| LeaseInfo {
                address: l.addr,
                segment: self.segments[l.segment].name.clone(),
                state: l.state,
                mac: hex(&l.hw, ":"),
                client_id: l.client.as_ref().and_then(|c| c.client_id()).map(|c| hex(c, ":")),
                hostname: l.hostname.clone(),
                expires: l.expires,
            })
            .collect();
        v.sort_by_key(|l| u32::from(l.address));
        v
    }
}
