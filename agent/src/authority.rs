//! Authority modes (seed §3): which mode is in force (the persisted one,
//! else the configuration's), and exclusive activation: before coresvc
//! serves DHCP on a segment or takes its gateway address it asks the segment
//! whether someone else already does (a DHCPDISCOVER from its own MAC, an
//! ARP probe per RFC 5227 §2.1.1), and while it serves it keeps watching
//! for other DHCP servers (probes again now and then, and hears every
//! server reply broadcast on the segment).

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::{
    config::{AuthorityMode, Config},
    iface::iface_mac,
};

pub mod check;

const MODE_FILE: &str = "authority";

pub fn mode_file(state_dir: &Path) -> PathBuf {
    state_dir.join(MODE_FILE)
}

/// The persisted mode, if a switch was ever made.
pub fn persisted(state_dir: &Path) -> Result<Option<AuthorityMode>> {
    let path = mode_file(state_dir);
    match std::fs::read_to_string(&path) {
        Ok(s) => match s.trim() {
            "bootstrap" => Ok(Some(AuthorityMode::Bootstrap)),
            "production" => Ok(Some(AuthorityMode::Production)),
            other => bail!(
                "{}: unknown authority mode {other:?} (expected bootstrap or production); fix or remove the file",
                path.display()
            ),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Persists `mode` durably (write, fsync, rename, fsync the directory).
pub fn persist(state_dir: &Path, mode: AuthorityMode) -> Result<()> {
    use std::io::Write as _;
    let path = mode_file(state_dir);
    let tmp = state_dir.join(format!("{MODE_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    writeln!(f, "{}", name(mode))?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    std::fs::File::open(state_dir)?.sync_all()?;
    Ok(())
}

pub fn name(mode: AuthorityMode) -> &'static str {
    match mode {
        AuthorityMode::Bootstrap => "bootstrap",
        AuthorityMode::Production => "production",
    }
}

/// The mode in force at start: the persisted one, else the configuration's.
pub fn effective(cfg: &Config) -> Result<AuthorityMode> {
    Ok(match persisted(&cfg.agent.state_dir)? {
        Some(m) => {
            if m != cfg.agent.authority {
                info!(
                    "authority: {} (persisted in {}; the configuration's agent.authority = {} applies on first start only)",
                    name(m),
                    mode_file(&cfg.agent.state_dir).display(),
                    name(cfg.agent.authority)
                );
            }
            m
        }
        None => cfg.agent.authority,
    })
}

// ------------------------------------------------------------------ findings

/// Someone else on a segment: a DHCP server, or a host holding the gateway
/// address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Finding {
    /// A DHCP server answered (its server identifier, and the address the
    /// answer came from).
    DhcpServer { server: Ipv4Addr, from: Ipv4Addr },
    /// A host answered ARP for the address coresvc would take.
    AddressInUse { address: Ipv4Addr, mac: String },
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::DhcpServer { server, from } if server == from => write!(f, "DHCP server {server} answers"),
            Finding::DhcpServer { server, from } => write!(f, "DHCP server {server} (from {from}) answers"),
            Finding::AddressInUse { address, mac } => write!(f, "{address} is in use by {mac} (it answers ARP)"),
        }
    }
}

/// What one segment's probe found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentProbe {
    pub segment: String,
    pub interface: String,
    pub findings: Vec<Finding>,
}

impl SegmentProbe {
    pub fn dhcp_conflict(&self) -> bool {
        self.findings.iter().any(|f| matches!(f, Finding::DhcpServer { .. }))
    }

    pub fn address_conflict(&self) -> bool {
        self.findings.iter().any(|f| matches!(f, Finding::AddressInUse { .. }))
    }
}

/// Probes every segment at once: another DHCP server (when coresvc would
/// serve DHCP there) and another holder of the gateway address. `ours`:
/// the addresses coresvc holds now (answers from them are its own).
pub async fn probe(cfg: &Config, wait: Duration, ours: Vec<Ipv4Addr>) -> Result<Vec<SegmentProbe>> {
    let mut tasks = Vec::new();
    for s in &cfg.segments {
        let (seg, iface, gw, ours) = (s.name.clone(), s.interface.clone(), s.gateway, ours.clone());
        let dhcp = cfg.dhcp.enabled;
        tasks.push(tokio::task::spawn_blocking(move || -> Result<SegmentProbe> {
            let mut findings = Vec::new();
            let mac = match iface_mac(&iface) {
                Ok(m) => m,
                // Not there (yet): nothing to probe; the link watcher brings
                // it up later.
                Err(_) => return Ok(SegmentProbe { segment: seg, interface: iface, findings }),
            };
            let arp = std::thread::spawn({
                let iface = iface.clone();
                move || arp_probe(&iface, mac, gw, wait)
            });
            if dhcp {
                findings.extend(dhcp_probe(&iface, mac, &ours, wait)?);
            }
            findings.extend(arp.join().map_err(|_| anyhow::anyhow!("ARP probe thread panicked"))??);
            findings.sort();
            findings.dedup();
            Ok(SegmentProbe { segment: seg, interface: iface, findings })
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.context("probe task")??);
    }
    Ok(out)
}

/// The addresses of `plan` (what coresvc holds).
pub fn held(plan: &crate::routing::Plan) -> Vec<Ipv4Addr> {
    plan.addresses.iter().map(|a| a.addr.addr()).collect()
}

// ------------------------------------------------------------------ DHCP probe

const DHCP_SERVER: u16 = 67;
const DHCP_CLIENT: u16 = 68;

/// UDP port 68 on `iface` only: where servers broadcast their answers.
fn client_socket(iface: &str) -> Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.bind_device(Some(iface.as_bytes())).with_context(|| format!("authority: binding to interface {iface}"))?;
    s.set_broadcast(true)?;
    s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, DHCP_CLIENT).into())
        .with_context(|| format!("authority: binding UDP port 68 on {iface}"))?;
    Ok(s.into())
}

/// A DHCPDISCOVER from `mac` asking for broadcast answers (RFC 2131 §4.1).
pub fn discover(mac: [u8; 6], xid: u32) -> Vec<u8> {
    let mut m = vec![0u8; 240];
    m[0] = 1; // BOOTREQUEST
    m[1] = 1; // Ethernet
    m[2] = 6;
    m[4..8].copy_from_slice(&xid.to_be_bytes());
    m[10] = 0x80; // broadcast flag
    m[28..34].copy_from_slice(&mac);
    m[236..240].copy_from_slice(&[99, 130, 83, 99]);
    m.extend_from_slice(&[53, 1, 1]); // DHCPDISCOVER
    m.extend_from_slice(&[55, 3, 1, 3, 6]); // subnet, router, DNS
    m.extend_from_slice(&[60, 11]);
    m.extend_from_slice(b"coresvc-chk");
    m.push(255);
    m.resize(300, 0);
    m
}

/// A server's answer: (xid, message type, server identifier).
pub fn server_reply(b: &[u8]) -> Option<(u32, u8, Ipv4Addr)> {
    if b.len() < 240 || b[0] != 2 || b[236..240] != [99, 130, 83, 99] {
        return None;
    }
    let xid = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
    let (mut kind, mut server) = (None, None);
    let mut o = &b[240..];
    while let Some((&code, rest)) = o.split_first() {
        match code {
            0 => o = rest,
            255 => break,
            _ => {
                let (&len, rest) = rest.split_first()?;
                let v = rest.get(..usize::from(len))?;
                match (code, v) {
                    (53, [t]) => kind = Some(*t),
                    (54, [a, b, c, d]) => server = Some(Ipv4Addr::new(*a, *b, *c, *d)),
                    _ => {}
                }
                o = &rest[usize::from(len)..];
            }
        }
    }
    // OFFER, ACK or NAK.
    let kind = kind.filter(|k| matches!(k, 2 | 5 | 6))?;
    Some((xid, kind, server?))
}

/// The DHCP servers other than coresvc (`ours`) that answer a
/// DHCPDISCOVER on `iface` within `wait`.
pub fn dhcp_servers(iface: &str, ours: &[Ipv4Addr], wait: Duration) -> Result<Vec<Finding>> {
    let mut found = dhcp_probe(iface, iface_mac(iface)?, ours, wait)?;
    found.sort();
    found.dedup();
    Ok(found)
}

fn dhcp_probe(iface: &str, mac: [u8; 6], ours: &[Ipv4Addr], wait: Duration) -> Result<Vec<Finding>> {
    let sock = client_socket(iface)?;
    let xid: u32 = rand::random();
    sock.send_to(&discover(mac, xid), SocketAddrV4::new(Ipv4Addr::BROADCAST, DHCP_SERVER))
        .with_context(|| format!("authority: sending a DHCPDISCOVER on {iface}"))?;
    let deadline = Instant::now() + wait;
    let mut found = Vec::new();
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        sock.set_read_timeout(Some(left))?;
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
            Err(e) => return Err(e).context("authority: receiving DHCP answers"),
        };
        let std::net::SocketAddr::V4(from) = from else { continue };
        if let Some((_, _, server)) = server_reply(&buf[..n])
            && !ours.contains(&server)
            && !ours.contains(from.ip())
        {
            found.push(Finding::DhcpServer { server, from: *from.ip() });
        }
    }
    Ok(found)
}

// ------------------------------------------------------------------ ARP probe

pub fn mac_text(m: &[u8]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// An ARP probe (RFC 5227 §2.1.1: sender address 0.0.0.0) for `target`
/// from `mac`; the frame body for an AF_PACKET datagram socket.
pub fn arp_probe_frame(mac: [u8; 6], target: Ipv4Addr) -> [u8; 28] {
    let mut a = [0u8; 28];
    a[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    a[2..4].copy_from_slice(&0x0800u16.to_be_bytes());
    a[4] = 6;
    a[5] = 4;
    a[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
    a[8..14].copy_from_slice(&mac);
    // Sender IP 0.0.0.0, target MAC zero.
    a[24..28].copy_from_slice(&target.octets());
    a
}

/// An ARP announcement (RFC 5227 §2.3): `addr` is at `mac`, so neighbours
/// that knew another holder update their caches at once.
pub fn announce(iface: &str, addr: Ipv4Addr) -> Result<()> {
    let mac = iface_mac(iface)?;
    let (fd, mut sll) = arp_socket(iface)?;
    let mut frame = arp_probe_frame(mac, addr);
    frame[14..18].copy_from_slice(&addr.octets());
    send_arp(&fd, &mut sll, &frame, iface)
}

const ETH_P_ARP: u16 = 0x0806;

/// An AF_PACKET datagram socket for ARP on `iface`, and its broadcast address.
fn arp_socket(iface: &str) -> Result<(std::os::fd::OwnedFd, libc::sockaddr_ll)> {
    let c = std::ffi::CString::new(iface)?;
    // SAFETY: valid C string.
    let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {iface}");
    }
    // SAFETY: plain socket(2), owned below.
    let fd =
        unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, i32::from(ETH_P_ARP.to_be())) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("authority: AF_PACKET socket for ARP");
    }
    // SAFETY: we own fd from here.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    use std::os::fd::AsRawFd as _;
    // SAFETY: a zeroed sockaddr_ll, filled in.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_ARP.to_be();
    sll.sll_ifindex = ifindex as i32;
    let len = size_of::<libc::sockaddr_ll>() as u32;
    // SAFETY: bind with a valid sockaddr_ll.
    if unsafe { libc::bind(fd.as_raw_fd(), (&raw const sll).cast(), len) } < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("authority: binding to {iface}"));
    }
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    Ok((fd, sll))
}

fn send_arp(fd: &std::os::fd::OwnedFd, sll: &mut libc::sockaddr_ll, frame: &[u8; 28], iface: &str) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    let len = size_of::<libc::sockaddr_ll>() as u32;
    // SAFETY: sendto with a valid buffer and address.
    let sent =
        unsafe { libc::sendto(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0, (&raw const *sll).cast(), len) };
    if sent < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("authority: sending ARP on {iface}"));
    }
    Ok(())
}

fn arp_probe(iface: &str, mac: [u8; 6], target: Ipv4Addr, wait: Duration) -> Result<Vec<Finding>> {
    let Ok((fd, mut sll)) = arp_socket(iface) else { return Ok(Vec::new()) };
    use std::os::fd::AsRawFd as _;
    send_arp(&fd, &mut sll, &arp_probe_frame(mac, target), iface)?;
    let deadline = Instant::now() + wait;
    let mut found = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if r <= 0 {
            break;
        }
        // SAFETY: recv into our buffer.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 28 {
            continue;
        }
        let a = &buf[..n as usize];
        let sender_mac = &a[8..14];
        let sender_ip = Ipv4Addr::new(a[14], a[15], a[16], a[17]);
        // A reply from the holder, or someone else probing/announcing it
        // (a host that answers ARP for the address holds it).
        if sender_ip == target && sender_mac != mac {
            found.push(Finding::AddressInUse { address: target, mac: mac_text(sender_mac) });
        }
    }
    Ok(found)
}

// ------------------------------------------------------------------ watching

/// A foreign DHCP server seen while coresvc serves a segment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sighting {
    pub segment: String,
    pub interface: String,
    pub server: Ipv4Addr,
    pub from: Ipv4Addr,
    /// Unix seconds.
    pub first_seen: u64,
    pub last_seen: u64,
    /// Answers seen from it.
    pub answers: u64,
}

/// Keeps watching the served segments for other DHCP servers: listens to
/// every server answer broadcast there and probes every `interval`.
pub struct Watcher {
    seen: Arc<Mutex<BTreeMap<(String, Ipv4Addr), Sighting>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Watcher {
    /// Watches `segments` (name, interface); `ours`: addresses whose answers
    /// are coresvc's own.
    pub fn start(segments: Vec<(String, String)>, ours: Vec<Ipv4Addr>, interval: Duration) -> Watcher {
        let seen: Arc<Mutex<BTreeMap<(String, Ipv4Addr), Sighting>>> = Arc::default();
        let mut tasks = Vec::new();
        for (segment, iface) in segments {
            let (seen, ours) = (seen.clone(), ours.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = watch(&segment, &iface, &ours, interval, &seen).await {
                    warn!(segment, interface = iface, "authority: cannot watch for other DHCP servers: {e:#}");
                }
            }));
        }
        Watcher { seen, tasks }
    }

    pub fn sightings(&self) -> Vec<Sighting> {
        self.seen.lock().expect("watch lock").values().cloned().collect()
    }

    pub fn stop(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn watch(
    segment: &str,
    iface: &str,
    ours: &[Ipv4Addr],
    interval: Duration,
    seen: &Mutex<BTreeMap<(String, Ipv4Addr), Sighting>>,
) -> Result<()> {
    let std_sock = client_socket(iface)?;
    std_sock.set_nonblocking(true)?;
    let sock = tokio::net::UdpSocket::from_std(std_sock)?;
    let mac = iface_mac(iface)?;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; 1500];
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let probe = discover(mac, rand::random());
                if let Err(e) = sock.send_to(&probe, SocketAddrV4::new(Ipv4Addr::BROADCAST, DHCP_SERVER)).await {
                    warn!(segment, "authority: DHCP probe: {e}");
                }
            }
            r = sock.recv_from(&mut buf) => {
                let Ok((n, std::net::SocketAddr::V4(from))) = r else { continue };
                let Some((_, _, server)) = server_reply(&buf[..n]) else { continue };
                if ours.contains(&server) || ours.contains(from.ip()) {
                    continue;
                }
                let now = unix_now();
                let mut m = seen.lock().expect("watch lock");
                let e = m.entry((segment.to_string(), server)).or_insert_with(|| {
                    error!(
                        segment, interface = iface, %server, from = %from.ip(),
                        "authority: another DHCP server answers on this segment while coresvc serves it; \
                         two authorities are active (switch one of them off)"
                    );
                    Sighting {
                        segment: segment.to_string(),
                        interface: iface.to_string(),
                        server,
                        from: *from.ip(),
                        first_seen: now,
                        last_seen: now,
                        answers: 0,
                    }
                });
                e.last_seen = now;
                e.answers += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_discover_is_a_broadcast_request_from_our_mac() {
        let m = discover([2, 0, 0, 0, 0, 1], 0xdeadbeef);
        assert_eq!((m[0], m[1], m[2]), (1, 1, 6));
        assert_eq!(&m[4..8], &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(m[10] & 0x80, 0x80);
        assert_eq!(&m[28..34], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(&m[240..243], &[53, 1, 1]);
    }

    #[test]
    fn server_replies_are_recognised_and_requests_are_not() {
        let mut offer = vec![0u8; 240];
        offer[0] = 2;
        offer[4..8].copy_from_slice(&7u32.to_be_bytes());
        offer[236..240].copy_from_slice(&[99, 130, 83, 99]);
        offer.extend_from_slice(&[53, 1, 2, 54, 4, 10, 10, 0, 3, 255]);
        assert_eq!(server_reply(&offer), Some((7, 2, Ipv4Addr::new(10, 10, 0, 3))));
        // Our own probe is a request.
        assert_eq!(server_reply(&discover([2; 6], 7)), None);
        // No server identifier, a truncated option, a short packet.
        assert_eq!(server_reply(&offer[..243]), None);
        let mut bad = offer.clone();
        bad[244] = 40;
        assert_eq!(server_reply(&bad), None);
        assert_eq!(server_reply(&offer[..100]), None);
    }

    #[test]
    fn the_mode_is_persisted_and_read_back() {
        let dir = std::env::temp_dir().join(format!("coresvc-authority-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(persisted(&dir).unwrap(), None);
        persist(&dir, AuthorityMode::Production).unwrap();
        assert_eq!(persisted(&dir).unwrap(), Some(AuthorityMode::Production));
        persist(&dir, AuthorityMode::Bootstrap).unwrap();
        assert_eq!(persisted(&dir).unwrap(), Some(AuthorityMode::Bootstrap));
        std::fs::write(mode_file(&dir), "sideways\n").unwrap();
        let e = persisted(&dir).unwrap_err().to_string();
        assert!(e.contains("unknown authority mode") && e.contains("authority"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_arp_probe_has_no_sender_address() {
        let a = arp_probe_frame([2, 0, 0, 0, 0, 9], Ipv4Addr::new(10, 10, 0, 1));
        assert_eq!(&a[6..8], &[0, 1]);
        assert_eq!(&a[8..14], &[2, 0, 0, 0, 0, 9]);
        assert_eq!(&a[14..18], &[0; 4]);
        assert_eq!(&a[24..28], &[10, 10, 0, 1]);
    }
}
