//! One claimed attempt, from run to end: run it on the blocking pool, then commit, or discard
//! its output and fail or release it. The worker loop ([`crate::daemon`]) calls it for every
//! claim, in both modes.

use std::time::Duration;

use std::sync::atomic::Ordering;

use rewind_common::ShardId;
use rewind_common::job::ShardManifest;
use rewind_common::shard_store::{Claim, ShardDone, ShardStore, StoreError};
use tracing::{info, warn};

use crate::decode::DecoderConfig;
use crate::pipeline::{ShardEnv, ShardError, discard_attempt, run_shard};

/// How one claimed attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    Committed,
    /// The claim was no longer current at commit (lease lost): output discarded.
    Fenced,
    /// The attempt failed; the store retries or fails the shard.
    Failed,
    /// Stopped on request (`env.cancel`): output discarded, shard given back uncounted.
    Released,
}

/// Runs a claimed attempt on the blocking pool and ends it in the store: commit, or discard the
/// output and fail (or release, when `env.cancel` stopped it). Commits are retried while the
/// store is unavailable (a commit is idempotent), so an etcd restart does not lose a shard.
pub async fn execute_claim<S: ShardStore>(
    store: &S,
    env: &ShardEnv,
    claim: &Claim,
    decoder: DecoderConfig,
) -> Result<Attempt, StoreError> {
    let job = &claim.job;
    let (shard, attempt) = (claim.shard, claim.attempt);
    let run_env = env.clone();
    let outcome = tokio::task::spawn_blocking(move || run_shard(&run_env, shard, attempt, decoder))
        .await
        .unwrap_or_else(|panic| {
            Err(ShardError {
                message: format!("worker panicked: {panic}"),
                retryable: true,
            })
        });
    match outcome {
        Ok((manifest_key, manifest)) => {
            while crate::failpoint("hang-before-shard-commit") {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            if crate::failpoint("pause-before-shard-commit") {
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            let done = ShardDone {
                attempt,
                manifest_key,
                counts: manifest.counts.clone(),
            };
            match retry_unavailable(|| store.commit(claim, done.clone())).await {
                Ok(()) => {
                    info!(job = %job, shard = %shard, attempt, recovered = manifest.counts.recovered, "shard committed");
                    Ok(Attempt::Committed)
                }
                Err(StoreError::Fenced { .. } | StoreError::LeaseExpired(_)) => {
                    warn!(job = %job, shard = %shard, attempt, "fenced at commit: discarding this attempt's output");
                    discard(env, Some(manifest), shard, attempt).await;
                    Ok(Attempt::Fenced)
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => {
            discard(env, None, shard, attempt).await;
            let stopped = env.cancel.load(Ordering::Relaxed);
            let ended = if stopped {
                info!(job = %job, shard = %shard, attempt, "attempt stopped: output discarded, shard released");
                retry_unavailable(|| store.release(claim)).await
            } else {
                warn!(job = %job, shard = %shard, attempt, error = %e.message, "shard attempt failed");
                retry_unavailable(|| store.fail(claim, &e.message, e.retryable))
                    .await
                    .map(|_| ())
            };
            match ended {
                Ok(()) if stopped => Ok(Attempt::Released),
                Ok(()) => Ok(Attempt::Failed),
                Err(StoreError::Fenced { .. } | StoreError::LeaseExpired(_)) => Ok(Attempt::Fenced),
                Err(err) => Err(err),
            }
        }
    }
}

/// [`discard_attempt`] on the blocking pool (storage calls block).
async fn discard(env: &ShardEnv, manifest: Option<ShardManifest>, shard: ShardId, attempt: u32) {
    let env = env.clone();
    let _ = tokio::task::spawn_blocking(move || {
        discard_attempt(&env, manifest.as_ref(), shard, attempt)
    })
    .await;
}

/// Retries a store call for as long as the store is unavailable (backoff capped at 4 s). Ending
/// an attempt must not be given up: a commit whose answer was lost may have taken effect, and
/// only the store can say whether it did (commits are idempotent, so retrying is safe).
pub async fn retry_unavailable<T, F, Fut>(mut call: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match call().await {
            Err(StoreError::Unavailable(why)) => {
                warn!(error = %why, retry_in_ms = delay.as_millis() as u64, "shard store unavailable; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(4));
            }
            other => return other,
        }
    }
}
