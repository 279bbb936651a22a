//! The S3 client honours `HTTP_PROXY` / `HTTPS_PROXY` / `NO_PROXY`: `backup` and `list` of the
//! binary against moto on loopback go through a real forward proxy (Debian's `tinyproxy`,
//! whose log names every request: absolute-form for http://, CONNECT for https://);
//! `NO_PROXY=127.0.0.1` bypasses it; a proxy that is down makes the store unreachable (so the
//! proxy really is on the path). Each run is a separate process with its own environment.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::s3h::S3Server;

struct Tinyproxy {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Tinyproxy {
    fn start(dir: &Path) -> Tinyproxy {
        let port = free_port();
        let log = dir.join("tinyproxy.log");
        let conf = dir.join("tinyproxy.conf");
        // No ConnectPort line: CONNECT to any port is allowed (moto's random port).
        // Timeout 3: tinyproxy 1.11 serves one request per client connection yet answers
        // without `Connection: close`, so a client that reuses the pooled connection (hyper
        // does) waits for this idle timeout before its retry; 60 s made each PUT take a minute.
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 3\nLogFile \"{}\"\nLogLevel Info\n\
                 MaxClients 20\nAllow 127.0.0.1\n",
                log.display()
            ),
        )
        .unwrap();
        let child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("tinyproxy.stderr")).unwrap())
            .spawn()
            .expect("tinyproxy installed (apt-get install tinyproxy)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tinyproxy did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Tinyproxy { child, port, log }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Request lines the proxy logged that name `needle` (e.g. moto's host:port).
    fn requests(&self, needle: &str) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains("Request (file descriptor") && l.contains(needle))
            .map(String::from)
            .collect()
    }
}

fn config(etcd: &Etcd, s3: &S3Server, dir: &Path) -> PathBuf {
    let mut y = etcd.config_yaml(Path::new("/unused"));
    let start = y.find("storage:").unwrap();
    y.truncate(start);
    y += &format!(
        "storage:\n  backend: s3\n  s3:\n    bucket: {}\n    prefix: proxied\n    region: us-east-1\n    \
         endpoint: {}\n    force_path_style: true\n    insecure: {}\n",
        s3.bucket,
        s3.endpoint,
        s3.endpoint.starts_with("http://")
    );
    if let Some(ca) = &s3.ca_file {
        y += &format!("    ca_file: {}\n", ca.display());
    }
    let p = dir.join(format!("s3-{}.yaml", free_port()));
    std::fs::write(&p, y).unwrap();
    p
}

/// Runs the binary with `args` and exactly the proxy variables `proxy_env`.
fn run(cfg: &Path, args: &[&str], proxy_env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = lifeboat();
    for k in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
    ] {
        cmd.env_remove(k);
    }
    cmd.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .arg("--config")
        .arg(cfg)
        .args(args);
    for (k, v) in proxy_env {
        cmd.env(k, v);
    }
    let t0 = Instant::now();
    let out = cmd.output().unwrap();
    eprintln!("{args:?} {proxy_env:?}: {:?}", t0.elapsed());
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn host_port(endpoint: &str) -> String {
    endpoint.split("://").nth(1).unwrap().to_string()
}

#[test]
fn s3_requests_go_through_the_proxy_unless_no_proxy_names_the_host() {
    let etcd = Etcd::start(EtcdOpts::default());
    etcd.etcdctl_ok(&["put", "/registry/k", "v"]);
    let dir = tempfile::tempdir().unwrap();
    let proxy = Tinyproxy::start(dir.path());

    // http:// endpoint: HTTP_PROXY, absolute-form requests.
    let moto = S3Server::start_moto(false);
    let cfg = config(&etcd, &moto, dir.path());
    let target = host_port(&moto.endpoint);
    let (ok, log) = run(
        &cfg,
        &["backup", "--no-progress"],
        &[("HTTP_PROXY", &proxy.url())],
    );
    assert!(ok, "{log}\nproxy log:\n{}", proxy.log_text());
    let through = proxy.requests(&target);
    assert!(
        through
            .iter()
            .any(|l| l.contains(&format!("PUT http://{target}/"))),
        "the upload went through the proxy: {through:#?}\n{}",
        proxy.log_text()
    );
    assert!(
        through
            .iter()
            .any(|l| l.contains(&format!("GET http://{target}/"))),
        "{through:#?}"
    );
    let (ok, log) = run(&cfg, &["list"], &[("http_proxy", &proxy.url())]);
    assert!(ok, "{log}");
    let after_list = proxy.requests(&target).len();
    assert!(
        after_list > through.len(),
        "lowercase http_proxy is honoured too"
    );

    // NO_PROXY=127.0.0.1: direct, the proxy sees nothing more.
    let (ok, log) = run(
        &cfg,
        &["backup", "--no-progress"],
        &[("HTTP_PROXY", &proxy.url()), ("NO_PROXY", "127.0.0.1")],
    );
    assert!(ok, "{log}");
    let (ok, log) = run(
        &cfg,
        &["list"],
        &[
            ("HTTP_PROXY", &proxy.url()),
            ("no_proxy", "localhost,127.0.0.1"),
        ],
    );
    assert!(ok, "{log}");
    assert_eq!(
        proxy.requests(&target).len(),
        after_list,
        "NO_PROXY bypasses the proxy"
    );

    // A proxy that is down: the store is unreachable (nothing bypasses it silently).
    let dead = format!("http://127.0.0.1:{}", free_port());
    let (ok, log) = run(&cfg, &["list"], &[("HTTP_PROXY", &dead)]);
    assert!(!ok, "listing through a dead proxy must fail: {log}");

    // https:// endpoint: HTTPS_PROXY, a CONNECT tunnel (TLS end to end with moto).
    let moto_tls = S3Server::start_moto(true);
    let cfg_tls = config(&etcd, &moto_tls, dir.path());
    let target_tls = host_port(&moto_tls.endpoint);
    let (ok, log) = run(
        &cfg_tls,
        &["backup", "--no-progress"],
        &[("HTTPS_PROXY", &proxy.url())],
    );
    assert!(ok, "{log}\nproxy log:\n{}", proxy.log_text());
    let tunnels = proxy.requests(&format!("CONNECT {target_tls}"));
    assert!(
        !tunnels.is_empty(),
        "https went through a CONNECT tunnel:\n{}",
        proxy.log_text()
    );
    // HTTP_PROXY alone does not apply to an https:// endpoint.
    let before = proxy.requests(&target_tls).len();
    let (ok, log) = run(&cfg_tls, &["list"], &[("HTTP_PROXY", &dead)]);
    assert!(ok, "{log}");
    assert_eq!(proxy.requests(&target_tls).len(), before);
}
