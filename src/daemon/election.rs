//! Leader election between daemon replicas with etcd's election API (the v3election service
//! that `etcdctl elect` uses; server side `server/etcdserver/api/v3election`), on a lease of
//! `leader_election.lease_ttl`.
//!
//! One session: grant a lease, keep it alive every TTL/3, `Campaign(name, value, lease)`
//! (blocks until this replica's key is the oldest under `name`). While leader, the lease keeps
//! the key; if keep-alives fail for 2/3 of the TTL the replica steps down on its own before
//! the server can expire the lease, so two replicas never both believe they lead. It also
//! steps down at once when the server answers a keep-alive with TTL 0 (the lease was revoked,
//! e.g. `etcdctl lease revoke`, or expired) or when `Observe` shows another key leading. The
//! daemon then cancels a running backup (fencing, see [`crate::daemon`]). A leader
//! that dies stops renewing: its key goes when the lease expires, and the next campaigner's
//! Campaign returns, i.e. takeover within the TTL. On shutdown the leader calls `Resign` and
//! revokes the lease at once.
//!
//! The state is published on a `watch` channel (`true` = leader) and in
//! `etcd_lifeboat_is_leader`. Every replica also follows `Observe(name)` to know who leads
//! ([`current_leader`], shown in `/readyz` and logged on change).
//!
//! With `clusters:`, each cluster runs its own election in its own etcd, named
//! `<leader_election.name>-<cluster>` ([`crate::config::Config::clusters`]), and publishes it
//! in its own `etcd_lifeboat_is_leader{cluster}`.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Client, LeaderKey, ResignOptions};
use tokio::sync::watch;
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::etcd::EtcdError;
use crate::metrics::Metrics;

/// Why an election session ended (it is retried with backoff; logged, never fatal).
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    /// No endpoint of `etcd.endpoints` answered.
    #[error("leader election: {0}")]
    Connect(#[from] EtcdError),
    /// An etcd call did not answer within `etcd.request_timeout` (or dial + request timeout).
    #[error("leader election: {0} timed out; check that etcd is reachable and healthy")]
    Timeout(&'static str),
    /// An etcd call failed.
    #[error("leader election: etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// The lease was revoked, expired or not renewed in time: this replica stepped down.
    #[error("leader election: lease {lease_id:x} lost {when}; campaigning again")]
    LeaseLost {
        /// The lease.
        lease_id: i64,
        /// "while campaigning" or "while leading (stepped down)".
        when: &'static str,
    },
    /// etcd answered a campaign without a leader key (a server bug).
    #[error("leader election: campaign answered without a leader key; campaigning again")]
    NoLeaderKey,
}

/// Per election name: the current leader's value as last observed; and the last value
/// observed in any election.
static CURRENT_LEADER: std::sync::Mutex<(Option<String>, BTreeMap<String, String>)> =
    std::sync::Mutex::new((None, BTreeMap::new()));

/// The current leader's value (`host/pid`) as last observed through `Observe` in any election
/// of this process (with one cluster: its election), if any.
pub fn current_leader() -> Option<String> {
    CURRENT_LEADER.lock().expect("leader lock").0.clone()
}

/// The current leader's value (`host/pid`) of the election `name` (the effective
/// `leader_election.name` of a cluster) as last observed, if any.
pub fn current_leader_of(name: &str) -> Option<String> {
    CURRENT_LEADER
        .lock()
        .expect("leader lock")
        .1
        .get(name)
        .cloned()
}

/// Follows the election's leader changes until the stream ends (etcd gone, session over).
/// While `ours` holds this replica's leader key and its creation revision, observing another
/// key created later as leader cancels `lost` (leadership held elsewhere: step down at once).
/// Older keys are ignored: a late message about the previous leader is no takeover.
async fn observe(
    client: Client,
    name: String,
    ours: watch::Receiver<Option<(Vec<u8>, i64)>>,
    lost: CancellationToken,
) {
    let mut election = client.election_client();
    let Ok(mut stream) = election.observe(name.clone()).await else {
        return;
    };
    while let Ok(Some(resp)) = stream.message().await {
        if let Some(kv) = resp.kv() {
            if let Some((key, rev)) = ours.borrow().as_ref() {
                if kv.key() != key.as_slice() && kv.create_revision() > *rev {
                    tracing::warn!(
                        leader_key = %String::from_utf8_lossy(kv.key()),
                        "leader election: another replica's key leads"
                    );
                    lost.cancel();
                }
            }
            let v = String::from_utf8_lossy(kv.value()).into_owned();
            let mut cur = CURRENT_LEADER.lock().expect("leader lock");
            if cur.1.get(&name).map(String::as_str) != Some(v.as_str()) {
                tracing::info!(leader = %v, "leader election: current leader");
                cur.1.insert(name.clone(), v.clone());
            }
            cur.0 = Some(v);
        }
    }
}

/// Value written under the election key: who this replica is (`host/pid`).
pub fn identity() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    format!("{host}/{}", std::process::id())
}

fn set_leader(m: &Metrics, tx: &watch::Sender<bool>, v: bool) {
    m.is_leader.set(i64::from(v));
    tx.send_if_modified(|cur| {
        let changed = *cur != v;
        *cur = v;
        changed
    });
}

/// Runs the election until `resign` is cancelled, then resigns (if leader) and revokes the
/// lease. Connection failures are retried with backoff (1 s doubling, at most the lease TTL
/// or 30 s); the replica is not leader meanwhile.
pub async fn run(cfg: Config, tx: watch::Sender<bool>, resign: CancellationToken) {
    let mut backoff = Duration::from_secs(1);
    let name = cfg.leader_election.name.clone();
    let value = identity();
    let m = crate::metrics::for_cluster(cfg.name.as_deref());
    let cap = cfg.leader_election.lease_ttl.min(Duration::from_secs(30));
    while !resign.is_cancelled() {
        let started = Instant::now();
        match session(&cfg, &name, &value, m, &tx, &resign).await {
            Ok(()) => break,
            Err(e) => {
                set_leader(m, &tx, false);
                if started.elapsed() > cfg.leader_election.lease_ttl {
                    // A session that held for a while: start the backoff afresh.
                    backoff = Duration::from_secs(1);
                }
                tracing::warn!(error = %e, retry_in = ?backoff, "leader election: session ended");
                tokio::select! {
                    _ = resign.cancelled() => break,
                    _ = sleep(backoff) => {}
                }
                // Capped at the lease TTL, so that a replica recovers from an etcd outage about
                // as fast as a takeover would happen.
                backoff = (backoff * 2).min(cap);
            }
        }
    }
    set_leader(m, &tx, false);
}

/// One lease session. `Ok(())`: resigned on request. `Err`: the session was lost.
async fn session(
    cfg: &Config,
    name: &str,
    value: &str,
    m: &Metrics,
    tx: &watch::Sender<bool>,
    resign: &CancellationToken,
) -> Result<(), ElectionError> {
    let rt = cfg.etcd.request_timeout;
    let ttl = cfg.leader_election.lease_ttl;
    let client = timeout(
        cfg.etcd.dial_timeout + rt,
        crate::etcd::connect(&cfg.etcd, &cfg.etcd.endpoints),
    )
    .await
    .map_err(|_| ElectionError::Timeout("connecting to etcd"))??;
    let mut lease = client.lease_client();
    let granted = timeout(rt, lease.grant(ttl.as_secs().max(2) as i64, None))
        .await
        .map_err(|_| ElectionError::Timeout("lease grant"))??;
    let lease_id = granted.id();
    tracing::debug!(lease = lease_id, "leader election: lease granted");

    // Keep-alive task: reports the lease as lost when renewals failed for 2/3 of the TTL or
    // the server says it expired.
    let lost = CancellationToken::new();
    let keeper = tokio::spawn(keep_alive(client.clone(), lease_id, ttl, rt, lost.clone()));
    let _abort = AbortOnDrop(keeper);
    let (our_key, our_key_rx) = watch::channel(None);
    let _observer = AbortOnDrop(tokio::spawn(observe(
        client.clone(),
        name.to_string(),
        our_key_rx,
        lost.clone(),
    )));

    let result = async {
        let mut election = client.election_client();
        // Campaign blocks while another replica leads; a per-request client timeout may end
        // it early, in which case we campaign again on the same lease.
        let leader_key: LeaderKey = loop {
            let r = tokio::select! {
                _ = resign.cancelled() => return Ok(None),
                _ = lost.cancelled() => return Err(ElectionError::LeaseLost { lease_id, when: "while campaigning" }),
                r = election.campaign(name, value, lease_id) => r,
            };
            match r {
                Ok(mut resp) => match resp.take_leader() {
                    Some(k) => break k,
                    None => return Err(ElectionError::NoLeaderKey),
                },
                Err(e) if is_timeout(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        tracing::info!(
            name,
            value,
            lease = format!("{lease_id:x}"),
            "leader election: became leader"
        );
        our_key.send_replace(Some((leader_key.key().to_vec(), leader_key.rev())));
        set_leader(m, tx, true);
        tokio::select! {
            _ = resign.cancelled() => Ok(Some(leader_key)),
            _ = lost.cancelled() => {
                set_leader(m, tx, false);
                Err(ElectionError::LeaseLost { lease_id, when: "while leading: stepped down" })
            }
        }
    }
    .await;

    match result {
        Ok(key) => {
            set_leader(m, tx, false);
            if let Some(key) = key {
                let mut election = client.election_client();
                match timeout(
                    rt,
                    election.resign(Some(ResignOptions::new().with_leader(key))),
                )
                .await
                {
                    Ok(Ok(_)) => tracing::info!("leader election: resigned"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "leader election: resign failed"),
                    Err(_) => tracing::warn!("leader election: resign timed out"),
                }
            }
            let _ = timeout(rt, lease.revoke(lease_id)).await;
            Ok(())
        }
        Err(e) => {
            set_leader(m, tx, false);
            // Best effort: free the key so another replica does not wait for the TTL.
            let _ = timeout(Duration::from_secs(1), lease.revoke(lease_id)).await;
            Err(e)
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn is_timeout(e: &etcd_client::Error) -> bool {
    match e {
        // gRPC codes: 1 CANCELLED, 4 DEADLINE_EXCEEDED (tonic is not a direct dependency).
        etcd_client::Error::GRpcStatus(s) => matches!(i32::from(s.code()), 1 | 4),
        _ => false,
    }
}

async fn keep_alive(
    client: Client,
    lease_id: i64,
    ttl: Duration,
    rt: Duration,
    lost: CancellationToken,
) {
    let deadline_after = ttl * 2 / 3;
    let every = (ttl / 3).max(Duration::from_millis(500));
    let mut last_ok = Instant::now();
    let mut lease = client.lease_client();
    let mut stream: Option<(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)> = None;
    loop {
        if last_ok.elapsed() >= deadline_after {
            lost.cancel();
            return;
        }
        if stream.is_none() {
            if let Ok(Ok(s)) = timeout(rt.min(every), lease.keep_alive(lease_id)).await {
                stream = Some(s);
            }
        }
        if let Some((keeper, responses)) = stream.as_mut() {
            let ok = timeout(every, async {
                keeper.keep_alive().await?;
                responses.message().await
            })
            .await;
            match ok {
                Ok(Ok(Some(resp))) if resp.ttl() > 0 => last_ok = Instant::now(),
                Ok(Ok(Some(_))) => {
                    tracing::warn!(
                        lease = format!("{lease_id:x}"),
                        "leader election: lease expired"
                    );
                    lost.cancel();
                    return;
                }
                _ => stream = None,
            }
        }
        sleep(if stream.is_some() {
            every
        } else {
            Duration::from_millis(500)
        })
        .await;
    }
}
