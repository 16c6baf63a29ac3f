//! The job registry: what the coordinator core and the worker loop know about jobs besides their
//! shards. It sits beside [`ShardStore`] (every registry is one) with two implementations, in
//! memory ([`InMemoryShardStore`], for `rewind run` and in-process tests) and etcd (the
//! distributed mode), and one contract suite ([`contract`]) that both pass.
//!
//! - **Jobs**: a job is submitted once with its record (spec + request), status and shards; its
//!   id is then taken for good (`JobExists`). Active jobs (running or cancelling) are listed
//!   with their phase; a finished job keeps only its status (with the summary).
//! - **Live counters** of attempts in flight, fenced like commits (a stale attempt cannot
//!   publish), read together with the committed shards' counts.
//! - **Leadership**: one holder at a time, tied to its lease.

use std::future::Future;

use crate::ids::{JobId, ShardId};
use crate::lifecycle::{JobPhase, JobStatus};
use crate::request::JobRecord;
use crate::shard_store::{
    Claim, InMemoryShardStore, LeaseId, ShardCounts, ShardDone, ShardState, ShardStore, StoreError,
};

/// The contract of a job registry (see the module docs).
pub trait JobRegistry: ShardStore + Clone + 'static {
    /// Registers a job: record, status, shards (all pending) and its active phase, at once.
    /// `JobExists` when the id was ever used.
    fn submit(
        &self,
        record: &JobRecord,
        status: &JobStatus,
        shards: &[ShardId],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The job's record, as submitted.
    fn record(&self, job: &JobId) -> impl Future<Output = Result<JobRecord, StoreError>> + Send;

    fn status(&self, job: &JobId) -> impl Future<Output = Result<JobStatus, StoreError>> + Send;

    /// Every job's status, oldest job id first.
    fn statuses(&self) -> impl Future<Output = Result<Vec<(JobId, JobStatus)>, StoreError>> + Send;

    /// At most `limit` statuses, newest job id first, of jobs older than `before` (all when
    /// None): a page of the job history, read without the rest.
    fn statuses_before(
        &self,
        before: Option<&JobId>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(JobId, JobStatus)>, StoreError>> + Send;

    /// Forgets a finished job entirely (its record and status; its history stays in the
    /// destination's manifest). An active job is not touched: false.
    fn forget(&self, job: &JobId) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The unfinished jobs with their phase (running or cancelling), oldest first.
    fn active_jobs(
        &self,
    ) -> impl Future<Output = Result<Vec<(JobId, JobPhase)>, StoreError>> + Send;

    /// Replaces the status of a job that is still active, and its active phase with
    /// `status.phase`. False when the job has finished meanwhile (nothing changed).
    fn set_phase(
        &self,
        job: &JobId,
        status: &JobStatus,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Ends a job: its final status replaces the old one, it leaves the active jobs and its
    /// per-shard state is dropped, at once. Repeating it is harmless.
    fn finish(
        &self,
        job: &JobId,
        status: &JobStatus,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Publishes an attempt's live counters, while its claim is current.
    fn put_live(
        &self,
        claim: &Claim,
        counts: &ShardCounts,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The committed shards' done records and the live counters of attempts in flight, read
    /// at one moment: a commit is on one side or the other, never both or neither.
    fn counts_snapshot(
        &self,
        job: &JobId,
    ) -> impl Future<Output = Result<(Vec<ShardDone>, Vec<ShardCounts>), StoreError>> + Send;

    /// Takes or keeps leadership for `id` under `lease`; true while this caller leads.
    fn lead(
        &self,
        id: &str,
        lease: LeaseId,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The current leader's id, if any.
    fn leader(&self) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// Ends a lease now (a clean shutdown): its claims and leadership go at once.
    fn revoke(&self, lease: LeaseId) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Maintenance the leader runs now and then (etcd: compacting its history, keeping
    /// `keep` revisions). Returns what was done, if anything.
    fn compact_history(
        &self,
        _keep: i64,
    ) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send {
        async { Ok(None) }
    }

    /// Maintenance the leader runs for each running job: folding its committed shards' records
    /// into fewer, smaller ones (etcd: a year-long job in flight would otherwise hold ~340
    /// bytes per committed shard). Readers see the same shards either way. Returns how many
    /// records were folded.
    fn fold_done(&self, _job: &JobId) -> impl Future<Output = Result<u64, StoreError>> + Send {
        async { Ok(0) }
    }
}

/// The in-memory registry's part of the state (jobs' shards live in the shard store's).
#[derive(Debug, Default)]
pub(crate) struct MemRegistry {
    pub(crate) records: std::collections::BTreeMap<JobId, (JobRecord, JobStatus)>,
    pub(crate) active: std::collections::BTreeMap<JobId, JobPhase>,
    /// Live counters by (job, shard), with the claim token that wrote them.
    pub(crate) live: std::collections::HashMap<(JobId, ShardId), (u64, LeaseId, ShardCounts)>,
    pub(crate) leader: Option<(String, LeaseId)>,
}

impl JobRegistry for InMemoryShardStore {
    async fn submit(
        &self,
        record: &JobRecord,
        status: &JobStatus,
        shards: &[ShardId],
    ) -> Result<(), StoreError> {
        let job = &record.spec.job;
        self.with(|s| {
            if s.registry.records.contains_key(job) || s.jobs.contains_key(job) {
                return Err(StoreError::JobExists(job.clone()));
            }
            s.add_job(job, shards, record.spec.max_attempts);
            s.registry
                .records
                .insert(job.clone(), (record.clone(), status.clone()));
            s.registry.active.insert(job.clone(), status.phase);
            Ok(())
        })
    }

    async fn record(&self, job: &JobId) -> Result<JobRecord, StoreError> {
        self.with(|s| {
            s.registry
                .records
                .get(job)
                .map(|(r, _)| r.clone())
                .ok_or_else(|| StoreError::JobNotFound(job.clone()))
        })
    }

    async fn status(&self, job: &JobId) -> Result<JobStatus, StoreError> {
        self.with(|s| {
            s.registry
                .records
                .get(job)
                .map(|(_, st)| st.clone())
                .ok_or_else(|| StoreError::JobNotFound(job.clone()))
        })
    }

    async fn statuses(&self) -> Result<Vec<(JobId, JobStatus)>, StoreError> {
        self.with(|s| {
            Ok(s.registry
                .records
                .iter()
                .map(|(j, (_, st))| (j.clone(), st.clone()))
                .collect())
        })
    }

    async fn statuses_before(
        &self,
        before: Option<&JobId>,
        limit: usize,
    ) -> Result<Vec<(JobId, JobStatus)>, StoreError> {
        self.with(|s| {
            Ok(s.registry
                .records
                .iter()
                .rev()
                .filter(|(j, _)| before.is_none_or(|b| *j < b))
                .take(limit)
                .map(|(j, (_, st))| (j.clone(), st.clone()))
                .collect())
        })
    }

    async fn forget(&self, job: &JobId) -> Result<bool, StoreError> {
        self.with(|s| {
            if s.registry.active.contains_key(job) {
                return Ok(false);
            }
            Ok(s.registry.records.remove(job).is_some())
        })
    }

    async fn active_jobs(&self) -> Result<Vec<(JobId, JobPhase)>, StoreError> {
        self.with(|s| {
            Ok(s.registry
                .active
                .iter()
                .map(|(j, p)| (j.clone(), *p))
                .collect())
        })
    }

    async fn set_phase(&self, job: &JobId, status: &JobStatus) -> Result<bool, StoreError> {
        self.with(|s| {
            if !s.registry.active.contains_key(job) {
                return Ok(false);
            }
            s.registry.active.insert(job.clone(), status.phase);
            if let Some((_, st)) = s.registry.records.get_mut(job) {
                *st = status.clone();
            }
            Ok(true)
        })
    }

    async fn finish(&self, job: &JobId, status: &JobStatus) -> Result<(), StoreError> {
        self.with(|s| {
            let Some((_, st)) = s.registry.records.get_mut(job) else {
                return Err(StoreError::JobNotFound(job.clone()));
            };
            *st = status.clone();
            s.registry.active.remove(job);
            s.registry.live.retain(|(j, _), _| j != job);
            s.jobs.remove(job);
            Ok(())
        })
    }

    async fn put_live(&self, claim: &Claim, counts: &ShardCounts) -> Result<(), StoreError> {
        self.with(|s| {
            if !s.leases.contains_key(&claim.lease) {
                return Err(StoreError::LeaseExpired(claim.lease));
            }
            InMemoryShardStore::check_claim(s, claim)?;
            s.registry.live.insert(
                (claim.job.clone(), claim.shard),
                (claim.token, claim.lease, counts.clone()),
            );
            Ok(())
        })
    }

    async fn counts_snapshot(
        &self,
        job: &JobId,
    ) -> Result<(Vec<ShardDone>, Vec<ShardCounts>), StoreError> {
        self.with(|s| {
            let mem = s
                .jobs
                .get(job)
                .ok_or_else(|| StoreError::JobNotFound(job.clone()))?;
            let done = mem
                .shards
                .values()
                .filter_map(|st| match st {
                    ShardState::Done(d) => Some(d.clone()),
                    _ => None,
                })
                .collect();
            // Live counters only of claims still current (a commit or lost lease ends them).
            let live = s
                .registry
                .live
                .iter()
                .filter(|((j, shard), (token, _, _))| {
                    j == job && mem.claims.get(shard).is_some_and(|(_, t)| t == token)
                })
                .map(|(_, (_, _, c))| c.clone())
                .collect();
            Ok((done, live))
        })
    }

    async fn lead(&self, id: &str, lease: LeaseId) -> Result<bool, StoreError> {
        self.with(|s| {
            if !s.leases.contains_key(&lease) {
                return Err(StoreError::LeaseExpired(lease));
            }
            match &s.registry.leader {
                Some((holder, l)) if s.leases.contains_key(l) => Ok(holder == id && *l == lease),
                _ => {
                    s.registry.leader = Some((id.to_string(), lease));
                    Ok(true)
                }
            }
        })
    }

    async fn leader(&self) -> Result<Option<String>, StoreError> {
        self.with(|s| {
            Ok(s.registry
                .leader
                .as_ref()
                .filter(|(_, l)| s.leases.contains_key(l))
                .map(|(id, _)| id.clone()))
        })
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.with(|s| {
            s.revoke(lease);
            Ok(())
        })
    }
}

/// The contract suite every [`JobRegistry`] passes (in memory here, etcd in its crate).
#[cfg(any(test, feature = "testkit"))]
pub mod contract {
    use std::time::Duration;

    use super::*;
    use crate::job::JobSpec;
    use crate::range::Hour;
    use crate::request::JobRequest;

    fn job_record(shards: usize) -> (JobRecord, JobStatus, Vec<ShardId>) {
        let request = JobRequest {
            source: "/archive".into(),
            org: "TN-1".into(),
            start: "2024-04-01T00".into(),
            end: "2024-04-01T05".into(),
            dest: "/out".into(),
            max_attempts: 2,
            ..JobRequest::default()
        };
        let spec: JobSpec = request.validate(JobId::generate()).unwrap();
        let ids: Vec<ShardId> = (0..shards as i64)
            .map(|h| ShardId(Hour::from_epoch_hours(475_000 + h)))
            .collect();
        let status = JobStatus {
            phase: JobPhase::Running,
            org: String::new(),
            shards: ids.len() as u64,
            created_ms: 1,
            finished_ms: None,
            message: None,
            summary: None,
        };
        let record = JobRecord {
            spec,
            request,
            created_ms: 1,
            trace_parent: None,
            submitted_by: None,
            retry: None,
        };
        (record, status, ids)
    }

    /// A submitted job is listed active, readable, claimable; its id cannot be used again.
    pub async fn submit_registers_once<R: JobRegistry>(reg: &R) {
        let (record, status, shards) = job_record(3);
        let job = record.spec.job.clone();
        reg.submit(&record, &status, &shards).await.unwrap();
        assert_eq!(reg.record(&job).await.unwrap(), record);
        assert_eq!(reg.status(&job).await.unwrap(), status);
        assert!(
            reg.active_jobs()
                .await
                .unwrap()
                .contains(&(job.clone(), JobPhase::Running))
        );
        assert!(
            reg.statuses().await.unwrap().iter().any(|(j, _)| j == &job),
            "listed among the statuses"
        );
        assert_eq!(reg.progress(&job).await.unwrap().pending, 3);
        assert!(matches!(
            reg.submit(&record, &status, &shards).await,
            Err(StoreError::JobExists(_))
        ));
        let unknown = JobId::generate();
        assert!(matches!(
            reg.status(&unknown).await,
            Err(StoreError::JobNotFound(_))
        ));
        assert!(matches!(
            reg.record(&unknown).await,
            Err(StoreError::JobNotFound(_))
        ));
    }

    /// Phases: set while active only; finishing keeps the status, drops the shards, leaves the
    /// active list, and the id stays taken.
    pub async fn phases_and_finish<R: JobRegistry>(reg: &R) {
        let (record, mut status, shards) = job_record(2);
        let job = record.spec.job.clone();
        reg.submit(&record, &status, &shards).await.unwrap();
        status.phase = JobPhase::Cancelling;
        status.message = Some("cancelled by request".into());
        assert!(reg.set_phase(&job, &status).await.unwrap());
        assert_eq!(reg.status(&job).await.unwrap().phase, JobPhase::Cancelling);
        assert!(
            reg.active_jobs()
                .await
                .unwrap()
                .contains(&(job.clone(), JobPhase::Cancelling))
        );
        status.phase = JobPhase::Cancelled;
        status.finished_ms = Some(2);
        reg.finish(&job, &status).await.unwrap();
        reg.finish(&job, &status).await.unwrap();
        assert_eq!(reg.status(&job).await.unwrap(), status);
        assert!(
            !reg.active_jobs()
                .await
                .unwrap()
                .iter()
                .any(|(j, _)| j == &job)
        );
        assert!(matches!(
            reg.progress(&job).await,
            Err(StoreError::JobNotFound(_))
        ));
        // A finished job's phase cannot be changed any more.
        let mut late = status.clone();
        late.phase = JobPhase::Cancelling;
        assert!(!reg.set_phase(&job, &late).await.unwrap());
        assert_eq!(reg.status(&job).await.unwrap().phase, JobPhase::Cancelled);
        assert!(matches!(
            reg.submit(&record, &status, &shards).await,
            Err(StoreError::JobExists(_))
        ));
    }

    /// Live counters: published under a current claim, gone from the snapshot when the shard
    /// commits (its counts are then in the done records), refused for a fenced claim.
    pub async fn live_counts_follow_claims<R: JobRegistry>(reg: &R, ttl: Duration) {
        let (record, status, shards) = job_record(2);
        let job = record.spec.job.clone();
        reg.submit(&record, &status, &shards).await.unwrap();
        let lease = reg.grant_lease(Duration::from_secs(30)).await.unwrap();
        let a = reg.claim(&job, lease, "w").await.unwrap().unwrap();
        let live = ShardCounts {
            recovered: 5,
            bytes: 100,
            ..ShardCounts::default()
        };
        reg.put_live(&a, &live).await.unwrap();
        let (done, running) = reg.counts_snapshot(&job).await.unwrap();
        assert!(done.is_empty());
        assert_eq!(running, vec![live.clone()]);
        let finished = ShardCounts {
            recovered: 9,
            ..ShardCounts::default()
        };
        reg.commit(
            &a,
            ShardDone {
                attempt: a.attempt,
                manifest_key: "m".into(),
                counts: finished.clone(),
            },
        )
        .await
        .unwrap();
        let (done, running) = reg.counts_snapshot(&job).await.unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].counts, finished);
        assert!(running.is_empty(), "a committed attempt is not live");

        // A claim whose lease expired cannot publish.
        let short = reg.grant_lease(ttl).await.unwrap();
        let b = reg.claim(&job, short, "slow").await.unwrap().unwrap();
        tokio::time::sleep(ttl * 3).await;
        assert!(reg.put_live(&b, &live).await.is_err());
        let (_, running) = reg.counts_snapshot(&job).await.unwrap();
        assert!(running.is_empty());
    }

    /// Pages of the history come newest first without gaps or repeats; a finished job can be
    /// forgotten, an active one cannot.
    pub async fn history_pages_and_forgetting<R: JobRegistry>(reg: &R) {
        let mut ids = Vec::new();
        for _ in 0..5 {
            let (mut record, status, shards) = job_record(1);
            // Ids are time-sortable: make five distinct, ordered ones.
            record.spec.job =
                JobId::parse(&format!("20240101-00000{}-{:04x}", ids.len(), ids.len())).unwrap();
            reg.submit(&record, &status, &shards).await.unwrap();
            ids.push(record.spec.job.clone());
        }
        let mut seen = Vec::new();
        let mut before: Option<JobId> = None;
        loop {
            let page = reg.statuses_before(before.as_ref(), 2).await.unwrap();
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 2);
            before = page.last().map(|(j, _)| j.clone());
            seen.extend(page.into_iter().map(|(j, _)| j));
        }
        let mut mine: Vec<JobId> = seen.into_iter().filter(|j| ids.contains(j)).collect();
        let newest_first: Vec<JobId> = ids.iter().rev().cloned().collect();
        assert_eq!(mine, newest_first, "newest first, each once");
        let active = ids[0].clone();
        assert!(!reg.forget(&active).await.unwrap(), "an active job stays");
        assert!(reg.status(&active).await.is_ok());
        let mut status = reg.status(&active).await.unwrap();
        status.phase = JobPhase::Succeeded;
        reg.finish(&active, &status).await.unwrap();
        assert!(reg.forget(&active).await.unwrap());
        assert!(matches!(
            reg.status(&active).await,
            Err(StoreError::JobNotFound(_))
        ));
        mine.retain(|j| j != &active);
        assert!(
            !reg.statuses()
                .await
                .unwrap()
                .iter()
                .any(|(j, _)| j == &active),
            "gone from the history"
        );
    }

    /// One leader at a time; it keeps leading; when its lease ends another takes over.
    pub async fn leadership_follows_the_lease<R: JobRegistry>(reg: &R) {
        let a = reg.grant_lease(Duration::from_secs(30)).await.unwrap();
        let b = reg.grant_lease(Duration::from_secs(30)).await.unwrap();
        let first = reg.lead("a", a).await.unwrap();
        let second = reg.lead("b", b).await.unwrap();
        assert!(first ^ second, "exactly one leads: a={first} b={second}");
        let (leader, leader_lease, other, other_lease) = if first {
            ("a", a, "b", b)
        } else {
            ("b", b, "a", a)
        };
        assert!(
            reg.lead(leader, leader_lease).await.unwrap(),
            "keeps leading"
        );
        assert_eq!(reg.leader().await.unwrap().as_deref(), Some(leader));
        reg.revoke(leader_lease).await.unwrap();
        assert!(reg.lead(other, other_lease).await.unwrap(), "takes over");
        assert_eq!(reg.leader().await.unwrap().as_deref(), Some(other));
        reg.revoke(other_lease).await.unwrap();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn in_memory_submit_registers_once() {
        contract::submit_registers_once(&InMemoryShardStore::new()).await;
    }

    #[tokio::test]
    async fn in_memory_phases_and_finish() {
        contract::phases_and_finish(&InMemoryShardStore::new()).await;
    }

    #[tokio::test]
    async fn in_memory_live_counts_follow_claims() {
        contract::live_counts_follow_claims(&InMemoryShardStore::new(), Duration::from_millis(150))
            .await;
    }

    #[tokio::test]
    async fn in_memory_history_pages_and_forgetting() {
        contract::history_pages_and_forgetting(&InMemoryShardStore::new()).await;
    }

    #[tokio::test]
    async fn in_memory_leadership_follows_the_lease() {
        contract::leadership_follows_the_lease(&InMemoryShardStore::new()).await;
    }
}
