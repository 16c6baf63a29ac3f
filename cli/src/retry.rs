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
