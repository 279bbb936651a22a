//! Helpers of the restore tests (load `mod common;` too): etcd boots restored data dirs
//! through the one launcher of tests/common ([`Cluster::boot`] = `common::Etcd::boot`); here
//! are the keyspace dump and fill, etcdctl snapshot save, etcdutl restore/status, a file tree.
#![allow(dead_code)]

use std::path::Path;

#[allow(unused_imports)]
pub use crate::common::{
    etcdutl3530_bin as etcdutl_3_5_30, etcdutl_bin, etcdutl_restore, etcdutl_status,
    initial_cluster, Etcd as Cluster, MemberSpec, Version as V,
};

/// Every key and value under the whole keyspace, as etcdctl prints them (`get "" --prefix`
/// in JSON, keys and values base64), sorted by key.
pub fn dump(c: &Cluster, endpoint: &str) -> Vec<(String, String)> {
    let out = c.etcdctl_ok_at(
        endpoint,
        &["get", "", "--prefix", "-w", "json", "--consistency=s"],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut kv: Vec<(String, String)> = v["kvs"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["key"].as_str().unwrap().to_string(),
                        e["value"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    kv.sort();
    kv
}

/// Fills a running etcd with deletes, overwrites, a lease and large values; returns nothing,
/// the caller dumps the keyspace to compare.
pub fn populate(c: &Cluster, n: usize) {
    for i in 0..n {
        c.etcdctl_ok(&["put", &format!("/k/{i:05}"), &format!("value-{i}")]);
    }
    for i in (0..n).step_by(7) {
        c.etcdctl_ok(&["del", &format!("/k/{i:05}")]);
    }
    for i in (0..n).step_by(5) {
        c.etcdctl_ok(&["put", &format!("/k/{i:05}"), &format!("overwritten-{i}")]);
    }
    let lease = c.etcdctl_ok(&["lease", "grant", "3600"]);
    let id = lease.split_whitespace().nth(1).unwrap().to_string();
    c.etcdctl_ok(&["put", "--lease", &id, "/leased/a", "with-lease"]);
    // Large values (1 MiB each), through stdin (an argument is limited to 128 KiB).
    let big: Vec<u8> = (0..(1usize << 20)).map(|i| b'a' + (i % 26) as u8).collect();
    for i in 0..3 {
        c.put_stdin(&format!("/big/{i}"), &big);
    }
}

/// A kubeadm etcd static pod manifest (kubeadm `phases/etcd/local.go` `getEtcdCommand`:
/// `--initial-cluster-state=existing` only on joined nodes, no token flag) for member `m`
/// with image tag `tag` (e.g. `3.5.30-0`): etcd's `--data-dir` is `pod_data_dir`, mounted
/// from the host's `host_path`.
pub fn kubeadm_manifest(
    m: &MemberSpec,
    tag: &str,
    pod_data_dir: &str,
    host_path: &Path,
    initial_cluster: &str,
    joined: bool,
) -> String {
    let state = if joined {
        "\n    - --initial-cluster-state=existing"
    } else {
        ""
    };
    format!(
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
    - --data-dir={pod_data_dir}
    - --initial-advertise-peer-urls={peer}
    - --initial-cluster={initial_cluster}{state}
    - --listen-client-urls={client}
    - --listen-peer-urls={peer}
    - --name={name}
    - --snapshot-count=10000
    image: registry.k8s.io/etcd:{tag}
    name: etcd
    volumeMounts:
    - mountPath: {pod_data_dir}
      name: etcd-data
  hostNetwork: true
  volumes:
  - hostPath:
      path: {host}
      type: DirectoryOrCreate
    name: etcd-data
"#,
        client = m.client_url(),
        peer = m.peer_url(),
        name = m.name,
        host = host_path.display(),
    )
}

/// `etcdctl snapshot save` to `path`.
pub fn snapshot_save(c: &Cluster, path: &Path) {
    let o = c.etcdctl_at(
        &c.members[0].client_url,
        &["snapshot", "save", path.to_str().unwrap()],
    );
    assert!(
        o.status.success(),
        "snapshot save: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Every file under `dir` (relative paths, sorted).
pub fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    out.push(format!("{}/", p.strip_prefix(base).unwrap().display()));
                    walk(base, &p, out);
                } else {
                    out.push(p.strip_prefix(base).unwrap().display().to_string());
                }
            }
        }
    }
    let mut v = vec![];
    walk(dir, dir, &mut v);
    v.sort();
    v
}
