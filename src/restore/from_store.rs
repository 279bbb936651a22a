//! `--from-store ID|latest`: a stored backup, streamed from the configured store,
//! decompressed into a temp file beside the target, and checked against its manifest
//! (`stored_bytes`, `stored_sha256` of the object; `raw_sha256` of the db; after verification
//! `hash`, `revision`, `total_key`).

use std::path::Path;

use anyhow::Context;
use tokio::io::AsyncReadExt;

use super::source::{self, ChannelReader, Expected, LocalSnapshot, SourceError};
use crate::config::Config;
use crate::store::{manifest, Manifest, Store};

/// Finds the backup, streams and decompresses it into `temp_dir`, checks the object against
/// the manifest. Memory: a few 1 MiB chunks in flight plus the zstd window.
///
/// Errors: config (exit 2), store access, backup not found, corrupted object
/// ([`SourceError::ManifestMismatch`], [`SourceError::Zstd`], trailer mismatch).
pub async fn fetch(
    which: &str,
    temp_dir: &Path,
    skip_hash_check: bool,
    config_path: Option<&Path>,
) -> anyhow::Result<(LocalSnapshot, Expected)> {
    let cfg = Config::load(config_path)?;
    let store = Store::from_config(&cfg.storage)
        .await
        .context("--from-store: opening the configured store")?;
    let m = manifest::find(&store, which).await.with_context(|| {
        format!(
            "--from-store {which}: looking up the backup in {}",
            store.describe()
        )
    })?;
    download(&store, &m, temp_dir, skip_hash_check).await
}

/// Streams the data object of `m` from `store`, decompresses it into a temp file in
/// `temp_dir` and checks it against the manifest (`stored_bytes`, `stored_sha256`,
/// `raw_sha256`; the sha256 trailer when present). The returned [`Expected`] holds the status
/// values to compare after the bbolt verification. Also used by `verify`.
///
/// Errors: store access, corrupted object ([`SourceError::ManifestMismatch`],
/// [`SourceError::Zstd`], trailer mismatch), temp dir problems.
pub async fn download(
    store: &Store,
    m: &Manifest,
    temp_dir: &Path,
    skip_hash_check: bool,
) -> anyhow::Result<(LocalSnapshot, Expected)> {
    if m.compression != "zstd" {
        anyhow::bail!(
            "backup {}: compression {:?} is not supported (only zstd)",
            m.id,
            m.compression
        );
    }
    let what = format!("{} {}", store.describe(), m.data_key.as_str());
    let mut reader = store
        .get_stream(&m.data_key)
        .await
        .with_context(|| format!("reading {what}"))?;

    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(4);
    let dir = temp_dir.to_path_buf();
    let what2 = what.clone();
    let work = tokio::task::spawn_blocking(move || {
        source::decompress_to_temp(ChannelReader::new(rx), &what2, &dir, skip_hash_check, false)
    });
    loop {
        let mut buf = vec![0u8; 1 << 20];
        match reader.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                buf.truncate(n);
                if tx.send(Ok(buf)).await.is_err() {
                    break; // the decoder stopped (its error is reported below)
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                break;
            }
        }
    }
    drop(tx);
    let (snap, (stored_bytes, stored_sha)) = work.await??;
    let mismatch =
        |field: &'static str, expected: String, actual: String| SourceError::ManifestMismatch {
            id: m.id.clone(),
            field,
            expected,
            actual,
        };
    if stored_bytes != m.stored_bytes {
        return Err(mismatch(
            "stored_bytes",
            m.stored_bytes.to_string(),
            stored_bytes.to_string(),
        )
        .into());
    }
    if !stored_sha.eq_ignore_ascii_case(&m.stored_sha256) {
        return Err(mismatch("stored_sha256", m.stored_sha256.clone(), stored_sha).into());
    }
    if !snap.raw_sha256.eq_ignore_ascii_case(&m.raw_sha256) {
        return Err(mismatch("raw_sha256", m.raw_sha256.clone(), snap.raw_sha256.clone()).into());
    }
    let expected = Expected {
        id: m.id.clone(),
        hash: m.hash,
        revision: m.revision,
        total_key: m.total_key,
    };
    Ok((snap, expected))
}
