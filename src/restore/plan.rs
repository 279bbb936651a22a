//! The restore plan: which members exist, their IDs, and which data dirs will be written.
//!
//! Built from flags (or a kubeadm manifest) and validated before anything is read or written,
//! following etcd's own checks (release-3.5):
//! - `client/pkg/types/urls.go` `NewURLs`: scheme http|https|unix|unixs, `host:port`, no path;
//!   URLs sorted.
//! - `client/pkg/types/urlsmap.go` `NewURLsMap`/`parse`: `name=url,...`; a name given twice
//!   means one member with several peer URLs (etcd's syntax, kept here).
//! - `server/config/config.go` `VerifyBootstrap`: the local name is in `--initial-cluster`,
//!   `--initial-advertise-peer-urls` equals its URLs there, no URL appears twice.
//! - `server/etcdserver/api/membership/cluster.go` `NewClusterFromURLsMap`: IDs unique, not 0.
//! - `etcdutl/snapshot/v3_snapshot.go` `Restore`: data dir absent or empty; default data dir
//!   `<name>.etcd`; WAL dir default `<data-dir>/member/wal`.
//!
//! Differences from etcdutl, on purpose: peer URLs are compared as strings (etcd also resolves
//! host names); when `--initial-advertise-peer-urls` is not given the member's URLs from
//! `--initial-cluster` are used (etcdutl would compare them with its default
//! `http://localhost:2380` and fail); `--wal-dir` may exist if it is empty.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::db::SnapshotMember;
use super::ids;
use super::member::{hex_id, Member, EVENT_HISTORY_CAPACITY};

/// Default of `--name` (etcdutl's).
pub const DEFAULT_NAME: &str = "default";
/// Default of `--initial-cluster` (etcdutl's).
pub const DEFAULT_INITIAL_CLUSTER: &str = "default=http://localhost:2380";
/// Default of `--initial-cluster-token` (etcdutl's).
pub const DEFAULT_TOKEN: &str = "etcd-cluster";
/// Default of `--initial-advertise-peer-urls` (etcdutl's).
pub const DEFAULT_PEER_URLS: &str = "http://localhost:2380";

/// Plan-building errors. `Flag` is a usage error (exit 2); the others exit 1.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A flag's value is invalid or inconsistent with another flag.
    #[error("{flag}: {message}")]
    Flag {
        /// The flag, e.g. `--initial-cluster`.
        flag: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
    /// The target directory holds files; restore never overwrites.
    #[error("{what} {path} is not empty: restore never deletes or overwrites; move it away or choose an absent or empty directory")]
    NotEmpty {
        /// "data dir" or "wal dir".
        what: &'static str,
        /// The directory.
        path: PathBuf,
    },
    /// The target exists and is not a directory.
    #[error("{what} {path} exists and is not a directory")]
    NotADirectory {
        /// "data dir" or "wal dir".
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// Reading a target directory failed.
    #[error("cannot inspect {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

fn flag(flag: &'static str, message: impl Into<String>) -> PlanError {
    PlanError::Flag {
        flag,
        message: message.into(),
    }
}

/// Where one member's data goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Target {
    /// Member name (one of [`Plan::members`]).
    pub name: String,
    /// Member ID.
    #[serde(serialize_with = "hex_id")]
    pub id: u64,
    /// `--data-dir` to start etcd with; receives `member/snap/{db,*.snap}` (and `member/wal`).
    pub data_dir: PathBuf,
    /// `--wal-dir` when the WAL lives outside the data dir.
    pub wal_dir: Option<PathBuf>,
}

/// The validated plan of a restore: nothing has been written when it exists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// `--initial-cluster-token`.
    pub token: String,
    /// Cluster ID ([`ids::cluster_id`]).
    #[serde(serialize_with = "hex_id")]
    pub cluster_id: u64,
    /// Every member, sorted by ID ascending (the order etcd writes them in).
    pub members: Vec<Member>,
    /// The data dirs to write: one (single-member restore) or all (`--out-dir`).
    pub targets: Vec<Target>,
    /// `--initial-cluster` in canonical form (names sorted, URLs sorted).
    pub initial_cluster: String,
}

/// Flag values a plan is built from (already merged with a kubeadm manifest).
#[derive(Clone, Debug, Default)]
pub struct PlanInput {
    /// `--name` (None: [`DEFAULT_NAME`]).
    pub name: Option<String>,
    /// `--initial-cluster` (None: [`DEFAULT_INITIAL_CLUSTER`]).
    pub initial_cluster: Option<String>,
    /// `--initial-cluster-token` (None: [`DEFAULT_TOKEN`]).
    pub token: Option<String>,
    /// `--initial-advertise-peer-urls` (None: the member's URLs in the initial cluster).
    pub advertise_peer_urls: Option<String>,
    /// `--data-dir` (None: `<name>.etcd`).
    pub data_dir: Option<PathBuf>,
    /// `--wal-dir`.
    pub wal_dir: Option<PathBuf>,
    /// `--out-dir`: write every member into `DIR/<name>`.
    pub out_dir: Option<PathBuf>,
}

/// Parses and normalises one URL as `types.NewURLs` accepts it: lower-case scheme
/// http/https/unix/unixs, a `host:port` authority, no path. Returns the URL as Go prints it.
pub fn parse_url(flag_name: &'static str, raw: &str) -> Result<String, PlanError> {
    let s = raw.trim();
    let (scheme, rest) = s.split_once("://").ok_or_else(|| {
        flag(
            flag_name,
            format!("{s:?} is not a URL (want scheme://host:port)"),
        )
    })?;
    let scheme = scheme.to_ascii_lowercase();
    if !matches!(scheme.as_str(), "http" | "https" | "unix" | "unixs") {
        return Err(flag(
            flag_name,
            format!("URL scheme must be http, https, unix, or unixs: {s}"),
        ));
    }
    if rest.contains(['/', '?', '#']) {
        return Err(flag(flag_name, format!("URL must not contain a path: {s}")));
    }
    let host_port_ok = match rest.rsplit_once(':') {
        Some((host, port)) => {
            let host_ok = if host.starts_with('[') {
                host.ends_with(']') && host.len() > 2
            } else {
                !host.contains(':')
            };
            host_ok && port.chars().all(|c| c.is_ascii_digit())
        }
        None => false,
    };
    if !host_port_ok {
        return Err(flag(
            flag_name,
            format!("URL address does not have the form \"host:port\": {s}"),
        ));
    }
    Ok(format!("{scheme}://{rest}"))
}

/// Parses a comma-separated URL list (`--initial-advertise-peer-urls`), sorted.
pub fn parse_urls(flag_name: &'static str, raw: &str) -> Result<Vec<String>, PlanError> {
    let mut out = raw
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| parse_url(flag_name, p))
        .collect::<Result<Vec<_>, _>>()?;
    if out.is_empty() {
        return Err(flag(flag_name, "no valid URLs given"));
    }
    out.sort();
    Ok(out)
}

/// Parses `--initial-cluster` (`name=url,name=url,...`) into name -> sorted URLs.
pub fn parse_initial_cluster(raw: &str) -> Result<BTreeMap<String, Vec<String>>, PlanError> {
    const F: &str = "--initial-cluster";
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for part in raw.split(',').filter(|p| !p.is_empty()) {
        let (name, url) = part
            .split_once('=')
            .ok_or_else(|| flag(F, format!("{part:?} is not name=URL")))?;
        if name.trim().is_empty() {
            return Err(flag(F, format!("{part:?} has an empty member name")));
        }
        m.entry(name.to_string())
            .or_default()
            .push(parse_url(F, url)?);
    }
    if m.is_empty() {
        return Err(flag(
            F,
            "initial cluster unset: give name=peerURL for every member",
        ));
    }
    for urls in m.values_mut() {
        urls.sort();
    }
    Ok(m)
}

/// `--initial-cluster` of the membership recorded in a snapshot (`name=url,...`, one entry
/// per peer URL, members sorted by name). Errors (a `Flag` error on `--members-from-snapshot`):
/// no members recorded, or a member without a name (an etcd 3.4 member that never
/// published its attributes): then give `--initial-cluster` instead.
pub fn initial_cluster_of_snapshot(members: &[SnapshotMember]) -> Result<String, PlanError> {
    const F: &str = "--members-from-snapshot";
    if members.is_empty() {
        return Err(flag(F, "the snapshot records no members (bucket members is empty); give --initial-cluster name=peerURL,... instead"));
    }
    let mut by_name: Vec<&SnapshotMember> = members.iter().collect();
    by_name.sort_by(|a, b| (&a.name, a.id).cmp(&(&b.name, b.id)));
    let mut parts = Vec::new();
    for m in by_name {
        if m.name.is_empty() || m.name.contains([',', '=']) {
            return Err(flag(
                F,
                format!(
                    "the snapshot's member {:016x} ({}) has no usable name; give --initial-cluster name=peerURL,... instead",
                    m.id,
                    m.peer_urls.join(",")
                ),
            ));
        }
        if m.peer_urls.is_empty() {
            return Err(flag(
                F,
                format!(
                    "the snapshot's member {} has no peer URLs; give --initial-cluster instead",
                    m.name
                ),
            ));
        }
        for u in &m.peer_urls {
            parts.push(format!("{}={u}", m.name));
        }
    }
    Ok(parts.join(","))
}

/// The snapshot's members for messages, sorted by name: `name=url (id ..., learner)`,
/// `; `-separated.
pub fn describe_snapshot_members(members: &[SnapshotMember]) -> String {
    if members.is_empty() {
        return "none recorded".to_string();
    }
    let mut by_name: Vec<&SnapshotMember> = members.iter().collect();
    by_name.sort_by(|a, b| (&a.name, a.id).cmp(&(&b.name, b.id)));
    by_name
        .iter()
        .map(|m| {
            format!(
                "{}={} (id {:016x}{})",
                if m.name.is_empty() {
                    "<unnamed>"
                } else {
                    &m.name
                },
                m.peer_urls.join(","),
                m.id,
                if m.is_learner { ", learner" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Whether `dir` is absent or an empty directory.
fn check_target(what: &'static str, dir: &Path) -> Result<(), PlanError> {
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PlanError::Io {
            path: dir.to_path_buf(),
            source: e,
        }),
        Ok(md) if !md.is_dir() => Err(PlanError::NotADirectory {
            what,
            path: dir.to_path_buf(),
        }),
        Ok(_) => {
            let mut rd = std::fs::read_dir(dir).map_err(|e| PlanError::Io {
                path: dir.to_path_buf(),
                source: e,
            })?;
            if rd.next().is_some() {
                Err(PlanError::NotEmpty {
                    what,
                    path: dir.to_path_buf(),
                })
            } else {
                Ok(())
            }
        }
    }
}

impl Plan {
    /// Validates the flags and the target directories and derives the IDs.
    ///
    /// Errors: [`PlanError::Flag`] for invalid or inconsistent flags, [`PlanError::NotEmpty`]
    /// / [`PlanError::NotADirectory`] for a target that is in the way, `Io` when a target
    /// cannot be inspected. Reads the file system, writes nothing.
    pub fn build(input: &PlanInput) -> Result<Plan, PlanError> {
        let token = input
            .token
            .clone()
            .unwrap_or_else(|| DEFAULT_TOKEN.to_string());
        if token.is_empty() {
            return Err(flag("--initial-cluster-token", "must not be empty"));
        }
        let ic_raw = input
            .initial_cluster
            .as_deref()
            .unwrap_or(DEFAULT_INITIAL_CLUSTER);
        let cluster = parse_initial_cluster(ic_raw)?;

        // CheckDuplicateURL: a URL may belong to one member only, once.
        let mut seen = HashSet::new();
        for (name, urls) in &cluster {
            for u in urls {
                if !seen.insert(u.clone()) {
                    return Err(flag(
                        "--initial-cluster",
                        format!("initial cluster {ic_raw} has duplicate url {u} (member {name}): every peer URL must be unique"),
                    ));
                }
            }
        }
        if cluster.len() > EVENT_HISTORY_CAPACITY {
            return Err(flag("--initial-cluster", "more than 1000 members"));
        }

        let mut members: Vec<Member> = cluster
            .iter()
            .map(|(name, urls)| Member {
                name: name.clone(),
                id: ids::member_id(urls, &token),
                peer_urls: urls.clone(),
            })
            .collect();
        members.sort_by_key(|m| m.id);
        for w in members.windows(2) {
            if w[0].id == w[1].id {
                return Err(flag(
                    "--initial-cluster",
                    format!(
                        "members {} and {} get the identical ID {:x}",
                        w[0].name, w[1].name, w[0].id
                    ),
                ));
            }
        }
        if let Some(m) = members.iter().find(|m| m.id == 0) {
            return Err(flag(
                "--initial-cluster",
                format!(
                    "member {} gets ID 0, which raft reserves; change its URL or the token",
                    m.name
                ),
            ));
        }
        let cluster_id = ids::cluster_id(&members.iter().map(|m| m.id).collect::<Vec<_>>());

        let targets = match &input.out_dir {
            Some(out) => {
                for (f, given) in [
                    ("--data-dir", input.data_dir.is_some()),
                    ("--wal-dir", input.wal_dir.is_some()),
                    (
                        "--initial-advertise-peer-urls",
                        input.advertise_peer_urls.is_some(),
                    ),
                ] {
                    if given {
                        return Err(flag(f, "cannot be combined with --out-dir (every member goes to DIR/<name> with its URLs from --initial-cluster)"));
                    }
                }
                let mut t: Vec<Target> = members
                    .iter()
                    .map(|m| Target {
                        name: m.name.clone(),
                        id: m.id,
                        data_dir: out.join(&m.name),
                        wal_dir: None,
                    })
                    .collect();
                for m in &members {
                    if m.name.contains('/') || m.name == "." || m.name == ".." {
                        return Err(flag(
                            "--out-dir",
                            format!("member name {:?} cannot be a directory name", m.name),
                        ));
                    }
                }
                t.sort_by(|a, b| a.name.cmp(&b.name));
                t
            }
            None => {
                let name = input
                    .name
                    .clone()
                    .unwrap_or_else(|| DEFAULT_NAME.to_string());
                let member = members.iter().find(|m| m.name == name).ok_or_else(|| {
                    flag(
                        "--name",
                        format!("couldn't find local name {name:?} in the initial cluster configuration ({ic_raw}); --name must be one of the names in --initial-cluster"),
                    )
                })?;
                if let Some(ap) = &input.advertise_peer_urls {
                    let ap = parse_urls("--initial-advertise-peer-urls", ap)?;
                    if ap != member.peer_urls {
                        return Err(flag(
                            "--initial-advertise-peer-urls",
                            format!(
                                "{} does not match --initial-cluster's URLs for {name}: {}; they must be equal",
                                ap.join(","),
                                member.peer_urls.join(",")
                            ),
                        ));
                    }
                }
                let data_dir = input
                    .data_dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(format!("{name}.etcd")));
                vec![Target {
                    name: name.clone(),
                    id: member.id,
                    data_dir,
                    wal_dir: input.wal_dir.clone(),
                }]
            }
        };

        for t in &targets {
            check_target("data dir", &t.data_dir)?;
            if let Some(w) = &t.wal_dir {
                if w.starts_with(&t.data_dir) {
                    return Err(flag(
                        "--wal-dir",
                        "must be outside --data-dir (leave it unset for <data-dir>/member/wal)",
                    ));
                }
                check_target("wal dir", w)?;
            }
        }

        let initial_cluster = cluster
            .iter()
            .flat_map(|(n, urls)| urls.iter().map(move |u| format!("{n}={u}")))
            .collect::<Vec<_>>()
            .join(",");
        Ok(Plan {
            token,
            cluster_id,
            members,
            targets,
            initial_cluster,
        })
    }

    /// The member a target restores.
    pub fn member(&self, t: &Target) -> &Member {
        self.members
            .iter()
            .find(|m| m.id == t.id)
            .expect("target of a planned member")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str, ic: &str) -> PlanInput {
        PlanInput {
            name: Some(name.into()),
            initial_cluster: Some(ic.into()),
            token: Some("tok".into()),
            data_dir: Some(PathBuf::from("/nonexistent/lifeboat-test/x")),
            ..Default::default()
        }
    }

    #[test]
    fn two_members() {
        let p = Plan::build(&input(
            "a",
            "a=http://127.0.0.1:2380,b=http://127.0.0.1:2381",
        ))
        .unwrap();
        assert_eq!(p.cluster_id, 0x8d9fa1f3dd2c1d34);
        assert_eq!(p.members[0].name, "b");
        assert_eq!(p.members[0].id, 0x321b4ccd5c32edea);
        assert_eq!(p.targets.len(), 1);
        assert_eq!(p.targets[0].id, 0x71405583d3e2d5ce);
        assert_eq!(
            p.members[1].context_json(),
            r#"{"id":8160616549479273934,"peerURLs":["http://127.0.0.1:2380"],"name":"a"}"#
        );
    }

    #[test]
    fn name_must_be_in_cluster() {
        let e = Plan::build(&input("c", "a=http://127.0.0.1:2380")).unwrap_err();
        assert!(matches!(e, PlanError::Flag { flag: "--name", .. }), "{e}");
    }

    #[test]
    fn duplicate_urls_rejected() {
        let e = Plan::build(&input(
            "a",
            "a=http://127.0.0.1:2380,b=http://127.0.0.1:2380",
        ))
        .unwrap_err();
        assert!(e.to_string().contains("duplicate url"), "{e}");
    }

    #[test]
    fn advertise_must_match() {
        let mut i = input("a", "a=http://127.0.0.1:2380");
        i.advertise_peer_urls = Some("http://127.0.0.1:2390".into());
        let e = Plan::build(&i).unwrap_err();
        assert!(
            matches!(
                e,
                PlanError::Flag {
                    flag: "--initial-advertise-peer-urls",
                    ..
                }
            ),
            "{e}"
        );
        i.advertise_peer_urls = Some("HTTP://127.0.0.1:2380".into());
        Plan::build(&i).unwrap();
    }

    #[test]
    fn bad_urls() {
        for u in ["127.0.0.1:2380", "ftp://x:1", "http://x", "http://x:1/p"] {
            assert!(parse_url("--x", u).is_err(), "{u}");
        }
        assert_eq!(
            parse_url("--x", " http://[::1]:2380 ").unwrap(),
            "http://[::1]:2380"
        );
    }

    #[test]
    fn repeated_name_is_multi_url_member() {
        let p = Plan::build(&input("a", "a=http://h:2,a=http://h:1")).unwrap();
        assert_eq!(p.members[0].peer_urls, vec!["http://h:1", "http://h:2"]);
    }

    #[test]
    fn out_dir_targets_all() {
        let i = PlanInput {
            initial_cluster: Some("x=http://h:1,y=http://h:2,z=http://h:3".into()),
            out_dir: Some(PathBuf::from("/nonexistent/lifeboat-out")),
            ..Default::default()
        };
        let p = Plan::build(&i).unwrap();
        let names: Vec<_> = p.targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["x", "y", "z"]);
        assert_eq!(
            p.targets[1].data_dir,
            PathBuf::from("/nonexistent/lifeboat-out/y")
        );
    }

    #[test]
    fn non_empty_dir_rejected() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), b"x").unwrap();
        let mut i = input("a", "a=http://127.0.0.1:2380");
        i.data_dir = Some(d.path().to_path_buf());
        assert!(matches!(
            Plan::build(&i).unwrap_err(),
            PlanError::NotEmpty { .. }
        ));
        i.data_dir = Some(d.path().join("new"));
        Plan::build(&i).unwrap();
    }
}
