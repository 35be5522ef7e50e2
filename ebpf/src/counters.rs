//! Per-interface verdict counters and per-reason drop counters (per CPU, so
//! plain increments are race-free).

use aya_ebpf::{bindings::BPF_NOEXIST, programs::XdpContext};
use aya_log_ebpf::{debug, info};
use coresvc_maps_schema::{IfVerdict, PacketCount};

use crate::{
    maps::{DROP_STATS, IF_STATS},
    packet::frame_len,
};

#[inline(always)]
pub fn count_verdict(ctx: &XdpContext, verdict: u32) {
    let key = IfVerdict { ifindex: ctx.ingress_ifindex() as u32, verdict };
    let bytes = frame_len(ctx) as u64;
    match IF_STATS.get_ptr_mut(key) {
        Some(c) => {
            // SAFETY: a per-CPU slot, written by this CPU only.
            unsafe {
                (*c).packets += 1;
                (*c).bytes += bytes;
            }
        }
        None => {
            // The agent creates the entries of the interfaces it attaches to;
            // anything else is created here, once.
            let _ = IF_STATS.insert(key, PacketCount { packets: 1, bytes }, u64::from(BPF_NOEXIST));
            info!(ctx, "first packet with verdict {} on ifindex {}", verdict, key.ifindex);
        }
    }
}

#[inline(always)]
pub fn count_drop(ctx: &XdpContext, reason: u32) {
    debug!(ctx, "drop on ifindex {}: reason {}", ctx.ingress_ifindex() as u32, reason);
    if let Some(c) = DROP_STATS.get_ptr_mut(reason) {
        // SAFETY: a per-CPU slot, written by this CPU only.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += frame_len(ctx) as u64;
        }
    }
}
