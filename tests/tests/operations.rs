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
