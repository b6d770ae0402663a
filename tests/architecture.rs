//! ARCHITECTURE.md's dependency rules, checked on every `cargo test`.
//!
//! The table below is the map a newcomer reads first: which top-level module
//! of `src/` may use which other, and which outside crates only one module
//! may know (XML, SQL, HTTP). `ARCHITECTURE.md` ("Invariants") and
//! `src/lib.rs` ("Layout") say the same thing in words; when a rule changes,
//! change the table and those two together.
//!
//! How it reads the code: every `crate::module` path in a file of
//! `src/<module>/…` or `src/<module>.rs` (in `use` lines and in code, the
//! `use crate::{a, b}` form included) is an import of `module`. Comments are
//! skipped, and so is everything from a `#[cfg(test)]` line to the end of
//! the file (test modules sit at the end of their file) and files under a
//! `tests/` folder of `src/`: tests may reach across modules to set up what
//! they check. `src/lib.rs` (the root that declares the modules) and
//! `src/main.rs` (the binary, which sees only the public API) are not checked.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Modules everything may use: they import nothing of the crate themselves.
const LEAVES: &[&str] = &[
    "config",
    "logging",
    "metrics",
    "phone",
    "systemd",
    "thread_priority",
];

/// Each module and what it may import besides the leaves. Dependencies point
/// one way, from the top of this table to the bottom.
const MAY_IMPORT: &[(&str, &[&str])] = &[
    // Wires everything together; nothing imports it.
    (
        "gateway",
        &[
            "http",
            "vats",
            "sources",
            "popup",
            "store",
            "soap",
            "directory",
            "sync",
        ],
    ),
    // Routes, auth and each endpoint group; only `gateway` imports it. It
    // hands a sync system's webhooks to the system (authenticate, parse)
    // and starts a system's initial load or relink.
    (
        "http",
        &[
            "sync",
            "vats",
            "sources",
            "popup",
            "store",
            "soap",
            "directory",
        ],
    ),
    // Keeping other systems in step: the change feed into the sync store,
    // run on the sources' lowest-priority worker.
    // (`xml`: the XML forms of the 1C pull and payments endpoints.)
    ("sync", &["directory", "store", "sources", "xml"]),
    // The PBX's two operations: no HTTP, no XML of its own.
    ("vats", &["sources", "popup", "store", "soap", "directory"]),
    // Where counterparties come from: the file, 1C, the push API, SERVIO's
    // exchange files (read through `xml`).
    ("sources", &["store", "directory", "xml"]),
    // The pop-up hub and the screens' transports: knows no tokens, no PBX.
    ("popup", &["directory"]),
    // SQLite: the directory's snapshot and the call journal.
    ("store", &["directory"]),
    // Envelopes in, answers out: reads through `xml`, no business logic.
    ("soap", &["directory", "xml"]),
    // Safe XML reading: limits, DTDs refused, encodings; knows no grammar.
    ("xml", &[]),
    // The model and the index: sources push into it, it never calls out.
    ("directory", &[]),
    ("config", &[]),
    ("logging", &[]),
    ("metrics", &[]),
    ("phone", &[]),
    ("systemd", &[]),
    ("thread_priority", &[]),
];

/// Outside crates only some modules may use: "only `xml` and its users know
/// XML (quick-xml itself: `xml`, and `soap` for its namespaces), only
/// `store` knows SQL, only `http` (and the WebSocket transport it hands
/// upgraded connections to) knows HTTP serving".
const CRATE_OWNERS: &[(&str, &[&str])] = &[
    ("quick_xml", &["xml", "soap"]),
    ("encoding_rs", &["xml"]),
    ("rusqlite", &["store"]),
    ("hyper", &["http", "popup"]),
    ("hyper_util", &["http", "popup"]),
    ("tokio_tungstenite", &["popup"]),
    ("reqwest", &["sources"]),
    ("moka", &["sources"]),
];

/// One broken rule: where, and which rule.
#[derive(Debug, PartialEq, Eq)]
struct Violation {
    file: String,
    line: usize,
    message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

/// The top-level module a file of `src/` belongs to, or `None` for files the
/// rules do not cover (the crate root, the binary, test-only files).
fn module_of(relative: &Path) -> Option<String> {
    let parts: Vec<&str> = relative.iter().filter_map(|p| p.to_str()).collect();
    if parts.iter().any(|p| *p == "tests" || *p == "tests.rs") {
        return None;
    }
    match parts.as_slice() {
        ["lib.rs"] | ["main.rs"] => None,
        [file] => file.strip_suffix(".rs").map(str::to_owned),
        [dir, ..] => Some((*dir).to_owned()),
        [] => None,
    }
}

/// The crate-internal modules and outside crates a line refers to.
fn paths_on_line(line: &str) -> (Vec<String>, Vec<String>) {
    let code = line.split("//").next().unwrap_or("");
    let mut modules = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let preceded_by_ident = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        let after = &rest[at + "crate::".len()..];
        rest = after;
        if preceded_by_ident {
            continue; // `cti_gateway::crate::`… cannot occur; `mycrate::` is not ours
        }
        if let Some(group) = after.strip_prefix('{') {
            // `use crate::{a, b::c, d::{e, f}}`: the first segment of each item.
            let mut depth = 0usize;
            let mut item_start = true;
            for token in group.split_inclusive(|c: char| "{},".contains(c)) {
                let name = token
                    .trim_matches(|c: char| "{},".contains(c) || c.is_whitespace())
                    .split("::")
                    .next()
                    .unwrap_or("");
                if depth == 0 && item_start && !name.is_empty() {
                    modules.push(name.to_owned());
                }
                match token.chars().last() {
                    Some('{') => {
                        depth += 1;
                        item_start = false;
                    }
                    Some('}') if depth == 0 => break,
                    Some('}') => depth -= 1,
                    Some(',') => item_start = depth == 0,
                    _ => item_start = false,
                }
            }
        } else {
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                modules.push(name);
            }
        }
    }
    let crates = CRATE_OWNERS
        .iter()
        .filter(|(name, _)| {
            code.match_indices(&format!("{name}::")).any(|(at, _)| {
                !code[..at]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
            })
        })
        .map(|(name, _)| (*name).to_owned())
        .collect();
    (modules, crates)
}

/// Checks one file's text against the tables.
fn check_file(relative: &Path, text: &str) -> Vec<Violation> {
    let Some(module) = module_of(relative) else {
        return Vec::new();
    };
    let file = format!("src/{}", relative.display());
    let Some((_, allowed)) = MAY_IMPORT.iter().find(|(m, _)| *m == module) else {
        return vec![Violation {
            file,
            line: 1,
            message: format!(
                "module `{module}` is not in tests/architecture.rs's MAY_IMPORT table: add it, and say in ARCHITECTURE.md what it may use"
            ),
        }];
    };
    let is_leaf = LEAVES.contains(&module.as_str());
    let mut found = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        let (modules, crates) = paths_on_line(line);
        for target in modules {
            let fine = target == module
                || allowed.contains(&target.as_str())
                || (!is_leaf && LEAVES.contains(&target.as_str()));
            if !fine {
                let mut may: Vec<&str> = allowed.to_vec();
                if !is_leaf {
                    may.extend(LEAVES);
                }
                found.push(Violation {
                    file: file.clone(),
                    line: number + 1,
                    message: format!(
                        "`{module}` uses `crate::{target}`, but {module} may import only {} (ARCHITECTURE.md, Invariants; tests/architecture.rs MAY_IMPORT)",
                        if may.is_empty() { "nothing of the crate".to_owned() } else { may.join(", ") }
                    ),
                });
            }
        }
        for name in crates {
            let owners = CRATE_OWNERS
                .iter()
                .find(|(c, _)| *c == name)
                .map_or(&[][..], |(_, o)| *o);
            if !owners.contains(&module.as_str()) {
                found.push(Violation {
                    file: file.clone(),
                    line: number + 1,
                    message: format!(
                        "`{module}` uses the crate `{name}`, which only {} may use (ARCHITECTURE.md, Invariants; tests/architecture.rs CRATE_OWNERS)",
                        owners.join(", ")
                    ),
                });
            }
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_imports_only_what_architecture_md_allows() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    assert!(
        files.len() > 20,
        "found only {} files under src/",
        files.len()
    );
    let mut violations = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).expect("source file is UTF-8");
        let relative = path.strip_prefix(&src).expect("under src/");
        violations.extend(check_file(relative, &text));
    }
    assert!(
        violations.is_empty(),
        "imports that break the architecture's rules:\n{}",
        violations
            .iter()
            .map(|v| format!("  {v}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_tables_name_every_top_level_module_once_and_only_real_ones() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|p| module_of(p.strip_prefix(&src).ok()?))
        .collect();
    let in_table: BTreeSet<String> = MAY_IMPORT.iter().map(|(m, _)| (*m).to_owned()).collect();
    assert_eq!(
        in_table.len(),
        MAY_IMPORT.len(),
        "a module is listed twice in MAY_IMPORT"
    );
    assert_eq!(
        modules, in_table,
        "MAY_IMPORT must list exactly the top-level modules of src/"
    );
    for (module, allowed) in MAY_IMPORT {
        for target in *allowed {
            assert!(
                in_table.contains(*target),
                "{module} may import `{target}`, which is not a module"
            );
        }
    }
}

#[test]
fn a_forbidden_import_is_reported_with_file_line_and_rule() {
    let text = "//! The index.\nuse std::sync::Arc;\n// crate::store in a comment is fine\nuse crate::phone::PhoneKey;\nuse crate::{store::Store, phone};\n";
    let found = check_file(Path::new("directory/index.rs"), text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].file, "src/directory/index.rs");
    assert_eq!(found[0].line, 5);
    assert!(
        found[0].message.contains("`directory` uses `crate::store`")
            && found[0].message.contains("ARCHITECTURE.md"),
        "{}",
        found[0]
    );
}

#[test]
fn a_path_in_code_counts_as_an_import() {
    let text = "fn f() {\n    let d = crate::directory::Directory::new(crate::soap::say_name_payload);\n}\n";
    let found = check_file(Path::new("popup/hub.rs"), text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].message.contains("`popup` uses `crate::soap`"));
}

#[test]
fn a_leaf_may_not_import_another_module_not_even_a_leaf() {
    let found = check_file(Path::new("config.rs"), "use crate::phone::normalize;\n");
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].message.contains("nothing of the crate"));
}

#[test]
fn sql_outside_the_store_is_reported() {
    let found = check_file(
        Path::new("sources/file.rs"),
        "use rusqlite::Connection;\nlet x = my_rusqlite::y;\n",
    );
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].line, 1);
    assert!(found[0]
        .message
        .contains("the crate `rusqlite`, which only store may use"));
}

#[test]
fn test_modules_and_test_files_are_not_checked() {
    let text = "use crate::phone;\n#[cfg(test)]\nmod tests {\n    use crate::soap;\n}\n";
    assert!(check_file(Path::new("store/read.rs"), text).is_empty());
    assert!(check_file(Path::new("store/tests/journal.rs"), "use crate::soap;\n").is_empty());
    assert!(check_file(Path::new("lib.rs"), "use crate::soap;\n").is_empty());
}
