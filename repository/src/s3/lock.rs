//! Object Lock on [`S3Store`] ([`crate::objectlock`] states the rules): the bucket check, the
//! retention of writes, version-wise deletes that respect retention, and the extension of
//! present chunks' retention.
//!
//! Invariant: nothing here deletes a version whose retention has not passed — it checks the
//! current version first and maps the server's refusal of any version to [`Error::Retained`].

use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::DateTime as S3Time;
use aws_sdk_s3::types::{
    BucketVersioningStatus, ObjectLockEnabled, ObjectLockMode, ObjectLockRetention,
    ObjectLockRetentionMode,
};
use std::sync::atomic::{AtomicI64, Ordering};

use aws_sdk_s3::config::interceptors::BeforeDeserializationInterceptorContextRef;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::error::BoxError;
use chrono::{DateTime, Utc};

use super::S3Store;
use crate::error::{Error, Result};
use crate::objectlock::{exempt, LockMode, ObjectLockPolicy, Retention};
use crate::store::{Request, Store};

pub(super) fn s3_time(t: DateTime<Utc>) -> S3Time {
    S3Time::from_secs(t.timestamp())
}

fn chrono_time(t: &S3Time) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.secs(), t.subsec_nanos())
}

pub(super) fn s3_mode(m: LockMode) -> ObjectLockMode {
    match m {
        LockMode::Compliance => ObjectLockMode::Compliance,
        LockMode::Governance => ObjectLockMode::Governance,
    }
}

/// The server's clock as seen in the `Date` header of its responses: retention dates are
/// computed and compared on it, so a client clock that is off does not shorten a lock.
#[derive(Debug, Default)]
pub(super) struct ServerClock {
    /// Server minus local time, in milliseconds (0 until a response was seen).
    skew_ms: AtomicI64,
}

impl ServerClock {
    /// The server's time now (the local time until a response was seen).
    pub(super) fn now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::milliseconds(self.skew_ms.load(Ordering::Relaxed))
    }

    /// Records the skew from a `Date` header (RFC 7231, one-second resolution: the server's
    /// time is up to a second later than the header says, so half a second is added).
    pub(super) fn observe(&self, date: &str, local: DateTime<Utc>) {
        if let Ok(t) = DateTime::parse_from_rfc2822(date) {
            let skew = t.with_timezone(&Utc) - local + chrono::Duration::milliseconds(500);
            self.skew_ms
                .store(skew.num_milliseconds(), Ordering::Relaxed);
        }
    }
}

/// Feeds every response's `Date` header to a [`ServerClock`].
#[derive(Debug)]
pub(super) struct ClockInterceptor(pub(super) std::sync::Arc<ServerClock>);

impl Intercept for ClockInterceptor {
    fn name(&self) -> &'static str {
        "virtguard-server-clock"
    }

    fn read_before_deserialization(
        &self,
        ctx: &BeforeDeserializationInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(d) = ctx.response().headers().get("date") {
            self.0.observe(d, Utc::now());
        }
        Ok(())
    }
}

impl S3Store {
    pub(super) fn lock_policy(&self) -> Option<ObjectLockPolicy> {
        self.lock.read().ok().and_then(|p| *p)
    }

    /// The retention a write of `key` gets now (`None`: no policy, or an exempt key).
    pub(super) fn write_retention(&self, key: &str) -> Option<Retention> {
        let p = self.lock_policy()?;
        (!exempt(key)).then(|| p.retention_from(self.clock.now()))
    }

    /// Object Lock enabled and versioning on, or a clear error naming what is missing.
    pub(super) async fn check_bucket_lock(&self) -> Result<()> {
        let bucket = &self.opts.bucket;
        self.counters.count(Request::Get, "");
        let lock = self
            .client
            .get_object_lock_configuration()
            .bucket(bucket)
            .send()
            .await;
        let enabled = match lock {
            Ok(out) => out
                .object_lock_configuration()
                .and_then(|c| c.object_lock_enabled())
                .is_some_and(|e| *e == ObjectLockEnabled::Enabled),
            Err(e) => match self.map_err("read Object Lock configuration", "", e) {
                Error::Store { message, .. }
                    if message.contains("ObjectLockConfigurationNotFound") =>
                {
                    false
                }
                Error::NotFound { .. } => false,
                other => return Err(other),
            },
        };
        if !enabled {
            return Err(Error::Invalid(format!(
                "bucket `{bucket}` does not have Object Lock enabled: --object-lock needs a \
                 bucket created with Object Lock (aws s3api create-bucket … \
                 --object-lock-enabled-for-bucket), or leave --object-lock out"
            )));
        }
        self.counters.count(Request::Get, "");
        let versioning = match self
            .client
            .get_bucket_versioning()
            .bucket(bucket)
            .send()
            .await
        {
            Ok(v) => v.status().cloned(),
            // A 200 the SDK cannot parse (moto names the XML root GetBucketVersioningResponse):
            // S3 turns versioning on with Object Lock and never lets it be suspended.
            Err(SdkError::ServiceError(se)) if se.raw().status().as_u16() == 200 => {
                tracing::warn!(
                    bucket,
                    "unparseable versioning status; Object Lock implies versioning"
                );
                Some(BucketVersioningStatus::Enabled)
            }
            Err(e) => return Err(self.map_err("read versioning", "", e)),
        };
        if versioning != Some(BucketVersioningStatus::Enabled) {
            return Err(Error::Invalid(format!(
                "bucket `{bucket}` does not have versioning enabled, which Object Lock needs: \
                 enable it (aws s3api put-bucket-versioning …) and run init again"
            )));
        }
        Ok(())
    }

    /// The current version's retention, and its version id.
    pub(super) async fn head_retention(
        &self,
        key: &str,
    ) -> Result<Option<(Option<Retention>, Option<String>)>> {
        self.counters.count(Request::Head, key);
        let full = self.full_key(key)?;
        let out = match self
            .client
            .head_object()
            .bucket(&self.opts.bucket)
            .key(&full)
            .send()
            .await
        {
            Ok(o) => o,
            Err(e) => {
                return match self.map_err("stat", key, e) {
                    Error::NotFound { .. } => Ok(None),
                    other => Err(other),
                }
            }
        };
        let mode = match out.object_lock_mode() {
            Some(ObjectLockMode::Compliance) => Some(LockMode::Compliance),
            Some(ObjectLockMode::Governance) => Some(LockMode::Governance),
            _ => None,
        };
        let until = out.object_lock_retain_until_date().and_then(chrono_time);
        let retention = match (mode, until) {
            (Some(mode), Some(until)) => Some(Retention { mode, until }),
            _ => None,
        };
        Ok(Some((retention, out.version_id().map(str::to_string))))
    }

    fn retained(&self, key: &str, until: &str) -> Error {
        Error::Retained {
            store: self.location(),
            key: key.to_string(),
            until: until.to_string(),
        }
    }

    /// Deletes every version (and delete marker) of `key`, after checking that the current
    /// version's retention has passed.
    pub(super) async fn delete_versions(&self, key: &str) -> Result<()> {
        let now = self.clock.now();
        if let Some((Some(r), _)) = self.head_retention(key).await? {
            if r.active(now) {
                return Err(self.retained(key, &r.until.to_rfc3339()));
            }
        }
        let full = self.full_key(key)?;
        let mut versions = Vec::new();
        let (mut key_marker, mut version_marker) = (None, None);
        loop {
            self.counters.count(Request::List, key);
            let page = self
                .client
                .list_object_versions()
                .bucket(&self.opts.bucket)
                .prefix(&full)
                .set_key_marker(key_marker.take())
                .set_version_id_marker(version_marker.take())
                .send()
                .await
                .map_err(|e| self.map_err("list versions", key, e))?;
            for v in page.versions() {
                if v.key() == Some(full.as_str()) {
                    versions.extend(v.version_id().map(str::to_string));
                }
            }
            for m in page.delete_markers() {
                if m.key() == Some(full.as_str()) {
                    versions.extend(m.version_id().map(str::to_string));
                }
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            version_marker = page.next_version_id_marker().map(str::to_string);
            if key_marker.is_none() {
                break;
            }
        }
        for v in versions {
            self.counters.count(Request::Delete, key);
            let res = self
                .client
                .delete_object()
                .bucket(&self.opts.bucket)
                .key(&full)
                .version_id(&v)
                .send()
                .await;
            if let Err(e) = res {
                return Err(match self.map_err("delete", key, e) {
                    Error::NotFound { .. } => continue,
                    Error::Store { message, .. } if message.contains("HTTP 403") => {
                        self.retained(key, "a date the server keeps (it refused the delete)")
                    }
                    other => other,
                });
            }
        }
        Ok(())
    }

    /// When `key` is a chunk whose retention ends within [`ObjectLockPolicy::extend_below`],
    /// extends it to now + period (PutObjectRetention on the current version).
    pub(super) async fn extend_if_due(
        &self,
        key: &str,
        current: Option<Retention>,
        version: Option<String>,
    ) -> Result<()> {
        let Some(p) = self.lock_policy() else {
            return Ok(());
        };
        if !key.starts_with("chunks/") {
            return Ok(());
        }
        let now = self.clock.now();
        if current.is_some_and(|r| r.until > now + p.extend_below()) {
            return Ok(());
        }
        let want = p.retention_from(now);
        let mode = match want.mode {
            LockMode::Compliance => ObjectLockRetentionMode::Compliance,
            LockMode::Governance => ObjectLockRetentionMode::Governance,
        };
        self.counters.count(Request::Put, key);
        self.client
            .put_object_retention()
            .bucket(&self.opts.bucket)
            .key(self.full_key(key)?)
            .set_version_id(version)
            .retention(
                ObjectLockRetention::builder()
                    .mode(mode)
                    .retain_until_date(s3_time(want.until))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.map_err("extend retention", key, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_clock_follows_the_date_header() {
        let c = ServerClock::default();
        let local: DateTime<Utc> = "2026-12-07T12:00:00Z".parse().unwrap();
        // The server is an hour ahead.
        c.observe("Mon, 07 Dec 2026 13:00:00 GMT", local);
        let skew = c.now() - Utc::now();
        assert!((skew.num_seconds() - 3600).abs() <= 1, "{skew}");
        // Garbage leaves it as it was.
        c.observe("yesterday", local);
        assert!(((c.now() - Utc::now()).num_seconds() - 3600).abs() <= 1);
    }
}
