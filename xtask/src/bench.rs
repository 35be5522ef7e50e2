//! `cargo xtask bench NAME`: coresvc and its peer side by side in the lab,
//! one run, both figures and their ratio. Timings are never asserted: these
//! machines are shared; the figures are for reading.

mod dhcp;
mod dns;
mod forward;
mod nat;

mod tftp;

use anyhow::{Result, bail};
use coresvc_lab::{Lab, LabPaths};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// The benchmark to run; without a name, the list.
    pub name: Option<String>,
    /// Seconds per measured run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
}

/// (name, what it compares)
const BENCHES: &[(&str, &str)] = &[
    (
        "dns",
        "dnsperf queries/s (agent path vs dnsmasq) and a kxdpgun flood: XDP answer cache vs agent vs dnsmasq vs bare XDP reflector, plus the cost per answer",
    ),
    ("forward", "64-byte UDP pps and iperf3 TCP through the gateway: coresvc vs kernel+nftables vs bare XDP redirect"),
    (
        "nat",
        "64-byte UDP pps and iperf3 TCP masqueraded to the upstream: coresvc vs nftables masquerade vs bare XDP redirect",
    ),
    ("dhcp", "perfdhcp 4-way exchanges/s: coresvc (durable leases) vs Kea (memfile) vs dnsmasq, same pool"),
    ("tftp", "MB/s of a 64 MiB file: coresvc vs tftpd-hpa (curl, atftp with windowsize)"),
];

/// A lab of its own for a benchmark, running the release binary.
pub struct BenchLab {
    prefix: String,
}

impl BenchLab {
    fn new() -> Result<Self> {
        let bin = crate::build_release()?;
        // SAFETY: set before any thread is started.
        unsafe { std::env::set_var("CORESVC_BIN", &bin) };
        Ok(BenchLab { prefix: format!("csbench{}", std::process::id()) })
    }

    pub fn lab(&self) -> Result<Lab> {
        self.lab_with(|_| {})
    }

    /// A lab whose paths `edit` adjusts first (e.g. a state directory on disk).
    pub fn lab_with(&self, edit: impl FnOnce(&mut LabPaths)) -> Result<Lab> {
        let mut paths = LabPaths::private(&self.prefix);
        edit(&mut paths);
        Lab::up(&self.prefix, paths)
    }
}

/// `a/b` as text, e.g. `1.84x`.
pub fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 { format!("{:.2}x", a / b) } else { "n/a".into() }
}

pub fn main(args: BenchArgs) -> Result<()> {
    match args.name.as_deref() {
        None => {
            eprintln!("benchmarks (cargo xtask bench NAME [--seconds N]):");
            for (n, what) in BENCHES {
                eprintln!("  {n:<10} {what}");
            }
            Ok(())
        }
        Some("dns") => dns::run(&BenchLab::new()?, args.seconds),
        Some("forward") => forward::run(&BenchLab::new()?, args.seconds),
        Some("nat") => nat::run(&BenchLab::new()?, args.seconds),
        Some("dhcp") => dhcp::run(&BenchLab::new()?, args.seconds),
        Some("tftp") => tftp::run(),
        Some(n) => bail!("no benchmark named {n:?}; `cargo xtask bench` lists them"),
    }
}
