//! `--from-store ID|latest`: the backup is looked up in the configured store and acquired
//! through [`crate::acquire`] (streamed, decrypted, decompressed into a private temp dir
//! beside the target, checked against its manifest).

use std::path::Path;

use anyhow::Context;

use crate::acquire::{self, AcquireOptions, Acquired, Source};
use crate::config::Config;
use crate::store::{manifest, Store};

/// Finds the backup `which` (id, prefix or `latest`) in the store of the config at
/// `config_path` and acquires it with `opts`.
///
/// Errors: config (exit 2), store access, backup not found, anything
/// [`acquire::acquire`] reports (corrupted object, wrong identity, ...).
pub async fn fetch(
    which: &str,
    opts: &AcquireOptions<'_>,
    config_path: Option<&Path>,
) -> anyhow::Result<Acquired> {
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
    Ok(acquire::acquire(
        Source::Stored {
            store: &store,
            manifest: &m,
        },
        opts,
    )
    .await?)
}
