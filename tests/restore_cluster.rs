//! Restored data dirs boot real etcd: a populated 3.5 snapshot restored with --out-dir into
//! 3 members forms a healthy 3.5 cluster with every key; a .db.zst restored into one 3.4
//! member boots with every key. Member and cluster IDs equal etcdutl 3.5's.

use std::path::Path;

use crate::restore_util::*;
use etcd_lifeboat::restore::{ids, run, RestoreOptions};

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap()
}

/// Starts a 3.5 source, populates it and saves a snapshot; returns the keyspace dump.
fn source_snapshot(dir: &Path, v: V, n: usize) -> (std::path::PathBuf, Vec<(String, String)>) {
    let m = MemberSpec::new("src", dir.join("src.etcd"));
    let c = Cluster::boot(v, &[m], "src-token");
    populate(&c, n);
    let want = dump(&c, &c.members[0].client_url);
    let snap = dir.join("snap.db");
    snapshot_save(&c, &snap);
    (snap, want)
}

#[tokio::test(flavor = "multi_thread")]
async fn out_dir_three_members_boot_etcd_3_5() {
    let dir = tempfile::tempdir().unwrap();
    let (snap, want) = source_snapshot(dir.path(), V::V3_5, 300);
    assert!(want.len() > 250);

    let out = dir.path().join("restored");
    let specs: Vec<MemberSpec> = ["m1", "m2", "m3"]
        .iter()
        .map(|n| MemberSpec::new(n, out.join(n)))
        .collect();
    let ic = initial_cluster(&specs);
    run(
        RestoreOptions {
            snapshot: Some(snap.clone()),
            initial_cluster: Some(ic.clone()),
            initial_cluster_token: Some("restored-token".into()),
            out_dir: Some(out.clone()),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();

    // The same IDs as etcdutl 3.5 gives for the same flags: its WAL (metadata record: node and
    // cluster ID; conf changes: member IDs) equals ours, compared before etcd appends to it.
    let refdir = dir.path().join("ref-m1");
    let peer = specs[0].peer_url();
    etcdutl_restore(&snap, "m1", &ic, "restored-token", &peer, &refdir);
    let wal = "member/wal/0000000000000000-0000000000000000.wal";
    let a = std::fs::read(refdir.join(wal)).unwrap();
    let b = std::fs::read(out.join("m1").join(wal)).unwrap();
    assert!(
        a == b,
        "WAL (metadata: node and cluster IDs) differs from etcdutl's"
    );
    let c = Cluster::boot(V::V3_5, &specs, "restored-token");
    // One cluster ID, the one etcdutl derives; 3 members with etcdutl's IDs.
    let urls: Vec<String> = specs.iter().map(|s| s.peer_url()).collect();
    let want_ids: Vec<u64> = urls
        .iter()
        .map(|u| ids::member_id(std::slice::from_ref(u), "restored-token"))
        .collect();
    let want_cid = ids::cluster_id(&want_ids);
    let ml = json(&c.etcdctl_ok(&["member", "list", "-w", "json"]));
    let mut got_ids: Vec<u64> = ml["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["ID"].as_u64().unwrap())
        .collect();
    got_ids.sort();
    let mut w = want_ids.clone();
    w.sort();
    assert_eq!(got_ids, w);
    for s in &specs {
        let st = json(&c.etcdctl_ok_at(&s.client_url(), &["endpoint", "status", "-w", "json"]));
        assert_eq!(
            st[0]["Status"]["header"]["cluster_id"].as_u64().unwrap(),
            want_cid
        );
        assert_eq!(dump(&c, &s.client_url()), want, "keyspace of {}", s.name);
    }
    // Writes are accepted and visible on every member.
    c.etcdctl_ok(&["put", "/after/restore", "yes"]);
    for s in &specs {
        let v = c.etcdctl_ok_at(
            &s.client_url(),
            &["get", "/after/restore", "--print-value-only"],
        );
        assert_eq!(v.trim(), "yes");
    }
    let st = json(&c.etcdctl_ok(&["endpoint", "health", "-w", "json"]));
    assert_eq!(st.as_array().unwrap().len(), 3);
    assert!(st
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["health"].as_bool() == Some(true)));
}

#[tokio::test(flavor = "multi_thread")]
async fn zst_into_one_etcd_3_4_member() {
    let dir = tempfile::tempdir().unwrap();
    let (snap, want) = source_snapshot(dir.path(), V::V3_4, 120);
    let zst = dir.path().join("snap.db.zst");
    let raw = std::fs::read(&snap).unwrap();
    std::fs::write(&zst, zstd::encode_all(&raw[..], 3).unwrap()).unwrap();

    let spec = MemberSpec::new("solo", dir.path().join("data").join("solo.etcd"));
    run(
        RestoreOptions {
            snapshot: Some(zst),
            name: Some("solo".into()),
            initial_cluster: Some(format!("solo={}", spec.peer_url())),
            initial_advertise_peer_urls: Some(spec.peer_url()),
            data_dir: Some(spec.data_dir.clone()),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    // Only the data dir is left (no temp files beside it).
    let left: Vec<_> = std::fs::read_dir(dir.path().join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("solo.etcd")]);
    let c = Cluster::boot(V::V3_4, std::slice::from_ref(&spec), "etcd-cluster");
    assert_eq!(dump(&c, &spec.client_url()), want);
    c.etcdctl_ok(&["put", "/after", "1"]);
    let st = json(&c.etcdctl_ok(&["endpoint", "status", "-w", "json"]));
    let want_id = ids::member_id(&[spec.peer_url()], "etcd-cluster");
    assert_eq!(
        st[0]["Status"]["header"]["member_id"].as_u64().unwrap(),
        want_id
    );
    assert_eq!(
        st[0]["Status"]["header"]["cluster_id"].as_u64().unwrap(),
        ids::cluster_id(&[want_id])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn separate_wal_dir_boots_etcd_3_5() {
    let dir = tempfile::tempdir().unwrap();
    let (snap, want) = source_snapshot(dir.path(), V::V3_5, 60);
    let mut spec = MemberSpec::new("w", dir.path().join("data"));
    spec.wal_dir = Some(dir.path().join("wal-disk").join("wal"));
    run(
        RestoreOptions {
            snapshot: Some(snap),
            name: Some("w".into()),
            initial_cluster: Some(format!("w={}", spec.peer_url())),
            data_dir: Some(spec.data_dir.clone()),
            wal_dir: spec.wal_dir.clone(),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    assert!(!spec.data_dir.join("member/wal").exists());
    assert_eq!(
        tree(spec.wal_dir.as_ref().unwrap()),
        ["0000000000000000-0000000000000000.wal"]
    );
    let c = Cluster::boot(V::V3_5, std::slice::from_ref(&spec), "etcd-cluster");
    assert_eq!(dump(&c, &spec.client_url()), want);
    c.etcdctl_ok(&["put", "/after", "1"]);
}
