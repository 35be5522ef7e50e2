//! Parses Ethernet + IPv4 + the L4 fields the firewall and conntrack need.

use coresvc_common::proto::{eth, icmp, ipproto, ipv4};

use crate::packet::{Bounds, ptr_at};

/// An IPv4 packet's fields (addresses in network order, ports in host order).
#[derive(Clone, Copy)]
pub struct Ip4 {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub proto: u8,
    pub ttl: u8,
    pub tos: u8,
    /// Header length in bytes.
    pub ihl: usize,
    pub tot_len: u16,
    /// A fragment other than the first: no L4 header.
    pub later_fragment: bool,
    /// Any fragment (first or later).
    pub fragment: bool,
    pub sport: u16,
    pub dport: u16,
    /// TCP flags (low byte), 0 for other protocols.
    pub tcp_flags: u8,
    /// ICMP type and code, when ICMP.
    pub icmp_type: u8,
    pub icmp_code: u8,
}

/// The IPv4 header follows the Ethernet header directly (no VLAN tags: a
/// tagged frame is not IPv4 here and passes).
pub const L3: usize = eth::HDR_LEN;

/// `None` for anything that is not a readable IPv4 packet.
#[inline(always)]
pub fn ipv4<C: Bounds>(ctx: &C) -> Option<Ip4> {
    let et = ptr_at::<[u8; 2], C>(ctx, eth::ETHERTYPE)?;
    // SAFETY: ptr_at checked the bounds.
    if u16::from_be_bytes(unsafe { *et }) != eth::P_IPV4 {
        return None;
    }
    let hdr = ptr_at::<[u8; 20], C>(ctx, L3)?;
    // SAFETY: ptr_at checked the bounds.
    let h: &[u8; 20] = unsafe { &*hdr };
    let ihl = usize::from(h[ipv4::VER_IHL] & 0x0f) * 4;
    if h[ipv4::VER_IHL] >> 4 != 4 || ihl < ipv4::MIN_HDR_LEN {
        return None;
    }
    let frag = u16::from_be_bytes([h[ipv4::FRAG], h[ipv4::FRAG + 1]]);
    let offset = frag & ipv4::FRAG_OFFSET_MASK;
    let mut p = Ip4 {
        saddr: [h[12], h[13], h[14], h[15]],
        daddr: [h[16], h[17], h[18], h[19]],
        proto: h[ipv4::PROTO],
        ttl: h[ipv4::TTL],
        tos: h[ipv4::TOS],
        ihl,
        tot_len: u16::from_be_bytes([h[ipv4::TOT_LEN], h[ipv4::TOT_LEN + 1]]),
        later_fragment: offset != 0,
        fragment: offset != 0 || frag & ipv4::FRAG_MF != 0,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
    };
    if p.later_fragment {
        return Some(p);
    }
    // The L4 header, after a header of `ihl` bytes (options included).
    let l4 = L3 + (ihl & 0x3c);
    match p.proto {
        ipproto::TCP => {
            let t = ptr_at::<[u8; 14], C>(ctx, l4)?;
            // SAFETY: ptr_at checked the bounds.
            let t = unsafe { &*t };
            p.sport = u16::from_be_bytes([t[0], t[1]]);
            p.dport = u16::from_be_bytes([t[2], t[3]]);
            p.tcp_flags = t[13];
        }
        ipproto::UDP => {
            let u = ptr_at::<[u8; 4], C>(ctx, l4)?;
            // SAFETY: ptr_at checked the bounds.
            let u = unsafe { &*u };
            p.sport = u16::from_be_bytes([u[0], u[1]]);
            p.dport = u16::from_be_bytes([u[2], u[3]]);
        }
        ipproto::ICMP => {
            let i = ptr_at::<[u8; 8], C>(ctx, l4)?;
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
    Some(p)
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
