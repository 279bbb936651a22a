//! Reading restore flags from a kubeadm etcd static pod manifest
//! (`/etc/kubernetes/manifests/etcd.yaml`).
//!
//! kubeadm writes etcd's flags as `--flag=value` items of the `etcd` container's `command`
//! (kubeadm `cmd/kubeadm/app/phases/etcd/local.go` `getEtcdCommand`); `args` are read too,
//! and `--flag value` pairs are accepted. The data dir is also mounted as a `hostPath`
//! volume (`etcd-data`), whose path is reported so the operator can keep both in step.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Errors reading a manifest.
#[derive(Debug, thiserror::Error)]
pub enum KubeadmError {
    /// The file cannot be read.
    #[error("cannot read kubeadm manifest {path}: {source}")]
    Io {
        /// The manifest path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a Pod manifest with an etcd container.
    #[error("kubeadm manifest {path}: {message}")]
    Invalid {
        /// The manifest path.
        path: PathBuf,
        /// What is missing or wrong.
        message: String,
    },
}

/// The values a restore takes from the manifest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdManifest {
    /// `--name`.
    pub name: Option<String>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--wal-dir`.
    pub wal_dir: Option<PathBuf>,
    /// `--initial-advertise-peer-urls`.
    pub initial_advertise_peer_urls: Option<String>,
    /// `--initial-cluster`.
    pub initial_cluster: Option<String>,
    /// `--initial-cluster-token`.
    pub initial_cluster_token: Option<String>,
    /// `--initial-cluster-state`.
    pub initial_cluster_state: Option<String>,
    /// hostPath of the volume mounted at the data dir, when there is one.
    pub data_host_path: Option<PathBuf>,
    /// The container image (for the printed instructions).
    pub image: Option<String>,
}

#[derive(Deserialize)]
struct Pod {
    spec: PodSpec,
}
#[derive(Deserialize)]
struct PodSpec {
    #[serde(default)]
    containers: Vec<Container>,
    #[serde(default)]
    volumes: Vec<Volume>,
}
#[derive(Deserialize)]
struct Container {
    #[serde(default)]
    name: String,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default, rename = "volumeMounts")]
    volume_mounts: Vec<VolumeMount>,
}
#[derive(Deserialize)]
struct VolumeMount {
    name: String,
    #[serde(rename = "mountPath")]
    mount_path: String,
}
#[derive(Deserialize)]
struct Volume {
    name: String,
    #[serde(default, rename = "hostPath")]
    host_path: Option<HostPath>,
}
#[derive(Deserialize)]
struct HostPath {
    path: String,
}

/// Reads the manifest at `path`. Errors: unreadable file, not YAML, no etcd container.
pub fn read_manifest(path: &Path) -> Result<EtcdManifest, KubeadmError> {
    let text = std::fs::read_to_string(path).map_err(|e| KubeadmError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    parse_manifest(&text).map_err(|message| KubeadmError::Invalid {
        path: path.to_path_buf(),
        message,
    })
}

/// Parses manifest text; the error says what is missing.
pub fn parse_manifest(text: &str) -> Result<EtcdManifest, String> {
    let pod: Pod =
        crate::config::parse_yaml(text).map_err(|e| format!("not a Pod manifest: {e}"))?;
    let c = pod
        .spec
        .containers
        .iter()
        .find(|c| c.name == "etcd")
        .or_else(|| {
            pod.spec.containers.iter().find(|c| {
                c.command
                    .iter()
                    .chain(&c.args)
                    .any(|a| a.starts_with("--data-dir"))
            })
        })
        .ok_or("no container named etcd in spec.containers")?;
    let items: Vec<&String> = c.command.iter().chain(c.args.iter()).collect();
    let get = |name: &str| -> Option<String> {
        let eq = format!("--{name}=");
        let bare = format!("--{name}");
        let mut found = None;
        for (i, it) in items.iter().enumerate() {
            if let Some(v) = it.strip_prefix(&eq) {
                found = Some(v.to_string());
            } else if **it == bare {
                if let Some(v) = items.get(i + 1) {
                    found = Some(v.to_string());
                }
            }
        }
        found
    };
    let mut m = EtcdManifest {
        name: get("name"),
        data_dir: get("data-dir").map(PathBuf::from),
        wal_dir: get("wal-dir").map(PathBuf::from),
        initial_advertise_peer_urls: get("initial-advertise-peer-urls"),
        initial_cluster: get("initial-cluster"),
        initial_cluster_token: get("initial-cluster-token"),
        initial_cluster_state: get("initial-cluster-state"),
        data_host_path: None,
        image: c.image.clone(),
    };
    if m.data_dir.is_none() {
        return Err("the etcd container has no --data-dir flag".into());
    }
    if let Some(dd) = &m.data_dir {
        let mount = c
            .volume_mounts
            .iter()
            .find(|vm| Path::new(&vm.mount_path) == dd);
        if let Some(vm) = mount {
            m.data_host_path = pod
                .spec
                .volumes
                .iter()
                .find(|v| v.name == vm.name)
                .and_then(|v| v.host_path.as_ref())
                .map(|h| PathBuf::from(&h.path));
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of seed 003 (kubeadm 1.17, etcd 3.4.3).
    const SEED: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  creationTimestamp: null
  labels:
    component: etcd
    tier: control-plane
  name: etcd
  namespace: kube-system
spec:
  containers:
  - command:
    - etcd
    - --advertise-client-urls=https://192.168.1.33:2379
    - --cert-file=/etc/kubernetes/pki/etcd/server.crt
    - --client-cert-auth=true
    - --data-dir=/var/lib/etcd
    - --initial-advertise-peer-urls=https://192.168.1.33:2380
    - --initial-cluster=e1192523-1d5d-43fa-b0ed-80cfffed0de0=https://192.168.1.33:2380
    - --key-file=/etc/kubernetes/pki/etcd/server.key
    - --listen-client-urls=https://127.0.0.1:2379,https://192.168.1.33:2379
    - --listen-metrics-urls=http://127.0.0.1:2381
    - --listen-peer-urls=https://192.168.1.33:2380
    - --name=e1192523-1d5d-43fa-b0ed-80cfffed0de0
    - --snapshot-count=10000
    image: registry.aliyuncs.com/google_containers/etcd:3.4.3-0
    name: etcd
    resources: {}
    volumeMounts:
    - mountPath: /var/lib/etcd
      name: etcd-data
    - mountPath: /etc/kubernetes/pki/etcd
      name: etcd-certs
  hostNetwork: true
  volumes:
  - hostPath:
      path: /etc/kubernetes/pki/etcd
      type: DirectoryOrCreate
    name: etcd-certs
  - hostPath:
      path: /var/lib/etcd
      type: DirectoryOrCreate
    name: etcd-data
status: {}
"#;

    #[test]
    fn reads_seed_manifest() {
        let m = parse_manifest(SEED).unwrap();
        assert_eq!(
            m.name.as_deref(),
            Some("e1192523-1d5d-43fa-b0ed-80cfffed0de0")
        );
        assert_eq!(m.data_dir, Some(PathBuf::from("/var/lib/etcd")));
        assert_eq!(
            m.initial_advertise_peer_urls.as_deref(),
            Some("https://192.168.1.33:2380")
        );
        assert_eq!(
            m.initial_cluster.as_deref(),
            Some("e1192523-1d5d-43fa-b0ed-80cfffed0de0=https://192.168.1.33:2380")
        );
        assert_eq!(m.initial_cluster_token, None);
        assert_eq!(m.data_host_path, Some(PathBuf::from("/var/lib/etcd")));
    }

    #[test]
    fn rejects_other_yaml() {
        assert!(parse_manifest("kind: Pod\nspec:\n  containers: []\n").is_err());
        assert!(parse_manifest("- a\n").is_err());
    }
}
