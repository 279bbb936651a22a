//! A real Prometheus server (Debian's /usr/bin/prometheus, `PROMETHEUS` overrides) on a free
//! loopback port in a temp dir, killed on Drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::net;

/// A running Prometheus.
pub struct Prometheus {
    child: Child,
    /// Its HTTP port on 127.0.0.1.
    pub port: u16,
    /// Its config, TSDB and log (`prometheus.log`).
    pub dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrapes `target` (`host:port`) every second as job "etcd-lifeboat" with the label
    /// `namespace="kube-system"` (as the ServiceMonitor does), evaluating `rule_files` every
    /// second. The config passes `promtool check config`; returns once `/-/ready` answers 200
    /// (30 s at most, else panics with the log).
    pub fn start(target: &str, rule_files: &[&Path]) -> Prometheus {
        let bin = std::env::var_os("PROMETHEUS")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/usr/bin/prometheus".into());
        assert!(
            bin.is_file(),
            "{} not found (Debian package prometheus): run scripts/install.sh",
            bin.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let rules: Vec<String> = rule_files
            .iter()
            .map(|r| format!("\"{}\"", r.display()))
            .collect();
        let conf = dir.path().join("prometheus.yml");
        std::fs::write(
            &conf,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 rule_files: [{}]\n\
                 scrape_configs:\n  - job_name: etcd-lifeboat\n    static_configs:\n      - targets: [\"{target}\"]\n        labels: {{namespace: kube-system}}\n",
                rules.join(", ")
            ),
        )
        .unwrap();
        let check = Command::new("promtool")
            .args(["check", "config"])
            .arg(&conf)
            .output()
            .expect("promtool runs (Debian package prometheus)");
        assert!(
            check.status.success(),
            "promtool check config:\n{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let port = net::free_port();
        let log_path = dir.path().join("prometheus.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let p = Prometheus { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(p.get("/-/ready"), Some((200, _))) {
            assert!(
                Instant::now() < deadline,
                "prometheus not ready; log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    /// GET `path` on this server: status and body, `None` when it does not answer.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        net::get_at(format!("127.0.0.1:{}", self.port), path)
    }

    /// GET an API `path` (e.g. `/api/v1/rules`) as JSON; panics unless it answers 200.
    pub fn api(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.get(path).expect("prometheus answers");
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Instant query `q`: the result vector, or the error (status and body, or no answer).
    pub fn query(&self, q: &str) -> Result<Vec<serde_json::Value>, String> {
        let path = format!("/api/v1/query?query={}", net::urlencode(q));
        let (status, body) = self.get(&path).ok_or("no answer")?;
        if status != 200 {
            return Err(format!("{status}: {body}"));
        }
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }
}
