//! The leader's loop: campaigns for leadership and, while leading, drives every unfinished job
//! to its end ([`Coordinator::drive_once`]). All state is in the registry, so a restarted or
//! newly elected coordinator simply goes on where the last one stopped.

use std::time::Duration;

use rewind_common::registry::JobRegistry;
use rewind_common::shard_store::StoreError;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::core::Coordinator;
use crate::metrics::CoordinatorMetrics;

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
pub async fn lead<R: JobRegistry>(
    core: Coordinator<R>,
    cfg: LeaderConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let store = core.registry().clone();
    let mut lease = None;
    let mut leading = false;
    let mut last_keepalive = tokio::time::Instant::now();
    let mut last_compaction = tokio::time::Instant::now();
    let mut last_expiry: Option<tokio::time::Instant> = None;
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
                let finished = match core.drive_once(Some(&cfg.metrics)).await {
                    Ok(f) => f.len(),
                    Err(e) => {
                        warn!(error = %e, "driving jobs");
                        0
                    }
                };
                // Finished-job history beyond the retention: when jobs finish, and once a
                // minute (the age limit).
                if finished > 0
                    || last_expiry.is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
                {
                    last_expiry = Some(tokio::time::Instant::now());
                    if let Err(e) = core.expire_history().await {
                        warn!(error = %e, "forgetting finished jobs");
                    }
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
