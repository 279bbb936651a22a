//! One conformance suite for every store backend: the same async test functions run against
//! the local directory store and against S3 (moto on loopback, or the endpoint given by
//! `ETCD_LIFEBOAT_TEST_S3_*`; see tests/common/s3.rs). Backend-specific error messages are
//! tested at the end.

#![allow(clippy::field_reassign_with_default)]

use crate::s3h;

use std::time::Duration;

use bytes::Bytes;
use chrono::{TimeZone, Utc};
use etcd_lifeboat::config::{Backend, StorageConfig};
use etcd_lifeboat::store::{
    backup_id, catalog, data_key, find, manifest_key, Manifest, ObjectKey, Store, StoreError,
};
use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;
use tokio::io::AsyncReadExt;

/// A store under test plus what keeps its backend alive.
struct Fixture {
    store: Store,
    _dir: Option<tempfile::TempDir>,
    _s3: Option<s3h::S3Server>,
}

#[derive(Clone, Copy)]
enum Kind {
    Local,
    S3,
}

async fn fixture(kind: Kind) -> Fixture {
    match kind {
        Kind::Local => {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = StorageConfig::default();
            cfg.backend = Backend::Local;
            // A path that does not exist yet: from_config creates it.
            cfg.local.path = dir.path().join("store/nested");
            let store = Store::from_config(&cfg).await.unwrap();
            Fixture {
                store,
                _dir: Some(dir),
                _s3: None,
            }
        }
        Kind::S3 => {
            let srv = tokio::task::spawn_blocking(s3h::S3Server::start)
                .await
                .unwrap();
            let store = Store::from_config(&srv.storage_config()).await.unwrap();
            Fixture {
                store,
                _dir: None,
                _s3: Some(srv),
            }
        }
    }
}

fn key(s: &str) -> ObjectKey {
    ObjectKey::new(s).unwrap()
}

use crate::s3h::pseudo_random as data;

async fn read_all(store: &Store, k: &ObjectKey) -> Vec<u8> {
    let mut r = store.get_stream(k).await.unwrap();
    let mut v = Vec::new();
    r.read_to_end(&mut v).await.unwrap();
    v
}

fn keys(list: &[etcd_lifeboat::store::ObjectMeta]) -> Vec<&str> {
    list.iter().map(|m| m.key.as_str()).collect()
}

/// Temp files (local) or multipart uploads (S3) left in the store.
async fn leftovers(store: &Store) -> Vec<String> {
    match store {
        Store::Local(s) => {
            let mut out = Vec::new();
            let mut stack = vec![s.root().to_path_buf()];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).unwrap() {
                    let e = e.unwrap();
                    if e.file_type().unwrap().is_dir() {
                        stack.push(e.path());
                    } else if e.file_name().to_string_lossy().starts_with('.') {
                        out.push(e.path().display().to_string());
                    }
                }
            }
            out
        }
        Store::S3(s) => {
            let r = s
                .client()
                .list_multipart_uploads()
                .bucket(s.bucket())
                .prefix(s.prefix())
                .send()
                .await
                .unwrap();
            r.uploads()
                .iter()
                .map(|u| format!("{:?} {:?}", u.key(), u.upload_id()))
                .collect()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The suite.

async fn put_get_list_delete(f: Fixture) {
    let s = &f.store;
    assert!(s.list("").await.unwrap().is_empty());
    for (k, n) in [
        ("b/x", 3usize),
        ("a/2", 20),
        ("a/1", 10),
        ("a/sub/3", 30),
        ("ab", 1),
    ] {
        s.put_bytes(&key(k), Bytes::from(data(n, n as u64)))
            .await
            .unwrap();
    }
    let all = s.list("").await.unwrap();
    assert_eq!(keys(&all), ["a/1", "a/2", "a/sub/3", "ab", "b/x"]);
    assert_eq!(
        all.iter().map(|m| m.size).collect::<Vec<_>>(),
        [10, 20, 30, 1, 3]
    );
    let now = Utc::now();
    for m in &all {
        let age = now - m.last_modified;
        assert!(
            age < chrono::Duration::minutes(5) && age > chrono::Duration::minutes(-5),
            "{m:?}"
        );
    }
    assert_eq!(
        keys(&s.list("a/").await.unwrap()),
        ["a/1", "a/2", "a/sub/3"]
    );
    assert_eq!(
        keys(&s.list("a").await.unwrap()),
        ["a/1", "a/2", "a/sub/3", "ab"]
    );
    assert_eq!(keys(&s.list("a/s").await.unwrap()), ["a/sub/3"]);
    assert!(s.list("zz/").await.unwrap().is_empty());

    assert_eq!(s.get_bytes(&key("a/2")).await.unwrap(), data(20, 20));
    assert_eq!(read_all(s, &key("a/sub/3")).await, data(30, 30));

    // Overwrite replaces.
    s.put_bytes(&key("a/2"), Bytes::from_static(b"new"))
        .await
        .unwrap();
    assert_eq!(s.get_bytes(&key("a/2")).await.unwrap(), &b"new"[..]);

    s.delete(&key("a/1")).await.unwrap();
    assert!(s.get_bytes(&key("a/1")).await.unwrap_err().is_not_found());
    s.delete(&key("a/1")).await.unwrap(); // deleting a missing key is fine
    assert_eq!(
        keys(&s.list("").await.unwrap()),
        ["a/2", "a/sub/3", "ab", "b/x"]
    );
    s.check().await.unwrap();
    assert!(leftovers(s).await.is_empty());
}

async fn not_found_is_distinct(f: Fixture) {
    let s = &f.store;
    let k = key("nope/missing.json");
    match s.get_bytes(&k).await {
        Err(StoreError::NotFound { key }) => assert_eq!(key, "nope/missing.json"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    match s.get_stream(&k).await {
        Err(e) => assert!(e.is_not_found(), "{e}"),
        Ok(_) => panic!("stream of a missing object"),
    }
    s.delete(&k).await.unwrap();
    let e = s.get_bytes(&k).await.unwrap_err();
    assert_eq!(e.to_string(), "object nope/missing.json not found");
}

async fn upload_visible_only_at_finish(f: Fixture) {
    let s = &f.store;
    let k = key("c1/obj.db.zst");
    let body = data(300_000, 7);
    let mut u = s.begin_upload(&k).await.unwrap();
    u.write(&body[..100_000]).await.unwrap();
    u.write(&body[100_000..]).await.unwrap();
    assert_eq!(u.bytes_written(), 300_000);
    assert!(
        s.list("").await.unwrap().is_empty(),
        "visible before finish"
    );
    assert!(s.get_bytes(&k).await.unwrap_err().is_not_found());
    let info = u.finish().await.unwrap();
    assert_eq!(info.bytes, 300_000);
    assert_eq!(info.sha256, <[u8; 32]>::from(Sha256::digest(&body)));
    let l = s.list("").await.unwrap();
    assert_eq!(keys(&l), ["c1/obj.db.zst"]);
    assert_eq!(l[0].size, 300_000);
    assert_eq!(s.get_bytes(&k).await.unwrap(), body);
    assert!(leftovers(s).await.is_empty());

    // An empty upload stores an empty object.
    let e = key("c1/empty");
    let u = s.begin_upload(&e).await.unwrap();
    let info = u.finish().await.unwrap();
    assert_eq!(info.bytes, 0);
    assert_eq!(s.get_bytes(&e).await.unwrap().len(), 0);
}

async fn abort_leaves_nothing(f: Fixture) {
    let s = &f.store;
    // More than one 5 MiB part, so S3 has started a multipart upload.
    let body = data(6 << 20, 11);
    let k = key("c1/aborted.db.zst");
    let mut u = s.begin_upload(&k).await.unwrap();
    u.write(&body).await.unwrap();
    assert!(
        !matches!(s, Store::S3(_)) || !leftovers(s).await.is_empty(),
        "multipart upload started"
    );
    u.abort().await.unwrap();
    assert!(s.list("").await.unwrap().is_empty());
    assert!(s.get_bytes(&k).await.unwrap_err().is_not_found());
    assert_eq!(leftovers(s).await, Vec::<String>::new());

    // Dropping an unfinished upload cleans up too (S3: in the background).
    let mut u = s.begin_upload(&k).await.unwrap();
    u.write(&body).await.unwrap();
    drop(u);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !leftovers(s).await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "dropped upload left {:?}",
            leftovers(s).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(s.list("").await.unwrap().is_empty());
}

async fn multipart_several_parts(f: Fixture) {
    let s = &f.store;
    let len = 12 * 1024 * 1024 + 12_345;
    let body = data(len, 3);
    let k = key("c1/big.db.zst");
    let mut u = s.begin_upload(&k).await.unwrap();
    // Odd chunk sizes, so parts are cut in the middle of chunks.
    for c in body.chunks(1_000_003) {
        u.write(c).await.unwrap();
    }
    let info = u.finish().await.unwrap();
    assert_eq!(info.bytes, len as u64);
    let want: [u8; 32] = Sha256::digest(&body).into();
    assert_eq!(info.sha256, want);
    let got = read_all(s, &k).await;
    assert_eq!(got.len(), len);
    assert_eq!(<[u8; 32]>::from(Sha256::digest(&got)), want);
    assert_eq!(s.list("c1/").await.unwrap()[0].size, len as u64);
    if let Store::S3(s3) = s {
        // A multipart object's ETag is "<md5 of part md5s>-<number of parts>".
        let head = s3
            .client()
            .head_object()
            .bucket(s3.bucket())
            .key(s3.s3_key(&k))
            .send()
            .await
            .unwrap();
        let etag = head.e_tag().unwrap().trim_matches('"').to_string();
        assert!(
            etag.ends_with("-3"),
            "3 parts of 5 MiB expected, ETag {etag}"
        );
    }
    // put_bytes of more than a part goes the same way.
    let k2 = key("c1/big2");
    s.put_bytes(&k2, Bytes::from(body.clone())).await.unwrap();
    assert_eq!(s.get_bytes(&k2).await.unwrap().len(), len);
    assert!(leftovers(s).await.is_empty());
}

fn manifest(cluster: &str, t: chrono::DateTime<Utc>, rev: i64) -> Manifest {
    let id = backup_id(t, rev);
    Manifest {
        id: id.clone(),
        cluster_id: cluster.into(),
        member_id: "8e9e05c52164694d".into(),
        member_name: "default".into(),
        endpoint: "http://127.0.0.1:2379".into(),
        etcd_version: "3.5.1".into(),
        started_at: t,
        finished_at: t + chrono::Duration::seconds(3),
        revision: rev,
        current_revision: None,
        hash: 12345,
        total_key: 10,
        total_size: 20480,
        raw_sha256: "00".repeat(32),
        stored_bytes: 1000,
        stored_sha256: "11".repeat(32),
        compression: "zstd".into(),
        compression_level: 3,
        tool_version: "0.1.0".into(),
        tag: None,
        data_key: data_key(cluster, &id),
        encryption: None,
        sse: None,
        object_lock: None,
        source: Default::default(),
        consistent_index: None,
        files: None,
    }
}

async fn catalog_newest_first(f: Fixture) {
    let s = &f.store;
    assert!(catalog(s).await.unwrap().is_empty());
    assert!(matches!(
        find(s, "latest").await,
        Err(StoreError::BackupNotFound { .. })
    ));
    let c = "cdf818194e3a8c32";
    let t0 = Utc.with_ymd_and_hms(2026, 11, 22, 23, 0, 0).unwrap();
    let ms = [
        manifest(c, t0, 100),
        manifest(c, t0 + chrono::Duration::hours(2), 300),
        manifest(c, t0 + chrono::Duration::hours(1), 200),
    ];
    for m in &ms {
        s.put_bytes(&m.data_key, Bytes::from_static(b"zstd data"))
            .await
            .unwrap();
        s.put_bytes(&manifest_key(c, &m.id), Bytes::from(m.to_json()))
            .await
            .unwrap();
    }
    // An orphan data object (no manifest), newer than all: not a backup.
    let orphan = backup_id(t0 + chrono::Duration::hours(5), 999);
    s.put_bytes(&data_key(c, &orphan), Bytes::from_static(b"partial"))
        .await
        .unwrap();
    // An unparsable manifest and one stored under the wrong key are skipped.
    s.put_bytes(
        &manifest_key(c, "20261123T000000Z-r0000000000000500"),
        Bytes::from_static(b"{not json"),
    )
    .await
    .unwrap();
    s.put_bytes(&key("elsewhere/x.json"), Bytes::from(ms[0].to_json()))
        .await
        .unwrap();

    let cat = catalog(s).await.unwrap();
    let ids: Vec<&str> = cat.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(
        ids,
        [ms[1].id.as_str(), ms[2].id.as_str(), ms[0].id.as_str()]
    );
    assert_eq!(cat[0], ms[1], "manifest round-trips through JSON");

    assert_eq!(find(s, "latest").await.unwrap().id, ms[1].id);
    assert_eq!(find(s, &ms[0].id).await.unwrap(), ms[0]);
    assert_eq!(find(s, "20261123T00").await.unwrap().id, ms[2].id); // unique prefix
    match find(s, "20261123T0").await {
        Err(StoreError::Ambiguous { candidates, .. }) => {
            assert_eq!(candidates, [ms[1].id.clone(), ms[2].id.clone()])
        }
        other => panic!("expected Ambiguous, got {other:?}"),
    }
    let e = find(s, &orphan).await.unwrap_err();
    assert!(matches!(e, StoreError::BackupNotFound { .. }), "{e}");
    assert!(e.to_string().contains(&s.describe()), "{e}");
}

async fn conditional_create(f: Fixture) {
    let s = &f.store;
    let k = key("c1/20261122T230000Z-r0000000000000001.json");
    assert!(!s.exists(&k).await.unwrap());
    s.put_bytes_new(&k, Bytes::from_static(b"first writer"))
        .await
        .unwrap();
    assert!(s.exists(&k).await.unwrap());
    match s
        .put_bytes_new(&k, Bytes::from_static(b"second writer"))
        .await
    {
        Err(StoreError::AlreadyExists { key }) => assert_eq!(key, k.as_str()),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(s.get_bytes(&k).await.unwrap(), &b"first writer"[..]);
    // A retry of the same write (its first response lost) is not a conflict.
    s.put_bytes_new(&k, Bytes::from_static(b"first writer"))
        .await
        .unwrap();
    // A plain put still replaces.
    s.put_bytes(&k, Bytes::from_static(b"replaced"))
        .await
        .unwrap();
    assert_eq!(s.get_bytes(&k).await.unwrap(), &b"replaced"[..]);
    assert_eq!(keys(&s.list("").await.unwrap()), [k.as_str()]);
    assert!(leftovers(s).await.is_empty(), "{:?}", leftovers(s).await);
}

async fn head_and_bounded_reads(f: Fixture) {
    let s = &f.store;
    let k = key("c1/obj.json");
    let body = data(1000, 5);
    s.put_bytes(&k, Bytes::from(body.clone())).await.unwrap();
    let h = s.head(&k).await.unwrap();
    assert_eq!((h.key.as_str(), h.size), ("c1/obj.json", 1000));
    let age = Utc::now() - h.last_modified;
    assert!(age.num_minutes().abs() < 5, "{h:?}");
    assert_eq!((h.sse.as_deref(), h.lock_mode.as_deref()), (None, None));
    assert!(h.retain_until.is_none() && !h.is_locked_at(Utc::now()));
    if let Some(c) = &h.checksum_sha256 {
        assert_eq!(*c, hex::encode(Sha256::digest(&body)));
    }
    let missing = key("c1/missing.json");
    assert!(s.head(&missing).await.unwrap_err().is_not_found());
    assert!(s
        .get_bytes_limited(&missing, 10)
        .await
        .unwrap_err()
        .is_not_found());

    assert_eq!(s.get_bytes_limited(&k, 1000).await.unwrap(), body);
    assert_eq!(s.get_bytes_limited(&k, 1 << 20).await.unwrap(), body);
    match s.get_bytes_limited(&k, 999).await {
        Err(StoreError::TooLarge { key, size, max }) => {
            assert_eq!((key.as_str(), size, max), ("c1/obj.json", 1000, 999))
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let e = s.get_bytes_limited(&k, 0).await.unwrap_err();
    assert!(
        e.to_string().contains("more than the 0 bytes allowed"),
        "{e}"
    );
}

/// Replaces the stored bytes of `k` behind the store's back (a disk or server fault).
async fn tamper(s: &Store, k: &ObjectKey, bytes: &[u8]) {
    match s {
        Store::Local(l) => std::fs::write(l.path_of(k), bytes).unwrap(),
        Store::S3(s3) => {
            s3.client()
                .put_object()
                .bucket(s3.bucket())
                .key(s3.s3_key(k))
                .body(bytes.to_vec().into())
                .send()
                .await
                .unwrap();
        }
    }
}

async fn post_upload_check(f: Fixture) {
    let s = &f.store;
    let k = key("c1/checked.db.zst");
    let body = data(5000, 9);
    let sha: [u8; 32] = Sha256::digest(&body).into();
    let mut u = s.begin_upload(&k).await.unwrap();
    u.write(&body).await.unwrap();
    let info = u.finish().await.unwrap();
    assert_eq!((info.bytes, info.sha256), (5000, sha));
    let h = s.verify_stored(&k, 5000, &sha).await.unwrap();
    assert_eq!(h.size, 5000);

    // The stored object loses bytes: verify_stored reports it and changes nothing ...
    tamper(s, &k, &body[..4000]).await;
    match s.verify_stored(&k, 5000, &sha).await {
        Err(StoreError::StoredMismatch { key, detail }) => {
            assert_eq!(key, k.as_str());
            assert!(
                detail.contains("the store reports 4000 bytes, 5000 were written"),
                "{detail}"
            );
        }
        other => panic!("expected StoredMismatch, got {other:?}"),
    }
    assert!(s.exists(&k).await.unwrap());
    // ... and the post-upload check (what finish runs) deletes it.
    let e = s.check_written(&k, 5000, &sha).await.unwrap_err();
    assert!(
        matches!(e, StoreError::StoredMismatch { .. })
            && e.to_string().contains("the object was deleted"),
        "{e}"
    );
    assert!(!s.exists(&k).await.unwrap());
    assert!(s.list("").await.unwrap().is_empty());
}

async fn stale_uploads_of_live_writers_are_kept(f: Fixture) {
    let s = &f.store;
    let k = key("c1/live.db.zst");
    let body = data(6 << 20, 13);
    let mut u = s.begin_upload(&k).await.unwrap();
    u.write(&body).await.unwrap();
    assert!(!leftovers(s).await.is_empty(), "upload in progress");
    let removed = s
        .remove_stale_uploads(Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(removed.is_empty(), "{removed:?}");
    let info = u.finish().await.unwrap();
    assert_eq!(info.bytes, body.len() as u64);
    assert_eq!(read_all(s, &k).await, body);
    assert!(leftovers(s).await.is_empty());
    // Nothing left to remove.
    assert!(s
        .remove_stale_uploads(Duration::ZERO)
        .await
        .unwrap()
        .is_empty());
}

async fn check_writes_nothing(f: Fixture) {
    let s = &f.store;
    s.check().await.unwrap();
    assert!(s.list("").await.unwrap().is_empty());
    assert!(leftovers(s).await.is_empty());
    if let Store::Local(l) = s {
        assert_eq!(std::fs::read_dir(l.root()).unwrap().count(), 0);
    }
    if let Store::S3(s3) = s {
        // Not even outside our prefix (the old probe object was `<prefix>/.etcd-lifeboat-check-*`).
        let all = s3
            .client()
            .list_objects_v2()
            .bucket(s3.bucket())
            .send()
            .await
            .unwrap();
        assert!(
            all.contents()
                .iter()
                .all(|o| !o.key().unwrap_or("").starts_with(s3.prefix())),
            "{:?}",
            all.contents()
        );
    }
    assert_eq!(s.object_protection(Utc::now()), (None, None));
}

async fn describe_names_location(f: Fixture) {
    let d = f.store.describe();
    match &f.store {
        Store::Local(l) => assert_eq!(d, format!("local:{}", l.root().display())),
        Store::S3(s) => assert_eq!(d, format!("s3://{}/{}", s.bucket(), s.prefix())),
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::fixture(super::Kind::Local).await).await
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::fixture(super::Kind::S3).await).await
                }
            )*
        }
    };
}

conformance!(
    put_get_list_delete,
    not_found_is_distinct,
    upload_visible_only_at_finish,
    abort_leaves_nothing,
    multipart_several_parts,
    catalog_newest_first,
    describe_names_location,
    conditional_create,
    head_and_bounded_reads,
    post_upload_check,
    stale_uploads_of_live_writers_are_kept,
    check_writes_nothing,
);

// ---------------------------------------------------------------------------------------------
// Backend-specific errors.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_missing_bucket_is_named() {
    let srv = tokio::task::spawn_blocking(s3h::S3Server::start)
        .await
        .unwrap();
    let bucket = format!("lifeboat-missing-{:08x}", rand::random::<u32>());
    let store = Store::from_config(&srv.storage_config_for_bucket(&bucket))
        .await
        .unwrap();
    let want = format!(
        "bucket {bucket} does not exist at endpoint {}; create it or fix storage.s3.bucket",
        srv.endpoint
    );
    let e = store.check().await.unwrap_err();
    eprintln!("missing bucket: {e}");
    assert!(e.to_string().contains(&want), "{e}");
    let e = store
        .put_bytes(&key("a/b"), Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains(&want), "{e}");
    let e = store.list("").await.unwrap_err();
    assert!(e.to_string().contains(&want), "{e}");
    // A missing object in a missing bucket is a bucket problem, not NotFound.
    let e = store.get_bytes(&key("a/b")).await.unwrap_err();
    assert!(!e.is_not_found() && e.to_string().contains(&want), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_unreachable_endpoint_is_named() {
    let port = s3h::free_port();
    let mut cfg = StorageConfig::default();
    cfg.backend = Backend::S3;
    cfg.s3.bucket = "b".into();
    cfg.s3.region = Some("us-east-1".into());
    cfg.s3.endpoint = Some(format!("http://127.0.0.1:{port}"));
    cfg.s3.force_path_style = true;
    cfg.s3.insecure = true;
    std::env::set_var(
        "AWS_ACCESS_KEY_ID",
        std::env::var("AWS_ACCESS_KEY_ID").unwrap_or("testing".into()),
    );
    std::env::set_var(
        "AWS_SECRET_ACCESS_KEY",
        std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or("testing".into()),
    );
    let store = Store::from_config(&cfg).await.unwrap();
    let e = store.check().await.unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("cannot reach endpoint http://127.0.0.1:{port}")),
        "{msg}"
    );
    assert!(msg.contains("check storage.s3.endpoint"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_bad_credentials_are_named() {
    let srv = match s3h::S3Server::external() {
        Some(s) => s,
        None => tokio::task::spawn_blocking(|| s3h::S3Server::start_moto_opts(false, true))
            .await
            .unwrap(),
    };
    let creds = aws_sdk_s3::config::Credentials::new(
        "AKIALIFEBOATBOGUSKEY",
        "bogus-secret",
        None,
        None,
        "test",
    );
    let cfg = srv.storage_config();
    let store = Store::S3(
        etcd_lifeboat::store::S3Store::from_config_with_credentials(&cfg.s3, Some(creds))
            .await
            .unwrap(),
    );
    let msg = store.check().await.unwrap_err().to_string();
    eprintln!("bad credentials, check: {msg}");
    assert!(
        msg.contains("HTTP 403") && msg.contains("check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"),
        "{msg}"
    );
    let msg = store
        .put_bytes(&key("a/b"), Bytes::from_static(b"x"))
        .await
        .unwrap_err()
        .to_string();
    eprintln!("bad credentials, put: {msg}");
    assert!(
        msg.contains("rejected the credentials (InvalidAccessKeyId)")
            && msg.contains("check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_tls_with_custom_ca() {
    if s3h::S3Server::external().is_some() {
        return; // TLS is tested against moto only
    }
    let srv = tokio::task::spawn_blocking(|| s3h::S3Server::start_moto(true))
        .await
        .unwrap();
    let cfg = srv.storage_config();
    assert!(cfg.s3.endpoint.as_deref().unwrap().starts_with("https://"));
    let store = Store::from_config(&cfg).await.unwrap();
    store.check().await.unwrap();
    store
        .put_bytes(&key("t/x"), Bytes::from_static(b"over tls"))
        .await
        .unwrap();
    assert_eq!(
        store.get_bytes(&key("t/x")).await.unwrap(),
        &b"over tls"[..]
    );

    // Without the CA the server certificate is not trusted.
    let mut bad = cfg.clone();
    bad.s3.ca_file = None;
    let store = Store::from_config(&bad).await.unwrap();
    let msg = store.check().await.unwrap_err().to_string();
    assert!(
        msg.contains("cannot reach endpoint") && msg.contains("storage.s3.ca_file"),
        "{msg}"
    );
}

/// `storage.s3.checksum: when_supported`: CRC32C checksums on PutObject and on every part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_checksum_when_supported() {
    let srv = tokio::task::spawn_blocking(s3h::S3Server::start)
        .await
        .unwrap();
    let mut cfg = srv.storage_config();
    cfg.s3.checksum = etcd_lifeboat::config::ChecksumMode::WhenSupported;
    let f = Fixture {
        store: Store::from_config(&cfg).await.unwrap(),
        _dir: None,
        _s3: Some(srv),
    };
    multipart_several_parts(f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_missing_ca_file_is_named() {
    let mut cfg = StorageConfig::default();
    cfg.backend = Backend::S3;
    cfg.s3.bucket = "b".into();
    cfg.s3.ca_file = Some("/nonexistent/lifeboat-ca.crt".into());
    let e = Store::from_config(&cfg).await.unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("storage.s3.ca_file /nonexistent/lifeboat-ca.crt"),
        "{msg}"
    );
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

#[tokio::test]
async fn local_unusable_directory_is_named() {
    let dir = tempfile::tempdir().unwrap();
    // A parent of the store path is a regular file.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let mut cfg = StorageConfig::default();
    cfg.local.path = file.join("store");
    let msg = Store::from_config(&cfg).await.unwrap_err().to_string();
    let want = format!(
        "cannot create store directory {}",
        file.join("store").display()
    );
    assert!(
        msg.contains(&want) && msg.contains("storage.local.path"),
        "{msg}"
    );

    // The store path itself is a file.
    cfg.local.path = file.clone();
    let msg = Store::from_config(&cfg).await.unwrap_err().to_string();
    assert!(
        msg.contains("is not a directory; set storage.local.path"),
        "{msg}"
    );

    // No permission to create or write. Root ignores file modes, so as root use a directory
    // the kernel refuses (sysfs).
    if is_root() {
        cfg.local.path = "/sys/etcd-lifeboat-test/store".into();
        let msg = Store::from_config(&cfg).await.unwrap_err().to_string();
        eprintln!("no permission: {msg}");
        assert!(
            msg.contains("cannot create store directory /sys/etcd-lifeboat-test/store")
                && msg.contains("give this user write access"),
            "{msg}"
        );
    } else {
        use std::os::unix::fs::PermissionsExt;
        let ro = dir.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        let store_dir = ro.join("store");
        std::fs::create_dir(&store_dir).unwrap();
        cfg.local.path = store_dir.clone();
        let store = Store::from_config(&cfg).await.unwrap();
        std::fs::set_permissions(&store_dir, std::fs::Permissions::from_mode(0o555)).unwrap();
        let msg = store.check().await.unwrap_err().to_string();
        assert!(
            msg.contains(&store_dir.display().to_string()) && msg.contains("write access"),
            "{msg}"
        );
        let msg = store.begin_upload(&key("x")).await.unwrap_err().to_string();
        assert!(msg.contains("write access"), "{msg}");
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        cfg.local.path = ro.join("new");
        let msg = Store::from_config(&cfg).await.unwrap_err().to_string();
        assert!(
            msg.contains("cannot create store directory") && msg.contains("write access"),
            "{msg}"
        );
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&store_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[tokio::test]
async fn local_temp_files_are_not_listed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StorageConfig::default();
    cfg.local.path = dir.path().to_path_buf();
    let store = Store::from_config(&cfg).await.unwrap();
    let mut u = store.begin_upload(&key("c/x.db.zst")).await.unwrap();
    u.write(b"abc").await.unwrap();
    // The temp file sits beside the target, named `.<name>.partial-<random>`.
    let names: Vec<String> = std::fs::read_dir(dir.path().join("c"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1);
    assert!(names[0].starts_with(".x.db.zst.partial-"), "{names:?}");
    assert!(store.list("").await.unwrap().is_empty());
    u.finish().await.unwrap();
    let names: Vec<String> = std::fs::read_dir(dir.path().join("c"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["x.db.zst"]);
}

/// Stores, uploads and their futures can move between threads (the backup pipeline spawns
/// them).
#[allow(dead_code)]
fn types_are_send(store: Store) {
    fn send<T: Send>(_: &T) {}
    fn sync<T: Send + Sync>() {}
    sync::<Store>();
    sync::<StoreError>();
    async fn uses(store: Store) {
        let k = key("a");
        let mut u = store.begin_upload(&k).await.unwrap();
        u.write(b"x").await.unwrap();
        u.finish().await.unwrap();
        let _ = store.get_stream(&k).await;
        let _ = catalog(&store).await;
        let _ = find(&store, "latest").await;
    }
    send(&uses(store));
}

// ---------------------------------------------------------------------------------------------
// Local store: private modes and writer locks, checked across processes.

/// Environment variable that makes [`child_process_helper`] act (`writer` or `private`) in a
/// child process started by the tests below; without it the helper does nothing.
const CHILD_ENV: &str = "LIFEBOAT_STORE_TEST_CHILD";
/// The store directory the child uses.
const CHILD_DIR_ENV: &str = "LIFEBOAT_STORE_TEST_DIR";

/// Runs this test binary's [`child_process_helper`] as `role` with umask `umask`, on store
/// directory `dir`, stdout piped.
fn spawn_child(role: &str, umask: &str, dir: &std::path::Path) -> std::process::Child {
    let exe = std::env::current_exe().unwrap();
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask {umask}; exec \"$0\" --exact store_conformance::child_process_helper --nocapture --test-threads 1"
        ))
        .arg(exe)
        .env(CHILD_ENV, role)
        .env(CHILD_DIR_ENV, dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap()
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

async fn local_store(path: &std::path::Path) -> Store {
    let mut cfg = StorageConfig::default();
    cfg.local.path = path.to_path_buf();
    Store::from_config(&cfg).await.unwrap()
}

/// Not a test by itself: the body of the child processes of the tests below (see
/// [`spawn_child`]); returns at once when [`CHILD_ENV`] is not set.
#[tokio::test]
async fn child_process_helper() {
    let Ok(role) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = std::path::PathBuf::from(std::env::var(CHILD_DIR_ENV).unwrap());
    match role.as_str() {
        // Start an upload, say where its temp file is, and wait to be killed.
        "writer" => {
            let store = local_store(&dir).await;
            let mut u = store.begin_upload(&key("c1/killed.db.zst")).await.unwrap();
            u.write(&data(100_000, 1)).await.unwrap();
            println!("READY");
            tokio::time::sleep(Duration::from_secs(600)).await;
            unreachable!("the parent kills this process");
        }
        // Create a store, objects and temp files under the umask the parent set.
        "private" => {
            let store = local_store(&dir.join("root/store")).await;
            store
                .put_bytes(&key("c1/sub/a.json"), Bytes::from_static(b"{}"))
                .await
                .unwrap();
            store
                .put_bytes_new(&key("c2/b.json"), Bytes::from_static(b"{}"))
                .await
                .unwrap();
            let mut u = store.begin_upload(&key("c3/big.db.zst")).await.unwrap();
            u.write(b"secret").await.unwrap();
            let tmp = std::fs::read_dir(dir.join("root/store/c3"))
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .path();
            assert_eq!(mode(&tmp), 0o600, "temp file {}", tmp.display());
            u.finish().await.unwrap();
            println!("DONE");
        }
        other => panic!("unknown child role {other}"),
    }
}

#[tokio::test]
async fn local_store_is_private_whatever_the_umask() {
    // 0o277 takes the owner's write and search bits too: without explicit modes the store
    // could not even create files in the directories it made. 0o000 would leave 0666/0777.
    for umask in ["277", "000", "022"] {
        let dir = tempfile::tempdir().unwrap();
        let out = spawn_child("private", umask, dir.path())
            .wait_with_output()
            .unwrap();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("DONE"),
            "umask {umask}: child failed: {out:?}"
        );
        let root = dir.path().join("root/store");
        for d in [
            "root",
            "root/store",
            "root/store/c1",
            "root/store/c1/sub",
            "root/store/c3",
        ] {
            assert_eq!(mode(&dir.path().join(d)), 0o700, "umask {umask}: dir {d}");
        }
        for f in ["c1/sub/a.json", "c2/b.json", "c3/big.db.zst"] {
            assert_eq!(mode(&root.join(f)), 0o600, "umask {umask}: file {f}");
        }
        let store = local_store(&root).await;
        assert_eq!(store.privacy_warning(), None);
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let w = store.privacy_warning().unwrap();
        assert!(
            w.contains(&format!("store directory {} is mode 0755", root.display()))
                && w.contains(&format!("chmod 700 {}", root.display())),
            "{w}"
        );
        // An existing root keeps its mode: opening the store does not change it.
        let store = local_store(&root).await;
        assert!(store.privacy_warning().is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_killed_writer_temp_file_is_removed() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path()).await;
    let mut child = spawn_child("writer", "022", dir.path());
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("READY") {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "writer child exited early"
        );
    }
    let temp_files = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir.path().join("c1"))
            .map(|rd| {
                rd.map(|e| e.unwrap().path().display().to_string())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let theirs = temp_files();
    assert_eq!(theirs.len(), 1, "{theirs:?}");
    assert!(theirs[0].contains(".killed.db.zst.partial-"), "{theirs:?}");

    // A live writer in this process too.
    let mut ours = store.begin_upload(&key("c1/live.db.zst")).await.unwrap();
    ours.write(b"in progress").await.unwrap();

    // Both writers alive: nothing is removed, whatever older_than.
    assert!(store
        .remove_stale_uploads(Duration::ZERO)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(temp_files().len(), 2);

    // SIGKILL: no destructor runs, the temp file stays, the kernel drops the lock.
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(temp_files().len(), 2);
    let removed = store.remove_stale_uploads(Duration::ZERO).await.unwrap();
    assert_eq!(removed, theirs);
    let left = temp_files();
    assert_eq!(left.len(), 1);
    assert!(left[0].contains(".live.db.zst.partial-"), "{left:?}");

    // The live upload still finishes.
    ours.finish().await.unwrap();
    assert_eq!(
        store.get_bytes(&key("c1/live.db.zst")).await.unwrap(),
        &b"in progress"[..]
    );
    assert_eq!(keys(&store.list("").await.unwrap()), ["c1/live.db.zst"]);
    assert!(leftovers(&store).await.is_empty());
}

#[tokio::test]
async fn local_check_does_not_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path()).await;
    let before = std::fs::metadata(dir.path()).unwrap().modified().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    store.check().await.unwrap();
    // Creating and removing a probe file would have changed the directory's mtime.
    assert_eq!(
        std::fs::metadata(dir.path()).unwrap().modified().unwrap(),
        before
    );
    // A root that vanished is named.
    let gone = dir.path().join("gone");
    let store = local_store(&gone).await;
    std::fs::remove_dir(&gone).unwrap();
    let msg = store.check().await.unwrap_err().to_string();
    assert!(
        msg.contains(&format!("cannot access store directory {}", gone.display()))
            && msg.contains("storage.local.path"),
        "{msg}"
    );
}

// ---------------------------------------------------------------------------------------------
// S3: server-side encryption, Object Lock, stale multipart uploads.

async fn s3_store(cfg: &StorageConfig) -> (Store, etcd_lifeboat::store::S3Store) {
    let store = Store::from_config(cfg).await.unwrap();
    let Store::S3(s3) = store.clone() else {
        unreachable!()
    };
    (store, s3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_sse_is_sent_and_reported() {
    use etcd_lifeboat::config::SseMode;
    let srv = tokio::task::spawn_blocking(s3h::S3Server::start)
        .await
        .unwrap();
    for (mode, kms, want) in [
        (SseMode::Aes256, None, "AES256"),
        (SseMode::AwsKms, Some("alias/lifeboat-test"), "aws:kms"),
    ] {
        let mut cfg = srv.storage_config();
        cfg.s3.sse = Some(mode);
        cfg.s3.sse_kms_key_id = kms.map(str::to_string);
        let (store, _) = s3_store(&cfg).await;
        // One PutObject and one multipart upload (CreateMultipartUpload carries the header).
        store
            .put_bytes(&key("c1/m.json"), Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let mut u = store.begin_upload(&key("c1/d.db.zst")).await.unwrap();
        u.write(&data(6 << 20, 2)).await.unwrap();
        u.finish().await.unwrap();
        for k in ["c1/m.json", "c1/d.db.zst"] {
            let h = store.head(&key(k)).await.unwrap();
            assert_eq!(h.sse.as_deref(), Some(want), "{k}: {h:?}");
            assert_eq!(h.sse_kms_key_id.as_deref(), kms, "{k}: {h:?}");
        }
        let (sse, lock) = store.object_protection(Utc::now());
        let sse = sse.unwrap();
        assert_eq!(
            (sse.algorithm.as_str(), sse.kms_key_id.as_deref(), lock),
            (want, kms, None)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_object_lock_retains_and_delete_is_locked() {
    use etcd_lifeboat::config::{ObjectLockConfig, ObjectLockMode};
    let srv = tokio::task::spawn_blocking(s3h::S3Server::start)
        .await
        .unwrap();
    let Some(bucket) = srv.create_bucket(true) else {
        eprintln!("external S3 endpoint: Object Lock bucket test runs against moto only");
        return;
    };
    for checksum in [
        etcd_lifeboat::config::ChecksumMode::WhenRequired,
        etcd_lifeboat::config::ChecksumMode::WhenSupported,
    ] {
        let mut cfg = srv.storage_config_for_bucket(&bucket);
        cfg.s3.checksum = checksum;
        cfg.s3.object_lock = Some(ObjectLockConfig {
            mode: ObjectLockMode::Governance,
            retain_for: Duration::from_secs(86400),
        });
        let (store, _) = s3_store(&cfg).await;
        // Health without writes works on a WORM bucket.
        store.check().await.unwrap();

        let k = key("c1/locked.json");
        let t0 = Utc::now();
        store
            .put_bytes(&k, Bytes::from_static(b"manifest"))
            .await
            .unwrap();
        store
            .put_bytes_new(&key("c1/new.json"), Bytes::from_static(b"new"))
            .await
            .unwrap();
        let h = store.head(&k).await.unwrap();
        assert_eq!(h.lock_mode.as_deref(), Some("GOVERNANCE"), "{h:?}");
        let until = h.retain_until.expect("retain-until date");
        let want = t0 + chrono::Duration::days(1);
        assert!(
            (until - want).num_seconds().abs() < 120,
            "retain until {until}, want about {want}"
        );
        assert!(h.is_locked_at(Utc::now()));
        let (_, lock) = store.object_protection(t0);
        let lock = lock.unwrap();
        assert_eq!(lock.mode, "GOVERNANCE");
        assert!((lock.retain_until - want).num_seconds().abs() <= 1);

        // Deleting is refused with the date, and leaves the object visible (no delete marker).
        match store.delete(&k).await {
            Err(e @ StoreError::Locked { .. }) => {
                let StoreError::Locked {
                    key: ref lk,
                    retain_until,
                } = e
                else {
                    unreachable!()
                };
                assert_eq!((lk.as_str(), retain_until), (k.as_str(), Some(until)));
                assert!(e.is_locked());
                assert!(e.to_string().contains(&until.to_rfc3339()), "{e}");
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        assert_eq!(store.get_bytes(&k).await.unwrap(), &b"manifest"[..]);
        assert!(keys(&store.list("").await.unwrap()).contains(&"c1/locked.json"));

        // Multipart uploads carry the lock headers too (moto accepts them; AWS applies them).
        let mut u = store.begin_upload(&key("c1/d.db.zst")).await.unwrap();
        u.write(&data(6 << 20, 4)).await.unwrap();
        u.finish().await.unwrap();
        assert_eq!(store.head(&key("c1/d.db.zst")).await.unwrap().size, 6 << 20);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_stale_multipart_uploads_are_aborted_by_age() {
    let srv = tokio::task::spawn_blocking(s3h::S3Server::start)
        .await
        .unwrap();
    let cfg = srv.storage_config();
    let (store, s3) = s3_store(&cfg).await;
    // A multipart upload with one part, left behind as by a killed backup.
    let left = s3.s3_key(&key("c1/killed.db.zst"));
    let start = |k: String| {
        let c = s3.client().clone();
        let b = s3.bucket().to_string();
        async move {
            let id = c
                .create_multipart_upload()
                .bucket(&b)
                .key(&k)
                .send()
                .await
                .unwrap()
                .upload_id()
                .unwrap()
                .to_string();
            c.upload_part()
                .bucket(&b)
                .key(&k)
                .upload_id(&id)
                .part_number(1)
                .body(data(1024, 3).into())
                .send()
                .await
                .unwrap();
            id
        }
    };
    let id = start(left.clone()).await;
    // One of another store (another prefix) in the same bucket: never touched.
    let other = format!("{}-other/c1/x.db.zst", s3.prefix());
    let other_id = start(other.clone()).await;
    let uploads = || async {
        let mut v: Vec<String> = s3
            .client()
            .list_multipart_uploads()
            .bucket(s3.bucket())
            .send()
            .await
            .unwrap()
            .uploads()
            .iter()
            .map(|u| u.upload_id().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Younger than the threshold: kept.
    let removed = store
        .remove_stale_uploads(Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(removed.is_empty(), "{removed:?}");
    let mut both = vec![id.clone(), other_id.clone()];
    both.sort();
    assert_eq!(uploads().await, both);
    // Older than the threshold: aborted, and named for the log.
    let removed = store
        .remove_stale_uploads(Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(
        removed,
        [format!("s3://{}/{left} (upload {id})", s3.bucket())]
    );
    assert_eq!(uploads().await, std::slice::from_ref(&other_id));

    // An upload without parts is judged by its Initiated date alone, relative to `now`
    // (moto reports a fixed Initiated date, so `now` is taken from it).
    let bare = s3.s3_key(&key("c1/bare.db.zst"));
    let bare_id = s3
        .client()
        .create_multipart_upload()
        .bucket(s3.bucket())
        .key(&bare)
        .send()
        .await
        .unwrap()
        .upload_id()
        .unwrap()
        .to_string();
    let listed = s3
        .client()
        .list_multipart_uploads()
        .bucket(s3.bucket())
        .prefix(&bare)
        .send()
        .await
        .unwrap();
    let t = listed.uploads()[0].initiated().unwrap();
    let initiated = chrono::DateTime::<Utc>::from_timestamp(t.secs(), 0).unwrap();
    let now = initiated + chrono::Duration::minutes(10);
    let kept = s3
        .remove_stale_uploads(Duration::from_secs(3600), now)
        .await
        .unwrap();
    assert!(kept.is_empty(), "{kept:?}");
    let removed = s3
        .remove_stale_uploads(Duration::from_secs(300), now)
        .await
        .unwrap();
    assert_eq!(
        removed,
        [format!("s3://{}/{bare} (upload {bare_id})", s3.bucket())]
    );
    assert_eq!(uploads().await, [other_id]);
}

/// An HTTP/1.1 proxy in front of moto that answers 501 NotImplemented to every request with
/// an `If-None-Match` header (a store without conditional writes) and forwards the others,
/// one upstream connection per request. Returns its URL and the count of 501s sent.
fn no_conditional_writes_proxy(
    upstream: &str,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let up = upstream.trim_start_matches("http://").to_string();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let refused = std::sync::Arc::new(AtomicUsize::new(0));
    let count = refused.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut client) = conn else { return };
            let up = up.clone();
            let count = count.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(client.try_clone().unwrap());
                loop {
                    let mut head = Vec::new();
                    let mut len = 0usize;
                    let mut conditional = false;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                        conditional |= lower.starts_with("if-none-match:");
                        let end = line == "\r\n";
                        if !lower.starts_with("connection:") && !end {
                            head.extend_from_slice(line.as_bytes());
                        }
                        if end {
                            break;
                        }
                    }
                    let mut body = vec![0u8; len];
                    reader.read_exact(&mut body).unwrap();
                    if conditional {
                        count.fetch_add(1, Ordering::SeqCst);
                        let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NotImplemented</Code><Message>A header you provided implies functionality that is not implemented</Message></Error>";
                        write!(
                            client,
                            "HTTP/1.1 501 Not Implemented\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{xml}",
                            xml.len()
                        )
                        .unwrap();
                        continue;
                    }
                    let mut server = std::net::TcpStream::connect(&up).unwrap();
                    server.write_all(&head).unwrap();
                    server.write_all(b"Connection: close\r\n\r\n").unwrap();
                    server.write_all(&body).unwrap();
                    let mut resp = Vec::new();
                    server.read_to_end(&mut resp).unwrap();
                    if client.write_all(&resp).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_conditional_create_falls_back_when_not_implemented() {
    let srv = tokio::task::spawn_blocking(|| s3h::S3Server::start_moto(false))
        .await
        .unwrap();
    let (url, refused) = no_conditional_writes_proxy(&srv.endpoint);
    let mut cfg = srv.storage_config();
    cfg.s3.endpoint = Some(url);
    let store = Store::from_config(&cfg).await.unwrap();
    let k = key("c1/m.json");
    store
        .put_bytes_new(&k, Bytes::from_static(b"first"))
        .await
        .unwrap();
    assert_eq!(store.get_bytes(&k).await.unwrap(), &b"first"[..]);
    match store.put_bytes_new(&k, Bytes::from_static(b"second")).await {
        Err(StoreError::AlreadyExists { key }) => assert_eq!(key, "c1/m.json"),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(store.get_bytes(&k).await.unwrap(), &b"first"[..]);
    assert_eq!(refused.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// A symbolic link planted as an object (its directories are real): every read refuses it,
/// naming the link (`O_NOFOLLOW`), and never reads what it points to; delete removes the link
/// only.
#[tokio::test]
async fn a_link_as_an_object_is_refused_by_reads() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside.db");
    std::fs::write(&outside, b"not the store's").unwrap();
    let store = local_store(&dir.path().join("store")).await;
    store
        .put_bytes(&key("c1/a.json"), Bytes::from_static(b"{}"))
        .await
        .unwrap();
    let link = dir.path().join("store/c1/b.db.zst");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let k = key("c1/b.db.zst");
    let errs = [
        store.get_bytes(&k).await.err(),
        store.get_bytes_limited(&k, 1 << 20).await.err(),
        store.get_stream(&k).await.err(),
        store.head(&k).await.err(),
    ];
    for e in errs {
        let e = e.expect("a read through a link succeeded").to_string();
        assert!(e.contains("is a symbolic link inside the store"), "{e}");
    }
    store.delete(&k).await.unwrap();
    assert!(link.symlink_metadata().is_err());
    assert_eq!(std::fs::read(&outside).unwrap(), b"not the store's");
}
