//! Google Cloud Pub/Sub for the Pub/Sub sink: its REST API (`topics.get`, `topics.publish`) over
//! the same HTTP client as GCS, with the same application default credentials
//! (object_store's GCP provider, cloud-platform scope). `PUBSUB_EMULATOR_HOST` (Google's
//! convention) sends every call to an emulator instead, without credentials.

use std::sync::Arc;

use base64::Engine as _;
use object_store::gcp::GcpCredentialProvider;
use serde_json::{Value, json};

use crate::kinesis::{ErrorClass, KinesisError};

const GOOGLE: &str = "https://pubsub.googleapis.com";

/// One message: its data, attributes and ordering key (empty: none).
#[derive(Debug, Clone)]
pub struct Message {
    pub data: bytes::Bytes,
    pub attributes: Vec<(String, String)>,
    pub ordering_key: String,
}

/// A client for one topic.
#[derive(Clone)]
pub struct PubSubClient {
    http: reqwest::Client,
    base: Arc<str>,
    topic: Arc<str>,
    auth: Option<GcpCredentialProvider>,
}

impl std::fmt::Debug for PubSubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubSubClient")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// What a failed call's status means (Pub/Sub's canonical codes over HTTP).
fn class_of_status(status: u16) -> ErrorClass {
    match status {
        429 => ErrorClass::Throttled,
        408 | 500..=599 => ErrorClass::Transient,
        _ => ErrorClass::Fatal,
    }
}

impl PubSubClient {
    /// A client for `topic` (`projects/P/topics/T`), at the emulator when
    /// `PUBSUB_EMULATOR_HOST` is set, else at Google with the process's credentials.
    pub fn connect(topic: &str) -> Result<PubSubClient, String> {
        let http = crate::gcs::http_client()?;
        let (base, auth) = match crate::gcs::emulator("PUBSUB_EMULATOR_HOST") {
            Some(base) => (base, None),
            None => (GOOGLE.to_string(), Some(crate::gcs::google_credentials()?)),
        };
        Ok(PubSubClient {
            http,
            base: base.into(),
            topic: topic.into(),
            auth,
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    async fn send(&self, what: &str, req: reqwest::RequestBuilder) -> Result<Value, KinesisError> {
        let mut req = req;
        if let Some(auth) = &self.auth {
            let token = auth.get_credential().await.map_err(|e| KinesisError {
                class: ErrorClass::Fatal,
                message: format!("{what}: getting Google credentials: {e}"),
            })?;
            req = req.bearer_auth(&token.bearer);
        }
        let resp = req.send().await.map_err(|e| KinesisError {
            class: ErrorClass::Transient,
            message: format!("{what}: {e}"),
        })?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| KinesisError {
            class: ErrorClass::Transient,
            message: format!("{what}: {e}"),
        })?;
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(v);
        }
        let message = v["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
        let code = v["error"]["status"].as_str().unwrap_or("");
        Err(KinesisError {
            class: class_of_status(status),
            message: format!("{what}: HTTP {status} {code}: {message}"),
        })
    }

    /// The topic exists and the credentials may see it (`topics.get`): the preflight.
    pub async fn describe(&self) -> Result<(), KinesisError> {
        let url = format!("{}/v1/{}", self.base, self.topic);
        let what = format!("Pub/Sub topic {}", self.topic);
        self.send(&what, self.http.get(&url)).await.map(|_| ())
    }

    /// One publish request: every message is accepted (a message id each) or the call failed.
    pub async fn publish(&self, messages: &[Message]) -> Result<(), KinesisError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let body = json!({
            "messages": messages.iter().map(|m| {
                let mut v = json!({"data": b64.encode(&m.data)});
                if !m.attributes.is_empty() {
                    v["attributes"] = Value::Object(
                        m.attributes
                            .iter()
                            .map(|(k, a)| (k.clone(), Value::String(a.clone())))
                            .collect(),
                    );
                }
                if !m.ordering_key.is_empty() {
                    v["orderingKey"] = Value::String(m.ordering_key.clone());
                }
                v
            }).collect::<Vec<_>>()
        });
        let url = format!("{}/v1/{}:publish", self.base, self.topic);
        let what = format!("publishing to Pub/Sub topic {}", self.topic);
        let v = self
            .send(
                &what,
                self.http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.to_string()),
            )
            .await?;
        let ids = v["messageIds"].as_array().map_or(0, Vec::len);
        if ids != messages.len() {
            return Err(KinesisError {
                class: ErrorClass::Transient,
                message: format!("{what}: {ids} message ids for {} messages", messages.len()),
            });
        }
        Ok(())
    }
}
