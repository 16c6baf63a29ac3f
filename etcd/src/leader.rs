//! The coordinators' leader key and the leader's maintenance of etcd's history.

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use rewind_common::shard_store::{LeaseId, StoreError};

use crate::connection::EtcdStore;
use crate::{lease_error, unavailable};

impl EtcdStore {
    /// Takes or keeps the leader key for `id` under `lease`; true while this caller leads.
    pub(crate) async fn take_lead(&self, id: &str, lease: LeaseId) -> Result<bool, StoreError> {
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

    /// The id of the leading coordinator, if any.
    pub(crate) async fn current_leader(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .get(format!("{}leader", self.root), None)
            .await?
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).to_string()))
    }

    /// Compacts etcd's history, keeping the last `keep` revisions. Rewind never reads old
    /// revisions (fencing compares current keys' create revisions), but without compaction
    /// every claim, commit and deleted key stays in etcd's history and its write path slows
    /// down by an order of magnitude (measured: `cargo bench -p rewind-etcd`). Returns the
    /// revision compacted to, if any.
    pub(crate) async fn compact_revisions(&self, keep: i64) -> Result<Option<i64>, StoreError> {
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
}
