//! The `coresvc` command line: the agent (`run`), offline checks (`check`),
//! and the operator commands that talk to a running agent.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::{
    agent::{self, Overrides},
    config::Config,
    ctl::{self, Request, Response},
    dataplane::{self, pins},
};

pub const DEFAULT_CONFIG: &str = "/etc/coresvc/coresvc.toml";

#[derive(Parser, Debug)]
#[command(
    name = "coresvc",
    version,
    about = "Core services for a management plane: DNS, DHCP, TFTP, NAT, routing, firewall"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the agent in the foreground.
    Run(RunArgs),
    /// Validate a configuration file without touching the system.
    Check {
        /// The file to check.
        file: PathBuf,
    },
    /// Show interfaces, attach modes and dataplane counters of the running agent.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Remove the pinned maps and links of a stopped agent (resets dataplane state).
    Unpin {
        /// The pin directory (default: the config's agent.pin_dir).
        #[arg(long)]
        pin_dir: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// The configuration file.
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Run inside this network namespace (a name under /run/netns), keeping
    /// the host's bpffs for the pins.
    #[arg(long)]
    pub netns: Option<String>,
    /// Override agent.pin_dir.
    #[arg(long)]
    pub pin_dir: Option<PathBuf>,
    /// Override agent.control_socket.
    #[arg(long)]
    pub control_socket: Option<PathBuf>,
    /// Override agent.state_dir.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

/// Which running agent a command talks to.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// The control socket (default: the config's agent.control_socket).
    #[arg(long, short)]
    pub socket: Option<PathBuf>,
    /// Read the control socket's path from this configuration.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

impl Target {
    pub fn socket(&self) -> Result<PathBuf> {
        if let Some(s) = &self.socket {
            return Ok(s.clone());
        }
        let cfg = self.config.as_deref().or_else(|| {
            let d = Path::new(DEFAULT_CONFIG);
            d.exists().then_some(d)
        });
        match cfg {
            Some(c) => Ok(Config::load(c)?.agent.control_socket),
            None => Ok(crate::config::AgentSection::default().control_socket),
        }
    }
}

/// Runs the CLI. `run` builds its own runtime after entering the namespace.
pub fn main(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Run(args) => run(args),
        Cmd::Check { file } => {
            let cfg = Config::load(&file)?;
            println!(
                "{}: ok ({} segment{}, {} zone{}, {} DHCP pool{}, {} static host{}, {} firewall rule{})",
                file.display(),
                cfg.segments.len(),
                plural(cfg.segments.len()),
                cfg.zones.len(),
                plural(cfg.zones.len()),
                cfg.dhcp.pools.len(),
                plural(cfg.dhcp.pools.len()),
                cfg.dhcp.hosts.len(),
                plural(cfg.dhcp.hosts.len()),
                cfg.firewall.rules.len(),
                plural(cfg.firewall.rules.len()),
            );
            Ok(())
        }
        Cmd::Status { target, json } => {
            let resp = runtime()?.block_on(ctl::call(&target.socket()?, &Request::Status))?;
            match resp {
                Response::Status(s) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&s)?);
                    } else {
                        print!("{}", render_status(&s));
                    }
                    Ok(())
                }
                Response::Error { message } => bail!("{message}"),
            }
        }
        Cmd::Unpin { pin_dir, config } => {
            let dir = match (pin_dir, config) {
                (Some(d), _) => d,
                (None, Some(c)) => Config::load(&c)?.agent.pin_dir,
                (None, None) => PathBuf::from(coresvc_maps_schema::DEFAULT_PIN_DIR),
            };
            pins::remove_all(&dir).with_context(|| format!("removing pins under {}", dir.display()))?;
            println!("removed the pins under {}", dir.display());
            Ok(())
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the tokio runtime")
}

fn run(args: RunArgs) -> Result<()> {
    // Before any thread exists: every thread inherits the namespace.
    if let Some(ns) = &args.netns {
        crate::netns::enter(ns)?;
    }
    let config = Config::load(&args.config)?;
    init_logging(&config.agent.log);
    let overrides = Overrides { pin_dir: args.pin_dir, control_socket: args.control_socket, state_dir: args.state_dir };
    runtime()?.block_on(agent::run(args.config, config, overrides))
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    use std::io::IsTerminal as _;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

pub fn render_status(s: &ctl::Status) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let d = &s.dataplane;
    let _ = writeln!(
        o,
        "coresvc {}  pid {}  up {}  authority {:?}",
        s.version,
        s.pid,
        human_duration(s.uptime_secs),
        s.authority
    );
    let _ = writeln!(o, "config   {}", s.config.display());
    let _ = writeln!(
        o,
        "pins     {} (schema {}{})",
        d.pin_dir.display(),
        d.schema_version,
        if d.adopted_maps { ", adopted from a previous run" } else { "" }
    );
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{:<12} {:>7} {:<8} {:<8} {:<8} {:>12} {:>14} {:>10} {:>10} {:>10}",
        "INTERFACE", "IFINDEX", "ROLE", "SEGMENT", "XDP", "PASS pkts", "PASS bytes", "DROP pkts", "TX pkts", "REDIRECT"
    );
    for i in &d.interfaces {
        let v = |name: &str| i.verdicts.get(name).copied().unwrap_or_default();
        let _ = writeln!(
            o,
            "{:<12} {:>7} {:<8} {:<8} {:<8} {:>12} {:>14} {:>10} {:>10} {:>10}",
            i.name,
            i.ifindex,
            format!("{:?}", i.role).to_lowercase(),
            i.segment.as_deref().unwrap_or("-"),
            format!("{:?}", i.mode).to_lowercase(),
            v("pass").packets,
            v("pass").bytes,
            v("drop").packets,
            v("tx").packets,
            v("redirect").packets,
        );
    }
    let drops: Vec<_> = d.drop_reasons.iter().filter(|r| r.packets > 0).collect();
    let _ = writeln!(o);
    if drops.is_empty() {
        let _ = writeln!(o, "drops    none");
    } else {
        let _ = writeln!(o, "{:<24} {:>10} {:>12}", "DROP REASON", "PACKETS", "BYTES");
        for r in drops {
            let _ = writeln!(o, "{:<24} {:>10} {:>12}", format!("{} ({})", r.name, r.reason), r.packets, r.bytes);
        }
    }
    if let Some(t) = &s.tftp {
        render_tftp(&mut o, t);
    }
    o
}

fn render_tftp(o: &mut String, t: &crate::tftp::TftpStatus) {
    use std::fmt::Write as _;
    let _ = writeln!(o);
    let on: Vec<String> = t.listening.iter().map(|l| format!("{} ({})", l.address, l.segment)).collect();
    let _ = writeln!(
        o,
        "tftp     {}  root {}",
        if t.serving { format!("serving on {}", on.join(", ")) } else { "not serving in this authority mode".into() },
        t.root.display()
    );
    let _ = writeln!(
        o,
        "         transfers: {} active, {} completed, {} failed, {} aborted ({} option negotiation)",
        t.active, t.completed, t.failed, t.aborted, t.option_aborts
    );
    let _ = writeln!(o, "         sent: {} bytes, {} retransmissions", t.bytes_sent, t.retransmissions);
    let refused: Vec<String> =
        t.refusals.iter().filter(|(_, n)| **n > 0).map(|(reason, n)| format!("{reason} {n}")).collect();
    let _ =
        writeln!(o, "         refused: {}", if refused.is_empty() { "none".to_string() } else { refused.join(", ") });
}

fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h}h{m}m")
    } else if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// Used by `unpin` and tests: the pins of `dir` exist.
pub fn pins_exist(dir: &Path) -> bool {
    coresvc_maps_schema::ALL_MAPS.iter().any(|m| pins::map_pin(dir, m).exists())
        || dataplane::pins::link_pin(dir, "").parent().is_some_and(|l| l.exists())
}
