//! Member and cluster IDs, derived exactly as etcd derives them for a new cluster.
//!
//! Sources (etcd-io/etcd, release-3.5):
//! - `server/etcdserver/api/membership/member.go` `computeMemberId`: sha1 over the member's
//!   peer URLs (sorted, joined with "") followed by the cluster token; first 8 bytes big-endian.
//! - `server/etcdserver/api/membership/cluster.go` `genID`: sha1 over every member ID sorted
//!   ascending, each as 8 bytes big-endian; first 8 bytes big-endian.
//!
//! The same flags therefore give the same IDs as `etcdutl snapshot restore` and as a fresh
//! `etcd --initial-cluster-state new`; 3.4 and 3.6 derive them the same way.

use sha1::{Digest, Sha1};

/// The member ID etcd gives a member of a new cluster (`computeMemberId` with `now == nil`).
///
/// `peer_urls` are the member's peer URLs in any order (they are sorted here, as etcd's
/// `types.NewURLs` does); `token` is `--initial-cluster-token`.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let mut h = Sha1::new();
    for u in urls {
        h.update(u.as_bytes());
    }
    h.update(token.as_bytes());
    first_u64(&h.finalize())
}

/// The cluster ID etcd derives from the member IDs (`RaftCluster.genID`), in any order.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut h = Sha1::new();
    for id in ids {
        h.update(id.to_be_bytes());
    }
    first_u64(&h.finalize())
}

fn first_u64(digest: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Measured on etcdutl 3.5.1 (etcd-restore-spec.md §2.4 and a restore in this repo's tests):
    /// a = http://127.0.0.1:2380, b = http://127.0.0.1:2381, token "tok".
    #[test]
    fn ids_match_etcdutl_3_5_1() {
        let a = member_id(&["http://127.0.0.1:2380".into()], "tok");
        let b = member_id(&["http://127.0.0.1:2381".into()], "tok");
        assert_eq!(a, 0x71405583d3e2d5ce);
        assert_eq!(b, 0x321b4ccd5c32edea);
        assert_eq!(cluster_id(&[a, b]), 0x8d9fa1f3dd2c1d34);
        assert_eq!(cluster_id(&[b, a]), 0x8d9fa1f3dd2c1d34);
    }

    #[test]
    fn member_id_sorts_urls() {
        let x = member_id(&["http://b:1".into(), "http://a:1".into()], "t");
        let y = member_id(&["http://a:1".into(), "http://b:1".into()], "t");
        assert_eq!(x, y);
        assert_ne!(
            x,
            member_id(&["http://a:1".into(), "http://b:1".into()], "u")
        );
    }
}
