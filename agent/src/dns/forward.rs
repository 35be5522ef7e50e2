//! Forwarding to upstream resolvers: per-domain forwarders first, then the
//! default upstreams; UDP, TCP when the answer is truncated; a reply counts
//! only if it comes from the server asked, with our ID and our question. A
//! server that times out, fails or refuses is skipped for the next one; when
//! all have failed the caller answers SERVFAIL. Identical questions in flight
//! share one upstream query.
//!
//! Bounded like dnsmasq's `dns-forward-max`: at most `dns.forward_max`
//! questions are outstanding upstream, and at most [`FOLLOWERS_MAX`] clients
//! wait for each. A query beyond that is not admitted ([`Forwarder::admit`]
//! returns `None`): the caller answers SERVFAIL at once, counted as
//! `upstream_overflow`. SERVFAIL rather than silence because the clients are
//! the segments' own hosts: their stub resolvers move on to another server at
//! once instead of waiting out their timeout, and the answer is no larger
//! than the question (rate limiting applies to it like to every answer).
//!
//! UDP goes through a pool of at most `dns.upstream_sockets` sockets per
//! address family, each bound to a port the kernel picks at random; a
//! question takes a random socket of the pool and a random ID not in use on
//! it for that server, and a socket is replaced by a fresh one (a new random
//! port) after [`ROTATE_AFTER`] questions. So a flood of questions for random
//! names costs no file descriptor per question: the agent holds at most
//! `upstream_sockets` per family plus the retired ones still waiting for
//! their last answers (each holds an admitted question, so at most
//! `forward_max` of them), plus a TCP connection per admitted question that
//! had to retry over TCP.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RecordType},
};
use rand::Rng as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpStream, UdpSocket},
    sync::{Notify, OwnedSemaphorePermit, Semaphore, broadcast, mpsc},
};
use tracing::debug;

use super::{cache::Key, stats::Stats};

/// The EDNS payload size we offer upstream and to clients (DNS flag day 2020).
pub const EDNS_PAYLOAD: u16 = 1232;

/// Clients waiting at most for one question in flight (besides its first).
pub const FOLLOWERS_MAX: usize = 64;

/// Questions a pooled socket carries before a fresh one (another random
/// port) takes its place.
pub const ROTATE_AFTER: u32 = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream server is configured for {0}")]
    NoUpstream(String),
    #[error("every upstream failed for {name}: {last}")]
    AllFailed { name: String, last: String },
    #[error("the query for {0} in flight was abandoned")]
    Abandoned(String),
}

/// Why one question to one upstream server got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("the question cannot be encoded: {0}")]
    Encode(#[from] hickory_proto::ProtoError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("no TCP answer within {0:?}")]
    TcpTimeout(Duration),
    #[error("the upstream socket closed")]
    SocketClosed,
    #[error("the TCP answer does not match the question")]
    Mismatched,
}

/// An upstream's answer, as the client will see it (rcode and sections).
pub type Answer = Arc<Result<Message, ForwardError>>;

/// The limits of a forwarder.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time to wait for one upstream.
    pub timeout: Duration,
    /// Questions outstanding upstream at most.
    pub forward_max: usize,
    /// Pooled UDP sockets per address family at most.
    pub sockets: usize,
}

pub struct Forwarder {
    default: Vec<SocketAddr>,
    /// (domain, servers), longest domain first.
    domains: Vec<(Name, Vec<SocketAddr>)>,
    timeout: Duration,
    inflight: Mutex<HashMap<Key, broadcast::Sender<Answer>>>,
    /// One permit per question outstanding upstream.
    slots: Arc<Semaphore>,
    pool: Pool,
    stats: Arc<Stats>,
}

/// An admitted question: the client's place in line for its answer.
pub struct Ticket {
    fwd: Arc<Forwarder>,
    key: Key,
    role: Role,
}

enum Role {
    /// Asks upstream, holding one of the `forward_max` slots; answers the
    /// followers when done (or abandons them when dropped first).
    Lead {
        _slot: OwnedSemaphorePermit,
        done: bool,
    },
    Follow(broadcast::Receiver<Answer>),
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let role = match self.role {
            Role::Lead { .. } => "lead",
            Role::Follow(_) => "follow",
        };
        f.debug_struct("Ticket").field("key", &self.key).field("role", &role).finish()
    }
}

impl Ticket {
    /// The upstream answer to the question.
    pub async fn answer(mut self, name: &Name, qtype: RecordType, dnssec_ok: bool) -> Answer {
        if let Role::Follow(rx) = &mut self.role {
            return rx.recv().await.unwrap_or_else(|_| Arc::new(Err(ForwardError::Abandoned(name.to_string()))));
        }
        let answer: Answer = Arc::new(self.fwd.resolve_uncoalesced(name, qtype, dnssec_ok).await);
        let mut inflight = self.fwd.inflight.lock().expect("inflight lock");
        // Removed and sent under the lock: a follower either subscribed
        // before (and receives this) or finds no entry and leads anew.
        if let Some(tx) = inflight.remove(&self.key) {
            let _ = tx.send(answer.clone());
        }
        if let Role::Lead { done, .. } = &mut self.role {
            *done = true;
        }
        answer
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Role::Lead { done: false, .. } = self.role {
            // Dropped before it asked (the service stopped): its followers
            // are told (their senders go) and a later query leads anew.
            self.fwd.inflight.lock().expect("inflight lock").remove(&self.key);
        }
    }
}

impl Forwarder {
    pub fn new(
        default: Vec<SocketAddr>,
        mut domains: Vec<(Name, Vec<SocketAddr>)>,
        limits: Limits,
        stats: Arc<Stats>,
    ) -> Self {
        domains.sort_by_key(|(d, _)| std::cmp::Reverse(d.num_labels()));
        Forwarder {
            default,
            domains,
            timeout: limits.timeout,
            inflight: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(limits.forward_max.max(1))),
            pool: Pool::new(limits.sockets.max(1), stats.clone()),
            stats,
        }
    }

    /// The servers for `name`: the most specific `dns.forward` domain, else the defaults.
    pub fn servers_for(&self, name: &Name) -> &[SocketAddr] {
        self.domains.iter().find(|(d, _)| d.zone_of(name)).map(|(_, s)| s.as_slice()).unwrap_or(&self.default)
    }

    /// Questions outstanding upstream now.
    pub fn outstanding(&self) -> usize {
        self.inflight.lock().expect("inflight lock").len()
    }

    /// A place in line for the answer to a question: leading it upstream
    /// (while fewer than `forward_max` are outstanding), or following the
    /// identical question in flight (while fewer than [`FOLLOWERS_MAX`]
    /// follow it). `None`: not admitted, the caller answers at once.
    pub fn admit(self: &Arc<Self>, name: &Name, qtype: RecordType, dnssec_ok: bool) -> Option<Ticket> {
        let key = Key::new(name, qtype, dnssec_ok);
        let mut inflight = self.inflight.lock().expect("inflight lock");
        if let Some(tx) = inflight.get(&key) {
            if tx.receiver_count() >= FOLLOWERS_MAX {
                return None;
            }
            self.stats.inc(&self.stats.coalesced);
            return Some(Ticket { fwd: self.clone(), key, role: Role::Follow(tx.subscribe()) });
        }
        let slot = self.slots.clone().try_acquire_owned().ok()?;
        let (tx, _) = broadcast::channel(1);
        inflight.insert(key.clone(), tx);
        Some(Ticket { fwd: self.clone(), key, role: Role::Lead { _slot: slot, done: false } })
    }

    async fn resolve_uncoalesced(
        &self,
        name: &Name,
        qtype: RecordType,
        dnssec_ok: bool,
    ) -> Result<Message, ForwardError> {
        let servers = self.servers_for(name);
        if servers.is_empty() {
            return Err(ForwardError::NoUpstream(name.to_string()));
        }
        let mut last = String::new();
        for server in servers {
            self.stats.inc(&self.stats.upstream_queries);
            match self.ask(*server, name, qtype, dnssec_ok).await {
                Ok(m) if matches!(m.metadata.response_code, ResponseCode::ServFail | ResponseCode::Refused) => {
                    self.stats.inc(&self.stats.upstream_failures);
                    last = format!("{server} answered {}", m.metadata.response_code);
                }
                Ok(m) => return Ok(m),
                Err(e) => {
                    self.stats.inc(&self.stats.upstream_failures);
                    debug!(%server, %name, "upstream failed: {e}");
                    last = format!("{server}: {e}");
                }
            }
        }
        Err(ForwardError::AllFailed { name: name.to_string(), last })
    }

    /// One question to one server: UDP, then TCP if truncated.
    async fn ask(
        &self,
        server: SocketAddr,
        name: &Name,
        qtype: RecordType,
        dnssec_ok: bool,
    ) -> Result<Message, UpstreamError> {
        let mut q = Message::new(0, MessageType::Query, OpCode::Query);
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(name.clone(), qtype));
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        edns.set_dnssec_ok(dnssec_ok);
        q.set_edns(edns);
        let mut bytes = q.to_vec()?;
        let reply = tokio::time::timeout(self.timeout, self.ask_udp(server, &mut bytes, name, qtype)).await.map_err(
            |_| {
                self.stats.inc(&self.stats.upstream_timeouts);
                UpstreamError::Timeout(self.timeout)
            },
        )??;
        if !reply.metadata.truncation {
            return Ok(reply);
        }
        self.stats.inc(&self.stats.upstream_tcp);
        let id = u16::from_be_bytes([bytes[0], bytes[1]]);
        tokio::time::timeout(self.timeout, ask_tcp(server, &bytes, id, name, qtype))
            .await
            .map_err(|_| UpstreamError::TcpTimeout(self.timeout))?
    }

    /// Sends `query` (its ID is set here) from a pooled socket and waits for
    /// the matching reply.
    async fn ask_udp(
        &self,
        server: SocketAddr,
        query: &mut [u8],
        name: &Name,
        qtype: RecordType,
    ) -> Result<Message, UpstreamError> {
        let sock = self.pool.pick(server)?;
        let mut waiter = sock.register(server);
        query[..2].copy_from_slice(&waiter.id.to_be_bytes());
        sock.sock.send_to(query, server).await?;
        loop {
            let reply = waiter.rx.recv().await.ok_or(UpstreamError::SocketClosed)?;
            match accept(&reply, waiter.id, name, qtype) {
                Some(m) => return Ok(m),
                None => self.stats.inc(&self.stats.upstream_mismatched),
            }
        }
    }
}

/// Pooled upstream sockets, per address family.
struct Pool {
    size: usize,
    /// IPv4, IPv6.
    socks: Mutex<[Vec<Arc<PoolSock>>; 2]>,
    stats: Arc<Stats>,
}

impl Pool {
    fn new(size: usize, stats: Arc<Stats>) -> Self {
        Pool { size, socks: Mutex::new([Vec::new(), Vec::new()]), stats }
    }

    /// A socket for a question to `server`: a new one while the pool is not
    /// full, else a random one (replaced by a fresh one when it has carried
    /// [`ROTATE_AFTER`] questions).
    fn pick(&self, server: SocketAddr) -> std::io::Result<Arc<PoolSock>> {
        let mut all = self.socks.lock().expect("pool lock");
        let v = &mut all[usize::from(server.is_ipv6())];
        if v.len() < self.size {
            let s = PoolSock::open(server, self.stats.clone())?;
            v.push(s.clone());
            return Ok(s);
        }
        let i = rand::rng().random_range(0..v.len());
        if v[i].uses.fetch_add(1, Ordering::Relaxed) >= ROTATE_AFTER {
            let fresh = PoolSock::open(server, self.stats.clone())?;
            std::mem::replace(&mut v[i], fresh).retire();
        }
        Ok(v[i].clone())
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // A replaced forwarder (a reload): its sockets close once their
        // questions are answered.
        for v in self.socks.get_mut().expect("pool lock").iter() {
            for s in v {
                s.retire();
            }
        }
    }
}

/// Where a question's replies go.
type ReplyTx = mpsc::Sender<Vec<u8>>;

/// One pooled socket: its receive task hands replies to the question they
/// answer, by server and ID.
struct PoolSock {
    sock: UdpSocket,
    waiters: Mutex<HashMap<(SocketAddr, u16), ReplyTx>>,
    uses: AtomicU32,
    /// Takes no new questions; closes when the last one is answered.
    retired: AtomicBool,
    /// Wakes the receive task to check whether a retired socket may close.
    wake: Notify,
}

/// A question's registration on a socket; removed on drop.
struct Waiter {
    sock: Arc<PoolSock>,
    key: (SocketAddr, u16),
    id: u16,
    rx: mpsc::Receiver<Vec<u8>>,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.sock.waiters.lock().expect("waiters lock").remove(&self.key);
        if self.sock.retired.load(Ordering::Relaxed) {
            self.sock.wake.notify_one();
        }
    }
}

impl PoolSock {
    /// A socket on a random port (the kernel's choice), with its receive task.
    fn open(server: SocketAddr, stats: Arc<Stats>) -> std::io::Result<Arc<Self>> {
        let local: SocketAddr = match server {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let std_sock = std::net::UdpSocket::bind(local)?;
        std_sock.set_nonblocking(true)?;
        let s = Arc::new(PoolSock {
            sock: UdpSocket::from_std(std_sock)?,
            waiters: Mutex::new(HashMap::new()),
            uses: AtomicU32::new(0),
            retired: AtomicBool::new(false),
            wake: Notify::new(),
        });
        stats.inc(&stats.upstream_sockets_opened);
        tokio::spawn(receive(s.clone(), stats));
        Ok(s)
    }

    fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Registers a question to `server` under a random ID free on this socket.
    fn register(self: &Arc<Self>, server: SocketAddr) -> Waiter {
        let (tx, rx) = mpsc::channel(4);
        let mut w = self.waiters.lock().expect("waiters lock");
        let mut rng = rand::rng();
        let id = loop {
            let id: u16 = rng.random();
            if !w.contains_key(&(server, id)) {
                break id;
            }
        };
        w.insert((server, id), tx);
        Waiter { sock: self.clone(), key: (server, id), id, rx }
    }
}

/// Receives on a pooled socket until it is retired and nothing waits on it.
async fn receive(s: Arc<PoolSock>, stats: Arc<Stats>) {
    let mut buf = vec![0u8; 65535];
    loop {
        tokio::select! {
            r = s.sock.recv_from(&mut buf) => {
                if let Ok((len, from)) = r {
                    let id = (len >= 2).then(|| u16::from_be_bytes([buf[0], buf[1]]));
                    let to = id.and_then(|id| s.waiters.lock().expect("waiters lock").get(&(from, id)).cloned());
                    match to {
                        Some(tx) => {
                            let _ = tx.try_send(buf[..len].to_vec());
                        }
                        // Late (after its timeout), or not ours.
                        None => stats.inc(&stats.upstream_mismatched),
                    }
                }
            }
            () = s.wake.notified() => {}
        }
        if s.retired.load(Ordering::Relaxed) && s.waiters.lock().expect("waiters lock").is_empty() {
            return;
        }
    }
}

async fn ask_tcp(
    server: SocketAddr,
    query: &[u8],
    id: u16,
    name: &Name,
    qtype: RecordType,
) -> Result<Message, UpstreamError> {
    let mut s = TcpStream::connect(server).await?;
    let mut out = Vec::with_capacity(query.len() + 2);
    out.extend_from_slice(&(query.len() as u16).to_be_bytes());
    out.extend_from_slice(query);
    s.write_all(&out).await?;
    let len = s.read_u16().await? as usize;
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).await?;
    accept(&buf, id, name, qtype).ok_or(UpstreamError::Mismatched)
}

/// A reply is ours only with our ID, the response bit, and our question.
fn accept(buf: &[u8], id: u16, name: &Name, qtype: RecordType) -> Option<Message> {
    let m = Message::from_vec(buf).ok()?;
    let q = m.queries.first()?;
    (m.metadata.id == id
        && m.metadata.message_type == MessageType::Response
        && m.queries.len() == 1
        && q.query_type() == qtype
        && q.name() == name)
        .then_some(m)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn n(s: &str) -> Name {
        Name::from_str(s).unwrap()
    }

    fn limits(forward_max: usize) -> Limits {
        Limits { timeout: Duration::from_secs(1), forward_max, sockets: 4 }
    }

    #[test]
    fn most_specific_forward_domain_wins() {
        let a: SocketAddr = "192.0.2.1:53".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:53".parse().unwrap();
        let c: SocketAddr = "192.0.2.3:53".parse().unwrap();
        let f = Forwarder::new(
            vec![a],
            vec![(n("example.org."), vec![b]), (n("lab.example.org."), vec![c])],
            limits(10),
            Arc::new(Stats::default()),
        );
        assert_eq!(f.servers_for(&n("x.lab.EXAMPLE.org.")), [c]);
        assert_eq!(f.servers_for(&n("www.example.org.")), [b]);
        assert_eq!(f.servers_for(&n("www.other.net.")), [a]);
    }

    #[test]
    fn replies_must_match_id_and_question() {
        let mut m = Message::new(7, MessageType::Response, OpCode::Query);
        m.add_query(Query::query(n("www.Example.org."), RecordType::A));
        let bytes = m.to_vec().unwrap();
        assert!(accept(&bytes, 7, &n("www.example.org."), RecordType::A).is_some());
        assert!(accept(&bytes, 8, &n("www.example.org."), RecordType::A).is_none(), "wrong id");
        assert!(accept(&bytes, 7, &n("other.example.org."), RecordType::A).is_none(), "wrong name");
        assert!(accept(&bytes, 7, &n("www.example.org."), RecordType::AAAA).is_none(), "wrong type");
        let mut q = m.clone();
        q.metadata.message_type = MessageType::Query;
        assert!(accept(&q.to_vec().unwrap(), 7, &n("www.example.org."), RecordType::A).is_none(), "not a response");
    }

    /// `forward_max` distinct questions lead; the next is refused; an
    /// identical one follows (up to FOLLOWERS_MAX); a slot comes back when
    /// its ticket goes.
    #[test]
    fn admission_is_bounded() {
        let f = Arc::new(Forwarder::new(vec![], vec![], limits(3), Arc::new(Stats::default())));
        let leads: Vec<Ticket> =
            (0..3).map(|i| f.admit(&n(&format!("q{i}.example.")), RecordType::A, false).unwrap()).collect();
        assert!(f.admit(&n("q3.example."), RecordType::A, false).is_none(), "a fourth question");
        let follows: Vec<Ticket> =
            (0..FOLLOWERS_MAX).map(|_| f.admit(&n("q0.example."), RecordType::A, false).unwrap()).collect();
        assert!(matches!(follows[0].role, Role::Follow(_)));
        assert!(f.admit(&n("Q0.example."), RecordType::A, false).is_none(), "one follower too many");
        assert_eq!(f.outstanding(), 3);
        drop(follows);
        drop(leads);
        assert_eq!(f.outstanding(), 0, "abandoned questions leave the table");
        assert!(f.admit(&n("q3.example."), RecordType::A, false).is_some(), "slots come back");
    }
}
