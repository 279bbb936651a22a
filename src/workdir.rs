//! Private per-run working directories for the snapshot temp files, and their cleanup.
//!
//! A backup, verify, status or restore download holds a raw snapshot (every Kubernetes Secret
//! of the cluster) on local disk for a while. Each run makes its own directory under the temp
//! dir (`backup.temp_dir`, else the system temp dir): `etcd-lifeboat-<pid>-<random>/`, mode
//! 0700, holding a file `lock` that the run keeps exclusively locked (`flock`, through
//! [`std::fs::File::try_lock`]) for its whole life. Files in it are created 0600, the mode set
//! explicitly whatever the umask. The directory is removed when the [`WorkDir`] is dropped.
//!
//! A run killed with SIGKILL cannot remove its directory, but the kernel releases its lock:
//! [`sweep_stale`] removes such directories (lock free) and never one whose lock is held.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::config::{Backend, Config};

/// Prefix of per-run directory names.
pub const PREFIX: &str = "etcd-lifeboat-";
/// Name of the lock file inside a per-run directory.
pub const LOCK_FILE: &str = "lock";
/// Temp files of versions before per-run directories: `.etcd-lifeboat-*.db.partial`, written
/// directly in the temp dir. [`sweep_stale`] removes those not modified for this long (they
/// carry no lock, and a running writer modifies its file continuously).
pub const LEGACY_PARTIAL_AGE: Duration = Duration::from_secs(15 * 60);

/// A private directory of one run; removed (with everything in it) on drop.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
    /// Held locked until drop; dropping it releases the lock.
    _lock: File,
}

/// Creating the directory or a file in it failed.
#[derive(Debug, thiserror::Error)]
#[error("temp dir {}: {source}; free space there or point backup.temp_dir (ETCD_LIFEBOAT_TEMP_DIR) at a writable directory with room for one snapshot", path.display())]
pub struct WorkDirError {
    /// The directory or file concerned.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

fn err(path: &Path) -> impl FnOnce(std::io::Error) -> WorkDirError + '_ {
    move |source| WorkDirError {
        path: path.to_path_buf(),
        source,
    }
}

impl WorkDir {
    /// Makes `base/etcd-lifeboat-<pid>-<random>/` (0700) and locks its lock file.
    ///
    /// Errors: [`WorkDirError`] when `base` is missing, not writable or full.
    pub fn create(base: &Path) -> Result<WorkDir, WorkDirError> {
        loop {
            let w = Self::try_create(base)?;
            // A sweeper that tested the lock file between its creation and our lock may have
            // removed the directory: then start again.
            if w.path.join(LOCK_FILE).exists() {
                return Ok(w);
            }
        }
    }

    fn try_create(base: &Path) -> Result<WorkDir, WorkDirError> {
        let path = loop {
            let p = base.join(format!(
                "{PREFIX}{}-{:016x}",
                std::process::id(),
                rand::random::<u64>()
            ));
            match DirBuilder::new().mode(0o700).create(&p) {
                Ok(()) => break p,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(err(base)(e)),
            }
        };
        // The umask only removes bits, but set the mode anyway: 0700 whatever happens.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
            .map_err(err(&path))?;
        let lock_path = path.join(LOCK_FILE);
        let lock = match private_file(&lock_path).and_then(|f| {
            f.try_lock().map_err(std::io::Error::from)?;
            Ok(f)
        }) {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&path);
                return Err(err(&lock_path)(e));
            }
        };
        Ok(WorkDir { path, _lock: lock })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates a new file `name` in the directory, mode 0600, opened for reading and writing.
    ///
    /// Errors: [`WorkDirError`] (exists already, disk full, ...).
    pub fn create_file(&self, name: &str) -> Result<(File, PathBuf), WorkDirError> {
        let p = self.path.join(name);
        let f = private_file(&p).map_err(err(&p))?;
        Ok((f, p))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        // Removed while the lock is still held, so that no sweeper races on it.
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(dir = %self.path.display(), error = %e, "could not remove the temp dir; the next backup removes it");
        }
    }
}

/// Opens a new file 0600 (create_new), mode set explicitly.
fn private_file(p: &Path) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

/// Removes, directly under `base`, the per-run directories of runs that are gone (their lock
/// is free, or they have no lock file and their pid is not running), and legacy
/// `.etcd-lifeboat-*.db.partial` files older than [`LEGACY_PARTIAL_AGE`]. Never touches a
/// directory whose lock is held, nor anything owned by another user. Returns what it removed.
/// Failures are logged and skipped (a sweep never fails a run).
pub fn sweep_stale(base: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(rd) = std::fs::read_dir(base) else {
        return removed;
    };
    let uid = std::fs::metadata(base).ok().map(|_| current_uid());
    for e in rd.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let p = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if Some(meta.uid()) != uid.flatten() {
            continue;
        }
        if meta.is_dir() && name.starts_with(PREFIX) {
            if is_stale(&p, &name) && std::fs::remove_dir_all(&p).is_ok() {
                tracing::info!(dir = %p.display(), "removed the temp dir of a run that is gone");
                removed.push(p);
            }
        } else if meta.is_file()
            && name.starts_with(".etcd-lifeboat-")
            && name.ends_with(".db.partial")
        {
            let old = meta
                .modified()
                .ok()
                .and_then(|m| SystemTime::now().duration_since(m).ok())
                .is_some_and(|age| age >= LEGACY_PARTIAL_AGE);
            if old && std::fs::remove_file(&p).is_ok() {
                tracing::info!(file = %p.display(), "removed a temp file left by an earlier version");
                removed.push(p);
            }
        }
    }
    removed
}

/// Whether the per-run directory `p` (named `name`) belongs to a run that is gone: its lock
/// file can be locked (the test lock is released on return; a run that is gone does not come
/// back, and [`WorkDir::create`] re-checks its directory after locking).
fn is_stale(p: &Path, name: &str) -> bool {
    match File::open(p.join(LOCK_FILE)) {
        Ok(f) => f.try_lock().is_ok(),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            // Between mkdir and the lock file's creation, or an unrelated directory: only
            // when the pid in the name is not running.
            let pid = name
                .strip_prefix(PREFIX)
                .and_then(|r| r.split('-').next())
                .and_then(|s| s.parse::<u32>().ok());
            match pid {
                Some(pid) => !Path::new(&format!("/proc/{pid}")).exists(),
                None => false,
            }
        }
        Err(_) => false,
    }
}

/// The effective uid of this process (owner of the files it creates).
fn current_uid() -> Option<u32> {
    // The owner of /proc/self is the process's uid; no libc call needed.
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// The temp dir runs of `cfg` use: `backup.temp_dir`, else the system temp dir.
pub fn temp_base(cfg: &Config) -> PathBuf {
    cfg.backup
        .temp_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir)
}

/// Warnings about directories other users can read or enter: the local store root and the
/// temp dir (`backup.temp_dir`; the system temp dir only when it lacks the sticky bit, since
/// the per-run directories inside it are private anyway). Each names the path, its mode and
/// the fix (`chmod 700 PATH`). Paths that do not exist are skipped. For `config check` and
/// the daemon's `/readyz`.
pub fn permission_warnings(cfg: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |what: &str, p: &Path, allow_sticky: bool| {
        let Ok(m) = std::fs::metadata(p) else {
            return;
        };
        let mode = m.permissions().mode();
        if allow_sticky && mode & 0o1000 != 0 {
            return;
        }
        if mode & 0o077 != 0 {
            out.push(format!(
                "{what} {} is mode {:04o}: other users can {} it, and backups hold every Kubernetes Secret; run `chmod 700 {}`",
                p.display(),
                mode & 0o7777,
                if mode & 0o044 != 0 { "read" } else { "enter" },
                p.display()
            ));
        }
    };
    if cfg.storage.backend == Backend::Local {
        check("storage.local.path", &cfg.storage.local.path, false);
    }
    match &cfg.backup.temp_dir {
        Some(t) => check("backup.temp_dir", t, false),
        None => check("temp dir", &std::env::temp_dir(), true),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_dir_and_files_whatever_the_umask() {
        let base = tempfile::tempdir().unwrap();
        let w = WorkDir::create(base.path()).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(w.path()), 0o700);
        let (_f, p) = w.create_file("snapshot.db").unwrap();
        assert_eq!(mode(&p), 0o600);
        assert_eq!(mode(&w.path().join(LOCK_FILE)), 0o600);
        let name = w.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(&format!("{PREFIX}{}-", std::process::id())),
            "{name}"
        );
        let dir = w.path().to_path_buf();
        drop(w);
        assert!(!dir.exists());
    }

    #[test]
    fn sweep_removes_unlocked_only() {
        let base = tempfile::tempdir().unwrap();
        let live = WorkDir::create(base.path()).unwrap();
        // A dead run: its directory with a lock file nobody holds.
        let dead = base
            .path()
            .join(format!("{PREFIX}999999999-00000000000000aa"));
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join(LOCK_FILE), "").unwrap();
        std::fs::write(dead.join("snapshot.db"), "secret").unwrap();
        // A legacy partial file, old, and a fresh one.
        let old = base.path().join(".etcd-lifeboat-abc.db.partial");
        std::fs::write(&old, "x").unwrap();
        let f = File::options().write(true).open(&old).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
        let fresh = base.path().join(".etcd-lifeboat-def.db.partial");
        std::fs::write(&fresh, "x").unwrap();
        let unrelated = base.path().join("something-else");
        std::fs::create_dir(&unrelated).unwrap();

        let mut removed = sweep_stale(base.path());
        removed.sort();
        let mut want = vec![dead.clone(), old.clone()];
        want.sort();
        assert_eq!(removed, want);
        assert!(live.path().exists() && fresh.exists() && unrelated.exists());
        assert!(!dead.exists() && !old.exists());
    }

    #[test]
    fn warns_on_open_dirs() {
        let d = tempfile::tempdir().unwrap();
        let store = d.path().join("store");
        let tmp = d.path().join("tmp");
        std::fs::create_dir(&store).unwrap();
        std::fs::create_dir(&tmp).unwrap();
        std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700)).unwrap();
        let mut cfg = Config::default();
        cfg.storage.local.path = store.clone();
        cfg.backup.temp_dir = Some(tmp.clone());
        let w = permission_warnings(&cfg);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains(&format!("chmod 700 {}", store.display())),
            "{w:?}"
        );
        std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o711)).unwrap();
        let w = permission_warnings(&cfg);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("enter") && w[0].contains("backup.temp_dir"),
            "{w:?}"
        );
    }
}
