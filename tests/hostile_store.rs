//! A local store someone else can write to (or a damaged one), through the binary against a
//! real etcd: symbolic links planted in the store are never followed (prune and delete remove
//! nothing outside it, backup writes nothing outside it), a FIFO planted as an object fails
//! `verify` instead of hanging it, files of others in the store are never orphans, and
//! manifest fields with control characters or of any length cannot break or spoof `list`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::common::*;
use crate::store_integrity::config;
use etcd_lifeboat::store::manifest::Manifest;

fn run(cfg: &Path, args: &[&str]) -> std::process::Output {
    lifeboat()
        .arg("--config")
        .arg(cfg)
        .args(args)
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap()
}

fn backup(cfg: &Path) -> Manifest {
    let o = run(cfg, &["backup", "--no-progress", "-o", "json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// A directory outside the store holding two files (one in a subdirectory), dated 3 h ago
/// so that an orphan sweep with a one-hour grace would take them.
fn victim(dir: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let files = vec![
        dir.join("20261130T000000Z-r0000000000000001.db"),
        dir.join("sub/0000000000000002-0000000000000000.delta"),
    ];
    for f in &files {
        std::fs::write(f, b"precious").unwrap();
        age(f);
    }
    files
}

fn age(p: &Path) {
    std::fs::File::options()
        .write(true)
        .open(p)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(3 * 3600))
        .unwrap();
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_planted_in_the_store_are_never_followed() {
    let etcd = Etcd::start(EtcdOpts::default());
    let store = etcd.dir.path().join("store");
    let cfg = config(&etcd, &store);
    let old = backup(&cfg);
    let new = backup(&cfg);
    let c = &new.cluster_id;

    // A link where the old backup's PITR chain directory would be: prune (which deletes the
    // old backup and its chain) and delete must not delete what it points to.
    let outside = etcd.dir.path().join("victim");
    let precious = victim(&outside);
    std::os::unix::fs::symlink(&outside, store.join(format!("{c}/{}.pitr", old.id))).unwrap();
    let o = run(&cfg, &["prune"]);
    assert_ne!(o.status.code(), Some(101), "{}", stderr(&o));
    for f in &precious {
        assert!(
            f.exists(),
            "prune deleted {} outside the store",
            f.display()
        );
    }
    std::os::unix::fs::symlink(&outside, store.join(format!("{c}/{}.pitr", new.id))).unwrap();
    let o = run(&cfg, &["delete", &new.id, "--force"]);
    assert_ne!(o.status.code(), Some(101), "{}", stderr(&o));
    for f in &precious {
        assert!(
            f.exists(),
            "delete deleted {} outside the store",
            f.display()
        );
    }

    // A store whose cluster directory is a link: backup refuses to write through it, and a
    // prune scoped to that cluster reads and deletes nothing there.
    let store2 = etcd.dir.path().join("store2");
    std::fs::create_dir(&store2).unwrap();
    let outside2 = etcd.dir.path().join("victim2");
    let precious2 = victim(&outside2);
    std::os::unix::fs::symlink(&outside2, store2.join(c)).unwrap();
    let cfg2 = config(&etcd, &store2);
    let o = run(&cfg2, &["backup", "--no-progress"]);
    assert!(!o.status.success(), "backup through a link succeeded");
    assert!(
        stderr(&o).contains("is a symbolic link inside the store"),
        "{}",
        stderr(&o)
    );
    let mut left: Vec<_> = files_under(&outside2);
    left.sort();
    assert_eq!(left, precious2, "backup wrote outside the store");
    let o = run(&cfg2, &["prune", "--cluster", c]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("is a symbolic link inside the store"),
        "{}",
        stderr(&o)
    );
    assert_eq!(files_under(&outside2), left);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_planted_as_an_object_fails_verify_instead_of_hanging() {
    let etcd = Etcd::start(EtcdOpts::default());
    let store = etcd.dir.path().join("store");
    let cfg = config(&etcd, &store);
    let m = backup(&cfg);
    let data = store.join(m.data_key.as_str());
    std::fs::remove_file(&data).unwrap();
    let st = std::process::Command::new("mkfifo")
        .arg(&data)
        .status()
        .unwrap();
    assert!(st.success());
    let o = run(&cfg, &["verify", "--all"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(text.contains("is not a regular file"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_files_in_the_store_are_not_orphans() {
    let etcd = Etcd::start(EtcdOpts::default());
    let store = etcd.dir.path().join("store");
    let cfg = config(&etcd, &store);
    let m = backup(&cfg);
    let c = &m.cluster_id;
    // Someone else's files, with backup-like suffixes but not laid out as backups.
    let foreign = [
        store.join("unrelated/deep/inventory.db"),
        store.join("unrelated/photo.files.tar.zst"),
        store.join(format!("{c}/{}.pitr/README", m.id)),
    ];
    // A real orphan: a data object of a backup id whose manifest never came.
    let orphan = store.join(format!("{c}/20261130T000000Z-r0000000000000001.db.zst"));
    for f in foreign.iter().chain([&orphan]) {
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, b"x").unwrap();
        age(f);
    }
    let o = run(&cfg, &["prune"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in &foreign {
        assert!(f.exists(), "prune removed {}", f.display());
    }
    assert!(!orphan.exists(), "the real orphan was kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_escapes_and_cuts_manifest_fields() {
    let etcd = Etcd::start(EtcdOpts::default());
    let store = etcd.dir.path().join("store");
    let cfg = config(&etcd, &store);
    let m = backup(&cfg);
    let key = store.join(format!("{}/{}.json", m.cluster_id, m.id));
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&key).unwrap()).unwrap();
    v["tag"] = format!(
        "t1\u{1b}]0;TITLE\u{7}\u{1b}[31mRED\rFAKE{}",
        "a".repeat(70_000)
    )
    .into();
    v["member_name"] = "m".repeat(200_000).into();
    std::fs::write(&key, serde_json::to_string(&v).unwrap()).unwrap();
    let o = run(&cfg, &["list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        !out.contains('\u{1b}') && !out.contains('\r') && !out.contains('\u{7}'),
        "{out:?}"
    );
    assert!(out.contains("t1\\u{1b}]0;TITLE"), "{out}");
    assert!(out.lines().all(|l| l.chars().count() < 600), "{out}");
    // JSON keeps the field whole (it is escaped by JSON itself).
    let j = list_json(&cfg);
    assert_eq!(
        j[0]["tag"].as_str().unwrap().len(),
        v["tag"].as_str().unwrap().len()
    );
}

/// A store configured at a parent of where backups were written (the top-level storage of a
/// `clusters:` config, whose clusters append `/<name>`): their manifests are not this store's,
/// so they are not BROKEN (which failed verify and set the broken-manifest alert); `list` says
/// where they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_under_a_longer_prefix_are_not_broken_and_are_pointed_at() {
    let etcd = Etcd::start(EtcdOpts::default());
    let store = etcd.dir.path().join("store");
    let cfg = config(&etcd, &store.join("prod-a"));
    backup(&cfg);
    let parent = config(&etcd, &store);
    let o = run(&parent, &["list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("(no backups)") && !out.contains("BROKEN"),
        "{out}"
    );
    assert!(
        stderr(&o).contains("holds backups under prod-a/"),
        "{}",
        stderr(&o)
    );
    // verify: an empty store, not a broken one.
    let o = run(&parent, &["verify", "--all"]);
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(
        text.contains("holds no backups") && !text.contains("BROKEN"),
        "{text}"
    );
}
