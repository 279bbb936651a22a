//! Uploads are bounded in memory: a large object streamed through [`Upload::write`] raises the
//! process's peak RSS by about two parts (S3) or a few MiB (local), whatever its size. The
//! measurement runs in a child process of the test binary (`common::in_own_process`), so that
//! no other test of the binary moves the peak. Prints throughput figures.

#![allow(clippy::field_reassign_with_default)]

use crate::common::in_own_process;
use crate::s3h;

use std::time::Instant;

use etcd_lifeboat::config::StorageConfig;
use etcd_lifeboat::store::{ObjectKey, Store};
use tokio::io::AsyncReadExt;

/// Peak resident set size of this process so far, in bytes (`VmHWM`).
fn peak_rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

const MIB: usize = 1 << 20;

/// Streams `total` bytes in 1 MiB chunks, reads them back; returns (peak RSS growth, MB/s up).
async fn stream_through(store: &Store, total: usize) -> (u64, f64) {
    let key = ObjectKey::new("mem/big.db.zst").unwrap();
    let mut chunk = vec![0u8; MIB];
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let before = peak_rss();
    let t = Instant::now();
    let mut u = store.begin_upload(&key).await.unwrap();
    for _ in 0..total / MIB {
        for b in chunk.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        u.write(&chunk).await.unwrap();
    }
    let info = u.finish().await.unwrap();
    let up = total as f64 / 1e6 / t.elapsed().as_secs_f64();
    assert_eq!(info.bytes, total as u64);
    let mut r = store.get_stream(&key).await.unwrap();
    let mut n = 0usize;
    loop {
        let k = r.read(&mut chunk).await.unwrap();
        if k == 0 {
            break;
        }
        n += k;
    }
    assert_eq!(n, total);
    (peak_rss().saturating_sub(before), up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_use_bounded_memory() {
    // Alone in a child process: no other test of the binary may move the peak.
    if !in_own_process(module_path!(), "uploads_use_bounded_memory") {
        return;
    }
    let total = 160 * MIB;

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StorageConfig::default();
    cfg.local.path = dir.path().to_path_buf();
    let local = Store::from_config(&cfg).await.unwrap();
    let (grow, up) = stream_through(&local, total).await;
    eprintln!(
        "local: {} MiB streamed, peak RSS +{:.1} MiB, upload {up:.0} MB/s",
        total / MIB,
        grow as f64 / MIB as f64
    );
    assert!(
        grow < 32 * MIB as u64,
        "local upload grew peak RSS by {grow} bytes"
    );

    let srv = tokio::task::spawn_blocking(s3h::S3Server::start)
        .await
        .unwrap();
    let s3cfg = srv.storage_config(); // 5 MiB parts
    let s3 = Store::from_config(&s3cfg).await.unwrap();
    let (grow, up) = stream_through(&s3, total).await;
    eprintln!(
        "s3 (moto): {} MiB streamed in 5 MiB parts, peak RSS +{:.1} MiB, upload {up:.0} MB/s",
        total / MIB,
        grow as f64 / MIB as f64
    );
    // Two parts (10 MiB) plus the SDK's and the read side's buffers; far below the 160 MiB
    // an unbounded upload would hold.
    assert!(
        grow < 48 * MIB as u64,
        "S3 upload grew peak RSS by {grow} bytes"
    );
}
