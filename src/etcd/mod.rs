//! Talking to etcd: client construction (TLS, auth, timeouts), endpoint selection and the
//! `Maintenance.Snapshot` stream.
//!
//! Endpoint selection asks every configured endpoint for its `Maintenance.Status` (each through a
//! client of its own, so the answer is that member's), drops the unreachable and those reporting
//! errors (alarms such as NOSPACE or CORRUPT), and orders the rest: up-to-date followers first
//! (so the leader is not loaded), then the leader, then members that lag behind. The backup
//! tries them in that order. When all fail, [`EtcdError::AllEndpointsFailed`] lists every
//! endpoint with its own reason.

use std::fmt;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use crate::config::EtcdConfig;

/// A member counts as up to date when its applied index is within this many entries of the
/// highest raft index any member reported.
pub const MAX_APPLY_LAG: u64 = 1000;

/// Errors of the etcd side.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// TLS or auth material could not be read.
    #[error("{key}: cannot read {path}: {source}")]
    Material {
        key: &'static str,
        path: String,
        source: std::io::Error,
    },
    /// One endpoint failed.
    #[error("{endpoint}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    /// Every endpoint failed; one line per endpoint.
    #[error("no etcd endpoint could serve the request:\n{}", format_failures(.0))]
    AllEndpointsFailed(Vec<(String, String)>),
    /// A request took longer than its timeout.
    #[error("{endpoint}: {what} timed out after {}; check that etcd is up and reachable, or raise etcd.{key}", humantime::format_duration(*.after))]
    Timeout {
        endpoint: String,
        what: &'static str,
        key: &'static str,
        after: Duration,
    },
}

fn format_failures(f: &[(String, String)]) -> String {
    f.iter()
        .map(|(ep, why)| format!("  - {ep}: {why}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Turns an etcd-client error into one line that says what happened and, for the common
/// cases, what to do (wrong CA, missing client cert, bad password, permission denied).
///
/// gRPC failures read as grpc-go and etcdctl print them (`rpc error: code = Unavailable desc =
/// ...`) followed by the causes' messages (`tcp connect error: Connection refused (os error
/// 111)`); tonic's own text embeds its causes in Rust debug form, which only the hint reads.
pub fn describe_error(err: &etcd_client::Error) -> String {
    let raw = err.to_string();
    let text = match err {
        etcd_client::Error::GRpcStatus(s) => readable(
            &format!("rpc error: code = {:?} desc = {}", s.code(), s.message()),
            std::error::Error::source(s),
        ),
        etcd_client::Error::TransportError(e) => {
            readable("transport error", std::error::Error::source(e))
        }
        _ => raw.clone(),
    };
    format!("{text}{}", hint(&format!("{raw} {text}").to_lowercase()))
}

/// `head` followed by the messages of `source` and its causes, each once
/// ([`crate::error::with_causes`]): wrappers that only repeat their cause's message, or say
/// nothing more than tonic's "transport error", are left out.
fn readable(head: &str, source: Option<&(dyn std::error::Error + 'static)>) -> String {
    crate::error::with_causes(head, source, &["transport error"])
}

/// What to do about an error whose text (lower case, with its sources) is `lower`; `""` when
/// nothing specific is known.
fn hint(lower: &str) -> &'static str {
    if lower.contains("unknownissuer")
        || lower.contains("unknown issuer")
        || lower.contains("certificate verify failed")
        || lower.contains("invalid peer certificate")
    {
        " (the server certificate is not signed by etcd.tls.ca_file; use the etcd CA, e.g. /etc/kubernetes/pki/etcd/ca.crt)"
    } else if lower.contains("handshake eof") {
        // A plain-http etcd reads the ClientHello as garbage and hangs up (or resets, below).
        " (the server closed the TLS handshake: if etcd listens on plain HTTP, use an http:// endpoint; else it may require a client certificate: set etcd.tls.cert_file and key_file)"
    } else if lower.contains("connection reset") && lower.contains("connecterror") {
        " (the server reset the connection while it was being set up: for an https:// endpoint etcd may listen on plain HTTP, then use an http:// endpoint; else check that etcd is running and healthy)"
    } else if lower.contains("certificate required")
        || lower.contains("bad certificate")
        || lower.contains("handshake")
    {
        " (TLS handshake failed: the server may require a client certificate; set etcd.tls.cert_file and key_file)"
    } else if lower.contains("authentication failed")
        || lower.contains("invalid user id or password")
    {
        " (check etcd.auth.username and the password)"
    } else if lower.contains("authentication is not enabled") {
        " (this etcd has auth disabled: remove etcd.auth from the config, or unset ETCDCTL_USER)"
    } else if lower.contains("permission denied") {
        " (the etcd user needs the root role to take snapshots)"
    } else if lower.contains("connection refused")
        || lower.contains("tcp connect error")
        || lower.contains("dns error")
    {
        " (is etcd running and listening on this URL?)"
    } else {
        ""
    }
}

/// Normalises an endpoint to a URL: `host:port` becomes `http://host:port`, or `https://` when
/// TLS is configured (as etcdctl does).
pub fn endpoint_url(ep: &str, tls: bool) -> String {
    if ep.starts_with("http://") || ep.starts_with("https://") {
        ep.to_string()
    } else if tls {
        format!("https://{ep}")
    } else {
        format!("http://{ep}")
    }
}

/// Builds the connect options: timeouts, keepalive, TLS identity and CA, user and password.
///
/// Errors: unreadable TLS files or password file.
pub fn connect_options(cfg: &EtcdConfig) -> Result<ConnectOptions, EtcdError> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(cfg.dial_timeout)
        .with_keep_alive(
            Duration::from_secs(10),
            cfg.dial_timeout.max(Duration::from_secs(5)),
        );
    if let Some(tls) = &cfg.tls {
        let read = |key: &'static str, p: &std::path::Path| {
            std::fs::read(p).map_err(|source| EtcdError::Material {
                key,
                path: p.display().to_string(),
                source,
            })
        };
        let mut t = TlsOptions::new();
        if let Some(ca) = &tls.ca_file {
            t = t.ca_certificate(Certificate::from_pem(read("etcd.tls.ca_file", ca)?));
        }
        if let (Some(c), Some(k)) = (&tls.cert_file, &tls.key_file) {
            t = t.identity(Identity::from_pem(
                read("etcd.tls.cert_file", c)?,
                read("etcd.tls.key_file", k)?,
            ));
        }
        if let Some(name) = &tls.server_name {
            t = t.domain_name(name.clone());
        }
        opts = opts.with_tls(t);
    }
    if let Some(auth) = &cfg.auth {
        let pw = auth.resolve_password().map_err(|e| EtcdError::Endpoint {
            endpoint: "etcd.auth".into(),
            reason: e.to_string(),
        })?;
        opts = opts.with_user(auth.username.clone(), pw);
    }
    Ok(opts)
}

/// Connects a client to `endpoints` (all of them, load-balanced by etcd-client). With auth
/// configured this authenticates at once, so a bad password fails here.
///
/// Errors: bad TLS material, dial or auth failure, dial timeout.
pub async fn connect(cfg: &EtcdConfig, endpoints: &[String]) -> Result<Client, EtcdError> {
    let tls = cfg.tls.is_some();
    let urls: Vec<String> = endpoints.iter().map(|e| endpoint_url(e, tls)).collect();
    let opts = connect_options(cfg)?;
    let label = urls.join(",");
    match tokio::time::timeout(
        cfg.dial_timeout + cfg.request_timeout,
        Client::connect(&urls, Some(opts)),
    )
    .await
    {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(EtcdError::Endpoint {
            endpoint: label,
            reason: describe_error(&e),
        }),
        Err(_) => Err(EtcdError::Timeout {
            endpoint: label,
            what: "connect",
            key: "dial_timeout",
            after: cfg.dial_timeout + cfg.request_timeout,
        }),
    }
}

/// What one member said about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// The endpoint URL asked.
    pub endpoint: String,
    /// Member ID (`etcdctl endpoint status` ID column).
    pub member_id: u64,
    /// Cluster ID from the response header.
    pub cluster_id: u64,
    /// Member ID of the leader this member knows.
    pub leader: u64,
    /// Last raft index this member has.
    pub raft_index: u64,
    /// Raft index applied to its backend (0 on etcd 3.4, which does not report it).
    pub raft_applied_index: u64,
    /// Server version, e.g. `3.5.1`.
    pub version: String,
    /// Backend size in bytes (the approximate snapshot size).
    pub db_size: u64,
    /// Errors the member reports (alarms).
    pub errors: Vec<String>,
}

impl MemberStatus {
    /// True when this member is the leader.
    pub fn is_leader(&self) -> bool {
        self.member_id == self.leader
    }
    fn applied(&self) -> u64 {
        if self.raft_applied_index > 0 {
            self.raft_applied_index
        } else {
            self.raft_index
        }
    }
}

impl fmt::Display for MemberStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (member {:016x}, {}, raft index {}, v{})",
            self.endpoint,
            self.member_id,
            if self.is_leader() {
                "leader"
            } else {
                "follower"
            },
            self.raft_index,
            self.version
        )
    }
}

/// Asks one endpoint for its status through a client of its own.
///
/// Errors: dial failure, TLS/auth failure, timeout (`etcd.request_timeout`).
pub async fn member_status(
    cfg: &EtcdConfig,
    endpoint: &str,
) -> Result<(Client, MemberStatus), EtcdError> {
    let url = endpoint_url(endpoint, cfg.tls.is_some());
    let mut client = connect(cfg, std::slice::from_ref(&url)).await?;
    let resp =
        match tokio::time::timeout(cfg.request_timeout + cfg.dial_timeout, client.status()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                return Err(EtcdError::Endpoint {
                    endpoint: url,
                    reason: describe_error(&e),
                })
            }
            Err(_) => {
                return Err(EtcdError::Timeout {
                    endpoint: url,
                    what: "status request",
                    key: "request_timeout",
                    after: cfg.request_timeout + cfg.dial_timeout,
                })
            }
        };
    let header = resp.header();
    let st = MemberStatus {
        endpoint: url,
        member_id: header.map(|h| h.member_id()).unwrap_or(0),
        cluster_id: header.map(|h| h.cluster_id()).unwrap_or(0),
        leader: resp.leader(),
        raft_index: resp.raft_index(),
        raft_applied_index: resp.raft_applied_index(),
        version: resp.version().to_string(),
        db_size: resp.db_size().max(0) as u64,
        errors: resp.errors().to_vec(),
    };
    Ok((client, st))
}

/// Orders healthy members for a snapshot: up-to-date followers, then the leader, then laggards;
/// within a group, the most advanced first. `statuses` are the reachable members.
pub fn order_candidates(mut statuses: Vec<MemberStatus>) -> Vec<MemberStatus> {
    let top = statuses.iter().map(|s| s.raft_index).max().unwrap_or(0);
    statuses.sort_by_key(|s| {
        let lagging = top.saturating_sub(s.applied()) > MAX_APPLY_LAG;
        (lagging, s.is_leader(), std::cmp::Reverse(s.applied()))
    });
    statuses
}

/// A reachable, healthy member with a client connected to it alone.
pub struct Candidate {
    /// Client bound to this member only.
    pub client: Client,
    /// What the member reported.
    pub status: MemberStatus,
}

/// Asks every endpoint for its status (concurrently) and returns the healthy ones in the order
/// a snapshot should try them, plus the reason each other endpoint was skipped.
pub async fn select_members(cfg: &EtcdConfig) -> (Vec<Candidate>, Vec<(String, String)>) {
    let results = futures::future::join_all(
        cfg.endpoints
            .iter()
            .map(|ep| async move { (ep.clone(), member_status(cfg, ep).await) }),
    )
    .await;
    let mut ok = Vec::new();
    let mut skipped = Vec::new();
    for (ep, r) in results {
        match r {
            Ok((client, st)) if st.errors.is_empty() => ok.push((client, st)),
            Ok((_, st)) => skipped.push((
                st.endpoint.clone(),
                format!("member reports errors: {}", st.errors.join("; ")),
            )),
            Err(e) => skipped.push((endpoint_url(&ep, cfg.tls.is_some()), strip_endpoint(&e))),
        }
    }
    let order = order_candidates(ok.iter().map(|(_, s)| s.clone()).collect());
    let mut clients: Vec<Option<(Client, MemberStatus)>> = ok.into_iter().map(Some).collect();
    let candidates = order
        .into_iter()
        .filter_map(|s| {
            let idx = clients
                .iter()
                .position(|c| c.as_ref().is_some_and(|(_, st)| st.endpoint == s.endpoint))?;
            let (client, status) = clients[idx].take()?;
            Some(Candidate { client, status })
        })
        .collect();
    (candidates, skipped)
}

/// The reason part of an endpoint error (without repeating the endpoint).
pub fn strip_endpoint(e: &EtcdError) -> String {
    match e {
        EtcdError::Endpoint { reason, .. } => reason.clone(),
        EtcdError::Timeout {
            what, key, after, ..
        } => format!(
            "{what} timed out after {}; check that etcd is up, or raise etcd.{key}",
            humantime::format_duration(*after)
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(ep: &str, id: u64, leader: u64, idx: u64) -> MemberStatus {
        MemberStatus {
            endpoint: ep.into(),
            member_id: id,
            cluster_id: 9,
            leader,
            raft_index: idx,
            raft_applied_index: idx,
            version: "3.5.1".into(),
            db_size: 0,
            errors: vec![],
        }
    }

    #[test]
    fn followers_before_leader_and_laggards_last() {
        let order = order_candidates(vec![
            st("leader", 1, 1, 5000),
            st("lagging", 3, 1, 100),
            st("follower", 2, 1, 4999),
        ]);
        let names: Vec<_> = order.iter().map(|s| s.endpoint.as_str()).collect();
        assert_eq!(names, ["follower", "leader", "lagging"]);
    }

    /// An https:// endpoint on a plain-HTTP etcd fails either way, both seen on loopback.
    #[test]
    fn a_tls_connect_to_plain_http_hints_at_http() {
        for text in [
            r#"grpc request error: code: 'the service is currently unavailable', message: "tls handshake eof", source: tonic::transport::error(transport, connecterror(custom { kind: unexpectedeof, error: "tls handshake eof" }))"#,
            r#"grpc request error: code: 'the service is currently unavailable', message: "connection reset by peer (os error 104)", source: tonic::transport::error(transport, connecterror(os { code: 104, kind: connectionreset, message: "connection reset by peer" }))"#,
        ] {
            assert!(hint(text).contains("use an http:// endpoint"), "{text}");
        }
        assert!(hint("tcp connect error: connection refused").contains("is etcd running"));
        assert!(hint("etcdserver: authentication is not enabled").contains("remove etcd.auth"));
    }

    /// The shape of a refused connect as tonic reports it: a transport error wrapping a connect
    /// error wrapping the OS error. Only the messages that say something are kept.
    #[test]
    fn readable_errors_keep_each_cause_once() {
        #[derive(Debug)]
        struct Wrap(&'static str, Option<std::io::Error>);
        impl std::fmt::Display for Wrap {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for Wrap {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_ref().map(|e| e as _)
            }
        }
        let os = std::io::Error::from_raw_os_error(111);
        let refused = os.to_string();
        let chain = Wrap("tcp connect error", Some(os));
        let text = readable(
            "rpc error: code = Unavailable desc = tcp connect error",
            Some(&chain),
        );
        assert_eq!(
            text,
            format!("rpc error: code = Unavailable desc = tcp connect error: {refused}")
        );
        assert!(!text.contains("Os {"), "{text}");
        let bare = Wrap("transport error", None);
        assert_eq!(readable("rpc error", Some(&bare)), "rpc error");
    }

    #[test]
    fn endpoint_urls_follow_etcdctl() {
        assert_eq!(endpoint_url("10.0.0.1:2379", true), "https://10.0.0.1:2379");
        assert_eq!(endpoint_url("10.0.0.1:2379", false), "http://10.0.0.1:2379");
        assert_eq!(endpoint_url("http://a:1", true), "http://a:1");
    }
}
