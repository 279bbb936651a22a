//! `restore --bump-revision N --mark-compacted` against etcdutl 3.5.30 (the reference:
//! `etcdutl/snapshot/v3_snapshot.go` `modifyLatestRevision`): the restored db's status (hash,
//! revision, totalKey) equals etcdutl's for the same snapshot and flags, as both etcdutl 3.5.30
//! and our own `status` read it; a member booted from it (3.4.23, 3.5.1, 3.5.30) answers a read
//! at an old revision with "required revision has been compacted" and gives a new write a
//! revision above old + N. The flags are checked as etcdutl checks them.

use std::path::Path;

use crate::restore_util::*;
use etcd_lifeboat::restore::{run, RestoreOptions};
use etcd_lifeboat::snapshot::verify_file;

const BUMP: u64 = 1_000_000;

/// A snapshot of a 3.5.30 member with enough keys for a multi-level `key` bucket (the bump
/// appends along its rightmost path), overwrites and a delete (a tombstone).
fn snapshot(dir: &Path) -> (std::path::PathBuf, i64, Vec<(String, String)>) {
    let src = Cluster::boot(
        V::V3_5_30,
        &[MemberSpec::new("src", dir.join("src.etcd"))],
        "t",
    );
    populate(&src, 300);
    src.etcdctl_ok(&["put", "/over", "1"]);
    src.etcdctl_ok(&["put", "/over", "2"]);
    src.etcdctl_ok(&["del", "/over"]);
    let want = dump(&src, &src.members[0].client_url);
    let snap = dir.join("snap.db");
    snapshot_save(&src, &snap);
    let rev = verify_file(&snap, Some(std::fs::metadata(&snap).unwrap().len() - 32))
        .unwrap()
        .revision;
    (snap, rev, want)
}

fn restore_args(snap: &Path, data_dir: &Path, m: &MemberSpec) -> RestoreOptions {
    RestoreOptions {
        snapshot: Some(snap.to_path_buf()),
        data_dir: Some(data_dir.to_path_buf()),
        name: Some(m.name.clone()),
        initial_cluster: Some(format!("{}={}", m.name, m.peer_url())),
        bump_revision: Some(BUMP),
        mark_compacted: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bump_status_equals_etcdutl_3_5_30_and_members_boot_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let (snap, old_rev, want) = snapshot(dir.path());
    let member = MemberSpec::new("m", dir.path().join("unused"));
    let before = verify_file(&snap, Some(std::fs::metadata(&snap).unwrap().len() - 32)).unwrap();

    // etcdutl 3.5.30's restore, same flags.
    let reference = dir.path().join("ref.etcd");
    let o = std::process::Command::new(etcdutl_3_5_30())
        .args(["snapshot", "restore"])
        .arg(&snap)
        .arg("--data-dir")
        .arg(&reference)
        .args([
            "--name",
            "m",
            "--initial-cluster",
            &format!("m={}", member.peer_url()),
        ])
        .args(["--initial-advertise-peer-urls", &member.peer_url()])
        .args(["--bump-revision", &BUMP.to_string(), "--mark-compacted"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let ours = dir.path().join("ours.etcd");
    run(restore_args(&snap, &ours, &member), None)
        .await
        .unwrap();

    let ref_db = reference.join("member/snap/db");
    let our_db = ours.join("member/snap/db");
    let (r, o) = (
        etcdutl_status(&etcdutl_3_5_30(), &ref_db),
        etcdutl_status(&etcdutl_3_5_30(), &our_db),
    );
    for f in ["hash", "revision", "totalKey"] {
        assert_eq!(r[f], o[f], "etcdutl 3.5.30 status {f}: ref {r} ours {o}");
    }
    assert_eq!(r["revision"].as_i64().unwrap(), old_rev + BUMP as i64);
    // Two keys more than a plain restore: the bump key and meta/scheduledCompactRev.
    let plain = dir.path().join("plain.etcd");
    run(
        RestoreOptions {
            bump_revision: None,
            mark_compacted: false,
            ..restore_args(&snap, &plain, &member)
        },
        None,
    )
    .await
    .unwrap();
    let plain_status = verify_file(&plain.join("member/snap/db"), None).unwrap();
    // Our own status of both outputs agrees too.
    let (rs, os) = (
        verify_file(&ref_db, None).unwrap(),
        verify_file(&our_db, None).unwrap(),
    );
    assert_eq!(
        (rs.hash, rs.revision, rs.total_key),
        (os.hash, os.revision, os.total_key)
    );
    assert_eq!(os.total_key, plain_status.total_key + 2);
    assert_eq!(plain_status.revision, before.revision);

    // A bump that would overflow etcd's int64 revision is refused before anything is written.
    let over = dir.path().join("over.etcd");
    let err = run(
        RestoreOptions {
            bump_revision: Some(i64::MAX as u64),
            ..restore_args(&snap, &over, &member)
        },
        None,
    )
    .await
    .unwrap_err();
    assert!(
        format!("{err:#}").contains(&format!(
            "--bump-revision {} on top of revision {old_rev} exceeds etcd's largest revision",
            i64::MAX
        )),
        "{err:#}"
    );
    assert!(!over.exists());

    // Boot on 3.4.23 (no bump flags of its own, but it honours meta/scheduledCompactRev),
    // 3.5.1 and 3.5.30: the old revision is compacted, new writes go above the bump.
    for v in [V::V3_4, V::V3_5, V::V3_5_30] {
        let copy = dir.path().join(format!("boot-{v:?}"));
        let st = std::process::Command::new("cp")
            .arg("-a")
            .arg(&ours)
            .arg(&copy)
            .status()
            .unwrap();
        assert!(st.success());
        let spec = MemberSpec {
            data_dir: copy,
            ..member.clone()
        };
        let c = Cluster::boot(v, std::slice::from_ref(&spec), "etcd-cluster");
        assert_eq!(dump(&c, &spec.client_url()), want, "{v:?}: keys after boot");
        let o = c.etcdctl(&["get", "/over", "--rev", &(old_rev - 1).to_string()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("required revision has been compacted"),
            "{v:?}: read at old revision: {err}"
        );
        let put = c.etcdctl_ok(&["put", "/after", "x", "-w", "json"]);
        let v_json: serde_json::Value = serde_json::from_str(&put).unwrap();
        let rev = v_json["header"]["revision"].as_i64().unwrap();
        assert!(rev > old_rev + BUMP as i64, "{v:?}: new write at {rev}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn flags_checked_as_etcdutl() {
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("none.db");
    for (bump, mark, want) in [
        (Some(5), false, "--bump-revision: requires --mark-compacted"),
        (
            None,
            true,
            "--mark-compacted: only with --bump-revision N > 0",
        ),
        (
            Some(0),
            true,
            "--mark-compacted: only with --bump-revision N > 0",
        ),
        (Some(u64::MAX), true, "exceeds etcd's largest revision"),
    ] {
        let err = run(
            RestoreOptions {
                snapshot: Some(snap.clone()),
                data_dir: Some(dir.path().join("x")),
                bump_revision: bump,
                mark_compacted: mark,
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, etcd_lifeboat::restore::RestoreError::Usage(_)),
            "{err:#}"
        );
        assert!(format!("{err:#}").contains(want), "{err:#}");
    }
    assert!(!dir.path().join("x").exists());
}
