//! UDP and TCP on port 53 of each served address.
//!
//! UDP uses one SO_REUSEPORT socket per CPU so the kernel spreads clients
//! over cores; each worker takes what is queued in one `recvmmsg`, answers
//! it (local questions from its kept answers, [`AnswerCache`]; TCP shares
//! one for all connections) and sends the
//! answers in one `sendmmsg`. Questions that need an upstream go on a task
//! each and are sent when answered.
//!
//! TCP (RFC 7766) answers pipelined queries (forwarded ones concurrently, at
//! most [`TCP_MAX_INFLIGHT`] per connection) and writes what is ready in one
//! write. Bounded: `dns.tcp_max_connections` connections in all and
//! `dns.tcp_max_per_client` per client address (more are closed at once,
//! counted); a connection with no complete query for `dns.tcp_idle_timeout`
//! (and nothing pending) is closed; a write that cannot complete within
//! `dns.tcp_write_timeout` (at most the idle timeout) closes the connection,
//! so a client that sends queries and never reads its answers holds nothing
//! for long; the kernel's send buffer of a connection is kept small.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc},
    task::JoinHandle,
    time::Instant,
};
use tracing::debug;

use super::{
    answers::AnswerCache,
    handler::{Resolver, Served, Transport},
    mmsg::Batch,
};

/// Forwarded queries of one TCP connection answered at the same time at most.
const TCP_MAX_INFLIGHT: usize = 16;
/// Kept answers per UDP worker, and for all TCP connections together
/// (connections may be short).
const UDP_KEPT: usize = 4096;
const TCP_KEPT: usize = 4096;
/// The kernel's send buffer of a TCP connection (it doubles the value):
/// room for the largest answer, not for a backlog.
const TCP_SNDBUF: usize = 64 * 1024;

fn udp_socket(addr: SocketAddr) -> Result<std::net::UdpSocket> {
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::DGRAM, None)?;
    s.set_reuse_port(true)?;
    // Bind even before the address is on the interface (authority switches
    // move addresses while the service runs).
    s.set_freebind_v4(true)?;
    // A stop wakes its thread at once (shutdown); this is a second guard.
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    s.bind(&addr.into()).with_context(|| format!("binding UDP {addr}"))?;
    Ok(s.into())
}

fn tcp_listener(addr: SocketAddr) -> Result<TcpListener> {
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_freebind_v4(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into()).with_context(|| format!("binding TCP {addr}"))?;
    // Room for a burst of handshakes; the caps apply once accepted.
    s.listen(1024)?;
    Ok(TcpListener::from_std(s.into())?)
}

/// TCP limits shared by every listener.
#[derive(Clone)]
pub struct TcpLimits {
    /// Connection slots (the connection cap).
    slots: Arc<Semaphore>,
    /// Open connections by client address.
    clients: Arc<Mutex<HashMap<IpAddr, usize>>>,
    per_client: usize,
    /// A connection with no complete query for this long is closed.
    idle: Duration,
    /// A write that takes longer closes the connection.
    write: Duration,
}

impl TcpLimits {
    pub fn new(max: usize, per_client: usize, idle: Duration, write: Duration) -> Self {
        TcpLimits {
            slots: Arc::new(Semaphore::new(max.max(1))),
            clients: Arc::default(),
            per_client: per_client.max(1),
            idle,
            write: write.min(idle),
        }
    }
}

/// A connection's place in its client's count; given back on drop.
struct ClientSlot {
    clients: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl ClientSlot {
    fn take(l: &TcpLimits, ip: IpAddr) -> Option<Self> {
        let mut c = l.clients.lock().expect("clients lock");
        let n = c.entry(ip).or_default();
        if *n >= l.per_client {
            return None;
        }
        *n += 1;
        Some(ClientSlot { clients: l.clients.clone(), ip })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut c = self.clients.lock().expect("clients lock");
        if let Some(n) = c.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.remove(&self.ip);
            }
        }
    }
}

/// What serves an address: the TCP task, a thread per UDP socket.
pub enum Worker {
    Task(JoinHandle<()>),
    Udp(UdpThread),
}

impl Worker {
    /// Stops it; a UDP thread has closed its socket when this returns.
    pub fn stop(self) {
        match self {
            Worker::Task(t) => t.abort(),
            Worker::Udp(u) => u.stop(),
        }
    }
}

pub struct UdpThread {
    sock: Arc<std::net::UdpSocket>,
    stop: Arc<AtomicBool>,
    join: std::thread::JoinHandle<()>,
}

impl UdpThread {
    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes a receive in progress (it returns at once from then on).
        // SAFETY: shutdown(2) on a socket the thread and this handle own.
        unsafe { libc::shutdown(self.sock.as_raw_fd(), libc::SHUT_RDWR) };
        let _ = self.join.join();
    }
}

/// Starts serving `addr` (port 53 normally).
pub fn serve(addr: SocketAddr, resolver: Arc<Resolver>, tcp: TcpLimits) -> Result<Vec<Worker>> {
    let mut workers = Vec::new();
    if let Err(e) = start(addr, resolver, tcp, &mut workers) {
        // Nothing keeps serving when the start fails.
        workers.into_iter().for_each(Worker::stop);
        return Err(e);
    }
    Ok(workers)
}

fn start(addr: SocketAddr, resolver: Arc<Resolver>, tcp: TcpLimits, workers: &mut Vec<Worker>) -> Result<()> {
    let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(8);
    let rt = tokio::runtime::Handle::current();
    for i in 0..n {
        let sock = Arc::new(udp_socket(addr)?);
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st, r, rt) = (sock.clone(), stop.clone(), resolver.clone(), rt.clone());
        let join = std::thread::Builder::new()
            .name(format!("dns-udp-{i}"))
            .spawn(move || udp_loop(s, r, st, rt))
            .context("starting a DNS UDP thread")?;
        workers.push(Worker::Udp(UdpThread { sock, stop, join }));
    }
    let listener = tcp_listener(addr)?;
    workers.push(Worker::Task(tokio::spawn(tcp_loop(listener, resolver, tcp))));
    Ok(())
}

/// One UDP socket's thread: waits in `recvmmsg` for what is queued, answers
/// it, sends the answers in one `sendmmsg`; questions for an upstream go to
/// the runtime.
fn udp_loop(
    sock: Arc<std::net::UdpSocket>,
    resolver: Arc<Resolver>,
    stop: Arc<AtomicBool>,
    rt: tokio::runtime::Handle,
) {
    let fd = sock.as_raw_fd();
    let mut b = Batch::new();
    let mut kept = AnswerCache::new(UDP_KEPT);
    while !stop.load(Ordering::Relaxed) {
        let n = match b.recv(fd) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                debug!("dns udp recv: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let rrl = resolver.rate_limiter();
        for i in 0..n {
            let s = b.slot(i);
            let Some(from) = s.from else { continue };
            let answered = if s.cut {
                *s.out = resolver.cut_query(s.msg);
                !s.out.is_empty()
            } else {
                match resolver.serve(s.msg, from.ip(), Transport::Udp, &mut kept, s.out) {
                    Served::Replied => true,
                    Served::Dropped => false,
                    Served::Forward(p) => {
                        let (sock, resolver, rrl) = (sock.clone(), resolver.clone(), rrl.clone());
                        rt.spawn(async move {
                            let mut b = resolver.finish(*p).await;
                            if resolver.limit(&rrl, from.ip(), &mut b) {
                                let _ = socket2::SockRef::from(&*sock).send_to_with_flags(
                                    &b,
                                    &from.into(),
                                    libc::MSG_DONTWAIT,
                                );
                            }
                        });
                        false
                    }
                }
            };
            if answered && resolver.limit(&rrl, from.ip(), s.out) {
                b.reply(i);
            }
        }
        kept.flush(&resolver.stats);
        while b.pending() > 0 {
            match b.send(fd) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // The first answer was refused (say, no route back): the rest go on.
                    debug!("dns udp send: {e}");
                    b.skip_one();
                }
            }
        }
    }
}

async fn tcp_loop(listener: TcpListener, resolver: Arc<Resolver>, tcp: TcpLimits) {
    let kept = Arc::new(Mutex::new(AnswerCache::new(TCP_KEPT)));
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
        let Some(client) = ClientSlot::take(&tcp, peer.ip()) else {
            resolver.stats.inc(&resolver.stats.tcp_rejected_per_client);
            drop(stream);
            continue;
        };
        resolver.stats.inc(&resolver.stats.tcp_connections);
        let (resolver, limits, kept) = (resolver.clone(), tcp.clone(), kept.clone());
        tokio::spawn(async move {
            tcp_connection(stream, peer.ip(), resolver, &limits, &kept).await;
            drop((permit, client));
        });
    }
}

/// Why a connection ended (for the counters).
enum End {
    Closed,
    Idle,
    WriteTimeout,
}

async fn tcp_connection(
    mut stream: TcpStream,
    peer: IpAddr,
    resolver: Arc<Resolver>,
    l: &TcpLimits,
    kept: &Mutex<AnswerCache>,
) {
    let _ = stream.set_nodelay(true);
    let _ = socket2::SockRef::from(&stream).set_send_buffer_size(TCP_SNDBUF);
    let end = serve_tcp(&mut stream, peer, &resolver, l, kept).await;
    let s = &resolver.stats;
    match end {
        End::Closed => {}
        End::Idle => s.inc(&s.tcp_idle_closed),
        End::WriteTimeout => s.inc(&s.tcp_write_timeouts),
    }
}

async fn serve_tcp(
    stream: &mut TcpStream,
    peer: IpAddr,
    resolver: &Arc<Resolver>,
    l: &TcpLimits,
    kept: &Mutex<AnswerCache>,
) -> End {
    let (ftx, mut frx) = mpsc::channel::<Vec<u8>>(TCP_MAX_INFLIGHT);
    let mut input: Vec<u8> = Vec::with_capacity(4096);
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    let mut reply = Vec::with_capacity(512);
    let mut inflight = 0usize;
    let (mut eof, mut broken) = (false, false);
    let mut idle_at = Instant::now() + l.idle;
    loop {
        // Every complete query in the input, while there is room to forward.
        let mut used = 0;
        while inflight < TCP_MAX_INFLIGHT && !broken {
            let rest = &input[used..];
            let Some(len) = rest.get(..2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]]))) else { break };
            let Some(msg) = rest.get(2..2 + len) else { break };
            used += 2 + len;
            idle_at = Instant::now() + l.idle;
            let served = resolver.serve(msg, peer, Transport::Tcp, &mut kept.lock().expect("kept lock"), &mut reply);
            match served {
                Served::Replied => frame(&mut out, &reply),
                // A message we cannot answer on a stream: the framing is suspect.
                Served::Dropped => broken = true,
                Served::Forward(p) => {
                    inflight += 1;
                    let (tx, resolver) = (ftx.clone(), resolver.clone());
                    tokio::spawn(async move {
                        let _ = tx.send(resolver.finish(*p).await).await;
                    });
                }
            }
        }
        input.drain(..used);
        kept.lock().expect("kept lock").flush(&resolver.stats);
        if !out.is_empty() {
            match tokio::time::timeout(l.write, stream.write_all(&out)).await {
                Ok(Ok(())) => out.clear(),
                Ok(Err(_)) => return End::Closed,
                Err(_) => return End::WriteTimeout,
            }
        }
        if broken || (eof && inflight == 0) {
            return End::Closed;
        }
        // A partial query, or a frame never sent.
        if input.capacity() - input.len() < 2048 {
            input.reserve(16 * 1024);
        }
        let reading = !eof && inflight < TCP_MAX_INFLIGHT;
        tokio::select! {
            r = stream.read_buf(&mut input), if reading => match r {
                // Closed for writing: what was asked is still answered.
                Ok(0) => eof = true,
                Ok(_) => {}
                Err(_) => return End::Closed,
            },
            Some(b) = frx.recv(), if inflight > 0 => {
                inflight -= 1;
                frame(&mut out, &b);
            }
            () = tokio::time::sleep_until(idle_at), if inflight == 0 => return End::Idle,
        }
    }
}

/// Appends `msg` with its two-byte length (RFC 1035 §4.2.2).
fn frame(out: &mut Vec<u8>, msg: &[u8]) {
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
}
