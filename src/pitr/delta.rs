//! The plaintext delta stream (docs/design/pitr.md §5) and etcd's exact `key`-bucket encodings
//! (§1): revision keys and `mvccpb.KeyValue` values.
//!
//! # Stream (format 2; format 1 is format 2 without LEASE_LIST, and is still read)
//! ```text
//! magic   "LBPITR\0" 0x02                                    8 bytes
//! header  u32 LE len (<= 64 KiB) + JSON DeltaHeader
//! record* tag u8 | len varint (LEB128, <= 64 MiB) | payload
//!   0x01 REV         main i64 BE | observed_unix_ms i64 BE
//!   0x02 PUT         value (exact key-bucket value); key = rev_to_bytes(main, sub)
//!   0x03 DEL         value (KeyValue{key} only); key = rev_to_bytes(main, sub) + 't'
//!   0x04 LEASE_GRANT id i64 BE | ttl i64 BE (seconds, 0 = unknown) | seen_rev i64 BE
//!   0x05 LEASE_GONE  id i64 BE | seen_rev i64 BE
//!   0x06 ANCHOR      sent_unix_ms i64 BE | revision i64 BE
//!   0x07 LEASE_LIST  seen_rev i64 BE | id i64 BE * n (n >= 0, ids non-zero, ascending):
//!                    every lease live at seen_rev; any other lease is gone there (at most
//!                    one per stream)
//!   0xFF END         events u64 BE | revisions u64 BE | last_revision i64 BE | sha256
//! ```
//! `sub` is implicit: the position of a PUT/DEL among the events after its REV (lease and
//! anchor records do not count), so a stream cannot encode an inconsistent key. The sha256 of
//! END covers every byte before the END tag (magic and header included). Lease and anchor
//! records may appear anywhere after the header, also inside a revision.
//!
//! Reader checks (every one a [`DeltaError::Corrupt`] naming the byte offset): magic, header
//! length and JSON, record lengths (<= [`MAX_RECORD_LEN`], exact for fixed records), REV mains
//! contiguous from `first_revision`, each REV followed by >= 1 PUT/DEL, no event before the
//! first REV, PUT values canonical `KeyValue` encodings with `mod_revision == main`,
//! `version >= 1`, `1 <= create_revision <= main`, non-empty key; DEL values a non-empty key
//! only; END counts, last revision and sha256; nothing after END; unknown tags.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The 8 bytes every delta stream starts with: `"LBPITR\0"` and format 2 (written).
pub const MAGIC: [u8; 8] = *b"LBPITR\x00\x02";
/// Format 1's magic (streams without LEASE_LIST records): still read.
pub const MAGIC_V1: [u8; 8] = *b"LBPITR\x00\x01";
/// Largest header JSON accepted, in bytes (64 KiB).
pub const MAX_HEADER_LEN: u32 = 64 << 10;
/// Largest record payload accepted, in bytes (64 MiB): etcd's own request limit is far lower,
/// so a longer length is corruption (refused before allocating).
pub const MAX_RECORD_LEN: u64 = 64 << 20;

/// Record tag: start of a revision.
pub const TAG_REV: u8 = 0x01;
/// Record tag: a put event.
pub const TAG_PUT: u8 = 0x02;
/// Record tag: a delete event (tombstone).
pub const TAG_DEL: u8 = 0x03;
/// Record tag: a lease seen granted.
pub const TAG_LEASE_GRANT: u8 = 0x04;
/// Record tag: a lease seen gone.
pub const TAG_LEASE_GONE: u8 = 0x05;
/// Record tag: an anchor probe (time coverage).
pub const TAG_ANCHOR: u8 = 0x06;
/// Record tag: the complete list of live leases (format 2).
pub const TAG_LEASE_LIST: u8 = 0x07;
/// Most lease ids in one LEASE_LIST record (its payload stays within [`MAX_RECORD_LEN`]).
pub const MAX_LEASE_LIST: usize = (MAX_RECORD_LEN as usize - 8) / 8;
/// Record tag: end of the stream.
pub const TAG_END: u8 = 0xFF;

const END_LEN: usize = 8 + 8 + 8 + 32;

/// Errors of writing or reading a delta stream.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// Reading or writing the underlying stream failed.
    #[error("delta stream I/O: {0}")]
    Io(#[from] io::Error),
    /// The bytes are not a delta stream of a format this version reads.
    #[error("not an etcd-lifeboat delta stream (magic {found}); expected \"LBPITR\\0\" format 1 or 2 (a newer format needs a newer etcd-lifeboat)")]
    NotDelta {
        /// The first bytes found, hex.
        found: String,
    },
    /// The stream breaks a rule of the format; the delta object is damaged or was not written
    /// by etcd-lifeboat: restore from another chain or base.
    #[error("corrupt delta stream at byte {offset}: {reason}")]
    Corrupt {
        /// Byte offset of the offending record (or of the end of the stream).
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A writer call that would produce an invalid stream (a bug of the caller).
    #[error("delta writer: {0}")]
    Misuse(String),
}

fn corrupt(offset: u64, reason: impl Into<String>) -> DeltaError {
    DeltaError::Corrupt {
        offset,
        reason: reason.into(),
    }
}

/// The header of a delta stream (JSON). The manifest repeats these fields; readers compare.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DeltaHeader {
    /// etcd cluster id, 16 lower-case hex digits.
    pub cluster_id: String,
    /// Id of the base backup the chain starts from.
    pub base_id: String,
    /// Effective revision of the base (`B_eff`, [`base_revision`]).
    pub base_revision: i64,
    /// Position of this delta in its chain (0 for the first).
    pub seq: u64,
    /// First revision of this delta (> `base_revision`).
    pub first_revision: i64,
}

impl DeltaHeader {
    fn check(&self) -> Result<(), String> {
        if self.base_revision < 0 {
            return Err(format!("base_revision {} < 0", self.base_revision));
        }
        if self.first_revision <= self.base_revision {
            return Err(format!(
                "first_revision {} is not above base_revision {}",
                self.first_revision, self.base_revision
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Encodings of etcd's key bucket.

/// etcd `revToBytes`: 8-byte big-endian `main`, `'_'`, 8-byte big-endian `sub` (17 bytes).
/// Byte order equals (main, sub) order for non-negative revisions.
pub fn rev_to_bytes(main: i64, sub: i64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..8].copy_from_slice(&main.to_be_bytes());
    k[8] = b'_';
    k[9..].copy_from_slice(&sub.to_be_bytes());
    k
}

/// The key of a tombstone: [`rev_to_bytes`] + `'t'` (etcd `appendMarkTombstone`, 18 bytes).
pub fn tombstone_key(main: i64, sub: i64) -> [u8; 18] {
    let mut k = [0u8; 18];
    k[..17].copy_from_slice(&rev_to_bytes(main, sub));
    k[17] = b't';
    k
}

/// Parses a key-bucket key: `(main, sub, tombstone)`, or `None` when it is neither 17 bytes
/// with `'_'` at 8 nor 18 bytes ending in `'t'` (etcd `bytesToRev`, `isTombstone`).
pub fn bytes_to_rev(k: &[u8]) -> Option<(i64, i64, bool)> {
    let tomb = match k.len() {
        17 => false,
        18 if k[17] == b't' => true,
        _ => return None,
    };
    if k[8] != b'_' {
        return None;
    }
    let main = i64::from_be_bytes(k[..8].try_into().ok()?);
    let sub = i64::from_be_bytes(k[9..17].try_into().ok()?);
    Some((main, sub, tomb))
}

/// An `mvccpb.KeyValue` (etcd `api/mvccpb/kv.proto`) borrowing its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct KvRef<'a> {
    /// Field 1.
    pub key: &'a [u8],
    /// Field 2: revision of the key's creation (0 in a tombstone).
    pub create_revision: i64,
    /// Field 3: revision of this change (0 in a tombstone; the key has it).
    pub mod_revision: i64,
    /// Field 4: number of changes since creation (1 for a new key).
    pub version: i64,
    /// Field 5.
    pub value: &'a [u8],
    /// Field 6: lease id, 0 for none.
    pub lease: i64,
}

/// An owned `mvccpb.KeyValue`; see [`KvRef`] for the fields.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct KeyValue {
    /// Field 1.
    pub key: Vec<u8>,
    /// Field 2.
    pub create_revision: i64,
    /// Field 3.
    pub mod_revision: i64,
    /// Field 4.
    pub version: i64,
    /// Field 5.
    pub value: Vec<u8>,
    /// Field 6.
    pub lease: i64,
}

impl KeyValue {
    /// A borrowed view.
    pub fn as_ref(&self) -> KvRef<'_> {
        KvRef {
            key: &self.key,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            value: &self.value,
            lease: self.lease,
        }
    }

    /// gogoproto `KeyValue.Marshal` bytes ([`KvRef::encode`]).
    pub fn encode(&self) -> Vec<u8> {
        self.as_ref().encode()
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

impl<'a> KvRef<'a> {
    /// gogoproto `KeyValue.Marshal`: proto3, fields 1..6 in order, zero/empty fields omitted,
    /// `int64` as two's-complement varint, bytes as length-delimited. These are the exact bytes
    /// etcd stores in bucket `key` (and hashes in `hashkv`).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.key.len() + self.value.len() + 48);
        if !self.key.is_empty() {
            out.push(0x0a);
            put_varint(&mut out, self.key.len() as u64);
            out.extend_from_slice(self.key);
        }
        for (tag, v) in [
            (0x10, self.create_revision),
            (0x18, self.mod_revision),
            (0x20, self.version),
        ] {
            if v != 0 {
                out.push(tag);
                put_varint(&mut out, v as u64);
            }
        }
        if !self.value.is_empty() {
            out.push(0x2a);
            put_varint(&mut out, self.value.len() as u64);
            out.extend_from_slice(self.value);
        }
        if self.lease != 0 {
            out.push(0x30);
            put_varint(&mut out, self.lease as u64);
        }
        out
    }

    /// Decodes a canonical encoding: exactly the bytes [`KvRef::encode`] produces (fields in
    /// order, each at most once, no zero field present, minimal varints, no unknown field).
    /// So `decode(b)?.encode() == b` for every accepted `b`.
    ///
    /// Errors: the reason as text.
    pub fn decode(b: &'a [u8]) -> Result<KvRef<'a>, String> {
        let mut kv = KvRef::default();
        let mut pos = 0usize;
        let mut last_field = 0u8;
        while pos < b.len() {
            let tag = b[pos];
            pos += 1;
            let (field, wire) = (tag >> 3, tag & 7);
            if !(1..=6).contains(&field) || tag & 0x80 != 0 {
                return Err(format!("unknown field tag 0x{tag:02x} at byte {}", pos - 1));
            }
            if field <= last_field {
                return Err(format!("field {field} out of order or repeated"));
            }
            last_field = field;
            let want_wire = if field == 1 || field == 5 { 2 } else { 0 };
            if wire != want_wire {
                return Err(format!("field {field} has wire type {wire}"));
            }
            let (v, n) = get_varint(&b[pos..])
                .ok_or_else(|| format!("bad or non-minimal varint in field {field}"))?;
            pos += n;
            if v == 0 {
                return Err(format!("field {field} present with a zero value"));
            }
            match field {
                1 | 5 => {
                    let len = usize::try_from(v)
                        .ok()
                        .filter(|&l| l <= b.len() - pos)
                        .ok_or_else(|| format!("field {field} length {v} runs past the end"))?;
                    let s = &b[pos..pos + len];
                    pos += len;
                    if field == 1 {
                        kv.key = s;
                    } else {
                        kv.value = s;
                    }
                }
                2 => kv.create_revision = v as i64,
                3 => kv.mod_revision = v as i64,
                4 => kv.version = v as i64,
                _ => kv.lease = v as i64,
            }
        }
        Ok(kv)
    }

    /// An owned copy.
    pub fn to_owned(&self) -> KeyValue {
        KeyValue {
            key: self.key.to_vec(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            value: self.value.to_vec(),
            lease: self.lease,
        }
    }
}

/// Minimal LEB128 varint of at most 10 bytes: (value, bytes used).
fn get_varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    for (i, &byte) in b.iter().enumerate().take(10) {
        if i == 9 && byte > 1 {
            return None;
        }
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            // Minimal: no trailing zero byte (except the single byte 0).
            if i > 0 && byte == 0 {
                return None;
            }
            return Some((v, i + 1));
        }
    }
    None
}

/// The key-bucket value of a delete: `KeyValue{key}` only (etcd `storeTxnWrite.delete`; the
/// watch event's `mod_revision` is patched in after marshalling and must not be stored).
pub fn tombstone_value(key: &[u8]) -> Vec<u8> {
    KvRef {
        key,
        ..KvRef::default()
    }
    .encode()
}

/// Key of a lease in bucket `lease`: 8-byte big-endian id (etcd `int64ToBytes`).
pub fn lease_key(id: i64) -> [u8; 8] {
    id.to_be_bytes()
}

/// Value of a lease in bucket `lease`: gogoproto `leasepb.Lease{ID=1, TTL=2,
/// RemainingTTL=3}` (proto3, zero fields omitted; etcd `lessor.persistTo`). `ttl` and
/// `remaining_ttl` in seconds.
pub fn lease_value(id: i64, ttl: i64, remaining_ttl: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(33);
    for (tag, v) in [(0x08, id), (0x10, ttl), (0x18, remaining_ttl)] {
        if v != 0 {
            out.push(tag);
            put_varint(&mut out, v as u64);
        }
    }
    out
}

/// Decodes a `leasepb.Lease` value: `(id, ttl, remaining_ttl)`. Any field order; fields
/// other than these three (all etcd writes) are refused.
///
/// Errors: the reason as text.
pub fn decode_lease(b: &[u8]) -> Result<(i64, i64, i64), String> {
    let mut f = [0i64; 3];
    let mut pos = 0;
    while pos < b.len() {
        let tag = b[pos];
        pos += 1;
        let i = match tag {
            0x08 => 0,
            0x10 => 1,
            0x18 => 2,
            _ => return Err(format!("unknown lease field tag 0x{tag:02x}")),
        };
        let (v, n) = get_varint(&b[pos..]).ok_or("bad varint in a lease value")?;
        pos += n;
        f[i] = v as i64;
    }
    Ok((f[0], f[1], f[2]))
}

/// The effective base revision `B_eff` of a verified db (design §2): the greatest of 1 (etcd's
/// store starts at revision 1, `mvcc.NewStore`, so an empty keyspace's first write is
/// revision 2), the main revision of bucket `key`'s last key, `meta/finishedCompactRev` and
/// `meta/scheduledCompactRev` (each 17-byte revisions; absent = 0), as etcd's
/// `store.restore` derives its current revision. A chain's first delta starts at `B_eff + 1`.
///
/// Errors: Corrupt when a key or meta value is not a non-negative revision; Io.
pub fn base_revision(db: &crate::snapshot::Db) -> Result<i64, crate::snapshot::SnapshotError> {
    let bad = |what: &str, b: &[u8]| crate::snapshot::SnapshotError::Corrupt {
        page: db.meta().root,
        reason: format!("{what} ({}) is not a revision", hex::encode(b)),
    };
    let mut rev = 1i64;
    if let Some(k) = db.last_key(b"key")? {
        match bytes_to_rev(&k) {
            Some((m, _, _)) if m >= 0 => rev = rev.max(m),
            _ => return Err(bad("the last key of bucket key", &k)),
        }
    }
    if let Some(meta) = db.root_bucket_entries(b"meta")? {
        for e in meta {
            if e.key == b"finishedCompactRev" || e.key == b"scheduledCompactRev" {
                match bytes_to_rev(&e.value) {
                    Some((m, _, false)) if m >= 0 => rev = rev.max(m),
                    _ => return Err(bad(&String::from_utf8_lossy(&e.key), &e.value)),
                }
            }
        }
    }
    Ok(rev)
}

// ---------------------------------------------------------------------------------------
// Writer.

/// What [`DeltaWriter::finish`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaSummary {
    /// PUT and DEL records.
    pub events: u64,
    /// REV records.
    pub revisions: u64,
    /// LEASE_GRANT and LEASE_GONE records.
    pub lease_records: u64,
    /// Last revision (`first_revision - 1` when empty).
    pub last_revision: i64,
    /// Observed time (Unix ms) of the first and last REV, `None` when empty.
    pub first_observed_ms: Option<i64>,
    /// See `first_observed_ms`.
    pub last_observed_ms: Option<i64>,
    /// Newest ANCHOR `sent_unix_ms` whose revision is <= `last_revision`.
    pub covered_until_ms: Option<i64>,
    /// Total bytes of the stream (END included).
    pub raw_bytes: u64,
    /// sha256 of the whole stream (END included), hex: the manifest's `raw_sha256`.
    pub raw_sha256: String,
}

#[derive(Clone)]
struct WriterState {
    written: u64,
    hasher: Sha256,
    events: u64,
    revisions: u64,
    lease_records: u64,
    /// A LEASE_LIST was written (at most one per stream).
    listed: bool,
    last_revision: i64,
    first_observed_ms: Option<i64>,
    last_observed_ms: Option<i64>,
    covered_until_ms: Option<i64>,
    /// Events of the revision being written (None: no REV yet).
    open_events: Option<i64>,
}

/// Something a [`DeltaWriter`] can cut back to a shorter length: a spill file.
pub trait Truncate {
    /// Makes the underlying file `len` bytes long and positions further writes at `len`.
    fn truncate_to(&mut self, len: u64) -> io::Result<()>;
}

impl Truncate for std::fs::File {
    fn truncate_to(&mut self, len: u64) -> io::Result<()> {
        use std::io::Seek;
        self.set_len(len)?;
        self.seek(io::SeekFrom::Start(len))?;
        Ok(())
    }
}

impl<W: Write + Truncate> Truncate for io::BufWriter<W> {
    fn truncate_to(&mut self, len: u64) -> io::Result<()> {
        self.flush()?;
        self.get_mut().truncate_to(len)
    }
}

impl Truncate for Vec<u8> {
    fn truncate_to(&mut self, len: u64) -> io::Result<()> {
        self.truncate(usize::try_from(len).map_err(io::Error::other)?);
        Ok(())
    }
}

/// Writes one delta stream incrementally: [`DeltaWriter::new`] (magic + header), then per
/// revision [`begin_revision`](DeltaWriter::begin_revision) and its events in sub-revision
/// order ([`put`](DeltaWriter::put), [`delete`](DeltaWriter::delete)), lease and anchor
/// records anywhere, and [`finish`](DeltaWriter::finish) (END). Checks what the reader checks,
/// so it never writes a stream the reader refuses. The capture wraps a spill file in a
/// `BufWriter`, marks each revision complete when the watch says so
/// ([`complete_revision`](DeltaWriter::complete_revision)), and on a broken watch drops an
/// incomplete one with [`discard_open_revision`](DeltaWriter::discard_open_revision).
pub struct DeltaWriter<W: Write> {
    out: W,
    header: DeltaHeader,
    st: WriterState,
    /// State and byte offset just before the open (begun, not yet complete) revision's REV
    /// record.
    at_rev: Option<(WriterState, u64)>,
    scratch: Vec<u8>,
}

impl<W: Write> DeltaWriter<W> {
    /// Writes magic and header to `out`.
    ///
    /// Errors: Misuse for a header with `first_revision <= base_revision` or a negative base;
    /// Io.
    pub fn new(mut out: W, header: DeltaHeader) -> Result<Self, DeltaError> {
        header.check().map_err(DeltaError::Misuse)?;
        let json = serde_json::to_vec(&header).map_err(|e| DeltaError::Misuse(e.to_string()))?;
        let mut hasher = Sha256::new();
        let mut head = Vec::with_capacity(12 + json.len());
        head.extend_from_slice(&MAGIC);
        head.extend_from_slice(&(json.len() as u32).to_le_bytes());
        head.extend_from_slice(&json);
        out.write_all(&head)?;
        hasher.update(&head);
        let st = WriterState {
            written: head.len() as u64,
            hasher,
            events: 0,
            revisions: 0,
            lease_records: 0,
            listed: false,
            last_revision: header.first_revision - 1,
            first_observed_ms: None,
            last_observed_ms: None,
            covered_until_ms: None,
            open_events: None,
        };
        Ok(DeltaWriter {
            out,
            header,
            st,
            at_rev: None,
            scratch: Vec::new(),
        })
    }

    /// The header written.
    pub fn header(&self) -> &DeltaHeader {
        &self.header
    }

    /// Bytes written so far (what a spill file holds after a flush).
    pub fn bytes_written(&self) -> u64 {
        self.st.written
    }

    /// Byte offset of the REV record of the open revision (begun, not yet marked complete),
    /// `None` when none is open. Truncating the stream there removes that revision.
    pub fn open_revision_offset(&self) -> Option<u64> {
        self.at_rev.as_ref().map(|(_, o)| *o)
    }

    /// Last revision started (`first_revision - 1` before the first).
    pub fn last_revision(&self) -> i64 {
        self.st.last_revision
    }

    /// Events written so far.
    pub fn events(&self) -> u64 {
        self.st.events
    }

    /// Whether the stream holds anything a restore uses: events, lease records, or an anchor
    /// that extends the time covered.
    pub fn holds_records(&self) -> bool {
        self.st.events > 0 || self.st.lease_records > 0 || self.st.covered_until_ms.is_some()
    }

    fn record(&mut self, tag: u8, payload: &[u8]) -> Result<(), DeltaError> {
        if payload.len() as u64 > MAX_RECORD_LEN {
            return Err(DeltaError::Misuse(format!(
                "record of {} bytes exceeds the format's {MAX_RECORD_LEN}",
                payload.len()
            )));
        }
        self.scratch.clear();
        self.scratch.push(tag);
        put_varint(&mut self.scratch, payload.len() as u64);
        self.out.write_all(&self.scratch)?;
        self.out.write_all(payload)?;
        self.st.hasher.update(&self.scratch);
        self.st.hasher.update(payload);
        self.st.written += (self.scratch.len() + payload.len()) as u64;
        Ok(())
    }

    /// Starts revision `main` (must be the previous one + 1, the first `first_revision`),
    /// observed by the capture at `observed_unix_ms`. The previous revision must have had an
    /// event. Returns the byte offset of its REV record.
    ///
    /// Errors: Misuse; Io.
    pub fn begin_revision(&mut self, main: i64, observed_unix_ms: i64) -> Result<u64, DeltaError> {
        if self.st.open_events == Some(0) {
            return Err(DeltaError::Misuse(format!(
                "revision {} has no event",
                self.st.last_revision
            )));
        }
        let want = self
            .st
            .last_revision
            .checked_add(1)
            .ok_or_else(|| DeltaError::Misuse("revision overflows".into()))?;
        if main != want {
            return Err(DeltaError::Misuse(format!(
                "revision {main} does not follow {} (expected {want})",
                self.st.last_revision
            )));
        }
        let offset = self.st.written;
        self.at_rev = Some((self.st.clone(), offset));
        let mut p = [0u8; 16];
        p[..8].copy_from_slice(&main.to_be_bytes());
        p[8..].copy_from_slice(&observed_unix_ms.to_be_bytes());
        self.record(TAG_REV, &p)?;
        self.st.revisions += 1;
        self.st.last_revision = main;
        self.st.first_observed_ms.get_or_insert(observed_unix_ms);
        self.st.last_observed_ms = Some(observed_unix_ms);
        self.st.open_events = Some(0);
        Ok(offset)
    }

    fn open_main(&self, what: &str) -> Result<i64, DeltaError> {
        match self.st.open_events {
            Some(_) => Ok(self.st.last_revision),
            None => Err(DeltaError::Misuse(format!("{what} before any revision"))),
        }
    }

    /// Appends a put event of the open revision (the next sub-revision). `kv` is the watch
    /// event's KeyValue: `mod_revision` must be the open revision, `version >= 1`,
    /// `1 <= create_revision <= mod_revision`, key non-empty. Stored as [`KvRef::encode`].
    ///
    /// Errors: Misuse; Io.
    pub fn put(&mut self, kv: KvRef<'_>) -> Result<(), DeltaError> {
        let main = self.open_main("put")?;
        check_put(&kv, main).map_err(DeltaError::Misuse)?;
        let v = kv.encode();
        self.record(TAG_PUT, &v)?;
        self.st.events += 1;
        self.st.open_events = self.st.open_events.map(|n| n + 1);
        Ok(())
    }

    /// Appends a delete event (tombstone of `key`) of the open revision.
    ///
    /// Errors: Misuse (no open revision, empty key); Io.
    pub fn delete(&mut self, key: &[u8]) -> Result<(), DeltaError> {
        self.open_main("delete")?;
        if key.is_empty() {
            return Err(DeltaError::Misuse("delete of an empty key".into()));
        }
        let v = tombstone_value(key);
        self.record(TAG_DEL, &v)?;
        self.st.events += 1;
        self.st.open_events = self.st.open_events.map(|n| n + 1);
        Ok(())
    }

    /// A lease seen granted: `ttl` seconds (0 = unknown), seen at revision `seen_rev`.
    ///
    /// Errors: Misuse (id 0, negative ttl or revision); Io.
    pub fn lease_grant(&mut self, id: i64, ttl: i64, seen_rev: i64) -> Result<(), DeltaError> {
        if id == 0 || ttl < 0 || seen_rev < 0 {
            return Err(DeltaError::Misuse(format!(
                "lease grant id {id} ttl {ttl} seen_rev {seen_rev}"
            )));
        }
        let mut p = [0u8; 24];
        p[..8].copy_from_slice(&id.to_be_bytes());
        p[8..16].copy_from_slice(&ttl.to_be_bytes());
        p[16..].copy_from_slice(&seen_rev.to_be_bytes());
        self.record(TAG_LEASE_GRANT, &p)?;
        self.st.lease_records += 1;
        Ok(())
    }

    /// A lease seen gone at revision `seen_rev`.
    ///
    /// Errors: Misuse (id 0, negative revision); Io.
    pub fn lease_gone(&mut self, id: i64, seen_rev: i64) -> Result<(), DeltaError> {
        if id == 0 || seen_rev < 0 {
            return Err(DeltaError::Misuse(format!(
                "lease gone id {id} seen_rev {seen_rev}"
            )));
        }
        let mut p = [0u8; 16];
        p[..8].copy_from_slice(&id.to_be_bytes());
        p[8..].copy_from_slice(&seen_rev.to_be_bytes());
        self.record(TAG_LEASE_GONE, &p)?;
        self.st.lease_records += 1;
        Ok(())
    }

    /// Every lease live at revision `seen_rev` (`ids`, any order, no duplicates): a lease
    /// known to a restore (from the base db or an earlier record) and not in `ids` is gone
    /// there. The capture writes one at the first lease poll of a session, when it cannot
    /// know which leases of the base (or of an earlier session) were revoked meanwhile.
    ///
    /// Errors: Misuse (a zero or duplicate id, a negative revision, more than
    /// [`MAX_LEASE_LIST`] ids, a second list in the stream); Io.
    pub fn lease_list(&mut self, seen_rev: i64, ids: &[i64]) -> Result<(), DeltaError> {
        let mut sorted = ids.to_vec();
        sorted.sort_unstable();
        let dup = sorted.windows(2).any(|w| w[0] == w[1]);
        if seen_rev < 0
            || dup
            || sorted.contains(&0)
            || sorted.len() > MAX_LEASE_LIST
            || self.st.listed
        {
            return Err(DeltaError::Misuse(format!(
                "lease list of {} ids at seen_rev {seen_rev} (ids must be non-zero and distinct, at most {MAX_LEASE_LIST}, one list per stream)",
                ids.len()
            )));
        }
        let mut p = Vec::with_capacity(8 + 8 * sorted.len());
        p.extend_from_slice(&seen_rev.to_be_bytes());
        for id in &sorted {
            p.extend_from_slice(&id.to_be_bytes());
        }
        self.record(TAG_LEASE_LIST, &p)?;
        self.st.lease_records += 1;
        self.st.listed = true;
        Ok(())
    }

    /// An anchor: a linearizable read sent at `sent_unix_ms` answered at `revision`; every
    /// commit before that time is <= `revision`.
    ///
    /// Errors: Misuse (negative revision); Io.
    pub fn anchor(&mut self, sent_unix_ms: i64, revision: i64) -> Result<(), DeltaError> {
        if revision < 0 {
            return Err(DeltaError::Misuse(format!("anchor revision {revision}")));
        }
        let mut p = [0u8; 16];
        p[..8].copy_from_slice(&sent_unix_ms.to_be_bytes());
        p[8..].copy_from_slice(&revision.to_be_bytes());
        self.record(TAG_ANCHOR, &p)?;
        if revision <= self.st.last_revision {
            let c = self.st.covered_until_ms.unwrap_or(i64::MIN);
            self.st.covered_until_ms = Some(c.max(sent_unix_ms));
        }
        Ok(())
    }

    /// Marks the open revision complete (the watch delivered all its events): it is no longer
    /// dropped by [`discard_open_revision`](Self::discard_open_revision). Events can still
    /// follow until the next [`begin_revision`](Self::begin_revision); the capture adds none.
    ///
    /// Errors: Misuse when no revision is open or it has no event.
    pub fn complete_revision(&mut self) -> Result<(), DeltaError> {
        match self.st.open_events {
            Some(0) => Err(DeltaError::Misuse(format!(
                "revision {} has no event",
                self.st.last_revision
            ))),
            Some(_) if self.at_rev.is_some() => {
                self.at_rev = None;
                Ok(())
            }
            _ => Err(DeltaError::Misuse(
                "complete_revision with no open revision".into(),
            )),
        }
    }

    /// Drops the open revision (its REV record and every record after it) by truncating the
    /// output to [`open_revision_offset`](Self::open_revision_offset), so the stream ends at
    /// the previous complete revision; returns the revision dropped (`None` when no revision
    /// is open: none begun, or the last one marked complete). Lease or anchor records written
    /// after that REV are dropped with it. Only once per revision: the revision before is
    /// complete.
    ///
    /// Errors: Io.
    pub fn discard_open_revision(&mut self) -> Result<Option<i64>, DeltaError>
    where
        W: Truncate,
    {
        let Some((st, offset)) = self.at_rev.take() else {
            return Ok(None);
        };
        let dropped = self.st.last_revision;
        self.out.truncate_to(offset)?;
        self.st = st;
        Ok(Some(dropped))
    }

    /// Writes END and returns the writer's output and the summary.
    ///
    /// Errors: Misuse when the last revision has no event; Io.
    pub fn finish(mut self) -> Result<(W, DeltaSummary), DeltaError> {
        if self.st.open_events == Some(0) {
            return Err(DeltaError::Misuse(format!(
                "revision {} has no event",
                self.st.last_revision
            )));
        }
        let before = self.st.hasher.clone().finalize();
        let mut p = [0u8; END_LEN];
        p[..8].copy_from_slice(&self.st.events.to_be_bytes());
        p[8..16].copy_from_slice(&self.st.revisions.to_be_bytes());
        p[16..24].copy_from_slice(&self.st.last_revision.to_be_bytes());
        p[24..].copy_from_slice(&before);
        self.record(TAG_END, &p)?;
        self.out.flush()?;
        let st = self.st;
        Ok((
            self.out,
            DeltaSummary {
                events: st.events,
                revisions: st.revisions,
                lease_records: st.lease_records,
                last_revision: st.last_revision,
                first_observed_ms: st.first_observed_ms,
                last_observed_ms: st.last_observed_ms,
                covered_until_ms: st.covered_until_ms,
                raw_bytes: st.written,
                raw_sha256: hex::encode(st.hasher.finalize()),
            },
        ))
    }
}

fn check_put(kv: &KvRef<'_>, main: i64) -> Result<(), String> {
    if kv.key.is_empty() {
        return Err(format!("put at revision {main} with an empty key"));
    }
    if kv.mod_revision != main {
        return Err(format!(
            "put of mod_revision {} in revision {main}",
            kv.mod_revision
        ));
    }
    if kv.version < 1 {
        return Err(format!(
            "put at revision {main} with version {}",
            kv.version
        ));
    }
    if kv.create_revision < 1 || kv.create_revision > main {
        return Err(format!(
            "put at revision {main} with create_revision {}",
            kv.create_revision
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Reader.

/// One record of a delta stream, as [`DeltaReader`] yields it (already checked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// Start of revision `main`, observed by the capture at `observed_unix_ms`.
    Rev {
        /// Main revision.
        main: i64,
        /// Capture's receive time, Unix milliseconds.
        observed_unix_ms: i64,
    },
    /// A put: key-bucket key `rev_to_bytes(main, sub)`, value the exact stored bytes.
    Put {
        /// Main revision.
        main: i64,
        /// Sub-revision (position in its revision).
        sub: i64,
        /// Canonical `KeyValue` bytes ([`KvRef::decode`] to read the fields).
        value: Vec<u8>,
    },
    /// A delete: key-bucket key `tombstone_key(main, sub)`, value `KeyValue{key}`.
    Del {
        /// Main revision.
        main: i64,
        /// Sub-revision.
        sub: i64,
        /// `tombstone_value(key)`.
        value: Vec<u8>,
    },
    /// A lease seen granted.
    LeaseGrant {
        /// Lease id.
        id: i64,
        /// Granted TTL in seconds (0 = unknown).
        ttl: i64,
        /// Revision at which it was seen.
        seen_rev: i64,
    },
    /// A lease seen gone.
    LeaseGone {
        /// Lease id.
        id: i64,
        /// Revision at which it was seen gone.
        seen_rev: i64,
    },
    /// Every lease live at `seen_rev` (format 2); any other is gone there.
    LeaseList {
        /// Revision at which the list was read.
        seen_rev: i64,
        /// Lease ids, ascending, non-zero.
        ids: Vec<i64>,
    },
    /// An anchor probe.
    Anchor {
        /// Send time of the probe, Unix milliseconds.
        sent_unix_ms: i64,
        /// Revision of its answer.
        revision: i64,
    },
    /// The end, checked against the stream (always the last record).
    End {
        /// PUT + DEL records.
        events: u64,
        /// REV records.
        revisions: u64,
        /// Last revision (`first_revision - 1` when empty).
        last_revision: i64,
        /// sha256 of all bytes before END, hex.
        sha256: String,
    },
}

impl Record {
    /// The key-bucket entry `(key, value)` of a Put or Del (moving the value out), `None`
    /// for other records.
    pub fn into_entry(self) -> Option<(Vec<u8>, Vec<u8>)> {
        match self {
            Record::Put { main, sub, value } => Some((rev_to_bytes(main, sub).to_vec(), value)),
            Record::Del { main, sub, value } => Some((tombstone_key(main, sub).to_vec(), value)),
            _ => None,
        }
    }
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    pos: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

/// Streams the records of one delta, checking every rule of the format (module doc). An
/// iterator of `Result<Record, DeltaError>`: the last `Ok` item is [`Record::End`]; after an
/// error or END it yields `None`. Memory: one record (<= [`MAX_RECORD_LEN`]).
pub struct DeltaReader<R: Read> {
    r: HashingReader<R>,
    header: DeltaHeader,
    last_revision: i64,
    open_events: Option<u64>,
    sub: i64,
    events: u64,
    revisions: u64,
    done: bool,
    /// Format 2 (LEASE_LIST allowed).
    v2: bool,
    /// A LEASE_LIST was read (at most one per stream: one per capture session).
    listed: bool,
}

fn read_exact_at<R: Read>(
    r: &mut R,
    buf: &mut [u8],
    offset: u64,
    what: &str,
) -> Result<(), DeltaError> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            corrupt(offset, format!("stream ends inside {what}"))
        } else {
            DeltaError::Io(e)
        }
    })
}

fn be_i64(b: &[u8]) -> i64 {
    i64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

impl<R: Read> DeltaReader<R> {
    /// Reads and checks magic and header.
    ///
    /// Errors: NotDelta; Corrupt (header length or JSON, first_revision <= base_revision);
    /// Io.
    pub fn new(inner: R) -> Result<Self, DeltaError> {
        let mut r = HashingReader {
            inner,
            hasher: Sha256::new(),
            pos: 0,
        };
        let mut magic = [0u8; 8];
        let n = read_full(&mut r, &mut magic)?;
        if n < 8 || (magic != MAGIC && magic != MAGIC_V1) {
            return Err(DeltaError::NotDelta {
                found: hex::encode(&magic[..n]),
            });
        }
        let mut len = [0u8; 4];
        read_exact_at(&mut r, &mut len, 8, "the header length")?;
        let len = u32::from_le_bytes(len);
        if len > MAX_HEADER_LEN {
            return Err(corrupt(
                8,
                format!("header of {len} bytes exceeds {MAX_HEADER_LEN}"),
            ));
        }
        let mut json = vec![0u8; len as usize];
        read_exact_at(&mut r, &mut json, 12, "the header")?;
        let header: DeltaHeader = serde_json::from_slice(&json)
            .map_err(|e| corrupt(12, format!("header is not delta header JSON: {e}")))?;
        header.check().map_err(|e| corrupt(12, e))?;
        Ok(DeltaReader {
            r,
            last_revision: header.first_revision - 1,
            header,
            open_events: None,
            sub: 0,
            events: 0,
            revisions: 0,
            done: false,
            v2: magic == MAGIC,
            listed: false,
        })
    }

    /// The stream's header.
    pub fn header(&self) -> &DeltaHeader {
        &self.header
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> u64 {
        self.r.pos
    }

    fn next_record(&mut self) -> Result<Record, DeltaError> {
        let offset = self.r.pos;
        let before = self.r.hasher.clone();
        let mut tag = [0u8; 1];
        if read_full(&mut self.r, &mut tag)? == 0 {
            return Err(corrupt(
                offset,
                "stream ends without an END record (truncated)",
            ));
        }
        let tag = tag[0];
        let mut len: u64 = 0;
        let mut i = 0;
        loop {
            let mut b = [0u8; 1];
            read_exact_at(&mut self.r, &mut b, offset, "a record length")?;
            len |= u64::from(b[0] & 0x7f) << (7 * i);
            i += 1;
            if b[0] & 0x80 == 0 {
                break;
            }
            if i >= 5 || len > MAX_RECORD_LEN {
                return Err(corrupt(offset, "record length varint too long"));
            }
        }
        if len > MAX_RECORD_LEN {
            return Err(corrupt(
                offset,
                format!("record length {len} exceeds {MAX_RECORD_LEN} bytes"),
            ));
        }
        let fixed = match tag {
            TAG_REV | TAG_LEASE_GONE | TAG_ANCHOR => Some(16),
            TAG_LEASE_GRANT => Some(24),
            TAG_END => Some(END_LEN as u64),
            TAG_PUT | TAG_DEL => None,
            TAG_LEASE_LIST if self.v2 => {
                if len < 8 || !len.is_multiple_of(8) {
                    return Err(corrupt(
                        offset,
                        format!("lease list of {len} bytes (8 + 8 per id expected)"),
                    ));
                }
                None
            }
            _ => return Err(corrupt(offset, format!("unknown record tag 0x{tag:02x}"))),
        };
        if let Some(f) = fixed {
            if len != f {
                return Err(corrupt(
                    offset,
                    format!("record 0x{tag:02x} has length {len}, expected {f}"),
                ));
            }
        }
        let mut payload = Vec::new();
        let got = (&mut self.r).take(len).read_to_end(&mut payload)?;
        if got as u64 != len {
            return Err(corrupt(offset, "stream ends inside a record (truncated)"));
        }
        let need_event = |s: &Self, what: &str| -> Result<(), DeltaError> {
            if s.open_events == Some(0) {
                return Err(corrupt(
                    offset,
                    format!("revision {} has no event before {what}", s.last_revision),
                ));
            }
            Ok(())
        };
        match tag {
            TAG_REV => {
                need_event(self, "the next revision")?;
                let main = be_i64(&payload);
                let want = self.last_revision.checked_add(1);
                if Some(main) != want {
                    return Err(corrupt(
                        offset,
                        format!(
                            "revision {main} does not follow {} (revisions must be contiguous)",
                            self.last_revision
                        ),
                    ));
                }
                self.last_revision = main;
                self.open_events = Some(0);
                self.sub = 0;
                self.revisions += 1;
                Ok(Record::Rev {
                    main,
                    observed_unix_ms: be_i64(&payload[8..]),
                })
            }
            TAG_PUT | TAG_DEL => {
                let Some(n) = self.open_events else {
                    return Err(corrupt(offset, "event before the first revision"));
                };
                let main = self.last_revision;
                let kv = KvRef::decode(&payload)
                    .map_err(|e| corrupt(offset, format!("value is not a KeyValue: {e}")))?;
                if tag == TAG_PUT {
                    check_put(&kv, main).map_err(|e| corrupt(offset, e))?;
                } else if kv.key.is_empty()
                    || kv
                        != (KvRef {
                            key: kv.key,
                            ..KvRef::default()
                        })
                {
                    return Err(corrupt(
                        offset,
                        "delete value is not KeyValue{key} with a non-empty key only",
                    ));
                }
                let sub = self.sub;
                self.sub += 1;
                self.open_events = Some(n + 1);
                self.events += 1;
                Ok(if tag == TAG_PUT {
                    Record::Put {
                        main,
                        sub,
                        value: payload,
                    }
                } else {
                    Record::Del {
                        main,
                        sub,
                        value: payload,
                    }
                })
            }
            TAG_LEASE_GRANT => {
                let (id, ttl, seen_rev) = (
                    be_i64(&payload),
                    be_i64(&payload[8..]),
                    be_i64(&payload[16..]),
                );
                if id == 0 || ttl < 0 || seen_rev < 0 {
                    return Err(corrupt(
                        offset,
                        format!("lease grant id {id} ttl {ttl} seen_rev {seen_rev}"),
                    ));
                }
                Ok(Record::LeaseGrant { id, ttl, seen_rev })
            }
            TAG_LEASE_GONE => {
                let (id, seen_rev) = (be_i64(&payload), be_i64(&payload[8..]));
                if id == 0 || seen_rev < 0 {
                    return Err(corrupt(
                        offset,
                        format!("lease gone id {id} seen_rev {seen_rev}"),
                    ));
                }
                Ok(Record::LeaseGone { id, seen_rev })
            }
            TAG_LEASE_LIST => {
                if std::mem::replace(&mut self.listed, true) {
                    return Err(corrupt(offset, "a second lease list in one stream"));
                }
                let seen_rev = be_i64(&payload);
                let ids: Vec<i64> = payload[8..].chunks_exact(8).map(be_i64).collect();
                if seen_rev < 0 || ids.contains(&0) || ids.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(corrupt(
                        offset,
                        format!(
                            "lease list at seen_rev {seen_rev}: ids must be non-zero and ascending"
                        ),
                    ));
                }
                Ok(Record::LeaseList { seen_rev, ids })
            }
            TAG_ANCHOR => {
                let revision = be_i64(&payload[8..]);
                if revision < 0 {
                    return Err(corrupt(offset, format!("anchor revision {revision}")));
                }
                Ok(Record::Anchor {
                    sent_unix_ms: be_i64(&payload),
                    revision,
                })
            }
            _ => {
                need_event(self, "END")?;
                let events = u64::from_be_bytes(payload[..8].try_into().expect("8"));
                let revisions = u64::from_be_bytes(payload[8..16].try_into().expect("8"));
                let last_revision = be_i64(&payload[16..]);
                let sha = &payload[24..];
                let before = before.finalize();
                if (events, revisions, last_revision)
                    != (self.events, self.revisions, self.last_revision)
                {
                    return Err(corrupt(
                        offset,
                        format!(
                            "END says {events} events, {revisions} revisions, last r{last_revision}; the stream has {}, {}, r{}",
                            self.events, self.revisions, self.last_revision
                        ),
                    ));
                }
                if sha != before.as_slice() {
                    return Err(corrupt(
                        offset,
                        format!(
                            "sha256 mismatch: END says {}, the bytes before it hash to {}",
                            hex::encode(sha),
                            hex::encode(before)
                        ),
                    ));
                }
                let mut extra = [0u8; 1];
                if read_full(&mut self.r, &mut extra)? != 0 {
                    return Err(corrupt(self.r.pos - 1, "bytes after the END record"));
                }
                Ok(Record::End {
                    events,
                    revisions,
                    last_revision,
                    sha256: hex::encode(sha),
                })
            }
        }
    }

    /// sha256 (hex) of every byte read so far: after END, the stream's `raw_sha256`.
    pub fn sha256_so_far(&self) -> String {
        hex::encode(self.r.hasher.clone().finalize())
    }
}

/// Reads until `buf` is full or EOF; returns the bytes read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl<R: Read> Iterator for DeltaReader<R> {
    type Item = Result<Record, DeltaError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.next_record();
        if matches!(r, Err(_) | Ok(Record::End { .. })) {
            self.done = true;
        }
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> DeltaHeader {
        DeltaHeader {
            cluster_id: "cdf818194e3a8c32".into(),
            base_id: "20261122T230000Z-r0000000000000010".into(),
            base_revision: 10,
            seq: 0,
            first_revision: 11,
        }
    }

    fn kv(key: &[u8], create: i64, rev: i64, version: i64, value: &[u8], lease: i64) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            create_revision: create,
            mod_revision: rev,
            version,
            value: value.to_vec(),
            lease,
        }
    }

    /// r11: put a (new), r12: put a (overwrite, lease) + put b + delete c, with lease and
    /// anchor records.
    fn sample() -> (Vec<u8>, DeltaSummary) {
        let mut w = DeltaWriter::new(Vec::new(), header()).unwrap();
        let at = w.bytes_written();
        assert_eq!(w.begin_revision(11, 1000).unwrap(), at);
        w.put(kv(b"a", 11, 11, 1, b"x", 0).as_ref()).unwrap();
        w.begin_revision(12, 2000).unwrap();
        w.lease_grant(0x1234, 300, 12).unwrap();
        w.put(kv(b"a", 11, 12, 2, b"y", 0x1234).as_ref()).unwrap();
        w.put(kv(b"b", 12, 12, 1, b"", 0).as_ref()).unwrap();
        w.delete(b"c").unwrap();
        w.anchor(2500, 12).unwrap();
        w.lease_gone(0x99, 12).unwrap();
        w.lease_list(12, &[0x1234, 0x7]).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn keyvalue_bytes_are_gogoproto() {
        let b = kv(b"foo", 2, 3, 2, b"bar", 0).encode();
        assert_eq!(
            b,
            [0x0a, 3, b'f', b'o', b'o', 0x10, 2, 0x18, 3, 0x20, 2, 0x2a, 3, b'b', b'a', b'r']
        );
        assert_eq!(
            KvRef::decode(&b).unwrap().to_owned(),
            kv(b"foo", 2, 3, 2, b"bar", 0)
        );
        // Lease 300 as a two-byte varint; an empty value is omitted.
        let b = kv(b"k", 5, 5, 1, b"", 300).encode();
        assert_eq!(
            b,
            [0x0a, 1, b'k', 0x10, 5, 0x18, 5, 0x20, 1, 0x30, 0xac, 0x02]
        );
        // A negative int64 is a 10-byte two's-complement varint and round-trips.
        let b = kv(b"k", 5, 5, 1, b"", -2).encode();
        assert_eq!(b.len(), 9 + 1 + 10);
        assert_eq!(KvRef::decode(&b).unwrap().lease, -2);
        // Tombstone: the key only.
        assert_eq!(tombstone_value(b"foo"), [0x0a, 3, b'f', b'o', b'o']);
        // leasepb.Lease{ID: 0x1234, TTL: 300}.
        assert_eq!(
            lease_value(0x1234, 300, 0),
            [0x08, 0xb4, 0x24, 0x10, 0xac, 0x02]
        );
        assert_eq!(decode_lease(&lease_value(7, 5, 3)).unwrap(), (7, 5, 3));
        assert_eq!(lease_key(0x0102), [0, 0, 0, 0, 0, 0, 1, 2]);
        // Non-canonical encodings are refused: zero field, order, unknown field, long varint.
        for bad in [
            &[0x0a, 1, b'k', 0x10, 0][..],
            &[0x10, 1, 0x0a, 1, b'k'],
            &[0x0a, 1, b'k', 0x38, 1],
            &[0x0a, 1, b'k', 0x10, 0x81, 0x00],
            &[0x0a, 5, b'k'],
            &[0x0a, 1, b'k', 0x0a, 1, b'k'],
        ] {
            assert!(KvRef::decode(bad).is_err(), "{bad:02x?}");
        }
    }

    #[test]
    fn revision_keys_sort_like_revisions() {
        let revs = [
            (0, 0),
            (1, 0),
            (1, 1),
            (255, 3),
            (256, 0),
            (1 << 40, 7),
            (i64::MAX, 0),
        ];
        let keys: Vec<_> = revs.iter().map(|&(m, s)| rev_to_bytes(m, s)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(bytes_to_rev(&rev_to_bytes(5, 2)), Some((5, 2, false)));
        assert_eq!(bytes_to_rev(&tombstone_key(5, 2)), Some((5, 2, true)));
        assert_eq!(&tombstone_key(5, 2)[..17], &rev_to_bytes(5, 2)[..]);
        assert_eq!(bytes_to_rev(b"short"), None);
        // (m, s) + 't' sorts after (m, s) and before (m, s + 1).
        assert!(tombstone_key(5, 2)[..] > rev_to_bytes(5, 2)[..]);
        assert!(tombstone_key(5, 2)[..] < rev_to_bytes(5, 3)[..]);
    }

    #[test]
    fn writer_and_reader_round_trip() {
        let (bytes, sum) = sample();
        assert_eq!(
            (
                sum.events,
                sum.revisions,
                sum.lease_records,
                sum.last_revision
            ),
            (4, 2, 3, 12)
        );
        assert_eq!(
            (sum.first_observed_ms, sum.last_observed_ms),
            (Some(1000), Some(2000))
        );
        assert_eq!(sum.covered_until_ms, Some(2500));
        assert_eq!(sum.raw_bytes, bytes.len() as u64);
        assert_eq!(sum.raw_sha256, hex::encode(Sha256::digest(&bytes)));
        let mut r = DeltaReader::new(&bytes[..]).unwrap();
        assert_eq!(r.header(), &header());
        let recs: Vec<Record> = (&mut r).collect::<Result<_, _>>().unwrap();
        assert_eq!(r.sha256_so_far(), sum.raw_sha256);
        let entries: Vec<(Vec<u8>, Vec<u8>)> = recs
            .iter()
            .cloned()
            .filter_map(Record::into_entry)
            .collect();
        assert_eq!(
            entries,
            vec![
                (
                    rev_to_bytes(11, 0).to_vec(),
                    kv(b"a", 11, 11, 1, b"x", 0).encode()
                ),
                (
                    rev_to_bytes(12, 0).to_vec(),
                    kv(b"a", 11, 12, 2, b"y", 0x1234).encode()
                ),
                (
                    rev_to_bytes(12, 1).to_vec(),
                    kv(b"b", 12, 12, 1, b"", 0).encode()
                ),
                (tombstone_key(12, 2).to_vec(), tombstone_value(b"c")),
            ]
        );
        assert!(recs.contains(&Record::LeaseGrant {
            id: 0x1234,
            ttl: 300,
            seen_rev: 12
        }));
        assert!(recs.contains(&Record::LeaseGone {
            id: 0x99,
            seen_rev: 12
        }));
        assert!(recs.contains(&Record::Anchor {
            sent_unix_ms: 2500,
            revision: 12
        }));
        // Written sorted.
        assert!(recs.contains(&Record::LeaseList {
            seen_rev: 12,
            ids: vec![0x7, 0x1234]
        }));
        assert!(matches!(
            recs.last(),
            Some(Record::End {
                events: 4,
                revisions: 2,
                last_revision: 12,
                ..
            })
        ));
        // An empty delta: last = first - 1.
        let (e, s) = DeltaWriter::new(Vec::new(), header())
            .unwrap()
            .finish()
            .unwrap();
        assert_eq!((s.events, s.last_revision), (0, 10));
        let recs: Vec<Record> = DeltaReader::new(&e[..])
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(matches!(
            recs[..],
            [Record::End {
                last_revision: 10,
                ..
            }]
        ));
    }

    /// What a break stores of an idle spill: anchors covering time and lease records count,
    /// an anchor past the last revision does not.
    #[test]
    fn an_idle_stream_holds_records_once_it_covers_time_or_leases() {
        let mut w = DeltaWriter::new(Vec::new(), header()).unwrap();
        assert!(!w.holds_records());
        w.anchor(100, 11).unwrap();
        assert!(!w.holds_records(), "anchor above the last revision (10)");
        w.anchor(100, 10).unwrap();
        assert!(w.holds_records());
        let mut w = DeltaWriter::new(Vec::new(), header()).unwrap();
        w.lease_list(10, &[]).unwrap();
        assert!(w.holds_records());
    }

    #[test]
    fn writer_refuses_invalid_streams() {
        let mut w = DeltaWriter::new(Vec::new(), header()).unwrap();
        assert!(
            w.put(kv(b"a", 11, 11, 1, b"", 0).as_ref()).is_err(),
            "put before REV"
        );
        assert!(w.begin_revision(12, 0).is_err(), "not first_revision");
        w.begin_revision(11, 0).unwrap();
        assert!(w.begin_revision(12, 0).is_err(), "empty revision");
        assert!(
            w.put(kv(b"a", 11, 10, 1, b"", 0).as_ref()).is_err(),
            "mod_revision"
        );
        assert!(
            w.put(kv(b"a", 12, 11, 1, b"", 0).as_ref()).is_err(),
            "create > main"
        );
        assert!(
            w.put(kv(b"a", 11, 11, 0, b"", 0).as_ref()).is_err(),
            "version 0"
        );
        assert!(w.delete(b"").is_err());
        assert!(w.lease_list(5, &[3, 0]).is_err(), "lease id 0");
        assert!(w.lease_list(5, &[3, 4, 3]).is_err(), "duplicate lease id");
        assert!(w.lease_list(-1, &[3]).is_err(), "negative revision");
        w.lease_list(5, &[3]).unwrap();
        assert!(w.lease_list(5, &[3]).is_err(), "a second list");
        assert!(w.finish().is_err(), "open revision without events");
        let mut bad = header();
        bad.first_revision = 10;
        assert!(DeltaWriter::new(Vec::new(), bad).is_err());
    }

    #[test]
    fn discard_drops_the_incomplete_revision() {
        for file in [false, true] {
            let d = tempfile::tempdir().unwrap();
            let path = d.path().join("spill");
            let mut expected = DeltaWriter::new(Vec::new(), header()).unwrap();
            expected.begin_revision(11, 5).unwrap();
            expected.put(kv(b"a", 11, 11, 1, b"x", 0).as_ref()).unwrap();
            expected.begin_revision(12, 6).unwrap();
            expected.delete(b"a").unwrap();
            let (expected, _) = expected.finish().unwrap();
            macro_rules! run {
                ($w:expr) => {{
                    let mut w = $w;
                    w.begin_revision(11, 5).unwrap();
                    w.put(kv(b"a", 11, 11, 1, b"x", 0).as_ref()).unwrap();
                    let off = w.begin_revision(12, 6).unwrap();
                    w.put(kv(b"b", 12, 12, 1, b"half", 0).as_ref()).unwrap();
                    w.lease_grant(7, 1, 12).unwrap();
                    assert_eq!(w.open_revision_offset(), Some(off));
                    assert_eq!(w.discard_open_revision().unwrap(), Some(12));
                    assert_eq!(w.bytes_written(), off);
                    assert_eq!(w.last_revision(), 11);
                    // The stream continues with revision 12 again.
                    w.begin_revision(12, 6).unwrap();
                    w.delete(b"a").unwrap();
                    w.finish().unwrap().0
                }};
            }
            let got = if file {
                let f = std::fs::File::create(&path).unwrap();
                let w = run!(DeltaWriter::new(io::BufWriter::new(f), header()).unwrap());
                drop(w);
                std::fs::read(&path).unwrap()
            } else {
                run!(DeltaWriter::new(Vec::new(), header()).unwrap())
            };
            assert_eq!(got, expected, "file: {file}");
            DeltaReader::new(&got[..])
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
        }
    }

    /// A revision marked complete stays when the watch breaks after it (the capture discards
    /// on every reconnect and at a chain's end).
    #[test]
    fn a_complete_revision_is_not_discarded() {
        let mut w = DeltaWriter::new(Vec::new(), header()).unwrap();
        assert!(w.complete_revision().is_err(), "nothing open");
        w.begin_revision(11, 5).unwrap();
        assert!(w.complete_revision().is_err(), "no event");
        w.put(kv(b"a", 11, 11, 1, b"x", 0).as_ref()).unwrap();
        w.complete_revision().unwrap();
        assert!(w.complete_revision().is_err(), "already complete");
        assert_eq!(w.open_revision_offset(), None);
        assert_eq!(w.discard_open_revision().unwrap(), None);
        assert_eq!(w.last_revision(), 11);
        w.begin_revision(12, 6).unwrap();
        w.delete(b"a").unwrap();
        assert_eq!(w.discard_open_revision().unwrap(), Some(12));
        assert_eq!(w.last_revision(), 11);
        let (out, sum) = w.finish().unwrap();
        assert_eq!((sum.revisions, sum.events, sum.last_revision), (1, 1, 11));
        let recs = read_all(&out).unwrap();
        assert_eq!(
            recs.iter()
                .filter(|r| matches!(r, Record::Put { .. }))
                .count(),
            1
        );
    }

    fn read_all(b: &[u8]) -> Result<Vec<Record>, DeltaError> {
        DeltaReader::new(b)?.collect()
    }

    fn err_of(b: &[u8]) -> String {
        read_all(b).unwrap_err().to_string()
    }

    /// Re-frames `records` (tag, payload) after a valid magic + header, with a correct END.
    fn stream(records: &[(u8, Vec<u8>)], end: Option<(u64, u64, i64)>) -> Vec<u8> {
        let w = DeltaWriter::new(Vec::new(), header()).unwrap();
        let mut b = w.out;
        for (tag, p) in records {
            b.push(*tag);
            put_varint(&mut b, p.len() as u64);
            b.extend_from_slice(p);
        }
        if let Some((e, r, l)) = end {
            let sha = Sha256::digest(&b);
            b.push(TAG_END);
            b.push(END_LEN as u8);
            b.extend_from_slice(&e.to_be_bytes());
            b.extend_from_slice(&r.to_be_bytes());
            b.extend_from_slice(&l.to_be_bytes());
            b.extend_from_slice(&sha);
        }
        b
    }

    fn rev(main: i64) -> (u8, Vec<u8>) {
        let mut p = main.to_be_bytes().to_vec();
        p.extend_from_slice(&0i64.to_be_bytes());
        (TAG_REV, p)
    }

    #[test]
    fn reader_checks_every_rule() {
        let (good, _) = sample();
        // Truncated anywhere: corrupt, never a silent short stream.
        for cut in [good.len() - 1, good.len() - 57, 40, 13] {
            let e = err_of(&good[..cut]);
            assert!(
                e.contains("corrupt") && (e.contains("truncated") || e.contains("ends inside")),
                "{cut}: {e}"
            );
        }
        // Flipped byte in a value: sha256 mismatch at END (the value still decodes).
        let mut flipped = good.clone();
        let pos = flipped.iter().rposition(|&b| b == b'y').unwrap();
        flipped[pos] = b'z';
        assert!(err_of(&flipped).contains("sha256 mismatch"));
        // Bytes after END.
        let mut extra = good.clone();
        extra.push(0);
        assert!(err_of(&extra).contains("after the END"));
        // Not a delta, or of a format after 2.
        assert!(matches!(
            read_all(b"LBPITR\0\x03rest"),
            Err(DeltaError::NotDelta { .. })
        ));
        // A huge length is refused before allocating.
        let mut huge = stream(&[rev(11)], None);
        huge.push(TAG_PUT);
        put_varint(&mut huge, MAX_RECORD_LEN + 1);
        assert!(err_of(&huge).contains("exceeds"), "{}", err_of(&huge));
        let mut huge = stream(&[rev(11)], None);
        huge.extend_from_slice(&[TAG_PUT, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert!(err_of(&huge).contains("corrupt"));
        let put11 = (TAG_PUT, kv(b"a", 11, 11, 1, b"x", 0).encode());
        // Gap in revisions.
        let e = err_of(&stream(
            &[rev(11), put11.clone(), rev(13)],
            Some((1, 2, 13)),
        ));
        assert!(e.contains("does not follow 11"), "{e}");
        // First revision not first_revision.
        assert!(err_of(&stream(&[rev(12)], None)).contains("does not follow 10"));
        // Revision without event.
        assert!(err_of(&stream(&[rev(11), rev(12)], None)).contains("no event"));
        assert!(err_of(&stream(&[rev(11)], Some((0, 1, 11)))).contains("no event"));
        // Event before REV.
        assert!(err_of(&stream(std::slice::from_ref(&put11), None))
            .contains("before the first revision"));
        // PUT of another revision, version 0, non-canonical value.
        let e = err_of(&stream(
            &[rev(11), (TAG_PUT, kv(b"a", 5, 9, 1, b"", 0).encode())],
            None,
        ));
        assert!(e.contains("mod_revision 9"), "{e}");
        let e = err_of(&stream(
            &[rev(11), (TAG_PUT, vec![0x0a, 1, b'a', 0x18, 11, 0x10, 11])],
            None,
        ));
        assert!(e.contains("not a KeyValue"), "{e}");
        // DEL with more than the key.
        let e = err_of(&stream(
            &[rev(11), (TAG_DEL, kv(b"a", 0, 11, 0, b"", 0).encode())],
            None,
        ));
        assert!(e.contains("delete value"), "{e}");
        // END counts that do not match.
        let e = err_of(&stream(&[rev(11), put11.clone()], Some((2, 1, 11))));
        assert!(e.contains("END says 2 events"), "{e}");
        // Fixed-size record with the wrong length; unknown tag.
        assert!(err_of(&stream(&[(TAG_REV, vec![0; 15])], None)).contains("expected 16"));
        assert!(err_of(&stream(&[(0x42, vec![])], None)).contains("unknown record tag"));
        // Lease lists: 8 + 8n bytes, ids non-zero and ascending, revision not negative.
        let list = |seen: i64, ids: &[i64]| {
            let mut p = seen.to_be_bytes().to_vec();
            for id in ids {
                p.extend_from_slice(&id.to_be_bytes());
            }
            (TAG_LEASE_LIST, p)
        };
        let ok = |l: (u8, Vec<u8>)| stream(&[l, rev(11), put11.clone()], Some((1, 1, 11)));
        assert_eq!(
            read_all(&ok(list(9, &[]))).unwrap()[0],
            Record::LeaseList {
                seen_rev: 9,
                ids: vec![]
            }
        );
        for bad in [
            list(9, &[2, 1]),
            list(9, &[1, 1]),
            list(9, &[0, 1]),
            list(-1, &[1]),
        ] {
            let e = err_of(&ok(bad));
            assert!(e.contains("ids must be non-zero and ascending"), "{e}");
        }
        let e = err_of(&ok((TAG_LEASE_LIST, vec![0; 12])));
        assert!(e.contains("8 + 8 per id"), "{e}");
        let e = err_of(&ok((TAG_LEASE_LIST, vec![0; 4])));
        assert!(e.contains("8 + 8 per id"), "{e}");
        let e = err_of(&stream(
            &[list(9, &[1]), list(9, &[1]), rev(11), put11.clone()],
            Some((1, 1, 11)),
        ));
        assert!(e.contains("a second lease list"), "{e}");
        // Format 1 streams are read, without lease lists.
        let mut v1 = ok(list(9, &[1]));
        v1[..8].copy_from_slice(&MAGIC_V1);
        let e = err_of(&v1);
        assert!(e.contains("unknown record tag 0x07"), "{e}");
        let mut v1 = stream(&[rev(11), put11.clone()], None);
        v1[..8].copy_from_slice(&MAGIC_V1);
        let sha = Sha256::digest(&v1);
        v1.push(TAG_END);
        v1.push(END_LEN as u8);
        for n in [1u64, 1] {
            v1.extend_from_slice(&n.to_be_bytes());
        }
        v1.extend_from_slice(&11i64.to_be_bytes());
        v1.extend_from_slice(&sha);
        assert_eq!(read_all(&v1).unwrap().len(), 3);
        // A valid hand-made stream passes (the helper itself is right).
        read_all(&stream(&[rev(11), put11], Some((1, 1, 11)))).unwrap();
    }
}
