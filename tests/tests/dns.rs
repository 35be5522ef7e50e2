//! The DNS service in the lab, with real clients (kdig), a real upstream
//! (Knot in the `upstream` node) and a reference authoritative server (Knot
//! serving the same zone, exported by `coresvc zone export`).

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    path::PathBuf,
    time::Duration,
};

use coresvc_lab::{
    AgentOpts, Lab,
    dns::{EXTRA_ZONES, Knot, Reply, Rr},
    raw::in_netns,
};

const GW_DVNT: &str = "10.20.0.1";

/// The upstream's zones (Knot in the `upstream` node).
const EXAMPLE_ORG: &str = "$ORIGIN example.org.\n$TTL 300\n\
@ IN SOA ns.example.org. hostmaster.example.org. 1 3600 600 604800 120\n\
@ IN NS ns\nns IN A 192.0.2.1\nwww IN A 192.0.2.80\nalias IN CNAME www\n";
const LAB_EXAMPLE: &str = "$ORIGIN lab.example.\n$TTL 300\n\
@ IN SOA ns.lab.example. hostmaster.lab.example. 1 3600 600 604800 120\n\
@ IN NS ns\nns IN A 192.0.2.1\nthing IN A 192.0.2.77\n";

/// The reference Knot listens on port 5300 of the gateway: let segments reach it.
const KNOT_RULE: &str = r#"
[[firewall.rule]]
name = "reference-knot"
from = "any"
to = "gateway"
proto = "udp"
ports = [5300]
action = "allow"

[[firewall.rule]]
name = "reference-knot-tcp"
from = "any"
to = "gateway"
proto = "tcp"
ports = [5300]
action = "allow"
"#;

fn config(lab: &Lab, edit: impl FnOnce(String) -> String) -> PathBuf {
    lab.config_with("coresvc.toml", |s| {
        let s = s.replace("upstreams = [\"192.0.2.1:53\"]", "upstreams = [\"192.0.2.1:5353\"]");
        edit(s + EXTRA_ZONES + KNOT_RULE)
    })
    .unwrap()
}

fn lab_with(edit: impl FnOnce(String) -> String) -> Lab {
    let mut lab = Lab::for_test().unwrap();
    let cfg = config(&lab, edit);
    lab.start_agent(&AgentOpts::new(cfg)).unwrap();
    lab
}

fn lab() -> Lab {
    lab_with(|s| s)
}

/// Knot in the upstream node: example.org on :53, lab.example on :5353.
fn upstreams(lab: &Lab) -> (Knot, Knot) {
    let org = lab.write_file("example.org.zone", EXAMPLE_ORG).unwrap();
    let labx = lab.write_file("lab.example.zone", LAB_EXAMPLE).unwrap();
    let a = Knot::start(lab, "upstream", &["192.0.2.1@53"], &[("example.org", &org)]).unwrap();
    let b = Knot::start(lab, "upstream", &["192.0.2.1@5353"], &[("lab.example", &labx)]).unwrap();
    (a, b)
}

fn ask(lab: &Lab, name: &str, t: &str) -> Reply {
    lab.kdig("dvnt-client", GW_DVNT, name, t, &[]).unwrap()
}

fn dns_counter(lab: &Lab, name: &str) -> u64 {
    lab.status_json().unwrap()["dns"]["counters"][name].as_u64().unwrap()
}

#[test]
fn authoritative_answers_for_every_record_type() {
    let lab = lab();
    // The seed's chain, resolved in one answer, from a site segment.
    let r = ask(&lab, "artifacts.dvntm.deevnet.net", "A");
    assert_eq!(r.rcode, "NOERROR");
    assert!(r.aa && r.ra, "{r:?}");
    assert_eq!(
        r.answer_texts(),
        [
            "artifacts.dvntm.deevnet.net. CNAME artifacts.mgmt.deevnet.net.",
            "artifacts.mgmt.deevnet.net. CNAME provisioner-01-dvntm.mgmt.deevnet.net.",
            "provisioner-01-dvntm.mgmt.deevnet.net. A 10.10.0.10",
        ]
    );
    // Management names are answered on site segments too.
    let r = ask(&lab, "provisioner-01.mgmt.deevnet.net", "A");
    assert_eq!(r.answer_texts(), ["provisioner-01.mgmt.deevnet.net. A 10.10.0.10"]);
    // NODATA and NXDOMAIN carry the SOA with the negative TTL (RFC 2308).
    for (name, rcode) in [("provisioner-01.mgmt.deevnet.net", "NOERROR"), ("nope.mgmt.deevnet.net", "NXDOMAIN")] {
        let r = ask(&lab, name, if rcode == "NOERROR" { "AAAA" } else { "A" });
        assert_eq!(r.rcode, rcode, "{name}");
        assert!(r.aa && r.answers.is_empty());
        assert_eq!(r.authority.len(), 1);
        assert_eq!(r.authority[0].rtype, "SOA");
        assert_eq!(r.authority[0].ttl, 300);
    }
    let r = ask(&lab, "web.ref.deevnet.net", "AAAA");
    assert_eq!(r.answer_texts(), ["web.ref.deevnet.net. AAAA fd00::80"]);
    let r = ask(&lab, "ref.deevnet.net", "MX");
    assert_eq!(r.answers[0].rtype, "MX");
    assert_eq!(r.additional.iter().filter(|a| a.rtype == "A").count(), 1, "the exchange's address: {r:?}");
    let r = ask(&lab, "_http._tcp.ref.deevnet.net", "SRV");
    assert_eq!(r.answers[0].rtype, "SRV");
    assert_eq!(r.additional.len(), 3, "web's A and AAAA records: {r:?}");
    let r = ask(&lab, "ref.deevnet.net", "TXT");
    assert_eq!(r.answers.len(), 1);
    assert!(r.answers[0].text.contains("v=spf1 -all"), "{r:?}");
    for t in ["NS", "SOA", "CAA"] {
        let r = ask(&lab, "ref.deevnet.net", t);
        assert_eq!(r.answers.len(), 1, "{t}: {r:?}");
        assert_eq!(r.answers[0].rtype, t);
    }
    // Reverse zones: hosts and static DHCP hosts have PTRs.
    let r = lab
        .kdig("dvnt-client", GW_DVNT, "10.10.0.10", "PTR", &["-x"])
        .unwrap_or_else(|_| lab.kdig("dvnt-client", GW_DVNT, "10.0.10.10.in-addr.arpa", "PTR", &[]).unwrap());
    let ptrs: Vec<&str> = r.answers.iter().map(|a| a.text.as_str()).collect();
    assert!(ptrs.contains(&"provisioner-01.mgmt.deevnet.net."), "{ptrs:?}");
    assert!(ptrs.contains(&"provisioner-01-dvntm.mgmt.deevnet.net."), "{ptrs:?}");
    // 0x20 clients: the question comes back as asked, and still matches.
    // (dig, because kdig lower-cases names before sending them.)
    let out = lab
        .exec(
            "dvnt-client",
            ["dig", "+noall", "+question", "+answer", "@10.20.0.1", "PrOvIsIoNeR-01.MgMt.DeEvNeT.NeT", "A"],
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(";PrOvIsIoNeR-01.MgMt.DeEvNeT.NeT."), "{text}");
    assert!(text.contains("10.10.0.10"), "{text}");
    // EDNS: our payload size.
    let r = lab.kdig("dvnt-client", GW_DVNT, "ns.mgmt.deevnet.net", "A", &["+edns"]).unwrap();
    assert_eq!(r.edns_size, Some(1232));
}

/// The same zone served by Knot (from `coresvc zone export`) and by coresvc:
/// every query of a list gets equivalent responses (rcode, AA, TC, and the
/// three sections as record sets; RA differs by design: coresvc also recurses).
#[test]
fn answers_match_knot_for_the_same_zone() {
    let lab = lab();
    // The zones exactly as the running agent serves them.
    let mut zones = Vec::new();
    for z in ["ref.deevnet.net", "0.20.10.in-addr.arpa"] {
        let out = lab.coresvc(["zone", "export", z]).unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        zones.push((z, lab.write_file(&format!("{z}.zone"), &String::from_utf8(out.stdout).unwrap()).unwrap()));
    }
    let zone_refs: Vec<(&str, &std::path::Path)> = zones.iter().map(|(z, p)| (*z, p.as_path())).collect();
    let _knot = Knot::start(&lab, "gw", &["10.20.0.1@5300"], &zone_refs).unwrap();
    let queries = [
        ("ref.deevnet.net", "SOA"),
        ("ref.deevnet.net", "NS"),
        ("ref.deevnet.net", "MX"),
        ("ref.deevnet.net", "TXT"),
        ("ref.deevnet.net", "CAA"),
        ("ref.deevnet.net", "A"),
        ("ref.deevnet.net", "ANY"),
        ("web.ref.deevnet.net", "A"),
        ("WEB.Ref.Deevnet.Net", "A"),
        ("web.ref.deevnet.net", "AAAA"),
        ("web.ref.deevnet.net", "MX"),
        ("web.ref.deevnet.net", "ANY"),
        ("www.ref.deevnet.net", "A"),
        ("www.ref.deevnet.net", "CNAME"),
        ("www.ref.deevnet.net", "TXT"),
        ("chain.ref.deevnet.net", "A"),
        ("chain.ref.deevnet.net", "AAAA"),
        ("outside.ref.deevnet.net", "CNAME"),
        ("nope.ref.deevnet.net", "A"),
        ("a.nope.ref.deevnet.net", "TXT"),
        ("_http._tcp.ref.deevnet.net", "SRV"),
        ("_tcp.ref.deevnet.net", "A"),
        ("a.b.ref.deevnet.net", "A"),
        ("b.ref.deevnet.net", "A"),
        ("deep.a.b.ref.deevnet.net", "A"),
        ("x.wild.ref.deevnet.net", "A"),
        ("y.x.wild.ref.deevnet.net", "A"),
        ("x.wild.ref.deevnet.net", "AAAA"),
        ("wild.ref.deevnet.net", "A"),
        ("sub.ref.deevnet.net", "NS"),
        ("host.sub.ref.deevnet.net", "A"),
        ("ns.sub.ref.deevnet.net", "A"),
        ("ref.deevnet.net", "TYPE65280"),
        ("80.0.20.10.in-addr.arpa", "PTR"),
        ("99.0.20.10.in-addr.arpa", "PTR"),
        ("0.20.10.in-addr.arpa", "SOA"),
        ("0.20.10.in-addr.arpa", "NS"),
    ];
    let cases: Vec<(&str, &str, &[&str])> = queries
        .iter()
        .flat_map(|(n, t)| [&[][..], &["+edns"][..], &["+tcp"][..]].map(|extra| (*n, *t, extra)))
        .collect();
    assert_same_as_knot(&lab, &cases);
}

/// Every query of `cases` (name, type, kdig options) gets equivalent
/// answers from coresvc and from the Knot on port 5300 of the gateway.
fn assert_same_as_knot(lab: &Lab, cases: &[(&str, &str, &[&str])]) {
    let mut mismatches = Vec::new();
    for (name, t, extra) in cases {
        let ours = lab.kdig("dvnt-client", GW_DVNT, name, t, extra).unwrap();
        let mut knot_args = vec!["-p", "5300"];
        knot_args.extend_from_slice(extra);
        let theirs = lab.kdig("dvnt-client", GW_DVNT, name, t, &knot_args).unwrap();
        if !same_answer(&ours, &theirs) {
            mismatches.push(format!("{name} {t} {extra:?}:\n  coresvc {ours:?}\n  knot    {theirs:?}"));
        }
    }
    assert!(mismatches.is_empty(), "{} mismatch(es):\n{}", mismatches.len(), mismatches.join("\n"));
}

/// Issue 17.13, against Knot serving the same data: a zone file's apex NS
/// set replaces the generated one, and a local CNAME whose target is outside
/// every zone is answered with the CNAME (NOERROR) when the client does not
/// ask for recursion, and when following it upstream fails (no upstream
/// runs in this test).
#[test]
fn zone_file_ns_and_cnames_leaving_the_zones_answer_as_knot() {
    let mut lab = Lab::for_test().unwrap();
    let file = lab
        .write_file(
            "files.example.zone",
            "$ORIGIN files.example.\n$TTL 300\n\
             @ IN SOA ns1.files.example. hostmaster.files.example. 7 3600 600 604800 60\n\
             @ IN NS ns1\n@ IN NS ns2.elsewhere.example.\nns1 IN A 10.20.0.7\nwww IN A 10.20.0.8\n\
             away IN CNAME www.example.org.\n",
        )
        .unwrap();
    let cfg = config(&lab, |s| {
        s.replace("upstream_timeout = \"2s\"", "upstream_timeout = \"1s\"")
            + &format!("\n[[zone]]\nname = \"files.example\"\nrole = \"site\"\nfile = \"{}\"\n", file.display())
    });
    lab.start_agent(&AgentOpts::new(cfg)).unwrap();
    let out = lab.coresvc(["zone", "export", "ref.deevnet.net"]).unwrap();
    let reference = lab.write_file("ref.zone", &String::from_utf8(out.stdout).unwrap()).unwrap();
    let _knot =
        Knot::start(&lab, "gw", &["10.20.0.1@5300"], &[("files.example", &file), ("ref.deevnet.net", &reference)])
            .unwrap();
    let cases: &[(&str, &str, &[&str])] = &[
        ("files.example", "NS", &[]),
        ("files.example", "NS", &["+tcp"]),
        ("files.example", "SOA", &[]),
        ("files.example", "ANY", &[]),
        ("ns1.files.example", "A", &[]),
        ("ns.files.example", "A", &[]),
        ("www.files.example", "A", &[]),
        ("nope.files.example", "A", &[]),
        ("outside.ref.deevnet.net", "A", &["+norec"]),
        ("outside.ref.deevnet.net", "AAAA", &["+norec", "+tcp"]),
        ("outside.ref.deevnet.net", "A", &["+norec", "+edns"]),
        ("away.files.example", "A", &["+norec"]),
        // Recursion asked for, the upstream silent: the chase fails.
        ("outside.ref.deevnet.net", "A", &[]),
        ("away.files.example", "A", &["+tcp"]),
    ];
    assert_same_as_knot(&lab, cases);
    assert!(dns_counter(&lab, "upstream_timeouts") >= 2, "the chases were tried upstream");
}

/// Equivalent responses: rcode, AA, TC, the three sections as record sets
/// and EDNS present or not (RA differs by design: coresvc also recurses).
fn same_answer(ours: &Reply, theirs: &Reply) -> bool {
    let norm = |v: &[Rr]| -> Vec<(String, String, u64, String)> {
        let mut v: Vec<_> = v.iter().map(|r| (r.name.clone(), r.rtype.clone(), r.ttl, r.rdata.clone())).collect();
        v.sort();
        v
    };
    ours.rcode == theirs.rcode
        && ours.aa == theirs.aa
        && ours.tc == theirs.tc
        && norm(&ours.answers) == norm(&theirs.answers)
        && norm(&ours.authority) == norm(&theirs.authority)
        && norm(&ours.additional) == norm(&theirs.additional)
        && ours.edns_size.is_some() == theirs.edns_size.is_some()
}

#[test]
fn forwarding_caching_and_per_domain_forwarders() {
    let lab = lab();
    let _up = upstreams(&lab);
    let r = ask(&lab, "www.example.org", "A");
    assert_eq!(r.rcode, "NOERROR");
    assert!(!r.aa && r.ra, "forwarded answers are not authoritative: {r:?}");
    assert_eq!(r.answer_texts(), ["www.example.org. A 192.0.2.80"]);
    let upstream_before = dns_counter(&lab, "upstream_queries");
    let hits_before = dns_counter(&lab, "cache_hits");
    // Over TCP: over UDP the XDP cache would answer before the agent's does.
    let again = lab.kdig("dvnt-client", GW_DVNT, "WWW.example.org", "A", &["+tcp"]).unwrap();
    assert_eq!(again.answers.len(), 1);
    assert!(again.answers[0].ttl <= r.answers[0].ttl);
    assert_eq!(dns_counter(&lab, "upstream_queries"), upstream_before, "answered from the cache");
    assert_eq!(dns_counter(&lab, "cache_hits"), hits_before + 1);
    // Negative answers are cached too (RFC 2308), with the SOA.
    let r = ask(&lab, "nope.example.org", "A");
    assert_eq!(r.rcode, "NXDOMAIN");
    assert_eq!(r.authority[0].rtype, "SOA");
    let before = dns_counter(&lab, "upstream_queries");
    assert_eq!(ask(&lab, "nope.example.org", "A").rcode, "NXDOMAIN");
    assert_eq!(dns_counter(&lab, "upstream_queries"), before);
    // A local CNAME leading outside is followed through the forwarder.
    let r = ask(&lab, "outside.ref.deevnet.net", "A");
    assert!(r.aa);
    assert_eq!(r.answer_texts(), ["outside.ref.deevnet.net. CNAME www.example.org.", "www.example.org. A 192.0.2.80"]);
    // Per-domain forwarding: lab.example goes to the server on :5353.
    let r = ask(&lab, "thing.lab.example", "A");
    assert_eq!(r.answer_texts(), ["thing.lab.example. A 192.0.2.77"]);
    // Names of local zones are never sent upstream.
    let before = dns_counter(&lab, "upstream_queries");
    ask(&lab, "nope.mgmt.deevnet.net", "A");
    assert_eq!(dns_counter(&lab, "upstream_queries"), before);
    // The cache is visible and can be flushed.
    let out = lab.coresvc(["dns", "cache", "--json"]).unwrap();
    let cached: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entry = cached.as_array().unwrap().iter().find(|e| e["name"] == "www.example.org.").expect("cached");
    assert_eq!((entry["qtype"].as_str(), entry["rcode"].as_str()), (Some("A"), Some("No Error")), "{entry}");
    assert!(entry["expires_in_secs"].as_u64().unwrap() > 0);
    let out = lab.coresvc(["dns", "flush"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("flushed "), "{out:?}");
    let before = dns_counter(&lab, "upstream_queries");
    ask(&lab, "www.example.org", "A");
    assert_eq!(dns_counter(&lab, "upstream_queries"), before + 1, "asked upstream again after the flush");
}

#[test]
fn a_failed_upstream_falls_over_to_the_next_then_servfail() {
    // 192.0.2.99 does not exist: every query to it times out.
    let lab = lab_with(|s| {
        s.replace("upstreams = [\"192.0.2.1\"]", "upstreams = [\"192.0.2.99\", \"192.0.2.1\"]")
            .replace("upstream_timeout = \"2s\"", "upstream_timeout = \"1s\"")
            + "\n[[dns.forward]]\ndomain = \"dead.example\"\nupstreams = [\"192.0.2.99\"]\n"
    });
    let _up = upstreams(&lab);
    let r = ask(&lab, "www.example.org", "A");
    assert_eq!(r.answer_texts(), ["www.example.org. A 192.0.2.80"]);
    assert!(dns_counter(&lab, "upstream_timeouts") >= 1);
    let r = ask(&lab, "x.dead.example", "A");
    assert_eq!(r.rcode, "SERVFAIL");
}

#[test]
fn truncation_then_tcp() {
    // 40 TXT records of 80 bytes: over 512 and 1232 bytes.
    let big: String = (0..40)
        .map(|i| format!("\n[[zone.record]]\nname = \"huge\"\ntype = \"TXT\"\ndata = '\"{i:02}{}\"'\n", "x".repeat(76)))
        .collect();
    let lab = lab_with(|s| s + &big);
    let r = lab.kdig("dvnt-client", GW_DVNT, "huge.ref.deevnet.net", "TXT", &["+ignore", "+noedns"]).unwrap();
    assert!(r.tc, "truncated over UDP: {r:?}");
    assert!(r.answers.is_empty());
    let r = lab.kdig("dvnt-client", GW_DVNT, "huge.ref.deevnet.net", "TXT", &["+ignore", "+edns"]).unwrap();
    assert!(r.tc && r.edns_size == Some(1232));
    // kdig retries over TCP by itself; +tcp asks directly.
    let r = lab.kdig("dvnt-client", GW_DVNT, "huge.ref.deevnet.net", "TXT", &[]).unwrap();
    assert!(!r.tc && r.answers.len() == 40, "{} answers", r.answers.len());
    let r = lab.kdig("dvnt-client", GW_DVNT, "huge.ref.deevnet.net", "TXT", &["+tcp"]).unwrap();
    assert_eq!(r.answers.len(), 40);
    assert!(dns_counter(&lab, "truncated") >= 2);
}

#[test]
fn service_move_takes_effect_at_once_and_survives_a_restart() {
    let mut lab = lab_with(|s| {
        s.replace(
            "[[zone.host]]\nname = \"provisioner-01-dvntm\"",
            "[[zone.host]]\nname = \"provisioner-02\"\naddresses = [\"10.10.0.11\"]\n\n[[zone.host]]\nname = \"provisioner-01-dvntm\"",
        )
    });
    let before = ask(&lab, "artifacts.dvntm.deevnet.net", "A");
    assert_eq!(before.answers.last().unwrap().text, "10.10.0.10");
    let out = lab.coresvc(["service", "move", "artifacts.mgmt.deevnet.net", "provisioner-02"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "artifacts.mgmt.deevnet.net.: provisioner-01-dvntm.mgmt.deevnet.net. -> provisioner-02.mgmt.deevnet.net."
    );
    // The very next query sees the new target, on every segment.
    for node in ["dvnt-client", "dvntm-client", "provisioner"] {
        let server = match node {
            "dvnt-client" => "10.20.0.1",
            "dvntm-client" => "10.30.0.1",
            _ => "10.10.0.1",
        };
        let r = lab.kdig(node, server, "artifacts.dvntm.deevnet.net", "A", &[]).unwrap();
        assert_eq!(r.answers.last().unwrap().text, "10.10.0.11", "{node}");
        assert_eq!(r.answers[1].text, "provisioner-02.mgmt.deevnet.net.");
    }
    // Refusals: an unknown host, and a name that is not a service.
    let out = lab.coresvc(["service", "move", "artifacts.mgmt.deevnet.net", "nobody"]).unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not exist"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = lab.coresvc(["service", "move", "provisioner-01.mgmt.deevnet.net", "provisioner-02"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a service"));
    // Restart: the move is still in force.
    lab.stop_agent(libc::SIGTERM, Duration::from_secs(10)).unwrap();
    lab.start_agent(&AgentOpts::new(lab.paths.run_dir.join("coresvc.toml"))).unwrap();
    let r = ask(&lab, "artifacts.mgmt.deevnet.net", "A");
    assert_eq!(r.answers.last().unwrap().text, "10.10.0.11");
}

#[test]
fn zone_reload_refuses_a_bad_file_and_keeps_serving() {
    let mut lab = Lab::for_test().unwrap();
    let zone_file = lab.write_file("files.zone", "$TTL 60\nhost IN A 10.20.0.60\n").unwrap();
    let cfg = config(&lab, |s| {
        s + &format!("\n[[zone]]\nname = \"files.example\"\nrole = \"site\"\nfile = \"{}\"\n", zone_file.display())
    });
    lab.start_agent(&AgentOpts::new(cfg)).unwrap();
    assert_eq!(ask(&lab, "host.files.example", "A").answer_texts(), ["host.files.example. A 10.20.0.60"]);
    std::fs::write(&zone_file, "$TTL 60\nhost IN A 10.20.0.61\nbroken IN A not-an-address\n").unwrap();
    let out = lab.coresvc(["zone", "reload"]).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused") && err.contains("files.zone"), "{err}");
    assert_eq!(ask(&lab, "host.files.example", "A").answer_texts(), ["host.files.example. A 10.20.0.60"]);
    std::fs::write(&zone_file, "$TTL 60\nhost IN A 10.20.0.61\nnew IN A 10.20.0.62\n").unwrap();
    let out = lab.coresvc(["zone", "reload"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(ask(&lab, "host.files.example", "A").answer_texts(), ["host.files.example. A 10.20.0.61"]);
    assert_eq!(ask(&lab, "new.files.example", "A").answers.len(), 1);
}

#[test]
fn the_uplink_side_is_refused() {
    // The firewall drops DNS from the uplink (inbound default deny) ...
    let lab = lab();
    coresvc_lab::run(&mut lab.cmd("upstream", ["ip", "route", "add", "10.0.0.0/8", "via", "192.0.2.2"])).unwrap();
    assert!(lab.kdig("upstream", "10.10.0.1", "provisioner-01.mgmt.deevnet.net", "A", &[]).is_err(), "dropped");
    assert!(lab.kdig("upstream", "192.0.2.2", "provisioner-01.mgmt.deevnet.net", "A", &[]).is_err(), "nothing listens");
    drop(lab);
    // ... and with a rule letting it through, DNS itself refuses: never an open resolver.
    let lab = lab_with(|s| {
        s + "\n[[firewall.rule]]\nname = \"uplink-dns\"\nfrom = \"uplink\"\nto = \"gateway\"\nproto = \"udp\"\nports = [53]\naction = \"allow\"\n"
    });
    coresvc_lab::run(&mut lab.cmd("upstream", ["ip", "route", "add", "10.0.0.0/8", "via", "192.0.2.2"])).unwrap();
    let r = lab.kdig("upstream", "10.10.0.1", "provisioner-01.mgmt.deevnet.net", "A", &[]).unwrap();
    assert_eq!(r.rcode, "REFUSED");
    assert!(r.answers.is_empty());
    let r = lab.kdig("upstream", "10.10.0.1", "www.example.org", "A", &[]).unwrap();
    assert_eq!(r.rcode, "REFUSED");
}

/// Builds a query (`id`, `name`, type A).
fn wire_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = vec![(id >> 8) as u8, id as u8, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in name.split('.') {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

#[test]
fn tcp_pipelining_and_malformed_input() {
    let lab = lab();
    let ns = lab.ns("dvnt-client");
    let server: SocketAddr = "10.20.0.1:53".parse().unwrap();
    // Ten queries written at once on one connection: ten answers.
    let ids = in_netns(&ns, move || {
        let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut all = Vec::new();
        for id in 0..10u16 {
            let q = wire_query(100 + id, "provisioner-01.mgmt.deevnet.net");
            all.extend_from_slice(&(q.len() as u16).to_be_bytes());
            all.extend_from_slice(&q);
        }
        s.write_all(&all)?;
        let mut ids = Vec::new();
        for _ in 0..10 {
            let mut len = [0u8; 2];
            s.read_exact(&mut len)?;
            let mut m = vec![0u8; u16::from_be_bytes(len) as usize];
            s.read_exact(&mut m)?;
            ids.push(u16::from_be_bytes([m[0], m[1]]));
        }
        ids.sort();
        Ok(ids)
    })
    .unwrap();
    assert_eq!(ids, (100..110).collect::<Vec<_>>());
    // Garbage over UDP: FORMERR or silence, never a crash.
    let replies = in_netns(&ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(Duration::from_millis(300)))?;
        let junk: Vec<Vec<u8>> = vec![
            vec![1, 2, 3],
            vec![0xde, 0xad, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1, 0, 1],
            vec![0xbe, 0xef, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0, 63],
            vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1],
            vec![0xff; 600],
        ];
        let mut n = 0;
        for j in &junk {
            s.send_to(j, server)?;
            let mut buf = [0u8; 2048];
            if let Ok((len, _)) = s.recv_from(&mut buf) {
                assert!(len >= 12);
                n += 1;
            }
        }
        Ok(n)
    })
    .unwrap();
    assert!(replies >= 2, "FORMERR for the queries with a header, got {replies} replies");
    let r = ask(&lab, "provisioner-01.mgmt.deevnet.net", "A");
    assert_eq!(r.answers.len(), 1, "still serving");
    assert!(dns_counter(&lab, "formerr") >= 2);
    assert!(dns_counter(&lab, "dropped_malformed") >= 2);
}

/// A deliberately slow upstream in the `upstream` node: answers every A
/// question with 192.0.2.55 after `delay`, and counts the questions.
fn slow_upstream(lab: &Lab, delay: Duration, run_for: Duration) -> std::thread::JoinHandle<usize> {
    let ns = lab.ns("upstream");
    std::thread::spawn(move || {
        in_netns(&ns, move || {
            let s = UdpSocket::bind("192.0.2.1:53")?;
            s.set_read_timeout(Some(Duration::from_millis(100)))?;
            let end = std::time::Instant::now() + run_for;
            let mut seen = 0;
            let mut buf = [0u8; 1500];
            while std::time::Instant::now() < end {
                let Ok((len, from)) = s.recv_from(&mut buf) else { continue };
                seen += 1;
                // Header and question of the query, then one A record.
                let mut q = 12;
                while q < len && buf[q] != 0 {
                    q += usize::from(buf[q]) + 1;
                }
                let qend = q + 5;
                let mut r = buf[..qend].to_vec();
                r[2] |= 0x80;
                r[3] = 0x80;
                r[6..12].copy_from_slice(&[0, 1, 0, 0, 0, 0]);
                r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 55]);
                let s2 = s.try_clone()?;
                std::thread::spawn(move || {
                    std::thread::sleep(delay);
                    let _ = s2.send_to(&r, from);
                });
            }
            Ok(seen)
        })
        .unwrap()
    })
}

#[test]
fn identical_questions_in_flight_share_one_upstream_query() {
    let lab = lab();
    let upstream = slow_upstream(&lab, Duration::from_millis(600), Duration::from_secs(4));
    std::thread::sleep(Duration::from_millis(200));
    let clients: Vec<_> = (0..5)
        .map(|_| {
            lab.cmd("dvnt-client", ["kdig", "+timeout=3", "+retry=0", "@10.20.0.1", "slow.example.net", "A"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in clients {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success());
    }
    let r = ask(&lab, "slow.example.net", "A");
    assert_eq!(r.answer_texts(), ["slow.example.net. A 192.0.2.55"]);
    assert_eq!(upstream.join().unwrap(), 1, "one upstream question for five clients and a cached sixth");
    assert!(dns_counter(&lab, "coalesced") >= 1);
}

/// Open file descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Issue 17.9: dnsperf floods random names of a forwarded domain while the
/// upstream takes every question and never answers. The agent keeps its
/// file descriptors bounded (pooled upstream sockets, `forward_max`
/// questions outstanding), answers the overflow SERVFAIL at once, and local
/// names keep being answered over UDP and TCP during the flood.
#[test]
fn a_random_name_flood_against_a_silent_upstream_stays_bounded() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    };
    let lab = lab_with(|s| s.replace("forward_max = 150", "forward_max = 100"));
    let pid = lab.agent_pid().unwrap();
    // The black hole: reads every question, answers none.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicUsize::new(0));
    let hole = {
        let (ns, stop, seen) = (lab.ns("upstream"), stop.clone(), seen.clone());
        std::thread::spawn(move || {
            in_netns(&ns, move || {
                let s = UdpSocket::bind("192.0.2.1:53")?;
                s.set_read_timeout(Some(Duration::from_millis(100)))?;
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    if s.recv_from(&mut buf).is_ok() {
                        seen.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(())
            })
        })
    };
    let mut names = String::new();
    for i in 0..60_000u64 {
        let r = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 20;
        names.push_str(&format!("r{r:x}-{i}.flood.example A\n"));
    }
    let file = lab.write_file("flood.txt", &names).unwrap();
    let before = open_fds(pid);
    let secs = 6;
    let flood = lab
        .cmd(
            "dvnt-client",
            ["dnsperf", "-s", GW_DVNT, "-l", &secs.to_string(), "-Q", "5000", "-c", "4", "-q", "5000", "-t", "2", "-d"],
        )
        .arg(&file)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let (mut most, mut local_ok, mut local_asked) = (before, 0, 0);
    while start.elapsed() < Duration::from_secs(secs) {
        most = most.max(open_fds(pid));
        for extra in [&[][..], &["+tcp"][..]] {
            local_asked += 1;
            if let Ok(r) = lab.kdig("dvnt-client", GW_DVNT, "provisioner-01.mgmt.deevnet.net", "A", extra)
                && r.answer_texts() == ["provisioner-01.mgmt.deevnet.net. A 10.10.0.10"]
            {
                local_ok += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = flood.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    std::thread::sleep(Duration::from_secs(3));
    let after = open_fds(pid);
    stop.store(true, Ordering::Relaxed);
    hole.join().unwrap().unwrap();
    let upstream = seen.load(Ordering::Relaxed);
    println!("fds before {before}, at most {most}, after {after}; {upstream} questions upstream\n{report}");
    // Pooled sockets (32), retired ones still waiting (each holds one of the
    // 100 admitted questions) and some slack for the rest of the agent.
    assert!(most <= before + 32 + 100 + 40, "file descriptors grew from {before} to {most}");
    assert!(after <= before + 32 + 10, "{after} file descriptors once the flood is over ({before} before)");
    assert_eq!(local_ok, local_asked, "local names answered during the flood");
    assert!(dns_counter(&lab, "upstream_overflow") > 1000, "the overflow was answered at once");
    assert!(report.contains("SERVFAIL"), "dnsperf saw the SERVFAILs: {report}");
    // At most forward_max questions per upstream timeout (2 s) reached the
    // upstream, plus one round.
    assert!(upstream <= 100 * (secs as usize / 2 + 2), "{upstream} questions upstream");
    assert!(upstream >= 100, "the flood reached the upstream ({upstream})");
    assert!(dns_counter(&lab, "upstream_queries") as usize <= 100 * (secs as usize / 2 + 2));
}

#[test]
fn tcp_connections_are_capped_and_idle_ones_closed() {
    let lab = lab_with(|s| {
        s.replace("tcp_idle_timeout = \"10s\"", "tcp_idle_timeout = \"1s\"")
            .replace("tcp_max_connections = 256", "tcp_max_connections = 2")
    });
    let ns = lab.ns("dvnt-client");
    let server: SocketAddr = "10.20.0.1:53".parse().unwrap();
    let (third_closed, idle_closed) = in_netns(&ns, move || {
        let a = TcpStream::connect(server)?;
        let b = TcpStream::connect(server)?;
        std::thread::sleep(Duration::from_millis(200));
        // The third is accepted by the kernel and closed by coresvc at once.
        let mut c = TcpStream::connect(server)?;
        c.set_read_timeout(Some(Duration::from_millis(800)))?;
        let mut buf = [0u8; 1];
        let third_closed = matches!(c.read(&mut buf), Ok(0) | Err(_));
        // An idle connection is closed after the idle timeout.
        let mut a2 = a.try_clone()?;
        a2.set_read_timeout(Some(Duration::from_secs(4)))?;
        let start = std::time::Instant::now();
        let idle_closed = matches!(a2.read(&mut buf), Ok(0)) && start.elapsed() < Duration::from_secs(3);
        drop(b);
        Ok((third_closed, idle_closed))
    })
    .unwrap();
    assert!(third_closed, "the connection over the cap is closed");
    assert!(idle_closed, "an idle connection is closed");
    assert!(dns_counter(&lab, "tcp_rejected") >= 1);
}

/// One framed query (TCP), and its answer read back.
fn tcp_ask(s: &mut TcpStream, id: u16, name: &str) -> std::io::Result<u16> {
    let q = wire_query(id, name);
    let mut f = (q.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(&q);
    s.write_all(&f)?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut m = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut m)?;
    Ok(u16::from_be_bytes([m[0], m[1]]))
}

/// Issue 17.10: one client address gets `tcp_max_per_client` connections;
/// more are closed at once while its others, and other clients, are served.
#[test]
fn tcp_connections_per_client_are_capped() {
    let lab = lab_with(|s| s.replace("tcp_max_per_client = 16", "tcp_max_per_client = 2"));
    let server: SocketAddr = "10.20.0.1:53".parse().unwrap();
    let (third_closed, first_served) = in_netns(&lab.ns("dvnt-client"), move || {
        let mut a = TcpStream::connect(server)?;
        let _b = TcpStream::connect(server)?;
        std::thread::sleep(Duration::from_millis(200));
        let mut c = TcpStream::connect(server)?;
        c.set_read_timeout(Some(Duration::from_millis(800)))?;
        let mut buf = [0u8; 1];
        let third_closed = matches!(c.read(&mut buf), Ok(0) | Err(_));
        a.set_read_timeout(Some(Duration::from_secs(3)))?;
        let first_served = tcp_ask(&mut a, 4242, "provisioner-01.mgmt.deevnet.net")? == 4242;
        Ok((third_closed, first_served))
    })
    .unwrap();
    assert!(third_closed, "the client's third connection is closed");
    assert!(first_served, "its first one is still served");
    // Another client, meanwhile.
    let other: SocketAddr = "10.10.0.1:53".parse().unwrap();
    let id = in_netns(&lab.ns("provisioner"), move || {
        let mut s = TcpStream::connect_timeout(&other, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        Ok(tcp_ask(&mut s, 77, "provisioner-01.mgmt.deevnet.net")?)
    })
    .unwrap();
    assert_eq!(id, 77);
    assert!(dns_counter(&lab, "tcp_rejected_per_client") >= 1);
    assert_eq!(dns_counter(&lab, "tcp_rejected"), 0, "not the global cap");
}

/// Issue 17.10: a client that pipelines queries and never reads the answers
/// is closed once a write of the server's cannot complete for
/// `tcp_write_timeout`: well within the idle timeout of the first write of
/// its own that blocked.
#[test]
fn a_tcp_client_that_never_reads_is_closed() {
    let lab = lab_with(|s| {
        s.replace("tcp_idle_timeout = \"10s\"", "tcp_idle_timeout = \"3s\"")
            .replace("tcp_write_timeout = \"2s\"", "tcp_write_timeout = \"1s\"")
    });
    let server: SocketAddr = "10.20.0.1:53".parse().unwrap();
    let (sent, blocked_to_closed) = in_netns(&lab.ns("dvnt-client"), move || {
        let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(3))?;
        // A small receive buffer: the answers pile up at the server.
        let size: libc::c_int = 4096;
        // SAFETY: setsockopt with a c_int of the stated size on our socket.
        unsafe {
            use std::os::fd::AsRawFd as _;
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw const size).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        s.set_write_timeout(Some(Duration::from_millis(300)))?;
        let mut chunk = Vec::new();
        for id in 0..200u16 {
            let q = wire_query(id, "provisioner-01.mgmt.deevnet.net");
            chunk.extend_from_slice(&(q.len() as u16).to_be_bytes());
            chunk.extend_from_slice(&q);
        }
        let start = std::time::Instant::now();
        let (mut sent, mut blocked) = (0usize, None);
        while start.elapsed() < Duration::from_secs(15) {
            match s.write(&chunk) {
                Ok(n) => sent += n,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    blocked.get_or_insert_with(std::time::Instant::now);
                }
                // Reset or broken: the server closed it.
                Err(_) => return Ok((sent, blocked.map(|b| b.elapsed()))),
            }
        }
        Ok((sent, None))
    })
    .unwrap();
    let took = blocked_to_closed.unwrap_or_else(|| panic!("still open after 15 s ({sent} bytes of queries sent)"));
    assert!(took < Duration::from_secs(3), "closed {took:?} after the client's writes blocked");
    assert!(dns_counter(&lab, "tcp_write_timeouts") >= 1);
    // The service is fine.
    assert_eq!(
        lab.kdig("dvnt-client", GW_DVNT, "provisioner-01.mgmt.deevnet.net", "A", &["+tcp"]).unwrap().answers.len(),
        1
    );
}

/// What a burst of UDP queries from one client got back.
#[derive(Debug, Default)]
struct Burst {
    sent: usize,
    answered: usize,
    truncated: usize,
    secs: f64,
}

/// Sends `n` queries for `name` to `server` from `node` as fast as it can,
/// then collects the replies for a second.
fn burst(lab: &Lab, node: &str, server: &str, name: &'static str, n: usize) -> Burst {
    let to: SocketAddr = format!("{server}:53").parse().unwrap();
    in_netns(&lab.ns(node), move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        let start = std::time::Instant::now();
        let mut b = Burst { sent: n, ..Default::default() };
        let mut buf = [0u8; 1500];
        let mut take = |s: &UdpSocket, b: &mut Burst| {
            while let Ok((len, _)) = s.recv_from(&mut buf) {
                if len < 12 {
                    continue;
                }
                if buf[2] & 0x02 != 0 {
                    assert_eq!(&buf[6..12], &[0; 6], "a truncated answer has no records");
                    b.truncated += 1;
                } else {
                    b.answered += 1;
                }
            }
        };
        // In rounds of 20, reading what came back in between (no socket
        // buffer overflows on either side).
        s.set_read_timeout(Some(Duration::from_millis(2)))?;
        for id in 0..n {
            s.send_to(&wire_query(id as u16, name), to)?;
            if id % 20 == 19 {
                take(&s, &mut b);
            }
        }
        b.secs = start.elapsed().as_secs_f64();
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        take(&s, &mut b);
        Ok(b)
    })
    .unwrap()
}

/// Issue 17.11 in the lab: one client floods (a burst of its own, then
/// kxdpgun) with response rate limiting at 50 answers/s per /24, slip 2:
/// the XDP cache and then the agent (cache off) answer about the rate, send
/// truncated answers (TC) for every second limited one and drop the rest,
/// counted; a client of another segment is answered all along, and the
/// limited one still gets its answers over TCP.
#[test]
fn response_rate_limiting_in_the_xdp_cache_and_the_agent() {
    let mut lab = Lab::for_test().unwrap();
    let cfg = config(&lab, |s| s.replace("responses_per_second = 0 ", "responses_per_second = 50 "));
    lab.start_agent(&AgentOpts::new(cfg.clone())).unwrap();
    let name = "provisioner-01.mgmt.deevnet.net";
    let well_behaved = |lab: &Lab| {
        for _ in 0..3 {
            let r = lab.kdig("dvntm-client", "10.30.0.1", name, "A", &[]).unwrap();
            assert_eq!(r.answers.len(), 1, "another prefix is answered: {r:?}");
            assert!(!r.tc);
        }
        let r = lab.kdig("dvnt-client", GW_DVNT, name, "A", &["+tcp"]).unwrap();
        assert_eq!(r.answers.len(), 1, "TCP is never limited");
    };
    // Warm the XDP cache; wait for the bucket to fill again.
    ask(&lab, name, "A");
    std::thread::sleep(Duration::from_secs(2));
    let b = burst(&lab, "dvnt-client", GW_DVNT, name, 2000);
    println!("XDP: {b:?}");
    // The burst (50), the rate while it lasted, on each CPU at most.
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    assert!(b.answered as f64 <= cpus * (50.0 + 50.0 * b.secs) + 5.0, "{b:?}");
    assert!(b.answered >= 40, "the burst was answered: {b:?}");
    assert!(b.truncated >= 500, "every second limited answer slips: {b:?}");
    assert!(b.answered + b.truncated < b.sent - 500, "the rest were dropped: {b:?}");
    let limited = xdp_counter(&lab, "dvnt", "rate_limited");
    assert!(limited >= 500 && xdp_counter(&lab, "dvnt", "slipped") >= 500, "counted in the program");
    well_behaved(&lab);
    // kxdpgun from the same client for two seconds.
    let qfile = lab.write_file("rrl-queries.txt", &format!("{name} A\n")).unwrap();
    let mac = String::from_utf8(lab.exec("gw", ["cat", "/sys/class/net/dvnt0/address"]).unwrap().stdout).unwrap();
    let out = lab
        .cmd("dvnt-client", ["kxdpgun", "-t", "2", "-Q", "20000", "-I", "eth0", "-R", mac.trim(), "-i"])
        .arg(&qfile)
        .arg(GW_DVNT)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "kxdpgun: {text}{}", String::from_utf8_lossy(&out.stderr));
    println!("kxdpgun:\n{text}");
    let more = xdp_counter(&lab, "dvnt", "rate_limited") - limited;
    assert!(more >= 10_000, "kxdpgun's flood was limited ({more} more):\n{text}");
    well_behaved(&lab);
    // The agent alone (the XDP cache off).
    let text = std::fs::read_to_string(&cfg).unwrap().replace("dns_cache = true", "dns_cache = false");
    std::fs::write(&cfg, text).unwrap();
    let out = lab.coresvc(["reload"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(Duration::from_secs(2));
    let b = burst(&lab, "dvnt-client", GW_DVNT, name, 2000);
    println!("agent: {b:?}");
    println!("agent counters {}", lab.status_json().unwrap()["dns"]["counters"]);
    println!(
        "{}",
        std::fs::read_to_string(&cfg)
            .unwrap()
            .lines()
            .filter(|l| l.contains("responses_per") || l.contains("dns_cache"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(b.answered as f64 <= 50.0 + 50.0 * b.secs + 5.0, "{b:?}");
    assert!(b.answered >= 40 && b.truncated >= 500, "{b:?}");
    assert!(dns_counter(&lab, "rate_limited") >= 500 && dns_counter(&lab, "rate_limit_slipped") >= 500);
    well_behaved(&lab);
}

// ---------------------------------------------------------------- XDP cache

/// The XDP answer cache's counter `field` for segment `segment`.
fn xdp_counter(lab: &Lab, segment: &str, field: &str) -> u64 {
    let st = lab.status_json().unwrap();
    let segs = st["dataplane"]["dns_cache"]["segments"].as_array().cloned().unwrap_or_default();
    let seg = segs.iter().find(|s| s["segment"] == segment).unwrap_or_else(|| panic!("no segment {segment}: {st}"));
    seg[field].as_u64().unwrap()
}

/// A reply's content for comparing a cached answer with the first one:
/// rcode, flags and the sections without TTLs.
type Rrs = Vec<(String, String, String)>;

fn content(r: &Reply) -> (String, bool, bool, Rrs, Rrs) {
    let strip = |v: &[Rr]| {
        let mut v: Vec<_> = v.iter().map(|r| (r.name.clone(), r.rtype.clone(), r.rdata.clone())).collect();
        v.sort();
        v
    };
    (r.rcode.clone(), r.aa, r.ra, strip(&r.answers), [strip(&r.authority), strip(&r.additional)].concat())
}

/// `dig` (BIND's: EDNS with a cookie by default) on dvnt-client: status and
/// the answer section without TTLs.
fn dig(lab: &Lab, name: &str, t: &str, opts: &[&str]) -> (String, Vec<String>) {
    let mut args = vec!["dig", "+tries=1", "+time=3", "@10.20.0.1", name, t];
    args.extend_from_slice(opts);
    let out = lab.exec("dvnt-client", &args).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let status = text.split("status: ").nth(1).and_then(|s| s.split(',').next()).unwrap_or("").to_string();
    let mut in_answer = false;
    let mut answers = Vec::new();
    for l in text.lines() {
        if l.starts_with(";; ANSWER SECTION") {
            in_answer = true;
        } else if l.trim().is_empty() {
            in_answer = false;
        } else if in_answer {
            let f: Vec<&str> = l.split_whitespace().collect();
            answers.push(format!("{} {}", f[0].to_ascii_lowercase(), f[2..].join(" ")));
        }
    }
    assert!(!status.is_empty(), "dig {name} {t} {opts:?}: {text}");
    (status, answers)
}

#[test]
fn the_xdp_cache_answers_repeated_questions_without_the_agent() {
    let lab = lab();
    let _up = upstreams(&lab);
    let cases: &[(&str, &str, &[&str])] = &[
        ("artifacts.dvntm.deevnet.net", "A", &[]),
        ("ArtiFacts.DVNTM.deevnet.NET", "A", &["+edns"]),
        ("web.ref.deevnet.net", "AAAA", &[]),
        ("ref.deevnet.net", "MX", &["+dnssec"]),
        ("_http._tcp.ref.deevnet.net", "SRV", &["+edns"]),
        ("nope.ref.deevnet.net", "A", &[]),
        ("10.0.10.10.in-addr.arpa", "PTR", &[]),
        ("www.example.org", "A", &[]),
        ("nope.example.org", "A", &["+edns"]),
    ];
    for (name, t, opts) in cases {
        let first = lab.kdig("dvnt-client", GW_DVNT, name, t, opts).unwrap();
        let (hits, queries) = (xdp_counter(&lab, "dvnt", "hits"), dns_counter(&lab, "queries_udp"));
        for _ in 0..3 {
            let again = lab.kdig("dvnt-client", GW_DVNT, name, t, opts).unwrap();
            assert_eq!(content(&again), content(&first), "{name} {t} {opts:?} from the cache");
            assert_eq!(again.qname, first.qname, "the question as asked");
            for (a, b) in again.answers.iter().zip(&first.answers) {
                assert!(a.ttl <= b.ttl, "{name}: TTLs never grow");
            }
        }
        assert_eq!(xdp_counter(&lab, "dvnt", "hits"), hits + 3, "{name} {t} {opts:?}: answered from XDP");
        assert_eq!(dns_counter(&lab, "queries_udp"), queries, "{name} {t} {opts:?}: the agent was not asked");
    }
    // dig (BIND) sends EDNS with a cookie; 0x20 case; DO; no EDNS.
    for opts in [&[][..], &["+dnssec"], &["+noedns"], &["+nocookie"]] {
        let first = dig(&lab, "PrOvIsIoNeR-01.MgMt.DeEvNeT.NeT", "A", opts);
        assert_eq!(first.0, "NOERROR");
        let hits = xdp_counter(&lab, "dvnt", "hits");
        let again = dig(&lab, "provisioner-01.MGMT.deevnet.net", "A", opts);
        assert_eq!(again, first, "dig {opts:?}");
        assert_eq!(xdp_counter(&lab, "dvnt", "hits"), hits + 1, "dig {opts:?} answered from XDP");
    }
    // A forwarded answer from the cache never has a larger TTL than the
    // agent gives at that moment: between two agent answers (TCP) it lies
    // between their TTLs.
    let before = lab.kdig("dvnt-client", GW_DVNT, "www.example.org", "A", &["+tcp"]).unwrap();
    let hits = xdp_counter(&lab, "dvnt", "hits");
    let cached = lab.kdig("dvnt-client", GW_DVNT, "www.example.org", "A", &[]).unwrap();
    let after = lab.kdig("dvnt-client", GW_DVNT, "www.example.org", "A", &["+tcp"]).unwrap();
    assert_eq!(xdp_counter(&lab, "dvnt", "hits"), hits + 1);
    let ttl = |r: &Reply| r.answers[0].ttl;
    assert!(ttl(&after) <= ttl(&cached) && ttl(&cached) <= ttl(&before), "{before:?} {cached:?} {after:?}");
    // Nothing but TCP was passed to the agent except for misses; the
    // counters are in bpftool too, by field name.
    let st = lab.status_json().unwrap();
    assert_eq!(st["dataplane"]["dns_cache"]["answering"], true);
    let passes = st["dataplane"]["dns_cache"]["segments"][1]["passes"].as_object().unwrap().clone();
    assert!(passes.iter().all(|(reason, n)| reason == "tcp" || n == 0), "{passes:?}");
    let out = std::process::Command::new("bpftool")
        .args(["map", "dump", "pinned", &format!("{}/dns_stats", lab.paths.pin_dir.display())])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("hits") && text.contains("pass_malformed"), "{text}");
    let out = lab.coresvc(["status"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("answer cache answering") && text.contains("segment dvnt"), "{text}");
}

/// A client asks in a tight loop while the service moves back and forth:
/// once `coresvc service move` has returned, no answer names the old host.
#[test]
fn a_service_move_leaves_no_stale_answer_in_the_xdp_cache() {
    use std::sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    };
    use std::time::Instant;
    let lab = lab_with(|s| {
        s.replace(
            "[[zone.host]]\nname = \"provisioner-01-dvntm\"",
            "[[zone.host]]\nname = \"provisioner-02\"\naddresses = [\"10.10.0.11\"]\n\n[[zone.host]]\nname = \"provisioner-01-dvntm\"",
        )
    });
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let seen: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let ns = lab.ns("dvnt-client");
    let client = {
        let (stop, answered, seen) = (stop.clone(), answered.clone(), seen.clone());
        std::thread::spawn(move || {
            in_netns(&ns, move || {
                let s = UdpSocket::bind("0.0.0.0:0")?;
                s.set_read_timeout(Some(Duration::from_millis(300)))?;
                let mut id: u16 = 0;
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    id = id.wrapping_add(1);
                    let sent = Instant::now();
                    s.send_to(&wire_query(id, "artifacts.dvntm.deevnet.net"), "10.20.0.1:53")?;
                    // Replies to earlier (timed-out) queries are skipped by ID.
                    while let Ok((len, _)) = s.recv_from(&mut buf) {
                        if u16::from_be_bytes([buf[0], buf[1]]) != id {
                            continue;
                        }
                        let m = hickory_proto::op::Message::from_vec(&buf[..len])?;
                        let last = m.answers.last().map(|r| r.data.to_string()).unwrap_or_default();
                        seen.lock().unwrap().push((sent, last));
                        answered.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
                Ok(())
            })
        })
    };
    let wait_for = |n: u64| {
        let target = answered.load(Ordering::Relaxed) + n;
        let start = Instant::now();
        while answered.load(Ordering::Relaxed) < target {
            assert!(start.elapsed() < Duration::from_secs(30), "the client stopped getting answers");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_for(50);
    let hits_before = xdp_counter(&lab, "dvnt", "hits");
    wait_for(50);
    assert!(xdp_counter(&lab, "dvnt", "hits") > hits_before, "the loop is answered from XDP");
    // (move started, move returned, the address it leads to)
    let mut moves = Vec::new();
    for (i, (host, addr)) in
        [("provisioner-02", "10.10.0.11"), ("provisioner-01-dvntm", "10.10.0.10")].iter().cycle().take(6).enumerate()
    {
        let start = Instant::now();
        let out = lab.coresvc(["service", "move", "artifacts.mgmt.deevnet.net", host]).unwrap();
        assert!(out.status.success(), "move {i}: {}", String::from_utf8_lossy(&out.stderr));
        moves.push((start, Instant::now(), *addr));
        wait_for(30);
    }
    let hits_after_moves = xdp_counter(&lab, "dvnt", "hits");
    wait_for(30);
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap().unwrap();
    assert!(xdp_counter(&lab, "dvnt", "hits") > hits_after_moves, "XDP answers again after the moves");
    assert!(xdp_counter(&lab, "dvnt", "invalidated") >= 1, "entries were invalidated, not just missed");
    let seen = seen.lock().unwrap();
    let mut checked = 0;
    for (k, (_, done, addr)) in moves.iter().enumerate() {
        let next_start = moves.get(k + 1).map(|m| m.0);
        for (sent, got) in seen.iter().filter(|(t, _)| *t >= *done && next_start.is_none_or(|n| *t < n)) {
            assert_eq!(
                got,
                addr,
                "a query sent {:?} after move {k} returned got the old answer",
                sent.duration_since(*done)
            );
            checked += 1;
        }
    }
    assert!(checked >= 6 * 30, "{checked} answers checked");
}

#[test]
fn after_a_clean_stop_cached_answers_come_from_xdp_for_the_grace_only() {
    let mut lab = lab_with(|s| s.replace("dns_after_stop = \"30s\"", "dns_after_stop = \"5s\""));
    let name = "artifacts.dvntm.deevnet.net";
    let first = ask(&lab, name, "A");
    let hits = xdp_counter(&lab, "dvnt", "hits");
    assert_eq!(content(&ask(&lab, name, "A")), content(&first));
    assert_eq!(xdp_counter(&lab, "dvnt", "hits"), hits + 1, "cached in XDP");
    let st = lab.stop_agent(libc::SIGTERM, Duration::from_secs(10)).unwrap().unwrap();
    assert!(st.success(), "clean exit: {st}");
    let stopped = std::time::Instant::now();
    // The agent is gone; a restart would take over within the grace.
    assert_eq!(content(&ask(&lab, name, "A")), content(&first), "answered from XDP after the stop");
    assert!(stopped.elapsed() < Duration::from_secs(4), "the check ran within the grace");
    std::thread::sleep(Duration::from_secs(6).saturating_sub(stopped.elapsed()));
    // A stop without a start: another server may take the address now.
    let late = lab.kdig("dvnt-client", GW_DVNT, name, "A", &[]);
    assert!(late.is_err(), "no answer once the grace is over: {late:?}");
}

#[test]
fn the_xdp_cache_is_switched_by_the_configuration() {
    let mut lab = Lab::for_test().unwrap();
    let cfg = config(&lab, |s| s.replace("dns_cache = true", "dns_cache = false"));
    lab.start_agent(&AgentOpts::new(cfg.clone())).unwrap();
    for _ in 0..2 {
        assert_eq!(ask(&lab, "provisioner-01.mgmt.deevnet.net", "A").answers.len(), 1);
    }
    assert_eq!(xdp_counter(&lab, "dvnt", "hits"), 0, "off: the agent answers everything");
    assert_eq!(xdp_counter(&lab, "dvnt", "misses"), 0, "off: the program does not look");
    assert_eq!(lab.status_json().unwrap()["dataplane"]["dns_cache"]["answering"], false);
    // On again by a reload.
    let text = std::fs::read_to_string(&cfg).unwrap().replace("dns_cache = false", "dns_cache = true");
    std::fs::write(&cfg, text).unwrap();
    let out = lab.coresvc(["reload"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(lab.status_json().unwrap()["dataplane"]["dns_cache"]["answering"], true);
    for _ in 0..2 {
        assert_eq!(ask(&lab, "provisioner-01.mgmt.deevnet.net", "A").answers.len(), 1);
    }
    assert_eq!(xdp_counter(&lab, "dvnt", "hits"), 1, "the second one from XDP");
}
