//! `--kubeadm-manifest`: name, data dir, peer URLs and initial cluster come from a kubeadm etcd
//! static pod manifest (the shape of seed 003); etcd started with the manifest's own flags
//! boots from the restored data dir with every key.

use crate::restore_util::*;
use etcd_lifeboat::restore::{run, RestoreOptions};

#[tokio::test(flavor = "multi_thread")]
async fn restore_from_kubeadm_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let src = Cluster::boot(
        V::V3_5,
        &[MemberSpec::new("src", dir.path().join("src.etcd"))],
        "t",
    );
    populate(&src, 40);
    let want = dump(&src, &src.members[0].client_url);
    let snap = dir.path().join("snap.db");
    snapshot_save(&src, &snap);
    drop(src);

    let name = "e1192523-1d5d-43fa-b0ed-80cfffed0de0";
    let spec = MemberSpec::new(name, dir.path().join("var-lib-etcd"));
    let data = spec.data_dir.to_str().unwrap();
    let ic = format!("{name}={}", spec.peer_url());
    let manifest = kubeadm_manifest(&spec, "3.5.1-0", data, &spec.data_dir, &ic, false);
    let mpath = dir.path().join("etcd.yaml");
    std::fs::write(&mpath, manifest).unwrap();
    // kubelet's DirectoryOrCreate made the (empty) data dir already.
    std::fs::create_dir(&spec.data_dir).unwrap();

    run(
        RestoreOptions {
            snapshot: Some(snap),
            kubeadm_manifest: Some(mpath),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    assert!(spec
        .data_dir
        .join("member/wal/0000000000000000-0000000000000000.wal")
        .is_file());

    // Token absent from the manifest: etcd's default "etcd-cluster", as the restore used.
    let c = Cluster::boot(V::V3_5, std::slice::from_ref(&spec), "etcd-cluster");
    assert_eq!(dump(&c, &spec.client_url()), want);
    c.etcdctl_ok(&["put", "/after", "1"]);
}

/// A full `--initial-cluster` that lacks the manifest's member name: the error says the name
/// came from the manifest (the operator never typed `--name`) and how to override it.
#[tokio::test(flavor = "multi_thread")]
async fn a_name_from_the_manifest_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let spec = MemberSpec::new("m2", dir.path().join("var-lib-etcd"));
    let data = spec.data_dir.to_str().unwrap();
    let ic = format!("m2={}", spec.peer_url());
    let manifest = kubeadm_manifest(&spec, "3.5.1-0", data, &spec.data_dir, &ic, false);
    let mpath = dir.path().join("etcd.yaml");
    std::fs::write(&mpath, manifest).unwrap();
    let src = Cluster::boot(
        V::V3_5,
        &[MemberSpec::new("src", dir.path().join("src.etcd"))],
        "t",
    );
    let snap = dir.path().join("snap.db");
    snapshot_save(&src, &snap);
    drop(src);
    let err = run(
        RestoreOptions {
            snapshot: Some(snap),
            kubeadm_manifest: Some(mpath),
            initial_cluster: Some("cp1=http://127.0.0.1:1,cp2=http://127.0.0.1:2".into()),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("couldn't find local name \"m2\""), "{err}");
    assert!(
        err.contains("--name was taken from the --kubeadm-manifest; give --name to override it"),
        "{err}"
    );
    assert!(!spec.data_dir.exists());
}
