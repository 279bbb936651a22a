//! Backups are secrets: after `backup`, `verify`, `prune` and `restore`, run under the usual
//! umask 022, no file or directory this tool made in the store, the temp dir or the restored
//! data dir grants any access to group or others, and an unprivileged user (uid 65534, via
//! `setpriv`) can read none of the files, although every directory above them is open (0755).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::common::*;

/// Runs the binary under umask 022 with `args`; asserts success.
fn run_umask_022(args: &[&str]) -> String {
    let bin = assert_cmd::cargo::cargo_bin("etcd-lifeboat");
    let out = Command::new("sh")
        .arg("-c")
        .arg("umask 022 && exec \"$@\"")
        .arg("sh")
        .arg(&bin)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn as_nobody_can_read(p: &Path) -> bool {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(p)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[test]
fn nothing_this_tool_writes_is_readable_by_other_users() {
    let etcd = Etcd::start(EtcdOpts {
        version: Version::V3_5,
        ..Default::default()
    });
    for i in 0..20 {
        etcd.etcdctl_ok(&[
            "put",
            &format!("/registry/secrets/default/s{i}"),
            "c2VjcmV0LXZhbHVl",
        ]);
    }
    // An open base (0755 all the way down to it), so that only the tool's own modes protect
    // what it writes.
    let base = tempfile::tempdir().unwrap();
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut up = base.path().parent();
    while let Some(p) = up {
        let mode = std::fs::metadata(p).unwrap().permissions().mode();
        assert!(
            mode & 0o001 != 0,
            "{} is not open to others: the test would prove nothing",
            p.display()
        );
        up = p.parent();
    }
    let store = base.path().join("store");
    let temp = base.path().join("tmp");
    std::fs::create_dir(&temp).unwrap();
    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o755)).unwrap();
    let restored = base.path().join("restored");
    let cfg = base.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "{}backup:\n  temp_dir: {}\nretention: {{keep_last: 1, keep_hourly: 0, keep_daily: 0, keep_weekly: 0, keep_monthly: 0}}\n",
            etcd.config_yaml(&store),
            temp.display()
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    run_umask_022(&["--config", c, "backup"]);
    run_umask_022(&["--config", c, "backup"]);
    run_umask_022(&["--config", c, "verify", "--all"]);
    run_umask_022(&["--config", c, "prune"]);
    run_umask_022(&[
        "--config",
        c,
        "restore",
        "--from-store",
        "latest",
        "--data-dir",
        restored.to_str().unwrap(),
    ]);

    let mut files = 0;
    for root in [&store, &temp, &restored] {
        for p in paths_under(root) {
            if p == temp {
                continue; // the operator's dir, made by this test
            }
            let meta = std::fs::metadata(&p).unwrap();
            let mode = meta.permissions().mode() & 0o777;
            assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", p.display());
            if meta.is_file() {
                files += 1;
                assert!(!as_nobody_can_read(&p), "uid 65534 read {}", p.display());
            }
        }
    }
    // Store: one backup left after prune (data + manifest); restored: db, WAL, snap.
    assert!(files >= 5, "only {files} files checked");
    // And the check itself can fail: a file opened up by hand is readable by uid 65534.
    let probe = store.join("probe");
    std::fs::write(&probe, b"x").unwrap();
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(as_nobody_can_read(&probe));
}
