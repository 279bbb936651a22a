//! The daemon leader's delta capture (docs/design/pitr.md §4, §5 "Capture"): one task that
//! watches the whole keyspace and stores the changes as a chain of delta objects after the
//! newest base backup.
//!
//! ```text
//! leader ─> newest base B, its chain (store) ─> start = tail.last_revision+1 | B_eff+1
//!   ─> watch("\0".."\0", start, fragment) ─> REV/PUT/DEL records ─> spill file (0600)
//!   ─> every `interval` (anchor probe reached) or `max_bytes`: END ─> zstd ─> [age]
//!   ─> data object ─> delta manifest (conditional create, last)
//! ```
//!
//! - **Order**: events arrive in revision order with their sub-revision order (design §1); a
//!   new revision must be `last complete + 1`, else the chain breaks ("gap"). A revision is
//!   complete when a response with `fragment = false` ends with it or a later one begins.
//! - **Memory**: one watch response (at most [`MAX_WATCH_MESSAGE`] bytes; with fragments about
//!   etcd's `--max-request-bytes`) plus buffers, whatever the write rate: records go to a spill
//!   file in a private work dir ([`crate::workdir::WorkDir`], file 0600); a delta is cut at
//!   `pitr.max_bytes` at a revision boundary. Storing a delta pauses the watch (the server
//!   buffers; a long pause ends in a compaction break, never a silent gap).
//! - **Breaks**: a watch cancelled by compaction, a revision gap, or no member reachable for
//!   [`MAX_OUTAGE`]: the complete revisions (and the anchors and lease records since the last
//!   delta, also when idle) are stored, a close manifest ends the chain, a full
//!   backup is taken at once and a new chain starts on it. A plain stream error resumes on the
//!   next member from the last complete revision + 1 (no gap, no break).
//! - **Handover**: when a newer base exists and the chain has reached its revision, the chain
//!   is closed ("base-handover") after a last anchor (so that it covers the time past the
//!   newer base's end) and a new one starts on the newer base, unless etcd has
//!   compacted past that base's revision (its chain could not start; this one goes on). A
//!   capture that starts while the newest base has no chain yet and the one before has an
//!   open chain continues that chain (a daemon stopped between a backup and the handover).
//! - **Writers**: delta manifests are created with `If-None-Match: *` and keyed by their first
//!   revision and seq (the next slot of the chain), so two writers (an old leader that has not
//!   noticed) can never fork a chain; a conflict stops this writer's session.
//! - **Time**: every `interval` an anchor probe (linearizable count-only read) gives `(t_a,
//!   r_a)`; once revision `r_a` is complete an ANCHOR record covers time `t_a`, and the delta is
//!   cut (with events; without, at most every `idle_interval`). Revisions carry their receive
//!   time (observed later than committed during a catch-up).
//! - **Leases** (design §3): a put's unknown lease is looked up at once (granted TTL, 0 when
//!   already gone) and recorded LEASE_GRANT; every `interval` the lease list is diffed
//!   (LEASE_GRANT / LEASE_GONE at the header revision); the first poll of a session also
//!   records the whole list (LEASE_LIST), for the leases it never knew (the base's).
//! - **B_eff**: the chain's deltas' `base_revision`; for a new chain the base manifest's revision
//!   (at least 1), as the daemon holds no copy of the base db ([`super::chain`]).
//! - SIGKILL: the spill is lost; the store holds a valid chain up to its last manifest; the next
//!   leader resumes at `last_revision + 1` (or breaks if that was compacted).
//! - **Per cluster**: [`spawn`] runs once per cluster of the daemon, with that cluster's
//!   metric set ([`crate::metrics::for_cluster`]): the metrics
//!   `etcd_lifeboat_pitr_{last_revision, lag_seconds, events_total, stored_bytes_total,
//!   chain_breaks_total{reason}}` ([`crate::metrics::PitrMetrics`], registered when PITR is
//!   on) carry the cluster's `cluster` label like its other series, and its [`Status`] gives
//!   `/readyz` the cluster's broken chain ([`Status::broken_chain`]). The lag is updated at
//!   least every `interval` (at most 15 s) while leader, also while a session retries or
//!   takes a backup; a replica that loses leadership reports lag 0 and no break.
//! - The backup of a new chain is the daemon's ([`BackupFn`]): pitr does not know the backup
//!   pipeline.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use etcd_client::{Client, EventType, GetOptions, WatchOptions, WatchResponse};
use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::crypto::{AgeOutput, EncryptionConfig, Recipients};
use crate::etcd;
use crate::metrics::{Metrics, PitrMetrics};
use crate::store::manifest::{catalog_at, Manifest};
use crate::store::{ChunkWriter, Store, StoreError};
use crate::workdir::{self, WorkDir};

use super::chain;
use super::delta::{DeltaHeader, DeltaWriter, KvRef, MAX_LEASE_LIST};
use super::manifest::{CloseReason, DeltaKind, DeltaManifest, FORMAT};

/// Largest watch response accepted, in bytes (etcd-client's default, 4 MiB, would wedge the
/// stream forever on one bigger revision when the server does not fragment it).
pub const MAX_WATCH_MESSAGE: usize = 64 * 1024 * 1024;
/// No member reachable for this long ends the chain ("outage").
pub const MAX_OUTAGE: Duration = Duration::from_secs(5 * 60);

/// Clock slack when deciding whether a chain was live at another writer's backup: the
/// daemons of a cluster (leader and standbys) may run on hosts whose clocks differ.
const LIVE_CHAIN_SLACK: Duration = Duration::from_secs(300);

/// zstd level of delta objects.
const ZSTD_LEVEL: i32 = 3;
/// Buffer of the spill writer, bytes.
const SPILL_BUFFER: usize = 64 * 1024;
/// Chunks of stored bytes handed to the uploader, bytes.
const UPLOAD_CHUNK: usize = 1024 * 1024;

/// Takes a full backup for a new chain and returns its manifest (the daemon passes one that
/// runs `backup::run_backup`: pitr does not know the backup pipeline). Cancelled by the token.
pub type BackupFn =
    Arc<dyn Fn(CancellationToken) -> BoxFuture<'static, Result<Manifest, String>> + Send + Sync>;

/// Why a capture session stopped (it is restarted after a pause while leader).
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The store refused an operation.
    #[error("pitr: store: {0}")]
    Store(#[from] StoreError),
    /// No etcd member answered.
    #[error("pitr: etcd: {0}")]
    Etcd(String),
    /// The spill file could not be written or read.
    #[error("pitr: spill file: {0}; free space in backup.temp_dir (ETCD_LIFEBOAT_TEMP_DIR)")]
    Io(#[from] std::io::Error),
    /// The store holds no backup of this cluster yet (the scheduler takes one).
    #[error(
        "pitr: no base backup of cluster {0} in the store yet; waiting for the scheduled backup"
    )]
    NoBase(String),
    /// A full backup for a new chain failed.
    #[error("pitr: the full backup for a new chain failed: {0}")]
    Backup(String),
    /// Another writer stored a delta manifest with this key: this replica is not the writer.
    #[error("pitr: another writer stored {0}; this replica stops capturing this chain")]
    Conflict(String),
    /// The base's recipients do not parse.
    #[error("pitr: the base's encryption recipients: {0}")]
    Recipients(String),
    /// A delta record could not be written (a bug, or the spill file failed).
    #[error("pitr: {0}")]
    Delta(#[from] super::delta::DeltaError),
    /// A manifest this capture built breaks the format's rules (a bug).
    #[error("pitr: delta manifest refused by its own validation: {0}")]
    Invalid(String),
    /// The chain in the store could not be read.
    #[error("pitr: {0}")]
    Chain(#[from] chain::ChainError),
}

/// One cluster's capture state beside its metrics: what `/readyz` reports (a broken chain)
/// and what the lag gauge is computed from. Made by [`spawn`], one per cluster; read by the
/// daemon's health ([`Status::broken_chain`]).
pub struct Status {
    /// The cluster's PITR metrics (its metric set's, so named clusters carry `cluster`).
    m: &'static PitrMetrics,
    /// Set while a chain is broken and no new chain has stored a delta yet: what broke.
    broken: Mutex<Option<String>>,
    /// What the lag is measured from.
    covered: Mutex<Covered>,
}

/// The times the lag is measured from: the later of the two.
#[derive(Debug, Default, Clone, Copy)]
struct Covered {
    /// Newest covered time stored (max over the chains this process saw).
    stored: Option<DateTime<Utc>>,
    /// The current chain's base `finished_at`.
    base: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Status")
            .field("broken", &self.broken_chain())
            .field("covered", &*self.covered.lock().expect("covered"))
            .finish()
    }
}

impl Status {
    /// The state of a cluster whose metric set is `m` (registers its PITR families).
    pub fn new(m: &'static Metrics) -> Arc<Status> {
        Arc::new(Status {
            m: m.pitr(),
            broken: Mutex::new(None),
            covered: Mutex::new(Covered::default()),
        })
    }

    /// `Some(reason)` while this cluster's last chain broke (compaction, gap, outage, or a
    /// closed or damaged chain found at start) and no new chain has stored its first delta,
    /// on the capturing leader: for `/readyz`. `None` otherwise (also on a replica that is
    /// not leader).
    pub fn broken_chain(&self) -> Option<String> {
        self.broken.lock().expect("broken").clone()
    }

    /// Sets (or clears) what [`Status::broken_chain`] reports.
    pub(crate) fn set_broken(&self, why: Option<String>) {
        *self.broken.lock().expect("broken") = why;
    }

    /// Records the chain's base (its `finished_at` bounds the lag) and, when the chain has
    /// deltas, their covered time.
    fn set_base(&self, base: &Manifest, covered_until: Option<DateTime<Utc>>) {
        self.covered.lock().expect("covered").base = Some(base.finished_at);
        if let Some(t) = covered_until {
            self.set_covered(t);
        }
    }

    /// A delta covering time up to `t` was stored.
    fn set_covered(&self, t: DateTime<Utc>) {
        let mut c = self.covered.lock().expect("covered");
        c.stored = Some(c.stored.map_or(t, |old| old.max(t)));
    }

    /// Sets `etcd_lifeboat_pitr_lag_seconds` from the newest covered time stored, or the
    /// base's `finished_at` when later (a new chain before its first delta); unchanged while
    /// neither is known.
    fn update_lag(&self) {
        let c = *self.covered.lock().expect("covered");
        let Some(covered) = c.stored.max(c.base) else {
            return;
        };
        let lag = (Utc::now() - covered).num_milliseconds().max(0) as f64 / 1000.0;
        self.m.lag.set(lag);
    }

    /// This replica stopped capturing (leadership lost): it reports no lag and no break (the
    /// new leader does).
    fn stood_down(&self) {
        self.set_broken(None);
        self.m.lag.set(0.0);
    }
}

/// Starts the capture task of one cluster when `pitr.enabled` (`None` otherwise): it
/// captures while `leader` is `true` (for good when its sender is gone while `true`: no
/// election), stops capturing when it turns `false`, and returns on `shutdown` (the delta
/// being filled is not stored; the chain stays valid up to its last manifest). `backup` takes
/// the full backup of a new chain. `metrics` is the cluster's set
/// ([`crate::metrics::for_cluster`]): its PITR families are registered there. Returns the task
/// and the cluster's [`Status`] (for `/readyz`).
pub fn spawn(
    cfg: Arc<Config>,
    store: Arc<Store>,
    leader: watch::Receiver<bool>,
    shutdown: CancellationToken,
    backup: BackupFn,
    metrics: &'static Metrics,
) -> Option<(JoinHandle<()>, Arc<Status>)> {
    if !cfg.pitr.enabled {
        return None;
    }
    let status = Status::new(metrics);
    let task = tokio::spawn(supervise(
        cfg,
        store,
        leader,
        shutdown,
        backup,
        status.clone(),
    ));
    Some((task, status))
}

/// Resolves when `rx` says `false` (never when its sender is gone while `true`).
async fn lost(rx: &mut watch::Receiver<bool>) {
    loop {
        if !*rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            if *rx.borrow() {
                return std::future::pending().await;
            }
            return;
        }
    }
}

async fn supervise(
    cfg: Arc<Config>,
    store: Arc<Store>,
    mut leader: watch::Receiver<bool>,
    shutdown: CancellationToken,
    backup: BackupFn,
    status: Arc<Status>,
) {
    let pause = cfg.pitr.interval.max(Duration::from_secs(1)) * 2;
    // The lag gauge keeps growing while a session retries, takes a backup or waits on the
    // store (the session itself updates it on every tick and delta).
    let mut lag_tick = tokio::time::interval(
        cfg.pitr
            .interval
            .clamp(Duration::from_secs(1), Duration::from_secs(15)),
    );
    lag_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        while !*leader.borrow_and_update() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = leader.changed() => if r.is_err() && !*leader.borrow() { return },
            }
        }
        tracing::info!("pitr: leader: starting delta capture");
        let stop = shutdown.child_token();
        let cap = Capture {
            cfg: cfg.clone(),
            store: store.clone(),
            stop: stop.clone(),
            backup: backup.clone(),
            status: status.clone(),
        };
        let run = cap.run();
        tokio::pin!(run);
        let ended = loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    // Let the session see the cancellation (no store writes after it).
                    let _ = timeout(Duration::from_secs(10), &mut run).await;
                    return;
                }
                _ = lost(&mut leader) => {
                    stop.cancel();
                    status.stood_down();
                    tracing::info!("pitr: leadership lost: delta capture stopped");
                    break false;
                }
                r = &mut run => {
                    match r {
                        // Expected until the first scheduled backup of a new cluster.
                        Err(e @ CaptureError::NoBase(_)) => {
                            tracing::info!(reason = %e, retry_in = ?pause, "pitr: delta capture waiting");
                        }
                        Err(e) => {
                            tracing::error!(error = %e, retry_in = ?pause, "pitr: delta capture stopped; retrying");
                        }
                        Ok(()) => {}
                    }
                    break true;
                }
                _ = lag_tick.tick() => status.update_lag(),
            }
        };
        if ended {
            let wake = sleep(pause);
            tokio::pin!(wake);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = &mut wake => break,
                    _ = lost(&mut leader) => {
                        status.stood_down();
                        break;
                    }
                    _ = lag_tick.tick() => status.update_lag(),
                }
            }
        }
    }
}

/// How a chain ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Break {
    /// The watch was cancelled: history before `compact_revision` is gone.
    Compacted(i64),
    /// A revision arrived that is not the next one.
    Gap { expected: i64, got: i64 },
    /// No member reachable for [`MAX_OUTAGE`].
    Outage,
    /// A newer base (this id) covers the chain's revisions.
    Handover(String),
    /// etcd's revision (linearizable read) is below the chain's last revision: etcd was
    /// restored to an older revision under the same cluster id without a revision bump (or
    /// the store's chain was altered). Watching on would append a different history.
    Ahead { chain_last: i64, etcd: i64 },
}

impl Break {
    fn reason(&self) -> CloseReason {
        match self {
            Break::Compacted(_) => CloseReason::Compacted,
            Break::Gap { .. } | Break::Ahead { .. } => CloseReason::Gap,
            Break::Outage => CloseReason::Outage,
            Break::Handover(_) => CloseReason::BaseHandover,
        }
    }
    fn label(&self) -> &'static str {
        match self {
            Break::Compacted(_) => "compacted",
            Break::Gap { .. } | Break::Ahead { .. } => "gap",
            Break::Outage => "outage",
            Break::Handover(_) => "base-handover",
        }
    }
    /// The break for people (`/readyz`, logs): the label and what it means.
    fn describe(&self) -> String {
        match self {
            Break::Compacted(c) => format!(
                "compacted: etcd compacted its history through r{c} before the watch read it"
            ),
            Break::Gap { expected, got } => {
                format!("gap: the watch skipped from r{expected} to r{got}")
            }
            Break::Outage => format!(
                "outage: no etcd member reachable for {}s",
                MAX_OUTAGE.as_secs()
            ),
            Break::Handover(id) => format!("base-handover to backup {id}"),
            Break::Ahead { chain_last, etcd } => format!(
                "gap: the chain holds revisions through r{chain_last} but etcd is at r{etcd} \
                 (etcd restored to an older revision without --bump-revision, or the store's \
                 chain altered); a new base is taken"
            ),
        }
    }
}

/// Where a chain continues: its base and the next delta's fields.
#[derive(Debug, Clone)]
struct ChainPos {
    base: Manifest,
    cluster: String,
    /// B_eff of the base: the first delta starts at `base_revision + 1`.
    base_revision: i64,
    /// The next delta's first revision.
    next: i64,
    seq: u64,
    prev_stored_sha256: Option<String>,
    recipients: Option<Arc<Recipients>>,
}

/// The member watched (recorded in each delta manifest).
#[derive(Debug, Clone, Default)]
struct Member {
    id: String,
    endpoint: String,
    version: String,
}

struct Capture {
    cfg: Arc<Config>,
    store: Arc<Store>,
    stop: CancellationToken,
    backup: BackupFn,
    status: Arc<Status>,
}

/// A delta being written to its spill file.
struct Spill {
    writer: DeltaWriter<BufWriter<File>>,
    path: PathBuf,
    started: Instant,
}

/// The watch position: revisions before `next` are complete and in the spill (or stored);
/// `open` is the revision being received (more fragments may follow).
#[derive(Debug, Clone, Copy)]
struct Pos {
    next: i64,
    open: Option<i64>,
}

/// Leases seen by the session: ids known to exist with the lowest revision a grant of each
/// was recorded at, and those recorded inside the open revision (forgotten again when it is
/// discarded).
#[derive(Default)]
struct Leases {
    known: HashMap<i64, i64>,
    in_open: Vec<i64>,
    /// This session wrote its LEASE_LIST.
    listed: bool,
}

/// The watch ended the open revision (if any): the spill keeps it for good (a discard no
/// longer drops it), the next revision follows it, and its leases stay known.
fn complete_open_revision(
    pos: &mut Pos,
    spill: &mut Spill,
    leases: &mut Leases,
) -> Result<(), CaptureError> {
    if let Some(r) = pos.open.take() {
        spill.writer.complete_revision()?;
        pos.next = r + 1;
        leases.in_open.clear();
    }
    Ok(())
}

/// The manifest of an empty delta at the chain's next position, written by `member` now (the
/// fields a delta and a close share; a delta fills in its counts, a close its reason).
fn empty_manifest(chain: &ChainPos, member: &Member) -> DeltaManifest {
    DeltaManifest {
        kind: DeltaKind::Delta,
        format: FORMAT,
        cluster_id: chain.cluster.clone(),
        base_id: chain.base.id.clone(),
        base_revision: chain.base_revision,
        seq: chain.seq,
        first_revision: chain.next,
        last_revision: chain.next - 1,
        events: 0,
        revisions: 0,
        lease_records: 0,
        first_time: None,
        last_time: None,
        covered_until: None,
        raw_bytes: 0,
        raw_sha256: String::new(),
        stored_bytes: 0,
        stored_sha256: String::new(),
        prev_stored_sha256: chain.prev_stored_sha256.clone(),
        nonce: format!("{:016x}", rand::random::<u64>()),
        compression: "zstd".into(),
        compression_level: ZSTD_LEVEL,
        encryption: chain.base.encryption.clone(),
        member_id: member.id.clone(),
        endpoint: member.endpoint.clone(),
        etcd_version: member.version.clone(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        written_at: Utc::now(),
        reason: None,
        compact_revision: None,
        next_base_id: None,
    }
}

fn ms_to_time(ms: Option<i64>) -> Option<DateTime<Utc>> {
    ms.and_then(|m| Utc.timestamp_millis_opt(m).single())
}

impl Capture {
    /// Captures until stopped, chain after chain.
    async fn run(&self) -> Result<(), CaptureError> {
        let (mut need_backup, mut next_base) = (false, None);
        loop {
            let Some(pos) = self.prepare(need_backup, next_base.take()).await? else {
                return Ok(());
            };
            match self.session(pos).await? {
                None => return Ok(()),
                // Continue on exactly the base the closed chain names (a newer one may have
                // appeared since; its revision may be above the closed chain's end).
                Some(Break::Handover(id)) => (need_backup, next_base) = (false, Some(id)),
                Some(_) => need_backup = true,
            }
        }
    }

    /// Finds (or takes) the base and the position to continue its chain at: base `id` when
    /// given and in the store, else the newest. `None`: stopped.
    async fn prepare(
        &self,
        need_backup: bool,
        id: Option<String>,
    ) -> Result<Option<ChainPos>, CaptureError> {
        let cluster = self.cluster_id().await?;
        let bases = self.cluster_bases(&cluster).await?;
        let handed_over_to = id.is_some();
        let mut base = id
            .and_then(|id| bases.iter().find(|m| m.id == id))
            .or(bases.first())
            .cloned();
        let mut ch = match &base {
            Some(b) => Some(chain::read_chain(&self.store, b).await?),
            None => None,
        };
        // The newest base (not handed over to): the one before it, if any, is `bases[1]`.
        if let (false, false, Some(b), Some(c), Some(prev)) =
            (handed_over_to, need_backup, &base, &ch, bases.get(1))
        {
            if c.delta_count == 0 && c.closed.is_none() {
                if let Some(prev_ch) = self.previous_open_chain(prev, b).await? {
                    tracing::info!(base = %prev.id, newer = %b.id, newer_revision = b.revision,
                        "pitr: a newer backup has no chain yet; the previous base's open chain continues and is handed over to it once it reaches its revision");
                    (base, ch) = (Some(prev.clone()), Some(prev_ch));
                }
            }
        }
        let unusable = ch.as_ref().filter(|c| !c.is_open_and_sound());
        if let Some(c) = unusable {
            tracing::warn!(base = %c.base_id, chain = c.summary().unwrap_or_default(),
                "pitr: the newest base's chain is closed or damaged; a full backup starts a new chain");
            // A chain handed over to a newer base is not broken; any other end is (found at
            // start, e.g. after a restart: /readyz reports it until the new chain's delta).
            let handed_over = c
                .closed
                .as_ref()
                .is_some_and(|x| x.reason == "base-handover")
                && c.gaps.is_empty()
                && c.broken.is_empty();
            if !handed_over {
                self.status.set_broken(Some(format!(
                    "PITR chain of backup {} is closed or damaged ({}); a new base and chain are being made",
                    c.base_id,
                    c.summary().unwrap_or_default()
                )));
            }
        }
        if need_backup || unusable.is_some() {
            tracing::info!("pitr: taking a full backup for a new chain");
            let m = tokio::select! {
                _ = self.stop.cancelled() => return Ok(None),
                r = (self.backup)(self.stop.child_token()) => r.map_err(CaptureError::Backup)?,
            };
            ch = Some(chain::read_chain(&self.store, &m).await?);
            base = Some(m);
        }
        let Some(base) = base else {
            return Err(CaptureError::NoBase(cluster));
        };
        let ch = ch.expect("read with the base");
        self.status.set_base(&base, ch.covered_until);
        if let Some(t) = ch.tail() {
            self.status.m.last_revision.set(t.last_revision);
        }
        let recipients = match &base.encryption {
            Some(e) => Some(Arc::new(
                Recipients::from_config(&EncryptionConfig {
                    age_recipients: e.recipients.clone(),
                    age_recipients_file: None,
                })
                .map_err(|e| CaptureError::Recipients(e.to_string()))?
                .ok_or_else(|| CaptureError::Recipients("the base lists none".into()))?,
            )),
            None => None,
        };
        let pos = match ch.tail() {
            Some(t) => ChainPos {
                cluster,
                base_revision: t.base_revision,
                next: t.last_revision + 1,
                seq: t.seq + 1,
                prev_stored_sha256: Some(t.stored_sha256.clone()),
                base,
                recipients,
            },
            None => ChainPos {
                cluster,
                // B_eff from the manifest: the daemon holds no copy of the base db (see the
                // module doc of chain.rs for the case where they differ).
                base_revision: chain::manifest_base_revision(&base),
                next: chain::manifest_base_revision(&base) + 1,
                seq: 0,
                prev_stored_sha256: None,
                base,
                recipients,
            },
        };
        tracing::info!(base = %pos.base.id, from_revision = pos.next, seq = pos.seq, "pitr: continuing chain");
        Ok(Some(pos))
    }

    /// The cluster id (16 hex digits) of the configured etcd.
    async fn cluster_id(&self) -> Result<String, CaptureError> {
        let (c, failures) = etcd::select_members(&self.cfg.etcd).await;
        match c.first() {
            Some(c) => Ok(format!("{:016x}", c.status.cluster_id)),
            None => Err(CaptureError::Etcd(format!(
                "no member reachable: {}",
                describe_failures(&failures)
            ))),
        }
    }

    /// The intact, not future-dated backups of `cluster`, newest (highest revision) first:
    /// one catalog read.
    async fn cluster_bases(&self, cluster: &str) -> Result<Vec<Manifest>, CaptureError> {
        let cat = catalog_at(&self.store, Utc::now(), self.cfg.store.future_tolerance).await?;
        Ok(cat
            .current()
            .filter(|m| m.cluster_id == cluster)
            .cloned()
            .collect())
    }

    /// The newest (highest revision) intact, not future-dated backup of `cluster`.
    async fn newest_base(&self, cluster: &str) -> Result<Option<Manifest>, CaptureError> {
        Ok(self.cluster_bases(cluster).await?.into_iter().next())
    }

    /// The chain of `prev`, the base before `newest` in the order of truth, when it is open,
    /// sound, was live when `newest` started (its last delta written at most twice the longer
    /// of `pitr.interval` and `pitr.idle_interval`, plus [`LIVE_CHAIN_SLACK`], before), and
    /// etcd still holds the revision after its end: a daemon stopped between a new backup and
    /// the handover to it left that chain. Starting on `newest` instead would leave the
    /// revisions between the chain's end and `newest` uncovered, and the chain open for good;
    /// continued, it is handed over at the first check past `newest`'s revision.
    async fn previous_open_chain(
        &self,
        prev: &Manifest,
        newest: &Manifest,
    ) -> Result<Option<chain::Chain>, CaptureError> {
        let ch = chain::read_chain(&self.store, prev).await?;
        let Some(tail) = ch.tail() else {
            return Ok(None);
        };
        // Live when `newest` was taken: a delta at least every interval / idle_interval (plus
        // slack for the clocks of other writers). A chain left long before (PITR switched off
        // for a while) is not caught up over that whole time.
        let p = &self.cfg.pitr;
        let live_within = p.interval.max(p.idle_interval) * 2 + LIVE_CHAIN_SLACK;
        let live = chrono::Duration::from_std(live_within)
            .is_ok_and(|d| tail.written_at >= newest.started_at - d);
        if !ch.is_open_and_sound() || !live {
            return Ok(None);
        }
        let next = tail.last_revision + 1;
        let Ok((mut client, _)) = self.connect().await else {
            return Ok(None);
        };
        Ok((self.history_holds(&mut client, next).await == Some(true)).then_some(ch))
    }

    /// Whether etcd's history still holds revision `rev` (a count-only range read at it, as a
    /// watch from `rev` needs): `Some(false)` when compacted away (mvcc `ErrCompacted`,
    /// "required revision has been compacted"), `Some(true)` when readable or still in the
    /// future, `None` when the read failed otherwise.
    async fn history_holds(&self, client: &mut Client, rev: i64) -> Option<bool> {
        let opts = GetOptions::new().with_revision(rev).with_count_only();
        match timeout(self.cfg.etcd.request_timeout, client.get("\0", Some(opts))).await {
            Ok(Ok(_)) => Some(true),
            Ok(Err(etcd_client::Error::GRpcStatus(st))) => {
                if st
                    .message()
                    .contains("required revision has been compacted")
                {
                    Some(false)
                } else if st.message().contains("future revision") {
                    Some(true)
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// A client pinned to the first healthy member (the order `backup` uses).
    async fn connect(&self) -> Result<(Client, Member), CaptureError> {
        let (mut c, failures) = etcd::select_members(&self.cfg.etcd).await;
        if c.is_empty() {
            return Err(CaptureError::Etcd(format!(
                "no member reachable: {}",
                describe_failures(&failures)
            )));
        }
        let c = c.remove(0);
        let m = Member {
            id: format!("{:016x}", c.status.member_id),
            endpoint: c.status.endpoint.clone(),
            version: c.status.version.clone(),
        };
        Ok((c.client, m))
    }

    /// One chain: watch, spill, store deltas, until stopped (`None`) or broken.
    async fn session(&self, mut chain: ChainPos) -> Result<Option<Break>, CaptureError> {
        let pcfg = &self.cfg.pitr;
        let work = WorkDir::create(&workdir::temp_base(&self.cfg))
            .map_err(|e| CaptureError::Io(std::io::Error::other(e.to_string())))?;
        let mut pos = Pos {
            next: chain.next,
            open: None,
        };
        let mut spill = new_spill(&work, &chain)?;
        let mut leases = Leases::default();
        let mut member = Member::default();
        let mut last_store = Instant::now();
        let mut down_since: Option<Instant> = None;
        let mut ticker = tokio::time::interval(pcfg.interval.max(Duration::from_millis(100)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut anchor: Option<(DateTime<Utc>, i64)> = None;
        let mut last_handover_check = Instant::now();
        let mut last_connect: Option<Instant> = None;
        // A handover found due, and since when: the chain is closed once the anchor probed
        // then is written (below).
        let mut handover: Option<(Break, Instant)> = None;
        let outcome: Option<Break> = 'outer: loop {
            // (Re)connect and watch from the first revision not complete; at most once a
            // second (a stream that ends at once must not spin).
            if let Some(t) = last_connect {
                let wait = Duration::from_secs(1).saturating_sub(t.elapsed());
                tokio::select! {
                    _ = self.stop.cancelled() => break None,
                    _ = sleep(wait) => {}
                }
            }
            last_connect = Some(Instant::now());
            if let Some(r) = spill.writer.discard_open_revision()? {
                tracing::info!(
                    revision = r,
                    "pitr: dropped an incomplete revision; it is watched again"
                );
                for id in leases.in_open.drain(..) {
                    leases.known.remove(&id);
                }
                pos.open = None;
            }
            let (mut client, m) = match self.connect().await {
                Ok(c) => c,
                Err(e) => {
                    let since = *down_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= MAX_OUTAGE {
                        break Some(Break::Outage);
                    }
                    tracing::warn!(error = %e, "pitr: cannot reach etcd; retrying");
                    tokio::select! {
                        _ = self.stop.cancelled() => break None,
                        _ = sleep(Duration::from_secs(2)) => continue,
                    }
                }
            };
            if member.version != m.version && watch_may_lose_events(&m.version) {
                tracing::warn!(endpoint = %m.endpoint, version = %m.version,
                    "pitr: etcd before 3.5.18 / 3.4.34 can drop a tombstone from a watch near a compaction (etcd #18089, #19179); upgrade etcd");
            }
            member = m;
            // A chain that holds revisions etcd has not reached (etcd went back): watching
            // from `next` would wait for etcd to pass it and append another history.
            if let Some((_, r)) = self.probe(&mut client).await {
                if r < pos.next - 1 {
                    break Some(Break::Ahead {
                        chain_last: pos.next - 1,
                        etcd: r,
                    });
                }
            }
            let opts = WatchOptions::new()
                .with_all_keys()
                .with_start_revision(pos.next)
                .with_fragment();
            let mut ws = match client
                .watch_client()
                .max_decoding_message_size(MAX_WATCH_MESSAGE)
                .watch("\0", Some(opts))
                .await
            {
                Ok(ws) => ws,
                Err(e) => {
                    tracing::warn!(endpoint = %member.endpoint, error = %etcd::describe_error(&e), "pitr: watch failed; retrying");
                    let since = *down_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= MAX_OUTAGE {
                        break Some(Break::Outage);
                    }
                    tokio::select! {
                        _ = self.stop.cancelled() => break None,
                        _ = sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            tracing::info!(endpoint = %member.endpoint, from_revision = pos.next, "pitr: watching");
            down_since = None;
            loop {
                tokio::select! {
                    _ = self.stop.cancelled() => break 'outer None,
                    _ = ticker.tick() => {
                        if pos.open.is_none() {
                            if handover.is_none() {
                                if let Some(b) = self.handover_due(&mut client, &chain, pos.next - 1, &mut last_handover_check).await {
                                    // A last anchor, probed now, after the newer base's end:
                                    // the chain is closed once it is written, so that no time
                                    // between the two chains is left uncovered. On a busy
                                    // cluster that is when the watch has delivered its revision.
                                    anchor = self.probe(&mut client).await;
                                    handover = Some((b, Instant::now()));
                                }
                            }
                            self.poll_leases(&mut client, &mut spill, &mut leases, pos.next - 1).await?;
                        }
                        if anchor.is_none() {
                            anchor = self.probe(&mut client).await;
                        }
                        // No anchor (the probe failed), or not written in time (the watch
                        // lags): close without it.
                        if handover.as_ref().is_some_and(|(_, since)| anchor.is_none() || since.elapsed() >= pcfg.interval * 3) {
                            break 'outer handover.take().map(|h| h.0);
                        }
                        self.status.update_lag();
                    }
                    msg = ws.message() => {
                        let resp = match msg {
                            Ok(Some(r)) => r,
                            Ok(None) => {
                                tracing::warn!(endpoint = %member.endpoint, "pitr: watch stream ended; resuming");
                                continue 'outer;
                            }
                            Err(e) => {
                                tracing::warn!(endpoint = %member.endpoint, error = %etcd::describe_error(&e), "pitr: watch stream error; resuming");
                                continue 'outer;
                            }
                        };
                        if let Some(b) = self.apply(&resp, &mut spill, &mut pos, &mut leases, &mut client).await? {
                            break 'outer Some(b);
                        }
                    }
                }
                // Cut points: only between revisions.
                if pos.open.is_some() {
                    continue;
                }
                if let Some((t_a, r_a)) = anchor {
                    if pos.next > r_a {
                        spill.writer.anchor(t_a.timestamp_millis(), r_a)?;
                        anchor = None;
                        if let Some((b, _)) = handover.take() {
                            break 'outer Some(b);
                        }
                        let busy =
                            spill.writer.events() > 0 && spill.started.elapsed() >= pcfg.interval;
                        let idle = spill.writer.events() == 0
                            && last_store.elapsed() >= pcfg.idle_interval;
                        if busy || idle {
                            spill = self.cut(&work, spill, &mut chain, &member).await?;
                            last_store = Instant::now();
                        }
                    }
                }
                // Without an answered anchor probe (the member cannot serve linearizable
                // reads), store what arrived anyway, uncovered in time.
                let stale =
                    spill.writer.events() > 0 && spill.started.elapsed() >= pcfg.interval * 3;
                if stale || spill.writer.bytes_written() >= pcfg.max_bytes {
                    spill = self.cut(&work, spill, &mut chain, &member).await?;
                    last_store = Instant::now();
                }
            }
        };
        let Some(b) = outcome else {
            // Stopped: the spill is not stored; the next leader resumes after the last
            // manifest.
            return Ok(None);
        };
        // Store the complete revisions, then end the chain.
        if spill.writer.discard_open_revision()?.is_some() {
            tracing::warn!("pitr: the chain broke inside a revision; that revision is not stored");
        }
        // Also an idle spill: its anchors cover the time up to the break (a handover of an
        // idle cluster would otherwise leave the time since the last idle delta uncovered),
        // and its lease records count.
        if spill.writer.holds_records() {
            self.cut(&work, spill, &mut chain, &member).await?;
        }
        self.close(&chain, &b, &member).await?;
        if !matches!(b, Break::Handover(_)) {
            self.status
                .m
                .chain_breaks
                .with_label_values(&[b.label()])
                .inc();
            self.status.set_broken(Some(format!(
                "PITR chain of backup {} broken at r{} ({}); a new base and chain are being made",
                chain.base.id,
                chain.next,
                b.describe()
            )));
            tracing::warn!(base = %chain.base.id, reason = b.label(), detail = %b.describe(), next_revision = chain.next,
                "pitr: chain broken and closed; a full backup starts a new chain");
        } else {
            tracing::info!(base = %chain.base.id, detail = ?b, "pitr: chain handed over to a newer base");
        }
        Ok(Some(b))
    }

    /// Linearizable count-only read on the watched member, sent at `t_a`, answered at `r_a`:
    /// every commit before `t_a` has a revision <= `r_a` (design §4, anchor probe).
    async fn probe(&self, client: &mut Client) -> Option<(DateTime<Utc>, i64)> {
        let t_a = Utc::now();
        let r = timeout(
            self.cfg.etcd.request_timeout,
            client.get("\0", Some(GetOptions::new().with_count_only())),
        )
        .await;
        match r {
            Ok(Ok(resp)) => resp.header().map(|h| (t_a, h.revision())),
            _ => None,
        }
    }

    /// Records leases granted (with their TTL) and gone since the last poll (design §3); only
    /// between revisions, `received_through` the last complete one. Failures are logged and
    /// retried at the next tick.
    async fn poll_leases(
        &self,
        client: &mut Client,
        spill: &mut Spill,
        leases: &mut Leases,
        received_through: i64,
    ) -> Result<(), CaptureError> {
        let limit = self.cfg.etcd.request_timeout;
        // For the session's lease list: the member's revision just before (see below).
        let before = if leases.listed {
            None
        } else {
            let opts = GetOptions::new().with_count_only().with_serializable();
            match timeout(limit, client.get("\0", Some(opts))).await {
                Ok(Ok(r)) => r.header().map(|h| h.revision()),
                _ => None,
            }
        };
        let Ok(Ok(resp)) = timeout(limit, client.leases()).await else {
            return Ok(());
        };
        let header = resp.header().map(|h| h.revision()).unwrap_or(0);
        // A lagging member answers at a revision below what the watch delivered already; the
        // records go into the spill after `received_through`, so a restore to a revision
        // before that would never read them: they are stamped no lower.
        let seen = header.max(received_through);
        let now: HashSet<i64> = resp.leases().iter().map(|l| l.id()).collect();
        let mut gone: Vec<i64> = leases
            .known
            .keys()
            .filter(|id| !now.contains(id))
            .copied()
            .collect();
        gone.sort_unstable();
        for id in gone {
            spill.writer.lease_gone(id, seen)?;
            leases.known.remove(&id);
        }
        let mut new: Vec<i64> = now
            .into_iter()
            .filter(|id| !leases.known.contains_key(id))
            .collect();
        new.sort_unstable();
        for id in new {
            let ttl = lease_ttl(client, id, limit).await;
            spill.writer.lease_grant(id, ttl, seen)?;
            leases.known.insert(id, seen);
        }
        // The session starts knowing no lease: one of the base (or of an earlier session)
        // revoked before this poll would get no LEASE_GONE. The complete list tells a restore
        // which leases were gone here; every lease it leaves out counts as gone from `seen` on,
        // with no later poll to correct it, so it is written only when exact at `seen`: the
        // member is not behind the watch (`header >= received_through`; a lagging member
        // lacks leases granted since), and its revision did not move while it answered (etcd
        // reads the lease list, then the revision for the header: a lease granted and put in
        // between would be missing from a list stamped after that put). Else the next poll
        // tries again.
        if before == Some(header) && header >= received_through {
            let mut ids: Vec<i64> = resp
                .leases()
                .iter()
                .map(|l| l.id())
                .filter(|&id| id != 0)
                .collect();
            ids.sort_unstable();
            ids.dedup();
            if ids.len() <= MAX_LEASE_LIST {
                spill.writer.lease_list(seen, &ids)?;
            } else {
                tracing::warn!(leases = ids.len(), "pitr: too many leases to list; leases revoked before this session's first poll stay in a restore until their TTL");
            }
            leases.listed = true;
        }
        Ok(())
    }

    /// A newer base whose revision the chain has reached: hand over to it (checked at most
    /// every `idle_interval`). Not while etcd has compacted past that base's revision: its
    /// chain could not start (the watch from its revision + 1 would be refused), so this
    /// chain goes on until a newer base can take over.
    async fn handover_due(
        &self,
        client: &mut Client,
        chain: &ChainPos,
        received_through: i64,
        last_check: &mut Instant,
    ) -> Option<Break> {
        if last_check.elapsed() < self.cfg.pitr.idle_interval {
            return None;
        }
        *last_check = Instant::now();
        let newest = self.newest_base(&chain.cluster).await.ok()??;
        // The newer base's chain starts right after its B_eff (its manifest's current revision).
        let b_eff = chain::manifest_base_revision(&newest);
        let due =
            newest.id != chain.base.id && b_eff > chain.base_revision && b_eff <= received_through;
        if !due {
            return None;
        }
        match self.history_holds(client, b_eff + 1).await {
            Some(true) => Some(Break::Handover(newest.id)),
            Some(false) => {
                tracing::warn!(base = %chain.base.id, newer = %newest.id, newer_revision = newest.revision,
                    "pitr: etcd compacted past the newer backup's revision before the chain could be handed over to it; the chain goes on on its base until a newer backup");
                None
            }
            None => None,
        }
    }

    /// Writes one watch response's events into the spill.
    async fn apply(
        &self,
        resp: &WatchResponse,
        spill: &mut Spill,
        pos: &mut Pos,
        leases: &mut Leases,
        client: &mut Client,
    ) -> Result<Option<Break>, CaptureError> {
        if resp.canceled() || resp.compact_revision() > 0 {
            let c = resp.compact_revision();
            tracing::warn!(
                compact_revision = c,
                reason = resp.cancel_reason(),
                "pitr: watch cancelled"
            );
            if c > 0 {
                return Ok(Some(Break::Compacted(c)));
            }
            return Err(CaptureError::Etcd(format!(
                "watch cancelled: {}",
                resp.cancel_reason()
            )));
        }
        let observed = Utc::now().timestamp_millis();
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let main = kv.mod_revision();
            if pos.open != Some(main) {
                complete_open_revision(pos, spill, leases)?;
                if main != pos.next {
                    return Ok(Some(Break::Gap {
                        expected: pos.next,
                        got: main,
                    }));
                }
                spill.writer.begin_revision(main, observed)?;
                pos.open = Some(main);
            }
            match ev.event_type() {
                EventType::Put => {
                    spill.writer.put(KvRef {
                        key: kv.key(),
                        create_revision: kv.create_revision(),
                        mod_revision: kv.mod_revision(),
                        version: kv.version(),
                        value: kv.value(),
                        lease: kv.lease(),
                    })?;
                    // A lease first seen here, or seen so far only at a later revision (a poll
                    // while the watch replays older revisions): recorded granted at this put, so
                    // that a restore to it has the lease (apply.rs: the record seen highest
                    // at or before the target decides).
                    let id = kv.lease();
                    if id != 0 && leases.known.get(&id).is_none_or(|&seen| seen > main) {
                        let ttl = lease_ttl(client, id, self.cfg.etcd.request_timeout).await;
                        spill.writer.lease_grant(id, ttl, main)?;
                        leases.known.insert(id, main);
                        leases.in_open.push(id);
                    }
                }
                EventType::Delete => spill.writer.delete(kv.key())?,
            }
            self.status.m.events.inc();
        }
        if !is_fragment(resp) {
            complete_open_revision(pos, spill, leases)?;
        }
        Ok(None)
    }

    /// Ends the spill (END), stores data then manifest, and returns the next spill.
    async fn cut(
        &self,
        work: &WorkDir,
        spill: Spill,
        chain: &mut ChainPos,
        member: &Member,
    ) -> Result<Spill, CaptureError> {
        let Spill { writer, path, .. } = spill;
        let (out, sum) = writer.finish()?;
        out.into_inner().map_err(|e| e.into_error())?.sync_data()?;
        let m = DeltaManifest {
            last_revision: sum.last_revision,
            events: sum.events,
            revisions: sum.revisions,
            lease_records: sum.lease_records,
            first_time: ms_to_time(sum.first_observed_ms),
            last_time: ms_to_time(sum.last_observed_ms),
            covered_until: ms_to_time(sum.covered_until_ms),
            raw_bytes: sum.raw_bytes,
            raw_sha256: sum.raw_sha256.clone(),
            ..empty_manifest(chain, member)
        };
        let m = self.upload(m, &path, chain.recipients.clone()).await?;
        let _ = std::fs::remove_file(&path);
        self.status.m.last_revision.set(m.last_revision);
        self.status.set_broken(None);
        self.status.m.stored_bytes.inc_by(m.stored_bytes);
        tracing::info!(base = %m.base_id, seq = m.seq, first = m.first_revision, last = m.last_revision,
            events = m.events, stored_bytes = m.stored_bytes, "pitr: delta stored");
        chain.next = m.last_revision + 1;
        chain.seq += 1;
        chain.prev_stored_sha256 = Some(m.stored_sha256.clone());
        if let Some(t) = m.covered_until {
            self.status.set_covered(t);
        }
        self.status.update_lag();
        new_spill(work, chain)
    }

    /// Compresses (and encrypts) the spill into the data object, then creates the manifest
    /// (`If-None-Match: *`).
    async fn upload(
        &self,
        mut m: DeltaManifest,
        path: &Path,
        recipients: Option<Arc<Recipients>>,
    ) -> Result<DeltaManifest, CaptureError> {
        let data_key = m
            .derived_data_key()?
            .expect("a delta manifest has a data key");
        let mut upload = self.store.begin_upload(&data_key).await?;
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
        let p = path.to_path_buf();
        let writer =
            tokio::task::spawn_blocking(move || compress_spill(&p, recipients.as_deref(), tx));
        let mut failed = None;
        while let Some(chunk) = rx.recv().await {
            if let Err(e) = upload.write(&chunk).await {
                failed = Some(e);
                break;
            }
        }
        drop(rx);
        let raw = writer.await.expect("compression thread");
        if let Some(e) = failed {
            let _ = upload.abort().await;
            return Err(e.into());
        }
        match raw {
            Ok((n, sha)) if n == m.raw_bytes && hex::encode(sha) == m.raw_sha256 => {}
            Ok((n, _)) => {
                let _ = upload.abort().await;
                return Err(CaptureError::Io(std::io::Error::other(format!(
                    "spill file {} reads back as {n} bytes with another sha256 than written ({} bytes)",
                    path.display(),
                    m.raw_bytes
                ))));
            }
            Err(e) => {
                let _ = upload.abort().await;
                return Err(e.into());
            }
        }
        let info = upload.finish().await?;
        m.stored_bytes = info.bytes;
        m.stored_sha256 = hex::encode(info.sha256);
        m.written_at = Utc::now();
        m.validate().map_err(CaptureError::Invalid)?;
        let key = m.key()?;
        match self.store.put_bytes_new(&key, m.to_json().into()).await {
            Ok(()) => Ok(m),
            Err(StoreError::AlreadyExists { .. }) => {
                if let Err(e) = self.store.delete(&data_key).await {
                    tracing::warn!(key = %data_key, error = %e, "pitr: could not delete the data of a refused delta");
                }
                Err(CaptureError::Conflict(key.to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Ends the chain with a close manifest at its next revision.
    async fn close(
        &self,
        chain: &ChainPos,
        b: &Break,
        member: &Member,
    ) -> Result<(), CaptureError> {
        let m = DeltaManifest {
            kind: DeltaKind::Close,
            reason: Some(b.reason()),
            compact_revision: match b {
                Break::Compacted(c) => Some(*c),
                _ => None,
            },
            next_base_id: match b {
                Break::Handover(id) => Some(id.clone()),
                _ => None,
            },
            ..empty_manifest(chain, member)
        };
        m.validate().map_err(CaptureError::Invalid)?;
        let key = m.key()?;
        match self.store.put_bytes_new(&key, m.to_json().into()).await {
            Ok(()) => Ok(()),
            Err(StoreError::AlreadyExists { .. }) => Err(CaptureError::Conflict(key.to_string())),
            Err(e) => Err(e.into()),
        }
    }
}

/// Whether etcd `version` has the watch bugs #18089 (fixed 3.5.16 / 3.4.34) or #19179 (fixed
/// 3.5.18): a watcher reading at the compaction revision can lose a tombstone. Unparsable:
/// `false`.
fn watch_may_lose_events(version: &str) -> bool {
    let v: Vec<u64> = version.split('.').map_while(|p| p.parse().ok()).collect();
    match v.as_slice() {
        [3, 5, p, ..] => *p < 18,
        [3, 4, p, ..] => *p < 34,
        [3, m, ..] => *m < 4,
        _ => false,
    }
}

/// The granted TTL of lease `id` in seconds; 0 when unknown (already gone, or no answer).
async fn lease_ttl(client: &mut Client, id: i64, limit: Duration) -> i64 {
    match timeout(limit, client.lease_time_to_live(id, None)).await {
        Ok(Ok(r)) if r.ttl() >= 0 => r.granted_ttl().max(0),
        _ => 0,
    }
}

/// Whether more responses of the last revision follow (`fragment`; etcd-client's
/// `pub-response-field` feature exposes the protobuf field).
fn is_fragment(r: &WatchResponse) -> bool {
    r.0.fragment
}

fn describe_failures(f: &[(String, String)]) -> String {
    f.iter()
        .map(|(e, r)| format!("{e}: {r}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn new_spill(work: &WorkDir, chain: &ChainPos) -> Result<Spill, CaptureError> {
    let name = format!("delta-{:016}-{}.spill", chain.next, chain.seq);
    let (f, path) = work
        .create_file(&name)
        .map_err(|e| CaptureError::Io(std::io::Error::other(e.to_string())))?;
    let header = DeltaHeader {
        cluster_id: chain.cluster.clone(),
        base_id: chain.base.id.clone(),
        base_revision: chain.base_revision,
        seq: chain.seq,
        first_revision: chain.next,
    };
    let writer = DeltaWriter::new(BufWriter::with_capacity(SPILL_BUFFER, f), header)?;
    Ok(Spill {
        writer,
        path,
        started: Instant::now(),
    })
}

/// Reads the spill at `path` and hashes it (size and sha256 of the plaintext, returned),
/// compresses it (zstd level 3, checksum, one frame), encrypts it for `recipients` when given
/// (age v1), and sends the stored bytes to `tx`. Blocking.
fn compress_spill(
    path: &Path,
    recipients: Option<&Recipients>,
    tx: mpsc::Sender<Vec<u8>>,
) -> std::io::Result<(u64, [u8; 32])> {
    let mut input = BufReader::new(File::open(path)?);
    let chan = ChunkWriter::new(tx, UPLOAD_CHUNK);
    let out = match recipients {
        Some(r) => AgeOutput::Age(r.encrypt(chan)?),
        None => AgeOutput::Plain(chan),
    };
    let mut enc = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?;
    enc.include_checksum(true)?;
    let mut sha = Sha256::new();
    let mut n = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let k = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        sha.update(&buf[..k]);
        enc.write_all(&buf[..k])?;
        n += k as u64;
    }
    enc.finish()?.finish()?.finish()?;
    Ok((n, sha.finalize().into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_from_the_newest_covered_time_and_stood_down() {
        let s = Status::new(crate::metrics::metrics());
        let lag = || s.m.lag.get();
        s.m.lag.set(-1.0);
        // Nothing known yet: unchanged.
        s.update_lag();
        assert_eq!(lag(), -1.0);
        s.set_covered(Utc::now() - chrono::Duration::seconds(100));
        s.update_lag();
        assert!((100.0..101.0).contains(&lag()), "{}", lag());
        // An older covered time never moves it back; a newer one does.
        s.set_covered(Utc::now() - chrono::Duration::seconds(500));
        s.set_covered(Utc::now() - chrono::Duration::seconds(20));
        s.update_lag();
        assert!((20.0..21.0).contains(&lag()), "{}", lag());
        s.set_broken(Some("x".into()));
        s.stood_down();
        assert_eq!((lag(), s.broken_chain()), (0.0, None));
    }

    #[test]
    fn versions_with_the_watch_bugs() {
        for v in ["3.5.1", "3.5.17", "3.4.23", "3.4.33", "3.3.27"] {
            assert!(watch_may_lose_events(v), "{v}");
        }
        for v in ["3.5.18", "3.5.30", "3.4.34", "3.6.0", "", "x"] {
            assert!(!watch_may_lose_events(v), "{v}");
        }
    }
}
