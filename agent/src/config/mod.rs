//! `coresvc.toml`: the whole model, read with serde (unknown fields are
//! rejected) and then validated by its own rules ([`validate`]); the
//! services' own checks are composed on top in `crate::check`. A rejected
//! file produces every error at once, each naming the file, line, column and
//! field and saying what would be valid.
//!
//! A leaf: it uses only other leaves (`names`, `users`).
//!
//! The format is documented field by field in `examples/coresvc.toml`, which
//! is also the lab's built-in configuration and is parsed by a test.

mod locate;
mod types;
mod validate;

#[cfg(test)]
pub(crate) mod tests;

use std::path::{Path, PathBuf};

pub use types::*;
pub use validate::validate;

/// One problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where in the document, as keys and array indices
    /// (`segment[1].gateway` is `[Key("segment"), Index(1), Key("gateway")]`).
    pub path: Vec<PathSeg>,
    /// What is wrong and what would be valid.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSeg {
    Key(String),
    Index(usize),
}

impl Problem {
    pub fn new(path: Vec<PathSeg>, message: impl Into<String>) -> Self {
        Self { path, message: message.into() }
    }

    /// `segment[1].gateway`
    pub fn dotted_path(&self) -> String {
        let mut s = String::new();
        for seg in &self.path {
            match seg {
                PathSeg::Key(k) => {
                    if !s.is_empty() {
                        s.push('.');
                    }
                    s.push_str(k);
                }
                PathSeg::Index(i) => s.push_str(&format!("[{i}]")),
            }
        }
        s
    }
}

/// Builds a path: `path!("segment", 1, "gateway")`.
#[macro_export]
macro_rules! cfg_path {
    ($($seg:expr),* $(,)?) => {
        vec![$($crate::config::IntoPathSeg::into_seg($seg)),*]
    };
}

pub trait IntoPathSeg {
    fn into_seg(self) -> PathSeg;
}
impl IntoPathSeg for &str {
    fn into_seg(self) -> PathSeg {
        PathSeg::Key(self.to_string())
    }
}
impl IntoPathSeg for usize {
    fn into_seg(self) -> PathSeg {
        PathSeg::Index(self)
    }
}

/// A configuration that could not be used: syntax errors from the parser or
/// every problem the validation found, located in the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render_syntax(.file, .message, .location))]
    Syntax { file: String, message: String, location: Option<(usize, usize)> },
    #[error("{}", render_problems(.file, .problems))]
    Invalid { file: String, problems: Vec<LocatedProblem> },
}

/// A [`Problem`] with the line and column (1-based) it points at, if known.
#[derive(Debug, Clone)]
pub struct LocatedProblem {
    pub problem: Problem,
    pub location: Option<(usize, usize)>,
}

fn render_syntax(file: &str, message: &str, location: &Option<(usize, usize)>) -> String {
    let message = message.trim_end();
    match location {
        Some((l, c)) => format!("{file}:{l}:{c}: {message}"),
        None => format!("{file}: {message}"),
    }
}

fn render_problems(file: &str, problems: &[LocatedProblem]) -> String {
    let mut out = format!(
        "{file}: {} problem{} found, nothing was changed",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        out.push('\n');
        match p.location {
            Some((l, c)) => out.push_str(&format!("{file}:{l}:{c}: ")),
            None => out.push_str(&format!("{file}: ")),
        }
        out.push_str(&format!("{}: {}", p.problem.dotted_path(), p.problem.message));
    }
    out
}

impl Config {
    /// True when the XDP answer cache is wanted (`dataplane.dns_cache` not
    /// false, DNS enabled); it answers only while the DNS service runs.
    pub fn dns_cache_on(&self) -> bool {
        self.dataplane.dns_cache != Some(false) && self.dns.enabled
    }

    /// Reads, parses and validates `path` by the configuration's own rules
    /// ([`validate`]: every section and field, and how they refer to each
    /// other). `crate::check::load` adds what only the services can check.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with(path, validate)
    }

    /// Reads and parses `path`, then collects its problems with `check`.
    pub fn load_with(path: &Path, check: impl FnOnce(&Config) -> Vec<Problem>) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::parse_str_with(&text, &path.display().to_string(), &base, check)
    }

    /// Parses and validates `text`; `file` names it in errors; relative paths
    /// resolve against the current directory.
    pub fn parse_str(text: &str, file: &str) -> Result<Config, ConfigError> {
        Self::parse_str_in(text, file, Path::new(""))
    }

    /// Like [`Config::parse_str`], resolving relative paths against `base_dir`.
    pub fn parse_str_in(text: &str, file: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        Self::parse_str_with(text, file, base_dir, validate)
    }

    /// Parses `text`, then collects its problems with `check`: none, or
    /// [`ConfigError::Invalid`] with every one located in the text.
    pub fn parse_str_with(
        text: &str,
        file: &str,
        base_dir: &Path,
        check: impl FnOnce(&Config) -> Vec<Problem>,
    ) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let location = e.span().map(|s| locate::line_col(text, s.start));
            ConfigError::Syntax { file: file.to_string(), message: e.message().to_string(), location }
        })?;
        config.base_dir = base_dir.to_path_buf();
        let problems = check(&config);
        if !problems.is_empty() {
            let mut problems = locate::locate_all(text, problems);
            // Read top to bottom, like the file.
            problems.sort_by_key(|p| p.location.unwrap_or((usize::MAX, 0)));
            return Err(ConfigError::Invalid { file: file.to_string(), problems });
        }
        Ok(config)
    }

    /// A path from the config, relative to the config file's directory.
    pub fn resolve_path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() { p.to_path_buf() } else { self.base_dir.join(p) }
    }
}
