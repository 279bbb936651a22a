//! The local directory store (`storage.backend: local`, `storage.local.path`).
//!
//! An object `a/b.json` is the file `<path>/a/b.json`. Writes go to a temp file beside the
//! target (`.<name>.partial-<16 hex>`), are fsynced, renamed over the target, and the directory
//! is fsynced, so a crash leaves either the old object, the new one, or a temp file that
//! [`LocalStore::list`] ignores (`prune` may remove it). Same pattern as rustic's local
//! backend.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::io::AsyncWriteExt;

use super::{ObjectKey, ObjectMeta, ObjectReader, StoreError};

/// Marker in temp file names: `.<name>.partial-<random>`.
pub const PARTIAL_MARKER: &str = ".partial-";

/// A store rooted at a directory.
#[derive(Clone, Debug)]
pub struct LocalStore {
    root: PathBuf,
}

/// An upload to a temp file; see [`super::Upload`].
#[derive(Debug)]
pub struct LocalUpload {
    file: Option<tokio::fs::File>,
    tmp: PathBuf,
    target: PathBuf,
    root: PathBuf,
    done: bool,
}

fn io_err(path: &Path, what: &str, e: std::io::Error) -> StoreError {
    let fix = match e.kind() {
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

/// True for temp file names (`.<name>.partial-<random>`).
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(PARTIAL_MARKER)
}

impl LocalStore {
    /// Opens the store at `root`, creating the directory and its parents when missing.
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
                tokio::fs::create_dir_all(root)
                    .await
                    .map_err(|e| io_err(root, "cannot create store directory", e))?
            }
            Err(e) => return Err(io_err(root, "cannot access store directory", e)),
        }
        Ok(LocalStore {
            root: root.to_path_buf(),
        })
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

    /// Creates and removes a probe temp file in the root.
    ///
    /// Errors: [`StoreError::Io`] naming the directory when it is missing or not writable.
    pub async fn check(&self) -> Result<(), StoreError> {
        let probe = self
            .root
            .join(format!(".check{PARTIAL_MARKER}{}", random_suffix()));
        let f = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
            .await
            .map_err(|e| io_err(&self.root, "cannot write to store directory", e))?;
        drop(f);
        tokio::fs::remove_file(&probe)
            .await
            .map_err(|e| io_err(&probe, "cannot remove probe file", e))
    }

    /// Creates the parent directories of `key` and its temp file.
    pub(crate) async fn begin_upload(&self, key: &ObjectKey) -> Result<LocalUpload, StoreError> {
        let target = self.path_of(key);
        let dir = target
            .parent()
            .expect("object path has a parent")
            .to_path_buf();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| io_err(&dir, "cannot create directory", e))?;
        let tmp = dir.join(format!(
            ".{}{PARTIAL_MARKER}{}",
            key.file_name(),
            random_suffix()
        ));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .await
            .map_err(|e| io_err(&dir, "cannot create a file in store directory", e))?;
        Ok(LocalUpload {
            file: Some(file),
            tmp,
            target,
            root: self.root.clone(),
            done: false,
        })
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
        let p = self.path_of(key);
        match tokio::fs::read(&p).await {
            Ok(v) => Ok(Bytes::from(v)),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(StoreError::NotFound {
                key: key.to_string(),
            }),
            Err(e) => Err(io_err(&p, "cannot read", e)),
        }
    }

    pub(crate) async fn get_stream(&self, key: &ObjectKey) -> Result<ObjectReader, StoreError> {
        let p = self.path_of(key);
        match tokio::fs::File::open(&p).await {
            Ok(f) => Ok(Box::pin(tokio::io::BufReader::with_capacity(1 << 20, f))),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(StoreError::NotFound {
                key: key.to_string(),
            }),
            Err(e) => Err(io_err(&p, "cannot open", e)),
        }
    }

    pub(crate) async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || list_blocking(&root, &prefix))
            .await
            .expect("list task panicked")
    }

    pub(crate) async fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        let p = self.path_of(key);
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

fn random_suffix() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

impl LocalUpload {
    pub(crate) async fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        let f = self
            .file
            .as_mut()
            .expect("upload file open until finish/abort");
        f.write_all(chunk)
            .await
            .map_err(|e| io_err(&self.tmp, "cannot write", e))
    }

    pub(crate) async fn finish(mut self) -> Result<(), StoreError> {
        let r = self.finish_inner().await;
        if r.is_err() {
            let _ = tokio::fs::remove_file(&self.tmp).await;
        }
        self.done = true;
        r
    }

    async fn finish_inner(&mut self) -> Result<(), StoreError> {
        let mut f = self
            .file
            .take()
            .expect("upload file open until finish/abort");
        f.flush()
            .await
            .map_err(|e| io_err(&self.tmp, "cannot write", e))?;
        f.sync_all()
            .await
            .map_err(|e| io_err(&self.tmp, "cannot fsync", e))?;
        drop(f);
        tokio::fs::rename(&self.tmp, &self.target)
            .await
            .map_err(|e| io_err(&self.target, "cannot rename temp file to", e))?;
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
        drop(self.file.take());
        match tokio::fs::remove_file(&self.tmp).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&self.tmp, "cannot remove temp file", e)),
        }
    }
}

impl Drop for LocalUpload {
    fn drop(&mut self) {
        if !self.done {
            drop(self.file.take());
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
