//! Notifications of a guarded replay: one message per day and one per job, POSTed to every
//! `--notify URL`, as a Slack incoming-webhook message (`{"text": …}`) when the URL is Slack's
//! or `--notify-format slack`, else as the JSON event itself. Delivery is retried (3 tries) and
//! a failure is logged and counted, never fatal: a replay does not fail for its messages.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;

/// One webhook: its URL (a credential: a Slack webhook's path is its token), the form shown in
/// messages and logs (scheme and host only), and whether it takes Slack's format.
#[derive(Debug)]
struct Target {
    url: String,
    shown: String,
    slack: bool,
}

#[derive(Debug)]
pub struct Notifier {
    targets: Vec<Target>,
    http: reqwest::Client,
    pub failed: AtomicU64,
    pub sent: AtomicU64,
}

impl Notifier {
    /// `format`: `slack`, `json` or `auto` (Slack for hooks.slack.com URLs). Each URL is given
    /// as itself or by reference (`env:NAME`, `file:PATH`), and is never printed or logged
    /// beyond its scheme and host.
    pub fn new(urls: &[String], format: &str) -> Result<Notifier, String> {
        let mut targets = Vec::new();
        for (i, given) in urls.iter().enumerate() {
            let at = format!("--notify (#{})", i + 1);
            let u = if given.starts_with("env:") || given.starts_with("file:") {
                rewind_common::secret::SecretRef::parse(given)
                    .and_then(|r| r.resolve())
                    .map_err(|e| format!("{at}: {e}"))?
                    .trim()
                    .to_string()
            } else {
                given.clone()
            };
            let url = reqwest::Url::parse(&u).map_err(|e| format!("{at}: not a URL ({e})"))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(format!("{at}: not an http(s) URL"));
            }
            let slack = match format {
                "slack" => true,
                "json" => false,
                _ => url.host_str() == Some("hooks.slack.com"),
            };
            let shown = format!(
                "{}://{}/…",
                url.scheme(),
                url.host_str().unwrap_or_default()
            );
            targets.push(Target {
                url: u,
                shown,
                slack,
            });
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
        for t in &self.targets {
            self.http.head(&t.url).send().await.map_err(|e| {
                format!("--notify {} does not answer: {}", t.shown, e.without_url())
            })?;
        }
        Ok(())
    }

    /// Sends `event` (with `text`, its one-line human form) to every target.
    pub async fn send(&self, event: &Value, text: &str) {
        for t in &self.targets {
            let body = if t.slack {
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
                    .post(&t.url)
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
                        tracing::warn!(url = %t.shown, status = %resp.status(), attempt, "notification refused")
                    }
                    Err(e) => {
                        tracing::warn!(url = %t.shown, error = %e.without_url(), attempt, "notification failed")
                    }
                }
            }
            if delivered {
                self.sent.fetch_add(1, Ordering::Relaxed);
            } else {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(url = %t.shown, "notification not delivered after 3 tries");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A webhook URL is a credential: errors show its scheme and host, never its path.
    #[tokio::test]
    async fn webhook_urls_are_never_shown_whole() {
        let n = Notifier::new(
            &["http://127.0.0.1:9/services/T000/B000/SECRETTOKEN".to_string()],
            "auto",
        )
        .unwrap();
        let e = n.check().await.unwrap_err();
        assert!(!e.contains("SECRETTOKEN"), "{e}");
        assert!(e.contains("http://127.0.0.1/…"), "{e}");
        let e = Notifier::new(&["env:REWIND_TEST_NO_SUCH_HOOK".to_string()], "auto").unwrap_err();
        assert!(e.contains("--notify (#1)"), "{e}");
    }
}
