//! `coresvc-devtool`: see the library's documentation.

use clap::Parser;

/// Benchmark and lab helpers for coresvc (sink, bare redirect and reflector,
/// frame blaster, per-packet cost).
#[derive(Parser, Debug)]
#[command(name = "coresvc-devtool", version)]
struct Cli {
    #[command(subcommand)]
    cmd: coresvc_devtool::Devtool,
}

fn main() -> anyhow::Result<()> {
    coresvc_devtool::main(Cli::parse().cmd)
}
