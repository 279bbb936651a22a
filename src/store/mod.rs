//! Object stores that hold backups: a local directory ([`LocalStore`]) and S3 or an
//! S3-compatible service ([`S3Store`]), behind one enum ([`Store`]) with the same guarantees.
//!
//! # Guarantees (every backend; checked by `tests/store_conformance.rs` against both)
//! - **Keys** are [`ObjectKey`]s: `/`-separated, relative to the store root (the local directory
//!   or `s3://bucket/prefix/`). No leading `/`, no empty, `.` or `..` segments, no segment that
//!   starts with `.` (reserved for temporary files).
//! - **Atomic writes**: the bytes of an [`Upload`] (and of [`Store::put_bytes`]) become visible
//!   under their key only when [`Upload::finish`] returns `Ok`; before that, [`Store::get_bytes`]
//!   says [`StoreError::NotFound`] and [`Store::list`] does not show the key. A finished write
//!   replaces an existing object of the same key.
//! - **Abort leaves nothing**: [`Upload::abort`] (or dropping an unfinished [`Upload`]) removes
//!   the temporary file or aborts the S3 multipart upload.
//! - **Bounded memory**: an upload holds at most two parts (S3: `storage.s3.part_size` bytes
//!   each) however large the object.
//! - **Listing** is recursive and sorted by key (byte order); temporary objects are not listed.
//! - **NotFound is distinct**: reading a missing key gives [`StoreError::NotFound`]; deleting a
//!   missing key is not an error.
//!
//! # Layout of backups
//! `<cluster-id-hex>/<id>.db.zst` (data) and `<cluster-id-hex>/<id>.json` (manifest); see
//! [`manifest`].
#![warn(missing_docs)]

pub mod local;
pub mod manifest;
pub mod retention;
pub mod s3;

use std::path::PathBuf;
use std::pin::Pin;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tokio::io::AsyncRead;

use crate::config::{Backend, StorageConfig};

pub use local::LocalStore;
pub use manifest::{backup_id, catalog, data_key, find, manifest_key, Manifest};
pub use s3::S3Store;

/// A storage error. Messages name the object or path and say what to do next.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist. `key` is the [`ObjectKey`] (not the full path or S3 key).
    #[error("object {key} not found")]
    NotFound {
        /// The key that was looked up.
        key: String,
    },
    /// The object already exists where it must not. Not produced by the current backends (a
    /// finished upload replaces an existing object); reserved for conditional writes.
    #[error("object {key} already exists")]
    AlreadyExists {
        /// The key that was written.
        key: String,
    },
    /// A backend (S3 service, network, credentials, bucket) failed. `message` holds the cause
    /// and the fix, e.g. "bucket X does not exist at endpoint Y; create it or fix
    /// storage.s3.bucket".
    #[error("{backend} store, {key}: {message}")]
    Backend {
        /// `"s3"` or `"local"`.
        backend: &'static str,
        /// The object key, bucket or operation concerned.
        key: String,
        /// What failed, why, and what to do.
        message: String,
    },
    /// A local file system operation failed. `message` names the operation and the path and
    /// says what to do; `cause` is the OS error (shown in the message).
    #[error("{message}: {cause}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// What was being done on `path`, and the fix.
        message: String,
        /// The OS error.
        cause: std::io::Error,
    },
    /// A string is not a valid [`ObjectKey`].
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey {
        /// The rejected string.
        key: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// [`manifest::find`] found no backup for the given id, prefix or `latest`.
    #[error("no backup {which:?} in {store}; run `etcd-lifeboat list` to see the stored backups")]
    BackupNotFound {
        /// What was asked for.
        which: String,
        /// [`Store::describe`] of the store searched.
        store: String,
    },
    /// [`manifest::find`] was given an id prefix that matches several backups.
    #[error("{which:?} matches {} backups ({}); give more characters of the id", candidates.len(), candidates.join(", "))]
    Ambiguous {
        /// The prefix asked for.
        which: String,
        /// Ids of the matching backups, newest first.
        candidates: Vec<String>,
    },
}

impl StoreError {
    /// True for [`StoreError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }
}

/// Name of an object, relative to the store root: `/`-separated segments such as
/// `"8e9e05c52164694d/20261122T230000Z-r0000000000002487.json"`.
///
/// Rules (checked by [`ObjectKey::new`]): not empty; at most 1024 bytes; no leading or trailing
/// `/`; no empty segment (`a//b`); no segment `.`, `..` or starting with `.` (such names are
/// reserved for temporary files); no NUL or `\`.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct ObjectKey(String);

impl ObjectKey {
    /// Validates `key`.
    ///
    /// Errors: [`StoreError::InvalidKey`] naming the rule broken.
    pub fn new(key: impl Into<String>) -> Result<ObjectKey, StoreError> {
        let key = key.into();
        let bad = |reason| {
            Err(StoreError::InvalidKey {
                key: key.clone(),
                reason,
            })
        };
        if key.is_empty() {
            return bad("empty");
        }
        if key.len() > 1024 {
            return bad("longer than 1024 bytes");
        }
        if key.contains('\0') || key.contains('\\') {
            return bad("contains NUL or backslash");
        }
        if key.starts_with('/') || key.ends_with('/') {
            return bad("starts or ends with '/'");
        }
        for seg in key.split('/') {
            if seg.is_empty() {
                return bad("has an empty segment ('//')");
            }
            if seg.starts_with('.') {
                return bad("has a segment starting with '.' (reserved for temporary files)");
            }
        }
        Ok(ObjectKey(key))
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last segment (`"x.json"` of `"a/x.json"`).
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ObjectKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ObjectKey {
    type Error = StoreError;
    fn try_from(s: String) -> Result<Self, StoreError> {
        ObjectKey::new(s)
    }
}

impl TryFrom<&str> for ObjectKey {
    type Error = StoreError;
    fn try_from(s: &str) -> Result<Self, StoreError> {
        ObjectKey::new(s)
    }
}

impl std::str::FromStr for ObjectKey {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        ObjectKey::new(s)
    }
}

impl From<ObjectKey> for String {
    fn from(k: ObjectKey) -> String {
        k.0
    }
}

/// One listed object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Its key, relative to the store root.
    pub key: ObjectKey,
    /// Size in bytes.
    pub size: u64,
    /// Modification time (local: file mtime; S3: `LastModified`), UTC.
    pub last_modified: DateTime<Utc>,
}

/// What a finished [`Upload`] stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UploadInfo {
    /// Number of bytes stored.
    pub bytes: u64,
    /// SHA-256 of the bytes stored, computed while writing.
    pub sha256: [u8; 32],
}

/// A readable object body, for large objects ([`Store::get_stream`]).
pub type ObjectReader = Pin<Box<dyn AsyncRead + Send>>;

/// An object store. Enum dispatch over the backends; cheap to clone (S3 clients share their
/// connection pool).
#[derive(Clone, Debug)]
pub enum Store {
    /// A directory (`storage.backend: local`).
    Local(LocalStore),
    /// An S3 bucket and prefix (`storage.backend: s3`).
    S3(S3Store),
}

impl Store {
    /// Opens the store that `cfg.backend` selects.
    ///
    /// Local: creates the directory (`mkdir -p`) when missing. S3: builds the client (region,
    /// endpoint, credentials chain, CA, timeouts) without contacting the service; use
    /// [`Store::check`] for that.
    ///
    /// Errors: [`StoreError::Io`] when the local directory cannot be created or the S3 CA file
    /// cannot be read (the message names the path and the fix).
    pub async fn from_config(cfg: &StorageConfig) -> Result<Store, StoreError> {
        Ok(match cfg.backend {
            Backend::Local => Store::Local(LocalStore::new(&cfg.local.path).await?),
            Backend::S3 => Store::S3(S3Store::from_config(&cfg.s3).await?),
        })
    }

    /// Where the store is: `"local:/var/lib/etcd-lifeboat"` or `"s3://bucket/prefix"`.
    pub fn describe(&self) -> String {
        match self {
            Store::Local(s) => s.describe(),
            Store::S3(s) => s.describe(),
        }
    }

    /// Checks that the store is reachable and writable: local: the directory exists and a
    /// probe file can be created; S3: the bucket exists and a probe object can be written and
    /// deleted.
    ///
    /// Errors: [`StoreError::Io`] (local) or [`StoreError::Backend`] (S3: missing bucket, bad
    /// credentials, unreachable endpoint), each naming the thing and the fix.
    pub async fn check(&self) -> Result<(), StoreError> {
        match self {
            Store::Local(s) => s.check().await,
            Store::S3(s) => s.check().await,
        }
    }

    /// Starts an upload to `key`. Bytes written become visible under `key` only after
    /// [`Upload::finish`]. Local: temp file `.<name>.partial-<random>` beside the target, fsync,
    /// rename, directory fsync. S3: single PutObject below `storage.s3.part_size`, else a
    /// multipart upload whose parts are sent while writing.
    ///
    /// Errors: local directory not writable ([`StoreError::Io`]).
    pub async fn begin_upload(&self, key: &ObjectKey) -> Result<Upload, StoreError> {
        let inner = match self {
            Store::Local(s) => UploadInner::Local(s.begin_upload(key).await?),
            Store::S3(s) => UploadInner::S3(s.begin_upload(key)),
        };
        Ok(Upload {
            inner,
            bytes: 0,
            hasher: Sha256::new(),
        })
    }

    /// Stores `data` under `key` atomically (replacing an existing object).
    ///
    /// Errors: as [`Store::begin_upload`] and [`Upload::finish`].
    pub async fn put_bytes(&self, key: &ObjectKey, data: Bytes) -> Result<(), StoreError> {
        match self {
            Store::Local(s) => s.put_bytes(key, data).await,
            Store::S3(s) => s.put_bytes(key, data).await,
        }
    }

    /// Reads a whole object into memory; for small objects (manifests).
    ///
    /// Errors: [`StoreError::NotFound`] when missing; backend errors.
    pub async fn get_bytes(&self, key: &ObjectKey) -> Result<Bytes, StoreError> {
        match self {
            Store::Local(s) => s.get_bytes(key).await,
            Store::S3(s) => s.get_bytes(key).await,
        }
    }

    /// Opens an object for streaming reads; for large objects (snapshots).
    ///
    /// Errors: [`StoreError::NotFound`] when missing; backend errors. Read errors later come
    /// from the reader as `std::io::Error`.
    pub async fn get_stream(&self, key: &ObjectKey) -> Result<ObjectReader, StoreError> {
        match self {
            Store::Local(s) => s.get_stream(key).await,
            Store::S3(s) => s.get_stream(key).await,
        }
    }

    /// All objects whose key starts with `prefix` (a plain string prefix, `""` for all),
    /// recursively, sorted by key. Temporary files and names that are not valid
    /// [`ObjectKey`]s are skipped.
    ///
    /// Errors: backend errors; a missing local directory lists as empty.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let mut v = match self {
            Store::Local(s) => s.list(prefix).await?,
            Store::S3(s) => s.list(prefix).await?,
        };
        v.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(v)
    }

    /// Deletes `key`. A missing object is not an error.
    ///
    /// Errors: backend errors (permission, network).
    pub async fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        match self {
            Store::Local(s) => s.delete(key).await,
            Store::S3(s) => s.delete(key).await,
        }
    }
}

/// An upload in progress, from [`Store::begin_upload`]. Call [`Upload::finish`] to publish
/// or [`Upload::abort`] to discard. Dropping it unfinished discards it too (local: the temp
/// file is removed; S3: an AbortMultipartUpload is sent in the background).
#[derive(Debug)]
pub struct Upload {
    inner: UploadInner,
    bytes: u64,
    hasher: Sha256,
}

#[derive(Debug)]
enum UploadInner {
    Local(local::LocalUpload),
    S3(s3::S3Upload),
}

impl Upload {
    /// Appends `chunk`. Memory stays bounded (S3: at most two parts are held: one being
    /// filled, one being sent).
    ///
    /// Errors: write or part-upload failures. After an error, call [`Upload::abort`] (or drop
    /// the upload).
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        if chunk.is_empty() {
            return Ok(());
        }
        match &mut self.inner {
            UploadInner::Local(u) => u.write(chunk).await?,
            UploadInner::S3(u) => u.write(chunk).await?,
        }
        self.hasher.update(chunk);
        self.bytes += chunk.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }

    /// Publishes the object under its key and returns its size and SHA-256.
    ///
    /// Errors: fsync/rename (local) or CompleteMultipartUpload/PutObject (S3) failures; the
    /// upload is cleaned up before the error is returned.
    pub async fn finish(self) -> Result<UploadInfo, StoreError> {
        match self.inner {
            UploadInner::Local(u) => u.finish().await?,
            UploadInner::S3(u) => u.finish().await?,
        }
        Ok(UploadInfo {
            bytes: self.bytes,
            sha256: self.hasher.finalize().into(),
        })
    }

    /// Discards the upload: removes the temp file (local) or aborts the multipart upload (S3).
    ///
    /// Errors: the cleanup itself failed (the message says what may be left behind).
    pub async fn abort(self) -> Result<(), StoreError> {
        match self.inner {
            UploadInner::Local(u) => u.abort().await,
            UploadInner::S3(u) => u.abort().await,
        }
    }
}
