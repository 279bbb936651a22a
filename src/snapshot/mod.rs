//! Native bbolt reader, integrity check, `snapshot status` values, sha256 trailer.
//!
//! - [`page`]: the on-disk format (bounds-checked parsing and encoding of pages).
//! - [`reader`]: [`Db`], positional reads without mmap; bbolt `tx.Check` and the status walk.
//! - [`trailer`]: the sha256 trailer of a snapshot stream ([`TrailerHasher`]).
//! - [`writer`]: copy-on-write update of root-level buckets (used by the restore rewrite).
//!
//! Entry points: [`verify_file`] (bbolt check + `snapshot status` values of the first
//! `db_len` bytes), [`TrailerHasher`] (streaming trailer detection). `crate::acquire` owns the
//! trailer policy and is how the product reads a snapshot file; `crate::restore::db` builds
//! the restore rewrite on [`writer`].
//!
//! Everything here is `#![forbid(unsafe_code)]` (crate-wide): pages are read with `pread`
//! into per-level buffers, so memory stays bounded (a few MiB) whatever the db size.
//!
//! Compatibility notes: etcd opens bbolt with `NoFreelistSync`, so snapshots carry no
//! freelist (meta freelist = `PGID_NO_FREELIST`); free pages are then the unreachable ones,
//! as in bbolt. `status` values follow etcd 3.4/3.5 (3.6 counts `totalKey` differently: live
//! keys only; its `version` comes from `meta/storageVersion`, which we report when present).
//!
//! Sources: go.etcd.io/bbolt (page.go, db.go, bucket.go, node.go, freelist, tx_check.go);
//! etcd release-3.4 `clientv3/snapshot/v3_snapshot.go` and release-3.5
//! `etcdutl/snapshot/v3_snapshot.go` (`Status`), `etcdutl/etcdutl/printer.go`.

pub mod page;
pub mod reader;
pub mod trailer;
pub mod writer;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use reader::Db;
pub use trailer::{has_trailer, TrailerCheck, TrailerHasher};

/// Errors of reading, checking and rewriting bbolt files. Messages say what failed, on what,
/// and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading or writing the file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is shorter than its meta page says (an interrupted download or copy).
    #[error(
        "{}: snapshot is truncated: the bbolt meta page says the db is {expected} bytes but only {actual} bytes are present; the file is incomplete, take or download the snapshot again",
        path.display()
    )]
    Truncated {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    /// A structural error in a page (bbolt `tx.Check` would report it, or worse, crash).
    #[error("bbolt page {page}: {reason}; the snapshot is corrupt, take a new one")]
    Corrupt { page: u64, reason: String },
    /// No valid bbolt meta page: not an etcd snapshot / db file at all.
    #[error(
        "{}: not a bbolt database ({reason}); expected an etcd snapshot (etcdctl snapshot save) or a member/snap/db file",
        path.display()
    )]
    NotBbolt { path: PathBuf, reason: String },
    /// The rewrite was asked something impossible (e.g. a member list that does not fit).
    #[error("rewriting {}: {reason}", path.display())]
    Rewrite { path: PathBuf, reason: String },
}

/// Values of `etcdctl snapshot status` / `etcdutl snapshot status`; serde names exactly as
/// `-w json` prints them (`{"hash":..,"revision":..,"totalKey":..,"totalSize":..}`).
///
/// - `hash`: crc32 (Castagnoli) over, for each bucket of the root in key order, the bucket
///   name and then every key and value of that bucket (nested buckets: key only).
/// - `revision`: main revision of the last key in bucket `key`.
/// - `total_key`: number of entries in all root-level buckets.
/// - `total_size`: bytes, bbolt `tx.Size()` (high water mark x page size).
/// - `version`: `meta/storageVersion` when the db records one (written by etcd 3.6+; etcd
///   3.4/3.5 print no version and their dbs have none).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub hash: u32,
    pub revision: i64,
    #[serde(rename = "totalKey")]
    pub total_key: u64,
    #[serde(rename = "totalSize")]
    pub total_size: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub version: Option<String>,
}

impl Status {
    /// Table like `etcdctl snapshot status -w table` (tablewriter, right-aligned; size with
    /// go-humanize `Bytes`, e.g. "2.1 MB"); a VERSION column is added when `version` is set.
    pub fn to_table(&self) -> String {
        let mut hdr = vec!["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"];
        let mut row = vec![
            format!("{:x}", self.hash),
            self.revision.to_string(),
            self.total_key.to_string(),
            humanize_bytes(self.total_size),
        ];
        if let Some(v) = &self.version {
            hdr.push("VERSION");
            row.push(v.clone());
        }
        let widths: Vec<usize> = hdr
            .iter()
            .zip(&row)
            .map(|(h, r)| h.len().max(r.len()))
            .collect();
        let sep: String = {
            let mut s = String::from("+");
            for w in &widths {
                s.push_str(&"-".repeat(w + 2));
                s.push('+');
            }
            s
        };
        let line = |cells: &[String], center: bool| {
            let mut s = String::from("|");
            for (c, w) in cells.iter().zip(&widths) {
                if center {
                    let pad = w - c.len();
                    let left = pad / 2;
                    s.push_str(&format!(
                        " {}{}{} |",
                        " ".repeat(left),
                        c,
                        " ".repeat(pad - left)
                    ));
                } else {
                    s.push_str(&format!(" {c:>w$} |"));
                }
            }
            s
        };
        let hdr: Vec<String> = hdr.into_iter().map(String::from).collect();
        format!(
            "{sep}\n{}\n{sep}\n{}\n{sep}\n",
            line(&hdr, true),
            line(&row, false)
        )
    }
}

/// go-humanize `Bytes` (SI units, as etcdctl prints `total size`): "0 B", "4.1 kB", "25 MB".
pub fn humanize_bytes(s: u64) -> String {
    if s < 10 {
        return format!("{s} B");
    }
    const SIZES: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let sf = s as f64;
    let e = (sf.ln() / 1000f64.ln()).floor();
    let suffix = SIZES[(e as usize).min(SIZES.len() - 1)];
    let val = (sf / 1000f64.powf(e) * 10.0 + 0.5).floor() / 10.0;
    if val < 10.0 {
        format!("{val:.1} {suffix}")
    } else {
        format!("{val:.0} {suffix}")
    }
}

/// Full native verification of a db file: bbolt structure check plus status values.
/// `db_len`: where the db ends (`Some(size - 32)` for a file with a trailer; `None`: the
/// whole file). The trailer itself is not checked here (acquire.rs owns the trailer policy).
///
/// Errors: Io, NotBbolt, Truncated, Corrupt.
pub fn verify_file(path: &Path, db_len: Option<u64>) -> Result<Status, SnapshotError> {
    Db::open(path, db_len)?.check_and_status()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humanize_like_go_humanize() {
        assert_eq!(humanize_bytes(0), "0 B");
        assert_eq!(humanize_bytes(9), "9 B");
        assert_eq!(humanize_bytes(20480), "20 kB");
        assert_eq!(humanize_bytes(24576), "25 kB");
        assert_eq!(humanize_bytes(2_097_152), "2.1 MB");
        assert_eq!(humanize_bytes(1_000_000_000), "1.0 GB");
        assert_eq!(humanize_bytes(1_160_000_000), "1.2 GB");
    }

    #[test]
    fn json_field_names() {
        let s = Status {
            hash: 1,
            revision: 2,
            total_key: 3,
            total_size: 4,
            version: None,
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"hash":1,"revision":2,"totalKey":3,"totalSize":4}"#
        );
        let v = Status {
            version: Some("3.6.0".into()),
            ..s
        };
        assert!(serde_json::to_string(&v)
            .unwrap()
            .ends_with(r#""version":"3.6.0"}"#));
    }

    #[test]
    fn table_shape() {
        let s = Status {
            hash: 0xfe01cf57,
            revision: 10,
            total_key: 7,
            total_size: 20480,
            version: None,
        };
        let t = s.to_table();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5);
        assert_eq!(
            lines[1],
            "|   HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |"
        );
        assert_eq!(
            lines[3],
            "| fe01cf57 |       10 |          7 |      20 kB |"
        );
    }
}
