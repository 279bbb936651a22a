//! A TCP proxy on loopback for tests that need a snapshot stream (or any connection) to stall:
//! it forwards both directions until `stall()` is called or the server-to-client byte budget
//! (`stall_after`, shared by all connections or per connection) runs out; then it stops forwarding server bytes and holds the connections
//! open, so the client sees a stream that neither ends nor errors. Dropping the proxy closes
//! everything.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A running proxy; see the module docs.
pub struct Proxy {
    /// Where clients connect (`127.0.0.1:<port>`).
    pub addr: SocketAddr,
    stalled: Arc<AtomicBool>,
    /// Server-to-client bytes forwarded so far (all connections).
    pub forwarded: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Proxies to `target`; stalls by itself once `stall_after` server-to-client bytes have
    /// passed over all connections together (None: only when [`Proxy::stall`] is called).
    pub fn start(target: SocketAddr, stall_after: Option<u64>) -> Proxy {
        Self::spawn(target, stall_after, false)
    }

    /// Proxies to `target`; each connection stalls on its own once it has carried
    /// `stall_after` server-to-client bytes, so small connections (an election's lease
    /// keep-alives) keep working while a snapshot stream stalls. [`Proxy::is_stalled`] says
    /// whether any connection stalled; [`Proxy::stall`] does not apply.
    pub fn start_per_connection(target: SocketAddr, stall_after: u64) -> Proxy {
        Self::spawn(target, Some(stall_after), true)
    }

    fn spawn(target: SocketAddr, stall_after: Option<u64>, per_connection: bool) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stalled = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, fw, sp) = (stalled.clone(), forwarded.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let sp2 = sp.clone();
                std::thread::spawn(move || pump(c2, s2, None, None, sp2));
                // Per connection: its own flag and counter; the shared flag only reports.
                let (own, counter) = if per_connection {
                    (
                        Arc::new(AtomicBool::new(false)),
                        Arc::new(AtomicU64::new(0)),
                    )
                } else {
                    (st.clone(), fw.clone())
                };
                let ctl = StallCtl {
                    own,
                    report: st.clone(),
                    limit: stall_after,
                };
                let sp = sp.clone();
                std::thread::spawn(move || pump(server, client, Some(ctl), Some(counter), sp));
            }
        });
        Proxy {
            addr,
            stalled,
            forwarded,
            stop,
        }
    }

    /// `http://127.0.0.1:<port>`, for an etcd endpoint list.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops forwarding server-to-client bytes from now on.
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    /// True once the proxy stalled (by budget or by [`Proxy::stall`]).
    pub fn is_stalled(&self) -> bool {
        self.stalled.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
    }
}

/// When a pump stops forwarding: `own` stops it (set by the budget, or by [`Proxy::stall`] in
/// shared mode), `report` is set too when the budget runs out.
struct StallCtl {
    own: Arc<AtomicBool>,
    report: Arc<AtomicBool>,
    limit: Option<u64>,
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    stall: Option<StallCtl>,
    forwarded: Option<Arc<AtomicU64>>,
    stop: Arc<AtomicBool>,
) {
    use std::io::{Read, Write};
    let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if let Some(ctl) = &stall {
            if ctl.own.load(Ordering::SeqCst) {
                // Hold the connection open without forwarding.
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => break,
        };
        let mut n_send = n;
        if let (Some(ctl), Some(fw)) = (&stall, &forwarded) {
            if let Some(limit) = ctl.limit {
                let before = fw.load(Ordering::SeqCst);
                if before + n as u64 >= limit {
                    n_send = limit.saturating_sub(before) as usize;
                    ctl.own.store(true, Ordering::SeqCst);
                    ctl.report.store(true, Ordering::SeqCst);
                }
            }
        }
        if to.write_all(&buf[..n_send]).is_err() {
            break;
        }
        if let Some(fw) = &forwarded {
            fw.fetch_add(n_send as u64, Ordering::SeqCst);
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}
