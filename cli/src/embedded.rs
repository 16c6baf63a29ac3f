//! `rewind run`: the embedded mode. The same planning, worker loop and job commit as the
//! distributed mode, wired together in one process with the in-memory shard store.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rewind_common::shard_store::{InMemoryShardStore, ShardStore};
use rewind_common::storage::{OutputStore, StorageError};
use rewind_common::{JobId, JobRequest, JobSpec, OutputKeys};
use rewind_coordinator::commit::{JobState, commit_job};
use rewind_coordinator::plan::pin;
use rewind_coordinator::summary::Summary;
use rewind_worker::decode::DecoderConfig;
use rewind_worker::pipeline::{Pins, Progress, ShardEnv};
use rewind_worker::run::{WorkerConfig, work_job};

use crate::{Failure, RunArgs};

fn validate(args: &RunArgs) -> Result<(JobRequest, JobSpec), Failure> {
    let request = args.job.request()?;
    let spec = request.validate(JobId::generate())?;
    request.check_local_paths(&spec.org)?;
    if let rewind_common::job::SinkSpec::Kafka(k) = &spec.sink {
        rewind_worker::kafka::check_settings(k).map_err(Failure::BadRequest)?;
    }
    if args.workers == Some(0) {
        return Err(Failure::BadRequest(
            "invalid --workers: must be at least 1".into(),
        ));
    }
    Ok((request, spec))
}

/// A job id not used yet in this destination (ids are random; this makes collisions impossible).
fn fresh_job_id(output: &dyn OutputStore, mut spec: JobSpec) -> Result<JobSpec, Failure> {
    for _ in 0..16 {
        let prefix = OutputKeys::new(&spec.job).job_prefix();
        match output.list(&prefix) {
            Ok(existing) if existing.is_empty() => return Ok(spec),
            Ok(_) => spec.job = JobId::generate(),
            Err(e) => return Err(Failure::Job(format!("checking {}: {e}", output.describe()))),
        }
    }
    Err(Failure::Job("could not find an unused job id".into()))
}

pub fn run(args: RunArgs) -> Result<(), Failure> {
    let (request, spec) = validate(&args)?;
    let workers = args.workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(workers.max(1) * 2 + 4)
        .enable_all()
        .build()
        .map_err(|e| Failure::Job(format!("starting the runtime: {e}")))?;
    runtime.block_on(run_job(args, request, spec, workers))
}

async fn run_job(
    args: RunArgs,
    request: JobRequest,
    spec: JobSpec,
    workers: usize,
) -> Result<(), Failure> {
    let started = Instant::now();
    let places = request.locations(&spec.org)?;
    let opened = |what: &str, e: StorageError| Failure::Job(format!("opening the {what}: {e}"));
    let source = rewind_s3::open_source(&places.source, &request.s3)
        .await
        .map_err(|e| opened("source", e))?;
    let outputs = rewind_s3::open_outputs(&places, &request.s3)
        .await
        .map_err(|(what, e)| opened(what, e))?;
    let output = outputs.dest.clone();
    let spec = {
        let output = output.clone();
        tokio::task::spawn_blocking(move || fresh_job_id(output.as_ref(), spec))
            .await
            .map_err(|e| Failure::Job(format!("choosing a job id: {e}")))??
    };
    let spec = Arc::new(spec);
    if let rewind_common::job::SinkSpec::Kafka(k) = &spec.sink {
        let k = k.clone();
        tokio::task::spawn_blocking(move || {
            rewind_worker::kafka::preflight(&k, Duration::from_secs(15))
        })
        .await
        .map_err(|e| Failure::Job(format!("checking Kafka: {e}")))?
        .map_err(Failure::Job)?;
    }

    // Every hour prefix is listed once, now: each shard reads exactly what was listed.
    let plans = pin(source.clone(), &spec)
        .await
        .map_err(|e| Failure::Job(format!("planning job {}: {e}", spec.job)))?;
    let store = Arc::new(InMemoryShardStore::new());
    let ids: Vec<_> = plans.iter().map(|p| p.shard).collect();
    let pins: HashMap<_, _> = plans.into_iter().map(|p| (p.shard, p)).collect();
    store
        .create_job(&spec.job, &ids, spec.max_attempts)
        .await
        .map_err(|e| Failure::Job(e.to_string()))?;

    let progress = Arc::new(Progress::default());
    let env = ShardEnv {
        spec: spec.clone(),
        source,
        output: output.clone(),
        failed_output: outputs.failed.clone(),
        unrecoverable_output: outputs.unrecoverable.clone(),
        throttle: {
            let (events, bytes) = spec.sink.limits();
            rewind_worker::throttle::Throttle::new(events, bytes).map(Arc::new)
        },
        pins: Pins::Memory(Arc::new(pins)),
        produce_latency: None,
        progress: progress.clone(),
        cancel: Arc::new(AtomicBool::new(false)),
    };
    let decoder = DecoderConfig {
        max_event_bytes: spec.max_event_bytes,
        ..DecoderConfig::default()
    };
    let mut tasks = Vec::new();
    for n in 0..workers.min(ids.len().max(1)) {
        let cfg = WorkerConfig {
            id: format!("embedded-{n}"),
            lease_ttl: Duration::from_secs(30),
            idle_poll: Duration::from_millis(20),
            decoder,
        };
        tasks.push(tokio::spawn(work_job(store.clone(), env.clone(), cfg)));
    }
    let bar = std::io::stderr().is_terminal().then(|| {
        progress_bar(
            store.clone(),
            spec.job.clone(),
            progress.clone(),
            ids.len() as u64,
        )
    });

    let mut worker_error = None;
    for t in tasks {
        match t.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => worker_error = Some(e.to_string()),
            Err(e) => worker_error = Some(format!("worker task: {e}")),
        }
    }
    if let Some((handle, stop)) = bar {
        stop.store(true, Ordering::Relaxed);
        let _ = handle.await;
    }
    if let Some(e) = worker_error {
        return Err(Failure::Job(format!("job {}: {e}", spec.job)));
    }
    let states = store
        .shards(&spec.job)
        .await
        .map_err(|e| Failure::Job(e.to_string()))?;
    let commit_spec = spec.clone();
    let manifest = tokio::task::spawn_blocking(move || {
        commit_job(
            &commit_spec,
            &states,
            outputs.dest.as_ref(),
            &outputs.sides(),
        )
    })
    .await
    .map_err(|e| Failure::Job(format!("job commit: {e}")))?
    .map_err(|e| Failure::Job(format!("job commit: {e}")))?;
    let summary = Summary::new(&request, &spec, &manifest, started.elapsed());
    report(&summary, args.json)
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
        JobState::Succeeded => Ok(()),
        JobState::Failed => Err(Failure::Job(format!(
            "job {} failed: {} of {} shards failed",
            summary.job_id, summary.shards_failed, summary.shards
        ))),
        JobState::Cancelled => Err(Failure::Job(format!(
            "job {} was cancelled",
            summary.job_id
        ))),
    }
}

fn progress_bar(
    store: Arc<InMemoryShardStore>,
    job: JobId,
    progress: Arc<Progress>,
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
            if let Ok(p) = store.progress(&job).await {
                bar.set_position(p.done + p.failed);
            }
            let mb = progress.bytes.load(Ordering::Relaxed) as f64 / 1e6;
            bar.set_message(format!(
                "| {} objects | {} events | {:.1} MB/s",
                progress.objects.load(Ordering::Relaxed),
                progress.recovered.load(Ordering::Relaxed)
                    + progress.filtered.load(Ordering::Relaxed)
                    + progress.failed.load(Ordering::Relaxed)
                    + progress.unrecoverable.load(Ordering::Relaxed),
                mb / started.elapsed().as_secs_f64().max(1e-3)
            ));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bar.finish_and_clear();
    });
    (handle, stop)
}
