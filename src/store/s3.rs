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
//!   CRC32C costs next to nothing; MD5 is a pass over every byte (about 15% of the CPU of a
//!   backup to S3, measured against Garage), so `when_supported` is the faster choice on
//!   stores that take CRC32C (AWS S3, MinIO, Garage).
//! - Unsigned payloads: PutObject and UploadPart are signed with
//!   `x-amz-content-sha256: UNSIGNED-PAYLOAD` (the SDK's `disable_payload_signing`), as the AWS
//!   CLI does over HTTPS. A signed payload costs a SHA-256 pass over every byte here and
//!   another in the server; the body is still checked by the server against the `Content-MD5`
//!   or CRC32C header (which is signed), by TLS on the way, and end to end by the manifest's
//!   SHA-256 (`verify`, `restore`).
//! - Uploads: below `storage.s3.part_size` one PutObject at `finish`; else a multipart upload
//!   whose parts are sent while the caller keeps writing ([`PARTS_IN_FLIGHT`] in flight, one being filled),
//!   completed at `finish`, aborted (AbortMultipartUpload) on `abort`, error, or drop.
//! - Downloads ([`S3Store::get_stream`]): objects larger than one range (`part_size`, at most
//!   [`MAX_RANGE`]) come as ranged GETs, [`RANGES_IN_FLIGHT`] in flight, handed over in order
//!   with bounded memory, each with `If-Match` on the object's ETag so a replaced object fails
//!   the read rather than mixing versions. The reader decompresses a range while the next
//!   ones download; each range is kept as the frames it arrived in (no copy; frames under
//!   4 KiB are coalesced, so a store trickling a body cannot blow up the frame list).
//! - Timeouts: connect 10 s; per attempt max(60 s, part_size at 256 KiB/s); per operation
//!   (retries included) 3x that. Streaming bodies are covered by the SDK's stalled-stream
//!   protection.
//! - Server-side encryption (`storage.s3.sse`, `sse_kms_key_id`) and Object Lock retention
//!   (`storage.s3.object_lock`: `x-amz-object-lock-mode` and
//!   `x-amz-object-lock-retain-until-date` = upload time + `retain_for`, rounded up to the
//!   second) are sent on every PutObject and CreateMultipartUpload. Object Lock buckets require
//!   Content-MD5 or an SDK checksum on PutObject/UploadPart: both checksum modes send one.
//! - After each upload, HeadObject checks the stored size (and a full-object SHA-256 when the
//!   store returns one); see [`super::Store::check_written`].
//! - Conditional create ([`super::Store::put_bytes_new`]): PutObject with `If-None-Match: *`;
//!   412 PreconditionFailed (or 409 ConditionalRequestConflict) means the key exists; 501
//!   NotImplemented (stores without conditional writes) falls back to HeadObject then PutObject.
//! - Deletes HeadObject first and leave objects under retention or legal hold alone
//!   ([`StoreError::Locked`]): in a versioned (Object Lock) bucket a plain DeleteObject would
//!   succeed by adding a delete marker that hides the backup while its data stays.
//! - Health ([`S3Store::check`]): HeadBucket and ListObjectsV2 (max-keys 1); no writes.
//! - Stale multipart uploads ([`S3Store::remove_stale_uploads`]): ListMultipartUploads under
//!   the prefix, AbortMultipartUpload of those initiated before the cutoff whose newest part
//!   is older than the cutoff too, so a running upload is never aborted once it has stored a
//!   part. (moto 5.2 reports a fixed `Initiated` date of 2010 and a ListParts body the SDK
//!   cannot decode, whose part dates are read directly: see `moto_list_parts_dates`.)

use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumType, CompletedMultipartUpload, CompletedPart,
    ObjectLockLegalHoldStatus, ObjectLockMode, ServerSideEncryption,
};
use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
use aws_smithy_http_client::Connector;
use aws_smithy_types::checksum_config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_smithy_types::timeout::TimeoutConfig;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use md5::Digest as _;
use std::collections::VecDeque;

use tokio::task::JoinHandle;

use super::manifest::{ObjectLockInfo, SseInfo};
use super::{ObjectHead, ObjectKey, ObjectMeta, ObjectReader, StoreError};
use crate::config::{ChecksumMode, ObjectLockConfig, S3Config, SseMode};

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
    sse: Option<SseMode>,
    sse_kms_key_id: Option<String>,
    object_lock: Option<ObjectLockConfig>,
    /// Set by [`super::Store::scoped_to_cluster`]: listings see only `<cluster_id>/` keys.
    pub(super) cluster_scope: Option<String>,
}

/// Converts an SDK timestamp to chrono (the epoch when out of range).
fn to_chrono(t: &aws_smithy_types::DateTime) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos()).unwrap_or(DateTime::UNIX_EPOCH)
}

/// A raw SDK error response type, as every S3 operation returns it.
type Raw = aws_sdk_s3::config::http::HttpResponse;

impl S3Store {
    /// Builds the client from `cfg` (see the module docs). Does not contact the service.
    /// Honours `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (and their lowercase
    /// forms) as curl does; loopback is proxied too unless `NO_PROXY` names it.
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
        // Proxies from HTTPS_PROXY / HTTP_PROXY / ALL_PROXY / NO_PROXY (or lowercase), read
        // once here, with curl's rules (hyper-util's matcher): https:// endpoints go through
        // HTTPS_PROXY (CONNECT tunnel), http:// ones through HTTP_PROXY; NO_PROXY hosts,
        // domains (`.example.com`) and CIDRs connect directly. No built-in bypass: loopback
        // goes through the proxy unless NO_PROXY lists it. The top-level Builder of
        // aws-smithy-http-client 1.5 has no proxy setting, so the connector is built here.
        let proxy = ProxyConfig::from_env();
        let http = aws_smithy_http_client::Builder::new().build_with_connector_fn(
            move |settings, components| {
                let mut b = Connector::builder().proxy_config(proxy.clone());
                b.set_connector_settings(settings.cloned());
                if let Some(c) = components {
                    b.set_sleep_impl(c.sleep_impl());
                }
                b.tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
                    .tls_context(tls_ctx.clone())
                    .build()
            },
        );

        let part_size = usize::try_from(cfg.part_size)
            .unwrap_or(usize::MAX)
            .max(5 << 20);
        // A silent store (accepts, never answers) fails an attempt after a minute, not five:
        // a part still gets its size at 256 KiB/s.
        let attempt = Duration::from_secs(60).max(Duration::from_secs((part_size >> 18) as u64));
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
            sse: cfg.sse,
            sse_kms_key_id: cfg.sse_kms_key_id.clone(),
            object_lock: cfg.object_lock.clone(),
            cluster_scope: None,
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
    /// The SDK's error and its causes are given by their messages, each once (the SDK's own
    /// `DisplayErrorContext` appends a Rust debug dump of the whole chain).
    fn map_err<E>(&self, op: &str, key: &str, e: SdkError<E, Raw>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = e.raw_response().map(|r| r.status().as_u16());
        let code = e.code().unwrap_or("").to_string();
        let detail = crate::error::report(&e);
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

    /// Checks, without writing, that the bucket exists (HeadBucket) and that the prefix can be
    /// listed (ListObjectsV2, max-keys 1), so write-once credentials and Object Lock buckets
    /// pass.
    ///
    /// Errors: [`StoreError::Backend`]: "bucket X does not exist at endpoint Y; create it or
    /// fix storage.s3.bucket", credentials rejected, access denied (naming the permission),
    /// endpoint unreachable.
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
        let prefix = self.list_prefix();
        let mut req = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .max_keys(1);
        if !prefix.is_empty() {
            req = req.prefix(&prefix);
        }
        req.send().await.map_err(|e| {
            self.map_err(
                "ListObjectsV2 (needs s3:ListBucket on the bucket)",
                &format!("s3://{}/{prefix}", self.bucket),
                e,
            )
        })?;
        Ok(())
    }

    /// The S3 prefix of everything in this store: `<prefix>/`, or `""`.
    fn list_prefix(&self) -> String {
        if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        }
    }

    /// The Object Lock retain-until date for an object uploaded at `now`: `now + retain_for`
    /// rounded up to the second.
    fn retain_until(&self, now: DateTime<Utc>) -> Option<(ObjectLockMode, DateTime<Utc>)> {
        let ol = self.object_lock.as_ref()?;
        let secs = now
            .timestamp()
            .saturating_add(i64::try_from(ol.retain_for.as_secs()).unwrap_or(i64::MAX / 2))
            .saturating_add(i64::from(
                now.timestamp_subsec_nanos() > 0 || ol.retain_for.subsec_nanos() > 0,
            ));
        let until = DateTime::<Utc>::from_timestamp(secs, 0).unwrap_or(DateTime::<Utc>::MAX_UTC);
        let mode = match ol.mode {
            crate::config::ObjectLockMode::Governance => ObjectLockMode::Governance,
            crate::config::ObjectLockMode::Compliance => ObjectLockMode::Compliance,
        };
        Some((mode, until))
    }

    /// [`super::Store::object_protection`].
    pub fn object_protection(
        &self,
        now: DateTime<Utc>,
    ) -> (Option<SseInfo>, Option<ObjectLockInfo>) {
        let sse = self.sse.map(|m| SseInfo {
            algorithm: match m {
                SseMode::Aes256 => "AES256".into(),
                SseMode::AwsKms => "aws:kms".into(),
            },
            kms_key_id: match m {
                SseMode::AwsKms => self.sse_kms_key_id.clone(),
                SseMode::Aes256 => None,
            },
        });
        let lock = self.retain_until(now).map(|(mode, until)| ObjectLockInfo {
            mode: mode.as_str().to_string(),
            retain_until: until,
        });
        (sse, lock)
    }

    /// The SSE algorithm to send, if any.
    fn sse_header(&self) -> Option<ServerSideEncryption> {
        self.sse.map(|m| match m {
            SseMode::Aes256 => ServerSideEncryption::Aes256,
            SseMode::AwsKms => ServerSideEncryption::AwsKms,
        })
    }

    /// The KMS key id to send (with `aws:kms` only).
    fn kms_key_header(&self) -> Option<String> {
        match self.sse {
            Some(SseMode::AwsKms) => self.sse_kms_key_id.clone(),
            _ => None,
        }
    }

    /// The Object Lock headers to send for an upload starting now.
    fn lock_headers(&self) -> (Option<ObjectLockMode>, Option<aws_smithy_types::DateTime>) {
        match self.retain_until(Utc::now()) {
            Some((mode, until)) => (
                Some(mode),
                Some(aws_smithy_types::DateTime::from_secs(until.timestamp())),
            ),
            None => (None, None),
        }
    }

    /// [`super::Store::head`]: HeadObject with `x-amz-checksum-mode: ENABLED`.
    pub(crate) async fn head(&self, key: &ObjectKey) -> Result<ObjectHead, StoreError> {
        let s3_key = self.s3_key(key);
        let out = match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&s3_key)
            .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
            .send()
            .await
        {
            Ok(o) => o,
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                if status == Some(404) {
                    return Err(StoreError::NotFound {
                        key: key.to_string(),
                    });
                }
                return Err(self.map_err("HeadObject", &s3_key, e));
            }
        };
        // A full-object SHA-256 only: composite (per-part) checksums end in "-<parts>".
        let checksum_sha256 = out
            .checksum_sha256()
            .filter(|c| !c.contains('-'))
            .filter(|_| !matches!(out.checksum_type(), Some(ChecksumType::Composite)))
            .and_then(|c| aws_smithy_types::base64::decode(c).ok())
            .filter(|d| d.len() == 32)
            .map(hex::encode);
        Ok(ObjectHead {
            key: key.clone(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
            last_modified: out
                .last_modified()
                .map(to_chrono)
                .unwrap_or(DateTime::UNIX_EPOCH),
            sse: out.server_side_encryption().map(|s| s.as_str().to_string()),
            sse_kms_key_id: out.ssekms_key_id().map(str::to_string),
            lock_mode: out.object_lock_mode().map(|m| m.as_str().to_string()),
            retain_until: out.object_lock_retain_until_date().map(to_chrono),
            legal_hold: matches!(
                out.object_lock_legal_hold_status(),
                Some(ObjectLockLegalHoldStatus::On)
            ),
            checksum_sha256,
        })
    }

    /// [`super::Store::remove_stale_uploads`] with the current time `now`.
    ///
    /// Errors: ListMultipartUploads failures; failed aborts are logged and skipped.
    pub async fn remove_stale_uploads(
        &self,
        older_than: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        let cutoff =
            now - chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX / 2);
        let prefix = self.list_prefix();
        let mut stale = Vec::new();
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let mut req = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take());
            if !prefix.is_empty() {
                req = req.prefix(&prefix);
            }
            let page = req.send().await.map_err(|e| {
                self.map_err(
                    "ListMultipartUploads (needs s3:ListBucketMultipartUploads)",
                    &format!("s3://{}/{prefix}", self.bucket),
                    e,
                )
            })?;
            for u in page.uploads() {
                let (Some(key), Some(id)) = (u.key(), u.upload_id()) else {
                    continue;
                };
                if u.initiated().map(to_chrono).is_some_and(|t| t > cutoff) {
                    continue;
                }
                stale.push((key.to_string(), id.to_string()));
            }
            match (page.is_truncated(), page.next_key_marker()) {
                (Some(true), Some(k)) => {
                    key_marker = Some(k.to_string());
                    id_marker = page.next_upload_id_marker().map(str::to_string);
                }
                _ => break,
            }
        }
        let mut removed = Vec::new();
        for (key, id) in stale {
            match self.newest_part(&key, &id).await {
                Ok(Some(t)) if t > cutoff => continue, // still being written
                Ok(_) => {}
                Err(e) if e.code() == Some("NoSuchUpload") => continue, // finished meanwhile
                Err(e) => {
                    tracing::warn!(
                        "{}",
                        self.map_err("ListParts (stale multipart upload)", &key, e)
                    );
                    continue;
                }
            }
            match self.abort_multipart(&key, &id).await {
                Ok(()) => removed.push(format!("s3://{}/{key} (upload {id})", self.bucket)),
                Err(e) => tracing::warn!("{e}"),
            }
        }
        Ok(removed)
    }

    /// The LastModified of the newest part of a multipart upload (`None` without parts).
    async fn newest_part(
        &self,
        key: &str,
        upload_id: &str,
    ) -> Result<
        Option<DateTime<Utc>>,
        SdkError<aws_sdk_s3::operation::list_parts::ListPartsError, Raw>,
    > {
        let mut newest = None;
        let mut marker = None::<String>;
        loop {
            let page = match self
                .client
                .list_parts()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .set_part_number_marker(marker.take())
                .send()
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    return match moto_list_parts_dates(&e) {
                        Some(dates) => Ok(newest.max(dates.into_iter().max())),
                        None => Err(e),
                    }
                }
            };
            for p in page.parts() {
                if let Some(t) = p.last_modified().map(to_chrono) {
                    newest = newest.max(Some(t));
                }
            }
            match (page.is_truncated(), page.next_part_number_marker()) {
                (Some(true), Some(m)) => marker = Some(m.to_string()),
                _ => break,
            }
        }
        Ok(newest)
    }

    pub(crate) fn begin_upload(&self, key: &ObjectKey) -> S3Upload {
        S3Upload {
            store: self.clone(),
            s3_key: self.s3_key(key),
            buf: Vec::new(),
            upload_id: None,
            parts: Vec::new(),
            in_flight: VecDeque::new(),
            next_part: 1,
            done: false,
        }
    }

    /// One PutObject with the checksum, SSE and Object Lock headers; with `if_none_match`,
    /// `If-None-Match: *`.
    async fn put_object_raw(
        &self,
        s3_key: &str,
        data: Bytes,
        if_none_match: bool,
    ) -> Result<(), SdkError<aws_sdk_s3::operation::put_object::PutObjectError, Raw>> {
        let (lock_mode, lock_until) = self.lock_headers();
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(s3_key)
            .set_server_side_encryption(self.sse_header())
            .set_ssekms_key_id(self.kms_key_header())
            .set_object_lock_mode(lock_mode)
            .set_object_lock_retain_until_date(lock_until);
        if if_none_match {
            req = req.if_none_match("*");
        }
        req = match self.checksum {
            ChecksumMode::WhenRequired => req.content_md5(md5_b64(&data)),
            ChecksumMode::WhenSupported => req.checksum_algorithm(ChecksumAlgorithm::Crc32C),
        };
        req.body(ByteStream::from(data))
            .customize()
            .disable_payload_signing()
            .send()
            .await?;
        Ok(())
    }

    async fn put_object(&self, s3_key: &str, data: Bytes) -> Result<(), StoreError> {
        self.put_object_raw(s3_key, data, false)
            .await
            .map_err(|e| self.map_err("PutObject", s3_key, e))
    }

    /// [`super::Store::put_bytes_new`] (without the post-upload check).
    pub(crate) async fn put_bytes_new(
        &self,
        key: &ObjectKey,
        data: Bytes,
    ) -> Result<(), StoreError> {
        let s3_key = self.s3_key(key);
        let exists = || StoreError::AlreadyExists {
            key: key.to_string(),
        };
        match self.put_object_raw(&s3_key, data.clone(), true).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                match (e.code(), status) {
                    (Some("PreconditionFailed" | "ConditionalRequestConflict"), _)
                    | (_, Some(412)) => Err(exists()),
                    (Some("NotImplemented"), _) | (_, Some(501)) => {
                        // No conditional writes here: check, then put (a race remains).
                        match self.head(key).await {
                            Ok(_) => Err(exists()),
                            Err(e) if e.is_not_found() => self.put_object(&s3_key, data).await,
                            Err(e) => Err(e),
                        }
                    }
                    _ => Err(self.map_err("PutObject (If-None-Match: *)", &s3_key, e)),
                }
            }
        }
    }

    /// [`super::Store::get_bytes_limited`]: `Content-Length` first, then a body read of at
    /// most `max + 1` bytes.
    pub(crate) async fn get_bytes_limited(
        &self,
        key: &ObjectKey,
        max: u64,
    ) -> Result<Bytes, StoreError> {
        let s3_key = self.s3_key(key);
        let too_large = |size| StoreError::TooLarge {
            key: key.to_string(),
            size,
            max,
        };
        let mut resp = self.get_object(key, &s3_key).await?;
        if let Some(len) = resp.content_length() {
            let len = len.max(0) as u64;
            if len > max {
                return Err(too_large(len));
            }
        }
        let mut buf = bytes::BytesMut::new();
        loop {
            match resp.body.try_next().await {
                Ok(Some(chunk)) => {
                    buf.extend_from_slice(&chunk);
                    if buf.len() as u64 > max {
                        return Err(too_large(buf.len() as u64));
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(self.err(
                        &s3_key,
                        format!(
                            "GetObject: reading the body from {} failed: {e}",
                            self.endpoint
                        ),
                    ))
                }
            }
        }
        Ok(buf.freeze())
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

    /// [`super::Store::get_stream`]: objects up to one range ([`S3Store::range_size`]) in one
    /// GetObject; larger ones as ranged GetObjects, [`RANGES_IN_FLIGHT`] in flight, each
    /// collected whole and handed to the reader in order, so memory stays at most
    /// `(RANGES_IN_FLIGHT + 1) * range_size` bytes whatever the object's size. Every range is
    /// sent with `If-Match: <ETag of the HeadObject>`: an object replaced during the download
    /// fails the read (412 PreconditionFailed) instead of mixing two versions. A range whose
    /// body breaks off is fetched again (up to [`RANGE_ATTEMPTS`] times).
    ///
    /// Errors: [`StoreError::NotFound`]; [`StoreError::Backend`] for HeadObject and the first
    /// request. Later failures (object changed, range of the wrong length, body cut) come out
    /// of the reader as [`std::io::Error`]s wrapping a [`StoreError::Backend`] that names the
    /// object.
    pub(crate) async fn get_stream(&self, key: &ObjectKey) -> Result<ObjectReader, StoreError> {
        let s3_key = self.s3_key(key);
        let range = self.range_size();
        let head = match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&s3_key)
            .send()
            .await
        {
            Ok(h) => h,
            Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(404) => {
                return Err(StoreError::NotFound {
                    key: key.to_string(),
                })
            }
            Err(e) => return Err(self.map_err("HeadObject", &s3_key, e)),
        };
        let size = u64::try_from(head.content_length().unwrap_or(0)).unwrap_or(0);
        let etag = head.e_tag().map(str::to_string);
        let Some(etag) = etag.filter(|_| size > range) else {
            // One request is one version of the object: no If-Match needed.
            let resp = self.get_object(key, &s3_key).await?;
            return Ok(Box::pin(resp.body.into_async_read()));
        };
        let store = self.clone();
        let ranges = (0..size.div_ceil(range)).map(move |i| {
            let start = i * range;
            let end = (start + range).min(size); // exclusive
            let (store, s3_key, etag) = (store.clone(), s3_key.clone(), etag.clone());
            // Spawned so that the range downloads while the reader works on earlier ones;
            // aborted when the reader is dropped.
            tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
                store.get_range(&s3_key, &etag, start, end).await
            }))
        });
        let chunks = futures::stream::iter(ranges)
            .buffered(RANGES_IN_FLIGHT)
            .flat_map(|joined| {
                // A range comes as the frames it was received in: no copy into one buffer.
                let items: Vec<std::io::Result<Bytes>> = match joined {
                    Ok(Ok(v)) => v.into_iter().map(Ok).collect(),
                    Ok(Err(e)) => vec![Err(std::io::Error::other(e))],
                    Err(e) => vec![Err(std::io::Error::other(format!(
                        "range download task failed: {e}"
                    )))],
                };
                futures::stream::iter(items)
            });
        Ok(Box::pin(tokio_util::io::StreamReader::new(chunks)))
    }

    /// Bytes per ranged GetObject in [`S3Store::get_stream`]: `storage.s3.part_size`, at most
    /// [`MAX_RANGE`].
    pub fn range_size(&self) -> u64 {
        (self.part_size as u64).min(MAX_RANGE)
    }

    /// Bytes `start..end` of `s3_key` if its ETag is still `etag`, collected whole as the
    /// frames the body arrived in (in order).
    async fn get_range(
        &self,
        s3_key: &str,
        etag: &str,
        start: u64,
        end: u64,
    ) -> Result<Vec<Bytes>, StoreError> {
        let want = end - start;
        let mut attempt = 1;
        loop {
            let resp = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(s3_key)
                .range(format!("bytes={start}-{}", end - 1))
                .if_match(etag)
                .send()
                .await;
            let resp = match resp {
                Ok(r) => r,
                Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(412) => {
                    return Err(self.err(
                        s3_key,
                        format!(
                            "the object changed while it was being downloaded (its ETag is no \
                             longer {etag} at byte {start}); a concurrent write replaced it, \
                             read it again"
                        ),
                    ))
                }
                Err(e) => {
                    return Err(self.map_err(
                        &format!("GetObject bytes {start}-{}", end - 1),
                        s3_key,
                        e,
                    ))
                }
            };
            // The frames as received (slices of the HTTP client's read buffers). Copying them
            // into one buffer per range cost a memcpy and left the allocator holding freed
            // range-sized blocks (glibc's adaptive mmap threshold): ~25 MiB more peak RSS.
            let mut body = resp.body;
            let mut frames = RangeFrames::default();
            let mut got = 0u64;
            let read = loop {
                match body.next().await {
                    None => break Ok(()),
                    Some(Ok(chunk)) if got + chunk.len() as u64 <= want => {
                        got += chunk.len() as u64;
                        frames.push(chunk);
                    }
                    Some(Ok(_)) => {
                        // Longer than asked for: reported below.
                        got = 0;
                        break Ok(());
                    }
                    Some(Err(e)) => break Err(e),
                }
            };
            match read {
                Ok(()) if got == want => return Ok(frames.finish()),
                Ok(()) => {
                    return Err(self.err(
                        s3_key,
                        format!(
                            "GetObject bytes {start}-{} did not return {want} bytes; the store \
                             at {} does not honour Range requests",
                            end - 1,
                            self.endpoint
                        ),
                    ))
                }
                Err(e) if attempt < RANGE_ATTEMPTS => {
                    tracing::debug!(
                        "GetObject bytes {start}-{} of {s3_key}: {e}; again",
                        end - 1
                    );
                    attempt += 1;
                }
                Err(e) => {
                    return Err(self.err(
                        s3_key,
                        format!(
                            "GetObject bytes {start}-{}: reading the body from {} failed \
                             {RANGE_ATTEMPTS} times: {e}",
                            end - 1,
                            self.endpoint
                        ),
                    ))
                }
            }
        }
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

    /// [`super::Store::delete`]: HeadObject, then DeleteObject unless the object is under
    /// retention or legal hold.
    pub(crate) async fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        let s3_key = self.s3_key(key);
        match self.head(key).await {
            Ok(h) if h.is_locked_at(Utc::now()) => {
                return Err(StoreError::Locked {
                    key: key.to_string(),
                    retain_until: h.retain_until,
                })
            }
            Ok(_) => {}
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        }
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

/// moto (5.2) answers ListParts with a `<ListPartsResponse>` root that the SDK refuses; the
/// part dates are read from that body directly. `None` for any other error.
fn moto_list_parts_dates<E>(e: &SdkError<E, Raw>) -> Option<Vec<DateTime<Utc>>> {
    let raw = e.raw_response()?;
    if raw.status().as_u16() != 200 {
        return None;
    }
    let body = std::str::from_utf8(raw.body().bytes()?).ok()?;
    if !body.contains("<ListPartsResponse") {
        return None;
    }
    let dates = body
        .split("<LastModified>")
        .skip(1)
        .filter_map(|s| s.split("</LastModified>").next())
        .filter_map(|s| DateTime::parse_from_rfc3339(s.trim()).ok())
        .map(|t| t.with_timezone(&Utc))
        .collect();
    Some(dates)
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
        .customize()
        .disable_payload_signing()
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

/// The frames of one range, in order. Frames of at least [`SMALL_FRAME`] bytes are kept as
/// they are; smaller ones are copied together into blocks of up to [`SMALL_BLOCK`] bytes, so
/// that a store sending a range in tiny pieces cannot make the list (32 bytes per entry)
/// outgrow the data: at most about `2 * range / SMALL_FRAME + 1` entries.
#[derive(Default)]
struct RangeFrames {
    frames: Vec<Bytes>,
    small: bytes::BytesMut,
}

/// Frames shorter than this (bytes) are coalesced by [`RangeFrames`].
const SMALL_FRAME: usize = 4 << 10;
/// Size of the blocks [`RangeFrames`] coalesces small frames into (bytes).
const SMALL_BLOCK: usize = 64 << 10;

impl RangeFrames {
    fn push(&mut self, frame: Bytes) {
        if frame.len() >= SMALL_FRAME {
            self.flush();
            self.frames.push(frame);
            return;
        }
        if self.small.len() + frame.len() > SMALL_BLOCK {
            self.flush();
        }
        if self.small.capacity() == 0 {
            self.small.reserve(SMALL_BLOCK);
        }
        self.small.extend_from_slice(&frame);
    }

    fn flush(&mut self) {
        if !self.small.is_empty() {
            self.frames.push(std::mem::take(&mut self.small).freeze());
        }
    }

    fn finish(mut self) -> Vec<Bytes> {
        self.flush();
        self.frames
    }
}

/// Ranged GetObjects in flight in [`S3Store::get_stream`] (besides the range being read).
pub const RANGES_IN_FLIGHT: usize = 4;
/// Upper bound of [`S3Store::range_size`] in bytes, which bounds the download's memory.
pub const MAX_RANGE: u64 = 8 << 20;
/// Tries per range when its body breaks off.
const RANGE_ATTEMPTS: u32 = 3;

/// Parts uploaded concurrently. Several S3 servers (and moto) serve one request per
/// connection slowly; four in flight kept a loopback upload at the stream's pace. Memory: up
/// to this many parts plus the one being filled.
pub const PARTS_IN_FLIGHT: usize = 4;

/// An upload to S3; see [`super::Upload`] and the module docs.
#[derive(Debug)]
pub struct S3Upload {
    store: S3Store,
    s3_key: String,
    /// The part being filled (at most `part_size` bytes).
    buf: Vec<u8>,
    upload_id: Option<String>,
    parts: Vec<CompletedPart>,
    /// Parts being sent, oldest first (at most [`PARTS_IN_FLIGHT`]).
    in_flight: VecDeque<JoinHandle<Result<CompletedPart, StoreError>>>,
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

    /// Waits for the oldest parts until at most `max` are in flight.
    async fn wait_in_flight(&mut self, max: usize) -> Result<(), StoreError> {
        while self.in_flight.len() > max {
            let h = self.in_flight.pop_front().expect("non-empty");
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
                let (lock_mode, lock_until) = self.store.lock_headers();
                let mut req = self
                    .store
                    .client
                    .create_multipart_upload()
                    .bucket(&self.store.bucket)
                    .key(&self.s3_key)
                    .set_server_side_encryption(self.store.sse_header())
                    .set_ssekms_key_id(self.store.kms_key_header())
                    .set_object_lock_mode(lock_mode)
                    .set_object_lock_retain_until_date(lock_until);
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
        self.wait_in_flight(PARTS_IN_FLIGHT - 1).await?;
        let data = Bytes::from(std::mem::take(&mut self.buf));
        let number = self.next_part;
        self.next_part += 1;
        self.in_flight.push_back(tokio::spawn(upload_part(
            self.store.clone(),
            self.s3_key.clone(),
            upload_id,
            number,
            data,
        )));
        if number == 1 {
            // Once the first part is stored, the upload has a part date that
            // `remove_stale_uploads` trusts (moto's Initiated date is a constant); this costs
            // one part's round trip per upload.
            self.wait_in_flight(0).await?;
        }
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
        self.wait_in_flight(0).await?;
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
        for h in self.in_flight.drain(..) {
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
        for h in self.in_flight.drain(..) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ObjectLockMode as Mode;

    #[test]
    fn range_frames_keep_order_and_coalesce_small_frames() {
        let mut f = RangeFrames::default();
        let mut want = Vec::new();
        let mut n = 0u8;
        let mut frame = |len: usize| {
            let b: Vec<u8> = (0..len)
                .map(|_| {
                    n = n.wrapping_add(1);
                    n
                })
                .collect();
            Bytes::from(b)
        };
        // A mixed range, then 100 000 one-byte frames (a store trickling the body).
        for len in [
            5,
            40 << 10,
            7,
            9,
            SMALL_FRAME,
            SMALL_FRAME - 1,
            100 << 10,
            3,
        ] {
            let b = frame(len);
            want.extend_from_slice(&b);
            f.push(b);
        }
        for _ in 0..100_000 {
            let b = frame(1);
            want.extend_from_slice(&b);
            f.push(b);
        }
        let frames = f.finish();
        assert_eq!(frames.concat(), want);
        // 40 KiB, SMALL_FRAME and 100 KiB kept, the small ones between them coalesced, then
        // the trailing 3 bytes and the 100 000 one-byte frames in blocks of SMALL_BLOCK.
        let lens: Vec<usize> = frames.iter().map(Bytes::len).collect();
        let tail = 3 + 100_000;
        let mut expect = vec![5, 40 << 10, 16, SMALL_FRAME, SMALL_FRAME - 1, 100 << 10];
        expect.extend(std::iter::repeat_n(SMALL_BLOCK, tail / SMALL_BLOCK));
        expect.push(tail % SMALL_BLOCK);
        assert_eq!(lens, expect);
    }

    #[tokio::test]
    async fn object_protection_follows_the_config() {
        let mut cfg = S3Config {
            bucket: "b".into(),
            region: Some("us-east-1".into()),
            ..S3Config::default()
        };
        let s = S3Store::from_config(&cfg).await.unwrap();
        let now = DateTime::parse_from_rfc3339("2026-11-29T10:00:00.250Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(s.object_protection(now), (None, None));

        cfg.sse = Some(SseMode::AwsKms);
        cfg.sse_kms_key_id = Some("alias/k".into());
        cfg.object_lock = Some(ObjectLockConfig {
            mode: Mode::Compliance,
            retain_for: Duration::from_secs(30 * 86400),
        });
        let s = S3Store::from_config(&cfg).await.unwrap();
        let (sse, lock) = s.object_protection(now);
        assert_eq!(
            sse,
            Some(SseInfo {
                algorithm: "aws:kms".into(),
                kms_key_id: Some("alias/k".into()),
            })
        );
        // Rounded up to the next whole second.
        assert_eq!(
            lock,
            Some(ObjectLockInfo {
                mode: "COMPLIANCE".into(),
                retain_until: DateTime::parse_from_rfc3339("2026-12-29T10:00:01Z")
                    .unwrap()
                    .with_timezone(&Utc),
            })
        );

        cfg.sse = Some(SseMode::Aes256);
        let s = S3Store::from_config(&cfg).await.unwrap();
        let (sse, _) = s.object_protection(now);
        assert_eq!(sse.unwrap().kms_key_id, None);
    }
}
