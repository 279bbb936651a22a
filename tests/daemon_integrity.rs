//! The daemon against a store it cannot trust blindly (real etcd, local store): a manifest
//! from a host whose clock is two days ahead does not stop the 2-second schedule and is flagged
//! (metric, /readyz), the age metric ignores it; the newest backup is re-verified on
//! `verify.cron` (metrics, /readyz), a newest backup that does not match its manifest is
//! reported as a failed verification, and a broken manifest is counted and reported.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;
use crate::daemon_support::*;
use etcd_lifeboat::daemon::DaemonOptions;
use etcd_lifeboat::store::manifest::{backup_id, Manifest};

/// Writes a copy of backup `m` (data and manifest) under a new id with the given times and
/// revision, as another writer would have stored it. Returns the new manifest.
fn plant(
    store: &Path,
    m: &Manifest,
    started: chrono::DateTime<chrono::Utc>,
    revision: i64,
) -> Manifest {
    let mut n = m.clone();
    n.started_at = started;
    n.finished_at = started + chrono::Duration::seconds(2);
    n.revision = revision;
    n.id = backup_id(started, revision);
    n.data_key = n.derived_data_key().unwrap();
    std::fs::copy(
        store.join(m.derived_data_key().unwrap().as_str()),
        store.join(n.data_key.as_str()),
    )
    .unwrap();
    std::fs::write(store.join(n.key().unwrap().as_str()), n.to_json()).unwrap();
    n
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn future_dated_manifest_does_not_stop_backups_and_newest_is_reverified() {
    // The library's metrics registry is process-wide.
    if !in_own_process(
        module_path!(),
        "future_dated_manifest_does_not_stop_backups_and_newest_is_reverified",
    ) {
        return;
    }
    let etcd = Etcd::start(EtcdOpts::default());
    fill(&etcd.client().await, 200, 512, "a/").await;
    let store = etcd.dir.path().join("store");
    let cfg_path: PathBuf = etcd.write_config(&store);
    let out = lifeboat_ok(lifeboat().arg("--config").arg(&cfg_path).args([
        "backup",
        "--no-progress",
        "-o",
        "json",
    ]));
    let real: Manifest = serde_json::from_slice(&out.stdout).unwrap();
    // Written by a host two days ahead.
    let now = chrono::Utc::now();
    let future = plant(&store, &real, now + chrono::Duration::days(2), 1);

    let yaml = etcd.config_yaml(&store)
        + "schedule:\n  cron: \"*/2 * * * * *\"\n\
           retention:\n  keep_last: 1000\n  keep_hourly: 0\n  keep_daily: 0\n  keep_weekly: 0\n  keep_monthly: 0\n\
           verify:\n  cron: \"*/3 * * * * *\"\n\
           http:\n  max_backup_age: 1h\n";
    let args = DaemonOptions {
        refresh_interval: Duration::from_secs(1),
        ..Default::default()
    };
    let d = InProcess::start(&yaml, args).await;

    // The schedule goes on: three backups within a few slots.
    let text = wait_for("3 backups", Duration::from_secs(30), || {
        let t = d.metrics();
        (sample(&t, "etcd_lifeboat_backups_total{result=\"success\"}")? >= 3.0).then_some(t)
    })
    .await;
    assert_eq!(
        sample(&text, "etcd_lifeboat_store_future_backups"),
        Some(1.0),
        "{text}"
    );
    let latest = sample(&text, "etcd_lifeboat_store_latest_backup_timestamp_seconds").unwrap();
    let now_s = chrono::Utc::now().timestamp() as f64;
    assert!(
        latest <= now_s + 1.0 && latest > now_s - 60.0,
        "latest backup time {latest} must be a real recent backup, not the future one (now {now_s})"
    );
    let (code, body) = d.get("/readyz");
    assert_eq!(code, 503, "{body}");
    let r = json(&body);
    assert_eq!(r["checks"]["future_backups"]["ok"], false, "{body}");
    assert!(
        r["future_backups"][0]
            .as_str()
            .unwrap()
            .starts_with(&future.id),
        "{body}"
    );
    assert_eq!(r["checks"]["backup_age"]["ok"], true, "{body}");

    // Re-verification of the newest backup (highest revision: a real one).
    let text = wait_for(
        "a successful re-verification",
        Duration::from_secs(30),
        || {
            let t = d.metrics();
            (sample(&t, "etcd_lifeboat_verifies_total{result=\"success\"}")? >= 1.0).then_some(t)
        },
    )
    .await;
    assert!(sample(&text, "etcd_lifeboat_verify_last_success_timestamp_seconds").unwrap() > 0.0);
    assert_eq!(
        sample(&text, "etcd_lifeboat_verifies_total{result=\"failure\"}"),
        Some(0.0),
        "{text}"
    );
    let r = json(&d.get("/readyz").1);
    assert_eq!(r["checks"]["verify"]["ok"], true, "{r}");

    // A newest backup (highest revision) whose data does not match its manifest, and a
    // truncated manifest: the next re-verification fails; both are reported.
    let bad = plant(&store, &real, chrono::Utc::now(), 1_000_000_000);
    let broken_key = format!(
        "{}/20200101T000000Z-r0000000000000001.json",
        real.cluster_id
    );
    std::fs::write(store.join(&broken_key), b"{\"id\": ").unwrap();
    let text = wait_for("a failed re-verification", Duration::from_secs(30), || {
        let t = d.metrics();
        (sample(&t, "etcd_lifeboat_verifies_total{result=\"failure\"}")? >= 1.0).then_some(t)
    })
    .await;
    assert!(sample(&text, "etcd_lifeboat_verify_last_failure_timestamp_seconds").unwrap() > 0.0);
    let body = wait_for("broken manifest reported", Duration::from_secs(10), || {
        let (_, b) = d.get("/readyz");
        (json(&b)["checks"]["manifests"]["ok"] == false).then_some(b)
    })
    .await;
    let r = json(&body);
    assert_eq!(r["checks"]["verify"]["ok"], false, "{body}");
    let detail = r["checks"]["verify"]["detail"].as_str().unwrap();
    assert!(detail.contains(&bad.id), "{body}");
    assert!(
        r["broken_manifests"][0]
            .as_str()
            .unwrap()
            .starts_with(&broken_key),
        "{body}"
    );
    assert_eq!(
        sample(&d.metrics(), "etcd_lifeboat_store_broken_manifests"),
        Some(1.0)
    );
    // Backups go on all along.
    wait_for("a 4th backup", Duration::from_secs(15), || {
        (sample(
            &d.metrics(),
            "etcd_lifeboat_backups_total{result=\"success\"}",
        )? >= 4.0)
            .then_some(())
    })
    .await;
    d.stop().await;
}
