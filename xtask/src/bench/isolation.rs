//! Isolation, proven on every row: what is attached on every lab interface
//! (read from the kernel: XDP through `ip -d -j link`, TCX through
//! BPF_PROG_QUERY inside each namespace), coresvc's pins and counters, and
//! the benchmark's own tools as child processes whose failures are seen.
//!
//! A peer's row is valid only when no coresvc program is attached anywhere
//! in the lab, no coresvc link is pinned, coresvc's interface counters stay
//! flat through the run, and the peer's (or tool's) program is attached
//! where the row says.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use coresvc_lab::Lab;
use coresvc_maps_schema::programs;
use serde_json::Value;

use super::report::Check;

/// coresvc's programs, by the names the kernel shows (15 characters at most).
pub const CORESVC_PROGRAMS: [&str; 3] = [programs::SEGMENT_INGRESS, programs::UPLINK_INGRESS, programs::EGRESS];

/// One program attached to a lab interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub node: String,
    pub iface: String,
    /// `xdp`, `tcx-ingress` or `tcx-egress`.
    pub hook: &'static str,
    pub prog: String,
    pub id: u32,
}

impl std::fmt::Display for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} on {}:{} ({}, id {})", self.prog, self.node, self.iface, self.hook, self.id)
    }
}

const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;

/// Program ids attached at TCX `attach_type` of `ifindex` (this thread's
/// namespace).
fn tcx_query(ifindex: u32, attach_type: u32) -> std::io::Result<Vec<u32>> {
    let mut ids = [0u32; 64];
    let mut attr = [0u8; 128];
    // union bpf_attr, query: target_ifindex, attach_type, query_flags,
    // attach_flags, prog_ids (u64 at 16), prog_cnt (u32 at 24).
    attr[0..4].copy_from_slice(&ifindex.to_ne_bytes());
    attr[4..8].copy_from_slice(&attach_type.to_ne_bytes());
    attr[16..24].copy_from_slice(&(ids.as_mut_ptr() as u64).to_ne_bytes());
    attr[24..28].copy_from_slice(&(ids.len() as u32).to_ne_bytes());
    // SAFETY: bpf(2) with an attribute buffer of the size passed; the
    // kernel writes at most prog_cnt ids into `ids`.
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_QUERY, attr.as_mut_ptr(), attr.len()) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        // Nothing attached, or no TCX on this interface.
        if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EINVAL)) {
            return Ok(Vec::new());
        }
        return Err(e);
    }
    let n = u32::from_ne_bytes(attr[24..28].try_into().expect("4 bytes")) as usize;
    Ok(ids[..n.min(ids.len())].to_vec())
}

/// A program's name by id (`bpftool prog show id N`).
fn prog_name(id: u32) -> String {
    Command::new("bpftool")
        .args(["-j", "prog", "show", "id", &id.to_string()])
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
        .and_then(|v| v["name"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("prog#{id}"))
}

/// Every program attached to an interface of any of the lab's namespaces.
pub fn attached(lab: &Lab) -> Result<Vec<Attached>> {
    let mut out = Vec::new();
    for n in &lab.topo.nodes {
        let ns = lab.ns(&n.name);
        let text = coresvc_lab::dns::check(Command::new("ip").args(["-n", &ns, "-d", "-j", "link", "show"]))?;
        let links: Value = serde_json::from_str(&text).with_context(|| format!("ip -j link in {ns}"))?;
        let mut ifaces = Vec::new();
        for l in links.as_array().into_iter().flatten() {
            let name = l["ifname"].as_str().unwrap_or("?").to_string();
            ifaces.push((l["ifindex"].as_u64().unwrap_or(0) as u32, name.clone()));
            let xdp = &l["xdp"];
            let progs: Vec<&Value> = match xdp["attached"].as_array() {
                Some(a) => a.iter().map(|x| &x["prog"]).collect(),
                None if xdp["prog"].is_object() => vec![&xdp["prog"]],
                None => Vec::new(),
            };
            for p in progs {
                let id = p["id"].as_u64().unwrap_or(0) as u32;
                let prog = p["name"].as_str().map(str::to_string).unwrap_or_else(|| prog_name(id));
                out.push(Attached { node: n.name.clone(), iface: name.clone(), hook: "xdp", prog, id });
            }
        }
        let node = n.name.clone();
        let tcx = coresvc_lab::raw::in_netns(&ns, move || {
            let mut found = Vec::new();
            for (ifindex, iface) in ifaces {
                for (t, hook) in [(BPF_TCX_INGRESS, "tcx-ingress"), (BPF_TCX_EGRESS, "tcx-egress")] {
                    for id in tcx_query(ifindex, t).with_context(|| format!("BPF_PROG_QUERY {iface} {hook}"))? {
                        found.push((iface.clone(), hook, id));
                    }
                }
            }
            Ok(found)
        })?;
        for (iface, hook, id) in tcx {
            out.push(Attached { node: node.clone(), iface, hook, prog: prog_name(id), id });
        }
    }
    Ok(out)
}

/// No coresvc program is attached anywhere in the lab.
pub fn coresvc_absent(att: &[Attached]) -> Check {
    let found: Vec<String> =
        att.iter().filter(|a| CORESVC_PROGRAMS.contains(&a.prog.as_str())).map(|a| a.to_string()).collect();
    Check::that(found.is_empty(), "no coresvc program attached in the lab", || {
        format!("coresvc's {} still attached", found.join(", "))
    })
}

/// `prog` is attached (XDP) on `node`:`iface`.
pub fn present(att: &[Attached], node: &str, iface: &str, prog: &str) -> Check {
    let ok = att.iter().any(|a| a.node == node && a.iface == iface && a.prog == prog);
    Check::that(ok, format!("{prog} attached on {node}:{iface}"), || {
        let there: Vec<String> =
            att.iter().filter(|a| a.node == node && a.iface == iface).map(|a| a.to_string()).collect();
        format!("not attached (there: {})", if there.is_empty() { "nothing".into() } else { there.join(", ") })
    })
}

/// coresvc's programs on the gateway's interfaces `ifaces`
/// (`(iface, xdp program)`), and nothing of the benchmark's tools there.
pub fn coresvc_present(att: &[Attached], gw: &str, ifaces: &[(&str, &str)]) -> Vec<Check> {
    let mut v: Vec<Check> = ifaces.iter().map(|(i, p)| present(att, gw, i, p)).collect();
    let foreign: Vec<String> = att
        .iter()
        .filter(|a| a.node == gw && !CORESVC_PROGRAMS.contains(&a.prog.as_str()))
        .map(|a| a.to_string())
        .collect();
    v.push(Check::that(foreign.is_empty(), "nothing else attached on the gateway", || foreign.join(", ")));
    v
}

/// No coresvc link pinned under `pin_dir` (`links/<hook>/<iface>`).
pub fn no_links_pinned(pin_dir: &Path) -> Check {
    let mut pinned = Vec::new();
    for hook in ["xdp", "tc-egress"] {
        if let Ok(d) = fs::read_dir(pin_dir.join("links").join(hook)) {
            pinned
                .extend(d.filter_map(|e| e.ok()).map(|e| format!("links/{hook}/{}", e.file_name().to_string_lossy())));
        }
    }
    Check::that(pinned.is_empty(), "no coresvc link pinned", || format!("pinned: {}", pinned.join(", ")))
}

/// The sum of coresvc's interface counters (packets, every slot and
/// verdict) from its pinned `if_stats`; none when it is not pinned.
pub fn coresvc_packets(pin_dir: &Path) -> Result<Option<u64>> {
    let map = pin_dir.join("if_stats");
    if !map.exists() {
        return Ok(None);
    }
    let text = coresvc_lab::dns::check(Command::new("bpftool").args(["-j", "map", "dump", "pinned"]).arg(&map))?;
    let v: Value = serde_json::from_str(&text).context("bpftool map dump -j")?;
    let mut sum = 0;
    for e in v.as_array().into_iter().flatten() {
        for c in e["formatted"]["values"].as_array().into_iter().flatten() {
            sum += c["value"]["packets"].as_u64().unwrap_or(0);
        }
    }
    Ok(Some(sum))
}

/// coresvc's counters before a peer's run, to compare with after it.
pub struct Flat {
    pin_dir: PathBuf,
    before: Option<u64>,
}

impl Flat {
    pub fn start(pin_dir: &Path) -> Result<Flat> {
        Ok(Flat { pin_dir: pin_dir.to_path_buf(), before: coresvc_packets(pin_dir)? })
    }

    /// coresvc counted nothing since [`Flat::start`].
    pub fn check(&self) -> Check {
        let what = "coresvc's interface counters flat";
        match (self.before, coresvc_packets(&self.pin_dir)) {
            (Some(a), Ok(Some(b))) => Check::that(a == b, what, || format!("they rose by {} packets", b - a)),
            (None, Ok(None)) => Check::ok(format!("{what} (no coresvc maps pinned)")),
            (_, Err(e)) => Check::failed(what, format!("cannot read them: {e:#}")),
            (a, Ok(b)) => Check::failed(what, format!("pinned maps changed: {a:?} -> {b:?}")),
        }
    }
}

/// The checks before a peer's row: coresvc stopped with nothing of it
/// attached or linked, the peer's programs (`expect`: node, iface, prog)
/// attached.
pub fn peer_checks(lab: &Lab, expect: &[(&str, &str, &str)]) -> Result<Vec<Check>> {
    let att = attached(lab)?;
    let mut v = vec![
        Check::that(lab.agent_pid().is_none(), "coresvc stopped", || "the agent still runs".into()),
        coresvc_absent(&att),
        no_links_pinned(&lab.paths.pin_dir),
    ];
    v.extend(expect.iter().map(|(n, i, p)| present(&att, n, i, p)));
    Ok(v)
}

/// A benchmark tool (`coresvc-devtool ...`, tcpdump, a server) run as a
/// child: its stderr goes to a file read back when it fails, its stdout is
/// kept for the figures it prints when it ends.
pub struct Tool {
    pub name: String,
    child: Option<Child>,
    stderr: PathBuf,
}

impl Tool {
    /// Starts `cmd` (stdout piped, stderr to a file of the lab).
    pub fn spawn(lab: &Lab, name: &str, mut cmd: Command) -> Result<Tool> {
        let stderr = lab.paths.run_dir.join(format!("{}.stderr", name.replace([' ', '/'], "-")));
        let f = fs::File::create(&stderr)?;
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(f)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Tool { name: name.into(), child: Some(child), stderr })
    }

    /// `coresvc-devtool ARGS` as a tool.
    pub fn devtool(lab: &Lab, name: &str, args: &[&str]) -> Result<Tool> {
        let mut c = Command::new(coresvc_lab::devtool_bin()?);
        c.args(args);
        Tool::spawn(lab, name, c)
    }

    pub fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default().trim().to_string()
    }

    /// The tool runs.
    pub fn alive(&mut self) -> Check {
        let what = format!("{} running", self.name);
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => Check::ok(what),
            Some(Ok(Some(st))) => Check::failed(what, format!("it exited ({st}): {}", self.stderr_text())),
            Some(Err(e)) => Check::failed(what, e.to_string()),
            None => Check::failed(what, "already stopped".to_string()),
        }
    }

    /// Waits until `ready` holds (polled), the tool still running; fails
    /// with its stderr otherwise.
    pub fn wait_until(&mut self, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(why) = self.alive().failure {
                bail!("{}: {why}", self.name);
            }
            if ready() {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!("{} not ready within {timeout:?}: {}", self.name, self.stderr_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (up to `timeout`, then kills it) for the tool to end by
    /// itself: a check of its exit status and what it printed.
    pub fn finish(mut self, timeout: Duration) -> (Check, String) {
        let child = self.child.take().expect("a running tool");
        self.end(child, timeout)
    }

    /// Ends the tool (SIGTERM, then SIGKILL after 5 s): a check of its exit
    /// status and what it printed on stdout.
    pub fn stop(mut self) -> (Check, String) {
        let child = self.child.take().expect("a running tool");
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        self.end(child, Duration::from_secs(5))
    }

    fn end(&mut self, mut child: Child, timeout: Duration) -> (Check, String) {
        let start = Instant::now();
        while child.try_wait().ok().flatten().is_none() && start.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let out = child.wait_with_output();
        let what = format!("{} ended cleanly", self.name);
        match out {
            Ok(o) if o.status.success() => (Check::ok(what), String::from_utf8_lossy(&o.stdout).into_owned()),
            Ok(o) => (
                Check::failed(what, format!("{}: {}", o.status, self.stderr_text())),
                String::from_utf8_lossy(&o.stdout).into_owned(),
            ),
            Err(e) => (Check::failed(what, e.to_string()), String::new()),
        }
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(node: &str, iface: &str, prog: &str) -> Attached {
        Attached { node: node.into(), iface: iface.into(), hook: "xdp", prog: prog.into(), id: 7 }
    }

    #[test]
    fn the_checks_name_what_is_attached_where() {
        let att = [a("gw", "dvnt0", "segment_ingress"), a("provisioner", "eth0", "sink")];
        let c = coresvc_absent(&att);
        assert_eq!(
            c.failure.as_deref(),
            Some("coresvc's segment_ingress on gw:dvnt0 (xdp, id 7) still attached"),
            "{c:?}"
        );
        assert!(present(&att, "provisioner", "eth0", "sink").failure.is_none());
        let c = present(&att, "gw", "dvnt0", "reflect");
        assert!(c.failure.unwrap().contains("segment_ingress"));
        assert!(coresvc_absent(&att[1..]).failure.is_none());
    }

    fn failures(checks: &[Check]) -> Vec<String> {
        checks.iter().filter_map(|c| c.failure.as_ref().map(|f| format!("{}: {f}", c.what))).collect()
    }

    /// The check reads the kernel, not coresvc: a clean stop that keeps the
    /// programs (`on_stop = "keep"`) leaves XDP and TCX programs attached
    /// and links pinned, and a peer's row would be measured through them;
    /// the check says so and names them. After `coresvc unpin` (or a
    /// detaching stop) it passes.
    #[test]
    fn the_isolation_check_fails_while_coresvc_is_left_attached() {
        let mut lab = Lab::for_test().unwrap();
        lab.start_agent(&coresvc_lab::AgentOpts::new(coresvc_lab::default_config())).unwrap();
        let running =
            coresvc_present(&attached(&lab).unwrap(), "gw", &[("dvnt0", "segment_ingress"), ("up0", "uplink_ingress")]);
        assert!(failures(&running).is_empty(), "{:?}", failures(&running));
        lab.stop_agent(libc::SIGTERM, Duration::from_secs(10)).unwrap();
        let f = failures(&peer_checks(&lab, &[]).unwrap()).join("\n");
        for (what, iface) in [("segment_ingress", "dvnt0"), ("segment_ingress", "mgmt0"), ("uplink_ingress", "up0")] {
            assert!(f.contains(&format!("{what} on gw:{iface} (xdp")), "{what} on {iface} named:\n{f}");
        }
        assert!(f.contains("egress on gw:dvnt0 (tcx-egress"), "the TC program named too:\n{f}");
        assert!(f.contains("pinned: links/"), "the pinned links named:\n{f}");
        let out = lab.unpin().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let after = peer_checks(&lab, &[]).unwrap();
        assert!(failures(&after).is_empty(), "after coresvc unpin: {:?}", failures(&after));

        // A detaching stop needs no unpin, and keeps the counters readable.
        let cfg = lab.config_with("detach.toml", |s| s.replace("on_stop = \"keep\"", "on_stop = \"detach\"")).unwrap();
        lab.start_agent(&coresvc_lab::AgentOpts::new(&cfg)).unwrap();
        lab.stop_agent(libc::SIGTERM, Duration::from_secs(10)).unwrap();
        let after = peer_checks(&lab, &[]).unwrap();
        assert!(failures(&after).is_empty(), "after a detaching stop: {:?}", failures(&after));
        assert!(coresvc_packets(&lab.paths.pin_dir).unwrap().is_some(), "if_stats still pinned");
    }
}
