//! Command-line interface: one clap struct per subcommand. The dispatch is in `main.rs`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use etcd_lifeboat::daemon::DaemonOptions;
use etcd_lifeboat::restore::RestoreOptions;

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
    Restore(RestoreArgs),
    /// Apply the retention policy to the store.
    Prune(PruneArgs),
    /// Run scheduled backups with metrics, health endpoints and leader election.
    Daemon(DaemonArgs),
    /// Configuration commands.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Delete backups by id: manifest, data and control-plane files objects together.
    Delete(DeleteArgs),
    /// Print a shell completion script to stdout (e.g. `source <(etcd-lifeboat completion bash)`).
    Completion(CompletionArgs),
    /// Print the man page (roff) to stdout, or write one page per command with --out-dir.
    Man(ManArgs),
}

/// `delete ID... [--dry-run] [--force]`.
#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// Backup ids as `list` prints them (exact ids, no prefixes or `latest`); write
    /// `CLUSTER_ID/ID` when the same id exists in several clusters of the store.
    #[arg(required = true, value_name = "ID")]
    pub ids: Vec<String>,
    /// Print what would be deleted and delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Allow deleting the newest backup of a cluster (refused otherwise).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub output: OutputArg,
    #[command(flatten)]
    pub cluster: ClusterArg,
}

/// `completion SHELL`.
#[derive(Args, Debug)]
pub struct CompletionArgs {
    /// Shell to generate the completion script for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `man [--out-dir DIR]`.
#[derive(Args, Debug)]
pub struct ManArgs {
    /// Write `etcd-lifeboat.1` and one `etcd-lifeboat-COMMAND.1` page per subcommand into DIR
    /// (created if missing) instead of printing the main page.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
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
    /// With --from-data-dir: the member's WAL directory when etcd runs with --wal-dir (else
    /// DIR/member/wal). Read for the member and cluster IDs.
    #[arg(long, value_name = "WAL_DIR", requires = "from_data_dir")]
    pub wal_dir: Option<PathBuf>,
    #[command(flatten)]
    pub output: OutputArg,
    #[command(flatten)]
    pub cluster: ClusterArg,
}

/// `list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub output: OutputArg,
    #[command(flatten)]
    pub cluster: ClusterArg,
}

/// `--cluster NAME`: which cluster of the config's `clusters:` (its etcd and storage) a
/// command works on.
#[derive(Args, Debug, Clone, Default)]
pub struct ClusterArg {
    /// Cluster of the config's `clusters:` list (or its top-level `name`) to work on. Needed
    /// when the config has several clusters (`list` without it lists them all). With a
    /// single unnamed cluster: the etcd cluster ID (16 hex digits) whose stored backups
    /// list, verify, prune, delete and restore --from-store see.
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
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
    #[command(flatten)]
    pub cluster: ClusterArg,
}

/// `prune`.
#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Print what would be deleted and delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub output: OutputArg,
    #[command(flatten)]
    pub cluster: ClusterArg,
}

/// `config ...`.
#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Load and validate the config (files exist, keys known, values sane); exit 2 naming the key.
    Check,
    /// Print the JSON Schema (draft 2020-12) of config.yaml, for editors and CI.
    Schema,
}

/// `etcd-lifeboat restore`: flags as `etcdutl snapshot restore` has them, plus sources and
/// extras (DESIGN.md "restore").
#[derive(Args, Debug, Clone)]
pub struct RestoreArgs {
    /// Snapshot file to restore: a raw db (`etcdctl snapshot save` output), `.db.zst` or
    /// `.db.zst.age` (detected by content).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["from_store", "snapshot_path"])]
    pub snapshot: Option<PathBuf>,
    /// Snapshot file as a positional argument (as `etcdutl snapshot restore FILE`).
    #[arg(value_name = "SNAPSHOT", conflicts_with = "from_store")]
    pub snapshot_path: Option<PathBuf>,
    /// Restore a backup from the configured store: its id, a unique id prefix, or `latest`.
    #[arg(long, value_name = "ID|latest")]
    pub from_store: Option<String>,
    /// Data dir to create (absent or empty) [default: <name>.etcd].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Dedicated WAL dir (absent or empty) [default: <data-dir>/member/wal].
    #[arg(long, value_name = "DIR")]
    pub wal_dir: Option<PathBuf>,
    /// Name of the member to restore [default: default].
    #[arg(long)]
    pub name: Option<String>,
    /// Members of the restored cluster, `name=peerURL,...` [default: default=http://localhost:2380].
    #[arg(long, value_name = "NAME=URL,...")]
    pub initial_cluster: Option<String>,
    /// Token of the restored cluster; member and cluster IDs derive from it [default: etcd-cluster].
    #[arg(long, value_name = "TOKEN")]
    pub initial_cluster_token: Option<String>,
    /// This member's peer URLs; must equal its URLs in --initial-cluster [default: those URLs].
    #[arg(long, value_name = "URLS")]
    pub initial_advertise_peer_urls: Option<String>,
    /// Do not compare the sha256 trailer (for a db copied out of a data dir, which has none).
    #[arg(long)]
    pub skip_hash_check: bool,
    #[command(flatten)]
    pub identity: IdentityArg,
    /// Write every member of --initial-cluster into DIR/<name> (rebuild a whole cluster).
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// Read name, data dir, peer URLs, initial cluster and token from a kubeadm etcd static
    /// pod manifest; flags given explicitly win.
    #[arg(long, value_name = "PATH")]
    pub kubeadm_manifest: Option<PathBuf>,
    /// Print the plan (members, IDs, directories) and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub output: OutputArg,
    /// Raise the latest revision by N after the restore (etcdutl 3.5.10+ `--bump-revision`;
    /// requires --mark-compacted), so that revisions never go backwards for watchers
    /// [default: 0; with --kubeadm-manifest 1000000000, `--bump-revision 0` opts out].
    #[arg(long, value_name = "N")]
    pub bump_revision: Option<u64>,
    /// Mark the bumped revision as compacted, so every watcher re-lists (etcdutl 3.5.10+;
    /// required with --bump-revision > 0, refused otherwise; implied with --kubeadm-manifest).
    #[arg(long)]
    pub mark_compacted: bool,
    /// Take the members (names and peer URLs) of the restored cluster from the snapshot's own
    /// membership (its `members` bucket) instead of --initial-cluster.
    #[arg(long, conflicts_with = "initial_cluster")]
    pub members_from_snapshot: bool,
    /// etcd version that will run the restored data (e.g. 3.5.30) [default: the tag of
    /// --kubeadm-manifest's image]: warns when older than the snapshot's writer, refuses a
    /// storage version it cannot boot (a 3.6 db on 3.4).
    #[arg(long, value_name = "VERSION")]
    pub target_version: Option<String>,
    /// With --from-store: extract the backup's control-plane files (`backup.files`) below DIR
    /// (`DIR/etc/kubernetes/pki/...`, recorded modes) instead of restoring a data dir; checked
    /// against the manifest; never overwrites (refused, nothing written, when a file exists).
    #[arg(long, value_name = "DIR", requires = "from_store")]
    pub files_to: Option<PathBuf>,
    /// With --from-store: restore exactly revision R (point-in-time recovery): the base's
    /// delta chain is applied up to R (`--from-store latest`: the newest base whose chain
    /// covers R); refused, naming the nearest covered revisions, when no chain covers R.
    #[arg(
        long,
        value_name = "R",
        requires = "from_store",
        conflicts_with = "files_to"
    )]
    pub to_revision: Option<i64>,
    /// With --from-store: restore the state at time T (RFC 3339, e.g. 2026-11-22T23:05:00Z):
    /// the last revision the delta chain observed at or before T.
    #[arg(long, value_name = "T", requires = "from_store", conflicts_with_all = ["files_to", "to_revision"])]
    pub to_time: Option<chrono::DateTime<chrono::Utc>>,
    #[command(flatten)]
    pub cluster: ClusterArg,
}

impl From<RestoreArgs> for RestoreOptions {
    fn from(a: RestoreArgs) -> Self {
        RestoreOptions {
            snapshot: a.snapshot.or(a.snapshot_path),
            from_store: a.from_store,
            cluster: a.cluster.cluster,
            data_dir: a.data_dir,
            wal_dir: a.wal_dir,
            name: a.name,
            initial_cluster: a.initial_cluster,
            initial_cluster_token: a.initial_cluster_token,
            initial_advertise_peer_urls: a.initial_advertise_peer_urls,
            skip_hash_check: a.skip_hash_check,
            identity: a.identity.files,
            out_dir: a.out_dir,
            kubeadm_manifest: a.kubeadm_manifest,
            dry_run: a.dry_run,
            json: a.output.output == Output::Json,
            bump_revision: a.bump_revision,
            mark_compacted: a.mark_compacted,
            members_from_snapshot: a.members_from_snapshot,
            target_version: a.target_version,
            files_to: a.files_to,
            to_revision: a.to_revision,
            to_time: a.to_time,
        }
    }
}

/// Flags of `etcd-lifeboat daemon` (defaults: [`DaemonOptions::default`]).
#[derive(Args, Debug, Clone)]
pub struct DaemonArgs {
    /// How often the store catalog is re-read for the store metrics and /readyz.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub refresh_interval: Duration,
    /// On SIGTERM, how long a running backup may still take before it is cancelled.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20s")]
    pub shutdown_grace: Duration,
    /// Extra attempts of a failed backup inside one scheduled run.
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
    /// Wait before the first retry; doubles on each further retry (at most 5m).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub retry_backoff: Duration,
    /// Time allowed for one store listing or deletion.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub store_timeout: Duration,
    /// Time allowed for one backup attempt beyond etcd.snapshot_timeout (compression, upload).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30m")]
    pub upload_timeout: Duration,
    /// Do not apply the retention policy after backups.
    #[arg(long)]
    pub no_prune: bool,
}

impl From<DaemonArgs> for DaemonOptions {
    fn from(a: DaemonArgs) -> Self {
        DaemonOptions {
            refresh_interval: a.refresh_interval,
            shutdown_grace: a.shutdown_grace,
            retries: a.retries,
            retry_backoff: a.retry_backoff,
            store_timeout: a.store_timeout,
            upload_timeout: a.upload_timeout,
            no_prune: a.no_prune,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_flags_as_etcdutl() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(["etcd-lifeboat", "restore"].iter().chain(args)).map(|c| {
                match c.command {
                    Command::Restore(a) => RestoreOptions::from(a),
                    _ => unreachable!("restore parses as restore"),
                }
            })
        };
        let a = parse(&[
            "snap.db",
            "--data-dir",
            "/d",
            "--wal-dir",
            "/w",
            "--name",
            "a",
            "--initial-cluster",
            "a=http://h:1",
            "--initial-cluster-token",
            "t",
            "--initial-advertise-peer-urls",
            "http://h:1",
            "--skip-hash-check",
            "-w",
            "json",
        ])
        .unwrap();
        assert_eq!(a.snapshot, Some(PathBuf::from("snap.db")));
        assert_eq!(a.wal_dir, Some(PathBuf::from("/w")));
        assert!(a.skip_hash_check);
        assert!(a.json);
        assert!(parse(&["x.db", "--snapshot", "y.db"]).is_err());
        assert!(parse(&["--snapshot", "y.db", "--from-store", "latest"]).is_err());
        let a = parse(&["--from-store", "latest", "--out-dir", "/o", "--dry-run"]).unwrap();
        assert_eq!(a.from_store.as_deref(), Some("latest"));
        assert!(a.dry_run);
    }

    #[test]
    fn daemon_defaults_match_the_library() {
        let c = Cli::try_parse_from(["etcd-lifeboat", "daemon"]).unwrap();
        let Command::Daemon(a) = c.command else {
            unreachable!("daemon parses as daemon")
        };
        assert_eq!(DaemonOptions::from(a), DaemonOptions::default());
    }
}
