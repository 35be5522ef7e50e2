//! The DNS side of the XDP answer cache, shared bit for bit by the program
//! and the agent: which queries the program may answer, the cache key, and
//! the checksum arithmetic of the answers it sends.
//!
//! [`parse_query`] is the only parser of queries for the cache. The program
//! runs it on the query it received; the agent runs it on the query it
//! answered to compute the key it fills in. A query it refuses ([`Pass`])
//! goes to the agent untouched. It accepts exactly one shape: a standard
//! query (QR 0, opcode QUERY, TC 0) with one question, no answer or
//! authority records and at most one additional record, an EDNS(0) OPT
//! (RFC 6891 §6.1) without Client Subnet; the name made of plain labels
//! (no compression pointer, RFC 1035 §4.1.4, no extended label types) of at
//! most [`MAX_NAME`] bytes in wire format; nothing after the last record.
//!
//! The key is the name lower-cased (ASCII, RFC 4343: clients randomising the
//! case, draft-vixie-dnsext-dns0x20, still hit), the type, the class, and
//! what changes the answer besides: EDNS present (the answer carries an OPT)
//! and the DO bit. Everything else in the query (ID, RD, CD, the case of the
//! name) is echoed into the answer by the program.
//!
//! Everything here is `no_std`, allocation-free, with loops over constant
//! ranges so the eBPF verifier accepts it.

use crate::checksum;

/// The longest question name (wire format, root label included) the cache
/// handles. Longer names pass to the agent.
pub const MAX_NAME: usize = 64;
/// The name as 64-bit words (the key's layout).
pub const NAME_WORDS: usize = MAX_NAME / 8;
/// The longest query (DNS message) the program reads; longer ones pass.
pub const QUERY_MAX: usize = 160;
/// Where the message starts in a [`QueryBuf`]: the question name (message
/// offset 12) then starts on an 8-byte boundary and is copied in words.
pub const MSG_AT: usize = 4;
/// A [`QueryBuf`]'s size: the lead, the message and padding to a word.
pub const BUF_LEN: usize = MSG_AT + QUERY_MAX + 4;
const BUF_WORDS: usize = BUF_LEN / 8;

/// Key flags: the query has an OPT record (the answer then has one too).
pub const KEY_F_EDNS: u8 = 1 << 0;
/// Key flags: the OPT's DO bit (RFC 3225).
pub const KEY_F_DO: u8 = 1 << 1;

/// DNS header bytes and bits (RFC 1035 §4.1.1).
pub const HDR_LEN: usize = 12;
const FLAG_QR: u8 = 0x80;
const FLAG_TC: u8 = 0x02;
const OPCODE_MASK: u8 = 0x78;
/// RD (in header byte 2) and CD (byte 3): copied from the query.
pub const FLAG_RD: u8 = 0x01;
pub const FLAG_CD: u8 = 0x10;
/// RR type OPT and the EDNS option code of Client Subnet (RFC 7871).
pub const TYPE_OPT: u16 = 41;
pub const OPTION_ECS: u16 = 8;
/// OPT record bytes before its RDATA: owner (root), type, class, TTL, RDLENGTH.
pub const OPT_FIXED: usize = 11;
/// EDNS options walked at most.
const MAX_OPTIONS: usize = 8;

/// Runs a loop body: `run(n, body)` calls `body(i)` for `i` in `0..n` until
/// it returns false. The agent and tests use [`Plain`]; the program runs the
/// body in `bpf_loop`, so the verifier checks it once instead of once per
/// iteration and per way out of the loop.
pub trait Steps {
    fn run<F: FnMut(usize) -> bool>(&self, n: usize, body: F);
}

/// A plain loop.
pub struct Plain;

impl Steps for Plain {
    #[inline(always)]
    fn run<F: FnMut(usize) -> bool>(&self, n: usize, mut body: F) {
        let mut i = 0;
        while i < n && body(i) {
            i += 1;
        }
    }
}

/// Why a query is left to the agent. The program counts each one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// A response, another opcode than QUERY, or TC set.
    NotQuery,
    /// Not exactly one question, or answer/authority records, or more than
    /// one additional record.
    Counts,
    /// Truncated, a label longer than 63 bytes, a compression pointer or
    /// another label type in the question, lengths that do not add up,
    /// bytes after the last record.
    Malformed,
    /// The name or the whole query is longer than the program handles.
    TooLong,
    /// EDNS the cache does not answer: another version or extended rcode,
    /// an additional record that is not an OPT at the root, Client Subnet,
    /// more options than the program walks.
    Edns,
}

/// A query as the program loads it: [`MSG_AT`] zero bytes, the message,
/// zeros after it (checksums and the key rely on the zeros).
#[repr(C, align(8))]
#[derive(Clone)]
pub struct QueryBuf {
    pub bytes: [u8; BUF_LEN],
}

impl Default for QueryBuf {
    fn default() -> Self {
        QueryBuf { bytes: [0; BUF_LEN] }
    }
}

impl QueryBuf {
    /// The buffer holding `msg`, or `None` when it is longer than [`QUERY_MAX`].
    pub fn from_msg(msg: &[u8]) -> Option<Self> {
        if msg.len() > QUERY_MAX {
            return None;
        }
        let mut b = QueryBuf::default();
        b.bytes[MSG_AT..MSG_AT + msg.len()].copy_from_slice(msg);
        Some(b)
    }

    /// Message byte `i` (0 past the buffer).
    #[inline(always)]
    pub fn at(&self, i: usize) -> u8 {
        if i < QUERY_MAX { self.bytes[MSG_AT + i] } else { 0 }
    }

    #[inline(always)]
    fn be16(&self, i: usize) -> u16 {
        u16::from_be_bytes([self.at(i), self.at(i + 1)])
    }

    /// Bytes `8k..8k + 8` as a little-endian word (0 past the buffer).
    #[inline(always)]
    fn word(&self, k: usize) -> u64 {
        if k >= BUF_WORDS {
            return 0;
        }
        // SAFETY: the buffer is 8-aligned and holds BUF_WORDS words.
        u64::from_le(unsafe { (self.bytes.as_ptr() as *const u64).add(k).read() })
    }

    /// Zeroes the buffer in place, a word at a time (volatile: otherwise the
    /// compiler makes it a call to `memset`, which on BPF is a byte loop).
    #[inline(always)]
    pub fn clear(&mut self) {
        let mut k = 0;
        while k < BUF_WORDS {
            // SAFETY: as in `word`.
            unsafe { (self.bytes.as_mut_ptr() as *mut u64).add(k).write_volatile(0) };
            k += 1;
        }
    }

    /// The RFC 1071 sum (folded, not complemented) of the message: the lead
    /// is an even number of zero bytes, so the buffer sums like the message.
    #[inline(always)]
    pub fn sum(&self) -> u16 {
        let mut acc: u64 = 0;
        let mut k = 0;
        while k < BUF_WORDS {
            acc += add_halves(self.word(k));
            k += 1;
        }
        le_sum_to_be(acc)
    }
}

/// A query the cache may answer. Its key's name is written to the caller's
/// words by [`parse_query`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Query {
    /// The name's length in wire format, root label included.
    pub name_len: usize,
    pub qtype: u16,
    pub qclass: u16,
    /// `KEY_F_*`.
    pub flags: u8,
    /// The RFC 1071 sum of the question (name as received, type, class).
    pub question_sum: u16,
}

impl Query {
    /// The question's length: name, type, class.
    #[inline(always)]
    pub fn question_len(&self) -> usize {
        self.name_len + 4
    }
}

/// The key's name as bytes (little-endian words).
pub fn name_bytes(words: &[u64; NAME_WORDS]) -> [u8; MAX_NAME] {
    let mut out = [0u8; MAX_NAME];
    for (k, w) in words.iter().enumerate() {
        out[k * 8..k * 8 + 8].copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// Adds the two 32-bit halves of `w` (a partial RFC 1071 sum of 16-bit
/// little-endian words; carries are folded later).
#[inline(always)]
fn add_halves(w: u64) -> u64 {
    (w & 0xffff_ffff) + (w >> 32)
}

/// Folds a sum of little-endian 32-bit halves to the big-endian 16-bit sum
/// (RFC 1071 §2(B): byte order only swaps the result).
#[inline(always)]
fn le_sum_to_be(mut acc: u64) -> u16 {
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    checksum::fold(acc as u32).swap_bytes()
}

/// Lower-cases the ASCII letters of eight bytes at once (bytes >= 0x80 and
/// everything but A-Z stay as they are). Label length bytes (0-63) are
/// never letters, so a whole wire-format name can go through this.
#[inline(always)]
pub fn lower_word(w: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let t = w & LOW7;
    // Bit 7 of each byte: set from 'A' (0x41) up, and from '[' (0x5b) up.
    let from_a = t + 0x3f3f_3f3f_3f3f_3f3f;
    let past_z = t + 0x2525_2525_2525_2525;
    let upper = from_a & !past_z & !w & HIGH;
    w | (upper >> 2)
}

/// The key's name from the name's first [`MAX_NAME`] bytes: bytes from
/// `len` on zeroed, letters lower-cased.
#[inline(always)]
pub fn normalise_name(words: &mut [u64; NAME_WORDS], len: usize) {
    let mut k = 0;
    while k < NAME_WORDS {
        words[k] = lower_word(mask_word(words[k], k, len));
        k += 1;
    }
}

/// Decides whether the cache may answer the message of `len` bytes in
/// `buf`, and computes its key: the name goes to `name` (wire format,
/// lower-cased, zero after its end; byte `i` is bits `8 * (i % 8)..` of word
/// `i / 8`). See the module doc for what is accepted.
#[inline(always)]
pub fn parse_query<S: Steps>(
    buf: &QueryBuf,
    len: usize,
    name: &mut [u64; NAME_WORDS],
    steps: &S,
) -> Result<Query, Pass> {
    if len < HDR_LEN {
        return Err(Pass::Malformed);
    }
    if len > QUERY_MAX {
        return Err(Pass::TooLong);
    }
    let flags = buf.at(2);
    if flags & (FLAG_QR | FLAG_TC | OPCODE_MASK) != 0 {
        return Err(Pass::NotQuery);
    }
    let (qd, an, ns, ar) = (buf.be16(4), buf.be16(6), buf.be16(8), buf.be16(10));
    if qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return Err(Pass::Counts);
    }
    // The name: labels up to the root label. Each label is at least two
    // bytes, so MAX_NAME / 2 + 1 steps reach the end of any name that fits.
    // (Loop state in plain integers: no Option or Result crosses the loop.)
    let mut pos = HDR_LEN;
    let mut name_len = 0;
    let mut fail = 0u8;
    steps.run(MAX_NAME / 2 + 1, |_| {
        if pos >= len {
            fail = FAIL_MALFORMED;
            return false;
        }
        let l = buf.at(pos);
        if l == 0 {
            name_len = pos - HDR_LEN + 1;
            return false;
        }
        if l & 0xc0 != 0 {
            // A pointer (0xc0), an extended label type, or longer than 63.
            fail = FAIL_MALFORMED;
            return false;
        }
        pos += usize::from(l) + 1;
        if pos - HDR_LEN >= MAX_NAME {
            fail = FAIL_TOO_LONG;
            return false;
        }
        true
    });
    if fail == FAIL_MALFORMED {
        return Err(Pass::Malformed);
    }
    if fail != 0 || name_len == 0 || name_len > MAX_NAME {
        return Err(Pass::TooLong);
    }
    let q_end = HDR_LEN + name_len + 4;
    if q_end > len {
        return Err(Pass::Malformed);
    }
    let qtype = buf.be16(HDR_LEN + name_len);
    let qclass = buf.be16(HDR_LEN + name_len + 2);
    let mut key_flags = 0;
    if ar == 0 {
        if q_end != len {
            return Err(Pass::Malformed);
        }
    } else {
        key_flags = parse_opt(buf, q_end, len, steps)?;
    }
    // The name, zeroed past its end, summed as received (with type and
    // class, which start on an odd offset when the name's length is odd),
    // then lower-cased.
    let mut acc: u64 = 0;
    let mut k = 0;
    while k < NAME_WORDS {
        // Message offset 12 is buffer offset 16: word 2.
        let w = mask_word(buf.word(2 + k), k, name_len);
        acc += add_halves(w);
        name[k] = lower_word(w);
        k += 1;
    }
    let tail = checksum::fold(u32::from(qtype) + u32::from(qclass));
    let tail = if name_len & 1 == 1 { tail.swap_bytes() } else { tail };
    let question_sum = checksum::fold(u32::from(le_sum_to_be(acc)) + u32::from(tail));
    Ok(Query { name_len, qtype, qclass, flags: key_flags, question_sum })
}

const FAIL_MALFORMED: u8 = 1;
const FAIL_TOO_LONG: u8 = 2;
const FAIL_EDNS: u8 = 3;

/// Word `k` of a name of `len` bytes (at most a few hundred), zero past its
/// end. Branch-free: every comparison is a sign bit, so the verifier sees
/// one path instead of three per word.
#[inline(always)]
fn mask_word(w: u64, k: usize, len: usize) -> u64 {
    let rem = len as i64 - (k * 8) as i64;
    let all = ((7 - rem) >> 63) as u64; // rem >= 8
    let none = ((rem - 1) >> 63) as u64; // rem <= 0
    let part = (1u64 << (8 * (rem & 7) as u32)) - 1;
    w & (all | (!none & !all & part))
}

/// The OPT record at `at`, the last thing in a message of `len` bytes:
/// returns the key flags.
#[inline(always)]
fn parse_opt<S: Steps>(buf: &QueryBuf, at: usize, len: usize, steps: &S) -> Result<u8, Pass> {
    if at + OPT_FIXED > len {
        return Err(Pass::Malformed);
    }
    if buf.at(at) != 0 || buf.be16(at + 1) != TYPE_OPT {
        return Err(Pass::Edns);
    }
    // TTL: extended rcode, version, DO and Z (RFC 6891 §6.1.3).
    if buf.at(at + 5) != 0 || buf.at(at + 6) != 0 {
        return Err(Pass::Edns);
    }
    let flags = if buf.at(at + 7) & 0x80 != 0 { KEY_F_EDNS | KEY_F_DO } else { KEY_F_EDNS };
    let rdlen = usize::from(buf.be16(at + 9));
    let mut p = at + OPT_FIXED;
    if p + rdlen != len {
        return Err(Pass::Malformed);
    }
    // Options (code, length, data) fill the RDATA exactly.
    let mut fail = 0u8;
    steps.run(MAX_OPTIONS, |_| {
        if p == len {
            return false;
        }
        if p + 4 > len {
            fail = FAIL_MALFORMED;
            return false;
        }
        if buf.be16(p) == OPTION_ECS {
            fail = FAIL_EDNS;
            return false;
        }
        p += 4 + usize::from(buf.be16(p + 2));
        if p > len {
            fail = FAIL_MALFORMED;
            return false;
        }
        true
    });
    match fail {
        0 if p == len => Ok(flags),
        FAIL_MALFORMED => Err(Pass::Malformed),
        // An ECS option, or more options than walked.
        _ => Err(Pass::Edns),
    }
}

/// The answer's DNS header: the query's ID, RD and CD (`query` is the
/// query's first four bytes), the cached flags (QR, AA, RA, the rcode) and
/// section counts.
#[inline(always)]
pub fn answer_header(query: [u8; 4], flags: [u8; 2], counts: [u8; 6]) -> [u8; HDR_LEN] {
    [
        query[0],
        query[1],
        flags[0] | (query[2] & FLAG_RD),
        flags[1] | (query[3] & FLAG_CD),
        0,
        1,
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        counts[4],
        counts[5],
    ]
}

/// The UDP checksum of an answer: pseudo header (RFC 768), the UDP header
/// and a payload of the header `hdr`, a question of `question_len` bytes
/// summing to `question_sum`, then the cached sections summing to
/// `sections_sum` (as if they started on an even offset). Never 0.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn answer_checksum(
    saddr: [u8; 4],
    daddr: [u8; 4],
    sport: u16,
    dport: u16,
    udp_len: u16,
    hdr: &[u8; HDR_LEN],
    question_sum: u16,
    question_len: usize,
    sections_sum: u16,
) -> u16 {
    let mut s: u32 = 0;
    s += u32::from(u16::from_be_bytes([saddr[0], saddr[1]])) + u32::from(u16::from_be_bytes([saddr[2], saddr[3]]));
    s += u32::from(u16::from_be_bytes([daddr[0], daddr[1]])) + u32::from(u16::from_be_bytes([daddr[2], daddr[3]]));
    s += 17 + 2 * u32::from(udp_len) + u32::from(sport) + u32::from(dport);
    let mut i = 0;
    while i < HDR_LEN {
        s += u32::from(u16::from_be_bytes([hdr[i], hdr[i + 1]]));
        i += 2;
    }
    s += u32::from(question_sum);
    s += u32::from(if question_len & 1 == 1 { sections_sum.swap_bytes() } else { sections_sum });
    let c = !checksum::fold(s);
    if c == 0 { 0xffff } else { c }
}

/// The sum of `bytes` laid out from an even offset (the cached sections).
pub fn sections_sum(bytes: &[u8]) -> u16 {
    checksum::fold(checksum::add_bytes(0, bytes))
}

/// `sum` (of sections laid out from an even offset) after the 32-bit field
/// at offset `at` changes from `old` to `new` (a TTL as it ages).
#[inline(always)]
pub fn sum_replace32(sum: u16, at: usize, old: u32, new: u32) -> u16 {
    let d = u32::from(!(old >> 16) as u16)
        + u32::from(!(old as u16))
        + u32::from((new >> 16) as u16)
        + u32::from(new as u16);
    let d = checksum::fold(d);
    let d = if at & 1 == 1 { d.swap_bytes() } else { d };
    checksum::fold(u32::from(sum) + u32::from(d))
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{format, vec, vec::Vec};

    use super::*;

    fn wire(name: &str) -> Vec<u8> {
        let mut v = Vec::new();
        for l in name.trim_end_matches('.').split('.').filter(|l| !l.is_empty()) {
            v.push(l.len() as u8);
            v.extend_from_slice(l.as_bytes());
        }
        v.push(0);
        v
    }

    fn query(name: &str, qtype: u16, opt: Option<&[u8]>) -> Vec<u8> {
        let mut q = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(opt.is_some())];
        q.extend(wire(name));
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&[0, 1]);
        if let Some(o) = opt {
            q.extend_from_slice(o);
        }
        q
    }

    /// An OPT record: payload size 1232, DO as given, these options.
    fn opt(do_bit: bool, options: &[(u16, &[u8])]) -> Vec<u8> {
        let mut rdata = Vec::new();
        for (code, data) in options {
            rdata.extend_from_slice(&code.to_be_bytes());
            rdata.extend_from_slice(&(data.len() as u16).to_be_bytes());
            rdata.extend_from_slice(data);
        }
        let mut o = vec![0, 0, 41, 0x04, 0xd0, 0, 0, if do_bit { 0x80 } else { 0 }, 0];
        o.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        o.extend(rdata);
        o
    }

    fn parse_named(msg: &[u8]) -> Result<(Query, [u8; MAX_NAME]), Pass> {
        let b = QueryBuf::from_msg(msg).ok_or(Pass::TooLong)?;
        let mut name = [0u64; NAME_WORDS];
        let q = parse_query(&b, msg.len(), &mut name, &Plain)?;
        Ok((q, name_bytes(&name)))
    }

    fn parse(msg: &[u8]) -> Result<Query, Pass> {
        parse_named(msg).map(|(q, _)| q)
    }

    #[test]
    fn mask_word_keeps_the_name_bytes() {
        for len in 0..=MAX_NAME + 9 {
            for k in 0..NAME_WORDS {
                let keep = len.saturating_sub(k * 8).min(8);
                let want = if keep == 8 { u64::MAX } else { (1u64 << (8 * keep)) - 1 };
                assert_eq!(mask_word(u64::MAX, k, len), want, "len {len} word {k}");
            }
        }
    }

    #[test]
    fn lower_word_matches_ascii_lowercase_for_every_byte() {
        for b in 0..=255u8 {
            let w = u64::from_le_bytes([b, b'A', b, 0x5a, 0x5b, 0x40, 0xc1, b]);
            let want: Vec<u8> = w.to_le_bytes().iter().map(u8::to_ascii_lowercase).collect();
            assert_eq!(lower_word(w).to_le_bytes().to_vec(), want, "byte {b:#x}");
        }
    }

    #[test]
    fn mixed_case_queries_have_one_key() {
        let (a, an) = parse_named(&query("ArtiFacts.DVNTM.deevnet.net", 1, None)).unwrap();
        let (b, bn) = parse_named(&query("artifacts.dvntm.deevnet.net", 1, None)).unwrap();
        assert_eq!(an, bn);
        assert_eq!((a.qtype, a.qclass, a.flags), (1, 1, 0));
        assert_eq!(&an[..a.name_len], wire("artifacts.dvntm.deevnet.net").as_slice());
        assert!(an[a.name_len..].iter().all(|b| *b == 0));
        let mut words = [0u64; NAME_WORDS];
        let w = wire("ArtiFacts.DVNTM.deevnet.net");
        let mut raw = [0u8; MAX_NAME];
        raw[..w.len()].copy_from_slice(&w);
        raw[w.len()..w.len() + 4].copy_from_slice(&[0, 1, 0, 1]);
        for (k, c) in raw.chunks(8).enumerate() {
            words[k] = u64::from_le_bytes(c.try_into().unwrap());
        }
        normalise_name(&mut words, w.len());
        assert_eq!(name_bytes(&words), an, "normalise_name gives the parser's key");
        assert_ne!(a.question_sum, b.question_sum, "the sum is of the question as received");
    }

    #[test]
    fn question_sum_matches_a_plain_checksum() {
        for name in ["a", "ab", "provisioner-01.mgmt.deevnet.net", "X.y", "1.0.10.10.in-addr.arpa"] {
            let q = query(name, 28, None);
            let p = parse(&q).unwrap();
            let want = checksum::fold(checksum::add_bytes(0, &q[12..]));
            assert_eq!(p.question_sum, want, "{name}");
            assert_eq!(p.question_len(), q.len() - 12);
            let b = QueryBuf::from_msg(&q).unwrap();
            assert_eq!(b.sum(), checksum::fold(checksum::add_bytes(0, &q)), "{name}");
        }
    }

    #[test]
    fn edns_flags_are_part_of_the_key() {
        let plain = parse(&query("x.example", 1, None)).unwrap();
        let edns = parse(&query("x.example", 1, Some(&opt(false, &[])))).unwrap();
        let dnssec = parse(&query("x.example", 1, Some(&opt(true, &[(10, &[1; 8])])))).unwrap();
        assert_eq!(plain.flags, 0);
        assert_eq!(edns.flags, KEY_F_EDNS);
        assert_eq!(dnssec.flags, KEY_F_EDNS | KEY_F_DO);
    }

    #[test]
    fn refusals() {
        let ok = query("www.example.org", 1, None);
        let mut response = ok.clone();
        response[2] |= 0x80;
        let mut notify = ok.clone();
        notify[2] = 4 << 3;
        let mut tc = ok.clone();
        tc[2] |= 0x02;
        let mut qd0 = ok.clone();
        qd0[5] = 0;
        let mut qd2 = ok.clone();
        qd2[5] = 2;
        let mut an = ok.clone();
        an[7] = 1;
        let mut pointer = ok[..12].to_vec();
        pointer.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        let mut long_label = ok[..12].to_vec();
        long_label.push(64);
        long_label.extend_from_slice(&[b'a'; 64]);
        long_label.extend_from_slice(&[0, 0, 1, 0, 1]);
        let long_name = query(&["abcdefghi"; 7].join("."), 1, None);
        let mut trailing = ok.clone();
        trailing.push(0);
        let mut bad_rdlen = query("x.example", 1, Some(&opt(false, &[(10, &[1; 8])])));
        let n = bad_rdlen.len();
        bad_rdlen[n - 13] += 1;
        let v1 = {
            let mut o = opt(false, &[]);
            o[6] = 1;
            query("x.example", 1, Some(&o))
        };
        let ecs = query("x.example", 1, Some(&opt(false, &[(8, &[0, 1, 24, 0, 10, 20, 0])])));
        let not_opt = query("x.example", 1, Some(&[0, 0, 250, 0, 255, 0, 0, 0, 0, 0, 0]));
        let many: Vec<(u16, &[u8])> = (0..9).map(|_| (12u16, &[][..])).collect();
        let too_many = query("x.example", 1, Some(&opt(false, &many)));
        let cases: Vec<(&str, Vec<u8>, Pass)> = vec![
            ("truncated header", ok[..11].to_vec(), Pass::Malformed),
            ("truncated question", ok[..ok.len() - 2].to_vec(), Pass::Malformed),
            ("name without end", ok[..20].to_vec(), Pass::Malformed),
            ("response", response, Pass::NotQuery),
            ("notify", notify, Pass::NotQuery),
            ("tc", tc, Pass::NotQuery),
            ("qdcount 0", qd0, Pass::Counts),
            ("qdcount 2", qd2, Pass::Counts),
            ("an answer record", an, Pass::Counts),
            ("compression pointer", pointer, Pass::Malformed),
            ("label of 64", long_label, Pass::Malformed),
            ("name longer than supported", long_name, Pass::TooLong),
            ("trailing byte", trailing, Pass::Malformed),
            ("OPT rdlength", bad_rdlen, Pass::Malformed),
            ("EDNS version 1", v1, Pass::Edns),
            ("client subnet", ecs, Pass::Edns),
            ("TSIG-like additional", not_opt, Pass::Edns),
            ("nine options", too_many, Pass::Edns),
            ("too long a query", vec![0; QUERY_MAX + 1], Pass::TooLong),
        ];
        for (what, msg, want) in cases {
            assert_eq!(parse(&msg), Err(want), "{what}");
        }
        let mut name255 = vec![0u8; 12];
        name255[5] = 1;
        for _ in 0..4 {
            name255.push(63);
            name255.extend_from_slice(&[b'x'; 63]);
        }
        name255.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(parse(&name255), Err(Pass::TooLong), "a 257-byte name");
    }

    #[test]
    fn names_up_to_the_limit_are_taken() {
        // 63 bytes + root = 64.
        let l = "a".repeat(62);
        let q = query(&l, 1, None);
        let p = parse(&q).unwrap();
        assert_eq!(p.name_len, 64);
        let q = query(&format!("{l}b"), 1, None);
        assert_eq!(parse(&q), Err(Pass::TooLong));
        assert_eq!(parse(&query(".", 2, None)).unwrap().name_len, 1, "the root");
    }

    #[test]
    fn answer_checksum_matches_a_full_computation() {
        let q = query("Provisioner-01.mgmt.deevnet.net", 1, None);
        let p = parse(&q).unwrap();
        for sections in [&[0xc0u8, 0x0c, 0, 1, 0, 1, 0, 0, 1, 44, 0, 4, 10, 10, 0, 10][..], &[1, 2, 3][..]] {
            let hdr = answer_header([q[0], q[1], q[2], q[3] | 0x10], [0x84, 0x80], [0, 1, 0, 0, 0, 0]);
            assert_eq!(&hdr[..4], &[0xab, 0xcd, 0x85, 0x90]);
            let mut udp = vec![0, 53, 0x9c, 0x40, 0, 0, 0, 0];
            udp.extend_from_slice(&hdr);
            udp.extend_from_slice(&q[12..]);
            udp.extend_from_slice(sections);
            let len = udp.len() as u16;
            udp[4..6].copy_from_slice(&len.to_be_bytes());
            let (s, d) = ([10, 20, 0, 1], [10, 20, 0, 50]);
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&s);
            pseudo.extend_from_slice(&d);
            pseudo.extend_from_slice(&[0, 17]);
            pseudo.extend_from_slice(&len.to_be_bytes());
            let want = !checksum::fold(checksum::add_bytes(checksum::add_bytes(0, &pseudo), &udp));
            let got =
                answer_checksum(s, d, 53, 40000, len, &hdr, p.question_sum, p.question_len(), sections_sum(sections));
            assert_eq!(got, want);
        }
    }

    #[test]
    fn replacing_a_ttl_updates_the_sum() {
        let mut s = vec![7u8; 41];
        for at in [0usize, 1, 5, 10, 37] {
            let before = sections_sum(&s);
            let old = u32::from_be_bytes(s[at..at + 4].try_into().unwrap());
            let new = old.wrapping_sub(12345) ^ 0x0100_0000;
            s[at..at + 4].copy_from_slice(&new.to_be_bytes());
            let got = sum_replace32(before, at, old, new);
            // One's complement: 0 and 0xffff are the same number.
            let want = sections_sum(&s);
            assert!(got == want || (got | want) == 0xffff && got != want, "at {at}: {got:#x} vs {want:#x}");
        }
    }
}
