//! Retention: which backups `prune` and the daemon keep, and the deletion that follows.
//!
//! Plan, then execute (the rustic/restic habit): [`plan`] is a pure function of the catalog,
//! the policy and `now`; [`prune`] lists the store, builds the plan, and carries it out (or only
//! returns it with `dry_run`).
//!
//! # Policy (grandfather-father-son, as restic's `forget`)
//! Backups are grouped by `cluster_id` (a store prefix may hold several clusters); inside a
//! group, newest first in the one order of truth ([`newest_first`]: revision, then time, so a
//! writer's wrong clock cannot make prune delete the snapshot with the highest revision):
//! - `keep_last: N` keeps the N newest backups;
//! - `keep_hourly` / `keep_daily` / `keep_weekly` / `keep_monthly: N` keep, for each of the last
//!   N hours / days / ISO weeks / months *that have backups* (periods without a backup do not
//!   use up the count; periods are ordered by the latest backup time in them), the newest
//!   backup of that period;
//! - a backup is kept when any rule keeps it, and every rule that keeps it is recorded;
//! - the newest backup of each cluster is always kept, whatever the policy says.
//!
//! # What prune never deletes
//! - Keys taken from a manifest field: every key is derived from cluster id + backup id
//!   ([`manifest_key`], [`Manifest::derived_data_key`]).
//! - Broken manifests ([`crate::store::manifest::BrokenManifest`]) and the data beside them:
//!   they are reported ("prune: left N broken manifests: ...") and left for a human.
//! - Backups whose manifest says their objects are under S3 Object Lock until a future date
//!   (`object_lock.retain_until`): reported with the date they become deletable. A delete the
//!   store refuses for a backup with Object Lock is reported, not a failure.
//!
//! Periods are computed in UTC, or in `schedule.timezone` when set ([`plan_in`]): a daily
//! bucket is a local calendar day, weekly an ISO week (Monday start, `%G-W%V`, so 2027-01-01
//! belongs to 2026-W53), monthly a local calendar month. An hour is identified by its local
//! start *and* UTC offset, so the repeated hour of a DST fall-back is two periods.
//! The time of a backup is its `started_at` (the point in time the snapshot represents).
//!
//! # Orphans
//! Data objects (`*.db.zst`, `*.db.zst.age`, `*.db`) without a sibling manifest `<id>.json`
//! (parseable or not) are not backups (the manifest is written last, so they are left-overs of
//! failed or interrupted runs). They are removed only when older than `retention.orphan_grace`,
//! so that an upload in flight (data written, manifest not yet) is never touched. Other objects
//! are never deleted.
//!
//! # Order of deletion
//! A backup's manifest is deleted first, then its data object, then its files object
//! ([`delete_backup_objects`], shared by `prune` and `delete`): a backup exists only while its
//! manifest exists, so a crash in between leaves orphans (collected later), never a manifest
//! pointing at missing data.
//!
//! # `delete`
//! [`delete`] removes backups named by id with the same routine and prune's safety: the newest
//! backup of a cluster only with `force`, nothing under Object Lock, nothing behind a broken
//! manifest, and every argument checked before the first deletion.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Datelike, Offset, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::config::{Config, RetentionConfig};
use crate::pitr::manifest::is_chain_object_name;
use crate::store::manifest::{
    is_backup_stem, manifest_key, newest_first, BrokenManifest, Manifest, DATA_SUFFIX,
    ENCRYPTED_DATA_SUFFIX, MANIFEST_SUFFIX,
};
use crate::store::{ObjectKey, ObjectMeta, Store, StoreError};

/// Why a backup is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "rule", content = "period", rename_all = "snake_case")]
pub enum KeepReason {
    /// The newest backup of its cluster (always kept).
    Newest,
    /// One of the `keep_last` newest.
    Last,
    /// Newest of its hour (`2026-11-23T14+00:00`).
    Hourly(String),
    /// Newest of its day (`2026-11-23`).
    Daily(String),
    /// Newest of its ISO week (`2026-W48`).
    Weekly(String),
    /// Newest of its month (`2026-11`).
    Monthly(String),
}

impl std::fmt::Display for KeepReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeepReason::Newest => f.write_str("newest"),
            KeepReason::Last => f.write_str("last"),
            KeepReason::Hourly(p) => write!(f, "hourly {p}"),
            KeepReason::Daily(p) => write!(f, "daily {p}"),
            KeepReason::Weekly(p) => write!(f, "weekly {p}"),
            KeepReason::Monthly(p) => write!(f, "monthly {p}"),
        }
    }
}

/// The decision about one backup.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackupDecision {
    /// Backup id (`20261122T230000Z-r0000000000002487`).
    pub id: String,
    /// Cluster id (hex) the backup belongs to.
    pub cluster_id: String,
    /// The backup's time (`started_at`), which decides its periods.
    pub time: DateTime<Utc>,
    /// Store revision of the snapshot, which decides its order.
    pub revision: i64,
    /// Object key of the manifest, derived: `<cluster-id>/<id>.json`.
    pub manifest_key: String,
    /// Object key of the data object, derived: `<cluster-id>/<id>.db.zst` (`.db.zst.age` when
    /// encrypted). Never the manifest's `data_key` field.
    pub data_key: String,
    /// Object key of its control-plane files object, derived: `<cluster-id>/<id>.files.tar.zst`
    /// (`.age` when encrypted); present when the manifest lists files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_key: Option<String>,
    /// Rules that keep it; empty means the policy lets it go.
    pub reasons: Vec<KeepReason>,
    /// `object_lock.retain_until` of its manifest, when the store locks its objects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retain_until: Option<DateTime<Utc>>,
    /// The policy lets it go but it is under Object Lock until `retain_until` (after the
    /// plan's `now`): it is not deleted now.
    pub locked: bool,
}

impl BackupDecision {
    /// Whether any rule keeps this backup.
    pub fn keep(&self) -> bool {
        !self.reasons.is_empty()
    }
}

/// A data object without manifest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrphanDecision {
    /// Object key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time reported by the store.
    pub last_modified: DateTime<Utc>,
    /// `true` when older than the grace period, i.e. it will be removed.
    pub remove: bool,
}

/// What prune keeps and removes, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PrunePlan {
    /// The `now` the plan was computed for.
    pub now: DateTime<Utc>,
    /// Time zone periods were computed in (`UTC` or an IANA name).
    pub timezone: String,
    /// Every backup, newest first (per cluster, clusters in id order).
    pub backups: Vec<BackupDecision>,
    /// Unreferenced data objects (empty when the plan was made from manifests only).
    pub orphans: Vec<OrphanDecision>,
    /// Manifests that are not trusted: never deleted, nor the data beside them.
    pub broken: Vec<BrokenManifest>,
    /// Deletions the store refused for backups under Object Lock (reported, not failures):
    /// the object key and the store's answer. Filled by [`prune`].
    pub refused: Vec<String>,
}

impl PrunePlan {
    /// Backups kept.
    pub fn kept(&self) -> impl Iterator<Item = &BackupDecision> {
        self.backups.iter().filter(|b| b.keep())
    }
    /// Backups to remove now (not kept, not under Object Lock).
    pub fn removed(&self) -> impl Iterator<Item = &BackupDecision> {
        self.backups.iter().filter(|b| !b.keep() && !b.locked)
    }
    /// Backups the policy lets go that stay under Object Lock for now.
    pub fn locked(&self) -> impl Iterator<Item = &BackupDecision> {
        self.backups.iter().filter(|b| !b.keep() && b.locked)
    }
    /// Orphan objects to remove.
    pub fn orphans_removed(&self) -> impl Iterator<Item = &OrphanDecision> {
        self.orphans.iter().filter(|o| o.remove)
    }

    /// Human-readable listing: one line per backup and orphan, then a summary.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!("{:<6} {:<36} {}\n", "ACTION", "ID", "REASONS"));
        for b in &self.backups {
            let reasons: Vec<String> = b.reasons.iter().map(|r| r.to_string()).collect();
            let (action, why) = match (b.keep(), b.locked, b.retain_until) {
                (true, _, _) => ("keep", reasons.join(", ")),
                (false, true, Some(t)) => (
                    "locked",
                    format!(
                        "Object Lock until {}: deletable then",
                        t.format("%Y-%m-%dT%H:%M:%SZ")
                    ),
                ),
                _ => ("remove", "-".to_string()),
            };
            out.push_str(&format!("{action:<6} {:<36} {why}\n", b.id));
        }
        for b in &self.broken {
            out.push_str(&format!(
                "{:<6} {:<36} broken manifest, left alone: {}\n",
                "leave", b.key, b.reason
            ));
        }
        for o in &self.orphans {
            out.push_str(&format!(
                "{:<6} {:<36} orphan, {} bytes, modified {}{}\n",
                if o.remove { "remove" } else { "keep" },
                o.key,
                o.size,
                o.last_modified.format("%Y-%m-%dT%H:%M:%SZ"),
                if o.remove {
                    ""
                } else {
                    " (within grace period)"
                }
            ));
        }
        out.push_str(&format!(
            "{} backups: keep {}, remove {}; orphans: remove {} of {}\n",
            self.backups.len(),
            self.kept().count(),
            self.removed().count(),
            self.orphans_removed().count(),
            self.orphans.len()
        ));
        if let Some(line) = self.locked_summary() {
            out.push_str(&line);
            out.push('\n');
        }
        if let Some(line) = self.broken_summary() {
            out.push_str(&line);
            out.push('\n');
        }
        for r in &self.refused {
            out.push_str(&format!("prune: the store refused to delete {r}\n"));
        }
        out
    }

    /// "prune: left N broken manifests: key (reason), ..." when there are any.
    pub fn broken_summary(&self) -> Option<String> {
        if self.broken.is_empty() {
            return None;
        }
        let list: Vec<String> = self
            .broken
            .iter()
            .map(|b| format!("{} ({})", b.key, b.reason))
            .collect();
        Some(format!(
            "prune: left {} broken manifests: {}",
            list.len(),
            list.join("; ")
        ))
    }

    /// "prune: N backups under Object Lock, first deletable at T" when there are any.
    pub fn locked_summary(&self) -> Option<String> {
        let first = self.locked().filter_map(|b| b.retain_until).min()?;
        Some(format!(
            "prune: {} backups kept under Object Lock; the first becomes deletable at {}",
            self.locked().count(),
            first.format("%Y-%m-%dT%H:%M:%SZ")
        ))
    }
}

/// Applies `policy` to `backups` (any order) with periods in UTC. Pure: no I/O, no clock.
/// The result lists every backup with the rules that keep it; `orphans` is empty.
pub fn plan(backups: &[Manifest], policy: &RetentionConfig, now: DateTime<Utc>) -> PrunePlan {
    plan_in(backups, policy, Tz::UTC, now)
}

/// As [`plan`], with hourly/daily/weekly/monthly periods computed in time zone `tz`.
pub fn plan_in(
    backups: &[Manifest],
    policy: &RetentionConfig,
    tz: Tz,
    now: DateTime<Utc>,
) -> PrunePlan {
    let mut by_cluster: BTreeMap<&str, Vec<&Manifest>> = BTreeMap::new();
    for m in backups {
        by_cluster.entry(m.cluster_id.as_str()).or_default().push(m);
    }
    let mut decisions = Vec::with_capacity(backups.len());
    for (_, mut group) in by_cluster {
        // The one order of truth, so the result does not depend on input order or clocks.
        group.sort_by(|a, b| newest_first(a, b));
        let mut reasons: Vec<Vec<KeepReason>> = vec![Vec::new(); group.len()];
        if let Some(r) = reasons.first_mut() {
            r.push(KeepReason::Newest);
        }
        for r in reasons.iter_mut().take(policy.keep_last as usize) {
            r.push(KeepReason::Last);
        }
        for (n, period) in [
            (policy.keep_hourly, Period::Hour),
            (policy.keep_daily, Period::Day),
            (policy.keep_weekly, Period::Week),
            (policy.keep_monthly, Period::Month),
        ] {
            for (i, key) in bucket_heads(&group, n, period, &tz, now) {
                reasons[i].push(match period {
                    Period::Hour => KeepReason::Hourly(key),
                    Period::Day => KeepReason::Daily(key),
                    Period::Week => KeepReason::Weekly(key),
                    Period::Month => KeepReason::Monthly(key),
                });
            }
        }
        for (m, reasons) in group.into_iter().zip(reasons) {
            let retain_until = m.object_lock.as_ref().map(|l| l.retain_until);
            decisions.push(BackupDecision {
                id: m.id.clone(),
                cluster_id: m.cluster_id.clone(),
                time: backup_time(m),
                revision: m.revision,
                manifest_key: manifest_key(&m.cluster_id, &m.id).to_string(),
                data_key: derived_data_key(m),
                files_key: derived_files_key(m),
                locked: reasons.is_empty() && retain_until.is_some_and(|t| t > now),
                retain_until,
                reasons,
            });
        }
    }
    PrunePlan {
        now,
        timezone: tz.name().to_string(),
        backups: decisions,
        orphans: Vec::new(),
        broken: Vec::new(),
        refused: Vec::new(),
    }
}

/// The derived data key (the catalog only admits manifests whose ids make valid keys).
fn derived_data_key(m: &Manifest) -> String {
    m.derived_data_key()
        .map(|k| k.to_string())
        .unwrap_or_else(|_| crate::store::manifest::data_key(&m.cluster_id, &m.id).to_string())
}

/// The derived key of the files object, when the manifest lists one.
fn derived_files_key(m: &Manifest) -> Option<String> {
    m.files.as_ref()?;
    m.derived_files_key().ok().map(|k| k.to_string())
}

/// For the `n` most recent periods that have backups in `group` (ordered newest first by
/// [`newest_first`]), the index of the period's newest backup and the period's name. Periods
/// are ordered by the latest backup time in them. Backups whose time is after `now` (a writer's
/// clock ahead, or a forged manifest) take no period: they cannot push the backups of real
/// periods out; `keep_last` (by revision) still applies to them.
fn bucket_heads(
    group: &[&Manifest],
    n: u32,
    period: Period,
    tz: &Tz,
    now: DateTime<Utc>,
) -> Vec<(usize, String)> {
    if n == 0 {
        return Vec::new();
    }
    // Period name -> (index of its first backup in truth order, latest time in it).
    let mut periods: BTreeMap<String, (usize, DateTime<Utc>)> = BTreeMap::new();
    for (i, m) in group.iter().enumerate() {
        let t = backup_time(m);
        if t > now {
            continue;
        }
        periods
            .entry(period_key(period, t, tz))
            .and_modify(|e| e.1 = e.1.max(t))
            .or_insert((i, t));
    }
    let mut v: Vec<(String, (usize, DateTime<Utc>))> = periods.into_iter().collect();
    v.sort_by(|a, b| b.1 .1.cmp(&a.1 .1).then_with(|| b.0.cmp(&a.0)));
    v.into_iter()
        .take(n as usize)
        .map(|(key, (i, _))| (i, key))
        .collect()
}

/// Data objects in `objects` that are no backup's: neither the derived data key of a backup
/// in `backups` nor beside a manifest object `<id>.json` in `objects` (parseable or not). Each
/// is marked for removal when its `last_modified` is more than `grace` before `now`. Pure.
pub fn orphans(
    objects: &[ObjectMeta],
    backups: &[Manifest],
    grace: Duration,
    now: DateTime<Utc>,
) -> Vec<OrphanDecision> {
    let referenced: HashSet<String> = backups
        .iter()
        .map(derived_data_key)
        .chain(backups.iter().filter_map(derived_files_key))
        .collect();
    let manifests: HashSet<&str> = objects
        .iter()
        .map(|o| o.key.as_str())
        .filter(|k| k.ends_with(MANIFEST_SUFFIX))
        .collect();
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    // `<cluster>/<id>.pitr/<first:016>` of each delta manifest `<first:016>-<seq:016>.delta`.
    let delta_firsts: HashSet<&str> = objects
        .iter()
        .map(|o| o.key.as_str())
        .filter(|k| k.contains(PITR_DIR) && k.ends_with(".delta"))
        .filter_map(|k| k.rsplit_once('-').map(|(a, _)| a))
        .collect();
    objects
        .iter()
        .filter(|o| {
            if let Some(orphan) = chain_object_orphan(o.key.as_str(), &manifests, &delta_firsts) {
                return orphan;
            }
            let Some(stem) = data_object_stem(o.key.as_str()) else {
                return false;
            };
            !referenced.contains(o.key.as_str())
                && !manifests.contains(format!("{stem}{MANIFEST_SUFFIX}").as_str())
        })
        .map(|o| OrphanDecision {
            key: o.key.to_string(),
            size: o.size,
            last_modified: o.last_modified,
            remove: now.signed_duration_since(o.last_modified) > grace,
        })
        .collect()
}

/// Directory segment suffix of a base's PITR chain: `<cluster>/<id>.pitr/` (pitr::manifest).
const PITR_DIR: &str = ".pitr/";

/// For an object of a PITR chain (`<cluster>/<id>.pitr/...`, docs/design/pitr.md §5):
/// `Some(true)` when it is an orphan — its base manifest `<cluster>/<id>.json` is gone, or it
/// is a delta data object `<first:016>-<last>-<nonce>.delta.zst[.age]` and no delta manifest
/// `<first:016>-<seq>.delta` of its chain starts at `<first>` (`delta_firsts`: the
/// `<chain dir><first>` of every delta manifest; a capture killed between data and manifest);
/// `Some(false)` for other chain objects; `None` when `key` is not in a chain directory.
fn chain_object_orphan(
    key: &str,
    manifests: &HashSet<&str>,
    delta_firsts: &HashSet<&str>,
) -> Option<bool> {
    let (stem, name) = key.split_once(PITR_DIR)?;
    if !is_backup_stem(stem) || !is_chain_object_name(name) {
        // Not laid out like a chain object: not ours to remove.
        return Some(false);
    }
    if !manifests.contains(format!("{stem}{MANIFEST_SUFFIX}").as_str()) {
        return Some(true);
    }
    let is_data = name.ends_with(".delta.zst") || name.ends_with(".delta.zst.age");
    if !is_data {
        return Some(false);
    }
    let first = name.split('-').next().unwrap_or_default();
    Some(!delta_firsts.contains(format!("{stem}{PITR_DIR}{first}").as_str()))
}

/// `<cluster>/<id>` of a data object key (`.db.zst.age`, `.db.zst` or `.db`) or of a files
/// object key (`.files.tar.zst[.age]`), else `None`. Only keys laid out as this tool writes
/// them count ([`is_backup_stem`]): a file of someone else's in the store is never an orphan.
fn data_object_stem(key: &str) -> Option<&str> {
    [
        ENCRYPTED_DATA_SUFFIX,
        DATA_SUFFIX,
        ".db",
        ".files.tar.zst.age",
        ".files.tar.zst",
    ]
    .iter()
    .find_map(|suffix| key.strip_suffix(suffix))
    .filter(|stem| is_backup_stem(stem))
}

/// The instant that decides a backup's periods: when its snapshot was taken.
fn backup_time(m: &Manifest) -> DateTime<Utc> {
    m.started_at
}

#[derive(Clone, Copy)]
enum Period {
    Hour,
    Day,
    Week,
    Month,
}

fn period_key(p: Period, t: DateTime<Utc>, tz: &Tz) -> String {
    let local = tz.from_utc_datetime(&t.naive_utc());
    match p {
        Period::Hour => {
            let off = local.offset().fix().local_minus_utc();
            let sign = if off < 0 { '-' } else { '+' };
            let off = off.abs();
            format!(
                "{}T{:02}{}{:02}:{:02}",
                local.format("%Y-%m-%d"),
                local.hour(),
                sign,
                off / 3600,
                off % 3600 / 60
            )
        }
        Period::Day => local.format("%Y-%m-%d").to_string(),
        Period::Week => {
            let w = local.iso_week();
            format!("{}-W{:02}", w.year(), w.week())
        }
        Period::Month => format!("{}-{:02}", local.year(), local.month()),
    }
}

/// Parses `schedule.timezone` (validated by [`Config::validate`]); UTC when unset or unknown.
pub fn config_tz(cfg: &Config) -> Tz {
    cfg.schedule.time_zone().unwrap_or(Tz::UTC)
}

/// Errors of [`prune`].
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// Listing the store or reading its manifests failed; nothing was deleted.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Some deletions failed; all others were done.
    #[error("prune: {failed} of {attempted} deletions failed (first: {first}); the rest was done, run prune again")]
    Deletions {
        /// Deletions attempted.
        attempted: usize,
        /// Deletions that failed.
        failed: usize,
        /// The first failure, with the object key.
        first: String,
    },
}

/// Lists the store (manifests via the catalog, objects for orphans), plans with the policy in
/// `cfg.retention` and periods in `cfg.schedule.timezone`, and, unless `dry_run`, deletes what
/// the plan removes: per backup the manifest first, then the data object, then the files
/// object (all keys derived from cluster id and backup id; [`delete_backup_objects`]); then
/// expired orphans. Broken manifests and backups under Object Lock are left and reported
/// (`tracing::warn`/`info` and the plan's table). Each deletion is logged (`tracing::info`).
/// Deletion failures do not stop the others; they are reported together as
/// [`PruneError::Deletions`] after all were tried, except refusals for backups under Object
/// Lock, which go to [`PrunePlan::refused`].
///
/// Errors: [`PruneError::Store`] when the store cannot be listed (nothing is deleted then),
/// [`PruneError::Deletions`] when some deletions failed.
pub async fn prune(cfg: &Config, store: &Store, dry_run: bool) -> Result<PrunePlan, PruneError> {
    let now = Utc::now();
    let cat = crate::store::manifest::catalog_at(store, now, cfg.store.future_tolerance).await?;
    let objects = store.list("").await?;
    let mut p = plan_in(&cat.backups, &cfg.retention, config_tz(cfg), now);
    p.orphans = orphans(&objects, &cat.backups, cfg.retention.orphan_grace, now);
    p.broken = cat.broken;
    if let Some(line) = p.broken_summary() {
        tracing::warn!("{line}");
    }
    for b in p.locked() {
        tracing::info!(backup = %b.id, retain_until = ?b.retain_until,
            "prune: backup under Object Lock kept; deletable after its retain-until date");
    }
    if dry_run {
        return Ok(p);
    }
    // Temp dirs of killed runs (their lock is free); never a running one's.
    let base = crate::workdir::temp_base(cfg);
    for d in tokio::task::spawn_blocking(move || crate::workdir::sweep_stale(&base))
        .await
        .unwrap_or_default()
    {
        tracing::info!(path = %d.display(), "prune: removed the temp files of a killed run");
    }
    // Interrupted writes of this tool: local temp files whose writer is gone, S3 multipart
    // uploads started more than orphan_grace ago. A failure here does not stop retention.
    match store.remove_stale_uploads(cfg.retention.orphan_grace).await {
        Ok(removed) => {
            for r in removed {
                tracing::info!(upload = %r, "prune: removed an interrupted upload");
            }
        }
        Err(e) => tracing::warn!(error = %e, "prune: interrupted uploads not cleaned"),
    }
    let mut attempted = 0usize;
    let mut failures: Vec<String> = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    for b in p.removed() {
        // Safety net: never remove the newest backup of a cluster (the plan always keeps it).
        debug_assert!(!b.reasons.contains(&KeepReason::Newest));
        let r = delete_backup_objects(store, b, "prune").await;
        attempted += r.attempted;
        failures.extend(r.failures);
        refused.extend(r.refused.map(|(key, e)| format!("{key}: {e}")));
    }
    for o in p.orphans_removed() {
        attempted += 1;
        let r = match ObjectKey::new(o.key.as_str()) {
            Ok(k) => store.delete(&k).await,
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => tracing::info!(key = %o.key, size = o.size, "prune: deleted orphan object"),
            Err(e) => {
                tracing::warn!(key = %o.key, error = %e, "prune: delete of orphan failed");
                failures.push(format!("{}: {e}", o.key));
            }
        }
    }
    p.refused = refused;
    if let Some(first) = failures.first() {
        return Err(PruneError::Deletions {
            attempted,
            failed: failures.len(),
            first: first.clone(),
        });
    }
    Ok(p)
}

/// What [`delete_backup_objects`] did with one backup's objects.
#[derive(Debug, Default)]
pub struct Removal {
    /// Deletions attempted (1 to 3).
    pub attempted: usize,
    /// The store refused a delete because of Object Lock (or the backup has an
    /// `object_lock` and the delete failed): the key and the store's error. The backup's
    /// remaining objects were not attempted.
    pub refused: Option<(String, StoreError)>,
    /// Other failures, `"key: error"`.
    pub failures: Vec<String>,
}

/// Deletes the objects of one backup, the one deletion routine of `prune` and `delete`: the
/// manifest first (the backup is listed only while its manifest exists, so a crash or failure
/// after it leaves orphans that [`prune`] collects after `retention.orphan_grace`, never a
/// listed backup without its data), then the data object, then the files object. Keys are
/// the decision's derived keys (cluster id + backup id + encryption), never a manifest field.
/// A key already gone counts as deleted. `op` (`"prune"`, `"delete"`) prefixes the log lines.
///
/// Stops at a refusal for Object Lock ([`Removal::refused`]), and after a failed manifest
/// delete (the data stays while its manifest does); other failures are collected and the rest
/// is tried.
pub async fn delete_backup_objects(store: &Store, b: &BackupDecision, op: &str) -> Removal {
    let mut out = delete_base_objects(store, b, op).await;
    if out.refused.is_none() && out.failures.is_empty() {
        delete_chain(store, b, op, &mut out).await;
    }
    out
}

/// Deletes a deleted base's PITR chain (`<cluster>/<id>.pitr/`): manifests newest first (so
/// the chain only ever shortens from its end), then the data objects. Failures are collected;
/// what is left is an orphan that [`prune`] removes after `retention.orphan_grace`.
async fn delete_chain(store: &Store, b: &BackupDecision, op: &str, out: &mut Removal) {
    let Some(stem) = b.manifest_key.strip_suffix(MANIFEST_SUFFIX) else {
        return;
    };
    let prefix = format!("{stem}{PITR_DIR}");
    let objects = match store.list(&prefix).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(backup = %b.id, error = %e, "{op}: could not list the PITR chain; prune removes it as orphans");
            out.failures.push(format!("{prefix}: {e}"));
            return;
        }
    };
    // Only the names a chain holds: anything else under the prefix is not ours to delete.
    let (mut manifests, data): (Vec<_>, Vec<_>) = objects
        .into_iter()
        .filter(|o| {
            o.key
                .as_str()
                .strip_prefix(&prefix)
                .is_some_and(is_chain_object_name)
        })
        .partition(|o| o.key.as_str().ends_with(".delta"));
    manifests.sort_by(|a, b| b.key.as_str().cmp(a.key.as_str()));
    let n = manifests.len() + data.len();
    for o in manifests.iter().chain(&data) {
        out.attempted += 1;
        match store.delete(&o.key).await {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(backup = %b.id, key = %o.key, error = %e, "{op}: delete failed");
                out.failures.push(format!("{}: {e}", o.key));
            }
        }
    }
    if n > 0 {
        tracing::info!(backup = %b.id, objects = n, "{op}: deleted its PITR chain");
    }
}

/// The base backup's own objects: manifest, data, files (see [`delete_backup_objects`]).
async fn delete_base_objects(store: &Store, b: &BackupDecision, op: &str) -> Removal {
    let mut out = Removal::default();
    for key in [&b.manifest_key, &b.data_key]
        .into_iter()
        .chain(b.files_key.as_ref())
    {
        out.attempted += 1;
        let r = match ObjectKey::new(key.as_str()) {
            Ok(k) => store.delete(&k).await,
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => tracing::info!(backup = %b.id, key = %key, "{op}: deleted"),
            Err(e) if e.is_locked() || b.retain_until.is_some() => {
                // Object Lock: the store keeps it; the caller reports it.
                tracing::info!(backup = %b.id, key = %key, error = %e,
                    "{op}: the store refused the delete of a backup with Object Lock");
                out.refused = Some((key.clone(), e));
                break;
            }
            Err(e) => {
                tracing::warn!(backup = %b.id, key = %key, error = %e, "{op}: delete failed");
                out.failures.push(format!("{key}: {e}"));
                if key == &b.manifest_key {
                    // Keep the data while its manifest still exists.
                    break;
                }
            }
        }
    }
    out
}

/// Errors of [`delete`]. All but [`DeleteError::Store`], [`DeleteError::Refused`] and
/// [`DeleteError::Failed`] are found before anything is deleted: then nothing was.
#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    /// Listing the store or reading its manifests failed; nothing was deleted.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An argument is not of the form `ID` or `CLUSTER_ID/ID` with valid key segments.
    #[error("delete: {arg:?} is not a backup id ({reason}); give ids as `etcd-lifeboat list` prints them, or CLUSTER_ID/ID; nothing was deleted")]
    InvalidId {
        /// The argument.
        arg: String,
        /// Which rule it breaks.
        reason: String,
    },
    /// Ids that name no backup in the store.
    #[error("delete: no backup {} in {store}; nothing was deleted (ids must be exact: run `etcd-lifeboat list` to see them)", ids.join(", "))]
    Unknown {
        /// The arguments that matched nothing.
        ids: Vec<String>,
        /// [`Store::describe`] of the store.
        store: String,
    },
    /// An id exists in several clusters of the store.
    #[error("delete: backup {id} exists in clusters {}; write CLUSTER_ID/{id}; nothing was deleted", clusters.join(", "))]
    Ambiguous {
        /// The id.
        id: String,
        /// Cluster ids (hex) holding a backup with that id.
        clusters: Vec<String>,
    },
    /// The id's manifest is broken (see [`BrokenManifest`]): not trusted, so not acted on.
    #[error("delete: the manifest {key} is broken ({reason}); it is not trusted and not deleted by this tool: inspect and remove it and its objects by hand; nothing was deleted")]
    Broken {
        /// The manifest's key.
        key: String,
        /// Why it is not trusted.
        reason: String,
    },
    /// The backup is the newest of its cluster and `force` was not given.
    #[error("delete: {id} is the newest backup of cluster {cluster_id}; pass --force to delete it anyway; nothing was deleted")]
    Newest {
        /// The backup id.
        id: String,
        /// Its cluster id (hex).
        cluster_id: String,
    },
    /// The backup is under S3 Object Lock according to its manifest (checked before deleting
    /// anything; `force` does not override it).
    #[error("delete: backup {id} was not deleted, nor any other: {error}")]
    Locked {
        /// The backup id.
        id: String,
        /// [`StoreError::Locked`] naming the data object and its retain-until date.
        error: StoreError,
    },
    /// The store refused a delete of the backup for Object Lock (retention the manifest did
    /// not record, e.g. a bucket default). Its objects before the refused one are deleted
    /// (the manifest first, so it is no longer listed; the rest are orphans for `prune` once
    /// deletable); the other backups were still tried.
    #[error("delete: the store refused to delete {key} of backup {id}: {error}")]
    Refused {
        /// The backup id.
        id: String,
        /// The object key refused.
        key: String,
        /// The store's error (usually [`StoreError::Locked`]).
        error: StoreError,
    },
    /// Some deletions failed; the other backups were deleted.
    #[error("delete: {failed} of {attempted} object deletions failed (first: {first}); the backups listed before it were deleted, run delete again")]
    Failed {
        /// Object deletions attempted.
        attempted: usize,
        /// Those that failed.
        failed: usize,
        /// The first failure, `"key: error"`.
        first: String,
    },
}

/// What [`delete`] deleted, or would delete with `dry_run`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeletePlan {
    /// True when nothing was deleted (`--dry-run`).
    pub dry_run: bool,
    /// The backups, in argument order (duplicates removed), with their derived keys.
    pub backups: Vec<BackupDecision>,
}

impl DeletePlan {
    /// One line per backup (`deleted ID: KEY, KEY` or `would delete ...`) and a summary.
    pub fn to_table(&self) -> String {
        let verb = if self.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        let mut out = String::new();
        for b in &self.backups {
            let keys: Vec<&str> = [&b.manifest_key, &b.data_key]
                .into_iter()
                .chain(b.files_key.as_ref())
                .map(|k| k.as_str())
                .collect();
            out.push_str(&format!("{verb} {}: {}\n", b.id, keys.join(", ")));
        }
        out.push_str(&format!(
            "{} backup{} {}\n",
            self.backups.len(),
            if self.backups.len() == 1 { "" } else { "s" },
            if self.dry_run {
                "would be deleted (dry run: nothing was deleted)"
            } else {
                "deleted"
            }
        ));
        out
    }
}

/// Splits a `delete` argument into `(cluster id, backup id)`: `ID` or `CLUSTER_ID/ID`, each a
/// valid single key segment (no `/`, not starting with `.`, no NUL or `\`).
fn parse_delete_arg(arg: &str) -> Result<(Option<&str>, &str), DeleteError> {
    let bad = |reason: String| DeleteError::InvalidId {
        arg: arg.to_string(),
        reason,
    };
    let (cluster, id) = match arg.split_once('/') {
        Some((c, i)) => (Some(c), i),
        None => (None, arg),
    };
    for part in cluster.into_iter().chain([id]) {
        if part.contains('/') {
            return Err(bad("more than one '/'".into()));
        }
        ObjectKey::new(part).map_err(|e| match e {
            StoreError::InvalidKey { reason, .. } => bad(reason.to_string()),
            other => bad(other.to_string()),
        })?;
        if part.ends_with(MANIFEST_SUFFIX) {
            return Err(bad("an object key, not an id: drop the .json".into()));
        }
    }
    Ok((cluster, id))
}

/// `etcd-lifeboat delete`: deletes the backups named by `args` (exact ids, or
/// `CLUSTER_ID/ID`), each with [`delete_backup_objects`] (manifest, data object, files
/// object; keys derived from cluster id + backup id), in argument order.
///
/// Checked first, for all arguments, and nothing is deleted when any check fails: every
/// argument is a valid id ([`DeleteError::InvalidId`]) naming exactly one intact backup
/// ([`DeleteError::Unknown`] lists all that name none, [`DeleteError::Ambiguous`],
/// [`DeleteError::Broken`]); none is the newest backup of its cluster in the one order of
/// truth unless `force` ([`DeleteError::Newest`]); none is under Object Lock according to its
/// manifest ([`DeleteError::Locked`]). With `dry_run` the plan is returned after the checks
/// and nothing is deleted.
///
/// Errors: the above; [`DeleteError::Store`] when the store cannot be read;
/// [`DeleteError::Refused`] when the store refuses a delete for Object Lock, and
/// [`DeleteError::Failed`] when deletions failed (the remaining backups are still tried).
pub async fn delete(
    cfg: &Config,
    store: &Store,
    args: &[String],
    force: bool,
    dry_run: bool,
) -> Result<DeletePlan, DeleteError> {
    let parsed = args
        .iter()
        .map(|a| parse_delete_arg(a))
        .collect::<Result<Vec<_>, _>>()?;
    let now = Utc::now();
    let cat = crate::store::manifest::catalog_at(store, now, cfg.store.future_tolerance).await?;
    // Every backup with only the always-kept newest per cluster marked.
    let newest_only = RetentionConfig {
        keep_last: 0,
        keep_hourly: 0,
        keep_daily: 0,
        keep_weekly: 0,
        keep_monthly: 0,
        orphan_grace: Duration::ZERO,
    };
    let all = plan(&cat.backups, &newest_only, now).backups;
    let mut chosen: Vec<BackupDecision> = Vec::new();
    let mut unknown: Vec<String> = Vec::new();
    for (arg, (cluster, id)) in args.iter().zip(parsed) {
        let hits: Vec<&BackupDecision> = all
            .iter()
            .filter(|b| b.id == id && cluster.is_none_or(|c| b.cluster_id == c))
            .collect();
        match hits.as_slice() {
            [b] => {
                if !chosen.iter().any(|c| c.manifest_key == b.manifest_key) {
                    chosen.push((*b).clone());
                }
            }
            [] => {
                let name = format!("{id}{MANIFEST_SUFFIX}");
                if let Some(broken) = cat.broken.iter().find(|m| {
                    m.key.file_name() == name
                        && cluster.is_none_or(|c| m.key.as_str() == format!("{c}/{name}"))
                }) {
                    return Err(DeleteError::Broken {
                        key: broken.key.to_string(),
                        reason: broken.reason.clone(),
                    });
                }
                unknown.push(arg.clone());
            }
            many => {
                return Err(DeleteError::Ambiguous {
                    id: id.to_string(),
                    clusters: many.iter().map(|b| b.cluster_id.clone()).collect(),
                })
            }
        }
    }
    if !unknown.is_empty() {
        return Err(DeleteError::Unknown {
            ids: unknown,
            store: store.describe(),
        });
    }
    for b in &chosen {
        if !force && b.reasons.contains(&KeepReason::Newest) {
            return Err(DeleteError::Newest {
                id: b.id.clone(),
                cluster_id: b.cluster_id.clone(),
            });
        }
        if let Some(until) = b.retain_until.filter(|t| *t > now) {
            return Err(DeleteError::Locked {
                id: b.id.clone(),
                error: StoreError::Locked {
                    key: b.data_key.clone(),
                    retain_until: Some(until),
                },
            });
        }
    }
    let plan = DeletePlan {
        dry_run,
        backups: chosen,
    };
    if dry_run {
        return Ok(plan);
    }
    let (mut attempted, mut failures, mut refused) = (0usize, Vec::new(), None);
    for b in &plan.backups {
        let r = delete_backup_objects(store, b, "delete").await;
        attempted += r.attempted;
        failures.extend(r.failures);
        if let (None, Some((key, error))) = (&refused, r.refused) {
            refused = Some(DeleteError::Refused {
                id: b.id.clone(),
                key,
                error,
            });
        }
    }
    if let Some(e) = refused {
        return Err(e);
    }
    if let Some(first) = failures.first() {
        return Err(DeleteError::Failed {
            attempted,
            failed: failures.len(),
            first: first.clone(),
        });
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn m(time: &str) -> Manifest {
        m_in("aaaaaaaaaaaaaaaa", time)
    }

    fn m_in(cluster: &str, time: &str) -> Manifest {
        let at = t(time);
        let id = crate::store::manifest::backup_id(at, at.timestamp());
        let json = serde_json::json!({
            "id": id,
            "cluster_id": cluster,
            "member_id": "1",
            "member_name": "m",
            "endpoint": "http://127.0.0.1:2379",
            "etcd_version": "3.5.1",
            "started_at": at,
            "finished_at": at,
            "revision": at.timestamp(),
            "hash": 0,
            "total_key": 0,
            "total_size": 0,
            "raw_sha256": "",
            "stored_bytes": 0,
            "stored_sha256": "",
            "compression": "zstd",
            "compression_level": 3,
            "tool_version": "test",
            "tag": null,
            "data_key": crate::store::manifest::data_key(cluster, &id).as_str(),
        });
        serde_json::from_value(json).unwrap()
    }

    fn policy(last: u32, hourly: u32, daily: u32, weekly: u32, monthly: u32) -> RetentionConfig {
        RetentionConfig {
            keep_last: last,
            keep_hourly: hourly,
            keep_daily: daily,
            keep_weekly: weekly,
            keep_monthly: monthly,
            orphan_grace: Duration::from_secs(3600),
        }
    }

    /// Times (as given) of the kept backups, oldest first.
    fn kept(times: &[&str], p: &RetentionConfig, tz: Tz) -> Vec<String> {
        let ms: Vec<Manifest> = times.iter().map(|s| m(s)).collect();
        let plan = plan_in(&ms, p, tz, t("2030-01-01T00:00:00Z"));
        let mut out: Vec<String> = plan
            .kept()
            .map(|b| b.time.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .collect();
        out.sort();
        out
    }

    fn sorted(v: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    }

    struct Case {
        name: &'static str,
        times: &'static [&'static str],
        policy: RetentionConfig,
        tz: Tz,
        keep: &'static [&'static str],
    }

    #[test]
    fn timelines() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let cases = [
            Case {
                name: "empty store",
                times: &[],
                policy: policy(3, 3, 3, 3, 3),
                tz: Tz::UTC,
                keep: &[],
            },
            Case {
                name: "all-zero policy keeps only the newest",
                times: &[
                    "2026-11-01T10:00:00Z",
                    "2026-11-02T10:00:00Z",
                    "2026-11-03T10:00:00Z",
                ],
                policy: policy(0, 0, 0, 0, 0),
                tz: Tz::UTC,
                keep: &["2026-11-03T10:00:00Z"],
            },
            Case {
                name: "keep_last counts backups, not periods",
                times: &[
                    "2026-11-01T10:00:00Z",
                    "2026-11-01T10:10:00Z",
                    "2026-11-01T10:20:00Z",
                    "2026-11-01T10:30:00Z",
                ],
                policy: policy(2, 0, 0, 0, 0),
                tz: Tz::UTC,
                keep: &["2026-11-01T10:20:00Z", "2026-11-01T10:30:00Z"],
            },
            Case {
                name: "hourly keeps the newest of each hour, skipping empty hours",
                times: &[
                    "2026-11-01T07:50:00Z",
                    "2026-11-01T08:10:00Z",
                    "2026-11-01T08:40:00Z",
                    "2026-11-01T11:05:00Z",
                    "2026-11-01T11:35:00Z",
                ],
                policy: policy(0, 2, 0, 0, 0),
                tz: Tz::UTC,
                keep: &["2026-11-01T08:40:00Z", "2026-11-01T11:35:00Z"],
            },
            Case {
                name: "daily over a month end, 30-min schedule",
                times: &[
                    "2026-10-30T23:30:00Z",
                    "2026-10-31T00:00:00Z",
                    "2026-10-31T23:30:00Z",
                    "2026-11-01T00:00:00Z",
                    "2026-11-01T00:30:00Z",
                ],
                policy: policy(0, 0, 3, 0, 0),
                tz: Tz::UTC,
                keep: &[
                    "2026-10-30T23:30:00Z",
                    "2026-10-31T23:30:00Z",
                    "2026-11-01T00:30:00Z",
                ],
            },
            Case {
                name: "monthly keeps the last backup of each month (leap February)",
                times: &[
                    "2028-01-31T23:59:59Z",
                    "2028-02-01T00:00:00Z",
                    "2028-02-28T23:00:00Z",
                    "2028-02-29T23:00:00Z",
                    "2028-03-01T00:00:00Z",
                    "2028-03-31T12:00:00Z",
                ],
                policy: policy(0, 0, 0, 0, 6),
                tz: Tz::UTC,
                keep: &[
                    "2028-01-31T23:59:59Z",
                    "2028-02-29T23:00:00Z",
                    "2028-03-31T12:00:00Z",
                ],
            },
            Case {
                name: "monthly count is of months with backups, not calendar months",
                times: &[
                    "2026-01-15T00:00:00Z",
                    "2026-06-15T00:00:00Z",
                    "2026-11-15T00:00:00Z",
                ],
                policy: policy(0, 0, 0, 0, 2),
                tz: Tz::UTC,
                keep: &["2026-06-15T00:00:00Z", "2026-11-15T00:00:00Z"],
            },
            Case {
                // 2026-12-28 is Monday of 2026-W53; 2027-01-01 (Friday) is still 2026-W53;
                // 2027-01-04 starts 2027-W01.
                name: "ISO weeks across the year end (2026 has 53 weeks)",
                times: &[
                    "2026-12-27T12:00:00Z",
                    "2026-12-28T12:00:00Z",
                    "2026-12-31T12:00:00Z",
                    "2027-01-01T12:00:00Z",
                    "2027-01-03T12:00:00Z",
                    "2027-01-04T12:00:00Z",
                ],
                policy: policy(0, 0, 0, 3, 0),
                tz: Tz::UTC,
                keep: &[
                    "2026-12-27T12:00:00Z",
                    "2027-01-03T12:00:00Z",
                    "2027-01-04T12:00:00Z",
                ],
            },
            Case {
                // 2024-12-30 (Monday) is in ISO week 2025-W01 together with 2025-01-05.
                name: "ISO week 1 starting in December",
                times: &[
                    "2024-12-29T12:00:00Z",
                    "2024-12-30T12:00:00Z",
                    "2025-01-05T12:00:00Z",
                ],
                policy: policy(0, 0, 0, 5, 0),
                tz: Tz::UTC,
                keep: &["2024-12-29T12:00:00Z", "2025-01-05T12:00:00Z"],
            },
            Case {
                // Europe/Berlin falls back on 2026-10-25 at 03:00 CEST -> 02:00 CET: local 02:30
                // happens twice (00:30Z as +02:00, 01:30Z as +01:00): two distinct hours.
                name: "DST fall-back: the repeated local hour is two hours",
                times: &[
                    "2026-10-25T00:10:00Z",
                    "2026-10-25T00:30:00Z",
                    "2026-10-25T01:10:00Z",
                    "2026-10-25T01:30:00Z",
                ],
                policy: policy(0, 10, 0, 0, 0),
                tz: berlin,
                keep: &["2026-10-25T00:30:00Z", "2026-10-25T01:30:00Z"],
            },
            Case {
                // Spring forward 2026-03-29 02:00 CET -> 03:00 CEST: 00:59Z is 01:59 CET and
                // 01:00Z is 03:00 CEST, consecutive hours; the local day still has 23 hours.
                name: "DST spring-forward hours and day",
                times: &[
                    "2026-03-28T23:30:00Z",
                    "2026-03-29T00:59:00Z",
                    "2026-03-29T01:00:00Z",
                    "2026-03-29T21:59:00Z",
                    "2026-03-29T22:00:00Z",
                ],
                policy: policy(0, 0, 3, 0, 0),
                tz: berlin,
                // Local days: 03-29 00:30 CET .. 03-29 23:59 CEST | 03-30 00:00 CEST.
                keep: &["2026-03-29T21:59:00Z", "2026-03-29T22:00:00Z"],
            },
            Case {
                // The same instants bucketed in UTC: 23:30Z is on the 28th.
                name: "days are UTC days by default",
                times: &[
                    "2026-03-28T23:30:00Z",
                    "2026-03-29T00:59:00Z",
                    "2026-03-29T21:59:00Z",
                    "2026-03-29T22:00:00Z",
                ],
                policy: policy(0, 0, 3, 0, 0),
                tz: Tz::UTC,
                keep: &["2026-03-28T23:30:00Z", "2026-03-29T22:00:00Z"],
            },
            Case {
                // Berlin month boundary: 2026-10-31T23:30Z is 2026-11-01 00:30 CET.
                name: "months in the configured zone",
                times: &[
                    "2026-10-31T22:30:00Z",
                    "2026-10-31T23:30:00Z",
                    "2026-11-30T12:00:00Z",
                ],
                policy: policy(0, 0, 0, 0, 3),
                tz: berlin,
                keep: &["2026-10-31T22:30:00Z", "2026-11-30T12:00:00Z"],
            },
            Case {
                name: "union of rules",
                times: &[
                    "2026-11-20T10:00:00Z",
                    "2026-11-21T10:00:00Z",
                    "2026-11-22T09:00:00Z",
                    "2026-11-22T10:00:00Z",
                    "2026-11-22T10:30:00Z",
                    "2026-11-22T11:00:00Z",
                ],
                policy: policy(1, 2, 2, 0, 0),
                tz: Tz::UTC,
                // last: 11:00; hourly: 11:00, 10:30; daily: 11:00 (22nd), 10:00 (21st).
                keep: &[
                    "2026-11-21T10:00:00Z",
                    "2026-11-22T10:30:00Z",
                    "2026-11-22T11:00:00Z",
                ],
            },
        ];
        for c in &cases {
            assert_eq!(
                kept(c.times, &c.policy, c.tz),
                sorted(c.keep),
                "case: {}",
                c.name
            );
        }
    }

    #[test]
    fn delete_arguments_are_ids_or_cluster_slash_id() {
        let id = "20261122T230000Z-r0000000000002487";
        assert_eq!(parse_delete_arg(id).unwrap(), (None, id));
        let q = format!("aaaaaaaaaaaaaaaa/{id}");
        assert_eq!(
            parse_delete_arg(&q).unwrap(),
            (Some("aaaaaaaaaaaaaaaa"), id)
        );
        for bad in [
            "", "/x", "x/", "a/b/c", "../x", ".x", "a\\b", "x.json", "c/x.json",
        ] {
            match parse_delete_arg(bad) {
                Err(DeleteError::InvalidId { arg, .. }) => assert_eq!(arg, bad),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn reasons_are_recorded_per_backup() {
        let ms = vec![
            m("2026-11-22T10:00:00Z"),
            m("2026-11-22T11:00:00Z"),
            m("2026-11-23T11:00:00Z"),
        ];
        let p = plan(&ms, &policy(1, 0, 2, 0, 1), t("2026-11-24T00:00:00Z"));
        let r: Vec<(String, Vec<String>)> = p
            .backups
            .iter()
            .map(|b| {
                (
                    b.time.to_rfc3339(),
                    b.reasons.iter().map(|r| r.to_string()).collect(),
                )
            })
            .collect();
        assert_eq!(
            r,
            vec![
                (
                    "2026-11-23T11:00:00+00:00".to_string(),
                    vec![
                        "newest".into(),
                        "last".into(),
                        "daily 2026-11-23".into(),
                        "monthly 2026-11".into()
                    ]
                ),
                (
                    "2026-11-22T11:00:00+00:00".to_string(),
                    vec!["daily 2026-11-22".to_string()]
                ),
                ("2026-11-22T10:00:00+00:00".to_string(), vec![]),
            ]
        );
        assert_eq!(p.removed().count(), 1);
        let hour = plan(&ms, &policy(0, 1, 0, 0, 0), t("2026-11-24T00:00:00Z"));
        assert_eq!(
            hour.backups[0].reasons[1].to_string(),
            "hourly 2026-11-23T11+00:00"
        );
        let table = p.to_table();
        assert!(table.contains("remove"), "{table}");
        assert!(table.contains("3 backups: keep 2, remove 1"), "{table}");
    }

    #[test]
    fn clusters_are_planned_separately() {
        let ms = vec![
            m_in("aaaaaaaaaaaaaaaa", "2026-11-22T10:00:00Z"),
            m_in("aaaaaaaaaaaaaaaa", "2026-11-22T11:00:00Z"),
            m_in("bbbbbbbbbbbbbbbb", "2026-11-01T10:00:00Z"),
            m_in("bbbbbbbbbbbbbbbb", "2026-11-01T09:00:00Z"),
        ];
        let p = plan(&ms, &policy(1, 0, 0, 0, 0), t("2026-11-24T00:00:00Z"));
        let kept: Vec<(&str, String)> = p
            .kept()
            .map(|b| (b.cluster_id.as_str(), b.time.to_rfc3339()))
            .collect();
        assert_eq!(
            kept,
            vec![
                ("aaaaaaaaaaaaaaaa", "2026-11-22T11:00:00+00:00".to_string()),
                ("bbbbbbbbbbbbbbbb", "2026-11-01T10:00:00+00:00".to_string()),
            ]
        );
        assert_eq!(p.removed().count(), 2);
    }

    #[test]
    fn input_order_does_not_matter() {
        let mut ms: Vec<Manifest> = (0..50)
            .map(|i| m(&format!("2026-11-{:02}T{:02}:17:00Z", 1 + i % 28, i % 24)))
            .collect();
        let pol = policy(3, 5, 4, 2, 2);
        let a = plan(&ms, &pol, t("2026-12-01T00:00:00Z"));
        ms.reverse();
        let b = plan(&ms, &pol, t("2026-12-01T00:00:00Z"));
        assert_eq!(a, b);
    }

    /// A backup whose clock said `time` and whose snapshot has `revision`.
    fn m_rev(time: &str, revision: i64) -> Manifest {
        let mut x = m(time);
        x.revision = revision;
        x.id = crate::store::manifest::backup_id(x.started_at, revision);
        x.data_key = crate::store::manifest::data_key(&x.cluster_id, &x.id);
        x
    }

    #[test]
    fn skewed_clocks_follow_the_revision() {
        // Hourly backups, revisions increasing; the last writer's clock was two days behind.
        let ms = vec![
            m_rev("2026-11-23T08:00:00Z", 100),
            m_rev("2026-11-23T09:00:00Z", 200),
            m_rev("2026-11-23T10:00:00Z", 300),
            m_rev("2026-11-23T11:00:00Z", 400),
            m_rev("2026-11-21T12:00:00Z", 500),
        ];
        let p = plan(&ms, &policy(3, 0, 0, 0, 0), t("2026-11-23T12:30:00Z"));
        let kept: Vec<i64> = p.kept().map(|b| b.revision).collect();
        assert_eq!(
            kept,
            [500, 400, 300],
            "keep_last 3 keeps the highest revisions"
        );
        assert_eq!(p.backups[0].reasons[0], KeepReason::Newest);
        assert_eq!(p.backups[0].revision, 500);

        // A writer two days ahead with an older snapshot: not the newest, and keep_last 1
        // keeps the highest revision instead.
        let ms = vec![
            m_rev("2026-11-23T10:00:00Z", 300),
            m_rev("2026-11-23T11:00:00Z", 400),
            m_rev("2026-11-25T11:00:00Z", 350),
        ];
        let p = plan(&ms, &policy(1, 0, 0, 0, 0), t("2026-11-23T12:00:00Z"));
        let kept: Vec<i64> = p.kept().map(|b| b.revision).collect();
        assert_eq!(kept, [400]);
        let removed: Vec<i64> = p.removed().map(|b| b.revision).collect();
        assert_eq!(removed, [350, 300]);

        // Daily buckets still use time; within a day, the highest revision is kept.
        let ms = vec![
            m_rev("2026-11-22T10:00:00Z", 100),
            m_rev("2026-11-23T09:00:00Z", 400),
            m_rev("2026-11-23T11:00:00Z", 300),
        ];
        let p = plan(&ms, &policy(0, 0, 2, 0, 0), t("2026-11-24T00:00:00Z"));
        let kept: Vec<(i64, Vec<String>)> = p
            .kept()
            .map(|b| {
                (
                    b.revision,
                    b.reasons.iter().map(|r| r.to_string()).collect(),
                )
            })
            .collect();
        assert_eq!(
            kept,
            [
                (
                    400,
                    vec!["newest".to_string(), "daily 2026-11-23".to_string()]
                ),
                (100, vec!["daily 2026-11-22".to_string()])
            ]
        );
    }

    #[test]
    fn keys_are_derived_not_read_from_the_manifest() {
        let mut a = m("2026-11-22T10:00:00Z");
        let b = m("2026-11-23T10:00:00Z");
        // A manifest naming the newer backup's data as its own.
        a.data_key = b.data_key.clone();
        let p = plan(
            &[a.clone(), b.clone()],
            &policy(0, 0, 0, 0, 0),
            t("2026-11-24T00:00:00Z"),
        );
        let r: Vec<&BackupDecision> = p.removed().collect();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].data_key, format!("aaaaaaaaaaaaaaaa/{}.db.zst", a.id));
        assert_eq!(r[0].manifest_key, format!("aaaaaaaaaaaaaaaa/{}.json", a.id));
        // Encrypted backups: the derived key ends in .age.
        let mut e = m("2026-11-21T10:00:00Z");
        e.encryption = Some(crate::store::manifest::EncryptionInfo {
            format: crate::store::manifest::AGE_FORMAT.into(),
            recipients: vec![],
        });
        let p = plan(
            &[e.clone(), b],
            &policy(0, 0, 0, 0, 0),
            t("2026-11-24T00:00:00Z"),
        );
        assert_eq!(
            p.removed().next().unwrap().data_key,
            format!("aaaaaaaaaaaaaaaa/{}.db.zst.age", e.id)
        );
    }

    #[test]
    fn object_lock_defers_deletion() {
        let now = t("2026-11-24T00:00:00Z");
        let lock = |until: &str| {
            Some(crate::store::manifest::ObjectLockInfo {
                mode: "GOVERNANCE".into(),
                retain_until: t(until),
            })
        };
        let mut old = m("2026-11-20T10:00:00Z");
        old.object_lock = lock("2026-11-23T00:00:00Z"); // expired: deletable
        let mut mid = m("2026-11-21T10:00:00Z");
        mid.object_lock = lock("2026-12-21T10:00:00Z"); // still locked
        let mut new = m("2026-11-23T10:00:00Z");
        new.object_lock = lock("2026-12-23T10:00:00Z");
        let p = plan(
            &[old.clone(), mid.clone(), new.clone()],
            &policy(1, 0, 0, 0, 0),
            now,
        );
        assert_eq!(
            p.kept().map(|b| b.id.clone()).collect::<Vec<_>>(),
            [new.id.clone()]
        );
        assert_eq!(
            p.removed().map(|b| b.id.clone()).collect::<Vec<_>>(),
            [old.id.clone()]
        );
        assert_eq!(
            p.locked().map(|b| b.id.clone()).collect::<Vec<_>>(),
            [mid.id.clone()]
        );
        let table = p.to_table();
        assert!(
            table.contains("Object Lock until 2026-12-21T10:00:00Z: deletable then"),
            "{table}"
        );
        assert!(
            table.contains("prune: 1 backups kept under Object Lock; the first becomes deletable at 2026-12-21T10:00:00Z"),
            "{table}"
        );
    }

    #[test]
    fn data_beside_any_manifest_is_never_an_orphan() {
        let now = t("2026-11-23T12:00:00Z");
        let obj = |k: &str| ObjectMeta {
            key: crate::store::ObjectKey::new(k).unwrap(),
            size: 7,
            last_modified: t("2020-01-01T00:00:00Z"),
        };
        let objects = vec![
            // Unparseable manifest (not in the catalog) with its data: both left alone.
            obj("aaaaaaaaaaaaaaaa/20261123T090000Z-r0000000000000001.json"),
            obj("aaaaaaaaaaaaaaaa/20261123T090000Z-r0000000000000001.db.zst"),
            obj("aaaaaaaaaaaaaaaa/20261123T090000Z-r0000000000000002.json"),
            obj("aaaaaaaaaaaaaaaa/20261123T090000Z-r0000000000000002.db.zst.age"),
            // Encrypted and plaintext data without a manifest: orphans.
            obj("aaaaaaaaaaaaaaaa/20261123T090000Z-r0000000000000003.db.zst.age"),
            obj("aaaaaaaaaaaaaaaa/20261123T090000Z-r0000000000000004.db.zst"),
        ];
        let o = orphans(&objects, &[], Duration::from_secs(3600), now);
        let got: Vec<&str> = o.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(
            got,
            [
                "aaaaaaaaaaaaaaaa/20261123T090000Z-r0000000000000003.db.zst.age",
                "aaaaaaaaaaaaaaaa/20261123T090000Z-r0000000000000004.db.zst"
            ]
        );
        let p = PrunePlan {
            broken: vec![BrokenManifest {
                key: crate::store::ObjectKey::new(
                    "aaaaaaaaaaaaaaaa/20261123T090000Z-r0000000000000001.json",
                )
                .unwrap(),
                reason: "not a manifest: EOF".into(),
            }],
            ..plan(&[], &policy(0, 0, 0, 0, 0), now)
        };
        assert_eq!(
            p.broken_summary().unwrap(),
            "prune: left 1 broken manifests: aaaaaaaaaaaaaaaa/20261123T090000Z-r0000000000000001.json (not a manifest: EOF)"
        );
        assert!(p.to_table().contains("prune: left 1 broken manifests"));
    }

    #[test]
    fn pitr_chain_objects_are_orphans_without_their_base_or_manifest() {
        let now = t("2026-11-23T12:00:00Z");
        let obj = |k: &str| ObjectMeta {
            key: crate::store::ObjectKey::new(k).unwrap(),
            size: 7,
            last_modified: t("2020-01-01T00:00:00Z"),
        };
        let c = "aaaaaaaaaaaaaaaa";
        let objects = vec![
            // A base with its chain: a delta (manifest + data), an empty delta's manifest
            // (same first revision, next seq), a close, and data whose manifest never came.
            obj(&format!("{c}/20261123T090000Z-r0000000000000001.json")),
            obj(&format!("{c}/20261123T090000Z-r0000000000000001.db.zst")),
            obj(&format!("{c}/20261123T090000Z-r0000000000000001.pitr/0000000000000002-0000000000000000.delta")),
            obj(&format!("{c}/20261123T090000Z-r0000000000000001.pitr/0000000000000002-0000000000000009-00000000000000ab.delta.zst")),
            obj(&format!("{c}/20261123T090000Z-r0000000000000001.pitr/0000000000000010-0000000000000001.delta")),
            obj(&format!("{c}/20261123T090000Z-r0000000000000001.pitr/0000000000000010-0000000000000002.delta")),
            obj(&format!("{c}/20261123T090000Z-r0000000000000001.pitr/0000000000000012-0000000000000020-00000000000000cd.delta.zst.age")),
            // A name a chain never holds, in a live chain and in a dead one: not ours.
            obj(&format!("{c}/20261123T090000Z-r0000000000000001.pitr/README")),
            obj(&format!("{c}/20261123T080000Z-r0000000000000000.pitr/victim/data.db")),
            // A chain whose base manifest is gone: every object is an orphan.
            obj(&format!("{c}/20261123T080000Z-r0000000000000000.pitr/0000000000000001-0000000000000000.delta")),
            obj(&format!("{c}/20261123T080000Z-r0000000000000000.pitr/0000000000000001-0000000000000001-00000000000000ef.delta.zst")),
        ];
        let o = orphans(&objects, &[], Duration::from_secs(3600), now);
        let got: Vec<&str> = o.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(
            got,
            [
                "aaaaaaaaaaaaaaaa/20261123T090000Z-r0000000000000001.pitr/0000000000000012-0000000000000020-00000000000000cd.delta.zst.age",
                "aaaaaaaaaaaaaaaa/20261123T080000Z-r0000000000000000.pitr/0000000000000001-0000000000000000.delta",
                "aaaaaaaaaaaaaaaa/20261123T080000Z-r0000000000000000.pitr/0000000000000001-0000000000000001-00000000000000ef.delta.zst",
            ]
        );
        assert!(o.iter().all(|o| o.remove));
    }

    /// A backup dated after the prune's clock (a forged or skewed manifest) takes no daily
    /// slot: the older real days keep theirs, and it goes unless keep_last keeps it.
    #[test]
    fn a_future_dated_backup_takes_no_period_slot() {
        let now = t("2026-11-23T12:00:00Z");
        let mut future = m("2027-01-01T00:00:00Z");
        // Its revision is lower than the newest real backup's (a bit flip, a replay).
        future.revision = 1;
        let backups = vec![
            m("2026-11-21T10:00:00Z"),
            m("2026-11-22T10:00:00Z"),
            m("2026-11-23T10:00:00Z"),
            future.clone(),
        ];
        let plan = plan_in(&backups, &policy(1, 0, 2, 0, 0), Tz::UTC, now);
        let reasons = |id: &str| {
            plan.backups
                .iter()
                .find(|b| b.id == id)
                .unwrap()
                .reasons
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
        };
        assert!(reasons(&future.id).is_empty());
        assert_eq!(reasons(&backups[1].id), ["daily 2026-11-22"]);
        assert_eq!(
            reasons(&backups[2].id),
            ["newest", "last", "daily 2026-11-23"]
        );
        assert!(reasons(&backups[0].id).is_empty());
    }

    #[test]
    fn orphans_respect_grace_and_references() {
        let now = t("2026-11-23T12:00:00Z");
        let b = m("2026-11-23T10:00:00Z");
        let obj = |k: &str, modified: &str| ObjectMeta {
            key: crate::store::ObjectKey::new(k).unwrap(),
            size: 7,
            last_modified: t(modified),
        };
        let objects = vec![
            obj(b.data_key.as_str(), "2026-11-23T10:00:00Z"),
            obj(
                manifest_key(&b.cluster_id, &b.id).as_str(),
                "2026-11-23T10:00:00Z",
            ),
            obj(
                "aaaaaaaaaaaaaaaa/20261123T090000Z-r0000000000000001.db.zst",
                "2026-11-23T09:00:00Z",
            ),
            obj(
                "aaaaaaaaaaaaaaaa/20261123T113000Z-r0000000000000002.db.zst",
                "2026-11-23T11:30:00Z",
            ),
            obj("aaaaaaaaaaaaaaaa/notes.txt", "2020-01-01T00:00:00Z"),
            obj("aaaaaaaaaaaaaaaa/broken.json", "2020-01-01T00:00:00Z"),
            // Not laid out as this tool writes backups: someone else's files, never orphans.
            obj("unrelated/deep/inventory.db", "2020-01-01T00:00:00Z"),
            obj("unrelated/photo.files.tar.zst", "2020-01-01T00:00:00Z"),
            obj("aaaaaaaaaaaaaaaa/backup-1.db.zst", "2020-01-01T00:00:00Z"),
            obj(
                "aaaaaaaaaaaaaaaa/x/20261123T090000Z-r0000000000000001.db",
                "2020-01-01T00:00:00Z",
            ),
        ];
        let o = orphans(&objects, &[b], Duration::from_secs(3600), now);
        let got: Vec<(&str, bool)> = o.iter().map(|o| (o.key.as_str(), o.remove)).collect();
        assert_eq!(
            got,
            vec![
                (
                    "aaaaaaaaaaaaaaaa/20261123T090000Z-r0000000000000001.db.zst",
                    true
                ),
                (
                    "aaaaaaaaaaaaaaaa/20261123T113000Z-r0000000000000002.db.zst",
                    false
                ),
            ]
        );
    }

    #[test]
    fn files_objects_are_pruned_with_their_backup_and_orphaned_without_it() {
        let now = t("2026-11-23T12:00:00Z");
        let with_files = |time: &str| {
            let mut b = m(time);
            b.files = Some(crate::store::manifest::FilesInfo {
                stored_bytes: 1,
                stored_sha256: String::new(),
                entries: Vec::new(),
            });
            b
        };
        let (old, new) = (
            with_files("2026-11-22T10:00:00Z"),
            with_files("2026-11-23T10:00:00Z"),
        );
        let plan = plan_in(
            &[old.clone(), new.clone()],
            &policy(1, 0, 0, 0, 0),
            Tz::UTC,
            now,
        );
        let removed: Vec<_> = plan.removed().collect();
        assert_eq!(removed.len(), 1);
        assert_eq!(
            removed[0].files_key.as_deref(),
            Some(format!("{}/{}.files.tar.zst", old.cluster_id, old.id).as_str())
        );
        // A plaintext backup without files lists none; an encrypted one's key ends in .age.
        assert_eq!(derived_files_key(&m("2026-11-23T10:00:00Z")), None);
        let mut enc = with_files("2026-11-23T10:00:00Z");
        enc.encryption = Some(crate::store::manifest::EncryptionInfo {
            format: crate::store::manifest::AGE_FORMAT.into(),
            recipients: vec!["age1x".into()],
        });
        assert!(derived_files_key(&enc)
            .unwrap()
            .ends_with(".files.tar.zst.age"));
        // Orphans: a files object of a listed backup is referenced; one of a backup without a
        // manifest is an orphan.
        let obj = |k: String| ObjectMeta {
            key: crate::store::ObjectKey::new(k).unwrap(),
            size: 7,
            last_modified: t("2026-11-22T00:00:00Z"),
        };
        let objects = vec![
            obj(format!("{}/{}.files.tar.zst", new.cluster_id, new.id)),
            obj("aaaaaaaaaaaaaaaa/20261120T000000Z-r0000000000000009.files.tar.zst.age".into()),
        ];
        let o = orphans(&objects, &[new], Duration::from_secs(3600), now);
        let got: Vec<&str> = o.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(
            got,
            ["aaaaaaaaaaaaaaaa/20261120T000000Z-r0000000000000009.files.tar.zst.age"]
        );
    }
}
