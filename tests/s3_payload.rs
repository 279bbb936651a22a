//! S3 uploads send unsigned payloads with a body checksum (issue 15): every PutObject and
//! UploadPart carries `x-amz-content-sha256: UNSIGNED-PAYLOAD` (no SHA-256 pass over the body
//! on either side) and still a checksum of the body the server checks (`Content-MD5` under
//! `checksum: when_required`, `x-amz-checksum-crc32c` under `when_supported`), and the stored
//! objects come back byte for byte. The requests are read on the wire by a recording TCP
//! proxy in front of moto (or the endpoint of `ETCD_LIFEBOAT_TEST_S3_*` when it is plain
//! http, see tests/common/s3.rs).

use crate::s3h;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use etcd_lifeboat::config::ChecksumMode;
use etcd_lifeboat::store::{ObjectKey, Store};
use tokio::io::AsyncReadExt;

/// A TCP proxy to `upstream` that keeps every byte the clients sent.
struct Recorder {
    port: u16,
    sent: Arc<Mutex<Vec<u8>>>,
}

impl Recorder {
    fn start(upstream: String) -> Recorder {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let rec = sent.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { return };
                let mut up = TcpStream::connect(&upstream).unwrap();
                let (mut c2, mut up2) = (c.try_clone().unwrap(), up.try_clone().unwrap());
                // Server to client, unrecorded.
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut up2, &mut c2);
                    let _ = c2.shutdown(Shutdown::Write);
                });
                let rec = rec.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        match c.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                rec.lock().unwrap().extend_from_slice(&buf[..n]);
                                if up.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = up.shutdown(Shutdown::Write);
                });
            }
        });
        Recorder { port, sent }
    }

    /// The heads (request line and headers, lowercased) of the PUT requests sent so far.
    fn put_heads(&self) -> Vec<String> {
        let sent = self.sent.lock().unwrap();
        let mut heads = Vec::new();
        let mut i = 0;
        while let Some(p) = find(&sent[i..], b"PUT /") {
            let start = i + p;
            let end = find(&sent[start..], b"\r\n\r\n").map_or(sent.len(), |e| start + e);
            heads.push(String::from_utf8_lossy(&sent[start..end]).to_lowercase());
            i = end;
        }
        heads
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

use crate::s3h::pseudo_random as data;

async fn round_trip(mode: ChecksumMode, checksum_header: &str) {
    let srv = tokio::task::spawn_blocking(s3h::S3Server::start)
        .await
        .unwrap();
    let Some(upstream) = srv.endpoint.strip_prefix("http://") else {
        eprintln!(
            "skipped: the test endpoint {} is not plain http",
            srv.endpoint
        );
        return;
    };
    let rec = Recorder::start(upstream.trim_end_matches('/').to_string());
    let mut cfg = srv.storage_config();
    cfg.s3.endpoint = Some(format!("http://127.0.0.1:{}", rec.port));
    cfg.s3.checksum = mode;
    let store = Store::from_config(&cfg).await.unwrap();
    let part = cfg.s3.part_size as usize;

    // A multipart upload of three parts and a bit, and one PutObject.
    let objects = [
        ("payload/multi.db.zst", data(3 * part + 4321, 1)),
        ("payload/small.json", data(1000, 2)),
    ];
    for (k, body) in &objects {
        let k = ObjectKey::new(*k).unwrap();
        store
            .put_bytes(&k, Bytes::from(body.clone()))
            .await
            .unwrap();
    }

    let heads = rec.put_heads();
    let parts = heads.iter().filter(|h| h.contains("partnumber=")).count();
    assert_eq!(parts, 4, "UploadPart requests seen: {heads:#?}");
    assert_eq!(heads.len(), 5, "4 UploadParts and 1 PutObject: {heads:#?}");
    for h in &heads {
        assert!(
            h.contains("\r\nx-amz-content-sha256: unsigned-payload\r\n"),
            "a PUT with a signed payload: {h}"
        );
        assert!(
            h.contains(&format!("\r\n{checksum_header}: ")),
            "a PUT without {checksum_header}: {h}"
        );
    }

    for (k, body) in &objects {
        let k = ObjectKey::new(*k).unwrap();
        let mut got = Vec::new();
        store
            .get_stream(&k)
            .await
            .unwrap()
            .read_to_end(&mut got)
            .await
            .unwrap();
        assert!(got == *body, "{k} came back different");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_unsigned_with_content_md5_when_required() {
    round_trip(ChecksumMode::WhenRequired, "content-md5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_unsigned_with_crc32c_when_supported() {
    round_trip(ChecksumMode::WhenSupported, "x-amz-checksum-crc32c").await;
}
