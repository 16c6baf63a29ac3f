//! The gRPC `rewind.v1.JobService`: thin handlers that convert wire types (`crate::convert`)
//! and call the coordinator core. Every replica serves it (all state is in the registry); only
//! the leader drives jobs to their end (see [`crate::driver`]).

use std::pin::Pin;
use std::time::Duration;

use rewind_common::JobId;
use rewind_common::lifecycle::{JobPhase, JobStatus, now_ms};
use rewind_common::registry::JobRegistry;
use rewind_common::shard_store::{ShardCounts, ShardState};
use rewind_proto::v1 as pb;
use rewind_proto::v1::job_service_server::JobService;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::access::Scope;
use crate::convert::{
    counts_to_pb, parse_job, progress_to_pb, request_from_pb, request_to_pb, store_status,
};
use crate::core::Coordinator;

/// The caller's scope, as the authenticating interceptor left it (everything when the API has
/// no tokens).
fn scope_of<T>(req: &Request<T>) -> Scope {
    req.extensions()
        .get::<Scope>()
        .cloned()
        .unwrap_or_else(|| Scope::all("anonymous"))
}

/// One shard as a status page shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ShardView {
    pub shard: String,
    pub state: &'static str,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A done shard's events (decoded) and, of them, failed — when the registry still holds
    /// them (while the job runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_events: Option<u64>,
}

impl ShardView {
    /// A finished job's shards, as its manifest says they ended (done ones by their committed
    /// attempt, failed ones with their reason), in shard order.
    pub fn of_manifest(m: &rewind_common::lifecycle::JobManifest) -> Vec<ShardView> {
        let mut views: Vec<ShardView> = m
            .attempts
            .iter()
            .map(|(shard, attempt)| ShardView {
                shard: shard.clone(),
                state: "done",
                attempts: *attempt,
                error: None,
                events: None,
                failed_events: None,
            })
            .chain(m.failed_shards.iter().map(|f| ShardView {
                shard: f.shard.to_string(),
                state: "failed",
                attempts: f.attempts,
                error: Some(f.reason.clone()),
                events: None,
                failed_events: None,
            }))
            .collect();
        views.sort_by(|a, b| a.shard.cmp(&b.shard));
        views
    }
}

#[derive(Debug, Clone)]
pub struct JobServiceImpl<R> {
    core: Coordinator<R>,
    /// How often WatchJob looks for changes.
    watch_every: Duration,
}

impl<R: JobRegistry> JobServiceImpl<R> {
    pub fn new(core: Coordinator<R>) -> Self {
        JobServiceImpl {
            core,
            watch_every: Duration::from_millis(250),
        }
    }
}

impl<R: JobRegistry> JobServiceImpl<R> {
    /// Every shard of a job the caller may see, with its state (`pending`, `running`, `done`,
    /// `failed`), attempts and last error: from the registry while the job runs, from its
    /// manifest in the destination once it has finished (the registry keeps no shard state
    /// then). For a status page's heat map.
    pub async fn shard_views(&self, job: &JobId, scope: &Scope) -> Result<Vec<ShardView>, Status> {
        let status = self.visible(job, scope).await?;
        if !status.phase.finished() {
            let states = self
                .core
                .registry()
                .shards(job)
                .await
                .map_err(store_status)?;
            return Ok(states
                .into_iter()
                .map(|(shard, state)| {
                    let mut counts = None;
                    let (state, attempts, error) = match state {
                        ShardState::Pending {
                            attempts,
                            last_error,
                        } => ("pending", attempts, last_error),
                        ShardState::Running { attempt, .. } => ("running", attempt, None),
                        ShardState::Done(d) => {
                            counts = Some(d.counts);
                            ("done", d.attempt, None)
                        }
                        ShardState::Failed { attempts, reason } => {
                            ("failed", attempts, Some(reason))
                        }
                    };
                    ShardView {
                        shard: shard.to_string(),
                        state,
                        attempts,
                        error,
                        events: counts
                            .as_ref()
                            .map(|c| c.recovered + c.filtered + c.failed + c.unrecoverable),
                        failed_events: counts.as_ref().map(|c| c.failed),
                    }
                })
                .collect());
        }
        // Finished: the manifest in the destination says which shard ended how.
        let (m, _) = self.finished_manifest(job).await?;
        Ok(ShardView::of_manifest(&m))
    }

    /// A finished job's manifest (from its destination) and the storage options to reach its
    /// outputs, for a caller that may see the job (`NotFound` otherwise, or while it runs).
    pub async fn job_manifest(
        &self,
        job: &JobId,
        scope: &Scope,
    ) -> Result<
        (
            rewind_common::lifecycle::JobManifest,
            rewind_common::S3Options,
        ),
        Status,
    > {
        let status = self.visible(job, scope).await?;
        if !status.phase.finished() {
            return Err(Status::failed_precondition(format!(
                "job {job} is still running: its failed records are not final yet"
            )));
        }
        self.finished_manifest(job).await
    }

    async fn finished_manifest(
        &self,
        job: &JobId,
    ) -> Result<
        (
            rewind_common::lifecycle::JobManifest,
            rewind_common::S3Options,
        ),
        Status,
    > {
        let (dest, record) = self.destination_of(job).await?;
        // (A retry job's is the execution it completed.)
        let key = rewind_common::OutputKeys::of(&record.run_spec()).job_manifest();
        let body = tokio::task::spawn_blocking(move || dest.get(&key))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::unavailable(format!("reading the job manifest: {e}")))?
            .ok_or_else(|| Status::not_found(format!("job {job} has no manifest")))?;
        let m: rewind_common::lifecycle::JobManifest = serde_json::from_slice(&body)
            .map_err(|e| Status::internal(format!("the job manifest: {e}")))?;
        Ok((m, record.request.s3))
    }

    /// The destination a job wrote to (a retry job's: the execution it completes), opened, with
    /// the job's record and the id whose execution and changes are there; for a caller that
    /// may see the job.
    pub async fn job_destination(
        &self,
        job: &JobId,
        scope: &Scope,
    ) -> Result<
        (
            std::sync::Arc<dyn rewind_common::storage::OutputStore>,
            rewind_common::JobRecord,
            JobId,
        ),
        Status,
    > {
        self.visible(job, scope).await?;
        let (dest, record) = self.destination_of(job).await?;
        let execution = record.run_spec().job;
        Ok((dest, record, execution))
    }

    /// The job's record and its destination, opened.
    async fn destination_of(
        &self,
        job: &JobId,
    ) -> Result<
        (
            std::sync::Arc<dyn rewind_common::storage::OutputStore>,
            rewind_common::JobRecord,
        ),
        Status,
    > {
        let record = self
            .core
            .registry()
            .record(job)
            .await
            .map_err(store_status)?;
        let dest = rewind_s3::open_output(
            &record.spec.places.dest,
            &record.request.s3,
            rewind_common::location::JobSide::Dest,
        )
        .await
        .map_err(|e| Status::unavailable(format!("opening the destination: {e}")))?;
        Ok((dest, record))
    }

    /// After change `change` of job `job`'s execution was rolled back (through the API): the
    /// job's final status says how the execution now stands (a retry's rollback brings back the
    /// failed execution), and that the change was rolled back.
    pub async fn restate_after_rollback(&self, job: &JobId, change: &str) -> Result<(), Status> {
        let registry = self.core.registry();
        let mut status = registry.status(job).await.map_err(store_status)?;
        if !status.phase.finished() {
            return Ok(());
        }
        let (manifest, _) = self.finished_manifest(job).await?;
        let elapsed = status.summary.as_ref().map_or(0.0, |s| s.duration_s);
        let mut summary = rewind_common::lifecycle::Summary::new(
            &manifest.spec,
            &manifest,
            Duration::from_secs_f64(elapsed.max(0.0)),
        );
        summary.change = status
            .summary
            .as_ref()
            .and_then(|s| s.change.clone())
            .filter(|c| c != change);
        status.phase = manifest.state;
        status.summary = Some(summary);
        status.message = Some(format!("change {change} rolled back"));
        registry.finish(job, &status).await.map_err(store_status)
    }

    /// The event and byte counts now (committed + live) of the `most` newest active jobs: a
    /// throughput sample. (Each job's counts are a read of all its committed shards' records:
    /// with 1,000 jobs in flight, sampling every one every 2 s was most of what the coordinator
    /// asked of etcd at rest.)
    pub async fn active_counts(&self, most: usize) -> Result<Vec<(JobId, u64, u64)>, Status> {
        let mut out = Vec::new();
        let mut active: Vec<JobId> = self
            .core
            .registry()
            .active_jobs()
            .await
            .map_err(store_status)?
            .into_iter()
            .map(|(job, _)| job)
            .collect();
        // Job ids begin with their submission time: the newest last.
        active.sort();
        let newest = active.split_off(active.len().saturating_sub(most));
        for job in newest {
            // (A job that finished meanwhile has no shard keys left: skipped.)
            let Ok(c) = self.counts_now(&job).await else {
                continue;
            };
            let events = c.recovered + c.filtered + c.failed + c.unrecoverable;
            out.push((job, events, c.bytes));
        }
        Ok(out)
    }

    /// An unfinished job's counts now: its committed shards' and its attempts in flight, read at
    /// one moment.
    async fn counts_now(&self, job: &JobId) -> Result<ShardCounts, Status> {
        let (done, live) = self
            .core
            .registry()
            .counts_snapshot(job)
            .await
            .map_err(store_status)?;
        let mut c = ShardCounts::default();
        for done in done {
            c.add(&done.counts);
        }
        for live in live {
            // Per-flow counts of attempts in flight are not published live.
            c.add(&ShardCounts {
                flows: Default::default(),
                ..live
            });
        }
        Ok(c)
    }

    /// A job of another tenant is, to this caller, a job that does not exist. The job's status
    /// when the caller may see it.
    async fn visible(&self, job: &JobId, scope: &Scope) -> Result<JobStatus, Status> {
        let status = self
            .core
            .registry()
            .status(job)
            .await
            .map_err(store_status)?;
        if scope.sees(&status.org) {
            Ok(status)
        } else {
            Err(Status::not_found(format!("job {job} not found")))
        }
    }

    /// The job as the API shows it. A job that finishes while it is being read loses its
    /// per-shard keys half-way (they go with the final status, in one txn): read it again.
    async fn job(&self, job: &JobId) -> Result<pb::Job, Status> {
        let mut tries = 0;
        loop {
            match self.job_once(job).await {
                Err(s) if s.code() == tonic::Code::NotFound && tries < 3 => {
                    // Unknown job ids fail the status read: only shard keys can vanish.
                    self.core
                        .registry()
                        .status(job)
                        .await
                        .map_err(store_status)?;
                    tries += 1;
                }
                other => return other,
            }
        }
    }

    /// Status, shard counts, event counts (committed + live).
    async fn job_once(&self, job: &JobId) -> Result<pb::Job, Status> {
        let registry = self.core.registry();
        let status: JobStatus = registry.status(job).await.map_err(store_status)?;
        let record = registry.record(job).await.map_err(store_status)?;
        let mut out = pb::Job {
            job_id: job.to_string(),
            state: status.phase.as_str().to_string(),
            request: Some(request_to_pb(&record.request.redacted())),
            created_ms: status.created_ms,
            finished_ms: status.finished_ms.unwrap_or(0),
            message: status.message.clone().unwrap_or_default(),
            eta_s: -1.0,
            retry_of: record
                .retry
                .as_ref()
                .map(|r| r.job.to_string())
                .unwrap_or_default(),
            ..pb::Job::default()
        };
        if let Some(s) = &status.summary {
            out.shards = Some(pb::ShardCounts {
                total: s.shards,
                done: s.shards_done,
                failed: s.shards_failed,
                ..Default::default()
            });
            out.counts = Some(counts_to_pb(&s.counts()));
            out.failed_shards = s
                .failed_shards
                .iter()
                .map(|f| pb::FailedShard {
                    shard: f.shard.to_string(),
                    attempts: f.attempts,
                    reason: f.reason.clone(),
                })
                .collect();
            out.summary_json = serde_json::to_string(s).unwrap_or_default();
            out.eta_s = 0.0;
            return Ok(out);
        }
        if status.phase.finished() {
            out.shards = Some(pb::ShardCounts {
                total: status.shards,
                ..Default::default()
            });
            return Ok(out);
        }
        // Unfinished: shard states and counters from the registry.
        let p = registry.progress(job).await.map_err(store_status)?;
        out.shards = Some(progress_to_pb(p));
        let c = self.counts_now(job).await?;
        let secs = ((now_ms() - status.created_ms).max(1) as f64) / 1000.0;
        out.events_per_s = (c.recovered + c.filtered + c.failed + c.unrecoverable) as f64 / secs;
        out.bytes_per_s = c.bytes as f64 / secs;
        let finished = p.done + p.failed;
        if finished > 0 {
            out.eta_s = secs * (p.pending + p.running) as f64 / finished as f64;
        }
        out.counts = Some(counts_to_pb(&c));
        if p.failed > 0 {
            out.failed_shards = registry
                .shards(job)
                .await
                .map_err(store_status)?
                .into_iter()
                .filter_map(|(shard, s)| match s {
                    ShardState::Failed { attempts, reason } => Some(pb::FailedShard {
                        shard: shard.to_string(),
                        attempts,
                        reason,
                    }),
                    _ => None,
                })
                .collect();
        }
        Ok(out)
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::Job, Status>> + Send>>;

/// ListJobs pages: the default size, the most a caller may ask for (the server's limit), and
/// how many statuses one call reads at most while filtering.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 500;
const SCAN_BATCH: usize = 200;
const MAX_SCAN: usize = 5000;

#[tonic::async_trait]
impl<R: JobRegistry> JobService for JobServiceImpl<R> {
    async fn submit_job(
        &self,
        req: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        // The job's span continues the caller's trace; shard spans (on workers) join it.
        let headers: std::collections::HashMap<String, String> = req
            .metadata()
            .iter()
            .filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    Some((k.as_str().to_string(), v.to_str().ok()?.to_string()))
                }
                _ => None,
            })
            .collect();
        let span = tracing::info_span!("rewind.job", job_id = tracing::field::Empty);
        rewind_common::trace::set_parent_from(&span, &headers);
        let scope = scope_of(&req);
        let request = request_from_pb(req.into_inner().job)?;
        let submitted = self.core.submit(request, &span, &scope).await?;
        Ok(Response::new(pb::SubmitJobResponse {
            job_id: submitted.job.to_string(),
            shards: submitted.shards,
        }))
    }

    async fn plan_job(
        &self,
        req: Request<pb::PlanJobRequest>,
    ) -> Result<Response<pb::PlanJobResponse>, Status> {
        let scope = scope_of(&req);
        let request = request_from_pb(req.into_inner().job)?;
        let (_, plans) = self.core.plan(&request, &scope).await?;
        let shards: Vec<_> = plans
            .into_iter()
            .map(|p| pb::PlannedShard {
                shard: p.shard.to_string(),
                prefix: p.prefix,
                objects: p.objects,
                bytes: p.bytes,
            })
            .collect();
        Ok(Response::new(pb::PlanJobResponse {
            objects: shards.iter().map(|s| s.objects).sum(),
            bytes: shards.iter().map(|s| s.bytes).sum(),
            shards,
        }))
    }

    async fn get_job(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let scope = scope_of(&req);
        let job = parse_job(&req.into_inner().job_id)?;
        self.visible(&job, &scope).await?;
        Ok(Response::new(self.job(&job).await?))
    }

    async fn list_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let scope = scope_of(&req);
        let r = req.into_inner();
        let size = match r.page_size {
            0 => DEFAULT_PAGE,
            n => (n as usize).min(MAX_PAGE),
        };
        let state = match r.state.as_str() {
            "" => None,
            s => Some(JobPhase::parse(s).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "invalid state {s:?}: one of running, cancelling, succeeded, failed, cancelled"
                ))
            })?),
        };
        let mut before = match r.page_token.as_str() {
            "" => None,
            t => Some(parse_job(t)?),
        };
        // Statuses are read a batch at a time, newest first, and filtered here; a scan is
        // bounded, so a rare filter returns a short page with a token to go on.
        let (mut jobs, mut scanned) = (Vec::new(), 0usize);
        let next = loop {
            let batch = self
                .core
                .registry()
                .statuses_before(before.as_ref(), SCAN_BATCH)
                .await
                .map_err(store_status)?;
            if batch.is_empty() {
                break None;
            }
            let mut full = None;
            let mut older = false;
            for (job, status) in batch {
                before = Some(job.clone());
                scanned += 1;
                // Newest first: past the lower time bound, no later job can be wanted.
                if r.created_after_ms > 0 && status.created_ms < r.created_after_ms {
                    older = true;
                    break;
                }
                let wanted = state.is_none_or(|s| status.phase == s)
                    && (r.created_before_ms <= 0 || status.created_ms < r.created_before_ms)
                    && (r.org.is_empty() || status.org == r.org)
                    && scope.sees(&status.org);
                if wanted {
                    match self.job(&job).await {
                        Ok(j) => jobs.push(j),
                        Err(s) if s.code() == tonic::Code::NotFound => {}
                        Err(s) => return Err(s),
                    }
                }
                if jobs.len() >= size || scanned >= MAX_SCAN {
                    full = Some(job);
                    break;
                }
            }
            if full.is_some() {
                break full;
            }
            if older {
                break None;
            }
        };
        Ok(Response::new(pb::ListJobsResponse {
            jobs,
            next_page_token: next.map(|j| j.to_string()).unwrap_or_default(),
        }))
    }

    type WatchJobStream = WatchStream;

    async fn watch_job(
        &self,
        req: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let scope = scope_of(&req);
        let job = parse_job(&req.into_inner().job_id)?;
        self.visible(&job, &scope).await?;
        let first = self.job(&job).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let this = self.clone();
        tokio::spawn(async move {
            let mut last = first;
            if tx.send(Ok(last.clone())).await.is_err() {
                return;
            }
            let mut failures = 0;
            while !JobPhase::parse(&last.state).is_some_and(JobPhase::finished) {
                tokio::time::sleep(this.watch_every).await;
                match this.job(&job).await {
                    Ok(now) => {
                        failures = 0;
                        if now != last {
                            if tx.send(Ok(now.clone())).await.is_err() {
                                return;
                            }
                            last = now;
                        }
                    }
                    // etcd restarting: keep the stream open for a while.
                    Err(s) if s.code() == tonic::Code::Unavailable && failures < 120 => {
                        failures += 1;
                    }
                    Err(s) => {
                        let _ = tx.send(Err(s)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn cancel_job(
        &self,
        req: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let scope = scope_of(&req);
        let job = parse_job(&req.into_inner().job_id)?;
        self.core.cancel(&job, &scope).await?;
        Ok(Response::new(self.job(&job).await?))
    }

    async fn retry_job(
        &self,
        req: Request<pb::RetryJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let scope = scope_of(&req);
        let job = parse_job(&req.into_inner().job_id)?;
        let span = tracing::info_span!("rewind.job.retry", job_id = tracing::field::Empty);
        let retry = self.core.retry(&job, &span, &scope).await?;
        Ok(Response::new(self.job(&retry).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Scope;
    use crate::core::Coordinator;
    use rewind_common::lifecycle::NoSinkCheck;
    use rewind_common::request::JobRequest;
    use rewind_common::shard_store::InMemoryShardStore;
    use std::sync::Arc;

    /// The throughput sampler reads the newest `most` active jobs only, whatever the number in
    /// flight.
    #[tokio::test]
    async fn samples_are_taken_of_the_newest_active_jobs_only() {
        let dir = tempfile::tempdir().unwrap();
        let core = Coordinator::new(InMemoryShardStore::new(), Arc::new(NoSinkCheck));
        let mut jobs = Vec::new();
        for _ in 0..5 {
            let request = JobRequest {
                source: dir.path().to_string_lossy().into(),
                org: "TN-1".into(),
                start: "2024-01-01".into(),
                end: "2024-01-01".into(),
                dest: dir.path().join("out").to_string_lossy().into(),
                ..JobRequest::default()
            };
            let span = tracing::Span::none();
            let submitted = core.submit(request, &span, &Scope::all("test")).await;
            jobs.push(submitted.unwrap().job);
        }
        jobs.sort();
        let service = JobServiceImpl::new(core);
        let sampled: Vec<JobId> = service
            .active_counts(3)
            .await
            .unwrap()
            .into_iter()
            .map(|(job, _, _)| job)
            .collect();
        assert_eq!(sampled, jobs[2..].to_vec());
        assert_eq!(service.active_counts(10).await.unwrap().len(), 5);
    }
}
