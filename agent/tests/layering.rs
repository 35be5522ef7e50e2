//! The agent reads bottom-up: every top-level module of `agent/src` sits in
//! a layer and uses only modules of its own layer or lower, with no cycle
//! between modules, nor between the sibling files inside one.
//!
//! The test reads the source: every `crate::…` path (including the
//! `use crate::{a, b::c}` groups), `super::…` paths that leave a top-level
//! module, and `coresvc::…` in `main.rs`. Comments (so doc links) and
//! string literals do not count. A module missing from [`LAYERS`] fails the
//! test: a new module must be given its place.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    path::{Path, PathBuf},
};

/// The layers, lowest first. A module may use modules of its own layer or
/// lower; uses within a layer must not form a cycle.
const LAYERS: &[(&str, &[&str])] = &[
    // Leaves: types and rules that depend on nothing else in the crate.
    ("leaf", &["config", "names", "clock", "netns", "privileges", "iface", "users"]),
    // The platform: the kernel's routing and the eBPF dataplane.
    ("platform", &["routing", "dataplane"]),
    // The services.
    ("services", &["dns", "dhcp", "tftp"]),
    // Operations across services: who is authoritative, handing over to
    // and exporting for the production servers, the whole-config check.
    ("ops", &["authority", "handoff", "export", "check"]),
    // The running agent and its control socket.
    ("runtime", &["agent", "ctl", "metrics"]),
    // The command line, and `main.rs`.
    ("entry", &["cli", "main"]),
];

/// Edges allowed although they go up a layer, each with its reason. Keep it
/// empty: an entry is a debt, to be paid by moving code down.
const KNOWN_EXCEPTIONS: &[(&str, &str, &str)] = &[
    // TEMPORARY (issue 20): the dataplane takes its clock through
    // `dns::cache::now_ns`, which wraps `dataplane::flows::monotonic_ns`.
    // The leaf `clock` module replaces both on another branch; remove this
    // entry when it has landed (the test then reports it as stale).
    ("dataplane", "dns", "the clock: dns::cache::now_ns until the `clock` leaf lands"),
    // Issue 20, left for the owner of export/ and ctl: `coresvc export`
    // asks a running agent for its leases and zones through `ctl::call`
    // with `ctl::Request`/`Response`. Either the control API (client and
    // messages) moves below the ops layer, or export's callers (cli) fetch
    // that state and hand it to export.
    ("export", "ctl", "export reads a running agent's leases and zones through the control socket"),
];

/// Cycles between sibling files inside one module, allowed for now: the
/// edge `(from file, to file)` that would close it, and why.
const KNOWN_FILE_CYCLES: &[(&str, &str, &str)] = &[];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, ms)| ms.contains(&module))
}

fn layer_name(i: usize) -> &'static str {
    LAYERS[i].0
}

// ------------------------------------------------------------------ lexing

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    /// `::`
    PathSep,
    Punct(char),
}

/// The tokens of Rust source that matter for paths, with their lines:
/// comments, string, byte-string, raw-string and char literals and
/// lifetimes are dropped.
fn lex(src: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if c[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if ch == '"' {
            i = skip_string(&c, i + 1, &mut line);
        } else if (ch == 'r' || ch == 'b' || ch == 'c') && raw_string_start(&c, i).is_some() {
            let (hashes, quote) = raw_string_start(&c, i).expect("checked");
            i = quote + 1;
            loop {
                if i >= c.len() {
                    break;
                }
                if c[i] == '\n' {
                    line += 1;
                }
                if c[i] == '"' && (1..=hashes).all(|k| at(i + k) == '#') {
                    i += 1 + hashes;
                    break;
                }
                i += 1;
            }
        } else if (ch == 'b' || ch == 'c') && at(i + 1) == '"' {
            i = skip_string(&c, i + 2, &mut line);
        } else if ch == 'b' && at(i + 1) == '\'' {
            i = skip_char(&c, i + 1);
        } else if ch == '\'' {
            if at(i + 1) == '\\' || at(i + 2) == '\'' {
                i = skip_char(&c, i);
            } else {
                // A lifetime or label: the quote goes, the name is harmless.
                i += 1;
            }
        } else if ch.is_alphanumeric() || ch == '_' {
            if ch == 'r' && at(i + 1) == '#' && (at(i + 2).is_alphabetic() || at(i + 2) == '_') {
                i += 2;
            }
            let word_start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push((Tok::Ident(c[word_start..i].iter().collect()), line));
        } else if ch == ':' && at(i + 1) == ':' {
            out.push((Tok::PathSep, line));
            i += 2;
        } else {
            out.push((Tok::Punct(ch), line));
            i += 1;
        }
    }
    out
}

/// After the opening quote: the index past the closing one.
fn skip_string(c: &[char], mut i: usize, line: &mut usize) -> usize {
    while i < c.len() {
        match c[i] {
            '\\' => i += 2,
            '"' => return i + 1,
            '\n' => {
                *line += 1;
                i += 1;
            }
            _ => i += 1,
        }
    }
    i
}

/// At the opening `'` of a char literal: the index past the closing one.
fn skip_char(c: &[char], mut i: usize) -> usize {
    i += 1;
    while i < c.len() {
        match c[i] {
            '\\' => i += 2,
            '\'' => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// `r"`, `r#"`, `br##"`, `cr"`: the number of hashes and the quote's index.
fn raw_string_start(c: &[char], i: usize) -> Option<(usize, usize)> {
    let mut j = i;
    if c[j] == 'b' || c[j] == 'c' {
        j += 1;
    }
    if c.get(j) != Some(&'r') {
        return None;
    }
    // Not the tail of an identifier (`bar"` cannot occur; `for r in` can).
    if i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_') {
        return None;
    }
    j += 1;
    let mut hashes = 0;
    while c.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    (c.get(j) == Some(&'"')).then_some((hashes, j))
}

// ------------------------------------------------------------------ paths

/// One use of a path, absolute from the crate root.
#[derive(Debug, Clone)]
struct Use {
    path: Vec<String>,
    line: usize,
}

/// The paths a file uses. `module` is the file's module path
/// (`["dns", "build"]`); `crate_names` are the words that start an
/// absolute path (`crate`, and `coresvc` in `main.rs`).
fn uses(tokens: &[(Tok, usize)], module: &[String], crate_names: &[&str]) -> Vec<Use> {
    let mut out = Vec::new();
    // Inline `mod name {` blocks: their name and the brace depth inside them.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    let ident = |i: usize| match tokens.get(i) {
        Some((Tok::Ident(s), _)) => Some(s.as_str()),
        _ => None,
    };
    let is = |i: usize, t: &Tok| tokens.get(i).map(|(x, _)| x) == Some(t);
    while i < tokens.len() {
        let prev_is_sep = i > 0 && is(i - 1, &Tok::PathSep);
        match &tokens[i].0 {
            Tok::Punct('{') => {
                depth += 1;
                i += 1;
            }
            Tok::Punct('}') => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
                i += 1;
            }
            Tok::Ident(w) if w == "mod" && ident(i + 1).is_some() && is(i + 2, &Tok::Punct('{')) => {
                inline.push((ident(i + 1).expect("checked").to_string(), depth + 1));
                i += 2;
            }
            Tok::Ident(w) if !prev_is_sep && crate_names.contains(&w.as_str()) && is(i + 1, &Tok::PathSep) => {
                i = tree(tokens, i + 2, Vec::new(), &mut out);
            }
            Tok::Ident(w) if !prev_is_sep && w == "super" && is(i + 1, &Tok::PathSep) => {
                let mut here: Vec<String> = module.to_vec();
                here.extend(inline.iter().map(|(n, _)| n.clone()));
                let mut j = i;
                while ident(j) == Some("super") && is(j + 1, &Tok::PathSep) {
                    here.pop();
                    j += 2;
                }
                i = tree(tokens, j, here, &mut out);
            }
            _ => i += 1,
        }
    }
    out
}

/// Parses a use tree at `i` (`a::b`, `{a, b::c}`, `*`) below `prefix`;
/// returns the index after it.
fn tree(tokens: &[(Tok, usize)], mut i: usize, prefix: Vec<String>, out: &mut Vec<Use>) -> usize {
    let line = tokens.get(i).map_or(0, |t| t.1);
    match tokens.get(i).map(|t| &t.0) {
        Some(Tok::Punct('{')) => {
            i += 1;
            while i < tokens.len() && tokens[i].0 != Tok::Punct('}') {
                if tokens[i].0 == Tok::Punct(',') {
                    i += 1;
                    continue;
                }
                let next = tree(tokens, i, prefix.clone(), out);
                // Skip what the tree parser does not read (`as name`).
                i = next.max(i + 1);
                while i < tokens.len() && !matches!(tokens[i].0, Tok::Punct(',') | Tok::Punct('}')) {
                    i += 1;
                }
            }
            i + 1
        }
        Some(Tok::Ident(s)) if s == "self" => {
            out.push(Use { path: prefix, line });
            i + 1
        }
        Some(Tok::Ident(s)) => {
            let mut p = prefix;
            p.push(s.clone());
            if tokens.get(i + 1).map(|t| &t.0) == Some(&Tok::PathSep) {
                tree(tokens, i + 2, p, out)
            } else {
                out.push(Use { path: p, line });
                i + 1
            }
        }
        _ => {
            out.push(Use { path: prefix, line });
            i
        }
    }
}

// ------------------------------------------------------------------ files

struct File {
    /// Relative to `agent/src`.
    rel: PathBuf,
    /// `["dns", "build"]`; `["main"]` for main.rs; empty for lib.rs.
    module: Vec<String>,
    uses: Vec<Use>,
    /// `#[macro_export]` macros defined here (they live at the crate root).
    macros: Vec<String>,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("read_dir").map(|e| e.expect("entry").path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs").to_string();
    match (parts.is_empty(), stem.as_str()) {
        (true, "lib") => Vec::new(),
        (_, "mod") => parts,
        _ => {
            parts.push(stem);
            parts
        }
    }
}

fn read_files() -> Vec<File> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    paths
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(&src).expect("under src").to_path_buf();
            let module = module_path(&rel);
            let text = std::fs::read_to_string(&p).expect("read");
            let tokens = lex(&text);
            let crate_names: &[&str] = if module == ["main"] { &["crate", "coresvc"] } else { &["crate"] };
            let uses = uses(&tokens, &module, crate_names);
            let macros = tokens
                .windows(4)
                .enumerate()
                .filter(|(_, w)| {
                    w[0].0 == Tok::Ident("macro_rules".into()) && w[1].0 == Tok::Punct('!') && w[3].0 == Tok::Punct('{')
                })
                .filter(|(k, _)| {
                    // `#[macro_export]` in the tokens just before.
                    let before = &tokens[k.saturating_sub(6)..*k];
                    before.iter().any(|(t, _)| *t == Tok::Ident("macro_export".into()))
                })
                .filter_map(|(_, w)| match &w[2].0 {
                    Tok::Ident(n) => Some(n.clone()),
                    _ => None,
                })
                .collect();
            File { rel, module, uses, macros }
        })
        .collect()
}

// ------------------------------------------------------------------ graphs

/// The strongly connected components with more than one node (Tarjan).
fn cycles<N: Ord + Clone>(edges: &BTreeMap<N, BTreeSet<N>>) -> Vec<Vec<N>> {
    struct St<N> {
        index: BTreeMap<N, usize>,
        low: BTreeMap<N, usize>,
        stack: Vec<N>,
        on: BTreeSet<N>,
        next: usize,
        out: Vec<Vec<N>>,
    }
    fn visit<N: Ord + Clone>(v: &N, edges: &BTreeMap<N, BTreeSet<N>>, st: &mut St<N>) {
        st.index.insert(v.clone(), st.next);
        st.low.insert(v.clone(), st.next);
        st.next += 1;
        st.stack.push(v.clone());
        st.on.insert(v.clone());
        for w in edges.get(v).into_iter().flatten() {
            if !st.index.contains_key(w) {
                visit(w, edges, st);
                let lw = st.low[w];
                let lv = st.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if st.on.contains(w) {
                let iw = st.index[w];
                let lv = st.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if st.low[v] == st.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = st.stack.pop().expect("on the stack");
                st.on.remove(&w);
                comp.push(w.clone());
                if w == *v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                st.out.push(comp);
            }
        }
    }
    let mut st = St {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    let nodes: BTreeSet<N> =
        edges.iter().flat_map(|(a, bs)| std::iter::once(a.clone()).chain(bs.iter().cloned())).collect();
    for n in &nodes {
        if !st.index.contains_key(n) {
            visit(n, edges, &mut st);
        }
    }
    st.out
}

/// Where an edge was seen first: `dns/build.rs:22`.
type Seen = BTreeMap<(String, String), String>;

fn describe_cycle(comp: &[String], seen: &Seen) -> String {
    let mut s = format!("cycle between {}:", comp.join(", "));
    for ((a, b), at) in seen {
        if comp.contains(a) && comp.contains(b) {
            let _ = write!(s, "\n    {a} -> {b} ({at})");
        }
    }
    s
}

#[test]
fn modules_use_only_their_own_layer_or_lower_and_form_no_cycle() {
    let files = read_files();
    let top: BTreeSet<String> = files.iter().filter_map(|f| f.module.first().cloned()).collect();
    let macros: BTreeMap<String, String> = files
        .iter()
        .flat_map(|f| f.macros.iter().map(move |m| (m.clone(), f.module.first().cloned().unwrap_or_default())))
        .collect();
    let mut failures = BTreeSet::new();
    for m in &top {
        if layer_of(m).is_none() {
            failures
                .insert(format!("module {m} is not in the layer table (LAYERS in agent/tests/layering.rs): place it"));
        }
    }
    let mut seen: Seen = BTreeMap::new();
    let mut used_exceptions = BTreeSet::new();
    for f in &files {
        let Some(from) = f.module.first() else { continue };
        for u in &f.uses {
            let Some(first) = u.path.first() else { continue };
            let to = if top.contains(first) {
                first.clone()
            } else if let Some(m) = macros.get(first) {
                m.clone()
            } else {
                failures.insert(format!(
                    "{}:{}: crate::{} is neither a module nor an exported macro",
                    f.rel.display(),
                    u.line,
                    u.path.join("::")
                ));
                continue;
            };
            if &to == from {
                continue;
            }
            let at = format!("{}:{}", f.rel.display(), u.line);
            if let Some(e) = KNOWN_EXCEPTIONS.iter().find(|(a, b, _)| a == from && *b == to) {
                used_exceptions.insert(*e);
                continue;
            }
            if let (Some(lf), Some(lt)) = (layer_of(from), layer_of(&to))
                && lt > lf
            {
                failures.insert(format!(
                    "{at}: {from} ({}) uses {to} ({}), a higher layer",
                    layer_name(lf),
                    layer_name(lt)
                ));
            }
            seen.entry((from.clone(), to)).or_insert(at);
        }
    }
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (a, b) in seen.keys() {
        edges.entry(a.clone()).or_default().insert(b.clone());
    }
    for comp in cycles(&edges) {
        failures.insert(describe_cycle(&comp, &seen));
    }
    for e in KNOWN_EXCEPTIONS {
        if !used_exceptions.contains(e) {
            // Not a failure, so the branches can land in any order.
            eprintln!("layering: the known exception {} -> {} no longer occurs: remove it", e.0, e.1);
        }
    }
    let failures: Vec<String> = failures.into_iter().collect();
    assert!(failures.is_empty(), "the agent's modules do not read bottom-up:\n{}", failures.join("\n"));
}

#[test]
fn sibling_files_inside_a_module_form_no_cycle() {
    let files = read_files();
    let by_module: BTreeMap<Vec<String>, &File> = files.iter().map(|f| (f.module.clone(), f)).collect();
    // The file that holds a path: the longest module path that prefixes it.
    let file_of =
        |path: &[String]| -> Option<&File> { (1..=path.len()).rev().find_map(|n| by_module.get(&path[..n]).copied()) };
    let mut seen: Seen = BTreeMap::new();
    let mut used_exceptions = BTreeSet::new();
    for f in &files {
        if f.module.is_empty() {
            continue;
        }
        for u in &f.uses {
            let Some(t) = file_of(&u.path) else { continue };
            // Within one top-level module, between files neither of which
            // contains the other (a parent and its children share types).
            let same_top = t.module.first() == f.module.first();
            let nested = t.module.starts_with(&f.module) || f.module.starts_with(&t.module);
            if same_top && !nested {
                let key = (f.rel.display().to_string(), t.rel.display().to_string());
                if let Some(e) = KNOWN_FILE_CYCLES.iter().find(|(a, b, _)| *a == key.0 && *b == key.1) {
                    used_exceptions.insert(*e);
                    continue;
                }
                seen.entry(key).or_insert_with(|| format!("{}:{}", f.rel.display(), u.line));
            }
        }
    }
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (a, b) in seen.keys() {
        edges.entry(a.clone()).or_default().insert(b.clone());
    }
    for e in KNOWN_FILE_CYCLES {
        if !used_exceptions.contains(e) {
            eprintln!("layering: the known file cycle edge {} -> {} no longer occurs: remove it", e.0, e.1);
        }
    }
    let failures: Vec<String> = cycles(&edges).iter().map(|c| describe_cycle(c, &seen)).collect();
    assert!(failures.is_empty(), "files inside a module use each other in a cycle:\n{}", failures.join("\n"));
}

#[test]
fn the_reader_finds_every_kind_of_path() {
    let src = r##"
        //! Docs name crate::agent, which does not count.
        use crate::{config::{self, Config}, names::fqdn as f, cfg_path};
        use super::zone::Zone;
        mod tests { use super::*; use super::super::x::Y; }
        fn f<'a>(s: &'a str) -> char { let _ = "crate::ctl"; let _ = r#"crate::cli"#; let _ = '"'; crate::iface::iface_mac("x"); 'x' }
    "##;
    let module = vec!["dns".to_string(), "build".to_string()];
    let got: Vec<String> = uses(&lex(src), &module, &["crate"]).into_iter().map(|u| u.path.join("::")).collect();
    assert_eq!(
        got,
        [
            "config",
            "config::Config",
            "names::fqdn",
            "cfg_path",
            "dns::zone::Zone",
            "dns::build",
            "dns::x::Y",
            "iface::iface_mac",
        ]
    );
}
