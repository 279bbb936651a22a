//! Appending writes that bypass the page cache (`O_DIRECT`), for the local store's objects.
//!
//! Why: a backup object is written once and not read back by the backup, so caching it only
//! evicts what the node needs (etcd's own db on a control-plane node) and, on the bench VM,
//! costs 1.8-2.8 CPU s of system time per GiB against 0.2-0.3 s for a direct write
//! (benches/results/README.md, session 7).
//!
//! How: bytes are staged in a 1 MiB buffer aligned to 4096 bytes (the strictest logical block
//! size of Linux block devices) and each full stage is written with `pwrite` at an offset
//! that is a multiple of 1 MiB. The last, partial stage is written after the flag is cleared
//! (`fcntl(F_SETFL)`), so the file may have any length. A file system that refuses `O_DIRECT`
//! (tmpfs before Linux 6.6, some FUSE and network file systems) gets buffered writes instead:
//! the flag cannot be set, or a direct write fails (`EINVAL`), and the stage is written again
//! through the page cache, as is everything after it. Durability is the caller's `fsync`, as
//! for buffered writes.

use std::fs::File;
use std::os::unix::fs::FileExt;

use rustix::fs::{fcntl_getfl, fcntl_setfl, OFlags};

/// Alignment of the buffer, of the file offsets and of the lengths of direct writes, in bytes.
const ALIGN: usize = 4096;
/// Bytes staged before a write (a multiple of [`ALIGN`]).
const STAGE_BYTES: usize = 1 << 20;

/// Sequential writer of one file; see the module doc.
pub(crate) struct DirectWriter {
    file: File,
    /// `STAGE_BYTES + ALIGN` bytes; the stage is `buf[start..start + STAGE_BYTES]`.
    buf: Vec<u8>,
    start: usize,
    /// Bytes staged.
    len: usize,
    /// File offset of the stage's first byte.
    pos: u64,
    /// Whether `O_DIRECT` is set on `file`.
    direct: bool,
}

impl std::fmt::Debug for DirectWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectWriter")
            .field("pos", &self.pos)
            .field("staged", &self.len)
            .field("direct", &self.direct)
            .finish_non_exhaustive()
    }
}

impl DirectWriter {
    /// Takes `file` (open for writing, empty) and sets `O_DIRECT` on it when its file system
    /// allows it.
    pub(crate) fn new(file: File) -> DirectWriter {
        let direct = fcntl_getfl(&file)
            .and_then(|fl| fcntl_setfl(&file, fl | OFlags::DIRECT))
            .is_ok();
        let buf = vec![0u8; STAGE_BYTES + ALIGN];
        // The heap block never moves (the Vec is never grown), so the offset stays right.
        let start = buf.as_ptr().align_offset(ALIGN);
        DirectWriter {
            file,
            buf,
            start,
            len: 0,
            pos: 0,
            direct,
        }
    }

    /// Copies as much of `data` into the stage as fits; returns how many bytes. When the
    /// stage is then full, [`DirectWriter::write_stage`] must run before the next call takes
    /// anything.
    pub(crate) fn stage(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(STAGE_BYTES - self.len);
        let at = self.start + self.len;
        self.buf[at..at + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }

    /// Whether the stage is full.
    pub(crate) fn is_full(&self) -> bool {
        self.len == STAGE_BYTES
    }

    /// Writes the staged bytes (blocking) and empties the stage: directly when the stage is
    /// full and `O_DIRECT` is on, else through the page cache (the flag cleared first).
    ///
    /// Errors: the OS error of the write (`ENOSPC`, `EIO`, ...); after an error the file's
    /// content from the stage's offset on is undefined.
    pub(crate) fn write_stage(&mut self) -> std::io::Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        let staged = &self.buf[self.start..self.start + self.len];
        // On a failed direct write (EINVAL: direct I/O refused after all, or a failure of its
        // own) the same bytes go again, buffered from here on; a real failure (ENOSPC, EIO)
        // repeats there and is returned.
        let wrote_direct = self.direct
            && self.len == STAGE_BYTES
            && self.file.write_all_at(staged, self.pos).is_ok();
        if !wrote_direct {
            if self.direct {
                let fl = fcntl_getfl(&self.file)?;
                fcntl_setfl(&self.file, fl - OFlags::DIRECT)?;
                self.direct = false;
            }
            self.file.write_all_at(staged, self.pos)?;
        }
        self.pos += self.len as u64;
        self.len = 0;
        Ok(())
    }

    /// The file (for `fsync` after the last [`DirectWriter::write_stage`]).
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Whether writes still bypass the page cache (for tests).
    #[cfg(test)]
    fn is_direct(&self) -> bool {
        self.direct
    }

    /// A writer whose stage is one byte off the alignment, so that a direct write fails with
    /// `EINVAL` as on a file system that refuses direct I/O late (for tests).
    #[cfg(test)]
    fn misaligned(file: File) -> DirectWriter {
        let mut w = DirectWriter::new(file);
        w.start += 1;
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Writes `chunks` through a DirectWriter into a new file under `dir`; returns the file's
    /// bytes and whether the writer still wrote directly at the end (before the tail).
    fn write_through(dir: &std::path::Path, chunks: &[Vec<u8>]) -> (Vec<u8>, bool) {
        write_with(dir, chunks, DirectWriter::new)
    }

    fn write_with(
        dir: &std::path::Path,
        chunks: &[Vec<u8>],
        new: fn(File) -> DirectWriter,
    ) -> (Vec<u8>, bool) {
        let p = dir.join("obj");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
            .unwrap();
        let mut w = new(f);
        for c in chunks {
            let mut rest = &c[..];
            while !rest.is_empty() {
                let n = w.stage(rest);
                rest = &rest[n..];
                if w.is_full() {
                    w.write_stage().unwrap();
                }
            }
        }
        let direct = w.is_direct();
        w.write_stage().unwrap();
        w.file().sync_all().unwrap();
        drop(w);
        (std::fs::read(&p).unwrap(), direct)
    }

    #[test]
    fn content_is_exact_for_unaligned_chunks_and_lengths() {
        let tmp = tempfile::tempdir().unwrap();
        // 3 full stages and an unaligned tail, in chunks that straddle the stages.
        let chunks: Vec<Vec<u8>> = [1 << 20, 123, (1 << 20) - 7, 4096, 1_500_000, 9]
            .iter()
            .enumerate()
            .map(|(i, &n)| pattern(n, i as u8))
            .collect();
        let (got, direct) = write_through(tmp.path(), &chunks);
        assert_eq!(got, chunks.concat());
        // On the file systems that take O_DIRECT the full stages must have gone that way.
        if takes_direct_io(tmp.path()) {
            assert!(direct, "O_DIRECT was dropped on an ext4/xfs temp dir");
        }
    }

    /// ext4 and xfs, which take O_DIRECT.
    fn takes_direct_io(dir: &std::path::Path) -> bool {
        const EXT4: i64 = 0xEF53;
        const XFS: i64 = 0x5846_5342;
        let fs_type = rustix::fs::statfs(dir).unwrap().f_type as i64;
        [EXT4, XFS].contains(&fs_type)
    }

    #[test]
    fn a_refused_direct_write_is_done_again_buffered() {
        let tmp = tempfile::tempdir().unwrap();
        let chunks = vec![pattern(2 << 20, 3), pattern(5000, 4)];
        let p = tmp.path().join("probe");
        let probe = DirectWriter::new(std::fs::File::create(&p).unwrap());
        let started_direct = probe.is_direct();
        drop(probe);
        let (got, still_direct) = write_with(tmp.path(), &chunks, DirectWriter::misaligned);
        assert_eq!(got, chunks.concat());
        assert!(
            !still_direct,
            "the refused write switched to buffered writes"
        );
        if takes_direct_io(tmp.path()) {
            assert!(
                started_direct,
                "ext4/xfs: the EINVAL path was the one tested"
            );
        }
    }

    #[test]
    fn small_and_empty_files() {
        for n in [0usize, 1, 4095, 4096, 4097, (1 << 20) + 1] {
            let tmp = tempfile::tempdir().unwrap();
            let data = pattern(n, 7);
            let (got, _) = write_through(tmp.path(), std::slice::from_ref(&data));
            assert_eq!(got, data, "{n} bytes");
        }
    }

    #[test]
    fn tmpfs_falls_back_or_writes_directly() {
        // /dev/shm is tmpfs: before Linux 6.6 it refuses O_DIRECT (the fallback path), after
        // it takes it. Either way the content must be exact.
        let shm = std::path::Path::new("/dev/shm");
        if !shm.is_dir() {
            return;
        }
        let tmp = tempfile::tempdir_in(shm).unwrap();
        let chunks = vec![pattern(3 << 20, 1), pattern(777, 2)];
        let (got, _) = write_through(tmp.path(), &chunks);
        assert_eq!(got, chunks.concat());
    }
}
