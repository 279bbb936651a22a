//! An HTTP/1.1 proxy in front of an S3 server on loopback that injects faults: for each request
//! a rule decides to forward it, answer it with an error without forwarding, or forward it and
//! then answer with an error (the store did the work; the response was lost). One upstream
//! connection per request (`Connection: close` upstream). Requests with `Content-Length`
//! bodies only (what the S3 client sends with checksums `when_required`).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// What to do with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward and relay the response.
    Forward,
    /// Answer with this status without forwarding.
    Refuse(u16),
    /// Forward (the server applies the request), then answer with this status instead of the
    /// server's response.
    LoseResponse(u16),
}

/// A running proxy: its URL and how many requests got a fault.
pub struct FaultProxy {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// Requests answered by a fault (not relayed).
    pub faults: Arc<AtomicUsize>,
}

/// Starts a proxy to `upstream` (`http://host:port`); `rule(method, path)` picks the fault.
pub fn start(
    upstream: &str,
    rule: impl Fn(&str, &str) -> Fault + Send + Sync + 'static,
) -> FaultProxy {
    let up = upstream.trim_start_matches("http://").to_string();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let faults = Arc::new(AtomicUsize::new(0));
    let (count, rule) = (faults.clone(), Arc::new(rule));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut client) = conn else { return };
            let (up, count, rule) = (up.clone(), count.clone(), rule.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(client.try_clone().unwrap());
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut head = request_line.clone().into_bytes();
                    let mut len = 0usize;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if !lower.starts_with("connection:") {
                            head.extend_from_slice(line.as_bytes());
                        }
                    }
                    let mut body = vec![0u8; len];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let mut parts = request_line.split_whitespace();
                    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                    let fault = rule(method, path);
                    let relayed = if matches!(fault, Fault::Refuse(_)) {
                        None
                    } else {
                        let mut server = std::net::TcpStream::connect(&up).unwrap();
                        server.write_all(&head).unwrap();
                        server.write_all(b"Connection: close\r\n\r\n").unwrap();
                        server.write_all(&body).unwrap();
                        let mut resp = Vec::new();
                        server.read_to_end(&mut resp).unwrap();
                        Some(resp)
                    };
                    let out = match (fault, relayed) {
                        (Fault::Forward, Some(resp)) => resp,
                        (Fault::Refuse(code) | Fault::LoseResponse(code), _) => {
                            count.fetch_add(1, Ordering::SeqCst);
                            let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InternalError</Code><Message>injected by the test proxy</Message></Error>";
                            format!(
                                "HTTP/1.1 {code} Injected\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{xml}",
                                xml.len()
                            )
                            .into_bytes()
                        }
                        (Fault::Forward, None) => unreachable!(),
                    };
                    if client.write_all(&out).is_err() {
                        return;
                    }
                }
            });
        }
    });
    FaultProxy { url, faults }
}
