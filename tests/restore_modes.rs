//! Restored files are 0600 and every directory the restore creates is 0700, whatever the
//! umask (the db holds every Kubernetes Secret; etcd itself uses 0700/0600). The binary runs
//! under `umask 000`, which would leave 0777/0666 for anything created with default modes.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::restore_util::*;

fn check_modes(p: &Path, out: &mut Vec<String>) {
    let md = std::fs::symlink_metadata(p).unwrap();
    let mode = md.permissions().mode() & 0o7777;
    let want = if md.is_dir() { 0o700 } else { 0o600 };
    if mode != want {
        out.push(format!("{} has {mode:o}, want {want:o}", p.display()));
    }
    if md.is_dir() {
        for e in std::fs::read_dir(p).unwrap() {
            check_modes(&e.unwrap().path(), out);
        }
    }
}

#[test]
fn restored_dirs_0700_files_0600_under_umask_000() {
    let dir = tempfile::tempdir().unwrap();
    let src = Cluster::boot(
        V::V3_5_30,
        &[MemberSpec::new("src", dir.path().join("src.etcd"))],
        "t",
    );
    src.etcdctl_ok(&["put", "/secret", "s3cr3t"]);
    let snap = dir.path().join("snap.db");
    snapshot_save(&src, &snap);
    drop(src);

    let bin = assert_cmd::cargo::cargo_bin("etcd-lifeboat");
    let out_dir = dir.path().join("new/out");
    let data_dir = dir.path().join("single/a/data");
    let wal_dir = dir.path().join("single/wal/x");
    // An existing empty data dir the operator made, mode 0755: it gets 0700 too.
    let existing = dir.path().join("existing");
    std::fs::create_dir_all(&existing).unwrap();
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o755)).unwrap();
    for args in [
        format!(
            "restore {} --out-dir {} --initial-cluster a=http://127.0.0.1:1,b=http://127.0.0.1:2",
            snap.display(),
            out_dir.display()
        ),
        format!(
            "restore {} --data-dir {} --wal-dir {} --bump-revision 10 --mark-compacted",
            snap.display(),
            data_dir.display(),
            wal_dir.display()
        ),
        format!(
            "restore {} --data-dir {}",
            snap.display(),
            existing.display()
        ),
    ] {
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!("umask 000 && exec {} {args}", bin.display()))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let mut bad = Vec::new();
    check_modes(&dir.path().join("new"), &mut bad);
    check_modes(&dir.path().join("single"), &mut bad);
    check_modes(&existing, &mut bad);
    assert!(existing.join("member/snap/db").is_file());
    assert!(bad.is_empty(), "{bad:#?}");
    // The trees are complete (so the walk above saw the files).
    assert!(out_dir.join("a/member/snap/db").is_file());
    assert!(out_dir.join("b/member/wal").is_dir());
    assert!(wal_dir
        .join("0000000000000000-0000000000000000.wal")
        .is_file());
}
