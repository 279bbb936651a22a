//! PITR with many clusters from one daemon (issue 16 with `clusters:`), against two real etcd
//! 3.5 servers on loopback and a daemon process with `pitr: {enabled: true, interval: 1s}`:
//! - each cluster's PITR metrics carry its `cluster` label and advance with its own writes
//!   only (last revision = that etcd's revision, events = that cluster's writes), and the
//!   exposition passes `promtool check metrics` with no lint finding;
//! - a compaction break on cluster `pb` (its watch reconnects past a compaction) counts
//!   `etcd_lifeboat_pitr_chain_breaks_total{reason="compacted",cluster="pb"}` and makes
//!   `/readyz` fail naming `pb` and the break, never `pa`, until `pb`'s new chain (on a new
//!   base) has stored a delta.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::daemon_support::*;
use etcd_lifeboat::config::{Backend, LocalConfig, StorageConfig};
use etcd_lifeboat::pitr::chain::read_chain;
use etcd_lifeboat::store::manifest::{catalog, Manifest};
use etcd_lifeboat::store::Store;

/// A TCP proxy that can cut its clients off: while `blocked`, live connections are shut down
/// and new ones closed at once (the client sees a dead endpoint, not a hanging one).
struct Gate {
    addr: SocketAddr,
    blocked: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Gate {
    fn start(target: SocketAddr) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let blocked = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (b, c) = (blocked.clone(), conns.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                if b.load(Ordering::SeqCst) {
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                {
                    let mut all = c.lock().unwrap();
                    all.push(client.try_clone().unwrap());
                    all.push(server.try_clone().unwrap());
                }
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || pump(c2, s2));
                std::thread::spawn(move || pump(server, client));
            }
        });
        Gate {
            addr,
            blocked,
            conns,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn block(&self) {
        self.blocked.store(true, Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn open(&self) {
        self.blocked.store(false, Ordering::SeqCst);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

fn local_store(rt: &tokio::runtime::Runtime, dir: &Path) -> Store {
    let s = StorageConfig {
        backend: Backend::Local,
        local: LocalConfig {
            path: dir.to_path_buf(),
        },
        ..Default::default()
    };
    rt.block_on(Store::from_config(&s)).unwrap()
}

async fn bases(store: &Store) -> Vec<Manifest> {
    catalog(store).await.unwrap().backups
}

use crate::daemon_support::cluster_sample as m;

/// Puts `n` keys under `prefix` and returns the revision of the last.
async fn puts(c: &etcd_client::Client, prefix: &str, n: usize) -> i64 {
    let mut kv = c.kv_client();
    let mut rev = 0;
    for i in 0..n {
        rev = kv
            .put(format!("{prefix}{i:03}"), "v", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
    }
    rev
}

/// `/readyz` (status, JSON body).
fn readyz(d: &DaemonProc) -> (u16, serde_json::Value) {
    let (code, body) = http_get(d.addr, "/readyz").unwrap();
    (code, serde_json::from_str(&body).unwrap())
}

fn pitr_check(body: &serde_json::Value, c: &str) -> serde_json::Value {
    body["clusters"][c]["checks"]["pitr"].clone()
}

#[test]
fn two_clusters_metrics_per_cluster_and_readyz_names_the_broken_chain() {
    let t0 = Instant::now();
    let (ea, eb) = (
        Etcd::start(EtcdOpts::default()),
        Etcd::start(EtcdOpts::default()),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (ca, cb) = rt.block_on(async { (ea.client().await, eb.client().await) });
    // Different histories, so a gauge of one cluster cannot pass for the other's.
    rt.block_on(fill(&ca, 120, 64, "pre/"));
    rt.block_on(fill(&cb, 10, 64, "pre/"));
    let gate = Gate::start(
        eb.endpoints()[0]
            .trim_start_matches("http://")
            .parse()
            .unwrap(),
    );
    let root = ea.dir.path().join("store");
    std::fs::create_dir_all(&root).unwrap();
    let port = free_port();
    let yaml = format!(
        "storage:\n  backend: local\n  local:\n    path: {}\n\
         schedule:\n  cron: \"0 0 1 1 *\"\n\
         pitr:\n  enabled: true\n  interval: 1s\n  idle_interval: 2s\n\
         http:\n  listen: \"127.0.0.1:{port}\"\n  max_backup_age: 1h\n\
         clusters:\n\
         \x20 - name: pa\n\
         \x20   etcd: {{endpoints: [\"{}\"], dial_timeout: 2s, request_timeout: 3s}}\n\
         \x20 - name: pb\n\
         \x20   etcd: {{endpoints: [\"{}\"], dial_timeout: 2s, request_timeout: 3s}}\n",
        root.display(),
        ea.endpoints()[0],
        gate.url(),
    );
    let cfg = ea.dir.path().join("daemon.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let d = DaemonProc::spawn(
        &cfg,
        format!("127.0.0.1:{port}").parse().unwrap(),
        "--refresh-interval 1s --retry-backoff 1s",
        &ea.dir.path().join("daemon.log"),
    );
    let (store_a, store_b) = (
        local_store(&rt, &root.join("pa")),
        local_store(&rt, &root.join("pb")),
    );
    // Both bases (the first scheduled run of each cluster, on its empty store).
    wait("a base of each cluster", Duration::from_secs(20), || {
        rt.block_on(async {
            !bases(&store_a).await.is_empty() && !bases(&store_b).await.is_empty()
        })
    });
    let base_b = rt.block_on(bases(&store_b)).remove(0);

    // 1. Writes to each cluster: each one's gauges follow its own etcd.
    let ra = rt.block_on(puts(&ca, "a/", 30));
    let rb = rt.block_on(puts(&cb, "b/", 7));
    assert!(ra > rb + 100);
    let text = wait_metrics(&d, "both chains reach the writes", |t| {
        m(t, "etcd_lifeboat_pitr_last_revision", "", "pa") == Some(ra as f64)
            && m(t, "etcd_lifeboat_pitr_last_revision", "", "pb") == Some(rb as f64)
    });
    assert_eq!(
        m(&text, "etcd_lifeboat_pitr_events_total", "", "pa"),
        Some(30.0),
        "{text}"
    );
    assert_eq!(
        m(&text, "etcd_lifeboat_pitr_events_total", "", "pb"),
        Some(7.0),
        "{text}"
    );
    for c in ["pa", "pb"] {
        assert!(
            m(&text, "etcd_lifeboat_pitr_stored_bytes_total", "", c).unwrap() > 0.0,
            "{c}: {text}"
        );
        assert!(
            m(&text, "etcd_lifeboat_pitr_lag_seconds", "", c).unwrap() < 30.0,
            "{c}: {text}"
        );
        for reason in ["compacted", "gap", "outage"] {
            assert_eq!(
                m(
                    &text,
                    "etcd_lifeboat_pitr_chain_breaks_total",
                    &format!("reason=\"{reason}\""),
                    c
                ),
                Some(0.0),
                "{c} {reason}: {text}"
            );
        }
    }
    // No PITR series without the cluster label (one series per cluster, none shared).
    for name in [
        "etcd_lifeboat_pitr_last_revision",
        "etcd_lifeboat_pitr_lag_seconds",
        "etcd_lifeboat_pitr_events_total",
        "etcd_lifeboat_pitr_stored_bytes_total",
        "etcd_lifeboat_pitr_chain_breaks_total",
    ] {
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .collect();
        assert!(
            !lines.is_empty() && lines.iter().all(|l| l.contains("cluster=\"")),
            "{name}: {lines:?}"
        );
    }
    // Every PITR metric the alert rules use is served.
    let rules = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/rules.yaml"),
    )
    .unwrap();
    // (Comment lines name the families with a wildcard; only the rules count.)
    let rules: String = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let used: std::collections::BTreeSet<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("etcd_lifeboat_pitr_"))
        .collect();
    assert_eq!(used.len(), 2, "{used:?}");
    for name in used {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{name}{{"))),
            "{name} (used by the rules) is not on /metrics"
        );
    }
    let lint = promtool_check(&text);
    assert!(lint.trim().is_empty(), "promtool lint findings: {lint}");
    let (_, body) = readyz(&d);
    for c in ["pa", "pb"] {
        assert_eq!(pitr_check(&body, c)["ok"], true, "{c}: {body}");
    }

    // 2. Only pa is written to: pa advances, pb stays at its revision.
    let ra2 = rt.block_on(puts(&ca, "a2/", 12));
    let text = wait_metrics(&d, "pa's chain reaches its new writes", |t| {
        m(t, "etcd_lifeboat_pitr_last_revision", "", "pa") == Some(ra2 as f64)
    });
    assert_eq!(
        m(&text, "etcd_lifeboat_pitr_events_total", "", "pa"),
        Some(42.0)
    );
    assert_eq!(
        m(&text, "etcd_lifeboat_pitr_last_revision", "", "pb"),
        Some(rb as f64)
    );
    assert_eq!(
        m(&text, "etcd_lifeboat_pitr_events_total", "", "pb"),
        Some(7.0)
    );

    // 3. pb's watch is cut off; meanwhile pb's history is compacted past its chain's next
    //    revision; the reconnected watch is cancelled ("compacted"): the chain breaks.
    gate.block();
    let c = rt.block_on(async {
        let r = puts(&cb, "b3/", 20).await;
        cb.kv_client()
            .compact(
                r,
                Some(etcd_client::CompactionOptions::new().with_physical()),
            )
            .await
            .unwrap();
        r
    });
    gate.open();
    // /readyz fails naming pb and the break, and never pa.
    let mut broken_seen = None;
    wait(
        "/readyz reports pb's broken chain",
        Duration::from_secs(20),
        || {
            let (code, body) = readyz(&d);
            if pitr_check(&body, "pb")["ok"] == false {
                broken_seen = Some((code, body));
                return true;
            }
            false
        },
    );
    let (code, body) = broken_seen.unwrap();
    assert_eq!(code, 503, "{body}");
    assert_eq!(pitr_check(&body, "pa")["ok"], true, "{body}");
    let detail = pitr_check(&body, "pb")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        detail.contains(&format!("PITR chain of backup {}", base_b.id))
            && detail.contains("compacted")
            && detail.contains(&format!("r{c}")),
        "{detail}"
    );
    let reasons: Vec<String> = body["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("pb: pitr: PITR chain of backup")),
        "{reasons:?}"
    );
    assert!(
        !reasons.iter().any(|r| r.starts_with("pa: ")),
        "{reasons:?}"
    );
    let text = d.metrics();
    assert_eq!(
        m(
            &text,
            "etcd_lifeboat_pitr_chain_breaks_total",
            "reason=\"compacted\"",
            "pb"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        m(
            &text,
            "etcd_lifeboat_pitr_chain_breaks_total",
            "reason=\"compacted\"",
            "pa"
        ),
        Some(0.0),
        "{text}"
    );
    let old = rt.block_on(read_chain(&store_b, &base_b)).unwrap();
    assert_eq!(
        old.closed.as_ref().map(|x| x.reason.as_str()),
        Some("compacted")
    );

    // It stays failed until pb's new chain (on a new base at or after the compaction) has
    // a delta; then pb's pitr check passes again.
    let deadline = Instant::now() + Duration::from_secs(20);
    let new_chain = loop {
        assert!(
            Instant::now() < deadline,
            "pb's pitr check never recovered:\n{}",
            d.log_text()
        );
        let (_, body) = readyz(&d);
        let ok = pitr_check(&body, "pb")["ok"] == true;
        let new = rt.block_on(async {
            let b = bases(&store_b)
                .await
                .into_iter()
                .find(|m| m.id != base_b.id && m.revision >= c)?;
            Some(read_chain(&store_b, &b).await.unwrap())
        });
        if ok {
            let ch = new.expect("pb's pitr check passed before a new base existed");
            assert!(
                ch.delta_count >= 1,
                "pb's pitr check passed before its new chain had a delta: {:?}",
                ch.summary()
            );
            break ch;
        }
        assert_eq!(pitr_check(&body, "pa")["ok"], true, "{body}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(new_chain.closed.is_none() && new_chain.gaps.is_empty());
    let text = d.metrics();
    assert_eq!(
        m(
            &text,
            "etcd_lifeboat_pitr_chain_breaks_total",
            "reason=\"compacted\"",
            "pb"
        ),
        Some(1.0)
    );
    drop(d);
    eprintln!("took {:?}", t0.elapsed());
}

/// Polls `/metrics` until `f` holds on it (20 s), returning that text.
fn wait_metrics(d: &DaemonProc, what: &str, f: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let t = d.metrics();
        if f(&t) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "timed out: {what}\n{t}\n--- daemon log:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
