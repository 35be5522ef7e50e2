//! The local control socket: one JSON request per line, one JSON response
//! per line. The CLI (`coresvc status`, ...) is its client. Only root (or
//! whoever may open the socket file, mode 0600) can talk to it.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};
use tracing::{debug, warn};

use crate::dataplane::DataplaneStatus;

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
    /// Switch the authority mode live.
    Authority {
        mode: crate::config::AuthorityMode,
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
}

/// What the server asks of the agent for each request.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: Request) -> impl std::future::Future<Output = Response> + Send;
}

/// Binds the socket, refusing if another agent answers on it.
pub async fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
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
    let l = UnixListener::bind(path).with_context(|| format!("binding control socket {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

pub async fn serve<H: Handler>(listener: UnixListener, handler: Arc<H>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!("control socket accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let h = handler.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, h).await {
                debug!("control connection: {e:#}");
            }
        });
    }
}

/// Requests larger than this are refused (the CLI's are tiny).
const MAX_REQUEST: usize = 64 * 1024;

async fn connection<H: Handler>(stream: UnixStream, handler: Arc<H>) -> Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r.take(MAX_REQUEST as u64 + 1)).lines();
    while let Some(line) = lines.next_line().await? {
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(req) => handler.handle(req).await,
            Err(e) => Response::Error { message: format!("bad request: {e}") },
        };
        let mut out = serde_json::to_vec(&resp)?;
        out.push(b'\n');
        w.write_all(&out).await?;
    }
    Ok(())
}

use tokio::io::AsyncReadExt as _;

/// The client side: sends one request, returns the response.
pub async fn call(path: &Path, req: &Request) -> Result<Response> {
    let stream = UnixStream::connect(path).await.with_context(|| {
        format!(
            "cannot reach coresvc at {} (is it running? `--socket` or `--config` selects another instance)",
            path.display()
        )
    })?;
    let (r, mut w) = stream.into_split();
    let mut msg = serde_json::to_vec(req)?;
    msg.push(b'\n');
    w.write_all(&msg).await?;
    let mut lines = BufReader::new(r).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .context("coresvc did not answer within 10 s")??
        .context("coresvc closed the connection without answering")?;
    serde_json::from_str(&line).context("cannot parse coresvc's answer")
}
