//! Loopback networking of the tests: free ports and the one HTTP client (`ureq`, plain HTTP,
//! no proxy from the environment). `common::net`, used by tests/common/s3.rs too: one port
//! allocator per binary.
//!
//! The deliberate fault servers (tests/common/http_fault.rs, tests/common/proxy.rs) stay raw
//! TCP: they break the protocol on purpose.
#![allow(dead_code)]

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static NEXT_PORT: AtomicU32 = AtomicU32::new(0);

/// The first port of the kernel's ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`,
/// 32768 by default): ports from there up are handed out as source ports of outgoing
/// connections, so a port found free there can be taken by any connect() before the server
/// that was meant to listen on it binds it.
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// A loopback TCP port that is free now (bound then released), below the ephemeral range so no
/// outgoing connection of this or another process takes it before the server binds it (a CI
/// run once failed on etcd's peer port taken that way). Ports come from a per-process counter
/// starting at a pid-derived offset, so parallel tests in one binary never get the same port
/// and consecutive test binaries start in different places.
pub fn free_port() -> u16 {
    const LOW: u32 = 10_000;
    let high = ephemeral_low().clamp(LOW + 1_000, 65_536);
    let span = high - LOW;
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let n = NEXT_PORT.fetch_add(1, Ordering::SeqCst);
        let p = (LOW + (start + n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    panic!("no free loopback port in {LOW}..{high}");
}

/// The tests' HTTP agent: statuses >= 400 are answers, not errors; 2 s to connect, 30 s per
/// request; `HTTP_PROXY` and friends ignored (every server is on loopback).
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_connect(Some(Duration::from_secs(2)))
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn answer(
    r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<(u16, String), ureq::Error> {
    let mut r = r?;
    let body = r.body_mut().read_to_string()?;
    Ok((r.status().as_u16(), body))
}

/// GET `url` (e.g. `http://127.0.0.1:9790/metrics`): the status and the body as text.
/// Errors: nothing answers, a timeout, a body that is not UTF-8 or over 10 MB.
pub fn get(url: &str) -> Result<(u16, String), ureq::Error> {
    answer(agent().get(url).call())
}

/// PUT with an empty body and the extra request `headers` to `url`: status and body.
pub fn put(url: &str, headers: &[(&str, &str)]) -> Result<(u16, String), ureq::Error> {
    let mut req = agent().put(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    answer(req.send_empty())
}

/// [`get`] on `http://{addr}{path}`; `None` when nothing answers.
pub fn get_at(addr: impl std::fmt::Display, path: &str) -> Option<(u16, String)> {
    get(&format!("http://{addr}{path}")).ok()
}

/// `s` percent-encoded for a URL query value (RFC 3986 unreserved characters kept).
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
