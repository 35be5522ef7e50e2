//! The test suite as `cargo xtask test` sees it: which tests a selection
//! (`FILTER`, `--test FILE`) runs, from cargo's own listing, and a test that
//! every `cargo xtask ...` command the README shows parses and, for `test`,
//! selects at least one test.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::TestArgs;

/// The tests `args` selects, as `BINARY: NAME` (`cargo test ... -- --list`;
/// builds what is not built yet).
pub fn list(root: &Path, args: &TestArgs) -> Result<Vec<String>> {
    let (before, after) = args.cargo_args();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let (reader, writer) = std::io::pipe()?;
    let mut c = Command::new(cargo);
    c.current_dir(root).args(&before).arg("--").args(&after).arg("--list");
    // One stream: cargo's "Running <binary>" lines (stderr) name the binary
    // whose listing (stdout) follows.
    c.stdout(writer.try_clone()?).stderr(writer);
    let mut child = c.spawn().context("running cargo test -- --list")?;
    drop(c);
    let text = std::io::read_to_string(reader)?;
    let status = child.wait()?;
    if !status.success() {
        bail!("cargo {} -- {} --list failed ({status}):\n{text}", before.join(" "), after.join(" "));
    }
    Ok(parse_listing(&text))
}

/// `BINARY: NAME` for every `NAME: test` line, `BINARY` from the `Running`
/// or `Doc-tests` line before it.
fn parse_listing(text: &str) -> Vec<String> {
    let mut binary = String::new();
    let mut found = Vec::new();
    for l in text.lines() {
        let t = l.trim();
        if let Some(rest) = t.strip_prefix("Running ") {
            // "unittests src/main.rs (target/debug/deps/xtask-0123)" or "tests/dns.rs (...)".
            let path = rest.rsplit_once('(').map(|(_, p)| p.trim_end_matches(')')).unwrap_or(rest);
            let file = Path::new(path).file_name().and_then(|f| f.to_str()).unwrap_or(path);
            binary = file.rsplit_once('-').map(|(n, _)| n).unwrap_or(file).to_string();
        } else if let Some(krate) = t.strip_prefix("Doc-tests ") {
            binary = format!("doc {krate}");
        } else if let Some(name) = l.strip_suffix(": test") {
            found.push(format!("{binary}: {name}"));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::{Cli, Cmd, workspace_root};

    /// The `cargo xtask ...` commands of a Markdown text: lines of code
    /// blocks and inline code spans, without trailing `# comments`.
    fn commands(md: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut in_block = false;
        for line in md.lines() {
            if line.trim_start().starts_with("```") {
                in_block = !in_block;
                continue;
            }
            if in_block {
                let l = line.trim();
                if l.starts_with("cargo xtask") {
                    out.push(l.split(" #").next().unwrap_or(l).trim().to_string());
                }
                continue;
            }
            for (i, span) in line.split('`').enumerate() {
                if i % 2 == 1 && span.starts_with("cargo xtask") {
                    out.push(span.trim().to_string());
                }
            }
        }
        out
    }

    #[test]
    fn the_commands_are_found_in_code_blocks_and_spans() {
        let md = "Run `cargo xtask test --test dns` now.\n```sh\ncargo xtask lab up   # comment\nls\n```\n";
        assert_eq!(commands(md), ["cargo xtask test --test dns", "cargo xtask lab up"]);
    }

    #[test]
    fn a_listing_names_each_test_with_its_binary() {
        let text = "   Compiling x\n     Running unittests src/main.rs (target/debug/deps/xtask-0a1b)\n\
                    suite::tests::one: test\n\n1 test, 0 benchmarks\n     Running tests/pxe_boot.rs \
                    (target/debug/deps/pxe_boot-77)\nboots_bios: test\n   Doc-tests coresvc\n";
        assert_eq!(parse_listing(text), ["xtask: suite::tests::one", "pxe_boot: boots_bios"]);
    }

    /// Every `cargo xtask ...` of the README parses as the README writes it,
    /// and every `cargo xtask test ...` there selects one test or more
    /// (cargo's own listing, so a filter that matches nothing, or only the
    /// wrong thing, fails here).
    #[test]
    fn every_readme_command_resolves() {
        let root = workspace_root();
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        let cmds = commands(&readme);
        assert!(cmds.len() > 10, "README commands found: {cmds:?}");
        let mut problems = Vec::new();
        for line in &cmds {
            let words: Vec<&str> = line.split_whitespace().collect();
            // `cargo xtask` is one program name for clap.
            let argv = std::iter::once("cargo xtask").chain(words[2..].iter().copied());
            match Cli::try_parse_from(argv) {
                Err(e) => problems.push(format!("`{line}` does not parse: {}", e.to_string().trim())),
                Ok(Cli { cmd: Cmd::Test(t) }) => {
                    // A filter matches test names, not files: `test pxe_boot`
                    // would run a unit test named so, not tests/tests/pxe_boot.rs.
                    if let Some(f) = &t.filter
                        && crate::check_test_file(f).is_ok()
                    {
                        problems.push(format!("`{line}`: {f:?} is a test file; select it with --test {f}"));
                        continue;
                    }
                    if let Some(f) = &t.file
                        && let Err(e) = crate::check_test_file(f)
                    {
                        problems.push(format!("`{line}`: {e:#}"));
                        continue;
                    }
                    match list(&root, &t) {
                        Ok(found) if found.is_empty() => problems.push(format!("`{line}` selects no test")),
                        Ok(found) => eprintln!("`{line}`: {} test(s), e.g. {}", found.len(), found[0]),
                        Err(e) => problems.push(format!("`{line}`: {e:#}")),
                    }
                }
                Ok(_) => {}
            }
        }
        assert!(problems.is_empty(), "README commands that do not work as written:\n  {}", problems.join("\n  "));
    }
}
