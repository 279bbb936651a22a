//! `backup`, `list`, `verify` against an S3 server on loopback (moto, started here), or an
//! external S3 endpoint named by `ETCD_LIFEBOAT_TEST_S3_*` (see tests/common/s3.rs).

use std::time::Duration;

use crate::common::*;
use crate::s3h::S3Server;
use etcd_lifeboat::config::StorageConfig;
use etcd_lifeboat::store::Store;
use serde_json::Value;

fn json(out: &[u8]) -> Value {
    serde_json::from_slice(out)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(out)))
}

async fn objects_and_uploads(storage: &StorageConfig) -> (Vec<String>, Vec<String>) {
    let store = Store::from_config(storage).await.unwrap();
    let objects = store
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key.to_string())
        .collect();
    let uploads = match &store {
        Store::S3(s) => s
            .client()
            .list_multipart_uploads()
            .bucket(s.bucket())
            .prefix(s.prefix())
            .send()
            .await
            .unwrap()
            .uploads()
            .iter()
            .map(|u| format!("{:?}", u.key()))
            .collect(),
        Store::Local(_) => unreachable!("S3 tests use S3"),
    };
    (objects, uploads)
}

#[test]
fn s3_backup_is_multipart_listed_and_verified() {
    let s3 = S3Server::start();
    let etcd = Etcd::start(EtcdOpts {
        version: Version::V3_5,
        tls: true,
        ..Default::default()
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        fill_random(&etcd.client().await, 200, 64 * 1024, "/registry/secrets/s").await
    });
    let storage = s3.storage_config();
    let cfg = etcd.config_file_with_storage(&storage);

    let out =
        lifeboat_ok(lifeboat().args(["--config", cfg.to_str().unwrap(), "backup", "-o", "json"]));
    let m = json(&out.stdout);
    assert!(
        m["stored_bytes"].as_u64().unwrap() > 10 * 1024 * 1024,
        "{m}"
    );

    let snap = etcd.dir.path().join("etcdctl.db");
    etcd.etcdctl_ok(&["snapshot", "save", snap.to_str().unwrap()]);
    let st = json(
        etcd.etcdctl_ok(&["snapshot", "status", "-w", "json", snap.to_str().unwrap()])
            .as_bytes(),
    );
    assert_eq!(
        (
            m["hash"].clone(),
            m["revision"].clone(),
            m["total_key"].clone()
        ),
        (
            st["hash"].clone(),
            st["revision"].clone(),
            st["totalKey"].clone()
        )
    );

    let list = json(
        &lifeboat()
            .args(["--config", cfg.to_str().unwrap(), "list", "-o", "json"])
            .output()
            .unwrap()
            .stdout,
    );
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], m["id"]);
    lifeboat_ok(lifeboat().args(["--config", cfg.to_str().unwrap(), "verify", "--all"]));

    let (objects, uploads) = rt.block_on(objects_and_uploads(&storage));
    assert_eq!(objects.len(), 2, "{objects:?}");
    assert!(uploads.is_empty(), "{uploads:?}");
}

#[test]
fn s3_missing_bucket_fails_naming_it() {
    let s3 = S3Server::start();
    let etcd = Etcd::start(EtcdOpts::default());
    let storage = s3.storage_config_for_bucket("no-such-bucket-lifeboat");
    let cfg = etcd.config_file_with_storage(&storage);
    let out = lifeboat()
        .args(["--config", cfg.to_str().unwrap(), "backup"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no-such-bucket-lifeboat") && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn sigterm_during_s3_backup_leaves_no_backup_and_no_parts() {
    let s3 = S3Server::start();
    let etcd = Etcd::start(EtcdOpts::default());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        fill_random(&etcd.client().await, 600, 64 * 1024, "/registry/secrets/s").await
    });
    let storage = s3.storage_config();
    let cfg = etcd.config_file_with_storage(&storage);
    let bin = assert_cmd::cargo::cargo_bin("etcd-lifeboat");
    let child = std::process::Command::new(bin)
        .args(["--config", cfg.to_str().unwrap(), "backup"])
        .env("ETCD_LIFEBOAT_COMPRESSION_LEVEL", "19") // slow enough to be caught mid-way
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cancelled"), "{err}");
    let (objects, uploads) = rt.block_on(objects_and_uploads(&storage));
    assert!(objects.is_empty(), "{objects:?}");
    assert!(uploads.is_empty(), "{uploads:?}");
}

/// `storage.s3.sse` and `storage.s3.object_lock` against a bucket created with Object Lock:
/// backup, list and verify work (the health check writes nothing), every object shows the
/// requested encryption and retention in HeadObject, and the objects cannot be deleted.
#[test]
fn s3_backup_with_sse_on_an_object_lock_bucket() {
    use etcd_lifeboat::config::{ObjectLockConfig, ObjectLockMode, SseMode};
    use etcd_lifeboat::store::{ObjectKey, StoreError};
    let s3 = S3Server::start();
    let Some(bucket) = s3.create_bucket(true) else {
        eprintln!("external S3 endpoint: the Object Lock bucket test runs against moto only");
        return;
    };
    let etcd = Etcd::start(EtcdOpts::default());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async { fill_random(&etcd.client().await, 20, 1024, "/registry/secrets/s").await });
    let mut storage = s3.storage_config_for_bucket(&bucket);
    storage.s3.sse = Some(SseMode::Aes256);
    storage.s3.object_lock = Some(ObjectLockConfig {
        mode: ObjectLockMode::Governance,
        retain_for: Duration::from_secs(2 * 86400),
    });
    let cfg = etcd.config_file_with_storage(&storage);
    let t0 = chrono::Utc::now();
    let out =
        lifeboat_ok(lifeboat().args(["--config", cfg.to_str().unwrap(), "backup", "-o", "json"]));
    let m = json(&out.stdout);
    let list = json(
        &lifeboat()
            .args(["--config", cfg.to_str().unwrap(), "list", "-o", "json"])
            .output()
            .unwrap()
            .stdout,
    );
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let v = lifeboat_ok(lifeboat().args(["--config", cfg.to_str().unwrap(), "verify", "--all"]));
    // verify reports what the store says (HeadObject), not only what the manifest asked for.
    let out = String::from_utf8_lossy(&v.stdout);
    assert!(out.contains("sse AES256"), "{out}");
    assert!(out.contains("locked GOVERNANCE until "), "{out}");
    // The manifest records what was requested.
    assert_eq!(list[0]["sse"]["algorithm"], "AES256", "{list}");
    assert_eq!(list[0]["object_lock"]["mode"], "GOVERNANCE", "{list}");

    rt.block_on(async {
        let store = Store::from_config(&storage).await.unwrap();
        store.check().await.unwrap();
        let objects = store.list("").await.unwrap();
        assert_eq!(objects.len(), 2, "{objects:?}");
        assert!(objects.iter().any(|o| o.key.as_str().ends_with(".json")));
        let want_until = t0 + chrono::Duration::days(2);
        for o in &objects {
            let h = store.head(&o.key).await.unwrap();
            assert_eq!(h.sse.as_deref(), Some("AES256"), "{h:?}");
            // moto applies retention to single PutObjects (a small backup's data object and
            // the manifest); it ignores the headers on multipart uploads.
            assert_eq!(h.lock_mode.as_deref(), Some("GOVERNANCE"), "{h:?}");
            let until = h.retain_until.unwrap();
            assert!((until - want_until).num_seconds().abs() < 300, "{h:?}");
            match store.delete(&o.key).await {
                Err(StoreError::Locked { retain_until, .. }) => {
                    assert_eq!(retain_until, Some(until))
                }
                other => panic!("expected Locked for {}, got {other:?}", o.key),
            }
        }
        assert_eq!(store.list("").await.unwrap(), objects);
        let id = m["id"].as_str().unwrap();
        assert!(objects.iter().any(|o| o.key
            == ObjectKey::new(format!("{}/{id}.json", m["cluster_id"].as_str().unwrap()))
                .unwrap()));
    });
}

/// A backup killed with SIGKILL mid-upload leaves its multipart upload (no destructor runs);
/// `Store::remove_stale_uploads` keeps it while it is younger than the threshold and aborts it
/// once older, leaving nothing.
#[test]
fn sigkill_during_s3_backup_leaves_an_upload_that_cleanup_aborts() {
    let s3 = S3Server::start();
    let etcd = Etcd::start(EtcdOpts::default());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        fill_random(&etcd.client().await, 600, 64 * 1024, "/registry/secrets/s").await
    });
    let storage = s3.storage_config();
    let cfg = etcd.config_file_with_storage(&storage);
    let bin = assert_cmd::cargo::cargo_bin("etcd-lifeboat");
    let mut child = std::process::Command::new(bin)
        .args(["--config", cfg.to_str().unwrap(), "backup"])
        .env("ETCD_LIFEBOAT_COMPRESSION_LEVEL", "19") // slow enough to be caught mid-way
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the multipart upload has started (its first part is stored before the
    // upload goes on), then kill.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (_, uploads) = rt.block_on(objects_and_uploads(&storage));
        if !uploads.is_empty() {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "backup finished before its upload was seen"
        );
        assert!(std::time::Instant::now() < deadline, "no multipart upload");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Give the first part time to be stored (moto's ListParts cannot be read with the SDK).
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "backup finished too soon"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let (objects, uploads) = rt.block_on(objects_and_uploads(&storage));
    assert!(objects.is_empty(), "{objects:?}");
    assert_eq!(
        uploads.len(),
        1,
        "the killed run's upload is left: {uploads:?}"
    );

    rt.block_on(async {
        let store = Store::from_config(&storage).await.unwrap();
        let kept = store
            .remove_stale_uploads(Duration::from_secs(3600))
            .await
            .unwrap();
        assert!(kept.is_empty(), "younger than the threshold: {kept:?}");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let removed = store
            .remove_stale_uploads(Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(removed.len(), 1, "{removed:?}");
        assert!(removed[0].contains(".db.zst (upload "), "{removed:?}");
    });
    let (objects, uploads) = rt.block_on(objects_and_uploads(&storage));
    assert!(
        objects.is_empty() && uploads.is_empty(),
        "{objects:?} {uploads:?}"
    );
}

/// A config for `etcd` whose S3 store accepts connections and never answers (a hung proxy or
/// load balancer: a listener that holds every connection without writing a byte), with
/// `extra` YAML appended.
fn silent_s3_config(etcd: &Etcd, extra: &str) -> std::path::PathBuf {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming() {
            held.push(c);
        }
    });
    let mut storage = StorageConfig {
        backend: etcd_lifeboat::config::Backend::S3,
        ..Default::default()
    };
    storage.s3.bucket = "etcd-backups".into();
    storage.s3.region = Some("us-east-1".into());
    storage.s3.endpoint = Some(format!("http://127.0.0.1:{port}"));
    storage.s3.force_path_style = true;
    storage.s3.insecure = true;
    let cfg = etcd.config_file_with_storage(&storage);
    let yaml = std::fs::read_to_string(&cfg).unwrap() + extra;
    std::fs::write(&cfg, yaml).unwrap();
    cfg
}

/// Starts the binary with `args` and test credentials (no metadata lookup), stderr to `err`.
fn spawn_on_silent_store(args: &[&str], err: std::process::Stdio) -> std::process::Child {
    std::process::Command::new(assert_cmd::cargo::cargo_bin("etcd-lifeboat"))
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(std::process::Stdio::null())
        .stderr(err)
        .spawn()
        .unwrap()
}

/// After 3 s of running (asserted), SIGTERM to `child`; its exit status and how long it took
/// to stop, or `None` (and SIGKILL) when it still ran `limit` after the signal.
fn sigterm_after_3s(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<(std::process::ExitStatus, Duration)> {
    std::thread::sleep(Duration::from_secs(3));
    assert!(child.try_wait().unwrap().is_none(), "it ended early");
    let t = std::time::Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some((s, t.elapsed()));
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A store that accepts connections and never answers: a one-shot backup stopped with
/// SIGTERM exits within seconds, failed and without a backup, instead of sitting in the SDK's
/// timeouts (it took 15 minutes, ignoring the signal).
#[test]
fn sigterm_stops_a_backup_stalled_on_a_silent_store() {
    use std::os::unix::process::ExitStatusExt;
    let etcd = Etcd::start(EtcdOpts::default());
    let cfg = silent_s3_config(&etcd, "");
    let mut child = spawn_on_silent_store(
        &["--config", cfg.to_str().unwrap(), "backup", "--no-progress"],
        std::process::Stdio::piped(),
    );
    let Some((status, _)) = sigterm_after_3s(&mut child, Duration::from_secs(30)) else {
        panic!("the backup still ran 30 s after SIGTERM");
    };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        status.code(),
        Some(1),
        "{status:?} {:?}: {err}",
        status.signal()
    );
    assert!(err.contains("backup cancelled"), "{err}");
}

/// A store that ignores the lock headers on multipart uploads (moto does; so may other
/// S3-compatible stores): the backup is stored, but its manifest and `list` claim no lock, and
/// a warning says the backup is not immutable.
#[test]
fn object_lock_the_store_did_not_apply_is_not_claimed() {
    use etcd_lifeboat::config::{ObjectLockConfig, ObjectLockMode};
    let s3 = S3Server::start();
    let Some(bucket) = s3.create_bucket(true) else {
        eprintln!("external S3 endpoint: the Object Lock bucket test runs against moto only");
        return;
    };
    let etcd = Etcd::start(EtcdOpts::default());
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Over one 5 MiB part: a multipart upload, whose lock headers moto drops.
    rt.block_on(async {
        fill_random(&etcd.client().await, 120, 64 * 1024, "/registry/secrets/s").await
    });
    let mut storage = s3.storage_config_for_bucket(&bucket);
    storage.s3.object_lock = Some(ObjectLockConfig {
        mode: ObjectLockMode::Governance,
        retain_for: Duration::from_secs(86400),
    });
    let cfg = etcd.config_file_with_storage(&storage);
    let out = lifeboat_ok(lifeboat().args([
        "--config",
        cfg.to_str().unwrap(),
        "backup",
        "--no-progress",
        "-o",
        "json",
    ]));
    let m = json(&out.stdout);
    assert!(m["stored_bytes"].as_u64().unwrap() > 5 << 20, "{m}");
    assert!(m["object_lock"].is_null(), "{m}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("this backup is NOT immutable"), "{err}");
    let list = lifeboat_ok(lifeboat().args(["--config", cfg.to_str().unwrap(), "list"]));
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(!list.contains("locked"), "{list}");
}

/// The daemon on a store that accepts connections and never answers: SIGTERM stops it within
/// seconds (the catalog refresh and retention are dropped at shutdown, the backup gets its
/// grace), not after `--store-timeout` or the SDK's timeouts.
#[test]
fn sigterm_stops_the_daemon_on_a_silent_store() {
    let etcd = Etcd::start(EtcdOpts::default());
    let cfg = silent_s3_config(
        &etcd,
        &format!(
            "schedule:\n  cron: \"0 0 1 1 *\"\nhttp:\n  listen: \"127.0.0.1:{}\"\n",
            free_port()
        ),
    );
    let log = etcd.dir.path().join("daemon.log");
    let mut child = spawn_on_silent_store(
        &[
            "--config",
            cfg.to_str().unwrap(),
            "daemon",
            "--shutdown-grace",
            "2s",
        ],
        std::fs::File::create(&log).unwrap().into(),
    );
    let Some((_, took)) = sigterm_after_3s(&mut child, Duration::from_secs(25)) else {
        panic!(
            "the daemon still ran 25 s after SIGTERM:\n{}",
            std::fs::read_to_string(&log).unwrap()
        );
    };
    eprintln!("daemon stopped {took:?} after SIGTERM");
}
