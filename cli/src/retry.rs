//! `rewind retry JOB --dest D`: runs again only the shards of a finished job that did not
//! succeed, into the same execution; when they succeed the execution gets its complete manifest
//! and `_SUCCESS`. Shards that succeeded are never run again (a Kafka replay's are not produced
//! again). The retry is a change of its own in the destination's log, linked to the job's
//! (`retries`): a rollback removes what it added and brings the earlier manifest back.
//!
//! The steps (prepare, run the shards with the job's own plans, complete) are
//! `rewind_coordinator::retry`'s, shared with a coordinator's retry job (`--coordinator`: the
//! workers run the shards, the leader completes it). A retry killed at any moment is finished
//! by running it again.

use std::time::{Duration, Instant};

use clap::Args;
use rewind_common::JobRegistry;
use rewind_common::change;
use rewind_common::lifecycle::{JobManifest, JobPhase, JobStatus, Summary, now_ms};
use rewind_common::shard_store::{InMemoryShardStore, ShardState, ShardStore};
use rewind_common::{JobId, JobRecord, JobRequest, OutputKeys, ShardId};
use rewind_coordinator::retry::{self, Prepared, RetryError};
use rewind_worker::daemon::{DaemonConfig, run_daemon};

use crate::Failure;
use crate::changes::DestArgs;

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("place").required(true).args(["dest", "coordinator"]))]
pub struct RetryArgs {
    /// The finished job whose failed shards to run again.
    pub job: String,
    /// The job's destination (a directory, s3://…, gs://… or az://…): the retry runs in this process.
    #[arg(long)]
    pub dest: Option<String>,
    /// A coordinator: the retry is a job of its own there (`rewind watch` it), its shards run by
    /// the workers into the job's execution.
    #[arg(long, conflicts_with_all = ["workers", "failed_events"])]
    pub coordinator: Option<String>,
    #[command(flatten)]
    pub reach: crate::CoordinatorAuth,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub s3: crate::S3Args,
    /// Shards processed in parallel (default: the number of CPUs).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Instead of failed shards: feed the job's failed records (their raw bytes, from its
    /// failed output) through decoding and `--flows` again, as a new job into the same
    /// destination; what still fails is a new failed set; the original set is marked handled.
    #[arg(long, requires = "dest")]
    pub failed_events: bool,
    /// With --failed-events: the flows to apply (default: the job's own).
    #[arg(long, value_name = "FILE", requires = "failed_events")]
    pub flows: Option<std::path::PathBuf>,
}

fn blocking_err(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::Job(format!("{what}: {e}"))
}

/// A retry's error as the command's: the request's fault (exit 2) or the job's.
fn retry_failure(e: RetryError) -> Failure {
    match e {
        RetryError::Refused(why) => Failure::BadRequest(format!("invalid JOB: {why}")),
        other => Failure::Job(other.to_string()),
    }
}

pub fn run(args: RetryArgs) -> Result<(), Failure> {
    let bad = Failure::BadRequest;
    let job = JobId::parse(&args.job).map_err(|e| bad(format!("invalid JOB: {e}")))?;
    if let Some(coordinator) = &args.coordinator {
        let remote = crate::Remote::to(coordinator, &args.reach, args.json);
        return crate::client::retry(&remote, job.as_str());
    }
    let place = DestArgs {
        dest: args.dest.clone().unwrap_or_default(),
        json: args.json,
        s3: args.s3.clone(),
    };
    let opened = crate::changes::open_plain_store(&place, "--dest")?;
    let store = opened.store.clone();
    if args.failed_events {
        let key = OutputKeys::new(&job).job_manifest();
        let body = store
            .get(&key)
            .map_err(|e| blocking_err(&key, e))?
            .ok_or_else(|| {
                bad(format!(
                    "invalid JOB: no finished job {job} in {} (no {key})",
                    place.dest
                ))
            })?;
        let manifest: JobManifest =
            serde_json::from_slice(&body).map_err(|e| blocking_err(&key, e))?;
        return failed_events(&args, &place, &job, &manifest);
    }
    let (mark, todo, total, manifest) =
        match retry::prepare(store.as_ref(), &job).map_err(retry_failure)? {
            // Killed after its commit rewrote the manifest: only the change is left to record.
            Prepared::Record { mark, manifest } => {
                let c = retry::record(store.as_ref(), &job, &mark, &manifest, None)
                    .map_err(retry_failure)?;
                eprintln!("recorded as change {} (rewind rollback {})", c.id, c.id);
                let summary = Summary::new(&manifest.spec, &manifest, Duration::ZERO);
                return crate::embedded::report(&summary, args.json);
            }
            Prepared::Run {
                mark,
                todo,
                total,
                manifest,
            } => (mark, todo, total, manifest),
        };
    if !args.json {
        eprintln!(
            "retrying job {job}: {} of {total} shards ({} done stay)",
            todo.len(),
            total - todo.len()
        );
    }
    let started = Instant::now();
    let (workers, runtime) = crate::embedded::job_runtime(args.workers, 8)?;
    let s3 = args.s3.options();
    let states = runtime.block_on(run_shards(&manifest, &todo, s3.clone(), workers))?;
    let spec = manifest.spec.clone();
    let (committed, c) = runtime.block_on(async {
        let outputs = rewind_s3::open_outputs(&spec.places, &s3)
            .await
            .map_err(|(what, e)| blocking_err(&format!("opening the {what}"), e))?;
        tokio::task::spawn_blocking(move || {
            retry::complete(
                outputs.dest.as_ref(),
                &outputs.sides(),
                &spec,
                &mark,
                &states,
                false,
                None,
            )
        })
        .await
        .map_err(|e| blocking_err("the commit", e))?
        .map_err(retry_failure)
    })?;
    eprintln!("recorded as change {} (rewind rollback {})", c.id, c.id);
    let summary = Summary::new(&committed.spec, &committed, started.elapsed());
    crate::embedded::report(&summary, args.json)
}

/// Runs `todo` (shards of the job `manifest` describes) in this process; their final states.
async fn run_shards(
    manifest: &JobManifest,
    todo: &[ShardId],
    s3: rewind_common::S3Options,
    workers: usize,
) -> Result<Vec<(ShardId, ShardState)>, Failure> {
    let spec = manifest.spec.clone();
    let job = spec.job.clone();
    let registry = InMemoryShardStore::new();
    let record = JobRecord {
        spec: spec.clone(),
        request: JobRequest {
            s3,
            ..JobRequest::default()
        },
        created_ms: now_ms(),
        trace_parent: None,
        submitted_by: Some("retry".into()),
        retry: None,
    };
    let status = JobStatus {
        phase: JobPhase::Running,
        org: spec.org.to_string(),
        shards: todo.len() as u64,
        created_ms: now_ms(),
        finished_ms: None,
        message: None,
        summary: None,
    };
    registry
        .submit(&record, &status, todo)
        .await
        .map_err(|e| blocking_err("registering the retry", e))?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let ended = std::sync::Arc::new(tokio::sync::Notify::new());
    let daemon = tokio::spawn(run_daemon(
        registry.clone(),
        DaemonConfig {
            id: "retry".into(),
            slots: workers.min(todo.len().max(1)),
            lease_ttl: Duration::from_secs(30),
            poll: Duration::from_millis(20),
            grace: Duration::from_secs(1),
            metrics: Default::default(),
            attempt_ended: Some(ended.clone()),
        },
        stopped,
    ));
    loop {
        let p = registry
            .progress(&job)
            .await
            .map_err(|e| blocking_err("the retry's progress", e))?;
        if p.finished() {
            break;
        }
        // An attempt's end is when progress moves; the tick covers what a worker does not
        // report (a lease running out).
        let _ = tokio::time::timeout(Duration::from_millis(20), ended.notified()).await;
    }
    let _ = stop.send(true);
    let _ = daemon.await;
    registry
        .shards(&job)
        .await
        .map_err(|e| blocking_err("the retry's shards", e))
}

/// The mark a failed set gets once it was retried (`_HANDLED` in it): by which job.
const HANDLED: &str = "_HANDLED";

/// `--failed-events`: the job's failed records become a small archive again (each under the
/// object it came from, so every event keeps its hour), which a new job of the same request —
/// with `--flows` if given — reads into the same destination. The original failed set is then
/// marked handled, so its events can never be recovered twice.
fn failed_events(
    args: &RetryArgs,
    place: &DestArgs,
    job: &JobId,
    manifest: &JobManifest,
) -> Result<(), Failure> {
    use base64::Engine as _;
    let bad = Failure::BadRequest;
    let spec = &manifest.spec;
    if !matches!(spec.sink, rewind_common::job::SinkSpec::Parquet)
        || spec.repair.is_some()
        || spec.ingest
        || !spec.table_format.is_parquet()
    {
        return Err(bad(format!(
            "invalid --failed-events: job {job} is not a recovery into Parquet (not yet)"
        )));
    }
    let s3 = place.s3.options();
    let (_, runtime) = crate::embedded::job_runtime(args.workers, 8)?;
    let failed_store = runtime
        .block_on(rewind_s3::open_output(
            &spec.places.failed,
            &s3,
            rewind_common::location::JobSide::Dest,
        ))
        .map_err(|e| blocking_err("opening the failed output", e))?;
    let prefix = OutputKeys::new(job).job_prefix();
    let handled = format!("{prefix}{HANDLED}");
    if let Some(b) = failed_store
        .get(&handled)
        .map_err(|e| blocking_err(&handled, e))?
    {
        return Err(bad(format!(
            "invalid --failed-events: the failed records of job {job} were retried already \
             ({})",
            String::from_utf8_lossy(&b).trim()
        )));
    }
    // The raw bytes of every failed record, by the object it came from, in offset order.
    let mut by_object: std::collections::BTreeMap<String, Vec<(u64, Vec<u8>)>> = Default::default();
    let mut records = 0u64;
    for f in &manifest.failed_files {
        let body = failed_store
            .get(&f.key)
            .map_err(|e| blocking_err(&f.key, e))?
            .ok_or_else(|| Failure::Job(format!("failed records {} are gone", f.key)))?;
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let r: serde_json::Value =
                serde_json::from_slice(line).map_err(|e| blocking_err(&f.key, e))?;
            let raw = match (r["raw"].as_str(), r["raw_base64"].as_str()) {
                (Some(t), _) => t.as_bytes().to_vec(),
                (None, Some(b)) => base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .map_err(|e| blocking_err(&f.key, e))?,
                _ => continue,
            };
            if r["raw_truncated"].as_bool() == Some(true) {
                // Only an excerpt was kept: it cannot recover; it stays failed (reported).
                eprintln!(
                    "skipping a truncated record of {} at {}",
                    r["source_key"], r["byte_offset"]
                );
                continue;
            }
            let key = r["source_key"].as_str().unwrap_or("unknown").to_string();
            let offset = r["byte_offset"].as_u64().unwrap_or(0);
            by_object.entry(key).or_default().push((offset, raw));
            records += 1;
        }
    }
    if records == 0 {
        return Err(bad(format!(
            "invalid --failed-events: job {job} has no failed records to retry"
        )));
    }
    let scratch = Scratch::new(job)?;
    for (key, mut events) in by_object {
        events.sort_by_key(|(o, _)| *o);
        let path = scratch.path().join(&key);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| blocking_err("the scratch archive", e))?;
        }
        let mut body = Vec::new();
        for (_, raw) in events {
            body.extend_from_slice(&raw);
            body.push(b'\n');
        }
        std::fs::write(&path, body).map_err(|e| blocking_err("the scratch archive", e))?;
    }
    let flows = match &args.flows {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| bad(format!("invalid --flows: cannot read {}: {e}", p.display())))?,
        ),
        None => spec.treatment.flows.clone(),
    };
    let t = &spec.treatment;
    let request = JobRequest {
        source: scratch.path().display().to_string(),
        org: spec.org.to_string(),
        start: spec.range.first.to_string(),
        end: spec.range.last.to_string(),
        dest: spec.places.dest.to_string(),
        layout: spec.layout.template().to_string(),
        arrival_filter: spec.arrival_filter,
        failed_output: Some(spec.places.failed.to_string()),
        unrecoverable_output: Some(spec.places.unrecoverable.to_string()),
        max_event_bytes: spec.max_event_bytes,
        max_attempts: spec.max_attempts,
        max_range_hours: u64::MAX,
        event_types: t.event_types.clone(),
        domains: t.domains.clone(),
        filter: t.filter.clone(),
        flows,
        partition_by: spec.partition_by.clone(),
        s3,
        ..JobRequest::default()
    };
    if !place.json {
        eprintln!("retrying {records} failed records of job {job}");
    }
    let (workers, runtime) = crate::embedded::job_runtime(args.workers, 8)?;
    let summary = runtime.block_on(crate::embedded::execute(request, workers, !place.json))?;
    // Marked handled only once the new job has committed: its change is linked to the job's.
    let original = change::job_change(failed_store.as_ref(), job.as_str())
        .ok()
        .flatten()
        .map(|c| c.id);
    let mark = serde_json::json!({"by": summary.job_id, "job_change": original}).to_string();
    failed_store
        .put(&handled, mark.as_bytes())
        .map_err(|e| blocking_err(&handled, e))?;
    if !place.json {
        eprintln!(
            "job {}: {} of {records} failed records recovered, {} failed again (the new failed \
             set), the old set marked handled",
            summary.job_id, summary.recovered, summary.failed
        );
    }
    crate::embedded::report(&summary, place.json)
}

/// A scratch directory, removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(job: &JobId) -> Result<Scratch, Failure> {
        let dir = std::env::temp_dir().join(format!(
            "rewind-retry-{job}-{}-{}",
            std::process::id(),
            now_ms()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| blocking_err("a scratch directory", e))?;
        Ok(Scratch(dir))
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
