//! Daemon processes: two replicas with leader election share one store: exactly one leader
//! and one set of backups; SIGTERM the leader: it exits 0 at once and the other takes over and
//! keeps backing up. Also the idle footprint (RSS, CPU) of a daemon between runs.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::daemon_support::*;

fn config(
    etcd: &Etcd,
    store: &std::path::Path,
    port: u16,
    cron: &str,
    election: bool,
) -> std::path::PathBuf {
    let mut y = etcd.config_yaml(store);
    y += &format!(
        "schedule:\n  cron: \"{cron}\"\n\
         retention:\n  keep_last: 1000\n  keep_hourly: 0\n  keep_daily: 0\n  keep_weekly: 0\n  keep_monthly: 0\n\
         leader_election:\n  enabled: {election}\n  lease_ttl: 3s\n\
         http:\n  listen: \"127.0.0.1:{port}\"\n  max_backup_age: 1h\n"
    );
    let p = etcd.dir.path().join(format!("daemon-{port}.yaml"));
    std::fs::write(&p, y).unwrap();
    p
}

fn successes(p: &DaemonProc) -> f64 {
    sample(
        &p.metrics(),
        "etcd_lifeboat_backups_total{result=\"success\"}",
    )
    .unwrap_or(-1.0)
}

fn is_leader(p: &DaemonProc) -> bool {
    sample(&p.metrics(), "etcd_lifeboat_is_leader") == Some(1.0)
}

#[test]
fn two_replicas_one_leader_one_set_of_backups_and_takeover_on_sigterm() {
    let etcd = Etcd::start(EtcdOpts::default());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async { fill(&etcd.client().await, 100, 256, "k/").await });
    let store = etcd.dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let (pa, pb) = (free_port(), free_port());
    let ca = config(&etcd, &store, pa, "*/2 * * * * *", true);
    let cb = config(&etcd, &store, pb, "*/2 * * * * *", true);
    let a = DaemonProc::spawn(
        &ca,
        format!("127.0.0.1:{pa}").parse().unwrap(),
        "--refresh-interval 1s",
        &etcd.dir.path().join("a.log"),
    );
    let b = DaemonProc::spawn(
        &cb,
        format!("127.0.0.1:{pb}").parse().unwrap(),
        "--refresh-interval 1s",
        &etcd.dir.path().join("b.log"),
    );
    eprintln!("daemon processes use the real binary: {}", a.real_binary);

    wait("one leader", Duration::from_secs(15), || {
        is_leader(&a) ^ is_leader(&b)
    });
    let (mut leader, follower) = if is_leader(&a) { (a, b) } else { (b, a) };
    wait("leader makes 3 backups", Duration::from_secs(30), || {
        successes(&leader) >= 3.0
    });
    // Still exactly one leader; the follower has not backed up; every manifest in the store is
    // one of the leader's backups (one set, not two).
    assert!(is_leader(&leader) && !is_leader(&follower));
    assert_eq!(
        successes(&follower),
        0.0,
        "follower backed up:\n{}",
        follower.log_text()
    );
    let in_store = manifests_in(&store).len() as f64;
    let by_leader = successes(&leader);
    assert!(
        in_store == by_leader || in_store == by_leader + 1.0,
        "store has {in_store} manifests, leader reports {by_leader} successes"
    );

    // The follower knows who leads (Observe): the leader's host/pid, in its /readyz.
    let leader_pid = format!("/{}", leader.pid());
    wait(
        "follower observes the leader",
        Duration::from_secs(5),
        || {
            let (_, body) = http_get(follower.addr, "/readyz").unwrap();
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            v["current_leader"]
                .as_str()
                .is_some_and(|l| l.ends_with(&leader_pid))
        },
    );

    // SIGTERM the leader: exit 0 promptly (resigns), the follower leads well within the TTL.
    let t0 = Instant::now();
    let code = leader.sigterm(Duration::from_secs(30));
    let exit_took = t0.elapsed();
    assert_eq!(
        code,
        Some(0),
        "leader exit code; log:\n{}",
        leader.log_text()
    );
    wait("follower takes over", Duration::from_secs(5), || {
        is_leader(&follower)
    });
    let takeover = t0.elapsed();
    let before = successes(&follower);
    wait("new leader backs up", Duration::from_secs(20), || {
        successes(&follower) >= before + 2.0
    });
    eprintln!("leader exit after SIGTERM: {exit_took:?}; takeover: {takeover:?}");
    assert!(
        takeover < Duration::from_secs(3),
        "takeover took {takeover:?} (lease TTL 3s)"
    );
    let log = leader.log_text();
    assert!(
        log.contains("resigned"),
        "leader log does not show the resignation:\n{log}"
    );
    let mut follower = follower;
    assert_eq!(follower.sigterm(Duration::from_secs(30)), Some(0));
}

#[test]
fn idle_daemon_footprint() {
    let etcd = Etcd::start(EtcdOpts::default());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async { fill(&etcd.client().await, 15_000, 4096, "k/").await });
    let store = etcd.dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let port = free_port();
    // ~60 MiB of data. Yearly schedule (an hourly one fired inside the idle window when the
    // test ran at the top of an hour): the empty store makes the daemon back up once at
    // start, then it idles.
    let c = config(&etcd, &store, port, "0 0 0 1 1 *", false);
    let mut d = DaemonProc::spawn(
        &c,
        format!("127.0.0.1:{port}").parse().unwrap(),
        "",
        &etcd.dir.path().join("d.log"),
    );
    wait("first backup", Duration::from_secs(30), || {
        successes(&d) >= 1.0
    });
    std::thread::sleep(Duration::from_secs(2));
    let rss_after_backup = d.rss_kib();
    let t0 = d.cpu_ticks();
    let window = Duration::from_secs(20);
    std::thread::sleep(window);
    let ticks = d.cpu_ticks() - t0;
    let rss_idle = d.rss_kib();
    let anon_idle = d.anon_kib();
    eprintln!(
        "idle daemon ({}): RSS {} KiB after the backup, {} KiB (anonymous {} KiB) after {window:?} idle; CPU {} ticks (1/100 s) in {window:?} (includes one catalog refresh)",
        if d.real_binary { "etcd-lifeboat binary" } else { "test binary in child mode" },
        rss_after_backup,
        rss_idle,
        anon_idle,
        ticks
    );
    // Heap and stacks are the daemon's footprint; the mapped code of this debug build (its
    // dependencies unoptimised) adds 10-20 MiB that a release build does not have.
    assert!(
        anon_idle < 30 * 1024,
        "idle anonymous RSS {anon_idle} KiB >= 30 MiB"
    );
    assert!(rss_idle < 64 * 1024, "idle RSS {rss_idle} KiB >= 64 MiB");
    assert!(ticks <= 2, "{ticks} CPU ticks while idle for {window:?}");
    assert_eq!(d.sigterm(Duration::from_secs(10)), Some(0));
}
