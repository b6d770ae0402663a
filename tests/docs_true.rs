//! The documents say what the code does (issue #16, item 8): no relative
//! link leads out of the repository or to a file that is not there, the
//! README's config table carries no issue numbers, ARCHITECTURE's start-up
//! order is the code's, and the ping-drop rule is the same in the README,
//! the contract and the WebSocket code.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(root().join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// README.md, ARCHITECTURE.md and docs/*.md.
fn documents() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md"), root().join("ARCHITECTURE.md")];
    for entry in std::fs::read_dir(root().join("docs")).expect("docs/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    files
}

/// The targets of `[text](target)` links in `text`.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        if let Some(end) = rest.find(')') {
            targets.push(rest[..end].trim().to_owned());
        }
    }
    targets
}

#[test]
fn every_relative_link_names_a_file_inside_the_repository() {
    let root = root().canonicalize().expect("root");
    let mut broken = Vec::new();
    for document in documents() {
        let text = std::fs::read_to_string(&document).expect("document");
        for target in link_targets(&text) {
            if target.starts_with("http://")
                || target.starts_with("https://")
                || target.starts_with("mailto:")
                || target.starts_with('#')
            {
                continue;
            }
            let file = target.split('#').next().unwrap_or_default();
            let folder = document.parent().unwrap_or(Path::new("."));
            match folder.join(file).canonicalize() {
                Ok(path) if path.starts_with(&root) => {}
                Ok(path) => broken.push(format!(
                    "{}: {target} leaves the repository ({})",
                    document.display(),
                    path.display()
                )),
                Err(e) => broken.push(format!("{}: {target}: {e}", document.display())),
            }
        }
    }
    assert!(broken.is_empty(), "{broken:#?}");
}

#[test]
fn the_readme_config_table_names_no_issue() {
    let readme = read("README.md");
    let rows: Vec<&str> = readme
        .lines()
        .filter(|l| l.starts_with("| `") && (l.contains("(issue") || l.contains("issue #")))
        .collect();
    assert!(rows.is_empty(), "{rows:#?}");
}

#[test]
fn architecture_gives_the_start_up_order_the_code_follows() {
    let code = read("src/gateway.rs");
    let bind = code
        .find("bind(config.server.listen)")
        .expect("Gateway::start binds");
    let store = code
        .find("open_main_store(&config")
        .expect("Gateway::start opens the store");
    assert!(
        bind < store,
        "the code binds after opening the store: a port clash creates the store's folder"
    );
    let architecture = read("ARCHITECTURE.md").replace('\n', " ");
    let order = architecture
        .split("Start-up order:")
        .nth(1)
        .expect("ARCHITECTURE.md gives the start-up order");
    let (bind_at, store_at) = (order.find("bind"), order.find("open the store"));
    assert!(
        matches!((bind_at, store_at), (Some(b), Some(s)) if b < s),
        "ARCHITECTURE.md: bind, then open the store: {}",
        &order[..order.len().min(300)]
    );
}

#[test]
fn the_ping_drop_rule_reads_the_same_in_the_docs_and_the_code() {
    let code = read("src/popup/websocket.rs");
    assert!(
        code.contains("last_heard.elapsed() > 2 * ping_interval"),
        "the rule changed in the code: update README, docs/contract.md, docs/1c-popups.md and this test"
    );
    let readme = read("README.md");
    let row = readme
        .lines()
        .find(|l| l.starts_with("| `popup.ping_interval` |"))
        .expect("README row");
    let contract = read("docs/contract.md");
    let close = contract
        .lines()
        .find(|l| l.contains("`no answer to ping`"))
        .expect("contract row");
    for (name, text) in [("README", row), ("contract", close)] {
        assert!(
            text.contains("more than two") && text.contains("two to three intervals"),
            "{name}: {text}"
        );
    }
}
