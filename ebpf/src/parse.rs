//! Parses Ethernet + IPv4 + the L4 fields the firewall and conntrack need.
//! Every frame is classified; an IPv4 packet that cannot be read whole (its
//! transport header cut short) is an error with a reason, never a pass.

use coresvc_common::{
    conntrack::NO_WSCALE,
    proto::{eth, icmp, ipproto, ipv4, tcp},
};
use coresvc_maps_schema::reason;

use crate::{
    maps::DNS_SCRATCH,
    packet::{Bounds, LoadBytes, ptr_at},
};

/// An IPv4 packet's fields (addresses in network order, ports in host order).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Ip4 {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub proto: u8,
    pub ttl: u8,
    pub tos: u8,
    /// TCP flags (low byte), 0 for other protocols.
    pub tcp_flags: u8,
    /// Header length in bytes.
    pub ihl: usize,
    pub tot_len: u16,
    /// The identification field, as on the wire.
    pub id: [u8; 2],
    /// A fragment other than the first: no L4 header.
    pub later_fragment: bool,
    /// Any fragment (first or later).
    pub fragment: bool,
    pub sport: u16,
    pub dport: u16,
    /// ICMP type and code, when ICMP.
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// TCP: sequence and acknowledgement numbers, the window field (as
    /// sent, unscaled) and the payload length.
    pub seq: u32,
    pub ack: u32,
    pub win: u16,
    pub tcp_len: u16,
}

/// What a frame is.
pub enum Frame {
    Ipv4(Ip4),
    /// ARP: the stack's (neighbour discovery needs it; it is never routed).
    Arp,
    Ipv6,
}

/// The IPv4 header follows the Ethernet header directly (VLAN-tagged frames
/// are refused, see [`frame`]).
pub const L3: usize = eth::HDR_LEN;

/// Classifies a frame: IPv4 (parsed), ARP or IPv6; `Err(reason)` for
/// anything else (VLAN tags, other ethertypes, runts) and for IPv4 that
/// cannot be read.
#[inline(always)]
pub fn frame<C: Bounds>(ctx: &C) -> Result<Frame, u32> {
    let et = ptr_at::<[u8; 2], C>(ctx, eth::ETHERTYPE).ok_or(reason::L2_UNSERVED)?;
    // SAFETY: ptr_at checked the bounds.
    match u16::from_be_bytes(unsafe { *et }) {
        eth::P_IPV4 => ipv4(ctx).map(Frame::Ipv4),
        eth::P_ARP => Ok(Frame::Arp),
        eth::P_IPV6 => Ok(Frame::Ipv6),
        _ => Err(reason::L2_UNSERVED),
    }
}

/// The IPv4 packet of a frame known to carry IPv4.
#[inline(always)]
pub fn ipv4<C: Bounds>(ctx: &C) -> Result<Ip4, u32> {
    let hdr = ptr_at::<[u8; 20], C>(ctx, L3).ok_or(reason::IPV4_TRUNCATED)?;
    // SAFETY: ptr_at checked the bounds.
    let h: &[u8; 20] = unsafe { &*hdr };
    let ihl = usize::from(h[ipv4::VER_IHL] & 0x0f) * 4;
    if h[ipv4::VER_IHL] >> 4 != 4 || ihl < ipv4::MIN_HDR_LEN {
        return Err(reason::IPV4_BAD_HEADER);
    }
    let frag = u16::from_be_bytes([h[ipv4::FRAG], h[ipv4::FRAG + 1]]);
    let offset = frag & ipv4::FRAG_OFFSET_MASK;
    let tot_len = u16::from_be_bytes([h[ipv4::TOT_LEN], h[ipv4::TOT_LEN + 1]]);
    let mut p = Ip4 {
        saddr: [h[12], h[13], h[14], h[15]],
        daddr: [h[16], h[17], h[18], h[19]],
        proto: h[ipv4::PROTO],
        ttl: h[ipv4::TTL],
        tos: h[ipv4::TOS],
        tcp_flags: 0,
        ihl,
        tot_len,
        id: [h[ipv4::ID], h[ipv4::ID + 1]],
        later_fragment: offset != 0,
        fragment: offset != 0 || frag & ipv4::FRAG_MF != 0,
        sport: 0,
        dport: 0,
        icmp_type: 0,
        icmp_code: 0,
        seq: 0,
        ack: 0,
        win: 0,
        tcp_len: 0,
    };
    if p.later_fragment {
        // RFC 1858: a TCP fragment at offset 8 can rewrite the flags the
        // first fragment was judged by.
        if offset == 1 && p.proto == ipproto::TCP {
            return Err(reason::FRAG_INVALID);
        }
        return Ok(p);
    }
    // The L4 header, after a header of `ihl` bytes (options included). It
    // must be there whole, also in a first fragment (RFC 1858's tiny
    // fragments).
    let l4 = L3 + (ihl & 0x3c);
    match p.proto {
        ipproto::TCP => {
            let t = ptr_at::<[u8; 20], C>(ctx, l4).ok_or(reason::L4_TRUNCATED)?;
            // SAFETY: ptr_at checked the bounds.
            let t = unsafe { &*t };
            p.sport = u16::from_be_bytes([t[0], t[1]]);
            p.dport = u16::from_be_bytes([t[2], t[3]]);
            p.seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
            p.ack = u32::from_be_bytes([t[8], t[9], t[10], t[11]]);
            p.tcp_flags = t[tcp::FLAGS];
            p.win = u16::from_be_bytes([t[14], t[15]]);
            let doff = u16::from(t[12] >> 4) * 4;
            p.tcp_len = tot_len.saturating_sub(ihl as u16).saturating_sub(doff);
        }
        ipproto::UDP => {
            let u = ptr_at::<[u8; 8], C>(ctx, l4).ok_or(reason::L4_TRUNCATED)?;
            // SAFETY: ptr_at checked the bounds.
            let u = unsafe { &*u };
            p.sport = u16::from_be_bytes([u[0], u[1]]);
            p.dport = u16::from_be_bytes([u[2], u[3]]);
        }
        ipproto::ICMP => {
            let i = ptr_at::<[u8; 8], C>(ctx, l4).ok_or(reason::L4_TRUNCATED)?;
            // SAFETY: ptr_at checked the bounds.
            let i = unsafe { &*i };
            p.icmp_type = i[icmp::TYPE];
            p.icmp_code = i[icmp::CODE];
            if p.icmp_type == icmp::ECHO_REQUEST || p.icmp_type == icmp::ECHO_REPLY {
                // The identifier stands for both ports.
                let id = u16::from_be_bytes([i[icmp::ID], i[icmp::ID + 1]]);
                p.sport = id;
                p.dport = id;
            }
        }
        _ => {}
    }
    Ok(p)
}

/// The window-scale option of a TCP SYN (RFC 7323 §2.2), capped at 14, or
/// [`NO_WSCALE`]. A BPF subprogram: only SYNs get here, and it reads with
/// the kernel's load helper into per-CPU scratch memory (no packet bounds
/// to prove, nothing on the stack).
#[inline(never)]
pub fn tcp_wscale<C: LoadBytes>(ctx: &C) -> u8 {
    let mut b = [0u8; 1];
    if ctx.load(L3 as u32, &mut b) != 0 {
        return NO_WSCALE;
    }
    let l4 = L3 as u32 + u32::from(b[0] & 0x0f) * 4;
    if ctx.load(l4 + 12, &mut b) != 0 {
        return NO_WSCALE;
    }
    let hlen = u32::from(b[0] >> 4) * 4;
    if hlen <= tcp::MIN_HDR_LEN as u32 {
        return NO_WSCALE;
    }
    // (Masked, so the verifier sees 1 to 40 too.)
    let len = (hlen - tcp::MIN_HDR_LEN as u32) & 0x3f;
    if len == 0 || len > 40 {
        return NO_WSCALE;
    }
    let Some(s) = DNS_SCRATCH.get_ptr_mut(0) else { return NO_WSCALE };
    // SAFETY: this CPU's scratch memory; no other program run uses it now.
    let opts = unsafe { &mut (*s).frame };
    // SAFETY: `opts` holds more than 40 bytes; `len` is 1 to 40.
    if unsafe { ctx.load_raw(l4 + tcp::MIN_HDR_LEN as u32, opts.as_mut_ptr(), len) } != 0 {
        return NO_WSCALE;
    }
    let mut w = Walk { i: 0, end: len, scale: u32::from(NO_WSCALE) };
    // Every option is at least one byte: 40 steps at most. A bpf_loop
    // callback, so the verifier checks one step, not every path of 40.
    // SAFETY: bpf_loop calls `walk_step` with a pointer to `w`, which
    // outlives the call.
    unsafe {
        aya_ebpf::helpers::bpf_loop(40, walk_step as *mut core::ffi::c_void, (&mut w as *mut Walk).cast(), 0);
    }
    w.scale as u8
}

/// The option walk's state, shared with its `bpf_loop` callback.
#[repr(C)]
struct Walk {
    i: u32,
    end: u32,
    scale: u32,
}

/// One option of the walk: returns 1 (stop) at the end, or with the scale.
#[inline(never)]
extern "C" fn walk_step(_n: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the `Walk` on `tcp_wscale`'s stack.
    let w = unsafe { &mut *(ctx as *mut Walk) };
    let Some(s) = DNS_SCRATCH.get_ptr(0) else { return 1 };
    // SAFETY: this CPU's scratch memory, filled by `wscale_of`.
    let opts = unsafe { &(*s).frame };
    let i = (w.i & 63) as usize;
    if w.i + 1 >= w.end {
        return 1;
    }
    match opts[i] {
        0 => 1,
        1 => {
            w.i += 1;
            0
        }
        k => {
            let olen = u32::from(opts[(i + 1) & 63]);
            if k == 3 && olen == 3 && w.i + 2 < w.end {
                w.scale = u32::from(opts[(i + 2) & 63].min(14));
                return 1;
            }
            if olen < 2 {
                return 1;
            }
            w.i += olen;
            0
        }
    }
}

/// True for ICMP errors that carry the header of the packet they answer.
#[inline(always)]
pub fn is_icmp_error(p: &Ip4) -> bool {
    p.proto == ipproto::ICMP
        && matches!(p.icmp_type, icmp::DEST_UNREACH | icmp::TIME_EXCEEDED | icmp::PARAM_PROBLEM | icmp::REDIRECT)
}

/// The embedded packet of an ICMP error (RFC 792: its IP header and the
/// first 8 bytes of its payload): (saddr, sport, daddr, dport, proto), as the
/// original packet had them. Only headers without options.
#[inline(always)]
pub fn icmp_inner<C: Bounds>(ctx: &C, p: &Ip4) -> Option<([u8; 4], u16, [u8; 4], u16, u8)> {
    let inner = L3 + (p.ihl & 0x3c) + icmp::HDR_LEN;
    let h = ptr_at::<[u8; 28], C>(ctx, inner)?;
    // SAFETY: ptr_at checked the bounds.
    let h = unsafe { &*h };
    if h[0] != 0x45 {
        return None;
    }
    let proto = h[ipv4::PROTO];
    let s = [h[12], h[13], h[14], h[15]];
    let d = [h[16], h[17], h[18], h[19]];
    let (sport, dport) = match proto {
        ipproto::TCP | ipproto::UDP => (u16::from_be_bytes([h[20], h[21]]), u16::from_be_bytes([h[22], h[23]])),
        ipproto::ICMP => {
            let id = u16::from_be_bytes([h[24], h[25]]);
            (id, id)
        }
        _ => (0, 0),
    };
    Some((s, sport, d, dport, proto))
}
