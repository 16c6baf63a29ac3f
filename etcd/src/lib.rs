//! The etcd side of the distributed mode: [`EtcdStore`] is the [`ShardStore`] and the
//! [`JobRegistry`] over etcd (the coordinator's leader key among it). Split along its seams:
//! `connection` (clients, TLS, retries), `shards` (leasing and the claim protocol), `registry`
//! (jobs, phases, live counters) and `leader` (election, history compaction).
//!
//! Keys, below a root (default `/rewind/v1/`):
//!
//! | key | value | lease |
//! |---|---|---|
//! | `specs/{job}` | the job record (spec, source, destination) | - |
//! | `states/{job}` | the job status (running, cancelled, final summary) | - |
//! | `active/{job}` | phase of an unfinished job: `running` or `cancelling` (a `JobPhase`) | - |
//! | `jobs/{job}/meta` | max attempts and the shard list as runs of hours | - |
//! | `jobs/{job}/cursor` | index of the first shard not yet made claimable | - |
//! | `jobs/{job}/ready/{shard}` | a claimable shard never claimed yet | - |
//! | `jobs/{job}/retry/{shard}` | a claimable shard given back (attempts so far, last error) | - |
//! | `jobs/{job}/run/{shard}` | an attempt in flight (attempt, worker) | - |
//! | `jobs/{job}/claim/{shard}` | the worker holding the shard | worker's |
//! | `jobs/{job}/live/{shard}` | live counters of the attempt | worker's |
//! | `jobs/{job}/done/{shard}` | attempt, manifest key, counts | - |
//! | `jobs/{job}/folded/{first shard}+{n}` | `n` done records folded by the leader (zstd JSON) | - |
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
//! A running job's done records are folded by the leader, 120 to a key (ADR 35).

use etcd_client::KeyValue;
use rewind_common::shard_store::{LeaseId, StoreError};
use serde::Serialize;
use serde::de::DeserializeOwned;

mod connection;
mod leader;
mod registry;
mod shards;

pub use connection::{EtcdSecurity, EtcdStore};

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
