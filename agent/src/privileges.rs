//! Dropping the capabilities the agent no longer needs once it has started.
//!
//! Start-up needs many: loading programs and creating maps (CAP_BPF,
//! CAP_PERFMON, CAP_SYS_ADMIN on older kernels), entering a network
//! namespace and mounting bpffs (CAP_SYS_ADMIN), raising RLIMIT_MEMLOCK
//! (CAP_SYS_RESOURCE). Afterwards only [`KEPT`] are (and CAP_BPF before Linux 6.5), for what the agent
//! still does while it runs; every other capability leaves the effective,
//! permitted, inheritable, ambient and bounding sets, and no_new_privs is
//! set, so nothing the process runs later can regain one.
//!
//! Capabilities belong to threads, not processes, and the agent's threads
//! (tokio's workers, DHCP's journal thread, ...) exist by then: every
//! thread is made to drop them itself, through a signal whose handler
//! makes the same raw system calls, until a look at `/proc/self/task`
//! finds no thread with more. Threads started later inherit the reduced
//! sets from the thread that starts them.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use anyhow::{Result, bail};
use tracing::info;

const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;
const CAP_SETPCAP: u32 = 8;
const CAP_BPF: u32 = 39;

/// The capabilities kept, and why.
pub const KEPT: &[(u32, &str, &str)] = &[
    (
        CAP_NET_ADMIN,
        "cap_net_admin",
        "addresses, routes and XDP/TC links for interfaces that come back, reloads and authority switches \
         (rtnetlink, bpf links); ARP entries for DHCP replies (SIOCSARP); large socket buffers",
    ),
    (CAP_NET_RAW, "cap_net_raw", "ARP probes and announcements (AF_PACKET) of authority switches and the DHCP watch"),
    (
        CAP_NET_BIND_SERVICE,
        "cap_net_bind_service",
        "ports 53, 67, 68 and 69, bound again when reloads and authority switches restart DNS, DHCP and TFTP",
    ),
];

/// Kept besides [`KEPT`] on kernels before 6.5, whose bpf(2) refused every
/// command (map updates and lookups on descriptors already open included)
/// without CAP_BPF while unprivileged BPF is disabled, as distributions do.
/// From 6.5 only creating maps and loading programs need it, which the
/// agent does only at start.
pub const KEPT_BEFORE_6_5: (u32, &str, &str) =
    (CAP_BPF, "cap_bpf", "every bpf(2) command the running agent makes (map updates, links), on kernels before 6.5");

/// The kernel's version (major, minor), from uname.
fn kernel() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut it = release.trim().split(['.', '-']).map(|p| p.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// The capabilities kept on this kernel.
pub fn kept() -> Vec<(u32, &'static str, &'static str)> {
    let mut k = KEPT.to_vec();
    if kernel() < (6, 5) {
        k.push(KEPT_BEFORE_6_5);
    }
    k
}

/// What was dropped.
#[derive(Debug, Clone)]
pub struct Dropped {
    /// Threads that dropped them.
    pub threads: usize,
    /// The effective set now (a bit per capability).
    pub kept: u64,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The mask the signal handler applies (set before any signal is sent).
static MASK: AtomicU64 = AtomicU64::new(0);
/// The bounding set can be reduced (CAP_SETPCAP was effective at the start;
/// without it, as in some containers, the bounding set is left as it is).
static BOUNDING: AtomicBool = AtomicBool::new(false);
/// Threads whose handler ran (successfully or not: see `FAILED`).
static DONE: AtomicUsize = AtomicUsize::new(0);
/// Threads where a system call failed.
static FAILED: AtomicUsize = AtomicUsize::new(0);

/// Drops, in the calling thread, every capability outside `mask` from the
/// bounding set (while CAP_SETPCAP is still effective), then from the
/// effective, permitted and inheritable sets, clears the ambient set and
/// sets no_new_privs. Only async-signal-safe system calls: it also runs
/// in the signal handler. True when every call succeeded.
fn drop_here(mask: u64) -> bool {
    let mut ok = true;
    // SAFETY: prctl and capget/capset with valid arguments and structures
    // laid out as the kernel's (`_LINUX_CAPABILITY_VERSION_3`: two data words).
    unsafe {
        for cap in 0..64u64 {
            if BOUNDING.load(Ordering::SeqCst)
                && mask & (1 << cap) == 0
                && libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) == 1
            {
                ok &= libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) == 0;
            }
        }
        let mut hdr = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
        let mut data = [CapData::default(); 2];
        if libc::syscall(libc::SYS_capget, &mut hdr as *mut CapHeader, data.as_mut_ptr()) != 0 {
            return false;
        }
        for (i, d) in data.iter_mut().enumerate() {
            let m = (mask >> (32 * i)) as u32;
            d.effective &= m;
            d.permitted &= m;
            d.inheritable = 0;
        }
        ok &= libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) == 0;
        ok &= libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) == 0;
        ok &= libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0;
    }
    ok
}

extern "C" fn on_signal(_: libc::c_int) {
    if !drop_here(MASK.load(Ordering::SeqCst)) {
        FAILED.fetch_add(1, Ordering::SeqCst);
    }
    DONE.fetch_add(1, Ordering::SeqCst);
}

/// A thread's sets, from `/proc/self/task/<tid>/status`: effective,
/// permitted, bounding, ambient, no_new_privs.
fn sets_of(tid: i32) -> Option<[u64; 5]> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let v = text.lines().find_map(|l| l.strip_prefix(name))?.trim();
        u64::from_str_radix(v, 16).ok().or_else(|| v.parse().ok())
    };
    Some([field("CapEff:")?, field("CapPrm:")?, field("CapBnd:")?, field("CapAmb:")?, field("NoNewPrivs:")?])
}

fn tids() -> Vec<i32> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// Drops every capability but [`kept`] in every thread of the process.
pub fn drop_after_start() -> Result<Dropped> {
    let kept = kept();
    let mask = kept.iter().fold(0u64, |m, (c, _, _)| m | (1 << c));
    MASK.store(mask, Ordering::SeqCst);
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::gettid() };
    let start_sets = sets_of(me).unwrap_or_default();
    BOUNDING.store(start_sets[0] & (1 << CAP_SETPCAP) != 0, Ordering::SeqCst);
    let sig = libc::SIGRTMIN() + 7;
    // SAFETY: a handler that only makes async-signal-safe system calls and
    // atomic updates; SA_RESTART so interrupted system calls go on.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
            bail!("installing the capability-drop signal handler: {}", std::io::Error::last_os_error());
        }
    }
    if !drop_here(mask) {
        bail!("dropping capabilities: {}", std::io::Error::last_os_error());
    }
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let bounding = BOUNDING.load(Ordering::SeqCst);
    let compliant = |s: &[u64; 5]| {
        s[0] & !mask == 0 && s[1] & !mask == 0 && (!bounding || s[2] & !mask == 0) && s[3] == 0 && s[4] == 1
    };
    // Signal every thread that still has more, until none has: a thread
    // being started meanwhile inherits from one not yet done, and is
    // found by the next look.
    for _ in 0..50 {
        let pending: Vec<i32> =
            tids().into_iter().filter(|&t| t != me && sets_of(t).is_some_and(|s| !compliant(&s))).collect();
        if pending.is_empty() {
            let threads = tids().len();
            let effective = sets_of(me).map_or(0, |s| s[0]);
            if FAILED.load(Ordering::SeqCst) > 0 {
                bail!("dropping capabilities failed in {} thread(s)", FAILED.load(Ordering::SeqCst));
            }
            let names: Vec<&str> =
                kept.iter().filter(|(c, _, _)| effective & (1 << c) != 0).map(|(_, n, _)| *n).collect();
            info!("privileges: every other capability dropped in all {threads} threads; kept {}", names.join(", "));
            return Ok(Dropped { threads, kept: effective });
        }
        let before = DONE.load(Ordering::SeqCst);
        let mut sent = 0;
        for &t in &pending {
            // SAFETY: tgkill to a thread of this process.
            if unsafe { libc::syscall(libc::SYS_tgkill, pid, t, sig) } == 0 {
                sent += 1;
            }
        }
        let start = std::time::Instant::now();
        while DONE.load(Ordering::SeqCst) < before + sent && start.elapsed() < std::time::Duration::from_secs(2) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    bail!("some threads kept capabilities after 50 rounds of signals")
}
