//! The local control socket: one JSON request per line, one JSON response
//! per line. The CLI (`coresvc status`, ...) is its client.
//!
//! Who may talk to it: root, and the users and group of
//! `agent.control_users` / `agent.control_group`. Twice checked: the file
//! (mode 0600 root, or 0660 root:group) and the peer's credentials
//! (SO_PEERCRED, SO_PEERGROUPS) on every connection, so a socket file
//! whose mode was widened lets nobody else in. The file is never briefly
//! open: it is bound in a fresh 0700 directory beside its path, given its
//! mode and owner there, and renamed into place.
//!
//! Connections are capped per process, per uid and per class (root;
//! everyone else), a request must arrive within [`IDLE`] of the connection
//! or of the last answer, and when a cap is full the connection idle
//! longest under it gives way to the new one (one busy with a request never
//! does): a process flooding the socket only ever holds a few connections,
//! its own, and cannot keep `coresvc status` out.

use std::{
    collections::HashMap,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};
use tracing::{debug, warn};

use crate::{
    config::AgentSection,
    dataplane::DataplaneStatus,
    users::{resolve_group, resolve_user},
};

/// A request from the CLI.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    Status,
    /// Repoint a DNS service (CNAME) to another host.
    ServiceMove {
        service: String,
        host: String,
    },
    /// Re-read zone files.
    ZoneReload,
    /// The zones being served, in zone-file format (all, or one).
    ZoneExport {
        zone: Option<String>,
    },
    /// Apply the configuration file again.
    Reload,
    /// Firewall rules with their counters.
    Rules,
    /// Tracked connections.
    Flows,
    /// The DHCP leases.
    Leases,
    /// The DNS cache's entries.
    DnsCache,
    /// Empty the DNS cache.
    DnsFlush,
    /// Switch the authority mode live (to production only when the
    /// production infrastructure agrees, unless forced).
    Authority {
        mode: crate::config::AuthorityMode,
        #[serde(default)]
        force: bool,
    },
    /// Compare the production infrastructure with coresvc's records.
    AuthorityCheck,
    /// Take leases another server granted (read from a Kea memfile by the
    /// CLI, so the agent never opens a file for a caller; in batches that
    /// fit a request).
    ImportLeases {
        leases: Vec<crate::dhcp::kea::KeaLease>,
    },
}

/// A response: `ok` with a payload, or an error message for the operator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Response {
    Status(Box<Status>),
    Moved(crate::dns::Moved),
    Zones {
        zones: Vec<crate::dns::ZoneStatus>,
    },
    ZoneText {
        text: String,
    },
    Rules {
        rules: Vec<crate::dataplane::rules::RuleStatus>,
    },
    Reloaded {
        changes: Vec<String>,
    },
    Flows {
        flows: Vec<crate::dataplane::flows::Flow>,
    },
    Leases {
        leases: Vec<crate::dhcp::server::LeaseInfo>,
    },
    Cache {
        entries: Vec<crate::dns::cache::CachedAnswer>,
    },
    Flushed {
        entries: usize,
    },
    /// The steps an authority switch took.
    Switched {
        steps: Vec<String>,
    },
    Checked {
        report: Box<crate::authority::check::Report>,
    },
    Imported {
        records: usize,
        conflicts: Vec<String>,
        skipped: Vec<String>,
    },
    Error {
        message: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub uptime_secs: u64,
    pub config: PathBuf,
    pub authority: crate::config::AuthorityMode,
    pub dataplane: DataplaneStatus,
    /// Absent when DNS is disabled or inactive (production mode).
    pub dns: Option<crate::dns::DnsStatus>,
    /// What coresvc added to the system's addresses and routes.
    pub routing: crate::routing::Plan,
    /// Absent when DHCP is disabled, has nothing to serve, or in production mode.
    #[serde(default)]
    pub dhcp: Option<crate::dhcp::DhcpStatus>,
    /// Segments coresvc did not activate on at the last activation (another
    /// DHCP server answered, or another host holds the gateway address).
    #[serde(default)]
    pub refused: Vec<crate::authority::SegmentProbe>,
    /// Other DHCP servers seen while serving.
    #[serde(default)]
    pub foreign_dhcp: Vec<crate::authority::Sighting>,
    /// Absent without a `[tftp]` section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tftp: Option<crate::tftp::TftpStatus>,
    /// The control socket's connections.
    #[serde(default)]
    pub control: ControlStatus,
    /// The last periodic comparison with the production infrastructure
    /// (production mode, `authority.check_interval`).
    #[serde(default)]
    pub truth: Option<crate::authority::check::Summary>,
}

/// The control socket's counters (`coresvc status`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ControlStatus {
    /// Connections open now.
    pub active: u64,
    pub accepted: u64,
    /// Refused: the peer is not root nor a configured user or group member.
    pub refused_peer: u64,
    /// Refused: its class of connections was full of busy ones.
    pub refused_busy: u64,
    /// Closed to make room for a new connection (the longest idle).
    pub evicted: u64,
    /// Closed after sending no request for the idle timeout.
    pub idle_closed: u64,
}

#[derive(Default)]
struct Counters {
    active: AtomicU64,
    accepted: AtomicU64,
    refused_peer: AtomicU64,
    refused_busy: AtomicU64,
    evicted: AtomicU64,
    idle_closed: AtomicU64,
}

/// One control socket per process.
static COUNTERS: Counters = Counters {
    active: AtomicU64::new(0),
    accepted: AtomicU64::new(0),
    refused_peer: AtomicU64::new(0),
    refused_busy: AtomicU64::new(0),
    evicted: AtomicU64::new(0),
    idle_closed: AtomicU64::new(0),
};

/// The counters now.
pub fn stats() -> ControlStatus {
    let c = &COUNTERS;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    ControlStatus {
        active: get(&c.active),
        accepted: get(&c.accepted),
        refused_peer: get(&c.refused_peer),
        refused_busy: get(&c.refused_busy),
        evicted: get(&c.evicted),
        idle_closed: get(&c.idle_closed),
    }
}

/// Concurrent connections of one process.
pub const MAX_PER_PROCESS: usize = 4;
/// Concurrent connections of one non-root uid.
pub const MAX_PER_UID: usize = 8;
/// Concurrent connections of root.
pub const MAX_ROOT: usize = 32;
/// Concurrent connections of everyone else allowed, together.
pub const MAX_OTHERS: usize = 16;
/// A connection that sends no request this long after it opened or got
/// its last answer is closed.
pub const IDLE: Duration = Duration::from_secs(10);

/// Who may use the socket besides root (resolved `agent.control_*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    pub uids: Vec<u32>,
    pub gid: Option<u32>,
}

impl Access {
    /// From the configuration (names or numbers; `coresvc check` refused
    /// names that do not resolve).
    pub fn of(agent: &AgentSection) -> Result<Access> {
        let uids = agent
            .control_users
            .iter()
            .map(|u| resolve_user(u).ok_or_else(|| anyhow::anyhow!("agent.control_users: no user {u:?}")))
            .collect::<Result<_>>()?;
        let gid = match &agent.control_group {
            Some(g) => Some(resolve_group(g).ok_or_else(|| anyhow::anyhow!("agent.control_group: no group {g:?}"))?),
            None => None,
        };
        Ok(Access { uids, gid })
    }

    fn allows(&self, uid: u32, gid: u32, groups: &[u32]) -> bool {
        uid == 0 || self.uids.contains(&uid) || self.gid.is_some_and(|g| g == gid || groups.contains(&g))
    }
}

/// The bound control socket and who may use it.
pub struct Listener {
    listener: UnixListener,
    access: Access,
}

/// What the server asks of the agent for each request.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: Request) -> impl std::future::Future<Output = Response> + Send;
}

/// Binds the socket, refusing if another agent answers on it. The file
/// appears at its path only with its final mode and owner.
pub async fn bind(agent: &AgentSection) -> Result<Listener> {
    let path = &agent.control_socket;
    let access = Access::of(agent)?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            bail!(
                "another coresvc is running with control socket {} (stop it first, or give this one its own \
                 agent.control_socket and agent.pin_dir)",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let private = dir.join(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .with_context(|| format!("creating {}", private.display()))?;
    let placed = (|| -> Result<UnixListener> {
        let tmp = private.join("s");
        let l = UnixListener::bind(&tmp).with_context(|| format!("binding control socket {}", tmp.display()))?;
        let mode = if access.gid.is_some() { 0o660 } else { 0o600 };
        std::os::unix::fs::chown(&tmp, Some(0), Some(access.gid.unwrap_or(0)))
            .with_context(|| format!("setting the owner of {}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, path).with_context(|| format!("moving the control socket to {}", path.display()))?;
        Ok(l)
    })();
    let _ = std::fs::remove_dir_all(&private);
    Ok(Listener { listener: placed?, access })
}

/// Who a connection is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Peer {
    uid: u32,
    pid: i32,
}

struct Conn {
    peer: Peer,
    /// Waiting for a request since then; `None` while one is handled.
    idle_since: Option<Instant>,
    /// Closes the connection.
    evict: Arc<tokio::sync::Notify>,
}

/// Which connections a cap counts.
#[derive(Clone, Copy)]
enum Scope {
    Process(i32),
    Uid(u32),
    /// Root's connections (true), or everyone else's.
    Class(bool),
}

impl Scope {
    fn holds(self, p: &Peer) -> bool {
        match self {
            Scope::Process(pid) => p.pid == pid,
            Scope::Uid(uid) => p.uid == uid,
            Scope::Class(root) => (p.uid == 0) == root,
        }
    }
}

/// The open connections.
#[derive(Default)]
struct Conns {
    next: u64,
    open: HashMap<u64, Conn>,
}

impl Conns {
    /// Makes room for a connection from `peer` under each cap it meets (its
    /// process's, its uid's, its class's), each time by closing the longest
    /// idle connection within that cap: its id, or `None` when a full cap
    /// has only connections busy with a request.
    fn admit(&mut self, peer: Peer) -> Option<(u64, Arc<tokio::sync::Notify>)> {
        let root = peer.uid == 0;
        let caps = [
            (MAX_PER_PROCESS, Scope::Process(peer.pid)),
            (if root { usize::MAX } else { MAX_PER_UID }, Scope::Uid(peer.uid)),
            (if root { MAX_ROOT } else { MAX_OTHERS }, Scope::Class(root)),
        ];
        for (cap, scope) in caps {
            if self.open.values().filter(|c| scope.holds(&c.peer)).count() < cap {
                continue;
            }
            let oldest = self
                .open
                .iter()
                .filter(|(_, c)| scope.holds(&c.peer))
                .filter_map(|(id, c)| c.idle_since.map(|t| (t, *id)))
                .min()
                .map(|(_, id)| id)?;
            if let Some(c) = self.open.remove(&oldest) {
                c.evict.notify_one();
                COUNTERS.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.next += 1;
        let evict = Arc::new(tokio::sync::Notify::new());
        self.open.insert(self.next, Conn { peer, idle_since: Some(Instant::now()), evict: evict.clone() });
        Some((self.next, evict))
    }

    fn set_idle(&mut self, id: u64, idle: bool) {
        if let Some(c) = self.open.get_mut(&id) {
            c.idle_since = idle.then(Instant::now);
        }
    }
}

pub async fn serve<H: Handler>(listener: Listener, handler: Arc<H>) {
    let Listener { listener, access } = listener;
    let conns = Arc::new(Mutex::new(Conns::default()));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!("control socket accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Who is it: checked before anything is read.
        let Ok(cred) = stream.peer_cred() else { continue };
        let (uid, gid) = (cred.uid(), cred.gid());
        if !access.allows(uid, gid, &peer_groups(&stream)) {
            COUNTERS.refused_peer.fetch_add(1, Ordering::Relaxed);
            debug!(uid, gid, pid = ?cred.pid(), "control socket: refused a peer");
            refuse(
                &stream,
                &format!(
                    "refused: uid {uid} may not use coresvc's control socket (root only, or agent.control_users / \
                     agent.control_group)"
                ),
            );
            continue;
        }
        let peer = Peer { uid, pid: cred.pid().unwrap_or(0) };
        let Some((id, evict)) = conns.lock().expect("control connections lock").admit(peer) else {
            COUNTERS.refused_busy.fetch_add(1, Ordering::Relaxed);
            refuse(&stream, "refused: too many control connections busy; try again");
            continue;
        };
        COUNTERS.accepted.fetch_add(1, Ordering::Relaxed);
        COUNTERS.active.fetch_add(1, Ordering::Relaxed);
        let (h, conns) = (handler.clone(), conns.clone());
        tokio::spawn(async move {
            tokio::select! {
                r = connection(stream, h, id, &conns) => {
                    if let Err(e) = r {
                        debug!("control connection: {e:#}");
                    }
                }
                () = evict.notified() => {}
            }
            conns.lock().expect("control connections lock").open.remove(&id);
            COUNTERS.active.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// One error line, without waiting on the peer, then the close.
fn refuse(stream: &UnixStream, message: &str) {
    let mut line = serde_json::to_vec(&Response::Error { message: message.to_string() }).unwrap_or_default();
    line.push(b'\n');
    let _ = stream.try_write(&line);
}

/// The peer's supplementary groups (SO_PEERGROUPS, Linux 4.13).
fn peer_groups(stream: &UnixStream) -> Vec<u32> {
    let mut groups = vec![0 as libc::gid_t; 256];
    let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
    // SAFETY: getsockopt on a valid fd with a buffer of `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERGROUPS,
            groups.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Vec::new();
    }
    groups.truncate(len as usize / std::mem::size_of::<libc::gid_t>());
    groups
}

/// Requests larger than this are refused (the CLI's are tiny).
const MAX_REQUEST: usize = 64 * 1024;

async fn connection<H: Handler>(stream: UnixStream, handler: Arc<H>, id: u64, conns: &Mutex<Conns>) -> Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r.take(MAX_REQUEST as u64 + 1)).lines();
    loop {
        let line = match tokio::time::timeout(IDLE, lines.next_line()).await {
            Ok(line) => line?,
            Err(_) => {
                COUNTERS.idle_closed.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        };
        let Some(line) = line else { return Ok(()) };
        conns.lock().expect("control connections lock").set_idle(id, false);
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(req) => handler.handle(req).await,
            Err(e) => Response::Error { message: format!("bad request: {e}") },
        };
        let mut out = serde_json::to_vec(&resp)?;
        out.push(b'\n');
        tokio::time::timeout(IDLE, w.write_all(&out)).await.context("the client does not read its answer")??;
        conns.lock().expect("control connections lock").set_idle(id, true);
    }
}

use tokio::io::AsyncReadExt as _;

/// The client side: sends one request, returns the response.
pub async fn call(path: &Path, req: &Request) -> Result<Response> {
    let stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(
            "permission denied on {}: coresvc's control socket is for root (and agent.control_users / \
             agent.control_group)",
            path.display()
        ),
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "cannot reach coresvc at {} (is it running? `--socket` or `--config` selects another instance)",
                    path.display()
                )
            });
        }
    };
    let (r, mut w) = stream.into_split();
    let mut msg = serde_json::to_vec(req)?;
    msg.push(b'\n');
    // A refused connection is answered (why) and closed at once: the
    // answer is read even when the request could not be written.
    let written = w.write_all(&msg).await;
    let mut lines = BufReader::new(r).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .context("coresvc did not answer within 10 s")?;
    let line = match (line, written) {
        (Ok(Some(line)), _) => line,
        (_, Err(e)) => return Err(e).context("sending the request to coresvc"),
        (Err(e), Ok(())) => return Err(e.into()),
        (Ok(None), Ok(())) => bail!("coresvc closed the connection without answering"),
    };
    serde_json::from_str(&line).context("cannot parse coresvc's answer")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flooding_process_holds_only_its_own_few_connections() {
        let mut c = Conns::default();
        let flood = Peer { uid: 0, pid: 10 };
        for _ in 0..100 {
            assert!(c.admit(flood).is_some(), "the flood's newest connection replaces its oldest idle one");
        }
        assert_eq!(c.open.len(), MAX_PER_PROCESS);
        // Another root process (the CLI) gets in.
        let (cli, _) = c.admit(Peer { uid: 0, pid: 11 }).unwrap();
        assert!(c.open.contains_key(&cli));
        // Connections busy with a request are never closed: a process whose
        // connections are all busy is refused a new one.
        let ids: Vec<u64> = c.open.iter().filter(|(_, x)| x.peer.pid == 10).map(|(id, _)| *id).collect();
        for id in ids {
            c.set_idle(id, false);
        }
        assert!(c.admit(flood).is_none());
        // Many root processes: the class cap, the longest idle goes first.
        let mut c = Conns::default();
        let (first, _) = c.admit(Peer { uid: 0, pid: 1000 }).unwrap();
        for pid in 1001..1100 {
            c.admit(Peer { uid: 0, pid }).unwrap();
        }
        assert_eq!(c.open.len(), MAX_ROOT);
        assert!(!c.open.contains_key(&first));
        // Non-root: per uid, then all of them together; root is apart.
        let mut c = Conns::default();
        for pid in 0..20 {
            c.admit(Peer { uid: 500, pid }).unwrap();
        }
        assert_eq!(c.open.len(), MAX_PER_UID);
        for uid in 600..620 {
            c.admit(Peer { uid, pid: uid as i32 }).unwrap();
        }
        assert_eq!(c.open.len(), MAX_OTHERS);
        c.admit(Peer { uid: 0, pid: 1 }).unwrap();
        assert_eq!(c.open.len(), MAX_OTHERS + 1, "others never take root's room");
    }

    #[test]
    fn access_is_root_the_users_and_the_group() {
        let a = Access { uids: vec![1000], gid: Some(50) };
        assert!(a.allows(0, 0, &[]));
        assert!(a.allows(1000, 1000, &[]));
        assert!(a.allows(1001, 50, &[]));
        assert!(a.allows(1001, 1001, &[7, 50]));
        assert!(!a.allows(1001, 1001, &[7]));
        assert!(!Access::default().allows(65534, 65534, &[65534]));
    }
}
