//! The services' checks, through the whole check: each problem alone, at
//! its field and line. The configuration's own rules are tested in
//! `config/tests.rs`, whose [`BASE`] and helpers these share.

use std::path::Path;

use super::*;
use crate::config::{
    LocatedProblem,
    tests::{BASE, assert_one, problems_of},
};

fn problems(extra: &str) -> Vec<LocatedProblem> {
    problems_of(parse_str_in(&format!("{BASE}{extra}"), "test.toml", Path::new("")))
}

#[test]
fn base_and_example_config_pass_the_whole_check() {
    assert!(problems("").is_empty());
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/coresvc.toml");
    load(&path).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn record_data_is_checked_like_a_zone_file() {
    let ps = problems("[[zone.record]]\nname = \"@\"\ntype = \"MX\"\ndata = \"ten mail\"\n");
    assert_one(&ps, "zone[1]", &["record @ MX"]);
}

#[test]
fn zone_file_errors_are_reported_by_check() {
    let dir = std::env::temp_dir().join(format!("coresvc-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("bad.zone");
    std::fs::write(&f, "$TTL 60\nx IN A not-an-address\n").unwrap();
    let ps = problems(&format!("[[zone]]\nname = \"files.example\"\nrole = \"site\"\nfile = \"{}\"\n", f.display()));
    let _ = std::fs::remove_dir_all(&dir);
    assert_one(&ps, "zone[2].file", &["bad.zone"]);
}

#[test]
fn zones_are_built_only_when_nothing_else_is_wrong() {
    // Bad record data, and a gateway outside its segment: only the latter.
    let text = format!("{BASE}[[zone.record]]\nname = \"@\"\ntype = \"MX\"\ndata = \"ten mail\"\n").replacen(
        "gateway = \"10.20.0.1\"",
        "gateway = \"10.21.0.1\"",
        1,
    );
    let ps = problems_of(parse_str_in(&text, "test.toml", Path::new("")));
    assert_one(&ps, "segment[1].gateway", &["outside"]);
}

#[test]
fn tsig_secrets_are_read_and_decoded() {
    const KEY: &str = "[[dns.tsig_key]]\nname = \"xfr\"\nsecret = \"c2VjcmV0c2VjcmV0\"\n";
    assert!(problems(&format!("{KEY}[[dns.secondary]]\naddress = \"10.10.0.10\"\nkey = \"xfr\"\n")).is_empty());
    let ps = problems("[[dns.tsig_key]]\nname = \"xfr\"\nsecret = \"not base64!\"\n");
    assert_one(&ps, "dns.tsig_key[0].secret", &["base64"]);
    let ps = problems("[[dns.tsig_key]]\nname = \"xfr\"\nsecret_file = \"/nonexistent/xfr.key\"\n");
    assert_one(&ps, "dns.tsig_key[0].secret_file", &["/nonexistent/xfr.key"]);
}

#[test]
fn the_kea_control_agent_is_an_http_url() {
    let ok = "\n[authority]\nkea_control_agent = \"http://10.20.0.3:8000/\"\n";
    assert!(problems(ok).is_empty(), "{:#?}", problems(ok));
    assert_one(
        &problems("\n[authority]\nkea_control_agent = \"https://kea:8000/\"\n"),
        "authority.kea_control_agent",
        &["https is not supported", "http://HOST:PORT/"],
    );
}
