//! Control-plane files (`backup.files`): a pki tree with 0600 keys and a static pod manifest
//! naming an EncryptionConfiguration, backed up with an age recipient beside a real etcd 3.5
//! snapshot; `verify` checks the files object; `restore --from-store latest --files-to OUT
//! --identity K` gives byte-identical files with the same modes; the stored object holds no
//! key bytes; a second extraction into the same OUT is refused; no recipients: exit 2.

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
