//! `backup --pushgateway`: the one-shot run's metrics reach a real Prometheus Pushgateway
//! (Debian's prometheus-pushgateway on loopback). A process that only failed sends only the
//! failure metrics (POST, which leaves a previously pushed last-success time in place); after
//! a success the whole group is replaced (PUT).
use crate::common;

use std::time::{Duration, Instant};

use crate::daemon_support::*;
use etcd_lifeboat::metrics;
use etcd_lifeboat::store::manifest::{Catalog, Manifest, DEFAULT_FUTURE_TOLERANCE};

struct Gateway(std::process::Child);
impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn manifest() -> Manifest {
    let at = chrono::Utc::now();
    let id = etcd_lifeboat::store::manifest::backup_id(at, 4242);
    serde_json::from_value(serde_json::json!({
        "id": id, "cluster_id": "cdf818194e3a8c32", "member_id": "8e9e05c52164694d",
        "member_name": "m0", "endpoint": "http://127.0.0.1:2379", "etcd_version": "3.5.1",
        "started_at": at, "finished_at": at, "revision": 4242, "hash": 1, "total_key": 1234,
        "total_size": 2_097_152, "raw_sha256": "00", "stored_bytes": 123_456, "stored_sha256": "00",
        "compression": "zstd", "compression_level": 3, "tool_version": "0.1.0",
        "data_key": format!("cdf818194e3a8c32/{id}.db.zst"),
    }))
    .unwrap()
}

/// The gateway's exposition lines for our group.
fn group_lines(addr: std::net::SocketAddr, name: &str) -> Vec<String> {
    let (_, body) = http_get(addr, "/metrics").unwrap();
    body.lines()
        .filter(|l| {
            l.starts_with(name)
                && l.contains("job=\"etcd-backup\"")
                && l.contains("instance=\"node-1\"")
        })
        .map(String::from)
        .collect()
}

fn value(lines: &[String]) -> f64 {
    lines[0].rsplit_once(' ').unwrap().1.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_failure_then_success() {
    // The library's metrics registry is process-wide.
    if !common::in_own_process(module_path!(), "push_failure_then_success") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let log = std::fs::File::create(dir.path().join("pg.log")).unwrap();
    let _gw = Gateway(
        std::process::Command::new("/usr/bin/prometheus-pushgateway")
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus-pushgateway installed (apt-get install prometheus-pushgateway)"),
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(addr, "/-/ready").map(|(c, _)| c).unwrap_or(0) != 200 {
        assert!(Instant::now() < deadline, "pushgateway did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let url = metrics::PushTarget::new(&format!("http://{addr}")).unwrap();

    // A failure first, before any success: only the failure metrics are pushed.
    metrics::record_backup_failure();
    metrics::push(&url, "etcd-backup", &[("instance", "node-1")])
        .await
        .unwrap();
    assert!(
        value(&group_lines(
            addr,
            "etcd_lifeboat_backup_last_failure_timestamp_seconds"
        )) > 0.0
    );
    assert!(group_lines(addr, "etcd_lifeboat_backup_last_success_timestamp_seconds").is_empty());
    assert!(
        group_lines(addr, "etcd_lifeboat_store_backups").is_empty(),
        "store metrics only after a catalog read"
    );

    // Success: the whole set (PUT).
    metrics::record_backup_success(&manifest(), Duration::from_millis(2500));
    metrics::push(&url, "etcd-backup", &[("instance", "node-1")])
        .await
        .unwrap();
    let success = value(&group_lines(
        addr,
        "etcd_lifeboat_backup_last_success_timestamp_seconds",
    ));
    assert!((chrono::Utc::now().timestamp() as f64 - success).abs() < 60.0);
    assert_eq!(
        value(&group_lines(addr, "etcd_lifeboat_snapshot_revision")),
        4242.0
    );
    assert_eq!(
        value(&group_lines(addr, "etcd_lifeboat_snapshot_keys")),
        1234.0
    );
    let sizes = group_lines(addr, "etcd_lifeboat_backup_size_bytes");
    assert!(
        sizes
            .iter()
            .any(|l| l.contains("kind=\"stored\"") && l.ends_with(" 123456")),
        "{sizes:?}"
    );
    assert!(
        group_lines(addr, "etcd_lifeboat_is_leader").is_empty(),
        "daemon-only metrics are not pushed"
    );
    assert!(
        group_lines(addr, "etcd_lifeboat_store_backups").is_empty(),
        "store metrics only after a catalog read"
    );
    let counts = group_lines(addr, "etcd_lifeboat_backup_duration_seconds_count");
    let ok_counts: Vec<_> = counts
        .into_iter()
        .filter(|l| l.contains("result=\"success\""))
        .collect();
    assert_eq!(value(&ok_counts), 1.0);

    // A label value with '/' goes through the base64 form of the grouping key; the first
    // group is untouched.
    metrics::push(&url, "etcd-backup", &[("instance", "node/with/slash")])
        .await
        .unwrap();
    let (_, body) = http_get(addr, "/metrics").unwrap();
    assert!(body.contains("instance=\"node/with/slash\""), "{body}");
    assert_eq!(
        value(&group_lines(
            addr,
            "etcd_lifeboat_backup_last_success_timestamp_seconds"
        )),
        success
    );

    // After a catalog read the store metrics go along.
    metrics::refresh_store(&Catalog::new(
        vec![manifest(), manifest()],
        vec![],
        chrono::Utc::now(),
        DEFAULT_FUTURE_TOLERANCE,
    ));
    metrics::push(&url, "etcd-backup", &[("instance", "node-1")])
        .await
        .unwrap();
    assert_eq!(
        value(&group_lines(addr, "etcd_lifeboat_store_backups")),
        2.0
    );
    assert!(
        value(&group_lines(
            addr,
            "etcd_lifeboat_store_latest_backup_timestamp_seconds"
        )) > 0.0
    );
    assert_eq!(
        value(&group_lines(addr, "etcd_lifeboat_store_broken_manifests")),
        0.0
    );
    assert!(
        group_lines(addr, "etcd_lifeboat_verifies_total").is_empty(),
        "daemon-only verify metrics are not pushed"
    );

    // Errors name the target and the fix.
    let err = metrics::push(
        &metrics::PushTarget::new("http://127.0.0.1:1").unwrap(),
        "j",
        &[("instance", "i")],
    )
    .await
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("pushgateway http://127.0.0.1:1/metrics/job/j/instance/i"),
        "{err:#}"
    );
    let err = metrics::PushTarget::new("ftp://example.invalid").unwrap_err();
    assert!(
        format!("{err:#}").contains("only http:// and https://"),
        "{err:#}"
    );
}
