//! The whole-configuration check: the configuration's own rules
//! ([`crate::config::validate`]), then what only a service can check (the
//! DNS service's secrets and zones, the Kea control agent's URL). Every
//! problem carries the path of the field it is about, set where it is found.
//!
//! The entry points (`coresvc run`, `check`, `reload`) read the file with
//! [`load`]; [`Config::load`] alone runs the configuration's own rules.

use std::path::Path;

use crate::{
    cfg_path,
    config::{Config, ConfigError, Problem},
};

#[cfg(test)]
mod tests;

/// Every problem of `c`. The zones are built only for a configuration
/// without other problems (a build of invalid data reports noise).
pub fn problems(c: &Config) -> Vec<Problem> {
    let mut problems = crate::config::validate(c);
    problems.extend(crate::dns::check::check(c));
    problems.extend(authority(c));
    if problems.is_empty() {
        problems.extend(crate::dns::check::check_zones(c));
    }
    problems
}

/// `[authority]`: a control agent URL coresvc can speak to.
fn authority(c: &Config) -> Vec<Problem> {
    let Some(a) = &c.authority else { return Vec::new() };
    let Some(u) = &a.kea_control_agent else { return Vec::new() };
    match crate::handoff::KeaApi::parse(u) {
        Ok(_) => Vec::new(),
        Err(e) => vec![Problem::new(cfg_path!("authority", "kea_control_agent"), e.to_string())],
    }
}

/// Reads, parses and checks `path` as a whole.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    Config::load_with(path, problems)
}

/// Parses and checks `text` as a whole; `file` names it in errors; relative
/// paths resolve against `base_dir`.
pub fn parse_str_in(text: &str, file: &str, base_dir: &Path) -> Result<Config, ConfigError> {
    Config::parse_str_with(text, file, base_dir, problems)
}
