//! A real Prometheus server (Debian's /usr/bin/prometheus) scrapes the daemon every second on
//! loopback; a recording rule of the backup age is answered through its HTTP API.
mod common;
mod daemon_support;

use std::time::Duration;

use common::*;
use daemon_support::*;
use etcd_lifeboat::daemon::DaemonOptions;

struct Prometheus {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_prometheus(target: std::net::SocketAddr) -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yml");
    std::fs::write(
        &rules,
        concat!(
            "groups:\n- name: etcd-lifeboat\n  interval: 1s\n  rules:\n",
            "  - record: etcd_lifeboat:backup_age_seconds\n",
            "    expr: time() - etcd_lifeboat_store_latest_backup_timestamp_seconds\n",
        ),
    )
    .unwrap();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [\"{}\"]\n\
             scrape_configs:\n- job_name: etcd-lifeboat\n  static_configs:\n  - targets: [\"{target}\"]\n",
            rules.display()
        ),
    )
    .unwrap();
    let check = std::process::Command::new("promtool")
        .arg("check")
        .arg("config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let child = std::process::Command::new("/usr/bin/prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start prometheus");
    Prometheus {
        child,
        port,
        _dir: dir,
    }
}

/// Instant query; the `result` array of the answer.
fn query(p: &Prometheus, q: &str) -> Vec<serde_json::Value> {
    let enc: String = q
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let addr = format!("127.0.0.1:{}", p.port).parse().unwrap();
    match http_get(addr, &format!("/api/v1/query?query={enc}")) {
        Ok((200, body)) => {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            v["data"]["result"].as_array().cloned().unwrap_or_default()
        }
        other => {
            eprintln!("query {q}: {other:?}");
            Vec::new()
        }
    }
}

fn value(r: &serde_json::Value) -> f64 {
    r["value"][1].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_and_records_backup_age() {
    let etcd = Etcd::start(EtcdOpts::default());
    fill(&etcd.client().await, 50, 128, "k/").await;
    let store = etcd.dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let yaml = etcd.config_yaml(&store)
        + "schedule:\n  cron: \"*/3 * * * * *\"\n\
           retention:\n  keep_last: 3\n  keep_hourly: 0\n  keep_daily: 0\n  keep_weekly: 0\n  keep_monthly: 0\n";
    let args = DaemonOptions {
        refresh_interval: Duration::from_secs(1),
        ..Default::default()
    };
    let d = InProcess::start(&yaml, args).await;
    let prom = start_prometheus(d.addr);

    let up = wait_for(
        "prometheus scrapes the daemon",
        Duration::from_secs(60),
        || {
            let r = query(&prom, "up{job=\"etcd-lifeboat\"}");
            (r.len() == 1 && value(&r[0]) == 1.0).then_some(r)
        },
    )
    .await;
    assert_eq!(up[0]["metric"]["instance"], d.addr.to_string());

    let age = wait_for("recorded backup age", Duration::from_secs(60), || {
        let r = query(&prom, "etcd_lifeboat:backup_age_seconds");
        (r.len() == 1 && value(&r[0]) < 30.0).then(|| value(&r[0]))
    })
    .await;
    assert!((0.0..30.0).contains(&age), "backup age {age}");
    wait_for(
        "success counter in Prometheus",
        Duration::from_secs(10),
        || {
            let r = query(&prom, "etcd_lifeboat_backups_total{result=\"success\"}");
            (r.len() == 1 && value(&r[0]) >= 1.0).then_some(())
        },
    )
    .await;
    wait_for("is_leader in Prometheus", Duration::from_secs(10), || {
        let r = query(&prom, "etcd_lifeboat_is_leader");
        (r.len() == 1 && value(&r[0]) == 1.0).then_some(())
    })
    .await;
    eprintln!("backup age recorded by Prometheus: {age:.1}s");
    d.stop().await;
}
