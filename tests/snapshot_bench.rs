//! Benchmark of native status / verify / db rewrite against etcdctl 3.4, etcdutl 3.5 (ignored
//! by default; run `benches/status.sh`, which builds in release mode).
//!
//! Makes (once, cached in `$BENCH_DIR`, default /tmp/lifeboat-bench) a snapshot of
//! `$BENCH_MB` MiB (default 600) of 64 KiB values with etcd 3.5, or uses `$BENCH_SNAPSHOT`.
//! Every tool runs as its own process under GNU time (wall seconds, peak RSS), best of 3,
//! page cache warm. Prints a table: tool, wall s, peak RSS MiB, ratio to the reference.
use crate::common::*;

use std::path::{Path, PathBuf};
use std::process::Command;

use etcd_lifeboat::acquire::TrailerRule;
use etcd_lifeboat::restore::db::rewrite_db_bumped;
use etcd_lifeboat::restore::member::Member;

fn bench_dir() -> PathBuf {
    let d =
        PathBuf::from(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/tmp/lifeboat-bench".into()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn snapshot() -> PathBuf {
    if let Ok(p) = std::env::var("BENCH_SNAPSHOT") {
        return PathBuf::from(p);
    }
    let mb: usize = std::env::var("BENCH_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let path = bench_dir().join(format!("snap-{mb}MiB-64KiB.db"));
    if path.exists() {
        return path;
    }
    eprintln!("making a {mb} MiB snapshot of 64 KiB values with etcd 3.5 ...");
    let etcd = Etcd::start(EtcdOpts {
        version: Version::V3_5,
        extra_args: vec!["--quota-backend-bytes=8589934592".into()],
        ..Default::default()
    });
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let c = etcd.client().await;
        fill(&c, mb * 16, 64 << 10, "v/").await;
    });
    let tmp = path.with_extension("partial");
    etcd.etcdctl_ok(&["snapshot", "save", tmp.to_str().unwrap()]);
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// Runs `cmd` under GNU time: (wall s, peak RSS MiB); panics when it fails.
fn timed(cmd: &mut Command, label: &str) -> (f64, f64) {
    let out_file = bench_dir().join("time.out");
    let prog = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let envs: Vec<_> = cmd
        .get_envs()
        .map(|(k, v)| (k.to_owned(), v.map(|v| v.to_owned())))
        .collect();
    let mut t = Command::new("/usr/bin/time");
    t.arg("-f")
        .arg("%e %M")
        .arg("-o")
        .arg(&out_file)
        .arg(prog)
        .args(args);
    for (k, v) in envs {
        match v {
            Some(v) => t.env(k, v),
            None => t.env_remove(k),
        };
    }
    let out = t.output().unwrap();
    assert!(
        out.status.success(),
        "{label} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let s = std::fs::read_to_string(&out_file).unwrap();
    let mut it = s.split_whitespace();
    let wall: f64 = it.next().unwrap().parse().unwrap();
    let rss_kb: f64 = it.next().unwrap().parse().unwrap();
    (wall, rss_kb / 1024.0)
}

/// Best wall time of `n` runs, with the largest peak RSS seen; `prep` runs before each.
fn best(
    n: usize,
    label: &str,
    mut prep: impl FnMut(),
    mut make: impl FnMut() -> Command,
) -> (f64, f64) {
    let mut wall = f64::MAX;
    let mut rss: f64 = 0.0;
    for _ in 0..n {
        prep();
        let (w, r) = timed(&mut make(), label);
        wall = wall.min(w);
        rss = rss.max(r);
    }
    (wall, rss)
}

fn child(op: &str, file: &Path, out: Option<&Path>) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "--ignored",
        "--exact",
        "snapshot_bench::bench_child",
        "--nocapture",
        "--test-threads=1",
        "-q",
    ])
    .env("BENCH_OP", op)
    .env("BENCH_FILE", file);
    if let Some(o) = out {
        c.env("BENCH_OUT", o);
    }
    c
}

/// The measured operation, in a process of its own (invoked by [`bench`] through `child`).
#[test]
#[ignore]
fn bench_child() {
    let Ok(op) = std::env::var("BENCH_OP") else {
        return;
    };
    let file = PathBuf::from(std::env::var("BENCH_FILE").unwrap());
    match op.as_str() {
        // `etcd-lifeboat status FILE`: full check + status (what etcdctl does).
        "status" => println!(
            "{}",
            serde_json::to_string(&acquire_file(&file, TrailerRule::Skip).unwrap().status).unwrap()
        ),
        // The same plus the sha256 trailer (second thread).
        "verify" => println!(
            "{}",
            serde_json::to_string(&acquire_file(&file, TrailerRule::Required).unwrap().status)
                .unwrap()
        ),
        // The db part of a restore: verify (trailer + check + status), then copy + rewrite.
        "restore-db" => {
            let out = PathBuf::from(std::env::var("BENCH_OUT").unwrap());
            let m = Member {
                id: 0x71405583d3e2d5ce,
                name: "a".into(),
                peer_urls: vec!["http://127.0.0.1:2380".into()],
            };
            acquire_file(&file, TrailerRule::Required).unwrap();
            let db_len = std::fs::metadata(&file).unwrap().len() - 32;
            rewrite_db_bumped(&file, db_len, &out, &[m], 1, 1, 0).unwrap();
        }
        other => panic!("unknown BENCH_OP {other}"),
    }
}

#[test]
#[ignore]
fn bench() {
    let snap = snapshot();
    let size = std::fs::metadata(&snap).unwrap().len();
    // Warm the page cache.
    std::io::copy(
        &mut std::fs::File::open(&snap).unwrap(),
        &mut std::io::sink(),
    )
    .unwrap();
    let dir = bench_dir();
    let n = 3;
    let mut rows: Vec<(String, f64, f64, String)> = Vec::new();

    let e34 = best(
        n,
        "etcdctl 3.4 status",
        || {},
        || {
            let mut c = Command::new(etcdctl_bin(Version::V3_4));
            c.env("ETCDCTL_API", "3")
                .args(["snapshot", "status", "-w", "json"])
                .arg(&snap);
            c
        },
    );
    let e35 = best(
        n,
        "etcdutl 3.5 status",
        || {},
        || {
            let mut c = Command::new(etcdutl_bin());
            c.args(["snapshot", "status", "-w", "json"]).arg(&snap);
            c
        },
    );
    let st = best(n, "native status", || {}, || child("status", &snap, None));
    let vf = best(n, "native verify", || {}, || child("verify", &snap, None));
    rows.push((
        "etcdctl 3.4 snapshot status".into(),
        e34.0,
        e34.1,
        "1.00 (ref)".into(),
    ));
    rows.push((
        "etcdutl 3.5 snapshot status".into(),
        e35.0,
        e35.1,
        format!("{:.2}", e35.0 / e34.0),
    ));
    let reff = e34.0.min(e35.0);
    rows.push((
        "lifeboat status (check + status)".into(),
        st.0,
        st.1,
        format!("{:.2} of the faster etcd tool", st.0 / reff),
    ));
    rows.push((
        "lifeboat status + sha256 trailer (2 threads)".into(),
        vf.0,
        vf.1,
        format!("{:.2} of the faster etcd tool", vf.0 / reff),
    ));

    let restore_dir = dir.join("etcdutl-restore");
    let out_db = dir.join("rewritten.db");
    let eu = best(
        n,
        "etcdutl restore",
        || {
            let _ = std::fs::remove_dir_all(&restore_dir);
        },
        || {
            let mut c = Command::new(etcdutl_bin());
            c.args(["snapshot", "restore"])
                .arg(&snap)
                .args([
                    "--name=a",
                    "--initial-cluster=a=http://127.0.0.1:2380",
                    "--initial-cluster-token=tok",
                ])
                .args(["--initial-advertise-peer-urls=http://127.0.0.1:2380"])
                .arg(format!("--data-dir={}", restore_dir.display()));
            c
        },
    );
    let rw = best(
        n,
        "native restore-db",
        || {
            let _ = std::fs::remove_file(&out_db);
        },
        || child("restore-db", &snap, Some(&out_db)),
    );
    rows.push((
        "etcdutl 3.5 snapshot restore".into(),
        eu.0,
        eu.1,
        "1.00 (ref)".into(),
    ));
    rows.push((
        "lifeboat restore db (sha256 + check + copy + rewrite)".into(),
        rw.0,
        rw.1,
        format!("{:.2}", rw.0 / eu.0),
    ));
    let _ = std::fs::remove_dir_all(&restore_dir);
    let _ = std::fs::remove_file(&out_db);

    println!(
        "\nsnapshot: {} ({:.0} MiB, 64 KiB values), best of {n}, page cache warm",
        snap.display(),
        size as f64 / 1048576.0
    );
    println!(
        "| {:<54} | {:>7} | {:>13} | {:<28} |",
        "tool", "wall s", "peak RSS MiB", "ratio"
    );
    println!(
        "|{}|{}|{}|{}|",
        "-".repeat(56),
        "-".repeat(9),
        "-".repeat(15),
        "-".repeat(30)
    );
    for (t, w, r, ratio) in rows {
        println!("| {t:<54} | {w:>7.2} | {r:>13.1} | {ratio:<28} |");
    }
}
