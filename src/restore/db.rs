//! Rewrite of the restored db: membership replaced, consistent index and term set.
//!
//! # What etcd does (release-3.5 `etcdutl/snapshot/v3_snapshot.go`)
//! `saveDB` copies the snapshot to `member/snap/db`, strips the trailer, then
//! `membership.TrimMembershipFromBackend` deletes every key of buckets `members` and
//! `members_removed` (the buckets stay, empty); `saveWALAndSnap` calls
//! `cl.SetBackend` (`mustCreateBackendBuckets`: creates `members`, `members_removed`,
//! `cluster` if missing) and `AddMember` for each new member (`members/<id hex>` = member
//! JSON); `updateCIndex` puts `meta/consistent_index` = commit (number of members) and
//! `meta/term` = 1, both 8-byte big-endian (`cindex.UnsafeUpdateConsistentIndex`, which
//! never writes an index of 0 and writes the term only when > 0).
//!
//! With `--bump-revision N --mark-compacted` (etcdutl 3.5.10+ `modifyLatestRevision`) the same
//! transaction also appends the rev key `(R + N, 0)` (empty value) to bucket `key` and sets
//! `meta/scheduledCompactRev` to it ([`rewrite_db_bumped`]); the append touches only the
//! `key` bucket's rightmost path ([`BucketEdit::Append`]). The result's hash, revision and key
//! count equal etcdutl 3.5.30's (tests/restore_bump.rs).
//!
//! # Choice: a focused copy-on-write writer, not a bbolt crate
//! - `bbolt-rs` (crates.io 1.3.10, MIT) is a full port built on mmap and `unsafe`, pulling
//!   a command-line parser, bumpalo, `fake` and more into the library; it is a one-person port tracking bbolt
//!   1.3.10. We need neither its generality nor its risk: the restore changes three tiny
//!   buckets. No other maintained bbolt writer exists on crates.io.
//! - A compacting bulk rewrite (`bbolt compact`) would read and write the whole db: O(size),
//!   and a second full pass over a 1 GiB file.
//! - Copy-on-write (what a bbolt transaction does) is exact and O(changed pages): the file
//!   is copied with `copy_file_range` (`std::io::copy`, kernel side, no user-space buffer),
//!   then [`crate::snapshot::writer::apply`] writes new pages for the `meta`, `members`,
//!   `members_removed` (and, if missing, `cluster`) buckets, a new root bucket leaf and a
//!   new freelist above the old high water mark, and a new meta page with txid + 1. The big
//!   `key` bucket is untouched. Memory: a few pages. The result passes our full check and
//!   `etcdutl snapshot status`, and etcd 3.4 and 3.5 boot from it (tests/snapshot_*.rs,
//!   tests/restore_*.rs).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::member::{hex_id, Member};
use crate::snapshot::writer::{self, BucketEdit};
use crate::snapshot::{Db, SnapshotError};

/// Copy `src` (a verified db, `db_len` bytes; a trailer beyond is ignored) to `dst` (created,
/// mode 0600, must not exist) and rewrite it the way etcd 3.5's restore does: empty buckets
/// `members` and `members_removed`, write `members`, ensure bucket `cluster` exists, set
/// `meta/consistent_index` and `meta/term` (8-byte big-endian; skipped when 0, as etcd
/// does). See etcd-restore-spec.md §2 and the module doc.
///
/// Errors: Io (dst exists, disk full...), NotBbolt/Truncated/Corrupt from the source,
/// Rewrite (also when R + N below does not fit etcd's int64 revision), Corrupt when the last
/// key of bucket `key` is not a revision. On error `dst` may exist partially written: callers
/// build in a temp dir.
///
/// With `bump` N > 0, also etcdutl 3.5.10+'s `--bump-revision N --mark-compacted` (release-3.5 `etcdutl/snapshot/v3_snapshot.go` `modifyLatestRevision`): the
/// latest revision R (the greatest rev key in bucket `key`; 0 when empty) becomes R + N, a
/// 17-byte key `(R + N, 0)` with an empty value is added to bucket `key`, and
/// `meta/scheduledCompactRev` is set to the 17-byte revision `(R + N, 0)`, so that etcd
/// compacts at R + N on boot. Same transaction as the membership rewrite (etcdutl uses
/// separate ones; the resulting content is the same). Returns the bump when done.
#[allow(clippy::too_many_arguments)]
pub fn rewrite_db_bumped(
    src: &Path,
    db_len: u64,
    dst: &Path,
    members: &[Member],
    consistent_index: u64,
    term: u64,
    bump: u64,
) -> Result<Option<Bumped>, SnapshotError> {
    let RestoreEdits {
        edits,
        bumped,
        size,
    } = restore_edits(src, db_len, members, consistent_index, term, bump)?;
    let to = create_dst(dst)?;
    copy_prefix(src, to, dst, size)?;
    writer::apply(dst, Some(size), &edits)?;
    Ok(bumped)
}

/// [`rewrite_db_bumped`] on `path` itself, for a private file the caller owns (a decompressed
/// or PITR-applied temp file on the target's file system): the file is cut to the db's size
/// and the same transaction is applied, so the result has the same bytes without the copy
/// (a full read and write of the db).
///
/// Errors: those of [`rewrite_db_bumped`]; on error the file is left half-rewritten (the
/// caller discards it).
pub fn rewrite_db_in_place(
    path: &Path,
    db_len: u64,
    members: &[Member],
    consistent_index: u64,
    term: u64,
    bump: u64,
) -> Result<Option<Bumped>, SnapshotError> {
    let RestoreEdits {
        edits,
        bumped,
        size,
    } = restore_edits(path, db_len, members, consistent_index, term, bump)?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(size))
        .map_err(|source| SnapshotError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    writer::apply(path, Some(size), &edits)?;
    Ok(bumped)
}

/// The restore transaction of a db: membership, consistent index, term and the optional bump.
struct RestoreEdits {
    edits: BTreeMap<Vec<u8>, BucketEdit>,
    bumped: Option<Bumped>,
    /// The db's size (bytes up to its high water mark).
    size: u64,
}

/// [`RestoreEdits`] for the db in the first `db_len` bytes of `src`.
fn restore_edits(
    src: &Path,
    db_len: u64,
    members: &[Member],
    consistent_index: u64,
    term: u64,
    bump: u64,
) -> Result<RestoreEdits, SnapshotError> {
    let db = Db::open(src, Some(db_len))?;
    let mut edits = membership_edits(members, consistent_index, term);
    let bumped = if bump > 0 {
        let b = plan_bump(&db, bump)?;
        let key = rev_bytes(b.new_revision);
        edits.insert(
            b"key".to_vec(),
            BucketEdit::Append(vec![(key.to_vec(), Vec::new())]),
        );
        if let Some(BucketEdit::Put(meta)) = edits.get_mut(&b"meta"[..]) {
            meta.push((b"scheduledCompactRev".to_vec(), key.to_vec()));
        }
        Some(b)
    } else {
        None
    };
    Ok(RestoreEdits {
        edits,
        bumped,
        size: db.size(),
    })
}

/// A revision bump: the snapshot's latest revision and the new one (etcd revisions are
/// int64 main revisions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Bumped {
    /// Main revision of the snapshot's last key in bucket `key` (0 when empty).
    pub old_revision: i64,
    /// `old_revision + N`: the new latest revision, marked compacted.
    pub new_revision: i64,
}

/// etcd's 17-byte revision key (`revToBytes`): 8-byte big-endian main, `_`, 8-byte
/// big-endian sub (here 0).
fn rev_bytes(main: i64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..8].copy_from_slice(&main.to_be_bytes());
    k[8] = b'_';
    k
}

/// The bump of `amount` on top of the db's latest revision, with checked arithmetic.
pub fn plan_bump(db: &Db, amount: u64) -> Result<Bumped, SnapshotError> {
    let old_revision = latest_revision(db)?;
    let new_revision = i64::try_from(amount)
        .ok()
        .and_then(|a| old_revision.checked_add(a))
        .ok_or_else(|| SnapshotError::Rewrite {
            path: db.path().to_path_buf(),
            reason: format!(
                "--bump-revision {amount} on top of revision {old_revision} exceeds etcd's largest revision {}; choose a smaller bump",
                i64::MAX
            ),
        })?;
    Ok(Bumped {
        old_revision,
        new_revision,
    })
}

/// Main revision of the last key of bucket `key` (etcdutl `unsafeGetLatestRevision`; keys
/// sort by revision, so the last key is the greatest). 0 when the bucket is empty or absent.
/// Errors: Corrupt when the key is shorter than 17 bytes or its main revision is negative.
pub fn latest_revision(db: &Db) -> Result<i64, SnapshotError> {
    let Some(k) = db.last_key(b"key")? else {
        return Ok(0);
    };
    let main = k
        .get(..8)
        .filter(|_| k.len() >= 17)
        .map(|m| i64::from_be_bytes(m.try_into().unwrap_or([0; 8])))
        .filter(|m| *m >= 0)
        .ok_or_else(|| SnapshotError::Corrupt {
            page: db.meta().root,
            reason: format!(
                "the last key of bucket key ({}) is not a revision (17 bytes, non-negative)",
                hex::encode(&k)
            ),
        })?;
    Ok(main)
}

/// A member as recorded in the snapshot's `members` bucket (etcd's `membership.Member`
/// JSON: `{"id":..,"peerURLs":[..],"name":"..","clientURLs":[..],"isLearner":..}`; etcd
/// 3.4 and 3.5 write every member there; a 3.4 member that never published its attributes
/// has an empty name).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotMember {
    /// Member ID (a number in etcd's JSON; 16 hex digits in our reports, as elsewhere).
    #[serde(serialize_with = "hex_id")]
    pub id: u64,
    /// `--name` (may be empty).
    #[serde(default)]
    pub name: String,
    /// Peer URLs.
    #[serde(rename(deserialize = "peerURLs"), default)]
    pub peer_urls: Vec<String>,
    /// Client URLs (empty when never published).
    #[serde(rename(deserialize = "clientURLs"), default)]
    pub client_urls: Vec<String>,
    /// Learner (non-voting) member.
    #[serde(rename(deserialize = "isLearner"), default)]
    pub is_learner: bool,
}

/// Most members accepted from a snapshot (etcd recommends at most 7; bound untrusted data).
pub const MAX_SNAPSHOT_MEMBERS: usize = 1000;

/// The members recorded in the db's `members` bucket, sorted by ID. Empty when the bucket is
/// absent or empty. Errors: Corrupt for more than [`MAX_SNAPSHOT_MEMBERS`] entries, a value
/// that is not member JSON, or a key that is not its member's ID in hex.
pub fn snapshot_members(db: &Db) -> Result<Vec<SnapshotMember>, SnapshotError> {
    let corrupt = |reason: String| SnapshotError::Corrupt {
        page: db.meta().root,
        reason,
    };
    let entries = db.root_bucket_entries(b"members")?.unwrap_or_default();
    if entries.len() > MAX_SNAPSHOT_MEMBERS {
        return Err(corrupt(format!(
            "bucket members holds {} entries (more than {MAX_SNAPSHOT_MEMBERS})",
            entries.len()
        )));
    }
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let m: SnapshotMember = serde_json::from_slice(&e.value).map_err(|err| {
            corrupt(format!(
                "bucket members, key {:?}: not member JSON ({err})",
                String::from_utf8_lossy(&e.key)
            ))
        })?;
        if e.key != format!("{:x}", m.id).as_bytes() {
            return Err(corrupt(format!(
                "bucket members: key {:?} holds member id {:x}",
                String::from_utf8_lossy(&e.key),
                m.id
            )));
        }
        out.push(m);
    }
    out.sort_by_key(|m| m.id);
    Ok(out)
}

/// The bucket edits of a 3.5 restore (see the module doc).
pub fn membership_edits(
    members: &[Member],
    consistent_index: u64,
    term: u64,
) -> BTreeMap<Vec<u8>, BucketEdit> {
    let mut edits = BTreeMap::new();
    let kvs = members
        .iter()
        .map(|m| (m.backend_key().into_bytes(), m.backend_value().into_bytes()))
        .collect();
    edits.insert(b"members".to_vec(), BucketEdit::Replace(kvs));
    edits.insert(b"members_removed".to_vec(), BucketEdit::Replace(Vec::new()));
    edits.insert(b"cluster".to_vec(), BucketEdit::Put(Vec::new()));
    let mut meta = Vec::new();
    if consistent_index > 0 {
        meta.push((
            b"consistent_index".to_vec(),
            consistent_index.to_be_bytes().to_vec(),
        ));
        if term > 0 {
            meta.push((b"term".to_vec(), term.to_be_bytes().to_vec()));
        }
    }
    edits.insert(b"meta".to_vec(), BucketEdit::Put(meta));
    edits
}

/// Creates `dst` (0600); it must not exist.
fn create_dst(dst: &Path) -> Result<std::fs::File, SnapshotError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)
        .map_err(|source| SnapshotError::Io {
            path: dst.to_path_buf(),
            source,
        })
}

/// Copies the first `len` bytes of `src` into `to` (the new file `dst`), kernel side
/// (`copy_file_range` through `std::io::copy`), and fsyncs it.
fn copy_prefix(
    src: &Path,
    mut to: std::fs::File,
    dst: &Path,
    len: u64,
) -> Result<(), SnapshotError> {
    let from = std::fs::File::open(src).map_err(|source| SnapshotError::Io {
        path: src.to_path_buf(),
        source,
    })?;
    let copied = std::io::copy(&mut std::io::Read::take(from, len), &mut to).map_err(|source| {
        SnapshotError::Io {
            path: dst.to_path_buf(),
            source,
        }
    })?;
    if copied != len {
        return Err(SnapshotError::Truncated {
            path: src.to_path_buf(),
            expected: len,
            actual: copied,
        });
    }
    // Flush the copied pages now: the commit's own fsyncs then cover only a few pages.
    to.flush()
        .and_then(|()| to.sync_data())
        .map_err(|source| SnapshotError::Io {
            path: dst.to_path_buf(),
            source,
        })?;
    Ok(())
}
