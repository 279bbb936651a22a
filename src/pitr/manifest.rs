//! Delta manifests and the keys of a chain's objects (docs/design/pitr.md §5).
//!
//! A chain of base backup `<base-id>` of cluster `<cluster>` lives under
//! `<cluster>/<base-id>.pitr/`:
//! - manifest `<first:016>-<seq:016>.delta` ([`delta_manifest_key`]), pretty JSON
//!   [`DeltaManifest`], written last and created conditionally. The key is a function of the
//!   predecessor only (`first = prev.last + 1`, `seq = prev.seq + 1`), so two writers resuming
//!   from the same tail collide on it and can never fork a chain; the seq lets an empty (idle)
//!   delta, whose successor starts at the same revision, have its own key. `"kind": "close"`
//!   (no data) ends the chain;
//! - data `<first:016>-<last:016>-<nonce>.delta.zst[.age]` ([`DeltaManifest::derived_data_key`]):
//!   zstd (one frame, checksum) of the plaintext stream ([`super::delta`]), then age when the
//!   base is encrypted (same recipients).
//!
//! Neither name ends in `.json`, so the backup catalog ignores them. A manifest read from the
//! store is untrusted: [`parse_delta_manifest`] bounds its size, checks every field
//! ([`DeltaManifest::validate`]) and that it is stored at its own key; readers fetch only the
//! data key derived from validated fields, never a key named in the manifest.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::store::manifest::{EncryptionInfo, AGE_FORMAT, MAX_REVISION};
use crate::store::ObjectKey;

/// Format number of the delta stream and manifest this version writes: 2 since streams may
/// hold a LEASE_LIST (`delta.rs`); a version that reads only 1 then says "upgrade" instead of
/// calling the stream damaged.
pub const FORMAT: u32 = 2;
/// Oldest format this version reads.
pub const FORMAT_MIN: u32 = 1;
/// Suffix of a chain's directory segment: `<base-id>.pitr`.
pub const PITR_DIR_SUFFIX: &str = ".pitr";
/// Suffix of delta manifests.
pub const DELTA_MANIFEST_SUFFIX: &str = ".delta";
/// Suffix of plaintext (zstd) delta data objects.
pub const DELTA_DATA_SUFFIX: &str = ".delta.zst";
/// Suffix of encrypted delta data objects.
pub const ENCRYPTED_DELTA_DATA_SUFFIX: &str = ".delta.zst.age";
/// Largest delta manifest read, in bytes (1 MiB).
pub const MAX_DELTA_MANIFEST_BYTES: u64 = 1 << 20;
/// Largest plaintext stream a manifest may claim (`raw_bytes`), in bytes (4 GiB): bounds the
/// decompression of one object. The capture cuts at `pitr.max_bytes` (64 MiB by default).
pub const MAX_RAW_BYTES: u64 = 4 << 30;

/// What a delta manifest stands for.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DeltaKind {
    /// A delta with a data object.
    Delta,
    /// The end of the chain (no data object); `reason` says why.
    Close,
}

/// Why a chain was closed.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CloseReason {
    /// The watch was compacted away (`compact_revision` says where).
    Compacted,
    /// A revision was missing from the watch.
    Gap,
    /// etcd was unreachable longer than `pitr.max_outage`.
    Outage,
    /// A newer base took over (its chain has a delta).
    BaseHandover,
}

/// One delta (or the close) of a chain; stored as pretty JSON with these field names.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DeltaManifest {
    /// `delta` or `close`.
    pub kind: DeltaKind,
    /// [`FORMAT`] when written ([`FORMAT_MIN`]..=[`FORMAT`] read).
    pub format: u32,
    /// etcd cluster id, 16 lower-case hex digits (a key segment).
    pub cluster_id: String,
    /// Id of the base backup (a key segment).
    pub base_id: String,
    /// Effective base revision `B_eff` ([`super::delta::base_revision`]).
    pub base_revision: i64,
    /// Position in the chain, 0 for the first delta.
    pub seq: u64,
    /// First revision (the previous delta's `last_revision + 1`; `B_eff + 1` for seq 0).
    pub first_revision: i64,
    /// Last revision, inclusive; `first_revision - 1` when the delta holds no revision.
    pub last_revision: i64,
    /// PUT + DEL records.
    pub events: u64,
    /// REV records (`last_revision - first_revision + 1`).
    pub revisions: u64,
    /// LEASE_GRANT + LEASE_GONE records.
    pub lease_records: u64,
    /// Observed time of the first REV, UTC; absent when empty.
    #[serde(default)]
    pub first_time: Option<DateTime<Utc>>,
    /// Observed time of the last REV, UTC; absent when empty.
    #[serde(default)]
    pub last_time: Option<DateTime<Utc>>,
    /// Newest anchor time whose revision is <= `last_revision`: every change committed before
    /// it is in the chain up to this delta. Absent when none.
    #[serde(default)]
    pub covered_until: Option<DateTime<Utc>>,
    /// Size of the plaintext stream in bytes (<= [`MAX_RAW_BYTES`]); 0 for close.
    pub raw_bytes: u64,
    /// sha256 (hex) of the plaintext stream; empty for close.
    pub raw_sha256: String,
    /// Size of the stored data object in bytes; 0 for close.
    pub stored_bytes: u64,
    /// sha256 (hex) of the stored data object; empty for close.
    pub stored_sha256: String,
    /// `stored_sha256` of the previous delta of the chain (hash link); absent for seq 0.
    #[serde(default)]
    pub prev_stored_sha256: Option<String>,
    /// 16 lower-case hex digits, part of the data key (a retried upload never collides).
    pub nonce: String,
    /// `"zstd"`.
    pub compression: String,
    /// zstd level used.
    pub compression_level: i32,
    /// age encryption of the data object (the base's recipients); absent when plain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionInfo>,
    /// Id of the member watched, 16 lower-case hex digits.
    pub member_id: String,
    /// Its client URL.
    pub endpoint: String,
    /// Its etcd version.
    pub etcd_version: String,
    /// etcd-lifeboat version that wrote the delta.
    pub tool_version: String,
    /// When the manifest was written, UTC.
    pub written_at: DateTime<Utc>,
    /// Close only: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<CloseReason>,
    /// Close `compacted` only: the compaction revision the watch hit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compact_revision: Option<i64>,
    /// Close only: the base that continues (when known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_base_id: Option<String>,
}

/// Errors of reading a delta manifest from the store.
#[derive(Debug, thiserror::Error)]
pub enum DeltaManifestError {
    /// More bytes than [`MAX_DELTA_MANIFEST_BYTES`]; not parsed.
    #[error("delta manifest {key} has {size} bytes, more than the {MAX_DELTA_MANIFEST_BYTES} allowed; not a delta manifest written by etcd-lifeboat")]
    TooLarge {
        /// Its key.
        key: ObjectKey,
        /// Its size.
        size: u64,
    },
    /// Not delta manifest JSON, or a field breaks a rule; the chain ends before it.
    #[error("delta manifest {key} is not trusted: {reason}")]
    Invalid {
        /// Its key.
        key: ObjectKey,
        /// What is wrong.
        reason: String,
    },
}

/// Whether `s` may be one segment of an object key (no `/`, not starting with `.`, valid).
fn is_segment(s: &str) -> bool {
    !s.is_empty() && !s.contains('/') && ObjectKey::new(s).is_ok()
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The prefix of a base's chain: `"<cluster>/<base-id>.pitr/"`.
///
/// Errors: [`crate::store::StoreError::InvalidKey`] when the ids are not key segments.
pub fn chain_prefix(cluster_id: &str, base_id: &str) -> Result<String, crate::store::StoreError> {
    if !is_segment(cluster_id) || !is_segment(base_id) {
        return Err(crate::store::StoreError::InvalidKey {
            key: format!("{cluster_id}/{base_id}{PITR_DIR_SUFFIX}/"),
            reason: "cluster id and base id must each be one key segment",
        });
    }
    Ok(format!("{cluster_id}/{base_id}{PITR_DIR_SUFFIX}/"))
}

/// Key of the delta manifest number `seq` of a chain, starting at `first_revision`:
/// `"<cluster>/<base-id>.pitr/<first:016>-<seq:016>.delta"` (keys sort by first revision, then
/// seq).
///
/// Errors: InvalidKey for ids that are not key segments or a negative revision.
pub fn delta_manifest_key(
    cluster_id: &str,
    base_id: &str,
    first_revision: i64,
    seq: u64,
) -> Result<ObjectKey, crate::store::StoreError> {
    if first_revision < 0 {
        return Err(crate::store::StoreError::InvalidKey {
            key: format!("{first_revision}"),
            reason: "a delta's first revision is not negative",
        });
    }
    ObjectKey::new(format!(
        "{}{first_revision:016}-{seq:016}{DELTA_MANIFEST_SUFFIX}",
        chain_prefix(cluster_id, base_id)?
    ))
}

/// The `(first_revision, seq)` named by a delta manifest key's file name
/// (`<first:016>-<seq:016>.delta`), `None` when `key` is not one (a data object, anything
/// else).
pub fn parse_delta_manifest_name(key: &ObjectKey) -> Option<(i64, u64)> {
    parse_manifest_file_name(key.file_name())
}

/// [`parse_delta_manifest_name`] of a file name.
fn parse_manifest_file_name(name: &str) -> Option<(i64, u64)> {
    let stem = name.strip_suffix(DELTA_MANIFEST_SUFFIX)?;
    let (first, seq) = stem.split_once('-')?;
    let digits = |s: &str| s.len() == 16 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(first) || !digits(seq) {
        return None;
    }
    Some((first.parse().ok()?, seq.parse().ok()?))
}

/// Whether `name` is one this tool writes in a chain directory: a delta manifest
/// `<first:016>-<seq:016>.delta` ([`delta_manifest_key`]) or a delta data object
/// `<first:016>-<last:016>-<nonce, 16 hex>.delta.zst[.age]` ([`DeltaManifest::derived_data_key`]).
pub fn is_chain_object_name(name: &str) -> bool {
    if parse_manifest_file_name(name).is_some() {
        return true;
    }
    let Some(stem) = name
        .strip_suffix(ENCRYPTED_DELTA_DATA_SUFFIX)
        .or_else(|| name.strip_suffix(DELTA_DATA_SUFFIX))
    else {
        return false;
    };
    let digits = |s: &str| s.len() == 16 && s.bytes().all(|b| b.is_ascii_digit());
    let parts: Vec<&str> = stem.split('-').collect();
    matches!(parts.as_slice(), [a, b, nonce] if digits(a) && digits(b) && is_hex(nonce, 16))
}

impl DeltaManifest {
    /// Whether a delta stream's header names this manifest's chain position (cluster, base,
    /// base revision, seq, first revision).
    pub fn matches_header(&self, h: &super::delta::DeltaHeader) -> bool {
        (
            h.cluster_id.as_str(),
            h.base_id.as_str(),
            h.base_revision,
            h.seq,
            h.first_revision,
        ) == (
            self.cluster_id.as_str(),
            self.base_id.as_str(),
            self.base_revision,
            self.seq,
            self.first_revision,
        )
    }

    /// Key of this manifest ([`delta_manifest_key`]).
    ///
    /// Errors: InvalidKey.
    pub fn key(&self) -> Result<ObjectKey, crate::store::StoreError> {
        delta_manifest_key(
            &self.cluster_id,
            &self.base_id,
            self.first_revision,
            self.seq,
        )
    }

    /// Key of the data object, derived from the (validated) fields:
    /// `<cluster>/<base-id>.pitr/<first:016>-<last:016>-<nonce>.delta.zst[.age]`. `None` for a
    /// close manifest.
    ///
    /// Errors: InvalidKey.
    pub fn derived_data_key(&self) -> Result<Option<ObjectKey>, crate::store::StoreError> {
        if self.kind == DeltaKind::Close {
            return Ok(None);
        }
        let suffix = if self.encryption.is_some() {
            ENCRYPTED_DELTA_DATA_SUFFIX
        } else {
            DELTA_DATA_SUFFIX
        };
        ObjectKey::new(format!(
            "{}{:016}-{:016}-{}{suffix}",
            chain_prefix(&self.cluster_id, &self.base_id)?,
            self.first_revision,
            self.last_revision,
            self.nonce
        ))
        .map(Some)
    }

    /// Pretty JSON, as stored.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("delta manifest serialises")
    }

    /// Checks every field against the format's rules: ids are key segments (cluster id and
    /// member id 16 hex digits), `format` 1, revisions non-negative and consistent
    /// (`first > base`, `last >= first - 1`, `revisions == last - first + 1`,
    /// `events >= revisions`), sizes bounded, hashes 64 hex digits, nonce 16 hex digits,
    /// compression `zstd`, encryption age, times ordered; a close has no data and a reason.
    ///
    /// Errors: the reason as text.
    pub fn validate(&self) -> Result<(), String> {
        if !(FORMAT_MIN..=FORMAT).contains(&self.format) {
            return Err(format!(
                "format {} (this version reads {FORMAT_MIN} to {FORMAT}); upgrade etcd-lifeboat",
                self.format
            ));
        }
        if !is_hex(&self.cluster_id, 16) {
            return Err(format!(
                "cluster_id {:?} is not 16 hex digits",
                self.cluster_id
            ));
        }
        if !is_segment(&self.base_id) || self.base_id.len() > 200 {
            return Err(format!(
                "base_id {:?} is not a valid key segment",
                self.base_id
            ));
        }
        if self.base_revision < 0 {
            return Err(format!("base_revision {} < 0", self.base_revision));
        }
        // Bounded so that `+ 1` on any of them (the next delta, the next seq) cannot overflow.
        for (what, r) in [
            ("first_revision", self.first_revision),
            ("last_revision", self.last_revision),
            ("compact_revision", self.compact_revision.unwrap_or(0)),
            ("seq", i64::try_from(self.seq).unwrap_or(i64::MAX)),
        ] {
            if r > MAX_REVISION {
                return Err(format!("{what} {r} above {MAX_REVISION}"));
            }
        }
        if self.first_revision <= self.base_revision {
            return Err(format!(
                "first_revision {} is not above base_revision {}",
                self.first_revision, self.base_revision
            ));
        }
        if self.seq == 0 && self.first_revision != self.base_revision + 1 {
            return Err(format!(
                "the first delta (seq 0) starts at r{}, not at base_revision + 1 = r{}",
                self.first_revision,
                self.base_revision + 1
            ));
        }
        let span = self
            .last_revision
            .checked_sub(self.first_revision)
            .and_then(|d| d.checked_add(1))
            .filter(|&n| n >= 0)
            .ok_or_else(|| {
                format!(
                    "last_revision {} is below first_revision {} - 1",
                    self.last_revision, self.first_revision
                )
            })?;
        if self.revisions != span as u64 {
            return Err(format!(
                "revisions {} but r{}..r{} spans {span}",
                self.revisions, self.first_revision, self.last_revision
            ));
        }
        if self.events < self.revisions {
            return Err(format!(
                "{} events for {} revisions (each revision has at least one)",
                self.events, self.revisions
            ));
        }
        if (self.revisions > 0) != (self.first_time.is_some() && self.last_time.is_some()) {
            return Err("first_time/last_time must be set exactly when revisions > 0".into());
        }
        if let (Some(a), Some(b)) = (self.first_time, self.last_time) {
            if a > b {
                return Err(format!("first_time {a} is after last_time {b}"));
            }
        }
        if let Some(p) = &self.prev_stored_sha256 {
            if !is_hex(p, 64) {
                return Err("prev_stored_sha256 is not 64 hex digits".into());
            }
        }
        if (self.seq == 0) != self.prev_stored_sha256.is_none() {
            return Err("prev_stored_sha256 must be set exactly when seq > 0".into());
        }
        if !is_hex(&self.nonce, 16) {
            return Err(format!("nonce {:?} is not 16 hex digits", self.nonce));
        }
        if !self.member_id.is_empty() && !is_hex(&self.member_id, 16) {
            return Err(format!(
                "member_id {:?} is not 16 hex digits",
                self.member_id
            ));
        }
        if let Some(e) = &self.encryption {
            if e.format != AGE_FORMAT || e.recipients.is_empty() {
                return Err(format!(
                    "encryption {:?} with {} recipients; expected {AGE_FORMAT}",
                    e.format,
                    e.recipients.len()
                ));
            }
        }
        match self.kind {
            DeltaKind::Delta => {
                if self.compression != "zstd" {
                    return Err(format!("compression {:?}, expected zstd", self.compression));
                }
                if !is_hex(&self.raw_sha256, 64) || !is_hex(&self.stored_sha256, 64) {
                    return Err("raw_sha256/stored_sha256 are not 64 hex digits".into());
                }
                if self.raw_bytes == 0 || self.raw_bytes > MAX_RAW_BYTES {
                    return Err(format!(
                        "raw_bytes {} outside 1..={MAX_RAW_BYTES}",
                        self.raw_bytes
                    ));
                }
                if self.stored_bytes == 0 {
                    return Err("stored_bytes 0".into());
                }
                if self.reason.is_some() || self.next_base_id.is_some() {
                    return Err("reason/next_base_id on a delta (close only)".into());
                }
            }
            DeltaKind::Close => {
                if self.revisions != 0
                    || self.events != 0
                    || self.raw_bytes != 0
                    || self.stored_bytes != 0
                {
                    return Err("a close manifest has no revisions and no data".into());
                }
                if self.reason.is_none() {
                    return Err("a close manifest without reason".into());
                }
                if let Some(n) = &self.next_base_id {
                    if !is_segment(n) {
                        return Err(format!("next_base_id {n:?} is not a key segment"));
                    }
                }
            }
        }
        if let Some(c) = self.compact_revision {
            if c < 0 || self.reason != Some(CloseReason::Compacted) {
                return Err(format!(
                    "compact_revision {c} without reason compacted (or negative)"
                ));
            }
        }
        self.key().map_err(|e| e.to_string())?;
        self.derived_data_key().map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// Parses the bytes of the delta manifest object `key` and checks it: at most
/// [`MAX_DELTA_MANIFEST_BYTES`], JSON of [`DeltaManifest`], [`DeltaManifest::validate`], and
/// `key` is its own key (a copied or renamed manifest is not trusted).
///
/// Errors: [`DeltaManifestError`].
pub fn parse_delta_manifest(
    key: &ObjectKey,
    bytes: &[u8],
) -> Result<DeltaManifest, DeltaManifestError> {
    if bytes.len() as u64 > MAX_DELTA_MANIFEST_BYTES {
        return Err(DeltaManifestError::TooLarge {
            key: key.clone(),
            size: bytes.len() as u64,
        });
    }
    let invalid = |reason: String| DeltaManifestError::Invalid {
        key: key.clone(),
        reason,
    };
    let m: DeltaManifest =
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("not a delta manifest: {e}")))?;
    m.validate().map_err(&invalid)?;
    let own = m.key().map_err(|e| invalid(e.to_string()))?;
    if &own != key {
        return Err(invalid(format!(
            "its content says cluster {} base {} first r{} seq {}, which belongs at {own}",
            m.cluster_id, m.base_id, m.first_revision, m.seq
        )));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chains written before LEASE_LIST (format 1) stay readable.
    #[test]
    fn format_1_manifests_are_read() {
        let mut m = sample();
        m.format = 1;
        m.validate().unwrap();
    }

    pub(crate) fn sample() -> DeltaManifest {
        DeltaManifest {
            kind: DeltaKind::Delta,
            format: FORMAT,
            cluster_id: "cdf818194e3a8c32".into(),
            base_id: "20261122T230000Z-r0000000000002487".into(),
            base_revision: 2487,
            seq: 0,
            first_revision: 2488,
            last_revision: 2500,
            events: 20,
            revisions: 13,
            lease_records: 1,
            first_time: Some("2026-11-22T23:00:01Z".parse().unwrap()),
            last_time: Some("2026-11-22T23:00:09Z".parse().unwrap()),
            covered_until: Some("2026-11-22T23:00:10Z".parse().unwrap()),
            raw_bytes: 1234,
            raw_sha256: "a".repeat(64),
            stored_bytes: 600,
            stored_sha256: "b".repeat(64),
            prev_stored_sha256: None,
            nonce: "0123456789abcdef".into(),
            compression: "zstd".into(),
            compression_level: 3,
            encryption: None,
            member_id: "8e9e05c52164694d".into(),
            endpoint: "http://127.0.0.1:2379".into(),
            etcd_version: "3.5.1".into(),
            tool_version: "0.1.0".into(),
            written_at: "2026-11-22T23:00:11Z".parse().unwrap(),
            reason: None,
            compact_revision: None,
            next_base_id: None,
        }
    }

    #[test]
    fn keys_are_derived() {
        let m = sample();
        assert_eq!(
            m.key().unwrap().as_str(),
            "cdf818194e3a8c32/20261122T230000Z-r0000000000002487.pitr/0000000000002488-0000000000000000.delta"
        );
        assert_eq!(
            m.derived_data_key().unwrap().unwrap().as_str(),
            "cdf818194e3a8c32/20261122T230000Z-r0000000000002487.pitr/0000000000002488-0000000000002500-0123456789abcdef.delta.zst"
        );
        assert_eq!(
            parse_delta_manifest_name(&m.key().unwrap()),
            Some((2488, 0))
        );
        assert_eq!(
            parse_delta_manifest_name(&m.derived_data_key().unwrap().unwrap()),
            None
        );
        let mut e = m.clone();
        e.encryption = Some(EncryptionInfo {
            format: AGE_FORMAT.into(),
            recipients: vec!["age1x".into()],
        });
        assert!(e
            .derived_data_key()
            .unwrap()
            .unwrap()
            .as_str()
            .ends_with(".delta.zst.age"));
        assert!(!m.key().unwrap().as_str().ends_with(".json"));
    }

    #[test]
    fn round_trip_and_own_key() {
        let m = sample();
        let json = m.to_json();
        let key = m.key().unwrap();
        assert_eq!(parse_delta_manifest(&key, json.as_bytes()).unwrap(), m);
        let other = delta_manifest_key(&m.cluster_id, &m.base_id, 2488, 1).unwrap();
        let err = parse_delta_manifest(&other, json.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("belongs at"), "{err}");
        let big = vec![b' '; (MAX_DELTA_MANIFEST_BYTES + 1) as usize];
        assert!(matches!(
            parse_delta_manifest(&key, &big),
            Err(DeltaManifestError::TooLarge { .. })
        ));
    }

    #[test]
    fn hostile_values_are_rejected() {
        type Edit = Box<dyn Fn(&mut DeltaManifest)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("cluster_id", Box::new(|m| m.cluster_id = "../x".into())),
            ("base_id", Box::new(|m| m.base_id = "a/b".into())),
            ("base_id", Box::new(|m| m.base_id = ".hidden".into())),
            ("nonce", Box::new(|m| m.nonce = "../../etc".into())),
            ("revisions", Box::new(|m| m.revisions = 12)),
            ("below first_revision", Box::new(|m| m.last_revision = 10)),
            ("not above base", Box::new(|m| m.first_revision = 2487)),
            ("seq 0", Box::new(|m| m.first_revision = 2489)),
            ("events", Box::new(|m| m.events = 3)),
            ("raw_bytes", Box::new(|m| m.raw_bytes = u64::MAX)),
            ("format", Box::new(|m| m.format = 3)),
            ("format", Box::new(|m| m.format = 0)),
            ("compression", Box::new(|m| m.compression = "gzip".into())),
            ("prev_stored_sha256", Box::new(|m| m.seq = 3)),
            ("sha256", Box::new(|m| m.stored_sha256 = "../".repeat(20))),
            ("first_time", Box::new(|m| m.first_time = None)),
            ("last_revision", Box::new(|m| m.last_revision = i64::MIN)),
            ("last_revision", Box::new(|m| m.last_revision = i64::MAX)),
            ("first_revision", Box::new(|m| m.first_revision = i64::MAX)),
            ("seq", Box::new(|m| m.seq = u64::MAX)),
            (
                "compact_revision",
                Box::new(|m| m.compact_revision = Some(i64::MAX)),
            ),
        ];
        for (want, f) in cases {
            let mut m = sample();
            f(&mut m);
            let err = m.validate().unwrap_err();
            assert!(err.contains(want), "{want}: {err}");
        }
        // A close manifest: no data, a reason.
        let mut c = sample();
        c.kind = DeltaKind::Close;
        c.last_revision = c.first_revision - 1;
        c.revisions = 0;
        c.events = 0;
        c.first_time = None;
        c.last_time = None;
        c.raw_bytes = 0;
        c.stored_bytes = 0;
        c.reason = Some(CloseReason::Compacted);
        c.compact_revision = Some(2600);
        c.validate().unwrap();
        assert_eq!(c.derived_data_key().unwrap(), None);
        c.reason = None;
        assert!(c.validate().is_err());
    }
}
