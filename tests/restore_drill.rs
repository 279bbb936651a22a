//! The README's restore drill, through the binary: back up a TLS etcd 3.5 member, lose it,
//! restore from the store into a new data dir, start etcd on it, check every key and a write.

use crate::common::*;

#[test]
fn backup_lose_restore_from_store_start_check() {
    let mut etcd = Etcd::start(EtcdOpts {
        version: Version::V3_5,
        tls: true,
        ..Default::default()
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async { fill(&etcd.client().await, 300, 300, "/registry/pods/").await });
    etcd.etcdctl_ok(&["del", "/registry/pods/00000007"]);
    let before = etcd.etcdctl_ok(&["get", "/registry/", "--prefix", "-w", "json"]);
    let before: serde_json::Value = serde_json::from_str(&before).unwrap();

    let store = etcd.dir.path().join("store");
    let cfg = etcd.write_config(&store);
    lifeboat()
        .args(["--config", cfg.to_str().unwrap(), "backup"])
        .assert()
        .success();

    // The member is lost: stop it and set its data dir aside (never delete data in a drill).
    etcd.stop_member(0);
    let old = etcd.members[0].data_dir.clone();
    std::fs::rename(&old, old.with_extension("lost")).unwrap();

    let m = &etcd.members[0];
    let args = [
        "--config",
        cfg.to_str().unwrap(),
        "restore",
        "--from-store",
        "latest",
        "--data-dir",
        old.to_str().unwrap(),
        "--name",
        &m.name,
        "--initial-cluster",
        &format!("{}={}", m.name, m.peer_url),
        "--initial-advertise-peer-urls",
        &m.peer_url,
        "--initial-cluster-token",
        "restored",
    ];
    // A dry run prints the plan and writes nothing.
    lifeboat_ok(lifeboat().args(args).arg("--dry-run"));
    assert!(!old.exists());

    let out = lifeboat_ok(lifeboat().args(args));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("--initial-cluster-state"),
        "start instructions missing:\n{text}"
    );
    assert!(old.join("member/snap/db").is_file() && old.join("member/wal").is_dir());

    // Restoring again into the now non-empty dir is refused and leaves it as it is.
    let again = lifeboat().args(args).output().unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("not empty"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    etcd.restart_member(0);
    let after = etcd.etcdctl_ok(&["get", "/registry/", "--prefix", "-w", "json"]);
    let after: serde_json::Value = serde_json::from_str(&after).unwrap();
    let kvs = |v: &serde_json::Value| {
        v["kvs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|kv| (kv["key"].clone(), kv["value"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(kvs(&before).len(), 299);
    assert_eq!(kvs(&after), kvs(&before));
    etcd.etcdctl_ok(&["put", "/registry/after-restore", "ok"]);
    let members = etcd.etcdctl_ok(&["member", "list"]);
    assert_eq!(members.lines().count(), 1, "{members}");
}
