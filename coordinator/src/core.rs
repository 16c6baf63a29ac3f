//! The coordinator core: one submit, one cancel and one drive for both modes, generic over the
//! [`JobRegistry`]. `rewind run` calls it with the in-memory registry, the gRPC service
//! (`crate::service`) with etcd; the service only converts wire types and maps [`CoreError`]s.
//!
//! - **submit**: validate the request once (a bad one names the argument), check the sink
//!   (the binary plugs its checks in: [`SinkCheck`]), list every hour prefix and pin the
//!   objects, write the shard plans next to the output, register the job.
//! - **drive** (what the leader does): a running job whose shards are all done or failed is
//!   committed ([`commit_job`]: orphan sweep, job manifest, `_SUCCESS` when every shard is done);
//!   a cancelling job is ended once no attempt of it runs. Its status gets the summary, and its
//!   per-shard state goes.

use std::sync::Arc;
use std::time::Duration;

use rewind_common::job::PackedPlan;
use rewind_common::lifecycle::{
    JobPhase, JobStatus, Limits, SinkCheck, Summary, TenantBudgets, TenantCaps, now_ms,
};
use rewind_common::location::JobSide;
use rewind_common::registry::JobRegistry;
use rewind_common::shard_store::StoreError;
use rewind_common::storage::StorageError;
use rewind_common::{JobId, JobRecord, JobRequest, JobSpec, OutputKeys, RequestError};
use tracing::{Instrument as _, info, warn};

use crate::access::Scope;
use crate::commit::{CommitError, commit_cancelled, commit_job};
use crate::metrics::{CoordinatorMetrics, StateLabel};
use crate::plan::{pin, store_plans};

/// What went wrong, with the meaning callers map to an exit code or a gRPC status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// The request is wrong (exit 2, `INVALID_ARGUMENT`).
    #[error("{0}")]
    BadRequest(String),
    /// Something the job needs is missing or refuses it (`FAILED_PRECONDITION`).
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    Denied(String),
    /// An input changed under the job (`ABORTED`).
    #[error("{0}")]
    Aborted(String),
    /// Try again later (`UNAVAILABLE`).
    #[error("{0}")]
    Unavailable(String),
    #[error("job {0} not found")]
    NotFound(JobId),
    #[error("{0}")]
    Internal(String),
}

impl CoreError {
    /// A storage failure met while doing `what`.
    pub fn storage(what: &str, e: StorageError) -> CoreError {
        let message = format!("{what}: {e}");
        match e {
            StorageError::Denied { .. } => CoreError::Denied(message),
            StorageError::Unfit { .. } => CoreError::BadRequest(message),
            StorageError::NotFound { .. } | StorageError::InvalidKey { .. } => {
                CoreError::Precondition(message)
            }
            StorageError::Changed { .. } => CoreError::Aborted(message),
            StorageError::Unavailable { .. } | StorageError::Io { .. } => {
                CoreError::Unavailable(message)
            }
        }
    }
}

impl From<RequestError> for CoreError {
    fn from(e: RequestError) -> CoreError {
        CoreError::BadRequest(e.to_string())
    }
}

impl From<StoreError> for CoreError {
    fn from(e: StoreError) -> CoreError {
        match e {
            StoreError::JobNotFound(job) => CoreError::NotFound(job),
            StoreError::JobFinished(job) => {
                CoreError::Precondition(format!("job {job} has finished"))
            }
            StoreError::Unavailable(why) => CoreError::Unavailable(why),
            other => CoreError::Internal(other.to_string()),
        }
    }
}

/// A job just registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub job: JobId,
    pub shards: u64,
}

/// A running job's committed shards are offered for folding every this many commits (half the
/// etcd store's fold of 120, so a job whose commits stop short still gets its records folded
/// once 240 stand alone).
const FOLD_CHECK_EVERY: u64 = 60;

/// The coordinator core over one registry. Cheap to clone.
#[derive(Clone)]
pub struct Coordinator<R> {
    registry: R,
    sinks: Arc<dyn SinkCheck>,
    limits: Limits,
    tenant_caps: TenantCaps,
    tenant_budgets: TenantBudgets,
    retention: Retention,
    /// Each running job's committed shards when its records were last offered for folding.
    fold_checked: Arc<std::sync::Mutex<std::collections::HashMap<JobId, u64>>>,
}

/// How much finished-job history the registry keeps (etcd holds coordination state, not an
/// archive: a finished job's history is its manifest in the destination).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The newest this many finished jobs are kept...
    pub keep_jobs: usize,
    /// ...and none that finished longer ago than this.
    pub keep_for: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep_jobs: 1000,
            keep_for: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

impl<R> std::fmt::Debug for Coordinator<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator").finish_non_exhaustive()
    }
}

impl<R: JobRegistry> Coordinator<R> {
    /// A core with the default [`Limits`] of a coordinator.
    pub fn new(registry: R, sinks: Arc<dyn SinkCheck>) -> Self {
        Coordinator {
            registry,
            sinks,
            limits: Limits::default(),
            tenant_caps: TenantCaps::default(),
            tenant_budgets: TenantBudgets::default(),
            retention: Retention::default(),
            fold_checked: Arc::default(),
        }
    }

    /// The caps on each tenant's running shards stamped into the jobs this core accepts.
    pub fn with_tenant_caps(mut self, caps: TenantCaps) -> Self {
        self.tenant_caps = caps;
        self
    }

    /// The budgets each tenant's jobs share across the fleet (`--tenant-*-per-sec`).
    pub fn with_tenant_budgets(mut self, budgets: TenantBudgets) -> Self {
        self.tenant_budgets = budgets;
        self
    }

    /// How much finished-job history [`Coordinator::expire_history`] keeps.
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Forgets finished jobs beyond the retention (count and age), newest kept. Active jobs are
    /// never touched. Returns how many were forgotten.
    pub async fn expire_history(&self) -> Result<usize, StoreError> {
        let oldest_kept = now_ms() - self.retention.keep_for.as_millis() as i64;
        let (mut kept, mut forgotten) = (0usize, 0usize);
        let mut before: Option<JobId> = None;
        loop {
            let page = self.registry.statuses_before(before.as_ref(), 500).await?;
            let Some((last, _)) = page.last() else { break };
            before = Some(last.clone());
            for (job, status) in page {
                if !status.phase.finished() {
                    continue;
                }
                let ended = status.finished_ms.unwrap_or(status.created_ms);
                if ended >= oldest_kept && kept < self.retention.keep_jobs {
                    kept += 1;
                } else if self.registry.forget(&job).await? {
                    forgotten += 1;
                }
            }
        }
        if forgotten > 0 {
            info!(forgotten, "forgot finished jobs beyond the retention");
        }
        Ok(forgotten)
    }

    /// The limits this core enforces on every request.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    pub fn registry(&self) -> &R {
        &self.registry
    }

    /// Validates a request once: the spec every later step uses, or what is wrong with it
    /// (the sink's settings are checked by [`Coordinator::submit`]).
    pub fn validate(&self, request: &JobRequest) -> Result<JobSpec, CoreError> {
        // A request's own limits can only lower the coordinator's.
        let limits = self.limits;
        if let Ok(range) = rewind_common::HourRange::parse(&request.start, &request.end, u64::MAX)
            && range.len() > limits.max_range_hours
        {
            return Err(CoreError::BadRequest(format!(
                "invalid --end: the range {} .. {} spans {} hours, more than this coordinator's \
                 limit of {} hours",
                request.start,
                request.end,
                range.len(),
                limits.max_range_hours
            )));
        }
        let mut capped = request.clone();
        capped.max_range_hours = capped.max_range_hours.min(limits.max_range_hours);
        capped.max_event_bytes = capped.max_event_bytes.min(limits.max_event_bytes);
        let mut spec = capped.validate(JobId::generate())?;
        spec.places.check_local_paths()?;
        spec.tenant_max_shards = self.tenant_caps.of(spec.org.as_str());
        spec.tenant_budget = self.tenant_budgets.of(spec.org.as_str());
        Ok(spec)
    }

    /// Lists every hour prefix of a valid job and pins its objects (nothing is registered).
    pub async fn plan(
        &self,
        request: &JobRequest,
        scope: &Scope,
    ) -> Result<(JobSpec, Vec<PackedPlan>), CoreError> {
        let spec = self.validate(request)?;
        scope.allows(&spec).map_err(CoreError::Denied)?;
        let plans = pin_job(request, &spec).await?;
        Ok((spec, plans))
    }

    /// Validates, checks the sink, plans, writes the shard plans and registers the job. The
    /// job's id is recorded on `span`, whose trace the shards' spans join.
    pub async fn submit(
        &self,
        request: JobRequest,
        span: &tracing::Span,
        scope: &Scope,
    ) -> Result<Submitted, CoreError> {
        self.submit_as(request, span, scope, None).await
    }

    /// [`Coordinator::submit`] under an id the caller chose (a guarded replay's day, whose id
    /// is recorded before it is submitted): submitting it again is answered with the job
    /// already registered, so a caller that lost the answer cannot run a day twice.
    pub async fn submit_as(
        &self,
        request: JobRequest,
        span: &tracing::Span,
        scope: &Scope,
        id: Option<JobId>,
    ) -> Result<Submitted, CoreError> {
        let created_ms = now_ms();
        if let Some(id) = &id {
            match self.registry.status(id).await {
                Ok(s) => {
                    return Ok(Submitted {
                        job: id.clone(),
                        shards: s.shards,
                    });
                }
                Err(StoreError::JobNotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut spec = self.validate(&request)?;
        if let Some(id) = &id {
            spec.job = id.clone();
        }
        if let Some(target) = &spec.ingest_to {
            if !self.sinks.finishes_ingests() {
                return Err(CoreError::BadRequest(
                    "invalid --coordinator: this coordinator does not run ingests".into(),
                ));
            }
            // One ingest at a time per trusted zone or landing zone: two would take the same
            // pending objects.
            let same_zone = |other: &JobRecord| {
                other.spec.ingest_to.as_ref().is_some_and(|t| {
                    t.trusted == target.trusted
                        || (t.landing == target.landing && t.pending == target.pending)
                }) && id.as_ref() != Some(&other.spec.job)
            };
            if let Some(job) = self.active_job_where(same_zone).await? {
                return Err(CoreError::Precondition(format!(
                    "ingest job {job} into {} is still running: one ingest at a time per \
                     trusted zone and landing zone",
                    target.trusted
                )));
            }
        }
        // Who may run it is decided before anything is touched.
        scope.allows(&spec).map_err(CoreError::Denied)?;
        // A Kafka replay's brokers, topic (and transactions, for exactly-once) are checked
        // before the job exists, so it fails at submit and not in every shard.
        spec = {
            let sinks = self.sinks.clone();
            let s3 = request.s3.clone();
            tokio::task::spawn_blocking(move || {
                sinks.check_settings(&spec).map_err(CoreError::BadRequest)?;
                sinks
                    .preflight(&mut spec)
                    .map_err(CoreError::Precondition)?;
                // A guarded replay reaches every sink it will clear before it is accepted.
                if spec.guard.is_some() {
                    sinks.guard(&spec, &s3).map_err(CoreError::Precondition)?;
                }
                Ok::<_, CoreError>(spec)
            })
            .await
            .map_err(|e| CoreError::Internal(format!("checking the sink: {e}")))??
        };
        // Planning lists every hour prefix now and pins the objects; the plans go to the
        // destination, where the workers read them.
        // A recovery pins its archive's objects first (a bad source touches no destination).
        // A guarded replay plans nothing itself: each of its days is a job of its own.
        let pinned = match (&spec.repair, &spec.guard) {
            (None, None) => Some(pin_job(&request, &spec).await?),
            (None, Some(_)) => Some(Vec::new()),
            (Some(_), _) => None,
        };
        let output = rewind_s3::open_output(&spec.places.dest, &request.s3, JobSide::Dest)
            .await
            .map_err(|e| CoreError::storage("opening the destination", e))?;
        // A table destination exists (and fits the job) before any shard runs.
        let output = {
            let (sinks, spec) = (self.sinks.clone(), spec.clone());
            tokio::task::spawn_blocking(move || sinks.destination(&spec, output))
                .await
                .map_err(|e| CoreError::Internal(format!("opening the destination: {e}")))?
                .map_err(|e| CoreError::storage("opening the destination", e))?
        };
        // A distributed repair splits the dataset's files into shards.
        let plans = match pinned {
            Some(plans) => plans,
            None => {
                let output = output.clone();
                let plans =
                    tokio::task::spawn_blocking(move || crate::plan::repair_plans(output.as_ref()))
                        .await
                        .map_err(|e| CoreError::Internal(format!("listing the dataset: {e}")))?
                        .map_err(|e| CoreError::storage("listing the dataset", e))?;
                if plans.is_empty() {
                    return Err(CoreError::BadRequest(format!(
                        "invalid --dataset: no Parquet files in {}",
                        spec.places.dest
                    )));
                }
                crate::plan::packed(plans)
            }
        };
        let shards: Vec<_> = plans.iter().map(|p| p.shard).collect();
        let plans = Arc::new(plans);
        for _ in 0..16 {
            // Plans are keyed by job id: never write them over another job's. Ids are random
            // (two coordinators collide in the same second 1 in 65,536): the registry knows
            // its jobs, the destination those of other registries (earlier `rewind run`s).
            match self.registry.record(&spec.job).await {
                Err(StoreError::JobNotFound(_)) => {}
                Ok(_) if id.is_some() => {
                    return Ok(Submitted {
                        job: spec.job,
                        shards: shards.len() as u64,
                    });
                }
                Ok(_) => {
                    spec.job = JobId::generate();
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            let prefix = OutputKeys::of(&spec).job_prefix();
            let used = {
                let output = output.clone();
                tokio::task::spawn_blocking(move || output.list(&prefix))
                    .await
                    .map_err(|e| CoreError::Internal(format!("checking the destination: {e}")))?
                    .map_err(|e| CoreError::storage("checking the destination", e))?
            };
            // (A chosen id may find the plans of its own earlier, unanswered submit.)
            if !used.is_empty() && id.is_none() {
                spec.job = JobId::generate();
                continue;
            }
            span.record("job_id", spec.job.as_str());
            if let Some(r) = &request.repair {
                let body = serde_json::to_vec(&r.input())
                    .map_err(|e| CoreError::Internal(e.to_string()))?;
                let (store, key) = (output.clone(), OutputKeys::of(&spec).repair_input());
                tokio::task::spawn_blocking(move || store.put(&key, &body))
                    .await
                    .map_err(|e| CoreError::Internal(format!("writing the repair input: {e}")))?
                    .map_err(|e| CoreError::storage("writing the repair input", e))?;
            }
            store_plans(output.clone(), &spec, plans.clone())
                .await
                .map_err(|e| CoreError::storage("writing the shard plans", e))?;
            let record = JobRecord {
                spec: spec.clone(),
                request: request.clone(),
                created_ms,
                trace_parent: rewind_common::trace::traceparent(span),
                submitted_by: Some(scope.subject.clone()),
                retry: None,
            };
            let status = JobStatus {
                phase: JobPhase::Running,
                org: spec.org.to_string(),
                shards: shards.len() as u64,
                created_ms,
                finished_ms: None,
                message: None,
                summary: None,
            };
            match self.registry.submit(&record, &status, &shards).await {
                Ok(()) => {
                    info!(job = %spec.job, shards = shards.len(), "job submitted");
                    return Ok(Submitted {
                        job: spec.job,
                        shards: shards.len() as u64,
                    });
                }
                Err(StoreError::JobExists(_)) if id.is_some() => {
                    return Ok(Submitted {
                        job: spec.job,
                        shards: shards.len() as u64,
                    });
                }
                Err(StoreError::JobExists(_)) => spec.job = JobId::generate(),
                Err(e) => return Err(e.into()),
            }
        }
        Err(CoreError::Internal(
            "could not find an unused job id".into(),
        ))
    }

    /// Retries the shards of a finished job that did not succeed (`rewind retry --coordinator`):
    /// registers a retry job whose shards — the job's failed and never-run ones, with the job's
    /// own plans — the workers run into the job's execution; its commit completes the execution
    /// and records the retry as a change (`crate::retry`). Retrying a retry job retries the job
    /// it retried. Returns the retry job's id.
    pub async fn retry(
        &self,
        job: &JobId,
        span: &tracing::Span,
        scope: &Scope,
    ) -> Result<JobId, CoreError> {
        let mut target = job.clone();
        let mut record = self.registry.record(&target).await?;
        if let Some(r) = &record.retry {
            target = r.job.clone();
            record = self.registry.record(&target).await?;
        }
        let status = self.registry.status(&target).await?;
        if !scope.sees(&status.org) {
            return Err(CoreError::NotFound(job.clone()));
        }
        if !status.phase.finished() {
            return Err(CoreError::Precondition(format!(
                "job {target} is still {}: retry it once it has finished",
                status.phase
            )));
        }
        // Writing into the job's destination is the caller's right to ask for.
        scope.allows(&record.spec).map_err(CoreError::Denied)?;
        crate::retry::check_kind(&target, &record.spec)
            .map_err(|e| CoreError::BadRequest(e.to_string()))?;
        // One retry of a job at a time: two would run the same shards.
        let retries_it = |other: &JobRecord| other.retry.as_ref().is_some_and(|r| r.job == target);
        if let Some(active) = self.active_job_where(retries_it).await? {
            return Err(CoreError::Precondition(format!(
                "job {target} is being retried by job {active}"
            )));
        }
        let output =
            rewind_s3::open_output(&record.spec.places.dest, &record.request.s3, JobSide::Dest)
                .await
                .map_err(|e| CoreError::storage("opening the destination", e))?;
        let prepared = {
            let (output, target) = (output.clone(), target.clone());
            tokio::task::spawn_blocking(move || crate::retry::prepare(output.as_ref(), &target))
                .await
                .map_err(|e| CoreError::Internal(format!("preparing the retry: {e}")))?
        };
        let (mark, todo, total) = match prepared {
            Ok(crate::retry::Prepared::Run {
                mark, todo, total, ..
            }) => (mark, todo, total),
            // An earlier retry (in one process) was killed after its commit: record it.
            Ok(crate::retry::Prepared::Record { mark, manifest }) => {
                let (who, of) = (scope.subject.clone(), target.clone());
                let c = tokio::task::spawn_blocking(move || {
                    crate::retry::record(output.as_ref(), &of, &mark, &manifest, Some(&who))
                })
                .await
                .map_err(|e| CoreError::Internal(format!("recording the retry: {e}")))?
                .map_err(|e| CoreError::Unavailable(e.to_string()))?;
                return Err(CoreError::Precondition(format!(
                    "an earlier retry of job {target} had committed; it is now recorded as \
                     change {}: retry again for what is still not done",
                    c.id
                )));
            }
            Err(crate::retry::RetryError::Refused(why)) => return Err(CoreError::BadRequest(why)),
            Err(crate::retry::RetryError::Storage(e)) => {
                return Err(CoreError::storage("preparing the retry", e));
            }
            Err(e) => return Err(CoreError::Unavailable(e.to_string())),
        };
        let created_ms = now_ms();
        let mut spec = record.spec.clone();
        for _ in 0..16 {
            spec.job = JobId::generate();
            let retry = JobRecord {
                spec: spec.clone(),
                request: record.request.clone(),
                created_ms,
                trace_parent: rewind_common::trace::traceparent(span),
                submitted_by: Some(scope.subject.clone()),
                retry: Some(rewind_common::RetryOf {
                    job: target.clone(),
                    mark: mark.clone(),
                }),
            };
            let status = JobStatus {
                phase: JobPhase::Running,
                org: spec.org.to_string(),
                shards: todo.len() as u64,
                created_ms,
                finished_ms: None,
                message: Some(format!(
                    "retry of job {target}: {} of its {total} shards",
                    todo.len()
                )),
                summary: None,
            };
            match self.registry.submit(&retry, &status, &todo).await {
                Ok(()) => {
                    span.record("job_id", spec.job.as_str());
                    info!(job = %spec.job, retries = %target, shards = todo.len(), "retry submitted");
                    return Ok(spec.job);
                }
                Err(StoreError::JobExists(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CoreError::Internal(
            "could not find an unused job id".into(),
        ))
    }

    /// The first active job whose record satisfies `pred` (one ingest per zone, one retry per
    /// job). A job that finished meanwhile is skipped.
    async fn active_job_where(
        &self,
        pred: impl Fn(&JobRecord) -> bool,
    ) -> Result<Option<JobId>, CoreError> {
        for (job, _) in self.registry.active_jobs().await? {
            if let Ok(record) = self.registry.record(&job).await
                && pred(&record)
            {
                return Ok(Some(job));
            }
        }
        Ok(None)
    }

    /// Asks a running job to stop: workers stop its attempts, the leader ends it. A finished
    /// job is left as it is. Returns the job's status after the call.
    pub async fn cancel(&self, job: &JobId, scope: &Scope) -> Result<JobStatus, CoreError> {
        let mut status = self.registry.status(job).await?;
        if !scope.sees(&status.org) {
            return Err(CoreError::NotFound(job.clone()));
        }
        if status.phase == JobPhase::Running {
            status.phase = JobPhase::Cancelling;
            status.message = Some("cancelled by request".into());
            // False when the job finished meanwhile: then there is nothing to cancel.
            if self.registry.set_phase(job, &status).await? {
                info!(job = %job, "job cancelling");
            }
            status = self.registry.status(job).await?;
        }
        Ok(status)
    }

    /// One pass over the unfinished jobs: commits or ends those that are ready. Returns the
    /// jobs finished in this pass with their final phase.
    pub async fn drive_once(
        &self,
        metrics: Option<&CoordinatorMetrics>,
    ) -> Result<Vec<(JobId, JobPhase)>, StoreError> {
        let mut finished = Vec::new();
        let active = self.registry.active_jobs().await?;
        let ids: Vec<JobId> = active.iter().map(|(job, _)| job.clone()).collect();
        let progresses = self.registry.progress_of(&ids).await;
        for ((job, phase), progress) in active.into_iter().zip(progresses) {
            let progress = match progress {
                Ok(p) => p,
                Err(StoreError::JobNotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            let cancelled = phase == JobPhase::Cancelling;
            let ready = if cancelled {
                progress.running == 0
            } else {
                progress.finished()
            };
            if !ready {
                // A long job in flight: keep its committed shards' records small (looked at
                // every `FOLD_CHECK_EVERY` commits, not on every pass).
                if self.fold_due(&job, progress.done) {
                    match self.registry.fold_done(&job).await {
                        Ok(0) => {}
                        Ok(n) => info!(job = %job, records = n, "folded committed shards' records"),
                        Err(e) => {
                            warn!(job = %job, error = %e, "folding committed shards' records")
                        }
                    }
                }
                continue;
            }
            let record = match self.registry.record(&job).await {
                Ok(r) => r,
                Err(StoreError::JobNotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            // A guarded replay is driven day by day by its own driver (`guard_driver`).
            if record.spec.guard.is_some() {
                continue;
            }
            if let Some(state) = self.finish(&job, cancelled, record).await? {
                if let Some(metrics) = metrics {
                    metrics
                        .jobs_finished
                        .get_or_create(&StateLabel {
                            state: state.to_string(),
                        })
                        .inc();
                }
                if let Ok(mut checked) = self.fold_checked.lock() {
                    checked.remove(&job);
                }
                finished.push((job, state));
            }
        }
        Ok(finished)
    }

    /// Whether `job`'s done records are due to be offered for folding: `FOLD_CHECK_EVERY` more
    /// committed since the last time.
    fn fold_due(&self, job: &JobId, done: u64) -> bool {
        let mut checked = self.fold_checked.lock().unwrap_or_else(|p| p.into_inner());
        let last = checked.get(job).copied().unwrap_or(0);
        if done < last + FOLD_CHECK_EVERY {
            return false;
        }
        checked.insert(job.clone(), done);
        true
    }

    /// Ends a job; returns its final phase, or None when the commit is to be tried again.
    async fn finish(
        &self,
        job: &JobId,
        cancelled: bool,
        record: JobRecord,
    ) -> Result<Option<JobPhase>, StoreError> {
        let span = tracing::info_span!("rewind.job.commit", job_id = %job, cancelled);
        rewind_common::trace::set_parent(&span, record.trace_parent.as_deref());
        self.finish_record(job, cancelled, record)
            .instrument(span)
            .await
    }

    async fn finish_record(
        &self,
        job: &JobId,
        cancelled: bool,
        record: JobRecord,
    ) -> Result<Option<JobPhase>, StoreError> {
        let mut status = self.registry.status(job).await?;
        let states = self.registry.shards(job).await?;
        // (A retry job commits the execution it retries.)
        let spec = Arc::new(record.run_spec());
        let commit_spec = spec.clone();
        let who = record.submitted_by.clone();
        let sinks = self.sinks.clone();
        let s3 = record.request.s3.clone();
        let retry = record.retry.clone();
        let committed = match open_outputs(&record.request, &spec).await {
            Ok(mut outputs) => tokio::task::spawn_blocking(move || {
                outputs.dest = sinks.destination(&commit_spec, outputs.dest.clone())?;
                let (output, sides) = (outputs.dest.as_ref(), outputs.sides());
                // A retry job completes the execution it retried, and records its change.
                if let Some(r) = &retry {
                    return crate::retry::complete(
                        output,
                        &sides,
                        &commit_spec,
                        &r.mark,
                        &states,
                        cancelled,
                        who.as_deref(),
                    )
                    .map(|(manifest, c)| (manifest, Some(c.id)))
                    .map_err(|e| match e {
                        crate::retry::RetryError::Storage(s) => CommitError::Storage(s),
                        crate::retry::RetryError::Commit(c) => c,
                        other => CommitError::Change(other.to_string()),
                    });
                }
                let keys = OutputKeys::of(&commit_spec);
                // A distributed ingest whose commit ended before (its `_SUCCESS` is there) is
                // being published: its files have moved on, so the commit is not run again.
                let ingest = commit_spec.ingest_to.is_some() && !cancelled;
                let committed_before = ingest && output.head(&keys.success_marker())?.is_some();
                let manifest = if committed_before {
                    let body = output.get(&keys.job_manifest())?.ok_or_else(|| {
                        StorageError::NotFound {
                            what: keys.job_manifest(),
                        }
                    })?;
                    serde_json::from_slice(&body).map_err(|e| StorageError::Unavailable {
                        what: keys.job_manifest(),
                        why: e.to_string(),
                    })?
                } else if cancelled {
                    commit_cancelled(&commit_spec, &states, output, &sides)?
                } else {
                    commit_job(&commit_spec, &states, output, &sides)?
                };
                // The job's change in the destination's log, last: recorded exactly when the
                // job's output took effect (a commit run again finds it).
                let change = match &manifest.repair {
                    Some(r) => r.change.clone(),
                    None if committed_before => None,
                    None => rewind_common::change::record_job(output, &manifest, who.as_deref())
                        .map_err(CommitError::from)?
                        .map(|c| c.id),
                };
                // An ingest then publishes, records its change in the trusted zone and moves
                // the objects it read; a failure there is tried again (every step idempotent).
                if ingest && manifest.state == JobPhase::Succeeded {
                    sinks
                        .ingest_finish(&commit_spec, &s3, &manifest)
                        .map_err(|why| StorageError::Unavailable {
                            what: "finishing the ingest".into(),
                            why,
                        })?;
                }
                Ok((manifest, change))
            })
            .await
            .map_err(|e| StoreError::Unavailable(format!("job commit task: {e}")))?,
            Err(e) => Err(CommitError::Storage(e)),
        };
        let finished_ms = now_ms();
        match committed {
            Ok((manifest, change)) => {
                let elapsed =
                    Duration::from_millis((finished_ms - record.created_ms).max(0) as u64);
                let mut summary = Summary::new(&spec, &manifest, elapsed);
                summary.change = change;
                status.phase = manifest.state;
                if !manifest.failed_shards.is_empty() && status.message.is_none() {
                    status.message = Some(format!(
                        "{} of {} shards failed",
                        manifest.failed_shards.len(),
                        manifest.shards
                    ));
                }
                status.summary = Some(summary);
            }
            // A storage error may pass (the destination is back later): try again next tick.
            Err(CommitError::Storage(e)) if e.is_retryable() => {
                warn!(job = %job, error = %e, "job commit failed; retrying");
                return Ok(None);
            }
            Err(e) => {
                warn!(job = %job, error = %e, "job commit failed for good");
                status.phase = JobPhase::Failed;
                status.message = Some(format!("job commit: {e}"));
            }
        }
        status.finished_ms = Some(finished_ms);
        self.registry.finish(job, &status).await?;
        info!(job = %job, state = %status.phase, "job finished");
        // The job a retry completed now shows how its execution ended.
        if let Some(r) = &record.retry
            && let Some(summary) = &status.summary
            && let Ok(mut retried) = self.registry.status(&r.job).await
            && retried.phase.finished()
        {
            retried.phase = status.phase;
            retried.summary = Some(summary.clone());
            retried.message = Some(format!("retried by job {job}: {}", status.phase));
            self.registry.finish(&r.job, &retried).await?;
        }
        Ok(Some(status.phase))
    }
}

/// Opens the job's source and lists every hour prefix (an ingest: every object), pinning the
/// objects.
async fn pin_job(request: &JobRequest, spec: &JobSpec) -> Result<Vec<PackedPlan>, CoreError> {
    let source = rewind_s3::open_source(&spec.places.source, &request.s3)
        .await
        .map_err(|e| CoreError::storage("opening the source", e))?;
    if spec.ingest {
        return crate::plan::ingest_plans(source)
            .await
            .map_err(|e| CoreError::storage("listing the landing zone", e));
    }
    pin(source, spec)
        .await
        .map_err(|e| CoreError::storage("listing the source", e))
}

/// The output stores of a job.
async fn open_outputs(
    request: &JobRequest,
    spec: &JobSpec,
) -> Result<rewind_s3::JobOutputs, StorageError> {
    rewind_s3::open_outputs(&spec.places, &request.s3)
        .await
        .map_err(|(_, e)| e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rewind_common::lifecycle::NoSinkCheck;
    use rewind_common::shard_store::InMemoryShardStore;

    fn request(dir: &std::path::Path) -> JobRequest {
        JobRequest {
            source: dir.to_string_lossy().into(),
            org: "TN-1".into(),
            start: "2024-01-01".into(),
            end: "2024-01-03".into(),
            dest: dir.join("out").to_string_lossy().into(),
            ..JobRequest::default()
        }
    }

    /// Finished jobs older than the age, and beyond the count of the newest within it, are
    /// forgotten; active ones stay.
    #[tokio::test]
    async fn history_is_kept_by_count_and_age() {
        let dir = tempfile::tempdir().unwrap();
        let registry = InMemoryShardStore::new();
        let core =
            Coordinator::new(registry.clone(), Arc::new(NoSinkCheck)).with_retention(Retention {
                keep_jobs: 2,
                keep_for: Duration::from_secs(3600),
            });
        for n in 0..5 {
            let job = core
                .submit(
                    request(dir.path()),
                    &tracing::Span::none(),
                    &Scope::all("test"),
                )
                .await
                .unwrap()
                .job;
            if n < 4 {
                let mut status = registry.status(&job).await.unwrap();
                status.phase = JobPhase::Succeeded;
                // The second newest finished two hours ago: too old, whatever the count.
                status.finished_ms = Some(now_ms() - if n == 2 { 7_200_000 } else { 1000 });
                registry.finish(&job, &status).await.unwrap();
            }
        }
        // One finished two hours ago (too old), three within the hour of which two are kept.
        assert_eq!(core.expire_history().await.unwrap(), 2);
        let left = registry.statuses().await.unwrap();
        assert_eq!(left.len(), 3, "{left:?}");
        assert_eq!(
            left.iter()
                .filter(|(_, s)| s.phase == JobPhase::Running)
                .count(),
            1,
            "the active job stays"
        );
        assert_eq!(
            core.expire_history().await.unwrap(),
            0,
            "nothing more to forget"
        );
    }

    /// Two ingests may not take the same pending objects: a second ingest into a trusted zone
    /// (or from a landing zone) with one still running is refused.
    #[tokio::test]
    async fn one_ingest_at_a_time_per_zone() {
        struct Ingests;
        impl rewind_common::lifecycle::SinkCheck for Ingests {
            fn check_settings(&self, _: &JobSpec) -> Result<(), String> {
                Ok(())
            }
            fn preflight(&self, _: &mut JobSpec) -> Result<(), String> {
                Ok(())
            }
            fn finishes_ingests(&self) -> bool {
                true
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let landing = dir.path().join("landing");
        std::fs::create_dir_all(landing.join("pending")).unwrap();
        std::fs::write(landing.join("pending/a.json"), b"{}").unwrap();
        let trusted = dir.path().join("trusted");
        let request = JobRequest {
            source: landing.join("pending").to_string_lossy().into(),
            org: "TN-1".into(),
            start: "1970-01-01".into(),
            end: "1970-01-01".into(),
            dest: trusted
                .join("_rewind/ingest/staging")
                .to_string_lossy()
                .into(),
            ingest: true,
            partition_by: Some("d={domain}".into()),
            ingest_to: Some(rewind_common::request::IngestTarget {
                trusted: trusted.to_string_lossy().into(),
                landing: landing.to_string_lossy().into(),
                pending: "pending/".into(),
                processed: "processed/".into(),
                dedup: None,
            }),
            ..JobRequest::default()
        };
        let core = Coordinator::new(InMemoryShardStore::new(), Arc::new(Ingests));
        let all = Scope::all("test");
        let first = core
            .submit(request.clone(), &tracing::Span::none(), &all)
            .await
            .unwrap();
        assert_eq!(first.shards, 1);
        match core.submit(request, &tracing::Span::none(), &all).await {
            Err(CoreError::Precondition(m)) => assert!(m.contains("still running"), "{m}"),
            other => panic!("{other:?}"),
        }
        // A plain coordinator (no ingest finisher) refuses ingests at once.
        let plain = Coordinator::new(InMemoryShardStore::new(), Arc::new(NoSinkCheck));
        let r = JobRequest {
            source: landing.join("pending").to_string_lossy().into(),
            ..core.registry().record(&first.job).await.unwrap().request
        };
        assert!(matches!(
            plain.submit(r, &tracing::Span::none(), &all).await,
            Err(CoreError::BadRequest(_))
        ));
    }

    /// A request cannot raise what the coordinator allows; it may ask for less.
    #[test]
    fn limits_are_the_servers() {
        let dir = tempfile::tempdir().unwrap();
        let core = Coordinator::new(InMemoryShardStore::new(), Arc::new(NoSinkCheck)).with_limits(
            Limits {
                max_range_hours: 48,
                max_event_bytes: 1 << 20,
            },
        );
        let refused = |r: &JobRequest| match core.validate(r) {
            Err(CoreError::BadRequest(m)) => m,
            other => panic!("{other:?}"),
        };
        // Three days against the coordinator's 48 hours: refused, whatever the request allows.
        let mut r = request(dir.path());
        r.max_range_hours = 1_000_000;
        assert!(refused(&r).contains("this coordinator's limit of 48 hours"));
        // Two days fit; a request may lower the limit for itself.
        r.end = "2024-01-02".into();
        core.validate(&r).expect("two days fit");
        r.max_range_hours = 24;
        assert!(refused(&r).contains("--max-range-hours"));
        // Events: the request asks for 16 MiB by default, the coordinator holds it to 1 MiB.
        r.max_range_hours = 1_000_000;
        r.max_event_bytes = 16 << 20;
        assert_eq!(core.validate(&r).unwrap().max_event_bytes, 1 << 20);
        r.max_event_bytes = 4096;
        assert_eq!(core.validate(&r).unwrap().max_event_bytes, 4096);
        // Whatever anyone allows, no event over 1 GiB (offsets must not overflow): `rewind run`
        // caps there, and a request asking for more is refused on its own.
        let local = Coordinator::new(InMemoryShardStore::new(), Arc::new(NoSinkCheck))
            .with_limits(Limits::local());
        r.max_event_bytes = usize::MAX;
        assert_eq!(
            local.validate(&r).unwrap().max_event_bytes,
            rewind_common::request::MAX_EVENT_BYTES_CEILING
        );
        let e = r.validate(JobId::generate()).unwrap_err().to_string();
        assert!(e.contains("at most"), "{e}");
    }
}
