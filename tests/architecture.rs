//! The shape the design asks of the workspace, checked on every test run so it cannot drift:
//!
//! - the driver does not depend on the filter compiler (it never parses an expression);
//! - a client application (`netmux-client`) depends on neither the driver, nor the compiler,
//!   nor Cranelift;
//! - `cargo build --no-default-features` builds a `netmux` binary without Cranelift (the
//!   `jit` feature is the one switch, forwarded to every crate that runs programs);
//! - no crate has a cycle between its modules: a module's sibling imports run one way. (A
//!   parent re-exporting its children's items, and children naming their parents' items,
//!   are not cycles.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The normal (not dev, not build) dependencies of `package`, as `cargo tree` prints them,
/// with the features the workspace builds it with (plus `extra` arguments).
fn dependencies_with(package: &str, extra: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(workspace())
        .args([
            "tree",
            "--offline",
            "--locked",
            "-e",
            "normal",
            "--prefix",
            "none",
            "-p",
            package,
        ])
        .args(extra)
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn dependencies(package: &str) -> String {
    dependencies_with(package, &[])
}

fn crate_names(tree: &str) -> BTreeSet<String> {
    tree.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_driver_does_not_depend_on_the_compiler() {
    let deps = crate_names(&dependencies("netmux-driver"));
    assert!(!deps.contains("netmux-compiler"), "{deps:?}");
    assert!(deps.contains("netmux-classify"), "{deps:?}");
}

#[test]
fn a_client_application_links_neither_the_driver_nor_the_compiler_nor_cranelift() {
    let deps = crate_names(&dependencies("netmux-client"));
    for banned in [
        "netmux-driver",
        "netmux-compiler",
        "netmux-netd",
        "netmux-vm",
    ] {
        assert!(
            !deps.contains(banned),
            "netmux-client pulls in {banned}: {deps:?}"
        );
    }
    assert!(
        !deps.iter().any(|d| d.starts_with("cranelift")),
        "netmux-client pulls in Cranelift: {deps:?}"
    );
}

#[test]
fn the_binary_without_default_features_has_no_cranelift() {
    let deps = crate_names(&dependencies_with("netmux", &["--no-default-features"]));
    assert!(
        !deps.iter().any(|d| d.starts_with("cranelift")),
        "netmux --no-default-features pulls in Cranelift: {deps:?}"
    );
    let with = crate_names(&dependencies("netmux"));
    assert!(with.iter().any(|d| d.starts_with("cranelift")), "{with:?}");
}

/// Every `.rs` file under `src`, as its module path (`a::b`; the crate root is empty).
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src");
            let mut parts: Vec<String> = rel
                .with_extension("")
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            if parts.first().is_some_and(|p| p == "bin") {
                continue; // binaries are crates of their own
            }
            out.insert(parts.join("::"), path);
        }
    }
    out
}

/// The module of `path` (segments after `crate::` or resolved `super::`), cut to the longest
/// prefix that is a module file.
fn resolve(from: &str, path: &[&str], modules: &BTreeMap<String, PathBuf>) -> Option<String> {
    let mut base: Vec<&str> = if from.is_empty() {
        Vec::new()
    } else {
        from.split("::").collect()
    };
    let mut rest = path;
    match rest.first() {
        Some(&"crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some(&"super") => {
            while rest.first() == Some(&"super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    let mut best = None;
    let mut candidate = base.clone();
    if modules.contains_key(&candidate.join("::")) {
        best = Some(candidate.join("::"));
    }
    for seg in rest {
        candidate.push(seg);
        let name = candidate.join("::");
        if modules.contains_key(&name) {
            best = Some(name);
        } else {
            break;
        }
    }
    best
}

fn is_ancestor(a: &str, b: &str) -> bool {
    a.is_empty() || b.starts_with(&format!("{a}::"))
}

/// The `crate::`/`super::` paths a file names (in `use` lines and in code).
fn named_paths(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        for start in ["crate::", "super::"] {
            let mut from = 0;
            while let Some(i) = line[from..].find(start) {
                let at = from + i;
                from = at + start.len();
                // Only a whole path segment (not `netmux_crate::`).
                if line[..at]
                    .chars()
                    .last()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_')
                {
                    continue;
                }
                let path: Vec<String> = line[at..]
                    .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .next()
                    .unwrap_or("")
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                out.push(path);
            }
        }
    }
    out
}

/// Strongly connected components with more than one module: the cycles.
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Kosaraju, small graphs.
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(n.to_owned()) {
            return;
        }
        for m in edges.get(n).into_iter().flatten() {
            visit(m, edges, seen, order);
        }
        order.push(n.to_owned());
    }
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    for n in edges.keys() {
        visit(n, edges, &mut seen, &mut order);
    }
    let mut reverse: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (a, bs) in edges {
        for b in bs {
            reverse.entry(b.clone()).or_default().insert(a.clone());
        }
    }
    let mut assigned = BTreeSet::new();
    let mut out = Vec::new();
    for n in order.iter().rev() {
        let mut component = Vec::new();
        visit(n, &reverse, &mut assigned, &mut component);
        if component.len() > 1 {
            component.sort();
            out.push(component);
        }
    }
    out
}

#[test]
fn no_crate_has_a_module_cycle() {
    let root = workspace();
    let mut crates: Vec<PathBuf> = vec![root.join("src")];
    for entry in std::fs::read_dir(&root).expect("read workspace") {
        let dir = entry.expect("entry").path();
        if dir.join("Cargo.toml").is_file() && dir.join("src").is_dir() && dir != root {
            crates.push(dir.join("src"));
        }
    }
    let mut found = Vec::new();
    for src in crates {
        let modules = modules(&src);
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (module, file) in &modules {
            let text = std::fs::read_to_string(file).expect("read module");
            for path in named_paths(&text) {
                let path: Vec<&str> = path.iter().map(String::as_str).collect();
                let Some(target) = resolve(module, &path, &modules) else {
                    continue;
                };
                if target == *module || is_ancestor(&target, module) || is_ancestor(module, &target)
                {
                    continue;
                }
                edges.entry(module.clone()).or_default().insert(target);
            }
        }
        for c in cycles(&edges) {
            found.push(format!("{}: {}", src.display(), c.join(" <-> ")));
        }
    }
    assert!(found.is_empty(), "module cycles:\n{}", found.join("\n"));
}
