//! The gRPC `rewind.v1.JobService`. Every replica serves it (all state is in etcd); only the
//! leader drives jobs to their end (see [`crate::driver`]).

use std::pin::Pin;
use std::time::Duration;

use rewind_common::job::ShardPlan;
use rewind_common::location::{JobSide, S3Options};
use rewind_common::shard_store::{ShardState, ShardStore, StoreError};
use rewind_common::storage::StorageError;
use rewind_common::{JobId, JobRecord, JobRequest, JobSpec, RequestError};
use rewind_etcd::{EtcdStore, LiveCounts};
use rewind_proto::v1 as pb;
use rewind_proto::v1::job_service_server::JobService;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::plan::{pin, store_plans};
use crate::status::{JobStatus, Phase, now_ms};

#[derive(Debug, Clone)]
pub struct JobServiceImpl {
    store: EtcdStore,
    /// How often WatchJob looks for changes.
    watch_every: Duration,
}

impl JobServiceImpl {
    pub fn new(store: EtcdStore) -> Self {
        JobServiceImpl {
            store,
            watch_every: Duration::from_millis(250),
        }
    }
}

fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::JobNotFound(job) => Status::not_found(format!("job {job} not found")),
        StoreError::Unavailable(why) => Status::unavailable(why),
        other => Status::internal(other.to_string()),
    }
}

fn invalid(e: RequestError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// The request with the CLI's defaults for fields left empty.
pub fn request_from_pb(r: Option<pb::JobRequest>) -> Result<JobRequest, Status> {
    let r = r.ok_or_else(|| Status::invalid_argument("invalid job: missing"))?;
    let d = JobRequest::default();
    Ok(JobRequest {
        source: r.source,
        org: r.org,
        start: r.start,
        end: r.end,
        dest: r.dest,
        layout: if r.layout.is_empty() {
            d.layout
        } else {
            r.layout
        },
        arrival_filter: r.arrival_filter,
        failed_output: (!r.failed_output.is_empty()).then_some(r.failed_output),
        max_event_bytes: if r.max_event_bytes == 0 {
            d.max_event_bytes
        } else {
            r.max_event_bytes as usize
        },
        max_attempts: if r.max_attempts == 0 {
            d.max_attempts
        } else {
            r.max_attempts
        },
        max_range_hours: if r.max_range_hours == 0 {
            d.max_range_hours
        } else {
            r.max_range_hours
        },
        s3: r.s3.map(s3_from_pb).unwrap_or_default(),
        unrecoverable_output: (!r.unrecoverable_output.is_empty())
            .then_some(r.unrecoverable_output),
        event_types: r.event_types,
        domains: r.domains,
        filter: (!r.filter.is_empty()).then_some(r.filter),
        flows: (!r.flows.is_empty()).then_some(r.flows),
        dedup: (!r.dedup.is_empty()).then_some(r.dedup),
        dedup_window_hours: r.dedup_window_hours.unwrap_or(d.dedup_window_hours),
        sink: (!r.sink.is_empty()).then_some(r.sink),
        brokers: (!r.brokers.is_empty()).then_some(r.brokers),
        topic: (!r.topic.is_empty()).then_some(r.topic),
        key: (!r.key.is_empty()).then_some(r.key),
        compression: (!r.compression.is_empty()).then_some(r.compression),
        kafka_options: r.kafka_options,
        delivery: (!r.delivery.is_empty()).then_some(r.delivery),
        checkpoint_events: r.checkpoint_events,
        max_events_per_sec: r.max_events_per_sec,
        max_bytes_per_sec: r.max_bytes_per_sec,
        ordered: r.ordered,
        object: (!r.object.is_empty()).then_some(r.object),
    })
}

fn s3_from_pb(o: pb::S3Options) -> S3Options {
    let opt = |s: String| (!s.is_empty()).then_some(s);
    S3Options {
        region: opt(o.region),
        endpoint_url: opt(o.endpoint_url),
        force_path_style: o.force_path_style,
        source_role_arn: opt(o.source_role_arn),
        source_external_id: opt(o.source_external_id),
        dest_role_arn: opt(o.dest_role_arn),
        dest_external_id: opt(o.dest_external_id),
        role_session_name: opt(o.role_session_name),
        part_size_mib: o.part_size_mib,
        read_ahead: o.read_ahead,
    }
}

fn s3_to_pb(o: &S3Options) -> Option<pb::S3Options> {
    if o == &S3Options::default() {
        return None;
    }
    let s = |v: &Option<String>| v.clone().unwrap_or_default();
    Some(pb::S3Options {
        region: s(&o.region),
        endpoint_url: s(&o.endpoint_url),
        force_path_style: o.force_path_style,
        source_role_arn: s(&o.source_role_arn),
        source_external_id: s(&o.source_external_id),
        dest_role_arn: s(&o.dest_role_arn),
        dest_external_id: s(&o.dest_external_id),
        role_session_name: s(&o.role_session_name),
        part_size_mib: o.part_size_mib,
        read_ahead: o.read_ahead,
    })
}

/// A storage failure met while planning, as a gRPC status.
fn storage_status(what: &str, e: StorageError) -> Status {
    let message = format!("{what}: {e}");
    match e {
        StorageError::Denied { .. } => Status::permission_denied(message),
        StorageError::NotFound { .. } | StorageError::InvalidKey { .. } => {
            Status::failed_precondition(message)
        }
        StorageError::Changed { .. } => Status::aborted(message),
        StorageError::Unavailable { .. } | StorageError::Io { .. } => Status::unavailable(message),
    }
}

/// Opens the job's source and lists every hour prefix, pinning the objects.
async fn pin_job(request: &JobRequest, spec: &JobSpec) -> Result<Vec<ShardPlan>, Status> {
    let places = request.locations(&spec.org).map_err(invalid)?;
    let source = rewind_s3::open_source(&places.source, &request.s3)
        .await
        .map_err(|e| storage_status("opening the source", e))?;
    pin(source, spec)
        .await
        .map_err(|e| storage_status("listing the source", e))
}

pub fn request_to_pb(r: &JobRequest) -> pb::JobRequest {
    pb::JobRequest {
        source: r.source.clone(),
        org: r.org.clone(),
        start: r.start.clone(),
        end: r.end.clone(),
        dest: r.dest.clone(),
        layout: r.layout.clone(),
        arrival_filter: r.arrival_filter,
        failed_output: r.failed_output.clone().unwrap_or_default(),
        max_event_bytes: r.max_event_bytes as u64,
        max_attempts: r.max_attempts,
        max_range_hours: r.max_range_hours,
        s3: s3_to_pb(&r.s3),
        unrecoverable_output: r.unrecoverable_output.clone().unwrap_or_default(),
        event_types: r.event_types.clone(),
        domains: r.domains.clone(),
        filter: r.filter.clone().unwrap_or_default(),
        flows: r.flows.clone().unwrap_or_default(),
        dedup: r.dedup.clone().unwrap_or_default(),
        dedup_window_hours: Some(r.dedup_window_hours),
        sink: r.sink.clone().unwrap_or_default(),
        brokers: r.brokers.clone().unwrap_or_default(),
        topic: r.topic.clone().unwrap_or_default(),
        key: r.key.clone().unwrap_or_default(),
        compression: r.compression.clone().unwrap_or_default(),
        kafka_options: r.kafka_options.clone(),
        delivery: r.delivery.clone().unwrap_or_default(),
        checkpoint_events: r.checkpoint_events,
        max_events_per_sec: r.max_events_per_sec,
        max_bytes_per_sec: r.max_bytes_per_sec,
        ordered: r.ordered,
        object: r.object.clone().unwrap_or_default(),
    }
}

fn flows_to_pb(
    flows: &std::collections::BTreeMap<String, rewind_common::job::FlowCounts>,
) -> std::collections::HashMap<String, pb::FlowCounts> {
    flows
        .iter()
        .map(|(name, c)| {
            let pb = pb::FlowCounts {
                matched: c.matched,
                repaired: c.repaired,
                failed: c.failed,
                unrecoverable: c.unrecoverable,
                filtered: c.filtered,
            };
            (name.clone(), pb)
        })
        .collect()
}

fn parse_job(id: &str) -> Result<JobId, Status> {
    JobId::parse(id).map_err(|e| Status::invalid_argument(e.to_string()))
}

impl JobServiceImpl {
    /// The job as the API shows it. A job that finishes while it is being read loses its
    /// per-shard keys half-way (they go with the final status, in one txn): read it again.
    async fn job(&self, job: &JobId) -> Result<pb::Job, Status> {
        let mut tries = 0;
        loop {
            match self.job_once(job).await {
                Err(s) if s.code() == tonic::Code::NotFound && tries < 3 => {
                    // Unknown job ids fail the status read: only shard keys can vanish.
                    self.store
                        .status::<JobStatus>(job)
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
        let status: JobStatus = self.store.status(job).await.map_err(store_status)?;
        let record: JobRecord = self.store.record(job).await.map_err(store_status)?;
        let mut out = pb::Job {
            job_id: job.to_string(),
            state: status.phase.as_str().to_string(),
            request: Some(request_to_pb(&record.request)),
            created_ms: status.created_ms,
            finished_ms: status.finished_ms.unwrap_or(0),
            message: status.message.clone().unwrap_or_default(),
            eta_s: -1.0,
            ..pb::Job::default()
        };
        if let Some(s) = &status.summary {
            out.shards = Some(pb::ShardCounts {
                total: s.shards,
                done: s.shards_done,
                failed: s.shards_failed,
                ..Default::default()
            });
            out.counts = Some(pb::EventCounts {
                objects: s.objects,
                bytes: s.bytes,
                recovered: s.recovered,
                filtered: s.filtered,
                failed: s.failed,
                objects_skipped: s.objects_skipped,
                unrecoverable: s.unrecoverable,
                repaired: s.repaired,
                duplicates: s.duplicates,
                flows: flows_to_pb(&s.flows),
                produced: s.produced,
                acknowledged: s.acknowledged,
            });
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
        // Unfinished: shard states and counters from etcd.
        let p = self.store.progress(job).await.map_err(store_status)?;
        out.shards = Some(pb::ShardCounts {
            total: p.total(),
            pending: p.pending,
            running: p.running,
            done: p.done,
            failed: p.failed,
        });
        let mut c = pb::EventCounts::default();
        let (done, live) = self
            .store
            .counts_snapshot::<LiveCounts>(job)
            .await
            .map_err(store_status)?;
        let mut flows = std::collections::BTreeMap::new();
        for done in done {
            rewind_common::job::add_counts(
                &mut flows,
                &done.counts.flows,
                rewind_common::job::FlowCounts::add,
            );
            c.objects += done.counts.objects;
            c.bytes += done.counts.bytes;
            c.recovered += done.counts.recovered;
            c.filtered += done.counts.filtered;
            c.failed += done.counts.failed;
            c.objects_skipped += done.counts.objects_skipped;
            c.unrecoverable += done.counts.unrecoverable;
            c.repaired += done.counts.repaired;
            c.duplicates += done.counts.duplicates;
            c.produced += done.counts.produced;
            c.acknowledged += done.counts.acknowledged;
        }
        for live in live {
            c.objects += live.objects;
            c.bytes += live.bytes;
            c.recovered += live.recovered;
            c.filtered += live.filtered;
            c.failed += live.failed;
            c.unrecoverable += live.unrecoverable;
            c.produced += live.produced;
            c.acknowledged += live.acknowledged;
        }
        c.flows = flows_to_pb(&flows);
        let secs = ((now_ms() - status.created_ms).max(1) as f64) / 1000.0;
        out.events_per_s = (c.recovered + c.filtered + c.failed + c.unrecoverable) as f64 / secs;
        out.bytes_per_s = c.bytes as f64 / secs;
        let finished = p.done + p.failed;
        if finished > 0 {
            out.eta_s = secs * (p.pending + p.running) as f64 / finished as f64;
        }
        out.counts = Some(c);
        if p.failed > 0 {
            out.failed_shards = self
                .store
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

#[tonic::async_trait]
impl JobService for JobServiceImpl {
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
        let request = request_from_pb(req.into_inner().job)?;
        let mut spec = request.validate(JobId::generate()).map_err(invalid)?;
        request.check_local_paths(&spec.org).map_err(invalid)?;
        // A Kafka replay's brokers, topic (and transactions, for exactly-once) are checked
        // before the job exists, so it fails at submit and not in every shard.
        if let rewind_common::job::SinkSpec::Kafka(k) = &spec.sink {
            let k = k.clone();
            tokio::task::spawn_blocking(move || {
                rewind_worker::kafka::check_settings(&k).map_err(Status::invalid_argument)?;
                rewind_worker::kafka::preflight(&k, Duration::from_secs(15))
                    .map_err(Status::failed_precondition)
            })
            .await
            .map_err(|e| Status::internal(format!("checking Kafka: {e}")))??;
        }
        // Planning lists every hour prefix now and pins the objects; the plans go to the
        // destination, where the workers read them.
        let plans = pin_job(&request, &spec).await?;
        let places = request.locations(&spec.org).map_err(invalid)?;
        let output = rewind_s3::open_output(&places.dest, &request.s3, JobSide::Dest)
            .await
            .map_err(|e| storage_status("opening the destination", e))?;
        let shards: Vec<_> = plans.iter().map(|p| p.shard).collect();
        for _ in 0..8 {
            // Plans are keyed by job id: never write them over another job's (ids collide only
            // between coordinators in the same second, 1 in 65,536).
            match self.store.record::<serde_json::Value>(&spec.job).await {
                Err(StoreError::JobNotFound(_)) => {}
                Ok(_) => {
                    spec.job = JobId::generate();
                    continue;
                }
                Err(e) => return Err(store_status(e)),
            }
            span.record("job_id", spec.job.as_str());
            store_plans(output.clone(), &spec, plans.clone())
                .await
                .map_err(|e| storage_status("writing the shard plans", e))?;
            let record = JobRecord {
                spec: spec.clone(),
                request: request.clone(),
                created_ms: now_ms(),
                trace_parent: rewind_common::trace::traceparent(&span),
            };
            let status = JobStatus {
                phase: Phase::Running,
                shards: shards.len() as u64,
                created_ms: record.created_ms,
                finished_ms: None,
                message: None,
                summary: None,
            };
            match self
                .store
                .submit(&spec.job, &record, &status, &shards, spec.max_attempts)
                .await
            {
                Ok(()) => {
                    tracing::info!(job = %spec.job, shards = shards.len(), "job submitted");
                    return Ok(Response::new(pb::SubmitJobResponse {
                        job_id: spec.job.to_string(),
                        shards: shards.len() as u64,
                    }));
                }
                Err(StoreError::JobExists(_)) => spec.job = JobId::generate(),
                Err(e) => return Err(store_status(e)),
            }
        }
        Err(Status::internal("could not find an unused job id"))
    }

    async fn plan_job(
        &self,
        req: Request<pb::PlanJobRequest>,
    ) -> Result<Response<pb::PlanJobResponse>, Status> {
        let request = request_from_pb(req.into_inner().job)?;
        let spec = request.validate(JobId::generate()).map_err(invalid)?;
        request.check_local_paths(&spec.org).map_err(invalid)?;
        let shards: Vec<_> = pin_job(&request, &spec)
            .await?
            .into_iter()
            .map(|p| pb::PlannedShard {
                shard: p.shard.to_string(),
                prefix: p.prefix,
                objects: p.objects.len() as u64,
                bytes: p.objects.iter().map(|o| o.size).sum(),
            })
            .collect();
        Ok(Response::new(pb::PlanJobResponse {
            objects: shards.iter().map(|s| s.objects).sum(),
            bytes: shards.iter().map(|s| s.bytes).sum(),
            shards,
        }))
    }

    async fn get_job(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let job = parse_job(&req.into_inner().job_id)?;
        Ok(Response::new(self.job(&job).await?))
    }

    async fn list_jobs(
        &self,
        _req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let mut jobs = Vec::new();
        for (job, _) in self
            .store
            .statuses::<JobStatus>()
            .await
            .map_err(store_status)?
        {
            match self.job(&job).await {
                Ok(j) => jobs.push(j),
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) => return Err(s),
            }
        }
        Ok(Response::new(pb::ListJobsResponse { jobs }))
    }

    type WatchJobStream = WatchStream;

    async fn watch_job(
        &self,
        req: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let job = parse_job(&req.into_inner().job_id)?;
        let first = self.job(&job).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let this = self.clone();
        tokio::spawn(async move {
            let mut last = first;
            if tx.send(Ok(last.clone())).await.is_err() {
                return;
            }
            let mut failures = 0;
            while !matches!(last.state.as_str(), "succeeded" | "failed" | "cancelled") {
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
        let job = parse_job(&req.into_inner().job_id)?;
        let mut status: JobStatus = self.store.status(&job).await.map_err(store_status)?;
        if status.phase == Phase::Running {
            status.phase = Phase::Cancelling;
            status.message = Some("cancelled by request".into());
            // False when the job finished meanwhile: then there is nothing to cancel.
            self.store
                .set_phase(&job, &status, "cancelling")
                .await
                .map_err(store_status)?;
            tracing::info!(job = %job, "job cancelling");
        }
        Ok(Response::new(self.job(&job).await?))
    }
}
