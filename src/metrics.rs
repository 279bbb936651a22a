//! Prometheus metrics: one process-wide registry with the metric names of DESIGN.md (a
//! contract: alert rules in deploy/ use them), the functions that update them, the text
//! encoding served on `/metrics`, and a Pushgateway push for one-shot `backup` runs.
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `etcd_lifeboat_backup_last_success_timestamp_seconds` | gauge | end of the last successful backup by this process (Unix s) |
//! | `etcd_lifeboat_backup_last_failure_timestamp_seconds` | gauge | time of the last failed backup by this process |
//! | `etcd_lifeboat_backups_total{result="success\|failure"}` | counter | backups attempted by this process |
//! | `etcd_lifeboat_backup_duration_seconds{result="success\|failure"}` | histogram | duration of backup runs (a failed run: until it gave up, retries included) |
//! | `etcd_lifeboat_backup_size_bytes{kind="raw\|stored"}` | gauge | db size and stored (compressed) size of the last backup |
//! | `etcd_lifeboat_snapshot_revision` | gauge | etcd revision of the last backup |
//! | `etcd_lifeboat_snapshot_keys` | gauge | keys in the last backup |
//! | `etcd_lifeboat_store_latest_backup_timestamp_seconds` | gauge | `finished_at` of the newest backup in the store (whoever took it) that is not future-dated |
//! | `etcd_lifeboat_store_backups` | gauge | backups (intact manifests) in the store |
//! | `etcd_lifeboat_store_future_backups` | gauge | backups dated more than `store.future_tolerance` ahead of this process's clock |
//! | `etcd_lifeboat_store_broken_manifests` | gauge | `*.json` objects that are not trusted manifests (unreadable, > 1 MiB, wrong key or data key) |
//! | `etcd_lifeboat_verify_last_success_timestamp_seconds` | gauge | end of the last successful re-verification by the daemon (Unix s) |
//! | `etcd_lifeboat_verify_last_failure_timestamp_seconds` | gauge | end of the last failed re-verification by the daemon (Unix s) |
//! | `etcd_lifeboat_verifies_total{result="success\|failure"}` | counter | re-verifications of the newest backup by the daemon |
//! | `etcd_lifeboat_is_leader` | gauge | 1 when this daemon replica holds the leader election |
//! | `etcd_lifeboat_upload_bytes_total` | counter | bytes written to the store by uploads (data and files objects; aborted uploads included) |
//! | `process_*` | | the prometheus crate's process collector (Linux): CPU seconds, resident and virtual memory, open and max fds, start time, threads |
//!
//! Extras: `etcd_lifeboat_store_oldest_backup_timestamp_seconds`,
//! `etcd_lifeboat_store_up` (last catalog read succeeded),
//! `etcd_lifeboat_store_last_refresh_timestamp_seconds`, `etcd_lifeboat_store_refresh_errors_total`,
//! `etcd_lifeboat_backup_retries_total`, `etcd_lifeboat_prune_deleted_total{kind="backup|orphan"}`,
//! `etcd_lifeboat_prunes_total{result}`, `etcd_lifeboat_next_backup_timestamp_seconds`,
//! `etcd_lifeboat_backup_in_progress`,
//! `etcd_lifeboat_build_info{version}`.
//!
//! PITR (daemon with `pitr.enabled`, registered in the cluster's set by [`Metrics::pitr`]):
//! `etcd_lifeboat_pitr_last_revision`, `etcd_lifeboat_pitr_lag_seconds`,
//! `etcd_lifeboat_pitr_events_total`, `etcd_lifeboat_pitr_stored_bytes_total`,
//! `etcd_lifeboat_pitr_chain_breaks_total{reason="compacted|gap|outage"}`
//! ([`PitrMetrics`]; never pushed).
//!
//! # Clusters
//! Each cluster of a daemon with `clusters:` (or a top-level `name`) has its own set
//! ([`for_cluster`]) whose series carry `cluster="<name>"`; [`encode`] then merges the sets
//! into one family per name and leaves out the unlabelled set except its process-wide
//! families (`process_*`, `etcd_lifeboat_build_info`, `etcd_lifeboat_upload_bytes_total`).
//! A single unnamed cluster uses the unlabelled set ([`metrics`]): no `cluster` label.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::{
    Encoder as _, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, Opts, Registry, TextEncoder,
};

use crate::store::manifest::{Catalog, Manifest};

/// All metrics of the process.
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// `etcd_lifeboat_backup_last_success_timestamp_seconds`
    pub backup_last_success: Gauge,
    /// `etcd_lifeboat_backup_last_failure_timestamp_seconds`
    pub backup_last_failure: Gauge,
    /// `etcd_lifeboat_backups_total{result}`
    pub backups_total: IntCounterVec,
    /// `etcd_lifeboat_backup_duration_seconds{result}`
    pub backup_duration: HistogramVec,
    /// `etcd_lifeboat_backup_size_bytes{kind}`
    pub backup_size: GaugeVec,
    /// `etcd_lifeboat_snapshot_revision`
    pub snapshot_revision: IntGauge,
    /// `etcd_lifeboat_snapshot_keys`
    pub snapshot_keys: IntGauge,
    /// `etcd_lifeboat_store_latest_backup_timestamp_seconds`
    pub store_latest: Gauge,
    /// `etcd_lifeboat_store_oldest_backup_timestamp_seconds`
    pub store_oldest: Gauge,
    /// `etcd_lifeboat_store_backups`
    pub store_backups: IntGauge,
    /// `etcd_lifeboat_store_up`
    pub store_up: IntGauge,
    /// `etcd_lifeboat_store_last_refresh_timestamp_seconds`
    pub store_last_refresh: Gauge,
    /// `etcd_lifeboat_store_refresh_errors_total`
    pub store_refresh_errors: IntCounter,
    /// `etcd_lifeboat_is_leader`
    pub is_leader: IntGauge,
    /// `etcd_lifeboat_backup_retries_total`
    pub backup_retries: IntCounter,
    /// `etcd_lifeboat_prune_deleted_total{kind}`
    pub prune_deleted: IntCounterVec,
    /// `etcd_lifeboat_prunes_total{result}`
    pub prunes_total: IntCounterVec,
    /// `etcd_lifeboat_next_backup_timestamp_seconds`
    pub next_backup: Gauge,
    /// `etcd_lifeboat_backup_in_progress`
    pub backup_in_progress: IntGauge,
    /// `etcd_lifeboat_store_future_backups`
    pub store_future: IntGauge,
    /// `etcd_lifeboat_store_broken_manifests`
    pub store_broken: IntGauge,
    /// `etcd_lifeboat_verify_last_success_timestamp_seconds`
    pub verify_last_success: Gauge,
    /// `etcd_lifeboat_verify_last_failure_timestamp_seconds`
    pub verify_last_failure: Gauge,
    /// `etcd_lifeboat_verifies_total{result}`
    pub verifies_total: IntCounterVec,
    /// `etcd_lifeboat_upload_bytes_total`
    pub upload_bytes: IntCounter,
    /// The PITR families, registered by [`Metrics::pitr`] (only a daemon with PITR on).
    pitr: OnceLock<PitrMetrics>,
    store_refreshed: AtomicBool,
    success_recorded: AtomicBool,
}

/// Names left out of a Pushgateway push: daemon-only state.
const DAEMON_ONLY: &[&str] = &[
    "etcd_lifeboat_is_leader",
    "etcd_lifeboat_verify_last_success_timestamp_seconds",
    "etcd_lifeboat_verifies_total",
    "etcd_lifeboat_next_backup_timestamp_seconds",
    "etcd_lifeboat_backup_in_progress",
    "etcd_lifeboat_pitr_last_revision",
    "etcd_lifeboat_pitr_lag_seconds",
    "etcd_lifeboat_pitr_events_total",
    "etcd_lifeboat_pitr_stored_bytes_total",
    "etcd_lifeboat_pitr_chain_breaks_total",
];

/// The PITR delta capture's metrics of one cluster (`src/pitr/capture.rs`), in its metric
/// set: with a named cluster every series carries `cluster="<name>"` like the set's others.
pub struct PitrMetrics {
    /// `etcd_lifeboat_pitr_last_revision`: last etcd revision stored in a delta (0: none yet).
    pub last_revision: IntGauge,
    /// `etcd_lifeboat_pitr_lag_seconds`: seconds from the newest time the stored chain covers
    /// (or its base's `finished_at`, when later) to now, on the capturing leader; 0 on a
    /// replica that does not capture.
    pub lag: Gauge,
    /// `etcd_lifeboat_pitr_events_total`: watch events written into deltas.
    pub events: IntCounter,
    /// `etcd_lifeboat_pitr_stored_bytes_total`: bytes of delta objects stored.
    pub stored_bytes: IntCounter,
    /// `etcd_lifeboat_pitr_chain_breaks_total{reason}`: chains ended by a break, `reason` =
    /// `compacted`, `gap` or `outage` (each series exists from the start at 0).
    pub chain_breaks: IntCounterVec,
}

impl PitrMetrics {
    fn register(r: &Registry) -> PitrMetrics {
        PitrMetrics {
            last_revision: int_gauge(
                r,
                "etcd_lifeboat_pitr_last_revision",
                "Last etcd revision stored in a delta of the current PITR chain (0: none yet).",
            ),
            lag: gauge(
                r,
                "etcd_lifeboat_pitr_lag_seconds",
                "Seconds from the newest time the stored PITR chain covers to now (the recovery point objective), on the capturing leader; 0 on other replicas.",
            ),
            events: int_counter(
                r,
                "etcd_lifeboat_pitr_events_total",
                "Watch events stored in PITR deltas by this process.",
            ),
            stored_bytes: int_counter(
                r,
                "etcd_lifeboat_pitr_stored_bytes_total",
                "Bytes of PITR delta objects stored by this process.",
            ),
            chain_breaks: counter_vec(
                r,
                "etcd_lifeboat_pitr_chain_breaks_total",
                "PITR chains ended by a break (a full backup starts a new chain), by reason.",
                "reason",
                &["compacted", "gap", "outage"],
            ),
        }
    }
}

fn gauge(r: &Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::with_opts(Opts::new(name, help)).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn int_gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::with_opts(Opts::new(name, help)).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn int_counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    label: &str,
    values: &[&str],
) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    for v in values {
        c.with_label_values(&[*v]);
    }
    c
}

impl Metrics {
    /// The metric set of one cluster: `cluster: Some(name)` adds the label `cluster="<name>"`
    /// to every series of its registry and leaves out the process-wide families (`process_*`,
    /// `etcd_lifeboat_build_info`, `etcd_lifeboat_upload_bytes_total`), which only the
    /// unlabelled set ([`metrics`]) registers.
    fn new(cluster: Option<&str>) -> Self {
        let labels = cluster.map(|c| {
            std::iter::once(("cluster".to_string(), c.to_string()))
                .collect::<std::collections::HashMap<_, _>>()
        });
        let process_wide = cluster.is_none();
        let r = Registry::new_custom(None, labels).expect("valid registry labels");
        let backup_last_success = gauge(
            &r,
            "etcd_lifeboat_backup_last_success_timestamp_seconds",
            "Unix time the last successful backup of this process finished (0: none yet).",
        );
        let backup_last_failure = gauge(
            &r,
            "etcd_lifeboat_backup_last_failure_timestamp_seconds",
            "Unix time the last failed backup of this process ended (0: none yet).",
        );
        let backups_total = counter_vec(
            &r,
            "etcd_lifeboat_backups_total",
            "Backups attempted by this process, by result (a retried run counts once).",
            "result",
            &["success", "failure"],
        );
        let backup_duration = HistogramVec::new(
            HistogramOpts::new(
                "etcd_lifeboat_backup_duration_seconds",
                "Duration of backup runs by result: snapshot stream, verification, upload, manifest (a failed run: until it gave up, retries included).",
            )
            .buckets(vec![
                0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
            ]),
            &["result"],
        )
        .expect("valid metric");
        r.register(Box::new(backup_duration.clone()))
            .expect("unique metric");
        backup_duration.with_label_values(&["success"]);
        backup_duration.with_label_values(&["failure"]);
        let upload_bytes = IntCounter::new(
            "etcd_lifeboat_upload_bytes_total",
            "Bytes written to the store by uploads (backup data and files objects), aborted uploads included.",
        )
        .expect("valid metric");
        if process_wide {
            r.register(Box::new(upload_bytes.clone()))
                .expect("unique metric");
            #[cfg(target_os = "linux")]
            r.register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric");
        }
        let backup_size = GaugeVec::new(
            Opts::new(
                "etcd_lifeboat_backup_size_bytes",
                "Size of the last successful backup: raw db bytes (kind=raw) and stored compressed bytes (kind=stored).",
            ),
            &["kind"],
        )
        .expect("valid metric");
        r.register(Box::new(backup_size.clone()))
            .expect("unique metric");
        backup_size.with_label_values(&["raw"]);
        backup_size.with_label_values(&["stored"]);
        let snapshot_revision = int_gauge(
            &r,
            "etcd_lifeboat_snapshot_revision",
            "etcd revision of the last successful backup.",
        );
        let snapshot_keys = int_gauge(
            &r,
            "etcd_lifeboat_snapshot_keys",
            "Number of keys in the last successful backup (totalKey of snapshot status).",
        );
        let store_latest = gauge(
            &r,
            "etcd_lifeboat_store_latest_backup_timestamp_seconds",
            "Unix time the newest backup in the store finished, from the store catalog (any writer: daemon or CronJob).",
        );
        let store_oldest = gauge(
            &r,
            "etcd_lifeboat_store_oldest_backup_timestamp_seconds",
            "Unix time the oldest backup in the store finished, from the store catalog.",
        );
        let store_backups = int_gauge(
            &r,
            "etcd_lifeboat_store_backups",
            "Backups (manifests) in the store, from the store catalog.",
        );
        let store_up = int_gauge(
            &r,
            "etcd_lifeboat_store_up",
            "1 when the last read of the store catalog succeeded, else 0.",
        );
        let store_last_refresh = gauge(
            &r,
            "etcd_lifeboat_store_last_refresh_timestamp_seconds",
            "Unix time of the last successful read of the store catalog.",
        );
        let store_refresh_errors = int_counter(
            &r,
            "etcd_lifeboat_store_refresh_errors_total",
            "Failed reads of the store catalog.",
        );
        let is_leader = int_gauge(
            &r,
            "etcd_lifeboat_is_leader",
            "1 when this daemon replica is the elected leader (or election is disabled), else 0.",
        );
        let backup_retries = int_counter(
            &r,
            "etcd_lifeboat_backup_retries_total",
            "Backup attempts retried after a transient failure inside one scheduled run.",
        );
        let prune_deleted = counter_vec(
            &r,
            "etcd_lifeboat_prune_deleted_total",
            "Objects deleted by retention: backups (manifest and data) and orphan data objects.",
            "kind",
            &["backup", "orphan"],
        );
        let prunes_total = counter_vec(
            &r,
            "etcd_lifeboat_prunes_total",
            "Retention runs, by result.",
            "result",
            &["success", "failure"],
        );
        let next_backup = gauge(
            &r,
            "etcd_lifeboat_next_backup_timestamp_seconds",
            "Unix time of the next scheduled backup.",
        );
        let backup_in_progress = int_gauge(
            &r,
            "etcd_lifeboat_backup_in_progress",
            "1 while this daemon runs a backup, else 0.",
        );
        let store_future = int_gauge(
            &r,
            "etcd_lifeboat_store_future_backups",
            "Backups in the store dated more than store.future_tolerance ahead of this process's clock (a writer's clock is wrong); ignored for age and scheduling.",
        );
        let store_broken = int_gauge(
            &r,
            "etcd_lifeboat_store_broken_manifests",
            "Manifest objects in the store that are not trusted (unreadable, over 1 MiB, stored under another key, or naming another data key); prune leaves them.",
        );
        let verify_last_success = gauge(
            &r,
            "etcd_lifeboat_verify_last_success_timestamp_seconds",
            "Unix time the daemon's last successful re-verification of the newest backup finished (0: none yet).",
        );
        let verify_last_failure = gauge(
            &r,
            "etcd_lifeboat_verify_last_failure_timestamp_seconds",
            "Unix time the daemon's last failed re-verification of the newest backup ended (0: none yet).",
        );
        let verifies_total = counter_vec(
            &r,
            "etcd_lifeboat_verifies_total",
            "Re-verifications of the newest stored backup by the daemon (download, decompress, full check), by result.",
            "result",
            &["success", "failure"],
        );
        let build_info = IntGauge::with_opts(
            Opts::new(
                "etcd_lifeboat_build_info",
                "Build information; value is always 1.",
            )
            .const_label("version", env!("CARGO_PKG_VERSION")),
        )
        .expect("valid metric");
        build_info.set(1);
        if process_wide {
            r.register(Box::new(build_info)).expect("unique metric");
        }
        Metrics {
            registry: r,
            backup_last_success,
            backup_last_failure,
            backups_total,
            backup_duration,
            backup_size,
            snapshot_revision,
            snapshot_keys,
            store_latest,
            store_oldest,
            store_backups,
            store_up,
            store_last_refresh,
            store_refresh_errors,
            is_leader,
            backup_retries,
            prune_deleted,
            prunes_total,
            next_backup,
            backup_in_progress,
            store_future,
            store_broken,
            verify_last_success,
            verify_last_failure,
            verifies_total,
            upload_bytes,
            pitr: OnceLock::new(),
            store_refreshed: AtomicBool::new(false),
            success_recorded: AtomicBool::new(false),
        }
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics::new(None));

/// The named clusters' metric sets, created by [`for_cluster`]; never freed (a process
/// serves a fixed set of clusters).
static CLUSTERS: std::sync::Mutex<Vec<(String, &'static Metrics)>> =
    std::sync::Mutex::new(Vec::new());

/// The process-wide metrics: the unlabelled set of the single unnamed cluster (what `backup`,
/// the Pushgateway push and a single-cluster daemon use), plus the process-wide families.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// The metric set of cluster `name`: `None` is [`metrics`]; `Some(name)` a set whose series
/// all carry `cluster="<name>"`, created on first use. Once a named set exists, [`encode`]
/// serves the named sets and only the process-wide families of the unlabelled one.
pub fn for_cluster(name: Option<&str>) -> &'static Metrics {
    let Some(name) = name else {
        return metrics();
    };
    let mut all = CLUSTERS.lock().expect("metrics lock");
    if let Some((_, m)) = all.iter().find(|(n, _)| n == name) {
        return m;
    }
    let m: &'static Metrics = Box::leak(Box::new(Metrics::new(Some(name))));
    all.push((name.to_string(), m));
    m
}

/// Families of the unlabelled set that stay in [`encode`]'s output when named sets exist.
fn is_process_wide(name: &str) -> bool {
    name.starts_with("process_")
        || name == "etcd_lifeboat_build_info"
        || name == "etcd_lifeboat_upload_bytes_total"
}

fn unix(t: DateTime<Utc>) -> f64 {
    t.timestamp() as f64 + f64::from(t.timestamp_subsec_millis()) / 1000.0
}

impl Metrics {
    /// This set's PITR metrics, registered in its registry on the first call (so a daemon
    /// without PITR exports none of them).
    pub fn pitr(&self) -> &PitrMetrics {
        self.pitr
            .get_or_init(|| PitrMetrics::register(&self.registry))
    }

    /// Records a successful backup: success counter and timestamp (now), duration histogram,
    /// the sizes, revision and key count of `m`.
    pub fn record_backup_success(&self, m: &Manifest, duration: Duration) {
        let x = self;
        x.backups_total.with_label_values(&["success"]).inc();
        x.backup_last_success.set(unix(Utc::now()));
        x.backup_duration
            .with_label_values(&["success"])
            .observe(duration.as_secs_f64());
        x.backup_size
            .with_label_values(&["raw"])
            .set(m.total_size as f64);
        x.backup_size
            .with_label_values(&["stored"])
            .set(m.stored_bytes as f64);
        x.snapshot_revision.set(m.revision);
        x.snapshot_keys.set(m.total_key as i64);
        x.success_recorded.store(true, Ordering::Relaxed);
    }

    /// Records a failed backup: failure counter and timestamp (now).
    pub fn record_backup_failure(&self) {
        self.backups_total.with_label_values(&["failure"]).inc();
        self.backup_last_failure.set(unix(Utc::now()));
    }

    /// Records a failed backup run that took `duration` (from its start until it gave up,
    /// retries included): failure counter and timestamp (now), and the duration histogram's
    /// `result="failure"` series.
    pub fn record_backup_failure_after(&self, duration: Duration) {
        self.record_backup_failure();
        self.backup_duration
            .with_label_values(&["failure"])
            .observe(duration.as_secs_f64());
    }

    /// Sets the store gauges from a catalog: count of backups, of future-dated backups and
    /// of broken manifests; newest and oldest `finished_at` among the backups that are not
    /// future-dated (0 when there is none).
    pub fn refresh_store(&self, catalog: &Catalog) {
        let x = self;
        x.store_backups.set(catalog.backups.len() as i64);
        x.store_future.set(catalog.future().count() as i64);
        x.store_broken.set(catalog.broken.len() as i64);
        let newest = catalog.newest_by_time().map(|m| m.finished_at);
        let oldest = catalog.oldest_by_time().map(|m| m.finished_at);
        x.store_latest.set(newest.map(unix).unwrap_or(0.0));
        x.store_oldest.set(oldest.map(unix).unwrap_or(0.0));
        x.store_up.set(1);
        x.store_last_refresh.set(unix(Utc::now()));
        x.store_refreshed.store(true, Ordering::Relaxed);
    }

    /// Records a re-verification of the newest backup: the counter by result, and the
    /// success or failure timestamp (now).
    pub fn record_verify(&self, ok: bool) {
        self.verifies_total
            .with_label_values(&[if ok { "success" } else { "failure" }])
            .inc();
        if ok {
            self.verify_last_success.set(unix(Utc::now()));
        } else {
            self.verify_last_failure.set(unix(Utc::now()));
        }
    }

    /// Records a failed read of the store catalog (the store gauges keep their last values).
    pub fn record_store_refresh_error(&self) {
        self.store_refreshed.store(true, Ordering::Relaxed);
        self.store_refresh_errors.inc();
        self.store_up.set(0);
    }
}

/// [`Metrics::record_backup_success`] on [`metrics`].
pub fn record_backup_success(m: &Manifest, duration: Duration) {
    metrics().record_backup_success(m, duration)
}

/// [`Metrics::record_backup_failure`] on [`metrics`]. Prefer [`record_backup_failure_after`],
/// which also observes the duration.
pub fn record_backup_failure() {
    metrics().record_backup_failure()
}

/// [`Metrics::record_backup_failure_after`] on [`metrics`].
pub fn record_backup_failure_after(duration: Duration) {
    metrics().record_backup_failure_after(duration)
}

/// Adds `bytes` to `etcd_lifeboat_upload_bytes_total` (process-wide): called by the store's
/// upload writer ([`crate::store::Upload::write`]) for every chunk it accepted.
pub fn record_upload_bytes(bytes: u64) {
    metrics().upload_bytes.inc_by(bytes);
}

/// [`Metrics::refresh_store`] on [`metrics`].
pub fn refresh_store(catalog: &Catalog) {
    metrics().refresh_store(catalog)
}

/// [`Metrics::record_verify`] on [`metrics`].
pub fn record_verify(ok: bool) {
    metrics().record_verify(ok)
}

/// [`Metrics::record_store_refresh_error`] on [`metrics`].
pub fn record_store_refresh_error() {
    metrics().record_store_refresh_error()
}

/// Everything in the registry in the Prometheus text exposition format 0.0.4.
/// With named cluster sets ([`for_cluster`]), their series (each with its `cluster` label)
/// are merged into one family per name, and the unlabelled set contributes only its
/// process-wide families.
pub fn encode() -> String {
    let named: Vec<&'static Metrics> = CLUSTERS
        .lock()
        .expect("metrics lock")
        .iter()
        .map(|(_, m)| *m)
        .collect();
    let mut families = metrics().registry.gather();
    if !named.is_empty() {
        families.retain(|f| is_process_wide(f.name()));
        for m in named {
            for mut f in m.registry.gather() {
                match families.iter_mut().find(|g| g.name() == f.name()) {
                    Some(g) => g.mut_metric().append(f.mut_metric()),
                    None => families.push(f),
                }
            }
        }
        families.sort_by(|a, b| a.name().cmp(b.name()));
    }
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&families, &mut buf)
        .expect("text encoding of gathered metrics");
    String::from_utf8(buf).expect("text format is UTF-8")
}

/// The `Content-Type` of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Errors of the Pushgateway push. Messages name the gateway by its URL without userinfo
/// (never a password or token).
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The `--pushgateway` URL is not `http(s)://host[:port][/prefix]`.
    #[error(
        "pushgateway URL {url}: {reason}; expected http(s)://[user:password@]host:port[/path]"
    )]
    Url {
        /// The URL, userinfo removed.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A CA, password or token file could not be read or used.
    #[error("pushgateway {what} {path}: {reason}")]
    File {
        /// `CA file`, `password file`, `bearer token file`.
        what: &'static str,
        /// The file.
        path: String,
        /// The cause.
        reason: String,
    },
    /// Both basic auth and a bearer token are configured.
    #[error("pushgateway: both basic auth and a bearer token are set; use one")]
    AuthConflict,
    /// Encoding the metrics failed.
    #[error("encoding metrics for the pushgateway: {0}")]
    Encode(#[from] prometheus::Error),
    /// Connection failure or timeout.
    #[error("pushgateway {target}: {method} failed: {reason}; check --pushgateway, the network and --pushgateway-ca-file")]
    Send {
        /// The request URL, userinfo removed.
        target: String,
        /// `PUT` or `POST`.
        method: &'static str,
        /// The cause.
        reason: String,
    },
    /// The gateway answered with a non-2xx status.
    #[error("pushgateway {target}: {method} answered HTTP {status}: {body}{hint}")]
    Status {
        /// The request URL, userinfo removed.
        target: String,
        /// `PUT` or `POST`.
        method: &'static str,
        /// HTTP status code.
        status: u16,
        /// Start of the answer's body.
        body: String,
        /// A hint for 401/403.
        hint: &'static str,
    },
}

/// Credentials sent to the Pushgateway, as Prometheus' own scrape config names them
/// (`basic_auth`, `authorization`/`bearer_token_file`).
#[derive(Clone, PartialEq, Eq)]
pub enum PushAuth {
    /// `Authorization: Basic base64(username:password)`.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// `Authorization: Bearer <token>`.
    Bearer(String),
}

impl std::fmt::Debug for PushAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushAuth::Basic { username, .. } => {
                write!(
                    f,
                    "Basic {{ username: {username:?}, password: <redacted> }}"
                )
            }
            PushAuth::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

/// Where and how to push: the gateway's base URL (userinfo removed), an optional extra CA
/// file for `https://` (added to the system roots) and optional credentials.
#[derive(Clone, Debug)]
pub struct PushTarget {
    base: String,
    ca_file: Option<std::path::PathBuf>,
    auth: Option<PushAuth>,
}

impl PushTarget {
    /// Parses `http(s)://[user:password@]host[:port][/prefix]`. Userinfo (percent-decoded)
    /// becomes [`PushAuth::Basic`] and is removed from the URL that is logged.
    ///
    /// Errors: [`MetricsError::Url`] for another scheme, an empty host, a query or fragment.
    pub fn new(url: &str) -> Result<PushTarget, MetricsError> {
        let bad = |reason: &str| MetricsError::Url {
            url: redact_url(url),
            reason: reason.into(),
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
        if scheme != "http" && scheme != "https" {
            return Err(bad("only http:// and https:// are supported"));
        }
        if rest.contains(['?', '#']) {
            return Err(bad("no query or fragment allowed"));
        }
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (userinfo, host) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let auth = match userinfo {
            None => None,
            Some(u) => {
                let (user, pass) = u.split_once(':').unwrap_or((u, ""));
                Some(PushAuth::Basic {
                    username: percent_decode(user)
                        .ok_or_else(|| bad("bad %-escape in userinfo"))?,
                    password: percent_decode(pass)
                        .ok_or_else(|| bad("bad %-escape in userinfo"))?,
                })
            }
        };
        Ok(PushTarget {
            base: format!("{scheme}://{host}{}", path.trim_end_matches('/')),
            ca_file: None,
            auth,
        })
    }

    /// Adds a PEM CA bundle trusted for `https://` besides the system roots.
    pub fn with_ca_file(mut self, ca_file: Option<std::path::PathBuf>) -> PushTarget {
        self.ca_file = ca_file;
        self
    }

    /// Sets the credentials, unless `auth` is `None`.
    ///
    /// Errors: [`MetricsError::AuthConflict`] when the URL carried userinfo and `auth` is a
    /// bearer token (a basic `auth` replaces the URL's).
    pub fn with_auth(mut self, auth: Option<PushAuth>) -> Result<PushTarget, MetricsError> {
        match (&self.auth, auth) {
            (_, None) => {}
            (Some(PushAuth::Basic { .. }), Some(PushAuth::Bearer(_))) => {
                return Err(MetricsError::AuthConflict)
            }
            (_, Some(a)) => self.auth = Some(a),
        }
        Ok(self)
    }

    /// The gateway URL without credentials (what logs and errors show).
    pub fn url(&self) -> &str {
        &self.base
    }
}

/// Reads a secret file (password or token): its content without the trailing newline.
///
/// Errors: [`MetricsError::File`] when it cannot be read or is empty.
pub fn read_secret_file(
    what: &'static str,
    path: &std::path::Path,
) -> Result<String, MetricsError> {
    let err = |reason: String| MetricsError::File {
        what,
        path: path.display().to_string(),
        reason,
    };
    let s = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let s = s.trim_end_matches(['\r', '\n']).to_string();
    if s.is_empty() {
        return Err(err("empty".into()));
    }
    Ok(s)
}

/// `url` with any `user:password@` removed, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.split('@').next_back().unwrap_or_default().to_string();
    };
    let end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://{host}{path}"),
        None => url.to_string(),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The metric families a push sends, and whether it is the full set (after a success).
fn push_families() -> (Vec<prometheus::proto::MetricFamily>, bool) {
    let x = metrics();
    let full = x.success_recorded.load(Ordering::Relaxed);
    let store = x.store_refreshed.load(Ordering::Relaxed);
    let families = x
        .registry
        .gather()
        .into_iter()
        .filter(|f| {
            let n = f.name();
            if DAEMON_ONLY.contains(&n)
                || n.starts_with("process_")
                || (!store && n.starts_with("etcd_lifeboat_store_"))
            {
                return false;
            }
            full || n.starts_with("etcd_lifeboat_store_")
                || matches!(
                    n,
                    "etcd_lifeboat_backup_last_failure_timestamp_seconds"
                        | "etcd_lifeboat_backups_total"
                        | "etcd_lifeboat_backup_duration_seconds"
                )
        })
        .collect();
    (families, full)
}

/// The text-format body that [`push`] would send now (for `promtool check metrics`).
pub fn push_payload() -> String {
    let mut body = Vec::new();
    TextEncoder::new()
        .encode(&push_families().0, &mut body)
        .expect("text encoding of gathered metrics");
    String::from_utf8(body).expect("text format is UTF-8")
}

/// Pushes this process's backup metrics to a Prometheus Pushgateway, grouping key `job` plus
/// the `(label, value)` pairs of `grouping` in order (`backup --pushgateway` uses
/// `job=etcd-lifeboat-backup`, `cluster_id=<etcd cluster id>`).
///
/// After a successful backup, the full set is sent with `PUT
/// <url>/metrics/job/<job>/<label>/<value>...` (replacing the group). After a failed one,
/// only the failure metrics (`..._last_failure_timestamp_seconds`, `backups_total`, the
/// duration histogram) are sent with `POST`, which replaces just those names, so the pushed
/// `etcd_lifeboat_backup_last_success_timestamp_seconds` of the previous success stays and
/// age alerts keep working. Daemon-only and `process_*` metrics are never pushed; store
/// metrics (`etcd_lifeboat_store_*`) are pushed, after success or failure, when
/// [`refresh_store`] or [`record_store_refresh_error`] was called. Label values containing
/// `/` (or empty) are sent in the Pushgateway's base64url form (`name@base64/...`).
///
/// `http://` or `https://` (system roots plus the target's CA file), basic auth or a bearer
/// token when the target has one. 10 s timeout.
///
/// Errors: [`MetricsError::Send`] (connection, TLS, timeout), [`MetricsError::Status`]
/// (non-2xx: status and body), [`MetricsError::File`] (CA file).
pub async fn push(
    target: &PushTarget,
    job: &str,
    grouping: &[(&str, &str)],
) -> Result<(), MetricsError> {
    let (families, full) = push_families();
    let mut body = Vec::new();
    TextEncoder::new().encode(&families, &mut body)?;
    let mut path = format!("{}/metrics/{}", target.base, grouping_segment("job", job));
    for (k, v) in grouping {
        path.push('/');
        path.push_str(&grouping_segment(k, v));
    }
    let method = if full { "PUT" } else { "POST" };
    let (status, text) = http_send(target, method, &path, body, Duration::from_secs(10))
        .await
        .map_err(|reason| MetricsError::Send {
            target: path.clone(),
            method,
            reason,
        })?;
    if !(200..300).contains(&status) {
        let body: String = text.trim().chars().take(512).collect();
        return Err(MetricsError::Status {
            target: path,
            method,
            status,
            body,
            hint: match status {
                401 | 403 => " (check the pushgateway credentials: URL userinfo, ETCD_LIFEBOAT_PUSHGATEWAY_USERNAME/_PASSWORD or --pushgateway-bearer-token-file)",
                _ => "",
            },
        });
    }
    tracing::info!(url = %path, method, "pushed metrics to the pushgateway");
    Ok(())
}

/// `name/value`, or `name@base64/<base64url>` when the value cannot go in a path segment.
fn grouping_segment(name: &str, value: &str) -> String {
    use base64::Engine as _;
    let plain = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if plain {
        format!("{name}/{value}")
    } else if value.is_empty() {
        format!("{name}@base64/=")
    } else {
        format!(
            "{name}@base64/{}",
            base64::engine::general_purpose::URL_SAFE.encode(value)
        )
    }
}

/// The rustls client config for `https://` pushes: system roots plus `ca_file`.
fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, MetricsError> {
    use rustls::pki_types::{pem::PemObject as _, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(c);
    }
    if let Some(p) = ca_file {
        let err = |reason: String| MetricsError::File {
            what: "CA file",
            path: p.display().to_string(),
            reason,
        };
        let certs: Vec<_> = CertificateDer::pem_file_iter(p)
            .map_err(|e| err(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| err(e.to_string()))?;
        if certs.is_empty() {
            return Err(err("no PEM certificate in it".into()));
        }
        for c in certs {
            roots.add(c).map_err(|e| err(e.to_string()))?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// One HTTP/1.1 request with `body` to `url`; returns status and body text, or the failure.
async fn http_send(
    target: &PushTarget,
    method: &'static str,
    url: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    use axum::body::Body;
    use axum::http::{header, HeaderValue, Method, Request};
    use base64::Engine as _;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let tls = tls_config(target.ca_file.as_deref()).map_err(|e| e.to_string())?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Body> = Client::builder(TokioExecutor::new()).build(https);
    let mut req = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).expect("valid method"))
        .uri(url)
        .header(header::CONTENT_TYPE, CONTENT_TYPE);
    if let Some(auth) = &target.auth {
        let v = match auth {
            PushAuth::Basic { username, password } => format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
            ),
            PushAuth::Bearer(t) => format!("Bearer {t}"),
        };
        let mut v = HeaderValue::from_str(&v).map_err(|_| {
            "the credentials contain characters not allowed in a header".to_string()
        })?;
        v.set_sensitive(true);
        req = req.header(header::AUTHORIZATION, v);
    }
    let req = req.body(Body::from(body)).map_err(|e| e.to_string())?;
    let fut = async {
        let resp = client.request(req).await.map_err(|e| {
            // hyper_util's Display is "client error (Connect)": add the cause chain.
            let mut s = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(c) = src {
                s += &format!(": {c}");
                src = c.source();
            }
            s
        })?;
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(Body::new(resp.into_body()), 1 << 20)
            .await
            .map_err(|e| e.to_string())?;
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

/// The metric names of the design contract (shared/DESIGN.md, "Metrics"): what dashboards
/// and alert rules may rely on, kept by every release.
pub const CONTRACT_METRICS: &[&str] = &[
    "etcd_lifeboat_backup_last_success_timestamp_seconds",
    "etcd_lifeboat_backup_last_failure_timestamp_seconds",
    "etcd_lifeboat_backups_total",
    "etcd_lifeboat_backup_duration_seconds",
    "etcd_lifeboat_backup_size_bytes",
    "etcd_lifeboat_snapshot_revision",
    "etcd_lifeboat_snapshot_keys",
    "etcd_lifeboat_store_latest_backup_timestamp_seconds",
    "etcd_lifeboat_store_backups",
    "etcd_lifeboat_is_leader",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_names_are_exposed_with_help() {
        let text = encode();
        let more = [
            "etcd_lifeboat_store_refresh_errors_total",
            "etcd_lifeboat_store_future_backups",
            "etcd_lifeboat_store_broken_manifests",
            "etcd_lifeboat_verify_last_success_timestamp_seconds",
            "etcd_lifeboat_verifies_total",
            "etcd_lifeboat_build_info",
        ];
        for name in CONTRACT_METRICS.iter().chain(&more) {
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} missing:\n{text}"
            );
        }
        assert!(
            text.contains("etcd_lifeboat_backups_total{result=\"failure\"}"),
            "{text}"
        );
        assert!(
            text.contains("etcd_lifeboat_backup_size_bytes{kind=\"stored\"}"),
            "{text}"
        );
    }

    #[test]
    fn grouping_key_encoding() {
        assert_eq!(grouping_segment("job", "etcd-backup"), "job/etcd-backup");
        // Pushgateway README example: "/path/to/job" -> "L3BhdGgvdG8vam9i".
        assert_eq!(
            grouping_segment("job", "/path/to/job"),
            "job@base64/L3BhdGgvdG8vam9i"
        );
        assert_eq!(
            grouping_segment("cluster_id", "a/"),
            "cluster_id@base64/YS8="
        );
        assert_eq!(grouping_segment("instance", ""), "instance@base64/=");
    }

    #[test]
    fn push_target_takes_userinfo_out_of_the_url() {
        let t = PushTarget::new("https://al%40ice:s3cr%3At@gw.example:9091/prefix/").unwrap();
        assert_eq!(t.url(), "https://gw.example:9091/prefix");
        assert_eq!(
            t.auth,
            Some(PushAuth::Basic {
                username: "al@ice".into(),
                password: "s3cr:t".into()
            })
        );
        assert!(!format!("{t:?}").contains("s3cr"), "{t:?}");
        assert_eq!(
            redact_url("https://u:p@gw:9091/x"),
            "https://gw:9091/x".to_string()
        );
        assert_eq!(redact_url("http://gw:9091"), "http://gw:9091");
        let e = PushTarget::new("ftp://u:hunter2@gw")
            .unwrap_err()
            .to_string();
        assert!(e.contains("only http") && !e.contains("hunter2"), "{e}");
        assert!(matches!(
            PushTarget::new("http://u:p@gw")
                .unwrap()
                .with_auth(Some(PushAuth::Bearer("t".into()))),
            Err(MetricsError::AuthConflict)
        ));
        let t = PushTarget::new("http://gw")
            .unwrap()
            .with_auth(Some(PushAuth::Bearer("t".into())))
            .unwrap();
        assert_eq!(t.auth, Some(PushAuth::Bearer("t".into())));
    }
}
