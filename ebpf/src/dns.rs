//! The DNS answer cache on the segments: a query for a question the agent
//! answered before is answered here, in place, with XDP_TX.
//!
//! Only UDP to the segment's own address (its DNS service) on port 53, from
//! a host on the segment, is looked at. The query must be one the agent
//! would answer exactly like the cached answer: `coresvc_common::dns::
//! parse_query` decides that and computes the key, the same code the agent
//! uses when it fills the cache. The answer is the query's Ethernet, IPv4
//! and UDP headers turned around, a DNS header with the query's ID, RD and
//! CD, the question bytes exactly as received, and the cached sections
//! (TTLs of forwarded records aged by the seconds since they were stored).
//! Everything else passes to the stack, counted by reason. Nothing is
//! written to the frame before the last check has passed.

use aya_ebpf::{
    bindings::xdp_action,
    cty::c_void,
    helpers::{
        bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_load_bytes,
        bpf_xdp_store_bytes,
    },
    programs::XdpContext,
};
use coresvc_common::{
    dns::{self, ANSWER_HEADERS, FRAME_AT, Limit, Pass, QUERY_MAX},
    firewall::{Flow, ZONE_GATEWAY},
    proto::{eth, ipproto, ipv4, port},
};
use coresvc_maps_schema::{
    DNS_KEY_WORDS, DNS_MAX_AGING, DNS_MAX_SECTIONS, DNS_MAX_ZONES, DNS_RRL_SLOTS, DnsAnswer, DnsRrlBucket, IfaceInfo,
    SETTINGS_F_FIREWALL, Settings, dns_counter as counter, dns_verdict,
};

use crate::{
    firewall,
    maps::{DNS_CACHE, DNS_EPOCHS, DNS_RRL, DNS_RRL_CFG, DNS_SCRATCH, DNS_STATS},
    packet::{frame_len, ptr_at, ptr_at_mut},
};

/// Offsets in a frame without VLAN tags or IP options.
const L3: usize = eth::HDR_LEN;
const L4: usize = L3 + ipv4::MIN_HDR_LEN;
const DNS_AT: usize = L4 + 8;
const NS_PER_SEC: u64 = 1_000_000_000;

/// `Some(verdict)` when the query was answered (or the frame could not be
/// restored), `None` to continue with the normal path. A function of its
/// own (a BPF subprogram): its stack frame is separate from the rest of the
/// ingress path's.
#[inline(never)]
pub fn answer(ctx: &XdpContext, settings: &Settings, iface: &IfaceInfo) -> Option<u32> {
    // Every UDP or TCP frame is at least this long.
    let h = ptr_at::<[u8; DNS_AT], XdpContext>(ctx, 0)? as *const u8;
    if rd16(h, eth::ETHERTYPE) != eth::P_IPV4 || rd32(h, L3 + ipv4::DST) != u32::from_ne_bytes(iface.ipv4) {
        return None;
    }
    // SAFETY (all reads of `h`): ptr_at checked DNS_AT bytes.
    let (ver_ihl, proto) = unsafe { (*h.add(L3), *h.add(L3 + ipv4::PROTO)) };
    let frag = rd16(h, L3 + ipv4::FRAG);
    // (A later fragment has no ports to tell DNS by.)
    if ver_ihl >> 4 != 4 || (proto != ipproto::UDP && proto != ipproto::TCP) || frag & ipv4::FRAG_OFFSET_MASK != 0 {
        return None;
    }
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    let ports = ptr_at::<[u8; 4], XdpContext>(ctx, L3 + (ihl & 0x3c))?;
    if ihl < ipv4::MIN_HDR_LEN || rd16(ports as *const u8, 2) != port::DNS {
        return None;
    }
    let seg = iface.segment;
    let c = if proto == ipproto::TCP {
        counter::TCP
    } else if ihl != ipv4::MIN_HDR_LEN || frag & ipv4::FRAG_MF != 0 {
        counter::IP
    } else {
        match serve(ctx, settings, iface, seg) {
            Ok(v) => return Some(v),
            Err(c) => c,
        }
    };
    count(seg, c);
    None
}

/// Checks, looks up and answers a UDP query to the segment's address, port
/// 53 (IHL 5, not a fragment). `Err(counter)`: the frame is untouched and
/// continues on the normal path.
///
/// The frame is loaded into DNS_SCRATCH with one helper call, two bytes in,
/// so that every header field is read (and the answer's headers written)
/// in aligned words instead of byte by byte.
#[inline(always)]
fn serve(ctx: &XdpContext, settings: &Settings, iface: &IfaceInfo, seg: u32) -> Result<u32, u32> {
    let h = ptr_at::<[u8; DNS_AT], XdpContext>(ctx, 0).ok_or(counter::MALFORMED)? as *const u8;
    let tot_len = usize::from(rd16(h, L3 + ipv4::TOT_LEN));
    let frame = frame_len(ctx);
    let udp_len = usize::from(rd16(h, L4 + 4));
    if tot_len < ipv4::MIN_HDR_LEN + 8 || L3 + tot_len > frame || udp_len != tot_len - ipv4::MIN_HDR_LEN {
        return Err(counter::MALFORMED);
    }
    let len = udp_len - 8;
    if len < dns::HDR_LEN {
        return Err(counter::MALFORMED);
    }
    if len > QUERY_MAX {
        return Err(counter::TOO_LONG);
    }
    let scratch = DNS_SCRATCH.get_ptr_mut(0).ok_or(counter::NO_ROOM)?;
    // SAFETY: this CPU's slot, used by this program run only.
    let (key, f) = unsafe { &mut *scratch }.split();
    let n = bounded((DNS_AT + len) as u32, (DNS_AT + QUERY_MAX) as u32).ok_or(counter::TOO_LONG)?;
    // SAFETY: the buffer holds FRAME_BUF_LEN bytes, at least DNS_AT +
    // QUERY_MAX from FRAME_AT.
    let rc = unsafe { bpf_xdp_load_bytes(ctx.ctx, 0, f.bytes.as_mut_ptr().add(FRAME_AT) as *mut c_void, n) };
    if rc != 0 {
        return Err(counter::MALFORMED);
    }
    if !f.ipv4_header_ok() {
        return Err(counter::CHECKSUM);
    }
    // A unicast frame from a host of the segment (the agent serves the
    // segments' networks only; broadcasts get no answer from here).
    if f.to_group() || !on_segment(iface, f.saddr()) {
        return Err(counter::SOURCE);
    }
    if f.sport() == 0 {
        return Err(counter::MALFORMED);
    }
    // The stack drops a datagram with a bad checksum: so does the cache.
    if !f.udp_checksum_ok(len) {
        return Err(counter::CHECKSUM);
    }
    let q = dns::parse_query(f.query(), len, key.name_words()).map_err(pass_counter)?;
    key.qtype = q.qtype;
    key.qclass = q.qclass;
    key.flags = q.flags;
    key.name_len = q.name_len as u8;
    key._pad = [0; 2];
    let question = key.words();
    // SAFETY: the entry is only read, and copied into the frame below.
    let e: &DnsAnswer = unsafe { DNS_CACHE.get(&dns::question_hash(question)) }.ok_or(counter::MISSES)?;
    if !same(e.question.words(), question) {
        // Another question with the same hash.
        return Err(counter::MISSES);
    }
    if e.flags[0] & dns::FLAG_RD != 0 && f.query().at(2) & dns::FLAG_RD == 0 {
        // An answer for queries with RD set (a chain the agent followed
        // upstream); without RD the agent answers with the local part.
        return Err(counter::MISSES);
    }
    let mut now = clock();
    // Past its expiry, or past the end a clean stop of the agent set.
    let until = settings.dns_cache_until_ns;
    if now >= e.expires_ns || (until != 0 && now >= until) {
        return Err(counter::EXPIRED);
    }
    // The coarse clock decides alone far from the expiry, for answers whose
    // TTLs do not age (local data); near it, and for forwarded answers
    // (aged by whole seconds, as the agent ages them), the precise one.
    if e.aging != 0 || e.expires_ns - now < NS_PER_SEC {
        // SAFETY: no preconditions.
        now = unsafe { bpf_ktime_get_ns() };
        if now >= e.expires_ns {
            return Err(counter::EXPIRED);
        }
    }
    if !current(e) {
        return Err(counter::INVALIDATED);
    }
    let slen = usize::from(e.sections_len);
    if slen == 0 || slen > DNS_MAX_SECTIONS {
        return Err(counter::MISSES);
    }
    if settings.flags & SETTINGS_F_FIREWALL != 0 {
        // Traffic to the gateway is judged packet by packet: this one too.
        // The agent wrote the rule bank's decision for this segment's
        // queries with the bank; the scan is for rule sets where a rule
        // with prefixes could decide.
        let bank = if settings.active_bank & 1 == 0 { &settings.dns_verdict[0] } else { &settings.dns_verdict[1] };
        let (slot, allow) = match dns_verdict::decode(bank[(seg & 63) as usize]) {
            Some(v) => v,
            None => {
                let flow =
                    Flow { from: firewall::zone_of(iface), to: ZONE_GATEWAY, proto: ipproto::UDP, dport: port::DNS };
                firewall::evaluate(settings, &flow, iface.ipv4)
            }
        };
        if !allow {
            return Err(counter::FIREWALL);
        }
        firewall::count(slot, frame as u64);
    }
    let qlen = q.question_len();
    let packed = (u32::from(q.question_sum) << 16) | ((seg & 63) << SEG_SHIFT) | qlen as u32;
    // Response rate limiting: over the client prefix's rate the answer is
    // dropped, or (every slip-th) sent truncated.
    match rate_limit(f.saddr(), now) {
        Limit::Send => {}
        Limit::Drop => {
            count(seg, counter::RATE_LIMITED);
            return Ok(xdp_action::XDP_DROP);
        }
        Limit::Slip => {
            let delta = (ANSWER_HEADERS + qlen) as i32 - frame as i32;
            // SAFETY: no preconditions (the frame only shrinks).
            if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
                return Err(counter::NO_ROOM);
            }
            return Ok(slip(ctx, u32::from(e.flags[0]) | (u32::from(e.flags[1]) << 8), packed));
        }
    }
    let delta = (ANSWER_HEADERS + qlen + slen) as i32 - frame as i32;
    // The frame is resized at its tail, which leaves the question where
    // the answer has it (the headers before it are as long as the query's):
    // only the headers and the sections are written. Where the tailroom is
    // short (small skbs in generic mode) it grows at its head instead
    // (drivers keep 256 bytes there for XDP), and the question is written
    // too. On failure the frame is unchanged.
    // SAFETY: no preconditions.
    let in_place = unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) == 0 };
    // SAFETY: no preconditions.
    if !in_place && (delta <= 0 || unsafe { bpf_xdp_adjust_head(ctx.ctx, -delta) } != 0) {
        return Err(counter::NO_ROOM);
    }
    // From here on the frame is changed: never back to the normal path.
    let moved = if in_place { 0 } else { MOVED };
    Ok(build(ctx, e, now, packed | moved, e.expires_ns))
}

/// The rate limit's verdict for an answer to `saddr` (host order) at `now`
/// (`DNS_RRL_CFG`; off: always [`Limit::Send`]). The prefix's slot in
/// `DNS_RRL` is this CPU's: a prefix gets the rate on every CPU that
/// answers it.
#[inline(always)]
fn rate_limit(saddr: u32, now: u64) -> Limit {
    let Some(cfg) = DNS_RRL_CFG.get(0) else { return Limit::Send };
    if cfg.interval_ns == 0 {
        return Limit::Send;
    }
    let prefix = saddr & cfg.prefix_mask;
    let slot = (prefix.wrapping_mul(0x9e37_79b1) >> 16) & (DNS_RRL_SLOTS - 1);
    let Some(b) = DNS_RRL.get_ptr_mut(slot) else { return Limit::Send };
    // SAFETY: this CPU's slot, used by this program run only.
    let b = unsafe { &mut *b };
    if b.prefix != prefix {
        // Another prefix's slot: it is this one's now.
        *b = DnsRrlBucket { tat_ns: 0, prefix, limited: 0 };
    }
    dns::rate_limit(&mut b.tat_ns, &mut b.limited, now, cfg.interval_ns, cfg.burst_ns, cfg.slip)
}

/// Answers with the headers and the question alone, TC set (the frame is
/// already that long): a rate-limited client that is real asks again over
/// TCP. `flags` holds the entry's header bytes 2 (low byte) and 3; `packed`
/// is `build`'s. A subprogram of its own.
#[inline(never)]
fn slip(ctx: &XdpContext, flags: u32, packed: u32) -> u32 {
    let seg = (packed >> SEG_SHIFT) & 63;
    let qlen = ((packed & 0xff) as usize).clamp(5, dns::MAX_NAME + 4);
    let Some(scratch) = DNS_SCRATCH.get_ptr_mut(0) else { return unwritten(seg) };
    // SAFETY: this CPU's slot, filled by `serve` for this frame.
    let (_, f) = unsafe { &mut *scratch }.split();
    // RD marks an RD-only entry there; the query's own RD is copied.
    let flags = [(flags as u8 & !dns::FLAG_RD) | dns::FLAG_TC, (flags >> 8) as u8];
    f.turn_around(flags, [0; 6], (packed >> 16) as u16, qlen, 0, 0);
    let Some(to) = ptr_at_mut::<[u8; ANSWER_HEADERS], XdpContext>(ctx, 0) else { return unwritten(seg) };
    // SAFETY: as in `build`.
    unsafe { copy_headers(to as *mut u8, f.bytes.as_ptr() as *const u64) };
    count(seg, counter::SLIPPED);
    xdp_action::XDP_TX
}

/// In `build`'s `packed`: the question moved with the frame's start.
const MOVED: u32 = 1 << 8;
/// In `build`'s `packed`: where the segment's number (below 64) is.
const SEG_SHIFT: u32 = 9;

/// Writes the whole answer into the frame (already of the answer's
/// length): the entry `e`'s sections, then the headers from the query kept
/// in DNS_SCRATCH, turned around, and the question when it [`MOVED`].
/// `packed` holds the question's sum (high half), the segment, that flag
/// and the question's length (low byte), five arguments being the most a
/// BPF function takes; `expires` is the entry's expiry as checked. A
/// subprogram of its own (its stack frame is not the caller's).
#[inline(never)]
fn build(ctx: &XdpContext, e: &DnsAnswer, now: u64, packed: u32, expires: u64) -> u32 {
    let seg = (packed >> SEG_SHIFT) & 63;
    let qlen = ((packed & 0xff) as usize).clamp(5, dns::MAX_NAME + 4);
    let slen = usize::from(e.sections_len).clamp(1, DNS_MAX_SECTIONS);
    let sections_at = ANSWER_HEADERS + qlen;
    let Some(scratch) = DNS_SCRATCH.get_ptr_mut(0) else { return unwritten(seg) };
    // SAFETY: this CPU's slot, filled by `serve` for this frame.
    let (key, f) = unsafe { &mut *scratch }.split();
    // SAFETY: `slen` bytes of the entry's sections (within the map value);
    // the helper checks the frame's bounds.
    let rc =
        unsafe { bpf_xdp_store_bytes(ctx.ctx, sections_at as u32, e.sections.as_ptr() as *mut c_void, slen as u32) };
    if rc != 0 {
        return unwritten(seg);
    }
    let sections_sum = age_ttls(ctx, e, sections_at, slen, now);
    f.turn_around(e.flags, e.counts, (packed >> 16) as u16, qlen, slen, sections_sum);
    // The map reuses an entry at once when the agent replaces or evicts it:
    // one that changed while it was read (its question, or its expiry for
    // the same question stored again; both come before the sections in the
    // value) may have given a mix. Nothing of it goes out.
    if e.expires_ns != expires || !same(e.question.words(), key.words()) {
        count(seg, counter::CHANGED);
        return xdp_action::XDP_DROP;
    }
    if packed & MOVED == 0 {
        // The headers alone, stored directly (cheaper than the helper).
        let Some(to) = ptr_at_mut::<[u8; ANSWER_HEADERS], XdpContext>(ctx, 0) else { return unwritten(seg) };
        // SAFETY: the frame's ANSWER_HEADERS bytes are checked above; the
        // buffer is 8-aligned and longer than 56 bytes.
        unsafe { copy_headers(to as *mut u8, f.bytes.as_ptr() as *const u64) };
    } else {
        // SAFETY: the headers and the question (at most ANSWER_HEADERS +
        // MAX_NAME + 4 bytes) lie within the buffer from FRAME_AT.
        let rc = unsafe {
            bpf_xdp_store_bytes(ctx.ctx, 0, f.bytes.as_mut_ptr().add(FRAME_AT) as *mut c_void, sections_at as u32)
        };
        if rc != 0 {
            return unwritten(seg);
        }
    }
    count(seg, counter::HITS);
    xdp_action::XDP_TX
}

/// Copies the answer's [`ANSWER_HEADERS`] (54) bytes from a [`FrameBuf`]'s
/// bytes (`from`, 8-aligned, holding them from [`FRAME_AT`]) to the frame:
/// whole aligned words of the buffer, as `turn_around` just stored them
/// (a load straddling two fresh stores stalls until they reach the cache;
/// `memcpy` would also be a call).
///
/// # Safety
/// `to` is valid for 54 bytes, `from` for 56 and 8-aligned.
///
/// [`FrameBuf`]: coresvc_common::dns::FrameBuf
#[inline(always)]
unsafe fn copy_headers(to: *mut u8, from: *const u64) {
    const _: () = assert!(ANSWER_HEADERS == 54 && FRAME_AT == 2);
    // SAFETY: the caller's.
    unsafe {
        // Buffer word k holds frame bytes 8k - 2 .. 8k + 6.
        let w0 = from.read();
        to.cast::<u32>().write_unaligned((w0 >> 16) as u32);
        to.add(4).cast::<u16>().write_unaligned((w0 >> 48) as u16);
        let mut k = 1;
        while k < 7 {
            to.add(8 * k - 2).cast::<u64>().write_unaligned(from.add(k).read());
            k += 1;
        }
    }
}

/// The frame was resized but the answer could not be written (cannot
/// happen: it was sized for it). The query goes on as it is (resized at
/// its tail, the stack trims it to its IPv4 length; at its head, the
/// stack drops it).
#[inline(always)]
fn unwritten(seg: u32) -> u32 {
    count(seg, counter::NO_ROOM);
    xdp_action::XDP_PASS
}

/// Lowers the TTLs of forwarded records by the whole seconds since they
/// were stored (as the agent does); returns the sections' sum afterwards.
#[inline(always)]
fn age_ttls(ctx: &XdpContext, e: &DnsAnswer, sections_at: usize, slen: usize, now: u64) -> u16 {
    let mut sum = e.sections_sum;
    let n = usize::from(e.aging);
    let age = now.saturating_sub(e.stored_ns) / NS_PER_SEC;
    if n == 0 || age == 0 {
        return sum;
    }
    let age = age.min(u64::from(u32::MAX)) as u32;
    let mut i = 0;
    while i < DNS_MAX_AGING {
        if i >= n {
            break;
        }
        let at = usize::from(e.ttl_at[i]);
        if at + 4 <= slen {
            if let Some(old) = e.sections.get(at..at + 4) {
                let old = u32::from_be_bytes([old[0], old[1], old[2], old[3]]);
                let new = old.saturating_sub(age);
                if let Some(p) = ptr_at_mut::<[u8; 4], XdpContext>(ctx, sections_at + (at & 0x1ff)) {
                    // SAFETY: ptr_at_mut checked the bounds.
                    unsafe { *p = new.to_be_bytes() };
                    sum = dns::sum_replace32(sum, at, old, new);
                }
            }
        }
        i += 1;
    }
    sum
}

/// The two questions are equal (word by word: no call to `bcmp`).
#[inline(always)]
fn same(a: &[u64; DNS_KEY_WORDS], b: &[u64; DNS_KEY_WORDS]) -> bool {
    let mut d = 0;
    let mut k = 0;
    while k < DNS_KEY_WORDS {
        d |= a[k] ^ b[k];
        k += 1;
    }
    d == 0
}

/// The time to judge expiry and age TTLs by, in CLOCK_MONOTONIC ns (the
/// agent's clock), never behind it: the coarse clock (updated every tick;
/// half the cost of the precise clock's helper here) plus [`CLOCK_LAG_NS`].
/// Entries stop being served up to that much before they expire, and TTLs
/// age up to that much early: the agent answers in that window.
#[inline(always)]
fn clock() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }.saturating_add(CLOCK_LAG_NS)
}

/// The coarse clock lags the precise one by at most a tick (10 ms at the
/// lowest HZ); twice that, to be safe.
const CLOCK_LAG_NS: u64 = 20_000_000;

/// True while every epoch the entry depends on is still in force.
#[inline(always)]
fn current(e: &DnsAnswer) -> bool {
    let n = usize::from(e.zones);
    if n == 0 || n > DNS_MAX_ZONES {
        return false;
    }
    let mut i = 0;
    while i < DNS_MAX_ZONES {
        if i < n {
            match DNS_EPOCHS.get(u32::from(e.slots[i])) {
                Some(v) if *v == e.epochs[i] => {}
                _ => return false,
            }
        }
        i += 1;
    }
    true
}

/// The source (host order) is a host of the segment, not the gateway.
#[inline(always)]
fn on_segment(iface: &IfaceInfo, saddr: u32) -> bool {
    let plen = u32::from(iface.prefix_len);
    let own = u32::from_be_bytes(iface.ipv4);
    if plen == 0 || plen > 32 || saddr == own {
        return false;
    }
    let mask = if plen == 32 { u32::MAX } else { !(u32::MAX >> plen) };
    (saddr ^ own) & mask == 0
}

/// `v` if it is 1 to `max`, checked where the verifier sees it: a length
/// the compiler knows to be in range from earlier checks would otherwise
/// reach a helper without them (they were made on another register).
#[inline(always)]
fn bounded(v: u32, max: u32) -> Option<u32> {
    // SAFETY: a plain read of a local (volatile: the compiler cannot skip
    // the comparison below, nor compare another copy of the value).
    let v = unsafe { core::ptr::read_volatile(&v) };
    if v == 0 || v > max { None } else { Some(v) }
}

/// The big-endian u16 at `p + off` (bounds checked by the caller).
#[inline(always)]
fn rd16(p: *const u8, off: usize) -> u16 {
    // SAFETY: the caller checked the bounds; unaligned reads are fine.
    u16::from_be(unsafe { p.add(off).cast::<u16>().read_unaligned() })
}

/// The four bytes at `p + off` as a u32 in memory order (bounds checked by
/// the caller).
#[inline(always)]
fn rd32(p: *const u8, off: usize) -> u32 {
    // SAFETY: the caller checked the bounds; unaligned reads are fine.
    unsafe { p.add(off).cast::<u32>().read_unaligned() }
}

#[inline(always)]
fn pass_counter(p: Pass) -> u32 {
    match p {
        Pass::NotQuery => counter::NOT_QUERY,
        Pass::Counts => counter::COUNTS,
        Pass::Malformed => counter::MALFORMED,
        Pass::TooLong => counter::TOO_LONG,
        Pass::Edns => counter::EDNS,
    }
}

/// Counts one event of the segment (per CPU).
#[inline(always)]
fn count(seg: u32, c: u32) {
    if let Some(s) = DNS_STATS.get_ptr_mut(seg & 63) {
        // SAFETY: a per-CPU slot; `c` indexes one of its u64 counters.
        unsafe {
            let p = (s as *mut u64).add(c.min(counter::COUNT - 1) as usize);
            *p += 1;
        }
    }
}
