//! The worker loop: hold a lease, claim shards, run them on the blocking pool, commit.
//! The embedded mode runs N of these in one process; distributed workers run the same loop
//! against the etcd store.

use std::sync::Arc;
use std::time::Duration;

use rewind_common::shard_store::{AfterFailure, ShardDone, ShardStore, StoreError};
use tracing::{info, warn};

use crate::decode::DecoderConfig;
use crate::pipeline::{ShardEnv, ShardError, discard_attempt, run_shard};

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub id: String,
    pub lease_ttl: Duration,
    /// How long to wait before looking for work again when none is claimable.
    pub idle_poll: Duration,
    pub decoder: DecoderConfig,
}

/// What one worker did.
#[derive(Debug, Default, Clone, Copy)]
pub struct WorkerStats {
    pub committed: u64,
    pub failed_attempts: u64,
    pub fenced: u64,
}

/// Works on `env.spec.job` until every shard of it is done or failed.
pub async fn work_job<S: ShardStore + 'static>(
    store: Arc<S>,
    env: ShardEnv,
    cfg: WorkerConfig,
) -> Result<WorkerStats, StoreError> {
    let job = env.spec.job.clone();
    let lease = store.grant_lease(cfg.lease_ttl).await?;
    // Keep the lease alive while shards run on the blocking pool.
    let keeper = {
        let store = store.clone();
        let every = cfg.lease_ttl / 3;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = store.keep_alive(lease).await {
                    warn!(error = %e, "lease keep-alive failed");
                    return;
                }
            }
        })
    };
    let mut stats = WorkerStats::default();
    let result = loop {
        let claim = match store.claim(&job, lease, &cfg.id).await {
            Ok(c) => c,
            Err(e) => break Err(e),
        };
        let Some(claim) = claim else {
            match store.progress(&job).await {
                Ok(p) if p.finished() => break Ok(stats),
                Ok(_) => {
                    tokio::time::sleep(cfg.idle_poll).await;
                    continue;
                }
                Err(e) => break Err(e),
            }
        };
        let shard = claim.shard;
        let attempt = claim.attempt;
        let run_env = env.clone();
        let decoder = cfg.decoder;
        let outcome =
            tokio::task::spawn_blocking(move || run_shard(&run_env, shard, attempt, decoder))
                .await
                .unwrap_or_else(|panic| {
                    Err(ShardError {
                        message: format!("worker panicked: {panic}"),
                        retryable: true,
                    })
                });
        match outcome {
            Ok((manifest_key, manifest)) => {
                let done = ShardDone {
                    attempt,
                    manifest_key,
                    counts: manifest.counts.clone(),
                };
                match store.commit(&claim, done).await {
                    Ok(()) => {
                        stats.committed += 1;
                        info!(job = %job, shard = %shard, attempt, recovered = manifest.counts.recovered, "shard committed");
                    }
                    Err(StoreError::Fenced { .. }) => {
                        stats.fenced += 1;
                        warn!(job = %job, shard = %shard, attempt, "fenced at commit: discarding this attempt's output");
                        discard_attempt(&env, Some(&manifest), shard, attempt);
                    }
                    Err(e) => break Err(e),
                }
            }
            Err(e) => {
                stats.failed_attempts += 1;
                discard_attempt(&env, None, shard, attempt);
                warn!(job = %job, shard = %shard, attempt, error = %e.message, "shard attempt failed");
                match store.fail(&claim, &e.message, e.retryable).await {
                    Ok(AfterFailure::WillRetry) | Ok(AfterFailure::Failed) => {}
                    Err(StoreError::Fenced { .. }) => stats.fenced += 1,
                    Err(err) => break Err(err),
                }
            }
        }
    };
    keeper.abort();
    result
}
