//! `rewind run`: the embedded mode. The same coordinator core (submit, drive, commit) and the
//! same worker loop as the distributed mode, in one process over the in-memory registry:
//! submit, run N worker slots, drive until the job ends, report.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rewind_common::lifecycle::{JobPhase, Limits, Summary};
use rewind_common::registry::JobRegistry;
use rewind_common::shard_store::{InMemoryShardStore, ShardCounts, ShardStore};
use rewind_common::{JobId, JobRequest, OutputKeys};
use rewind_coordinator::access::Scope;
use rewind_coordinator::core::Coordinator;
use rewind_worker::daemon::{DaemonConfig, run_daemon};
use rewind_worker::kafka::KafkaChecks;

use crate::{Failure, RunArgs};

pub fn run(args: RunArgs) -> Result<(), Failure> {
    let request = args.job.request()?;
    let (workers, runtime) = job_runtime(args.workers, 4)?;
    runtime.block_on(async {
        let summary = execute(request, workers, true).await?;
        report(&summary, args.json)
    })
}

/// The worker slots asked for (`--workers`, default the CPUs; 0 is refused) and a runtime with
/// blocking threads for them, plus `extra` for the caller's own blocking calls.
pub fn job_runtime(
    workers: Option<usize>,
    extra: usize,
) -> Result<(usize, tokio::runtime::Runtime), Failure> {
    if workers == Some(0) {
        return Err(Failure::BadRequest(
            "invalid --workers: must be at least 1".into(),
        ));
    }
    let workers = workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(workers * 2 + extra)
        .enable_all()
        .build()
        .map_err(|e| Failure::Job(format!("starting the runtime: {e}")))?;
    Ok((workers, runtime))
}

/// Runs one job in this process to its end; its summary (whatever its state), or why there is
/// none. `bar`: a progress bar on a terminal.
pub async fn execute(request: JobRequest, workers: usize, bar: bool) -> Result<Summary, Failure> {
    execute_as(request, workers, bar, None, true).await
}

/// [`execute`] under a job id the caller chose (recorded before the job runs). Not
/// `interruptible`: Ctrl-C and SIGTERM are the caller's to handle (the job runs to its end).
pub async fn execute_as(
    request: JobRequest,
    workers: usize,
    bar: bool,
    id: Option<JobId>,
    interruptible: bool,
) -> Result<Summary, Failure> {
    let registry = InMemoryShardStore::new();
    let core =
        Coordinator::new(registry.clone(), Arc::new(KafkaChecks)).with_limits(Limits::local());
    let span = tracing::info_span!("rewind.job", job_id = tracing::field::Empty);
    let local = Scope::all("local");
    let submitted = core.submit_as(request, &span, &local, id).await?;
    let job = submitted.job;

    // The worker loop of `rewind worker`, with N slots.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let ended = Arc::new(tokio::sync::Notify::new());
    let daemon = tokio::spawn(run_daemon(
        registry.clone(),
        DaemonConfig {
            id: "embedded".into(),
            slots: workers.min(submitted.shards.max(1) as usize),
            lease_ttl: Duration::from_secs(30),
            poll: Duration::from_millis(20),
            grace: Duration::from_secs(1),
            metrics: Default::default(),
            attempt_ended: Some(ended.clone()),
        },
        stopped,
    ));
    let bar = (bar && std::io::stderr().is_terminal())
        .then(|| progress_bar(registry.clone(), job.clone(), submitted.shards));

    // What the leader does, until the job has ended. Ctrl-C or SIGTERM cancels the job: its
    // attempts stop and discard what they wrote, and the job ends cancelled.
    let signal = rewind_cli::shutdown_signal();
    tokio::pin!(signal);
    let mut interrupted = false;
    let status = loop {
        if let Err(e) = core.drive_once(None).await {
            tracing::warn!(error = %e, "driving the job");
        }
        let status = registry
            .status(&job)
            .await
            .map_err(|e| Failure::Job(format!("job {job}: {e}")))?;
        if status.phase.finished() {
            break status;
        }
        tokio::select! {
            _ = &mut signal, if interruptible && !interrupted => {
                interrupted = true;
                eprintln!("interrupted: stopping job {job}");
                core.cancel(&job, &local).await?;
            }
            // The leader looks again when an attempt ends (its shard committed or failed), or
            // at the tick for what no attempt reports (a lease running out).
            _ = ended.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    };
    let _ = stop.send(true);
    if let Err(e) = daemon
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
    {
        tracing::warn!(error = %e, "stopping the workers");
    }
    if let Some((handle, stop)) = bar {
        stop.store(true, Ordering::Relaxed);
        let _ = handle.await;
    }
    if interrupted {
        return Err(sweep_interrupted(&registry, &job, status).await);
    }
    match status.summary {
        Some(summary) => Ok(summary),
        None => Err(Failure::Job(format!(
            "job {job} {}: {}",
            status.phase,
            status.message.unwrap_or_default()
        ))),
    }
}

/// After an interrupt: nothing a reader might glob stays behind without `_SUCCESS`. A Parquet
/// job's execution is removed from every output (data, failed and unrecoverable records,
/// manifests, plans); what a Kafka replay delivered stays in the topic, so its manifests stay
/// to say what that was.
async fn sweep_interrupted(
    registry: &InMemoryShardStore,
    job: &JobId,
    status: rewind_common::JobStatus,
) -> Failure {
    let record = match registry.record(job).await {
        Ok(r) => r,
        Err(e) => return Failure::Interrupted(format!("job {job} stopped; reading it: {e}")),
    };
    let spec = record.spec;
    let done = status.summary.as_ref().map_or(0, |s| s.shards_done);
    let total = status.shards;
    let stream = match &spec.sink {
        rewind_common::job::SinkSpec::Kafka(k) => Some(("topic", k.topic.as_str(), "Kafka")),
        rewind_common::job::SinkSpec::Kinesis(k) => {
            Some(("Kinesis stream", k.stream.as_str(), "Kinesis"))
        }
        rewind_common::job::SinkSpec::PubSub(p) => {
            Some(("Pub/Sub topic", p.topic.as_str(), "Pub/Sub"))
        }
        rewind_common::job::SinkSpec::Parquet => None,
    };
    if let Some((what, name, service)) = stream {
        let produced = status.summary.as_ref().map_or(0, |s| s.acknowledged);
        return Failure::Interrupted(format!(
            "job {job} stopped: {done} of {total} shards had committed; their {produced} records \
             stay in {what} {name} ({service} cannot take them back), and {} keeps the job's \
             manifest",
            spec.places.dest.join(&OutputKeys::new(job).job_prefix())
        ));
    }
    let outputs = match rewind_s3::open_outputs(&spec.places, &record.request.s3).await {
        Ok(o) => o,
        Err((what, e)) => {
            return Failure::Interrupted(format!(
                "job {job} stopped; opening the {what} to remove its partial output: {e}"
            ));
        }
    };
    let prefix = OutputKeys::new(job).job_prefix();
    let job_id = job.clone();
    let removed = tokio::task::spawn_blocking(move || {
        let mut removed = 0u64;
        for store in [&outputs.dest, &outputs.failed, &outputs.unrecoverable] {
            for o in store.list(&prefix)? {
                store.delete(&o.key)?;
                removed += 1;
            }
            let _ = store.sweep_unfinished(&prefix);
        }
        // Its change in the destination's log goes with it: nothing of the job took effect.
        rewind_common::change::forget_job(outputs.dest.as_ref(), job_id.as_str()).map_err(|e| {
            match e {
                rewind_common::change::ChangeError::Storage(s) => s,
                other => rewind_common::storage::StorageError::Denied {
                    what: "the destination's change log".into(),
                    why: other.to_string(),
                },
            }
        })?;
        Ok::<_, rewind_common::storage::StorageError>(removed)
    })
    .await;
    let place = spec.places.dest.join(&OutputKeys::new(job).job_prefix());
    match removed {
        Ok(Ok(n)) => Failure::Interrupted(format!(
            "job {job} stopped after {done} of {total} shards; its partial output ({n} objects \
             below {place} and its failed/unrecoverable outputs) was removed, nothing of it is kept"
        )),
        Ok(Err(e)) => Failure::Interrupted(format!(
            "job {job} stopped; removing its partial output below {place} failed: {e} (no \
             _SUCCESS was written; delete that prefix)"
        )),
        Err(e) => Failure::Interrupted(format!("job {job} stopped; removing its output: {e}")),
    }
}

/// Prints the summary (one JSON object with `--json`) and maps the job's state to the exit code.
pub fn report(summary: &Summary, json: bool) -> Result<(), Failure> {
    if json {
        println!("{}", serde_json::to_string(summary).unwrap_or_default());
    } else {
        for line in summary.human() {
            println!("{line}");
        }
    }
    match summary.state {
        JobPhase::Succeeded => Ok(()),
        JobPhase::Cancelled => Err(Failure::Job(format!(
            "job {} was cancelled",
            summary.job_id
        ))),
        _ => match &summary.guard {
            Some(g) => Err(Failure::Job(format!(
                "guarded replay {} failed: {} of {} days failed",
                summary.job_id,
                g.days.iter().filter(|d| d.state != "succeeded").count(),
                g.days.len()
            ))),
            None => Err(Failure::Job(format!(
                "job {} failed: {} of {} shards failed",
                summary.job_id, summary.shards_failed, summary.shards
            ))),
        },
    }
}

/// A live bar on the terminal: shards done, objects, events and MB/s from the registry (the
/// committed shards' counts and the live counters of attempts in flight, as `rewind watch`).
fn progress_bar(
    registry: InMemoryShardStore,
    job: JobId,
    total: u64,
) -> (tokio::task::JoinHandle<()>, Arc<AtomicBool>) {
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let handle = tokio::spawn(async move {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} shards {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let started = Instant::now();
        while !stop2.load(Ordering::Relaxed) {
            if let Ok(p) = registry.progress(&job).await {
                bar.set_position(p.done + p.failed);
            }
            if let Ok((done, live)) = registry.counts_snapshot(&job).await {
                let mut c = ShardCounts::default();
                done.iter().for_each(|d| c.add(&d.counts));
                live.iter().for_each(|l| c.add(l));
                let mb = c.bytes as f64 / 1e6;
                bar.set_message(format!(
                    "| {} objects | {} events | {:.1} MB/s",
                    c.objects,
                    c.recovered + c.filtered + c.failed + c.unrecoverable,
                    mb / started.elapsed().as_secs_f64().max(1e-3)
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bar.finish_and_clear();
    });
    (handle, stop)
}
