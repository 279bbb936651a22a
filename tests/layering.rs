//! The layering rules of `src/lib.rs` ("Layout"), checked by reading the sources: a cheap guard
//! that fails when a module starts to import what its layer must not know, or when two files
//! start to import each other.
//!
//! A file's imports are the `crate::a::b` paths (resolved to the longest existing file), the
//! `super::x` paths of a submodule (a sibling file `x`), and, for a `mod.rs`, the submodules
//! it names as `x::`. Code after `#[cfg(test)]` and `//` comments are ignored. A module and
//! its own submodules (`store/mod.rs` and `store/local.rs`) are one unit and may refer to each
//! other's items.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Imports that cross one layer's boundary: (directory or file prefix, forbidden module).
const FORBIDDEN: &[(&str, &str)] = &[
    // snapshot/ knows no other module.
    ("snapshot/", "*"),
    // store/ knows neither etcd/ nor restore/ (nor what builds on them).
    ("store/", "etcd"),
    ("store/", "restore"),
    ("store/", "daemon"),
    ("store/", "backup"),
    // restore/ knows neither etcd/ nor daemon/.
    ("restore/", "etcd"),
    ("restore/", "daemon"),
    ("restore/", "backup"),
    // pitr/ (delta format, chains, apply) knows neither daemon/ nor backup/ nor restore/.
    ("pitr/", "daemon"),
    ("pitr/", "backup"),
    ("pitr/", "restore"),
];

fn sources() -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                let text = std::fs::read_to_string(&p).unwrap();
                let code = text.split("#[cfg(test)]").next().unwrap_or_default();
                let code: Vec<&str> = code
                    .lines()
                    .map(|l| l.split("//").next().unwrap_or_default())
                    .collect();
                out.insert(rel, code.join("\n"));
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    walk(&root, &root, &mut out);
    out
}

/// Module path segments after each occurrence of `prefix` (e.g. `crate::`) in `code`.
fn paths_after<'a>(code: &'a str, prefix: &str) -> Vec<Vec<&'a str>> {
    let mut out = Vec::new();
    for (i, _) in code.match_indices(prefix) {
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let mut segs = Vec::new();
        let mut rest = &code[i + prefix.len()..];
        loop {
            let n = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if n == 0 {
                break;
            }
            segs.push(&rest[..n]);
            match rest[n..].strip_prefix("::") {
                Some(r) => rest = r,
                None => break,
            }
        }
        out.push(segs);
    }
    out
}

/// The file of the longest prefix of `segs` that is a module of `files`.
fn module_file(files: &BTreeMap<String, String>, segs: &[&str]) -> Option<String> {
    (1..=segs.len()).rev().find_map(|n| {
        let p = segs[..n].join("/");
        [format!("{p}.rs"), format!("{p}/mod.rs")]
            .into_iter()
            .find(|f| files.contains_key(f))
    })
}

/// The module path of a file: `store/mod.rs` -> [store], `store/s3.rs` -> [store, s3].
fn module_of(file: &str) -> Vec<&str> {
    let f = file.strip_suffix("/mod.rs").unwrap_or(file);
    let f = f.strip_suffix(".rs").unwrap_or(f);
    if f == "lib" || f == "main" {
        Vec::new()
    } else {
        f.split('/').collect()
    }
}

/// Every file's imports (other files of src/).
fn imports(files: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for (f, code) in files {
        let here = module_of(f);
        let mut deps = BTreeSet::new();
        for p in paths_after(code, "crate::") {
            deps.extend(module_file(files, &p));
        }
        if !here.is_empty() && !f.ends_with("mod.rs") {
            let parent = &here[..here.len() - 1];
            for p in paths_after(code, "super::") {
                let full: Vec<&str> = parent.iter().copied().chain(p).collect();
                deps.extend(module_file(files, &full));
            }
        }
        if f.ends_with("mod.rs") || f == "lib.rs" {
            for line in code.lines() {
                let l = line.trim_start().trim_start_matches("pub ").trim_start();
                if let Some(child) = l.strip_prefix("mod ").and_then(|r| r.strip_suffix(';')) {
                    let used = !paths_after(code, &format!("{child}::")).is_empty()
                        || code.contains(&format!("{child}::{{"));
                    let full: Vec<&str> = here.iter().copied().chain([child]).collect();
                    if used {
                        deps.extend(module_file(files, &full));
                    }
                }
            }
        }
        deps.remove(f);
        out.insert(f.clone(), deps);
    }
    out
}

/// Whether `a` is `b`'s parent module file or the other way round.
fn parent_child(a: &str, b: &str) -> bool {
    let (ma, mb) = (module_of(a), module_of(b));
    let is_parent = |p: &[&str], c: &[&str]| c.len() == p.len() + 1 && c.starts_with(p);
    is_parent(&ma, &mb) || is_parent(&mb, &ma)
}

#[test]
fn layers_import_only_what_they_may() {
    let files = sources();
    assert!(files.contains_key("snapshot/mod.rs"), "src/ not found");
    let mut bad = Vec::new();
    for (f, code) in &files {
        for (layer, forbidden) in FORBIDDEN {
            if !f.starts_with(layer) {
                continue;
            }
            for p in paths_after(code, "crate::") {
                let top = p.first().copied().unwrap_or_default();
                if *forbidden == "*" || top == *forbidden {
                    bad.push(format!("{f} uses crate::{}", p.join("::")));
                }
            }
        }
    }
    assert!(bad.is_empty(), "layer violations:\n{}", bad.join("\n"));
}

#[test]
fn no_two_files_import_each_other() {
    let files = sources();
    let deps = imports(&files);
    let mut cycles = Vec::new();
    for (a, da) in &deps {
        for b in da {
            if a < b && deps[b].contains(a) && !parent_child(a, b) {
                cycles.push(format!("{a} <-> {b}"));
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "files importing each other:\n{}",
        cycles.join("\n")
    );
    // The guard sees real imports (not a vacuous pass).
    assert!(deps["restore/plan.rs"].contains("restore/member.rs"));
    assert!(deps["backup.rs"].contains("store/mod.rs"));
    assert!(!deps["restore/member.rs"].contains("restore/plan.rs"));
}

#[test]
fn clap_anyhow_and_serde_yaml_stay_in_their_place() {
    let mut bad = Vec::new();
    for (f, code) in sources() {
        let binary = f == "main.rs" || f == "cli.rs" || f.starts_with("cli/");
        if !binary && code.contains("clap") {
            bad.push(format!("{f} uses clap"));
        }
        if !binary && code.contains("anyhow") {
            bad.push(format!("{f} uses anyhow"));
        }
        // serde_yaml (asked for by the users) is used in one module: config::parse_yaml.
        if f != "config.rs" && code.contains("serde_yaml") {
            bad.push(format!("{f} uses serde_yaml (call config::parse_yaml)"));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
