//! The leader's loop: drives every unfinished job to its end. All state is in etcd, so a
//! restarted or newly elected coordinator simply goes on where the last one stopped.
//!
//! - A running job whose shards are all done or failed is committed ([`commit_job`]): orphan
//!   sweep, job manifest, `_SUCCESS` when every shard is done. Then its status gets the summary
//!   and its per-shard keys are compacted away.
//! - A cancelling job is ended ([`commit_cancelled`]) once no attempt of it is in flight.

use std::sync::Arc;
use std::time::Duration;

use rewind_common::shard_store::{ShardStore, StoreError};
use rewind_common::storage::StorageError;
use rewind_common::{JobId, JobRecord, JobRequest, JobSpec};
use rewind_etcd::EtcdStore;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::commit::{CommitError, commit_cancelled, commit_job};
use crate::metrics::{CoordinatorMetrics, StateLabel};
use crate::status::{JobStatus, Phase, now_ms};
use crate::summary::Summary;

#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub id: String,
    pub lease_ttl: Duration,
    pub tick: Duration,
    /// How often the leader compacts etcd's history (None: never; then etcd's own
    /// `--auto-compaction-*` must do it, or claims slow down as history grows).
    pub compact_every: Option<Duration>,
    /// Revisions kept by each compaction.
    pub compact_keep: i64,
    pub metrics: CoordinatorMetrics,
}

/// Campaigns for leadership and, while leading, drives jobs. Returns when `shutdown` is set,
/// revoking its lease so a standby takes over at once.
pub async fn lead(store: EtcdStore, cfg: LeaderConfig, mut shutdown: watch::Receiver<bool>) {
    let mut lease = None;
    let mut leading = false;
    let mut last_keepalive = tokio::time::Instant::now();
    let mut last_compaction = tokio::time::Instant::now();
    loop {
        if *shutdown.borrow() {
            break;
        }
        // Keep (or get) our lease.
        let current = match lease {
            Some(l) if last_keepalive.elapsed() < cfg.lease_ttl / 3 => Some(l),
            Some(l) => match store.keep_alive(l).await {
                Ok(()) => {
                    last_keepalive = tokio::time::Instant::now();
                    Some(l)
                }
                Err(StoreError::LeaseExpired(_)) => None,
                Err(e) => {
                    warn!(error = %e, "coordinator lease keep-alive failed");
                    Some(l)
                }
            },
            None => None,
        };
        let current = match current {
            Some(l) => l,
            None => match store.grant_lease(cfg.lease_ttl).await {
                Ok(l) => {
                    last_keepalive = tokio::time::Instant::now();
                    l
                }
                Err(e) => {
                    warn!(error = %e, "etcd unavailable; retrying");
                    wait(&mut shutdown, Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        lease = Some(current);
        match store.lead(&cfg.id, current).await {
            Ok(true) => {
                if !leading {
                    info!(coordinator = %cfg.id, "leading: driving jobs");
                    leading = true;
                    cfg.metrics.leader.set(1);
                }
                if let Err(e) = drive_once(&store, &cfg.metrics).await {
                    warn!(error = %e, "driving jobs");
                }
                if let Some(every) = cfg.compact_every
                    && last_compaction.elapsed() >= every
                {
                    last_compaction = tokio::time::Instant::now();
                    match store.compact_history(cfg.compact_keep).await {
                        Ok(Some(rev)) => {
                            cfg.metrics.etcd_compactions.inc();
                            info!(revision = rev, "compacted etcd history")
                        }
                        Ok(None) => {}
                        Err(e) => warn!(error = %e, "compacting etcd history"),
                    }
                }
            }
            Ok(false) => {
                if leading {
                    warn!(coordinator = %cfg.id, "lost leadership; standing by");
                }
                leading = false;
                cfg.metrics.leader.set(0);
            }
            Err(StoreError::LeaseExpired(_)) => lease = None,
            Err(e) => warn!(error = %e, "leader election"),
        }
        wait(&mut shutdown, cfg.tick).await;
    }
    if let Some(l) = lease {
        let _ = store.revoke(l).await;
    }
}

async fn wait(shutdown: &mut watch::Receiver<bool>, d: Duration) {
    let _ = tokio::time::timeout(d, shutdown.wait_for(|s| *s)).await;
}

/// One pass over the unfinished jobs.
pub async fn drive_once(store: &EtcdStore, metrics: &CoordinatorMetrics) -> Result<(), StoreError> {
    for (job, phase) in store.active_jobs().await? {
        let progress = match store.progress(&job).await {
            Ok(p) => p,
            Err(StoreError::JobNotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        let ready = match phase.as_str() {
            "cancelling" => progress.running == 0,
            _ => progress.finished(),
        };
        if ready && let Some(state) = finish(store, &job, phase == "cancelling").await? {
            metrics
                .jobs_finished
                .get_or_create(&StateLabel {
                    state: state.to_string(),
                })
                .inc();
        }
    }
    Ok(())
}

/// Ends a job; returns its final state, or None when the commit is to be tried again.
async fn finish(
    store: &EtcdStore,
    job: &JobId,
    cancelled: bool,
) -> Result<Option<&'static str>, StoreError> {
    use tracing::Instrument as _;
    let record: JobRecord = store.record(job).await?;
    let span = tracing::info_span!("rewind.job.commit", job_id = %job, cancelled);
    rewind_common::trace::set_parent(&span, record.trace_parent.as_deref());
    finish_record(store, job, cancelled, record)
        .instrument(span)
        .await
}

async fn finish_record(
    store: &EtcdStore,
    job: &JobId,
    cancelled: bool,
    record: JobRecord,
) -> Result<Option<&'static str>, StoreError> {
    let mut status: JobStatus = store.status(job).await?;
    let states = store.shards(job).await?;
    let request = record.request.clone();
    let spec = Arc::new(record.spec.clone());
    let commit_spec = spec.clone();
    let committed = match open_outputs(&request, &spec).await {
        Ok(outputs) => tokio::task::spawn_blocking(move || {
            let (output, sides) = (outputs.dest.as_ref(), outputs.sides());
            if cancelled {
                commit_cancelled(&commit_spec, &states, output, &sides)
            } else {
                commit_job(&commit_spec, &states, output, &sides)
            }
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("job commit task: {e}")))?,
        Err(e) => Err(CommitError::Storage(e)),
    };
    let finished_ms = now_ms();
    match committed {
        Ok(manifest) => {
            let elapsed = Duration::from_millis((finished_ms - record.created_ms).max(0) as u64);
            let summary = Summary::new(&record.request, &spec, &manifest, elapsed);
            status.phase = manifest.state.into();
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
            status.phase = Phase::Failed;
            status.message = Some(format!("job commit: {e}"));
        }
    }
    status.finished_ms = Some(finished_ms);
    store.set_status(job, &status, true).await?;
    store.compact(job).await?;
    info!(job = %job, state = status.phase.as_str(), "job finished");
    Ok(Some(status.phase.as_str()))
}

/// The output stores of a job.
async fn open_outputs(
    request: &JobRequest,
    spec: &JobSpec,
) -> Result<rewind_s3::JobOutputs, StorageError> {
    let places = request
        .locations(&spec.org)
        .map_err(|e| StorageError::Denied {
            what: "the job's locations".into(),
            why: e.to_string(),
        })?;
    rewind_s3::open_outputs(&places, &request.s3)
        .await
        .map_err(|(_, e)| e)
}
