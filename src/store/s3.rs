//! The S3 store (`storage.backend: s3`): Amazon S3 or an S3-compatible service (MinIO, Ceph
//! RGW, Garage, moto).
//!
//! - Client: aws-sdk-s3 over an HTTPS client from `aws-smithy-http-client` with rustls and
//!   *ring* crypto; trusts the system roots plus `storage.s3.ca_file` when set. Plain `http://`
//!   endpoints work too (config validation requires `storage.s3.insecure: true` for them).
//! - Credentials and region: the standard AWS chain (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`,
//!   `AWS_PROFILE` and shared files, web identity / IRSA, ECS and EC2 metadata);
//!   `storage.s3.region` wins over the chain, `us-east-1` is the last fallback.
//! - Addressing: `storage.s3.endpoint` and `storage.s3.force_path_style`; an object `k` is the
//!   S3 key `<prefix>/k` (`k` when the prefix is empty).
//! - Checksums (`storage.s3.checksum`): `when_required` (default) sets
//!   `RequestChecksumCalculation`/`ResponseChecksumValidation::WhenRequired` and sends a
//!   `Content-MD5` with every PutObject and UploadPart (understood by every S3 implementation);
//!   `when_supported` lets the SDK send CRC checksums and declares CRC32C for multipart uploads.
//! - Uploads: below `storage.s3.part_size` one PutObject at `finish`; else a multipart upload
//!   whose parts are sent while the caller keeps writing (one part in flight, one being filled),
//!   completed at `finish`, aborted (AbortMultipartUpload) on `abort`, error, or drop.
//! - Timeouts: connect 10 s; per attempt max(5 min, part_size at 1 MiB/s); per operation
//!   (retries included) 3x that. Streaming bodies are covered by the SDK's stalled-stream
//!   protection.

use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
use aws_smithy_types::checksum_config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_smithy_types::timeout::TimeoutConfig;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use md5::Digest as _;
use tokio::task::JoinHandle;

use super::{ObjectKey, ObjectMeta, ObjectReader, StoreError};
use crate::config::{ChecksumMode, S3Config};

const BACKEND: &str = "s3";
/// S3 allows at most this many parts in one multipart upload.
const MAX_PARTS: i32 = 10_000;

/// An S3 bucket and key prefix. Cheap to clone.
#[derive(Clone, Debug)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    endpoint: String,
    part_size: usize,
    checksum: ChecksumMode,
}

/// A raw SDK error response type, as every S3 operation returns it.
type Raw = aws_sdk_s3::config::http::HttpResponse;

impl S3Store {
    /// Builds the client from `cfg` (see the module docs). Does not contact the service.
    ///
    /// Errors: [`StoreError::Io`] when `storage.s3.ca_file` cannot be read.
    pub async fn from_config(cfg: &S3Config) -> Result<S3Store, StoreError> {
        Self::from_config_with_credentials(cfg, None).await
    }

    /// Like [`S3Store::from_config`], with fixed credentials instead of the AWS chain when
    /// `credentials` is `Some` (tests, embedding).
    ///
    /// Errors: as [`S3Store::from_config`].
    pub async fn from_config_with_credentials(
        cfg: &S3Config,
        credentials: Option<aws_sdk_s3::config::Credentials>,
    ) -> Result<S3Store, StoreError> {
        let mut trust = TrustStore::default();
        if let Some(ca) = &cfg.ca_file {
            let pem = tokio::fs::read(ca).await.map_err(|e| StoreError::Io {
                path: ca.clone(),
                message: format!(
                    "cannot read storage.s3.ca_file {}; fix the path or its permissions",
                    ca.display()
                ),
                cause: e,
            })?;
            trust = trust.with_pem_certificate(pem);
        }
        let tls_ctx = TlsContext::builder()
            .with_trust_store(trust)
            .build()
            .map_err(|e| StoreError::Backend {
                backend: BACKEND,
                key: "storage.s3.ca_file".into(),
                message: format!("cannot build the TLS context: {e}"),
            })?;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .tls_context(tls_ctx)
            .build_https();

        let part_size = usize::try_from(cfg.part_size)
            .unwrap_or(usize::MAX)
            .max(5 << 20);
        let attempt = Duration::from_secs(300).max(Duration::from_secs((part_size >> 20) as u64));
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(10))
            .operation_attempt_timeout(attempt)
            .operation_timeout(attempt * 3)
            .build();
        let (req_ck, resp_ck) = match cfg.checksum {
            ChecksumMode::WhenRequired => (
                RequestChecksumCalculation::WhenRequired,
                ResponseChecksumValidation::WhenRequired,
            ),
            ChecksumMode::WhenSupported => (
                RequestChecksumCalculation::WhenSupported,
                ResponseChecksumValidation::WhenSupported,
            ),
        };
        // Without storage.s3.region the loader's default chain (which shares our HTTP client)
        // finds the region; us-east-1 is the fallback below.
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .timeout_config(timeouts)
            .request_checksum_calculation(req_ck)
            .response_checksum_validation(resp_ck);
        if let Some(r) = &cfg.region {
            loader = loader.region(Region::new(r.clone()));
        }
        if let Some(c) = credentials {
            loader = loader.credentials_provider(c);
        }
        if let Some(ep) = &cfg.endpoint {
            loader = loader.endpoint_url(ep.trim_end_matches('/'));
        }
        let sdk = loader.load().await;
        let region = sdk
            .region()
            .cloned()
            .unwrap_or_else(|| Region::new("us-east-1"));
        let region_name = region.to_string();
        let conf = aws_sdk_s3::config::Builder::from(&sdk)
            .region(region)
            .force_path_style(cfg.force_path_style)
            .build();
        Ok(S3Store {
            client: aws_sdk_s3::Client::from_conf(conf),
            bucket: cfg.bucket.clone(),
            prefix: cfg.prefix.trim_matches('/').to_string(),
            endpoint: match &cfg.endpoint {
                Some(ep) => ep.clone(),
                None => format!("AWS S3 region {region_name}"),
            },
            part_size,
            checksum: cfg.checksum,
        })
    }

    /// `"s3://bucket/prefix"` (`"s3://bucket"` without prefix).
    pub fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    /// The SDK client (for tests and diagnostics).
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The key prefix, without leading or trailing `/` (may be empty).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Multipart part size in bytes.
    pub fn part_size(&self) -> usize {
        self.part_size
    }

    /// The S3 key of an object: `<prefix>/<key>`.
    pub fn s3_key(&self, key: &ObjectKey) -> String {
        self.s3_prefix(key.as_str())
    }

    fn s3_prefix(&self, rel: &str) -> String {
        if self.prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.prefix)
        }
    }

    fn err(&self, key: &str, message: String) -> StoreError {
        StoreError::Backend {
            backend: BACKEND,
            key: key.to_string(),
            message,
        }
    }

    /// Maps an SDK error of operation `op` on `key` to a [`StoreError`] with a useful message.
    fn map_err<E>(&self, op: &str, key: &str, e: SdkError<E, Raw>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = e.raw_response().map(|r| r.status().as_u16());
        let code = e.code().unwrap_or("").to_string();
        let detail = DisplayErrorContext(&e).to_string();
        let (bucket, ep) = (&self.bucket, &self.endpoint);
        let msg = match (code.as_str(), status) {
            ("NoSuchBucket", _) => format!(
                "bucket {bucket} does not exist at endpoint {ep}; create it or fix storage.s3.bucket"
            ),
            ("InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken" | "InvalidToken"
            | "TokenRefreshRequired" | "InvalidClientTokenId", _) => format!(
                "{op}: endpoint {ep} rejected the credentials ({code}); check AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY (or AWS_PROFILE / the IRSA role)"
            ),
            ("PermanentRedirect" | "AuthorizationHeaderMalformed", _) | (_, Some(301)) => format!(
                "{op}: bucket {bucket} is in another region than the one used; set storage.s3.region \
                 to the bucket's region ({detail})"
            ),
            (_, Some(403)) | ("AccessDenied", _) => format!(
                "{op}: access denied by endpoint {ep} (HTTP 403{}); the credentials are invalid \
                 or lack permission on bucket {bucket}: check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY \
                 (or the profile / IRSA role) and the bucket policy",
                if code.is_empty() { String::new() } else { format!(" {code}") }
            ),
            _ => match &e {
                SdkError::TimeoutError(_) => format!(
                    "{op}: timed out talking to {ep}; check the network and storage.s3.endpoint"
                ),
                _ if detail.contains("credentials") => format!(
                    "{op}: no usable AWS credentials ({detail}); set AWS_ACCESS_KEY_ID and \
                     AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or a web identity (IRSA)"
                ),
                SdkError::DispatchFailure(_) => format!(
                    "{op}: cannot reach endpoint {ep} ({detail}); check storage.s3.endpoint, \
                     storage.s3.ca_file and the network"
                ),
                _ => format!("{op} failed at endpoint {ep}: {detail}"),
            },
        };
        self.err(key, msg)
    }

    /// Checks that the bucket exists and that a probe object can be written and deleted.
    ///
    /// Errors: [`StoreError::Backend`]: "bucket X does not exist at endpoint Y; create it or
    /// fix storage.s3.bucket", credentials rejected, access denied, endpoint unreachable.
    pub async fn check(&self) -> Result<(), StoreError> {
        if let Err(e) = self.client.head_bucket().bucket(&self.bucket).send().await {
            let status = e.raw_response().map(|r| r.status().as_u16());
            if status == Some(404) {
                return Err(self.err(
                    &self.bucket,
                    format!(
                        "bucket {} does not exist at endpoint {}; create it or fix storage.s3.bucket",
                        self.bucket, self.endpoint
                    ),
                ));
            }
            return Err(self.map_err("HeadBucket", &self.bucket, e));
        }
        let probe = self.s3_prefix(&format!(
            ".etcd-lifeboat-check-{}",
            hex::encode(rand::random::<[u8; 8]>())
        ));
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&probe)
            .content_md5(md5_b64(&[]))
            .body(ByteStream::from_static(b""))
            .send()
            .await
            .map_err(|e| self.map_err("PutObject (write probe)", &probe, e))?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&probe)
            .send()
            .await
            .map_err(|e| self.map_err("DeleteObject (write probe)", &probe, e))?;
        Ok(())
    }

    pub(crate) fn begin_upload(&self, key: &ObjectKey) -> S3Upload {
        S3Upload {
            store: self.clone(),
            s3_key: self.s3_key(key),
            buf: Vec::new(),
            upload_id: None,
            parts: Vec::new(),
            in_flight: None,
            next_part: 1,
            done: false,
        }
    }

    async fn put_object(&self, s3_key: &str, data: Bytes) -> Result<(), StoreError> {
        let mut req = self.client.put_object().bucket(&self.bucket).key(s3_key);
        req = match self.checksum {
            ChecksumMode::WhenRequired => req.content_md5(md5_b64(&data)),
            ChecksumMode::WhenSupported => req.checksum_algorithm(ChecksumAlgorithm::Crc32C),
        };
        req.body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| self.map_err("PutObject", s3_key, e))?;
        Ok(())
    }

    pub(crate) async fn put_bytes(&self, key: &ObjectKey, data: Bytes) -> Result<(), StoreError> {
        if data.len() < self.part_size {
            return self.put_object(&self.s3_key(key), data).await;
        }
        let mut u = self.begin_upload(key);
        if let Err(e) = u.write(&data).await {
            let _ = u.abort().await;
            return Err(e);
        }
        u.finish().await
    }

    pub(crate) async fn get_bytes(&self, key: &ObjectKey) -> Result<Bytes, StoreError> {
        let s3_key = self.s3_key(key);
        let resp = self.get_object(key, &s3_key).await?;
        let data = resp.body.collect().await.map_err(|e| {
            self.err(
                &s3_key,
                format!(
                    "GetObject: reading the body from {} failed: {e}",
                    self.endpoint
                ),
            )
        })?;
        Ok(data.into_bytes())
    }

    async fn get_object(
        &self,
        key: &ObjectKey,
        s3_key: &str,
    ) -> Result<aws_sdk_s3::operation::get_object::GetObjectOutput, StoreError> {
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(s3_key)
            .send()
            .await
        {
            Ok(r) => Ok(r),
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                let code = e.code().unwrap_or("");
                if code == "NoSuchKey" || (status == Some(404) && code != "NoSuchBucket") {
                    Err(StoreError::NotFound {
                        key: key.to_string(),
                    })
                } else {
                    Err(self.map_err("GetObject", s3_key, e))
                }
            }
        }
    }

    pub(crate) async fn get_stream(&self, key: &ObjectKey) -> Result<ObjectReader, StoreError> {
        let s3_key = self.s3_key(key);
        let resp = self.get_object(key, &s3_key).await?;
        Ok(Box::pin(resp.body.into_async_read()))
    }

    pub(crate) async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let full = self.s3_prefix(prefix);
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut req = self.client.list_objects_v2().bucket(&self.bucket);
            if !full.is_empty() {
                req = req.prefix(&full);
            }
            if let Some(t) = token.take() {
                req = req.continuation_token(t);
            }
            let page = req
                .send()
                .await
                .map_err(|e| self.map_err("ListObjectsV2", &full, e))?;
            for obj in page.contents() {
                let Some(k) = obj.key() else { continue };
                let Some(rel) = k.strip_prefix(&strip) else {
                    continue;
                };
                let Ok(key) = ObjectKey::new(rel) else {
                    continue;
                };
                let last_modified = obj
                    .last_modified()
                    .and_then(|t| DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos()))
                    .unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
                out.push(ObjectMeta {
                    key,
                    size: obj.size().unwrap_or(0).max(0) as u64,
                    last_modified,
                });
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    pub(crate) async fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        let s3_key = self.s3_key(key);
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(&s3_key)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("NoSuchKey") => Ok(()),
            Err(e) => Err(self.map_err("DeleteObject", &s3_key, e)),
        }
    }

    async fn abort_multipart(&self, s3_key: &str, upload_id: &str) -> Result<(), StoreError> {
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(s3_key)
            .upload_id(upload_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("NoSuchUpload") => Ok(()),
            Err(e) => Err(self.map_err(
                &format!("AbortMultipartUpload (upload id {upload_id} may be left; a bucket lifecycle rule for incomplete uploads removes it)"),
                s3_key,
                e,
            )),
        }
    }
}

fn md5_b64(data: &[u8]) -> String {
    aws_smithy_types::base64::encode(md5::Md5::digest(data))
}

/// Sends one part; returns what CompleteMultipartUpload needs.
async fn upload_part(
    store: S3Store,
    s3_key: String,
    upload_id: String,
    number: i32,
    data: Bytes,
) -> Result<CompletedPart, StoreError> {
    let mut req = store
        .client
        .upload_part()
        .bucket(&store.bucket)
        .key(&s3_key)
        .upload_id(upload_id)
        .part_number(number);
    req = match store.checksum {
        ChecksumMode::WhenRequired => req.content_md5(md5_b64(&data)),
        ChecksumMode::WhenSupported => req.checksum_algorithm(ChecksumAlgorithm::Crc32C),
    };
    let out = req
        .body(ByteStream::from(data))
        .send()
        .await
        .map_err(|e| store.map_err(&format!("UploadPart {number}"), &s3_key, e))?;
    let mut part = CompletedPart::builder().part_number(number);
    if let Some(etag) = out.e_tag() {
        part = part.e_tag(etag);
    }
    if let Some(c) = out.checksum_crc32_c() {
        part = part.checksum_crc32_c(c);
    }
    Ok(part.build())
}

/// An upload to S3; see [`super::Upload`] and the module docs.
#[derive(Debug)]
pub struct S3Upload {
    store: S3Store,
    s3_key: String,
    /// The part being filled (at most `part_size` bytes).
    buf: Vec<u8>,
    upload_id: Option<String>,
    parts: Vec<CompletedPart>,
    /// The part being sent.
    in_flight: Option<JoinHandle<Result<CompletedPart, StoreError>>>,
    next_part: i32,
    done: bool,
}

impl S3Upload {
    pub(crate) async fn write(&mut self, mut chunk: &[u8]) -> Result<(), StoreError> {
        let ps = self.store.part_size;
        while !chunk.is_empty() {
            if self.buf.capacity() == 0 {
                // One allocation per part; pages are only touched as they fill.
                self.buf.reserve_exact(ps);
            }
            let n = (ps - self.buf.len()).min(chunk.len());
            self.buf.extend_from_slice(&chunk[..n]);
            chunk = &chunk[n..];
            if self.buf.len() == ps {
                if let Err(e) = self.send_part().await {
                    // Do not leave a multipart upload behind, even if the caller forgets abort.
                    let _ = self.cleanup().await;
                    self.done = true;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    async fn wait_in_flight(&mut self) -> Result<(), StoreError> {
        if let Some(h) = self.in_flight.take() {
            let part = h.await.map_err(|e| {
                self.store
                    .err(&self.s3_key, format!("part upload task failed: {e}"))
            })??;
            self.parts.push(part);
        }
        Ok(())
    }

    /// Sends `buf` as the next part (after the previous one finished), starting the multipart
    /// upload first when needed.
    async fn send_part(&mut self) -> Result<(), StoreError> {
        if self.next_part > MAX_PARTS {
            return Err(self.store.err(
                &self.s3_key,
                format!(
                    "object is larger than {MAX_PARTS} parts of {} bytes; raise storage.s3.part_size",
                    self.store.part_size
                ),
            ));
        }
        let upload_id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                let mut req = self
                    .store
                    .client
                    .create_multipart_upload()
                    .bucket(&self.store.bucket)
                    .key(&self.s3_key);
                if self.store.checksum == ChecksumMode::WhenSupported {
                    req = req.checksum_algorithm(ChecksumAlgorithm::Crc32C);
                }
                let out = req
                    .send()
                    .await
                    .map_err(|e| self.store.map_err("CreateMultipartUpload", &self.s3_key, e))?;
                let id = out.upload_id().map(str::to_string).ok_or_else(|| {
                    self.store.err(
                        &self.s3_key,
                        "CreateMultipartUpload returned no upload id".into(),
                    )
                })?;
                self.upload_id = Some(id.clone());
                id
            }
        };
        self.wait_in_flight().await?;
        let data = Bytes::from(std::mem::take(&mut self.buf));
        let number = self.next_part;
        self.next_part += 1;
        self.in_flight = Some(tokio::spawn(upload_part(
            self.store.clone(),
            self.s3_key.clone(),
            upload_id,
            number,
            data,
        )));
        Ok(())
    }

    pub(crate) async fn finish(mut self) -> Result<(), StoreError> {
        let r = self.finish_inner().await;
        if r.is_err() {
            let _ = self.cleanup().await;
        }
        self.done = true;
        r
    }

    async fn finish_inner(&mut self) -> Result<(), StoreError> {
        if self.upload_id.is_none() {
            let data = Bytes::from(std::mem::take(&mut self.buf));
            return self.store.put_object(&self.s3_key, data).await;
        }
        if !self.buf.is_empty() {
            self.send_part().await?;
        }
        self.wait_in_flight().await?;
        let upload_id = self.upload_id.clone().expect("multipart upload started");
        let mut parts = std::mem::take(&mut self.parts);
        parts.sort_by_key(|p| p.part_number());
        self.store
            .client
            .complete_multipart_upload()
            .bucket(&self.store.bucket)
            .key(&self.s3_key)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| {
                self.store
                    .map_err("CompleteMultipartUpload", &self.s3_key, e)
            })?;
        self.upload_id = None;
        Ok(())
    }

    /// Stops the part in flight and aborts the multipart upload, if any.
    async fn cleanup(&mut self) -> Result<(), StoreError> {
        self.buf = Vec::new();
        if let Some(h) = self.in_flight.take() {
            h.abort();
            let _ = h.await;
        }
        match self.upload_id.take() {
            Some(id) => self.store.abort_multipart(&self.s3_key, &id).await,
            None => Ok(()),
        }
    }

    pub(crate) async fn abort(mut self) -> Result<(), StoreError> {
        self.done = true;
        self.cleanup().await
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Some(h) = self.in_flight.take() {
            h.abort();
        }
        if let Some(id) = self.upload_id.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let store = self.store.clone();
                let key = self.s3_key.clone();
                rt.spawn(async move {
                    if let Err(e) = store.abort_multipart(&key, &id).await {
                        tracing::warn!("dropped upload: {e}");
                    }
                });
            } else {
                tracing::warn!(
                    "dropped upload of s3://{}/{} outside a runtime: multipart upload {id} left behind",
                    self.store.bucket,
                    self.s3_key
                );
            }
        }
    }
}
