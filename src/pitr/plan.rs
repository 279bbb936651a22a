//! Restore planning (docs/design/pitr.md §5 "Restore plan"): over the chains of
//! [`super::chain`] (THE chain model, shared with `list`, `verify` and the capture), a target
//! revision (or time) picks the newest base whose chain covers it and the deltas to apply, or
//! is refused with the nearest covered revisions named.
//!
//! [`plan`] is pure over [`Chain`] values; [`plan_from_store`] reads them with
//! [`read_chain`], newest base first, until one covers the target.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::chain::{read_chain, Chain, ChainError};
use super::manifest::DeltaManifest;
use crate::store::{Manifest, Store};

/// Errors of planning a point-in-time restore.
#[derive(Debug, thiserror::Error)]
pub enum PitrPlanError {
    /// Listing or reading a chain failed.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// No chain covers the target; the message names the nearest covered revisions (or
    /// times) and how the chains around the target end.
    #[error("{0}")]
    NotCovered(String),
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
    /// The chain of the chosen base (its whole run; the deltas are in [`PitrPlan::deltas`]).
    pub chain: Chain,
    /// The deltas to read, in order: those with `first_revision <= R`, then those starting at
    /// `R + 1` that hold lease records (lease lists polled while etcd stayed at R are written
    /// to the next delta, and after the chain's last revision to idle deltas that start at
    /// `R + 1`; the apply stops at the first later REV). For a time: those whose first
    /// observed time is <= T.
    pub deltas: Vec<DeltaManifest>,
    /// What was asked.
    pub target: PitrTarget,
    /// The target revision; for a time target the upper bound until the apply resolves it
    /// (the last revision of the deltas read).
    pub revision: i64,
}

/// Whether `c` can serve `target`: revision R with `B_eff <= R <= L`; time T with the base
/// finished at or before T and T at or before the chain's `covered_until`.
fn covers(c: &Chain, target: PitrTarget) -> bool {
    match target {
        PitrTarget::Revision(r) => c.covers(r),
        PitrTarget::Time(t) => c.base_finished_at <= t && c.covered_until.is_some_and(|u| t <= u),
    }
}

/// Reads the chains of `bases` (newest first; [`read_chain`]) until one covers `target` (for
/// a time: until, after one that covers it, one that does not), and plans with them
/// ([`plan`]).
///
/// Errors: [`PitrPlanError::Chain`] when the store cannot be read;
/// [`PitrPlanError::NotCovered`] as [`plan`].
pub async fn plan_from_store(
    store: &Store,
    bases: &[Manifest],
    target: PitrTarget,
) -> Result<PitrPlan, PitrPlanError> {
    let mut chains = Vec::new();
    let mut hit = false;
    for b in bases {
        let c = read_chain(store, b).await?;
        let covering = covers(&c, target);
        if hit && !covering {
            break;
        }
        chains.push(c);
        hit |= covering;
        if hit && matches!(target, PitrTarget::Revision(_)) {
            break;
        }
    }
    plan(&chains, target)
}

fn name(c: &Chain) -> String {
    format!("base {}", c.base_id)
}

/// Picks, among `chains` (newest base first), the chain that serves `target`, and the deltas
/// needed. Revision R: the first (newest base) with `B_eff <= R <= L`. Time T: of the chains
/// whose base finished at or before T with T <= their `covered_until` (the base alone when T
/// is before the first delta's first observed time), the one with the oldest base: a chain
/// starts by catching up from its base's revision, and those revisions are stamped when
/// received, after the fact (a handover comes up to a backup's duration after the backup),
/// while the older chain observed the same revisions as they were committed.
///
/// Errors: [`PitrPlanError::NotCovered`] naming the nearest covered revisions (or times)
/// below and above the target, with their bases, and how the chain below ends
/// ([`Chain::end_text`]).
pub fn plan(chains: &[Chain], target: PitrTarget) -> Result<PitrPlan, PitrPlanError> {
    match target {
        PitrTarget::Revision(r) => {
            if let Some(c) = chains.iter().find(|c| c.covers(r)) {
                let deltas: Vec<DeltaManifest> = c
                    .deltas
                    .iter()
                    .filter(|d| {
                        d.first_revision <= r
                            || (d.first_revision == r.saturating_add(1) && d.lease_records > 0)
                    })
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
                            c.end_text()
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
            if let Some(c) = chains.iter().rfind(|c| covers(c, target)) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pitr::chain::assemble;
    use crate::pitr::manifest::{CloseReason, DeltaKind, FORMAT};

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

    /// Delta `seq` of `b` over `first..=last`, first observed `t` s after the base finished.
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
        let m = DeltaManifest {
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
        };
        m.validate().unwrap();
        m
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
        close.validate().unwrap();
        let e0 = delta(&b2, 302, 0, 303, 400, 10, None);
        let c1 = assemble(&b1, vec![d0.clone(), d1.clone(), close], vec![]);
        let c2 = assemble(&b2, vec![e0], vec![]);
        assert_eq!(c1.end_text(), "chain closed: compacted at r250");
        assert_eq!(c2.base_revision, 302);
        let chains = vec![c2, c1];
        let p = plan(&chains, PitrTarget::Revision(120)).unwrap();
        assert_eq!(
            (p.chain.base_id.as_str(), p.deltas.len(), p.revision),
            (b1.id.as_str(), 1, 120)
        );
        let p = plan(&chains, PitrTarget::Revision(151)).unwrap();
        assert_eq!(p.deltas, vec![d0.clone(), d1]);
        // The base's own revision: no delta.
        let p = plan(&chains, PitrTarget::Revision(100)).unwrap();
        assert_eq!(
            (p.chain.base_id.as_str(), p.deltas.len()),
            (b1.id.as_str(), 0)
        );
        let p = plan(&chains, PitrTarget::Revision(302)).unwrap();
        assert_eq!(
            (p.chain.base_id.as_str(), p.deltas.len()),
            (b2.id.as_str(), 0)
        );
        // The revision before a delta that holds lease records: that delta too (lease lists
        // polled at r150 are written to it, before r151).
        let mut chains_l = chains.clone();
        chains_l[1].deltas[1].lease_records = 1;
        let p = plan(&chains_l, PitrTarget::Revision(150)).unwrap();
        assert_eq!(p.deltas.len(), 2);
        assert_eq!(
            plan(&chains_l, PitrTarget::Revision(149))
                .unwrap()
                .deltas
                .len(),
            1
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
        let err = plan(&[], PitrTarget::Revision(5)).unwrap_err().to_string();
        assert!(err.contains("there is no backup to restore from"), "{err}");

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
        assert!(err.contains(&format!("(r200, base {})", b1.id)), "{err}");
        assert!(err.contains(&format!("(r302, base {})", b2.id)), "{err}");
    }

    /// A time both a handed-over chain and the chain of the newer base cover is served by the
    /// older chain, which saw the revisions after the newer base's revision as they came; the
    /// newer chain received them in its catch-up, stamped later than T.
    #[test]
    fn a_time_covered_twice_is_served_by_the_older_chain() {
        let b1 = base(
            "20261122T230000Z-r0000000000000100",
            100,
            "2026-11-22T23:00:00Z",
        );
        // The newer base finished 20 s after the first; its chain's catch-up (r301..r350) was
        // received 35 s after the first base, with time covered until +45 s.
        let b2 = base(
            "20261122T230020Z-r0000000000000300",
            300,
            "2026-11-22T23:00:20Z",
        );
        let d0 = delta(&b1, 100, 0, 101, 299, 10, None);
        let d1 = delta(&b1, 100, 1, 300, 360, 22, Some(&d0));
        let e0 = delta(&b2, 300, 0, 301, 400, 15, None);
        let c1 = assemble(&b1, vec![d0.clone(), d1.clone()], vec![]);
        let c2 = assemble(&b2, vec![e0], vec![]);
        let chains = vec![c2, c1];
        // +25 s: both cover it; the newer chain would give its base alone (r300).
        let t = b1.finished_at + chrono::Duration::seconds(25);
        let p = plan(&chains, PitrTarget::Time(t)).unwrap();
        assert_eq!(p.chain.base_id, b1.id);
        assert_eq!((p.deltas, p.revision), (vec![d0, d1], 360));
        // After the older chain's coverage (+32 s): the newer chain.
        let t = b1.finished_at + chrono::Duration::seconds(40);
        let p = plan(&chains, PitrTarget::Time(t)).unwrap();
        assert_eq!(p.chain.base_id, b2.id);
        // Revisions: still the newest base that covers them.
        let p = plan(&chains, PitrTarget::Revision(330)).unwrap();
        assert_eq!(p.chain.base_id, b2.id);
    }

    /// An idle cluster: after the last revision L the capture writes deltas that hold no
    /// revision (first_revision L + 1) but may hold lease lists. A restore to L reads the ones
    /// with lease records, as a restore to a time after them does.
    #[test]
    fn a_restore_to_the_last_revision_reads_the_idle_deltas_lease_records() {
        let b = base(
            "20261122T230000Z-r0000000000000100",
            100,
            "2026-11-22T23:00:00Z",
        );
        let d0 = delta(&b, 100, 0, 101, 110, 10, None);
        let mut idle1 = delta(&b, 100, 1, 111, 110, 20, Some(&d0));
        idle1.lease_records = 2;
        let idle2 = delta(&b, 100, 2, 111, 110, 30, Some(&idle1));
        let mut idle3 = delta(&b, 100, 3, 111, 110, 40, Some(&idle2));
        idle3.lease_records = 1;
        let c = assemble(
            &b,
            vec![d0.clone(), idle1.clone(), idle2, idle3.clone()],
            vec![],
        );
        assert_eq!(c.last_revision, 110);
        let p = plan(std::slice::from_ref(&c), PitrTarget::Revision(110)).unwrap();
        assert_eq!(p.deltas, vec![d0.clone(), idle1, idle3]);
        let p = plan(&[c], PitrTarget::Revision(109)).unwrap();
        assert_eq!(p.deltas, vec![d0]);
    }

    /// What `list` says is covered is what restore accepts: the planner sees the same run,
    /// cut by a gap, a missing data object or a broken link, and names its end.
    #[test]
    fn refusals_name_how_the_shared_chain_ends() {
        let b = base(
            "20261122T230000Z-r0000000000000100",
            100,
            "2026-11-22T23:00:00Z",
        );
        let d0 = delta(&b, 100, 0, 101, 110, 10, None);
        let d1 = delta(&b, 100, 1, 111, 120, 20, Some(&d0));
        let d2 = delta(&b, 100, 2, 121, 130, 30, Some(&d1));
        let refused = |c: Chain, r: i64| {
            assert!(!c.covers(r));
            plan(&[c], PitrTarget::Revision(r)).unwrap_err().to_string()
        };
        // Manifest of d1 missing.
        let c = assemble(&b, vec![d0.clone(), d2.clone()], vec![]);
        let err = refused(c, 125);
        assert!(
            err.contains(&format!("r110 (base {}, gap r111..r120)", b.id)),
            "{err}"
        );
        // Data of d1 missing.
        let data = d1.derived_data_key().unwrap().unwrap().to_string();
        let missing = crate::pitr::chain::Broken {
            key: data.clone(),
            reason: "data of delta r111..r120 is missing".into(),
        };
        let c = assemble(&b, vec![d0.clone(), d1.clone(), d2.clone()], vec![missing]);
        let err = refused(c, 125);
        assert!(
            err.contains(&format!(
                "r110 (base {}, broken: {data}: data of delta",
                b.id
            )),
            "{err}"
        );
        // d2 does not link to d1.
        let mut bad = d2.clone();
        bad.prev_stored_sha256 = Some("f".repeat(64));
        let c = assemble(&b, vec![d0, d1, bad], vec![]);
        let err = refused(c, 125);
        assert!(
            err.contains("r120 (") && err.contains("hash link broken"),
            "{err}"
        );
    }
}
