//! The fast path: a packet of an established connection is forwarded from
//! XDP exactly as the kernel would: the kernel's FIB (bpf_fib_lookup) picks
//! the next hop and its MAC addresses, the TTL is decremented with the
//! checksum fixed incrementally (RFC 1624), and the frame is redirected.
//! Anything else (no neighbour entry yet, options, fragments, TTL about to
//! expire, a packet too big for the egress MTU) goes to the stack.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams},
    helpers::{bpf_fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use coresvc_common::{
    checksum,
    proto::{eth, ipv4},
};

use crate::{
    firewall::fib_params,
    packet::ptr_at_mut,
    parse::{Ip4, L3},
};

/// `snat`: the source the packet leaves with (NAT after routing).
#[inline(always)]
pub fn try_forward(ctx: &XdpContext, p: &Ip4, ifindex: u32, snat: Option<([u8; 4], u16)>) -> Option<u32> {
    let (addr, port) = match snat {
        Some((a, port)) => (u32::from_ne_bytes(a), u32::from(port) | SNAT),
        None => (0, 0),
    };
    match forward(ctx, p, ifindex, addr, port) {
        NOT_FORWARDED => None,
        v => Some(v),
    }
}

const SNAT: u32 = 0x1_0000;
const NOT_FORWARDED: u32 = u32::MAX;

/// [`try_forward`] as a BPF subprogram (its FIB parameters in a frame of
/// their own), with scalar arguments and result: `port` has `SNAT` set when
/// the source is translated to `addr`; `NOT_FORWARDED` for the stack.
#[inline(never)]
fn forward(ctx: &XdpContext, p: &Ip4, ifindex: u32, addr: u32, port: u32) -> u32 {
    let snat = (port & SNAT != 0).then_some((addr.to_ne_bytes(), port as u16));
    forward_in(ctx, p, ifindex, snat).unwrap_or(NOT_FORWARDED)
}

#[inline(always)]
fn forward_in(ctx: &XdpContext, p: &Ip4, ifindex: u32, snat: Option<([u8; 4], u16)>) -> Option<u32> {
    if p.ihl != ipv4::MIN_HDR_LEN || p.fragment || p.ttl <= 1 {
        return None;
    }
    let mut fib = fib_params(p, ifindex);
    // SAFETY: `fib` is a valid, fully initialised parameter block.
    let rc = unsafe { bpf_fib_lookup(ctx.ctx.cast(), &mut fib, size_of::<FibParams>() as i32, 0) };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return None;
    }
    if let Some((addr, port)) = snat {
        crate::nat::xdp_rewrite(ctx, p, true, addr, port)?;
    }
    let ip = ptr_at_mut::<[u8; 20], XdpContext>(ctx, L3)?;
    let e = ptr_at_mut::<[u8; 12], XdpContext>(ctx, 0)?;
    // SAFETY: ptr_at_mut checked the bounds of both; nothing else holds
    // references into the frame.
    let (ip, e) = unsafe { (&mut *ip, &mut *e) };
    let old = u16::from_be_bytes([ip[ipv4::TTL], ip[ipv4::PROTO]]);
    ip[ipv4::TTL] -= 1;
    let new = u16::from_be_bytes([ip[ipv4::TTL], ip[ipv4::PROTO]]);
    let csum = u16::from_be_bytes([ip[ipv4::CSUM], ip[ipv4::CSUM + 1]]);
    let csum = checksum::update16(csum, old, new);
    ip[ipv4::CSUM..ipv4::CSUM + 2].copy_from_slice(&csum.to_be_bytes());
    e[eth::DST..eth::DST + 6].copy_from_slice(&fib.dmac);
    e[eth::SRC..eth::SRC + 6].copy_from_slice(&fib.smac);
    // SAFETY: no preconditions.
    Some(unsafe { bpf_redirect(fib.ifindex, 0) } as u32)
}
