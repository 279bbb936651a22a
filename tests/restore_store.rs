//! `--from-store`: a backup taken by `etcd-lifeboat backup` from etcd 3.4 into a local store
//! (.db.zst + manifest) restored into one etcd 3.4 member boots with every key; a corrupted
//! stored object is refused against its manifest and nothing is written.

use crate::common;
use crate::restore_util;

use std::path::Path;

use crate::common::{lifeboat, Etcd, EtcdOpts, Version};
use crate::restore_util::{Cluster, MemberSpec, V};
use etcd_lifeboat::restore::{run, RestoreOptions};

/// A 3.4 source with overwrites, deletes, a lease and 1 MiB values, backed up to `store`.
async fn backup_of_3_4(work: &Path) -> (Etcd, std::path::PathBuf, Vec<(String, String)>) {
    let e = Etcd::start(EtcdOpts {
        version: Version::V3_4,
        ..Default::default()
    });
    let client = e.client().await;
    common::fill(&client, 400, 512, "/fill/").await;
    for i in 0..50 {
        e.etcdctl_ok(&["put", &format!("/fill/{i}"), "overwritten"]);
    }
    // Deletes: the range [/fill/2, /fill/3).
    e.etcdctl_ok(&["del", "/fill/2", "/fill/3"]);
    let lease = e.etcdctl_ok(&["lease", "grant", "3600"]);
    let id = lease.split_whitespace().nth(1).unwrap().to_string();
    e.etcdctl_ok(&["put", "--lease", &id, "/leased", "v"]);
    let mut c = client.clone();
    c.put("/big/1", vec![b'x'; 1 << 20], None).await.unwrap();
    let want = restore_util::dump(&e, &e.members[0].client_url);
    let store = work.join("store");
    let cfg = e.write_config(&store);
    lifeboat()
        .arg("--config")
        .arg(&cfg)
        .arg("backup")
        .assert()
        .success();
    (e, cfg, want)
}

#[tokio::test(flavor = "multi_thread")]
async fn from_store_into_one_etcd_3_4_member() {
    let work = tempfile::tempdir().unwrap();
    // The source stays up (its temp dir holds the config); the restore does not contact it.
    let (_src, cfg, want) = backup_of_3_4(work.path()).await;

    let spec = MemberSpec::new("restored", work.path().join("restored.etcd"));
    // The dry run names the backup `latest` resolved to.
    let id = String::from_utf8(
        lifeboat()
            .arg("--config")
            .arg(&cfg)
            .args(["list", "-o", "json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let id: serde_json::Value = serde_json::from_str(&id).unwrap();
    let id = id[0]["id"].as_str().unwrap().to_string();
    let out = lifeboat()
        .arg("--config")
        .arg(&cfg)
        .args([
            "restore",
            "--from-store",
            "latest",
            "--dry-run",
            "--name",
            "restored",
        ])
        .arg("--initial-cluster")
        .arg(format!("restored={}", spec.peer_url()))
        .arg("--data-dir")
        .arg(&spec.data_dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("store backup {id} (latest)")),
        "{text}"
    );
    run(
        RestoreOptions {
            from_store: Some("latest".into()),
            name: Some("restored".into()),
            initial_cluster: Some(format!("restored={}", spec.peer_url())),
            data_dir: Some(spec.data_dir.clone()),
            ..Default::default()
        },
        Some(&cfg),
    )
    .await
    .unwrap();
    // No decompressed temp file left beside the data dir.
    let names: Vec<String> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(names.is_empty(), "{names:?}");

    let c = Cluster::boot(V::V3_4, std::slice::from_ref(&spec), "etcd-cluster");
    let got = restore_util::dump(&c, &spec.client_url());
    assert_eq!(got.len(), want.len());
    assert!(got == want, "keyspace differs after restore");
    c.etcdctl_ok(&["put", "/after", "1"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupted_stored_object_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let (_src, cfg, _) = backup_of_3_4(work.path()).await;
    // Flip one byte in the middle of the stored .db.zst.
    let zst = walk(&work.path().join("store"))
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(".db.zst"))
        .unwrap();
    let mut b = std::fs::read(&zst).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x55;
    std::fs::write(&zst, b).unwrap();

    let target = work.path().join("out");
    let before = restore_util::tree(work.path());
    let e = run(
        RestoreOptions {
            from_store: Some("latest".into()),
            data_dir: Some(target.clone()),
            ..Default::default()
        },
        Some(&cfg),
    )
    .await
    .unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("corrupted"), "{msg}");
    assert_eq!(restore_util::tree(work.path()), before, "nothing written");
}

fn walk(d: &Path) -> Vec<std::path::PathBuf> {
    let mut v = vec![];
    for e in std::fs::read_dir(d).unwrap().flatten() {
        if e.path().is_dir() {
            v.extend(walk(&e.path()));
        } else {
            v.push(e.path());
        }
    }
    v
}
