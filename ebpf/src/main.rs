//! The coresvc XDP/TC programs: one thin entry point per attach point; the
//! logic lives in small modules and returns verdicts, never panics.
#![no_std]
#![no_main]

mod conntrack;
mod counters;
mod dns;
mod firewall;
mod forward;
mod frags;
mod ipv4;
mod maps;
mod nat;
mod packet;
mod parse;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use coresvc_common::{
    conntrack::{CT_F_LOCAL, NO_WSCALE, TCP_SYN, fast_path_state},
    firewall::{Flow, ZONE_GATEWAY, ZONE_UPLINK},
    proto::{icmp, ipproto, port},
};
use coresvc_maps_schema::{
    CT_SELF_RULE, CtEntry, IFACE_F_NAT, IfaceInfo, NAT_DNAT, NAT_HAIRPIN, NAT_NONE, NAT_SNAT, NO_RULE, ROLE_SEGMENT,
    SCHEMA_VERSION, SETTINGS_F_DNS_CACHE, SETTINGS_F_DROP_INVALID_IPV4, SETTINGS_F_FAST_FORWARD, SETTINGS_F_FIREWALL,
    SETTINGS_F_IPV6_STACK, Settings, reason,
};

use crate::{
    conntrack::{Nat, New},
    firewall::Dest,
    packet::frame_len,
    parse::Frame,
};

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
    // A frame on an interface without an entry is not judged by anything
    // the agent configured: it is dropped, never passed (the agent writes
    // an interface's entry before the interface forwards).
    let Some(iface) = maps::iface(ctx.ingress_ifindex() as u32) else {
        counters::count_drop(ctx, reason::IFACE_UNKNOWN);
        counters::count_verdict(ctx, 0, xdp_action::XDP_DROP);
        return xdp_action::XDP_DROP;
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

/// The settings, when the agent wrote them for this schema.
#[inline(always)]
fn configured() -> Result<&'static Settings, u32> {
    maps::settings().filter(|s| s.schema_version == SCHEMA_VERSION).ok_or(reason::NOT_CONFIGURED)
}

/// Decides what happens to a frame: `Ok(action)`, or `Err(reason)` to drop.
#[inline(always)]
fn decide<const SEGMENT: bool>(ctx: &XdpContext, iface: &IfaceInfo) -> Result<u32, u32> {
    let settings = configured()?;
    // Queries to a segment's DNS service that the cache can answer (it
    // checks the headers it relies on itself). Like all traffic to the
    // gateway they are judged by the firewall packet by packet (the cache
    // asks it too) and never tracked.
    if SEGMENT && settings.flags & SETTINGS_F_DNS_CACHE != 0 && iface.role == ROLE_SEGMENT {
        if let Some(v) = dns::answer(ctx, settings, iface) {
            return Ok(v);
        }
    }
    decode(process(ctx, settings, iface))
}

/// A frame being judged, shared by the stages of [`process`].
#[repr(C)]
pub struct Pkt {
    p: parse::Ip4,
    t: conntrack::Tuple,
    now: u64,
    bytes: u64,
    ifindex: u32,
    /// The addresses as they arrived (a first fragment's later fragments
    /// arrive so), and the destination destination NAT gave it (0: none).
    arrived_s: [u8; 4],
    arrived_d: [u8; 4],
    translated: [u8; 4],
    /// The port-forwarded outside port, or 0 (a plain integer: an
    /// `Option`'s undefined payload gets spilled, and the verifier refuses
    /// reading it).
    forwarded_port: u16,
    from: u16,
    /// The window-scale option of a TCP SYN.
    wscale: u8,
}

const _: () = assert!(size_of::<Pkt>() <= size_of::<coresvc_maps_schema::PktScratch>());
const _: () = assert!(align_of::<Pkt>() <= align_of::<coresvc_maps_schema::PktScratch>());

/// [`process`]'s outcome in one scalar (a BPF subprogram returns one
/// register): an XDP action, or `DROP_BIT | reason`.
const DROP_BIT: u32 = 0x100;

#[inline(always)]
fn encode(r: Result<u32, u32>) -> u32 {
    match r {
        Ok(v) => v,
        Err(r) => DROP_BIT | r,
    }
}

#[inline(always)]
fn decode(c: u32) -> Result<u32, u32> {
    if c & DROP_BIT != 0 { Err(c & 0xff) } else { Ok(c) }
}

/// Everything but the DNS cache. A function of its own (a BPF subprogram),
/// so its stack frame and the cache's are never both on the stack (the
/// frame's facts live in per-CPU scratch memory, [`Pkt`]). Its result in
/// one scalar: a subprogram returns one register.
#[inline(never)]
fn process(ctx: &XdpContext, settings: &Settings, iface: &IfaceInfo) -> u32 {
    encode(stages(ctx, settings, iface))
}

#[inline(always)]
fn stages(ctx: &XdpContext, settings: &Settings, iface: &IfaceInfo) -> Result<u32, u32> {
    const PASS: u32 = xdp_action::XDP_PASS;
    if settings.flags & SETTINGS_F_DROP_INVALID_IPV4 != 0 {
        ipv4::check(ctx)?;
    }
    if settings.flags & SETTINGS_F_FIREWALL == 0 {
        return Ok(PASS);
    }
    // The frame's facts live in per-CPU scratch memory, not on the stack.
    let Some(k) = maps::PKT_SCRATCH.get_ptr_mut(0) else { return Err(reason::NOT_CONFIGURED) };
    // SAFETY: this CPU's scratch memory, large enough (asserted below);
    // nothing else uses it during this program run.
    let k = unsafe { &mut *(k as *mut Pkt) };
    match parse::frame(ctx)? {
        Frame::Ipv4(p) => k.p = p,
        // Neighbour discovery: never routed.
        Frame::Arp => return Ok(PASS),
        // Not served yet: dropped unless the operator hands it to the stack.
        Frame::Ipv6 if settings.flags & SETTINGS_F_IPV6_STACK != 0 => return Ok(PASS),
        Frame::Ipv6 => return Err(reason::IPV6_POLICY),
    }
    k.now = conntrack::now();
    // A later fragment follows its first fragment's verdict.
    if k.p.later_fragment {
        frags::follow_in(ctx, &k.p, k.now)?;
        return Ok(PASS);
    }
    k.t = conntrack::tuple(&k.p);
    k.translated = [0; 4];
    k.forwarded_port = 0;
    k.bytes = frame_len(ctx) as u64;
    k.ifindex = ctx.ingress_ifindex() as u32;
    k.arrived_s = k.p.saddr;
    k.arrived_d = k.p.daddr;
    k.from = firewall::zone_of(iface);
    k.wscale = NO_WSCALE;
    if k.p.proto == ipproto::TCP && k.p.tcp_flags & TCP_SYN != 0 {
        k.wscale = parse::tcp_wscale(ctx);
    }
    if settings.nat_addr != [0; 4] && k.p.daddr == settings.nat_addr {
        if let Some(v) = dnat(ctx, settings, iface, k)? {
            return Ok(v);
        }
    }
    // ICMP errors about a tracked connection are related traffic.
    if parse::is_icmp_error(&k.p) {
        if let Some(v) = related(ctx, iface, k)? {
            return Ok(v);
        }
    }
    if let Some(e) = conntrack::lookup(&k.t, k.now) {
        return tracked(ctx, settings, iface, k, e);
    }
    new_flow(ctx, settings, iface, k)
}

/// An ICMP error about a tracked connection (from where that connection's
/// other side is): related, let through.
#[inline(always)]
fn related(ctx: &XdpContext, iface: &IfaceInfo, k: &Pkt) -> Result<Option<u32>, u32> {
    let Some(inner) = parse::icmp_inner(ctx, &k.p) else { return Ok(None) };
    if !firewall::related(ctx, inner, k.p.daddr, k.ifindex, k.now) {
        return Ok(None);
    }
    if !firewall::source_ok(&k.p, iface) {
        return Err(reason::SPOOFED);
    }
    Ok(Some(xdp_action::XDP_PASS))
}

/// Destination NAT, before routing: traffic for the masquerade address is
/// a reply to a masqueraded connection (or an ICMP error about one), or for
/// a port forward. `Some(action)` when decided here.
#[inline(always)]
fn dnat(ctx: &XdpContext, settings: &Settings, iface: &IfaceInfo, k: &mut Pkt) -> Result<Option<u32>, u32> {
    let p = &mut k.p;
    if parse::is_icmp_error(p) {
        if let Some((qs, qsp, qd, qdp, qproto)) = parse::icmp_inner(ctx, p) {
            if qs == settings.nat_addr {
                if let Some((a, ap)) = nat::lookup_in(settings.nat_addr, qsp, qproto) {
                    let qdp = if qproto == ipproto::ICMP { ap } else { qdp };
                    // (The outer destination is the quoted source, as translated.)
                    if firewall::related(ctx, (a, ap, qd, qdp, qproto), a, k.ifindex, k.now) {
                        if !firewall::source_ok(p, iface) {
                            return Err(reason::SPOOFED);
                        }
                        nat::xdp_icmp_error_in(ctx, p, a, ap).ok_or(reason::IPV4_TRUNCATED)?;
                        // Routed to the inside host by the stack.
                        return Ok(Some(xdp_action::XDP_PASS));
                    }
                }
            }
        }
        return Ok(None);
    }
    if let Some((a, ap)) = nat::lookup_in(settings.nat_addr, p.dport, p.proto) {
        let sport = if p.proto == ipproto::ICMP { ap } else { p.sport };
        if conntrack::lookup(&conntrack::tuple_of(p.saddr, sport, a, ap, p.proto), k.now).is_some() {
            nat::xdp_rewrite(ctx, p, false, a, ap).ok_or(reason::IPV4_TRUNCATED)?;
            p.daddr = a;
            p.dport = ap;
            p.sport = sport;
        }
    } else if let Some((b, bp)) = nat::lookup_forward(settings.nat_addr, p.dport, p.proto) {
        nat::xdp_rewrite(ctx, p, false, b, bp).ok_or(reason::IPV4_TRUNCATED)?;
        k.forwarded_port = p.dport;
        p.daddr = b;
        p.dport = bp;
    }
    if p.daddr != k.arrived_d {
        k.translated = p.daddr;
        k.t = conntrack::tuple(p);
    }
    Ok(None)
}

/// A packet of tracked connection `e`: accounted, checked again against
/// new rules, and fast-forwarded when it may be.
#[inline(always)]
fn tracked(ctx: &XdpContext, settings: &Settings, iface: &IfaceInfo, k: &Pkt, e: *mut CtEntry) -> Result<u32, u32> {
    const PASS: u32 = xdp_action::XDP_PASS;
    let p = &k.p;
    let from_orig = conntrack::from_orig(e, &k.t);
    // SAFETY: a live entry pointer.
    let (generation, local, rule, if_orig, if_reply) = unsafe {
        ((*e).generation, (*e).flags & CT_F_LOCAL != 0, u32::from((*e).rule), (*e).ifindex_orig, (*e).ifindex_reply)
    };
    // BCP 38 for tracked connections: each side's packets arrive where that
    // side is (the gateway's own side never arrives at all).
    let side_if = if from_orig { if_orig } else { if_reply };
    if (from_orig && local) || (side_if != 0 && side_if != k.ifindex) {
        return Err(reason::SPOOFED);
    }
    if side_if == 0 && !firewall::source_ok(p, iface) {
        return Err(reason::SPOOFED);
    }
    let mut rule = rule;
    if generation != settings.generation && !local && rule != NO_RULE {
        // The rules changed since this connection was admitted: it stays
        // only if the new rules still allow it.
        let there = match firewall::dest_zone(ctx, p, iface, k.ifindex)? {
            Dest::Zone(z) => z,
            // No route any more: the stack answers.
            Dest::NoRoute => return Ok(PASS),
        };
        let (flow, daddr) = if from_orig {
            (Flow { from: k.from, to: there, proto: p.proto, dport: p.dport }, p.daddr)
        } else {
            (Flow { from: there, to: k.from, proto: p.proto, dport: p.sport }, p.saddr)
        };
        let (slot, allow) = firewall::evaluate(settings, &flow, daddr);
        if !allow {
            let _ = maps::CONNTRACK.remove(k.t.key);
            firewall::count(slot, k.bytes);
            return Err(reason::FW_REVOKED);
        }
        rule = slot;
        // SAFETY: a live entry pointer.
        unsafe {
            (*e).generation = settings.generation;
            (*e).rule = slot as u16;
        }
    }
    conntrack::update(e, p, from_orig, k.now, k.bytes, k.ifindex, k.wscale)?;
    if !local {
        firewall::count(rule, k.bytes);
    }
    // SAFETY: a live entry pointer.
    let state = unsafe { (*e).state };
    if p.fragment {
        frags::remember(p, k.arrived_s, k.arrived_d, frags::INGRESS, k.translated, k.now);
    } else if settings.flags & SETTINGS_F_FAST_FORWARD != 0 && !local && fast_path_state(p.proto, state) {
        // SAFETY: a live entry pointer.
        let snat = source_nat(unsafe { &*e }, from_orig);
        if let Some(v) = forward::try_forward(ctx, p, k.ifindex, snat) {
            return Ok(v);
        }
    }
    Ok(PASS)
}

/// A new flow, or traffic for the gateway (judged packet by packet): its
/// source checked, the rules asked, a forwarded flow tracked (and
/// masqueraded) from its first packet.
#[inline(always)]
fn new_flow(ctx: &XdpContext, settings: &Settings, iface: &IfaceInfo, k: &Pkt) -> Result<u32, u32> {
    const PASS: u32 = xdp_action::XDP_PASS;
    let p = &k.p;
    if !firewall::source_ok(p, iface) {
        return Err(reason::SPOOFED);
    }
    // Only a SYN opens a forwarded TCP connection.
    let forwarding = k.forwarded_port != 0 || !maps::is_local(p.daddr);
    if forwarding && p.proto == ipproto::TCP && !coresvc_common::conntrack::tcp_opens(p.tcp_flags) {
        return Err(reason::CT_INVALID);
    }
    let to = match firewall::dest_zone(ctx, p, iface, k.ifindex)? {
        Dest::Zone(z) => z,
        // No route: the stack answers (ICMP unreachable); it forwards nothing.
        Dest::NoRoute => return Ok(PASS),
    };
    let new = |rule: u32, nat: Nat| New {
        generation: settings.generation,
        rule,
        ifindex: k.ifindex,
        now: k.now,
        bytes: k.bytes,
        flags: 0,
        wscale: k.wscale,
        nat,
    };
    let (rule, mut nat) = if k.forwarded_port != 0 {
        // A port forward admits its flows.
        (NO_RULE, Nat { addr: settings.nat_addr, snat_port: 0, dnat_port: k.forwarded_port, kind: NAT_DNAT })
    } else {
        let flow = Flow { from: k.from, to, proto: p.proto, dport: p.dport };
        let (slot, allow) = firewall::evaluate(settings, &flow, p.daddr);
        firewall::count(slot, k.bytes);
        if !allow {
            return Err(reason::FW_DENY);
        }
        (slot, Nat { addr: settings.nat_addr, snat_port: 0, dnat_port: 0, kind: NAT_NONE })
    };
    // Traffic for the gateway itself is judged packet by packet (its
    // replies are not tracked); forwarded flows are tracked from the first
    // packet.
    if to != ZONE_GATEWAY || k.forwarded_port != 0 {
        conntrack::admit_flow(settings, p.saddr, k.now)?;
        // From a segment, a port forward is a hairpin, masqueraded so the
        // inside host answers through the gateway; a flow from a
        // masquerading segment to the uplink is masqueraded.
        let masquerade = if k.forwarded_port != 0 {
            if k.from != ZONE_UPLINK {
                nat.kind = NAT_HAIRPIN;
            }
            k.from != ZONE_UPLINK
        } else {
            settings.nat_addr != [0; 4] && to == ZONE_UPLINK && iface.flags & IFACE_F_NAT != 0
        };
        let mut fresh = false;
        if masquerade {
            let (port, new) = nat::bind(settings, p.saddr, p.sport, p.proto, k.now)?;
            nat.snat_port = port;
            if nat.kind == NAT_NONE {
                nat.kind = NAT_SNAT;
            }
            fresh = new;
        }
        if let Err(r) = conntrack::create(&k.t, p, &new(rule, nat)) {
            if fresh {
                nat::release(settings.nat_addr, p.saddr, p.sport, nat.snat_port, p.proto);
            }
            return Err(r);
        }
        conntrack::count_flow(settings, p.saddr);
    }
    if p.fragment {
        frags::remember(p, k.arrived_s, k.arrived_d, frags::INGRESS, k.translated, k.now);
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

/// TC egress on every interface: source NAT after routing, tracking of the
/// connections the gateway itself opens (DNS forwarding, TFTP data, pings),
/// so their replies are let in, and the last line of defence: a forwarded
/// packet leaves only as part of a tracked connection (or related to one).
#[classifier]
pub fn egress(mut ctx: TcContext) -> i32 {
    match postrouting(&mut ctx) {
        Ok(()) => TC_ACT_OK as i32,
        Err(r) => {
            counters::count_drop(&ctx, r);
            TC_ACT_SHOT as i32
        }
    }
}

#[inline(always)]
fn postrouting(ctx: &mut TcContext) -> Result<(), u32> {
    // The stack forwarded it (it arrived on an interface), or the gateway
    // sent it.
    // SAFETY: the context's socket buffer.
    let forwarded = unsafe { (*ctx.skb.skb).ingress_ifindex } != 0;
    let settings = match configured() {
        Ok(s) => s,
        Err(r) if forwarded => return Err(r),
        Err(_) => return Ok(()),
    };
    if settings.flags & SETTINGS_F_FIREWALL == 0 {
        return Ok(());
    }
    let p = match parse::frame(&*ctx) {
        Ok(Frame::Ipv4(p)) => p,
        // ARP, and IPv6 (judged at ingress on coresvc's interfaces).
        Ok(_) => return Ok(()),
        Err(r) if forwarded => return Err(r),
        Err(_) => return Ok(()),
    };
    let now = conntrack::now();
    if p.later_fragment {
        return if forwarded { frags::follow_out(ctx, &p, now) } else { Ok(()) };
    }
    if settings.nat_addr != [0; 4] && parse::is_icmp_error(&p) && icmp_error_out(ctx, settings, &p) {
        return Ok(());
    }
    if !forwarded {
        track_local(ctx, settings, &p);
        return Ok(());
    }
    // SAFETY: the context's socket buffer.
    let in_if = unsafe { (*ctx.skb.skb).ingress_ifindex };
    let t = conntrack::tuple(&p);
    let Some(e) = conntrack::lookup(&t, now) else {
        if parse::is_icmp_error(&p) {
            if let Some(inner) = parse::icmp_inner(&*ctx, &p) {
                if conntrack::related(inner, p.daddr, in_if, now) {
                    return Ok(());
                }
            }
        }
        return Err(reason::EGRESS_UNTRACKED);
    };
    let from_orig = conntrack::from_orig(e, &t);
    // SAFETY: a live entry pointer.
    let snat = source_nat(unsafe { &*e }, from_orig);
    if let Some((addr, port)) = snat {
        let _ = nat::tc_rewrite(ctx, &p, true, addr, port);
    }
    if p.fragment {
        let addr = snat.map(|(a, _)| a).unwrap_or([0; 4]);
        frags::remember(&p, p.saddr, p.daddr, frags::EGRESS, addr, now);
    }
    Ok(())
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
    let wscale = if p.proto == ipproto::TCP && p.tcp_flags & TCP_SYN != 0 { parse::tcp_wscale(ctx) } else { NO_WSCALE };
    match conntrack::lookup(&t, now) {
        Some(e) => {
            let from_orig = conntrack::from_orig(e, &t);
            let _ = conntrack::update(e, p, from_orig, now, bytes, 0, wscale);
        }
        None => {
            let n = New {
                generation: settings.generation,
                rule: CT_SELF_RULE,
                ifindex: 0,
                now,
                bytes,
                flags: CT_F_LOCAL,
                wscale,
                nat: Nat { addr: settings.nat_addr, snat_port: 0, dnat_port: 0, kind: NAT_NONE },
            };
            let _ = conntrack::create(&t, p, &n);
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
