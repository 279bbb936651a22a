//! Backup manifests and the catalog of backups in a store.
//!
//! A backup `<id>` of cluster `<cluster-id-hex>` is two objects:
//! `<cluster-id-hex>/<id>.db.zst` (the zstd-compressed snapshot, written first) and
//! `<cluster-id-hex>/<id>.json` (its [`Manifest`], written last). A backup exists only once
//! its manifest does: [`catalog`] reads manifests only, so data objects without a manifest
//! (failed or interrupted backups) are not listed.

use std::str::FromStr;

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

/// Key of the manifest object: `"<cluster-id-hex>/<id>.json"`. Panics like [`data_key`].
pub fn manifest_key(cluster_id_hex: &str, id: &str) -> ObjectKey {
    ObjectKey::new(format!("{cluster_id_hex}/{id}{MANIFEST_SUFFIX}"))
        .expect("valid cluster id and backup id")
}

/// All backups in the store, newest first (by id, which sorts by time; then by cluster id).
///
/// Reads `*.json` objects only, so data objects without a manifest are not backups.
/// Manifests that cannot be read or parsed, or whose key is not `<cluster_id>/<id>.json` of
/// their own content, are skipped with a warning (tracing) so one bad object does not hide
/// the others.
///
/// Errors: listing the store failed.
pub async fn catalog(store: &Store) -> Result<Vec<Manifest>, StoreError> {
    let keys: Vec<ObjectKey> = store
        .list("")
        .await?
        .into_iter()
        .map(|m| m.key)
        .filter(|k| k.as_str().ends_with(MANIFEST_SUFFIX))
        .collect();
    let read = futures::stream::iter(keys)
        .map(|key| async move {
            let r = match store.get_bytes(&key).await {
                Ok(b) => serde_json::from_slice::<Manifest>(&b).map_err(|e| e.to_string()),
                Err(StoreError::NotFound { .. }) => Err("deleted while listing".to_string()),
                Err(e) => return Err(e),
            };
            Ok::<_, StoreError>((key, r))
        })
        .buffer_unordered(8)
        .try_collect::<Vec<_>>()
        .await?;
    let mut out = Vec::with_capacity(read.len());
    for (key, r) in read {
        match r {
            Ok(m) => match m.key() {
                Ok(k) if k == key => out.push(m),
                _ => tracing::warn!(
                    "skipping manifest {key}: its content says cluster {} id {}, which belongs at {}/{}{MANIFEST_SUFFIX}",
                    m.cluster_id, m.id, m.cluster_id, m.id
                ),
            },
            Err(e) => tracing::warn!("skipping manifest {key} in {}: {e}", store.describe()),
        }
    }
    out.sort_by(|a, b| {
        b.id.cmp(&a.id)
            .then_with(|| b.cluster_id.cmp(&a.cluster_id))
    });
    Ok(out)
}

/// Resolves `which` to one backup: `"latest"` (the newest), an exact id, or a prefix of
/// exactly one id (e.g. `"20261122T23"`).
///
/// Errors: [`StoreError::BackupNotFound`] when nothing matches (or the store is empty),
/// [`StoreError::Ambiguous`] when a prefix matches several ids, listing errors.
pub async fn find(store: &Store, which: &str) -> Result<Manifest, StoreError> {
    let all = catalog(store).await?;
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
