//! Private temp files and their cleanup (issue 10): a backup run under umask 022 keeps its raw
//! snapshot in a 0700 per-run directory as a 0600 file; a backup killed with SIGKILL mid-stream
//! (the snapshot stream stalled by a proxy) leaves its directory, which the next `backup`
//! removes, while the directory of a backup that is still running is never touched.

use crate::proxy;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Per-run directories in `tmp` of the process `pid`.
fn run_dirs(tmp: &Path, pid: u32) -> Vec<PathBuf> {
    std::fs::read_dir(tmp)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("etcd-lifeboat-{pid}-"))
        })
        .collect()
}

/// Starts `backup` under umask 022 through `sh`, stderr to a file.
fn spawn_backup(cfg: &Path, log: &Path) -> Child {
    let bin = assert_cmd::cargo::cargo_bin("etcd-lifeboat");
    Command::new("sh")
        .args([
            "-c",
            "umask 022; exec \"$0\" --config \"$1\" backup --no-progress",
        ])
        .arg(&bin)
        .arg(cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .env_remove("ETCD_LIFEBOAT_TEMP_DIR")
        .spawn()
        .unwrap()
}

/// Waits until the backup `pid` has a run dir whose snapshot file holds data and `proxy` has
/// stalled; returns the run dir.
fn wait_stalled(tmp: &Path, pid: u32, p: &proxy::Proxy, log: &Path) -> PathBuf {
    let t0 = Instant::now();
    loop {
        if let Some(d) = run_dirs(tmp, pid).pop() {
            let snap = d.join("snapshot.db");
            if p.is_stalled() && std::fs::metadata(&snap).is_ok_and(|m| m.len() > 0) {
                return d;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "backup {pid} did not reach the stall; log: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn config(etcd: &Etcd, endpoint: &str, store: &Path, tmp: &Path, name: &str) -> PathBuf {
    let y = etcd
        .config_yaml(store)
        .replace(&etcd.endpoints()[0], endpoint)
        // Long enough that a stalled stream is not given up on during the test.
        .replace("request_timeout: 5s", "request_timeout: 120s");
    let p = etcd.dir.path().join(name);
    std::fs::write(&p, format!("{y}backup:\n  temp_dir: {}\n", tmp.display())).unwrap();
    p
}

#[test]
fn killed_backup_is_swept_running_one_is_not_and_files_are_private() {
    let etcd = Etcd::start(EtcdOpts::default());
    let rt = tokio::runtime::Runtime::new().unwrap();
    // ~24 MB of incompressible values: the stream is far longer than the stall budget.
    rt.block_on(async {
        fill_random(&etcd.client().await, 240, 100_000, "/registry/secrets/").await
    });
    let store = etcd.dir.path().join("store");
    let tmp = etcd.dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    let target: std::net::SocketAddr = etcd.endpoints()[0]
        .trim_start_matches("http://")
        .parse()
        .unwrap();

    // A: stalled after 4 MB, then SIGKILLed.
    let pa = proxy::Proxy::start(target, Some(4 << 20));
    let cfg_a = config(&etcd, &pa.url(), &store, &tmp, "a.yaml");
    let log_a = etcd.dir.path().join("a.log");
    let mut a = spawn_backup(&cfg_a, &log_a);
    let dir_a = wait_stalled(&tmp, a.id(), &pa, &log_a);
    // Private whatever the umask: the dir 0700, the raw snapshot and the lock 0600.
    assert_eq!(mode(&dir_a), 0o700, "{}", dir_a.display());
    for f in std::fs::read_dir(&dir_a).unwrap().flatten() {
        assert_eq!(mode(&f.path()), 0o600, "{}", f.path().display());
    }
    a.kill().unwrap(); // SIGKILL
    a.wait().unwrap();
    assert!(
        dir_a.exists(),
        "a SIGKILLed run cannot clean up after itself"
    );
    let partial_a = partials(&store);
    assert_eq!(
        partial_a.len(),
        1,
        "the killed run's store temp file: {partial_a:?}"
    );

    // B: stalled and still running.
    let pb = proxy::Proxy::start(target, Some(4 << 20));
    let cfg_b = config(&etcd, &pb.url(), &store, &tmp, "b.yaml");
    let log_b = etcd.dir.path().join("b.log");
    let mut b = spawn_backup(&cfg_b, &log_b);
    let dir_b = wait_stalled(&tmp, b.id(), &pb, &log_b);

    // B's start removed A's store temp file (its writer is gone) and holds its own.
    let partial_b = partials(&store);
    assert!(
        !partial_a[0].exists(),
        "the killed run's store temp file was kept"
    );
    assert_eq!(partial_b.len(), 1, "{partial_b:?}");

    // C: a normal backup. It removes A's directory and leaves B's files alone.
    let cfg_c = config(&etcd, &etcd.endpoints()[0], &store, &tmp, "c.yaml");
    let bin = assert_cmd::cargo::cargo_bin("etcd-lifeboat");
    let out = Command::new("sh")
        .args([
            "-c",
            "umask 022; exec \"$0\" --config \"$1\" backup --no-progress",
        ])
        .arg(&bin)
        .arg(&cfg_c)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir_a.exists(), "the killed run's dir was not removed");
    assert_eq!(
        partials(&store),
        partial_b,
        "the running backup's store temp file must stay"
    );
    assert!(dir_b.exists(), "the running backup's dir was removed");
    assert!(dir_b.join("snapshot.db").exists() && dir_b.join("lock").exists());
    assert!(
        b.try_wait().unwrap().is_none(),
        "backup B must still be running"
    );

    // B still owns its files; once it is gone too, the next sweep takes them.
    b.kill().unwrap();
    b.wait().unwrap();
    // prune cleans up after it: its temp dir and its store temp file.
    let out = Command::new(&bin)
        .args(["--config", cfg_c.to_str().unwrap(), "prune"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir_b.exists(), "prune left the killed run's temp dir");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
    assert!(partials(&store).is_empty(), "{:?}", partials(&store));
    for f in paths_under(&store) {
        assert_eq!(mode(&f) & 0o077, 0, "{:04o} {}", mode(&f), f.display());
    }
}

/// Temp files of uploads in progress (or interrupted) in the local store.
fn partials(store: &Path) -> Vec<PathBuf> {
    paths_under(store)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .contains(".partial-")
        })
        .collect()
}

#[test]
fn config_check_warns_about_open_directories() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let tmp = d.path().join("tmp");
    std::fs::create_dir(&store).unwrap();
    std::fs::create_dir(&tmp).unwrap();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700)).unwrap();
    let cfg = d.path().join("c.yaml");
    std::fs::write(
        &cfg,
        format!(
            "etcd:\n  endpoints: [\"http://127.0.0.1:2379\"]\nstorage:\n  backend: local\n  local:\n    path: {}\nbackup:\n  temp_dir: {}\n",
            store.display(),
            tmp.display()
        ),
    )
    .unwrap();
    let out = lifeboat()
        .args(["--config", cfg.to_str().unwrap(), "config", "check"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("chmod 700 {}", store.display())),
        "{err}"
    );
    assert!(!err.contains(&tmp.display().to_string()), "{err}");
}
