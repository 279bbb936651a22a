//! S3 downloads by ranged GETs (`S3Store::get_stream`, issue 15): objects spanning several
//! ranges come back byte for byte, and an object replaced during the download fails the read
//! (`If-Match` on every range) instead of mixing two versions. Against moto on loopback (or
//! the endpoint of `ETCD_LIFEBOAT_TEST_S3_*`, see tests/common/s3.rs).

use crate::s3h;

use bytes::Bytes;
use etcd_lifeboat::store::{ObjectKey, Store};
use tokio::io::AsyncReadExt;

use crate::s3h::pseudo_random as data;

async fn s3_store() -> (Store, s3h::S3Server) {
    let srv = tokio::task::spawn_blocking(s3h::S3Server::start)
        .await
        .unwrap();
    let store = Store::from_config(&srv.storage_config()).await.unwrap();
    (store, srv)
}

fn range_size(store: &Store) -> usize {
    match store {
        Store::S3(s) => s.range_size() as usize,
        _ => unreachable!("an S3 store"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_of_several_ranges_come_back_whole() {
    let (store, _srv) = s3_store().await;
    let r = range_size(&store);
    assert_eq!(r, 5 << 20, "the test config uses 5 MiB parts");
    // Several ranges plus a tail, exactly two ranges, one byte over a range, one range, small,
    // empty.
    for (i, len) in [5 * r + 12_345, 2 * r, r + 1, r, 1000, 0]
        .into_iter()
        .enumerate()
    {
        let body = data(len, i as u64 + 1);
        let k = ObjectKey::new(format!("ranged/{i}.db.zst")).unwrap();
        store
            .put_bytes(&k, Bytes::from(body.clone()))
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut rd = store.get_stream(&k).await.unwrap();
        // Small reads, so range boundaries fall inside reads.
        let mut buf = vec![0u8; 100_003];
        loop {
            let n = rd.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got.len(), len, "length of object {i}");
        assert!(got == body, "content of object {i} ({len} bytes)");
    }
    let missing = ObjectKey::new("ranged/missing").unwrap();
    match store.get_stream(&missing).await {
        Err(e) => assert!(e.is_not_found(), "{e}"),
        Ok(_) => panic!("a stream of a missing object"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_replaced_mid_read_fails_and_never_mixes() {
    let (store, _srv) = s3_store().await;
    let r = range_size(&store);
    // 12 ranges: the reader holds at most a few, so most are fetched after the replacement.
    let old = data(12 * r, 11);
    let new = data(12 * r, 12);
    let k = ObjectKey::new("ranged/replaced.db.zst").unwrap();
    store.put_bytes(&k, Bytes::from(old.clone())).await.unwrap();

    let mut rd = store.get_stream(&k).await.unwrap();
    let mut got = vec![0u8; 1 << 20];
    rd.read_exact(&mut got).await.unwrap();
    store.put_bytes(&k, Bytes::from(new.clone())).await.unwrap();

    let mut buf = vec![0u8; 1 << 20];
    let err = loop {
        match rd.read(&mut buf).await {
            Ok(0) => panic!(
                "read {} bytes of a replaced object without an error",
                got.len()
            ),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break e,
        }
    };
    assert!(got.len() < old.len(), "{} bytes", got.len());
    assert!(
        got[..] == old[..got.len()],
        "bytes before the error are the old object's (no mix)"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("changed while it was being downloaded") && msg.contains("replaced.db.zst"),
        "{msg}"
    );

    // A fresh read sees the new object, whole.
    let mut all = Vec::new();
    store
        .get_stream(&k)
        .await
        .unwrap()
        .read_to_end(&mut all)
        .await
        .unwrap();
    assert!(all == new, "the new object after the replacement");
}
