//! Getting the snapshot to restore onto local disk, checked: a raw `.db` file (used in place),
//! a `.db.zst` file or a stored backup (decompressed, streaming, into a temp file beside the
//! target). Integrity: etcd's sha256 trailer (`etcdutl/snapshot/v3_snapshot.go`
//! `copyAndVerifyDB`: present when `size % 512 == 32`, checked unless `--skip-hash-check`,
//! always cut off), and for stored backups the manifest's `stored_sha256`, `stored_bytes` and
//! `raw_sha256`.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::snapshot::{TrailerCheck, TrailerHasher};

/// Read buffer size for hashing and decompression (bytes).
const CHUNK: usize = 1 << 20;

/// Errors getting or checking the snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Reading or writing a file failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The sha256 trailer does not match the content.
    #[error("snapshot {path}: sha256 trailer does not match its content (expected {expected}, got {actual}): the file is corrupted or truncated; use another backup")]
    TrailerMismatch {
        /// The snapshot.
        path: PathBuf,
        /// Trailer value (hex).
        expected: String,
        /// Computed (hex).
        actual: String,
    },
    /// No trailer and `--skip-hash-check` not given (etcdutl's rule).
    #[error("snapshot {path} has no sha256 trailer (size {size} bytes is not 512*n+32): it is truncated, or a db copied from a data dir; for the latter pass --skip-hash-check")]
    MissingTrailer {
        /// The snapshot.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// zstd decompression failed.
    #[error("decompressing {what}: {source}: the compressed file is corrupted or truncated")]
    Zstd {
        /// The compressed source.
        what: String,
        /// The cause.
        source: std::io::Error,
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
}

/// What a stored backup's manifest says the db's status is (checked after verification).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Expected {
    /// Backup id.
    pub id: String,
    /// `hash` (crc32c KV hash).
    pub hash: u32,
    /// `revision`.
    pub revision: i64,
    /// `total_key`.
    pub total_key: u64,
}

impl Expected {
    /// Compares with the verified status. Errors: [`SourceError::ManifestMismatch`].
    pub fn check(&self, hash: u32, revision: i64, total_key: u64) -> Result<(), SourceError> {
        let mismatch =
            |field: &'static str, expected: String, actual: String| SourceError::ManifestMismatch {
                id: self.id.clone(),
                field,
                expected,
                actual,
            };
        if hash != self.hash {
            return Err(mismatch(
                "hash",
                format!("{:08x}", self.hash),
                format!("{hash:08x}"),
            ));
        }
        if revision != self.revision {
            return Err(mismatch(
                "revision",
                self.revision.to_string(),
                revision.to_string(),
            ));
        }
        if total_key != self.total_key {
            return Err(mismatch(
                "total_key",
                self.total_key.to_string(),
                total_key.to_string(),
            ));
        }
        Ok(())
    }
}

/// A snapshot ready to be restored: a local file whose first `db_len` bytes are the db.
#[derive(Debug)]
pub struct LocalSnapshot {
    /// The file (the user's file, or a temp file that `_temp` removes on drop).
    pub path: PathBuf,
    /// Bytes of db (without the trailer).
    pub db_len: u64,
    /// The trailer check's result (None when there was no trailer).
    pub trailer: Option<bool>,
    /// sha256 of the db bytes (hex).
    pub raw_sha256: String,
    /// Holds a decompressed temp file.
    pub _temp: Option<tempfile::TempPath>,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SourceError + 'a {
    move |source| SourceError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Whether a path names a zstd-compressed snapshot (by its magic bytes, else by extension).
pub fn is_zstd(path: &Path) -> std::io::Result<bool> {
    let mut magic = [0u8; 4];
    let mut f = File::open(path)?;
    let n = f.read(&mut magic)?;
    Ok(n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd])
}

/// Applies etcdutl's trailer rule to a finished hash.
fn check_trailer(path: &Path, size: u64, tc: &TrailerCheck, skip: bool) -> Result<(), SourceError> {
    match tc.trailer {
        Some(true) => Ok(()),
        Some(false) if skip => Ok(()),
        Some(false) => {
            let mut f = File::open(path).map_err(io("reading", path))?;
            let mut all = Vec::new();
            // Only the last 32 bytes are needed for the message.
            let _ = std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(tc.db_len));
            let _ = f.read_to_end(&mut all);
            Err(SourceError::TrailerMismatch {
                path: path.to_path_buf(),
                expected: hex::encode(&all),
                actual: hex::encode(tc.raw_sha256),
            })
        }
        None if skip => Ok(()),
        None => Err(SourceError::MissingTrailer {
            path: path.to_path_buf(),
            size,
        }),
    }
}

/// Hashes a raw snapshot file (one sequential read) and applies the trailer rule.
pub fn hash_raw_file(path: &Path, skip_hash_check: bool) -> Result<LocalSnapshot, SourceError> {
    let mut f = File::open(path).map_err(io("opening", path))?;
    let size = f.metadata().map_err(io("reading", path))?.len();
    let mut h = TrailerHasher::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = f.read(&mut buf).map_err(io("reading", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let tc = h.finish();
    check_trailer(path, size, &tc, skip_hash_check)?;
    Ok(LocalSnapshot {
        path: path.to_path_buf(),
        db_len: tc.db_len,
        trailer: tc.trailer,
        raw_sha256: hex::encode(tc.raw_sha256),
        _temp: None,
    })
}

/// A reader that sha256-hashes and counts what passes through it.
pub struct HashingReader<R> {
    inner: R,
    sha: Sha256,
    n: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            sha: Sha256::new(),
            n: 0,
        }
    }
    /// Bytes read and their sha256 (hex).
    pub fn finish(self) -> (u64, String) {
        (self.n, hex::encode(self.sha.finalize()))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
}

/// Decompresses a zstd stream into a new temp file in `temp_dir`, hashing the output with the
/// trailer rule. Returns the local snapshot and (compressed bytes, compressed sha256 hex).
/// Memory: one zstd window plus two 1 MiB buffers.
pub fn decompress_to_temp<R: Read>(
    input: R,
    what: &str,
    temp_dir: &Path,
    skip_hash_check: bool,
    require_trailer: bool,
) -> Result<(LocalSnapshot, (u64, String)), SourceError> {
    let mut hr = HashingReader::new(input);
    let tmp = tempfile::Builder::new()
        .prefix(".etcd-lifeboat-snapshot-")
        .suffix(".db")
        .tempfile_in(temp_dir)
        .map_err(io("creating a temp file in", temp_dir))?;
    let (file, tpath) = tmp.into_parts();
    let mut out = BufWriter::with_capacity(CHUNK, file);
    let mut h = TrailerHasher::new();
    {
        let mut dec = zstd::stream::read::Decoder::new(&mut hr).map_err(|e| SourceError::Zstd {
            what: what.to_string(),
            source: e,
        })?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = dec.read(&mut buf).map_err(|e| SourceError::Zstd {
                what: what.to_string(),
                source: e,
            })?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io("writing", &tpath))?;
        }
    }
    // Drain anything after the frame so that the compressed hash covers the whole object.
    std::io::copy(&mut hr, &mut std::io::sink()).map_err(|e| SourceError::Zstd {
        what: what.to_string(),
        source: e,
    })?;
    out.flush().map_err(io("writing", &tpath))?;
    drop(out);
    let tc = h.finish();
    let size = tc.db_len + if tc.trailer.is_some() { 32 } else { 0 };
    let p: PathBuf = tpath.to_path_buf();
    if require_trailer || tc.trailer.is_some() {
        check_trailer(&p, size, &tc, skip_hash_check).map_err(|e| match e {
            SourceError::MissingTrailer { size, .. } => SourceError::MissingTrailer {
                path: PathBuf::from(what),
                size,
            },
            SourceError::TrailerMismatch {
                expected, actual, ..
            } => SourceError::TrailerMismatch {
                path: PathBuf::from(what),
                expected,
                actual,
            },
            e => e,
        })?;
    }
    Ok((
        LocalSnapshot {
            path: p,
            db_len: tc.db_len,
            trailer: tc.trailer,
            raw_sha256: hex::encode(tc.raw_sha256),
            _temp: Some(tpath),
        },
        hr.finish(),
    ))
}

/// A blocking [`Read`] over chunks sent from an async task (bridges a store's `AsyncRead`
/// into the zstd decoder running on a blocking thread). An `Err` chunk ends the stream with
/// that error; a closed channel is the end of the stream.
pub struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
}

impl ChannelReader {
    /// Reads from `rx` (on a blocking thread: uses `blocking_recv`).
    pub fn new(rx: tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>) -> Self {
        ChannelReader {
            rx,
            cur: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos >= self.cur.len() {
            match self.rx.blocking_recv() {
                Some(Ok(c)) => {
                    self.cur = c;
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zstd_roundtrip_with_trailer() {
        let d = tempfile::tempdir().unwrap();
        let mut db = vec![7u8; 4096];
        let sum = Sha256::digest(&db);
        db.extend_from_slice(&sum);
        let z = zstd::encode_all(&db[..], 3).unwrap();
        let (ls, (n, _)) = decompress_to_temp(&z[..], "x.db.zst", d.path(), false, true).unwrap();
        assert_eq!(n, z.len() as u64);
        assert_eq!(ls.db_len, 4096);
        assert_eq!(ls.trailer, Some(true));
        drop(ls);
        // A flipped byte in the db part is caught.
        let mut bad = db.clone();
        bad[10] ^= 1;
        let z = zstd::encode_all(&bad[..], 3).unwrap();
        let e = decompress_to_temp(&z[..], "x.db.zst", d.path(), false, true).unwrap_err();
        assert!(matches!(e, SourceError::TrailerMismatch { .. }), "{e}");
        // A truncated compressed stream is caught.
        let z = zstd::encode_all(&db[..], 3).unwrap();
        let e =
            decompress_to_temp(&z[..z.len() - 5], "x.db.zst", d.path(), false, true).unwrap_err();
        assert!(matches!(e, SourceError::Zstd { .. }), "{e}");
        // Temp files are gone.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
