//! A store that cannot be poisoned (issue 11), through the binary against a real etcd and a
//! local store: broken manifests (truncated, oversized, pointing at another backup's data or at
//! an unrelated object) are listed as BROKEN, make `verify --all` fail, and `prune` deletes
//! nothing of theirs; manifests written with a clock two days behind or ahead are ordered by
//! revision (`latest`, keep_last) and flagged when future-dated; `orphan_grace` is validated.

use std::path::{Path, PathBuf};

use crate::common::*;
use etcd_lifeboat::store::manifest::{backup_id, Manifest};
use serde_json::Value;

fn json(out: &[u8]) -> Value {
    serde_json::from_slice(out)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(out)))
}

/// Config with a local store at `store`, keep_last 1 (all other rules off) and a one-hour
/// orphan grace, in a file named after the store's directory (also used by hostile_store).
pub(crate) fn config(etcd: &Etcd, store: &Path) -> PathBuf {
    let p = etcd.dir.path().join(format!(
        "integrity-{}.yaml",
        store.file_name().unwrap().to_string_lossy()
    ));
    let yaml = etcd.config_yaml(store)
        + "retention:\n  keep_last: 1\n  keep_hourly: 0\n  keep_daily: 0\n  keep_weekly: 0\n  keep_monthly: 0\n  orphan_grace: 1h\n";
    std::fs::write(&p, yaml).unwrap();
    p
}

fn run(cfg: &Path, args: &[&str]) -> std::process::Output {
    lifeboat()
        .arg("--config")
        .arg(cfg)
        .args(args)
        .output()
        .unwrap()
}

/// Takes `n` backups, writing a key before each so that revisions differ. Returns their
/// manifests, oldest first.
async fn backups(etcd: &Etcd, cfg: &Path, n: usize) -> Vec<Manifest> {
    let mut client = etcd.client().await;
    let mut out = Vec::new();
    for i in 0..n {
        client
            .put(format!("k{i}"), vec![b'x'; 2000], None)
            .await
            .unwrap();
        let o = run(cfg, &["backup", "--no-progress", "-o", "json"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        out.push(serde_json::from_slice::<Manifest>(&o.stdout).unwrap());
    }
    out
}

fn at(store: &Path, key: &str) -> PathBuf {
    store.join(key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_manifests_are_listed_fail_verify_and_prune_deletes_nothing_of_theirs() {
    let etcd = Etcd::start(EtcdOpts::default());
    let store = etcd.dir.path().join("store");
    let cfg = config(&etcd, &store);
    let ms = backups(&etcd, &cfg, 3).await;
    let (oldest, middle, newest) = (&ms[0], &ms[1], &ms[2]);
    let c = &newest.cluster_id;

    // 1. The oldest backup's manifest truncated (a half-written or damaged object).
    let oldest_manifest = at(&store, &format!("{c}/{}.json", oldest.id));
    let text = std::fs::read_to_string(&oldest_manifest).unwrap();
    std::fs::write(&oldest_manifest, &text[..text.len() / 2]).unwrap();
    // 2. A manifest of its own id whose data_key names the newest backup's data.
    let mut evil = newest.clone();
    evil.id = backup_id(newest.started_at - chrono::Duration::days(30), 1);
    evil.revision = 1;
    let evil_key = format!("{c}/{}.json", evil.id);
    std::fs::write(at(&store, &evil_key), evil.to_json()).unwrap();
    // 3. One pointing at an unrelated object in the prefix.
    std::fs::write(at(&store, "notes.txt"), b"not a backup").unwrap();
    let mut evil2 = evil.clone();
    evil2.id = backup_id(newest.started_at - chrono::Duration::days(31), 1);
    evil2.data_key = "notes.txt".parse().unwrap();
    let evil2_key = format!("{c}/{}.json", evil2.id);
    std::fs::write(at(&store, &evil2_key), evil2.to_json()).unwrap();
    // 4. An oversized *.json (200 MB, sparse; never read) with a data object beside it.
    let big_key = format!("{c}/20200101T000000Z-r0000000000000001.json");
    std::fs::File::create(at(&store, &big_key))
        .unwrap()
        .set_len(200 << 20)
        .unwrap();
    let big_data = at(
        &store,
        &format!("{c}/20200101T000000Z-r0000000000000001.db.zst"),
    );
    std::fs::write(&big_data, b"data beside an unreadable manifest").unwrap();
    std::process::Command::new("touch")
        .args(["-d", "2 days ago"])
        .arg(&big_data)
        .status()
        .unwrap();

    // list: the two intact backups, then a BROKEN section naming each with its reason.
    let o = run(&cfg, &["list"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(table.contains("BROKEN (4 manifests not trusted"), "{table}");
    assert!(
        table.contains(&format!("BROKEN  {c}/{}.json  not a manifest: ", oldest.id)),
        "{table}"
    );
    assert!(
        table.contains(&format!(
            "BROKEN  {evil_key}  its data_key field names {c}/{}.db.zst",
            newest.id
        )),
        "{table}"
    );
    assert!(
        table.contains(&format!(
            "BROKEN  {evil2_key}  its data_key field names notes.txt"
        )),
        "{table}"
    );
    assert!(
        table.contains(&format!(
            "BROKEN  {big_key}  209715200 bytes, more than the 1048576 a manifest may have; not read"
        )),
        "{table}"
    );
    // The 200 MB object is not read: `list` stays small (GNU time's peak RSS, KiB).
    let bin = assert_cmd::cargo::cargo_bin("etcd-lifeboat");
    let timed = std::process::Command::new("/usr/bin/time")
        .args(["-f", "%M"])
        .arg(&bin)
        .args(["--config", cfg.to_str().unwrap(), "list"])
        .output()
        .unwrap();
    assert!(timed.status.success());
    let stderr = String::from_utf8_lossy(&timed.stderr);
    let rss_kib: u64 = stderr.lines().last().unwrap().trim().parse().unwrap();
    assert!(
        rss_kib < 64 * 1024,
        "list took {rss_kib} KiB with a 200 MB *.json in the store"
    );
    let list = json(&run(&cfg, &["list", "-o", "json"]).stdout);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 6, "{list:?}");
    assert_eq!(list[0]["id"], newest.id.as_str());
    assert_eq!(list[0]["status"], "ok");
    assert_eq!(list[1]["id"], middle.id.as_str());
    let broken: Vec<&str> = list
        .iter()
        .filter(|e| e["status"] == "broken")
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(broken.len(), 4, "{list:?}");

    // verify --all fails, naming the broken manifests.
    let o = run(&cfg, &["verify", "--all"]);
    assert!(
        !o.status.success(),
        "verify --all passed with broken manifests"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("4 broken manifests in the store"), "{err}");
    assert!(err.contains(&evil_key), "{err}");
    // A single intact backup still verifies.
    let o = run(&cfg, &["verify", &newest.id]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // prune (keep_last 1): removes the middle backup only; says what it left.
    let o = run(&cfg, &["prune"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("prune: left 4 broken manifests: "), "{out}");
    for kept in [
        format!("{c}/{}.json", oldest.id),
        format!("{c}/{}.db.zst", oldest.id),
        format!("{c}/{}.json", newest.id),
        format!("{c}/{}.db.zst", newest.id),
        evil_key.clone(),
        evil2_key.clone(),
        big_key.clone(),
        "notes.txt".to_string(),
    ] {
        assert!(at(&store, &kept).exists(), "prune deleted {kept}:\n{out}");
    }
    assert!(
        big_data.exists(),
        "data beside a broken manifest is no orphan"
    );
    for gone in [
        format!("{c}/{}.json", middle.id),
        format!("{c}/{}.db.zst", middle.id),
    ] {
        assert!(!at(&store, &gone).exists(), "{gone} not pruned:\n{out}");
    }
    // The newest backup is still intact.
    let o = run(&cfg, &["verify", "latest"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Moves backup `m` to a new id made from `started` (as if written by a host with that clock):
/// renames the data object, rewrites the manifest.
fn reclock(store: &Path, m: &Manifest, started: chrono::DateTime<chrono::Utc>) -> Manifest {
    let c = &m.cluster_id;
    let mut n = m.clone();
    let shift = started - m.started_at;
    n.started_at = started;
    n.finished_at = m.finished_at + shift;
    n.id = backup_id(started, m.revision);
    n.data_key = n.derived_data_key().unwrap();
    std::fs::rename(
        at(store, &format!("{c}/{}.db.zst", m.id)),
        at(store, n.data_key.as_str()),
    )
    .unwrap();
    std::fs::remove_file(at(store, &format!("{c}/{}.json", m.id))).unwrap();
    std::fs::write(at(store, &format!("{c}/{}.json", n.id)), n.to_json()).unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_clocks_order_by_revision_and_future_dated_backups_are_flagged() {
    let etcd = Etcd::start(EtcdOpts::default());
    let store = etcd.dir.path().join("store");
    let cfg = config(&etcd, &store);
    let ms = backups(&etcd, &cfg, 4).await;
    // The newest (highest revision) written by a host two days behind; the oldest by one two
    // days ahead.
    let behind = reclock(&store, &ms[3], ms[3].started_at - chrono::Duration::days(2));
    let ahead = reclock(&store, &ms[0], ms[0].started_at + chrono::Duration::days(2));

    let list = json(&run(&cfg, &["list", "-o", "json"]).stdout);
    let revs: Vec<i64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["revision"].as_i64().unwrap())
        .collect();
    assert_eq!(
        revs,
        [
            ms[3].revision,
            ms[2].revision,
            ms[1].revision,
            ms[0].revision
        ],
        "ordered by revision whatever the clocks"
    );
    assert_eq!(list[0]["id"], behind.id.as_str());
    assert_eq!(list[3]["id"], ahead.id.as_str());
    assert_eq!(list[3]["status"], "future");
    assert_eq!(list[0]["status"], "ok");
    let table = String::from_utf8_lossy(&run(&cfg, &["list"]).stdout).into_owned();
    let line = table.lines().find(|l| l.starts_with(&ahead.id)).unwrap();
    assert!(line.contains("FUTURE-DATED (clock ahead by "), "{table}");

    // `verify latest` picks the highest revision (the backup written two days "ago").
    let o = run(&cfg, &["verify", "latest", "-o", "json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(json(&o.stdout)[0]["id"], behind.id.as_str());

    // prune, keep_last 1: keeps the highest revision, not the one with the latest clock.
    let o = run(&cfg, &["prune", "-o", "json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let list = json(&run(&cfg, &["list", "-o", "json"]).stdout);
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [behind.id.as_str()]);
    assert!(at(&store, behind.data_key.as_str()).exists());
    assert!(!at(&store, ahead.data_key.as_str()).exists());
}

#[test]
fn orphan_grace_must_cover_a_backup_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    let base = format!(
        "etcd:\n  endpoints: [\"http://127.0.0.1:2379\"]\n  snapshot_timeout: 45m\nstorage:\n  backend: local\n  local:\n    path: {}\n",
        dir.path().join("s").display()
    );
    std::fs::write(&cfg, base.clone() + "retention:\n  orphan_grace: 1h\n").unwrap();
    let o = run(&cfg, &["config", "check"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("retention.orphan_grace"), "{err}");
    assert!(err.contains("at least 1h 15m"), "{err}");
    assert!(err.contains("etcd.snapshot_timeout"), "{err}");
    std::fs::write(&cfg, base.clone() + "retention:\n  orphan_grace: 75m\n").unwrap();
    let o = run(&cfg, &["config", "check"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::write(&cfg, base.clone() + "verify:\n  cron: \"every day\"\n").unwrap();
    let o = run(&cfg, &["config", "check"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("verify.cron"), "{err}");
    std::fs::write(
        &cfg,
        base + "verify:\n  cron: \"\"\nstore:\n  future_tolerance: 0s\n",
    )
    .unwrap();
    let o = run(&cfg, &["config", "check"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("store.future_tolerance"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_backups_under_object_lock_and_says_when_they_become_deletable() {
    let etcd = Etcd::start(EtcdOpts::default());
    let store = etcd.dir.path().join("store");
    let cfg = config(&etcd, &store);
    let ms = backups(&etcd, &cfg, 3).await;
    let until = chrono::Utc::now() + chrono::Duration::days(30);
    let lock = |m: &Manifest, until: chrono::DateTime<chrono::Utc>| {
        let mut n = m.clone();
        n.object_lock = Some(etcd_lifeboat::store::manifest::ObjectLockInfo {
            mode: "COMPLIANCE".into(),
            retain_until: until,
        });
        std::fs::write(at(&store, n.key().unwrap().as_str()), n.to_json()).unwrap();
        n
    };
    // The oldest is locked for 30 more days; the middle one's lock has expired.
    let locked = lock(&ms[0], until);
    let expired = lock(&ms[1], chrono::Utc::now() - chrono::Duration::days(1));

    let table = String::from_utf8_lossy(&run(&cfg, &["list"]).stdout).into_owned();
    let line = table.lines().find(|l| l.starts_with(&locked.id)).unwrap();
    assert!(
        line.contains(&format!(
            "locked (COMPLIANCE) until {}",
            until.format("%Y-%m-%d %H:%M:%S")
        )),
        "{table}"
    );

    let o = run(&cfg, &["prune"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let when = until.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    assert!(
        out.contains(&format!("Object Lock until {when}: deletable then")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "prune: 1 backups kept under Object Lock; the first becomes deletable at {when}"
        )),
        "{out}"
    );
    assert!(at(&store, locked.key().unwrap().as_str()).exists());
    assert!(at(&store, locked.derived_data_key().unwrap().as_str()).exists());
    assert!(
        !at(&store, expired.key().unwrap().as_str()).exists(),
        "{out}"
    );
    assert!(!at(&store, expired.derived_data_key().unwrap().as_str()).exists());
    let list = json(&run(&cfg, &["list", "-o", "json"]).stdout);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
}
