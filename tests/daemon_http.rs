//! The daemon's HTTP endpoints over real HTTP, with etcd unreachable: /healthz answers,
//! /readyz says why it is not ready (JSON), /metrics passes `promtool check metrics` and the
//! failure metrics advance; shutdown returns Ok.
use crate::common;

use std::time::Duration;

use crate::daemon_support::*;
use etcd_lifeboat::daemon::DaemonOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_with_etcd_unreachable() {
    // The library's metrics registry is process-wide.
    if !common::in_own_process(module_path!(), "endpoints_with_etcd_unreachable") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let port = common::free_port(); // nothing listens there
    let yaml = format!(
        "etcd:\n  endpoints: [\"http://127.0.0.1:{port}\"]\n  dial_timeout: 1s\n  request_timeout: 2s\n\
         storage:\n  backend: local\n  local:\n    path: {}\n\
         schedule:\n  cron: \"*/2 * * * * *\"\n\
         http:\n  max_backup_age: 1h\n",
        store.display()
    );
    let args = DaemonOptions {
        refresh_interval: Duration::from_secs(1),
        retries: 1,
        retry_backoff: Duration::from_millis(200),
        ..Default::default()
    };
    let d = InProcess::start(&yaml, args).await;

    let (code, body) = d.get("/healthz");
    assert_eq!((code, body.as_str()), (200, "ok\n"));

    // Two failed runs (each with one retry), visible in the metrics.
    let text = wait_for("two failed runs", Duration::from_secs(30), || {
        let t = d.metrics();
        (sample(&t, "etcd_lifeboat_backups_total{result=\"failure\"}")? >= 2.0).then_some(t)
    })
    .await;
    assert_eq!(
        sample(&text, "etcd_lifeboat_backups_total{result=\"success\"}"),
        Some(0.0)
    );
    assert!(
        sample(&text, "etcd_lifeboat_backup_retries_total").unwrap() >= 2.0,
        "{text}"
    );
    let failed_at = sample(&text, "etcd_lifeboat_backup_last_failure_timestamp_seconds").unwrap();
    let now = chrono::Utc::now().timestamp() as f64;
    assert!(
        (now - failed_at).abs() < 30.0,
        "last failure {failed_at} vs now {now}"
    );
    assert_eq!(sample(&text, "etcd_lifeboat_store_backups"), Some(0.0));
    assert_eq!(sample(&text, "etcd_lifeboat_store_up"), Some(1.0));
    assert_eq!(sample(&text, "etcd_lifeboat_is_leader"), Some(1.0));
    assert!(
        text.contains("etcd_lifeboat_build_info{version=\""),
        "{text}"
    );
    assert!(
        text.contains("# TYPE etcd_lifeboat_backup_duration_seconds histogram"),
        "{text}"
    );
    let lint = promtool_check(&text);
    assert!(lint.trim().is_empty(), "promtool lint findings: {lint}");

    // Not ready: no backup in the store, last run failed; the JSON says so.
    let (code, body) = d.get("/readyz");
    assert_eq!(code, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ready"], false);
    assert_eq!(v["checks"]["config"]["ok"], true);
    assert_eq!(v["checks"]["store"]["ok"], true);
    assert_eq!(v["checks"]["backup_age"]["ok"], false);
    assert_eq!(
        v["checks"]["backup_age"]["detail"],
        "no backup in the store"
    );
    assert_eq!(v["checks"]["last_run"]["ok"], false, "{body}");
    let reasons = v["reasons"].as_array().unwrap();
    assert_eq!(reasons.len(), 2, "{body}");

    let (code, _) = d.get("/nope");
    assert_eq!(code, 404);
    d.stop().await;
}
