//! `host`'s layering, read from its sources: every module names only the layers below it, so
//! node, sched, control and cli form a line, not a circle (ARCHITECTURE.md draws it).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

/// `host`'s top-level modules, lowest layer first. A module may name its own layer and the
/// ones before it. `cli` is the binary's, and names the library as `shoal_host`.
const LAYERS: &[&[&str]] = &[
    &["store", "compute"],
    &["runtime"],
    &["sched"],
    &["node"],
    &["control"],
    &["cli"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir)
        .expect("readable source dir")
        .flatten()
    {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's module path under `src/`: `node/fetch.rs` is `[node, fetch]`, `node/mod.rs` is
/// `[node]`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("file under src");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| {
            c.as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_owned()
        })
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The identifiers a path segment list starts with after `prefix::`: one, or each item of a
/// `{a::…, b, …}` group.
fn heads(rest: &str) -> Vec<String> {
    let ident = |s: &str| {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect::<String>()
    };
    let Some(group) = rest.strip_prefix('{') else {
        return vec![ident(rest)];
    };
    let (mut depth, mut items, mut start) = (0usize, Vec::new(), 0);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[start..i]);
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.into_iter().map(|s| ident(s.trim())).collect()
}

/// Every top-level module a file names through `crate::`, `shoal_host::` or `super::`.
fn named_modules(text: &str, path: &[String]) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut named = BTreeSet::new();
    for prefix in ["crate::", "shoal_host::"] {
        for (at, _) in code.match_indices(prefix) {
            let before = code[..at].chars().last();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            named.extend(heads(&code[at + prefix.len()..]));
        }
    }
    for (at, _) in code.match_indices("super::") {
        if code[..at].ends_with("super::") {
            continue; // counted from the first `super` of a chain
        }
        let mut rest = &code[at..];
        let mut ups = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            ups += 1;
            rest = r;
        }
        // Out of the file's own top module only when the chain climbs to the crate root.
        if ups >= path.len() {
            named.extend(heads(rest));
        }
    }
    named.retain(|m| layer_of(m).is_some());
    named
}

#[test]
fn host_modules_name_only_the_layers_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    let mut checked = 0;
    for file in &files {
        let path = module_path(&src, file);
        let Some(own) = path.first().and_then(|m| layer_of(m)) else {
            continue; // lib.rs and main.rs only declare the modules
        };
        checked += 1;
        let text = std::fs::read_to_string(file).expect("readable source");
        for module in named_modules(&text, &path) {
            if layer_of(&module).is_some_and(|l| l > own) {
                wrong.push(format!("{} names `{module}`", file.display()));
            }
        }
    }
    assert!(checked > 20, "only {checked} files checked");
    assert!(
        wrong.is_empty(),
        "upward dependencies:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_path_reader_sees_groups_inline_paths_and_super_chains() {
    let text = "use crate::{runtime::X, node::{a, b}};\nfn f() { crate::sched::go(); }\n\
                // crate::cli in a comment is not code\nuse super::super::control::Y;";
    let named = named_modules(text, &["store".into(), "x".into()]);
    let expected: BTreeSet<String> = ["runtime", "node", "sched", "control"]
        .map(String::from)
        .into();
    assert_eq!(named, expected);
}
