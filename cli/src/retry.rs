//! `rewind retry JOB --dest D`: runs again only the shards of a finished job that did not
//! succeed, into the same execution; when they succeed the execution gets its complete manifest
//! and `_SUCCESS`. Shards that succeeded are never run again (a Kafka replay's are not produced
//! again). The retry is a change of its own in the destination's log, linked to the job's
//! (`retries`): a rollback removes what it added and brings the earlier manifest back.
//!
//! Steps: choose the change id and keep a copy of the job manifest under it, with a marker
//! (`_rewind/retry.json` in the execution) saying so; run the shards (the job's own plans, so
//! they read the objects the job pinned); commit every shard, old and new, as the job commit
//! does; record the change; drop the marker. A retry killed at any moment is finished by running
//! it again: before the commit it runs the shards again; after it, it records the change.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use rewind_common::JobRegistry;
use rewind_common::change::{self, Retried};
use rewind_common::lifecycle::{JobManifest, JobPhase, JobStatus, Summary, now_ms};
use rewind_common::shard_store::{InMemoryShardStore, ShardDone, ShardState, ShardStore};
use rewind_common::storage::{ObjectMeta, OutputStore};
use rewind_common::{JobId, JobRecord, JobRequest, OutputKeys, ShardId};
use rewind_worker::daemon::{DaemonConfig, run_daemon};
use serde::{Deserialize, Serialize};

use crate::Failure;
use crate::changes::DestArgs;

#[derive(Debug, Args)]
pub struct RetryArgs {
    /// The finished job whose failed shards to run again.
    pub job: String,
    #[command(flatten)]
    pub place: DestArgs,
    /// Shards processed in parallel (default: the number of CPUs).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Instead of failed shards: feed the job's failed records (their raw bytes, from its
    /// failed output) through decoding and `--flows` again, as a new job into the same
    /// destination; what still fails is a new failed set; the original set is marked handled.
    #[arg(long)]
    pub failed_events: bool,
    /// With --failed-events: the flows to apply (default: the job's own).
    #[arg(long, value_name = "FILE", requires = "failed_events")]
    pub flows: Option<std::path::PathBuf>,
}

/// A retry under way: its change id and the job manifest it started from.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Marker {
    change: String,
    manifest: ObjectMeta,
}

fn blocking_err(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::Job(format!("{what}: {e}"))
}

pub fn run(args: RetryArgs) -> Result<(), Failure> {
    let bad = Failure::BadRequest;
    let job = JobId::parse(&args.job).map_err(|e| bad(format!("invalid JOB: {e}")))?;
    let opened = crate::changes::open_plain_store(&args.place, "--dest")?;
    let store = opened.store.clone();
    let keys = OutputKeys::new(&job);
    let (manifest_key, marker_key) = (
        keys.job_manifest(),
        format!("{}_rewind/retry.json", keys.job_prefix()),
    );
    let get = |key: &str| store.get(key).map_err(|e| blocking_err(key, e));
    let body = get(&manifest_key)?.ok_or_else(|| {
        bad(format!(
            "invalid JOB: no finished job {job} in {} (no {manifest_key})",
            args.place.dest
        ))
    })?;
    let manifest: JobManifest =
        serde_json::from_slice(&body).map_err(|e| blocking_err(&manifest_key, e))?;
    let spec = manifest.spec.clone();
    if args.failed_events {
        return failed_events(&args, &job, &manifest);
    }
    let marker: Option<Marker> = match get(&marker_key)? {
        None => None,
        Some(b) => Some(serde_json::from_slice(&b).map_err(|e| blocking_err(&marker_key, e))?),
    };
    let now = store
        .head(&manifest_key)
        .map_err(|e| blocking_err(&manifest_key, e))?
        .ok_or_else(|| Failure::Job(format!("{manifest_key} is gone")))?;
    // Killed after its commit rewrote the manifest: only the change is left to record.
    if let Some(m) = &marker
        && !same(&m.manifest, &now)
    {
        let summary = record(&store, &job, m, &manifest, None)?;
        return crate::embedded::report(&summary, args.place.json);
    }
    if manifest.state == JobPhase::Succeeded {
        return Err(bad(format!(
            "invalid JOB: job {job} succeeded: every shard is done, nothing to retry"
        )));
    }
    if spec.repair.is_some()
        || spec.ingest
        || spec.guard.is_some()
        || !spec.table_format.is_parquet()
    {
        return Err(bad(format!(
            "invalid JOB: job {job} is a repair, an ingest, a guarded replay or a table job: \
             rewind retry runs recoveries and replays"
        )));
    }
    // Every shard the job planned, and those done.
    let plans = store
        .list(&keys.plan_prefix())
        .map_err(|e| blocking_err("listing the job's plans", e))?;
    let all: Vec<ShardId> = plans
        .iter()
        .filter_map(|o| {
            let name = o.key.rsplit('/').next()?.strip_suffix(".json")?;
            ShardId::parse(name).ok()
        })
        .collect();
    let done: BTreeSet<String> = manifest.attempts.keys().cloned().collect();
    let todo: Vec<ShardId> = all
        .iter()
        .copied()
        .filter(|s| !done.contains(&s.to_string()))
        .collect();
    if todo.is_empty() {
        return Err(bad(format!(
            "invalid JOB: every shard of job {job} is done; nothing to retry"
        )));
    }
    // The change id first, the manifest kept under it, the marker last.
    let marker = match marker {
        Some(m) => m,
        None => {
            let id =
                change::new_change_id(store.as_ref()).map_err(|e| blocking_err("the log", e))?;
            store
                .put(&change::kept_key(&id, &manifest_key), &body)
                .map_err(|e| blocking_err("keeping the job manifest", e))?;
            let m = Marker {
                change: id,
                manifest: now,
            };
            let b = serde_json::to_vec(&m).unwrap_or_default();
            store
                .put(&marker_key, &b)
                .map_err(|e| blocking_err(&marker_key, e))?;
            m
        }
    };
    if !args.place.json {
        eprintln!(
            "retrying job {job}: {} of {} shards ({} done stay)",
            todo.len(),
            all.len(),
            done.len()
        );
    }
    let started = Instant::now();
    let (workers, runtime) = crate::embedded::job_runtime(args.workers, 8)?;
    let s3 = args.place.s3.options();
    let states = runtime.block_on(run_shards(&manifest, &todo, s3.clone(), workers))?;
    // Commit every shard, old and new, as the job commit does.
    let mut all_states: Vec<(ShardId, ShardState)> = states;
    for (shard, attempt) in &manifest.attempts {
        let Ok(id) = ShardId::parse(shard) else {
            continue;
        };
        all_states.push((
            id,
            ShardState::Done(ShardDone {
                attempt: *attempt,
                manifest_key: keys.shard_manifest(id, *attempt),
                counts: Default::default(),
            }),
        ));
    }
    all_states.sort_by_key(|(s, _)| *s);
    let committed = runtime.block_on(async {
        let outputs = rewind_s3::open_outputs(&spec.places, &s3)
            .await
            .map_err(|(what, e)| blocking_err(&format!("opening the {what}"), e))?;
        let spec = spec.clone();
        tokio::task::spawn_blocking(move || {
            rewind_coordinator::commit::commit_job(
                &spec,
                &all_states,
                outputs.dest.as_ref(),
                &outputs.sides(),
            )
        })
        .await
        .map_err(|e| blocking_err("the commit", e))?
        .map_err(|e| blocking_err("committing the retry", e))
    })?;
    // A test hook: die between the commit and the change (a rerun records it).
    if rewind_common::failpoint("retry-committed-then-die") {
        std::process::abort();
    }
    let summary = record(&store, &job, &marker, &committed, Some(started))?;
    crate::embedded::report(&summary, args.place.json)
}

/// Whether two listings describe the same content.
fn same(a: &ObjectMeta, b: &ObjectMeta) -> bool {
    a.size == b.size && a.etag == b.etag && a.version == b.version
}

/// Records the retry's change and drops the marker; the summary of the job as it now is.
fn record(
    store: &Arc<dyn OutputStore>,
    job: &JobId,
    marker: &Marker,
    now: &JobManifest,
    started: Option<Instant>,
) -> Result<Summary, Failure> {
    let keys = OutputKeys::new(job);
    // What the earlier manifest listed, to know what the retry added.
    let kept = change::kept_key(&marker.change, &keys.job_manifest());
    let before: Option<JobManifest> = store
        .get(&kept)
        .map_err(|e| blocking_err(&kept, e))?
        .and_then(|b| serde_json::from_slice(&b).ok());
    let listed = |m: &JobManifest| -> BTreeSet<String> {
        m.files
            .iter()
            .chain(&m.failed_files)
            .chain(&m.unrecoverable_files)
            .map(|f| f.key.clone())
            .collect()
    };
    let old = before.as_ref().map(listed).unwrap_or_default();
    let mut added: Vec<String> = listed(now).difference(&old).cloned().collect();
    if now.state == JobPhase::Succeeded {
        added.push(keys.success_marker());
    }
    let original = change::job_change(store.as_ref(), job.as_str())
        .ok()
        .flatten()
        .map(|c| c.id);
    let c = change::record_retry(
        store.as_ref(),
        &marker.change,
        Retried {
            job: job.to_string(),
            original,
            manifest_key: keys.job_manifest(),
            manifest_before: marker.manifest.clone(),
            added,
            spec: serde_json::to_value(&now.spec).ok(),
            counts: Some(now.counts.clone()),
        },
    )
    .map_err(|e| blocking_err("recording the retry", e))?;
    store
        .delete(&format!("{}_rewind/retry.json", keys.job_prefix()))
        .map_err(|e| blocking_err("the retry marker", e))?;
    eprintln!("recorded as change {} (rewind rollback {})", c.id, c.id);
    let elapsed = started.map_or(Duration::ZERO, |s| s.elapsed());
    Ok(Summary::new(&now.spec, now, elapsed))
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
    let daemon = tokio::spawn(run_daemon(
        registry.clone(),
        DaemonConfig {
            id: "retry".into(),
            slots: workers.min(todo.len().max(1)),
            lease_ttl: Duration::from_secs(30),
            poll: Duration::from_millis(20),
            grace: Duration::from_secs(1),
            metrics: Default::default(),
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
        tokio::time::sleep(Duration::from_millis(20)).await;
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
fn failed_events(args: &RetryArgs, job: &JobId, manifest: &JobManifest) -> Result<(), Failure> {
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
    let s3 = args.place.s3.options();
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
    if !args.place.json {
        eprintln!("retrying {records} failed records of job {job}");
    }
    let (workers, runtime) = crate::embedded::job_runtime(args.workers, 8)?;
    let summary = runtime.block_on(crate::embedded::execute(request, workers, !args.place.json))?;
    // Marked handled only once the new job has committed: its change is linked to the job's.
    let original = change::job_change(failed_store.as_ref(), job.as_str())
        .ok()
        .flatten()
        .map(|c| c.id);
    let mark = serde_json::json!({"by": summary.job_id, "job_change": original}).to_string();
    failed_store
        .put(&handled, mark.as_bytes())
        .map_err(|e| blocking_err(&handled, e))?;
    if !args.place.json {
        eprintln!(
            "job {}: {} of {records} failed records recovered, {} failed again (the new failed \
             set), the old set marked handled",
            summary.job_id, summary.recovered, summary.failed
        );
    }
    crate::embedded::report(&summary, args.place.json)
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
