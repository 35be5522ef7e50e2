//! Authority modes in the lab (seed §3): live switches both ways while a
//! client keeps asking for leases, with "dedicated infrastructure" (dnsmasq
//! for DHCP and DNS, in a namespace of its own bridged onto the dvnt
//! segment) taking over in production mode; exclusive activation (another
//! DHCP server, or a host holding the gateway address, is detected and
//! named, and coresvc does not activate there); the mode survives restarts.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use coresvc_lab::{AgentOpts, Lab, dhcp::pcap_udp_payloads};
use serde_json::Value;

/// The lab's dvnt segment made a shared L2: dvnt-client's `eth0` and a veth
/// to `<lab>-infra` are bridged (`br0` holds 10.20.0.50), so a second server
/// there hears the same broadcasts as coresvc. Removed on drop.
struct Infra {
    ns: String,
    run_dir: PathBuf,
    dnsmasq: Option<Child>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Infra {
    fn new(lab: &Lab) -> Infra {
        let ns = format!("{}-infra", lab.prefix);
        ip(&["netns", "add", &ns]);
        let infra = Infra { ns: ns.clone(), run_dir: lab.paths.run_dir.clone(), dnsmasq: None };
        let dc = lab.ns("dvnt-client");
        ip(&["-n", &dc, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &dc, "addr", "del", "10.20.0.50/24", "dev", "eth0"]);
        ip(&["-n", &dc, "link", "set", "eth0", "master", "br0"]);
        ip(&["-n", &dc, "link", "add", "inf0", "type", "veth", "peer", "name", "eth0", "netns", &ns]);
        ip(&["-n", &dc, "link", "set", "inf0", "master", "br0"]);
        for l in ["inf0", "br0"] {
            ip(&["-n", &dc, "link", "set", l, "up"]);
        }
        ip(&["-n", &dc, "addr", "add", "10.20.0.50/24", "dev", "br0"]);
        ip(&["-n", &dc, "route", "replace", "default", "via", "10.20.0.1"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "addr", "add", "10.20.0.3/24", "dev", "eth0"]);
        infra
    }

    fn mac(&self) -> String {
        let out = Command::new("ip").args(["-n", &self.ns, "-o", "link", "show", "eth0"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.split("link/ether ").nth(1).unwrap().split_whitespace().next().unwrap().to_string()
    }

    /// dnsmasq as the production DHCP and DNS server of the segment: leases
    /// from 10.20.0.210-220, and its own answer for artifacts.
    fn start_dnsmasq(&mut self) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null"])
            .args(["--interface=eth0", "--bind-interfaces", "--no-resolv", "--no-hosts", "--user=root"])
            .args(["--dhcp-range=10.20.0.210,10.20.0.220,255.255.255.0,1h", "--dhcp-authoritative", "--no-ping"])
            .args(["--address=/artifacts.dvnt.deevnet.net/10.20.0.99", "--pid-file"])
            .arg(format!("--dhcp-leasefile={}", self.run_dir.join("infra.leases").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (package dnsmasq-base)");
        self.dnsmasq = Some(child);
        std::thread::sleep(Duration::from_millis(500));
    }

    fn stop_dnsmasq(&mut self) {
        if let Some(mut c) = self.dnsmasq.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Infra {
    fn drop(&mut self) {
        self.stop_dnsmasq();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

fn lab_with(edit: impl FnOnce(String) -> String) -> (Lab, PathBuf) {
    let lab = Lab::for_test().unwrap();
    let cfg = lab.config_with("coresvc.toml", edit).unwrap();
    (lab, cfg)
}

fn coresvc_ok(lab: &Lab, args: &[&str]) -> String {
    let out = lab.coresvc(args).unwrap();
    assert!(out.status.success(), "coresvc {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// One DHCP exchange by udhcpc on dvnt-client's bridge: (address, server).
fn lease(lab: &Lab) -> Option<(String, String)> {
    let script = lab.paths.run_dir.join("print-lease.sh");
    if !script.exists() {
        std::fs::write(&script, "#!/bin/sh\n[ \"$1\" = bound ] && echo \"lease $ip $serverid\"\nexit 0\n").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = lab
        .cmd("dvnt-client", ["udhcpc", "-f", "-q", "-n", "-i", "br0", "-t", "3", "-T", "1", "-A", "1", "-s"])
        .arg(&script)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("lease "))?;
    let mut it = line.split_whitespace().skip(1);
    Some((it.next()?.to_string(), it.next()?.to_string()))
}

fn dig(lab: &Lab, name: &str) -> String {
    let out = lab.exec("dvnt-client", ["dig", "+short", "+time=1", "+tries=1", "@10.20.0.1", name]).unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn gw_has(lab: &Lab, addr: &str) -> bool {
    let out = lab.exec("gw", ["ip", "-o", "-4", "addr", "show", "dev", "dvnt0"]).unwrap();
    String::from_utf8_lossy(&out.stdout).contains(&format!(" {addr}/"))
}

fn in_pool(addr: &str, lo: u8, hi: u8) -> bool {
    addr.strip_prefix("10.20.0.").and_then(|n| n.parse::<u8>().ok()).is_some_and(|n| (lo..=hi).contains(&n))
}

#[test]
fn authority_switches_live_both_ways_and_two_dhcp_servers_never_answer_together() {
    let (mut lab, cfg) = lab_with(|s| s);
    let mut infra = Infra::new(&lab);
    lab.start_agent(&AgentOpts::new(&cfg)).unwrap();
    // Every DHCP answer on the segment, as the client's bridge sees it.
    let pcap = lab.paths.run_dir.join("dhcp.pcap");
    let mut tcpdump = lab
        .cmd("dvnt-client", ["tcpdump", "-i", "br0", "-U", "-n", "-w"])
        .arg(&pcap)
        .args(["udp", "src", "port", "67"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));

    // Bootstrap: coresvc serves DHCP and DNS on 10.20.0.1.
    let (addr, server) = lease(&lab).expect("a lease in bootstrap mode");
    assert!(in_pool(&addr, 100, 199) && server == "10.20.0.1", "{addr} from {server}");
    let ours = dig(&lab, "artifacts.dvnt.deevnet.net");
    assert!(!ours.is_empty() && !ours.contains("10.20.0.99"), "{ours:?}");

    // A client that keeps asking through both switches.
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let asker = {
        let (stop, seen) = (stop.clone(), seen.clone());
        let lab_prefix = lab.prefix.clone();
        std::thread::spawn(move || {
            let lab = Lab::existing(&lab_prefix, coresvc_lab::LabPaths::private(&lab_prefix)).unwrap();
            while !stop.load(Ordering::Relaxed) {
                if let Some(l) = lease(&lab) {
                    seen.lock().unwrap().push(l);
                }
            }
            lab.persist();
        })
    };

    // To production: coresvc stops serving and releases the gateway address.
    let steps = coresvc_ok(&lab, &["authority", "production"]);
    for want in [
        "dns: XDP answer cache off",
        "dhcp: stopped",
        "dns: stopped",
        "released address 10.20.0.1/24",
        "took address 10.20.0.2/24",
        "persisted production",
    ] {
        assert!(steps.contains(want), "step {want:?} missing:\n{steps}");
    }
    let s = lab.status_json().unwrap();
    assert_eq!(s["authority"], "production");
    assert!(s["dhcp"].is_null() && s["dns"].is_null(), "{:#}", s);
    assert_eq!(s["dataplane"]["dns_cache"]["answering"], false, "the fast-path DNS cache is off");
    assert!(!gw_has(&lab, "10.20.0.1") && gw_has(&lab, "10.20.0.2"));
    // The production infrastructure takes the gateway address and serves.
    ip(&["-n", &infra.ns, "addr", "del", "10.20.0.3/24", "dev", "eth0"]);
    ip(&["-n", &infra.ns, "addr", "add", "10.20.0.1/24", "dev", "eth0"]);
    // As a router taking over an address does: announce it (gratuitous ARP).
    let announce = Command::new("ip")
        .args(["netns", "exec", &infra.ns, "arping", "-U", "-c", "2", "-w", "2", "-I", "eth0", "10.20.0.1"])
        .output()
        .expect("arping (package iputils-arping)");
    assert!(announce.status.success() || announce.status.code() == Some(1), "{announce:?}");
    infra.start_dnsmasq();
    let deadline = Instant::now() + Duration::from_secs(20);
    let prod = loop {
        if let Some(l) = lease(&lab).filter(|(a, _)| in_pool(a, 210, 220)) {
            break l;
        }
        assert!(Instant::now() < deadline, "no lease from the production server");
    };
    assert_eq!(prod.1, "10.20.0.1");
    assert_eq!(dig(&lab, "artifacts.dvnt.deevnet.net"), "10.20.0.99", "the other authority's answer");

    // Back to bootstrap while the other authority is active: refused, named.
    let out = lab.coresvc(["authority", "bootstrap"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "must refuse: {err}");
    assert!(err.contains("nothing changed") && err.contains("segment dvnt"), "{err}");
    assert!(err.contains("DHCP server 10.20.0.1"), "names the server: {err}");
    assert!(err.contains(&format!("10.20.0.1 is in use by {}", infra.mac())), "names the holder: {err}");
    assert_eq!(lab.status_json().unwrap()["authority"], "production", "nothing changed");

    // The infrastructure goes away; bootstrap again.
    infra.stop_dnsmasq();
    ip(&["-n", &infra.ns, "addr", "del", "10.20.0.1/24", "dev", "eth0"]);
    let steps = coresvc_ok(&lab, &["authority", "bootstrap"]);
    for want in [
        "no other DHCP server",
        "took address 10.20.0.1/24",
        "dhcp: serving",
        "dns: serving",
        "dns: XDP answer cache on",
        "persisted bootstrap",
    ] {
        assert!(steps.contains(want), "step {want:?} missing:\n{steps}");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if lease(&lab).is_some_and(|(a, s)| in_pool(&a, 100, 199) && s == "10.20.0.1") {
            break;
        }
        assert!(Instant::now() < deadline, "no lease from coresvc after the switch back");
    }
    assert_eq!(dig(&lab, "artifacts.dvnt.deevnet.net"), ours, "coresvc's answer again");
    assert_eq!(lab.status_json().unwrap()["dataplane"]["dns_cache"]["answering"], true);
    stop.store(true, Ordering::Relaxed);
    asker.join().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let _ = tcpdump.kill();
    let _ = tcpdump.wait();

    // The second client kept getting leases (from whichever authority was active).
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty() && seen.iter().all(|(a, _)| in_pool(a, 100, 199) || in_pool(a, 210, 220)), "{seen:?}");
    // No question was answered by two servers (two OFFERs for one DISCOVER,
    // two ACKs for one REQUEST), and the answers switched sides exactly
    // twice: coresvc, then the infrastructure, then coresvc. (One client
    // transaction may straddle a switch: an OFFER from one, a NAK from the
    // other, one after the other.)
    let replies = pcap_udp_payloads(&std::fs::read(&pcap).unwrap()).unwrap();
    type Answers = std::collections::BTreeMap<([u8; 4], u8), std::collections::BTreeSet<[u8; 6]>>;
    let mut by_question: Answers = Default::default();
    let mut order: Vec<[u8; 6]> = Vec::new();
    for r in replies.iter().filter(|r| r.sport == 67) {
        let Some((xid, kind, _)) = coresvc::authority::server_reply(&r.payload) else { continue };
        by_question.entry((xid.to_be_bytes(), kind)).or_default().insert(r.src_mac);
        if order.last() != Some(&r.src_mac) {
            order.push(r.src_mac);
        }
    }
    for ((xid, kind), macs) in &by_question {
        assert!(*kind == 6 || macs.len() == 1, "transaction {xid:02x?} (type {kind}) answered by {macs:02x?}");
    }
    assert_eq!(order.len(), 3, "answers from coresvc, the infrastructure, coresvc: {order:02x?}");
    assert_eq!(order[0], order[2]);
}

#[test]
fn another_dhcp_server_is_named_and_coresvc_does_not_activate_there() {
    let (mut lab, cfg) = lab_with(|s| s.replace("watch_interval = \"30s\"", "watch_interval = \"1s\""));
    let mut infra = Infra::new(&lab);

    // Seen while serving: reported, named.
    lab.start_agent(&AgentOpts::new(&cfg)).unwrap();
    infra.start_dnsmasq();
    let deadline = Instant::now() + Duration::from_secs(15);
    let foreign = loop {
        let s = lab.status_json().unwrap();
        let f: Vec<Value> = s["foreign_dhcp"].as_array().cloned().unwrap_or_default();
        if let Some(x) = f.iter().find(|x| x["segment"] == "dvnt") {
            break x.clone();
        }
        assert!(Instant::now() < deadline, "the second DHCP server was not detected: {:#}", s["foreign_dhcp"]);
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(foreign["server"], "10.20.0.3");
    assert!(lab.log().contains("another DHCP server answers on this segment"), "{}", lab.log_tail(20));
    let status = coresvc_ok(&lab, &["status"]);
    assert!(status.contains("another DHCP server on segment dvnt (dvnt0): 10.20.0.3"), "{status}");

    // Present at start: coresvc does not serve DHCP there, and says why.
    lab.stop_agent(libc::SIGTERM, Duration::from_secs(10)).unwrap();
    lab.start_agent(&AgentOpts::new(&cfg)).unwrap();
    let s = lab.status_json().unwrap();
    let refused = s["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{:#}", s["refused"]);
    assert_eq!(refused[0]["segment"], "dvnt");
    assert!(refused[0]["findings"].to_string().contains("10.20.0.3"), "{:#}", refused[0]);
    let served: Vec<&str> = s["dhcp"]["interfaces"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert!(!served.contains(&"dvnt0") && served.contains(&"dvntm0"), "{served:?}");
    assert!(coresvc_ok(&lab, &["status"]).contains("REFUSED  segment dvnt (dvnt0): DHCP server 10.20.0.3 answers"));
    // Only the other server answers there.
    let (addr, server) = lease(&lab).expect("the other server's lease");
    assert!(in_pool(&addr, 210, 220) && server == "10.20.0.3", "{addr} from {server}");

    // A host holding the gateway address: coresvc does not take it.
    infra.stop_dnsmasq();
    lab.stop_agent(libc::SIGTERM, Duration::from_secs(10)).unwrap();
    let dc = lab.ns("gw");
    ip(&["-n", &dc, "addr", "flush", "dev", "dvnt0"]);
    ip(&["-n", &infra.ns, "addr", "add", "10.20.0.1/24", "dev", "eth0"]);
    lab.start_agent(&AgentOpts::new(&cfg)).unwrap();
    assert!(!gw_has(&lab, "10.20.0.1"), "the gateway address is someone else's");
    let s = lab.status_json().unwrap();
    assert!(s["refused"].to_string().contains(&infra.mac()), "{:#}", s["refused"]);
}

#[test]
fn the_mode_survives_a_restart() {
    let (mut lab, cfg) = lab_with(|s| s);
    lab.start_agent(&AgentOpts::new(&cfg)).unwrap();
    coresvc_ok(&lab, &["authority", "production"]);
    lab.stop_agent(libc::SIGTERM, Duration::from_secs(10)).unwrap();
    lab.start_agent(&AgentOpts::new(&cfg)).unwrap();
    let s = lab.status_json().unwrap();
    assert_eq!(s["authority"], "production", "persisted across the restart");
    assert!(s["dns"].is_null() && s["dhcp"].is_null());
    assert!(gw_has(&lab, "10.20.0.2") && !gw_has(&lab, "10.20.0.1"));
    assert!(lab.log().contains("persisted in"), "{}", lab.log_tail(20));
    // The same mode again is a no-op, and an unknown one a usage error.
    assert!(coresvc_ok(&lab, &["authority", "production"]).contains("already in production"));
    assert!(!lab.coresvc(["authority", "sideways"]).unwrap().status.success());
}
