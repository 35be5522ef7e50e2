//! The tokio side: sockets, tasks and clocks around the sans-IO transfer.
//!
//! Every socket is bound to the segment's interface (`SO_BINDTODEVICE`) as
//! well as its address, so a request that reaches the address through another
//! interface, the uplink above all, finds no socket. A transfer gets its own
//! socket on (the address the client asked, an ephemeral port), connected to
//! the client: its transfer ID (RFC 1350 §4). Datagrams from any other
//! address or port never reach it; the kernel answers them with ICMP.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    os::fd::AsRawFd as _,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::{io::Interest, net::UdpSocket};
use tracing::{debug, info, warn};

use super::{
    Refusal, SegmentPlan, Shared,
    fs::{Cached, FileSource},
    proto::{DATA_HEADER_LEN, Repr, Request},
    transfer::{Failure, Mode, Outcome, Received, Transfer},
};

/// Requests longer than this are refused as malformed (RFC 2347 §2 limits a
/// request to 512 bytes; some clients send a little more).
const MAX_REQUEST: usize = 2048;

fn udp_socket(interface: &str) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.bind_device(Some(interface.as_bytes()))?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// The port 69 socket of one segment address. `IP_FREEBIND` lets it bind
/// before the address is on the interface (a production-mode reserved
/// address may come later); it answers once it is.
pub(super) fn listen_socket(address: SocketAddrV4, interface: &str) -> std::io::Result<UdpSocket> {
    let s = udp_socket(interface)?;
    s.set_freebind_v4(true)?;
    s.bind(&SocketAddr::V4(address).into())?;
    UdpSocket::from_std(s.into())
}

/// A socket for one client: bound to the address it asked, connected to it.
fn client_socket(local: Ipv4Addr, interface: &str, peer: SocketAddrV4) -> std::io::Result<Socket> {
    let s = udp_socket(interface)?;
    s.bind(&SocketAddr::V4(SocketAddrV4::new(local, 0)).into())?;
    s.connect(&SocketAddr::V4(peer).into())?;
    Ok(s)
}

pub(super) async fn listen(shared: Arc<Shared>, seg: Arc<SegmentPlan>, local: Ipv4Addr, sock: UdpSocket) {
    let mut buf = vec![0u8; MAX_REQUEST + 1];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, "tftp: receive on port 69");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let SocketAddr::V4(peer) = peer else { continue };
        request(&shared, &seg, local, &buf[..n], peer);
    }
}

/// Handles one datagram to port 69.
fn request(shared: &Arc<Shared>, seg: &SegmentPlan, local: Ipv4Addr, data: &[u8], peer: SocketAddrV4) {
    let refuse = |r: Refusal, name: &[u8]| refuse(shared, seg, local, peer, r, name);
    // Nothing goes to a source this segment does not reach: it may be forged.
    if !seg.reaches(*peer.ip()) || peer.port() == 0 {
        return refuse(Refusal::OffSegment, b"");
    }
    let req = match Repr::parse(data) {
        _ if data.len() > MAX_REQUEST => return refuse(Refusal::Malformed, b""),
        Ok(Repr::Rrq(req)) => req,
        Ok(Repr::Wrq(req)) => return refuse(Refusal::WriteRequest, req.filename),
        Ok(_) | Err(_) => {
            // Only a request is answered on port 69: an ERROR answered with an
            // ERROR could loop between two servers.
            shared.refused(Refusal::Malformed);
            debug!(client = %peer, segment = %seg.name, "tftp: refused a datagram that is not a request (malformed)");
            return;
        }
    };
    let Some(mode) = mode(&req) else { return refuse(Refusal::UnsupportedMode, req.filename) };
    let Some(client_slot) = shared.client_slot(*peer.ip()) else {
        return refuse(Refusal::ClientBusy, req.filename);
    };
    let Ok(slot) = shared.slots.clone().try_acquire_owned() else {
        return refuse(Refusal::Busy, req.filename);
    };
    let opened = match shared.root.open_file(req.filename) {
        Ok(o) => o,
        Err(d) => return refuse(d.into(), req.filename),
    };
    let sock = match client_socket(local, &seg.interface, peer).and_then(|s| UdpSocket::from_std(s.into())) {
        Ok(s) => s,
        Err(e) => {
            warn!(client = %peer, error = %e, "tftp: cannot open a transfer socket");
            return refuse(Refusal::ServerError, req.filename);
        }
    };
    let t = Transfer::new(&req.options, mode, opened.size, &shared.params);
    let g = t.granted();
    let name = String::from_utf8_lossy(req.filename).into_owned();
    info!(
        client = %peer, file = ?name, size = opened.size, ?mode, blksize = g.blksize(), windowsize = g.windowsize(),
        segment = %seg.name, "tftp: transfer started"
    );
    shared.stats.active.fetch_add(1, Relaxed);
    let shared = shared.clone();
    tokio::spawn(async move {
        let outcome = run(&shared, sock, t, opened.file).await;
        shared.stats.active.fetch_sub(1, Relaxed);
        drop(slot);
        drop(client_slot);
        finished(&shared, peer, &name, outcome);
    });
}

/// RFC 1350 §1 modes: octet, and netascii converted; "mail" is obsolete.
fn mode(req: &Request<'_>) -> Option<Mode> {
    if req.mode.eq_ignore_ascii_case(b"octet") {
        Some(Mode::Octet)
    } else if req.mode.eq_ignore_ascii_case(b"netascii") {
        Some(Mode::Netascii)
    } else {
        None
    }
}

fn refuse(shared: &Shared, seg: &SegmentPlan, local: Ipv4Addr, peer: SocketAddrV4, r: Refusal, name: &[u8]) {
    shared.refused(r);
    let (log, left_out) = shared.refusal_log.lock().expect("refusal log").allow(std::time::Instant::now());
    if left_out > 0 {
        warn!(count = left_out, "tftp: {left_out} more refusals were not logged (counted in coresvc status)");
    }
    let name = String::from_utf8_lossy(name);
    match (log, r.suspicious()) {
        (false, _) => {}
        (true, true) => warn!(client = %peer, file = ?name, segment = %seg.name, reason = r.name(), "tftp: refused"),
        (true, false) => info!(client = %peer, file = ?name, segment = %seg.name, reason = r.name(), "tftp: refused"),
    }
    let Some((code, message)) = r.reply() else { return };
    // From a fresh port, as a transfer would answer (RFC 1350 §4).
    let pkt = Repr::Error { code, message: message.as_bytes() };
    let mut buf = [0u8; 128];
    let Ok(n) = pkt.emit(&mut buf) else { return };
    match client_socket(local, &seg.interface, peer) {
        Ok(s) => {
            // Not through tokio: a fresh registration does not know yet that
            // the socket is writable.
            let _ = s.send(&buf[..n]);
        }
        Err(e) => debug!(client = %peer, error = %e, "tftp: cannot send a refusal"),
    }
}

/// Runs a transfer to its end.
async fn run(shared: &Shared, sock: UdpSocket, mut t: Transfer, file: std::fs::File) -> Outcome {
    let stats = &shared.stats;
    let seg = t.data_packet_len();
    let mut gso = gso_fits(&sock, seg);
    let segs = if gso { (MAX_GSO_BYTES / seg).clamp(1, MAX_GSO_SEGMENTS) } else { 1 };
    // Room for `segs` full DATA packets back to back, the last of any kind.
    let mut buf = vec![0u8; seg * (segs - 1) + t.packet_capacity()];
    let mut src = FileSource::new(file, seg - DATA_HEADER_LEN);
    let mut rbuf = [0u8; 1024];
    let sleep = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(sleep);
    let mut armed = None;
    loop {
        // The window's bytes are read ahead: at once from the page cache,
        // else on a blocking thread, so a cold file on a slow disk never
        // holds the runtime (DNS and DHCP share it).
        if let Some((offset, len)) = t.next_read()
            && !src.covers(offset, len)
            && src.fill_cached(offset, len) == Cached::No
        {
            src = match tokio::task::spawn_blocking(move || {
                src.fill(offset, len);
                src
            })
            .await
            {
                Ok(s) => s,
                Err(_) => return Outcome::Failed(Failure::Read(std::io::ErrorKind::Other)),
            };
        }
        let now = Instant::now();
        loop {
            // A batch: full-size DATA packets; a shorter packet ends it.
            let (mut used, mut n) = (0, 0);
            while n < segs {
                let Some(tx) = t.poll_transmit(now, &mut src, &mut buf[used..]) else { break };
                stats.bytes_sent.fetch_add(tx.payload as u64, Relaxed);
                if tx.retransmission {
                    stats.retransmissions.fetch_add(1, Relaxed);
                }
                used += tx.len;
                n += 1;
                if tx.len != seg {
                    break;
                }
            }
            if n == 0 {
                break;
            }
            match send_batch(&sock, &buf[..used], seg, &mut gso).await {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => t.fail(Failure::ClientGone),
                // Anything else is a lost packet to the protocol.
                Err(e) => debug!(error = %e, "tftp: send"),
            }
        }
        if let Some(o) = t.outcome() {
            return o.clone();
        }
        // The timer moves only when the deadline comes earlier: in lock-step
        // it moves later with every block, and an early wake-up is cheaper
        // than a timer update per block.
        let deadline = t.poll_timeout().unwrap_or(now + shared.params.timeout);
        if armed.is_none_or(|a| deadline < a) {
            sleep.as_mut().reset(deadline.into());
            armed = Some(deadline);
        }
        tokio::select! {
            r = sock.recv(&mut rbuf) => match r {
                Ok(n) => {
                    if matches!(t.handle_packet(Instant::now(), &rbuf[..n]), Received::Malformed) {
                        debug!("tftp: malformed datagram from a client ignored");
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => t.fail(Failure::ClientGone),
                Err(e) => debug!(error = %e, "tftp: receive"),
            },
            _ = &mut sleep => {
                armed = None;
                t.handle_timeout(Instant::now());
            }
        }
    }
}

/// UDP GSO (`UDP_SEGMENT`) sends a window of equal DATA packets in one
/// `sendmsg`; the kernel cuts it into datagrams. Up to 64 segments and 64 KiB.
const MAX_GSO_SEGMENTS: usize = 64;
const MAX_GSO_BYTES: usize = 65_000;

/// GSO needs each datagram to fit the path MTU unfragmented.
fn gso_fits(sock: &UdpSocket, seg: usize) -> bool {
    let mut mtu: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into a c_int of the stated size.
    let r =
        unsafe { libc::getsockopt(sock.as_raw_fd(), libc::IPPROTO_IP, libc::IP_MTU, (&raw mut mtu).cast(), &mut len) };
    r == 0 && seg + 28 <= mtu as usize
}

/// Sends consecutive `seg`-byte datagrams (the last may be shorter).
async fn send_batch(sock: &UdpSocket, data: &[u8], seg: usize, gso: &mut bool) -> std::io::Result<()> {
    if *gso && data.len() > seg {
        match sock.async_io(Interest::WRITABLE, || send_gso(sock.as_raw_fd(), data, seg)).await {
            Ok(_) => return Ok(()),
            // The device or kernel cannot segment: one datagram at a time from now on.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL | libc::EOPNOTSUPP)) => {
                debug!(error = %e, "tftp: UDP GSO unavailable; sending datagrams one by one");
                *gso = false;
            }
            Err(e) => return Err(e),
        }
    }
    for d in data.chunks(seg) {
        sock.send(d).await?;
    }
    Ok(())
}

fn send_gso(fd: std::os::fd::RawFd, data: &[u8], seg: usize) -> std::io::Result<usize> {
    let mut iov = libc::iovec { iov_base: data.as_ptr().cast_mut().cast(), iov_len: data.len() };
    // Aligned room for one cmsghdr with a u16.
    let mut control = [0u64; 4];
    // SAFETY: msghdr is plain data; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_* compute sizes and walk the buffer we own; it fits one header and a u16.
    unsafe {
        msg.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as usize;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg as u16);
        let r = libc::sendmsg(fd, &msg, 0);
        if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(r as usize) }
    }
}

fn finished(shared: &Shared, peer: SocketAddrV4, name: &str, outcome: Outcome) {
    let s = &shared.stats;
    match outcome {
        Outcome::Completed => {
            s.completed.fetch_add(1, Relaxed);
            info!(client = %peer, file = ?name, "tftp: transfer completed");
        }
        Outcome::OptionsRefused => {
            s.aborted.fetch_add(1, Relaxed);
            s.option_aborts.fetch_add(1, Relaxed);
            debug!(client = %peer, file = ?name, "tftp: the client ended option negotiation (error 8), as EDK2 does after tsize");
        }
        Outcome::Aborted { code, message } => {
            s.aborted.fetch_add(1, Relaxed);
            let code = u16::from(code);
            info!(client = %peer, file = ?name, code, message = ?message, "tftp: the client aborted the transfer");
        }
        Outcome::Failed(f) => {
            s.failed.fetch_add(1, Relaxed);
            if f == Failure::Unanswered {
                info!(client = %peer, file = ?name, "tftp: transfer failed: {}", f.describe());
            } else {
                warn!(client = %peer, file = ?name, "tftp: transfer failed: {}", f.describe());
            }
        }
    }
}
