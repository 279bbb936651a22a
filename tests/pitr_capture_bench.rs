//! PITR capture under load (ignored; run with `cargo test --test integration
//! pitr_capture_bench:: -- --ignored --nocapture`): a daemon process captures while 32 concurrent writers put random
//! 300-byte values (k8s-like object sizes, incompressible) as fast as etcd takes them. Prints
//! the write rate, the capture lag, the daemon's peak RSS and the bytes stored per event; asserts
//! the chain covers every revision and the RSS stays bounded (< 128 MiB).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::daemon_support::*;
use etcd_lifeboat::pitr::chain::read_chain;
use etcd_lifeboat::store::manifest::catalog;

#[test]
#[ignore]
fn capture_keeps_up_with_bounded_memory() {
    let n: usize = std::env::var("PITR_BENCH_WRITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    let etcd = Etcd::start(EtcdOpts::default());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(etcd.client());
    rt.block_on(fill(&client, 10, 64, "pre/"));
    let store_dir = etcd.dir.path().join("store");
    let store = local_store(&store_dir);
    let port = free_port();
    let cfg = etcd.dir.path().join("d.yaml");
    std::fs::write(
        &cfg,
        format!(
            "{}schedule:\n  cron: \"0 0 1 1 *\"\npitr:\n  enabled: true\n  interval: 2s\n  \
             max_bytes: 8388608\nhttp:\n  listen: \"127.0.0.1:{port}\"\n",
            etcd.config_yaml(&store_dir)
        ),
    )
    .unwrap();
    let d = DaemonProc::spawn(
        &cfg,
        format!("127.0.0.1:{port}").parse().unwrap(),
        "--refresh-interval 5s",
        &etcd.dir.path().join("d.log"),
    );
    let mut base = None;
    wait("a base", Duration::from_secs(20), || {
        base = rt
            .block_on(catalog(&store))
            .unwrap()
            .backups
            .first()
            .cloned();
        base.is_some()
    });
    let base = base.unwrap();
    std::thread::sleep(Duration::from_secs(3));

    // Peak RSS sampler.
    let peak = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let pid = d.pid();
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    if let Some(kib) = s
                        .lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.split_whitespace().next())
                        .and_then(|v| v.parse::<u64>().ok())
                    {
                        peak.fetch_max(kib, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let rss0 = d.rss_kib();
    let t0 = Instant::now();
    rt.block_on(fill_random(&client, n, 300, "/registry/bench/"));
    let wrote = t0.elapsed();
    let last = rt.block_on(async {
        let mut kv = client.kv_client();
        kv.put("/registry/bench-done", "x", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision()
    });
    let mut ch = None;
    wait(
        "chain reaches the last write",
        Duration::from_secs(120),
        || {
            let c = rt.block_on(read_chain(&store, &base)).unwrap();
            let done = c.last_revision >= last;
            ch = Some(c);
            done
        },
    );
    let caught_up = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let ch = ch.unwrap();
    assert!(ch.gaps.is_empty() && ch.broken.is_empty() && ch.closed.is_none());
    let events: u64 = ch.deltas.iter().map(|m| m.events).sum();
    let raw: u64 = ch.deltas.iter().map(|m| m.raw_bytes).sum();
    let peak_mib = peak.load(Ordering::Relaxed) as f64 / 1024.0;
    eprintln!(
        "{n} writes of 300 B in {:.1} s ({:.0} writes/s); chain caught up {:.1} s after the first write; \
         {} deltas, {events} events, {:.1} raw B/event, {:.1} stored B/event; daemon RSS {:.1} MiB idle, peak {peak_mib:.1} MiB",
        wrote.as_secs_f64(),
        n as f64 / wrote.as_secs_f64(),
        caught_up.as_secs_f64(),
        ch.delta_count,
        raw as f64 / events as f64,
        ch.stored_bytes as f64 / events as f64,
        rss0 as f64 / 1024.0,
    );
    assert!(peak_mib < 128.0, "peak RSS {peak_mib:.1} MiB");
}
