//! The coordinator's JSON API under `/api/v1/` (served with `/metrics` on `--metrics-listen`):
//! the same data as the gRPC `ListJobs` and `GetJob`, through the same service code, with the
//! same auth rules (a bearer token, and a scoped token sees only its tenants' jobs).
//!
//! - `GET /api/v1/jobs?page_size=N&page_token=T&state=S&org=O&since=T1&until=T2` →
//!   `{"jobs": [...], "next_page_token": "..."}` (newest first; the same paging as `rewind
//!   jobs`; `since`/`until` bound when jobs were submitted: `YYYY-MM-DD[THH[:MM]]` UTC or
//!   RFC 3339).
//! - `GET /api/v1/jobs/{id}` → the job (as `rewind status --json`), with its `summary` once it
//!   has finished.
//! - `GET /api/v1/jobs/{id}/shards` → `{"shards": [{"shard", "state", "attempts", "error"}]}`
//!   (a heat map's cells: from the registry while it runs, from its manifest once finished).
//! - `GET /` (or `/ui`): the status page, one self-contained HTML file (no CDN, no external font,
//!   vanilla JS) over this API: the jobs, and a job's heat map, counts, failures and cancel.
//! - `GET /api/v1/jobs/{id}/failures` → a finished job's failed records grouped by reason, the
//!   first few of each (source key, offset, reason, an excerpt of the raw bytes) and where the
//!   rest are.
//! - `GET /api/v1/jobs/{id}/throughput` → `{"samples": [{"t_ms", "events", "bytes"}]}`: the
//!   job's counters (committed + live) every few seconds while it runs, as this coordinator saw
//!   them (kept in memory: the last 30 minutes of the last 64 jobs).
//! - `GET /api/v1/jobs/{id}/changes` → the job's changes in its destination's log (its own, a
//!   retry's, their rollbacks), each with its state and whether it can be rolled back now.
//! - `GET /api/v1/jobs/{id}/guard` → a guarded replay's days, step by step.
//! - `POST /api/v1/jobs/{id}/cancel` → the job after the request.
//! - `POST /api/v1/jobs/{id}/retry` → the retry job (see `rewind retry --coordinator`).
//! - `POST /api/v1/jobs/{id}/rollback` → rolls back the job's newest applied change (a retry's
//!   before the job's own); the changes after it.
//!
//! Actions need a token allowed to act on the job's tenant and destination, and the header
//! `X-Requested-By: rewind`: a page on another site cannot send it without a CORS preflight this
//! server never answers, so a cross-site request can never act.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    samples: Samples,
}

/// Throughput samples by job: (ms since the epoch, events, input bytes), oldest first.
type Samples = Arc<Mutex<HashMap<String, VecDeque<(i64, u64, u64)>>>>;
/// How often, how long and for how many jobs samples are kept.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
const SAMPLES_KEPT: usize = 900;
const JOBS_SAMPLED: usize = 64;

/// Samples the newest [`JOBS_SAMPLED`] active jobs' counters every [`SAMPLE_EVERY`] for the
/// throughput plots.
async fn sample(service: JobServiceImpl<rewind_etcd::EtcdStore>, samples: Samples) {
    loop {
        tokio::time::sleep(SAMPLE_EVERY).await;
        let Ok(counts) = service.active_counts(JOBS_SAMPLED).await else {
            continue;
        };
        let now = rewind_common::lifecycle::now_ms();
        let mut map = samples.lock().unwrap_or_else(|p| p.into_inner());
        for (job, events, bytes) in counts {
            let q = map.entry(job.to_string()).or_default();
            q.push_back((now, events, bytes));
            while q.len() > SAMPLES_KEPT {
                q.pop_front();
            }
        }
        // Forget the jobs sampled longest ago.
        while map.len() > JOBS_SAMPLED {
            let oldest = map
                .iter()
                .min_by_key(|(_, q)| q.back().map_or(0, |s| s.0))
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => map.remove(&k),
                None => break,
            };
        }
    }
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
    /// Submitted at or after / before (`YYYY-MM-DD[THH[:MM]]` UTC or RFC 3339).
    #[serde(default)]
    pub since: String,
    #[serde(default)]
    pub until: String,
}

impl ListQuery {
    /// The time bounds in ms (0: none), or what is wrong with them.
    pub fn bounds(&self) -> Result<(i64, i64), String> {
        let parse = |name: &str, v: &str| match v {
            "" => Ok(0),
            v => rewind_cli::parse_instant(v).map_err(|e| format!("invalid {name}: {e}")),
        };
        Ok((parse("since", &self.since)?, parse("until", &self.until)?))
    }
}

/// The routes, for `serve_ops`; starts sampling the jobs' throughput (on the current runtime).
pub fn router(
    service: JobServiceImpl<rewind_etcd::EtcdStore>,
    auth: Option<rewind_cli::RequireToken>,
) -> axum::Router {
    let samples = Samples::default();
    tokio::spawn(sample(service.clone(), samples.clone()));
    axum::Router::new()
        .route("/", get(page))
        .route("/ui", get(page))
        .route("/api/v1/jobs", get(list))
        .route("/api/v1/jobs/{id}", get(one))
        .route("/api/v1/jobs/{id}/shards", get(shards))
        .route("/api/v1/jobs/{id}/failures", get(failures))
        .route("/api/v1/jobs/{id}/throughput", get(throughput))
        .route("/api/v1/jobs/{id}/changes", get(changes))
        .route("/api/v1/jobs/{id}/guard", get(guard))
        .route("/api/v1/jobs/{id}/cancel", post(cancel))
        .route("/api/v1/jobs/{id}/retry", post(retry))
        .route("/api/v1/jobs/{id}/rollback", post(rollback))
        .with_state(Api {
            service,
            auth,
            samples,
        })
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
    v["kind"] = json!(if !j.retry_of.is_empty() {
        "retry"
    } else if r.guard.is_some() {
        "guarded replay"
    } else if r.ingest.is_some() {
        "ingest"
    } else if r.repair.is_some() {
        "repair"
    } else if ["kafka", "kinesis", "pubsub"].contains(&r.sink.as_str()) {
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
    let (created_after_ms, created_before_ms) = match q.bounds() {
        Ok(b) => b,
        Err(e) => return error(tonic::Status::invalid_argument(e)),
    };
    let req = match api.request(
        &headers,
        pb::ListJobsRequest {
            page_size: q.page_size,
            page_token: q.page_token,
            state: q.state,
            org: q.org,
            created_after_ms,
            created_before_ms,
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
        Ok(j) => {
            let mut v = job_value(&j.into_inner());
            v["actions"] = json!(actions(&v));
            json_response(StatusCode::OK, v)
        }
        Err(s) => error(s),
    }
}

/// What the page may offer on a job in its state (the server decides when asked).
fn actions(job: &Value) -> Vec<&'static str> {
    let mut a = vec!["rollback"];
    match job["state"].as_str() {
        Some("running") => a.push("cancel"),
        Some("failed" | "cancelled")
            if matches!(job["kind"].as_str(), Some("recovery" | "replay" | "retry")) =>
        {
            a.push("retry")
        }
        _ => {}
    }
    a
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

/// Refuses an action without the header a cross-site request cannot carry.
fn action_refused(headers: &HeaderMap) -> Option<Response> {
    (headers.get(ACTION_HEADER).and_then(|v| v.to_str().ok()) != Some("rewind")).then(|| {
        json_response(
            StatusCode::FORBIDDEN,
            json!({"error": "actions need the header X-Requested-By: rewind"}),
        )
    })
}

async fn cancel(State(api): State<Api>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(r) = action_refused(&headers) {
        return r;
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

async fn retry(State(api): State<Api>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(r) = action_refused(&headers) {
        return r;
    }
    let req = match api.request(&headers, pb::RetryJobRequest { job_id: id }) {
        Ok(r) => r,
        Err(s) => return error(s),
    };
    match api.service.retry_job(req).await {
        Ok(j) => json_response(StatusCode::OK, job_value(&j.into_inner())),
        Err(s) => error(s),
    }
}

async fn throughput(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let (scope, job) = match api.caller(&headers, &id) {
        Ok(x) => x,
        Err(s) => return error(s),
    };
    // Visible to this caller?
    if let Err(s) = api.service.job_destination(&job, &scope).await {
        return error(s);
    }
    let samples: Vec<Value> = api
        .samples
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(job.as_str())
        .map(|q| {
            q.iter()
                .map(|(t, e, b)| json!({"t_ms": t, "events": e, "bytes": b}))
                .collect()
        })
        .unwrap_or_default();
    json_response(StatusCode::OK, json!({ "samples": samples }))
}

/// The changes in `store`'s log about job `job`: its own and a retry's, and the rollbacks and
/// re-applies of those, newest first; each with its state and whether it can be undone now.
/// Blocking.
pub fn job_changes(
    store: &dyn rewind_common::storage::OutputStore,
    job: &str,
) -> Result<Vec<rewind_common::change::Listed>, String> {
    let listed = rewind_common::change::Log::new(store)
        .list()
        .map_err(|e| e.to_string())?;
    let mine: std::collections::BTreeSet<String> = listed
        .iter()
        .filter(|l| l.change.job.as_deref() == Some(job))
        .map(|l| l.change.id.clone())
        .collect();
    Ok(listed
        .into_iter()
        .filter(|l| {
            mine.contains(&l.change.id)
                || l.change.target.as_ref().is_some_and(|t| mine.contains(t))
        })
        .collect())
}

/// A change as the page shows it (no per-object detail).
fn change_value(l: &rewind_common::change::Listed) -> Value {
    let c = &l.change;
    json!({
        "id": c.id, "kind": c.kind.to_string(), "at_ms": c.at_ms, "who": c.who,
        "state": l.state, "reversible": l.reversible, "why_not": l.why_not,
        "retries": c.retries, "undoes": c.undoes, "objects": c.objects.len(),
        "kafka": c.kafka.is_some(),
    })
}

/// The job's changes as `GET …/changes` answers them. Blocking.
pub fn changes_value(
    store: &dyn rewind_common::storage::OutputStore,
    job: &str,
) -> Result<Value, String> {
    let listed = job_changes(store, job)?;
    Ok(json!({
        "execution": job,
        "changes": listed.iter().map(change_value).collect::<Vec<_>>(),
    }))
}

/// A guarded replay's days as `GET …/guard` answers them (its state in the destination).
/// Blocking.
pub fn guard_value(
    store: &dyn rewind_common::storage::OutputStore,
    job: &str,
) -> Result<Option<Value>, String> {
    let key = format!("_rewind/guards/{job}.json");
    let Some(body) = store.get(&key).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let state: rewind_common::guard::GuardState =
        serde_json::from_slice(&body).map_err(|e| format!("{key}: {e}"))?;
    let days: Vec<Value> = state
        .days
        .iter()
        .map(|d| {
            json!({
                "day": d.day, "step": d.step, "ok": d.ok, "events": d.events,
                "objects": d.objects.values().map(Vec::len).sum::<usize>(),
                "segments": d.segments.values().map(Vec::len).sum::<usize>(),
                "replay_job": d.replay_job, "error": d.error,
                "started_ms": d.started_ms, "finished_ms": d.finished_ms,
            })
        })
        .collect();
    Ok(Some(
        json!({"stream": state.stream, "topic": state.topic, "days": days}),
    ))
}

/// Runs `f` on the job's destination (blocking), for a caller that may see the job.
async fn on_destination<T: Send + 'static>(
    api: &Api,
    headers: &HeaderMap,
    id: &str,
    f: impl FnOnce(
        &dyn rewind_common::storage::OutputStore,
        &rewind_common::JobRecord,
        &str,
        &Scope,
    ) -> Result<T, tonic::Status>
    + Send
    + 'static,
) -> Result<T, Response> {
    let (scope, job) = api.caller(headers, id).map_err(error)?;
    let (store, record, execution) = api
        .service
        .job_destination(&job, &scope)
        .await
        .map_err(error)?;
    tokio::task::spawn_blocking(move || f(store.as_ref(), &record, execution.as_str(), &scope))
        .await
        .map_err(|e| error(tonic::Status::internal(e.to_string())))?
        .map_err(error)
}

async fn changes(State(api): State<Api>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    match on_destination(&api, &headers, &id, |store, _, execution, _| {
        changes_value(store, execution).map_err(tonic::Status::unavailable)
    })
    .await
    {
        Ok(v) => json_response(StatusCode::OK, v),
        Err(r) => r,
    }
}

async fn guard(State(api): State<Api>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    match on_destination(&api, &headers, &id, |store, _, execution, _| {
        guard_value(store, execution)
            .map_err(tonic::Status::unavailable)?
            .ok_or_else(|| tonic::Status::not_found("not a guarded replay, or not started"))
    })
    .await
    {
        Ok(v) => json_response(StatusCode::OK, v),
        Err(r) => r,
    }
}

async fn rollback(State(api): State<Api>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(r) = action_refused(&headers) {
        return r;
    }
    let done = on_destination(&api, &headers, &id, |store, record, execution, scope| {
        use rewind_common::change::{self, ChangeError, ChangeKind, ChangeState};
        // Undoing a job's change writes its destination: the caller must be allowed to.
        scope
            .allows(&record.spec)
            .map_err(tonic::Status::permission_denied)?;
        let listed = job_changes(store, execution).map_err(tonic::Status::unavailable)?;
        // (Listed newest first.)
        let newest = listed
            .iter()
            .find(|l| {
                !matches!(l.change.kind, ChangeKind::Rollback | ChangeKind::Reapply)
                    && l.state == ChangeState::Applied
            })
            .ok_or_else(|| {
                tonic::Status::failed_precondition(format!(
                    "job {execution} has no applied change to roll back"
                ))
            })?;
        if !newest.reversible {
            return Err(tonic::Status::failed_precondition(format!(
                "change {} cannot be rolled back: {}",
                newest.change.id,
                newest.why_not.as_deref().unwrap_or("see rewind changes")
            )));
        }
        let done = change::rollback(store, Some(&newest.change.id), Some(&scope.subject)).map_err(
            |e| match e {
                ChangeError::Refused(w) | ChangeError::Conflict(w) => {
                    tonic::Status::failed_precondition(w)
                }
                ChangeError::NotFound(w) => tonic::Status::not_found(w),
                other => tonic::Status::unavailable(other.to_string()),
            },
        )?;
        let after = changes_value(store, execution).map_err(tonic::Status::unavailable)?;
        Ok(
            json!({"rolled_back": newest.change.id, "change": done.change.id,
                  "execution": execution, "changes": after["changes"]}),
        )
    })
    .await;
    match done {
        Ok(v) => {
            // The job whose execution it was now says how it stands (best effort: the rollback
            // itself is done and recorded).
            if let (Some(execution), Some(change)) =
                (v["execution"].as_str(), v["rolled_back"].as_str())
                && let Ok(job) = rewind_common::JobId::parse(execution)
                && let Err(e) = api.service.restate_after_rollback(&job, change).await
            {
                tracing::warn!(job = %job, error = %e.message(), "restating the job after a rollback");
            }
            json_response(StatusCode::OK, v)
        }
        Err(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use rewind_common::guard::{DayState, GuardState, Step};
    use rewind_common::storage::{LocalOutput, OutputStore};

    /// A guarded replay's state file becomes the page's days: steps, counts, the day's job.
    #[test]
    fn guard_days_are_read_from_the_state_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalOutput::new(dir.path());
        assert_eq!(
            super::guard_value(&store, "20240401-000000-abcd").unwrap(),
            None
        );
        let mut day = DayState {
            day: "2024-04-01".into(),
            step: Step::Restored,
            ..DayState::default()
        };
        day.objects
            .insert("raw".into(), vec![("a".into(), 1), ("b".into(), 2)]);
        day.segments.insert("druid".into(), vec!["s1".into()]);
        day.replay_job = Some("20240401-000001-beef".into());
        day.error = Some("2 shards failed".into());
        let state = GuardState {
            job: "20240401-000000-abcd".into(),
            stream: "events".into(),
            topic: "t".into(),
            days: vec![day],
        };
        store
            .put(
                "_rewind/guards/20240401-000000-abcd.json",
                &serde_json::to_vec(&state).unwrap(),
            )
            .unwrap();
        let v = super::guard_value(&store, "20240401-000000-abcd")
            .unwrap()
            .unwrap();
        let d = &v["days"][0];
        assert_eq!(d["step"], "restored", "{v}");
        assert_eq!(
            (d["objects"].as_u64(), d["segments"].as_u64()),
            (Some(2), Some(1))
        );
        assert_eq!(d["replay_job"], "20240401-000001-beef");
        assert_eq!(d["error"], "2 shards failed");
    }
}
