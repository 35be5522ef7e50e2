//! NAT, netfilter style: destination translation before routing (XDP
//! ingress), source translation after routing (TC egress, where the kernel's
//! checksum helpers handle offloaded checksums), both in the fast path.
//!
//! Masquerade uses endpoint-independent bindings (RFC 4787 §4.1): an inside
//! address and port keep one outside port for every destination while the
//! binding lives. Bindings come in pairs (OUT: inside -> outside port, IN:
//! outside port -> inside), created together and mended when found
//! half-made; the agent removes unused pairs.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    cty::c_void,
    helpers::{bpf_get_prandom_u32, bpf_loop},
    programs::{TcContext, XdpContext},
};
use coresvc_common::{
    checksum,
    proto::{icmp, ipproto},
};
use coresvc_maps_schema::{NAT_DIR_IN, NAT_DIR_OUT, NatBind, NatKey, Settings, reason};

use crate::{
    maps::{NAT_BIND, NAT_FWD},
    packet::ptr_at_mut,
    parse::{Ip4, L3},
};

/// Offsets of the L4 checksum and of the ports (or ICMP identifier).
#[inline(always)]
fn l4_layout(proto: u8) -> Option<(usize, usize, usize, bool)> {
    // (checksum offset, source port offset, destination port offset, pseudo header)
    match proto {
        ipproto::TCP => Some((16, 0, 2, true)),
        ipproto::UDP => Some((6, 0, 2, true)),
        // Echo request/reply: the identifier is both "ports".
        ipproto::ICMP => Some((2, icmp::ID, icmp::ID, false)),
        _ => None,
    }
}

/// Rewrites the source (`src == true`) or destination address and port of
/// an XDP frame, fixing the IP and L4 checksums incrementally (RFC 1624).
#[inline(always)]
pub fn xdp_rewrite(ctx: &XdpContext, p: &Ip4, src: bool, addr: [u8; 4], port: u16) -> Option<()> {
    let (csum_off, sport_off, dport_off, pseudo) = l4_layout(p.proto)?;
    let ip = ptr_at_mut::<[u8; 20], XdpContext>(ctx, L3)?;
    let l4 = L3 + (p.ihl & 0x3c);
    let p_off = if src { sport_off } else { dport_off };
    // Only the bytes touched: a UDP datagram may be no longer than its header.
    let port_p = ptr_at_mut::<[u8; 2], XdpContext>(ctx, l4 + p_off)?;
    let csum_p = ptr_at_mut::<[u8; 2], XdpContext>(ctx, l4 + csum_off)?;
    // SAFETY: all checked by ptr_at_mut; nothing else refers to the frame.
    let (ip, port_p, csum_p) = unsafe { (&mut *ip, &mut *port_p, &mut *csum_p) };
    let a_off = if src { 12 } else { 16 };
    let old_addr = u32::from_be_bytes([ip[a_off], ip[a_off + 1], ip[a_off + 2], ip[a_off + 3]]);
    let new_addr = u32::from_be_bytes(addr);
    ip[a_off..a_off + 4].copy_from_slice(&addr);
    let ipc = checksum::update32(u16::from_be_bytes([ip[10], ip[11]]), old_addr, new_addr);
    ip[10..12].copy_from_slice(&ipc.to_be_bytes());
    let old_port = u16::from_be_bytes(*port_p);
    *port_p = port.to_be_bytes();
    let old_csum = u16::from_be_bytes(*csum_p);
    // UDP without a checksum stays without one (RFC 768).
    if p.proto == ipproto::UDP && old_csum == 0 {
        return Some(());
    }
    let mut c = checksum::update16(old_csum, old_port, port);
    if pseudo {
        c = checksum::update32(c, old_addr, new_addr);
    }
    if p.proto == ipproto::UDP && c == 0 {
        c = 0xffff;
    }
    *csum_p = c.to_be_bytes();
    Some(())
}

/// The same for a TC packet, with the kernel's checksum helpers (they keep
/// offloaded, partial checksums right).
#[inline(always)]
pub fn tc_rewrite(ctx: &mut TcContext, p: &Ip4, src: bool, addr: [u8; 4], port: u16) -> Result<(), i64> {
    const BPF_F_PSEUDO_HDR: u64 = 1 << 4;
    const BPF_F_MARK_MANGLED_0: u64 = 1 << 5;
    let Some((csum_off, sport_off, dport_off, pseudo)) = l4_layout(p.proto) else { return Err(-1) };
    let l4 = L3 + (p.ihl & 0x3c);
    let a_off = L3 + if src { 12 } else { 16 };
    let old_addr: [u8; 4] = ctx.load(a_off)?;
    let old_port: [u8; 2] = ctx.load(l4 + if src { sport_off } else { dport_off })?;
    let old_a = u32::from_ne_bytes(old_addr);
    let new_a = u32::from_ne_bytes(addr);
    let new_p = port.to_be_bytes();
    let udp_flag = if p.proto == ipproto::UDP { BPF_F_MARK_MANGLED_0 } else { 0 };
    if pseudo {
        ctx.l4_csum_replace(l4 + csum_off, u64::from(old_a), u64::from(new_a), BPF_F_PSEUDO_HDR | udp_flag | 4)?;
    }
    ctx.l4_csum_replace(
        l4 + csum_off,
        u64::from(u16::from_ne_bytes(old_port)),
        u64::from(u16::from_ne_bytes(new_p)),
        udp_flag | 2,
    )?;
    ctx.l3_csum_replace(L3 + 10, u64::from(old_a), u64::from(new_a), 4)?;
    ctx.store(a_off, &addr, 0)?;
    ctx.store(l4 + if src { sport_off } else { dport_off }, &new_p, 0)?;
    Ok(())
}

/// Translates an ICMP error arriving for the outside address back to the
/// inside host: the outer destination becomes `inside`, and the quoted
/// packet's source (which left as `nat_addr:op`) becomes `inside:iport`.
#[inline(always)]
pub fn xdp_icmp_error_in(ctx: &XdpContext, p: &Ip4, inside: [u8; 4], iport: u16) -> Option<()> {
    icmp_error_rewrite(ctx, p, false, inside, iport)
}

/// Translates an ICMP error leaving through the uplink about a translated
/// connection: the outer source and the quoted packet's destination become
/// `nat_addr:port` (what the outside host sent to), so no inside address
/// leaks and the error reaches the right socket.
#[inline(always)]
pub fn tc_icmp_error_out(ctx: &TcContext, p: &Ip4, nat_addr: [u8; 4], port: u16) -> Option<()> {
    icmp_error_rewrite(ctx, p, true, nat_addr, port)
}

/// The ICMP error rewrite both ways, with every checksum involved fixed
/// incrementally (outer IP, quoted IP, quoted UDP/TCP/echo checksums when
/// quoted, the error's own ICMP checksum: ICMP has no checksum offload).
/// Inbound (`outbound == false`): outer destination and quoted source;
/// outbound: outer source and quoted destination.
#[inline(always)]
fn icmp_error_rewrite<C: crate::packet::Bounds>(
    ctx: &C,
    p: &Ip4,
    outbound: bool,
    addr: [u8; 4],
    port: u16,
) -> Option<()> {
    let ip = ptr_at_mut::<[u8; 20], C>(ctx, L3)?;
    let l4 = L3 + (p.ihl & 0x3c);
    // The error header (8) + quoted IP header (20) + quoted L4 (8).
    let m = ptr_at_mut::<[u8; 36], C>(ctx, l4)?;
    // SAFETY: both checked by ptr_at_mut.
    let (ip, m) = unsafe { (&mut *ip, &mut *m) };
    let new_a = u32::from_be_bytes(addr);
    // Outer address.
    let o = if outbound { 12 } else { 16 };
    let old_outer = u32::from_be_bytes([ip[o], ip[o + 1], ip[o + 2], ip[o + 3]]);
    ip[o..o + 4].copy_from_slice(&addr);
    let c = checksum::update32(u16::from_be_bytes([ip[10], ip[11]]), old_outer, new_a);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    // The quoted packet: IP header at 8, its L4 at 28.
    let mut icmp_c = u16::from_be_bytes([m[2], m[3]]);
    let qa = if outbound { 24 } else { 20 };
    let q_old = u32::from_be_bytes([m[qa], m[qa + 1], m[qa + 2], m[qa + 3]]);
    m[qa..qa + 4].copy_from_slice(&addr);
    icmp_c = checksum::update32(icmp_c, q_old, new_a);
    let q_ipc_old = u16::from_be_bytes([m[18], m[19]]);
    let q_ipc = checksum::update32(q_ipc_old, q_old, new_a);
    m[18..20].copy_from_slice(&q_ipc.to_be_bytes());
    icmp_c = checksum::update16(icmp_c, q_ipc_old, q_ipc);
    let q_proto = m[17];
    // A quoted header with options moves the ports: leave them (rare; the
    // addresses are translated all the same).
    if m[8] != 0x45 {
        m[2..4].copy_from_slice(&icmp_c.to_be_bytes());
        return Some(());
    }
    let side = if outbound { 2 } else { 0 };
    let (port_off, csum_off, pseudo) = match q_proto {
        // The TCP checksum lies beyond the 8 quoted bytes every error
        // carries; it is fixed below when the quote reaches it.
        ipproto::TCP => (28 + side, None, true),
        ipproto::UDP => (28 + side, Some(34), true),
        // A quoted echo: its identifier, and its checksum.
        ipproto::ICMP => (32, Some(30), false),
        _ => {
            m[2..4].copy_from_slice(&icmp_c.to_be_bytes());
            return Some(());
        }
    };
    let old_port = u16::from_be_bytes([m[port_off], m[port_off + 1]]);
    m[port_off..port_off + 2].copy_from_slice(&port.to_be_bytes());
    icmp_c = checksum::update16(icmp_c, old_port, port);
    if let Some(co) = csum_off {
        let old_c = u16::from_be_bytes([m[co], m[co + 1]]);
        if !(q_proto == ipproto::UDP && old_c == 0) {
            let mut nc = checksum::update16(old_c, old_port, port);
            if pseudo {
                nc = checksum::update32(nc, q_old, new_a);
            }
            m[co..co + 2].copy_from_slice(&nc.to_be_bytes());
            icmp_c = checksum::update16(icmp_c, old_c, nc);
        }
    }
    if q_proto == ipproto::TCP {
        if let Some(tc) = ptr_at_mut::<[u8; 2], C>(ctx, l4 + 44) {
            // SAFETY: checked by ptr_at_mut.
            let tc = unsafe { &mut *tc };
            let old_c = u16::from_be_bytes(*tc);
            let nc = checksum::update32(checksum::update16(old_c, old_port, port), q_old, new_a);
            *tc = nc.to_be_bytes();
            icmp_c = checksum::update16(icmp_c, old_c, nc);
        }
    }
    m[2..4].copy_from_slice(&icmp_c.to_be_bytes());
    Some(())
}

#[inline(always)]
fn key(addr: [u8; 4], port: u16, proto: u8, dir: u8) -> NatKey {
    NatKey { addr, port, proto, dir }
}

/// The inside address and port an outside port is bound to.
#[inline(always)]
pub fn lookup_in(nat_addr: [u8; 4], port: u16, proto: u8) -> Option<([u8; 4], u16)> {
    // SAFETY: copied out at once.
    let b = unsafe { NAT_BIND.get(key(nat_addr, port, proto, NAT_DIR_IN)).copied() }?;
    Some((b.addr, b.port))
}

/// The inside host and port of a port forward.
#[inline(always)]
pub fn lookup_forward(nat_addr: [u8; 4], port: u16, proto: u8) -> Option<([u8; 4], u16)> {
    // SAFETY: copied out at once.
    let b = unsafe { NAT_FWD.get(key(nat_addr, port, proto, NAT_DIR_IN)).copied() }?;
    Some((b.addr, b.port))
}

/// The allocator's state, shared with its `bpf_loop` callback.
#[repr(C)]
struct Alloc {
    nat_addr: [u8; 4],
    inside: [u8; 4],
    iport: u16,
    proto: u8,
    _pad: u8,
    min: u16,
    span: u16,
    preferred: u16,
    found: u16,
    now: u64,
    full: u32,
}

/// One attempt: claim outside port candidate `i` (the preferred one first,
/// then random ones) by creating the IN half of the pair.
#[inline(never)]
extern "C" fn try_port(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Alloc` on `bind`'s stack.
    let a = unsafe { &mut *(ctx as *mut Alloc) };
    let span = u32::from(a.span);
    let cand = if i == 0 {
        a.preferred
    } else if span == 0 {
        // Unreachable (`bind` checks the range), but a division by zero must
        // not be left for the compiler to turn into a panic.
        return 1;
    } else {
        // SAFETY: no preconditions.
        a.min + (unsafe { bpf_get_prandom_u32() } % span) as u16
    };
    let v = NatBind { addr: a.inside, port: a.iport, _pad: 0, last_ns: a.now };
    match NAT_BIND.insert(key(a.nat_addr, cand, a.proto, NAT_DIR_IN), v, u64::from(BPF_NOEXIST)) {
        Ok(()) => {
            a.found = cand;
            1
        }
        // Taken: try another.
        Err(e) if e == -17 => 0,
        // The table is full.
        Err(_) => {
            a.full = 1;
            1
        }
    }
}

/// How many ports are tried before giving up (RFC 4787 §4.2 asks for
/// bounded effort; exhaustion is counted, never a collision).
const PROBES: u32 = 16;

/// The outside port of `inside:iport` for `proto`: its binding, mended if
/// half-made, or a new one (the inside port itself when free and in range,
/// RFC 4787 §4.2.1 port preservation; else random ports in range). The flag
/// says the binding is new (see [`release`]).
#[inline(always)]
pub fn bind(s: &Settings, inside: [u8; 4], iport: u16, proto: u8, now: u64) -> Result<(u16, bool), u32> {
    // In one plain integer: a `Result` of a tuple leaves its payload
    // undefined on the error path, and the verifier refuses the register
    // the compiler reads it from.
    let c = bind_code(s, inside, iport, proto, now);
    if c & BIND_ERR != 0 { Err(c & 0xff) } else { Ok((c as u16, c & BIND_FRESH != 0)) }
}

const BIND_FRESH: u32 = 0x1_0000;
const BIND_ERR: u32 = 0x2_0000;

#[inline(always)]
fn bind_code(s: &Settings, inside: [u8; 4], iport: u16, proto: u8, now: u64) -> u32 {
    match bind_in(s, inside, iport, proto, now) {
        Ok((port, fresh)) => u32::from(port) | if fresh { BIND_FRESH } else { 0 },
        Err(r) => BIND_ERR | r,
    }
}

#[inline(always)]
fn bind_in(s: &Settings, inside: [u8; 4], iport: u16, proto: u8, now: u64) -> Result<(u16, bool), u32> {
    let nat_addr = s.nat_addr;
    let out_key = key(inside, iport, proto, NAT_DIR_OUT);
    if let Some(b) = NAT_BIND.get_ptr_mut(out_key) {
        // SAFETY: a live value pointer.
        let oport = unsafe {
            (*b).last_ns = now;
            (*b).port
        };
        match lookup_in(nat_addr, oport, proto) {
            Some((a, p)) if a == inside && p == iport => return Ok((oport, false)),
            // The IN half is missing: mend the pair if the port is still free.
            None => {
                let v = NatBind { addr: inside, port: iport, _pad: 0, last_ns: now };
                if NAT_BIND.insert(key(nat_addr, oport, proto, NAT_DIR_IN), v, u64::from(BPF_NOEXIST)).is_ok() {
                    return Ok((oport, false));
                }
                let _ = NAT_BIND.remove(out_key);
            }
            // The port went to someone else: bind anew.
            Some(_) => {
                let _ = NAT_BIND.remove(out_key);
            }
        }
    }
    let (min, max) = (s.nat_port_min, s.nat_port_max);
    if min == 0 || max < min {
        return Err(reason::NAT_EXHAUSTED);
    }
    // One host does not take every outside port.
    crate::conntrack::admit_nat_port(s, inside, now)?;
    let span = max - min + 1;
    let preferred = match iport.checked_rem(span) {
        _ if iport >= min && iport <= max => iport,
        Some(r) => min + r,
        None => min,
    };
    let mut a = Alloc { nat_addr, inside, iport, proto, _pad: 0, min, span, preferred, found: 0, now, full: 0 };
    // SAFETY: bpf_loop calls `try_port` with a pointer to `a`, which outlives the call.
    unsafe { bpf_loop(PROBES, try_port as *mut c_void, (&mut a as *mut Alloc).cast(), 0) };
    if a.full != 0 {
        return Err(reason::NAT_FULL);
    }
    if a.found == 0 {
        return Err(reason::NAT_EXHAUSTED);
    }
    let v = NatBind { addr: nat_addr, port: a.found, _pad: 0, last_ns: now };
    if NAT_BIND.insert(out_key, v, u64::from(BPF_NOEXIST)).is_err() {
        // Another CPU bound this inside port meanwhile: keep theirs.
        let _ = NAT_BIND.remove(key(nat_addr, a.found, proto, NAT_DIR_IN));
        // SAFETY: copied out at once.
        return unsafe { NAT_BIND.get(out_key).map(|b| (b.port, false)) }.ok_or(reason::NAT_FULL);
    }
    crate::conntrack::count_nat_port(s, inside);
    Ok((a.found, true))
}

/// Undoes a binding [`bind`] just made for a flow that could not be
/// tracked after all (a full connection table): nothing is left behind.
#[inline(always)]
pub fn release(nat_addr: [u8; 4], inside: [u8; 4], iport: u16, oport: u16, proto: u8) {
    let _ = NAT_BIND.remove(key(inside, iport, proto, NAT_DIR_OUT));
    let _ = NAT_BIND.remove(key(nat_addr, oport, proto, NAT_DIR_IN));
}
