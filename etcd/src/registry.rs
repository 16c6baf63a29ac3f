//! The job registry over etcd: records, statuses, phases of active jobs, live counters, and the
//! leader key (see `leader`).

use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse,
};
use rewind_common::lifecycle::{JobPhase, JobStatus};
use rewind_common::registry::JobRegistry;
use rewind_common::shard_store::{Claim, LeaseId, ShardCounts, ShardDone, StoreError};
use rewind_common::{JobId, JobRecord, ShardId};

use crate::connection::EtcdStore;
use crate::{json, lease_error, parse, unavailable};

impl EtcdStore {
    fn registry_key(&self, kind: &str, job: &JobId) -> String {
        format!("{}{kind}/{job}", self.root)
    }

    /// Deletes a job's per-shard keys (what [`JobRegistry::finish`] does besides the status).
    pub async fn compact(&self, job: &JobId) -> Result<(), StoreError> {
        self.txn(Txn::new().and_then([self.drop_shards(job)]))
            .await
            .map_err(unavailable)?;
        self.forget(job);
        Ok(())
    }

    /// The operation that deletes every per-shard key of a job.
    fn drop_shards(&self, job: &JobId) -> TxnOp {
        TxnOp::delete(
            self.job_key(job, ""),
            Some(DeleteOptions::new().with_prefix()),
        )
    }

    /// Forgets what this process cached about a job whose keys are gone.
    fn forget(&self, job: &JobId) {
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
        if let Ok(mut l) = self.lost_checked.lock() {
            l.remove(job);
        }
    }
}

impl JobRegistry for EtcdStore {
    async fn submit(
        &self,
        record: &JobRecord,
        status: &JobStatus,
        shards: &[ShardId],
    ) -> Result<(), StoreError> {
        let job = &record.spec.job;
        let mut ops = self.create_ops(job, shards, record.spec.max_attempts);
        ops.push(TxnOp::put(
            self.registry_key("specs", job),
            json(record),
            None,
        ));
        ops.push(TxnOp::put(
            self.registry_key("states", job),
            json(status),
            None,
        ));
        ops.push(TxnOp::put(
            self.registry_key("active", job),
            status.phase.as_str(),
            None,
        ));
        let resp = self
            .txn(
                Txn::new()
                    .when([Compare::create_revision(
                        self.registry_key("specs", job),
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

    async fn record(&self, job: &JobId) -> Result<JobRecord, StoreError> {
        let kvs = self.get(self.registry_key("specs", job), None).await?;
        parse(
            kvs.first()
                .ok_or_else(|| StoreError::JobNotFound(job.clone()))?,
        )
    }

    async fn status(&self, job: &JobId) -> Result<JobStatus, StoreError> {
        let kvs = self.get(self.registry_key("states", job), None).await?;
        parse(
            kvs.first()
                .ok_or_else(|| StoreError::JobNotFound(job.clone()))?,
        )
    }

    async fn statuses(&self) -> Result<Vec<(JobId, JobStatus)>, StoreError> {
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

    async fn statuses_before(
        &self,
        before: Option<&JobId>,
        limit: usize,
    ) -> Result<Vec<(JobId, JobStatus)>, StoreError> {
        let prefix = format!("{}states/", self.root);
        // Below `before` (exclusive), or the whole prefix ("states0" is just past "states/").
        let end = match before {
            Some(b) => format!("{prefix}{b}"),
            None => format!("{}states0", self.root),
        };
        let options = GetOptions::new()
            .with_range(end)
            .with_sort(SortTarget::Key, SortOrder::Descend)
            .with_limit(limit as i64);
        let mut out = Vec::new();
        for kv in self.get(prefix, Some(options)).await? {
            let key = String::from_utf8_lossy(kv.key()).to_string();
            let Some(id) = key.rsplit('/').next().and_then(|s| JobId::parse(s).ok()) else {
                continue;
            };
            out.push((id, parse(&kv)?));
        }
        Ok(out)
    }

    async fn forget(&self, job: &JobId) -> Result<bool, StoreError> {
        let resp = self
            .txn(
                Txn::new()
                    .when([Compare::create_revision(
                        self.registry_key("active", job),
                        CompareOp::Equal,
                        0,
                    )])
                    .and_then([
                        TxnOp::delete(self.registry_key("states", job), None),
                        TxnOp::delete(self.registry_key("specs", job), None),
                    ]),
            )
            .await
            .map_err(unavailable)?;
        if !resp.succeeded() {
            return Ok(false);
        }
        Ok(resp.op_responses().into_iter().any(|op| match op {
            TxnOpResponse::Delete(d) => d.deleted() > 0,
            _ => false,
        }))
    }

    async fn active_jobs(&self) -> Result<Vec<(JobId, JobPhase)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.prefix(format!("{}active/", self.root)).await? {
            let key = String::from_utf8_lossy(kv.key()).to_string();
            let Some(job) = key.rsplit('/').next().and_then(|s| JobId::parse(s).ok()) else {
                continue;
            };
            let value = String::from_utf8_lossy(kv.value());
            let phase = JobPhase::parse(&value).ok_or_else(|| {
                StoreError::Unavailable(format!("etcd key {key} holds an unknown phase {value:?}"))
            })?;
            out.push((job, phase));
        }
        Ok(out)
    }

    async fn set_phase(&self, job: &JobId, status: &JobStatus) -> Result<bool, StoreError> {
        let active = self.registry_key("active", job);
        let resp = self
            .txn(
                Txn::new()
                    .when([Compare::create_revision(
                        active.clone(),
                        CompareOp::Greater,
                        0,
                    )])
                    .and_then([
                        TxnOp::put(self.registry_key("states", job), json(status), None),
                        TxnOp::put(active, status.phase.as_str(), None),
                    ]),
            )
            .await
            .map_err(unavailable)?;
        Ok(resp.succeeded())
    }

    async fn finish(&self, job: &JobId, status: &JobStatus) -> Result<(), StoreError> {
        // The job's end and the removal of its per-shard keys are one txn: a coordinator dying
        // in between cannot leave them behind.
        self.txn(Txn::new().and_then([
            TxnOp::put(self.registry_key("states", job), json(status), None),
            TxnOp::delete(self.registry_key("active", job), None),
            self.drop_shards(job),
        ]))
        .await
        .map_err(unavailable)?;
        self.forget(job);
        Ok(())
    }

    async fn put_live(&self, claim: &Claim, counts: &ShardCounts) -> Result<(), StoreError> {
        let resp = self
            .txn(
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
        if resp.succeeded() {
            Ok(())
        } else {
            Err(StoreError::Fenced {
                shard: claim.shard,
                token: claim.token,
            })
        }
    }

    async fn counts_snapshot(
        &self,
        job: &JobId,
    ) -> Result<(Vec<ShardDone>, Vec<ShardCounts>), StoreError> {
        let gets = self
            .read_txn(vec![
                TxnOp::get(
                    self.job_key(job, "meta"),
                    Some(GetOptions::new().with_count_only()),
                ),
                TxnOp::get(
                    self.job_key(job, "done/"),
                    Some(GetOptions::new().with_prefix()),
                ),
                TxnOp::get(
                    self.job_key(job, "live/"),
                    Some(GetOptions::new().with_prefix()),
                ),
                TxnOp::get(
                    self.job_key(job, "folded/"),
                    Some(GetOptions::new().with_prefix()),
                ),
            ])
            .await?;
        let Ok([meta, done, live, folded]) = <[_; 4]>::try_from(gets) else {
            return Err(StoreError::Unavailable("etcd: incomplete txn reply".into()));
        };
        if meta.count() == 0 {
            return Err(StoreError::JobNotFound(job.clone()));
        }
        let mut done: Vec<ShardDone> = done.kvs().iter().map(parse).collect::<Result<_, _>>()?;
        for kv in folded.kvs() {
            done.extend(crate::shards::unfold(kv)?.into_iter().map(|(_, d)| d));
        }
        let live = live.kvs().iter().map(parse).collect::<Result<_, _>>()?;
        Ok((done, live))
    }

    async fn lead(&self, id: &str, lease: LeaseId) -> Result<bool, StoreError> {
        self.take_lead(id, lease).await
    }

    async fn leader(&self) -> Result<Option<String>, StoreError> {
        self.current_leader().await
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.leases()
            .revoke(lease.0)
            .await
            .map(|_| ())
            .map_err(|e| lease_error(e, lease))
    }

    async fn compact_history(&self, keep: i64) -> Result<Option<i64>, StoreError> {
        self.compact_revisions(keep).await
    }

    async fn fold_done(&self, job: &JobId) -> Result<u64, StoreError> {
        self.fold_done_records(job).await
    }
}
