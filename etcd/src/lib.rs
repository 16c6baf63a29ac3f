//! The etcd side of the distributed mode: the [`ShardStore`] over etcd ([`EtcdStore`]), the job
//! registry the coordinator and workers share, and the coordinator's leader key.
//!
//! Keys, below a root (default `/rewind/v1/`):
//!
//! | key | value | lease |
//! |---|---|---|
//! | `specs/{job}` | the job record (spec, source, destination) | - |
//! | `states/{job}` | the job status (running, cancelled, final summary) | - |
//! | `active/{job}` | phase of an unfinished job: `running` or `cancelling` | - |
//! | `jobs/{job}/meta` | max attempts and the shard list as runs of hours | - |
//! | `jobs/{job}/cursor` | index of the first shard not yet made claimable | - |
//! | `jobs/{job}/ready/{shard}` | a claimable shard never claimed yet | - |
//! | `jobs/{job}/retry/{shard}` | a claimable shard given back (attempts so far, last error) | - |
//! | `jobs/{job}/run/{shard}` | an attempt in flight (attempt, worker) | - |
//! | `jobs/{job}/claim/{shard}` | the worker holding the shard | worker's |
//! | `jobs/{job}/live/{shard}` | live counters of the attempt | worker's |
//! | `jobs/{job}/done/{shard}` | attempt, manifest key, counts | - |
//! | `jobs/{job}/failed/{shard}` | attempts, last reason | - |
//! | `leader` | the leading coordinator | its own |
//!
//! Pending shards are made claimable lazily, a window at a time (`cursor`), so a job of a year
//! writes 100 ready keys, not 8,760, and claiming never scans the job. A claim is one txn (ready
//! key unchanged and claim key absent -> delete ready, put run, put claim with the lease); the
//! revision of that txn is the claim key's create revision and the **fencing token**. Commit and
//! fail are one txn each that succeeds only while the claim key still has that create revision.
//! When a worker's lease expires, etcd deletes its claim keys; the `run` record stays behind and
//! marks the attempt as lost: the next claimant re-claims it (attempt + 1) or, at the last
//! attempt, records it failed. Until then, `progress` and `shards` already report it that way.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KeyValue, PutOptions,
    Txn, TxnOp, TxnOpResponse,
};
use rewind_common::shard_store::{
    AfterFailure, Claim, JobProgress, LeaseId, ShardDone, ShardState, ShardStore, StoreError,
};
use rewind_common::{Hour, JobId, ShardId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::warn;

/// Claim txns lost to another claimant (a measure of contention, for the benchmark).
pub static CLAIM_RACES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Requests sent to etcd by this process, and those that failed (for the metrics).
pub static ROUND_TRIPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
pub static ERRORS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub const DEFAULT_ROOT: &str = "/rewind/v1/";

/// How many shards one refill makes claimable (etcd allows 128 operations per txn).
const WINDOW: usize = 120;
/// How many ready keys a claimant looks at before picking one at random: many claimants then
/// rarely pick the same key (a lost race costs a txn).
const PICK_FROM: i64 = 32;
/// Below this many ready keys, a claimant first tops the window up (one of them wins), so
/// claimants do not all run dry and race on the cursor at once.
/// At most this many windows are made claimable ahead of the lowest unclaimed shard: room for
/// many worker processes to pick different keys, still small next to a year of shards.
const AHEAD: usize = 8;
const LOW_WATER: usize = 32;

/// Counters of one attempt in flight (`jobs/{job}/live/{shard}`), for live progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveCounts {
    pub objects: u64,
    pub bytes: u64,
    pub recovered: u64,
    pub filtered: u64,
    pub failed: u64,
    #[serde(default)]
    pub unrecoverable: u64,
    #[serde(default)]
    pub produced: u64,
    #[serde(default)]
    pub acknowledged: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
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

/// What a claim txn takes: the shard, its attempt number, the condition that proves the shard
/// is still where the claimant saw it, and one more operation (deleting the ready key).
struct Target {
    shard: ShardId,
    attempt: u32,
    guard: Compare,
    extra: Option<TxnOp>,
}

fn unavailable(e: etcd_client::Error) -> StoreError {
    ERRORS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    StoreError::Unavailable(format!("etcd: {e}"))
}

fn lease_error(e: etcd_client::Error, lease: LeaseId) -> StoreError {
    let text = e.to_string();
    if text.contains("lease not found") {
        ERRORS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        StoreError::LeaseExpired(lease)
    } else {
        unavailable(e)
    }
}

fn corrupt(key: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("etcd key {key} holds an unreadable value: {e}"))
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

fn parse<T: DeserializeOwned>(kv: &KeyValue) -> Result<T, StoreError> {
    serde_json::from_slice(kv.value()).map_err(|e| corrupt(&String::from_utf8_lossy(kv.key()), e))
}

fn lost_reason(attempt: u32) -> String {
    format!("lease expired during attempt {attempt}")
}

/// A small random number source for picking among ready keys (no dependency needed).
fn random_index(n: usize) -> usize {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_usize(n);
    (h.finish() % n.max(1) as u64) as usize
}

/// The etcd shard store and job registry. Cheap to clone.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    root: String,
    endpoints: Vec<String>,
    metas: std::sync::Arc<Mutex<HashMap<JobId, Meta>>>,
    /// Jobs whose cursor reached the end (it only moves forward): no more refills to try.
    drained: std::sync::Arc<Mutex<HashSet<JobId>>>,
    /// Per job, the lowest fresh ready key last seen (see `fresh_ready`).
    low: std::sync::Arc<Mutex<HashMap<JobId, Vec<u8>>>>,
    /// Claimable keys read but not tried yet, per job; shared by the process's claimants.
    cache: std::sync::Arc<Mutex<HashMap<JobId, Vec<KeyValue>>>>,
    /// Counts reads of claimable keys, to look at retries on every fourth one.
    turn: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("root", &self.root)
            .finish()
    }
}

/// How to reach a secured etcd: TLS (a CA to trust, a client certificate for etcd's
/// `--client-cert-auth`) and/or etcd's own users. Paths are read at connect time.
#[derive(Debug, Clone, Default)]
pub struct EtcdSecurity {
    pub ca: Option<std::path::PathBuf>,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
    pub user: Option<String>,
    pub password_file: Option<std::path::PathBuf>,
}

impl EtcdSecurity {
    fn apply(&self, mut options: ConnectOptions) -> Result<ConnectOptions, StoreError> {
        let read = |what: &str, p: &std::path::Path| {
            std::fs::read(p).map_err(|e| {
                StoreError::Unavailable(format!("reading the etcd {what} {}: {e}", p.display()))
            })
        };
        if self.ca.is_some() || self.cert.is_some() {
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(ca) = &self.ca {
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read("CA", ca)?));
            }
            match (&self.cert, &self.key) {
                (Some(cert), Some(key)) => {
                    tls = tls.identity(etcd_client::Identity::from_pem(
                        read("certificate", cert)?,
                        read("key", key)?,
                    ));
                }
                (None, None) => {}
                _ => {
                    return Err(StoreError::Unavailable(
                        "an etcd client certificate needs both --etcd-cert and --etcd-key".into(),
                    ));
                }
            }
            options = options.with_tls(tls);
        }
        if let Some(user) = &self.user {
            let password = match &self.password_file {
                Some(p) => String::from_utf8_lossy(&read("password file", p)?)
                    .trim()
                    .to_string(),
                None => String::new(),
            };
            options = options.with_user(user.clone(), password);
        }
        Ok(options)
    }
}

impl EtcdStore {
    /// Connects and checks that etcd answers. One attempt; see [`EtcdStore::connect_retrying`].
    pub async fn connect(endpoints: &[String], root: &str) -> Result<EtcdStore, StoreError> {
        EtcdStore::connect_secured(endpoints, root, &EtcdSecurity::default()).await
    }

    /// Connects to a secured etcd (TLS, users).
    pub async fn connect_secured(
        endpoints: &[String],
        root: &str,
        security: &EtcdSecurity,
    ) -> Result<EtcdStore, StoreError> {
        let options = security.apply(
            ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(2))
                .with_timeout(Duration::from_secs(5))
                .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3)),
        )?;
        let where_ = endpoints.join(",");
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|e| StoreError::Unavailable(format!("etcd at {where_}: {e}")))?;
        let store = EtcdStore {
            client,
            root: if root.ends_with('/') {
                root.to_string()
            } else {
                format!("{root}/")
            },
            endpoints: endpoints.to_vec(),
            metas: Default::default(),
            drained: Default::default(),
            low: Default::default(),
            turn: Default::default(),
            cache: Default::default(),
        };
        store
            .client
            .kv_client()
            .get(format!("{}probe", store.root), None)
            .await
            .map_err(|e| StoreError::Unavailable(format!("etcd at {where_}: {e}")))?;
        Ok(store)
    }

    /// Connects, retrying with exponential backoff (capped at 5 s) until etcd answers or
    /// `give_up_after` passes. Each failed attempt is logged with the address.
    pub async fn connect_retrying(
        endpoints: &[String],
        root: &str,
        security: &EtcdSecurity,
        give_up_after: Option<Duration>,
    ) -> Result<EtcdStore, StoreError> {
        let started = std::time::Instant::now();
        let mut delay = Duration::from_millis(200);
        loop {
            match EtcdStore::connect_secured(endpoints, root, security).await {
                Ok(store) => return Ok(store),
                Err(e) => {
                    if give_up_after.is_some_and(|limit| started.elapsed() >= limit) {
                        return Err(e);
                    }
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "etcd unreachable; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// A KV client, counting the request it is taken for.
    fn kv(&self) -> etcd_client::KvClient {
        ROUND_TRIPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.client.kv_client()
    }

    /// A lease client, counting the request it is taken for.
    fn leases(&self) -> etcd_client::LeaseClient {
        ROUND_TRIPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.client.lease_client()
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    fn job_key(&self, job: &JobId, kind: &str) -> String {
        format!("{}jobs/{job}/{kind}", self.root)
    }

    fn shard_key(&self, job: &JobId, kind: &str, shard: ShardId) -> String {
        format!("{}jobs/{job}/{kind}/{shard}", self.root)
    }

    fn shard_of(key: &[u8]) -> Option<ShardId> {
        let key = std::str::from_utf8(key).ok()?;
        ShardId::parse(key.rsplit('/').next()?).ok()
    }

    async fn get(
        &self,
        key: String,
        options: Option<GetOptions>,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let mut resp = self.kv().get(key, options).await.map_err(unavailable)?;
        Ok(resp.take_kvs())
    }

    async fn get_raw(
        &self,
        key: Vec<u8>,
        options: Option<GetOptions>,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let mut resp = self.kv().get(key, options).await.map_err(unavailable)?;
        Ok(resp.take_kvs())
    }

    async fn prefix(&self, key: String) -> Result<Vec<KeyValue>, StoreError> {
        self.get(key, Some(GetOptions::new().with_prefix())).await
    }

    async fn count(&self, key: String) -> Result<u64, StoreError> {
        let resp = self
            .kv()
            .get(key, Some(GetOptions::new().with_prefix().with_count_only()))
            .await
            .map_err(unavailable)?;
        Ok(resp.count().max(0) as u64)
    }

    async fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, etcd_client::Error> {
        self.kv().txn(txn).await
    }

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

    fn create_ops(&self, job: &JobId, shards: &[ShardId], max_attempts: u32) -> Vec<TxnOp> {
        vec![
            TxnOp::put(
                self.job_key(job, "meta"),
                json(&Meta::new(shards, max_attempts)),
                None,
            ),
            TxnOp::put(self.job_key(job, "cursor"), "0", None),
        ]
    }

    /// Claims under `lease` with one txn; `Ok(None)` when the txn lost a race.
    async fn try_claim(
        &self,
        job: &JobId,
        target: Target,
        lease: LeaseId,
        worker: &str,
    ) -> Result<Option<Claim>, StoreError> {
        let Target {
            shard,
            attempt,
            guard,
            extra,
        } = target;
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
        let resp = self
            .txn(
                Txn::new()
                    .when([
                        guard,
                        Compare::create_revision(claim_key, CompareOp::Equal, 0),
                    ])
                    .and_then(ops),
            )
            .await
            .map_err(|e| lease_error(e, lease))?;
        if !resp.succeeded() {
            CLAIM_RACES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(None);
        }
        let token = resp.header().map(|h| h.revision()).unwrap_or_default() as u64;
        Ok(Some(Claim {
            job: job.clone(),
            shard,
            lease,
            token,
            attempt,
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

    /// Revokes a lease now (a worker or coordinator shutting down cleanly): its claims go back
    /// at once instead of after the TTL.
    pub async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.leases()
            .revoke(lease.0)
            .await
            .map(|_| ())
            .map_err(|e| lease_error(e, lease))
    }

    // ---- job registry -------------------------------------------------------------------

    /// Registers a job: its record, status, shards and the active marker, in one txn.
    pub async fn submit<R: Serialize, S: Serialize>(
        &self,
        job: &JobId,
        record: &R,
        status: &S,
        shards: &[ShardId],
        max_attempts: u32,
    ) -> Result<(), StoreError> {
        let mut ops = self.create_ops(job, shards, max_attempts);
        ops.push(TxnOp::put(
            format!("{}specs/{job}", self.root),
            json(record),
            None,
        ));
        ops.push(TxnOp::put(
            format!("{}states/{job}", self.root),
            json(status),
            None,
        ));
        ops.push(TxnOp::put(
            format!("{}active/{job}", self.root),
            "running",
            None,
        ));
        let resp = self
            .txn(
                Txn::new()
                    .when([Compare::create_revision(
                        format!("{}specs/{job}", self.root),
                        CompareOp::Equal,
                        0,
                    )])
                    .and_then(ops),
            )
            .await
            .map_err(unavailable)?;
        if resp.succeeded() {
            Ok(())
        } else {
            Err(StoreError::JobExists(job.clone()))
        }
    }

    /// The job's record, as submitted.
    pub async fn record<R: DeserializeOwned>(&self, job: &JobId) -> Result<R, StoreError> {
        let kvs = self.get(format!("{}specs/{job}", self.root), None).await?;
        parse(
            kvs.first()
                .ok_or_else(|| StoreError::JobNotFound(job.clone()))?,
        )
    }

    /// The job's status.
    pub async fn status<S: DeserializeOwned>(&self, job: &JobId) -> Result<S, StoreError> {
        let kvs = self.get(format!("{}states/{job}", self.root), None).await?;
        parse(
            kvs.first()
                .ok_or_else(|| StoreError::JobNotFound(job.clone()))?,
        )
    }

    /// Every job's status, oldest job id first.
    pub async fn statuses<S: DeserializeOwned>(&self) -> Result<Vec<(JobId, S)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.prefix(format!("{}states/", self.root)).await? {
            let key = String::from_utf8_lossy(kv.key()).to_string();
            let Some(id) = key.rsplit('/').next().and_then(|s| JobId::parse(s).ok()) else {
                continue;
            };
            out.push((id, parse(&kv)?));
        }
        Ok(out)
    }

    /// Replaces the job's status; `finished` also removes it from the active jobs and deletes
    /// its per-shard keys (the status, with the summary, is what remains of a finished job).
    pub async fn set_status<S: Serialize>(
        &self,
        job: &JobId,
        status: &S,
        finished: bool,
    ) -> Result<(), StoreError> {
        let mut ops = vec![TxnOp::put(
            format!("{}states/{job}", self.root),
            json(status),
            None,
        )];
        if finished {
            // The job's end and the removal of its per-shard keys are one txn: a coordinator
            // dying in between cannot leave them behind.
            ops.push(TxnOp::delete(format!("{}active/{job}", self.root), None));
            ops.push(TxnOp::delete(
                self.job_key(job, ""),
                Some(DeleteOptions::new().with_prefix()),
            ));
        }
        self.txn(Txn::new().and_then(ops))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Deletes a finished job's per-shard keys; its status (with the summary) stays.
    pub async fn compact(&self, job: &JobId) -> Result<(), StoreError> {
        self.kv()
            .delete(
                self.job_key(job, ""),
                Some(DeleteOptions::new().with_prefix()),
            )
            .await
            .map_err(unavailable)?;
        if let Ok(mut m) = self.metas.lock() {
            m.remove(job);
        }
        if let Ok(mut d) = self.drained.lock() {
            d.remove(job);
        }
        if let Ok(mut l) = self.low.lock() {
            l.remove(job);
        }
        if let Ok(mut c) = self.cache.lock() {
            c.remove(job);
        }
        Ok(())
    }

    /// The jobs not finished yet, with their phase (`running`, `cancelling`): workers claim in
    /// running ones, the coordinator drives both to the end.
    pub async fn active_jobs(&self) -> Result<Vec<(JobId, String)>, StoreError> {
        Ok(self
            .prefix(format!("{}active/", self.root))
            .await?
            .iter()
            .filter_map(|kv| {
                let key = std::str::from_utf8(kv.key()).ok()?;
                let job = JobId::parse(key.rsplit('/').next()?).ok()?;
                Some((job, String::from_utf8_lossy(kv.value()).to_string()))
            })
            .collect())
    }

    /// Replaces the job's status and its phase in the active list (it must still be active).
    pub async fn set_phase<S: Serialize>(
        &self,
        job: &JobId,
        status: &S,
        phase: &str,
    ) -> Result<bool, StoreError> {
        let active = format!("{}active/{job}", self.root);
        let resp = self
            .txn(
                Txn::new()
                    .when([Compare::create_revision(
                        active.clone(),
                        CompareOp::Greater,
                        0,
                    )])
                    .and_then([
                        TxnOp::put(format!("{}states/{job}", self.root), json(status), None),
                        TxnOp::put(active, phase, None),
                    ]),
            )
            .await
            .map_err(unavailable)?;
        Ok(resp.succeeded())
    }

    /// Publishes an attempt's live counters, attached to the worker's lease.
    pub async fn put_live<T: Serialize>(
        &self,
        claim: &Claim,
        counts: &T,
    ) -> Result<(), StoreError> {
        self.txn(
            Txn::new()
                .when([self.claim_is_current(claim)])
                .and_then([TxnOp::put(
                    self.shard_key(&claim.job, "live", claim.shard),
                    json(counts),
                    Some(PutOptions::new().with_lease(claim.lease.0)),
                )]),
        )
        .await
        .map_err(|e| lease_error(e, claim.lease))?;
        Ok(())
    }

    /// The live counters of the job's attempts in flight.
    pub async fn live<T: DeserializeOwned>(&self, job: &JobId) -> Result<Vec<T>, StoreError> {
        self.prefix(self.job_key(job, "live/"))
            .await?
            .iter()
            .map(parse)
            .collect()
    }

    /// The committed shards' done records and the live counters of attempts in flight, read in
    /// one txn: a commit (which moves a shard from live to done) is on one side or the other.
    pub async fn counts_snapshot<T: DeserializeOwned>(
        &self,
        job: &JobId,
    ) -> Result<(Vec<ShardDone>, Vec<T>), StoreError> {
        let resp = self
            .txn(Txn::new().and_then([
                TxnOp::get(
                    self.job_key(job, "done/"),
                    Some(GetOptions::new().with_prefix()),
                ),
                TxnOp::get(
                    self.job_key(job, "live/"),
                    Some(GetOptions::new().with_prefix()),
                ),
            ]))
            .await
            .map_err(unavailable)?;
        let mut gets = resp.op_responses().into_iter().filter_map(|op| match op {
            TxnOpResponse::Get(g) => Some(g),
            _ => None,
        });
        let (Some(done), Some(live)) = (gets.next(), gets.next()) else {
            return Err(StoreError::Unavailable("etcd: incomplete txn reply".into()));
        };
        let done = done.kvs().iter().map(parse).collect::<Result<_, _>>()?;
        let live = live.kvs().iter().map(parse).collect::<Result<_, _>>()?;
        Ok((done, live))
    }

    /// The committed shards' done records.
    pub async fn done(&self, job: &JobId) -> Result<Vec<(ShardId, ShardDone)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.prefix(self.job_key(job, "done/")).await? {
            if let Some(shard) = Self::shard_of(kv.key()) {
                out.push((shard, parse(&kv)?));
            }
        }
        Ok(out)
    }

    /// Takes or keeps the leader key for `id` under `lease`; true while this caller leads.
    pub async fn lead(&self, id: &str, lease: LeaseId) -> Result<bool, StoreError> {
        let key = format!("{}leader", self.root);
        let resp = self
            .txn(
                Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        key.clone(),
                        id,
                        Some(PutOptions::new().with_lease(lease.0)),
                    )])
                    .or_else([TxnOp::get(key, None)]),
            )
            .await
            .map_err(|e| lease_error(e, lease))?;
        if resp.succeeded() {
            return Ok(true);
        }
        for op in resp.op_responses() {
            if let TxnOpResponse::Get(get) = op
                && let Some(kv) = get.kvs().first()
            {
                return Ok(kv.value() == id.as_bytes() && kv.lease() == lease.0);
            }
        }
        Ok(false)
    }

    /// Compacts etcd's history, keeping the last `keep` revisions. Rewind never reads old
    /// revisions (fencing compares current keys' create revisions), but without compaction
    /// every claim, commit and deleted key stays in etcd's history and its write path slows
    /// down by an order of magnitude (measured: `cargo bench -p rewind-etcd`). Returns the
    /// revision compacted to, if any.
    pub async fn compact_history(&self, keep: i64) -> Result<Option<i64>, StoreError> {
        let resp = self
            .kv()
            .get(
                format!("{}leader", self.root),
                Some(GetOptions::new().with_count_only()),
            )
            .await
            .map_err(unavailable)?;
        let current = resp.header().map(|h| h.revision()).unwrap_or(0);
        let target = current - keep.max(0);
        if target <= 1 {
            return Ok(None);
        }
        match self.kv().compact(target, None).await {
            Ok(_) => Ok(Some(target)),
            // Already compacted past it (another coordinator did): nothing to do.
            Err(e) if e.to_string().contains("compacted") => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// The id of the leading coordinator, if any.
    pub async fn leader(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .get(format!("{}leader", self.root), None)
            .await?
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).to_string()))
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
        let meta = self.meta(job).await?;
        // Each round either claims, loses a race to another claimant (and retries), or finds
        // nothing; the bound only guards against a livelock bug.
        for _ in 0..10_000 {
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
                if let Some(c) = self.try_claim(job, target, lease, worker).await? {
                    return Ok(Some(c));
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
                    match self.try_claim(job, target, lease, worker).await? {
                        Some(c) => return Ok(Some(c)),
                        None => raced = true,
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
                                TxnOp::put(
                                    self.shard_key(job, "failed", shard),
                                    json(&failed),
                                    None,
                                ),
                            ]),
                    )
                    .await
                    .map_err(unavailable)?;
                }
            }
            if raced {
                continue;
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
            .txn(
                self.end_txn(claim, put)
                    .or_else([TxnOp::get(done_key, None)]),
            )
            .await
            .map_err(unavailable)?;
        if resp.succeeded() {
            return Ok(());
        }
        // A commit retried after its response was lost finds its own done record: committed.
        for op in resp.op_responses() {
            if let TxnOpResponse::Get(get) = op
                && let Some(kv) = get.kvs().first()
                && parse::<ShardDone>(kv).is_ok_and(|d| d == done)
            {
                return Ok(());
            }
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

    async fn progress(&self, job: &JobId) -> Result<JobProgress, StoreError> {
        let meta = self.meta(job).await?;
        let done = self.count(self.job_key(job, "done/")).await?;
        let mut failed = self.count(self.job_key(job, "failed/")).await?;
        let running = self.count(self.job_key(job, "claim/")).await?;
        for (_, run, _) in self.lost_attempts(job).await? {
            if run.attempt >= meta.max_attempts {
                failed += 1;
            }
        }
        let pending = meta.total.saturating_sub(done + failed + running);
        Ok(JobProgress {
            pending,
            running,
            done,
            failed,
        })
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
    /// The fencing guard: the claim key still has the claim's create revision.
    fn claim_is_current(&self, claim: &Claim) -> Compare {
        Compare::create_revision(
            self.shard_key(&claim.job, "claim", claim.shard),
            CompareOp::Equal,
            claim.token as i64,
        )
    }

    /// The txn that ends an attempt: while the claim is current, `op` (done, retry, failed)
    /// and the removal of the attempt's claim, run record and live counters.
    fn end_txn(&self, claim: &Claim, op: TxnOp) -> Txn {
        let key = |kind| self.shard_key(&claim.job, kind, claim.shard);
        Txn::new().when([self.claim_is_current(claim)]).and_then([
            op,
            TxnOp::delete(key("claim"), None),
            TxnOp::delete(key("run"), None),
            TxnOp::delete(key("live"), None),
        ])
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
