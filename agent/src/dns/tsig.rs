//! TSIG (RFC 8945) with HMAC-SHA256: verifying signed requests, signing
//! responses (every message of a transfer, each chained to the MAC before
//! it, §5.3.1) and NOTIFYs. Works on wire bytes: the MAC covers the message
//! exactly as sent, so nothing is re-encoded between signing and sending.

use std::{collections::HashMap, sync::Arc};

use hickory_proto::rr::Name;
use ring::hmac;

use super::wire::skip_name;

/// The RR type and class of a TSIG record (RFC 8945 §4.2).
const TYPE_TSIG: u16 = 250;
const CLASS_ANY: u16 = 255;
/// The only algorithm offered (RFC 8945 §6: mandatory to implement).
pub const HMAC_SHA256: &str = "hmac-sha256.";
const MAC_LEN: usize = 32;
/// Seconds of clock difference accepted, and put in what we sign (§10).
pub const FUDGE: u16 = 300;

/// TSIG error codes (RFC 8945 §3).
pub const BADSIG: u16 = 16;
pub const BADKEY: u16 = 17;
pub const BADTIME: u16 = 18;

/// A shared secret, named as the peers name it.
pub struct Key {
    pub name: Name,
    wire: Vec<u8>,
    hmac: hmac::Key,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({})", self.name)
    }
}

impl Key {
    pub fn new(name: &Name, secret: &[u8]) -> Key {
        let name = name.to_lowercase();
        Key { wire: name_wire(&name), name, hmac: hmac::Key::new(hmac::HMAC_SHA256, secret) }
    }
}

/// The configured keys by (lower-case) name.
#[derive(Debug, Default, Clone)]
pub struct Keys(HashMap<Vec<u8>, Arc<Key>>);

impl Keys {
    pub fn insert(&mut self, k: Key) {
        self.0.insert(k.wire.clone(), Arc::new(k));
    }
    pub fn get(&self, name: &Name) -> Option<Arc<Key>> {
        self.0.get(&name_wire(&name.to_lowercase())).cloned()
    }
    fn by_wire(&self, wire: &[u8]) -> Option<Arc<Key>> {
        self.0.get(&wire.to_ascii_lowercase()).cloned()
    }
}

/// Decodes a key secret written in base64 (as `tsig-keygen`, `keymgr` and
/// Knot's configuration write it).
pub fn decode_secret(text: &str) -> Result<Vec<u8>, SecretError> {
    let t: String = text.split_whitespace().collect();
    let b = data_encoding::BASE64.decode(t.as_bytes()).map_err(SecretError::NotBase64)?;
    if b.is_empty() {
        return Err(SecretError::Empty);
    }
    Ok(b)
}

/// Why a TSIG key's secret cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the secret is not base64 ({0}); write it as `keymgr -t NAME hmac-sha256` prints it")]
    NotBase64(data_encoding::DecodeError),
    #[error("the secret is empty")]
    Empty,
    #[error("cannot read {path}: {error}")]
    Unreadable { path: std::path::PathBuf, error: std::io::Error },
    #[error("give secret or secret_file, not both")]
    Both,
    #[error("give the key's secret (base64) or a secret_file holding it")]
    Neither,
}

/// A name in canonical wire form (RFC 4034 §6.2: lower case, uncompressed).
pub fn name_wire(n: &Name) -> Vec<u8> {
    let mut v = Vec::with_capacity(64);
    for l in n.iter() {
        v.push(l.len() as u8);
        v.extend(l.iter().map(u8::to_ascii_lowercase));
    }
    v.push(0);
    v
}

/// The TSIG record at the end of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tsig {
    /// Where the record starts: the message without it is `msg[..start]`.
    pub start: usize,
    pub key_wire: Vec<u8>,
    pub alg_wire: Vec<u8>,
    pub time: u64,
    pub fudge: u16,
    pub mac: Vec<u8>,
    pub orig_id: u16,
    pub error: u16,
    pub other: Vec<u8>,
}

fn be16(m: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*m.get(at)?, *m.get(at + 1)?]))
}

/// An uncompressed name at `pos` (as TSIG's owner and algorithm must be):
/// its bytes and the offset after it.
fn plain_name(m: &[u8], pos: usize) -> Option<(Vec<u8>, usize)> {
    let end = skip_name(m, pos)?;
    let bytes = m.get(pos..end)?;
    // A compression pointer is not allowed here (RFC 8945 §4.2).
    if bytes.len() >= 2 && bytes[bytes.len() - 2] & 0xc0 == 0xc0 {
        return None;
    }
    Some((bytes.to_vec(), end))
}

/// Finds the TSIG record: `None` when the message has none, `Some(Err)`
/// when it has one that cannot be read (or one that is not last).
pub fn find(m: &[u8]) -> Option<Result<Tsig, ()>> {
    let arcount = be16(m, 10)?;
    if arcount == 0 {
        return None;
    }
    let counts = [be16(m, 4)?, be16(m, 6)?, be16(m, 8)?];
    let mut pos = 12;
    for _ in 0..counts[0] {
        pos = skip_name(m, pos)? + 4;
    }
    let rrs = usize::from(counts[1]) + usize::from(counts[2]) + usize::from(arcount);
    for i in 0..rrs {
        let start = pos;
        let after = skip_name(m, pos)?;
        let rtype = be16(m, after)?;
        let rdlen = usize::from(be16(m, after + 8)?);
        pos = after + 10 + rdlen;
        if pos > m.len() {
            return None;
        }
        if rtype == TYPE_TSIG {
            if i + 1 != rrs || pos != m.len() {
                return Some(Err(()));
            }
            return Some(parse_at(m, start).ok_or(()));
        }
    }
    None
}

fn parse_at(m: &[u8], start: usize) -> Option<Tsig> {
    let (key_wire, p) = plain_name(m, start)?;
    if be16(m, p + 2)? != CLASS_ANY {
        return None;
    }
    let rd = p + 10;
    let (alg_wire, mut q) = plain_name(m, rd)?;
    let t = m.get(q..q + 6)?;
    let time = t.iter().fold(0u64, |a, b| a << 8 | u64::from(*b));
    let fudge = be16(m, q + 6)?;
    let mac_len = usize::from(be16(m, q + 8)?);
    q += 10;
    let mac = m.get(q..q + mac_len)?.to_vec();
    q += mac_len;
    let orig_id = be16(m, q)?;
    let error = be16(m, q + 2)?;
    let olen = usize::from(be16(m, q + 4)?);
    let other = m.get(q + 6..q + 6 + olen)?.to_vec();
    (q + 6 + olen == m.len()).then_some(Tsig { start, key_wire, alg_wire, time, fudge, mac, orig_id, error, other })
}

/// The message as it was signed: without the TSIG record, ARCOUNT one
/// less, the original ID (RFC 8945 §4.3.1).
pub fn stripped(m: &[u8], t: &Tsig) -> Vec<u8> {
    let mut v = m[..t.start].to_vec();
    let ar = be16(&v, 10).unwrap_or(1).saturating_sub(1);
    v[10..12].copy_from_slice(&ar.to_be_bytes());
    v[0..2].copy_from_slice(&t.orig_id.to_be_bytes());
    v
}

/// The TSIG variables that go into the digest after the message (§4.3.3).
struct Vars<'a> {
    key: &'a [u8],
    alg: &'a [u8],
    time: u64,
    fudge: u16,
    error: u16,
    other: &'a [u8],
}

impl Vars<'_> {
    fn of(t: &Tsig) -> Vars<'_> {
        Vars { key: &t.key_wire, alg: &t.alg_wire, time: t.time, fudge: t.fudge, error: t.error, other: &t.other }
    }

    /// All of them, or the timers alone (messages after the first of a
    /// multi-message response).
    fn put(&self, out: &mut Vec<u8>, full: bool) {
        if full {
            out.extend_from_slice(&self.key.to_ascii_lowercase());
            out.extend_from_slice(&CLASS_ANY.to_be_bytes());
            out.extend_from_slice(&0u32.to_be_bytes());
            out.extend_from_slice(&self.alg.to_ascii_lowercase());
        }
        out.extend_from_slice(&self.time.to_be_bytes()[2..]);
        out.extend_from_slice(&self.fudge.to_be_bytes());
        if full {
            out.extend_from_slice(&self.error.to_be_bytes());
            out.extend_from_slice(&(self.other.len() as u16).to_be_bytes());
            out.extend_from_slice(self.other);
        }
    }
}

fn alg_wire() -> Vec<u8> {
    name_wire(&Name::from_ascii(HMAC_SHA256).expect("a valid name"))
}

/// What checking a signed request found (RFC 8945 §5.2).
#[derive(Debug)]
pub enum Verdict {
    Good(Arc<Key>),
    /// Unknown key or algorithm: NOTAUTH, TSIG error BADKEY, unsigned.
    BadKey,
    /// The MAC does not verify: NOTAUTH, BADSIG, unsigned.
    BadSig,
    /// Good MAC, clock too far off: NOTAUTH, BADTIME, signed.
    BadTime(Arc<Key>),
}

/// Checks the request `m` (as received) signed by `t`, at `now` (Unix seconds).
pub fn verify(keys: &Keys, m: &[u8], t: &Tsig, now: u64) -> Verdict {
    let Some(key) = keys.by_wire(&t.key_wire) else { return Verdict::BadKey };
    if t.alg_wire.to_ascii_lowercase() != alg_wire() {
        return Verdict::BadKey;
    }
    // Truncated MACs (§5.2.2.1) are not offered: only the full length.
    if t.mac.len() != MAC_LEN {
        return Verdict::BadSig;
    }
    let mut d = stripped(m, t);
    Vars::of(t).put(&mut d, true);
    if hmac::verify(&key.hmac, &d, &t.mac).is_err() {
        return Verdict::BadSig;
    }
    if now.abs_diff(t.time) > u64::from(t.fudge) {
        return Verdict::BadTime(key);
    }
    Verdict::Good(key)
}

/// Checks a response `m` to a request whose MAC was `request_mac` (a
/// NOTIFY's answer): true when it is signed by `key` and verifies.
pub fn verify_response(key: &Key, m: &[u8], request_mac: &[u8], now: u64) -> bool {
    let Some(Ok(t)) = find(m) else { return false };
    if t.key_wire.to_ascii_lowercase() != key.wire || t.mac.len() != MAC_LEN {
        return false;
    }
    let mut d = Vec::with_capacity(m.len() + 128);
    d.extend_from_slice(&(request_mac.len() as u16).to_be_bytes());
    d.extend_from_slice(request_mac);
    d.extend_from_slice(&stripped(m, &t));
    Vars::of(&t).put(&mut d, true);
    hmac::verify(&key.hmac, &d, &t.mac).is_ok() && now.abs_diff(t.time) <= u64::from(t.fudge)
}

/// How a message is signed.
pub enum Chain<'a> {
    /// A request (a NOTIFY): no MAC before it.
    Request,
    /// A response, or the first message of one, to a request with this MAC.
    Response(&'a [u8]),
    /// A later message of a multi-message response: the MAC of the one before.
    Next(&'a [u8]),
}

/// Appends a TSIG record signed with `key` to `m` (its ID is the original
/// ID) and returns its MAC. `error` and `other` go in as given (BADTIME
/// carries the server's time in `other`).
pub fn sign(m: &mut Vec<u8>, key: &Key, chain: Chain<'_>, time: u64, error: u16, other: &[u8]) -> Vec<u8> {
    let alg = alg_wire();
    let mut d = Vec::with_capacity(m.len() + 128);
    let full = match chain {
        Chain::Request => true,
        Chain::Response(prior) | Chain::Next(prior) => {
            d.extend_from_slice(&(prior.len() as u16).to_be_bytes());
            d.extend_from_slice(prior);
            matches!(chain, Chain::Response(_))
        }
    };
    d.extend_from_slice(m);
    Vars { key: &key.wire, alg: &alg, time, fudge: FUDGE, error, other }.put(&mut d, full);
    let mac = hmac::sign(&key.hmac, &d).as_ref().to_vec();
    append(m, &key.wire, &alg, time, &mac, error, other);
    mac
}

/// Appends an unsigned TSIG record (MAC size 0) carrying `error`: the
/// answer to a request with an unknown key or a bad MAC (§5.2.1, §5.2.2).
pub fn append_unsigned(m: &mut Vec<u8>, t: &Tsig, time: u64, error: u16) {
    append(m, &t.key_wire.to_ascii_lowercase(), &t.alg_wire.to_ascii_lowercase(), time, &[], error, &[]);
}

fn append(m: &mut Vec<u8>, key: &[u8], alg: &[u8], time: u64, mac: &[u8], error: u16, other: &[u8]) {
    let id = be16(m, 0).unwrap_or(0);
    m.extend_from_slice(key);
    m.extend_from_slice(&TYPE_TSIG.to_be_bytes());
    m.extend_from_slice(&CLASS_ANY.to_be_bytes());
    m.extend_from_slice(&0u32.to_be_bytes());
    let rdlen = alg.len() + 6 + 2 + 2 + mac.len() + 2 + 2 + 2 + other.len();
    m.extend_from_slice(&(rdlen as u16).to_be_bytes());
    m.extend_from_slice(alg);
    m.extend_from_slice(&time.to_be_bytes()[2..]);
    m.extend_from_slice(&FUDGE.to_be_bytes());
    m.extend_from_slice(&(mac.len() as u16).to_be_bytes());
    m.extend_from_slice(mac);
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&error.to_be_bytes());
    m.extend_from_slice(&(other.len() as u16).to_be_bytes());
    m.extend_from_slice(other);
    if m.len() >= 12 {
        let ar = be16(m, 10).unwrap_or(0).saturating_add(1);
        m[10..12].copy_from_slice(&ar.to_be_bytes());
    }
}

/// Unix time in seconds.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key::new(&Name::from_ascii("xfr.key.").unwrap(), &decode_secret("c2VjcmV0c2VjcmV0c2VjcmV0").unwrap())
    }

    fn query() -> Vec<u8> {
        // ID 0x1234, one question: example. SOA IN.
        let mut m = vec![0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(b"\x07example\x00\x00\x06\x00\x01");
        m
    }

    #[test]
    fn a_signed_request_verifies_and_a_changed_one_does_not() {
        let k = key();
        let mut keys = Keys::default();
        keys.insert(key());
        let mut m = query();
        let mac = sign(&mut m, &k, Chain::Request, 1_000_000, 0, &[]);
        let t = find(&m).unwrap().unwrap();
        assert_eq!(t.mac, mac);
        assert_eq!(stripped(&m, &t), query());
        assert!(matches!(verify(&keys, &m, &t, 1_000_100), Verdict::Good(_)));
        assert!(matches!(verify(&keys, &m, &t, 1_000_400), Verdict::BadTime(_)));
        let mut bad = m.clone();
        bad[3] ^= 1;
        assert!(matches!(verify(&keys, &bad, &find(&bad).unwrap().unwrap(), 1_000_000), Verdict::BadSig));
        assert!(matches!(verify(&Keys::default(), &m, &t, 1_000_000), Verdict::BadKey));
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231_case_2() {
        // RFC 4231 §4.3: key "Jefe", data "what do ya want for nothing?".
        let k = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        let mac = hmac::sign(&k, b"what do ya want for nothing?");
        assert_eq!(
            data_encoding::HEXLOWER.encode(mac.as_ref()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_record_that_is_not_last_or_cut_short_is_an_error() {
        let mut m = query();
        sign(&mut m, &key(), Chain::Request, 5, 0, &[]);
        m.truncate(m.len() - 1);
        assert!(find(&m).is_none() || matches!(find(&m), Some(Err(()))));
        assert!(find(&query()).is_none());
    }
}
