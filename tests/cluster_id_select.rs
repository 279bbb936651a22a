//! A single-cluster config without `name` is the cluster named by its etcd cluster ID (issue
//! 15). With the backups of two etcd clusters in one store, `--cluster <cluster-id>` makes
//! `list`, `verify`, `prune`, `delete` and `restore --from-store` see that cluster's backups
//! only; `prune` leaves the other cluster's objects alone (they are not its orphans); `backup`
//! refuses a cluster ID; a `--cluster` that is neither a name nor an ID is refused with a hint.

use std::path::Path;

use serde_json::Value;

use crate::common::{
    files_under, lifeboat, lifeboat_ok, list_json, run_with_config, Etcd, EtcdOpts,
};

/// `etcd-lifeboat --config CFG ARGS...`, which must succeed: its stdout.
fn ok(cfg: &Path, args: &[&str]) -> String {
    let out = lifeboat_ok(lifeboat().arg("--config").arg(cfg).args(args));
    String::from_utf8(out.stdout).unwrap()
}

/// `etcd-lifeboat --config CFG ARGS...`, which must fail: (exit code, stderr).
fn fails(cfg: &Path, args: &[&str]) -> (i32, String) {
    let (code, _, stderr) = run_with_config(cfg, args);
    assert_ne!(code, 0, "{args:?} succeeded");
    (code, stderr)
}

/// `list --cluster ID -o json`: the ids of the backups listed.
fn ids(cfg: &Path, cluster: &str) -> Vec<String> {
    let v: Vec<Value> =
        serde_json::from_str(&ok(cfg, &["list", "--cluster", cluster, "-o", "json"])).unwrap();
    v.iter()
        .map(|m| {
            assert_eq!(m["cluster_id"], cluster, "{m}");
            m["id"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn unnamed_config_selects_backups_by_etcd_cluster_id() {
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let (a, b) = (
        Etcd::start(EtcdOpts::default()),
        Etcd::start(EtcdOpts::default()),
    );
    a.etcdctl_ok(&["put", "/who", "a"]);
    // B ends at a higher revision than A, so a restore shows whose backup it took.
    for i in 0..5 {
        b.etcdctl_ok(&["put", "/who", &format!("b{i}")]);
    }
    let keep_one =
        "retention:\n  keep_last: 1\n  keep_hourly: 0\n  keep_daily: 0\n  keep_weekly: 0\n  keep_monthly: 0\n";
    let cfg_a = work.path().join("a.yaml");
    std::fs::write(&cfg_a, a.config_yaml(&store) + keep_one).unwrap();
    let cfg_b = work.path().join("b.yaml");
    std::fs::write(&cfg_b, b.config_yaml(&store) + keep_one).unwrap();

    let backup = |cfg: &Path| -> Value {
        serde_json::from_str(&ok(cfg, &["backup", "--no-progress", "-o", "json"])).unwrap()
    };
    let a1 = backup(&cfg_a);
    a.etcdctl_ok(&["put", "/who", "a2"]);
    let a2 = backup(&cfg_a);
    let b1 = backup(&cfg_b);
    let (id_a, id_b) = (
        a1["cluster_id"].as_str().unwrap().to_string(),
        b1["cluster_id"].as_str().unwrap().to_string(),
    );
    assert_ne!(id_a, id_b);
    assert_eq!(
        list_json(&cfg_a).len(),
        3,
        "without --cluster: every backup"
    );
    // The table says whose each backup is, and how to pick one.
    let table = ok(&cfg_a, &["list"]);
    assert!(table.starts_with("CLUSTER ID"), "{table}");
    for m in [&a1, &a2, &b1] {
        let id = m["id"].as_str().unwrap();
        let line = table.lines().find(|l| l.contains(id)).expect(id);
        assert!(
            line.starts_with(m["cluster_id"].as_str().unwrap()),
            "{table}"
        );
    }
    assert!(
        table.contains("backups of 2 etcd clusters; --cluster <cluster-id> selects one"),
        "{table}"
    );
    let one = ok(&cfg_a, &["list", "--cluster", &id_b]);
    assert!(one.starts_with("ID "), "{one}");

    // list: one cluster's backups each.
    assert_eq!(ids(&cfg_a, &id_a).len(), 2);
    assert_eq!(ids(&cfg_a, &id_b), [b1["id"].as_str().unwrap()]);
    assert!(ids(&cfg_a, "0123456789abcdef").is_empty());

    // verify --all: only B's backup.
    let out = ok(&cfg_a, &["verify", "--all", "--cluster", &id_b]);
    assert!(out.contains(b1["id"].as_str().unwrap()), "{out}");
    assert!(!out.contains(a1["id"].as_str().unwrap()), "{out}");

    // prune of A (keep 1): A's older backup goes, B's objects stay byte for byte.
    let b_files = |s: &Path| -> Vec<(std::path::PathBuf, Vec<u8>)> {
        files_under(&s.join(&id_b))
            .into_iter()
            .map(|p| {
                let bytes = std::fs::read(&p).unwrap();
                (p, bytes)
            })
            .collect()
    };
    let before = b_files(&store);
    assert!(before.len() >= 2, "{before:?}");
    ok(&cfg_a, &["prune", "--cluster", &id_a]);
    assert_eq!(ids(&cfg_a, &id_a), [a2["id"].as_str().unwrap()]);
    assert_eq!(b_files(&store), before, "prune of A touched B's objects");
    assert_eq!(list_json(&cfg_a).len(), 2);

    // restore --from-store latest: the newest backup of the cluster named, not of the store.
    let dd = work.path().join("restored.etcd");
    ok(
        &cfg_a,
        &[
            "restore",
            "--from-store",
            "latest",
            "--cluster",
            &id_b,
            "--data-dir",
            dd.to_str().unwrap(),
        ],
    );
    let db = dd.join("member/snap/db");
    let st: Value =
        serde_json::from_str(&ok(&cfg_a, &["status", db.to_str().unwrap(), "-o", "json"])).unwrap();
    assert_eq!(st["revision"], b1["revision"], "{st}");
    assert_ne!(a2["revision"], b1["revision"]);

    // delete by id of the other cluster: not found through A's scope.
    let (_, err) = fails(
        &cfg_a,
        &[
            "delete",
            "--cluster",
            &id_a,
            "--dry-run",
            b1["id"].as_str().unwrap(),
        ],
    );
    assert!(err.contains(b1["id"].as_str().unwrap()), "{err}");

    // backup takes the ID from etcd; a word that is no ID gets the hint.
    let (_, err) = fails(&cfg_a, &["backup", "--cluster", &id_a]);
    assert!(
        err.contains("backup takes the cluster ID from etcd"),
        "{err}"
    );
    let (code, err) = fails(&cfg_a, &["list", "--cluster", "prod"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("etcd cluster ID"), "{err}");
}
