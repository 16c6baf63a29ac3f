//! `rewind replay --guard`: a Kafka replay day by day, guarded. For each day of the range:
//! 1. **plan**: list what every dependent sink holds for the day (objects; Druid segments);
//! 2. **clear**: move each object to `<prefix>/_rewind/backup/<job>/<day>/` (a server-side copy,
//!    then the delete: nothing is deleted before it is backed up) and mark the segments unused;
//! 3. **replay** the day into the topic (one job of the usual lifecycle), and **verify** it: the
//!    job succeeded and the brokers acknowledged every event it decoded for the topic;
//! 4. **finalize** (delete the backup unless `--keep-backups`, kill the segments) or
//!    **restore** (move every object back, mark the segments used again).
//!
//! Each step is written to `<dest>/_rewind/guards/<job>.json` as it completes; every step is
//! idempotent (a move finds itself done), so `--resume JOB` after a crash at any moment goes on
//! where each day was and never loses a backup before it is no longer needed. A failed day is
//! restored and reported, and the next day runs. One notification per day and one per job.
//!
//! With `--coordinator` the same replay is one job of a coordinator: the leader runs these
//! steps ([`drive_guards`]) and each day's replay is a job of its own run by the workers,
//! submitted under an id recorded in the state first, so a leader killed at any moment (or
//! replaced by a standby) goes on with the day where it was, waiting for the same day job
//! instead of replaying the day again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use rewind_common::guard::GuardRequest;
use rewind_common::lifecycle::{JobPhase, JobStatus, now_ms};
use rewind_common::location::JobSide;
use rewind_common::registry::JobRegistry;
use rewind_common::shard_store::{InMemoryShardStore, StoreError};
use rewind_common::storage::{OutputStore, StorageError};
use rewind_common::{JobId, JobRecord, JobRequest, JobSpec, Location, OrgId, Summary};
use rewind_coordinator::access::Scope;
use rewind_coordinator::core::{Coordinator, CoreError};
use serde_json::{Value, json};
use tracing::Instrument as _;

use crate::druid::Druid;
use crate::guard::{self, DayState, Dependent, Guard, GuardState, Step, backup_key};
use crate::notify::Notifier;
use crate::{Failure, JobArgs};

#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// The guard config (JSON or YAML): per stream, the topic and the sinks downstream of it.
    #[arg(long)]
    pub guard: PathBuf,
    /// The stream of the guard config to replay (its topic, unless --topic overrides it).
    #[arg(long)]
    pub stream: String,
    /// Keep each successful day's backup instead of deleting it.
    #[arg(long)]
    pub keep_backups: bool,
    /// Where to post a message per day and per job (repeatable). With --coordinator, by
    /// reference only (env:NAME or file:PATH, resolved where the coordinator runs).
    #[arg(long)]
    pub notify: Vec<String>,
    /// auto (Slack's format for hooks.slack.com URLs, JSON otherwise), slack or json.
    #[arg(long, default_value = "auto", value_parser = ["auto", "slack", "json"])]
    pub notify_format: String,
    /// Druid router or coordinator URL, for druid sources.
    #[arg(long)]
    pub druid_url: Option<String>,
    /// Druid basic auth `user:password`, by reference: env:NAME or file:PATH.
    #[arg(long)]
    pub druid_auth: Option<String>,
    /// Base of bare prefixes in the guard config, by type: azure=az://CONTAINER, s3=s3://BUCKET,
    /// gcs=gs://BUCKET.
    #[arg(long)]
    pub guard_base: Vec<String>,
    /// Go on with an interrupted guarded replay (its job id).
    #[arg(long)]
    pub resume: Option<String>,
    /// Shards processed in parallel per day (default: the number of CPUs).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Run the replay as a job of this coordinator (its gRPC address): its leader runs the
    /// days, its workers replay them. Waits for the job and reports it.
    #[arg(long)]
    pub coordinator: Option<String>,
    /// With --coordinator: how the job shares the fleet's worker slots with other jobs:
    /// interactive (8 shares), normal (4) or backfill (1) (docs/scheduling.md).
    #[arg(long, requires = "coordinator", value_parser = ["interactive", "normal", "backfill"])]
    pub priority: Option<String>,
    #[command(flatten)]
    pub reach: crate::CoordinatorAuth,
    /// Print exactly one JSON object (the job's summary) on stdout.
    #[arg(long)]
    pub json: bool,
}

/// A test hook: abort after the Nth step of any day (`REWIND_FAILPOINT=guard-step-then-die`,
/// `REWIND_FAILPOINT_AFTER=N`).
fn step_done() {
    rewind_common::step_failpoint("guard-step-then-die");
}

/// How a day's replay runs.
enum Runner<R> {
    /// In this process (`rewind replay --guard`).
    Local { workers: usize },
    /// As a job of the coordinator's workers: `parent` is the guard job, `subject` who
    /// submitted it (its scope was checked for the whole range at submit).
    Cluster {
        core: Box<Coordinator<R>>,
        parent: JobId,
        subject: String,
    },
}

/// What a guarded replay reaches: its dependent stores, Druid and webhooks.
struct Reached {
    stores: BTreeMap<String, Arc<dyn OutputStore>>,
    druid: Option<Druid>,
    notifier: Notifier,
}

struct Ctx<R> {
    guard: Guard,
    request: JobRequest,
    reached: Reached,
    state_store: Arc<dyn OutputStore>,
    state_key: String,
    keep_backups: bool,
    runner: Runner<R>,
    /// Ctrl-C, SIGTERM or a cancel stopped a day's replay: that day is restored, no later day
    /// starts.
    interrupted: AtomicBool,
}

/// The days of a request's range, `YYYY-MM-DD`, in order.
fn days_of(spec: &JobSpec) -> Vec<String> {
    spec.range
        .hours()
        .map(|h| h.date_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Opens and lists every dependent store, resolves Druid's credentials and the webhooks, and
/// checks that Druid and the webhooks answer: everything is reached before anything is
/// deleted. `literal_urls`: webhook URLs may be given as themselves (a local run) and not only
/// by reference.
async fn reach(
    g: &GuardRequest,
    request: &JobRequest,
    probe_day: &str,
) -> Result<Reached, Failure> {
    let bad = Failure::BadRequest;
    let mut stores = BTreeMap::new();
    for s in &g.guard.sources {
        if let Dependent::Store { name, root, .. } = s {
            let store = rewind_s3::open_output(root, &request.s3, JobSide::Dest)
                .await
                .map_err(|e| bad(format!("dependent source {name}: {e}")))?;
            let probe = s.day_prefix(probe_day).unwrap_or_default();
            let listed = {
                let store = store.clone();
                tokio::task::spawn_blocking(move || store.list(&probe)).await
            };
            match listed {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(bad(format!("dependent source {name}: {e}"))),
                Err(e) => return Err(Failure::Job(e.to_string())),
            }
            stores.insert(name.clone(), store);
        }
    }
    let druid = match (&g.druid_url, g.guard.has_druid()) {
        (Some(url), _) => {
            let auth = match &g.druid_auth {
                None => None,
                Some(r) => Some(
                    rewind_common::secret::SecretRef::parse(r)
                        .and_then(|s| s.resolve())
                        .map_err(|e| bad(format!("invalid --druid-auth: {e}")))?,
                ),
            };
            Some(Druid::new(url, auth).map_err(bad)?)
        }
        (None, true) => {
            return Err(bad(format!(
                "invalid --druid-url: stream {} has a druid source; give its URL",
                g.guard.stream
            )));
        }
        (None, false) => None,
    };
    if let Some(d) = &druid {
        d.check().await.map_err(bad)?;
    }
    let format = if g.notify_format.is_empty() {
        "auto"
    } else {
        &g.notify_format
    };
    let notifier = Notifier::new(&g.notify, format).map_err(bad)?;
    notifier.check().await.map_err(bad)?;
    Ok(Reached {
        stores,
        druid,
        notifier,
    })
}

/// Reads the guard file and builds what both modes need: the guard, the replay request (a
/// Kafka replay into the stream's topic unless --topic overrides it) and the range's days.
fn prepare(args: &ReplayArgs) -> Result<(GuardRequest, JobRequest, Vec<String>), Failure> {
    let bad = Failure::BadRequest;
    if args.job.start.contains('T') || args.job.end.contains('T') {
        return Err(bad(
            "invalid --start/--end: a guarded replay runs whole days (YYYY-MM-DD)".into(),
        ));
    }
    let text = std::fs::read_to_string(&args.guard)
        .map_err(|e| bad(format!("invalid --guard: {}: {e}", args.guard.display())))?;
    let mut bases = BTreeMap::new();
    for b in &args.guard_base {
        let (k, v) = b
            .split_once('=')
            .ok_or_else(|| bad(format!("invalid --guard-base {b}: give TYPE=URL")))?;
        bases.insert(k.to_string(), v.to_string());
    }
    let file = args.guard.display().to_string();
    let guard = guard::load(&text, &file, &args.stream, &bases)
        .map_err(|e| bad(format!("invalid --guard: {e}")))?;
    let mut request = args.job.request()?;
    request.sink = Some("kafka".into());
    if request.topic.as_deref().is_none_or(str::is_empty) {
        request.topic = Some(guard.topic.clone());
    }
    // The whole request is checked once, before anything is touched.
    let spec = request.validate(JobId::generate())?;
    let days = days_of(&spec);
    let g = GuardRequest {
        guard,
        keep_backups: args.keep_backups,
        notify: args.notify.clone(),
        notify_format: args.notify_format.clone(),
        druid_url: args.druid_url.clone(),
        druid_auth: args.druid_auth.clone(),
    };
    Ok((g, request, days))
}

pub fn run(args: ReplayArgs) -> Result<(), Failure> {
    let (g, mut request, days) = prepare(&args)?;
    if args.coordinator.is_some() {
        return distributed(&args, g, request);
    }
    let bad = Failure::BadRequest;
    if let Some(d) = &g.druid_url {
        // Checked as a coordinator would (no credentials in the URL).
        GuardRequest {
            druid_url: Some(d.clone()),
            notify: Vec::new(),
            ..g.clone()
        }
        .check()?;
    }
    let (workers, runtime) = crate::embedded::job_runtime(args.workers, 8)?;
    runtime.block_on(async move {
        let reached = reach(&g, &request, &days[0]).await?;
        let org = OrgId::parse(&request.org)?;
        let dest = Location::parse("--dest", &request.dest, &org)?;
        let state_store = rewind_s3::open_output(&dest, &request.s3, JobSide::Dest)
            .await
            .map_err(|e| Failure::Job(format!("opening {dest}: {e}")))?;
        let job = args
            .resume
            .clone()
            .unwrap_or_else(|| JobId::generate().to_string());
        let state_key = format!("_rewind/guards/{job}.json");
        let state = match &args.resume {
            Some(id) => {
                let st = read_state(&state_store, &state_key).await?.ok_or_else(|| {
                    bad(format!(
                        "invalid --resume {id}: no guarded replay {id} in {dest}"
                    ))
                })?;
                if st.stream != g.guard.stream || st.days.iter().map(|d| &d.day).ne(days.iter()) {
                    return Err(bad(format!(
                        "invalid --resume {id}: it replays {} over {} days, not this request",
                        st.stream,
                        st.days.len()
                    )));
                }
                st
            }
            None => GuardState::new(
                &job,
                &g.guard,
                request.topic.as_deref().unwrap_or(""),
                &days,
            ),
        };
        request.guard = None;
        let ctx: Ctx<InMemoryShardStore> = Ctx {
            guard: g.guard,
            request,
            reached,
            state_store,
            state_key,
            keep_backups: g.keep_backups,
            runner: Runner::Local { workers },
            interrupted: AtomicBool::new(false),
        };
        let started = Instant::now();
        let (ok, summary, text) = orchestrate(&ctx, state, started, args.json).await?;
        if args.json {
            println!("{summary}");
        } else {
            println!("{text}");
        }
        if ok { Ok(()) } else { Err(Failure::Job(text)) }
    })
}

/// `rewind replay --guard --coordinator`: the guard resolved here, submitted as one job.
fn distributed(args: &ReplayArgs, g: GuardRequest, mut request: JobRequest) -> Result<(), Failure> {
    if args.resume.is_some() || args.workers.is_some() {
        return Err(Failure::BadRequest(
            "--resume and --workers run in one process: a coordinator resumes its own guarded \
             replays and runs each day on its workers; leave them out with --coordinator"
                .into(),
        ));
    }
    request.guard = Some(g);
    request.priority = args.priority.clone();
    let remote = crate::Remote::to(
        args.coordinator.as_deref().unwrap_or_default(),
        &args.reach,
        args.json,
    );
    crate::client::submit_request(&remote, request, true)
}

async fn read_state(
    store: &Arc<dyn OutputStore>,
    key: &str,
) -> Result<Option<GuardState>, Failure> {
    let (store, k) = (store.clone(), key.to_string());
    let body = tokio::task::spawn_blocking(move || store.get(&k))
        .await
        .map_err(|e| Failure::Job(e.to_string()))?
        .map_err(|e| Failure::Job(format!("reading {key}: {e}")))?;
    match body {
        None => Ok(None),
        Some(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| Failure::Job(format!("{key}: {e}"))),
    }
}

async fn save<R>(ctx: &Ctx<R>, state: &GuardState) -> Result<(), Failure> {
    let body = serde_json::to_vec_pretty(state).unwrap_or_default();
    let (store, key) = (ctx.state_store.clone(), ctx.state_key.clone());
    tokio::task::spawn_blocking(move || store.put(&key, &body))
        .await
        .map_err(|e| Failure::Job(e.to_string()))?
        .map_err(|e| Failure::Job(format!("recording the replay's state: {e}")))?;
    step_done();
    Ok(())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

impl<R: JobRegistry> Ctx<R> {
    /// Whether the guard job was cancelled (a coordinator's `CancelJob`).
    async fn cancelled(&self) -> bool {
        match &self.runner {
            Runner::Local { .. } => false,
            Runner::Cluster { core, parent, .. } => matches!(
                core.registry().status(parent).await,
                Ok(s) if s.phase == JobPhase::Cancelling
            ),
        }
    }
}

/// Runs every day not yet ended, in order, and says how it went: whether every day succeeded,
/// the job's summary (JSON) and its one-line form. Notifies per day and per job.
async fn orchestrate<R: JobRegistry>(
    ctx: &Ctx<R>,
    mut state: GuardState,
    started: Instant,
    quiet: bool,
) -> Result<(bool, Value, String), Failure> {
    for i in 0..state.days.len() {
        if state.days[i].step.finished() {
            continue;
        }
        if state.days[i].step == Step::Pending && ctx.cancelled().await {
            ctx.interrupted.store(true, Ordering::Relaxed);
            return Err(Failure::Interrupted(format!(
                "guarded replay {} cancelled before {}",
                state.job, state.days[i].day
            )));
        }
        let t = Instant::now();
        if state.days[i].started_ms == 0 {
            state.days[i].started_ms = now_ms();
        }
        // An error here could not even record a step: stop; a resume goes on.
        run_day(ctx, &mut state, i).await?;
        let day = &state.days[i];
        let (event, text) = day_message(ctx, &state.job, day, t.elapsed().as_secs_f64());
        ctx.reached.notifier.send(&event, &text).await;
        if !quiet {
            eprintln!("{text}");
        }
        if ctx.interrupted.load(Ordering::Relaxed) {
            // The day was cut, not failed: once restored it is to do again, from its plan.
            if state.days[i].step == Step::Restored {
                let day = state.days[i].day.clone();
                state.days[i] = DayState {
                    day,
                    ..DayState::default()
                };
                save(ctx, &state).await?;
            }
            return Err(Failure::Interrupted(format!(
                "guarded replay {} interrupted during {}: its sinks are restored; it and the \
                 days after it run with `rewind replay … --resume {}`",
                state.job, state.days[i].day, state.job
            )));
        }
    }
    let ok = state.days.iter().all(|d| d.step == Step::Finalized);
    let mut summary = json!({
        "kind": "job",
        "job": state.job,
        "stream": state.stream,
        "topic": state.topic,
        "state": if ok { "succeeded" } else { "failed" },
        "days": state.days.iter().map(|d| json!({
            "day": d.day,
            "state": d.outcome(),
            "events_replayed": d.events,
            "replay_job": d.replay_job,
            "error": d.error,
        })).collect::<Vec<_>>(),
        "events_replayed": state.days.iter().map(|d| d.events).sum::<u64>(),
        "duration_s": started.elapsed().as_secs_f64(),
    });
    let failed: Vec<&str> = state
        .days
        .iter()
        .filter(|d| d.step != Step::Finalized)
        .map(|d| d.day.as_str())
        .collect();
    let text = if ok {
        format!(
            "guarded replay {} of {} into {}: all {} days succeeded",
            state.job,
            state.stream,
            state.topic,
            state.days.len()
        )
    } else {
        format!(
            "guarded replay {} of {} into {}: {} of {} days failed ({})",
            state.job,
            state.stream,
            state.topic,
            failed.len(),
            state.days.len(),
            failed.join(", ")
        )
    };
    ctx.reached.notifier.send(&summary, &text).await;
    summary["notifications_failed"] = json!(ctx.reached.notifier.failed.load(Ordering::Relaxed));
    Ok((ok, summary, text))
}

/// A sink check for a coordinator that also takes guarded replays and ingests: the Kafka
/// checks, a guard's sinks, Druid and webhooks reached at submit, and an ingest's publish and
/// moves after its commit.
pub struct ServiceChecks<S>(pub S);

impl<S: rewind_common::lifecycle::SinkCheck> rewind_common::lifecycle::SinkCheck
    for ServiceChecks<S>
{
    fn check_settings(&self, spec: &JobSpec) -> Result<(), String> {
        self.0.check_settings(spec)
    }
    fn preflight(&self, spec: &mut JobSpec) -> Result<(), String> {
        self.0.preflight(spec)
    }
    fn destination(
        &self,
        spec: &JobSpec,
        dest: Arc<dyn OutputStore>,
    ) -> Result<Arc<dyn OutputStore>, StorageError> {
        self.0.destination(spec, dest)
    }
    fn finishes_ingests(&self) -> bool {
        true
    }
    fn ingest_finish(
        &self,
        spec: &JobSpec,
        s3: &rewind_common::S3Options,
        manifest: &rewind_common::lifecycle::JobManifest,
    ) -> Result<(), String> {
        crate::ingest::finish_distributed(spec, s3, manifest)
    }
    fn guard(&self, spec: &JobSpec, s3: &rewind_common::S3Options) -> Result<(), String> {
        let Some(g) = &spec.guard else { return Ok(()) };
        let request = JobRequest {
            s3: s3.clone(),
            ..JobRequest::default()
        };
        tokio::runtime::Handle::current()
            .block_on(reach(g, &request, &days_of(spec)[0]))
            .map(drop)
            .map_err(|e| failure_text(&e))
    }
}

/// A coordinator's driver of guarded replays: while this coordinator leads, every active guard
/// job runs in a task of its own (a new leader picks them up from their state); losing the lead
/// stops them. A job whose run fails (its state could not be written) is tried again.
pub async fn drive_guards<R>(
    core: Coordinator<R>,
    id: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    R: JobRegistry + Clone + Send + Sync + 'static,
{
    let mut running: BTreeMap<JobId, tokio::task::JoinHandle<()>> = BTreeMap::new();
    let mut plain: std::collections::BTreeSet<JobId> = Default::default();
    loop {
        if *stop.borrow() {
            break;
        }
        running.retain(|_, h| !h.is_finished());
        let leading = matches!(core.registry().leader().await, Ok(Some(l)) if l == id);
        if !leading {
            for (_, h) in std::mem::take(&mut running) {
                h.abort();
            }
        } else if let Ok(active) = core.registry().active_jobs().await {
            plain.retain(|j| active.iter().any(|(a, _)| a == j));
            for (job, _) in active {
                if running.contains_key(&job) || plain.contains(&job) {
                    continue;
                }
                let record = match core.registry().record(&job).await {
                    Ok(r) => r,
                    Err(_) => continue,
                };
                if record.spec.guard.is_none() {
                    plain.insert(job);
                    continue;
                }
                let core = core.clone();
                running.insert(job, tokio::spawn(guard_job(core, record)));
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), stop.wait_for(|s| *s)).await;
    }
    for (_, h) in running {
        h.abort();
    }
}

/// Runs one guard job from its state to its end and finishes it in the registry.
async fn guard_job<R: JobRegistry + Clone>(core: Coordinator<R>, record: JobRecord) {
    let job = record.spec.job.clone();
    let started = Instant::now();
    let outcome = run_guard_job(&core, &record, started).await;
    let mut status = match core.registry().status(&job).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(job = %job, error = %e, "guarded replay: reading its status");
            return;
        }
    };
    let (phase, message, state) = match outcome {
        Ok((ok, state)) => (
            if ok {
                JobPhase::Succeeded
            } else {
                JobPhase::Failed
            },
            (!ok).then(|| {
                let failed: Vec<&str> = state
                    .days
                    .iter()
                    .filter(|d| d.step != Step::Finalized)
                    .map(|d| d.day.as_str())
                    .collect();
                format!(
                    "{} of {} days failed ({})",
                    failed.len(),
                    state.days.len(),
                    failed.join(", ")
                )
            }),
            Some(state),
        ),
        Err((Failure::Interrupted(m), state)) => (JobPhase::Cancelled, Some(m), state),
        Err((Failure::BadRequest(m), state)) => (JobPhase::Failed, Some(m), state),
        Err((Failure::Job(m), _)) => {
            // Its state could not be read or written: tried again (the job stays active).
            tracing::warn!(job = %job, error = %m, "guarded replay stopped; retrying");
            tokio::time::sleep(Duration::from_secs(5)).await;
            return;
        }
    };
    status.phase = phase;
    status.message = message;
    status.finished_ms = Some(now_ms());
    status.summary =
        state.map(|s| Summary::guarded(&record.spec, phase, s.outcome(), started.elapsed()));
    match core.registry().finish(&job, &status).await {
        Ok(()) => tracing::info!(job = %job, state = %phase, "guarded replay finished"),
        Err(e) => tracing::warn!(job = %job, error = %e, "guarded replay: finishing"),
    }
}

type GuardRun = Result<(bool, GuardState), (Failure, Option<GuardState>)>;

async fn run_guard_job<R: JobRegistry + Clone>(
    core: &Coordinator<R>,
    record: &JobRecord,
    started: Instant,
) -> GuardRun {
    let spec = &record.spec;
    let g = spec.guard.clone().expect("a guard job");
    let job = spec.job.to_string();
    let days = days_of(spec);
    let mut request = record.request.clone();
    request.guard = None;
    let state_store = rewind_s3::open_output(&spec.places.dest, &request.s3, JobSide::Dest)
        .await
        .map_err(|e| {
            (
                Failure::Job(format!("opening {}: {e}", spec.places.dest)),
                None,
            )
        })?;
    let state_key = format!("_rewind/guards/{job}.json");
    let state = match read_state(&state_store, &state_key).await {
        Ok(Some(s)) => s,
        Ok(None) => GuardState::new(
            &job,
            &g.guard,
            request.topic.as_deref().unwrap_or(""),
            &days,
        ),
        Err(e) => return Err((e, None)),
    };
    let reached = match reach(&g, &request, &days[0]).await {
        Ok(r) => r,
        // A sink that answered at submit and not now: nothing is touched, the job fails.
        Err(e) => return Err((Failure::BadRequest(failure_text(&e)), Some(state))),
    };
    let ctx = Ctx {
        guard: g.guard.clone(),
        request,
        reached,
        state_store,
        state_key: state_key.clone(),
        keep_backups: g.keep_backups,
        runner: Runner::Cluster {
            core: Box::new(core.clone()),
            parent: spec.job.clone(),
            subject: record
                .submitted_by
                .clone()
                .unwrap_or_else(|| "guard".into()),
        },
        interrupted: AtomicBool::new(false),
    };
    let r = orchestrate(&ctx, state, started, true).await;
    // The state as the orchestration left it (for the summary).
    let last = read_state(&ctx.state_store, &state_key)
        .await
        .ok()
        .flatten();
    match r {
        Ok((ok, _, _)) => Ok((ok, last.unwrap_or_default())),
        Err(e) => Err((e, last)),
    }
}

/// A day's replay as a job of the coordinator: its id is recorded before it is submitted, so
/// a driver killed at any moment submits the same job again (answered with the one registered)
/// or waits for it, and never replays the day twice. Cancelling the guard job cancels it.
async fn replay_on_cluster<R: JobRegistry>(
    ctx: &Ctx<R>,
    state: &mut GuardState,
    i: usize,
    request: JobRequest,
) -> Result<(bool, u64, Option<String>, Option<String>), Failure> {
    let Runner::Cluster {
        core,
        parent,
        subject,
    } = &ctx.runner
    else {
        unreachable!("a cluster runner")
    };
    let child = match state.days[i].replay_job.as_deref().map(JobId::parse) {
        Some(Ok(id)) => id,
        _ => {
            let id = JobId::generate();
            state.days[i].replay_job = Some(id.to_string());
            save(ctx, state).await?;
            id
        }
    };
    let span = tracing::info_span!("rewind.guard.day", job_id = %child, guard = %parent);
    let scope = Scope::all(subject);
    // A submit that fails for a reason that may pass is tried again; then the day fails,
    // unless the job turns out to be registered after all (an answer lost on the way).
    let mut tries = 0;
    loop {
        let r = core
            .submit_as(request.clone(), &span, &scope, Some(child.clone()))
            .instrument(span.clone())
            .await;
        let e = match r {
            Ok(_) => break,
            Err(e) => e,
        };
        tries += 1;
        let passing = matches!(e, CoreError::Unavailable(_) | CoreError::Internal(_));
        if passing && tries < 4 {
            tracing::warn!(job = %child, error = %e, "submitting a guarded day; retrying");
            tokio::time::sleep(Duration::from_secs(tries)).await;
            continue;
        }
        match core.registry().status(&child).await {
            Ok(_) => break,
            Err(StoreError::JobNotFound(_)) => {
                return Ok((
                    false,
                    0,
                    Some(format!("replay job {child} could not be submitted: {e}")),
                    Some(child.to_string()),
                ));
            }
            Err(s) => {
                return Err(Failure::Job(format!(
                    "submitting the day's replay: {e}; {s}"
                )));
            }
        }
    }
    step_done();
    let status: JobStatus = loop {
        match core.registry().status(&child).await {
            Ok(s) if s.phase.finished() => break s,
            Ok(s) => {
                if s.phase == JobPhase::Running && ctx.cancelled().await {
                    ctx.interrupted.store(true, Ordering::Relaxed);
                    let _ = core.cancel(&child, &scope).await;
                }
            }
            Err(StoreError::JobNotFound(_)) => {
                return Ok((
                    false,
                    0,
                    Some(format!(
                        "replay job {child} was forgotten before it was read"
                    )),
                    Some(child.to_string()),
                ));
            }
            Err(e) => return Err(Failure::Job(format!("following replay job {child}: {e}"))),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    Ok(judge(
        &child.to_string(),
        status.phase,
        status.summary.as_ref(),
        status.message.as_deref(),
    ))
}

/// Whether a day's replay delivered the whole day: its job succeeded and the brokers
/// acknowledged every event it decoded for the topic.
fn judge(
    job: &str,
    phase: JobPhase,
    s: Option<&Summary>,
    message: Option<&str>,
) -> (bool, u64, Option<String>, Option<String>) {
    let Some(s) = s else {
        return (
            false,
            0,
            Some(format!(
                "replay job {job} {phase}: {}",
                message.unwrap_or("no summary")
            )),
            Some(job.to_string()),
        );
    };
    let complete = s.acknowledged == s.recovered;
    let ok = phase == JobPhase::Succeeded && complete;
    let error = if phase != JobPhase::Succeeded {
        Some(format!(
            "replay job {job} {phase}: {} of {} shards failed",
            s.shards_failed, s.shards
        ))
    } else if !complete {
        Some(format!(
            "replay job {job}: {} events decoded for the topic, {} acknowledged",
            s.recovered, s.acknowledged
        ))
    } else {
        None
    };
    (ok, s.acknowledged, error, Some(job.to_string()))
}

fn day_message<R>(ctx: &Ctx<R>, job: &str, d: &DayState, secs: f64) -> (Value, String) {
    let deleted: BTreeMap<&String, usize> = d.objects.iter().map(|(k, v)| (k, v.len())).collect();
    let segments: BTreeMap<&String, usize> = d.segments.iter().map(|(k, v)| (k, v.len())).collect();
    let event = json!({
        "kind": "day",
        "job": job,
        "stream": ctx.guard.stream,
        "day": d.day,
        "state": d.outcome(),
        "events_replayed": d.events,
        "files_deleted": deleted,
        "segments_dropped": segments,
        "duration_s": secs,
        "replay_job": d.replay_job,
        "error": d.error,
    });
    let files: usize = deleted.values().sum();
    let text = match d.step {
        Step::Finalized => format!(
            "{} {}: replayed {} events into {} in {secs:.1} s; {files} files cleared from {} sources",
            ctx.guard.stream,
            d.day,
            d.events,
            ctx.guard.topic,
            deleted.len()
        ),
        _ => format!(
            "{} {} FAILED ({}): {}; {files} files restored",
            ctx.guard.stream,
            d.day,
            d.outcome(),
            d.error.as_deref().unwrap_or("-")
        ),
    };
    (event, text)
}

/// Runs day `i` from where its state says to its end.
async fn run_day<R: JobRegistry>(
    ctx: &Ctx<R>,
    state: &mut GuardState,
    i: usize,
) -> Result<(), Failure> {
    let job = state.job.clone();
    loop {
        let day = state.days[i].day.clone();
        match state.days[i].step {
            Step::Pending => {
                let mut objects = BTreeMap::new();
                let mut segments = BTreeMap::new();
                for s in &ctx.guard.sources {
                    match s {
                        Dependent::Store { name, .. } => {
                            let store = ctx.reached.stores[name].clone();
                            let prefix = s.day_prefix(&day).unwrap_or_default();
                            let listed = blocking(move || store.list(&prefix))
                                .await
                                .map_err(|e| Failure::Job(format!("{name}: {e}")))?;
                            objects.insert(
                                name.clone(),
                                listed.into_iter().map(|o| (o.key, o.size)).collect(),
                            );
                        }
                        Dependent::Druid { name, datasource } => {
                            let d = ctx.reached.druid.as_ref().expect("checked at start");
                            let ids = d
                                .used_segments(datasource, &day)
                                .await
                                .map_err(Failure::Job)?;
                            segments.insert(name.clone(), ids);
                        }
                    }
                }
                let d = &mut state.days[i];
                d.objects = objects;
                d.segments = segments;
                d.step = Step::Planned;
                save(ctx, state).await?;
            }
            Step::Planned => {
                for s in &ctx.guard.sources {
                    match s {
                        Dependent::Store { name, prefix, .. } => {
                            let store = ctx.reached.stores[name].clone();
                            for (key, _) in state.days[i].objects[name].clone() {
                                let to = backup_key(prefix, &job, &day, &key);
                                let store = store.clone();
                                blocking(move || {
                                    if store.head(&key)?.is_none() && store.head(&to)?.is_some() {
                                        return Ok(()); // moved already
                                    }
                                    store.promote(&key, &to).map(drop)
                                })
                                .await
                                .map_err(|e| Failure::Job(format!("backing up {name}: {e}")))?;
                                step_done();
                            }
                        }
                        Dependent::Druid { name, datasource } => {
                            let d = ctx.reached.druid.as_ref().expect("checked at start");
                            d.mark_unused(datasource, &state.days[i].segments[name])
                                .await
                                .map_err(Failure::Job)?;
                        }
                    }
                }
                state.days[i].step = Step::Cleared;
                save(ctx, state).await?;
            }
            Step::Cleared => {
                let mut request = ctx.request.clone();
                request.start = day.clone();
                request.end = day.clone();
                let (ok, events, error, replay_job) = match &ctx.runner {
                    Runner::Cluster { .. } => replay_on_cluster(ctx, state, i, request).await?,
                    Runner::Local { workers } => {
                        match crate::embedded::execute(request, *workers, false).await {
                            Ok(s) => judge(&s.job_id, s.state, Some(&s), None),
                            Err(e) => {
                                if matches!(e, Failure::Interrupted(_)) {
                                    ctx.interrupted.store(true, Ordering::Relaxed);
                                }
                                (false, 0, Some(failure_text(&e)), None)
                            }
                        }
                    }
                };
                let d = &mut state.days[i];
                d.ok = ok;
                d.events = events;
                d.error = error;
                d.replay_job = replay_job;
                d.step = Step::Replayed;
                save(ctx, state).await?;
            }
            Step::Replayed => {
                let ok = state.days[i].ok;
                let mut restore_error = None;
                for s in &ctx.guard.sources {
                    match s {
                        Dependent::Store { name, prefix, .. } => {
                            let store = ctx.reached.stores[name].clone();
                            for (key, _) in state.days[i].objects[name].clone() {
                                let backup = backup_key(prefix, &job, &day, &key);
                                let store = store.clone();
                                let r = if ok {
                                    if ctx.keep_backups {
                                        continue;
                                    }
                                    blocking(move || store.delete(&backup)).await
                                } else {
                                    blocking(move || {
                                        if store.head(&backup)?.is_none()
                                            && store.head(&key)?.is_some()
                                        {
                                            return Ok(()); // restored already
                                        }
                                        store.promote(&backup, &key).map(drop)
                                    })
                                    .await
                                };
                                if let Err(e) = r {
                                    if ok {
                                        return Err(Failure::Job(format!(
                                            "deleting the backup of {name}: {e}"
                                        )));
                                    }
                                    restore_error.get_or_insert(format!(
                                        "restoring {name}: {e}; the backup stays at {name}/{}",
                                        backup_key(prefix, &job, &day, "")
                                    ));
                                    break;
                                }
                                step_done();
                            }
                        }
                        Dependent::Druid { name, datasource } => {
                            let d = ctx.reached.druid.as_ref().expect("checked at start");
                            let ids = &state.days[i].segments[name];
                            let r = if ok {
                                if ids.is_empty() {
                                    Ok(())
                                } else {
                                    d.kill(datasource, &day).await.map(drop)
                                }
                            } else {
                                d.mark_used(datasource, ids).await.map(drop)
                            };
                            if let Err(e) = r {
                                if ok {
                                    return Err(Failure::Job(e));
                                }
                                restore_error.get_or_insert(e);
                            }
                        }
                    }
                }
                let d = &mut state.days[i];
                d.finished_ms = now_ms();
                d.step = match (ok, &restore_error) {
                    (true, _) => Step::Finalized,
                    (false, None) => Step::Restored,
                    (false, Some(e)) => {
                        let first = d.error.take().unwrap_or_default();
                        d.error = Some(format!("{first}; {e}"));
                        Step::RestoreFailed
                    }
                };
                save(ctx, state).await?;
            }
            Step::Finalized | Step::Restored | Step::RestoreFailed => return Ok(()),
        }
    }
}

pub(crate) fn failure_text(e: &Failure) -> String {
    match e {
        Failure::BadRequest(m) | Failure::Job(m) | Failure::Interrupted(m) => m.clone(),
    }
}
