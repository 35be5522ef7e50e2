//! The `coresvc` command line: the agent (`run`), offline checks (`check`),
//! and the operator commands that talk to a running agent.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::{
    agent::{self, Overrides},
    config::Config,
    ctl::{self, Request, Response},
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
pub enum DnsCmd {
    /// Cached answers (forwarded names), with their remaining lifetime.
    Cache {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// Empty the cache (forwarded answers are asked again).
    Flush {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum ModeArg {
    Bootstrap,
    Production,
    /// Compare the production infrastructure with coresvc's records; switch nothing.
    Check,
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
    /// Switch the authority mode live (bootstrap: coresvc serves DNS, DHCP
    /// and TFTP on the gateway addresses; production: dedicated
    /// infrastructure does, coresvc moves to its reserved addresses). The
    /// mode is persisted in the state directory.
    ///
    /// `production` first checks that the production DNS answers every
    /// record as coresvc would and that a DHCP server answers on each
    /// segment coresvc serves, and refuses (listing the differences) if
    /// not; then it hands the active leases over. `bootstrap` takes the
    /// production leases back before serving. `check` only compares.
    Authority {
        #[arg(value_enum)]
        mode: ModeArg,
        /// Switch to production although the check finds differences (logged).
        #[arg(long)]
        force: bool,
        /// `check`: print JSON for scripts (exit status 1 when it differs).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Apply the configuration file again (firewall, NAT, routes, DNS,
    /// DHCP); a bad file changes nothing. SIGHUP does the same.
    Reload {
        #[command(flatten)]
        target: Target,
    },
    /// Firewall rules in order, with packet and byte counters.
    Rules {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// Tracked connections (conntrack), originator first.
    Flows {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// DNS services: repoint a service to another host.
    #[command(subcommand)]
    Service(ServiceCmd),
    /// DNS zones: reload zone files, export zones.
    #[command(subcommand)]
    Zone(ZoneCmd),
    /// The DNS cache: list or flush it.
    #[command(subcommand)]
    Dns(DnsCmd),
    /// DHCP leases: address, MAC or client id, host name, expiry, segment.
    Leases {
        #[command(flatten)]
        target: Target,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Write the production infrastructure's configuration for the same
    /// records into DIR: Knot zone files and knot.conf, or a Kea DHCPv4
    /// configuration and the active leases as a Kea memfile. The data is
    /// the running agent's when it answers, else the configuration's and
    /// the state directory's.
    Export {
        #[arg(value_enum)]
        kind: ExportKind,
        dir: PathBuf,
        /// Do not ask the running agent: the configuration and the state directory only.
        #[arg(long)]
        offline: bool,
        /// Override agent.state_dir (where the lease journal and service moves are).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// knot.conf listens on this address (`addr@port`, repeatable); default: all, port 53.
        #[arg(long)]
        listen: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Take leases another server granted (a Kea memfile CSV) into coresvc's
    /// lease store: into the running agent, or, with --offline, into the
    /// journal of a stopped one.
    ImportLeases {
        file: PathBuf,
        #[arg(long)]
        offline: bool,
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[command(flatten)]
        target: Target,
    },
    /// Remove the pinned maps and links of a stopped agent (resets dataplane state).
    Unpin {
        /// The pin directory (default: the config's agent.pin_dir).
        #[arg(long)]
        pin_dir: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Run inside this network namespace (a name under /run/netns), where
        /// the programs are attached, keeping the host's bpffs for the pins.
        #[arg(long)]
        netns: Option<String>,
        /// Also when the programs are attached in another network namespace
        /// (forwarding there stays as it is, with nothing judging).
        #[arg(long)]
        force: bool,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum ExportKind {
    /// Zone files and knot.conf (and knot-secondary.conf).
    Knot,
    /// kea-dhcp4.conf and the active leases as Kea's memfile (kea-leases4.csv).
    Kea,
}

#[derive(Subcommand, Debug)]
pub enum ServiceCmd {
    /// Point SERVICE (e.g. artifacts.mgmt.deevnet.net) at HOST (a host name,
    /// relative to the service's zone or absolute). Every query after this
    /// returns gets the new answer; the move survives restarts.
    Move {
        service: String,
        host: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand, Debug)]
pub enum ZoneCmd {
    /// Re-read the zone files; a bad file is refused and the old data keeps serving.
    Reload {
        #[command(flatten)]
        target: Target,
    },
    /// Print zones in RFC 1035 zone-file format: those the running agent
    /// serves, or with `--from-config FILE` those that file defines.
    Export {
        /// Only this zone (e.g. mgmt.deevnet.net); default: all.
        zone: Option<String>,
        /// Build the zones from this configuration instead of asking the agent.
        #[arg(long)]
        from_config: Option<PathBuf>,
        #[command(flatten)]
        target: Target,
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
            Some(c) => Ok(crate::check::load(c)?.agent.control_socket),
            None => Ok(crate::config::AgentSection::default().control_socket),
        }
    }
}

/// Runs the CLI. `run` builds its own runtime after entering the namespace.
pub fn main(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Run(args) => run(args),
        Cmd::Check { file } => {
            let cfg = crate::check::load(&file)?;
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
        Cmd::Status { target, json } => match call(&target, &Request::Status)? {
            Response::Status(s) => {
                if json {
                    println!("{}", serde_json::to_string_pretty(&s)?);
                } else {
                    print!("{}", render_status(&s));
                }
                Ok(())
            }
            other => unexpected(other),
        },
        Cmd::Dns(DnsCmd::Cache { target, json }) => match call(&target, &Request::DnsCache)? {
            Response::Cache { entries } => {
                if json {
                    println!("{}", serde_json::to_string_pretty(&entries)?);
                } else {
                    println!(
                        "{:<48} {:<7} {:<3} {:<9} {:>7} {:>10}",
                        "NAME", "TYPE", "DO", "RCODE", "ANSWERS", "EXPIRES"
                    );
                    for e in entries {
                        println!(
                            "{:<48} {:<7} {:<3} {:<9} {:>7} {:>9}s",
                            e.name,
                            e.qtype,
                            if e.dnssec_ok { "yes" } else { "no" },
                            e.rcode,
                            e.answers,
                            e.expires_in_secs
                        );
                    }
                }
                Ok(())
            }
            other => unexpected(other),
        },
        Cmd::Dns(DnsCmd::Flush { target }) => match call(&target, &Request::DnsFlush)? {
            Response::Flushed { entries } => {
                println!("flushed {entries} cached answer(s)");
                Ok(())
            }
            other => unexpected(other),
        },
        Cmd::Authority { mode, force, json, target } => {
            let mode = match mode {
                ModeArg::Bootstrap => crate::config::AuthorityMode::Bootstrap,
                ModeArg::Production => crate::config::AuthorityMode::Production,
                ModeArg::Check => match call(&target, &Request::AuthorityCheck)? {
                    Response::Checked { report } => {
                        if json {
                            println!("{}", serde_json::to_string_pretty(&report)?);
                        } else {
                            print!("{}", report.render());
                        }
                        if !report.agrees() {
                            std::process::exit(1);
                        }
                        return Ok(());
                    }
                    other => return unexpected(other),
                },
            };
            match call(&target, &Request::Authority { mode, force })? {
                Response::Switched { steps } => {
                    for s in steps {
                        println!("{s}");
                    }
                    Ok(())
                }
                other => unexpected(other),
            }
        }
        Cmd::Reload { target } => match call(&target, &Request::Reload)? {
            Response::Reloaded { changes } => {
                for c in changes {
                    println!("{c}");
                }
                Ok(())
            }
            other => unexpected(other),
        },
        Cmd::Rules { target, json } => match call(&target, &Request::Rules)? {
            Response::Rules { rules } => {
                if json {
                    println!("{}", serde_json::to_string_pretty(&rules)?);
                } else {
                    println!(
                        "{:>3} {:<24} {:<12} {:<12} {:<5} {:<11} {:<6} {:>10} {:>12}  DST",
                        "#", "RULE", "FROM", "TO", "PROTO", "PORTS", "ACTION", "PACKETS", "BYTES"
                    );
                    for r in rules {
                        println!(
                            "{:>3} {:<24} {:<12} {:<12} {:<5} {:<11} {:<6} {:>10} {:>12}  {}",
                            r.index,
                            r.name,
                            r.from,
                            r.to,
                            r.proto,
                            r.ports,
                            r.action,
                            r.packets,
                            r.bytes,
                            if r.dst.is_empty() { "-".into() } else { r.dst.join(",") }
                        );
                    }
                }
                Ok(())
            }
            other => unexpected(other),
        },
        Cmd::Flows { target, json } => match call(&target, &Request::Flows)? {
            Response::Flows { flows } => {
                if json {
                    println!("{}", serde_json::to_string_pretty(&flows)?);
                } else {
                    println!(
                        "{:<5} {:<24} {:<24} {:<12} {:>6} {:>8} {:>10} {:>10}",
                        "PROTO", "SOURCE", "DESTINATION", "STATE", "IDLE", "EXPIRES", "PKTS ->", "PKTS <-"
                    );
                    for f in &flows {
                        println!(
                            "{:<5} {:<24} {:<24} {:<12} {:>5}s {:>7}s {:>10} {:>10}{}",
                            f.proto,
                            f.src,
                            f.dst,
                            f.state,
                            f.idle_secs,
                            f.expires_in_secs,
                            f.packets_orig,
                            f.packets_reply,
                            if f.local { "  (gateway)" } else { "" }
                        );
                    }
                    println!("{} connection(s)", flows.len());
                }
                Ok(())
            }
            other => unexpected(other),
        },
        Cmd::Service(ServiceCmd::Move { service, host, target }) => {
            match call(&target, &Request::ServiceMove { service, host })? {
                Response::Moved(m) => {
                    println!("{}: {} -> {}", m.service, m.from, m.to);
                    Ok(())
                }
                other => unexpected(other),
            }
        }
        Cmd::Zone(ZoneCmd::Reload { target }) => match call(&target, &Request::ZoneReload)? {
            Response::Zones { zones } => {
                for z in zones {
                    println!("{:<32} serial {:<10} {} names", z.name, z.serial, z.names);
                }
                Ok(())
            }
            other => unexpected(other),
        },
        Cmd::Zone(ZoneCmd::Export { zone, from_config, target }) => {
            let text = match from_config {
                Some(config) => {
                    let cfg = crate::check::load(&config)?;
                    let catalog = crate::dns::build::build(&cfg, 1).map_err(|errs| {
                        anyhow::anyhow!("{}", errs.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))
                    })?;
                    crate::dns::export(&catalog, zone.as_deref()).ok_or_else(|| {
                        anyhow::anyhow!("no zone {} in {}", zone.unwrap_or_default(), config.display())
                    })?
                }
                None => match call(&target, &Request::ZoneExport { zone })? {
                    Response::ZoneText { text } => text,
                    other => return unexpected(other),
                },
            };
            print!("{text}");
            Ok(())
        }
        Cmd::Leases { target, json } => match call(&target, &Request::Leases)? {
            Response::Leases { leases } => {
                if json {
                    println!("{}", serde_json::to_string_pretty(&leases)?);
                } else {
                    print!("{}", render_leases(&leases, crate::dhcp::unix_now()));
                }
                Ok(())
            }
            other => unexpected(other),
        },
        Cmd::Export { kind, dir, offline, state_dir, listen, target } => {
            export(kind, &dir, offline, state_dir, &listen, &target)
        }
        Cmd::ImportLeases { file, offline, state_dir, target } => import_leases(&file, offline, state_dir, &target),
        Cmd::Unpin { pin_dir, config, netns, force } => {
            if let Some(ns) = &netns {
                crate::netns::enter(ns)?;
            }
            let dir = match (pin_dir, config) {
                (Some(d), _) => d,
                (None, Some(c)) => crate::check::load(&c)?.agent.pin_dir,
                (None, None) => PathBuf::from(coresvc_maps_schema::DEFAULT_PIN_DIR),
            };
            for ifname in crate::dataplane::unpin(&dir, force)? {
                println!("{ifname}: IPv4 forwarding off (nothing judges its traffic any more)");
            }
            println!("removed the pins under {}", dir.display());
            Ok(())
        }
    }
}

/// The configuration a command reads: `--config`, else the default file.
fn target_config(target: &Target, state_dir: Option<PathBuf>) -> Result<Config> {
    let path = target.config.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    let mut cfg = crate::check::load(&path)?;
    if let Some(d) = state_dir {
        cfg.agent.state_dir = d;
    }
    Ok(cfg)
}

fn export(
    kind: ExportKind,
    dir: &Path,
    offline: bool,
    state_dir: Option<PathBuf>,
    listen: &[String],
    target: &Target,
) -> Result<()> {
    let cfg = target_config(target, state_dir)?;
    let socket = target.socket().ok();
    let src = crate::export::gather(cfg, socket.as_deref(), offline)?;
    let (files, warnings) = match kind {
        ExportKind::Knot => (crate::export::knot::export(&src, dir, listen)?, Vec::new()),
        ExportKind::Kea => crate::export::kea::export(&src, dir)?,
    };
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    for f in &files {
        println!("wrote {}", f.display());
    }
    match kind {
        ExportKind::Knot => println!("{} zone(s) from {}", src.zones.len(), src.from),
        ExportKind::Kea => println!("{} active lease(s) from {}", src.leases.len(), src.from),
    }
    Ok(())
}

fn import_leases(file: &Path, offline: bool, state_dir: Option<PathBuf>, target: &Target) -> Result<()> {
    let leases = crate::dhcp::kea::load_memfile(file)?;
    if offline {
        if target.socket().is_ok_and(|s| s.exists()) && call(target, &Request::Status).is_ok() {
            bail!("the agent is running: import into it without --offline (its journal is its own while it runs)");
        }
        let cfg = target_config(target, state_dir)?;
        let c = crate::dhcp::kea::to_records(&cfg, &leases, crate::dhcp::unix_now());
        for s in &c.skipped {
            eprintln!("skipped {s}");
        }
        crate::dhcp::import_offline(&cfg.agent.state_dir, &c.records)?;
        println!("imported {} lease record(s) into {}", c.records.len(), cfg.agent.state_dir.display());
        return Ok(());
    }
    // In batches that fit a control request (64 KiB).
    let all: Vec<_> = leases.into_values().collect();
    let (mut records, mut conflicts, mut skipped) = (0, Vec::new(), Vec::new());
    for batch in all.chunks(100) {
        match call(target, &Request::ImportLeases { leases: batch.to_vec() })? {
            Response::Imported { records: n, conflicts: c, skipped: s } => {
                records += n;
                conflicts.extend(c);
                skipped.extend(s);
            }
            other => return unexpected(other),
        }
    }
    for s in skipped {
        eprintln!("skipped {s}");
    }
    for c in conflicts {
        eprintln!("conflict: {c}");
    }
    println!("imported {records} lease record(s)");
    Ok(())
}

fn call(target: &Target, req: &Request) -> Result<Response> {
    match runtime()?.block_on(ctl::call(&target.socket()?, req))? {
        Response::Error { message } => bail!("{message}"),
        other => Ok(other),
    }
}

fn unexpected(r: Response) -> Result<()> {
    bail!("unexpected answer from coresvc: {r:?}")
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
    let config = crate::check::load(&args.config)?;
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
    let c = &s.control;
    let _ = writeln!(
        o,
        "control  {} open, {} accepted, refused {} (peer) {} (busy), {} evicted, {} idle closed",
        c.active, c.accepted, c.refused_peer, c.refused_busy, c.evicted, c.idle_closed
    );
    if let Some(t) = &s.truth {
        let state = match (t.differences, t.unverified) {
            (0, 0) => "the production infrastructure agrees".to_string(),
            (d, u) => format!("CONFLICTING TRUTH: {d} difference(s), {u} unverified"),
        };
        let _ = writeln!(o, "truth    {state} (check {} at {})", t.checks, t.at);
        for l in &t.lines {
            let _ = writeln!(o, "         {l}");
        }
    }
    for p in &s.refused {
        let f: Vec<String> = p.findings.iter().map(ToString::to_string).collect();
        let _ = writeln!(o, "REFUSED  segment {} ({}): {}", p.segment, p.interface, f.join("; "));
    }
    for f in &s.foreign_dhcp {
        let _ = writeln!(
            o,
            "WARNING  another DHCP server on segment {} ({}): {} (from {}), {} answer(s) seen, last {}s ago",
            f.segment,
            f.interface,
            f.server,
            f.from,
            f.answers,
            crate::dhcp::unix_now().saturating_sub(f.last_seen)
        );
    }
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
        "{:<12} {:>7} {:>4} {:<8} {:<8} {:<8} {:>12} {:>14} {:>10} {:>10} {:>10}",
        "INTERFACE",
        "IFINDEX",
        "SLOT",
        "ROLE",
        "SEGMENT",
        "XDP",
        "PASS pkts",
        "PASS bytes",
        "DROP pkts",
        "TX pkts",
        "REDIRECT"
    );
    for i in &d.interfaces {
        let v = |name: &str| i.verdicts.get(name).copied().unwrap_or_default();
        let _ = writeln!(
            o,
            "{:<12} {:>7} {:>4} {:<8} {:<8} {:<8} {:>12} {:>14} {:>10} {:>10} {:>10}",
            i.name,
            i.ifindex,
            i.stats_slot,
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
    let _ = writeln!(o, "(SLOT: the interface's counters in the pinned if_stats, keys SLOT * 8 + verdict)");
    if let Some(dns) = &s.dns {
        let c = &dns.counters;
        let _ = writeln!(o);
        let listen: Vec<String> = dns.listen.iter().map(ToString::to_string).collect();
        let _ = writeln!(o, "dns      listening on {}", listen.join(", "));
        let _ = writeln!(
            o,
            "         queries {} udp, {} tcp; {} authoritative, {} cache hits, {} forwarded ({} cached entries, {} KiB, {} evicted)",
            c.queries_udp,
            c.queries_tcp,
            c.authoritative,
            c.cache_hits,
            c.cache_misses,
            dns.cache_entries,
            dns.cache_bytes / 1024,
            dns.cache_evictions
        );
        let _ = writeln!(
            o,
            "         noerror {}, nxdomain {}, servfail {}, refused {}, formerr {}, truncated {}, dropped {}, rate-limited {} (slipped {})",
            c.noerror,
            c.nxdomain,
            c.servfail,
            c.refused,
            c.formerr,
            c.truncated,
            c.dropped_malformed,
            c.rate_limited,
            c.rate_limit_slipped
        );
        let _ = writeln!(
            o,
            "         upstream: {} queries, {} failures ({} timeouts), {} over tcp, {} mismatched replies ignored",
            c.upstream_queries, c.upstream_failures, c.upstream_timeouts, c.upstream_tcp, c.upstream_mismatched
        );
        for z in &dns.zones {
            let _ = writeln!(
                o,
                "         zone {:<30} {:<10} serial {:<10} {} names",
                z.name,
                format!("{:?}", z.kind).to_lowercase(),
                z.serial,
                z.names
            );
        }
        for (svc, to) in &dns.service_moves {
            let _ = writeln!(o, "         moved {svc} -> {to}");
        }
    }
    render_dns_cache(&mut o, &d.dns_cache, s.dns.as_ref().and_then(|d| d.xdp_cache.as_ref()));
    let fw = &d.firewall;
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "firewall {}, {} rules (generation {}), {} tracked connection(s), fast path {}",
        if fw.enabled { "on" } else { "off" },
        fw.rules,
        fw.generation,
        fw.connections,
        if fw.fast_forward { "on" } else { "off" }
    );
    if let Some(a) = d.nat.address {
        let _ = writeln!(
            o,
            "nat      masquerade as {a}, ports {}-{}, {} binding(s)",
            d.nat.port_min, d.nat.port_max, d.nat.bindings
        );
    }
    if !d.waiting.is_empty() {
        let _ = writeln!(o, "waiting for interface(s): {}", d.waiting.join(", "));
    }
    if let Some(dhcp) = &s.dhcp {
        render_dhcp(&mut o, dhcp);
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

/// The XDP answer cache: per segment hits, misses and passes by reason.
fn render_dns_cache(
    o: &mut String,
    c: &crate::dataplane::DnsCacheStatus,
    service: Option<&crate::dns::XdpCacheStatus>,
) {
    use std::fmt::Write as _;
    let entries = service.map(|x| format!(", {} entries (epoch {})", x.entries, x.epoch)).unwrap_or_default();
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "dns xdp  answer cache {}{entries}",
        if c.answering { "answering" } else { "off (dataplane.dns_cache, or DNS not serving)" }
    );
    for seg in &c.segments {
        let passes: Vec<String> =
            seg.passes.iter().filter(|(_, n)| **n > 0).map(|(reason, n)| format!("{reason} {n}")).collect();
        let _ = writeln!(
            o,
            "         segment {:<10} hits {}, misses {}, expired {}, invalidated {}, rate-limited {} (slipped {}); passed: {}",
            seg.segment,
            seg.hits,
            seg.misses,
            seg.expired,
            seg.invalidated,
            seg.rate_limited,
            seg.slipped,
            if passes.is_empty() { "none".to_string() } else { passes.join(", ") }
        );
    }
}

fn render_dhcp(o: &mut String, d: &crate::dhcp::DhcpStatus) {
    use std::fmt::Write as _;
    let c = &d.counters;
    let _ = writeln!(o);
    let _ = writeln!(o, "dhcp     serving on {}", d.interfaces.join(", "));
    let _ = writeln!(
        o,
        "         discover {}, offer {}, request {}, ack {}, nak {}, release {}, decline {}, inform {}, pool exhausted {}",
        c.discovers, c.offers, c.requests, c.acks, c.naks, c.releases, c.declines, c.informs, c.pool_exhausted
    );
    if !c.drops.is_empty() {
        let drops: Vec<String> = c.drops.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(o, "         dropped: {}", drops.join(", "));
    }
    for s in &d.segments {
        let _ = writeln!(
            o,
            "         segment {:<10} {:<8} pool {:>6}  bound {:>6}  offered {:>4}  declined {:>4}  static {}",
            s.segment, s.interface, s.pool_size, s.bound, s.offered, s.declined, s.static_hosts
        );
    }
    let j = &d.journal;
    let _ = writeln!(
        o,
        "         journal {} ({} bytes): {} records in {} commits, {} compactions, {} failures",
        j.path.display(),
        j.bytes,
        j.records,
        j.commits,
        j.compactions,
        j.failures
    );
    if let Some(e) = &j.broken {
        let _ = writeln!(o, "         JOURNAL BROKEN, DHCP answers nothing: {e}");
    }
}

/// `coresvc leases` as a table.
pub fn render_leases(leases: &[crate::dhcp::server::LeaseInfo], now: u64) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<16} {:<9} {:<18} {:<24} {:<20} {:<12} SEGMENT",
        "ADDRESS", "STATE", "MAC", "CLIENT-ID", "HOSTNAME", "EXPIRES"
    );
    for l in leases {
        let expires =
            if l.expires > now { format!("in {}", human_duration(l.expires - now)) } else { "expired".into() };
        let _ = writeln!(
            o,
            "{:<16} {:<9} {:<18} {:<24} {:<20} {:<12} {}",
            l.address.to_string(),
            format!("{:?}", l.state).to_lowercase(),
            l.mac,
            l.client_id.as_deref().unwrap_or("-"),
            l.hostname.as_deref().unwrap_or("-"),
            expires,
            l.segment
        );
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
