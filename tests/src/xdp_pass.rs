//! A do-nothing XDP program (`XDP_PASS`) for the nodes' veths.
//!
//! Frames the gateway's XDP program sends back out of the interface they
//! came in on (XDP_TX: the DNS answer cache) reach a veth peer only when
//! the peer runs an XDP program itself: the kernel's veth driver wakes the
//! peer for them only then (GRO on the peer, which the lab also sets, is
//! enough for XDP_REDIRECT, not for XDP_TX). A real NIC puts XDP_TX frames
//! on the wire; in the lab each node gets this program.
//!
//! Two instructions loaded with bpf(2), pinned for a moment in bpffs so
//! that `ip link set ... xdpdrv pinned` attaches it by netlink (a load
//! generator with its own XDP program, kxdpgun, can then replace it), and
//! unpinned again: the attachment keeps it, the namespace's removal ends it.

use std::{ffi::CString, os::fd::FromRawFd as _, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_PROG_TYPE_XDP: u32 = 6;
/// `r0 = XDP_PASS (2); exit`.
const PASS: [u64; 2] = [0x0000_0002_0000_00b7, 0x0000_0000_0000_0095];

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> std::io::Result<i32> {
    // SAFETY: bpf(2) with an attribute buffer of the size passed.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(r as i32) }
}

/// Attaches the program to `iface` in namespace `ns` (native mode).
pub fn attach(ns: &str, iface: &str) -> Result<()> {
    let license = c"GPL";
    let mut attr = [0u8; 128];
    // union bpf_attr, BPF_PROG_LOAD: prog_type, insn_cnt, insns, license.
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_XDP.to_ne_bytes());
    attr[4..8].copy_from_slice(&(PASS.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(PASS.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[48..57].copy_from_slice(b"lab_pass\0");
    let fd = bpf(BPF_PROG_LOAD, &mut attr).context("loading the lab's XDP pass program")?;
    // SAFETY: a descriptor bpf(2) just returned; closed when dropped.
    let _fd = unsafe { std::fs::File::from_raw_fd(fd) };
    let pin = Path::new("/sys/fs/bpf").join(format!("coresvc-lab-pass-{}-{ns}-{iface}", std::process::id()));
    let path = CString::new(pin.as_os_str().as_encoded_bytes())?;
    let mut attr = [0u8; 128];
    // BPF_OBJ_PIN: pathname, bpf_fd.
    attr[0..8].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
    attr[8..12].copy_from_slice(&(fd as u32).to_ne_bytes());
    bpf(BPF_OBJ_PIN, &mut attr).with_context(|| format!("pinning it at {}", pin.display()))?;
    // nsenter, not `ip -n`: that remounts /sys, and the pin is on the host's bpffs.
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(["ip", "link", "set", "dev", iface, "xdpdrv", "pinned"])
        .arg(&pin)
        .output()
        .context("running nsenter ip");
    let _ = std::fs::remove_file(&pin);
    let out = out?;
    if !out.status.success() {
        bail!("attaching the XDP pass program to {iface} in {ns}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
