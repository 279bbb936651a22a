//! Leader election against a real etcd: exactly one leader among replicas; resign hands over
//! at once; a leader that dies (stops renewing its lease) is replaced within the lease TTL.
use crate::daemon_support;

use std::time::{Duration, Instant};

use crate::common::*;
use etcd_lifeboat::config::Config;
use etcd_lifeboat::daemon::election;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

struct Replica {
    rx: watch::Receiver<bool>,
    resign: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn replica(cfg: &Config) -> Replica {
    let (tx, rx) = watch::channel(false);
    let resign = CancellationToken::new();
    let task = tokio::spawn(election::run(cfg.clone(), tx, resign.clone()));
    Replica { rx, resign, task }
}

fn cfg_for(etcd: &Etcd, ttl_secs: u64) -> Config {
    let store = etcd.dir.path().join("store");
    let mut cfg = Config::from_yaml(&etcd.config_yaml(&store), "test.yaml").unwrap();
    cfg.leader_election.enabled = true;
    cfg.leader_election.lease_ttl = Duration::from_secs(ttl_secs);
    cfg.validate().unwrap();
    cfg
}

fn leaders(rs: &[&Replica]) -> usize {
    rs.iter().filter(|r| *r.rx.borrow()).count()
}

/// Keys under the election prefix, as etcdctl sees them (one per campaigning replica).
fn election_keys(etcd: &Etcd, name: &str) -> Vec<String> {
    etcd.etcdctl_ok(&["get", "--prefix", "--keys-only", name])
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_resign_hands_over_and_dead_leader_is_replaced_within_ttl() {
    let etcd = Etcd::start(EtcdOpts::default());
    let ttl = 3;
    let cfg = cfg_for(&etcd, ttl);
    let a = replica(&cfg);
    let b = replica(&cfg);

    // Exactly one leader, and it stays that way.
    daemon_support::wait_for("a leader", Duration::from_secs(10), || {
        (leaders(&[&a, &b]) == 1).then_some(())
    })
    .await;
    for _ in 0..20 {
        assert_eq!(leaders(&[&a, &b]), 1, "exactly one leader at all times");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        election_keys(&etcd, &cfg.leader_election.name).len(),
        2,
        "both replicas campaign"
    );
    let (leader, follower) = if *a.rx.borrow() { (a, b) } else { (b, a) };
    // Both replicas observe the same leader (this process's identity, host/pid).
    daemon_support::wait_for("observed leader", Duration::from_secs(5), || {
        election::current_leader()
    })
    .await;
    assert_eq!(election::current_leader().unwrap(), election::identity());

    // Resign: the follower leads almost at once (well under the TTL).
    let t0 = Instant::now();
    leader.resign.cancel();
    tokio::time::timeout(Duration::from_secs(10), leader.task)
        .await
        .unwrap()
        .unwrap();
    daemon_support::wait_for(
        "follower takes over after resign",
        Duration::from_secs(5),
        || (*follower.rx.borrow()).then_some(()),
    )
    .await;
    let handover = t0.elapsed();
    assert!(
        handover < Duration::from_secs(ttl),
        "handover after resign took {handover:?}"
    );
    assert_eq!(
        election_keys(&etcd, &cfg.leader_election.name).len(),
        1,
        "resigned key is gone"
    );

    // A third replica joins as follower; then the leader dies without resigning (task aborted:
    // no more keep-alives). The new one must lead within the TTL (+1 s for the round trips).
    let c = replica(&cfg);
    daemon_support::wait_for("c campaigns", Duration::from_secs(5), || {
        (election_keys(&etcd, &cfg.leader_election.name).len() == 2).then_some(())
    })
    .await;
    assert!(!*c.rx.borrow());
    let t1 = Instant::now();
    follower.task.abort();
    let _ = follower.task.await;
    daemon_support::wait_for(
        "c takes over from a dead leader",
        Duration::from_secs(ttl + 5),
        || (*c.rx.borrow()).then_some(()),
    )
    .await;
    let takeover = t1.elapsed();
    assert!(
        takeover <= Duration::from_millis(ttl * 1000 + 1000),
        "takeover after leader death took {takeover:?} with a {ttl}s TTL"
    );
    eprintln!(
        "handover after resign: {handover:?}; takeover after death: {takeover:?} (ttl {ttl}s)"
    );
    c.resign.cancel();
    tokio::time::timeout(Duration::from_secs(10), c.task)
        .await
        .unwrap()
        .unwrap();
    assert!(election_keys(&etcd, &cfg.leader_election.name).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_steps_down_when_etcd_goes_away_and_returns() {
    let mut etcd = Etcd::start(EtcdOpts::default());
    let cfg = cfg_for(&etcd, 3);
    let a = replica(&cfg);
    daemon_support::wait_for("leader", Duration::from_secs(10), || {
        (*a.rx.borrow()).then_some(())
    })
    .await;
    etcd.stop_member(0);
    // Keep-alives fail: step down within 2/3 TTL plus one keep-alive period.
    daemon_support::wait_for("step down", Duration::from_secs(5), || {
        (!*a.rx.borrow()).then_some(())
    })
    .await;
    etcd.restart_member(0);
    daemon_support::wait_for("leader again", Duration::from_secs(45), || {
        (*a.rx.borrow()).then_some(())
    })
    .await;
    a.resign.cancel();
    tokio::time::timeout(Duration::from_secs(10), a.task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_three_members_one_member_killed_still_one_leader() {
    let mut etcd = Etcd::start(EtcdOpts {
        members: 3,
        tls: true,
        ..Default::default()
    });
    let cfg = cfg_for(&etcd, 3);
    let a = replica(&cfg);
    let b = replica(&cfg);
    daemon_support::wait_for("a leader over TLS", Duration::from_secs(15), || {
        (leaders(&[&a, &b]) == 1).then_some(())
    })
    .await;
    // Lose one member (maybe the one a replica's streams run through): the election goes on
    // over the other two; after a settling period there is again exactly one leader.
    etcd.kill_member(0);
    tokio::time::sleep(Duration::from_secs(6)).await;
    daemon_support::wait_for(
        "one leader after losing a member",
        Duration::from_secs(20),
        || (leaders(&[&a, &b]) == 1).then_some(()),
    )
    .await;
    for _ in 0..30 {
        assert_eq!(leaders(&[&a, &b]), 1, "exactly one leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for r in [a, b] {
        r.resign.cancel();
        tokio::time::timeout(Duration::from_secs(15), r.task)
            .await
            .unwrap()
            .unwrap();
    }
}
