//! The coresvc network-namespace lab, shared by `cargo xtask lab`/`run` and
//! the integration tests.
//!
//! A lab is one network namespace per node of `topology.toml`, joined by veth
//! pairs to the gateway namespace, all named with a per-lab prefix so labs can
//! run side by side. coresvc runs in the gateway's namespace (entered with
//! `coresvc run --netns`, so its pins live in the host's bpffs).
//!
//! Safety: the lab only creates namespaces and links of its own and only
//! moves traffic between them; it never touches the host's interfaces.
//! Dropping a [`Lab`] removes everything it created (also on panic); a test
//! run that was killed leaves labs whose owner pid is dead, and the next
//! [`Lab::up`] removes those.

pub mod dhcp;
pub mod dns;
pub mod frames;
pub mod pxe;
pub mod raw;
pub mod servers;
pub mod soak;
pub mod topology;
pub mod xdp_pass;

use std::{
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
pub use topology::{Link, Node, Topology};

/// Where the lab keeps pid files, logs, sockets and state of one lab.
pub const RUN_ROOT: &str = "/run/coresvc-lab";
/// The prefix of labs made by tests: `cst<pid>x<n>`.
const TEST_PREFIX: &str = "cst";

/// The workspace root (this crate's parent).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// The lab's built-in coresvc configuration.
pub fn default_config() -> PathBuf {
    workspace_root().join("examples").join("coresvc.toml")
}

/// The coresvc binary to run: `$CORESVC_BIN`, else the one cargo built next
/// to the running test or xtask binary (`target/<profile>/coresvc`).
pub fn agent_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("CORESVC_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(3) {
        let cand = dir.join("coresvc");
        if cand.is_file() {
            return Ok(cand);
        }
    }
    bail!(
        "cannot find the coresvc binary near {}; build it first (`cargo build -p coresvc`, which \
         `cargo xtask test` does) or set CORESVC_BIN",
        exe.display()
    )
}

/// The `coresvc-devtool` binary (the benchmarks' and tests' tools):
/// `CORESVC_DEVTOOL_BIN`, else beside the coresvc binary.
pub fn devtool_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("CORESVC_DEVTOOL_BIN") {
        return Ok(PathBuf::from(p));
    }
    let bin = agent_bin()?.with_file_name("coresvc-devtool");
    if !bin.is_file() {
        bail!("no {}: build it first (`cargo build -p coresvc-devtool`, which `cargo xtask test` does)", bin.display());
    }
    Ok(bin)
}

/// Paths of one lab instance.
#[derive(Debug, Clone)]
pub struct LabPaths {
    pub run_dir: PathBuf,
    pub pin_dir: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    pub pid_file: PathBuf,
}

impl LabPaths {
    /// Paths private to a lab with this prefix.
    pub fn private(prefix: &str) -> Self {
        let run_dir = Path::new(RUN_ROOT).join(prefix);
        Self {
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/coresvc-{prefix}")),
            socket: run_dir.join("control.sock"),
            state_dir: run_dir.join("state"),
            log: run_dir.join("coresvc.log"),
            pid_file: run_dir.join("coresvc.pid"),
            run_dir,
        }
    }
}

/// How the agent should be started.
#[derive(Debug, Clone)]
pub struct AgentOpts {
    pub config: PathBuf,
    /// Extra arguments for `coresvc run`.
    pub args: Vec<String>,
    /// Log to the terminal instead of the lab's log file (`cargo xtask run`).
    pub foreground: bool,
    /// Detach from the caller (`cargo xtask lab up`): survives its exit.
    pub detach: bool,
    /// `RUST_LOG` for the agent.
    pub log_filter: Option<String>,
}

impl AgentOpts {
    pub fn new(config: impl Into<PathBuf>) -> Self {
        Self { config: config.into(), args: Vec::new(), foreground: false, detach: false, log_filter: None }
    }
}

/// A running lab. Dropping it tears it down unless [`Lab::persist`] was called.
pub struct Lab {
    pub prefix: String,
    pub topo: Topology,
    pub paths: LabPaths,
    agent: Option<Child>,
    persist: bool,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// A lab with a fresh unique prefix, for a test.
    pub fn for_test() -> Result<Self> {
        require_root()?;
        cleanup_stale_test_labs();
        let prefix = format!("{TEST_PREFIX}{}x{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let paths = LabPaths::private(&prefix);
        Self::up(&prefix, paths)
    }

    /// Creates the namespaces and links of the topology under `prefix`.
    pub fn up(prefix: &str, paths: LabPaths) -> Result<Self> {
        require_root()?;
        let topo = Topology::builtin()?;
        let mut lab = Lab { prefix: prefix.to_string(), topo, paths, agent: None, persist: false };
        if let Err(e) = lab.build() {
            // Drop tears down whatever was made.
            return Err(e.context(format!("creating lab {prefix}")));
        }
        Ok(lab)
    }

    /// Re-attaches to a lab created by another process (`cargo xtask lab`).
    /// Dropping it leaves the lab alone; [`Lab::down`] removes it.
    pub fn existing(prefix: &str, paths: LabPaths) -> Result<Self> {
        let topo = Topology::builtin()?;
        Ok(Lab { prefix: prefix.to_string(), topo, paths, agent: None, persist: true })
    }

    /// Keep the lab when this value is dropped (for `cargo xtask lab up`).
    pub fn persist(mut self) {
        self.persist = true;
    }

    /// The namespace of `node`.
    pub fn ns(&self, node: &str) -> String {
        format!("{}-{node}", self.prefix)
    }

    pub fn gw_ns(&self) -> String {
        self.ns(&self.topo.gateway)
    }

    /// `coresvc unpin --netns <gateway> --pin-dir <this lab's pins>`, as an
    /// operator takes the data path down.
    pub fn unpin(&self) -> Result<std::process::Output> {
        Ok(std::process::Command::new(agent_bin()?)
            .args(["unpin", "--netns", &self.gw_ns(), "--pin-dir"])
            .arg(&self.paths.pin_dir)
            .output()?)
    }

    fn build(&mut self) -> Result<()> {
        fs::create_dir_all(&self.paths.run_dir)?;
        for n in &self.topo.nodes {
            let ns = self.ns(&n.name);
            run(Command::new("ip").args(["netns", "add", &ns]))?;
            // Quiet links: no IPv6 autoconfiguration chatter in the counters.
            for key in ["net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"] {
                run(&mut self.cmd_in(&ns, ["sysctl", "-qw", &format!("{key}=1")]))?;
            }
            run(Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]))?;
            // Name resolution inside the lab stays inside the lab: `ip netns
            // exec` bind-mounts /etc/netns/<ns>/resolv.conf over the host's.
            // Clients ask their gateway (coresvc); the others ask nobody.
            let server = self.topo.link_of(&n.name).and_then(|l| l.via.clone()).unwrap_or_else(|| "127.0.0.1".into());
            let etc = Path::new("/etc/netns").join(&ns);
            fs::create_dir_all(&etc)?;
            fs::write(
                etc.join("resolv.conf"),
                format!("# coresvc lab {}\nnameserver {server}\noptions timeout:1 attempts:1\n", self.prefix),
            )?;
        }
        // Forwarding in the gateway is coresvc's to enable.
        for l in self.topo.links.clone() {
            self.make_link(&l)?;
        }
        Ok(())
    }

    fn make_link(&self, l: &Link) -> Result<()> {
        let gw = self.gw_ns();
        let ns = self.ns(&l.node);
        run(Command::new("ip").args([
            "-n",
            &gw,
            "link",
            "add",
            &l.gw_iface,
            "type",
            "veth",
            "peer",
            "name",
            &l.iface,
            "netns",
            &ns,
        ]))?;
        if let Some(mac) = &l.mac {
            run(Command::new("ip").args(["-n", &ns, "link", "set", &l.iface, "address", mac]))?;
        }
        if let Some(mac) = &l.gw_mac {
            run(Command::new("ip").args(["-n", &gw, "link", "set", &l.gw_iface, "address", mac]))?;
        }
        run(Command::new("ip").args(["-n", &gw, "link", "set", &l.gw_iface, "up"]))?;
        if let Some(a) = &l.address {
            run(Command::new("ip").args(["-n", &ns, "addr", "add", a, "dev", &l.iface]))?;
        }
        run(Command::new("ip").args(["-n", &ns, "link", "set", &l.iface, "up"]))?;
        // See topology.toml: NAPI for redirected frames, full checksums, and
        // an XDP program to receive frames the gateway sends back with XDP_TX.
        run(&mut self.cmd_in(&ns, ["ethtool", "-K", &l.iface, "tx", "off", "gro", "on"]))?;
        xdp_pass::attach(&ns, &l.iface)?;
        if let Some(via) = &l.via {
            run(Command::new("ip").args(["-n", &ns, "route", "add", "default", "via", via]))?;
        }
        Ok(())
    }

    /// Deletes the veth pair of `node` (as if its NIC vanished).
    pub fn unlink(&self, node: &str) -> Result<()> {
        let l = self.topo.link_of(node).ok_or_else(|| anyhow!("no link to {node}"))?;
        run(Command::new("ip").args(["-n", &self.gw_ns(), "link", "del", &l.gw_iface]))
    }

    /// Creates the veth pair of `node` again.
    pub fn relink(&self, node: &str) -> Result<()> {
        let l = self.topo.link_of(node).ok_or_else(|| anyhow!("no link to {node}"))?.clone();
        self.make_link(&l)
    }

    /// `ip netns exec <ns> args...` as a Command.
    pub fn cmd_in<I, S>(&self, ns: &str, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).args(args);
        c
    }

    /// A command on `node`.
    pub fn cmd<I, S>(&self, node: &str, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd_in(&self.ns(node), args)
    }

    /// Runs a command on `node` and returns its output (whatever its status).
    pub fn exec<I, S>(&self, node: &str, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd(node, args).output().context("running a command in the lab")
    }

    /// Starts coresvc in the gateway namespace and waits until it answers.
    pub fn start_agent(&mut self, opts: &AgentOpts) -> Result<()> {
        if self.agent.is_some() {
            bail!("the agent is already running");
        }
        fs::create_dir_all(&self.paths.run_dir)?;
        let mut c = self.agent_command(&opts.config)?;
        c.args(&opts.args).stdin(Stdio::null());
        if let Some(f) = &opts.log_filter {
            c.env("RUST_LOG", f);
        }
        if !opts.foreground {
            let log = fs::OpenOptions::new().create(true).append(true).open(&self.paths.log)?;
            c.stdout(log.try_clone()?).stderr(log);
        }
        if opts.detach {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: setsid is async-signal-safe.
            unsafe {
                c.pre_exec(|| {
                    libc::setsid();
                    Ok(())
                });
            }
        }
        let child = c.spawn().with_context(|| format!("starting {:?}", c.get_program()))?;
        fs::write(&self.paths.pid_file, child.id().to_string())?;
        self.agent = Some(child);
        self.wait_ready(Duration::from_secs(30))
    }

    /// `coresvc run` for this lab: the gateway's namespace and the lab's own
    /// pin directory, control socket and state directory.
    pub fn agent_command(&self, config: &Path) -> Result<Command> {
        let mut c = Command::new(agent_bin()?);
        c.arg("run")
            .arg("--config")
            .arg(config)
            .arg("--netns")
            .arg(self.gw_ns())
            .arg("--pin-dir")
            .arg(&self.paths.pin_dir)
            .arg("--control-socket")
            .arg(&self.paths.socket)
            .arg("--state-dir")
            .arg(&self.paths.state_dir);
        Ok(c)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(child) = self.agent.as_mut()
                && let Some(st) = child.try_wait()?
            {
                self.agent = None;
                bail!("coresvc exited during start-up ({st}):\n{}", self.log_tail(40));
            }
            if self.status_json().is_ok() {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!(
                    "coresvc did not answer on {} within {timeout:?}:\n{}",
                    self.paths.socket.display(),
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `coresvc status --json` of this lab's agent.
    pub fn status_json(&self) -> Result<serde_json::Value> {
        let out = self.coresvc(["status", "--json"])?;
        if !out.status.success() {
            bail!("coresvc status failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        serde_json::from_slice(&out.stdout).context("parsing coresvc status --json")
    }

    /// Runs the coresvc CLI against this lab's agent (`--socket` added).
    pub fn coresvc<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = Command::new(agent_bin()?);
        c.args(args).arg("--socket").arg(&self.paths.socket);
        c.output().context("running the coresvc CLI")
    }

    /// The agent's process, while it runs.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Child::id)
    }

    /// Sends `signal` to the agent and waits for it to exit (SIGKILL after
    /// `grace`). Returns its exit status.
    pub fn stop_agent(&mut self, signal: i32, grace: Duration) -> Result<Option<std::process::ExitStatus>> {
        let Some(mut child) = self.agent.take() else { return Ok(None) };
        // SAFETY: kill(2) on our child's pid.
        unsafe { libc::kill(child.id() as i32, signal) };
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait()? {
                let _ = fs::remove_file(&self.paths.pid_file);
                return Ok(Some(st));
            }
            if start.elapsed() > grace {
                let _ = child.kill();
                let st = child.wait()?;
                let _ = fs::remove_file(&self.paths.pid_file);
                return Ok(Some(st));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for a foreground agent to exit by itself.
    pub fn wait_agent(&mut self) -> Result<Option<std::process::ExitStatus>> {
        match self.agent.take() {
            Some(mut c) => Ok(Some(c.wait()?)),
            None => Ok(None),
        }
    }

    /// The last `n` lines of the agent's log.
    pub fn log_tail(&self, n: usize) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(&self.paths.log) {
            let _ = f.read_to_string(&mut s);
        }
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The whole agent log.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.paths.log).unwrap_or_default()
    }

    /// Loads an nftables script (`nft -f -`) on `node`; it goes away with the
    /// node's namespace.
    pub fn nft(&self, node: &str, script: &str) -> Result<()> {
        use std::io::Write as _;
        let mut child = self
            .cmd(node, ["nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running nft (installed by cargo xtask setup)")?;
        child.stdin.take().expect("piped stdin").write_all(script.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("nft -f on {node} failed: {}\n{script}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    /// Sends one raw Ethernet frame out of `iface` on `node`.
    pub fn send_frame(&self, node: &str, iface: &str, frame: &[u8]) -> Result<()> {
        raw::send_frames(&self.ns(node), iface, &[frame.to_vec()])
    }

    /// Stops the agent (from this process or a pid file), removes the
    /// namespaces (their veths go with them), the pins and the run directory.
    pub fn down(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        let mut errors = Vec::new();
        if self.agent.is_some() {
            let _ = self.stop_agent(libc::SIGTERM, Duration::from_secs(5));
        } else if let Ok(pid) = fs::read_to_string(&self.paths.pid_file)
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            stop_pid(pid, Duration::from_secs(5));
        }
        for n in &self.topo.nodes {
            let ns = self.ns(&n.name);
            if Path::new("/run/netns").join(&ns).exists()
                && let Err(e) = run(Command::new("ip").args(["netns", "del", &ns]))
            {
                errors.push(format!("{e:#}"));
            }
            let _ = fs::remove_dir_all(Path::new("/etc/netns").join(&ns));
        }
        if let Err(e) = remove_pins(&self.paths.pin_dir) {
            errors.push(format!("pins {}: {e}", self.paths.pin_dir.display()));
        }
        if self.paths.run_dir.starts_with(RUN_ROOT) {
            let _ = fs::remove_dir_all(&self.paths.run_dir);
        }
        if errors.is_empty() { Ok(()) } else { Err(anyhow!(errors.join("; "))) }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.persist {
            return;
        }
        if std::thread::panicking() {
            eprintln!("--- coresvc log of lab {} (test failed) ---\n{}\n---", self.prefix, self.log_tail(60));
        }
        if let Err(e) = self.teardown() {
            eprintln!("lab {}: teardown: {e:#}", self.prefix);
        }
    }
}

/// Removes the pins coresvc keeps under `dir` (maps, links) and the directory.
pub fn remove_pins(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() { remove_pins(&p)? } else { fs::remove_file(&p)? }
    }
    fs::remove_dir(dir)
}

fn stop_pid(pid: i32, grace: Duration) {
    // SAFETY: kill(2); signal 0 probes.
    unsafe {
        if libc::kill(pid, libc::SIGTERM) != 0 {
            return;
        }
        let start = Instant::now();
        while libc::kill(pid, 0) == 0 && start.elapsed() < grace {
            std::thread::sleep(Duration::from_millis(50));
        }
        if libc::kill(pid, 0) == 0 {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// Removes labs (and any other namespace named `cst<pid>x...`) of test
/// processes that no longer exist: a killed test run.
pub fn cleanup_stale_test_labs() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    let list = String::from_utf8_lossy(&out.stdout);
    let mut prefixes = std::collections::BTreeSet::new();
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(TEST_PREFIX) else { continue };
        let Some((pid, _)) = rest.split_once('x') else { continue };
        let Ok(pid) = pid.parse::<i32>() else { continue };
        // SAFETY: signal 0 only probes for existence.
        if unsafe { libc::kill(pid, 0) } == 0 {
            continue;
        }
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        let _ = fs::remove_dir_all(Path::new("/etc/netns").join(name));
        if let Some((prefix, _)) = name.split_once('-') {
            prefixes.insert(prefix.to_string());
        }
    }
    for prefix in prefixes {
        eprintln!("removed lab {prefix}, left by a test process that no longer runs");
        let paths = LabPaths::private(&prefix);
        let _ = remove_pins(&paths.pin_dir);
        let _ = fs::remove_dir_all(&paths.run_dir);
    }
}

fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab needs root (network namespaces, veth, XDP, bpffs); run as root");
    }
    Ok(())
}

/// Runs a command, failing with its stderr.
pub fn run(c: &mut Command) -> Result<()> {
    let out = c.output().with_context(|| format!("running {c:?}"))?;
    if !out.status.success() {
        bail!("{c:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
