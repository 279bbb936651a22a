//! The pipeline of one backup, and the check of a stored one.
//!
//! ```text
//! select member ─> Maintenance.Snapshot stream ─┬─> temp file (raw snapshot, for verification)
//!                                               ├─> sha256 trailer check (streaming)
//!                                               └─> zstd ─> [age encryptor] ─> store upload
//! stream ends ─> verify temp file (bbolt check + status) ─> finish upload ─> manifest (LAST)
//! ```
//! Stages overlap: the upload runs while the stream arrives, so the wall time is about the
//! stream's. Memory is bounded by the channel capacities (a few MiB) and zstd's window.
//!
//! Encryption: with recipients configured (`encryption`), the zstd output goes through age's
//! stream encryptor in the writer thread, so the stored object `<cluster>/<id>.db.zst.age` is
//! a standard age v1 file of the zstd stream and no plaintext of it reaches the store. The
//! manifest then records the format and the recipients' public keys (never key material);
//! `stored_bytes`/`stored_sha256` are of the encrypted object.
//!
//! Temp files: the raw snapshot lives in a private per-run directory
//! ([`crate::workdir::WorkDir`], 0700, file 0600, locked); each run first removes the
//! directories of runs that were killed ([`crate::workdir::sweep_stale`]).
//!
//! Guarantees: a backup exists only once its manifest is stored; the data object is made
//! visible only after the snapshot verified; any failure aborts the upload (local temp file
//! removed, S3 multipart upload aborted), deletes a data object already finished, and returns
//! an error (the CLI exits non-zero). When a member's stream breaks or its snapshot fails
//! verification, the next member is tried; when all fail, the error lists each with its reason.

use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::crypto::{AgeOutput, Recipients};
use crate::etcd::{self, Candidate, EtcdError};
use crate::progress::Progress;
use crate::snapshot::{self, Status, TrailerHasher};
use crate::store::manifest::{self, EncryptionInfo, FilesInfo, Manifest, AGE_FORMAT};
use crate::store::{ChunkWriter, ObjectKey, Store, StoreError};
use crate::workdir::{self, WorkDir, WorkDirError};

/// Chunks of the raw stream in flight between the gRPC reader and the writer thread.
const RAW_CHANNEL_CHUNKS: usize = 2;
/// Size of the raw chunks handed to the writer thread, in bytes: etcd's stream messages (32 KiB
/// each) are gathered into chunks of this size, so the writer and its copy thread pass fewer,
/// bigger buffers and no byte is copied between them.
const RAW_CHUNK_BYTES: usize = 1024 * 1024;
/// Compressed chunks in flight between the compressor and the uploader.
const STORED_CHANNEL_CHUNKS: usize = 8;
/// Size of the compressed chunks handed to the uploader, in bytes.
const STORED_CHUNK_BYTES: usize = 1024 * 1024;

/// Options of one backup run.
#[derive(Clone, Debug, Default)]
pub struct BackupOptions {
    /// Free-form label stored in the manifest (`--tag`).
    pub tag: Option<String>,
    /// Show a progress bar (only when stderr is a terminal).
    pub progress: bool,
    /// Cancels the run: the upload is aborted and nothing is stored.
    pub cancel: CancellationToken,
}

/// Why a backup failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The encryption config is invalid (a recipient does not parse).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No member could be reached or every attempt failed.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// The store refused an operation.
    #[error("store {store}: {source}")]
    Store {
        store: String,
        #[source]
        source: StoreError,
    },
    /// The temp dir cannot hold the snapshot.
    #[error("temp dir {dir}: {source}; free space there or point backup.temp_dir (ETCD_LIFEBOAT_TEMP_DIR) at a directory with room for one snapshot")]
    TempDir {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    /// `--from-data-dir`: etcd holds the db's lock (bbolt's `flock`), so it is running.
    #[error("etcd is running on {dir} (it holds the db lock on {dir}/member/snap/db): stop it first (move its static pod manifest out of /etc/kubernetes/manifests, or systemctl stop etcd), then run the backup again")]
    EtcdRunning { dir: String },
    /// `--from-data-dir`: the data dir cannot be read or is not a valid etcd data dir.
    #[error("data dir {path}: {reason}")]
    DataDir { path: String, reason: String },
    /// `backup.files`: a configured file cannot be read or archived.
    #[error(transparent)]
    Files(#[from] crate::files::FilesError),
    /// The run was cancelled (shutdown).
    #[error("backup cancelled before it was stored; nothing was kept")]
    Cancelled,
}

/// One member's attempt failed: why, and whether other members are worth trying.
struct AttemptError {
    reason: String,
    /// A store or temp-dir failure is not the member's fault: stop trying others.
    fatal: Option<BackupError>,
}

impl From<BackupError> for AttemptError {
    fn from(e: BackupError) -> Self {
        match e {
            BackupError::Store { .. }
            | BackupError::TempDir { .. }
            | BackupError::EtcdRunning { .. }
            | BackupError::DataDir { .. }
            | BackupError::Files(_)
            | BackupError::Cancelled
            | BackupError::Config(_) => AttemptError {
                reason: e.to_string(),
                fatal: Some(e),
            },
            other => AttemptError {
                reason: other.to_string(),
                fatal: None,
            },
        }
    }
}

fn store_err(store: &Store) -> impl Fn(StoreError) -> BackupError + '_ {
    move |source| BackupError::Store {
        store: store.describe(),
        source,
    }
}

impl From<WorkDirError> for BackupError {
    fn from(e: WorkDirError) -> Self {
        BackupError::TempDir {
            dir: e.path.display().to_string(),
            source: e.source,
        }
    }
}

/// Takes one verified backup: picks a member, streams its snapshot, verifies it, compresses and
/// uploads it, then writes the manifest. Returns the stored manifest.
///
/// Errors: every endpoint unreachable or failing (each with its reason), verification failure
/// on every member, store failure, full temp dir, bad recipients, cancellation. Nothing is
/// left in the store or the temp dir on error.
pub async fn run_backup(
    cfg: &Config,
    store: &Store,
    opts: &BackupOptions,
) -> Result<Manifest, BackupError> {
    let recipients = Recipients::from_config(&cfg.encryption).map_err(ConfigError::from)?;
    let base = workdir::temp_base(cfg);
    let swept = tokio::task::spawn_blocking({
        let base = base.clone();
        move || workdir::sweep_stale(&base)
    })
    .await
    .unwrap_or_default();
    if !swept.is_empty() {
        tracing::info!(count = swept.len(), dir = %base.display(), "removed temp files of earlier runs that were killed");
    }
    // Interrupted uploads of killed runs: local temp files whose writer is gone, S3 multipart
    // uploads older than retention.orphan_grace. Never a live writer's.
    // Housekeeping: a slow or silent store must not hold the backup up (bounded, and cut
    // short by cancellation).
    let cleanup = tokio::time::timeout(
        CLEANUP_TIMEOUT,
        store.remove_stale_uploads(cfg.retention.orphan_grace),
    );
    let cleaned = tokio::select! {
        r = cleanup => r.unwrap_or_else(|_| Err(StoreError::Backend {
            backend: if matches!(store, Store::S3(_)) { "s3" } else { "local" },
            key: "clean-up of interrupted uploads".into(),
            message: format!("no answer within {CLEANUP_TIMEOUT:?}; skipped"),
        })),
        _ = opts.cancel.cancelled() => return Err(BackupError::Cancelled),
    };
    match cleaned {
        Ok(removed) if !removed.is_empty() => {
            tracing::info!(count = removed.len(), uploads = ?removed, "removed interrupted uploads of earlier runs")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not clean interrupted uploads; prune retries"),
    }
    let (candidates, mut failures) = etcd::select_members(&cfg.etcd).await;
    if candidates.is_empty() {
        return Err(EtcdError::AllEndpointsFailed(failures).into());
    }
    for cand in candidates {
        if opts.cancel.is_cancelled() {
            return Err(BackupError::Cancelled);
        }
        let endpoint = cand.status.endpoint.clone();
        tracing::info!(member = %cand.status, "taking snapshot");
        match attempt(cfg, store, opts, recipients.as_ref(), cand).await {
            Ok(m) => return Ok(m),
            Err(AttemptError { fatal: Some(e), .. }) => return Err(e),
            Err(AttemptError { reason, .. }) => {
                tracing::warn!(%endpoint, %reason, "snapshot attempt failed; trying the next member");
                failures.push((endpoint, reason));
            }
        }
    }
    Err(EtcdError::AllEndpointsFailed(failures).into())
}

/// What the writer thread saw of the raw stream and what it handed to the store.
struct StreamResult {
    db_len: u64,
    raw_sha256: [u8; 32],
    trailer_ok: Option<bool>,
    stored_bytes: u64,
    stored_sha256: [u8; 32],
}

/// Where a backup's snapshot came from (the live member or a data dir), for its manifest.
struct Origin {
    member_id: u64,
    member_name: String,
    /// The client URL streamed from, or `file://<data dir>`.
    endpoint: String,
    /// The server's version; empty for a data dir.
    etcd_version: String,
    source: manifest::BackupSource,
    /// The db's consistent index, known only when read from a data dir.
    consistent_index: Option<u64>,
}

/// What was stored, for the manifest: ids, the verified status and the streamed digests.
struct Stored<'a> {
    id: &'a str,
    cluster_id: &'a str,
    started_at: DateTime<Utc>,
    status: &'a Status,
    /// The db's current revision ([`crate::pitr::delta::base_revision`]).
    current_revision: i64,
    streamed: &'a StreamResult,
    data_key: &'a ObjectKey,
}

/// The data object's key: `.db.zst.age` with recipients, else `.db.zst`.
fn data_key_for(recipients: Option<&Recipients>, cluster_hex: &str, id: &str) -> ObjectKey {
    match recipients {
        Some(_) => manifest::encrypted_data_key(cluster_hex, id),
        None => manifest::data_key(cluster_hex, id),
    }
}

/// Seals a backup whose data object is written (both origins end here): finishes the upload
/// (the store checks the object's size), stores the control-plane files, writes the manifest
/// last and logs the backup.
///
/// Errors: store failures; the data object is deleted when no manifest can name it.
async fn seal(
    cfg: &Config,
    store: &Store,
    opts: &BackupOptions,
    recipients: Option<&Recipients>,
    upload: crate::store::Upload,
    origin: Origin,
    s: Stored<'_>,
) -> Result<Manifest, BackupError> {
    let stored = upload.finish().await.map_err(store_err(store))?;
    let files =
        store_files_or_cleanup(cfg, store, recipients, s.cluster_id, s.id, s.data_key).await?;
    let (sse, mut object_lock) = store.object_protection(Utc::now());
    // The manifest (and `list`) must not claim a retention the store did not apply: some
    // S3-compatible stores ignore the lock headers on multipart uploads. The head is the one
    // the upload's own post-check read.
    if object_lock.is_some()
        && (stored.head.lock_mode.is_none() || stored.head.retain_until.is_none())
    {
        tracing::warn!(key = %s.data_key, "storage.s3.object_lock is set, but the store applied no retention to the data object (HeadObject shows none): this backup is NOT immutable and its manifest says so; check that the bucket has Object Lock enabled and that the store honours it on multipart uploads");
        object_lock = None;
    }
    let manifest = Manifest {
        id: s.id.to_string(),
        cluster_id: s.cluster_id.to_string(),
        member_id: format!("{:016x}", origin.member_id),
        member_name: origin.member_name,
        endpoint: origin.endpoint,
        etcd_version: origin.etcd_version,
        started_at: s.started_at,
        finished_at: Utc::now(),
        revision: s.status.revision,
        current_revision: Some(s.current_revision),
        hash: s.status.hash,
        total_key: s.status.total_key,
        total_size: s.status.total_size,
        raw_sha256: hex::encode(s.streamed.raw_sha256),
        stored_bytes: s.streamed.stored_bytes,
        stored_sha256: hex::encode(s.streamed.stored_sha256),
        compression: "zstd".into(),
        compression_level: cfg.compression.level,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        tag: opts.tag.clone(),
        data_key: s.data_key.clone(),
        encryption: recipients.map(|r| EncryptionInfo {
            format: AGE_FORMAT.to_string(),
            recipients: r.public().to_vec(),
        }),
        sse,
        object_lock,
        source: origin.source,
        consistent_index: origin.consistent_index,
        files,
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    put_manifest(store, &manifest, json, s.data_key).await?;
    tracing::info!(
        id = %manifest.id,
        endpoint = %manifest.endpoint,
        revision = manifest.revision,
        keys = manifest.total_key,
        raw_bytes = s.streamed.db_len,
        stored_bytes = manifest.stored_bytes,
        seconds = (Utc::now() - s.started_at).num_milliseconds() as f64 / 1000.0,
        "backup stored"
    );
    Ok(manifest)
}

async fn attempt(
    cfg: &Config,
    store: &Store,
    opts: &BackupOptions,
    recipients: Option<&Recipients>,
    cand: Candidate,
) -> Result<Manifest, AttemptError> {
    let Candidate { mut client, status } = cand;
    let endpoint = status.endpoint.clone();
    let cluster_hex = format!("{:016x}", status.cluster_id);
    let member_name = member_name(&mut client, cfg, status.member_id).await;
    let start_rev = start_revision(&mut client, cfg)
        .await
        .map_err(|e| AttemptError {
            reason: e,
            fatal: None,
        })?;
    let (started_at, id) = unused_id(store, &cluster_hex, start_rev).await?;
    let data_key = data_key_for(recipients, &cluster_hex, &id);

    let work = WorkDir::create(&workdir::temp_base(cfg)).map_err(BackupError::from)?;
    let (tmp_file, tmp_path) = work.create_file("snapshot.db").map_err(BackupError::from)?;
    let mut upload = store
        .begin_upload(&data_key)
        .await
        .map_err(store_err(store))?;

    let sink = match recipients {
        Some(r) => Sink::encrypted(r),
        None => Ok(Sink::Plain),
    };
    let streamed = match sink {
        Ok(sink) => {
            stream_snapshot(
                cfg,
                opts,
                &mut client,
                &status,
                tmp_file,
                sink,
                &mut upload,
                store,
            )
            .await
        }
        Err(e) => Err(AttemptError {
            reason: format!("age encryptor: {e}"),
            fatal: None,
        }),
    };
    let streamed = match streamed {
        Ok(s) => s,
        Err(e) => {
            abort(upload).await;
            return Err(e);
        }
    };
    let raw = streamed.db_len;
    match streamed.trailer_ok {
        Some(true) => {}
        Some(false) => {
            abort(upload).await;
            return Err(AttemptError {
                reason: "the snapshot's sha256 trailer does not match its content (corrupted in transit); not stored".into(),
                fatal: None,
            });
        }
        None => {
            abort(upload).await;
            return Err(AttemptError {
                reason: format!("the snapshot stream ({raw} bytes) has no sha256 trailer; it is incomplete or not from etcd"),
                fatal: None,
            });
        }
    }
    let verify_path = tmp_path.clone();
    let verified = tokio::task::spawn_blocking(move || {
        let db = snapshot::Db::open(&verify_path, Some(raw))?;
        Ok::<_, snapshot::SnapshotError>((
            db.check_and_status()?,
            crate::pitr::delta::base_revision(&db)?,
        ))
    })
    .await
    .expect("verification thread");
    drop(work);
    let (st, current_revision) = match verified {
        Ok(v) => v,
        Err(e) => {
            abort(upload).await;
            return Err(AttemptError {
                reason: format!("snapshot failed verification, not stored: {e}"),
                fatal: None,
            });
        }
    };
    if opts.cancel.is_cancelled() {
        abort(upload).await;
        return Err(BackupError::Cancelled.into());
    }
    Ok(seal(
        cfg,
        store,
        opts,
        recipients,
        upload,
        Origin {
            member_id: status.member_id,
            member_name,
            endpoint,
            etcd_version: status.version.clone(),
            source: Default::default(),
            consistent_index: None,
        },
        Stored {
            id: &id,
            cluster_id: &cluster_hex,
            started_at,
            status: &st,
            current_revision,
            streamed: &streamed,
            data_key: &data_key,
        },
    )
    .await?)
}

/// What `--from-data-dir` reads from a stopped member's data dir before storing its db.
struct DataDirDb {
    /// The db file, open and locked (`flock(LOCK_EX)`, as bbolt does): etcd cannot start on
    /// the dir while this is held.
    locked: std::fs::File,
    path: PathBuf,
    member_id: u64,
    cluster_id: u64,
    member_name: String,
    consistent_index: Option<u64>,
    status: Status,
    /// The db's current revision ([`crate::pitr::delta::base_revision`]).
    current_revision: i64,
}

/// Takes a stopped member's db (`DIR/member/snap/db`, no sha256 trailer) as a backup: locks
/// it as bbolt does (refused while etcd holds the lock), reads member and cluster IDs from the
/// WAL's metadata record (`wal_dir`, etcd's `--wal-dir`, else `DIR/member/wal`), verifies the bbolt structure and status, then streams the first
/// `total_size` bytes (bbolt `tx.Size()`, what a snapshot of it would hold; the file itself is
/// often longer) through the same compress/encrypt/upload pipeline as [`run_backup`], and
/// writes a manifest with `source: data-dir`. The lock is held until the manifest is stored.
/// Needs no etcd connection.
///
/// Errors: [`BackupError::EtcdRunning`] (exit 1), [`BackupError::DataDir`] (no db, no WAL,
/// db fails verification), store, temp dir, recipients, cancellation. Nothing is left in the
/// store on error.
pub async fn run_backup_from_data_dir(
    cfg: &Config,
    store: &Store,
    opts: &BackupOptions,
    dir: &Path,
    wal_dir: Option<&Path>,
) -> Result<Manifest, BackupError> {
    let recipients = Recipients::from_config(&cfg.encryption).map_err(ConfigError::from)?;
    let d = dir.to_path_buf();
    let w = wal_dir.map(Path::to_path_buf);
    let db = tokio::task::spawn_blocking(move || open_data_dir(&d, w.as_deref()))
        .await
        .expect("data dir thread")?;
    let dir_text = dir.display().to_string();
    let cluster_hex = format!("{:016x}", db.cluster_id);
    let (started_at, id) = unused_id(store, &cluster_hex, db.status.revision).await?;
    let data_key = data_key_for(recipients.as_ref(), &cluster_hex, &id);
    let sink = match &recipients {
        Some(r) => Sink::encrypted(r).map_err(|e| BackupError::DataDir {
            path: dir_text.clone(),
            reason: format!("age encryptor: {e}"),
        })?,
        None => Sink::Plain,
    };
    let mut input = db
        .locked
        .try_clone()
        .map_err(|e| BackupError::DataDir {
            path: db.path.display().to_string(),
            reason: e.to_string(),
        })?
        .take(db.status.total_size);
    let mut upload = store
        .begin_upload(&data_key)
        .await
        .map_err(store_err(store))?;
    let (stored_tx, mut stored_rx) = mpsc::channel::<Vec<u8>>(STORED_CHANNEL_CHUNKS);
    let (level, threads) = (cfg.compression.level, zstd_threads(cfg));
    let writer = tokio::task::spawn_blocking(move || {
        let next = || read_chunk(&mut input, RAW_CHUNK_BYTES);
        write_stored(next, None, sink, level, threads, stored_tx)
    });
    let uploaded = tokio::select! {
        r = upload_chunks(&mut stored_rx, &mut upload, store) => r,
        _ = opts.cancel.cancelled() => Err(BackupError::Cancelled),
    };
    drop(stored_rx);
    let written = writer.await.expect("writer thread");
    let streamed = match (written, uploaded) {
        (_, Err(e)) => {
            abort(upload).await;
            return Err(e);
        }
        (Err(e), _) => {
            abort(upload).await;
            return Err(BackupError::DataDir {
                path: db.path.display().to_string(),
                reason: format!("reading the db: {e}"),
            });
        }
        (Ok(s), Ok(())) => s,
    };
    if streamed.db_len != db.status.total_size || streamed.trailer_ok.is_some() {
        abort(upload).await;
        return Err(BackupError::DataDir {
            path: db.path.display().to_string(),
            reason: format!(
                "read {} bytes of the db where bbolt's meta says {}: the file changed or shrank while it was read",
                streamed.db_len, db.status.total_size
            ),
        });
    }
    if opts.cancel.is_cancelled() {
        abort(upload).await;
        return Err(BackupError::Cancelled);
    }
    let manifest = seal(
        cfg,
        store,
        opts,
        recipients.as_ref(),
        upload,
        Origin {
            member_id: db.member_id,
            member_name: db.member_name.clone(),
            endpoint: format!("file://{}", dir.display()),
            etcd_version: String::new(),
            source: manifest::BackupSource::DataDir,
            consistent_index: db.consistent_index,
        },
        Stored {
            id: &id,
            cluster_id: &cluster_hex,
            started_at,
            status: &db.status,
            current_revision: db.current_revision,
            streamed: &streamed,
            data_key: &data_key,
        },
    )
    .await?;
    drop(db);
    Ok(manifest)
}

/// Locks and checks a data dir's db; reads the WAL's IDs (blocking).
fn open_data_dir(dir: &Path, wal_dir: Option<&Path>) -> Result<DataDirDb, BackupError> {
    let path = dir.join("member").join("snap").join("db");
    let bad = |p: &Path, reason: String| BackupError::DataDir {
        path: p.display().to_string(),
        reason,
    };
    let locked = std::fs::File::open(&path).map_err(|e| {
        bad(
            &path,
            format!("{e}; expected an etcd data dir (the directory given to etcd's --data-dir, holding member/snap/db)"),
        )
    })?;
    match locked.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(BackupError::EtcdRunning {
                dir: dir.display().to_string(),
            })
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(bad(&path, format!("cannot lock the db: {e}")))
        }
    }
    let (member_id, cluster_id) = match wal_dir {
        Some(w) => wal_ids(w)?,
        None => wal_ids(&dir.join("member").join("wal")).map_err(|e| match e {
            BackupError::DataDir { path, reason } => BackupError::DataDir {
                path,
                reason: format!(
                    "{reason}; if etcd runs with --wal-dir, pass that directory as --wal-dir"
                ),
            },
            e => e,
        })?,
    };
    let verify = |p: &Path| -> Result<(Status, i64, Option<u64>, String), snapshot::SnapshotError> {
        let db = snapshot::Db::open(p, None)?;
        let status = db.check_and_status()?;
        let current_revision = crate::pitr::delta::base_revision(&db)?;
        let ci = db
            .root_bucket_entries(b"meta")?
            .unwrap_or_default()
            .into_iter()
            .find(|e| e.key == b"consistent_index")
            .and_then(|e| <[u8; 8]>::try_from(e.value.as_slice()).ok())
            .map(u64::from_be_bytes);
        let name = crate::restore::db::snapshot_members(&db)
            .ok()
            .and_then(|ms| ms.into_iter().find(|m| m.id == member_id))
            .map(|m| m.name)
            .unwrap_or_default();
        Ok((status, current_revision, ci, name))
    };
    let (status, current_revision, consistent_index, member_name) = verify(&path).map_err(|e| {
        bad(
            &path,
            format!("the db failed verification, not stored: {e}"),
        )
    })?;
    Ok(DataDirDb {
        locked,
        path,
        member_id,
        cluster_id,
        member_name,
        consistent_index,
        status,
        current_revision,
    })
}

/// Largest WAL record read while looking for the metadata record (bytes; the metadata is ~20).
const MAX_WAL_RECORD: u64 = 1 << 20;
/// Records read from the start of a segment before giving up on finding the metadata record
/// (etcd writes it second, after the crc record).
const MAX_WAL_RECORDS_SCANNED: usize = 16;

/// Member and cluster ID from the metadata record (type 1, `etcdserverpb.Metadata{NodeID=1,
/// ClusterID=2}`) near the start of the first segment (by name) in `wal_dir`. Framing as in
/// etcd's `server/wal/decoder.go` (see [`crate::restore::wal`]): LE u64 length word (low 56
/// bits), `walpb.Record{type=1, crc=2, data=3}`, padding to 8 bytes.
///
/// Errors: [`BackupError::DataDir`] when there is no segment or no readable metadata record.
fn wal_ids(wal_dir: &Path) -> Result<(u64, u64), BackupError> {
    let bad = |p: &Path, reason: String| BackupError::DataDir {
        path: p.display().to_string(),
        reason,
    };
    let mut segments: Vec<PathBuf> = std::fs::read_dir(wal_dir)
        .map_err(|e| bad(wal_dir, e.to_string()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segments.sort();
    let first = segments
        .first()
        .ok_or_else(|| bad(wal_dir, "no .wal segment: not an etcd data dir".into()))?;
    let mut f = std::fs::File::open(first).map_err(|e| bad(first, e.to_string()))?;
    for _ in 0..MAX_WAL_RECORDS_SCANNED {
        let mut word = [0u8; 8];
        f.read_exact(&mut word)
            .map_err(|e| bad(first, format!("reading a WAL record: {e}")))?;
        let word = u64::from_le_bytes(word);
        let len = word & 0x00ff_ffff_ffff_ffff;
        let pad = if word >> 63 == 1 {
            (word >> 56) & 0x7
        } else {
            0
        };
        if len == 0 || len > MAX_WAL_RECORD {
            break;
        }
        let mut rec = vec![0u8; (len + pad) as usize];
        f.read_exact(&mut rec)
            .map_err(|e| bad(first, format!("reading a WAL record: {e}")))?;
        rec.truncate(len as usize);
        let fields = pb_fields(&rec).ok_or_else(|| bad(first, "malformed WAL record".into()))?;
        let rtype = fields.iter().find_map(|(n, v)| match (n, v) {
            (1, PbValue::Varint(t)) => Some(*t),
            _ => None,
        });
        if rtype != Some(1) {
            continue;
        }
        let data = fields
            .iter()
            .find_map(|(n, v)| match (n, v) {
                (3, PbValue::Bytes(d)) => Some(d.as_slice()),
                _ => None,
            })
            .unwrap_or(&[]);
        let meta = pb_fields(data).ok_or_else(|| bad(first, "malformed WAL metadata".into()))?;
        let get = |k: u64| {
            meta.iter().find_map(|(n, v)| match (n, v) {
                (n, PbValue::Varint(x)) if *n == k => Some(*x),
                _ => None,
            })
        };
        return match (get(1), get(2)) {
            (Some(node), Some(cluster)) if node != 0 && cluster != 0 => Ok((node, cluster)),
            _ => Err(bad(
                first,
                "the WAL metadata record lacks the member or cluster ID".into(),
            )),
        };
    }
    Err(bad(
        first,
        "no metadata record at the start of the first WAL segment".into(),
    ))
}

/// A decoded protobuf field value (only the wire types etcd's WAL uses).
enum PbValue {
    Varint(u64),
    Bytes(Vec<u8>),
}

fn pb_varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Top-level fields of a protobuf message (field number, value); `None` when malformed or
/// using a wire type other than varint / length-delimited.
fn pb_fields(b: &[u8]) -> Option<Vec<(u64, PbValue)>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let tag = pb_varint(b, &mut i)?;
        match tag & 7 {
            0 => out.push((tag >> 3, PbValue::Varint(pb_varint(b, &mut i)?))),
            2 => {
                let n = usize::try_from(pb_varint(b, &mut i)?).ok()?;
                let end = i.checked_add(n)?;
                out.push((tag >> 3, PbValue::Bytes(b.get(i..end)?.to_vec())));
                i = end;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// [`store_files`]; on failure the finished data object is deleted (no manifest will name it).
async fn store_files_or_cleanup(
    cfg: &Config,
    store: &Store,
    recipients: Option<&Recipients>,
    cluster_hex: &str,
    id: &str,
    data_key: &crate::store::ObjectKey,
) -> Result<Option<FilesInfo>, BackupError> {
    match store_files(cfg, store, recipients, cluster_hex, id).await {
        Ok(f) => Ok(f),
        Err(e) => {
            if let Err(d) = store.delete(data_key).await {
                tracing::warn!(key = %data_key, error = %d, "could not delete the data object of a failed backup; prune removes it after retention.orphan_grace");
            }
            Err(e)
        }
    }
}

/// The paths to archive: `backup.files`, plus the EncryptionConfiguration that a listed
/// directory's `kube-apiserver.yaml` names (`--encryption-provider-config`) when no listed
/// path covers it already.
pub fn files_to_store(cfg: &Config) -> Vec<PathBuf> {
    let mut paths = cfg.backup.files.clone();
    for p in &cfg.backup.files {
        let apiserver = p.join("kube-apiserver.yaml");
        if !apiserver.is_file() {
            continue;
        }
        if let Some(enc) = crate::files::encryption_provider_config(&apiserver) {
            if enc.is_absolute() && !paths.iter().any(|q| enc.starts_with(q)) {
                tracing::info!(path = %enc.display(), manifest = %apiserver.display(), "backup.files: adding the API server's EncryptionConfiguration");
                paths.push(enc);
            }
        }
    }
    paths
}

/// Stores `backup.files` as `<cluster>/<id>.files.tar.zst[.age]`: tar
/// ([`crate::files::write_archive`]) -> zstd -> age (the backup's recipients) -> store, in one
/// pass. `None` when no files are configured. On error the upload is aborted.
///
/// Errors: [`BackupError::Files`] (a configured path is missing or unreadable), store.
async fn store_files(
    cfg: &Config,
    store: &Store,
    recipients: Option<&Recipients>,
    cluster_hex: &str,
    id: &str,
) -> Result<Option<FilesInfo>, BackupError> {
    if cfg.backup.files.is_empty() {
        return Ok(None);
    }
    let paths = files_to_store(cfg);
    let key = manifest::files_key(cluster_hex, id, recipients.is_some());
    let sink = match recipients {
        Some(r) => Sink::encrypted(r).map_err(|e| {
            BackupError::Files(crate::files::FilesError::Io {
                what: "age encryptor for",
                path: PathBuf::from(key.as_str()),
                source: e,
            })
        })?,
        None => Sink::Plain,
    };
    let mut upload = store.begin_upload(&key).await.map_err(store_err(store))?;
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(STORED_CHANNEL_CHUNKS);
    let level = cfg.compression.level;
    let writer = tokio::task::spawn_blocking(move || {
        let channel = ChunkWriter::new(tx, STORED_CHUNK_BYTES);
        let io = |source| crate::files::FilesError::Io {
            what: "compressing the files archive",
            path: PathBuf::new(),
            source,
        };
        let output = match sink {
            Sink::Plain => AgeOutput::Plain(channel),
            Sink::Age(enc) => AgeOutput::Age(enc.wrap_output(channel).map_err(io)?),
        };
        let enc = zstd::stream::write::Encoder::new(output, level).map_err(io)?;
        let (entries, enc) = crate::files::write_archive(&paths, enc)?;
        let (stored_bytes, sha) = enc
            .finish()
            .and_then(|o| o.finish())
            .and_then(ChunkWriter::finish)
            .map_err(io)?;
        Ok::<_, crate::files::FilesError>(FilesInfo {
            stored_bytes,
            stored_sha256: hex::encode(sha),
            entries,
        })
    });
    let uploaded = upload_chunks(&mut rx, &mut upload, store).await;
    drop(rx);
    let written = writer.await.expect("files writer thread");
    let info = match (written, uploaded) {
        (Err(e), _) => {
            abort(upload).await;
            return Err(e.into());
        }
        (_, Err(e)) => {
            abort(upload).await;
            return Err(e);
        }
        (Ok(i), Ok(())) => i,
    };
    upload.finish().await.map_err(store_err(store))?;
    tracing::info!(%key, files = info.entries.len(), stored_bytes = info.stored_bytes, "control-plane files stored");
    Ok(Some(info))
}

/// Writes the manifest last, with a conditional create (S3 `If-None-Match: *`, local hard
/// link) so that two writers can never replace one manifest. When the PUT fails, the data
/// object is deleted only when the manifest is known to be absent: a PUT whose response was
/// lost may have stored it, and a manifest without data would be listed as a backup. When the
/// manifest is there with exactly these bytes, the backup is stored; when unsure, the data is
/// kept (prune removes it after `retention.orphan_grace` if no manifest appears).
async fn put_manifest(
    store: &Store,
    m: &Manifest,
    json: Vec<u8>,
    data_key: &crate::store::ObjectKey,
) -> Result<(), BackupError> {
    let key = manifest::manifest_key(&m.cluster_id, &m.id);
    let err = match store.put_bytes_new(&key, json.clone().into()).await {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    // The PUT failed, or a retry of it found the key taken: what is stored now decides.
    match store
        .get_bytes_limited(&key, manifest::MAX_MANIFEST_BYTES)
        .await
    {
        Ok(stored) if stored[..] == json[..] => {
            tracing::warn!(%key, error = %err, "the manifest PUT reported an error, but this manifest is stored: backup complete");
            Ok(())
        }
        Ok(_) => {
            // Another writer stored a backup with this id: leave both objects alone.
            tracing::error!(%key, "another writer stored a different manifest with this backup id; this run's manifest was not written");
            Err(store_err(store)(err))
        }
        Err(e) if e.is_not_found() => {
            if let Err(d) = store.delete(data_key).await {
                tracing::warn!(key = %data_key, error = %d, "could not delete the data object of a failed backup; prune removes it after retention.orphan_grace");
            }
            if m.files.is_some() {
                if let Ok(k) = m.derived_files_key() {
                    if let Err(d) = store.delete(&k).await {
                        tracing::warn!(key = %k, error = %d, "could not delete the files object of a failed backup");
                    }
                }
            }
            Err(store_err(store)(err))
        }
        Err(_) => {
            tracing::warn!(%key, data = %data_key, "manifest PUT failed and its state is unknown: the data object is kept (prune removes it after retention.orphan_grace if no manifest appears)");
            Err(store_err(store)(err))
        }
    }
}

/// A backup id not yet in the store. Ids have one-second resolution: a second backup in the
/// same second at the same revision waits for the next second rather than replace the first.
/// Only the manifest's existence is asked (HEAD), never its content; after
/// [`ID_ATTEMPTS`] taken ids in a row the backup fails rather than wait on.
async fn unused_id(
    store: &Store,
    cluster_hex: &str,
    rev: i64,
) -> Result<(DateTime<Utc>, String), BackupError> {
    for _ in 0..ID_ATTEMPTS {
        let now = Utc::now();
        let id = manifest::backup_id(now, rev);
        let key = manifest::manifest_key(cluster_hex, &id);
        match store.head(&key).await {
            Err(e) if e.is_not_found() => return Ok((now, id)),
            Err(e) => return Err(store_err(store)(e)),
            Ok(_) => {
                tokio::time::sleep(Duration::from_millis(
                    1000 - now.timestamp_subsec_millis() as u64 % 1000,
                ))
                .await
            }
        }
    }
    // Every second's id taken: manifests this tool did not write, or a clock stuck.
    let key = manifest::manifest_key(cluster_hex, &manifest::backup_id(Utc::now(), rev));
    Err(store_err(store)(StoreError::AlreadyExists {
        key: key.to_string(),
    }))
}

/// Longest wait for the clean-up of interrupted uploads before a backup (housekeeping that
/// prune repeats).
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How many consecutive seconds [`unused_id`] tries.
const ID_ATTEMPTS: u32 = 10;

async fn abort(upload: crate::store::Upload) {
    if let Err(e) = upload.abort().await {
        tracing::warn!(error = %e, "could not abort the upload; prune removes the leftover after the orphan grace period");
    }
}

/// The member's name from the member list ("" when it cannot be had).
async fn member_name(client: &mut etcd_client::Client, cfg: &Config, member_id: u64) -> String {
    match tokio::time::timeout(cfg.etcd.request_timeout, client.member_list()).await {
        Ok(Ok(list)) => list
            .members()
            .iter()
            .find(|m| m.id() == member_id)
            .map(|m| m.name().to_string())
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// The member's current revision (a serializable read: the member's own state), which the
/// snapshot's revision is at least. Used in the backup id.
async fn start_revision(client: &mut etcd_client::Client, cfg: &Config) -> Result<i64, String> {
    let opts = etcd_client::GetOptions::new()
        .with_serializable()
        .with_count_only();
    match tokio::time::timeout(cfg.etcd.request_timeout, client.get("\0", Some(opts))).await {
        Ok(Ok(r)) => Ok(r.header().map(|h| h.revision()).unwrap_or(0)),
        Ok(Err(e)) => Err(etcd::describe_error(&e)),
        Err(_) => Err(format!(
            "revision request timed out after {}; raise etcd.request_timeout",
            humantime::format_duration(cfg.etcd.request_timeout)
        )),
    }
}

/// Where the zstd output goes: straight to the uploader, or through age's stream encryptor.
enum Sink {
    /// Not encrypted (no recipients configured).
    Plain,
    /// The header is written when the writer thread starts; see [`Sink::encrypted`].
    Age(age::Encryptor),
}

impl Sink {
    fn encrypted(r: &Recipients) -> std::io::Result<Sink> {
        r.encryptor().map(Sink::Age)
    }
}

/// zstd workers: 0 = one per core; 1 = none (compression runs in the writer thread: ~7 MiB
/// instead of ~25 MiB per multi-threaded worker, and fast enough for the snapshot stream).
fn zstd_threads(cfg: &Config) -> u32 {
    match cfg.compression.threads {
        0 => std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        n => n,
    }
}

/// Receives the stream, feeding the writer thread (temp file + trailer hash + zstd + age) and
/// the uploader at once.
#[allow(clippy::too_many_arguments)]
async fn stream_snapshot(
    cfg: &Config,
    opts: &BackupOptions,
    client: &mut etcd_client::Client,
    status: &etcd::MemberStatus,
    file: std::fs::File,
    sink: Sink,
    upload: &mut crate::store::Upload,
    store: &Store,
) -> Result<StreamResult, AttemptError> {
    let temp_dir = workdir::temp_base(cfg);
    let (raw_tx, mut raw_rx) = mpsc::channel::<Vec<u8>>(RAW_CHANNEL_CHUNKS);
    let (stored_tx, mut stored_rx) = mpsc::channel::<Vec<u8>>(STORED_CHANNEL_CHUNKS);
    let level = cfg.compression.level;
    let threads = zstd_threads(cfg);

    // Writer thread: temp file, trailer hash, compression, encryption. Blocking I/O and CPU
    // stay off the async runtime.
    let writer = tokio::task::spawn_blocking(move || {
        // An empty chunk ends the input: the receiver never sends one.
        let next = || Ok(raw_rx.blocking_recv().unwrap_or_default());
        let copy = BufWriter::with_capacity(RAW_CHUNK_BYTES, file);
        write_stored(next, Some(copy), sink, level, threads, stored_tx)
    });

    let progress = Progress::bytes(opts.progress, "snapshot", Some(status.db_size));
    let receive = async {
        let mut stream = client.snapshot().await.map_err(|e| AttemptError {
            reason: etcd::describe_error(&e),
            fatal: None,
        })?;
        let idle = cfg.etcd.request_timeout.max(Duration::from_secs(10));
        let mut chunk = Vec::with_capacity(RAW_CHUNK_BYTES);
        loop {
            let msg = tokio::select! {
                _ = opts.cancel.cancelled() => return Err(BackupError::Cancelled.into()),
                m = tokio::time::timeout(idle, stream.message()) => m,
            };
            match msg {
                Err(_) => {
                    return Err(AttemptError {
                        reason: format!(
                            "snapshot stream stalled for {}",
                            humantime::format_duration(idle)
                        ),
                        fatal: None,
                    })
                }
                Ok(Err(e)) => {
                    return Err(AttemptError {
                        reason: format!("snapshot stream broke: {}", etcd::describe_error(&e)),
                        fatal: None,
                    })
                }
                Ok(Ok(None)) => break,
                Ok(Ok(Some(resp))) => {
                    let blob = resp.blob();
                    progress.inc(blob.len() as u64);
                    // Sent before it would outgrow its capacity: no reallocation, no copy.
                    if !chunk.is_empty() && chunk.len() + blob.len() > RAW_CHUNK_BYTES {
                        let full =
                            std::mem::replace(&mut chunk, Vec::with_capacity(RAW_CHUNK_BYTES));
                        if raw_tx.send(full).await.is_err() {
                            // The writer thread stopped: its error is reported below.
                            break;
                        }
                    }
                    chunk.extend_from_slice(blob);
                }
            }
        }
        if !chunk.is_empty() {
            // An error here means the writer thread stopped; it is reported below.
            let _ = raw_tx.send(chunk).await;
        }
        drop(raw_tx);
        Ok::<(), AttemptError>(())
    };
    let uploader = upload_chunks(&mut stored_rx, upload, store);
    let whole = async { tokio::join!(receive, uploader) };
    let (received, uploaded) = match tokio::time::timeout(cfg.etcd.snapshot_timeout, whole).await {
        Ok(r) => r,
        Err(_) => {
            return Err(AttemptError {
                reason: format!(
                    "snapshot did not finish within etcd.snapshot_timeout ({})",
                    humantime::format_duration(cfg.etcd.snapshot_timeout)
                ),
                fatal: None,
            })
        }
    };
    progress.finish();
    // The writer's own error (disk full) explains a broken upload channel better than the
    // channel does, so it is checked first.
    let written = writer.await.expect("writer thread");
    received?;
    let result = written.map_err(|source| {
        AttemptError::from(BackupError::TempDir {
            dir: temp_dir.display().to_string(),
            source,
        })
    });
    uploaded?;
    result
}

/// Hands the stored bytes of the writer thread to the store's upload, in order.
async fn upload_chunks(
    rx: &mut mpsc::Receiver<Vec<u8>>,
    upload: &mut crate::store::Upload,
    store: &Store,
) -> Result<(), BackupError> {
    while let Some(chunk) = rx.recv().await {
        upload.write(&chunk).await.map_err(store_err(store))?;
    }
    Ok(())
}

/// The stored object's pipeline, whatever the input (a snapshot stream, a data dir's db):
/// takes the input's chunks from `next` until it returns an empty one (chunks of up to
/// [`RAW_CHUNK_BYTES`]; a bigger one only costs memory); a second thread copies each chunk to
/// `copy` (the temp file to verify, when given) and feeds the trailer hasher, while this one
/// compresses (zstd `level`, `threads` workers), encrypts (`sink`) and hands the result to the
/// uploader through `stored_tx`. The two halves cost about the same per byte, so on two
/// cores the stream is not held up by one of them (at most [`SIDE_CHUNKS`] MiB between them).
/// Blocking: run it on a blocking thread. Errors: reading the input, writing the copy (reported
/// first: a full temp disk explains a stopped pipeline), or the uploader having stopped.
fn write_stored(
    mut next: impl FnMut() -> std::io::Result<Vec<u8>>,
    copy: Option<BufWriter<std::fs::File>>,
    sink: Sink,
    level: i32,
    threads: u32,
    stored_tx: mpsc::Sender<Vec<u8>>,
) -> std::io::Result<StreamResult> {
    let channel = ChunkWriter::new(stored_tx, STORED_CHUNK_BYTES);
    let output = match sink {
        Sink::Plain => AgeOutput::Plain(channel),
        Sink::Age(enc) => AgeOutput::Age(enc.wrap_output(channel)?),
    };
    let mut enc = zstd::stream::write::Encoder::new(output, level)?;
    if threads > 1 {
        enc.multithread(threads)?;
    }
    let (side_tx, side_rx) = std::sync::mpsc::sync_channel::<Arc<Vec<u8>>>(SIDE_CHUNKS);
    std::thread::scope(|s| {
        let side = s.spawn(move || copy_and_hash(side_rx, copy));
        let compressed = (|| {
            loop {
                let chunk = next()?;
                if chunk.is_empty() {
                    break;
                }
                let chunk = Arc::new(chunk);
                if side_tx.send(Arc::clone(&chunk)).is_err() {
                    break; // The side thread failed: its error is returned below.
                }
                enc.write_all(&chunk)?;
            }
            drop(side_tx);
            enc.finish()?.finish()?.finish()
        })();
        let t = side.join().expect("copy thread")?;
        let (stored_bytes, stored_sha256) = compressed?;
        Ok(StreamResult {
            db_len: t.db_len,
            raw_sha256: t.raw_sha256,
            trailer_ok: t.trailer,
            stored_bytes,
            stored_sha256,
        })
    })
}

/// Chunks in flight from [`write_stored`] to its copy thread (1 MiB each).
const SIDE_CHUNKS: usize = 4;

/// [`write_stored`]'s second thread: the temp file copy and the trailer hash.
fn copy_and_hash(
    rx: std::sync::mpsc::Receiver<Arc<Vec<u8>>>,
    mut copy: Option<BufWriter<std::fs::File>>,
) -> std::io::Result<snapshot::TrailerCheck> {
    let mut trailer = TrailerHasher::new();
    for chunk in rx {
        if let Some(c) = copy.as_mut() {
            c.write_all(&chunk)?;
        }
        trailer.update(&chunk);
    }
    if let Some(c) = copy.as_mut() {
        c.flush()?;
    }
    Ok(trailer.finish())
}

/// Up to `max` bytes of `input` (fewer only at its end; empty at the end).
fn read_chunk<R: Read>(input: &mut R, max: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(max);
    input.by_ref().take(max as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// When a backup happened, for `list`'s age column.
pub fn age(now: DateTime<Utc>, m: &Manifest) -> Duration {
    (now - m.finished_at).to_std().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore::member::Member;

    #[test]
    fn wal_ids_reads_the_metadata_record() {
        let dir = tempfile::tempdir().unwrap();
        let members = vec![
            Member {
                name: "a".into(),
                id: 0x10,
                peer_urls: vec!["http://a:2380".into()],
            },
            Member {
                name: "b".into(),
                id: 0x8e9e05c52164694d,
                peer_urls: vec!["http://b:2380".into()],
            },
        ];
        crate::restore::wal::write_wal(
            dir.path(),
            0x8e9e05c52164694d,
            0xcdf818194e3a8c32,
            &members,
        )
        .unwrap();
        // A later segment (by name) is not the one read.
        std::fs::write(
            dir.path().join("0000000000000001-0000000000000009.wal"),
            [0u8; 64],
        )
        .unwrap();
        let (node, cluster) = wal_ids(dir.path()).unwrap();
        assert_eq!(node, 0x8e9e05c52164694d);
        assert_eq!(cluster, 0xcdf818194e3a8c32);
    }

    #[test]
    fn wal_ids_refuses_a_dir_without_segments_or_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let e = wal_ids(dir.path()).unwrap_err().to_string();
        assert!(e.contains("no .wal segment"), "{e}");
        std::fs::write(
            dir.path().join("0000000000000000-0000000000000000.wal"),
            [0u8; 64],
        )
        .unwrap();
        let e = wal_ids(dir.path()).unwrap_err().to_string();
        assert!(e.contains("no metadata record"), "{e}");
    }

    #[test]
    fn pb_fields_rejects_truncated_messages() {
        assert!(pb_fields(&[0x08]).is_none());
        assert!(pb_fields(&[0x1a, 0x05, 1, 2]).is_none());
        let f = pb_fields(&[0x08, 7, 0x10, 9]).unwrap();
        assert!(matches!(
            f[..],
            [(1, PbValue::Varint(7)), (2, PbValue::Varint(9))]
        ));
    }
}
