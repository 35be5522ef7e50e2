//! Zones and the rule scan: the first matching rule of the active bank
//! decides a new flow (`coresvc_common::firewall` has the matching logic).

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams},
    cty::c_void,
    helpers::{bpf_fib_lookup, bpf_loop},
    programs::XdpContext,
};
use coresvc_common::firewall::{self, Flow, RuleMatch, ZONE_GATEWAY, ZONE_SEGMENT0, ZONE_UPLINK};
use coresvc_maps_schema::{IfaceInfo, ROLE_UPLINK, RULES_PER_BANK, Settings};

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

/// Where a packet goes: the gateway itself (its addresses, broadcasts,
/// multicast), or the zone of the interface the kernel would route it out
/// of. `None` when the kernel has no route: the stack answers those.
#[inline(always)]
pub fn dest_zone(ctx: &XdpContext, p: &Ip4, iface: &IfaceInfo, ifindex: u32) -> Option<u16> {
    if maps::is_local(p.daddr) || p.daddr == [255; 4] || p.daddr[0] & 0xf0 == 0xe0 || directed_broadcast(iface, p.daddr)
    {
        return Some(ZONE_GATEWAY);
    }
    let mut fib = fib_params(p, ifindex);
    // SAFETY: `fib` is a valid, fully initialised parameter block.
    let rc = unsafe { bpf_fib_lookup(ctx.ctx.cast(), &mut fib, size_of::<FibParams>() as i32, 0) };
    if rc == BPF_FIB_LKUP_RET_SUCCESS as i64 || rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        // An interface coresvc does not manage counts as the outside.
        return Some(maps::iface(fib.ifindex).map(|i| zone_of(&i)).unwrap_or(ZONE_UPLINK));
    }
    None
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
