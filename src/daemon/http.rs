//! The daemon's HTTP endpoints (axum, HTTP/1.1) on `http.listen`:
//! - `GET /metrics`: Prometheus text format ([`crate::metrics::encode`]);
//! - `GET /healthz`: 200 `ok` while the process serves requests;
//! - `GET /readyz`: 200 when ready, 503 otherwise, with a JSON body naming each check:
//!   `config` (loaded), `store` (last catalog read succeeded), `backup_age` (newest backup in
//!   the store younger than `http.max_backup_age`; future-dated backups do not count),
//!   `last_run` (this replica's last backup run, if any, succeeded), `future_backups` (no
//!   backup dated more than `store.future_tolerance` ahead), `manifests` (no broken manifest),
//!   `verify` (this replica's last re-verification of the newest backup, if any, succeeded),
//!   and with `pitr.enabled` `pitr` (the PITR chain is not broken: it fails from a break,
//!   compaction, gap or outage, until the new chain has stored its first delta, and names the
//!   break: `pitr: PITR chain of backup <id> broken at r<N> (compacted: ...)`).
//!   `warnings` lists what does not fail readiness but needs fixing (a store root or temp dir
//!   that other users can read, with the `chmod` that fixes it).
//!   Example:
//!   `{"ready":false,"reasons":["backup_age: newest backup ... is 7300s old, max 7200s"],"checks":{...},"leader":true}`.
//!   `cluster` names the cluster: its `name`, else (a single unnamed cluster) the etcd
//!   cluster id of its newest backup, once there is one.
//!   With `clusters:` the body is `{"ready":..,"reasons":["<cluster>: <check>: ..."],
//!   "clusters":{"<name>":{<the body above>},...}}`, and the status is 503 when any cluster
//!   is not ready (each cluster is its own backup target; a dead one must page).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// What `/readyz` reports on; updated by the scheduler and the catalog refresher.
#[derive(Debug, Default, Clone)]
pub struct Health {
    /// Last catalog read: `Ok(())` or the error text. `None`: not read yet.
    pub store: Option<Result<(), String>>,
    /// Newest backup in the store: id and `finished_at`.
    pub newest: Option<(String, DateTime<Utc>)>,
    /// Backups in the store at the last read.
    pub backups: usize,
    /// This replica's last run: when it ended, and `Ok` or the error text.
    pub last_run: Option<(DateTime<Utc>, Result<String, String>)>,
    /// Whether this replica is leader (or election is disabled).
    pub leader: bool,
    /// Next scheduled slot.
    pub next_run: Option<DateTime<Utc>>,
    /// Future-dated backups at the last read: `<id> (finished_at <time>)`.
    pub future: Vec<String>,
    /// Broken manifests at the last read: `<key>: <reason>`.
    pub broken: Vec<String>,
    /// This replica's last re-verification: when it ended, and `Ok(id)` or the error text.
    pub last_verify: Option<(DateTime<Utc>, Result<String, String>)>,
    /// Warnings that do not fail readiness (a store root or temp dir other users can read).
    pub warnings: Vec<String>,
    /// The election's name when leader election is on (for `current_leader`).
    pub election: Option<String>,
    /// The cluster's name (`name` or an entry of `clusters`); `None` for an unnamed cluster,
    /// which `/readyz` then names by the etcd cluster id of its newest backup, once known.
    pub name: Option<String>,
    /// The etcd cluster id (hex, as the store's keys have it) of the newest backup.
    pub cluster_id: Option<String>,
    /// The cluster's PITR capture state, when `pitr.enabled` (the `pitr` check).
    pub pitr: Option<Arc<crate::pitr::capture::Status>>,
}

/// One cluster as `/readyz` reports it.
#[derive(Debug, Clone)]
pub struct ClusterHealth {
    /// The cluster's name; `None` for the single cluster of a config without `clusters:`
    /// (then `/readyz` has the single-cluster body).
    pub name: Option<String>,
    /// The state its tasks update.
    pub health: SharedHealth,
    /// Its `http.max_backup_age`.
    pub max_age: Duration,
}

/// Shared health state.
pub type SharedHealth = Arc<Mutex<Health>>;

#[derive(Clone)]
struct AppState {
    clusters: Arc<Vec<ClusterHealth>>,
}

#[derive(Serialize)]
struct Check {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

#[derive(Serialize)]
struct Readiness {
    /// The cluster's name, else its etcd cluster id once a backup is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<String>,
    ready: bool,
    reasons: Vec<String>,
    checks: std::collections::BTreeMap<&'static str, Check>,
    leader: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    current_leader: Option<String>,
    store_backups: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    newest_backup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    newest_backup_age_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_run: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    future_backups: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    broken_manifests: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

/// The check of this replica's last run of something (a backup, a re-verification): ok when
/// there was none yet or it succeeded (`backup <id> <done>at <time>`), failed otherwise
/// (`<failed> at <time>: <error>`).
fn last_outcome(
    last: &Option<(DateTime<Utc>, Result<String, String>)>,
    none: &str,
    done: &str,
    failed: &str,
) -> Check {
    match last {
        None => Check {
            ok: true,
            detail: Some(none.into()),
        },
        Some((at, Ok(id))) => Check {
            ok: true,
            detail: Some(format!("backup {id} {done}at {}", at.to_rfc3339())),
        },
        Some((at, Err(e))) => Check {
            ok: false,
            detail: Some(format!("{failed} at {}: {e}", at.to_rfc3339())),
        },
    }
}

/// Ok when `list` is empty; failed with `describe(list)` otherwise.
fn none_listed(list: &[String], describe: impl Fn(&[String]) -> String) -> Check {
    if list.is_empty() {
        Check {
            ok: true,
            detail: None,
        }
    } else {
        Check {
            ok: false,
            detail: Some(describe(list)),
        }
    }
}

fn readiness(h: &Health, max_age: Duration, now: DateTime<Utc>) -> Readiness {
    let mut checks = std::collections::BTreeMap::new();
    checks.insert(
        "config",
        Check {
            ok: true,
            detail: None,
        },
    );
    let store = match &h.store {
        None => Check {
            ok: false,
            detail: Some("store not read yet".into()),
        },
        Some(Ok(())) => Check {
            ok: true,
            detail: None,
        },
        Some(Err(e)) => Check {
            ok: false,
            detail: Some(format!("store unreachable: {e}")),
        },
    };
    checks.insert("store", store);
    let age = h
        .newest
        .as_ref()
        .map(|(_, t)| now.signed_duration_since(*t).num_seconds());
    let age_check = match (&h.newest, age) {
        (Some((id, _)), Some(a)) if a <= max_age.as_secs() as i64 => Check {
            ok: true,
            detail: Some(format!("newest backup {id} is {a}s old")),
        },
        (Some((id, _)), Some(a)) => Check {
            ok: false,
            detail: Some(format!(
                "newest backup {id} is {a}s old, max {}s (http.max_backup_age)",
                max_age.as_secs()
            )),
        },
        _ => Check {
            ok: false,
            detail: Some("no backup in the store".into()),
        },
    };
    checks.insert("backup_age", age_check);
    let run = last_outcome(
        &h.last_run,
        "no run by this replica yet",
        "",
        "last backup run failed",
    );
    checks.insert("last_run", run);
    checks.insert(
        "future_backups",
        none_listed(&h.future, |list| {
            format!(
                "{} backups dated in the future, ignored for age and scheduling (a writer's clock is ahead; fix its NTP): {}",
                list.len(),
                list.join(", ")
            )
        }),
    );
    checks.insert(
        "manifests",
        none_listed(&h.broken, |list| {
            format!(
                "{} broken manifests, left alone by prune (see `etcd-lifeboat list`): {}",
                list.len(),
                list.join("; ")
            )
        }),
    );
    let verify = last_outcome(
        &h.last_verify,
        "no re-verification by this replica yet",
        "verified ",
        "re-verification failed",
    );
    checks.insert("verify", verify);
    if let Some(p) = &h.pitr {
        let check = match p.broken_chain() {
            None => Check {
                ok: true,
                detail: None,
            },
            Some(why) => Check {
                ok: false,
                detail: Some(why),
            },
        };
        checks.insert("pitr", check);
    }
    let reasons: Vec<String> = checks
        .iter()
        .filter(|(_, c)| !c.ok)
        .map(|(k, c)| format!("{k}: {}", c.detail.as_deref().unwrap_or("failed")))
        .collect();
    Readiness {
        cluster: h.name.clone().or_else(|| h.cluster_id.clone()),
        ready: reasons.is_empty(),
        reasons,
        checks,
        leader: h.leader,
        current_leader: h
            .election
            .as_deref()
            .and_then(super::election::current_leader_of),
        store_backups: h.backups,
        newest_backup: h.newest.as_ref().map(|(id, _)| id.clone()),
        newest_backup_age_seconds: age,
        next_run: h.next_run,
        future_backups: h.future.clone(),
        broken_manifests: h.broken.clone(),
        warnings: h.warnings.clone(),
    }
}

async fn metrics_handler() -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::encode(),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// The `/readyz` body with `clusters:`: ready when every cluster is; `reasons` prefixed
/// with the cluster's name; each cluster's own body under `clusters.<name>`.
#[derive(Serialize)]
struct MultiReadiness {
    ready: bool,
    reasons: Vec<String>,
    clusters: std::collections::BTreeMap<String, Readiness>,
}

fn multi_readiness(clusters: &[ClusterHealth], now: DateTime<Utc>) -> MultiReadiness {
    let mut out = MultiReadiness {
        ready: true,
        reasons: Vec::new(),
        clusters: std::collections::BTreeMap::new(),
    };
    for c in clusters {
        let h = c.health.lock().expect("health lock").clone();
        let r = readiness(&h, c.max_age, now);
        let name = c.name.clone().unwrap_or_default();
        out.ready &= r.ready;
        out.reasons
            .extend(r.reasons.iter().map(|x| format!("{name}: {x}")));
        out.clusters.insert(name, r);
    }
    out
}

async fn readyz(State(st): State<AppState>) -> Response {
    let now = Utc::now();
    let (ready, body) = match st.clusters.as_slice() {
        [one] if one.name.is_none() => {
            let h = one.health.lock().expect("health lock").clone();
            let r = readiness(&h, one.max_age, now);
            (r.ready, serde_json::to_string_pretty(&r))
        }
        all => {
            let r = multi_readiness(all, now);
            (r.ready, serde_json::to_string_pretty(&r))
        }
    };
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = body.expect("readiness serializes") + "\n";
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The router with the three endpoints; `/readyz` reports on `clusters`.
pub fn router(clusters: Vec<ClusterHealth>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState {
            clusters: Arc::new(clusters),
        })
}

/// `http.listen` cannot be bound.
#[derive(Debug, thiserror::Error)]
#[error("http.listen: cannot listen on {listen}: {source}; pick a free address")]
pub struct ListenError {
    /// The configured address.
    pub listen: String,
    /// The cause (address in use, permission denied, bad address).
    pub source: std::io::Error,
}

/// Binds `listen` and serves until `shutdown`. Returns once the socket is bound (the server
/// runs in a task whose handle is returned).
///
/// Errors: the address cannot be bound (in use, permission), naming `http.listen`.
pub async fn serve(
    listen: &str,
    clusters: Vec<ClusterHealth>,
    shutdown: CancellationToken,
) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>), ListenError> {
    let err = |source| ListenError {
        listen: listen.to_string(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(err)?;
    let addr = listener.local_addr().map_err(err)?;
    let app = router(clusters);
    let handle = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "http server failed");
        }
    });
    Ok((addr, handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_reasons() {
        let now = Utc::now();
        let mut h = Health::default();
        let r = readiness(&h, Duration::from_secs(3600), now);
        assert!(!r.ready);
        assert_eq!(r.reasons.len(), 2, "{:?}", r.reasons);
        h.store = Some(Ok(()));
        h.newest = Some(("x".into(), now - chrono::Duration::seconds(10)));
        assert!(readiness(&h, Duration::from_secs(3600), now).ready);
        let r = readiness(&h, Duration::from_secs(5), now);
        assert!(!r.ready);
        assert!(
            r.reasons[0].starts_with("backup_age: newest backup x is 10s old, max 5s"),
            "{:?}",
            r.reasons
        );
        h.last_run = Some((now, Err("etcd down".into())));
        let r = readiness(&h, Duration::from_secs(3600), now);
        assert!(r.reasons[0].contains("etcd down"), "{:?}", r.reasons);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["checks"]["last_run"]["ok"], false);

        h.last_run = None;
        h.future =
            vec!["20281122T230000Z-r0000000000000001 (finished_at 2028-11-22T23:00:05Z)".into()];
        h.broken = vec!["c/x.json: not a manifest: EOF".into()];
        h.last_verify = Some((now, Err("sha256 mismatch".into())));
        let r = readiness(&h, Duration::from_secs(3600), now);
        assert!(!r.ready);
        let json = serde_json::to_value(&r).unwrap();
        for check in ["future_backups", "manifests", "verify"] {
            assert_eq!(json["checks"][check]["ok"], false, "{check}: {json}");
        }
        assert_eq!(json["broken_manifests"][0], "c/x.json: not a manifest: EOF");
        assert!(
            r.reasons
                .iter()
                .any(|r| r.starts_with("future_backups: 1 backups dated in the future")),
            "{:?}",
            r.reasons
        );
        assert!(
            r.reasons.iter().any(|r| r.contains("sha256 mismatch")),
            "{:?}",
            r.reasons
        );
    }

    #[test]
    fn pitr_check_follows_the_clusters_broken_chain() {
        let now = Utc::now();
        let ok = Health {
            store: Some(Ok(())),
            newest: Some(("x".into(), now)),
            ..Health::default()
        };
        // Without PITR there is no pitr check.
        let r = readiness(&ok, Duration::from_secs(3600), now);
        assert!(r.ready && !r.checks.contains_key("pitr"));
        // (The unlabelled set: a named one would change what other unit tests encode.)
        let (sa, sb) = (
            crate::pitr::capture::Status::new(crate::metrics::metrics()),
            crate::pitr::capture::Status::new(crate::metrics::metrics()),
        );
        let health = |s: &Arc<crate::pitr::capture::Status>, name: &str| {
            Arc::new(Mutex::new(Health {
                pitr: Some(s.clone()),
                name: Some(name.into()),
                ..ok.clone()
            }))
        };
        let clusters = [
            ClusterHealth {
                name: Some("a".into()),
                health: health(&sa, "a"),
                max_age: Duration::from_secs(3600),
            },
            ClusterHealth {
                name: Some("b".into()),
                health: health(&sb, "b"),
                max_age: Duration::from_secs(3600),
            },
        ];
        let r = multi_readiness(&clusters, now);
        assert!(r.ready, "{:?}", r.reasons);
        assert!(r.clusters["a"].checks["pitr"].ok);
        sb.set_broken(Some(
            "PITR chain of backup B broken at r9 (gap: ...)".into(),
        ));
        let r = multi_readiness(&clusters, now);
        assert!(!r.ready);
        assert_eq!(
            r.reasons,
            ["b: pitr: PITR chain of backup B broken at r9 (gap: ...)"]
        );
        assert!(r.clusters["a"].checks["pitr"].ok);
        sb.set_broken(None);
        assert!(multi_readiness(&clusters, now).ready);
    }
}
