//! The first slice end to end, in a namespace lab per test: the real
//! `coresvc` binary, real `ping`, `bpftool` and the CLI.

use std::{path::Path, process::Command, time::Duration};

use coresvc_lab::{AgentOpts, Lab, frames::Udp4};
use serde_json::Value;

fn started_lab() -> Lab {
    let mut lab = Lab::for_test().expect("lab up");
    lab.start_agent(&AgentOpts::new(coresvc_lab::default_config())).expect("agent start");
    lab
}

fn iface<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["dataplane"]["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in status: {status:#}"))
}

fn packets(status: &Value, name: &str, verdict: &str) -> u64 {
    iface(status, name)["verdicts"][verdict]["packets"].as_u64().unwrap()
}

/// Sum over CPUs of `packets` for the interface with stats slot `slot` and
/// `verdict` in `bpftool map dump pinned` (index `slot * 8 + verdict`).
fn bpftool_packets(pin_dir: &Path, slot: u64, verdict: u64) -> u64 {
    let out = Command::new("bpftool")
        .args(["--json", "map", "dump", "pinned"])
        .arg(pin_dir.join("if_stats"))
        .output()
        .expect("bpftool (installed by cargo xtask setup)");
    assert!(out.status.success(), "bpftool: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["formatted"]["key"] == slot * 8 + verdict)
        .flat_map(|e| e["formatted"]["values"].as_array().unwrap().iter())
        .map(|c| c["value"]["packets"].as_u64().unwrap())
        .sum()
}

fn ping(lab: &Lab, from: &str, to: &str, count: u32) {
    let out = lab.exec(from, ["ping", "-c", &count.to_string(), "-i", "0.05", "-W", "2", to]).unwrap();
    assert!(out.status.success(), "ping {from} -> {to}: {}", String::from_utf8_lossy(&out.stdout));
}

fn xdp_attached(lab: &Lab, ifname: &str) -> bool {
    let out = lab.exec(&lab.topo.gateway.clone(), ["ip", "-d", "link", "show", ifname]).unwrap();
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

#[test]
fn ping_across_segments_is_counted_in_status_and_bpftool_and_down_leaves_nothing() {
    let lab = started_lab();
    let s0 = lab.status_json().unwrap();
    for i in s0["dataplane"]["interfaces"].as_array().unwrap() {
        assert!(i["mode"] == "native" || i["mode"] == "generic", "{i}");
    }
    let names: Vec<&str> =
        s0["dataplane"]["interfaces"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["mgmt0", "dvnt0", "dvntm0", "up0"]);

    ping(&lab, "provisioner", "10.20.0.50", 10);
    ping(&lab, "dvntm-client", "10.10.0.10", 5);

    let s1 = lab.status_json().unwrap();
    // Requests enter mgmt0 and dvntm0; replies enter dvnt0 and mgmt0.
    assert!(packets(&s1, "mgmt0", "pass") >= packets(&s0, "mgmt0", "pass") + 15, "{s1:#}");
    assert!(packets(&s1, "dvnt0", "pass") >= packets(&s0, "dvnt0", "pass") + 10, "{s1:#}");
    assert!(packets(&s1, "dvntm0", "pass") >= packets(&s0, "dvntm0", "pass") + 5, "{s1:#}");
    assert!(iface(&s1, "mgmt0")["verdicts"]["pass"]["bytes"].as_u64().unwrap() > 15 * 98);

    // bpftool reads the same pinned map (key: the interface's slot * 8 + verdict).
    for name in ["mgmt0", "dvnt0", "dvntm0"] {
        let slot = iface(&s1, name)["stats_slot"].as_u64().unwrap();
        let before = packets(&lab.status_json().unwrap(), name, "pass");
        let seen = bpftool_packets(&lab.paths.pin_dir, slot, 2);
        let after = packets(&lab.status_json().unwrap(), name, "pass");
        assert!(before <= seen && seen <= after, "{name}: status {before}..{after}, bpftool {seen}");
    }

    let prefix = lab.prefix.clone();
    let pin_dir = lab.paths.pin_dir.clone();
    let run_dir = lab.paths.run_dir.clone();
    lab.down().unwrap();
    let netns = String::from_utf8(Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).unwrap();
    assert!(!netns.contains(&prefix), "namespaces left behind: {netns}");
    assert!(!pin_dir.exists(), "pins left behind in {}", pin_dir.display());
    assert!(!run_dir.exists(), "run directory left behind");
    // The links lived only inside the lab's namespaces; the host has none of them.
    let host_links = String::from_utf8(Command::new("ip").args(["-o", "link"]).output().unwrap().stdout).unwrap();
    for l in ["mgmt0", "dvnt0", "dvntm0", "up0"] {
        assert!(!host_links.contains(&format!(": {l}@")), "{l} in the host namespace");
    }
}

#[test]
fn a_malformed_packet_is_dropped_counted_by_reason_and_logged_by_the_program() {
    let lab = started_lab();
    let gw_mac = mac_of(&lab, "gw", "mgmt0");
    let client_mac = mac_of(&lab, "provisioner", "eth0");
    let frame = Udp4 {
        src_mac: client_mac,
        dst_mac: gw_mac,
        src: "10.10.0.10".parse().unwrap(),
        dst: "10.10.0.1".parse().unwrap(),
        ..Default::default()
    }
    .build();
    let bad = coresvc_lab::frames::corrupt_ip_checksum(frame.clone());
    lab.send_frame("provisioner", "eth0", &bad).unwrap();
    lab.send_frame("provisioner", "eth0", &bad).unwrap();

    let s = wait_for(|| {
        let s = lab.status_json().unwrap();
        (packets(&s, "mgmt0", "drop") >= 2).then_some(s)
    });
    assert_eq!(packets(&s, "mgmt0", "drop"), 2);
    let reason = s["dataplane"]["drop_reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "ipv4-bad-checksum")
        .unwrap()
        .clone();
    assert_eq!(reason["packets"], 2);
    assert_eq!(reason["bytes"], 2 * bad.len() as u64);

    // The program's own log line (aya-log), once per interface and verdict.
    let ifindex = iface(&s, "mgmt0")["ifindex"].as_u64().unwrap();
    let needle = format!("first packet with verdict 1 on ifindex {ifindex}");
    wait_for(|| lab.log().contains(&needle).then_some(()));

    // The human status shows the reason too.
    let out = lab.coresvc(["status"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ipv4-bad-checksum (3)"), "{text}");
}

#[test]
fn kill_9_keeps_the_programs_running_and_a_restart_adopts_maps_and_links() {
    let mut lab = started_lab();
    ping(&lab, "provisioner", "10.20.0.50", 3);
    let s = lab.status_json().unwrap();
    let slot = iface(&s, "mgmt0")["stats_slot"].as_u64().unwrap();
    let before = packets(&s, "mgmt0", "pass");

    lab.stop_agent(libc::SIGKILL, Duration::from_secs(5)).unwrap();
    assert!(xdp_attached(&lab, "mgmt0"), "the pinned link keeps XDP attached without the agent");
    ping(&lab, "provisioner", "10.20.0.50", 5);
    let while_dead = bpftool_packets(&lab.paths.pin_dir, slot, 2);
    assert!(while_dead >= before + 5, "counted while the agent was dead: {before} -> {while_dead}");

    lab.start_agent(&AgentOpts::new(coresvc_lab::default_config())).unwrap();
    let s = lab.status_json().unwrap();
    assert_eq!(s["dataplane"]["adopted_maps"], true);
    assert_eq!(iface(&s, "mgmt0")["adopted"], true);
    assert!(packets(&s, "mgmt0", "pass") >= while_dead, "counters carried over");
    assert!(lab.log().contains("adopted pinned link"), "{}", lab.log_tail(20));

    // A clean stop (agent.on_stop = "keep", the default) leaves the
    // programs attached and counting, as a crash does; the next start adopts.
    let st = lab.stop_agent(libc::SIGTERM, Duration::from_secs(10)).unwrap().unwrap();
    assert!(st.success(), "clean exit: {st}");
    assert!(lab.log().contains("programs stay attached"), "{}", lab.log_tail(10));
    for l in ["mgmt0", "dvnt0", "dvntm0", "up0"] {
        assert!(xdp_attached(&lab, l), "{l} lost XDP at a clean stop with on_stop = keep");
    }
    let stopped = bpftool_packets(&lab.paths.pin_dir, slot, 2);
    ping(&lab, "provisioner", "10.20.0.50", 3);
    assert!(bpftool_packets(&lab.paths.pin_dir, slot, 2) >= stopped + 3, "counted while stopped");
    let cfg = lab.config_with("detach.toml", |s| s.replace("on_stop = \"keep\"", "on_stop = \"detach\"")).unwrap();
    lab.start_agent(&AgentOpts::new(&cfg)).unwrap();
    assert_eq!(iface(&lab.status_json().unwrap(), "mgmt0")["adopted"], true);

    // With on_stop = "detach" a clean stop detaches every program; the maps
    // stay pinned.
    let st = lab.stop_agent(libc::SIGTERM, Duration::from_secs(10)).unwrap().unwrap();
    assert!(st.success(), "clean exit: {st}");
    for l in ["mgmt0", "dvnt0", "dvntm0", "up0"] {
        assert!(!xdp_attached(&lab, l), "{l} still has XDP after a clean stop with on_stop = detach");
    }
    assert!(lab.paths.pin_dir.join("if_stats").exists());
    for sub in ["links/xdp", "links/tc-egress"] {
        assert_eq!(std::fs::read_dir(lab.paths.pin_dir.join(sub)).unwrap().count(), 0, "{sub}");
    }
}

#[test]
fn pinned_maps_of_another_schema_version_are_refused() {
    let mut lab = started_lab();
    lab.stop_agent(libc::SIGTERM, Duration::from_secs(10)).unwrap();
    // Pretend a build with schema version 99 created the maps.
    let out = Command::new("bpftool")
        .args(["map", "update", "pinned"])
        .arg(lab.paths.pin_dir.join("settings"))
        .args(["key", "0", "0", "0", "0", "value", "99"])
        .args(vec!["0"; std::mem::size_of::<coresvc_maps_schema::Settings>() - 1])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log_before = lab.log().len();
    let err = lab.start_agent(&AgentOpts::new(coresvc_lab::default_config())).unwrap_err();
    let msg = format!("{err:#}");
    let ours = format!("uses version {}", coresvc_maps_schema::SCHEMA_VERSION);
    assert!(msg.contains("schema version 99") && msg.contains(&ours), "{msg}");
    assert!(msg.contains("coresvc unpin"), "says how to recover: {msg}");
    // Nothing changed: the programs of the stopped agent (on_stop = keep)
    // are still the ones attached, with no link of the refused start.
    assert!(xdp_attached(&lab, "mgmt0"), "the earlier programs were left alone:\n{}", lab.log_tail(40));
    let refused_run = &lab.log()[log_before..];
    assert!(!refused_run.contains("attached"), "the refused start attached nothing:\n{refused_run}");
    // The way out the message names takes the data path down (run where
    // the programs are: it turns their interfaces' forwarding off first).
    let out = lab.unpin().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!xdp_attached(&lab, "mgmt0"), "unpin detaches the programs");
}

#[test]
fn pins_of_schema_5_are_refused_by_their_version_despite_a_shorter_settings_entry() {
    use coresvc::dataplane::pins::{PinError, check_existing};
    /// Removes the test's pins, also when it fails.
    struct Pins(std::path::PathBuf);
    impl Drop for Pins {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.0.join("settings"));
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let dir = Path::new("/sys/fs/bpf").join(format!("coresvc-test-v5-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _pins = Pins(dir.clone());
    let bpftool = |args: &[&str]| {
        let out = Command::new("bpftool").args(args).output().unwrap();
        assert!(out.status.success(), "bpftool {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let settings = dir.join("settings");
    let path = settings.to_str().unwrap();
    // Schema 5's settings entry: 32 bytes, the version first.
    bpftool(&["map", "create", path, "type", "array", "key", "4", "value", "32", "entries", "1", "name", "SETTINGS"]);
    let mut update = vec!["map", "update", "pinned", path, "key", "0", "0", "0", "0", "value", "5"];
    update.extend(["0"; 31]);
    bpftool(&update);
    match check_existing(&dir, 1024) {
        Err(e @ PinError::VersionMismatch { found: 5, .. }) => assert!(e.to_string().contains("coresvc unpin"), "{e}"),
        other => panic!("expected a version mismatch naming coresvc unpin: {other:?}"),
    }
}

#[test]
fn a_second_agent_on_the_same_socket_is_refused() {
    let lab = started_lab();
    let out = lab.agent_command(&coresvc_lab::default_config()).unwrap().output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another coresvc is running"), "{err}");
    assert!(lab.status_json().is_ok(), "the first agent still answers");
}

#[test]
fn a_bad_configuration_is_refused_before_anything_changes() {
    let lab = Lab::for_test().unwrap();
    let bad = lab.paths.run_dir.join("bad.toml");
    let text = std::fs::read_to_string(coresvc_lab::default_config()).unwrap().replacen(
        "gateway = \"10.20.0.1\"",
        "gateway = \"10.99.0.1\"",
        1,
    );
    std::fs::write(&bad, text).unwrap();
    let out = lab.agent_command(&bad).unwrap().output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:") && err.contains("segment[1].gateway") && err.contains("10.99.0.1"), "{err}");
    assert!(!lab.paths.pin_dir.exists(), "no pins created");
    assert!(!lab.paths.socket.exists(), "no socket created");
    for l in ["mgmt0", "dvnt0"] {
        assert!(!xdp_attached(&lab, l));
    }
}

fn mac_of(lab: &Lab, node: &str, ifname: &str) -> [u8; 6] {
    let out = lab.exec(node, ["cat", &format!("/sys/class/net/{ifname}/address")]).unwrap();
    let s = String::from_utf8(out.stdout).unwrap();
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(s.trim().split(':')) {
        *b = u8::from_str_radix(p, 16).unwrap();
    }
    mac
}

/// Polls `f` for up to 5 s.
fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "condition not met within 5 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}
