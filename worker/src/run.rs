//! One claimed attempt, from run to end: run it on the blocking pool, then commit, or discard
//! its output and fail or release it. The worker loop ([`crate::daemon`]) calls it for every
//! claim, in both modes.

use std::time::Duration;

use std::sync::atomic::Ordering;

use rewind_common::job::{OutputKeys, ShardManifest};
use rewind_common::lifecycle::JobManifest;
use rewind_common::registry::JobRegistry;
use rewind_common::shard_store::{Claim, ShardDone, StoreError};
use rewind_common::{JobId, ShardId};
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
pub async fn execute_claim<S: JobRegistry>(
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
                // (`REWIND_FAILPOINT_PAUSE_MS`, default 10 s: a slow shard for a test to watch.)
                let ms = std::env::var("REWIND_FAILPOINT_PAUSE_MS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(10_000);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let done = ShardDone {
                attempt,
                manifest_key,
                counts: manifest.counts.clone(),
            };
            let reply_lost =
                std::sync::atomic::AtomicBool::new(crate::failpoint("lose-commit-reply"));
            let committed = retry_unavailable(|| {
                let (reply_lost, done) = (&reply_lost, done.clone());
                async move {
                    let r = store.commit(claim, done).await;
                    if r.is_ok() && reply_lost.swap(false, Ordering::Relaxed) {
                        return lose_reply(store, job).await;
                    }
                    r
                }
            })
            .await;
            match committed {
                Ok(()) => {
                    info!(job = %job, shard = %shard, attempt, recovered = manifest.counts.recovered, "shard committed");
                    Ok(Attempt::Committed)
                }
                // A commit whose answer was lost may have taken effect, and the job may have
                // ended before the retry: the job manifest says whether this attempt is the
                // shard's committed one. What it lists is never deleted.
                Err(StoreError::JobFinished(_)) => match committed_attempt(env, shard).await {
                    Listed::Attempt(a) if a == attempt => {
                        info!(job = %job, shard = %shard, attempt, "commit answered after the job ended: the job manifest lists this attempt");
                        Ok(Attempt::Committed)
                    }
                    Listed::Attempt(_) | Listed::NotDone => {
                        warn!(job = %job, shard = %shard, attempt, "commit answered after the job ended: another attempt (or none) is listed; discarding this attempt's output");
                        discard(env, Some(manifest), shard, attempt).await;
                        Ok(Attempt::Fenced)
                    }
                    Listed::Unknown(why) => {
                        warn!(job = %job, shard = %shard, attempt, error = %why, "commit answered after the job ended, and its manifest cannot be read: keeping this attempt's output");
                        Ok(Attempt::Fenced)
                    }
                },
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
                info!(job = %job, shard = %shard, attempt, reason = %e.message, "attempt stopped: output discarded, shard released");
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

/// What the job manifest of an ended job says about a shard.
enum Listed {
    /// Committed by this attempt.
    Attempt(u32),
    /// Listed as failed, or not at all (cancelled before it committed).
    NotDone,
    /// No manifest (the job's commit failed for good) or an unreadable one.
    Unknown(String),
}

async fn committed_attempt(env: &ShardEnv, shard: ShardId) -> Listed {
    let env = env.clone();
    let read = tokio::task::spawn_blocking(move || {
        let key = OutputKeys::of(&env.spec).job_manifest();
        let body = env
            .output
            .get(&key)
            .map_err(|e| format!("reading {key}: {e}"))?
            .ok_or_else(|| format!("{key} is missing"))?;
        serde_json::from_slice::<JobManifest>(&body).map_err(|e| format!("{key}: {e}"))
    })
    .await;
    match read {
        Ok(Ok(m)) => match m.attempts.get(&shard.to_string()) {
            Some(a) => Listed::Attempt(*a),
            None => Listed::NotDone,
        },
        Ok(Err(why)) => Listed::Unknown(why),
        Err(e) => Listed::Unknown(e.to_string()),
    }
}

/// Test fail point `lose-commit-reply` (once per process): the first commit that takes effect
/// answers as if its reply had been lost, after the job has ended (so the retry meets an ended
/// job, the narrow moment where a retried commit used to delete committed files).
static LOSE_COMMIT_REPLY_FIRED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

async fn lose_reply<S: JobRegistry>(store: &S, job: &JobId) -> Result<(), StoreError> {
    if LOSE_COMMIT_REPLY_FIRED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    warn!(job = %job, "fail point lose-commit-reply: the commit took effect; its reply is lost once the job has ended");
    for _ in 0..600 {
        if store.status(job).await.is_ok_and(|s| s.phase.finished()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(StoreError::Unavailable(
        "fail point lose-commit-reply: reply lost".into(),
    ))
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
