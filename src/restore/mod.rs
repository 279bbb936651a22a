//! Native restore: turn a snapshot into data dirs that etcd boots from, without etcd's tools.
//!
//! The sequence follows `etcdutl snapshot restore` (etcd-io/etcd release-3.5,
//! `etcdutl/snapshot/v3_snapshot.go` `Restore`): validate the flags ([`plan`]), check the
//! snapshot's integrity, copy the db and rewrite its membership and consistent index
//! (`saveDB` + `updateCIndex`, in `db.rs`), write the WAL ([`wal`]) and the `.snap` file
//! ([`snap`]) (`saveWALAndSnap`). Unlike etcdutl, every file is built in a hidden staging dir
//! beside its target, fsynced, and renamed into place only when all members are complete and
//! every check passed, so a failure leaves nothing behind; and `--out-dir` writes every member
//! of the new cluster in one go. The bbolt verification comes before any db byte is written;
//! for a raw `.db` file the sha256 trailer check (a full read, the slowest check) runs on a
//! second thread while the staging dirs are filled, and a mismatch discards them.
//!
//! # etcd versions: what is tested and what is not
//! - 3.5 (3.5.1 here): WAL and `.snap` bytes compared with etcdutl 3.5.1's; a 3-member cluster
//!   restored with `--out-dir` boots, serves every key, accepts writes (`tests/restore_*.rs`).
//! - 3.4 (3.4.23 here): one member restored from a store backup boots with every key. 3.4 reads
//!   membership from the v2 store in the `.snap` file, which is written as 3.5 writes it.
//! - 3.6: not run (no binaries available here); by reading release-3.6 only. 3.6 reads
//!   membership from the db (the `members` bucket that `db.rs` rewrites), accepts a v2 store
//!   holding only membership (which is all this writes), and the db keeps the snapshot's own
//!   `meta/storageVersion` (never a newer one: 3.4.31+ refuses a db that says 3.6).
//!   `--bump-revision`/`--mark-compacted` (3.5.10+/3.6) are not implemented.

pub mod db;
pub(crate) mod from_store;
pub mod ids;
pub mod kubeadm;
mod pb;
pub mod plan;
pub mod snap;
pub mod wal;
use crate::acquire::{self, AcquireOptions, TrailerRule};
use crate::crypto::FileFormat;
use crate::snapshot::Status;
use db::{rewrite_db, RestoreMember};

use std::fs::{self, DirBuilder, File};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use crate::error::UsageError;
use plan::{Plan, PlanError, PlanInput, Target};

/// Output format of `restore` (the values of `cli::Output`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Output {
    /// Human-readable text.
    #[default]
    Table,
    /// One JSON document.
    Json,
}

/// `etcd-lifeboat restore`: flags as `etcdutl snapshot restore` has them, plus sources and
/// extras (DESIGN.md "restore").
#[derive(clap::Args, Debug, Clone)]
pub struct RestoreArgs {
    /// Snapshot file to restore: a raw db (`etcdctl snapshot save` output), `.db.zst` or
    /// `.db.zst.age` (detected by content).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["from_store", "snapshot_path"])]
    pub snapshot: Option<PathBuf>,
    /// Snapshot file as a positional argument (as `etcdutl snapshot restore FILE`).
    #[arg(value_name = "SNAPSHOT", conflicts_with = "from_store")]
    pub snapshot_path: Option<PathBuf>,
    /// Restore a backup from the configured store: its id, a unique id prefix, or `latest`.
    #[arg(long, value_name = "ID|latest")]
    pub from_store: Option<String>,
    /// Data dir to create (absent or empty) [default: <name>.etcd].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Dedicated WAL dir (absent or empty) [default: <data-dir>/member/wal].
    #[arg(long, value_name = "DIR")]
    pub wal_dir: Option<PathBuf>,
    /// Name of the member to restore [default: default].
    #[arg(long)]
    pub name: Option<String>,
    /// Members of the restored cluster, `name=peerURL,...` [default: default=http://localhost:2380].
    #[arg(long, value_name = "NAME=URL,...")]
    pub initial_cluster: Option<String>,
    /// Token of the restored cluster; member and cluster IDs derive from it [default: etcd-cluster].
    #[arg(long, value_name = "TOKEN")]
    pub initial_cluster_token: Option<String>,
    /// This member's peer URLs; must equal its URLs in --initial-cluster [default: those URLs].
    #[arg(long, value_name = "URLS")]
    pub initial_advertise_peer_urls: Option<String>,
    /// Do not compare the sha256 trailer (for a db copied out of a data dir, which has none).
    #[arg(long)]
    pub skip_hash_check: bool,
    /// age identity file for an encrypted snapshot or backup (age-keygen output, an ssh
    /// private key, or an `age -p` encrypted identity file); repeatable.
    #[arg(
        long,
        value_name = "FILE",
        env = "ETCD_LIFEBOAT_AGE_IDENTITY_FILE",
        value_delimiter = ','
    )]
    pub identity: Vec<PathBuf>,
    /// Write every member of --initial-cluster into DIR/<name> (rebuild a whole cluster).
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// Read name, data dir, peer URLs, initial cluster and token from a kubeadm etcd static
    /// pod manifest; flags given explicitly win.
    #[arg(long, value_name = "PATH")]
    pub kubeadm_manifest: Option<PathBuf>,
    /// Print the plan (members, IDs, directories) and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Output format (`-w`/`--write-out` as etcdctl; same spelling as the other commands).
    #[arg(long, short = 'o', visible_short_alias = 'w', visible_alias = "write-out", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

impl Default for RestoreArgs {
    /// etcdutl's defaults, no source, table output (for library callers and tests).
    fn default() -> Self {
        RestoreArgs {
            snapshot: None,
            snapshot_path: None,
            from_store: None,
            data_dir: None,
            wal_dir: None,
            name: None,
            initial_cluster: None,
            initial_cluster_token: None,
            initial_advertise_peer_urls: None,
            skip_hash_check: false,
            identity: Vec::new(),
            out_dir: None,
            kubeadm_manifest: None,
            dry_run: false,
            output: Output::Table,
        }
    }
}

/// Where the snapshot comes from.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
enum SourceSpec {
    File { path: PathBuf, format: FileFormat },
    Store { which: String },
}

/// Runs `restore`. Errors: [`UsageError`] for bad flags (exit 2); anything else exits 1, and
/// then nothing has been written.
pub async fn run(args: RestoreArgs, config_path: Option<&Path>) -> anyhow::Result<()> {
    let manifest = read_kubeadm_manifest(&args)?;
    let plan = make_plan(&args, manifest.as_ref())?;
    let spec = source_spec(&args)?;
    if args.dry_run {
        print_report(&args, &plan, &spec, None, manifest.as_ref(), true);
        return Ok(());
    }
    // Parents of the targets (and of separate WAL dirs) are created (etcdutl:
    // `CreateDirAll`), and removed again on failure.
    let mut parents = vec![temp_parent(&plan.targets[0].data_dir)?];
    for w in plan.targets.iter().filter_map(|t| t.wal_dir.as_ref()) {
        parents.push(temp_parent(w)?);
    }
    let temp_dir = parents[0].0.clone();
    let snapshot = acquire_snapshot(&args, &spec, &temp_dir, config_path).await?;
    let plan2 = plan.clone();
    let (status, staged) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let staged = stage_members(&plan2, &snapshot.path, snapshot.db_len)?;
        Ok((snapshot.status.clone(), staged))
    })
    .await??;
    tokio::task::spawn_blocking(move || commit(staged)).await??;
    // Success: keep the parent dirs created for the targets.
    for p in &mut parents {
        p.2 = true;
    }
    print_report(&args, &plan, &spec, Some(&status), manifest.as_ref(), false);
    Ok(())
}

/// Reads `--kubeadm-manifest` if given.
fn read_kubeadm_manifest(args: &RestoreArgs) -> anyhow::Result<Option<kubeadm::EtcdManifest>> {
    match &args.kubeadm_manifest {
        None => Ok(None),
        Some(p) => {
            Ok(Some(kubeadm::read_manifest(p).map_err(|e| {
                UsageError::new(format!("--kubeadm-manifest: {e}"))
            })?))
        }
    }
}

/// Step 1 (`Restore`: `NewURLs`, `NewURLsMap`, `VerifyBootstrap`, `NewClusterFromURLsMap`,
/// data dir checks): the validated plan.
fn make_plan(args: &RestoreArgs, m: Option<&kubeadm::EtcdManifest>) -> anyhow::Result<Plan> {
    let m = m.cloned().unwrap_or_default();
    let input = PlanInput {
        name: args.name.clone().or(m.name),
        initial_cluster: args.initial_cluster.clone().or(m.initial_cluster),
        token: args
            .initial_cluster_token
            .clone()
            .or(m.initial_cluster_token),
        advertise_peer_urls: args
            .initial_advertise_peer_urls
            .clone()
            .or(m.initial_advertise_peer_urls),
        // On the host the data lives at the volume's hostPath (usually the same path).
        data_dir: args.data_dir.clone().or(if args.out_dir.is_none() {
            m.data_host_path.or(m.data_dir)
        } else {
            None
        }),
        wal_dir: args.wal_dir.clone().or(if args.out_dir.is_none() {
            m.wal_dir
        } else {
            None
        }),
        out_dir: args.out_dir.clone(),
    };
    Plan::build(&input).map_err(|e| match e {
        PlanError::Flag { .. } => anyhow::Error::new(UsageError::new(e.to_string())),
        e => anyhow::Error::new(e),
    })
}

fn source_spec(args: &RestoreArgs) -> anyhow::Result<SourceSpec> {
    let file = args.snapshot.clone().or(args.snapshot_path.clone());
    match (file, &args.from_store) {
        (Some(_), Some(_)) => {
            Err(UsageError::new("--snapshot and --from-store: give only one source").into())
        }
        (None, None) => Err(UsageError::new(
            "--snapshot FILE or --from-store ID|latest: a source is required",
        )
        .into()),
        (None, Some(w)) => Ok(SourceSpec::Store { which: w.clone() }),
        (Some(p), None) => {
            let format = crate::crypto::detect_format(&p)
                .with_context(|| format!("--snapshot: cannot read {}", p.display()))?;
            Ok(SourceSpec::File { path: p, format })
        }
    }
}

/// A directory for temporary files on the target's file system, and the top-most parent
/// directory this run created (removed again if the restore fails).
struct TempParent(PathBuf, Option<PathBuf>, bool);

impl Drop for TempParent {
    fn drop(&mut self) {
        if let (Some(created), false) = (&self.1, self.2) {
            let _ = fs::remove_dir_all(created);
        }
    }
}

/// The parent of `dir`, created if missing (0700 like etcd's `CreateDirAll`).
fn temp_parent(dir: &Path) -> anyhow::Result<TempParent> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut top = None;
    let mut p = parent.as_path();
    while !p.exists() {
        top = Some(p.to_path_buf());
        match p.parent() {
            Some(q) if !q.as_os_str().is_empty() => p = q,
            _ => break,
        }
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&parent)
        .with_context(|| format!("creating {}", parent.display()))?;
    Ok(TempParent(parent, top, false))
}

/// Steps 2-3 (`copyAndVerifyDB`): the snapshot as a verified local file through
/// [`crate::acquire`] (decrypted and decompressed beside the target when needed; a stored
/// backup compared with its manifest). etcdutl's trailer rule: required unless
/// `--skip-hash-check`.
async fn acquire_snapshot(
    args: &RestoreArgs,
    spec: &SourceSpec,
    temp_dir: &Path,
    config_path: Option<&Path>,
) -> anyhow::Result<acquire::Acquired> {
    let opts = AcquireOptions {
        identities: crate::crypto::identities_from_args(&args.identity)?,
        trailer: if args.skip_hash_check {
            TrailerRule::Skip
        } else {
            TrailerRule::Required
        },
        temp_base: temp_dir,
    };
    match spec {
        SourceSpec::File { path, .. } => {
            Ok(acquire::acquire(acquire::Source::File(path), &opts).await?)
        }
        SourceSpec::Store { which } => from_store::fetch(which, &opts, config_path).await,
    }
}

/// A directory being built beside (or, when the target exists empty, inside) its target.
struct Staged {
    target: PathBuf,
    /// The staging dir; removed on drop unless it became the target.
    tmp: Option<tempfile::TempDir>,
    /// The target existed (empty): entries of `tmp` are moved into it one by one.
    inside: bool,
    /// Paths put in place by `commit` (for rollback).
    placed: Vec<PathBuf>,
}

impl Staged {
    /// Starts building `target`, which the plan found absent or empty (checked again here).
    fn new(target: &Path) -> anyhow::Result<Staged> {
        let exists = target.exists();
        let (base, prefix) = if exists {
            (target.to_path_buf(), ".etcd-lifeboat-staging-".to_string())
        } else {
            let name = target
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let parent = match target.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            (parent, format!(".{name}.etcd-lifeboat-"))
        };
        if exists && fs::read_dir(target)?.next().is_some() {
            return Err(PlanError::NotEmpty {
                what: "directory",
                path: target.to_path_buf(),
            }
            .into());
        }
        let tmp = tempfile::Builder::new()
            .prefix(&prefix)
            .permissions(fs::Permissions::from_mode(0o700))
            .tempdir_in(&base)
            .with_context(|| format!("creating a staging dir in {}", base.display()))?;
        Ok(Staged {
            target: target.to_path_buf(),
            tmp: Some(tmp),
            inside: exists,
            placed: Vec::new(),
        })
    }

    fn root(&self) -> &Path {
        self.tmp.as_ref().expect("not committed").path()
    }

    /// Renames the staged content into place and fsyncs the directories involved.
    fn commit(&mut self) -> anyhow::Result<()> {
        if self.inside {
            for e in fs::read_dir(self.root())? {
                let e = e?;
                let to = self.target.join(e.file_name());
                fs::rename(e.path(), &to)
                    .with_context(|| format!("renaming into {}", to.display()))?;
                self.placed.push(to);
            }
            fsync_dir(&self.target)?;
        } else {
            let tmp = self.root().to_path_buf();
            fs::rename(&tmp, &self.target).with_context(|| {
                format!("renaming {} to {}", tmp.display(), self.target.display())
            })?;
            self.placed.push(self.target.clone());
            // The staging dir is the target now: TempDir must not remove anything.
            let _ = self.tmp.take().map(tempfile::TempDir::keep);
            fsync_dir(
                self.target
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new(".")),
            )?;
        }
        Ok(())
    }

    /// Undoes `commit` (removes what it put in place).
    fn rollback(&mut self) {
        for p in self.placed.drain(..) {
            let _ = fs::remove_dir_all(&p);
        }
    }
}

fn fsync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("fsync {}", dir.display()))
}

fn fsync_file(p: &Path) -> anyhow::Result<()> {
    File::open(p)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("fsync {}", p.display()))
}

fn mkdir0700(p: &Path) -> anyhow::Result<()> {
    DirBuilder::new()
        .mode(0o700)
        .create(p)
        .with_context(|| format!("creating {}", p.display()))
}

/// Step 4 (`saveDB`, `updateCIndex`, `saveWALAndSnap`): every target member's files, staged.
fn stage_members(plan: &Plan, src: &Path, db_len: u64) -> anyhow::Result<Vec<Staged>> {
    let n = plan.members.len() as u64;
    let members: Vec<RestoreMember> = plan
        .members
        .iter()
        .map(|m| RestoreMember {
            id: m.id,
            name: m.name.clone(),
            peer_urls: m.peer_urls.clone(),
        })
        .collect();
    let mut staged = Vec::new();
    let mut first_db: Option<PathBuf> = None;
    for t in &plan.targets {
        let data = Staged::new(&t.data_dir)?;
        let member_dir = data.root().join("member");
        let snap_dir = member_dir.join("snap");
        mkdir0700(&member_dir)?;
        mkdir0700(&snap_dir)?;
        let db = snap_dir.join("db");
        match &first_db {
            None => {
                save_db(src, db_len, &db, &members, n)?;
                first_db = Some(db.clone());
            }
            // Every member's db is the same: copy the first one (copy_file_range).
            Some(src) => {
                fs::copy(src, &db).with_context(|| format!("copying db to {}", db.display()))?;
            }
        }
        fs::set_permissions(&db, fs::Permissions::from_mode(0o600))?;
        fsync_file(&db)?;
        snap::write_snap(&snap_dir, &plan.members)
            .with_context(|| format!("writing snap file in {}", snap_dir.display()))?;
        fsync_dir(&snap_dir)?;

        let wal_staged = match &t.wal_dir {
            Some(w) => Some(Staged::new(w)?),
            None => None,
        };
        let wal_dir = match &wal_staged {
            Some(s) => s.root().to_path_buf(),
            None => {
                let w = member_dir.join("wal");
                mkdir0700(&w)?;
                w
            }
        };
        save_wal(t, plan, &wal_dir)?;
        fsync_dir(&wal_dir)?;
        fsync_dir(&member_dir)?;
        fsync_dir(data.root())?;
        staged.push(data);
        staged.extend(wal_staged);
    }
    Ok(staged)
}

/// `saveDB` + `updateCIndex`: copy the db (without trailer) and rewrite membership,
/// `meta/consistent_index` = N and `meta/term` = 1 (etcd-restore-spec.md §2).
fn save_db(
    src: &Path,
    db_len: u64,
    dst: &Path,
    members: &[RestoreMember],
    n: u64,
) -> anyhow::Result<()> {
    rewrite_db(src, db_len, dst, members, n, 1)
        .with_context(|| format!("writing db {}", dst.display()))
}

/// `saveWALAndSnap`'s WAL part for one member.
fn save_wal(t: &Target, plan: &Plan, wal_dir: &Path) -> anyhow::Result<()> {
    wal::write_wal(wal_dir, t.id, plan.cluster_id, &plan.members)
        .with_context(|| format!("writing WAL in {}", wal_dir.display()))?;
    Ok(())
}

/// Step 5: rename every staged dir into place; on failure undo the ones already placed.
fn commit(mut staged: Vec<Staged>) -> anyhow::Result<()> {
    for i in 0..staged.len() {
        if let Err(e) = staged[i].commit() {
            for s in staged[..=i].iter_mut() {
                s.rollback();
            }
            return Err(e);
        }
    }
    Ok(())
}

/// One member in the report.
#[derive(Serialize)]
struct MemberReport<'a> {
    name: &'a str,
    id: String,
    peer_urls: &'a [String],
    data_dir: &'a Path,
    #[serde(skip_serializing_if = "Option::is_none")]
    wal_dir: Option<&'a Path>,
    etcd_flags: Vec<String>,
}

#[derive(Serialize)]
struct Report<'a> {
    dry_run: bool,
    source: &'a SourceSpec,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot: Option<&'a Status>,
    cluster_id: String,
    initial_cluster_token: &'a str,
    initial_cluster: &'a str,
    members: Vec<MemberReport<'a>>,
    reminders: Vec<String>,
}

/// The etcd flags that start a restored member.
fn etcd_flags(plan: &Plan, t: &Target) -> Vec<String> {
    let m = plan.member(t);
    let urls = m.peer_urls.join(",");
    let mut f = vec![
        format!("--name={}", t.name),
        format!("--data-dir={}", t.data_dir.display()),
    ];
    if let Some(w) = &t.wal_dir {
        f.push(format!("--wal-dir={}", w.display()));
    }
    f.extend([
        format!("--initial-advertise-peer-urls={urls}"),
        format!("--listen-peer-urls={urls}"),
        format!("--initial-cluster={}", plan.initial_cluster),
        format!("--initial-cluster-token={}", plan.token),
        "--initial-cluster-state=new".to_string(),
    ]);
    f
}

fn reminders(plan: &Plan, kubeadm: bool) -> Vec<String> {
    let mut r = vec![
        format!(
            "keep --initial-cluster-token={} and the peer URLs exactly as above: the member IDs and cluster ID {:016x} derive from them, and etcd refuses a member whose peer URLs differ from its WAL",
            plan.token, plan.cluster_id
        ),
        "--initial-cluster-state=new (etcd ignores --initial-cluster* once a data dir has a WAL; never point these members at the old cluster)".to_string(),
    ];
    if kubeadm {
        r.push("stop etcd before restoring and start it after: move the manifest out of /etc/kubernetes/manifests and back (kubelet stops and starts the static pod)".to_string());
    } else {
        r.push("add your usual client URL and TLS flags (--listen-client-urls, --advertise-client-urls, --cert-file, ...)".to_string());
    }
    if plan.members.len() > 1 {
        r.insert(
            0,
            format!(
                "start all {} members, each from its own restored data dir (a leader needs a quorum of {}); do not restore some members and reuse old data dirs for others",
                plan.members.len(),
                plan.members.len() / 2 + 1
            ),
        );
    }
    r.push("clients that watch (kube-apiserver, controllers) saw newer revisions before: restart them after the cluster is up".to_string());
    r
}

fn print_report(
    args: &RestoreArgs,
    plan: &Plan,
    spec: &SourceSpec,
    status: Option<&Status>,
    manifest: Option<&kubeadm::EtcdManifest>,
    dry_run: bool,
) {
    let members: Vec<MemberReport> = plan
        .targets
        .iter()
        .map(|t| MemberReport {
            name: &t.name,
            id: format!("{:016x}", t.id),
            peer_urls: &plan.member(t).peer_urls,
            data_dir: &t.data_dir,
            wal_dir: t.wal_dir.as_deref(),
            etcd_flags: etcd_flags(plan, t),
        })
        .collect();
    let report = Report {
        dry_run,
        source: spec,
        snapshot: status,
        cluster_id: format!("{:016x}", plan.cluster_id),
        initial_cluster_token: &plan.token,
        initial_cluster: &plan.initial_cluster,
        members,
        reminders: reminders(plan, manifest.is_some()),
    };
    if args.output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serialises")
        );
        return;
    }
    let src = match spec {
        SourceSpec::File { path, .. } => path.display().to_string(),
        SourceSpec::Store { which } => format!("store backup {which}"),
    };
    if dry_run {
        println!(
            "Dry run: nothing written. Would restore {src} into cluster {} (token {}):",
            report.cluster_id, plan.token
        );
    } else {
        let s = status.expect("status after restore");
        println!(
            "Restored {src} (revision {}, {} keys, hash {:08x}, {} bytes) into cluster {} (token {}):",
            s.revision, s.total_key, s.hash, s.total_size, report.cluster_id, plan.token
        );
    }
    for (t, m) in plan.targets.iter().zip(&report.members) {
        println!();
        println!(
            "member {}  id {}  data dir {}",
            t.name,
            m.id,
            t.data_dir.display()
        );
        if let Some(km) = manifest {
            let mpath = args
                .kubeadm_manifest
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            println!("  in {mpath}:");
            if let Some(hp) = &km.data_host_path {
                let note = if hp == &t.data_dir {
                    "unchanged".to_string()
                } else {
                    format!("now {}", hp.display())
                };
                println!(
                    "    the etcd-data volume: hostPath: {{path: {}}}  ({note})",
                    t.data_dir.display()
                );
            }
            let container_dir = km.data_dir.clone().unwrap_or_else(|| t.data_dir.clone());
            println!("    the etcd command: (keep the other flags)");
            for f in &m.etcd_flags {
                if f.starts_with("--listen-peer-urls") {
                    continue;
                }
                if f.starts_with("--data-dir=") && km.data_host_path.is_some() {
                    println!("    - --data-dir={}", container_dir.display());
                } else {
                    println!("    - {f}");
                }
            }
        } else {
            println!("  start it with:");
            println!("    etcd {}", m.etcd_flags.join(" \\\n      "));
        }
    }
    println!();
    println!("Remember:");
    for r in &report.reminders {
        println!("  - {r}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: RestoreArgs,
    }

    #[test]
    fn flags_as_etcdutl() {
        let c = Cli::try_parse_from([
            "restore",
            "snap.db",
            "--data-dir",
            "/d",
            "--wal-dir",
            "/w",
            "--name",
            "a",
            "--initial-cluster",
            "a=http://h:1",
            "--initial-cluster-token",
            "t",
            "--initial-advertise-peer-urls",
            "http://h:1",
            "--skip-hash-check",
            "-w",
            "json",
        ])
        .unwrap();
        let a = c.args;
        assert_eq!(a.snapshot_path, Some(PathBuf::from("snap.db")));
        assert_eq!(a.wal_dir, Some(PathBuf::from("/w")));
        assert!(a.skip_hash_check);
        assert_eq!(a.output, Output::Json);
        assert!(Cli::try_parse_from(["restore", "x.db", "--snapshot", "y.db"]).is_err());
        assert!(
            Cli::try_parse_from(["restore", "--snapshot", "y.db", "--from-store", "latest"])
                .is_err()
        );
        let c = Cli::try_parse_from([
            "restore",
            "--from-store",
            "latest",
            "--out-dir",
            "/o",
            "--dry-run",
        ])
        .unwrap();
        assert_eq!(c.args.from_store.as_deref(), Some("latest"));
        assert!(c.args.dry_run);
    }

    #[test]
    fn etcd_flags_for_a_member() {
        let p = Plan::build(&PlanInput {
            name: Some("a".into()),
            initial_cluster: Some("a=http://127.0.0.1:2380,b=http://127.0.0.1:2381".into()),
            token: Some("tok".into()),
            data_dir: Some("/nonexistent/lifeboat/a".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            etcd_flags(&p, &p.targets[0]),
            [
                "--name=a",
                "--data-dir=/nonexistent/lifeboat/a",
                "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                "--listen-peer-urls=http://127.0.0.1:2380",
                "--initial-cluster=a=http://127.0.0.1:2380,b=http://127.0.0.1:2381",
                "--initial-cluster-token=tok",
                "--initial-cluster-state=new",
            ]
        );
    }
}
