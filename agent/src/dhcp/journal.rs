//! The lease journal: an append-only file of checksummed records under the
//! state directory, the only durable DHCP state.
//!
//! File layout (all integers little-endian):
//!
//! ```text
//! header  = "CSVCLEAS" (8 bytes) | version u32 (= 1) | reserved u32 (= 0)
//! record  = len u32 | crc u32 | payload (len bytes)
//!           crc = CRC-32 (IEEE) of the 4 len bytes followed by the payload
//! payload = kind u8 (1 = lease) | state u8 | address [u8; 4] (network order)
//!         | expires u64 (unix seconds) | client-key len u8 + bytes
//!         | hardware address len u8 + bytes | hostname len u8 + bytes
//!         | segment name len u8 + bytes
//! ```
//!
//! The last record for an address wins. Durability: [`Journal::append`]
//! writes a group of records and `fdatasync`s before returning, and callers
//! send an ACK only after that. Writes are split into commits of at most
//! [`MAX_COMMIT`] bytes, each synced before the next is written, so at any
//! moment only the last [`MAX_COMMIT`] bytes of the file can be torn by a
//! power cut. Replay uses that: a bad record within the last `MAX_COMMIT`
//! bytes is a torn tail and is cut (with a log line); a bad record before
//! that is a corrupt middle and is refused, never skipped.
//!
//! Compaction writes the live records to a new file, syncs it, renames it
//! over the journal and syncs the directory: a crash leaves either file
//! whole.
//!
//! A failed commit (a write or `fdatasync` error: a full or failing disk)
//! sends no ACK, and the file is cut back to its last good length and that
//! cut synced: after a failed `fdatasync` the kernel may have dropped the
//! pages or marked them clean, so nothing written since the last good
//! sync can be trusted, and records left there (whole or torn) would be
//! replayed after later ones. The journal then serves the next commit as
//! if the failed one never happened (disk full: leases resume when space
//! returns). When the cut itself fails, the file's state is unknown: the
//! journal is broken and refuses every further commit (fail-stop, as
//! PostgreSQL does on fsync failure); a restart replays it and cuts a torn
//! tail as after a power cut.

use std::{
    fs::{File, OpenOptions},
    io::{Read as _, Write as _},
    net::Ipv4Addr,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
};

use tracing::warn;

pub const FILE_NAME: &str = "dhcp-leases.journal";
const MAGIC: &[u8; 8] = b"CSVCLEAS";
pub const VERSION: u32 = 1;
const HEADER_LEN: usize = 16;
const FRAME_LEN: usize = 8;
/// A record's payload is at most 5 length-prefixed fields of 255 bytes plus
/// the fixed part; anything longer is corruption.
const MAX_PAYLOAD: usize = 14 + 4 * 256;
/// The most bytes written between two syncs (see the module doc).
pub const MAX_COMMIT: usize = 256 * 1024;
const KIND_LEASE: u8 = 1;

/// What the journal keeps about one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    pub addr: Ipv4Addr,
    pub state: RecordState,
    /// Unix seconds: the lease's end (bound), the quarantine's end
    /// (declined), or when it was freed (released).
    pub expires: u64,
    /// The client key (see `leases::ClientKey`), empty for a declined address.
    pub client: Vec<u8>,
    /// The client's hardware address (chaddr).
    pub hw: Vec<u8>,
    pub hostname: Option<String>,
    pub segment: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordState {
    Bound = 1,
    Released = 2,
    Declined = 3,
}

impl RecordState {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Bound,
            2 => Self::Released,
            3 => Self::Declined,
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("lease journal {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a coresvc lease journal (bad magic); move it away to start with no leases")]
    NotAJournal { path: PathBuf },
    #[error("lease journal {path} has version {found}; this coresvc reads version {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error(
        "lease journal {path}: a commit failed ({source}) and so did cutting the file back to its last good \
         record ({cut}); no lease is acknowledged from here: restart coresvc once the file system is writable \
         (the journal is replayed and cut at its last good record)"
    )]
    Broken {
        path: PathBuf,
        #[source]
        source: std::io::Error,
        cut: std::io::Error,
    },
    #[error("lease journal {path} is broken since an earlier failure; no lease is acknowledged until a restart")]
    StillBroken { path: PathBuf },
    #[error(
        "lease journal {path} is corrupt at byte {offset} of {len} ({reason}), before its last commit: \
         refusing to drop the leases after it; restore the file from a backup, or move it away to start \
         with no leases (clients then get new addresses)"
    )]
    CorruptMiddle { path: PathBuf, offset: usize, len: usize, reason: &'static str },
}

/// Encodes one record, frame included, onto `out`.
pub fn encode(r: &LeaseRecord, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_LEN]);
    out.push(KIND_LEASE);
    out.push(r.state as u8);
    out.extend_from_slice(&r.addr.octets());
    out.extend_from_slice(&r.expires.to_le_bytes());
    for field in [&r.client[..], &r.hw[..], r.hostname.as_deref().unwrap_or("").as_bytes(), r.segment.as_bytes()] {
        let f = &field[..field.len().min(255)];
        out.push(f.len() as u8);
        out.extend_from_slice(f);
    }
    let len = (out.len() - start - FRAME_LEN) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&out[start + FRAME_LEN..]);
    out[start + 4..start + 8].copy_from_slice(&h.finalize().to_le_bytes());
}

fn decode_payload(p: &[u8]) -> Option<LeaseRecord> {
    let (&kind, p) = p.split_first()?;
    if kind != KIND_LEASE || p.len() < 13 {
        return None;
    }
    let state = RecordState::from_u8(p[0])?;
    let addr = Ipv4Addr::new(p[1], p[2], p[3], p[4]);
    let expires = u64::from_le_bytes(p[5..13].try_into().ok()?);
    let mut rest = &p[13..];
    let mut field = || -> Option<Vec<u8>> {
        let (&n, r) = rest.split_first()?;
        let (f, r) = r.split_at_checked(n as usize)?;
        rest = r;
        Some(f.to_vec())
    };
    let client = field()?;
    let hw = field()?;
    let hostname = String::from_utf8(field()?).ok()?;
    let segment = String::from_utf8(field()?).ok()?;
    rest.is_empty().then_some(LeaseRecord {
        addr,
        state,
        expires,
        client,
        hw,
        hostname: (!hostname.is_empty()).then_some(hostname),
        segment,
    })
}

/// A record starting at `at`: its length on success.
fn record_at(buf: &[u8], at: usize) -> Result<(LeaseRecord, usize), &'static str> {
    let frame = buf.get(at..at + FRAME_LEN).ok_or("record header cut short")?;
    let len = u32::from_le_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(frame[4..].try_into().expect("4 bytes"));
    if len == 0 || len > MAX_PAYLOAD {
        return Err("impossible record length");
    }
    let payload = buf.get(at + FRAME_LEN..at + FRAME_LEN + len).ok_or("record cut short")?;
    let mut h = crc32fast::Hasher::new();
    h.update(&frame[..4]);
    h.update(payload);
    if h.finalize() != crc {
        return Err("checksum mismatch");
    }
    let rec = decode_payload(payload).ok_or("unknown record kind or malformed fields")?;
    Ok((rec, FRAME_LEN + len))
}

/// The result of reading a journal.
#[derive(Debug)]
pub struct Replay {
    pub records: Vec<LeaseRecord>,
    /// The length of the good prefix (header and whole records).
    pub good_len: usize,
    /// A torn tail that was found: (offset, bytes after it, why).
    pub cut: Option<(usize, usize, &'static str)>,
}

/// Reads a journal's bytes (see the module doc for what is cut and what is refused).
pub fn replay(buf: &[u8], path: &Path) -> Result<Replay, JournalError> {
    if buf.is_empty() {
        return Ok(Replay { records: Vec::new(), good_len: 0, cut: None });
    }
    if buf.len() < HEADER_LEN || &buf[..8] != MAGIC {
        return Err(JournalError::NotAJournal { path: path.to_path_buf() });
    }
    let version = u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(JournalError::Version { path: path.to_path_buf(), found: version });
    }
    let mut records = Vec::new();
    let mut at = HEADER_LEN;
    while at < buf.len() {
        match record_at(buf, at) {
            Ok((r, n)) => {
                records.push(r);
                at += n;
            }
            Err(reason) if buf.len() - at <= MAX_COMMIT => {
                return Ok(Replay { records, good_len: at, cut: Some((at, buf.len() - at, reason)) });
            }
            Err(reason) => {
                return Err(JournalError::CorruptMiddle {
                    path: path.to_path_buf(),
                    offset: at,
                    len: buf.len(),
                    reason,
                });
            }
        }
    }
    Ok(Replay { records, good_len: at, cut: None })
}

/// The records of the journal in `dir`, read without changing the file
/// (for `coresvc export` while the agent is stopped): a torn tail is left
/// out, as a start would cut it.
pub fn read(dir: &Path) -> Result<Vec<LeaseRecord>, JournalError> {
    let path = dir.join(FILE_NAME);
    match std::fs::read(&path) {
        Ok(buf) => Ok(replay(&buf, &path)?.records),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(JournalError::Io { path, source }),
    }
}

fn header() -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h
}

/// The open journal, appended to by one writer.
pub struct Journal {
    path: PathBuf,
    file: File,
    len: u64,
    /// Records written since the last compaction (or open).
    pub appended: u64,
    pub commits: u64,
    pub compactions: u64,
    /// A failed commit could not be cut back: every commit is refused.
    broken: bool,
}

impl Journal {
    /// Opens (or creates) the journal in `dir` and replays it. A torn tail
    /// is cut from the file here.
    pub fn open(dir: &Path) -> Result<(Journal, Vec<LeaseRecord>), JournalError> {
        let path = dir.join(FILE_NAME);
        let io = |source| JournalError::Io { path: path.clone(), source };
        let mut buf = Vec::new();
        match File::open(&path) {
            Ok(mut f) => {
                f.read_to_end(&mut buf).map_err(io)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let replay = replay(&buf, &path)?;
        if replay.good_len == 0 {
            // New (or empty): write the header atomically.
            write_whole(&path, &header()).map_err(io)?;
        }
        let file = OpenOptions::new().read(true).write(true).open(&path).map_err(io)?;
        if let Some((offset, bytes, reason)) = replay.cut {
            warn!(
                "dhcp: lease journal {}: cut a torn tail of {bytes} bytes at byte {offset} ({reason}); \
                 {} records before it are kept (a power cut or crash during a write; nothing it held was acknowledged)",
                path.display(),
                replay.records.len()
            );
            file.set_len(offset as u64).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        let len = (replay.good_len.max(HEADER_LEN)) as u64;
        Ok((Journal { path, file, len, appended: 0, commits: 0, compactions: 0, broken: false }, replay.records))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's length in bytes (header included).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the file holds no record.
    pub fn is_empty(&self) -> bool {
        self.len <= HEADER_LEN as u64
    }

    /// A failed commit could not be undone (see the module doc).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Appends `records` and makes them durable (one `fdatasync` per
    /// [`MAX_COMMIT`] bytes) before returning.
    pub fn append(&mut self, records: &[LeaseRecord]) -> Result<(), JournalError> {
        let mut buf = Vec::with_capacity(records.len() * 64);
        for r in records {
            let before = buf.len();
            encode(r, &mut buf);
            if buf.len() > MAX_COMMIT {
                let tail = buf.split_off(before);
                self.commit(&buf)?;
                buf = tail;
            }
        }
        if !buf.is_empty() {
            self.commit(&buf)?;
        }
        self.appended += records.len() as u64;
        Ok(())
    }

    fn commit(&mut self, bytes: &[u8]) -> Result<(), JournalError> {
        if self.broken {
            return Err(JournalError::StillBroken { path: self.path.clone() });
        }
        if let Err(source) = self.file.write_all_at(bytes, self.len).and_then(|()| self.file.sync_data()) {
            // Nothing after the last good length is trusted: cut it, durably.
            return Err(match self.file.set_len(self.len).and_then(|()| self.file.sync_all()) {
                Ok(()) => JournalError::Io { path: self.path.clone(), source },
                Err(cut) => {
                    self.broken = true;
                    JournalError::Broken { path: self.path.clone(), source, cut }
                }
            });
        }
        self.len += bytes.len() as u64;
        self.commits += 1;
        Ok(())
    }

    /// Replaces the journal with `live` (the state it describes), atomically.
    pub fn compact(&mut self, live: &[LeaseRecord]) -> Result<(), JournalError> {
        if self.broken {
            return Err(JournalError::StillBroken { path: self.path.clone() });
        }
        let io = |source| JournalError::Io { path: self.path.clone(), source };
        let mut buf = header();
        for r in live {
            encode(r, &mut buf);
        }
        write_whole(&self.path, &buf).map_err(io)?;
        self.file = OpenOptions::new().read(true).write(true).open(&self.path).map_err(io)?;
        self.len = buf.len() as u64;
        self.appended = 0;
        self.compactions += 1;
        Ok(())
    }
}

/// Writes `bytes` as `path` atomically: a temporary file, fsync, rename, fsync of the directory.
fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let written = File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written {
        // (A full disk: the partial copy must not keep the space.)
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u8, state: RecordState) -> LeaseRecord {
        LeaseRecord {
            addr: Ipv4Addr::new(10, 20, 0, 100 + i),
            state,
            expires: 1_700_000_000 + u64::from(i),
            client: vec![1, 2, 0, 0, 0, i],
            hw: vec![2, 0, 0, 0, 0, i],
            hostname: i.is_multiple_of(2).then(|| format!("host-{i}")),
            segment: "dvnt".into(),
        }
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("coresvc-journal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn file_of(records: &[LeaseRecord]) -> Vec<u8> {
        let mut b = header();
        for r in records {
            encode(r, &mut b);
        }
        b
    }

    #[test]
    fn records_round_trip_through_the_file() {
        let dir = tmpdir("roundtrip");
        let recs: Vec<_> = (0..50).map(|i| rec(i, RecordState::Bound)).collect();
        {
            let (mut j, old) = Journal::open(&dir).unwrap();
            assert!(old.is_empty());
            j.append(&recs[..20]).unwrap();
            j.append(&recs[20..]).unwrap();
            assert_eq!(j.commits, 2);
        }
        let (_, back) = Journal::open(&dir).unwrap();
        assert_eq!(back, recs);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_torn_tail_is_cut_at_the_last_good_record_at_every_length() {
        let recs: Vec<_> = (0..6).map(|i| rec(i, RecordState::Bound)).collect();
        let whole = file_of(&recs);
        let good = file_of(&recs[..5]).len();
        for cut in good + 1..whole.len() {
            let r = replay(&whole[..cut], Path::new("j")).unwrap();
            assert_eq!(r.records, recs[..5], "cut at {cut}");
            assert_eq!(r.good_len, good);
            assert!(r.cut.is_some());
        }
        // And through the file: it is truncated and appendable again.
        let dir = tmpdir("torn");
        std::fs::write(dir.join(FILE_NAME), &whole[..whole.len() - 3]).unwrap();
        let (mut j, back) = Journal::open(&dir).unwrap();
        assert_eq!(back, recs[..5]);
        assert_eq!(std::fs::metadata(dir.join(FILE_NAME)).unwrap().len(), good as u64);
        j.append(&recs[5..]).unwrap();
        drop(j);
        assert_eq!(Journal::open(&dir).unwrap().1, recs);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_corrupt_tail_record_is_cut_but_a_corrupt_middle_is_refused() {
        let recs: Vec<_> = (0..4).map(|i| rec(i, RecordState::Released)).collect();
        let mut b = file_of(&recs);
        let last = file_of(&recs[..3]).len();
        // A flipped bit in the last record's payload: tail.
        b[last + 12] ^= 0x40;
        let r = replay(&b, Path::new("j")).unwrap();
        assert_eq!(r.records, recs[..3]);
        assert_eq!(r.cut.map(|c| c.2), Some("checksum mismatch"));
        // Zeros where a commit never reached the disk: tail.
        let mut z = file_of(&recs[..3]);
        z.extend_from_slice(&[0; 100]);
        assert_eq!(replay(&z, Path::new("j")).unwrap().records, recs[..3]);

        // The same damage more than one commit before the end: refused.
        let many: Vec<_> = (0..8000).map(|i| rec((i % 100) as u8, RecordState::Bound)).collect();
        let mut big = file_of(&many);
        assert!(big.len() > MAX_COMMIT + 10_000);
        big[HEADER_LEN + 30] ^= 0x01;
        let e = replay(&big, Path::new("/var/lib/coresvc/j")).unwrap_err();
        assert!(matches!(e, JournalError::CorruptMiddle { offset: HEADER_LEN, .. }), "{e}");
        assert!(e.to_string().contains("refusing to drop the leases"), "{e}");
        // A broken length field in the middle: refused too.
        let mut big = file_of(&many);
        big[HEADER_LEN + 70 * 3..HEADER_LEN + 70 * 3 + 4].copy_from_slice(&[0xff; 4]);
        assert!(matches!(replay(&big, Path::new("j")), Err(JournalError::CorruptMiddle { .. })));
    }

    #[test]
    fn foreign_files_and_other_versions_are_refused() {
        assert!(matches!(replay(b"hello world, not a journal", Path::new("j")), Err(JournalError::NotAJournal { .. })));
        let mut h = header();
        h[8] = 9;
        assert!(matches!(replay(&h, Path::new("j")), Err(JournalError::Version { found: 9, .. })));
    }

    /// A commit that cannot be written nor cut back (here: the file behind
    /// the journal is open read-only) breaks the journal: every later
    /// commit is refused without touching the file, with a clear error.
    #[test]
    fn a_commit_whose_failure_cannot_be_undone_breaks_the_journal() {
        let dir = tmpdir("broken");
        let (mut j, _) = Journal::open(&dir).unwrap();
        j.append(&[rec(1, RecordState::Bound)]).unwrap();
        let len = j.len();
        j.file = File::open(&j.path).unwrap();
        let e = j.append(&[rec(2, RecordState::Bound)]).unwrap_err();
        assert!(matches!(e, JournalError::Broken { .. }), "{e}");
        assert!(e.to_string().contains("no lease is acknowledged") && e.to_string().contains("restart"), "{e}");
        assert!(j.is_broken());
        assert!(matches!(j.append(&[rec(3, RecordState::Bound)]), Err(JournalError::StillBroken { .. })));
        assert!(matches!(j.compact(&[]), Err(JournalError::StillBroken { .. })));
        assert_eq!((j.len(), std::fs::metadata(&j.path).unwrap().len()), (len, len));
        drop(j);
        assert_eq!(Journal::open(&dir).unwrap().1, vec![rec(1, RecordState::Bound)]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn compaction_keeps_exactly_the_live_records() {
        let dir = tmpdir("compact");
        let (mut j, _) = Journal::open(&dir).unwrap();
        for _ in 0..10 {
            j.append(&(0..30).map(|i| rec(i, RecordState::Bound)).collect::<Vec<_>>()).unwrap();
        }
        let before = j.len();
        let live: Vec<_> = (0..30).map(|i| rec(i, RecordState::Bound)).collect();
        j.compact(&live).unwrap();
        assert!(j.len() < before / 5);
        j.append(&[rec(1, RecordState::Released)]).unwrap();
        drop(j);
        let (_, back) = Journal::open(&dir).unwrap();
        assert_eq!(back.len(), 31);
        assert_eq!(back[30], rec(1, RecordState::Released));
        assert!(!dir.join("dhcp-leases.tmp").exists());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn random_damage_never_panics_and_never_invents_records() {
        let recs: Vec<_> = (0..40).map(|i| rec(i, RecordState::Bound)).collect();
        let whole = file_of(&recs);
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2000 {
            let mut b = whole.clone();
            for _ in 0..1 + next() % 4 {
                let i = HEADER_LEN + (next() as usize) % (b.len() - HEADER_LEN);
                b[i] = next() as u8;
            }
            let cut = HEADER_LEN + (next() as usize) % (b.len() - HEADER_LEN + 1);
            if let Ok(r) = replay(&b[..cut], Path::new("j")) {
                // Whatever survives is a prefix of what was written.
                assert_eq!(r.records[..], recs[..r.records.len()]);
            }
        }
    }
}
