//! `config schema`: the JSON Schema of config.yaml printed by the binary is a valid draft
//! 2020-12 schema; every shipped example (config/*.yaml and the configs embedded in deploy/
//! ConfigMaps) validates against it; and what the loader rejects (unknown keys at any level,
//! wrong types, unknown enum names, durations humantime cannot read) the schema rejects too.

use crate::deploy_support::config_texts;
use etcd_lifeboat::config::Config;
use serde_json::{json, Value};

fn schema_from_binary() -> Value {
    let out = assert_cmd::Command::cargo_bin("etcd-lifeboat")
        .unwrap()
        .args(["config", "schema"])
        .env_remove("ETCD_LIFEBOAT_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn validator() -> jsonschema::Validator {
    let schema = schema_from_binary();
    jsonschema::meta::validate(&schema).unwrap_or_else(|e| panic!("not a valid schema: {e}"));
    jsonschema::validator_for(&schema).unwrap()
}

/// The YAML text as the JSON instance a validator (or an editor) sees.
fn instance(yaml: &str) -> Value {
    serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{e}: {yaml}"))
}

fn errors(v: &jsonschema::Validator, yaml: &str) -> Vec<String> {
    v.iter_errors(&instance(yaml))
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[test]
fn schema_describes_the_config() {
    let s = schema_from_binary();
    assert_eq!(s, etcd_lifeboat::config::schema());
    assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
    assert_eq!(s["title"], "etcd-lifeboat config.yaml");
    assert_eq!(s["type"], "object");
    // deny_unknown_fields everywhere: additionalProperties false on every object definition.
    assert_eq!(s["additionalProperties"], false, "{s:#}");
    let defs = s["$defs"].as_object().unwrap();
    for name in [
        "EtcdConfig",
        "TlsConfig",
        "S3Config",
        "RetentionConfig",
        "HttpConfig",
    ] {
        assert_eq!(
            defs[name]["additionalProperties"], false,
            "{name}: {:#}",
            defs[name]
        );
    }
    // Every top-level key of the config is a property, with its default.
    let default = serde_json::to_value(Config::default()).unwrap();
    let props = s["properties"].as_object().unwrap();
    assert_eq!(
        props.keys().collect::<Vec<_>>(),
        default.as_object().unwrap().keys().collect::<Vec<_>>()
    );
    // Durations: strings in humantime syntax, with the default as written in YAML.
    let dial = &defs["EtcdConfig"]["properties"]["dial_timeout"];
    assert_eq!(dial["type"], "string", "{dial:#}");
    assert!(dial["pattern"].is_string(), "{dial:#}");
    assert_eq!(dial["default"], "5s", "{dial:#}");
    // Enums by their serde names, documented.
    let text = s.to_string();
    for name in [
        "\"local\"",
        "\"s3\"",
        "\"AES256\"",
        "\"aws:kms\"",
        "\"GOVERNANCE\"",
        "\"when_required\"",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
    assert!(
        defs["EtcdConfig"]["properties"]["endpoints"]["description"]
            .as_str()
            .unwrap()
            .contains("ETCDCTL_ENDPOINTS"),
        "field docs become descriptions"
    );
}

#[test]
fn every_shipped_example_validates() {
    let v = validator();
    let texts = config_texts();
    assert!(
        texts.len() >= 6,
        "{:?}",
        texts.iter().map(|t| &t.0).collect::<Vec<_>>()
    );
    for (origin, text) in texts {
        let errs = errors(&v, &text);
        assert!(errs.is_empty(), "{origin}: {errs:#?}");
    }
    // The defaults, serialised, validate too (so `default` values are consistent).
    let default = serde_json::to_value(Config::default()).unwrap();
    assert!(v.is_valid(&default), "{default:#}");
    let empty = json!({});
    assert!(v.is_valid(&empty));
}

#[test]
fn what_the_loader_rejects_the_schema_rejects() {
    let v = validator();
    let bad = [
        ("unknown top-level key", "etcdd:\n  endpoints: [x]\n"),
        ("unknown nested key", "etcd:\n  tls:\n    ca: /x\n"),
        ("unknown key in s3.object_lock", "storage:\n  s3:\n    object_lock: {mode: GOVERNANCE, retain_for: 1d, legal_hold: true}\n"),
        ("wrong type", "compression:\n  level: high\n"),
        ("list expected", "etcd:\n  endpoints: 7\n"),
        ("negative count", "retention:\n  keep_last: -1\n"),
        ("unknown backend", "storage:\n  backend: gcs\n"),
        ("unknown sse", "storage:\n  s3:\n    sse: aes\n"),
        ("lower-case lock mode", "storage:\n  s3:\n    object_lock: {mode: governance, retain_for: 1d}\n"),
        ("duration without unit", "etcd:\n  dial_timeout: 5\n"),
        ("duration words", "http:\n  max_backup_age: soon\n"),
        ("object_lock without mode", "storage:\n  s3:\n    object_lock: {retain_for: 1d}\n"),
        ("cluster without name", "clusters:\n  - {etcd: {endpoints: [\"h:1\"]}}\n"),
        ("unknown key in a cluster", "clusters:\n  - {name: a, leader_election: {enabled: true}}\n"),
        ("unknown key in a cluster's etcd", "clusters:\n  - {name: a, etcd: {endpoint: [\"h:1\"]}}\n"),
    ];
    for (what, yaml) in bad {
        assert!(
            Config::from_yaml(yaml, "test").is_err(),
            "{what}: the loader accepts it, so the schema must not be the one rejecting it"
        );
        assert!(
            !v.is_valid(&instance(yaml)),
            "{what}: the schema accepts {yaml}"
        );
    }
    // A many-clusters config validates.
    let multi = "storage: {backend: s3, s3: {bucket: b}}\n\
                 clusters:\n\
                 \x20 - {name: prod-a, etcd: {endpoints: [\"https://10.0.0.1:2379\"]}}\n\
                 \x20 - {name: prod-b, schedule: {cron: \"*/5 * * * *\"}, retention: {keep_last: 3}}\n";
    Config::from_yaml(multi, "test").unwrap();
    assert!(v.is_valid(&instance(multi)), "{:?}", errors(&v, multi));
    // Durations humantime reads match the pattern.
    for d in ["30s", "1h 30m", "1h30m", "500ms", "2days", "7d", "1w"] {
        let yaml = format!("store:\n  future_tolerance: {d}\n");
        Config::from_yaml(&yaml, "test").unwrap_or_else(|e| panic!("{d}: {e}"));
        assert!(v.is_valid(&instance(&yaml)), "{d}: {:?}", errors(&v, &yaml));
    }
}
