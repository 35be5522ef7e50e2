//! The DHCPv4 service: the sans-IO server (`server.rs`) behind one UDP
//! socket per served segment interface, the lease journal (`journal.rs`)
//! behind one commit thread, and DNS registration of client names.
//!
//! Durability with group commit: a receive task runs the state machine
//! under a lock and, while still holding it, queues the outcome's journal
//! records with its reply on the commit thread's channel (so the journal's
//! order is the state machine's order). The commit thread takes everything
//! queued, appends it with one `fdatasync`, and only then sends the replies
//! and applies the DNS effects. Replies that change no lease (OFFER, NAK,
//! INFORM) go out at once. Compaction is queued the same way, with a
//! snapshot taken under the lock, so it is ordered with the records.

pub mod journal;
pub mod kea;
pub mod leases;
pub mod options;
pub mod pxe;
pub mod server;

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket as StdUdpSocket},
    os::fd::AsRawFd as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use tokio::{net::UdpSocket, task::JoinHandle};
use tracing::{debug, error, info};

use self::{
    journal::{Journal, LeaseRecord},
    server::{Counters, Dest, Effect, LeaseInfo, Reply, SegmentUse, Server},
};
use crate::{
    config::{AuthorityMode, Config},
    dns::{Dns, NameChange},
};

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;

/// `coresvc status`'s DHCP part.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DhcpStatus {
    pub interfaces: Vec<String>,
    pub segments: Vec<SegmentUse>,
    pub counters: Counters,
    pub journal: JournalStatus,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JournalStatus {
    pub path: std::path::PathBuf,
    pub bytes: u64,
    /// Group commits (fdatasync calls) and the records they made durable.
    pub commits: u64,
    pub records: u64,
    pub compactions: u64,
    /// Commits that failed (their ACKs were never sent).
    pub failures: u64,
    /// Set when a failed commit could not be cut back out of the journal:
    /// DHCP answers nothing more until a restart (fail-stop). The error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken: Option<String>,
}

#[derive(Default)]
struct JournalStats {
    bytes: AtomicU64,
    commits: AtomicU64,
    records: AtomicU64,
    compactions: AtomicU64,
    failures: AtomicU64,
    broken: std::sync::atomic::AtomicBool,
    broken_error: Mutex<Option<String>>,
}

/// Work for the commit thread, in state-machine order.
enum Job {
    Commit {
        records: Vec<LeaseRecord>,
        reply: Option<Reply>,
        effects: Vec<Effect>,
    },
    Compact(Vec<LeaseRecord>),
    /// Make everything queued durable, then end (the service stops).
    Stop,
    /// Make everything queued durable, then say whether it is.
    Barrier(tokio::sync::oneshot::Sender<bool>),
}

struct Core {
    server: Server,
    jobs: mpsc::Sender<Job>,
    since_compaction: u64,
    stats: Arc<JournalStats>,
}

impl Core {
    /// Runs one datagram through the state machine; returns a reply to send
    /// now (one that needs nothing durable).
    fn handle(&mut self, segment: usize, source: Ipv4Addr, bytes: &[u8], now: u64) -> Option<Reply> {
        if self.stats.broken.load(Ordering::Relaxed) {
            // Fail-stop: not even an OFFER, which no ACK could follow.
            self.server.refuse(server::Drop::JournalBroken);
            return None;
        }
        let out = self.server.handle(Some(segment), source, bytes, now);
        if out.records.is_empty() && out.effects.is_empty() {
            return out.reply;
        }
        self.since_compaction += out.records.len() as u64;
        let _ = self.jobs.send(Job::Commit { records: out.records, reply: out.reply, effects: out.effects });
        // Compact when the journal holds much more than the table.
        if self.since_compaction > (2 * self.server.leases.len() as u64).max(20_000) {
            self.since_compaction = 0;
            let _ = self.jobs.send(Job::Compact(self.server.snapshot()));
        }
        None
    }
}

pub struct Dhcp {
    core: Arc<Mutex<Core>>,
    interfaces: Vec<String>,
    journal_path: std::path::PathBuf,
    stats: Arc<JournalStats>,
    tasks: Vec<JoinHandle<()>>,
    committer: Option<std::thread::JoinHandle<()>>,
    /// Applies the DNS effects; ends after the committer (which holds its channel).
    names: Option<std::thread::JoinHandle<()>>,
}

/// Takes leases into a running DHCP service (without holding it).
pub struct Importer {
    core: Arc<Mutex<Core>>,
}

impl Importer {
    /// Takes leases another server granted into the running table and the
    /// journal (see `Server::import`); returns once they are durable, with
    /// the records taken and the conflicts found.
    pub async fn import(&self, records: Vec<LeaseRecord>) -> Result<(usize, Vec<String>)> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (n, conflicts) = {
            let mut c = self.core.lock().expect("dhcp lock");
            let (records, effects, conflicts) = c.server.import(records, unix_now());
            let n = records.len();
            let _ = c.jobs.send(Job::Commit { records, reply: None, effects });
            let _ = c.jobs.send(Job::Barrier(tx));
            (n, conflicts)
        };
        match rx.await {
            Ok(true) => Ok((n, conflicts)),
            Ok(false) => anyhow::bail!(
                "the imported leases are in the running table but could not be made durable (see the journal error \
                 in `coresvc status`); import them again once the disk is writable"
            ),
            Err(_) => anyhow::bail!("DHCP stopped before the imported leases were made durable"),
        }
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Dhcp {
    /// Opens the lease journal and serves every segment that has a pool or
    /// static hosts, unless DHCP is disabled or the authority mode is
    /// production (dedicated infrastructure answers then). Segments named in
    /// `refused` are not served (another authority answers there).
    pub fn start(cfg: &Config, dns: Option<Arc<Dns>>, refused: &[String]) -> Result<Option<Dhcp>> {
        if !cfg.dhcp.enabled {
            info!("dhcp: disabled in the configuration");
            return Ok(None);
        }
        if cfg.agent.authority == AuthorityMode::Production {
            info!("dhcp: inactive in production mode");
            return Ok(None);
        }
        let (journal, records) = Journal::open(&cfg.agent.state_dir)?;
        let now = unix_now();
        let n = records.len();
        let mut server = Server::new(cfg, records);
        server.expire(now);
        let served: Vec<usize> = (0..server.segments.len())
            .filter(|&i| server.segments[i].served)
            .filter(|&i| !refused.iter().any(|r| cfg.segments.get(i).is_some_and(|s| &s.name == r)))
            .collect();
        if served.is_empty() {
            info!("dhcp: no segment has a pool or static hosts; not serving");
            return Ok(None);
        }
        if let Some(dns) = &dns {
            apply(dns, &server.registrations(now));
        }
        info!("dhcp: {} leases from {} ({n} records)", server.leases.len(), journal.path().display());
        let mut send = HashMap::new();
        let mut recv = Vec::new();
        for &i in &served {
            let iface = server.segments[i].interface.clone();
            let sock = bind(&iface)?;
            send.insert(
                i,
                (sock.try_clone().with_context(|| format!("dhcp: cloning the socket of {iface}"))?, iface.clone()),
            );
            recv.push((i, iface, UdpSocket::from_std(sock).context("dhcp: registering a socket with tokio")?));
        }
        let sender = Arc::new(Sender { sockets: send });
        let stats = Arc::new(JournalStats::default());
        stats.bytes.store(journal.len(), Ordering::Relaxed);
        let journal_path = journal.path().to_path_buf();
        let (names_tx, names_thread) = match dns {
            Some(dns) => {
                let (tx, rx) = mpsc::channel();
                let t = std::thread::Builder::new()
                    .name("dhcp-names".into())
                    .spawn(move || names(&dns, rx))
                    .context("dhcp: starting the name registration thread")?;
                (Some(tx), Some(t))
            }
            None => (None, None),
        };
        let (jobs, rx) = mpsc::channel();
        let committer = {
            let (sender, stats) = (sender.clone(), stats.clone());
            std::thread::Builder::new()
                .name("dhcp-journal".into())
                .spawn(move || committer(journal, rx, &sender, names_tx, &stats))
                .context("dhcp: starting the journal thread")?
        };
        let core = Arc::new(Mutex::new(Core { server, jobs, since_compaction: 0, stats: stats.clone() }));
        let mut tasks = Vec::new();
        let interfaces = recv.iter().map(|(_, i, _)| i.clone()).collect();
        for (seg, iface, sock) in recv {
            let (core, sender) = (core.clone(), sender.clone());
            // coresvc's own probes for other servers (authority.rs) come from
            // this interface's MAC: not a client.
            let own_mac = crate::iface::iface_mac(&iface).ok();
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 1500];
                loop {
                    let (n, source) = match sock.recv_from(&mut buf).await {
                        Ok((n, std::net::SocketAddr::V4(from))) => (n, *from.ip()),
                        Ok(_) => continue,
                        Err(e) => {
                            debug!("dhcp: receive on {iface}: {e}");
                            continue;
                        }
                    };
                    if n >= 34 && buf[2] == 6 && own_mac.is_some_and(|m| buf[28..34] == m) {
                        continue;
                    }
                    let reply = core.lock().expect("dhcp lock").handle(seg, source, &buf[..n], unix_now());
                    if let Some(r) = reply {
                        sender.send(&r);
                    }
                }
            }));
        }
        {
            let core = core.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    let mut c = core.lock().expect("dhcp lock");
                    let effects = c.server.expire(unix_now());
                    if !effects.is_empty() {
                        let _ = c.jobs.send(Job::Commit { records: Vec::new(), reply: None, effects });
                    }
                }
            }));
        }
        info!(
            "dhcp: serving on {}",
            served.iter().map(|&i| sender.sockets[&i].1.as_str()).collect::<Vec<_>>().join(", ")
        );
        Ok(Some(Dhcp { core, interfaces, journal_path, stats, tasks, committer: Some(committer), names: names_thread }))
    }

    pub fn status(&self) -> DhcpStatus {
        let c = self.core.lock().expect("dhcp lock");
        let s = &self.stats;
        DhcpStatus {
            interfaces: self.interfaces.clone(),
            segments: c.server.usage(unix_now()),
            counters: c.server.counters.clone(),
            journal: JournalStatus {
                path: self.journal_path.clone(),
                bytes: s.bytes.load(Ordering::Relaxed),
                commits: s.commits.load(Ordering::Relaxed),
                records: s.records.load(Ordering::Relaxed),
                compactions: s.compactions.load(Ordering::Relaxed),
                failures: s.failures.load(Ordering::Relaxed),
                broken: s.broken_error.lock().expect("journal error lock").clone(),
            },
        }
    }

    /// The interfaces served.
    pub fn interfaces(&self) -> &[String] {
        &self.interfaces
    }

    pub fn leases(&self) -> Vec<LeaseInfo> {
        self.core.lock().expect("dhcp lock").server.list()
    }

    /// A handle that takes leases another server granted (see [`Importer::import`]).
    pub fn importer(&self) -> Importer {
        Importer { core: self.core.clone() }
    }

    /// Stops serving; returns once every lease granted so far is durable
    /// (the journal can be opened again at once).
    pub fn stop(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        let _ = self.core.lock().expect("dhcp lock").jobs.send(Job::Stop);
        if let Some(t) = self.committer.take() {
            let _ = t.join();
        }
        if let Some(t) = self.names.take() {
            let _ = t.join();
        }
        info!("dhcp: stopped");
    }
}

/// UDP port 67 on `iface` only (SO_BINDTODEVICE), allowed to broadcast.
fn bind(iface: &str) -> Result<StdUdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).context("dhcp: creating a UDP socket")?;
    s.set_reuse_address(true)?;
    s.bind_device(Some(iface.as_bytes())).with_context(|| format!("dhcp: binding to interface {iface}"))?;
    s.set_broadcast(true)?;
    s.set_nonblocking(true)?;
    // Room for bursts (a rack powering on, perfdhcp): the privileged forms
    // pass net.core.rmem_max; without CAP_NET_ADMIN the kernel's cap applies.
    for (force, plain) in [(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF), (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)] {
        if setsockopt_int(&s, force, SOCKET_BUFFER).is_err() {
            let _ = setsockopt_int(&s, plain, SOCKET_BUFFER);
        }
    }
    let addr = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, SERVER_PORT);
    s.bind(&addr.into())
        .with_context(|| format!("dhcp: binding 0.0.0.0:67 on {iface} (another DHCP server running?)"))?;
    Ok(s.into())
}

const SOCKET_BUFFER: libc::c_int = 4 << 20;

fn setsockopt_int(s: &socket2::Socket, opt: libc::c_int, v: libc::c_int) -> std::io::Result<()> {
    // SAFETY: setsockopt with a valid fd and a c_int value of the right size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Sends replies on the socket of the reply's segment.
struct Sender {
    sockets: HashMap<usize, (StdUdpSocket, String)>,
}

impl Sender {
    fn send(&self, r: &Reply) {
        let Some((sock, iface)) = self.sockets.get(&r.segment) else { return };
        let to = match &r.dest {
            Dest::Relay(a) => SocketAddrV4::new(*a, SERVER_PORT),
            Dest::Client(a) => SocketAddrV4::new(*a, CLIENT_PORT),
            Dest::Broadcast => SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT),
            // RFC 2131 §4.1: unicast to a client without an address needs a
            // neighbour entry for it (as dnsmasq and ISC dhcpd do); broadcast if that fails.
            Dest::Hardware { ip, hw } => match set_neighbour(sock, iface, *ip, hw) {
                Ok(()) => SocketAddrV4::new(*ip, CLIENT_PORT),
                Err(e) => {
                    debug!("dhcp: no neighbour entry for {ip} on {iface} ({e}); broadcasting");
                    SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
                }
            },
        };
        // A full send buffer loses the reply; the client retransmits.
        if let Err(e) = sock.send_to(&r.bytes, to) {
            debug!("dhcp: sending to {to} on {iface}: {e}");
        }
    }
}

/// Adds an ARP entry `ip` → `hw` on `iface` (SIOCSARP).
fn set_neighbour(sock: &StdUdpSocket, iface: &str, ip: Ipv4Addr, hw: &[u8; 6]) -> std::io::Result<()> {
    // SAFETY: zeroed arpreq is a valid value; the sockaddr casts follow the
    // kernel's layout for SIOCSARP (sockaddr_in in arp_pa, the hardware
    // address in arp_ha.sa_data).
    unsafe {
        let mut req: libc::arpreq = std::mem::zeroed();
        let pa = &mut req.arp_pa as *mut libc::sockaddr as *mut libc::sockaddr_in;
        (*pa).sin_family = libc::AF_INET as libc::sa_family_t;
        (*pa).sin_addr.s_addr = u32::from_ne_bytes(ip.octets());
        req.arp_ha.sa_family = libc::ARPHRD_ETHER;
        for (d, s) in req.arp_ha.sa_data.iter_mut().zip(hw) {
            *d = *s as libc::c_char;
        }
        req.arp_flags = libc::ATF_COM;
        for (d, s) in req.arp_dev.iter_mut().zip(iface.bytes().take(15)) {
            *d = s as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSARP, &req) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The commit thread: group commit (see the module doc). The DNS effects
/// of a commit go, after its replies, to the names thread (`names`), so a
/// registration's cost never delays an ACK.
fn committer(
    mut journal: Journal,
    rx: mpsc::Receiver<Job>,
    sender: &Sender,
    names: Option<mpsc::Sender<Vec<Effect>>>,
    stats: &JournalStats,
) {
    let mut records = Vec::new();
    let mut done: Vec<(Option<Reply>, Vec<Effect>)> = Vec::new();
    let flush =
        |journal: &mut Journal, records: &mut Vec<LeaseRecord>, done: &mut Vec<(Option<Reply>, Vec<Effect>)>| -> bool {
            let mut durable = !journal.is_broken();
            if !records.is_empty() {
                match journal.append(records) {
                    Ok(()) => {
                        stats.commits.store(journal.commits, Ordering::Relaxed);
                        stats.records.fetch_add(records.len() as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        stats.failures.fetch_add(1, Ordering::Relaxed);
                        durable = false;
                        if journal.is_broken() {
                            if !stats.broken.swap(true, Ordering::Relaxed) {
                                error!("dhcp: {e}; DHCP stops answering (fail-stop)");
                                *stats.broken_error.lock().expect("journal error lock") = Some(e.to_string());
                            }
                        } else {
                            error!(
                                "dhcp: {e}; the ACKs of this commit are not sent (the journal was cut back to its \
                                 last good record; clients retry)"
                            );
                        }
                    }
                }
                stats.bytes.store(journal.len(), Ordering::Relaxed);
                records.clear();
            }
            // DNS follows the lease table, durable or not; only the replies wait.
            let mut effects = Vec::new();
            for (reply, e) in done.drain(..) {
                if let Some(r) = reply.filter(|_| durable) {
                    sender.send(&r);
                }
                effects.extend(e);
            }
            if let Some(names) = names.as_ref().filter(|_| !effects.is_empty()) {
                let _ = names.send(effects);
            }
            durable
        };
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(job) = next.take().or_else(|| rx.try_recv().ok()) {
            match job {
                Job::Commit { records: r, reply, effects } => {
                    records.extend(r);
                    done.push((reply, effects));
                }
                Job::Compact(live) => {
                    flush(&mut journal, &mut records, &mut done);
                    match journal.compact(&live) {
                        Ok(()) => {
                            stats.compactions.fetch_add(1, Ordering::Relaxed);
                            stats.bytes.store(journal.len(), Ordering::Relaxed);
                            info!("dhcp: lease journal compacted to {} records", live.len());
                        }
                        Err(e) => error!("dhcp: compaction failed, the journal keeps growing: {e}"),
                    }
                }
                Job::Stop => {
                    flush(&mut journal, &mut records, &mut done);
                    return;
                }
                Job::Barrier(tx) => {
                    let durable = flush(&mut journal, &mut records, &mut done);
                    let _ = tx.send(durable);
                }
            }
            if records.len() >= 8192 {
                break;
            }
        }
        flush(&mut journal, &mut records, &mut done);
    }
}

/// Appends `records` to the lease journal in `state_dir` and makes them
/// durable, while DHCP is not running (nothing else writes the journal
/// then): leases taken back from the production infrastructure before
/// coresvc serves again. The last record for an address wins, so each
/// replaces what the journal had for its address.
pub fn import_offline(state_dir: &std::path::Path, records: &[LeaseRecord]) -> Result<()> {
    let (mut journal, _) = Journal::open(state_dir)?;
    journal.append(records)?;
    Ok(())
}

/// The names thread: applies the DNS effects of every commit queued since
/// its last change as one change (one copy of each zone touched).
fn names(dns: &Dns, rx: mpsc::Receiver<Vec<Effect>>) {
    while let Ok(mut batch) = rx.recv() {
        while let Ok(more) = rx.try_recv() {
            batch.extend(more);
        }
        apply(dns, &batch);
    }
}

/// Applies registration effects to the DNS service, in order, as one
/// change of its catalog (`Dns::change_names`).
fn apply(dns: &Dns, effects: &[Effect]) {
    let changes: Vec<NameChange> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Register { zone, hostname, addr } => {
                Some(NameChange::Register { zone: zone.clone(), hostname: hostname.clone(), addr: *addr })
            }
            Effect::Unregister { zone, hostname, addr } => {
                let n = hickory_proto::rr::Name::from_ascii(format!("{hostname}.{zone}.")).ok()?;
                Some(NameChange::Unregister { fqdn: n.to_lowercase(), addr: *addr })
            }
        })
        .collect();
    if changes.is_empty() {
        return;
    }
    for (result, change) in dns.change_names(changes.clone()).into_iter().zip(&changes) {
        if let (Err(err), NameChange::Register { zone, hostname, addr }) = (result, change) {
            info!(%addr, "dhcp: client name {hostname}.{zone} not registered: {err}");
        }
    }
}

#[cfg(test)]
mod tests;
