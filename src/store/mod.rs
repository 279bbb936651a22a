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
//!   replaces an existing object of the same key; [`Store::put_bytes_new`] never does
//!   ([`StoreError::AlreadyExists`]).
//! - **Checked after writing**: [`Upload::finish`] and the `put_bytes*` calls stat (local) or
//!   HeadObject (S3) the stored object and fail, deleting it, when its size (or a full-object
//!   SHA-256 the store returns) differs from what was written ([`StoreError::StoredMismatch`]).
//! - **Abort leaves nothing**: [`Upload::abort`] (or dropping an unfinished [`Upload`]) removes
//!   the temporary file or aborts the S3 multipart upload. What a killed process leaves
//!   (`.partial-` files, multipart uploads) is removed by [`Store::remove_stale_uploads`].
//! - **Private**: the local store creates files 0600 and directories 0700 whatever the umask.
//! - **Bounded memory**: an upload holds at most [`s3::PARTS_IN_FLIGHT`] + 1 parts (S3:
//!   `storage.s3.part_size` bytes each) however large the object; [`Store::get_bytes_limited`]
//!   never reads more than its limit + 1 bytes.
//! - **Listing** is recursive and sorted by key (byte order); temporary objects are not listed.
//! - **NotFound is distinct**: reading a missing key gives [`StoreError::NotFound`]; deleting a
//!   missing key is not an error. Deleting an object under S3 Object Lock retention gives
//!   [`StoreError::Locked`] and changes nothing.
//! - **Health without writes**: [`Store::check`] only reads (stat / HeadBucket + a listing), so
//!   write-once credentials and Object Lock buckets work.
//!
//! # Layout of backups
//! `<cluster-id-hex>/<id>.db.zst` (data) and `<cluster-id-hex>/<id>.json` (manifest); see
//! [`manifest`].
#![warn(missing_docs)]

mod direct;
pub mod local;
pub mod manifest;
pub mod retention;
pub mod s3;

use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tokio::io::AsyncRead;

use crate::config::{Backend, StorageConfig};

pub use local::LocalStore;
pub use manifest::{
    backup_id, catalog, data_key, find, manifest_key, Manifest, ObjectLockInfo, SseInfo,
};
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
    /// [`Store::put_bytes_new`] found the key already there (another writer stored it first).
    #[error("object {key} already exists; another writer stored it first")]
    AlreadyExists {
        /// The key that was written.
        key: String,
    },
    /// [`Store::get_bytes_limited`]: the object is larger than the caller allows.
    #[error("object {key} is {size} bytes, more than the {max} bytes allowed; it is not what this tool stores there (remove or move it)")]
    TooLarge {
        /// The key that was read.
        key: String,
        /// Its size in bytes as far as known (at least `max + 1`).
        size: u64,
        /// The limit in bytes.
        max: u64,
    },
    /// [`Store::delete`]: the object is under S3 Object Lock retention (or a legal hold) and
    /// was left in place.
    #[error("object {key} is under Object Lock retention{}; it was kept and can be deleted after that date", match retain_until { Some(t) => format!(" until {}", t.to_rfc3339()), None => " (legal hold)".to_string() })]
    Locked {
        /// The key that was to be deleted.
        key: String,
        /// Until when it is retained; `None` for a legal hold without a date.
        retain_until: Option<DateTime<Utc>>,
    },
    /// The object as stored differs from what was written (size, or a full-object checksum
    /// the store returned); the object was deleted (unless `detail` says otherwise).
    #[error("object {key} as stored does not match what was written: {detail}; retry, and check the store's health if it happens again")]
    StoredMismatch {
        /// The key written.
        key: String,
        /// What differs, e.g. "store reports 10 bytes, 12 were written; it was deleted".
        detail: String,
    },
    /// A backend (S3 service, network, credentials, bucket) failed. `message` holds the cause
    /// and the fix, e.g. "bucket X does not exist at endpoint Y; create it or fix
    /// storage.s3.bucket".
    #[error("{backend} store{}: {message}", if key.is_empty() { String::new() } else { format!(", {key}") })]
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

    /// True for [`StoreError::Locked`].
    pub fn is_locked(&self) -> bool {
        matches!(self, StoreError::Locked { .. })
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadInfo {
    /// Number of bytes written, checked against the stored object's size after the upload.
    pub bytes: u64,
    /// SHA-256 of the bytes written, computed while writing.
    pub sha256: [u8; 32],
    /// What the store says of the object after the upload (the head the post-upload check
    /// read: on S3 its server-side encryption and Object Lock retention).
    pub head: ObjectHead,
}

/// What the store says about one object ([`Store::head`]): local `stat`, S3 `HeadObject`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectHead {
    /// Its key.
    pub key: ObjectKey,
    /// Size in bytes.
    pub size: u64,
    /// Modification time (local: mtime; S3: `LastModified`), UTC.
    pub last_modified: DateTime<Utc>,
    /// S3 server-side encryption (`x-amz-server-side-encryption`: `"AES256"`, `"aws:kms"`);
    /// `None` locally or when the store does not say.
    pub sse: Option<String>,
    /// KMS key id or ARN with `aws:kms`.
    pub sse_kms_key_id: Option<String>,
    /// Object Lock mode (`"GOVERNANCE"`, `"COMPLIANCE"`); `None` locally or when not locked.
    pub lock_mode: Option<String>,
    /// Object Lock retain-until date.
    pub retain_until: Option<DateTime<Utc>>,
    /// True when an Object Lock legal hold is on.
    pub legal_hold: bool,
    /// Full-object SHA-256 as lowercase hex, when the store returns one (S3 with
    /// `x-amz-checksum-sha256` of type FULL_OBJECT); `None` locally and for composite
    /// (per-part) checksums.
    pub checksum_sha256: Option<String>,
}

impl ObjectHead {
    /// True when the object cannot be deleted at `now`: a legal hold, or a retain-until date
    /// after `now`.
    pub fn is_locked_at(&self, now: DateTime<Utc>) -> bool {
        self.legal_hold || self.retain_until.is_some_and(|t| t > now)
    }
}

/// Why the stored object `head` is not the `bytes` bytes with SHA-256 `sha256` that were
/// written, or `None` when it matches (size, and the full-object SHA-256 when the store gave
/// one).
pub(crate) fn mismatch(head: &ObjectHead, bytes: u64, sha256: &[u8; 32]) -> Option<String> {
    if head.size != bytes {
        return Some(format!(
            "the store reports {} bytes, {bytes} were written",
            head.size
        ));
    }
    let want = hex::encode(sha256);
    match &head.checksum_sha256 {
        Some(c) if *c != want => Some(format!(
            "the store reports SHA-256 {c}, the bytes written have {want}"
        )),
        _ => None,
    }
}

/// A readable object body, for large objects ([`Store::get_stream`]).
pub type ObjectReader = Pin<Box<dyn AsyncRead + Send>>;

/// The listing prefix of a store [scoped](Store::scoped_to_cluster) to `scope` (a cluster ID):
/// the narrower of `prefix` and `<cluster_id>/`, `None` when the two are disjoint (nothing to
/// list); `prefix` itself when unscoped.
fn scoped_prefix(scope: Option<&str>, prefix: &str) -> Option<String> {
    match scope.map(|c| format!("{c}/")) {
        None => Some(prefix.to_string()),
        Some(dir) if dir.starts_with(prefix) => Some(dir),
        Some(dir) if prefix.starts_with(&dir) => Some(prefix.to_string()),
        Some(_) => None,
    }
}

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
    /// Local: creates the directory (`mkdir -p`, mode 0700) when missing. S3: builds the client (region,
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

    /// [`Store::from_config`] for reading: a local store directory must exist
    /// ([`LocalStore::existing`]).
    ///
    /// Errors: those of [`Store::from_config`], and a missing local directory.
    pub async fn from_config_existing(cfg: &StorageConfig) -> Result<Store, StoreError> {
        Ok(match cfg.backend {
            Backend::Local => Store::Local(LocalStore::existing(&cfg.local.path).await?),
            Backend::S3 => Store::S3(S3Store::from_config(&cfg.s3).await?),
        })
    }

    /// Where the store is: `"local:/var/lib/etcd-lifeboat"` or `"s3://bucket/prefix"`, with
    /// ` (cluster <cluster_id>)` when [scoped](Store::scoped_to_cluster).
    pub fn describe(&self) -> String {
        let place = match self {
            Store::Local(s) => s.describe(),
            Store::S3(s) => s.describe(),
        };
        match self.cluster_scope() {
            Some(c) => format!("{place} (cluster {c})"),
            None => place,
        }
    }

    /// The cluster ID set by [`Store::scoped_to_cluster`], if any.
    fn cluster_scope(&self) -> Option<&str> {
        match self {
            Store::Local(s) => s.cluster_scope.as_deref(),
            Store::S3(s) => s.cluster_scope.as_deref(),
        }
    }

    /// This store seen through the objects of one etcd cluster: [`Store::list`] returns only
    /// keys under `<cluster_id>/` (where every object of that cluster's backups lives), so the
    /// catalog, `prune`, `delete` and `restore --from-store` see that cluster's backups only and
    /// never take another cluster's objects for orphans. Reads and writes of named keys are
    /// unchanged. `cluster_id`: 16 lower-case hex digits (the caller checks, see
    /// [`crate::config::is_cluster_id`]).
    pub fn scoped_to_cluster(mut self, cluster_id: &str) -> Store {
        let scope = Some(cluster_id.to_string());
        match &mut self {
            Store::Local(s) => s.cluster_scope = scope,
            Store::S3(s) => s.cluster_scope = scope,
        }
        self
    }

    /// Checks that the store is reachable, without writing or deleting anything: local: the
    /// root exists, is a directory, and this user may create files in it (`access(W_OK|X_OK)`,
    /// which also catches a read-only mount); S3: HeadBucket and a ListObjectsV2 of at most one
    /// key under the prefix (needs `s3:ListBucket`; no `s3:PutObject`/`s3:DeleteObject`).
    ///
    /// Errors: [`StoreError::Io`] (local) or [`StoreError::Backend`] (S3: missing bucket, bad
    /// credentials, unreachable endpoint, no list permission), each naming the thing and the fix.
    pub async fn check(&self) -> Result<(), StoreError> {
        match self {
            Store::Local(s) => s.check().await,
            Store::S3(s) => s.check().await,
        }
    }

    /// Starts an upload to `key`. Bytes written become visible under `key` only after
    /// [`Upload::finish`]. Local: temp file `.<name>.partial-<random>` (0600, exclusively
    /// `flock`ed while the upload lives) beside the target, fsync, rename, directory fsync. S3: single PutObject below `storage.s3.part_size`, else a
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
            store: self.clone(),
            key: key.clone(),
            bytes: 0,
            hasher: Sha256::new(),
        })
    }

    /// Stores `data` under `key` atomically (replacing an existing object), then checks the
    /// stored object as [`Upload::finish`] does.
    ///
    /// Errors: as [`Store::begin_upload`] and [`Upload::finish`].
    pub async fn put_bytes(&self, key: &ObjectKey, data: Bytes) -> Result<(), StoreError> {
        let (len, sha) = (data.len() as u64, Sha256::digest(&data).into());
        match self {
            Store::Local(s) => s.put_bytes(key, data).await?,
            Store::S3(s) => s.put_bytes(key, data).await?,
        }
        self.check_written(key, len, &sha).await.map(drop)
    }

    /// Stores `data` under `key` only if no object has that key (conditional create), so two
    /// writers can never overwrite each other's object. Local: temp file, fsync, `link(2)` to
    /// the target (fails when it exists), directory fsync. S3: PutObject with
    /// `If-None-Match: *` (AWS S3, MinIO, moto); when the store answers 501 NotImplemented to
    /// that header, a HeadObject check then a plain PutObject, which leaves a race between two
    /// writers (the later PUT wins). When the key exists with exactly `data` (a retried PUT of
    /// ours whose first response was lost), this is `Ok`.
    ///
    /// Errors: [`StoreError::AlreadyExists`] when another object has the key; as
    /// [`Store::put_bytes`] otherwise.
    pub async fn put_bytes_new(&self, key: &ObjectKey, data: Bytes) -> Result<(), StoreError> {
        let (len, sha) = (data.len() as u64, Sha256::digest(&data).into());
        let r = match self {
            Store::Local(s) => s.put_bytes_new(key, data.clone()).await,
            Store::S3(s) => s.put_bytes_new(key, data.clone()).await,
        };
        match r {
            Ok(()) => self.check_written(key, len, &sha).await.map(drop),
            Err(StoreError::AlreadyExists { key: k }) => {
                match self.get_bytes_limited(key, data.len() as u64).await {
                    Ok(existing) if existing == data => Ok(()),
                    _ => Err(StoreError::AlreadyExists { key: k }),
                }
            }
            r => r,
        }
    }

    /// Whether `key` exists (stat / HeadObject). Used to decide, after a failed manifest PUT,
    /// whether the manifest was stored anyway.
    ///
    /// Errors: backend errors (not NotFound: that is `Ok(false)`).
    pub async fn exists(&self, key: &ObjectKey) -> Result<bool, StoreError> {
        match self.head(key).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// What the store says about `key`: size, time, and on S3 the server-side encryption,
    /// Object Lock retention and full-object SHA-256 (HeadObject with `x-amz-checksum-mode:
    /// ENABLED`). Local: `stat` (sse, lock and checksum `None`).
    ///
    /// Errors: [`StoreError::NotFound`] when missing; backend errors.
    pub async fn head(&self, key: &ObjectKey) -> Result<ObjectHead, StoreError> {
        match self {
            Store::Local(s) => s.head(key).await,
            Store::S3(s) => s.head(key).await,
        }
    }

    /// Checks that the stored `key` has `bytes` bytes and, when the store returns a
    /// full-object SHA-256, that it equals `sha256`; changes nothing (for `verify`: compare a
    /// stored object with its manifest without downloading it). Returns the head.
    ///
    /// Errors: [`StoreError::StoredMismatch`] saying what differs; head errors (NotFound).
    pub async fn verify_stored(
        &self,
        key: &ObjectKey,
        bytes: u64,
        sha256: &[u8; 32],
    ) -> Result<ObjectHead, StoreError> {
        let head = self.head(key).await?;
        match mismatch(&head, bytes, sha256) {
            None => Ok(head),
            Some(detail) => Err(StoreError::StoredMismatch {
                key: key.to_string(),
                detail,
            }),
        }
    }

    /// The post-upload check that [`Upload::finish`] and the `put_bytes*` calls run: like
    /// [`Store::verify_stored`], and on a mismatch the object just written is deleted (a
    /// corrupt object never stays under a backup's key).
    ///
    /// Errors: [`StoreError::StoredMismatch`] (its `detail` says whether the delete worked);
    /// head errors.
    pub async fn check_written(
        &self,
        key: &ObjectKey,
        bytes: u64,
        sha256: &[u8; 32],
    ) -> Result<ObjectHead, StoreError> {
        match self.verify_stored(key, bytes, sha256).await {
            Err(StoreError::StoredMismatch { key: k, detail }) => {
                let detail = match self.delete(key).await {
                    Ok(()) => format!("{detail}; the object was deleted"),
                    Err(e) => format!("{detail}; deleting it failed too ({e})"),
                };
                Err(StoreError::StoredMismatch { key: k, detail })
            }
            r => r,
        }
    }

    /// Reads a whole object into memory, refusing objects larger than `max_bytes`: for objects
    /// whose size the caller bounds (manifests: 1 MiB). Never reads more than `max_bytes` + 1
    /// bytes (local: size from metadata, then a bounded read; S3: `Content-Length`, then a
    /// bounded body read), so a huge object in the prefix costs no memory.
    ///
    /// Errors: [`StoreError::TooLarge`]; [`StoreError::NotFound`]; backend errors.
    pub async fn get_bytes_limited(
        &self,
        key: &ObjectKey,
        max_bytes: u64,
    ) -> Result<Bytes, StoreError> {
        match self {
            Store::Local(s) => s.get_bytes_limited(key, max_bytes).await,
            Store::S3(s) => s.get_bytes_limited(key, max_bytes).await,
        }
    }

    /// Removes what killed writers left behind. Local: every `.partial-` temp file under the
    /// root whose writer's lock is free (the writer exited or was killed), whatever its age;
    /// never one whose lock is held (a running upload, in this or another process).
    /// `older_than` is not used locally: the lock says whether the writer lives. S3: lists the
    /// incomplete multipart uploads under the prefix (ListMultipartUploads) and aborts those
    /// initiated more than `older_than` ago whose newest part (ListParts) is older than that
    /// too. Callers pass `retention.orphan_grace`, at least the longest a backup can run.
    ///
    /// Returns what was removed, for logs: local paths, or `s3://bucket/key (upload ID)`.
    ///
    /// Errors: listing failures; a removal that fails is logged and skipped.
    pub async fn remove_stale_uploads(
        &self,
        older_than: Duration,
    ) -> Result<Vec<String>, StoreError> {
        match self {
            Store::Local(s) => s.remove_stale_uploads().await,
            Store::S3(s) => s.remove_stale_uploads(older_than, Utc::now()).await,
        }
    }

    /// The server-side encryption and Object Lock retention this store puts on objects
    /// uploaded at `now`, for the manifest: `(sse, object_lock)`, both `None` locally. Pass
    /// the time the backup started: each object's own retain-until date is `retain_for` after
    /// its own upload, so a little later than the one recorded here.
    pub fn object_protection(
        &self,
        now: DateTime<Utc>,
    ) -> (Option<SseInfo>, Option<ObjectLockInfo>) {
        match self {
            Store::Local(_) => (None, None),
            Store::S3(s) => s.object_protection(now),
        }
    }

    /// A warning when the store can be read by other users: local: the root's mode grants
    /// group or other any access (e.g. `"store directory /var/lib/etcd-lifeboat is mode 0755:
    /// other users can read the backups; run chmod 700 /var/lib/etcd-lifeboat"`). `None` when
    /// private, for S3, or when the root cannot be stat'ed (then [`Store::check`] fails).
    pub fn privacy_warning(&self) -> Option<String> {
        match self {
            Store::Local(s) => s.privacy_warning(),
            Store::S3(_) => None,
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
        let Some(prefix) = scoped_prefix(self.cluster_scope(), prefix) else {
            return Ok(Vec::new());
        };
        let mut v = match self {
            Store::Local(s) => s.list(&prefix).await?,
            Store::S3(s) => s.list(&prefix).await?,
        };
        v.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(v)
    }

    /// Deletes `key`. A missing object is not an error. S3: HeadObject first; an object under
    /// Object Lock retention or legal hold is left alone (no delete marker) and gives
    /// [`StoreError::Locked`], so prune can skip it and say when it becomes deletable.
    ///
    /// Errors: [`StoreError::Locked`]; backend errors (permission, network).
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
    store: Store,
    key: ObjectKey,
    bytes: u64,
    hasher: Sha256,
}

#[derive(Debug)]
enum UploadInner {
    Local(local::LocalUpload),
    S3(s3::S3Upload),
}

impl Upload {
    /// Appends `chunk`. Memory stays bounded (S3: one part being filled and at most
    /// [`s3::PARTS_IN_FLIGHT`] being sent).
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
        crate::metrics::record_upload_bytes(chunk.len() as u64);
        Ok(())
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }

    /// Publishes the object under its key, checks the stored object (stat / HeadObject: its
    /// size, and a full-object SHA-256 when the store returns one, see
    /// [`Store::verify_stored`]) and returns the size and SHA-256 of what was written, with
    /// that head.
    ///
    /// Errors: fsync/rename (local) or CompleteMultipartUpload/PutObject (S3) failures, the
    /// upload being cleaned up before the error is returned; [`StoreError::StoredMismatch`]
    /// (the stored object was deleted).
    pub async fn finish(self) -> Result<UploadInfo, StoreError> {
        let (bytes, sha256) = (self.bytes, self.hasher.finalize().into());
        match self.inner {
            UploadInner::Local(u) => u.finish().await?,
            UploadInner::S3(u) => u.finish().await?,
        }
        let head = self.store.check_written(&self.key, bytes, &sha256).await?;
        Ok(UploadInfo {
            bytes,
            sha256,
            head,
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

/// The blocking side of an upload: a `Write` that hands what it is given to the async
/// uploader over `tx` in chunks of `chunk` bytes (the last one smaller), counting and hashing
/// it on the way: the stored object's size (bytes) and sha256. `flush` sends what is
/// buffered.
///
/// Errors: `BrokenPipe` when the uploader has stopped (its receiver is gone).
pub struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    chunk: usize,
    buf: Vec<u8>,
    sha: Sha256,
    bytes: u64,
}

impl ChunkWriter {
    /// A writer sending chunks of `chunk` bytes to `tx`.
    pub fn new(tx: tokio::sync::mpsc::Sender<Vec<u8>>, chunk: usize) -> ChunkWriter {
        ChunkWriter {
            tx,
            chunk,
            buf: Vec::with_capacity(chunk),
            sha: Sha256::new(),
            bytes: 0,
        }
    }

    /// Sends the buffered bytes, then returns the size (bytes) and sha256 of all written.
    ///
    /// Errors: `BrokenPipe` as above.
    pub fn finish(mut self) -> std::io::Result<(u64, [u8; 32])> {
        self.send()?;
        Ok((self.bytes, self.sha.finalize().into()))
    }

    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "upload stopped"))
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.sha.update(data);
        self.bytes += data.len() as u64;
        self.buf.extend_from_slice(data);
        if self.buf.len() >= self.chunk {
            self.send()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoped_listing_prefix() {
        let c = Some("cdf818194e3a8c32");
        assert_eq!(scoped_prefix(None, "x/"), Some("x/".into()));
        assert_eq!(scoped_prefix(c, ""), Some("cdf818194e3a8c32/".into()));
        assert_eq!(scoped_prefix(c, "cdf8"), Some("cdf818194e3a8c32/".into()));
        assert_eq!(
            scoped_prefix(c, "cdf818194e3a8c32/2026"),
            Some("cdf818194e3a8c32/2026".into())
        );
        // Another cluster, or a sibling ID that shares the first digits: nothing.
        assert_eq!(scoped_prefix(c, "0123456789abcdef/"), None);
        assert_eq!(scoped_prefix(c, "cdf818194e3a8c321"), None);
    }

    fn head(size: u64, sha: Option<String>) -> ObjectHead {
        ObjectHead {
            key: ObjectKey::new("c/x").unwrap(),
            size,
            last_modified: DateTime::<Utc>::UNIX_EPOCH,
            sse: None,
            sse_kms_key_id: None,
            lock_mode: None,
            retain_until: None,
            legal_hold: false,
            checksum_sha256: sha,
        }
    }

    #[test]
    fn mismatch_compares_size_then_full_object_sha256() {
        let sha: [u8; 32] = Sha256::digest(b"abc").into();
        assert_eq!(mismatch(&head(3, None), 3, &sha), None);
        assert_eq!(mismatch(&head(3, Some(hex::encode(sha))), 3, &sha), None);
        assert_eq!(
            mismatch(&head(2, None), 3, &sha).unwrap(),
            "the store reports 2 bytes, 3 were written"
        );
        let other = hex::encode(Sha256::digest(b"abd"));
        let m = mismatch(&head(3, Some(other.clone())), 3, &sha).unwrap();
        assert!(m.contains(&other) && m.contains(&hex::encode(sha)), "{m}");
    }

    #[test]
    fn locked_means_legal_hold_or_future_retention() {
        let now = Utc::now();
        let mut h = head(1, None);
        assert!(!h.is_locked_at(now));
        h.retain_until = Some(now - chrono::Duration::seconds(1));
        assert!(!h.is_locked_at(now));
        h.retain_until = Some(now + chrono::Duration::seconds(1));
        assert!(h.is_locked_at(now));
        h.retain_until = None;
        h.legal_hold = true;
        assert!(h.is_locked_at(now));
        let e = StoreError::Locked {
            key: "c/x".into(),
            retain_until: None,
        };
        assert!(
            e.is_locked() && e.to_string().contains("(legal hold)"),
            "{e}"
        );
    }
}
