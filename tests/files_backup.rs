//! Control-plane files (`backup.files`): a pki tree with 0600 keys and a static pod manifest
//! naming an EncryptionConfiguration, backed up with an age recipient beside a real etcd 3.5
//! snapshot; `verify` checks the files object; `restore --from-store latest --files-to OUT
//! --identity K` gives byte-identical files with the same modes; the stored object holds no
//! key bytes; a second extraction into the same OUT is refused; no recipients: exit 2.
//!
//! A store is untrusted: forged files objects (with a manifest recomputed to match) cannot
//! restore setuid or world-writable modes, a symbolic link inside `--files-to DIR` is never
//! written through, and a tar long-name bomb fails `verify` quickly with a short message.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::common::{files_under, keygen, lifeboat, lifeboat_ok, Etcd, EtcdOpts, Version};

fn write(p: &Path, data: &[u8], mode: u32) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Where a source file lands below `out`: its absolute path, re-rooted.
fn under(out: &Path, src: &Path) -> PathBuf {
    out.join(src.strip_prefix("/").unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn files_are_stored_encrypted_and_restored_with_their_modes() {
    let work = tempfile::tempdir().unwrap();
    let host = work.path().join("host");
    let pki = host.join("pki");
    let manifests = host.join("manifests");
    // Random key bytes (so the test can look for them in the stored object).
    let ca_key: Vec<u8> = (0..1700u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    write(&pki.join("ca.key"), &ca_key, 0o600);
    write(
        &pki.join("ca.crt"),
        b"-----BEGIN CERTIFICATE-----\nabc\n",
        0o644,
    );
    write(
        &pki.join("etcd/server.key"),
        b"etcd server key bytes",
        0o600,
    );
    std::fs::set_permissions(pki.join("etcd"), std::fs::Permissions::from_mode(0o750)).unwrap();
    let enc_cfg = host.join("enc/encryption-config.yaml");
    write(
        &enc_cfg,
        b"kind: EncryptionConfiguration\nsecret: c2VjcmV0\n",
        0o600,
    );
    write(
        &manifests.join("kube-apiserver.yaml"),
        format!(
            "spec:\n  containers:\n  - command:\n    - kube-apiserver\n    - --encryption-provider-config={}\n",
            enc_cfg.display()
        )
        .as_bytes(),
        0o600,
    );

    let e = Etcd::start(EtcdOpts {
        version: Version::V3_5,
        ..Default::default()
    });
    e.etcdctl_ok(&["put", "/registry/secrets/x", "v"]);
    let (key, public) = keygen(work.path(), "key.txt");
    let store = work.path().join("store");
    let cfg = work.path().join("cfg.yaml");
    std::fs::write(
        &cfg,
        format!(
            "{}backup:\n  files: [{}, {}]\nencryption:\n  age_recipients: [\"{public}\"]\n",
            e.config_yaml(&store),
            pki.display(),
            manifests.display()
        ),
    )
    .unwrap();

    let out = lifeboat_ok(lifeboat().arg("--config").arg(&cfg).args([
        "backup",
        "--no-progress",
        "-o",
        "json",
    ]));
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = m["files"]["entries"].as_array().unwrap();
    let listed: Vec<&str> = entries
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    // The EncryptionConfiguration named by kube-apiserver.yaml was added automatically.
    assert!(listed.contains(&enc_cfg.to_str().unwrap()), "{listed:?}");
    let ca = entries
        .iter()
        .find(|e| e["path"] == pki.join("ca.key").to_str().unwrap())
        .unwrap();
    assert_eq!(ca["mode"], 0o600);
    use sha2::Digest;
    assert_eq!(ca["sha256"], hex::encode(sha2::Sha256::digest(&ca_key)));

    // Stored encrypted: one .files.tar.zst.age object; no key bytes in it.
    let stored = files_under(&store);
    let files_obj: Vec<&PathBuf> = stored
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(".files.tar.zst.age"))
        .collect();
    assert_eq!(files_obj.len(), 1, "{stored:?}");
    let blob = std::fs::read(files_obj[0]).unwrap();
    assert!(blob.starts_with(b"age-encryption.org/v1"));
    assert_eq!(
        blob.len() as u64,
        m["files"]["stored_bytes"].as_u64().unwrap()
    );
    assert!(!blob.windows(64).any(|w| w == &ca_key[100..164]));
    assert!(!blob.windows(21).any(|w| w == b"etcd server key bytes"));

    // verify with the identity checks the files object too.
    let out = lifeboat_ok(
        lifeboat()
            .arg("--config")
            .arg(&cfg)
            .args(["verify", "latest", "--identity"])
            .arg(&key),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("files "), "{text}");

    // restore --files-to: byte-identical, same modes.
    let dest = work.path().join("out");
    lifeboat_ok(
        lifeboat()
            .arg("--config")
            .arg(&cfg)
            .args(["restore", "--from-store", "latest", "--files-to"])
            .arg(&dest)
            .arg("--identity")
            .arg(&key),
    );
    for src in [
        pki.join("ca.key"),
        pki.join("ca.crt"),
        pki.join("etcd/server.key"),
        manifests.join("kube-apiserver.yaml"),
        enc_cfg.clone(),
    ] {
        let got = under(&dest, &src);
        assert_eq!(
            std::fs::read(&got).unwrap(),
            std::fs::read(&src).unwrap(),
            "{}",
            got.display()
        );
        assert_eq!(mode(&got), mode(&src), "{}", got.display());
    }
    assert_eq!(mode(&under(&dest, &pki.join("etcd"))), 0o750);

    // A second extraction into the same OUT is refused and changes nothing.
    std::fs::write(under(&dest, &pki.join("ca.crt")), b"edited").unwrap();
    let out = lifeboat()
        .arg("--config")
        .arg(&cfg)
        .args(["restore", "--from-store", "latest", "--files-to"])
        .arg(&dest)
        .arg("--identity")
        .arg(&key)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("never overwrites"), "{err}");
    assert_eq!(
        std::fs::read(under(&dest, &pki.join("ca.crt"))).unwrap(),
        b"edited"
    );

    // Without the identity: refused (the content cannot be decrypted).
    let out = lifeboat()
        .arg("--config")
        .arg(&cfg)
        .args(["restore", "--from-store", "latest", "--files-to"])
        .arg(work.path().join("out2"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--identity"), "{err}");
    assert!(files_under(&work.path().join("out2")).is_empty());

    // A flipped byte in the files object fails verify.
    let mut bad = blob.clone();
    let n = bad.len() - 40;
    bad[n] ^= 1;
    std::fs::write(files_obj[0], &bad).unwrap();
    let out = lifeboat()
        .arg("--config")
        .arg(&cfg)
        .args(["verify", "latest", "--identity"])
        .arg(&key)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("FAIL"), "{text}");
}

#[test]
fn files_without_recipients_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let cfg = work.path().join("cfg.yaml");
    std::fs::write(
        &cfg,
        format!(
            "storage:\n  backend: local\n  local:\n    path: {}\nbackup:\n  files: [/etc/kubernetes/pki]\n",
            work.path().join("store").display()
        ),
    )
    .unwrap();
    let out = lifeboat()
        .arg("--config")
        .arg(&cfg)
        .args(["config", "check"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("backup.files"), "{err}");
    assert!(err.contains("encryption.age_recipients"), "{err}");
    let out = lifeboat()
        .arg("--config")
        .arg(&cfg)
        .args(["backup", "--no-progress"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(files_under(&work.path().join("store")).is_empty());

    // files_unencrypted: true says so explicitly: accepted.
    std::fs::write(
        &cfg,
        format!(
            "storage:\n  backend: local\n  local:\n    path: {}\nbackup:\n  files: [/etc/kubernetes/pki]\n  files_unencrypted: true\n",
            work.path().join("store").display()
        ),
    )
    .unwrap();
    lifeboat()
        .arg("--config")
        .arg(&cfg)
        .args(["config", "check"])
        .assert()
        .success();
}

/// A plain (`files_unencrypted: true`) backup of a small host tree beside a real etcd 3.5
/// snapshot, in a local store: what the forging tests start from.
struct Plain {
    work: tempfile::TempDir,
    _etcd: Etcd,
    cfg: PathBuf,
    store: PathBuf,
    host: PathBuf,
}

fn plain_backup() -> Plain {
    let work = tempfile::tempdir().unwrap();
    let host = work.path().join("host");
    write(&host.join("pki/ca.key"), b"KEY", 0o600);
    write(&host.join("pki/etcd/server.crt"), b"CERT", 0o644);
    let e = Etcd::start(EtcdOpts {
        version: Version::V3_5,
        ..Default::default()
    });
    e.etcdctl_ok(&["put", "/registry/secrets/x", "v"]);
    let store = work.path().join("store");
    let cfg = work.path().join("cfg.yaml");
    std::fs::write(
        &cfg,
        format!(
            "{}backup:\n  files: [{}]\n  files_unencrypted: true\n",
            e.config_yaml(&store),
            host.join("pki").display()
        ),
    )
    .unwrap();
    lifeboat_ok(
        lifeboat()
            .arg("--config")
            .arg(&cfg)
            .args(["backup", "--no-progress"]),
    );
    Plain {
        work,
        _etcd: e,
        cfg,
        store,
        host,
    }
}

impl Plain {
    /// Replaces the stored files object with `object` and the manifest's `files` with
    /// `entries` and the object's size and sha256, as someone with write access to the store
    /// can.
    fn forge(&self, object: &[u8], entries: serde_json::Value) {
        let stored = files_under(&self.store);
        let manifest = stored
            .iter()
            .find(|p| p.to_string_lossy().ends_with(".json"))
            .unwrap();
        let files_obj = stored
            .iter()
            .find(|p| p.to_string_lossy().ends_with(".files.tar.zst"))
            .unwrap();
        std::fs::write(files_obj, object).unwrap();
        let mut m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
        use sha2::Digest;
        m["files"] = serde_json::json!({
            "stored_bytes": object.len(),
            "stored_sha256": hex::encode(sha2::Sha256::digest(object)),
            "entries": entries,
        });
        std::fs::write(manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    }

    fn run(&self, args: &[&str], files_to: Option<&Path>) -> std::process::Output {
        let mut cmd = lifeboat();
        cmd.arg("--config").arg(&self.cfg).args(args);
        if let Some(d) = files_to {
            cmd.arg("--files-to").arg(d);
        }
        cmd.output().unwrap()
    }
}

/// A tar header for `path` (GNU format, checksum set by `append_data`).
fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h
}

#[test]
fn forged_setuid_and_world_writable_modes_are_not_restored() {
    let p = plain_backup();
    let run = b"#!/bin/sh\necho owned\n";
    let ok = b"kept as is";
    let mut tar = tar::Builder::new(Vec::new());
    for (path, mode) in [("forged", 0o777), ("forged/bin", 0o1777)] {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        tar.append_data(&mut h, path, std::io::empty()).unwrap();
    }
    for (path, mode, data) in [
        ("forged/bin/run", 0o6777, &run[..]),
        ("forged/bin/ok", 0o640, &ok[..]),
    ] {
        let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
        tar.append_data(&mut h, path, data).unwrap();
    }
    let object = zstd::encode_all(&tar.into_inner().unwrap()[..], 3).unwrap();
    use sha2::Digest;
    let sha = |d: &[u8]| hex::encode(sha2::Sha256::digest(d));
    p.forge(
        &object,
        serde_json::json!([
            {"path": "/forged", "kind": "dir", "mode": 0o777, "size": 0},
            {"path": "/forged/bin", "kind": "dir", "mode": 0o1777, "size": 0},
            {"path": "/forged/bin/ok", "kind": "file", "mode": 0o640, "size": ok.len(), "sha256": sha(ok)},
            {"path": "/forged/bin/run", "kind": "file", "mode": 0o6777, "size": run.len(), "sha256": sha(run)},
        ]),
    );
    // The archive matches its manifest: verify passes (the modes are what the manifest says).
    let out = p.run(&["verify", "latest"], None);
    assert!(out.status.success(), "{out:?}");

    let dest = p.work.path().join("out");
    let out = p.run(&["restore", "--from-store", "latest"], Some(&dest));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(dest.join("forged/bin/run")).unwrap(), run);
    // No setuid, setgid, sticky or group/other write bit; never more than the manifest says.
    assert_eq!(mode(&dest.join("forged")), 0o755);
    assert_eq!(mode(&dest.join("forged/bin")), 0o755);
    assert_eq!(mode(&dest.join("forged/bin/run")), 0o755);
    assert_eq!(mode(&dest.join("forged/bin/ok")), 0o640);
}

#[test]
fn a_symlink_inside_files_to_is_never_written_through() {
    let p = plain_backup();
    // The genuine archive: <host>/pki/ca.key and <host>/pki/etcd/server.crt, re-rooted.
    let elsewhere = p.work.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let dest = p.work.path().join("ft2");
    // dest/<host>/pki -> elsewhere: a link two levels below DIR.
    let link = under(&dest, &p.host.join("pki"));
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    let before = crate::common::paths_under(&dest);

    let out = p.run(&["restore", "--from-store", "latest"], Some(&dest));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "refusing to write through the symbolic link {}",
            link.display()
        )),
        "{err}"
    );
    assert!(err.contains("use an empty directory"), "{err}");
    assert_eq!(
        crate::common::paths_under(&elsewhere),
        vec![elsewhere.clone()]
    );
    // Nothing was added inside DIR either (no staging dir left).
    assert_eq!(crate::common::paths_under(&dest), before);

    // A file where a directory is needed: refused, named.
    let dest2 = p.work.path().join("ft3");
    let file = under(&dest2, &p.host);
    write(&file, b"not a dir", 0o600);
    let out = p.run(&["restore", "--from-store", "latest"], Some(&dest2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(err.contains("not a directory"), "{err}");

    // DIR itself may be a symbolic link the operator made.
    let real = p.work.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let dest3 = p.work.path().join("ft4");
    std::os::unix::fs::symlink(&real, &dest3).unwrap();
    let out = p.run(&["restore", "--from-store", "latest"], Some(&dest3));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::read(under(&real, &p.host.join("pki/ca.key"))).unwrap(),
        b"KEY"
    );
}

/// Peak resident set (VmHWM, bytes) of a running process, polled until it exits; and its
/// output.
fn run_measured(mut cmd: std::process::Command) -> (std::process::Output, u64) {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poll = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0u64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(s) = std::fs::read_to_string(&status) {
                    if let Some(kb) = s
                        .lines()
                        .find_map(|l| l.strip_prefix("VmHWM:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                    {
                        peak = peak.max(kb * 1024);
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            peak
        })
    };
    let out = child.wait_with_output().unwrap();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    (out, poll.join().unwrap())
}

#[test]
fn a_tar_long_name_bomb_fails_verify_quickly_with_a_short_message() {
    let p = plain_backup();
    // A GNU long-name entry ('L', `././@LongLink`) of 256 MiB: about 10 KB compressed. The
    // tar crate reads such a name whole into memory before it returns the entry.
    const BOMB: u64 = 256 << 20;
    let mut enc = zstd::Encoder::new(Vec::new(), 3).unwrap();
    let mut h = header(tar::EntryType::GNULongName, 0o644, BOMB);
    h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
    h.set_cksum();
    use std::io::Write;
    enc.write_all(h.as_bytes()).unwrap();
    let chunk = vec![b'a'; 1 << 20];
    for _ in 0..BOMB / chunk.len() as u64 {
        enc.write_all(&chunk).unwrap();
    }
    // The member the name describes: the old code named it (all 256 MiB) in its error.
    let cert = b"CERT";
    let mut f = header(tar::EntryType::Regular, 0o600, cert.len() as u64);
    f.set_path("forged/x").unwrap();
    f.set_cksum();
    enc.write_all(f.as_bytes()).unwrap();
    enc.write_all(cert).unwrap();
    enc.write_all(&[0u8; 508 + 1024]).unwrap();
    let object = enc.finish().unwrap();
    assert!(object.len() < 100_000, "{}", object.len());
    use sha2::Digest;
    p.forge(
        &object,
        serde_json::json!([{"path": "/forged/x", "kind": "file", "mode": 0o600,
            "size": cert.len(), "sha256": hex::encode(sha2::Sha256::digest(cert))}]),
    );

    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("etcd-lifeboat"));
    for (k, _) in std::env::vars() {
        if k.starts_with("ETCDCTL_") || k.starts_with("ETCD_LIFEBOAT_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("NO_COLOR", "1")
        .arg("--config")
        .arg(&p.cfg)
        .args(["verify", "latest"]);
    let t = std::time::Instant::now();
    let (out, peak) = run_measured(cmd);
    let took = t.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "verify of the bomb: {took:?}, peak RSS {} MiB:\n{text}",
        peak >> 20
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.len() < 8192, "{} bytes of output", text.len());
    assert!(text.contains("FAIL"), "{text}");
    assert!(text.contains("long name"), "{text}");
    assert!(took < std::time::Duration::from_secs(20), "{took:?}");
    // The whole name would be 256 MiB (more while the buffer grows).
    assert!(peak < 150 << 20, "peak RSS {} MiB", peak >> 20);

    // restore --files-to refuses it the same way and writes nothing.
    let dest = p.work.path().join("out");
    let out = p.run(&["restore", "--from-store", "latest"], Some(&dest));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.len() < 8192, "{} bytes of stderr", err.len());
    assert!(files_under(&dest).is_empty());
}
