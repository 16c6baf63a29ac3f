//! The worker loop, one for both modes: `rewind worker` runs it against etcd, `rewind run`
//! against the in-memory registry.
//!
//! One lease per process, kept alive; `slots` tasks each claim a shard of any active job,
//! run it with [`execute_claim`] (the same code as the embedded mode) and commit. A poller keeps
//! the list of active jobs and stops the attempts of jobs that were cancelled. When the lease is
//! lost (the process was paused, etcd was partitioned away), attempts under it are stopped and
//! their output discarded, and a new lease is granted. On shutdown the worker stops claiming,
//! lets running attempts finish for `grace`, then stops and releases the rest.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rewind_common::job::TenantBudget;
use rewind_common::lifecycle::JobPhase;
use rewind_common::registry::JobRegistry;
use rewind_common::shard_store::{Claim, LeaseId, ShardCounts, StoreError, TenantCap};
use rewind_common::storage::StorageError;
use rewind_common::{JobId, JobRecord};
use tokio::sync::watch;
use tracing::{Instrument as _, info, warn};

use crate::decode::DecoderConfig;
use crate::metrics::WorkerMetrics;
use crate::pipeline::{Progress, ShardEnv};
use crate::run::{Attempt, execute_claim};
use crate::throttle::{TenantThrottles, ThrottledSource};

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub id: String,
    pub slots: usize,
    pub lease_ttl: Duration,
    /// How often the active jobs are re-read and an idle slot looks for work.
    pub poll: Duration,
    /// How long running attempts may go on after shutdown was asked for.
    pub grace: Duration,
    /// Where the process's metrics go (registered by the caller).
    pub metrics: WorkerMetrics,
    /// Woken after each attempt ends (committed, failed or given back): a leader in the same
    /// process (`rewind run`, `rewind retry`) looks at the job then instead of at its next tick.
    pub attempt_ended: Option<Arc<tokio::sync::Notify>>,
}

/// Adds what `progress` counted since `counted` to the metrics.
fn count_progress(metrics: &WorkerMetrics, progress: &Progress, counted: &Mutex<ShardCounts>) {
    let now = live_counts(progress);
    let mut last = counted.lock().unwrap_or_else(|p| p.into_inner());
    let delta = |a: u64, b: u64| a.saturating_sub(b);
    for (outcome, n) in [
        ("recovered", delta(now.recovered, last.recovered)),
        ("filtered", delta(now.filtered, last.filtered)),
        ("failed", delta(now.failed, last.failed)),
        (
            "unrecoverable",
            delta(now.unrecoverable, last.unrecoverable),
        ),
    ] {
        if n > 0 {
            WorkerMetrics::outcome(&metrics.events, outcome).inc_by(n);
        }
    }
    // Per-flow counts are taken out of the progress as they are published.
    let flows = std::mem::take(&mut *progress.flows.lock().unwrap_or_else(|p| p.into_inner()));
    for (flow, c) in flows {
        for (outcome, n) in [
            ("matched", c.matched),
            ("repaired", c.repaired),
            ("failed", c.failed),
            ("unrecoverable", c.unrecoverable),
            ("filtered", c.filtered),
        ] {
            if n > 0 {
                metrics
                    .flow_events
                    .get_or_create(&crate::metrics::FlowLabel {
                        flow: flow.clone(),
                        outcome: outcome.into(),
                    })
                    .inc_by(n);
            }
        }
    }
    for (outcome, n) in [
        ("produced", delta(now.produced, last.produced)),
        ("acknowledged", delta(now.acknowledged, last.acknowledged)),
    ] {
        if n > 0 {
            WorkerMetrics::outcome(&metrics.kafka_messages, outcome).inc_by(n);
        }
    }
    metrics.bytes_read.inc_by(delta(now.bytes, last.bytes));
    metrics
        .objects_read
        .inc_by(delta(now.objects, last.objects));
    *last = now;
}

fn live_counts(p: &Progress) -> ShardCounts {
    ShardCounts {
        objects: p.objects.load(Ordering::Relaxed),
        bytes: p.bytes.load(Ordering::Relaxed),
        recovered: p.recovered.load(Ordering::Relaxed),
        filtered: p.filtered.load(Ordering::Relaxed),
        failed: p.failed.load(Ordering::Relaxed),
        unrecoverable: p.unrecoverable.load(Ordering::Relaxed),
        produced: p.produced.load(Ordering::Relaxed),
        acknowledged: p.acknowledged.load(Ordering::Relaxed),
        ..ShardCounts::default()
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct DaemonStats {
    pub committed: u64,
    pub failed_attempts: u64,
    pub fenced: u64,
    pub released: u64,
}

/// A job as this worker sees it: the environment to run its shards, or why it cannot.
#[derive(Clone)]
enum JobEnv {
    /// The environment, and the job's trace context (W3C traceparent) if traced.
    Ready(ShardEnv, Option<String>),
    Broken {
        why: String,
        retryable: bool,
    },
}

/// A running job in this worker's list.
#[derive(Clone)]
struct Listed {
    job: JobId,
    env: JobEnv,
    share: crate::fair::Share,
    /// The cap on its tenant's running shards, from its spec.
    cap: Option<TenantCap>,
    /// Its tenant's budgets, from its spec: the key of the throttles it shares.
    budget: Option<BudgetKey>,
}

/// A tenant and the budget its jobs were accepted with.
type BudgetKey = (String, TenantBudget);

/// What the poller reads once per job: its environment, tenant, weight, cap and budget.
#[derive(Clone)]
struct JobInfo {
    env: JobEnv,
    tenant: String,
    weight: u32,
    cap: Option<TenantCap>,
    budget: Option<BudgetKey>,
}

struct InFlight {
    job: JobId,
    lease: LeaseId,
    stop: Arc<AtomicBool>,
}

struct Shared<R> {
    store: R,
    cfg: DaemonConfig,
    lease: Mutex<LeaseId>,
    /// The running jobs, oldest first, with what the fair order needs (crate::fair).
    jobs: Mutex<Vec<Listed>>,
    inflight: Mutex<HashMap<u64, InFlight>>,
    stats: Mutex<DaemonStats>,
    /// Tenants' budgets in this process, shared by the attempts of their jobs.
    tenants: Mutex<HashMap<BudgetKey, TenantThrottles>>,
    /// Woken each time the poller has listed the active jobs: an idle slot looks for work then
    /// rather than at the end of its wait (a job just submitted starts at once).
    listed: tokio::sync::Notify,
}

impl<R> Shared<R> {
    fn lease(&self) -> LeaseId {
        *self.lease.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stop_where(&self, pred: impl Fn(&InFlight) -> bool) {
        let inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        for f in inflight.values() {
            if pred(f) {
                f.stop.store(true, Ordering::Relaxed);
            }
        }
    }

    fn busy(&self) -> usize {
        self.inflight.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// The throttles of a tenant's budget in this process (made on first use).
    fn tenant_throttles(&self, key: &BudgetKey) -> TenantThrottles {
        let mut tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        tenants
            .entry(key.clone())
            .or_insert_with(|| TenantThrottles::new(&key.1))
            .clone()
    }

    /// Sets this process's share of each tenant budget: its attempts of the jobs under the
    /// budget over all of theirs across the fleet (as last polled, with this process's own
    /// claims and ends since counted in).
    fn share_budgets(&self) {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        let tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        for (key, throttles) in tenants.iter() {
            let under: Vec<&Listed> = jobs
                .iter()
                .filter(|l| l.budget.as_ref() == Some(key))
                .collect();
            let fleet: u64 = under.iter().map(|l| l.share.running).sum();
            let local = inflight
                .values()
                .filter(|f| under.iter().any(|l| l.job == f.job))
                .count() as u64;
            throttles.set_share(local, fleet.max(local));
        }
    }

    /// The running jobs in the order a free slot should try them (crate::fair::order).
    fn fair_order(&self) -> Vec<(JobId, JobEnv, Option<TenantCap>)> {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let shares: Vec<_> = jobs.iter().map(|l| l.share.clone()).collect();
        crate::fair::order(&shares)
            .into_iter()
            .map(|i| {
                (
                    jobs[i].job.clone(),
                    jobs[i].env.clone(),
                    jobs[i].cap.clone(),
                )
            })
            .collect()
    }

    /// Counts a claim of this worker's (`+1`) or its end (`-1`) in the job's running shards
    /// until the next poll reads them afresh, so this worker's other slots see it at once.
    fn count_running(&self, job: &JobId, up: bool) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = jobs.iter_mut().find(|l| &l.job == job) {
            l.share.running = if up {
                l.share.running + 1
            } else {
                l.share.running.saturating_sub(1)
            };
        }
    }
}

/// Opens the job's stores. A job whose stores cannot be opened here fails its shards with the
/// reason (at once when retrying cannot help, e.g. access denied; counted otherwise).
async fn open_env(record: &JobRecord, tenant: TenantThrottles) -> JobEnv {
    let request = &record.request;
    let broken = |what: &str, e: StorageError| JobEnv::Broken {
        why: format!("opening the {what}: {e}"),
        retryable: e.is_retryable(),
    };
    let places = &record.spec.places;
    let source = match rewind_s3::open_source(&places.source, &request.s3).await {
        Ok(s) => s,
        Err(e) => return broken("source", e),
    };
    let outputs = match rewind_s3::open_outputs(places, &request.s3).await {
        Ok(o) => o,
        Err((what, e)) => return broken(what, e),
    };
    JobEnv::Ready(
        ShardEnv {
            // (A retry's shards write into the execution it retries.)
            spec: Arc::new(record.run_spec()),
            source: ThrottledSource::wrap(source, tenant.source),
            output: outputs.dest,
            failed_output: outputs.failed,
            unrecoverable_output: outputs.unrecoverable,
            throttle: {
                let (events, bytes) = record.spec.sink.limits();
                crate::throttle::Throttle::new(events, bytes).map(Arc::new)
            },
            // Only stream sinks replay (a Parquet job's budget is its source's).
            tenant_throttle: tenant.replay.filter(|_| record.spec.sink.name().is_some()),
            produce_latency: None,
            progress: Arc::new(Progress::default()),
            cancel: Arc::new(AtomicBool::new(false)),
        },
        record.trace_parent.clone(),
    )
}

/// Runs the worker until `shutdown` turns true, then drains within the grace period.
pub async fn run_daemon<R: JobRegistry>(
    store: R,
    cfg: DaemonConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<DaemonStats, StoreError> {
    let lease = crate::run::retry_unavailable(|| store.grant_lease(cfg.lease_ttl)).await?;
    info!(worker = %cfg.id, lease = lease.0, slots = cfg.slots, "worker started");
    let shared = Arc::new(Shared {
        store,
        cfg: cfg.clone(),
        lease: Mutex::new(lease),
        jobs: Mutex::new(Vec::new()),
        inflight: Mutex::new(HashMap::new()),
        stats: Mutex::new(DaemonStats::default()),
        tenants: Mutex::new(HashMap::new()),
        listed: tokio::sync::Notify::new(),
    });
    let keeper = tokio::spawn(keep_lease(shared.clone()));
    let poller = tokio::spawn(poll_jobs(shared.clone()));
    let mut slots = Vec::new();
    for n in 0..cfg.slots.max(1) {
        slots.push(tokio::spawn(slot(shared.clone(), n, shutdown.clone())));
    }

    let _ = shutdown.wait_for(|stop| *stop).await;
    info!(worker = %cfg.id, running = shared.busy(), "shutting down: no new claims");
    let deadline = tokio::time::Instant::now() + cfg.grace;
    while shared.busy() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if shared.busy() > 0 {
        warn!(worker = %cfg.id, running = shared.busy(), "grace period over: stopping and releasing running shards");
        shared.stop_where(|_| true);
    }
    for s in slots {
        let _ = s.await;
    }
    keeper.abort();
    poller.abort();
    let lease = shared.lease();
    if let Err(e) = shared.store.revoke(lease).await {
        warn!(error = %e, "revoking the lease");
    }
    let stats = *shared.stats.lock().unwrap_or_else(|p| p.into_inner());
    info!(worker = %cfg.id, committed = stats.committed, fenced = stats.fenced, released = stats.released, "worker stopped");
    Ok(stats)
}

async fn keep_lease<R: JobRegistry>(shared: Arc<Shared<R>>) {
    let every = shared.cfg.lease_ttl / 3;
    loop {
        tokio::time::sleep(every).await;
        let lease = shared.lease();
        match shared.store.keep_alive(lease).await {
            Ok(()) => {}
            Err(StoreError::LeaseExpired(_)) => {
                warn!(
                    lease = lease.0,
                    "lease lost: stopping its attempts and taking a new lease"
                );
                shared.cfg.metrics.lease_losses.inc();
                shared.stop_where(|f| f.lease == lease);
                match shared.store.grant_lease(shared.cfg.lease_ttl).await {
                    Ok(new) => *shared.lease.lock().unwrap_or_else(|p| p.into_inner()) = new,
                    Err(e) => warn!(error = %e, "granting a new lease"),
                }
            }
            Err(e) => warn!(error = %e, "lease keep-alive failed; retrying"),
        }
    }
}

async fn poll_jobs<R: JobRegistry>(shared: Arc<Shared<R>>) {
    // What each job needs here, read once.
    let mut known: HashMap<JobId, JobInfo> = HashMap::new();
    loop {
        match shared.store.active_jobs().await {
            Ok(active) => {
                let mut list = Vec::new();
                let active: Vec<JobId> = active
                    .into_iter()
                    .filter(|(_, phase)| *phase == JobPhase::Running)
                    .map(|(job, _)| job)
                    .collect();
                // Each job's shards claimed across the fleet now, read for all at once (a
                // failed read counts none: the job is then tried earlier, never skipped).
                let claimed = shared.store.running_of(&active).await;
                for (job, running) in active.into_iter().zip(claimed) {
                    let running = running.unwrap_or(0);
                    let info = match known.get(&job) {
                        Some(k) => k.clone(),
                        None => match shared.store.record(&job).await {
                            Ok(record) => {
                                let org = record.spec.org.to_string();
                                let budget = record.spec.tenant_budget.map(|b| (org.clone(), b));
                                let throttles = budget
                                    .as_ref()
                                    .map(|k| shared.tenant_throttles(k))
                                    .unwrap_or_default();
                                JobInfo {
                                    env: open_env(&record, throttles).await,
                                    weight: record.request.priority().weight(),
                                    cap: record.spec.tenant_max_shards.map(|max| TenantCap {
                                        tenant: org.clone(),
                                        max,
                                    }),
                                    tenant: org,
                                    budget,
                                }
                            }
                            Err(e) => {
                                warn!(job = %job, error = %e, "reading the job record");
                                continue;
                            }
                        },
                    };
                    // A store that could not be opened for a passing reason is tried again.
                    if !matches!(
                        info.env,
                        JobEnv::Broken {
                            retryable: true,
                            ..
                        }
                    ) {
                        known.insert(job.clone(), info.clone());
                    }
                    list.push(Listed {
                        job,
                        env: info.env,
                        share: crate::fair::Share {
                            tenant: info.tenant,
                            weight: info.weight,
                            running,
                        },
                        cap: info.cap,
                        budget: info.budget,
                    });
                }
                list.sort_by(|a, b| a.job.cmp(&b.job));
                let live: Vec<JobId> = list.iter().map(|l| l.job.clone()).collect();
                known.retain(|j, _| live.contains(j));
                // Attempts of jobs that are no longer running (cancelled) stop now.
                shared.stop_where(|f| !live.contains(&f.job));
                *shared.jobs.lock().unwrap_or_else(|p| p.into_inner()) = list;
                shared.share_budgets();
                shared.listed.notify_waiters();
            }
            Err(e) => warn!(error = %e, "listing active jobs"),
        }
        tokio::time::sleep(shared.cfg.poll).await;
    }
}

async fn slot<R: JobRegistry>(
    shared: Arc<Shared<R>>,
    n: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let worker = format!("{}/{n}", shared.cfg.id);
    let mut backoff = Duration::from_millis(100);
    while !*shutdown.borrow() {
        // Registered before the jobs are read, so a listing that lands meanwhile still wakes
        // this slot.
        let listed = shared.listed.notified();
        tokio::pin!(listed);
        listed.as_mut().enable();
        // Weighted fair between tenants, then between a tenant's jobs (crate::fair).
        let jobs = shared.fair_order();
        let lease = shared.lease();
        let mut claimed = None;
        let mut trouble = false;
        for (job, env, cap) in jobs {
            match shared
                .store
                .claim_capped(&job, lease, &worker, cap.as_ref())
                .await
            {
                Ok(Some(c)) => {
                    claimed = Some((c, env));
                    break;
                }
                Ok(None) => {}
                Err(StoreError::JobNotFound(_)) => {}
                Err(e) => {
                    shared.cfg.metrics.store_retries.inc();
                    warn!(job = %job, error = %e, "claiming");
                    trouble = true;
                    break;
                }
            }
        }
        let Some((claim, env)) = claimed else {
            let wait = if trouble {
                backoff = (backoff * 2).min(Duration::from_secs(5));
                backoff
            } else {
                backoff = Duration::from_millis(100);
                shared.cfg.poll
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                // A new listing may hold work (not after trouble: the store needs its rest).
                _ = listed, if !trouble => {}
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        // No one can ask for a shutdown any more: wait as before.
                        tokio::time::sleep(wait).await;
                    }
                }
            }
            continue;
        };
        backoff = Duration::from_millis(100);
        let job = claim.job.clone();
        shared.count_running(&job, true);
        run_attempt(&shared, claim, env).await;
        shared.count_running(&job, false);
        if let Some(ended) = &shared.cfg.attempt_ended {
            ended.notify_one();
        }
    }
}

/// This process's share of a job's rate: its running attempts of the job over all the job's
/// running attempts (their claim keys in etcd).
async fn share_rate<R: JobRegistry>(
    store: &R,
    shared: &Shared<R>,
    job: &JobId,
    throttle: &crate::throttle::Throttle,
) {
    // (A count of the job's claims: reading its live counters would also read every
    // committed shard's record.)
    let Ok(running) = store.running(job).await else {
        return;
    };
    let local = shared
        .inflight
        .lock()
        .map(|m| m.values().filter(|f| &f.job == job).count() as u64)
        .unwrap_or(1);
    throttle.set_share(local, running.max(local));
}

async fn run_attempt<R: JobRegistry>(shared: &Arc<Shared<R>>, claim: Claim, env: JobEnv) {
    let (env, trace_parent) = match env {
        JobEnv::Ready(env, trace_parent) => (env, trace_parent),
        JobEnv::Broken { why, retryable } => {
            warn!(job = %claim.job, shard = %claim.shard, error = %why, "cannot run the job here");
            let _ = shared.store.fail(&claim, &why, retryable).await;
            bump(shared, |s| s.failed_attempts += 1);
            return;
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(Progress::default());
    let env = ShardEnv {
        cancel: stop.clone(),
        progress: progress.clone(),
        produce_latency: Some(shared.cfg.metrics.kafka_produce_seconds.clone()),
        ..env
    };
    shared
        .inflight
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(
            claim.token,
            InFlight {
                job: claim.job.clone(),
                lease: claim.lease,
                stop,
            },
        );
    // Live counters for WatchJob and the metrics, every second while the attempt runs.
    let counted = Arc::new(Mutex::new(ShardCounts::default()));
    let metrics = &shared.cfg.metrics;
    metrics.shards_running.inc();
    let started = std::time::Instant::now();
    let reporter = {
        let (store, claim, progress) = (shared.store.clone(), claim.clone(), progress.clone());
        let (metrics, counted) = (metrics.clone(), counted.clone());
        let (throttle, shared) = (env.throttle.clone(), shared.clone());
        let budgeted = shared
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|l| l.job == claim.job && l.budget.is_some());
        tokio::spawn(async move {
            let mut last = ShardCounts::default();
            loop {
                if throttle.is_none() && !budgeted {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                } else {
                    // The shares follow attempts starting and ending within a quarter second.
                    for _ in 0..4 {
                        if let Some(t) = &throttle {
                            share_rate(&store, &shared, &claim.job, t).await;
                        }
                        if budgeted {
                            shared.share_budgets();
                        }
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
                count_progress(&metrics, &progress, &counted);
                let now = live_counts(&progress);
                if now != last {
                    let _ = store.put_live(&claim, &now).await;
                    last = now;
                }
            }
        })
    };
    let decoder = DecoderConfig {
        max_event_bytes: env.spec.max_event_bytes,
        ..DecoderConfig::default()
    };
    let span = tracing::info_span!(
        "rewind.shard",
        job_id = %claim.job,
        shard = %claim.shard,
        attempt = claim.attempt,
        worker = %shared.cfg.id,
        outcome = tracing::field::Empty
    );
    rewind_common::trace::set_parent(&span, trace_parent.as_deref());
    let outcome = execute_claim(&shared.store, &env, &claim, decoder)
        .instrument(span.clone())
        .await;
    reporter.abort();
    count_progress(metrics, &progress, &counted);
    metrics.shards_running.dec();
    metrics
        .shard_seconds
        .observe(started.elapsed().as_secs_f64());
    let ended = match &outcome {
        Ok(Attempt::Committed) => "committed",
        Ok(Attempt::Fenced) => "fenced",
        Ok(Attempt::Failed) => "failed",
        Ok(Attempt::Released) => "released",
        Err(_) => "error",
    };
    WorkerMetrics::outcome(&metrics.attempts, ended).inc();
    span.record("outcome", ended);
    shared
        .inflight
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&claim.token);
    match outcome {
        Ok(Attempt::Committed) => bump(shared, |s| s.committed += 1),
        Ok(Attempt::Fenced) => bump(shared, |s| s.fenced += 1),
        Ok(Attempt::Failed) => bump(shared, |s| s.failed_attempts += 1),
        Ok(Attempt::Released) => bump(shared, |s| s.released += 1),
        Err(e) => {
            warn!(job = %claim.job, shard = %claim.shard, error = %e, "ending the attempt; the lease expiry returns the shard")
        }
    }
}

fn bump<R>(shared: &Shared<R>, f: impl FnOnce(&mut DaemonStats)) {
    f(&mut shared.stats.lock().unwrap_or_else(|p| p.into_inner()));
}
