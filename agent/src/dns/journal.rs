//! Zone serials and the IXFR journal (RFC 1995).
//!
//! Every change of a zone's content gets a serial above the last one
//! (RFC 1982 arithmetic) and a [`Diff`] (the records removed and added) in
//! a bounded per-zone journal held in memory. An IXFR from a serial the
//! journal still has gets the differences since; from any other serial (the
//! journal was trimmed, or the agent restarted) the whole zone, AXFR-style
//! (RFC 1995 §4).
//!
//! Serials survive restarts: `<state_dir>/dns-zone-serials.json` keeps each
//! zone's last serial and a digest of its content. A start with the same
//! content serves the same serial; with other content, a higher one.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    path::{Path, PathBuf},
    sync::Arc,
};

use hickory_proto::rr::{Name, Record, RecordType};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::zone::Zone;

/// Differences kept per zone, and records in them at most (all zones).
const MAX_DIFFS: usize = 100;
const MAX_RECORDS: usize = 100_000;

/// `a` is after `b` in serial number arithmetic (RFC 1982 §3.2).
pub fn serial_gt(a: u32, b: u32) -> bool {
    a != b && (a.wrapping_sub(b) as i32) > 0
}

/// The serial for a zone whose content changed after `old`: the time (as
/// the built serials are) when it is ahead, else `old + 1`.
pub fn next_serial(old: u32, now: u32) -> u32 {
    if serial_gt(now, old) { now } else { old.wrapping_add(1) }
}

/// One change of a zone: from the SOA `from` to the SOA `to`.
#[derive(Debug, Clone, PartialEq)]
pub struct Diff {
    pub from: Record,
    pub to: Record,
    pub removed: Vec<Record>,
    pub added: Vec<Record>,
}

impl Diff {
    pub fn from_serial(&self) -> u32 {
        soa_serial(&self.from)
    }
    pub fn to_serial(&self) -> u32 {
        soa_serial(&self.to)
    }
    fn len(&self) -> usize {
        self.removed.len() + self.added.len()
    }
}

fn soa_serial(r: &Record) -> u32 {
    match &r.data {
        hickory_proto::rr::RData::SOA(s) => s.serial,
        _ => 0,
    }
}

/// Every record of `z` but the SOA.
pub fn records(z: &Zone) -> impl Iterator<Item = &Record> {
    z.nodes.values().flat_map(|n| n.rrsets.values().flatten()).filter(|r| r.record_type() != RecordType::SOA)
}

/// What changed from `old` to `new` (same apex), RRset by RRset.
pub fn diff(old: &Zone, new: &Zone) -> Diff {
    let soa = u16::from(RecordType::SOA);
    let mut removed = Vec::new();
    let mut added = Vec::new();
    let missing = |a: &Zone, b: &Zone, out: &mut Vec<Record>| {
        for (name, node) in &a.nodes {
            let other = b.nodes.get(name);
            for (t, set) in node.rrsets.iter().filter(|(t, _)| **t != soa) {
                let theirs = other.and_then(|n| n.rrsets.get(t));
                out.extend(set.iter().filter(|r| theirs.is_none_or(|s| !s.contains(r))).cloned());
            }
        }
    };
    missing(old, new, &mut removed);
    missing(new, old, &mut added);
    removed.sort_by(|a, b| a.name.cmp(&b.name));
    added.sort_by(|a, b| a.name.cmp(&b.name));
    Diff { from: old.soa().clone(), to: new.soa().clone(), removed, added }
}

/// The journal of every zone.
#[derive(Debug, Default)]
pub struct Journal {
    zones: HashMap<Name, VecDeque<Arc<Diff>>>,
    records: usize,
}

impl Journal {
    /// Records the change `old` → `new`.
    pub fn record(&mut self, old: &Zone, new: &Zone) {
        let d = diff(old, new);
        let q = self.zones.entry(new.origin.clone()).or_default();
        // A gap (a change not journaled): older differences are useless.
        if q.back().is_some_and(|b| b.to_serial() != d.from_serial()) {
            self.records -= q.drain(..).map(|d| d.len()).sum::<usize>();
        }
        self.records += d.len();
        q.push_back(Arc::new(d));
        while q.len() > MAX_DIFFS {
            self.records -= q.pop_front().map(|d| d.len()).unwrap_or(0);
        }
        // Over the record budget: the oldest differences of the zones go.
        while self.records > MAX_RECORDS {
            let Some(q) = self.zones.values_mut().filter(|q| !q.is_empty()).max_by_key(|q| q.len()) else { break };
            self.records -= q.pop_front().map(|d| d.len()).unwrap_or(0);
        }
    }

    /// Forgets a zone's differences (it went away or came anew).
    pub fn clear(&mut self, origin: &Name) {
        if let Some(q) = self.zones.remove(origin) {
            self.records -= q.iter().map(|d| d.len()).sum::<usize>();
        }
    }

    /// The differences from `serial` to `current`, if the journal has them
    /// all in a row.
    pub fn since(&self, origin: &Name, serial: u32, current: u32) -> Option<Vec<Arc<Diff>>> {
        let q = self.zones.get(origin)?;
        let first = q.iter().position(|d| d.from_serial() == serial)?;
        let mut out = Vec::new();
        let mut at = serial;
        for d in q.iter().skip(first) {
            if d.from_serial() != at {
                return None;
            }
            out.push(d.clone());
            at = d.to_serial();
            if at == current {
                return Some(out);
            }
        }
        None
    }
}

/// A zone's serial as last served, and a digest of its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    pub serial: u32,
    pub digest: String,
}

/// The file of saved serials.
#[derive(Debug)]
pub struct Serials {
    path: PathBuf,
    saved: BTreeMap<String, Saved>,
}

/// A digest of a zone's content, the SOA serial aside.
pub fn digest(z: &Zone) -> String {
    let mut z = z.clone();
    z.set_serial(0);
    let d = ring::digest::digest(&ring::digest::SHA256, z.to_zone_file().as_bytes());
    data_encoding::HEXLOWER.encode(d.as_ref())
}

pub const SERIALS_FILE: &str = "dns-zone-serials.json";

impl Serials {
    pub fn load(state_dir: &Path) -> Serials {
        let path = state_dir.join(SERIALS_FILE);
        let saved = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                warn!("dns: ignoring unreadable {}: {e}", path.display());
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
        Serials { path, saved }
    }

    /// The serial `z` (just built, with the serial `built`) is served with:
    /// the saved one for the same content, a higher one for other content.
    pub fn resume(&self, z: &Zone, now: u32) -> u32 {
        let built = z.serial();
        match self.saved.get(&z.origin.to_string()) {
            None => built,
            Some(s) if s.digest == digest(z) => s.serial,
            Some(s) if serial_gt(built, s.serial) => built,
            Some(s) => next_serial(s.serial, now),
        }
    }

    /// Remembers the zones' serials; writes the file when one changed.
    pub fn save<'a>(&mut self, zones: impl Iterator<Item = &'a Zone>) {
        let mut changed = false;
        for z in zones {
            let key = z.origin.to_string();
            if self.saved.get(&key).is_some_and(|s| s.serial == z.serial()) {
                continue;
            }
            self.saved.insert(key, Saved { serial: z.serial(), digest: digest(z) });
            changed = true;
        }
        if changed && let Err(e) = self.write() {
            warn!("dns: cannot save zone serials to {}: {e:#}", self.path.display());
        }
    }

    fn write(&self) -> anyhow::Result<()> {
        use std::io::Write as _;
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(&self.saved)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::rr::{
        RData,
        rdata::{A, SOA},
    };

    use super::*;
    use crate::dns::zone::ZoneKind;

    fn zone(serial: u32, hosts: &[(&str, [u8; 4])]) -> Zone {
        let o = Name::from_str("z.example.").unwrap();
        let mut z = Zone::new(&o, ZoneKind::Site);
        let soa = SOA::new(Name::from_str("ns.z.example.").unwrap(), o.clone(), serial, 1, 1, 1, 1);
        z.insert(Record::from_rdata(o.clone(), 60, RData::SOA(soa))).unwrap();
        for (h, ip) in hosts {
            let n = Name::from_str(&format!("{h}.z.example.")).unwrap();
            z.insert(Record::from_rdata(n, 60, RData::A(A::new(ip[0], ip[1], ip[2], ip[3])))).unwrap();
        }
        z.finish().unwrap();
        z
    }

    #[test]
    fn serial_arithmetic_wraps() {
        assert!(serial_gt(1, 0) && serial_gt(0, u32::MAX) && !serial_gt(5, 5) && !serial_gt(0, 1));
        assert_eq!(next_serial(10, 5), 11);
        assert_eq!(next_serial(10, 50), 50);
        assert_eq!(next_serial(u32::MAX, 5), 5);
    }

    #[test]
    fn the_journal_answers_consecutive_differences_only() {
        let (a, b, c) = (zone(1, &[("x", [1, 1, 1, 1])]), zone(2, &[("y", [2, 2, 2, 2])]), zone(3, &[]));
        let mut j = Journal::default();
        j.record(&a, &b);
        j.record(&b, &c);
        let d = j.since(&a.origin, 1, 3).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].removed.len(), 1);
        assert_eq!(d[0].added.len(), 1);
        assert_eq!(d[1].removed[0].name.to_string(), "y.z.example.");
        assert_eq!(j.since(&a.origin, 2, 3).unwrap().len(), 1);
        assert!(j.since(&a.origin, 7, 3).is_none());
        // A gap drops what came before it.
        j.record(&zone(9, &[]), &zone(10, &[("q", [3, 3, 3, 3])]));
        assert!(j.since(&a.origin, 1, 10).is_none());
        assert_eq!(j.since(&a.origin, 9, 10).unwrap().len(), 1);
    }

    #[test]
    fn saved_serials_resume_for_the_same_content_and_grow_for_other() {
        let dir = std::env::temp_dir().join(format!("coresvc-serials-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = Serials::load(&dir);
        let z = zone(500, &[("x", [1, 1, 1, 1])]);
        s.save([&z].into_iter());
        let s = Serials::load(&dir);
        // Rebuilt at a later time (serial 400 from a slow clock, or 900):
        // the same content keeps 500; other content goes above it.
        assert_eq!(s.resume(&zone(400, &[("x", [1, 1, 1, 1])]), 400), 500);
        assert_eq!(s.resume(&zone(900, &[("x", [1, 1, 1, 1])]), 900), 500);
        assert_eq!(s.resume(&zone(400, &[("y", [1, 1, 1, 1])]), 400), 501);
        assert_eq!(s.resume(&zone(900, &[("y", [1, 1, 1, 1])]), 900), 900);
        let _ = std::fs::remove_dir_all(dir);
    }
}
