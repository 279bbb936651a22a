//! deploy/: the kustomize bases (deploy/cronjob, deploy/daemon), components
//! (deploy/components/*, deploy/grafana) and overlays render with `kubectl kustomize` in every
//! combination, and every rendered object validates strictly: core kinds with
//! kubernetes-validate --strict, ServiceMonitor and PrometheusRule against the
//! prometheus-operator CRD schemas (scripts/validate-crds.py). Every object carries the
//! recommended labels and every selector the stable ones; the bases need no CRDs; the
//! PrometheusRules equal deploy/prometheus/rules.yaml, which passes `promtool check rules` and
//! its unit tests; the workloads keep the security and scheduling settings the design asks
//! for, and their command lines parse with the real binary.
//!
//! Needs promtool, kubernetes-validate (scripts/install.sh) and kubectl (scripts/fetch-kubectl.sh,
//! run by the tests when kubectl is missing); a missing tool fails the test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use crate::deploy_support::*;
use serde_yaml::Value;

/// Kubernetes versions validated against: an older supported one and the newest schema.
const K8S_VERSIONS: &[&str] = &["1.31.0", "1.37.0"];
/// Kinds that kubernetes-validate has no schema for; validated by scripts/validate-crds.py.
const CRD_KINDS: &[&str] = &["ServiceMonitor", "PrometheusRule"];
/// The kustomizations users apply as they are (`kubectl apply -k DIR`).
const KUSTOMIZATIONS: &[&str] = &[
    "deploy",
    "deploy/cronjob",
    "deploy/daemon",
    "deploy/overlays/custom",
    "deploy/overlays/kube-prometheus-stack",
];
/// The bases: each applies on a bare cluster.
const BASES: &[&str] = &["deploy/cronjob", "deploy/daemon"];
/// The components (kind: Component).
const COMPONENTS: &[&str] = &[
    "deploy/components/kube-prometheus-stack",
    "deploy/components/monitoring",
    "deploy/components/networkpolicy",
    "deploy/grafana",
];
/// The recommended labels whose values are the same on every object of a default install.
const COMMON_LABELS: &[(&str, &str)] = &[
    ("app.kubernetes.io/name", "etcd-lifeboat"),
    ("app.kubernetes.io/part-of", "etcd-lifeboat"),
    ("app.kubernetes.io/managed-by", "kustomize"),
];
/// The labels selectors use: the stable ones (never version, which changes with every release,
/// while a Deployment's selector is immutable).
const SELECTOR_LABELS: &[&str] = &[
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
];

/// One rendered kustomization: what was built (a directory, or a base with components) and the
/// objects kustomize printed.
struct Render {
    what: String,
    base: String,
    components: Vec<String>,
    objects: Vec<Value>,
}

/// Every kustomization of KUSTOMIZATIONS, and every base with every valid set of components:
/// monitoring with or without kube-prometheus-stack (which only labels monitoring's objects),
/// networkpolicy (daemon only: the CronJob serves nothing), grafana. Rendered once per test
/// binary.
fn renders() -> &'static Vec<Render> {
    static R: OnceLock<Vec<Render>> = OnceLock::new();
    R.get_or_init(|| {
        let mut out = Vec::new();
        for k in KUSTOMIZATIONS {
            out.push(Render {
                what: k.to_string(),
                base: k.to_string(),
                components: Vec::new(),
                objects: kustomize(Path::new(k)),
            });
        }
        for base in BASES {
            for monitoring in [None, Some(false), Some(true)] {
                let nps: &[bool] = if *base == "deploy/daemon" {
                    &[false, true]
                } else {
                    &[false]
                };
                for np in nps {
                    for grafana in [false, true] {
                        let mut comps = Vec::new();
                        if let Some(kps) = monitoring {
                            comps.push("deploy/components/monitoring");
                            if kps {
                                comps.push("deploy/components/kube-prometheus-stack");
                            }
                        }
                        if *np {
                            comps.push("deploy/components/networkpolicy");
                        }
                        if grafana {
                            comps.push("deploy/grafana");
                        }
                        if comps.is_empty() {
                            continue; // the base itself is in KUSTOMIZATIONS
                        }
                        out.push(Render {
                            what: format!("{base} + {}", comps.join(" + ")),
                            base: base.to_string(),
                            components: comps.iter().map(|c| c.to_string()).collect(),
                            objects: kustomize_combination(&[base], &comps, ""),
                        });
                    }
                }
            }
        }
        out
    })
}

/// The distinct objects of all renders, as (origin, object).
fn distinct_objects() -> Vec<(String, Value)> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for r in renders() {
        for o in &r.objects {
            if seen.insert(serde_yaml::to_string(o).unwrap()) {
                out.push((format!("{} ({})", id(o), r.what), o.clone()));
            }
        }
    }
    out
}

/// Writes each object to its own file in `dir`; returns the paths.
fn write_objects(dir: &Path, objects: &[(String, Value)]) -> Vec<String> {
    objects
        .iter()
        .enumerate()
        .map(|(i, (_, o))| {
            let p = dir.join(format!(
                "{i:03}-{}.yaml",
                id(o).replace(['/', ':'], "-").to_lowercase()
            ));
            std::fs::write(&p, serde_yaml::to_string(o).unwrap()).unwrap();
            p.to_string_lossy().into_owned()
        })
        .collect()
}

fn run_kubernetes_validate(files: &[String], version: &str) -> (bool, String) {
    run_in_repo(
        Command::new(kubernetes_validate())
            .args(["--strict", "-k", version])
            .args(files),
    )
}

/// Every core object any kustomization renders, and the example Secret, pass
/// kubernetes-validate --strict for both Kubernetes versions with not one warning.
#[test]
fn rendered_objects_pass_kubernetes_schemas_strict() {
    let objects: Vec<(String, Value)> = distinct_objects()
        .into_iter()
        .filter(|(_, o)| !CRD_KINDS.contains(&kind(o)))
        .collect();
    let kinds: BTreeSet<&str> = objects.iter().map(|(_, o)| kind(o)).collect();
    for k in [
        "CronJob",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ServiceAccount",
        "ConfigMap",
        "NetworkPolicy",
    ] {
        assert!(kinds.contains(k), "no {k} rendered: {kinds:?}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut files = write_objects(tmp.path(), &objects);
    files.push("deploy/s3-credentials.example.yaml".into());
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
    let n = alert_names(&yaml("deploy/prometheus/rules.yaml")).len();
    assert!(n >= 8, "{n} alerts");
    assert!(
        text.contains(&format!("SUCCESS: {n} rules found")),
        "{text}"
    );
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

/// Both PrometheusRules (the one of the monitoring component and deploy/prometheusrule.yaml for
/// `kubectl apply -f`) hold exactly the groups of deploy/prometheus/rules.yaml, in the shape the
/// CRD accepts, each alert with its runbook section.
#[test]
fn prometheus_rules_equal_rule_file() {
    for rel in [
        "deploy/components/monitoring/prometheusrule.yaml",
        "deploy/prometheusrule.yaml",
    ] {
        check_prometheus_rule(rel);
    }
}

fn check_prometheus_rule(rel: &str) {
    let pr = yaml(rel);
    let rules = yaml("deploy/prometheus/rules.yaml");
    assert_eq!(pr["apiVersion"].as_str(), Some("monitoring.coreos.com/v1"));
    assert_eq!(kind(&pr), "PrometheusRule");
    assert!(pr["metadata"]["name"].is_string() && pr["metadata"]["namespace"].is_string());
    assert_eq!(
        pr["spec"], rules,
        "{rel} spec differs from deploy/prometheus/rules.yaml: run scripts/check-deploy.sh --sync-rules"
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
    let sm = yaml("deploy/components/monitoring/servicemonitor.yaml");
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
    // The container listens on the containerPort: the Deployment's ETCD_LIFEBOAT_HTTP_LISTEN
    // (pod IP) and the config's http.listen (used without the variable).
    let port = container_ports[0]["containerPort"].as_u64().unwrap();
    let listen = env_value(
        &dep["spec"]["template"]["spec"]["containers"][0],
        "ETCD_LIFEBOAT_HTTP_LISTEN",
    )
    .expect("ETCD_LIFEBOAT_HTTP_LISTEN in the Deployment");
    assert_eq!(listen, format!("$(POD_IP):{port}"));
    let cfg = config_map_config("deploy/daemon/configmap.yaml");
    let listen = cfg["http"]["listen"].as_str().unwrap();
    assert!(
        listen.ends_with(&format!(":{port}")),
        "http.listen {listen} vs containerPort {port}"
    );
}

/// The literal `value` of an environment variable of a container.
fn env_value(c: &Value, var: &str) -> Option<String> {
    c["env"]
        .as_sequence()?
        .iter()
        .find(|e| e["name"].as_str() == Some(var))?["value"]
        .as_str()
        .map(String::from)
}

/// Every kustomization.yaml under deploy/ is one of KUSTOMIZATIONS or COMPONENTS, with the
/// right apiVersion and kind; everything it names exists; every object file in its directory is
/// listed (except examples, and deploy/prometheusrule.yaml, the rules for `kubectl apply -f`
/// that components/monitoring holds too).
#[test]
fn kustomizations_list_every_manifest() {
    let root = repo();
    let mut found = BTreeSet::new();
    for f in manifest_files()
        .into_iter()
        .filter(|f| f.ends_with("/kustomization.yaml"))
    {
        let dir = f.trim_end_matches("/kustomization.yaml").to_string();
        let k = yaml(&f);
        match kind(&k) {
            "Kustomization" => {
                assert_eq!(
                    k["apiVersion"].as_str(),
                    Some("kustomize.config.k8s.io/v1beta1"),
                    "{f}"
                );
                assert!(
                    KUSTOMIZATIONS.contains(&dir.as_str()),
                    "{f}: not in KUSTOMIZATIONS"
                );
            }
            "Component" => {
                assert_eq!(
                    k["apiVersion"].as_str(),
                    Some("kustomize.config.k8s.io/v1alpha1"),
                    "{f}"
                );
                assert!(COMPONENTS.contains(&dir.as_str()), "{f}: not in COMPONENTS");
            }
            other => panic!("{f}: kind {other:?}"),
        }
        found.insert(dir.clone());
        let names = |key: &str| -> Vec<String> {
            k[key]
                .as_sequence()
                .into_iter()
                .flatten()
                .map(|r| r.as_str().unwrap().to_string())
                .collect()
        };
        let mut listed: BTreeSet<String> = BTreeSet::new();
        for key in ["resources", "components", "configurations"] {
            for r in names(key) {
                assert!(root.join(&dir).join(&r).exists(), "{f} lists missing {r}");
                listed.insert(r);
            }
        }
        for g in k["configMapGenerator"].as_sequence().into_iter().flatten() {
            for file in g["files"].as_sequence().unwrap() {
                let file = file.as_str().unwrap();
                assert!(root.join(&dir).join(file).is_file(), "{f}: missing {file}");
                listed.insert(file.to_string());
            }
        }
        for e in std::fs::read_dir(root.join(&dir)).unwrap().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let exempt = n == "kustomization.yaml"
                || n.ends_with(".example.yaml")
                || (dir == "deploy" && n == "prometheusrule.yaml");
            if (n.ends_with(".yaml") || n.ends_with(".json")) && !exempt {
                assert!(listed.contains(&n), "{f} does not list {n}");
            }
        }
    }
    let want: BTreeSet<String> = KUSTOMIZATIONS
        .iter()
        .chain(COMPONENTS)
        .map(|s| s.to_string())
        .collect();
    assert_eq!(found, want, "kustomizations under deploy/");
    let top = yaml("deploy/kustomization.yaml");
    assert_eq!(top["resources"][0].as_str(), Some("daemon"));
    assert_eq!(top["components"][0].as_str(), Some("components/monitoring"));
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
    // The pod network, not the node's: a NetworkPolicy applies, no node port is taken.
    assert!(
        spec["hostNetwork"].is_null() || spec["hostNetwork"].as_bool() == Some(false),
        "{rel}: the daemon runs in the pod network"
    );
    for p in containers[0]["ports"].as_sequence().unwrap() {
        assert!(p["hostPort"].is_null(), "{rel}: hostPort {p:?}");
    }
    // Downward API: listen on the pod IP only, reach etcd at the node's IP. Kubernetes expands
    // $(VAR) only for variables defined earlier in the list.
    let env = containers[0]["env"].as_sequence().unwrap();
    let pos = |n: &str| env.iter().position(|e| e["name"].as_str() == Some(n));
    for (var, field) in [("POD_IP", "status.podIP"), ("HOST_IP", "status.hostIP")] {
        let e = &env[pos(var).unwrap_or_else(|| panic!("{rel}: no {var}"))];
        assert_eq!(
            e["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
            Some(field),
            "{rel}: {var}"
        );
    }
    assert_eq!(
        env_value(containers[0], "ETCD_LIFEBOAT_HTTP_LISTEN").as_deref(),
        Some("$(POD_IP):9790")
    );
    assert_eq!(
        env_value(containers[0], "ETCDCTL_ENDPOINTS").as_deref(),
        Some("https://$(HOST_IP):2379")
    );
    assert!(pos("POD_IP") < pos("ETCD_LIFEBOAT_HTTP_LISTEN"));
    assert!(pos("HOST_IP") < pos("ETCDCTL_ENDPOINTS"));
    // The config's own listen address is loopback: never 0.0.0.0 even without the variable.
    assert!(cfg["http"]["listen"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
}

/// No Role, ClusterRole or binding in any render: etcd-lifeboat never calls the Kubernetes API.
#[test]
fn no_rbac_objects() {
    for r in renders() {
        for o in &r.objects {
            assert!(
                !kind(o).contains("Role"),
                "{}: {}: etcd-lifeboat needs no Kubernetes API access",
                r.what,
                id(o)
            );
        }
    }
}

/// Every object of every render, and every object file, is in kube-system (where kubeadm's
/// etcd and its certificates live).
#[test]
fn everything_in_kube_system() {
    for r in renders() {
        for o in &r.objects {
            assert_eq!(
                o["metadata"]["namespace"].as_str(),
                Some("kube-system"),
                "{}: {}",
                r.what,
                id(o)
            );
        }
    }
    for f in manifest_files() {
        let v = yaml(&f);
        if v["apiVersion"].is_string() && !["Kustomization", "Component"].contains(&kind(&v)) {
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
    run_in_repo(
        Command::new(venv_python())
            .arg("scripts/validate-crds.py")
            .args(files),
    )
}

/// Every ServiceMonitor and PrometheusRule any kustomization renders (plain, with the
/// kube-prometheus-stack label, with an overlay's patches), and deploy/prometheusrule.yaml,
/// validate strictly against the prometheus-operator CRD schemas (scripts/validate-crds.py;
/// kubernetes-validate has no CRD schemas).
#[test]
fn crd_objects_pass_prometheus_operator_schemas_strict() {
    let objects: Vec<(String, Value)> = distinct_objects()
        .into_iter()
        .filter(|(_, o)| CRD_KINDS.contains(&kind(o)))
        .collect();
    let kinds: BTreeSet<&str> = objects.iter().map(|(_, o)| kind(o)).collect();
    assert_eq!(kinds, CRD_KINDS.iter().copied().collect(), "{objects:?}");
    let tmp = tempfile::tempdir().unwrap();
    let mut files = write_objects(tmp.path(), &objects);
    files.push("deploy/prometheusrule.yaml".into());
    let (ok, text) = run_validate_crds(&files);
    assert!(
        ok,
        "scripts/validate-crds.py failed (if cloudcoil is missing: run scripts/install.sh):\n{text}"
    );
    assert_eq!(
        text.lines().filter(|l| l.starts_with("PASS ")).count(),
        files.len(),
        "{text}"
    );
}

/// The CRD validation is not vacuous: a misspelled field, a bad duration and a misspelled rule
/// key are rejected.
#[test]
fn crd_validation_rejects_broken_objects() {
    let tmp = tempfile::tempdir().unwrap();
    let sm = read("deploy/components/monitoring/servicemonitor.yaml");
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

/// The bases, applied alone, need nothing but Kubernetes' own API groups (no
/// prometheus-operator CRDs), and each component adds what it says.
#[test]
fn bases_apply_on_a_bare_cluster_and_components_add_their_objects() {
    let core = |o: &Value| {
        let api = o["apiVersion"].as_str().unwrap();
        !api.contains('/') || api.split('/').next().unwrap().ends_with("k8s.io") || {
            ["apps", "batch", "policy"].contains(&api.split('/').next().unwrap())
        }
    };
    for r in renders() {
        let kinds: Vec<&str> = r.objects.iter().map(kind).collect();
        let has = |k: &str| kinds.contains(&k);
        if BASES.contains(&r.what.as_str()) {
            for o in &r.objects {
                assert!(core(o), "{}: {} needs a CRD", r.what, id(o));
            }
        }
        if r.base == "deploy/cronjob" {
            assert!(has("CronJob") && !has("Deployment"), "{}", r.what);
        }
        if r.base == "deploy/daemon" {
            assert!(
                has("Deployment") && has("Service") && has("PodDisruptionBudget"),
                "{}",
                r.what
            );
        }
        let comp = |c: &str| r.components.iter().any(|x| x == c);
        if !r.components.is_empty() {
            assert_eq!(
                has("ServiceMonitor") && has("PrometheusRule"),
                comp("deploy/components/monitoring"),
                "{}: {kinds:?}",
                r.what
            );
            assert_eq!(
                has("NetworkPolicy"),
                comp("deploy/components/networkpolicy"),
                "{}",
                r.what
            );
            let dashboard = r
                .objects
                .iter()
                .any(|o| o["metadata"]["labels"]["grafana_dashboard"].as_str() == Some("1"));
            assert_eq!(dashboard, comp("deploy/grafana"), "{}", r.what);
        }
    }
    // 5 kustomizations + cronjob with 5 component sets + daemon with 11.
    assert_eq!(renders().len(), 21);
}

/// The labels that select a workload's pods, from its selector.
fn selector_of(o: &Value) -> Option<&Value> {
    match kind(o) {
        "Deployment" | "PodDisruptionBudget" | "ServiceMonitor" => {
            Some(&o["spec"]["selector"]["matchLabels"])
        }
        "Service" => Some(&o["spec"]["selector"]),
        "NetworkPolicy" => Some(&o["spec"]["podSelector"]["matchLabels"]),
        _ => None,
    }
}

fn label_keys(v: &Value) -> BTreeSet<String> {
    v.as_mapping()
        .map(|m| m.keys().map(|k| k.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// Every object of every render carries all six recommended labels (name, instance, version,
/// component, part-of, managed-by), and so do the pod templates; every selector uses exactly
/// the stable ones (name, instance, component), and the daemon's selectors (Deployment, PDB,
/// Service, anti-affinity, ServiceMonitor, NetworkPolicy) all select its pods.
#[test]
fn recommended_labels_everywhere_and_stable_selectors() {
    let selector_keys: BTreeSet<String> = SELECTOR_LABELS.iter().map(|s| s.to_string()).collect();
    for r in renders() {
        let instance = if r.what == "deploy/overlays/custom" {
            "cluster-a"
        } else {
            "etcd-lifeboat"
        };
        let check = |what: &str, labels: &Value| {
            for (k, v) in COMMON_LABELS {
                assert_eq!(labels[*k].as_str(), Some(*v), "{}: {what}: {k}", r.what);
            }
            assert_eq!(
                labels["app.kubernetes.io/instance"].as_str(),
                Some(instance),
                "{}: {what}: instance",
                r.what
            );
            assert_eq!(
                labels["app.kubernetes.io/version"].as_str(),
                Some(env!("CARGO_PKG_VERSION")),
                "{}: {what}: version",
                r.what
            );
            assert!(
                labels["app.kubernetes.io/component"]
                    .as_str()
                    .is_some_and(|c| !c.is_empty()),
                "{}: {what}: component",
                r.what
            );
        };
        let mut pod_labels: Option<&Value> = None;
        for o in &r.objects {
            check(&id(o), &o["metadata"]["labels"]);
            match kind(o) {
                "Deployment" => {
                    check(
                        &format!("{} pod template", id(o)),
                        &o["spec"]["template"]["metadata"]["labels"],
                    );
                    pod_labels = Some(&o["spec"]["template"]["metadata"]["labels"]);
                    let anti = &o["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
                        ["requiredDuringSchedulingIgnoredDuringExecution"][0]["labelSelector"]
                        ["matchLabels"];
                    assert_eq!(
                        anti, &o["spec"]["selector"]["matchLabels"],
                        "{}: anti-affinity",
                        r.what
                    );
                }
                "CronJob" => {
                    let jt = &o["spec"]["jobTemplate"];
                    check(
                        &format!("{} job template", id(o)),
                        &jt["metadata"]["labels"],
                    );
                    check(
                        &format!("{} pod template", id(o)),
                        &jt["spec"]["template"]["metadata"]["labels"],
                    );
                }
                _ => {}
            }
        }
        for o in &r.objects {
            let Some(sel) = selector_of(o) else { continue };
            assert_eq!(
                label_keys(sel),
                selector_keys,
                "{}: {} selector",
                r.what,
                id(o)
            );
            // Every selector of the daemon's objects selects its pods, or (ServiceMonitor) its
            // Service, which carries the same labels. (The monitoring component with the
            // CronJob base: a ServiceMonitor without a target, only its rules matter.)
            let Some(pods) = pod_labels else {
                assert_eq!(
                    kind(o),
                    "ServiceMonitor",
                    "{}: {} without pods",
                    r.what,
                    id(o)
                );
                continue;
            };
            for (k, v) in sel.as_mapping().unwrap() {
                assert_eq!(pods.get(k), Some(v), "{}: {} selector {k:?}", r.what, id(o));
            }
        }
    }
}

/// kube-prometheus-stack's Prometheus selects ServiceMonitors and PrometheusRules by
/// `release: kube-prometheus-stack` (its default selectors for a release of that name): its
/// component sets the label on both and on nothing else; without it, no object has one.
#[test]
fn kube_prometheus_stack_component_sets_the_release_label() {
    let mut seen = 0;
    for r in renders() {
        let kps = r
            .components
            .iter()
            .any(|c| c == "deploy/components/kube-prometheus-stack")
            || r.what == "deploy/overlays/kube-prometheus-stack";
        for o in &r.objects {
            let release = o["metadata"]["labels"]["release"].as_str();
            if kps && CRD_KINDS.contains(&kind(o)) {
                assert_eq!(
                    release,
                    Some("kube-prometheus-stack"),
                    "{}: {}",
                    r.what,
                    id(o)
                );
                seen += 1;
            } else {
                assert_eq!(release, None, "{}: {}", r.what, id(o));
            }
        }
    }
    assert!(seen >= 6, "{seen}");
}

/// The grafana component's ConfigMap holds deploy/grafana/etcd-lifeboat.json byte for byte
/// under the label the Grafana sidecar watches, with a fixed name.
#[test]
fn grafana_component_holds_the_dashboard_file() {
    let json = read("deploy/grafana/etcd-lifeboat.json");
    let dashboard: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(dashboard["uid"], "etcd-lifeboat");
    let objs = kustomize_combination(&["deploy/daemon"], &["deploy/grafana"], "");
    let cms: Vec<&Value> = objs
        .iter()
        .filter(|o| o["metadata"]["labels"]["grafana_dashboard"].as_str() == Some("1"))
        .collect();
    assert_eq!(cms.len(), 1, "{objs:?}");
    assert_eq!(kind(cms[0]), "ConfigMap");
    assert_eq!(
        cms[0]["metadata"]["name"].as_str(),
        Some("etcd-lifeboat-dashboard")
    );
    assert_eq!(
        cms[0]["data"]["etcd-lifeboat.json"].as_str(),
        Some(json.as_str())
    );
}

/// The example overlay deploy/overlays/custom does what docs/deploy.md says: every container
/// runs the overridden image, the instance label changes on objects and selectors alike (checked
/// by recommended_labels_everywhere_and_stable_selectors), and the alert threshold patch gives
/// rules that promtool accepts, with the new threshold and nothing else changed.
#[test]
fn custom_overlay_image_instance_and_threshold() {
    let r = renders()
        .iter()
        .find(|r| r.what == "deploy/overlays/custom")
        .unwrap();
    let dep = r.objects.iter().find(|o| kind(o) == "Deployment").unwrap();
    let (_, containers) = pod_spec(dep);
    for c in containers {
        assert_eq!(
            c["image"].as_str(),
            Some("registry.example.internal/platform/etcd-lifeboat:0.1.0-custom.1")
        );
    }
    let pr = r
        .objects
        .iter()
        .find(|o| kind(o) == "PrometheusRule")
        .unwrap();
    let mut rules = yaml("deploy/prometheus/rules.yaml");
    let patched = &pr["spec"];
    let too_old = &patched["groups"][0]["rules"][0];
    assert_eq!(too_old["alert"].as_str(), Some("EtcdLifeboatBackupTooOld"));
    let expr = too_old["expr"].as_str().unwrap();
    assert!(expr.contains("> 7200") && !expr.contains("3600"), "{expr}");
    // Apart from the patched expr and summary, the rules are the rule file's.
    rules["groups"][0]["rules"][0]["expr"] = too_old["expr"].clone();
    rules["groups"][0]["rules"][0]["annotations"]["summary"] =
        too_old["annotations"]["summary"].clone();
    assert_eq!(patched, &rules);
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("rules.yaml");
    std::fs::write(&f, serde_yaml::to_string(patched).unwrap()).unwrap();
    let out = Command::new(promtool())
        .args(["check", "rules"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules on the patched rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The other renders keep the shipped image.
    for r in renders()
        .iter()
        .filter(|r| r.what != "deploy/overlays/custom")
    {
        for o in r
            .objects
            .iter()
            .filter(|o| ["Deployment", "CronJob"].contains(&kind(o)))
        {
            let (_, cs) = pod_spec(o);
            for c in cs {
                assert_eq!(
                    c["image"].as_str(),
                    Some(expected_image().as_str()),
                    "{}",
                    r.what
                );
            }
        }
    }
}

/// The kustomize snippets of docs/deploy.md build: each ```yaml block that starts with
/// `patches:`, `images:` or `labels:` is added to a kustomization of the daemon with every
/// component, and kustomize must accept it (the patches' `test` ops find the alert they name).
#[test]
fn docs_deploy_snippets_build() {
    let doc = read("docs/deploy.md");
    let mut n = 0;
    for block in doc.split("```yaml\n").skip(1) {
        let block = block.split("```").next().unwrap();
        if !["patches:", "images:", "labels:"]
            .iter()
            .any(|k| block.starts_with(k))
        {
            continue;
        }
        n += 1;
        let objs = kustomize_combination(
            &["deploy/daemon"],
            &[
                "deploy/components/monitoring",
                "deploy/components/kube-prometheus-stack",
                "deploy/components/networkpolicy",
                "deploy/grafana",
            ],
            block,
        );
        assert!(objs.len() >= 9, "{block}");
    }
    assert!(n >= 6, "only {n} snippets found in docs/deploy.md");
}
