//! Per-interface verdict counters and per-reason drop counters (per CPU, so
//! plain increments are race-free).

use aya_ebpf::{EbpfContext, programs::XdpContext};
use aya_log_ebpf::{debug, info};
use coresvc_maps_schema::if_stats_index;

use crate::{
    maps::{DROP_STATS, IF_STATS},
    packet::{Bounds, frame_len},
};

/// Counts the frame under `verdict` for the interface with stats slot
/// `slot` (an array index: no hashing on the common path). The first
/// frame of a verdict on a CPU is logged (the agent zeroes a slot when it
/// gives it to an interface).
#[inline(always)]
pub fn count_verdict(ctx: &XdpContext, slot: u8, verdict: u32) {
    if let Some(c) = IF_STATS.get_ptr_mut(if_stats_index(slot, verdict)) {
        // SAFETY: a per-CPU slot, written by this CPU only.
        let first = unsafe {
            (*c).packets += 1;
            (*c).bytes += frame_len(ctx) as u64;
            (*c).packets == 1
        };
        if first {
            info!(
                ctx,
                "first packet with verdict {} on ifindex {} (on this CPU)",
                verdict,
                ctx.ingress_ifindex() as u32
            );
        }
    }
}

/// Counts a dropped frame (XDP or TC) under its reason.
#[inline(always)]
pub fn count_drop<C: EbpfContext + Bounds>(ctx: &C, reason: u32) {
    debug!(ctx, "drop: reason {}", reason);
    if let Some(c) = DROP_STATS.get_ptr_mut(reason) {
        // SAFETY: a per-CPU slot, written by this CPU only.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += frame_len(ctx) as u64;
        }
    }
}
