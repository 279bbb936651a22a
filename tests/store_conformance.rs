//! One conformance suite for every store backend: the same async test functions run against
//! the local directory store and against S3 (moto on loopback, or the endpoint given by
//! `ETCD_LIFEBOAT_TEST_S3_*`; see tests/common/s3.rs). Backend-specific error messages are
//! tested at the end.

#![allow(clippy::field_reassign_with_default)]

#[path = "common/s3.rs"]
mod s3h;

use std::time::Duration;

use bytes::Bytes;
use chrono::{TimeZone, Utc};
use etcd_lifeboat::config::{Backend, StorageConfig};
use etcd_lifeboat::store::{
    backup_id, catalog, data_key, find, manifest_key, Manifest, ObjectKey, Store, StoreError,
};
use sha2::{Digest, Sha256};
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

/// Deterministic pseudo-random bytes (incompressible, so sizes are real).
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

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
