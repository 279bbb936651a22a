//! etcd down for a while, then the store down for a while: the daemon keeps running, reports
//! the failures in its metrics and /readyz, and recovers by itself.

use std::time::Duration;

use crate::common::*;
use crate::daemon_support::*;
use etcd_lifeboat::daemon::DaemonOptions;

fn successes(t: &str) -> f64 {
    sample(t, "etcd_lifeboat_backups_total{result=\"success\"}").unwrap_or(0.0)
}
fn failures(t: &str) -> f64 {
    sample(t, "etcd_lifeboat_backups_total{result=\"failure\"}").unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_and_store_outages_are_reported_and_recovered_from() {
    // The library's metrics registry is process-wide.
    if !in_own_process(
        module_path!(),
        "etcd_and_store_outages_are_reported_and_recovered_from",
    ) {
        return;
    }
    let mut etcd = Etcd::start(EtcdOpts::default());
    fill(&etcd.client().await, 100, 256, "k/").await;
    let store = etcd.dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let yaml = etcd.config_yaml(&store)
        + "schedule:\n  cron: \"*/2 * * * * *\"\n\
           retention:\n  keep_last: 5\n  keep_hourly: 0\n  keep_daily: 0\n  keep_weekly: 0\n  keep_monthly: 0\n\
           http:\n  max_backup_age: 1h\n";
    let args = DaemonOptions {
        refresh_interval: Duration::from_secs(1),
        retries: 1,
        retry_backoff: Duration::from_millis(300),
        ..Default::default()
    };
    let d = InProcess::start(&yaml, args).await;
    wait_for("a backup", Duration::from_secs(30), || {
        (successes(&d.metrics()) >= 1.0).then_some(())
    })
    .await;
    wait_for("ready", Duration::from_secs(10), || {
        (d.get("/readyz").0 == 200).then_some(())
    })
    .await;

    // etcd down.
    etcd.stop_member(0);
    let f0 = failures(&d.metrics());
    let t = wait_for(
        "failures while etcd is down",
        Duration::from_secs(60),
        || {
            let t = d.metrics();
            (failures(&t) >= f0 + 2.0).then_some(t)
        },
    )
    .await;
    assert!(sample(&t, "etcd_lifeboat_backup_last_failure_timestamp_seconds").unwrap() > 0.0);
    let (code, body) = d.get("/readyz");
    assert_eq!(code, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["checks"]["last_run"]["ok"], false, "{body}");
    assert_eq!(
        v["checks"]["backup_age"]["ok"], true,
        "an older backup is still young: {body}"
    );
    assert_eq!(d.get("/healthz").0, 200, "the process stays alive");

    // etcd back: backups resume, ready again.
    etcd.restart_member(0);
    let s0 = successes(&d.metrics());
    wait_for(
        "backups resume after etcd returns",
        Duration::from_secs(60),
        || (successes(&d.metrics()) >= s0 + 1.0).then_some(()),
    )
    .await;
    wait_for("ready after etcd returns", Duration::from_secs(10), || {
        (d.get("/readyz").0 == 200).then_some(())
    })
    .await;

    // Store down: the store directory is replaced by a file (listing and writing fail).
    let aside = etcd.dir.path().join("store.aside");
    std::fs::rename(&store, &aside).unwrap();
    std::fs::write(&store, b"not a directory").unwrap();
    let (code, body) = wait_for("store failure visible", Duration::from_secs(30), || {
        let t = d.metrics();
        let r = d.get("/readyz");
        (sample(&t, "etcd_lifeboat_store_up") == Some(0.0) && r.0 == 503).then_some(r)
    })
    .await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(code, 503);
    assert_eq!(v["checks"]["store"]["ok"], false, "{body}");
    assert!(sample(&d.metrics(), "etcd_lifeboat_store_refresh_errors_total").unwrap() >= 1.0);

    // Store back.
    std::fs::remove_file(&store).unwrap();
    std::fs::rename(&aside, &store).unwrap();
    let s1 = successes(&d.metrics());
    wait_for(
        "backups resume after the store returns",
        Duration::from_secs(60),
        || (successes(&d.metrics()) >= s1 + 1.0).then_some(()),
    )
    .await;
    wait_for(
        "ready after the store returns",
        Duration::from_secs(10),
        || {
            let t = d.metrics();
            (d.get("/readyz").0 == 200 && sample(&t, "etcd_lifeboat_store_up") == Some(1.0))
                .then_some(())
        },
    )
    .await;
    d.stop().await;
}
