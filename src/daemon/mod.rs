//! `etcd-lifeboat daemon`: scheduled backups, retention, metrics, health, leader election.
//!
//! # Tasks
//! - **scheduler** ([`schedule`]): sleeps until the next cron slot, then (if leader) runs one
//!   backup with retries, prunes with the retention policy and re-reads the store catalog. Runs
//!   never overlap (one loop); missed slots coalesce into one run. At start, and whenever this
//!   replica becomes leader, the last run is taken to be the newest backup in the store, so a
//!   slot missed while down (or while another replica led and died) runs at once.
//! - **catalog refresher**: every `--refresh-interval` reads the store catalog into the
//!   `etcd_lifeboat_store_*` metrics and `/readyz`, so the backup age is visible whoever takes
//!   the backups (a CronJob, another replica).
//! - **HTTP** ([`http`]): `/metrics`, `/healthz`, `/readyz` on `http.listen`.
//! - **election** ([`election`]) when `leader_election.enabled`.
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

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::time::{sleep, timeout};
use tokio_util::sync::CancellationToken;

use crate::backup::{run_backup, BackupOptions};
use crate::config::Config;
use crate::metrics;
use crate::store::manifest::{catalog, Manifest};
use crate::store::Store;

use self::http::{Health, SharedHealth};
use self::schedule::{Due, Schedule};

/// Flags of `etcd-lifeboat daemon`.
#[derive(clap::Args, Debug, Clone)]
pub struct DaemonArgs {
    /// How often the store catalog is re-read for the store metrics and /readyz.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub refresh_interval: Duration,
    /// On SIGTERM, how long a running backup may still take before it is cancelled.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20s")]
    pub shutdown_grace: Duration,
    /// Extra attempts of a failed backup inside one scheduled run.
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
    /// Wait before the first retry; doubles on each further retry (at most 5m).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub retry_backoff: Duration,
    /// Time allowed for one store listing or deletion.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub store_timeout: Duration,
    /// Time allowed for one backup attempt beyond etcd.snapshot_timeout (compression, upload).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30m")]
    pub upload_timeout: Duration,
    /// Do not apply the retention policy after backups.
    #[arg(long)]
    pub no_prune: bool,
}

impl Default for DaemonArgs {
    fn default() -> Self {
        DaemonArgs {
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

/// Runs the daemon until SIGTERM or SIGINT; `Ok(())` after a clean shutdown (exit 0).
///
/// Errors (exit 1): the HTTP address cannot be bound, the store cannot be built from the
/// config, or the schedule is invalid (exit 2 via `ConfigError`).
pub async fn run(args: DaemonArgs, cfg: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let sig = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        sig.cancel();
    });
    run_with_shutdown(args, cfg, shutdown, None).await
}

async fn wait_for_signal() {
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
pub async fn run_with_shutdown(
    args: DaemonArgs,
    cfg: Config,
    shutdown: CancellationToken,
    bound: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
) -> anyhow::Result<()> {
    let sched = Schedule::new(&cfg.schedule.cron, cfg.schedule.timezone.as_deref())
        .map_err(|m| crate::config::ConfigError::new("schedule.cron", m))?;
    let store = Arc::new(
        Store::from_config(&cfg.storage)
            .await
            .context("storage: cannot set up the store")?,
    );
    let cfg = Arc::new(cfg);
    let health: SharedHealth = Arc::new(Mutex::new(Health::default()));
    let http_stop = CancellationToken::new();
    let (addr, http_task) =
        http::serve(&cfg.http.listen, health.clone(), cfg.http.max_backup_age, http_stop.clone()).await?;
    if let Some(tx) = bound {
        let _ = tx.send(addr);
    }
    tracing::info!(
        listen = %addr,
        store = %store.describe(),
        schedule = %cfg.schedule.cron,
        timezone = cfg.schedule.timezone.as_deref().unwrap_or("UTC"),
        leader_election = cfg.leader_election.enabled,
        "daemon started"
    );

    // Leadership.
    let (leader_tx, leader_rx) = watch::channel(!cfg.leader_election.enabled);
    let resign = CancellationToken::new();
    let election_task = if cfg.leader_election.enabled {
        metrics::metrics().is_leader.set(0);
        Some(tokio::spawn(election::run((*cfg).clone(), leader_tx, resign.clone())))
    } else {
        metrics::metrics().is_leader.set(1);
        drop(leader_tx);
        None
    };
    health.lock().expect("health").leader = *leader_rx.borrow();

    // Catalog refresher.
    let refresher = {
        let (store, health, stop) = (store.clone(), health.clone(), shutdown.clone());
        let (every, limit) = (args.refresh_interval, args.store_timeout);
        tokio::spawn(async move {
            loop {
                refresh(&store, &health, limit).await;
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = sleep(every) => {}
                }
            }
        })
    };

    let d = Daemon { args, cfg, store, health: health.clone(), sched, shutdown: shutdown.clone() };
    d.schedule_loop(leader_rx).await;

    // Shutdown: the scheduler has finished or cancelled its backup; resign, stop the rest.
    resign.cancel();
    if let Some(t) = election_task {
        let _ = timeout(Duration::from_secs(10), t).await;
    }
    refresher.abort();
    http_stop.cancel();
    let _ = timeout(Duration::from_secs(5), http_task).await;
    tracing::info!("daemon stopped");
    Ok(())
}

/// Reads the catalog into the store metrics and the health state. Returns it on success.
/// The store counts as reachable when [`Store::check`] (reachable and writable) and the
/// catalog listing both succeed.
async fn refresh(store: &Store, health: &SharedHealth, limit: Duration) -> Option<Vec<Manifest>> {
    let r = timeout(limit, async {
        store.check().await?;
        catalog(store).await
    })
    .await;
    let mut h = health.lock().expect("health");
    match r {
        Ok(Ok(list)) => {
            metrics::refresh_store(&list);
            h.store = Some(Ok(()));
            h.backups = list.len();
            h.newest = list
                .iter()
                .max_by_key(|m| m.finished_at)
                .map(|m| (m.id.clone(), m.finished_at));
            Some(list)
        }
        Ok(Err(e)) => {
            metrics::record_store_refresh_error();
            tracing::warn!(error = %e, "store check or catalog read failed");
            h.store = Some(Err(e.to_string()));
            None
        }
        Err(_) => {
            metrics::record_store_refresh_error();
            tracing::warn!(timeout = ?limit, "store catalog read timed out");
            h.store = Some(Err(format!("catalog read timed out after {limit:?}")));
            None
        }
    }
}

struct Daemon {
    args: DaemonArgs,
    cfg: Arc<Config>,
    store: Arc<Store>,
    health: SharedHealth,
    sched: Schedule,
    shutdown: CancellationToken,
}

/// Latest wait in one sleep, so that wall-clock jumps (suspend, NTP steps) are noticed.
const MAX_SLEEP: Duration = Duration::from_secs(60);

impl Daemon {
    /// The newest backup's `finished_at` in the store, `None` when the store is empty; on a
    /// read error, `now` (do not trigger a catch-up run on a store we cannot read).
    async fn last_from_store(&self) -> Option<DateTime<Utc>> {
        match refresh(&self.store, &self.health, self.args.store_timeout).await {
            Some(list) => list.iter().map(|m| m.finished_at).max(),
            None => Some(Utc::now()),
        }
    }

    async fn schedule_loop(&self, mut leader_rx: watch::Receiver<bool>) {
        let mut leader = *leader_rx.borrow_and_update();
        let mut last: Option<DateTime<Utc>> = if leader { self.last_from_store().await } else { Some(Utc::now()) };
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            let now = Utc::now();
            let due = self.sched.due(last, now);
            let next = match due {
                Due::Now { slot, missed } => {
                    if missed > 1 {
                        tracing::info!(missed, slot = %slot, "missed schedule slots: running once now");
                    }
                    None
                }
                Due::At(t) => Some(t),
                Due::Never => {
                    tracing::warn!(cron = %self.cfg.schedule.cron, "schedule has no future slot; idle");
                    None
                }
            };
            if let Some(t) = next {
                metrics::metrics().next_backup.set(t.timestamp() as f64);
                self.health.lock().expect("health").next_run = Some(t);
            }
            let wait = match (due, next) {
                (Due::Never, _) => MAX_SLEEP,
                (_, Some(t)) => (t - now).to_std().unwrap_or_default().min(MAX_SLEEP),
                _ => Duration::ZERO,
            };
            if !wait.is_zero() {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    _ = sleep(wait) => {}
                    r = leader_rx.changed(), if self.cfg.leader_election.enabled => {
                        if r.is_err() { return; }
                        let now_leader = *leader_rx.borrow_and_update();
                        self.health.lock().expect("health").leader = now_leader;
                        if now_leader && !leader {
                            // Took over: catch up on what the previous leader may have missed.
                            last = self.last_from_store().await;
                        }
                        leader = now_leader;
                    }
                }
                continue;
            }
            if matches!(due, Due::Never) {
                continue;
            }
            let slot = match due {
                Due::Now { slot, .. } => slot,
                _ => now,
            };
            leader = *leader_rx.borrow_and_update();
            self.health.lock().expect("health").leader = leader;
            if !leader {
                tracing::debug!(slot = %slot, "not leader: skipping slot");
                last = Some(slot.max(now));
                continue;
            }
            self.run_once().await;
            // The run stood for `slot`; slots that passed during it coalesce into one run.
            last = Some(slot);
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
                Err(Attempt::Failed(e)) => {
                    if attempt > self.args.retries || self.shutdown.is_cancelled() {
                        break Err(e);
                    }
                    tracing::warn!(attempt, error = %e, retry_in = ?backoff, "backup failed; retrying");
                    metrics::metrics().backup_retries.inc();
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
                metrics::record_backup_success(&m, took);
                tracing::info!(id = %m.id, revision = m.revision, keys = m.total_key,
                    raw_bytes = m.total_size, stored_bytes = m.stored_bytes, seconds = took.as_secs_f64(),
                    "backup stored");
                self.health.lock().expect("health").last_run = Some((now, Ok(m.id.clone())));
                if !self.args.no_prune && !self.shutdown.is_cancelled() {
                    self.prune().await;
                }
            }
            Err(e) => {
                metrics::record_backup_failure();
                tracing::error!(error = %e, attempts = attempt, "backup run failed");
                self.health.lock().expect("health").last_run = Some((now, Err(e)));
            }
        }
        refresh(&self.store, &self.health, self.args.store_timeout).await;
    }

    async fn prune(&self) {
        let r = timeout(
            self.args.store_timeout * 4,
            crate::store::retention::prune(&self.cfg, &self.store, false),
        )
        .await;
        let m = metrics::metrics();
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
        let cancel = CancellationToken::new();
        let (cfg, store, c) = (self.cfg.clone(), self.store.clone(), cancel.clone());
        let mut task = tokio::spawn(async move {
            let opts = BackupOptions { tag: None, progress: false, cancel: c };
            run_backup(&cfg, &store, &opts).await.map_err(|e| format!("{e:#}"))
        });
        let limit = self.cfg.etcd.snapshot_timeout + self.args.upload_timeout;
        let deadline = sleep(limit);
        tokio::pin!(deadline);
        let why = tokio::select! {
            r = &mut task => return join(r).map_err(Attempt::Failed),
            _ = &mut deadline => format!("backup attempt exceeded {limit:?}: cancelled"),
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
        // The pipeline cleans up (aborts uploads, no manifest); wait for it, bounded.
        match timeout(Duration::from_secs(60), &mut task).await {
            Ok(Ok(Ok(m))) => Ok(m), // finished just before noticing the cancellation
            Ok(_) => Err(if self.shutdown.is_cancelled() { Attempt::Cancelled(why) } else { Attempt::Failed(why) }),
            Err(_) => {
                task.abort();
                Err(Attempt::Cancelled(format!("{why}; cleanup did not finish within 60s")))
            }
        }
    }
}

enum Attempt {
    /// Retry-worthy failure.
    Failed(String),
    /// Stopped by shutdown; no retry.
    Cancelled(String),
}

fn join(r: Result<Result<Manifest, String>, tokio::task::JoinError>) -> Result<Manifest, String> {
    match r {
        Ok(r) => r,
        Err(e) => Err(format!("backup task failed: {e}")),
    }
}
