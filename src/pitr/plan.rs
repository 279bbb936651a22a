//! Restore planning over delta manifests (docs/design/pitr.md §5 "Restore plan"): a base's
//! chain is the contiguous run of its deltas from `B_eff + 1`; a target revision (or time)
//! picks the newest base whose chain covers it, or is refused with the nearest covered
//! revisions named.
//!
//! [`build_chain`] is pure over manifests; [`load_chain`] reads them from the store (bounded,
//! each checked by [`parse_delta_manifest`]).

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use super::manifest::{
    chain_prefix, parse_delta_manifest, parse_delta_manifest_name, CloseReason, DeltaKind,
    DeltaManifest, MAX_DELTA_MANIFEST_BYTES,
};
use crate::store::{Manifest, ObjectKey, Store, StoreError};

/// How a chain's contiguous run ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum ChainEnd {
    /// Still growing (no close manifest after the last delta).
    Open,
    /// A close manifest ends it.
    Closed {
        /// Why.
        reason: CloseReason,
        /// The compaction revision that broke the watch (`compacted`).
        #[serde(skip_serializing_if = "Option::is_none")]
        compact_revision: Option<i64>,
        /// The base that continues.
        #[serde(skip_serializing_if = "Option::is_none")]
        next_base_id: Option<String>,
    },
    /// Manifests exist beyond the run, but the next link is missing: a gap of revisions
    /// (`from..=to`, as far as the next manifest tells).
    Gap {
        /// First missing revision.
        from: i64,
        /// Revision before the next stored delta.
        to: i64,
    },
    /// The next link exists but is not trusted (unreadable manifest, broken hash link,
    /// another base revision).
    Broken {
        /// The manifest's key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// A base backup and the contiguous run of its delta chain.
#[derive(Clone, Debug, Serialize)]
pub struct Chain {
    /// Base backup id.
    pub base_id: String,
    /// When the base backup finished.
    pub base_finished_at: DateTime<Utc>,
    /// `B_eff` as the deltas record it (the base manifest's revision when there is none).
    pub base_revision: i64,
    /// The contiguous deltas from `base_revision + 1`, in order (no close manifest).
    pub deltas: Vec<DeltaManifest>,
    /// Last covered revision `L` (`base_revision` when no delta).
    pub last_revision: i64,
    /// Newest time the run covers: its last delta's `covered_until` (or last observed time).
    pub covered_until: Option<DateTime<Utc>>,
    /// How the run ends.
    pub end: ChainEnd,
}

impl Chain {
    /// Whether revision `r` can be restored from this chain.
    pub fn covers(&self, r: i64) -> bool {
        self.base_revision <= r && r <= self.last_revision
    }

    /// Stored bytes of the run's delta objects.
    pub fn stored_bytes(&self) -> u64 {
        self.deltas.iter().map(|d| d.stored_bytes).sum()
    }
}

/// One entry of a chain listing: the manifest found at a key, or why it is not trusted.
pub type Listed = (ObjectKey, (i64, u64), Result<DeltaManifest, String>);

/// Builds `base`'s chain from the manifests found under its prefix (any order; keys that are
/// not delta manifests already dropped). Walks from `(B + 1, seq 0)`, where B is the
/// `base_revision` the manifests record (it must be >= the base manifest's revision): each
/// next link must be the manifest at `(prev.last + 1, prev.seq + 1)`, with the same
/// `base_revision` and `prev_stored_sha256 == prev.stored_sha256`. Pure.
pub fn build_chain(base: &Manifest, mut found: Vec<Listed>) -> Chain {
    found.sort_by_key(|(_, pos, _)| *pos);
    // B: what the first trusted manifest records (all must agree).
    let b = found
        .iter()
        .filter_map(|(_, _, m)| m.as_ref().ok())
        .map(|m| m.base_revision)
        .next()
        .filter(|&b| b >= base.revision)
        .unwrap_or(base.revision);
    let mut chain = Chain {
        base_id: base.id.clone(),
        base_finished_at: base.finished_at,
        base_revision: b,
        deltas: Vec::new(),
        last_revision: b,
        covered_until: None,
        end: ChainEnd::Open,
    };
    let mut want = (b.saturating_add(1), 0u64);
    let mut prev_sha: Option<String> = None;
    loop {
        let Some((key, _, m)) = found.iter().find(|(_, pos, _)| *pos == want) else {
            // Anything later than the run's end is a gap.
            if let Some((_, (first, _), _)) = found.iter().find(|(_, pos, _)| *pos > want) {
                chain.end = ChainEnd::Gap {
                    from: want.0,
                    to: (*first - 1).max(want.0),
                };
            }
            break;
        };
        let m = match m {
            Ok(m) => m,
            Err(reason) => {
                chain.end = ChainEnd::Broken {
                    key: key.to_string(),
                    reason: reason.clone(),
                };
                break;
            }
        };
        let broken = if m.base_id != base.id || m.cluster_id != base.cluster_id {
            Some("it names another base or cluster".to_string())
        } else if m.base_revision != b {
            Some(format!(
                "base_revision r{} differs from the chain's r{b}",
                m.base_revision
            ))
        } else if m.prev_stored_sha256 != prev_sha {
            Some("its prev_stored_sha256 is not the previous delta's stored_sha256 (broken hash link)".to_string())
        } else {
            None
        };
        if let Some(reason) = broken {
            chain.end = ChainEnd::Broken {
                key: key.to_string(),
                reason,
            };
            break;
        }
        if m.kind == DeltaKind::Close {
            chain.end = ChainEnd::Closed {
                reason: m.reason.unwrap_or(CloseReason::Gap),
                compact_revision: m.compact_revision,
                next_base_id: m.next_base_id.clone(),
            };
            break;
        }
        chain.last_revision = m.last_revision;
        chain.covered_until = m.covered_until.or(m.last_time).or(chain.covered_until);
        prev_sha = Some(m.stored_sha256.clone());
        want = (m.last_revision.saturating_add(1), m.seq.saturating_add(1));
        chain.deltas.push(m.clone());
    }
    chain
}

/// Errors of loading chains and planning a point-in-time restore.
#[derive(Debug, thiserror::Error)]
pub enum PitrPlanError {
    /// Listing or reading the store failed.
    #[error("reading the delta chain of backup {base_id}: {source}")]
    Store {
        /// The base.
        base_id: String,
        /// The cause.
        source: StoreError,
    },
    /// No chain covers the target.
    #[error("{0}")]
    NotCovered(String),
}

/// Reads every delta manifest of `base`'s chain from `store` (one listing of its prefix,
/// manifests read with a 1 MiB bound, 8 at a time) and builds the chain. A manifest that is
/// too large, not JSON or fails validation ends the chain where it would be used
/// ([`ChainEnd::Broken`]).
///
/// Errors: [`PitrPlanError::Store`] for listing/reading failures other than a manifest
/// deleted meanwhile.
pub async fn load_chain(store: &Store, base: &Manifest) -> Result<Chain, PitrPlanError> {
    let err = |source| PitrPlanError::Store {
        base_id: base.id.clone(),
        source,
    };
    let prefix = chain_prefix(&base.cluster_id, &base.id).map_err(err)?;
    let keys: Vec<(ObjectKey, (i64, u64), u64)> = store
        .list(&prefix)
        .await
        .map_err(err)?
        .into_iter()
        .filter_map(|o| parse_delta_manifest_name(&o.key).map(|pos| (o.key, pos, o.size)))
        .collect();
    let found: Vec<Option<Listed>> = futures::stream::iter(keys)
        .map(|(key, pos, size)| async move {
            if size > MAX_DELTA_MANIFEST_BYTES {
                let r = format!("{size} bytes, more than the {MAX_DELTA_MANIFEST_BYTES} a delta manifest may have; not read");
                return Ok(Some((key, pos, Err(r))));
            }
            match store.get_bytes_limited(&key, MAX_DELTA_MANIFEST_BYTES).await {
                Ok(b) => {
                    let m = parse_delta_manifest(&key, &b).map_err(|e| e.to_string());
                    Ok(Some((key, pos, m)))
                }
                Err(StoreError::TooLarge { .. }) => Ok(Some((
                    key,
                    pos,
                    Err("larger than a delta manifest may be; not read".into()),
                ))),
                Err(StoreError::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .buffer_unordered(8)
        .try_collect()
        .await
        .map_err(err)?;
    Ok(build_chain(base, found.into_iter().flatten().collect()))
}

/// What a point-in-time restore aims at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PitrTarget {
    /// Exactly this revision.
    Revision(i64),
    /// The last revision observed at or before this time.
    Time(DateTime<Utc>),
}

/// A chosen base and the deltas to apply.
#[derive(Clone, Debug, Serialize)]
pub struct PitrPlan {
    /// The chain of the chosen base (all its contiguous deltas).
    pub chain: Chain,
    /// The deltas to read: those with `first_revision <= R` (for a time: whose first observed
    /// time is <= T), in order.
    pub deltas: Vec<DeltaManifest>,
    /// What was asked.
    pub target: PitrTarget,
    /// The target revision; for a time target the upper bound until the apply resolves it
    /// (the last revision of the deltas read).
    pub revision: i64,
}

fn name(c: &Chain) -> String {
    format!("base {}", c.base_id)
}

/// Picks, among `chains` (newest base first), the first whose run covers `target`, and the
/// deltas needed. Revision R: `B <= R <= L`. Time T: the base finished at or before T and
/// T <= the chain's `covered_until` (T at or after the base with no delta yet: the base
/// itself when covered).
///
/// Errors: [`PitrPlanError::NotCovered`] naming the nearest covered revisions (or times)
/// below and above the target, with their bases, and how the chains around it end.
pub fn plan(chains: &[Chain], target: PitrTarget) -> Result<PitrPlan, PitrPlanError> {
    match target {
        PitrTarget::Revision(r) => {
            if let Some(c) = chains.iter().find(|c| c.covers(r)) {
                let deltas: Vec<DeltaManifest> = c
                    .deltas
                    .iter()
                    .filter(|d| d.first_revision <= r)
                    .cloned()
                    .collect();
                return Ok(PitrPlan {
                    chain: c.clone(),
                    deltas,
                    target,
                    revision: r,
                });
            }
            let below = chains
                .iter()
                .filter(|c| c.last_revision < r)
                .max_by_key(|c| c.last_revision);
            let above = chains
                .iter()
                .filter(|c| c.base_revision > r)
                .min_by_key(|c| c.base_revision);
            let mut msg = format!("revision {r} is not covered by any delta chain in the store");
            match (below, above) {
                (None, None) => msg.push_str("; there is no backup to restore from"),
                _ => {
                    msg.push_str("; nearest covered revisions:");
                    if let Some(c) = below {
                        msg.push_str(&format!(
                            " r{} ({}, {})",
                            c.last_revision,
                            name(c),
                            end_text(c)
                        ));
                    }
                    if let (Some(_), Some(_)) = (below, above) {
                        msg.push_str(" and");
                    }
                    if let Some(c) = above {
                        msg.push_str(&format!(" r{} ({})", c.base_revision, name(c)));
                    }
                }
            }
            msg.push_str("; restore one of those revisions with --to-revision");
            Err(PitrPlanError::NotCovered(msg))
        }
        PitrTarget::Time(t) => {
            let covers = |c: &Chain| {
                c.base_finished_at <= t && c.covered_until.map(|u| t <= u).unwrap_or(false)
            };
            if let Some(c) = chains.iter().find(|c| covers(c)) {
                // Deltas whose first revision was observed at or before T: a prefix of the
                // run (empty idle deltas included; the apply stops at the first later REV).
                let n = c
                    .deltas
                    .iter()
                    .take_while(|d| d.first_time.is_none_or(|f| f <= t))
                    .count();
                let deltas = c.deltas[..n].to_vec();
                let revision = deltas
                    .last()
                    .map(|d| d.last_revision)
                    .unwrap_or(c.base_revision);
                return Ok(PitrPlan {
                    chain: c.clone(),
                    deltas,
                    target,
                    revision,
                });
            }
            let below = chains
                .iter()
                .filter_map(|c| c.covered_until.filter(|u| *u < t).map(|u| (c, u)))
                .max_by_key(|(_, u)| *u);
            let above = chains
                .iter()
                .filter(|c| c.base_finished_at > t)
                .min_by_key(|c| c.base_finished_at);
            let mut msg = format!(
                "time {} is not covered by any delta chain in the store",
                t.to_rfc3339()
            );
            if below.is_some() || above.is_some() {
                msg.push_str("; nearest covered times:");
            }
            if let Some((c, u)) = below {
                msg.push_str(&format!(
                    " {} (r{}, {})",
                    u.to_rfc3339(),
                    c.last_revision,
                    name(c)
                ));
            }
            if let Some(c) = above {
                msg.push_str(&format!(
                    " {} (r{}, {})",
                    c.base_finished_at.to_rfc3339(),
                    c.base_revision,
                    name(c)
                ));
            }
            Err(PitrPlanError::NotCovered(msg))
        }
    }
}

/// How a chain's run ends, for messages.
pub fn end_text(c: &Chain) -> String {
    match &c.end {
        ChainEnd::Open => "chain open".into(),
        ChainEnd::Closed {
            reason,
            compact_revision,
            next_base_id,
        } => {
            let mut s = format!(
                "chain closed: {}",
                serde_json::to_value(reason)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default()
            );
            if let Some(cr) = compact_revision {
                s.push_str(&format!(" at r{cr}"));
            }
            if let Some(n) = next_base_id {
                s.push_str(&format!(", next base {n}"));
            }
            s
        }
        ChainEnd::Gap { from, to } => format!("gap r{from}..r{to}"),
        ChainEnd::Broken { key, reason } => format!("broken at {key}: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pitr::manifest::FORMAT;

    fn base(id: &str, rev: i64, finished: &str) -> Manifest {
        serde_json::from_value(serde_json::json!({
            "id": id, "cluster_id": "cdf818194e3a8c32", "member_id": "8e9e05c52164694d",
            "member_name": "m", "endpoint": "http://127.0.0.1:2379", "etcd_version": "3.5.1",
            "started_at": finished, "finished_at": finished, "revision": rev, "hash": 1,
            "total_key": 1, "total_size": 1, "raw_sha256": "a".repeat(64), "stored_bytes": 1,
            "stored_sha256": "b".repeat(64), "compression": "zstd", "compression_level": 3,
            "tool_version": "0", "data_key": format!("cdf818194e3a8c32/{id}.db.zst"),
        }))
        .unwrap()
    }

    fn delta(
        b: &Manifest,
        beff: i64,
        seq: u64,
        first: i64,
        last: i64,
        t: i64,
        prev: Option<&DeltaManifest>,
    ) -> DeltaManifest {
        let time = |s: i64| Some(b.finished_at + chrono::Duration::seconds(s));
        let revs = (last - first + 1) as u64;
        DeltaManifest {
            kind: DeltaKind::Delta,
            format: FORMAT,
            cluster_id: b.cluster_id.clone(),
            base_id: b.id.clone(),
            base_revision: beff,
            seq,
            first_revision: first,
            last_revision: last,
            events: revs,
            revisions: revs,
            lease_records: 0,
            first_time: if revs > 0 { time(t) } else { None },
            last_time: if revs > 0 { time(t + 5) } else { None },
            covered_until: time(t + 10),
            raw_bytes: 100,
            raw_sha256: "c".repeat(64),
            stored_bytes: 50,
            stored_sha256: format!("{seq:064x}"),
            prev_stored_sha256: prev.map(|p| p.stored_sha256.clone()),
            nonce: "0123456789abcdef".into(),
            compression: "zstd".into(),
            compression_level: 3,
            encryption: None,
            member_id: "8e9e05c52164694d".into(),
            endpoint: "x".into(),
            etcd_version: "3.5.1".into(),
            tool_version: "0".into(),
            written_at: b.finished_at,
            reason: None,
            compact_revision: None,
            next_base_id: None,
        }
    }

    fn listed(ms: &[DeltaManifest]) -> Vec<Listed> {
        ms.iter()
            .map(|m| {
                m.validate().unwrap();
                (m.key().unwrap(), (m.first_revision, m.seq), Ok(m.clone()))
            })
            .collect()
    }

    #[test]
    fn chains_follow_links_and_stop_at_gaps() {
        let b = base(
            "20261122T230000Z-r0000000000000100",
            100,
            "2026-11-22T23:00:00Z",
        );
        let d0 = delta(&b, 100, 0, 101, 110, 10, None);
        let d1 = delta(&b, 100, 1, 111, 110, 20, Some(&d0)); // empty idle delta
        let d2 = delta(&b, 100, 2, 111, 130, 30, Some(&d1));
        let d4 = delta(&b, 100, 4, 141, 150, 50, Some(&d2));
        let mut found = listed(&[d2.clone(), d0.clone(), d4, d1.clone()]);
        let c = build_chain(&b, found.clone());
        assert_eq!(
            (c.base_revision, c.last_revision, c.deltas.len()),
            (100, 130, 3)
        );
        assert_eq!(c.end, ChainEnd::Gap { from: 131, to: 140 });
        assert!(c.covers(100) && c.covers(130) && !c.covers(131) && !c.covers(99));

        // A broken hash link ends the run before it.
        let mut bad = d2.clone();
        bad.prev_stored_sha256 = Some("f".repeat(64));
        found.retain(|(_, pos, _)| *pos != (111, 2));
        found.extend(listed(&[bad]));
        let c = build_chain(&b, found);
        assert_eq!(c.last_revision, 110);
        assert!(
            matches!(c.end, ChainEnd::Broken { ref reason, .. } if reason.contains("hash link"))
        );

        // Without seq 0 nothing is covered beyond the base.
        let c = build_chain(&b, listed(&[d2]));
        assert_eq!((c.last_revision, c.deltas.len()), (100, 0));
    }

    #[test]
    fn plan_picks_the_covering_chain_or_names_the_nearest() {
        let b1 = base(
            "20261122T230000Z-r0000000000000100",
            100,
            "2026-11-22T23:00:00Z",
        );
        let b2 = base(
            "20261122T233000Z-r0000000000000300",
            300,
            "2026-11-22T23:30:00Z",
        );
        let d0 = delta(&b1, 100, 0, 101, 150, 10, None);
        let d1 = delta(&b1, 100, 1, 151, 200, 30, Some(&d0));
        let mut close = delta(&b1, 100, 2, 201, 200, 40, Some(&d1));
        close.kind = DeltaKind::Close;
        close.raw_bytes = 0;
        close.stored_bytes = 0;
        close.events = 0;
        close.reason = Some(CloseReason::Compacted);
        close.compact_revision = Some(250);
        let e0 = delta(&b2, 302, 0, 303, 400, 10, None);
        let c1 = build_chain(&b1, listed(&[d0.clone(), d1.clone(), close]));
        let c2 = build_chain(&b2, listed(&[e0]));
        assert!(matches!(
            c1.end,
            ChainEnd::Closed {
                compact_revision: Some(250),
                ..
            }
        ));
        assert_eq!(c2.base_revision, 302);
        let chains = vec![c2, c1];
        let p = plan(&chains, PitrTarget::Revision(120)).unwrap();
        assert_eq!(
            (p.chain.base_id.as_str(), p.deltas.len(), p.revision),
            (b1.id.as_str(), 1, 120)
        );
        let p = plan(&chains, PitrTarget::Revision(151)).unwrap();
        assert_eq!(p.deltas, vec![d0.clone(), d1]);
        let p = plan(&chains, PitrTarget::Revision(302)).unwrap();
        assert_eq!(
            (p.chain.base_id.as_str(), p.deltas.len()),
            (b2.id.as_str(), 0)
        );
        let err = plan(&chains, PitrTarget::Revision(250))
            .unwrap_err()
            .to_string();
        assert!(err.contains("revision 250 is not covered"), "{err}");
        assert!(err.contains(&format!("r200 (base {}", b1.id)), "{err}");
        assert!(err.contains("compacted at r250"), "{err}");
        assert!(err.contains(&format!("r302 (base {})", b2.id)), "{err}");
        let err = plan(&chains, PitrTarget::Revision(401))
            .unwrap_err()
            .to_string();
        assert!(err.contains("r400") && !err.contains(" and "), "{err}");

        // Time: between d0's first observed time and d1's: d0 only.
        let t = b1.finished_at + chrono::Duration::seconds(20);
        let p = plan(&chains, PitrTarget::Time(t)).unwrap();
        assert_eq!((p.deltas, p.revision), (vec![d0], 150));
        // Before the first delta: the base only.
        let t = b1.finished_at + chrono::Duration::seconds(5);
        let p = plan(&chains, PitrTarget::Time(t)).unwrap();
        assert_eq!((p.deltas.len(), p.revision), (0, 100));
        // After the first chain's coverage, before the second base: refused.
        let t = b1.finished_at + chrono::Duration::seconds(60);
        let err = plan(&chains, PitrTarget::Time(t)).unwrap_err().to_string();
        assert!(err.contains("nearest covered times"), "{err}");
    }
}
