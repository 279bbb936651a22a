//! Command-line interface: one clap struct per subcommand. The dispatch is in `main.rs`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Verified etcd backups to local or S3 storage, native restore, and a backup daemon.
#[derive(Parser, Debug)]
#[command(name = "etcd-lifeboat", version, about, propagate_version = true)]
pub struct Cli {
    /// Config file [default: ./etcd-lifeboat.yaml, else /etc/etcd-lifeboat/config.yaml].
    #[arg(long, global = true, env = "ETCD_LIFEBOAT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "ETCD_LIFEBOAT_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

/// Log line format.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Output format of commands that print data (`-w` as in etcdctl).
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    #[default]
    Table,
    Json,
}

/// `--output table|json` (alias `-w/--write-out`, as etcdctl spells it).
#[derive(Args, Debug, Clone, Copy)]
pub struct OutputArg {
    /// Output format.
    #[arg(long, short = 'o', visible_short_alias = 'w', visible_alias = "write-out", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// The subcommands.
// Parsed once per process: the size of the restore flags does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Take one verified snapshot now and store it; prints the manifest.
    Backup(BackupArgs),
    /// List backups in the store, newest first.
    List(ListArgs),
    /// Print hash, revision, total keys and size of a snapshot file (like `etcdctl snapshot status`).
    Status(StatusArgs),
    /// Download, decompress and check stored backups against their manifests.
    Verify(VerifyArgs),
    /// Rebuild member data dirs from a snapshot (like `etcdutl snapshot restore`).
    Restore(crate::restore::RestoreArgs),
    /// Apply the retention policy to the store.
    Prune(PruneArgs),
    /// Run scheduled backups with metrics, health endpoints and leader election.
    Daemon(crate::daemon::DaemonArgs),
    /// Configuration commands.
    #[command(subcommand)]
    Config(ConfigCommand),
}

/// `backup`.
#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Label stored in the manifest.
    #[arg(long)]
    pub tag: Option<String>,
    /// Push this run's metrics to a Prometheus Pushgateway (e.g. http://pushgateway:9091 or
    /// https://user:password@pushgateway:9091), grouping key job=etcd-lifeboat-backup and
    /// cluster_id=<etcd cluster id>. Basic auth also from env
    /// ETCD_LIFEBOAT_PUSHGATEWAY_USERNAME and ETCD_LIFEBOAT_PUSHGATEWAY_PASSWORD (or
    /// --pushgateway-password-file); a bearer token from ETCD_LIFEBOAT_PUSHGATEWAY_BEARER_TOKEN
    /// or --pushgateway-bearer-token-file.
    #[arg(
        long,
        value_name = "URL",
        env = "ETCD_LIFEBOAT_PUSHGATEWAY",
        hide_env_values = true
    )]
    pub pushgateway: Option<String>,
    /// PEM CA bundle trusted for an https:// Pushgateway, besides the system roots
    /// (Prometheus: tls_config.ca_file).
    #[arg(long, value_name = "FILE", env = "ETCD_LIFEBOAT_PUSHGATEWAY_CA_FILE")]
    pub pushgateway_ca_file: Option<PathBuf>,
    /// Basic-auth user name for the Pushgateway (Prometheus: basic_auth.username).
    #[arg(long, value_name = "NAME", env = "ETCD_LIFEBOAT_PUSHGATEWAY_USERNAME")]
    pub pushgateway_username: Option<String>,
    /// File holding the basic-auth password (Prometheus: basic_auth.password_file); env
    /// ETCD_LIFEBOAT_PUSHGATEWAY_PASSWORD gives the password itself.
    #[arg(
        long,
        value_name = "FILE",
        env = "ETCD_LIFEBOAT_PUSHGATEWAY_PASSWORD_FILE"
    )]
    pub pushgateway_password_file: Option<PathBuf>,
    /// File holding a bearer token for the Pushgateway (Prometheus: bearer_token_file); env
    /// ETCD_LIFEBOAT_PUSHGATEWAY_BEARER_TOKEN gives the token itself.
    #[arg(
        long,
        value_name = "FILE",
        env = "ETCD_LIFEBOAT_PUSHGATEWAY_BEARER_TOKEN_FILE"
    )]
    pub pushgateway_bearer_token_file: Option<PathBuf>,
    /// Do not show a progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Back up a stopped member's data dir (the directory given to etcd's --data-dir, holding
    /// member/snap/db and member/wal) instead of a live member's snapshot; no etcd connection
    /// is made. Refused while etcd runs on it (it holds the db's lock).
    #[arg(long, value_name = "DIR")]
    pub from_data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub output: OutputArg,
}

/// `list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub output: OutputArg,
}

/// `--identity FILE` (repeatable; env `ETCD_LIFEBOAT_AGE_IDENTITY_FILE`, comma-separated).
#[derive(Args, Debug, Clone, Default)]
pub struct IdentityArg {
    /// age identity file that decrypts encrypted backups: age-keygen output, an unencrypted
    /// ssh-ed25519/ssh-rsa private key, or an identity file encrypted with `age -p`
    /// (passphrase from ETCD_LIFEBOAT_AGE_PASSPHRASE, else prompted). Repeatable.
    #[arg(
        long = "identity",
        short = 'i',
        value_name = "FILE",
        env = "ETCD_LIFEBOAT_AGE_IDENTITY_FILE",
        value_delimiter = ','
    )]
    pub files: Vec<PathBuf>,
}

/// `status FILE`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Snapshot file: as `etcdctl snapshot save` wrote it, a db copied from a data dir, a
    /// `.zst` compressed one or a `.zst.age` encrypted one (detected by content; pass
    /// --identity for the latter).
    pub file: PathBuf,
    /// Do not check the sha256 trailer etcd appends to a snapshot (as `etcdctl snapshot
    /// status` does not): faster, but a flipped byte inside a value goes unnoticed.
    #[arg(long)]
    pub skip_hash_check: bool,
    #[command(flatten)]
    pub identity: IdentityArg,
    #[command(flatten)]
    pub output: OutputArg,
}

/// `verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Backup id (or unique prefix), or `latest`.
    #[arg(default_value = "latest", conflicts_with = "all")]
    pub id: String,
    /// Verify every backup in the store.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub identity: IdentityArg,
    /// For encrypted backups without --identity: accept the check of the stored object's size
    /// and sha256 against the manifest (the content is not decrypted nor checked); exit 0
    /// when they match.
    #[arg(long)]
    pub ciphertext_only: bool,
    #[command(flatten)]
    pub output: OutputArg,
}

/// `prune`.
#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Print what would be deleted and delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub output: OutputArg,
}

/// `config ...`.
#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Load and validate the config (files exist, keys known, values sane); exit 2 naming the key.
    Check,
}
