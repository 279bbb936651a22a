//! Native `status` equals `etcdctl snapshot status -w json` (3.4) and `etcdutl snapshot status
//! -w json` / `etcdctl` 3.5, on real snapshots taken with `etcdctl snapshot save`: empty db,
//! deep B+trees, 1 MiB values (overflow pages), overwritten and deleted keys, leases, after
//! compaction, after defragmentation, with auth enabled.
use crate::common::*;

use std::path::{Path, PathBuf};
use std::process::Command;

use etcd_lifeboat::acquire::{TrailerRule, TrailerState};
use etcd_lifeboat::snapshot::{verify_file, Db, Status};

/// What etcd's own tools say about `file`, as JSON. For 3.5 both `etcdutl` and the
/// deprecated `etcdctl snapshot status` are asked and must agree.
fn reference(v: Version, file: &Path) -> serde_json::Value {
    let run = |bin: PathBuf| {
        let out = Command::new(&bin)
            .args(["snapshot", "status", "-w", "json"])
            .arg(file)
            .env("ETCDCTL_API", "3")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} snapshot status failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    match v {
        Version::V3_4 => run(etcdctl_bin(v)),
        Version::V3_5_30 => {
            let a = run(etcdutl3530_bin());
            let b = run(etcdctl_bin(v));
            assert_eq!(a, b, "etcdutl and etcdctl 3.5.30 disagree");
            a
        }
        Version::V3_5 => {
            let a = run(etcdutl_bin());
            let b = run(etcdctl_bin(v));
            assert_eq!(a, b, "etcdutl and etcdctl 3.5 disagree");
            a
        }
    }
}

fn assert_same_as_etcd(v: Version, file: &Path, what: &str) -> Status {
    let ours = acquire_file(file, TrailerRule::Skip)
        .unwrap_or_else(|e| panic!("{what}: native status failed: {e}"))
        .status;
    let theirs = reference(v, file);
    assert_eq!(
        serde_json::to_value(&ours).unwrap(),
        theirs,
        "{what} ({v:?}): native status differs from etcd's"
    );
    // The structure check alone (trailer cut by size) gives the same values.
    let len = std::fs::metadata(file).unwrap().len();
    assert_eq!(verify_file(file, Some(len - 32)).unwrap(), ours);
    let verified = acquire_file(file, TrailerRule::Required).unwrap();
    assert_eq!(
        (verified.status, verified.trailer),
        (ours.clone(), TrailerState::Valid)
    );
    ours
}

/// `-w table` of etcdutl 3.5 (the same code as etcdctl's) equals `Status::to_table`.
fn assert_table_like_etcdutl(file: &Path, ours: &Status) {
    let out = Command::new(etcdutl_bin())
        .args(["snapshot", "status", "-w", "table"])
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(ours.to_table(), String::from_utf8(out.stdout).unwrap());
}

fn save(etcd: &Etcd, dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let p = dir.join(name);
    let mut args = vec!["snapshot", "save", p.to_str().unwrap()];
    args.extend_from_slice(extra);
    etcd.etcdctl_ok(&args);
    p
}

fn current_revision(etcd: &Etcd, extra: &[&str]) -> i64 {
    let mut args = vec!["endpoint", "status", "-w", "json"];
    args.extend_from_slice(extra);
    let out = etcd.etcdctl_ok(&args);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["Status"]["header"]["revision"].as_i64().unwrap()
}

async fn scenario(v: Version) {
    let tmp = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(EtcdOpts {
        version: v,
        ..Default::default()
    });

    // Empty db.
    let empty = save(&etcd, tmp.path(), "empty.db", &[]);
    let s = assert_same_as_etcd(v, &empty, "empty");
    assert_eq!(
        (s.revision, s.total_key > 0),
        (0, true),
        "empty: no key in bucket key, {s:?}"
    );
    assert_table_like_etcdutl(&empty, &s);

    // Deep B+tree, overwrites, deletes, leases, 1 MiB values.
    let client = etcd.client().await;
    fill(&client, 30_000, 100, "deep/").await;
    fill(&client, 3_000, 120, "deep/").await; // overwrite
    let mut kv = client.kv_client();
    kv.delete(
        "deep/0001",
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await
    .unwrap();
    let lease = client.lease_client().grant(600, None).await.unwrap().id();
    for i in 0..50 {
        kv.put(
            format!("leased/{i}"),
            "x",
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
    }
    fill(&client, 4, 1 << 20, "big/").await;
    // Values of 23 and 130 KiB: leaf pages with 6 to 34 pages of overflow.
    fill(&client, 40, 23 << 10, "mid/").await;
    fill(&client, 40, 130 << 10, "mid2/").await;
    let populated = save(&etcd, tmp.path(), "populated.db", &[]);
    let s = assert_same_as_etcd(v, &populated, "populated");
    assert!(s.total_key > 33_000, "{s:?}");
    let db = Db::open(
        &populated,
        Some(std::fs::metadata(&populated).unwrap().len() - 32),
    )
    .unwrap();
    assert!(db.size() > 4 << 20);
    assert_table_like_etcdutl(&populated, &s);

    // Compaction.
    let rev = current_revision(&etcd, &[]);
    etcd.etcdctl_ok(&["compact", &rev.to_string(), "--physical"]);
    let compacted = save(&etcd, tmp.path(), "compacted.db", &[]);
    let c = assert_same_as_etcd(v, &compacted, "compacted");
    assert!(
        c.total_key < s.total_key,
        "compaction removed old revisions: {c:?} vs {s:?}"
    );

    // Defragmentation.
    etcd.etcdctl_ok(&["defrag"]);
    let defragged = save(&etcd, tmp.path(), "defrag.db", &[]);
    let d = assert_same_as_etcd(v, &defragged, "defragmented");
    assert!(d.total_size <= c.total_size, "{d:?} vs {c:?}");

    // Auth enabled.
    etcd.etcdctl_ok(&["user", "add", "root:rootpw"]);
    etcd.etcdctl_ok(&["role", "add", "reader"]);
    etcd.etcdctl_ok(&["user", "add", "alice:alicepw"]);
    etcd.etcdctl_ok(&["user", "grant-role", "alice", "reader"]);
    etcd.etcdctl_ok(&["auth", "enable"]);
    etcd.etcdctl_ok(&["put", "after-auth", "1", "--user=root:rootpw"]);
    let auth = save(&etcd, tmp.path(), "auth.db", &["--user=root:rootpw"]);
    assert_same_as_etcd(v, &auth, "auth enabled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_matches_etcdctl_34() {
    scenario(Version::V3_4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_matches_etcdutl_35() {
    scenario(Version::V3_5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_matches_etcdutl_3530() {
    scenario(Version::V3_5_30).await;
}
