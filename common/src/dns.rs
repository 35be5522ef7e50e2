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
/// TC (in header byte 2): the answer is truncated.
pub const FLAG_TC: u8 = 0x02;
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

/// Runs `body(i)` for `i` in `0..n` until it returns false. A plain loop
/// in the program too: the verifier walks it iteration by iteration, which
/// it does quickly for these short bodies, and the steps cost no calls
/// (a `bpf_loop` callback is a call and a return per step, which cost 10 ns
/// each on hosts whose returns go through a mitigation thunk).
#[inline(always)]
fn steps<F: FnMut(usize) -> bool>(n: usize, mut body: F) {
    let mut i = 0;
    while i < n && body(i) {
        i += 1;
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

/// A query as the parser takes it: the message from byte [`MSG_AT`].
/// [`parse_query`] reads nothing before the message and nothing past its
/// length (in the program's [`FrameBuf`] the UDP header comes before it,
/// and whatever an earlier query left after it).
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

/// Folds a sum of little-endian 16-bit words to 16 bits, still in
/// little-endian terms: a field computed from it is stored as it is.
#[inline(always)]
fn fold_le(mut acc: u64) -> u16 {
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    checksum::fold(acc as u32)
}

/// Folds a sum of little-endian 32-bit halves to the big-endian 16-bit sum
/// (RFC 1071 §2(B): byte order only swaps the result).
#[inline(always)]
fn le_sum_to_be(acc: u64) -> u16 {
    fold_le(acc).swap_bytes()
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
pub fn parse_query(buf: &QueryBuf, len: usize, name: &mut [u64; NAME_WORDS]) -> Result<Query, Pass> {
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
    steps(MAX_NAME / 2 + 1, |_| {
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
        key_flags = parse_opt(buf, q_end, len)?;
    }
    // The name, zeroed past its end, summed as received (with type and
    // class, which start on an odd offset when the name's length is odd),
    // then lower-cased.
    // Words past the name's end are zero without being read.
    let mut acc: u64 = 0;
    let mut k = 0;
    while k < NAME_WORDS {
        if k * 8 < name_len {
            // Message offset 12 is buffer offset 16: word 2.
            let w = mask_word(buf.word(2 + k), k, name_len);
            acc += add_halves(w);
            name[k] = lower_word(w);
        } else {
            name[k] = 0;
        }
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

/// The answer cache's key: a 64-bit hash of a question's words (the
/// lower-cased name, zero past its end, then type, class, key flags and
/// the name's length). Multiply and xor-shift per word, which the program
/// computes in a few instructions a word. Not keyed: colliding questions
/// only take each other's place in the cache (entries carry the whole
/// question, and a query is answered only by its own), and any client can
/// churn the cache by asking many names anyway.
#[inline(always)]
pub fn question_hash(words: &[u64; NAME_WORDS + 1]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h: u64 = 0x2545_f491_4f6c_dd1d;
    let mut k = 0;
    while k < NAME_WORDS + 1 {
        h = (h ^ words[k]).wrapping_mul(K);
        h ^= h >> 29;
        k += 1;
    }
    (h ^ (h >> 32)).wrapping_mul(K)
}

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
fn parse_opt(buf: &QueryBuf, at: usize, len: usize) -> Result<u8, Pass> {
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
    steps(MAX_OPTIONS, |_| {
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

/// Where frame byte 0 sits in a [`FrameBuf`]: two bytes in, so that the
/// IPv4 header starts on a word and every field the program reads or writes
/// lies within one aligned word.
pub const FRAME_AT: usize = 2;
/// Ethernet, IPv4 without options and UDP: where the DNS message starts.
pub const FRAME_DNS: usize = 42;
/// Where the [`QueryBuf`] view of a [`FrameBuf`] starts: its message is the
/// frame's.
const FRAME_QUERY_AT: usize = FRAME_AT + FRAME_DNS - MSG_AT;
/// A [`FrameBuf`]'s size: room for the headers and the longest query, and
/// for the whole [`QueryBuf`] view.
pub const FRAME_BUF_LEN: usize = FRAME_QUERY_AT + BUF_LEN;
const FRAME_WORDS: usize = FRAME_BUF_LEN / 8;
const _: () = assert!(FRAME_QUERY_AT.is_multiple_of(8) && FRAME_BUF_LEN.is_multiple_of(8));
const _: () = assert!(FRAME_AT + FRAME_DNS + QUERY_MAX <= FRAME_BUF_LEN);
/// Header bytes of an answer up to its question: the frame's headers and
/// the DNS header.
pub const ANSWER_HEADERS: usize = FRAME_DNS + HDR_LEN;

/// A frame as the program loads it (Ethernet, IPv4 without options, UDP,
/// a DNS query) from [`FRAME_AT`] on: the words are (frame offsets)
/// 0: -, destination MAC; 1: source MAC, EtherType; 2: version, TOS,
/// length, ID, fragment; 3: TTL, protocol, checksum, source address;
/// 4: destination address, ports; 5: UDP length and checksum, DNS ID and
/// flags; 6: DNS counts; 7 on: the question. Bytes past the frame's end
/// are whatever an earlier frame left there: nothing here reads them.
#[repr(C, align(8))]
#[derive(Clone)]
pub struct FrameBuf {
    pub bytes: [u8; FRAME_BUF_LEN],
}

impl Default for FrameBuf {
    fn default() -> Self {
        FrameBuf { bytes: [0; FRAME_BUF_LEN] }
    }
}

impl FrameBuf {
    /// Word `k` (little-endian).
    #[inline(always)]
    fn w(&self, k: usize) -> u64 {
        if k >= FRAME_WORDS {
            return 0;
        }
        // SAFETY: the buffer is 8-aligned and holds FRAME_WORDS words.
        u64::from_le(unsafe { (self.bytes.as_ptr() as *const u64).add(k).read() })
    }

    #[inline(always)]
    fn set(&mut self, k: usize, v: u64) {
        if k < FRAME_WORDS {
            // SAFETY: as in `w`.
            unsafe { (self.bytes.as_mut_ptr() as *mut u64).add(k).write(v.to_le()) };
        }
    }

    /// The DNS message as the parser takes it.
    #[inline(always)]
    pub fn query(&self) -> &QueryBuf {
        // SAFETY: QueryBuf is a repr(C, align(8)) wrapper of [u8; BUF_LEN];
        // FRAME_QUERY_AT is a multiple of 8 and the buffer holds BUF_LEN
        // bytes from it (asserted above).
        unsafe { &*(self.bytes.as_ptr().add(FRAME_QUERY_AT) as *const QueryBuf) }
    }

    /// The Ethernet destination is a group address (broadcast, multicast).
    #[inline(always)]
    pub fn to_group(&self) -> bool {
        (self.w(0) >> 16) & 1 != 0
    }

    /// The IPv4 source address, host order.
    #[inline(always)]
    pub fn saddr(&self) -> u32 {
        ((self.w(3) >> 32) as u32).swap_bytes()
    }

    /// The UDP source port, host order.
    #[inline(always)]
    pub fn sport(&self) -> u16 {
        ((self.w(4) >> 32) as u16).swap_bytes()
    }

    /// The IPv4 header (20 bytes, no options) sums to 0xffff.
    #[inline(always)]
    pub fn ipv4_header_ok(&self) -> bool {
        fold_le(add_halves(self.w(2)) + add_halves(self.w(3)) + (self.w(4) & 0xffff_ffff)) == 0xffff
    }

    /// The UDP checksum of a datagram with a DNS message of `msg_len` bytes
    /// is absent (0) or right (RFC 768: pseudo header, header, data).
    #[inline(always)]
    pub fn udp_checksum_ok(&self, msg_len: usize) -> bool {
        if (self.w(5) >> 16) & 0xffff == 0 {
            return true;
        }
        let end = FRAME_AT + FRAME_DNS + msg_len;
        let udp_len = (8 + msg_len) as u16;
        // Source address; destination address and ports; from the UDP
        // length on, the words up to the end, the last one cut there.
        let mut acc = (self.w(3) >> 32) + add_halves(self.w(4));
        acc += u64::from(17u16.swap_bytes()) + u64::from(udp_len.swap_bytes());
        let mut k = 5;
        while k < FRAME_WORDS {
            if k * 8 >= end {
                break;
            }
            acc += add_halves(mask_word(self.w(k), k, end));
            k += 1;
        }
        fold_le(acc) == 0xffff
    }

    /// Turns the query into its answer's headers in place: Ethernet and
    /// IPv4 addresses and UDP ports swapped, the query's IPv4 ID, DF and TTL
    /// 64 (as Linux sends the agent's answers), the DNS header with the
    /// query's ID, RD and CD, the answer's `flags` (QR, AA, RA, rcode) and
    /// section `counts`, both checksums. The question stays as received.
    /// The answer's first [`ANSWER_HEADERS`] + `question_len` bytes are then
    /// at [`FRAME_AT`]; `sections_len` bytes summing to `sections_sum` (laid
    /// out from an even offset) follow them in the frame.
    #[inline(always)]
    pub fn turn_around(
        &mut self,
        flags: [u8; 2],
        counts: [u8; 6],
        question_sum: u16,
        question_len: usize,
        sections_len: usize,
        sections_sum: u16,
    ) {
        let (w0, w1, w2, w3, w4, w5) = (self.w(0), self.w(1), self.w(2), self.w(3), self.w(4), self.w(5));
        const MAC: u64 = 0xffff_ffff_ffff;
        self.set(0, (w0 & 0xffff) | ((w1 & MAC) << 16));
        self.set(1, (w0 >> 16) | (u64::from(0x0800u16.swap_bytes()) << 48));
        let udp_len = (8 + HDR_LEN + question_len + sections_len) as u16;
        // Version 4, IHL 5, TOS 0; length; the query's ID; DF.
        let ip0 = 0x45 | (u64::from((udp_len + 20).swap_bytes()) << 16) | (w2 & 0xffff_0000_0000) | (0x40 << 48);
        // TTL, UDP, checksum 0 for now, the query's destination as source.
        let mut ip1 = 64 | (17 << 8) | ((w4 & 0xffff_ffff) << 32);
        // The query's source as destination; port 53 to the query's port.
        let ports = (w3 >> 32) | (u64::from(53u16.swap_bytes()) << 32) | (((w4 >> 32) & 0xffff) << 48);
        ip1 |= u64::from(!fold_le(add_halves(ip0) + add_halves(ip1) + (ports & 0xffff_ffff))) << 16;
        let rd_cd = (u64::from(FLAG_RD) << 48) | (u64::from(FLAG_CD) << 56);
        let dns_flags = (u64::from(flags[0]) << 48) | (u64::from(flags[1]) << 56);
        let mut udp = u64::from(udp_len.swap_bytes()) | (w5 & 0xffff_0000_0000) | (w5 & rd_cd) | dns_flags;
        let c = counts;
        let dns_counts = u64::from_le_bytes([0, 1, c[0], c[1], c[2], c[3], c[4], c[5]]);
        // The sections follow the question: on an odd offset after an odd
        // question, which swaps their bytes within the 16-bit words.
        let sections = if question_len & 1 == 1 { sections_sum } else { sections_sum.swap_bytes() };
        let acc = (ip1 >> 32)
            + add_halves(ports)
            + add_halves(udp)
            + add_halves(dns_counts)
            + u64::from(17u16.swap_bytes())
            + u64::from(udp_len.swap_bytes())
            + u64::from(question_sum.swap_bytes())
            + u64::from(sections);
        let c = !fold_le(acc);
        udp |= u64::from(if c == 0 { 0xffff } else { c }) << 16;
        self.set(2, ip0);
        self.set(3, ip1);
        self.set(4, ports);
        self.set(5, udp);
        self.set(6, dns_counts);
    }
}

/// What response rate limiting does with an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// Within the rate: send it.
    Send,
    /// Over the rate, its turn to slip: send it truncated (TC set, no
    /// records), so a real client asks again over TCP.
    Slip,
    /// Over the rate: send nothing.
    Drop,
}

/// Response rate limiting of one client prefix (the program's and the
/// agent's, as Knot's and BIND's RRL limit answers): GCRA, the token bucket
/// written as a schedule. `tat` is when the prefix's next answer is due at
/// the sustained rate (one per `interval` ns); an answer may run at most
/// `burst` ns ahead of the present (a burst of `burst / interval + 1`).
/// Over it, every `slip`-th answer slips (0: none); `limited` counts the
/// others since the last slip.
#[inline(always)]
pub fn rate_limit(tat: &mut u64, limited: &mut u32, now: u64, interval: u64, burst: u64, slip: u32) -> Limit {
    let due = if *tat < now { now } else { *tat };
    if due - now <= burst {
        *tat = due + interval;
        return Limit::Send;
    }
    *limited += 1;
    if slip != 0 && *limited >= slip {
        *limited = 0;
        return Limit::Slip;
    }
    Limit::Drop
}

/// Writes a query frame to `out`: Ethernet (02:00:00:00:00:02 to/// Writes a query frame to `out`: Ethernet (02:00:00:00:00:02 to
/// 02:00:00:00:00:01), IPv4 from `src` to `dst` (ID 0x1234, DF, TTL 64),
/// UDP from `sport` to port 53, the DNS message `msg`; checksums complete.
/// Returns its length, or `None` when `out` is too short. For tests and
/// `coresvc devtool dns-cost`.
pub fn query_frame(out: &mut [u8], src: [u8; 4], dst: [u8; 4], sport: u16, msg: &[u8]) -> Option<usize> {
    let n = FRAME_DNS + msg.len();
    let f = out.get_mut(..n)?;
    let udp_len = (8 + msg.len()) as u16;
    f[..14].copy_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 8, 0]);
    f[14..26].copy_from_slice(&[0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0]);
    f[16..18].copy_from_slice(&(udp_len + 20).to_be_bytes());
    f[26..30].copy_from_slice(&src);
    f[30..34].copy_from_slice(&dst);
    let c = checksum::checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&53u16.to_be_bytes());
    f[38..40].copy_from_slice(&udp_len.to_be_bytes());
    f[40..42].copy_from_slice(&[0, 0]);
    f[42..].copy_from_slice(msg);
    let sum = checksum::add_bytes(0, &f[26..34]) + 17 + u32::from(udp_len);
    let c = !checksum::fold(checksum::add_bytes(sum, &f[34..]));
    f[40..42].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
    Some(n)
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
        let q = parse_query(&b, msg.len(), &mut name)?;
        Ok((q, name_bytes(&name)))
    }

    fn parse(msg: &[u8]) -> Result<Query, Pass> {
        parse_named(msg).map(|(q, _)| q)
    }

    /// A rate of 10 per second with a burst of 5: five at once, then one
    /// per 100 ms; over it every second answer slips (slip 2), none with 0.
    #[test]
    fn rate_limit_is_a_token_bucket_with_slip() {
        const MS: u64 = 1_000_000;
        let (interval, burst) = (100 * MS, 4 * 100 * MS);
        let (mut tat, mut limited) = (0, 0);
        let t0 = 1_000_000 * MS;
        let mut step = |now: u64, slip: u32| rate_limit(&mut tat, &mut limited, now, interval, burst, slip);
        for i in 0..5 {
            assert_eq!(step(t0, 2), Limit::Send, "burst {i}");
        }
        let over: Vec<Limit> = (0..4).map(|_| step(t0, 2)).collect();
        assert_eq!(over, [Limit::Drop, Limit::Slip, Limit::Drop, Limit::Slip]);
        assert_eq!(step(t0 + 50 * MS, 0), Limit::Drop, "not yet");
        assert_eq!(step(t0 + 100 * MS, 0), Limit::Send, "one per interval");
        assert_eq!(step(t0 + 100 * MS, 0), Limit::Drop);
        // A second later the burst is back (and no more).
        let later = t0 + 2_000 * MS;
        let sent = (0..10).filter(|_| step(later, 0) == Limit::Send).count();
        assert_eq!(sent, 5);
        // Over a long run: the rate.
        let (mut tat, mut limited) = (0, 0);
        let mut n = 0;
        for ms in 0..10_000u64 {
            for _ in 0..3 {
                if rate_limit(&mut tat, &mut limited, t0 + ms * MS, interval, burst, 0) == Limit::Send {
                    n += 1;
                }
            }
        }
        assert!((100..=106).contains(&n), "{n} in 10 s at 10/s");
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

    /// A query frame around `msg` from `src`:`sport` to `dst` (the UDP
    /// checksum left out when `udp_csum` is false).
    fn frame(src: [u8; 4], dst: [u8; 4], sport: u16, msg: &[u8], udp_csum: bool) -> Vec<u8> {
        let mut f = vec![0; FRAME_DNS + msg.len()];
        query_frame(&mut f, src, dst, sport, msg).unwrap();
        assert_eq!(udp_checksum(&f), u16::from_be_bytes([f[40], f[41]]));
        if !udp_csum {
            f[40..42].copy_from_slice(&[0, 0]);
        }
        f
    }

    /// The UDP checksum of `f` as it should be (its own field taken as 0).
    fn udp_checksum(f: &[u8]) -> u16 {
        let mut pseudo = f[26..34].to_vec();
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&f[38..40]);
        let mut udp = f[34..].to_vec();
        udp[6..8].copy_from_slice(&[0, 0]);
        let c = !checksum::fold(checksum::add_bytes(checksum::add_bytes(0, &pseudo), &udp));
        if c == 0 { 0xffff } else { c }
    }

    /// `f` loaded as the program loads it, over a buffer that holds an
    /// earlier frame's bytes.
    fn loaded(f: &[u8]) -> FrameBuf {
        let mut b = FrameBuf { bytes: [0xa5; FRAME_BUF_LEN] };
        b.bytes[FRAME_AT..FRAME_AT + f.len()].copy_from_slice(f);
        b
    }

    #[test]
    fn frame_checks_read_the_right_fields() {
        let (c, g) = ([10, 20, 0, 50], [10, 20, 0, 1]);
        for name in ["a", "ab", "Provisioner-01.mgmt.deevnet.net"] {
            for csum in [true, false] {
                let q = query(name, 1, None);
                let f = frame(c, g, 40000, &q, csum);
                let b = loaded(&f);
                assert!(b.ipv4_header_ok() && b.udp_checksum_ok(q.len()), "{name}");
                assert_eq!((b.saddr(), b.sport(), b.to_group()), (0x0a14_0032, 40000, false));
                assert_eq!(parse(&q), parse_query(b.query(), q.len(), &mut [0; NAME_WORDS]));
                let mut bad = f.clone();
                bad[25] ^= 1;
                assert!(!loaded(&bad).ipv4_header_ok());
                let mut bad = f.clone();
                *bad.last_mut().unwrap() ^= 0x10;
                assert_eq!(loaded(&bad).udp_checksum_ok(q.len()), !csum, "{name}: a changed byte");
                bad[0] = 0xff;
                assert!(loaded(&bad).to_group());
            }
        }
    }

    #[test]
    fn turn_around_builds_the_answer_headers() {
        let (c, g) = ([10, 20, 0, 50], [10, 20, 0, 1]);
        for name in ["Provisioner-01.mgmt.deevnet.net", "ab.c"] {
            let mut q = query(name, 1, None);
            q[3] |= 0x10; // CD
            let p = parse(&q).unwrap();
            let f = frame(c, g, 40000, &q, true);
            for sections in [&[0xc0u8, 0x0c, 0, 1, 0, 1, 0, 0, 1, 44, 0, 4, 10, 10, 0, 10][..], &[1, 2, 3][..]] {
                let mut b = loaded(&f);
                let counts = [0, 1, 0, 0, 0, 0];
                b.turn_around(
                    [0x84, 0x80],
                    counts,
                    p.question_sum,
                    p.question_len(),
                    sections.len(),
                    sections_sum(sections),
                );
                let n = ANSWER_HEADERS + p.question_len();
                let mut got = b.bytes[FRAME_AT..FRAME_AT + n].to_vec();
                got.extend_from_slice(sections);
                // The same answer, byte by byte.
                let mut want = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 8, 0];
                let udp_len = (8 + 12 + p.question_len() + sections.len()) as u16;
                want.extend_from_slice(&[0x45, 0]);
                want.extend_from_slice(&(udp_len + 20).to_be_bytes());
                want.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, 17, 0, 0]);
                want.extend_from_slice(&g);
                want.extend_from_slice(&c);
                let ipc = checksum::checksum(&want[14..34]);
                want[24..26].copy_from_slice(&ipc.to_be_bytes());
                want.extend_from_slice(&53u16.to_be_bytes());
                want.extend_from_slice(&40000u16.to_be_bytes());
                want.extend_from_slice(&udp_len.to_be_bytes());
                want.extend_from_slice(&[0, 0, 0xab, 0xcd, 0x85, 0x90, 0, 1, 0, 1, 0, 0, 0, 0]);
                want.extend_from_slice(&q[12..]);
                want.extend_from_slice(sections);
                let uc = udp_checksum(&want);
                want[40..42].copy_from_slice(&uc.to_be_bytes());
                assert_eq!(got, want, "{name}, {} bytes of sections", sections.len());
            }
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
            assert!(got == want || (got | want) == 0xffff, "at {at}: {got:#x} vs {want:#x}");
        }
    }
}
