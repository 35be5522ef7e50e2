//! The TFTP server: read-only boot files for PXE and iPXE clients on the
//! segments.
//!
//! * [`proto`]: the wire format (RFC 1350, RFC 2347).
//! * [`options`]: option negotiation (blksize, timeout, tsize, windowsize).
//! * [`transfer`]: one transfer as a sans-IO state machine.
//! * [`netascii`]: the netascii encoding.
//! * [`source`]: where a transfer's bytes come from (the file, or memory).
//! * [`fs`]: opening a requested name, confined to the root.
//! * `server`: the tokio wrapper: a listener on port 69 per served segment
//!   address, and a task with its own socket per transfer.
//!
//! [`Tftp`] is the handle the agent holds: it starts and stops the listeners
//! as the authority mode allows and reports counters for `coresvc status`.

pub mod fs;
pub mod netascii;
pub mod options;
pub mod proto;
mod server;
pub mod source;
pub mod transfer;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::{AbsolutePaths, AuthorityMode, Config};
use proto::ErrorCode;

/// The well-known TFTP port (RFC 1350 §4).
pub const PORT: u16 = coresvc_common::proto::port::TFTP;

#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    #[error("cannot open the tftp root {path}: {source}")]
    Root {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {address} ({interface}) for tftp: {source}")]
    Bind {
        address: SocketAddrV4,
        interface: String,
        #[source]
        source: std::io::Error,
    },
}

/// Why a request was refused: each has a counter in `coresvc status`, a log
/// line, and (except off-segment sources) a TFTP error for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Malformed,
    WriteRequest,
    UnsupportedMode,
    EmptyName,
    AbsolutePath,
    ParentComponent,
    OutsideRoot,
    NotFound,
    NotRegularFile,
    Permission,
    /// The source address is not reachable through the segment the request
    /// came in on: possibly forged, so nothing is sent to it.
    OffSegment,
    Busy,
    /// The client has `tftp.max_transfers_per_client` transfers running.
    ClientBusy,
    ServerError,
}

impl Refusal {
    pub const ALL: [Refusal; 14] = [
        Refusal::Malformed,
        Refusal::WriteRequest,
        Refusal::UnsupportedMode,
        Refusal::EmptyName,
        Refusal::AbsolutePath,
        Refusal::ParentComponent,
        Refusal::OutsideRoot,
        Refusal::NotFound,
        Refusal::NotRegularFile,
        Refusal::Permission,
        Refusal::OffSegment,
        Refusal::Busy,
        Refusal::ClientBusy,
        Refusal::ServerError,
    ];

    /// The counter's name.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::WriteRequest => "write-request",
            Refusal::UnsupportedMode => "unsupported-mode",
            Refusal::EmptyName => "empty-name",
            Refusal::AbsolutePath => "absolute-path",
            Refusal::ParentComponent => "parent-component",
            Refusal::OutsideRoot => "outside-root",
            Refusal::NotFound => "not-found",
            Refusal::NotRegularFile => "not-a-regular-file",
            Refusal::Permission => "permission",
            Refusal::OffSegment => "off-segment-source",
            Refusal::Busy => "busy",
            Refusal::ClientBusy => "client-busy",
            Refusal::ServerError => "server-error",
        }
    }

    /// The error sent to the client (RFC 1350 §5 error codes), if any.
    pub fn reply(self) -> Option<(ErrorCode, &'static str)> {
        use ErrorCode::*;
        Some(match self {
            Refusal::Malformed => (IllegalOperation, "malformed request"),
            Refusal::WriteRequest => (AccessViolation, "write requests are refused: this server is read-only"),
            Refusal::UnsupportedMode => (IllegalOperation, "unsupported transfer mode: use octet or netascii"),
            Refusal::EmptyName => (FileNotFound, "empty file name"),
            Refusal::AbsolutePath => {
                (AccessViolation, "absolute paths are refused: name the file relative to the root")
            }
            Refusal::ParentComponent => (AccessViolation, "'..' is not allowed in file names"),
            Refusal::OutsideRoot => (AccessViolation, "the path leads outside the tftp root"),
            Refusal::NotFound => (FileNotFound, "file not found"),
            Refusal::NotRegularFile => (AccessViolation, "not a regular file"),
            Refusal::Permission => (AccessViolation, "permission denied"),
            Refusal::OffSegment => return None,
            Refusal::Busy => (NotDefined, "too many transfers: try again later"),
            Refusal::ClientBusy => (NotDefined, "too many transfers from this client: try again later"),
            Refusal::ServerError => (NotDefined, "server error"),
        })
    }

    /// Requests that try to leave the root are worth a warning.
    fn suspicious(self) -> bool {
        matches!(self, Refusal::AbsolutePath | Refusal::ParentComponent | Refusal::OutsideRoot | Refusal::OffSegment)
    }

    fn index(self) -> usize {
        Refusal::ALL.iter().position(|r| *r == self).expect("every refusal is in ALL")
    }
}

impl From<fs::Denied> for Refusal {
    fn from(d: fs::Denied) -> Self {
        match d {
            fs::Denied::EmptyName => Refusal::EmptyName,
            fs::Denied::AbsolutePath => Refusal::AbsolutePath,
            fs::Denied::ParentComponent => Refusal::ParentComponent,
            fs::Denied::OutsideRoot => Refusal::OutsideRoot,
            fs::Denied::NotFound => Refusal::NotFound,
            fs::Denied::NotRegularFile => Refusal::NotRegularFile,
            fs::Denied::Permission => Refusal::Permission,
            fs::Denied::Io(_) => Refusal::ServerError,
        }
    }
}

/// Counters, shared by the listeners and transfer tasks.
#[derive(Debug, Default)]
struct Stats {
    active: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    aborted: AtomicU64,
    option_aborts: AtomicU64,
    bytes_sent: AtomicU64,
    retransmissions: AtomicU64,
    refusals: [AtomicU64; Refusal::ALL.len()],
}

/// The TFTP part of `coresvc status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TftpStatus {
    /// True while the authority mode allows serving.
    pub serving: bool,
    pub root: PathBuf,
    pub listening: Vec<Listening>,
    /// Transfers running now.
    pub active: u64,
    /// Transfers whose last block the client acknowledged.
    pub completed: u64,
    /// Transfers that timed out or could not read the file.
    pub failed: u64,
    /// Transfers the client ended with an error.
    pub aborted: u64,
    /// Of those, option-negotiation aborts (error 8 after the OACK, as EDK2
    /// does after learning the size): normal.
    pub option_aborts: u64,
    /// File bytes sent, retransmissions included.
    pub bytes_sent: u64,
    /// DATA and OACK packets sent again.
    pub retransmissions: u64,
    /// Refused requests by reason.
    pub refusals: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Listening {
    pub segment: String,
    pub interface: String,
    pub address: SocketAddrV4,
}

/// A segment TFTP may serve, with what decides which sources it answers.
#[derive(Debug, Clone)]
struct SegmentPlan {
    name: String,
    interface: String,
    gateway: Ipv4Addr,
    reserved: Option<Ipv4Addr>,
    /// The segment's network and the routes reached through it: a request
    /// from any other source is not answered.
    reaches: Vec<Ipv4Net>,
}

impl SegmentPlan {
    fn reaches(&self, ip: Ipv4Addr) -> bool {
        self.reaches.iter().any(|n| n.contains(&ip))
    }

    /// coresvc's address on the segment in `mode`.
    fn address(&self, mode: AuthorityMode) -> Option<Ipv4Addr> {
        match mode {
            AuthorityMode::Bootstrap => Some(self.gateway),
            AuthorityMode::Production => self.reserved,
        }
    }
}

/// What every part of the server shares.
struct Shared {
    root: fs::Root,
    params: transfer::Params,
    slots: Arc<tokio::sync::Semaphore>,
    stats: Stats,
    /// Refusal log lines: a flood of bad requests is counted, not logged
    /// line by line.
    refusal_log: Mutex<LogBudget>,
    /// Transfers running per client address, at most `max_per_client`.
    per_client: Mutex<BTreeMap<Ipv4Addr, u32>>,
    max_per_client: u32,
}

impl Shared {
    /// Counts a transfer for `client`, unless it has the most it may have.
    fn client_slot(self: &Arc<Self>, client: Ipv4Addr) -> Option<ClientSlot> {
        let mut m = self.per_client.lock().expect("per-client transfers");
        let n = m.entry(client).or_insert(0);
        if *n >= self.max_per_client {
            return None;
        }
        *n += 1;
        Some(ClientSlot { shared: self.clone(), client })
    }
}

/// One running transfer of a client; released when dropped.
struct ClientSlot {
    shared: Arc<Shared>,
    client: Ipv4Addr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut m = self.shared.per_client.lock().expect("per-client transfers");
        if let Some(n) = m.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.client);
            }
        }
    }
}

impl Shared {
    fn refused(&self, r: Refusal) {
        self.stats.refusals[r.index()].fetch_add(1, Relaxed);
    }
}

/// At most [`LogBudget::LINES`] lines per [`LogBudget::WINDOW`]; the rest
/// are counted, and their number is logged with the first refusal of a
/// later window (the counters in `coresvc status` have every one).
#[derive(Debug, Default)]
struct LogBudget {
    window_start: Option<std::time::Instant>,
    logged: u32,
    suppressed: u64,
}

impl LogBudget {
    const LINES: u32 = 32;
    const WINDOW: Duration = Duration::from_secs(10);

    /// Whether a line may be logged at `now`, and how many were left out
    /// in the window that just ended (to be reported first).
    fn allow(&mut self, now: std::time::Instant) -> (bool, u64) {
        let mut ended = 0;
        if self.window_start.is_none_or(|s| now >= s + Self::WINDOW) {
            ended = std::mem::take(&mut self.suppressed);
            self.window_start = Some(now);
            self.logged = 0;
        }
        if self.logged < Self::LINES {
            self.logged += 1;
            (true, ended)
        } else {
            self.suppressed += 1;
            (false, ended)
        }
    }
}

/// The running TFTP service.
pub struct Tftp {
    shared: Arc<Shared>,
    segments: Vec<SegmentPlan>,
    in_production: bool,
    listeners: Mutex<Vec<(Listening, tokio::task::JoinHandle<()>)>>,
}

impl Tftp {
    /// Prepares the service for `config` and serves if `mode` allows it.
    /// `None` without a `[tftp]` section. Needs a tokio runtime.
    pub fn start(config: &Config, mode: AuthorityMode) -> Result<Option<Tftp>, TftpError> {
        let Some(t) = &config.tftp else { return Ok(None) };
        let root_path = config.resolve_path(&t.root);
        let root = fs::Root::open(&root_path)
            .map_err(|source| TftpError::Root { path: root_path.clone(), source })?
            .absolute_from_root(t.absolute_paths == AbsolutePaths::Root);
        let segments = config
            .segments
            .iter()
            .filter(|s| t.segments.as_ref().is_none_or(|names| names.contains(&s.name)))
            .map(|s| {
                let mut reaches = vec![s.cidr.trunc()];
                reaches.extend(
                    config
                        .routes
                        .iter()
                        .filter(|r| {
                            r.via.is_some_and(|v| s.cidr.contains(&v)) || r.dev.as_deref() == Some(&s.interface)
                        })
                        .map(|r| r.prefix.trunc()),
                );
                SegmentPlan {
                    name: s.name.clone(),
                    interface: s.interface.clone(),
                    gateway: s.gateway,
                    reserved: s.reserved,
                    reaches,
                }
            })
            .collect();
        let params = transfer::Params {
            limits: options::Limits { max_blksize: t.max_blksize, max_windowsize: t.max_windowsize },
            timeout: Duration::from_secs(u64::from(t.timeout.secs())),
            retries: t.retries,
        };
        let shared = Arc::new(Shared {
            root,
            params,
            slots: Arc::new(tokio::sync::Semaphore::new(t.max_transfers as usize)),
            stats: Stats::default(),
            refusal_log: Mutex::new(LogBudget::default()),
            per_client: Mutex::new(BTreeMap::new()),
            max_per_client: t.max_transfers_per_client,
        });
        let tftp = Tftp { shared, segments, in_production: t.in_production, listeners: Mutex::new(Vec::new()) };
        tftp.apply_authority(mode)?;
        Ok(Some(tftp))
    }

    /// Serves in bootstrap mode, and in production mode only with
    /// `tftp.in_production`; stops the listeners otherwise. Transfers under
    /// way finish either way.
    pub fn apply_authority(&self, mode: AuthorityMode) -> Result<(), TftpError> {
        let serve = mode == AuthorityMode::Bootstrap || self.in_production;
        let mut listeners = self.listeners.lock().expect("tftp listeners lock");
        for (l, task) in listeners.drain(..) {
            task.abort();
            info!(address = %l.address, segment = %l.segment, "tftp: stopped listening");
        }
        if !serve {
            info!(?mode, "tftp: not serving in this authority mode (tftp.in_production = false)");
            return Ok(());
        }
        let mut started: Vec<(Listening, tokio::task::JoinHandle<()>)> = Vec::new();
        for seg in &self.segments {
            let Some(ip) = seg.address(mode) else {
                warn!(segment = %seg.name, "tftp: the segment has no reserved address; not served in production mode");
                continue;
            };
            let address = SocketAddrV4::new(ip, PORT);
            let sock = match server::listen_socket(address, &seg.interface) {
                Ok(s) => s,
                Err(source) => {
                    // All or nothing: the listeners started so far stop again.
                    for (_, task) in started {
                        task.abort();
                    }
                    return Err(TftpError::Bind { address, interface: seg.interface.clone(), source });
                }
            };
            let l = Listening { segment: seg.name.clone(), interface: seg.interface.clone(), address };
            info!(%address, segment = %seg.name, interface = %seg.interface, root = %self.shared.root.path().display(), "tftp: listening");
            let task = tokio::spawn(server::listen(self.shared.clone(), Arc::new(seg.clone()), ip, sock));
            started.push((l, task));
        }
        *listeners = started;
        Ok(())
    }

    pub fn status(&self) -> TftpStatus {
        let s = &self.shared.stats;
        let listening: Vec<Listening> =
            self.listeners.lock().expect("tftp listeners lock").iter().map(|(l, _)| l.clone()).collect();
        TftpStatus {
            serving: !listening.is_empty(),
            root: self.shared.root.path().to_path_buf(),
            listening,
            active: s.active.load(Relaxed),
            completed: s.completed.load(Relaxed),
            failed: s.failed.load(Relaxed),
            aborted: s.aborted.load(Relaxed),
            option_aborts: s.option_aborts.load(Relaxed),
            bytes_sent: s.bytes_sent.load(Relaxed),
            retransmissions: s.retransmissions.load(Relaxed),
            refusals: Refusal::ALL
                .iter()
                .map(|r| (r.name().to_string(), s.refusals[r.index()].load(Relaxed)))
                .collect(),
        }
    }
}

impl Drop for Tftp {
    fn drop(&mut self) {
        if let Ok(mut l) = self.listeners.lock() {
            for (_, task) in l.drain(..) {
                task.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_has_a_distinct_name_and_only_off_segment_is_silent() {
        let names: std::collections::HashSet<_> = Refusal::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), Refusal::ALL.len());
        for r in Refusal::ALL {
            assert_eq!(r.reply().is_none(), r == Refusal::OffSegment, "{r:?}");
            if let Some((_, m)) = r.reply() {
                assert_eq!(m, m.to_lowercase(), "lowercase messages");
            }
        }
    }

    #[test]
    fn refusal_logging_is_budgeted_and_reports_what_it_left_out() {
        let mut b = LogBudget::default();
        let t0 = std::time::Instant::now();
        for _ in 0..LogBudget::LINES {
            assert_eq!(b.allow(t0), (true, 0));
        }
        for _ in 0..5 {
            assert_eq!(b.allow(t0 + Duration::from_secs(1)), (false, 0));
        }
        assert_eq!(b.allow(t0 + LogBudget::WINDOW), (true, 5), "the next window reports the 5 left out");
        assert_eq!(b.allow(t0 + LogBudget::WINDOW), (true, 0));
    }

    #[test]
    fn traversal_refusals_are_access_violations() {
        for d in [fs::Denied::AbsolutePath, fs::Denied::ParentComponent, fs::Denied::OutsideRoot] {
            assert_eq!(Refusal::from(d).reply().unwrap().0, ErrorCode::AccessViolation);
        }
        assert_eq!(Refusal::from(fs::Denied::NotFound).reply().unwrap().0, ErrorCode::FileNotFound);
    }

    #[test]
    fn a_segment_reaches_its_network_and_its_routes() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/coresvc.toml")).unwrap();
        let text = format!("{text}\n[[route]]\nprefix = \"10.99.0.0/16\"\nvia = \"10.10.0.254\"\n");
        let dir = std::env::temp_dir().join(format!("coresvc-tftp-plan-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("tftp")).unwrap();
        std::fs::write(dir.join("c.toml"), text).unwrap();
        let cfg = Config::load(&dir.join("c.toml")).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let t = rt.block_on(async { Tftp::start(&cfg, AuthorityMode::Production).unwrap().unwrap() });
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(!t.status().serving, "the example does not serve in production mode");
        let mgmt = &t.segments[0];
        assert!(mgmt.reaches("10.10.0.77".parse().unwrap()));
        assert!(mgmt.reaches("10.99.3.4".parse().unwrap()), "behind a router on mgmt");
        assert!(!mgmt.reaches("10.20.0.50".parse().unwrap()));
        assert!(!t.segments[1].reaches("10.99.3.4".parse().unwrap()));
        assert_eq!(mgmt.address(AuthorityMode::Production), Some("10.10.0.2".parse().unwrap()));
    }
}
