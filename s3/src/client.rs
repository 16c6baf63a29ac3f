//! One configured S3 client per job side: the standard credential chain, optionally an assumed
//! role on top, the endpoint, and no SDK retries (ours count and classify them).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use rewind_common::location::{JobSide, S3Options};
use rewind_common::storage::{IoStats, ObjectMeta, StorageError};

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use crate::retry::{RetryPolicy, classify};

/// A client plus what error messages need to say about it.
#[derive(Clone)]
pub struct S3Client {
    pub(crate) sdk: aws_sdk_s3::Client,
    pub(crate) handle: tokio::runtime::Handle,
    /// `role arn:… (external id set)` or `the default credential chain`.
    pub(crate) identity: Arc<str>,
    pub(crate) retry: RetryPolicy,
    pub(crate) stats: Arc<IoStats>,
}

impl std::fmt::Debug for S3Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Client")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// The HTTPS client of every SDK call (S3, STS, instance metadata): hyper on rustls with ring,
/// the crypto provider tonic already uses, so aws-lc is not built at all.
pub fn http_client() -> aws_sdk_s3::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// Builds the client for one side of a job. Must be called inside a tokio runtime; the stores
/// run their requests on it.
pub async fn connect(options: &S3Options, side: JobSide) -> Result<S3Client, StorageError> {
    connect_with(options, side, None).await
}

/// [`connect`] with static credentials instead of the default chain (tests and benchmarks).
pub async fn connect_static(
    options: &S3Options,
    access_key: &str,
    secret_key: &str,
) -> Result<S3Client, StorageError> {
    let creds = aws_sdk_s3::config::Credentials::new(access_key, secret_key, None, None, "static");
    connect_with(options, JobSide::Source, Some(creds)).await
}

async fn connect_with(
    options: &S3Options,
    side: JobSide,
    static_creds: Option<aws_sdk_s3::config::Credentials>,
) -> Result<S3Client, StorageError> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http_client());
    if let Some(creds) = static_creds {
        loader = loader.credentials_provider(creds);
    }
    if let Some(region) = &options.region {
        loader = loader.region(Region::new(region.clone()));
    }
    let base = loader.load().await;
    // A custom endpoint (MinIO, Ceph, a test server) usually has no region of its own.
    let region = base
        .region()
        .cloned()
        .unwrap_or_else(|| Region::new("us-east-1"));
    let mut conf = aws_sdk_s3::config::Builder::from(&base)
        .region(region)
        .force_path_style(options.force_path_style)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .read_timeout(Duration::from_secs(30))
                .build(),
        )
        // Checksums only where S3 requires them: third-party stores differ in what they accept,
        // and the pipeline checks each object's size against its pinned listing anyway.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    if let Some(url) = &options.endpoint_url {
        conf = conf.endpoint_url(url);
    }
    let identity = match options.role(side) {
        (Some(arn), external_id) => {
            let session = options
                .role_session_name
                .clone()
                .unwrap_or_else(|| "rewind".to_string());
            let mut role = aws_config::sts::AssumeRoleProvider::builder(arn)
                .session_name(session)
                .configure(&base);
            if let Some(id) = external_id {
                role = role.external_id(external_id_value(id).map_err(|why| {
                    StorageError::Denied {
                        what: format!("the external id of role {arn}"),
                        why,
                    }
                })?);
            }
            // The provider caches the role's credentials and refreshes them before expiry.
            conf = conf.credentials_provider(role.build().await);
            match external_id {
                Some(_) => format!("role {arn} (with external id)"),
                None => format!("role {arn}"),
            }
        }
        (None, _) => "the default credential chain".to_string(),
    };
    Ok(S3Client {
        sdk: aws_sdk_s3::Client::from_conf(conf.build()),
        handle: tokio::runtime::Handle::current(),
        identity: identity.into(),
        retry: RetryPolicy::default(),
        stats: Arc::new(IoStats::default()),
    })
}

impl S3Client {
    /// The same client counting into `stats`.
    pub(crate) fn with_stats(&self, stats: Arc<IoStats>) -> S3Client {
        S3Client {
            stats,
            ..self.clone()
        }
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> S3Client {
        self.retry = retry;
        self
    }

    /// Sends a request built by `make`, retrying transient failures under the client's policy
    /// and classifying the rest (see [`crate::retry::classify`]).
    pub(crate) async fn send<T, E, F, Fut>(
        &self,
        what: &str,
        mut make: F,
    ) -> Result<T, StorageError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        self.retry
            .run(&self.stats, what, || {
                let sent = make();
                async move { sent.await.map_err(|e| classify(e, what)) }
            })
            .await
    }

    /// Runs `fut` on the client's runtime and waits for it on this (blocking) thread.
    pub(crate) fn block<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, StorageError>> + Send + 'static,
    ) -> Result<T, StorageError> {
        block_on(&self.handle, fut)
    }
}

/// Runs `fut` on `handle`'s runtime and waits for it on this (blocking) thread.
pub(crate) fn block_on<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    fut: impl Future<Output = Result<T, StorageError>> + Send + 'static,
) -> Result<T, StorageError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let _ = tx.send(fut.await);
    });
    wait_here(|| rx.recv()).unwrap_or_else(|_| {
        Err(StorageError::Unavailable {
            what: "a storage request".into(),
            why: "the runtime shut down before it finished".into(),
        })
    })
}

/// Runs `wait` (a blocking wait for the runtime's work) on this thread. Callers should be on
/// blocking threads; on a multi-thread runtime's worker, the worker's other tasks are handed off
/// first instead of being stalled (or deadlocking).
fn wait_here<T>(wait: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    }
}

/// Objects a paged listing hands over at most per page (S3's page size).
pub(crate) const LIST_PAGE: usize = 1_000;

/// What a listing's producer sends: a page, or `None` when the listing is complete.
pub(crate) type PageMsg = Result<Option<Vec<ObjectMeta>>, StorageError>;

/// A listing produced on `handle` by `produce` (pages in key order, sent through the channel it
/// is given, then `Ok(None)`), handed to `each` on this (blocking) thread as the pages arrive;
/// at most one page waits. An error the producer returns is the listing's error; an error from
/// `each` stops the producer (its next send fails); a producer that ends without saying the
/// listing is complete is an error, never a short list.
pub(crate) fn paged<Fut>(
    handle: &tokio::runtime::Handle,
    what: &str,
    produce: impl FnOnce(tokio::sync::mpsc::Sender<PageMsg>) -> Fut,
    each: &mut dyn FnMut(Vec<ObjectMeta>) -> Result<(), StorageError>,
) -> Result<(), StorageError>
where
    Fut: Future<Output = Result<(), StorageError>> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let listing = produce(tx.clone());
    let producer = handle.spawn(async move {
        if let Err(e) = listing.await {
            let _ = tx.send(Err(e)).await;
        }
    });
    loop {
        let page = match wait_here(|| rx.blocking_recv()) {
            Some(Ok(Some(page))) => page,
            Some(Ok(None)) => return Ok(()),
            Some(Err(e)) => return Err(e),
            None => {
                return Err(StorageError::Unavailable {
                    what: what.to_string(),
                    why: "the listing stopped before it was complete".into(),
                });
            }
        };
        if let Err(e) = each(page) {
            producer.abort();
            return Err(e);
        }
    }
}

/// A role's external id as given: a literal, or a reference (`env:NAME`, `file:PATH`) that this
/// process resolves, so the job never carries the value.
pub fn external_id_value(given: &str) -> Result<String, String> {
    if given.starts_with("env:") || given.starts_with("file:") {
        rewind_common::secret::SecretRef::parse(given)?.resolve()
    } else {
        Ok(given.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(keys: &[&str]) -> Vec<ObjectMeta> {
        keys.iter()
            .map(|k| ObjectMeta {
                key: k.to_string(),
                size: 1,
                etag: None,
                version: None,
            })
            .collect()
    }

    /// What `paged` handed over, and how it ended.
    fn collect<Fut>(
        produce: impl FnOnce(tokio::sync::mpsc::Sender<PageMsg>) -> Fut,
    ) -> (Vec<String>, Result<(), StorageError>)
    where
        Fut: Future<Output = Result<(), StorageError>> + Send + 'static,
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mut got = Vec::new();
        let end = paged(rt.handle(), "listing test/", produce, &mut |p| {
            got.extend(p.into_iter().map(|o| o.key));
            Ok(())
        });
        (got, end)
    }

    #[test]
    fn a_complete_listing_hands_over_every_page_in_order() {
        let (got, end) = collect(|tx| async move {
            for p in [page(&["a", "b"]), page(&["c"])] {
                tx.send(Ok(Some(p))).await.unwrap();
            }
            tx.send(Ok(None)).await.unwrap();
            Ok(())
        });
        end.unwrap();
        assert_eq!(got, ["a", "b", "c"]);
    }

    #[test]
    fn a_producer_that_panics_or_stops_early_is_an_error_not_a_short_list() {
        // A panic in the middle of the listing (the task's sender is dropped as it unwinds).
        let (got, end) = collect(|tx| async move {
            tx.send(Ok(Some(page(&["a", "b"])))).await.unwrap();
            panic!("a listing producer failed mid-way");
        });
        assert_eq!(
            got,
            ["a", "b"],
            "the pages before the panic were handed over"
        );
        let err = end.unwrap_err().to_string();
        assert!(err.contains("stopped before it was complete"), "{err}");
        assert!(err.contains("listing test/"), "{err}");

        // A producer that returns without saying the listing is complete.
        let (got, end) = collect(|tx| async move {
            tx.send(Ok(Some(page(&["a"])))).await.unwrap();
            Ok(())
        });
        assert_eq!(got, ["a"]);
        assert!(end.is_err());

        // A store's error, returned by the producer, is the listing's error.
        let (_, end) = collect(|tx| async move {
            tx.send(Ok(Some(page(&["a"])))).await.unwrap();
            Err(StorageError::Unavailable {
                what: "s3://b/p".into(),
                why: "503 SlowDown".into(),
            })
        });
        assert!(end.unwrap_err().to_string().contains("503 SlowDown"));
    }

    #[test]
    fn a_callers_error_stops_the_producer() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        /// Set when the producer's future is dropped: finished or cancelled.
        struct Ended(Arc<AtomicBool>);
        impl Drop for Ended {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let sent = Arc::new(AtomicUsize::new(0));
        let ended = Arc::new(AtomicBool::new(false));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (counter, flag) = (sent.clone(), ended.clone());
        let mut pages = 0;
        let end = paged(
            rt.handle(),
            "listing test/",
            move |tx| async move {
                let _ended = Ended(flag);
                for i in 0..1_000 {
                    if tx.send(Ok(Some(page(&["k"])))).await.is_err() {
                        return Ok(());
                    }
                    counter.store(i + 1, Ordering::SeqCst);
                }
                let _ = tx.send(Ok(None)).await;
                Ok(())
            },
            &mut |_| {
                pages += 1;
                if pages == 2 {
                    return Err(StorageError::Unavailable {
                        what: "the caller".into(),
                        why: "stops here".into(),
                    });
                }
                Ok(())
            },
        );
        assert!(end.unwrap_err().to_string().contains("stops here"));
        // The runtime lives on: the producer ends because of the caller's error, not a shutdown.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !ended.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(ended.load(Ordering::SeqCst), "the producer still runs");
        // One page may wait in the channel and one be on its way when the caller stops.
        assert!(
            sent.load(Ordering::SeqCst) <= 4,
            "{} pages",
            sent.load(Ordering::SeqCst)
        );
        drop(rt);
    }

    #[test]
    fn external_ids_are_literals_or_resolved_references() {
        assert_eq!(external_id_value("ext-7731").unwrap(), "ext-7731");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("id");
        std::fs::write(&f, "ext-from-file\n").unwrap();
        assert_eq!(
            external_id_value(&format!("file:{}", f.display())).unwrap(),
            "ext-from-file"
        );
        assert!(
            external_id_value("env:REWIND_TEST_NO_SUCH_VAR")
                .unwrap_err()
                .contains("REWIND_TEST_NO_SUCH_VAR")
        );
    }
}
