//! Every config example (config/*.yaml) and every config embedded in a deploy/ ConfigMap is
//! accepted: in-process by `Config::from_yaml` + `validate`, and by the real binary's
//! `etcd-lifeboat --config FILE config check` (exit 0).
//!
//! The examples name certificate files (/etc/kubernetes/pki/etcd/ca.crt, /etc/etcd/cert/...)
//! that do not exist on a test machine, and `config check` rightly insists that they do. So
//! each test writes a temporary copy whose absolute `*_file` paths, `backup.temp_dir` and
//! `storage.local.path` point into a temp dir where those files and directories are created
//! (`deploy_support::materialize`). Unchanged are all keys and every other value. The
//! unmodified example must fail only on one of those paths (exit 2 naming the key).

use crate::deploy_support::*;
use etcd_lifeboat::config::{Config, ENV_OVERRIDES};

/// The binary with no config-affecting variables from the environment.
fn lifeboat() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("etcd-lifeboat").unwrap();
    for (k, _) in std::env::vars() {
        if k.starts_with("ETCDCTL_") || k.starts_with("ETCD_LIFEBOAT_") || k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    for (k, _) in ENV_OVERRIDES {
        cmd.env_remove(k);
    }
    cmd
}

#[test]
fn the_expected_examples_exist() {
    let names: Vec<String> = config_texts().into_iter().map(|(n, _)| n).collect();
    for want in [
        "config/kubeadm.yaml",
        "config/systemd-cluster.yaml",
        "config/local.yaml",
        "config/daemon.yaml",
        "config/clusters.yaml",
        "deploy/cronjob/configmap.yaml (data.config.yaml)",
        "deploy/daemon/configmap.yaml (data.config.yaml)",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "missing {want} in {names:?}"
        );
    }
}

#[test]
fn examples_parse_and_validate_in_process() {
    for (origin, text) in config_texts() {
        let tmp = tempfile::tempdir().unwrap();
        // Keys and types, on the text as shipped (deny_unknown_fields names a wrong key).
        let shipped = Config::from_yaml(&text, &origin).unwrap_or_else(|e| panic!("{origin}: {e}"));
        let (rewritten, _) = materialize(&text, tmp.path());
        let cfg = Config::from_yaml(&rewritten, &origin)
            .unwrap_or_else(|e| panic!("{origin} (rewritten): {e}"));
        cfg.validate()
            .unwrap_or_else(|e| panic!("{origin}: {e}\n{rewritten}"));
        // Rewriting touched paths only.
        assert_eq!(shipped.etcd.endpoints, cfg.etcd.endpoints, "{origin}");
        assert_eq!(shipped.schedule, cfg.schedule, "{origin}");
        assert_eq!(shipped.retention, cfg.retention, "{origin}");
    }
}

/// The examples cover what the issue asks for.
#[test]
fn examples_have_the_promised_shapes() {
    use etcd_lifeboat::config::Backend;
    let load = |rel: &str| Config::from_yaml(&read(rel), rel).unwrap();
    let kubeadm = load("config/kubeadm.yaml");
    assert_eq!(kubeadm.storage.backend, Backend::S3);
    assert!(
        kubeadm.storage.s3.endpoint.is_some() && kubeadm.storage.s3.force_path_style,
        "S3-compatible store"
    );
    let tls = kubeadm.etcd.tls.unwrap();
    assert!(tls.ca_file.unwrap().starts_with("/etc/kubernetes/pki/etcd"));

    let sysd = load("config/systemd-cluster.yaml");
    assert_eq!(sysd.etcd.endpoints.len(), 2, "two members");
    let tls = sysd.etcd.tls.unwrap();
    assert_eq!(
        tls.cert_file.unwrap().to_str(),
        Some("/etc/etcd/cert/etcd.pem")
    );
    assert_eq!(
        tls.key_file.unwrap().to_str(),
        Some("/etc/etcd/cert/etcd-key.pem")
    );

    assert_eq!(load("config/local.yaml").storage.backend, Backend::Local);
    let daemon = load("config/daemon.yaml");
    assert!(daemon.leader_election.enabled);

    let fleet = load("config/clusters.yaml").clusters();
    let names: Vec<_> = fleet.iter().filter_map(|c| c.name.as_deref()).collect();
    assert_eq!(names, ["prod-a", "prod-b", "staging"]);
    assert!(fleet[0].config.pitr.enabled && !fleet[1].config.pitr.enabled);
    assert_eq!(fleet[1].config.storage.s3.prefix, "fleet/prod-b");
    assert_eq!(fleet[2].config.storage.backend, Backend::Local);
}

/// `etcd-lifeboat --config FILE config check`.
fn config_check(file: &std::path::Path) -> std::process::Output {
    lifeboat()
        .arg("--config")
        .arg(file)
        .args(["config", "check"])
        .output()
        .unwrap()
}

#[test]
fn config_check_accepts_every_example() {
    for (origin, text) in config_texts() {
        let tmp = tempfile::tempdir().unwrap();
        let (rewritten, _) = materialize(&text, tmp.path());
        let file = tmp.path().join("config.yaml");
        std::fs::write(&file, &rewritten).unwrap();
        let out = config_check(&file);
        assert!(
            out.status.success(),
            "{origin}: `config check` exit {:?}\nstdout: {}\nstderr: {}\nconfig:\n{rewritten}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// As shipped, an example can only fail on a file that is missing on this machine (exit 2,
/// message naming the key); with an unknown key added, it fails naming that key. This keeps the
/// test above from passing against a `config check` that accepts anything.
#[test]
fn config_check_names_the_key_it_rejects() {
    for (origin, text) in config_texts() {
        let tmp = tempfile::tempdir().unwrap();
        let (_, rewritten_keys) = materialize(&text, tmp.path());
        let file = tmp.path().join("as-shipped.yaml");
        std::fs::write(&file, &text).unwrap();
        let out = config_check(&file);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            assert_eq!(out.status.code(), Some(2), "{origin}: {stderr}");
            assert!(
                rewritten_keys
                    .iter()
                    .any(|(k, _)| stderr.contains(k.as_str())),
                "{origin}: rejected for something other than a missing file: {stderr}"
            );
        }

        let (rewritten, _) = materialize(&text, tmp.path());
        let bad = rewritten.replacen(
            "etcd:\n",
            "etcd:\n  endpoint_list: [\"https://127.0.0.1:2379\"]\n",
            1,
        );
        assert_ne!(bad, rewritten, "{origin}: no etcd section to break");
        let file = tmp.path().join("bad.yaml");
        std::fs::write(&file, &bad).unwrap();
        let out = config_check(&file);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{origin}: unknown key accepted: {stderr}"
        );
        assert!(
            stderr.contains("endpoint_list"),
            "{origin}: error does not name the key: {stderr}"
        );
    }
}
