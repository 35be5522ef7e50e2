//! `cargo xtask bench NAME|all`: coresvc and its peers one after the other
//! in one lab per benchmark, every row checked before its figure counts
//! (isolation, correctness, counters: `isolation.rs`, `report.rs`). Timings
//! are never asserted: these machines are shared; the figures are for
//! reading. `bench all --report DIR` writes the Markdown table and SVG
//! plots. The smoke tests at the end run every benchmark for about two
//! seconds a row and fail on any invalid row (never on a timing), so a
//! broken benchmark fails `cargo xtask test`.

mod cost;
mod dhcp;
mod dns;
mod forward;
mod isolation;
mod nat;
mod report;
mod tftp;
mod traffic;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use coresvc_lab::Lab;
pub use report::Section;

use crate::util::step;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// The benchmark to run, or `all`; without a name, the list.
    pub name: Option<String>,
    /// Seconds per measured run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// With `all`: write report.md and SVG plots into this directory.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Short runs (2 s a row) that check every row, as the test suite does.
    #[arg(long)]
    pub smoke: bool,
}

/// How long and how much.
#[derive(Debug, Clone, Copy)]
pub struct Opts {
    pub seconds: u64,
    pub smoke: bool,
}

/// (name, what it compares)
const BENCHES: &[(&str, &str)] = &[
    ("forward", "64-byte UDP pps and iperf3 TCP through the gateway: coresvc vs kernel+nftables vs bare XDP redirect"),
    (
        "nat",
        "64-byte UDP pps and iperf3 TCP masqueraded to the upstream: coresvc vs nftables masquerade vs bare redirect",
    ),
    (
        "dns",
        "agent path (dnsperf UDP and TCP): coresvc vs Knot vs dnsmasq; flood: XDP answer cache vs agent vs Knot vs \
         dnsmasq vs bare XDP reflector",
    ),
    ("dhcp", "perfdhcp 4-way exchanges/s at several offered rates: coresvc (durable leases) vs Kea vs dnsmasq"),
    ("tftp", "MB/s of one file: coresvc vs tftpd-hpa (curl block sizes, atftp windowsize), options seen on the wire"),
    ("cost", "ns/packet in the programs (BPF_PROG_TEST_RUN): DNS answer, forward, NAT, firewall with 1/100/1000 rules"),
];

/// The coresvc binary of a benchmark: release for measurements, the one
/// the test suite built for smoke runs.
pub struct BenchLab {
    _private: (),
}

impl BenchLab {
    fn release() -> Result<Self> {
        let bin = crate::build_release()?;
        // SAFETY: set before any thread is started.
        unsafe { std::env::set_var("CORESVC_BIN", &bin) };
        // SAFETY: as above.
        unsafe {
            std::env::set_var("CORESVC_DEVTOOL_BIN", crate::target_dir().join("release").join("coresvc-devtool"))
        };
        Ok(BenchLab { _private: () })
    }

    /// The binary `coresvc_lab::agent_bin` finds (a test's).
    #[cfg(test)]
    fn current() -> Self {
        BenchLab { _private: () }
    }

    /// A lab of its own (a test lab's name, so a killed run's lab is
    /// removed by the next), the gateway's interfaces prepared as the nodes' are (traffic::prepare).
    pub fn lab(&self) -> Result<Lab> {
        let lab = Lab::for_test()?;
        traffic::prepare(&lab)?;
        Ok(lab)
    }
}

/// The built-in configuration with `edit` applied, stopping cleanly by
/// detaching its programs (`agent.on_stop = "detach"`): a peer's row runs
/// with nothing of coresvc in the path, and coresvc's counters stay pinned
/// to prove it.
pub fn config(lab: &Lab, name: &str, edit: impl FnOnce(String) -> String) -> Result<PathBuf> {
    let mut replaced = false;
    let p = lab.config_with(name, |s| {
        let s = edit(s);
        replaced = s.contains("on_stop = \"keep\"");
        s.replace("on_stop = \"keep\"", "on_stop = \"detach\"")
    })?;
    if !replaced {
        bail!("the example configuration has no `on_stop = \"keep\"` to make a detaching one of");
    }
    Ok(p)
}

fn run_one(name: &str, b: &BenchLab, o: &Opts) -> Result<Vec<Section>> {
    match name {
        "forward" => forward::run(b, o),
        "nat" => nat::run(b, o),
        "dns" => dns::run(b, o),
        "dhcp" => dhcp::run(b, o),
        "tftp" => tftp::run(b, o),
        "cost" => cost::run(b, o),
        n => bail!("no benchmark named {n:?}; `cargo xtask bench` lists them"),
    }
}

pub fn main(args: BenchArgs) -> Result<()> {
    let o = Opts { seconds: if args.smoke { 2 } else { args.seconds }, smoke: args.smoke };
    let names: Vec<&str> = match args.name.as_deref() {
        None => {
            eprintln!("benchmarks (cargo xtask bench NAME|all [--seconds N] [--smoke] [--report DIR]):");
            for (n, what) in BENCHES {
                eprintln!("  {n:<10} {what}");
            }
            return Ok(());
        }
        Some("all") => BENCHES.iter().map(|(n, _)| *n).collect(),
        Some(n) => vec![n],
    };
    if args.report.is_some() && names.len() == 1 && args.name.as_deref() != Some("all") {
        bail!("--report is for `bench all`");
    }
    let b = BenchLab::release()?;
    let mut sections = Vec::new();
    let mut failed = Vec::new();
    for n in &names {
        step("bench", &format!("{n}: {}", BENCHES.iter().find(|(b, _)| b == n).map(|b| b.1).unwrap_or("")));
        match run_one(n, &b, &o) {
            Ok(s) => {
                for x in &s {
                    print!("{}", report::text(x));
                }
                sections.extend(s);
            }
            Err(e) => {
                eprintln!("bench {n} failed: {e:#}");
                failed.push(format!("{n}: {e:#}"));
            }
        }
    }
    if let Some(dir) = &args.report {
        write_report(dir, &sections, &o, &failed)?;
        step("bench", &format!("report written to {}", dir.join("report.md").display()));
    }
    let invalid: Vec<String> = sections
        .iter()
        .flat_map(|s| s.invalid_rows().into_iter().map(|(r, w)| format!("{}: {r}: {w}", s.bench)))
        .collect();
    if !invalid.is_empty() {
        eprintln!("\n{} INVALID row(s):\n  {}", invalid.len(), invalid.join("\n  "));
    }
    if !failed.is_empty() {
        bail!("{} benchmark(s) failed: {}", failed.len(), failed.join("; "));
    }
    if o.smoke && !invalid.is_empty() {
        bail!("smoke run: {} invalid row(s)", invalid.len());
    }
    Ok(())
}

/// The machine, kernel and peer versions, as the report states them.
fn environment() -> Vec<(String, String)> {
    let sh = |c: &str| {
        std::process::Command::new("sh")
            .args(["-c", c])
            .output()
            .map(|o| {
                let s = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
                s.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string()
            })
            .unwrap_or_default()
    };
    let cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2");
    vec![
        ("CPU".into(), format!("{} x {cpu}", sh("nproc"))),
        ("memory".into(), sh("free -g | awk '/Mem:/ {print $2 \" GiB\"}'")),
        ("kernel".into(), sh("uname -r")),
        ("OS".into(), sh(". /etc/os-release; echo $PRETTY_NAME")),
        ("coresvc".into(), crate::built_from()),
        ("Knot".into(), sh("knotd -V")),
        ("dnsmasq".into(), sh("dnsmasq -v")),
        ("Kea".into(), sh("kea-dhcp4 -V | head -1")),
        ("tftpd-hpa".into(), sh("dpkg-query -W -f '${Version}' tftpd-hpa")),
        ("nftables".into(), sh("nft -v")),
        ("dnsperf".into(), sh("dnsperf -h 2>&1 | grep -i version")),
        ("perfdhcp".into(), sh("dpkg-query -W -f '${Version}' kea-admin")),
        ("iperf3".into(), sh("iperf3 -v")),
        ("curl".into(), sh("curl -V")),
        ("atftp".into(), sh("dpkg-query -W -f '${Version}' atftp")),
    ]
}

fn write_report(dir: &Path, sections: &[Section], o: &Opts, failed: &[String]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut md = String::from("# coresvc benchmarks\n\n");
    md.push_str(&format!(
        "One run of `cargo xtask bench all --report DIR`, {} s per measured run. Every row passed its isolation and \
         correctness checks or is marked INVALID with the reason; a ratio of two rows that both reached {:.0}% of \
         what the generator offered reads `generator-bound`. Nothing here is asserted.\n\n",
        o.seconds,
        report::GENERATOR_BOUND * 100.0
    ));
    md.push_str("| | |\n|---|---|\n");
    for (k, v) in environment() {
        md.push_str(&format!("| {k} | {} |\n", v.replace('|', "\\|")));
    }
    md.push('\n');
    for f in failed {
        md.push_str(&format!("**Benchmark failed:** {f}\n\n"));
    }
    for (i, s) in sections.iter().enumerate() {
        md.push_str(&report::markdown(s));
        let file = format!("{:02}-{}.svg", i + 1, s.bench);
        std::fs::write(dir.join(&file), report::svg(s))?;
        md.push_str(&format!("\n![{}]({file})\n\n", s.title.replace(['[', ']'], "")));
    }
    std::fs::write(dir.join("report.md"), md)?;
    Ok(())
}

/// The smoke runs of `cargo xtask test`: each benchmark as `bench NAME
/// --smoke` runs it, with the binary the suite built; a failed check on
/// any row fails the test (a timing never does). They take the benchmark
/// lock: no two benchmarks share the machine.
#[cfg(test)]
mod smoke {
    use super::*;

    /// `flock /tmp/coresvc-bench.lock`, held while the guard lives.
    struct Lock {
        _file: std::fs::File,
    }

    impl Lock {
        fn take() -> Lock {
            use std::os::fd::AsRawFd as _;
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open("/tmp/coresvc-bench.lock")
                .expect("the benchmark lock file");
            // SAFETY: flock(2) on a descriptor we own; released when it closes.
            assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0, "flock");
            Lock { _file: f }
        }
    }

    fn smoke(name: &str) {
        let _lock = Lock::take();
        let o = Opts { seconds: 2, smoke: true };
        let sections = run_one(name, &BenchLab::current(), &o).unwrap_or_else(|e| panic!("bench {name}: {e:#}"));
        let mut invalid = Vec::new();
        for s in &sections {
            print!("{}", report::text(s));
            invalid.extend(s.invalid_rows().into_iter().map(|(r, w)| format!("{r}: {w}")));
        }
        assert!(!sections.is_empty() && sections.iter().all(|s| !s.rows.is_empty()), "bench {name} measured nothing");
        assert!(invalid.is_empty(), "bench {name}: invalid rows:\n  {}", invalid.join("\n  "));
    }

    #[test]
    fn bench_smoke_forward() {
        smoke("forward");
    }

    #[test]
    fn bench_smoke_nat() {
        smoke("nat");
    }

    #[test]
    fn bench_smoke_dns() {
        smoke("dns");
    }

    #[test]
    fn bench_smoke_dhcp() {
        smoke("dhcp");
    }

    #[test]
    fn bench_smoke_tftp() {
        smoke("tftp");
    }

    #[test]
    fn bench_smoke_cost() {
        smoke("cost");
    }
}
