//! Programs for benchmarks and lab experiments, never loaded by the agent's
//! data path: a counting sink (IPv4 UDP, DNS responses by rcode), a bare
//! forwarding redirect and a bare DNS reflector (the lab's limits, each
//! counting what it handled), a frame sender for BPF_PROG_TEST_RUN's live
//! mode (the benchmarks' generator) and an empty program (what a
//! BPF_PROG_TEST_RUN measurement costs by itself).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams, xdp_action},
    btf_maps::{Array, PerCpuArray},
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_xdp_adjust_tail},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use coresvc_common::checksum;

/// What `sink` counted, by `SINK_*` index.
#[btf_map]
static SINK_COUNT: PerCpuArray<[u64; 8], 1> = PerCpuArray::new();

/// Counted packets and their bytes.
const SINK_PACKETS: usize = 0;
const SINK_BYTES: usize = 1;
/// Counted packets whose source was not `SINK_EXPECT_SRC`.
const SINK_OTHER_SOURCE: usize = 2;
/// Of the packets from UDP port 53: DNS responses by rcode (NOERROR,
/// NXDOMAIN, any other), and messages that are not responses (QR clear:
/// what a reflector sends back).
const SINK_DNS_NOERROR: usize = 3;
const SINK_DNS_NXDOMAIN: usize = 4;
const SINK_DNS_OTHER_RCODE: usize = 5;
const SINK_DNS_NOT_RESPONSE: usize = 6;

/// What `bare_redirect` and `reflect` did: frames handled (redirected,
/// reflected) and frames passed to the stack.
#[btf_map]
static TOOL_COUNT: PerCpuArray<[u64; 2], 1> = PerCpuArray::new();

#[inline(always)]
fn tool_count(handled: bool) {
    if let Some(c) = TOOL_COUNT.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot.
        unsafe { (*c)[usize::from(!handled)] += 1 };
    }
}

/// The source address every counted packet should have (a NAT benchmark
/// checks that everything arrived translated); zero: any. Set at load time.
#[unsafe(no_mangle)]
static SINK_EXPECT_SRC: [u8; 4] = [0; 4];

/// Counts and drops IPv4 UDP frames; passes the rest (ARP must work for the
/// sender to find this host).
#[xdp]
pub fn sink(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + 34 > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: bounds checked above.
    let h = unsafe { &*(start as *const [u8; 34]) };
    if h[12] != 0x08 || h[13] != 0x00 || h[23] != 17 {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: a plain read of a load-time constant (volatile: the loader
    // rewrites it after compilation).
    let expect = unsafe { core::ptr::read_volatile(&SINK_EXPECT_SRC) };
    let other = expect != [0; 4] && [h[26], h[27], h[28], h[29]] != expect;
    // A DNS message from port 53 (no IP options): its QR bit and rcode.
    let dns = if h[14] == 0x45 && start + 46 <= ctx.data_end() {
        // SAFETY: bounds checked just above.
        let d = unsafe { &*(start as *const [u8; 46]) };
        (d[34] == 0 && d[35] == 53).then_some((d[44] & 0x80 != 0, d[45] & 0x0f))
    } else {
        None
    };
    if let Some(c) = SINK_COUNT.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot.
        let c = unsafe { &mut *c };
        c[SINK_PACKETS] += 1;
        c[SINK_BYTES] += (ctx.data_end() - ctx.data()) as u64;
        c[SINK_OTHER_SOURCE] += u64::from(other);
        match dns {
            Some((false, _)) => c[SINK_DNS_NOT_RESPONSE] += 1,
            Some((true, 0)) => c[SINK_DNS_NOERROR] += 1,
            Some((true, 3)) => c[SINK_DNS_NXDOMAIN] += 1,
            Some((true, _)) => c[SINK_DNS_OTHER_RCODE] += 1,
            None => {}
        }
    }
    xdp_action::XDP_DROP
}

/// The least a forwarder can do: FIB lookup, TTL decrement, MAC rewrite,
/// redirect. No firewall, no state.
#[xdp]
pub fn bare_redirect(ctx: XdpContext) -> u32 {
    let v = try_redirect(&ctx);
    tool_count(v.is_some());
    v.unwrap_or(xdp_action::XDP_PASS)
}

#[inline(always)]
fn try_redirect(ctx: &XdpContext) -> Option<u32> {
    let start = ctx.data();
    if start + 34 > ctx.data_end() {
        return None;
    }
    let eth = start as *mut [u8; 14];
    let ip = (start + 14) as *mut [u8; 20];
    // SAFETY: bounds checked above.
    let (eth, ip) = unsafe { (&mut *eth, &mut *ip) };
    if eth[12] != 0x08 || eth[13] != 0x00 || ip[0] != 0x45 || ip[8] <= 1 {
        return None;
    }
    // SAFETY: an all-zero parameter block is valid.
    let mut f: FibParams = unsafe { core::mem::zeroed() };
    f.family = 2;
    f.l4_protocol = ip[9];
    f.__bindgen_anon_1.tot_len = u16::from_be_bytes([ip[2], ip[3]]);
    f.ifindex = ctx.ingress_ifindex() as u32;
    f.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]);
    f.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]);
    // SAFETY: valid parameter block.
    let rc = unsafe { bpf_fib_lookup(ctx.ctx.cast(), &mut f, size_of::<FibParams>() as i32, 0) };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return None;
    }
    let old = u16::from_be_bytes([ip[8], ip[9]]);
    ip[8] -= 1;
    let csum = checksum::update16(u16::from_be_bytes([ip[10], ip[11]]), old, u16::from_be_bytes([ip[8], ip[9]]));
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    eth[0..6].copy_from_slice(&f.dmac);
    eth[6..12].copy_from_slice(&f.smac);
    // SAFETY: no preconditions.
    Some(unsafe { bpf_redirect(f.ifindex, 0) } as u32)
}

/// The least an XDP DNS responder can do: every DNS query (IPv4 UDP to
/// port 53, QR clear, opcode QUERY, one question) goes back where it came
/// from, MAC and IP addresses and ports swapped (the checksums stay valid:
/// swapping does not change the sums). Nothing is looked up or built; what
/// is not such a query passes, counted.
#[xdp]
pub fn reflect(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + 54 > ctx.data_end() {
        tool_count(false);
        return xdp_action::XDP_PASS;
    }
    // SAFETY: bounds checked above.
    let f = unsafe { &mut *(start as *mut [u8; 54]) };
    let query = f[44] & 0xf8 == 0 && f[46] == 0 && f[47] == 1;
    if f[12] != 0x08 || f[13] != 0x00 || f[14] != 0x45 || f[23] != 17 || f[36] != 0 || f[37] != 53 || !query {
        tool_count(false);
        return xdp_action::XDP_PASS;
    }
    tool_count(true);
    for (a, b) in
        [(0, 6), (1, 7), (2, 8), (3, 9), (4, 10), (5, 11), (26, 30), (27, 31), (28, 32), (29, 33), (34, 36), (35, 37)]
    {
        f.swap(a, b);
    }
    xdp_action::XDP_TX
}

/// The frames `tx` sends, in turn: word 0 the length, then up to
/// [`BLAST_BYTES`] bytes.
#[btf_map]
static BLAST_FRAMES: Array<[u64; 1 + BLAST_BYTES / 8], 16> = Array::new();

/// Which of `BLAST_FRAMES` this CPU sends next.
#[btf_map]
static BLAST_NEXT: PerCpuArray<u64, 1> = PerCpuArray::new();

/// How many of `BLAST_FRAMES` are set (load time).
#[unsafe(no_mangle)]
static BLAST_N: u32 = 0;

const BLAST_BYTES: usize = 128;

/// Writes the next of `BLAST_FRAMES` over the frame it was given (which
/// must be `BLAST_BYTES` long), trims it to that frame's length and sends
/// it back out of the interface it came in on. Run with BPF_PROG_TEST_RUN's
/// live-frames mode (`coresvc-devtool blast`), every run transmits one
/// frame: a generator with no per-packet userspace work. The whole frame is
/// written on every run because the kernel recycles the pages without
/// rewriting them, and the path measured may have changed them in place
/// (an XDP answer, a decremented TTL) before they came back.
#[xdp]
pub fn tx(ctx: XdpContext) -> u32 {
    try_tx(&ctx).unwrap_or(xdp_action::XDP_ABORTED)
}

#[inline(always)]
fn try_tx(ctx: &XdpContext) -> Option<u32> {
    // SAFETY: a plain read of a load-time constant.
    let n = unsafe { core::ptr::read_volatile(&BLAST_N) };
    if n == 0 {
        return None;
    }
    let next = BLAST_NEXT.get_ptr_mut(0)?;
    // SAFETY: a per-CPU slot.
    let i = unsafe {
        let i = *next;
        *next = i + 1;
        (i % u64::from(n)) as u32
    };
    let t = BLAST_FRAMES.get(i)?;
    let start = ctx.data();
    if start + BLAST_BYTES > ctx.data_end() {
        return None;
    }
    let dst = start as *mut u64;
    for w in 0..BLAST_BYTES / 8 {
        // SAFETY: within the bounds checked above; packet data need not be aligned.
        unsafe { dst.add(w).write_unaligned(t[1 + w]) };
    }
    let len = t[0] as i32;
    if !(14..=BLAST_BYTES as i32).contains(&len) {
        return None;
    }
    // SAFETY: shrinking the frame to the template's length.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, len - BLAST_BYTES as i32) } != 0 {
        return None;
    }
    Some(xdp_action::XDP_TX)
}

/// Does nothing: `coresvc-devtool prog-cost` times it to know the share of
/// the measurement itself in every figure.
#[xdp]
pub fn pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
