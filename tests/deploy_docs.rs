//! docs/ cannot drift from the code and the rules:
//! - docs/config.md lists exactly the config keys that `Config` has (serialized defaults,
//!   flattened to dotted paths; the optional `etcd.tls` and `etcd.auth` sections are expanded
//!   from their own defaults), with each key's default as the code has it and the environment
//!   variables of `ENV_OVERRIDES` that override it.
//! - docs/metrics.md documents every metric the alert rules use and every metric named in the
//!   design contract, and every alert.
//! - every alert's runbook_url anchor exists as a heading in docs/runbook.md, and every
//!   relative link between the docs points at a file and heading that exist.
//!
//! `DEPLOY_DOCS_PRINT=1 cargo test --test integration deploy_docs:: -- --nocapture` prints the config table
//! rows the code implies (key, default, env), to paste into docs/config.md.

use std::collections::{BTreeMap, BTreeSet};

use crate::deploy_support::*;
use etcd_lifeboat::config::{AuthConfig, Config, TlsConfig, ENV_OVERRIDES};
use serde_yaml::Value;

/// Dotted key -> default value, for every leaf of the config.
fn code_keys() -> BTreeMap<String, Value> {
    let mut cfg = Config::default();
    // Option<section> serializes as null: expand the sections from their own defaults.
    cfg.etcd.tls = Some(TlsConfig::default());
    cfg.etcd.auth = Some(AuthConfig::default());
    let v = serde_yaml::to_value(&cfg).unwrap();
    let mut out = BTreeMap::new();
    fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
        match v {
            Value::Mapping(m) => {
                for (k, child) in m {
                    let k = k.as_str().unwrap();
                    let key = if prefix.is_empty() {
                        k.to_string()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flatten(&key, child, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.clone());
            }
        }
    }
    flatten("", &v, &mut out);
    // Sanity: the expansion worked and Option scalars stayed leaves.
    for k in [
        "etcd.tls.ca_file",
        "etcd.auth.password_file",
        "storage.s3.region",
        "backup.temp_dir",
    ] {
        assert!(out.contains_key(k), "flattening lost {k}: {:?}", out.keys());
    }
    out
}

/// How docs/config.md writes a default: `none` for null, else the value in backticks
/// (strings bare, `""` when empty; sequences as JSON).
fn render_default(v: &Value) -> String {
    match v {
        Value::Null => "none".into(),
        Value::String(s) if s.is_empty() => "`\"\"`".into(),
        Value::String(s) => format!("`{s}`"),
        Value::Bool(b) => format!("`{b}`"),
        Value::Number(n) => format!("`{n}`"),
        Value::Sequence(_) => format!("`{}`", serde_json::to_string(v).unwrap()),
        other => panic!("unexpected default {other:?}"),
    }
}

fn env_for(key: &str) -> Vec<&'static str> {
    ENV_OVERRIDES
        .iter()
        .filter(|(_, k)| *k == key)
        .map(|(v, _)| *v)
        .collect()
}

/// Rows of the key table in docs/config.md: lines `| \`key\` | type | default | env | ... |`.
fn doc_rows() -> BTreeMap<String, Vec<String>> {
    let text = read("docs/config.md");
    let mut rows = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("| `") else {
            continue;
        };
        let cells: Vec<String> = line
            .trim()
            .trim_matches('|')
            .split(" | ")
            .map(|c| c.trim().to_string())
            .collect();
        let key = rest.split('`').next().unwrap().to_string();
        // Config keys are dotted lower-case paths; other tables (environment variables) are not.
        // Top-level scalar keys (`name`, `clusters`) are the exception to "dotted".
        if !((key.contains('.') || matches!(key.as_str(), "name" | "clusters"))
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_'))
        {
            continue;
        }
        assert!(
            cells.len() >= 5,
            "docs/config.md row for {key} needs 5 cells: {line}"
        );
        assert!(
            rows.insert(key.clone(), cells).is_none(),
            "docs/config.md lists {key} twice"
        );
    }
    rows
}

#[test]
fn config_reference_matches_the_code() {
    let code = code_keys();
    if std::env::var("DEPLOY_DOCS_PRINT").is_ok() {
        for (k, v) in &code {
            let env = env_for(k);
            let env = if env.is_empty() {
                "—".to_string()
            } else {
                env.iter()
                    .map(|e| format!("`{e}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            println!("| `{k}` | ? | {} | {env} | ? |", render_default(v));
        }
    }
    let rows = doc_rows();
    let code_set: BTreeSet<&String> = code.keys().collect();
    let doc_set: BTreeSet<&String> = rows.keys().collect();
    let missing: Vec<_> = code_set.difference(&doc_set).collect();
    let extra: Vec<_> = doc_set.difference(&code_set).collect();
    assert!(
        missing.is_empty(),
        "docs/config.md lacks keys the code has: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "docs/config.md lists keys the code does not have: {extra:?}"
    );
    for (k, v) in &code {
        let cells = &rows[k];
        assert_eq!(
            cells[2],
            render_default(v),
            "docs/config.md: default of {k}"
        );
        let documented: BTreeSet<String> = cells[3]
            .split(',')
            .map(|s| s.trim().trim_matches('`').to_string())
            .filter(|s| !s.is_empty() && s != "—")
            .collect();
        let actual: BTreeSet<String> = env_for(k).into_iter().map(String::from).collect();
        assert_eq!(
            documented, actual,
            "docs/config.md: environment variables of {k}"
        );
        assert!(
            !cells[4].is_empty() && cells[4] != "?",
            "docs/config.md: {k} has no description"
        );
    }
}

/// The key table is not vacuous: the parser finds the rows it should.
#[test]
fn config_reference_parser_sees_rows() {
    let rows = doc_rows();
    assert!(
        rows.len() >= 30,
        "only {} rows parsed from docs/config.md",
        rows.len()
    );
    assert!(rows.contains_key("storage.s3.force_path_style"));
}

/// Metric names in a PromQL expression (identifiers that start with etcd_lifeboat_).
fn metrics_in(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("etcd_lifeboat_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

fn rules() -> Vec<Value> {
    yaml("deploy/prometheus/rules.yaml")["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().clone())
        .collect()
}

#[test]
fn metrics_reference_documents_metrics_and_alerts() {
    let doc = read("docs/metrics.md");
    let headings = heading_anchors(&doc);
    let mut used = BTreeSet::new();
    for r in rules() {
        used.extend(metrics_in(r["expr"].as_str().unwrap()));
        let alert = r["alert"].as_str().unwrap();
        assert!(
            doc.contains(&format!("`{alert}`")) || headings.contains(&alert.to_lowercase()),
            "docs/metrics.md does not document alert {alert}"
        );
    }
    assert!(used.len() >= 6, "{used:?}");
    used.extend(
        etcd_lifeboat::metrics::CONTRACT_METRICS
            .iter()
            .map(|s| s.to_string()),
    );
    for m in used {
        assert!(
            doc.contains(&format!("`{m}`")),
            "docs/metrics.md does not document {m}"
        );
    }
}

/// GitHub's heading anchors: lower case, spaces to '-', punctuation other than '-' and '_'
/// dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn heading_anchors(markdown: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut in_code = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        }
        if !in_code && line.starts_with('#') {
            out.insert(slug(line.trim_start_matches('#')));
        }
    }
    out
}

#[test]
fn slug_is_githubs() {
    assert_eq!(
        slug(" EtcdLifeboatBackupTooOld"),
        "etcdlifeboatbackuptooold"
    );
    assert_eq!(
        slug(" Restore: 3 control-plane nodes (kubeadm)"),
        "restore-3-control-plane-nodes-kubeadm"
    );
    assert_eq!(slug(" `etcd.tls.ca_file`"), "etcdtlsca_file");
}

#[test]
fn every_runbook_url_has_its_section() {
    let anchors = heading_anchors(&read("docs/runbook.md"));
    let prefix = "https://github.com/etcd-lifeboat/etcd-lifeboat/blob/main/docs/runbook.md#";
    for r in rules() {
        let url = r["annotations"]["runbook_url"].as_str().unwrap();
        let anchor = url
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("{url} is not under {prefix}"));
        assert!(
            anchors.contains(anchor),
            "docs/runbook.md has no heading for #{anchor}; headings: {anchors:?}"
        );
    }
}

/// Links between docs/*.md and to repository files (`[x](runbook.md#y)`, `[x](../deploy/...)`)
/// resolve, anchors included; every `#anchor` mentioned in manifest comments (e.g.
/// docs/runbook.md#certificates) exists too.
#[test]
fn relative_links_resolve() {
    let docs = repo().join("docs");
    let mut checked = 0;
    for e in std::fs::read_dir(&docs).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".md") {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("](") {
            let tail = &rest[i + 2..];
            let end = tail.find(')').unwrap();
            let target = &tail[..end];
            rest = &tail[end..];
            if target.starts_with("http") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
            let path = if file.is_empty() {
                e.path()
            } else {
                docs.join(file)
            };
            assert!(path.exists(), "docs/{name}: link to missing {target}");
            if !anchor.is_empty() {
                let anchors = heading_anchors(&std::fs::read_to_string(&path).unwrap());
                assert!(
                    anchors.contains(anchor),
                    "docs/{name}: link {target}: no such heading"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 5, "only {checked} links checked");
    // Anchors named in comments of deploy/ and config/ files.
    let runbook = heading_anchors(&read("docs/runbook.md"));
    let mut files = manifest_files();
    files.extend(
        config_texts()
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| n.starts_with("config/")),
    );
    files.push("deploy/Dockerfile".into());
    for f in files {
        let text = read(&f);
        for part in text.split("docs/runbook.md#").skip(1) {
            let anchor: String = part
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            assert!(
                runbook.contains(&anchor),
                "{f}: docs/runbook.md#{anchor} does not exist"
            );
        }
    }
}

/// `etcd-lifeboat ...` command lines in the shell blocks of docs/*.md, backslash continuations
/// joined, cut at a comment or a shell operator.
fn documented_commands() -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for name in ["runbook.md", "metrics.md", "config.md"] {
        let text = read(&format!("docs/{name}"));
        let mut in_sh = false;
        let mut joined = String::new();
        for line in text.lines() {
            let t = line.trim();
            if t.starts_with("```") {
                in_sh = !in_sh && (t == "```sh" || t == "```bash");
                joined.clear();
                continue;
            }
            if !in_sh {
                continue;
            }
            if let Some(head) = t.strip_suffix('\\') {
                joined.push_str(head);
                joined.push(' ');
                continue;
            }
            joined.push_str(t);
            let cmd = std::mem::take(&mut joined);
            let Some(rest) = cmd.trim().strip_prefix("etcd-lifeboat ") else {
                continue;
            };
            let args: Vec<String> = rest
                .split_whitespace()
                .take_while(|w| !["#", "|", "&&", ";", ">"].contains(w))
                .map(String::from)
                .collect();
            out.push((format!("docs/{name}: etcd-lifeboat {rest}"), args));
        }
    }
    out
}

/// Every documented command line parses with the real binary: `<args> --help` exits 0 with
/// the subcommand's usage (clap rejects an unknown or misspelled flag before it gets to
/// --help), so the runbook cannot drift from the CLI.
#[test]
fn documented_command_lines_parse() {
    let cmds = documented_commands();
    assert!(
        cmds.len() >= 6,
        "only {} commands found: {cmds:?}",
        cmds.len()
    );
    for (what, args) in cmds {
        let out = assert_cmd::Command::cargo_bin("etcd-lifeboat")
            .unwrap()
            .args(&args)
            .arg("--help")
            .env_remove("ETCD_LIFEBOAT_CONFIG")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("Usage:"),
            "{what}\n  does not parse: exit {:?}\n{stdout}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
