//! `etcd-lifeboat` binary: parse, set up logging, load config, dispatch; map errors to exit
//! codes (0 ok, 1 failed, 2 bad usage or config).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use etcd_lifeboat::acquire::{self, AcquireOptions, Source, TrailerRule};
mod cli;

use cli::{Cli, Command, ConfigCommand, LogFormat, Output};
use etcd_lifeboat::config::{Cluster, Config};
use etcd_lifeboat::crypto;
use etcd_lifeboat::snapshot::humanize_bytes;
use etcd_lifeboat::store::{manifest, Store};
use etcd_lifeboat::{backup, error, workdir};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, cli.verbose);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = error::exit_code(e.as_ref());
            let _ = writeln!(std::io::stderr(), "Error: {}", error::report(e.as_ref()));
            ExitCode::from(code as u8)
        }
    }
}

fn init_logging(format: LogFormat, verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "info,aws_config=warn,aws_smithy_runtime=warn",
        1 => "debug,h2=info,hyper=info,tower=info,rustls=info",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn load(cli: &Cli) -> anyhow::Result<Config> {
    Ok(Config::load(cli.config.as_deref())?)
}

/// The effective config of the cluster `--cluster` selects ([`Config::select_cluster`]): the
/// whole config when it describes one cluster and no name is given.
///
/// Errors: config errors (exit 2), an unknown name or a missing `--cluster` with several
/// clusters (exit 2, listing the names).
async fn load_cluster(cli: &Cli, sel: &cli::ClusterArg) -> anyhow::Result<Cluster> {
    let cfg = load(cli).await?;
    Ok(cfg.select_cluster(sel.cluster.as_deref())?)
}

/// The store of cluster `c` for the commands that read it (list, verify, prune, delete): a
/// local store directory must exist ([`Store::from_config_existing`]); seeing only the
/// backups of `c.etcd_cluster_id` when `--cluster <cluster-id>` named one
/// ([`Store::scoped_to_cluster`]).
async fn open_cluster_store(c: &Cluster) -> anyhow::Result<Store> {
    let store = Store::from_config_existing(&c.config.storage).await?;
    Ok(match &c.etcd_cluster_id {
        Some(id) => store.scoped_to_cluster(id),
        None => store,
    })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Status(a) => {
            // No config is needed for status: the temp dir comes from the environment only.
            let base = std::env::var_os("ETCD_LIFEBOAT_TEMP_DIR")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir);
            let opts = AcquireOptions {
                identities: crypto::identities_from_args(&a.identity.files)?,
                trailer: if a.skip_hash_check {
                    TrailerRule::Skip
                } else {
                    TrailerRule::IfPresent
                },
                temp_base: &base,
                defer_raw_checks: false,
            };
            let got = acquire::acquire(Source::File(&a.file), &opts).await?;
            if !a.skip_hash_check && got.trailer == acquire::TrailerState::Absent {
                let _ = writeln!(
                    std::io::stderr(),
                    "note: {} has no sha256 trailer (a db from a data dir's member/snap/db, or a truncated snapshot): checked by its bbolt structure only",
                    a.file.display()
                );
            }
            let st = got.status.clone();
            drop(got);
            match a.output.output {
                Output::Json => println!("{}", serde_json::to_string(&st)?),
                Output::Table => print!("{}", st.to_table()),
            }
            Ok(())
        }
        Command::Config(ConfigCommand::Check) => {
            let cfg = load(&cli).await?;
            let origin = Config::locate(cli.config.as_deref())
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "defaults and environment (no config file found)".into());
            println!("config OK: {origin}");
            let store_at = |s: &etcd_lifeboat::config::StorageConfig| match s.backend {
                etcd_lifeboat::config::Backend::Local => s.local.path.display().to_string(),
                etcd_lifeboat::config::Backend::S3 => format!(
                    "s3://{}/{}{}",
                    s.s3.bucket,
                    s.s3.prefix.trim_matches('/'),
                    s.s3.endpoint
                        .as_deref()
                        .map(|e| format!(" at {e}"))
                        .unwrap_or_default()
                ),
            };
            if cfg.clusters.is_empty() {
                println!("  etcd endpoints: {}", cfg.etcd.endpoints.join(", "));
                println!("  store: {}", store_at(&cfg.storage));
            }
            for c in cfg.clusters().iter().filter(|_| !cfg.clusters.is_empty()) {
                let at = store_at(&c.config.storage);
                println!(
                    "  cluster {}: etcd {}; store {at}; schedule {}",
                    c.name.as_deref().unwrap_or(""),
                    c.config.etcd.endpoints.join(", "),
                    c.config.schedule.cron
                );
            }
            match crypto::Recipients::from_config(&cfg.encryption)
                .map_err(etcd_lifeboat::config::ConfigError::from)?
            {
                Some(r) => println!(
                    "  encryption: age, {} recipient(s): {}",
                    r.public().len(),
                    r.public().join(", ")
                ),
                None => match (&cfg.storage.backend, &cfg.storage.s3.sse) {
                    (etcd_lifeboat::config::Backend::S3, Some(sse)) => println!(
                        "  encryption: no age recipients (objects are readable by whoever can read the bucket); S3 server-side encryption {sse:?}"
                    ),
                    _ => println!("  encryption: none (backups are stored unencrypted)"),
                },
            }
            for w in workdir::permission_warnings(&cfg) {
                let _ = writeln!(std::io::stderr(), "warning: {w}");
            }
            Ok(())
        }
        Command::Backup(a) => {
            let c = load_cluster(&cli, &a.cluster).await?;
            if let Some(id) = &c.etcd_cluster_id {
                anyhow::bail!("--cluster {id}: backup takes the cluster ID from etcd; a cluster ID selects stored backups only (list, verify, prune, delete, restore --from-store): drop --cluster");
            }
            let cfg = c.config;
            // backup creates a missing local store directory (the reading commands refuse one).
            let store = Store::from_config(&cfg.storage).await?;
            let cancel = tokio_util::sync::CancellationToken::new();
            let on_signal = cancel.clone();
            tokio::spawn(async move {
                etcd_lifeboat::daemon::shutdown_signal().await;
                tracing::warn!("signal received: cancelling the backup");
                on_signal.cancel();
            });
            let opts = backup::BackupOptions {
                tag: a.tag.clone(),
                progress: !a.no_progress,
                cancel,
            };
            let t0 = std::time::Instant::now();
            let cancelled = opts.cancel.clone();
            let work = async {
                match &a.from_data_dir {
                    Some(dir) => {
                        backup::run_backup_from_data_dir(
                            &cfg,
                            &store,
                            &opts,
                            dir,
                            a.wal_dir.as_deref(),
                        )
                        .await
                    }
                    None => backup::run_backup(&cfg, &store, &opts).await,
                }
            };
            // A request stalled on a silent store or etcd may not see the cancellation: after
            // a signal the backup gets CANCEL_GRACE to clean up, then it is dropped (its temp
            // dir is removed on drop; an interrupted upload is swept by the next run or prune).
            let result = tokio::select! {
                r = work => r,
                _ = async {
                    cancelled.cancelled().await;
                    tokio::time::sleep(CANCEL_GRACE).await;
                } => {
                    tracing::warn!(grace = ?CANCEL_GRACE, "the backup did not stop within the grace period after the signal (a request is stalled): abandoned");
                    Err(backup::BackupError::Cancelled)
                }
            };
            if let Some(url) = &a.pushgateway {
                push_backup_metrics(url, a, &store, &result, t0.elapsed()).await;
            }
            let m = result?;
            match a.output.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&m)?),
                Output::Table => print!("{}", manifest_table(&[m], chrono::Utc::now())),
            }
            Ok(())
        }
        Command::List(a) => {
            let all = load(&cli).await?;
            if a.cluster.cluster.is_none() && all.clusters().len() > 1 {
                return list_clusters(&all, a.output.output).await;
            }
            let c = all.select_cluster(a.cluster.cluster.as_deref())?;
            let store = open_cluster_store(&c).await?;
            let cfg = c.config;
            let cat = manifest::catalog_at(&store, chrono::Utc::now(), cfg.store.future_tolerance)
                .await?;
            // PITR delta chains of the bases (issue 16), when the store holds any.
            let chains = etcd_lifeboat::pitr::chain::chains(&store, &cat.backups).await?;
            let out = match a.output.output {
                Output::Json => {
                    let mut list = cat.to_list_json();
                    etcd_lifeboat::pitr::chain::annotate_list_json(&mut list, &chains);
                    serde_json::to_string_pretty(&list)? + "\n"
                }
                Output::Table => {
                    let mut t = catalog_table(&cat);
                    for c in &chains {
                        t += &format!("{}  {}\n", c.base_id, c.summary().unwrap_or_default());
                    }
                    t
                }
            };
            etcd_lifeboat::output::print(&out);
            if cat.backups.is_empty() && cat.broken.is_empty() {
                // An empty store: say so when backups sit under a longer prefix (a parent
                // prefix configured, e.g. the top-level storage of a clusters: config).
                let objects = store.list("").await?;
                let found = manifest::manifests_under_other_prefixes(
                    objects.iter().map(|o| o.key.as_str()),
                );
                if !found.is_empty() {
                    eprintln!(
                        "note: {} holds backups under {}: add that to storage.s3.prefix (or storage.local.path), or use --cluster NAME with the clusters: config",
                        store.describe(),
                        found.join(", ")
                    );
                }
            }
            Ok(())
        }
        Command::Restore(a) => cmd_restore(&cli, a).await,
        Command::Prune(a) => {
            let c = load_cluster(&cli, &a.cluster).await?;
            let store = open_cluster_store(&c).await?;
            let cfg = c.config;
            let plan = etcd_lifeboat::store::retention::prune(&cfg, &store, a.dry_run).await?;
            match a.output.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
                Output::Table => {
                    if a.dry_run {
                        println!("dry run: nothing is deleted");
                    }
                    print!("{}", plan.to_table());
                }
            }
            Ok(())
        }
        Command::Daemon(a) => {
            let cfg = load(&cli).await?;
            Ok(etcd_lifeboat::daemon::run(a.clone().into(), cfg).await?)
        }
        Command::Verify(a) => {
            let c = load_cluster(&cli, &a.cluster).await?;
            let store = open_cluster_store(&c).await?;
            let cfg = c.config;
            // Broken manifests do not stop the others from being verified; they fail the run.
            let (targets, broken) = if a.all {
                let cat = manifest::catalog(&store).await?;
                (cat.backups, cat.broken)
            } else {
                (vec![manifest::find(&store, &a.id).await?], Vec::new())
            };
            if targets.is_empty() && broken.is_empty() {
                anyhow::bail!(
                    "the store {} holds no backups; run `etcd-lifeboat backup` first",
                    store.describe()
                );
            }
            let identities = crypto::identities_from_args(&a.identity.files)?;
            let base = workdir::temp_base(&cfg);
            let table = a.output.output == Output::Table;
            let (mut failed, mut unchecked) = (0, 0);
            let mut results = Vec::new();
            for m in &targets {
                // The control-plane files object first: a failure there fails the backup.
                if m.files.is_some() {
                    if let Err(e) = acquire::fetch_files(&store, m, identities.clone(), None).await
                    {
                        failed += 1;
                        results.push(
                            serde_json::json!({"id": m.id, "ok": false, "error": e.to_string()}),
                        );
                        if table {
                            etcd_lifeboat::outln!("FAIL  {}  {e}", m.id);
                        }
                        continue;
                    }
                }
                // What the store says about the data object (S3: HeadObject): server-side
                // encryption and Object Lock, checked against what the manifest requested.
                let stored = match store_protection(&store, m).await {
                    Ok(p) => p,
                    Err(e) => {
                        failed += 1;
                        results.push(serde_json::json!({"id": m.id, "ok": false, "error": e}));
                        if table {
                            etcd_lifeboat::outln!("FAIL  {}  {e}", m.id);
                        }
                        continue;
                    }
                };
                let (failed_before, unchecked_before) = (failed, unchecked);
                match acquire::verify_stored(&store, m, identities.clone(), &base).await {
                    Ok(acquire::Verified::Content(st)) => {
                        tracing::info!(id = %m.id, "backup verified");
                        results.push(serde_json::json!({"id": m.id, "ok": true, "content_checked": true, "status": st, "store": stored}));
                        if table {
                            let decrypted = if m.encryption.is_some() {
                                "  (decrypted)"
                            } else {
                                ""
                            };
                            let files = match &m.files {
                                Some(f) => format!("  files {}", f.entries.len()),
                                None => String::new(),
                            };
                            let note = stored
                                .as_ref()
                                .map(|p| format!("  {p}"))
                                .unwrap_or_default();
                            etcd_lifeboat::outln!(
                                "OK    {}  revision {}  keys {}  hash {:08x}{files}{decrypted}{note}",
                                m.id, st.revision, st.total_key, st.hash
                            );
                        }
                    }
                    Ok(acquire::Verified::CiphertextOnly(_)) => {
                        unchecked += 1;
                        results.push(serde_json::json!({"id": m.id, "ok": a.ciphertext_only, "content_checked": false, "ciphertext_ok": true}));
                        if table {
                            etcd_lifeboat::outln!(
                                "{}  {}  encrypted: size and sha256 of the stored object match the manifest; the content was NOT checked (pass --identity FILE to decrypt and verify it)",
                                if a.ciphertext_only { "OK   " } else { "UNCHECKED" },
                                m.id
                            );
                        }
                    }
                    Err(e) => {
                        failed += 1;
                        results.push(
                            serde_json::json!({"id": m.id, "ok": false, "error": e.to_string()}),
                        );
                        if table {
                            etcd_lifeboat::outln!("FAIL  {}  {e}", m.id);
                        }
                    }
                }
                // The backup's PITR delta chain, when it has one: every delta read and checked
                // (docs/pitr.md), once the base itself verified.
                if failed == failed_before {
                    let v = etcd_lifeboat::pitr::chain::verify_chain(&store, m, identities.clone())
                        .await?;
                    if let Some(summary) = v.chain.summary() {
                        let problems = v.problems();
                        let unchecked_deltas =
                            v.deltas.iter().filter(|d| !d.content_checked).count();
                        if let Some(last) = results.last_mut() {
                            last["pitr"] = serde_json::json!({
                                "chain": summary, "deltas_checked": v.deltas.len(),
                                "content_unchecked": unchecked_deltas, "problems": problems,
                            });
                            if !problems.is_empty() {
                                last["ok"] = serde_json::json!(false);
                            }
                        }
                        if !problems.is_empty() {
                            failed += 1;
                        } else if unchecked_deltas > 0
                            && !a.ciphertext_only
                            && unchecked == unchecked_before
                        {
                            unchecked += 1;
                        }
                        if table {
                            for p in &problems {
                                etcd_lifeboat::outln!("FAIL  {}  {p}", m.id);
                            }
                            if problems.is_empty() {
                                let how = if unchecked_deltas > 0 {
                                    "stored size and sha256 checked, content NOT (pass --identity FILE)"
                                } else {
                                    "every delta checked"
                                };
                                etcd_lifeboat::outln!("      {summary}: {how}");
                            }
                        }
                    }
                }
            }
            for b in &broken {
                results.push(serde_json::json!({"key": b.key, "ok": false, "error": format!("broken manifest: {}", b.reason)}));
                if table {
                    etcd_lifeboat::outln!("BROKEN  {}  {}", b.key, b.reason);
                }
            }
            if !table {
                etcd_lifeboat::outln!("{}", serde_json::to_string_pretty(&results)?);
            }
            if failed > 0 {
                anyhow::bail!("{failed} of {} backups failed verification", targets.len());
            }
            if !broken.is_empty() {
                return Err(manifest::BrokenManifests(broken).into());
            }
            if unchecked > 0 && !a.ciphertext_only {
                anyhow::bail!(
                    "{unchecked} of {} backups are encrypted and their content was not checked (only the stored object's size and sha256); pass --identity FILE to verify them, or --ciphertext-only to accept this check",
                    targets.len()
                );
            }
            Ok(())
        }
        Command::Delete(a) => cmd_delete(&cli, a).await,
        Command::Completion(a) => cmd_completion(a),
        Command::Config(ConfigCommand::Schema) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&etcd_lifeboat::config::schema())?
            );
            Ok(())
        }
        Command::Man(a) => cmd_man(a),
    }
}

/// What the store reports about a backup's data object (HeadObject on S3): `"sse AES256"`,
/// `"sse aws:kms (key K)"`, `"locked GOVERNANCE until T"`; `None` for the local store or when
/// the store reports neither.
///
/// Errors: the head request failed, or the store does not apply the server-side encryption
/// the manifest says was requested (a message naming the backup and both values).
async fn store_protection(store: &Store, m: &manifest::Manifest) -> Result<Option<String>, String> {
    if !matches!(store, Store::S3(_)) {
        return Ok(None);
    }
    let key = m.derived_data_key().map_err(|e| e.to_string())?;
    let head = store
        .head(&key)
        .await
        .map_err(|e| format!("HeadObject {key}: {e}"))?;
    if let Some(want) = &m.sse {
        if head.sse.as_deref() != Some(want.algorithm.as_str()) {
            return Err(format!(
                "backup {}: the manifest says server-side encryption {} was requested, the store reports {}",
                m.id,
                want.algorithm,
                head.sse.as_deref().unwrap_or("none")
            ));
        }
    }
    let mut parts = Vec::new();
    if let Some(sse) = &head.sse {
        parts.push(match &head.sse_kms_key_id {
            Some(k) => format!("sse {sse} (key {k})"),
            None => format!("sse {sse}"),
        });
    }
    if let (Some(mode), Some(until)) = (&head.lock_mode, head.retain_until) {
        parts.push(format!(
            "locked {mode} until {}",
            until.format("%Y-%m-%dT%H:%M:%SZ")
        ));
    }
    Ok((!parts.is_empty()).then(|| parts.join(", ")))
}

/// Pushes this run's metrics to a Pushgateway, with the store catalog's newest-backup metrics
/// so that backup-age alerts work for CronJob installs. A push failure is logged, not fatal:
/// the backup itself is what the exit code reports.
///
/// Grouping key: job [`PUSH_JOB`] and `cluster_id`, the etcd cluster id (hex) of this run's
/// backup, else (a run that failed) of the newest backup in the store, else `unknown`. So
/// one cluster has one group whichever node ran the CronJob: a later success replaces an
/// earlier failure. Credentials: `user:password@` in the URL, `--pushgateway-username` with
/// `ETCD_LIFEBOAT_PUSHGATEWAY_PASSWORD` or `--pushgateway-password-file`, or a bearer token
/// (`ETCD_LIFEBOAT_PUSHGATEWAY_BEARER_TOKEN`, `--pushgateway-bearer-token-file`). The URL
/// is logged without its userinfo.
async fn push_backup_metrics(
    url: &str,
    a: &cli::BackupArgs,
    store: &Store,
    result: &Result<manifest::Manifest, backup::BackupError>,
    took: std::time::Duration,
) {
    use etcd_lifeboat::metrics;
    match result {
        Ok(m) => metrics::record_backup_success(m, took),
        Err(_) => metrics::record_backup_failure_after(took),
    }
    let catalog = match manifest::catalog(store).await {
        Ok(all) => {
            metrics::refresh_store(&all);
            Some(all)
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not read the store catalog for the pushgateway");
            None
        }
    };
    let cluster_id = match result {
        Ok(m) => m.cluster_id.clone(),
        Err(_) => catalog
            .as_ref()
            .and_then(|c| c.newest_by_time())
            .map(|m| m.cluster_id.clone())
            .unwrap_or_else(|| PUSH_UNKNOWN_CLUSTER.into()),
    };
    let target = match push_target(url, a) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "pushing metrics failed");
            return;
        }
    };
    if let Err(e) = metrics::push(&target, PUSH_JOB, &[("cluster_id", &cluster_id)]).await {
        tracing::error!(error = %e, "pushing metrics failed");
    }
}

/// The Pushgateway target of `backup --pushgateway`: URL, CA file and credentials from the
/// flags and environment.
fn push_target(
    url: &str,
    a: &cli::BackupArgs,
) -> Result<etcd_lifeboat::metrics::PushTarget, etcd_lifeboat::metrics::MetricsError> {
    use etcd_lifeboat::metrics::{read_secret_file, PushAuth, PushTarget};
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let token = match &a.pushgateway_bearer_token_file {
        Some(p) => Some(read_secret_file("bearer token file", p)?),
        None => env("ETCD_LIFEBOAT_PUSHGATEWAY_BEARER_TOKEN"),
    };
    let password = match &a.pushgateway_password_file {
        Some(p) => Some(read_secret_file("password file", p)?),
        None => env("ETCD_LIFEBOAT_PUSHGATEWAY_PASSWORD"),
    };
    let basic = match (&a.pushgateway_username, password) {
        (Some(u), p) => Some(PushAuth::Basic {
            username: u.clone(),
            password: p.unwrap_or_default(),
        }),
        (None, _) => None,
    };
    let auth = match (basic, token) {
        (Some(_), Some(_)) => return Err(etcd_lifeboat::metrics::MetricsError::AuthConflict),
        (b, t) => b.or(t.map(PushAuth::Bearer)),
    };
    PushTarget::new(url)?
        .with_ca_file(a.pushgateway_ca_file.clone())
        .with_auth(auth)
}

/// Pushgateway job name of `backup --pushgateway` (alert rules select on it).
const PUSH_JOB: &str = "etcd-lifeboat-backup";

/// `cluster_id` grouping value of a failed run when neither the run nor the store knows the
/// etcd cluster id (first run failing before it connected).
const PUSH_UNKNOWN_CLUSTER: &str = "unknown";

/// `list`: the backups in the one order of truth, with a NOTE column (future-dated, Object
/// Lock retain-until) and, when the store holds backups of several etcd cluster IDs, a
/// CLUSTER ID column first; then a BROKEN section naming each broken manifest and why.
fn catalog_table(cat: &manifest::Catalog) -> String {
    let ids: std::collections::BTreeSet<&str> =
        cat.backups.iter().map(|m| m.cluster_id.as_str()).collect();
    let mut out = if ids.len() > 1 {
        // Several etcd clusters in one store (e.g. a restored cluster with a new ID backing
        // up into the old store): say whose each backup is, and how to pick one.
        let mut header = vec!["CLUSTER ID"];
        header.extend(TABLE_HEADER);
        let rows = cat
            .backups
            .iter()
            .map(|m| {
                let mut row = vec![m.cluster_id.clone()];
                row.extend(manifest_row(m, cat.now, catalog_note(cat, m)));
                row
            })
            .collect();
        render_table(&header, rows)
            + &format!(
                "\nbackups of {} etcd clusters; --cluster <cluster-id> selects one\n",
                ids.len()
            )
    } else {
        table_with_notes(&cat.backups, cat.now, |m| catalog_note(cat, m))
    };
    if !cat.broken.is_empty() {
        out += &format!(
            "\nBROKEN ({} manifests not trusted; prune leaves them, verify --all fails on them):\n",
            cat.broken.len()
        );
        for b in &cat.broken {
            out += &format!("BROKEN  {}  {}\n", b.key, b.reason);
        }
    }
    out
}

/// The NOTE of a backup in `list`: its `--tag`, future-dated, Object Lock retain-until.
fn catalog_note(cat: &manifest::Catalog, m: &manifest::Manifest) -> String {
    let future = cat.is_future(m).then(|| {
        format!(
            "FUTURE-DATED (clock ahead by {}; ignored for age and scheduling)",
            humantime::format_duration(std::time::Duration::from_secs(
                (m.finished_at.max(m.started_at) - cat.now)
                    .num_seconds()
                    .max(0) as u64
            ))
        )
    });
    note_of(m, future)
}

/// The NOTE of a backup: its `--tag`, `future` (when future-dated), Object Lock
/// retain-until.
fn note_of(m: &manifest::Manifest, future: Option<String>) -> String {
    let mut notes = Vec::new();
    if let Some(t) = &m.tag {
        notes.push(format!("tag {t}"));
    }
    notes.extend(future);
    if let Some(l) = &m.object_lock {
        notes.push(format!(
            "locked ({}) until {}",
            l.mode,
            l.retain_until.format("%Y-%m-%d %H:%M:%S")
        ));
    }
    notes.join("; ")
}

fn manifest_table(ms: &[manifest::Manifest], now: chrono::DateTime<chrono::Utc>) -> String {
    table_with_notes(ms, now, |m| note_of(m, None))
}

/// Columns of the backups table (the last, NOTE, only when a backup has a note).
const TABLE_HEADER: [&str; 9] = [
    "ID",
    "TIME (UTC)",
    "REVISION",
    "KEYS",
    "RAW SIZE",
    "STORED SIZE",
    "AGE",
    "MEMBER",
    "NOTE",
];

/// One row of the backups table, in [`TABLE_HEADER`]'s columns.
fn manifest_row(
    m: &manifest::Manifest,
    now: chrono::DateTime<chrono::Utc>,
    note: String,
) -> Vec<String> {
    let age = backup::age(now, m);
    vec![
        m.id.clone(),
        m.finished_at.format("%Y-%m-%d %H:%M:%S").to_string(),
        m.revision.to_string(),
        m.total_key.to_string(),
        humanize_bytes(m.total_size),
        humanize_bytes(m.stored_bytes),
        humantime::format_duration(std::time::Duration::from_secs(age.as_secs())).to_string(),
        if m.member_name.is_empty() {
            m.member_id.clone()
        } else {
            m.member_name.clone()
        },
        note,
    ]
}

/// The backups table; a NOTE column is added when `note` says something for any backup.
fn table_with_notes(
    ms: &[manifest::Manifest],
    now: chrono::DateTime<chrono::Utc>,
    note: impl Fn(&manifest::Manifest) -> String,
) -> String {
    let rows = ms.iter().map(|m| manifest_row(m, now, note(m))).collect();
    render_table(&TABLE_HEADER, rows)
}

/// Aligned columns, two spaces apart; the last column (NOTE) is left out when empty in every
/// row; `(no backups)` under the header when there are no rows.
fn render_table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| r.iter().map(|c| table_cell(c)).collect())
        .collect();
    let last = header.len() - 1;
    let cols = if rows.iter().any(|r| !r[last].is_empty()) {
        header.len()
    } else {
        last
    };
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(widths.iter())
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
            + "\n"
    };
    let mut out = line(header[..cols].to_vec());
    for r in &rows {
        out += &line(r[..cols].iter().map(|s| s.as_str()).collect());
    }
    if rows.is_empty() {
        out += "(no backups)\n";
    }
    out
}

/// How long a one-shot backup may take to stop after SIGTERM/SIGINT before it is abandoned.
const CANCEL_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Longest table cell, in characters: manifest fields come from the store, which is untrusted.
const MAX_CELL_CHARS: usize = 120;

/// `text` fit for a terminal table: control characters escaped (`\u{1b}`, `\r`; a tag or
/// member name from the store must not move the cursor or retitle the terminal), at most
/// [`MAX_CELL_CHARS`] characters, cut with `...`.
fn table_cell(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
        if out.chars().count() > MAX_CELL_CHARS {
            out = out.chars().take(MAX_CELL_CHARS - 3).collect();
            out.push_str("...");
            break;
        }
    }
    out
}

/// `completion SHELL`: the clap_complete script for the whole command tree on stdout.
fn cmd_completion(a: &cli::CompletionArgs) -> anyhow::Result<()> {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "etcd-lifeboat", &mut script);
    let mut script = String::from_utf8(script)?;
    if a.shell == clap_complete::Shell::Bash {
        // clap_complete's bash script spells the state of a subcommand `etcd__lifeboat__subcmd__x`
        // in its loop but `etcd__subcmd__lifeboat__subcmd__x` in its case arms for a bin name
        // with a hyphen, so nothing after the subcommand completes (clap-rs/clap#6421, open).
        // Spell the arms as the loop does; a no-op once upstream is fixed.
        script = script.replace("etcd__subcmd__lifeboat", "etcd__lifeboat");
    }
    std::io::stdout().write_all(script.as_bytes())?;
    Ok(())
}

/// `man [--out-dir DIR]`: the main page as roff on stdout, or every page (main and one per
/// subcommand, `etcd-lifeboat-backup.1`, ...) written into DIR.
fn cmd_man(a: &cli::ManArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    use clap::CommandFactory;
    let cmd = Cli::command();
    match &a.out_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("--out-dir: cannot create {}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir).with_context(|| {
                format!(
                    "--out-dir: cannot write the man pages into {}",
                    dir.display()
                )
            })?;
            println!("man pages written to {}", dir.display());
        }
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            std::io::stdout().write_all(&out)?;
        }
    }
    Ok(())
}

/// `restore`: `--cluster` selects the store of `--from-store` among the config's clusters.
async fn cmd_restore(cli: &Cli, a: &cli::RestoreArgs) -> anyhow::Result<()> {
    if a.cluster.cluster.is_some() && a.from_store.is_none() {
        anyhow::bail!("--cluster selects the store of --from-store; without --from-store it is not used, remove it");
    }
    Ok(etcd_lifeboat::restore::run(a.clone().into(), cli.config.as_deref()).await?)
}

/// `list` of a config with several clusters and no `--cluster`: every cluster's backups,
/// with a CLUSTER column (JSON: a `cluster` field on each entry). A cluster whose store cannot
/// be read is reported and the others are still listed; the command then fails.
async fn list_clusters(all: &Config, output: Output) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    let mut json = Vec::new();
    let mut failed = Vec::new();
    for c in all.clusters() {
        let name = c.name.clone().unwrap_or_default();
        let r = async {
            let store = Store::from_config_existing(&c.config.storage).await?;
            anyhow::Ok(
                manifest::catalog_at(&store, chrono::Utc::now(), c.config.store.future_tolerance)
                    .await?,
            )
        }
        .await;
        match r {
            Ok(cat) => {
                if let serde_json::Value::Array(items) = cat.to_list_json() {
                    for mut v in items {
                        if let Some(o) = v.as_object_mut() {
                            o.insert("cluster".into(), name.clone().into());
                        }
                        json.push(v);
                    }
                }
                for m in &cat.backups {
                    let mut row = vec![name.clone()];
                    row.extend(manifest_row(m, cat.now, catalog_note(&cat, m)));
                    rows.push(row);
                }
                for b in &cat.broken {
                    failed.push(format!("{name}: broken manifest {}: {}", b.key, b.reason));
                }
            }
            Err(e) => failed.push(format!("{name}: {}", error::report(e.as_ref()))),
        }
    }
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&json)?),
        Output::Table => {
            let mut header = vec!["CLUSTER"];
            header.extend(TABLE_HEADER);
            print!("{}", render_table(&header, rows));
            for f in &failed {
                println!("ERROR  {f}");
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "{} of the clusters' stores could not be listed in full: {}",
            failed.len(),
            failed.join("; ")
        )
    }
}

/// `delete ID... [--dry-run] [--force]`: [`etcd_lifeboat::store::retention::delete`], then the
/// plan as a table or JSON.
async fn cmd_delete(cli: &Cli, a: &cli::DeleteArgs) -> anyhow::Result<()> {
    let c = load_cluster(cli, &a.cluster).await?;
    let store = open_cluster_store(&c).await?;
    let cfg = c.config;
    let plan =
        etcd_lifeboat::store::retention::delete(&cfg, &store, &a.ids, a.force, a.dry_run).await?;
    match a.output.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
        Output::Table => print!("{}", plan.to_table()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_cells_are_escaped_and_cut() {
        assert_eq!(table_cell("nightly"), "nightly");
        assert_eq!(table_cell("a\u{1b}[31mb\rc"), "a\\u{1b}[31mb\\rc");
        let long = table_cell(&"x".repeat(100_000));
        assert_eq!(long.chars().count(), MAX_CELL_CHARS);
        assert!(long.ends_with("..."));
        // A table of such cells renders (no width overflow panic).
        let t = render_table(&["A", "NOTE"], vec![vec!["y".repeat(70_000), "z".into()]]);
        assert!(
            t.lines()
                .all(|l| l.chars().count() <= 2 * MAX_CELL_CHARS + 2),
            "{t}"
        );
    }
}
