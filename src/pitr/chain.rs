//! A base's delta chain as the store holds it (docs/design/pitr.md §5): THE chain model of
//! etcd-lifeboat. [`read_chain`] lists it (contiguity, gaps, close markers, broken objects,
//! missing data) for `list`, for the capture's resume point and for restore's plan
//! ([`super::plan`] chooses base and deltas over these [`Chain`] values, so what `list` says
//! is covered is exactly what `restore --to-revision` accepts); [`verify_chain`] also checks
//! every delta object, for `verify`.
//!
//! Contiguity: the chain of base `B` starts at `B_eff + 1` with seq 0 and each delta is the
//! manifest at the previous one's `(last_revision + 1, seq + 1)`, hash-linked to it
//! ([`assemble`] has the rules). `B_eff` is the `base_revision` of the chain's deltas;
//! before the first delta it is [`manifest_base_revision`]: the base manifest's
//! `current_revision`, computed from the db at backup time (the daemon holds no copy of the
//! base db; it may be encrypted for recipients only). It differs from the manifest's
//! `revision` when the base's compaction removed a final tombstone (design §2 pitfall #2).
//! Backups written before `current_revision` existed have only `revision`; a chain on such a
//! base starts at `revision + 1`, and `verify` with the base db compares it with the db's
//! `B_eff`.
//!
//! Every manifest read is untrusted: [`super::manifest::parse_delta_manifest`] bounds and
//! validates it; a manifest of another base or cluster, or one that does not parse, is
//! reported as broken and never used.

use std::io::Read;

use futures::{StreamExt, TryStreamExt};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::store::manifest::Manifest;
use crate::store::{Store, StoreError};

use super::delta::{DeltaReader, Record};
use super::manifest::{
    chain_prefix, parse_delta_manifest, parse_delta_manifest_name, DeltaKind, DeltaManifest,
    DELTA_MANIFEST_SUFFIX, MAX_DELTA_MANIFEST_BYTES, PITR_DIR_SUFFIX,
};

/// Reading a chain failed.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// Listing or reading the store failed.
    #[error("chain of backup {base}: store: {source}")]
    Store {
        /// The base id.
        base: String,
        /// The store's error.
        #[source]
        source: StoreError,
    },
}

/// A range of revisions no stored delta covers, between two parts of a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gap {
    /// First revision missing.
    pub from: i64,
    /// Last revision missing (inclusive).
    pub to: i64,
}

/// How a chain ended (its close manifest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Closed {
    /// `compacted`, `gap`, `outage` or `base-handover`.
    pub reason: String,
    /// The revision the chain stopped before (the close manifest's first revision).
    pub at_revision: i64,
    /// For `compacted`: the compaction revision the watch hit.
    pub compact_revision: Option<i64>,
    /// The base that continues, when known.
    pub next_base_id: Option<String>,
}

/// A problem of one object of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Broken {
    /// The object key.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

/// The chain of one base, as listed from the store: THE chain model of `list`, `verify`, the
/// capture's resume point and restore's plan ([`super::plan`]).
///
/// Revisions: `first_revision ..= last_revision` is the run of linked deltas from
/// `base_revision + 1` (empty when `last_revision == base_revision`); what follows a gap, a
/// broken link or a missing data object is not part of it. A point-in-time restore can reach
/// exactly the revisions `base_revision ..= last_revision` ([`Chain::covers`]).
#[derive(Debug, Clone, Serialize)]
pub struct Chain {
    /// The base backup's id.
    pub base_id: String,
    /// When the base backup finished (its manifest's `finished_at`).
    pub base_finished_at: DateTime<Utc>,
    /// `B_eff`: the deltas' `base_revision`, else [`manifest_base_revision`].
    pub base_revision: i64,
    /// `base_revision + 1`.
    pub first_revision: i64,
    /// Last revision of the run (`base_revision` when it is empty).
    pub last_revision: i64,
    /// Observed time of the run's first revision.
    pub first_time: Option<DateTime<Utc>>,
    /// Newest time the run covers (every change committed before it is in the run).
    pub covered_until: Option<DateTime<Utc>>,
    /// Delta manifests of the run, in order (close excluded).
    #[serde(skip)]
    pub deltas: Vec<DeltaManifest>,
    /// Number of deltas in the run.
    pub delta_count: usize,
    /// Stored bytes of the run's data objects.
    pub stored_bytes: u64,
    /// Revisions no stored delta covers, after the run (the first starts at `last_revision +
    /// 1` when the run ends for want of its next manifest).
    pub gaps: Vec<Gap>,
    /// The close manifest right after the run, when there is one.
    pub closed: Option<Closed>,
    /// Objects that do not parse, do not belong here or do not link, data objects missing.
    pub broken: Vec<Broken>,
}

impl Chain {
    /// The run's last delta (where the capture continues), `None` before the first.
    pub fn tail(&self) -> Option<&DeltaManifest> {
        self.deltas.last()
    }

    /// Whether the chain can be continued as is: no gap, nothing broken, not closed.
    pub fn is_open_and_sound(&self) -> bool {
        self.closed.is_none() && self.gaps.is_empty() && self.broken.is_empty()
    }

    /// Whether revision `r` can be restored from this chain: `base_revision <= r <=
    /// last_revision`.
    pub fn covers(&self, r: i64) -> bool {
        self.base_revision <= r && r <= self.last_revision
    }

    /// How the run ends, for messages: `chain closed: compacted at r<C>, next base Y`,
    /// `broken: <key>: <reason>` (the next manifest or its data), `gap r<a>..r<b>`, or
    /// `chain open`.
    pub fn end_text(&self) -> String {
        if let Some(c) = &self.closed {
            let mut s = format!("chain closed: {}", c.reason);
            if let Some(r) = c.compact_revision {
                s += &format!(" at r{r}");
            }
            if let Some(n) = &c.next_base_id {
                s += &format!(", next base {n}");
            }
            return s;
        }
        // A problem right at the run's end (the next manifest or its data, whose names start
        // with the next revision) says best why the run stops there.
        let at_end = format!("/{:016}-", self.last_revision.saturating_add(1));
        let broken = |b: &Broken| format!("broken: {}: {}", b.key, b.reason);
        if let Some(b) = self.broken.iter().find(|b| b.key.contains(&at_end)) {
            return broken(b);
        }
        match (self.gaps.first(), self.broken.first()) {
            (Some(g), _) if g.from == self.last_revision + 1 => {
                format!("gap r{}..r{}", g.from, g.to)
            }
            (_, Some(b)) => broken(b),
            (Some(g), None) => format!("gap r{}..r{}", g.from, g.to),
            (None, None) => "chain open".into(),
        }
    }

    /// One line for `list`: `pitr r<a>..r<b> <first_time>..<covered_until>, N deltas, S bytes`
    /// plus gaps, close and broken objects; `None` when the base has no chain.
    pub fn summary(&self) -> Option<String> {
        if self.deltas.is_empty()
            && self.closed.is_none()
            && self.broken.is_empty()
            && self.gaps.is_empty()
        {
            return None;
        }
        let t = |x: Option<DateTime<Utc>>| {
            x.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_else(|| "-".into())
        };
        let mut s = format!(
            "pitr r{}..r{} {}..{}, {} deltas, {} bytes",
            self.first_revision,
            self.last_revision,
            t(self.first_time),
            t(self.covered_until),
            self.delta_count,
            self.stored_bytes
        );
        for g in &self.gaps {
            s += &format!("; gap r{}..r{}", g.from, g.to);
        }
        if let Some(c) = &self.closed {
            s += &format!("; closed: {}", c.reason);
            if let Some(r) = c.compact_revision {
                s += &format!(" at r{r}");
            }
            if let Some(n) = &c.next_base_id {
                s += &format!(", next base {n}");
            }
        }
        for b in &self.broken {
            s += &format!("; broken: {}: {}", b.key, b.reason);
        }
        Some(s)
    }
}

/// `B_eff` as the daemon knows it from a base manifest alone: its `current_revision` (the
/// db's, computed at backup time), else, for backups written before that field existed, its
/// `revision` (the last key's main revision); at least 1 — etcd's store starts at revision 1
/// with no key (mvcc `NewStore`: `currentRev: 1`), so a snapshot of an empty keyspace has
/// revision 0 in its status but the first write is revision 2.
pub fn manifest_base_revision(base: &Manifest) -> i64 {
    base.current_revision.unwrap_or(base.revision).max(1)
}

/// Manifests read at once by [`read_chain`].
const READ_CONCURRENCY: usize = 8;

/// Lists and checks the chain of `base`: every `<first:016>-<seq:016>.delta` manifest under
/// `<cluster>/<base-id>.pitr/` (at most [`MAX_DELTA_MANIFEST_BYTES`] each, read 8 at a time,
/// parsed and validated by [`parse_delta_manifest`]), each delta's data object present with
/// the manifest's size, then [`assemble`]. Reads manifests only (and the listing), never data.
///
/// Errors: [`ChainError::Store`] when the listing or a manifest read fails (a manifest that
/// is missing between listing and reading is skipped).
pub async fn read_chain(store: &Store, base: &Manifest) -> Result<Chain, ChainError> {
    let err = |source| ChainError::Store {
        base: base.id.clone(),
        source,
    };
    let prefix = chain_prefix(&base.cluster_id, &base.id).map_err(err)?;
    let objects = store.list(&prefix).await.map_err(err)?;
    let sizes: std::collections::HashMap<&str, u64> =
        objects.iter().map(|o| (o.key.as_str(), o.size)).collect();
    let mut broken = Vec::new();
    let mut names = Vec::new();
    for o in &objects {
        if !o.key.as_str().ends_with(DELTA_MANIFEST_SUFFIX) {
            continue;
        }
        if parse_delta_manifest_name(&o.key).is_none() {
            broken.push(Broken {
                key: o.key.to_string(),
                reason: "not a <first:016>-<seq:016>.delta manifest name".into(),
            });
        } else if o.size > MAX_DELTA_MANIFEST_BYTES {
            broken.push(Broken {
                key: o.key.to_string(),
                reason: format!(
                    "{} bytes, larger than the {MAX_DELTA_MANIFEST_BYTES} a delta manifest may have; not read",
                    o.size
                ),
            });
        } else {
            names.push(o.key.clone());
        }
    }
    let read: Vec<Option<Result<DeltaManifest, Broken>>> = futures::stream::iter(names)
        .map(|key| async move {
            let bytes = match store
                .get_bytes_limited(&key, MAX_DELTA_MANIFEST_BYTES)
                .await
            {
                Ok(b) => b,
                Err(e) if e.is_not_found() => return Ok(None),
                Err(StoreError::TooLarge { .. }) => {
                    return Ok(Some(Err(Broken {
                        key: key.to_string(),
                        reason: format!("larger than {MAX_DELTA_MANIFEST_BYTES} bytes"),
                    })))
                }
                Err(e) => return Err(e),
            };
            Ok(Some(parse_delta_manifest(&key, &bytes).map_err(|e| {
                Broken {
                    key: key.to_string(),
                    reason: e.to_string(),
                }
            })))
        })
        .buffer_unordered(READ_CONCURRENCY)
        .try_collect()
        .await
        .map_err(err)?;
    let mut manifests = Vec::new();
    for r in read.into_iter().flatten() {
        match r {
            Ok(m) => manifests.push(m),
            Err(b) => broken.push(b),
        }
    }
    for m in &manifests {
        if let Ok(Some(k)) = m.derived_data_key() {
            match sizes.get(k.as_str()) {
                None => broken.push(Broken {
                    key: k.to_string(),
                    reason: format!(
                        "data of delta r{}..r{} is missing",
                        m.first_revision, m.last_revision
                    ),
                }),
                Some(&n) if n != m.stored_bytes => broken.push(Broken {
                    key: k.to_string(),
                    reason: format!("{n} bytes stored, the manifest says {}", m.stored_bytes),
                }),
                Some(_) => {}
            }
        }
    }
    broken.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(assemble(base, manifests, broken))
}

/// Builds the [`Chain`] of `base` from its parsed delta manifests (any order) and the problems
/// already found (`broken`: unreadable manifests, and data objects missing or of the wrong
/// size, by data key). Pure. The rules (design §5):
///
/// - A manifest of another cluster or base is broken and not used.
/// - `B_eff` is the `base_revision` of the seq-0 manifest (lowest first revision), else of the
///   lowest manifest, among those with `base_revision >= ` [`manifest_base_revision`]; else
///   that value.
/// - The run walks from `(first B_eff + 1, seq 0)`; each next link is exactly the manifest at
///   `(prev.last_revision + 1, prev.seq + 1)` (so an empty idle delta and its successor share
///   a first revision) with the same `base_revision` and `prev_stored_sha256 ==
///   prev.stored_sha256` (`None` for seq 0). A link with another `base_revision` or a wrong
///   hash is broken and ends the run; a close manifest ends it ([`Chain::closed`]); a delta
///   whose data object is listed in `broken` ends it before that delta.
/// - Manifests off that walk are reported: a missing range before one is a [`Gap`]; one that
///   overlaps revisions already passed, has another `base_revision`, or does not continue the
///   seq of the manifest before it is broken.
pub fn assemble(base: &Manifest, manifests: Vec<DeltaManifest>, mut broken: Vec<Broken>) -> Chain {
    let key_of = |m: &DeltaManifest| {
        m.key()
            .map(|k| k.to_string())
            .unwrap_or_else(|_| format!("<delta r{} seq {}>", m.first_revision, m.seq))
    };
    let mut ms = Vec::with_capacity(manifests.len());
    for m in manifests {
        if m.cluster_id == base.cluster_id && m.base_id == base.id {
            ms.push(m);
        } else {
            broken.push(Broken {
                key: key_of(&m),
                reason: format!("belongs to base {} of cluster {}", m.base_id, m.cluster_id),
            });
        }
    }
    ms.sort_by_key(|m| (m.first_revision, m.seq));
    let floor = manifest_base_revision(base);
    let b = ms
        .iter()
        .filter(|m| m.base_revision >= floor)
        .min_by_key(|m| (m.seq != 0, m.first_revision, m.seq))
        .map_or(floor, |m| m.base_revision);
    let other_base = |m: &DeltaManifest| {
        format!(
            "base_revision r{} differs from the chain's r{b} (base {} has revision r{})",
            m.base_revision, base.id, base.revision
        )
    };
    let bad_data: std::collections::HashSet<String> =
        broken.iter().map(|x| x.key.clone()).collect();

    // The walk along exact successors.
    let mut walked = vec![false; ms.len()];
    let mut run: Vec<usize> = Vec::new();
    let mut closed = None;
    let mut want = (b.saturating_add(1), 0u64);
    let mut prev_sha: Option<&str> = None;
    // Where the walk stopped: the next revision and seq after the last manifest it visited.
    let mut next = want;
    loop {
        let i = ms.partition_point(|m| (m.first_revision, m.seq) < want);
        let Some(m) = ms.get(i).filter(|m| (m.first_revision, m.seq) == want) else {
            break;
        };
        walked[i] = true;
        next = (m.last_revision.saturating_add(1), m.seq.saturating_add(1));
        let problem = if m.base_revision != b {
            Some(other_base(m))
        } else if m.prev_stored_sha256.as_deref() != prev_sha {
            Some(
                "prev_stored_sha256 does not match the previous delta (hash link broken)"
                    .to_string(),
            )
        } else {
            None
        };
        if let Some(reason) = problem {
            broken.push(Broken {
                key: key_of(m),
                reason,
            });
            break;
        }
        if m.kind == DeltaKind::Close {
            closed = Some(Closed {
                reason: serde_json::to_value(m.reason)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                at_revision: m.first_revision,
                compact_revision: m.compact_revision,
                next_base_id: m.next_base_id.clone(),
            });
            break;
        }
        let data_ok = match m.derived_data_key() {
            Ok(Some(k)) => !bad_data.contains(k.as_str()),
            _ => true,
        };
        if !data_ok {
            break;
        }
        run.push(i);
        prev_sha = Some(&m.stored_sha256);
        want = next;
    }

    // What lies off the walk.
    let mut gaps = Vec::new();
    // After a gap the seq is not checked (the manifests between are missing).
    let (mut next_rev, mut next_seq) = next;
    for (i, m) in ms.iter().enumerate() {
        if walked[i] {
            continue;
        }
        let reason = if m.base_revision != b {
            Some(other_base(m))
        } else if m.first_revision < next_rev {
            Some(format!(
                "r{}..r{} overlaps revisions before r{next_rev} already stored (not written by the chain's single writer)",
                m.first_revision, m.last_revision
            ))
        } else if m.first_revision == next_rev && m.seq != next_seq {
            Some(format!(
                "seq {} at r{next_rev}, but the chain's next seq there is {next_seq}",
                m.seq
            ))
        } else {
            None
        };
        if let Some(reason) = reason {
            broken.push(Broken {
                key: key_of(m),
                reason,
            });
            continue;
        }
        if m.first_revision > next_rev {
            gaps.push(Gap {
                from: next_rev,
                to: m.first_revision - 1,
            });
        }
        next_rev = m.last_revision.saturating_add(1);
        next_seq = m.seq.saturating_add(1);
    }

    let deltas: Vec<DeltaManifest> = {
        let mut keep = vec![false; ms.len()];
        for &i in &run {
            keep[i] = true;
        }
        ms.into_iter()
            .zip(keep)
            .filter_map(|(m, k)| k.then_some(m))
            .collect()
    };
    let last_revision = deltas.last().map_or(b, |m| m.last_revision);
    Chain {
        base_id: base.id.clone(),
        base_finished_at: base.finished_at,
        base_revision: b,
        first_revision: b.saturating_add(1),
        last_revision,
        first_time: deltas.iter().find_map(|m| m.first_time),
        covered_until: deltas.iter().filter_map(|m| m.covered_until).max(),
        delta_count: deltas.len(),
        stored_bytes: deltas.iter().map(|m| m.stored_bytes).sum(),
        deltas,
        gaps,
        closed,
        broken,
    }
}

/// The chains of those `bases` that have objects under `<cluster>/<id>.pitr/` (one store
/// listing, then [`read_chain`] for each), in the order of `bases`; for `list`.
///
/// Errors: [`ChainError::Store`].
pub async fn chains(store: &Store, bases: &[Manifest]) -> Result<Vec<Chain>, ChainError> {
    let all = store.list("").await.map_err(|source| ChainError::Store {
        base: "*".into(),
        source,
    })?;
    let dir = format!("{PITR_DIR_SUFFIX}/");
    let with_chain: std::collections::HashSet<&str> = all
        .iter()
        .filter_map(|o| {
            o.key
                .as_str()
                .split_once(dir.as_str())
                .map(|(stem, _)| stem)
        })
        .collect();
    let mut out = Vec::new();
    for b in bases {
        if with_chain.contains(format!("{}/{}", b.cluster_id, b.id).as_str()) {
            out.push(read_chain(store, b).await?);
        }
    }
    Ok(out)
}

/// Adds `"pitr": <chain>` to the entries of `list -o json` (an array of objects with `id`)
/// whose base has a chain.
pub fn annotate_list_json(list: &mut serde_json::Value, chains: &[Chain]) {
    let Some(items) = list.as_array_mut() else {
        return;
    };
    for item in items {
        let id = item.get("id").and_then(|v| v.as_str()).unwrap_or_default();
        if let Some(c) = chains.iter().find(|c| c.base_id == id) {
            if let Some(o) = item.as_object_mut() {
                o.insert("pitr".into(), serde_json::to_value(c).unwrap_or_default());
            }
        }
    }
}

/// What [`verify_chain`] found for one delta.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeltaCheck {
    /// First revision of the delta.
    pub first_revision: i64,
    /// Last revision of the delta.
    pub last_revision: i64,
    /// Its data object key.
    pub key: String,
    /// `None`: verified; else what is wrong.
    pub error: Option<String>,
    /// Whether the plaintext was checked (false: encrypted and no identity given; only the
    /// stored size and sha256 were).
    pub content_checked: bool,
}

/// What [`verify_chain`] found: the chain as listed, and each delta of its run checked.
#[derive(Debug, Clone, Serialize)]
pub struct ChainVerification {
    /// The listing (gaps, close, broken objects).
    pub chain: Chain,
    /// One entry per delta of the run, in order.
    pub deltas: Vec<DeltaCheck>,
}

impl ChainVerification {
    /// Whether everything checked is sound: every delta verified, no gap, nothing broken. A
    /// closed chain is not an error.
    pub fn ok(&self) -> bool {
        self.chain.gaps.is_empty()
            && self.chain.broken.is_empty()
            && self.deltas.iter().all(|d| d.error.is_none())
    }

    /// Problems, one line each (`[]` when [`ChainVerification::ok`]).
    pub fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .chain
            .gaps
            .iter()
            .map(|g| format!("gap r{}..r{} (delta manifests missing)", g.from, g.to))
            .collect();
        out.extend(
            self.chain
                .broken
                .iter()
                .map(|b| format!("{}: {}", b.key, b.reason)),
        );
        out.extend(self.deltas.iter().filter_map(|d| {
            d.error.as_ref().map(|e| {
                format!(
                    "delta r{}..r{} ({}): {e}",
                    d.first_revision, d.last_revision, d.key
                )
            })
        }));
        out
    }
}

/// Verifies the chain of `base` ([`read_chain`]) and every delta of its run: the stored
/// object's size and sha256 against the manifest; unless it is encrypted and `identities` is
/// `None`: age decryption, zstd decoding bounded by `raw_bytes` (window <= 8 MiB), the full
/// [`super::delta::DeltaReader`] parse (every format check), the header against the manifest
/// (cluster, base, `B_eff`, seq, first revision), END counts and last revision, raw size and
/// sha256. Contiguity (`first == prev.last + 1` from `B_eff + 1`) and the hash links are the
/// listing's. Streams each object (memory: one record and the zstd window).
///
/// Errors: [`ChainError::Store`] when the listing fails; a delta that cannot be read is a
/// [`DeltaCheck::error`].
pub async fn verify_chain(
    store: &Store,
    base: &Manifest,
    identities: Option<std::sync::Arc<crate::crypto::Identities>>,
) -> Result<ChainVerification, ChainError> {
    let chain = read_chain(store, base).await?;
    let mut deltas = Vec::new();
    for m in &chain.deltas {
        let key = match m.derived_data_key() {
            Ok(Some(k)) => k,
            _ => continue,
        };
        let content = m.encryption.is_none() || identities.is_some();
        let error = match store.get_stream(&key).await {
            Err(e) => Some(format!("cannot read it: {e}")),
            Ok(reader) => {
                let (m2, ids) = (m.clone(), identities.clone());
                tokio::task::spawn_blocking(move || {
                    check_delta(
                        tokio_util::io::SyncIoBridge::new(reader),
                        &m2,
                        ids.as_deref(),
                    )
                })
                .await
                .unwrap_or_else(|e| Err(format!("check thread: {e}")))
                .err()
            }
        };
        deltas.push(DeltaCheck {
            first_revision: m.first_revision,
            last_revision: m.last_revision,
            key: key.to_string(),
            error,
            content_checked: content,
        });
    }
    Ok(ChainVerification { chain, deltas })
}

/// Counts and hashes what is read through it.
struct Hashing<R> {
    inner: R,
    sha: Sha256,
    n: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.sha.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }
}

/// The checks of [`verify_chain`] on one stored object (blocking).
fn check_delta(
    input: impl Read,
    m: &DeltaManifest,
    identities: Option<&crate::crypto::Identities>,
) -> Result<(), String> {
    let mut stored = Hashing {
        inner: input.take(m.stored_bytes.saturating_add(1)),
        sha: Sha256::new(),
        n: 0,
    };
    let content = m.encryption.is_none() || identities.is_some();
    if content {
        let plain: Box<dyn Read + '_> = match (&m.encryption, identities) {
            (Some(_), Some(ids)) => Box::new(
                ids.decrypt(&mut stored)
                    .map_err(|e| format!("age decryption: {e}"))?,
            ),
            _ => Box::new(&mut stored),
        };
        let mut dec = zstd::stream::read::Decoder::new(plain).map_err(|e| format!("zstd: {e}"))?;
        dec.window_log_max(23).map_err(|e| format!("zstd: {e}"))?;
        let mut raw = Hashing {
            inner: dec.take(m.raw_bytes.saturating_add(1)),
            sha: Sha256::new(),
            n: 0,
        };
        check_stream(&mut raw, m)?;
        // The rest of the zstd frame (its checksum) and nothing after it.
        std::io::copy(&mut raw, &mut std::io::sink()).map_err(|e| format!("zstd: {e}"))?;
        if raw.n != m.raw_bytes || hex::encode(raw.sha.finalize()) != m.raw_sha256 {
            return Err(format!(
                "plaintext is {} bytes with another sha256 than the manifest's ({} bytes)",
                raw.n, m.raw_bytes
            ));
        }
    }
    std::io::copy(&mut stored, &mut std::io::sink()).map_err(|e| format!("reading: {e}"))?;
    if stored.n != m.stored_bytes || hex::encode(stored.sha.finalize()) != m.stored_sha256 {
        return Err(format!(
            "stored object is {} bytes with another sha256 than the manifest's ({} bytes)",
            stored.n, m.stored_bytes
        ));
    }
    Ok(())
}

/// Parses the plaintext stream in full and compares it with the manifest.
fn check_stream(raw: impl Read, m: &DeltaManifest) -> Result<(), String> {
    let mut r = DeltaReader::new(raw).map_err(|e| e.to_string())?;
    let h = r.header().clone();
    if !m.matches_header(&h) {
        return Err(format!("stream header {h:?} does not match the manifest"));
    }
    let mut lease_records = 0u64;
    for rec in &mut r {
        match rec.map_err(|e| e.to_string())? {
            Record::LeaseGrant { .. } | Record::LeaseGone { .. } | Record::LeaseList { .. } => {
                lease_records += 1
            }
            Record::End {
                events,
                revisions,
                last_revision,
                ..
            } => {
                if (events, revisions, last_revision, lease_records)
                    != (m.events, m.revisions, m.last_revision, m.lease_records)
                {
                    return Err(format!(
                        "stream holds {events} events, {revisions} revisions, {lease_records} lease records up to r{last_revision}; the manifest says {}, {}, {} up to r{}",
                        m.events, m.revisions, m.lease_records, m.last_revision
                    ));
                }
                return Ok(());
            }
            _ => {}
        }
    }
    Err("stream ends without END".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pitr::manifest::CloseReason;

    const CLUSTER: &str = "cdf818194e3a8c32";
    const BASE: &str = "20261122T230000Z-r0000000000000100";

    fn base() -> Manifest {
        let mut m: Manifest = serde_json::from_value(serde_json::json!({
            "id": BASE, "cluster_id": CLUSTER, "member_id": "1",
            "member_name": "m", "endpoint": "e", "etcd_version": "3.5.1",
            "started_at": "2026-11-22T23:00:00Z", "finished_at": "2026-11-22T23:00:01Z",
            "revision": 100, "hash": 0, "total_key": 0, "total_size": 0, "raw_sha256": "",
            "stored_bytes": 0, "stored_sha256": "", "compression": "zstd",
            "compression_level": 3, "tool_version": "t",
            "data_key": format!("{CLUSTER}/x.db.zst")
        }))
        .unwrap();
        m.data_key = m.derived_data_key().unwrap();
        m
    }

    /// Delta `seq` over `first..=last` (empty when last = first - 1), linked to `prev`.
    fn delta(seq: u64, first: i64, last: i64, prev: Option<&DeltaManifest>) -> DeltaManifest {
        let revs = (last - first + 1) as u64;
        let t = |s: i64| {
            DateTime::parse_from_rfc3339("2026-11-22T23:00:00Z")
                .unwrap()
                .with_timezone(&Utc)
                + chrono::Duration::seconds(s)
        };
        let m = DeltaManifest {
            kind: DeltaKind::Delta,
            format: crate::pitr::manifest::FORMAT,
            cluster_id: CLUSTER.into(),
            base_id: BASE.into(),
            base_revision: 100,
            seq,
            first_revision: first,
            last_revision: last,
            events: revs,
            revisions: revs,
            lease_records: 0,
            first_time: (revs > 0).then(|| t(first)),
            last_time: (revs > 0).then(|| t(last)),
            covered_until: Some(t(last + 1)),
            raw_bytes: 10,
            raw_sha256: "a".repeat(64),
            stored_bytes: 5,
            stored_sha256: format!("{seq:064x}"),
            prev_stored_sha256: prev.map(|p| p.stored_sha256.clone()),
            nonce: "0123456789abcdef".into(),
            compression: "zstd".into(),
            compression_level: 3,
            encryption: None,
            member_id: "8e9e05c52164694d".into(),
            endpoint: "http://127.0.0.1:2379".into(),
            etcd_version: "3.5.1".into(),
            tool_version: "0.1.0".into(),
            written_at: t(last + 2),
            reason: None,
            compact_revision: None,
            next_base_id: None,
        };
        m.validate().unwrap();
        m
    }

    /// The seq-0 delta `m` with `base_revision` `b` (it then starts at `b + 1`).
    fn rebased(mut m: DeltaManifest, b: i64) -> DeltaManifest {
        m.base_revision = b;
        m.first_revision = b + 1;
        m.revisions = (m.last_revision - b) as u64;
        m.events = m.revisions;
        m.validate().unwrap();
        m
    }

    fn close(seq: u64, first: i64, prev: &DeltaManifest) -> DeltaManifest {
        let mut m = delta(seq, first, first - 1, Some(prev));
        m.kind = DeltaKind::Close;
        m.events = 0;
        m.raw_bytes = 0;
        m.stored_bytes = 0;
        m.raw_sha256.clear();
        m.stored_sha256.clear();
        m.covered_until = None;
        m.reason = Some(CloseReason::Compacted);
        m.compact_revision = Some(400);
        m.validate().unwrap();
        m
    }

    #[test]
    fn contiguous_chain_with_an_empty_delta_and_a_close() {
        let d0 = delta(0, 101, 150, None);
        let d1 = delta(1, 151, 150, Some(&d0)); // idle: empty
        let d2 = delta(2, 151, 170, Some(&d1));
        let c = close(3, 171, &d2);
        // Any listing order.
        let ch = assemble(&base(), vec![c, d2.clone(), d0, d1], vec![]);
        assert_eq!((ch.first_revision, ch.last_revision), (101, 170));
        assert_eq!(ch.delta_count, 3);
        assert_eq!(ch.tail().unwrap(), &d2);
        assert!(ch.gaps.is_empty() && ch.broken.is_empty());
        let closed = ch.closed.clone().unwrap();
        assert_eq!(closed.reason, "compacted");
        assert_eq!(
            (closed.at_revision, closed.compact_revision),
            (171, Some(400))
        );
        assert!(!ch.is_open_and_sound());
        let s = ch.summary().unwrap();
        assert!(
            s.starts_with(
                "pitr r101..r170 2026-11-22T23:01:41Z..2026-11-22T23:02:51Z, 3 deltas, 15 bytes"
            ),
            "{s}"
        );
        assert!(s.ends_with("; closed: compacted at r400"), "{s}");
    }

    #[test]
    fn a_missing_delta_is_a_gap_and_ends_the_run() {
        let d0 = delta(0, 101, 150, None);
        let d1 = delta(1, 151, 160, Some(&d0));
        let d2 = delta(2, 161, 170, Some(&d1));
        let ch = assemble(&base(), vec![d0.clone(), d2], vec![]);
        assert_eq!(ch.last_revision, 150);
        assert_eq!(ch.tail().unwrap(), &d0);
        assert_eq!(ch.gaps, vec![Gap { from: 151, to: 160 }]);
        assert!(ch.summary().unwrap().contains("; gap r151..r160"));
        assert!(!ch.is_open_and_sound());
    }

    #[test]
    fn missing_first_delta_missing_data_and_broken_link_end_the_run() {
        let d0 = delta(0, 101, 150, None);
        let d1 = delta(1, 151, 160, Some(&d0));
        // Chain starting above B_eff + 1: nothing usable.
        let ch = assemble(&base(), vec![d1.clone()], vec![]);
        assert_eq!((ch.last_revision, ch.delta_count), (100, 0));
        assert_eq!(ch.gaps, vec![Gap { from: 101, to: 150 }]);
        // Data of d1 missing: the run ends at d0.
        let key = d1.derived_data_key().unwrap().unwrap().to_string();
        let broken = vec![Broken {
            key,
            reason: "missing".into(),
        }];
        let ch = assemble(&base(), vec![d0.clone(), d1.clone()], broken);
        assert_eq!(ch.last_revision, 150);
        // A delta whose hash link does not name its predecessor.
        let mut bad = d1.clone();
        bad.prev_stored_sha256 = Some("f".repeat(64));
        let ch = assemble(&base(), vec![d0, bad], vec![]);
        assert_eq!(ch.last_revision, 150);
        assert!(ch.broken[0].reason.contains("hash link"), "{:?}", ch.broken);
        // No chain at all.
        let ch = assemble(&base(), vec![], vec![]);
        assert_eq!((ch.base_revision, ch.last_revision), (100, 100));
        assert!(ch.summary().is_none() && ch.is_open_and_sound());
    }

    #[test]
    fn the_walk_follows_exact_successors_and_links() {
        let d0 = delta(0, 101, 110, None);
        let d1 = delta(1, 111, 110, Some(&d0)); // empty idle delta
        let d2 = delta(2, 111, 130, Some(&d1)); // same first revision as d1
        let d3 = delta(3, 131, 140, Some(&d2));
        let d4 = delta(4, 141, 150, Some(&d3));
        let all = vec![d4.clone(), d2.clone(), d0.clone(), d1.clone()];
        let ch = assemble(&base(), all.clone(), vec![]);
        assert_eq!(
            (ch.base_revision, ch.last_revision, ch.delta_count),
            (100, 130, 3)
        );
        assert_eq!(ch.deltas, vec![d0.clone(), d1.clone(), d2.clone()]);
        assert_eq!(ch.gaps, vec![Gap { from: 131, to: 140 }]);
        assert!(ch.broken.is_empty(), "{:?}", ch.broken);
        assert_eq!(ch.end_text(), "gap r131..r140");
        assert!(ch.covers(100) && ch.covers(130) && !ch.covers(131) && !ch.covers(99));
        // With d3 back: one run to r150, open.
        let mut full = all;
        full.push(d3);
        let ch = assemble(&base(), full, vec![]);
        assert_eq!((ch.last_revision, ch.delta_count), (150, 5));
        assert!(ch.is_open_and_sound());
        assert_eq!(ch.end_text(), "chain open");

        // Without seq 0 nothing is covered beyond the base, and list shows the gap.
        let ch = assemble(&base(), vec![d2.clone()], vec![]);
        assert_eq!((ch.last_revision, ch.delta_count), (100, 0));
        assert_eq!(ch.gaps, vec![Gap { from: 101, to: 110 }]);
        assert!(ch.summary().unwrap().contains("; gap r101..r110"));

        // A successor at the right first revision but with another seq does not continue
        // the chain, and is reported (a capture must not resume over it).
        let other_seq = delta(7, 111, 130, Some(&d0));
        let ch = assemble(&base(), vec![d0.clone(), other_seq], vec![]);
        assert_eq!(ch.last_revision, 110);
        assert!(
            ch.broken[0].reason.contains("seq 7 at r111"),
            "{:?}",
            ch.broken
        );
        assert!(!ch.is_open_and_sound());
        assert!(ch.end_text().starts_with("broken: "), "{}", ch.end_text());
    }

    #[test]
    fn foreign_and_inconsistent_manifests_are_rejected() {
        let d0 = delta(0, 101, 150, None);
        let d1 = delta(1, 151, 160, Some(&d0));
        // Another base or cluster: not used, reported.
        for (cluster, base_id) in [
            ("0123456789abcdef", BASE),
            (CLUSTER, "20261122T233000Z-r0000000000000100"),
        ] {
            let mut f = d1.clone();
            f.cluster_id = cluster.into();
            f.base_id = base_id.into();
            let ch = assemble(&base(), vec![d0.clone(), f], vec![]);
            assert_eq!(ch.last_revision, 150);
            assert!(
                ch.broken[0].reason.contains("belongs to base"),
                "{:?}",
                ch.broken
            );
            assert!(!ch.is_open_and_sound());
        }
        // The next link records another base_revision: broken, ends the run.
        let mut other = d1.clone();
        other.base_revision = 99;
        let ch = assemble(&base(), vec![d0.clone(), other], vec![]);
        assert_eq!(ch.last_revision, 150);
        assert!(
            ch.broken[0].reason.contains("base_revision r99"),
            "{:?}",
            ch.broken
        );
        // A seq-0 delta below the base manifest's revision is not the chain's start.
        let low = rebased(delta(0, 101, 150, None), 90);
        let ch = assemble(&base(), vec![low], vec![]);
        assert_eq!((ch.base_revision, ch.last_revision), (100, 100));
        assert!(
            ch.broken[0].reason.contains("base_revision r90"),
            "{:?}",
            ch.broken
        );
        // A chain whose B_eff is above the base manifest's revision (compacted tombstone).
        let h0 = rebased(delta(0, 101, 150, None), 102);
        let ch = assemble(&base(), vec![h0], vec![]);
        assert_eq!(
            (ch.base_revision, ch.first_revision, ch.last_revision),
            (102, 103, 150)
        );
        assert!(ch.is_open_and_sound() && !ch.covers(101) && ch.covers(102));
        // A manifest overlapping the run (a second writer): reported, the run stays.
        let over = delta(5, 140, 155, Some(&d0));
        let ch = assemble(&base(), vec![d0.clone(), d1.clone(), over], vec![]);
        assert_eq!(ch.last_revision, 160);
        assert!(ch.broken[0].reason.contains("overlaps"), "{:?}", ch.broken);
        // A close whose hash link is wrong does not close the chain: it is broken.
        let mut c = close(2, 161, &d1);
        c.prev_stored_sha256 = Some("e".repeat(64));
        let ch = assemble(&base(), vec![d0, d1, c], vec![]);
        assert_eq!((ch.last_revision, ch.closed.is_none()), (160, true));
        assert!(ch.broken[0].reason.contains("hash link"), "{:?}", ch.broken);
    }
}
