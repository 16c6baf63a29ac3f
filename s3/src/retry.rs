//! Error classes and the retry loop. SDK retries are off: every transient failure goes through
//! [`RetryPolicy::run`], which backs off exponentially with jitter, gives up after a bound, and
//! counts each retry into the store's [`IoStats`].

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::Ordering;
use std::time::Duration;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use rewind_common::storage::{IoStats, StorageError};

/// How a failed request is treated.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Throttling, 5xx, timeouts, resets: worth another try.
    Transient(String),
    /// Everything else, already classified.
    Final(StorageError),
}

/// Bounded exponential backoff with jitter.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Tries per request, the first included.
    pub max_attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The pause before retry number `n` (1-based): "equal jitter", half fixed, half random.
    pub fn delay(&self, n: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << n.saturating_sub(1).min(16))
            .min(self.cap);
        let half = exp / 2;
        let random = RandomState::new().build_hasher().finish();
        half + Duration::from_nanos(random % (half.as_nanos() as u64 + 1))
    }

    /// Runs `op` until it succeeds, fails for good, or the attempts run out.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        stats: &IoStats,
        what: &str,
        mut op: F,
    ) -> Result<T, StorageError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Transient(why)) if attempt >= self.max_attempts => {
                    return Err(StorageError::Unavailable {
                        what: what.to_string(),
                        why: format!("{why} (gave up after {attempt} attempts)"),
                    });
                }
                Err(Failure::Transient(why)) => {
                    let pause = self.delay(attempt);
                    tracing::debug!(what = %what.to_string(), error = %why, attempt, pause_ms = pause.as_millis() as u64, "retrying S3 request");
                    stats.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
            }
        }
    }
}

/// S3 error codes that no retry can fix: identity, permission and bucket problems.
const DENIED: &[&str] = &[
    "AccessDenied",
    "AllAccessDisabled",
    "AccountProblem",
    "InvalidAccessKeyId",
    "InvalidSecurity",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "SignatureDoesNotMatch",
    "NoSuchBucket",
    "InvalidBucketName",
];

/// Codes worth retrying whatever their status says.
const TRANSIENT: &[&str] = &[
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
];

/// Classifies an SDK error. `what` names the bucket, key or prefix and the identity in use.
pub(crate) fn classify<E>(
    err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    what: &str,
) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::TimeoutError(_) => Failure::Transient("timed out".into()),
        SdkError::ResponseError(e) => Failure::Transient(format!("bad response: {e:?}")),
        SdkError::DispatchFailure(d) if d.is_io() || d.is_timeout() => {
            Failure::Transient(format!("connection failed: {}", chain(&err)))
        }
        SdkError::DispatchFailure(_) | SdkError::ConstructionFailure(_) => {
            // No usable credentials, a role that cannot be assumed, a bad endpoint.
            Failure::Final(StorageError::Denied {
                what: what.to_string(),
                why: chain(&err),
            })
        }
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            let code = s.err().code().unwrap_or("").to_string();
            let message = s.err().message().unwrap_or("").to_string();
            let why = if code.is_empty() {
                format!("{status}: {}", chain(s.err()))
            } else if message.is_empty() {
                format!("{status} {code}")
            } else {
                format!("{status} {code}: {message}")
            };
            let server_error = status >= 500 && status != 501; // 501: not implemented
            if TRANSIENT.contains(&code.as_str()) || status == 429 || server_error {
                Failure::Transient(why)
            } else if DENIED.contains(&code.as_str()) || status == 401 || status == 403 {
                Failure::Final(StorageError::Denied {
                    what: what.to_string(),
                    why,
                })
            } else if status == 404 || code == "NoSuchKey" || code == "NoSuchVersion" {
                Failure::Final(StorageError::NotFound {
                    what: what.to_string(),
                })
            } else if status == 412 || code == "PreconditionFailed" {
                Failure::Final(StorageError::Changed {
                    what: what.to_string(),
                    why,
                })
            } else {
                Failure::Final(StorageError::Denied {
                    what: what.to_string(),
                    why,
                })
            }
        }
        _ => Failure::Transient(chain(&err)),
    }
}

/// An error and its sources on one line.
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_are_jittered_and_capped() {
        let p = RetryPolicy::default();
        for n in 1..20 {
            let d = p.delay(n);
            let exp = (p.base * (1 << (n - 1).min(16))).min(p.cap);
            assert!(d >= exp / 2 && d <= exp, "{n}: {d:?}");
        }
        let samples: std::collections::HashSet<_> = (0..20).map(|_| p.delay(5)).collect();
        assert!(samples.len() > 1, "no jitter");
    }

    #[tokio::test]
    async fn retries_are_bounded_and_counted() {
        let stats = IoStats::default();
        let p = RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(2),
        };
        let mut calls = 0;
        let r: Result<(), _> = p
            .run(&stats, "s3://b/k", || {
                calls += 1;
                async { Err(Failure::Transient("503 SlowDown".into())) }
            })
            .await;
        let e = r.unwrap_err();
        assert!(e.is_retryable());
        assert!(
            e.to_string().contains("s3://b/k") && e.to_string().contains("3 attempts"),
            "{e}"
        );
        assert_eq!(calls, 3);
        assert_eq!(stats.retries.load(Ordering::Relaxed), 2);

        let mut calls = 0;
        let r: Result<(), _> = p
            .run(&stats, "s3://b/k", || {
                calls += 1;
                async {
                    Err(Failure::Final(StorageError::Denied {
                        what: "s3://b/k".into(),
                        why: "403 AccessDenied".into(),
                    }))
                }
            })
            .await;
        assert!(!r.unwrap_err().is_retryable());
        assert_eq!(calls, 1, "a final error is not retried");
    }
}
