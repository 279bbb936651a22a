//! Fenced leadership with daemon processes and a real etcd: the leader's backup is stalled by a
//! TCP proxy (it stops forwarding snapshot bytes), its election lease is revoked with
//! `etcdctl lease revoke`; the old leader cancels the backup (nothing stored, no retention),
//! the other replica takes over, and only it stores backups afterwards.
use crate::proxy;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::daemon_support::*;

fn config(etcd: &Etcd, store: &std::path::Path, port: u16, endpoint: &str) -> std::path::PathBuf {
    let mut y = etcd.config_yaml(store);
    // Point every etcd call (snapshot and election) at `endpoint`.
    let first = etcd.endpoints()[0].clone();
    y = y.replace(&format!("[\"{first}\"]"), &format!("[\"{endpoint}\"]"));
    y += &format!(
        "schedule:\n  cron: \"*/2 * * * * *\"\n\
         retention:\n  keep_last: 1\n  keep_hourly: 0\n  keep_daily: 0\n  keep_weekly: 0\n  keep_monthly: 0\n\
         leader_election:\n  enabled: true\n  lease_ttl: 6s\n  name: /fencing-test\n\
         http:\n  listen: \"127.0.0.1:{port}\"\n  max_backup_age: 1h\n"
    );
    let p = etcd.dir.path().join(format!("daemon-{port}.yaml"));
    std::fs::write(&p, y).unwrap();
    p
}

fn metric(p: &DaemonProc, name: &str) -> f64 {
    sample(&p.metrics(), name).unwrap_or(-1.0)
}

/// `(key, lease id in hex, create_revision)` of each campaign key under the election name,
/// oldest first (the oldest is the leader's).
fn campaigns(etcd: &Etcd, rt: &tokio::runtime::Runtime) -> Vec<(String, String, i64)> {
    rt.block_on(async {
        let mut c = etcd.client().await;
        let r = c
            .get(
                "/fencing-test",
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await
            .unwrap();
        let mut kvs: Vec<(String, String, i64)> = r
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    format!("{:x}", kv.lease()),
                    kv.create_revision(),
                )
            })
            .collect();
        kvs.sort_by_key(|k| k.2);
        kvs
    })
}

#[test]
fn lease_revoked_mid_backup_cancels_it_and_only_the_new_leader_writes() {
    let etcd = Etcd::start(EtcdOpts::default());
    let rt = tokio::runtime::Runtime::new().unwrap();
    // ~4 MB of incompressible values: a snapshot stream far above the proxy's 256 KiB budget.
    rt.block_on(async { fill_random(&etcd.client().await, 2000, 2048, "k/").await });
    let store = etcd.dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let target: SocketAddr = etcd.endpoints()[0]
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let proxy = proxy::Proxy::start_per_connection(target, 256 * 1024);

    // A leads (through the proxy) and its first backup stalls mid-stream.
    let (pa, pb) = (free_port(), free_port());
    let a = DaemonProc::spawn(
        &config(&etcd, &store, pa, &proxy.url()),
        format!("127.0.0.1:{pa}").parse().unwrap(),
        "--refresh-interval 1s",
        &etcd.dir.path().join("a.log"),
    );
    wait(
        "A leads and its backup stalls",
        Duration::from_secs(20),
        || {
            metric(&a, "etcd_lifeboat_is_leader") == 1.0
                && metric(&a, "etcd_lifeboat_backup_in_progress") == 1.0
                && proxy.is_stalled()
        },
    );
    // B campaigns directly against etcd and waits behind A.
    let b = DaemonProc::spawn(
        &config(&etcd, &store, pb, &etcd.endpoints()[0]),
        format!("127.0.0.1:{pb}").parse().unwrap(),
        "--refresh-interval 1s",
        &etcd.dir.path().join("b.log"),
    );
    wait("B campaigns", Duration::from_secs(15), || {
        campaigns(&etcd, &rt).len() == 2
    });
    assert_eq!(metric(&b, "etcd_lifeboat_is_leader"), 0.0);
    assert_eq!(metric(&a, "etcd_lifeboat_backup_in_progress"), 1.0);

    // Revoke A's lease (the oldest campaign key is the leader's).
    let (key, lease, _) = campaigns(&etcd, &rt)[0].clone();
    let revoked_at = chrono::Utc::now();
    let t0 = Instant::now();
    etcd.etcdctl_ok(&["lease", "revoke", &lease]);
    eprintln!("revoked lease {lease} of leader key {key}");

    // A steps down and cancels the stalled backup; B takes over.
    wait("A cancels its backup", Duration::from_secs(15), || {
        metric(&a, "etcd_lifeboat_backup_in_progress") == 0.0
    });
    let cancelled_after = t0.elapsed();
    assert_eq!(metric(&a, "etcd_lifeboat_is_leader"), 0.0);
    assert!(
        a.log_text().contains("leadership lost during the backup"),
        "{}",
        a.log_text()
    );
    wait("B makes 2 backups", Duration::from_secs(40), || {
        metric(&b, "etcd_lifeboat_backups_total{result=\"success\"}") >= 2.0
    });
    std::thread::sleep(Duration::from_secs(3));

    // Only B ever stored: A has no success, and every manifest started after the revoke (A's
    // stalled backup started before it).
    assert_eq!(
        metric(&a, "etcd_lifeboat_backups_total{result=\"success\"}"),
        0.0,
        "{}",
        a.log_text()
    );
    assert_eq!(
        metric(&a, "etcd_lifeboat_backups_total{result=\"failure\"}"),
        0.0,
        "a fenced backup is not a failed backup (no LastBackupFailed alert on a follower)"
    );
    assert_eq!(
        metric(&a, "etcd_lifeboat_backup_retries_total"),
        0.0,
        "no retry after losing leadership"
    );
    assert_eq!(
        metric(&a, "etcd_lifeboat_prunes_total{result=\"success\"}"),
        0.0
    );
    assert_eq!(metric(&a, "etcd_lifeboat_is_leader"), 0.0);
    assert_eq!(metric(&b, "etcd_lifeboat_is_leader"), 1.0);
    let manifests = manifests_in(&store);
    assert!(!manifests.is_empty());
    let cluster_dir = std::fs::read_dir(&store)
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir())
        .unwrap()
        .path();
    for name in &manifests {
        let m: etcd_lifeboat::store::manifest::Manifest =
            serde_json::from_slice(&std::fs::read(cluster_dir.join(name)).unwrap()).unwrap();
        assert!(
            m.started_at > revoked_at,
            "backup {} started at {} before the revoke at {revoked_at}: stored by the old leader",
            m.id,
            m.started_at
        );
    }
    // No left-over upload of A's cancelled backup in the store.
    for e in std::fs::read_dir(&cluster_dir).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        assert!(!n.starts_with('.'), "left-over temp file {n}");
    }
    eprintln!("stalled backup cancelled {cancelled_after:?} after the lease revoke");
    drop(a);
    drop(b);
}
