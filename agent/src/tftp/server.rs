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
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tracing::{debug, info, warn};

use super::{
    Refusal, SegmentPlan, Shared,
    proto::{Repr, Request},
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
    let name = String::from_utf8_lossy(name);
    if r.suspicious() {
        warn!(client = %peer, file = ?name, segment = %seg.name, reason = r.name(), "tftp: refused");
    } else {
        info!(client = %peer, file = ?name, segment = %seg.name, reason = r.name(), "tftp: refused");
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
async fn run(shared: &Shared, sock: UdpSocket, mut t: Transfer, mut file: std::fs::File) -> Outcome {
    let stats = &shared.stats;
    let mut buf = vec![0u8; t.packet_capacity()];
    let mut rbuf = [0u8; 1024];
    loop {
        let now = Instant::now();
        while let Some(tx) = t.poll_transmit(now, &mut file, &mut buf) {
            match sock.send(&buf[..tx.len]).await {
                Ok(_) => {
                    stats.bytes_sent.fetch_add(tx.payload as u64, Relaxed);
                    if tx.retransmission {
                        stats.retransmissions.fetch_add(1, Relaxed);
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => t.fail(Failure::ClientGone),
                // Anything else is a lost packet to the protocol.
                Err(e) => debug!(error = %e, "tftp: send"),
            }
        }
        if let Some(o) = t.outcome() {
            return o.clone();
        }
        let deadline = t.poll_timeout().unwrap_or(now + shared.params.timeout);
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
            _ = tokio::time::sleep_until(deadline.into()) => {
                t.handle_timeout(Instant::now());
            }
        }
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
