//! What a benchmark measured, row by row, and how it is shown: on the
//! terminal, as a Markdown table and as SVG plots (`bench all --report DIR`).
//!
//! A row carries its offered and achieved rates and the checks that make
//! its figure mean something (isolation, correctness, counters). A row with
//! a failed check is shown as `INVALID (<why>)`, never as a number; a
//! comparison of two rows that both achieved 95% or more of what the
//! generator offered says `generator-bound` instead of a ratio.

use std::fmt::Write as _;

/// One check of a row: what was checked and, when it failed, why.
#[derive(Debug, Clone)]
pub struct Check {
    pub what: String,
    pub failure: Option<String>,
}

impl Check {
    pub fn ok(what: impl Into<String>) -> Self {
        Check { what: what.into(), failure: None }
    }

    pub fn failed(what: impl Into<String>, why: impl Into<String>) -> Self {
        Check { what: what.into(), failure: Some(why.into()) }
    }

    /// Passes when `ok`, else fails with `why`.
    pub fn that(ok: bool, what: impl Into<String>, why: impl FnOnce() -> String) -> Self {
        if ok { Check::ok(what) } else { Check::failed(what, why()) }
    }
}

/// One measured configuration.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub name: String,
    /// What the generator offered (same unit); none for closed-loop
    /// clients (a transfer, iperf3) and in-program costs.
    pub offered: Option<f64>,
    pub achieved: Option<f64>,
    pub checks: Vec<Check>,
    /// Correctness counts as text, e.g. `NOERROR 1234`.
    pub counts: Vec<String>,
    /// Why the row could not be measured at all (not a failed check: a
    /// limit of this build, printed as such).
    pub cannot_run: Option<String>,
    /// For rate-vs-offered plots: the series (server) and the x value.
    pub series: Option<String>,
}

/// The share of offered a row must reach to be called generator-bound.
pub const GENERATOR_BOUND: f64 = 0.95;

impl Row {
    pub fn new(name: impl Into<String>) -> Self {
        Row { name: name.into(), ..Default::default() }
    }

    pub fn check(&mut self, c: Check) -> &mut Self {
        self.checks.push(c);
        self
    }

    /// Why the row is not valid: its failed checks, or no figure.
    pub fn invalid(&self) -> Option<String> {
        let failed: Vec<String> =
            self.checks.iter().filter_map(|c| c.failure.as_ref().map(|f| format!("{}: {f}", c.what))).collect();
        if !failed.is_empty() {
            return Some(failed.join("; "));
        }
        if self.cannot_run.is_none() && self.achieved.is_none() {
            return Some("nothing was measured".into());
        }
        None
    }

    /// A valid figure, if any.
    pub fn figure(&self) -> Option<f64> {
        if self.invalid().is_some() { None } else { self.achieved }
    }

    /// The generator, not the system measured, was the limit.
    pub fn generator_bound(&self) -> bool {
        matches!((self.offered, self.achieved), (Some(o), Some(a)) if o > 0.0 && a >= GENERATOR_BOUND * o)
    }
}

/// A ratio of two rows of a section (by name): `a / b`.
#[derive(Debug, Clone)]
pub struct Ratio {
    pub a: String,
    pub b: String,
    /// e.g. `target >= 0.90x`
    pub note: Option<String>,
}

impl Ratio {
    pub fn new(a: &str, b: &str) -> Self {
        Ratio { a: a.into(), b: b.into(), note: None }
    }

    pub fn noted(a: &str, b: &str, note: &str) -> Self {
        Ratio { a: a.into(), b: b.into(), note: Some(note.into()) }
    }
}

/// How a section is plotted in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Plot {
    /// Horizontal bars, one per row (throughput).
    #[default]
    Bars,
    /// Horizontal bars of ns/packet (lower is better).
    NsBars,
    /// Achieved against offered, one line per series.
    RateVsOffered,
}

/// One table of rows with one unit.
#[derive(Debug, Clone, Default)]
pub struct Section {
    pub bench: &'static str,
    pub title: String,
    pub unit: &'static str,
    /// What the generator was.
    pub generator: String,
    pub rows: Vec<Row>,
    pub ratios: Vec<Ratio>,
    pub notes: Vec<String>,
    pub plot: Plot,
}

impl Section {
    pub fn new(bench: &'static str, title: impl Into<String>, unit: &'static str) -> Self {
        Section { bench, title: title.into(), unit, ..Default::default() }
    }

    pub fn row(&self, name: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.name == name)
    }

    /// The ratio's text: `1.23x`, `generator-bound`, or why there is none.
    pub fn ratio_text(&self, r: &Ratio) -> String {
        let (Some(a), Some(b)) = (self.row(&r.a), self.row(&r.b)) else {
            return "n/a (row missing)".into();
        };
        for x in [a, b] {
            if let Some(why) = &x.cannot_run {
                return format!("n/a ({} cannot run: {why})", x.name);
            }
            if x.invalid().is_some() {
                return format!("n/a ({} is INVALID)", x.name);
            }
        }
        if a.generator_bound() && b.generator_bound() {
            return format!("generator-bound (both >= {:.0}% of offered)", GENERATOR_BOUND * 100.0);
        }
        match (a.achieved, b.achieved) {
            (Some(x), Some(y)) if y > 0.0 => format!("{:.2}x", x / y),
            _ => "n/a".into(),
        }
    }

    /// Rows with a failed check: (row, why).
    pub fn invalid_rows(&self) -> Vec<(String, String)> {
        self.rows.iter().filter_map(|r| r.invalid().map(|w| (r.name.clone(), w))).collect()
    }
}

/// `1234567.8` as `1,234,568`; small values keep a decimal.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    if v.abs() < 100.0 {
        return format!("{v:.1}");
    }
    let s = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 { format!("-{out}") } else { out }
}

fn figure_text(r: &Row, unit: &str) -> String {
    if let Some(why) = &r.cannot_run {
        return format!("cannot run ({why})");
    }
    if let Some(why) = r.invalid() {
        return format!("INVALID ({why})");
    }
    let a = r.achieved.unwrap_or(f64::NAN);
    match r.offered {
        Some(o) if o > 0.0 => {
            let share = 100.0 * a / o;
            let bound = if r.generator_bound() { ", generator-bound" } else { "" };
            format!("{} {unit} of {} offered ({share:.0}%{bound})", num(a), num(o))
        }
        _ => format!("{} {unit}", num(a)),
    }
}

/// The section as terminal text: each row's figure (or why it is
/// invalid), its checks and counts, then the ratios and notes.
pub fn text(s: &Section) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "\n{}", s.title);
    if !s.generator.is_empty() {
        let _ = writeln!(o, "  generator: {}", s.generator);
    }
    let w = s.rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(24);
    for r in &s.rows {
        let _ = writeln!(o, "  {:<w$}  {}", r.name, figure_text(r, s.unit));
        let passed: Vec<&str> = r.checks.iter().filter(|c| c.failure.is_none()).map(|c| c.what.as_str()).collect();
        if !passed.is_empty() {
            let _ = writeln!(o, "  {:<w$}    checks passed: {}", "", passed.join("; "));
        }
        if !r.counts.is_empty() {
            let _ = writeln!(o, "  {:<w$}    counts: {}", "", r.counts.join(", "));
        }
    }
    for r in &s.ratios {
        let label = format!("{} / {}", r.a, r.b);
        let note = r.note.as_ref().map(|n| format!("   ({n})")).unwrap_or_default();
        let _ = writeln!(o, "  {label:<w$}  {}{note}", s.ratio_text(r));
    }
    for n in &s.notes {
        let _ = writeln!(o, "  {n}");
    }
    o
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
}

/// The section as a Markdown table.
pub fn markdown(s: &Section) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "### {}\n", md_escape(&s.title));
    if !s.generator.is_empty() {
        let _ = writeln!(o, "Generator: {}\n", md_escape(&s.generator));
    }
    let _ = writeln!(o, "| row | offered | achieved | checks | counts |");
    let _ = writeln!(o, "|---|---:|---:|---|---|");
    for r in &s.rows {
        let offered = r.offered.map(num).unwrap_or_else(|| "-".into());
        let achieved = if let Some(why) = &r.cannot_run {
            format!("cannot run: {why}")
        } else if let Some(why) = r.invalid() {
            format!("**INVALID** ({why})")
        } else {
            let bound = if r.generator_bound() { " (generator-bound)" } else { "" };
            format!("{} {}{bound}", num(r.achieved.unwrap_or(f64::NAN)), s.unit)
        };
        let checks = format!("{}/{} passed", r.checks.iter().filter(|c| c.failure.is_none()).count(), r.checks.len());
        let _ = writeln!(
            o,
            "| {} | {offered} | {} | {checks} | {} |",
            md_escape(&r.name),
            md_escape(&achieved),
            md_escape(&r.counts.join(", "))
        );
    }
    if !s.ratios.is_empty() {
        o.push('\n');
        for r in &s.ratios {
            let note = r.note.as_ref().map(|n| format!(" ({n})")).unwrap_or_default();
            let _ = writeln!(o, "- {} / {}: **{}**{note}", md_escape(&r.a), md_escape(&r.b), s.ratio_text(r));
        }
    }
    for n in &s.notes {
        let _ = writeln!(o, "- {}", md_escape(n));
    }
    o
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Horizontal bars: `(label, value, valid)`; invalid rows get an empty bar
/// and their reason's first words.
pub fn svg_bars(title: &str, unit: &str, items: &[(String, Option<f64>, Option<String>)]) -> String {
    let (left, width, bar_h, gap, top) = (360.0, 420.0, 18.0, 8.0, 40.0);
    let max = items.iter().filter_map(|i| i.1).fold(0.0f64, f64::max).max(1e-9);
    let h = top + items.len() as f64 * (bar_h + gap) + 20.0;
    let mut o = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="22" font-size="14" font-weight="bold">{t}</text>
"#,
        w = left + width + 140.0,
        t = xml(title)
    );
    for (i, (label, v, why)) in items.iter().enumerate() {
        let y = top + i as f64 * (bar_h + gap);
        let _ = writeln!(
            o,
            r#"<text x="{x}" y="{ty}" text-anchor="end">{l}</text>"#,
            x = left - 8.0,
            ty = y + 13.0,
            l = xml(label)
        );
        match v {
            Some(v) => {
                let bw = width * v / max;
                let _ = writeln!(
                    o,
                    r##"<rect x="{left}" y="{y}" width="{bw:.1}" height="{bar_h}" fill="#4878a8"/><text x="{tx:.1}" y="{ty}">{n} {u}</text>"##,
                    tx = left + bw + 6.0,
                    ty = y + 13.0,
                    n = num(*v),
                    u = xml(unit)
                );
            }
            None => {
                let why = why.as_deref().unwrap_or("no figure");
                let short: String = why.chars().take(60).collect();
                let _ = writeln!(
                    o,
                    r##"<text x="{left}" y="{ty}" fill="#b03030">{s}</text>"##,
                    ty = y + 13.0,
                    s = xml(&short)
                );
            }
        }
    }
    o.push_str("</svg>\n");
    o
}

/// Lines of achieved against offered, one per series, with the ideal
/// (achieved = offered) dashed.
pub fn svg_lines(title: &str, unit: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    let (left, top, w, h) = (70.0, 40.0, 560.0, 320.0);
    let xmax = series.iter().flat_map(|s| s.1.iter().map(|p| p.0)).fold(0.0f64, f64::max).max(1.0);
    let ymax = series.iter().flat_map(|s| s.1.iter().map(|p| p.1)).fold(xmax, f64::max).max(1.0);
    let px = |x: f64| left + w * x / xmax;
    let py = |y: f64| top + h - h * y / ymax;
    let colors = ["#4878a8", "#d08030", "#50a050", "#a04090"];
    let mut o = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="22" font-size="14" font-weight="bold">{}</text>
<line x1="{left}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/><line x1="{left}" y1="{top}" x2="{left}" y2="{b}" stroke="black"/>
<text x="{mx}" y="{lb}" text-anchor="middle">offered ({u})</text>
<text x="12" y="{my}" transform="rotate(-90 12 {my})" text-anchor="middle">achieved ({u})</text>
<line x1="{left}" y1="{b}" x2="{ix:.1}" y2="{iy:.1}" stroke="#999999" stroke-dasharray="4 4"/>
"##,
        left + w + 160.0,
        top + h + 50.0,
        xml(title),
        b = top + h,
        r = left + w,
        mx = left + w / 2.0,
        lb = top + h + 36.0,
        my = top + h / 2.0,
        u = xml(unit),
        ix = px(xmax.min(ymax)),
        iy = py(xmax.min(ymax)),
    );
    for (tick, label) in [(0.0, "0".to_string()), (xmax, num(xmax))] {
        let _ = writeln!(o, r#"<text x="{:.1}" y="{}" text-anchor="middle">{label}</text>"#, px(tick), top + h + 16.0);
    }
    let _ = writeln!(o, r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#, left - 4.0, py(ymax) + 4.0, num(ymax));
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        let path: Vec<String> = pts.iter().map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
        let _ = writeln!(o, r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#, path.join(" "));
        for &(x, y) in pts {
            let _ = writeln!(o, r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{c}"/>"#, px(x), py(y));
        }
        let ly = top + 14.0 + 18.0 * i as f64;
        let _ = writeln!(
            o,
            r#"<rect x="{}" y="{}" width="12" height="12" fill="{c}"/><text x="{}" y="{ly}">{}</text>"#,
            left + w + 20.0,
            ly - 10.0,
            left + w + 38.0,
            xml(name)
        );
    }
    o.push_str("</svg>\n");
    o
}

/// The section's plot as SVG.
pub fn svg(s: &Section) -> String {
    match s.plot {
        Plot::Bars | Plot::NsBars => {
            let items: Vec<(String, Option<f64>, Option<String>)> =
                s.rows.iter().map(|r| (r.name.clone(), r.figure(), r.cannot_run.clone().or(r.invalid()))).collect();
            let lower = if s.plot == Plot::NsBars { " (lower is better)" } else { "" };
            svg_bars(&format!("{}{lower}", s.title), s.unit, &items)
        }
        Plot::RateVsOffered => {
            let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
            for r in &s.rows {
                let (Some(name), Some(x), Some(y)) = (&r.series, r.offered, r.figure()) else { continue };
                match series.iter_mut().find(|s| &s.0 == name) {
                    Some(s) => s.1.push((x, y)),
                    None => series.push((name.clone(), vec![(x, y)])),
                }
            }
            svg_lines(&s.title, s.unit, &series)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, offered: Option<f64>, achieved: f64) -> Row {
        Row { name: name.into(), offered, achieved: Some(achieved), ..Default::default() }
    }

    #[test]
    fn a_failed_check_makes_the_row_invalid_and_its_ratio_unavailable() {
        let mut s = Section::new("t", "t", "pps");
        let mut bad = row("peer", Some(100.0), 90.0);
        bad.check(Check::failed("isolation", "coresvc's segment_ingress on gw:dvnt0"));
        s.rows = vec![row("ours", Some(100.0), 80.0), bad];
        s.ratios = vec![Ratio::new("ours", "peer")];
        assert_eq!(s.ratio_text(&s.ratios[0]), "n/a (peer is INVALID)");
        let t = text(&s);
        assert!(t.contains("INVALID (isolation: coresvc's segment_ingress on gw:dvnt0)"), "{t}");
        assert!(!t.contains("90 pps"), "no number for an invalid row: {t}");
        assert_eq!(s.invalid_rows().len(), 1);
    }

    #[test]
    fn two_rows_at_95_percent_of_offered_are_generator_bound() {
        let mut s = Section::new("t", "t", "pps");
        s.rows = vec![row("a", Some(100.0), 96.0), row("b", Some(100.0), 95.0), row("c", Some(100.0), 50.0)];
        assert!(s.ratio_text(&Ratio::new("a", "b")).starts_with("generator-bound"));
        assert_eq!(s.ratio_text(&Ratio::new("a", "c")), "1.92x");
        assert_eq!(s.ratio_text(&Ratio::new("c", "a")), "0.52x");
    }

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(num(1234567.8), "1,234,568");
        assert_eq!(num(999.0), "999");
        assert_eq!(num(12.34), "12.3");
    }

    #[test]
    fn plots_are_svg() {
        let mut s = Section::new("t", "a & b", "q/s");
        s.rows = vec![row("x", None, 5.0)];
        let svg = svg(&s);
        assert!(svg.starts_with("<svg") && svg.contains("a &amp; b") && svg.trim_end().ends_with("</svg>"));
        s.plot = Plot::RateVsOffered;
        s.rows[0].series = Some("coresvc".into());
        s.rows[0].offered = Some(10.0);
        assert!(svg_lines("t", "u", &[("s".into(), vec![(1.0, 1.0)])]).contains("polyline"));
    }
}
