//! A TCP proxy on loopback for tests that need a snapshot stream (or any connection) to stall:
//! it forwards both directions until `stall()` is called or the server-to-client byte budget
//! (`stall_after`) runs out; then it stops forwarding server bytes and holds the connections
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
    /// passed (None: only when [`Proxy::stall`] is called).
    pub fn start(target: SocketAddr, stall_after: Option<u64>) -> Proxy {
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
                let (st, fw, sp) = (st.clone(), fw.clone(), sp.clone());
                std::thread::spawn(move || {
                    pump(server, client, Some((st, stall_after)), Some(fw), sp)
                });
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

type StallCtl = (Arc<AtomicBool>, Option<u64>);

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
        if let Some((flag, _)) = &stall {
            if flag.load(Ordering::SeqCst) {
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
        if let (Some((flag, Some(limit))), Some(fw)) = (&stall, &forwarded) {
            let before = fw.load(Ordering::SeqCst);
            if before + n as u64 >= *limit {
                n_send = limit.saturating_sub(before) as usize;
                flag.store(true, Ordering::SeqCst);
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
