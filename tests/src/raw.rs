//! Raw Ethernet frames sent from inside a lab namespace (AF_PACKET), for
//! tests that need packets no ordinary client sends (malformed headers).

use std::{fs::File, os::fd::AsRawFd as _, path::Path};

use anyhow::{Context as _, Result, bail};

/// Runs `f` on a short-lived thread inside network namespace `ns` (sockets it
/// opens live there); the caller's thread keeps its own namespace.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let ns_path = Path::new("/run/netns").join(ns);
    std::thread::spawn(move || -> Result<T> {
        let file = File::open(&ns_path).with_context(|| format!("opening {}", ns_path.display()))?;
        // SAFETY: setns on this thread only, with a valid namespace fd.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread in {ns} panicked"))?
}

/// Sends `frames` out of `iface` in network namespace `ns`.
pub fn send_frames(ns: &str, iface: &str, frames: &[Vec<u8>]) -> Result<()> {
    let iface = iface.to_string();
    let frames = frames.to_vec();
    let ns_name = ns.to_string();
    in_netns(ns, move || -> Result<()> {
        let ns_path = ns_name;
        let name = std::ffi::CString::new(iface.clone())?;
        // SAFETY: plain libc calls with valid arguments; the fd is closed below.
        unsafe {
            let ifindex = libc::if_nametoindex(name.as_ptr());
            if ifindex == 0 {
                bail!("no interface {iface} in {ns_path}");
            }
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            if fd < 0 {
                bail!("socket(AF_PACKET): {}", std::io::Error::last_os_error());
            }
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex as i32;
            addr.sll_halen = 6;
            let mut result = Ok(());
            for frame in &frames {
                addr.sll_addr[..6].copy_from_slice(&frame[..6]);
                let r = libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    size_of::<libc::sockaddr_ll>() as u32,
                );
                if r < 0 {
                    result = Err(anyhow::anyhow!("sendto: {}", std::io::Error::last_os_error()));
                    break;
                }
            }
            libc::close(fd);
            result
        }
    })
}

/// A UDP socket created inside network namespace `ns` and bound to `bind`
/// there; it keeps its namespace whichever thread uses it (for tests that
/// speak a protocol with packets no ordinary client sends).
pub fn udp_socket(ns: &str, bind: std::net::SocketAddr) -> Result<std::net::UdpSocket> {
    let ns_path = Path::new("/run/netns").join(ns);
    std::thread::spawn(move || -> Result<std::net::UdpSocket> {
        let f = File::open(&ns_path).with_context(|| format!("opening {}", ns_path.display()))?;
        // SAFETY: setns on this short-lived thread only, with a valid namespace fd.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        std::net::UdpSocket::bind(bind).with_context(|| format!("binding {bind} in {}", ns_path.display()))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("socket thread panicked"))?
}
