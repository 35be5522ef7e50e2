//! coresvc as a primary: Knot (knotd) and NSD as secondaries of its zones
//! with TSIG, kept in step by NOTIFY and IXFR through a service move, a DHCP
//! registration (udhcpc) and a reload; transfers without the key, with a
//! wrong key and from another address refused. Every answer is read with
//! kdig; the secondaries' SOA refresh is an hour, so only NOTIFY explains
//! convergence within seconds.

use std::{
    collections::BTreeSet,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use coresvc_lab::{AgentOpts, Lab, dns::Knot};

const GW_MGMT: &str = "10.10.0.1";
const GW_DVNT: &str = "10.20.0.1";
const KNOT_ADDR: &str = "10.10.0.10";
const NSD_ADDR: &str = "10.20.0.50";
/// 32 bytes in base64 each (as `keymgr -t NAME hmac-sha256` makes them).
const KNOT_SECRET: &str = "Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmE=";
const NSD_SECRET: &str = "bnNkbnNkbnNkbnNkbnNkbnNkbnNkbnNkbnNkbnNkbnM=";
const WRONG_SECRET: &str = "d3Jvbmd3cm9uZ3dyb25nd3Jvbmd3cm9uZ3dyb25nd3I=";
const CONVERGE: Duration = Duration::from_secs(10);

fn secondaries(nsd: bool) -> String {
    let mut s = format!(
        r#"
[[dns.tsig_key]]
name = "xfr-knot"
algorithm = "hmac-sha256"
secret = "{KNOT_SECRET}"

[[dns.secondary]]
address = "{KNOT_ADDR}"
key = "xfr-knot"
"#
    );
    if nsd {
        s.push_str(&format!(
            r#"
[[dns.tsig_key]]
name = "xfr-nsd"
secret = "{NSD_SECRET}"

[[dns.secondary]]
address = "{NSD_ADDR}"
key = "xfr-nsd"
"#
        ));
    }
    s
}

fn zones(lab: &Lab) -> Vec<String> {
    let st = lab.status_json().unwrap();
    st["dns"]["zones"]
        .as_array()
        .unwrap()
        .iter()
        .map(|z| z["name"].as_str().unwrap().trim_end_matches('.').to_string())
        .collect()
}

fn counter(lab: &Lab, name: &str) -> u64 {
    lab.status_json().unwrap()["dns"]["counters"][name].as_u64().unwrap_or(0)
}

fn knot_secondary(lab: &Lab, zones: &[String]) -> Knot {
    let dir = Knot::dir_for(lab, "secondary").unwrap();
    let mut conf = format!(
        "server:\n    rundir: {d}\n    user: root\n    listen: {KNOT_ADDR}@53\n\
         log:\n  - target: stderr\n    any: info\n\
         database:\n    storage: {d}\n\
         key:\n  - id: xfr-knot\n    algorithm: hmac-sha256\n    secret: {KNOT_SECRET}\n\
         remote:\n  - id: coresvc\n    address: {GW_MGMT}@53\n    key: xfr-knot\n\
         acl:\n  - id: notify-from-coresvc\n    address: {GW_MGMT}\n    key: xfr-knot\n    action: notify\n\
         \x20 - id: transfer-to-anyone\n    action: transfer\n\
         template:\n  - id: default\n    master: coresvc\n    acl: [notify-from-coresvc, transfer-to-anyone]\n\
         \x20   semantic-checks: off\n    zonefile-sync: -1\n    zonefile-load: none\n    journal-content: changes\n\
         zone:\n",
        d = dir.display()
    );
    for z in zones {
        conf.push_str(&format!("  - domain: {z}\n"));
    }
    Knot::start_conf(lab, "provisioner", "secondary", &conf, &format!("{KNOT_ADDR}@53"), &zones[0]).unwrap()
}

/// NSD on dvnt-client, a secondary of every zone; killed on drop.
struct Nsd {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Nsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nsd_secondary(lab: &Lab, zones: &[String]) -> Option<Nsd> {
    if std::process::Command::new("nsd").arg("-v").output().is_err() {
        eprintln!("SKIPPED the NSD secondary: nsd is not installed (cargo xtask setup installs it)");
        return None;
    }
    let dir = lab.paths.run_dir.join("nsd");
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("nsd.log");
    let mut conf = format!(
        "server:\n  ip-address: {NSD_ADDR}\n  port: 53\n  zonesdir: \"{d}\"\n  database: \"\"\n\
         \x20 pidfile: \"{d}/nsd.pid\"\n  xfrdfile: \"{d}/xfrd.state\"\n  zonelistfile: \"{d}/zone.list\"\n\
         \x20 xfrdir: \"{d}\"\n  username: \"\"\n  chroot: \"\"\n  verbosity: 2\n  logfile: \"{l}\"\n\
         remote-control:\n  control-enable: no\n\
         key:\n  name: \"xfr-nsd\"\n  algorithm: hmac-sha256\n  secret: \"{NSD_SECRET}\"\n",
        d = dir.display(),
        l = log.display()
    );
    for z in zones {
        conf.push_str(&format!(
            "zone:\n  name: \"{z}\"\n  request-xfr: {GW_DVNT} xfr-nsd\n  allow-notify: {GW_DVNT} xfr-nsd\n  provide-xfr: 0.0.0.0/0 NOKEY\n"
        ));
    }
    let conf_path = dir.join("nsd.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = lab
        .cmd("dvnt-client", ["nsd", "-d", "-c"])
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("nsd.stderr")).unwrap())
        .spawn()
        .expect("starting nsd");
    Some(Nsd { child, log })
}

/// The zone's records as `kdig AXFR` prints them (from `node`, against
/// `server`, signed with `key` when given), one normalised line each.
fn axfr(lab: &Lab, node: &str, server: &str, zone: &str, key: Option<&str>) -> Result<BTreeSet<String>, String> {
    let text = kdig_axfr(lab, node, server, zone, key);
    let lines: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ").to_ascii_lowercase())
        // The TSIG record is the message's, not the zone's.
        .filter(|l| !l.contains(" any tsig "))
        .collect();
    if !lines.iter().any(|l| l.contains(" in soa ")) || text.contains("failed") || text.contains("status:") {
        return Err(text);
    }
    Ok(lines)
}

fn kdig_axfr(lab: &Lab, node: &str, server: &str, zone: &str, key: Option<&str>) -> String {
    let mut a: Vec<String> = ["kdig", "+timeout=3", "+retry=0", "+nostats"].iter().map(|s| s.to_string()).collect();
    if let Some(k) = key {
        a.extend(["-y".to_string(), k.to_string()]);
    }
    a.extend([format!("@{server}"), zone.to_string(), "AXFR".to_string()]);
    let o = lab.exec(node, &a).unwrap();
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// How many messages a signed AXFR of `zone` took (kdig's statistics).
fn kdig_messages(lab: &Lab, zone: &str, key: &str) -> usize {
    let o = lab
        .exec("provisioner", ["kdig", "+timeout=5", "+retry=0", "-y", key, &format!("@{GW_MGMT}"), zone, "AXFR"])
        .unwrap();
    let t = String::from_utf8_lossy(&o.stdout);
    // ";; Received 123456 B (7 messages, 3002 records)"
    t.lines()
        .find_map(|l| l.split_once(" B (").and_then(|(_, r)| r.split_whitespace().next()?.parse().ok()))
        .unwrap_or_else(|| panic!("no statistics in {t}"))
}

fn serial(lab: &Lab, node: &str, server: &str, zone: &str) -> Option<u32> {
    let r = lab.kdig(node, server, zone, "SOA", &["+norecurse"]).ok()?;
    let soa = r.answers.iter().find(|rr| rr.rtype == "SOA")?;
    soa.text.split_whitespace().nth(2)?.parse().ok()
}

/// Waits until the secondary at `addr` (asked from `node`) serves every zone
/// with coresvc's serial and the same records, name by name.
fn converged(lab: &Lab, node: &str, addr: &str, zones: &[String], what: &str) {
    let key = format!("hmac-sha256:xfr-knot:{KNOT_SECRET}");
    let start = Instant::now();
    loop {
        let mut behind = Vec::new();
        for z in zones {
            let ours = serial(lab, "provisioner", GW_MGMT, z);
            let theirs = serial(lab, node, addr, z);
            if ours.is_none() || ours != theirs {
                behind.push(format!("{z}: coresvc {ours:?}, secondary {theirs:?}"));
                continue;
            }
            let a = axfr(lab, "provisioner", GW_MGMT, z, Some(&key));
            let b = axfr(lab, node, addr, z, None);
            if a != b {
                behind.push(format!("{z}: records differ: coresvc {a:?}\nsecondary {b:?}"));
            }
        }
        if behind.is_empty() {
            eprintln!("{what}: {addr} converged in {:?}", start.elapsed());
            return;
        }
        assert!(
            start.elapsed() < CONVERGE,
            "{what}: {addr} did not converge within {CONVERGE:?}:\n{}",
            behind.join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn knot_and_nsd_follow_moves_registrations_and_reloads_through_notify_and_ixfr() {
    let mut lab = Lab::for_test().unwrap();
    let extra = secondaries(true);
    let cfg = lab.config_with("coresvc.toml", |s| s + &extra).unwrap();
    lab.start_agent(&AgentOpts::new(cfg.clone())).unwrap();
    let zones = zones(&lab);
    assert!(zones.iter().any(|z| z.ends_with("in-addr.arpa")), "reverse zones are served too: {zones:?}");
    let knot = knot_secondary(&lab, &zones);
    let nsd = nsd_secondary(&lab, &zones);
    converged(&lab, "provisioner", KNOT_ADDR, &zones, "first transfer");
    if nsd.is_some() {
        converged(&lab, "dvnt-client", NSD_ADDR, &zones, "first transfer (nsd)");
    }

    // A service move.
    let out = lab.coresvc(["service", "move", "artifacts.mgmt.deevnet.net", "provisioner-01"]).unwrap();
    assert!(out.status.success(), "{out:?}");
    converged(&lab, "provisioner", KNOT_ADDR, &zones, "service move");
    let r = lab.kdig("provisioner", KNOT_ADDR, "artifacts.mgmt.deevnet.net", "CNAME", &["+norecurse"]).unwrap();
    assert_eq!(r.answer_texts(), ["artifacts.mgmt.deevnet.net. CNAME provisioner-01.mgmt.deevnet.net."]);

    // A DHCP registration by a real client (A and PTR).
    lab.flush_address("dvntm-client").unwrap();
    let mut c = lab.udhcpc("dvntm-client", "xfr-box", &["-x", "hostname:xfr-box"]).unwrap();
    let ev = c.wait_for(&["bound"], 1, Duration::from_secs(20)).unwrap();
    let ip = ev.ip().unwrap_or_else(|| panic!("{ev:?}{}", c.diagnostics()));
    converged(&lab, "provisioner", KNOT_ADDR, &zones, "DHCP registration");
    let r = lab.kdig("provisioner", KNOT_ADDR, "xfr-box.dvntm.deevnet.net", "A", &["+norecurse"]).unwrap();
    assert_eq!(r.answer_texts(), [format!("xfr-box.dvntm.deevnet.net. A {ip}")]);

    // A reload with changed zone data.
    let text = std::fs::read_to_string(&cfg).unwrap();
    let edited = text.replace("\"coresvc management zone\"", "\"coresvc management zone, reloaded\"");
    assert_ne!(text, edited);
    std::fs::write(&cfg, edited).unwrap();
    let out = lab.coresvc(["reload"]).unwrap();
    assert!(out.status.success(), "{out:?}");
    converged(&lab, "provisioner", KNOT_ADDR, &zones, "reload");
    if nsd.is_some() {
        converged(&lab, "dvnt-client", NSD_ADDR, &zones, "after the changes (nsd)");
    }

    // Every change went by NOTIFY and IXFR, none by a full transfer.
    let st = lab.status_json().unwrap();
    eprintln!("counters: {}", st["dns"]["counters"]);
    assert!(counter(&lab, "notify_answered") >= 3, "{}", st["dns"]["counters"]);
    assert!(counter(&lab, "xfr_ixfr") >= 3, "{}", st["dns"]["counters"]);
    // Knot's own account: after the first transfers, only IXFRs.
    let log = knot.log();
    eprintln!("knot log:\n{log}");
    let incoming =
        |kind: &str| log.lines().filter(|l| l.contains(&format!("{kind}, incoming")) && l.contains("finished")).count();
    assert!(incoming("IXFR") >= 3, "{log}");
    assert_eq!(incoming("AXFR"), zones.len(), "{log}");
    if let Some(n) = &nsd {
        eprintln!("nsd log:\n{}", std::fs::read_to_string(&n.log).unwrap_or_default());
    }
    drop(c);

    // A restart with changed content: the journal (in memory) is gone, so
    // Knot's IXFR is answered with the whole zone, and Knot follows.
    lab.stop_agent(libc::SIGTERM, Duration::from_secs(10)).unwrap();
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("\"coresvc management zone, reloaded\"", "\"changed while stopped\"")).unwrap();
    lab.start_agent(&AgentOpts::new(cfg.clone())).unwrap();
    converged(&lab, "provisioner", KNOT_ADDR, &zones, "restart with changed content");
    assert!(counter(&lab, "xfr_ixfr_full") >= 1, "{}", lab.status_json().unwrap()["dns"]["counters"]);
}

/// A zone too big for one message: `n` TXT records.
fn big_zone(n: usize) -> String {
    let mut z = String::from("\n[[zone]]\nname = \"big.deevnet.net\"\nrole = \"site\"\n");
    for i in 0..n {
        z.push_str(&format!(
            "[[zone.record]]\nname = \"t{i}\"\ntype = \"TXT\"\ndata = '\"record {i} of a zone that needs many messages\"'\n"
        ));
    }
    z
}

#[test]
fn transfers_need_the_key_and_a_secondary_address() {
    let mut lab = Lab::for_test().unwrap();
    let extra = secondaries(false);
    let cfg = lab.config_with("coresvc.toml", |s| s + &big_zone(3000) + &extra).unwrap();
    lab.start_agent(&AgentOpts::new(cfg)).unwrap();
    let zone = "mgmt.deevnet.net";
    let good = format!("hmac-sha256:xfr-knot:{KNOT_SECRET}");
    // The right key from the secondary's address: the zone.
    let z = axfr(&lab, "provisioner", GW_MGMT, zone, Some(&good)).unwrap();
    assert!(z.iter().any(|l| l.starts_with("artifacts.mgmt.deevnet.net.")), "{z:?}");
    // No key: REFUSED.
    let t = kdig_axfr(&lab, "provisioner", GW_MGMT, zone, None);
    assert!(t.contains("REFUSED"), "{t}");
    // A wrong secret under the key's name: NOTAUTH with TSIG error BADSIG (kdig names the error).
    let t = kdig_axfr(&lab, "provisioner", GW_MGMT, zone, Some(&format!("hmac-sha256:xfr-knot:{WRONG_SECRET}")));
    assert!(t.contains("BADSIG"), "{t}");
    // An unknown key: NOTAUTH, BADKEY.
    let t = kdig_axfr(&lab, "provisioner", GW_MGMT, zone, Some(&format!("hmac-sha256:other-key:{KNOT_SECRET}")));
    assert!(t.contains("BADKEY"), "{t}");
    // The right key from another address: REFUSED.
    let t = kdig_axfr(&lab, "dvnt-client", GW_DVNT, zone, Some(&good));
    assert!(t.contains("REFUSED"), "{t}");
    // A transfer of many messages, each signed and chained to the one
    // before: kdig verifies every MAC.
    let t = kdig_axfr(&lab, "provisioner", GW_MGMT, "big.deevnet.net", Some(&good));
    let stats: Vec<&str> = t.lines().filter(|l| l.contains("messages")).collect();
    let z = axfr(&lab, "provisioner", GW_MGMT, "big.deevnet.net", Some(&good)).unwrap();
    assert_eq!(z.iter().filter(|l| l.contains(" txt ")).count(), 3000, "{stats:?}");
    let msgs = kdig_messages(&lab, "big.deevnet.net", &good);
    assert!(msgs > 1, "a zone of 3000 records in {msgs} message(s)");
    eprintln!("big.deevnet.net: 3002 records in {msgs} messages, every one TSIG-verified by kdig");
    // IXFR over UDP from the current serial: the SOA alone.
    let cur = serial(&lab, "provisioner", GW_MGMT, zone).unwrap();
    let o = lab
        .exec(
            "provisioner",
            [
                "kdig",
                "+notcp",
                "+timeout=3",
                "+retry=0",
                "-y",
                &good,
                &format!("@{GW_MGMT}"),
                zone,
                &format!("IXFR={cur}"),
            ],
        )
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    let soas = text.lines().filter(|l| !l.starts_with(';') && l.contains("\tSOA\t")).count();
    assert_eq!(soas, 1, "{text}");
    // A flood of transfers from the secondary: every one answered (the
    // zone, or REFUSED once the TCP caps are reached), the query path
    // answering meanwhile.
    let kids: Vec<_> = (0..40)
        .map(|_| {
            lab.cmd(
                "provisioner",
                ["kdig", "+timeout=20", "+retry=0", "-y", &good, &format!("@{GW_MGMT}"), "big.deevnet.net", "AXFR"],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let r = lab.kdig("dvnt-client", GW_DVNT, zone, "SOA", &[]).unwrap();
    assert_eq!(r.rcode, "NOERROR", "queries are answered during a flood of transfers");
    let (mut whole, mut other) = (0, 0);
    for k in kids {
        let o = k.wait_with_output().unwrap();
        let t = String::from_utf8_lossy(&o.stdout);
        if t.lines().filter(|l| l.contains("\tTXT\t")).count() == 3000 { whole += 1 } else { other += 1 }
    }
    let c = counter(&lab, "tcp_rejected_per_client") + counter(&lab, "xfr_overload");
    eprintln!(
        "flood of 40 transfers: {whole} whole, {other} not (connections refused at the caps and transfers refused: {c})"
    );
    assert!(whole >= 1 && (other == 0 || c > 0), "{whole} whole, {other} other, {c} counted");
    // A signed SOA query (what a secondary's refresh asks) gets a signed answer.
    let r = lab.kdig("provisioner", GW_MGMT, zone, "SOA", &["-y", &good]).unwrap();
    assert_eq!(r.rcode, "NOERROR");
    let st = lab.status_json().unwrap();
    let c = &st["dns"]["counters"];
    assert!(c["xfr_refused"].as_u64().unwrap() >= 2, "{c}");
    assert!(c["tsig_badsig"].as_u64().unwrap() >= 1, "{c}");
    assert!(c["tsig_badkey"].as_u64().unwrap() >= 1, "{c}");
    assert!(c["xfr_axfr"].as_u64().unwrap() >= 1, "{c}");
}

/// Serials never go back: a restart with the same content (a service move
/// included, persisted) serves the same serial; one with changed content a
/// higher one. The zone has a configured serial, which a rebuild alone
/// would give again.
#[test]
fn serials_survive_restarts_and_grow_with_changes() {
    let mut lab = Lab::for_test().unwrap();
    let cfg = lab
        .config_with("coresvc.toml", |s| {
            s.replacen("rname = \"hostmaster\"", "rname = \"hostmaster\"\nserial = 2026120301", 1)
        })
        .unwrap();
    let opts = AgentOpts::new(cfg.clone());
    lab.start_agent(&opts).unwrap();
    let zone = "mgmt.deevnet.net";
    let s0 = serial(&lab, "provisioner", GW_MGMT, zone).unwrap();
    assert_eq!(s0, 2026120301);
    let out = lab.coresvc(["service", "move", "artifacts.mgmt.deevnet.net", "provisioner-01"]).unwrap();
    assert!(out.status.success(), "{out:?}");
    let s1 = serial(&lab, "provisioner", GW_MGMT, zone).unwrap();
    assert!(s1 > s0, "a move moves the serial on: {s0} -> {s1}");
    let restart = |lab: &mut Lab| {
        lab.stop_agent(libc::SIGTERM, Duration::from_secs(10)).unwrap();
        lab.start_agent(&opts).unwrap();
    };
    restart(&mut lab);
    assert_eq!(serial(&lab, "provisioner", GW_MGMT, zone), Some(s1), "same content, same serial after a restart");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("\"coresvc management zone\"", "\"changed while stopped\"")).unwrap();
    restart(&mut lab);
    let s2 = serial(&lab, "provisioner", GW_MGMT, zone).unwrap();
    assert!(s2 > s1, "changed content, a higher serial after a restart: {s1} -> {s2}");
}
