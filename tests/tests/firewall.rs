//! Routing, the stateful firewall and the fast path in the lab, with real
//! traffic (ping, curl against python's http.server, socat UDP echo).
//!
//! NAT is not part of these tests: the upstream node gets a route back to the
//! segments, as a routed uplink would have.

use std::{path::PathBuf, process::Command, time::Duration};

use coresvc_lab::{AgentOpts, Lab};
use serde_json::Value;

fn lab_with(edit: impl FnOnce(String) -> String) -> (Lab, PathBuf) {
    let mut lab = Lab::for_test().unwrap();
    let cfg = lab.config_with("coresvc.toml", edit).unwrap();
    lab.start_agent(&AgentOpts::new(&cfg)).unwrap();
    // A routed uplink: the upstream knows the way back to the segments.
    coresvc_lab::run(&mut lab.cmd("upstream", ["ip", "route", "add", "10.0.0.0/8", "via", "192.0.2.2"])).unwrap();
    (lab, cfg)
}

/// A directory with `name` of `size` bytes of varied content.
fn served_file(lab: &Lab, name: &str, size: usize) -> PathBuf {
    let dir = lab.paths.run_dir.join("www");
    std::fs::create_dir_all(&dir).unwrap();
    let data: Vec<u8> = (0..size).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(dir.join(name), data).unwrap();
    dir
}

/// `curl` on `node`; returns curl's exit code (0 ok, 28 timeout, 7 refused).
fn curl(lab: &Lab, node: &str, url: &str, extra: &[&str]) -> i32 {
    let mut args = vec!["curl", "-s", "-o", "/dev/null", "--max-time", "3"];
    args.extend_from_slice(extra);
    args.push(url);
    lab.exec(node, args).unwrap().status.code().unwrap_or(-1)
}

fn ping(lab: &Lab, from: &str, to: &str) -> bool {
    lab.exec(from, ["ping", "-c", "2", "-i", "0.2", "-W", "1", to]).unwrap().status.success()
}

fn rule<'a>(rules: &'a Value, name: &str) -> &'a Value {
    rules.as_array().unwrap().iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("no rule {name}: {rules:#}"))
}

fn rules(lab: &Lab) -> Value {
    let out = lab.coresvc(["rules", "--json"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn drop_count(lab: &Lab, name: &str) -> u64 {
    let s = lab.status_json().unwrap();
    s["dataplane"]["drop_reasons"].as_array().unwrap().iter().find(|r| r["name"] == name).unwrap()["packets"]
        .as_u64()
        .unwrap()
}

fn redirects(lab: &Lab, iface: &str) -> u64 {
    let s = lab.status_json().unwrap();
    s["dataplane"]["interfaces"].as_array().unwrap().iter().find(|i| i["name"] == iface).unwrap()["verdicts"]["redirect"]
        ["packets"]
        .as_u64()
        .unwrap()
}

#[test]
fn policies_hold_and_replies_of_allowed_flows_come_back() {
    let (lab, _) = lab_with(|s| s);
    let www = served_file(&lab, "f", 1000);
    let _prov = lab.http_server("provisioner", "10.10.0.10", 80, &www).unwrap();
    let _up = lab.http_server("upstream", "192.0.2.1", 80, &www).unwrap();
    let _client = lab.http_server("dvnt-client", "10.20.0.50", 80, &www).unwrap();
    let _echo = lab.udp_echo("upstream", "192.0.2.1", 7).unwrap();

    // Allowed by rules: sites reach artifacts on the management segment.
    assert_eq!(curl(&lab, "dvnt-client", "http://10.10.0.10/f", &[]), 0);
    // Management reaches the sites; ping from a site to mgmt is allowed.
    assert!(ping(&lab, "provisioner", "10.20.0.50"));
    assert!(ping(&lab, "dvntm-client", "10.10.0.10"));
    // Denied by the default between segments: dropped, not refused.
    assert!(!ping(&lab, "dvnt-client", "10.30.0.50"));
    assert_eq!(curl(&lab, "dvntm-client", "http://10.20.0.50/f", &[]), 28, "dropped, so curl times out");
    // Egress is allowed and the replies come back; the uplink cannot start flows in.
    assert_eq!(curl(&lab, "dvnt-client", "http://192.0.2.1/f", &[]), 0);
    assert_eq!(curl(&lab, "upstream", "http://10.20.0.50/f", &[]), 28);
    // UDP: the echo's reply is let in as part of the flow.
    let out = lab.exec("dvnt-client", ["sh", "-c", "echo coresvc | socat -T2 - UDP4:192.0.2.1:7"]).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "coresvc");

    let r = rules(&lab);
    assert!(rule(&r, "sites-to-artifacts")["packets"].as_u64().unwrap() >= 5);
    assert!(rule(&r, "mgmt-to-sites")["packets"].as_u64().unwrap() >= 2);
    assert!(rule(&r, "default:inter-segment")["packets"].as_u64().unwrap() >= 2);
    assert!(rule(&r, "default:inbound")["packets"].as_u64().unwrap() >= 1);
    assert!(rule(&r, "default:egress")["packets"].as_u64().unwrap() >= 2);
    assert!(drop_count(&lab, "firewall-deny") >= 3);
    // The human views work too.
    for cmd in [&["rules"][..], &["flows"][..], &["status"][..]] {
        let out = lab.coresvc(cmd).unwrap();
        assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn a_flow_started_on_the_stack_continues_on_the_fast_path_without_loss() {
    let (lab, _) = lab_with(|s| s);
    let www = served_file(&lab, "big", 30 << 20);
    let _prov = lab.http_server("provisioner", "10.10.0.10", 80, &www).unwrap();
    let before = redirects(&lab, "dvnt0") + redirects(&lab, "mgmt0");
    let dst = lab.paths.run_dir.join("got");
    let out = lab
        .exec("dvnt-client", ["curl", "-s", "--max-time", "60", "-o", dst.to_str().unwrap(), "http://10.10.0.10/big"])
        .unwrap();
    assert!(out.status.success(), "download failed");
    assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(www.join("big")).unwrap(), "identical bytes");
    let after = redirects(&lab, "dvnt0") + redirects(&lab, "mgmt0");
    assert!(after - before > 1000, "the bulk of the transfer was forwarded from XDP ({} redirects)", after - before);
    // The connection was tracked, and is listed.
    let out = lab.coresvc(["flows", "--json"]).unwrap();
    let flows: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        flows
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["dst"] == "10.10.0.10:80" && f["packets_reply"].as_u64().unwrap() > 1000),
        "{flows:#}"
    );
}

#[test]
fn reload_swaps_rules_and_keeps_connections_that_are_still_allowed() {
    let (lab, cfg) = lab_with(|s| s);
    let www = served_file(&lab, "big", 12 << 20);
    let _prov = lab.http_server("provisioner", "10.10.0.10", 80, &www).unwrap();
    assert!(ping(&lab, "dvntm-client", "10.10.0.10"));
    let gen0 = lab.status_json().unwrap()["dataplane"]["firewall"]["generation"].as_u64().unwrap();

    // A slow download runs while the rules change (ping to mgmt is withdrawn).
    let dst = lab.paths.run_dir.join("got");
    let mut dl = lab
        .cmd(
            "dvnt-client",
            [
                "curl",
                "-s",
                "--limit-rate",
                "4M",
                "--max-time",
                "30",
                "-o",
                dst.to_str().unwrap(),
                "http://10.10.0.10/big",
            ],
        )
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("name = \"sites-ping-mgmt\"", "name = \"sites-ping-mgmt-off\"")
            .replace("proto = \"icmp\"\naction = \"allow\"", "proto = \"icmp\"\naction = \"deny\""),
    )
    .unwrap();
    let out = lab.coresvc(["reload"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("firewall:"));
    assert!(dl.wait().unwrap().success(), "the download survived the reload");
    assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(www.join("big")).unwrap());
    assert!(!ping(&lab, "dvntm-client", "10.10.0.10"), "the new rules are in force");
    let gen1 = lab.status_json().unwrap()["dataplane"]["firewall"]["generation"].as_u64().unwrap();
    assert_eq!(gen1, gen0 + 1);

    // A reload that withdraws the allowing rule cuts the connection: once
    // bytes flow, reload, and the file stops growing.
    let dst2 = lab.paths.run_dir.join("got2");
    let mut dl = lab
        .cmd(
            "dvnt-client",
            [
                "curl",
                "-s",
                "--limit-rate",
                "1M",
                "--max-time",
                "30",
                "-o",
                dst2.to_str().unwrap(),
                "http://10.10.0.10/big",
            ],
        )
        .spawn()
        .unwrap();
    let size = |p: &PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    wait_until(|| size(&dst2) > 100_000);
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("ports = [80, 443, \"8000-8080\"]", "ports = [443]")).unwrap();
    assert!(lab.coresvc(["reload"]).unwrap().status.success());
    let r = rules(&lab);
    let ports: Vec<&str> = r
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["name"] == "sites-to-artifacts")
        .map(|x| x["ports"].as_str().unwrap())
        .collect();
    assert_eq!(ports, ["443"], "{r:#}");
    // What the client's socket had already received still drains into the
    // file (curl's rate limit paces it): wait until the socket's receive
    // queue is empty and the file stopped growing.
    let recv_q = || {
        let out = lab.exec("dvnt-client", ["ss", "-Htn", "state", "established", "dst", "10.10.0.10"]).unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.split_whitespace().next().and_then(|q| q.parse::<u64>().ok()).unwrap_or(0)
    };
    let mut stalled_at = size(&dst2);
    for _ in 0..60 {
        std::thread::sleep(Duration::from_secs(1));
        let now = size(&dst2);
        if now == stalled_at && recv_q() == 0 {
            break;
        }
        stalled_at = now;
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(size(&dst2), stalled_at, "no byte of the revoked connection got through");
    assert!(stalled_at < 12 << 20, "the revoked download never completes");
    let _ = dl.kill();
    let _ = dl.wait();
    assert!(drop_count(&lab, "firewall-revoked") >= 1);

    // A bad file changes nothing.
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg).unwrap()
            + "\n[[firewall.rule]]\nname = \"x\"\nfrom = \"nowhere\"\nto = \"any\"\naction = \"allow\"\n",
    )
    .unwrap();
    let out = lab.coresvc(["reload"]).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("firewall.rule"), "{}", String::from_utf8_lossy(&out.stderr));
    let gen2 = lab.status_json().unwrap()["dataplane"]["firewall"]["generation"].as_u64().unwrap();
    assert_eq!(gen2, gen1 + 1, "only the good reload bumped the generation");
}

fn gw_routes(lab: &Lab) -> String {
    let out = Command::new("ip").args(["-n", &lab.gw_ns(), "route", "show"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn coresvc_removes_only_the_routes_it_added() {
    let (lab, cfg) = lab_with(|s| {
        s.replace(
            "# [[route]]\n# prefix = \"10.99.0.0/16\"\n# via = \"10.10.0.254\"",
            "[[route]]\nprefix = \"10.99.0.0/16\"\nvia = \"10.10.0.254\"",
        )
    });
    let r = gw_routes(&lab);
    assert!(r.contains("10.99.0.0/16 via 10.10.0.254 dev mgmt0 proto 197"), "{r}");
    assert!(r.contains("default via 192.0.2.1 dev up0 proto 197"), "{r}");
    let out = Command::new("ip").args(["-n", &lab.gw_ns(), "-o", "addr", "show", "dev", "mgmt0"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("10.10.0.1/24"), "the agent assigned the gateway address");
    // Forwarding is on for coresvc's interfaces, never namespace-wide.
    let fwd = lab.exec("gw", ["sysctl", "-n", "net.ipv4.conf.mgmt0.forwarding", "net.ipv4.ip_forward"]).unwrap();
    assert_eq!(String::from_utf8_lossy(&fwd.stdout).split_whitespace().collect::<Vec<_>>(), ["1", "0"]);
    // Somebody else's route.
    coresvc_lab::run(&mut lab.cmd("gw", ["ip", "route", "add", "10.98.0.0/16", "via", "10.10.0.254"])).unwrap();
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("[[route]]\nprefix = \"10.99.0.0/16\"\nvia = \"10.10.0.254\"", "")).unwrap();
    let out = lab.coresvc(["reload"]).unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("routing: removed route 10.99.0.0/16"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let r = gw_routes(&lab);
    assert!(!r.contains("10.99.0.0/16"), "{r}");
    assert!(r.contains("10.98.0.0/16 via 10.10.0.254"), "never touches routes it did not create: {r}");
}

#[test]
fn an_interface_that_disappears_and_returns_gets_programs_and_address_back() {
    let (lab, _) = lab_with(|s| s);
    assert!(ping(&lab, "dvnt-client", "10.20.0.1"));
    lab.unlink("dvnt-client").unwrap();
    let waiting =
        |lab: &Lab| lab.status_json().unwrap()["dataplane"]["waiting"].as_array().unwrap().iter().any(|w| w == "dvnt0");
    wait_until(|| waiting(&lab));
    lab.relink("dvnt-client").unwrap();
    wait_until(|| !waiting(&lab));
    assert!(ping(&lab, "dvnt-client", "10.20.0.1"), "address back");
    let out = lab.exec("gw", ["ip", "-d", "link", "show", "dvnt0"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("prog/xdp"), "XDP back");
    assert!(ping(&lab, "provisioner", "10.20.0.50"), "forwarding through it again");
}

fn wait_until(mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(10), "condition not met within 10 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}
