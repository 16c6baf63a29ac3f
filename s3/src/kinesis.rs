//! Amazon Kinesis Data Streams for the Kinesis sink: one configured client per (region,
//! endpoint) and process, the standard AWS credential chain, no SDK retries (the sink retries
//! failed records itself, and counts them), and each error classified for the sink.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_kinesis::config::Region;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;

/// What an error means for a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Nothing will get through (no such stream, not authorised, a request the service
    /// refuses): the shard fails for good.
    Fatal,
    /// The stream is busy (throughput exceeded, throttled): slow down and put again.
    Throttled,
    /// The call may succeed later (a 5xx, a timeout, a reset connection).
    Transient,
}

/// A failed call, with its class and the service's own words.
#[derive(Debug, Clone)]
pub struct KinesisError {
    pub class: ErrorClass,
    pub message: String,
}

impl std::fmt::Display for KinesisError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// One record to put: its data and partition key.
#[derive(Debug, Clone)]
pub struct Entry {
    pub data: bytes::Bytes,
    pub key: String,
}

/// How each record of a PutRecords call fared: `None` put, or the per-record error code and
/// message (ProvisionedThroughputExceededException, InternalFailure, …).
pub type PutOutcome = Vec<Option<(String, String)>>;

/// What the preflight found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    pub status: String,
    pub shards: u32,
}

/// A Kinesis client and the stream it puts to.
#[derive(Clone)]
pub struct KinesisClient {
    sdk: aws_sdk_kinesis::Client,
    /// A name, or an ARN.
    stream: String,
}

impl std::fmt::Debug for KinesisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KinesisClient")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

type Clients = Mutex<HashMap<(Option<String>, Option<String>), aws_sdk_kinesis::Client>>;

/// The client for `stream` in `region` (default: the AWS environment's) at `endpoint` (default:
/// AWS's). Clients are built once per process and endpoint: their credential providers cache and
/// refresh the credentials. Must be called inside a tokio runtime.
pub async fn connect(stream: &str, region: Option<&str>, endpoint: Option<&str>) -> KinesisClient {
    static CLIENTS: OnceLock<Clients> = OnceLock::new();
    let clients = CLIENTS.get_or_init(Default::default);
    let id = (region.map(str::to_string), endpoint.map(str::to_string));
    let cached = clients
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&id)
        .cloned();
    let sdk = match cached {
        Some(sdk) => sdk,
        None => {
            let sdk = build(region, endpoint).await;
            clients
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, sdk.clone());
            sdk
        }
    };
    KinesisClient {
        sdk,
        stream: stream.to_string(),
    }
}

async fn build(region: Option<&str>, endpoint: Option<&str>) -> aws_sdk_kinesis::Client {
    let mut loader =
        aws_config::defaults(BehaviorVersion::latest()).http_client(crate::client::http_client());
    if let Some(region) = region {
        loader = loader.region(Region::new(region.to_string()));
    }
    let base = loader.load().await;
    let region = base
        .region()
        .cloned()
        .unwrap_or_else(|| Region::new("us-east-1"));
    let mut conf = aws_sdk_kinesis::config::Builder::from(&base)
        .region(region)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .read_timeout(Duration::from_secs(30))
                .build(),
        );
    if let Some(url) = endpoint {
        conf = conf.endpoint_url(url);
    }
    aws_sdk_kinesis::Client::from_conf(conf.build())
}

fn is_arn(stream: &str) -> bool {
    stream.starts_with("arn:")
}

/// The class of an error code the service returned (for a call or for one record).
pub fn class_of(code: &str) -> ErrorClass {
    match code {
        "ProvisionedThroughputExceededException"
        | "LimitExceededException"
        | "ThrottlingException"
        | "KMSThrottlingException" => ErrorClass::Throttled,
        "ResourceNotFoundException"
        | "ResourceInUseException"
        | "AccessDeniedException"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "IncompleteSignature"
        | "MissingAuthenticationToken"
        | "ExpiredTokenException"
        | "InvalidArgumentException"
        | "ValidationException"
        | "KMSDisabledException"
        | "KMSInvalidStateException"
        | "KMSAccessDeniedException"
        | "KMSNotFoundException"
        | "KMSOptInRequired" => ErrorClass::Fatal,
        _ => ErrorClass::Transient,
    }
}

fn classify<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    e: SdkError<E, aws_sdk_kinesis::config::http::HttpResponse>,
    what: &str,
) -> KinesisError {
    match &e {
        SdkError::ServiceError(s) => {
            let err = s.err();
            let code = err.code().unwrap_or("unknown error").to_string();
            let status = s.raw().status().as_u16();
            let class = match class_of(&code) {
                // An unknown code with a 4xx is the request's fault, not the moment's.
                ErrorClass::Transient if (400..500).contains(&status) && status != 429 => {
                    if code == "unknown error" {
                        ErrorClass::Transient
                    } else {
                        ErrorClass::Fatal
                    }
                }
                c => c,
            };
            KinesisError {
                class,
                message: format!(
                    "{what}: {code}{}",
                    err.message().map(|m| format!(": {m}")).unwrap_or_default()
                ),
            }
        }
        SdkError::ConstructionFailure(_) => KinesisError {
            class: ErrorClass::Fatal,
            message: format!("{what}: {}", crate::retry::chain(&e)),
        },
        _ => KinesisError {
            class: ErrorClass::Transient,
            message: format!("{what}: {}", crate::retry::chain(&e)),
        },
    }
}

impl KinesisClient {
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The stream's status and open shards (DescribeStreamSummary): the preflight's question.
    pub async fn describe(&self) -> Result<StreamInfo, KinesisError> {
        let mut req = self.sdk.describe_stream_summary();
        req = if is_arn(&self.stream) {
            req.stream_arn(&self.stream)
        } else {
            req.stream_name(&self.stream)
        };
        let what = format!("describing Kinesis stream {}", self.stream);
        let out = req.send().await.map_err(|e| classify(e, &what))?;
        let d = out.stream_description_summary();
        Ok(StreamInfo {
            status: d
                .map(|d| d.stream_status().as_str().to_string())
                .unwrap_or_default(),
            shards: d.map(|d| d.open_shard_count()).unwrap_or_default().max(0) as u32,
        })
    }

    /// One PutRecords call: each record's outcome in order, or why the whole call failed.
    pub async fn put_records(&self, entries: &[Entry]) -> Result<PutOutcome, KinesisError> {
        let mut req = self.sdk.put_records();
        req = if is_arn(&self.stream) {
            req.stream_arn(&self.stream)
        } else {
            req.stream_name(&self.stream)
        };
        for e in entries {
            let entry = PutRecordsRequestEntry::builder()
                .data(Blob::new(e.data.to_vec()))
                .partition_key(&e.key)
                .build()
                .map_err(|e| KinesisError {
                    class: ErrorClass::Fatal,
                    message: format!("building a Kinesis record: {e}"),
                })?;
            req = req.records(entry);
        }
        let what = format!("putting records into Kinesis stream {}", self.stream);
        let out = req.send().await.map_err(|e| classify(e, &what))?;
        let results = out.records();
        if results.len() != entries.len() {
            return Err(KinesisError {
                class: ErrorClass::Transient,
                message: format!(
                    "{what}: the service answered for {} of {} records",
                    results.len(),
                    entries.len()
                ),
            });
        }
        Ok(results
            .iter()
            .map(|r| {
                r.error_code().map(|code| {
                    (
                        code.to_string(),
                        r.error_message().unwrap_or_default().to_string(),
                    )
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_classified() {
        assert_eq!(
            class_of("ProvisionedThroughputExceededException"),
            ErrorClass::Throttled
        );
        assert_eq!(class_of("KMSThrottlingException"), ErrorClass::Throttled);
        assert_eq!(class_of("ResourceNotFoundException"), ErrorClass::Fatal);
        assert_eq!(class_of("AccessDeniedException"), ErrorClass::Fatal);
        assert_eq!(class_of("InternalFailure"), ErrorClass::Transient);
        assert_eq!(class_of("ServiceUnavailable"), ErrorClass::Transient);
    }
}
