//! deploy/: Kubernetes manifests validate offline against the Kubernetes schemas
//! (kubernetes-validate --strict), the CRD objects (ServiceMonitor, PrometheusRule) are well
//! formed, the PrometheusRule equals deploy/prometheus/rules.yaml, the rules pass
//! `promtool check rules` and their unit tests, the workloads keep the security and scheduling
//! settings the design asks for, and their command lines parse with the real binary.
//!
//! Needs promtool and kubernetes-validate (scripts/install.sh); a missing tool fails the test.

mod deploy_support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use deploy_support::*;
use serde_yaml::Value;

/// Kubernetes versions validated against: an older supported one and the newest schema.
const K8S_VERSIONS: &[&str] = &["1.31.0", "1.37.0"];
/// Kinds that kubernetes-validate has no schema for; checked structurally below.
const CRD_KINDS: &[&str] = &["ServiceMonitor", "PrometheusRule", "Kustomization"];

fn core_manifests() -> Vec<String> {
    manifest_files()
        .into_iter()
        .filter(|f| !CRD_KINDS.contains(&kind(&yaml(f))))
        .collect()
}

fn run_kubernetes_validate(files: &[String], version: &str) -> (bool, String) {
    let out = Command::new(kubernetes_validate())
        .args(["--strict", "-k", version])
        .args(files)
        .current_dir(repo())
        .output()
        .expect("run kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn manifests_pass_kubernetes_schemas_strict() {
    let files = core_manifests();
    let kinds: BTreeSet<String> = files.iter().map(|f| kind(&yaml(f)).to_string()).collect();
    for k in [
        "CronJob",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ServiceAccount",
        "ConfigMap",
        "Secret",
    ] {
        assert!(kinds.contains(k), "no {k} among {files:?}");
    }
    for v in K8S_VERSIONS {
        let (ok, text) = run_kubernetes_validate(&files, v);
        assert!(ok, "kubernetes-validate -k {v} failed:\n{text}");
        // A kind without a schema is only a WARN with exit 0: demand one pass line per file.
        let passed = text
            .lines()
            .filter(|l| l.starts_with("INFO ") && l.contains(" passed for resource "))
            .count();
        assert_eq!(
            passed,
            files.len(),
            "kubernetes-validate -k {v}: not every file passed:\n{text}"
        );
        assert!(
            text.lines()
                .all(|l| l.trim().is_empty() || (l.starts_with("INFO ") && l.contains(" passed "))),
            "kubernetes-validate -k {v} printed warnings:\n{text}"
        );
    }
}

/// The strict validation is not vacuous: a misspelled field and a wrong type are rejected.
#[test]
fn kubernetes_validate_rejects_broken_manifests() {
    let tmp = tempfile::tempdir().unwrap();
    let good = read("deploy/cronjob/cronjob.yaml");
    let cases = [
        (
            "typo.yaml",
            good.replace("concurrencyPolicy: Forbid", "concurencyPolicy: Forbid"),
        ),
        (
            "type.yaml",
            good.replace(
                "startingDeadlineSeconds: 300",
                "startingDeadlineSeconds: soon",
            ),
        ),
    ];
    for (name, text) in cases {
        assert_ne!(text, good, "{name}: the replacement did not apply");
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        let (ok, out) =
            run_kubernetes_validate(&[p.to_string_lossy().into_owned()], K8S_VERSIONS[1]);
        assert!(
            !ok,
            "{name}: kubernetes-validate accepted a broken CronJob:\n{out}"
        );
    }
}

#[test]
fn promtool_check_rules() {
    let out = Command::new(promtool())
        .args(["check", "rules", "deploy/prometheus/rules.yaml"])
        .current_dir(repo())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool check rules failed:\n{text}");
    assert!(text.contains("SUCCESS: 8 rules found"), "{text}");
}

#[test]
fn promtool_test_rules() {
    let out = Command::new(promtool())
        .args(["test", "rules", "rules_test.yaml"])
        .current_dir(repo().join("deploy/prometheus"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("SUCCESS"),
        "promtool test rules failed:\n{text}"
    );
}

/// Every alert has unit tests where it fires and where it stays quiet.
#[test]
fn every_alert_has_firing_and_quiet_unit_tests() {
    let rules = yaml("deploy/prometheus/rules.yaml");
    let tests = yaml("deploy/prometheus/rules_test.yaml");
    let mut fires = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for t in tests["tests"].as_sequence().unwrap() {
        for a in t["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = a["alertname"].as_str().unwrap().to_string();
            if a["exp_alerts"].as_sequence().is_some_and(|s| !s.is_empty()) {
                fires.insert(name);
            } else {
                quiet.insert(name);
            }
        }
    }
    for alert in alert_names(&rules) {
        assert!(fires.contains(&alert), "no unit test where {alert} fires");
        assert!(
            quiet.contains(&alert),
            "no unit test where {alert} stays quiet"
        );
    }
}

fn alert_names(rules: &Value) -> Vec<String> {
    rules["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().iter())
        .filter_map(|r| r["alert"].as_str().map(String::from))
        .collect()
}

#[test]
fn prometheus_rule_equals_rule_file() {
    let pr = yaml("deploy/prometheusrule.yaml");
    let rules = yaml("deploy/prometheus/rules.yaml");
    assert_eq!(pr["apiVersion"].as_str(), Some("monitoring.coreos.com/v1"));
    assert_eq!(kind(&pr), "PrometheusRule");
    assert!(pr["metadata"]["name"].is_string() && pr["metadata"]["namespace"].is_string());
    assert_eq!(
        pr["spec"], rules,
        "deploy/prometheusrule.yaml spec differs from deploy/prometheus/rules.yaml: run scripts/check-deploy.sh --sync-rules"
    );
    // Shape the Prometheus Operator's CRD accepts (PrometheusRuleSpec / RuleGroup / Rule).
    let keys = |v: &Value| -> BTreeSet<String> {
        v.as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(keys(&pr["spec"]), BTreeSet::from(["groups".to_string()]));
    let group_keys: BTreeSet<&str> = [
        "name",
        "interval",
        "rules",
        "limit",
        "partial_response_strategy",
        "query_offset",
        "labels",
    ]
    .into();
    let rule_keys: BTreeSet<&str> = [
        "alert",
        "record",
        "expr",
        "for",
        "keep_firing_for",
        "labels",
        "annotations",
    ]
    .into();
    let mut names = BTreeSet::new();
    for g in pr["spec"]["groups"].as_sequence().unwrap() {
        for k in keys(g) {
            assert!(
                group_keys.contains(k.as_str()),
                "rule group key {k} unknown to the PrometheusRule CRD"
            );
        }
        assert!(
            names.insert(g["name"].as_str().unwrap().to_string()),
            "duplicate group name"
        );
        for r in g["rules"].as_sequence().unwrap() {
            for k in keys(r) {
                assert!(
                    rule_keys.contains(k.as_str()),
                    "rule key {k} unknown to the PrometheusRule CRD"
                );
            }
            let alert = r["alert"].as_str().expect("only alerting rules here");
            assert!(r["expr"].is_string(), "{alert}: expr must be a string");
            if let Some(f) = r["for"].as_str() {
                assert!(
                    is_prometheus_duration(f),
                    "{alert}: for {f:?} is not a Prometheus duration"
                );
            }
            let sev = r["labels"]["severity"].as_str().unwrap_or_default();
            assert!(
                ["critical", "warning", "info"].contains(&sev),
                "{alert}: severity {sev:?}"
            );
            for a in ["summary", "description", "runbook_url"] {
                assert!(
                    r["annotations"][a].as_str().is_some_and(|s| !s.is_empty()),
                    "{alert}: annotation {a} missing"
                );
            }
            let url = r["annotations"]["runbook_url"].as_str().unwrap();
            assert_eq!(
                url,
                format!(
                    "https://github.com/etcd-lifeboat/etcd-lifeboat/blob/main/docs/runbook.md#{}",
                    alert.to_lowercase()
                ),
                "{alert}: runbook_url must point at its own section of docs/runbook.md"
            );
        }
    }
}

/// The pattern of `Duration` in the Prometheus Operator CRDs.
fn is_prometheus_duration(s: &str) -> bool {
    if s == "0" {
        return true;
    }
    let mut rest = s;
    let mut any = false;
    for unit in ["y", "w", "d", "h", "ms", "m", "s"] {
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits > 0
            && rest[digits..].starts_with(unit)
            && !(unit == "m" && rest[digits..].starts_with("ms"))
        {
            rest = &rest[digits + unit.len()..];
            any = true;
        }
    }
    any && rest.is_empty()
}

#[test]
fn prometheus_duration_pattern() {
    for ok in ["30s", "1h", "1h30m", "10ms", "0", "2w1d"] {
        assert!(is_prometheus_duration(ok), "{ok}");
    }
    for bad in ["", "30", "1x", "s", "1h 2m", "m1"] {
        assert!(!is_prometheus_duration(bad), "{bad}");
    }
}

fn seconds(d: &str) -> u64 {
    humantime::parse_duration(d).unwrap().as_secs()
}

#[test]
fn service_monitor_scrapes_the_daemon_service() {
    let sm = yaml("deploy/daemon/servicemonitor.yaml");
    let svc = yaml("deploy/daemon/service.yaml");
    let dep = yaml("deploy/daemon/deployment.yaml");
    assert_eq!(sm["apiVersion"].as_str(), Some("monitoring.coreos.com/v1"));
    assert_eq!(kind(&sm), "ServiceMonitor");
    assert_eq!(sm["metadata"]["namespace"], svc["metadata"]["namespace"]);
    let spec_keys: BTreeSet<&str> = [
        "selector",
        "namespaceSelector",
        "endpoints",
        "jobLabel",
        "targetLabels",
        "podTargetLabels",
        "sampleLimit",
    ]
    .into();
    for k in sm["spec"].as_mapping().unwrap().keys() {
        assert!(
            spec_keys.contains(k.as_str().unwrap()),
            "ServiceMonitor spec key {k:?} unknown"
        );
    }
    // The selector picks the Service (its labels), and the namespace it lives in.
    let svc_labels = svc["metadata"]["labels"].as_mapping().unwrap();
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_mapping().unwrap() {
        assert_eq!(
            svc_labels.get(k),
            Some(v),
            "ServiceMonitor selector {k:?} does not match the Service"
        );
    }
    let ns = sm["spec"]["namespaceSelector"]["matchNames"]
        .as_sequence()
        .unwrap();
    assert!(ns.contains(&svc["metadata"]["namespace"]));
    // The job label (Service name by default) is what the alert rules select on.
    assert_eq!(svc["metadata"]["name"].as_str(), Some("etcd-lifeboat"));
    assert!(read("deploy/prometheus/rules.yaml").contains("job=\"etcd-lifeboat\""));
    let endpoint_keys: BTreeSet<&str> = [
        "port",
        "path",
        "scheme",
        "interval",
        "scrapeTimeout",
        "honorLabels",
        "relabelings",
        "metricRelabelings",
        "tlsConfig",
    ]
    .into();
    let svc_ports: Vec<&Value> = svc["spec"]["ports"].as_sequence().unwrap().iter().collect();
    let container_ports: Vec<&Value> = dep["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .collect();
    for ep in sm["spec"]["endpoints"].as_sequence().unwrap() {
        for k in ep.as_mapping().unwrap().keys() {
            assert!(
                endpoint_keys.contains(k.as_str().unwrap()),
                "ServiceMonitor endpoint key {k:?} unknown"
            );
        }
        let port = ep["port"].as_str().unwrap();
        let sp = svc_ports
            .iter()
            .find(|p| p["name"].as_str() == Some(port))
            .expect("endpoint port names a Service port");
        assert!(
            container_ports
                .iter()
                .any(|p| p["name"] == sp["targetPort"]),
            "Service targetPort names a container port"
        );
        assert_eq!(ep["path"].as_str(), Some("/metrics"));
        let (iv, to) = (
            ep["interval"].as_str().unwrap(),
            ep["scrapeTimeout"].as_str().unwrap(),
        );
        assert!(is_prometheus_duration(iv) && is_prometheus_duration(to));
        assert!(
            seconds(to) <= seconds(iv),
            "scrapeTimeout must not exceed interval"
        );
    }
    // The container listens where the config says.
    let cfg = config_map_config("deploy/daemon/configmap.yaml");
    let listen = cfg["http"]["listen"].as_str().unwrap();
    let port = container_ports[0]["containerPort"].as_u64().unwrap();
    assert!(
        listen.ends_with(&format!(":{port}")),
        "http.listen {listen} vs containerPort {port}"
    );
}

#[test]
fn kustomizations_list_every_manifest() {
    let root = repo();
    for dir in ["deploy", "deploy/cronjob", "deploy/daemon"] {
        let k = yaml(&format!("{dir}/kustomization.yaml"));
        assert_eq!(
            k["apiVersion"].as_str(),
            Some("kustomize.config.k8s.io/v1beta1")
        );
        assert_eq!(kind(&k), "Kustomization");
        let listed: BTreeSet<String> = k["resources"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_string())
            .collect();
        for r in &listed {
            assert!(
                root.join(dir).join(r).exists(),
                "{dir}/kustomization.yaml lists missing {r}"
            );
        }
        // Every manifest in the directory is listed, except examples and the kustomization.
        for e in std::fs::read_dir(root.join(dir)).unwrap().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.ends_with(".yaml") && n != "kustomization.yaml" && !n.ends_with(".example.yaml") {
                assert!(
                    listed.contains(&n),
                    "{dir}/kustomization.yaml does not list {n}"
                );
            }
        }
    }
    let top = yaml("deploy/kustomization.yaml");
    let res: Vec<&str> = top["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        res.contains(&"daemon") && res.contains(&"prometheusrule.yaml"),
        "{res:?}"
    );
}

fn config_map_config(rel: &str) -> Value {
    let cm = yaml(rel);
    serde_yaml::from_str(cm["data"]["config.yaml"].as_str().unwrap()).unwrap()
}

/// Pod spec and the list of all its containers (init containers too).
fn pod_spec(workload: &Value) -> (&Value, Vec<&Value>) {
    let spec = match kind(workload) {
        "CronJob" => &workload["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        "Deployment" => &workload["spec"]["template"]["spec"],
        k => panic!("not a workload: {k}"),
    };
    let mut cs: Vec<&Value> = Vec::new();
    for key in ["initContainers", "containers"] {
        cs.extend(spec[key].as_sequence().into_iter().flatten());
    }
    (spec, cs)
}

fn env_from_secret(c: &Value, var: &str) -> Option<(String, String)> {
    let e = c["env"]
        .as_sequence()?
        .iter()
        .find(|e| e["name"].as_str() == Some(var))?;
    let r = &e["valueFrom"]["secretKeyRef"];
    Some((
        r["name"].as_str()?.to_string(),
        r["key"].as_str()?.to_string(),
    ))
}

/// Settings every workload shares: least privilege, resources, S3 keys from a Secret, the
/// image of this version, control-plane placement.
fn check_common(rel: &str, w: &Value) {
    let (spec, containers) = pod_spec(w);
    assert_eq!(
        spec["automountServiceAccountToken"].as_bool(),
        Some(false),
        "{rel}: API token mounted"
    );
    let sa = spec["serviceAccountName"].as_str().unwrap();
    let sa_file = rel.rsplit_once('/').unwrap().0.to_string() + "/serviceaccount.yaml";
    let sa_obj = yaml(&sa_file);
    assert_eq!(
        sa_obj["metadata"]["name"].as_str(),
        Some(sa),
        "{rel}: ServiceAccount {sa} not in {sa_file}"
    );
    assert_eq!(
        sa_obj["automountServiceAccountToken"].as_bool(),
        Some(false)
    );
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault"),
        "{rel}"
    );
    assert_eq!(
        spec["hostNetwork"].as_bool(),
        Some(true),
        "{rel}: reaches etcd on the node's 127.0.0.1"
    );
    assert_eq!(
        spec["dnsPolicy"].as_str(),
        Some("ClusterFirstWithHostNet"),
        "{rel}"
    );
    assert_eq!(
        spec["nodeSelector"]["node-role.kubernetes.io/control-plane"].as_str(),
        Some(""),
        "{rel}"
    );
    let tolerated: Vec<&str> = spec["tolerations"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|t| t["key"].as_str())
        .collect();
    assert!(
        tolerated.contains(&"node-role.kubernetes.io/control-plane"),
        "{rel}: {tolerated:?}"
    );
    let tmp_volume = spec["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str() == Some("tmp"))
        .unwrap_or_else(|| panic!("{rel}: no tmp volume"));
    assert!(
        tmp_volume["emptyDir"].is_mapping(),
        "{rel}: /tmp must be an emptyDir"
    );
    assert!(!containers.is_empty());
    for c in containers {
        let name = c["name"].as_str().unwrap();
        assert_eq!(
            c["image"].as_str(),
            Some(expected_image().as_str()),
            "{rel}/{name}: image tag must be the crate version"
        );
        let sc = &c["securityContext"];
        assert_eq!(
            sc["allowPrivilegeEscalation"].as_bool(),
            Some(false),
            "{rel}/{name}"
        );
        assert_eq!(
            sc["readOnlyRootFilesystem"].as_bool(),
            Some(true),
            "{rel}/{name}"
        );
        assert_eq!(sc["privileged"].as_bool(), Some(false), "{rel}/{name}");
        assert_eq!(
            sc["capabilities"]["drop"],
            serde_yaml::from_str::<Value>("[ALL]").unwrap(),
            "{rel}/{name}"
        );
        assert!(
            sc["capabilities"]["add"].is_null(),
            "{rel}/{name}: adds capabilities"
        );
        for r in ["cpu", "memory"] {
            assert!(
                c["resources"]["requests"][r].is_string(),
                "{rel}/{name}: no {r} request"
            );
        }
        assert!(
            c["resources"]["limits"]["memory"].is_string(),
            "{rel}/{name}: no memory limit"
        );
        for var in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
            assert_eq!(
                env_from_secret(c, var),
                Some(("etcd-lifeboat-s3".to_string(), var.to_string())),
                "{rel}/{name}: {var} must come from Secret etcd-lifeboat-s3"
            );
        }
        let mounts = c["volumeMounts"].as_sequence().unwrap();
        let tmp = mounts
            .iter()
            .find(|m| m["name"].as_str() == Some("tmp"))
            .expect("tmp mounted");
        assert_eq!(tmp["mountPath"].as_str(), Some("/tmp"));
        for m in mounts.iter().filter(|m| m["name"].as_str() != Some("tmp")) {
            assert_eq!(
                m["readOnly"].as_bool(),
                Some(true),
                "{rel}/{name}: mount {:?} must be read-only",
                m["name"]
            );
        }
    }
}

#[test]
fn cronjob_settings() {
    let rel = "deploy/cronjob/cronjob.yaml";
    let cj = yaml(rel);
    check_common(rel, &cj);
    let s = &cj["spec"];
    assert_eq!(s["concurrencyPolicy"].as_str(), Some("Forbid"));
    assert!(s["startingDeadlineSeconds"].as_u64().is_some());
    assert!(
        s["successfulJobsHistoryLimit"].as_u64().is_some()
            && s["failedJobsHistoryLimit"].as_u64().is_some()
    );
    let job = &s["jobTemplate"]["spec"];
    let deadline = job["activeDeadlineSeconds"]
        .as_u64()
        .expect("activeDeadlineSeconds");
    // etcd-lifeboat must give up (and clean up) before Kubernetes kills the pod.
    let cfg = config_map_config("deploy/cronjob/configmap.yaml");
    let snap = seconds(cfg["etcd"]["snapshot_timeout"].as_str().unwrap());
    assert!(
        snap < deadline,
        "snapshot_timeout {snap}s must be below activeDeadlineSeconds {deadline}s"
    );
    let (spec, containers) = pod_spec(&cj);
    assert_eq!(spec["restartPolicy"].as_str(), Some("Never"));
    // Root only because kubeadm's keys are 0600 root; never privileged, no capabilities.
    assert_eq!(spec["securityContext"]["runAsUser"].as_u64(), Some(0));
    let certs = spec["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str() == Some("etcd-certs"))
        .unwrap();
    assert_eq!(
        certs["hostPath"]["path"].as_str(),
        Some("/etc/kubernetes/pki/etcd")
    );
    for c in &containers {
        let m = c["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| m["name"].as_str() == Some("etcd-certs"))
            .unwrap();
        assert_eq!(m["mountPath"].as_str(), Some("/etc/kubernetes/pki/etcd"));
    }
    // The config in the ConfigMap reads its certs from where they are mounted.
    for k in ["ca_file", "cert_file", "key_file"] {
        let p = cfg["etcd"]["tls"][k].as_str().unwrap();
        assert!(p.starts_with("/etc/kubernetes/pki/etcd/"), "{k}: {p}");
    }
    assert_eq!(cfg["backup"]["temp_dir"].as_str(), Some("/tmp"));
    // The backup runs first (init container), prune after it.
    assert_eq!(spec["initContainers"][0]["name"].as_str(), Some("backup"));
    assert_eq!(spec["containers"][0]["name"].as_str(), Some("prune"));
    // The optional Pushgateway flag is there to uncomment.
    assert!(
        read(rel).contains("# - --pushgateway"),
        "the commented --pushgateway arg is gone"
    );
}

#[test]
fn daemon_settings() {
    let rel = "deploy/daemon/deployment.yaml";
    let d = yaml(rel);
    check_common(rel, &d);
    assert_eq!(d["spec"]["replicas"].as_u64(), Some(2));
    let (spec, containers) = pod_spec(&d);
    let psc = &spec["securityContext"];
    assert_eq!(psc["runAsNonRoot"].as_bool(), Some(true));
    assert_ne!(psc["runAsUser"].as_u64(), Some(0));
    assert!(
        psc["fsGroup"].as_u64().is_some(),
        "fsGroup lets the non-root user read the Secret's key"
    );
    let cfg = config_map_config("deploy/daemon/configmap.yaml");
    assert_eq!(cfg["leader_election"]["enabled"].as_bool(), Some(true));
    assert!(
        spec["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .all(|v| v["hostPath"].is_null()),
        "the daemon uses no hostPath"
    );
    // Replicas on different nodes, drains one at a time.
    let anti =
        &spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(anti["topologyKey"].as_str(), Some("kubernetes.io/hostname"));
    let pdb = yaml("deploy/daemon/poddisruptionbudget.yaml");
    assert_eq!(pdb["spec"]["selector"], d["spec"]["selector"]);
    assert_eq!(pdb["spec"]["maxUnavailable"].as_u64(), Some(1));
    let svc = yaml("deploy/daemon/service.yaml");
    let labels = d["spec"]["template"]["metadata"]["labels"]
        .as_mapping()
        .unwrap();
    for (k, v) in svc["spec"]["selector"].as_mapping().unwrap() {
        assert_eq!(
            labels.get(k),
            Some(v),
            "Service selector {k:?} does not match the pods"
        );
    }
    for probe in ["livenessProbe", "readinessProbe"] {
        assert!(
            containers[0][probe]["httpGet"]["path"].is_string(),
            "{probe}"
        );
    }
}

/// No Role, ClusterRole or binding anywhere: etcd-lifeboat never calls the Kubernetes API.
#[test]
fn no_rbac_objects() {
    for f in manifest_files() {
        let k = kind(&yaml(&f)).to_string();
        assert!(
            !k.contains("Role"),
            "{f}: {k}: etcd-lifeboat needs no Kubernetes API access"
        );
    }
}

/// Every manifest is in kube-system (where kubeadm's etcd and its certificates live).
#[test]
fn everything_in_kube_system() {
    for f in manifest_files() {
        let v = yaml(&f);
        if kind(&v) != "Kustomization" {
            assert_eq!(
                v["metadata"]["namespace"].as_str(),
                Some("kube-system"),
                "{f}"
            );
        }
    }
}

/// The command line of each container parses with the real binary: `<args> --help` exits 0
/// and prints the subcommand's usage (clap rejects unknown flags before it gets to --help).
/// The commented-out `--pushgateway URL` of the CronJob is checked too.
#[test]
fn container_command_lines_parse() {
    let mut lines: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for rel in [
        "deploy/cronjob/cronjob.yaml",
        "deploy/daemon/deployment.yaml",
    ] {
        let w = yaml(rel);
        let (_, containers) = pod_spec(&w);
        for c in containers {
            assert!(
                c["command"].is_null(),
                "{rel}: keep the image ENTRYPOINT, set args only"
            );
            let args: Vec<String> = c["args"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect();
            lines.insert(format!("{rel}/{}", c["name"].as_str().unwrap()), args);
        }
    }
    let mut backup = lines["deploy/cronjob/cronjob.yaml/backup"].clone();
    backup.extend([
        "--pushgateway".to_string(),
        "http://pushgateway.monitoring.svc:9091".to_string(),
    ]);
    lines.insert(
        "deploy/cronjob/cronjob.yaml/backup (with --pushgateway)".into(),
        backup,
    );
    for (what, args) in &lines {
        let sub = args
            .iter()
            .rev()
            .find(|a| !a.starts_with('-') && !a.starts_with("http"))
            .unwrap();
        let out = assert_cmd::Command::cargo_bin("etcd-lifeboat")
            .unwrap()
            .args(args)
            .arg("--help")
            .env_remove("ETCD_LIFEBOAT_CONFIG")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{what}: `etcd-lifeboat {} --help` failed: {}{}",
            args.join(" "),
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("Usage:") && stdout.contains(&format!("etcd-lifeboat {sub}")),
            "{what}: `etcd-lifeboat {} --help` did not print the usage of {sub}:\n{stdout}",
            args.join(" ")
        );
    }
}

/// deploy/systemd units pass `systemd-analyze verify` without a single complaint (unknown keys
/// are only warnings there, so any output fails), with ExecStart pointing at the built binary.
#[test]
fn systemd_units_verify() {
    let analyze = std::path::Path::new("/usr/bin/systemd-analyze");
    assert!(
        analyze.is_file(),
        "systemd-analyze not found (Debian package systemd): install it"
    );
    let tmp = tempfile::tempdir().unwrap();
    let bin = assert_cmd::cargo::cargo_bin("etcd-lifeboat");
    let mut units = Vec::new();
    for e in std::fs::read_dir(repo().join("deploy/systemd"))
        .unwrap()
        .flatten()
    {
        let text = std::fs::read_to_string(e.path()).unwrap();
        let p = tmp.path().join(e.file_name());
        std::fs::write(
            &p,
            text.replace("/usr/local/bin/etcd-lifeboat", &bin.to_string_lossy()),
        )
        .unwrap();
        units.push(p);
    }
    assert!(units.len() >= 2, "{units:?}");
    let out = Command::new(analyze)
        .arg("verify")
        .args(&units)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );
}

fn run_validate_crds(files: &[String]) -> (bool, String) {
    let out = Command::new(venv_python())
        .arg("scripts/validate-crds.py")
        .args(files)
        .current_dir(repo())
        .output()
        .expect("run scripts/validate-crds.py");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// ServiceMonitor and PrometheusRule validate strictly against the prometheus-operator CRD
/// schemas (scripts/validate-crds.py; kubernetes-validate has no CRD schemas).
#[test]
fn crd_objects_pass_prometheus_operator_schemas_strict() {
    let files: Vec<String> = manifest_files()
        .into_iter()
        .filter(|f| ["ServiceMonitor", "PrometheusRule"].contains(&kind(&yaml(f))))
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    let (ok, text) = run_validate_crds(&files);
    assert!(
        ok,
        "scripts/validate-crds.py failed (if cloudcoil is missing: run scripts/install.sh):\n{text}"
    );
    assert_eq!(
        text.lines().filter(|l| l.starts_with("PASS ")).count(),
        2,
        "{text}"
    );
}

/// The CRD validation is not vacuous: a misspelled field, a bad duration and a misspelled rule
/// key are rejected.
#[test]
fn crd_validation_rejects_broken_objects() {
    let tmp = tempfile::tempdir().unwrap();
    let sm = read("deploy/daemon/servicemonitor.yaml");
    let pr = read("deploy/prometheusrule.yaml");
    let cases = [
        (
            "sm-typo.yaml",
            sm.replace("scrapeTimeout:", "scrapeTimout:"),
            &sm,
        ),
        (
            "sm-duration.yaml",
            sm.replace("interval: 30s", "interval: half-a-minute"),
            &sm,
        ),
        (
            "pr-typo.yaml",
            pr.replacen("          expr: |", "          expresion: |", 1),
            &pr,
        ),
    ];
    let mut files = Vec::new();
    for (name, text, orig) in &cases {
        assert_ne!(&text, orig, "{name}: the replacement did not apply");
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        files.push(p.to_string_lossy().into_owned());
    }
    // One run for all (loading the schemas takes seconds); each file must have its FAIL line.
    let (ok, out) = run_validate_crds(&files);
    assert!(!ok, "broken objects accepted:\n{out}");
    for f in &files {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("FAIL {f}:"))),
            "{f}: accepted:\n{out}"
        );
    }
}

/// deploy/Dockerfile agrees with the crate and the manifests: the builder's Rust is at least
/// the crate's rust-version and has protoc; the runtime user is the non-root uid the
/// Deployment runs as; the entrypoint is where the runbook copies the binary from.
/// (No Docker daemon on the test machines: the image itself is not built here.)
#[test]
fn dockerfile_agrees_with_crate_and_manifests() {
    let df = read("deploy/Dockerfile");
    let from: Vec<&str> = df.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(from.len(), 2, "multi-stage: builder and runtime: {from:?}");
    let rust = from[0]
        .strip_prefix("FROM rust:")
        .and_then(|r| r.split('-').next())
        .expect("builder FROM rust:X.Y-...");
    let cargo_toml = read("Cargo.toml");
    let msrv = cargo_toml
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"'))
        .expect("rust-version in Cargo.toml");
    let ver = |v: &str| -> (u32, u32) {
        let mut it = v.split('.').map(|x| x.parse::<u32>().unwrap());
        (it.next().unwrap(), it.next().unwrap())
    };
    assert!(
        ver(rust) >= ver(msrv),
        "builder rust {rust} < rust-version {msrv}"
    );
    assert!(df.contains("protobuf-compiler"), "etcd-client needs protoc");
    assert!(df.contains("--locked"), "build with Cargo.lock");
    let runtime = df.split(from[1]).nth(1).unwrap();
    let user = runtime
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("runtime USER");
    let uid: u64 = user.split(':').next().unwrap().parse().unwrap();
    assert_ne!(uid, 0, "the image runs as non-root by default");
    let dep = yaml("deploy/daemon/deployment.yaml");
    assert_eq!(
        dep["spec"]["template"]["spec"]["securityContext"]["runAsUser"].as_u64(),
        Some(uid)
    );
    assert!(runtime.contains("ENTRYPOINT [\"/usr/local/bin/etcd-lifeboat\"]"));
    assert!(read("docs/runbook.md").contains(":/usr/local/bin/etcd-lifeboat"));
    assert!(
        df.contains(&expected_image()),
        "build command names the image tag"
    );
    let ignore = read("deploy/Dockerfile.dockerignore");
    for p in ["target", ".git"] {
        assert!(ignore.lines().any(|l| l.trim() == p), "{p} not ignored");
    }
}

/// The optional Pushgateway lines of the CronJob, once uncommented, give a valid CronJob whose
/// backup container has the flag and the variable (the comment's indentation is right).
#[test]
fn cronjob_pushgateway_lines_work_uncommented() {
    let text = read("deploy/cronjob/cronjob.yaml");
    let uncommented = text
        .replace("# - --pushgateway", "- --pushgateway")
        .replace(
            "# - http://pushgateway.monitoring.svc:9091",
            "- http://pushgateway.monitoring.svc:9091",
        )
        .replace(
            "# - name: ETCD_LIFEBOAT_PUSHGATEWAY",
            "- name: ETCD_LIFEBOAT_PUSHGATEWAY",
        )
        .replace(
            "#   value: http://pushgateway.monitoring.svc:9091",
            "  value: http://pushgateway.monitoring.svc:9091",
        );
    let v: Value = serde_yaml::from_str(&uncommented).unwrap();
    let (spec, _) = pod_spec(&v);
    let backup = &spec["initContainers"][0];
    let args: Vec<&str> = backup["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        &args[args.len() - 3..],
        [
            "backup",
            "--pushgateway",
            "http://pushgateway.monitoring.svc:9091"
        ]
    );
    let env = backup["env"].as_sequence().unwrap();
    assert!(env
        .iter()
        .any(|e| e["name"].as_str() == Some("ETCD_LIFEBOAT_PUSHGATEWAY")
            && e["value"].as_str() == Some("http://pushgateway.monitoring.svc:9091")));
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("cronjob-pushgateway.yaml");
    std::fs::write(&p, uncommented).unwrap();
    let (ok, out) = run_kubernetes_validate(&[p.to_string_lossy().into_owned()], K8S_VERSIONS[1]);
    assert!(ok && out.contains(" passed "), "{out}");
}
