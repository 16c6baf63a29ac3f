//! Notifications of a guarded replay: one message per day and one per job, POSTed to every
//! `--notify URL`, as a Slack incoming-webhook message (`{"text": …}`) when the URL is Slack's
//! or `--notify-format slack`, else as the JSON event itself. Delivery is retried (3 tries) and
//! a failure is logged and counted, never fatal: a replay does not fail for its messages.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;

#[derive(Debug)]
pub struct Notifier {
    targets: Vec<(String, bool)>,
    http: reqwest::Client,
    pub failed: AtomicU64,
    pub sent: AtomicU64,
}

impl Notifier {
    /// `format`: `slack`, `json` or `auto` (Slack for hooks.slack.com URLs).
    pub fn new(urls: &[String], format: &str) -> Result<Notifier, String> {
        let mut targets = Vec::new();
        for u in urls {
            let url = reqwest::Url::parse(u).map_err(|e| format!("--notify {u}: {e}"))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(format!("--notify {u}: not an http(s) URL"));
            }
            let slack = match format {
                "slack" => true,
                "json" => false,
                _ => url.host_str() == Some("hooks.slack.com"),
            };
            targets.push((u.clone(), slack));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("--notify: {e}"))?;
        Ok(Notifier {
            targets,
            http,
            failed: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        })
    }

    /// Whether every target answers at all (any HTTP status): checked before anything is
    /// deleted, so a mistyped URL stops the replay up front.
    pub async fn check(&self) -> Result<(), String> {
        for (u, _) in &self.targets {
            self.http
                .head(u)
                .send()
                .await
                .map_err(|e| format!("--notify {u} does not answer: {e}"))?;
        }
        Ok(())
    }

    /// Sends `event` (with `text`, its one-line human form) to every target.
    pub async fn send(&self, event: &Value, text: &str) {
        for (u, slack) in &self.targets {
            let body = if *slack {
                serde_json::json!({ "text": text }).to_string()
            } else {
                let mut e = event.clone();
                e["text"] = Value::String(text.to_string());
                e.to_string()
            };
            let mut delivered = false;
            for attempt in 0..3u32 {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(200 * 4u64.pow(attempt - 1))).await;
                }
                let r = self
                    .http
                    .post(u)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                match r {
                    Ok(resp) if resp.status().is_success() => {
                        delivered = true;
                        break;
                    }
                    Ok(resp) => {
                        tracing::warn!(url = %u, status = %resp.status(), attempt, "notification refused")
                    }
                    Err(e) => tracing::warn!(url = %u, error = %e, attempt, "notification failed"),
                }
            }
            if delivered {
                self.sent.fetch_add(1, Ordering::Relaxed);
            } else {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(url = %u, "notification not delivered after 3 tries");
            }
        }
    }
}
