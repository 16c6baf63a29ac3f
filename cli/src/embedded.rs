//! `rewind run`: the embedded mode. The same planning, worker loop and job commit as the
//! distributed mode, wired together in one process with the in-memory shard store.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rewind_common::shard_store::{InMemoryShardStore, ShardStore};
use rewind_common::storage::{LocalOutput, LocalSource, ObjectSource, OutputStore};
use rewind_common::{HourRange, JobId, JobSpec, Layout, OrgId, OutputKeys};
use rewind_coordinator::commit::{JobManifest, JobState, commit_job};
use rewind_coordinator::plan::plan;
use rewind_worker::decode::DecoderConfig;
use rewind_worker::pipeline::{Progress, ShardEnv};
use rewind_worker::run::{WorkerConfig, work_job};
use serde::Serialize;

use crate::{Failure, RunArgs};

/// The final summary; with `--json` it is the only thing on stdout.
#[derive(Debug, Serialize)]
struct Summary<'a> {
    job_id: String,
    state: JobState,
    org: &'a str,
    start: String,
    end: String,
    source: String,
    dest: String,
    output: String,
    failed_output: String,
    shards: u64,
    shards_done: u64,
    shards_failed: u64,
    objects: u64,
    objects_skipped: u64,
    bytes: u64,
    recovered: u64,
    filtered: u64,
    failed: u64,
    failed_by_reason: &'a std::collections::BTreeMap<String, u64>,
    files: usize,
    duration_s: f64,
    mb_per_s: f64,
    failed_shards: &'a [rewind_coordinator::commit::FailedShard],
}

fn validate(args: &RunArgs) -> Result<JobSpec, Failure> {
    let org = OrgId::parse(&args.org)?;
    let range = HourRange::parse(&args.start, &args.end, args.max_range_hours)?;
    let layout = Layout::parse(&args.layout)?;
    if !args.source.is_dir() {
        return Err(Failure::BadRequest(format!(
            "invalid --source: {} is not a directory",
            args.source.display()
        )));
    }
    for (flag, path) in [
        ("--dest", Some(&args.dest)),
        ("--failed-output", args.failed_output.as_ref()),
    ] {
        if let Some(path) = path
            && path.exists()
            && !path.is_dir()
        {
            return Err(Failure::BadRequest(format!(
                "invalid {flag}: {} exists and is not a directory",
                path.display()
            )));
        }
    }
    if args.max_event_bytes < 64 {
        return Err(Failure::BadRequest(
            "invalid --max-event-bytes: must be at least 64".into(),
        ));
    }
    if args.workers == Some(0) {
        return Err(Failure::BadRequest(
            "invalid --workers: must be at least 1".into(),
        ));
    }
    if args.max_attempts == 0 {
        return Err(Failure::BadRequest(
            "invalid --max-attempts: must be at least 1".into(),
        ));
    }
    Ok(JobSpec {
        job: JobId::generate(),
        org,
        range,
        layout,
        arrival_filter: args.arrival_filter,
        max_event_bytes: args.max_event_bytes,
        max_attempts: args.max_attempts,
    })
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
    let spec = validate(&args)?;
    let workers = args.workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(workers.max(1) + 2)
        .enable_time()
        .build()
        .map_err(|e| Failure::Job(format!("starting the runtime: {e}")))?;
    runtime.block_on(run_job(args, spec, workers))
}

async fn run_job(args: RunArgs, spec: JobSpec, workers: usize) -> Result<(), Failure> {
    let started = Instant::now();
    let source: Arc<dyn ObjectSource> = Arc::new(
        LocalSource::new(&args.source)
            .map_err(|e| Failure::BadRequest(format!("invalid --source: {e}")))?,
    );
    let failed_dir = args
        .failed_output
        .clone()
        .unwrap_or_else(|| args.dest.join("_failed"));
    let output: Arc<dyn OutputStore> = Arc::new(LocalOutput::new(&args.dest));
    let failed_output: Arc<dyn OutputStore> = Arc::new(LocalOutput::new(&failed_dir));
    let spec = Arc::new(fresh_job_id(output.as_ref(), spec)?);
    let keys = OutputKeys::new(&spec.job);

    let shards = plan(&spec);
    let store = Arc::new(InMemoryShardStore::new());
    let ids: Vec<_> = shards.iter().map(|s| s.id).collect();
    store
        .create_job(&spec.job, &ids, spec.max_attempts)
        .await
        .map_err(|e| Failure::Job(e.to_string()))?;

    let progress = Arc::new(Progress::default());
    let env = ShardEnv {
        spec: spec.clone(),
        source,
        output: output.clone(),
        failed_output: failed_output.clone(),
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
            output.as_ref(),
            failed_output.as_ref(),
        )
    })
    .await
    .map_err(|e| Failure::Job(format!("job commit: {e}")))?
    .map_err(|e| Failure::Job(format!("job commit: {e}")))?;
    report(
        &args,
        &spec,
        &manifest,
        &failed_dir,
        started.elapsed(),
        &keys,
    )
}

fn report(
    args: &RunArgs,
    spec: &JobSpec,
    m: &JobManifest,
    failed_dir: &Path,
    elapsed: Duration,
    keys: &OutputKeys,
) -> Result<(), Failure> {
    let secs = elapsed.as_secs_f64();
    let summary = Summary {
        job_id: spec.job.to_string(),
        state: m.state,
        org: spec.org.as_str(),
        start: spec.range.first.to_string(),
        end: spec.range.last.to_string(),
        source: args.source.display().to_string(),
        dest: args.dest.display().to_string(),
        output: args.dest.join(keys.job_prefix()).display().to_string(),
        failed_output: failed_dir.join(keys.job_prefix()).display().to_string(),
        shards: m.shards,
        shards_done: m.shards_done,
        shards_failed: m.failed_shards.len() as u64,
        objects: m.counts.objects,
        objects_skipped: m.counts.objects_skipped,
        bytes: m.counts.bytes,
        recovered: m.counts.recovered,
        filtered: m.counts.filtered,
        failed: m.counts.failed,
        failed_by_reason: &m.failed_by_reason,
        files: m.files.len(),
        duration_s: (secs * 1000.0).round() / 1000.0,
        mb_per_s: ((m.counts.bytes as f64 / 1e6 / secs.max(1e-9)) * 10.0).round() / 10.0,
        failed_shards: &m.failed_shards,
    };
    if args.json {
        println!("{}", serde_json::to_string(&summary).unwrap_or_default());
    } else {
        println!(
            "job {} {}: {} shards ({} failed), {} objects, {:.1} MB in {:.2}s ({:.1} MB/s)",
            summary.job_id,
            match m.state {
                JobState::Succeeded => "succeeded",
                JobState::Failed => "FAILED",
            },
            summary.shards,
            summary.shards_failed,
            summary.objects,
            summary.bytes as f64 / 1e6,
            secs,
            summary.mb_per_s
        );
        println!(
            "events: {} recovered, {} filtered, {} failed",
            summary.recovered, summary.filtered, summary.failed
        );
        println!("output: {}", summary.output);
        if summary.failed > 0 {
            println!(
                "failed records: {} ({:?})",
                summary.failed_output, m.failed_by_reason
            );
        }
        if summary.objects_skipped > 0 {
            println!(
                "skipped {} objects named for another org",
                summary.objects_skipped
            );
        }
        for f in &m.failed_shards {
            println!(
                "shard {} failed after {} attempts: {}",
                f.shard, f.attempts, f.reason
            );
        }
    }
    match m.state {
        JobState::Succeeded => Ok(()),
        JobState::Failed => Err(Failure::Job(format!(
            "job {} failed: {} of {} shards failed",
            spec.job,
            m.failed_shards.len(),
            m.shards
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
                    + progress.failed.load(Ordering::Relaxed),
                mb / started.elapsed().as_secs_f64().max(1e-3)
            ));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bar.finish_and_clear();
    });
    (handle, stop)
}
