//! bbolt on-disk format: page headers, meta, branch/leaf elements, freelist, bucket headers.
//!
//! Pure, bounds-checked parsing of byte slices; every malformed input yields a
//! [`SnapshotError::Corrupt`] naming the page, never a panic. All integers are little-endian
//! (bbolt writes native order; every platform etcd ships for is little-endian).
//!
//! Source: go.etcd.io/bbolt `internal/common/page.go`, `internal/common/meta.go`,
//! `internal/common/inlinebucket.go`, `internal/freelist/shared.go` (`Read`), `db.go`.

use super::SnapshotError;

/// Size of a page header: id u64, flags u16, count u16, overflow u32 (bbolt `PageHeaderSize`).
pub const PAGE_HEADER_SIZE: usize = 16;
/// Size of a branch element: pos u32, ksize u32, pgid u64.
pub const BRANCH_ELEMENT_SIZE: usize = 16;
/// Size of a leaf element: flags u32, pos u32, ksize u32, vsize u32.
pub const LEAF_ELEMENT_SIZE: usize = 16;
/// Size of a bucket header (`InBucket`): root pgid u64, sequence u64.
pub const BUCKET_HEADER_SIZE: usize = 16;
/// Size of the meta struct that follows the page header of pages 0 and 1.
pub const META_SIZE: usize = 64;
/// Offset of the checksum inside the meta struct: FNV-1a 64 covers bytes `[0, 56)`.
pub const META_CHECKSUM_OFFSET: usize = 56;

/// Page flag: branch page.
pub const BRANCH_PAGE_FLAG: u16 = 0x01;
/// Page flag: leaf page.
pub const LEAF_PAGE_FLAG: u16 = 0x02;
/// Page flag: meta page.
pub const META_PAGE_FLAG: u16 = 0x04;
/// Page flag: freelist page.
pub const FREELIST_PAGE_FLAG: u16 = 0x10;
/// Leaf element flag: the value is a bucket header (plus an inline page when root == 0).
pub const BUCKET_LEAF_FLAG: u32 = 0x01;

/// bbolt magic number (`common.Magic`).
pub const MAGIC: u32 = 0xED0C_DAED;
/// bbolt data file format version (`common.Version`).
pub const VERSION: u32 = 2;
/// Meta freelist value meaning "freelist not synced" (`common.PgidNoFreelist`).
pub const PGID_NO_FREELIST: u64 = u64::MAX;

/// Smallest and largest page size accepted (bbolt uses the OS page size, 4096 on amd64).
pub const MIN_PAGE_SIZE: u32 = 512;
/// See [`MIN_PAGE_SIZE`].
pub const MAX_PAGE_SIZE: u32 = 1 << 20;

pub(crate) fn corrupt(page: u64, reason: impl Into<String>) -> SnapshotError {
    SnapshotError::Corrupt {
        page,
        reason: reason.into(),
    }
}

#[inline]
pub(crate) fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    b.get(off..off.checked_add(2)?)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
}
#[inline]
pub(crate) fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off.checked_add(4)?)
        .map(|s| u32::from_le_bytes(s.try_into().unwrap_or([0; 4])))
}
#[inline]
pub(crate) fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    b.get(off..off.checked_add(8)?)
        .map(|s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
}

/// A page header (`common.Page`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageHeader {
    /// Page id as written in the page.
    pub id: u64,
    /// Page type flags (`BRANCH_PAGE_FLAG`, ...).
    pub flags: u16,
    /// Number of elements (0xFFFF in a freelist page: the count is in the first u64).
    pub count: u16,
    /// Number of extra pages that follow this one (the page spans `overflow + 1` pages).
    pub overflow: u32,
}

impl PageHeader {
    /// Parses the 16-byte header at the start of `b`; `page` names the page in errors.
    pub fn parse(b: &[u8], page: u64) -> Result<PageHeader, SnapshotError> {
        if b.len() < PAGE_HEADER_SIZE {
            return Err(corrupt(
                page,
                format!("page header needs 16 bytes, have {}", b.len()),
            ));
        }
        Ok(PageHeader {
            id: u64_at(b, 0).unwrap_or(0),
            flags: u16_at(b, 8).unwrap_or(0),
            count: u16_at(b, 10).unwrap_or(0),
            overflow: u32_at(b, 12).unwrap_or(0),
        })
    }

    /// Encodes the header into the first 16 bytes of `b` (which must be at least that long).
    pub fn write(&self, b: &mut [u8]) {
        b[0..8].copy_from_slice(&self.id.to_le_bytes());
        b[8..10].copy_from_slice(&self.flags.to_le_bytes());
        b[10..12].copy_from_slice(&self.count.to_le_bytes());
        b[12..16].copy_from_slice(&self.overflow.to_le_bytes());
    }

    /// Human name of the page type, as bbolt's `Page.Typ()` prints it.
    pub fn typ(&self) -> String {
        match self.flags {
            BRANCH_PAGE_FLAG => "branch".into(),
            LEAF_PAGE_FLAG => "leaf".into(),
            META_PAGE_FLAG => "meta".into(),
            FREELIST_PAGE_FLAG => "freelist".into(),
            f => format!("unknown<{f:02x}>"),
        }
    }
}

/// The meta struct of page 0 / page 1 (`common.Meta`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub magic: u32,
    pub version: u32,
    pub page_size: u32,
    pub flags: u32,
    /// Root page of the root bucket.
    pub root: u64,
    /// Sequence of the root bucket.
    pub sequence: u64,
    /// First page of the freelist, or [`PGID_NO_FREELIST`].
    pub freelist: u64,
    /// High water mark: number of pages in use; `tx.Size() = pgid * page_size`.
    pub pgid: u64,
    pub txid: u64,
    pub checksum: u64,
}

/// FNV-1a 64 (the `hash/fnv` New64a that bbolt uses for the meta checksum).
pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl Meta {
    /// Parses the meta struct from `b`, which starts at the meta struct (page offset 16).
    pub fn parse(b: &[u8], page: u64) -> Result<Meta, SnapshotError> {
        if b.len() < META_SIZE {
            return Err(corrupt(
                page,
                format!("meta needs 64 bytes, have {}", b.len()),
            ));
        }
        let g = |o| u64_at(b, o).unwrap_or(0);
        let g32 = |o| u32_at(b, o).unwrap_or(0);
        Ok(Meta {
            magic: g32(0),
            version: g32(4),
            page_size: g32(8),
            flags: g32(12),
            root: g(16),
            sequence: g(24),
            freelist: g(32),
            pgid: g(40),
            txid: g(48),
            checksum: g(56),
        })
    }

    /// Encodes the 64-byte meta struct (checksum as stored in `self`).
    pub fn encode(&self) -> [u8; META_SIZE] {
        let mut b = [0u8; META_SIZE];
        b[0..4].copy_from_slice(&self.magic.to_le_bytes());
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..12].copy_from_slice(&self.page_size.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.root.to_le_bytes());
        b[24..32].copy_from_slice(&self.sequence.to_le_bytes());
        b[32..40].copy_from_slice(&self.freelist.to_le_bytes());
        b[40..48].copy_from_slice(&self.pgid.to_le_bytes());
        b[48..56].copy_from_slice(&self.txid.to_le_bytes());
        b[56..64].copy_from_slice(&self.checksum.to_le_bytes());
        b
    }

    /// The checksum bbolt computes: FNV-1a 64 over the first 56 bytes (`Meta.Sum64`).
    pub fn sum64(&self) -> u64 {
        fnv1a64(&self.encode()[..META_CHECKSUM_OFFSET])
    }

    /// bbolt `Meta.Validate`: magic, version, checksum. Returns the reason when invalid.
    pub fn validate(&self) -> Result<(), String> {
        if self.magic != MAGIC {
            Err(format!(
                "bad magic {:#010x} (want {MAGIC:#010x})",
                self.magic
            ))
        } else if self.version != VERSION {
            Err(format!(
                "unsupported bbolt version {} (want {VERSION})",
                self.version
            ))
        } else if self.checksum != self.sum64() {
            Err(format!(
                "meta checksum mismatch: stored {:#018x}, computed {:#018x}",
                self.checksum,
                self.sum64()
            ))
        } else {
            Ok(())
        }
    }
}

/// One element of a leaf page, borrowing the page buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeafElem<'a> {
    pub flags: u32,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

impl LeafElem<'_> {
    /// True for a nested bucket entry (`bucketLeafFlag`).
    pub fn is_bucket(&self) -> bool {
        self.flags & BUCKET_LEAF_FLAG != 0
    }
}

/// One element of a branch page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BranchElem<'a> {
    pub key: &'a [u8],
    pub pgid: u64,
}

/// Range of the element table after the header, checked against the buffer.
fn elements_end(
    buf: &[u8],
    count: u16,
    elem_size: usize,
    page: u64,
) -> Result<usize, SnapshotError> {
    let end = PAGE_HEADER_SIZE + usize::from(count) * elem_size;
    if end > buf.len() {
        return Err(corrupt(
            page,
            format!(
                "{count} elements need {end} bytes but the page has {}",
                buf.len()
            ),
        ));
    }
    Ok(end)
}

/// Parses leaf element `i` of a leaf page held in `buf` (header included).
/// Key and value must lie inside `buf` (`pos` is relative to the element's own offset).
pub fn leaf_elem(buf: &[u8], i: usize, page: u64) -> Result<LeafElem<'_>, SnapshotError> {
    let off = PAGE_HEADER_SIZE + i * LEAF_ELEMENT_SIZE;
    let (Some(flags), Some(pos), Some(ksize), Some(vsize)) = (
        u32_at(buf, off),
        u32_at(buf, off + 4),
        u32_at(buf, off + 8),
        u32_at(buf, off + 12),
    ) else {
        return Err(corrupt(
            page,
            format!("leaf element {i} lies outside the page"),
        ));
    };
    let kstart = off as u64 + u64::from(pos);
    let kend = kstart + u64::from(ksize);
    let vend = kend + u64::from(vsize);
    if vend > buf.len() as u64 {
        return Err(corrupt(
            page,
            format!(
                "leaf element {i}: key/value [{kstart}, {vend}) beyond the page end {}",
                buf.len()
            ),
        ));
    }
    let (ks, ke, ve) = (kstart as usize, kend as usize, vend as usize);
    Ok(LeafElem {
        flags,
        key: &buf[ks..ke],
        value: &buf[ke..ve],
    })
}

/// Parses branch element `i` of a branch page held in `buf`.
pub fn branch_elem(buf: &[u8], i: usize, page: u64) -> Result<BranchElem<'_>, SnapshotError> {
    let off = PAGE_HEADER_SIZE + i * BRANCH_ELEMENT_SIZE;
    let (Some(pos), Some(ksize), Some(pgid)) =
        (u32_at(buf, off), u32_at(buf, off + 4), u64_at(buf, off + 8))
    else {
        return Err(corrupt(
            page,
            format!("branch element {i} lies outside the page"),
        ));
    };
    let kstart = off as u64 + u64::from(pos);
    let kend = kstart + u64::from(ksize);
    if kend > buf.len() as u64 {
        return Err(corrupt(
            page,
            format!(
                "branch element {i}: key [{kstart}, {kend}) beyond the page end {}",
                buf.len()
            ),
        ));
    }
    Ok(BranchElem {
        key: &buf[kstart as usize..kend as usize],
        pgid,
    })
}

/// Checks that the element table of a leaf or branch page fits in `buf`.
pub fn check_element_table(buf: &[u8], hdr: &PageHeader, page: u64) -> Result<(), SnapshotError> {
    let size = if hdr.flags == BRANCH_PAGE_FLAG {
        BRANCH_ELEMENT_SIZE
    } else {
        LEAF_ELEMENT_SIZE
    };
    elements_end(buf, hdr.count, size, page).map(|_| ())
}

/// Parses a bucket value: header (root pgid, sequence) and, when root == 0, the inline page.
pub fn bucket_header(value: &[u8], page: u64, key: &[u8]) -> Result<(u64, u64), SnapshotError> {
    match (u64_at(value, 0), u64_at(value, 8)) {
        (Some(root), Some(seq)) => Ok((root, seq)),
        _ => Err(corrupt(
            page,
            format!(
                "bucket {:?}: value of {} bytes is shorter than a bucket header (16)",
                String::from_utf8_lossy(key),
                value.len()
            ),
        )),
    }
}

/// Reads the page ids of a freelist page held in `buf` (`freelist.Read`): the count is the
/// header count, or, when it is 0xFFFF, the first u64 after the header.
pub fn freelist_ids(buf: &[u8], page: u64) -> Result<Vec<u64>, SnapshotError> {
    let hdr = PageHeader::parse(buf, page)?;
    if hdr.flags & FREELIST_PAGE_FLAG == 0 {
        return Err(corrupt(
            page,
            format!(
                "freelist page has type {} (flags {:#x})",
                hdr.typ(),
                hdr.flags
            ),
        ));
    }
    let (start, count) = if hdr.count == 0xFFFF {
        let c = u64_at(buf, PAGE_HEADER_SIZE)
            .ok_or_else(|| corrupt(page, "freelist overflow count lies outside the page"))?;
        (PAGE_HEADER_SIZE + 8, c)
    } else {
        (PAGE_HEADER_SIZE, u64::from(hdr.count))
    };
    let avail = (buf.len().saturating_sub(start) / 8) as u64;
    if count > avail {
        return Err(corrupt(
            page,
            format!("freelist claims {count} ids but the page holds at most {avail}"),
        ));
    }
    let mut ids = Vec::with_capacity(count as usize);
    for i in 0..count as usize {
        ids.push(u64_at(buf, start + i * 8).unwrap_or(0));
    }
    Ok(ids)
}

/// Bytes needed for a freelist page listing `n` ids (`freelist.EstimatedWritePageSize`).
pub fn freelist_size(n: usize) -> usize {
    let extra = usize::from(n >= 0xFFFF);
    PAGE_HEADER_SIZE + 8 * (n + extra)
}

/// Encodes a freelist page (header + ids) into `buf` (zeroed, at least [`freelist_size`]).
pub fn write_freelist(buf: &mut [u8], id: u64, overflow: u32, ids: &[u64]) {
    let (count, mut off) = if ids.len() >= 0xFFFF {
        buf[PAGE_HEADER_SIZE..PAGE_HEADER_SIZE + 8]
            .copy_from_slice(&(ids.len() as u64).to_le_bytes());
        (0xFFFF, PAGE_HEADER_SIZE + 8)
    } else {
        (ids.len() as u16, PAGE_HEADER_SIZE)
    };
    PageHeader {
        id,
        flags: FREELIST_PAGE_FLAG,
        count,
        overflow,
    }
    .write(buf);
    for id in ids {
        buf[off..off + 8].copy_from_slice(&id.to_le_bytes());
        off += 8;
    }
}

/// A key/value entry to be written into a leaf (`flags` = [`BUCKET_LEAF_FLAG`] for buckets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub flags: u32,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// Bytes a leaf element occupies in a page (element + key + value).
pub fn leaf_entry_size(e: &Entry) -> usize {
    LEAF_ELEMENT_SIZE + e.key.len() + e.value.len()
}

/// Encodes a leaf page holding `entries` (sorted by key) into a new buffer of `len` bytes
/// (>= header + elements + data), as bbolt's `node.write` lays it out: element table first,
/// then the keys and values in the same order.
pub fn encode_leaf(id: u64, overflow: u32, entries: &[Entry], len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    PageHeader {
        id,
        flags: LEAF_PAGE_FLAG,
        count: entries.len() as u16,
        overflow,
    }
    .write(&mut buf);
    let mut data = PAGE_HEADER_SIZE + entries.len() * LEAF_ELEMENT_SIZE;
    for (i, e) in entries.iter().enumerate() {
        let off = PAGE_HEADER_SIZE + i * LEAF_ELEMENT_SIZE;
        let pos = (data - off) as u32;
        buf[off..off + 4].copy_from_slice(&e.flags.to_le_bytes());
        buf[off + 4..off + 8].copy_from_slice(&pos.to_le_bytes());
        buf[off + 8..off + 12].copy_from_slice(&(e.key.len() as u32).to_le_bytes());
        buf[off + 12..off + 16].copy_from_slice(&(e.value.len() as u32).to_le_bytes());
        buf[data..data + e.key.len()].copy_from_slice(&e.key);
        data += e.key.len();
        buf[data..data + e.value.len()].copy_from_slice(&e.value);
        data += e.value.len();
    }
    buf
}

/// Encodes a branch page whose children are `(first key, pgid)`.
pub fn encode_branch(id: u64, overflow: u32, children: &[(Vec<u8>, u64)], len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    PageHeader {
        id,
        flags: BRANCH_PAGE_FLAG,
        count: children.len() as u16,
        overflow,
    }
    .write(&mut buf);
    let mut data = PAGE_HEADER_SIZE + children.len() * BRANCH_ELEMENT_SIZE;
    for (i, (key, pgid)) in children.iter().enumerate() {
        let off = PAGE_HEADER_SIZE + i * BRANCH_ELEMENT_SIZE;
        let pos = (data - off) as u32;
        buf[off..off + 4].copy_from_slice(&pos.to_le_bytes());
        buf[off + 4..off + 8].copy_from_slice(&(key.len() as u32).to_le_bytes());
        buf[off + 8..off + 16].copy_from_slice(&pgid.to_le_bytes());
        buf[data..data + key.len()].copy_from_slice(key);
        data += key.len();
    }
    buf
}

/// Encodes an inline bucket value: a bucket header with root 0 followed by a leaf page with
/// id 0 holding `entries` (`Bucket.write` for an inlineable bucket).
pub fn encode_inline_bucket(sequence: u64, entries: &[Entry]) -> Vec<u8> {
    let size = PAGE_HEADER_SIZE + entries.iter().map(leaf_entry_size).sum::<usize>();
    let page = encode_leaf(0, 0, entries, size);
    let mut v = Vec::with_capacity(BUCKET_HEADER_SIZE + page.len());
    v.extend_from_slice(&0u64.to_le_bytes());
    v.extend_from_slice(&sequence.to_le_bytes());
    v.extend_from_slice(&page);
    v
}

/// Encodes a bucket header pointing to a root page (a non-inline bucket value).
pub fn encode_bucket_header(root: u64, sequence: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(BUCKET_HEADER_SIZE);
    v.extend_from_slice(&root.to_le_bytes());
    v.extend_from_slice(&sequence.to_le_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(k: &[u8], v: &[u8]) -> Entry {
        Entry {
            flags: 0,
            key: k.to_vec(),
            value: v.to_vec(),
        }
    }

    #[test]
    fn fnv_matches_go_hash_fnv() {
        // Go: fnv.New64a() of "" and "a".
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
    }

    #[test]
    fn meta_roundtrip_and_validate() {
        let mut m = Meta {
            magic: MAGIC,
            version: VERSION,
            page_size: 4096,
            flags: 0,
            root: 3,
            sequence: 0,
            freelist: 2,
            pgid: 4,
            txid: 7,
            checksum: 0,
        };
        assert!(m.validate().unwrap_err().contains("checksum"));
        m.checksum = m.sum64();
        assert_eq!(m.validate(), Ok(()));
        let b = m.encode();
        assert_eq!(Meta::parse(&b, 0).unwrap(), m);
        let mut bad = m;
        bad.magic = 1;
        assert!(bad.validate().unwrap_err().contains("magic"));
        assert!(Meta::parse(&b[..10], 0).is_err());
    }

    #[test]
    fn leaf_roundtrip() {
        let es = vec![e(b"a", b"1"), e(b"bb", b""), e(b"ccc", b"333")];
        let buf = encode_leaf(9, 0, &es, 4096);
        let h = PageHeader::parse(&buf, 9).unwrap();
        assert_eq!(
            h,
            PageHeader {
                id: 9,
                flags: LEAF_PAGE_FLAG,
                count: 3,
                overflow: 0
            }
        );
        for (i, x) in es.iter().enumerate() {
            let l = leaf_elem(&buf, i, 9).unwrap();
            assert_eq!((l.key, l.value), (&x.key[..], &x.value[..]));
        }
    }

    #[test]
    fn leaf_element_out_of_bounds_is_corrupt() {
        let es = vec![e(b"a", b"1")];
        let mut buf = encode_leaf(5, 0, &es, 64);
        // vsize huge
        buf[PAGE_HEADER_SIZE + 12..PAGE_HEADER_SIZE + 16].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = leaf_elem(&buf, 0, 5).unwrap_err();
        assert!(
            matches!(err, SnapshotError::Corrupt { page: 5, .. }),
            "{err}"
        );
        // element index beyond the buffer
        assert!(leaf_elem(&buf, 100, 5).is_err());
        // pos huge: no overflow panic
        buf[PAGE_HEADER_SIZE + 4..PAGE_HEADER_SIZE + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(leaf_elem(&buf, 0, 5).is_err());
    }

    #[test]
    fn branch_roundtrip_and_bounds() {
        let ch = vec![(b"k1".to_vec(), 10u64), (b"k2".to_vec(), 11)];
        let buf = encode_branch(4, 0, &ch, 128);
        let b = branch_elem(&buf, 1, 4).unwrap();
        assert_eq!((b.key, b.pgid), (&b"k2"[..], 11));
        assert!(branch_elem(&buf[..20], 1, 4).is_err());
        let h = PageHeader::parse(&buf, 4).unwrap();
        assert!(check_element_table(&buf[..20], &h, 4).is_err());
    }

    #[test]
    fn freelist_small_and_overflow_count() {
        let ids: Vec<u64> = (2..10).collect();
        let mut buf = vec![0u8; freelist_size(ids.len())];
        write_freelist(&mut buf, 3, 0, &ids);
        assert_eq!(freelist_ids(&buf, 3).unwrap(), ids);

        let big: Vec<u64> = (0..70_000u64).collect();
        let mut buf = vec![0u8; freelist_size(big.len())];
        write_freelist(&mut buf, 3, 0, &big);
        assert_eq!(PageHeader::parse(&buf, 3).unwrap().count, 0xFFFF);
        assert_eq!(freelist_ids(&buf, 3).unwrap(), big);
        // claimed count larger than the page
        buf[PAGE_HEADER_SIZE..PAGE_HEADER_SIZE + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        let err = freelist_ids(&buf, 3).unwrap_err().to_string();
        assert!(err.contains("freelist claims"), "{err}");
        // wrong type
        let leaf = encode_leaf(3, 0, &[], 64);
        assert!(freelist_ids(&leaf, 3).is_err());
    }

    #[test]
    fn inline_bucket_layout() {
        let v = encode_inline_bucket(5, &[e(b"x", b"y")]);
        assert_eq!(bucket_header(&v, 0, b"b").unwrap(), (0, 5));
        let page = &v[BUCKET_HEADER_SIZE..];
        let l = leaf_elem(page, 0, 0).unwrap();
        assert_eq!((l.key, l.value), (&b"x"[..], &b"y"[..]));
        assert!(bucket_header(&v[..8], 0, b"b").is_err());
    }

    #[test]
    fn short_header_is_corrupt() {
        assert!(PageHeader::parse(&[0u8; 8], 1).is_err());
    }
}
