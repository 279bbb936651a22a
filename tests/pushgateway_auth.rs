//! `backup --pushgateway` through the binary against Debian's real `prometheus-pushgateway`:
//! - the grouping key is job + etcd cluster id, so a failure pushed from node A is replaced
//!   by node B's later success (one group per cluster, no per-node groups);
//! - https with `--pushgateway-ca-file` and basic auth (the gateway's `--web.config.file`
//!   with `tls_server_config` and a bcrypt `basic_auth_users` entry): the push lands; a wrong
//!   password is refused (401), logged, and the password appears nowhere in the output; an
//!   unknown CA fails the TLS handshake.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

const JOB: &str = "etcd-lifeboat-backup";

struct Gateway {
    child: Child,
    port: u16,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    /// Starts prometheus-pushgateway on a free loopback port, with `web_config` as its
    /// `--web.config.file` when given; waits until `/-/ready` answers (any status).
    fn start(dir: &Path, web_config: Option<&Path>) -> Gateway {
        let port = free_port();
        let log = std::fs::File::create(dir.join(format!("pg-{port}.log"))).unwrap();
        let mut cmd = Command::new("/usr/bin/prometheus-pushgateway");
        cmd.arg(format!("--web.listen-address=127.0.0.1:{port}"));
        if let Some(c) = web_config {
            cmd.arg(format!("--web.config.file={}", c.display()));
        }
        let child = cmd
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus-pushgateway installed (apt-get install prometheus-pushgateway)");
        let gw = Gateway { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "pushgateway did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        gw
    }

    /// The gateway's /metrics through curl (`extra`: --cacert, -u ...).
    fn metrics(&self, scheme: &str, extra: &[&str]) -> String {
        let out = Command::new("curl")
            .args(["-sS", "--fail"])
            .args(extra)
            .arg(format!("{scheme}://127.0.0.1:{}/metrics", self.port))
            .output()
            .expect("curl installed");
        assert!(
            out.status.success(),
            "curl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// Lines of `name` pushed under our job.
fn pushed<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&format!("job=\"{JOB}\"")))
        .collect()
}

fn value(line: &str) -> f64 {
    line.rsplit_once(' ').unwrap().1.parse().unwrap()
}

/// One `backup --pushgateway` run of the binary; returns (exit ok, stderr).
fn backup(config: &Path, node: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = lifeboat();
    cmd.arg("--config")
        .arg(config)
        .args(["backup", "--no-progress"])
        .args(args)
        .env("NODE_NAME", node)
        .env("HOSTNAME", node);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A config whose etcd endpoint refuses connections (the backup fails fast), local store.
fn unreachable_config(dir: &Path, store: &Path) -> std::path::PathBuf {
    let p = dir.join(format!("down-{}.yaml", free_port()));
    std::fs::write(
        &p,
        format!(
            "etcd:\n  endpoints: [\"http://127.0.0.1:{}\"]\n  dial_timeout: 1s\n  request_timeout: 2s\n\
             storage:\n  backend: local\n  local:\n    path: {}\n",
            free_port(),
            store.display()
        ),
    )
    .unwrap();
    p
}

#[test]
fn one_group_per_cluster_a_later_success_on_another_node_replaces_a_failure() {
    let etcd = Etcd::start(EtcdOpts::default());
    etcd.etcdctl_ok(&["put", "/registry/k", "v"]);
    let store = etcd.dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let good = etcd.write_config(&store);
    let down = unreachable_config(etcd.dir.path(), &store);
    let gw = Gateway::start(etcd.dir.path(), None);
    let url = format!("http://127.0.0.1:{}", gw.port);

    // Node B succeeds: one group keyed by the cluster id.
    let (ok, log) = backup(&good, "node-b", &["--pushgateway", &url], &[]);
    assert!(ok, "{log}");
    let cluster = std::fs::read_dir(&store)
        .unwrap()
        .flatten()
        .find(|d| d.path().is_dir())
        .expect("a cluster directory in the store")
        .file_name()
        .to_string_lossy()
        .into_owned();
    let t = gw.metrics("http", &[]);
    let success = pushed(&t, "etcd_lifeboat_backup_last_success_timestamp_seconds");
    assert_eq!(success.len(), 1, "{t}");
    assert!(
        success[0].contains(&format!("cluster_id=\"{cluster}\"")),
        "{t}"
    );
    assert!(
        !t.contains("node-b"),
        "the node is not part of the grouping key:\n{t}"
    );

    // Node A fails (etcd unreachable from there): it learns the cluster id from the store
    // and pushes its failure into the same group, where the last-failure alert sees it.
    let (ok, log) = backup(&down, "node-a", &["--pushgateway", &url], &[]);
    assert!(!ok, "{log}");
    assert!(log.contains("pushed metrics to the pushgateway"), "{log}");
    let t = gw.metrics("http", &[]);
    let failure = pushed(&t, "etcd_lifeboat_backup_last_failure_timestamp_seconds");
    let success = pushed(&t, "etcd_lifeboat_backup_last_success_timestamp_seconds");
    assert_eq!((failure.len(), success.len()), (1, 1), "{t}");
    assert!(
        failure[0].contains(&format!("cluster_id=\"{cluster}\"")),
        "{t}"
    );
    assert!(value(failure[0]) > value(success[0]), "{t}");
    let failed_runs = pushed(&t, "etcd_lifeboat_backup_duration_seconds_count");
    assert!(
        failed_runs
            .iter()
            .any(|l| l.contains("result=\"failure\"") && value(l) == 1.0),
        "the failed run's duration is pushed: {t}"
    );

    // Node B succeeds again: the group is replaced, the failure is gone.
    let (ok, log) = backup(&good, "node-b", &["--pushgateway", &url], &[]);
    assert!(ok, "{log}");
    let t = gw.metrics("http", &[]);
    let failure = pushed(&t, "etcd_lifeboat_backup_last_failure_timestamp_seconds");
    let success = pushed(&t, "etcd_lifeboat_backup_last_success_timestamp_seconds");
    assert_eq!((failure.len(), success.len()), (1, 1), "{t}");
    assert_eq!(value(failure[0]), 0.0, "{t}");
    assert!(value(success[0]) > 0.0);
    assert_eq!(
        pushed(&t, "etcd_lifeboat_store_backups")
            .iter()
            .map(|l| value(l))
            .collect::<Vec<_>>(),
        vec![2.0]
    );
}

/// A bcrypt hash of `password` for the gateway's `basic_auth_users`: Python's `bcrypt` module
/// when the venv has it, else the `crypt` module (libxcrypt's `$2b$`, Python <= 3.12).
fn bcrypt(password: &str) -> String {
    let venv = std::env::var("HOME").unwrap() + "/.cache/etcd-lifeboat/venv/bin/python";
    let py = if Path::new(&venv).exists() {
        venv
    } else {
        "python3".into()
    };
    let script = "import sys\n\
        pw = sys.stdin.read().encode()\n\
        try:\n    import bcrypt\n    print(bcrypt.hashpw(pw, bcrypt.gensalt(rounds=4)).decode())\n\
        except ImportError:\n    import warnings; warnings.simplefilter('ignore')\n    import crypt\n    \
        print(crypt.crypt(pw.decode(), crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)))\n";
    let mut child = Command::new(py)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(password.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let h = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(
        out.status.success() && h.starts_with("$2"),
        "no bcrypt (pip install bcrypt into the venv): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    h
}

#[test]
fn https_with_ca_file_and_basic_auth_wrong_password_is_refused_and_not_logged() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(&dir.path().join("pki"));
    let password = "c0rrect-h0rse-pw";
    let web = dir.path().join("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\nbasic_auth_users:\n  lifeboat: '{}'\n",
            certs.server_cert.display(),
            certs.server_key.display(),
            bcrypt(password)
        ),
    )
    .unwrap();
    let gw = Gateway::start(dir.path(), Some(&web));
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let down = unreachable_config(dir.path(), &store);
    let ca = certs.ca.to_str().unwrap();
    let curl_auth = ["--cacert", ca, "-u", "lifeboat:c0rrect-h0rse-pw"];
    let base = format!("127.0.0.1:{}", gw.port);

    // Credentials in the URL: pushed (a failed run with an empty store: group "unknown").
    let url = format!("https://lifeboat:{password}@{base}");
    let (ok, log) = backup(
        &down,
        "n1",
        &["--pushgateway", &url, "--pushgateway-ca-file", ca],
        &[],
    );
    assert!(!ok, "the backup itself failed: {log}");
    assert!(log.contains("pushed metrics to the pushgateway"), "{log}");
    assert!(
        log.contains(&format!(
            "https://{base}/metrics/job/{JOB}/cluster_id/unknown"
        )),
        "{log}"
    );
    assert!(!log.contains(password), "password in the output:\n{log}");
    let t = gw.metrics("https", &curl_auth);
    let failure = pushed(&t, "etcd_lifeboat_backup_last_failure_timestamp_seconds");
    assert_eq!(failure.len(), 1, "{t}");
    assert!(failure[0].contains("cluster_id=\"unknown\""), "{t}");
    let first = value(failure[0]);
    assert!(first > 0.0);

    // Username from the flag's env var and the password from a file.
    let pw_file = dir.path().join("pw");
    std::fs::write(&pw_file, format!("{password}\n")).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let (ok, log) = backup(
        &down,
        "n1",
        &[
            "--pushgateway",
            &format!("https://{base}"),
            "--pushgateway-password-file",
            pw_file.to_str().unwrap(),
        ],
        &[
            ("ETCD_LIFEBOAT_PUSHGATEWAY_USERNAME", "lifeboat"),
            ("ETCD_LIFEBOAT_PUSHGATEWAY_CA_FILE", ca),
        ],
    );
    assert!(!ok);
    assert!(log.contains("pushed metrics to the pushgateway"), "{log}");
    let t = gw.metrics("https", &curl_auth);
    let again = value(pushed(&t, "etcd_lifeboat_backup_last_failure_timestamp_seconds")[0]);
    assert!(again > first, "second push landed: {again} vs {first}");

    // Wrong password, in the URL and from the env: refused with 401, logged, never shown.
    for (url, env) in [
        (format!("https://lifeboat:wr0ng-s3cret-pw@{base}"), vec![]),
        (
            format!("https://{base}"),
            vec![
                ("ETCD_LIFEBOAT_PUSHGATEWAY_USERNAME", "lifeboat"),
                ("ETCD_LIFEBOAT_PUSHGATEWAY_PASSWORD", "wr0ng-s3cret-pw"),
            ],
        ),
    ] {
        let (ok, log) = backup(
            &down,
            "n1",
            &["--pushgateway", &url, "--pushgateway-ca-file", ca, "-vv"],
            &env,
        );
        assert!(!ok);
        assert!(log.contains("pushing metrics failed"), "{log}");
        assert!(log.contains("HTTP 401"), "{log}");
        assert!(log.contains(&format!("https://{base}/metrics")), "{log}");
        assert!(
            !log.contains("wr0ng-s3cret-pw"),
            "password in the output:\n{log}"
        );
        assert!(
            !log.contains("@127.0.0.1"),
            "userinfo in the output:\n{log}"
        );
    }
    let t = gw.metrics("https", &curl_auth);
    assert_eq!(
        value(pushed(&t, "etcd_lifeboat_backup_last_failure_timestamp_seconds")[0]),
        again,
        "refused pushes changed nothing"
    );

    // A bearer token (from a file; the gateway only knows basic auth): sent, refused, and
    // never shown; a missing token file is named; token plus basic auth is a conflict.
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken-v4lue-xyz\n").unwrap();
    let bearer = format!("https://{base}");
    let args = [
        "--pushgateway",
        bearer.as_str(),
        "--pushgateway-ca-file",
        ca,
        "--pushgateway-bearer-token-file",
        token.to_str().unwrap(),
    ];
    let (_, log) = backup(&down, "n1", &args, &[]);
    assert!(log.contains("HTTP 401"), "{log}");
    assert!(
        !log.contains("t0ken-v4lue-xyz"),
        "token in the output:\n{log}"
    );
    let (_, log) = backup(
        &down,
        "n1",
        &args,
        &[("ETCD_LIFEBOAT_PUSHGATEWAY_USERNAME", "lifeboat")],
    );
    assert!(log.contains("both basic auth and a bearer token"), "{log}");
    let missing = dir.path().join("no-such-token");
    let (_, log) = backup(
        &down,
        "n1",
        &[
            "--pushgateway",
            &bearer,
            "--pushgateway-bearer-token-file",
            missing.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        log.contains(&format!("bearer token file {}", missing.display())),
        "{log}"
    );

    // Without the CA file the gateway's certificate is not trusted.
    let (ok, log) = backup(&down, "n1", &["--pushgateway", &url], &[]);
    assert!(!ok);
    assert!(log.contains("pushing metrics failed"), "{log}");
    assert!(
        log.to_lowercase().contains("certificate"),
        "a TLS error naming the certificate: {log}"
    );
    assert!(!log.contains(password), "{log}");
}
