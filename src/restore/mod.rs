//! Native restore: turn a snapshot into data dirs that etcd boots from, without etcd's tools.
//!
//! The sequence follows `etcdutl snapshot restore` (etcd-io/etcd release-3.5,
//! `etcdutl/snapshot/v3_snapshot.go` `Restore`): validate the flags ([`plan`]), check the
//! snapshot's integrity, copy the db and rewrite its membership and consistent index
//! (`saveDB` + `updateCIndex`, in `db.rs`), write the WAL ([`wal`]) and the `.snap` file
//! ([`snap`]) (`saveWALAndSnap`). Unlike etcdutl, every file is built in a hidden staging dir
//! beside its target, fsynced, and renamed into place only when all members are complete and
//! every check passed, so a failure leaves nothing behind; and `--out-dir` writes every member
//! of the new cluster in one go. A stored or compressed snapshot is fully checked while it is
//! unpacked, before staging; for a raw `.db` file the two full-read checks (bbolt structure and
//! status, sha256 trailer) run on their own threads while the db is copied into the staging
//! dirs (a restore then takes about as long as `cp` + fsync), and a failure discards them.
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
//! - 3.5.30 (Debian unstable's, fetched by scripts/install.sh): the reference for
//!   `--bump-revision N --mark-compacted` (etcdutl `modifyLatestRevision`): the restored db's
//!   hash, revision and key count equal etcdutl 3.5.30's; 3.5.1 and 3.5.30 boot from it with the
//!   old revisions compacted (`tests/restore_bump.rs`). A `--kubeadm-manifest` restore bumps by
//!   [`KUBEADM_DEFAULT_BUMP`] unless `--bump-revision 0`.
//!
//! # Membership from the snapshot
//! The snapshot's `members` bucket (etcd 3.4/3.5 keep every member there) is read before
//! planning and printed. `--members-from-snapshot` takes names and peer URLs from it; a kubeadm
//! manifest of a node that joined later (`--initial-cluster-state=existing`) or listing fewer
//! members than the snapshot is refused with both lists (`tests/restore_ha.rs`).
//!
//! # Point in time (`--to-revision`, `--to-time`; issue 16, docs/pitr.md)
//! With `--from-store`, the base and its deltas are chosen ([`crate::pitr::plan`]) over the
//! chains as `list` and `verify` see them ([`crate::pitr::chain`]), the base is acquired as
//! above, copied to a private `pitr.db` and the deltas are applied to it natively
//! ([`crate::pitr::apply`]); that db, fully checked, is then the source of every member, so
//! membership, `--bump-revision` and `--out-dir` work on revision R exactly as on a snapshot
//! (`tests/pitr_restore.rs`).

pub mod db;
pub mod ids;
pub mod kubeadm;
pub mod member;
mod pb;
pub mod plan;
pub mod snap;
pub mod wal;
use crate::acquire::{self, AcquireError, AcquireOptions, TrailerRule};
use crate::config::{Config, ConfigError};
use crate::crypto::{CryptoError, FileFormat};
use crate::snapshot::{SnapshotError, Status};
use crate::store::{manifest, Manifest, Store, StoreError};
use db::{rewrite_db_bumped, rewrite_db_in_place, Bumped, SnapshotMember};

use std::fs::{self, DirBuilder, File};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::UsageError;
use crate::pitr::apply::PitrApplied;
use crate::pitr::plan::{PitrPlan, PitrTarget};
use plan::{Plan, PlanError, PlanInput, Target};

/// Options of a restore: `etcdutl snapshot restore`'s flags plus sources and extras
/// (DESIGN.md "restore"); the CLI's `restore` flags convert into it. `Default`: etcdutl's
/// defaults, no source, text output.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Snapshot file to restore: a raw db (`etcdctl snapshot save` output), `.db.zst` or
    /// `.db.zst.age` (detected by content). Exclusive with `from_store`.
    pub snapshot: Option<PathBuf>,
    /// Restore a backup from the configured store: its id, a unique id prefix, or `latest`.
    pub from_store: Option<String>,
    /// With `from_store` and a config of several (named) clusters: whose store
    /// ([`Config::select_cluster`]).
    pub cluster: Option<String>,
    /// Data dir to create (absent or empty) [default: `<name>.etcd`].
    pub data_dir: Option<PathBuf>,
    /// Dedicated WAL dir (absent or empty) [default: `<data-dir>/member/wal`].
    pub wal_dir: Option<PathBuf>,
    /// Name of the member to restore [default: default].
    pub name: Option<String>,
    /// Members of the restored cluster, `name=peerURL,...` [default: `default=http://localhost:2380`].
    pub initial_cluster: Option<String>,
    /// Token of the restored cluster; member and cluster IDs derive from it [default: etcd-cluster].
    pub initial_cluster_token: Option<String>,
    /// This member's peer URLs; must equal its URLs in --initial-cluster [default: those URLs].
    pub initial_advertise_peer_urls: Option<String>,
    /// Do not compare the sha256 trailer (for a db copied out of a data dir, which has none).
    pub skip_hash_check: bool,
    /// age identity file for an encrypted snapshot or backup (age-keygen output, an ssh
    /// private key, or an `age -p` encrypted identity file); repeatable.
    pub identity: Vec<PathBuf>,
    /// Write every member of --initial-cluster into `DIR/<name>` (rebuild a whole cluster).
    pub out_dir: Option<PathBuf>,
    /// Read name, data dir, peer URLs, initial cluster and token from a kubeadm etcd static
    /// pod manifest; flags given explicitly win.
    pub kubeadm_manifest: Option<PathBuf>,
    /// Print the plan (members, IDs, directories) and write nothing.
    pub dry_run: bool,
    /// Print the report as one JSON document instead of text.
    pub json: bool,
    /// Raise the latest revision by N after the restore (etcdutl 3.5.10+ `--bump-revision`;
    /// requires --mark-compacted), so that revisions never go backwards for watchers
    /// [default: 0; with --kubeadm-manifest 1000000000, `--bump-revision 0` opts out].
    pub bump_revision: Option<u64>,
    /// Mark the bumped revision as compacted, so every watcher re-lists (etcdutl 3.5.10+;
    /// required with --bump-revision > 0, refused otherwise; implied with --kubeadm-manifest).
    pub mark_compacted: bool,
    /// Take the members (names and peer URLs) of the restored cluster from the snapshot's own
    /// membership (its `members` bucket) instead of --initial-cluster.
    pub members_from_snapshot: bool,
    /// etcd version that will run the restored data (e.g. 3.5.30) [default: the tag of
    /// --kubeadm-manifest's image]: warns when older than the snapshot's writer, refuses a
    /// storage version it cannot boot (a 3.6 db on 3.4).
    pub target_version: Option<String>,
    /// With --from-store: extract the backup's control-plane files (`backup.files`) below DIR
    /// (`DIR/etc/kubernetes/pki/...`, recorded modes) instead of restoring a data dir; checked
    /// against the manifest; never overwrites (refused, nothing written, when a file exists).
    pub files_to: Option<PathBuf>,
    /// With `from_store`: point-in-time recovery to exactly this revision (the base's delta
    /// chain applied up to it; `latest`: the newest base whose chain covers it).
    pub to_revision: Option<i64>,
    /// With `from_store`: point-in-time recovery to the last revision observed at or before
    /// this time.
    pub to_time: Option<chrono::DateTime<chrono::Utc>>,
}

/// Why a restore failed. Nothing has been written when a restore returns one: staging dirs
/// and created parents are removed. [`RestoreError::Usage`] and [`RestoreError::Config`]
/// exit 2 ([`crate::error::exit_code`]), the others 1.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// A bad flag or flag combination; the message names the flag.
    #[error("{0}")]
    Usage(#[from] UsageError),
    /// The config file (needed by `--from-store`) is invalid; the message names the key.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A target directory is not usable (not empty, not a directory, unreadable).
    #[error("{0}")]
    Plan(#[from] PlanError),
    /// The snapshot could not be fetched or failed its checks (trailer, bbolt, manifest).
    #[error("{0}")]
    Acquire(#[from] AcquireError),
    /// An `--identity` file cannot be read or parsed.
    #[error("{0}")]
    Crypto(#[from] CryptoError),
    /// The configured store cannot be opened or the backup is not found in it.
    #[error("{what}: {source}")]
    Store {
        /// What was being done (`--from-store ID: looking up the backup in STORE`).
        what: String,
        /// The cause.
        source: StoreError,
    },
    /// Reading the snapshot or writing a member's db failed.
    #[error("{what}: {source}")]
    Snapshot {
        /// What was being done, naming the file.
        what: String,
        /// The cause.
        source: SnapshotError,
    },
    /// A file system operation on a target failed.
    #[error("{what}: {source}; nothing was restored: check the permissions and free space of the target's file system")]
    Io {
        /// What was being done, naming the path.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// No delta chain covers the point-in-time target, or the chain cannot be read.
    #[error("{0}")]
    PitrPlan(#[from] crate::pitr::plan::PitrPlanError),
    /// Applying the deltas failed (damaged delta, wrong identity, ...).
    #[error("{0}")]
    PitrApply(#[from] crate::pitr::apply::ApplyError),
    /// A worker thread of the restore panicked or was cancelled.
    #[error("restore worker: {0}")]
    Worker(#[from] tokio::task::JoinError),
}

/// Result of the restore steps.
type Result<T, E = RestoreError> = std::result::Result<T, E>;

/// An `Io` error with `what` naming the operation and path.
fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RestoreError {
    let what = what.into();
    move |source| RestoreError::Io { what, source }
}

/// Where the snapshot comes from.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
enum SourceSpec {
    File {
        path: PathBuf,
        format: FileFormat,
    },
    Store {
        /// As given: an id, a unique prefix or `latest`.
        which: String,
        /// The backup it resolved to (set once found).
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
}

/// etcd's default `--quota-backend-bytes` (2 GiB): a point-in-time restore keeps the whole
/// history up to R and can exceed it (writes then fail with NOSPACE).
const ETCD_DEFAULT_QUOTA_BYTES: u64 = 2 << 30;

/// Default `--bump-revision` of a `--kubeadm-manifest` restore (with `--mark-compacted`):
/// far above any revision a restored cluster reached since the snapshot.
pub const KUBEADM_DEFAULT_BUMP: u64 = 1_000_000_000;

/// Runs `restore`. Errors: [`UsageError`] for bad flags (exit 2); anything else exits 1, and
/// then nothing has been written.
pub async fn run(args: RestoreOptions, config_path: Option<&Path>) -> Result<()> {
    if let Some(dir) = &args.files_to {
        return restore_files(&args, dir, config_path).await;
    }
    let manifest = read_kubeadm_manifest(&args)?;
    let bump = bump_amount(&args, manifest.is_some())?;
    let mut spec = source_spec(&args)?;
    // Parents of the targets (and of separate WAL dirs) are created (etcdutl:
    // `CreateDirAll`), and removed again on failure. A dry run creates nothing.
    let mut parents = Vec::new();
    let temp_dir = if args.dry_run {
        std::env::temp_dir()
    } else {
        parents.push(temp_parent(&first_target_dir(&args, manifest.as_ref()))?);
        parents[0].0.clone()
    };
    // The snapshot as a checked local file (acquire: sha256 trailer, bbolt structure, status,
    // and for a stored backup the comparison with its manifest), before anything is planned.
    let pitr_target = pitr_target(&args)?;
    let (snapshot, pitr_plan, backup_id) = match (&spec, pitr_target) {
        (SourceSpec::Store { which, .. }, Some(target)) => {
            let (store, base, p) =
                plan_pitr(which, target, config_path, args.cluster.as_deref()).await?;
            if !args.json {
                print_pitr_plan(&p, args.dry_run);
            }
            let snap = acquire_stored(&args, &store, &base, &temp_dir).await?;
            (snap, Some((store, p)), Some(base.id))
        }
        _ => {
            let (snap, id) = acquire_snapshot(&args, &spec, &temp_dir, config_path).await?;
            (snap, None, id)
        }
    };
    // The report names the backup `latest` (or a prefix) resolved to.
    if let SourceSpec::Store { id, .. } = &mut spec {
        *id = backup_id;
    }
    // Point-in-time: the deltas applied once to a private copy of the base, which then is
    // the source of every member (bump and membership rewrites come after, on R).
    let mut pitr_work = None;
    // The status of the PITR result; a raw file's comes from its deferred checks.
    let (src_path, src_len, pitr_status) = match (&pitr_plan, args.dry_run) {
        (Some((store, p)), false) => {
            let (work, applied, status) =
                apply_pitr(&args, store, p, &snapshot.path, snapshot.db_len, &temp_dir).await?;
            let path = work.path().join("pitr.db");
            let len = fs::metadata(&path)
                .map_err(io(format!("reading {}", path.display())))?
                .len();
            pitr_work = Some((work, applied));
            (path, len, Some(status))
        }
        _ => (snapshot.path.clone(), snapshot.db_len, None),
    };
    // Everything decided before the copy; its errors go through `checks_first`.
    let planned = (|| -> Result<_> {
        let mut info = read_snapshot_info(&src_path, src_len, bump)?;
        info.pitr = pitr_plan.as_ref().map(|(_, p)| PitrReport {
            plan: p.clone(),
            applied: None,
        });
        info.warnings = version_warnings(&args, manifest.as_ref(), &info)?;
        for w in &info.warnings {
            eprintln!("warning: {w}");
        }
        let plan = make_plan(&args, manifest.as_ref(), &info.members)?;
        Ok((info, plan))
    })();
    let (mut info, plan) = match planned {
        Ok(p) => p,
        Err(e) => return Err(checks_first(snapshot, e).await),
    };
    if args.dry_run {
        print_report(&args, &plan, &spec, None, &info, manifest.as_ref(), true);
        return Ok(());
    }
    for w in plan.targets.iter().filter_map(|t| t.wal_dir.as_ref()) {
        parents.push(temp_parent(w)?);
    }
    let plan2 = plan.clone();
    // A private temp file (not the user's --snapshot file) is moved, not copied.
    let owned = pitr_work.is_some() || snapshot.format != crate::crypto::FileFormat::Raw;
    let (status, staged) = tokio::task::spawn_blocking(move || -> Result<_> {
        let mut snapshot = snapshot;
        // A raw file's checks (bbolt and trailer, each a full read) run beside the copy into
        // the staging dirs; a failure drops those (removed) and is reported first.
        let (checked, staged) = std::thread::scope(|s| {
            let checks = s.spawn(|| snapshot.run_deferred_checks());
            let staged = stage_members(&plan2, &src_path, src_len, bump, owned);
            (checks.join().expect("check thread"), staged)
        });
        checked?;
        let staged = staged?;
        let status = pitr_status.unwrap_or_else(|| snapshot.status.clone());
        drop(snapshot);
        Ok((status, staged))
    })
    .await??;
    if let Some((work, applied)) = pitr_work {
        drop(work);
        if !args.json {
            print_pitr_applied(&applied);
        }
        if let Some(r) = info.pitr.as_mut() {
            r.applied = Some(applied);
        }
        if status.total_size > ETCD_DEFAULT_QUOTA_BYTES {
            eprintln!(
                "warning: the restored db is {} bytes (the history up to the target revision), above etcd's default --quota-backend-bytes of {ETCD_DEFAULT_QUOTA_BYTES}: start etcd with a larger --quota-backend-bytes, or restore with --bump-revision N --mark-compacted (etcd compacts on boot) and run etcdctl defrag afterwards",
                status.total_size
            );
        }
    }
    tokio::task::spawn_blocking(move || commit(staged)).await??;
    // Success: keep the parent dirs created for the targets.
    for p in &mut parents {
        p.2 = true;
    }
    print_report(
        &args,
        &plan,
        &spec,
        Some(&status),
        &info,
        manifest.as_ref(),
        false,
    );
    Ok(())
}

/// `--bump-revision`/`--mark-compacted` as etcdutl checks them (`snapshot_command.go`: each
/// requires the other); with a kubeadm manifest the bump defaults to
/// [`KUBEADM_DEFAULT_BUMP`] and implies --mark-compacted. Returns N (0: no bump).
fn bump_amount(args: &RestoreOptions, kubeadm: bool) -> Result<u64> {
    let n = match (args.bump_revision, kubeadm) {
        (Some(n), _) => n,
        (None, true) => KUBEADM_DEFAULT_BUMP,
        (None, false) => 0,
    };
    if n == 0 && args.mark_compacted {
        return Err(UsageError::new(
            "--mark-compacted: only with --bump-revision N > 0 (as etcdutl); drop it or give a bump",
        )
        .into());
    }
    if n > 0 && !args.mark_compacted && !kubeadm {
        return Err(UsageError::new(
            "--bump-revision: requires --mark-compacted (as etcdutl): a bumped revision must be marked compacted so that watchers re-list",
        )
        .into());
    }
    if i64::try_from(n).is_err() {
        return Err(UsageError::new(format!(
            "--bump-revision: {n} exceeds etcd's largest revision {}",
            i64::MAX
        ))
        .into());
    }
    Ok(n)
}

/// The data dir of the first target, as far as flags and manifest tell before the plan
/// (temporary files go beside it, on the target's file system).
fn first_target_dir(args: &RestoreOptions, m: Option<&kubeadm::EtcdManifest>) -> PathBuf {
    if let Some(out) = &args.out_dir {
        return out.join("member");
    }
    args.data_dir
        .clone()
        .or_else(|| m.and_then(|m| m.data_host_path.clone().or(m.data_dir.clone())))
        .unwrap_or_else(|| {
            let name = args
                .name
                .clone()
                .or_else(|| m.and_then(|m| m.name.clone()))
                .unwrap_or_else(|| plan::DEFAULT_NAME.to_string());
            PathBuf::from(format!("{name}.etcd"))
        })
}

/// What the restore reads from the snapshot before planning.
#[derive(Debug, Clone, Serialize)]
struct SnapshotInfo {
    /// The members recorded in the snapshot (its `members` bucket), sorted by ID.
    members: Vec<SnapshotMember>,
    /// The revision bump that will be applied, if any.
    bump: Option<Bumped>,
    /// `cluster/clusterVersion` (the cluster version when the snapshot was taken, e.g. 3.5.0).
    cluster_version: Option<String>,
    /// `meta/storageVersion` (written by etcd 3.6+ only).
    storage_version: Option<String>,
    /// Version warnings (target etcd older than the snapshot's writer).
    warnings: Vec<String>,
    /// Point-in-time recovery: the chosen base, deltas and target, and what was applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pitr: Option<PitrReport>,
}

/// The point-in-time part of the report.
#[derive(Debug, Clone, Serialize)]
struct PitrReport {
    plan: PitrPlan,
    #[serde(skip_serializing_if = "Option::is_none")]
    applied: Option<PitrApplied>,
}

/// Value of `key` in small root bucket `bucket` as text, when present and at most 64 bytes.
fn small_text(
    db: &crate::snapshot::Db,
    bucket: &[u8],
    key: &[u8],
) -> Result<Option<String>, crate::snapshot::SnapshotError> {
    Ok(db
        .root_bucket_entries(bucket)?
        .unwrap_or_default()
        .into_iter()
        .find(|e| e.key == key && e.value.len() <= 64)
        .map(|e| String::from_utf8_lossy(&e.value).into_owned()))
}

/// `major.minor.patch` at the start of `v` (a leading `v` and a suffix such as `-0` allowed).
fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let v = v.trim().trim_start_matches('v');
    let mut it = v.split(|c: char| !c.is_ascii_digit()).take(3);
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    let patch = it.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    Some((major, minor, patch))
}

/// The etcd version tag of a container image (`registry.k8s.io/etcd:3.5.30-0` -> 3.5.30-0).
fn image_tag(image: &str) -> Option<&str> {
    let (repo, tag) = image.rsplit_once(':')?;
    (!tag.contains('/') && !repo.is_empty()).then_some(tag)
}

/// Step 1b: the target etcd's version against the snapshot's writer. Refuses (usage error)
/// a db whose storage version is 3.6+ for a 3.4 target (3.4.31+ panics on it); warns when the
/// target's major.minor is older than the snapshot's storage or cluster version.
fn version_warnings(
    args: &RestoreOptions,
    km: Option<&kubeadm::EtcdManifest>,
    info: &SnapshotInfo,
) -> Result<Vec<String>> {
    let (target_raw, from) = match (&args.target_version, km.and_then(|m| m.image.as_deref())) {
        (Some(v), _) => (v.clone(), "--target-version".to_string()),
        (None, Some(img)) => match image_tag(img) {
            Some(t) => (t.to_string(), format!("--kubeadm-manifest's image {img}")),
            None => return Ok(Vec::new()),
        },
        (None, None) => return Ok(Vec::new()),
    };
    let Some(target) = parse_version(&target_raw) else {
        if args.target_version.is_some() {
            return Err(UsageError::new(format!(
                "--target-version: {target_raw:?} is not an etcd version such as 3.5.30"
            ))
            .into());
        }
        return Ok(Vec::new());
    };
    let mut warnings = Vec::new();
    if let Some(sv) = info.storage_version.as_deref().and_then(parse_version) {
        if (sv.0, sv.1) >= (3, 6) && (target.0, target.1) <= (3, 4) {
            return Err(UsageError::new(format!(
                "{from}: etcd {target_raw} cannot boot this snapshot: its db has storage version {}.{} (written by etcd 3.6+), and etcd 3.4 refuses such a db; restore with etcd 3.5 or newer",
                sv.0, sv.1
            ))
            .into());
        }
        if (target.0, target.1) < (sv.0, sv.1) {
            warnings.push(format!("{from}: etcd {target_raw} is older than the snapshot's storage version {}.{}; downgrade the snapshot's cluster first (etcdctl downgrade) or restore with etcd {}.{}", sv.0, sv.1, sv.0, sv.1));
        }
    }
    if let Some(cv) = info.cluster_version.as_deref().and_then(parse_version) {
        if (target.0, target.1) < (cv.0, cv.1) {
            warnings.push(format!(
                "{from}: etcd {target_raw} is older than the cluster version {}.{} recorded in the snapshot; etcd does not support running a snapshot on an older minor version: restore with etcd {}.{} or newer",
                cv.0, cv.1, cv.0, cv.1
            ));
        }
    }
    Ok(warnings)
}

/// Reads the snapshot's membership and plans the bump (bounds-checked reads of a few pages;
/// the full check runs later).
fn read_snapshot_info(path: &Path, db_len: u64, bump: u64) -> Result<SnapshotInfo> {
    let ctx = |source| RestoreError::Snapshot {
        what: format!("verifying snapshot {}", path.display()),
        source,
    };
    let db = crate::snapshot::Db::open(path, Some(db_len)).map_err(ctx)?;
    let members = db::snapshot_members(&db).map_err(ctx)?;
    let bump = if bump > 0 {
        Some(db::plan_bump(&db, bump).map_err(ctx)?)
    } else {
        None
    };
    let cluster_version = small_text(&db, b"cluster", b"clusterVersion").map_err(ctx)?;
    let storage_version = small_text(&db, b"meta", b"storageVersion").map_err(ctx)?;
    Ok(SnapshotInfo {
        members,
        bump,
        cluster_version,
        storage_version,
        warnings: Vec::new(),
        pitr: None,
    })
}

/// Reads `--kubeadm-manifest` if given.
fn read_kubeadm_manifest(args: &RestoreOptions) -> Result<Option<kubeadm::EtcdManifest>> {
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
///
/// The members come from `--initial-cluster`, or `--members-from-snapshot` (the snapshot's
/// own `members`), or the kubeadm manifest; a manifest that cannot describe the whole
/// cluster (`--initial-cluster-state=existing`, or fewer members than the snapshot) is
/// refused with both lists and the fix.
fn make_plan(
    args: &RestoreOptions,
    km: Option<&kubeadm::EtcdManifest>,
    snap: &[SnapshotMember],
) -> Result<Plan> {
    let m = km.cloned().unwrap_or_default();
    let initial_cluster = if args.members_from_snapshot {
        Some(plan::initial_cluster_of_snapshot(snap).map_err(|e| UsageError::new(e.to_string()))?)
    } else if args.initial_cluster.is_some() {
        args.initial_cluster.clone()
    } else if let Some(km) = km {
        check_manifest_membership(args, km, snap)?;
        m.initial_cluster.clone()
    } else {
        None
    };
    let input = PlanInput {
        name: args.name.clone().or(m.name),
        initial_cluster,
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
    // Name the source of a value the operator did not type: the manifest.
    let from_manifest = |flag: &str| {
        km.is_some()
            && match flag {
                "--name" => args.name.is_none(),
                "--initial-advertise-peer-urls" => args.initial_advertise_peer_urls.is_none(),
                "--initial-cluster" => {
                    !args.members_from_snapshot && args.initial_cluster.is_none()
                }
                _ => false,
            }
    };
    Plan::build(&input).map_err(|e| match e {
        PlanError::Flag { flag, .. } if from_manifest(flag) => UsageError::new(format!(
            "{e} ({flag} was taken from the --kubeadm-manifest; give {flag} to override it)"
        ))
        .into(),
        PlanError::Flag { .. } => UsageError::new(e.to_string()).into(),
        e => e.into(),
    })
}

/// The backup `which` (id, unique prefix or `latest`) in the store of the config at
/// `config_path` (of its cluster `cluster`, see [`Config::select_cluster`]).
/// Errors: Config (exit 2: also an unknown or missing cluster name), Store (cannot open it,
/// backup not found).
async fn find_stored(
    which: &str,
    config_path: Option<&Path>,
    cluster: Option<&str>,
) -> Result<(Store, Manifest)> {
    let selected = Config::load(config_path)?.select_cluster(cluster)?;
    let mut store = Store::from_config_existing(&selected.config.storage)
        .await
        .map_err(|source| RestoreError::Store {
            what: format!("--from-store {which}: opening the configured store"),
            source,
        })?;
    if let Some(id) = &selected.etcd_cluster_id {
        store = store.scoped_to_cluster(id);
    }
    match manifest::find(&store, which).await {
        Ok(m) => Ok((store, m)),
        Err(source) => Err(RestoreError::Store {
            what: format!(
                "--from-store {which}: looking up the backup in {}",
                store.describe()
            ),
            source,
        }),
    }
}

/// `--files-to DIR`: the control-plane files of the backup `--from-store` names, extracted
/// below DIR ([`acquire::fetch_files`]).
async fn restore_files(
    args: &RestoreOptions,
    dir: &Path,
    config_path: Option<&Path>,
) -> Result<()> {
    let Some(which) = &args.from_store else {
        return Err(UsageError::new("--files-to needs --from-store ID|latest").into());
    };
    let (store, m) = find_stored(which, config_path, args.cluster.as_deref()).await?;
    let ids = crate::crypto::identities_from_args(&args.identity)?;
    acquire::fetch_files(&store, &m, ids, Some(dir)).await?;
    let entries = m.files.as_ref().map(|f| f.entries.len()).unwrap_or(0);
    if args.json {
        crate::outln!(
            "{}",
            serde_json::json!({"id": m.id, "files_to": dir, "entries": m.files.as_ref().map(|f| &f.entries)})
        );
    } else {
        crate::outln!(
            "extracted {entries} entries of backup {} below {} (checked against the manifest; modes as recorded)",
            m.id,
            dir.display()
        );
    }
    Ok(())
}

/// Refuses a kubeadm manifest whose `--initial-cluster` cannot rebuild the snapshot's
/// cluster: a node that joined later (`--initial-cluster-state=existing`: its list holds only
/// the members that existed when it joined) or a list shorter than the snapshot's members.
fn check_manifest_membership(
    args: &RestoreOptions,
    km: &kubeadm::EtcdManifest,
    snap: &[SnapshotMember],
) -> Result<()> {
    let listed = km
        .initial_cluster
        .as_deref()
        .unwrap_or(plan::DEFAULT_INITIAL_CLUSTER);
    let count = plan::parse_initial_cluster(listed)
        .map(|m| m.len())
        .unwrap_or(0);
    let existing = km.initial_cluster_state.as_deref() == Some("existing");
    if !existing && count >= snap.len() {
        return Ok(());
    }
    let path = args
        .kubeadm_manifest
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let why = if existing {
        "says --initial-cluster-state=existing: this node joined a running cluster, so its --initial-cluster lists only the members that existed then"
    } else {
        "lists fewer members in --initial-cluster than the snapshot's cluster had"
    };
    let full = plan::initial_cluster_of_snapshot(snap)
        .unwrap_or_else(|_| "<name>=<peer URL> for every member".to_string());
    Err(UsageError::new(format!(
        "--kubeadm-manifest {path} {why}. Manifest's members ({count}): {listed}. Snapshot's members ({}): {}. \
Restoring from the manifest alone would build a different, smaller cluster. Run the same command on every control-plane node with the full list: \
--initial-cluster={full} (or --members-from-snapshot, which takes names and peer URLs from the snapshot), and the same --initial-cluster-token.",
        snap.len(),
        plan::describe_snapshot_members(snap),
    ))
    .into())
}

fn source_spec(args: &RestoreOptions) -> Result<SourceSpec> {
    let file = args.snapshot.clone();
    match (file, &args.from_store) {
        (Some(_), Some(_)) => {
            Err(UsageError::new("--snapshot and --from-store: give only one source").into())
        }
        (None, None) => Err(UsageError::new(
            "--snapshot FILE or --from-store ID|latest: a source is required",
        )
        .into()),
        (None, Some(w)) => Ok(SourceSpec::Store {
            which: w.clone(),
            id: None,
        }),
        (Some(p), None) => {
            let format = crate::crypto::detect_format(&p)
                .map_err(io(format!("--snapshot: cannot read {}", p.display())))?;
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
fn temp_parent(dir: &Path) -> Result<TempParent> {
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
        .map_err(io(format!("creating {}", parent.display())))?;
    Ok(TempParent(parent, top, false))
}

/// Steps 2-3 (`copyAndVerifyDB`): the snapshot as a verified local file through
/// [`crate::acquire`] (decrypted and decompressed beside the target when needed; a stored
/// backup compared with its manifest). etcdutl's trailer rule: required unless
/// `--skip-hash-check`. With the id of the stored backup it found, for a store source.
async fn acquire_snapshot(
    args: &RestoreOptions,
    spec: &SourceSpec,
    temp_dir: &Path,
    config_path: Option<&Path>,
) -> Result<(acquire::Acquired, Option<String>)> {
    // A raw file's bbolt check and trailer hash run beside the db copy (`run`); not for a
    // dry run, which copies nothing.
    let opts = acquire_options(args, temp_dir, !args.dry_run)?;
    match spec {
        SourceSpec::File { path, .. } => Ok((
            acquire::acquire(acquire::Source::File(path), &opts).await?,
            None,
        )),
        SourceSpec::Store { which, .. } => {
            let (store, m) = find_stored(which, config_path, args.cluster.as_deref()).await?;
            let src = acquire::Source::Stored {
                store: &store,
                manifest: &m,
            };
            Ok((acquire::acquire(src, &opts).await?, Some(m.id)))
        }
    }
}

/// `e`, an error found before the copy, unless `snapshot`'s deferred checks (a raw file's
/// bbolt walk and trailer hash, not run yet) fail: then theirs, as a bad db is explained best
/// by its own checks (a changed file is reported as changed, not as, say, a membership
/// error). A snapshot already checked returns `e` at once.
async fn checks_first(snapshot: acquire::Acquired, e: RestoreError) -> RestoreError {
    let checked = tokio::task::spawn_blocking(move || {
        let mut s = snapshot;
        s.run_deferred_checks()
    })
    .await
    .expect("check thread");
    match checked {
        Err(c) => c.into(),
        Ok(()) => e,
    }
}

/// The point-in-time target of `--to-revision`/`--to-time`, if any. Errors: Usage when
/// given without `--from-store`, both given, or a negative revision.
fn pitr_target(args: &RestoreOptions) -> Result<Option<PitrTarget>> {
    let t = match (args.to_revision, args.to_time) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(UsageError::new("--to-revision and --to-time: give only one target").into())
        }
        (Some(r), None) if r < 1 => {
            return Err(UsageError::new(format!(
                "--to-revision: {r} is not an etcd revision (1 or more)"
            ))
            .into())
        }
        (Some(r), None) => PitrTarget::Revision(r),
        (None, Some(t)) => PitrTarget::Time(t),
    };
    if args.from_store.is_none() {
        return Err(UsageError::new(
            "--to-revision/--to-time: only with --from-store ID|latest (the delta chains are in the store)",
        )
        .into());
    }
    if args.files_to.is_some() {
        return Err(UsageError::new("--to-revision/--to-time: not with --files-to").into());
    }
    Ok(Some(t))
}

/// Point-in-time plan: the bases to consider (`latest`: every backup of the newest backup's
/// cluster, newest first; otherwise the one named), their chains read
/// ([`crate::pitr::plan::plan_from_store`]) until one covers `target`. Errors: Config, Store,
/// PitrPlan (not covered: the nearest covered revisions).
async fn plan_pitr(
    which: &str,
    target: PitrTarget,
    config_path: Option<&Path>,
    cluster: Option<&str>,
) -> Result<(Store, Manifest, PitrPlan)> {
    let (store, first) = find_stored(which, config_path, cluster).await?;
    let bases: Vec<Manifest> = if which == "latest" {
        manifest::catalog(&store)
            .await
            .map_err(|source| RestoreError::Store {
                what: format!("--from-store latest: listing {}", store.describe()),
                source,
            })?
            .current()
            .filter(|m| m.cluster_id == first.cluster_id)
            .cloned()
            .collect()
    } else {
        vec![first]
    };
    let p = crate::pitr::plan::plan_from_store(&store, &bases, target).await?;
    let base = bases
        .into_iter()
        .find(|b| b.id == p.chain.base_id)
        .expect("the plan's base is one of the bases");
    Ok((store, base, p))
}

/// A stored backup as a verified local file ([`acquire::acquire`]).
async fn acquire_stored(
    args: &RestoreOptions,
    store: &Store,
    m: &Manifest,
    temp_dir: &Path,
) -> Result<acquire::Acquired> {
    let opts = acquire_options(args, temp_dir, false)?;
    Ok(acquire::acquire(acquire::Source::Stored { store, manifest: m }, &opts).await?)
}

/// The acquire options of a restore: `--identity`, etcdutl's trailer rule (required unless
/// `--skip-hash-check`), temp files under `temp_dir`.
fn acquire_options<'a>(
    args: &RestoreOptions,
    temp_dir: &'a Path,
    defer_raw_checks: bool,
) -> Result<AcquireOptions<'a>> {
    Ok(AcquireOptions {
        identities: crate::crypto::identities_from_args(&args.identity)?,
        trailer: if args.skip_hash_check {
            TrailerRule::Skip
        } else {
            TrailerRule::Required
        },
        temp_base: temp_dir,
        defer_raw_checks,
    })
}

/// Copies the base into a private dir (0700) under `temp_dir` as `pitr.db`, applies the
/// plan's deltas ([`crate::pitr::apply::apply`]) and checks the result (full bbolt check).
/// Returns the dir (holding `pitr.db`), what was applied and the db's status.
async fn apply_pitr(
    args: &RestoreOptions,
    store: &Store,
    p: &PitrPlan,
    base: &Path,
    base_len: u64,
    temp_dir: &Path,
) -> Result<(tempfile::TempDir, PitrApplied, Status)> {
    let work = tempfile::Builder::new()
        .prefix(".etcd-lifeboat-pitr-")
        .permissions(fs::Permissions::from_mode(0o700))
        .tempdir_in(temp_dir)
        .map_err(io(format!(
            "creating a private dir in {}",
            temp_dir.display()
        )))?;
    let db = work.path().join("pitr.db");
    let ids = crate::crypto::identities_from_args(&args.identity)?;
    let (store, p, base) = (store.clone(), p.clone(), base.to_path_buf());
    let (applied, status) = tokio::task::spawn_blocking(move || -> Result<_> {
        crate::pitr::apply::copy_base(&base, base_len, &db)?;
        let applied = crate::pitr::apply::apply(&store, &p, ids, &db, base_len)?;
        let status =
            crate::snapshot::verify_file(&db, None).map_err(|source| RestoreError::Snapshot {
                what: format!("checking the db after applying deltas {}", db.display()),
                source,
            })?;
        Ok((applied, status))
    })
    .await??;
    Ok((work, applied, status))
}

fn print_pitr_plan(p: &PitrPlan, dry_run: bool) {
    let c = &p.chain;
    let target = match p.target {
        PitrTarget::Revision(r) => format!("revision {r}"),
        PitrTarget::Time(t) => format!(
            "time {} (the last revision observed at or before it, at most r{})",
            t.to_rfc3339(),
            p.revision
        ),
    };
    let verb = if dry_run {
        "Would restore"
    } else {
        "Restoring"
    };
    crate::outln!(
        "{verb} {target} (point in time) from base backup {} (effective revision r{}, finished {}) and {} delta(s):",
        c.base_id,
        c.base_revision,
        c.base_finished_at.to_rfc3339(),
        p.deltas.len()
    );
    for d in &p.deltas {
        let times = match (d.first_time, d.last_time) {
            (Some(a), Some(b)) => format!("{} .. {}", a.to_rfc3339(), b.to_rfc3339()),
            _ => "no revision".to_string(),
        };
        crate::outln!(
            "  delta {:>4}  r{}..r{}  {times}  {} events, {} bytes stored{}",
            d.seq,
            d.first_revision,
            d.last_revision,
            d.events,
            d.stored_bytes,
            if d.encryption.is_some() { ", age" } else { "" }
        );
    }
    let raw: u64 = p.deltas.iter().map(|d| d.raw_bytes).sum();
    crate::outln!(
        "Chain of {}: r{}..r{}, {}; projected db growth <= {} bytes",
        c.base_id,
        c.base_revision,
        c.last_revision,
        c.end_text(),
        raw.saturating_add(raw / 10)
    );
}

fn print_pitr_applied(a: &PitrApplied) {
    let at = a
        .observed_at
        .map(|t| format!(", observed {}", t.to_rfc3339()))
        .unwrap_or_default();
    crate::outln!(
        "Point in time: revision {}{at}; {} delta(s) read ({} bytes), {} events applied in {} transaction(s); {} lease(s){}",
        a.revision,
        a.deltas_read,
        a.stored_bytes_read,
        a.events_applied,
        a.transactions,
        a.leases,
        if a.leases_unknown.is_empty() {
            String::new()
        } else {
            format!(
                ", {} referenced but never seen granted (restored with etcd's minimum TTL)",
                a.leases_unknown.len()
            )
        }
    );
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
    fn new(target: &Path) -> Result<Staged> {
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
        let reading = || format!("reading {}", target.display());
        if exists
            && fs::read_dir(target)
                .map_err(io(reading()))?
                .next()
                .is_some()
        {
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
            .map_err(io(format!("creating a staging dir in {}", base.display())))?;
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
    fn commit(&mut self) -> Result<()> {
        if self.inside {
            let root = self.root().to_path_buf();
            let reading = || format!("reading {}", root.display());
            for e in fs::read_dir(&root).map_err(io(reading()))? {
                let e = e.map_err(io(reading()))?;
                let to = self.target.join(e.file_name());
                fs::rename(e.path(), &to).map_err(io(format!("renaming into {}", to.display())))?;
                self.placed.push(to);
            }
            // An existing empty target keeps its owner but gets etcd's data dir mode: it now
            // holds every Secret (etcd warns about anything wider than 0700).
            fs::set_permissions(&self.target, fs::Permissions::from_mode(0o700))
                .map_err(io(format!("chmod 700 {}", self.target.display())))?;
            fsync_dir(&self.target)?;
        } else {
            let tmp = self.root().to_path_buf();
            fs::rename(&tmp, &self.target).map_err(io(format!(
                "renaming {} to {}",
                tmp.display(),
                self.target.display()
            )))?;
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

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io(format!("fsync {}", dir.display())))
}

fn fsync_file(p: &Path) -> Result<()> {
    File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(io(format!("fsync {}", p.display())))
}

/// Sets every directory under `root` (and `root`) to 0700 and every file to 0600, whatever
/// the umask (etcd's own modes for member dirs and wal/db files; the db holds every Secret).
fn enforce_modes(root: &Path) -> Result<()> {
    let md = fs::symlink_metadata(root).map_err(io(format!("inspecting {}", root.display())))?;
    let mode = if md.is_dir() { 0o700 } else { 0o600 };
    if !md.file_type().is_symlink() {
        fs::set_permissions(root, fs::Permissions::from_mode(mode))
            .map_err(io(format!("chmod {mode:o} {}", root.display())))?;
    }
    if md.is_dir() {
        for e in fs::read_dir(root).map_err(io(format!("reading {}", root.display())))? {
            enforce_modes(&e.map_err(io(format!("reading {}", root.display())))?.path())?;
        }
    }
    Ok(())
}

fn mkdir0700(p: &Path) -> Result<()> {
    DirBuilder::new()
        .mode(0o700)
        .create(p)
        .map_err(io(format!("creating {}", p.display())))
}

/// Step 4 (`saveDB`, `updateCIndex`, `saveWALAndSnap`): every target member's files, staged.
/// `owned`: `src` is this run's private temp file (decompressed or PITR-applied) on the
/// target's file system, so it is moved into the first member and rewritten in place rather
/// than copied.
fn stage_members(
    plan: &Plan,
    src: &Path,
    db_len: u64,
    bump: u64,
    owned: bool,
) -> Result<Vec<Staged>> {
    let n = plan.members.len() as u64;
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
                if owned && fs::rename(src, &db).is_ok() {
                    rewrite_db_in_place(&db, db_len, &plan.members, n, 1, bump).map_err(
                        |source| RestoreError::Snapshot {
                            what: format!("writing db {}", db.display()),
                            source,
                        },
                    )?;
                } else {
                    save_db(src, db_len, &db, &plan.members, n, bump)?;
                }
                first_db = Some(db.clone());
            }
            // Every member's db is the same: copy the first one (copy_file_range).
            Some(src) => {
                fs::copy(src, &db).map_err(io(format!("copying db to {}", db.display())))?;
            }
        }
        fs::set_permissions(&db, fs::Permissions::from_mode(0o600))
            .map_err(io(format!("chmod 600 {}", db.display())))?;
        fsync_file(&db)?;
        snap::write_snap(&snap_dir, &plan.members)
            .map_err(io(format!("writing snap file in {}", snap_dir.display())))?;
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
        enforce_modes(data.root())?;
        if wal_staged.is_some() {
            enforce_modes(&wal_dir)?;
        }
        fsync_dir(&wal_dir)?;
        fsync_dir(&member_dir)?;
        fsync_dir(data.root())?;
        staged.push(data);
        staged.extend(wal_staged);
    }
    Ok(staged)
}

/// `saveDB` + `modifyLatestRevision` + `updateCIndex`: copy the db (without trailer) and
/// rewrite membership, `meta/consistent_index` = N and `meta/term` = 1
/// (etcd-restore-spec.md §2), and bump the revision by `bump` (0: none).
fn save_db(
    src: &Path,
    db_len: u64,
    dst: &Path,
    members: &[member::Member],
    n: u64,
    bump: u64,
) -> Result<()> {
    rewrite_db_bumped(src, db_len, dst, members, n, 1, bump)
        .map(|_| ())
        .map_err(|source| RestoreError::Snapshot {
            what: format!("writing db {}", dst.display()),
            source,
        })
}

/// `saveWALAndSnap`'s WAL part for one member.
fn save_wal(t: &Target, plan: &Plan, wal_dir: &Path) -> Result<()> {
    wal::write_wal(wal_dir, t.id, plan.cluster_id, &plan.members)
        .map_err(io(format!("writing WAL in {}", wal_dir.display())))?;
    Ok(())
}

/// Step 5: rename every staged dir into place; on failure undo the ones already placed.
fn commit(mut staged: Vec<Staged>) -> Result<()> {
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
    /// The membership recorded in the snapshot (its `members` bucket).
    snapshot_members: &'a [SnapshotMember],
    /// The revision bump (`--bump-revision`, marked compacted), when applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    revision_bump: Option<Bumped>,
    /// Point-in-time recovery: base, deltas, target and what was applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pitr: Option<&'a PitrReport>,
    reminders: Vec<String>,
}

/// The etcd flags that start a restored member. When the snapshot recorded a member of the
/// same name and peer URLs with client URLs (`snapshot`: its `members` bucket), they are the
/// member's `--listen-client-urls` and `--advertise-client-urls`: the URLs its clients used.
fn etcd_flags(plan: &Plan, t: &Target, snapshot: &[SnapshotMember]) -> Vec<String> {
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
    let recorded = snapshot
        .iter()
        .find(|s| s.name == t.name && s.peer_urls == m.peer_urls && !s.client_urls.is_empty());
    if let Some(s) = recorded {
        let c = s.client_urls.join(",");
        f.extend([
            format!("--listen-client-urls={c}"),
            format!("--advertise-client-urls={c}"),
        ]);
    }
    f
}

fn reminders(plan: &Plan, kubeadm: bool, info: &SnapshotInfo) -> Vec<String> {
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
        r.push("add your TLS flags (--cert-file, --key-file, --trusted-ca-file, --peer-*), and the client URLs where none are printed (--listen-client-urls, --advertise-client-urls; printed ones are those the snapshot recorded for the member)".to_string());
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
    match &info.bump {
        Some(b) => r.push(format!(
            "the revision was bumped from {} to {} and marked compacted (--bump-revision {}): kube-apiserver's watch cache and every controller's informers saw revisions up to somewhere above {} before the restore; a watch from any of them now fails with \"required revision has been compacted\" and they re-list, instead of silently missing changes while revisions re-use old numbers",
            b.old_revision,
            b.new_revision,
            b.new_revision - b.old_revision,
            b.old_revision
        )),
        None if kubeadm => r.push("the revision was NOT bumped (--bump-revision 0): revisions go backwards, so kube-apiserver's watch cache and informers can miss changes; restart kube-apiserver, the controller manager, the scheduler and every controller after the cluster is up".to_string()),
        None => r.push("clients that watch (kube-apiserver, controllers) saw newer revisions before: restart them after the cluster is up, or restore with --bump-revision 1000000000 --mark-compacted so that they re-list by themselves".to_string()),
    }
    for w in info.warnings.iter().rev() {
        r.insert(0, format!("WARNING: {w}"));
    }
    let n = plan.members.len();
    if !info.members.is_empty() && n < info.members.len() {
        r.insert(
            0,
            format!(
                "the snapshot's cluster had {} members ({}), the restored one has {n}: check that this is what you want",
                info.members.len(),
                plan::describe_snapshot_members(&info.members)
            ),
        );
    }
    r
}

fn print_report(
    args: &RestoreOptions,
    plan: &Plan,
    spec: &SourceSpec,
    status: Option<&Status>,
    info: &SnapshotInfo,
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
            etcd_flags: etcd_flags(plan, t, &info.members),
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
        snapshot_members: &info.members,
        revision_bump: info.bump,
        pitr: info.pitr.as_ref(),
        reminders: reminders(plan, manifest.is_some(), info),
    };
    if args.json {
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serialises")
        );
        return;
    }
    let src = match spec {
        SourceSpec::File { path, .. } => path.display().to_string(),
        SourceSpec::Store { which, id } => match id {
            Some(id) if id != which => format!("store backup {id} ({which})"),
            _ => format!("store backup {which}"),
        },
    };
    if dry_run {
        crate::outln!(
            "Dry run: nothing written. Would restore {src} into cluster {} (token {}):",
            report.cluster_id,
            plan.token
        );
    } else {
        let s = status.expect("status after restore");
        crate::outln!(
            "Restored {src} (revision {}, {} keys, hash {:08x}, {} bytes) into cluster {} (token {}):",
            s.revision, s.total_key, s.hash, s.total_size, report.cluster_id, plan.token
        );
    }
    crate::outln!(
        "Snapshot membership ({} recorded): {}",
        info.members.len(),
        plan::describe_snapshot_members(&info.members)
    );
    if let Some(b) = &info.bump {
        crate::outln!(
            "Revision: {} bumped to {} (+{}), marked compacted",
            b.old_revision,
            b.new_revision,
            b.new_revision - b.old_revision
        );
    }
    for (t, m) in plan.targets.iter().zip(&report.members) {
        crate::outln!("");
        crate::outln!(
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
            crate::outln!("  in {mpath}:");
            if let Some(hp) = &km.data_host_path {
                let note = if hp == &t.data_dir {
                    "unchanged".to_string()
                } else {
                    format!("now {}", hp.display())
                };
                crate::outln!(
                    "    the etcd-data volume: hostPath: {{path: {}}}  ({note})",
                    t.data_dir.display()
                );
            }
            let container_dir = km.data_dir.clone().unwrap_or_else(|| t.data_dir.clone());
            crate::outln!("    the etcd command: (keep the other flags)");
            for f in &m.etcd_flags {
                if f.starts_with("--listen-peer-urls") {
                    continue;
                }
                if f.starts_with("--data-dir=") && km.data_host_path.is_some() {
                    crate::outln!("    - --data-dir={}", container_dir.display());
                } else {
                    crate::outln!("    - {f}");
                }
            }
        } else {
            crate::outln!("  start it with:");
            crate::outln!("    etcd {}", m.etcd_flags.join(" \\\n      "));
        }
    }
    crate::outln!("");
    crate::outln!("Remember:");
    for r in &report.reminders {
        crate::outln!("  - {r}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn bump_defaults_and_checks() {
        let a = |bump: Option<u64>, mark: bool| RestoreOptions {
            bump_revision: bump,
            mark_compacted: mark,
            ..Default::default()
        };
        // kubeadm: bumped by default (mark-compacted implied), 0 opts out.
        assert_eq!(
            bump_amount(&a(None, false), true).unwrap(),
            KUBEADM_DEFAULT_BUMP
        );
        assert_eq!(bump_amount(&a(Some(0), false), true).unwrap(), 0);
        assert_eq!(bump_amount(&a(Some(7), false), true).unwrap(), 7);
        // Plain restore: etcdutl's rule, each flag requires the other.
        assert_eq!(bump_amount(&a(None, false), false).unwrap(), 0);
        assert_eq!(bump_amount(&a(Some(7), true), false).unwrap(), 7);
        for (bump, mark, kubeadm) in [
            (Some(7), false, false),
            (None, true, false),
            (Some(0), true, true),
            (Some(u64::MAX), true, false),
        ] {
            let err = bump_amount(&a(bump, mark), kubeadm).unwrap_err();
            assert!(matches!(err, RestoreError::Usage(_)), "{err}");
        }
    }

    #[test]
    fn versions_and_image_tags() {
        assert_eq!(parse_version("3.5.30-0"), Some((3, 5, 30)));
        assert_eq!(parse_version("v3.4.23"), Some((3, 4, 23)));
        assert_eq!(parse_version("3.6"), Some((3, 6, 0)));
        assert_eq!(parse_version("latest"), None);
        assert_eq!(image_tag("registry.k8s.io/etcd:3.5.30-0"), Some("3.5.30-0"));
        assert_eq!(image_tag("localhost:5000/etcd"), None);
        let info = |sv: Option<&str>, cv: Option<&str>| SnapshotInfo {
            members: Vec::new(),
            bump: None,
            cluster_version: cv.map(String::from),
            storage_version: sv.map(String::from),
            warnings: Vec::new(),
            pitr: None,
        };
        let args = |v: &str| RestoreOptions {
            target_version: Some(v.into()),
            ..Default::default()
        };
        // A 3.6 db on 3.4: refused; on 3.5: a warning.
        let err = version_warnings(&args("3.4.23"), None, &info(Some("3.6.0"), Some("3.6.0")))
            .unwrap_err();
        assert!(matches!(err, RestoreError::Usage(_)));
        assert!(err.to_string().contains("storage version 3.6"), "{err}");
        let w =
            version_warnings(&args("3.5.30"), None, &info(Some("3.6.0"), Some("3.6.0"))).unwrap();
        assert_eq!(w.len(), 2, "{w:?}");
        // A 3.5 snapshot on 3.4: a warning; on 3.5 or newer: none.
        let w = version_warnings(&args("3.4.23"), None, &info(None, Some("3.5.0"))).unwrap();
        assert!(w[0].contains("older than the cluster version 3.5"), "{w:?}");
        assert!(
            version_warnings(&args("3.5.1"), None, &info(None, Some("3.5.0")))
                .unwrap()
                .is_empty()
        );
        // From a kubeadm manifest's image tag.
        let km = kubeadm::EtcdManifest {
            image: Some("registry.k8s.io/etcd:3.4.13-0".into()),
            ..Default::default()
        };
        let w = version_warnings(
            &RestoreOptions::default(),
            Some(&km),
            &info(None, Some("3.5.0")),
        )
        .unwrap();
        assert!(w[0].contains("--kubeadm-manifest's image"), "{w:?}");
        assert!(version_warnings(&args("x"), None, &info(None, None)).is_err());
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
            etcd_flags(&p, &p.targets[0], &[]),
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
        // The snapshot recorded member a (same name and peer URLs) with client URLs: its
        // client flags; a same-named member elsewhere is a different member.
        let rec = |peer: &str| SnapshotMember {
            id: 1,
            name: "a".into(),
            peer_urls: vec![peer.into()],
            client_urls: vec!["http://10.0.0.1:2379".into()],
            is_learner: false,
        };
        let f = etcd_flags(&p, &p.targets[0], &[rec("http://127.0.0.1:2380")]);
        assert_eq!(
            f[f.len() - 2..],
            [
                "--listen-client-urls=http://10.0.0.1:2379",
                "--advertise-client-urls=http://10.0.0.1:2379"
            ]
        );
        let f = etcd_flags(&p, &p.targets[0], &[rec("http://10.9.9.9:2380")]);
        assert_eq!(f.len(), 7);
    }
}
