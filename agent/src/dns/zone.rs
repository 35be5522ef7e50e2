//! Authoritative zone data and the lookup algorithm (RFC 1034 §4.3.2, with
//! wildcards per RFC 4592 and negative answers per RFC 2308).
//!
//! A [`Catalog`] is an immutable snapshot of every local zone; changes
//! (service moves, zone reloads, DHCP registrations) build a new snapshot and
//! swap it in, so a query always sees one consistent version.
//!
//! Behaviour follows what Knot DNS returns for the same data: positive answers
//! carry no authority section; MX, SRV and NS answers get the A/AAAA records of
//! their in-zone targets as additional data; ANY returns one RRset (RFC 8482);
//! referrals clear AA and carry glue. One deliberate extension: a CNAME chain
//! is followed across all local zones (the seed's site → management aliases)
//! and, when it leaves them, by the caller through the forwarder.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use hickory_proto::{
    op::ResponseCode,
    rr::{LowerName, Name, RData, Record, RecordType},
};

/// What a zone is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ZoneKind {
    Management,
    Site,
    /// Generated `in-addr.arpa` zone of a segment.
    Reverse,
}

/// The RRsets at one owner name, ordered by type number (ANY returns the first).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Node {
    pub rrsets: BTreeMap<u16, Vec<Record>>,
}

impl Node {
    pub fn get(&self, t: RecordType) -> Option<&Vec<Record>> {
        self.rrsets.get(&u16::from(t))
    }
    fn is_empty(&self) -> bool {
        self.rrsets.values().all(Vec::is_empty)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    /// The apex, lower case, fully qualified.
    pub origin: Name,
    pub kind: ZoneKind,
    pub nodes: HashMap<LowerName, Node>,
    /// Names without data that have descendants (empty non-terminals).
    ents: HashSet<LowerName>,
    /// Delegation points below the apex (owners of NS records).
    cuts: HashSet<LowerName>,
    has_wildcards: bool,
}

/// Why a record could not be added to a zone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZoneError {
    #[error("{name} is outside zone {zone}")]
    OutOfZone { name: String, zone: String },
    #[error("{name} has a CNAME and other data; a name with a CNAME can have nothing else (RFC 1034 §3.6.2)")]
    CnameAndOther { name: String },
    #[error("zone {zone} has no SOA record")]
    NoSoa { zone: String },
    #[error("zone {zone} has more than one SOA record")]
    TwoSoa { zone: String },
}

impl Zone {
    pub fn new(origin: &Name, kind: ZoneKind) -> Self {
        let mut origin = origin.to_lowercase();
        origin.set_fqdn(true);
        Zone { origin, kind, nodes: HashMap::new(), ents: HashSet::new(), cuts: HashSet::new(), has_wildcards: false }
    }

    pub fn apex(&self) -> LowerName {
        LowerName::new(&self.origin)
    }

    /// Adds a record (duplicates of the same data are merged). Call
    /// [`Zone::finish`] after the last one.
    pub fn insert(&mut self, mut record: Record) -> Result<(), ZoneError> {
        record.name = record.name.to_lowercase();
        record.name.set_fqdn(true);
        if !self.origin.zone_of(&record.name) {
            return Err(ZoneError::OutOfZone { name: record.name.to_string(), zone: self.origin.to_string() });
        }
        let key = LowerName::new(&record.name);
        let node = self.nodes.entry(key).or_default();
        let t = u16::from(record.record_type());
        let is_cname = record.record_type() == RecordType::CNAME;
        let has_other = node.rrsets.iter().any(|(k, v)| *k != u16::from(RecordType::CNAME) && !v.is_empty());
        let has_cname = node.get(RecordType::CNAME).is_some_and(|v| !v.is_empty());
        if (is_cname && has_other) || (!is_cname && has_cname) {
            return Err(ZoneError::CnameAndOther { name: record.name.to_string() });
        }
        let set = node.rrsets.entry(t).or_default();
        if is_cname {
            // One CNAME per name: the last one wins (a service move).
            set.clear();
        }
        if !set.iter().any(|r| r.data == record.data) {
            // All records of an RRset share one TTL (RFC 2181 §5.2): the first.
            if let Some(first) = set.first() {
                record.ttl = first.ttl;
            }
            set.push(record);
        }
        Ok(())
    }

    /// Removes the records of `rtype` at `name` whose data equals `data`
    /// (all of them with `None`).
    pub fn remove(&mut self, name: &Name, rtype: RecordType, data: Option<&RData>) {
        let key = LowerName::new(name);
        if let Some(node) = self.nodes.get_mut(&key) {
            if let Some(set) = node.rrsets.get_mut(&u16::from(rtype)) {
                set.retain(|r| data.is_some_and(|d| &r.data != d));
            }
            node.rrsets.retain(|_, v| !v.is_empty());
            if node.is_empty() {
                self.nodes.remove(&key);
            }
        }
    }

    /// Computes empty non-terminals and delegation points; checks the SOA.
    pub fn finish(&mut self) -> Result<(), ZoneError> {
        let apex = self.apex();
        match self.nodes.get(&apex).and_then(|n| n.get(RecordType::SOA)).map(Vec::len) {
            Some(1) => {}
            Some(0) | None => return Err(ZoneError::NoSoa { zone: self.origin.to_string() }),
            Some(_) => return Err(ZoneError::TwoSoa { zone: self.origin.to_string() }),
        }
        self.ents.clear();
        self.cuts.clear();
        self.has_wildcards = false;
        let apex_labels = self.origin.num_labels();
        for (key, node) in &self.nodes {
            let name: Name = key.into();
            if name.is_wildcard() {
                self.has_wildcards = true;
            }
            if *key != apex && node.get(RecordType::NS).is_some_and(|v| !v.is_empty()) {
                self.cuts.insert(key.clone());
            }
            let mut n = name.base_name();
            while n.num_labels() > apex_labels {
                let k = LowerName::new(&n);
                if !self.nodes.contains_key(&k) {
                    self.ents.insert(k);
                }
                n = n.base_name();
            }
        }
        Ok(())
    }

    pub fn soa(&self) -> &Record {
        &self.nodes[&self.apex()].get(RecordType::SOA).expect("finish() checked the SOA")[0]
    }

    /// The same data as `other`, the SOA serial aside.
    pub fn same_data(&self, other: &Zone) -> bool {
        if self.serial() == other.serial() {
            return self == other;
        }
        let mut o = other.clone();
        o.set_serial(self.serial());
        *self == o
    }

    /// The SOA for a negative answer: its TTL is the smaller of the SOA's TTL
    /// and its MINIMUM field (RFC 2308 §3).
    pub fn negative_soa(&self) -> Record {
        let mut soa = self.soa().clone();
        if let RData::SOA(s) = &soa.data {
            soa.ttl = soa.ttl.min(s.minimum);
        }
        soa
    }

    pub fn serial(&self) -> u32 {
        match &self.soa().data {
            RData::SOA(s) => s.serial,
            _ => 0,
        }
    }

    /// Sets the SOA serial (after a change).
    pub fn set_serial(&mut self, serial: u32) {
        let apex = self.apex();
        if let Some(set) = self.nodes.get_mut(&apex).and_then(|n| n.rrsets.get_mut(&u16::from(RecordType::SOA)))
            && let Some(RData::SOA(s)) = set.first_mut().map(|r| &mut r.data)
        {
            s.serial = serial;
        }
    }

    /// The delegation point at or above `name` (below the apex), if any. A DS
    /// query at the cut itself is answered from the parent side (RFC 4035 §3.1.4.1).
    fn cut_for(&self, name: &Name, qtype: RecordType) -> Option<LowerName> {
        if self.cuts.is_empty() {
            return None;
        }
        let apex_labels = self.origin.num_labels();
        let mut n = name.clone();
        let mut first = true;
        while n.num_labels() > apex_labels {
            let k = LowerName::new(&n);
            if self.cuts.contains(&k) && !(first && qtype == RecordType::DS) {
                // The highest cut wins: keep walking up.
                let mut best = k;
                let mut up = n.base_name();
                while up.num_labels() > apex_labels {
                    let uk = LowerName::new(&up);
                    if self.cuts.contains(&uk) {
                        best = uk;
                    }
                    up = up.base_name();
                }
                return Some(best);
            }
            first = false;
            n = n.base_name();
        }
        None
    }

    /// The wildcard node that covers `name`: `*.<closest encloser>` (RFC 4592 §3.3.1).
    fn wildcard_for(&self, name: &Name) -> Option<&Node> {
        if !self.has_wildcards {
            return None;
        }
        let apex_labels = self.origin.num_labels();
        let mut n = name.base_name();
        loop {
            let k = LowerName::new(&n);
            if self.nodes.contains_key(&k) || self.ents.contains(&k) || n.num_labels() == apex_labels {
                // n is the closest encloser.
                let wild = n.prepend_label("*").ok()?;
                return self.nodes.get(&LowerName::new(&wild));
            }
            if n.num_labels() <= apex_labels {
                return None;
            }
            n = n.base_name();
        }
    }

    /// The zone in RFC 1035 master-file format: SOA first, then the apex's
    /// other records, then every name in canonical order.
    pub fn to_zone_file(&self) -> String {
        let mut out = format!("$ORIGIN {}\n", self.origin);
        let apex = self.apex();
        let mut names: Vec<&LowerName> = self.nodes.keys().filter(|k| **k != apex).collect();
        names.sort();
        let node_lines = |node: &Node, out: &mut String, soa_first: bool| {
            let mut sets: Vec<&Vec<Record>> = node.rrsets.values().collect();
            if soa_first {
                sets.sort_by_key(|s| s.first().map(|r| r.record_type() != RecordType::SOA));
            }
            for set in sets {
                for r in set {
                    out.push_str(&presentation(r));
                    out.push('\n');
                }
            }
        };
        if let Some(n) = self.nodes.get(&apex) {
            node_lines(n, &mut out, true);
        }
        for k in names {
            node_lines(&self.nodes[k], &mut out, false);
        }
        out
    }

    /// A/AAAA records at `target` in this zone (for additional processing).
    fn addresses_of(&self, target: &Name) -> Vec<Record> {
        let Some(node) = self.nodes.get(&LowerName::new(target)) else { return Vec::new() };
        let mut v = Vec::new();
        for t in [RecordType::A, RecordType::AAAA] {
            if let Some(set) = node.get(t) {
                v.extend(set.iter().cloned());
            }
        }
        v
    }
}

/// One record in zone-file syntax. TXT strings are quoted and escaped
/// (RFC 1035 §5.1); the rest use hickory's presentation format.
pub fn presentation(r: &Record) -> String {
    match &r.data {
        RData::TXT(txt) => {
            let strings: Vec<String> = txt.txt_data.iter().map(|s| quote(s)).collect();
            format!("{} {} {} TXT {}", r.name, r.ttl, r.dns_class, strings.join(" "))
        }
        _ => r.to_string(),
    }
}

fn quote(bytes: &[u8]) -> String {
    let mut s = String::from("\"");
    for &b in bytes {
        match b {
            b'"' | b'\\' => {
                s.push('\\');
                s.push(b as char);
            }
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\{b:03}")),
        }
    }
    s.push('"');
    s
}

/// The result of a local lookup.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub rcode: ResponseCode,
    /// Authoritative data (false for referrals).
    pub authoritative: bool,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
    /// The chain left the local zones at this name: the caller resolves it
    /// (through the forwarder) and appends the result.
    pub external: Option<Name>,
}

/// Every local zone.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Longest apex first, so the first match is the closest zone.
    zones: Vec<Arc<Zone>>,
    /// Versions of the data for the XDP answer cache (assigned by
    /// `dns::Dns` before a catalog is published; never reused): `epoch` for
    /// the zone list as a whole (a rebuild gets a new one), `zone_epochs[i]`
    /// for zone `i` (any change to it gets a new one). An answer cached from
    /// this catalog is valid while the epochs it depended on are in force.
    pub epoch: u64,
    pub zone_epochs: Vec<u64>,
}

/// CNAME chains longer than this are cut (and loops with them).
const MAX_CHAIN: usize = 12;

impl Catalog {
    pub fn new(mut zones: Vec<Zone>) -> Self {
        zones.sort_by(|a, b| b.origin.num_labels().cmp(&a.origin.num_labels()).then_with(|| a.origin.cmp(&b.origin)));
        let zone_epochs = vec![0; zones.len()];
        Catalog { zones: zones.into_iter().map(Arc::new).collect(), epoch: 0, zone_epochs }
    }

    /// The index (in [`Catalog::zones`] order) of the closest local zone
    /// containing `name`.
    pub fn zone_index(&self, name: &Name) -> Option<usize> {
        self.zones.iter().position(|z| z.origin.zone_of(name))
    }

    /// After a rebuild: when `old` has the same zones (apexes, in order),
    /// every zone whose data did not change is `old`'s, serial included
    /// (nothing changed for secondaries or caches), a zone that changed gets
    /// a serial above `old`'s (RFC 1982), and the epochs carry on. Returns
    /// the indices of the zones that changed; `None` when the zone lists
    /// differ.
    pub fn carry_over(&mut self, old: &Catalog) -> Option<Vec<usize>> {
        if !old.zones.iter().map(|z| &z.origin).eq(self.zones.iter().map(|z| &z.origin)) {
            return None;
        }
        let mut changed = Vec::new();
        for (i, (o, n)) in old.zones.iter().zip(self.zones.iter_mut()).enumerate() {
            if o.same_data(n) {
                *n = o.clone();
            } else {
                changed.push(i);
                if (n.serial().wrapping_sub(o.serial()) as i32) <= 0 {
                    Arc::make_mut(n).set_serial(o.serial().wrapping_add(1));
                }
            }
        }
        self.epoch = old.epoch;
        self.zone_epochs.clone_from(&old.zone_epochs);
        Some(changed)
    }

    /// The zones as shared snapshots (a transfer holds one).
    pub fn zone_arcs(&self) -> &[Arc<Zone>] {
        &self.zones
    }

    pub fn zone_arcs_mut(&mut self) -> &mut [Arc<Zone>] {
        &mut self.zones
    }

    pub fn zones(&self) -> impl Iterator<Item = &Zone> {
        self.zones.iter().map(|z| z.as_ref())
    }

    /// The closest local zone containing `name`.
    pub fn zone_for(&self, name: &Name) -> Option<&Zone> {
        self.zones.iter().map(|z| z.as_ref()).find(|z| z.origin.zone_of(name))
    }

    pub fn zone_mut(&mut self, origin: &Name) -> Option<&mut Zone> {
        let lo = origin.to_lowercase();
        self.zones.iter_mut().find(|z| z.origin == lo).map(Arc::make_mut)
    }

    /// True when `name` has data or descendants in a local zone.
    pub fn exists(&self, name: &Name) -> bool {
        self.zone_for(name).is_some_and(|z| {
            let k = LowerName::new(name);
            z.nodes.contains_key(&k) || z.ents.contains(&k)
        })
    }

    /// Answers `qname`/`qtype` from local data, or `None` when no local zone
    /// contains `qname`.
    pub fn lookup(&self, qname: &Name, qtype: RecordType) -> Option<Answer> {
        let first = self.zone_for(qname)?;
        let mut ans = Answer {
            rcode: ResponseCode::NoError,
            authoritative: true,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
            external: None,
        };
        let mut name = qname.clone();
        let mut zone = first;
        for _ in 0..MAX_CHAIN {
            if let Some(cut) = zone.cut_for(&name, qtype) {
                if ans.answers.is_empty() {
                    // A referral (RFC 1034 §4.3.2 step 3b).
                    ans.authoritative = false;
                    let ns = zone.nodes[&cut].get(RecordType::NS).cloned().unwrap_or_default();
                    let cut_name: Name = (&cut).into();
                    for r in &ns {
                        if let RData::NS(t) = &r.data
                            && cut_name.zone_of(&t.0)
                        {
                            ans.additionals.extend(zone.addresses_of(&t.0));
                        }
                    }
                    ans.authorities = ns;
                }
                return Some(ans);
            }
            let node = zone.nodes.get(&LowerName::new(&name));
            let (node, synthesized) = match node {
                Some(n) => (Some(n), false),
                None if zone.ents.contains(&LowerName::new(&name)) => (None, false),
                None => match zone.wildcard_for(&name) {
                    Some(w) => (Some(w), true),
                    None => {
                        ans.rcode = ResponseCode::NXDomain;
                        ans.authorities.push(zone.negative_soa());
                        return Some(ans);
                    }
                },
            };
            let Some(node) = node else {
                // Empty non-terminal: NODATA.
                ans.authorities.push(zone.negative_soa());
                return Some(ans);
            };
            let owned = |rs: &Vec<Record>| -> Vec<Record> {
                rs.iter()
                    .map(|r| {
                        let mut r = r.clone();
                        if synthesized {
                            r.name = name.clone();
                        }
                        r
                    })
                    .collect()
            };
            if qtype == RecordType::ANY {
                // RFC 8482: one RRset is enough; the lowest type, as Knot does.
                if let Some(set) = node.rrsets.values().find(|v| !v.is_empty()) {
                    let set = owned(set);
                    self.additional_for(zone, &set, &mut ans);
                    ans.answers.extend(set);
                }
                return Some(ans);
            }
            if let Some(set) = node.get(qtype).filter(|s| !s.is_empty()) {
                let set = owned(set);
                self.additional_for(zone, &set, &mut ans);
                ans.answers.extend(set);
                return Some(ans);
            }
            if let Some(cname) = node.get(RecordType::CNAME).and_then(|s| s.first()) {
                let RData::CNAME(target) = &cname.data else { unreachable!("CNAME rrset holds CNAME data") };
                let target = target.0.clone();
                ans.answers.extend(owned(&vec![cname.clone()]));
                if ans.answers.iter().filter(|r| r.name == target).count() > 0 || ans.answers.len() >= MAX_CHAIN {
                    // A loop: answer with the chain so far.
                    return Some(ans);
                }
                name = target;
                match self.zone_for(&name) {
                    Some(z) => zone = z,
                    None => {
                        ans.external = Some(name);
                        return Some(ans);
                    }
                }
                continue;
            }
            // The name exists without this type: NODATA (RFC 2308 §2.2).
            ans.authorities.push(zone.negative_soa());
            return Some(ans);
        }
        Some(ans)
    }

    /// Additional section processing for MX, SRV and NS (RFC 1035 §3.3,
    /// RFC 2782): in-zone A/AAAA records of the targets, once each.
    fn additional_for(&self, zone: &Zone, set: &[Record], ans: &mut Answer) {
        for r in set {
            let target = match &r.data {
                RData::MX(mx) => &mx.exchange,
                RData::SRV(srv) => &srv.target,
                RData::NS(ns) => &ns.0,
                _ => continue,
            };
            if !zone.origin.zone_of(target) {
                continue;
            }
            for a in zone.addresses_of(target) {
                if !ans.additionals.contains(&a) && !ans.answers.contains(&a) {
                    ans.additionals.push(a);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
