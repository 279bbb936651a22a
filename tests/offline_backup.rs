//! `backup --from-data-dir`: a stopped etcd 3.5 member's data dir is stored as a verified
//! backup (no etcd connection), verified, restored and booted with every key; refused while
//! etcd runs on the dir (nothing stored); `status DIR/member/snap/db` works on the bare db.

use crate::common;
use crate::restore_util;

use std::path::Path;

use crate::common::{files_under, keygen, lifeboat, lifeboat_ok, Etcd, EtcdOpts, Version};
use crate::restore_util::{Cluster, MemberSpec, V};

/// Config with a local store and no etcd section: the data-dir backup needs no connection.
fn offline_config(work: &Path) -> std::path::PathBuf {
    let p = work.join("offline.yaml");
    std::fs::write(
        &p,
        format!(
            "storage:\n  backend: local\n  local:\n    path: {}\n",
            work.join("store").display()
        ),
    )
    .unwrap();
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn data_dir_backup_restores_and_boots() {
    let work = tempfile::tempdir().unwrap();
    let mut e = Etcd::start(EtcdOpts {
        version: Version::V3_5,
        ..Default::default()
    });
    let client = e.client().await;
    common::fill(&client, 300, 700, "/fill/").await;
    for i in 0..40 {
        e.etcdctl_ok(&["put", &format!("/fill/{i}"), "overwritten"]);
    }
    e.etcdctl_ok(&["del", "/fill/2", "/fill/3"]);
    let want = restore_util::dump(&e, &e.members[0].client_url);
    let cfg = offline_config(work.path());
    let data_dir = e.members[0].data_dir.clone();

    // While etcd runs on the dir: refused, exit 1, nothing stored.
    let out = lifeboat()
        .arg("--config")
        .arg(&cfg)
        .args(["backup", "--no-progress", "--from-data-dir"])
        .arg(&data_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("etcd is running on"), "{err}");
    assert!(err.contains("stop it first"), "{err}");
    assert!(
        files_under(&work.path().join("store")).is_empty(),
        "{:?}",
        files_under(&work.path().join("store"))
    );

    // Stopped cleanly: stored with source data-dir and the member's IDs.
    let member_id = {
        let out = e.etcdctl_ok(&["endpoint", "status", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        (
            v[0]["Status"]["header"]["member_id"].as_u64().unwrap(),
            v[0]["Status"]["header"]["cluster_id"].as_u64().unwrap(),
        )
    };
    e.stop_member(0);
    let db = data_dir.join("member/snap/db");
    let file_len = std::fs::metadata(&db).unwrap().len();
    let out = lifeboat_ok(
        lifeboat()
            .arg("--config")
            .arg(&cfg)
            .args(["backup", "--no-progress", "-o", "json", "--from-data-dir"])
            .arg(&data_dir),
    );
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(m["source"], "data-dir");
    assert_eq!(m["member_id"], format!("{:016x}", member_id.0));
    assert_eq!(m["cluster_id"], format!("{:016x}", member_id.1));
    assert_eq!(m["member_name"], "m0");
    assert!(m["consistent_index"].as_u64().unwrap() > 0, "{m}");
    let total_size = m["total_size"].as_u64().unwrap();
    assert!(total_size <= file_len, "{total_size} > {file_len}");
    // raw_sha256 is of the first total_size bytes of the db (what bbolt's meta covers).
    let bytes = std::fs::read(&db).unwrap();
    use sha2::Digest;
    assert_eq!(
        m["raw_sha256"].as_str().unwrap(),
        hex::encode(sha2::Sha256::digest(&bytes[..total_size as usize]))
    );

    // status of the bare db: works, same values as the manifest.
    let out = lifeboat_ok(lifeboat().args(["status", "-o", "json"]).arg(&db));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no sha256 trailer"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["revision"], m["revision"]);
    assert_eq!(st["hash"], m["hash"]);
    assert_eq!(st["totalKey"], m["total_key"]);

    // verify latest.
    let out = lifeboat_ok(
        lifeboat()
            .arg("--config")
            .arg(&cfg)
            .args(["verify", "latest"]),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("OK "), "{text}");

    // restore --from-store latest into a new dir, boot, same keys.
    let spec = MemberSpec::new("restored", work.path().join("restored.etcd"));
    lifeboat_ok(
        lifeboat()
            .arg("--config")
            .arg(&cfg)
            .args(["restore", "--from-store", "latest", "--name", "restored"])
            .arg("--initial-cluster")
            .arg(format!("restored={}", spec.peer_url()))
            .arg("--data-dir")
            .arg(&spec.data_dir),
    );
    let c = Cluster::boot(V::V3_5, std::slice::from_ref(&spec), "etcd-cluster");
    let got = restore_util::dump(&c, &spec.client_url());
    assert_eq!(got.len(), want.len());
    assert!(got == want, "keyspace differs after restore");
    c.etcdctl_ok(&["put", "/after", "1"]);
}

#[test]
fn not_a_data_dir_is_refused_with_the_path() {
    let work = tempfile::tempdir().unwrap();
    let cfg = offline_config(work.path());
    let out = lifeboat()
        .arg("--config")
        .arg(&cfg)
        .args(["backup", "--no-progress", "--from-data-dir"])
        .arg(work.path().join("nothing"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("member/snap/db"), "{err}");
    assert!(files_under(&work.path().join("store")).is_empty());
}

/// The data-dir backup goes through the same pipeline as a snapshot backup: age-encrypted
/// with the configured recipient, control-plane files beside it; verify and restore with the
/// identity.
#[tokio::test(flavor = "multi_thread")]
async fn data_dir_backup_is_encrypted_with_files() {
    let work = tempfile::tempdir().unwrap();
    let mut e = Etcd::start(EtcdOpts {
        version: Version::V3_5,
        ..Default::default()
    });
    e.etcdctl_ok(&["put", "/registry/secrets/default/s1", "secret-value-one"]);
    let want = restore_util::dump(&e, &e.members[0].client_url);
    let (key, public) = keygen(work.path(), "key.txt");
    let pki = work.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    std::fs::write(pki.join("ca.key"), b"ca key").unwrap();
    let cfg = work.path().join("enc.yaml");
    std::fs::write(
        &cfg,
        format!(
            "storage:\n  backend: local\n  local:\n    path: {}\nbackup:\n  files: [{}]\nencryption:\n  age_recipients: [\"{}\"]\n",
            work.path().join("store").display(),
            pki.display(),
            public.trim()
        ),
    )
    .unwrap();
    let data_dir = e.members[0].data_dir.clone();
    e.stop_member(0);
    let out = lifeboat_ok(
        lifeboat()
            .arg("--config")
            .arg(&cfg)
            .args(["backup", "--no-progress", "-o", "json", "--from-data-dir"])
            .arg(&data_dir),
    );
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(m["source"], "data-dir");
    assert!(m["data_key"].as_str().unwrap().ends_with(".db.zst.age"));
    assert_eq!(m["files"]["entries"].as_array().unwrap().len(), 2);
    let stored = files_under(&work.path().join("store"));
    assert!(
        stored
            .iter()
            .any(|p| p.to_string_lossy().ends_with(".files.tar.zst.age")),
        "{stored:?}"
    );
    for p in &stored {
        let b = std::fs::read(p).unwrap();
        assert!(
            !b.windows(16).any(|w| w == b"secret-value-one"),
            "{}",
            p.display()
        );
    }
    lifeboat_ok(
        lifeboat()
            .arg("--config")
            .arg(&cfg)
            .args(["verify", "latest", "--identity"])
            .arg(&key),
    );
    let spec = MemberSpec::new("restored", work.path().join("restored.etcd"));
    lifeboat_ok(
        lifeboat()
            .arg("--config")
            .arg(&cfg)
            .args(["restore", "--from-store", "latest", "--name", "restored"])
            .arg("--initial-cluster")
            .arg(format!("restored={}", spec.peer_url()))
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .arg("--identity")
            .arg(&key),
    );
    let c = Cluster::boot(V::V3_5, std::slice::from_ref(&spec), "etcd-cluster");
    assert!(restore_util::dump(&c, &spec.client_url()) == want);
}

/// A member whose WAL lives outside its data dir (etcd's `--wal-dir`, as in the systemd
/// cluster of the seeds): without `--wal-dir` the backup says to pass it; with it, the IDs
/// come from that WAL.
#[tokio::test(flavor = "multi_thread")]
async fn data_dir_backup_with_a_separate_wal_dir() {
    let work = tempfile::tempdir().unwrap();
    let mut e = Etcd::start(EtcdOpts {
        version: Version::V3_5,
        ..Default::default()
    });
    e.etcdctl_ok(&["put", "/k", "v"]);
    let status: serde_json::Value =
        serde_json::from_str(&e.etcdctl_ok(&["endpoint", "status", "-w", "json"])).unwrap();
    let cluster = format!(
        "{:016x}",
        status[0]["Status"]["header"]["cluster_id"]
            .as_u64()
            .unwrap()
    );
    let data_dir = e.members[0].data_dir.clone();
    e.stop_member(0);
    let wal = work.path().join("wal");
    std::fs::rename(data_dir.join("member/wal"), &wal).unwrap();
    let cfg = offline_config(work.path());
    let out = lifeboat()
        .arg("--config")
        .arg(&cfg)
        .args(["backup", "--no-progress", "--from-data-dir"])
        .arg(&data_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("pass that directory as --wal-dir"), "{err}");
    let out = lifeboat_ok(
        lifeboat()
            .arg("--config")
            .arg(&cfg)
            .args(["backup", "--no-progress", "-o", "json", "--from-data-dir"])
            .arg(&data_dir)
            .arg("--wal-dir")
            .arg(&wal),
    );
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(m["source"], "data-dir");
    assert_eq!(m["cluster_id"], cluster.as_str());
}
