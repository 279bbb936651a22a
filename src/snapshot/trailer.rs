//! The sha256 trailer that etcd appends to a snapshot stream.
//!
//! etcd's `Maintenance.Snapshot` sends the bbolt db followed by 32 bytes: the sha256 of the
//! db bytes. `etcdutl snapshot restore` recognises it by the file size (`size % 512 == 32`,
//! `hasChecksum` in etcdutl/snapshot/v3_snapshot.go; a bbolt file is a multiple of its page
//! size, itself a multiple of 512) and strips it.

use sha2::{Digest, Sha256};

/// Length of the trailer in bytes.
pub const TRAILER_LEN: u64 = 32;

/// Whether a file or stream of `len` bytes carries a sha256 trailer (`hasChecksum`).
pub fn has_trailer(len: u64) -> bool {
    len % 512 == TRAILER_LEN
}

/// Result of [`TrailerHasher::finish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrailerCheck {
    /// Bytes of the bbolt db (the whole stream, minus 32 when a trailer is present).
    pub db_len: u64,
    /// sha256 of the db bytes (without the trailer).
    pub raw_sha256: [u8; 32],
    /// `None`: no trailer (length not `% 512 == 32`); `Some(matches)` otherwise.
    pub trailer: Option<bool>,
}

/// Streaming detector: feed every byte of the snapshot stream in order with
/// [`update`](Self::update); [`finish`](Self::finish) says whether the last 32 bytes are the
/// sha256 of the rest. Memory: a 32-byte hold-back buffer; one pass over the data.
#[derive(Clone, Default)]
pub struct TrailerHasher {
    hasher: Sha256,
    /// The last (up to) 32 bytes seen, not yet hashed.
    tail: Vec<u8>,
    len: u64,
}

impl std::fmt::Debug for TrailerHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrailerHasher")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl TrailerHasher {
    /// A fresh hasher.
    pub fn new() -> Self {
        TrailerHasher {
            hasher: Sha256::new(),
            tail: Vec::with_capacity(64),
            len: 0,
        }
    }

    /// Feeds the next chunk of the stream.
    pub fn update(&mut self, data: &[u8]) {
        self.len += data.len() as u64;
        let keep = TRAILER_LEN as usize;
        if data.len() >= keep {
            // Everything held back plus all but the last 32 bytes of `data` is db data.
            self.hasher.update(&self.tail);
            self.tail.clear();
            let (body, last) = data.split_at(data.len() - keep);
            self.hasher.update(body);
            self.tail.extend_from_slice(last);
        } else {
            self.tail.extend_from_slice(data);
            if self.tail.len() > keep {
                let excess = self.tail.len() - keep;
                self.hasher.update(&self.tail[..excess]);
                self.tail.drain(..excess);
            }
        }
    }

    /// Total bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing was fed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Ends the stream: db length, sha256 of the db bytes, and whether the trailer matches.
    pub fn finish(self) -> TrailerCheck {
        if has_trailer(self.len) && self.tail.len() == TRAILER_LEN as usize {
            let raw: [u8; 32] = self.hasher.finalize().into();
            TrailerCheck {
                db_len: self.len - TRAILER_LEN,
                raw_sha256: raw,
                trailer: Some(raw[..] == self.tail[..]),
            }
        } else {
            let mut h = self.hasher;
            h.update(&self.tail);
            TrailerCheck {
                db_len: self.len,
                raw_sha256: h.finalize().into(),
                trailer: None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(db: &[u8], with_trailer: bool) -> Vec<u8> {
        let mut v = db.to_vec();
        if with_trailer {
            v.extend_from_slice(&Sha256::digest(db));
        }
        v
    }

    #[test]
    fn detects_trailer_in_any_chunking() {
        let db: Vec<u8> = (0..4096u32 * 3).map(|i| (i % 251) as u8).collect();
        let s = stream(&db, true);
        for chunk in [1usize, 7, 31, 32, 33, 100, 4096, 100_000] {
            let mut h = TrailerHasher::new();
            for c in s.chunks(chunk) {
                h.update(c);
            }
            let r = h.finish();
            assert_eq!(r.db_len, db.len() as u64, "chunk {chunk}");
            assert_eq!(r.trailer, Some(true), "chunk {chunk}");
            assert_eq!(r.raw_sha256[..], Sha256::digest(&db)[..]);
        }
    }

    #[test]
    fn no_trailer_and_bad_trailer() {
        let db = vec![7u8; 8192];
        let mut h = TrailerHasher::new();
        h.update(&db);
        let r = h.finish();
        assert_eq!((r.db_len, r.trailer), (8192, None));
        assert_eq!(r.raw_sha256[..], Sha256::digest(&db)[..]);

        let mut s = stream(&db, true);
        s[100] ^= 1;
        let mut h = TrailerHasher::new();
        h.update(&s);
        assert_eq!(h.finish().trailer, Some(false));
    }

    #[test]
    fn empty_stream() {
        let r = TrailerHasher::new().finish();
        assert_eq!((r.db_len, r.trailer), (0, None));
    }
}
