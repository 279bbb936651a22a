//! Prometheus metrics: one process-wide registry with the metric names of DESIGN.md (a
//! contract: alert rules in deploy/ use them), the functions that update them, the text
//! encoding served on `/metrics`, and a Pushgateway push for one-shot `backup` runs.
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `etcd_lifeboat_backup_last_success_timestamp_seconds` | gauge | end of the last successful backup by this process (Unix s) |
//! | `etcd_lifeboat_backup_last_failure_timestamp_seconds` | gauge | time of the last failed backup by this process |
//! | `etcd_lifeboat_backups_total{result="success\|failure"}` | counter | backups attempted by this process |
//! | `etcd_lifeboat_backup_duration_seconds` | histogram | duration of successful backups |
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
//!
//! Extras: `etcd_lifeboat_store_oldest_backup_timestamp_seconds`,
//! `etcd_lifeboat_store_up` (last catalog read succeeded),
//! `etcd_lifeboat_store_last_refresh_timestamp_seconds`, `etcd_lifeboat_store_refresh_errors_total`,
//! `etcd_lifeboat_backup_retries_total`, `etcd_lifeboat_prune_deleted_total{kind="backup|orphan"}`,
//! `etcd_lifeboat_prunes_total{result}`, `etcd_lifeboat_next_backup_timestamp_seconds`,
//! `etcd_lifeboat_backup_in_progress`,
//! `etcd_lifeboat_build_info{version}`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use prometheus::{
    Encoder as _, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
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
    /// `etcd_lifeboat_backup_duration_seconds`
    pub backup_duration: Histogram,
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
];

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
    fn new() -> Self {
        let r = Registry::new();
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
        let backup_duration = Histogram::with_opts(
            HistogramOpts::new(
                "etcd_lifeboat_backup_duration_seconds",
                "Duration of successful backups: snapshot stream, verification, upload, manifest.",
            )
            .buckets(vec![
                0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
            ]),
        )
        .expect("valid metric");
        r.register(Box::new(backup_duration.clone()))
            .expect("unique metric");
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
        let store_refresh_errors = IntCounter::new(
            "etcd_lifeboat_store_refresh_errors_total",
            "Failed reads of the store catalog.",
        )
        .expect("valid metric");
        r.register(Box::new(store_refresh_errors.clone()))
            .expect("unique metric");
        let is_leader = int_gauge(
            &r,
            "etcd_lifeboat_is_leader",
            "1 when this daemon replica is the elected leader (or election is disabled), else 0.",
        );
        let backup_retries = IntCounter::new(
            "etcd_lifeboat_backup_retries_total",
            "Backup attempts retried after a transient failure inside one scheduled run.",
        )
        .expect("valid metric");
        r.register(Box::new(backup_retries.clone()))
            .expect("unique metric");
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
        r.register(Box::new(build_info)).expect("unique metric");
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
            store_refreshed: AtomicBool::new(false),
            success_recorded: AtomicBool::new(false),
        }
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

fn unix(t: DateTime<Utc>) -> f64 {
    t.timestamp() as f64 + f64::from(t.timestamp_subsec_millis()) / 1000.0
}

/// Records a successful backup: success counter and timestamp (now), duration histogram, the
/// sizes, revision and key count of `m`.
pub fn record_backup_success(m: &Manifest, duration: Duration) {
    let x = metrics();
    x.backups_total.with_label_values(&["success"]).inc();
    x.backup_last_success.set(unix(Utc::now()));
    x.backup_duration.observe(duration.as_secs_f64());
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
pub fn record_backup_failure() {
    let x = metrics();
    x.backups_total.with_label_values(&["failure"]).inc();
    x.backup_last_failure.set(unix(Utc::now()));
}

/// Sets the store gauges from a catalog: count of backups, of future-dated backups and of
/// broken manifests; newest and oldest `finished_at` among the backups that are not
/// future-dated (0 when there is none).
pub fn refresh_store(catalog: &Catalog) {
    let x = metrics();
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

/// Records a re-verification of the newest backup: the counter by result, and the success or
/// failure timestamp (now).
pub fn record_verify(ok: bool) {
    let x = metrics();
    x.verifies_total
        .with_label_values(&[if ok { "success" } else { "failure" }])
        .inc();
    if ok {
        x.verify_last_success.set(unix(Utc::now()));
    } else {
        x.verify_last_failure.set(unix(Utc::now()));
    }
}

/// Records a failed read of the store catalog (the store gauges keep their last values).
pub fn record_store_refresh_error() {
    let x = metrics();
    x.store_refreshed.store(true, Ordering::Relaxed);
    x.store_refresh_errors.inc();
    x.store_up.set(0);
}

/// Everything in the registry in the Prometheus text exposition format 0.0.4.
pub fn encode() -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&metrics().registry.gather(), &mut buf)
        .expect("text encoding of gathered metrics");
    String::from_utf8(buf).expect("text format is UTF-8")
}

/// The `Content-Type` of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Pushes this process's backup metrics to a Prometheus Pushgateway at `url`
/// (`http://pushgateway:9091`, optionally with a path prefix), grouping key
/// `job`/`instance`.
///
/// After a successful backup, the full set is sent with `PUT
/// <url>/metrics/job/<job>/instance/<instance>` (replacing the group). After a failed one,
/// only the failure metrics are sent with `POST`, which replaces just those names, so the
/// pushed `etcd_lifeboat_backup_last_success_timestamp_seconds` of the previous success stays
/// and age alerts keep working. Daemon-only metrics are never pushed; store metrics
/// (`etcd_lifeboat_store_*`) are pushed, after success or failure, when [`refresh_store`] or
/// [`record_store_refresh_error`] was called. Label values containing `/` (or empty) are sent in the
/// Pushgateway's base64url form (`instance@base64/...`).
///
/// Plain `http://` only (the gateway is normally cluster-internal). 10 s timeout.
///
/// Errors: bad URL, connection failure, timeout, or a non-2xx answer (status and body).
pub async fn push(url: &str, job: &str, instance: &str) -> anyhow::Result<()> {
    let x = metrics();
    let full = x.success_recorded.load(Ordering::Relaxed);
    let store = x.store_refreshed.load(Ordering::Relaxed);
    let families: Vec<_> = x
        .registry
        .gather()
        .into_iter()
        .filter(|f| {
            let n = f.name();
            if DAEMON_ONLY.contains(&n) || (!store && n.starts_with("etcd_lifeboat_store_")) {
                return false;
            }
            full || n.starts_with("etcd_lifeboat_store_")
                || matches!(
                    n,
                    "etcd_lifeboat_backup_last_failure_timestamp_seconds"
                        | "etcd_lifeboat_backups_total"
                )
        })
        .collect();
    let mut body = Vec::new();
    TextEncoder::new().encode(&families, &mut body)?;
    let target = format!(
        "{}/metrics/{}/{}",
        url.trim_end_matches('/'),
        grouping_segment("job", job),
        grouping_segment("instance", instance)
    );
    let method = if full { "PUT" } else { "POST" };
    let (status, text) = http_send(method, &target, CONTENT_TYPE, body, Duration::from_secs(10))
        .await
        .with_context(|| format!("pushgateway {target}: {method} failed; check --pushgateway"))?;
    if !(200..300).contains(&status) {
        anyhow::bail!(
            "pushgateway {target}: {method} answered HTTP {status}: {}",
            text.trim()
        );
    }
    tracing::info!(url = %target, method, "pushed metrics to the pushgateway");
    Ok(())
}

/// `name/value`, or `name@base64/<base64url>` when the value cannot go in a path segment.
fn grouping_segment(name: &str, value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if plain {
        format!("{name}/{value}")
    } else if value.is_empty() {
        format!("{name}@base64/=")
    } else {
        format!("{name}@base64/{}", base64url(value.as_bytes()))
    }
}

fn base64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
        for _ in c.len()..3 {
            out.push('=');
        }
    }
    out
}

/// One HTTP/1.1 request with `body`; returns status and body text.
async fn http_send(
    method: &str,
    url: &str,
    content_type: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    use axum::body::Body;
    use axum::http::{header, Method, Request};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    if !url.starts_with("http://") {
        anyhow::bail!("{url}: only http:// URLs are supported for the pushgateway");
    }
    let client: Client<_, Body> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::builder()
        .method(Method::from_bytes(method.as_bytes())?)
        .uri(url)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body))?;
    let fut = async {
        let resp = client.request(req).await?;
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(Body::new(resp.into_body()), 1 << 20).await?;
        anyhow::Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {timeout:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_names_are_exposed_with_help() {
        let text = encode();
        for name in [
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
            "etcd_lifeboat_store_refresh_errors_total",
            "etcd_lifeboat_store_future_backups",
            "etcd_lifeboat_store_broken_manifests",
            "etcd_lifeboat_verify_last_success_timestamp_seconds",
            "etcd_lifeboat_verifies_total",
            "etcd_lifeboat_build_info",
        ] {
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
        assert_eq!(base64url(b"ab"), "YWI=");
        assert_eq!(base64url(b"a"), "YQ==");
        assert_eq!(grouping_segment("instance", ""), "instance@base64/=");
    }
}
