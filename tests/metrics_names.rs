//! Metric names and types of a real daemon (the release binary's code path: `etcd-lifeboat
//! daemon` against a real etcd on loopback) pass `promtool check metrics` with no lint
//! findings, and so does the payload a `backup --pushgateway` run sends. The daemon exposes
//! the prometheus crate's `process_*` metrics, the duration histogram by `result` and
//! `etcd_lifeboat_upload_bytes_total` counting what the uploads wrote to the store.

use std::time::Duration;

use crate::common::*;
use crate::daemon_support::*;

#[test]
fn real_daemon_metrics_pass_promtool_with_process_upload_and_duration_by_result() {
    let etcd = Etcd::start(EtcdOpts::default());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async { fill_random(&etcd.client().await, 300, 1024, "k/").await });
    let store = etcd.dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let port = free_port();
    let mut y = etcd.config_yaml(&store);
    y += &format!(
        "schedule:\n  cron: \"*/2 * * * * *\"\n\
         leader_election:\n  enabled: false\n\
         http:\n  listen: \"127.0.0.1:{port}\"\n  max_backup_age: 1h\n"
    );
    let cfg = etcd.dir.path().join("daemon.yaml");
    std::fs::write(&cfg, y).unwrap();
    let d = DaemonProc::spawn(
        &cfg,
        format!("127.0.0.1:{port}").parse().unwrap(),
        "--refresh-interval 1s",
        &etcd.dir.path().join("daemon.log"),
    );
    wait("two successful backups", Duration::from_secs(60), || {
        sample(
            &d.metrics(),
            "etcd_lifeboat_backups_total{result=\"success\"}",
        )
        .unwrap_or(0.0)
            >= 2.0
    });
    let text = d.metrics();
    let lint = promtool_check(&text);
    assert!(lint.trim().is_empty(), "promtool lint findings: {lint}");

    // process_* from the prometheus crate's process collector, about this very process.
    assert!(d.real_binary, "the test runs the etcd-lifeboat binary");
    let rss =
        sample(&text, "process_resident_memory_bytes").expect("process_resident_memory_bytes");
    assert!(rss > 1e6, "rss {rss}");
    let start = sample(&text, "process_start_time_seconds").unwrap();
    assert!((chrono::Utc::now().timestamp() as f64 - start).abs() < 300.0);
    assert!(sample(&text, "process_open_fds").unwrap() >= 3.0);
    assert!(
        sample(&text, "process_cpu_seconds_total").is_some(),
        "{text}"
    );
    assert!(text.contains("# TYPE process_cpu_seconds_total counter"));

    // The duration histogram by result: successes observed, the failure series exists at 0.
    let successes = sample(&text, "etcd_lifeboat_backups_total{result=\"success\"}").unwrap();
    assert_eq!(
        sample(
            &text,
            "etcd_lifeboat_backup_duration_seconds_count{result=\"success\"}"
        ),
        Some(successes),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "etcd_lifeboat_backup_duration_seconds_count{result=\"failure\"}"
        ),
        Some(0.0)
    );
    assert!(
        sample(
            &text,
            "etcd_lifeboat_backup_duration_seconds_bucket{result=\"success\",le=\"+Inf\"}"
        ) == Some(successes),
        "{text}"
    );

    // Upload bytes: every backup's data object went through the upload writer (the store
    // holds no other objects): between `successes` objects and one more in flight.
    let uploaded = sample(&text, "etcd_lifeboat_upload_bytes_total").unwrap();
    let mut sizes = Vec::new();
    for d in std::fs::read_dir(&store).unwrap().flatten() {
        if d.path().is_dir() {
            for f in std::fs::read_dir(d.path()).unwrap().flatten() {
                if f.file_name().to_string_lossy().ends_with(".db.zst") {
                    sizes.push(f.metadata().unwrap().len() as f64);
                }
            }
        }
    }
    let (min, max) = (
        sizes.iter().cloned().fold(f64::MAX, f64::min),
        sizes.iter().cloned().fold(0.0, f64::max),
    );
    assert!(min > 10_000.0, "{sizes:?}");
    assert!(
        uploaded >= min * successes && uploaded <= max * (successes + 1.0),
        "uploaded {uploaded} bytes for {successes} backups of {sizes:?} bytes"
    );
    assert!(
        text.contains("# TYPE etcd_lifeboat_upload_bytes_total counter"),
        "{text}"
    );
}

#[test]
fn push_payload_passes_promtool() {
    // The library's metrics registry is process-wide.
    if !in_own_process(module_path!(), "push_payload_passes_promtool") {
        return;
    }
    use etcd_lifeboat::metrics;
    use etcd_lifeboat::store::manifest::{Catalog, Manifest, DEFAULT_FUTURE_TOLERANCE};
    let at = chrono::Utc::now();
    let id = etcd_lifeboat::store::manifest::backup_id(at, 7);
    let m: Manifest = serde_json::from_value(serde_json::json!({
        "id": id, "cluster_id": "cdf818194e3a8c32", "member_id": "8e9e05c52164694d",
        "member_name": "m0", "endpoint": "http://127.0.0.1:2379", "etcd_version": "3.5.1",
        "started_at": at, "finished_at": at, "revision": 7, "hash": 1, "total_key": 3,
        "total_size": 20480, "raw_sha256": "00", "stored_bytes": 999, "stored_sha256": "00",
        "compression": "zstd", "compression_level": 3, "tool_version": "0.1.0",
        "data_key": format!("cdf818194e3a8c32/{id}.db.zst"),
    }))
    .unwrap();
    // A failed run's payload, then a successful one's with the store metrics.
    metrics::record_backup_failure_after(Duration::from_millis(700));
    let failed = metrics::push_payload();
    assert!(
        failed.contains("etcd_lifeboat_backup_duration_seconds_count{result=\"failure\"} 1"),
        "{failed}"
    );
    assert!(!failed.contains("etcd_lifeboat_backup_last_success_timestamp_seconds"));
    let lint = promtool_check(&failed);
    assert!(lint.trim().is_empty(), "promtool lint findings: {lint}");

    metrics::record_backup_success(&m, Duration::from_secs(3));
    metrics::record_upload_bytes(999);
    metrics::refresh_store(&Catalog::new(
        vec![m],
        vec![],
        chrono::Utc::now(),
        DEFAULT_FUTURE_TOLERANCE,
    ));
    let full = metrics::push_payload();
    for name in [
        "etcd_lifeboat_backup_last_success_timestamp_seconds",
        "etcd_lifeboat_store_backups",
        "etcd_lifeboat_upload_bytes_total",
        "etcd_lifeboat_backup_duration_seconds_bucket",
    ] {
        assert!(full.contains(name), "{name} not pushed:\n{full}");
    }
    assert!(!full.contains("process_"), "process metrics are not pushed");
    assert!(!full.contains("etcd_lifeboat_is_leader"));
    let lint = promtool_check(&full);
    assert!(lint.trim().is_empty(), "promtool lint findings: {lint}");
}
