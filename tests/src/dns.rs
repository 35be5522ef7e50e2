//! DNS helpers for the lab tests: `kdig +json` (RFC 8427) as a structured
//! reply, and a Knot DNS server started inside a lab namespace.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::Lab;

/// Extra zone data for the tests, appended to the built-in configuration (it
/// lands in the last zone, dvntm.deevnet.net, and in a test zone with every
/// record type: chains, wildcards, a delegation).
pub const EXTRA_ZONES: &str = r#"
[[zone.record]]
name = "big"
type = "TXT"
data = '"0123456789012345678901234567890123456789012345678901234567890123456789"'

[[zone]]
name = "ref.deevnet.net"
role = "site"
ttl = 120
[zone.soa]
serial = 2026112501
minimum = 60
[[zone.host]]
name = "ns"
addresses = ["10.20.0.1"]
[[zone.host]]
name = "web"
addresses = ["10.20.0.80", "10.20.0.81", "fd00::80"]
[[zone.host]]
name = "mail"
addresses = ["10.20.0.25"]
[[zone.host]]
name = "deep.a.b"
addresses = ["10.20.0.90"]
[[zone.service]]
name = "www"
target = "web"
[[zone.service]]
name = "chain"
target = "www"
[[zone.service]]
name = "outside"
target = "www.example.org."
[[zone.record]]
name = "@"
type = "MX"
data = "10 mail"
[[zone.record]]
name = "_http._tcp"
type = "SRV"
data = "0 5 80 web"
[[zone.record]]
name = "@"
type = "TXT"
data = '"v=spf1 -all" "second string"'
[[zone.record]]
name = "*.wild"
type = "A"
data = "10.20.0.99"
[[zone.record]]
name = "sub"
type = "NS"
data = "ns.sub"
[[zone.record]]
name = "ns.sub"
type = "A"
data = "10.20.0.53"
[[zone.record]]
name = "@"
type = "CAA"
data = '0 issue "letsencrypt.org"'
"#;

/// One resource record as kdig reports it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rr {
    pub name: String,
    pub rtype: String,
    pub ttl: u64,
    /// The RDATA in hex (wire format): comparable across servers.
    pub rdata: String,
    /// kdig's presentation of the RDATA, for messages.
    pub text: String,
}

/// A reply as kdig saw it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub rcode: String,
    pub aa: bool,
    pub tc: bool,
    pub rd: bool,
    pub ra: bool,
    pub qname: String,
    pub answers: Vec<Rr>,
    pub authority: Vec<Rr>,
    pub additional: Vec<Rr>,
    /// The EDNS UDP payload size of the reply's OPT, if any.
    pub edns_size: Option<u64>,
}

impl Reply {
    pub fn answer_texts(&self) -> Vec<String> {
        self.answers.iter().map(|r| format!("{} {} {}", r.name, r.rtype, r.text)).collect()
    }
}

fn rrs(v: &Value, key: &str) -> Vec<Rr> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter(|r| r["TYPEname"] != "OPT")
                .map(|r| {
                    let text = r
                        .as_object()
                        .and_then(|o| o.iter().find(|(k, _)| k.starts_with("rdata")).map(|(_, v)| v.to_string()))
                        .unwrap_or_default();
                    Rr {
                        name: r["NAME"].as_str().unwrap_or("").to_ascii_lowercase(),
                        rtype: r["TYPEname"].as_str().unwrap_or("").to_string(),
                        ttl: r["TTL"].as_u64().unwrap_or(0),
                        rdata: r["RDATAHEX"].as_str().unwrap_or("").to_ascii_uppercase(),
                        text: text.trim_matches('"').to_string(),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

fn rcode_name(n: u64) -> String {
    match n {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        9 => "NOTAUTH",
        16 => "BADVERS",
        _ => return format!("RCODE{n}"),
    }
    .to_string()
}

/// Parses `kdig +json` output (RFC 8427 field names; flags are 0 or 1).
pub fn parse_reply(json: &str) -> Result<Reply> {
    let v: Value = serde_json::from_str(json).with_context(|| format!("kdig output is not JSON: {json}"))?;
    let flag = |k: &str| v[k].as_u64() == Some(1);
    let edns_size = v
        .get("additionalRRs")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|r| r["TYPEname"] == "OPT"))
        .and_then(|r| r["CLASS"].as_u64());
    Ok(Reply {
        rcode: rcode_name(v["RCODE"].as_u64().unwrap_or(u64::MAX)),
        aa: flag("AA"),
        tc: flag("TC"),
        rd: flag("RD"),
        ra: flag("RA"),
        qname: v["QNAME"].as_str().unwrap_or("").to_string(),
        answers: rrs(&v, "answerRRs"),
        authority: rrs(&v, "authorityRRs"),
        additional: rrs(&v, "additionalRRs"),
        edns_size,
    })
}

impl Lab {
    /// `kdig +json @server name type [args]` on `node`.
    pub fn kdig(&self, node: &str, server: &str, name: &str, rtype: &str, args: &[&str]) -> Result<Reply> {
        let mut a: Vec<String> =
            vec!["kdig".into(), "+json".into(), "+timeout=3".into(), "+retry=0".into(), format!("@{server}")];
        a.extend(args.iter().map(|s| s.to_string()));
        a.push(name.to_string());
        a.push(rtype.to_string());
        let out = self.exec(node, &a)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || stdout.trim().is_empty() {
            bail!("kdig {} {name} {rtype} failed: {}{}", a.join(" "), stdout, String::from_utf8_lossy(&out.stderr));
        }
        parse_reply(&stdout)
    }

    /// Writes `text` as a file in the lab's run directory.
    pub fn write_file(&self, name: &str, text: &str) -> Result<PathBuf> {
        let p = self.paths.run_dir.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        Ok(p)
    }

    /// A coresvc configuration: the built-in one with `edit` applied to its text.
    pub fn config_with(&self, name: &str, edit: impl FnOnce(String) -> String) -> Result<PathBuf> {
        let base = std::fs::read_to_string(crate::default_config())?;
        // Relative paths of the example (the TFTP root) stay valid.
        let base = base.replace(
            "root = \"tftp\"",
            &format!("root = \"{}\"", crate::workspace_root().join("examples/tftp").display()),
        );
        self.write_file(name, &edit(base))
    }
}

/// Knot DNS (knotd) serving zone files inside a lab namespace; stopped on drop.
pub struct Knot {
    child: Child,
    dir: PathBuf,
}

impl Knot {
    /// Starts knotd on `node`, listening on `listen` (`addr@port`), serving
    /// `zones` (origin, zone file). Waits until it answers.
    pub fn start(lab: &Lab, node: &str, listen: &[&str], zones: &[(&str, &Path)]) -> Result<Knot> {
        let dir = lab.paths.run_dir.join(format!("knot-{node}-{}", listen.join("-").replace(['@', '.', ':'], "_")));
        std::fs::create_dir_all(&dir)?;
        let mut conf = format!("server:\n    rundir: {d}\n    user: root\n", d = dir.display());
        for l in listen {
            conf.push_str(&format!("    listen: {l}\n"));
        }
        conf.push_str(&format!("database:\n    storage: {}\n", dir.display()));
        // mod-stats: `knotc stats` counts what Knot answered (the benchmarks read it).
        conf.push_str("template:\n  - id: default\n    semantic-checks: off\n    zonefile-sync: -1\n    journal-content: none\n    global-module: mod-stats\nzone:\n");
        for (origin, file) in zones {
            conf.push_str(&format!("  - domain: {origin}\n    file: {}\n", file.display()));
        }
        Knot::launch(lab, node, dir, &conf, listen[0], zones[0].0)
    }

    /// Starts knotd on `node` with the configuration `conf` (its run
    /// directory is the one returned by [`Knot::dir_for`]). Waits until it
    /// answers `zone`'s SOA on `listen` (`addr@port`): for a secondary, until
    /// its first transfer is done.
    pub fn start_conf(lab: &Lab, node: &str, name: &str, conf: &str, listen: &str, zone: &str) -> Result<Knot> {
        Knot::launch(lab, node, Knot::dir_for(lab, name)?, conf, listen, zone)
    }

    /// The run directory of a knotd started with [`Knot::start_conf`].
    pub fn dir_for(lab: &Lab, name: &str) -> Result<PathBuf> {
        let dir = lab.paths.run_dir.join(format!("knot-{name}"));
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    fn launch(lab: &Lab, node: &str, dir: PathBuf, conf: &str, listen: &str, zone: &str) -> Result<Knot> {
        let conf_path = dir.join("knot.conf");
        std::fs::write(&conf_path, conf)?;
        let log = std::fs::File::create(dir.join("knot.log"))?;
        let child = lab
            .cmd(node, ["knotd", "-c"])
            .arg(&conf_path)
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("starting knotd (package knot, installed by cargo xtask setup)")?;
        let mut k = Knot { child, dir };
        // Ready when it answers the zone's SOA.
        let (addr, port) = listen.split_once('@').unwrap_or((listen, "53"));
        let start = Instant::now();
        loop {
            let ok = lab
                .exec(node, ["kdig", "+timeout=1", "+retry=0", &format!("@{addr}"), "-p", port, zone, "SOA"])
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("NOERROR"))
                .unwrap_or(false);
            if ok {
                return Ok(k);
            }
            if let Some(st) = k.child.try_wait()? {
                bail!("knotd exited ({st}): {}", k.log());
            }
            if start.elapsed() > Duration::from_secs(10) {
                bail!("knotd did not answer within 10 s: {}", k.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("knot.log")).unwrap_or_default()
    }

    /// A counter of `knotc stats` (e.g. `mod-stats.request-protocol[udp4]`);
    /// 0 while Knot has counted none.
    pub fn stat(&self, name: &str) -> Result<u64> {
        let out = check(Command::new("knotc").arg("-s").arg(self.dir.join("knot.sock")).arg("stats"))?;
        Ok(out.lines().find_map(|l| l.strip_prefix(name)?.trim().strip_prefix('=')?.trim().parse().ok()).unwrap_or(0))
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` and fails with its output.
pub fn check(cmd: &mut Command) -> Result<String> {
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("{cmd:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
