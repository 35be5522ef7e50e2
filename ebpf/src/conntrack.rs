//! Connection tracking in the data path: one entry per connection (both
//! directions), created for new flows the rules allow, updated by every
//! packet, expired by timeout. Creation never leaves a half-made entry: a
//! full table refuses the new flow (counted), it never allows it untracked.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns};
use coresvc_common::{
    conntrack::{self as ct, CT_F_ORIG_IS_A},
    proto::ipproto,
};
use coresvc_maps_schema::{CtEntry, CtKey, reason};

use crate::{maps::CONNTRACK, parse::Ip4};

/// A packet's key and which side of it the packet's source is.
#[derive(Clone, Copy)]
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

/// Accounts a packet to its connection and advances the state.
#[inline(always)]
pub fn update(e: *mut CtEntry, p: &Ip4, from_orig: bool, now: u64, bytes: u64, ifindex: u32) {
    // SAFETY: a live entry pointer; concurrent updates only blur counters.
    unsafe {
        (*e).last_ns = now;
        if from_orig {
            (*e).packets_orig += 1;
            (*e).bytes_orig += bytes;
        } else {
            (*e).packets_reply += 1;
            (*e).bytes_reply += bytes;
            if (*e).ifindex_reply == 0 {
                (*e).ifindex_reply = ifindex;
            }
        }
        let state = (*e).state;
        match p.proto {
            ipproto::TCP => {
                let syn_only = p.tcp_flags & (ct::TCP_SYN | ct::TCP_ACK) == ct::TCP_SYN;
                if syn_only && from_orig && state >= ct::CT_CLOSING {
                    // The port pair is reused for a new connection.
                    (*e).state = ct::CT_SYN_SENT;
                    (*e).flags &= !(ct::CT_F_FIN_ORIG | ct::CT_F_FIN_REPLY);
                    return;
                }
                let fins = (*e).flags & (ct::CT_F_FIN_ORIG | ct::CT_F_FIN_REPLY);
                let (next, fins) = ct::tcp_next(state, fins, p.tcp_flags, from_orig);
                (*e).state = next;
                (*e).flags = ((*e).flags & !(ct::CT_F_FIN_ORIG | ct::CT_F_FIN_REPLY)) | fins;
            }
            _ => {
                if !from_orig && state == ct::CT_NEW {
                    (*e).state = ct::CT_ESTABLISHED;
                }
            }
        }
    }
}

/// NAT details of a new entry: (outside address, snat port, dnat port, kind).
pub type Nat = ([u8; 4], u16, u16, u8);

/// Creates the entry of a new connection whose originator sent `p`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn create(
    t: &Tuple,
    p: &Ip4,
    generation: u32,
    rule: u32,
    ifindex: u32,
    now: u64,
    bytes: u64,
    flags: u8,
    nat: Nat,
) -> Result<(), u32> {
    let state = if p.proto == ipproto::TCP { ct::CT_SYN_SENT } else { ct::CT_NEW };
    let mut f = flags;
    if t.src_is_a {
        f |= CT_F_ORIG_IS_A;
    }
    let e = CtEntry {
        created_ns: now,
        last_ns: now,
        packets_orig: 1,
        bytes_orig: bytes,
        packets_reply: 0,
        bytes_reply: 0,
        generation,
        rule: rule as u16,
        state,
        flags: f,
        ifindex_orig: ifindex,
        ifindex_reply: 0,
        nat_addr: nat.0,
        snat_port: nat.1,
        dnat_port: nat.2,
        nat_kind: nat.3,
        _pad: [0; 7],
    };
    match CONNTRACK.insert(t.key, e, u64::from(BPF_NOEXIST)) {
        Ok(()) => Ok(()),
        // Another CPU created it first: that entry stands.
        Err(e) if e == -17 => Ok(()),
        // The table is full (E2BIG) or memory is short: refuse the flow.
        Err(_) => Err(reason::CT_FULL),
    }
}

/// True when an ICMP error answers a packet of a tracked connection.
#[inline(always)]
pub fn related(inner: ([u8; 4], u16, [u8; 4], u16, u8), now: u64) -> bool {
    let (s, sp, d, dp, proto) = inner;
    lookup(&tuple_of(s, sp, d, dp, proto), now).is_some()
}
