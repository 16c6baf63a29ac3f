//! The shard store: how shards are handed out to workers, exactly like the etcd protocol in
//! `docs/architecture.md`, with an in-memory implementation for `rewind run`.
//!
//! - A worker holds a **lease** with a TTL that it keeps alive; when the lease expires, every
//!   claim attached to it vanishes and those shards become claimable again.
//! - A **claim** carries a **fencing token** (strictly increasing across the store). Commit and
//!   fail succeed only while the claim is still the shard's current claim, so a worker that lost
//!   its lease (paused, partitioned) cannot commit and must discard what it wrote.
//! - Each claim is one **attempt**; after `max_attempts` the shard is failed with the last reason.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::ids::{JobId, ShardId};

/// What a shard produced, as recorded when it commits (small: the file list lives in the
/// manifest object that `manifest_key` points to).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShardCounts {
    pub objects: u64,
    pub objects_skipped: u64,
    pub bytes: u64,
    pub recovered: u64,
    pub filtered: u64,
    pub failed: u64,
    /// Routed to the unrecoverable output (by a flow, or matching none when so configured).
    #[serde(default)]
    pub unrecoverable: u64,
    /// Everything decoded: events and damaged ranges. Always recovered + filtered + failed +
    /// unrecoverable.
    #[serde(default)]
    pub decoded: u64,
    /// Of the recovered: repaired by a flow.
    #[serde(default)]
    pub repaired: u64,
    /// Of the filtered: dropped as duplicates (`--dedup`).
    #[serde(default)]
    pub duplicates: u64,
    /// Kafka sink: records handed to the producer, and acknowledged by the brokers.
    pub produced: u64,
    pub acknowledged: u64,
    /// What each flow did, by flow name.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub flows: std::collections::BTreeMap<String, crate::job::FlowCounts>,
    /// Storage requests retried after transient failures (throttling, 5xx, resets).
    pub retries: u64,
    /// Stream sinks without a producer of their own (Kinesis, Pub/Sub): records sent again
    /// after the service refused them for the moment (throttling, internal failure) or a call
    /// failed.
    #[serde(skip_serializing_if = "crate::output::is_zero")]
    pub sink_retries: u64,
}

impl ShardCounts {
    pub fn add(&mut self, other: &ShardCounts) {
        self.objects += other.objects;
        self.objects_skipped += other.objects_skipped;
        self.bytes += other.bytes;
        self.recovered += other.recovered;
        self.filtered += other.filtered;
        self.failed += other.failed;
        self.unrecoverable += other.unrecoverable;
        self.decoded += other.decoded;
        self.repaired += other.repaired;
        self.duplicates += other.duplicates;
        self.produced += other.produced;
        self.acknowledged += other.acknowledged;
        crate::job::add_counts(&mut self.flows, &other.flows, crate::job::FlowCounts::add);
        self.retries += other.retries;
        self.sink_retries += other.sink_retries;
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardDone {
    pub attempt: u32,
    pub manifest_key: String,
    pub counts: ShardCounts,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardState {
    Pending {
        attempts: u32,
        last_error: Option<String>,
    },
    Running {
        attempt: u32,
        worker: String,
    },
    Done(ShardDone),
    Failed {
        attempts: u32,
        reason: String,
    },
}

/// A worker's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseId(pub i64);

/// A worker's claim on one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub job: JobId,
    pub shard: ShardId,
    pub lease: LeaseId,
    /// Fencing token: strictly increasing across all claims of the store.
    pub token: u64,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The place among its tenant's capped running shards this claim holds (a store key),
    /// given back when the attempt ends ([`ShardStore::claim_capped`]).
    pub tenant_slot: Option<String>,
}

/// A cap on how many shards of one tenant (org) run at once across the fleet: the
/// coordinator's `--tenant-max-shards`, stamped into each job it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantCap {
    pub tenant: String,
    /// At least 1.
    pub max: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobProgress {
    pub pending: u64,
    pub running: u64,
    pub done: u64,
    pub failed: u64,
}

impl JobProgress {
    pub fn total(&self) -> u64 {
        self.pending + self.running + self.done + self.failed
    }

    pub fn finished(&self) -> bool {
        self.pending == 0 && self.running == 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("claim on shard {shard} (token {token}) is no longer current: fenced")]
    Fenced { shard: ShardId, token: u64 },
    #[error("lease {0:?} has expired")]
    LeaseExpired(LeaseId),
    #[error("job {0} not found")]
    JobNotFound(JobId),
    #[error("job {0} already exists")]
    JobExists(JobId),
    /// The job has ended and its shards' state is gone: what an attempt of it did is recorded
    /// in the job manifest in the destination (`JobManifest::attempts`).
    #[error("job {0} has finished")]
    JobFinished(JobId),
    #[error("shard store unavailable: {0}")]
    Unavailable(String),
}

/// What a failed attempt leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    WillRetry,
    Failed,
}

/// The contract every shard store implements (in memory here, etcd in the distributed mode).
pub trait ShardStore: Send + Sync {
    /// Registers a job and its shards, all pending.
    fn create_job(
        &self,
        job: &JobId,
        shards: &[ShardId],
        max_attempts: u32,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Grants a worker lease that lives `ttl` unless kept alive.
    fn grant_lease(
        &self,
        ttl: Duration,
    ) -> impl Future<Output = Result<LeaseId, StoreError>> + Send;

    fn keep_alive(&self, lease: LeaseId) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Claims one pending shard of `job` under `lease`, or `None` when none is claimable now.
    fn claim(
        &self,
        job: &JobId,
        lease: LeaseId,
        worker: &str,
    ) -> impl Future<Output = Result<Option<Claim>, StoreError>> + Send;

    /// [`ShardStore::claim`] within a cap on the tenant's running shards: `None` also when the
    /// tenant runs `cap.max` shards already. The claim holds one of the tenant's places until
    /// its attempt ends (commit, fail, release) or its lease expires. Stores of one process
    /// (the embedded mode, one tenant) ignore the cap.
    fn claim_capped(
        &self,
        job: &JobId,
        lease: LeaseId,
        worker: &str,
        cap: Option<&TenantCap>,
    ) -> impl Future<Output = Result<Option<Claim>, StoreError>> + Send {
        let _ = cap;
        self.claim(job, lease, worker)
    }

    /// Marks the claimed shard done; `Fenced` when the claim is no longer current. Idempotent:
    /// repeating a commit that took effect (its response was lost) returns `Ok`.
    fn commit(
        &self,
        claim: &Claim,
        done: ShardDone,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Ends the attempt with a reason; retried while attempts remain and `retryable`.
    fn fail(
        &self,
        claim: &Claim,
        reason: &str,
        retryable: bool,
    ) -> impl Future<Output = Result<AfterFailure, StoreError>> + Send;

    /// Gives the shard back without counting the attempt (a worker shutting down).
    fn release(&self, claim: &Claim) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn progress(&self, job: &JobId)
    -> impl Future<Output = Result<JobProgress, StoreError>> + Send;

    /// How many of the job's shards are claimed right now (one cheap count: workers read it
    /// for every active job on every poll to share their slots fairly).
    fn running(&self, job: &JobId) -> impl Future<Output = Result<u64, StoreError>> + Send;

    fn shards(
        &self,
        job: &JobId,
    ) -> impl Future<Output = Result<Vec<(ShardId, ShardState)>, StoreError>> + Send;

    /// [`ShardStore::progress`] of many jobs, in their order (etcd: a few round trips for all
    /// of them; the leader reads every unfinished job's progress on each pass).
    fn progress_of(
        &self,
        jobs: &[JobId],
    ) -> impl Future<Output = Vec<Result<JobProgress, StoreError>>> + Send {
        async move {
            let mut out = Vec::with_capacity(jobs.len());
            for job in jobs {
                out.push(self.progress(job).await);
            }
            out
        }
    }

    /// [`ShardStore::running`] of many jobs, in their order (etcd: a few round trips for all
    /// of them; every worker reads every active job's on each poll).
    fn running_of(
        &self,
        jobs: &[JobId],
    ) -> impl Future<Output = Vec<Result<u64, StoreError>>> + Send {
        async move {
            let mut out = Vec::with_capacity(jobs.len());
            for job in jobs {
                out.push(self.running(job).await);
            }
            out
        }
    }
}

#[derive(Debug)]
pub(crate) struct MemJob {
    max_attempts: u32,
    pub(crate) shards: BTreeMap<ShardId, ShardState>,
    /// The current claim of each running shard: (lease, token).
    pub(crate) claims: HashMap<ShardId, (LeaseId, u64)>,
    /// Claimable shards in order; keeps claim O(1) however many shards a job has.
    ready: VecDeque<ShardId>,
}

#[derive(Debug, Default)]
pub(crate) struct MemState {
    pub(crate) jobs: HashMap<JobId, MemJob>,
    pub(crate) leases: HashMap<LeaseId, (Duration, Instant)>,
    next_lease: i64,
    next_token: u64,
    pub(crate) registry: crate::registry::MemRegistry,
}

impl MemState {
    /// Registers a job's shards, all pending and claimable in order.
    pub(crate) fn add_job(&mut self, job: &JobId, shards: &[ShardId], max_attempts: u32) {
        let states = shards
            .iter()
            .map(|id| {
                (
                    *id,
                    ShardState::Pending {
                        attempts: 0,
                        last_error: None,
                    },
                )
            })
            .collect();
        self.jobs.insert(
            job.clone(),
            MemJob {
                max_attempts: max_attempts.max(1),
                shards: states,
                claims: HashMap::new(),
                ready: shards.iter().copied().collect(),
            },
        );
    }

    /// Ends a lease now: its claims are lost attempts, as when it expires.
    pub(crate) fn revoke(&mut self, lease: LeaseId) {
        if let Some((_, deadline)) = self.leases.get_mut(&lease) {
            *deadline = Instant::now();
            self.expire(Instant::now());
        }
    }

    /// Drops expired leases and returns their claims' shards to the ready queue.
    fn expire(&mut self, now: Instant) {
        let expired: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        if expired.is_empty() {
            return;
        }
        for id in &expired {
            self.leases.remove(id);
        }
        for job in self.jobs.values_mut() {
            let lost: Vec<ShardId> = job
                .claims
                .iter()
                .filter(|(_, (lease, _))| expired.contains(lease))
                .map(|(shard, _)| *shard)
                .collect();
            for shard in lost {
                job.claims.remove(&shard);
                let attempts = match job.shards.get(&shard) {
                    Some(ShardState::Running { attempt, .. }) => *attempt,
                    _ => continue,
                };
                let reason = format!("lease expired during attempt {attempts}");
                job.after_attempt(shard, attempts, reason, true);
            }
        }
    }
}

impl MemJob {
    fn after_attempt(
        &mut self,
        shard: ShardId,
        attempts: u32,
        reason: String,
        retryable: bool,
    ) -> AfterFailure {
        if retryable && attempts < self.max_attempts {
            self.shards.insert(
                shard,
                ShardState::Pending {
                    attempts,
                    last_error: Some(reason),
                },
            );
            self.ready.push_back(shard);
            AfterFailure::WillRetry
        } else {
            self.shards
                .insert(shard, ShardState::Failed { attempts, reason });
            AfterFailure::Failed
        }
    }
}

/// The in-memory shard store and job registry of the embedded mode. Lease expiry is checked on
/// every call. Clones share the state.
#[derive(Debug, Default, Clone)]
pub struct InMemoryShardStore {
    state: Arc<Mutex<MemState>>,
}

impl InMemoryShardStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&mut MemState) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| StoreError::Unavailable("in-memory store poisoned".into()))?;
        state.expire(Instant::now());
        f(&mut state)
    }

    pub(crate) fn check_claim<'a>(
        state: &'a mut MemState,
        claim: &Claim,
    ) -> Result<&'a mut MemJob, StoreError> {
        let fenced = || StoreError::Fenced {
            shard: claim.shard,
            token: claim.token,
        };
        let job = state
            .jobs
            .get_mut(&claim.job)
            .ok_or_else(|| StoreError::JobNotFound(claim.job.clone()))?;
        match job.claims.get(&claim.shard) {
            Some((_, token)) if *token == claim.token => Ok(job),
            _ => Err(fenced()),
        }
    }
}

impl ShardStore for InMemoryShardStore {
    async fn create_job(
        &self,
        job: &JobId,
        shards: &[ShardId],
        max_attempts: u32,
    ) -> Result<(), StoreError> {
        self.with(|s| {
            if s.jobs.contains_key(job) {
                return Err(StoreError::JobExists(job.clone()));
            }
            s.add_job(job, shards, max_attempts);
            Ok(())
        })
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.with(|s| {
            s.next_lease += 1;
            let id = LeaseId(s.next_lease);
            s.leases.insert(id, (ttl, Instant::now() + ttl));
            Ok(id)
        })
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.with(|s| match s.leases.get_mut(&lease) {
            Some((ttl, deadline)) => {
                *deadline = Instant::now() + *ttl;
                Ok(())
            }
            None => Err(StoreError::LeaseExpired(lease)),
        })
    }

    async fn claim(
        &self,
        job: &JobId,
        lease: LeaseId,
        worker: &str,
    ) -> Result<Option<Claim>, StoreError> {
        self.with(|s| {
            if !s.leases.contains_key(&lease) {
                return Err(StoreError::LeaseExpired(lease));
            }
            s.next_token += 1;
            let token = s.next_token;
            let mem = s
                .jobs
                .get_mut(job)
                .ok_or_else(|| StoreError::JobNotFound(job.clone()))?;
            while let Some(shard) = mem.ready.pop_front() {
                let Some(ShardState::Pending { attempts, .. }) = mem.shards.get(&shard) else {
                    continue;
                };
                let attempt = attempts + 1;
                mem.shards.insert(
                    shard,
                    ShardState::Running {
                        attempt,
                        worker: worker.to_string(),
                    },
                );
                mem.claims.insert(shard, (lease, token));
                return Ok(Some(Claim {
                    job: job.clone(),
                    shard,
                    lease,
                    token,
                    attempt,
                    tenant_slot: None,
                }));
            }
            Ok(None)
        })
    }

    async fn commit(&self, claim: &Claim, done: ShardDone) -> Result<(), StoreError> {
        self.with(|s| {
            if let Some(mem) = s.jobs.get(&claim.job)
                && !mem.claims.contains_key(&claim.shard)
                && mem.shards.get(&claim.shard) == Some(&ShardState::Done(done.clone()))
            {
                return Ok(()); // the same commit again: acknowledged, nothing changes
            }
            if !s.jobs.contains_key(&claim.job) && s.registry.records.contains_key(&claim.job) {
                return Err(StoreError::JobFinished(claim.job.clone()));
            }
            let job = Self::check_claim(s, claim)?;
            job.claims.remove(&claim.shard);
            job.shards.insert(claim.shard, ShardState::Done(done));
            Ok(())
        })
    }

    async fn fail(
        &self,
        claim: &Claim,
        reason: &str,
        retryable: bool,
    ) -> Result<AfterFailure, StoreError> {
        self.with(|s| {
            let job = Self::check_claim(s, claim)?;
            job.claims.remove(&claim.shard);
            Ok(job.after_attempt(claim.shard, claim.attempt, reason.to_string(), retryable))
        })
    }

    async fn release(&self, claim: &Claim) -> Result<(), StoreError> {
        self.with(|s| {
            let job = Self::check_claim(s, claim)?;
            job.claims.remove(&claim.shard);
            job.shards.insert(
                claim.shard,
                ShardState::Pending {
                    attempts: claim.attempt - 1,
                    last_error: None,
                },
            );
            // Behind the others: an attempt gives its shard back when it cannot go on yet
            // (it waits for another shard's attempt), and claiming it again at once would
            // keep that shard waiting.
            job.ready.push_back(claim.shard);
            Ok(())
        })
    }

    async fn running(&self, job: &JobId) -> Result<u64, StoreError> {
        self.progress(job).await.map(|p| p.running)
    }

    async fn progress(&self, job: &JobId) -> Result<JobProgress, StoreError> {
        self.with(|s| {
            let mem = s
                .jobs
                .get(job)
                .ok_or_else(|| StoreError::JobNotFound(job.clone()))?;
            let mut p = JobProgress::default();
            for state in mem.shards.values() {
                match state {
                    ShardState::Pending { .. } => p.pending += 1,
                    ShardState::Running { .. } => p.running += 1,
                    ShardState::Done(_) => p.done += 1,
                    ShardState::Failed { .. } => p.failed += 1,
                }
            }
            Ok(p)
        })
    }

    async fn shards(&self, job: &JobId) -> Result<Vec<(ShardId, ShardState)>, StoreError> {
        self.with(|s| {
            let mem = s
                .jobs
                .get(job)
                .ok_or_else(|| StoreError::JobNotFound(job.clone()))?;
            Ok(mem.shards.iter().map(|(k, v)| (*k, v.clone())).collect())
        })
    }
}

/// The contract test suite: every `ShardStore` implementation runs these same checks.
#[cfg(any(test, feature = "testkit"))]
pub mod contract {
    use super::*;
    use crate::range::Hour;

    fn shards(n: i64) -> Vec<ShardId> {
        (0..n)
            .map(|h| ShardId(Hour::from_epoch_hours(470_000 + h)))
            .collect()
    }

    fn done(attempt: u32) -> ShardDone {
        ShardDone {
            attempt,
            manifest_key: format!("m-{attempt}"),
            counts: ShardCounts {
                recovered: 7,
                ..ShardCounts::default()
            },
        }
    }

    /// Two claimants never hold the same shard; every shard is claimed once.
    pub async fn claims_are_exclusive<S: ShardStore>(store: &S) {
        let job = JobId::generate();
        store.create_job(&job, &shards(20), 3).await.unwrap();
        let a = store.grant_lease(Duration::from_secs(30)).await.unwrap();
        let b = store.grant_lease(Duration::from_secs(30)).await.unwrap();
        let mut seen = std::collections::HashSet::new();
        let mut tokens = Vec::new();
        loop {
            let ca = store.claim(&job, a, "a").await.unwrap();
            let cb = store.claim(&job, b, "b").await.unwrap();
            if ca.is_none() && cb.is_none() {
                break;
            }
            for c in [ca, cb].into_iter().flatten() {
                assert!(seen.insert(c.shard), "shard {} claimed twice", c.shard);
                assert_eq!(c.attempt, 1);
                tokens.push(c.token);
            }
        }
        assert_eq!(seen.len(), 20);
        let mut sorted = tokens.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), tokens.len(), "fencing tokens must be unique");
        let p = store.progress(&job).await.unwrap();
        assert_eq!((p.pending, p.running), (0, 20));
    }

    /// A claimant whose lease expired cannot commit: the shard went back and was re-claimed.
    pub async fn stale_claimant_is_fenced<S: ShardStore>(store: &S, ttl: Duration) {
        let job = JobId::generate();
        store.create_job(&job, &shards(1), 3).await.unwrap();
        let slow = store.grant_lease(ttl).await.unwrap();
        let first = store.claim(&job, slow, "slow").await.unwrap().unwrap();
        tokio::time::sleep(ttl * 3).await;
        let fast = store.grant_lease(Duration::from_secs(30)).await.unwrap();
        let second = store
            .claim(&job, fast, "fast")
            .await
            .unwrap()
            .expect("expiry returns the shard");
        assert_eq!(second.shard, first.shard);
        assert_eq!(second.attempt, 2, "the expired claim counts as an attempt");
        assert!(second.token > first.token);
        assert!(matches!(
            store.commit(&first, done(1)).await,
            Err(StoreError::Fenced { .. })
        ));
        assert!(matches!(
            store.fail(&first, "late", true).await,
            Err(StoreError::Fenced { .. })
        ));
        assert!(
            store.keep_alive(slow).await.is_err(),
            "an expired lease cannot be revived"
        );
        store.commit(&second, done(2)).await.unwrap();
        let states = store.shards(&job).await.unwrap();
        assert_eq!(states[0].1, ShardState::Done(done(2)));
        // A commit retried after a lost response is acknowledged (same record), but the claim
        // is gone: anything else is fenced.
        store
            .commit(&second, done(2))
            .await
            .expect("a repeated identical commit is idempotent");
        assert!(matches!(
            store.commit(&second, done(3)).await,
            Err(StoreError::Fenced { .. })
        ));
        assert_eq!(states[0].1, ShardState::Done(done(2)));
    }

    /// Keep-alive keeps claims; failures are retried until max attempts, then failed with the
    /// last reason; non-retryable failures fail at once; release does not count an attempt.
    pub async fn attempts_and_failures<S: ShardStore>(store: &S, ttl: Duration) {
        let job = JobId::generate();
        store.create_job(&job, &shards(2), 2).await.unwrap();
        let lease = store.grant_lease(ttl).await.unwrap();
        let c = store.claim(&job, lease, "w").await.unwrap().unwrap();
        for _ in 0..4 {
            tokio::time::sleep(ttl / 3).await;
            store.keep_alive(lease).await.unwrap();
        }
        let released = store.release(&c).await;
        assert!(
            released.is_ok(),
            "claim kept alive past its TTL: {released:?}"
        );
        let c = store.claim(&job, lease, "w").await.unwrap().unwrap();
        assert_eq!(c.attempt, 1, "release does not count an attempt");
        assert_eq!(
            store.fail(&c, "boom 1", true).await.unwrap(),
            AfterFailure::WillRetry
        );
        let mut other = None;
        let mut again = None;
        while let Some(next) = store.claim(&job, lease, "w").await.unwrap() {
            if next.shard == c.shard {
                again = Some(next);
            } else {
                other = Some(next);
            }
        }
        let again = again.unwrap();
        assert_eq!(again.attempt, 2);
        assert_eq!(
            store.fail(&again, "boom 2", true).await.unwrap(),
            AfterFailure::Failed
        );
        let other = other.unwrap();
        assert_eq!(
            store.fail(&other, "access denied", false).await.unwrap(),
            AfterFailure::Failed
        );
        let states: HashMap<_, _> = store.shards(&job).await.unwrap().into_iter().collect();
        assert_eq!(
            states[&c.shard],
            ShardState::Failed {
                attempts: 2,
                reason: "boom 2".into()
            }
        );
        assert_eq!(
            states[&other.shard],
            ShardState::Failed {
                attempts: 1,
                reason: "access denied".into()
            }
        );
        let p = store.progress(&job).await.unwrap();
        assert_eq!(p.failed, 2);
        assert!(p.finished());
        assert!(store.claim(&job, lease, "w").await.unwrap().is_none());
    }

    /// A lease that expires at the last attempt fails the shard with the expiry as reason.
    pub async fn expiry_at_max_attempts_fails<S: ShardStore>(store: &S, ttl: Duration) {
        let job = JobId::generate();
        store.create_job(&job, &shards(1), 1).await.unwrap();
        let lease = store.grant_lease(ttl).await.unwrap();
        store.claim(&job, lease, "w").await.unwrap().unwrap();
        tokio::time::sleep(ttl * 3).await;
        let p = store.progress(&job).await.unwrap();
        assert_eq!(p.failed, 1);
        match &store.shards(&job).await.unwrap()[0].1 {
            ShardState::Failed { attempts, reason } => {
                assert_eq!(*attempts, 1);
                assert!(reason.contains("lease expired"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            store.claim(&job, lease, "w").await.is_err(),
            "expired lease cannot claim"
        );
        assert!(matches!(
            store.create_job(&job, &shards(1), 1).await,
            Err(StoreError::JobExists(_))
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_millis(150);

    #[tokio::test]
    async fn in_memory_claims_are_exclusive() {
        contract::claims_are_exclusive(&InMemoryShardStore::new()).await;
    }

    #[tokio::test]
    async fn in_memory_fences_stale_claimants() {
        contract::stale_claimant_is_fenced(&InMemoryShardStore::new(), TTL).await;
    }

    #[tokio::test]
    async fn in_memory_counts_attempts() {
        contract::attempts_and_failures(&InMemoryShardStore::new(), TTL).await;
    }

    #[tokio::test]
    async fn in_memory_expiry_at_max_attempts() {
        contract::expiry_at_max_attempts_fails(&InMemoryShardStore::new(), TTL).await;
    }
}
