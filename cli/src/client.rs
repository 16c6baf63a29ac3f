//! The distributed mode's client commands: submit, status, watch, jobs, cancel, plan.

use std::io::IsTerminal;
use std::time::Duration;

use rewind_common::Summary;
use rewind_coordinator::convert::request_to_pb;
use rewind_proto::v1 as pb;
use rewind_proto::v1::job_service_client::JobServiceClient;
use serde_json::{Value, json};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::{Failure, JobArgs, Remote};

pub const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:50051";

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Job(format!("starting the runtime: {e}")))
}

/// Adds the bearer token, when one is configured, to every call.
#[derive(Clone)]
pub struct Token(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        // The caller's trace context (traceparent), when traces are exported.
        let mut headers = std::collections::HashMap::new();
        rewind_common::trace::inject(&tracing::Span::current(), &mut headers);
        for (k, v) in headers {
            if let (Ok(k), Ok(v)) = (
                tonic::metadata::MetadataKey::from_bytes(k.as_bytes()),
                v.parse(),
            ) {
                req.metadata_mut().insert(k, v);
            }
        }
        Ok(req)
    }
}

type Client = JobServiceClient<InterceptedService<Channel, Token>>;

fn token(remote: &Remote) -> Result<Token, Failure> {
    let raw = match (&remote.token_file, std::env::var("REWIND_TOKEN")) {
        (Some(path), _) => std::fs::read_to_string(path).map_err(|e| {
            Failure::BadRequest(format!("invalid --token-file {}: {e}", path.display()))
        })?,
        (None, Ok(t)) => t,
        (None, Err(_)) => return Ok(Token(None)),
    };
    let value = format!("Bearer {}", raw.trim())
        .parse()
        .map_err(|_| Failure::BadRequest("invalid token: not printable ASCII".into()))?;
    Ok(Token(Some(value)))
}

async fn connect(remote: &Remote) -> Result<Client, Failure> {
    let read = |flag: &str, p: &std::path::Path| {
        std::fs::read(p)
            .map_err(|e| Failure::BadRequest(format!("invalid {flag} {}: {e}", p.display())))
    };
    let tls = remote.tls_ca.is_some() || remote.coordinator.starts_with("https://");
    let url = if remote.coordinator.contains("://") {
        remote.coordinator.clone()
    } else if tls {
        format!("https://{}", remote.coordinator)
    } else {
        format!("http://{}", remote.coordinator)
    };
    let mut endpoint = Channel::from_shared(url.clone())
        .map_err(|e| Failure::BadRequest(format!("invalid --coordinator {url}: {e}")))?
        .connect_timeout(Duration::from_secs(5));
    if tls {
        let mut config = ClientTlsConfig::new().with_enabled_roots();
        if let Some(ca) = &remote.tls_ca {
            config = config.ca_certificate(Certificate::from_pem(read("--tls-ca", ca)?));
        }
        if let (Some(cert), Some(key)) = (&remote.tls_cert, &remote.tls_key) {
            config = config.identity(Identity::from_pem(
                read("--tls-cert", cert)?,
                read("--tls-key", key)?,
            ));
        }
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| Failure::BadRequest(format!("TLS configuration: {e}")))?;
    }
    let channel = endpoint.connect().await.map_err(|e| {
        let mut why = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            why = format!("{why}: {s}");
            source = s.source();
        }
        Failure::Job(format!(
            "cannot reach the coordinator at {url}: {why} (is rewind-coordinator running there?)"
        ))
    })?;
    Ok(JobServiceClient::with_interceptor(channel, token(remote)?))
}

fn status_failure(s: tonic::Status) -> Failure {
    match s.code() {
        tonic::Code::InvalidArgument | tonic::Code::NotFound => {
            Failure::BadRequest(s.message().to_string())
        }
        tonic::Code::Unavailable => {
            Failure::Job(format!("coordinator unavailable: {}", s.message()))
        }
        _ => Failure::Job(s.message().to_string()),
    }
}

/// Whether a job's state on the wire is a final phase.
fn finished(state: &str) -> bool {
    rewind_common::JobPhase::parse(state).is_some_and(rewind_common::JobPhase::finished)
}

/// A job as one JSON object (`status --json`, `jobs --json`).
pub fn job_json(j: &pb::Job) -> Value {
    let shards = j.shards.unwrap_or_default();
    let counts = j.counts.clone().unwrap_or_default();
    let request = j.request.clone().unwrap_or_default();
    json!({
        "job_id": j.job_id,
        "state": j.state,
        "org": request.org,
        // How it shares the workers' slots (docs/scheduling.md).
        "priority": request.priority.as_deref().filter(|p| !p.is_empty()).unwrap_or("normal"),
        "start": request.start,
        "end": request.end,
        "source": request.source,
        "dest": request.dest,
        "shards": {"total": shards.total, "pending": shards.pending, "running": shards.running,
                   "done": shards.done, "failed": shards.failed},
        "objects": counts.objects,
        "bytes": counts.bytes,
        "recovered": counts.recovered,
        "filtered": counts.filtered,
        "failed": counts.failed,
        "unrecoverable": counts.unrecoverable,
        "repaired": counts.repaired,
        "duplicates": counts.duplicates,
        "produced": counts.produced,
        "acknowledged": counts.acknowledged,
        "flows": counts.flows.iter().map(|(k, c)| (k.clone(), json!({
            "matched": c.matched, "repaired": c.repaired, "failed": c.failed,
            "unrecoverable": c.unrecoverable, "filtered": c.filtered})))
            .collect::<serde_json::Map<String, Value>>(),
        "events_per_s": (j.events_per_s * 10.0).round() / 10.0,
        "eta_s": if j.eta_s < 0.0 { Value::Null } else { json!((j.eta_s * 10.0).round() / 10.0) },
        "created_ms": j.created_ms,
        "finished_ms": if j.finished_ms == 0 { Value::Null } else { json!(j.finished_ms) },
        "message": j.message,
        "retry_of": if j.retry_of.is_empty() { Value::Null } else { json!(j.retry_of) },
        "failed_shards": j.failed_shards.iter().map(|f| json!({
            "shard": f.shard, "attempts": f.attempts, "reason": f.reason})).collect::<Vec<_>>(),
        "summary": serde_json::from_str::<Value>(&j.summary_json).unwrap_or(Value::Null),
    })
}

fn job_line(j: &pb::Job) -> String {
    let s = j.shards.unwrap_or_default();
    let c = j.counts.clone().unwrap_or_default();
    format!(
        "{}  {:<10}  shards {}/{} done, {} failed, {} running  events {} recovered, {} filtered, {} failed, {} unrecoverable{}",
        j.job_id,
        j.state,
        s.done,
        s.total,
        s.failed,
        s.running,
        c.recovered,
        c.filtered,
        c.failed,
        c.unrecoverable,
        if j.message.is_empty() {
            String::new()
        } else {
            format!("  ({})", j.message)
        }
    )
}

/// The end of a finished job: its summary (JSON or text) and the exit code it implies.
fn conclude(j: &pb::Job, as_json: bool) -> Result<(), Failure> {
    match serde_json::from_str::<Summary>(&j.summary_json) {
        Ok(summary) => crate::embedded::report(&summary, as_json),
        Err(_) => {
            if as_json {
                println!("{}", job_json(j));
            } else {
                println!("{}", job_line(j));
            }
            Err(Failure::Job(format!(
                "job {} {}: {}",
                j.job_id, j.state, j.message
            )))
        }
    }
}

async fn get_job(client: &mut Client, job_id: &str) -> Result<pb::Job, Failure> {
    Ok(client
        .get_job(pb::GetJobRequest {
            job_id: job_id.to_string(),
        })
        .await
        .map_err(status_failure)?
        .into_inner())
}

/// Follows a job to its end; with a terminal on stderr, as a progress bar.
async fn follow(client: &mut Client, job_id: &str) -> Result<pb::Job, Failure> {
    let mut stream = client
        .watch_job(pb::WatchJobRequest {
            job_id: job_id.to_string(),
        })
        .await
        .map_err(status_failure)?
        .into_inner();
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} shards {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    });
    let mut last = None;
    loop {
        match stream.message().await {
            Ok(Some(j)) => {
                if let Some(bar) = &bar {
                    let s = j.shards.unwrap_or_default();
                    let c = j.counts.clone().unwrap_or_default();
                    bar.set_length(s.total);
                    bar.set_position(s.done + s.failed);
                    bar.set_message(format!(
                        "| {} running | {} events | {:.0} ev/s | ETA {}",
                        s.running,
                        c.recovered + c.filtered + c.failed + c.unrecoverable,
                        j.events_per_s,
                        if j.eta_s < 0.0 {
                            "?".to_string()
                        } else {
                            format!("{:.0}s", j.eta_s)
                        }
                    ));
                }
                let done = finished(&j.state);
                last = Some(j);
                if done {
                    break;
                }
            }
            Ok(None) => break,
            Err(s) => {
                if let Some(bar) = &bar {
                    bar.finish_and_clear();
                }
                return Err(status_failure(s));
            }
        }
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    match last {
        Some(j) if finished(&j.state) => Ok(j),
        _ => {
            // The stream ended early (coordinator restarting): ask once more.
            let j = get_job(client, job_id).await?;
            if finished(&j.state) {
                Ok(j)
            } else {
                Err(Failure::Job(format!(
                    "lost the watch of job {job_id} while it was {}; see `rewind status {job_id}`",
                    j.state
                )))
            }
        }
    }
}

pub fn submit(
    remote: &Remote,
    job: &JobArgs,
    priority: Option<String>,
    wait: bool,
) -> Result<(), Failure> {
    let mut request = job.request()?;
    request.priority = priority;
    submit_request(remote, request, wait)
}

/// Submits a request (and with `wait`, follows it to its end and reports it).
pub fn submit_request(
    remote: &Remote,
    request: rewind_common::JobRequest,
    wait: bool,
) -> Result<(), Failure> {
    let as_json = remote.json;
    let span = tracing::info_span!("rewind.submit", org = %request.org, start = %request.start, end = %request.end);
    let request = request_to_pb(&request);
    runtime()?.block_on(tracing::Instrument::instrument(
        async {
            let mut client = connect(remote).await?;
            let resp = client
                .submit_job(pb::SubmitJobRequest { job: Some(request) })
                .await
                .map_err(status_failure)?
                .into_inner();
            if !wait {
                if as_json {
                    println!("{}", json!({"job_id": resp.job_id, "shards": resp.shards}));
                } else {
                    println!("{}", resp.job_id);
                }
                return Ok(());
            }
            if !as_json {
                eprintln!("submitted job {} ({} shards)", resp.job_id, resp.shards);
            }
            let j = follow_retrying(&mut client, &resp.job_id).await?;
            conclude(&j, as_json)
        },
        span,
    ))
}

/// Follows a job, reconnecting the watch a few times if the coordinator restarts meanwhile.
async fn follow_retrying(client: &mut Client, job_id: &str) -> Result<pb::Job, Failure> {
    let mut tries = 0;
    loop {
        match follow(client, job_id).await {
            Ok(j) => return Ok(j),
            Err(Failure::Job(why)) if tries < 30 => {
                tries += 1;
                tracing::warn!(error = %why, "watch interrupted; reconnecting");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

pub fn status(remote: &Remote, job_id: &str) -> Result<(), Failure> {
    let as_json = remote.json;
    runtime()?.block_on(async {
        let mut client = connect(remote).await?;
        let j = get_job(&mut client, job_id).await?;
        if as_json {
            println!("{}", job_json(&j));
        } else {
            println!("{}", job_line(&j));
            for f in &j.failed_shards {
                println!(
                    "  shard {} failed after {} attempts: {}",
                    f.shard, f.attempts, f.reason
                );
            }
        }
        Ok(())
    })
}

pub fn watch(remote: &Remote, job_id: &str) -> Result<(), Failure> {
    let as_json = remote.json;
    runtime()?.block_on(async {
        let mut client = connect(remote).await?;
        let j = follow_retrying(&mut client, job_id).await?;
        conclude(&j, as_json)
    })
}

pub fn jobs(args: &crate::JobsArgs) -> Result<(), Failure> {
    let remote = &args.remote;
    let as_json = remote.json;
    runtime()?.block_on(async {
        let mut client = connect(remote).await?;
        // Page by page (the coordinator caps a page), until the limit or the last page.
        let mut list = Vec::new();
        let mut token = String::new();
        while list.len() < args.limit {
            let page = client
                .list_jobs(pb::ListJobsRequest {
                    page_size: (args.limit - list.len()).min(500) as u32,
                    page_token: token.clone(),
                    state: args.state.clone().unwrap_or_default(),
                    org: args.org.clone().unwrap_or_default(),
                    created_after_ms: args.since.unwrap_or(0),
                    created_before_ms: args.until.unwrap_or(0),
                })
                .await
                .map_err(status_failure)?
                .into_inner();
            list.extend(page.jobs);
            token = page.next_page_token;
            if token.is_empty() {
                break;
            }
        }
        list.truncate(args.limit);
        // A reader that stops early (`rewind jobs | head`) closes the pipe: that ends the
        // listing, it is not an error (println! would panic on it).
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let written = if as_json {
            writeln!(out, "{}", Value::Array(list.iter().map(job_json).collect()))
        } else {
            list.iter()
                .try_for_each(|j| writeln!(out, "{}", job_line(j)))
        }
        .and_then(|()| out.flush());
        match written {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                Err(Failure::Job(format!("writing the list: {e}")))
            }
            _ => Ok(()),
        }
    })
}

pub fn cancel(remote: &Remote, job_id: &str) -> Result<(), Failure> {
    runtime()?.block_on(async {
        let mut client = connect(remote).await?;
        let j = client
            .cancel_job(pb::CancelJobRequest {
                job_id: job_id.to_string(),
            })
            .await
            .map_err(status_failure)?
            .into_inner();
        println!("{}", job_line(&j));
        Ok(())
    })
}

/// `rewind retry JOB --coordinator`: the retry job's id on stdout (its status as JSON with
/// `--json`), as `rewind submit` prints a job's.
pub fn retry(remote: &Remote, job_id: &str) -> Result<(), Failure> {
    runtime()?.block_on(async {
        let mut client = connect(remote).await?;
        let j = client
            .retry_job(pb::RetryJobRequest {
                job_id: job_id.to_string(),
            })
            .await
            .map_err(status_failure)?
            .into_inner();
        if remote.json {
            println!("{}", job_json(&j));
        } else {
            eprintln!(
                "retrying job {}: {} shard(s), as job {} (rewind watch {})",
                j.retry_of,
                j.shards.unwrap_or_default().total,
                j.job_id,
                j.job_id
            );
            println!("{}", j.job_id);
        }
        Ok(())
    })
}

pub fn plan(remote: &Remote, job: &JobArgs) -> Result<(), Failure> {
    let as_json = remote.json;
    let request = request_to_pb(&job.request()?);
    runtime()?.block_on(async {
        let mut client = connect(remote).await?;
        let p = client
            .plan_job(pb::PlanJobRequest { job: Some(request) })
            .await
            .map_err(status_failure)?
            .into_inner();
        if as_json {
            let shards: Vec<Value> = p
                .shards
                .iter()
                .map(|s| json!({"shard": s.shard, "prefix": s.prefix, "objects": s.objects, "bytes": s.bytes}))
                .collect();
            println!(
                "{}",
                json!({"shards": shards, "objects": p.objects, "bytes": p.bytes})
            );
        } else {
            for s in &p.shards {
                println!("{}  {}  {} objects  {} bytes", s.shard, s.prefix, s.objects, s.bytes);
            }
            println!(
                "{} shards, {} objects, {:.1} MB",
                p.shards.len(),
                p.objects,
                p.bytes as f64 / 1e6
            );
        }
        Ok(())
    })
}
