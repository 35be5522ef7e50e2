//! Kea's memfile lease file (CSV), read and written, and leases converted
//! between it and coresvc's lease store: the handoff of the authority
//! switches and `coresvc export kea` / `coresvc import kea-leases`.
//!
//! The format is Kea's (`src/lib/dhcpsrv/csv_lease_file4.cc`): a header
//! naming the columns, then one row per change, appended; the last row for
//! an address wins and a row with `valid_lifetime` 0 deletes the lease.
//! Rows are read by the header's column names, so files of older schemas
//! (without `state`, `user_context`) and newer ones (`pool_id`) are read
//! alike; coresvc writes the v2.1 header Kea 2.x writes. `hostname` and
//! `user_context` escape the separator, `&` and unprintable bytes as
//! `&#xNN`. At start Kea reads `<file>.completed` (after a lease file
//! cleanup) or else `<file>.2` and `<file>.1`, then `<file>`: so does
//! [`load_memfile`].

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use super::{
    journal::{LeaseRecord, RecordState},
    leases::ClientKey,
    options::sanitise_hostname,
};
use crate::config::Config;

/// The header Kea 2.x (schema 2.1) writes.
pub const HEADER: &str =
    "address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,hostname,state,user_context";

/// Kea's lease states.
pub const STATE_DEFAULT: u32 = 0;
pub const STATE_DECLINED: u32 = 1;
pub const STATE_EXPIRED_RECLAIMED: u32 = 2;

/// One row of a lease file (one lease as Kea stores it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeaLease {
    pub address: Ipv4Addr,
    pub hwaddr: Vec<u8>,
    /// Option 61's whole value (type byte included), empty when none.
    pub client_id: Vec<u8>,
    /// Seconds; 0 in a row deletes the lease.
    pub valid_lifetime: u32,
    /// Unix seconds: cltt + valid_lifetime.
    pub expire: u64,
    pub subnet_id: u32,
    pub fqdn_fwd: bool,
    pub fqdn_rev: bool,
    pub hostname: String,
    pub state: u32,
}

impl KeaLease {
    /// In force at `now`: a lease (not declined, not reclaimed) that has not expired.
    pub fn active(&self, now: u64) -> bool {
        self.state == STATE_DEFAULT && self.valid_lifetime > 0 && self.expire > now
    }

    /// The client as coresvc keys it: the client identifier when there is
    /// one, else the hardware address (RFC 2131 §4.2, as Kea's match-client-id).
    pub fn client_key(&self) -> ClientKey {
        if self.client_id.is_empty() {
            ClientKey::from_hw(1, &self.hwaddr)
        } else {
            ClientKey::from_client_id(&self.client_id)
        }
    }

    /// The row, without a line end.
    pub fn row(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "{},{},{},{},{},{},{},{},{},{},",
            self.address,
            hex(&self.hwaddr),
            hex(&self.client_id),
            self.valid_lifetime,
            self.expire,
            self.subnet_id,
            u8::from(self.fqdn_fwd),
            u8::from(self.fqdn_rev),
            escape(&self.hostname),
            self.state
        );
        s
    }
}

/// Colon-separated hex, as Kea writes hardware addresses and client ids.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":")
}

/// Hex bytes with or without separators (`02:00:0a`, `02-00-0a`, `02000a`).
pub fn parse_hex(s: &str) -> Option<Vec<u8>> {
    let digits: String = s.chars().filter(|c| !matches!(c, ':' | '-' | ' ')).collect();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    (0..digits.len()).step_by(2).map(|i| u8::from_str_radix(digits.get(i..i + 2)?, 16).ok()).collect()
}

/// Kea's escaping of a text column: `,`, `&` and bytes outside 0x20-0x7e
/// become `&#xNN`.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if !(0x20..=0x7e).contains(&b) || b == b',' || b == b'&' {
            let _ = write!(out, "&#x{b:02x}");
        } else {
            out.push(b as char);
        }
    }
    out
}

pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"&#x")
            && let Some(v) = b
                .get(i + 3..i + 5)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 5;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A lease file's text: the header, then a row per lease.
pub fn render(leases: &[KeaLease]) -> String {
    let mut s = String::from(HEADER);
    s.push('\n');
    for l in leases {
        s.push_str(&l.row());
        s.push('\n');
    }
    s
}

/// Why a lease file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    #[error("{file}: {source}")]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:1: not a Kea lease file: the header has no {column:?} column (expected {HEADER:?})")]
    Header { file: String, column: &'static str },
    #[error("{file}:{line}: {column}: {message}")]
    Row { file: String, line: usize, column: String, message: String },
}

/// The rows of a lease file's text, in file order. A last line without a
/// line end is a row Kea is still writing and is left out; any other bad
/// row refuses the whole file (naming the line and column).
pub fn parse(text: &str, file: &str) -> Result<Vec<KeaLease>, CsvError> {
    let whole = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    let mut lines = whole.lines().enumerate();
    let Some((_, header)) = lines.next() else { return Ok(Vec::new()) };
    let cols: Vec<&str> = header.trim().split(',').collect();
    let col = |name: &'static str| -> Result<usize, CsvError> {
        cols.iter().position(|c| *c == name).ok_or(CsvError::Header { file: file.to_string(), column: name })
    };
    let (address, hwaddr, client_id, valid, expire, subnet) =
        (col("address")?, col("hwaddr")?, col("client_id")?, col("valid_lifetime")?, col("expire")?, col("subnet_id")?);
    let opt = |name: &str| cols.iter().position(|c| *c == name);
    let (fwd, rev, hostname, state) = (opt("fqdn_fwd"), opt("fqdn_rev"), opt("hostname"), opt("state"));
    let mut out = Vec::new();
    for (n, line) in lines {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        let bad = |column: &str, message: String| CsvError::Row {
            file: file.to_string(),
            line: n + 1,
            column: column.to_string(),
            message,
        };
        if fields.len() != cols.len() {
            return Err(bad("row", format!("{} columns, the header has {}", fields.len(), cols.len())));
        }
        let get = |i: usize| fields[i].trim();
        let num = |i: usize, name: &str| -> Result<u64, CsvError> {
            get(i).parse::<u64>().map_err(|_| bad(name, format!("{:?} is not a number", get(i))))
        };
        let flag = |i: Option<usize>, name: &str| -> Result<bool, CsvError> {
            match i.map(get) {
                None | Some("" | "0" | "false") => Ok(false),
                Some("1" | "true") => Ok(true),
                Some(v) => Err(bad(name, format!("{v:?} is not 0 or 1"))),
            }
        };
        let addr: Ipv4Addr =
            get(address).parse().map_err(|_| bad("address", format!("{:?} is not an IPv4 address", get(address))))?;
        let hw = parse_hex(get(hwaddr)).ok_or_else(|| bad("hwaddr", format!("{:?} is not hex bytes", get(hwaddr))))?;
        let cid = parse_hex(get(client_id))
            .ok_or_else(|| bad("client_id", format!("{:?} is not hex bytes", get(client_id))))?;
        let valid_lifetime = u32::try_from(num(valid, "valid_lifetime")?)
            .map_err(|_| bad("valid_lifetime", format!("{} is out of range", get(valid))))?;
        let state = match state {
            Some(i) if !get(i).is_empty() => {
                u32::try_from(num(i, "state")?).map_err(|_| bad("state", format!("{} is out of range", get(i))))?
            }
            _ => STATE_DEFAULT,
        };
        out.push(KeaLease {
            address: addr,
            hwaddr: hw,
            client_id: cid,
            valid_lifetime,
            expire: num(expire, "expire")?,
            subnet_id: num(subnet, "subnet_id")? as u32,
            fqdn_fwd: flag(fwd, "fqdn_fwd")?,
            fqdn_rev: flag(rev, "fqdn_rev")?,
            hostname: hostname.map(|i| unescape(get(i))).unwrap_or_default(),
            state,
        });
    }
    Ok(out)
}

/// Applies rows in order as Kea does: the last row for an address wins, a
/// row with `valid_lifetime` 0 deletes the lease.
pub fn fold(rows: impl IntoIterator<Item = KeaLease>, into: &mut BTreeMap<Ipv4Addr, KeaLease>) {
    for r in rows {
        if r.valid_lifetime == 0 {
            into.remove(&r.address);
        } else {
            into.insert(r.address, r);
        }
    }
}

/// The files Kea reads at start for lease file `path`, in its order.
pub fn memfile_parts(path: &Path) -> Vec<PathBuf> {
    let with = |suffix: &str| PathBuf::from(format!("{}{suffix}", path.display()));
    let completed = with(".completed");
    let mut v = if completed.exists() { vec![completed] } else { vec![with(".2"), with(".1")] };
    v.push(path.to_path_buf());
    v.into_iter().filter(|p| p.exists()).collect()
}

/// The leases Kea would load from lease file `path` (and its LFC files).
/// A missing file is no leases.
pub fn load_memfile(path: &Path) -> Result<BTreeMap<Ipv4Addr, KeaLease>, CsvError> {
    let mut leases = BTreeMap::new();
    for p in memfile_parts(path) {
        let text = std::fs::read_to_string(&p).map_err(|source| CsvError::Io { file: p.clone(), source })?;
        fold(parse(&text, &p.display().to_string())?, &mut leases);
    }
    Ok(leases)
}

/// The subnet id `coresvc export kea` gives segment `i`.
pub fn subnet_id(segment_index: usize) -> u32 {
    segment_index as u32 + 1
}

/// The lease time configured for `addr` (its static host's, its pool's, or
/// the default), as the DHCP server would grant it.
pub fn configured_lease_time(cfg: &Config, addr: Ipv4Addr) -> u32 {
    if let Some(t) = cfg.dhcp.hosts.iter().find(|h| h.address == addr).and_then(|h| h.lease_time) {
        return t.secs();
    }
    let pool = cfg.dhcp.pools.iter().find(|p| (u32::from(p.start)..=u32::from(p.end)).contains(&u32::from(addr)));
    pool.and_then(|p| p.lease_time).unwrap_or(cfg.dhcp.lease_time).secs()
}

/// coresvc's bound leases still in force at `now`, as Kea leases.
/// `valid_lifetime` is the configured lease time or the time left,
/// whichever is longer, so the lease's start (`expire - valid_lifetime`)
/// is never in the future.
pub fn from_records(cfg: &Config, records: &[LeaseRecord], now: u64) -> Vec<KeaLease> {
    let mut out: Vec<KeaLease> = records
        .iter()
        .filter(|r| r.state == RecordState::Bound && r.expires > now && !r.hw.is_empty())
        .filter_map(|r| {
            let seg = cfg.segments.iter().position(|s| s.name == r.segment && s.cidr.trunc().contains(&r.addr))?;
            let key = ClientKey(r.client.clone());
            let left = u32::try_from(r.expires - now).unwrap_or(u32::MAX);
            Some(KeaLease {
                address: r.addr,
                hwaddr: r.hw.clone(),
                client_id: key.client_id().map(<[u8]>::to_vec).unwrap_or_default(),
                valid_lifetime: configured_lease_time(cfg, r.addr).max(left),
                expire: r.expires,
                subnet_id: subnet_id(seg),
                fqdn_fwd: false,
                fqdn_rev: false,
                hostname: r.hostname.clone().unwrap_or_default(),
                state: STATE_DEFAULT,
            })
        })
        .collect();
    out.sort_by_key(|l| u32::from(l.address));
    out
}

/// What an import makes of Kea's leases.
#[derive(Debug, Default)]
pub struct Converted {
    /// Journal records, for addresses on coresvc's segments.
    pub records: Vec<LeaseRecord>,
    /// Leases left out, and why.
    pub skipped: Vec<String>,
}

/// Kea's leases as coresvc journal records: leases in force as bound (with
/// Kea's expiry), declined ones as quarantined, expired or reclaimed ones
/// as released (so the client gets its address back); addresses outside
/// every segment are left out. Host names become the first label.
pub fn to_records(cfg: &Config, leases: &BTreeMap<Ipv4Addr, KeaLease>, now: u64) -> Converted {
    let mut c = Converted::default();
    for l in leases.values() {
        let Some(seg) = cfg.segments.iter().find(|s| s.cidr.trunc().contains(&l.address)) else {
            c.skipped.push(format!("{}: not on any segment", l.address));
            continue;
        };
        let (state, client, hw) = match l.state {
            STATE_DECLINED => (RecordState::Declined, Vec::new(), Vec::new()),
            _ if l.hwaddr.is_empty() && l.client_id.is_empty() => {
                c.skipped.push(format!("{}: neither hardware address nor client id", l.address));
                continue;
            }
            _ if l.active(now) => (RecordState::Bound, l.client_key().0, l.hwaddr.clone()),
            _ => (RecordState::Released, l.client_key().0, l.hwaddr.clone()),
        };
        c.records.push(LeaseRecord {
            addr: l.address,
            state,
            expires: l.expire,
            client,
            hw,
            hostname: sanitise_hostname(&l.hostname).filter(|_| state == RecordState::Bound),
            segment: seg.name.clone(),
        });
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows as kea-dhcp4 2.2.0 wrote them here (lease4-add, then lease4-del).
    const KEA_2_2: &str = "address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,hostname,state,user_context\n\
        10.99.0.105,02:00:00:00:00:05,01:02:00:00:00:00:05,600,1796308554,1,0,0,x.y.z,0,\n\
        10.99.0.106,02:00:00:00:00:06,,600,1796308600,1,1,1,web&#x2cone,0,{ \"a\": 1 }\n\
        10.99.0.105,02:00:00:00:00:05,01:02:00:00:00:00:05,0,1796307954,1,0,0,x.y.z,0,\n";

    #[test]
    fn kea_rows_are_read_by_header_and_the_last_row_wins() {
        let rows = parse(KEA_2_2, "leases4.csv").unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].client_id, vec![1, 2, 0, 0, 0, 0, 5]);
        assert_eq!(rows[1].hostname, "web,one", "unescaped");
        assert!(rows[1].fqdn_fwd && rows[1].client_id.is_empty());
        let mut m = BTreeMap::new();
        fold(rows, &mut m);
        assert_eq!(m.keys().collect::<Vec<_>>(), [&Ipv4Addr::new(10, 99, 0, 106)], "valid_lifetime 0 deletes");
        // An older schema (no state, no user_context), columns in another order.
        let old = "hwaddr,address,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,hostname\n\
                   02:00:00:00:00:07,10.99.0.107,,3600,1796308600,2,0,0,\n";
        let r = parse(old, "old.csv").unwrap();
        assert_eq!((r[0].address, r[0].state, r[0].subnet_id), (Ipv4Addr::new(10, 99, 0, 107), STATE_DEFAULT, 2));
    }

    #[test]
    fn bad_rows_are_refused_with_their_line_and_a_torn_last_line_is_ignored() {
        let torn = format!("{KEA_2_2}10.99.0.108,02:00:00:00:00:08,,600,17963");
        assert_eq!(parse(&torn, "f").unwrap().len(), 3);
        let bad = KEA_2_2.replace("10.99.0.106,", "10.99.0.300,");
        let e = parse(&bad, "leases4.csv").unwrap_err().to_string();
        assert!(e.starts_with("leases4.csv:3: address:"), "{e}");
        let e = parse("address,client_id\n", "f").unwrap_err().to_string();
        assert!(e.contains("no \"hwaddr\" column"), "{e}");
        let short = KEA_2_2.replace(",1,1,1,web&#x2cone,0,{ \"a\": 1 }", ",1");
        assert!(parse(&short, "f").unwrap_err().to_string().contains("columns"));
    }

    #[test]
    fn written_rows_read_back_and_look_like_keas() {
        let l = KeaLease {
            address: Ipv4Addr::new(10, 20, 0, 100),
            hwaddr: vec![2, 0, 0, 0x14, 0, 0x32],
            client_id: vec![1, 2, 0, 0, 0x14, 0, 0x32],
            valid_lifetime: 3600,
            expire: 1_796_308_554,
            subnet_id: 2,
            fqdn_fwd: false,
            fqdn_rev: false,
            hostname: "box1".into(),
            state: STATE_DEFAULT,
        };
        assert_eq!(l.row(), "10.20.0.100,02:00:00:14:00:32,01:02:00:00:14:00:32,3600,1796308554,2,0,0,box1,0,");
        let text = render(std::slice::from_ref(&l));
        assert!(text.starts_with(HEADER));
        assert_eq!(parse(&text, "f").unwrap(), vec![l]);
        assert_eq!(escape("a,b&c\n"), "a&#x2cb&#x26c&#x0a");
        assert_eq!(unescape(&escape("a,b&c\n")), "a,b&c\n");
    }

    #[test]
    fn lease_file_cleanup_files_are_read_in_keas_order() {
        let d = std::env::temp_dir().join(format!("coresvc-kea-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("leases4.csv");
        let row = |a: u8, valid: u32| format!("10.99.0.{a},02:00:00:00:00:{a:02x},,{valid},1796308554,1,0,0,,0,\n");
        std::fs::write(format!("{}.2", f.display()), format!("{HEADER}\n{}", row(1, 600))).unwrap();
        std::fs::write(format!("{}.1", f.display()), format!("{HEADER}\n{}{}", row(2, 600), row(1, 0))).unwrap();
        std::fs::write(&f, format!("{HEADER}\n{}", row(3, 600))).unwrap();
        let got: Vec<u8> = load_memfile(&f).unwrap().keys().map(|a| a.octets()[3]).collect();
        assert_eq!(got, [2, 3], ".2, then .1 (deleting .1's 1), then the file");
        // After a cleanup, .completed replaces .2 and .1.
        std::fs::write(format!("{}.completed", f.display()), format!("{HEADER}\n{}", row(9, 600))).unwrap();
        let got: Vec<u8> = load_memfile(&f).unwrap().keys().map(|a| a.octets()[3]).collect();
        assert_eq!(got, [3, 9]);
        assert!(load_memfile(&d.join("absent.csv")).unwrap().is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
