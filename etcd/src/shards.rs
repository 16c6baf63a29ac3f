//! Shards: leasing, the claim protocol (lazy windows of ready keys, fencing by the claim key's
//! create revision) and the end of attempts.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, GetOptions, GetResponse, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse,
};
use rewind_common::shard_store::{
    AfterFailure, Claim, JobProgress, LeaseId, ShardDone, ShardState, ShardStore, StoreError,
    TenantCap,
};
use rewind_common::{Hour, JobId, ShardId};
use serde::{Deserialize, Serialize};

use crate::connection::EtcdStore;
use crate::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Meta {
    max_attempts: u32,
    /// The shards, as runs of consecutive hours: (first epoch hour, count).
    runs: Vec<(i64, u64)>,
    total: u64,
}

impl Meta {
    fn new(shards: &[ShardId], max_attempts: u32) -> Meta {
        let mut runs: Vec<(i64, u64)> = Vec::new();
        for s in shards {
            let h = s.hour().epoch_hours();
            match runs.last_mut() {
                Some((first, n)) if *first + *n as i64 == h => *n += 1,
                _ => runs.push((h, 1)),
            }
        }
        Meta {
            max_attempts: max_attempts.max(1),
            runs,
            total: shards.len() as u64,
        }
    }

    fn shard(&self, mut index: u64) -> Option<ShardId> {
        for (first, n) in &self.runs {
            if index < *n {
                return Some(ShardId(Hour::from_epoch_hours(first + index as i64)));
            }
            index -= n;
        }
        None
    }

    /// The position of `shard` in the job's shard list.
    fn index(&self, shard: ShardId) -> Option<u64> {
        let h = shard.hour().epoch_hours();
        let mut before = 0;
        for (first, n) in &self.runs {
            if h >= *first && h < first + *n as i64 {
                return Some(before + (h - first) as u64);
            }
            before += n;
        }
        None
    }

    fn all(&self) -> impl Iterator<Item = ShardId> + '_ {
        self.runs.iter().flat_map(|(first, n)| {
            (0..*n as i64).map(move |i| ShardId(Hour::from_epoch_hours(first + i)))
        })
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ReadyRecord {
    #[serde(default)]
    attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunRecord {
    attempt: u32,
    worker: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct FailedRecord {
    attempts: u32,
    reason: String,
}

/// Done records folded into one key: at most this many (the fold is one txn of a put, and a
/// compare and a delete per record; etcd allows 128 of each).
pub(crate) const FOLD_CHUNK: usize = 120;
/// A running job's done records are folded once at least this many stand alone.
pub(crate) const FOLD_AT: u64 = 2 * FOLD_CHUNK as u64;

/// A fold key's value: done records of consecutive commits, zstd-compressed JSON. Its key
/// ends in `{first shard}+{count}`, so counting needs no value.
type Folded = Vec<(ShardId, ShardDone)>;

/// What a claim txn takes: the shard, its attempt number, the condition that proves the shard
/// is still where the claimant saw it, and one more operation (deleting the ready key).
struct Target {
    shard: ShardId,
    attempt: u32,
    guard: Compare,
    extra: Option<TxnOp>,
}

impl EtcdStore {
    async fn meta(&self, job: &JobId) -> Result<Meta, StoreError> {
        if let Some(m) = self.metas.lock().ok().and_then(|m| m.get(job).cloned()) {
            return Ok(m);
        }
        let kvs = self.get(self.job_key(job, "meta"), None).await?;
        let kv = kvs
            .first()
            .ok_or_else(|| StoreError::JobNotFound(job.clone()))?;
        let meta: Meta = parse(kv)?;
        if let Ok(mut m) = self.metas.lock() {
            m.insert(job.clone(), meta.clone());
        }
        Ok(meta)
    }

    pub(crate) fn create_ops(
        &self,
        job: &JobId,
        shards: &[ShardId],
        max_attempts: u32,
    ) -> Vec<TxnOp> {
        vec![
            TxnOp::put(
                self.job_key(job, "meta"),
                json(&Meta::new(shards, max_attempts)),
                None,
            ),
            TxnOp::put(self.job_key(job, "cursor"), "0", None),
        ]
    }

    /// The prefix of `tenant`'s places among its capped running shards (place `i` is the
    /// prefix and `i`).
    fn tenant_slots(&self, tenant: &str) -> String {
        format!("{}tenants/{tenant}/slot/", self.root)
    }

    /// A free place among the tenant's `cap.max` (picked at random among the free ones, so
    /// that claimants mostly try different ones), or `None` when all are held.
    async fn free_tenant_slot(&self, cap: &TenantCap) -> Result<Option<String>, StoreError> {
        let prefix = self.tenant_slots(&cap.tenant);
        let held: HashSet<u32> = self
            .get(
                prefix.clone(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await?
            .iter()
            .filter_map(|kv| {
                std::str::from_utf8(kv.key())
                    .ok()?
                    .strip_prefix(prefix.as_str())?
                    .parse()
                    .ok()
            })
            .collect();
        let free: Vec<u32> = (0..cap.max.max(1)).filter(|i| !held.contains(i)).collect();
        if free.is_empty() {
            return Ok(None);
        }
        let i = free[random_index(free.len())];
        Ok(Some(format!("{prefix}{i}")))
    }

    /// Claims under `lease` with one txn (taking a free place of the tenant's cap with it).
    async fn try_claim(
        &self,
        job: &JobId,
        target: Target,
        lease: LeaseId,
        worker: &str,
        cap: Option<&TenantCap>,
    ) -> Result<Tried, StoreError> {
        let Target {
            shard,
            attempt,
            guard,
            extra,
        } = target;
        let tenant_slot = match cap {
            None => None,
            Some(cap) => match self.free_tenant_slot(cap).await? {
                Some(key) => Some(key),
                None => return Ok(Tried::Full),
            },
        };
        let claim_key = self.shard_key(job, "claim", shard);
        let mut ops = vec![
            TxnOp::put(
                self.shard_key(job, "run", shard),
                json(&RunRecord {
                    attempt,
                    worker: worker.to_string(),
                }),
                None,
            ),
            TxnOp::put(
                claim_key.clone(),
                worker,
                Some(PutOptions::new().with_lease(lease.0)),
            ),
        ];
        ops.extend(extra);
        let mut when = vec![
            guard,
            Compare::create_revision(claim_key, CompareOp::Equal, 0),
        ];
        if let Some(key) = &tenant_slot {
            // The place goes with the claim's lease when its worker dies.
            when.push(Compare::create_revision(key.clone(), CompareOp::Equal, 0));
            ops.push(TxnOp::put(
                key.clone(),
                format!("{job}/{shard}"),
                Some(PutOptions::new().with_lease(lease.0)),
            ));
        }
        let resp = self
            .txn(Txn::new().when(when).and_then(ops))
            .await
            .map_err(|e| lease_error(e, lease))?;
        if !resp.succeeded() {
            CLAIM_RACES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(Tried::Raced);
        }
        let token = resp.header().map(|h| h.revision()).unwrap_or_default() as u64;
        Ok(Tried::Claimed(Claim {
            job: job.clone(),
            shard,
            lease,
            token,
            attempt,
            tenant_slot,
        }))
    }

    /// Takes a random key from this process's cache of claimable keys of `job`.
    fn cached_ready(&self, job: &JobId) -> Option<KeyValue> {
        let mut cache = self.cache.lock().ok()?;
        let keys = cache.get_mut(job)?;
        if keys.is_empty() {
            cache.remove(job);
            return None;
        }
        let i = random_index(keys.len());
        Some(keys.swap_remove(i))
    }

    /// The first shards given back (failed and retryable, or released).
    async fn retry_ready(&self, job: &JobId) -> Result<Vec<KeyValue>, StoreError> {
        self.get(
            self.job_key(job, "retry/"),
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_limit(PICK_FROM)
                    .with_serializable(),
            ),
        )
        .await
    }

    /// The first ready keys of never-claimed shards, read from the lowest one this store saw
    /// last time: keys below it were all claimed (refills only add keys above the cursor), so
    /// the range skips their tombstones instead of scanning every claimed shard again.
    ///
    /// Each read starts at a random point of the window (so that worker processes, each with
    /// its own cache, mostly try different keys) and wraps to the lowest key when nothing is
    /// left above that point.
    async fn fresh_ready(&self, job: &JobId, meta: &Meta) -> Result<Vec<KeyValue>, StoreError> {
        let prefix = self.job_key(job, "ready/");
        let low = self
            .low
            .lock()
            .ok()
            .and_then(|l| l.get(job).cloned())
            .unwrap_or_else(|| prefix.clone().into_bytes());
        let mut end = prefix.clone().into_bytes();
        if let Some(last) = end.last_mut() {
            *last += 1; // "ready/" -> "ready0": the end of the prefix
        }
        let low_index = Self::shard_of(&low)
            .and_then(|s| meta.index(s))
            .unwrap_or(0);
        let start = low_index + random_index(WINDOW * AHEAD) as u64;
        if start > low_index
            && let Some(shard) = meta.shard(start)
        {
            let ready = self
                .get_raw(
                    self.shard_key(job, "ready", shard).into_bytes(),
                    Some(
                        GetOptions::new()
                            .with_range(end.clone())
                            .with_limit(PICK_FROM)
                            .with_serializable(),
                    ),
                )
                .await?;
            if !ready.is_empty() {
                return Ok(ready);
            }
        }
        let ready = self
            .get_raw(
                low,
                Some(
                    GetOptions::new()
                        .with_range(end)
                        .with_limit(PICK_FROM)
                        .with_serializable(),
                ),
            )
            .await?;
        if let (Some(first), Ok(mut low)) = (ready.first(), self.low.lock()) {
            low.insert(job.clone(), first.key().to_vec());
        }
        Ok(ready)
    }

    /// Makes the next window of never-claimed shards claimable. False when none are left.
    /// Unless `force`d (no ready key is left), it does nothing while a few windows are ready.
    async fn refill(&self, job: &JobId, meta: &Meta, force: bool) -> Result<bool, StoreError> {
        if self.drained.lock().is_ok_and(|d| d.contains(job)) {
            return Ok(false);
        }
        let cursor_key = self.job_key(job, "cursor");
        let cursor = self.get(cursor_key.clone(), None).await?;
        let Some(kv) = cursor.first() else {
            return Err(StoreError::JobNotFound(job.clone()));
        };
        let next: u64 = std::str::from_utf8(kv.value())
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| corrupt(&cursor_key, "not a number"))?;
        // Keep at most a few windows of ready keys: etcd holds pending work lazily.
        let low_index = self
            .low
            .lock()
            .ok()
            .and_then(|l| l.get(job).and_then(|k| Self::shard_of(k)))
            .and_then(|s| meta.index(s))
            .unwrap_or(0);
        if !force && next >= low_index + AHEAD as u64 * WINDOW as u64 && next < meta.total {
            return Ok(true);
        }
        if next >= meta.total {
            if let Ok(mut d) = self.drained.lock() {
                d.insert(job.clone());
            }
            return Ok(false);
        }
        let end = (next + WINDOW as u64).min(meta.total);
        let mut ops = vec![TxnOp::put(cursor_key.clone(), end.to_string(), None)];
        for i in next..end {
            if let Some(shard) = meta.shard(i) {
                ops.push(TxnOp::put(self.shard_key(job, "ready", shard), "{}", None));
            }
        }
        // Another claimant may have moved the cursor first: then its window is there.
        self.txn(
            Txn::new()
                .when([Compare::mod_revision(
                    cursor_key,
                    CompareOp::Equal,
                    kv.mod_revision(),
                )])
                .and_then(ops),
        )
        .await
        .map_err(unavailable)?;
        Ok(true)
    }

    /// The shards with a live claim (keys only: one cheap read).
    async fn claimed(&self, job: &JobId) -> Result<HashSet<ShardId>, StoreError> {
        Ok(self
            .get(
                self.job_key(job, "claim/"),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await?
            .iter()
            .filter_map(|kv| Self::shard_of(kv.key()))
            .collect())
    }

    /// Attempts in flight whose claim vanished with an expired lease: (shard, record, mod rev).
    async fn lost_attempts(
        &self,
        job: &JobId,
    ) -> Result<Vec<(ShardId, RunRecord, i64)>, StoreError> {
        let runs = self.prefix(self.job_key(job, "run/")).await?;
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        let claims = self.claimed(job).await?;
        let mut lost = Vec::new();
        for kv in &runs {
            let Some(shard) = Self::shard_of(kv.key()) else {
                continue;
            };
            if !claims.contains(&shard) {
                lost.push((shard, parse::<RunRecord>(kv)?, kv.mod_revision()));
            }
        }
        Ok(lost)
    }

    /// Whether this process last looked for `job`'s lost attempts a second ago or more (then
    /// it looks now): two range reads of running shards per job and second, whatever the
    /// number of claimants in the process.
    fn lost_check_due(&self, job: &JobId) -> bool {
        let now = std::time::Instant::now();
        let Ok(mut last) = self.lost_checked.lock() else {
            return false;
        };
        match last.get(job) {
            Some(at) if now.duration_since(*at) < std::time::Duration::from_secs(1) => false,
            _ => {
                last.insert(job.clone(), now);
                true
            }
        }
    }

    /// Claims an attempt lost with an expired lease (its run record stays, its claim went with
    /// the lease) for its next attempt, or fails it for good at its last one.
    async fn claim_lost(
        &self,
        job: &JobId,
        meta: &Meta,
        lease: LeaseId,
        worker: &str,
        cap: Option<&TenantCap>,
    ) -> Result<Lost, StoreError> {
        let mut raced = false;
        for (shard, run, rev) in self.lost_attempts(job).await? {
            let run_key = self.shard_key(job, "run", shard);
            let guard = Compare::mod_revision(run_key.clone(), CompareOp::Equal, rev);
            if run.attempt < meta.max_attempts {
                let target = Target {
                    shard,
                    attempt: run.attempt + 1,
                    guard,
                    extra: None,
                };
                match self.try_claim(job, target, lease, worker, cap).await? {
                    Tried::Claimed(c) => return Ok(Lost::Claimed(c)),
                    Tried::Raced => raced = true,
                    Tried::Full => return Ok(Lost::Full),
                }
            } else {
                let failed = FailedRecord {
                    attempts: run.attempt,
                    reason: lost_reason(run.attempt),
                };
                self.txn(
                    Txn::new()
                        .when([
                            guard,
                            Compare::create_revision(
                                self.shard_key(job, "claim", shard),
                                CompareOp::Equal,
                                0,
                            ),
                        ])
                        .and_then([
                            TxnOp::delete(run_key, None),
                            TxnOp::put(self.shard_key(job, "failed", shard), json(&failed), None),
                        ]),
                )
                .await
                .map_err(unavailable)?;
            }
        }
        Ok(if raced { Lost::Raced } else { Lost::None })
    }

    async fn lease_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        let resp = self
            .leases()
            .time_to_live(lease.0, None)
            .await
            .map_err(unavailable)?;
        if resp.ttl() <= 0 {
            Err(StoreError::LeaseExpired(lease))
        } else {
            Ok(())
        }
    }
}

impl ShardStore for EtcdStore {
    async fn create_job(
        &self,
        job: &JobId,
        shards: &[ShardId],
        max_attempts: u32,
    ) -> Result<(), StoreError> {
        let meta_key = self.job_key(job, "meta");
        let resp = self
            .txn(
                Txn::new()
                    .when([Compare::create_revision(meta_key, CompareOp::Equal, 0)])
                    .and_then(self.create_ops(job, shards, max_attempts)),
            )
            .await
            .map_err(unavailable)?;
        if resp.succeeded() {
            Ok(())
        } else {
            Err(StoreError::JobExists(job.clone()))
        }
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let secs = ttl.as_secs_f64().ceil().max(1.0) as i64;
        let resp = self.leases().grant(secs, None).await.map_err(unavailable)?;
        Ok(LeaseId(resp.id()))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.leases()
            .keep_alive(lease.0)
            .await
            .map(|_| ())
            .map_err(|e| lease_error(e, lease))
    }

    async fn claim(
        &self,
        job: &JobId,
        lease: LeaseId,
        worker: &str,
    ) -> Result<Option<Claim>, StoreError> {
        self.claim_capped(job, lease, worker, None).await
    }

    async fn claim_capped(
        &self,
        job: &JobId,
        lease: LeaseId,
        worker: &str,
        cap: Option<&TenantCap>,
    ) -> Result<Option<Claim>, StoreError> {
        let meta = self.meta(job).await?;
        // Each round either claims, loses a race to another claimant (and retries), or finds
        // nothing; the bound only guards against a livelock bug.
        for _ in 0..10_000 {
            // 0. Once a second per job and process: an attempt whose worker died runs again
            //    before fresh shards, not only once the job has none left (the chaos load test
            //    saw a killed worker's shard wait minutes behind a long job's pending ones).
            if self.lost_check_due(job) {
                match self.claim_lost(job, &meta, lease, worker, cap).await? {
                    Lost::Claimed(c) => return Ok(Some(c)),
                    Lost::Raced => continue,
                    Lost::Full => return Ok(None),
                    Lost::None => {}
                }
            }
            // 1. A claimable key this process read earlier and has not tried yet: one txn per
            //    claim, no read. Another worker may have taken it meanwhile; the txn's guard (the
            //    key's mod revision) then fails and the next one is tried.
            if let Some(kv) = self.cached_ready(job) {
                let Some(shard) = Self::shard_of(kv.key()) else {
                    continue;
                };
                let rec: ReadyRecord = parse(&kv)?;
                let guard =
                    Compare::mod_revision(kv.key().to_vec(), CompareOp::Equal, kv.mod_revision());
                let delete = TxnOp::delete(kv.key().to_vec(), None);
                let target = Target {
                    shard,
                    attempt: rec.attempts + 1,
                    guard,
                    extra: Some(delete),
                };
                match self.try_claim(job, target, lease, worker, cap).await? {
                    Tried::Claimed(c) => return Ok(Some(c)),
                    // The key stays cached for a claim once the tenant has a free place.
                    Tried::Full => {
                        if let Ok(mut cache) = self.cache.lock() {
                            cache.entry(job.clone()).or_default().push(kv);
                        }
                        return Ok(None);
                    }
                    Tried::Raced => {}
                }
                // Lost to another process: it is probably working through the same keys, so
                // drop them and read afresh from another point of the window.
                if let Ok(mut cache) = self.cache.lock() {
                    cache.remove(job);
                }
                continue;
            }
            // 2. Read the next claimable keys: shards given back (failed and retryable, or
            //    released) on every fourth read and whenever no fresh shard is left, else the
            //    first never-claimed ones.
            let turn = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut ready = if turn.is_multiple_of(4) {
                self.retry_ready(job).await?
            } else {
                Vec::new()
            };
            if ready.is_empty() {
                ready = self.fresh_ready(job, &meta).await?;
            }
            if ready.is_empty() && !turn.is_multiple_of(4) {
                ready = self.retry_ready(job).await?;
            }
            // Top the window up from the cursor when it runs low.
            let refilled =
                ready.len() < LOW_WATER && self.refill(job, &meta, ready.is_empty()).await?;
            if !ready.is_empty() {
                // Another claimant of this process may have filled the cache meanwhile, with
                // the same keys: then use its batch, not both (trying a key twice is a lost txn).
                if let Ok(mut cache) = self.cache.lock() {
                    let keys = cache.entry(job.clone()).or_default();
                    if keys.is_empty() {
                        *keys = ready;
                    }
                }
                continue;
            }
            if refilled {
                continue;
            }
            // 3. Attempts lost with an expired lease: retry them, or fail them at the last one.
            match self.claim_lost(job, &meta, lease, worker, cap).await? {
                Lost::Claimed(c) => return Ok(Some(c)),
                Lost::Raced => continue,
                Lost::Full => return Ok(None),
                Lost::None => {}
            }
            // Nothing claimable: say so, unless the caller's lease is gone.
            self.lease_alive(lease).await?;
            return Ok(None);
        }
        Err(StoreError::Unavailable(
            "claim kept losing races; giving up this round".into(),
        ))
    }

    async fn commit(&self, claim: &Claim, done: ShardDone) -> Result<(), StoreError> {
        let done_key = self.shard_key(&claim.job, "done", claim.shard);
        let put = TxnOp::put(done_key.clone(), json(&done), None);
        let resp = self
            .txn(self.end_txn(claim, put).or_else([
                TxnOp::get(done_key, None),
                TxnOp::get(self.job_key(&claim.job, "meta"), None),
            ]))
            .await
            .map_err(unavailable)?;
        if resp.succeeded() {
            return Ok(());
        }
        let mut gets = resp.op_responses().into_iter().filter_map(|op| match op {
            TxnOpResponse::Get(get) => Some(get),
            _ => None,
        });
        let (done_now, meta) = (gets.next(), gets.next());
        // A commit retried after its response was lost finds its own done record: committed.
        if let Some(kv) = done_now.as_ref().and_then(|g| g.kvs().first())
            && parse::<ShardDone>(kv).is_ok_and(|d| d == done)
        {
            return Ok(());
        }
        // ... or, when the leader has folded it since, among the job's folded records.
        if done_now.as_ref().is_some_and(|g| g.kvs().is_empty())
            && self.was_folded(claim, &done).await?
        {
            return Ok(());
        }
        // The job's shard state is gone: it has ended (finishing deletes it in one txn), maybe
        // after this very commit took effect. Only the job's record can tell.
        if meta.is_some_and(|g| g.kvs().is_empty()) {
            return Err(self.gone(&claim.job).await);
        }
        Err(StoreError::Fenced {
            shard: claim.shard,
            token: claim.token,
        })
    }

    async fn fail(
        &self,
        claim: &Claim,
        reason: &str,
        retryable: bool,
    ) -> Result<AfterFailure, StoreError> {
        let job = &claim.job;
        let meta = self.meta(job).await?;
        let (after, op) = if retryable && claim.attempt < meta.max_attempts {
            let rec = ReadyRecord {
                attempts: claim.attempt,
                last_error: Some(reason.to_string()),
            };
            (
                AfterFailure::WillRetry,
                TxnOp::put(self.shard_key(job, "retry", claim.shard), json(&rec), None),
            )
        } else {
            let rec = FailedRecord {
                attempts: claim.attempt,
                reason: reason.to_string(),
            };
            (
                AfterFailure::Failed,
                TxnOp::put(self.shard_key(job, "failed", claim.shard), json(&rec), None),
            )
        };
        self.end_attempt(claim, op).await?;
        Ok(after)
    }

    async fn release(&self, claim: &Claim) -> Result<(), StoreError> {
        let rec = ReadyRecord {
            attempts: claim.attempt - 1,
            last_error: None,
        };
        let op = TxnOp::put(
            self.shard_key(&claim.job, "retry", claim.shard),
            json(&rec),
            None,
        );
        self.end_attempt(claim, op).await
    }

    async fn running(&self, job: &JobId) -> Result<u64, StoreError> {
        self.count(self.job_key(job, "claim/")).await
    }

    async fn progress(&self, job: &JobId) -> Result<JobProgress, StoreError> {
        self.progress_of(std::slice::from_ref(job))
            .await
            .pop()
            .unwrap_or_else(|| Err(StoreError::Unavailable("etcd: no progress read".into())))
    }

    /// A txn of five range reads per job (one snapshot each), 25 jobs to a txn (etcd allows
    /// 128 operations): the leader reads every unfinished job's progress on each pass.
    async fn progress_of(&self, jobs: &[JobId]) -> Vec<Result<JobProgress, StoreError>> {
        let mut out = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(PROGRESS_PER_TXN) {
            let mut metas = Vec::with_capacity(chunk.len());
            let mut ops = Vec::new();
            for job in chunk {
                let meta = self.meta(job).await;
                if meta.is_ok() {
                    ops.extend(self.progress_ops(job));
                }
                metas.push(meta);
            }
            let gets = match self.read_txn(ops).await {
                Ok(gets) => gets,
                Err(e) => {
                    out.extend(chunk.iter().map(|_| Err(e.clone())));
                    continue;
                }
            };
            let mut gets = gets.into_iter();
            for meta in metas {
                out.push(meta.and_then(|meta| {
                    let reads: Vec<_> = gets.by_ref().take(PROGRESS_READS).collect();
                    progress_from(&meta, reads)
                }));
            }
        }
        out
    }

    async fn running_of(&self, jobs: &[JobId]) -> Vec<Result<u64, StoreError>> {
        let mut out = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(COUNTS_PER_TXN) {
            let ops = chunk.iter().map(|job| {
                TxnOp::get(
                    self.job_key(job, "claim/"),
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )
            });
            match self.read_txn(ops.collect()).await {
                Ok(gets) => out.extend(gets.iter().map(|g| Ok(g.count().max(0) as u64))),
                Err(e) => out.extend(chunk.iter().map(|_| Err(e.clone()))),
            }
        }
        out
    }

    async fn shards(&self, job: &JobId) -> Result<Vec<(ShardId, ShardState)>, StoreError> {
        let meta = self.meta(job).await?;
        let mut states: BTreeMap<ShardId, ShardState> = meta
            .all()
            .map(|s| {
                (
                    s,
                    ShardState::Pending {
                        attempts: 0,
                        last_error: None,
                    },
                )
            })
            .collect();
        let mut ready = self.prefix(self.job_key(job, "ready/")).await?;
        ready.extend(self.prefix(self.job_key(job, "retry/")).await?);
        for kv in ready {
            if let Some(shard) = Self::shard_of(kv.key()) {
                let rec: ReadyRecord = parse(&kv)?;
                states.insert(
                    shard,
                    ShardState::Pending {
                        attempts: rec.attempts,
                        last_error: rec.last_error,
                    },
                );
            }
        }
        let claims = self.claimed(job).await?;
        for kv in self.prefix(self.job_key(job, "run/")).await? {
            let Some(shard) = Self::shard_of(kv.key()) else {
                continue;
            };
            let run: RunRecord = parse(&kv)?;
            let state = if claims.contains(&shard) {
                ShardState::Running {
                    attempt: run.attempt,
                    worker: run.worker,
                }
            } else if run.attempt >= meta.max_attempts {
                ShardState::Failed {
                    attempts: run.attempt,
                    reason: lost_reason(run.attempt),
                }
            } else {
                ShardState::Pending {
                    attempts: run.attempt,
                    last_error: Some(lost_reason(run.attempt)),
                }
            };
            states.insert(shard, state);
        }
        for kv in self.prefix(self.job_key(job, "done/")).await? {
            if let Some(shard) = Self::shard_of(kv.key()) {
                states.insert(shard, ShardState::Done(parse(&kv)?));
            }
        }
        for kv in self.prefix(self.job_key(job, "folded/")).await? {
            for (shard, done) in unfold(&kv)? {
                states.insert(shard, ShardState::Done(done));
            }
        }
        for kv in self.prefix(self.job_key(job, "failed/")).await? {
            if let Some(shard) = Self::shard_of(kv.key()) {
                let f: FailedRecord = parse(&kv)?;
                states.insert(
                    shard,
                    ShardState::Failed {
                        attempts: f.attempts,
                        reason: f.reason,
                    },
                );
            }
        }
        Ok(states.into_iter().collect())
    }
}

impl EtcdStore {
    /// The five reads a job's progress is made of: done records (count), fold keys, failed
    /// records (count), claims (keys) and run records.
    fn progress_ops(&self, job: &JobId) -> [TxnOp; PROGRESS_READS] {
        let count = || Some(GetOptions::new().with_prefix().with_count_only());
        let keys = || Some(GetOptions::new().with_prefix().with_keys_only());
        [
            TxnOp::get(self.job_key(job, "done/"), count()),
            TxnOp::get(self.job_key(job, "folded/"), keys()),
            TxnOp::get(self.job_key(job, "failed/"), count()),
            TxnOp::get(self.job_key(job, "claim/"), keys()),
            TxnOp::get(
                self.job_key(job, "run/"),
                Some(GetOptions::new().with_prefix()),
            ),
        ]
    }

    /// The answers of a txn of reads, in order.
    pub(crate) async fn read_txn(&self, ops: Vec<TxnOp>) -> Result<Vec<GetResponse>, StoreError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let n = ops.len();
        let resp = self
            .txn(Txn::new().and_then(ops))
            .await
            .map_err(unavailable)?;
        let gets: Vec<GetResponse> = resp
            .op_responses()
            .into_iter()
            .filter_map(|op| match op {
                TxnOpResponse::Get(g) => Some(g),
                _ => None,
            })
            .collect();
        if gets.len() != n {
            return Err(StoreError::Unavailable("etcd: incomplete txn reply".into()));
        }
        Ok(gets)
    }

    /// Whether `claim`'s shard is committed with `done` among the job's folded records.
    async fn was_folded(&self, claim: &Claim, done: &ShardDone) -> Result<bool, StoreError> {
        for kv in self.prefix(self.job_key(&claim.job, "folded/")).await? {
            if unfold(&kv)?
                .iter()
                .any(|(s, d)| *s == claim.shard && d == done)
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Folds a running job's done records, [`FOLD_CHUNK`] to a key, once at least [`FOLD_AT`]
    /// stand alone (the leader calls it now and then). A year-long job then holds ~30 bytes per
    /// committed shard instead of ~340, and one key per 120 shards instead of one per shard.
    /// Each fold txn deletes the records it folds and succeeds only while every one of them
    /// still exists, so two folders (a leadership hand-over) cannot fold a record twice, and a
    /// job dropped meanwhile gets no fold key. Returns how many records were folded.
    pub(crate) async fn fold_done_records(&self, job: &JobId) -> Result<u64, StoreError> {
        if self.count(self.job_key(job, "done/")).await? < FOLD_AT {
            return Ok(0);
        }
        let kvs = self.prefix(self.job_key(job, "done/")).await?;
        let mut folded = 0;
        for chunk in kvs.chunks(FOLD_CHUNK) {
            if chunk.len() < FOLD_CHUNK {
                break;
            }
            let mut records: Folded = Vec::with_capacity(chunk.len());
            for kv in chunk {
                if let Some(shard) = Self::shard_of(kv.key()) {
                    records.push((shard, parse(kv)?));
                }
            }
            let Some((first, _)) = records.first() else {
                continue;
            };
            let key = format!("{}{first}+{}", self.job_key(job, "folded/"), records.len());
            let value = zstd::bulk::compress(&json(&records), 3)
                .map_err(|e| StoreError::Unavailable(format!("folding done records: {e}")))?;
            let guards = chunk
                .iter()
                .map(|kv| Compare::version(kv.key().to_vec(), CompareOp::Greater, 0));
            let mut ops = vec![TxnOp::put(key, value, None)];
            ops.extend(
                chunk
                    .iter()
                    .map(|kv| TxnOp::delete(kv.key().to_vec(), None)),
            );
            let resp = self
                .txn(Txn::new().when(guards.collect::<Vec<_>>()).and_then(ops))
                .await
                .map_err(unavailable)?;
            if !resp.succeeded() {
                // Another folder was first, or the job ended: what is left is its business.
                break;
            }
            folded += records.len() as u64;
        }
        Ok(folded)
    }

    /// Why a job's shard state is missing: it has finished (its status says so) or it never
    /// existed.
    pub(crate) async fn gone(&self, job: &JobId) -> StoreError {
        match self.get(format!("{}states/{job}", self.root), None).await {
            Ok(kvs) if kvs.is_empty() => StoreError::JobNotFound(job.clone()),
            Ok(_) => StoreError::JobFinished(job.clone()),
            Err(e) => e,
        }
    }

    /// The fencing guard: the claim key still has the claim's create revision.
    pub(crate) fn claim_is_current(&self, claim: &Claim) -> Compare {
        Compare::create_revision(
            self.shard_key(&claim.job, "claim", claim.shard),
            CompareOp::Equal,
            claim.token as i64,
        )
    }

    /// The txn that ends an attempt: while the claim is current, `op` (done, retry, failed)
    /// and the removal of the attempt's claim, run record and live counters.
    pub(crate) fn end_txn(&self, claim: &Claim, op: TxnOp) -> Txn {
        let key = |kind| self.shard_key(&claim.job, kind, claim.shard);
        let mut ops = vec![
            op,
            TxnOp::delete(key("claim"), None),
            TxnOp::delete(key("run"), None),
            TxnOp::delete(key("live"), None),
        ];
        // Its tenant's place: still this claim's while the claim is current (both went with
        // the same lease, and only a txn that ends the claim deletes the place).
        if let Some(slot) = &claim.tenant_slot {
            ops.push(TxnOp::delete(slot.clone(), None));
        }
        Txn::new()
            .when([self.claim_is_current(claim)])
            .and_then(ops)
    }

    /// Ends an attempt (fail or release) with one txn guarded by the fencing token.
    async fn end_attempt(&self, claim: &Claim, op: TxnOp) -> Result<(), StoreError> {
        let resp = self
            .txn(self.end_txn(claim, op))
            .await
            .map_err(unavailable)?;
        if resp.succeeded() {
            Ok(())
        } else {
            Err(StoreError::Fenced {
                shard: claim.shard,
                token: claim.token,
            })
        }
    }
}

/// Jobs whose progress one txn reads (five reads each; etcd allows 128 operations).
const PROGRESS_PER_TXN: usize = 25;
/// The reads of one job's progress (see [`EtcdStore::progress_ops`]).
const PROGRESS_READS: usize = 5;
/// Jobs whose running count one txn reads (one read each; etcd allows 128 operations).
const COUNTS_PER_TXN: usize = 120;

/// A job's progress from its five reads (see [`EtcdStore::progress_ops`]).
fn progress_from(meta: &Meta, gets: Vec<GetResponse>) -> Result<JobProgress, StoreError> {
    let Ok([done, folded, failed, claims, runs]) = <[_; PROGRESS_READS]>::try_from(gets) else {
        return Err(StoreError::Unavailable("etcd: incomplete txn reply".into()));
    };
    let done =
        done.count().max(0) as u64 + folded.kvs().iter().map(fold_size).sum::<Result<u64, _>>()?;
    let claimed: HashSet<ShardId> = claims
        .kvs()
        .iter()
        .filter_map(|kv| EtcdStore::shard_of(kv.key()))
        .collect();
    let running = claims.kvs().len() as u64;
    let mut failed = failed.count().max(0) as u64;
    // Attempts whose claim went with an expired lease: failed at the last attempt.
    for kv in runs.kvs() {
        if let Some(shard) = EtcdStore::shard_of(kv.key())
            && !claimed.contains(&shard)
            && parse::<RunRecord>(kv)?.attempt >= meta.max_attempts
        {
            failed += 1;
        }
    }
    Ok(JobProgress {
        pending: meta.total.saturating_sub(done + failed + running),
        running,
        done,
        failed,
    })
}

/// How many records a fold key holds (its name ends in `+{count}`).
fn fold_size(kv: &KeyValue) -> Result<u64, StoreError> {
    let key = String::from_utf8_lossy(kv.key());
    key.rsplit_once('+')
        .and_then(|(_, n)| n.parse().ok())
        .ok_or_else(|| corrupt(&key, "a fold key without its record count"))
}

/// The done records a fold key holds.
pub(crate) fn unfold(kv: &KeyValue) -> Result<Folded, StoreError> {
    let key = String::from_utf8_lossy(kv.key());
    let bytes = zstd::stream::decode_all(kv.value()).map_err(|e| corrupt(&key, e))?;
    serde_json::from_slice(&bytes).map_err(|e| corrupt(&key, e))
}

/// What [`EtcdStore::claim_lost`] did.
enum Lost {
    Claimed(Claim),
    /// Another claimant took (or failed) one first: look again.
    Raced,
    /// The tenant runs as many shards as its cap allows.
    Full,
    None,
}

/// What one claim txn did.
enum Tried {
    Claimed(Claim),
    /// Its guard failed: another claimant was first.
    Raced,
    /// The tenant runs as many shards as its cap allows (no txn was tried).
    Full,
}
