//! The ShardStore contract suite (the same functions the in-memory store runs) against a real
//! etcd started by the harness. Leases are whole seconds in etcd (and at least 2 s in 3.4), so
//! the TTL here is 2 s.

use std::time::Duration;

use rewind_common::shard_store::contract;
use rewind_etcd::EtcdStore;
use rewind_testkit::servers::Etcd;

const TTL: Duration = Duration::from_secs(2);

async fn store(etcd: &Etcd) -> EtcdStore {
    EtcdStore::connect(&[etcd.endpoint()], "/rewind/test/")
        .await
        .expect("connect to etcd")
}

#[tokio::test]
async fn etcd_claims_are_exclusive() {
    let etcd = Etcd::start();
    contract::claims_are_exclusive(&store(&etcd).await).await;
}

#[tokio::test]
async fn etcd_fences_stale_claimants() {
    let etcd = Etcd::start();
    contract::stale_claimant_is_fenced(&store(&etcd).await, TTL).await;
}

#[tokio::test]
async fn etcd_counts_attempts() {
    let etcd = Etcd::start();
    contract::attempts_and_failures(&store(&etcd).await, TTL).await;
}

#[tokio::test]
async fn etcd_expiry_at_max_attempts() {
    let etcd = Etcd::start();
    contract::expiry_at_max_attempts_fails(&store(&etcd).await, TTL).await;
}

/// Many claimants against one job of more shards than one refill window: every shard is
/// claimed exactly once and committed, and the job's progress adds up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_concurrent_claimants_claim_each_shard_once() {
    use rewind_common::shard_store::{ShardDone, ShardStore};
    use rewind_common::{Hour, JobId, ShardId};
    use std::sync::Arc;

    let etcd = Etcd::start();
    let s = Arc::new(store(&etcd).await);
    let job = JobId::generate();
    let shards: Vec<ShardId> = (0..250)
        .map(|h| ShardId(Hour::from_epoch_hours(480_000 + h)))
        .collect();
    s.create_job(&job, &shards, 3).await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let s = s.clone();
        let job = job.clone();
        tasks.push(tokio::spawn(async move {
            let lease = s.grant_lease(Duration::from_secs(30)).await.unwrap();
            let mut mine = Vec::new();
            while let Some(c) = s.claim(&job, lease, &format!("w{w}")).await.unwrap() {
                let done = ShardDone {
                    attempt: c.attempt,
                    manifest_key: format!("m/{}", c.shard),
                    counts: Default::default(),
                };
                s.commit(&c, done).await.unwrap();
                mine.push(c.shard);
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(before, all.len(), "a shard was claimed twice");
    assert_eq!(all, shards);
    let p = s.progress(&job).await.unwrap();
    assert_eq!((p.done, p.pending, p.running, p.failed), (250, 0, 0, 0));
}
