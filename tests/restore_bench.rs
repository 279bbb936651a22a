//! Driver for benches/restore_bench.sh (ignored in normal test runs): one native restore of
//! `$RESTORE_BENCH_SNAPSHOT` into `$RESTORE_BENCH_DATA_DIR` (single member, etcdutl's default
//! flags), so that the script can time it and take its peak RSS with /usr/bin/time, the same
//! way it measures `etcdutl snapshot restore`. Used until the binary's `restore` is wired.

#[test]
#[ignore = "benchmark driver, run by benches/restore_bench.sh"]
fn bench_restore_once() {
    let snap = std::env::var("RESTORE_BENCH_SNAPSHOT").expect("RESTORE_BENCH_SNAPSHOT");
    let dd = std::env::var("RESTORE_BENCH_DATA_DIR").expect("RESTORE_BENCH_DATA_DIR");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(etcd_lifeboat::restore::run(
        etcd_lifeboat::restore::RestoreOptions {
            snapshot: Some(snap.into()),
            data_dir: Some(dd.into()),
            ..Default::default()
        },
        None,
    ))
    .unwrap();
}
