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
//! Extraction ([`extract`]) never overwrites: it refuses when any target file exists, unpacks
//! into a hidden private staging dir inside the destination, checks everything, then moves
//! the files into place with their recorded modes.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Most entries one archive may list (a kubeadm node has about 40 files).
pub const MAX_ENTRIES: usize = 100_000;

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
/// `None` when the path is not absolute or has `..`/`.` components (hostile manifest).
fn archive_path(entry_path: &str) -> Option<PathBuf> {
    let p = Path::new(entry_path);
    if !p.is_absolute() {
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
        let rel = archive_path(&e.path)
            .ok_or_else(|| mismatch(format!("the manifest lists an unsafe path {:?}", e.path)))?;
        want.insert(rel, e);
    }
    let mut seen = 0usize;
    let mut archive = tar::Archive::new(src);
    for entry in archive
        .entries()
        .map_err(|e| mismatch(format!("not a tar stream: {e}")))?
    {
        let mut entry = entry.map_err(|e| mismatch(format!("unreadable entry: {e}")))?;
        let rel = entry
            .path()
            .map_err(|e| mismatch(format!("entry with a bad path: {e}")))?
            .into_owned();
        let rel_clean = archive_path(&format!("/{}", rel.display()))
            .ok_or_else(|| mismatch(format!("entry with an unsafe path {}", rel.display())))?;
        let want_entry = want
            .remove(&rel_clean)
            .ok_or_else(|| mismatch(format!("entry {} is not in the manifest", rel.display())))?;
        seen += 1;
        let header = entry.header();
        let mode = header
            .mode()
            .map_err(|e| mismatch(format!("{}: bad mode: {e}", rel.display())))?
            & 0o7777;
        if mode != want_entry.mode {
            return Err(mismatch(format!(
                "{}: mode {mode:o}, the manifest says {:o}",
                want_entry.path, want_entry.mode
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
                    .map_err(|e| mismatch(format!("{}: bad size: {e}", rel.display())))?;
                if size != want_entry.size {
                    return Err(mismatch(format!(
                        "{}: {size} bytes, the manifest says {}",
                        want_entry.path, want_entry.size
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
                    .map_err(|e| mismatch(format!("{}: {e}", want_entry.path)))?;
                let sha = hex::encode(reader.sha.finalize());
                if reader.bytes != size || !sha.eq_ignore_ascii_case(&want_entry.sha256) {
                    return Err(mismatch(format!(
                        "{}: sha256 {sha}, the manifest says {}",
                        want_entry.path, want_entry.sha256
                    )));
                }
            }
            (t, k) => {
                return Err(mismatch(format!(
                    "{}: entry type {t:?}, the manifest says {k:?}",
                    rel.display()
                )))
            }
        }
    }
    if let Some((_, missing)) = want.into_iter().next() {
        return Err(mismatch(format!(
            "{} is in the manifest but not in the archive ({seen} entries read)",
            missing.path
        )));
    }
    Ok(())
}

fn make_private_dirs(p: &Path) -> Result<(), FilesError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .map_err(io("cannot create directory", p))
}

/// Unpacks the archive `src` below `dest` (`dest/etc/kubernetes/pki/...`) after checking it
/// against `expected`: refuses before writing anything when a target file exists; unpacks
/// into a private staging dir inside `dest`; moves files into place (no overwrite) with their
/// recorded modes, then sets the recorded modes of the directories it created. On any error
/// the staging dir is removed and no file is left in `dest`.
///
/// Errors: [`FilesError::Exists`], [`FilesError::Mismatch`], I/O errors.
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
            reason: format!("the manifest lists an unsafe path {:?}", e.path),
        })?;
        let target = dest.join(&rel);
        if e.kind == EntryKind::File && fs::symlink_metadata(&target).is_ok() {
            return Err(FilesError::Exists { path: target });
        }
        targets.push((rel, target, e));
    }
    let staging = tempfile::Builder::new()
        .prefix(".etcd-lifeboat-files-")
        .tempdir_in(dest)
        .map_err(io("cannot create a staging directory in", dest))?;
    fs::set_permissions(staging.path(), fs::Permissions::from_mode(0o700))
        .map_err(io("cannot set mode of", staging.path()))?;
    check_archive(id, src, expected, Some(staging.path()))?;
    // Every file checked: move into place. Directories first (parents before children).
    let mut created_dirs = Vec::new();
    for (_, target, e) in &targets {
        if e.kind == EntryKind::Dir && !target.exists() {
            make_private_dirs(target)?;
            created_dirs.push((target.clone(), e.mode));
        }
    }
    let mut written = Vec::new();
    for (rel, target, e) in &targets {
        if e.kind != EntryKind::File {
            continue;
        }
        let staged = staging.path().join(rel);
        if let Some(parent) = target.parent() {
            make_private_dirs(parent)?;
        }
        fs::set_permissions(&staged, fs::Permissions::from_mode(e.mode))
            .map_err(io("cannot set mode of", &staged))?;
        // hard_link fails when the target exists (never overwrites, even in a race).
        if let Err(err) = fs::hard_link(&staged, target) {
            for w in &written {
                let _ = fs::remove_file(w);
            }
            return Err(if err.kind() == std::io::ErrorKind::AlreadyExists {
                FilesError::Exists {
                    path: target.clone(),
                }
            } else {
                io("cannot write", target)(err)
            });
        }
        written.push(target.clone());
    }
    for (dir, mode) in created_dirs.iter().rev() {
        fs::set_permissions(dir, fs::Permissions::from_mode(*mode))
            .map_err(io("cannot set mode of", dir))?;
    }
    Ok(written)
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
