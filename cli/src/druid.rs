//! The Druid calls a guarded replay makes, through Druid's documented HTTP APIs: the used
//! segments of a datasource (coordinator metadata API), marking them unused ("clear") and used
//! again ("restore"), and a kill task for the day ("finalize", overlord task API). Credentials
//! (basic auth `user:password`) come by reference, never inline.

use std::time::Duration;

use serde_json::{Value, json};

#[derive(Debug, Clone)]
pub struct Druid {
    base: String,
    auth: Option<String>,
    http: reqwest::Client,
}

impl Druid {
    pub fn new(base: &str, auth: Option<String>) -> Result<Druid, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("--druid-url {base}: {e}"))?;
        Ok(Druid {
            base: base.trim_end_matches('/').to_string(),
            auth,
            http,
        })
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(a) = &self.auth {
            let (u, p) = a.split_once(':').unwrap_or((a, ""));
            r = r.basic_auth(u, Some(p));
        }
        r
    }

    async fn call(&self, r: reqwest::RequestBuilder, what: &str) -> Result<Value, String> {
        let resp = r
            .send()
            .await
            .map_err(|e| format!("Druid at {}: {what}: {e}", self.base))?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(format!(
                "Druid at {}: {what}: HTTP {status}: {}",
                self.base,
                body.chars().take(300).collect::<String>()
            ));
        }
        Ok(serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// Whether Druid answers (`GET /status`).
    pub async fn check(&self) -> Result<(), String> {
        self.call(self.req(reqwest::Method::GET, "/status"), "status")
            .await
            .map(drop)
    }

    /// The ids of the used segments of `ds` whose interval overlaps day `date`.
    pub async fn used_segments(&self, ds: &str, date: &str) -> Result<Vec<String>, String> {
        let path = format!("/druid/coordinator/v1/metadata/datasources/{ds}/segments?full");
        let v = self
            .call(self.req(reqwest::Method::GET, &path), "listing segments")
            .await?;
        let (from, to) = day_interval(date);
        let mut out = Vec::new();
        for s in v.as_array().into_iter().flatten() {
            let (Some(id), Some(interval)) = (s["identifier"].as_str(), s["interval"].as_str())
            else {
                continue;
            };
            let Some((a, b)) = interval.split_once('/') else {
                continue;
            };
            // ISO-8601 instants in the same form compare as strings.
            if a < to.as_str() && b > from.as_str() {
                out.push(id.to_string());
            }
        }
        out.sort();
        Ok(out)
    }

    pub async fn mark_unused(&self, ds: &str, ids: &[String]) -> Result<u64, String> {
        self.mark(ds, ids, "markUnused").await
    }

    pub async fn mark_used(&self, ds: &str, ids: &[String]) -> Result<u64, String> {
        self.mark(ds, ids, "markUsed").await
    }

    async fn mark(&self, ds: &str, ids: &[String], op: &str) -> Result<u64, String> {
        if ids.is_empty() {
            return Ok(0);
        }
        let path = format!("/druid/coordinator/v1/datasources/{ds}/{op}");
        let v = self
            .call(
                self.req(reqwest::Method::POST, &path)
                    .header("content-type", "application/json")
                    .body(json!({ "segmentIds": ids }).to_string()),
                op,
            )
            .await?;
        Ok(v["numChangedSegments"].as_u64().unwrap_or(0))
    }

    /// Submits a kill task for the unused segments of `ds` in day `date`; the task id.
    pub async fn kill(&self, ds: &str, date: &str) -> Result<String, String> {
        let (from, to) = day_interval(date);
        let v = self
            .call(
                self.req(reqwest::Method::POST, "/druid/indexer/v1/task")
                    .header("content-type", "application/json")
                    .body(
                        json!({"type": "kill", "dataSource": ds, "interval": format!("{from}/{to}")})
                            .to_string(),
                    ),
                "submitting a kill task",
            )
            .await?;
        Ok(v["task"].as_str().unwrap_or_default().to_string())
    }
}

/// Day `date`'s interval as Druid writes instants.
fn day_interval(date: &str) -> (String, String) {
    let d = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").unwrap_or_default();
    let next = d.succ_opt().unwrap_or(d);
    (
        format!("{d}T00:00:00.000Z"),
        format!("{next}T00:00:00.000Z"),
    )
}
