//! SIGTERM (the shutdown token) during a backup: with no grace the backup is cancelled (no
//! manifest, no partial objects left); with a grace period it finishes and is stored. Either
//! way the daemon returns Ok (exit 0).

use std::time::{Duration, Instant};

use crate::common::*;
use crate::daemon_support::*;
use etcd_lifeboat::daemon::DaemonOptions;

/// Every file under `dir`, hidden ones (temp files) included.
fn all_files(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

async fn shutdown_during_backup(etcd: &Etcd, grace: Duration) -> Vec<String> {
    let store = etcd.dir.path().join(format!("store-{}", grace.as_secs()));
    std::fs::create_dir_all(&store).unwrap();
    // Yearly schedule (never due during the test): the empty store makes the daemon back up
    // at once.
    let yaml = etcd.config_yaml(&store) + "schedule:\n  cron: \"0 0 0 1 1 *\"\n";
    let args = DaemonOptions {
        shutdown_grace: grace,
        retries: 0,
        ..Default::default()
    };
    let d = InProcess::start(&yaml, args).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while sample(&d.metrics(), "etcd_lifeboat_backup_in_progress") != Some(1.0) {
        assert!(Instant::now() < deadline, "backup did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t0 = Instant::now();
    // Nothing is asked of the daemon after this: its HTTP server stops with it.
    d.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(120), d.task)
        .await
        .expect("daemon stops")
        .unwrap()
        .expect("run returns Ok after shutdown");
    eprintln!("grace {grace:?}: stopped {:?} after shutdown", t0.elapsed());
    all_files(&store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_or_finishes_the_running_backup() {
    // The library's metrics registry is process-wide.
    if !in_own_process(
        module_path!(),
        "shutdown_cancels_or_finishes_the_running_backup",
    ) {
        return;
    }
    let etcd = Etcd::start(EtcdOpts::default());
    // ~60 MiB of data so that a backup takes a while.
    fill(&etcd.client().await, 15_000, 4096, "big/").await;

    let files = shutdown_during_backup(&etcd, Duration::ZERO).await;
    assert!(
        files.iter().all(|f| !f.ends_with(".json")),
        "a cancelled backup must not publish a manifest: {files:?}"
    );
    assert!(
        files.is_empty(),
        "cancelled backup left objects behind: {files:?}"
    );

    let files = shutdown_during_backup(&etcd, Duration::from_secs(120)).await;
    assert_eq!(
        files.iter().filter(|f| f.ends_with(".json")).count(),
        1,
        "{files:?}"
    );
    assert_eq!(
        files.iter().filter(|f| f.ends_with(".db.zst")).count(),
        1,
        "{files:?}"
    );
    assert_eq!(files.len(), 2, "only the backup's two objects: {files:?}");
}
