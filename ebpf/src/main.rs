//! The coresvc XDP/TC programs: one thin entry point per attach point; the
//! logic lives in small modules and returns verdicts, never panics.
#![no_std]
#![no_main]

mod counters;
mod ipv4;
mod maps;
mod packet;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use coresvc_maps_schema::{ROLE_SEGMENT, ROLE_UPLINK};

/// XDP on every segment interface.
#[xdp]
pub fn segment_ingress(ctx: XdpContext) -> u32 {
    ingress(&ctx, ROLE_SEGMENT)
}

/// XDP on the uplink.
#[xdp]
pub fn uplink_ingress(ctx: XdpContext) -> u32 {
    ingress(&ctx, ROLE_UPLINK)
}

#[inline(always)]
fn ingress(ctx: &XdpContext, _role: u32) -> u32 {
    let verdict = match classify(ctx) {
        Ok(()) => xdp_action::XDP_PASS,
        Err(reason) => {
            counters::count_drop(ctx, reason);
            xdp_action::XDP_DROP
        }
    };
    counters::count_verdict(ctx, verdict);
    verdict
}

/// Decides what happens to a frame. `Ok` passes it to the stack; `Err` carries
/// the drop reason (`coresvc_maps_schema::reason`).
#[inline(always)]
fn classify(ctx: &XdpContext) -> Result<(), u32> {
    let Some(settings) = maps::settings() else {
        return Ok(());
    };
    // Only interfaces the agent configured get more than counting.
    if maps::iface(ctx).is_none() {
        return Ok(());
    }
    if settings.flags & coresvc_maps_schema::SETTINGS_F_DROP_INVALID_IPV4 != 0 {
        ipv4::check(ctx)?;
    }
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
