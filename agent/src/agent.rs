//! `coresvc run`: the long-running agent. Loads the configuration, brings up
//! the dataplane, serves the control socket, and on SIGINT/SIGTERM detaches
//! cleanly (maps stay pinned for the next start). On SIGKILL the pinned links
//! keep the programs running until a new agent adopts them.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::{Context as _, Result};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};
use tracing::{error, info};

use crate::{
    config::Config,
    ctl::{self, Request, Response},
    dataplane::{self, Dataplane},
    tftp::Tftp,
};

/// Overrides of the configuration's agent paths (the lab gives each instance its own).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub pin_dir: Option<PathBuf>,
    pub control_socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
}

impl Overrides {
    pub fn apply(&self, cfg: &mut Config) {
        if let Some(p) = &self.pin_dir {
            cfg.agent.pin_dir = p.clone();
        }
        if let Some(p) = &self.control_socket {
            cfg.agent.control_socket = p.clone();
        }
        if let Some(p) = &self.state_dir {
            cfg.agent.state_dir = p.clone();
        }
    }
}

struct Agent {
    started: Instant,
    config_path: PathBuf,
    config: Config,
    dataplane: Mutex<Option<Dataplane>>,
    tftp: Option<Tftp>,
}

impl ctl::Handler for Agent {
    async fn handle(&self, req: Request) -> Response {
        match req {
            Request::Status => {
                let dp = self.dataplane.lock().expect("dataplane lock");
                let Some(dp) = dp.as_ref() else {
                    return Response::Error { message: "the dataplane is shutting down".into() };
                };
                match dp.status() {
                    Ok(d) => Response::Status(Box::new(ctl::Status {
                        version: env!("CARGO_PKG_VERSION").to_string(),
                        pid: std::process::id(),
                        uptime_secs: self.started.elapsed().as_secs(),
                        config: self.config_path.clone(),
                        authority: self.config.agent.authority,
                        dataplane: d,
                        tftp: self.tftp.as_ref().map(Tftp::status),
                    })),
                    Err(e) => Response::Error { message: format!("reading counters: {e:#}") },
                }
            }
        }
    }
}

pub async fn run(config_path: PathBuf, mut config: Config, overrides: Overrides) -> Result<()> {
    overrides.apply(&mut config);
    dataplane::ensure_supported()?;
    std::fs::create_dir_all(&config.agent.state_dir)
        .with_context(|| format!("creating state directory {}", config.agent.state_dir.display()))?;
    // The control socket first: it refuses to start a second agent on the
    // same socket before that one's dataplane is touched.
    let listener = ctl::bind(&config.agent.control_socket).await?;
    let level = dataplane::aya_level(&config.agent.log);
    let mut dp = Dataplane::start(&config, &config.agent.pin_dir, level)?;
    if let Some(logger) = dp.logger.take() {
        // SAFETY: the logger owns its ring buffer's fd, which stays open for
        // as long as the AsyncFd holds the logger.
        let mut fd = unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("registering the eBPF log buffer: {e}"))?;
        tokio::spawn(async move {
            loop {
                let Ok(mut guard) = fd.readable_mut().await else { break };
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        });
    }
    // ---- services, after the dataplane is up -------------------------------
    // TFTP (issue 5): boot files on the segments, while the authority mode allows.
    let tftp = match Tftp::start(&config, config.agent.authority) {
        Ok(t) => t,
        Err(e) => {
            dp.detach();
            return Err(anyhow::Error::new(e).context("starting the tftp server"));
        }
    };
    // ---- end of services ----------------------------------------------------
    let agent = Arc::new(Agent {
        started: Instant::now(),
        config_path,
        config: config.clone(),
        dataplane: Mutex::new(Some(dp)),
        tftp,
    });
    let server = tokio::spawn(ctl::serve(listener, agent.clone()));
    info!(socket = %config.agent.control_socket.display(), "coresvc {} running", env!("CARGO_PKG_VERSION"));

    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: stopping"),
        _ = int.recv() => info!("SIGINT: stopping"),
    }
    server.abort();
    let _ = std::fs::remove_file(&config.agent.control_socket);
    let dp = agent.dataplane.lock().expect("dataplane lock").take();
    if let Some(dp) = dp {
        dp.detach();
    } else {
        error!("dataplane already gone at shutdown");
    }
    info!("stopped; maps stay pinned in {}", config.agent.pin_dir.display());
    Ok(())
}
