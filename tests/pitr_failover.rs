//! PITR under leader election (issue 16): two daemon replicas of one cluster, one chain.
//! SIGKILL of the leader in the middle of a stream leaves the stored chain valid up to its last
//! delta; the other replica becomes leader and continues the same chain at last + 1 (same
//! base, no close, no gap, no second writer), and every delta verifies.

use std::time::Duration;

use crate::common::*;
use crate::daemon_support::*;
use etcd_lifeboat::pitr::chain::{read_chain, verify_chain};
use etcd_lifeboat::store::manifest::catalog;

/// Puts `n` keys `tag/i`; returns the revision of the last.
async fn puts(c: &etcd_client::Client, tag: &str, n: usize) -> i64 {
    let mut kv = c.kv_client();
    let mut rev = 0;
    for i in 0..n {
        rev = kv
            .put(format!("{tag}/{i}"), format!("value {i}"), None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
    }
    rev
}

#[test]
fn the_next_leader_continues_the_chain_after_sigkill() {
    let etcd = Etcd::start(EtcdOpts::default());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(etcd.client());
    let store_dir = etcd.dir.path().join("store");
    let store = local_store(&store_dir);
    // A yearly schedule: the only full backup is the leader's catch-up run on the empty store.
    let yaml = etcd.config_yaml(&store_dir)
        + "schedule:\n  cron: \"0 0 0 1 1 *\"\n\
           leader_election:\n  enabled: true\n  lease_ttl: 3s\n\
           pitr:\n  enabled: true\n  interval: 1s\n  idle_interval: 2s\n";
    let mut replicas: Vec<DaemonProc> = (0..2)
        .map(|i| {
            let port = free_port();
            let cfg = etcd.dir.path().join(format!("replica-{i}.yaml"));
            std::fs::write(
                &cfg,
                format!("{yaml}http:\n  listen: \"127.0.0.1:{port}\"\n"),
            )
            .unwrap();
            DaemonProc::spawn(
                &cfg,
                format!("127.0.0.1:{port}").parse().unwrap(),
                "--refresh-interval 1s --retry-backoff 1s",
                &etcd.dir.path().join(format!("replica-{i}.log")),
            )
        })
        .collect();
    let is_leader = |p: &DaemonProc| sample(&p.metrics(), "etcd_lifeboat_is_leader") == Some(1.0);
    wait("exactly one leader", Duration::from_secs(20), || {
        is_leader(&replicas[0]) ^ is_leader(&replicas[1])
    });
    let leader = if is_leader(&replicas[0]) { 0 } else { 1 };

    let mut bases = Vec::new();
    wait("the base backup", Duration::from_secs(20), || {
        bases = rt.block_on(catalog(&store)).unwrap().backups.clone();
        !bases.is_empty()
    });
    let base = bases[0].clone();
    let chain_reaches = |rev: i64| {
        wait(
            &format!("the chain reaches r{rev}"),
            Duration::from_secs(40),
            || {
                rt.block_on(read_chain(&store, &base))
                    .unwrap()
                    .last_revision
                    >= rev
            },
        )
    };

    // The leader streams; then it is killed while writes go on.
    let r1 = rt.block_on(puts(&client, "before", 50));
    chain_reaches(r1);
    let writes = rt.spawn({
        let c = client.clone();
        async move { puts(&c, "during", 200).await }
    });
    std::thread::sleep(Duration::from_millis(300));
    replicas[leader].child.kill().unwrap();
    replicas[leader].child.wait().unwrap();
    let at_kill = rt.block_on(read_chain(&store, &base)).unwrap();
    assert!(
        at_kill.gaps.is_empty() && at_kill.broken.is_empty() && at_kill.closed.is_none(),
        "after SIGKILL the stored chain is valid up to its last delta: {at_kill:?}"
    );
    let l = at_kill.last_revision;
    assert!(l >= r1, "chain ends at r{l}, before r{r1}");

    // The other replica takes over and continues the chain.
    let r2 = rt.block_on(writes).unwrap();
    let r3 = rt.block_on(puts(&client, "after", 20));
    let follower = &replicas[1 - leader];
    wait("the follower leads", Duration::from_secs(20), || {
        is_leader(follower)
    });
    chain_reaches(r3);
    let v = rt.block_on(verify_chain(&store, &base, None)).unwrap();
    assert!(v.ok(), "{:?}", v.problems());
    let ch = &v.chain;
    assert!(
        ch.closed.is_none(),
        "the chain was continued, not closed: {ch:?}"
    );
    assert_eq!(ch.base_id, base.id, "same base");
    let mut next = ch.base_revision + 1;
    for (i, d) in ch.deltas.iter().enumerate() {
        assert_eq!((d.seq, d.first_revision), (i as u64, next), "delta {i}");
        next = d.last_revision + 1;
    }
    assert!(
        ch.deltas.iter().any(|d| d.first_revision == l + 1),
        "a delta starts at r{} (the killed leader's last r{l} + 1)",
        l + 1
    );
    assert!(ch.last_revision >= r3 && r3 > r2);
    assert_eq!(
        rt.block_on(catalog(&store)).unwrap().backups.len(),
        1,
        "no new base was needed"
    );
}
