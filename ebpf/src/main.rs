//! The coresvc XDP/TC programs: one thin entry point per attach point; the
//! logic lives in small modules and returns verdicts, never panics.
#![no_std]
#![no_main]

mod conntrack;
mod counters;
mod dns;
mod firewall;
mod forward;
mod ipv4;
mod maps;
mod nat;
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
    CT_SELF_RULE, CtEntry, IFACE_F_NAT, IfaceInfo, NAT_DNAT, NAT_HAIRPIN, NAT_NONE, NAT_SNAT, NO_RULE, ROLE_SEGMENT,
    SETTINGS_F_DNS_CACHE, SETTINGS_F_DROP_INVALID_IPV4, SETTINGS_F_FAST_FORWARD, SETTINGS_F_FIREWALL, Settings, reason,
};

use crate::packet::frame_len;

/// XDP on every segment interface (with the DNS answer cache).
#[xdp]
pub fn segment_ingress(ctx: XdpContext) -> u32 {
    ingress::<true>(&ctx)
}

/// XDP on the uplink.
#[xdp]
pub fn uplink_ingress(ctx: XdpContext) -> u32 {
    ingress::<false>(&ctx)
}

#[inline(always)]
fn ingress<const SEGMENT: bool>(ctx: &XdpContext) -> u32 {
    // Only interfaces the agent configured get more than counting.
    let Some(iface) = maps::iface(ctx.ingress_ifindex() as u32) else {
        counters::count_verdict(ctx, 0, xdp_action::XDP_PASS);
        return xdp_action::XDP_PASS;
    };
    let verdict = match decide::<SEGMENT>(ctx, &iface) {
        Ok(v) => v,
        Err(reason) => {
            counters::count_drop(ctx, reason);
            xdp_action::XDP_DROP
        }
    };
    counters::count_verdict(ctx, iface.stats_slot, verdict);
    verdict
}

/// Decides what happens to a frame: `Ok(action)`, or `Err(reason)` to drop.
#[inline(always)]
fn decide<const SEGMENT: bool>(ctx: &XdpContext, iface: &IfaceInfo) -> Result<u32, u32> {
    let Some(settings) = maps::settings() else { return Ok(xdp_action::XDP_PASS) };
    // Queries to a segment's DNS service that the cache can answer (it
    // checks the headers it relies on itself). Like all traffic to the
    // gateway they are judged by the firewall packet by packet (the cache
    // asks it too) and never tracked.
    if SEGMENT && settings.flags & SETTINGS_F_DNS_CACHE != 0 && iface.role == ROLE_SEGMENT {
        if let Some(v) = dns::answer(ctx, settings, iface) {
            return Ok(v);
        }
    }
    process(ctx, settings, iface)
}

/// Everything but the DNS cache. A function of its own (a BPF subprogram),
/// so its stack frame and the cache's are never both on the stack.
#[inline(never)]
fn process(ctx: &XdpContext, settings: &Settings, iface: &IfaceInfo) -> Result<u32, u32> {
    const PASS: u32 = xdp_action::XDP_PASS;
    let ifindex = ctx.ingress_ifindex() as u32;
    let iface = *iface;
    if settings.flags & SETTINGS_F_DROP_INVALID_IPV4 != 0 {
        ipv4::check(ctx)?;
    }
    if settings.flags & SETTINGS_F_FIREWALL == 0 {
        return Ok(PASS);
    }
    // Not IPv4 (ARP, IPv6, VLAN-tagged): the stack's business.
    let Some(mut p) = parse::ipv4(ctx) else { return Ok(PASS) };
    let now = conntrack::now();
    let bytes = frame_len(ctx) as u64;
    let from = firewall::zone_of(&iface);
    let nat_on = settings.nat_addr != [0; 4];

    // Destination NAT, before routing: traffic for the masquerade address is
    // a reply to a masqueraded connection, or for a port forward.
    // The port-forwarded outside port, or 0 (a plain integer: an `Option`'s
    // undefined payload gets spilled, and the verifier refuses reading it).
    let mut forwarded_port: u16 = 0;
    if nat_on && p.daddr == settings.nat_addr && !p.later_fragment {
        if parse::is_icmp_error(&p) {
            if let Some((qs, qsp, qd, qdp, qproto)) = parse::icmp_inner(ctx, &p) {
                if qs == settings.nat_addr {
                    if let Some((a, ap)) = nat::lookup_in(settings.nat_addr, qsp, qproto) {
                        let qdp = if qproto == ipproto::ICMP { ap } else { qdp };
                        if conntrack::related((a, ap, qd, qdp, qproto), now) {
                            nat::xdp_icmp_error_in(ctx, &p, a, ap).ok_or(reason::IPV4_TRUNCATED)?;
                            // Routed to the inside host by the stack.
                            return Ok(PASS);
                        }
                    }
                }
            }
        } else if let Some((a, ap)) = nat::lookup_in(settings.nat_addr, p.dport, p.proto) {
            let sport = if p.proto == ipproto::ICMP { ap } else { p.sport };
            if conntrack::lookup(&conntrack::tuple_of(p.saddr, sport, a, ap, p.proto), now).is_some() {
                nat::xdp_rewrite(ctx, &p, false, a, ap).ok_or(reason::IPV4_TRUNCATED)?;
                p.daddr = a;
                p.dport = ap;
                p.sport = sport;
            }
        } else if let Some((b, bp)) = nat::lookup_forward(settings.nat_addr, p.dport, p.proto) {
            nat::xdp_rewrite(ctx, &p, false, b, bp).ok_or(reason::IPV4_TRUNCATED)?;
            forwarded_port = p.dport;
            p.daddr = b;
            p.dport = bp;
        }
    }

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
            if generation != settings.generation && !local && rule != NO_RULE {
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
                // SAFETY: a live entry pointer.
                let snat = source_nat(unsafe { &*e }, from_orig);
                if let Some(v) = forward::try_forward(ctx, &p, ifindex, snat) {
                    return Ok(v);
                }
            }
            return Ok(PASS);
        }
    }

    // A new flow (or a later fragment, judged without ports).
    // Only a SYN opens a forwarded TCP connection.
    let forwarding = forwarded_port != 0 || !maps::is_local(p.daddr);
    if forwarding && p.proto == ipproto::TCP && !p.later_fragment && !coresvc_common::conntrack::tcp_opens(p.tcp_flags)
    {
        return Err(reason::CT_INVALID);
    }
    let Some(to) = firewall::dest_zone(ctx, &p, &iface, ifindex) else {
        // No route: the stack answers (ICMP unreachable).
        return Ok(PASS);
    };
    if forwarded_port != 0 {
        let fport = forwarded_port;
        // A port forward admits its flows; from a segment it is a hairpin,
        // masqueraded so the inside host answers through the gateway.
        let (kind, (snat_port, fresh)) = if from == coresvc_common::firewall::ZONE_UPLINK {
            (NAT_DNAT, (0, false))
        } else {
            (NAT_HAIRPIN, nat::bind(settings, p.saddr, p.sport, p.proto, now)?)
        };
        let n = (settings.nat_addr, snat_port, fport, kind);
        if let Err(r) = conntrack::create(&t, &p, settings.generation, NO_RULE, ifindex, now, bytes, 0, n) {
            if fresh {
                nat::release(settings.nat_addr, p.saddr, p.sport, snat_port, p.proto);
            }
            return Err(r);
        }
        return Ok(PASS);
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
    let mut n = (settings.nat_addr, 0, 0, NAT_NONE);
    let mut fresh = false;
    if nat_on && to == coresvc_common::firewall::ZONE_UPLINK && iface.flags & IFACE_F_NAT != 0 {
        let (port, new) = nat::bind(settings, p.saddr, p.sport, p.proto, now)?;
        n = (settings.nat_addr, port, 0, NAT_SNAT);
        fresh = new;
    }
    if let Err(r) = conntrack::create(&t, &p, settings.generation, slot, ifindex, now, bytes, 0, n) {
        if fresh {
            nat::release(settings.nat_addr, p.saddr, p.sport, n.1, p.proto);
        }
        return Err(r);
    }
    Ok(PASS)
}

/// The source translation a packet of `e` needs after routing: the
/// masqueraded originator, or the inside host answering a port forward.
#[inline(always)]
fn source_nat(e: &CtEntry, from_orig: bool) -> Option<([u8; 4], u16)> {
    match (e.nat_kind, from_orig) {
        (NAT_SNAT, true) | (NAT_HAIRPIN, true) => Some((e.nat_addr, e.snat_port)),
        (NAT_DNAT, false) | (NAT_HAIRPIN, false) => Some((e.nat_addr, e.dnat_port)),
        _ => None,
    }
}

/// TC egress on every interface: source NAT after routing, and tracking of
/// the connections the gateway itself opens (DNS forwarding, TFTP data,
/// pings), so their replies are let in.
#[classifier]
pub fn egress(mut ctx: TcContext) -> i32 {
    postrouting(&mut ctx);
    TC_ACT_OK as i32
}

#[inline(always)]
fn postrouting(ctx: &mut TcContext) {
    let Some(settings) = maps::settings() else { return };
    if settings.flags & SETTINGS_F_FIREWALL == 0 {
        return;
    }
    let Some(p) = parse::ipv4(ctx) else { return };
    if p.later_fragment {
        return;
    }
    if settings.nat_addr != [0; 4] && parse::is_icmp_error(&p) && icmp_error_out(ctx, settings, &p) {
        return;
    }
    if maps::is_local(p.saddr) {
        track_local(ctx, settings, &p);
        return;
    }
    if settings.nat_addr == [0; 4] {
        return;
    }
    let t = conntrack::tuple(&p);
    if let Some(e) = conntrack::lookup(&t, conntrack::now()) {
        let from_orig = conntrack::from_orig(e, &t);
        // SAFETY: a live entry pointer.
        if let Some((addr, port)) = source_nat(unsafe { &*e }, from_orig) {
            let _ = nat::tc_rewrite(ctx, &p, true, addr, port);
        }
    }
}

/// An ICMP error about a translated connection, leaving towards the
/// outside (from an inside host, or from the gateway about a packet it had
/// already translated): the outside host must see the addresses it used.
#[inline(always)]
fn icmp_error_out(ctx: &TcContext, settings: &Settings, p: &parse::Ip4) -> bool {
    let Some((qs, qsp, qd, qdp, qproto)) = parse::icmp_inner(ctx, p) else { return false };
    let t = conntrack::tuple_of(qs, qsp, qd, qdp, qproto);
    let Some(e) = conntrack::lookup(&t, conntrack::now()) else { return false };
    let from_orig = conntrack::from_orig(e, &t);
    // SAFETY: a live entry pointer.
    let (kind, snat_port, dnat_port) = unsafe { ((*e).nat_kind, (*e).snat_port, (*e).dnat_port) };
    let port = match (kind, from_orig) {
        // The quoted packet came from outside to a forwarded port.
        (NAT_DNAT, true) => dnat_port,
        // The quoted packet was an answer to a masqueraded inside host.
        (NAT_SNAT, false) => snat_port,
        _ => return false,
    };
    let _ = nat::tc_icmp_error_out(ctx, p, settings.nat_addr, port);
    true
}

#[inline(always)]
fn track_local(ctx: &TcContext, settings: &Settings, p: &parse::Ip4) {
    // Only a SYN opens a TCP connection of the gateway's own.
    if p.proto == ipproto::TCP
        && !coresvc_common::conntrack::tcp_opens(p.tcp_flags)
        && conntrack::lookup(&conntrack::tuple(p), conntrack::now()).is_none()
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
    let t = conntrack::tuple(p);
    match conntrack::lookup(&t, now) {
        Some(e) => {
            let from_orig = conntrack::from_orig(e, &t);
            conntrack::update(e, p, from_orig, now, bytes, 0);
        }
        None => {
            let none = (settings.nat_addr, 0, 0, NAT_NONE);
            let _ = conntrack::create(&t, p, settings.generation, CT_SELF_RULE, 0, now, bytes, CT_F_LOCAL, none);
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
