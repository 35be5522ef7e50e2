//! Connection tracking in the data path: one entry per connection (both
//! directions), created for new flows the rules allow, updated by every
//! packet, expired by timeout. The table is an LRU map: a new connection
//! always finds room (the least recently used entry makes way, in the
//! kernel, with or without the agent), and per-source quotas keep one host
//! from pushing the others out. TCP RSTs and FINs are believed only within
//! the connection's sequence window.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns};
use coresvc_common::{
    conntrack::{self as ct, CT_F_ORIG_IS_A, TcpSeg, TcpWindow},
    proto::ipproto,
};
use coresvc_maps_schema::{CtEntry, CtKey, SRC_QUOTA_STALE_NS, Settings, SrcUse, TCP_NO_WSCALE, reason};

use crate::{
    maps::{CONNTRACK, SRC_QUOTA},
    parse::Ip4,
};

/// A packet's key and which side of it the packet's source is.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Tuple {
    pub key: CtKey,
    pub src_is_a: bool,
}

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
pub fn tuple_of(saddr: [u8; 4], sport: u16, daddr: [u8; 4], dport: u16, proto: u8) -> Tuple {
    let (a, pa, b, pb, src_is_a) = ct::normalise(saddr, sport, daddr, dport);
    Tuple { key: CtKey { addr_a: a, addr_b: b, port_a: pa, port_b: pb, proto, _pad: [0; 3] }, src_is_a }
}

#[inline(always)]
pub fn tuple(p: &Ip4) -> Tuple {
    tuple_of(p.saddr, p.sport, p.daddr, p.dport, p.proto)
}

/// The live entry for `t`, if any (an expired one is removed).
#[inline(always)]
pub fn lookup(t: &Tuple, now: u64) -> Option<*mut CtEntry> {
    let e = CONNTRACK.get_ptr_mut(t.key)?;
    // SAFETY: the pointer from a successful lookup is valid for this program run.
    let (last, state) = unsafe { ((*e).last_ns, (*e).state) };
    if now.saturating_sub(last) > ct::timeout_ns(t.key.proto, state) {
        let _ = CONNTRACK.remove(t.key);
        return None;
    }
    Some(e)
}

/// True when `e`'s originator sent this packet.
#[inline(always)]
pub fn from_orig(e: *const CtEntry, t: &Tuple) -> bool {
    // SAFETY: a live entry pointer.
    let orig_is_a = unsafe { (*e).flags } & CT_F_ORIG_IS_A != 0;
    orig_is_a == t.src_is_a
}

#[inline(always)]
fn seg(p: &Ip4) -> TcpSeg {
    TcpSeg { flags: p.tcp_flags, seq: p.seq, ack: p.ack, win: p.win, len: p.tcp_len }
}

#[inline(always)]
fn window(e: &CtEntry) -> TcpWindow {
    TcpWindow { seq_end: e.seq_end, max_win: e.max_win, wscale: e.wscale }
}

/// Accounts a packet to its connection and advances the state. A TCP RST
/// or FIN outside the sequence window changes nothing and is refused.
/// `wscale`: the window-scale option of a SYN ([`TCP_NO_WSCALE`] else).
#[inline(always)]
pub fn update(
    e: *mut CtEntry,
    p: &Ip4,
    from_orig: bool,
    now: u64,
    bytes: u64,
    ifindex: u32,
    wscale: u8,
) -> Result<(), u32> {
    // SAFETY: a live entry pointer; concurrent updates only blur counters.
    let e = unsafe { &mut *e };
    let side = if from_orig { 0 } else { 1 };
    if p.proto == ipproto::TCP {
        let s = seg(p);
        let mut w = window(e);
        let syn_only = p.tcp_flags & (ct::TCP_SYN | ct::TCP_ACK) == ct::TCP_SYN;
        if syn_only && from_orig && e.state >= ct::CT_CLOSING {
            // The port pair is reused for a new connection.
            w = TcpWindow::open(&s, wscale);
            e.state = ct::CT_SYN_SENT;
            e.flags &= !(ct::CT_F_FIN_ORIG | ct::CT_F_FIN_REPLY);
        } else {
            if p.tcp_flags & (ct::TCP_RST | ct::TCP_FIN) != 0 && !w.acceptable(e.state, side, &s) {
                return Err(reason::TCP_WINDOW);
            }
            w.update(e.state, side, &s, wscale);
            let fins = e.flags & (ct::CT_F_FIN_ORIG | ct::CT_F_FIN_REPLY);
            let (next, fins) = ct::tcp_next(e.state, fins, p.tcp_flags, from_orig);
            e.state = next;
            e.flags = (e.flags & !(ct::CT_F_FIN_ORIG | ct::CT_F_FIN_REPLY)) | fins;
        }
        e.seq_end = w.seq_end;
        e.max_win = w.max_win;
        e.wscale = w.wscale;
    } else if !from_orig && e.state == ct::CT_NEW {
        e.state = ct::CT_ESTABLISHED;
    }
    e.last_ns = now;
    if from_orig {
        e.packets_orig += 1;
        e.bytes_orig += bytes;
    } else {
        e.packets_reply += 1;
        e.bytes_reply += bytes;
        if e.ifindex_reply == 0 {
            e.ifindex_reply = ifindex;
        }
    }
    Ok(())
}

/// NAT details of a new entry.
#[derive(Clone, Copy)]
pub struct Nat {
    /// The outside address.
    pub addr: [u8; 4],
    /// The outside port the originator is seen as (masquerade, hairpin).
    pub snat_port: u16,
    /// The port the originator addressed (port forward, hairpin).
    pub dnat_port: u16,
    /// `NAT_*`.
    pub kind: u8,
}

/// What a new entry records besides the packet.
#[derive(Clone, Copy)]
pub struct New {
    pub generation: u32,
    pub rule: u32,
    pub ifindex: u32,
    pub now: u64,
    pub bytes: u64,
    /// `CT_F_*` (`CT_F_LOCAL` for the gateway's own).
    pub flags: u8,
    /// The SYN's window-scale option (TCP).
    pub wscale: u8,
    pub nat: Nat,
}

/// Creates the entry of a new connection whose originator sent `p`.
#[inline(always)]
pub fn create(t: &Tuple, p: &Ip4, n: &New) -> Result<(), u32> {
    let state = if p.proto == ipproto::TCP { ct::CT_SYN_SENT } else { ct::CT_NEW };
    let mut f = n.flags;
    if t.src_is_a {
        f |= CT_F_ORIG_IS_A;
    }
    let w = if p.proto == ipproto::TCP {
        TcpWindow::open(&seg(p), n.wscale)
    } else {
        TcpWindow { wscale: [TCP_NO_WSCALE; 2], ..Default::default() }
    };
    let e = CtEntry {
        created_ns: n.now,
        last_ns: n.now,
        packets_orig: 1,
        bytes_orig: n.bytes,
        packets_reply: 0,
        bytes_reply: 0,
        generation: n.generation,
        rule: n.rule as u16,
        state,
        flags: f,
        ifindex_orig: n.ifindex,
        ifindex_reply: 0,
        nat_addr: n.nat.addr,
        snat_port: n.nat.snat_port,
        dnat_port: n.nat.dnat_port,
        nat_kind: n.nat.kind,
        wscale: w.wscale,
        _pad: 0,
        seq_end: w.seq_end,
        max_win: w.max_win,
        _pad2: [0; 4],
    };
    match CONNTRACK.insert(t.key, e, u64::from(BPF_NOEXIST)) {
        Ok(()) => Ok(()),
        // Another CPU created it first: that entry stands.
        Err(e) if e == -17 => Ok(()),
        // Memory is short (an LRU map makes room by itself): refuse the flow.
        Err(_) => Err(reason::CT_FULL),
    }
}

/// Where an ICMP error for `outer_daddr` must come from to be related to
/// a tracked connection, as Linux judges it: the quoted packet belongs to
/// the connection and the error goes back to the quoted packet's source,
/// from the side the quoted packet was going to. `None`: not related;
/// `Some(From::Iface(i))`: from interface `i`; `Some(From::Route(d, i))`:
/// from where the kernel routes `d` arriving on `i` (the quoted
/// destination's side, not seen yet).
#[inline(always)]
pub fn related_from(inner: ([u8; 4], u16, [u8; 4], u16, u8), outer_daddr: [u8; 4], now: u64) -> Option<From> {
    let (s, sp, d, dp, proto) = inner;
    if outer_daddr != s {
        return None;
    }
    let t = tuple_of(s, sp, d, dp, proto);
    let e = lookup(&t, now)?;
    let quoted_from_orig = from_orig(e, &t);
    // SAFETY: a live entry pointer.
    let (orig_if, reply_if) = unsafe { ((*e).ifindex_orig, (*e).ifindex_reply) };
    if quoted_from_orig {
        // Towards the replier: the error comes from its side.
        Some(if reply_if != 0 { From::Iface(reply_if) } else { From::Route(d, orig_if) })
    } else if orig_if != 0 {
        Some(From::Iface(orig_if))
    } else {
        // The gateway's own connection: its own packets are never quoted
        // back to it from its own side.
        None
    }
}

/// See [`related_from`].
#[derive(Clone, Copy)]
pub enum From {
    Iface(u32),
    /// (quoted destination, interface the quoted packet arrived on; 0: the
    /// gateway sent it).
    Route([u8; 4], u32),
}

/// [`related_from`] where only a known interface counts (TC egress, after
/// XDP judged the error on its way in).
#[inline(always)]
pub fn related(inner: ([u8; 4], u16, [u8; 4], u16, u8), outer_daddr: [u8; 4], ifindex: u32, now: u64) -> bool {
    match related_from(inner, outer_daddr, now) {
        Some(From::Iface(i)) => i == ifindex,
        Some(From::Route(..)) => true,
        None => false,
    }
}

/// The use record of source `addr`, made when missing.
#[inline(always)]
fn src_use(addr: [u8; 4], now: u64) -> Option<*mut SrcUse> {
    if let Some(u) = SRC_QUOTA.get_ptr_mut(addr) {
        return Some(u);
    }
    let fresh = SrcUse { reconciled_ns: now, ..Default::default() };
    let _ = SRC_QUOTA.insert(addr, fresh, u64::from(BPF_NOEXIST));
    SRC_QUOTA.get_ptr_mut(addr)
}

/// The count of flows (`NAT == false`) or outside ports.
#[inline(always)]
fn field<const NAT: bool>(u: &mut SrcUse) -> &mut u32 {
    if NAT { &mut u.nat_ports } else { &mut u.flows }
}

/// Whether `addr` may have one more of what `field::<NAT>` counts (`quota`
/// at most; 0: no limit). A record at its quota that nobody recounted for a
/// minute (the agent is gone) is halved first, so a host is never locked
/// out for good.
/// A function of its own (a BPF subprogram with scalar arguments): it is
/// called on paths whose registers the verifier tracks closely. Returns 0
/// or `why`.
#[inline(never)]
fn admit<const NAT: bool>(addr: u32, quota: u32, now: u64, why: u32) -> u32 {
    if quota == 0 {
        return 0;
    }
    // Without a record (the map cannot make one) the flow goes on: an LRU
    // map only fails for lack of memory.
    let Some(u) = src_use(addr.to_ne_bytes(), now) else { return 0 };
    // SAFETY: a live value pointer; racing CPUs only blur the count.
    let u = unsafe { &mut *u };
    if *field::<NAT>(u) >= quota {
        if now.saturating_sub(u.reconciled_ns) <= SRC_QUOTA_STALE_NS {
            return why;
        }
        u.flows /= 2;
        u.nat_ports /= 2;
        u.reconciled_ns = now;
    }
    0
}

#[inline(always)]
fn admitted(code: u32) -> Result<(), u32> {
    if code == 0 { Ok(()) } else { Err(code) }
}

#[inline(always)]
fn add<const NAT: bool>(addr: [u8; 4], quota: u32) {
    if quota == 0 {
        return;
    }
    if let Some(u) = SRC_QUOTA.get_ptr_mut(addr) {
        // SAFETY: a live value pointer.
        let c = field::<NAT>(unsafe { &mut *u });
        *c = c.saturating_add(1);
    }
}

/// May `addr` open one more forwarded connection?
#[inline(always)]
pub fn admit_flow(s: &Settings, addr: [u8; 4], now: u64) -> Result<(), u32> {
    admitted(admit::<false>(u32::from_ne_bytes(addr), s.flow_quota, now, reason::FLOW_QUOTA))
}

/// `addr` opened a forwarded connection.
#[inline(always)]
pub fn count_flow(s: &Settings, addr: [u8; 4]) {
    add::<false>(addr, s.flow_quota)
}

/// May inside address `addr` take one more outside port?
#[inline(always)]
pub fn admit_nat_port(s: &Settings, addr: [u8; 4], now: u64) -> Result<(), u32> {
    admitted(admit::<true>(u32::from_ne_bytes(addr), s.nat_port_quota, now, reason::NAT_QUOTA))
}

/// `addr` took an outside port.
#[inline(always)]
pub fn count_nat_port(s: &Settings, addr: [u8; 4]) {
    add::<true>(addr, s.nat_port_quota)
}
