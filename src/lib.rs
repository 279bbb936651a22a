//! etcd-lifeboat: verified etcd backups, native restore, scheduled daemon.
//!
//! # Layout
//! - [`cli`]: clap definitions of the commands.
//! - [`config`]: YAML config, environment overrides (`ETCDCTL_*`), validation naming keys.
//! - [`error`]: the error policy and exit codes (0 ok, 1 failed, 2 bad usage/config).
//! - [`etcd`]: client construction (TLS, auth), endpoint selection, the snapshot stream.
//! - [`snapshot`]: bbolt reader, integrity check, `snapshot status` values, sha256 trailer.
//! - [`store`]: object stores (local directory, S3), manifests, catalog, retention.
//! - [`backup`]: the pipeline of one backup (stream, verify, compress, encrypt, upload,
//!   manifest).
//! - [`acquire`]: one way to get a snapshot (file, .zst, .age, stored backup) onto local disk,
//!   verified and compared with its manifest; used by `status`, `verify` and `restore`.
//! - [`crypto`]: age recipients and identities.
//! - [`workdir`]: private per-run temp dirs, the sweep of stale ones, permission warnings.
//! - [`files`]: the control-plane files archive (`backup.files`, `restore --files-to`).
//! - [`restore`]: native restore: db rewrite, member/cluster IDs, WAL and snap files.
//! - [`daemon`]: cron scheduler, HTTP endpoints, leader election.
//! - [`metrics`]: Prometheus registry and metric definitions.
#![forbid(unsafe_code)]

pub mod acquire;
pub mod backup;
pub mod config;
pub mod crypto;
pub mod daemon;
pub mod error;
pub mod etcd;
pub mod files;
pub mod metrics;
pub mod progress;
pub mod restore;
pub mod snapshot;
pub mod store;
pub mod workdir;
