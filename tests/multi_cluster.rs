//! Many clusters from one daemon (`clusters:` in the config), against real etcd servers on
//! loopback:
//! - two healthy clusters and one whose endpoint accepts connections and never answers: the
//!   healthy ones are backed up on schedule into their own store prefixes while the dead
//!   one's run hangs; metrics carry `cluster="..."`; `/readyz` names each cluster and is 503
//!   because one is not ready;
//! - the CLI: `list --cluster a` shows only a's backups, `list` shows all with a CLUSTER
//!   column, `verify` without `--cluster` fails naming the clusters, `verify --cluster b` and
//!   `restore --from-store latest --cluster b` use b's store;
//! - two daemon processes with leader election: each cluster has exactly one leader (its
//!   own election in its own etcd), and backups are not doubled.
//!
//! Metric sets are process-wide, so each test uses cluster names of its own.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::daemon_support::*;
use etcd_lifeboat::daemon::DaemonOptions;

use crate::daemon_support::cluster_sample as m;

/// `etcd:` section of a cluster entry for `etcd` (one member, plain HTTP).
fn etcd_entry(etcd: &Etcd) -> String {
    format!(
        "    etcd: {{endpoints: [\"{}\"], dial_timeout: 2s, request_timeout: 3s}}\n",
        etcd.endpoints()[0]
    )
}

/// The cluster id directories under a local store (one per etcd cluster backed up there).
fn cluster_dirs(store: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(store)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.') && !n.starts_with("etcd-lifeboat-"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_and_a_dead_one_from_one_daemon() {
    // The library's metrics registry is process-wide.
    if !in_own_process(
        module_path!(),
        "two_clusters_and_a_dead_one_from_one_daemon",
    ) {
        return;
    }
    let (ea, eb) = (
        Etcd::start(EtcdOpts::default()),
        Etcd::start(EtcdOpts::default()),
    );
    fill(&ea.client().await, 50, 256, "a/").await;
    fill(&eb.client().await, 80, 256, "b/").await;
    // A "dead" cluster: the kernel completes the TCP handshake (listen backlog), nobody ever
    // answers: every etcd call hangs until its timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_ep = format!("http://{}", silent.local_addr().unwrap());
    let root = ea.dir.path().join("store");
    std::fs::create_dir_all(&root).unwrap();
    let yaml = format!(
        "storage:\n  backend: local\n  local:\n    path: {}\n\
         schedule:\n  cron: \"* * * * * *\"\n\
         retention:\n  keep_last: 100\n\
         http:\n  max_backup_age: 1h\n\
         clusters:\n\
         \x20 - name: alpha\n{}\
         \x20 - name: beta\n{}\
         \x20   schedule: {{cron: \"*/2 * * * * *\"}}\n\
         \x20 - name: dead\n\
         \x20   etcd: {{endpoints: [\"{silent_ep}\"], dial_timeout: 60s, request_timeout: 60s, snapshot_timeout: 1h}}\n",
        root.display(),
        etcd_entry(&ea),
        etcd_entry(&eb),
    );
    let args = DaemonOptions {
        refresh_interval: Duration::from_secs(1),
        shutdown_grace: Duration::from_secs(1),
        ..Default::default()
    };
    let d = InProcess::start(&yaml, args).await;

    // Both healthy clusters get backups within seconds, in their own prefixes, while the dead
    // one's run is still going (hung on its endpoint, retrying).
    let t0 = Instant::now();
    let text = wait_for("backups of alpha and beta", Duration::from_secs(20), || {
        let t = d.metrics();
        (m(
            &t,
            "etcd_lifeboat_backups_total",
            "result=\"success\"",
            "alpha",
        )? >= 3.0
            && m(
                &t,
                "etcd_lifeboat_backups_total",
                "result=\"success\"",
                "beta",
            )? >= 2.0)
            .then_some(t)
    })
    .await;
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(12),
        "healthy clusters delayed: {took:?}"
    );
    assert_eq!(
        m(&text, "etcd_lifeboat_backup_in_progress", "", "dead"),
        Some(1.0),
        "the dead cluster's run hangs meanwhile:\n{text}"
    );
    assert_eq!(
        m(
            &text,
            "etcd_lifeboat_backups_total",
            "result=\"success\"",
            "dead"
        ),
        Some(0.0)
    );
    // Every per-cluster family carries the label; the process-wide ones do not.
    for c in ["alpha", "beta", "dead"] {
        assert!(
            m(&text, "etcd_lifeboat_is_leader", "", c) == Some(1.0),
            "{c}: {text}"
        );
    }
    assert!(sample(&text, "etcd_lifeboat_backups_total{result=\"success\"}").is_none());
    assert!(sample(&text, "process_resident_memory_bytes").is_some());
    let lint = promtool_check(&text);
    assert!(lint.trim().is_empty(), "promtool: {lint}");

    let (sa, sb) = (root.join("alpha"), root.join("beta"));
    assert_eq!(cluster_dirs(&sa).len(), 1, "alpha's store holds alpha only");
    assert_eq!(cluster_dirs(&sb).len(), 1);
    assert_ne!(cluster_dirs(&sa), cluster_dirs(&sb), "two etcd clusters");
    assert!(manifests_in(&sa).len() >= 3);
    assert!(manifests_in(&sb).len() >= 2);
    assert!(cluster_dirs(&root.join("dead")).is_empty());

    // /readyz: one entry per cluster; 503 because dead has no backup.
    let (code, body) = d.get("/readyz");
    assert_eq!(code, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["clusters"]["alpha"]["checks"]["backup_age"]["ok"], true,
        "{v}"
    );
    assert_eq!(v["clusters"]["beta"]["checks"]["store"]["ok"], true, "{v}");
    assert_eq!(
        v["clusters"]["dead"]["checks"]["backup_age"]["ok"], false,
        "{v}"
    );
    assert_eq!(v["ready"], false);
    let reasons: Vec<String> = serde_json::from_value(v["reasons"].clone()).unwrap();
    assert!(
        !reasons.is_empty() && reasons.iter().all(|r| r.starts_with("dead: ")),
        "{reasons:?}"
    );
    // The dead endpoint goes away (connections reset): its hung run ends, shutdown is quick.
    drop(silent);
    d.stop().await;

    // The CLI on the same config.
    let cfg = ea.dir.path().join("multi.yaml");
    std::fs::write(&cfg, &yaml).unwrap();
    let ids = |dir: &Path| -> Vec<String> {
        manifests_in(dir)
            .into_iter()
            .map(|n| n.trim_end_matches(".json").to_string())
            .collect()
    };
    let (ids_a, ids_b) = (ids(&sa), ids(&sb));
    let out =
        lifeboat_ok(
            lifeboat()
                .args(["--config"])
                .arg(&cfg)
                .args(["list", "--cluster", "alpha"]),
        );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(ids_a.iter().all(|id| text.contains(id.as_str())), "{text}");
    assert!(ids_b.iter().all(|id| !text.contains(id.as_str())), "{text}");
    assert!(!text.contains("CLUSTER"), "{text}");

    // Without --cluster: every cluster's backups with a CLUSTER column; dead's empty store
    // is no error.
    let out = lifeboat_ok(lifeboat().args(["--config"]).arg(&cfg).arg("list"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("CLUSTER"), "{text}");
    for id in &ids_a {
        assert!(
            text.lines()
                .any(|l| l.starts_with("alpha ") && l.contains(id.as_str())),
            "{text}"
        );
    }
    for id in &ids_b {
        assert!(
            text.lines()
                .any(|l| l.starts_with("beta ") && l.contains(id.as_str())),
            "{text}"
        );
    }
    let v = list_json(&cfg);
    assert_eq!(v.len(), ids_a.len() + ids_b.len());
    assert!(v
        .iter()
        .all(|e| e["cluster"] == "alpha" || e["cluster"] == "beta"));

    // The other commands need --cluster with several clusters.
    for args in [
        &["verify"][..],
        &["backup"],
        &["prune", "--dry-run"],
        &["delete", "x"],
        &[
            "restore",
            "--from-store",
            "latest",
            "--data-dir",
            "/nonexistent/x",
        ],
    ] {
        let out = lifeboat()
            .args(["--config"])
            .arg(&cfg)
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("--cluster") && err.contains("alpha, beta, dead"),
            "{args:?}: {err}"
        );
    }
    let out = lifeboat()
        .args(["--config"])
        .arg(&cfg)
        .args(["verify", "--cluster", "gamma"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no cluster \"gamma\"") && err.contains("alpha, beta, dead"),
        "{err}"
    );

    let out =
        lifeboat_ok(
            lifeboat()
                .args(["--config"])
                .arg(&cfg)
                .args(["verify", "--cluster", "beta"]),
        );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(ids_b.last().unwrap().as_str()),
        "newest of beta: {text}"
    );
    let out = lifeboat_ok(lifeboat().args(["--config"]).arg(&cfg).args([
        "prune",
        "--dry-run",
        "--cluster",
        "alpha",
        "-o",
        "json",
    ]));
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(ids_a.iter().all(|id| plan.contains(id.as_str())), "{plan}");
    assert!(ids_b.iter().all(|id| !plan.contains(id.as_str())), "{plan}");

    // restore --from-store from beta's store: the data dir holds beta's keys.
    let data = ea.dir.path().join("restored-beta");
    lifeboat_ok(
        lifeboat()
            .args(["--config"])
            .arg(&cfg)
            .args([
                "restore",
                "--from-store",
                "latest",
                "--cluster",
                "beta",
                "--data-dir",
            ])
            .arg(&data),
    );
    assert!(data.join("member/snap/db").is_file());
    // backup --cluster alpha: one more backup in alpha's store, none in beta's.
    let before_b = ids(&sb);
    lifeboat_ok(
        lifeboat()
            .args(["--config"])
            .arg(&cfg)
            .args(["backup", "--cluster", "alpha"]),
    );
    let after_a = ids(&sa);
    assert_eq!(after_a.len(), ids_a.len() + 1, "{after_a:?}");
    assert_eq!(ids(&sb), before_b);
    let ids_a = after_a;
    // Delete in beta only: alpha's backups are untouched.
    let victim = ids_b.first().unwrap();
    lifeboat_ok(lifeboat().args(["--config"]).arg(&cfg).args([
        "delete",
        "--cluster",
        "beta",
        victim,
    ]));
    assert!(!ids(&sb).contains(victim));
    assert_eq!(ids(&sa), ids_a);
}

#[test]
fn each_cluster_has_exactly_one_leader_among_two_replicas() {
    let (ex, ey) = (
        Etcd::start(EtcdOpts::default()),
        Etcd::start(EtcdOpts::default()),
    );
    let root = ex.dir.path().join("store");
    std::fs::create_dir_all(&root).unwrap();
    let replica = |i: usize| {
        let port = free_port();
        let yaml = format!(
            "storage:\n  backend: local\n  local:\n    path: {}\n\
             schedule:\n  cron: \"*/2 * * * * *\"\n\
             leader_election:\n  enabled: true\n  lease_ttl: 3s\n\
             http:\n  listen: \"127.0.0.1:{port}\"\n  max_backup_age: 1h\n\
             clusters:\n\
             \x20 - name: xray\n{}\
             \x20 - name: yankee\n{}",
            root.display(),
            etcd_entry(&ex),
            etcd_entry(&ey),
        );
        let cfg = ex.dir.path().join(format!("replica-{i}.yaml"));
        std::fs::write(&cfg, yaml).unwrap();
        DaemonProc::spawn(
            &cfg,
            format!("127.0.0.1:{port}").parse().unwrap(),
            "--refresh-interval 1s",
            &ex.dir.path().join(format!("replica-{i}.log")),
        )
    };
    let (a, b) = (replica(0), replica(1));
    let leader = |p: &DaemonProc, c: &str| m(&p.metrics(), "etcd_lifeboat_is_leader", "", c);
    wait("one leader per cluster", Duration::from_secs(15), || {
        ["xray", "yankee"].iter().all(|c| {
            let (la, lb) = (leader(&a, c), leader(&b, c));
            matches!((la, lb), (Some(1.0), Some(0.0)) | (Some(0.0), Some(1.0)))
        })
    });
    // Each cluster's election lives in its own etcd under its own name, both replicas in it.
    for (etcd, c) in [(&ex, "xray"), (&ey, "yankee")] {
        let keys = etcd.etcdctl_ok(&[
            "get",
            "--prefix",
            "--keys-only",
            &format!("/etcd-lifeboat/leader-{c}/"),
        ]);
        assert_eq!(
            keys.lines().filter(|l| !l.is_empty()).count(),
            2,
            "{c}: {keys}"
        );
    }
    // Backups happen, and the leaders' successes add up to what the stores hold (no replica
    // writes without leading).
    wait("backups of both clusters", Duration::from_secs(15), || {
        manifests_in(&root.join("xray")).len() >= 2 && manifests_in(&root.join("yankee")).len() >= 2
    });
    for p in [&a, &b] {
        let r = http_get(p.addr, "/readyz").unwrap().1;
        let v: serde_json::Value = serde_json::from_str(&r).unwrap();
        for c in ["xray", "yankee"] {
            assert_eq!(
                v["clusters"][c]["leader"].as_bool().unwrap(),
                leader(p, c) == Some(1.0),
                "{c}: {v}"
            );
        }
    }
    let (mut a, mut b) = (a, b);
    a.sigterm(Duration::from_secs(15));
    b.sigterm(Duration::from_secs(15));
}
