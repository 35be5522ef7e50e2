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
    // Nothing describes the production side here: the switch is forced.
    let steps = coresvc_ok(&lab, &["authority", "production", "--force"]);
    for want in [
        "check: FORCED past",
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
    // SIGINT: tcpdump writes what it still holds (a kill loses the last
    // answers when it lags behind, as under the whole suite's load).
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(tcpdump.id() as i32, libc::SIGINT) };
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
    // Unverifiable (no [authority] section): refused, nothing changed, unless forced.
    let out = lab.coresvc(["authority", "production"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success() && err.contains("not switched to production, nothing changed"), "{err}");
    assert!(err.contains("no production DNS server is configured"), "{err}");
    assert_eq!(lab.status_json().unwrap()["authority"], "bootstrap");
    coresvc_ok(&lab, &["authority", "production", "--force"]);
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

// ---------------------------------------------------------------- issue 18
// The production infrastructure made from coresvc's export (Kea and Knot
// in the infra namespace, 10.20.0.3 on the dvnt segment's shared L2), the
// verified switch, and the lease handoff both ways.

/// The lab's configuration with DHCP on dvnt only (the infra namespace is
/// on dvnt), a known client, and the production side described.
fn production_config(lab: &Lab) -> PathBuf {
    production_config_with(lab, false)
}

/// The same, the leases handed over through Kea's lease API (`api`) instead of its lease file.
fn production_config_with(lab: &Lab, api: bool) -> PathBuf {
    let lease_file = lab.paths.run_dir.join("kea").join("leases4.csv");
    let handoff = if api {
        "kea_control_agent = \"http://10.20.0.3:8000/\"".to_string()
    } else {
        format!("kea_lease_file = \"{}\"", lease_file.display())
    };
    std::fs::create_dir_all(lease_file.parent().unwrap()).unwrap();
    lab.config_with("coresvc.toml", |s| {
        let s = s
            .replace("# metrics_listen = \"127.0.0.1:9464\"", "metrics_listen = \"127.0.0.1:9477\"")
            .replace(
                "[[dhcp.pool]]\nsegment = \"dvntm\"\nstart = \"10.30.0.100\"\nend = \"10.30.0.199\"\nlease_time = \"30m\"\n",
                "",
            )
            .replace("domain_search = [\"dvntm.deevnet.net\", \"mgmt.deevnet.net\"]   # this pool's search list (option 119)\n", "")
            .replace("[[dhcp.host]]\nmac = \"02:00:00:0a:00:0a\"\naddress = \"10.10.0.10\"\nhostname = \"provisioner-01\"\n", "");
        assert!(!s.contains("10.30.0.100") && !s.contains("02:00:00:0a:00:0a"), "the example changed: fix this test's edits");
        s + &format!(
            "\n[[dhcp.host]]\nmac = \"02:00:00:14:00:42\"\naddress = \"10.20.0.42\"\nhostname = \"known\"\n\n\
             [authority]\ndns = [\"10.20.0.3\"]\n{handoff}\ncheck_interval = \"2s\"\n\n\
             [[authority.segment]]\nsegment = \"dvnt\"\nkea_interface = \"eth0\"\n"
        )
    })
    .unwrap()
}

/// DHCP clients on the dvnt segment's bridge, each a veth with its own MAC.
fn add_clients(lab: &Lab, clients: &[(&str, &str)]) {
    let dc = lab.ns("dvnt-client");
    for (name, mac) in clients {
        let peer = format!("{name}p");
        ip(&["-n", &dc, "link", "add", name, "type", "veth", "peer", "name", &peer]);
        ip(&["-n", &dc, "link", "set", &peer, "master", "br0"]);
        ip(&["-n", &dc, "link", "set", name, "address", mac]);
        ip(&["-n", &dc, "link", "set", &peer, "up"]);
        ip(&["-n", &dc, "link", "set", name, "up"]);
    }
}

/// One DHCP exchange by udhcpc on `iface`: what the script was given
/// (address, server, lease time and every option udhcpc exports).
fn exchange(lab: &Lab, iface: &str, extra: &[&str]) -> Option<std::collections::BTreeMap<String, String>> {
    let script = lab.paths.run_dir.join("print-options.sh");
    if !script.exists() {
        std::fs::write(
            &script,
            "#!/bin/sh\n[ \"$1\" = bound ] && env | grep -E \
             '^(ip|subnet|router|dns|domain|search|hostname|boot_file|siaddr|lease|serverid|ntpsrv|mtu|opt[0-9]+)=' \
             | sed 's/^/v /'\nexit 0\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = lab
        .cmd("dvnt-client", ["udhcpc", "-f", "-q", "-n", "-i", iface, "-t", "3", "-T", "1", "-A", "1", "-s"])
        .arg(&script)
        .args(extra)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let m: std::collections::BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("v "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect();
    (!m.is_empty()).then_some(m)
}

/// `exchange` until it succeeds (a server just started).
fn exchange_within(lab: &Lab, iface: &str, extra: &[&str], secs: u64) -> std::collections::BTreeMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(m) = exchange(lab, iface, extra) {
            return m;
        }
        assert!(Instant::now() < deadline, "no DHCP answer on {iface} within {secs} s");
    }
}

/// The answer without what names the server.
fn offered(mut m: std::collections::BTreeMap<String, String>) -> std::collections::BTreeMap<String, String> {
    m.remove("serverid");
    m
}

/// Kea (kea-dhcp4 from Debian) in the infra namespace with an exported
/// configuration (its control socket moved into the run directory).
struct Kea {
    child: Child,
    log: PathBuf,
}

impl Kea {
    fn start(lab: &Lab, infra: &Infra, exported: &std::path::Path) -> Kea {
        let dir = lab.paths.run_dir.join("kea");
        std::fs::create_dir_all(&dir).unwrap();
        let mut conf: Value = serde_json::from_str(&std::fs::read_to_string(exported).unwrap()).unwrap();
        conf["Dhcp4"]["control-socket"]["socket-name"] = dir.join("ctrl.sock").display().to_string().into();
        conf["Dhcp4"]["lease-database"]["name"] = dir.join("leases4.csv").display().to_string().into();
        let path = dir.join("kea-dhcp4.conf");
        std::fs::write(&path, serde_json::to_string_pretty(&conf).unwrap()).unwrap();
        let check =
            Command::new("ip").args(["netns", "exec", &infra.ns, "kea-dhcp4", "-t"]).arg(&path).output().unwrap();
        assert!(check.status.success(), "kea-dhcp4 -t refuses the export: {}", String::from_utf8_lossy(&check.stdout));
        let log = dir.join("kea.log");
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &infra.ns, "kea-dhcp4", "-c"])
            .arg(&path)
            .env("KEA_PIDFILE_DIR", &dir)
            .env("KEA_LOCKFILE_DIR", &dir)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("kea-dhcp4 (package kea-dhcp4-server, installed by cargo xtask setup)");
        let mut kea = Kea { child, log };
        // Serving once it says so (its sockets are open by then).
        let deadline = Instant::now() + Duration::from_secs(15);
        while !kea.log().contains("DHCP4_STARTED") {
            if let Some(st) = kea.child.try_wait().unwrap() {
                panic!("kea-dhcp4 exited ({st}): {}", kea.log());
            }
            assert!(Instant::now() < deadline, "kea-dhcp4 did not start: {}", kea.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        kea
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Kea {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `coresvc export KIND DIR` from the running agent.
fn export(lab: &Lab, cfg: &std::path::Path, kind: &str, dir: &std::path::Path, extra: &[&str]) -> String {
    let mut args = vec!["export", kind, dir.to_str().unwrap(), "--config", cfg.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = coresvc_ok(lab, &args);
    assert!(out.contains("the running agent"), "exported from the agent: {out}");
    out
}

/// Knot in the infra namespace serving the exported zones on 10.20.0.3
/// (its run and database directories moved into the export directory).
fn start_knot(lab: &Lab, infra: &Infra, dir: &std::path::Path) -> Child {
    let conf = std::fs::read_to_string(dir.join("knot.conf")).unwrap();
    let conf = conf.replacen(
        "server:\n",
        &format!("server:\n    rundir: {d}\n    user: root\ndatabase:\n    storage: {d}\n", d = dir.display()),
        1,
    );
    // (The database section must not sit inside server: move it after.)
    let conf = conf.replacen(&format!("database:\n    storage: {}\n", dir.display()), "", 1)
        + &format!("\ndatabase:\n    storage: {}\n", dir.display());
    std::fs::write(dir.join("knot-lab.conf"), &conf).unwrap();
    let check = Command::new("knotc").arg("-c").arg(dir.join("knot-lab.conf")).arg("conf-check").output().unwrap();
    assert!(
        check.status.success(),
        "knotc conf-check: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let log = std::fs::File::create(dir.join("knot.log")).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &infra.ns, "knotd", "-c"])
        .arg(dir.join("knot-lab.conf"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("knotd (package knot)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab.kdig("dvnt-client", "10.20.0.3", "mgmt.deevnet.net", "SOA", &[]).is_err() {
        assert!(
            Instant::now() < deadline,
            "knotd does not answer: {}",
            std::fs::read_to_string(dir.join("knot.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    child
}

/// Every (owner, type) of the exported zone files, and a missing name per zone.
fn questions(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut q = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "zone") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let origin = text.lines().find_map(|l| l.strip_prefix("$ORIGIN ")).unwrap().trim().to_string();
        q.insert((format!("nope.{origin}"), "A".to_string()));
        for l in text.lines().filter(|l| !l.starts_with('$') && !l.starts_with(';') && !l.trim().is_empty()) {
            let f: Vec<&str> = l.split_whitespace().collect();
            let t = f.iter().skip(1).find(|x| x.parse::<u32>().is_err() && **x != "IN").unwrap();
            q.insert((f[0].to_string(), t.to_string()));
            q.insert((f[0].to_string(), "A".to_string()));
            q.insert((f[0].to_string(), "TXT".to_string()));
        }
    }
    q.into_iter().collect()
}

/// `name type` asked of `server` without recursion, a CNAME chain that
/// leaves the answering zone followed by asking the same server for its
/// target (coresvc answers all its zones as one and follows the chain
/// itself; Knot stops at its zone's edge, as RFC 1034 allows): the final
/// rcode, AA and authority, and every answer on the way.
fn chased(lab: &Lab, server: &str, name: &str, t: &str, extra: &[&str]) -> coresvc_lab::dns::Reply {
    let mut r = lab.kdig("dvnt-client", server, name, t, extra).unwrap();
    for _ in 0..8 {
        let Some(last) = r.answers.last().filter(|a| a.rtype == "CNAME" && t != "CNAME") else { break };
        let target = last.text.clone();
        if r.answers.iter().any(|a| a.name.eq_ignore_ascii_case(&target)) {
            break;
        }
        let next = lab.kdig("dvnt-client", server, &target, t, extra).unwrap();
        if next.rcode == "REFUSED" {
            break;
        }
        let mut answers = std::mem::take(&mut r.answers);
        answers.extend(next.answers.iter().cloned());
        r = coresvc_lab::dns::Reply { answers, ..next };
    }
    r
}

/// The DNS answers of coresvc (10.20.0.1) and of the production DNS
/// (10.20.0.3) to every question, as kdig sees them: the mismatches.
fn dns_mismatches(lab: &Lab, questions: &[(String, String)]) -> Vec<String> {
    let norm = |v: &[coresvc_lab::dns::Rr]| {
        let mut v: Vec<_> =
            v.iter().map(|r| (r.name.to_lowercase(), r.rtype.clone(), r.ttl, r.rdata.clone())).collect();
        v.sort();
        v.dedup();
        v
    };
    let mut bad = Vec::new();
    for (name, t) in questions {
        for extra in [&["+norec"][..], &["+norec", "+tcp"][..]] {
            let ours = chased(lab, "10.20.0.1", name, t, extra);
            let theirs = chased(lab, "10.20.0.3", name, t, extra);
            let same = ours.rcode == theirs.rcode
                && ours.aa == theirs.aa
                && norm(&ours.answers) == norm(&theirs.answers)
                && norm(&ours.authority) == norm(&theirs.authority);
            if !same {
                bad.push(format!("{name} {t} {extra:?}:\n  coresvc {ours:?}\n  knot    {theirs:?}"));
            }
        }
    }
    bad
}

/// Issue 18.2: what `coresvc export knot|kea` writes, run by the real
/// Knot and Kea, answers like coresvc: every name coresvc serves (a
/// query-by-query comparison with kdig), and DHCP: the known MAC gets its
/// reservation, a pool client the address coresvc leased it (the exported
/// memfile) with the same options, PXE clients the same boot files.
#[test]
fn exported_kea_and_knot_answer_like_coresvc() {
    let mut lab = Lab::for_test().unwrap();
    let cfg = production_config(&lab);
    let infra = Infra::new(&lab);
    add_clients(&lab, &[("kn0", "02:00:00:14:00:42"), ("pc0", "02:00:00:14:00:77"), ("px0", "02:00:00:14:00:78")]);
    lab.start_agent(&AgentOpts::new(&cfg)).unwrap();
    let pxe_bios: &[&str] = &["-V", "PXEClient", "-x", "0x5d:0000"];
    let ipxe: &[&str] = &["-x", "0x4d:69505845"];
    let ours = [
        ("kn0", offered(exchange_within(&lab, "kn0", &[], 10))),
        ("pc0", offered(exchange_within(&lab, "pc0", &[], 10))),
        ("px0 bios", offered(exchange_within(&lab, "px0", pxe_bios, 10))),
        ("px0 ipxe", offered(exchange_within(&lab, "px0", ipxe, 10))),
    ];
    assert_eq!(ours[0].1["ip"], "10.20.0.42", "coresvc: the reservation");
    assert!(in_pool(&ours[1].1["ip"], 100, 199), "{:?}", ours[1]);
    assert_eq!(ours[2].1["boot_file"], "undionly.kpxe");
    assert_eq!(ours[3].1["boot_file"], "http://artifacts.mgmt.deevnet.net/boot.ipxe");

    let out = lab.paths.run_dir.join("export");
    let knot_dir = out.join("knot");
    let kea_dir = out.join("kea");
    export(&lab, &cfg, "knot", &knot_dir, &["--listen", "10.20.0.3@53"]);
    let kea_out = export(&lab, &cfg, "kea", &kea_dir, &[]);
    assert!(kea_out.contains("3 active lease(s)"), "kn0, pc0 and px0: {kea_out}");
    let csv = std::fs::read_to_string(kea_dir.join("kea-leases4.csv")).unwrap();
    assert!(
        csv.starts_with(
            "address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,hostname,state,user_context\n"
        ),
        "{csv}"
    );
    assert!(csv.contains(&format!("{},02:00:00:14:00:77,", ours[1].1["ip"])), "{csv}");

    // DNS: Knot with the exported zones against coresvc, question by question.
    let mut knot = start_knot(&lab, &infra, &knot_dir);
    let qs = questions(&knot_dir);
    assert!(qs.len() > 40, "{qs:?}");
    assert!(qs.iter().any(|(n, _)| n == "known.dvnt.deevnet.net."), "the registered client name is exported: {qs:?}");
    let bad = dns_mismatches(&lab, &qs);
    let _ = knot.kill();
    let _ = knot.wait();
    assert!(bad.is_empty(), "{} of {} question(s) answered differently:\n{}", bad.len(), qs.len() * 2, bad.join("\n"));

    // DHCP: coresvc stops; the exported Kea with the exported leases answers alone.
    lab.stop_agent(libc::SIGTERM, Duration::from_secs(10)).unwrap();
    let lease_file = lab.paths.run_dir.join("kea").join("leases4.csv");
    std::fs::copy(kea_dir.join("kea-leases4.csv"), &lease_file).unwrap();
    let kea = Kea::start(&lab, &infra, &kea_dir.join("kea-dhcp4.conf"));
    let kn0 = exchange_within(&lab, "kn0", &[], 20);
    assert_eq!(kn0["serverid"], "10.20.0.3", "Kea answered: {kn0:?}\n{}", kea.log());
    let theirs = [
        ("kn0", offered(kn0)),
        ("pc0", offered(exchange_within(&lab, "pc0", &[], 10))),
        ("px0 bios", offered(exchange_within(&lab, "px0", pxe_bios, 10))),
        ("px0 ipxe", offered(exchange_within(&lab, "px0", ipxe, 10))),
    ];
    for ((who, a), (_, b)) in ours.iter().zip(&theirs) {
        assert_eq!(a, b, "{who}: coresvc and Kea answer differently\n{}", kea.log());
    }
}

/// The lab with coresvc in bootstrap mode (DHCP on dvnt), the infra
/// namespace bridged onto dvnt, and coresvc's export written.
fn production_lab(clients: &[(&str, &str)]) -> (Lab, PathBuf, Infra, PathBuf) {
    production_lab_with(clients, false)
}

fn production_lab_with(clients: &[(&str, &str)], api: bool) -> (Lab, PathBuf, Infra, PathBuf) {
    let mut lab = Lab::for_test().unwrap();
    let cfg = production_config_with(&lab, api);
    let infra = Infra::new(&lab);
    add_clients(&lab, clients);
    lab.start_agent(&AgentOpts::new(&cfg)).unwrap();
    let out = lab.paths.run_dir.join("export");
    (lab, cfg, infra, out)
}

/// Issue 18.3: `authority production` asks the production DNS every
/// record coresvc serves and a DHCP server on every segment it serves;
/// one record changed on the production side: refused, the record named,
/// nothing changed (`authority check` says the same without switching);
/// once it agrees, the switch happens and the leases are handed over.
#[test]
fn production_is_refused_while_one_record_differs_and_accepted_when_all_agree() {
    let (lab, cfg, infra, out) = production_lab(&[]);
    let knot_dir = out.join("knot");
    let kea_dir = out.join("kea");
    export(&lab, &cfg, "knot", &knot_dir, &["--listen", "10.20.0.3@53"]);
    export(&lab, &cfg, "kea", &kea_dir, &[]);
    let _kea = Kea::start(&lab, &infra, &kea_dir.join("kea-dhcp4.conf"));
    // The production side has one record of its own.
    let zone = knot_dir.join("mgmt.deevnet.net.zone");
    let good = std::fs::read_to_string(&zone).unwrap();
    let line = "provisioner-01.mgmt.deevnet.net. 300 IN A 10.10.0.10\n";
    assert!(good.contains(line), "{good}");
    std::fs::write(&zone, good.replace(line, "provisioner-01.mgmt.deevnet.net. 300 IN A 10.10.0.11\n")).unwrap();
    let mut knot = start_knot(&lab, &infra, &knot_dir);

    let check = lab.coresvc(["authority", "check"]).unwrap();
    let text = String::from_utf8_lossy(&check.stdout).to_string();
    assert_eq!(check.status.code(), Some(1), "differs: exit status 1\n{text}");
    let differs: Vec<&str> = text.lines().filter(|l| l.starts_with("DIFFERS")).collect();
    assert_eq!(differs.len(), 1, "exactly the changed record:\n{text}");
    assert!(
        differs[0].contains("provisioner-01.mgmt.deevnet.net. A")
            && differs[0].contains("coresvc [300 10.10.0.10]")
            && differs[0].contains("production [300 10.10.0.11]"),
        "{text}"
    );
    assert!(text.contains("DHCP segment dvnt       DHCP server 10.20.0.3 answers"), "Kea found on dvnt:\n{text}");
    assert!(differs[0].contains("DNS 10.20.0.3:53 (segment mgmt, dvnt, dvntm)"), "{text}");

    let refused = lab.coresvc(["authority", "production"]).unwrap();
    let err = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(!refused.status.success(), "{err}");
    assert!(err.contains("not switched to production, nothing changed") && err.contains("(1 difference(s))"), "{err}");
    assert!(err.contains("provisioner-01.mgmt.deevnet.net. A: records differ"), "{err}");
    let s = lab.status_json().unwrap();
    assert_eq!(s["authority"], "bootstrap");
    assert!(!s["dhcp"].is_null() && !s["dns"].is_null() && gw_has(&lab, "10.20.0.1"), "still serving");

    // Fixed on the production side: it agrees, the switch happens.
    let _ = knot.kill();
    let _ = knot.wait();
    std::fs::write(&zone, &good).unwrap();
    let mut knot = start_knot(&lab, &infra, &knot_dir);
    let check = lab.coresvc(["authority", "check"]).unwrap();
    let text = String::from_utf8_lossy(&check.stdout).to_string();
    assert!(check.status.success() && text.contains("the production infrastructure agrees with coresvc"), "{text}");
    let steps = coresvc_ok(&lab, &["authority", "production"]);
    for want in [
        "check: the production DNS answers all",
        "a DHCP server answers on dvnt",
        "leases: appended 0 active lease(s)",
        "dhcp: stopped",
        "persisted production",
    ] {
        assert!(steps.contains(want), "step {want:?} missing:\n{steps}");
    }
    assert_eq!(lab.status_json().unwrap()["authority"], "production");

    // In production mode the check runs every 2 s: agreement, then the
    // conflicting truth of a changed record (a log line and a metric).
    let truth = |want: u64| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let t = lab.status_json().unwrap()["truth"].clone();
            if t["checks"].as_u64().unwrap_or(0) >= 1 && t["differences"].as_u64() == Some(want) {
                return t;
            }
            assert!(Instant::now() < deadline, "no periodic check with {want} difference(s): {t:#}");
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    truth(0);
    let _ = knot.kill();
    let _ = knot.wait();
    std::fs::write(&zone, good.replace(line, "provisioner-01.mgmt.deevnet.net. 300 IN A 10.10.0.11\n")).unwrap();
    let mut knot = start_knot(&lab, &infra, &knot_dir);
    let t = truth(1);
    assert!(t["lines"][0].as_str().unwrap().contains("provisioner-01.mgmt.deevnet.net. A"), "{t:#}");
    assert!(lab.log().contains("authority: conflicting truth"), "{}", lab.log_tail(20));
    let metrics = lab.exec("gw", ["curl", "-s", "--max-time", "5", "http://127.0.0.1:9477/metrics"]).unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout).to_string();
    assert!(metrics.lines().any(|l| l == "coresvc_authority_conflicting_truth 1"), "{metrics}");
    let _ = knot.kill();
    let _ = knot.wait();
}

/// Issue 18.3: bootstrap -> production -> bootstrap through Kea's lease
/// file, checked from the clients' side: a's lease (granted by coresvc)
/// is kept by Kea, b's (granted by Kea, an address it asked for) by
/// coresvc afterwards, and a new client c asking for b's address gets
/// another, neither a's nor b's.
#[test]
fn a_round_trip_through_kea_loses_no_lease_and_gives_no_address_twice() {
    let clients = [("ca0", "02:00:00:14:00:a0"), ("cb0", "02:00:00:14:00:b0"), ("cc0", "02:00:00:14:00:c0")];
    let (lab, cfg, infra, out) = production_lab(&clients);
    // a's address is not the one Kea would pick first (the pool start).
    let a = exchange_within(&lab, "ca0", &["-r", "10.20.0.140"], 10);
    assert_eq!((a["serverid"].as_str(), a["ip"].as_str()), ("10.20.0.1", "10.20.0.140"));
    let addr_a = a["ip"].clone();

    let knot_dir = out.join("knot");
    let kea_dir = out.join("kea");
    export(&lab, &cfg, "knot", &knot_dir, &["--listen", "10.20.0.3@53"]);
    export(&lab, &cfg, "kea", &kea_dir, &[]);
    let mut knot = start_knot(&lab, &infra, &knot_dir);
    let kea = Kea::start(&lab, &infra, &kea_dir.join("kea-dhcp4.conf"));
    let steps = coresvc_ok(&lab, &["authority", "production"]);
    assert!(steps.contains("leases: appended 1 active lease(s)"), "{steps}");
    // Kea reads the handed-over leases at its next start.
    drop(kea);
    let kea = Kea::start(&lab, &infra, &kea_dir.join("kea-dhcp4.conf"));
    let a2 = exchange_within(&lab, "ca0", &[], 20);
    assert_eq!(
        (a2["serverid"].as_str(), a2["ip"].as_str()),
        ("10.20.0.3", addr_a.as_str()),
        "Kea keeps a's lease\n{}",
        kea.log()
    );
    // b asks for an address coresvc would not pick next (it allocates from the pool start).
    let b = exchange_within(&lab, "cb0", &["-r", "10.20.0.150"], 10);
    assert_eq!(b["serverid"], "10.20.0.3");
    let addr_b = b["ip"].clone();
    assert_eq!(addr_b, "10.20.0.150", "Kea grants the requested address");

    // Back: Kea stops, coresvc takes its leases before serving.
    drop(kea);
    let _ = knot.kill();
    let _ = knot.wait();
    let steps = coresvc_ok(&lab, &["authority", "bootstrap"]);
    assert!(steps.contains("leases: took 2 record(s) back from") && steps.contains("(2 in force)"), "{steps}");
    assert!(lab.status_json().unwrap()["truth"].is_null(), "no production-mode check result in bootstrap mode");
    let b2 = exchange_within(&lab, "cb0", &[], 20);
    assert_eq!((b2["serverid"].as_str(), b2["ip"].as_str()), ("10.20.0.1", addr_b.as_str()), "coresvc keeps b's lease");
    let a3 = exchange_within(&lab, "ca0", &[], 10);
    assert_eq!((a3["serverid"].as_str(), a3["ip"].as_str()), ("10.20.0.1", addr_a.as_str()));
    // c asks for b's address: someone else's.
    let c = exchange_within(&lab, "cc0", &["-r", "10.20.0.150"], 10);
    assert!(in_pool(&c["ip"], 100, 199) && c["ip"] != addr_a && c["ip"] != addr_b, "c: {c:?}, a {addr_a}, b {addr_b}");
    let leases = coresvc_ok(&lab, &["leases"]);
    for (addr, mac) in [(&addr_a, "02:00:00:14:00:a0"), (&addr_b, "02:00:00:14:00:b0")] {
        assert!(leases.lines().any(|l| l.contains(addr.as_str()) && l.contains(mac)), "{leases}");
    }
}

/// kea-ctrl-agent in the infra namespace with the exported configuration
/// (forwarding to the test's kea-dhcp4 control socket).
fn start_ctrl_agent(lab: &Lab, infra: &Infra, exported: &std::path::Path) -> Kea {
    let dir = lab.paths.run_dir.join("kea");
    let mut conf: Value = serde_json::from_str(&std::fs::read_to_string(exported).unwrap()).unwrap();
    conf["Control-agent"]["control-sockets"]["dhcp4"]["socket-name"] =
        dir.join("ctrl.sock").display().to_string().into();
    let path = dir.join("kea-ctrl-agent.conf");
    std::fs::write(&path, serde_json::to_string_pretty(&conf).unwrap()).unwrap();
    let log = dir.join("kea-ctrl-agent.log");
    let out = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &infra.ns, "kea-ctrl-agent", "-c"])
        .arg(&path)
        .env("KEA_PIDFILE_DIR", &dir)
        .env("KEA_LOCKFILE_DIR", &dir)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .expect("kea-ctrl-agent (package kea-ctrl-agent, installed by cargo xtask setup)");
    let mut ca = Kea { child, log };
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ca.log().contains("HTTP_SERVICE_STARTED") {
        if let Some(st) = ca.child.try_wait().unwrap() {
            panic!("kea-ctrl-agent exited ({st}): {}", ca.log());
        }
        assert!(Instant::now() < deadline, "kea-ctrl-agent did not start: {}", ca.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    ca
}

/// Issue 18.3 through Kea's lease API (kea-ctrl-agent, the lease_cmds
/// hook): coresvc's lease is `lease4-add`ed to the running Kea at the
/// switch; on the way back coresvc disables Kea's DHCP (`dhcp-disable`,
/// so the probe finds nobody), takes `lease4-get-all` into its journal and
/// serves: from the clients' side no lease is lost, no address given twice.
#[test]
fn a_round_trip_through_kea_s_lease_api_loses_no_lease() {
    let clients = [("ca0", "02:00:00:14:00:a0"), ("cb0", "02:00:00:14:00:b0"), ("cc0", "02:00:00:14:00:c0")];
    let (lab, cfg, infra, out) = production_lab_with(&clients, true);
    let a = exchange_within(&lab, "ca0", &["-r", "10.20.0.140"], 10);
    assert_eq!((a["serverid"].as_str(), a["ip"].as_str()), ("10.20.0.1", "10.20.0.140"));
    let knot_dir = out.join("knot");
    let kea_dir = out.join("kea");
    export(&lab, &cfg, "knot", &knot_dir, &["--listen", "10.20.0.3@53"]);
    let written = export(&lab, &cfg, "kea", &kea_dir, &[]);
    assert!(written.contains("kea-ctrl-agent.conf"), "{written}");
    let mut knot = start_knot(&lab, &infra, &knot_dir);
    std::fs::remove_file(kea_dir.join("kea-leases4.csv")).unwrap();
    let kea = Kea::start(&lab, &infra, &kea_dir.join("kea-dhcp4.conf"));
    let _ca = start_ctrl_agent(&lab, &infra, &kea_dir.join("kea-ctrl-agent.conf"));
    let steps = coresvc_ok(&lab, &["authority", "production"]);
    assert!(steps.contains("leases: 1 added, 0 refreshed in Kea through http://10.20.0.3:8000/"), "{steps}");
    // The running Kea has a's lease at once.
    let a2 = exchange_within(&lab, "ca0", &[], 20);
    assert_eq!((a2["serverid"].as_str(), a2["ip"].as_str()), ("10.20.0.3", "10.20.0.140"), "{}", kea.log());
    let b = exchange_within(&lab, "cb0", &["-r", "10.20.0.150"], 10);
    assert_eq!((b["serverid"].as_str(), b["ip"].as_str()), ("10.20.0.3", "10.20.0.150"));

    // Back while Kea still runs: coresvc disables it first.
    let _ = knot.kill();
    let _ = knot.wait();
    let steps = coresvc_ok(&lab, &["authority", "bootstrap"]);
    for want in [
        "kea: DHCP disabled through http://10.20.0.3:8000/",
        "no other DHCP server",
        "leases: took 2 record(s) back from Kea through",
        "(2 in force)",
    ] {
        assert!(steps.contains(want), "step {want:?} missing:\n{steps}");
    }
    let b2 = exchange_within(&lab, "cb0", &[], 20);
    assert_eq!((b2["serverid"].as_str(), b2["ip"].as_str()), ("10.20.0.1", "10.20.0.150"), "coresvc keeps b's lease");
    let a3 = exchange_within(&lab, "ca0", &[], 10);
    assert_eq!((a3["serverid"].as_str(), a3["ip"].as_str()), ("10.20.0.1", "10.20.0.140"));
    let c = exchange_within(&lab, "cc0", &["-r", "10.20.0.150"], 10);
    assert!(c["serverid"] == "10.20.0.1" && c["ip"] != "10.20.0.140" && c["ip"] != "10.20.0.150", "c: {c:?}");
    drop(kea);
}

/// `coresvc import-leases`: a Kea memfile (rows as Kea 2.x writes them)
/// into the running agent (the client keeps its address, another client
/// asking for it gets another), and with --offline into a stopped one's
/// journal (refused while it runs).
#[test]
fn kea_leases_are_imported_into_a_running_and_a_stopped_agent() {
    let clients = [("ka0", "02:00:00:14:00:d0"), ("kb0", "02:00:00:14:00:d1"), ("kc0", "02:00:00:14:00:d2")];
    let (mut lab, cfg, _infra, _out) = production_lab(&clients);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let header =
        "address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,hostname,state,user_context\n";
    let row =
        |addr: &str, mac: &str, host: &str| format!("{addr},{mac},01:{mac},3600,{},2,0,0,{host},0,\n", now + 3000);
    let file = lab
        .write_file("import1.csv", &format!("{header}{}", row("10.20.0.160", "02:00:00:14:00:d0", "from-kea")))
        .unwrap();
    let out = coresvc_ok(&lab, &["import-leases", file.to_str().unwrap()]);
    assert!(out.contains("imported 1 lease record(s)"), "{out}");
    let leases = coresvc_ok(&lab, &["leases"]);
    assert!(leases.lines().any(|l| l.contains("10.20.0.160") && l.contains("02:00:00:14:00:d0")), "{leases}");
    let a = exchange_within(&lab, "ka0", &[], 10);
    assert_eq!(a["ip"], "10.20.0.160", "the imported lease is the client's");
    let b = exchange_within(&lab, "kb0", &["-r", "10.20.0.160"], 10);
    assert_ne!(b["ip"], "10.20.0.160", "another client does not get it");

    // Offline: refused while the agent runs, then into the stopped agent's journal.
    let file2 =
        lab.write_file("import2.csv", &format!("{header}{}", row("10.20.0.170", "02:00:00:14:00:d2", ""))).unwrap();
    let state = lab.paths.state_dir.to_str().unwrap().to_string();
    let args = [
        "import-leases",
        file2.to_str().unwrap(),
        "--offline",
        "--state-dir",
        &state,
        "--config",
        cfg.to_str().unwrap(),
    ];
    let refused = lab.coresvc(args).unwrap();
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("the agent is running"));
    lab.stop_agent(libc::SIGTERM, Duration::from_secs(10)).unwrap();
    let out = coresvc_ok(&lab, &args);
    assert!(out.contains("imported 1 lease record(s)"), "{out}");
    lab.start_agent(&AgentOpts::new(&cfg)).unwrap();
    let c = exchange_within(&lab, "kc0", &[], 10);
    assert_eq!(c["ip"], "10.20.0.170", "the imported lease survives into the start");
    let a = exchange_within(&lab, "ka0", &[], 10);
    assert_eq!(a["ip"], "10.20.0.160");
}
