//! `delete ID... [--dry-run] [--force]` through the binary, on real backups of a real etcd,
//! against the local store and S3 (moto): what is in the store afterwards is checked object by
//! object. Safety: never the newest backup without --force, unknown/invalid/broken ids delete
//! nothing, --dry-run deletes nothing, Object Lock is a clear error.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
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

/// One backup after a write (so each has its own revision); returns its manifest.
fn backup(etcd: &Etcd, cfg: &Path, n: usize) -> Value {
    etcd.etcdctl_ok(&["put", &format!("/registry/k{n}"), "v"]);
    let (code, out, err) = run_with_config(cfg, &["backup", "--no-progress", "-o", "json"]);
    assert_eq!(code, 0, "backup: {err}");
    json(out.as_bytes())
}

/// Every object key of the store, as a set.
fn keys(storage: &StorageConfig) -> BTreeSet<String> {
    store_keys(storage).into_iter().collect()
}

/// The keys a backup owns: manifest, data object, files object (when it has one).
fn own_keys(m: &Value) -> Vec<String> {
    let (c, id) = (m["cluster_id"].as_str().unwrap(), m["id"].as_str().unwrap());
    let mut k = vec![format!("{c}/{id}.json"), format!("{c}/{id}.db.zst")];
    if m["files"].is_object() {
        k.push(format!("{c}/{id}.files.tar.zst"));
    }
    k
}

fn listed_ids(cfg: &Path) -> Vec<String> {
    let (code, out, err) = run_with_config(cfg, &["list", "-o", "json"]);
    assert_eq!(code, 0, "list: {err}");
    json(out.as_bytes())
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["status"] != "broken")
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

fn local_storage(dir: &Path) -> StorageConfig {
    let mut s = StorageConfig::default();
    s.local.path = dir.to_path_buf();
    s
}

/// Local store, backups with a control-plane files object: every refusal leaves the store
/// exactly as it was; a delete removes the backup's three objects and nothing else.
#[test]
fn delete_on_the_local_store() {
    let etcd = Etcd::start(EtcdOpts::default());
    let store_dir = etcd.dir.path().join("store");
    let files_dir = etcd.dir.path().join("pki");
    std::fs::create_dir_all(&files_dir).unwrap();
    std::fs::write(files_dir.join("ca.crt"), "not really a cert").unwrap();
    let cfg: PathBuf = etcd.dir.path().join("lifeboat.yaml");
    std::fs::write(
        &cfg,
        format!(
            "{}backup:\n  files: [{}]\n  files_unencrypted: true\n",
            etcd.config_yaml(&store_dir),
            files_dir.display()
        ),
    )
    .unwrap();
    let storage = local_storage(&store_dir);
    let ms: Vec<Value> = (0..3).map(|i| backup(&etcd, &cfg, i)).collect();
    let id = |i: usize| ms[i]["id"].as_str().unwrap().to_string();
    let before = keys(&storage);
    assert_eq!(before.len(), 9, "{before:?}");
    for m in &ms {
        for k in own_keys(m) {
            assert!(before.contains(&k), "{k} not in {before:?}");
        }
    }

    // The newest backup needs --force.
    let (code, _, err) = run_with_config(&cfg, &["delete", &id(2)]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("newest backup") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(keys(&storage), before);

    // An unknown id among known ones: exit 1 naming it, nothing deleted.
    let (code, _, err) = run_with_config(
        &cfg,
        &["delete", &id(0), "20200101T000000Z-r0000000000000001"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("20200101T000000Z-r0000000000000001"), "{err}");
    assert!(err.contains("nothing was deleted"), "{err}");
    assert_eq!(keys(&storage), before);

    // Prefixes are not ids (delete is exact).
    let (code, _, err) = run_with_config(&cfg, &["delete", &id(0)[..8]]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(keys(&storage), before);

    // Ids that are not key segments are rejected before the store is read.
    for bad in ["../x", "a/b/c", ".hidden", "x\\y"] {
        let (code, _, err) = run_with_config(&cfg, &["delete", bad]);
        assert_eq!(code, 1, "{bad}: {err}");
        assert!(err.contains("is not a backup id"), "{bad}: {err}");
    }
    assert_eq!(keys(&storage), before);

    // --dry-run names the objects and deletes nothing.
    let (code, out, err) = run_with_config(&cfg, &["delete", &id(0), &id(1), "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("would delete {}", id(0))), "{out}");
    assert!(out.contains("nothing was deleted"), "{out}");
    for k in own_keys(&ms[0]) {
        assert!(out.contains(&k), "{k} not in {out}");
    }
    assert_eq!(keys(&storage), before);

    // A real delete of the oldest, written CLUSTER_ID/ID: its three objects go, nothing else.
    let qualified = format!("{}/{}", ms[0]["cluster_id"].as_str().unwrap(), id(0));
    let (code, out, err) = run_with_config(&cfg, &["delete", &qualified, "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let plan = json(out.as_bytes());
    assert_eq!(plan["dry_run"], false, "{plan}");
    assert_eq!(plan["backups"][0]["id"], id(0), "{plan}");
    let mut want = before.clone();
    for k in own_keys(&ms[0]) {
        want.remove(&k);
    }
    assert_eq!(keys(&storage), want);
    assert_eq!(listed_ids(&cfg), [id(2), id(1)]);

    // Deleting it again: unknown now.
    let (code, _, err) = run_with_config(&cfg, &["delete", &id(0)]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&id(0)), "{err}");

    // A broken manifest is not acted on.
    let cluster = ms[0]["cluster_id"].as_str().unwrap();
    let broken_id = "20200101T000000Z-r0000000000000009";
    std::fs::write(
        store_dir.join(cluster).join(format!("{broken_id}.json")),
        "{not json",
    )
    .unwrap();
    std::fs::write(
        store_dir.join(cluster).join(format!("{broken_id}.db.zst")),
        "x",
    )
    .unwrap();
    let with_broken = keys(&storage);
    let (code, _, err) = run_with_config(&cfg, &["delete", broken_id]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is broken"), "{err}");
    assert_eq!(keys(&storage), with_broken);

    // --force deletes the newest too; both remaining backups at once.
    let (code, out, err) = run_with_config(&cfg, &["delete", &id(2), &id(1), "--force"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2 backups deleted"), "{out}");
    let left = keys(&storage);
    assert_eq!(
        left,
        BTreeSet::from([
            format!("{cluster}/{broken_id}.json"),
            format!("{cluster}/{broken_id}.db.zst")
        ])
    );
    assert!(listed_ids(&cfg).is_empty());
}

/// S3 (moto): the same deletion through the S3 API, checked by listing the bucket; on an
/// Object Lock bucket the delete is refused with a clear error and nothing is removed.
#[test]
fn delete_on_s3_and_object_lock() {
    let s3 = S3Server::start();
    let etcd = Etcd::start(EtcdOpts::default());
    let storage = s3.storage_config();
    let cfg = etcd.config_file_with_storage(&storage);
    let ms: Vec<Value> = (0..3).map(|i| backup(&etcd, &cfg, i)).collect();
    let id = |i: usize| ms[i]["id"].as_str().unwrap().to_string();
    let before = keys(&storage);
    assert_eq!(before.len(), 6, "{before:?}");

    let (code, _, err) = run_with_config(&cfg, &["delete", &id(2)]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("newest backup"), "{err}");
    let (code, out, err) = run_with_config(&cfg, &["delete", &id(0), "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("would delete {}", id(0))), "{out}");
    assert_eq!(keys(&storage), before);

    let (code, out, err) = run_with_config(&cfg, &["delete", &id(0), &id(1)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2 backups deleted"), "{out}");
    assert_eq!(
        keys(&storage),
        own_keys(&ms[2]).into_iter().collect::<BTreeSet<_>>()
    );
    assert_eq!(listed_ids(&cfg), [id(2)]);

    // Object Lock: both backups are retained for a day; deleting the older one is refused
    // (the manifest says it is locked) with the date, and every object stays.
    use etcd_lifeboat::config::{ObjectLockConfig, ObjectLockMode};
    let Some(bucket) = s3.create_bucket(true) else {
        eprintln!("external S3 endpoint: the Object Lock part runs against moto only");
        return;
    };
    let mut locked = s3.storage_config_for_bucket(&bucket);
    locked.s3.object_lock = Some(ObjectLockConfig {
        mode: ObjectLockMode::Governance,
        retain_for: Duration::from_secs(86400),
    });
    let cfg = etcd.config_file_with_storage(&locked);
    let ls: Vec<Value> = (3..5).map(|i| backup(&etcd, &cfg, i)).collect();
    let before = keys(&locked);
    assert_eq!(before.len(), 4, "{before:?}");
    let old = ls[0]["id"].as_str().unwrap();
    let (code, _, err) = run_with_config(&cfg, &["delete", old]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("backup {old} was not deleted, nor any other"))
            && err.contains("Object Lock retention until"),
        "{err}"
    );
    assert_eq!(keys(&locked), before);
    // --force does not get around Object Lock either.
    let (code, _, err) = run_with_config(&cfg, &["delete", old, "--force"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(keys(&locked), before);

    // Retention the manifest does not record (as a bucket default would be): the manifest is
    // rewritten without `object_lock` and without retention of its own. The store refuses the
    // data object's delete: a clear error naming it; the manifest went first, so the backup is
    // no longer listed and its locked data object stays (an orphan for prune once deletable).
    let mut m = ls[0].clone();
    m.as_object_mut().unwrap().remove("object_lock");
    let c = m["cluster_id"].as_str().unwrap();
    let manifest_key = format!("{c}/{old}.json");
    let data_key = format!("{c}/{old}.db.zst");
    let mut plain = locked.clone();
    plain.s3.object_lock = None;
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = Store::from_config(&plain).await.unwrap();
        store
            .put_bytes(
                &etcd_lifeboat::store::ObjectKey::new(manifest_key.as_str()).unwrap(),
                serde_json::to_vec_pretty(&m).unwrap().into(),
            )
            .await
            .unwrap();
    });
    let (code, _, err) = run_with_config(&cfg, &["delete", old]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("refused to delete {data_key} of backup {old}"))
            && err.contains("Object Lock retention until"),
        "{err}"
    );
    let after = keys(&locked);
    assert!(!after.contains(&manifest_key), "{after:?}");
    assert!(after.contains(&data_key), "{after:?}");
    assert_eq!(listed_ids(&cfg), [ls[1]["id"].as_str().unwrap()]);
}
