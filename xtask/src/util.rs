//! Small helpers for running commands with readable failures.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

/// A progress line: `==> [what] message`.
pub fn step(what: &str, msg: &str) {
    eprintln!("==> [{what}] {msg}");
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` with inherited stdio; fails with the command line if it fails.
pub fn cmd_status(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("cannot run `{}`", describe(cmd)))?;
    if !st.success() {
        bail!("`{}` failed ({st})", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout; fails with its stderr if it fails.
pub fn cmd_output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("cannot run `{}`", describe(cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed ({}): {}", describe(cmd), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn home_dir() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"))
}
