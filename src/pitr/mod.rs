//! Point-in-time recovery (issue 16; design: docs/design/pitr.md): continuous deltas of the
//! whole keyspace, taken from etcd's watch after a base backup, and a restore that appends
//! them natively to the base's `key` bucket so the restored member holds exactly the history
//! up to a chosen revision (`hashkv --rev R` equal to the source's).
//!
//! - `delta`: the plaintext delta stream (magic, header, REV/PUT/DEL/LEASE_*/ANCHOR/END
//!   records), its incremental writer and checking reader, and etcd's exact `key`-bucket
//!   encodings (revision keys, `mvccpb.KeyValue` values, tombstones); the effective base
//!   revision of a db.
//! - `manifest`: delta manifests, the keys of a chain's objects, parse and validation.
//! - `plan`: the choice of base and deltas for a target revision or time, over `chain`'s
//!   chains.
//! - `apply`: streams the chosen deltas (fetch, sha256, age, zstd, parse) into a copy of the
//!   base db, natively, bounded memory.
//! - `capture`: the daemon leader's task: watch -> spill file -> delta objects + manifests,
//!   chain breaks (compaction, gap, outage) ending in a new full backup.
//! - `chain`: a base's chain as the store holds it (contiguity, gaps, close, broken objects)
//!   for `list`, the capture's resume point and restore's plan; `verify` of every delta.
//!
//! Layer: uses [`crate::snapshot`], [`crate::store`], [`crate::crypto`], and for `capture`
//! [`crate::etcd`], [`crate::workdir`], [`crate::config`] and [`crate::metrics`]; knows
//! neither [`crate::daemon`] nor [`crate::backup`] (the daemon passes a backup closure) nor
//! [`crate::restore`] (restore uses it).

pub mod apply;
pub mod capture;
pub mod chain;
pub mod delta;
pub mod manifest;
pub mod plan;
