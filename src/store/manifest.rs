//! Backup manifests and the catalog of backups in a store.
//!
//! A backup `<id>` of cluster `<cluster-id-hex>` is two objects:
//! `<cluster-id-hex>/<id>.db.zst` (the zstd-compressed snapshot, written first) and
//! `<cluster-id-hex>/<id>.json` (its [`Manifest`], written last). A backup exists only once
//! its manifest does: [`catalog`] reads manifests only, so data objects without a manifest
//! (failed or interrupted backups) are not listed.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::{ObjectKey, Store, StoreError};

/// Suffix of manifest objects.
pub const MANIFEST_SUFFIX: &str = ".json";
/// Suffix of data objects (zstd stream of the raw snapshot).
pub const DATA_SUFFIX: &str = ".db.zst";
/// Suffix of age-encrypted data objects: a standard age v1 file whose plaintext is the zstd
/// stream (`age -d -i key.txt ID.db.zst.age | zstd -d > snapshot.db`).
pub const ENCRYPTED_DATA_SUFFIX: &str = ".db.zst.age";
/// Suffix of files objects (tar of `backup.files`, zstd), before `.age` when encrypted.
pub const FILES_SUFFIX: &str = ".files.tar.zst";
/// Format string recorded in [`EncryptionInfo::format`] for age encryption.
pub const AGE_FORMAT: &str = "age-encryption.org/v1";

/// Client-side encryption of a backup's objects, as recorded in its manifest. Never holds key
/// material: only the recipients' public keys.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct EncryptionInfo {
    /// [`AGE_FORMAT`] (`"age-encryption.org/v1"`).
    pub format: String,
    /// The recipients the data key was wrapped to, as given in the config: `age1...` X25519
    /// public keys and `ssh-ed25519 ...` / `ssh-rsa ...` public keys (the comment stripped).
    pub recipients: Vec<String>,
}

/// S3 server-side encryption requested for a backup's objects (`storage.s3.sse`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SseInfo {
    /// `"AES256"` or `"aws:kms"`.
    pub algorithm: String,
    /// KMS key id or ARN (`storage.s3.sse_kms_key_id`), with `aws:kms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
}

/// S3 Object Lock retention put on a backup's objects (`storage.s3.object_lock`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ObjectLockInfo {
    /// `"GOVERNANCE"` or `"COMPLIANCE"`.
    pub mode: String,
    /// Until when the objects cannot be deleted, UTC (RFC 3339 in JSON).
    pub retain_until: DateTime<Utc>,
}

/// Where a backup's snapshot came from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum BackupSource {
    /// A member's `Maintenance.Snapshot` stream (`backup`), with etcd's sha256 trailer.
    #[default]
    Etcd,
    /// A stopped member's `member/snap/db` (`backup --from-data-dir`), without a trailer.
    DataDir,
}

impl BackupSource {
    fn is_etcd(&self) -> bool {
        *self == BackupSource::Etcd
    }
}

/// Everything known about one stored backup; stored as pretty JSON with these field names.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Manifest {
    /// Backup id, `backup_id(started_at, revision)`: `20261122T230000Z-r0000000000002487`.
    /// Ids sort by time.
    pub id: String,
    /// etcd cluster id, 16 lower-case hex digits (`ResponseHeader.cluster_id`).
    pub cluster_id: String,
    /// Id of the member the snapshot came from, 16 lower-case hex digits.
    pub member_id: String,
    /// Name of that member.
    pub member_name: String,
    /// Client URL the snapshot was streamed from.
    pub endpoint: String,
    /// etcd server version of that member (`3.5.1`).
    pub etcd_version: String,
    /// When the snapshot request started, UTC (RFC 3339 in JSON).
    pub started_at: DateTime<Utc>,
    /// When the backup (upload included) finished, UTC (RFC 3339 in JSON).
    pub finished_at: DateTime<Utc>,
    /// Store revision of the snapshot (`etcdctl snapshot status` `revision`).
    pub revision: i64,
    /// The revision a member restored from this snapshot continues from: etcd's mvcc
    /// `store.restore` current revision, the greatest of 1, the last key's main revision,
    /// `meta/finishedCompactRev` and `meta/scheduledCompactRev`
    /// ([`crate::pitr::delta::base_revision`]). Above `revision` only when a compaction removed
    /// the final writes' tombstones; a PITR chain on this backup starts right after it. Absent
    /// in backups written before it existed (then `revision` stands in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<i64>,
    /// KV hash of the snapshot (`etcdctl snapshot status` `hash`).
    pub hash: u32,
    /// Number of keys (`totalKey`).
    pub total_key: u64,
    /// Size of the db in bytes (`totalSize`).
    pub total_size: u64,
    /// SHA-256 (hex) of the raw db bytes, without etcd's sha256 trailer.
    pub raw_sha256: String,
    /// Size in bytes of the stored data object.
    pub stored_bytes: u64,
    /// SHA-256 (hex) of the stored data object.
    pub stored_sha256: String,
    /// Compression of the data object: `"zstd"`.
    pub compression: String,
    /// zstd level used.
    pub compression_level: i32,
    /// etcd-lifeboat version that wrote the backup.
    pub tool_version: String,
    /// Free-form tag from `backup --tag`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Key of the data object (`<cluster-id-hex>/<id>.db.zst`, or `.db.zst.age` when
    /// encrypted). Informational only: readers and prune derive the key with
    /// [`Manifest::derived_data_key`] and treat a manifest whose `data_key` differs as broken.
    pub data_key: ObjectKey,
    /// Client-side (age) encryption of the data object; absent for plaintext backups (and for
    /// every backup written before encryption existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionInfo>,
    /// S3 server-side encryption requested for the objects; absent when none was requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sse: Option<SseInfo>,
    /// Object Lock retention of the objects; absent when the store does not lock them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<ObjectLockInfo>,
    /// Where the snapshot came from; `etcd` (omitted in JSON) for a snapshot stream.
    #[serde(default, skip_serializing_if = "BackupSource::is_etcd")]
    pub source: BackupSource,
    /// `source: data-dir` only: the db's `meta/consistent_index` (the raft index the db had
    /// applied, 8-byte big-endian in the db); absent otherwise or when the db has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_index: Option<u64>,
    /// The control-plane files stored beside the snapshot (`backup.files`); absent when none
    /// were configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FilesInfo>,
}

/// The files object of a backup (`<cluster>/<id>.files.tar.zst`, `.age` appended when the
/// backup's `encryption` is set, with the same recipients): a tar of `backup.files`
/// ([`crate::files::write_archive`]), zstd-compressed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct FilesInfo {
    /// Size in bytes of the stored files object.
    pub stored_bytes: u64,
    /// SHA-256 (hex) of the stored files object.
    pub stored_sha256: String,
    /// Every file and directory in the archive: path, mode, size, sha256.
    pub entries: Vec<crate::files::FileEntry>,
}

impl Manifest {
    /// Key of this manifest: `<cluster_id>/<id>.json`.
    ///
    /// Errors: [`StoreError::InvalidKey`] if `cluster_id` or `id` make an invalid key.
    pub fn key(&self) -> Result<ObjectKey, StoreError> {
        ObjectKey::new(format!("{}/{}{MANIFEST_SUFFIX}", self.cluster_id, self.id))
    }

    /// The data object's key derived from `cluster_id`, `id` and whether the backup is
    /// encrypted: `<cluster_id>/<id>.db.zst` or `<cluster_id>/<id>.db.zst.age`. The only key a
    /// reader fetches and prune deletes (never the stored `data_key` field).
    ///
    /// Errors: [`StoreError::InvalidKey`] if `cluster_id` or `id` make an invalid key.
    pub fn derived_data_key(&self) -> Result<ObjectKey, StoreError> {
        let suffix = if self.encryption.is_some() {
            ENCRYPTED_DATA_SUFFIX
        } else {
            DATA_SUFFIX
        };
        ObjectKey::new(format!("{}/{}{suffix}", self.cluster_id, self.id))
    }

    /// The files object's key ([`files_key`]) from `cluster_id`, `id` and whether the backup
    /// is encrypted; the only key a reader fetches and prune deletes.
    ///
    /// Errors: [`StoreError::InvalidKey`] if `cluster_id` or `id` make an invalid key.
    pub fn derived_files_key(&self) -> Result<ObjectKey, StoreError> {
        let age = if self.encryption.is_some() {
            ".age"
        } else {
            ""
        };
        ObjectKey::new(format!(
            "{}/{}{FILES_SUFFIX}{age}",
            self.cluster_id, self.id
        ))
    }

    /// Pretty JSON, as stored.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("manifest serialises")
    }
}

/// Backup id for a snapshot started at `t` at store revision `revision`:
/// `"20261122T230000Z-r0000000000002487"` (UTC to the second, revision zero-padded to 16
/// digits, so ids sort by time, then revision).
pub fn backup_id(t: DateTime<Utc>, revision: i64) -> String {
    format!("{}-r{:016}", t.format("%Y%m%dT%H%M%SZ"), revision)
}

/// The start time and revision a backup id names ([`backup_id`]'s shape exactly), `None` for
/// any other string.
pub fn parse_backup_id(id: &str) -> Option<(DateTime<Utc>, i64)> {
    let (time, rev) = id.split_once("-r")?;
    if time.len() != 16 || rev.len() != 16 || !rev.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let t = chrono::NaiveDateTime::parse_from_str(time, "%Y%m%dT%H%M%SZ").ok()?;
    Some((t.and_utc(), rev.parse().ok()?))
}

/// Whether `stem` is `<16 hex digit cluster id>/<backup id>`, as this tool names a backup's
/// objects (the key without its suffix).
pub fn is_backup_stem(stem: &str) -> bool {
    stem.split_once('/')
        .is_some_and(|(cluster, id)| names_a_backup(cluster, id))
}

/// Whether `cluster` is a cluster id segment and `id` a backup id.
fn names_a_backup(cluster: &str, id: &str) -> bool {
    crate::config::is_cluster_id(cluster) && parse_backup_id(id).is_some()
}

/// Key of the data object: `"<cluster-id-hex>/<id>.db.zst"`.
///
/// Panics when `cluster_id_hex` or `id` would make an invalid key (empty, containing `/`
/// at the ends or a leading `.`): both come from this program, not from users.
pub fn data_key(cluster_id_hex: &str, id: &str) -> ObjectKey {
    ObjectKey::new(format!("{cluster_id_hex}/{id}{DATA_SUFFIX}"))
        .expect("valid cluster id and backup id")
}

/// Key of an encrypted data object: `"<cluster-id-hex>/<id>.db.zst.age"`. Panics like
/// [`data_key`].
pub fn encrypted_data_key(cluster_id_hex: &str, id: &str) -> ObjectKey {
    ObjectKey::new(format!("{cluster_id_hex}/{id}{ENCRYPTED_DATA_SUFFIX}"))
        .expect("valid cluster id and backup id")
}

/// Key of the files object (`backup.files`): `"<cluster-id-hex>/<id>.files.tar.zst"`, with
/// `.age` appended when `encrypted`. Panics like [`data_key`].
pub fn files_key(cluster_id_hex: &str, id: &str, encrypted: bool) -> ObjectKey {
    let age = if encrypted { ".age" } else { "" };
    ObjectKey::new(format!("{cluster_id_hex}/{id}{FILES_SUFFIX}{age}"))
        .expect("valid cluster id and backup id")
}

/// Key of the manifest object: `"<cluster-id-hex>/<id>.json"`. Panics like [`data_key`].
pub fn manifest_key(cluster_id_hex: &str, id: &str) -> ObjectKey {
    ObjectKey::new(format!("{cluster_id_hex}/{id}{MANIFEST_SUFFIX}"))
        .expect("valid cluster id and backup id")
}

/// Largest manifest [`catalog`] reads, in bytes (1 MiB). A `*.json` object listed with a
/// bigger size is reported as broken without being read, so a huge object in the prefix
/// cannot exhaust memory.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// Default of `store.future_tolerance` (5 minutes), used by [`catalog`].
pub const DEFAULT_FUTURE_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// A `*.json` object in the store that is not a trustworthy manifest. Nothing acts on it:
/// `list` shows it, `verify --all` fails on it, `prune` leaves it (and the data object beside
/// it) alone, and the daemon counts it in `etcd_lifeboat_store_broken_manifests`.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct BrokenManifest {
    /// Key of the object (`<cluster-id>/<id>.json`, or wherever it was found).
    pub key: ObjectKey,
    /// Why it is not trusted, e.g. "not a manifest: expected value at line 1 column 1" or
    /// "2097152 bytes, more than the 1048576 a manifest may have; not read".
    pub reason: String,
}

/// What the store holds, as read by [`catalog_at`].
///
/// `backups` is in the one order of truth: clusters with the most recent backup first (by the
/// `finished_at` of their newest backup that is not future-dated), and within a cluster newest
/// first by [`newest_first`] (revision, then `started_at`, then id). The writers' clocks are
/// not trusted for the order: only for the hourly/daily/... buckets of retention and for the
/// age metrics, which ignore future-dated backups.
///
/// Dereferences to `backups` (a slice of manifests).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Catalog {
    /// Intact backups (manifest readable, stored at its own key, `data_key` as derived).
    pub backups: Vec<Manifest>,
    /// Manifests that are not trusted, sorted by key.
    pub broken: Vec<BrokenManifest>,
    /// The clock reading the catalog was classified at.
    pub now: DateTime<Utc>,
    /// `store.future_tolerance`: backups dated further ahead of `now` are future-dated.
    pub future_tolerance: Duration,
}

impl Catalog {
    /// Whether `m` is dated (its `finished_at` or `started_at`) more than `future_tolerance`
    /// ahead of `now`: written by a host whose clock is ahead, not to be trusted as "the last
    /// backup" by schedulers and age metrics.
    pub fn is_future(&self, m: &Manifest) -> bool {
        is_future_dated(m, self.now, self.future_tolerance)
    }

    /// Future-dated backups, in catalog order.
    pub fn future(&self) -> impl Iterator<Item = &Manifest> {
        self.backups.iter().filter(|m| self.is_future(m))
    }

    /// The backups that are not future-dated, in catalog order.
    pub fn current(&self) -> impl Iterator<Item = &Manifest> {
        self.backups.iter().filter(|m| !self.is_future(m))
    }

    /// The backup that finished last, among those not future-dated (for age metrics, /readyz
    /// and the scheduler's last run at start).
    pub fn newest_by_time(&self) -> Option<&Manifest> {
        self.current()
            .max_by_key(|m| (m.finished_at, m.started_at, m.revision))
    }

    /// The backup that finished first, among those not future-dated.
    pub fn oldest_by_time(&self) -> Option<&Manifest> {
        self.current()
            .min_by_key(|m| (m.finished_at, m.started_at, m.revision))
    }

    /// `list -o json`: a JSON array, one element per backup (its manifest plus
    /// `"status": "ok"` or `"future"`), then one per broken manifest
    /// (`{"status": "broken", "key": ..., "reason": ...}`).
    pub fn to_list_json(&self) -> serde_json::Value {
        let mut out = Vec::with_capacity(self.backups.len() + self.broken.len());
        for m in &self.backups {
            let mut v = serde_json::to_value(m).expect("manifest serialises");
            if let Some(o) = v.as_object_mut() {
                let status = if self.is_future(m) { "future" } else { "ok" };
                o.insert("status".into(), status.into());
            }
            out.push(v);
        }
        for b in &self.broken {
            out.push(serde_json::json!({"status": "broken", "key": b.key, "reason": b.reason}));
        }
        serde_json::Value::Array(out)
    }

    /// The intact backups, or an error naming every broken manifest (for `verify --all`:
    /// `catalog(&store).await?.into_intact()?` makes it exit non-zero on broken manifests).
    ///
    /// Errors: [`BrokenManifests`] when `broken` is not empty.
    pub fn into_intact(self) -> Result<Vec<Manifest>, BrokenManifests> {
        if self.broken.is_empty() {
            Ok(self.backups)
        } else {
            Err(BrokenManifests(self.broken))
        }
    }
}

/// The store holds broken manifests ([`Catalog::into_intact`]); the message lists each key
/// with its reason and says what to do.
#[derive(Debug, thiserror::Error)]
#[error("{} broken manifests in the store: {}; inspect them with `etcd-lifeboat list`, then put back a good copy or delete them by hand (prune never touches them)", .0.len(), .0.iter().map(|b| format!("{} ({})", b.key, b.reason)).collect::<Vec<_>>().join("; "))]
pub struct BrokenManifests(pub Vec<BrokenManifest>);

impl std::ops::Deref for Catalog {
    type Target = [Manifest];
    fn deref(&self) -> &[Manifest] {
        &self.backups
    }
}

/// Whether `m` is dated more than `tolerance` ahead of `now` (its `finished_at` or its
/// `started_at`).
pub fn is_future_dated(m: &Manifest, now: DateTime<Utc>, tolerance: Duration) -> bool {
    let limit = chrono::Duration::from_std(tolerance)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    m.finished_at > limit || m.started_at > limit
}

/// The one order of truth within a cluster, newest first: higher revision first, then later
/// `started_at`, then greater id. `latest`, retention's `keep_last` and "newest, always kept"
/// follow it, so a writer's wrong clock cannot make an older snapshot the newest.
pub fn newest_first(a: &Manifest, b: &Manifest) -> Ordering {
    b.revision
        .cmp(&a.revision)
        .then_with(|| b.started_at.cmp(&a.started_at))
        .then_with(|| b.id.cmp(&a.id))
}

/// Highest revision a manifest read from the store may name: 2^62, far above any revision etcd
/// reaches (int64, one per write), and low enough that `revision + 1` and the other steps the
/// capture and the chain take from it cannot overflow.
pub const MAX_REVISION: i64 = 1 << 62;

/// Checks that `m`, read from `key`, can be trusted: its cluster id and id are single key
/// segments, it is stored at `<cluster_id>/<id>.json`, its `data_key` field is the key
/// derived from them, and its revision lies in `0..=`[`MAX_REVISION`]. Returns the reason
/// when not.
pub fn check_manifest(key: &ObjectKey, m: &Manifest) -> Result<(), String> {
    for r in std::iter::once(m.revision).chain(m.current_revision) {
        if !(0..=MAX_REVISION).contains(&r) {
            return Err(format!(
                "its revision {r} is outside 0..={MAX_REVISION}; not a manifest written by etcd-lifeboat"
            ));
        }
    }
    for (what, v) in [("cluster_id", &m.cluster_id), ("id", &m.id)] {
        if v.is_empty() || v.contains('/') || ObjectKey::new(v.as_str()).is_err() {
            return Err(format!(
                "its {what} {v:?} is not a valid key segment; not a manifest written by etcd-lifeboat"
            ));
        }
    }
    let own = manifest_key(&m.cluster_id, &m.id);
    if &own != key {
        return Err(format!(
            "its content says cluster {} id {}, which belongs at {own}; a copied or renamed manifest is not trusted",
            m.cluster_id, m.id
        ));
    }
    let derived = m.derived_data_key().map_err(|e| e.to_string())?;
    if m.data_key != derived {
        return Err(format!(
            "its data_key field names {}, but the data of backup {} is at {derived}; a manifest pointing elsewhere is not trusted",
            m.data_key, m.id
        ));
    }
    Ok(())
}

/// Whether `key` is directly in a cluster directory of the store: `<16 hex digits>/<name>`.
fn in_cluster_dir(key: &str) -> bool {
    key.split_once('/')
        .is_some_and(|(c, name)| crate::config::is_cluster_id(c) && !name.contains('/'))
}

/// The prefixes (each ending in `/`) under which `keys` hold backup manifests laid out as a
/// store's (`<prefix><cluster id>/<backup id>.json`): backups of another prefix, e.g. when the
/// configured prefix is a parent of the one they were written with. Sorted, at most 10.
pub fn manifests_under_other_prefixes<'a>(keys: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out = std::collections::BTreeSet::new();
    for k in keys {
        let Some(stem) = k.strip_suffix(MANIFEST_SUFFIX) else {
            continue;
        };
        let mut parts = stem.rsplitn(3, '/');
        let (Some(id), Some(cluster), Some(prefix)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if names_a_backup(cluster, id) {
            out.insert(format!("{prefix}/"));
        }
        if out.len() >= 10 {
            break;
        }
    }
    out.into_iter().collect()
}

/// [`catalog_at`] with the clock of this process and the default `store.future_tolerance`
/// ([`DEFAULT_FUTURE_TOLERANCE`]).
///
/// Errors: listing the store failed, or a manifest could not be read for another reason than
/// having been deleted meanwhile.
pub async fn catalog(store: &Store) -> Result<Catalog, StoreError> {
    catalog_at(store, Utc::now(), DEFAULT_FUTURE_TOLERANCE).await
}

/// Reads every `*.json` object of the store into a [`Catalog`]: intact backups in the one order
/// of truth, and broken manifests with the reason. Data objects are not read, so data objects
/// without a manifest (failed or interrupted backups) are not backups.
///
/// A `*.json` object is broken when the listing gives it more than [`MAX_MANIFEST_BYTES`]
/// (never read), when it is not manifest JSON, or when [`check_manifest`] rejects it. A
/// manifest deleted between listing and reading (a concurrent prune) is left out. `now` and
/// `future_tolerance` decide which backups are future-dated ([`Catalog::is_future`]).
///
/// Errors: listing the store failed, or reading a manifest failed (network, permissions).
pub async fn catalog_at(
    store: &Store,
    now: DateTime<Utc>,
    future_tolerance: Duration,
) -> Result<Catalog, StoreError> {
    let mut broken = Vec::new();
    let mut keys = Vec::new();
    for o in store.list("").await? {
        if !o.key.as_str().ends_with(MANIFEST_SUFFIX) {
            continue;
        }
        if !in_cluster_dir(o.key.as_str()) {
            // Not where this store keeps manifests (`<cluster id>/<name>.json`): another
            // prefix's backups (a parent prefix configured), or someone else's file.
            tracing::debug!(key = %o.key, "not a manifest of this store (not <cluster id>/<name>.json)");
            continue;
        }
        if o.size > MAX_MANIFEST_BYTES {
            broken.push(BrokenManifest {
                reason: format!(
                    "{} bytes, more than the {MAX_MANIFEST_BYTES} a manifest may have; not read",
                    o.size
                ),
                key: o.key,
            });
        } else {
            keys.push(o.key);
        }
    }
    let read = futures::stream::iter(keys)
        .map(|key| async move {
            // Bounded even when the object grew after the listing.
            match store.get_bytes_limited(&key, MAX_MANIFEST_BYTES).await {
                Ok(b) => Ok(Some((key, Ok(b)))),
                Err(StoreError::TooLarge { size, max, .. }) => Ok(Some((
                    key,
                    Err(format!(
                        "{size} bytes, more than the {max} a manifest may have; not read"
                    )),
                ))),
                Err(StoreError::NotFound { .. }) => {
                    tracing::debug!(%key, "manifest deleted while listing");
                    Ok(None)
                }
                // One manifest this user may not read must not hide every other backup.
                Err(StoreError::Io { message, cause, .. })
                    if cause.kind() == std::io::ErrorKind::PermissionDenied =>
                {
                    Ok(Some((key, Err(format!("{message}: {cause}")))))
                }
                Err(e) => Err(e),
            }
        })
        .buffer_unordered(8)
        .try_collect::<Vec<_>>()
        .await?;
    let mut backups = Vec::with_capacity(read.len());
    for (key, bytes) in read.into_iter().flatten() {
        match bytes.and_then(|b| classify(&key, &b)) {
            Ok(m) => backups.push(m),
            Err(reason) => {
                tracing::debug!(%key, %reason, "broken manifest");
                broken.push(BrokenManifest { key, reason });
            }
        }
    }
    broken.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(Catalog::new(backups, broken, now, future_tolerance))
}

/// Parses and checks the bytes of the manifest object `key`.
fn classify(key: &ObjectKey, bytes: &[u8]) -> Result<Manifest, String> {
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(format!(
            "{} bytes, more than the {MAX_MANIFEST_BYTES} a manifest may have",
            bytes.len()
        ));
    }
    let m: Manifest = serde_json::from_slice(bytes).map_err(|e| format!("not a manifest: {e}"))?;
    check_manifest(key, &m)?;
    Ok(m)
}

impl Catalog {
    /// Orders `backups` (see [`Catalog`]) and wraps them. Pure.
    pub fn new(
        mut backups: Vec<Manifest>,
        broken: Vec<BrokenManifest>,
        now: DateTime<Utc>,
        future_tolerance: Duration,
    ) -> Catalog {
        // Most recent (trusted) finish time per cluster orders the clusters.
        let mut recent: HashMap<String, Option<DateTime<Utc>>> = HashMap::new();
        for m in &backups {
            let e = recent.entry(m.cluster_id.clone()).or_default();
            if !is_future_dated(m, now, future_tolerance) {
                *e = (*e).max(Some(m.finished_at));
            }
        }
        backups.sort_by(|a, b| {
            if a.cluster_id == b.cluster_id {
                return newest_first(a, b);
            }
            recent[&b.cluster_id]
                .cmp(&recent[&a.cluster_id])
                .then_with(|| a.cluster_id.cmp(&b.cluster_id))
        });
        Catalog {
            backups,
            broken,
            now,
            future_tolerance,
        }
    }
}

/// Resolves `which` to one backup: `"latest"` (the first in the one order of truth: the
/// highest revision of the most recently backed-up cluster), an exact id, or a prefix of
/// exactly one id (e.g. `"20261122T23"`). Broken manifests are never returned.
///
/// Errors: [`StoreError::BackupNotFound`] when nothing matches (or the store is empty),
/// [`StoreError::Ambiguous`] when a prefix matches several ids, listing errors.
pub async fn find(store: &Store, which: &str) -> Result<Manifest, StoreError> {
    let all = catalog(store).await?.backups;
    let not_found = || StoreError::BackupNotFound {
        which: which.to_string(),
        store: store.describe(),
    };
    if which == "latest" {
        return all.into_iter().next().ok_or_else(not_found);
    }
    if which.is_empty() {
        return Err(not_found());
    }
    if let Some(m) = all.iter().find(|m| m.id == which) {
        return Ok(m.clone());
    }
    let mut hits: Vec<Manifest> = all
        .into_iter()
        .filter(|m| m.id.starts_with(which))
        .collect();
    match hits.len() {
        0 => Err(not_found()),
        1 => Ok(hits.remove(0)),
        _ => Err(StoreError::Ambiguous {
            which: which.to_string(),
            candidates: hits.into_iter().map(|m| m.id).collect(),
        }),
    }
}

impl FromStr for Manifest {
    type Err = serde_json::Error;
    /// Parses manifest JSON.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_str(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn id_and_keys() {
        let t = Utc.with_ymd_and_hms(2026, 11, 22, 23, 0, 0).unwrap();
        let id = backup_id(t, 2487);
        assert_eq!(id, "20261122T230000Z-r0000000000002487");
        assert_eq!(
            data_key("8e9e05c52164694d", &id).as_str(),
            "8e9e05c52164694d/20261122T230000Z-r0000000000002487.db.zst"
        );
        assert_eq!(
            manifest_key("8e9e05c52164694d", &id).as_str(),
            "8e9e05c52164694d/20261122T230000Z-r0000000000002487.json"
        );
        // Ids sort by time even across revisions of different widths.
        let later = backup_id(t + chrono::Duration::seconds(1), 7);
        assert!(later > id);
    }

    fn fixture(cluster: &str, started: &str, revision: i64) -> Manifest {
        let at = DateTime::parse_from_rfc3339(started)
            .unwrap()
            .with_timezone(&Utc);
        let id = backup_id(at, revision);
        Manifest {
            data_key: data_key(cluster, &id),
            id,
            cluster_id: cluster.into(),
            member_id: "1".into(),
            member_name: "m".into(),
            endpoint: "http://127.0.0.1:2379".into(),
            etcd_version: "3.5.1".into(),
            started_at: at,
            finished_at: at + chrono::Duration::seconds(5),
            revision,
            current_revision: None,
            hash: 0,
            total_key: 0,
            total_size: 0,
            raw_sha256: String::new(),
            stored_bytes: 0,
            stored_sha256: String::new(),
            compression: "zstd".into(),
            compression_level: 3,
            tool_version: "test".into(),
            tag: None,
            encryption: None,
            sse: None,
            object_lock: None,
            source: BackupSource::Etcd,
            consistent_index: None,
            files: None,
        }
    }

    const C: &str = "aaaaaaaaaaaaaaaa";

    #[test]
    fn classify_rejects_untrusted_manifests() {
        let m = fixture(C, "2026-11-22T23:00:00Z", 7);
        let key = manifest_key(C, &m.id);
        assert_eq!(classify(&key, m.to_json().as_bytes()).unwrap(), m);

        let e = classify(&key, &m.to_json().as_bytes()[..40]).unwrap_err();
        assert!(e.starts_with("not a manifest: "), "{e}");

        let elsewhere = ObjectKey::new(format!("{C}/other.json")).unwrap();
        let e = classify(&elsewhere, m.to_json().as_bytes()).unwrap_err();
        assert!(e.contains(&format!("which belongs at {key}")), "{e}");

        let mut other = m.clone();
        other.data_key = data_key(C, "20261122T220000Z-r0000000000000001");
        let e = classify(&key, other.to_json().as_bytes()).unwrap_err();
        assert!(
            e.contains("its data_key field names aaaaaaaaaaaaaaaa/20261122T220000Z-r0000000000000001.db.zst"),
            "{e}"
        );

        // Encrypted: the derived key ends in .db.zst.age; the plaintext key is then wrong.
        let mut enc = m.clone();
        enc.encryption = Some(EncryptionInfo {
            format: AGE_FORMAT.into(),
            recipients: vec!["age1x".into()],
        });
        assert!(classify(&key, enc.to_json().as_bytes()).is_err());
        enc.data_key = encrypted_data_key(C, &enc.id);
        assert_eq!(classify(&key, enc.to_json().as_bytes()).unwrap(), enc);

        // A cluster id with a '/' cannot sneak into another directory.
        let mut nested = m.clone();
        nested.cluster_id = format!("{C}/x");
        nested.data_key = ObjectKey::new(format!("{C}/x/{}.db.zst", m.id)).unwrap();
        let nested_key = ObjectKey::new(format!("{C}/x/{}.json", m.id)).unwrap();
        let e = classify(&nested_key, nested.to_json().as_bytes()).unwrap_err();
        assert!(e.contains("not a valid key segment"), "{e}");

        let big = vec![b' '; MAX_MANIFEST_BYTES as usize + 1];
        assert!(classify(&key, &big).unwrap_err().contains("more than"));

        // A revision that would overflow the capture's `revision + 1`, or a negative one.
        for r in [i64::MAX, MAX_REVISION + 1, -1] {
            let mut hostile = m.clone();
            hostile.revision = r;
            let e = classify(&key, hostile.to_json().as_bytes()).unwrap_err();
            assert!(e.contains(&format!("its revision {r} is outside")), "{e}");
            let mut hostile = m.clone();
            hostile.current_revision = Some(r);
            let e = classify(&key, hostile.to_json().as_bytes()).unwrap_err();
            assert!(e.contains(&format!("its revision {r} is outside")), "{e}");
        }
    }

    #[test]
    fn order_of_truth_is_revision_then_time() {
        let now = DateTime::parse_from_rfc3339("2026-11-23T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        // Written by a host whose clock was two days behind, but the highest revision.
        let behind = fixture(C, "2026-11-21T11:00:00Z", 900);
        let a = fixture(C, "2026-11-23T10:00:00Z", 500);
        let b = fixture(C, "2026-11-23T11:00:00Z", 600);
        // A host two days ahead with an old revision.
        let ahead = fixture(C, "2026-11-25T11:00:00Z", 100);
        let other = fixture("bbbbbbbbbbbbbbbb", "2026-11-20T11:00:00Z", 99999);
        let cat = Catalog::new(
            vec![
                a.clone(),
                ahead.clone(),
                other.clone(),
                behind.clone(),
                b.clone(),
            ],
            vec![],
            now,
            DEFAULT_FUTURE_TOLERANCE,
        );
        let revs: Vec<i64> = cat.iter().map(|m| m.revision).collect();
        assert_eq!(revs, [900, 600, 500, 100, 99999]);
        assert_eq!(cat.future().map(|m| m.revision).collect::<Vec<_>>(), [100]);
        // Age is by time, ignoring the future-dated backup.
        assert_eq!(cat.newest_by_time().unwrap().revision, 600);
        assert_eq!(cat.oldest_by_time().unwrap().revision, 99999);
        let json = cat.to_list_json();
        assert_eq!(json[3]["status"], "future");
        assert_eq!(json[0]["status"], "ok");
        assert_eq!(json[0]["revision"], 900);

        // Tolerance: 4 minutes ahead is fine with 5m, flagged with 1m.
        let mut soon = a.clone();
        soon.finished_at = now + chrono::Duration::minutes(4);
        assert!(!is_future_dated(&soon, now, DEFAULT_FUTURE_TOLERANCE));
        assert!(is_future_dated(&soon, now, Duration::from_secs(60)));
        assert!(!is_future_dated(&soon, now, Duration::MAX));
    }

    #[test]
    fn into_intact_names_broken_manifests() {
        let cat = Catalog {
            broken: vec![BrokenManifest {
                key: ObjectKey::new("c/x.json").unwrap(),
                reason: "not a manifest: EOF".into(),
            }],
            ..Default::default()
        };
        let e = cat.into_intact().unwrap_err().to_string();
        assert!(
            e.starts_with("1 broken manifests in the store: c/x.json (not a manifest: EOF)"),
            "{e}"
        );
    }

    #[test]
    fn object_key_rules() {
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            ".x",
            "a/.partial-x",
            "a/../b",
            "a\\b",
        ] {
            assert!(ObjectKey::new(bad).is_err(), "{bad:?} accepted");
        }
        for good in [
            "a",
            "a/b.json",
            "8e9e05c52164694d/20261122T230000Z-r1.db.zst",
        ] {
            assert_eq!(ObjectKey::new(good).unwrap().as_str(), good);
        }
    }
}
