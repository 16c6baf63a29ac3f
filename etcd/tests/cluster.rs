//! A store connected to a 3-member etcd cluster keeps working while one member is dead or
//! frozen (the chaos load test found every process stalling when one member was killed).

use std::time::Duration;

use rewind_common::shard_store::{ShardDone, ShardStore};
use rewind_common::{Hour, JobId, ShardId};
use rewind_etcd::EtcdStore;
use rewind_testkit::servers::EtcdCluster;

/// Claims and commits every shard of a new job of `n` shards; every call must succeed on its
/// first try (no retries: a request sent to a dead member would fail, one sent to a frozen
/// member would time out).
async fn run_a_job(s: &EtcdStore, n: u32) {
    if let Err(e) = try_a_job(s, n).await {
        panic!("{e}");
    }
}

async fn try_a_job(s: &EtcdStore, n: u32) -> Result<(), String> {
    let job = JobId::generate();
    let shards: Vec<ShardId> = (0..n)
        .map(|h| ShardId(Hour::from_epoch_hours(490_000 + i64::from(h))))
        .collect();
    s.create_job(&job, &shards, 3)
        .await
        .map_err(|e| format!("create_job: {e}"))?;
    let lease = s
        .grant_lease(Duration::from_secs(30))
        .await
        .map_err(|e| format!("grant_lease: {e}"))?;
    for i in 0..n {
        let c = s
            .claim(&job, lease, "w")
            .await
            .map_err(|e| format!("claim {i}: {e}"))?
            .ok_or("no shard to claim")?;
        let done = ShardDone {
            attempt: c.attempt,
            manifest_key: "m".into(),
            counts: Default::default(),
        };
        s.commit(&c, done)
            .await
            .map_err(|e| format!("commit {i}: {e}"))?;
    }
    let p = s.progress(&job).await.map_err(|e| e.to_string())?;
    assert_eq!((p.done, p.pending, p.running), (n as u64, 0, 0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_over_three_members_works_through_a_dead_or_frozen_member() {
    let mut cluster = EtcdCluster::start(3);
    let endpoints = cluster.endpoints();
    let s = EtcdStore::connect(&endpoints, "/rewind/test/")
        .await
        .expect("connect");
    // A cluster just formed may still change leaders (a request then fails with "leader
    // changed"): the first job may retry, the ones after the faults may not.
    let mut settled = Err(String::new());
    for _ in 0..10 {
        settled = try_a_job(&s, 10).await;
        if settled.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    settled.expect("the cluster settles");

    // The first endpoint's member dies: within the watcher's probe interval requests stop
    // going to it.
    cluster.kill(0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    run_a_job(&s, 30).await;

    // A process starting now connects to the members that answer, and works at once.
    let fresh = EtcdStore::connect(&endpoints, "/rewind/test/")
        .await
        .expect("connect with one member dead");
    run_a_job(&fresh, 10).await;

    // The member comes back and another one freezes (a paused container): it keeps its
    // sockets open and answers nothing.
    cluster.restart(0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.freeze(1, true);
    tokio::time::sleep(Duration::from_secs(4)).await;
    run_a_job(&s, 30).await;
    run_a_job(&fresh, 10).await;
    cluster.freeze(1, false);
}
