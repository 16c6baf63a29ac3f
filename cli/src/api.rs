//! The coordinator's JSON API under `/api/v1/` (served with `/metrics` on `--metrics-listen`):
//! the same data as the gRPC `ListJobs` and `GetJob`, through the same service code, with the
//! same auth rules (a bearer token, and a scoped token sees only its tenants' jobs).
//!
//! - `GET /api/v1/jobs?page_size=N&page_token=T&state=S&org=O` → `{"jobs": [...],
//!   "next_page_token": "..."}` (newest first; the same paging as `rewind jobs`).
//! - `GET /api/v1/jobs/{id}` → the job (as `rewind status --json`), with its `summary` once it
//!   has finished.
//! - `GET /api/v1/jobs/{id}/shards` → `{"shards": [{"shard", "state", "attempts", "error"}]}`
//!   (a heat map's cells: from the registry while it runs, from its manifest once finished).
//! - `GET /` (or `/ui`): the status page, one self-contained HTML file (no CDN, no external font,
//!   vanilla JS) over this API: the jobs, and a job's heat map, counts, failures and cancel.
//! - `GET /api/v1/jobs/{id}/failures` → a finished job's failed records grouped by reason, the
//!   first few of each (source key, offset, reason, an excerpt of the raw bytes) and where the
//!   rest are.
//! - `POST /api/v1/jobs/{id}/cancel` → the job after the request. Actions need the header
//!   `X-Requested-By: rewind` besides the token: a page on another site cannot send it without
//!   a CORS preflight this server never answers, so a cross-site request can never act.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rewind_coordinator::access::Scope;
use rewind_coordinator::service::JobServiceImpl;
use rewind_proto::v1 as pb;
use rewind_proto::v1::job_service_server::JobService;
use serde_json::{Value, json};

#[derive(Clone)]
struct Api {
    service: JobServiceImpl<rewind_etcd::EtcdStore>,
    auth: Option<rewind_cli::RequireToken>,
}

/// `GET /api/v1/jobs`'s query (also `rewind ui`'s).
#[derive(Debug, serde::Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    pub page_size: u32,
    #[serde(default)]
    pub page_token: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub org: String,
}

/// The routes, for `serve_ops`.
pub fn router(
    service: JobServiceImpl<rewind_etcd::EtcdStore>,
    auth: Option<rewind_cli::RequireToken>,
) -> axum::Router {
    axum::Router::new()
        .route("/", get(page))
        .route("/ui", get(page))
        .route("/api/v1/jobs", get(list))
        .route("/api/v1/jobs/{id}", get(one))
        .route("/api/v1/jobs/{id}/shards", get(shards))
        .route("/api/v1/jobs/{id}/failures", get(failures))
        .route("/api/v1/jobs/{id}/cancel", post(cancel))
        .with_state(Api { service, auth })
}

/// A JSON answer, never cached.
pub fn json_response(code: StatusCode, body: Value) -> Response {
    (
        code,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// A gRPC status as the HTTP answer it means.
fn error(s: tonic::Status) -> Response {
    use tonic::Code;
    let code = match s.code() {
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::FailedPrecondition => StatusCode::CONFLICT,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut r = json_response(code, json!({"error": s.message()}));
    if code == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    r
}

impl Api {
    /// The caller's scope, from its `Authorization` header (everything without auth).
    fn scope(&self, headers: &HeaderMap) -> Result<Scope, tonic::Status> {
        match &self.auth {
            None => Ok(Scope::all("anonymous")),
            Some(a) => a.scope_for(
                headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok()),
            ),
        }
    }

    /// The caller's scope and the job a path names, or why not.
    fn caller(
        &self,
        headers: &HeaderMap,
        id: &str,
    ) -> Result<(Scope, rewind_common::JobId), tonic::Status> {
        let scope = self.scope(headers)?;
        let job = rewind_common::JobId::parse(id)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        Ok((scope, job))
    }

    fn request<T>(&self, headers: &HeaderMap, body: T) -> Result<tonic::Request<T>, tonic::Status> {
        let scope = self.scope(headers)?;
        let mut req = tonic::Request::new(body);
        req.extensions_mut().insert(scope);
        Ok(req)
    }
}

/// A job as the API shows it: `rewind status --json`'s object, with the summary once finished.
fn job_value(j: &pb::Job) -> Value {
    let mut v = crate::client::job_json(j);
    let r = j.request.clone().unwrap_or_default();
    v["kind"] = json!(if r.guard.is_some() {
        "guarded replay"
    } else if r.ingest.is_some() {
        "ingest"
    } else if r.repair.is_some() {
        "repair"
    } else if r.sink == "kafka" {
        "replay"
    } else {
        "recovery"
    });
    if !j.summary_json.is_empty()
        && let Ok(s) = serde_json::from_str::<Value>(&j.summary_json)
    {
        v["summary"] = s;
    }
    v
}

async fn list(State(api): State<Api>, headers: HeaderMap, Query(q): Query<ListQuery>) -> Response {
    let req = match api.request(
        &headers,
        pb::ListJobsRequest {
            page_size: q.page_size,
            page_token: q.page_token,
            state: q.state,
            org: q.org,
        },
    ) {
        Ok(r) => r,
        Err(s) => return error(s),
    };
    match api.service.list_jobs(req).await {
        Ok(r) => {
            let r = r.into_inner();
            json_response(
                StatusCode::OK,
                json!({
                    "jobs": r.jobs.iter().map(job_value).collect::<Vec<_>>(),
                    "next_page_token": r.next_page_token,
                }),
            )
        }
        Err(s) => error(s),
    }
}

async fn one(State(api): State<Api>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let req = match api.request(&headers, pb::GetJobRequest { job_id: id }) {
        Ok(r) => r,
        Err(s) => return error(s),
    };
    match api.service.get_job(req).await {
        Ok(j) => json_response(StatusCode::OK, job_value(&j.into_inner())),
        Err(s) => error(s),
    }
}

async fn shards(State(api): State<Api>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let (scope, job) = match api.caller(&headers, &id) {
        Ok(x) => x,
        Err(s) => return error(s),
    };
    match api.service.shard_views(&job, &scope).await {
        Ok(v) => json_response(StatusCode::OK, json!({ "shards": v })),
        Err(s) => error(s),
    }
}

/// The header an action must carry (see the module's doc).
const ACTION_HEADER: &str = "x-requested-by";

async fn cancel(State(api): State<Api>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if headers.get(ACTION_HEADER).and_then(|v| v.to_str().ok()) != Some("rewind") {
        return json_response(
            StatusCode::FORBIDDEN,
            json!({"error": "actions need the header X-Requested-By: rewind"}),
        );
    }
    let req = match api.request(&headers, pb::CancelJobRequest { job_id: id }) {
        Ok(r) => r,
        Err(s) => return error(s),
    };
    match api.service.cancel_job(req).await {
        Ok(j) => json_response(StatusCode::OK, job_value(&j.into_inner())),
        Err(s) => error(s),
    }
}

/// The status page (`ui.html`): served as it is, never framed, talking to this origin only.
pub async fn page() -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; frame-ancestors 'none'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        include_str!("ui.html"),
    )
        .into_response()
}

/// Failed records shown per reason.
const FIRST_PER_REASON: usize = 3;
/// Failed-record files read at most for them (the counts by reason come from the manifest).
const FAILED_FILES_READ: usize = 20;

/// A finished job's failed records grouped by code: the first few of each, with an excerpt of
/// their raw bytes, and where all of them are.
pub async fn first_failures(
    manifest: &rewind_common::lifecycle::JobManifest,
    s3: &rewind_common::S3Options,
) -> Result<Value, String> {
    let places = &manifest.spec.places;
    let store = rewind_s3::open_output(&places.failed, s3, rewind_common::location::JobSide::Dest)
        .await
        .map_err(|e| format!("opening the failed output: {e}"))?;
    let keys: Vec<String> = manifest
        .failed_files
        .iter()
        .take(FAILED_FILES_READ)
        .map(|f| f.key.clone())
        .collect();
    let groups = tokio::task::spawn_blocking(move || {
        let mut groups: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
        for key in keys {
            let Ok(Some(body)) = store.get(&key) else {
                continue;
            };
            for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let Ok(r) = serde_json::from_slice::<Value>(line) else {
                    continue;
                };
                let code = r["code"].as_str().unwrap_or("unknown").to_string();
                let first = groups.entry(code).or_default();
                if first.len() >= FIRST_PER_REASON {
                    continue;
                }
                let raw = r["raw"].as_str().map_or_else(
                    || "(binary: see raw_base64 in the file)".to_string(),
                    |t| t.chars().take(160).collect(),
                );
                first.push(json!({
                    "source_key": r["source_key"], "byte_offset": r["byte_offset"],
                    "reason": r["reason"], "raw_excerpt": raw, "file": key,
                }));
            }
        }
        groups
    })
    .await
    .map_err(|e| e.to_string())?;
    let job_prefix = rewind_common::OutputKeys::of(&manifest.spec).job_prefix();
    Ok(json!({
        "by_reason": manifest.failed_by_reason,
        "first": groups,
        "failed_output": places.failed.join(&job_prefix).to_string(),
    }))
}

async fn failures(State(api): State<Api>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let (scope, job) = match api.caller(&headers, &id) {
        Ok(x) => x,
        Err(s) => return error(s),
    };
    let (m, s3) = match api.service.job_manifest(&job, &scope).await {
        Ok(x) => x,
        Err(s) => return error(s),
    };
    match first_failures(&m, &s3).await {
        Ok(v) => json_response(StatusCode::OK, v),
        Err(e) => error(tonic::Status::unavailable(e)),
    }
}
