//! `cargo xtask lab up|down|exec|status` and `cargo xtask run` (the lab in
//! the foreground).

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;
use coresvc_lab::{AgentOpts, Lab, LabPaths};

use crate::{build_release, util::step};

/// The user lab's prefix: namespaces are `coresvc-gw`, `coresvc-provisioner`, ...
const PREFIX: &str = "coresvc";

#[derive(Subcommand)]
pub enum LabCmd {
    /// Create the namespaces and links and start coresvc in the gateway, in the background.
    Up {
        /// The coresvc configuration (default: examples/coresvc.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Stop coresvc and remove every namespace, link and pin of the lab.
    Down,
    /// Run a command on a lab node: `cargo xtask lab exec provisioner -- ping 10.20.0.50`.
    Exec {
        node: String,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// `coresvc status` of the lab's agent.
    Status,
}

/// The user lab uses coresvc's default control socket and pin directory, so
/// `coresvc status` and `bpftool map dump pinned /sys/fs/bpf/coresvc/...`
/// work without options; its state lives under /run/coresvc-lab.
fn paths() -> LabPaths {
    let mut p = LabPaths::private(PREFIX);
    p.pin_dir = PathBuf::from("/sys/fs/bpf/coresvc");
    p.socket = PathBuf::from("/run/coresvc/control.sock");
    p
}

fn exists() -> bool {
    std::path::Path::new("/run/netns").join(format!("{PREFIX}-gw")).exists()
}

pub fn main(cmd: LabCmd) -> Result<()> {
    match cmd {
        LabCmd::Up { config } => {
            let bin = build_release()?;
            let lab = up(bin, config, false)?;
            tips(&lab);
            lab.persist();
            Ok(())
        }
        LabCmd::Down => {
            if !exists() && !paths().run_dir.exists() {
                step("lab", "no lab is up");
                return Ok(());
            }
            Lab::existing(PREFIX, paths())?.down()?;
            step("lab", "down: namespaces, links and pins removed");
            Ok(())
        }
        LabCmd::Exec { node, cmd } => {
            let lab = Lab::existing(PREFIX, paths())?;
            if !lab.topo.nodes.iter().any(|n| n.name == node) {
                let names: Vec<&str> = lab.topo.nodes.iter().map(|n| n.name.as_str()).collect();
                bail!("no node {node:?} in the lab; nodes: {}", names.join(", "));
            }
            if !exists() {
                bail!("the lab is not up: `cargo xtask lab up`");
            }
            let st = lab.cmd(&node, &cmd).status().context("running the command")?;
            std::process::exit(st.code().unwrap_or(1));
        }
        LabCmd::Status => {
            let bin = crate::release_bin();
            let st = Command::new(bin).args(["status", "--socket"]).arg(paths().socket).status()?;
            std::process::exit(st.code().unwrap_or(1));
        }
    }
}

fn up(bin: PathBuf, config: Option<PathBuf>, foreground: bool) -> Result<Lab> {
    if exists() {
        bail!("a lab is already up (namespace {PREFIX}-gw exists): `cargo xtask lab down` first");
    }
    // SAFETY: setting an environment variable before any other thread runs.
    unsafe { std::env::set_var("CORESVC_BIN", &bin) };
    let config = config.unwrap_or_else(coresvc_lab::default_config);
    let config = config.canonicalize().with_context(|| format!("config {}", config.display()))?;
    step("lab", &format!("creating namespaces and links ({PREFIX}-*)"));
    let mut lab = Lab::up(PREFIX, paths())?;
    step("lab", &format!("starting coresvc in {} with {}", lab.gw_ns(), config.display()));
    let mut opts = AgentOpts::new(&config);
    opts.foreground = foreground;
    opts.detach = !foreground;
    lab.start_agent(&opts)?;
    Ok(lab)
}

fn tips(lab: &Lab) {
    let rel = crate::release_bin();
    let rel = rel.strip_prefix(crate::workspace_root()).unwrap_or(&rel).display().to_string();
    let nodes: Vec<String> = lab.topo.nodes.iter().map(|n| format!("{} ({})", n.name, n.role)).collect();
    eprintln!(
        "\nThe lab is up. Nodes (network namespaces {PREFIX}-<node>):\n  {}\n\nTry:\n  \
         cargo xtask lab exec provisioner -- ping -c 3 10.20.0.50     # across segments, through the gateway\n  \
         cargo xtask lab exec dvnt-client -- curl -o /tmp/r.txt tftp://10.20.0.1/README.txt  # TFTP (examples/tftp)\n  \
         {rel} status                                  # interfaces, XDP mode, counters\n  \
         bpftool map dump pinned /sys/fs/bpf/coresvc/if_stats          # the same counters (key SLOT * 8 + verdict)\n  \
         bpftool map dump pinned /sys/fs/bpf/coresvc/drop_stats        # drops by reason\n  \
         cargo xtask lab exec gw -- ip -d link show mgmt0              # the attached XDP program\n  \
         cargo xtask lab exec dvnt-client -- dig @10.20.0.1 artifacts.dvntm.deevnet.net  # seed naming chain\n  \
         cargo xtask lab exec dvnt-client -- dig @10.20.0.1 -x 10.10.0.10               # reverse zone\n  \
         cargo xtask lab down                                          # remove everything\n",
        nodes.join("\n  ")
    );
}

extern "C" fn on_sigint(_: libc::c_int) {}

/// `cargo xtask run`: the lab with the built-in configuration, coresvc in the
/// foreground; Ctrl-C stops coresvc and tears the lab down.
pub fn run_foreground() -> Result<()> {
    let bin = build_release()?;
    if exists() {
        bail!("a lab is already up (from `cargo xtask lab up`): `cargo xtask lab down` first");
    }
    // Ctrl-C reaches coresvc (same process group); this process keeps
    // running to tear the lab down after it exits. A handler, not SIG_IGN,
    // so coresvc does not inherit an ignored SIGINT.
    // SAFETY: installing a trivial async-signal-safe handler.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    let mut lab = up(bin, None, true)?;
    tips(&lab);
    eprintln!("coresvc runs in the foreground; Ctrl-C stops it and removes the lab.\n");
    let st = lab.wait_agent()?;
    step("run", &format!("coresvc exited ({}); removing the lab", st.map(|s| s.to_string()).unwrap_or_default()));
    lab.down()
}
