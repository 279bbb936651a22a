//! Damaged snapshots are refused with a clear error, never a panic: truncated files, bad
//! sha256 trailers, flipped bytes in pages, broken meta pages, pages reachable twice,
//! unreachable pages, files that are not bbolt at all. The exact messages are asserted so they
//! cannot silently rot.
use crate::common::*;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use etcd_lifeboat::acquire::{AcquireError, TrailerRule, TrailerState};
use etcd_lifeboat::snapshot::page::{self, Meta, PageHeader, PAGE_HEADER_SIZE};
use etcd_lifeboat::snapshot::{verify_file, Db, SnapshotError, Status};

struct Base {
    /// The snapshot file's bytes (about 1.7 MB): held in memory, as a static's temp dir would
    /// never be removed (statics are not dropped at exit).
    bytes: Vec<u8>,
    status: Status,
}

/// One real 3.5 snapshot (5000 keys, a 1 MiB value), taken once per test binary.
fn base() -> &'static Base {
    static B: OnceLock<Base> = OnceLock::new();
    B.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let etcd = Etcd::start(EtcdOpts {
            version: Version::V3_5,
            ..Default::default()
        });
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let c = etcd.client().await;
            fill(&c, 5000, 50, "k/").await;
            fill(&c, 1, 1 << 20, "big/").await;
        });
        let path = dir.path().join("base.db");
        etcd.etcdctl_ok(&["snapshot", "save", path.to_str().unwrap()]);
        let a = acquire_file(&path, TrailerRule::Required).unwrap();
        assert_eq!((a.trailer, a.db_len), (TrailerState::Valid, db_len(&path)));
        let status = a.status;
        assert_eq!(status_file(&path).unwrap(), status);
        Base {
            bytes: std::fs::read(&path).unwrap(),
            status,
        }
    })
}

/// A private copy of the base snapshot.
fn copy(name: &str) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join(name);
    std::fs::write(&p, &base().bytes).unwrap();
    (d, p)
}

/// `status` (trailer not hashed, as etcdctl) through the product's acquire path; a failed
/// structure check comes back as the snapshot error itself.
fn status_file(p: &Path) -> Result<Status, SnapshotError> {
    match acquire_file(p, TrailerRule::Skip) {
        Ok(a) => Ok(a.status),
        Err(AcquireError::Snapshot { source, .. }) => Err(source),
        Err(e) => panic!("{}: not a snapshot error: {e:?}", p.display()),
    }
}

fn db_len(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len() - 32
}

fn patch(p: &Path, off: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.write_all_at(bytes, off).unwrap();
}

fn read_at(p: &Path, off: u64, n: usize) -> Vec<u8> {
    let mut b = vec![0; n];
    std::fs::File::open(p)
        .unwrap()
        .read_exact_at(&mut b, off)
        .unwrap();
    b
}

fn etcdutl_status_fails(p: &Path) -> String {
    let out = Command::new(etcdutl_bin())
        .args(["snapshot", "status", "-w", "json"])
        .arg(p)
        .output()
        .unwrap();
    assert!(!out.status.success(), "etcdutl accepted {}", p.display());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Rewrites the meta in use with `f` applied (checksum recomputed).
fn edit_meta(p: &Path, f: impl FnOnce(&mut Meta)) -> Meta {
    let db = Db::open(p, Some(db_len(p))).unwrap();
    let (slot, ps) = (db.meta_page(), u64::from(db.page_size()));
    let mut m = *db.meta();
    f(&mut m);
    m.checksum = m.sum64();
    patch(p, slot * ps + PAGE_HEADER_SIZE as u64, &m.encode());
    m
}

/// Root page id of bucket `name` (non-inline).
fn bucket_root(p: &Path, name: &[u8]) -> u64 {
    let db = Db::open(p, Some(db_len(p))).unwrap();
    let m = db.meta();
    let (entries, _) = db
        .bucket_contents(&page::encode_bucket_header(m.root, m.sequence), 0)
        .unwrap();
    let e = entries.iter().find(|e| e.key == name).unwrap();
    page::bucket_header(&e.value, 0, name).unwrap().0
}

#[test]
fn base_is_sound() {
    let (_d, p) = copy("base.db");
    assert_eq!(verify_file(&p, Some(db_len(&p))).unwrap(), base().status);
}

#[test]
fn truncated_file_is_refused() {
    let (_d, p) = copy("t.db");
    let full = db_len(&p);
    let cut = (full / 2) & !4095;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(cut)
        .unwrap();
    let err = status_file(&p).unwrap_err();
    assert!(
        matches!(err, SnapshotError::Truncated { expected, actual, .. } if expected == full && actual == cut),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "{}: snapshot is truncated: the bbolt meta page says the db is {full} bytes but only {cut} bytes are present; the file is incomplete, take or download the snapshot again",
            p.display()
        )
    );
    // An odd length (not a page multiple, no trailer by size) is truncated too.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(cut + 100)
        .unwrap();
    assert!(matches!(
        status_file(&p).unwrap_err(),
        SnapshotError::Truncated { .. }
    ));
    // Shorter than a meta page.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(40)
        .unwrap();
    let err = status_file(&p).unwrap_err().to_string();
    assert!(
        err.contains("not a bbolt database (only 40 bytes, too small for a bbolt meta page)"),
        "{err}"
    );
}

#[test]
fn bad_trailer_is_refused() {
    let (_d, p) = copy("trailer.db");
    let len = std::fs::metadata(&p).unwrap().len();
    let mut last = read_at(&p, len - 1, 1);
    last[0] ^= 0xff;
    patch(&p, len - 1, &last);
    // Like etcdctl, plain status does not hash the trailer.
    assert_eq!(status_file(&p).unwrap(), base().status);
    let err = acquire_file(&p, TrailerRule::Required).unwrap_err();
    let AcquireError::TrailerMismatch {
        expected, actual, ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_ne!(expected, actual);
    assert!(
        err.to_string()
            .contains("sha256 trailer does not match its content"),
        "{err}"
    );
}

#[test]
fn flipped_value_byte_changes_hash_and_fails_trailer() {
    let (_d, p) = copy("flip.db");
    // A byte inside the 1 MiB value: the structure is intact, only the data differ.
    let b = base();
    let db = Db::open(&p, Some(db_len(&p))).unwrap();
    let off = db.size() / 2 + 1234;
    drop(db);
    let mut x = read_at(&p, off, 1);
    x[0] ^= 0x01;
    patch(&p, off, &x);
    assert!(matches!(
        acquire_file(&p, TrailerRule::Required).unwrap_err(),
        AcquireError::TrailerMismatch { .. }
    ));
    // Without the trailer check the structure passes but the status hash differs.
    match verify_file(&p, Some(db_len(&p))) {
        Ok(s) => assert_ne!(
            s.hash, b.status.hash,
            "a flipped data byte must change the hash"
        ),
        Err(e) => assert!(matches!(e, SnapshotError::Corrupt { .. }), "{e}"),
    }
}

#[test]
fn flipped_page_type_is_corrupt() {
    let (_d, p) = copy("type.db");
    let root = bucket_root(&p, b"key");
    let ps = u64::from(Db::open(&p, Some(db_len(&p))).unwrap().page_size());
    patch(&p, root * ps + 8, &[0x10, 0x00]); // flags: freelist
    let err = verify_file(&p, Some(db_len(&p))).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("bbolt page {root}: invalid type: freelist (expected branch or leaf); the snapshot is corrupt, take a new one")
    );
    etcdutl_status_fails(&p);
}

#[test]
fn element_count_beyond_page_is_corrupt() {
    let (_d, p) = copy("count.db");
    let root = bucket_root(&p, b"key");
    let ps = u64::from(Db::open(&p, Some(db_len(&p))).unwrap().page_size());
    patch(&p, root * ps + 10, &0xFFF0u16.to_le_bytes());
    let err = verify_file(&p, Some(db_len(&p))).unwrap_err();
    assert!(
        matches!(err, SnapshotError::Corrupt { page, .. } if page == root),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("65520 elements need 1048336 bytes but the page has 4096"),
        "{err}"
    );
}

#[test]
fn wrong_page_id_in_header_is_corrupt() {
    let (_d, p) = copy("id.db");
    let root = bucket_root(&p, b"key");
    let ps = u64::from(Db::open(&p, Some(db_len(&p))).unwrap().page_size());
    patch(&p, root * ps, &(root + 1).to_le_bytes());
    let err = verify_file(&p, Some(db_len(&p))).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "bbolt page {root}: page header says id {}",
            root + 1
        )),
        "{err}"
    );
}

/// A flipped byte in a meta page's header (the meta checksum does not cover it): etcdutl
/// 3.5.30 panics on the page check of the meta it reads ("self identifies as 255"; a snapshot's two
/// metas have the same txid, so it reads page 0). Refused here for either meta page: no
/// bbolt writer leaves a meta header other than its own id and the meta flag.
#[test]
fn meta_page_header_byte_flipped_is_corrupt() {
    for pg in [0u64, 1] {
        let (_d, p) = copy(&format!("meta-hdr-{pg}.db"));
        let ps = u64::from(Db::open(&p, Some(db_len(&p))).unwrap().page_size());
        let b = read_at(&p, pg * ps, 1);
        patch(&p, pg * ps, &[b[0] ^ 0xff]);
        let err = Db::open(&p, Some(db_len(&p))).err().map(|e| e.to_string());
        let err = err.unwrap_or_else(|| verify_file(&p, Some(db_len(&p))).unwrap_err().to_string());
        assert!(
            err.contains(&format!("bbolt page {pg}: meta page header says id")),
            "{err}"
        );
        if pg == 0 {
            // etcdutl 3.5.30 (bbolt 1.3.11 checks page ids; 3.5.1's bbolt does not).
            let out = Command::new(etcdutl3530_bin())
                .args(["snapshot", "status", "-w", "json"])
                .arg(&p)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && text.contains("identifies as"),
                "{text}"
            );
        }
    }
}

#[test]
fn page_reachable_twice_is_corrupt() {
    let (_d, p) = copy("twice.db");
    let root = bucket_root(&p, b"key");
    let ps = u64::from(Db::open(&p, Some(db_len(&p))).unwrap().page_size());
    let buf = read_at(&p, root * ps, ps as usize);
    let h = PageHeader::parse(&buf, root).unwrap();
    assert_eq!(
        h.flags,
        page::BRANCH_PAGE_FLAG,
        "5000 keys make a branch root"
    );
    let first = page::branch_elem(&buf, 0, root).unwrap().pgid;
    // Element 1 points to element 0's child.
    patch(
        &p,
        root * ps + PAGE_HEADER_SIZE as u64 + 16 + 8,
        &first.to_le_bytes(),
    );
    let err = verify_file(&p, Some(db_len(&p))).unwrap_err().to_string();
    assert_eq!(err, format!("bbolt page {first}: multiple references (page reachable twice); the snapshot is corrupt, take a new one"));
    let theirs = etcdutl_status_fails(&p);
    assert!(
        theirs.contains("multiple references") || theirs.contains("needs to be"),
        "{theirs}"
    );
}

#[test]
fn unreachable_page_without_freelist_is_free_like_bbolt() {
    // etcd opens bbolt with NoFreelistSync: snapshots carry no freelist, and bbolt (like
    // us) counts every unreachable page as free.
    let (_d, p) = copy("nofree.db");
    let len = db_len(&p);
    let m = edit_meta(&p, |m| {
        assert_eq!(m.freelist, page::PGID_NO_FREELIST);
        m.pgid += 1
    });
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len + u64::from(m.page_size))
        .unwrap();
    let s = verify_file(&p, None).unwrap();
    assert_eq!(
        (s.hash, s.total_size),
        (base().status.hash, base().status.total_size + 4096)
    );
}

#[test]
fn unreachable_unfreed_page_is_corrupt() {
    // Give the db a synced (empty) freelist at page hwm, and one more page that is neither
    // reachable nor free.
    let (_d, p) = copy("unfreed.db");
    let len = db_len(&p);
    let db = Db::open(&p, Some(len)).unwrap();
    let hwm = db.meta().pgid;
    let free = db.free_pages().unwrap();
    assert!(free.len() < 500, "{free:?}");
    let with = |extra: &[u64]| {
        let mut ids = free.clone();
        ids.extend_from_slice(extra);
        ids.sort();
        let mut fl = vec![0u8; 4096];
        page::write_freelist(&mut fl, hwm, 0, &ids);
        fl
    };
    let fl = with(&[]);
    drop(db);
    let root = bucket_root(&p, b"key");
    edit_meta(&p, |m| {
        m.freelist = hwm;
        m.pgid = hwm + 2;
    });
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len + 2 * 4096)
        .unwrap();
    patch(&p, hwm * 4096, &fl);
    let err = verify_file(&p, None).unwrap_err().to_string();
    assert_eq!(
        err,
        format!("bbolt page {}: unreachable unfreed (neither in a bucket nor in the freelist); the snapshot is corrupt, take a new one", hwm + 1)
    );
    let theirs = etcdutl_status_fails(&p);
    assert!(
        theirs.contains(&format!("page {}: unreachable unfreed", hwm + 1)),
        "{theirs}"
    );
    // Listing it in the freelist makes the db sound again.
    patch(&p, hwm * 4096, &with(&[hwm + 1]));
    assert_eq!(verify_file(&p, None).unwrap().hash, base().status.hash);
    // Listing a reachable page as free is corrupt.
    patch(&p, hwm * 4096, &with(&[root, hwm + 1]));
    let err = verify_file(&p, None).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("bbolt page {root}: reachable freed")),
        "{err}"
    );
    // A freed id twice.
    patch(&p, hwm * 4096, &with(&[hwm + 1, hwm + 1]));
    let err = verify_file(&p, None).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("bbolt page {}: page freed twice", hwm + 1)),
        "{err}"
    );
}

#[test]
fn broken_meta_falls_back_then_refuses() {
    let (_d, p) = copy("meta.db");
    let len = db_len(&p);
    let db = Db::open(&p, Some(len)).unwrap();
    let (slot, ps) = (db.meta_page(), u64::from(db.page_size()));
    drop(db);
    // Break the checksum of the meta in use: bbolt falls back to the other one.
    let off = slot * ps + PAGE_HEADER_SIZE as u64 + 56;
    let mut c = read_at(&p, off, 1);
    c[0] ^= 0xff;
    patch(&p, off, &c);
    let db = Db::open(&p, Some(len)).unwrap();
    assert_eq!(db.meta_page(), 1 - slot);
    assert_eq!(db.check_and_status().unwrap(), base().status);
    // Break the other one too.
    let off = (1 - slot) * ps + PAGE_HEADER_SIZE as u64;
    patch(&p, off, &[0, 0, 0, 0]);
    let err = verify_file(&p, Some(len)).unwrap_err();
    assert!(matches!(err, SnapshotError::NotBbolt { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("not a bbolt database (meta page"), "{msg}");
    assert!(
        msg.contains("meta checksum mismatch") && msg.contains("meta page 1: bad magic 0x00000000"),
        "{msg}"
    );
}

#[test]
fn garbage_is_not_bbolt() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("garbage.db");
    std::fs::write(&p, vec![0x5au8; 3 * 4096]).unwrap();
    let err = status_file(&p).unwrap_err().to_string();
    assert!(
        err.contains("not a bbolt database (meta page 0: bad magic 0x5a5a5a5a"),
        "{err}"
    );
    assert!(
        err.ends_with("expected an etcd snapshot (etcdctl snapshot save) or a member/snap/db file"),
        "{err}"
    );
    let missing = acquire_file(&d.path().join("nope.db"), TrailerRule::Skip).unwrap_err();
    assert!(matches!(missing, AcquireError::Io { .. }), "{missing:?}");
    assert!(
        missing
            .to_string()
            .contains("nope.db: No such file or directory"),
        "{missing}"
    );
}

/// Random byte flips anywhere in the db never panic: every outcome is Ok or a typed error.
#[test]
fn random_flips_never_panic() {
    let (_d, p) = copy("fuzz.db");
    let orig = std::fs::read(&p).unwrap();
    let len = db_len(&p);
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..300 {
        let mut data = orig.clone();
        for _ in 0..4 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            // Bias towards page headers and element tables (first 64 bytes of pages).
            let page = (seed >> 20) % (len / 4096);
            let off = page * 4096 + (seed % 96);
            data[off as usize] ^= (seed >> 8) as u8 | 1;
        }
        std::fs::write(&p, &data).unwrap();
        let r = std::panic::catch_unwind(|| verify_file(&p, Some(len)));
        assert!(r.is_ok(), "panic on a corrupted file");
    }
}
