//! Point-in-time restore (issue 16), end to end on a real etcd: a backup taken with the CLI,
//! then a workload (new keys, overwrites, deletes, a txn of 3 puts + 1 delete, `delete
//! --prefix` of 50 keys, a lease with keys, a lease revoke, an IgnoreLease put, a 200 KiB value)
//! whose watch events (from base revision + 1, as the daemon's capture watches) are written
//! by this test with the crate's own `DeltaWriter` into a delta chain in the store (zstd, one
//! chain age-encrypted). `restore --from-store latest --to-revision R` at three targets (just
//! after the base, the middle, the last revision): a member booted on the restored dir gives
//! `hashkv --rev R` (hash and compact revision) equal to the source's and a byte-identical
//! range read at R and at earlier revisions, its revision is R, and its leases are those
//! alive at R. Also: every key-bucket value of the real base snapshot re-encodes to the same
//! bytes; `--dry-run` prints the base, the deltas and the target (text and JSON); an uncovered
//! revision is refused naming the nearest covered one; a damaged delta is refused; a missing
//! data object ends the covered range for `list` and restore alike (named as broken); a
//! missing manifest ends it (named as a gap). On etcd 3.5.1 (also `--to-time`,
//! `--bump-revision --mark-compacted` and a 3-member `--out-dir` cluster), 3.5.30 and 3.4
//! (chain and base age-encrypted).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::common::*;
use bytes::Bytes;
use etcd_client::{Client, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use etcd_lifeboat::pitr::delta::{
    base_revision, bytes_to_rev, decode_lease, lease_value, tombstone_value, DeltaHeader,
    DeltaWriter, KvRef,
};
use etcd_lifeboat::pitr::manifest::{DeltaKind, DeltaManifest, FORMAT};
use etcd_lifeboat::snapshot::Db;
use etcd_lifeboat::store::manifest::{EncryptionInfo, AGE_FORMAT};
use etcd_lifeboat::store::{Manifest, Store};
use sha2::{Digest, Sha256};

/// One watch event, as the capture records it.
#[derive(Clone, Debug)]
enum Ev {
    Put {
        key: Vec<u8>,
        create: i64,
        rev: i64,
        version: i64,
        value: Vec<u8>,
        lease: i64,
    },
    Del {
        key: Vec<u8>,
        rev: i64,
    },
}

impl Ev {
    fn rev(&self) -> i64 {
        match self {
            Ev::Put { rev, .. } | Ev::Del { rev, .. } => *rev,
        }
    }
}

fn rev_of(h: Option<&etcd_client::ResponseHeader>) -> i64 {
    h.expect("header").revision()
}

/// The workload after the base; returns the revision after each step and the leases
/// (granted id, revision of its first put) and (revoked id, revoke revision).
struct Workload {
    after_txn: i64,
    last: i64,
    granted: (i64, i64, i64),
    revoked: (i64, i64),
}

async fn workload(c: &mut Client, revoke: i64) -> Workload {
    for i in 0..10 {
        c.put(format!("/new/{i}"), format!("v{i}"), None)
            .await
            .unwrap();
    }
    c.put("/base/00000001", "over1", None).await.unwrap();
    c.put("/base/00000001", "over2", None).await.unwrap();
    c.delete("/base/00000002", None).await.unwrap();
    // A delete of nothing makes no revision.
    c.delete("/nothing/here", None).await.unwrap();
    let t = Txn::new().and_then(vec![
        TxnOp::put("/tx/a", "1", None),
        TxnOp::put("/tx/b", "2", None),
        TxnOp::delete("/base/00000003", None),
        TxnOp::put("/tx/c", "3", None),
    ]);
    let after_txn = rev_of(c.txn(t).await.unwrap().header());
    for i in 0..50 {
        c.put(format!("/pfx/{i:02}"), "p", None).await.unwrap();
    }
    c.delete(
        "/pfx/",
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await
    .unwrap();
    let lease = c.lease_grant(300, None).await.unwrap().id();
    let first_put = rev_of(
        c.put("/lease/x", "lx", Some(PutOptions::new().with_lease(lease)))
            .await
            .unwrap()
            .header(),
    );
    c.put("/lease/y", "ly", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    let revoked_at = rev_of(c.lease_revoke(revoke).await.unwrap().header());
    // Keeps its lease (granted before the base): IgnoreLease.
    c.put(
        "/base/leased",
        "kept",
        Some(PutOptions::new().with_ignore_lease()),
    )
    .await
    .unwrap();
    let big: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).collect();
    let last = rev_of(c.put("/big", big, None).await.unwrap().header());
    Workload {
        after_txn,
        last,
        granted: (lease, 300, first_put),
        revoked: (revoke, revoked_at),
    }
}

/// Every event from `from` through `to`, in (revision, sub) order, from a watch.
async fn watch_events(c: &mut Client, from: i64, to: i64) -> Vec<Ev> {
    let mut stream = c
        .watch(
            "",
            Some(
                WatchOptions::new()
                    .with_all_keys()
                    .with_start_revision(from),
            ),
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    while out.last().map(Ev::rev).unwrap_or(0) < to {
        let resp = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
            .await
            .expect("watch answers")
            .unwrap()
            .expect("watch open");
        assert!(!resp.canceled(), "watch canceled: {resp:?}");
        for e in resp.events() {
            let kv = e.kv().unwrap();
            out.push(match e.event_type() {
                EventType::Put => Ev::Put {
                    key: kv.key().to_vec(),
                    create: kv.create_revision(),
                    rev: kv.mod_revision(),
                    version: kv.version(),
                    value: kv.value().to_vec(),
                    lease: kv.lease(),
                },
                EventType::Delete => Ev::Del {
                    key: kv.key().to_vec(),
                    rev: kv.mod_revision(),
                },
            });
        }
    }
    out
}

/// The chain of one base in the store: deltas cut at `cuts` (last revisions), plus an empty
/// delta after the first; zstd level 3, age when `recipients`. Returns the manifests.
#[allow(clippy::too_many_arguments)]
async fn store_chain(
    store: &Store,
    base: &Manifest,
    b_eff: i64,
    events: &[Ev],
    cuts: &[i64],
    w: &Workload,
    recipients: Option<&(etcd_lifeboat::crypto::Recipients, String)>,
) -> Vec<DeltaManifest> {
    let mut out: Vec<DeltaManifest> = Vec::new();
    let mut first = b_eff + 1;
    let mut ranges: Vec<(i64, i64)> = Vec::new();
    for (i, &cut) in cuts.iter().enumerate() {
        ranges.push((first, cut));
        if i == 0 {
            ranges.push((cut + 1, cut)); // an empty (idle) delta
        }
        first = cut + 1;
    }
    for (seq, (first, last)) in ranges.into_iter().enumerate() {
        let header = DeltaHeader {
            cluster_id: base.cluster_id.clone(),
            base_id: base.id.clone(),
            base_revision: b_eff,
            seq: seq as u64,
            first_revision: first,
        };
        let mut dw = DeltaWriter::new(Vec::new(), header).unwrap();
        let t0 = base.finished_at.timestamp_millis();
        for r in first..=last {
            dw.begin_revision(r, t0 + (r - b_eff) * 10).unwrap();
            for e in events.iter().filter(|e| e.rev() == r) {
                match e {
                    Ev::Put {
                        key,
                        create,
                        rev,
                        version,
                        value,
                        lease,
                    } => {
                        if *lease == w.granted.0 && *rev == w.granted.2 {
                            dw.lease_grant(w.granted.0, w.granted.1, *rev).unwrap();
                        }
                        dw.put(KvRef {
                            key,
                            create_revision: *create,
                            mod_revision: *rev,
                            version: *version,
                            value,
                            lease: *lease,
                        })
                        .unwrap();
                    }
                    Ev::Del { key, .. } => dw.delete(key).unwrap(),
                }
            }
            if r == w.revoked.1 {
                dw.lease_gone(w.revoked.0, r).unwrap();
            }
        }
        if last >= first {
            dw.anchor(t0 + (last - b_eff) * 10 + 5, last).unwrap();
        }
        let (plain, sum) = dw.finish().unwrap();
        let z = zstd::stream::encode_all(&plain[..], 3).unwrap();
        let stored = match recipients {
            None => z,
            Some((r, _)) => {
                use std::io::Write;
                let mut wr = r.encrypt(Vec::new()).unwrap();
                wr.write_all(&z).unwrap();
                wr.finish().unwrap()
            }
        };
        let ms = |v: Option<i64>| v.map(|m| chrono::DateTime::from_timestamp_millis(m).unwrap());
        let m = DeltaManifest {
            kind: DeltaKind::Delta,
            format: FORMAT,
            cluster_id: base.cluster_id.clone(),
            base_id: base.id.clone(),
            base_revision: b_eff,
            seq: seq as u64,
            first_revision: first,
            last_revision: sum.last_revision,
            events: sum.events,
            revisions: sum.revisions,
            lease_records: sum.lease_records,
            first_time: ms(sum.first_observed_ms),
            last_time: ms(sum.last_observed_ms),
            covered_until: ms(sum.covered_until_ms),
            raw_bytes: sum.raw_bytes,
            raw_sha256: sum.raw_sha256.clone(),
            stored_bytes: stored.len() as u64,
            stored_sha256: hex::encode(Sha256::digest(&stored)),
            prev_stored_sha256: out.last().map(|p| p.stored_sha256.clone()),
            nonce: format!("{:016x}", rand::random::<u64>()),
            compression: "zstd".into(),
            compression_level: 3,
            encryption: recipients.map(|(_, pk)| EncryptionInfo {
                format: AGE_FORMAT.into(),
                recipients: vec![pk.clone()],
            }),
            member_id: base.member_id.clone(),
            endpoint: base.endpoint.clone(),
            etcd_version: base.etcd_version.clone(),
            tool_version: "test".into(),
            written_at: chrono::Utc::now(),
            reason: None,
            compact_revision: None,
            next_base_id: None,
        };
        m.validate().unwrap();
        let data_key = m.derived_data_key().unwrap().unwrap();
        store
            .put_bytes(&data_key, Bytes::from(stored))
            .await
            .unwrap();
        store
            .put_bytes_new(&m.key().unwrap(), Bytes::from(m.to_json()))
            .await
            .unwrap();
        out.push(m);
    }
    out
}

/// Every kv of a range read of the whole keyspace at `rev`, all fields, plus count and more.
type Range = (Vec<(Vec<u8>, Vec<u8>, i64, i64, i64, i64)>, i64, bool);

async fn range_at(c: &mut Client, rev: i64) -> Range {
    let r = c
        .get(
            "",
            Some(GetOptions::new().with_all_keys().with_revision(rev)),
        )
        .await
        .unwrap();
    let kvs = r
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key().to_vec(),
                kv.value().to_vec(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease(),
            )
        })
        .collect();
    (kvs, r.count(), r.more())
}

async fn hash_at(c: &mut Client, rev: i64) -> (u32, i64) {
    let h = c.hash_kv(rev).await.unwrap();
    (h.hash(), h.compact_version())
}

async fn lease_ids(c: &mut Client) -> BTreeSet<i64> {
    c.leases()
        .await
        .unwrap()
        .leases()
        .iter()
        .map(|l| l.id())
        .collect()
}

/// Every value of bucket `key` of a real snapshot re-encodes to the same bytes (puts through
/// KvRef, tombstones as key-only), every key parses as a revision, and every lease value
/// re-encodes too.
fn check_encodings_of_real_db(path: &Path, db_len: u64) -> usize {
    let db = Db::open(path, Some(db_len)).unwrap();
    let entries = db.root_bucket_entries(b"key").unwrap().unwrap();
    let mut tombstones = 0;
    for e in &entries {
        let (main, _sub, tomb) = bytes_to_rev(&e.key).expect("a revision key");
        let kv = KvRef::decode(&e.value).expect("canonical KeyValue");
        if tomb {
            tombstones += 1;
            assert_eq!(tombstone_value(kv.key), e.value);
        } else {
            assert_eq!(kv.mod_revision, main);
            assert_eq!(kv.encode(), e.value);
        }
    }
    assert!(tombstones > 0, "the base has tombstones to check");
    let leases = db.root_bucket_entries(b"lease").unwrap().unwrap();
    assert!(!leases.is_empty());
    for l in &leases {
        let (id, ttl, rem) = decode_lease(&l.value).unwrap();
        assert_eq!(lease_value(id, ttl, rem), l.value);
        assert_eq!(l.key, id.to_be_bytes());
    }
    entries.len()
}

fn restore_cmd(cfg: &Path, target: i64, dir: &Path, spec: &MemberSpec) -> assert_cmd::Command {
    restore_cmd_with(cfg, "--to-revision", &target.to_string(), dir, spec)
}

/// `restore --from-store latest FLAG VALUE --data-dir DIR` for member `spec`.
fn restore_cmd_with(
    cfg: &Path,
    flag: &str,
    value: &str,
    dir: &Path,
    spec: &MemberSpec,
) -> assert_cmd::Command {
    let mut cmd = lifeboat();
    cmd.args(["--config", cfg.to_str().unwrap(), "restore"])
        .args(["--from-store", "latest", flag, value])
        .arg("--data-dir")
        .arg(dir)
        .args(["--name", &spec.name])
        .args([
            "--initial-cluster",
            &format!("{}={}", spec.name, spec.peer_url()),
        ])
        .args(["--initial-advertise-peer-urls", &spec.peer_url()]);
    cmd
}

async fn run(version: Version, encrypted: bool, extras: bool) {
    let src = Etcd::start(EtcdOpts {
        version,
        ..Default::default()
    });
    let mut c = src.client().await;
    // Before the base: keys, a tombstone, a lease with a key, a lease to revoke later.
    fill(&c, 100, 64, "/base/").await;
    c.delete("/base/00000099", None).await.unwrap();
    let l0 = c.lease_grant(600, None).await.unwrap().id();
    c.put("/base/leased", "l0", Some(PutOptions::new().with_lease(l0)))
        .await
        .unwrap();
    let lrev = c.lease_grant(600, None).await.unwrap().id();
    for k in ["/rev/a", "/rev/b"] {
        c.put(k, "r", Some(PutOptions::new().with_lease(lrev)))
            .await
            .unwrap();
    }

    let work = tempfile::tempdir().unwrap();
    let store_dir = work.path().join("store");
    let mut cfg_text = src.config_yaml(&store_dir);
    let ids = if encrypted {
        let (id_file, pk) = keygen(work.path(), "pitr");
        cfg_text += &format!("encryption:\n  age_recipients: [\"{pk}\"]\n");
        Some((id_file, pk))
    } else {
        None
    };
    let cfg = work.path().join("lifeboat.yaml");
    std::fs::write(&cfg, &cfg_text).unwrap();
    lifeboat_ok(lifeboat().args(["--config", cfg.to_str().unwrap(), "backup"]));

    let ident = match &ids {
        Some((f, _)) => {
            etcd_lifeboat::crypto::identities_from_args(std::slice::from_ref(f)).unwrap()
        }
        None => None,
    };
    let (store, base, got) = acquire_latest(&cfg, ident, work.path()).await;
    let b_eff = base_revision(&Db::open(&got.path, Some(got.db_len)).unwrap()).unwrap();
    assert_eq!(
        b_eff, base.revision,
        "no compaction: B_eff is the status revision"
    );
    assert!(check_encodings_of_real_db(&got.path, got.db_len) > 100);

    let w = workload(&mut c, lrev).await;
    let events = watch_events(&mut c, b_eff + 1, w.last).await;
    // Every revision has events; the txn's four are in execution order.
    let revs: BTreeSet<i64> = events.iter().map(Ev::rev).collect();
    assert_eq!(revs, (b_eff + 1..=w.last).collect());
    let tx: Vec<&Ev> = events.iter().filter(|e| e.rev() == w.after_txn).collect();
    assert!(
        matches!(tx[2], Ev::Del { key, .. } if key == b"/base/00000003"),
        "{tx:?}"
    );

    let recipients = ids.as_ref().map(|(_, pk)| {
        let r = etcd_lifeboat::crypto::Recipients::from_config(
            &etcd_lifeboat::crypto::EncryptionConfig {
                age_recipients: vec![pk.clone()],
                age_recipients_file: None,
            },
        )
        .unwrap()
        .unwrap();
        (r, pk.clone())
    });
    let mid = w.after_txn;
    let chain = store_chain(
        &store,
        &base,
        b_eff,
        &events,
        &[b_eff + 5, mid + 3, w.last],
        &w,
        recipients.as_ref(),
    )
    .await;
    assert_eq!(chain.len(), 4);

    // Dry run: base, deltas, target; nothing written.
    let spec = MemberSpec::new("r", work.path().join("dry"));
    let mut dry = restore_cmd(&cfg, mid, &spec.data_dir, &spec);
    dry.arg("--dry-run");
    if let Some((f, _)) = &ids {
        dry.arg("--identity").arg(f);
    }
    let out = String::from_utf8(lifeboat_ok(&mut dry).stdout).unwrap();
    assert!(out.contains(&format!("Would restore revision {mid} (point in time) from base backup {} (effective revision r{b_eff}", base.id)), "{out}");
    assert!(
        out.contains(&format!("r{}..r{}", b_eff + 1, b_eff + 5)),
        "{out}"
    );
    assert!(
        out.contains(&format!("r{}..r{}", b_eff + 6, mid + 3)),
        "{out}"
    );
    assert!(
        !out.contains(&format!("r{}..r{}", mid + 4, w.last)),
        "{out}"
    );
    assert!(!spec.data_dir.exists());
    // The same as JSON: the plan under "pitr".
    let mut dry = restore_cmd(&cfg, mid, &spec.data_dir, &spec);
    dry.args(["--dry-run", "-o", "json"]);
    if let Some((f, _)) = &ids {
        dry.arg("--identity").arg(f);
    }
    let j: serde_json::Value = serde_json::from_slice(&lifeboat_ok(&mut dry).stdout).unwrap();
    assert_eq!(j["pitr"]["plan"]["revision"], mid, "{j}");
    assert_eq!(
        j["pitr"]["plan"]["deltas"].as_array().unwrap().len(),
        3,
        "{j}"
    );
    assert_eq!(j["pitr"]["plan"]["chain"]["last_revision"], w.last, "{j}");

    // Not covered: named with the nearest covered revision.
    let spec = MemberSpec::new("r", work.path().join("none"));
    let o = restore_cmd(&cfg, w.last + 1, &spec.data_dir, &spec)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("revision {} is not covered", w.last + 1)),
        "{err}"
    );
    assert!(
        err.contains(&format!("r{} (base {}", w.last, base.id)),
        "{err}"
    );

    for (i, target) in [b_eff + 1, mid, w.last].into_iter().enumerate() {
        let want_hash = hash_at(&mut c, target).await;
        let want_range = range_at(&mut c, target).await;
        let dir = work.path().join(format!("restored{i}"));
        let spec = MemberSpec::new("r", dir.clone());
        let mut cmd = restore_cmd(&cfg, target, &dir, &spec);
        if let Some((f, _)) = &ids {
            cmd.arg("--identity").arg(f);
        }
        let out = String::from_utf8(lifeboat_ok(&mut cmd).stdout).unwrap();
        assert!(
            out.contains(&format!("Point in time: revision {target}")),
            "{out}"
        );
        let restored = Etcd::boot(version, std::slice::from_ref(&spec), "etcd-cluster");
        let mut rc = restored.client().await;
        let head = rc.get("/", None).await.unwrap();
        assert_eq!(rev_of(head.header()), target, "restored revision");
        assert_eq!(
            hash_at(&mut rc, target).await,
            want_hash,
            "hashkv at r{target}"
        );
        assert_eq!(
            range_at(&mut rc, target).await,
            want_range,
            "range at r{target}"
        );
        // History below R too.
        for r in [b_eff, (b_eff + target) / 2] {
            assert_eq!(
                range_at(&mut rc, r).await,
                range_at(&mut c, r).await,
                "range at r{r}"
            );
        }
        let leases = lease_ids(&mut rc).await;
        assert!(leases.contains(&l0), "base lease kept: {leases:?}");
        if target >= w.granted.2 {
            assert!(leases.contains(&w.granted.0), "granted lease: {leases:?}");
        } else {
            assert!(
                !leases.contains(&w.granted.0),
                "not yet granted: {leases:?}"
            );
        }
        assert_eq!(
            leases.contains(&lrev),
            target < w.revoked.1,
            "revoked lease at r{target}: {leases:?}"
        );
        if target == w.last {
            let ttl = rc.lease_time_to_live(w.granted.0, None).await.unwrap();
            assert_eq!(ttl.granted_ttl(), 300);
        }
        drop(restored);
        let _ = std::fs::remove_dir_all(&dir);
    }

    if extras {
        combined_flags(&cfg, &work, version, &mut c, &base, b_eff, mid, &w).await;
    }

    // A damaged delta (one byte flipped) is refused, nothing restored.
    let victim = chain[2].derived_data_key().unwrap().unwrap();
    let mut bytes = store.get_bytes(&victim).await.unwrap().to_vec();
    let n = bytes.len();
    bytes[n / 2] ^= 1;
    store.put_bytes(&victim, Bytes::from(bytes)).await.unwrap();
    let dir: PathBuf = work.path().join("damaged");
    let spec = MemberSpec::new("r", dir.clone());
    let mut cmd = restore_cmd(&cfg, w.last, &dir, &spec);
    if let Some((f, _)) = &ids {
        cmd.arg("--identity").arg(f);
    }
    let o = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("delta {victim} is damaged")), "{err}");
    assert!(!dir.exists());

    // The last delta's data object missing: `list` and restore see the same chain (one model,
    // pitr::chain), which ends before that delta; a target in it is refused before any
    // download, naming the object.
    let gone = chain[3].derived_data_key().unwrap().unwrap();
    store.delete(&gone).await.unwrap();
    let list = list_json(&cfg);
    let entry = list.iter().find(|m| m["id"] == base.id.as_str()).unwrap();
    assert_eq!(entry["pitr"]["last_revision"], mid + 3, "{entry}");
    assert_eq!(entry["pitr"]["broken"][0]["key"], gone.as_str(), "{entry}");
    let o = restore_cmd(&cfg, w.last, &dir, &spec).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "r{} (base {}, broken: {gone}: data of delta r{}..r{} is missing)",
            mid + 3,
            base.id,
            mid + 4,
            w.last
        )),
        "{err}"
    );
    assert!(!dir.exists());

    // A missing manifest in the middle: the chain ends before it, a target beyond is refused
    // naming the new end of the covered range.
    store.delete(&chain[2].key().unwrap()).await.unwrap();
    let o = restore_cmd(&cfg, w.last, &dir, &spec).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("revision {} is not covered", w.last)),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "r{} (base {}, gap r{}..r{})",
            b_eff + 5,
            base.id,
            b_eff + 6,
            mid + 3
        )),
        "{err}"
    );
}

/// The point-in-time restore combined with the other restore flags: `--to-time`, `--bump-revision
/// --mark-compacted` (a read at the current revision gives exactly the kvs of R) and
/// `--out-dir` with three members (a cluster whose members all hash equal to the source).
#[allow(clippy::too_many_arguments)]
async fn combined_flags(
    cfg: &Path,
    work: &tempfile::TempDir,
    version: Version,
    c: &mut Client,
    base: &Manifest,
    b_eff: i64,
    mid: i64,
    w: &Workload,
) {
    // --to-time: the store's observed times are base.finished_at + 10 ms per revision.
    let t = base.finished_at + chrono::Duration::milliseconds((mid - b_eff) * 10 + 5);
    let dir = work.path().join("by-time");
    let spec = MemberSpec::new("r", dir.clone());
    let mut cmd = restore_cmd_with(cfg, "--to-time", &t.to_rfc3339(), &dir, &spec);
    let out = String::from_utf8(lifeboat_ok(&mut cmd).stdout).unwrap();
    assert!(
        out.contains(&format!("Point in time: revision {mid}, observed")),
        "{out}"
    );
    let restored = Etcd::boot(version, std::slice::from_ref(&spec), "etcd-cluster");
    let mut rc = restored.client().await;
    assert_eq!(hash_at(&mut rc, mid).await, hash_at(c, mid).await);
    drop(restored);

    // --bump-revision --mark-compacted on top of R.
    const BUMP: i64 = 1_000_000;
    let dir = work.path().join("bumped");
    let spec = MemberSpec::new("r", dir.clone());
    let mut cmd = restore_cmd(cfg, w.last, &dir, &spec);
    cmd.args(["--bump-revision", &BUMP.to_string(), "--mark-compacted"]);
    lifeboat_ok(&mut cmd);
    let restored = Etcd::boot(version, std::slice::from_ref(&spec), "etcd-cluster");
    let mut rc = restored.client().await;
    let now = rc
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(rev_of(now.header()), w.last + BUMP);
    assert_eq!(
        range_at(&mut rc, w.last + BUMP).await,
        range_at(c, w.last).await
    );
    drop(restored);

    // --out-dir: three members, one cluster, every member at R with the source's hash.
    let out = work.path().join("cluster");
    let specs: Vec<MemberSpec> = ["m1", "m2", "m3"]
        .iter()
        .map(|n| MemberSpec::new(n, out.join(n)))
        .collect();
    let mut cmd = lifeboat();
    cmd.args(["--config", cfg.to_str().unwrap(), "restore"])
        .args(["--from-store", "latest", "--to-revision", &mid.to_string()])
        .arg("--out-dir")
        .arg(&out)
        .args(["--initial-cluster", &initial_cluster(&specs)]);
    lifeboat_ok(&mut cmd);
    let cluster = Etcd::boot(version, &specs, "etcd-cluster");
    let want = hash_at(c, mid).await;
    for s in &specs {
        let mut mc = Client::connect([s.client_url()], None).await.unwrap();
        assert_eq!(hash_at(&mut mc, mid).await, want, "member {}", s.name);
    }
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_to_revision_equals_source_3_5() {
    run(Version::V3_5, false, true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_to_revision_equals_source_3_5_30() {
    run(Version::V3_5_30, false, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_to_revision_equals_source_3_4_encrypted() {
    run(Version::V3_4, true, false).await;
}

/// A base of an empty keyspace (snapshot revision 0): etcd's store starts at revision 1, so
/// the chain starts at revision 2 (`B_eff` = 1) and restores exactly; a lease the chain never
/// saw granted but a live key refers to is restored anyway (and reported).
#[tokio::test(flavor = "multi_thread")]
async fn chain_of_an_empty_base_starts_at_revision_2() {
    let src = Etcd::start(EtcdOpts::default());
    let mut c = src.client().await;
    let work = tempfile::tempdir().unwrap();
    let cfg = src.write_config(&work.path().join("store"));
    lifeboat_ok(lifeboat().args(["--config", cfg.to_str().unwrap(), "backup"]));
    let (store, base, got) = acquire_latest(&cfg, None, work.path()).await;
    assert_eq!(base.revision, 0);
    let b_eff = base_revision(&Db::open(&got.path, Some(got.db_len)).unwrap()).unwrap();
    assert_eq!(b_eff, 1);
    c.put("/a", "1", None).await.unwrap();
    // A lease the chain never records as granted (the capture missed it).
    let missed = c.lease_grant(600, None).await.unwrap().id();
    let last = rev_of(
        c.put("/b", "2", Some(PutOptions::new().with_lease(missed)))
            .await
            .unwrap()
            .header(),
    );
    assert_eq!(last, 3);
    let events = watch_events(&mut c, b_eff + 1, last).await;
    let none = Workload {
        after_txn: 0,
        last,
        granted: (0, 0, -1),
        revoked: (0, -1),
    };
    let chain = store_chain(&store, &base, b_eff, &events, &[last], &none, None).await;
    let want = hash_at(&mut c, last).await;
    let dir = work.path().join("restored");
    let spec = MemberSpec::new("r", dir.clone());
    let mut cmd = restore_cmd(&cfg, last, &dir, &spec);
    cmd.args(["-o", "json"]);
    let j: serde_json::Value = serde_json::from_slice(&lifeboat_ok(&mut cmd).stdout).unwrap();
    // Safety net: the referenced lease is restored (etcd's minimum TTL), and reported.
    assert_eq!(
        j["pitr"]["applied"]["leases_unknown"],
        serde_json::json!([missed]),
        "{j}"
    );
    assert_eq!(j["pitr"]["applied"]["leases"], 1, "{j}");
    let restored = Etcd::boot(Version::V3_5, std::slice::from_ref(&spec), "etcd-cluster");
    let mut rc = restored.client().await;
    assert_eq!(hash_at(&mut rc, last).await, want);
    assert_eq!(range_at(&mut rc, last).await, range_at(&mut c, last).await);

    // A manifest that understates the decompressed size: the decoder stops at its bound
    // (a zstd bomb cannot fill the disk) and the restore is refused.
    let mut m = chain[0].clone();
    m.raw_bytes -= 1;
    store.delete(&m.key().unwrap()).await.unwrap();
    store
        .put_bytes_new(&m.key().unwrap(), Bytes::from(m.to_json()))
        .await
        .unwrap();
    let dir = work.path().join("bomb");
    let o = restore_cmd(&cfg, last, &dir, &spec).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "decompresses to more than the {} bytes recorded",
            m.raw_bytes
        )),
        "{err}"
    );
    assert!(!dir.exists());
}
