//! Live operations: Prometheus metrics, reload of DHCP and NAT changes
//! without losing leases, and the systemd unit.

use std::{path::PathBuf, process::Command, time::Duration};

use coresvc_lab::{AgentOpts, Lab};
use serde_json::Value;

fn lab_with(edit: impl FnOnce(String) -> String) -> (Lab, PathBuf) {
    let mut lab = Lab::for_test().unwrap();
    let cfg = lab.config_with("coresvc.toml", edit).unwrap();
    lab.start_agent(&AgentOpts::new(&cfg)).unwrap();
    (lab, cfg)
}

fn scrape(lab: &Lab, path: &str) -> (String, String) {
    let out = lab
        .exec("gw", ["curl", "-s", "-w", "\n%{http_code}", "--max-time", "5", &format!("http://127.0.0.1:9477{path}")])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (body.to_string(), code.to_string())
}

#[test]
fn metrics_are_served_in_the_prometheus_text_format() {
    let (lab, _) =
        lab_with(|s| s.replace("# metrics_listen = \"127.0.0.1:9464\"", "metrics_listen = \"127.0.0.1:9477\""));
    let dig = |name: &str| lab.exec("dvnt-client", ["dig", "+short", "@10.20.0.1", name]).unwrap();
    dig("no-such-host.dvnt.deevnet.net");
    let (body, code) = scrape(&lab, "/metrics");
    assert_eq!(code, "200", "{body}");
    // Every sample belongs to a declared family, and parses.
    let mut declared = std::collections::BTreeSet::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (name, kind) = (it.next().unwrap(), it.next().unwrap());
            assert!(["counter", "gauge"].contains(&kind), "{line}");
            declared.insert(name.to_string());
        } else if !line.starts_with('#') && !line.is_empty() {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(declared.contains(name), "sample of an undeclared family: {line}");
        }
    }
    let m = coresvc::metrics::parse(&body).unwrap();
    let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("no {k} in:\n{body}"));
    assert_eq!(get("coresvc_authority_bootstrap"), 1.0);
    let q1 = get("coresvc_dns_queries_udp_total");
    assert!(q1 >= 1.0);
    assert!(get("coresvc_xdp_packets_total{interface=\"dvnt0\",verdict=\"pass\"}") > 0.0);
    assert!(
        m.keys().any(
            |k| k.starts_with("coresvc_firewall_rule_packets_total{") && k.contains("rule=\"default:gateway-dns\"")
        )
    );
    assert!(m.keys().any(|k| k.starts_with("coresvc_drops_total{reason=\"firewall-deny\"")));
    assert!(m.contains_key("coresvc_dhcp_pool_size{segment=\"dvnt\"}"), "{body}");
    assert!(m.contains_key("coresvc_tftp_completed_total"), "{body}");
    assert_eq!(get("coresvc_dns_xdp_answering"), 1.0);
    let hits =
        |m: &std::collections::BTreeMap<String, f64>| m["coresvc_dns_xdp_total{segment=\"dvnt\",result=\"hit\"}"];
    let h1 = hits(&m);
    // Counters count: the agent answers a new question, the XDP cache the
    // same question again.
    dig("artifacts.dvnt.deevnet.net");
    let m2 = coresvc::metrics::parse(&scrape(&lab, "/metrics").0).unwrap();
    assert!(m2["coresvc_dns_queries_udp_total"] > q1);
    dig("artifacts.dvnt.deevnet.net");
    let m3 = coresvc::metrics::parse(&scrape(&lab, "/metrics").0).unwrap();
    assert!(hits(&m3) > h1, "the XDP cache answered the repeated question");
    assert_eq!(scrape(&lab, "/nothing").1, "404");
}

#[test]
fn reload_applies_dhcp_zone_and_nat_changes_keeping_leases_and_valid_cached_answers() {
    let (mut lab, cfg) = lab_with(|s| s);
    let mut c = lab.udhcpc("dvnt-client", "before", &[]).unwrap();
    let first = c.wait_for(&["bound"], 1, Duration::from_secs(15)).unwrap();
    let first = first.ip().unwrap();
    drop(c);
    let leases = |lab: &Lab| -> Vec<Value> {
        let out = lab.coresvc(["leases", "--json"]).unwrap();
        serde_json::from_slice::<Value>(&out.stdout).unwrap().as_array().unwrap().clone()
    };
    assert!(leases(&lab).iter().any(|l| l["address"] == first.to_string()));

    // A bad change is refused and changes nothing.
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("end = \"10.20.0.199\"", "end = \"10.99.0.199\"")).unwrap();
    let out = lab.coresvc(["reload"]).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("coresvc.toml:") && err.contains(": dhcp.pool[0].end: 10.99.0.199"),
        "names file, line, field: {err}"
    );
    assert!(err.contains("nothing was changed"), "{err}");

    // An answer in the XDP cache, from a zone the change leaves alone.
    let dig = |name: &str| {
        let out = lab.exec("dvnt-client", ["dig", "+short", "@10.20.0.1", name]).unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let xdp_hits = |lab: &Lab| {
        let st = lab.status_json().unwrap();
        let segs = st["dataplane"]["dns_cache"]["segments"].as_array().cloned().unwrap_or_default();
        segs.iter().find(|s| s["segment"] == "dvnt").map(|s| s["hits"].as_u64().unwrap()).unwrap()
    };
    let mgmt = dig("provisioner-01.mgmt.deevnet.net");
    assert_eq!(dig("provisioner-01.mgmt.deevnet.net"), mgmt);

    // A static mapping for this client (a name in the dvnt zone) and a port forward.
    let edited = text.clone()
        + "\n[[dhcp.host]]\nmac = \"02:00:00:14:00:32\"\naddress = \"10.20.0.77\"\nhostname = \"dvnt-fixed\"\n\
           \n[[nat.forward]]\nproto = \"tcp\"\nport = 7070\nto = \"10.10.0.10:7000\"\n";
    std::fs::write(&cfg, edited).unwrap();
    let out = lab.coresvc(["reload"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("dhcp: serving the new pools, hosts and options"), "{said}");
    // The changed zone answers with the new data at once; the cached answer
    // from the unchanged zone is still served by XDP.
    assert_eq!(dig("dvnt-fixed.dvnt.deevnet.net"), "10.20.0.77");
    let hits = xdp_hits(&lab);
    assert_eq!(dig("provisioner-01.mgmt.deevnet.net"), mgmt);
    assert_eq!(xdp_hits(&lab), hits + 1, "the still valid cached answer was kept");
    // The lease of before is still there; the client now gets its fixed address.
    assert!(leases(&lab).iter().any(|l| l["address"] == first.to_string()), "no lease lost");
    let mut c = lab.udhcpc("dvnt-client", "after", &[]).unwrap();
    let ev = c.wait_for(&["bound"], 1, Duration::from_secs(15)).unwrap();
    assert_eq!(ev.ip().unwrap().to_string(), "10.20.0.77");
    drop(c);
    // The forward works from the uplink.
    let _svc = lab.tcp_whoami("provisioner", "10.10.0.10", 7000).unwrap();
    let seen = lab.whoami("upstream", "tcp", "192.0.2.2:7070", None).unwrap();
    assert!(seen.starts_with("192.0.2.1:"), "{seen}");
    lab.stop_agent(libc::SIGTERM, Duration::from_secs(10)).unwrap();
}

#[test]
fn the_systemd_unit_verifies() {
    let root = coresvc_lab::workspace_root();
    let bin = coresvc_lab::agent_bin().unwrap();
    let dir = std::env::temp_dir().join(format!("coresvc-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // systemd-analyze checks that the executables exist: point at the build.
    let unit = std::fs::read_to_string(root.join("dist/coresvc.service"))
        .unwrap()
        .replace("/usr/local/bin/coresvc", &bin.display().to_string());
    std::fs::write(dir.join("coresvc.service"), unit).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(dir.join("coresvc.service")).output();
    let _ = std::fs::remove_dir_all(&dir);
    let out = out.expect("systemd-analyze (package systemd)");
    let err = String::from_utf8_lossy(&out.stderr);
    // Only complaints about our unit count (not about units it names).
    let ours: Vec<&str> = err.lines().filter(|l| l.contains("coresvc.service")).collect();
    assert!(out.status.success() && ours.is_empty(), "{err}");
    // And the configuration it runs passes `coresvc check`.
    let check = Command::new(&bin).arg("check").arg(root.join("examples/coresvc.toml")).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
}

/// Watches `dir` for files created in it or moved into it (inotify).
struct DirWatch(std::os::fd::OwnedFd);

impl DirWatch {
    fn new(dir: &std::path::Path) -> DirWatch {
        use std::os::{fd::FromRawFd as _, unix::ffi::OsStrExt as _};
        // SAFETY: inotify_init1 returns a new fd or -1.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0, "inotify_init1");
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid inotify fd and C string.
        let wd = unsafe { libc::inotify_add_watch(fd, path.as_ptr(), libc::IN_CREATE | libc::IN_MOVED_TO) };
        assert!(wd >= 0, "inotify_add_watch");
        // SAFETY: fd is ours.
        DirWatch(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
    }

    /// The events so far: (name, created in place).
    fn events(&self) -> Vec<(String, bool)> {
        use std::os::fd::AsRawFd as _;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: read into our buffer.
            let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return out;
            }
            let mut at = 0;
            while at + 16 <= n as usize {
                let mask = u32::from_ne_bytes(buf[at + 4..at + 8].try_into().unwrap());
                let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().unwrap()) as usize;
                let name = String::from_utf8_lossy(&buf[at + 16..at + 16 + len]).trim_end_matches('\0').to_string();
                out.push((name, mask & libc::IN_CREATE != 0));
                at += 16 + len;
            }
        }
    }
}

/// Connects `n` times to `socket` from one process (as `user` with
/// `setpriv`, else root) and holds the connections; its output once all
/// are made (or connecting stalls).
fn hold_connections(socket: &std::path::Path, n: usize, user: Option<(&str, &str)>) -> (std::process::Child, String) {
    use std::io::BufRead as _;
    let script = r#"
import resource, socket, sys, time
n = int(sys.argv[2])
try:
    resource.setrlimit(resource.RLIMIT_NOFILE, (n + 64, n + 64))
except (ValueError, OSError):
    pass
held, stalled = [], 0
while len(held) < n and stalled < 500:
    s = socket.socket(socket.AF_UNIX)
    s.setblocking(False)
    try:
        s.connect(sys.argv[1])
        held.append(s)
        stalled = 0
    except BlockingIOError:
        # The listen queue is full: wait for the server to accept.
        s.close()
        stalled += 1
        time.sleep(0.01)
    except OSError:
        s.close()
        held.append(None)
print("held", len(held), flush=True)
time.sleep(120)
"#;
    let mut c = match user {
        Some((u, g)) => {
            let mut c = Command::new("setpriv");
            c.args([&format!("--reuid={u}"), &format!("--regid={g}"), "--clear-groups", "/usr/bin/python3"]);
            c
        }
        None => Command::new("/usr/bin/python3"),
    };
    let mut child =
        c.arg("-c").arg(script).arg(socket).arg(n.to_string()).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    (child, line)
}

/// `coresvc status` as `user` (setpriv): its output.
fn status_as(lab: &Lab, user: (&str, &str)) -> std::process::Output {
    let bin = coresvc_lab::agent_bin().unwrap();
    Command::new("setpriv")
        .args([&format!("--reuid={}", user.0), &format!("--regid={}", user.1), "--clear-groups"])
        .arg(bin)
        .args(["status", "--json", "--socket"])
        .arg(&lab.paths.socket)
        .output()
        .unwrap()
}

/// Issue 17 item 18: the control socket appears only with its final mode
/// (bound elsewhere and moved into place), lets in root and the configured
/// group and nobody else, checked on each connection (SO_PEERCRED) even
/// when its file is opened up, and one process flooding it (as root, more
/// connections than the agent has file descriptors; or as an allowed user)
/// cannot keep `coresvc status` out.
#[test]
fn the_control_socket_is_for_root_and_its_group_checked_per_connection_and_survives_a_flood() {
    let mut lab = Lab::for_test().unwrap();
    let cfg = lab
        .config_with("coresvc.toml", |s| s.replace("# control_group = \"coresvc\"", "control_group = \"nogroup\""))
        .unwrap();
    let watch = DirWatch::new(&lab.paths.run_dir);
    lab.start_agent(&AgentOpts::new(&cfg)).unwrap();
    let sock_name = lab.paths.socket.file_name().unwrap().to_string_lossy().to_string();
    let seen: Vec<(String, bool)> = watch.events().into_iter().filter(|(n, _)| *n == sock_name).collect();
    assert_eq!(seen, [(sock_name.clone(), false)], "moved into place, never created at its path with another mode");
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(&lab.paths.socket).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.uid(), meta.gid()), (0o660, 0, 65534), "0660 root:nogroup");

    let nobody = ("nobody", "nogroup");
    let daemon = ("daemon", "daemon");
    // The group's member gets in; another user cannot even open the file.
    let out = status_as(&lab, nobody);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = status_as(&lab, daemon);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("permission denied"), "{err}");
    // Opened up by mistake: the connection is refused on its credentials, counted.
    std::fs::set_permissions(&lab.paths.socket, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let out = status_as(&lab, daemon);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("refused: uid 1 may not use"), "{err}");
    let control = |lab: &Lab| lab.status_json().unwrap()["control"].clone();
    assert_eq!(control(&lab)["refused_peer"], 1, "{}", control(&lab));
    // A flood from a refused user: each connection closed at once, counted.
    let (mut refused_flood, said) = hold_connections(&lab.paths.socket, 300, Some(daemon));
    assert!(said.starts_with("held"), "{said}");
    assert!(control(&lab)["refused_peer"].as_u64().unwrap() >= 300, "{}", control(&lab));
    let _ = refused_flood.kill();
    let _ = refused_flood.wait();

    // One root process holding more connections than the agent has file
    // descriptors, idle: it keeps only its own few. (The agent's limit is
    // lowered to 2048 for the test: the flooder cannot go beyond the
    // machine's own limit.)
    let nofile = 2048;
    let out = Command::new("prlimit")
        .arg(format!("--pid={}", lab.agent_pid().unwrap()))
        .arg(format!("--nofile={nofile}:{nofile}"))
        .output()
        .expect("prlimit (util-linux)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (mut flood, said) = hold_connections(&lab.paths.socket, nofile + 2000, None);
    eprintln!("root flood of {} connections: {said}", nofile + 2000);
    assert_eq!(said.trim(), format!("held {}", nofile + 2000), "every connection was accepted");
    let st = lab.status_json().expect("coresvc status under the flood");
    let c = &st["control"];
    assert!(c["active"].as_u64().unwrap() <= 8, "{c}");
    assert!(c["evicted"].as_u64().unwrap() >= nofile as u64, "{c}");
    // An allowed user's flood, meanwhile: the same; both still get in.
    let (mut user_flood, said) = hold_connections(&lab.paths.socket, 200, Some(nobody));
    eprintln!("nobody's flood of 200: {said}");
    let out = status_as(&lab, nobody);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let st = lab.status_json().expect("coresvc status under both floods");
    eprintln!("control: {}", st["control"]);
    let fds = std::fs::read_dir(format!("/proc/{}/fd", lab.agent_pid().unwrap())).unwrap().count();
    assert!(fds < 500, "the agent holds {fds} file descriptors");
    for c in [&mut flood, &mut user_flood] {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Every thread's capability sets and no_new_privs: (tid, effective,
/// permitted, inheritable, bounding, ambient, no_new_privs).
fn thread_caps(pid: u32) -> Vec<(String, [u64; 6])> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let tid = t.unwrap().file_name().to_string_lossy().to_string();
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")) else { continue };
        let f = |name: &str| {
            let v = text.lines().find_map(|l| l.strip_prefix(name)).unwrap().trim();
            u64::from_str_radix(v, 16).unwrap()
        };
        out.push((tid, [f("CapEff:"), f("CapPrm:"), f("CapInh:"), f("CapBnd:"), f("CapAmb:"), f("NoNewPrivs:")]));
    }
    out
}

/// Issue 17 item 17: once started, every thread of the agent holds only
/// CAP_NET_ADMIN, CAP_NET_RAW and CAP_NET_BIND_SERVICE (effective,
/// permitted and bounding; nothing inheritable or ambient; no_new_privs),
/// and still does what it must while running: a reload restarting DHCP on
/// new threads (port 67 again), a lease, an interface that returns getting
/// its programs and address back.
#[test]
fn after_start_every_thread_keeps_only_the_network_capabilities() {
    // (CAP_BPF too before Linux 6.5: see privileges.rs.)
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let v: Vec<u32> = release.split(['.', '-']).take(2).map(|p| p.trim().parse().unwrap()).collect();
    let kept: u64 = 1 << 10 | 1 << 12 | 1 << 13 | if (v[0], v[1]) < (6, 5) { 1 << 39 } else { 0 };
    let (mut lab, cfg) = lab_with(|s| s);
    let pid = lab.agent_pid().unwrap();
    let check = |when: &str| {
        let caps = thread_caps(pid);
        assert!(caps.len() > 2, "{caps:?}");
        for (tid, c) in &caps {
            assert_eq!(*c, [kept, kept, 0, kept, 0, 1], "{when}: thread {tid}: eff, prm, inh, bnd, amb, nnp {c:x?}");
        }
        caps.len()
    };
    let threads = check("after start");
    assert!(lab.log().contains("every other capability dropped"), "{}", lab.log_tail(10));
    // A reload that restarts DHCP (new sockets on port 67, new threads).
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("lease_time = \"1h\"", "lease_time = \"2h\"")).unwrap();
    let out = lab.coresvc(["reload"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut c = lab.udhcpc("dvnt-client", "caps", &[]).unwrap();
    let ev = c.wait_for(&["bound"], 1, Duration::from_secs(20)).unwrap();
    assert_eq!(ev.vars.get("lease").map(String::as_str), Some("7200"), "{ev:?}");
    drop(c);
    // An interface that goes and comes back: XDP and TC links, address.
    lab.unlink("dvntm-client").unwrap();
    let waiting = |lab: &Lab| {
        lab.status_json().unwrap()["dataplane"]["waiting"].as_array().unwrap().iter().any(|w| w == "dvntm0")
    };
    let until = |f: &dyn Fn() -> bool| {
        let start = std::time::Instant::now();
        while !f() {
            assert!(start.elapsed() < Duration::from_secs(15), "not within 15 s:\n{}", lab.log_tail(20));
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    until(&|| waiting(&lab));
    lab.relink("dvntm-client").unwrap();
    until(&|| !waiting(&lab));
    let ping = lab.exec("dvntm-client", ["ping", "-c", "1", "-W", "2", "10.30.0.1"]).unwrap();
    assert!(ping.status.success(), "address back:\n{}", lab.log_tail(20));
    let out = lab.exec("gw", ["ip", "-d", "link", "show", "dvntm0"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("prog/xdp"), "XDP back");
    assert!(!lab.log().contains("Operation not permitted"), "{}", lab.log_tail(30));
    let now = check("after the reload and the link's return");
    eprintln!("{threads} threads after start, {now} now");
    lab.stop_agent(libc::SIGTERM, Duration::from_secs(10)).unwrap();
}

/// The values of `key=` lines in the unit, split on whitespace.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .flat_map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

/// The system calls of a `SystemCallFilter=` group (or one call), expanded
/// by systemd-analyze itself.
fn syscalls_of(item: &str, out: &mut std::collections::BTreeSet<String>) {
    if !item.starts_with('@') {
        out.insert(item.to_string());
        return;
    }
    let o = Command::new("systemd-analyze").args(["syscall-filter", item]).output().expect("systemd-analyze");
    for l in String::from_utf8_lossy(&o.stdout).lines().skip(1) {
        let l = l.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        syscalls_of(l, out);
    }
}

/// Issue 17 item 17: the agent starts and serves inside the unit's limits
/// (systemd is not PID 1 here, so they are applied one by one): the
/// unit's CapabilityBoundingSet (setpriv; CAP_SYS_ADMIN and
/// CAP_SYS_RESOURCE are no longer in it), NoNewPrivileges, UMask=0077, and
/// every system call and socket family it makes (seen by strace, while it
/// leases, answers DNS and reloads) is one the unit's SystemCallFilter and
/// RestrictAddressFamilies allow (expanded by systemd-analyze). The
/// unit's exposure (`systemd-analyze security`) is below 5.0.
#[test]
fn the_agent_starts_and_serves_inside_the_units_limits() {
    let root = coresvc_lab::workspace_root();
    let unit = std::fs::read_to_string(root.join("dist/coresvc.service")).unwrap();
    let bin = coresvc_lab::agent_bin().unwrap();
    // Exposure.
    let dir = std::env::temp_dir().join(format!("coresvc-unit-sec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("coresvc.service"), unit.replace("/usr/local/bin/coresvc", &bin.display().to_string()))
        .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(dir.join("coresvc.service"))
        .output()
        .expect("systemd-analyze");
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stdout);
    let level: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for coresvc.service: ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}{}", String::from_utf8_lossy(&out.stderr)));
    eprintln!("systemd-analyze security: exposure {level}");
    assert!(level < 5.0, "exposure {level}:\n{text}");

    // The agent under the unit's capability bounding set, NoNewPrivileges
    // and UMask, in the lab's gateway namespace (its own bpffs: ip netns
    // exec gives it a /sys of its own), traced.
    let lab = Lab::for_test().unwrap();
    let cfg = lab.config_with("coresvc.toml", |s| s).unwrap();
    let caps: Vec<String> = unit_values(&unit, "CapabilityBoundingSet")
        .iter()
        .map(|c| format!("+{}", c.to_lowercase().trim_start_matches("cap_")))
        .collect();
    assert!(!caps.iter().any(|c| c == "+sys_admin"), "{caps:?}");
    assert_eq!(unit_values(&unit, "UMask"), ["0077"]);
    assert_eq!(unit_values(&unit, "NoNewPrivileges"), ["yes"]);
    let trace = lab.paths.run_dir.join("strace.out");
    let mut agent = Command::new("ip")
        .args(["netns", "exec", &lab.gw_ns(), "sh", "-c"])
        .arg("mount -t bpf bpf /sys/fs/bpf && umask 0077 && exec \"$@\"")
        .arg("sh")
        .args(["strace", "-f", "-qq", "-o"])
        .arg(&trace)
        .args(["setpriv", &format!("--bounding-set=-all,{}", caps.join(",")), "--inh-caps=-all", "--no-new-privs"])
        .arg(&bin)
        .args(["run", "--config"])
        .arg(&cfg)
        .args(["--pin-dir", "/sys/fs/bpf/coresvc", "--control-socket"])
        .arg(&lab.paths.socket)
        .arg("--state-dir")
        .arg(&lab.paths.state_dir)
        .stdout(std::fs::File::create(&lab.paths.log).unwrap())
        .stderr(std::fs::OpenOptions::new().append(true).open(&lab.paths.log).unwrap())
        .spawn()
        .expect("ip, strace, setpriv");
    let start = std::time::Instant::now();
    let status = loop {
        if let Ok(st) = lab.status_json() {
            break st;
        }
        if let Some(st) = agent.try_wait().unwrap() {
            panic!("coresvc exited under the unit's limits ({st}):\n{}", lab.log_tail(30));
        }
        assert!(start.elapsed() < Duration::from_secs(60), "coresvc did not start:\n{}", lab.log_tail(30));
        std::thread::sleep(Duration::from_millis(200));
    };
    let pid = status["pid"].as_u64().unwrap() as i32;
    // It serves: a lease, DNS, a reload (SIGHUP, as systemctl reload).
    let mut c = lab.udhcpc("dvnt-client", "unit", &[]).unwrap();
    c.wait_for(&["bound"], 1, Duration::from_secs(30)).unwrap();
    drop(c);
    let dig = lab.exec("dvnt-client", ["dig", "+short", "@10.20.0.1", "artifacts.dvnt.deevnet.net"]).unwrap();
    assert!(!String::from_utf8_lossy(&dig.stdout).trim().is_empty(), "DNS answers");
    // SAFETY: kill(2) on the agent's pid.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    std::thread::sleep(Duration::from_secs(1));
    assert!(lab.log().contains("SIGHUP: reloading"), "{}", lab.log_tail(10));
    // Files it made under UMask=0077.
    use std::os::unix::fs::MetadataExt as _;
    let journal = std::fs::metadata(lab.paths.state_dir.join("dhcp-leases.journal")).unwrap();
    assert_eq!(journal.mode() & 0o077, 0, "the lease journal is private");
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let st = agent.wait().unwrap();
    assert!(st.success(), "{st}:\n{}", lab.log_tail(20));
    assert!(!lab.log().contains("ERROR"), "{}", lab.log_tail(30));

    // Every system call and socket family it used is allowed by the unit.
    let mut allowed = std::collections::BTreeSet::new();
    let mut denied = std::collections::BTreeSet::new();
    for v in unit_values(&unit, "SystemCallFilter") {
        match v.strip_prefix('~') {
            Some(d) => syscalls_of(d, &mut denied),
            None => syscalls_of(&v, &mut allowed),
        }
    }
    // (A `~` list names further groups; their members stay denied.)
    let families = unit_values(&unit, "RestrictAddressFamilies");
    let text = std::fs::read_to_string(&trace).unwrap();
    let mut used = std::collections::BTreeSet::new();
    let mut used_families = std::collections::BTreeSet::new();
    for l in text.lines() {
        let Some(call) = l.split_once(' ').map(|(_, rest)| rest.trim_start()) else { continue };
        if call.starts_with("<...") || call.starts_with("---") || call.starts_with("+++") {
            continue;
        }
        let Some(name) = call
            .split('(')
            .next()
            .filter(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
        else {
            continue;
        };
        used.insert(name.to_string());
        if name == "socket" || name == "socketpair" {
            let fam = call.trim_start_matches(name).trim_start_matches('(').split([',', ')']).next().unwrap_or("");
            used_families.insert(fam.to_string());
        }
    }
    // (strace sees the exec of setpriv and coresvc's start before limits
    // that systemd would set up before the exec: execve itself is allowed.)
    let outside: Vec<&String> = used.iter().filter(|s| !allowed.contains(*s) || denied.contains(*s)).collect();
    assert!(used.len() > 30, "{used:?}");
    assert!(outside.is_empty(), "system calls the unit's SystemCallFilter refuses: {outside:?}");
    let bad: Vec<&String> = used_families.iter().filter(|f| !families.contains(*f)).collect();
    assert!(bad.is_empty(), "socket families outside RestrictAddressFamilies={families:?}: {bad:?}");
    eprintln!("{} distinct system calls, families {used_families:?}", used.len());
}
