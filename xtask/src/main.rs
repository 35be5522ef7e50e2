//! `cargo xtask`: set-up, build, the lab, tests and benchmarks for coresvc.
//! Every command that needs the toolchain or the lab's packages runs
//! `setup` first, so a fresh machine needs nothing but the README's commands.

mod bench;
mod fuzz;
mod lab;
mod setup;
mod suite;
mod util;

use std::{path::PathBuf, process::Command};

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::util::{cmd_status, step};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "coresvc development tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install everything a fresh machine needs (idempotent).
    Setup(setup::SetupOpts),
    /// Build the release binary (target/release/coresvc).
    Build,
    /// Without arguments: bring up the lab with the built-in configuration and
    /// run coresvc in it in the foreground; Ctrl-C tears it down.
    /// With `-- --config FILE [coresvc run options]`: run coresvc on this
    /// host's configured interfaces (a real gateway).
    Run {
        /// Options for `coresvc run` (host mode).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run every test: unit, BPF_PROG_TEST_RUN and lab integration tests,
    /// and every benchmark in its smoke mode (`bench_smoke_*`).
    Test(TestArgs),
    /// The namespace lab.
    #[command(subcommand)]
    Lab(lab::LabCmd),
    /// Benchmarks against peer implementations, side by side in the lab.
    Bench(bench::BenchArgs),
    /// A mixed load for a long run (issue 17): a random-name DNS flood, DHCP
    /// churn, TFTP, NAT'd transfers, a connection-filling host and a kill -9
    /// at intervals; prints RSS, open files, errors, leases lost, broken
    /// flows and the drops by reason. Fails if a lease was lost or a
    /// well-behaved flow broke.
    Soak {
        /// How long (minutes).
        #[arg(long, default_value_t = 30)]
        minutes: u64,
        /// Minutes between two kill -9 of the agent.
        #[arg(long, default_value_t = 5)]
        kill_every: u64,
    },
    /// Run a fuzz target (cargo-fuzz, libFuzzer) for a while.
    Fuzz(fuzz::FuzzArgs),
    /// Fill a TFTP root with what a diskless guest needs to boot from
    /// coresvc: iPXE (undionly.kpxe, ipxe.efi), the iPXE script boot.ipxe,
    /// Debian's kernel (vmlinuz) and a busybox initramfs (initramfs.cpio).
    /// The PXE boot test makes the same files.
    PxeRoot {
        /// The TFTP root (`[tftp] root` of the configuration).
        dir: PathBuf,
        /// The guest's init gives a shell instead of powering off.
        #[arg(long)]
        shell: bool,
    },
}

fn main() {
    if let Err(e) = dispatch(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Setup(o) => setup::run(&o),
        Cmd::Build => build_release().map(|_| ()),
        Cmd::Run { args } => {
            if args.is_empty() {
                lab::run_foreground()
            } else {
                run_host(&args)
            }
        }
        Cmd::Test(t) => test(&t),
        Cmd::Lab(c) => lab::main(c),
        Cmd::Bench(b) => bench::main(b),
        Cmd::Fuzz(f) => fuzz::main(f),
        Cmd::Soak { minutes, kill_every } => soak(minutes, kill_every),
        Cmd::PxeRoot { dir, shell } => pxe_root(&dir, shell),
    }
}

pub fn workspace_root() -> PathBuf {
    coresvc_lab::workspace_root()
}

/// cargo's target directory (`CARGO_TARGET_DIR`, else `target/`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"))
}

/// The release binary `cargo xtask build` makes.
pub fn release_bin() -> PathBuf {
    target_dir().join("release").join("coresvc")
}

/// The source the last `build_release` built: the commit, and whether the
/// working tree differed from it. Read when the build starts, so a report
/// written later names what was measured, not what is checked out by then.
static BUILT_FROM: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// What [`build_release`] built ("unknown" before a build).
pub fn built_from() -> String {
    BUILT_FROM.get().cloned().unwrap_or_else(|| "unknown".into())
}

fn source_state() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(workspace_root())
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let head = git(&["log", "-1", "--format=%h (%cd)", "--date=short"]);
    let dirty = !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty();
    if dirty { format!("{head} + uncommitted changes") } else { head }
}

/// Builds target/release/coresvc (and with it the eBPF object).
pub fn build_release() -> Result<PathBuf> {
    setup::run(&setup::SetupOpts::default())?;
    let _ = BUILT_FROM.set(source_state());
    step("build", "cargo build --release -p coresvc -p coresvc-devtool (the benchmarks' tools)");
    cmd_status(Command::new("cargo").current_dir(workspace_root()).args([
        "build",
        "--release",
        "-p",
        "coresvc",
        "-p",
        "coresvc-devtool",
    ]))?;
    Ok(release_bin())
}

fn soak(minutes: u64, kill_every: u64) -> Result<()> {
    let bin = build_release()?;
    // The lab library runs this binary.
    // SAFETY: no other thread exists yet.
    unsafe { std::env::set_var("CORESVC_BIN", &bin) };
    step("soak", &format!("{minutes} minutes, kill -9 every {kill_every} minutes"));
    let r = coresvc_lab::soak::run(
        std::time::Duration::from_secs(minutes * 60),
        std::time::Duration::from_secs(kill_every.max(1) * 60),
    )?;
    print!("{}", r.text());
    if r.acked_leases_lost > 0 || r.nat_transfers_broken > 0 {
        anyhow::bail!("the soak lost {} leases and broke {} flows", r.acked_leases_lost, r.nat_transfers_broken);
    }
    Ok(())
}

fn pxe_root(dir: &std::path::Path, shell: bool) -> Result<()> {
    use coresvc_lab::pxe::{GuestEnd, fill_boot_root, missing_boot_files};
    if let Some(missing) = missing_boot_files() {
        anyhow::bail!("cannot make the boot files: {missing}");
    }
    let end = if shell { GuestEnd::Shell } else { GuestEnd::PowerOff };
    fill_boot_root(dir, "pxe-root", end)?;
    step("pxe-root", &format!("{}: undionly.kpxe ipxe.efi boot.ipxe vmlinuz initramfs.cpio", dir.display()));
    Ok(())
}

fn run_host(args: &[String]) -> Result<()> {
    let bin = build_release()?;
    step("run", &format!("{} run {}", bin.display(), args.join(" ")));
    use std::os::unix::process::CommandExt as _;
    // Replace this process: signals go straight to coresvc.
    let err = Command::new(&bin).arg("run").args(args).exec();
    Err(anyhow::anyhow!("cannot run {}: {err}", bin.display()))
}

/// `cargo xtask test [FILTER] [--test FILE] [--list]`.
#[derive(clap::Args, Debug, Default)]
struct TestArgs {
    /// Only tests whose name contains this (libtest's filter).
    filter: Option<String>,
    /// Only the integration test file tests/tests/FILE.rs (e.g. `pxe_boot`).
    #[arg(long = "test", value_name = "FILE")]
    file: Option<String>,
    /// Dry mode: list the tests that would run and fail if there are none.
    #[arg(long)]
    list: bool,
}

impl TestArgs {
    /// `cargo test` arguments for this selection (before `--`, after it).
    fn cargo_args(&self) -> (Vec<String>, Vec<String>) {
        let mut before = vec!["test".to_string(), "--no-fail-fast".to_string()];
        if let Some(f) = &self.file {
            before.extend(["--test".to_string(), f.clone()]);
        }
        (before, self.filter.iter().cloned().collect())
    }

    fn describe(&self) -> String {
        match (&self.filter, &self.file) {
            (None, None) => "every test".into(),
            (Some(f), None) => format!("tests matching {f:?}"),
            (None, Some(t)) => format!("tests of tests/tests/{t}.rs"),
            (Some(f), Some(t)) => format!("tests of tests/tests/{t}.rs matching {f:?}"),
        }
    }
}

fn test(args: &TestArgs) -> Result<()> {
    setup::run(&setup::SetupOpts::default())?;
    let root = workspace_root();
    if let Some(f) = &args.file {
        check_test_file(f)?;
    }
    if args.list {
        let found = suite::list(&root, args)?;
        for t in &found {
            println!("{t}");
        }
        println!("{} test(s): {}", found.len(), args.describe());
        if found.is_empty() {
            anyhow::bail!("no test matches: {}", args.describe());
        }
        return Ok(());
    }
    step("test", "cargo fmt --check");
    cmd_status(Command::new("cargo").current_dir(&root).args(["fmt", "--all", "--", "--check"]))
        .map_err(|e| e.context("code is not formatted: run `cargo fmt --all`"))?;
    step("test", "cargo clippy --all-targets -- -D warnings");
    cmd_status(Command::new("cargo").current_dir(&root).args(["clippy", "--all-targets", "--", "-D", "warnings"]))
        .map_err(|e| e.context("clippy found problems"))?;
    // The integration tests run the real binary: build it first.
    step("test", "cargo build -p coresvc -p coresvc-devtool (the binaries the lab tests run)");
    cmd_status(Command::new("cargo").current_dir(&root).args([
        "build",
        "-p",
        "coresvc",
        "-p",
        "coresvc-devtool",
        "--bins",
    ]))?;
    step("test", &format!("cargo test: {} (unit, BPF_PROG_TEST_RUN, lab and bench smoke tests)", args.describe()));
    let (before, after) = args.cargo_args();
    let mut c = Command::new("cargo");
    // Every test binary runs even when one fails: the closing line counts all.
    c.current_dir(&root).args(&before);
    if !after.is_empty() {
        c.arg("--").args(&after);
    }
    let (status, totals) = run_counting(&mut c)?;
    // One closing line for the whole suite (cargo prints one per test binary).
    println!("tests: {} passed, {} failed, {} skipped", totals.passed, totals.failed, totals.ignored);
    if !status.success() {
        anyhow::bail!("cargo test failed ({status})");
    }
    if totals.passed == 0 {
        anyhow::bail!("no test ran: {}", args.describe());
    }
    Ok(())
}

/// `--test FILE` names an integration test file of the lab package.
fn check_test_file(name: &str) -> Result<()> {
    let dir = workspace_root().join("tests").join("tests");
    if dir.join(format!("{name}.rs")).is_file() {
        return Ok(());
    }
    let mut files: Vec<String> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".rs").map(str::to_string))
        .collect();
    files.sort();
    anyhow::bail!("no test file tests/tests/{name}.rs; the files are: {}", files.join(", "))
}

#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

/// Runs `cargo test`, echoing its output, and adds up its "test result:" lines.
fn run_counting(c: &mut Command) -> Result<(std::process::ExitStatus, Totals)> {
    use std::io::BufRead as _;
    let mut child = c.stdout(std::process::Stdio::piped()).spawn()?;
    let mut totals = Totals::default();
    let out = child.stdout.take().expect("piped stdout");
    for line in std::io::BufReader::new(out).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let num = |word: &str| {
                rest.split(';')
                    .find_map(|part| {
                        part.trim()
                            .strip_suffix(word)
                            .map(|n| n.trim().trim_start_matches("ok. ").trim_start_matches("FAILED. ").to_string())
                    })
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            totals.passed += num("passed");
            totals.failed += num("failed");
            totals.ignored += num("ignored");
        }
    }
    Ok((child.wait()?, totals))
}
