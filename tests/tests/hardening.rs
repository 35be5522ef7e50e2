//! Fail closed, in the lab with real tools (issue 17): floods from one host
//! (hping3), forged sources, blind RST sweeps, fragmented datagrams through
//! the NAT, IPv6 on a segment, addresses coresvc did not configure, and the
//! lifecycle (start, stop, restart, unpin, a start that fails) never leaving
//! forwarding on with nothing judging.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use coresvc_lab::{AgentOpts, Lab};

fn lab_with(edit: impl FnOnce(String) -> String) -> (Lab, PathBuf) {
    let mut lab = Lab::for_test().unwrap();
    let cfg = lab.config_with("coresvc.toml", edit).unwrap();
    lab.start_agent(&AgentOpts::new(&cfg)).unwrap();
    (lab, cfg)
}

fn drop_count(lab: &Lab, name: &str) -> u64 {
    let s = lab.status_json().unwrap();
    s["dataplane"]["drop_reasons"].as_array().unwrap().iter().find(|r| r["name"] == name).unwrap()["packets"]
        .as_u64()
        .unwrap()
}

fn ping(lab: &Lab, from: &str, to: &str) -> bool {
    lab.exec(from, ["ping", "-c", "1", "-W", "2", to]).unwrap().status.success()
}

fn sysctl(lab: &Lab, key: &str) -> String {
    let out = lab.exec("gw", ["sysctl", "-n", key]).unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

const SEGMENT_IFS: [&str; 3] = ["mgmt0", "dvnt0", "dvntm0"];

fn forwarding(lab: &Lab) -> Vec<String> {
    SEGMENT_IFS.iter().chain(["up0"].iter()).map(|i| sysctl(lab, &format!("net.ipv4.conf.{i}.forwarding"))).collect()
}

fn xdp_attached(lab: &Lab, ifname: &str) -> bool {
    let out = lab.exec("gw", ["ip", "-d", "link", "show", ifname]).unwrap();
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

/// tcpdump on `node`'s eth0 with `filter`, until dropped: the packets seen.
struct Capture {
    child: std::process::Child,
}

impl Capture {
    fn start(lab: &Lab, node: &str, filter: &str) -> Capture {
        let child = lab
            .cmd(node, ["tcpdump", "-n", "-l", "-i", "eth0", filter])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("tcpdump (package tcpdump)");
        std::thread::sleep(Duration::from_millis(800));
        Capture { child }
    }

    fn lines(self) -> Vec<String> {
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let out = self.child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect()
    }
}

// ------------------------------------------------------------ lifecycle

#[test]
fn forwarding_is_on_only_while_the_programs_judge() {
    let (mut lab, cfg) = lab_with(|s| s);
    assert_eq!(forwarding(&lab), ["1"; 4], "on for coresvc's interfaces");
    assert_eq!(sysctl(&lab, "net.ipv4.ip_forward"), "0", "never namespace-wide");
    assert!(ping(&lab, "provisioner", "10.20.0.50"));
    // A clean stop that keeps the programs: they judge on, and forwarding
    // stays on with them.
    lab.stop_agent(libc::SIGTERM, Duration::from_secs(10)).unwrap();
    assert!(SEGMENT_IFS.iter().all(|i| xdp_attached(&lab, i)));
    assert_eq!(forwarding(&lab), ["1"; 4]);
    assert!(ping(&lab, "provisioner", "10.20.0.50"));
    // `coresvc unpin` from another network namespace (the host's) cannot
    // turn forwarding off where the programs are: it refuses, and names
    // the way that works.
    let out = Command::new(coresvc_lab::agent_bin().unwrap())
        .args(["unpin", "--pin-dir"])
        .arg(&lab.paths.pin_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("network namespace") && err.contains("dvnt0"), "{err}");
    assert!(SEGMENT_IFS.iter().all(|i| xdp_attached(&lab, i)), "nothing changed");
    let _ = &cfg;
    // From the gateway's own namespace it takes the programs away, and
    // forwarding goes first.
    let out = lab.unpin().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("dvnt0: IPv4 forwarding off"), "{said}");
    assert_eq!(forwarding(&lab), ["0"; 4]);
    assert!(!SEGMENT_IFS.iter().any(|i| xdp_attached(&lab, i)));
    assert!(!ping(&lab, "provisioner", "10.20.0.50"), "nothing forwards unjudged");
    // `on_stop = "detach"`: the stop detaches and turns forwarding off.
    let detach = lab.config_with("detach.toml", |s| s.replace("on_stop = \"keep\"", "on_stop = \"detach\"")).unwrap();
    lab.start_agent(&AgentOpts::new(&detach)).unwrap();
    assert_eq!(forwarding(&lab), ["1"; 4]);
    let st = lab.stop_agent(libc::SIGTERM, Duration::from_secs(10)).unwrap().unwrap();
    assert!(st.success());
    assert_eq!(forwarding(&lab), ["0"; 4]);
    assert!(!SEGMENT_IFS.iter().any(|i| xdp_attached(&lab, i)));
}

#[test]
fn a_start_that_fails_after_attaching_leaves_forwarding_off() {
    let mut lab = Lab::for_test().unwrap();
    let cfg = lab.config_with("coresvc.toml", |s| s).unwrap();
    // Something else listens on the DNS port of a gateway address: the DNS
    // service cannot start (after the dataplane has attached everything).
    coresvc_lab::run(&mut lab.cmd("gw", ["ip", "addr", "add", "10.20.0.1/24", "dev", "dvnt0"])).unwrap();
    let mut holder = lab
        .cmd("gw", ["socat", "TCP4-LISTEN:53,bind=10.20.0.1", "-"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    lab.wait_tcp("gw", "10.20.0.1", 53).unwrap();
    let err = lab.start_agent(&AgentOpts::new(&cfg)).unwrap_err();
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(format!("{err:#}").contains("exited during start-up"), "{err:#}");
    assert_eq!(forwarding(&lab), ["0"; 4], "{}", lab.log_tail(20));
    assert!(!SEGMENT_IFS.iter().any(|i| xdp_attached(&lab, i)));
}

#[test]
fn restarts_under_nat_load_never_reset_a_connection() {
    // Issue 17 item 19: a restart used to empty the interface map before
    // adopting the programs; for that moment they passed everything, the
    // NAT's replies reached the gateway's own stack untranslated, and it
    // answered them with RSTs.
    let (mut lab, cfg) = lab_with(|s| s);
    let rsts = Capture::start(&lab, "upstream", "tcp port 80 and tcp[tcpflags] & tcp-rst != 0");
    // About 12 s at 4 MB/s.
    let download = lab.slow_download("dvnt-client", 48 << 20, "4M").unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    for round in 0..6 {
        let signal = if round % 2 == 0 { libc::SIGKILL } else { libc::SIGTERM };
        lab.stop_agent(signal, Duration::from_secs(10)).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        lab.start_agent(&AgentOpts::new(&cfg)).unwrap();
        std::thread::sleep(Duration::from_millis(500));
    }
    let size = download.size;
    assert_eq!(download.finish().unwrap(), size, "the whole file arrived");
    let seen = rsts.lines();
    assert!(seen.is_empty(), "no reset reached the server: {seen:#?}");
}

// ------------------------------------------------------------ floods

#[test]
fn a_conntrack_flood_from_one_host_leaves_the_others_and_the_gateway_working() {
    let (mut lab, cfg) =
        lab_with(|s| s.replace("conntrack_max = 65536", "conntrack_max = 4096\nmax_flows_per_host = 256"));
    let www = lab.paths.run_dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "ok").unwrap();
    let _http = lab.http_server("upstream", "192.0.2.1", 80, &www).unwrap();
    let fetch = |lab: &Lab, node: &str| {
        lab.exec(node, ["curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", "http://192.0.2.1/"])
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default()
            == "200"
    };
    let flood = |lab: &Lab| {
        // 8000 UDP flows from one host: one datagram to each destination port.
        let out = lab
            .exec("dvnt-client", ["hping3", "--udp", "-q", "-c", "8000", "-i", "u50", "-p", "++1", "192.0.2.1"])
            .expect("hping3 (package hping3)");
        assert!(out.status.success() || out.status.code() == Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    };
    flood(&lab);
    let refused = drop_count(&lab, "flow-quota");
    assert!(refused >= 7000, "the host got its quota and no more: {refused} refused");
    let n = lab.status_json().unwrap()["dataplane"]["firewall"]["connections"].as_u64().unwrap();
    assert!(n <= 256 + 64, "{n} connections");
    assert!(fetch(&lab, "provisioner"), "another host still connects");
    assert!(fetch(&lab, "dvntm-client"));
    // The gateway's own connections (its DNS to the upstream, here a ping).
    assert!(ping(&lab, "gw", "192.0.2.1"));
    // With the agent dead, the table and the quotas still hold.
    lab.stop_agent(libc::SIGKILL, Duration::from_secs(5)).unwrap();
    flood(&lab);
    assert!(fetch(&lab, "provisioner"), "with no agent");
    lab.start_agent(&AgentOpts::new(&cfg)).unwrap();
    assert!(drop_count(&lab, "flow-quota") >= refused + 7000);
}

#[test]
fn forged_sources_are_dropped_at_the_first_hop() {
    let (lab, _) = lab_with(|s| s);
    let seen = Capture::start(&lab, "upstream", "udp port 9999");
    // dvnt-client pretends to be the provisioner, the gateway, and a host
    // of another site.
    for forged in ["10.10.0.10", "10.20.0.1", "10.30.0.50", "127.0.0.1"] {
        let out = lab
            .exec(
                "dvnt-client",
                ["hping3", "--udp", "-q", "-c", "5", "-i", "u10000", "-a", forged, "-p", "9999", "192.0.2.1"],
            )
            .unwrap();
        assert!(out.status.success() || out.status.code() == Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    }
    // (The client's kernel may refuse to send some of them at all.)
    assert!(drop_count(&lab, "source-spoofed") >= 15, "{}", drop_count(&lab, "source-spoofed"));
    // Its own address goes through.
    let out = lab.exec("dvnt-client", ["hping3", "--udp", "-q", "-c", "3", "-p", "9999", "192.0.2.1"]).unwrap();
    assert!(out.status.success() || out.status.code() == Some(1));
    let lines = seen.lines();
    assert!(!lines.is_empty(), "the honest datagrams arrive");
    assert!(lines.iter().all(|l| l.contains("192.0.2.2.")), "only masqueraded, never forged: {lines:#?}");
}

#[test]
fn a_blind_rst_sweep_over_the_nat_ports_kills_nothing() {
    let (lab, _) = lab_with(|s| s);
    // About 8 s at 4 MB/s.
    let download = lab.slow_download("dvnt-client", 32 << 20, "4M").unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    // From the server's address and port, an RST to every outside port of
    // the masquerade range, with a sequence number picked blind.
    let out = lab
        .exec(
            "upstream",
            [
                "hping3",
                "-q",
                "-R",
                "-s",
                "80",
                "-k",
                "-M",
                "123456789",
                "-p",
                "++20000",
                "-c",
                "12768",
                "-i",
                "u20",
                "192.0.2.2",
            ],
        )
        .unwrap();
    assert!(out.status.success() || out.status.code() == Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let size = download.size;
    assert_eq!(download.finish().unwrap(), size, "the transfer survived the sweep");
    assert!(drop_count(&lab, "tcp-out-of-window") >= 1, "the RST for its port was refused");
}

// ------------------------------------------------------------ fragments

/// Sends `n` bytes in one UDP datagram from `node` to `to` (a UDP echo
/// service) and returns how many came back.
fn echo_big(lab: &Lab, node: &str, to: &str, n: usize) -> usize {
    let script = format!(
        "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(3)\n\
         s.sendto(b'x'*{n},('{}',{}))\ntry:\n  print(len(s.recv(65535)))\nexcept Exception:\n  print(0)\n",
        to.split(':').next().unwrap(),
        to.split(':').nth(1).unwrap()
    );
    let out = lab.exec(node, ["python3", "-c", &script]).unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

#[test]
fn fragmented_datagrams_cross_the_nat_both_ways() {
    let (lab, _) = lab_with(|s| s);
    let _echo = lab.udp_echo("upstream", "192.0.2.1", 7007).unwrap();
    // 4000 bytes: three fragments each way, the replies to the masquerade
    // address (their later fragments used to be dropped).
    assert_eq!(echo_big(&lab, "dvnt-client", "192.0.2.1:7007", 4000), 4000);
    // The gateway's own datagram (as a big DNS answer would come back).
    assert_eq!(echo_big(&lab, "gw", "192.0.2.1:7007", 4000), 4000);
    // A stray later fragment for the masquerade address goes nowhere.
    let before = drop_count(&lab, "fragment-untracked");
    let frag = coresvc_lab::frames::ipv4(
        [2, 0, 0, 0xc0, 0, 1],
        gw_mac(&lab, "up0"),
        "192.0.2.1".parse().unwrap(),
        "192.0.2.2".parse().unwrap(),
        17,
        64,
        100,
        &[0u8; 64],
    );
    lab.send_frame("upstream", "eth0", &frag).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(drop_count(&lab, "fragment-untracked"), before + 1);
}

fn gw_mac(lab: &Lab, ifname: &str) -> [u8; 6] {
    let out = lab.exec("gw", ["cat", &format!("/sys/class/net/{ifname}/address")]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(text.trim().split(':')) {
        *b = u8::from_str_radix(p, 16).unwrap();
    }
    mac
}

// ------------------------------------------------------------ unjudged paths

#[test]
fn an_address_coresvc_did_not_configure_is_still_behind_the_firewall() {
    let (lab, _) = lab_with(|s| s);
    // Somebody adds an address to the gateway, and a service listens on it.
    coresvc_lab::run(&mut lab.cmd("gw", ["ip", "addr", "add", "10.20.0.99/24", "dev", "dvnt0"])).unwrap();
    let mut svc = lab
        .cmd("gw", ["socat", "TCP4-LISTEN:2200,bind=10.20.0.99,fork,reuseaddr", "SYSTEM:echo hi"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    lab.wait_tcp("gw", "10.20.0.99", 2200).unwrap();
    let out = lab.exec("dvnt-client", ["sh", "-c", "socat -T 3 - TCP4:10.20.0.99:2200,connect-timeout=3 </dev/null"]);
    let _ = svc.kill();
    let _ = svc.wait();
    let said = String::from_utf8_lossy(&out.unwrap().stdout).to_string();
    assert!(!said.contains("hi"), "a segment reaches only the gateway's services: {said:?}");
    assert!(drop_count(&lab, "firewall-deny") >= 1);
}

#[test]
fn ipv6_on_a_segment_is_dropped_and_counted() {
    let (lab, _) = lab_with(|s| s);
    // (The lab's namespaces run without IPv6: a crafted echo request to
    // the all-nodes group, as any IPv6 host would send.)
    let mut f = vec![0x33, 0x33, 0, 0, 0, 1, 2, 0, 0, 0x14, 0, 0x32, 0x86, 0xdd];
    f.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, 58, 255]);
    f.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x50]);
    f.extend_from_slice(&[0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&[128, 0, 0, 0, 0, 1, 0, 1]);
    let before = drop_count(&lab, "ipv6-policy");
    for _ in 0..3 {
        lab.send_frame("dvnt-client", "eth0", &f).unwrap();
    }
    let start = Instant::now();
    while drop_count(&lab, "ipv6-policy") < before + 3 {
        assert!(start.elapsed() < Duration::from_secs(5), "{} counted", drop_count(&lab, "ipv6-policy") - before);
        std::thread::sleep(Duration::from_millis(100));
    }
}
