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

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use rewind_common::lifecycle::{JobPhase, now_ms};
use rewind_common::location::JobSide;
use rewind_common::storage::{OutputStore, StorageError};
use rewind_common::{JobId, JobRequest, Location, OrgId};
use serde_json::{Value, json};

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
    /// Where to post a message per day and per job (repeatable).
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
    /// Base of bare prefixes in the guard config, by type: azure=az://CONTAINER, s3=s3://BUCKET.
    #[arg(long)]
    pub guard_base: Vec<String>,
    /// Go on with an interrupted guarded replay (its job id).
    #[arg(long)]
    pub resume: Option<String>,
    /// Shards processed in parallel per day (default: the number of CPUs).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Print exactly one JSON object (the job's summary) on stdout.
    #[arg(long)]
    pub json: bool,
}

/// A test hook: abort after the Nth step of any day (`REWIND_FAILPOINT=guard-step-then-die`,
/// `REWIND_FAILPOINT_AFTER=N`).
fn step_done() {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STEPS: AtomicU64 = AtomicU64::new(0);
    if rewind_common::failpoint("guard-step-then-die") {
        let after = std::env::var("REWIND_FAILPOINT_AFTER")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        if STEPS.fetch_add(1, Ordering::Relaxed) + 1 >= after {
            std::process::abort();
        }
    }
}

struct Ctx {
    guard: Guard,
    request: JobRequest,
    stores: BTreeMap<String, Arc<dyn OutputStore>>,
    druid: Option<Druid>,
    notifier: Notifier,
    state_store: Arc<dyn OutputStore>,
    state_key: String,
    keep_backups: bool,
    workers: usize,
    /// Ctrl-C or SIGTERM stopped a day's replay: that day is restored, no later day starts.
    interrupted: std::sync::atomic::AtomicBool,
}

pub fn run(args: ReplayArgs) -> Result<(), Failure> {
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
    let days: Vec<String> = spec
        .range
        .hours()
        .map(|h| h.date_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let has_druid = guard
        .sources
        .iter()
        .any(|s| matches!(s, Dependent::Druid { .. }));
    let druid = match (&args.druid_url, has_druid) {
        (Some(url), _) => {
            let auth = match &args.druid_auth {
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
                guard.stream
            )));
        }
        (None, false) => None,
    };
    let notifier = Notifier::new(&args.notify, &args.notify_format).map_err(bad)?;
    let (workers, runtime) = crate::embedded::job_runtime(args.workers, 8)?;
    runtime.block_on(async move {
        // Everything is reached before anything is deleted.
        let org = OrgId::parse(&request.org)?;
        let mut stores = BTreeMap::new();
        for s in &guard.sources {
            if let Dependent::Store { name, root, .. } = s {
                let store = rewind_s3::open_output(root, &request.s3, JobSide::Dest)
                    .await
                    .map_err(|e| bad(format!("dependent source {name}: {e}")))?;
                let probe = s.day_prefix(&days[0]).unwrap_or_default();
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
        if let Some(d) = &druid {
            d.check().await.map_err(bad)?;
        }
        notifier.check().await.map_err(bad)?;
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
                let key = state_key.clone();
                let store = state_store.clone();
                let body = tokio::task::spawn_blocking(move || store.get(&key))
                    .await
                    .map_err(|e| Failure::Job(e.to_string()))?
                    .map_err(|e| Failure::Job(e.to_string()))?
                    .ok_or_else(|| {
                        bad(format!(
                            "invalid --resume {id}: no guarded replay {id} in {dest}"
                        ))
                    })?;
                let st: GuardState = serde_json::from_slice(&body)
                    .map_err(|e| Failure::Job(format!("{state_key}: {e}")))?;
                if st.stream != guard.stream || st.days.iter().map(|d| &d.day).ne(days.iter()) {
                    return Err(bad(format!(
                        "invalid --resume {id}: it replays {} over {} days, not this request",
                        st.stream,
                        st.days.len()
                    )));
                }
                st
            }
            None => GuardState {
                job: job.clone(),
                stream: guard.stream.clone(),
                topic: request.topic.clone().unwrap_or_default(),
                days: days
                    .iter()
                    .map(|d| DayState {
                        day: d.clone(),
                        ..DayState::default()
                    })
                    .collect(),
            },
        };
        let ctx = Ctx {
            guard,
            request,
            stores,
            druid,
            notifier,
            state_store,
            state_key,
            keep_backups: args.keep_backups,
            workers,
            interrupted: std::sync::atomic::AtomicBool::new(false),
        };
        orchestrate(&ctx, state, args.json).await
    })
}

async fn save(ctx: &Ctx, state: &GuardState) -> Result<(), Failure> {
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

async fn orchestrate(ctx: &Ctx, mut state: GuardState, json: bool) -> Result<(), Failure> {
    let started = Instant::now();
    for i in 0..state.days.len() {
        if matches!(
            state.days[i].step,
            Step::Finalized | Step::Restored | Step::RestoreFailed
        ) {
            continue;
        }
        let t = Instant::now();
        if state.days[i].started_ms == 0 {
            state.days[i].started_ms = now_ms();
        }
        // An error here could not even record a step: stop; --resume goes on.
        run_day(ctx, &mut state, i).await?;
        let day = &state.days[i];
        let (event, text) = day_message(ctx, &state.job, day, t.elapsed().as_secs_f64());
        ctx.notifier.send(&event, &text).await;
        if !json {
            eprintln!("{text}");
        }
        if ctx.interrupted.load(std::sync::atomic::Ordering::Relaxed) {
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
    let summary = json!({
        "kind": "job",
        "job": state.job,
        "stream": state.stream,
        "topic": state.topic,
        "state": if ok { "succeeded" } else { "failed" },
        "days": state.days.iter().map(|d| json!({
            "day": d.day,
            "state": day_outcome(d),
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
    ctx.notifier.send(&summary, &text).await;
    let mut summary = summary;
    summary["notifications_failed"] = json!(
        ctx.notifier
            .failed
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    if json {
        println!("{summary}");
    } else {
        println!("{text}");
    }
    if ok { Ok(()) } else { Err(Failure::Job(text)) }
}

fn day_outcome(d: &DayState) -> &'static str {
    match d.step {
        Step::Finalized => "succeeded",
        Step::Restored => "failed_restored",
        Step::RestoreFailed => "failed_restore_failed",
        _ => "unfinished",
    }
}

fn day_message(ctx: &Ctx, job: &str, d: &DayState, secs: f64) -> (Value, String) {
    let deleted: BTreeMap<&String, usize> = d.objects.iter().map(|(k, v)| (k, v.len())).collect();
    let segments: BTreeMap<&String, usize> = d.segments.iter().map(|(k, v)| (k, v.len())).collect();
    let event = json!({
        "kind": "day",
        "job": job,
        "stream": ctx.guard.stream,
        "day": d.day,
        "state": day_outcome(d),
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
            day_outcome(d),
            d.error.as_deref().unwrap_or("-")
        ),
    };
    (event, text)
}

/// Runs day `i` from where its state says to its end.
async fn run_day(ctx: &Ctx, state: &mut GuardState, i: usize) -> Result<(), Failure> {
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
                            let store = ctx.stores[name].clone();
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
                            let d = ctx.druid.as_ref().expect("checked at start");
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
                            let store = ctx.stores[name].clone();
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
                            let d = ctx.druid.as_ref().expect("checked at start");
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
                let (ok, events, error, replay_job) = match crate::embedded::execute(
                    request,
                    ctx.workers,
                    false,
                )
                .await
                {
                    Ok(s) => {
                        let complete = s.acknowledged == s.recovered;
                        let ok = s.state == JobPhase::Succeeded && complete;
                        let error = if s.state != JobPhase::Succeeded {
                            Some(format!(
                                "replay job {} {}: {} of {} shards failed",
                                s.job_id, s.state, s.shards_failed, s.shards
                            ))
                        } else if !complete {
                            Some(format!(
                                "replay job {}: {} events decoded for the topic, {} acknowledged",
                                s.job_id, s.recovered, s.acknowledged
                            ))
                        } else {
                            None
                        };
                        (ok, s.acknowledged, error, Some(s.job_id))
                    }
                    Err(e) => {
                        if matches!(e, Failure::Interrupted(_)) {
                            ctx.interrupted
                                .store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                        (false, 0, Some(failure_text(&e)), None)
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
                            let store = ctx.stores[name].clone();
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
                            let d = ctx.druid.as_ref().expect("checked at start");
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

fn failure_text(e: &Failure) -> String {
    match e {
        Failure::BadRequest(m) | Failure::Job(m) | Failure::Interrupted(m) => m.clone(),
    }
}
