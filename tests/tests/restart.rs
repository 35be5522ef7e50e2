//! Restart safety (issue 6): `kill -9` of the agent under DNS, DHCP and TCP
//! load. While the agent is dead the programs keep answering cached DNS
//! questions and forwarding and translating established flows; the
//! restarted agent adopts the pinned maps and links, and no lease that was
//! ACKed is lost.

use std::time::{Duration, Instant};

use coresvc_lab::{
    AgentOpts, Lab,
    dhcp::{acks_in, assert_acks_kept},
};
use serde_json::Value;

const GW_DVNT: &str = "10.20.0.1";

/// The XDP cache's hits on every segment, summed over CPUs, read with
/// bpftool from the pinned map (works while the agent is dead).
fn xdp_hits(lab: &Lab) -> u64 {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned", &format!("{}/dns_stats", lab.paths.pin_dir.display())])
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "bpftool: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut hits = 0;
    for entry in v.as_array().unwrap() {
        for cpu in entry["formatted"]["values"].as_array().unwrap() {
            hits += cpu["value"]["hits"].as_u64().unwrap();
        }
    }
    hits
}

fn answer(lab: &Lab, name: &str) -> anyhow::Result<(String, Vec<String>)> {
    let r = lab.kdig("dvnt-client", GW_DVNT, name, "A", &["+timeout=1"])?;
    Ok((r.rcode.clone(), r.answer_texts()))
}

#[test]
fn kill_9_under_dns_dhcp_and_tcp_load_keeps_answering_forwarding_and_every_lease() {
    let mut lab = Lab::for_test().unwrap();
    // A wide dvnt pool for perfdhcp's clients (the lab's own keep 10.20.0.x).
    let cfg = lab
        .config_with("coresvc.toml", |s| {
            s.replace("cidr = \"10.20.0.0/24\"", "cidr = \"10.20.0.0/16\"").replace(
                "start = \"10.20.0.100\"\nend = \"10.20.0.199\"",
                "start = \"10.20.1.0\"\nend = \"10.20.32.255\"",
            )
        })
        .unwrap();
    lab.start_agent(&AgentOpts::new(&cfg)).unwrap();

    // TCP: a long download through the NAT from the upstream node.
    let download = lab.slow_download("dvntm-client", 32 << 20, "4M").unwrap();

    // DNS: questions the agent answered once, so the XDP cache holds them.
    let names = ["artifacts.dvntm.deevnet.net", "provisioner-01.mgmt.deevnet.net", "nothing-here.dvnt.deevnet.net"];
    let first: Vec<_> = names.iter().map(|n| answer(&lab, n).unwrap()).collect();
    assert_eq!(first[0].0, "NOERROR");
    assert_eq!(first[2].0, "NXDOMAIN");

    // DHCP: perfdhcp's clients, every ACK captured.
    let pcap = lab.paths.run_dir.join("acks.pcap");
    let tcpdump = lab.capture_dhcp_replies("dvnt-client", &pcap).unwrap();
    let load = lab.perfdhcp_load("dvnt-client", GW_DVNT, 300, 7).unwrap();
    std::thread::sleep(Duration::from_millis(2000));

    // kill -9 in the middle of it all.
    lab.stop_agent(libc::SIGKILL, Duration::from_secs(5)).unwrap();
    let dead = Instant::now();
    assert!(lab.agent_pid().is_none());

    // Dead agent: cached questions still answered, the same answers, from XDP.
    let hits = xdp_hits(&lab);
    for round in 0..5 {
        for (name, want) in names.iter().zip(&first) {
            let got = answer(&lab, name).unwrap_or_else(|e| panic!("{name} while the agent is dead: {e:#}"));
            assert_eq!(&got, want, "{name}, round {round}");
        }
    }
    assert!(xdp_hits(&lab) >= hits + 15, "answered by the XDP cache (bpftool)");
    // A question nobody cached finds nobody to answer it.
    assert!(answer(&lab, "pxe.mgmt.deevnet.net").is_err(), "the agent is really dead");
    std::thread::sleep(Duration::from_millis(500));

    // Restart; the load goes on a little, then stops.
    lab.start_agent(&AgentOpts::new(&cfg)).unwrap();
    let down_for = dead.elapsed();
    std::thread::sleep(Duration::from_millis(1500));
    load.interrupt();
    std::thread::sleep(Duration::from_millis(300));
    tcpdump.interrupt();

    // The download went on while the agent was dead and completes.
    let size = download.size;
    assert_eq!(download.finish().unwrap(), size, "the whole file arrived");

    // The restarted agent adopted the maps and links.
    let st = lab.status_json().unwrap();
    assert_eq!(st["dataplane"]["adopted_maps"], true, "{st}");
    assert!(lab.log().contains("leases from"), "{}", lab.log_tail(20));

    // Every ACKed lease is in the store, bound to its client; no address
    // was given to two clients.
    let acked = acks_in(&pcap).unwrap();
    assert!(acked.len() > 100, "only {} ACKs captured", acked.len());
    assert_acks_kept(&lab, &acked, false);

    // DNS after the restart: the agent answers, then the cache again.
    for (name, want) in names.iter().zip(&first) {
        assert_eq!(&answer(&lab, name).unwrap(), want, "{name} after the restart");
    }
    let hits = xdp_hits(&lab);
    assert_eq!(&answer(&lab, names[0]).unwrap(), &first[0]);
    assert_eq!(xdp_hits(&lab), hits + 1, "the restarted agent refilled the XDP cache");
    eprintln!("coresvc was down for {down_for:?}; {} ACKs checked", acked.len());
}
