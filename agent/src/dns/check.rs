//! What only the DNS service can check in a configuration: that the TSIG
//! secrets read and decode, and that the zones build as the service will
//! build them. [`crate::check`] composes these with the rest.

use super::{build, xfr};
use crate::{
    cfg_path,
    config::{Config, Problem},
};

/// The TSIG keys' secrets: given once, readable, base64.
pub fn check(c: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (i, k) in c.dns.tsig_keys.iter().enumerate() {
        if let Err(e) = xfr::key_secret(c, k) {
            let field = if k.secret_file.is_some() { "secret_file" } else { "secret" };
            problems.push(Problem::new(cfg_path!("dns", "tsig_key", i, field), e.to_string()));
        }
    }
    problems
}

/// Builds the zones as the DNS service will (record data, zone files,
/// CNAME conflicts, management-plane names in site zone files). For a
/// configuration that passed every other check.
pub fn check_zones(c: &Config) -> Vec<Problem> {
    match build::build(c, 0) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.into_iter().map(|e| Problem::new(e.path, e.problem.to_string())).collect(),
    }
}
