//! Retention: which backups `prune` and the daemon keep, and the deletion that follows.
//!
//! Plan, then execute (the rustic/restic habit): [`plan`] is a pure function of the catalog,
//! the policy and `now`; [`prune`] lists the store, builds the plan, and carries it out (or only
//! returns it with `dry_run`).
//!
//! # Policy (grandfather-father-son, as restic's `forget`)
//! Backups are grouped by `cluster_id` (a store prefix may hold several clusters); inside a
//! group, newest first:
//! - `keep_last: N` keeps the N newest backups;
//! - `keep_hourly` / `keep_daily` / `keep_weekly` / `keep_monthly: N` keep the newest backup of
//!   each of the last N hours / days / ISO weeks / months *that have backups* (periods without a
//!   backup do not use up the count);
//! - a backup is kept when any rule keeps it, and every rule that keeps it is recorded;
//! - the newest backup of each cluster is always kept, whatever the policy says.
//!
//! Periods are computed in UTC, or in `schedule.timezone` when set ([`plan_in`]): a daily
//! bucket is a local calendar day, weekly an ISO week (Monday start, `%G-W%V`, so 2027-01-01
//! belongs to 2026-W53), monthly a local calendar month. An hour is identified by its local
//! start *and* UTC offset, so the repeated hour of a DST fall-back is two periods.
//! The time of a backup is its `started_at` (the point in time the snapshot represents).
//!
//! # Orphans
//! Data objects (`*.db.zst`, `*.db`) that no manifest references are not backups (the
//! manifest is written last, so they are left-overs of failed or interrupted runs). They are
//! removed only when older than `retention.orphan_grace`, so that an upload in flight (data
//! written, manifest not yet) is never touched. Other objects are never deleted.
//!
//! # Order of deletion
//! A backup's manifest is deleted first, then its data object: a backup exists only while its
//! manifest exists, so a crash in between leaves an orphan (collected later), never a manifest
//! pointing at missing data.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Datelike, Offset, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::config::{Config, RetentionConfig};
use crate::store::manifest::{manifest_key, Manifest};
use crate::store::{ObjectMeta, Store};

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
    /// Object key of the manifest (`<cluster-id>/<id>.json`).
    pub manifest_key: String,
    /// Object key of the data object (`<cluster-id>/<id>.db.zst`).
    pub data_key: String,
    /// Rules that keep it; empty means it is removed.
    pub reasons: Vec<KeepReason>,
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
}

impl PrunePlan {
    /// Backups kept.
    pub fn kept(&self) -> impl Iterator<Item = &BackupDecision> {
        self.backups.iter().filter(|b| b.keep())
    }
    /// Backups to remove.
    pub fn removed(&self) -> impl Iterator<Item = &BackupDecision> {
        self.backups.iter().filter(|b| !b.keep())
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
            out.push_str(&format!(
                "{:<6} {:<36} {}\n",
                if b.keep() { "keep" } else { "remove" },
                b.id,
                if reasons.is_empty() {
                    "-".to_string()
                } else {
                    reasons.join(", ")
                }
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
        out
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
        // Newest first; ties broken by id so the result does not depend on input order.
        group.sort_by(|a, b| backup_time(b).cmp(&backup_time(a)).then(b.id.cmp(&a.id)));
        let mut buckets = [
            Bucket::new(policy.keep_hourly, Period::Hour),
            Bucket::new(policy.keep_daily, Period::Day),
            Bucket::new(policy.keep_weekly, Period::Week),
            Bucket::new(policy.keep_monthly, Period::Month),
        ];
        for (i, m) in group.iter().enumerate() {
            let t = backup_time(m);
            let mut reasons = Vec::new();
            if i == 0 {
                reasons.push(KeepReason::Newest);
            }
            if (i as u64) < u64::from(policy.keep_last) {
                reasons.push(KeepReason::Last);
            }
            for b in &mut buckets {
                if let Some(r) = b.offer(t, &tz) {
                    reasons.push(r);
                }
            }
            decisions.push(BackupDecision {
                id: m.id.clone(),
                cluster_id: m.cluster_id.clone(),
                time: t,
                manifest_key: manifest_key(&m.cluster_id, &m.id).to_string(),
                data_key: m.data_key.to_string(),
                reasons,
            });
        }
    }
    PrunePlan {
        now,
        timezone: tz.name().to_string(),
        backups: decisions,
        orphans: Vec::new(),
    }
}

/// Data objects in `objects` that no manifest in `backups` references, each marked for removal
/// when its `last_modified` is more than `grace` before `now`. Pure.
pub fn orphans(
    objects: &[ObjectMeta],
    backups: &[Manifest],
    grace: Duration,
    now: DateTime<Utc>,
) -> Vec<OrphanDecision> {
    let referenced: HashSet<String> = backups.iter().map(|m| m.data_key.to_string()).collect();
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    objects
        .iter()
        .filter(|o| is_data_object(o.key.as_str()) && !referenced.contains(o.key.as_str()))
        .map(|o| OrphanDecision {
            key: o.key.to_string(),
            size: o.size,
            last_modified: o.last_modified,
            remove: now.signed_duration_since(o.last_modified) > grace,
        })
        .collect()
}

fn is_data_object(key: &str) -> bool {
    key.ends_with(".db.zst") || key.ends_with(".db")
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

struct Bucket {
    remaining: u32,
    period: Period,
    last: Option<String>,
}

impl Bucket {
    fn new(n: u32, period: Period) -> Self {
        Bucket {
            remaining: n,
            period,
            last: None,
        }
    }

    /// Offers the next (older) backup; keeps it when it opens a new period and periods remain.
    fn offer(&mut self, t: DateTime<Utc>, tz: &Tz) -> Option<KeepReason> {
        if self.remaining == 0 {
            return None;
        }
        let key = period_key(self.period, t, tz);
        if self.last.as_deref() == Some(key.as_str()) {
            return None;
        }
        self.remaining -= 1;
        self.last = Some(key.clone());
        Some(match self.period {
            Period::Hour => KeepReason::Hourly(key),
            Period::Day => KeepReason::Daily(key),
            Period::Week => KeepReason::Weekly(key),
            Period::Month => KeepReason::Monthly(key),
        })
    }
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
    cfg.schedule
        .timezone
        .as_deref()
        .and_then(|s| s.parse::<Tz>().ok())
        .unwrap_or(Tz::UTC)
}

/// Errors of [`prune`] beyond listing the store: deletions that failed.
#[derive(Debug, thiserror::Error)]
#[error("prune: {failed} of {attempted} deletions failed (first: {first}); the rest was done, run prune again")]
pub struct PruneError {
    /// Deletions attempted.
    pub attempted: usize,
    /// Deletions that failed.
    pub failed: usize,
    /// The first failure, with the object key.
    pub first: String,
}

/// Lists the store (manifests via the catalog, objects for orphans), plans with the policy in
/// `cfg.retention` and periods in `cfg.schedule.timezone`, and, unless `dry_run`, deletes what
/// the plan removes: per backup the manifest first, then the data object; then expired orphans.
/// Each deletion is logged (`tracing::info`). Deletion failures do not stop the others; they
/// are reported together as a [`PruneError`] after all were tried.
///
/// Errors: the store cannot be listed (nothing is deleted then), or some deletions failed.
pub async fn prune(cfg: &Config, store: &Store, dry_run: bool) -> anyhow::Result<PrunePlan> {
    let backups = crate::store::manifest::catalog(store).await?;
    let objects = store.list("").await?;
    let now = Utc::now();
    let mut p = plan_in(&backups, &cfg.retention, config_tz(cfg), now);
    p.orphans = orphans(&objects, &backups, cfg.retention.orphan_grace, now);
    if dry_run {
        return Ok(p);
    }
    let mut attempted = 0usize;
    let mut failures: Vec<String> = Vec::new();
    for b in p.removed() {
        // Safety net: never remove the newest backup of a cluster (the plan always keeps it).
        debug_assert!(!b.reasons.contains(&KeepReason::Newest));
        for key in [&b.manifest_key, &b.data_key] {
            attempted += 1;
            let r = match crate::store::ObjectKey::new(key.as_str()) {
                Ok(k) => store.delete(&k).await,
                Err(e) => Err(e),
            };
            match r {
                Ok(()) => tracing::info!(backup = %b.id, key = %key, "prune: deleted"),
                Err(e) => {
                    tracing::warn!(backup = %b.id, key = %key, error = %e, "prune: delete failed");
                    failures.push(format!("{key}: {e}"));
                    if key == &b.manifest_key {
                        // Keep the data while its manifest still exists.
                        break;
                    }
                }
            }
        }
    }
    for o in p.orphans_removed() {
        attempted += 1;
        let r = match crate::store::ObjectKey::new(o.key.as_str()) {
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
    if let Some(first) = failures.first() {
        return Err(PruneError {
            attempted,
            failed: failures.len(),
            first: first.clone(),
        }
        .into());
    }
    Ok(p)
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
                "aaaaaaaaaaaaaaaa/20261123T090000Z-r1.db.zst",
                "2026-11-23T09:00:00Z",
            ),
            obj(
                "aaaaaaaaaaaaaaaa/20261123T113000Z-r2.db.zst",
                "2026-11-23T11:30:00Z",
            ),
            obj("aaaaaaaaaaaaaaaa/notes.txt", "2020-01-01T00:00:00Z"),
            obj("aaaaaaaaaaaaaaaa/broken.json", "2020-01-01T00:00:00Z"),
        ];
        let o = orphans(&objects, &[b], Duration::from_secs(3600), now);
        let got: Vec<(&str, bool)> = o.iter().map(|o| (o.key.as_str(), o.remove)).collect();
        assert_eq!(
            got,
            vec![
                ("aaaaaaaaaaaaaaaa/20261123T090000Z-r1.db.zst", true),
                ("aaaaaaaaaaaaaaaa/20261123T113000Z-r2.db.zst", false),
            ]
        );
    }
}
