//! The WAL of a freshly restored member: one segment file, as `etcdutl snapshot restore` writes it.
//!
//! Sources (etcd-io/etcd, release-3.5):
//! - `server/wal/encoder.go`: each record is a little-endian u64 length word, the marshalled
//!   `walpb.Record`, then zero padding to a multiple of 8 bytes. The word's low 56 bits are the
//!   record length; with padding its top byte is `0x80 | pad`. The record's `crc` is the
//!   crc32 (Castagnoli) of every record's `data` so far (chained across records).
//! - `server/wal/wal.go` `Create`: crc record (crc 0), metadata record
//!   (`etcdserverpb.Metadata{NodeID, ClusterID}`), empty snapshot record; the segment
//!   `0000000000000000-0000000000000000.wal` is preallocated to `SegmentSizeBytes` (64,000,000).
//! - `etcdutl/snapshot/v3_snapshot.go` `saveWALAndSnap`: one `EntryConfChange` (AddNode) per
//!   member sorted by ID (term 1, index 1..N), `HardState{term 1, vote: smallest ID, commit N}`,
//!   then a snapshot record `{index N, term 1, conf_state: voters}`.
//!
//! The bytes are identical to etcdutl 3.5.1's (checked in `tests/restore_format.rs`), except
//! that the preallocation is a sparse `set_len` instead of `fallocate` (same content: zeros;
//! etcd itself falls back to truncate on filesystems without fallocate).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::member::Member;
use super::pb;

/// `wal.SegmentSizeBytes`: size every WAL segment file is preallocated to (bytes).
pub const SEGMENT_SIZE_BYTES: u64 = 64 * 1000 * 1000;

/// Name of the first WAL segment (`walName(0, 0)`: `%016x-%016x.wal` of seq and index).
pub const FIRST_SEGMENT: &str = "0000000000000000-0000000000000000.wal";

/// WAL record types (`server/wal/wal.go`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum RecordType {
    /// `metadataType`: `etcdserverpb.Metadata`.
    Metadata = 1,
    /// `entryType`: `raftpb.Entry`.
    Entry = 2,
    /// `stateType`: `raftpb.HardState`.
    State = 3,
    /// `crcType`: carries the running crc, no data.
    Crc = 4,
    /// `snapshotType`: `walpb.Snapshot`.
    Snapshot = 5,
}

/// Frames records the way `server/wal/encoder.go` does, into memory.
#[derive(Debug, Default)]
pub struct Encoder {
    buf: Vec<u8>,
    crc: u32,
}

impl Encoder {
    /// A new encoder whose crc chain starts at `prev_crc` (0 for the first segment).
    pub fn new(prev_crc: u32) -> Self {
        Encoder {
            buf: Vec::new(),
            crc: prev_crc,
        }
    }

    /// Appends one record: length word, `walpb.Record`, padding to 8 bytes.
    pub fn encode(&mut self, rec_type: RecordType, data: Option<&[u8]>) {
        if let Some(d) = data {
            self.crc = crc32c::crc32c_append(self.crc, d);
        }
        let rec = pb::wal_record(rec_type as u64, self.crc, data);
        let (len_field, pad) = encode_frame_size(rec.len());
        self.buf.extend_from_slice(&len_field.to_le_bytes());
        self.buf.extend_from_slice(&rec);
        self.buf.extend(std::iter::repeat_n(0u8, pad));
    }

    /// The framed bytes so far.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// `encodeFrameSize`: the length word and the number of pad bytes for a record of `n` bytes.
pub fn encode_frame_size(n: usize) -> (u64, usize) {
    let pad = (8 - n % 8) % 8;
    let mut len_field = n as u64;
    if pad != 0 {
        len_field |= (0x80 | pad as u64) << 56;
    }
    (len_field, pad)
}

/// The records of a restored member's WAL (without the preallocated zeros).
///
/// `members` must be sorted by ID ascending (as `RaftCluster.MemberIDs` returns them) and
/// `node_id` be one of them. Term is 1 and the commit index is `members.len()`.
pub fn restore_wal_bytes(node_id: u64, cluster_id: u64, members: &[Member]) -> Vec<u8> {
    debug_assert!(members.windows(2).all(|w| w[0].id < w[1].id));
    let term = 1u64;
    let commit = members.len() as u64;
    let mut e = Encoder::new(0);
    // wal.Create
    e.encode(RecordType::Crc, None);
    e.encode(
        RecordType::Metadata,
        Some(&pb::metadata(node_id, cluster_id)),
    );
    e.encode(RecordType::Snapshot, Some(&pb::wal_snapshot(0, 0, None)));
    // saveWALAndSnap: w.Save(hardState, ents)
    for (i, m) in members.iter().enumerate() {
        let cc = pb::conf_change_add_node(m.id, m.context_json().as_bytes());
        e.encode(
            RecordType::Entry,
            Some(&pb::entry(1, term, i as u64 + 1, &cc)),
        );
    }
    e.encode(
        RecordType::State,
        Some(&pb::hard_state(term, members[0].id, commit)),
    );
    // saveWALAndSnap: w.SaveSnapshot(walpb.Snapshot{Index: commit, Term: term, ConfState})
    let voters: Vec<u64> = members.iter().map(|m| m.id).collect();
    let cs = pb::conf_state(&voters);
    e.encode(
        RecordType::Snapshot,
        Some(&pb::wal_snapshot(commit, term, Some(&cs))),
    );
    e.into_bytes()
}

/// Writes `wal_dir/0000000000000000-0000000000000000.wal` (mode 0600), preallocated to
/// [`SEGMENT_SIZE_BYTES`], and fsyncs it. `wal_dir` must exist. Returns the file's path.
///
/// Errors: any I/O error creating, writing, extending or syncing the file (an existing file
/// is an error: `create_new`).
pub fn write_wal(
    wal_dir: &Path,
    node_id: u64,
    cluster_id: u64,
    members: &[Member],
) -> std::io::Result<PathBuf> {
    let bytes = restore_wal_bytes(node_id, cluster_id, members);
    let path = wal_dir.join(FIRST_SEGMENT);
    let mut f: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    f.write_all(&bytes)?;
    f.set_len(SEGMENT_SIZE_BYTES.max(bytes.len() as u64))?;
    f.sync_all()?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_sizes() {
        assert_eq!(encode_frame_size(4), (0x84 << 56 | 4, 4));
        assert_eq!(encode_frame_size(24), (24, 0));
        assert_eq!(encode_frame_size(31), (0x81 << 56 | 31, 1));
    }
}
