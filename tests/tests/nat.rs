//! NAT in the lab with real clients: masquerade of every segment to the
//! upstream node (which has no route back to the segments), the same source
//! port from several clients, traceroute through the NAT, port forwards and
//! hairpinning, and a long transfer across `kill -9` and restart of coresvc.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use coresvc_lab::{AgentOpts, Lab};
use serde_json::Value;

const CLIENTS: [(&str, &str); 3] =
    [("provisioner", "10.10.0.10"), ("dvnt-client", "10.20.0.50"), ("dvntm-client", "10.30.0.50")];

fn lab_with(edit: impl FnOnce(String) -> String) -> (Lab, PathBuf) {
    let mut lab = Lab::for_test().unwrap();
    let cfg = lab.config_with("coresvc.toml", edit).unwrap();
    lab.start_agent(&AgentOpts::new(&cfg)).unwrap();
    (lab, cfg)
}

fn flows(lab: &Lab) -> Vec<Value> {
    let out = lab.coresvc(["flows", "--json"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout).unwrap().as_array().unwrap().clone()
}

fn drop_count(lab: &Lab, name: &str) -> u64 {
    let s = lab.status_json().unwrap();
    s["dataplane"]["drop_reasons"].as_array().unwrap().iter().find(|r| r["name"] == name).unwrap()["packets"]
        .as_u64()
        .unwrap()
}

/// `a.b.c.d:port` -> (address, port).
fn split(seen: &str) -> (&str, u16) {
    let (a, p) = seen.rsplit_once(':').unwrap_or_else(|| panic!("not addr:port: {seen:?}"));
    (a, p.parse().unwrap())
}

#[test]
fn every_segment_reaches_the_upstream_as_the_uplink_address() {
    let (lab, _) = lab_with(|s| s);
    let _tcp = lab.tcp_whoami("upstream", "192.0.2.1", 7000).unwrap();
    let _udp = lab.udp_whoami("upstream", "192.0.2.1", 7001).unwrap();
    // The upstream has no route to the segments: only NAT brings answers back.
    let routes = lab.exec("upstream", ["ip", "route"]).unwrap();
    assert!(!String::from_utf8_lossy(&routes.stdout).contains("10."), "upstream must not route to the segments");

    let mut tcp_ports = Vec::new();
    let mut udp_ports = Vec::new();
    for (node, _) in CLIENTS {
        // Every client uses the same source port.
        let seen = lab.whoami(node, "tcp", "192.0.2.1:7000", Some(21000)).unwrap();
        let (addr, port) = split(&seen);
        assert_eq!(addr, "192.0.2.2", "{node} over TCP is seen as the uplink address");
        tcp_ports.push(port);
        let seen = lab.whoami(node, "udp", "192.0.2.1:7001", Some(21000)).unwrap();
        let (addr, port) = split(&seen);
        assert_eq!(addr, "192.0.2.2", "{node} over UDP");
        udp_ports.push(port);
        let ping = lab.exec(node, ["ping", "-c", "2", "-i", "0.2", "-W", "1", "192.0.2.1"]).unwrap();
        assert!(ping.status.success(), "{node} pings the upstream through the NAT");
    }
    for ports in [&tcp_ports, &udp_ports] {
        let mut distinct = ports.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 3, "one outside port per client: {ports:?}");
        assert!(ports.contains(&21000), "the first keeps its port: {ports:?}");
        assert!(ports.iter().all(|p| (20000..=32767).contains(p)), "{ports:?}");
    }

    // Endpoint-independent: the same inside endpoint keeps its outside port
    // towards another service.
    let _tcp2 = lab.tcp_whoami("upstream", "192.0.2.1", 7002).unwrap();
    let again = lab.whoami("dvnt-client", "tcp", "192.0.2.1:7002", Some(21000)).unwrap();
    assert_eq!(split(&again).1, tcp_ports[1], "dvnt-client keeps its outside port");

    // The mappings are visible.
    let f = flows(&lab);
    let nat: Vec<&Value> = f.iter().filter(|x| x["nat"] == "masquerade").collect();
    assert!(nat.len() >= 6, "{f:#?}");
    assert!(
        nat.iter()
            .any(|x| x["src"] == "10.30.0.50:21000"
                && x["nat_source"].as_str().is_some_and(|s| s.starts_with("192.0.2.2:"))),
        "{nat:#?}"
    );
    let s = lab.status_json().unwrap();
    assert_eq!(s["dataplane"]["nat"]["address"], "192.0.2.2", "{:#}", s["dataplane"]["nat"]);
    assert!(s["dataplane"]["nat"]["bindings"].as_u64().unwrap() >= 6);
    assert_eq!(drop_count(&lab, "nat-ports-exhausted"), 0);
}

/// A router beyond the upstream node: `<lab>-far` (198.51.100.10) behind
/// the upstream (198.51.100.1), removed on drop.
struct Far {
    ns: String,
}

impl Far {
    fn new(lab: &Lab) -> Self {
        let ns = format!("{}-far", lab.prefix);
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().unwrap();
            assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        ip(&["netns", "add", &ns]);
        let far = Far { ns: ns.clone() };
        let up = lab.ns("upstream");
        ip(&["-n", &up, "link", "add", "far0", "type", "veth", "peer", "name", "eth0", "netns", &ns]);
        ip(&["-n", &up, "addr", "add", "198.51.100.1/24", "dev", "far0"]);
        ip(&["-n", &up, "link", "set", "far0", "up"]);
        ip(&["-n", &ns, "addr", "add", "198.51.100.10/24", "dev", "eth0"]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["-n", &ns, "route", "add", "default", "via", "198.51.100.1"]);
        coresvc_lab::run(&mut lab.cmd("upstream", ["sysctl", "-qw", "net.ipv4.ip_forward=1"])).unwrap();
        far
    }
}

impl Drop for Far {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

#[test]
fn traceroute_through_the_nat_shows_every_hop() {
    let (lab, _) = lab_with(|s| s);
    let _far = Far::new(&lab);
    for (proto, flag) in [("udp", None), ("icmp", Some("-I"))] {
        let mut args = vec!["traceroute", "-n", "-q", "1", "-w", "2", "-m", "5"];
        args.extend(flag);
        args.push("198.51.100.10");
        let out = lab.exec("dvnt-client", args).unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let hops: Vec<&str> = text.lines().skip(1).filter_map(|l| l.split_whitespace().nth(1)).collect();
        assert_eq!(
            hops,
            ["10.20.0.1", "192.0.2.1", "198.51.100.10"],
            "{proto} traceroute: every hop answers through the NAT:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn port_forwards_reach_inside_hosts_from_the_uplink_and_from_the_segments() {
    let (lab, _) = lab_with(|s| {
        s + "\n[[nat.forward]]\nproto = \"tcp\"\nport = 8080\nto = \"10.10.0.10:80\"\n\
             \n[[nat.forward]]\nproto = \"tcp\"\nport = 7070\nto = \"10.10.0.10:7000\"\n\
             \n[[nat.forward]]\nproto = \"udp\"\nport = 7071\nto = \"10.10.0.10:7001\"\n"
    });
    let www = lab.paths.run_dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("f"), vec![7u8; 100_000]).unwrap();
    let _http = lab.http_server("provisioner", "10.10.0.10", 80, &www).unwrap();
    let _tcp = lab.tcp_whoami("provisioner", "10.10.0.10", 7000).unwrap();
    let _udp = lab.udp_whoami("provisioner", "10.10.0.10", 7001).unwrap();

    // From the uplink side: the inside host sees the real client.
    let curl = |node: &str| {
        let out = lab
            .exec(
                node,
                [
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{size_download}",
                    "--max-time",
                    "5",
                    "http://192.0.2.2:8080/f",
                ],
            )
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(curl("upstream"), "100000", "the forward serves the uplink");
    assert_eq!(split(&lab.whoami("upstream", "tcp", "192.0.2.2:7070", None).unwrap()).0, "192.0.2.1");
    assert_eq!(split(&lab.whoami("upstream", "udp", "192.0.2.2:7071", None).unwrap()).0, "192.0.2.1");
    // From the segments (hairpinning): seen as the uplink address, so the
    // inside host answers through the gateway.
    for node in ["dvnt-client", "dvntm-client"] {
        assert_eq!(curl(node), "100000", "hairpin from {node}");
        let seen = lab.whoami(node, "tcp", "192.0.2.2:7070", None).unwrap();
        assert_eq!(split(&seen).0, "192.0.2.2", "hairpin from {node}");
        let seen = lab.whoami(node, "udp", "192.0.2.2:7071", None).unwrap();
        assert_eq!(split(&seen).0, "192.0.2.2", "hairpin UDP from {node}");
    }
    let f = flows(&lab);
    assert!(f.iter().any(|x| x["nat"] == "port-forward" && x["nat_destination"] == "192.0.2.2:7070"), "{f:#?}");
    assert!(f.iter().any(|x| x["nat"] == "hairpin"), "{f:#?}");
    // A port nobody forwards stays closed.
    assert!(lab.whoami("upstream", "tcp", "192.0.2.2:7072", None).is_err());
}

#[test]
fn a_long_transfer_through_the_nat_survives_kill_9_and_a_clean_restart() {
    let (mut lab, cfg) = lab_with(|s| s);
    // About 8 s at 4 MB/s.
    let download = lab.slow_download("dvnt-client", 32 << 20, "4M").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    lab.stop_agent(libc::SIGKILL, Duration::from_secs(5)).unwrap();
    let dead = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    lab.start_agent(&AgentOpts::new(&cfg)).unwrap();
    let down_for = dead.elapsed();
    // And a clean restart (systemctl restart: SIGTERM, then start): the
    // programs stay attached meanwhile (agent.on_stop = "keep").
    std::thread::sleep(Duration::from_millis(1000));
    let st = lab.stop_agent(libc::SIGTERM, Duration::from_secs(10)).unwrap().unwrap();
    assert!(st.success(), "clean exit: {st}");
    std::thread::sleep(Duration::from_secs(1));
    lab.start_agent(&AgentOpts::new(&cfg)).unwrap();
    let size = download.size;
    assert_eq!(download.finish().unwrap(), size, "the whole file arrived");
    let s = lab.status_json().unwrap();
    assert_eq!(s["dataplane"]["adopted_maps"], true);
    eprintln!("coresvc was down for {down_for:?} during the transfer");
}
