//! age encryption end to end (issue 10), with keys made by the real `age-keygen` and a real
//! etcd 3.5: the stored object is a standard age file of the zstd stream (decrypted by the
//! real `age` and `zstd`), holds no plaintext, verifies and restores with either of two
//! identities (and an ssh key, and a passphrase-protected identity file), refuses a wrong one
//! cleanly; `status x.age`; a zstd bomb is refused within the
//! manifest's sizes; plaintext backups still verify and restore.

use crate::restore_util;

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use serde_json::Value;

const MARKER: &str = "LIFEBOAT-MARKER-9f3c2a71-secret-value";

fn json(out: &[u8]) -> Value {
    serde_json::from_slice(out)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(out)))
}

fn entries(d: &Path) -> Vec<String> {
    std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// `etcd-lifeboat --config CFG restore --from-store latest --data-dir TARGET EXTRA...`.
fn restore_latest(cfg: &Path, target: &Path, extra: &[&str]) -> std::process::Output {
    lifeboat()
        .arg("--config")
        .arg(cfg)
        .args(["restore", "--from-store", "latest", "--data-dir"])
        .arg(target)
        .args(extra)
        .output()
        .unwrap()
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A cluster with a marker Secret and some bulk, and a config for it.
struct Setup {
    etcd: Etcd,
    store: PathBuf,
    tmp: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let etcd = Etcd::start(EtcdOpts::default());
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async { fill(&etcd.client().await, 300, 2000, "/registry/configmaps/").await });
        etcd.etcdctl_ok(&["put", "/registry/secrets/default/marker", MARKER]);
        let store = etcd.dir.path().join("store");
        let tmp = etcd.dir.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        Setup { etcd, store, tmp }
    }

    /// Config file with `extra` YAML appended (and the private temp dir).
    fn config(&self, name: &str, extra: &str) -> PathBuf {
        let p = self.etcd.dir.path().join(name);
        std::fs::write(
            &p,
            format!(
                "{}backup:\n  temp_dir: {}\n{extra}",
                self.etcd.config_yaml(&self.store),
                self.tmp.display()
            ),
        )
        .unwrap();
        p
    }
}

#[test]
fn encrypted_backup_round_trip_with_two_recipients() {
    let s = Setup::new();
    let keys = s.etcd.dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let (k1, p1) = keygen(&keys, "k1.txt");
    let (k2, p2) = keygen(&keys, "k2.txt");
    let (k3, _p3) = keygen(&keys, "wrong.txt");
    // A third recipient in a recipients file: an ssh-ed25519 key (with its comment).
    let ssh_key = keys.join("id_ed25519");
    let o = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "ops@example", "-f"])
        .arg(&ssh_key)
        .output()
        .expect("ssh-keygen (Debian openssh-client)");
    assert!(o.status.success(), "{o:?}");
    let ssh_pub_line = std::fs::read_to_string(keys.join("id_ed25519.pub")).unwrap();
    let ssh_pub = ssh_pub_line
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let rfile = keys.join("recipients.txt");
    std::fs::write(&rfile, format!("# escrow\n{ssh_pub_line}\n")).unwrap();
    let cfg = s.config(
        "enc.yaml",
        &format!(
            "encryption:\n  age_recipients: [\"{p1}\", \"{p2}\"]\n  age_recipients_file: {}\n",
            rfile.display()
        ),
    );

    // Backup: the manifest says age and lists the two public keys, nothing more.
    let out = lifeboat()
        .args(["--config", cfg.to_str().unwrap(), "backup", "-o", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let m = json(&out.stdout);
    assert_eq!(m["encryption"]["format"], "age-encryption.org/v1");
    // Public keys only, the ssh comment stripped.
    assert_eq!(
        m["encryption"]["recipients"],
        serde_json::json!([p1, p2, ssh_pub])
    );
    let id = m["id"].as_str().unwrap().to_string();
    assert!(m["data_key"].as_str().unwrap().ends_with(".db.zst.age"));
    let manifest_text = std::fs::read_to_string(
        files_under(&s.store)
            .into_iter()
            .find(|p| p.extension().is_some_and(|e| e == "json"))
            .unwrap(),
    )
    .unwrap();
    assert!(!manifest_text.contains("AGE-SECRET-KEY"), "{manifest_text}");

    // The stored object: an age file, no plaintext data object, no marker in its bytes.
    let objs = files_under(&s.store);
    assert!(
        !objs
            .iter()
            .any(|p| p.to_string_lossy().ends_with(".db.zst")),
        "{objs:?}"
    );
    let obj = objs
        .iter()
        .find(|p| p.to_string_lossy().ends_with(".db.zst.age"))
        .expect("encrypted object")
        .clone();
    let bytes = std::fs::read(&obj).unwrap();
    assert!(bytes.starts_with(b"age-encryption.org/v1\n"));
    assert_eq!(bytes.len() as u64, m["stored_bytes"].as_u64().unwrap());
    assert!(
        !bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
        "marker found in the stored object"
    );
    // Nothing left in the temp dir.
    assert!(entries(&s.tmp).is_empty(), "{:?}", entries(&s.tmp));

    // By hand with the standard tools: age -d | zstd -d gives the snapshot of the manifest.
    let by_hand = s.etcd.dir.path().join("by-hand.db");
    let sh = format!(
        "age -d -i '{}' '{}' | zstd -d -q -o '{}'",
        k2.display(),
        obj.display(),
        by_hand.display()
    );
    let o = Command::new("sh").args(["-c", &sh]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let st = json(
        s.etcd
            .etcdctl_ok(&[
                "snapshot",
                "status",
                by_hand.to_str().unwrap(),
                "-w",
                "json",
            ])
            .as_bytes(),
    );
    assert_eq!(st["hash"], m["hash"]);
    assert_eq!(st["revision"], m["revision"]);
    assert_eq!(st["totalKey"], m["total_key"]);
    assert_eq!(st["totalSize"], m["total_size"]);

    // verify with an identity: decrypted and checked.
    let o = lifeboat()
        .args(["--config", cfg.to_str().unwrap(), "verify", "--identity"])
        .arg(&k1)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(&format!("OK    {id}")), "{}", text(&o));
    // Through the environment, comma-separated, the wrong key first.
    let o = lifeboat()
        .args(["--config", cfg.to_str().unwrap(), "verify"])
        .env(
            "ETCD_LIFEBOAT_AGE_IDENTITY_FILE",
            format!("{},{}", k3.display(), k2.display()),
        )
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));

    // The ssh private key is an identity too.
    let o = lifeboat()
        .args(["--config", cfg.to_str().unwrap(), "verify", "--identity"])
        .arg(&ssh_key)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    // A passphrase-protected identity file (the format `age -p` writes: an age file
    // encrypted to an scrypt passphrase whose plaintext is the identity file).
    let protected = keys.join("k1.txt.age");
    {
        let enc = age::Encryptor::with_user_passphrase(age::secrecy::SecretString::from(
            "correct horse".to_string(),
        ));
        let mut w = enc
            .wrap_output(std::fs::File::create(&protected).unwrap())
            .unwrap();
        std::io::Write::write_all(&mut w, &std::fs::read(&k1).unwrap()).unwrap();
        w.finish().unwrap();
    }
    let bin = assert_cmd::cargo::cargo_bin("etcd-lifeboat");
    let verify_protected = |pass: Option<&str>| {
        // setsid: no controlling terminal, so no prompt can be shown.
        let mut c = Command::new("setsid");
        c.arg("-w")
            .arg(&bin)
            .args(["--config", cfg.to_str().unwrap(), "verify", "--identity"])
            .arg(&protected)
            .env_remove("ETCD_LIFEBOAT_AGE_PASSPHRASE")
            .stdin(std::process::Stdio::null());
        if let Some(p) = pass {
            c.env("ETCD_LIFEBOAT_AGE_PASSPHRASE", p);
        }
        c.output().unwrap()
    };
    let o = verify_protected(Some("correct horse"));
    assert!(o.status.success(), "{}", text(&o));
    let o = verify_protected(Some("wrong horse"));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("passphrase is wrong"), "{}", text(&o));
    let o = verify_protected(None);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("ETCD_LIFEBOAT_AGE_PASSPHRASE or run on a terminal"),
        "{}",
        text(&o)
    );

    // Without: non-zero, says the content was not checked; --ciphertext-only accepts.
    let o = lifeboat()
        .args(["--config", cfg.to_str().unwrap(), "verify"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("content was NOT checked"), "{}", text(&o));
    assert!(text(&o).contains("--ciphertext-only"), "{}", text(&o));
    let o = lifeboat()
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "verify",
            "--ciphertext-only",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("NOT checked"), "{}", text(&o));

    // A wrong identity: clear error naming the backup and its recipients; nothing left.
    let o = lifeboat()
        .args(["--config", cfg.to_str().unwrap(), "verify", "--identity"])
        .arg(&k3)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains(&format!("backup {id}"))
            && t.contains(&p1)
            && t.contains(&p2)
            && t.contains(&ssh_pub),
        "{t}"
    );
    assert!(t.contains("none of the identities"), "{t}");
    assert!(entries(&s.tmp).is_empty(), "{:?}", entries(&s.tmp));
    let target = s.etcd.dir.path().join("wrong-restore.etcd");
    let o = restore_latest(&cfg, &target, &["--identity", k3.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains(&p1), "{}", text(&o));
    assert!(!target.exists());
    assert!(
        !entries(s.etcd.dir.path())
            .iter()
            .any(|n| n.starts_with("etcd-lifeboat-")),
        "temp dir left beside the target"
    );

    // status of the encrypted file itself.
    let o = lifeboat()
        .args(["status", "-w", "json", obj.to_str().unwrap(), "--identity"])
        .arg(&k1)
        .env("ETCD_LIFEBOAT_TEMP_DIR", &s.tmp)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let st2 = json(&o.stdout);
    assert_eq!(st2["hash"], m["hash"]);
    assert_eq!(st2["revision"], m["revision"]);
    let o = lifeboat()
        .args(["status", obj.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("--identity"), "{}", text(&o));

    // Restore with the second identity; etcd boots from it and serves the marker.
    let spec = restore_util::MemberSpec::new("restored", s.etcd.dir.path().join("restored.etcd"));
    let ic = format!("restored={}", spec.peer_url());
    let o = restore_latest(
        &cfg,
        &spec.data_dir,
        &[
            "--identity",
            k2.to_str().unwrap(),
            "--name",
            "restored",
            "--initial-cluster",
            &ic,
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let c = restore_util::Cluster::boot(
        restore_util::V::V3_5,
        std::slice::from_ref(&spec),
        "etcd-cluster",
    );
    let got = c.etcdctl_ok(&[
        "get",
        "/registry/secrets/default/marker",
        "--print-value-only",
    ]);
    assert_eq!(got.trim(), MARKER);
    assert!(entries(&s.tmp).is_empty(), "{:?}", entries(&s.tmp));
}

#[test]
fn bad_recipient_is_a_config_error_naming_it() {
    let s = Setup::new();
    let cfg = s.config(
        "bad.yaml",
        "encryption:\n  age_recipients: [\"age1qqqq\"]\n",
    );
    let o = lifeboat()
        .args(["--config", cfg.to_str().unwrap(), "config", "check"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("encryption.age_recipients[0]"),
        "{}",
        text(&o)
    );
}

/// Total bytes of the files under `d`.
fn du(d: &Path) -> u64 {
    files_under(d)
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

#[test]
fn plaintext_backups_still_work_and_a_zstd_bomb_is_refused() {
    let s = Setup::new();
    let cfg = s.config("plain.yaml", "");
    let out = lifeboat()
        .args(["--config", cfg.to_str().unwrap(), "backup", "-o", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let m = json(&out.stdout);
    assert!(m.get("encryption").is_none());
    lifeboat()
        .args(["--config", cfg.to_str().unwrap(), "verify"])
        .assert()
        .success();
    let target = s.etcd.dir.path().join("plain-restore.etcd");
    let o = restore_latest(&cfg, &target, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(target.join("member/snap/db").is_file());

    // The bomb: 512 MiB of zeros compress to a few KiB. The manifest is consistent with the
    // object (size, sha256); only total_size says how far it may expand.
    let obj = files_under(&s.store)
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(".db.zst"))
        .unwrap();
    let mpath = obj.with_file_name(format!("{}.json", m["id"].as_str().unwrap()));
    let total = m["total_size"].as_u64().unwrap();
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 19).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..512 {
        std::io::Write::write_all(&mut enc, &zeros).unwrap();
    }
    let bomb = enc.finish().unwrap();
    assert!(bomb.len() < 1 << 20);
    std::fs::write(&obj, &bomb).unwrap();
    let mut mj: Value = serde_json::from_str(&std::fs::read_to_string(&mpath).unwrap()).unwrap();
    mj["stored_bytes"] = bomb.len().into();
    {
        use sha2::Digest;
        mj["stored_sha256"] = hex::encode(sha2::Sha256::digest(&bomb)).into();
    }
    std::fs::write(&mpath, serde_json::to_vec_pretty(&mj).unwrap()).unwrap();

    // Watch the temp dir while verify runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (tmp, stop2) = (s.tmp.clone(), stop.clone());
    let watcher = std::thread::spawn(move || {
        let mut max = 0;
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            max = max.max(du(&tmp));
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        max
    });
    let o = lifeboat()
        .args(["--config", cfg.to_str().unwrap(), "verify"])
        .output()
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let max = watcher.join().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("decompressed snapshot exceeds the manifest's"),
        "{}",
        text(&o)
    );
    assert!(
        max <= total + 32,
        "temp dir grew to {max} bytes (manifest total_size {total})"
    );
    assert!(entries(&s.tmp).is_empty());
}
