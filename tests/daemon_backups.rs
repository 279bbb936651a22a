//! A daemon on a 2-second schedule against a real etcd makes backups, applies retention
//! (exactly what the policy says, orphans only after the grace period), and its metrics
//! advance and pass `promtool check metrics`.

use std::time::Duration;

use crate::common::*;
use crate::daemon_support::*;
use etcd_lifeboat::daemon::DaemonOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_backups_retention_and_metrics() {
    // The library's metrics registry is process-wide.
    if !in_own_process(module_path!(), "scheduled_backups_retention_and_metrics") {
        return;
    }
    let etcd = Etcd::start(EtcdOpts::default());
    let client = etcd.client().await;
    fill(&client, 300, 512, "a/").await;
    let store = etcd.dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let yaml = etcd.config_yaml(&store)
        + "schedule:\n  cron: \"*/2 * * * * *\"\n\
           retention:\n  keep_last: 3\n  keep_hourly: 0\n  keep_daily: 0\n  keep_weekly: 0\n  keep_monthly: 0\n  orphan_grace: 1h\n\
           http:\n  max_backup_age: 1h\n";
    let args = DaemonOptions {
        refresh_interval: Duration::from_secs(1),
        ..Default::default()
    };
    let d = InProcess::start(&yaml, args).await;

    let first = wait_for("first backup", Duration::from_secs(30), || {
        let t = d.metrics();
        (sample(&t, "etcd_lifeboat_backups_total{result=\"success\"}")? >= 1.0).then_some(t)
    })
    .await;
    let rev1 = sample(&first, "etcd_lifeboat_snapshot_revision").unwrap();
    let ts1 = sample(
        &first,
        "etcd_lifeboat_backup_last_success_timestamp_seconds",
    )
    .unwrap();
    assert!(rev1 > 300.0, "{first}");
    // totalKey counts every revision of every key in the snapshot (puts of the harness too).
    let keys1 = sample(&first, "etcd_lifeboat_snapshot_keys").unwrap();
    assert!(keys1 >= 300.0, "{first}");
    assert!(sample(&first, "etcd_lifeboat_backup_size_bytes{kind=\"raw\"}").unwrap() > 150_000.0);
    assert!(sample(&first, "etcd_lifeboat_backup_size_bytes{kind=\"stored\"}").unwrap() > 0.0);

    // Orphans: an old one (removed after the grace period) and a fresh one (kept).
    let cluster_dir = std::fs::read_dir(&store)
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir())
        .unwrap()
        .path();
    // An unnamed single cluster: /readyz names it by its etcd cluster id (the store's dir).
    let id = cluster_dir
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    wait_for(
        "/readyz names the cluster id",
        Duration::from_secs(10),
        || {
            let v: serde_json::Value = serde_json::from_str(&d.get("/readyz").1).ok()?;
            (v["cluster"].as_str() == Some(id.as_str())).then_some(())
        },
    )
    .await;
    let old_orphan = cluster_dir.join("20200101T000000Z-r0000000000000001.db.zst");
    let new_orphan = cluster_dir.join("20990101T000000Z-r0000000000000001.db.zst");
    std::fs::write(&old_orphan, b"left over").unwrap();
    std::fs::write(&new_orphan, b"upload in flight").unwrap();
    let st = std::process::Command::new("touch")
        .args(["-d", "2 hours ago"])
        .arg(&old_orphan)
        .status()
        .unwrap();
    assert!(st.success());

    // More data, more runs.
    fill(&client, 100, 512, "b/").await;
    let text = wait_for("5 backups", Duration::from_secs(40), || {
        let t = d.metrics();
        (sample(&t, "etcd_lifeboat_backups_total{result=\"success\"}")? >= 5.0).then_some(t)
    })
    .await;
    assert!(
        sample(&text, "etcd_lifeboat_snapshot_revision").unwrap() > rev1,
        "revision advances"
    );
    assert!(
        sample(&text, "etcd_lifeboat_snapshot_keys").unwrap() >= keys1 + 100.0,
        "{text}"
    );
    assert!(sample(&text, "etcd_lifeboat_backup_last_success_timestamp_seconds").unwrap() > ts1);
    assert!(
        sample(
            &text,
            "etcd_lifeboat_backup_duration_seconds_count{result=\"success\"}"
        )
        .unwrap()
            >= 5.0
    );
    assert_eq!(
        sample(&text, "etcd_lifeboat_backups_total{result=\"failure\"}"),
        Some(0.0)
    );
    assert!(
        sample(&text, "etcd_lifeboat_prune_deleted_total{kind=\"backup\"}").unwrap() >= 2.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "etcd_lifeboat_prune_deleted_total{kind=\"orphan\"}"),
        Some(1.0),
        "{text}"
    );
    promtool_check(&text);

    // Stop, then check the store: exactly the 3 newest backups, data and manifest each.
    let backups_made = sample(&text, "etcd_lifeboat_backups_total{result=\"success\"}").unwrap();
    d.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), d.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let manifests = manifests_in(&store);
    assert_eq!(
        manifests.len(),
        3,
        "keep_last 3 after {backups_made} backups: {manifests:?}"
    );
    let data: Vec<String> = data_in(&store)
        .into_iter()
        .filter(|n| !n.starts_with("2020") && !n.starts_with("2099"))
        .collect();
    let ids = |v: &[String], suffix: &str| -> Vec<String> {
        v.iter()
            .map(|n| n.trim_end_matches(suffix).to_string())
            .collect()
    };
    assert_eq!(
        ids(&manifests, ".json"),
        ids(&data, ".db.zst"),
        "manifest and data pairs"
    );
    assert!(
        !old_orphan.exists(),
        "orphan older than the grace period was removed"
    );
    assert!(
        new_orphan.exists(),
        "orphan within the grace period was kept"
    );

    // The same decision from the pure planner: everything kept is exactly the store content.
    let cfg = etcd_lifeboat::config::Config::from_yaml(&yaml, "t").unwrap();
    let st = etcd_lifeboat::store::Store::from_config(&cfg.storage)
        .await
        .unwrap();
    let cat = etcd_lifeboat::store::manifest::catalog(&st).await.unwrap();
    let plan = etcd_lifeboat::store::retention::plan(&cat, &cfg.retention, chrono::Utc::now());
    assert_eq!(plan.kept().count(), 3);
    assert_eq!(plan.removed().count(), 0);

    // `prune --dry-run` equivalent on the stopped store: nothing more to delete.
    let p = etcd_lifeboat::store::retention::prune(&cfg, &st, true)
        .await
        .unwrap();
    assert_eq!(p.removed().count(), 0);
    assert_eq!(p.orphans_removed().count(), 0);
    assert_eq!(
        p.orphans.len(),
        1,
        "the fresh orphan is listed, not removed"
    );
}
