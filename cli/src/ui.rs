//! `rewind ui --dest D [--listen ADDR]`: the status page for runs without servers. The same page
//! as a coordinator's, over the same `/api/v1/` paths, answered from the destination itself:
//! its change log says which jobs wrote there (newest first), each job's manifest what it did
//! and how every shard ended, its changes and (guarded replays) its days. Read-only: no actions.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use clap::Args;
use rewind_common::OutputKeys;
use rewind_common::lifecycle::{JobManifest, Summary};
use rewind_common::storage::OutputStore;
use serde_json::{Value, json};

use crate::api::{ListQuery, json_response};

use crate::Failure;
use crate::changes::DestArgs;

#[derive(Debug, Args)]
pub struct UiArgs {
    #[command(flatten)]
    pub place: DestArgs,
    /// Where to serve the page.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
}

#[derive(Clone)]
struct Local {
    store: Arc<dyn OutputStore>,
    s3: rewind_common::S3Options,
}

pub fn run(args: UiArgs) -> Result<(), Failure> {
    let opened = crate::changes::open_plain_store(&args.place, "--dest")?;
    let local = Local {
        store: opened.store.clone(),
        s3: args.place.s3.options(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::Job(e.to_string()))?;
    runtime.block_on(async move {
        let app = axum::Router::new()
            .route("/", get(crate::api::page))
            .route("/ui", get(crate::api::page))
            .route("/api/v1/jobs", get(list))
            .route("/api/v1/jobs/{id}", get(one))
            .route("/api/v1/jobs/{id}/shards", get(shards))
            .route("/api/v1/jobs/{id}/failures", get(failures))
            .route("/api/v1/jobs/{id}/changes", get(changes))
            .route("/api/v1/jobs/{id}/guard", get(guard))
            .with_state(local);
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| Failure::BadRequest(format!("invalid --listen {}: {e}", args.listen)))?;
        eprintln!(
            "serving the status page of {} on http://{} (Ctrl-C stops)",
            args.place.dest, args.listen
        );
        axum::serve(listener, app)
            .with_graceful_shutdown(rewind_cli::shutdown_signal())
            .await
            .map_err(|e| Failure::Job(e.to_string()))
    })
}

fn not_found(what: String) -> Response {
    json_response(StatusCode::NOT_FOUND, json!({ "error": what }))
}

impl Local {
    /// Job ids that wrote here, newest first (from the change log; a job that made nothing
    /// visible has no change and is not shown).
    async fn job_ids(&self) -> Result<Vec<(String, String)>, String> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let log = rewind_common::change::Log::new(store.as_ref());
            // (job, its change), newest first.
            let mut ids: Vec<(String, String)> = log
                .changes()
                .map_err(|e| e.to_string())?
                .into_iter()
                .filter(|c| c.undoes.is_none() && c.retries.is_none())
                .filter_map(|c| Some((c.job?, c.id)))
                .collect();
            ids.dedup_by(|a, b| a.0 == b.0);
            ids.reverse();
            Ok(ids)
        })
        .await
        .map_err(|e| e.to_string())?
    }

    async fn manifest(&self, job: &str) -> Result<Option<JobManifest>, String> {
        let Ok(id) = rewind_common::JobId::parse(job) else {
            return Ok(None);
        };
        let store = self.store.clone();
        let key = OutputKeys::new(&id).job_manifest();
        tokio::task::spawn_blocking(move || match store.get(&key) {
            Ok(None) => Ok(None),
            Ok(Some(b)) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

/// A job as the page expects it (the coordinator API's shape), from its manifest.
fn job_value(m: &JobManifest) -> Value {
    let summary = Summary::new(&m.spec, m, std::time::Duration::ZERO);
    let failed = m.failed_shards.len() as u64;
    let kind = if m.spec.repair.is_some() {
        "repair"
    } else if m.spec.ingest {
        "ingest"
    } else if m.spec.sink.is_stream() {
        "replay"
    } else {
        "recovery"
    };
    json!({
        "job_id": m.job_id,
        "kind": kind,
        "state": m.state.as_str(),
        "org": summary.org,
        "start": summary.start,
        "end": summary.end,
        "source": summary.source,
        "dest": summary.dest,
        "shards": {"total": m.shards, "pending": m.shards.saturating_sub(m.shards_done + failed), "running": 0,
                   "done": m.shards_done, "failed": failed},
        "objects": summary.objects,
        "bytes": summary.bytes,
        "recovered": summary.recovered,
        "filtered": summary.filtered,
        "failed": summary.failed,
        "unrecoverable": summary.unrecoverable,
        "repaired": summary.repaired,
        "duplicates": summary.duplicates,
        "produced": summary.produced,
        "acknowledged": summary.acknowledged,
        "events_per_s": 0,
        "eta_s": null,
        "created_ms": null,
        "summary": summary,
    })
}

async fn list(State(l): State<Local>, Query(q): Query<ListQuery>) -> Response {
    let ids = match l.job_ids().await {
        Ok(ids) => ids,
        Err(e) => return json_response(StatusCode::SERVICE_UNAVAILABLE, json!({ "error": e })),
    };
    let (since, until) = match q.bounds() {
        Ok(b) => b,
        Err(e) => return json_response(StatusCode::BAD_REQUEST, json!({ "error": e })),
    };
    // A job id starts with when it was submitted (YYYYMMDD-HHMMSS, UTC).
    let submitted = |id: &str| {
        chrono::NaiveDateTime::parse_from_str(id.get(..15).unwrap_or(""), "%Y%m%d-%H%M%S")
            .map_or(0, |t| t.and_utc().timestamp_millis())
    };
    let ids: Vec<(String, String)> = ids
        .into_iter()
        .filter(|(id, _)| {
            let t = submitted(id);
            (since == 0 || t >= since) && (until == 0 || t < until)
        })
        .collect();
    let size = match q.page_size as usize {
        0 => 50,
        n => n.min(200),
    };
    let start = match q.page_token.as_str() {
        "" => 0,
        t => ids
            .iter()
            .position(|i| i.0 == t)
            .map_or(ids.len(), |p| p + 1),
    };
    let (mut jobs, mut next) = (Vec::new(), String::new());
    for (id, change) in &ids[start.min(ids.len())..] {
        if jobs.len() == size {
            next = jobs
                .last()
                .and_then(|j: &Value| j["job_id"].as_str())
                .unwrap_or_default()
                .to_string();
            break;
        }
        let Ok(Some(m)) = l.manifest(id).await else {
            continue;
        };
        let mut v = job_value(&m);
        v["summary"]["change"] = json!(change);
        if (!q.state.is_empty() && v["state"] != q.state.as_str())
            || (!q.org.is_empty() && v["org"] != q.org.as_str())
        {
            continue;
        }
        jobs.push(v);
    }
    json_response(
        StatusCode::OK,
        json!({ "jobs": jobs, "next_page_token": next }),
    )
}

async fn one(State(l): State<Local>, Path(id): Path<String>) -> Response {
    match l.manifest(&id).await {
        Ok(Some(m)) => json_response(StatusCode::OK, job_value(&m)),
        Ok(None) => not_found(format!("job {id} not found")),
        Err(e) => json_response(StatusCode::SERVICE_UNAVAILABLE, json!({ "error": e })),
    }
}

async fn shards(State(l): State<Local>, Path(id): Path<String>) -> Response {
    let m = match l.manifest(&id).await {
        Ok(Some(m)) => m,
        Ok(None) => return not_found(format!("job {id} not found")),
        Err(e) => return json_response(StatusCode::SERVICE_UNAVAILABLE, json!({ "error": e })),
    };
    let cells = rewind_coordinator::service::ShardView::of_manifest(&m);
    json_response(StatusCode::OK, json!({ "shards": cells }))
}

async fn failures(State(l): State<Local>, Path(id): Path<String>) -> Response {
    let m = match l.manifest(&id).await {
        Ok(Some(m)) => m,
        Ok(None) => return not_found(format!("job {id} not found")),
        Err(e) => return json_response(StatusCode::SERVICE_UNAVAILABLE, json!({ "error": e })),
    };
    match crate::api::first_failures(&m, &l.s3).await {
        Ok(v) => json_response(StatusCode::OK, v),
        Err(e) => json_response(StatusCode::SERVICE_UNAVAILABLE, json!({ "error": e })),
    }
}

/// Runs `f` on the destination (blocking) for a job id that parses.
async fn blocking<T: Send + 'static>(
    l: &Local,
    id: &str,
    f: impl FnOnce(&dyn OutputStore, &str) -> Result<Option<T>, String> + Send + 'static,
) -> Result<T, Response> {
    let id = rewind_common::JobId::parse(id)
        .map_err(|e| json_response(StatusCode::BAD_REQUEST, json!({"error": e.to_string()})))?;
    let store = l.store.clone();
    tokio::task::spawn_blocking(move || f(store.as_ref(), id.as_str()))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
        .map_err(|e| json_response(StatusCode::SERVICE_UNAVAILABLE, json!({ "error": e })))?
        .ok_or_else(|| not_found("not found".into()))
}

async fn changes(State(l): State<Local>, Path(id): Path<String>) -> Response {
    match blocking(&l, &id, |store, job| {
        crate::api::changes_value(store, job).map(Some)
    })
    .await
    {
        Ok(v) => json_response(StatusCode::OK, v),
        Err(r) => r,
    }
}

async fn guard(State(l): State<Local>, Path(id): Path<String>) -> Response {
    match blocking(&l, &id, crate::api::guard_value).await {
        Ok(v) => json_response(StatusCode::OK, v),
        Err(r) => r,
    }
}
