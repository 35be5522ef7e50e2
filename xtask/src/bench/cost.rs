//! `cargo xtask bench cost`: ns per packet in the programs themselves,
//! from `coresvc-devtool prog-cost` (BPF_PROG_TEST_RUN on the offline
//! dataplane the progtest suites use, in a namespace of its own): a DNS
//! answer from the XDP cache, a query passed on, the bare reflector, an
//! established flow forwarded and masqueraded, and a new flow judged after
//! 1, 100 and 1000 firewall rules. No generator limits these figures.

use anyhow::{Context as _, Result};
use serde_json::Value;

use super::{
    BenchLab, Opts,
    report::{Check, Plot, Ratio, Row, Section},
};
use crate::util::{cmd_output, step};

pub fn run(_b: &BenchLab, o: &Opts) -> Result<Vec<Section>> {
    let dir = std::env::temp_dir().join(format!("coresvc-bench-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let queries = dir.join("queries.txt");
    std::fs::write(
        &queries,
        super::dns::QUERIES.iter().map(|q| format!("{} {}\n", q.name, q.rtype)).collect::<String>(),
    )?;
    let runs = if o.smoke { 2000 } else { 20_000 };
    step("bench", &format!("devtool prog-cost, {runs} single runs per frame"));
    let out = cmd_output(
        std::process::Command::new(coresvc_lab::devtool_bin()?)
            .args(["prog-cost", "--config"])
            .arg(coresvc_lab::default_config())
            .arg("--queries")
            .arg(&queries)
            .args(["--runs", &runs.to_string()]),
    );
    let _ = std::fs::remove_dir_all(&dir);
    let v: Value = serde_json::from_str(&out?).context("prog-cost output")?;
    let empty = v["empty_ns"].as_f64().unwrap_or(f64::NAN);
    let mut s = Section::new("cost", "Cost per packet in the program (BPF_PROG_TEST_RUN, median of single runs)", "ns");
    s.generator = format!(
        "none: the kernel runs the program on a frame, {runs} single runs per frame; figures are net of an empty \
         program's median ({empty:.0} ns, the measurement's own share)"
    );
    s.plot = Plot::NsBars;
    for r in v["rows"].as_array().into_iter().flatten() {
        let mut row = Row::new(r["name"].as_str().unwrap_or("?"));
        if let Some(why) = r["cannot_run"].as_str() {
            row.cannot_run = Some(why.to_string());
        } else {
            let raw = r["ns_median"].as_f64().unwrap_or(f64::NAN);
            row.achieved = Some((raw - empty).max(0.0));
            row.check(Check::ok(format!(
                "every run returned {}; {}",
                r["verdict"].as_str().unwrap_or("?"),
                r["checked"].as_str().unwrap_or("")
            )));
            row.counts.push(format!("raw median {raw:.0} ns over {} frame(s)", r["frames"]));
        }
        s.rows.push(row);
    }
    s.ratios.push(Ratio::new("DNS answer from the XDP cache", "bare DNS reflector (devtool)"));
    s.notes.push("target: an answer from the XDP cache under 300 ns in the program (issue 8)".into());
    Ok(vec![s])
}
