//! The Grafana dashboard deploy/grafana/etcd-lifeboat.json works against real data: the daemon
//! runs with the Deployment's command line, the Deployment's environment (downward API values
//! as a pod on loopback would get them: pod IP and node IP 127.0.0.1) and its ConfigMap's
//! config, against a real etcd 3.5 with TLS; a real Prometheus (Debian's /usr/bin/prometheus)
//! scrapes it as the ServiceMonitor does (job "etcd-lifeboat", namespace label); then every
//! query of every panel, with the dashboard's `$job` and `$cluster` (All) variables set as Grafana would, returns at
//! least one series with a finite value.
//!
//! Only what cannot exist on a test machine is rewritten: etcd's port and certificate paths,
//! the S3 store (a local store in a temp dir), temp_dir, the schedule (every 2 s), the election
//! name, and the port 9790 (a free port).

use crate::common;

use std::time::{Duration, Instant};

use crate::common::prometheus::Prometheus;
use crate::common::{Etcd, EtcdOpts};
use crate::deploy_support::*;

/// Every (panel title, query) of the dashboard, with the template variables as Grafana sets
/// them for job etcd-lifeboat.
fn panel_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().unwrap() {
        let title = p["title"].as_str().unwrap().to_string();
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {title} has no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            let rest = expr.replace("$job", "").replace("$cluster", "");
            assert!(
                !rest.contains('$'),
                "{title}: only $job and $cluster are variables: {expr}"
            );
            // `$cluster` as Grafana sets it for "All" (which also matches no label).
            out.push((
                title.clone(),
                expr.replace("$job", "etcd-lifeboat")
                    .replace("$cluster", ".*"),
            ));
        }
    }
    out
}

/// The dashboard's shape: Grafana's JSON model with unique panel ids, every panel on the grid,
/// on the `datasource` variable, and every metric it queries documented in docs/metrics.md.
#[test]
fn dashboard_is_well_formed_and_uses_documented_metrics() {
    let d: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/etcd-lifeboat.json")).unwrap();
    assert_eq!(d["uid"], "etcd-lifeboat");
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["datasource", "job", "cluster"]);
    let mut ids = std::collections::BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id");
        for k in ["x", "y", "w", "h"] {
            assert!(
                p["gridPos"][k].as_u64().is_some(),
                "{}: gridPos.{k}",
                p["title"]
            );
        }
        assert!(p["gridPos"]["x"].as_u64().unwrap() + p["gridPos"]["w"].as_u64().unwrap() <= 24);
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        assert!(["stat", "timeseries"].contains(&p["type"].as_str().unwrap()));
    }
    let docs = read("docs/metrics.md");
    let mut metrics = std::collections::BTreeSet::new();
    for (_, q) in panel_queries(&d) {
        for w in q.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if w.starts_with("etcd_lifeboat_") {
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| w.strip_suffix(s))
                    .unwrap_or(w);
                metrics.insert(family.to_string());
            }
        }
    }
    for m in [
        "etcd_lifeboat_store_latest_backup_timestamp_seconds",
        "etcd_lifeboat_backup_duration_seconds",
        "etcd_lifeboat_backup_size_bytes",
        "etcd_lifeboat_store_backups",
        "etcd_lifeboat_is_leader",
        "etcd_lifeboat_backups_total",
    ] {
        assert!(metrics.contains(m), "no panel shows {m}");
    }
    for m in &metrics {
        assert!(
            docs.contains(&format!("`{m}`")),
            "{m} is not in docs/metrics.md"
        );
    }
}

#[test]
fn every_panel_query_returns_data_from_a_real_prometheus_scraping_the_daemon() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/etcd-lifeboat.json")).unwrap();
    let queries = panel_queries(&dashboard);
    assert!(queries.len() >= 10, "{queries:?}");

    let etcd = Etcd::start(EtcdOpts {
        tls: true,
        ..Default::default()
    });
    etcd.etcdctl_ok(&["put", "/registry/namespaces/default", "v"]);
    let tmp = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let endpoint = etcd.endpoints()[0].clone();
    let _daemon = Daemon::spawn(
        &endpoint,
        &etcd.certs.as_ref().unwrap().client_files(),
        tmp.path(),
        "127.0.0.1",
        port,
    );
    let prom = Prometheus::start(&format!("127.0.0.1:{port}"), &[]);

    // Several backups and scrapes: increase() needs two samples of a counter that moved.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut missing;
    loop {
        missing = Vec::new();
        for (title, q) in &queries {
            match prom.query(q) {
                Ok(r)
                    if r.iter().any(|s| {
                        s["value"][1]
                            .as_str()
                            .and_then(|v| v.parse::<f64>().ok())
                            .is_some_and(f64::is_finite)
                    }) => {}
                Ok(r) => missing.push(format!("{title}: {q} -> {r:?}")),
                Err(e) => panic!("{title}: {q}: query error {e}"),
            }
        }
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "panels without data after 90 s:\n{}\ndaemon log:\n{}",
            missing.join("\n"),
            std::fs::read_to_string(tmp.path().join("daemon.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    // The values make sense: a fresh backup, OK, one leader, sizes and a store count.
    let one = |q: &str| -> f64 {
        let r = prom.query(q).unwrap();
        r[0]["value"][1].as_str().unwrap().parse().unwrap()
    };
    let get = |title: &str, i: usize| {
        queries
            .iter()
            .filter(|(t, _)| t == title)
            .nth(i)
            .unwrap_or_else(|| panic!("no panel {title}"))
            .1
            .clone()
    };
    let age = one(&get("Backup age", 0));
    assert!((0.0..60.0).contains(&age), "backup age {age}");
    assert_eq!(one(&get("Last backup", 0)), 1.0);
    assert_eq!(one(&get("Leaders", 0)), 1.0);
    assert!(one(&get("Backups in store", 0)) >= 1.0);
    let sizes = prom.query(&get("Backup size", 0)).unwrap();
    let kinds: std::collections::BTreeSet<&str> = sizes
        .iter()
        .map(|s| s["metric"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["raw", "stored"].into());
}
