//! `cargo xtask bench NAME`: coresvc and its peer side by side in the lab,
//! one run, both figures and their ratio. Benchmarks land with the features
//! they measure (see ARCHITECTURE.md).

mod tftp;

use anyhow::{Result, bail};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// The benchmark to run; without a name, the list.
    pub name: Option<String>,
}

/// (name, what it compares)
const BENCHES: &[(&str, &str)] =
    &[("tftp", "MB/s of a 64 MiB file: coresvc vs tftpd-hpa (curl, atftp with windowsize)")];

pub fn main(args: BenchArgs) -> Result<()> {
    crate::setup::run(&crate::setup::SetupOpts::default())?;
    match args.name {
        None => {
            if BENCHES.is_empty() {
                eprintln!("no benchmarks yet: they land with the DNS, DHCP, TFTP, forwarding and NAT services");
            }
            for (n, what) in BENCHES {
                eprintln!("  {n:<10} {what}");
            }
            Ok(())
        }
        Some(n) if n == "tftp" => tftp::run(),
        Some(n) => bail!("no benchmark named {n:?}; `cargo xtask bench` lists them"),
    }
}
