//! Native apply of a delta chain to a copy of the base db (docs/design/pitr.md §2, §3, §5
//! "Apply").
//!
//! Per delta, streamed: GET -> size bound + sha256 of the stored object -> age decrypt (when
//! the manifest says so, [`crate::crypto`]) -> zstd decode (window <= 8 MiB, output bounded
//! by the manifest's `raw_bytes`) -> [`DeltaReader`] (every format check) -> the key-bucket
//! entries `(rev_to_bytes(main, sub)[+'t'], value)` of revisions <= R, appended to bucket
//! `key` in batches of [`BATCH_BYTES`] ([`BucketEdit::Append`]: one copy-on-write bbolt
//! transaction per batch, only the bucket's rightmost path rewritten). Every delta key is
//! above every base key (they start at `B_eff + 1`, checked against the base db), so the
//! appends keep bucket order. After the last delta: bucket `lease` = base, with each lease
//! the capture recorded granted or gone as its record seen at the highest revision <= R says
//! (a lease list at revision X counts as a gone record at X for every lease, of the base or
//! of a record, that it does not name), plus every lease still referenced by a key put by the deltas and live
//! at R (as `{ID}` with TTL 0, which etcd raises to its minimum TTL; warned), written as
//! [`BucketEdit::Replace`] with base entries kept byte for byte. Nothing in `meta` changes:
//! etcd derives the current revision from the greatest key.
//!
//! The db is a private copy ([`copy_base`]); on any error it is left half-written and the
//! caller discards it. Integrity failures found at a delta's end (sha256, END counts) abort
//! the whole restore, so a restored member never holds a delta that failed its check.
//! Memory: one batch (<= 8 MiB of entries, held twice while written), one record (<= 64 MiB,
//! bounded by the format), the zstd window, the lease records and a map of leased keys'
//! 64-bit hashes.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::delta::{
    base_revision, decode_lease, lease_key, lease_value, DeltaError, DeltaReader, KvRef, Record,
};
use super::manifest::DeltaManifest;
use super::plan::{PitrPlan, PitrTarget};
use crate::crypto::{self, Identities};
use crate::snapshot::writer::{self, BucketEdit};
use crate::snapshot::{Db, SnapshotError};
use crate::store::{Store, StoreError};

/// Bytes of key-bucket entries appended per bbolt transaction (8 MiB).
pub const BATCH_BYTES: usize = 8 << 20;

/// Largest zstd window accepted (2^23 = 8 MiB; the capture's level-3 encoder uses <= 2 MiB).
pub const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// Why applying deltas failed. Nothing was restored when a restore returns one.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A delta object could not be read from the store.
    #[error("reading delta {key} from {store}: {source}")]
    Store {
        /// The object key.
        key: String,
        /// The store.
        store: String,
        /// The cause.
        source: StoreError,
    },
    /// A delta object or stream failed a check (sizes, sha256, format, header vs manifest):
    /// the chain is damaged there; restore an earlier revision (`--to-revision` below this
    /// delta's first revision) or another base.
    #[error(
        "delta {key} is damaged: {reason}; restore a revision before r{first} or from another base"
    )]
    Corrupt {
        /// The data object key.
        key: String,
        /// First revision of the delta.
        first: i64,
        /// What is wrong.
        reason: String,
    },
    /// The chain is encrypted and no identity was given, or none of them fits.
    #[error("delta {key} is age-encrypted to {recipients}; {reason}")]
    Identity {
        /// The data object key.
        key: String,
        /// The recipients of the chain.
        recipients: String,
        /// What to do.
        reason: String,
    },
    /// The base db does not match the chain (its effective revision differs).
    #[error("{0}")]
    BaseMismatch(String),
    /// Reading or writing the db copy failed.
    #[error("{what}: {source}")]
    Db {
        /// What was being done, naming the file.
        what: String,
        /// The cause.
        source: SnapshotError,
    },
    /// A local file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the path.
        what: String,
        /// The cause.
        source: io::Error,
    },
}

/// What [`apply`] did.
#[derive(Clone, Debug, Serialize)]
pub struct PitrApplied {
    /// The revision the db now ends at (R; for a time target the resolved revision).
    pub revision: i64,
    /// When the capture observed that revision (None: the base itself).
    pub observed_at: Option<DateTime<Utc>>,
    /// Delta objects read.
    pub deltas_read: usize,
    /// Key-bucket entries appended (puts + tombstones).
    pub events_applied: u64,
    /// Bytes of those entries (keys + values).
    pub entry_bytes: u64,
    /// bbolt transactions written for them.
    pub transactions: u64,
    /// Stored bytes read.
    pub stored_bytes_read: u64,
    /// Leases in the restored `lease` bucket.
    pub leases: usize,
    /// Leases referenced by live keys but never seen granted, added with TTL 0 (etcd's
    /// minimum applies).
    pub leases_unknown: Vec<i64>,
}

/// Copies the first `db_len` bytes of the verified db `src` (its trailer left out) to `dst`
/// (created 0600, must not exist): the file [`apply`] writes into.
///
/// Errors: Io.
pub fn copy_base(src: &Path, db_len: u64, dst: &Path) -> Result<(), ApplyError> {
    let what = |w: &str| format!("{w} {}", dst.display());
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)
        .map_err(|source| ApplyError::Io {
            what: what("creating"),
            source,
        })?;
    let inp = std::fs::File::open(src).map_err(|source| ApplyError::Io {
        what: format!("opening {}", src.display()),
        source,
    })?;
    let n = io::copy(&mut inp.take(db_len), &mut out).map_err(|source| ApplyError::Io {
        what: what("copying the base db to"),
        source,
    })?;
    if n != db_len {
        return Err(ApplyError::Io {
            what: what("copying the base db to"),
            source: io::Error::new(io::ErrorKind::UnexpectedEof, "the base db is shorter"),
        });
    }
    Ok(())
}

/// Counts and hashes what passes; refuses to read past `limit` bytes.
struct Counted<R> {
    inner: R,
    sha: Sha256,
    n: u64,
    limit: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let room = self.limit.saturating_sub(self.n).saturating_add(1);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let k = self.inner.read(&mut buf[..want])?;
        self.n += k as u64;
        if self.n > self.limit {
            return Err(io::Error::other(format!(
                "more than the {} bytes recorded",
                self.limit
            )));
        }
        self.sha.update(&buf[..k]);
        Ok(k)
    }
}

/// Refuses output beyond `limit` bytes (a zstd bomb, or a stream longer than recorded).
struct Bounded<R> {
    inner: R,
    n: u64,
    limit: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        if self.n > self.limit {
            return Err(io::Error::other(format!(
                "decompresses to more than the {} bytes recorded (raw_bytes)",
                self.limit
            )));
        }
        Ok(k)
    }
}

/// A lease record, kept until the final revision is known.
enum LeaseRec {
    Grant {
        id: i64,
        ttl: i64,
        seen: i64,
    },
    Gone {
        id: i64,
        seen: i64,
    },
    /// Every lease live at `seen` (ascending ids).
    List {
        seen: i64,
        ids: Vec<i64>,
    },
}

/// State carried across the deltas of one apply.
struct State {
    db: PathBuf,
    db_len: Option<u64>,
    /// Target revision (time targets: i64::MAX until resolved by the stop).
    max_rev: i64,
    /// Time target in Unix ms.
    max_ms: Option<i64>,
    stopped: bool,
    last_applied: i64,
    last_observed_ms: Option<i64>,
    batch: Vec<(Vec<u8>, Vec<u8>)>,
    batch_bytes: usize,
    leases: Vec<LeaseRec>,
    /// hash(key) -> lease of keys put with a lease by the deltas, live so far.
    leased: HashMap<u64, i64>,
    out: PitrApplied,
}

fn key_hash(k: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    k.hash(&mut h);
    h.finish()
}

impl State {
    fn flush(&mut self) -> Result<(), ApplyError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let mut edits = BTreeMap::new();
        edits.insert(
            b"key".to_vec(),
            BucketEdit::Append(std::mem::take(&mut self.batch)),
        );
        writer::apply(&self.db, self.db_len.take(), &edits).map_err(|source| ApplyError::Db {
            what: format!("appending delta entries to {}", self.db.display()),
            source,
        })?;
        self.batch_bytes = 0;
        self.out.transactions += 1;
        Ok(())
    }

    /// Takes one record; returns whether it was an END.
    fn take(&mut self, rec: Record) -> Result<(), ApplyError> {
        match rec {
            Record::Rev {
                main,
                observed_unix_ms,
            } => {
                if main > self.max_rev || self.max_ms.is_some_and(|t| observed_unix_ms > t) {
                    self.stopped = true;
                }
                if !self.stopped {
                    self.last_applied = main;
                    self.last_observed_ms = Some(observed_unix_ms);
                }
            }
            Record::Put { .. } | Record::Del { .. } if !self.stopped => {
                let is_put = matches!(rec, Record::Put { .. });
                let (k, v) = rec.into_entry().expect("put or del");
                let kv = KvRef::decode(&v).expect("checked by the reader");
                let h = key_hash(kv.key);
                if is_put && kv.lease != 0 {
                    self.leased.insert(h, kv.lease);
                } else {
                    self.leased.remove(&h);
                }
                self.out.events_applied += 1;
                self.out.entry_bytes += (k.len() + v.len()) as u64;
                self.batch_bytes += k.len() + v.len();
                self.batch.push((k, v));
                if self.batch_bytes >= BATCH_BYTES {
                    self.flush()?;
                }
            }
            Record::LeaseGrant { id, ttl, seen_rev } => self.leases.push(LeaseRec::Grant {
                id,
                ttl,
                seen: seen_rev,
            }),
            Record::LeaseGone { id, seen_rev } => {
                self.leases.push(LeaseRec::Gone { id, seen: seen_rev })
            }
            Record::LeaseList { seen_rev, ids } => self.leases.push(LeaseRec::List {
                seen: seen_rev,
                ids,
            }),
            _ => {}
        }
        Ok(())
    }
}

/// Applies `plan`'s deltas to the db copy at `db` (first `db_len` bytes valid, e.g. from
/// [`copy_base`]), reading them from `store`; `identities` for an encrypted chain. Checks
/// first that the db's effective revision ([`base_revision`]) is the chain's. Blocking
/// (call from a blocking thread inside a tokio runtime: store reads use the current handle).
///
/// Errors: [`ApplyError`]; the db is then half-written (discard it).
pub fn apply(
    store: &Store,
    plan: &PitrPlan,
    identities: Option<Arc<Identities>>,
    db: &Path,
    db_len: u64,
) -> Result<PitrApplied, ApplyError> {
    let handle = tokio::runtime::Handle::current();
    let dbe = |what: &str| {
        let what = format!("{what} {}", db.display());
        move |source| ApplyError::Db { what, source }
    };
    let base = {
        let d = Db::open(db, Some(db_len)).map_err(dbe("reading"))?;
        base_revision(&d).map_err(dbe("reading"))?
    };
    if base != plan.chain.base_revision {
        return Err(ApplyError::BaseMismatch(format!(
            "backup {} has effective revision r{base}, but its delta chain starts after r{}; the chain does not belong to this backup",
            plan.chain.base_id, plan.chain.base_revision
        )));
    }
    let (max_rev, max_ms) = match plan.target {
        PitrTarget::Revision(r) => (r, None),
        PitrTarget::Time(t) => (i64::MAX, Some(t.timestamp_millis())),
    };
    let mut st = State {
        db: db.to_path_buf(),
        db_len: Some(db_len),
        max_rev,
        max_ms,
        stopped: false,
        last_applied: base,
        last_observed_ms: None,
        batch: Vec::new(),
        batch_bytes: 0,
        leases: Vec::new(),
        leased: HashMap::new(),
        out: PitrApplied {
            revision: base,
            observed_at: None,
            deltas_read: 0,
            events_applied: 0,
            entry_bytes: 0,
            transactions: 0,
            stored_bytes_read: 0,
            leases: 0,
            leases_unknown: Vec::new(),
        },
    };
    for m in &plan.deltas {
        if st.stopped {
            break;
        }
        read_delta(store, &handle, m, identities.as_deref(), &mut st)?;
        st.out.deltas_read += 1;
        st.out.stored_bytes_read += m.stored_bytes;
    }
    st.flush()?;
    if let PitrTarget::Revision(r) = plan.target {
        if st.last_applied != r {
            return Err(ApplyError::BaseMismatch(format!(
                "the deltas read end at r{}, not at the target r{r}",
                st.last_applied
            )));
        }
    }
    write_leases(&mut st)?;
    st.out.revision = st.last_applied;
    st.out.observed_at = st
        .last_observed_ms
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single());
    Ok(st.out)
}

/// Streams one delta object through the checks into `st`.
fn read_delta(
    store: &Store,
    handle: &tokio::runtime::Handle,
    m: &DeltaManifest,
    ids: Option<&Identities>,
    st: &mut State,
) -> Result<(), ApplyError> {
    let key = m
        .derived_data_key()
        .ok()
        .flatten()
        .expect("validated delta manifest");
    let corrupt = |reason: String| ApplyError::Corrupt {
        key: key.to_string(),
        first: m.first_revision,
        reason,
    };
    let reader = handle
        .block_on(store.get_stream(&key))
        .map_err(|source| ApplyError::Store {
            key: key.to_string(),
            store: store.describe(),
            source,
        })?;
    let input = tokio_util::io::SyncIoBridge::new_with_handle(reader, handle.clone());
    let mut counted = Counted {
        inner: input,
        sha: Sha256::new(),
        n: 0,
        limit: m.stored_bytes,
    };
    {
        let plain: Box<dyn Read + '_> = match &m.encryption {
            None => Box::new(BufReader::with_capacity(1 << 20, &mut counted)),
            Some(enc) => {
                let recipients = enc.recipients.join(", ");
                let Some(ids) = ids else {
                    return Err(ApplyError::Identity {
                        key: key.to_string(),
                        recipients,
                        reason: "pass the identity file of one of them with --identity".into(),
                    });
                };
                let armored = crypto::dearmor(BufReader::with_capacity(1 << 20, &mut counted));
                match ids.decrypt(armored) {
                    Ok(r) => Box::new(r),
                    Err(age::DecryptError::NoMatchingKeys) => {
                        return Err(ApplyError::Identity {
                            key: key.to_string(),
                            recipients,
                            reason: "none of the --identity files can decrypt it".into(),
                        })
                    }
                    Err(e) => return Err(corrupt(format!("age: {e}"))),
                }
            }
        };
        let mut dec =
            zstd::stream::read::Decoder::new(plain).map_err(|e| corrupt(format!("zstd: {e}")))?;
        dec.window_log_max(ZSTD_WINDOW_LOG_MAX)
            .map_err(|e| corrupt(format!("zstd: {e}")))?;
        let mut bounded = Bounded {
            inner: dec,
            n: 0,
            limit: m.raw_bytes,
        };
        let delta_err = |e: DeltaError| corrupt(e.to_string());
        let mut rd =
            DeltaReader::new(BufReader::with_capacity(1 << 20, &mut bounded)).map_err(delta_err)?;
        let h = rd.header().clone();
        if !m.matches_header(&h) {
            return Err(corrupt(format!(
                "its header {h:?} does not match its manifest (cluster, base, base revision, seq, first revision)"
            )));
        }
        let mut end = None;
        for rec in &mut rd {
            let rec = rec.map_err(delta_err)?;
            if let Record::End {
                events,
                revisions,
                last_revision,
                ..
            } = rec
            {
                end = Some((events, revisions, last_revision));
            } else {
                st.take(rec)?;
            }
        }
        let end = end.ok_or_else(|| corrupt("no END record".into()))?;
        if end != (m.events, m.revisions, m.last_revision) {
            return Err(corrupt(format!(
                "END says {} events, {} revisions, last r{}; the manifest {}, {}, r{}",
                end.0, end.1, end.2, m.events, m.revisions, m.last_revision
            )));
        }
        let (raw_n, raw_sha) = (rd.position(), rd.sha256_so_far());
        if raw_n != m.raw_bytes || raw_sha != m.raw_sha256 {
            return Err(corrupt(format!(
                "the stream is {raw_n} bytes with sha256 {raw_sha}; the manifest says {} bytes, {}",
                m.raw_bytes, m.raw_sha256
            )));
        }
    }
    // The stored object to its end (age's last chunk is authenticated above; nothing may follow).
    io::copy(&mut counted, &mut io::sink()).map_err(|e| corrupt(e.to_string()))?;
    let sha = hex::encode(counted.sha.finalize());
    if counted.n != m.stored_bytes || sha != m.stored_sha256 {
        return Err(corrupt(format!(
            "the stored object is {} bytes with sha256 {sha}; the manifest says {} bytes, {}",
            counted.n, m.stored_bytes, m.stored_sha256
        )));
    }
    Ok(())
}

/// Each lease's state at revision `r`, for the leases recorded and those of the base
/// (`base_ids`): `Some(ttl)` granted, `None` gone, decided by its record seen at the highest
/// revision `<= r` (of records seen at the same revision, the later in the chain); a lease
/// list is a gone record for every one of these leases it does not name. Not by chain order
/// alone: the capture records a lease again at a lower revision when a put it replays shows
/// the lease in use before its first sighting (capture.rs, catch-up after a chain start),
/// possibly after a record of it gone. Base leases no record mentions are left out.
///
/// Time: linear in the records and the lists' lengths (each list is walked once, newest
/// first, and only the leases every newer list named are looked at again), so a store full of
/// lists cannot make a restore quadratic.
fn lease_states(recs: &[LeaseRec], r: i64, base_ids: &[i64]) -> BTreeMap<i64, Option<i64>> {
    // Per lease: (seen, position in the chain, state) of the newest record.
    let mut newest: HashMap<i64, (i64, usize, Option<i64>)> = HashMap::new();
    let mut see = |id: i64, seen: i64, pos: usize, state: Option<i64>| {
        let e = newest.entry(id).or_insert((seen, pos, state));
        if (seen, pos) >= (e.0, e.1) {
            *e = (seen, pos, state);
        }
    };
    let mut undecided: HashSet<i64> = base_ids.iter().copied().collect();
    let mut lists: Vec<(i64, usize, &[i64])> = Vec::new();
    for (pos, rec) in recs.iter().enumerate() {
        match rec {
            LeaseRec::Grant { id, ttl, seen } => {
                undecided.insert(*id);
                if *seen <= r {
                    see(*id, *seen, pos, Some(*ttl));
                }
            }
            LeaseRec::Gone { id, seen } => {
                undecided.insert(*id);
                if *seen <= r {
                    see(*id, *seen, pos, None);
                }
            }
            LeaseRec::List { seen, ids } if *seen <= r => lists.push((*seen, pos, ids)),
            LeaseRec::List { .. } => {}
        }
    }
    // For a lease, only the newest list that leaves it out can matter.
    lists.sort_unstable_by_key(|l| std::cmp::Reverse((l.0, l.1)));
    for (seen, pos, ids) in lists {
        if undecided.is_empty() {
            break;
        }
        let named: HashSet<i64> = ids
            .iter()
            .copied()
            .filter(|id| undecided.contains(id))
            .collect();
        for &id in undecided.iter().filter(|id| !named.contains(id)) {
            see(id, seen, pos, None);
        }
        undecided = named;
    }
    newest.into_iter().map(|(id, (_, _, s))| (id, s)).collect()
}

/// Bucket `lease` at the resolved revision (module doc).
fn write_leases(st: &mut State) -> Result<(), ApplyError> {
    let r = st.last_applied;
    let dbe = |source| ApplyError::Db {
        what: format!("reading bucket lease of {}", st.db.display()),
        source,
    };
    let db = Db::open(&st.db, st.db_len).map_err(dbe)?;
    let base: Vec<(Vec<u8>, Vec<u8>)> = db
        .root_bucket_entries(b"lease")
        .map_err(dbe)?
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect();
    drop(db);
    let base_ids: Vec<i64> = base
        .iter()
        .filter_map(|(k, _)| Some(i64::from_be_bytes(k.as_slice().try_into().ok()?)))
        .collect();
    let mut leases: BTreeMap<Vec<u8>, Vec<u8>> = base.iter().cloned().collect();
    let mut changed = false;
    for (id, state) in lease_states(&st.leases, r, &base_ids) {
        match state {
            Some(ttl) => {
                if let std::collections::btree_map::Entry::Vacant(e) =
                    leases.entry(lease_key(id).to_vec())
                {
                    e.insert(lease_value(id, ttl, 0));
                    changed = true;
                }
            }
            None => changed |= leases.remove(&lease_key(id)[..]).is_some(),
        }
    }
    // Safety net: every lease a live delta-put key refers to exists.
    let mut referenced: Vec<i64> = st.leased.values().copied().collect();
    referenced.sort_unstable();
    referenced.dedup();
    for id in referenced {
        if let std::collections::btree_map::Entry::Vacant(e) = leases.entry(lease_key(id).to_vec())
        {
            tracing::warn!(
                lease = format!("{id:016x}"),
                "a key live at r{r} refers to lease {id:016x}, never seen granted by the capture; restored with etcd's minimum TTL"
            );
            e.insert(lease_value(id, 0, 0));
            st.out.leases_unknown.push(id);
            changed = true;
        }
    }
    // Base values must be leases (a corrupt base is refused rather than copied on).
    for (k, v) in &base {
        decode_lease(v).map_err(|reason| ApplyError::Db {
            what: format!("bucket lease of {}", st.db.display()),
            source: SnapshotError::Corrupt {
                page: 0,
                reason: format!(
                    "lease {} has value {}: {reason}",
                    hex::encode(k),
                    hex::encode(v)
                ),
            },
        })?;
    }
    st.out.leases = leases.len();
    if changed {
        let mut edits = BTreeMap::new();
        edits.insert(
            b"lease".to_vec(),
            BucketEdit::Replace(leases.into_iter().collect()),
        );
        writer::apply(&st.db, st.db_len.take(), &edits).map_err(|source| ApplyError::Db {
            what: format!("writing bucket lease of {}", st.db.display()),
            source,
        })?;
        st.out.transactions += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_as_its_record_seen_highest_at_or_before_r() {
        use LeaseRec::{Gone, Grant};
        let recs = [
            // Seen by a poll at 50, gone at 70, then a replayed put at 20 shows it in use.
            Grant {
                id: 1,
                ttl: 600,
                seen: 50,
            },
            Gone { id: 1, seen: 70 },
            Grant {
                id: 1,
                ttl: 600,
                seen: 20,
            },
            // Granted at 30 only.
            Grant {
                id: 2,
                ttl: 60,
                seen: 30,
            },
            // Gone and granted again at the same revision: the later record wins.
            Gone { id: 3, seen: 40 },
            Grant {
                id: 3,
                ttl: 5,
                seen: 40,
            },
        ];
        let at = |r| lease_states(&recs, r, &[]).into_iter().collect::<Vec<_>>();
        assert_eq!(at(10), []);
        assert_eq!(at(20), [(1, Some(600))]);
        assert_eq!(at(35), [(1, Some(600)), (2, Some(60))]);
        assert_eq!(at(40), [(1, Some(600)), (2, Some(60)), (3, Some(5))]);
        assert_eq!(at(69), [(1, Some(600)), (2, Some(60)), (3, Some(5))]);
        assert_eq!(at(70), [(1, None), (2, Some(60)), (3, Some(5))]);
    }

    /// A lease list removes every lease it does not name, of the base or recorded, from its
    /// revision on; a later grant still wins.
    #[test]
    fn a_lease_list_is_a_gone_record_for_every_lease_it_leaves_out() {
        use LeaseRec::{Grant, List};
        let recs = [
            Grant {
                id: 5,
                ttl: 60,
                seen: 12,
            },
            // At 20: base lease 1 and lease 5 live, base lease 2 revoked before.
            List {
                seen: 20,
                ids: vec![1, 5],
            },
            // Lease 2's id granted again later (etcd reuses no ids, but a record wins anyway).
            Grant {
                id: 2,
                ttl: 30,
                seen: 40,
            },
            // At 50 only lease 2.
            List {
                seen: 50,
                ids: vec![2],
            },
        ];
        let base = [1, 2];
        let at = |r| {
            lease_states(&recs, r, &base)
                .into_iter()
                .collect::<Vec<_>>()
        };
        assert_eq!(at(15), [(5, Some(60))]);
        // Lease 1 is named: no state of its own, the base's entry stays.
        assert_eq!(at(20), [(2, None), (5, Some(60))]);
        assert_eq!(at(40), [(2, Some(30)), (5, Some(60))]);
        assert_eq!(at(50), [(1, None), (2, Some(30)), (5, None)]);
    }

    /// Hostile records (a list per record, as a tampered store could hold): resolved in one
    /// pass over the lists, not one pass per list over every lease (50 000 x 50 000 here).
    #[test]
    fn many_lease_lists_resolve_in_linear_time() {
        let n = 50_000i64;
        let mut recs = Vec::new();
        for i in 1..=n {
            recs.push(LeaseRec::Grant {
                id: i,
                ttl: 60,
                seen: i,
            });
            recs.push(LeaseRec::List {
                seen: n + i,
                ids: Vec::new(),
            });
        }
        // The newest list names lease 7: it is gone anyway, from the newest empty list.
        recs.push(LeaseRec::List {
            seen: 3 * n,
            ids: vec![7],
        });
        let states = lease_states(&recs, 3 * n, &[]);
        assert_eq!(states.len(), n as usize);
        assert!(states.values().all(|s| s.is_none()));
        let states = lease_states(&recs, n, &[]);
        assert!(states.values().all(|s| *s == Some(60)));
    }
}
