//! UDP and TCP on port 53 of each served address. UDP uses one
//! SO_REUSEPORT socket per CPU so the kernel spreads clients over cores;
//! TCP (RFC 7766) answers pipelined queries concurrently, closes idle
//! connections and caps how many are open.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::{Semaphore, mpsc},
    task::JoinHandle,
};
use tracing::debug;

use super::handler::{Resolver, Step, Transport};

/// Queries of one TCP connection answered at the same time at most.
const TCP_MAX_INFLIGHT: usize = 16;

fn udp_socket(addr: SocketAddr) -> Result<UdpSocket> {
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::DGRAM, None)?;
    s.set_reuse_port(true)?;
    // Bind even before the address is on the interface (authority switches
    // move addresses while the service runs).
    s.set_freebind_v4(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into()).with_context(|| format!("binding UDP {addr}"))?;
    Ok(UdpSocket::from_std(s.into())?)
}

fn tcp_listener(addr: SocketAddr) -> Result<TcpListener> {
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_freebind_v4(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into()).with_context(|| format!("binding TCP {addr}"))?;
    s.listen(128)?;
    Ok(TcpListener::from_std(s.into())?)
}

/// TCP limits shared by every listener.
#[derive(Clone)]
pub struct TcpLimits {
    /// Connection slots (the connection cap).
    pub slots: Arc<Semaphore>,
    /// A connection with no complete query for this long is closed.
    pub idle: Duration,
}

/// Starts serving `addr` (port 53 normally); returns the tasks.
pub fn serve(addr: SocketAddr, resolver: Arc<Resolver>, tcp: TcpLimits) -> Result<Vec<JoinHandle<()>>> {
    let mut tasks = Vec::new();
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(8);
    for _ in 0..workers {
        let sock = Arc::new(udp_socket(addr)?);
        tasks.push(tokio::spawn(udp_loop(sock, resolver.clone())));
    }
    let listener = tcp_listener(addr)?;
    tasks.push(tokio::spawn(tcp_loop(listener, resolver, tcp)));
    Ok(tasks)
}

async fn udp_loop(sock: Arc<UdpSocket>, resolver: Arc<Resolver>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let (len, from) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                debug!("dns udp recv: {e}");
                continue;
            }
        };
        match resolver.handle(&buf[..len], from.ip(), Transport::Udp) {
            Step::Reply(b) => {
                let _ = sock.send_to(&b, from).await;
            }
            Step::Drop => {}
            Step::Forward(p) => {
                let (sock, resolver) = (sock.clone(), resolver.clone());
                tokio::spawn(async move {
                    let b = resolver.finish(*p).await;
                    let _ = sock.send_to(&b, from).await;
                });
            }
        }
    }
}

async fn tcp_loop(listener: TcpListener, resolver: Arc<Resolver>, tcp: TcpLimits) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                debug!("dns tcp accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = tcp.slots.clone().try_acquire_owned() else {
            resolver.stats.inc(&resolver.stats.tcp_rejected);
            drop(stream);
            continue;
        };
        resolver.stats.inc(&resolver.stats.tcp_connections);
        let resolver = resolver.clone();
        let idle = tcp.idle;
        tokio::spawn(async move {
            tcp_connection(stream, peer.ip(), resolver, idle).await;
            drop(permit);
        });
    }
}

async fn tcp_connection(stream: TcpStream, peer: IpAddr, resolver: Arc<Resolver>, idle: Duration) {
    let (mut r, mut w) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(TCP_MAX_INFLIGHT);
    let writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            let mut out = Vec::with_capacity(b.len() + 2);
            out.extend_from_slice(&(b.len() as u16).to_be_bytes());
            out.extend_from_slice(&b);
            if w.write_all(&out).await.is_err() {
                break;
            }
        }
    });
    let inflight = Arc::new(Semaphore::new(TCP_MAX_INFLIGHT));
    loop {
        let len = match tokio::time::timeout(idle, r.read_u16()).await {
            Ok(Ok(l)) => usize::from(l),
            _ => break, // idle, closed or reset
        };
        let mut buf = vec![0u8; len];
        match tokio::time::timeout(idle, r.read_exact(&mut buf)).await {
            Ok(Ok(_)) => {}
            _ => break,
        }
        let Ok(permit) = inflight.clone().acquire_owned().await else { break };
        match resolver.handle(&buf, peer, Transport::Tcp) {
            Step::Reply(b) => {
                drop(permit);
                if tx.send(b).await.is_err() {
                    break;
                }
            }
            // A message we cannot answer on a stream: the framing is suspect.
            Step::Drop => break,
            Step::Forward(p) => {
                let (tx, resolver) = (tx.clone(), resolver.clone());
                tokio::spawn(async move {
                    let b = resolver.finish(*p).await;
                    let _ = tx.send(b).await;
                    drop(permit);
                });
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}
