//! Floors, not circles: no file under `src/` names a module on its own floor
//! or above. The floor table is the one in the crate docs (lib.rs, section
//! "Floors, not circles"); this test reads it from there, so the docs and
//! the check cannot drift apart.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

const SECTION: &str = "# Floors, not circles";

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Module -> floor, from the table in lib.rs's docs (`| 1 | `coroutine` | ... |`).
fn floor_table(lib: &str) -> HashMap<String, usize> {
    let mut floors = HashMap::new();
    let mut in_section = false;
    for doc in lib.lines().filter_map(|l| l.strip_prefix("//!")) {
        let doc = doc.trim();
        if doc.starts_with('#') {
            in_section = doc == SECTION;
            continue;
        }
        let cells: Vec<&str> = doc.split('|').map(str::trim).collect();
        if !in_section || cells.len() < 4 {
            continue;
        }
        let Ok(floor) = cells[1].parse::<usize>() else {
            continue; // the header and its rule
        };
        for module in cells[2].split(',') {
            floors.insert(module.trim().trim_matches('`').to_owned(), floor);
        }
    }
    floors
}

/// The crate root's re-exports, name -> module (`pub use aio::{AioContext, Bh};`
/// makes `crate::AioContext` a path into `aio`).
fn reexports(lib: &str) -> HashMap<String, String> {
    let code: String = lib.lines().map(strip_comment).collect::<Vec<_>>().join(" ");
    let mut names = HashMap::new();
    for stmt in code.split(';') {
        let Some(path) = stmt.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, rest)) = path.split_once("::") else {
            continue;
        };
        let rest = rest.trim().trim_start_matches('{').trim_end_matches('}');
        for item in rest.split(',') {
            // `a::b as c` is reached as `crate::c`.
            let item = item.trim();
            let name = item.rsplit(" as ").next().unwrap_or(item);
            let name = name.rsplit("::").next().unwrap_or(name).trim();
            if !name.is_empty() {
                names.insert(name.to_owned(), module.trim().to_owned());
            }
        }
    }
    names
}

/// The line without its `//` comment (doc comments included: an intra-doc
/// link is not a dependency).
fn strip_comment(line: &str) -> &str {
    line.find("//").map_or(line, |i| &line[..i])
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every first segment after `crate::` (or `$crate::`) in `code`, with its
/// line number: `crate::aio::X` gives `aio`, `crate::{aio, coroutine::Y}`
/// gives `aio` and `coroutine`.
fn crate_paths(code: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let line = strip_comment(line);
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let before = rest[..i].chars().next_back();
            let after = &rest[i + "crate::".len()..];
            rest = after;
            if before.is_some_and(is_ident) {
                continue; // `foo_crate::`
            }
            let after = after.trim_start();
            if let Some(group) = after.strip_prefix('{') {
                // Only the top level of the group: `{a, b::{c, d}}` -> a, b.
                let mut depth = 0;
                let mut segment_start = true;
                for (j, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => segment_start = true,
                        c if segment_start && is_ident(c) => {
                            let name: String =
                                group[j..].chars().take_while(|&c| is_ident(c)).collect();
                            found.push((n + 1, name));
                            segment_start = false;
                        }
                        _ => {}
                    }
                }
            } else {
                let name: String = after.chars().take_while(|&c| is_ident(c)).collect();
                if !name.is_empty() {
                    found.push((n + 1, name));
                }
            }
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`aio/bh.rs` -> `aio`),
/// or `None` for the crate root and the binaries (other crates).
fn owner(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "bin" => None,
        f => Some(f.trim_end_matches(".rs").to_owned()),
    }
}

/// Every upward or sideways path in `code`, a file of module `owner`.
fn violations(
    owner: &str,
    code: &str,
    floors: &HashMap<String, usize>,
    reexports: &HashMap<String, String>,
) -> Vec<String> {
    let own = floors[owner];
    let mut bad = Vec::new();
    for (line, name) in crate_paths(code) {
        let target = match reexports.get(&name) {
            Some(module) if !floors.contains_key(&name) => module.clone(),
            _ => name.clone(),
        };
        match floors.get(&target) {
            None => bad.push(format!(
                "line {line}: `crate::{name}` is not in the floor table (nor re-exported from a module in it)"
            )),
            Some(&floor) if target != owner && floor >= own => bad.push(format!(
                "line {line}: `crate::{name}` reaches `{target}` (floor {floor}) from `{owner}` (floor {own})"
            )),
            Some(_) => {}
        }
    }
    bad
}

#[test]
fn no_module_names_its_own_floor_or_above() {
    let src = src_dir();
    let lib = fs::read_to_string(src.join("lib.rs")).expect("read src/lib.rs");
    let floors = floor_table(&lib);
    assert!(
        floors.len() >= 6,
        "the floor table in lib.rs ('{SECTION}') was not found or is short: {floors:?}"
    );
    let reexports = reexports(&lib);

    // Every top-level module of the crate is on a floor.
    for line in lib.lines().map(str::trim) {
        let decl = line.strip_prefix("pub ").unwrap_or(line);
        if let Some(m) = decl.strip_prefix("mod ").and_then(|m| m.strip_suffix(';')) {
            assert!(
                floors.contains_key(m),
                "module `{m}` is not in lib.rs's floor table"
            );
        }
    }

    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut bad = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("a file under src/");
        let Some(owner) = owner(rel) else { continue };
        let floor_known = floors.contains_key(&owner);
        assert!(
            floor_known,
            "{}: module `{owner}` is not in the floor table",
            rel.display()
        );
        let code = fs::read_to_string(file).expect("read a source file");
        for v in violations(&owner, &code, &floors, &reexports) {
            bad.push(format!("src/{}: {v}", rel.display()));
        }
    }
    assert!(
        bad.is_empty(),
        "imports that run up a floor (lib.rs, '{SECTION}'):\n{}",
        bad.join("\n")
    );
}

/// The scanner itself: grouped imports, re-exports through the root,
/// `$crate::` in macros, and comments (which are not dependencies).
#[test]
fn scanner_sees_every_form_of_crate_path() {
    let floors: HashMap<String, usize> = [("trace", 0), ("coroutine", 1), ("aio", 2), ("io", 5)]
        .into_iter()
        .map(|(m, f)| (m.to_owned(), f))
        .collect();
    let reexports =
        reexports("pub use aio::{co_reschedule_self, AioContext};\npub use io::Channel as Ch;\n");
    let code = "use crate::{trace, aio::Bh};\n\
                // crate::io in a comment\n\
                /// [`AioContext`](crate::AioContext)\n\
                fn f() { let _ = crate::AioContext::current(); }\n\
                macro_rules! m { () => { $crate::Ch::new() } }\n\
                use crate::coroutine::tls;\n";
    let bad = violations("coroutine", code, &floors, &reexports);
    assert_eq!(bad.len(), 3, "{bad:#?}");
    assert!(bad[0].starts_with("line 1: `crate::aio`"), "{bad:#?}");
    assert!(
        bad[1].starts_with("line 4: `crate::AioContext` reaches `aio`"),
        "{bad:#?}"
    );
    assert!(
        bad[2].starts_with("line 5: `crate::Ch` reaches `io`"),
        "{bad:#?}"
    );
    let unknown = violations("coroutine", "use crate::nowhere::X;", &floors, &reexports);
    assert_eq!(unknown.len(), 1, "{unknown:#?}");
}
