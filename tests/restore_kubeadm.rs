//! `--kubeadm-manifest`: name, data dir, peer URLs and initial cluster come from a kubeadm etcd
//! static pod manifest (the shape of seed 003); etcd started with the manifest's own flags
//! boots from the restored data dir with every key.

mod restore_util;

use etcd_lifeboat::restore::{run, RestoreOptions};
use restore_util::*;

#[tokio::test(flavor = "multi_thread")]
async fn restore_from_kubeadm_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let src = Cluster::start(
        V::V3_5,
        vec![MemberSpec::new("src", dir.path().join("src.etcd"))],
        "t",
        dir.path(),
    );
    populate(&src, 40);
    let want = dump(&src, &src.members[0].client_url());
    let snap = dir.path().join("snap.db");
    snapshot_save(&src, &snap);
    drop(src);

    let name = "e1192523-1d5d-43fa-b0ed-80cfffed0de0";
    let spec = MemberSpec::new(name, dir.path().join("var-lib-etcd"));
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  labels: {{component: etcd, tier: control-plane}}
  name: etcd
  namespace: kube-system
spec:
  containers:
  - command:
    - etcd
    - --advertise-client-urls={client}
    - --data-dir={data}
    - --initial-advertise-peer-urls={peer}
    - --initial-cluster={name}={peer}
    - --listen-client-urls={client}
    - --listen-peer-urls={peer}
    - --name={name}
    - --snapshot-count=10000
    image: registry.k8s.io/etcd:3.5.1-0
    name: etcd
    volumeMounts:
    - mountPath: {data}
      name: etcd-data
  hostNetwork: true
  volumes:
  - hostPath:
      path: {data}
      type: DirectoryOrCreate
    name: etcd-data
"#,
        client = spec.client_url(),
        peer = spec.peer_url(),
        data = spec.data_dir.display(),
    );
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
    let c = Cluster::start(V::V3_5, vec![spec.clone()], "etcd-cluster", dir.path());
    assert_eq!(dump(&c, &spec.client_url()), want);
    c.ok(&["put", "/after", "1"]);
}
