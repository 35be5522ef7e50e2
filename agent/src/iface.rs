//! Network interfaces of this host, as the kernel reports them in the
//! current network namespace. A leaf: DHCP and the authority probes ask it.

use anyhow::{Context as _, Result};

/// The MAC address of `iface` (SIOCGIFHWADDR: sysfs would show another
/// network namespace's view).
pub fn iface_mac(iface: &str) -> Result<[u8; 6]> {
    // SAFETY: plain socket(2); the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket for SIOCGIFHWADDR");
    }
    // SAFETY: a zeroed ifreq is valid; the name is copied with a NUL left.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(iface.bytes().take(libc::IFNAMSIZ - 1)) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads ifr_name and writes ifr_hwaddr.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req) };
    let err = std::io::Error::last_os_error();
    // SAFETY: our fd.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(err).with_context(|| format!("reading the MAC address of {iface}"));
    }
    // SAFETY: the kernel filled ifr_hwaddr.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, d) in mac.iter_mut().zip(data.iter()) {
        *m = *d as u8;
    }
    Ok(mac)
}
