//! The `.snap` file of a freshly restored member: the raft snapshot at index N (members),
//! term 1, whose data is the etcd v2 store holding the membership.
//!
//! Sources (etcd-io/etcd, release-3.5):
//! - `server/etcdserver/api/snap/snapshotter.go` `save`: file `%016x-%016x.snap` (term, index),
//!   content `snappb.snapshot{crc: crc32c(data), data: raftpb.Snapshot}`, mode 0666 & umask.
//! - `etcdutl/snapshot/v3_snapshot.go` `saveWALAndSnap`: a v2 store with namespaces `/0` and
//!   `/1` to which every member is added (`RaftCluster.AddMember` ->
//!   `membership/store.go` `unsafeSaveMemberToStore`: only `raftAttributes`, created under
//!   `/0/members/<id %x>/raftAttributes`, in member-ID order, store index 1..N), then
//!   `store.Save()` (`server/etcdserver/api/v2store/store.go`): `json.Marshal` of the cloned
//!   store (Root, WatcherHub event history of capacity 1000, CurrentIndex, Stats,
//!   CurrentVersion 2). Go marshals maps with sorted keys; no field holds a timestamp
//!   (`ExpireTime` is the zero time), so the JSON is deterministic and written here
//!   byte for byte as etcdutl 3.5.1 writes it (`tests/restore_format.rs`).
//!
//! etcd 3.6 (`server/etcdserver/cluster_util.go` `GetMembershipInfoInV2Format`) also writes
//! member `attributes` into this store, but reads membership from the db and only requires the
//! v2 store to hold nothing but membership (`membership/storev2.go` `IsMetaStoreOnly`), which
//! this 3.5-shaped store satisfies (by reading the code; no 3.6 binary to test with here).

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::member::{go_json_string, Member, EVENT_HISTORY_CAPACITY};
use super::pb;

/// `%016x-%016x.snap` of term and index.
pub fn snap_file_name(term: u64, index: u64) -> String {
    format!("{term:016x}-{index:016x}.snap")
}

/// A directory node of the v2 store JSON (`v2store.node` with `Children` non-nil).
fn dir_node(out: &mut String, path: &str, index: u64, children: impl FnOnce(&mut String)) {
    write!(
        out,
        r#"{{"Path":{},"CreatedIndex":{index},"ModifiedIndex":{index},"ExpireTime":"0001-01-01T00:00:00Z","Value":"","Children":{{"#,
        go_json_string(path)
    )
    .unwrap();
    children(out);
    out.push_str("}}");
}

/// The v2 store JSON (`store.Save()`) holding `members` (sorted by ID ascending).
///
/// Panics: never for at most [`EVENT_HISTORY_CAPACITY`] members (the plan enforces it).
pub fn v2_store_json(members: &[Member]) -> String {
    debug_assert!(members.windows(2).all(|w| w[0].id < w[1].id));
    assert!(members.len() <= EVENT_HISTORY_CAPACITY);
    let n = members.len() as u64;
    // Store index at which each member's raftAttributes was created: 1.. in ID order.
    let created: Vec<(String, u64, &Member)> = members
        .iter()
        .enumerate()
        .map(|(i, m)| (format!("{:x}", m.id), i as u64 + 1, m))
        .collect();
    // Go sorts map keys as strings; types.ID.String() is unpadded hex.
    let mut by_key: Vec<&(String, u64, &Member)> = created.iter().collect();
    by_key.sort_by(|a, b| a.0.cmp(&b.0));

    let mut s = String::with_capacity(8192 + 400 * members.len());
    s.push_str(r#"{"Root":"#);
    dir_node(&mut s, "/", 0, |s| {
        s.push_str(r#""0":"#);
        dir_node(s, "/0", 0, |s| {
            if !members.is_empty() {
                s.push_str(r#""members":"#);
                // The members dir is created with the first member, at store index 1.
                dir_node(s, "/0/members", 1, |s| {
                    for (i, (key, idx, m)) in by_key.iter().enumerate() {
                        if i > 0 {
                            s.push(',');
                        }
                        let mpath = format!("/0/members/{key}");
                        write!(s, "{}:", go_json_string(key)).unwrap();
                        dir_node(s, &mpath, *idx, |s| {
                            write!(
                                s,
                                r#""raftAttributes":{{"Path":{},"CreatedIndex":{idx},"ModifiedIndex":{idx},"ExpireTime":"0001-01-01T00:00:00Z","Value":{},"Children":null}}"#,
                                go_json_string(&format!("{mpath}/raftAttributes")),
                                go_json_string(&m.raft_attributes_json()),
                            )
                            .unwrap();
                        });
                    }
                });
            }
        });
        s.push_str(r#","1":"#);
        dir_node(s, "/1", 0, |_| {});
    });
    // WatcherHub.EventHistory: a ring of EVENT_HISTORY_CAPACITY slots, one "create" event
    // per member in creation order, the rest null.
    s.push_str(r#","WatcherHub":{"EventHistory":{"Queue":{"Events":["#);
    for (i, (key, idx, m)) in created.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        write!(
            s,
            r#"{{"action":"create","node":{{"key":{},"value":{},"modifiedIndex":{idx},"createdIndex":{idx}}}}}"#,
            go_json_string(&format!("/0/members/{key}/raftAttributes")),
            go_json_string(&m.raft_attributes_json()),
        )
        .unwrap();
    }
    for i in members.len()..EVENT_HISTORY_CAPACITY {
        if i > 0 {
            s.push(',');
        }
        s.push_str("null");
    }
    write!(
        s,
        r#"],"Size":{n},"Front":0,"Back":{back},"Capacity":{cap}}},"StartIndex":{start},"LastIndex":{n}}}}},"CurrentIndex":{n},"Stats":{{"getsSuccess":0,"getsFail":0,"setsSuccess":0,"setsFail":0,"deleteSuccess":0,"deleteFail":0,"updateSuccess":0,"updateFail":0,"createSuccess":{n},"createFail":0,"compareAndSwapSuccess":0,"compareAndSwapFail":0,"compareAndDeleteSuccess":0,"compareAndDeleteFail":0,"expireCount":0,"watchers":0}},"CurrentVersion":2}}"#,
        back = n as usize % EVENT_HISTORY_CAPACITY,
        cap = EVENT_HISTORY_CAPACITY,
        start = if n == 0 { 0 } else { 1 },
    )
    .unwrap();
    s
}

/// The content of the restored member's `.snap` file: `snappb.snapshot` around
/// `raftpb.Snapshot{data: v2 store, metadata: {conf_state: voters, index: N, term: 1}}`.
pub fn snap_file_bytes(members: &[Member]) -> Vec<u8> {
    let voters: Vec<u64> = members.iter().map(|m| m.id).collect();
    let data = v2_store_json(members);
    let raft = pb::raft_snapshot(
        data.as_bytes(),
        &pb::conf_state(&voters),
        members.len() as u64,
        1,
    );
    pb::snap_file(crc32c::crc32c(&raft), &raft)
}

/// Writes `<snap_dir>/<term>-<index>.snap` (mode 0600, like every restored file: etcd writes 0666 & umask)
/// and fsyncs it. Returns the file's path. Errors: I/O (an existing file is an error).
pub fn write_snap(snap_dir: &Path, members: &[Member]) -> std::io::Result<PathBuf> {
    let path = snap_dir.join(snap_file_name(1, members.len() as u64));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    f.write_all(&snap_file_bytes(members))?;
    f.sync_all()?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name() {
        assert_eq!(
            snap_file_name(1, 2),
            "0000000000000001-0000000000000002.snap"
        );
    }
}
