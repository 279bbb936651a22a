//! Configuration: YAML file, environment overrides, validation.
//!
//! Shape (see `config/*.yaml` for complete examples and `docs/config.md` for the reference):
//!
//! ```yaml
//! etcd:
//!   endpoints: ["https://127.0.0.1:2379"]       # ETCDCTL_ENDPOINTS
//!   tls: {ca_file: ..., cert_file: ..., key_file: ..., server_name: ...}
//!   auth: {username: ..., password_file: ...}   # ETCDCTL_USER, ETCDCTL_PASSWORD
//!   dial_timeout: 5s
//!   request_timeout: 10s
//!   snapshot_timeout: 30m
//! storage:
//!   backend: local            # local | s3
//!   local: {path: /var/lib/etcd-lifeboat}
//!   s3: {bucket: ..., prefix: ..., region: ..., endpoint: ..., force_path_style: true}
//! compression: {level: 3, threads: 1}
//! schedule: {cron: "0 */30 * * * *", timezone: UTC}
//! retention: {keep_last: 24, keep_hourly: 24, keep_daily: 7, keep_weekly: 4, keep_monthly: 6}
//! leader_election: {enabled: false, lease_ttl: 15s}
//! http: {listen: "127.0.0.1:9790", max_backup_age: 2h}
//! ```
//!
//! Every section and key is optional and has a default. Unknown keys are errors. Environment
//! variables override the file: the `ETCDCTL_*` names that etcdctl reads, plus
//! `ETCD_LIFEBOAT_*` names listed in [`ENV_OVERRIDES`].
//!
//! Errors name the key (`etcd.tls.ca_file: file /x/ca.crt does not exist ...`); the CLI maps
//! them to exit code 2.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A configuration problem, naming the offending key (dotted path, or the environment variable
/// it came from) and what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// Dotted config key (`etcd.tls.ca_file`), environment variable or file path.
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl ConfigError {
    /// Builds an error for `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Default config file looked for in the working directory.
pub const DEFAULT_CONFIG_LOCAL: &str = "etcd-lifeboat.yaml";
/// Default config file looked for when there is none in the working directory.
pub const DEFAULT_CONFIG_SYSTEM: &str = "/etc/etcd-lifeboat/config.yaml";

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// How to reach etcd.
    pub etcd: EtcdConfig,
    /// Where backups are stored.
    pub storage: StorageConfig,
    /// zstd settings for stored snapshots.
    pub compression: CompressionConfig,
    /// Settings of one backup run.
    pub backup: BackupConfig,
    /// When the daemon backs up.
    pub schedule: ScheduleConfig,
    /// Which backups `prune` and the daemon keep.
    pub retention: RetentionConfig,
    /// Leader election between daemon replicas.
    pub leader_election: LeaderElectionConfig,
    /// The daemon's HTTP endpoints.
    pub http: HttpConfig,
    /// Client-side encryption of stored backups (age).
    pub encryption: EncryptionConfig,
    /// How the store's catalog is read (clock-skew tolerance).
    pub store: StoreConfig,
    /// The daemon's re-verification of the newest stored backup.
    pub verify: VerifyConfig,
    /// Name of the single cluster this config describes (a DNS label, `[a-z0-9-]`, at most 63
    /// characters): the `cluster` label of the daemon's metrics and the `--cluster` value.
    /// Unset: no `cluster` label. Not allowed together with `clusters`.
    pub name: Option<String>,
    /// Many clusters from one daemon: each entry names a cluster and the sections that differ
    /// from the top-level ones (see [`ClusterConfig`] and [`Config::clusters`]). Empty (the
    /// default): the top-level sections describe the one cluster.
    pub clusters: Vec<ClusterConfig>,
    /// Point-in-time recovery: continuous deltas from etcd's watch (off by default).
    pub pitr: PitrConfig,
}

/// One cluster of `clusters:`. Each section given replaces the top-level section of that
/// name as a whole; an omitted section is the top-level one, except `storage`, which is the
/// top-level storage with `/<name>` appended to `storage.local.path` and to
/// `storage.s3.prefix`, so that clusters never share a store by accident.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The cluster's name (a DNS label: `[a-z0-9-]`, 1 to 63 characters, starting and ending
    /// with a letter or digit), unique in `clusters`: the `cluster` label of metrics, the
    /// key of `/readyz`'s `clusters`, the `--cluster` value of the CLI.
    pub name: String,
    /// How to reach this cluster's etcd (default: the top-level `etcd`).
    #[serde(default)]
    pub etcd: Option<EtcdConfig>,
    /// Where this cluster's backups go (default: the top-level `storage` under `<name>/`).
    #[serde(default)]
    pub storage: Option<StorageConfig>,
    /// When this cluster is backed up (default: the top-level `schedule`).
    #[serde(default)]
    pub schedule: Option<ScheduleConfig>,
    /// Which of this cluster's backups are kept (default: the top-level `retention`).
    #[serde(default)]
    pub retention: Option<RetentionConfig>,
    /// Backup settings (default: the top-level `backup`).
    #[serde(default)]
    pub backup: Option<BackupConfig>,
    /// zstd settings (default: the top-level `compression`).
    #[serde(default)]
    pub compression: Option<CompressionConfig>,
    /// Encryption (default: the top-level `encryption`).
    #[serde(default)]
    pub encryption: Option<EncryptionConfig>,
    /// Re-verification schedule (default: the top-level `verify`).
    #[serde(default)]
    pub verify: Option<VerifyConfig>,
    /// Point-in-time recovery deltas (default: the top-level `pitr`).
    #[serde(default)]
    pub pitr: Option<PitrConfig>,
}

/// One cluster as the daemon and the CLI use it: its name (`None` for the single cluster of
/// a config without `name` and `clusters`) and its effective config (top-level sections with
/// the cluster's own sections applied; `clusters` empty).
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// The cluster's name, if it has one.
    pub name: Option<String>,
    /// The effective config of this cluster.
    pub config: Config,
    /// The etcd cluster ID (16 lower-case hex digits) that `--cluster <cluster-id>` named for
    /// the single unnamed cluster: the CLI then sees only that cluster's backups in the store
    /// ([`crate::store::Store::scoped_to_cluster`]). `None` otherwise.
    pub etcd_cluster_id: Option<String>,
}

/// True for an etcd cluster ID as the store's keys and manifests spell it: 16 lower-case hex
/// digits (`ResponseHeader.cluster_id` formatted `{:016x}`).
pub fn is_cluster_id(s: &str) -> bool {
    s.len() == 16
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks that `name` is a DNS label (`[a-z0-9-]`, 1 ..= 63 characters, letter or digit at
/// both ends), as cluster names become metric label values, JSON keys and CLI arguments.
///
/// Errors: a message saying what is wrong and what to write.
pub fn check_cluster_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid cluster name; use 1 to 63 characters a-z, 0-9 and '-', starting and ending with a letter or digit (e.g. prod-a)"
        ))
    }
}

pub use crate::crypto::EncryptionConfig;

/// Parses YAML `text` into `T`: the config file here, and the kubeadm etcd Pod manifest for
/// `restore --kubeadm-manifest`, so that serde_yaml is used in this one module.
///
/// Errors: serde_yaml's message (syntax, missing or mistyped fields, with line and column).
pub fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_yaml::from_str(text).map_err(|e| e.to_string())
}

impl From<crate::crypto::RecipientError> for ConfigError {
    fn from(e: crate::crypto::RecipientError) -> Self {
        ConfigError::new(e.key, e.message)
    }
}

/// Reading the store's catalog.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Manifests dated more than this ahead of this process's clock are flagged as
    /// future-dated: listed with a mark, reported, and ignored by the scheduler.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub future_tolerance: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            future_tolerance: Duration::from_secs(5 * 60),
        }
    }
}

/// The daemon's periodic re-verification of the newest backup (download, decompress, full
/// check against the manifest).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct VerifyConfig {
    /// When the daemon re-verifies (5- or 6-field cron, in `schedule.timezone`); `""` turns it
    /// off.
    pub cron: String,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig {
            cron: "0 0 4 * * *".to_string(),
        }
    }
}

/// Connection to the etcd cluster.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs (`https://10.0.0.1:2379`) or `host:port`. Env: `ETCDCTL_ENDPOINTS`
    /// (comma-separated).
    pub endpoints: Vec<String>,
    /// TLS settings; required for `https://` endpoints with client-cert auth.
    pub tls: Option<TlsConfig>,
    /// User/password authentication (etcd RBAC).
    pub auth: Option<AuthConfig>,
    /// Time allowed to open a connection to one endpoint. Env: `ETCDCTL_DIAL_TIMEOUT`.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub dial_timeout: Duration,
    /// Time allowed for one short request (status, member list). Env: `ETCDCTL_COMMAND_TIMEOUT`.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub request_timeout: Duration,
    /// Time allowed for a whole snapshot stream from one endpoint.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub snapshot_timeout: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".to_string()],
            tls: None,
            auth: None,
            dial_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            snapshot_timeout: Duration::from_secs(30 * 60),
        }
    }
}

/// TLS files, as a kubeadm node has them under `/etc/kubernetes/pki/etcd/`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// CA bundle (PEM) that signed the etcd server certificates. Env: `ETCDCTL_CACERT`.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM). Env: `ETCDCTL_CERT`.
    pub cert_file: Option<PathBuf>,
    /// Client private key (PEM). Env: `ETCDCTL_KEY`.
    pub key_file: Option<PathBuf>,
    /// Name to check the server certificate against, when it differs from the endpoint host.
    pub server_name: Option<String>,
}

/// etcd user/password authentication.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// User name. Env: `ETCDCTL_USER` (`user` or `user:password`).
    pub username: String,
    /// Password inline (prefer `password_file`). Env: `ETCDCTL_PASSWORD`.
    pub password: Option<String>,
    /// File whose first line is the password (e.g. a mounted Secret).
    pub password_file: Option<PathBuf>,
}

impl AuthConfig {
    /// The password from `password`, or the first line of `password_file`.
    ///
    /// Errors: the password file cannot be read (names `etcd.auth.password_file`).
    pub fn resolve_password(&self) -> Result<String, ConfigError> {
        if let Some(p) = &self.password {
            return Ok(p.clone());
        }
        match &self.password_file {
            Some(path) => std::fs::read_to_string(path)
                .map(|s| s.lines().next().unwrap_or("").to_string())
                .map_err(|e| {
                    ConfigError::new(
                        "etcd.auth.password_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                }),
            None => Ok(String::new()),
        }
    }
}

/// Which object store backend holds the backups.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A directory on a local or mounted file system (the default).
    #[default]
    Local,
    /// Amazon S3 or an S3-compatible store (Ceph RGW, MinIO, Garage).
    S3,
}

/// Storage settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `local` or `s3`. Env: `ETCD_LIFEBOAT_STORAGE_BACKEND`.
    pub backend: Backend,
    /// Settings of the `local` backend.
    pub local: LocalConfig,
    /// Settings of the `s3` backend.
    pub s3: S3Config,
}

/// The local directory store.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LocalConfig {
    /// Root directory of the store. Env: `ETCD_LIFEBOAT_LOCAL_PATH`.
    pub path: PathBuf,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            path: PathBuf::from("/var/lib/etcd-lifeboat"),
        }
    }
}

/// When the S3 client sends request checksums.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ChecksumMode {
    /// Only where the operation requires one (works with most S3-compatible stores).
    #[default]
    WhenRequired,
    /// On every operation that supports one (AWS S3 default in newer SDKs).
    WhenSupported,
}

/// The S3 store. Credentials come from the standard AWS chain (environment, shared profile,
/// web identity / IRSA, container and instance metadata).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// Bucket name (must exist). Env: `ETCD_LIFEBOAT_S3_BUCKET`.
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/`. Env:
    /// `ETCD_LIFEBOAT_S3_PREFIX`.
    pub prefix: String,
    /// Region; default from the AWS chain (`AWS_REGION`), else `us-east-1`. Env:
    /// `ETCD_LIFEBOAT_S3_REGION`.
    pub region: Option<String>,
    /// Custom endpoint URL for S3-compatible stores (`https://minio.example:9000`). Env:
    /// `ETCD_LIFEBOAT_S3_ENDPOINT`.
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible stores need.
    /// Env: `ETCD_LIFEBOAT_S3_FORCE_PATH_STYLE`.
    pub force_path_style: bool,
    /// Extra CA bundle (PEM) trusted for the endpoint.
    pub ca_file: Option<PathBuf>,
    /// Allow a plain `http://` endpoint. Without it an `http://` endpoint is a config error.
    pub insecure: bool,
    /// `when_required` (default) or `when_supported`.
    pub checksum: ChecksumMode,
    /// Size of one multipart upload part, in bytes (5 MiB ..= 5 GiB).
    pub part_size: u64,
    /// Server-side encryption sent on every PutObject and CreateMultipartUpload.
    pub sse: Option<SseMode>,
    /// KMS key id or ARN for `sse: aws:kms` (default: the bucket's or account's KMS key).
    pub sse_kms_key_id: Option<String>,
    /// Object Lock retention put on every backup object (the bucket must have Object Lock
    /// enabled).
    pub object_lock: Option<ObjectLockConfig>,
}

/// S3 server-side encryption algorithm.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum SseMode {
    /// SSE-S3 (`AES256`).
    #[serde(rename = "AES256")]
    Aes256,
    /// SSE-KMS (`aws:kms`).
    #[serde(rename = "aws:kms")]
    AwsKms,
}

/// S3 Object Lock mode.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum ObjectLockMode {
    /// Users with `s3:BypassGovernanceRetention` can still delete.
    Governance,
    /// Nobody can delete before the retention date.
    Compliance,
}

/// Object Lock retention of backup objects.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ObjectLockConfig {
    /// `GOVERNANCE` or `COMPLIANCE`.
    pub mode: ObjectLockMode,
    /// How long each object is retained from its upload (`30d`).
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub retain_for: Duration,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            bucket: String::new(),
            prefix: String::new(),
            region: None,
            endpoint: None,
            force_path_style: false,
            ca_file: None,
            insecure: false,
            checksum: ChecksumMode::WhenRequired,
            part_size: 8 * 1024 * 1024,
            sse: None,
            sse_kms_key_id: None,
            object_lock: None,
        }
    }
}

/// zstd compression of stored snapshots.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CompressionConfig {
    /// zstd level, 1 ..= 19 (3 is zstd's default). Env: `ETCD_LIFEBOAT_COMPRESSION_LEVEL`.
    pub level: i32,
    /// Compression threads. 1 (default): one thread, in a pipeline stage of its own, which
    /// keeps pace with etcd's snapshot stream at levels up to ~9 and needs ~7 MiB; N >= 2:
    /// zstd's multi-threaded mode with N workers (for high levels; ~25 MiB each); 0: one
    /// worker per core.
    pub threads: u32,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig {
            level: 3,
            threads: 1,
        }
    }
}

/// Settings of one backup run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BackupConfig {
    /// Directory for the temporary snapshot file (needs room for one raw snapshot); default
    /// the system temp dir. Env: `ETCD_LIFEBOAT_TEMP_DIR`.
    pub temp_dir: Option<PathBuf>,
    /// Control-plane files and directories (absolute paths) stored with every backup as a
    /// second object, `<id>.files.tar.zst[.age]`: kubeadm's /etc/kubernetes/pki and
    /// /etc/kubernetes/manifests (the EncryptionConfiguration named in kube-apiserver.yaml is
    /// added automatically). Needs encryption.age_recipients unless `files_unencrypted`.
    pub files: Vec<PathBuf>,
    /// Allow `files` to be stored without age encryption (they hold the cluster CA key).
    pub files_unencrypted: bool,
}

/// The daemon's schedule.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleConfig {
    /// 5-field crontab (`*/30 * * * *`) or 6-field with seconds (`0 */30 * * * *`).
    pub cron: String,
    /// IANA time zone the expression is read in (`Europe/Berlin`); default UTC.
    pub timezone: Option<String>,
}

impl ScheduleConfig {
    /// `timezone` parsed (an IANA name; UTC when unset): the one place it is parsed, for
    /// validation, the daemon's schedules and retention's calendar periods.
    ///
    /// Errors: an unknown name, as a [`ConfigError`] on `schedule.timezone` with the fix.
    pub fn time_zone(&self) -> Result<chrono_tz::Tz, ConfigError> {
        let Some(tz) = &self.timezone else {
            return Ok(chrono_tz::Tz::UTC);
        };
        chrono_tz::Tz::from_str(tz).map_err(|_| {
            ConfigError::new(
                "schedule.timezone",
                format!("unknown time zone {tz:?}; use an IANA name such as UTC or Europe/Berlin"),
            )
        })
    }
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            cron: "0 */30 * * * *".to_string(),
            timezone: None,
        }
    }
}

/// Grandfather-father-son retention. A backup is kept when any rule keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Keep the newest N backups.
    pub keep_last: u32,
    /// Keep the newest backup of each of the last N hours that have one.
    pub keep_hourly: u32,
    /// Keep the newest backup of each of the last N days that have one.
    pub keep_daily: u32,
    /// Keep the newest backup of each of the last N ISO weeks that have one.
    pub keep_weekly: u32,
    /// Keep the newest backup of each of the last N months that have one.
    pub keep_monthly: u32,
    /// Objects without a manifest older than this are removed by prune.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub orphan_grace: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            keep_last: 24,
            keep_hourly: 24,
            keep_daily: 7,
            keep_weekly: 4,
            keep_monthly: 6,
            orphan_grace: Duration::from_secs(6 * 3600),
        }
    }
}

/// Leader election between daemon replicas (etcd election API on a lease).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LeaderElectionConfig {
    /// Run for leadership before backing up.
    pub enabled: bool,
    /// Lease TTL: a dead leader is replaced within this time.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub lease_ttl: Duration,
    /// Election name (etcd key prefix) shared by the replicas.
    pub name: String,
}

impl Default for LeaderElectionConfig {
    fn default() -> Self {
        LeaderElectionConfig {
            enabled: false,
            lease_ttl: Duration::from_secs(15),
            name: "/etcd-lifeboat/leader".to_string(),
        }
    }
}

/// The daemon's HTTP listener.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address for `/metrics`, `/healthz`, `/readyz`; loopback by default (a daemon with host
    /// networking must not expose them on every interface). The Deployment sets the pod IP.
    /// Env: `ETCD_LIFEBOAT_HTTP_LISTEN`.
    pub listen: String,
    /// `/readyz` fails when the newest backup in the store is older than this.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub max_backup_age: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:9790".to_string(),
            max_backup_age: Duration::from_secs(2 * 3600),
        }
    }
}

/// Pattern of a duration as `humantime` parses it: one or more `<number><unit>` terms,
/// optionally space-separated (`30s`, `1h 30m`, `2days`, `500ms`).
pub const DURATION_PATTERN: &str = r"^\s*[0-9]+\s*[a-zA-Zµ]+(\s*[0-9]+\s*[a-zA-Zµ]+)*\s*$";

/// Schema of the `humantime_serde` duration fields: a string in humantime's syntax.
fn duration_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "pattern": DURATION_PATTERN,
        "examples": ["30s", "5m", "1h 30m", "7d"],
        "description": "A duration as the humantime crate reads it: numbers with units ns, us, ms, s (sec, second), m (min, minute), h (hr, hour), d (day), w (week), M (month), y (year), e.g. \"90s\", \"1h 30m\"."
    })
}

/// The JSON Schema (draft 2020-12) of config.yaml, generated from [`Config`] and its
/// sections: every key with its type, description (the field's doc) and default; durations as
/// strings matching [`DURATION_PATTERN`]; enums as the names the YAML uses (`local`, `s3`,
/// `AES256`, `GOVERNANCE`, ...); `additionalProperties: false` where unknown keys are errors.
/// `etcd-lifeboat config schema` prints it; editors (yaml-language-server) and CI can
/// validate a config against it. Environment overrides ([`ENV_OVERRIDES`]) and checks across
/// keys and of files ([`Config::validate`]) are not part of it.
pub fn schema() -> serde_json::Value {
    let schema = schemars::schema_for!(Config);
    let mut v = serde_json::to_value(schema).expect("a JSON Schema serialises");
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "title".into(),
            "etcd-lifeboat config.yaml".to_string().into(),
        );
    }
    v
}

/// Environment variables that override config keys, with the key each overrides.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("ETCDCTL_ENDPOINTS", "etcd.endpoints"),
    ("ETCDCTL_CACERT", "etcd.tls.ca_file"),
    ("ETCDCTL_CERT", "etcd.tls.cert_file"),
    ("ETCDCTL_KEY", "etcd.tls.key_file"),
    ("ETCDCTL_USER", "etcd.auth.username"),
    ("ETCDCTL_PASSWORD", "etcd.auth.password"),
    ("ETCDCTL_DIAL_TIMEOUT", "etcd.dial_timeout"),
    ("ETCDCTL_COMMAND_TIMEOUT", "etcd.request_timeout"),
    ("ETCD_LIFEBOAT_STORAGE_BACKEND", "storage.backend"),
    ("ETCD_LIFEBOAT_LOCAL_PATH", "storage.local.path"),
    ("ETCD_LIFEBOAT_S3_BUCKET", "storage.s3.bucket"),
    ("ETCD_LIFEBOAT_S3_PREFIX", "storage.s3.prefix"),
    ("ETCD_LIFEBOAT_S3_REGION", "storage.s3.region"),
    ("ETCD_LIFEBOAT_S3_ENDPOINT", "storage.s3.endpoint"),
    (
        "ETCD_LIFEBOAT_S3_FORCE_PATH_STYLE",
        "storage.s3.force_path_style",
    ),
    ("ETCD_LIFEBOAT_S3_INSECURE", "storage.s3.insecure"),
    ("ETCD_LIFEBOAT_COMPRESSION_LEVEL", "compression.level"),
    ("ETCD_LIFEBOAT_TEMP_DIR", "backup.temp_dir"),
    ("ETCD_LIFEBOAT_HTTP_LISTEN", "http.listen"),
    ("ETCD_LIFEBOAT_AGE_RECIPIENTS", "encryption.age_recipients"),
];

impl Config {
    /// Parses YAML text. An empty document gives the defaults.
    ///
    /// Errors: YAML syntax, unknown keys, wrong types; the message carries serde_yaml's key
    /// path and line, and `key` is `origin`.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_yaml::from_str(text).map_err(|e| {
            let mut msg = e.to_string();
            // serde's words for a duration say nothing of the syntax.
            if msg.contains("expected a duration") {
                msg += " (a number with a unit: 500ms, 5s, 10m, 1h)";
            }
            ConfigError::new(origin, msg)
        })
    }

    /// Finds the config file: `explicit`, else `./etcd-lifeboat.yaml`, else
    /// `/etc/etcd-lifeboat/config.yaml`. `None` when no file exists and none was named
    /// (defaults plus environment are used).
    pub fn locate(explicit: Option<&Path>) -> Option<PathBuf> {
        if let Some(p) = explicit {
            return Some(p.to_path_buf());
        }
        [DEFAULT_CONFIG_LOCAL, DEFAULT_CONFIG_SYSTEM]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
    }

    /// Loads the file (if any), applies the process environment and validates.
    ///
    /// Errors: unreadable file, bad YAML, bad environment value, failed [`Config::validate`].
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let mut cfg = match Config::locate(explicit) {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    ConfigError::new(
                        path.display().to_string(),
                        format!(
                            "cannot read config file: {e}{}",
                            if explicit.is_some() {
                                " (check the --config path)"
                            } else {
                                " (pass --config FILE)"
                            }
                        ),
                    )
                })?;
                Config::from_yaml(&text, &path.display().to_string())?
            }
            None => Config::default(),
        };
        cfg.apply_env(|k| std::env::var(k).ok())?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Applies the environment overrides of [`ENV_OVERRIDES`], read through `get` (injectable
    /// for tests). Each variable sets its key in the YAML tree of the config; the value is read
    /// as the key's type: a list is comma-separated (and newline-separated), a bool is
    /// `true/false/1/0/yes/no`, a number a number, anything else a string (durations as `5s`).
    /// `ETCDCTL_USER` may be `user:password` (as etcdctl reads it), and a password from the
    /// environment replaces `etcd.auth.password_file`, as every variable wins over the file.
    ///
    /// Errors: a value that does not parse as its key's type (names the variable).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        use serde_yaml::Value;
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let mut tree = serde_yaml::to_value(&*self).expect("config serialises");
        for &(var, key) in ENV_OVERRIDES {
            let Some(raw) = get(var) else { continue };
            let mut assignments = vec![(key, raw.clone())];
            if var == "ETCDCTL_USER" {
                if let Some((user, password)) = raw.split_once(':') {
                    assignments = vec![
                        (key, user.to_string()),
                        ("etcd.auth.password", password.to_string()),
                    ];
                }
            }
            for (key, raw) in assignments {
                let slot = yaml_slot(&mut tree, key);
                *slot = match &*slot {
                    Value::Sequence(_) => Value::Sequence(
                        raw.split([',', '\n'])
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(|s| Value::String(s.to_string()))
                            .collect(),
                    ),
                    Value::Bool(_) => Value::Bool(parse_env_bool(var, &raw)?),
                    Value::Number(_) => serde_yaml::from_str::<Value>(&raw)
                        .ok()
                        .filter(Value::is_number)
                        .ok_or_else(|| ConfigError::new(var, format!("{raw:?} is not a number")))?,
                    _ => Value::String(raw),
                };
                if key == "etcd.auth.password" {
                    *yaml_slot(&mut tree, "etcd.auth.password_file") = Value::Null;
                }
            }
            // Typed check per variable, so the error names the variable that broke it.
            serde_yaml::from_value::<Config>(tree.clone())
                .map_err(|e| ConfigError::new(var, format!("{raw:?}: {e}")))?;
        }
        *self = serde_yaml::from_value(tree).expect("checked after each variable");
        Ok(())
    }

    /// The clusters this config describes, in config order: the entries of `clusters` with
    /// their effective configs (top-level sections, the entry's own sections applied, storage
    /// under `<name>/` when the entry has none, the election name suffixed `-<name>`), or
    /// the single cluster (this config, named by `name`) when `clusters` is empty.
    pub fn clusters(&self) -> Vec<Cluster> {
        if self.clusters.is_empty() {
            return vec![Cluster {
                name: self.name.clone(),
                config: self.clone(),
                etcd_cluster_id: None,
            }];
        }
        self.clusters
            .iter()
            .map(|c| Cluster {
                name: Some(c.name.clone()),
                config: self.cluster_config(c),
                etcd_cluster_id: None,
            })
            .collect()
    }

    fn cluster_config(&self, c: &ClusterConfig) -> Config {
        let mut cfg = self.clone();
        cfg.clusters = Vec::new();
        cfg.name = Some(c.name.clone());
        if let Some(e) = &c.etcd {
            cfg.etcd = e.clone();
        }
        match &c.storage {
            Some(s) => cfg.storage = s.clone(),
            None => {
                cfg.storage.local.path = cfg.storage.local.path.join(&c.name);
                let p = cfg.storage.s3.prefix.trim_matches('/');
                cfg.storage.s3.prefix = if p.is_empty() {
                    c.name.clone()
                } else {
                    format!("{p}/{}", c.name)
                };
            }
        }
        if let Some(x) = &c.schedule {
            cfg.schedule = x.clone();
        }
        if let Some(x) = &c.retention {
            cfg.retention = x.clone();
        }
        if let Some(x) = &c.backup {
            cfg.backup = x.clone();
        }
        if let Some(x) = &c.compression {
            cfg.compression = x.clone();
        }
        if let Some(x) = &c.encryption {
            cfg.encryption = x.clone();
        }
        if let Some(x) = &c.verify {
            cfg.verify = x.clone();
        }
        if let Some(x) = &c.pitr {
            cfg.pitr = x.clone();
        }
        // One election per cluster; `-` keeps the key prefix out of the single-cluster one's.
        cfg.leader_election.name = format!("{}-{}", self.leader_election.name, c.name);
        cfg
    }

    /// The cluster `--cluster NAME` selects: `Some(name)` must name a cluster of the config;
    /// `None` is the one cluster when there is exactly one. A config without `name` and
    /// `clusters` is one cluster named by its etcd cluster ID: `Some(<cluster-id>)` (16 hex
    /// digits, as `list` shows them) selects it with [`Cluster::etcd_cluster_id`] set.
    ///
    /// Errors ([`ConfigError`] on `--cluster`): an unknown name, or no name with several
    /// clusters; both list the names.
    pub fn select_cluster(&self, name: Option<&str>) -> Result<Cluster, ConfigError> {
        let all = self.clusters();
        let names = || {
            all.iter()
                .filter_map(|c| c.name.as_deref())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match name {
            None if all.len() == 1 => Ok(all[0].clone()),
            None => Err(ConfigError::new(
                "--cluster",
                format!(
                    "the config has {} clusters; choose one with --cluster NAME ({})",
                    all.len(),
                    names()
                ),
            )),
            Some(n) => match all.iter().find(|c| c.name.as_deref() == Some(n)) {
                Some(c) => Ok(c.clone()),
                None if all.len() == 1 && all[0].name.is_none() && is_cluster_id(n) => {
                    Ok(Cluster {
                        etcd_cluster_id: Some(n.to_string()),
                        ..all[0].clone()
                    })
                }
                None if all.len() == 1 && all[0].name.is_none() => Err(ConfigError::new(
                    "--cluster",
                    format!(
                        "{n:?}: the config names no cluster; give the etcd cluster ID of the backups (16 hex digits: `cluster_id` in `list -o json`), set `name: {n}`, or drop --cluster"
                    ),
                )),
                None => Err(ConfigError::new(
                    "--cluster",
                    format!(
                        "no cluster {n:?} in the config; the clusters are: {}",
                        names()
                    ),
                )),
            },
        }
    }

    /// `name` and `clusters`: names valid and unique, each cluster's effective config valid
    /// (errors name the entry: `clusters[1] (prod-b): etcd.endpoints[0]`), no two clusters
    /// on the same store.
    fn validate_clusters(&self) -> Result<(), ConfigError> {
        if let Some(n) = &self.name {
            check_cluster_name(n).map_err(|m| ConfigError::new("name", m))?;
            if !self.clusters.is_empty() {
                return Err(ConfigError::new(
                    "name",
                    "names the single cluster; with `clusters:` give each entry its name and remove the top-level name",
                ));
            }
        }
        let mut stores: Vec<(String, String)> = Vec::new();
        for (i, c) in self.clusters.iter().enumerate() {
            let at = |key: &str| format!("clusters[{i}] ({}): {key}", c.name);
            check_cluster_name(&c.name)
                .map_err(|m| ConfigError::new(format!("clusters[{i}].name"), m))?;
            if let Some(j) = self.clusters[..i].iter().position(|o| o.name == c.name) {
                return Err(ConfigError::new(
                    format!("clusters[{i}].name"),
                    format!(
                        "{:?} is also the name of clusters[{j}]; names must be unique",
                        c.name
                    ),
                ));
            }
            let cfg = self.cluster_config(c);
            cfg.validate_one()
                .map_err(|e| ConfigError::new(at(&e.key), e.message))?;
            let store = match cfg.storage.backend {
                Backend::Local => format!("local {}", cfg.storage.local.path.display()),
                Backend::S3 => format!(
                    "s3 {} {} {}",
                    cfg.storage.s3.endpoint.as_deref().unwrap_or(""),
                    cfg.storage.s3.bucket,
                    cfg.storage.s3.prefix.trim_matches('/')
                ),
            };
            if let Some((other, _)) = stores.iter().find(|(_, s)| *s == store) {
                return Err(ConfigError::new(
                    at("storage"),
                    format!("same store as cluster {other} ({store}); give each cluster its own storage.local.path or storage.s3.prefix"),
                ));
            }
            stores.push((c.name.clone(), store));
        }
        Ok(())
    }

    /// Checks values and referenced files, of the top level and of every entry of
    /// `clusters`. Does not contact etcd or the store.
    ///
    /// Errors: the first problem found, naming its key (`clusters[i] (name): key` for an
    /// entry).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_one()?;
        self.validate_clusters()
    }

    fn validate_one(&self) -> Result<(), ConfigError> {
        let e = &self.etcd;
        if e.endpoints.is_empty() {
            return Err(ConfigError::new(
                "etcd.endpoints",
                "no endpoints; list at least one client URL such as https://127.0.0.1:2379",
            ));
        }
        for (i, ep) in e.endpoints.iter().enumerate() {
            validate_endpoint(ep)
                .map_err(|m| ConfigError::new(format!("etcd.endpoints[{i}]"), m))?;
        }
        for (key, d) in [
            ("etcd.dial_timeout", e.dial_timeout),
            ("etcd.request_timeout", e.request_timeout),
            ("etcd.snapshot_timeout", e.snapshot_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::new(key, "must be greater than 0 (e.g. 5s)"));
            }
        }
        if let Some(tls) = &e.tls {
            for (key, p) in [
                ("etcd.tls.ca_file", &tls.ca_file),
                ("etcd.tls.cert_file", &tls.cert_file),
                ("etcd.tls.key_file", &tls.key_file),
            ] {
                if let Some(p) = p {
                    check_readable_file(key, p)?;
                }
            }
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err(ConfigError::new(
                    if tls.cert_file.is_some() {
                        "etcd.tls.key_file"
                    } else {
                        "etcd.tls.cert_file"
                    },
                    "client certificate and key go together: set both cert_file and key_file",
                ));
            }
        }
        if let Some(auth) = &e.auth {
            if auth.username.is_empty() {
                return Err(ConfigError::new(
                    "etcd.auth.username",
                    "empty; set the etcd user name or remove the auth section",
                ));
            }
            if auth.password.is_some() && auth.password_file.is_some() {
                return Err(ConfigError::new(
                    "etcd.auth.password_file",
                    "set either password or password_file, not both",
                ));
            }
            if let Some(p) = &auth.password_file {
                check_readable_file("etcd.auth.password_file", p)?;
            }
        }
        match self.storage.backend {
            Backend::Local => {
                if self.storage.local.path.as_os_str().is_empty() {
                    return Err(ConfigError::new(
                        "storage.local.path",
                        "empty; set a directory",
                    ));
                }
            }
            Backend::S3 => {
                let s3 = &self.storage.s3;
                if s3.bucket.is_empty() {
                    return Err(ConfigError::new(
                        "storage.s3.bucket",
                        "required with backend s3 (env ETCD_LIFEBOAT_S3_BUCKET)",
                    ));
                }
                if let Some(ep) = &s3.endpoint {
                    if ep.starts_with("http://") && !s3.insecure {
                        return Err(ConfigError::new(
                            "storage.s3.endpoint",
                            format!(
                                "{ep} is plain HTTP; use https:// or set storage.s3.insecure: true"
                            ),
                        ));
                    }
                    if !ep.starts_with("http://") && !ep.starts_with("https://") {
                        return Err(ConfigError::new(
                            "storage.s3.endpoint",
                            format!("{ep:?} is not a URL; write https://host:port"),
                        ));
                    }
                    // The bucket in the endpoint's path (a common slip) would be sent before
                    // every key as well; a gateway under a path of its own is left alone.
                    let rest = ep.split_once("://").map_or("", |(_, r)| r);
                    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
                    if host.is_empty() || path.split('/').any(|seg| seg == s3.bucket) {
                        return Err(ConfigError::new(
                            "storage.s3.endpoint",
                            format!(
                                "{ep} has no host or names the bucket; write scheme://host:port only (the bucket goes in storage.s3.bucket, key prefixes in storage.s3.prefix)"
                            ),
                        ));
                    }
                }
                if s3.bucket.contains('/') || s3.bucket.contains(char::is_whitespace) {
                    return Err(ConfigError::new(
                        "storage.s3.bucket",
                        format!(
                            "{:?} is not a bucket name (no '/', no spaces, no s3:// scheme); a key prefix goes in storage.s3.prefix",
                            s3.bucket
                        ),
                    ));
                }
                if let Some(p) = &s3.ca_file {
                    check_readable_file("storage.s3.ca_file", p)?;
                }
                const MIB: u64 = 1024 * 1024;
                if !(5 * MIB..=5 * 1024 * MIB).contains(&s3.part_size) {
                    return Err(ConfigError::new(
                        "storage.s3.part_size",
                        "must be between 5 MiB (5242880) and 5 GiB bytes",
                    ));
                }
                validate_s3_protection(s3)?;
            }
        }
        if !(1..=19).contains(&self.compression.level) {
            return Err(ConfigError::new(
                "compression.level",
                format!(
                    "{} is out of range; use a zstd level 1..=19 (3 is the default)",
                    self.compression.level
                ),
            ));
        }
        if self.compression.threads > 256 {
            return Err(ConfigError::new(
                "compression.threads",
                "at most 256 (0 = one per core)",
            ));
        }
        if let Some(d) = &self.backup.temp_dir {
            if !d.is_dir() {
                return Err(ConfigError::new(
                    "backup.temp_dir",
                    format!("{} is not a directory", d.display()),
                ));
            }
        }
        for (i, f) in self.backup.files.iter().enumerate() {
            if !f.is_absolute() {
                return Err(ConfigError::new(
                    format!("backup.files[{i}]"),
                    format!(
                        "{} is not an absolute path; write it as /etc/kubernetes/pki",
                        f.display()
                    ),
                ));
            }
        }
        let encrypted = !self.encryption.age_recipients.is_empty()
            || self.encryption.age_recipients_file.is_some();
        if !self.backup.files.is_empty() && !encrypted && !self.backup.files_unencrypted {
            return Err(ConfigError::new(
                "backup.files",
                "files hold the cluster CA key: set encryption.age_recipients, or backup.files_unencrypted: true",
            ));
        }
        crate::config::parse_cron(&self.schedule.cron)
            .map_err(|m| ConfigError::new("schedule.cron", m))?;
        self.schedule.time_zone()?;
        if self.leader_election.lease_ttl < Duration::from_secs(2) {
            return Err(ConfigError::new(
                "leader_election.lease_ttl",
                "must be at least 2s",
            ));
        }
        if self.leader_election.name.is_empty() {
            return Err(ConfigError::new(
                "leader_election.name",
                "empty; set an etcd key prefix",
            ));
        }
        self.pitr.validate()?;
        crate::crypto::Recipients::from_config(&self.encryption)?;
        SocketAddr::from_str(&self.http.listen).map_err(|_| {
            ConfigError::new(
                "http.listen",
                format!(
                    "{:?} is not an address; write host:port such as 127.0.0.1:9790",
                    self.http.listen
                ),
            )
        })?;
        self.validate_catalog_keys()?;
        Ok(())
    }

    /// `store.future_tolerance`, `verify.cron` and `retention.orphan_grace`.
    fn validate_catalog_keys(&self) -> Result<(), ConfigError> {
        if self.store.future_tolerance.is_zero() {
            return Err(ConfigError::new(
                "store.future_tolerance",
                "must be greater than 0 (e.g. 5m): hosts' clocks always differ a little",
            ));
        }
        if !self.verify.cron.trim().is_empty() {
            parse_cron(&self.verify.cron).map_err(|m| {
                ConfigError::new(
                    "verify.cron",
                    format!("{m}; or set \"\" to turn re-verification off"),
                )
            })?;
        }
        // An upload in flight (data written, manifest not yet) must never look stale: the
        // grace covers the longest backup attempt, snapshot_timeout plus the daemon's default
        // --upload-timeout.
        let upload = Duration::from_secs(30 * 60);
        let min = self.etcd.snapshot_timeout.saturating_add(upload);
        if self.retention.orphan_grace < min {
            return Err(ConfigError::new(
                "retention.orphan_grace",
                format!(
                    "{} is shorter than etcd.snapshot_timeout ({}) plus the upload timeout (30m): prune could delete the data of a backup still uploading; raise retention.orphan_grace to at least {} or lower etcd.snapshot_timeout",
                    humantime::format_duration(self.retention.orphan_grace),
                    humantime::format_duration(self.etcd.snapshot_timeout),
                    humantime::format_duration(min)
                ),
            ));
        }
        Ok(())
    }
}

/// Parses a 5-field crontab expression (minute hour day month weekday) or a 6-field one with
/// seconds first, as the `cron` crate reads it (a 5-field expression fires at second 0).
///
/// Errors: a message saying which form was expected.
pub fn parse_cron(expr: &str) -> Result<cron::Schedule, String> {
    let fields = expr.split_whitespace().count();
    let full = match fields {
        5 => format!("0 {expr}"),
        6 | 7 => expr.to_string(),
        _ => {
            return Err(format!(
                "{expr:?} has {fields} fields; write 5 (\"*/30 * * * *\") or 6 with seconds (\"0 */30 * * * *\")"
            ))
        }
    };
    cron::Schedule::from_str(&full).map_err(|e| format!("{expr:?} is not a cron expression: {e}"))
}

/// Checks `storage.s3.sse`, `sse_kms_key_id` and `object_lock`: a KMS key id only with
/// `sse: aws:kms` and not empty; a retention of 1 s ..= 100 years (S3 needs a retain-until date
/// in the future).
fn validate_s3_protection(s3: &S3Config) -> Result<(), ConfigError> {
    if let Some(id) = &s3.sse_kms_key_id {
        if s3.sse != Some(SseMode::AwsKms) {
            return Err(ConfigError::new(
                "storage.s3.sse_kms_key_id",
                "only used with sse: aws:kms; set storage.s3.sse: aws:kms or remove the key id",
            ));
        }
        if id.trim().is_empty() {
            return Err(ConfigError::new(
                "storage.s3.sse_kms_key_id",
                "empty; give a KMS key id or ARN, or remove it to use the bucket's default key",
            ));
        }
    }
    if let Some(ol) = &s3.object_lock {
        const MAX: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
        if ol.retain_for < Duration::from_secs(1) || ol.retain_for > MAX {
            return Err(ConfigError::new(
                "storage.s3.object_lock.retain_for",
                format!(
                    "{} is out of range; use a duration from 1s to 100 years, e.g. 30d (longer \
                     than the retention policy keeps backups)",
                    humantime::format_duration(ol.retain_for)
                ),
            ));
        }
    }
    Ok(())
}

fn validate_endpoint(ep: &str) -> Result<(), String> {
    let rest = ep
        .strip_prefix("https://")
        .or_else(|| ep.strip_prefix("http://"))
        .unwrap_or(ep);
    if ep.contains("://") && !ep.starts_with("http://") && !ep.starts_with("https://") {
        return Err(format!(
            "{ep:?}: only http:// and https:// endpoints are supported"
        ));
    }
    let hostport = rest.trim_end_matches('/');
    match hostport.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!(
            "{ep:?} is not host:port or a URL like https://10.0.0.1:2379"
        )),
    }
}

fn check_readable_file(key: &str, p: &Path) -> Result<(), ConfigError> {
    match std::fs::File::open(p) {
        Ok(f) => match f.metadata() {
            Ok(m) if m.is_file() => Ok(()),
            _ => Err(ConfigError::new(
                key,
                format!("{} is not a regular file", p.display()),
            )),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ConfigError::new(
            key,
            format!("file {} does not exist; fix the path", p.display()),
        )),
        Err(e) => Err(ConfigError::new(
            key,
            format!("cannot read {}: {e}; check permissions", p.display()),
        )),
    }
}

/// The value at dotted `key` in a YAML mapping tree, creating mappings along the way (an
/// unset optional section such as `etcd.tls` is null in the tree).
fn yaml_slot<'a>(tree: &'a mut serde_yaml::Value, key: &str) -> &'a mut serde_yaml::Value {
    key.split('.').fold(tree, |node, part| {
        if !node.is_mapping() {
            *node = serde_yaml::Value::Mapping(Default::default());
        }
        let map = node.as_mapping_mut().expect("made a mapping above");
        map.entry(serde_yaml::Value::String(part.to_string()))
            .or_insert(serde_yaml::Value::Null)
    })
}

fn parse_env_bool(var: &str, v: &str) -> Result<bool, ConfigError> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        _ => Err(ConfigError::new(var, format!("{v:?} is not true or false"))),
    }
}

/// Point-in-time recovery (issue 16, docs/design/pitr.md): the daemon's leader watches the
/// whole keyspace from the newest backup's revision + 1 and stores the changes as delta
/// objects beside that backup (`<cluster>/<base-id>.pitr/`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PitrConfig {
    /// Stream deltas (daemon leader only).
    pub enabled: bool,
    /// How often a delta is cut and stored: the recovery point objective under writes.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub interval: Duration,
    /// A delta is cut early (at a revision boundary) once its plaintext reaches this many
    /// bytes; also bounds the local spill file.
    pub max_bytes: u64,
    /// Without writes, an empty delta is stored at most this often to advance the covered
    /// time.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "duration_schema")]
    pub idle_interval: Duration,
}

impl PitrConfig {
    /// Smallest `pitr.max_bytes`: below it a busy cluster stores a delta object per revision.
    pub const MIN_MAX_BYTES: u64 = 64 * 1024;

    /// `pitr.interval` and `pitr.idle_interval` above 0; `pitr.max_bytes` in
    /// [`Self::MIN_MAX_BYTES`]`..=`[`crate::pitr::manifest::MAX_RAW_BYTES`] (what a delta
    /// manifest may state; a larger cut could never be stored).
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, d) in [
            ("pitr.interval", self.interval),
            ("pitr.idle_interval", self.idle_interval),
        ] {
            if d.is_zero() {
                return Err(ConfigError::new(key, "must be greater than 0 (e.g. 10s)"));
            }
        }
        let max = crate::pitr::manifest::MAX_RAW_BYTES;
        if !(Self::MIN_MAX_BYTES..=max).contains(&self.max_bytes) {
            return Err(ConfigError::new(
                "pitr.max_bytes",
                format!(
                    "{} is outside {}..={max} bytes (default 67108864, 64 MiB)",
                    self.max_bytes,
                    Self::MIN_MAX_BYTES
                ),
            ));
        }
        Ok(())
    }
}

impl Default for PitrConfig {
    fn default() -> Self {
        PitrConfig {
            enabled: false,
            interval: Duration::from_secs(10),
            max_bytes: 64 * 1024 * 1024,
            idle_interval: Duration::from_secs(60),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn time_zone_is_utc_by_default_and_names_a_bad_one() {
        let mut c = Config::default();
        assert_eq!(c.schedule.time_zone().unwrap(), chrono_tz::Tz::UTC);
        c.schedule.timezone = Some("Europe/Berlin".into());
        assert_eq!(
            c.schedule.time_zone().unwrap(),
            chrono_tz::Tz::Europe__Berlin
        );
        c.schedule.timezone = Some("Mars/Olympus".into());
        let e = c.validate().unwrap_err();
        assert_eq!(e.key, "schedule.timezone");
        assert!(e.to_string().contains("Mars/Olympus"), "{e}");
    }

    #[test]
    fn backup_files_need_encryption_or_an_explicit_opt_out() {
        let mut c = Config::default();
        c.backup.files = vec![PathBuf::from("/etc/kubernetes/pki")];
        let e = c.validate().unwrap_err();
        assert_eq!(e.key, "backup.files");
        assert!(e.to_string().contains("encryption.age_recipients"), "{e}");
        c.backup.files_unencrypted = true;
        c.validate().unwrap();
        c.backup.files = vec![PathBuf::from("etc/kubernetes/pki")];
        assert_eq!(c.validate().unwrap_err().key, "backup.files[0]");
    }

    use super::*;

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_yaml("etcd:\n  endpoint: [x]\n", "c.yaml").unwrap_err();
        assert!(
            err.to_string().contains("unknown field `endpoint`"),
            "{err}"
        );
        assert!(err.to_string().contains("etcd"), "{err}");
    }

    #[test]
    fn bad_duration_is_named() {
        let err = Config::from_yaml("etcd:\n  dial_timeout: soon\n", "c.yaml").unwrap_err();
        assert!(err.to_string().contains("dial_timeout"), "{err}");
        // A bare number: the message shows the syntax.
        let err = Config::from_yaml("etcd:\n  dial_timeout: 5\n", "c.yaml").unwrap_err();
        assert!(err.to_string().contains("5s"), "{err}");
    }

    #[test]
    fn etcdctl_env_names_apply() {
        let mut c = Config::default();
        let env = |k: &str| match k {
            "ETCDCTL_ENDPOINTS" => Some("https://a:2379, https://b:2379".to_string()),
            "ETCDCTL_USER" => Some("root:pw".to_string()),
            "ETCDCTL_DIAL_TIMEOUT" => Some("3s".to_string()),
            _ => None,
        };
        c.apply_env(env).unwrap();
        assert_eq!(c.etcd.endpoints, vec!["https://a:2379", "https://b:2379"]);
        let auth = c.etcd.auth.unwrap();
        assert_eq!(
            (auth.username.as_str(), auth.password.as_deref()),
            ("root", Some("pw"))
        );
        assert_eq!(c.etcd.dial_timeout, Duration::from_secs(3));
    }

    #[test]
    fn every_env_override_applies_and_bad_values_name_the_variable() {
        // One plausible value per variable; each must change the config away from the default.
        let value = |var: &str| match var {
            "ETCDCTL_DIAL_TIMEOUT" | "ETCDCTL_COMMAND_TIMEOUT" => "7s",
            "ETCD_LIFEBOAT_STORAGE_BACKEND" => "s3",
            "ETCD_LIFEBOAT_S3_FORCE_PATH_STYLE" | "ETCD_LIFEBOAT_S3_INSECURE" => "true",
            "ETCD_LIFEBOAT_COMPRESSION_LEVEL" => "9",
            "ETCD_LIFEBOAT_HTTP_LISTEN" => "127.0.0.1:1",
            _ => "/x/y",
        };
        for &(var, key) in ENV_OVERRIDES {
            let mut c = Config::default();
            c.apply_env(|k| (k == var).then(|| value(var).to_string()))
                .unwrap_or_else(|e| panic!("{var}: {e}"));
            assert_ne!(c, Config::default(), "{var} did not change {key}");
        }
        let mut c = Config::default();
        c.etcd.auth = Some(AuthConfig {
            username: "u".into(),
            password: None,
            password_file: Some("/run/pw".into()),
        });
        c.apply_env(|k| (k == "ETCDCTL_PASSWORD").then(|| "pw".to_string()))
            .unwrap();
        let auth = c.etcd.auth.unwrap();
        assert_eq!(
            (auth.password.as_deref(), auth.password_file),
            (Some("pw"), None)
        );
        for (var, bad) in [
            ("ETCD_LIFEBOAT_COMPRESSION_LEVEL", "high"),
            ("ETCD_LIFEBOAT_S3_INSECURE", "maybe"),
            ("ETCDCTL_DIAL_TIMEOUT", "soon"),
            ("ETCD_LIFEBOAT_STORAGE_BACKEND", "ftp"),
        ] {
            let err = Config::default()
                .apply_env(|k| (k == var).then(|| bad.to_string()))
                .unwrap_err();
            assert_eq!(err.key, var, "{err}");
        }
    }

    #[test]
    fn validation_names_keys() {
        let mut c = Config::default();
        c.storage.backend = Backend::S3;
        assert_eq!(c.validate().unwrap_err().key, "storage.s3.bucket");
        let mut c = Config::default();
        c.compression.level = 40;
        assert_eq!(c.validate().unwrap_err().key, "compression.level");
        let mut c = Config::default();
        c.etcd.tls = Some(TlsConfig {
            ca_file: Some("/nonexistent/ca.crt".into()),
            ..Default::default()
        });
        let err = c.validate().unwrap_err();
        assert_eq!(err.key, "etcd.tls.ca_file");
        assert!(err.message.contains("does not exist"));
        let mut c = Config::default();
        c.schedule.cron = "every minute".into();
        assert_eq!(c.validate().unwrap_err().key, "schedule.cron");
        let mut c = Config::default();
        c.etcd.endpoints = vec!["localhost".into()];
        assert_eq!(c.validate().unwrap_err().key, "etcd.endpoints[0]");
        for (bytes, ok) in [
            (0, false),
            (1 << 16, true),
            (4 << 30, true),
            ((4 << 30) + 1, false),
        ] {
            let mut c = Config::default();
            c.pitr.max_bytes = bytes;
            match c.validate() {
                Ok(()) => assert!(ok, "{bytes}"),
                Err(e) => {
                    assert!(!ok, "{bytes}: {e}");
                    assert_eq!(e.key, "pitr.max_bytes");
                    assert!(e.message.contains(&bytes.to_string()), "{e}");
                }
            }
        }
        let mut c = Config::default();
        c.pitr.idle_interval = Duration::ZERO;
        assert_eq!(c.validate().unwrap_err().key, "pitr.idle_interval");
    }

    #[test]
    fn clusters_inherit_sections_and_get_their_own_store_and_election() {
        let c = Config::from_yaml(
            "storage: {backend: s3, s3: {bucket: b, prefix: backups/}}\n\
             schedule: {cron: \"0 * * * *\"}\n\
             clusters:\n\
             \x20 - {name: prod-a, etcd: {endpoints: [\"https://10.0.0.1:2379\"]}}\n\
             \x20 - name: prod-b\n\
             \x20   schedule: {cron: \"*/5 * * * *\"}\n\
             \x20   storage: {backend: local, local: {path: /srv/b}}\n",
            "c.yaml",
        )
        .unwrap();
        c.validate().unwrap();
        let all = c.clusters();
        let names: Vec<_> = all.iter().map(|c| c.name.clone().unwrap()).collect();
        assert_eq!(names, ["prod-a", "prod-b"]);
        let (a, b) = (&all[0].config, &all[1].config);
        assert_eq!(a.etcd.endpoints, ["https://10.0.0.1:2379"]);
        assert_eq!(b.etcd.endpoints, Config::default().etcd.endpoints);
        assert_eq!(a.storage.s3.prefix, "backups/prod-a");
        assert_eq!(a.storage.s3.bucket, "b");
        assert_eq!(b.storage.backend, Backend::Local);
        assert_eq!(b.storage.local.path, PathBuf::from("/srv/b"));
        assert_eq!(a.schedule.cron, "0 * * * *");
        assert_eq!(b.schedule.cron, "*/5 * * * *");
        assert_eq!(a.leader_election.name, "/etcd-lifeboat/leader-prod-a");
        assert!(a.clusters.is_empty() && a.name.as_deref() == Some("prod-a"));
        // Selection.
        assert_eq!(c.select_cluster(Some("prod-b")).unwrap().config, *b);
        let e = c.select_cluster(None).unwrap_err();
        assert!(e.message.contains("prod-a, prod-b"), "{e}");
        let e = c.select_cluster(Some("prod-c")).unwrap_err();
        assert!(e.message.contains("no cluster \"prod-c\""), "{e}");
        // The single-cluster config is one unnamed cluster, itself.
        let one = Config::default();
        assert_eq!(
            one.clusters(),
            [Cluster {
                name: None,
                config: one.clone(),
                etcd_cluster_id: None,
            }]
        );
        assert_eq!(one.select_cluster(None).unwrap().config, one);
        let e = one.select_cluster(Some("x")).unwrap_err();
        assert!(e.message.contains("etcd cluster ID"), "{e}");
        // ... and is named by the etcd cluster ID of its backups.
        let by_id = one.select_cluster(Some("cdf818194e3a8c32")).unwrap();
        assert_eq!(by_id.config, one);
        assert_eq!(by_id.etcd_cluster_id.as_deref(), Some("cdf818194e3a8c32"));
        assert!(one.select_cluster(Some("CDF818194E3A8C32")).is_err());
        assert!(one.select_cluster(Some("cdf818194e3a8c3")).is_err());
    }

    #[test]
    fn cluster_errors_name_the_cluster() {
        let entry = |name: &str| ClusterConfig {
            name: name.into(),
            ..Default::default()
        };
        let mut c = Config {
            clusters: vec![entry("a"), entry("A_b")],
            ..Default::default()
        };
        let e = c.validate().unwrap_err();
        assert_eq!(e.key, "clusters[1].name");
        assert!(e.message.contains("\"A_b\""), "{e}");
        c.clusters = vec![entry("a"), entry("a")];
        let e = c.validate().unwrap_err();
        assert!(e.message.contains("also the name of clusters[0]"), "{e}");
        let mut bad = entry("b");
        bad.schedule = Some(ScheduleConfig {
            cron: "often".into(),
            timezone: None,
        });
        c.clusters = vec![entry("a"), bad];
        let e = c.validate().unwrap_err();
        assert_eq!(e.key, "clusters[1] (b): schedule.cron", "{e}");
        // Two clusters on the same store.
        let mut same = entry("b");
        same.storage = Some(StorageConfig {
            local: LocalConfig {
                path: PathBuf::from("/var/lib/etcd-lifeboat/a"),
            },
            ..Default::default()
        });
        c.clusters = vec![entry("a"), same];
        let e = c.validate().unwrap_err();
        assert!(e.message.contains("same store as cluster a"), "{e}");
        c.clusters = vec![entry("a")];
        c.name = Some("x".into());
        assert_eq!(c.validate().unwrap_err().key, "name");
        c.clusters.clear();
        c.validate().unwrap();
        c.name = Some("-x".into());
        assert_eq!(c.validate().unwrap_err().key, "name");
        assert!(check_cluster_name(&"a".repeat(63)).is_ok());
        assert!(check_cluster_name(&"a".repeat(64)).is_err());
    }

    #[test]
    fn cron_accepts_five_and_six_fields() {
        assert!(parse_cron("*/30 * * * *").is_ok());
        assert!(parse_cron("*/2 * * * * *").is_ok());
        assert!(parse_cron("* *").is_err());
    }

    /// The bucket in the endpoint's path, or an s3:// URL or a path as the bucket, are config
    /// errors, not "does not exist" at run time; a gateway under a path of its own is fine.
    #[test]
    fn s3_endpoint_and_bucket_shapes() {
        let mut c = Config::default();
        c.storage.backend = Backend::S3;
        c.storage.s3.bucket = "etcd-backups".into();
        for ok in [
            "https://minio:9000",
            "https://minio:9000/",
            "https://s3.example",
            "https://gw.example/s3",
        ] {
            c.storage.s3.endpoint = Some(ok.into());
            c.validate().unwrap();
        }
        for bad in ["https://minio:9000/etcd-backups", "https://"] {
            c.storage.s3.endpoint = Some(bad.into());
            let e = c.validate().unwrap_err();
            assert_eq!(e.key, "storage.s3.endpoint", "{bad}");
            assert!(e.message.contains("names the bucket"), "{e}");
        }
        c.storage.s3.endpoint = None;
        for bad in ["s3://etcd-backups", "etcd-backups/prod", "etcd backups"] {
            c.storage.s3.bucket = bad.into();
            let e = c.validate().unwrap_err();
            assert_eq!(e.key, "storage.s3.bucket", "{bad}");
        }
    }

    #[test]
    fn s3_protection_keys_are_validated() {
        let mut c = Config::default();
        c.storage.backend = Backend::S3;
        c.storage.s3.bucket = "b".into();
        c.validate().unwrap();
        c.storage.s3.sse_kms_key_id = Some("alias/etcd".into());
        let e = c.validate().unwrap_err();
        assert_eq!(e.key, "storage.s3.sse_kms_key_id");
        assert!(e.message.contains("sse: aws:kms"), "{e}");
        c.storage.s3.sse = Some(SseMode::Aes256);
        assert_eq!(c.validate().unwrap_err().key, "storage.s3.sse_kms_key_id");
        c.storage.s3.sse = Some(SseMode::AwsKms);
        c.validate().unwrap();
        c.storage.s3.sse_kms_key_id = Some(" ".into());
        assert_eq!(c.validate().unwrap_err().key, "storage.s3.sse_kms_key_id");
        c.storage.s3.sse_kms_key_id = None;
        c.storage.s3.object_lock = Some(ObjectLockConfig {
            mode: ObjectLockMode::Compliance,
            retain_for: Duration::ZERO,
        });
        let e = c.validate().unwrap_err();
        assert_eq!(e.key, "storage.s3.object_lock.retain_for");
        c.storage.s3.object_lock.as_mut().unwrap().retain_for = Duration::from_secs(30 * 86400);
        c.validate().unwrap();
        let y: Config = serde_yaml::from_str(
            "storage: {backend: s3, s3: {bucket: b, sse: aws:kms, sse_kms_key_id: k, \
             object_lock: {mode: GOVERNANCE, retain_for: 30d}}}",
        )
        .unwrap();
        y.validate().unwrap();
        assert_eq!(
            y.storage.s3.object_lock.unwrap().retain_for,
            Duration::from_secs(30 * 86400)
        );
    }
}
