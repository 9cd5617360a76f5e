//! S3 store (aws-sdk-s3): `s3://bucket/prefix`, optional endpoint, region and path-style
//! addressing; credentials come from the standard AWS chain (env `AWS_ACCESS_KEY_ID` /
//! `AWS_SECRET_ACCESS_KEY`, profile files, instance metadata). The SDK's own retries are turned
//! off: [`crate::store::RetryStore`] retries transient errors (5xx, SlowDown/throttling,
//! dispatch failures such as connection resets, timeouts, truncated bodies) with jittered
//! backoff, and [`crate::store::LimitStore`] bounds concurrency, so behaviour is the same for
//! every store. Objects above `multipart_threshold` are uploaded in parts (aborted on failure).
//! No credential is ever stored in this type, printed, or put in an error.

use std::fmt;
use std::time::SystemTime;

use async_trait::async_trait;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};

use crate::error::{Error, Result};
use crate::objectlock::{ObjectLockPolicy, Retention};
use crate::store::{check_key, ObjectInfo, Request, RequestCounters, RequestCounts, Store};

/// Where and how to reach the bucket.
#[derive(Debug, Clone)]
pub struct S3Options {
    pub bucket: String,
    /// Key prefix inside the bucket, without leading/trailing `/` (may be empty).
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: bool,
    /// Objects larger than this go up as multipart uploads.
    pub multipart_threshold: usize,
    /// Part size of multipart uploads (≥ 5 MiB, S3's minimum).
    pub part_size: usize,
    /// Sign upload bodies (SigV4 SHA-256 of every byte). Off by default: uploads are sent with
    /// `UNSIGNED-PAYLOAD` (headers still signed) and the SDK's CRC32 checksum, which the server
    /// checks; chunk content is verified against its id (and its AEAD tag) on every read anyway.
    /// Hashing every uploaded byte with SHA-256 on both ends cost ~6% of a full backup's CPU.
    /// Turn on for servers that reject unsigned payloads.
    pub sign_payload: bool,
}

impl S3Options {
    /// Parses `s3://bucket[/prefix]`.
    pub fn from_url(url: &str) -> Result<S3Options> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| Error::Invalid(format!("`{url}` is not an s3:// URL")))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::Invalid(format!("`{url}` has no bucket name")));
        }
        Ok(S3Options {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint: None,
            region: None,
            path_style: false,
            multipart_threshold: 64 * 1024 * 1024,
            part_size: 16 * 1024 * 1024,
            sign_payload: false,
        })
    }
}

mod lock;

/// An S3 bucket prefix as a [`Store`].
pub struct S3Store {
    client: aws_sdk_s3::Client,
    opts: S3Options,
    counters: RequestCounters,
    /// The repository's Object Lock policy, once it is open ([`Store::set_object_lock`]).
    lock: std::sync::RwLock<Option<ObjectLockPolicy>>,
    /// The server's clock, from its responses (retention dates use it).
    clock: std::sync::Arc<lock::ServerClock>,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("location", &self.location())
            .field("endpoint", &self.opts.endpoint)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// Builds a client from the AWS config chain and `opts`.
    pub async fn connect(opts: S3Options) -> Result<S3Store> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(r) = &opts.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        let sdk = loader.load().await;
        let mut b = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(opts.path_style)
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
            // Downloads are not asked for the server's stored checksum: every chunk is checked
            // against its content id (and AEAD tag) anyway, and the server would otherwise
            // recompute or stream the checksum on every GET.
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            );
        if sdk.region().is_none() {
            b = b.region(aws_config::Region::new("us-east-1"));
        }
        if let Some(ep) = &opts.endpoint {
            b = b.endpoint_url(ep.clone());
        }
        let clock = std::sync::Arc::new(lock::ServerClock::default());
        b = b.interceptor(lock::ClockInterceptor(clock.clone()));
        Ok(S3Store {
            client: aws_sdk_s3::Client::from_conf(b.build()),
            opts,
            counters: RequestCounters::default(),
            lock: std::sync::RwLock::new(None),
            clock,
        })
    }

    fn full_key(&self, key: &str) -> Result<String> {
        check_key(key)?;
        Ok(if self.opts.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.opts.prefix)
        })
    }

    fn map_err<E>(
        &self,
        op: &'static str,
        key: &str,
        e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let (status, code) = match &e {
            SdkError::ServiceError(se) => (
                Some(se.raw().status().as_u16()),
                se.err().code().map(str::to_string),
            ),
            SdkError::ResponseError(re) => (Some(re.raw().status().as_u16()), None),
            _ => (None, None),
        };
        if status == Some(404) || matches!(code.as_deref(), Some("NoSuchKey" | "NotFound")) {
            return Error::NotFound {
                store: self.location(),
                key: key.to_string(),
            };
        }
        let transient = match &e {
            SdkError::DispatchFailure(_)
            | SdkError::TimeoutError(_)
            | SdkError::ResponseError(_) => true,
            SdkError::ServiceError(_) => {
                status.is_some_and(|s| s >= 500 || s == 429 || s == 408)
                    || matches!(
                        code.as_deref(),
                        Some(
                            "SlowDown"
                                | "Throttling"
                                | "ThrottlingException"
                                | "RequestTimeout"
                                | "InternalError"
                        )
                    )
            }
            _ => false,
        };
        let mut message = match &e {
            // The server's own words, without the SDK's debug dump.
            SdkError::ServiceError(se) => format!(
                "{}: {}",
                code.as_deref().unwrap_or("error"),
                se.err().message().unwrap_or("(no message)")
            ),
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
                let mut cause: &dyn std::error::Error = &e;
                while let Some(next) = cause.source() {
                    cause = next;
                }
                format!(
                    "cannot reach {}: {cause} (check --s3-endpoint / VIRTGUARD_S3_ENDPOINT and that the server is up)",
                    self.opts
                        .endpoint
                        .as_deref()
                        .unwrap_or("the AWS S3 endpoint")
                )
            }
            _ => DisplayErrorContext(&e).to_string(),
        };
        if let Some(s) = status {
            message = format!("HTTP {s}: {message}");
        }
        if status == Some(403) {
            message.push_str(" (check the AWS credentials and the bucket policy)");
        }
        Error::Store {
            store: self.location(),
            op,
            key: key.to_string(),
            message,
            transient,
        }
    }

    fn body_err(&self, key: &str, e: impl fmt::Display) -> Error {
        Error::Store {
            store: self.location(),
            op: "read",
            key: key.to_string(),
            message: format!("reading the response body failed: {e}"),
            transient: true,
        }
    }

    async fn put_multipart(&self, key: &str, full: &str, data: Bytes) -> Result<()> {
        self.counters.count(Request::Put, key);
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.opts.bucket)
            .key(full)
            .set_object_lock_mode(self.write_retention(key).map(|r| lock::s3_mode(r.mode)))
            .set_object_lock_retain_until_date(
                self.write_retention(key).map(|r| lock::s3_time(r.until)),
            )
            .send()
            .await
            .map_err(|e| self.map_err("multipart create", key, e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_string();
        let part_size = self.opts.part_size.max(5 * 1024 * 1024);
        let parts: Vec<(i32, Bytes)> = (0..data.len())
            .step_by(part_size)
            .enumerate()
            .map(|(i, start)| {
                (
                    i as i32 + 1,
                    data.slice(start..(start + part_size).min(data.len())),
                )
            })
            .collect();
        let result: Result<Vec<CompletedPart>> = stream::iter(parts)
            .map(|(n, body)| {
                let upload_id = upload_id.clone();
                async move {
                    self.counters.count(Request::Put, key);
                    let req = self
                        .client
                        .upload_part()
                        .bucket(&self.opts.bucket)
                        .key(full)
                        .upload_id(upload_id)
                        .part_number(n)
                        .body(ByteStream::from(body))
                        .customize();
                    let req = if self.opts.sign_payload {
                        req
                    } else {
                        req.disable_payload_signing()
                    };
                    let out = req
                        .send()
                        .await
                        .map_err(|e| self.map_err("multipart upload part", key, e))?;
                    Ok(CompletedPart::builder()
                        .part_number(n)
                        .set_e_tag(out.e_tag().map(str::to_string))
                        .build())
                }
            })
            .buffered(4)
            .try_collect()
            .await;
        if result.is_ok() {
            self.counters.count(Request::Put, key); // the complete call
        }
        let result = match result {
            Ok(parts) => self
                .client
                .complete_multipart_upload()
                .bucket(&self.opts.bucket)
                .key(full)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map(|_| ())
                .map_err(|e| self.map_err("multipart complete", key, e)),
            Err(e) => Err(e),
        };
        if result.is_err() {
            self.counters.count(Request::Delete, key);
            if let Err(e) = self
                .client
                .abort_multipart_upload()
                .bucket(&self.opts.bucket)
                .key(full)
                .upload_id(&upload_id)
                .send()
                .await
            {
                tracing::warn!(key, error = %DisplayErrorContext(&e), "could not abort multipart upload");
            }
        }
        result
    }
}

#[async_trait]
impl Store for S3Store {
    fn location(&self) -> String {
        if self.opts.prefix.is_empty() {
            format!("s3://{}", self.opts.bucket)
        } else {
            format!("s3://{}/{}", self.opts.bucket, self.opts.prefix)
        }
    }

    fn requests(&self) -> Option<RequestCounts> {
        Some(self.counters.snapshot())
    }

    fn set_object_lock(&self, policy: Option<ObjectLockPolicy>) {
        if let Ok(mut p) = self.lock.write() {
            *p = policy;
        }
    }

    async fn check_object_lock(&self) -> Result<()> {
        self.check_bucket_lock().await
    }

    async fn retention(&self, key: &str) -> Result<Option<Retention>> {
        Ok(self.head_retention(key).await?.and_then(|(r, _)| r))
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        self.counters.count(Request::Get, key);
        let full = self.full_key(key)?;
        let out = self
            .client
            .get_object()
            .bucket(&self.opts.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| self.map_err("read", key, e))?;
        let expected = out.content_length();
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| self.body_err(key, e))?
            .into_bytes();
        if let Some(n) = expected {
            if n >= 0 && body.len() as u64 != n as u64 {
                return Err(self.body_err(key, format!("got {} of {n} bytes", body.len())));
            }
        }
        Ok(body)
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes> {
        self.counters.count(Request::Get, key);
        let full = self.full_key(key)?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        let res = self
            .client
            .get_object()
            .bucket(&self.opts.bucket)
            .key(&full)
            .range(format!("bytes={offset}-{}", offset + len - 1))
            .send()
            .await;
        let out = match res {
            Ok(o) => o,
            Err(SdkError::ServiceError(se)) if se.raw().status().as_u16() == 416 => {
                return Ok(Bytes::new())
            }
            Err(e) => return Err(self.map_err("read", key, e)),
        };
        let expected = out.content_length();
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| self.body_err(key, e))?
            .into_bytes();
        if let Some(n) = expected {
            if n >= 0 && body.len() as u64 != n as u64 {
                return Err(self.body_err(key, format!("got {} of {n} bytes", body.len())));
            }
        }
        Ok(body)
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let full = self.full_key(key)?;
        if data.len() > self.opts.multipart_threshold {
            return self.put_multipart(key, &full, data).await;
        }
        self.counters.count(Request::Put, key);
        let retention = self.write_retention(key);
        let req = self
            .client
            .put_object()
            .bucket(&self.opts.bucket)
            .key(&full)
            .body(ByteStream::from(data))
            .set_object_lock_mode(retention.map(|r| lock::s3_mode(r.mode)))
            .set_object_lock_retain_until_date(retention.map(|r| lock::s3_time(r.until)))
            .customize();
        let req = if self.opts.sign_payload {
            req
        } else {
            req.disable_payload_signing()
        };
        req.send()
            .await
            .map_err(|e| self.map_err("write", key, e))?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        if self.lock_policy().is_some() {
            return self.delete_versions(key).await;
        }
        self.counters.count(Request::Delete, key);
        let full = self.full_key(key)?;
        match self
            .client
            .delete_object()
            .bucket(&self.opts.bucket)
            .key(&full)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match self.map_err("delete", key, e) {
                Error::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        if self.lock_policy().is_some() {
            return match self.head_retention(key).await? {
                Some((current, version)) => {
                    self.extend_if_due(key, current, version).await?;
                    Ok(true)
                }
                None => Ok(false),
            };
        }
        self.counters.count(Request::Head, key);
        let full = self.full_key(key)?;
        match self
            .client
            .head_object()
            .bucket(&self.opts.bucket)
            .key(&full)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) => match self.map_err("stat", key, e) {
                Error::NotFound { .. } => Ok(false),
                other => Err(other),
            },
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let base = if self.opts.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.opts.prefix)
        };
        let full_prefix = format!("{base}{prefix}");
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            self.counters.count(Request::List, prefix);
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.opts.bucket)
                .prefix(&full_prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| self.map_err("list", prefix, e))?;
            for o in page.contents() {
                let Some(k) = o.key() else { continue };
                let Some(rel) = k.strip_prefix(&base) else {
                    continue;
                };
                let modified = o
                    .last_modified()
                    .and_then(|t| SystemTime::try_from(*t).ok())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                out.push(ObjectInfo {
                    key: rel.to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    modified,
                });
            }
            match (page.is_truncated(), page.next_continuation_token()) {
                (Some(true), Some(t)) => token = Some(t.to_string()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let o = S3Options::from_url("s3://bucket/some/prefix/").unwrap();
        assert_eq!(
            (o.bucket.as_str(), o.prefix.as_str()),
            ("bucket", "some/prefix")
        );
        let o = S3Options::from_url("s3://bucket").unwrap();
        assert_eq!(o.prefix, "");
        assert!(S3Options::from_url("s3:///x").is_err());
        assert!(S3Options::from_url("/tmp/x").is_err());
    }
}
