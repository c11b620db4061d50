//! The shape of `src/` (issue 15): no import circle between its rooms, and no room so large
//! that it holds two jobs. Read from the source text, as a newcomer would: a file's imports are
//! the `crate::` and `super::` paths it names outside its tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Most lines a file in `src/` may have.
const MAX_LINES: usize = 600;

/// Files allowed over [`MAX_LINES`], each with the reason (empty: none is).
const LARGER: &[(&str, &str)] = &[];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/auth/dpop.rs` → ["auth", "dpop"]; `src/auth/mod.rs` → ["auth"]; `src/lib.rs` → [].
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The text outside `#[cfg(test)]` modules (they close the file by this project's habit).
fn without_tests(text: &str) -> &str {
    text.find("#[cfg(test)]\nmod tests")
        .map_or(text, |i| &text[..i])
}

/// Every path a file names: `crate::a::b`, `super::a`, `self::a`, a child module `a::b`
/// (declared by `mod a;` in this file), and the names inside `use x::{…}` groups.
fn named_paths(module: &[String], text: &str) -> Vec<Vec<String>> {
    let children: BTreeSet<String> = text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            let l = l.strip_prefix("pub(crate) ").unwrap_or(l);
            l.strip_prefix("mod ")
                .and_then(|r| r.strip_suffix(';'))
                .map(str::to_string)
        })
        .collect();
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < bytes.len() {
        if word(bytes[i]) && (i == 0 || !(word(bytes[i - 1]) || bytes[i - 1] == b':')) {
            let start = i;
            let mut j = i;
            while j < bytes.len() && (word(bytes[j]) || text[j..].starts_with("::")) {
                j += if text[j..].starts_with("::") { 2 } else { 1 };
            }
            let path: Vec<String> = text[start..j]
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            let mut base = match path.first().map(String::as_str) {
                Some("crate") => Some((Vec::new(), 1)),
                Some("super") => {
                    let mut m = module.to_vec();
                    let mut k = 0;
                    while path.get(k).map(String::as_str) == Some("super") {
                        m.pop();
                        k += 1;
                    }
                    Some((m, k))
                }
                Some("self") => Some((module.to_vec(), 1)),
                Some(first) if children.contains(first) && path.len() > 1 => {
                    Some((module.to_vec(), 0))
                }
                _ => None,
            };
            if let Some((mut m, skip)) = base.take() {
                m.extend(path[skip..].iter().cloned());
                // A `use a::{b, c::d}` group: each name hangs under the path.
                if text[j..].starts_with('{') {
                    let end = text[j..].find('}').map_or(j, |e| j + e);
                    for name in text[j + 1..end].split(',') {
                        let name = name.trim();
                        let mut g = m.clone();
                        g.extend(
                            name.split("::")
                                .map(|s| s.trim().to_string())
                                .filter(|s| !s.is_empty() && s != "self"),
                        );
                        out.push(g);
                    }
                } else {
                    out.push(m);
                }
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

/// The file a path leads to: the longest prefix that is a module of `modules`.
fn resolve<'a>(
    modules: &'a BTreeMap<Vec<String>, PathBuf>,
    path: &[String],
) -> Option<&'a PathBuf> {
    (1..=path.len()).rev().find_map(|n| modules.get(&path[..n]))
}

#[test]
fn no_import_circle_in_src_and_no_room_over_the_limit() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.retain(|f| !f.ends_with("main.rs") && !f.ends_with("lib.rs"));
    let modules: BTreeMap<Vec<String>, PathBuf> = files
        .iter()
        .map(|f| (module_of(&src, f), f.clone()))
        .collect();

    // Arrows file → file; a module's own children are not arrows of its parent (its `mod`
    // lines declare them), nor is a child's `super::` its parent's.
    let mut arrows: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for (module, file) in &modules {
        let text = std::fs::read_to_string(file).unwrap();
        for path in named_paths(module, without_tests(&text)) {
            if let Some(to) = resolve(&modules, &path) {
                let to_module = module_of(&src, to);
                let ancestor = module.starts_with(&to_module);
                if to != file && !ancestor {
                    arrows.entry(file.clone()).or_default().insert(to.clone());
                }
            }
        }
    }

    // Circles: strongly connected groups of more than one file (Tarjan).
    let names: Vec<&PathBuf> = modules.values().collect();
    let index_of = |p: &PathBuf| names.iter().position(|n| *n == p).unwrap();
    let edges: Vec<Vec<usize>> = names
        .iter()
        .map(|n| {
            arrows
                .get(*n)
                .map(|s| s.iter().map(&index_of).collect())
                .unwrap_or_default()
        })
        .collect();
    let circles = strongly_connected(&edges);
    let shown: Vec<Vec<String>> = circles
        .iter()
        .filter(|c| c.len() > 1)
        .map(|c| {
            c.iter()
                .map(|&i| names[i].strip_prefix(&src).unwrap().display().to_string())
                .collect()
        })
        .collect();
    assert!(shown.is_empty(), "import circles in src/: {shown:?}");

    let mut over = Vec::new();
    for file in &files {
        let lines = std::fs::read_to_string(file).unwrap().lines().count();
        let rel = file.strip_prefix(&src).unwrap().display().to_string();
        if lines > MAX_LINES && !LARGER.iter().any(|(f, _)| *f == rel) {
            over.push(format!("{rel}: {lines} lines"));
        }
    }
    assert!(
        over.is_empty(),
        "files in src/ over {MAX_LINES} lines (split them, or say why in LARGER): {over:?}"
    );
}

/// The check itself finds a circle and an arrow through `super::` and a `use` group.
#[test]
fn the_reader_sees_crate_super_and_grouped_paths() {
    let m = vec!["gateway".to_string(), "live".to_string()];
    let text = "use super::body::{BodyLimits, no_body_token};\nuse crate::auth::{Authoriser, permit::Permit};\nfn f() { crate::metrics::x(); }\n";
    let got = named_paths(&m, text);
    let has = |p: &[&str]| got.iter().any(|g| g == p);
    assert!(has(&["gateway", "body", "BodyLimits"]), "{got:?}");
    assert!(has(&["auth", "permit", "Permit"]), "{got:?}");
    assert!(has(&["metrics", "x"]), "{got:?}");
    assert_eq!(
        strongly_connected(&[vec![1], vec![0], vec![]])
            .iter()
            .filter(|c| c.len() > 1)
            .count(),
        1
    );
}

fn strongly_connected(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    struct T<'a> {
        edges: &'a [Vec<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    fn visit(t: &mut T<'_>, v: usize) {
        t.index[v] = Some(t.next);
        t.low[v] = t.next;
        t.next += 1;
        t.stack.push(v);
        t.on[v] = true;
        for &w in &t.edges[v] {
            match t.index[w] {
                None => {
                    visit(t, w);
                    t.low[v] = t.low[v].min(t.low[w]);
                }
                Some(iw) if t.on[w] => t.low[v] = t.low[v].min(iw),
                _ => {}
            }
        }
        if Some(t.low[v]) == t.index[v] {
            let mut c = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on[w] = false;
                c.push(w);
                if w == v {
                    break;
                }
            }
            t.out.push(c);
        }
    }
    let n = edges.len();
    let mut t = T {
        edges,
        index: vec![None; n],
        low: vec![0; n],
        on: vec![false; n],
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in 0..n {
        if t.index[v].is_none() {
            visit(&mut t, v);
        }
    }
    t.out
}

/// Errors by layer (issue 15): no error is a bare `String`, and the domain rooms (`auth`,
/// `state`) say what went wrong in their own types: only the gateway knows HTTP answers.
#[test]
fn errors_are_typed_and_the_domain_does_not_answer_http() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let code = without_tests(&text);
        let rel = file.strip_prefix(&src).unwrap().display().to_string();
        for (n, line) in code.lines().enumerate() {
            let line = line.split("//").next().unwrap_or_default();
            let string_error = line.find("Result<").is_some_and(|at| {
                let rest = &line[at..];
                rest.contains(", String>") || rest.contains(",String>")
            }) || line.contains("std::result::Result<T, String>");
            if string_error {
                found.push(format!("{rel}:{}: an error that is a String", n + 1));
            }
            let domain = rel.starts_with("auth/") || rel.starts_with("state/");
            if domain && (line.contains("crate::rejection") || line.contains("Rejection")) {
                found.push(format!("{rel}:{}: the domain names an HTTP answer", n + 1));
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}
