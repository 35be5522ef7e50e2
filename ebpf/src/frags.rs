//! IPv4 fragments. Only a datagram's first fragment carries the ports the
//! rules and the connection table judge by; its verdict (and translation)
//! is remembered in `FRAGS` by (source, destination, IP id, protocol), and
//! the later fragments follow it: let through (and translated) if the first
//! was, dropped if it was not seen. Nothing is reassembled; nothing passes
//! unjudged. XDP remembers what arrives (destination NAT), TC egress what
//! leaves (source NAT, and the fragments the stack makes of a datagram it
//! forwards).

use aya_ebpf::programs::{TcContext, XdpContext};
use coresvc_common::checksum;
use coresvc_maps_schema::{FRAG_TIMEOUT_NS, FragKey, FragVerdict, reason};

use crate::{
    maps::FRAGS,
    packet::ptr_at_mut,
    parse::{Ip4, L3},
};

/// Where a datagram's fragments are looked at.
pub const INGRESS: u8 = 0;
pub const EGRESS: u8 = 1;

#[inline(always)]
fn key(saddr: [u8; 4], daddr: [u8; 4], p: &Ip4, stage: u8) -> FragKey {
    FragKey { saddr, daddr, id: p.id, proto: p.proto, stage }
}

/// Remembers that the first fragment of `p`'s datagram, as it arrived from
/// `saddr` to `daddr`, was let through; its later fragments get `addr`
/// (0: no translation).
#[inline(always)]
pub fn remember(p: &Ip4, saddr: [u8; 4], daddr: [u8; 4], stage: u8, addr: [u8; 4], now: u64) {
    let v = FragVerdict { first_ns: now, addr, _pad: [0; 4] };
    let _ = FRAGS.insert(key(saddr, daddr, p, stage), v, 0);
}

/// The verdict of the first fragment of later fragment `p`'s datagram.
#[inline(always)]
fn verdict(p: &Ip4, stage: u8, now: u64) -> Result<[u8; 4], u32> {
    // SAFETY: copied out at once.
    let v = unsafe { FRAGS.get(key(p.saddr, p.daddr, p, stage)).copied() }.ok_or(reason::FRAG_UNTRACKED)?;
    if now.saturating_sub(v.first_ns) > FRAG_TIMEOUT_NS {
        return Err(reason::FRAG_UNTRACKED);
    }
    Ok(v.addr)
}

/// A later fragment arriving (XDP): its destination translated as its
/// first fragment's was.
#[inline(always)]
pub fn follow_in(ctx: &XdpContext, p: &Ip4, now: u64) -> Result<(), u32> {
    let addr = verdict(p, INGRESS, now)?;
    if addr == [0; 4] {
        return Ok(());
    }
    let ip = ptr_at_mut::<[u8; 20], XdpContext>(ctx, L3).ok_or(reason::IPV4_TRUNCATED)?;
    // SAFETY: checked by ptr_at_mut.
    let ip = unsafe { &mut *ip };
    let old = u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]]);
    ip[16..20].copy_from_slice(&addr);
    let c = checksum::update32(u16::from_be_bytes([ip[10], ip[11]]), old, u32::from_be_bytes(addr));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// A later fragment leaving (TC egress): its source translated as its
/// first fragment's was.
#[inline(always)]
pub fn follow_out(ctx: &mut TcContext, p: &Ip4, now: u64) -> Result<(), u32> {
    let addr = verdict(p, EGRESS, now)?;
    if addr == [0; 4] {
        return Ok(());
    }
    let old = u32::from_ne_bytes(p.saddr);
    ctx.l3_csum_replace(L3 + 10, u64::from(old), u64::from(u32::from_ne_bytes(addr)), 4)
        .map_err(|_| reason::IPV4_TRUNCATED)?;
    ctx.store(L3 + 12, &addr, 0).map_err(|_| reason::IPV4_TRUNCATED)?;
    Ok(())
}
