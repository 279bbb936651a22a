//! `backup`, `list`, `verify`, `status` and `config check` driven through the binary against
//! real etcd 3.4 and 3.5 servers on loopback, with a local store.

use std::ffi::OsStr;
use std::path::Path;

use crate::common::*;
use serde_json::Value;

fn json(out: &[u8]) -> Value {
    serde_json::from_slice(out)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(out)))
}

fn manifests(store: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    if let Ok(rd) = std::fs::read_dir(store) {
        for cluster in rd.flatten() {
            if cluster.path().is_dir() {
                for f in std::fs::read_dir(cluster.path()).unwrap().flatten() {
                    if f.path().extension().is_some_and(|e| e == "json") {
                        found.push(f.path());
                    }
                }
            }
        }
    }
    found
}

fn data_objects(store: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    if let Ok(rd) = std::fs::read_dir(store) {
        for cluster in rd.flatten() {
            if cluster.path().is_dir() {
                for f in std::fs::read_dir(cluster.path()).unwrap().flatten() {
                    found.push(f.path());
                }
            }
        }
    }
    found.retain(|p| p.extension().is_none_or(|e| e != "json"));
    found
}

/// Fills etcd with the cases snapshot status must get right: many keys, overwrites, deletes,
/// a lease, a large value.
fn populate(etcd: &Etcd) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = etcd.client().await;
        fill(&client, 500, 200, "/registry/configmaps/").await;
        fill(&client, 50, 200, "/registry/configmaps/").await; // overwrites
        fill(&client, 3, 1 << 20, "/registry/big/").await;
    });
    etcd.etcdctl_ok(&["del", "--prefix", "/registry/configmaps/0000004"]);
    let lease = etcd.etcdctl_ok(&["lease", "grant", "600"]);
    let id = lease.split_whitespace().nth(1).unwrap().to_string();
    etcd.etcdctl_ok(&["put", "--lease", &id, "/registry/leases/x", "held"]);
}

/// Our backup of a quiet cluster equals `etcdctl snapshot save` + `snapshot status` at the
/// same revision, and the stored object verifies.
fn backup_equals_etcdctl(version: Version) {
    let etcd = Etcd::start(EtcdOpts {
        version,
        tls: true,
        ..Default::default()
    });
    populate(&etcd);
    let store = etcd.dir.path().join("store");
    let cfg = etcd.write_config(&store);

    let out = lifeboat_ok(lifeboat().args([
        "--config",
        cfg.to_str().unwrap(),
        "backup",
        "-o",
        "json",
        "--tag",
        "t1",
    ]));
    let m = json(&out.stdout);

    let snap = etcd.dir.path().join("etcdctl.db");
    etcd.etcdctl_ok(&["snapshot", "save", snap.to_str().unwrap()]);
    let st = json(
        etcd.etcdctl_ok(&["snapshot", "status", "-w", "json", snap.to_str().unwrap()])
            .as_bytes(),
    );
    assert_eq!(m["revision"], st["revision"], "manifest {m}\netcdctl {st}");
    assert_eq!(m["hash"], st["hash"], "manifest {m}\netcdctl {st}");
    assert_eq!(m["total_key"], st["totalKey"], "manifest {m}\netcdctl {st}");
    assert_eq!(
        m["total_size"], st["totalSize"],
        "manifest {m}\netcdctl {st}"
    );
    assert_eq!(m["tag"], "t1");
    assert_eq!(m["compression"], "zstd");
    assert_eq!(manifests(&store).len(), 1);

    // `status` on etcdctl's file gives etcdctl's JSON.
    let ours = lifeboat_ok(lifeboat().args(["status", "-w", "json", snap.to_str().unwrap()]));
    let ours = json(&ours.stdout);
    for k in ["hash", "revision", "totalKey", "totalSize"] {
        assert_eq!(ours[k], st[k], "status field {k}: ours {ours} etcdctl {st}");
    }

    // The stored object decompresses to the snapshot and verifies against the manifest.
    let v = lifeboat_ok(lifeboat().args(["--config", cfg.to_str().unwrap(), "verify", "latest"]));
    assert!(
        String::from_utf8_lossy(&v.stdout).contains("OK"),
        "{}",
        String::from_utf8_lossy(&v.stdout)
    );

    // The table `backup` prints is the row `list` shows, NOTE (the tag) included.
    let t = lifeboat_ok(lifeboat().args([
        "--config",
        cfg.to_str().unwrap(),
        "backup",
        "--no-progress",
        "--tag",
        "t2",
    ]));
    let t = String::from_utf8_lossy(&t.stdout);
    assert!(t.contains("NOTE") && t.contains("tag t2"), "{t}");

    // `status` reads the stored .db.zst too and agrees with the manifest.
    let obj = data_objects(&store).pop().unwrap();
    let s2 = json(
        &lifeboat()
            .args(["status", "-w", "json", obj.to_str().unwrap()])
            .output()
            .unwrap()
            .stdout,
    );
    assert_eq!(s2["hash"], m["hash"]);
}

#[test]
fn etcd34_tls_backup_equals_etcdctl_snapshot() {
    backup_equals_etcdctl(Version::V3_4);
}

#[test]
fn etcd35_tls_backup_equals_etcdctl_snapshot() {
    backup_equals_etcdctl(Version::V3_5);
}

#[test]
fn etcd3530_tls_backup_equals_etcdctl_snapshot() {
    backup_equals_etcdctl(Version::V3_5_30);
}

#[test]
fn list_is_newest_first_and_json_has_contract_fields() {
    let etcd = Etcd::start(EtcdOpts::default());
    let store = etcd.dir.path().join("store");
    let cfg = etcd.write_config(&store);
    for i in 0..3 {
        etcd.etcdctl_ok(&["put", "k", &i.to_string()]);
        let tag = format!("before-upgrade-{i}");
        let mut cmd = lifeboat();
        cmd.args(["--config", cfg.to_str().unwrap(), "backup"]);
        if i == 1 {
            cmd.args(["--tag", &tag]);
        }
        cmd.assert().success();
    }
    let out = lifeboat()
        .args(["--config", cfg.to_str().unwrap(), "list", "-o", "json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let list = json(&out.stdout);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 3);
    let revs: Vec<i64> = list
        .iter()
        .map(|m| m["revision"].as_i64().unwrap())
        .collect();
    assert!(
        revs.windows(2).all(|w| w[0] > w[1]),
        "not newest first: {revs:?}"
    );
    for field in [
        "id",
        "cluster_id",
        "member_id",
        "member_name",
        "endpoint",
        "etcd_version",
        "started_at",
        "finished_at",
        "revision",
        "hash",
        "total_key",
        "total_size",
        "raw_sha256",
        "stored_bytes",
        "stored_sha256",
        "compression",
        "tool_version",
    ] {
        assert!(
            !list[0][field].is_null(),
            "manifest lacks {field}: {}",
            list[0]
        );
    }
    assert_eq!(list[0]["member_name"], "m0");
    let table = lifeboat()
        .args(["--config", cfg.to_str().unwrap(), "list"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("ID"), "{text}");
    assert_eq!(text.lines().count(), 4, "{text}");
    // The tagged backup (the middle one) shows its tag in the NOTE column.
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].ends_with("NOTE"), "{text}");
    assert!(lines[2].ends_with("tag before-upgrade-1"), "{text}");
    assert_eq!(list[1]["tag"], "before-upgrade-1");
}

#[test]
fn failover_past_a_dead_endpoint() {
    let mut etcd = Etcd::start(EtcdOpts {
        members: 3,
        ..Default::default()
    });
    etcd.etcdctl_ok(&["put", "a", "1"]);
    let dead = etcd.members[0].client_url.clone();
    etcd.kill_member(0);
    let store = etcd.dir.path().join("store");
    let cfg = etcd.write_config(&store); // lists the dead member first
    let out =
        lifeboat_ok(lifeboat().args(["--config", cfg.to_str().unwrap(), "backup", "-o", "json"]));
    let m = json(&out.stdout);
    assert_ne!(m["endpoint"].as_str().unwrap(), dead);
    assert_eq!(manifests(&store).len(), 1);
}

#[test]
fn all_endpoints_dead_lists_each_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (free_port(), free_port());
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        format!(
            "etcd:\n  endpoints: [\"http://127.0.0.1:{a}\", \"127.0.0.1:{b}\"]\n  dial_timeout: 1s\n  request_timeout: 1s\nstorage:\n  local: {{path: {}}}\n",
            dir.path().join("store").display()
        ),
    )
    .unwrap();
    let out = lifeboat()
        .args(["--config", cfg.to_str().unwrap(), "backup"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("http://127.0.0.1:{a}"))
            && err.contains(&format!("http://127.0.0.1:{b}")),
        "{err}"
    );
    assert!(err.contains("no etcd endpoint could serve"), "{err}");
    assert!(manifests(&dir.path().join("store")).is_empty());
}

#[test]
fn wrong_ca_is_refused_with_a_hint() {
    let etcd = Etcd::start(EtcdOpts {
        version: Version::V3_5,
        tls: true,
        ..Default::default()
    });
    let other = Certs::generate(&etcd.dir.path().join("other-pki"));
    let store = etcd.dir.path().join("store");
    let cfg = etcd.config_yaml(&store).replace(
        etcd.certs.as_ref().unwrap().ca.to_str().unwrap(),
        other.ca.to_str().unwrap(),
    );
    let path = etcd.dir.path().join("wrong-ca.yaml");
    std::fs::write(&path, cfg).unwrap();
    let (code, _, err) = run_with_config(&path, &["backup"]);
    assert_eq!(code, 1);
    assert!(err.contains("ca_file"), "{err}");
    assert!(manifests(&store).is_empty());
}

/// An https:// endpoint on a plain-http etcd: the hint says to use http://.
#[test]
fn https_endpoint_on_plain_http_etcd_hints_at_http() {
    let etcd = Etcd::start(EtcdOpts::default());
    let store = etcd.dir.path().join("store");
    let cfg = etcd
        .config_yaml(&store)
        .replace("http://127.0.0.1", "https://127.0.0.1");
    let path = etcd.dir.path().join("https.yaml");
    std::fs::write(&path, cfg).unwrap();
    let (code, _, err) = run_with_config(&path, &["backup"]);
    assert_eq!(code, 1);
    assert!(err.contains("use an http:// endpoint"), "{err}");
    assert!(manifests(&store).is_empty());
}

#[test]
fn bad_password_fails_and_good_password_works() {
    let etcd = Etcd::start(EtcdOpts::default());
    etcd.etcdctl_ok(&["user", "add", "root:s3cret"]);
    etcd.etcdctl_ok(&["auth", "enable"]);
    let store = etcd.dir.path().join("store");
    let base = etcd.config_yaml(&store);
    let pwfile = etcd.dir.path().join("pw");
    std::fs::write(&pwfile, "wrong\n").unwrap();
    let cfg = etcd.dir.path().join("auth.yaml");
    std::fs::write(
        &cfg,
        base.replace(
            "etcd:\n",
            &format!(
                "etcd:\n  auth: {{username: root, password_file: {}}}\n",
                pwfile.display()
            ),
        ),
    )
    .unwrap();
    let out = lifeboat()
        .args(["--config", cfg.to_str().unwrap(), "backup"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{err}\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(err.contains("authentication failed"), "{err}");
    assert!(manifests(&store).is_empty());

    std::fs::write(&pwfile, "s3cret\n").unwrap();
    lifeboat_ok(lifeboat().args(["--config", cfg.to_str().unwrap(), "backup"]));
    // etcdctl-style environment works too.
    lifeboat()
        .args(["--config", cfg.to_str().unwrap(), "backup"])
        .env("ETCDCTL_USER", "root:s3cret")
        .assert()
        .success();
    assert_eq!(manifests(&store).len(), 2);
}

#[test]
fn corrupted_stored_object_fails_verify() {
    let etcd = Etcd::start(EtcdOpts::default());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async { fill(&etcd.client().await, 200, 1000, "k").await });
    let store = etcd.dir.path().join("store");
    let cfg = etcd.write_config(&store);
    lifeboat()
        .args(["--config", cfg.to_str().unwrap(), "backup"])
        .assert()
        .success();
    lifeboat()
        .args(["--config", cfg.to_str().unwrap(), "verify", "--all"])
        .assert()
        .success();
    let obj = data_objects(&store).pop().unwrap();
    let mut bytes = std::fs::read(&obj).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&obj, &bytes).unwrap();
    let out = lifeboat()
        .args(["--config", cfg.to_str().unwrap(), "verify", "latest"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("FAIL"), "{text}");
    assert!(text.contains("failed verification"), "{text}");
    // Into a reader that closed early (`verify | head`): still exit 1, no panic.
    let (code, err) = run_into_closed_pipe([
        OsStr::new("--config"),
        cfg.as_os_str(),
        OsStr::new("verify"),
        OsStr::new("latest"),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        !err.contains("panicked") && err.contains("failed verification"),
        "{err}"
    );
}

#[test]
fn truncated_or_corrupted_snapshot_file_is_refused_by_status() {
    let etcd = Etcd::start(EtcdOpts::default());
    etcd.etcdctl_ok(&["put", "a", "lifeboat-value-xyz"]);
    let snap = etcd.dir.path().join("s.db");
    etcd.etcdctl_ok(&["snapshot", "save", snap.to_str().unwrap()]);
    let bytes = std::fs::read(&snap).unwrap();
    let trunc = etcd.dir.path().join("trunc.db");
    std::fs::write(&trunc, &bytes[..bytes.len() / 2 + 7]).unwrap();
    let out = lifeboat()
        .args(["status", trunc.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!out.stderr.is_empty());

    // A flipped byte inside a value: bbolt's structure is intact, only the sha256 trailer
    // tells. The default refuses it; --skip-hash-check (etcdctl's behaviour) cannot see it.
    let mut flipped = bytes.clone();
    let pos = flipped
        .windows(18)
        .position(|w| w == b"lifeboat-value-xyz")
        .expect("the value is in the db");
    flipped[pos] = b'L';
    let bad = etcd.dir.path().join("flipped.db");
    std::fs::write(&bad, &flipped).unwrap();
    let out = lifeboat()
        .args(["status", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sha256"), "{err}");
    lifeboat()
        .args(["status", "--skip-hash-check", bad.to_str().unwrap()])
        .assert()
        .success();
}

#[test]
fn unknown_config_key_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        "etcd:\n  endpoints: [\"http://127.0.0.1:2379\"]\nstorage:\n  lcoal: {path: /tmp/x}\n",
    )
    .unwrap();
    for cmd in [vec!["config", "check"], vec!["backup"]] {
        let out = lifeboat()
            .args(["--config", cfg.to_str().unwrap()])
            .args(&cmd)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("lcoal"), "{err}");
    }
    std::fs::write(&cfg, "etcd:\n  tls: {ca_file: /nonexistent/ca.crt}\n").unwrap();
    let out = lifeboat()
        .args(["--config", cfg.to_str().unwrap(), "config", "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("etcd.tls.ca_file"));
}

/// A mistyped local store path is an error for the commands that read the store, not an
/// empty store, and none of them creates it (a dry run writes nothing).
#[test]
fn reading_commands_refuse_a_missing_local_store_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ghost = dir.path().join("ghost");
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        format!("storage:\n  local: {{path: {}}}\n", ghost.display()),
    )
    .unwrap();
    let target = dir.path().join("restored");
    let target = target.to_str().unwrap();
    for cmd in [
        vec!["list"],
        vec!["verify", "latest"],
        vec!["prune", "--dry-run"],
        vec![
            "restore",
            "--from-store",
            "latest",
            "--dry-run",
            "--data-dir",
            target,
        ],
    ] {
        let (code, _, err) = run_with_config(&cfg, &cmd);
        assert_ne!(code, 0, "{cmd:?}");
        assert!(
            err.contains(&format!("store path {} does not exist", ghost.display())),
            "{cmd:?}: {err}"
        );
        assert!(!ghost.exists(), "{cmd:?} created the store directory");
    }
}

/// `list | head`: a reader that closed early ends `list` quietly (exit 0), no panic.
#[test]
fn list_into_a_closed_pipe_exits_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        format!("storage:\n  local: {{path: {}}}\n", store.display()),
    )
    .unwrap();
    let (code, err) =
        run_into_closed_pipe([OsStr::new("--config"), cfg.as_os_str(), OsStr::new("list")]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Runs the binary inside a private mount namespace with `mount_opts` tmpfs on `dir`.
fn in_tmpfs(dir: &Path, mount_opts: &str, args: &[&str]) -> std::process::Output {
    assert!(
        nix_is_root(),
        "this test mounts a tmpfs in a private mount namespace and needs root (CI runs as root)"
    );
    let bin = assert_cmd::cargo::cargo_bin("etcd-lifeboat");
    let script = format!(
        "mount -t tmpfs -o {mount_opts} tmpfs '{}' && exec '{}' \"$@\"",
        dir.display(),
        bin.display()
    );
    std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", &script, "sh"])
        .args(args)
        .output()
        .unwrap()
}

fn nix_is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

#[test]
fn full_or_read_only_temp_dir_fails_cleanly() {
    let etcd = Etcd::start(EtcdOpts::default());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async { fill(&etcd.client().await, 60, 100_000, "k").await }); // ~6 MB db
    let store = etcd.dir.path().join("store");
    let tmp = etcd.dir.path().join("small-tmp");
    std::fs::create_dir(&tmp).unwrap();
    let cfg = etcd.dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        format!(
            "{}backup:\n  temp_dir: {}\n",
            etcd.config_yaml(&store),
            tmp.display()
        ),
    )
    .unwrap();

    let out = in_tmpfs(
        &tmp,
        "size=1m",
        &["--config", cfg.to_str().unwrap(), "backup"],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("temp dir") && err.contains("No space left"),
        "{err}"
    );
    assert!(
        manifests(&store).is_empty() && data_objects(&store).is_empty(),
        "left {:?}",
        data_objects(&store)
    );

    let out = in_tmpfs(&tmp, "ro", &["--config", cfg.to_str().unwrap(), "backup"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("temp dir") && err.contains("Read-only"),
        "{err}"
    );
    assert!(manifests(&store).is_empty() && data_objects(&store).is_empty());
}
