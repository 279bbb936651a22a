//! `etcd-lifeboat daemon`: scheduled backups, retention, metrics, health, leader election.
//!
//! # Tasks
//! - **scheduler** ([`schedule`]): sleeps until the next cron slot, then (if leader) runs one
//!   backup with retries, prunes with the retention policy and re-reads the store catalog. Runs
//!   never overlap (one loop); missed slots coalesce into one run. Slots follow this process's
//!   clock and its own last run; only at start, and whenever this replica becomes leader, is
//!   the last run taken from the store: the newest backup that is not future-dated (never later
//!   than now), so a slot missed while down (or while another replica led and died) runs at
//!   once, and a manifest from a host whose clock is ahead never suppresses runs.
//! - **fencing**: when leadership is lost during a backup (lease revoked or expired,
//!   keep-alives failing, another leader observed), the backup is cancelled through its
//!   `CancellationToken` (the pipeline stores nothing) and retention is skipped.
//! - **re-verification**: on `verify.cron` (leader only) the newest backup is downloaded,
//!   decompressed and checked in full against its manifest
//!   (`etcd_lifeboat_verifies_total`, `etcd_lifeboat_verify_last_success_timestamp_seconds`,
//!   the `verify` check of `/readyz`).
//! - **catalog refresher**: every `--refresh-interval` reads the store catalog into the
//!   `etcd_lifeboat_store_*` metrics and `/readyz`, so the backup age is visible whoever takes
//!   the backups (a CronJob, another replica).
//! - **PITR capture** ([`crate::pitr::capture`]) when `pitr.enabled`: the leader streams
//!   deltas after the newest backup; its metrics are in the cluster's set and a broken chain
//!   fails the cluster's `pitr` check of `/readyz` until the new chain stores a delta.
//! - **HTTP** ([`http`]): `/metrics`, `/healthz`, `/readyz` on `http.listen`.
//! - **election** ([`election`]) when `leader_election.enabled`.
//!
//! # Clusters
//! Each cluster of [`Config::clusters`] (one for a config without `clusters:`) gets all of the
//! tasks above but HTTP: its own scheduler, election (named `<leader_election.name>-<name>`,
//! in its own etcd), refresher, re-verification, PITR capture, store and metric set
//! ([`metrics::for_cluster`]), in a task of its own. Nothing is shared between clusters but
//! the HTTP server and the shutdown token, so a cluster whose etcd or store hangs delays no
//! other cluster's backup. `/readyz` reports each cluster ([`http`]).
//!
//! # Shutdown
//! SIGTERM or SIGINT (or the `shutdown` token of [`run_with_shutdown`]): no new run starts; a
//! running backup gets `--shutdown-grace` to finish, then is cancelled through its
//! `CancellationToken` (the pipeline removes its uploads and writes no manifest) and awaited;
//! then the leader resigns, the HTTP server stops, and `run` returns `Ok` (exit 0).
//!
//! # Timeouts
//! Store listings and deletions are bounded by `etcd.request_timeout`-derived limits
//! (`--store-timeout`), one backup attempt by `etcd.snapshot_timeout` plus `--upload-timeout`,
//! the election's etcd calls by `etcd.request_timeout`.

pub mod election;
pub mod http;
pub mod schedule;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::time::{sleep, timeout};
use tokio_util::sync::CancellationToken;

use crate::backup::{run_backup, BackupOptions};
use crate::config::{Config, ConfigError};
use crate::metrics;
use crate::store::manifest::{catalog_at, Catalog, Manifest};
use crate::store::{Store, StoreError};

use self::http::{Health, SharedHealth};
use self::schedule::{Due, Schedule};

/// Options of the daemon (the `daemon` subcommand's flags convert into it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonOptions {
    /// How often the store catalog is re-read for the store metrics and /readyz.
    pub refresh_interval: Duration,
    /// On shutdown, how long a running backup may still take before it is cancelled.
    pub shutdown_grace: Duration,
    /// Extra attempts of a failed backup inside one scheduled run.
    pub retries: u32,
    /// Wait before the first retry; doubles on each further retry (at most 5 min).
    pub retry_backoff: Duration,
    /// Time allowed for one store listing or deletion.
    pub store_timeout: Duration,
    /// Time allowed for one backup attempt beyond `etcd.snapshot_timeout` (compression, upload).
    pub upload_timeout: Duration,
    /// Do not apply the retention policy after backups.
    pub no_prune: bool,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            refresh_interval: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(20),
            retries: 3,
            retry_backoff: Duration::from_secs(5),
            store_timeout: Duration::from_secs(60),
            upload_timeout: Duration::from_secs(30 * 60),
            no_prune: false,
        }
    }
}

/// Why the daemon could not start (once running, failures are logged and retried).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// `schedule.cron`, `verify.cron` or `schedule.timezone` is invalid (exit 2).
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The store cannot be built from the config.
    #[error("storage: cannot set up the store: {0}; check the `storage` section of the config")]
    Store(#[from] StoreError),
    /// The store of cluster `cluster` (of `clusters:`) cannot be built from its config.
    #[error("cluster {cluster}: storage: cannot set up the store: {source}; check the `storage` section of that cluster (or the top-level one it inherits)")]
    ClusterStore {
        /// The cluster's name.
        cluster: String,
        /// The cause.
        source: StoreError,
    },
    /// `http.listen` cannot be bound.
    #[error("{0}")]
    Listen(#[from] http::ListenError),
}

/// Runs the daemon until SIGTERM or SIGINT; `Ok(())` after a clean shutdown (exit 0).
///
/// Errors (exit 1): the HTTP address cannot be bound, the store cannot be built from the
/// config, or the schedule is invalid (exit 2 via `ConfigError`).
pub async fn run(args: DaemonOptions, cfg: Config) -> Result<(), DaemonError> {
    let shutdown = CancellationToken::new();
    let sig = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        sig.cancel();
    });
    run_with_shutdown(args, cfg, shutdown, None).await
}

/// Resolves on the first SIGTERM or SIGINT (logged). The one signal handler of the program:
/// the daemon stops on it, `backup` cancels its run.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install SIGTERM handler");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}

/// As [`run`], stopped by `shutdown` instead of signals. `bound`, when given, receives the
/// HTTP address actually bound (for `http.listen` with port 0).
///
/// Each cluster of [`Config::clusters`] gets its own task (scheduler, election, catalog
/// refresher, re-verification) with its own store, metric set and `/readyz` entry; the tasks
/// share nothing but the HTTP server and the shutdown token, so one cluster's dead etcd or
/// slow store never delays another's backups.
pub async fn run_with_shutdown(
    args: DaemonOptions,
    cfg: Config,
    shutdown: CancellationToken,
    bound: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
) -> Result<(), DaemonError> {
    let multi = !cfg.clusters.is_empty();
    let clusters = cfg.clusters();
    // Store clients are built concurrently (S3: the AWS credential chain may take a while).
    let stores = futures::future::try_join_all(clusters.iter().map(|c| async {
        Store::from_config(&c.config.storage)
            .await
            .map_err(|source| match (&c.name, multi) {
                (Some(n), true) => DaemonError::ClusterStore {
                    cluster: n.clone(),
                    source,
                },
                _ => DaemonError::Store(source),
            })
    }))
    .await?;
    let mut units = Vec::new();
    for (c, store) in clusters.into_iter().zip(stores) {
        let name = c.name.clone();
        let at = |e: ConfigError| match &name {
            Some(n) if multi => ConfigError::new(format!("cluster {n}: {}", e.key), e.message),
            _ => e,
        };
        let ccfg = c.config;
        let tz = ccfg.schedule.time_zone().map_err(at)?;
        let sched = Schedule::new(&ccfg.schedule.cron, tz)
            .map_err(|m| at(ConfigError::new("schedule.cron", m)))?;
        let vs = verify_schedule(&ccfg, tz).map_err(at)?;
        let store = Arc::new(store);
        // Backups are secrets: an open store root or temp dir is reported on /readyz (a
        // warning, not a readiness failure) and in the log.
        let warnings = crate::workdir::permission_warnings(&ccfg);
        for w in &warnings {
            tracing::warn!(cluster = name.as_deref().unwrap_or(""), "{w}");
        }
        let health: SharedHealth = Arc::new(Mutex::new(Health {
            warnings,
            election: ccfg
                .leader_election
                .enabled
                .then(|| ccfg.leader_election.name.clone()),
            name: name.clone(),
            ..Health::default()
        }));
        units.push((name, Arc::new(ccfg), store, health, sched, vs));
    }
    // Leftovers of killed runs: temp dirs whose lock is free, local temp files whose writer is
    // gone (per temp base, once).
    let mut bases: Vec<std::path::PathBuf> = units
        .iter()
        .map(|u| crate::workdir::temp_base(&u.1))
        .collect();
    bases.dedup();
    for base in bases {
        let swept = tokio::task::spawn_blocking(move || crate::workdir::sweep_stale(&base))
            .await
            .unwrap_or_default();
        if !swept.is_empty() {
            tracing::info!(count = swept.len(), "removed the temp files of killed runs");
        }
    }
    let http_stop = CancellationToken::new();
    let views: Vec<http::ClusterHealth> = units
        .iter()
        .map(|u| http::ClusterHealth {
            name: if multi { u.0.clone() } else { None },
            health: u.3.clone(),
            max_age: u.1.http.max_backup_age,
        })
        .collect();
    let (addr, http_task) = http::serve(&cfg.http.listen, views, http_stop.clone()).await?;
    if let Some(tx) = bound {
        let _ = tx.send(addr);
    }
    tracing::info!(
        listen = %addr,
        clusters = units.len(),
        leader_election = cfg.leader_election.enabled,
        "daemon started"
    );
    let mut tasks = Vec::new();
    for (name, ccfg, store, health, sched, vs) in units {
        let span = tracing::info_span!("cluster", cluster = name.as_deref().unwrap_or(""));
        let election = ccfg.leader_election.enabled;
        let (leader_tx, leader_rx) = watch::channel(!election);
        let d = Arc::new(Daemon {
            args: args.clone(),
            m: metrics::for_cluster(name.as_deref()),
            cfg: ccfg,
            store,
            health,
            shutdown: shutdown.clone(),
            leader: leader_rx,
            election,
        });
        let task = run_cluster(d, sched, vs, leader_tx);
        tasks.push(tokio::spawn(tracing::Instrument::instrument(task, span)));
    }
    for t in tasks {
        let _ = t.await;
    }
    http_stop.cancel();
    let _ = timeout(Duration::from_secs(5), http_task).await;
    tracing::info!("daemon stopped");
    Ok(())
}

/// One cluster's part of the daemon until shutdown: stale-upload cleanup, election, catalog
/// refresher, re-verification and the scheduler; then resign and stop.
async fn run_cluster(
    d: Arc<Daemon>,
    sched: Schedule,
    vs: Option<Schedule>,
    leader_tx: watch::Sender<bool>,
) {
    let cfg = d.cfg.clone();
    tracing::info!(
        store = %d.store.describe(),
        schedule = %cfg.schedule.cron,
        timezone = cfg.schedule.timezone.as_deref().unwrap_or("UTC"),
        leader_election = d.election,
        "cluster started"
    );
    // Leadership.
    let resign = CancellationToken::new();
    let election_task = if d.election {
        d.m.is_leader.set(0);
        Some(tokio::spawn(election::run(
            (*cfg).clone(),
            leader_tx,
            resign.clone(),
        )))
    } else {
        d.m.is_leader.set(1);
        drop(leader_tx);
        None
    };
    d.health.lock().expect("health").leader = *d.leader.borrow();

    // Catalog refresher (it first removes S3 multipart uploads older than
    // retention.orphan_grace, leftovers of killed runs).
    let refresher = {
        let d = d.clone();
        tokio::spawn(async move {
            let grace = d.cfg.retention.orphan_grace;
            match timeout(d.args.store_timeout, d.store.remove_stale_uploads(grace)).await {
                Ok(Ok(r)) if !r.is_empty() => {
                    tracing::info!(uploads = ?r, "removed interrupted uploads")
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "could not clean interrupted uploads"),
                Err(_) => tracing::warn!("cleaning interrupted uploads timed out"),
            }
            loop {
                d.refresh().await;
                tokio::select! {
                    _ = d.shutdown.cancelled() => break,
                    _ = sleep(d.args.refresh_interval) => {}
                }
            }
        })
    };
    // Point-in-time recovery: the leader's delta capture (pitr::capture), off by default;
    // its metrics go into this cluster's set, its broken chain into this cluster's /readyz.
    let pitr = crate::pitr::capture::spawn(
        cfg.clone(),
        d.store.clone(),
        d.leader.clone(),
        d.shutdown.clone(),
        pitr_backup(cfg.clone(), d.store.clone()),
        d.m,
    )
    .map(|(task, status)| {
        d.health.lock().expect("health").pitr = Some(status);
        task
    });
    let verifier = vs.map(|vs| {
        let d = d.clone();
        tokio::spawn(async move { d.verify_loop(&vs).await })
    });
    schedule_loop(&*d, &sched, &d.shutdown, d.leader.clone(), d.election).await;
    if let Some(v) = verifier {
        // The verify loop returns on shutdown (a running verification is dropped: it writes
        // nothing).
        let _ = timeout(Duration::from_secs(10), v).await;
    }
    if let Some(p) = pitr {
        let _ = timeout(Duration::from_secs(15), p).await;
    }
    // Shutdown: the scheduler has finished or cancelled its backup; resign, stop the rest.
    resign.cancel();
    if let Some(t) = election_task {
        let _ = timeout(Duration::from_secs(10), t).await;
    }
    refresher.abort();
}

/// The full backup that starts a new PITR chain (pitr does not know the backup pipeline).
fn pitr_backup(cfg: Arc<Config>, store: Arc<Store>) -> crate::pitr::capture::BackupFn {
    Arc::new(move |cancel| {
        let (cfg, store) = (cfg.clone(), store.clone());
        Box::pin(async move {
            let opts = BackupOptions {
                tag: None,
                progress: false,
                cancel,
            };
            run_backup(&cfg, &store, &opts)
                .await
                .map_err(|e| format!("{e:#}"))
        })
    })
}

/// The parsed `verify.cron` (in `schedule.timezone`), `None` when it is `""` (off).
///
/// Errors: the expression is invalid ([`crate::config::ConfigError`] on `verify.cron`).
fn verify_schedule(cfg: &Config, tz: chrono_tz::Tz) -> Result<Option<Schedule>, ConfigError> {
    if cfg.verify.cron.trim().is_empty() {
        return Ok(None);
    }
    Ok(Some(
        Schedule::new(&cfg.verify.cron, tz).map_err(|m| ConfigError::new("verify.cron", m))?,
    ))
}

/// Reads the catalog into the store metrics and the health state. Returns it on success.
/// The store counts as reachable when [`Store::check`] and the catalog listing both succeed.
/// Backups dated more than `tolerance` ahead are flagged (metric, /readyz) and ignored for
/// the backup age.
async fn refresh(
    store: &Store,
    health: &SharedHealth,
    m: &metrics::Metrics,
    limit: Duration,
    tolerance: Duration,
) -> Option<Catalog> {
    let r = timeout(limit, async {
        store.check().await?;
        catalog_at(store, Utc::now(), tolerance).await
    })
    .await;
    let mut h = health.lock().expect("health");
    match r {
        Ok(Ok(cat)) => {
            m.refresh_store(&cat);
            h.store = Some(Ok(()));
            h.backups = cat.backups.len();
            h.newest = cat.newest_by_time().map(|m| (m.id.clone(), m.finished_at));
            if let Some(m) = cat.backups.first() {
                h.cluster_id = Some(m.cluster_id.clone());
            }
            let future: Vec<String> = cat
                .future()
                .map(|m| format!("{} (finished_at {})", m.id, m.finished_at.to_rfc3339()))
                .collect();
            let broken: Vec<String> = cat
                .broken
                .iter()
                .map(|b| format!("{}: {}", b.key, b.reason))
                .collect();
            // Logged when the set changes, not on every refresh.
            if !future.is_empty() && future != h.future {
                tracing::warn!(future = ?future, tolerance = ?tolerance,
                    "future-dated backups in the store (a writer's clock is ahead); ignored for age and scheduling");
            }
            if !broken.is_empty() && broken != h.broken {
                tracing::warn!(broken = ?broken, "broken manifests in the store; prune leaves them");
            }
            h.future = future;
            h.broken = broken;
            Some(cat)
        }
        Ok(Err(e)) => {
            m.record_store_refresh_error();
            tracing::warn!(error = %e, "store check or catalog read failed");
            h.store = Some(Err(e.to_string()));
            None
        }
        Err(_) => {
            m.record_store_refresh_error();
            tracing::warn!(timeout = ?limit, "store catalog read timed out");
            h.store = Some(Err(format!("catalog read timed out after {limit:?}")));
            None
        }
    }
}

/// The last run to assume at start or takeover, from the catalog: the `finished_at` of the
/// newest backup that is not future-dated, never later than `now`; `None` when there is none.
fn last_run_from(cat: &Catalog, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cat.newest_by_time().map(|m| m.finished_at.min(now))
}

struct Daemon {
    args: DaemonOptions,
    /// This cluster's metric set.
    m: &'static metrics::Metrics,
    cfg: Arc<Config>,
    store: Arc<Store>,
    health: SharedHealth,
    shutdown: CancellationToken,
    /// Leadership (`true` = leader); always `true` without election.
    leader: watch::Receiver<bool>,
    /// Whether leader election is on (else leadership is never lost).
    election: bool,
}

/// Latest wait in one sleep, so that wall-clock jumps (suspend, NTP steps) are noticed.
const MAX_SLEEP: Duration = Duration::from_secs(60);

impl Daemon {
    /// [`last_run_from`] the store's catalog; on a read error, `now` (do not trigger a
    /// catch-up run on a store we cannot read).
    async fn last_from_store(&self) -> Option<DateTime<Utc>> {
        match self.refresh().await {
            Some(cat) => last_run_from(&cat, Utc::now()),
            None => Some(Utc::now()),
        }
    }

    /// The catalog refresh, dropped at shutdown (it only reads): a slow store must not hold
    /// SIGTERM up for `--store-timeout`.
    async fn refresh(&self) -> Option<Catalog> {
        tokio::select! {
            c = refresh(
                &self.store,
                &self.health,
                self.m,
                self.args.store_timeout,
                self.cfg.store.future_tolerance,
            ) => c,
            _ = self.shutdown.cancelled() => None,
        }
    }

    /// Whether this replica may write: leader, or election off.
    fn is_leader(&self) -> bool {
        !self.election || *self.leader.borrow()
    }

    /// Resolves when leadership is lost (never without election).
    async fn leadership_lost(&self) {
        if !self.election {
            return std::future::pending().await;
        }
        let mut rx = self.leader.clone();
        loop {
            if !*rx.borrow_and_update() {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Re-verifies the newest backup on `sched` while leader, until shutdown.
    async fn verify_loop(&self, sched: &Schedule) {
        let mut last = Utc::now();
        loop {
            let now = Utc::now();
            let wait = match sched.due(Some(last), now) {
                Due::Now { slot, .. } => {
                    last = slot;
                    if self.is_leader() {
                        tokio::select! {
                            _ = self.shutdown.cancelled() => return,
                            _ = self.verify_newest() => {}
                        }
                    }
                    continue;
                }
                Due::At(t) => (t - now).to_std().unwrap_or_default().min(MAX_SLEEP),
                Due::Never => MAX_SLEEP,
            };
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = sleep(wait) => {}
            }
        }
    }

    /// Downloads, decompresses and checks the newest backup (the first in the one order of
    /// truth) against its manifest, and every delta of its PITR chain; records the result in
    /// the metrics and /readyz. An empty
    /// store is not a failure (the backup-age checks report it).
    async fn verify_newest(&self) {
        let limit = self.cfg.etcd.snapshot_timeout + self.args.upload_timeout;
        let r = timeout(limit, async {
            let cat = catalog_at(&self.store, Utc::now(), self.cfg.store.future_tolerance)
                .await
                .map_err(|e| format!("reading the catalog: {e}"))?;
            let Some(m) = cat.backups.into_iter().next() else {
                return Ok(None);
            };
            // Encrypted backups: the daemon holds no private key unless
            // ETCD_LIFEBOAT_AGE_IDENTITY_FILE gives one; without it only the stored
            // object's size and sha256 are checked (bit rot, tampering).
            let ids = crate::crypto::identities_from_env()
                .map_err(|e| format!("ETCD_LIFEBOAT_AGE_IDENTITY_FILE: {e}"))?;
            let base = crate::workdir::temp_base(&self.cfg);
            match crate::acquire::verify_stored(&self.store, &m, ids.clone(), &base).await {
                Ok(crate::acquire::Verified::Content(_)) => {}
                Ok(crate::acquire::Verified::CiphertextOnly(_)) => {
                    tracing::info!(id = %m.id, "re-verification: encrypted backup without an identity: stored size and sha256 checked, content not decrypted");
                }
                Err(e) => return Err(format!("backup {}: {e}", m.id)),
            }
            // Its PITR delta chain, when it has one (at most a schedule interval of deltas).
            let v = crate::pitr::chain::verify_chain(&self.store, &m, ids)
                .await
                .map_err(|e| format!("backup {}: reading its PITR chain: {e}", m.id))?;
            if !v.ok() {
                return Err(format!(
                    "backup {}: PITR chain: {}",
                    m.id,
                    v.problems().join("; ")
                ));
            }
            Ok(Some(m.id.clone()))
        })
        .await
        .unwrap_or_else(|_| Err(format!("re-verification exceeded {limit:?}")));
        let now = Utc::now();
        match r {
            Ok(None) => tracing::info!("re-verification: the store holds no backup yet"),
            Ok(Some(id)) => {
                self.m.record_verify(true);
                tracing::info!(id = %id, "re-verification: newest backup verified");
                self.health.lock().expect("health").last_verify = Some((now, Ok(id)));
            }
            Err(e) => {
                self.m.record_verify(false);
                tracing::error!(error = %e, "re-verification of the newest backup failed");
                self.health.lock().expect("health").last_verify = Some((now, Err(e)));
            }
        }
    }

    /// One scheduled run: backup with retries, then prune and catalog refresh on success.
    async fn run_once(&self) {
        let started = Instant::now();
        let mut backoff = self.args.retry_backoff;
        let mut attempt = 0u32;
        let result = loop {
            attempt += 1;
            match self.backup_attempt().await {
                Ok(m) => break Ok(m),
                Err(Attempt::Cancelled(e)) => break Err(e),
                Err(Attempt::Fenced(e)) => {
                    // Not a failure of the backup: another replica leads now and backs up.
                    tracing::warn!(reason = %e, "backup cancelled: this replica is no longer leader; retention skipped");
                    self.refresh().await;
                    return;
                }
                Err(Attempt::Failed(e)) => {
                    if attempt > self.args.retries
                        || self.shutdown.is_cancelled()
                        || !self.is_leader()
                    {
                        break Err(e);
                    }
                    tracing::warn!(attempt, error = %e, retry_in = ?backoff, "backup failed; retrying");
                    self.m.backup_retries.inc();
                    tokio::select! {
                        _ = self.shutdown.cancelled() => break Err(e),
                        _ = sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(300));
                }
            }
        };
        let now = Utc::now();
        match result {
            Ok(m) => {
                let took = started.elapsed();
                self.m.record_backup_success(&m, took);
                tracing::info!(id = %m.id, revision = m.revision, keys = m.total_key,
                    raw_bytes = m.total_size, stored_bytes = m.stored_bytes, seconds = took.as_secs_f64(),
                    "backup stored");
                self.health.lock().expect("health").last_run = Some((now, Ok(m.id.clone())));
                if !self.is_leader() {
                    tracing::warn!("leadership lost after the backup: retention skipped");
                } else if !self.args.no_prune && !self.shutdown.is_cancelled() {
                    self.prune().await;
                }
            }
            Err(e) => {
                self.m.record_backup_failure_after(started.elapsed());
                tracing::error!(error = %e, attempts = attempt, "backup run failed");
                self.health.lock().expect("health").last_run = Some((now, Err(e)));
            }
        }
        self.refresh().await;
    }

    async fn prune(&self) {
        // Dropped at shutdown: prune deletes a backup's manifest before its data, so what an
        // interrupted prune leaves is an orphan the next prune removes.
        let r = tokio::select! {
            r = timeout(
                self.args.store_timeout * 4,
                crate::store::retention::prune(&self.cfg, &self.store, false),
            ) => r,
            _ = self.shutdown.cancelled() => {
                tracing::info!("shutdown: retention run dropped; the next one finishes it");
                return;
            }
        };
        let m = self.m;
        match r {
            Ok(Ok(plan)) => {
                m.prunes_total.with_label_values(&["success"]).inc();
                m.prune_deleted
                    .with_label_values(&["backup"])
                    .inc_by(plan.removed().count() as u64);
                m.prune_deleted
                    .with_label_values(&["orphan"])
                    .inc_by(plan.orphans_removed().count() as u64);
                tracing::info!(
                    kept = plan.kept().count(),
                    removed = plan.removed().count(),
                    orphans_removed = plan.orphans_removed().count(),
                    "retention applied"
                );
            }
            Ok(Err(e)) => {
                m.prunes_total.with_label_values(&["failure"]).inc();
                tracing::error!(error = %format!("{e:#}"), "retention failed");
            }
            Err(_) => {
                m.prunes_total.with_label_values(&["failure"]).inc();
                tracing::error!("retention timed out");
            }
        }
    }

    /// One backup attempt in its own task, bounded by the snapshot and upload timeouts, and
    /// by shutdown: after `--shutdown-grace` the backup is cancelled and awaited (cleanup).
    async fn backup_attempt(&self) -> Result<Manifest, Attempt> {
        let g = &self.m.backup_in_progress;
        g.set(1);
        let r = self.backup_attempt_inner().await;
        g.set(0);
        r
    }

    async fn backup_attempt_inner(&self) -> Result<Manifest, Attempt> {
        let cancel = CancellationToken::new();
        let (cfg, store, c) = (self.cfg.clone(), self.store.clone(), cancel.clone());
        let mut task = tokio::spawn(async move {
            let opts = BackupOptions {
                tag: None,
                progress: false,
                cancel: c,
            };
            run_backup(&cfg, &store, &opts)
                .await
                .map_err(|e| format!("{e:#}"))
        });
        let limit = self.cfg.etcd.snapshot_timeout + self.args.upload_timeout;
        let deadline = sleep(limit);
        tokio::pin!(deadline);
        let mut fenced = false;
        let why = tokio::select! {
            r = &mut task => return join(r).map_err(Attempt::Failed),
            _ = &mut deadline => format!("backup attempt exceeded {limit:?}: cancelled"),
            _ = self.leadership_lost() => {
                fenced = true;
                "leadership lost during the backup (lease revoked or expired): cancelled, nothing is stored".to_string()
            }
            _ = self.shutdown.cancelled() => {
                tracing::info!(grace = ?self.args.shutdown_grace, "shutdown: waiting for the running backup");
                match timeout(self.args.shutdown_grace, &mut task).await {
                    Ok(r) => return join(r).map_err(Attempt::Cancelled),
                    Err(_) => "shutdown: backup cancelled after the grace period".to_string(),
                }
            }
        };
        tracing::warn!(reason = %why, "cancelling backup");
        cancel.cancel();
        // The pipeline cleans up (aborts uploads, no manifest); wait for it, bounded: on
        // shutdown by 10 s (a call hung on a dead etcd may not see the cancellation; what an
        // aborted task leaves, the next start sweeps), else by 60 s.
        let bound = if self.shutdown.is_cancelled() {
            Duration::from_secs(10)
        } else {
            Duration::from_secs(60)
        };
        match timeout(bound, &mut task).await {
            Ok(Ok(Ok(m))) => Ok(m), // finished just before noticing the cancellation
            Ok(_) => Err(if fenced {
                Attempt::Fenced(why)
            } else if self.shutdown.is_cancelled() {
                Attempt::Cancelled(why)
            } else {
                Attempt::Failed(why)
            }),
            Err(_) => {
                task.abort();
                let why = format!("{why}; cleanup did not finish within {bound:?}");
                Err(if fenced {
                    Attempt::Fenced(why)
                } else {
                    Attempt::Cancelled(why)
                })
            }
        }
    }
}

impl Runner for Daemon {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
    async fn run(&self) {
        self.run_once().await
    }
    async fn last_backup(&self) -> Option<DateTime<Utc>> {
        self.last_from_store().await
    }
    fn set_next(&self, t: DateTime<Utc>) {
        self.m.next_backup.set(t.timestamp() as f64);
        self.health.lock().expect("health").next_run = Some(t);
    }
    fn set_leader(&self, leader: bool) {
        self.health.lock().expect("health").leader = leader;
    }
}

/// What [`schedule_loop`] drives: the daemon backs up; the unit tests count runs under
/// tokio's paused clock.
pub(crate) trait Runner {
    /// Wall-clock now.
    fn now(&self) -> DateTime<Utc>;
    /// One scheduled run (backup, retries, prune); never called concurrently.
    async fn run(&self);
    /// The last run to assume at start or takeover: when the newest backup in the store that
    /// is not future-dated finished, never later than now (`None`: no such backup).
    async fn last_backup(&self) -> Option<DateTime<Utc>>;
    /// The next slot, for metrics and /readyz.
    fn set_next(&self, t: DateTime<Utc>);
    /// Leadership as the loop last saw it.
    fn set_leader(&self, leader: bool);
}

/// The scheduler: one loop, so runs never overlap. Sleeps until the next slot (in chunks of at
/// most [`MAX_SLEEP`], re-reading the wall clock), then runs if leader; slots missed while a
/// run was going on, while down (`last` from the store) or before a takeover coalesce into
/// one run. Returns when `shutdown` is cancelled (a run in progress handles shutdown itself).
pub(crate) async fn schedule_loop<R: Runner>(
    r: &R,
    sched: &Schedule,
    shutdown: &CancellationToken,
    mut leader_rx: watch::Receiver<bool>,
    election: bool,
) {
    let mut leader = *leader_rx.borrow_and_update();
    r.set_leader(leader);
    let mut last: Option<DateTime<Utc>> = if leader {
        r.last_backup().await
    } else {
        Some(r.now())
    };
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let now = r.now();
        let due = sched.due(last, now);
        let wait = match due {
            Due::Now { slot, missed } => {
                if missed > 1 {
                    tracing::info!(missed, slot = %slot, "missed schedule slots: running once now");
                }
                Duration::ZERO
            }
            Due::At(t) => {
                r.set_next(t);
                (t - now).to_std().unwrap_or_default().min(MAX_SLEEP)
            }
            Due::Never => {
                tracing::warn!("schedule has no future slot; idle");
                MAX_SLEEP
            }
        };
        if !wait.is_zero() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = sleep(wait) => {}
                res = leader_rx.changed(), if election => {
                    if res.is_err() { return; }
                    let now_leader = *leader_rx.borrow_and_update();
                    r.set_leader(now_leader);
                    if now_leader && !leader {
                        // Took over: catch up on what the previous leader may have missed.
                        last = r.last_backup().await;
                    }
                    leader = now_leader;
                }
            }
            continue;
        }
        let Due::Now { slot, .. } = due else { continue };
        leader = *leader_rx.borrow_and_update();
        r.set_leader(leader);
        if !leader {
            tracing::debug!(slot = %slot, "not leader: skipping slot");
            last = Some(slot.max(now));
            continue;
        }
        r.run().await;
        // The run stood for `slot`; slots that passed during it coalesce into one run.
        last = Some(slot);
    }
}

enum Attempt {
    /// Retry-worthy failure.
    Failed(String),
    /// Stopped by shutdown; no retry.
    Cancelled(String),
    /// Stopped because leadership was lost; no retry, not counted as a failed backup.
    Fenced(String),
}

fn join(r: Result<Result<Manifest, String>, tokio::task::JoinError>) -> Result<Manifest, String> {
    match r {
        Ok(r) => r,
        Err(e) => Err(format!("backup task failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    //! The scheduler loop under tokio's paused clock: `sleep` advances virtual time, and the
    //! runner's wall clock is derived from it.
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Fake {
        wall0: DateTime<Utc>,
        t0: tokio::time::Instant,
        run_for: Duration,
        runs: Mutex<Vec<DateTime<Utc>>>,
        running: AtomicUsize,
        max_running: AtomicUsize,
        last_backup: Mutex<Option<DateTime<Utc>>>,
    }

    impl Fake {
        fn new(wall0: &str, run_for: Duration, last_backup: Option<&str>) -> Fake {
            Fake {
                wall0: t(wall0),
                t0: tokio::time::Instant::now(),
                run_for,
                runs: Mutex::new(Vec::new()),
                running: AtomicUsize::new(0),
                max_running: AtomicUsize::new(0),
                last_backup: Mutex::new(last_backup.map(t)),
            }
        }
        fn runs(&self) -> Vec<String> {
            self.runs
                .lock()
                .unwrap()
                .iter()
                .map(|d| d.format("%H:%M:%S").to_string())
                .collect()
        }
    }

    impl Runner for Fake {
        fn now(&self) -> DateTime<Utc> {
            self.wall0 + chrono::Duration::from_std(self.t0.elapsed()).unwrap()
        }
        async fn run(&self) {
            let n = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_running.fetch_max(n, Ordering::SeqCst);
            self.runs.lock().unwrap().push(self.now());
            sleep(self.run_for).await;
            *self.last_backup.lock().unwrap() = Some(self.now());
            self.running.fetch_sub(1, Ordering::SeqCst);
        }
        async fn last_backup(&self) -> Option<DateTime<Utc>> {
            *self.last_backup.lock().unwrap()
        }
        fn set_next(&self, _t: DateTime<Utc>) {}
        fn set_leader(&self, _l: bool) {}
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// Runs the loop for `span` of virtual time, then shuts it down.
    async fn drive(
        f: &Fake,
        cron: &str,
        span: Duration,
        leader: watch::Receiver<bool>,
        election: bool,
    ) {
        let sched = Schedule::new(cron, chrono_tz::Tz::UTC).unwrap();
        let stop = CancellationToken::new();
        let s2 = stop.clone();
        tokio::spawn(async move {
            sleep(span).await;
            s2.cancel();
        });
        schedule_loop(f, &sched, &stop, leader, election).await;
    }

    fn always_leader() -> watch::Receiver<bool> {
        watch::channel(true).1
    }

    #[tokio::test(start_paused = true)]
    async fn runs_on_each_slot() {
        let f = Fake::new(
            "2026-11-23T10:00:01Z",
            Duration::from_secs(1),
            Some("2026-11-23T10:00:00Z"),
        );
        drive(
            &f,
            "*/10 * * * * *",
            Duration::from_secs(35),
            always_leader(),
            false,
        )
        .await;
        assert_eq!(f.runs(), ["10:00:10", "10:00:20", "10:00:30"]);
    }

    #[tokio::test(start_paused = true)]
    async fn long_run_never_overlaps_and_catches_up_once() {
        // A 25 s run on a 10 s schedule: the slots at :20 and :30 pass during the run of :10;
        // one catch-up run follows at once (for :30), not two.
        let f = Fake::new(
            "2026-11-23T10:00:01Z",
            Duration::from_secs(25),
            Some("2026-11-23T10:00:00Z"),
        );
        drive(
            &f,
            "*/10 * * * * *",
            Duration::from_secs(64),
            always_leader(),
            false,
        )
        .await;
        assert_eq!(f.runs(), ["10:00:10", "10:00:35", "10:01:00"]);
        assert_eq!(f.max_running.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn down_for_a_day_runs_once_at_start() {
        let f = Fake::new(
            "2026-11-23T10:20:00Z",
            Duration::from_secs(60),
            Some("2026-11-22T09:00:00Z"),
        );
        drive(
            &f,
            "0 * * * *",
            Duration::from_secs(3600),
            always_leader(),
            false,
        )
        .await;
        assert_eq!(f.runs(), ["10:20:00", "11:00:00"]);
    }

    #[tokio::test(start_paused = true)]
    async fn empty_store_runs_at_start_then_on_schedule() {
        let f = Fake::new("2026-11-23T10:20:00Z", Duration::from_secs(1), None);
        drive(
            &f,
            "*/30 * * * *",
            Duration::from_secs(1800),
            always_leader(),
            false,
        )
        .await;
        assert_eq!(f.runs(), ["10:20:00", "10:30:00"]);
    }

    #[tokio::test(start_paused = true)]
    async fn follower_skips_slots_and_catches_up_on_takeover() {
        // Follower from 10:00:01; the leader's last backup was at 10:00:00; it dies and this
        // replica takes over at 10:00:25, after the :10 and :20 slots went by unserved.
        let f = Fake::new(
            "2026-11-23T10:00:01Z",
            Duration::from_secs(1),
            Some("2026-11-23T10:00:00Z"),
        );
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            sleep(Duration::from_secs(24)).await;
            tx.send(true).unwrap();
            sleep(Duration::from_secs(3600)).await;
        });
        drive(&f, "*/10 * * * * *", Duration::from_secs(36), rx, true).await;
        assert_eq!(f.runs(), ["10:00:25", "10:00:30"]);
    }

    #[test]
    fn future_dated_backups_never_become_the_last_run() {
        let now = t("2026-11-23T10:00:00Z");
        let m = |finished: &str, rev: i64| {
            let mut m: Manifest = serde_json::from_value(serde_json::json!({
                "id": format!("x{rev}"), "cluster_id": "aaaaaaaaaaaaaaaa", "member_id": "1",
                "member_name": "m", "endpoint": "e", "etcd_version": "3.5.1",
                "started_at": finished, "finished_at": finished, "revision": rev, "hash": 0,
                "total_key": 0, "total_size": 0, "raw_sha256": "", "stored_bytes": 0,
                "stored_sha256": "", "compression": "zstd", "compression_level": 3,
                "tool_version": "t", "data_key": "aaaaaaaaaaaaaaaa/x.db.zst"
            }))
            .unwrap();
            m.data_key = m.derived_data_key().unwrap();
            m
        };
        let tol = Duration::from_secs(300);
        // Two days ahead (highest revision, too): ignored; the real newest counts.
        let cat = Catalog::new(
            vec![m("2026-11-25T10:00:00Z", 9), m("2026-11-23T09:30:00Z", 5)],
            vec![],
            now,
            tol,
        );
        assert_eq!(last_run_from(&cat, now), Some(t("2026-11-23T09:30:00Z")));
        // Only future-dated backups: as if the store were empty (run now).
        let cat = Catalog::new(vec![m("2026-11-25T10:00:00Z", 9)], vec![], now, tol);
        assert_eq!(last_run_from(&cat, now), None);
        // Slightly ahead, within the tolerance: clamped to now, so no slot is skipped.
        let cat = Catalog::new(vec![m("2026-11-23T10:04:00Z", 9)], vec![], now, tol);
        assert_eq!(last_run_from(&cat, now), Some(now));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_while_waiting_returns_at_once() {
        let f = Fake::new(
            "2026-11-23T10:00:01Z",
            Duration::from_secs(1),
            Some("2026-11-23T10:00:00Z"),
        );
        let started = tokio::time::Instant::now();
        drive(
            &f,
            "0 0 * * *",
            Duration::from_secs(5),
            always_leader(),
            false,
        )
        .await;
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert!(f.runs().is_empty());
    }
}
