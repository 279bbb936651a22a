//! The workloads of deploy/ run for real: the CronJob's two command lines (backup, then prune)
//! and the Deployment's daemon command line, each with its own ConfigMap's config, against a
//! real etcd 3.5 with TLS and client-certificate auth (tests/common harness).
//!
//! Only what cannot exist on a test machine is rewritten in the configs: the etcd endpoints and
//! certificate paths (to the test cluster's), the S3 store (to a local store in a temp dir; S3
//! is covered by the store tests), temp_dir, schedule (every 2 s) and election name. Everything
//! else (timeouts, compression, retention, leader election) and the container args are used as
//! shipped; the args only get the config path replaced. The daemon also gets the Deployment's
//! environment as a pod would: the downward API's pod IP is 127.0.0.2 and its node IP
//! 127.0.0.1, the ports 2379 and 9790 become the test's.

use crate::common;

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::prometheus::Prometheus;
use crate::common::{Etcd, EtcdOpts};
use crate::deploy_support::*;

#[test]
fn cronjob_backup_then_prune_with_its_configmap() {
    let etcd = Etcd::start(EtcdOpts {
        tls: true,
        ..Default::default()
    });
    etcd.etcdctl_ok(&["put", "/registry/namespaces/default", "v"]);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = configmap_config(
        "deploy/cronjob/configmap.yaml",
        &etcd.endpoints(),
        &etcd.certs.as_ref().unwrap().client_files(),
        tmp.path(),
    );
    let config = write_config(tmp.path(), &cfg);
    let cj = yaml("deploy/cronjob/cronjob.yaml");

    for container in ["backup", "prune"] {
        let args = container_args(&cj, container, &config);
        let out = common::lifeboat().args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{container}: `etcd-lifeboat {}` exit {:?}\n{}{}",
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // --log-format json: every log line on stderr is a JSON object.
        for line in String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| !l.trim().is_empty())
        {
            assert!(
                serde_json::from_str::<serde_json::Value>(line).is_ok(),
                "{container}: not a JSON log line: {line}"
            );
        }
    }
    let out = common::lifeboat()
        .arg("--config")
        .arg(&config)
        .args(["list", "--output", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "list --output json: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let n = list
        .as_array()
        .map(|a| a.len())
        .or_else(|| list["backups"].as_array().map(|a| a.len()));
    assert_eq!(
        n,
        Some(1),
        "one backup in the store after one CronJob run: {list}"
    );
}

/// The pod IP the daemon gets from the downward API in these tests (loopback, but not
/// 127.0.0.1, so that listening on 0.0.0.0 or 127.0.0.1 instead would show).
const POD_IP: &str = "127.0.0.2";

/// GET `path` on `host:port`; `None` when nothing answers.
fn http_get_at(host: &str, port: u16, path: &str) -> Option<(u16, String)> {
    common::net::get_at(format!("{host}:{port}"), path)
}

fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn deployment_daemon_with_its_configmap_backs_up_and_serves_what_the_rules_use() {
    let etcd = Etcd::start(EtcdOpts {
        tls: true,
        ..Default::default()
    });
    etcd.etcdctl_ok(&["put", "/registry/namespaces/default", "v"]);
    let tmp = tempfile::tempdir().unwrap();
    let dep = yaml("deploy/daemon/deployment.yaml");
    let (mut daemon, port) = spawn_daemon(&etcd, tmp.path());
    let daemon_log = || std::fs::read_to_string(tmp.path().join("daemon.log")).unwrap_or_default();
    let metrics = http_get_at(POD_IP, port, "/metrics").unwrap().1;
    // It listens on the pod IP only (ETCD_LIFEBOAT_HTTP_LISTEN=$(POD_IP):9790), not on every
    // address: 127.0.0.1 (another address of the same interface) is refused.
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the daemon answers on 127.0.0.1 too: it listens beyond its pod IP"
    );

    // The probes' path answers 200.
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    let probe_paths: Vec<&str> = ["livenessProbe", "readinessProbe"]
        .iter()
        .map(|p| c[*p]["httpGet"]["path"].as_str().unwrap())
        .collect();
    for p in probe_paths {
        let got = http_get_at(POD_IP, port, p).map(|(s, _)| s);
        assert_eq!(
            got,
            Some(200),
            "probe path {p}; daemon log:\n{}",
            daemon_log()
        );
    }
    // Every metric the alert rules use is served (by name; counters' _total included).
    let rules = read("deploy/prometheus/rules.yaml");
    // Comment lines name metric families with wildcards; only the rules themselves count.
    let rules: String = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let mut used: Vec<String> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("etcd_lifeboat_"))
        .map(String::from)
        .collect();
    used.sort();
    used.dedup();
    assert!(used.len() >= 6, "{used:?}");
    // The PITR families exist only with pitr.enabled, which this ConfigMap leaves off
    // (tests/pitr_clusters.rs checks them on a daemon with PITR).
    used.retain(|m| !m.starts_with("etcd_lifeboat_pitr_"));
    for m in &used {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(m.as_str()) && l[m.len()..].starts_with([' ', '{'])),
            "{m} (used by deploy/prometheus/rules.yaml) is not on /metrics:\n{metrics}"
        );
    }
    // The failure series exists from the start, so increase() sees the first failure.
    assert!(
        metrics.contains("etcd_lifeboat_backups_total{result=\"failure\"}"),
        "{metrics}"
    );

    // SIGTERM: exit 0 within the pod's terminationGracePeriodSeconds.
    let grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    let mut child = daemon.0.take().unwrap();
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let deadline = Instant::now() + Duration::from_secs(grace);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "daemon did not exit within {grace}s of SIGTERM; log:\n{}",
                daemon_log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "daemon exit {status:?} after SIGTERM; log:\n{}",
        daemon_log()
    );
}

/// Starts the Deployment's daemon command line with its ConfigMap's config (rewritten as the
/// other tests do) and the Deployment's literal environment (downward API: pod IP POD_IP, node
/// IP 127.0.0.1; ports 2379 and 9790 mapped to the test's), and waits until it leads and has
/// made a backup. Returns it and its port (on POD_IP).
fn spawn_daemon(etcd: &Etcd, tmp: &Path) -> (Daemon, u16) {
    let port = common::free_port();
    let daemon = Daemon::spawn(
        etcd.endpoints()[0].as_str(),
        &etcd.certs.as_ref().unwrap().client_files(),
        tmp,
        POD_IP,
        port,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((200, body)) = http_get_at(POD_IP, port, "/metrics") {
            if sample(&body, "etcd_lifeboat_is_leader") == Some(1.0)
                && sample(&body, "etcd_lifeboat_store_latest_backup_timestamp_seconds")
                    .is_some_and(|t| t > 0.0)
            {
                return (daemon, port);
            }
        }
        assert!(
            Instant::now() < deadline,
            "daemon: no leader with a backup within 60 s; log:\n{}",
            std::fs::read_to_string(tmp.join("daemon.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The alert rules evaluated by a real Prometheus against the real daemon, scraped as the
/// ServiceMonitor would (job="etcd-lifeboat"): every rule evaluates without error, the
/// expressions' selectors match the daemon's series (a label mismatch would leave an alert
/// silently dead), nothing fires or is pending while the daemon is healthy, and once it is
/// stopped EtcdLifeboatDaemonDown goes pending.
#[test]
fn alert_rules_on_a_real_prometheus_scraping_the_daemon() {
    let etcd = Etcd::start(EtcdOpts {
        tls: true,
        ..Default::default()
    });
    etcd.etcdctl_ok(&["put", "/registry/namespaces/default", "v"]);
    let tmp = tempfile::tempdir().unwrap();
    let (mut daemon, port) = spawn_daemon(&etcd, tmp.path());
    let rules = repo().join("deploy/prometheus/rules.yaml");
    let prom = Prometheus::start(&format!("{POD_IP}:{port}"), &[&rules]);

    // Wait for scrapes and several rule evaluations.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = prom.query("sum(up{job=\"etcd-lifeboat\"})").unwrap();
        let rules = prom.api("/api/v1/rules");
        let evaluated = rules["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().iter())
            .all(|r| {
                r["lastEvaluation"]
                    .as_str()
                    .is_some_and(|t| !t.starts_with("0001"))
            });
        if evaluated && up.first().is_some_and(|s| s["value"][1] == "1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus did not scrape and evaluate in 60 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(3));
    // Every rule is healthy (evaluates without error) and inactive.
    let rules = prom.api("/api/v1/rules");
    let mut n = 0;
    for g in rules["data"]["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            n += 1;
            assert_eq!(
                r["health"], "ok",
                "rule {} does not evaluate: {}",
                r["name"], r["lastError"]
            );
            assert_eq!(
                r["state"], "inactive",
                "rule {} is {} on a healthy daemon: {r}",
                r["name"], r["state"]
            );
        }
    }
    let in_file = read("deploy/prometheus/rules.yaml")
        .lines()
        .filter(|l| {
            let l = l.trim_start();
            l.starts_with("- alert:") || l.starts_with("- record:")
        })
        .count();
    assert!(in_file >= 8);
    assert_eq!(n, in_file, "{rules}");
    // The selectors of the rules match what the daemon exports.
    let one = |q: &str| -> f64 {
        let r = prom.query(q).unwrap();
        assert_eq!(r.len(), 1, "{q}: {r:?}");
        r[0]["value"][1].as_str().unwrap().parse().unwrap()
    };
    assert_eq!(
        one("sum(etcd_lifeboat_is_leader{job=\"etcd-lifeboat\"})"),
        1.0
    );
    let age = one(
        "time() - max by (namespace, job) (etcd_lifeboat_store_latest_backup_timestamp_seconds)",
    );
    assert!((0.0..60.0).contains(&age), "backup age {age}");
    assert!(one("max by (namespace, job) (etcd_lifeboat_store_backups)") >= 1.0);
    assert_eq!(
        one("sum(increase(etcd_lifeboat_backups_total{result=\"failure\"}[1h]))"),
        0.0
    );
    assert!(one("sum(etcd_lifeboat_backups_total{result=\"success\"})") >= 1.0);
    assert_eq!(prom.query("etcd_lifeboat_backup_last_failure_timestamp_seconds > etcd_lifeboat_backup_last_success_timestamp_seconds").unwrap().len(), 0);
    assert!(
        prom.query("ALERTS").unwrap().is_empty(),
        "alerts on a healthy daemon: {:?}",
        prom.query("ALERTS").unwrap()
    );

    // Stop the daemon: EtcdLifeboatDaemonDown goes pending (it fires after its `for`).
    let mut child = daemon.0.take().unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pending = prom
            .query("ALERTS{alertname=\"EtcdLifeboatDaemonDown\",alertstate=\"pending\"}")
            .unwrap();
        if !pending.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "EtcdLifeboatDaemonDown not pending 30 s after the daemon stopped: {:?}",
            prom.query("ALERTS").unwrap()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
