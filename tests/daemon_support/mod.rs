//! Helpers shared by the daemon tests: in-process daemons, a tiny HTTP client, waiting.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use etcd_lifeboat::config::Config;
use etcd_lifeboat::daemon::{run_with_shutdown, DaemonArgs};
use tokio_util::sync::CancellationToken;

/// GET `path` on `addr` (HTTP/1.1, Connection: close): status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = match text.split_once("\r\n\r\n") {
        Some((_, b)) => b.to_string(),
        None => String::new(),
    };
    Ok((status, body))
}

/// Polls `f` every 100 ms until it returns `Some`, panicking with `what` after `limit`.
pub async fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Value of the first sample line of `name` (with exact label set text, e.g.
/// `etcd_lifeboat_backups_total{result="success"}`) in a text exposition.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == name).then(|| v.parse().ok()).flatten()
        })
}

/// Runs `promtool check metrics` on `text`; returns its combined output, panicking on failure.
pub fn promtool_check(text: &str) -> String {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool installed");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool check metrics failed:\n{all}\n---\n{text}");
    all
}

/// A daemon running in this process on a loopback port.
pub struct InProcess {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    /// Starts `run_with_shutdown` with `yaml` (http.listen forced to 127.0.0.1:0).
    pub async fn start(yaml: &str, args: DaemonArgs) -> InProcess {
        let mut cfg = Config::from_yaml(yaml, "test.yaml").expect("test config parses");
        cfg.http.listen = "127.0.0.1:0".into();
        cfg.validate().expect("test config valid");
        let shutdown = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(run_with_shutdown(args, cfg, shutdown.clone(), Some(tx)));
        let addr = tokio::time::timeout(Duration::from_secs(20), rx)
            .await
            .expect("daemon binds in time")
            .expect("daemon bound");
        InProcess { addr, shutdown, task }
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path).expect("daemon answers HTTP")
    }

    pub fn metrics(&self) -> String {
        let (code, body) = self.get("/metrics");
        assert_eq!(code, 200);
        body
    }

    /// Cancels and waits; panics unless `run` returned Ok within 30 s.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("daemon stops within 30s")
            .expect("daemon task")
            .expect("daemon run returns Ok");
    }
}

/// Manifests (`*.json`) under a local store directory, sorted.
pub fn manifests_in(store: &Path) -> Vec<String> {
    files_with(store, ".json")
}

/// Data objects (`*.db.zst`) under a local store directory, sorted.
pub fn data_in(store: &Path) -> Vec<String> {
    files_with(store, ".db.zst")
}

fn files_with(store: &Path, suffix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(store) else { return out };
    for d in rd.flatten() {
        if d.path().is_dir() {
            for f in std::fs::read_dir(d.path()).unwrap().flatten() {
                let n = f.file_name().to_string_lossy().into_owned();
                if n.ends_with(suffix) && !n.starts_with('.') {
                    out.push(n);
                }
            }
        }
    }
    out.sort();
    out
}
