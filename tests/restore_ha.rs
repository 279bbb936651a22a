//! HA kubeadm control plane: three nodes whose static pod manifests were written as kubeadm
//! writes them when nodes 2 and 3 joined later (node 1: only itself; node 2: nodes 1-2 with
//! `--initial-cluster-state=existing`; node 3: all three, `existing`). A restore from one such
//! manifest alone is refused with both member lists; the same command on each node with the
//! snapshot's membership (`--members-from-snapshot`, or `--initial-cluster` with the full
//! list) gives one healthy 3-member cluster: one cluster ID, each member its own ID, the IDs
//! etcd derives from the peer URLs and token (here equal to the original cluster's).

use std::path::PathBuf;

use crate::restore_util::*;
use etcd_lifeboat::restore::{run, RestoreError, RestoreOptions};

fn member_ids(c: &Cluster, endpoint: &str) -> (u64, Vec<u64>) {
    let out = c.etcdctl_ok_at(endpoint, &["member", "list", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut ids: Vec<u64> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["ID"].as_u64().unwrap())
        .collect();
    ids.sort();
    (v["header"]["cluster_id"].as_u64().unwrap(), ids)
}

#[tokio::test(flavor = "multi_thread")]
async fn kubeadm_ha_nodes_restore_into_one_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let specs: Vec<MemberSpec> = (1..=3)
        .map(|i| MemberSpec::new(&format!("cp{i}"), dir.path().join(format!("orig{i}"))))
        .collect();
    let src = Cluster::boot(V::V3_5_30, &specs, "etcd-cluster");
    populate(&src, 30);
    let want = dump(&src, &specs[0].client_url());
    let (orig_cluster, orig_ids) = member_ids(&src, &specs[0].client_url());
    let snap = dir.path().join("snap.db");
    snapshot_save(&src, &snap);
    drop(src); // the control plane is lost; the nodes keep their addresses

    // The manifests as kubeadm wrote them: node 1 by `kubeadm init`, 2 and 3 by `join`.
    let ic = |n: usize| {
        specs[..n]
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut paths: Vec<(PathBuf, PathBuf)> = Vec::new();
    for (i, m) in specs.iter().enumerate() {
        let node = dir.path().join(format!("node{}", i + 1));
        std::fs::create_dir_all(node.join("manifests")).unwrap();
        let host = node.join("var-lib-etcd");
        let mp = node.join("manifests/etcd.yaml");
        std::fs::write(
            &mp,
            kubeadm_manifest(m, "3.5.30-0", "/var/lib/etcd", &host, &ic(i + 1), i > 0),
        )
        .unwrap();
        paths.push((mp, host));
    }

    // Each manifest alone is refused: node 1 lists one member, nodes 2 and 3 joined.
    for (i, (mp, host)) in paths.iter().enumerate() {
        let err = run(
            RestoreOptions {
                snapshot: Some(snap.clone()),
                kubeadm_manifest: Some(mp.clone()),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(matches!(err, RestoreError::Usage(_)), "{msg}");
        assert!(
            msg.contains(&format!("Manifest's members ({}): {}", i + 1, ic(i + 1))),
            "{msg}"
        );
        assert!(msg.contains("Snapshot's members (3)"), "{msg}");
        for m in &specs {
            assert!(
                msg.contains(&format!("{}={}", m.name, m.peer_url())),
                "{msg}"
            );
        }
        assert!(
            msg.contains(&format!("--initial-cluster={}", ic(3))),
            "{msg}"
        );
        assert!(msg.contains("--members-from-snapshot"), "{msg}");
        if i > 0 {
            assert!(msg.contains("--initial-cluster-state=existing"), "{msg}");
        }
        assert!(!host.exists(), "nothing written for a refused restore");
    }

    // The dry run prints the snapshot's membership and the default bump, and writes nothing.
    let o = assert_cmd::Command::cargo_bin("etcd-lifeboat")
        .unwrap()
        .args([
            "restore",
            "--dry-run",
            "-o",
            "json",
            "--members-from-snapshot",
        ])
        .arg("--snapshot")
        .arg(&snap)
        .arg("--kubeadm-manifest")
        .arg(&paths[1].0)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut names: Vec<&str> = report["snapshot_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["cp1", "cp2", "cp3"]);
    let bump = &report["revision_bump"];
    assert_eq!(
        bump["new_revision"].as_i64().unwrap() - bump["old_revision"].as_i64().unwrap(),
        1_000_000_000
    );
    assert_eq!(report["members"][0]["name"], "cp2");
    assert!(report["reminders"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r.as_str().unwrap().contains("watch cache")));
    assert!(!paths[1].1.exists());

    // The fix, on every node: --members-from-snapshot (nodes 1, 2) or the full list (node 3).
    for (i, (mp, host)) in paths.iter().enumerate() {
        std::fs::create_dir(host).unwrap(); // kubelet's DirectoryOrCreate
        let mut args = RestoreOptions {
            snapshot: Some(snap.clone()),
            kubeadm_manifest: Some(mp.clone()),
            ..Default::default()
        };
        if i < 2 {
            args.members_from_snapshot = true;
        } else {
            args.initial_cluster = Some(ic(3));
        }
        run(args, None).await.unwrap();
        assert!(host.join("member/snap/db").is_file());
    }

    let restored: Vec<MemberSpec> = specs
        .iter()
        .zip(&paths)
        .map(|(m, (_, host))| MemberSpec {
            data_dir: host.clone(),
            ..m.clone()
        })
        .collect();
    let c = Cluster::boot(V::V3_5_30, &restored, "etcd-cluster");
    let mut seen = Vec::new();
    for m in &restored {
        let (cluster, ids) = member_ids(&c, &m.client_url());
        assert_eq!(ids.len(), 3, "{ids:?}");
        seen.push((cluster, ids));
        assert_eq!(dump(&c, &m.client_url()), want, "keys on {}", m.name);
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
    // IDs derive from the peer URLs and the token exactly as etcd derives them: the same
    // scheme as the original cluster (same URLs, same default token: the same IDs).
    assert_eq!(seen[0], (orig_cluster, orig_ids));
    // --out-dir from the snapshot's membership: the same cluster and member IDs, every member.
    let out = dir.path().join("all");
    let o = assert_cmd::Command::cargo_bin("etcd-lifeboat")
        .unwrap()
        .args(["restore", "-o", "json", "--members-from-snapshot"])
        .arg("--snapshot")
        .arg(&snap)
        .arg("--out-dir")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["cluster_id"], format!("{:016x}", seen[0].0));
    let mut ids: Vec<u64> = report["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| u64::from_str_radix(m["id"].as_str().unwrap(), 16).unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, seen[0].1);
    for m in &specs {
        assert!(out.join(&m.name).join("member/snap/db").is_file());
    }

    c.etcdctl_ok_at(&restored[2].client_url(), &["put", "/after-restore", "1"]);
    let got = c.etcdctl_ok_at(
        &restored[0].client_url(),
        &["get", "/after-restore", "--print-value-only"],
    );
    assert_eq!(got.trim(), "1");
}
