//! The WAL and .snap files written by the native restore are byte-identical to etcdutl 3.5.1's
//! for the same flags, and so are the member and cluster IDs they carry.

use std::path::Path;

use crate::restore_util::*;
use etcd_lifeboat::restore::{run, RestoreOptions};

fn make_snapshot(dir: &Path) -> std::path::PathBuf {
    let m = MemberSpec::new("src", dir.join("src.etcd"));
    let c = Cluster::boot(V::V3_5, &[m], "src-token");
    populate(&c, 50);
    let snap = dir.join("snap.db");
    snapshot_save(&c, &snap);
    snap
}

#[tokio::test(flavor = "multi_thread")]
async fn wal_and_snap_identical_to_etcdutl() {
    let dir = tempfile::tempdir().unwrap();
    let snap = make_snapshot(dir.path());
    let ic = "alpha=http://127.0.0.1:2380,beta=http://127.0.0.1:2381,gamma=http://10.0.0.3:2380,gamma=https://[::1]:2390";
    let out = dir.path().join("out");
    run(
        RestoreOptions {
            snapshot: Some(snap.clone()),
            initial_cluster: Some(ic.into()),
            initial_cluster_token: Some("tok-<&>".into()),
            out_dir: Some(out.clone()),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();

    for (name, urls) in [
        ("alpha", "http://127.0.0.1:2380"),
        ("beta", "http://127.0.0.1:2381"),
        ("gamma", "http://10.0.0.3:2380,https://[::1]:2390"),
    ] {
        let refdir = dir.path().join(format!("ref-{name}"));
        etcdutl_restore(&snap, name, ic, "tok-<&>", urls, &refdir);
        let ours = out.join(name);
        assert_eq!(tree(&ours), tree(&refdir), "same files for {name}");
        let wal = "member/wal/0000000000000000-0000000000000000.wal";
        let a = std::fs::read(ours.join(wal)).unwrap();
        let b = std::fs::read(refdir.join(wal)).unwrap();
        assert_eq!(a.len(), 64_000_000);
        assert!(a == b, "WAL of {name} differs from etcdutl's");
        let snapf = "member/snap/0000000000000001-0000000000000003.snap";
        let a = std::fs::read(ours.join(snapf)).unwrap();
        let b = std::fs::read(refdir.join(snapf)).unwrap();
        assert!(
            a == b,
            "snap of {name} differs from etcdutl's:\n{}\n{}",
            String::from_utf8_lossy(&a),
            String::from_utf8_lossy(&b)
        );
    }
}
