//! `rewrite_db_bumped` produces exactly the db that `etcdutl snapshot restore` (3.5) produces (every
//! bucket, key and value equal), passes our check and `etcdutl snapshot status`, and etcd 3.5
//! and 3.4 boot from it (the db dropped into an etcdutl-made data dir, so this tests the db
//! alone, not our WAL/snap writers).
use crate::common::*;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use etcd_lifeboat::acquire::TrailerRule;
use etcd_lifeboat::restore::db::{rewrite_db_bumped, rewrite_db_in_place};
use etcd_lifeboat::restore::member::Member as RestoreMember;
use etcd_lifeboat::snapshot::page::{self, PAGE_HEADER_SIZE};
use etcd_lifeboat::snapshot::{verify_file, Db, Status};
use sha1::{Digest, Sha1};

/// etcd membership/member.go computeMemberId (no time component).
fn member_id(peer_urls: &[&str], token: &str) -> u64 {
    let mut urls: Vec<&str> = peer_urls.to_vec();
    urls.sort();
    let mut b = urls.concat().into_bytes();
    b.extend_from_slice(token.as_bytes());
    let h = Sha1::digest(&b);
    u64::from_be_bytes(h[..8].try_into().unwrap())
}

type Dump = BTreeMap<Vec<u8>, Vec<(u32, Vec<u8>, Vec<u8>)>>;

/// Every root bucket with its entries (nested bucket values: flags only).
fn dump(p: &Path) -> Dump {
    let db = Db::open(p, None).unwrap();
    let m = db.meta();
    let (root, _) = db
        .bucket_contents(&page::encode_bucket_header(m.root, m.sequence), 0)
        .unwrap();
    root.iter()
        .map(|b| {
            let (es, _) = db.bucket_contents(&b.value, 0).unwrap();
            (
                b.key.clone(),
                es.into_iter().map(|e| (e.flags, e.key, e.value)).collect(),
            )
        })
        .collect()
}

struct Snap {
    _dir: tempfile::TempDir,
    path: PathBuf,
    keys: u64,
}

async fn populated_snapshot() -> Snap {
    populated_snapshot_of(Version::V3_5).await
}

async fn populated_snapshot_of(v: Version) -> Snap {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(EtcdOpts {
        version: v,
        ..Default::default()
    });
    let c = etcd.client().await;
    fill(&c, 3000, 200, "k/").await;
    fill(&c, 500, 100, "k/").await;
    c.kv_client()
        .delete(
            "k/0000002",
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let lease = c.lease_client().grant(3600, None).await.unwrap().id();
    c.kv_client()
        .put(
            "leased",
            "v",
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
    fill(&c, 2, 1 << 20, "big/").await;
    let keys = c
        .kv_client()
        .get(
            "",
            Some(
                etcd_client::GetOptions::new()
                    .with_from_key()
                    .with_count_only(),
            ),
        )
        .await
        .unwrap()
        .count() as u64;
    let path = dir.path().join("snap.db");
    etcd.etcdctl_ok(&["snapshot", "save", path.to_str().unwrap()]);
    Snap {
        _dir: dir,
        path,
        keys,
    }
}

fn db_len(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len() - 32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_equals_etcdutl_restore_and_boots() {
    rewrite_equals_etcdutl_restore_and_boots_from(Version::V3_5).await;
}

/// The same from a snapshot taken of etcd 3.4 (restored by etcdutl 3.5, as people do).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_of_34_snapshot_equals_etcdutl_restore_and_boots() {
    rewrite_equals_etcdutl_restore_and_boots_from(Version::V3_4).await;
}

async fn rewrite_equals_etcdutl_restore_and_boots_from(src: Version) {
    let snap = populated_snapshot_of(src).await;
    let tmp = tempfile::tempdir().unwrap();

    // Member IDs as etcd computes them (spec example, measured on etcdutl 3.5.1).
    let (ua, ub) = ("http://127.0.0.1:2380", "http://127.0.0.1:2381");
    assert_eq!(member_id(&[ua], "tok"), 0x71405583d3e2d5ce);
    assert_eq!(member_id(&[ub], "tok"), 0x321b4ccd5c32edea);

    // Two members: etcdutl's db vs ours, bucket by bucket.
    let theirs_dir = tmp.path().join("theirs");
    let ic = format!("a={ua},b={ub}");
    etcdutl_restore(&snap.path, "a", &ic, "tok", ua, &theirs_dir);
    let theirs = theirs_dir.join("member/snap/db");
    let ours = tmp.path().join("ours.db");
    let members = vec![
        RestoreMember {
            id: member_id(&[ua], "tok"),
            name: "a".into(),
            peer_urls: vec![ua.into()],
        },
        RestoreMember {
            id: member_id(&[ub], "tok"),
            name: "b".into(),
            peer_urls: vec![ub.into()],
        },
    ];
    let t0 = Instant::now();
    rewrite_db_bumped(&snap.path, db_len(&snap.path), &ours, &members, 2, 1, 0).unwrap();
    eprintln!("rewrite_db_bumped took {:?}", t0.elapsed());
    // In place (restore of a decompressed temp file): the same bytes, with and without a bump.
    for bump in [0, 1000] {
        let copied = ours.with_extension(format!("copied-{bump}"));
        let in_place = ours.with_extension(format!("in-place-{bump}"));
        rewrite_db_bumped(
            &snap.path,
            db_len(&snap.path),
            &copied,
            &members,
            2,
            1,
            bump,
        )
        .unwrap();
        std::fs::copy(&snap.path, &in_place).unwrap();
        rewrite_db_in_place(&in_place, db_len(&snap.path), &members, 2, 1, bump).unwrap();
        assert!(
            std::fs::read(&copied).unwrap() == std::fs::read(&in_place).unwrap(),
            "in-place rewrite (bump {bump}) differs from the copying one"
        );
    }
    let (d_ours, d_theirs) = (dump(&ours), dump(&theirs));
    assert_eq!(
        d_ours.keys().collect::<Vec<_>>(),
        d_theirs.keys().collect::<Vec<_>>(),
        "same buckets"
    );
    for (name, es) in &d_theirs {
        assert_eq!(
            &d_ours[name],
            es,
            "bucket {:?} differs from etcdutl's",
            String::from_utf8_lossy(name)
        );
    }
    assert_eq!(
        std::fs::metadata(&ours).unwrap().permissions().mode() & 0o777,
        0o600,
        "db is private like etcdutl's"
    );

    // Our check and etcdutl's status accept it; the status equals that of etcdutl's db
    // except for the size.
    let s: Status = verify_file(&ours, None).unwrap();
    assert_eq!(
        serde_json::to_value(&s).unwrap(),
        etcdutl_status(&etcdutl_bin(), &ours)
    );
    let mut t = etcdutl_status(&etcdutl_bin(), &theirs);
    t["totalSize"] = s.total_size.into();
    assert_eq!(serde_json::to_value(&s).unwrap(), t);
    assert_eq!(
        acquire_file(&ours, TrailerRule::IfPresent).unwrap().status,
        s
    );

    // The old meta stays a valid, consistent view (copy-on-write, nothing overwritten).
    let db = Db::open(&ours, None).unwrap();
    assert_eq!(
        db.meta().txid,
        Db::open(&snap.path, Some(db_len(&snap.path)))
            .unwrap()
            .meta()
            .txid
            + 1
    );

    // Boot: a one-member etcdutl data dir with its db replaced by ours, on etcd 3.5 and 3.4.
    for v in [Version::V3_5, Version::V3_4] {
        let dd = tmp.path().join(format!("boot-{v:?}"));
        let spec = MemberSpec::new("solo", dd.clone());
        let peer = spec.peer_url();
        let ic = format!("solo={peer}");
        etcdutl_restore(&snap.path, "solo", &ic, "boot-tok", &peer, &dd);
        let db = dd.join("member/snap/db");
        std::fs::remove_file(&db).unwrap();
        let m = RestoreMember {
            id: member_id(&[&peer], "boot-tok"),
            name: "solo".into(),
            peer_urls: vec![peer.clone()],
        };
        rewrite_db_bumped(&snap.path, db_len(&snap.path), &db, &[m], 1, 1, 0).unwrap();
        let etcd = Etcd::boot(v, &[spec], "boot-tok");
        let ctl = |args: &[&str]| etcd.etcdctl_ok(args);
        let fields = ctl(&[
            "get",
            "",
            "--from-key",
            "--keys-only",
            "--limit=1",
            "-w",
            "fields",
        ]);
        let count: u64 = fields
            .lines()
            .find_map(|l| l.strip_prefix("\"Count\" : "))
            .unwrap_or_else(|| panic!("{fields}"))
            .trim()
            .parse()
            .unwrap();
        assert_eq!(count, snap.keys, "{v:?}: every key is there");
        let members = ctl(&["member", "list"]);
        assert_eq!(members.lines().count(), 1, "{members}");
        assert!(
            members.contains(&peer) && members.contains("solo"),
            "{members}"
        );
        ctl(&["put", "after-restore", "ok"]);
        assert!(ctl(&["get", "big/00000001", "--print-value-only"]).len() > 1 << 20);
    }
}

/// A db with a synced freelist keeps one, and the freed pages are listed in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_keeps_a_synced_freelist_consistent() {
    let snap = populated_snapshot().await;
    let tmp = tempfile::tempdir().unwrap();
    // Turn the snapshot (no freelist) into a db with a synced freelist.
    let src = tmp.path().join("withfree.db");
    let len = db_len(&snap.path);
    {
        let db = Db::open(&snap.path, Some(len)).unwrap();
        let (hwm, ps) = (db.meta().pgid, u64::from(db.page_size()));
        let free = db.free_pages().unwrap();
        let mut bytes = std::fs::read(&snap.path).unwrap();
        bytes.truncate(len as usize);
        let mut fl = vec![0u8; page::freelist_size(free.len()).div_ceil(ps as usize) * ps as usize];
        let ovf = (fl.len() as u64 / ps - 1) as u32;
        page::write_freelist(&mut fl, hwm, ovf, &free);
        bytes.extend_from_slice(&fl);
        let mut m = *db.meta();
        m.freelist = hwm;
        m.pgid = hwm + fl.len() as u64 / ps;
        m.checksum = m.sum64();
        let slot = db.meta_page() as usize * ps as usize + PAGE_HEADER_SIZE;
        bytes[slot..slot + 64].copy_from_slice(&m.encode());
        std::fs::write(&src, &bytes).unwrap();
    }
    let before = verify_file(&src, None).unwrap();
    let dst = tmp.path().join("out.db");
    let m = RestoreMember {
        id: 1,
        name: "x".into(),
        peer_urls: vec!["http://127.0.0.1:1".into()],
    };
    rewrite_db_bumped(
        &src,
        std::fs::metadata(&src).unwrap().len(),
        &dst,
        &[m],
        1,
        1,
        0,
    )
    .unwrap();
    let db = Db::open(&dst, None).unwrap();
    assert_ne!(db.meta().freelist, page::PGID_NO_FREELIST);
    let after = verify_file(&dst, None).unwrap();
    assert_eq!(
        serde_json::to_value(&after).unwrap(),
        etcdutl_status(&etcdutl_bin(), &dst)
    );
    assert_ne!(after.hash, before.hash, "membership changed");
    // Rewriting the rewritten db again works too (a second transaction on top).
    let dst2 = tmp.path().join("out2.db");
    rewrite_db_bumped(
        &dst,
        std::fs::metadata(&dst).unwrap().len(),
        &dst2,
        &[],
        0,
        0,
        0,
    )
    .unwrap();
    verify_file(&dst2, None).unwrap();
    etcdutl_status(&etcdutl_bin(), &dst2);
    // The destination must not exist.
    let err = rewrite_db_bumped(
        &src,
        std::fs::metadata(&src).unwrap().len(),
        &dst,
        &[],
        1,
        1,
        0,
    )
    .unwrap_err();
    assert!(err.to_string().contains("out.db: File exists"), "{err}");
}
