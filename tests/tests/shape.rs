//! The code's shape, as a newcomer meets it: no import circle between the modules of any crate,
//! and no source file past the length one can read in a sitting.

use crate::common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crates whose sources are checked, from the workspace root.
const CRATES: &[&str] = &[
    "protocol/src",
    "server/src",
    "installer/src",
    "bench/src",
    "tests/src",
];

/// The longest a source file may grow, in lines.
const MAX_LINES: usize = 700;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sources(dir: &Path) -> Vec<PathBuf> {
    walk(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect()
}

/// The module a source file holds, as a path under the crate root (`""` for the root).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap_or(file).with_extension("");
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
    parts.join("::")
}

/// A file's code without comments and without its unit tests (a `#[cfg(test)]` module at its
/// end), which may reach anywhere.
fn code(text: &str) -> String {
    let end = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
    text[..end]
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules a module's code names through `crate::` or `super::`.
fn uses(module: &str, text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    for (prefix, base) in [
        ("crate::", String::new()),
        // `super` of `a::b` is `a`, whether a/b.rs or a/b/mod.rs holds it.
        (
            "super::",
            module
                .rsplit_once("::")
                .map(|(p, _)| p.to_string())
                .unwrap_or_default(),
        ),
    ] {
        let mut at = 0;
        while let Some(i) = text[at..].find(prefix) {
            let start = at + i;
            at = start + prefix.len();
            if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
                continue;
            }
            let rest: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let mut path: Vec<&str> = rest.split("::").filter(|s| !s.is_empty()).collect();
            // The longest prefix that is a module of the crate (`super::item` is `super`).
            loop {
                let m = match (base.is_empty(), path.is_empty()) {
                    (true, _) => path.join("::"),
                    (false, true) => base.clone(),
                    (false, false) => format!("{base}::{}", path.join("::")),
                };
                if modules.contains(&m) {
                    if m != module {
                        out.insert(m);
                    }
                    break;
                }
                if path.pop().is_none() {
                    break;
                }
            }
        }
    }
    out
}

/// A circle in `graph`, if there is one, as the modules along it.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|s| s == m).unwrap_or(0);
                    let mut c = stack[from..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(m, graph, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, graph, &mut state, &mut vec![]) {
                return Some(c);
            }
        }
    }
    None
}

/// The module graph of the crate whose sources are in `src`.
fn graph(src: &Path) -> anyhow::Result<BTreeMap<String, BTreeSet<String>>> {
    let files = sources(src);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(src, f)).collect();
    let mut g = BTreeMap::new();
    for f in &files {
        let m = module_of(src, f);
        if m.is_empty() {
            continue; // the crate root only declares modules
        }
        let text = code(&std::fs::read_to_string(f)?);
        let mut used = uses(&m, &text, &modules);
        used.remove("");
        g.insert(m, used);
    }
    Ok(g)
}

#[test]
fn no_crate_has_an_import_circle() -> R {
    let mut found = vec![];
    for c in CRATES {
        let g = graph(&workspace().join(c))?;
        assert!(!g.is_empty(), "{c}: no modules read");
        if let Some(circle) = circle(&g) {
            found.push(format!("{c}: {}", circle.join(" -> ")));
        }
    }
    assert!(found.is_empty(), "import circles:\n{}", found.join("\n"));
    Ok(())
}

#[test]
fn no_source_file_is_longer_than_one_sitting() -> R {
    let mut long = vec![];
    for c in CRATES.iter().chain(&["tests/tests"]) {
        for f in sources(&workspace().join(c)) {
            let lines = std::fs::read_to_string(&f)?.lines().count();
            if lines > MAX_LINES {
                long.push(format!("{} ({lines} lines)", f.display()));
            }
        }
    }
    assert!(
        long.is_empty(),
        "over {MAX_LINES} lines:\n{}",
        long.join("\n")
    );
    Ok(())
}

/// The checker itself: a circle through `super::` and one through `crate::` are both seen, and
/// a comment or a unit test naming a module is no use of it.
#[test]
fn the_circle_check_sees_circles_and_only_circles() -> R {
    let modules: BTreeSet<String> = ["a", "a::b", "c"].map(String::from).into();
    let a = uses(
        "a",
        &code("use crate::a::b::thing;\n// crate::c\n"),
        &modules,
    );
    let b = uses(
        "a::b",
        &code("use super::x; fn f() { crate::c::g() }\n"),
        &modules,
    );
    let c = uses(
        "c",
        &code("fn g() {}\n#[cfg(test)]\nmod tests { use crate::a; }\n"),
        &modules,
    );
    assert_eq!(a, ["a::b".to_string()].into());
    assert_eq!(b, ["a".to_string(), "c".to_string()].into());
    assert!(c.is_empty());
    let g: BTreeMap<String, BTreeSet<String>> =
        [("a".into(), a), ("a::b".into(), b), ("c".into(), c)].into();
    assert_eq!(
        circle(&g),
        Some(["a", "a::b", "a"].map(String::from).to_vec())
    );
    let mut g = g;
    g.insert("a::b".into(), ["c".to_string()].into());
    assert_eq!(circle(&g), None);
    Ok(())
}

/// Every error code the API can answer has its meaning and what to do in
/// docs/troubleshooting.md, and every exit code of `muster` too.
#[test]
fn every_error_code_and_exit_code_is_in_the_troubleshooting_page() -> R {
    let page = std::fs::read_to_string(workspace().join("docs/troubleshooting.md"))?;
    let missing: Vec<&str> = muster_protocol::ErrorCode::ALL
        .iter()
        .map(|c| c.as_str())
        .filter(|c| !page.contains(&format!("| `{c}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "codes not in docs/troubleshooting.md: {missing:?}"
    );
    for exit in 2..=10 {
        assert!(
            page.contains(&format!("| {exit} |")),
            "exit {exit} is not in docs/troubleshooting.md"
        );
    }
    Ok(())
}
