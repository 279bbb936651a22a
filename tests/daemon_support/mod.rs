//! Helpers shared by the daemon tests (with `mod common;`): in-process daemons and daemon
//! processes, waiting, metrics samples.
#![allow(dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use etcd_lifeboat::config::Config;
use etcd_lifeboat::daemon::{run_with_shutdown, DaemonOptions};
use tokio_util::sync::CancellationToken;

/// GET `path` on `addr` ([`crate::common::net::get`]): status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), ureq::Error> {
    crate::common::net::get(&format!("http://{addr}{path}"))
}

/// Polls `f` every 100 ms until it returns `Some`, panicking with `what` after `limit`.
pub async fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Value of the first sample line of `name` (with exact label set text, e.g.
/// `etcd_lifeboat_backups_total{result="success"}`) in a text exposition.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == name).then(|| v.parse().ok()).flatten()
    })
}

/// The sample of `name` for cluster `c` (`labels`: the other labels before it, e.g.
/// `result="success"`).
pub fn cluster_sample(text: &str, name: &str, labels: &str, c: &str) -> Option<f64> {
    let l = if labels.is_empty() {
        format!("{name}{{cluster=\"{c}\"}}")
    } else {
        format!("{name}{{{labels},cluster=\"{c}\"}}")
    };
    sample(text, &l)
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
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{all}\n---\n{text}"
    );
    all
}

/// A daemon running in this process on a loopback port.
pub struct InProcess {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), etcd_lifeboat::daemon::DaemonError>>,
}

impl InProcess {
    /// Starts `run_with_shutdown` with `yaml` (http.listen forced to 127.0.0.1:0).
    pub async fn start(yaml: &str, args: DaemonOptions) -> InProcess {
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
        InProcess {
            addr,
            shutdown,
            task,
        }
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

/// Polls `f` every 100 ms until it holds; panics naming `what` after `limit`.
pub fn wait(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
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
    let Ok(rd) = std::fs::read_dir(store) else {
        return out;
    };
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

/// Environment variable that turns a test binary into a daemon process (see [`child_entry`]).
pub const CHILD_CONFIG_ENV: &str = "LIFEBOAT_TEST_DAEMON_CONFIG";
const CHILD_ARGS_ENV: &str = "LIFEBOAT_TEST_DAEMON_ARGS";

/// The daemon as a child process of this test binary ([`child_entry`]); a no-op test otherwise.
#[test]
fn daemon_child() {
    child_entry();
}

/// Body of the `#[test] fn daemon_child()` above, which tests that spawn daemon processes run: when
/// [`CHILD_CONFIG_ENV`] is set, runs `etcd_lifeboat::daemon::run` (signals included) with that
/// config and exits with its status (0 Ok, 1 error), as the `daemon` subcommand does. Used
/// when the built binary has no `daemon` subcommand yet; otherwise the binary is used.
pub fn child_entry() {
    let Ok(path) = std::env::var(CHILD_CONFIG_ENV) else {
        return;
    };
    // The flags of DaemonProc::spawn, e.g. "--refresh-interval 1s --retries 0".
    let mut a = DaemonOptions::default();
    let extra = std::env::var(CHILD_ARGS_ENV).unwrap_or_default();
    let mut it = extra.split_whitespace();
    while let Some(flag) = it.next() {
        if flag == "--no-prune" {
            a.no_prune = true;
            continue;
        }
        let v = it.next().expect("flag value");
        let dur = || humantime::parse_duration(v).unwrap();
        match flag {
            "--refresh-interval" => a.refresh_interval = dur(),
            "--shutdown-grace" => a.shutdown_grace = dur(),
            "--retry-backoff" => a.retry_backoff = dur(),
            "--store-timeout" => a.store_timeout = dur(),
            "--upload-timeout" => a.upload_timeout = dur(),
            "--retries" => a.retries = v.parse().unwrap(),
            f => panic!("child daemon: unknown flag {f}"),
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter("info")
        .try_init();
    let cfg = Config::load(Some(Path::new(&path))).expect("child config");
    cfg.validate().expect("child config valid");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let code = match rt.block_on(etcd_lifeboat::daemon::run(a, cfg)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("daemon failed: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

/// Whether the built `etcd-lifeboat` binary has the `daemon` subcommand.
pub fn binary_has_daemon() -> bool {
    let Ok(mut cmd) = assert_cmd::Command::cargo_bin("etcd-lifeboat") else {
        return false;
    };
    cmd.args(["daemon", "--help"])
        .output()
        .map(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains("--refresh-interval")
        })
        .unwrap_or(false)
}

/// A daemon in its own process (the real binary when it has `daemon`, else this test binary
/// in child mode), with its stderr in a log file.
pub struct DaemonProc {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub log: std::path::PathBuf,
    pub real_binary: bool,
}

impl DaemonProc {
    /// Starts a daemon with the config file `config` (whose `http.listen` is `addr`) and extra
    /// daemon flags `args` (e.g. `--refresh-interval 1s`); waits until `/healthz` answers.
    pub fn spawn(config: &Path, addr: SocketAddr, args: &str, log: &Path) -> DaemonProc {
        let real = binary_has_daemon();
        let logf = std::fs::File::create(log).unwrap();
        let mut cmd = if real {
            // LIFEBOAT_TEST_BIN: measure another build (e.g. target/release/etcd-lifeboat).
            let bin = std::env::var_os("LIFEBOAT_TEST_BIN")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| assert_cmd::cargo::cargo_bin("etcd-lifeboat"));
            let mut c = std::process::Command::new(bin);
            c.arg("--config")
                .arg(config)
                .arg("daemon")
                .args(args.split_whitespace());
            c
        } else {
            let mut c = std::process::Command::new(std::env::current_exe().unwrap());
            c.args([
                "--exact",
                "daemon_support::daemon_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_CONFIG_ENV, config)
            .env(CHILD_ARGS_ENV, args);
            c
        };
        for (k, _) in std::env::vars() {
            if k.starts_with("ETCDCTL_") || k.starts_with("ETCD_LIFEBOAT_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("spawn daemon");
        let p = DaemonProc {
            child,
            addr,
            log: log.to_path_buf(),
            real_binary: real,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while http_get(addr, "/healthz").is_err() {
            assert!(
                Instant::now() < deadline,
                "daemon did not start:\n{}",
                p.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        http_get(self.addr, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits (at most `limit`) for the exit code.
    pub fn sigterm(&mut self, limit: Duration) -> Option<i32> {
        std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Resident set size in KiB (`VmRSS` of /proc/<pid>/status).
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// Anonymous resident memory in KiB (`RssAnon` of /proc/<pid>/status): heap and stacks,
    /// without the mapped code, whose size depends on the build profile of the binary.
    pub fn anon_kib(&self) -> u64 {
        self.status_kib("RssAnon:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    /// utime + stime of the process in clock ticks (/proc/<pid>/stat fields 14 and 15).
    pub fn cpu_ticks(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let rest = &s[s.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // rest starts at field 3 (state): utime is field 14 -> index 11.
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
