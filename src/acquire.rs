//! Acquiring a snapshot: one way to get a snapshot onto local disk and prove it good, for
//! `status`, `verify` and `restore`.
//!
//! ```text
//! source ─┬─ raw file ───────────────────────────────── used in place ─┐
//!         ├─ .zst file ──────────────────── zstd -d ─> private temp ───┤
//!         ├─ .age file ─────── age -d ───── zstd -d ─> private temp ───┼─> trailer rule ─> bbolt
//!         └─ stored backup ─ (age -d) ───── zstd -d ─> private temp ───┘   check + status
//!              (bounded by the manifest: stored_bytes in, total_size + 32 out)   ─> manifest
//! ```
//! The format of a file is detected by its magic bytes (zstd `28 b5 2f fd`, age
//! `age-encryption.org/v1\n`); a stored backup's by its manifest. Temp files live in a
//! private per-run directory ([`crate::workdir::WorkDir`]) removed when the [`Acquired`] is
//! dropped, or at once on error.
//!
//! One trailer policy ([`TrailerRule`], etcdutl's `copyAndVerifyDB` rule: a trailer is present
//! when `size % 512 == 32`; it is cut off whatever the rule), one error type
//! ([`AcquireError`]) and one comparison with the manifest ([`compare_with_manifest`]:
//! stored_bytes, stored_sha256, raw_sha256, hash, revision, total_key, total_size).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::crypto::{self, FileFormat, Identities};
use crate::files::{FilesCheck, FilesError, StoredFiles};
use crate::snapshot::{self, SnapshotError, Status, TrailerCheck, TrailerHasher};
use crate::store::{Manifest, Store, StoreError};
use crate::workdir::{WorkDir, WorkDirError};

/// Read and write buffer size (bytes).
const CHUNK: usize = 1 << 20;
/// Length of etcd's sha256 trailer (bytes).
const TRAILER: u64 = snapshot::trailer::TRAILER_LEN;

/// What to require of etcd's sha256 trailer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrailerRule {
    /// Present and matching (`restore`, `verify` of a snapshot stream backup).
    Required,
    /// Checked when present; a file without one is accepted (`status`; backups of a data
    /// dir's `member/snap/db`, which has none).
    IfPresent,
    /// Not checked (`--skip-hash-check`, etcdutl's flag); a present trailer is still cut off.
    Skip,
}

/// What became of the trailer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrailerState {
    /// Present and matching the db bytes.
    Valid,
    /// Not present (the size is not `512*n + 32`).
    Absent,
    /// Present but not checked against the content ([`TrailerRule::Skip`]: it did not match,
    /// or a raw file was not hashed).
    NotChecked,
}

/// Where the snapshot comes from.
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    /// A local file: raw db, `.zst` or `.age` (detected by its magic bytes).
    File(&'a Path),
    /// A stored backup (its data object, key derived from the manifest's cluster id and id).
    Stored {
        /// The store holding it.
        store: &'a Store,
        /// Its manifest.
        manifest: &'a Manifest,
    },
}

/// Options of [`acquire`].
#[derive(Clone, Debug)]
pub struct AcquireOptions<'a> {
    /// Identities for age-encrypted sources (`--identity`).
    pub identities: Option<Arc<Identities>>,
    /// The trailer rule. For stored backups [`TrailerRule::Required`] is relaxed to
    /// [`TrailerRule::IfPresent`] when the manifest says the snapshot came from a data dir.
    pub trailer: TrailerRule,
    /// Where the private per-run directory is made (same file system as the target, for
    /// restore).
    pub temp_base: &'a Path,
    /// For a raw file: leave both full-read checks, the bbolt check with its status and the
    /// sha256 trailer, to the caller, who runs [`Acquired::run_deferred_checks`] while it
    /// copies the db (restore, into a staging dir it discards on error) and must not use
    /// `status`, `raw_sha256` or `trailer` before that passed. A trailer required but absent
    /// (known from the size) is still refused at once.
    pub defer_raw_checks: bool,
}

/// Size and sha256 of the compressed (and maybe encrypted) input that was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputCheck {
    /// Bytes read.
    pub bytes: u64,
    /// Their sha256 (hex).
    pub sha256: String,
}

/// A verified snapshot on local disk.
#[derive(Debug)]
pub struct Acquired {
    /// The file: the user's raw file, or a temp file in a private directory.
    pub path: PathBuf,
    /// Bytes of db at the start of `path` (without the trailer).
    pub db_len: u64,
    /// bbolt check passed; the `snapshot status` values.
    pub status: Status,
    /// sha256 of the db bytes (hex); empty for a raw file read with [`TrailerRule::Skip`]
    /// (not hashed at all, as etcdutl).
    pub raw_sha256: String,
    /// The trailer's state.
    pub trailer: TrailerState,
    /// The source's format.
    pub format: FileFormat,
    /// For compressed sources: size and sha256 of what was read.
    pub input: Option<InputCheck>,
    /// Holds the temp file's directory (removed on drop).
    _work: Option<WorkDir>,
    /// The trailer rule still to apply ([`AcquireOptions::defer_raw_checks`]).
    deferred: Option<TrailerRule>,
}

impl Acquired {
    /// Runs the checks that [`AcquireOptions::defer_raw_checks`] left out, on two threads
    /// (each reads the whole file): the bbolt check, which fills `status`, and the trailer
    /// rule, which fills `raw_sha256` and `trailer`. Nothing when nothing was deferred.
    ///
    /// Errors: [`AcquireError::TrailerMismatch`] (first: a file whose bytes changed is
    /// reported as such whatever its structure says), [`AcquireError::Snapshot`],
    /// [`AcquireError::Io`].
    pub fn run_deferred_checks(&mut self) -> Result<(), AcquireError> {
        let Some(rule) = self.deferred else {
            return Ok(());
        };
        let what = self.path.display().to_string();
        let (hashed, status) = std::thread::scope(|s| {
            let h = s.spawn(|| hash_file(&self.path));
            let status = verify(&self.path, self.db_len, &what);
            (h.join().expect("hash thread"), status)
        });
        let tc = hashed?;
        if tc.db_len != self.db_len {
            return Err(AcquireError::Io {
                what: "reading",
                path: self.path.clone(),
                source: std::io::Error::other("the file changed size while it was read"),
            });
        }
        self.trailer = trailer_rule(&tc, rule, &what, &self.path)?;
        self.raw_sha256 = hex::encode(tc.raw_sha256);
        self.status = status?;
        self.deferred = None;
        Ok(())
    }
}

/// Why a snapshot could not be acquired. Messages name the file or backup and the fix.
#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    /// Reading a local file failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The private temp dir could not be made or written (disk full, read-only, ...).
    #[error(transparent)]
    WorkDir(#[from] WorkDirError),
    /// The store failed.
    #[error("store {store}: {source}")]
    Store {
        /// [`Store::describe`].
        store: String,
        /// The cause.
        source: StoreError,
    },
    /// The trailer does not match the content.
    #[error("snapshot {what}: sha256 trailer does not match its content (expected {expected}, got {actual}): the file is corrupted or truncated; use another backup")]
    TrailerMismatch {
        /// The source.
        what: String,
        /// Trailer value (hex).
        expected: String,
        /// Computed (hex).
        actual: String,
    },
    /// No trailer where one is required.
    #[error("snapshot {what} has no sha256 trailer (size {size} bytes is not 512*n+32): it is truncated, or a db copied from a data dir; for the latter pass --skip-hash-check")]
    MissingTrailer {
        /// The source.
        what: String,
        /// Its (decompressed) size in bytes.
        size: u64,
    },
    /// zstd decompression failed.
    #[error("decompressing {what}: {source}: the compressed file is corrupted or truncated")]
    Zstd {
        /// The source.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// An age-encrypted source and no identity.
    #[error("{what} is age-encrypted{}: pass --identity FILE (or ETCD_LIFEBOAT_AGE_IDENTITY_FILE) with the key of one of its recipients", recipients_note(recipients))]
    NeedIdentity {
        /// The source.
        what: String,
        /// Recipients it was encrypted to, when known (from the manifest).
        recipients: Vec<String>,
    },
    /// None of the identities is a recipient.
    #[error("{what}: none of the identities in {} can decrypt it{}; pass the identity file of one of them with --identity", files.join(", "), recipients_note(recipients))]
    WrongIdentity {
        /// The source (`backup ID` or a file).
        what: String,
        /// The identity files tried.
        files: Vec<String>,
        /// Recipients it was encrypted to, when known (from the manifest).
        recipients: Vec<String>,
    },
    /// The age file is damaged (bad header, failed authentication, truncated).
    #[error("decrypting {what}: {reason}: the encrypted file is corrupted or truncated; use another backup")]
    Decrypt {
        /// The source.
        what: String,
        /// age's message.
        reason: String,
    },
    /// More bytes than the manifest allows (a zstd bomb, or an object longer than recorded).
    #[error("{what}: {field} exceeds the manifest's {limit} bytes; refused without reading further (the object is corrupted or was tampered with); use another backup")]
    TooLarge {
        /// The source.
        what: String,
        /// `stored object` or `decompressed snapshot`.
        field: &'static str,
        /// The limit.
        limit: u64,
    },
    /// A stored backup differs from its manifest.
    #[error("backup {id}: {field} is {actual} but the manifest says {expected}: the stored object is corrupted; use another backup (`etcd-lifeboat list`)")]
    ManifestMismatch {
        /// Backup id.
        id: String,
        /// Which value differs.
        field: &'static str,
        /// Manifest value.
        expected: String,
        /// Measured value.
        actual: String,
    },
    /// The manifest cannot be acted on (unknown compression, impossible sizes, bad key).
    #[error("backup {id}: {reason}")]
    BadManifest {
        /// Backup id.
        id: String,
        /// What is wrong.
        reason: String,
    },
    /// A backup's control-plane files object failed its checks.
    #[error("{0}")]
    Files(#[from] FilesError),
    /// The bbolt structure check failed.
    #[error("verifying snapshot {what}: {source}")]
    Snapshot {
        /// The source.
        what: String,
        /// The cause.
        source: SnapshotError,
    },
}

fn recipients_note(r: &[String]) -> String {
    if r.is_empty() {
        String::new()
    } else {
        format!(" (encrypted to {})", r.join(", "))
    }
}

/// Limits taken from a manifest.
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// Largest input (stored object) in bytes.
    input: u64,
    /// Largest output (db + trailer) in bytes.
    output: u64,
}

/// Gets `source` onto local disk, checked: decrypts (age) and decompresses (zstd) into a
/// private temp dir under `opts.temp_base` when needed, applies the trailer rule, checks the
/// bbolt structure and computes the status; for a stored backup compares everything with its
/// manifest and stops reading at the manifest's sizes. Runs the blocking work on tokio's
/// blocking pool. Memory: a few 1 MiB buffers plus the zstd window.
///
/// Errors: [`AcquireError`]; on error nothing is left in the temp dir.
pub async fn acquire(
    source: Source<'_>,
    opts: &AcquireOptions<'_>,
) -> Result<Acquired, AcquireError> {
    let ids = opts.identities.clone();
    let base = opts.temp_base.to_path_buf();
    match source {
        Source::File(path) => {
            let path = path.to_path_buf();
            let (rule, defer) = (opts.trailer, opts.defer_raw_checks);
            tokio::task::spawn_blocking(move || {
                acquire_file(&path, rule, defer, ids.as_deref(), &base)
            })
            .await
            .expect("acquire thread")
        }
        Source::Stored { store, manifest: m } => {
            let what = format!("backup {}", m.id);
            let (limits, format) = manifest_plan(m)?;
            let rule = match (opts.trailer, m.source) {
                (TrailerRule::Required, crate::store::manifest::BackupSource::DataDir) => {
                    TrailerRule::IfPresent
                }
                (r, _) => r,
            };
            let recipients = m
                .encryption
                .as_ref()
                .map(|e| e.recipients.clone())
                .unwrap_or_default();
            if format == FileFormat::Age && ids.is_none() {
                return Err(AcquireError::NeedIdentity { what, recipients });
            }
            let key = data_key_of(m)?;
            let reader = store
                .get_stream(&key)
                .await
                .map_err(|source| AcquireError::Store {
                    store: store.describe(),
                    source,
                })?;
            let m2 = m.clone();
            let got = tokio::task::spawn_blocking(move || {
                let input = tokio_util::io::SyncIoBridge::new(reader);
                let work = WorkDir::create(&base)?;
                let mut a = unpack(
                    input,
                    format,
                    &what,
                    ids.as_deref(),
                    Some(limits),
                    rule,
                    work,
                    &recipients,
                )?;
                a.status = verify(&a.path, a.db_len, &what)?;
                compare_with_manifest(&m2, &a)?;
                Ok::<_, AcquireError>(a)
            })
            .await
            .expect("acquire thread")?;
            Ok(got)
        }
    }
}

/// Size limits and format of a stored backup, from its manifest (checked arithmetic).
fn manifest_plan(m: &Manifest) -> Result<(Limits, FileFormat), AcquireError> {
    let bad = |reason: String| AcquireError::BadManifest {
        id: m.id.clone(),
        reason,
    };
    if m.compression != "zstd" {
        return Err(bad(format!(
            "compression {:?} is not supported (only zstd)",
            m.compression
        )));
    }
    let format = match &m.encryption {
        None => FileFormat::Zstd,
        Some(e) if e.format == crate::store::manifest::AGE_FORMAT => FileFormat::Age,
        Some(e) => {
            return Err(bad(format!(
                "encryption format {:?} is not supported (only {})",
                e.format,
                crate::store::manifest::AGE_FORMAT
            )))
        }
    };
    let output = m
        .total_size
        .checked_add(TRAILER)
        .ok_or_else(|| bad(format!("total_size {} is impossible", m.total_size)))?;
    Ok((
        Limits {
            input: m.stored_bytes,
            output,
        },
        format,
    ))
}

/// Compares an acquired stored backup with its manifest: stored_bytes, stored_sha256,
/// raw_sha256, then hash, revision, total_key, total_size. The one comparison.
///
/// Errors: [`AcquireError::ManifestMismatch`] naming the first field that differs.
pub fn compare_with_manifest(m: &Manifest, a: &Acquired) -> Result<(), AcquireError> {
    if let Some(input) = &a.input {
        compare_input(m, input)?;
    }
    let (st, lower) = (&a.status, |h: &str| h.to_ascii_lowercase());
    first_mismatch(
        m,
        [
            ("raw_sha256", lower(&m.raw_sha256), lower(&a.raw_sha256)),
            (
                "hash",
                format!("{:08x}", m.hash),
                format!("{:08x}", st.hash),
            ),
            ("revision", m.revision.to_string(), st.revision.to_string()),
            (
                "total_key",
                m.total_key.to_string(),
                st.total_key.to_string(),
            ),
            (
                "total_size",
                m.total_size.to_string(),
                st.total_size.to_string(),
            ),
        ],
    )
}

/// The stored object's part of [`compare_with_manifest`]: stored_bytes and stored_sha256.
fn compare_input(m: &Manifest, input: &InputCheck) -> Result<(), AcquireError> {
    let (want, got) = (
        m.stored_sha256.to_ascii_lowercase(),
        input.sha256.to_ascii_lowercase(),
    );
    first_mismatch(
        m,
        [
            (
                "stored_bytes",
                m.stored_bytes.to_string(),
                input.bytes.to_string(),
            ),
            ("stored_sha256", want, got),
        ],
    )
}

/// [`AcquireError::ManifestMismatch`] for the first `(field, expected, actual)` that differs.
fn first_mismatch<const N: usize>(
    m: &Manifest,
    fields: [(&'static str, String, String); N],
) -> Result<(), AcquireError> {
    match fields.into_iter().find(|(_, want, got)| want != got) {
        None => Ok(()),
        Some((field, expected, actual)) => Err(AcquireError::ManifestMismatch {
            id: m.id.clone(),
            field,
            expected,
            actual,
        }),
    }
}

/// The data object's key, derived from the manifest's cluster id and backup id (never taken
/// from the manifest's `data_key` field).
///
/// Errors: [`AcquireError::BadManifest`] when the ids do not form a key.
fn data_key_of(m: &Manifest) -> Result<crate::store::ObjectKey, AcquireError> {
    m.derived_data_key().map_err(|e| AcquireError::BadManifest {
        id: m.id.clone(),
        reason: e.to_string(),
    })
}

/// Checks a stored object's size and sha256 against the manifest without decrypting or
/// decompressing it (streaming; stops past `stored_bytes`). What `verify` can do for an
/// encrypted backup without an identity.
///
/// Errors: store access, [`AcquireError::TooLarge`], [`AcquireError::ManifestMismatch`].
pub async fn check_stored_object(store: &Store, m: &Manifest) -> Result<InputCheck, AcquireError> {
    use tokio::io::AsyncReadExt;
    let key = data_key_of(m)?;
    let store_err = |source| AcquireError::Store {
        store: store.describe(),
        source,
    };
    let mut r = store.get_stream(&key).await.map_err(store_err)?;
    let mut sha = Sha256::new();
    let mut n: u64 = 0;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let k = r.read(&mut buf).await.map_err(|e| AcquireError::Io {
            what: "reading",
            path: PathBuf::from(key.as_str()),
            source: e,
        })?;
        if k == 0 {
            break;
        }
        n = n.saturating_add(k as u64);
        if n > m.stored_bytes {
            return Err(AcquireError::TooLarge {
                what: format!("backup {}", m.id),
                field: "stored object",
                limit: m.stored_bytes,
            });
        }
        sha.update(&buf[..k]);
    }
    let got = InputCheck {
        bytes: n,
        sha256: hex::encode(sha.finalize()),
    };
    compare_input(m, &got)?;
    Ok(got)
}

/// What [`verify_stored`] could check.
#[derive(Debug)]
pub enum Verified {
    /// Downloaded, decrypted when needed, decompressed and fully checked: the status values.
    Content(Status),
    /// An encrypted backup checked without an identity: only the stored object's size and
    /// sha256 against the manifest; the content was NOT checked.
    CiphertextOnly(InputCheck),
}

/// Verifies a stored backup the way `verify` and the daemon's re-verification do: a plaintext
/// backup, or an encrypted one with `identities`, is acquired in full (stored size and sha256,
/// raw sha256, trailer, bbolt structure, status against the manifest); an encrypted backup
/// without identities gets [`check_stored_object`] only. The temp file is removed before this
/// returns.
///
/// Errors: as [`acquire`] and [`check_stored_object`].
pub async fn verify_stored(
    store: &Store,
    m: &Manifest,
    identities: Option<Arc<Identities>>,
    temp_base: &Path,
) -> Result<Verified, AcquireError> {
    if m.encryption.is_some() && identities.is_none() {
        return check_stored_object(store, m)
            .await
            .map(Verified::CiphertextOnly);
    }
    let opts = AcquireOptions {
        identities,
        trailer: TrailerRule::Required,
        temp_base,
        defer_raw_checks: false,
    };
    let got = acquire(Source::Stored { store, manifest: m }, &opts).await?;
    Ok(Verified::Content(got.status.clone()))
}

/// A local file source (blocking).
fn acquire_file(
    path: &Path,
    rule: TrailerRule,
    defer: bool,
    ids: Option<&Identities>,
    base: &Path,
) -> Result<Acquired, AcquireError> {
    let io = |what: &'static str| {
        move |source| AcquireError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    let what = path.display().to_string();
    let format = crypto::detect_format(path).map_err(io("reading"))?;
    if format == FileFormat::Raw {
        return acquire_raw(path, rule, defer);
    }
    if format == FileFormat::Age && ids.is_none() {
        return Err(AcquireError::NeedIdentity {
            what,
            recipients: Vec::new(),
        });
    }
    let f = File::open(path).map_err(io("opening"))?;
    let work = WorkDir::create(base)?;
    let mut a = unpack(f, format, &what, ids, None, rule, work, &[])?;
    a.status = verify(&a.path, a.db_len, &what)?;
    Ok(a)
}

/// A raw db file, used in place: the trailer hash (one full read) runs on a second thread
/// while the bbolt structure is checked, or both are left to the caller (`defer`).
fn acquire_raw(path: &Path, rule: TrailerRule, defer: bool) -> Result<Acquired, AcquireError> {
    let what = path.display().to_string();
    let size = std::fs::metadata(path)
        .map_err(|source| AcquireError::Io {
            what: "reading",
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let has = snapshot::has_trailer(size);
    if !has && rule == TrailerRule::Required {
        // Known from the size alone.
        return Err(AcquireError::MissingTrailer { what, size });
    }
    let db_len = if has { size - TRAILER } else { size };
    let mut a = Acquired {
        path: path.to_path_buf(),
        db_len,
        // Filled by `run_deferred_checks` (or the Skip branch).
        status: unchecked_status(),
        raw_sha256: String::new(),
        trailer: if has {
            TrailerState::NotChecked
        } else {
            TrailerState::Absent
        },
        format: FileFormat::Raw,
        input: None,
        _work: None,
        deferred: Some(rule),
    };
    if rule == TrailerRule::Skip {
        // etcdutl's --skip-hash-check: no full read at all.
        a.status = verify(path, db_len, &what)?;
        a.deferred = None;
    } else if !defer {
        a.run_deferred_checks()?;
    }
    Ok(a)
}

/// The status of a db not walked yet (all zero), until [`verify`] fills it in.
fn unchecked_status() -> Status {
    Status {
        hash: 0,
        revision: 0,
        total_key: 0,
        total_size: 0,
        version: None,
    }
}

fn hash_file(path: &Path) -> Result<TrailerCheck, AcquireError> {
    let io = |source| AcquireError::Io {
        what: "reading",
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(io)?;
    let mut h = TrailerHasher::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finish())
}

/// bbolt check + status of the first `db_len` bytes of `path`.
fn verify(path: &Path, db_len: u64, what: &str) -> Result<Status, AcquireError> {
    snapshot::verify_file(path, Some(db_len)).map_err(|source| AcquireError::Snapshot {
        what: what.to_string(),
        source,
    })
}

/// The trailer policy: applies `rule` to a finished hash of the bytes now in `file`.
///
/// Errors: [`AcquireError::TrailerMismatch`], [`AcquireError::MissingTrailer`].
fn trailer_rule(
    tc: &TrailerCheck,
    rule: TrailerRule,
    what: &str,
    file: &Path,
) -> Result<TrailerState, AcquireError> {
    match (tc.trailer, rule) {
        (Some(true), _) => Ok(TrailerState::Valid),
        (Some(false), TrailerRule::Skip) => Ok(TrailerState::NotChecked),
        (Some(false), _) => {
            let mut stored = [0u8; 32];
            let read = File::open(file).and_then(|mut f| {
                f.seek(SeekFrom::Start(tc.db_len))?;
                f.read_exact(&mut stored)
            });
            Err(AcquireError::TrailerMismatch {
                what: what.to_string(),
                expected: if read.is_ok() {
                    hex::encode(stored)
                } else {
                    "?".into()
                },
                actual: hex::encode(tc.raw_sha256),
            })
        }
        (None, TrailerRule::Required) => Err(AcquireError::MissingTrailer {
            what: what.to_string(),
            size: tc.db_len,
        }),
        (None, _) => Ok(TrailerState::Absent),
    }
}

/// A reader that counts and sha256-hashes what passes, refusing to go past `limit` bytes.
struct Counted<R> {
    inner: R,
    sha: Sha256,
    n: u64,
    limit: Option<u64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // Ask for at most one byte past the limit: enough to tell "longer", no more.
        let want = match self.limit {
            Some(l) => {
                let room = l.saturating_sub(self.n).saturating_add(1);
                buf.len().min(usize::try_from(room).unwrap_or(usize::MAX))
            }
            None => buf.len(),
        };
        let k = self.inner.read(&mut buf[..want])?;
        self.n = self.n.saturating_add(k as u64);
        if self.limit.is_some_and(|l| self.n > l) {
            return Err(std::io::Error::other(LimitExceeded));
        }
        self.sha.update(&buf[..k]);
        Ok(k)
    }
}

/// Marker error of [`Counted`] (found again through the error chain).
#[derive(Debug)]
struct LimitExceeded;
impl std::fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("more bytes than the manifest records")
    }
}
impl std::error::Error for LimitExceeded {}

fn is_limit(e: &std::io::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|r| r as _);
    while let Some(c) = cur {
        if c.is::<LimitExceeded>() {
            return true;
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if io.get_ref().is_some_and(|r| r.is::<LimitExceeded>()) {
                return true;
            }
        }
        cur = c.source();
    }
    false
}

/// Decrypts (age) and decompresses (zstd) `input` into `work/snapshot.db`, hashing the input
/// and the output, within `limits`; applies the trailer rule. The status is filled in by the
/// caller (after [`verify`]).
#[allow(clippy::too_many_arguments)]
fn unpack<R: Read>(
    input: R,
    format: FileFormat,
    what: &str,
    ids: Option<&Identities>,
    limits: Option<Limits>,
    rule: TrailerRule,
    work: WorkDir,
    recipients: &[String],
) -> Result<Acquired, AcquireError> {
    let mut counted = Counted {
        inner: input,
        sha: Sha256::new(),
        n: 0,
        limit: limits.map(|l| l.input),
    };
    let too_large_in = || AcquireError::TooLarge {
        what: what.to_string(),
        field: "stored object",
        limit: limits.map(|l| l.input).unwrap_or(0),
    };
    let (file, out_path) = work.create_file("snapshot.db")?;
    let mut out = BufWriter::with_capacity(CHUNK, file);
    let mut h = TrailerHasher::new();
    {
        let mut plain: Box<dyn Read + '_> = match format {
            FileFormat::Age => {
                let ids = ids.expect("checked by the caller");
                let armored = crypto::dearmor(BufReader::with_capacity(CHUNK, &mut counted));
                match ids.decrypt(armored) {
                    Ok(r) => Box::new(r),
                    Err(age::DecryptError::NoMatchingKeys) => {
                        return Err(AcquireError::WrongIdentity {
                            what: what.to_string(),
                            files: ids
                                .files()
                                .iter()
                                .map(|p| p.display().to_string())
                                .collect(),
                            recipients: recipients.to_vec(),
                        })
                    }
                    Err(age::DecryptError::Io(e)) if is_limit(&e) => return Err(too_large_in()),
                    Err(e) => {
                        return Err(AcquireError::Decrypt {
                            what: what.to_string(),
                            reason: e.to_string(),
                        })
                    }
                }
            }
            _ => Box::new(BufReader::with_capacity(CHUNK, &mut counted)),
        };
        // Errors below the zstd decoder: an age authentication failure or the input limit.
        let classify = |e: std::io::Error| -> AcquireError {
            if is_limit(&e) {
                too_large_in()
            } else if format == FileFormat::Age && e.kind() != std::io::ErrorKind::Other {
                AcquireError::Decrypt {
                    what: what.to_string(),
                    reason: e.to_string(),
                }
            } else {
                AcquireError::Zstd {
                    what: what.to_string(),
                    source: e,
                }
            }
        };
        {
            let mut dec =
                zstd::stream::read::Decoder::new(&mut plain).map_err(|e| AcquireError::Zstd {
                    what: what.to_string(),
                    source: e,
                })?;
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = dec.read(&mut buf).map_err(classify)?;
                if n == 0 {
                    break;
                }
                if let Some(l) = limits {
                    if h.len().saturating_add(n as u64) > l.output {
                        return Err(AcquireError::TooLarge {
                            what: what.to_string(),
                            field: "decompressed snapshot",
                            limit: l.output,
                        });
                    }
                }
                h.update(&buf[..n]);
                out.write_all(&buf[..n]).map_err(|source| WorkDirError {
                    path: out_path.clone(),
                    source,
                })?;
            }
        }
        // The rest of the plaintext (nothing, normally): read to the end so that age
        // authenticates its last chunk and the input hash covers the whole object.
        std::io::copy(&mut plain, &mut std::io::sink()).map_err(classify)?;
    }
    std::io::copy(&mut counted, &mut std::io::sink()).map_err(|e| {
        if is_limit(&e) {
            too_large_in()
        } else {
            AcquireError::Zstd {
                what: what.to_string(),
                source: e,
            }
        }
    })?;
    out.flush().map_err(|source| WorkDirError {
        path: out_path.clone(),
        source,
    })?;
    drop(out);
    let tc = h.finish();
    let trailer = trailer_rule(&tc, rule, what, &out_path)?;
    Ok(Acquired {
        path: out_path,
        db_len: tc.db_len,
        status: unchecked_status(),
        raw_sha256: hex::encode(tc.raw_sha256),
        trailer,
        format,
        input: Some(InputCheck {
            bytes: counted.n,
            sha256: hex::encode(counted.sha.finalize()),
        }),
        _work: Some(work),
        deferred: None,
    })
}

/// Reads the control-plane files object of backup `m` from `store` (streamed) and checks it
/// with [`crate::files::check_stored`]: bounded by and compared with the manifest's size and
/// sha256, decrypted with `identities`, checked entry by entry, or extracted below `dest`.
/// Without identities an encrypted object gets the size and sha256 check only
/// ([`FilesCheck::CiphertextOnly`]), and is refused when `dest` is given.
///
/// Errors: [`FilesError::NoFiles`], [`FilesError::Decrypt`], [`FilesError::Mismatch`],
/// [`FilesError::Exists`], I/O (as [`AcquireError::Files`]); [`AcquireError::Store`].
pub async fn fetch_files(
    store: &Store,
    m: &Manifest,
    identities: Option<Arc<Identities>>,
    dest: Option<&Path>,
) -> Result<FilesCheck, AcquireError> {
    let info = m
        .files
        .as_ref()
        .ok_or_else(|| FilesError::NoFiles { id: m.id.clone() })?;
    if let (Some(enc), None, Some(_)) = (&m.encryption, &identities, dest) {
        return Err(FilesError::Decrypt {
            id: m.id.clone(),
            reason: format!(
                "it is encrypted to {}: pass --identity FILE with a matching age identity",
                enc.recipients.join(", ")
            ),
        }
        .into());
    }
    let store_err = |source| AcquireError::Store {
        store: format!("{} (files object of backup {})", store.describe(), m.id),
        source,
    };
    let key = m.derived_files_key().map_err(store_err)?;
    let reader = store.get_stream(&key).await.map_err(store_err)?;
    let obj = StoredFiles {
        id: m.id.clone(),
        entries: info.entries.clone(),
        stored_bytes: info.stored_bytes,
        stored_sha256: info.stored_sha256.clone(),
        encrypted: m.encryption.is_some(),
    };
    let dest = dest.map(Path::to_path_buf);
    let input = tokio_util::io::SyncIoBridge::new(reader);
    Ok(tokio::task::spawn_blocking(move || {
        crate::files::check_stored(&obj, input, identities.as_deref(), dest.as_deref())
    })
    .await
    .expect("files thread")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db_with_trailer() -> Vec<u8> {
        let mut db = vec![7u8; 4096];
        let sum = Sha256::digest(&db);
        db.extend_from_slice(&sum);
        db
    }

    fn run_unpack(z: &[u8], limits: Option<Limits>, base: &Path) -> Result<Acquired, AcquireError> {
        let work = WorkDir::create(base).unwrap();
        unpack(
            z,
            FileFormat::Zstd,
            "x.db.zst",
            None,
            limits,
            TrailerRule::Required,
            work,
            &[],
        )
    }

    #[test]
    fn zstd_roundtrip_trailer_and_limits() {
        let d = tempfile::tempdir().unwrap();
        let db = db_with_trailer();
        let z = zstd::encode_all(&db[..], 3).unwrap();
        let a = run_unpack(&z, None, d.path()).unwrap();
        assert_eq!(a.db_len, 4096);
        assert_eq!(a.trailer, TrailerState::Valid);
        assert_eq!(a.input.as_ref().unwrap().bytes, z.len() as u64);
        drop(a);
        // A flipped byte in the db part is caught.
        let mut bad = db.clone();
        bad[10] ^= 1;
        let zb = zstd::encode_all(&bad[..], 3).unwrap();
        let e = run_unpack(&zb, None, d.path()).unwrap_err();
        assert!(matches!(e, AcquireError::TrailerMismatch { .. }), "{e}");
        // A truncated compressed stream is caught.
        let e = run_unpack(&z[..z.len() - 5], None, d.path()).unwrap_err();
        assert!(matches!(e, AcquireError::Zstd { .. }), "{e}");
        // Output bounded: a manifest saying 1000 bytes refuses 4128.
        let e = run_unpack(
            &z,
            Some(Limits {
                input: z.len() as u64,
                output: 1000,
            }),
            d.path(),
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                AcquireError::TooLarge {
                    field: "decompressed snapshot",
                    ..
                }
            ),
            "{e}"
        );
        // Input bounded: an object longer than recorded is refused.
        let e = run_unpack(
            &z,
            Some(Limits {
                input: z.len() as u64 - 1,
                output: 1 << 20,
            }),
            d.path(),
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                AcquireError::TooLarge {
                    field: "stored object",
                    ..
                }
            ),
            "{e}"
        );
        // Temp dirs are gone.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
