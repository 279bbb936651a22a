//! Scale of the point-in-time apply (issue 16: "24 h at 100 writes/s restore with peak RSS
//! <= 128 MiB, in time proportional to the events"). Ignored by default (minutes); run with
//! `cargo test --test integration pitr_restore_bench:: -- --ignored --nocapture` (the test profile is optimised)
//! (`PITR_BENCH_EVENTS`, default 1000000; 8640000 = 24 h at 100 writes/s).
//!
//! A real base (etcd 3.5, 2000 keys, taken with the CLI), then a generated chain written with
//! the crate's `DeltaWriter`: one event per revision (as most Kubernetes writes are),
//! Kubernetes-like keys over 20000 objects, 300-byte values (200 bytes of them random letters), every 20th event a delete, a lease
//! per 100 puts; deltas cut at 64 MiB raw (the capture's default `max_bytes`), zstd level 3.
//! `restore --to-revision` at 1/4, 1/2 and all of the events runs under `/usr/bin/time -v`;
//! the table gives events/s, peak RSS and stored bytes per event, and the restored member's
//! revision and a read of the last written key are checked on etcd.

use std::collections::HashMap;
use std::time::Instant;

use crate::common::*;
use bytes::Bytes;
use etcd_lifeboat::pitr::delta::{base_revision, DeltaHeader, DeltaWriter, KvRef};
use etcd_lifeboat::pitr::manifest::{DeltaKind, DeltaManifest, FORMAT};
use etcd_lifeboat::snapshot::Db;
use etcd_lifeboat::store::{Manifest, Store};
use sha2::{Digest, Sha256};

const MAX_RAW: u64 = 64 << 20;

async fn upload(
    store: &Store,
    base: &Manifest,
    b_eff: i64,
    seq: u64,
    prev: Option<&DeltaManifest>,
    w: DeltaWriter<Vec<u8>>,
) -> DeltaManifest {
    let first = w.header().first_revision;
    let (plain, sum) = w.finish().unwrap();
    let stored = zstd::stream::encode_all(&plain[..], 3).unwrap();
    let ms = |v: Option<i64>| v.map(|m| chrono::DateTime::from_timestamp_millis(m).unwrap());
    let m = DeltaManifest {
        kind: DeltaKind::Delta,
        format: FORMAT,
        cluster_id: base.cluster_id.clone(),
        base_id: base.id.clone(),
        base_revision: b_eff,
        seq,
        first_revision: first,
        last_revision: sum.last_revision,
        events: sum.events,
        revisions: sum.revisions,
        lease_records: sum.lease_records,
        first_time: ms(sum.first_observed_ms),
        last_time: ms(sum.last_observed_ms),
        covered_until: ms(sum.last_observed_ms),
        raw_bytes: sum.raw_bytes,
        raw_sha256: sum.raw_sha256,
        stored_bytes: stored.len() as u64,
        stored_sha256: hex::encode(Sha256::digest(&stored)),
        prev_stored_sha256: prev.map(|p| p.stored_sha256.clone()),
        nonce: format!("{:016x}", rand::random::<u64>()),
        compression: "zstd".into(),
        compression_level: 3,
        encryption: None,
        member_id: base.member_id.clone(),
        endpoint: base.endpoint.clone(),
        etcd_version: base.etcd_version.clone(),
        tool_version: "bench".into(),
        written_at: chrono::Utc::now(),
        reason: None,
        compact_revision: None,
        next_base_id: None,
    };
    store
        .put_bytes(&m.derived_data_key().unwrap().unwrap(), Bytes::from(stored))
        .await
        .unwrap();
    store
        .put_bytes_new(&m.key().unwrap(), Bytes::from(m.to_json()))
        .await
        .unwrap();
    m
}

fn rss_and_wall(stderr: &str) -> (u64, String) {
    let rss = stderr
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let wall = stderr
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Elapsed (wall clock) time (h:mm:ss or m:ss): ")
                .map(String::from)
        })
        .unwrap_or_default();
    (rss, wall)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "scale benchmark (minutes); run explicitly"]
async fn apply_scales_linearly_in_bounded_memory() {
    let n: i64 = std::env::var("PITR_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let src = Etcd::start(EtcdOpts::default());
    let c = src.client().await;
    fill(&c, 2000, 300, "/registry/configmaps/base/").await;
    let work = tempfile::tempdir().unwrap();
    let cfg = src.write_config(&work.path().join("store"));
    lifeboat_ok(lifeboat().args(["--config", cfg.to_str().unwrap(), "backup"]));
    let (store, base, got) = acquire_latest(&cfg, None, work.path()).await;
    let b_eff = base_revision(&Db::open(&got.path, Some(got.db_len)).unwrap()).unwrap();
    drop(got);

    // Generate the chain.
    let t_gen = Instant::now();
    let mut live: HashMap<u32, (i64, i64)> = HashMap::new();
    let mut chain: Vec<DeltaManifest> = Vec::new();
    let mut w: Option<DeltaWriter<Vec<u8>>> = None;
    let t0 = base.finished_at.timestamp_millis();
    // 300 bytes: a fixed 100-byte template and 200 pseudo-random letters (values of real
    // objects differ; a constant value would compress unrealistically well).
    let mut value: Vec<u8> = (0..300).map(|i| b'a' + (i % 26) as u8).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut lease = 0i64;
    for i in 0..n {
        let rev = b_eff + 1 + i;
        if w.as_ref().is_some_and(|w| w.bytes_written() >= MAX_RAW) {
            let m = upload(
                &store,
                &base,
                b_eff,
                chain.len() as u64,
                chain.last(),
                w.take().unwrap(),
            )
            .await;
            chain.push(m);
        }
        let dw = w.get_or_insert_with(|| {
            DeltaWriter::new(
                Vec::with_capacity(MAX_RAW as usize + (1 << 20)),
                DeltaHeader {
                    cluster_id: base.cluster_id.clone(),
                    base_id: base.id.clone(),
                    base_revision: b_eff,
                    seq: chain.len() as u64,
                    first_revision: rev,
                },
            )
            .unwrap()
        });
        dw.begin_revision(rev, t0 + i * 10).unwrap();
        let obj = (i.wrapping_mul(7919) % 20_000) as u32;
        let key = format!("/registry/pods/ns{:02}/pod-{obj:05}", obj % 50);
        if i % 20 == 19 && live.contains_key(&obj) {
            live.remove(&obj);
            dw.delete(key.as_bytes()).unwrap();
            continue;
        }
        if i % 100 == 0 {
            lease = 0x7000_0000 + i;
            dw.lease_grant(lease, 3600, rev).unwrap();
        }
        for b in &mut value[100..] {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = b'a' + (x % 26) as u8;
        }
        let e = live.entry(obj).or_insert((rev, 0));
        e.1 += 1;
        dw.put(KvRef {
            key: key.as_bytes(),
            create_revision: e.0,
            mod_revision: rev,
            version: e.1,
            value: &value,
            lease: if i % 10 == 0 { lease } else { 0 },
        })
        .unwrap();
    }
    let m = upload(
        &store,
        &base,
        b_eff,
        chain.len() as u64,
        chain.last(),
        w.take().unwrap(),
    )
    .await;
    chain.push(m);
    let stored: u64 = chain.iter().map(|m| m.stored_bytes).sum();
    let raw: u64 = chain.iter().map(|m| m.raw_bytes).sum();
    eprintln!(
        "generated {n} events in {} deltas in {:.1} s: {raw} bytes raw, {stored} stored ({:.1} B/event stored, {:.1} raw)",
        chain.len(),
        t_gen.elapsed().as_secs_f64(),
        stored as f64 / n as f64,
        raw as f64 / n as f64
    );

    eprintln!("| events applied | wall | events/s | peak RSS (MiB) | restored db (MiB) |");
    eprintln!("|---|---|---|---|---|");
    for frac in [4, 2, 1] {
        let target = b_eff + n / frac;
        let dir = work.path().join(format!("restored-{frac}"));
        let spec = MemberSpec::new("r", dir.clone());
        let start = Instant::now();
        let out = std::process::Command::new("/usr/bin/time")
            .arg("-v")
            .arg(assert_cmd::cargo::cargo_bin("etcd-lifeboat"))
            .args(["--config", cfg.to_str().unwrap(), "restore"])
            .args([
                "--from-store",
                "latest",
                "--to-revision",
                &target.to_string(),
            ])
            .arg("--data-dir")
            .arg(&dir)
            .args(["--name", "r"])
            .args(["--initial-cluster", &format!("r={}", spec.peer_url())])
            .args(["--initial-advertise-peer-urls", &spec.peer_url()])
            .output()
            .unwrap();
        let secs = start.elapsed().as_secs_f64();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let (rss, wall) = rss_and_wall(&stderr);
        let db = std::fs::metadata(dir.join("member/snap/db")).unwrap().len();
        eprintln!(
            "| {} | {wall} | {:.0} | {:.1} | {:.0} |",
            n / frac,
            (n / frac) as f64 / secs,
            rss as f64 / 1024.0,
            db as f64 / (1 << 20) as f64
        );
        assert!(rss < 128 * 1024, "peak RSS {rss} KiB");
        if frac == 1 {
            let restored = Etcd::boot(Version::V3_5, std::slice::from_ref(&spec), "etcd-cluster");
            let mut rc = restored.client().await;
            let r = rc
                .get(
                    "/registry/pods/",
                    Some(
                        etcd_client::GetOptions::new()
                            .with_prefix()
                            .with_count_only(),
                    ),
                )
                .await
                .unwrap();
            assert_eq!(r.header().unwrap().revision(), target);
            assert_eq!(r.count() as usize, live.len());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
