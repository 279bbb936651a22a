//! Backup benchmark: `etcd-lifeboat backup` (local store, and S3 on loopback when a moto
//! server is available) and native `status` against `etcdctl snapshot save` / `snapshot status`,
//! measured in the same run on the same etcd 3.5 member, printed as a table of ratios.
//!
//! Run: `cargo bench --bench backup` (BENCH_DB_MIB sets the db size, default 640 MiB of
//! 64 KiB values; BENCH_REPS the repetitions, default 2). Wall times and peak RSS come from
//! GNU time (`/usr/bin/time -f "%e %M"`). Targets (issue 3): backup to local <= 1.15x etcdctl
//! save, to S3 <= 1.3x, peak RSS <= 100 MiB, native status <= 0.5x etcdctl status; issue 10:
//! an age-encrypted backup to local <= 1.15x too (key made by `age-keygen`).
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/s3.rs"]
mod s3h;

use std::path::Path;
use std::process::Command;

use common::*;

/// (wall seconds, peak RSS MiB) of one command run under GNU time.
fn timed(cmd: &mut Command) -> (f64, f64) {
    let prog = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let envs: Vec<_> = cmd
        .get_envs()
        .map(|(k, v)| (k.to_owned(), v.map(|v| v.to_owned())))
        .collect();
    let mut t = Command::new("/usr/bin/time");
    t.args(["-f", "TIME %e %M"]).arg(&prog).args(&args);
    for (k, v) in envs {
        match v {
            Some(v) => t.env(k, v),
            None => t.env_remove(k),
        };
    }
    let out = t
        .output()
        .expect("GNU time runs (scripts/install.sh installs it)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{prog:?} {args:?} failed:\n{err}");
    let line = err
        .lines()
        .rev()
        .find(|l| l.starts_with("TIME "))
        .expect("time output");
    let mut f = line.split_whitespace().skip(1);
    let wall: f64 = f.next().unwrap().parse().unwrap();
    let kib: f64 = f.next().unwrap().parse().unwrap();
    (wall, kib / 1024.0)
}

fn median(mut v: Vec<(f64, f64)>) -> (f64, f64) {
    v.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    let wall = v[v.len() / 2].0;
    let rss = v.iter().map(|x| x.1).fold(0.0, f64::max);
    (wall, rss)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probing
    }
    let db_mib: usize = std::env::var("BENCH_DB_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(640);
    let reps: usize = std::env::var("BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let bin = env!("CARGO_BIN_EXE_etcd-lifeboat");
    let etcd = Etcd::start(EtcdOpts {
        version: Version::V3_5,
        extra_args: vec!["--quota-backend-bytes=8589934592".into()],
        ..Default::default()
    });
    eprintln!("filling etcd with {db_mib} MiB of 64 KiB values ...");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        fill_random(&etcd.client().await, db_mib * 16, 64 * 1024, "/bench/").await
    });
    let dir = etcd.dir.path();
    let store = dir.join("store");
    let cfg = etcd.write_config(&store);
    let snap = dir.join("etcdctl.db");
    let ep = etcd.endpoints()[0].clone();

    // S3 on loopback (moto): the same etcd config with `storage` replaced.
    let s3 = s3h::S3Server::start();
    let base = std::fs::read_to_string(&cfg).unwrap();
    let storage = serde_yaml::Mapping::from_iter([(
        "storage".into(),
        serde_yaml::to_value(s3.storage_config()).unwrap(),
    )]);
    let s3_cfg = dir.join("s3.yaml");
    std::fs::write(
        &s3_cfg,
        format!(
            "{}{}compression: {{level: 3}}\n",
            &base[..base.find("storage:").unwrap()],
            serde_yaml::to_string(&storage).unwrap()
        ),
    )
    .unwrap();

    // The local config plus age encryption to a key made by the real age-keygen.
    let key = dir.join("bench-age-key.txt");
    let kg = Command::new("age-keygen")
        .arg("-o")
        .arg(&key)
        .output()
        .expect("age-keygen (scripts/install.sh installs age)");
    assert!(kg.status.success(), "{kg:?}");
    let public = Command::new("age-keygen")
        .arg("-y")
        .arg(&key)
        .output()
        .unwrap();
    let public = String::from_utf8(public.stdout).unwrap();
    let age_cfg = dir.join("age.yaml");
    std::fs::write(
        &age_cfg,
        format!(
            "{base}encryption:\n  age_recipients: [\"{}\"]\n",
            public.trim()
        ),
    )
    .unwrap();

    let backup = |config: &Path| {
        timed(Command::new(bin).args([
            "--config",
            config.to_str().unwrap(),
            "backup",
            "--no-progress",
        ]))
    };
    let (mut save, mut local, mut remote, mut encrypted) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        let _ = std::fs::remove_file(&snap);
        save.push(timed(
            Command::new(etcdctl_bin(Version::V3_5))
                .args([
                    "--endpoints",
                    &ep,
                    "snapshot",
                    "save",
                    snap.to_str().unwrap(),
                ])
                .env("ETCDCTL_API", "3"),
        ));
        local.push(backup(&cfg));
        let _ = std::fs::remove_dir_all(&store);
        encrypted.push(backup(&age_cfg));
        let _ = std::fs::remove_dir_all(&store);
        remote.push(backup(&s3_cfg));
    }
    let size = std::fs::metadata(&snap).unwrap().len();
    let (mut st_ctl, mut st_ours, mut st_hash) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps.max(3) {
        st_ctl.push(timed(
            Command::new(etcdctl_bin(Version::V3_5))
                .args(["snapshot", "status", snap.to_str().unwrap()])
                .env("ETCDCTL_API", "3"),
        ));
        st_ours.push(timed(Command::new(bin).args([
            "status",
            "--skip-hash-check",
            snap.to_str().unwrap(),
        ])));
        st_hash.push(timed(
            Command::new(bin).args(["status", snap.to_str().unwrap()]),
        ));
    }
    let (save, local, remote, encrypted) = (
        median(save),
        median(local),
        median(remote),
        median(encrypted),
    );
    let (st_ctl, st_ours, st_hash) = (median(st_ctl), median(st_ours), median(st_hash));
    println!(
        "\nbackup benchmark: etcd 3.5.1, db {:.0} MiB (random 64 KiB values), median of {reps} runs, same run",
        size as f64 / 1048576.0
    );
    println!("| operation | wall s | peak RSS MiB | ratio | target |");
    println!("|---|---:|---:|---:|---|");
    let row = |name: &str, (wall, rss): (f64, f64), base: f64, target: &str| {
        println!(
            "| {name} | {wall:.2} | {rss:.0} | {:.2} | {target} |",
            wall / base
        );
    };
    row("etcdctl snapshot save", save, save.0, "");
    row(
        "etcd-lifeboat backup, local store",
        local,
        save.0,
        "<= 1.15, RSS <= 100",
    );
    row(
        "etcd-lifeboat backup, local store, age-encrypted",
        encrypted,
        save.0,
        "<= 1.15, RSS <= 100",
    );
    row(
        "etcd-lifeboat backup, S3 (moto on loopback)",
        remote,
        save.0,
        "<= 1.3, RSS <= 100",
    );
    row("etcdctl snapshot status", st_ctl, st_ctl.0, "");
    row(
        "etcd-lifeboat status --skip-hash-check (etcdctl's work)",
        st_ours,
        st_ctl.0,
        "<= 0.5",
    );
    row(
        "etcd-lifeboat status (default: + sha256 trailer)",
        st_hash,
        st_ctl.0,
        "",
    );
}
