//! S3 test server: `moto_server` on a free loopback port in a temp dir (stopped on Drop), or an
//! external S3-compatible endpoint given by environment variables.
//!
//! External endpoint: set all of `ETCD_LIFEBOAT_TEST_S3_ENDPOINT` (URL), `ETCD_LIFEBOAT_TEST_S3_BUCKET`
//! (an existing bucket), `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, and optionally
//! `ETCD_LIFEBOAT_TEST_S3_REGION` (default `us-east-1`). Each [`S3Server::storage_config`] then
//! uses a fresh random prefix, so tests do not see each other's objects.
//!
//! moto: found at `$MOTO_SERVER`, `/root/.cache/etcd-lifeboat/venv/bin/moto_server`, or
//! `moto_server` on `PATH`. Credentials `testing`/`testing` are put in the environment when
//! none are set (moto accepts any).
//!
//! Loaded as `#[path = "common/s3.rs"] mod s3h;` beside `mod common;` (tests/integration.rs,
//! benches/backup.rs).
#![allow(dead_code, clippy::field_reassign_with_default)]

// One copy of the port allocator in the binary: two would hand out the same ports.
use crate::common::{net, tls};
pub use net::free_port;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_lifeboat::config::{Backend, StorageConfig};

/// Default location of moto_server on machines set up by scripts/.
pub const DEFAULT_MOTO: &str = "/root/.cache/etcd-lifeboat/venv/bin/moto_server";

/// A running S3 endpoint with one bucket.
pub struct S3Server {
    child: Option<Child>,
    /// Temp dir (moto's working dir and log, TLS files).
    pub dir: tempfile::TempDir,
    /// Endpoint URL, e.g. `http://127.0.0.1:40123`.
    pub endpoint: String,
    /// Bucket created for the tests (or given by the environment).
    pub bucket: String,
    /// Region to use.
    pub region: String,
    /// CA file to trust (moto with TLS).
    pub ca_file: Option<PathBuf>,
    /// True when the endpoint comes from `ETCD_LIFEBOAT_TEST_S3_*`.
    pub external: bool,
}

/// Path of the moto_server executable.
pub fn moto_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MOTO_SERVER") {
        return PathBuf::from(p);
    }
    if Path::new(DEFAULT_MOTO).exists() {
        return PathBuf::from(DEFAULT_MOTO);
    }
    PathBuf::from("moto_server")
}

fn random_name(prefix: &str) -> String {
    format!("{prefix}{:016x}", rand::random::<u64>())
}

impl S3Server {
    /// The external endpoint from the environment if configured, else a new moto server with a
    /// bucket (plain HTTP).
    pub fn start() -> S3Server {
        if let Some(s) = Self::external() {
            return s;
        }
        Self::start_moto(false)
    }

    /// External endpoint from `ETCD_LIFEBOAT_TEST_S3_*`, if all required variables are set.
    pub fn external() -> Option<S3Server> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let endpoint = get("ETCD_LIFEBOAT_TEST_S3_ENDPOINT")?;
        let bucket = get("ETCD_LIFEBOAT_TEST_S3_BUCKET")?;
        get("AWS_ACCESS_KEY_ID")?;
        get("AWS_SECRET_ACCESS_KEY")?;
        Some(S3Server {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            endpoint,
            bucket,
            region: get("ETCD_LIFEBOAT_TEST_S3_REGION").unwrap_or_else(|| "us-east-1".into()),
            ca_file: get("ETCD_LIFEBOAT_TEST_S3_CA_FILE").map(PathBuf::from),
            external: true,
        })
    }

    /// Starts moto on a free loopback port; with `tls`, over HTTPS with a certificate for
    /// 127.0.0.1 signed by a CA made with openssl (see [`S3Server::ca_file`]). Waits until it
    /// answers and creates a bucket.
    pub fn start_moto(tls: bool) -> S3Server {
        Self::start_moto_opts(tls, false)
    }

    /// Like [`S3Server::start_moto`]; with `auth`, moto checks request signatures and access
    /// keys (`INITIAL_NO_AUTH_ACTION_COUNT=0`), so any key is unknown to it, and no bucket is
    /// created.
    pub fn start_moto_opts(tls: bool, auth: bool) -> S3Server {
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
            std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        }
        let dir = tempfile::tempdir().unwrap();
        let ca_file = tls.then(|| tls::Certs::generate(dir.path()).ca);
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("moto.log")).unwrap();
        let mut cmd = Command::new(moto_bin());
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        if auth {
            cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", "0");
        }
        if tls {
            cmd.arg("-c").arg(dir.path().join("server.crt"));
            cmd.arg("-k").arg(dir.path().join("server.key"));
        }
        let child = cmd
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e}; install moto (scripts/) or set MOTO_SERVER",
                    moto_bin().display()
                )
            });
        let scheme = if tls { "https" } else { "http" };
        let mut s = S3Server {
            child: Some(child),
            dir,
            endpoint: format!("{scheme}://127.0.0.1:{port}"),
            bucket: random_name("lifeboat-"),
            region: "us-east-1".into(),
            ca_file,
            external: false,
        };
        s.wait_listening(port);
        if auth {
            // Requests need valid signatures from now on; tests use this for bad credentials.
        } else if tls {
            // moto answers any HTTP method on any path; create the bucket over TLS with curl.
            let out = Command::new("curl")
                .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
                .arg(s.ca_file.as_ref().unwrap())
                .args(["-X", "PUT", &format!("{}/{}", s.endpoint, s.bucket)])
                .output()
                .expect("curl");
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "200",
                "create bucket over TLS: {out:?}"
            );
        } else {
            let url = format!("{}/{}", s.endpoint, s.bucket);
            let (status, body) = net::put(&url, &[]).expect("moto answers");
            assert_eq!(
                status,
                200,
                "create bucket {}: {body}; log: {}",
                s.bucket,
                s.log()
            );
        }
        s
    }

    fn wait_listening(&mut self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("moto_server exited ({st}); log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "moto_server not listening after 30s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// moto's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }

    /// A `StorageConfig` (backend s3, path-style, 5 MiB parts) for this server's bucket under
    /// a fresh random prefix.
    pub fn storage_config(&self) -> StorageConfig {
        self.storage_config_for_bucket(&self.bucket)
    }

    /// Like [`S3Server::storage_config`] for another bucket (e.g. one that does not exist).
    pub fn storage_config_for_bucket(&self, bucket: &str) -> StorageConfig {
        let mut c = StorageConfig::default();
        c.backend = Backend::S3;
        c.s3.bucket = bucket.to_string();
        c.s3.prefix = random_name("lifeboat-test-");
        c.s3.region = Some(self.region.clone());
        c.s3.endpoint = Some(self.endpoint.clone());
        c.s3.force_path_style = true;
        c.s3.insecure = self.endpoint.starts_with("http://");
        c.s3.ca_file = self.ca_file.clone();
        c.s3.part_size = 5 * 1024 * 1024;
        c
    }
}

impl S3Server {
    /// Creates another bucket on moto (plain HTTP only), with Object Lock enabled
    /// (`x-amz-bucket-object-lock-enabled: true`, which also turns versioning on) when
    /// `object_lock`; returns its name. `None` for an external endpoint or a TLS moto (tests
    /// needing such a bucket then create it with the SDK or skip).
    pub fn create_bucket(&self, object_lock: bool) -> Option<String> {
        if self.external || !self.endpoint.starts_with("http://") {
            return None;
        }
        let name = random_name(if object_lock {
            "lifeboat-lock-"
        } else {
            "lifeboat-"
        });
        let headers: &[(&str, &str)] = if object_lock {
            &[("x-amz-bucket-object-lock-enabled", "true")]
        } else {
            &[]
        };
        let url = format!("{}/{name}", self.endpoint);
        let (status, body) = net::put(&url, headers).expect("moto answers");
        assert_eq!(
            status,
            200,
            "create bucket {name}: {body}; log: {}",
            self.log()
        );
        Some(name)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift; incompressible, so sizes are real), distinct
/// per seed.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
