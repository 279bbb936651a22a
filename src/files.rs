//! Control-plane files stored beside a snapshot (`backup.files`): the cluster CA and keys
//! (`/etc/kubernetes/pki`), the static pod manifests, the API server's EncryptionConfiguration.
//! A restored etcd is of little use without them: Secrets encrypted at rest cannot be read
//! without the EncryptionConfiguration's keys.
//!
//! Format: a POSIX tar stream (`tar` crate, ustar/GNU headers) of regular files and
//! directories, paths relative to `/` (`etc/kubernetes/pki/ca.key`), in sorted order. The
//! caller compresses it (zstd) and, when recipients are configured, encrypts it (age), so the
//! stored object `<id>.files.tar.zst[.age]` unpacks by hand with `age -d | zstd -d | tar -x`.
//! The manifest lists every entry ([`FileEntry`]: path, mode, size, sha256), and reading an
//! archive checks it against that list: an entry not listed, a listed one missing, a size or
//! sha256 that differs, a path with `..` or a link: all refused.
//!
//! The store is untrusted: reading follows the tar structure before the tar crate does
//! (`TarGuard`), so a huge GNU long name, a PAX header or a stream longer than the manifest's
//! entries need is refused before it is held in memory; archive paths are cut short in
//! messages.
//!
//! Extraction ([`extract`]) never overwrites: it refuses when any target file exists or when
//! a symbolic link or a non-directory inside the destination lies on the way to an entry,
//! unpacks into a hidden private staging dir inside the destination, checks everything, then
//! moves the files into place with their recorded modes less setuid, setgid, sticky and
//! group/other write ([`restored_mode`]).

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Most entries one archive may list (a kubeadm node has about 40 files).
pub const MAX_ENTRIES: usize = 100_000;

/// Largest GNU long name or long link entry (`L`, `K`, holding a path longer than the 100
/// bytes of a header's name field) an archive may hold, in bytes. The tar crate reads such
/// an entry whole into memory before it returns the entry it names; Linux's PATH_MAX is 4096.
pub const MAX_LONG_NAME: u64 = 64 * 1024;

/// Longest path a manifest entry may have, in bytes (Linux's PATH_MAX).
pub const MAX_PATH: usize = 4096;

/// Longest untrusted string (a path from an archive or a manifest, an error of the tar crate
/// that may quote one) put into a message, in bytes.
const MAX_SHOWN: usize = 300;

/// `s`, cut to [`MAX_SHOWN`] bytes (with its full length said) when longer.
fn shown(s: &str) -> String {
    if s.len() <= MAX_SHOWN {
        return s.to_string();
    }
    let mut end = MAX_SHOWN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}

/// What an entry is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
}

/// One file or directory of the archive, as the manifest lists it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// Absolute path on the host it was read from (`/etc/kubernetes/pki/ca.key`).
    pub path: String,
    /// File or directory.
    pub kind: EntryKind,
    /// Permission bits (`0o600`), without the file type.
    pub mode: u32,
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// SHA-256 (hex) of the content; empty for directories.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
}

/// Errors of reading, writing or checking a files archive. Each names the path and the fix.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// A file system operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A configured path does not exist.
    #[error("backup.files: {path} does not exist; remove it from backup.files or create it")]
    Missing {
        /// The configured path.
        path: PathBuf,
    },
    /// A path that cannot be stored (not absolute, a socket, a device).
    #[error("backup.files: {path}: {reason}")]
    Unsupported {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// The archive is malformed or does not match the manifest's list.
    #[error("files archive of backup {id}: {reason}; the stored object is corrupted or was altered: use another backup")]
    Mismatch {
        /// Backup id.
        id: String,
        /// What differs.
        reason: String,
    },
    /// The backup lists no files (`backup.files` was not configured when it was taken).
    #[error("backup {id} holds no control-plane files (backup.files was not configured when it was taken)")]
    NoFiles {
        /// Backup id.
        id: String,
    },
    /// An encrypted files object and no identity, or none of the identities opens it.
    #[error("files object of backup {id}: {reason}")]
    Decrypt {
        /// Backup id.
        id: String,
        /// Why (no identity given, no matching key, damaged header).
        reason: String,
    },
    /// A target file exists; nothing was written.
    #[error("{path} exists; restore --files-to never overwrites: choose an empty directory or move the file away (nothing was written)")]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// A symbolic link inside the destination lies on the way to an entry (or is where a
    /// directory entry goes); nothing was written through it.
    #[error("refusing to write through the symbolic link {path} inside --files-to {dest}; use an empty directory (nothing was written)")]
    Symlink {
        /// The symbolic link.
        path: PathBuf,
        /// The destination directory (`--files-to`).
        dest: PathBuf,
    },
    /// Something that is not a directory lies where the archive needs a directory.
    #[error("{path} inside --files-to {dest} is not a directory, and the backup needs a directory there; use an empty directory (nothing was written)")]
    NotADirectory {
        /// The file (or other non-directory).
        path: PathBuf,
        /// The destination directory (`--files-to`).
        dest: PathBuf,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FilesError + 'a {
    move |source| FilesError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Expands `paths` (files, and directories recursively) into the entries to store, sorted by
/// path, parents before children. Symbolic links are followed only when named directly in
/// `paths`; inside a directory they are skipped with a warning (kubeadm's trees have none).
///
/// Errors: [`FilesError::Missing`] for a configured path that does not exist,
/// [`FilesError::Unsupported`] for a relative path or a special file, I/O errors.
pub fn collect(paths: &[PathBuf]) -> Result<Vec<(PathBuf, fs::Metadata)>, FilesError> {
    let mut out: BTreeMap<PathBuf, fs::Metadata> = BTreeMap::new();
    for p in paths {
        if !p.is_absolute() {
            return Err(FilesError::Unsupported {
                path: p.clone(),
                reason: "not an absolute path; write it as /etc/kubernetes/pki",
            });
        }
        let meta = match fs::metadata(p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(FilesError::Missing { path: p.clone() })
            }
            Err(e) => return Err(io("cannot read", p)(e)),
        };
        // Parents of a configured path are recorded too, so extraction recreates their modes.
        walk(p, meta, &mut out)?;
    }
    Ok(out.into_iter().collect())
}

fn walk(
    p: &Path,
    meta: fs::Metadata,
    out: &mut BTreeMap<PathBuf, fs::Metadata>,
) -> Result<(), FilesError> {
    if meta.is_dir() {
        let mut children: Vec<PathBuf> = fs::read_dir(p)
            .map_err(io("cannot list", p))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(io("cannot list", p))?;
        children.sort();
        out.insert(p.to_path_buf(), meta);
        for c in children {
            let m = fs::symlink_metadata(&c).map_err(io("cannot read", &c))?;
            if m.file_type().is_symlink() {
                tracing::warn!(path = %c.display(), "backup.files: skipping a symbolic link");
                continue;
            }
            walk(&c, m, out)?;
        }
        Ok(())
    } else if meta.is_file() {
        out.insert(p.to_path_buf(), meta);
        Ok(())
    } else {
        Err(FilesError::Unsupported {
            path: p.to_path_buf(),
            reason: "not a regular file or directory",
        })
    }
}

/// Writes the tar stream of `paths` (see [`collect`]) to `sink` and returns the entries for
/// the manifest and the sink. File contents are streamed (64 KiB at a time), never held whole.
///
/// Errors: as [`collect`]; a file that changed size while being read; write errors.
pub fn write_archive<W: Write>(
    paths: &[PathBuf],
    sink: W,
) -> Result<(Vec<FileEntry>, W), FilesError> {
    let items = collect(paths)?;
    let mut tar = tar::Builder::new(sink);
    tar.mode(tar::HeaderMode::Complete);
    let mut entries = Vec::with_capacity(items.len());
    for (path, meta) in items {
        let rel = path
            .strip_prefix("/")
            .expect("collect keeps absolute paths");
        let mode = meta.permissions().mode() & 0o7777;
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        header.set_mode(mode);
        if meta.is_dir() {
            header.set_size(0);
            tar.append_data(&mut header, rel, std::io::empty())
                .map_err(io("cannot write archive entry for", &path))?;
            entries.push(FileEntry {
                path: path.display().to_string(),
                kind: EntryKind::Dir,
                mode,
                size: 0,
                sha256: String::new(),
            });
            continue;
        }
        let size = meta.len();
        let file = fs::File::open(&path).map_err(io("cannot open", &path))?;
        let mut reader = Hashing::new(file.take(size), u64::MAX);
        header.set_size(size);
        tar.append_data(&mut header, rel, &mut reader)
            .map_err(io("cannot archive", &path))?;
        if reader.bytes != size {
            return Err(FilesError::Io {
                what: "file changed size while being archived",
                path,
                source: std::io::Error::other(format!(
                    "{} bytes read, {size} expected",
                    reader.bytes
                )),
            });
        }
        entries.push(FileEntry {
            path: path.display().to_string(),
            kind: EntryKind::File,
            mode,
            size,
            sha256: hex::encode(reader.sha.finalize()),
        });
    }
    let sink = tar
        .into_inner()
        .map_err(io("cannot finish archive", Path::new("(archive)")))?;
    Ok((entries, sink))
}

/// The relative path an entry has in the archive: its absolute path without the leading `/`.
/// `None` when the path is not absolute, has `..`/`.` components or is longer than
/// [`MAX_PATH`] (hostile manifest).
fn archive_path(entry_path: &str) -> Option<PathBuf> {
    let p = Path::new(entry_path);
    if !p.is_absolute() || entry_path.len() > MAX_PATH {
        return None;
    }
    let mut rel = PathBuf::new();
    for c in p.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(s) => rel.push(s),
            _ => return None,
        }
    }
    (!rel.as_os_str().is_empty()).then_some(rel)
}

/// Reads the tar stream `src` and checks it against `expected` (the manifest's list): same
/// entries in any order, each file's size and sha256, each entry's mode; no links, no other
/// entry types, no path outside the list. With `unpack_to`, file contents are written below
/// that directory (`<dir>/etc/kubernetes/pki/ca.key`, created 0600, directories 0700); the
/// caller applies modes after the whole archive checked ([`extract`] does all of that).
///
/// The stream is read through a guard that follows the tar structure before the tar crate
/// sees it: GNU long names over [`MAX_LONG_NAME`], PAX headers and sparse entries are
/// refused, and reading stops past the bytes the manifest's entries can take (per entry a
/// header, a long-name entry for its path and its data padded to 512 bytes, plus 1024), so a
/// forged archive cannot make this hold a huge name in memory or decompress without end.
///
/// Errors: [`FilesError::Mismatch`] naming the first difference, I/O errors.
pub fn check_archive<R: Read>(
    id: &str,
    src: R,
    expected: &[FileEntry],
    unpack_to: Option<&Path>,
) -> Result<(), FilesError> {
    let mismatch = |reason: String| FilesError::Mismatch {
        id: id.to_string(),
        reason,
    };
    if expected.len() > MAX_ENTRIES {
        return Err(mismatch(format!(
            "the manifest lists {} entries (at most {MAX_ENTRIES})",
            expected.len()
        )));
    }
    let mut want: BTreeMap<PathBuf, &FileEntry> = BTreeMap::new();
    for e in expected {
        let rel = archive_path(&e.path).ok_or_else(|| {
            mismatch(format!(
                "the manifest lists an unsafe path {:?}",
                shown(&e.path)
            ))
        })?;
        want.insert(rel, e);
    }
    let limit = archive_allowance(expected)
        .ok_or_else(|| mismatch("the manifest's entry sizes add up past 2^64 bytes".to_string()))?;
    let mut seen = 0usize;
    let mut archive = tar::Archive::new(TarGuard::new(src, limit));
    for entry in archive
        .entries()
        .map_err(|e| mismatch(format!("not a tar stream: {}", shown(&e.to_string()))))?
    {
        let mut entry =
            entry.map_err(|e| mismatch(format!("unreadable entry: {}", shown(&e.to_string()))))?;
        let rel = entry
            .path()
            .map_err(|e| mismatch(format!("entry with a bad path: {}", shown(&e.to_string()))))?
            .into_owned();
        let shown_rel = shown(&rel.display().to_string());
        let rel_clean = archive_path(&format!("/{}", rel.display()))
            .ok_or_else(|| mismatch(format!("entry with an unsafe path {shown_rel}")))?;
        let want_entry = want
            .remove(&rel_clean)
            .ok_or_else(|| mismatch(format!("entry {shown_rel} is not in the manifest")))?;
        seen += 1;
        let header = entry.header();
        let mode = header
            .mode()
            .map_err(|e| mismatch(format!("{shown_rel}: bad mode: {e}")))?
            & 0o7777;
        if mode != want_entry.mode {
            return Err(mismatch(format!(
                "{shown_rel}: mode {mode:o}, the manifest says {:o}",
                want_entry.mode
            )));
        }
        match (header.entry_type(), want_entry.kind) {
            (tar::EntryType::Directory, EntryKind::Dir) => {
                if let Some(dir) = unpack_to {
                    make_private_dirs(&dir.join(&rel_clean))?;
                }
            }
            (tar::EntryType::Regular, EntryKind::File) => {
                let size = header
                    .size()
                    .map_err(|e| mismatch(format!("{shown_rel}: bad size: {e}")))?;
                if size != want_entry.size {
                    return Err(mismatch(format!(
                        "{shown_rel}: {size} bytes, the manifest says {}",
                        want_entry.size
                    )));
                }
                let mut out: Box<dyn Write> = match unpack_to {
                    Some(dir) => {
                        let target = dir.join(&rel_clean);
                        if let Some(parent) = target.parent() {
                            make_private_dirs(parent)?;
                        }
                        Box::new(
                            fs::OpenOptions::new()
                                .write(true)
                                .create_new(true)
                                .mode(0o600)
                                .open(&target)
                                .map_err(io("cannot create", &target))?,
                        )
                    }
                    None => Box::new(std::io::sink()),
                };
                let mut reader = Hashing::new((&mut entry).take(size), u64::MAX);
                std::io::copy(&mut reader, &mut out)
                    .map_err(|e| mismatch(format!("{shown_rel}: {}", shown(&e.to_string()))))?;
                let sha = hex::encode(reader.sha.finalize());
                if reader.bytes != size || !sha.eq_ignore_ascii_case(&want_entry.sha256) {
                    return Err(mismatch(format!(
                        "{shown_rel}: sha256 {sha}, the manifest says {}",
                        shown(&want_entry.sha256)
                    )));
                }
            }
            (t, k) => {
                return Err(mismatch(format!(
                    "{shown_rel}: entry type {t:?}, the manifest says {k:?}"
                )))
            }
        }
    }
    if let Some((_, missing)) = want.into_iter().next() {
        return Err(mismatch(format!(
            "{} is in the manifest but not in the archive ({seen} entries read)",
            shown(&missing.path)
        )));
    }
    Ok(())
}

/// Tar block size in bytes: headers are one block, data is padded to a whole block.
const BLOCK: u64 = 512;

fn round_up_block(n: u64) -> Option<u64> {
    Some(n.checked_add(BLOCK - 1)? & !(BLOCK - 1))
}

/// Most bytes the tar stream of `entries` can take as [`write_archive`] writes it: per entry
/// a header, a GNU long-name entry (header and the path with its NUL, padded) and the data
/// padded to 512 bytes; then the two zero blocks that end the archive. `None` on overflow.
fn archive_allowance(entries: &[FileEntry]) -> Option<u64> {
    entries.iter().try_fold(2 * BLOCK, |total, e| {
        let name = round_up_block(u64::try_from(e.path.len()).ok()?.checked_add(2)?)?;
        total
            .checked_add(2 * BLOCK)?
            .checked_add(name)?
            .checked_add(round_up_block(e.size)?)
    })
}

/// A reader that follows the tar structure of the stream it passes on unchanged (512-byte
/// headers, each followed by its data padded to 512 bytes; an all-zero block has none), so
/// that it sees every header before the tar crate does, and fails (`InvalidData`):
/// - on a GNU long name or long link entry (`L`, `K`) larger than [`MAX_LONG_NAME`], which
///   the tar crate would read whole into memory;
/// - on a PAX extended header (`x`, `g`), which the tar crate reads whole and whose `size`
///   record changes where the next header starts, and on a GNU sparse entry (`S`), whose
///   extension blocks are not counted in its size: [`write_archive`] writes neither;
/// - on a size field it cannot read, or one the tar crate would read differently;
/// - past `limit` bytes in all.
///
/// The size field (bytes 124..136) is octal ASCII (up to the first NUL, blanks trimmed), or
/// base-256 when the high bit of its first byte is set (the tar crate reads its last 8
/// bytes; the others must be zero). Source: POSIX ustar, GNU tar's `tar.h`; the tar crate's
/// `Archive::next_entry`.
struct TarGuard<R> {
    inner: R,
    header: [u8; BLOCK as usize],
    /// Bytes of the current header read so far.
    filled: usize,
    /// Bytes of data (padding included) before the next header.
    data_left: u64,
    total: u64,
    limit: u64,
}

impl<R> TarGuard<R> {
    fn new(inner: R, limit: u64) -> Self {
        TarGuard {
            inner,
            header: [0; BLOCK as usize],
            filled: 0,
            data_left: 0,
            total: 0,
            limit,
        }
    }
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = if self.data_left > 0 {
            usize::try_from(self.data_left).map_or(buf.len(), |d| d.min(buf.len()))
        } else {
            (BLOCK as usize - self.filled).min(buf.len())
        };
        let n = self.inner.read(&mut buf[..want])?;
        self.total = self.total.saturating_add(n as u64);
        if self.total > self.limit {
            return Err(invalid(format!(
                "the archive is longer than the {} bytes the manifest's entries can take",
                self.limit
            )));
        }
        if self.data_left > 0 {
            self.data_left -= n as u64;
            return Ok(n);
        }
        self.header[self.filled..self.filled + n].copy_from_slice(&buf[..n]);
        self.filled += n;
        if self.filled == BLOCK as usize {
            self.filled = 0;
            self.data_left = guard_header(&self.header)?;
        }
        Ok(n)
    }
}

/// Checks one tar header block for [`TarGuard`]; returns the bytes that follow it before the
/// next header (its size rounded up to 512).
fn guard_header(h: &[u8; BLOCK as usize]) -> std::io::Result<u64> {
    if h.iter().all(|b| *b == 0) {
        return Ok(0);
    }
    let kind = h[156];
    let size = tar_size(&h[124..136])
        .ok_or_else(|| invalid("a tar header with an unreadable size field".to_string()))?;
    match kind {
        b'L' | b'K' if size > MAX_LONG_NAME => Err(invalid(format!(
            "a GNU long {} entry of {size} bytes (at most {MAX_LONG_NAME})",
            if kind == b'L' { "name" } else { "link" }
        ))),
        b'x' | b'g' => Err(invalid(
            "a PAX extended header entry (never written by etcd-lifeboat)".to_string(),
        )),
        b'S' => Err(invalid(
            "a GNU sparse entry (never written by etcd-lifeboat)".to_string(),
        )),
        _ => round_up_block(size).ok_or_else(|| invalid(format!("an entry of {size} bytes"))),
    }
}

/// The size field of a tar header as the tar crate reads it, or `None` when unreadable or
/// when the tar crate would read a different number (base-256 with bytes it ignores set).
fn tar_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        let (ignored, value) = field.split_at(field.len() - 8);
        if ignored[0] & 0x7f != 0 || ignored[1..].iter().any(|b| *b != 0) {
            return None;
        }
        Some(u64::from_be_bytes(value.try_into().ok()?))
    } else {
        let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
        let text = std::str::from_utf8(&field[..end]).ok()?;
        u64::from_str_radix(text.trim(), 8).ok()
    }
}

fn make_private_dirs(p: &Path) -> Result<(), FilesError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .map_err(io("cannot create directory", p))
}

/// Unpacks the archive `src` below `dest` (`dest/etc/kubernetes/pki/...`) after checking it
/// against `expected`. Before writing anything it refuses a target file that exists
/// ([`FilesError::Exists`]), and a symbolic link ([`FilesError::Symlink`]) or a
/// non-directory ([`FilesError::NotADirectory`]) on the way from `dest` to any entry: nothing
/// is created or written outside `dest` (`dest` itself may be a symbolic link). It unpacks
/// into a private staging dir inside `dest`, moves files into place (no overwrite, each
/// directory on the way checked again) with their recorded modes, then sets the recorded
/// modes of the directories it created. Recorded modes are applied without setuid, setgid,
/// sticky and group/other write bits (`mode & 0o755`, [`restored_mode`]): never more than the
/// manifest says. On any error the staging dir is removed and no file or directory it
/// created is left in `dest`.
///
/// Errors: [`FilesError::Exists`], [`FilesError::Symlink`], [`FilesError::NotADirectory`],
/// [`FilesError::Mismatch`], I/O errors.
pub fn extract<R: Read>(
    id: &str,
    src: R,
    expected: &[FileEntry],
    dest: &Path,
) -> Result<Vec<PathBuf>, FilesError> {
    make_private_dirs(dest)?;
    let mut targets = Vec::new();
    for e in expected {
        let rel = archive_path(&e.path).ok_or_else(|| FilesError::Mismatch {
            id: id.to_string(),
            reason: format!("the manifest lists an unsafe path {:?}", shown(&e.path)),
        })?;
        check_target(dest, &rel, e.kind)?;
        let target = dest.join(&rel);
        targets.push((rel, target, e));
    }
    let staging = tempfile::Builder::new()
        .prefix(".etcd-lifeboat-files-")
        .tempdir_in(dest)
        .map_err(io("cannot create a staging directory in", dest))?;
    fs::set_permissions(staging.path(), fs::Permissions::from_mode(0o700))
        .map_err(io("cannot set mode of", staging.path()))?;
    check_archive(id, src, expected, Some(staging.path()))?;
    let mut placed = Placed::default();
    match place(dest, staging.path(), &targets, &mut placed) {
        Ok(()) => Ok(placed.files),
        Err(e) => {
            for f in placed.files.iter().rev() {
                let _ = fs::remove_file(f);
            }
            for d in placed.dirs.iter().rev() {
                let _ = fs::remove_dir(d);
            }
            Err(e)
        }
    }
}

/// The mode [`extract`] gives an entry the manifest lists with `mode`: without setuid,
/// setgid, sticky and group/other write (`mode & 0o755`).
pub fn restored_mode(mode: u32) -> u32 {
    mode & 0o755
}

/// What [`place`] wrote in the destination, undone on error.
#[derive(Default)]
struct Placed {
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
}

/// Moves the checked files from `staging` into `dest` (directories first, parents before
/// children), then applies the directories' modes.
fn place(
    dest: &Path,
    staging: &Path,
    targets: &[(PathBuf, PathBuf, &FileEntry)],
    placed: &mut Placed,
) -> Result<(), FilesError> {
    let mut dirs: Vec<_> = targets
        .iter()
        .filter(|(_, _, e)| e.kind == EntryKind::Dir)
        .collect();
    dirs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut modes = Vec::new();
    for (rel, target, e) in dirs {
        if dirs_below(dest, rel, &mut placed.dirs)? {
            modes.push((target, e));
        }
    }
    for (rel, target, e) in targets {
        if e.kind != EntryKind::File {
            continue;
        }
        let staged = staging.join(rel);
        if let Some(parent) = rel.parent() {
            dirs_below(dest, parent, &mut placed.dirs)?;
        }
        fs::set_permissions(&staged, fs::Permissions::from_mode(mode_for(e, target)))
            .map_err(io("cannot set mode of", &staged))?;
        // hard_link fails when the target exists (never overwrites, even in a race); a
        // symbolic link as the last component is not followed.
        fs::hard_link(&staged, target).map_err(|err| {
            if err.kind() == std::io::ErrorKind::AlreadyExists {
                FilesError::Exists {
                    path: target.clone(),
                }
            } else {
                io("cannot write", target)(err)
            }
        })?;
        placed.files.push(target.clone());
    }
    for (dir, e) in modes.iter().rev() {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode_for(e, dir)))
            .map_err(io("cannot set mode of", dir))?;
    }
    Ok(())
}

/// [`restored_mode`] of `e`, with a warning when it drops bits the manifest lists.
fn mode_for(e: &FileEntry, target: &Path) -> u32 {
    let mode = restored_mode(e.mode);
    if mode != e.mode & 0o7777 {
        tracing::warn!(
            path = %target.display(),
            manifest_mode = format!("{:o}", e.mode),
            mode = format!("{mode:o}"),
            "restore --files-to: setuid, setgid, sticky and group/other write bits are not restored"
        );
    }
    mode
}

/// Refuses, before anything is written, what stands in the way of `dest/rel`: a symbolic
/// link or a non-directory among the existing paths between `dest` and it, a directory entry
/// that exists as a symbolic link or non-directory, a file entry that exists at all.
fn check_target(dest: &Path, rel: &Path, kind: EntryKind) -> Result<(), FilesError> {
    let mut p = dest.to_path_buf();
    let n = rel.components().count();
    for (i, c) in rel.components().enumerate() {
        p.push(c);
        let meta = match fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io("cannot read", &p)(e)),
        };
        if i + 1 == n && kind == EntryKind::File {
            return Err(FilesError::Exists { path: p });
        }
        need_dir(dest, &p, &meta)?;
    }
    Ok(())
}

/// [`FilesError::Symlink`] or [`FilesError::NotADirectory`] unless `meta` (of `p`, not
/// followed) is a directory.
fn need_dir(dest: &Path, p: &Path, meta: &fs::Metadata) -> Result<(), FilesError> {
    if meta.file_type().is_symlink() {
        Err(FilesError::Symlink {
            path: p.to_path_buf(),
            dest: dest.to_path_buf(),
        })
    } else if !meta.is_dir() {
        Err(FilesError::NotADirectory {
            path: p.to_path_buf(),
            dest: dest.to_path_buf(),
        })
    } else {
        Ok(())
    }
}

/// Creates `dest/rel` and the directories between, one component at a time (0700), never
/// following a symbolic link below `dest` ([`need_dir`]); records what it created in
/// `created`. Returns whether it created `dest/rel` itself.
fn dirs_below(dest: &Path, rel: &Path, created: &mut Vec<PathBuf>) -> Result<bool, FilesError> {
    let mut p = dest.to_path_buf();
    let mut made = false;
    for c in rel.components() {
        p.push(c);
        made = false;
        match fs::symlink_metadata(&p) {
            Ok(m) => need_dir(dest, &p, &m)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // create (not create_all) fails on anything that appeared meanwhile.
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&p)
                    .map_err(io("cannot create directory", &p))?;
                created.push(p.clone());
                made = true;
            }
            Err(e) => return Err(io("cannot read", &p)(e)),
        }
    }
    Ok(made)
}

/// The EncryptionConfiguration file the kube-apiserver static pod manifest names
/// (`--encryption-provider-config=PATH`), when it names one. Kubernetes' flag:
/// `staging/src/k8s.io/apiserver/pkg/server/options/etcd.go`.
///
/// Errors: none; an unreadable manifest gives `None`.
pub fn encryption_provider_config(apiserver_manifest: &Path) -> Option<PathBuf> {
    let text = fs::read_to_string(apiserver_manifest).ok()?;
    text.lines().find_map(|l| {
        let l = l.trim().trim_start_matches("- ").trim().trim_matches('"');
        l.strip_prefix("--encryption-provider-config=")
            .map(|p| PathBuf::from(p.trim().trim_matches('"')))
    })
}

/// What [`check_stored`] checked of a backup's files object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilesCheck {
    /// Decrypted when needed, decompressed, every entry checked against the manifest (and,
    /// with a destination, extracted): the number of entries.
    Content(usize),
    /// Encrypted and no identity: only the stored object's size and sha256 were checked.
    CiphertextOnly,
}

/// Counts and hashes what is read, failing past `limit` bytes.
struct Hashing<R> {
    inner: R,
    sha: Sha256,
    bytes: u64,
    limit: u64,
}

impl<R> Hashing<R> {
    fn new(inner: R, limit: u64) -> Self {
        Hashing {
            inner,
            sha: Sha256::new(),
            bytes: 0,
            limit,
        }
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes = self.bytes.saturating_add(n as u64);
        if self.bytes > self.limit {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "the stored object is larger than the manifest's stored_bytes ({})",
                    self.limit
                ),
            ));
        }
        self.sha.update(&buf[..n]);
        Ok(n)
    }
}

/// A stored files object as its manifest describes it.
#[derive(Debug, Clone)]
pub struct StoredFiles {
    /// Backup id (for messages).
    pub id: String,
    /// The entries the archive must hold.
    pub entries: Vec<FileEntry>,
    /// Size of the stored object in bytes; reading stops with an error past it.
    pub stored_bytes: u64,
    /// sha256 (hex) of the stored object.
    pub stored_sha256: String,
    /// The object is age-encrypted.
    pub encrypted: bool,
}

/// Checks a stored files object read from `input` (bounded by `obj.stored_bytes`, sha256
/// compared with `obj.stored_sha256`): with `identities` (or for a plaintext object)
/// decrypts, decompresses and runs [`check_archive`], or [`extract`]s it below `dest` when
/// given; without identities an encrypted object gets the size and sha256 check only
/// ([`FilesCheck::CiphertextOnly`]). Blocking; `acquire::fetch_files` streams it from a store.
///
/// Errors: [`FilesError::Decrypt`], [`FilesError::Mismatch`] (size, sha256 or content),
/// [`FilesError::Exists`], I/O.
pub fn check_stored<R: Read>(
    obj: &StoredFiles,
    input: R,
    identities: Option<&crate::crypto::Identities>,
    dest: Option<&Path>,
) -> Result<FilesCheck, FilesError> {
    let id = obj.id.as_str();
    let mut input = Hashing::new(input, obj.stored_bytes);
    let mismatch = |reason: String| FilesError::Mismatch {
        id: id.to_string(),
        reason,
    };
    let checked = match (identities, obj.encrypted) {
        (None, true) => None,
        (Some(ids), true) => {
            let r = ids.decrypt(&mut input).map_err(|e| FilesError::Decrypt {
                id: id.to_string(),
                reason: format!("{e}: the given identities do not open it"),
            })?;
            Some(read_archive(id, r, &obj.entries, dest)?)
        }
        (_, false) => Some(read_archive(id, &mut input, &obj.entries, dest)?),
    };
    std::io::copy(&mut input, &mut std::io::sink())
        .map_err(|e| mismatch(format!("reading the stored object: {e}")))?;
    if input.bytes != obj.stored_bytes {
        return Err(mismatch(format!(
            "the stored object is {} bytes, the manifest says {}",
            input.bytes, obj.stored_bytes
        )));
    }
    let sha = hex::encode(input.sha.finalize());
    if !sha.eq_ignore_ascii_case(&obj.stored_sha256) {
        return Err(mismatch(format!(
            "the stored object's sha256 is {sha}, the manifest says {}",
            obj.stored_sha256
        )));
    }
    Ok(match checked {
        Some(n) => FilesCheck::Content(n),
        None => FilesCheck::CiphertextOnly,
    })
}

/// Decompresses and checks (or extracts) one archive; returns the number of entries.
fn read_archive<R: Read>(
    id: &str,
    compressed: R,
    entries: &[FileEntry],
    dest: Option<&Path>,
) -> Result<usize, FilesError> {
    let tar = zstd::stream::read::Decoder::new(compressed).map_err(|e| FilesError::Mismatch {
        id: id.to_string(),
        reason: format!("zstd: {e}"),
    })?;
    match dest {
        Some(d) => extract(id, tar, entries, d).map(|_| entries.len()),
        None => check_archive(id, tar, entries, None).map(|_| entries.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let pki = d.path().join("pki");
        fs::create_dir_all(pki.join("etcd")).unwrap();
        fs::write(pki.join("ca.crt"), b"CERT").unwrap();
        fs::write(pki.join("ca.key"), b"KEY-SECRET").unwrap();
        fs::write(pki.join("etcd/server.key"), vec![7u8; 100_000]).unwrap();
        fs::set_permissions(pki.join("ca.key"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(pki.join("ca.crt"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(pki.join("etcd"), fs::Permissions::from_mode(0o750)).unwrap();
        d
    }

    #[test]
    fn round_trip_keeps_bytes_and_modes() {
        let src = tree();
        let (entries, tar) = write_archive(&[src.path().join("pki")], Vec::new()).unwrap();
        assert_eq!(entries.len(), 5, "{entries:?}");
        let dest = tempfile::tempdir().unwrap();
        let written = extract("b1", &tar[..], &entries, dest.path()).unwrap();
        assert_eq!(written.len(), 3);
        let rel = src.path().strip_prefix("/").unwrap().join("pki");
        for (name, mode) in [
            ("ca.crt", 0o644),
            ("ca.key", 0o600),
            ("etcd/server.key", 0o644),
        ] {
            let got = dest.path().join(&rel).join(name);
            assert_eq!(
                fs::read(&got).unwrap(),
                fs::read(src.path().join("pki").join(name)).unwrap()
            );
            let m = fs::metadata(&got).unwrap().permissions().mode() & 0o777;
            let want = fs::metadata(src.path().join("pki").join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(m, want, "{name}");
            if name == "ca.key" {
                assert_eq!(m, mode);
            }
        }
        let etcd_dir = dest.path().join(&rel).join("etcd");
        assert_eq!(
            fs::metadata(etcd_dir).unwrap().permissions().mode() & 0o777,
            0o750
        );
        // Nothing of the staging dir is left.
        let leftovers: Vec<_> = fs::read_dir(dest.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty());
        // A second extraction refuses and writes nothing.
        let err = extract("b1", &tar[..], &entries, dest.path()).unwrap_err();
        assert!(matches!(err, FilesError::Exists { .. }), "{err}");
    }

    #[test]
    fn altered_archive_or_manifest_is_refused_and_nothing_is_written() {
        let src = tree();
        let (entries, tar) = write_archive(&[src.path().join("pki")], Vec::new()).unwrap();
        // A flipped content byte (the key's content is in the stream as-is).
        let pos = tar.windows(10).position(|w| w == b"KEY-SECRET").unwrap();
        let mut bad = tar.clone();
        bad[pos] ^= 1;
        let dest = tempfile::tempdir().unwrap();
        let err = extract("b1", &bad[..], &entries, dest.path()).unwrap_err();
        assert!(err.to_string().contains("sha256"), "{err}");
        assert_eq!(fs::read_dir(dest.path()).unwrap().count(), 0);
        // A manifest that lists a path escaping the destination.
        let mut hostile = entries.clone();
        hostile[1].path = "/../../etc/passwd".into();
        let err = extract("b1", &tar[..], &hostile, dest.path()).unwrap_err();
        assert!(err.to_string().contains("unsafe path"), "{err}");
        // A manifest missing an entry the archive has.
        let short = entries[..entries.len() - 1].to_vec();
        let err = check_archive("b1", &tar[..], &short, None).unwrap_err();
        assert!(err.to_string().contains("not in the manifest"), "{err}");
        // A manifest with a different mode.
        let mut moded = entries.clone();
        let k = moded
            .iter()
            .position(|e| e.path.ends_with("ca.key"))
            .unwrap();
        moded[k].mode = 0o644;
        let err = check_archive("b1", &tar[..], &moded, None).unwrap_err();
        assert!(err.to_string().contains("mode"), "{err}");
        check_archive("b1", &tar[..], &entries, None).unwrap();
    }

    /// A tar stream: a `kind` entry named `././@LongLink` of `size` bytes of `a`, then a
    /// 4-byte file `a` and the end blocks.
    fn long_entry(kind: u8, size: u64) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_path("././@LongLink").unwrap();
        h.set_mode(0o644);
        h.set_size(size);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        let data = size.min(1 << 20) as usize;
        out.extend(std::iter::repeat_n(b'a', data));
        out.resize(out.len().next_multiple_of(512), 0);
        let mut f = tar::Header::new_gnu();
        f.set_entry_type(tar::EntryType::Regular);
        f.set_path("a").unwrap();
        f.set_mode(0o600);
        f.set_size(4);
        f.set_cksum();
        out.extend_from_slice(f.as_bytes());
        out.extend_from_slice(b"DATA");
        out.resize(out.len() + 508 + 1024, 0);
        out
    }

    fn entry_a() -> Vec<FileEntry> {
        vec![FileEntry {
            path: "/a".into(),
            kind: EntryKind::File,
            mode: 0o600,
            size: 4,
            sha256: hex::encode(Sha256::digest(b"DATA")),
        }]
    }

    #[test]
    fn tar_guard_refuses_long_names_pax_and_overlong_streams() {
        // A long name within the bound and the manifest's allowance: the tar crate names
        // the member by it (not listed, so refused for that).
        let err = check_archive("b1", &long_entry(b'L', 200)[..], &entry_a(), None).unwrap_err();
        assert!(err.to_string().contains("not in the manifest"), "{err}");
        // Over the bound: refused at its header, with a short message.
        for (kind, size) in [
            (b'L', MAX_LONG_NAME + 1),
            (b'K', MAX_LONG_NAME + 1),
            (b'L', 1 << 40), // base-256 size field
        ] {
            let err = check_archive("b1", &long_entry(kind, size)[..], &entry_a(), None)
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("entry of {size} bytes")), "{err}");
            assert!(err.len() < 400, "{err}");
        }
        // PAX headers are refused whatever their size.
        for kind in [b'x', b'g'] {
            let err = check_archive("b1", &long_entry(kind, 20)[..], &entry_a(), None).unwrap_err();
            assert!(err.to_string().contains("PAX"), "{err}");
        }
        // Within the bound but past what the manifest's entries can take (a 4-byte file).
        let err = check_archive("b1", &long_entry(b'L', 60_000)[..], &entry_a(), None).unwrap_err();
        assert!(
            err.to_string().contains("manifest's entries can take"),
            "{err}"
        );
    }

    #[test]
    fn tar_size_fields_read_as_the_tar_crate_reads_them() {
        let mut f = [0u8; 12];
        f[..11].copy_from_slice(b"00000001750");
        assert_eq!(tar_size(&f), Some(0o1750));
        assert_eq!(tar_size(b" 17 \0\0\0\0\0\0\0\0"), Some(0o17));
        assert_eq!(tar_size(b"9\0\0\0\0\0\0\0\0\0\0\0"), None);
        let mut h = tar::Header::new_gnu();
        h.set_size(1 << 40);
        assert_eq!(h.as_bytes()[124] & 0x80, 0x80);
        assert_eq!(tar_size(&h.as_bytes()[124..136]), Some(1 << 40));
        // Bytes the tar crate skips are set: it would read another size than this reader.
        let mut b = h.as_bytes()[124..136].to_vec();
        b[2] = 1;
        assert_eq!(tar_size(&b), None);
    }

    #[test]
    fn long_paths_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let deep = d.path().join("x".repeat(120)).join("y".repeat(150));
        fs::create_dir_all(&deep).unwrap();
        fs::write(deep.join("k.key"), b"K").unwrap();
        let (entries, tar) = write_archive(&[d.path().join("x".repeat(120))], Vec::new()).unwrap();
        assert!(tar.windows(13).any(|w| w == b"././@LongLink"));
        check_archive("b1", &tar[..], &entries, None).unwrap();
    }

    #[test]
    fn extract_never_writes_through_a_symlink_and_drops_unsafe_mode_bits() {
        let src = tree();
        let (mut entries, tar) = write_archive(&[src.path().join("pki")], Vec::new()).unwrap();
        let rel = src.path().strip_prefix("/").unwrap().join("pki");
        let dest = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::create_dir_all(dest.path().join(&rel)).unwrap();
        let link = dest.path().join(&rel).join("etcd");
        std::os::unix::fs::symlink(outside.path(), &link).unwrap();
        let err = extract("b1", &tar[..], &entries, dest.path()).unwrap_err();
        assert!(matches!(err, FilesError::Symlink { .. }), "{err}");
        assert!(
            err.to_string().contains(&link.display().to_string()),
            "{err}"
        );
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
        fs::remove_file(&link).unwrap();
        fs::write(&link, b"a file").unwrap();
        let err = extract("b1", &tar[..], &entries, dest.path()).unwrap_err();
        assert!(matches!(err, FilesError::NotADirectory { .. }), "{err}");
        fs::remove_file(&link).unwrap();

        // A manifest (and archive) with setuid and world-writable modes: checked as listed,
        // applied as & 0o755.
        let src = tree();
        let pki = src.path().join("pki");
        fs::set_permissions(pki.join("ca.crt"), fs::Permissions::from_mode(0o4777)).unwrap();
        fs::set_permissions(pki.join("etcd"), fs::Permissions::from_mode(0o1777)).unwrap();
        let tar;
        (entries, tar) = write_archive(std::slice::from_ref(&pki), Vec::new()).unwrap();
        let dest = tempfile::tempdir().unwrap();
        extract("b1", &tar[..], &entries, dest.path()).unwrap();
        let got = dest.path().join(pki.strip_prefix("/").unwrap());
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&got.join("ca.crt")), 0o755);
        assert_eq!(mode(&got.join("etcd")), 0o755);
        assert_eq!(mode(&got.join("ca.key")), 0o600);
    }

    #[test]
    fn missing_and_relative_paths_are_named() {
        let err = collect(&[PathBuf::from("/nonexistent/pki")]).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/pki does not exist"),
            "{err}"
        );
        let err = collect(&[PathBuf::from("etc/kubernetes")]).unwrap_err();
        assert!(err.to_string().contains("absolute"), "{err}");
    }

    #[test]
    fn finds_the_encryption_provider_config_in_a_kubeadm_manifest() {
        let d = tempfile::tempdir().unwrap();
        let m = d.path().join("kube-apiserver.yaml");
        fs::write(
            &m,
            "spec:\n  containers:\n  - command:\n    - kube-apiserver\n    - --advertise-address=10.0.0.1\n    - --encryption-provider-config=/etc/kubernetes/enc/enc.yaml\n",
        )
        .unwrap();
        assert_eq!(
            encryption_provider_config(&m),
            Some(PathBuf::from("/etc/kubernetes/enc/enc.yaml"))
        );
        fs::write(&m, "spec: {}\n").unwrap();
        assert_eq!(encryption_provider_config(&m), None);
    }
}
