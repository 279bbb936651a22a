//! etcd-lifeboat: verified etcd backups, native restore, scheduled daemon.
//!
//! # Layout
//! The binary (`main.rs`, with its flag definitions in `cli.rs`) parses flags, converts them
//! into the plain option structs below, dispatches, and maps errors to exit codes; it is
//! the only user of the argument parser and of a catch-all error type. The library, bottom
//! layer first:
//! - [`snapshot`]: bbolt reader (`page`, `reader`), integrity check, `snapshot status`
//!   values, the sha256 trailer (`trailer`), the copy-on-write page writer (`writer`).
//!   Uses nothing else of the crate.
//! - [`config`]: YAML config, environment overrides (`ETCDCTL_*`), validation naming keys.
//!   Uses [`crypto`] (which owns the `encryption` section and validates it).
//! - [`crypto`]: age recipients and identities, the `encryption` config section. Uses nothing
//!   else of the crate.
//! - [`error`]: the error policy and exit codes (0 ok, 1 failed, 2 bad usage/config).
//! - [`workdir`]: private per-run temp dirs, the sweep of stale ones, permission warnings.
//!   Uses [`config`].
//! - [`progress`]: the progress bar of `backup`.
//! - [`store`]: object stores (`local`, `s3`), `manifest`s and the catalog, `retention`.
//!   Uses [`config`], [`workdir`], [`files`] (the manifest lists the archive's entries).
//! - [`files`]: the control-plane files archive (`backup.files`, `restore --files-to`).
//!   Uses [`crypto`].
//! - [`etcd`]: client construction (TLS, auth), endpoint selection, the snapshot stream.
//!   Uses [`config`].
//! - [`acquire`]: one way to get a snapshot (file, .zst, .age, stored backup) onto local disk,
//!   verified and compared with its manifest; used by `status`, `verify`, `restore` and the
//!   daemon's re-verification; and a backup's control-plane files object
//!   ([`acquire::fetch_files`]). Uses [`snapshot`], [`store`], [`files`], [`crypto`],
//!   [`workdir`].
//! - [`restore`]: native restore, `plan -> acquire -> build -> commit`: the plan (`plan`,
//!   `kubeadm`), member and cluster IDs (`ids`), the restored member and its JSON (`member`),
//!   the db rewrite (`db`), WAL (`wal`) and `.snap` (`snap`) files and their protobuf (`pb`).
//!   Uses [`acquire`], [`snapshot`], [`store`], [`crypto`], [`config`], [`error`], [`pitr`]
//!   (`--to-revision`/`--to-time`).
//! - [`pitr`]: point-in-time recovery: the delta stream and its `key`-bucket encodings
//!   (`delta`), delta manifests and chain keys (`manifest`), the restore plan over chains
//!   (`plan`) and the native apply of deltas to a base db (`apply`). Uses [`snapshot`],
//!   [`store`], [`crypto`]; knows neither [`daemon`] nor [`backup`] nor [`restore`].
//! - [`metrics`]: Prometheus registry and metric definitions. Uses [`store`].
//! - [`output`]: report lines on stdout that a closed pipe does not turn into a panic
//!   ([`outln!`]). Uses nothing.
//! - [`backup`]: the pipeline of one backup (stream, verify, compress, encrypt, upload,
//!   manifest). Uses [`etcd`], [`snapshot`], [`store`], [`files`], [`crypto`], [`workdir`],
//!   [`progress`], [`config`], and [`restore`] (membership of a data dir, test WALs).
//! - [`daemon`]: cron `schedule`, `http` endpoints, leader `election`, the signal handler.
//!   Uses [`backup`], [`acquire`], [`store`], [`etcd`], [`metrics`], [`crypto`], [`workdir`],
//!   [`config`].
//!
//! Rules that keep the layers apart (checked by `tests/layering.rs`): [`snapshot`] knows no
//! other module; [`store`] knows neither [`etcd`] nor [`restore`] (nor [`daemon`], [`backup`]);
//! [`restore`] knows neither [`etcd`] nor [`daemon`] (nor [`backup`]); [`pitr`] knows
//! neither [`daemon`] nor [`backup`] nor [`restore`]; no two files import
//! each other (a module and its own submodules excepted); the argument parser and the catch-all error type stay in the binary.
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
pub mod output;
pub mod pitr;
pub mod progress;
pub mod restore;
pub mod snapshot;
pub mod store;
pub mod workdir;
