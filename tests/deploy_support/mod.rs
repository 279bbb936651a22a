//! Helpers shared by the `tests/deploy_*.rs` test files: repository paths, the external tools
//! (promtool, kubernetes-validate, kubectl for kustomize), rendering kustomizations and the
//! config example rewriting.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_yaml::Value;

/// The repository root (where Cargo.toml is).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Reads a file under the repository root, panicking with its path.
pub fn read(rel: &str) -> String {
    let p = repo().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// Parses a one-document YAML file under the repository root.
pub fn yaml(rel: &str) -> Value {
    serde_yaml::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: not YAML: {e}"))
}

/// `promtool` from $PROMTOOL or PATH. Missing: a failure telling how to install it.
pub fn promtool() -> PathBuf {
    if let Ok(p) = std::env::var("PROMTOOL") {
        return PathBuf::from(p);
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let p = dir.join("promtool");
        if p.is_file() {
            return p;
        }
    }
    panic!("promtool not found on PATH (Debian package prometheus): run scripts/install.sh, or set PROMTOOL")
}

/// `${XDG_CACHE_HOME:-~/.cache}/etcd-lifeboat/REL`, where scripts/install.sh puts the venv
/// and scripts/fetch-kubectl.sh kubectl.
fn cache_path(rel: &str) -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let base = std::env::var("XDG_CACHE_HOME").unwrap_or_else(|_| format!("{home}/.cache"));
    PathBuf::from(base).join("etcd-lifeboat").join(rel)
}

/// `$ENV` if set, else the program `name` of the venv that scripts/install.sh makes.
/// Missing: a failure telling how to install it.
fn venv_bin(env: &str, name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        return PathBuf::from(p);
    }
    let p = cache_path("venv/bin").join(name);
    assert!(
        p.is_file(),
        "{name} not found at {}: run scripts/install.sh, or set {env}",
        p.display()
    );
    p
}

/// `kubernetes-validate` from $KUBERNETES_VALIDATE or the venv that scripts/install.sh makes.
pub fn kubernetes_validate() -> PathBuf {
    venv_bin("KUBERNETES_VALIDATE", "kubernetes-validate")
}

/// Runs `cmd` in the repository root: (exit 0, stdout followed by stderr).
pub fn run_in_repo(cmd: &mut std::process::Command) -> (bool, String) {
    let out = cmd
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Every YAML file under deploy/ (relative paths, sorted): the Kubernetes objects, the
/// kustomization files of bases, components and overlays and kustomize's transformer configs;
/// everything but the Prometheus rule files in deploy/prometheus/.
pub fn manifest_files() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                out.push(p);
            }
        }
    }
    let root = repo();
    let mut files = Vec::new();
    walk(&root.join("deploy"), &mut files);
    let mut rel: Vec<String> = files
        .iter()
        .map(|p| {
            p.strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|p| !p.starts_with("deploy/prometheus/"))
        .collect();
    rel.sort();
    assert!(
        rel.len() >= 10,
        "expected the deploy/ manifests, found {rel:?}"
    );
    rel
}

/// `kind` of a manifest.
pub fn kind(v: &Value) -> &str {
    v["kind"].as_str().unwrap_or("")
}

/// Every etcd-lifeboat config in the repository: `config/*.yaml` and the `config.yaml` key of
/// each ConfigMap under deploy/, as (origin, YAML text).
pub fn config_texts() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(repo().join("config"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    for n in names {
        let rel = format!("config/{n}");
        out.push((rel.clone(), read(&rel)));
    }
    for rel in manifest_files() {
        let v = yaml(&rel);
        if kind(&v) == "ConfigMap" {
            let text = v["data"]["config.yaml"]
                .as_str()
                .unwrap_or_else(|| panic!("{rel}: ConfigMap without data.config.yaml"));
            out.push((format!("{rel} (data.config.yaml)"), text.to_string()));
        }
    }
    out
}

/// Rewrites a config so that the files and directories it names exist: every absolute path
/// under a key ending in `_file` becomes `<tmp>/<path>` and is created as a small file;
/// `backup.temp_dir` and `storage.local.path` become `<tmp>/<path>` directories. Returns the
/// rewritten YAML and the list of (dotted key, original path) rewritten.
pub fn materialize(text: &str, tmp: &Path) -> (String, Vec<(String, String)>) {
    fn walk(v: &mut Value, key: &str, tmp: &Path, done: &mut Vec<(String, String)>) {
        match v {
            Value::Mapping(m) => {
                for (k, child) in m.iter_mut() {
                    let k = k.as_str().unwrap_or("?");
                    let dotted = if key.is_empty() {
                        k.to_string()
                    } else {
                        format!("{key}.{k}")
                    };
                    walk(child, &dotted, tmp, done);
                }
            }
            // `clusters:` entries: keys relative to the entry, as `config check` names them
            // (`clusters[0] (prod-a): etcd.tls.ca_file`).
            Value::Sequence(items) => {
                for item in items {
                    walk(item, "", tmp, done);
                }
            }
            Value::String(s) if s.starts_with('/') => {
                let leaf = key.rsplit('.').next().unwrap();
                let is_file = leaf.ends_with("_file");
                let is_dir = key == "backup.temp_dir" || key == "storage.local.path";
                if !(is_file || is_dir) {
                    return;
                }
                let new = tmp.join(s.trim_start_matches('/'));
                if is_file {
                    std::fs::create_dir_all(new.parent().unwrap()).unwrap();
                    std::fs::write(
                        &new,
                        "placeholder written by tests/deploy_config_examples.rs\n",
                    )
                    .unwrap();
                } else {
                    std::fs::create_dir_all(&new).unwrap();
                }
                done.push((key.to_string(), s.clone()));
                *s = new.to_string_lossy().into_owned();
            }
            _ => {}
        }
    }
    let mut v: Value = serde_yaml::from_str(text).expect("config is YAML");
    let mut done = Vec::new();
    walk(&mut v, "", tmp, &mut done);
    (serde_yaml::to_string(&v).unwrap(), done)
}

/// The image every workload must run: this crate's version.
pub fn expected_image() -> String {
    format!(
        "ghcr.io/etcd-lifeboat/etcd-lifeboat:{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// The Python of the venv that scripts/install.sh makes (for scripts/validate-crds.py);
/// $ETCD_LIFEBOAT_VENV_PYTHON overrides.
pub fn venv_python() -> PathBuf {
    venv_bin("ETCD_LIFEBOAT_VENV_PYTHON", "python")
}

/// `kubectl` (with its built-in kustomize) from $KUBECTL, else the one scripts/fetch-kubectl.sh
/// unpacks into `${XDG_CACHE_HOME:-~/.cache}/etcd-lifeboat/kubectl/usr/bin/kubectl` (Debian's
/// kubectl 1.36). When missing, runs that script once (idempotent); a failure of it fails the
/// test with its output.
pub fn kubectl() -> PathBuf {
    if let Ok(p) = std::env::var("KUBECTL") {
        return PathBuf::from(p);
    }
    static FETCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let p = cache_path("kubectl/usr/bin/kubectl");
    let _guard = FETCH.lock().unwrap_or_else(|e| e.into_inner());
    if !p.is_file() {
        let out = std::process::Command::new("bash")
            .arg(repo().join("scripts/fetch-kubectl.sh"))
            .output()
            .expect("run scripts/fetch-kubectl.sh");
        assert!(
            out.status.success() && p.is_file(),
            "kubectl not found at {} and scripts/fetch-kubectl.sh failed:\n{}{}",
            p.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    p
}

/// `kubectl kustomize DIR` (DIR relative to the repository root or absolute): the rendered
/// objects, in kustomize's order. Panics with kustomize's error when the build fails.
pub fn kustomize(dir: &Path) -> Vec<Value> {
    let out = std::process::Command::new(kubectl())
        .arg("kustomize")
        .arg(dir)
        .current_dir(repo())
        .output()
        .expect("run kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut docs = Vec::new();
    for d in serde_yaml::Deserializer::from_str(&text) {
        let v = <Value as serde::Deserialize>::deserialize(d).unwrap();
        if !v.is_null() {
            docs.push(v);
        }
    }
    docs
}

/// Renders a kustomization written on the fly in a temp dir: `resources` and `components` are
/// directories relative to the repository root (kustomize refuses absolute paths, so they are
/// written relative to the temp dir). `extra` is appended to the kustomization verbatim.
pub fn kustomize_combination(resources: &[&str], components: &[&str], extra: &str) -> Vec<Value> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    let up = "../".repeat(dir.components().count() - 1);
    let root = repo().canonicalize().unwrap();
    let rel = |d: &str| format!("{up}{}/{d}", root.to_string_lossy().trim_start_matches('/'));
    let mut k = String::from(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n",
    );
    for r in resources {
        k += &format!("  - {}\n", rel(r));
    }
    if !components.is_empty() {
        k += "components:\n";
        for c in components {
            k += &format!("  - {}\n", rel(c));
        }
    }
    k += extra;
    std::fs::write(dir.join("kustomization.yaml"), k).unwrap();
    kustomize(&dir)
}

/// `kind/name` of an object, for messages.
pub fn id(v: &Value) -> String {
    format!(
        "{}/{}",
        kind(v),
        v["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// The `config.yaml` of the ConfigMap file `configmap` (relative to the repository root),
/// pointed at etcd `endpoints` with the TLS files `tls` (CA, client certificate, client key)
/// and at a local store `tmp/store` with temp dir `tmp/tmp` (both made here).
pub fn configmap_config(
    configmap: &str,
    endpoints: &[String],
    tls: &[&Path; 3],
    tmp: &Path,
) -> Value {
    let cm = yaml(configmap);
    let mut cfg: Value = serde_yaml::from_str(cm["data"]["config.yaml"].as_str().unwrap()).unwrap();
    let path = |p: &Path| Value::from(p.to_string_lossy().into_owned());
    cfg["etcd"]["endpoints"] = serde_yaml::to_value(endpoints).unwrap();
    cfg["etcd"]["tls"]["ca_file"] = path(tls[0]);
    cfg["etcd"]["tls"]["cert_file"] = path(tls[1]);
    cfg["etcd"]["tls"]["key_file"] = path(tls[2]);
    let store = tmp.join("store");
    let temp = tmp.join("tmp");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::create_dir_all(&temp).unwrap();
    cfg["storage"] = serde_yaml::from_str(&format!(
        "backend: local\nlocal:\n  path: {}\n",
        store.display()
    ))
    .unwrap();
    cfg["backup"]["temp_dir"] = path(&temp);
    cfg
}

/// Writes `cfg` to `tmp/config.yaml` and returns that path.
pub fn write_config(tmp: &Path, cfg: &Value) -> PathBuf {
    let p = tmp.join("config.yaml");
    std::fs::write(&p, serde_yaml::to_string(cfg).unwrap()).unwrap();
    p
}

/// Args of a container of a workload (Deployment, CronJob...), with the mounted config path
/// /etc/etcd-lifeboat/config.yaml (which must be there) replaced by `config`.
pub fn container_args(workload: &Value, container: &str, config: &Path) -> Vec<String> {
    let spec = match workload["kind"].as_str() {
        Some("CronJob") => &workload["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        _ => &workload["spec"]["template"]["spec"],
    };
    let c = ["initContainers", "containers"]
        .iter()
        .flat_map(|k| spec[*k].as_sequence().into_iter().flatten())
        .find(|c| c["name"].as_str() == Some(container))
        .unwrap_or_else(|| panic!("no container {container}"));
    let args: Vec<String> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert!(
        args.iter().any(|a| a == "/etc/etcd-lifeboat/config.yaml"),
        "{container}: {args:?}"
    );
    args.into_iter()
        .map(|a| {
            if a == "/etc/etcd-lifeboat/config.yaml" {
                config.to_string_lossy().into_owned()
            } else {
                a
            }
        })
        .collect()
}

/// The daemon of deploy/daemon/ run as a local process; killed on Drop unless taken out.
pub struct Daemon(pub Option<std::process::Child>);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Daemon {
    /// Starts the Deployment's command line with its ConfigMap's config ([`configmap_config`]
    /// for etcd `endpoint` and `tls`; a backup every 2 s; leader election on, which the
    /// ConfigMap must have) and the Deployment's literal environment as a pod would get it:
    /// `$(POD_IP)` = `pod_ip`, `$(HOST_IP)` = 127.0.0.1, ports 2379 and 9790 mapped to
    /// `endpoint`'s and `port`. Its stderr goes to `tmp/daemon.log`. Does not wait.
    pub fn spawn(endpoint: &str, tls: &[&Path; 3], tmp: &Path, pod_ip: &str, port: u16) -> Daemon {
        let mut cfg = configmap_config(
            "deploy/daemon/configmap.yaml",
            &[endpoint.to_string()],
            tls,
            tmp,
        );
        cfg["schedule"]["cron"] = "*/2 * * * * *".into();
        cfg["leader_election"]["name"] = format!("/etcd-lifeboat-test/{port}").into();
        assert_eq!(cfg["leader_election"]["enabled"].as_bool(), Some(true));
        let config = write_config(tmp, &cfg);
        let dep = yaml("deploy/daemon/deployment.yaml");
        let args = container_args(&dep, "etcd-lifeboat", &config);
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("etcd-lifeboat"));
        for (k, _) in std::env::vars() {
            if k.starts_with("ETCDCTL_") || k.starts_with("ETCD_LIFEBOAT_") {
                cmd.env_remove(k);
            }
        }
        let etcd_port = endpoint.rsplit(':').next().unwrap();
        let mut set = Vec::new();
        for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_sequence()
            .unwrap()
        {
            let Some(v) = e["value"].as_str() else {
                continue;
            };
            let v = v
                .replace("$(POD_IP)", pod_ip)
                .replace("$(HOST_IP)", "127.0.0.1")
                .replace(":2379", &format!(":{etcd_port}"))
                .replace(":9790", &format!(":{port}"));
            let name = e["name"].as_str().unwrap().to_string();
            cmd.env(&name, v);
            set.push(name);
        }
        for var in ["ETCD_LIFEBOAT_HTTP_LISTEN", "ETCDCTL_ENDPOINTS"] {
            assert!(set.iter().any(|s| s == var), "Deployment env: {set:?}");
        }
        let log = std::fs::File::create(tmp.join("daemon.log")).unwrap();
        let child = cmd
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Daemon(Some(child))
    }
}
