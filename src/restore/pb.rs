//! Hand-written protobuf encoding of the few etcd messages a restore writes.
//!
//! etcd marshals these with gogoproto (`marshaler_all`): fields in field-number order,
//! `(gogoproto.nullable) = false` scalars always written (even when zero), nullable `bytes`
//! and message fields written only when set, proto2 `repeated uint64` unpacked (one tag per
//! value). Encoding by hand keeps those rules explicit; prost's derive would drop zero
//! scalars or need proto2 `required` tricks, so `prost` is not a direct dependency (about 100
//! lines here, byte-exact against etcdutl in `tests/restore_format.rs`). Field numbers come from (release-3.5):
//! `server/wal/walpb/record.proto`, `raft/raftpb/raft.proto`,
//! `server/etcdserver/api/snap/snappb/snap.proto`, `api/etcdserverpb/etcdserver.proto`.

/// Appends `v` as a base-128 varint.
fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Varint field (wire type 0).
fn put_u64(buf: &mut Vec<u8>, field: u32, v: u64) {
    put_varint(buf, u64::from(field) << 3);
    put_varint(buf, v);
}

/// Length-delimited field (wire type 2).
fn put_bytes(buf: &mut Vec<u8>, field: u32, v: &[u8]) {
    put_varint(buf, (u64::from(field) << 3) | 2);
    put_varint(buf, v.len() as u64);
    buf.extend_from_slice(v);
}

/// `etcdserverpb.Metadata{NodeID=1, ClusterID=2}`: the WAL metadata record's payload.
pub fn metadata(node_id: u64, cluster_id: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(24);
    put_u64(&mut b, 1, node_id);
    put_u64(&mut b, 2, cluster_id);
    b
}

/// `raftpb.ConfState{voters=1 (repeated, unpacked), auto_leave=5}`; learners and joint
/// configs are never written by a restore (etcd's restore ignores learners too).
pub fn conf_state(voters: &[u64]) -> Vec<u8> {
    let mut b = Vec::with_capacity(voters.len() * 11 + 2);
    for v in voters {
        put_u64(&mut b, 1, *v);
    }
    put_u64(&mut b, 5, 0); // auto_leave = false, non-nullable
    b
}

/// `raftpb.ConfChange{ID=1, Type=2, NodeID=3, Context=4}` with `ID` 0 and `Type`
/// `ConfChangeAddNode` (0), as `saveWALAndSnap` builds it.
pub fn conf_change_add_node(node_id: u64, context: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(context.len() + 24);
    put_u64(&mut b, 1, 0);
    put_u64(&mut b, 2, 0);
    put_u64(&mut b, 3, node_id);
    put_bytes(&mut b, 4, context);
    b
}

/// `raftpb.Entry{Type=1, Term=2, Index=3, Data=4}`; `entry_type` 1 = `EntryConfChange`.
pub fn entry(entry_type: u64, term: u64, index: u64, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(data.len() + 32);
    put_u64(&mut b, 1, entry_type);
    put_u64(&mut b, 2, term);
    put_u64(&mut b, 3, index);
    put_bytes(&mut b, 4, data);
    b
}

/// `raftpb.HardState{term=1, vote=2, commit=3}`.
pub fn hard_state(term: u64, vote: u64, commit: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(32);
    put_u64(&mut b, 1, term);
    put_u64(&mut b, 2, vote);
    put_u64(&mut b, 3, commit);
    b
}

/// `walpb.Snapshot{index=1, term=2, conf_state=3 (nullable: only when given)}`.
pub fn wal_snapshot(index: u64, term: u64, conf_state: Option<&[u8]>) -> Vec<u8> {
    let mut b = Vec::with_capacity(32);
    put_u64(&mut b, 1, index);
    put_u64(&mut b, 2, term);
    if let Some(cs) = conf_state {
        put_bytes(&mut b, 3, cs);
    }
    b
}

/// `walpb.Record{type=1, crc=2, data=3 (only when present)}`.
pub fn wal_record(rec_type: u64, crc: u32, data: Option<&[u8]>) -> Vec<u8> {
    let mut b = Vec::with_capacity(data.map_or(0, <[u8]>::len) + 24);
    put_u64(&mut b, 1, rec_type);
    put_u64(&mut b, 2, u64::from(crc));
    if let Some(d) = data {
        put_bytes(&mut b, 3, d);
    }
    b
}

/// `raftpb.Snapshot{data=1, metadata=2: SnapshotMetadata{conf_state=1, index=2, term=3}}`.
pub fn raft_snapshot(data: &[u8], conf_state: &[u8], index: u64, term: u64) -> Vec<u8> {
    let mut md = Vec::with_capacity(conf_state.len() + 24);
    put_bytes(&mut md, 1, conf_state);
    put_u64(&mut md, 2, index);
    put_u64(&mut md, 3, term);
    let mut b = Vec::with_capacity(data.len() + md.len() + 16);
    put_bytes(&mut b, 1, data);
    put_bytes(&mut b, 2, &md);
    b
}

/// `snappb.snapshot{crc=1, data=2}`: the content of a `.snap` file.
pub fn snap_file(crc: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(data.len() + 16);
    put_u64(&mut b, 1, u64::from(crc));
    put_bytes(&mut b, 2, data);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_scalars_are_written() {
        // walpb.Snapshot{} as wal.Create writes it (measured on etcdutl 3.5.1: 08 00 10 00).
        assert_eq!(wal_snapshot(0, 0, None), vec![0x08, 0, 0x10, 0]);
        // crc record of a fresh WAL (measured: 08 04 10 00).
        assert_eq!(wal_record(4, 0, None), vec![0x08, 4, 0x10, 0]);
    }
}
