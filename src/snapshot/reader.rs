//! Native, read-only bbolt reader: positional reads (`pread`), no mmap, bounded memory.
//!
//! [`Db::open`] picks the meta page the way bbolt's `DB.meta()` does (the valid one with the
//! highest txid); [`Db::check_and_status`] walks every reachable page once, doing bbolt's
//! `tx.Check` (`tx_check.go`) and etcd's `snapshot status` hash in the same pass.
//! Memory: one buffer per tree level (a page and its overflow), plus two bitmaps of one bit
//! per page (32 KiB for a 1 GiB db of 4 KiB pages).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::page::{
    self, bucket_header, corrupt, BranchElem, Entry, LeafElem, Meta, PageHeader, BRANCH_PAGE_FLAG,
    BUCKET_HEADER_SIZE, LEAF_PAGE_FLAG, MAX_PAGE_SIZE, MIN_PAGE_SIZE, PAGE_HEADER_SIZE,
    PGID_NO_FREELIST,
};
use super::{SnapshotError, Status};

/// Largest page span (a page plus its overflow) the reader accepts: 64 MiB. etcd's values
/// are at most `--max-request-bytes` (1.5 MiB by default); a bigger span in a snapshot means
/// a corrupt header, and refusing it keeps memory bounded.
pub const MAX_SPAN_BYTES: u64 = 64 << 20;

/// Deepest chain of pages (b+tree levels plus nested buckets) walked before the file is
/// declared corrupt; real etcd dbs are 3-6 levels deep.
pub(crate) const MAX_DEPTH: usize = 128;

/// An open bbolt file (read only).
#[derive(Debug)]
pub struct Db {
    file: File,
    path: PathBuf,
    page_size: u32,
    meta: Meta,
    meta_page: u64,
    db_len: u64,
}

/// A fixed-size bitmap of page ids.
#[derive(Debug, Clone)]
pub(crate) struct PageSet(Vec<u64>);

impl PageSet {
    pub(crate) fn new(n: u64) -> PageSet {
        PageSet(vec![0; n.div_ceil(64) as usize])
    }
    #[inline]
    pub(crate) fn get(&self, id: u64) -> bool {
        self.0
            .get((id / 64) as usize)
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }
    /// Sets `id`; returns whether it was set before.
    #[inline]
    pub(crate) fn set(&mut self, id: u64) -> bool {
        match self.0.get_mut((id / 64) as usize) {
            Some(w) => {
                let was = *w & (1 << (id % 64)) != 0;
                *w |= 1 << (id % 64);
                was
            }
            None => false,
        }
    }
}

fn io_err(path: &Path, source: std::io::Error) -> SnapshotError {
    SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Db {
    /// Opens `path` as a bbolt file of `db_len` bytes (default: the file size; pass
    /// `size - 32` for a snapshot with a sha256 trailer).
    ///
    /// Errors: [`SnapshotError::Io`], [`SnapshotError::NotBbolt`] (no valid meta page),
    /// [`SnapshotError::Truncated`] (fewer bytes than `pgid * page_size`),
    /// [`SnapshotError::Corrupt`] (meta points outside the file).
    pub fn open(path: &Path, db_len: Option<u64>) -> Result<Db, SnapshotError> {
        let file = File::open(path).map_err(|e| io_err(path, e))?;
        let file_len = file.metadata().map_err(|e| io_err(path, e))?.len();
        let db_len = db_len.unwrap_or(file_len).min(file_len);
        let not_bbolt = |reason: String| SnapshotError::NotBbolt {
            path: path.to_path_buf(),
            reason,
        };
        if db_len < (PAGE_HEADER_SIZE + page::META_SIZE) as u64 {
            return Err(not_bbolt(format!(
                "only {db_len} bytes, too small for a bbolt meta page"
            )));
        }
        let read_meta = |off: u64| -> Result<Option<Meta>, SnapshotError> {
            if off + (PAGE_HEADER_SIZE + page::META_SIZE) as u64 > db_len {
                return Ok(None);
            }
            let mut b = [0u8; PAGE_HEADER_SIZE + page::META_SIZE];
            file.read_exact_at(&mut b, off)
                .map_err(|e| io_err(path, e))?;
            Ok(Some(Meta::parse(&b[PAGE_HEADER_SIZE..], off)?))
        };
        // Page size: from meta 0 if valid, else from meta 1 at any plausible page size
        // (bbolt `getPageSize`).
        let m0 = read_meta(0)?.ok_or_else(|| not_bbolt("no meta page".into()))?;
        let page_size = match m0.validate() {
            Ok(()) => m0.page_size,
            Err(reason0) => {
                let mut found = None;
                let mut reason1 = String::from("missing");
                let mut ps = MIN_PAGE_SIZE;
                while ps <= MAX_PAGE_SIZE {
                    if let Some(m1) = read_meta(u64::from(ps))? {
                        match m1.validate() {
                            Ok(()) if m1.page_size == ps => {
                                found = Some(ps);
                                break;
                            }
                            Ok(()) => {}
                            Err(r) if ps == 4096 => reason1 = r,
                            Err(_) => {}
                        }
                    }
                    ps *= 2;
                }
                found.ok_or_else(|| {
                    not_bbolt(format!("meta page 0: {reason0}; meta page 1: {reason1}"))
                })?
            }
        };
        if !page_size.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size) {
            return Err(not_bbolt(format!("implausible page size {page_size}")));
        }
        let m1 = read_meta(u64::from(page_size))?;
        // bbolt DB.meta(): prefer the higher txid, fall back to the other when invalid.
        let mut cands: Vec<(u64, Meta)> = vec![(0, m0)];
        if let Some(m1) = m1 {
            cands.push((1, m1));
        }
        cands.sort_by_key(|(_, m)| std::cmp::Reverse(m.txid));
        let mut reasons = Vec::new();
        let mut chosen = None;
        for (pg, m) in cands {
            match m.validate() {
                Ok(()) if m.page_size == page_size => {
                    chosen = Some((pg, m));
                    break;
                }
                Ok(()) => {
                    reasons.push(format!("meta page {pg}: page size {} differs", m.page_size))
                }
                Err(r) => reasons.push(format!("meta page {pg}: {r}")),
            }
        }
        let (meta_page, meta) = chosen.ok_or_else(|| not_bbolt(reasons.join("; ")))?;
        let ps = u64::from(page_size);
        // Both meta pages' headers: bbolt writes them as pages 0 and 1, flag meta. The meta
        // checksum does not cover the header, and bbolt's page check (`FastCheck`, which
        // etcdutl runs) panics on a mismatch, so a flipped header byte is corruption.
        for pg in [0u64, 1] {
            if (pg + 1) * ps > db_len {
                continue;
            }
            let mut b = [0u8; PAGE_HEADER_SIZE];
            file.read_exact_at(&mut b, pg * ps)
                .map_err(|e| io_err(path, e))?;
            let hdr = PageHeader::parse(&b, pg)?;
            if hdr.id != pg || hdr.flags != page::META_PAGE_FLAG {
                return Err(corrupt(
                    pg,
                    format!(
                        "meta page header says id {} flags {:#x} (want id {pg}, flags {:#x})",
                        hdr.id,
                        hdr.flags,
                        page::META_PAGE_FLAG
                    ),
                ));
            }
        }
        let expected = meta.pgid.checked_mul(ps).ok_or_else(|| {
            corrupt(
                meta_page,
                format!("high water mark {} overflows", meta.pgid),
            )
        })?;
        if meta.pgid < 2 {
            return Err(corrupt(
                meta_page,
                format!("high water mark {} below 2 (the meta pages)", meta.pgid),
            ));
        }
        if expected > db_len {
            return Err(SnapshotError::Truncated {
                path: path.to_path_buf(),
                expected,
                actual: db_len,
            });
        }
        if meta.root < 2 || meta.root >= meta.pgid {
            return Err(corrupt(
                meta_page,
                format!(
                    "root bucket page {} outside [2, high water mark {})",
                    meta.root, meta.pgid
                ),
            ));
        }
        if meta.freelist != PGID_NO_FREELIST && (meta.freelist < 2 || meta.freelist >= meta.pgid) {
            return Err(corrupt(
                meta_page,
                format!(
                    "freelist page {} outside [2, high water mark {})",
                    meta.freelist, meta.pgid
                ),
            ));
        }
        Ok(Db {
            file,
            path: path.to_path_buf(),
            page_size,
            meta,
            meta_page,
            db_len,
        })
    }

    /// The meta in use.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }
    /// Which meta page (0 or 1) is in use.
    pub fn meta_page(&self) -> u64 {
        self.meta_page
    }
    /// Page size in bytes.
    pub fn page_size(&self) -> u32 {
        self.page_size
    }
    /// `tx.Size()`: high water mark times page size, in bytes.
    pub fn size(&self) -> u64 {
        self.meta.pgid * u64::from(self.page_size)
    }
    /// Bytes of the file that belong to the db (as given to [`Db::open`]).
    pub fn db_len(&self) -> u64 {
        self.db_len
    }
    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads page `id` with its overflow pages into `buf` (resized to the span) and returns
    /// its header. Checks: id below the high water mark, header id equal to `id`, span inside
    /// the db and at most [`MAX_SPAN_BYTES`].
    pub fn read_page(&self, id: u64, buf: &mut Vec<u8>) -> Result<PageHeader, SnapshotError> {
        let (hdr, n) = self.read_page_into(id, buf)?;
        buf.truncate(n);
        Ok(hdr)
    }

    /// Like [`Db::read_page`] but never shrinks `buf` (no re-zeroing when reused): the page
    /// is `buf[..n]`.
    fn read_page_into(
        &self,
        id: u64,
        buf: &mut Vec<u8>,
    ) -> Result<(PageHeader, usize), SnapshotError> {
        let hwm = self.meta.pgid;
        if id >= hwm {
            return Err(corrupt(
                id,
                format!("page id beyond the high water mark {hwm}"),
            ));
        }
        let ps = u64::from(self.page_size);
        if (buf.len() as u64) < ps {
            buf.resize(ps as usize, 0);
        }
        self.file
            .read_exact_at(&mut buf[..ps as usize], id * ps)
            .map_err(|e| io_err(&self.path, e))?;
        let hdr = PageHeader::parse(buf, id)?;
        if hdr.id != id {
            return Err(corrupt(
                id,
                format!("page header says id {} (type {})", hdr.id, hdr.typ()),
            ));
        }
        let span = u64::from(hdr.overflow) + 1;
        if id + span > hwm {
            return Err(corrupt(
                id,
                format!(
                    "overflow {} runs past the high water mark {hwm}",
                    hdr.overflow
                ),
            ));
        }
        if span * ps > MAX_SPAN_BYTES {
            return Err(corrupt(
                id,
                format!("overflow {} spans more than 64 MiB", hdr.overflow),
            ));
        }
        let n = (span * ps) as usize;
        if span > 1 {
            if buf.len() < n {
                buf.resize(n, 0);
            }
            self.file
                .read_exact_at(&mut buf[ps as usize..n], (id + 1) * ps)
                .map_err(|e| io_err(&self.path, e))?;
        }
        Ok((hdr, n))
    }

    /// The ids listed in the freelist page (empty when the freelist is not synced).
    pub fn freelist(&self) -> Result<Vec<u64>, SnapshotError> {
        if self.meta.freelist == PGID_NO_FREELIST {
            return Ok(Vec::new());
        }
        let mut buf = Vec::new();
        self.read_page(self.meta.freelist, &mut buf)?;
        page::freelist_ids(&buf, self.meta.freelist)
    }

    /// Full verification in one pass: bbolt `tx.Check` and etcd's `snapshot status` values.
    ///
    /// Check (bbolt `tx_check.go`): no double-freed ids; every reachable page below the high
    /// water mark, referenced once, of type branch/leaf, not free; every page below the high
    /// water mark reachable or free; keys strictly increasing and within their parent's
    /// range. Status (etcd `v3_snapshot.go` Status, 3.4 and 3.5): crc32c over each root
    /// bucket's name followed by each of its keys and values (values of nested buckets count
    /// as empty, nested buckets' contents are not hashed), `totalKey` = entries of the root's
    /// buckets, `revision` = main revision of the last key of bucket `key`.
    pub fn check_and_status(&self) -> Result<Status, SnapshotError> {
        self.walk().map(|(s, _)| s)
    }

    /// The free pages: the freelist's ids, or, when the freelist is not synced (etcd opens
    /// bbolt with `NoFreelistSync`), every page below the high water mark that no bucket
    /// reaches (bbolt `DB.freepages`). Runs the full check.
    pub fn free_pages(&self) -> Result<Vec<u64>, SnapshotError> {
        let (_, reachable, freed) = self.walk_sets()?;
        Ok((2..self.meta.pgid)
            .filter(|&id| freed.get(id) || !reachable.get(id))
            .collect())
    }

    fn walk(&self) -> Result<(Status, PageSet), SnapshotError> {
        self.walk_sets().map(|(s, r, _)| (s, r))
    }

    fn walk_sets(&self) -> Result<(Status, PageSet, PageSet), SnapshotError> {
        let hwm = self.meta.pgid;
        let mut reachable = PageSet::new(hwm);
        let mut freed = PageSet::new(hwm);
        // Freelist: ids below the high water mark, not the meta pages, not freed twice.
        let no_freelist = self.meta.freelist == PGID_NO_FREELIST;
        reachable.set(0);
        reachable.set(1);
        if !no_freelist {
            let mut buf = Vec::new();
            let fl = self.meta.freelist;
            let hdr = self.read_page(fl, &mut buf)?;
            for id in fl..=fl + u64::from(hdr.overflow) {
                if reachable.set(id) {
                    return Err(corrupt(id, "freelist page overlaps a meta page"));
                }
            }
            for id in page::freelist_ids(&buf, fl)? {
                if id < 2 || id >= hwm {
                    return Err(corrupt(
                        fl,
                        format!("freelist lists page {id}, outside [2, high water mark {hwm})"),
                    ));
                }
                if freed.set(id) {
                    return Err(corrupt(
                        id,
                        "page freed twice (listed twice in the freelist)",
                    ));
                }
            }
        }
        let mut w = Walker::new(
            self,
            &freed,
            reachable,
            std::thread::available_parallelism().map_or(1, |n| n.get()) > 1,
        );
        w.visit_page(self.meta.root, None, None, Ctx::Root)?;
        if !no_freelist {
            for id in 0..hwm {
                if !w.reachable.get(id) && !freed.get(id) {
                    return Err(corrupt(
                        id,
                        "unreachable unfreed (neither in a bucket nor in the freelist)",
                    ));
                }
            }
        }
        let status = Status {
            hash: w.hash,
            revision: w.revision,
            total_key: w.total_key,
            total_size: self.size(),
            version: w.version,
        };
        Ok((status, w.reachable, freed))
    }

    /// Entries of a bucket tree (its own leaves, nested buckets not descended) and the ids of
    /// all its pages (overflow included). `value` is the bucket's value in its parent; for the
    /// root bucket pass [`page::encode_bucket_header`]`(meta.root, meta.sequence)`.
    pub fn bucket_contents(
        &self,
        value: &[u8],
        page_ref: u64,
    ) -> Result<(Vec<Entry>, Vec<u64>), SnapshotError> {
        let (root, _seq) = bucket_header(value, page_ref, b"")?;
        let mut entries = Vec::new();
        let mut pages = Vec::new();
        if root == 0 {
            let inline = &value[BUCKET_HEADER_SIZE..];
            collect_leaf(inline, page_ref, &mut entries)?;
        } else {
            self.collect_tree(root, 0, &mut entries, &mut pages)?;
        }
        Ok((entries, pages))
    }

    /// The value (bucket header, plus the inline page when inline) of root-level bucket
    /// `name`, or `None` when the db has no such bucket. Errors: Corrupt, Io.
    pub fn root_bucket(&self, name: &[u8]) -> Result<Option<Vec<u8>>, SnapshotError> {
        let root = page::encode_bucket_header(self.meta.root, self.meta.sequence);
        let (entries, _) = self.bucket_contents(&root, self.meta_page)?;
        match entries.into_iter().find(|e| e.key == name) {
            None => Ok(None),
            Some(e) if e.flags & page::BUCKET_LEAF_FLAG == 0 => Err(corrupt(
                self.meta.root,
                format!(
                    "root entry {:?} is not a bucket",
                    String::from_utf8_lossy(name)
                ),
            )),
            Some(e) => Ok(Some(e.value)),
        }
    }

    /// Every entry of root-level bucket `name` (nested buckets not descended), or `None`
    /// when it does not exist. Reads the whole bucket into memory: for small buckets
    /// (`members`, `meta`), not `key`. Errors: Corrupt, Io.
    pub fn root_bucket_entries(&self, name: &[u8]) -> Result<Option<Vec<Entry>>, SnapshotError> {
        match self.root_bucket(name)? {
            None => Ok(None),
            Some(v) => Ok(Some(self.bucket_contents(&v, self.meta_page)?.0)),
        }
    }

    /// The greatest key of root-level bucket `name` (its last key), reading only the pages on
    /// the tree's rightmost path. `None` when the bucket is missing or empty.
    /// Errors: Corrupt, Io.
    pub fn last_key(&self, name: &[u8]) -> Result<Option<Vec<u8>>, SnapshotError> {
        let Some(value) = self.root_bucket(name)? else {
            return Ok(None);
        };
        let (mut id, _) = bucket_header(&value, self.meta_page, name)?;
        if id == 0 {
            let mut entries = Vec::new();
            collect_leaf(&value[BUCKET_HEADER_SIZE..], self.meta_page, &mut entries)?;
            return Ok(entries.pop().map(|e| e.key));
        }
        let mut buf = Vec::new();
        for _ in 0..=MAX_DEPTH {
            let hdr = self.read_page(id, &mut buf)?;
            page::check_element_table(&buf, &hdr, id)?;
            let Some(last) = usize::from(hdr.count).checked_sub(1) else {
                return Ok(None);
            };
            match hdr.flags {
                BRANCH_PAGE_FLAG => id = page::branch_elem(&buf, last, id)?.pgid,
                LEAF_PAGE_FLAG => return Ok(Some(page::leaf_elem(&buf, last, id)?.key.to_vec())),
                _ => {
                    return Err(corrupt(
                        id,
                        format!("expected a branch or leaf page, found {}", hdr.typ()),
                    ))
                }
            }
        }
        Err(corrupt(
            id,
            format!("b+tree deeper than {MAX_DEPTH} levels (a cycle?)"),
        ))
    }

    /// All page ids of the bucket trees below `value` (the bucket itself and, recursively,
    /// nested non-inline buckets): what becomes free when the bucket is dropped.
    pub fn bucket_pages_recursive(
        &self,
        value: &[u8],
        page_ref: u64,
        out: &mut Vec<u64>,
    ) -> Result<(), SnapshotError> {
        let (entries, pages) = self.bucket_contents(value, page_ref)?;
        out.extend(pages);
        for e in entries
            .iter()
            .filter(|e| e.flags & page::BUCKET_LEAF_FLAG != 0)
        {
            self.bucket_pages_recursive(&e.value, page_ref, out)?;
        }
        Ok(())
    }

    fn collect_tree(
        &self,
        id: u64,
        depth: usize,
        entries: &mut Vec<Entry>,
        pages: &mut Vec<u64>,
    ) -> Result<(), SnapshotError> {
        if depth > MAX_DEPTH {
            return Err(corrupt(
                id,
                format!("b+tree deeper than {MAX_DEPTH} levels (a cycle?)"),
            ));
        }
        let mut buf = Vec::new();
        let hdr = self.read_page(id, &mut buf)?;
        pages.extend(id..=id + u64::from(hdr.overflow));
        page::check_element_table(&buf, &hdr, id)?;
        match hdr.flags {
            BRANCH_PAGE_FLAG => {
                for i in 0..usize::from(hdr.count) {
                    let child = page::branch_elem(&buf, i, id)?.pgid;
                    self.collect_tree(child, depth + 1, entries, pages)?;
                }
                Ok(())
            }
            LEAF_PAGE_FLAG => collect_leaf(&buf, id, entries),
            _ => Err(corrupt(
                id,
                format!("expected a branch or leaf page, found {}", hdr.typ()),
            )),
        }
    }
}

/// Appends the elements of the leaf page in `buf` (page `id`) to `entries`. Errors: Corrupt
/// when the page is not a leaf or its element table lies outside the page.
pub(crate) fn collect_leaf(
    buf: &[u8],
    id: u64,
    entries: &mut Vec<Entry>,
) -> Result<(), SnapshotError> {
    let hdr = PageHeader::parse(buf, id)?;
    if hdr.flags != LEAF_PAGE_FLAG {
        return Err(corrupt(
            id,
            format!("expected a leaf page, found {}", hdr.typ()),
        ));
    }
    page::check_element_table(buf, &hdr, id)?;
    for i in 0..usize::from(hdr.count) {
        let e = page::leaf_elem(buf, i, id)?;
        entries.push(Entry {
            flags: e.flags,
            key: e.key.to_vec(),
            value: e.value.to_vec(),
        });
    }
    Ok(())
}

/// What the entries of the tree being walked mean for the status computation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ctx {
    /// The root bucket: every entry is a bucket whose name is hashed.
    Root,
    /// A bucket directly under the root: keys and values are hashed and counted.
    Top(TopKind),
    /// A bucket nested deeper: checked, not hashed.
    Nested(u32),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum TopKind {
    Key,
    Meta,
    Other,
}

/// The check + status walk over one part of the tree. The main walker may hand the second
/// half of a big bucket's root branch to a second walker on another thread (2 cores halve
/// the page copying); partial results are merged in key order: crc32c combined
/// (`crc32c_combine`), reachable sets checked for overlap and OR-ed, counts added.
struct Walker<'a> {
    db: &'a Db,
    reachable: PageSet,
    freed: &'a PageSet,
    hash: u32,
    /// Bytes fed into `hash` (needed to combine partial crcs).
    hash_len: u64,
    total_key: u64,
    revision: i64,
    /// Whether `revision` was set by a key of bucket `key` (for merging).
    rev_set: bool,
    version: Option<String>,
    pool: Vec<Vec<u8>>,
    depth: usize,
    /// May split work onto a second thread (main walker only, one split at a time).
    can_split: bool,
}

fn key_hex(k: &[u8]) -> String {
    const MAX: usize = 64;
    if k.len() > MAX {
        format!("{}...", hex::encode(&k[..MAX]))
    } else {
        hex::encode(k)
    }
}

impl<'a> Walker<'a> {
    fn new(db: &'a Db, freed: &'a PageSet, reachable: PageSet, can_split: bool) -> Walker<'a> {
        Walker {
            db,
            reachable,
            freed,
            hash: 0,
            hash_len: 0,
            total_key: 0,
            revision: 0,
            rev_set: false,
            version: None,
            pool: Vec::new(),
            depth: 0,
            can_split,
        }
    }

    #[inline]
    fn hash(&mut self, data: &[u8]) {
        self.hash = crc32c::crc32c_append(self.hash, data);
        self.hash_len += data.len() as u64;
    }

    /// A branch page of a top-level bucket with `n >= 2` children: the first half here, the
    /// second half on a scoped thread, then merged (same result and checks as sequential).
    #[allow(clippy::too_many_arguments)]
    fn visit_branch_split(
        &mut self,
        buf: &[u8],
        id: u64,
        n: usize,
        min: Option<&[u8]>,
        max: Option<&[u8]>,
        ctx: Ctx,
    ) -> Result<Option<Vec<u8>>, SnapshotError> {
        let elems = (0..n)
            .map(|i| page::branch_elem(buf, i, id))
            .collect::<Result<Vec<_>, _>>()?;
        let mid = n / 2;
        let mut right = Walker::new(self.db, self.freed, PageSet::new(self.db.meta.pgid), false);
        right.depth = self.depth;
        self.can_split = false;
        let elems = &elems;
        let (left, right) = std::thread::scope(|s| {
            let h = s.spawn(move || {
                let r = right.visit_children(id, elems, mid, n, None, max, ctx);
                (r, right)
            });
            let left = self.visit_children(id, elems, 0, mid, min, max, ctx);
            (left, h.join())
        });
        self.can_split = true;
        let left_last = left?;
        let (right_res, right) = right.map_err(|_| corrupt(id, "walker thread panicked"))?;
        // Pages both halves reached: what the sequential walk would have reported first.
        for (i, (a, b)) in self
            .reachable
            .0
            .iter_mut()
            .zip(&right.reachable.0)
            .enumerate()
        {
            if *a & *b != 0 {
                let p = i as u64 * 64 + u64::from((*a & *b).trailing_zeros());
                return Err(corrupt(p, "multiple references (page reachable twice)"));
            }
            *a |= *b;
        }
        let right_last = right_res?;
        // The check the sequential loop makes at the seam.
        verify_key_order(id, "branch", mid, elems[mid].key, left_last.as_deref(), max)?;
        self.hash = crc32c::crc32c_combine(self.hash, right.hash, right.hash_len as usize);
        self.hash_len += right.hash_len;
        self.total_key += right.total_key;
        if right.rev_set {
            (self.revision, self.rev_set) = (right.revision, true);
        }
        if right.version.is_some() {
            self.version = right.version;
        }
        Ok(right_last)
    }

    /// Children `from..to` of a branch page, in order (bbolt's key-order rules).
    #[allow(clippy::too_many_arguments)]
    fn visit_children(
        &mut self,
        id: u64,
        elems: &[BranchElem<'_>],
        from: usize,
        to: usize,
        min: Option<&[u8]>,
        max: Option<&[u8]>,
        ctx: Ctx,
    ) -> Result<Option<Vec<u8>>, SnapshotError> {
        let mut running_min: Option<Vec<u8>> = min.map(<[u8]>::to_vec);
        let mut last = None;
        for i in from..to {
            let BranchElem { key, pgid } = elems[i];
            verify_key_order(id, "branch", i - from, key, running_min.as_deref(), max)?;
            let child_max = if i + 1 < elems.len() {
                Some(elems[i + 1].key)
            } else {
                max
            };
            let sub = self.visit_page(pgid, Some(key), child_max, ctx)?;
            running_min = sub.clone();
            last = sub;
        }
        Ok(last)
    }
    /// Visits page `id` of a bucket tree; returns the largest key in its subtree.
    /// `min`: closed lower bound for the first key, `max`: open upper bound for all keys.
    fn visit_page(
        &mut self,
        id: u64,
        min: Option<&[u8]>,
        max: Option<&[u8]>,
        ctx: Ctx,
    ) -> Result<Option<Vec<u8>>, SnapshotError> {
        if self.depth >= MAX_DEPTH {
            return Err(corrupt(
                id,
                format!("pages nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        self.depth += 1;
        let mut buf = self.pool.pop().unwrap_or_default();
        let res = self.visit_page_in(id, min, max, ctx, &mut buf);
        self.pool.push(buf);
        self.depth -= 1;
        res
    }

    fn visit_page_in(
        &mut self,
        id: u64,
        min: Option<&[u8]>,
        max: Option<&[u8]>,
        ctx: Ctx,
        buf: &mut Vec<u8>,
    ) -> Result<Option<Vec<u8>>, SnapshotError> {
        let (hdr, n) = self.db.read_page_into(id, buf)?;
        let buf = &buf[..n];
        for p in id..=id + u64::from(hdr.overflow) {
            if self.reachable.set(p) {
                return Err(corrupt(p, "multiple references (page reachable twice)"));
            }
        }
        if self.freed.get(id) {
            return Err(corrupt(
                id,
                "reachable freed (page in use is listed in the freelist)",
            ));
        }
        page::check_element_table(buf, &hdr, id)?;
        match hdr.flags {
            BRANCH_PAGE_FLAG => {
                let n = usize::from(hdr.count);
                if n == 0 {
                    return Err(corrupt(id, "empty branch page"));
                }
                if n >= 2 && self.can_split && matches!(ctx, Ctx::Top(_)) {
                    return self.visit_branch_split(buf, id, n, min, max, ctx);
                }
                let elems = (0..n)
                    .map(|i| page::branch_elem(buf, i, id))
                    .collect::<Result<Vec<_>, _>>()?;
                self.visit_children(id, &elems, 0, n, min, max, ctx)
            }
            LEAF_PAGE_FLAG => self.visit_leaf(buf, id, min, max, ctx),
            _ => Err(corrupt(
                id,
                format!("invalid type: {} (expected branch or leaf)", hdr.typ()),
            )),
        }
    }

    fn visit_leaf(
        &mut self,
        buf: &[u8],
        id: u64,
        min: Option<&[u8]>,
        max: Option<&[u8]>,
        ctx: Ctx,
    ) -> Result<Option<Vec<u8>>, SnapshotError> {
        let hdr = PageHeader::parse(buf, id)?;
        let n = usize::from(hdr.count);
        let mut prev: Option<&[u8]> = min;
        for i in 0..n {
            let e = page::leaf_elem(buf, i, id)?;
            verify_key_order(id, "leaf", i, e.key, prev, max)?;
            prev = Some(e.key);
            self.entry(id, e, ctx)?;
        }
        if n > 0 {
            Ok(Some(page::leaf_elem(buf, n - 1, id)?.key.to_vec()))
        } else {
            Ok(None)
        }
    }

    fn entry(&mut self, id: u64, e: LeafElem<'_>, ctx: Ctx) -> Result<(), SnapshotError> {
        match ctx {
            Ctx::Root => {
                if !e.is_bucket() {
                    return Err(corrupt(
                        id,
                        format!(
                            "root bucket holds key {:?} that is not a bucket",
                            String::from_utf8_lossy(e.key)
                        ),
                    ));
                }
                self.hash(e.key);
                let kind = match e.key {
                    b"key" => TopKind::Key,
                    b"meta" => TopKind::Meta,
                    _ => TopKind::Other,
                };
                self.visit_bucket(id, e.key, e.value, Ctx::Top(kind))
            }
            Ctx::Top(kind) => {
                self.total_key += 1;
                self.hash(e.key);
                if e.is_bucket() {
                    // bbolt ForEach yields a nil value for a nested bucket.
                    return self.visit_bucket(id, e.key, e.value, Ctx::Nested(2));
                }
                self.hash(e.value);
                match kind {
                    TopKind::Key => {
                        let main = e.key.get(..8).ok_or_else(|| {
                            corrupt(
                                id,
                                format!(
                                    "bucket key: key {} is shorter than a revision (8 bytes)",
                                    key_hex(e.key)
                                ),
                            )
                        })?;
                        self.revision = i64::from_be_bytes(main.try_into().unwrap_or([0; 8]));
                        self.rev_set = true;
                    }
                    TopKind::Meta if e.key == b"storageVersion" => {
                        self.version = Some(String::from_utf8_lossy(e.value).trim().to_string());
                    }
                    _ => {}
                }
                Ok(())
            }
            Ctx::Nested(d) => {
                if e.is_bucket() {
                    if d > 64 {
                        return Err(corrupt(id, "buckets nested deeper than 64 levels"));
                    }
                    self.visit_bucket(id, e.key, e.value, Ctx::Nested(d + 1))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// A bucket value: inline (root 0, page follows) or a root page id.
    fn visit_bucket(
        &mut self,
        id: u64,
        name: &[u8],
        value: &[u8],
        ctx: Ctx,
    ) -> Result<(), SnapshotError> {
        let (root, _seq) = bucket_header(value, id, name)?;
        if root == 0 {
            let inline = &value[BUCKET_HEADER_SIZE..];
            let hdr = PageHeader::parse(inline, id).map_err(|_| {
                corrupt(
                    id,
                    format!(
                        "inline bucket {:?} has no page header",
                        String::from_utf8_lossy(name)
                    ),
                )
            })?;
            if hdr.flags != LEAF_PAGE_FLAG {
                return Err(corrupt(
                    id,
                    format!(
                        "inline bucket {:?} holds a {} page, expected leaf",
                        String::from_utf8_lossy(name),
                        hdr.typ()
                    ),
                ));
            }
            page::check_element_table(inline, &hdr, id)?;
            self.visit_leaf(inline, id, None, None, ctx).map(|_| ())
        } else {
            self.visit_page(root, None, None, ctx).map(|_| ())
        }
    }
}

/// bbolt `verifyKeyOrder`.
fn verify_key_order(
    id: u64,
    typ: &str,
    i: usize,
    key: &[u8],
    prev: Option<&[u8]>,
    max: Option<&[u8]>,
) -> Result<(), SnapshotError> {
    if let Some(p) = prev {
        if i == 0 && p > key {
            return Err(corrupt(
                id,
                format!(
                    "the first key[0]={} on {typ} page needs to be >= the key in the ancestor ({})",
                    key_hex(key),
                    key_hex(p)
                ),
            ));
        }
        if i > 0 && p >= key {
            return Err(corrupt(
                id,
                format!(
                    "key[{i}]={} on {typ} page needs to be > than previous element {} (keys not sorted)",
                    key_hex(key),
                    key_hex(p)
                ),
            ));
        }
    }
    if let Some(m) = max {
        if key >= m {
            return Err(corrupt(
                id,
                format!(
                    "key[{i}]={} on {typ} page needs to be < the next key in the ancestor ({})",
                    key_hex(key),
                    key_hex(m)
                ),
            ));
        }
    }
    Ok(())
}
