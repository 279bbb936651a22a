//! `rewrite_db` produces exactly the db that `etcdutl snapshot restore` (3.5) produces (every
//! bucket, key and value equal), passes our check and `etcdutl snapshot status`, and etcd 3.5
//! and 3.4 boot from it (the db dropped into an etcdutl-made data dir, so this tests the db
//! alone, not our WAL/snap writers).
mod common;
use common::*;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_lifeboat::restore::db::rewrite_db;
use etcd_lifeboat::restore::member::Member as RestoreMember;
use etcd_lifeboat::snapshot::page::{self, PAGE_HEADER_SIZE};
use etcd_lifeboat::snapshot::{status_file, verify_file, Db, Status};
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

fn etcdutl_status(p: &Path) -> serde_json::Value {
    let out = Command::new(etcdutl_bin())
        .args(["snapshot", "status", "-w", "json"])
        .arg(p)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "etcdutl status {}: {}",
        p.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn etcdutl_restore(
    snap: &Path,
    data_dir: &Path,
    name: &str,
    cluster: &[(&str, String)],
    token: &str,
) {
    let ic: Vec<String> = cluster.iter().map(|(n, u)| format!("{n}={u}")).collect();
    let me = &cluster.iter().find(|(n, _)| *n == name).unwrap().1;
    let out = Command::new(etcdutl_bin())
        .args(["snapshot", "restore"])
        .arg(snap)
        .arg(format!("--name={name}"))
        .arg(format!("--initial-cluster={}", ic.join(",")))
        .arg(format!("--initial-cluster-token={token}"))
        .arg(format!("--initial-advertise-peer-urls={me}"))
        .arg(format!("--data-dir={}", data_dir.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "etcdutl restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    etcdutl_restore(
        &snap.path,
        &theirs_dir,
        "a",
        &[("a", ua.into()), ("b", ub.into())],
        "tok",
    );
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
    rewrite_db(&snap.path, db_len(&snap.path), &ours, &members, 2, 1).unwrap();
    eprintln!("rewrite_db took {:?}", t0.elapsed());
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
    assert_eq!(serde_json::to_value(&s).unwrap(), etcdutl_status(&ours));
    let mut t = etcdutl_status(&theirs);
    t["totalSize"] = s.total_size.into();
    assert_eq!(serde_json::to_value(&s).unwrap(), t);
    assert_eq!(status_file(&ours).unwrap(), s);

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
        let peer = format!("http://127.0.0.1:{}", free_port());
        let client = format!("http://127.0.0.1:{}", free_port());
        let dd = tmp.path().join(format!("boot-{v:?}"));
        etcdutl_restore(
            &snap.path,
            &dd,
            "solo",
            &[("solo", peer.clone())],
            "boot-tok",
        );
        let db = dd.join("member/snap/db");
        std::fs::remove_file(&db).unwrap();
        let m = RestoreMember {
            id: member_id(&[&peer], "boot-tok"),
            name: "solo".into(),
            peer_urls: vec![peer.clone()],
        };
        rewrite_db(&snap.path, db_len(&snap.path), &db, &[m], 1, 1).unwrap();
        let mut child = Booted(spawn_etcd(v, &dd, &peer, &client));
        wait_health(v, &client, &mut child.0, &dd);
        let ctl = |args: &[&str]| {
            let out = Command::new(etcdctl_bin(v))
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints={client}"))
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{v:?} etcdctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
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
    rewrite_db(
        &src,
        std::fs::metadata(&src).unwrap().len(),
        &dst,
        &[m],
        1,
        1,
    )
    .unwrap();
    let db = Db::open(&dst, None).unwrap();
    assert_ne!(db.meta().freelist, page::PGID_NO_FREELIST);
    let after = verify_file(&dst, None).unwrap();
    assert_eq!(serde_json::to_value(&after).unwrap(), etcdutl_status(&dst));
    assert_ne!(after.hash, before.hash, "membership changed");
    // Rewriting the rewritten db again works too (a second transaction on top).
    let dst2 = tmp.path().join("out2.db");
    rewrite_db(
        &dst,
        std::fs::metadata(&dst).unwrap().len(),
        &dst2,
        &[],
        0,
        0,
    )
    .unwrap();
    verify_file(&dst2, None).unwrap();
    etcdutl_status(&dst2);
    // The destination must not exist.
    let err = rewrite_db(
        &src,
        std::fs::metadata(&src).unwrap().len(),
        &dst,
        &[],
        1,
        1,
    )
    .unwrap_err();
    assert!(err.to_string().contains("out.db: File exists"), "{err}");
}

struct Booted(Child);
impl Drop for Booted {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_etcd(v: Version, dd: &Path, peer: &str, client: &str) -> Child {
    let log = std::fs::File::create(dd.with_extension("log")).unwrap();
    Command::new(etcd_bin(v))
        .arg("--name=solo")
        .arg(format!("--data-dir={}", dd.display()))
        .arg(format!("--listen-client-urls={client}"))
        .arg(format!("--advertise-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster=solo={peer}"))
        .arg("--initial-cluster-token=boot-tok")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn wait_health(v: Version, client: &str, child: &mut Child, dd: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new(etcdctl_bin(v))
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={client}"))
            .args(["endpoint", "health", "--command-timeout=2s"])
            .output()
            .unwrap();
        if out.status.success() {
            return;
        }
        let log = || std::fs::read_to_string(dd.with_extension("log")).unwrap_or_default();
        if let Ok(Some(st)) = child.try_wait() {
            panic!("{v:?} etcd exited ({st}) on our db:\n{}", log());
        }
        assert!(
            Instant::now() < deadline,
            "{v:?} etcd not healthy in 30s:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
