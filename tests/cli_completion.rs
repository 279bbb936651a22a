//! `completion bash|zsh|fish` and `man` through the real binary: the bash script parses
//! (`bash -n`) and registers itself when sourced (`complete -p etcd-lifeboat`), and completes
//! subcommands; zsh and fish scripts name every subcommand; the man page is roff that names
//! every subcommand, renders with `man -l` when man is installed, and `man --out-dir` writes
//! one page per subcommand.

use std::path::Path;
use std::process::Command;

use clap::CommandFactory;

// The binary's own clap definition (it lives with the binary, not in the library).
#[allow(dead_code)]
#[path = "../src/cli.rs"]
mod cli;
use cli::Cli;

fn lifeboat() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("etcd-lifeboat").unwrap();
    for (k, _) in std::env::vars() {
        if k.starts_with("ETCDCTL_") || k.starts_with("ETCD_LIFEBOAT_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// stdout of a successful run.
fn run_ok(args: &[&str]) -> String {
    let out = lifeboat().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Names of the top-level subcommands, from the clap definition itself (so a new subcommand
/// is checked without editing this test).
fn subcommands() -> Vec<String> {
    let names: Vec<String> = Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    for want in [
        "backup",
        "list",
        "restore",
        "prune",
        "daemon",
        "config",
        "completion",
        "man",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
    names
}

#[test]
fn bash_completion_parses_registers_and_completes() {
    let script = run_ok(&["completion", "bash"]);
    assert!(script.len() > 1000, "suspiciously short script: {script}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("etcd-lifeboat.bash");
    std::fs::write(&file, &script).unwrap();

    let syntax = Command::new("bash").arg("-n").arg(&file).output().unwrap();
    assert!(
        syntax.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&syntax.stderr)
    );

    // Source it in a fresh bash, check the registration, then ask the completion function
    // what follows `etcd-lifeboat ` and `etcd-lifeboat completion `.
    let probe = format!(
        r#"source {f}
complete -p etcd-lifeboat || exit 3
fn=$(complete -p etcd-lifeboat | sed -n 's/.*-F \([^ ]*\).*/\1/p')
[ -n "$fn" ] || exit 4
COMP_WORDS=(etcd-lifeboat ""); COMP_CWORD=1; COMP_LINE="etcd-lifeboat "; COMP_POINT=${{#COMP_LINE}}
"$fn" etcd-lifeboat "" etcd-lifeboat
echo "TOP: ${{COMPREPLY[*]}}"
COMPREPLY=()
COMP_WORDS=(etcd-lifeboat completion ""); COMP_CWORD=2; COMP_LINE="etcd-lifeboat completion "; COMP_POINT=${{#COMP_LINE}}
"$fn" etcd-lifeboat "" completion
echo "SHELLS: ${{COMPREPLY[*]}}"
COMPREPLY=()
COMP_WORDS=(etcd-lifeboat delete --); COMP_CWORD=2; COMP_LINE="etcd-lifeboat delete --"; COMP_POINT=${{#COMP_LINE}}
"$fn" etcd-lifeboat -- delete
echo "DELETE: ${{COMPREPLY[*]}}"
"#,
        f = file.display()
    );
    let out = Command::new("bash")
        .arg("--norc")
        .arg("--noprofile")
        .arg("-c")
        .arg(&probe)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let registered = stdout.lines().next().unwrap_or("");
    assert!(
        registered.starts_with("complete ") && registered.ends_with(" etcd-lifeboat"),
        "{stdout}"
    );
    let top = stdout
        .lines()
        .find_map(|l| l.strip_prefix("TOP: "))
        .unwrap_or_else(|| panic!("{stdout}"));
    let offered: Vec<&str> = top.split_whitespace().collect();
    for name in subcommands() {
        assert!(
            offered.contains(&name.as_str()),
            "{name} not in {offered:?}"
        );
    }
    // After a subcommand: its flags (clap-rs/clap#6421 broke this for hyphenated bin names).
    let flags = stdout
        .lines()
        .find_map(|l| l.strip_prefix("DELETE: "))
        .unwrap_or_else(|| panic!("{stdout}"));
    for f in ["--dry-run", "--force"] {
        assert!(flags.split_whitespace().any(|w| w == f), "{f} in {flags}");
    }
    let shells = stdout
        .lines()
        .find_map(|l| l.strip_prefix("SHELLS: "))
        .unwrap_or_else(|| panic!("{stdout}"));
    for sh in ["bash", "zsh", "fish"] {
        assert!(
            shells.split_whitespace().any(|w| w == sh),
            "{sh} in {shells}"
        );
    }
}

#[test]
fn zsh_and_fish_completions_name_every_subcommand() {
    let names = subcommands();
    let zsh = run_ok(&["completion", "zsh"]);
    assert!(zsh.starts_with("#compdef etcd-lifeboat"), "{zsh}");
    let fish = run_ok(&["completion", "fish"]);
    assert!(fish.contains("complete -c etcd-lifeboat"), "{fish}");
    for name in &names {
        // zsh: `'backup:Take one ...'` entries; fish: `-a "backup" -d '...'`.
        assert!(zsh.contains(&format!("'{name}:")), "zsh lacks {name}");
        assert!(
            fish.contains(&format!("-a \"{name}\"")),
            "fish lacks {name}"
        );
    }
    // Flags of a subcommand are completed too.
    assert!(zsh.contains("--dry-run"), "zsh lacks prune's --dry-run");
    assert!(fish.contains("-l dry-run"), "fish lacks prune's --dry-run");

    let bad = lifeboat().args(["completion", "tcsh"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
}

#[test]
fn man_page_is_roff_naming_every_subcommand() {
    let page = run_ok(&["man"]);
    assert!(page.starts_with(".ie") || page.starts_with(".TH"), "{page}");
    assert!(
        page.lines().any(|l| l.starts_with(".TH etcd-lifeboat 1")),
        "no .TH title line: {page}"
    );
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH OPTIONS", ".SH SUBCOMMANDS"] {
        assert!(page.contains(section), "{section} missing: {page}");
    }
    for name in subcommands() {
        assert!(
            page.contains(&format!(
                "etcd\\-lifeboat\\-{}(1)",
                name.replace('-', "\\-")
            )),
            "man page does not list {name}: {page}"
        );
    }

    // Rendered by man(1) when installed: the text names the commands.
    if Path::new("/usr/bin/man").exists() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("etcd-lifeboat.1");
        std::fs::write(&f, &page).unwrap();
        let out = Command::new("man")
            .arg("-l")
            .arg(&f)
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .env("MANWIDTH", "100")
            .output()
            .unwrap();
        assert!(out.status.success(), "man -l: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("etcd-lifeboat"), "{text}");
        assert!(text.contains("etcd-lifeboat-prune(1)"), "{text}");
    } else {
        eprintln!("man not installed: rendering not checked");
    }
}

#[test]
fn man_out_dir_writes_one_page_per_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("man1");
    run_ok(&["man", "--out-dir", out_dir.to_str().unwrap()]);
    let main = std::fs::read_to_string(out_dir.join("etcd-lifeboat.1")).unwrap();
    assert!(
        main.lines().any(|l| l.starts_with(".TH etcd-lifeboat 1")),
        "{main}"
    );
    for name in subcommands() {
        let f = out_dir.join(format!("etcd-lifeboat-{name}.1"));
        let page = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(
            page.lines()
                .any(|l| l.starts_with(&format!(".TH etcd-lifeboat-{name} 1"))),
            "{}: {page}",
            f.display()
        );
    }
    // Nested subcommands get their own pages too.
    assert!(out_dir.join("etcd-lifeboat-config-check.1").is_file());
}

/// Every `etcd-lifeboat ...` line in the shell blocks of docs/cli.md parses (`ARGS --help`
/// exits 0 with a usage), cut at a comment or shell operator.
#[test]
fn docs_cli_command_lines_parse() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/cli.md")).unwrap();
    let mut in_sh = false;
    let mut checked = 0;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("```") {
            in_sh = !in_sh && t == "```sh";
            continue;
        }
        let Some(rest) = t.strip_prefix("etcd-lifeboat ").filter(|_| in_sh) else {
            continue;
        };
        let args: Vec<&str> = rest
            .split_whitespace()
            .take_while(|w| !["#", "|", "&&", ";", ">"].contains(w))
            .collect();
        let out = lifeboat().args(&args).arg("--help").output().unwrap();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Usage:"),
            "docs/cli.md: {t}: {out:?}"
        );
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} command lines in docs/cli.md");
}
