//! Restore refuses bad input with a clear error and writes nothing: corrupted or truncated
//! snapshots, a non-empty target, a name missing from --initial-cluster, duplicate peer URLs.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::restore_util::*;
use etcd_lifeboat::error::exit_code;
use etcd_lifeboat::restore::{run, RestoreOptions};

/// One real snapshot (etcd 3.5, a few keys) shared by the tests of this file.
fn snapshot() -> &'static Path {
    static SNAP: OnceLock<PathBuf> = OnceLock::new();
    SNAP.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let c = Cluster::boot(V::V3_5, &[MemberSpec::new("s", dir.join("s.etcd"))], "t");
        populate(&c, 20);
        let p = dir.join("snap.db");
        snapshot_save(&c, &p);
        // Only the snapshot outlives the tests (a few KiB); the member's data dir goes now.
        drop(c);
        std::fs::remove_dir_all(dir.join("s.etcd")).unwrap();
        p
    })
}

/// `restore ... | head`: the reader closed before the report; the restore still completes
/// and exits 0 (it panicked with exit 101 after writing the data dir).
#[test]
fn restore_into_a_closed_pipe_completes_and_exits_0() {
    let work = tempfile::tempdir().unwrap();
    let data_dir = work.path().join("r.etcd");
    let (code, err) = crate::common::run_into_closed_pipe([
        OsStr::new("restore"),
        OsStr::new("--snapshot"),
        snapshot().as_os_str(),
        OsStr::new("--name"),
        OsStr::new("a"),
        OsStr::new("--initial-cluster"),
        OsStr::new("a=http://127.0.0.1:2380"),
        OsStr::new("--initial-advertise-peer-urls"),
        OsStr::new("http://127.0.0.1:2380"),
        OsStr::new("--data-dir"),
        data_dir.as_os_str(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(data_dir.join("member/snap/db").is_file());
}

fn args(snap: &Path, data_dir: &Path) -> RestoreOptions {
    RestoreOptions {
        snapshot: Some(snap.to_path_buf()),
        name: Some("a".into()),
        initial_cluster: Some("a=http://127.0.0.1:2380,b=http://127.0.0.1:2381".into()),
        initial_advertise_peer_urls: Some("http://127.0.0.1:2380".into()),
        data_dir: Some(data_dir.to_path_buf()),
        ..Default::default()
    }
}

/// Runs a restore that must fail; returns (message, exit code) and checks that `dir` holds
/// exactly `before` afterwards.
async fn fails(a: RestoreOptions, dir: &Path) -> (String, i32) {
    let before = tree(dir);
    let e = run(a, None).await.expect_err("restore must fail");
    assert_eq!(tree(dir), before, "nothing written for: {e:#}");
    (format!("{e:#}"), exit_code(&e))
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupted_snapshot() {
    let d = tempfile::tempdir().unwrap();
    let mut b = std::fs::read(snapshot()).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0xff;
    let bad = d.path().join("bad.db");
    std::fs::write(&bad, &b).unwrap();
    let (msg, code) = fails(args(&bad, &d.path().join("out")), d.path()).await;
    assert!(msg.contains("sha256 trailer does not match"), "{msg}");
    assert_eq!(code, 1);
}

/// A byte of a value changed: the bbolt structure is intact, so the db is copied while the
/// trailer hash runs beside it; the mismatch must still stop the restore and leave nothing,
/// for one member and for a whole `--out-dir` cluster.
#[tokio::test(flavor = "multi_thread")]
async fn changed_value_is_refused_after_the_copy_started() {
    let d = tempfile::tempdir().unwrap();
    let mut b = std::fs::read(snapshot()).unwrap();
    let at = b
        .windows(10)
        .position(|w| w == b"with-lease")
        .expect("the value is in the db");
    b[at] = b'W';
    let bad = d.path().join("bad.db");
    std::fs::write(&bad, &b).unwrap();
    let db_len = b.len() as u64 - 32;
    etcd_lifeboat::snapshot::verify_file(&bad, Some(db_len)).expect("structure intact");
    let (msg, code) = fails(args(&bad, &d.path().join("out")), d.path()).await;
    assert!(msg.contains("sha256 trailer does not match"), "{msg}");
    assert_eq!(code, 1);
    let a = RestoreOptions {
        snapshot: Some(bad.clone()),
        initial_cluster: Some("a=http://127.0.0.1:2380,b=http://127.0.0.1:2381".into()),
        out_dir: Some(d.path().join("cluster")),
        ..Default::default()
    };
    let (msg, _) = fails(a, d.path()).await;
    assert!(msg.contains("sha256 trailer does not match"), "{msg}");
    // A flag error found before the copy (a name not in --initial-cluster): the changed file
    // is still reported as changed, as its checks had not run yet.
    let mut a = args(&bad, &d.path().join("out"));
    a.name = Some("c".into());
    let (msg, code) = fails(a, d.path()).await;
    assert!(msg.contains("sha256 trailer does not match"), "{msg}");
    assert_eq!(code, 1);
}

/// The root page of the `key` bucket with an impossible element count and a trailer
/// recomputed to match: only the bbolt check, which runs beside the copy for a raw file, can
/// refuse it; the staged dirs must go with it. (The root, not any page holding a value: an
/// older copy of a leaf may sit on a free page, which no check reads.)
#[tokio::test(flavor = "multi_thread")]
async fn corrupt_structure_with_valid_trailer_is_refused() {
    use sha2::{Digest, Sha256};
    let d = tempfile::tempdir().unwrap();
    let mut b = std::fs::read(snapshot()).unwrap();
    let db_len = b.len() - 32;
    let db = etcd_lifeboat::snapshot::reader::Db::open(snapshot(), Some(db_len as u64)).unwrap();
    let header = db.root_bucket(b"key").unwrap().expect("bucket key");
    let root = u64::from_le_bytes(header[..8].try_into().unwrap());
    assert_ne!(root, 0, "bucket key is not inline");
    let page = (root * u64::from(db.page_size())) as usize;
    b[page + 10..page + 12].copy_from_slice(&0xFFF0u16.to_le_bytes());
    let sum = Sha256::digest(&b[..db_len]);
    b[db_len..].copy_from_slice(&sum);
    let bad = d.path().join("bad.db");
    std::fs::write(&bad, &b).unwrap();
    let (msg, code) = fails(args(&bad, &d.path().join("out")), d.path()).await;
    assert!(
        msg.contains("elements need") && msg.contains("but the page has 4096"),
        "{msg}"
    );
    assert_eq!(code, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn truncated_snapshot() {
    let d = tempfile::tempdir().unwrap();
    let b = std::fs::read(snapshot()).unwrap();
    let bad = d.path().join("short.db");
    std::fs::write(&bad, &b[..b.len() - 1000]).unwrap();
    let (msg, code) = fails(args(&bad, &d.path().join("out")), d.path()).await;
    assert!(msg.contains("has no sha256 trailer"), "{msg}");
    assert_eq!(code, 1);
    // With --skip-hash-check a db cut in half still fails verification (bbolt structure).
    let half = d.path().join("half.db");
    std::fs::write(&half, &b[..b.len() / 2 / 4096 * 4096]).unwrap();
    let mut a = args(&half, &d.path().join("out"));
    a.skip_hash_check = true;
    let (msg, _) = fails(a, d.path()).await;
    assert!(msg.contains("verifying snapshot"), "{msg}");
}

#[tokio::test(flavor = "multi_thread")]
async fn truncated_zst() {
    let d = tempfile::tempdir().unwrap();
    let z = zstd::encode_all(&std::fs::read(snapshot()).unwrap()[..], 3).unwrap();
    let bad = d.path().join("short.db.zst");
    std::fs::write(&bad, &z[..z.len() / 2]).unwrap();
    let (msg, code) = fails(args(&bad, &d.path().join("out").join("a")), d.path()).await;
    assert!(msg.contains("corrupted or truncated"), "{msg}");
    assert_eq!(code, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn non_empty_target() {
    let d = tempfile::tempdir().unwrap();
    let target = d.path().join("data");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep.txt"), b"precious").unwrap();
    let (msg, code) = fails(args(snapshot(), &target), d.path()).await;
    assert!(
        msg.contains("is not empty") && msg.contains("never deletes or overwrites"),
        "{msg}"
    );
    assert_eq!(code, 1);
    assert_eq!(std::fs::read(target.join("keep.txt")).unwrap(), b"precious");
    // --out-dir: one member's dir in the way stops the whole restore.
    let out = d.path().join("out");
    std::fs::create_dir_all(out.join("b")).unwrap();
    std::fs::write(out.join("b").join("x"), b"x").unwrap();
    let a = RestoreOptions {
        snapshot: Some(snapshot().to_path_buf()),
        initial_cluster: Some("a=http://127.0.0.1:2380,b=http://127.0.0.1:2381".into()),
        out_dir: Some(out.clone()),
        ..Default::default()
    };
    let (msg, _) = fails(a, d.path()).await;
    assert!(msg.contains("is not empty"), "{msg}");
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_existing_target_is_used() {
    let d = tempfile::tempdir().unwrap();
    let target = d.path().join("data");
    std::fs::create_dir(&target).unwrap();
    run(args(snapshot(), &target), None).await.unwrap();
    assert_eq!(
        tree(&target),
        [
            "member/",
            "member/snap/",
            "member/snap/0000000000000001-0000000000000002.snap",
            "member/snap/db",
            "member/wal/",
            "member/wal/0000000000000000-0000000000000000.wal"
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn name_not_in_initial_cluster() {
    let d = tempfile::tempdir().unwrap();
    let mut a = args(snapshot(), &d.path().join("out"));
    a.name = Some("c".into());
    let (msg, code) = fails(a, d.path()).await;
    assert!(
        msg.starts_with("--name: couldn't find local name \"c\""),
        "{msg}"
    );
    assert_eq!(code, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_peer_urls() {
    let d = tempfile::tempdir().unwrap();
    let mut a = args(snapshot(), &d.path().join("out"));
    a.initial_cluster = Some("a=http://127.0.0.1:2380,b=http://127.0.0.1:2380".into());
    let (msg, code) = fails(a, d.path()).await;
    assert!(msg.contains("duplicate url http://127.0.0.1:2380"), "{msg}");
    assert_eq!(code, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn advertise_urls_mismatch_and_dry_run() {
    let d = tempfile::tempdir().unwrap();
    let mut a = args(snapshot(), &d.path().join("out"));
    a.initial_advertise_peer_urls = Some("http://127.0.0.1:2999".into());
    let (msg, code) = fails(a, d.path()).await;
    assert!(msg.starts_with("--initial-advertise-peer-urls:"), "{msg}");
    assert_eq!(code, 2);
    let mut a = args(snapshot(), &d.path().join("out"));
    a.dry_run = true;
    let before = tree(d.path());
    run(a, None).await.unwrap();
    assert_eq!(tree(d.path()), before);
}
