//! `cargo xtask bench tftp`: one file fetched from coresvc, then (coresvc
//! stopped, its programs detached) from tftpd-hpa, both on the gateway's
//! dvnt address, port 69, by clients on dvnt-client. curl measures what it
//! can (block sizes); atftp measures windowsize (RFC 7440), which only
//! coresvc supports. The first fetch of each case is captured on the
//! client (tcpdump, its first packets): the options the server granted
//! (its OACK), the block size and the window it really sent are reported
//! as seen on the wire, not as asked for. Every fetch is checked byte for
//! byte.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use coresvc_lab::{AgentOpts, Lab};

use super::{
    BenchLab, Opts,
    isolation::{self, Flat, Tool},
    report::{Check, Ratio, Row, Section},
};
use crate::util::step;

const SERVER: &str = "10.20.0.1";

/// One measured configuration.
struct Case {
    client: Client,
    blksize: u32,
    windowsize: u32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Client {
    Curl,
    Atftp,
}

const CASES: &[Case] = &[
    Case { client: Client::Curl, blksize: 512, windowsize: 1 },
    Case { client: Client::Curl, blksize: 1468, windowsize: 1 },
    Case { client: Client::Curl, blksize: 8192, windowsize: 1 },
    Case { client: Client::Atftp, blksize: 1468, windowsize: 1 },
    Case { client: Client::Atftp, blksize: 1468, windowsize: 16 },
    Case { client: Client::Atftp, blksize: 8192, windowsize: 16 },
];

const SMOKE_CASES: &[Case] = &[
    Case { client: Client::Curl, blksize: 1468, windowsize: 1 },
    Case { client: Client::Atftp, blksize: 1468, windowsize: 16 },
];

fn label(c: &Case) -> String {
    let client = match c.client {
        Client::Curl => "curl",
        Client::Atftp => "atftp",
    };
    format!("{client} blksize {} window {}", c.blksize, c.windowsize)
}

/// What the capture of a transfer's start showed.
#[derive(Debug, Default)]
struct Wire {
    /// The server's OACK options, as `name=value`.
    oack: Vec<String>,
    /// The largest DATA block seen (bytes of file data).
    block: usize,
    /// The most DATA packets the server sent between two ACKs.
    window: usize,
    data_packets: usize,
}

/// Parses a capture of one transfer (both directions, taken on the
/// client): the server is whoever sends DATA or an OACK.
fn wire(pcap: &Path) -> Result<Wire> {
    let bytes = fs::read(pcap).with_context(|| format!("reading {}", pcap.display()))?;
    let mut w = Wire::default();
    let mut run = 0;
    for c in coresvc_lab::dhcp::pcap_udp_payloads(&bytes)? {
        let Some(op) = c.payload.get(..2).map(|o| u16::from_be_bytes([o[0], o[1]])) else { continue };
        match op {
            6 => {
                let fields: Vec<&[u8]> = c.payload[2..].split(|b| *b == 0).filter(|f| !f.is_empty()).collect();
                w.oack = fields
                    .chunks(2)
                    .map(|p| {
                        let s = |b: &[u8]| String::from_utf8_lossy(b).to_ascii_lowercase();
                        format!("{}={}", s(p[0]), p.get(1).map(|v| s(v)).unwrap_or_default())
                    })
                    .collect();
            }
            3 => {
                w.data_packets += 1;
                w.block = w.block.max(usize::from(c.udp_len).saturating_sub(8 + 4));
                run += 1;
                w.window = w.window.max(run);
            }
            4 => run = 0,
            _ => {}
        }
    }
    Ok(w)
}

/// The client's command for `case` fetching `big.bin` into `out`.
fn client(lab: &Lab, case: &Case, out: &Path) -> Command {
    match case.client {
        Client::Curl => {
            let url = format!("tftp://{SERVER}/big.bin");
            let mut c = lab.cmd("dvnt-client", ["curl", "-sS", "--max-time", "600", "--tftp-blksize"]);
            c.arg(case.blksize.to_string()).arg("-o").arg(out).arg(url);
            c
        }
        Client::Atftp => {
            let mut c = lab.cmd("dvnt-client", ["atftp", "--option", &format!("blksize {}", case.blksize)]);
            if case.windowsize > 1 {
                c.args(["--option", &format!("windowsize {}", case.windowsize)]);
            }
            c.args(["-g", "-r", "big.bin", "-l"]).arg(out).arg(SERVER);
            c
        }
    }
}

/// One fetch into a file on tmpfs (so the disk does not count), checked
/// byte for byte; with `capture`, its first packets captured. MB/s.
fn fetch(lab: &Lab, case: &Case, data: &[u8], capture: Option<&Path>) -> Result<f64> {
    let out = lab.paths.run_dir.join("fetched.bin");
    let _ = fs::remove_file(&out);
    let tcpdump = match capture {
        Some(p) => {
            let mut c = lab.cmd("dvnt-client", ["tcpdump", "-i", "eth0", "-U", "-n", "-s", "128", "-c", "600", "-w"]);
            c.arg(p).args(["udp", "and", "host", SERVER]);
            let mut t = Tool::spawn(lab, "tcpdump", c)?;
            t.wait_until(Duration::from_secs(5), || p.exists())?;
            std::thread::sleep(Duration::from_millis(300));
            Some(t)
        }
        None => None,
    };
    let start = Instant::now();
    let o = client(lab, case, &out).stdin(Stdio::null()).output().context("running the client")?;
    let secs = start.elapsed().as_secs_f64();
    if let Some(t) = tcpdump {
        let _ = t.stop();
    }
    let got = fs::read(&out).unwrap_or_default();
    let _ = fs::remove_file(&out);
    if !o.status.success() || got != data {
        bail!(
            "{} failed ({}, {} of {} bytes right): {}{}",
            label(case),
            o.status,
            if got == data { got.len() } else { 0 },
            data.len(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(data.len() as f64 / secs / 1e6)
}

/// The median MB/s of `runs` fetches, the first captured: a row.
fn case_row(lab: &Lab, name: &str, case: &Case, data: &[u8], runs: usize, pre: &[Check]) -> Result<Row> {
    let pcap = lab.paths.run_dir.join("tftp.pcap");
    let _ = fs::remove_file(&pcap);
    let mut row = Row::new(name);
    row.checks = pre.to_vec();
    let mut v = Vec::new();
    for i in 0..runs {
        match fetch(lab, case, data, (i == 0).then_some(pcap.as_path())) {
            Ok(x) => v.push(x),
            Err(e) => {
                row.check(Check::failed("every fetch complete and identical", format!("{e:#}")));
                return Ok(row);
            }
        }
    }
    row.check(Check::ok(format!("{runs} fetch(es) complete and identical")));
    let w = wire(&pcap)?;
    row.check(Check::that(w.data_packets > 0, "the transfer seen on the wire", || "no DATA captured".into()));
    row.counts.push(format!(
        "on the wire: OACK [{}], blocks of {} bytes, window {}",
        w.oack.join(" "),
        w.block,
        w.window
    ));
    row.counts.push(format!("runs (MB/s): {}", v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(" ")));
    v.sort_by(f64::total_cmp);
    row.achieved = Some(v[v.len() / 2]);
    Ok(row)
}

pub fn run(b: &BenchLab, o: &Opts) -> Result<Vec<Section>> {
    let (size, runs, cases) = if o.smoke { (4 << 20, 1, SMOKE_CASES) } else { (64 << 20, 5, CASES) };
    let mut lab = b.lab()?;
    let root = lab.paths.run_dir.join("tftp");
    fs::create_dir_all(&root)?;
    let data = pseudo_random(size);
    fs::write(root.join("big.bin"), &data).context("writing the file")?;
    let cfg = super::config(&lab, "bench-tftp.toml", |s| {
        s.replace(
            &format!("root = \"{}\"", coresvc_lab::workspace_root().join("examples/tftp").display()),
            &format!("root = \"{}\"", root.display()),
        )
    })?;
    step("bench", &format!("coresvc: {} cases, {runs} fetch(es) each of {} MiB", cases.len(), size >> 20));
    lab.start_agent(&AgentOpts::new(&cfg))?;
    let mut ours = Vec::new();
    for case in cases {
        let mut pre = isolation::coresvc_present(&isolation::attached(&lab)?, "gw", &[("dvnt0", "segment_ingress")]);
        let before = lab.status_json()?["tftp"]["completed"].as_u64().unwrap_or(0);
        let mut row = case_row(&lab, &format!("coresvc, {}", label(case)), case, &data, runs, &[])?;
        let done = lab.status_json()?["tftp"]["completed"].as_u64().unwrap_or(0) - before;
        pre.push(Check::that(done >= runs as u64, "coresvc counted the transfers completed", || {
            format!("{done} of {runs}")
        }));
        row.checks.splice(0..0, pre);
        ours.push(row);
    }
    lab.stop_agent(libc::SIGTERM, Duration::from_secs(10))?;

    step("bench", "tftpd-hpa alone (coresvc stopped, programs detached), the same cases");
    let mut tftpd = Tool::spawn(&lab, "tftpd-hpa", {
        let mut c = lab.cmd("gw", ["in.tftpd", "-L", "-s"]);
        c.arg(&root).args(["-a", &format!("{SERVER}:69")]);
        c
    })?;
    tftpd.wait_until(Duration::from_secs(5), || {
        lab.exec("gw", ["ss", "-Hulnp", "sport = :69"])
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("tftpd"))
    })?;
    let mut theirs = Vec::new();
    for case in cases {
        let pre = isolation::peer_checks(&lab, &[])?;
        let flat = Flat::start(&lab.paths.pin_dir)?;
        let mut row = case_row(&lab, &format!("tftpd-hpa, {}", label(case)), case, &data, runs, &pre)?;
        row.check(flat.check());
        row.check(tftpd.alive());
        theirs.push(row);
    }
    let (c, _) = tftpd.stop();
    if let Some(r) = theirs.last_mut() {
        r.check(c);
    }

    let mut s = Section::new(
        "tftp",
        format!("TFTP, a {} MiB file, dvnt-client -> {SERVER}, median of {runs}", size >> 20),
        "MB/s",
    );
    s.generator = "curl and atftp on dvnt-client (closed loop: no offered rate)".into();
    for (case, (a, b)) in cases.iter().zip(ours.iter().zip(&theirs)) {
        let _ = case;
        s.ratios.push(Ratio::new(&a.name, &b.name));
    }
    s.rows = ours.into_iter().chain(theirs).collect();
    s.notes.push(
        "target: coresvc with windowsize 16 at blksize 1468 >= 3x tftpd-hpa's best at 1468; never slower than \
         tftpd-hpa without windowsize (lock-step speed swings by several percent from run to run on a small VM)"
            .into(),
    );
    Ok(vec![s])
}

/// The benchmark file's bytes (incompressible, reproducible).
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}
