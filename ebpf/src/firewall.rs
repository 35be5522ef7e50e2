//! Zones and the rule scan: the first matching rule of the active bank
//! decides a new flow (`coresvc_common::firewall` has the matching logic).

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_BLACKHOLE, BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_PROHIBIT, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LKUP_RET_UNREACHABLE,
        BPF_FIB_LOOKUP_SKIP_NEIGH, bpf_fib_lookup as FibParams,
    },
    cty::c_void,
    helpers::{bpf_fib_lookup, bpf_loop},
    programs::XdpContext,
};
use coresvc_common::firewall::{self, Flow, RuleMatch, ZONE_GATEWAY, ZONE_SEGMENT0, ZONE_UPLINK};
use coresvc_common::proto::{ipproto, port};
use coresvc_maps_schema::{IfaceInfo, ROLE_UPLINK, RULES_PER_BANK, SRC_GUARD_INSIDE, Settings, reason};

use crate::{
    maps::{self, RULE_STATS, RULES},
    parse::Ip4,
};

pub use coresvc_maps_schema::NO_RULE;

/// The zone of the interface a packet came in on.
#[inline(always)]
pub fn zone_of(iface: &IfaceInfo) -> u16 {
    if iface.role == ROLE_UPLINK { ZONE_UPLINK } else { ZONE_SEGMENT0 + (iface.segment as u16 & 0x3f) }
}

/// Where a packet goes, as the kernel's routing would decide it.
#[derive(Clone, Copy)]
pub enum Dest {
    /// The gateway itself (its addresses, broadcasts, multicast; anything
    /// the kernel delivers locally) or the zone of the interface the kernel
    /// routes it out of.
    Zone(u16),
    /// The kernel cannot forward it (no route, a blackhole, unreachable or
    /// prohibit route): the stack drops it
    /// or answers with an ICMP error, and nothing it forwards leaves
    /// untracked (TC egress checks).
    NoRoute,
}

/// Where `p`, arriving on `ifindex`, goes; `Err(reason)` for a routing
/// outcome the program cannot judge.
#[inline(always)]
pub fn dest_zone(ctx: &XdpContext, p: &Ip4, iface: &IfaceInfo, ifindex: u32) -> Result<Dest, u32> {
    match route(ctx, p, iface, ifindex) {
        c if c & ROUTE_ERR != 0 => Err(c & 0xffff),
        ROUTE_NONE => Ok(Dest::NoRoute),
        z => Ok(Dest::Zone(z as u16)),
    }
}

/// [`route`]'s results besides a zone.
const ROUTE_NONE: u32 = 0x1_0000;
const ROUTE_ERR: u32 = 0x2_0000;

/// [`dest_zone`] as a BPF subprogram (its 64-byte FIB parameters live in a
/// frame of their own), with its result in one scalar: a zone,
/// `ROUTE_NONE`, or `ROUTE_ERR | reason`.
#[inline(never)]
fn route(ctx: &XdpContext, p: &Ip4, iface: &IfaceInfo, ifindex: u32) -> u32 {
    match dest(ctx, p, iface, ifindex) {
        Ok(Dest::Zone(z)) => u32::from(z),
        Ok(Dest::NoRoute) => ROUTE_NONE,
        Err(r) => ROUTE_ERR | r,
    }
}

#[inline(always)]
fn dest(ctx: &XdpContext, p: &Ip4, iface: &IfaceInfo, ifindex: u32) -> Result<Dest, u32> {
    if maps::is_local(p.daddr) || p.daddr == [255; 4] || p.daddr[0] & 0xf0 == 0xe0 || directed_broadcast(iface, p.daddr)
    {
        return Ok(Dest::Zone(ZONE_GATEWAY));
    }
    let mut fib = fib_params(p, ifindex);
    // The route, not the path MTU (an oversize packet is still routed:
    // the stack fragments it or answers "fragmentation needed"), and not
    // the neighbour.
    fib.__bindgen_anon_1.tot_len = 0;
    // SAFETY: `fib` is a valid, fully initialised parameter block.
    let rc =
        unsafe { bpf_fib_lookup(ctx.ctx.cast(), &mut fib, size_of::<FibParams>() as i32, BPF_FIB_LOOKUP_SKIP_NEIGH) }
            as u32;
    match rc {
        // An interface coresvc does not manage counts as the outside.
        BPF_FIB_LKUP_RET_SUCCESS | BPF_FIB_LKUP_RET_NO_NEIGH => {
            Ok(Dest::Zone(maps::iface(fib.ifindex).map(|i| zone_of(&i)).unwrap_or(ZONE_UPLINK)))
        }
        // A local route that is not in LOCAL_ADDRS (a secondary or renewed
        // address), a broadcast or anycast route: delivered here.
        // Forwarding off on the interface: the FIB says only that, also for
        // a local destination; the stack forwards nothing and delivers what
        // is local, so it is judged as traffic for the gateway.
        BPF_FIB_LKUP_RET_NOT_FWDED | BPF_FIB_LKUP_RET_FWD_DISABLED => Ok(Dest::Zone(ZONE_GATEWAY)),
        BPF_FIB_LKUP_RET_BLACKHOLE | BPF_FIB_LKUP_RET_UNREACHABLE | BPF_FIB_LKUP_RET_PROHIBIT => Ok(Dest::NoRoute),
        _ => Err(reason::ROUTE_UNSUPPORTED),
    }
}

/// True when an ICMP error arriving on `ifindex` is related to a tracked
/// connection ([`conntrack::related_from`]), the quoted destination's side
/// found with the kernel's FIB when no packet came from it yet.
#[inline(always)]
pub fn related(
    ctx: &XdpContext,
    inner: ([u8; 4], u16, [u8; 4], u16, u8),
    outer_daddr: [u8; 4],
    ifindex: u32,
    now: u64,
) -> bool {
    match crate::conntrack::related_from(inner, outer_daddr, now) {
        Some(crate::conntrack::From::Iface(i)) => i == ifindex,
        Some(crate::conntrack::From::Route(d, via)) => {
            // SAFETY: an all-zero parameter block is valid; set below.
            let mut f: FibParams = unsafe { core::mem::zeroed() };
            f.family = 2; // AF_INET
            f.ifindex = if via != 0 { via } else { ifindex };
            f.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(inner.0);
            f.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(d);
            // SAFETY: a valid parameter block.
            let rc = unsafe {
                bpf_fib_lookup(ctx.ctx.cast(), &mut f, size_of::<FibParams>() as i32, BPF_FIB_LOOKUP_SKIP_NEIGH)
            } as u32;
            (rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH) && f.ifindex == ifindex
        }
        None => false,
    }
}

/// BCP 38: may a packet from `saddr` arrive on `iface`? On a segment: a
/// host of its network (not the gateway's own address), a network routed
/// behind it, or 0.0.0.0 asking DHCP. On the uplink: anything but the
/// inside networks and the gateway's addresses. Martians (0/8, 127/8,
/// multicast and above) nowhere.
#[inline(always)]
pub fn source_ok(p: &Ip4, iface: &IfaceInfo) -> bool {
    let s = p.saddr;
    if s == [0; 4] {
        return iface.role != ROLE_UPLINK && p.proto == ipproto::UDP && p.dport == port::DHCP_SERVER;
    }
    if s[0] == 0 || s[0] == 127 || s[0] >= 224 {
        return false;
    }
    if iface.role == ROLE_UPLINK {
        return !maps::is_local(s) && !maps::in_src_guard(SRC_GUARD_INSIDE, s);
    }
    if in_net(s, iface.cidr, iface.cidr_len) {
        return !maps::is_local(s);
    }
    maps::in_src_guard(1 + (iface.segment & 0x3f), s)
}

#[inline(always)]
fn in_net(addr: [u8; 4], net: [u8; 4], len: u8) -> bool {
    if len == 0 || len > 32 {
        return false;
    }
    let mask = u32::MAX << (32 - u32::from(len));
    u32::from_be_bytes(addr) & mask == u32::from_be_bytes(net) & mask
}

#[inline(always)]
fn directed_broadcast(iface: &IfaceInfo, daddr: [u8; 4]) -> bool {
    let plen = u32::from(iface.prefix_len);
    if plen == 0 || plen >= 31 {
        return false;
    }
    let host_mask = u32::MAX >> plen;
    let a = u32::from_be_bytes(iface.ipv4);
    u32::from_be_bytes(daddr) == (a | host_mask)
}

/// FIB lookup parameters for `p` arriving on `ifindex`.
#[inline(always)]
pub fn fib_params(p: &Ip4, ifindex: u32) -> FibParams {
    // SAFETY: an all-zero parameter block is valid; the fields are set below.
    let mut f: FibParams = unsafe { core::mem::zeroed() };
    f.family = 2; // AF_INET
    f.l4_protocol = p.proto;
    f.sport = p.sport.to_be();
    f.dport = p.dport.to_be();
    f.__bindgen_anon_1.tot_len = p.tot_len;
    f.ifindex = ifindex;
    f.__bindgen_anon_2.tos = p.tos;
    f.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(p.saddr);
    f.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(p.daddr);
    f
}

/// The rule scan's state, shared with the `bpf_loop` callback.
#[repr(C)]
struct Scan {
    flow: Flow,
    daddr: [u8; 4],
    base: u32,
    slot: u32,
    allow: u32,
}

/// One step of the scan: rule `i` of the bank. Returns 1 (stop) on a match.
/// A separate function: the verifier checks it once, however many rules.
#[inline(never)]
extern "C" fn scan_step(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Scan` on `evaluate`'s stack.
    let c = unsafe { &mut *(ctx as *mut Scan) };
    let idx = c.base + (i as u32 & (RULES_PER_BANK - 1));
    let Some(r) = RULES.get(idx) else { return 1 };
    let m = RuleMatch::from(r);
    let (set, daddr) = (r.prefix_set, c.daddr);
    if firewall::matches(&m, &c.flow, || maps::in_prefix_set(set, daddr)) {
        c.slot = idx;
        c.allow = u32::from(r.action == firewall::ACTION_ALLOW);
        return 1;
    }
    0
}

/// The decision of the active rule bank for `flow` to `daddr`: the deciding
/// rule's absolute index and whether it allows (no match: deny).
#[inline(always)]
pub fn evaluate(s: &Settings, flow: &Flow, daddr: [u8; 4]) -> (u32, bool) {
    let bank = s.active_bank & 1;
    let count = if bank == 0 { s.rule_count[0] } else { s.rule_count[1] };
    let mut scan = Scan { flow: *flow, daddr, base: bank * RULES_PER_BANK, slot: NO_RULE, allow: 0 };
    // SAFETY: bpf_loop calls `scan_step` with a pointer to `scan`, which
    // outlives the call.
    unsafe {
        bpf_loop(count.min(RULES_PER_BANK), scan_step as *mut c_void, (&mut scan as *mut Scan).cast(), 0);
    }
    (scan.slot, scan.allow != 0)
}

/// Counts a packet for the rule at absolute index `slot`.
#[inline(always)]
pub fn count(slot: u32, bytes: u64) {
    if slot >= 2 * RULES_PER_BANK {
        return;
    }
    if let Some(c) = RULE_STATS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot, written by this CPU only.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}
