//! The coresvc XDP/TC programs: one thin entry point per attach point; the
//! logic lives in small modules and returns verdicts, never panics.
#![no_std]
#![no_main]

mod conntrack;
mod counters;
mod firewall;
mod forward;
mod ipv4;
mod maps;
mod packet;
mod parse;

use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use coresvc_common::{
    conntrack::{CT_F_LOCAL, fast_path_state},
    firewall::{Flow, ZONE_GATEWAY},
    proto::{icmp, ipproto, port},
};
use coresvc_maps_schema::{
    CT_SELF_RULE, SETTINGS_F_DROP_INVALID_IPV4, SETTINGS_F_FAST_FORWARD, SETTINGS_F_FIREWALL, reason,
};

use crate::packet::frame_len;

/// XDP on every segment interface.
#[xdp]
pub fn segment_ingress(ctx: XdpContext) -> u32 {
    ingress(&ctx)
}

/// XDP on the uplink.
#[xdp]
pub fn uplink_ingress(ctx: XdpContext) -> u32 {
    ingress(&ctx)
}

#[inline(always)]
fn ingress(ctx: &XdpContext) -> u32 {
    let verdict = match process(ctx) {
        Ok(v) => v,
        Err(reason) => {
            counters::count_drop(ctx, reason);
            xdp_action::XDP_DROP
        }
    };
    counters::count_verdict(ctx, verdict);
    verdict
}

/// Decides what happens to a frame: `Ok(action)`, or `Err(reason)` to drop.
#[inline(always)]
fn process(ctx: &XdpContext) -> Result<u32, u32> {
    const PASS: u32 = xdp_action::XDP_PASS;
    let Some(settings) = maps::settings() else { return Ok(PASS) };
    let ifindex = ctx.ingress_ifindex() as u32;
    // Only interfaces the agent configured get more than counting.
    let Some(iface) = maps::iface(ifindex) else { return Ok(PASS) };
    if settings.flags & SETTINGS_F_DROP_INVALID_IPV4 != 0 {
        ipv4::check(ctx)?;
    }
    if settings.flags & SETTINGS_F_FIREWALL == 0 {
        return Ok(PASS);
    }
    // Not IPv4 (ARP, IPv6, VLAN-tagged): the stack's business.
    let Some(p) = parse::ipv4(ctx) else { return Ok(PASS) };
    let now = conntrack::now();
    let bytes = frame_len(ctx) as u64;
    let from = firewall::zone_of(&iface);

    // ICMP errors about a tracked connection are related traffic.
    if parse::is_icmp_error(&p) {
        if let Some(inner) = parse::icmp_inner(ctx, &p) {
            if conntrack::related(inner, now) {
                return Ok(PASS);
            }
        }
    }

    let t = conntrack::tuple(&p);
    if !p.later_fragment {
        if let Some(e) = conntrack::lookup(&t, now) {
            let from_orig = conntrack::from_orig(e, &t);
            // SAFETY: a live entry pointer.
            let (generation, local, proto, rule) =
                unsafe { ((*e).generation, (*e).flags & CT_F_LOCAL != 0, t.key.proto, u32::from((*e).rule)) };
            let mut rule = rule;
            if generation != settings.generation && !local {
                // The rules changed since this connection was admitted: it
                // stays only if the new rules still allow it.
                let Some(there) = firewall::dest_zone(ctx, &p, &iface, ifindex) else { return Ok(PASS) };
                let (flow, daddr) = if from_orig {
                    (Flow { from, to: there, proto: p.proto, dport: p.dport }, p.daddr)
                } else {
                    (Flow { from: there, to: from, proto: p.proto, dport: p.sport }, p.saddr)
                };
                let (slot, allow) = firewall::evaluate(settings, &flow, daddr);
                if !allow {
                    let _ = maps::CONNTRACK.remove(t.key);
                    firewall::count(slot, bytes);
                    return Err(reason::FW_REVOKED);
                }
                rule = slot;
                // SAFETY: a live entry pointer.
                unsafe {
                    (*e).generation = settings.generation;
                    (*e).rule = slot as u16;
                }
            }
            conntrack::update(e, &p, from_orig, now, bytes, ifindex);
            if !local {
                firewall::count(rule, bytes);
            }
            // SAFETY: a live entry pointer.
            let state = unsafe { (*e).state };
            if settings.flags & SETTINGS_F_FAST_FORWARD != 0 && !local && fast_path_state(proto, state) {
                if let Some(v) = forward::try_forward(ctx, &p, ifindex) {
                    return Ok(v);
                }
            }
            return Ok(PASS);
        }
    }

    // A new flow (or a later fragment, judged without ports): the rules decide.
    let Some(to) = firewall::dest_zone(ctx, &p, &iface, ifindex) else {
        // No route: the stack answers (ICMP unreachable).
        return Ok(PASS);
    };
    // Only a SYN opens a forwarded TCP connection.
    if to != ZONE_GATEWAY
        && p.proto == ipproto::TCP
        && !p.later_fragment
        && !coresvc_common::conntrack::tcp_opens(p.tcp_flags)
    {
        return Err(reason::CT_INVALID);
    }
    let dport = if p.later_fragment { 0 } else { p.dport };
    let flow = Flow { from, to, proto: p.proto, dport };
    let (slot, allow) = firewall::evaluate(settings, &flow, p.daddr);
    firewall::count(slot, bytes);
    if !allow {
        return Err(reason::FW_DENY);
    }
    // Traffic for the gateway itself is judged packet by packet (its replies
    // are not tracked); forwarded flows are tracked from the first packet.
    if to == ZONE_GATEWAY || p.later_fragment {
        return Ok(PASS);
    }
    conntrack::create(&t, &p, settings.generation, slot, ifindex, now, bytes, 0)?;
    Ok(PASS)
}

/// TC egress on every interface: tracks connections the gateway itself
/// opens (DNS forwarding, TFTP data, pings), so their replies are let in.
#[classifier]
pub fn egress(ctx: TcContext) -> i32 {
    track_local(&ctx);
    TC_ACT_OK as i32
}

#[inline(always)]
fn track_local(ctx: &TcContext) {
    let Some(settings) = maps::settings() else { return };
    if settings.flags & SETTINGS_F_FIREWALL == 0 {
        return;
    }
    let Some(p) = parse::ipv4(ctx) else { return };
    if p.later_fragment || !maps::is_local(p.saddr) {
        return;
    }
    // Only a SYN opens a TCP connection of the gateway's own.
    if p.proto == ipproto::TCP
        && !coresvc_common::conntrack::tcp_opens(p.tcp_flags)
        && conntrack::lookup(&conntrack::tuple(&p), conntrack::now()).is_none()
    {
        return;
    }
    // Answers of the gateway's services: their requests are allowed packet
    // by packet, so the answers need no state (and would only fill the table).
    if (p.proto == ipproto::UDP || p.proto == ipproto::TCP)
        && (p.sport == port::DNS || p.sport == port::DHCP_SERVER || p.sport == port::TFTP)
    {
        return;
    }
    if p.proto == ipproto::ICMP && p.icmp_type != icmp::ECHO_REQUEST {
        return;
    }
    let now = conntrack::now();
    let bytes = frame_len(ctx) as u64;
    let t = conntrack::tuple(&p);
    match conntrack::lookup(&t, now) {
        Some(e) => {
            let from_orig = conntrack::from_orig(e, &t);
            conntrack::update(e, &p, from_orig, now, bytes, 0);
        }
        None => {
            let _ = conntrack::create(&t, &p, settings.generation, CT_SELF_RULE, 0, now, bytes, CT_F_LOCAL);
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
