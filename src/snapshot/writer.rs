//! Copy-on-write update of root-level buckets: one bbolt write transaction, done natively.
//!
//! Like bbolt's `tx.Commit` (tx.go: `spill`, `commitFreelist`, `writeMeta`): the changed
//! buckets, the root bucket's tree and the freelist are written to new pages, the pages they
//! replace are added to the freelist, and a new meta page (txid + 1, in slot `txid % 2`) is
//! written last, after an fsync of the data pages. Existing pages are never overwritten (new
//! pages go above the old high water mark), so the previous meta stays a valid, consistent
//! view until the new meta is on disk.
//!
//! Unchanged buckets (the big `key` bucket) are not read or copied: their root page ids are
//! kept verbatim in the new root leaf. Cost: a few page reads and writes, whatever the db size.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::page::{
    self, encode_branch, encode_bucket_header, encode_inline_bucket, encode_leaf, leaf_entry_size,
    Entry, Meta, PageHeader, BRANCH_ELEMENT_SIZE, BUCKET_LEAF_FLAG, META_PAGE_FLAG,
    PAGE_HEADER_SIZE, PGID_NO_FREELIST,
};
use super::reader::{collect_leaf, Db, MAX_DEPTH};
use super::SnapshotError;

/// What to do with one bucket of the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketEdit {
    /// Remove the bucket and everything below it.
    Delete,
    /// Replace all of its entries with these (plain key/values, any order; created if missing).
    Replace(Vec<(Vec<u8>, Vec<u8>)>),
    /// Set these keys (insert or overwrite), keep the others (created if missing).
    Put(Vec<(Vec<u8>, Vec<u8>)>),
    /// Add these keys, each greater than every key already in the bucket (created if
    /// missing). Only the bucket's rightmost path is rewritten (a few pages, whatever the
    /// bucket's size): how a revision bump adds its key to the big `key` bucket.
    /// Error: Rewrite when a key is not above the bucket's last key.
    Append(Vec<(Vec<u8>, Vec<u8>)>),
}

/// Summary of an applied transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The new meta (written to page `txid % 2`).
    pub meta: Meta,
    /// Pages appended above the old high water mark.
    pub new_pages: u64,
    /// Pages released to the freelist by this transaction.
    pub freed_pages: u64,
}

struct Alloc {
    ps: usize,
    next: u64,
    pages: Vec<(u64, Vec<u8>)>,
}

impl Alloc {
    /// Reserves pages for `bytes` and returns (first id, overflow, buffer length).
    fn reserve(&mut self, bytes: usize) -> (u64, u32, usize) {
        let n = bytes.div_ceil(self.ps).max(1);
        let id = self.next;
        self.next += n as u64;
        (id, (n - 1) as u32, n * self.ps)
    }
}

/// Packs sorted, unique `entries` into leaves of at most one page each (one empty leaf for
/// no entries) and returns each leaf's (first key, page id).
fn pack_leaves(entries: &[Entry], a: &mut Alloc) -> Vec<(Vec<u8>, u64)> {
    let mut level: Vec<(Vec<u8>, u64)> = Vec::new();
    let mut start = 0;
    while start < entries.len() || (entries.is_empty() && level.is_empty()) {
        let mut size = PAGE_HEADER_SIZE;
        let mut end = start;
        while end < entries.len() {
            let s = leaf_entry_size(&entries[end]);
            if end > start && (size + s > a.ps || end - start == 0xFFFF) {
                break;
            }
            size += s;
            end += 1;
        }
        let (id, ovf, len) = a.reserve(size);
        a.pages
            .push((id, encode_leaf(id, ovf, &entries[start..end], len)));
        level.push((
            entries
                .get(start)
                .map(|e| e.key.clone())
                .unwrap_or_default(),
            id,
        ));
        start = end;
        if entries.is_empty() {
            break;
        }
    }
    level
}

/// Packs one level of children (first key, page id) into branch pages of at most one page
/// each (at least 2 children per page) and returns each branch's (first key, page id).
fn pack_branches(level: &[(Vec<u8>, u64)], a: &mut Alloc) -> Vec<(Vec<u8>, u64)> {
    let mut next = Vec::new();
    let mut start = 0;
    while start < level.len() {
        let mut size = PAGE_HEADER_SIZE;
        let mut end = start;
        while end < level.len() {
            let s = BRANCH_ELEMENT_SIZE + level[end].0.len();
            if end - start >= 2 && (size + s > a.ps || end - start == 0xFFFF) {
                break;
            }
            size += s;
            end += 1;
        }
        let (id, ovf, len) = a.reserve(size);
        a.pages
            .push((id, encode_branch(id, ovf, &level[start..end], len)));
        next.push((level[start].0.clone(), id));
        start = end;
    }
    next
}

/// Adds branch levels above `level` until one root remains; returns its page id.
fn build_root(mut level: Vec<(Vec<u8>, u64)>, a: &mut Alloc) -> u64 {
    while level.len() > 1 {
        level = pack_branches(&level, a);
    }
    level[0].1
}

/// Writes a bucket's b+tree (leaves packed up to one page each, branch levels above) and
/// returns its root page id. `entries` must be sorted by key and unique.
fn write_tree(entries: &[Entry], a: &mut Alloc) -> u64 {
    let leaves = pack_leaves(entries, a);
    build_root(leaves, a)
}

/// Copy-on-write append along the rightmost path of the tree rooted at page `id`: the last
/// leaf gets `new` (sorted, every key above the leaf's last key), and every page on the path
/// is rewritten (split when it no longer fits a page). The old path pages go to `freed`.
/// Returns the replacement children (first key, page id) for the parent.
fn append_rightmost(
    db: &Db,
    id: u64,
    new: &[Entry],
    a: &mut Alloc,
    freed: &mut Vec<u64>,
    depth: usize,
) -> Result<Vec<(Vec<u8>, u64)>, SnapshotError> {
    if depth > MAX_DEPTH {
        return Err(page::corrupt(
            id,
            format!("b+tree deeper than {MAX_DEPTH} levels (a cycle?)"),
        ));
    }
    let mut buf = Vec::new();
    let hdr = db.read_page(id, &mut buf)?;
    let last_page = id
        .checked_add(u64::from(hdr.overflow))
        .ok_or_else(|| page::corrupt(id, "overflow count runs past the largest page id"))?;
    freed.extend(id..=last_page);
    page::check_element_table(&buf, &hdr, id)?;
    match hdr.flags {
        page::LEAF_PAGE_FLAG => {
            let mut entries = Vec::new();
            collect_leaf(&buf, id, &mut entries)?;
            if let (Some(last), Some(first)) = (entries.last(), new.first()) {
                if first.key <= last.key {
                    return Err(SnapshotError::Rewrite {
                        path: db.path().to_path_buf(),
                        reason: format!(
                            "cannot append key {} at or before the bucket's last key {}",
                            hex::encode(&first.key),
                            hex::encode(&last.key)
                        ),
                    });
                }
            }
            entries.extend_from_slice(new);
            Ok(pack_leaves(&entries, a))
        }
        page::BRANCH_PAGE_FLAG => {
            let mut children = Vec::with_capacity(usize::from(hdr.count));
            for i in 0..usize::from(hdr.count) {
                let e = page::branch_elem(&buf, i, id)?;
                children.push((e.key.to_vec(), e.pgid));
            }
            let (key, last) = children
                .pop()
                .ok_or_else(|| page::corrupt(id, "branch page without elements"))?;
            let mut replaced = append_rightmost(db, last, new, a, freed, depth + 1)?;
            // The first replacement keeps the key its parent knew (it is <= its first key).
            if let Some(first) = replaced.first_mut() {
                first.0 = key;
            }
            children.extend(replaced);
            Ok(pack_branches(&children, a))
        }
        _ => Err(page::corrupt(
            id,
            format!("expected a branch or leaf page, found {}", hdr.typ()),
        )),
    }
}

/// bbolt `Bucket.inlineable`: no nested buckets and the leaf fits in a quarter page.
fn inlineable(entries: &[Entry], ps: usize) -> bool {
    let mut size = PAGE_HEADER_SIZE;
    for e in entries {
        if e.flags & BUCKET_LEAF_FLAG != 0 {
            return false;
        }
        size += leaf_entry_size(e);
        if size > ps / 4 {
            return false;
        }
    }
    true
}

/// Encodes a (sub-)bucket value for `entries`: inline when bbolt would inline it.
fn bucket_value(entries: &[Entry], sequence: u64, a: &mut Alloc) -> Vec<u8> {
    if inlineable(entries, a.ps) {
        encode_inline_bucket(sequence, entries)
    } else {
        let root = write_tree(entries, a);
        encode_bucket_header(root, sequence)
    }
}

fn rewrite_err(path: &Path, reason: impl Into<String>) -> SnapshotError {
    SnapshotError::Rewrite {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Applies `edits` (bucket name -> edit) to the bbolt file at `path` in place, as one
/// transaction. The file must be a checked db (its first `db_len` bytes; `None`: all).
///
/// Errors: Io; Corrupt/NotBbolt/Truncated from reading; Rewrite when an edited root entry is
/// not a bucket or a put key names a nested bucket.
pub fn apply(
    path: &Path,
    db_len: Option<u64>,
    edits: &BTreeMap<Vec<u8>, BucketEdit>,
) -> Result<Applied, SnapshotError> {
    let db = Db::open(path, db_len)?;
    let old = *db.meta();
    let ps = db.page_size() as usize;
    let meta_pg = db.meta_page();

    let root_value = encode_bucket_header(old.root, old.sequence);
    let (root_entries, root_pages) = db.bucket_contents(&root_value, meta_pg)?;
    let mut freed: Vec<u64> = root_pages;
    let mut a = Alloc {
        ps,
        next: old.pgid,
        pages: Vec::new(),
    };

    // Merge the root's entries with the edits, in key order.
    let mut by_key: BTreeMap<Vec<u8>, Entry> = root_entries
        .into_iter()
        .map(|e| (e.key.clone(), e))
        .collect();
    for (name, edit) in edits {
        let existing = by_key.remove(name);
        if let Some(e) = &existing {
            if e.flags & BUCKET_LEAF_FLAG == 0 {
                return Err(rewrite_err(
                    path,
                    format!(
                        "root entry {:?} is not a bucket",
                        String::from_utf8_lossy(name)
                    ),
                ));
            }
        }
        if let BucketEdit::Append(kvs) = edit {
            let value = append_value(&db, path, name, existing.as_ref(), kvs, &mut a, &mut freed)?;
            by_key.insert(
                name.clone(),
                Entry {
                    flags: BUCKET_LEAF_FLAG,
                    key: name.clone(),
                    value,
                },
            );
            continue;
        }
        let (old_entries, old_pages, seq) = match &existing {
            Some(e) => {
                let (entries, pages) = db.bucket_contents(&e.value, meta_pg)?;
                let (_, seq) = page::bucket_header(&e.value, meta_pg, name)?;
                (entries, pages, seq)
            }
            None => (Vec::new(), Vec::new(), 0),
        };
        let new_entries: Vec<Entry> = match edit {
            BucketEdit::Delete => {
                if let Some(e) = &existing {
                    db.bucket_pages_recursive(&e.value, meta_pg, &mut freed)?;
                }
                continue;
            }
            BucketEdit::Replace(kvs) => {
                for e in old_entries
                    .iter()
                    .filter(|e| e.flags & BUCKET_LEAF_FLAG != 0)
                {
                    db.bucket_pages_recursive(&e.value, meta_pg, &mut freed)?;
                }
                freed.extend(old_pages);
                let m: BTreeMap<&[u8], &[u8]> = kvs.iter().map(|(k, v)| (&k[..], &v[..])).collect();
                m.into_iter()
                    .map(|(k, v)| Entry {
                        flags: 0,
                        key: k.to_vec(),
                        value: v.to_vec(),
                    })
                    .collect()
            }
            BucketEdit::Append(_) => unreachable!("handled above"),
            BucketEdit::Put(kvs) => {
                freed.extend(old_pages);
                let mut m: BTreeMap<Vec<u8>, Entry> = old_entries
                    .into_iter()
                    .map(|e| (e.key.clone(), e))
                    .collect();
                for (k, v) in kvs {
                    if m.get(k).is_some_and(|e| e.flags & BUCKET_LEAF_FLAG != 0) {
                        return Err(rewrite_err(
                            path,
                            format!(
                                "key {:?} of bucket {:?} is a nested bucket, not a value",
                                String::from_utf8_lossy(k),
                                String::from_utf8_lossy(name)
                            ),
                        ));
                    }
                    m.insert(
                        k.clone(),
                        Entry {
                            flags: 0,
                            key: k.clone(),
                            value: v.clone(),
                        },
                    );
                }
                m.into_values().collect()
            }
        };
        let value = bucket_value(&new_entries, seq, &mut a);
        by_key.insert(
            name.clone(),
            Entry {
                flags: BUCKET_LEAF_FLAG,
                key: name.clone(),
                value,
            },
        );
    }
    let new_root_entries: Vec<Entry> = by_key.into_values().collect();
    let new_root = write_tree(&new_root_entries, &mut a);

    // Freelist: old free ids + pages this transaction released (incl. the old freelist).
    let new_freelist = if old.freelist == PGID_NO_FREELIST {
        PGID_NO_FREELIST
    } else {
        let mut buf = Vec::new();
        let hdr = db.read_page(old.freelist, &mut buf)?;
        let mut ids = page::freelist_ids(&buf, old.freelist)?;
        // Ids read from the file: each must name a data page below the high water mark.
        if let Some(bad) = ids.iter().find(|&&id| id < 2 || id >= old.pgid) {
            return Err(page::corrupt(
                old.freelist,
                format!(
                    "freelist names page {bad}, outside [2, high water mark {})",
                    old.pgid
                ),
            ));
        }
        let freelist_end = old
            .freelist
            .checked_add(u64::from(hdr.overflow))
            .filter(|&end| end < old.pgid)
            .ok_or_else(|| {
                page::corrupt(
                    old.freelist,
                    format!(
                        "freelist overflow {} runs past the high water mark {}",
                        hdr.overflow, old.pgid
                    ),
                )
            })?;
        ids.extend(old.freelist..=freelist_end);
        ids.extend_from_slice(&freed);
        ids.sort_unstable();
        let before = ids.len();
        ids.dedup();
        if ids.len() != before {
            return Err(page::corrupt(
                old.freelist,
                "a page would be freed twice (run a full check first)",
            ));
        }
        let (id, ovf, len) = a.reserve(page::freelist_size(ids.len()));
        let mut fbuf = vec![0u8; len];
        page::write_freelist(&mut fbuf, id, ovf, &ids);
        a.pages.push((id, fbuf));
        id
    };

    // A txid read from the file: u64::MAX cannot be followed (wrapping to 0 would make bbolt
    // select the old meta and silently drop this transaction).
    let txid = old.txid.checked_add(1).ok_or_else(|| {
        page::corrupt(
            meta_pg,
            format!(
                "meta txid {} cannot be incremented; the db is corrupt or crafted",
                old.txid
            ),
        )
    })?;
    let mut meta = Meta {
        root: new_root,
        freelist: new_freelist,
        pgid: a.next,
        txid,
        checksum: 0,
        ..old
    };
    meta.checksum = meta.sum64();
    let new_pages = a.next - old.pgid;
    let freed_pages = freed.len() as u64;
    drop(db);

    let io = |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = OpenOptions::new().write(true).open(path).map_err(io)?;
    for (id, buf) in &a.pages {
        f.write_all_at(buf, id * ps as u64).map_err(io)?;
    }
    f.sync_data().map_err(io)?;
    // Meta last (bbolt tx.writeMeta): page id txid % 2.
    let slot = meta.txid % 2;
    let mut mbuf = vec![0u8; ps];
    PageHeader {
        id: slot,
        flags: META_PAGE_FLAG,
        count: 0,
        overflow: 0,
    }
    .write(&mut mbuf);
    mbuf[PAGE_HEADER_SIZE..PAGE_HEADER_SIZE + page::META_SIZE].copy_from_slice(&meta.encode());
    f.write_all_at(&mbuf, slot * ps as u64).map_err(io)?;
    let end = meta.pgid * ps as u64;
    if f.metadata().map_err(io)?.len() < end {
        f.set_len(end).map_err(io)?;
    }
    f.sync_all().map_err(io)?;
    drop(f);
    check_selected(path, slot, &meta)?;
    Ok(Applied {
        meta,
        new_pages,
        freed_pages,
    })
}

/// Reopens `path` and checks that the meta bbolt selects (`DB.meta()`: the valid one with the
/// higher txid) is the one just written, in page `slot`. Error: Rewrite naming both.
fn check_selected(path: &Path, slot: u64, written: &Meta) -> Result<(), SnapshotError> {
    let db = Db::open(path, None)?;
    if db.meta_page() != slot || db.meta() != written {
        return Err(rewrite_err(
            path,
            format!(
                "after writing meta page {slot} (txid {}), bbolt would select meta page {} (txid {}); the update would be lost",
                written.txid,
                db.meta_page(),
                db.meta().txid
            ),
        ));
    }
    Ok(())
}

/// The new value of bucket `name` for [`BucketEdit::Append`]: an inline or missing bucket is
/// rebuilt (it is small), a tree gets a copy-on-write append on its rightmost path.
fn append_value(
    db: &Db,
    path: &Path,
    name: &[u8],
    existing: Option<&Entry>,
    kvs: &[(Vec<u8>, Vec<u8>)],
    a: &mut Alloc,
    freed: &mut Vec<u64>,
) -> Result<Vec<u8>, SnapshotError> {
    let mut new: Vec<Entry> = kvs
        .iter()
        .map(|(k, v)| Entry {
            flags: 0,
            key: k.clone(),
            value: v.clone(),
        })
        .collect();
    new.sort_by(|x, y| x.key.cmp(&y.key));
    if new.windows(2).any(|w| w[0].key == w[1].key) {
        return Err(rewrite_err(path, "append: the same key given twice"));
    }
    let Some(e) = existing else {
        return Ok(bucket_value(&new, 0, a));
    };
    let meta_pg = db.meta_page();
    let (root, seq) = page::bucket_header(&e.value, meta_pg, name)?;
    if root != 0 {
        let level = append_rightmost(db, root, &new, a, freed, 0)?;
        return Ok(encode_bucket_header(build_root(level, a), seq));
    }
    let (mut entries, _) = db.bucket_contents(&e.value, meta_pg)?;
    if let (Some(last), Some(first)) = (entries.last(), new.first()) {
        if first.key <= last.key {
            return Err(rewrite_err(
                path,
                format!(
                    "cannot append key {} at or before the bucket's last key {}",
                    hex::encode(&first.key),
                    hex::encode(&last.key)
                ),
            ));
        }
    }
    entries.extend(new);
    Ok(bucket_value(&entries, seq, a))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn entries(n: usize, vlen: usize) -> Vec<Entry> {
        (0..n)
            .map(|i| Entry {
                flags: 0,
                key: format!("k{i:08}").into_bytes(),
                value: vec![b'v'; vlen],
            })
            .collect()
    }

    #[test]
    fn tree_of_many_entries_has_branches() {
        let mut a = Alloc {
            ps: 4096,
            next: 10,
            pages: Vec::new(),
        };
        let es = entries(5000, 20);
        let root = write_tree(&es, &mut a);
        let (_, rootbuf) = a.pages.iter().find(|(id, _)| *id == root).unwrap();
        let h = PageHeader::parse(rootbuf, root).unwrap();
        assert_eq!(h.flags, page::BRANCH_PAGE_FLAG);
        // every leaf fits one page
        for (id, b) in &a.pages {
            let h = PageHeader::parse(b, *id).unwrap();
            assert_eq!(h.overflow, 0);
        }
    }

    #[test]
    fn big_value_gets_overflow_and_empty_tree_one_leaf() {
        let mut a = Alloc {
            ps: 4096,
            next: 2,
            pages: Vec::new(),
        };
        let es = entries(1, 10_000);
        let root = write_tree(&es, &mut a);
        let h = PageHeader::parse(&a.pages[0].1, root).unwrap();
        assert_eq!((h.flags, h.overflow, a.next), (page::LEAF_PAGE_FLAG, 2, 5));
        let mut a = Alloc {
            ps: 4096,
            next: 2,
            pages: Vec::new(),
        };
        let root = write_tree(&[], &mut a);
        assert_eq!((root, a.pages.len()), (2, 1));
    }

    /// (bucket name, entries, entries of a nested bucket "nested")
    type SynBucket = (Vec<u8>, Vec<Entry>, Option<Vec<Entry>>);

    /// Builds a bbolt file from scratch: root buckets with inline, multi-level and nested
    /// buckets (nothing etcd writes, but bbolt allows), no freelist.
    fn build_db(path: &Path, root: &[SynBucket]) -> Meta {
        let ps = 4096;
        let mut a = Alloc {
            ps,
            next: 2,
            pages: Vec::new(),
        };
        let mut root_entries = Vec::new();
        for (name, entries, nested) in root {
            let mut es = entries.clone();
            if let Some(n) = nested {
                let v = bucket_value(n, 7, &mut a);
                es.push(Entry {
                    flags: BUCKET_LEAF_FLAG,
                    key: b"nested".to_vec(),
                    value: v,
                });
                es.sort_by(|x, y| x.key.cmp(&y.key));
            }
            let value = bucket_value(&es, 0, &mut a);
            root_entries.push(Entry {
                flags: BUCKET_LEAF_FLAG,
                key: name.clone(),
                value,
            });
        }
        let root_pg = write_tree(&root_entries, &mut a);
        let f = std::fs::File::create(path).unwrap();
        for (id, b) in &a.pages {
            f.write_all_at(b, id * ps as u64).unwrap();
        }
        let mut m = Meta {
            magic: page::MAGIC,
            version: page::VERSION,
            page_size: ps as u32,
            flags: 0,
            root: root_pg,
            sequence: 0,
            freelist: PGID_NO_FREELIST,
            pgid: a.next,
            txid: 2,
            checksum: 0,
        };
        for slot in [0u64, 1] {
            m.txid = 2 - slot;
            m.checksum = m.sum64();
            let mut buf = vec![0u8; ps];
            PageHeader {
                id: slot,
                flags: META_PAGE_FLAG,
                count: 0,
                overflow: 0,
            }
            .write(&mut buf);
            buf[PAGE_HEADER_SIZE..PAGE_HEADER_SIZE + 64].copy_from_slice(&m.encode());
            f.write_all_at(&buf, slot * ps as u64).unwrap();
        }
        f.set_len(a.next * ps as u64).unwrap();
        m
    }

    #[test]
    fn synthetic_db_with_nested_buckets_checks_and_hashes_like_etcd() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("syn.db");
        let small = vec![Entry {
            flags: 0,
            key: b"x".to_vec(),
            value: b"1".to_vec(),
        }];
        let many = entries(3000, 30);
        let inner = entries(400, 10);
        let c = vec![Entry {
            flags: 0,
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        }];
        build_db(
            &p,
            &[
                (b"a".to_vec(), small, None),
                (b"b".to_vec(), many.clone(), None),
                (b"c".to_vec(), c, Some(inner)),
            ],
        );
        let db = Db::open(&p, None).unwrap();
        assert_eq!(db.meta_page(), 0);
        let s = db.check_and_status().unwrap();
        // etcd: name, then k, v per entry; a nested bucket contributes its key only.
        let mut h = crc32c::crc32c(b"a");
        for x in [&b"x"[..], b"1", b"b"] {
            h = crc32c::crc32c_append(h, x);
        }
        for e in &many {
            h = crc32c::crc32c_append(h, &e.key);
            h = crc32c::crc32c_append(h, &e.value);
        }
        for x in [&b"c"[..], b"k", b"v", b"nested"] {
            h = crc32c::crc32c_append(h, x);
        }
        assert_eq!((s.hash, s.total_key, s.revision), (h, 1 + 3000 + 2, 0));
        assert_eq!(db.free_pages().unwrap(), Vec::<u64>::new());
        drop(db);

        // A transaction on top: delete the nested-bucket holder, replace b, put into a.
        let mut edits = BTreeMap::new();
        edits.insert(b"c".to_vec(), BucketEdit::Delete);
        edits.insert(
            b"b".to_vec(),
            BucketEdit::Replace(vec![(b"only".to_vec(), b"one".to_vec())]),
        );
        edits.insert(
            b"a".to_vec(),
            BucketEdit::Put(vec![(b"y".to_vec(), b"2".to_vec())]),
        );
        edits.insert(b"new".to_vec(), BucketEdit::Put(vec![]));
        let applied = apply(&p, None, &edits).unwrap();
        assert_eq!(applied.meta.txid, 3);
        assert!(applied.freed_pages > 10, "{applied:?}");
        let db = Db::open(&p, None).unwrap();
        assert_eq!(db.meta_page(), 1);
        let s = db.check_and_status().unwrap();
        let mut h = 0;
        for x in [
            &b"a"[..],
            b"x",
            b"1",
            b"y",
            b"2",
            b"b",
            b"only",
            b"one",
            b"new",
        ] {
            h = crc32c::crc32c_append(h, x);
        }
        assert_eq!((s.hash, s.total_key), (h, 3));
        // Everything the old tree used is now free (no freelist: unreachable = free).
        assert!(db.free_pages().unwrap().len() as u64 >= applied.freed_pages);
        // Putting a value over a nested bucket is refused.
        drop(db);
        let p2 = d.path().join("syn2.db");
        let nested = entries(2, 1);
        build_db(&p2, &[(b"c".to_vec(), vec![], Some(nested))]);
        let mut edits = BTreeMap::new();
        edits.insert(
            b"c".to_vec(),
            BucketEdit::Put(vec![(b"nested".to_vec(), b"v".to_vec())]),
        );
        let err = apply(&p2, None, &edits).unwrap_err().to_string();
        assert!(
            err.contains("key \"nested\" of bucket \"c\" is a nested bucket"),
            "{err}"
        );
    }

    /// Rewrites meta page `slot` of `path` through `f` with a valid checksum (a crafted file).
    fn craft_meta(path: &Path, slot: u64, f: impl FnOnce(&mut Meta)) {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut buf = vec![0u8; PAGE_HEADER_SIZE + page::META_SIZE];
        file.read_exact_at(&mut buf, slot * 4096).unwrap();
        let mut m = Meta::parse(&buf[PAGE_HEADER_SIZE..], slot).unwrap();
        f(&mut m);
        m.checksum = m.sum64();
        file.write_all_at(&m.encode(), slot * 4096 + PAGE_HEADER_SIZE as u64)
            .unwrap();
    }

    fn small_db(d: &Path) -> std::path::PathBuf {
        let p = d.join("crafted.db");
        build_db(&p, &[(b"a".to_vec(), entries(3, 5), None)]);
        p
    }

    fn one_put() -> BTreeMap<Vec<u8>, BucketEdit> {
        let mut edits = BTreeMap::new();
        edits.insert(
            b"a".to_vec(),
            BucketEdit::Put(vec![(b"y".to_vec(), b"2".to_vec())]),
        );
        edits
    }

    #[test]
    fn crafted_max_txid_is_corrupt_not_wrapped() {
        let d = tempfile::tempdir().unwrap();
        let p = small_db(d.path());
        craft_meta(&p, 0, |m| m.txid = u64::MAX);
        let before = std::fs::read(&p).unwrap();
        assert_eq!(Db::open(&p, None).unwrap().meta().txid, u64::MAX);
        let err = apply(&p, None, &one_put()).unwrap_err();
        assert!(
            matches!(&err, SnapshotError::Corrupt { page: 0, reason } if reason.contains("meta txid 18446744073709551615 cannot be incremented")),
            "{err}"
        );
        assert_eq!(std::fs::read(&p).unwrap(), before, "nothing written");
    }

    #[test]
    fn crafted_freelist_ids_are_corrupt() {
        let d = tempfile::tempdir().unwrap();
        let p = small_db(d.path());
        let hwm = Db::open(&p, None).unwrap().meta().pgid;
        // A freelist page at the high water mark naming a page far beyond it.
        let mut fbuf = vec![0u8; 4096];
        page::write_freelist(&mut fbuf, hwm, 0, &[hwm + 1_000_000]);
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(&fbuf, hwm * 4096).unwrap();
        f.set_len((hwm + 1) * 4096).unwrap();
        craft_meta(&p, 0, |m| {
            m.freelist = hwm;
            m.pgid = hwm + 1;
        });
        let err = apply(&p, None, &one_put()).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("freelist names page {}", hwm + 1_000_000)),
            "{err}"
        );
        // A freelist whose overflow count runs past the high water mark.
        craft_meta(&p, 0, |m| m.pgid = hwm + 1);
        page::write_freelist(&mut fbuf, hwm, u32::MAX, &[2]);
        f.write_all_at(&fbuf, hwm * 4096).unwrap();
        let err = apply(&p, None, &one_put()).unwrap_err();
        assert!(matches!(err, SnapshotError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn new_meta_is_checked_to_be_selected() {
        let d = tempfile::tempdir().unwrap();
        let p = small_db(d.path());
        let applied = apply(&p, None, &one_put()).unwrap();
        let slot = applied.meta.txid % 2;
        check_selected(&p, slot, &applied.meta).unwrap();
        let err = check_selected(&p, 1 - slot, &applied.meta).unwrap_err();
        assert!(err.to_string().contains("bbolt would select"), "{err}");
        // A crafted other meta with a higher txid and a valid checksum wins in bbolt: the
        // check names the lost update.
        craft_meta(&p, 1 - slot, |m| m.txid = applied.meta.txid + 5);
        let err = check_selected(&p, slot, &applied.meta).unwrap_err();
        assert!(
            err.to_string().contains("the update would be lost"),
            "{err}"
        );
    }

    #[test]
    fn append_rewrites_only_the_rightmost_path() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("big.db");
        let many = entries(20_000, 30);
        build_db(
            &p,
            &[
                (b"a".to_vec(), entries(2, 1), None),
                (b"big".to_vec(), many.clone(), None),
            ],
        );
        let before = Db::open(&p, None).unwrap().check_and_status().unwrap();
        let mut edits = BTreeMap::new();
        edits.insert(
            b"big".to_vec(),
            BucketEdit::Append(vec![(b"z-last".to_vec(), Vec::new())]),
        );
        edits.insert(
            b"a".to_vec(),
            BucketEdit::Append(vec![(b"z".to_vec(), b"1".to_vec())]),
        );
        edits.insert(
            b"new".to_vec(),
            BucketEdit::Append(vec![(b"n".to_vec(), b"1".to_vec())]),
        );
        let applied = apply(&p, None, &edits).unwrap();
        // Root leaf, a few path pages of `big`, freelist: not the ~200 pages of the bucket.
        assert!(applied.new_pages < 10, "{applied:?}");
        let db = Db::open(&p, None).unwrap();
        let after = db.check_and_status().unwrap();
        assert_eq!(after.total_key, before.total_key + 3);
        assert_eq!(db.last_key(b"big").unwrap().unwrap(), b"z-last");
        assert_eq!(db.last_key(b"a").unwrap().unwrap(), b"z");
        let keys = db.root_bucket_entries(b"big").unwrap().unwrap();
        assert_eq!(keys.len(), 20_001);
        assert!(keys.windows(2).all(|w| w[0].key < w[1].key));
        drop(db);
        // A key not above the last one is refused, nothing written.
        let before_bytes = std::fs::read(&p).unwrap();
        let mut edits = BTreeMap::new();
        edits.insert(
            b"big".to_vec(),
            BucketEdit::Append(vec![(many[5].key.clone(), Vec::new())]),
        );
        let err = apply(&p, None, &edits).unwrap_err();
        assert!(err.to_string().contains("cannot append key"), "{err}");
        assert_eq!(std::fs::read(&p).unwrap(), before_bytes);
    }

    #[test]
    fn inline_rule() {
        assert!(inlineable(&entries(3, 10), 4096));
        assert!(!inlineable(&entries(1, 1100), 4096));
        let mut e = entries(1, 1);
        e[0].flags = BUCKET_LEAF_FLAG;
        assert!(!inlineable(&e, 4096));
    }
}
