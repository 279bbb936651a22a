//! Loopback networking of the tests: free ports and the one HTTP client (`ureq`, plain HTTP,
//! no proxy from the environment). Loaded by tests/common/mod.rs and tests/common/s3.rs
//! (`#[path = "net.rs"] mod net;`), since some test binaries load s3.rs alone.
//!
//! The deliberate fault servers (tests/common/http_fault.rs, tests/common/proxy.rs) stay raw
//! TCP: they break the protocol on purpose.
#![allow(dead_code)]

use std::net::TcpListener;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// A loopback TCP port that is free now (bound then released). Two calls in a row never
/// return the same port, so parallel tests in one binary do not race for one port.
pub fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        drop(l);
        let prev = NEXT_PORT.swap(p, Ordering::SeqCst);
        if prev != p {
            return p;
        }
    }
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
