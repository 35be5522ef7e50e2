//! `cargo xtask fuzz TARGET [--seconds N]`: runs a cargo-fuzz target (the
//! `fuzz/` crate) with libFuzzer on the nightly toolchain, installing
//! cargo-fuzz on first use.

use std::process::Command;

use anyhow::{Result, bail};

use crate::util::{cmd_status, step};

const TARGETS: &[(&str, &str)] = &[("dns", "dns_query"), ("dhcp", "dhcp_packet")];

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// What to fuzz: dns, dhcp.
    pub target: String,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
}

pub fn main(args: FuzzArgs) -> Result<()> {
    crate::setup::run(&crate::setup::SetupOpts::default())?;
    let Some((_, bin)) = TARGETS.iter().find(|(n, _)| *n == args.target) else {
        let names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
        bail!("no fuzz target {:?}; targets: {}", args.target, names.join(", "));
    };
    let has = Command::new("cargo").args(["fuzz", "--version"]).output().is_ok_and(|o| o.status.success());
    if !has {
        step("fuzz", "installing cargo-fuzz");
        cmd_status(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    step("fuzz", &format!("{bin} for {} s (crashes land in fuzz/artifacts/{bin}/)", args.seconds));
    cmd_status(
        Command::new("cargo")
            .current_dir(crate::workspace_root())
            .args(["+nightly", "fuzz", "run", bin, "--"])
            .arg(format!("-max_total_time={}", args.seconds)),
    )
}
