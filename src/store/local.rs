//! The local directory store (`storage.backend: local`, `storage.local.path`).
//!
//! An object `a/b.json` is the file `<path>/a/b.json`. Writes go to a temp file beside the
//! target (`.<name>.partial-<16 hex>`), are fsynced, renamed over the target (or hard-linked
//! to it for a conditional create, which fails when the target exists), and the directory is
//! fsynced, so a crash leaves either the old object, the new one, or a temp file that
//! [`LocalStore::list`] ignores. Same pattern as rustic's local backend.
//!
//! - **Private**: files are created 0600 and directories (the root too, when this tool creates
//!   it) 0700, the mode set explicitly after creation so the umask does not matter
//!   ([`create_private_file`], [`create_private_dir_all`]).
//! - **Writer locks**: the writer holds an exclusive `flock(2)` lock on its temp file from
//!   creation until the file is renamed or removed. The kernel drops the lock when the
//!   process dies (also on SIGKILL), so [`LocalStore::remove_stale_uploads`] removes exactly
//!   the temp files whose writer is gone and never those of a running upload, in any process.
//!   (On NFS, Linux emulates `flock` with POSIX locks, which works between clients when the
//!   server supports locking.)
//! - **No links followed**: a symbolic link inside the store (a key's directories or its file)
//!   is refused by every read, write and delete, and listings skip it: whoever can write to
//!   the store must not be able to make `prune` delete, or `backup` write, outside it. The root
//!   itself may be a link the operator made. Objects are opened `O_NOFOLLOW | O_NONBLOCK` and
//!   must be regular files (a FIFO planted as an object would block a reader forever).
//! - **Past the page cache**: objects are written with `O_DIRECT` where the file system takes
//!   it ([`super::direct::DirectWriter`]): a backup is not read back, and caching it would
//!   evict the node's own working set.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::direct::DirectWriter;
use super::{ObjectHead, ObjectKey, ObjectMeta, ObjectReader, StoreError};

/// Mode of every file this tool creates (`rw-------`).
pub const FILE_MODE: u32 = 0o600;
/// Mode of every directory this tool creates (`rwx------`).
pub const DIR_MODE: u32 = 0o700;

/// Creates `path` (which must not exist) with mode 0600 whatever the umask, opened for
/// writing.
///
/// Errors: the OS error (`AlreadyExists`, permission, ...).
pub fn create_private_file(path: &Path) -> std::io::Result<File> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)?;
    // The umask may have removed bits from FILE_MODE; set it exactly (fchmod).
    f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
    Ok(f)
}

/// `mkdir -p path`, every directory it creates being mode 0700 whatever the umask. Existing
/// directories keep their mode.
///
/// Errors: the OS error of the first directory that cannot be created (the error names no
/// path: callers add it).
pub fn create_private_dir_all(path: &Path) -> std::io::Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => return Err(std::io::Error::from(ErrorKind::NotADirectory)),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(DIR_MODE).create(path) {
        Ok(()) => std::fs::set_permissions(path, std::fs::Permissions::from_mode(DIR_MODE)),
        // Created meanwhile by another writer.
        Err(e) if e.kind() == ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Marker in temp file names: `.<name>.partial-<random>`.
pub const PARTIAL_MARKER: &str = ".partial-";

/// A store rooted at a directory.
#[derive(Clone, Debug)]
pub struct LocalStore {
    root: PathBuf,
    /// Set by [`super::Store::scoped_to_cluster`]: listings see only `<cluster_id>/` keys.
    pub(super) cluster_scope: Option<String>,
}

/// An upload to a temp file; see [`super::Upload`].
#[derive(Debug)]
pub struct LocalUpload {
    /// The temp file, open with the writer's exclusive lock until finish or abort, written
    /// past the page cache where the file system allows it ([`DirectWriter`]). `None` only
    /// while a write runs on a blocking thread (or after one was cancelled).
    file: Option<DirectWriter>,
    key: ObjectKey,
    tmp: PathBuf,
    target: PathBuf,
    root: PathBuf,
    done: bool,
}

fn io_err(path: &Path, what: &str, e: std::io::Error) -> StoreError {
    let reading = ["cannot open", "cannot read", "cannot stat", "cannot list"]
        .iter()
        .any(|w| what.starts_with(w));
    let fix = match e.kind() {
        ErrorKind::PermissionDenied if reading => {
            "; give this user read access to it (or run as the user that owns the store)"
        }
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => {
            "; give this user write access to the directory or set storage.local.path to a writable one"
        }
        ErrorKind::StorageFull => "; free space or point storage.local.path elsewhere",
        ErrorKind::NotFound => "; create it or fix storage.local.path",
        ErrorKind::NotADirectory | ErrorKind::AlreadyExists => {
            "; a part of the path is a file, not a directory: fix storage.local.path"
        }
        _ => "",
    };
    StoreError::Io {
        path: path.to_path_buf(),
        message: format!("{what} {}{fix}", path.display()),
        cause: e,
    }
}

/// The error for a symbolic link met inside the store at `path`.
fn link_err(path: &Path) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        message: format!(
            "{} is a symbolic link inside the store; the store does not follow links (one could \
             point anywhere): replace it with the directory or file it points to, or remove it",
            path.display()
        ),
        cause: std::io::Error::other("symbolic link in the store"),
    }
}

/// Checks every existing path component below `root` on the way to `rel` (segments separated
/// by `/`): none may be a symbolic link. Components that do not exist yet end the check.
///
/// Errors: a link ([`link_err`]); a component that cannot be examined.
fn check_no_links(root: &Path, rel: &str) -> Result<(), StoreError> {
    let mut p = root.to_path_buf();
    for seg in rel.split('/').filter(|s| !s.is_empty()) {
        p.push(seg);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => return Err(link_err(&p)),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
                return Ok(())
            }
            Err(e) => return Err(io_err(&p, "cannot stat", e)),
        }
    }
    Ok(())
}

/// Opens the object file `p` for reading without following a link and without blocking on a
/// FIFO, and checks it is a regular file. `key` names it in errors.
///
/// Errors: [`StoreError::NotFound`]; a link, or not a regular file, or any OS error.
fn open_object(p: &Path, key: &ObjectKey) -> Result<File, StoreError> {
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(p)
    {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(StoreError::NotFound {
                key: key.to_string(),
            })
        }
        // O_NOFOLLOW on a link: ELOOP.
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Err(link_err(p))
        }
        Err(e) => return Err(io_err(p, "cannot open", e)),
    };
    let m = f.metadata().map_err(|e| io_err(p, "cannot stat", e))?;
    if !m.is_file() {
        return Err(StoreError::Io {
            path: p.to_path_buf(),
            message: format!(
                "store object {} is not a regular file (a directory, FIFO or device); remove it",
                p.display()
            ),
            cause: std::io::Error::from(ErrorKind::InvalidInput),
        });
    }
    // O_NONBLOCK has no effect on a regular file's reads.
    Ok(f)
}

/// True for temp file names (`.<name>.partial-<random>`).
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(PARTIAL_MARKER)
}

impl LocalStore {
    /// Opens the store at `root`, creating the directory and its parents (mode 0700) when
    /// missing.
    ///
    /// Errors: [`StoreError::Io`] when it cannot be created (e.g. permission denied: the
    /// message names the path and says to fix permissions or `storage.local.path`), or when
    /// `root` exists but is not a directory.
    pub async fn new(root: &Path) -> Result<LocalStore, StoreError> {
        match tokio::fs::metadata(root).await {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(StoreError::Io {
                    path: root.to_path_buf(),
                    message: format!(
                        "store path {} is not a directory; set storage.local.path to a directory",
                        root.display()
                    ),
                    cause: std::io::Error::from(ErrorKind::NotADirectory),
                })
            }
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
                let r = root.to_path_buf();
                tokio::task::spawn_blocking(move || create_private_dir_all(&r))
                    .await
                    .expect("mkdir task panicked")
                    .map_err(|e| io_err(root, "cannot create store directory", e))?
            }
            Err(e) => return Err(io_err(root, "cannot access store directory", e)),
        }
        Ok(LocalStore {
            root: root.to_path_buf(),
            cluster_scope: None,
        })
    }

    /// Opens the store at `root` for reading (list, verify, prune, delete, restore): unlike
    /// [`LocalStore::new`] it creates nothing, so a mistyped path is an error rather than an
    /// empty store (and a dry run writes nothing).
    ///
    /// Errors: [`StoreError::Io`] when `root` does not exist (the message names the path and
    /// `storage.local.path`), is not a directory, or cannot be accessed.
    pub async fn existing(root: &Path) -> Result<LocalStore, StoreError> {
        match tokio::fs::metadata(root).await {
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
                Err(StoreError::Io {
                    path: root.to_path_buf(),
                    message: format!(
                        "store path {} does not exist: check storage.local.path (ETCD_LIFEBOAT_LOCAL_PATH); a backup creates it",
                        root.display()
                    ),
                    cause: e,
                })
            }
            _ => LocalStore::new(root).await,
        }
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `"local:<path>"`.
    pub fn describe(&self) -> String {
        format!("local:{}", self.root.display())
    }

    /// The file that holds `key`.
    pub fn path_of(&self, key: &ObjectKey) -> PathBuf {
        let mut p = self.root.clone();
        p.extend(key.as_str().split('/'));
        p
    }

    /// [`LocalStore::path_of`] after [`check_no_links`] on the way to it.
    ///
    /// Errors: a symbolic link inside the store, or a component that cannot be examined.
    fn checked_path(&self, key: &ObjectKey) -> Result<PathBuf, StoreError> {
        check_no_links(&self.root, key.as_str())?;
        Ok(self.path_of(key))
    }

    /// [`LocalStore::path_of`] after [`check_no_links`] on the key's directories only: for
    /// deletes (unlink removes a link, not what it names) and for reads through
    /// [`open_object`] (`O_NOFOLLOW` refuses a link as the file itself).
    ///
    /// Errors: as [`LocalStore::checked_path`].
    fn checked_dirs(&self, key: &ObjectKey) -> Result<PathBuf, StoreError> {
        let dirs = key.as_str().rsplit_once('/').map_or("", |(d, _)| d);
        check_no_links(&self.root, dirs)?;
        Ok(self.path_of(key))
    }

    /// Checks, without writing, that the root is a directory this user can create files in:
    /// `stat`, then `access(W_OK | X_OK)` (which also fails on a read-only mount).
    ///
    /// Errors: [`StoreError::Io`] naming the directory and the fix.
    pub async fn check(&self) -> Result<(), StoreError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let m = std::fs::metadata(&root)
                .map_err(|e| io_err(&root, "cannot access store directory", e))?;
            if !m.is_dir() {
                return Err(StoreError::Io {
                    path: root.clone(),
                    message: format!(
                        "store path {} is not a directory; set storage.local.path to a directory",
                        root.display()
                    ),
                    cause: std::io::Error::from(ErrorKind::NotADirectory),
                });
            }
            rustix::fs::access(
                &root,
                rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
            )
            .map_err(|e| io_err(&root, "cannot write to store directory", e.into()))
        })
        .await
        .expect("check task panicked")
    }

    /// A warning when group or others have any access to the root (see
    /// [`super::Store::privacy_warning`]).
    pub fn privacy_warning(&self) -> Option<String> {
        let mode = std::fs::metadata(&self.root).ok()?.mode() & 0o777;
        (mode & 0o077 != 0).then(|| {
            format!(
                "store directory {p} is mode {mode:04o}: other users can read the backups (every \
                 Kubernetes Secret); run chmod 700 {p}",
                p = self.root.display()
            )
        })
    }

    /// [`super::Store::head`]: `stat` of the object's file.
    pub(crate) async fn head(&self, key: &ObjectKey) -> Result<ObjectHead, StoreError> {
        let p = self.checked_path(key)?;
        let m = match tokio::fs::symlink_metadata(&p).await {
            Ok(m) if m.is_file() => m,
            Ok(_) => {
                return Err(StoreError::NotFound {
                    key: key.to_string(),
                })
            }
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
                return Err(StoreError::NotFound {
                    key: key.to_string(),
                })
            }
            Err(e) => return Err(io_err(&p, "cannot stat", e)),
        };
        Ok(ObjectHead {
            key: key.clone(),
            size: m.len(),
            last_modified: m
                .modified()
                .map(DateTime::<Utc>::from)
                .unwrap_or(DateTime::<Utc>::UNIX_EPOCH),
            sse: None,
            sse_kms_key_id: None,
            lock_mode: None,
            retain_until: None,
            legal_hold: false,
            checksum_sha256: None,
        })
    }

    /// Creates the parent directories of `key` (0700) and its temp file (0600), locked.
    pub(crate) async fn begin_upload(&self, key: &ObjectKey) -> Result<LocalUpload, StoreError> {
        let target = self.checked_path(key)?;
        let dir = target
            .parent()
            .expect("object path has a parent")
            .to_path_buf();
        let name = key.file_name().to_string();
        let d = dir.clone();
        let (tmp, file) = tokio::task::spawn_blocking(move || {
            create_private_dir_all(&d).map_err(|e| io_err(&d, "cannot create directory", e))?;
            // A cleaner may lock a fresh temp file between our create and our lock (it then
            // removes it): take another name.
            let mut attempts = 0;
            loop {
                let tmp = d.join(format!(".{name}{PARTIAL_MARKER}{}", random_suffix()));
                let f = create_private_file(&tmp)
                    .map_err(|e| io_err(&d, "cannot create a file in store directory", e))?;
                match f.try_lock() {
                    Ok(()) => return Ok((tmp, f)),
                    Err(std::fs::TryLockError::WouldBlock) if attempts < 3 => attempts += 1,
                    Err(e) => {
                        let _ = std::fs::remove_file(&tmp);
                        return Err(io_err(
                            &tmp,
                            "cannot lock temp file",
                            std::io::Error::other(e.to_string()),
                        ));
                    }
                }
            }
        })
        .await
        .expect("create task panicked")?;
        Ok(LocalUpload {
            file: Some(DirectWriter::new(file)),
            key: key.clone(),
            tmp,
            target,
            root: self.root.clone(),
            done: false,
        })
    }

    /// [`super::Store::put_bytes_new`]: temp file, then `link(2)` to the target.
    pub(crate) async fn put_bytes_new(
        &self,
        key: &ObjectKey,
        data: Bytes,
    ) -> Result<(), StoreError> {
        let mut u = self.begin_upload(key).await?;
        if let Err(e) = u.write(&data).await {
            let _ = u.abort().await;
            return Err(e);
        }
        u.finish_new().await
    }

    /// [`super::Store::get_bytes_limited`]: size from the open file's metadata, then a read
    /// of at most `max + 1` bytes.
    pub(crate) async fn get_bytes_limited(
        &self,
        key: &ObjectKey,
        max: u64,
    ) -> Result<Bytes, StoreError> {
        let p = self.checked_dirs(key)?;
        let k = key.clone();
        tokio::task::spawn_blocking(move || {
            let f = open_object(&p, &k)?;
            let size = f
                .metadata()
                .map_err(|e| io_err(&p, "cannot stat", e))?
                .len();
            let too_large = |size| StoreError::TooLarge {
                key: k.to_string(),
                size,
                max,
            };
            if size > max {
                return Err(too_large(size));
            }
            let mut v = Vec::with_capacity(size as usize);
            f.take(max.saturating_add(1))
                .read_to_end(&mut v)
                .map_err(|e| io_err(&p, "cannot read", e))?;
            if v.len() as u64 > max {
                return Err(too_large(v.len() as u64)); // grew while reading
            }
            Ok(Bytes::from(v))
        })
        .await
        .expect("read task panicked")
    }

    /// [`super::Store::remove_stale_uploads`]: every `.partial-` temp file under the root
    /// whose lock is free. Returns the removed paths.
    ///
    /// Errors: a directory that cannot be listed; a file that cannot be removed is logged and
    /// skipped.
    pub async fn remove_stale_uploads(&self) -> Result<Vec<String>, StoreError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || remove_stale_blocking(&root))
            .await
            .expect("cleanup task panicked")
    }

    pub(crate) async fn put_bytes(&self, key: &ObjectKey, data: Bytes) -> Result<(), StoreError> {
        let mut u = self.begin_upload(key).await?;
        if let Err(e) = u.write(&data).await {
            let _ = u.abort().await;
            return Err(e);
        }
        u.finish().await
    }

    pub(crate) async fn get_bytes(&self, key: &ObjectKey) -> Result<Bytes, StoreError> {
        let p = self.checked_dirs(key)?;
        let k = key.clone();
        tokio::task::spawn_blocking(move || {
            let mut v = Vec::new();
            open_object(&p, &k)?
                .read_to_end(&mut v)
                .map_err(|e| io_err(&p, "cannot read", e))?;
            Ok(Bytes::from(v))
        })
        .await
        .expect("read task panicked")
    }

    pub(crate) async fn get_stream(&self, key: &ObjectKey) -> Result<ObjectReader, StoreError> {
        let p = self.checked_dirs(key)?;
        let k = key.clone();
        let f = tokio::task::spawn_blocking(move || open_object(&p, &k))
            .await
            .expect("open task panicked")?;
        let f = tokio::fs::File::from_std(f);
        Ok(Box::pin(tokio::io::BufReader::with_capacity(1 << 20, f)))
    }

    pub(crate) async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || list_blocking(&root, &prefix))
            .await
            .expect("list task panicked")
    }

    pub(crate) async fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        let p = self.checked_dirs(key)?;
        match tokio::fs::remove_file(&p).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&p, "cannot delete", e)),
        }
    }
}

/// Walks the directory of the deepest complete segment of `prefix`, synchronously.
fn list_blocking(root: &Path, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
    // Start at the directory named by the part of the prefix before its last '/'.
    let (start_rel, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
    let mut start = root.to_path_buf();
    let mut rel_base = String::new();
    for seg in start_rel.split('/').filter(|s| !s.is_empty()) {
        if seg == "." || seg == ".." {
            return Ok(Vec::new());
        }
        start.push(seg);
        rel_base.push_str(seg);
        rel_base.push('/');
    }
    check_no_links(root, start_rel)?;
    let mut out = Vec::new();
    let mut stack = vec![(start, rel_base)];
    while let Some((dir, rel)) = stack.pop() {
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound || e.kind() == ErrorKind::NotADirectory => {
                continue
            }
            Err(e) => return Err(io_err(&dir, "cannot list", e)),
        };
        for ent in rd {
            let ent = ent.map_err(|e| io_err(&dir, "cannot list", e))?;
            let Some(name) = ent.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if name.starts_with('.') {
                // Temp files (`.x.partial-...`, see `is_temp_name`) and other hidden names are
                // not objects.
                continue;
            }
            let rel_name = format!("{rel}{name}");
            let ft = ent
                .file_type()
                .map_err(|e| io_err(&ent.path(), "cannot stat", e))?;
            if ft.is_symlink() {
                tracing::warn!(path = %ent.path().display(), "store: skipping a symbolic link (the store does not follow links)");
                continue;
            }
            if ft.is_dir() {
                // Descend only where keys below can still match the prefix.
                let d = format!("{rel_name}/");
                if d.starts_with(prefix) || prefix.starts_with(&d) {
                    stack.push((ent.path(), d));
                }
                continue;
            }
            if !ft.is_file() || !rel_name.starts_with(prefix) {
                continue;
            }
            let Ok(key) = ObjectKey::new(rel_name) else {
                continue;
            };
            let meta = match ent.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == ErrorKind::NotFound => continue, // deleted meanwhile
                Err(e) => return Err(io_err(&ent.path(), "cannot stat", e)),
            };
            let last_modified: DateTime<Utc> = meta
                .modified()
                .map(DateTime::<Utc>::from)
                .unwrap_or_else(|_| DateTime::<Utc>::UNIX_EPOCH);
            out.push(ObjectMeta {
                key,
                size: meta.len(),
                last_modified,
            });
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

fn remove_stale_blocking(root: &Path) -> Result<Vec<String>, StoreError> {
    let mut removed = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&dir, "cannot list", e)),
        };
        for ent in rd {
            let ent = ent.map_err(|e| io_err(&dir, "cannot list", e))?;
            let Ok(ft) = ent.file_type() else { continue };
            let name = ent.file_name();
            let name = name.to_string_lossy();
            if ft.is_dir() && !name.starts_with('.') {
                stack.push(ent.path());
            } else if ft.is_file() && is_temp_name(&name) {
                let p = ent.path();
                match remove_if_unlocked(&p) {
                    Ok(true) => removed.push(p.display().to_string()),
                    Ok(false) => {}
                    Err(e) => tracing::warn!("cannot remove stale temp file {}: {e}", p.display()),
                }
            }
        }
    }
    removed.sort();
    Ok(removed)
}

/// Removes the temp file `p` if nobody holds its lock (its writer is gone). Opened without
/// following symlinks; the lock is held while unlinking so a writer cannot take it over.
fn remove_if_unlocked(p: &Path) -> std::io::Result<bool> {
    use rustix::fs::{Mode, OFlags};
    let fd = match rustix::fs::open(
        p,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(false), // finished or removed meanwhile
        Err(e) => return Err(e.into()),
    };
    let f = File::from(fd);
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(false),
        Err(std::fs::TryLockError::Error(e)) => return Err(e),
    }
    match std::fs::remove_file(p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn random_suffix() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

/// The error of an upload whose writer is gone: an earlier write was cancelled mid-way.
fn interrupted(tmp: &Path) -> StoreError {
    io_err(
        tmp,
        "cannot write",
        std::io::Error::other("an earlier write of this upload was interrupted"),
    )
}

impl LocalUpload {
    pub(crate) async fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        let mut rest = chunk;
        while !rest.is_empty() {
            let w = self.writer()?;
            let n = w.stage(rest);
            rest = &rest[n..];
            if w.is_full() {
                self.on_blocking_thread("cannot write", DirectWriter::write_stage)
                    .await?;
            }
        }
        Ok(())
    }

    fn writer(&mut self) -> Result<&mut DirectWriter, StoreError> {
        let tmp = &self.tmp;
        self.file.as_mut().ok_or_else(|| interrupted(tmp))
    }

    /// Runs `op` on the writer on a blocking thread; its error is reported as `what`.
    async fn on_blocking_thread(
        &mut self,
        what: &str,
        op: fn(&mut DirectWriter) -> std::io::Result<()>,
    ) -> Result<(), StoreError> {
        let mut w = self.file.take().ok_or_else(|| interrupted(&self.tmp))?;
        let (w, r) = tokio::task::spawn_blocking(move || {
            let r = op(&mut w);
            (w, r)
        })
        .await
        .expect("write task panicked");
        self.file = Some(w);
        r.map_err(|e| io_err(&self.tmp, what, e))
    }

    /// Renames the temp file over the target (replacing it).
    pub(crate) async fn finish(mut self) -> Result<(), StoreError> {
        let r = self.finish_inner(false).await;
        self.cleanup_after_finish(&r).await;
        r
    }

    /// Hard-links the temp file to the target, failing with [`StoreError::AlreadyExists`]
    /// when the target exists, then removes the temp file.
    pub(crate) async fn finish_new(mut self) -> Result<(), StoreError> {
        let r = self.finish_inner(true).await;
        self.cleanup_after_finish(&r).await;
        r
    }

    async fn cleanup_after_finish(&mut self, r: &Result<(), StoreError>) {
        // After a rename the temp name is gone; after a link (or an error) remove it.
        let _ = tokio::fs::remove_file(&self.tmp).await;
        if r.is_err() {
            drop(self.file.take());
        }
        self.done = true;
    }

    async fn finish_inner(&mut self, exclusive: bool) -> Result<(), StoreError> {
        self.on_blocking_thread("cannot write", DirectWriter::write_stage)
            .await?;
        self.on_blocking_thread("cannot fsync", |w| w.file().sync_all())
            .await?;
        // The file (and its lock) stays open until the temp name is gone, so a cleaner never
        // sees an unlocked temp file of a live upload.
        if exclusive {
            match tokio::fs::hard_link(&self.tmp, &self.target).await {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    return Err(StoreError::AlreadyExists {
                        key: self.key.to_string(),
                    })
                }
                Err(e) => return Err(io_err(&self.target, "cannot link temp file to", e)),
            }
            tokio::fs::remove_file(&self.tmp)
                .await
                .map_err(|e| io_err(&self.tmp, "cannot remove temp file", e))?;
        } else {
            tokio::fs::rename(&self.tmp, &self.target)
                .await
                .map_err(|e| io_err(&self.target, "cannot rename temp file to", e))?;
        }
        drop(self.file.take());
        // fsync the object's directory (the rename) and its ancestors up to the store root
        // (directories begin_upload may have created).
        let dir = self
            .target
            .parent()
            .expect("object path has a parent")
            .to_path_buf();
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let mut d = Some(dir.as_path());
            while let Some(p) = d {
                std::fs::File::open(p)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| io_err(p, "cannot fsync directory", e))?;
                if p == root {
                    break;
                }
                d = p.parent();
            }
            Ok(())
        })
        .await
        .expect("fsync task panicked")
    }

    pub(crate) async fn abort(mut self) -> Result<(), StoreError> {
        self.done = true;
        // Remove the name while still holding the lock, then close.
        let r = match tokio::fs::remove_file(&self.tmp).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&self.tmp, "cannot remove temp file", e)),
        };
        drop(self.file.take());
        r
    }
}

impl Drop for LocalUpload {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
            drop(self.file.take());
        }
    }
}
