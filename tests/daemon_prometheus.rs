//! A real Prometheus server (Debian's /usr/bin/prometheus) scrapes the daemon every second on
//! loopback; a recording rule of the backup age is answered through its HTTP API.

use std::time::Duration;

use crate::common::prometheus::Prometheus;
use crate::common::*;
use crate::daemon_support::*;
use etcd_lifeboat::daemon::DaemonOptions;

/// A recording rule of the backup age, evaluated every second, in `dir`.
fn rules_file(dir: &std::path::Path) -> std::path::PathBuf {
    let rules = dir.join("rules.yml");
    std::fs::write(
        &rules,
        concat!(
            "groups:\n- name: etcd-lifeboat\n  interval: 1s\n  rules:\n",
            "  - record: etcd_lifeboat:backup_age_seconds\n",
            "    expr: time() - etcd_lifeboat_store_latest_backup_timestamp_seconds\n",
        ),
    )
    .unwrap();
    rules
}

/// Instant query; an empty result (printed) while Prometheus cannot answer it.
fn query(p: &Prometheus, q: &str) -> Vec<serde_json::Value> {
    p.query(q).unwrap_or_else(|e| {
        eprintln!("query {q}: {e}");
        Vec::new()
    })
}

fn value(r: &serde_json::Value) -> f64 {
    r["value"][1].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_and_records_backup_age() {
    // The library's metrics registry is process-wide.
    if !in_own_process(module_path!(), "prometheus_scrapes_and_records_backup_age") {
        return;
    }
    let etcd = Etcd::start(EtcdOpts::default());
    fill(&etcd.client().await, 50, 128, "k/").await;
    let store = etcd.dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let yaml = etcd.config_yaml(&store)
        + "schedule:\n  cron: \"*/3 * * * * *\"\n\
           retention:\n  keep_last: 3\n  keep_hourly: 0\n  keep_daily: 0\n  keep_weekly: 0\n  keep_monthly: 0\n";
    let args = DaemonOptions {
        refresh_interval: Duration::from_secs(1),
        ..Default::default()
    };
    let d = InProcess::start(&yaml, args).await;
    let rules = rules_file(etcd.dir.path());
    let target = d.addr.to_string();
    let prom = tokio::task::spawn_blocking(move || Prometheus::start(&target, &[&rules]))
        .await
        .unwrap();

    let up = wait_for(
        "prometheus scrapes the daemon",
        Duration::from_secs(60),
        || {
            let r = query(&prom, "up{job=\"etcd-lifeboat\"}");
            (r.len() == 1 && value(&r[0]) == 1.0).then_some(r)
        },
    )
    .await;
    assert_eq!(up[0]["metric"]["instance"], d.addr.to_string());

    let age = wait_for("recorded backup age", Duration::from_secs(60), || {
        let r = query(&prom, "etcd_lifeboat:backup_age_seconds");
        (r.len() == 1 && value(&r[0]) < 30.0).then(|| value(&r[0]))
    })
    .await;
    assert!((0.0..30.0).contains(&age), "backup age {age}");
    wait_for(
        "success counter in Prometheus",
        Duration::from_secs(10),
        || {
            let r = query(&prom, "etcd_lifeboat_backups_total{result=\"success\"}");
            (r.len() == 1 && value(&r[0]) >= 1.0).then_some(())
        },
    )
    .await;
    wait_for("is_leader in Prometheus", Duration::from_secs(10), || {
        let r = query(&prom, "etcd_lifeboat_is_leader");
        (r.len() == 1 && value(&r[0]) == 1.0).then_some(())
    })
    .await;
    eprintln!("backup age recorded by Prometheus: {age:.1}s");
    d.stop().await;
}
