//! The ShardStore contract suite (the same functions the in-memory store runs) against a real
//! etcd started by the harness. Leases are whole seconds in etcd (and at least 2 s in 3.4), so
//! the TTL here is 2 s.

use std::time::Duration;

use rewind_common::registry::{self, JobRegistry as _};
use rewind_common::shard_store::contract;
use rewind_etcd::EtcdStore;
use rewind_testkit::servers::Etcd;

const TTL: Duration = Duration::from_secs(2);

/// `n` hour shards from epoch hour `from`.
fn hours(from: i64, n: i64) -> Vec<rewind_common::ShardId> {
    (0..n)
        .map(|h| rewind_common::ShardId(rewind_common::Hour::from_epoch_hours(from + h)))
        .collect()
}

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
    use rewind_common::JobId;
    use rewind_common::shard_store::{ShardDone, ShardStore};
    use std::sync::Arc;

    let etcd = Etcd::start();
    let s = Arc::new(store(&etcd).await);
    let job = JobId::generate();
    let shards = hours(480_000, 250);
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

/// Compacting etcd's history (the coordinator does it periodically) does not disturb claims in
/// flight: fencing tokens are create revisions of live keys, not old revisions.
#[tokio::test]
async fn etcd_claims_survive_history_compaction() {
    use rewind_common::JobId;
    use rewind_common::shard_store::{ShardDone, ShardStore, StoreError};

    let etcd = Etcd::start();
    let s = store(&etcd).await;
    let job = JobId::generate();
    let shards = hours(490_000, 3);
    s.create_job(&job, &shards, 3).await.unwrap();
    let lease = s.grant_lease(Duration::from_secs(30)).await.unwrap();
    let c = s.claim(&job, lease, "w").await.unwrap().unwrap();
    let compacted = s.compact_history(0).await.unwrap();
    assert!(compacted.is_some(), "there is history to compact");
    let done = |attempt| ShardDone {
        attempt,
        manifest_key: "m".into(),
        counts: Default::default(),
    };
    s.commit(&c, done(1)).await.unwrap();
    // A claim whose token is not current stays fenced after compaction.
    let mut stale = s.claim(&job, lease, "w").await.unwrap().unwrap();
    stale.token -= 1;
    assert!(matches!(
        s.commit(&stale, done(1)).await,
        Err(StoreError::Fenced { .. })
    ));
    let p = s.progress(&job).await.unwrap();
    assert_eq!((p.done, p.running, p.pending), (1, 1, 1));
}

/// The JobRegistry contract suite, the same functions the in-memory registry runs.
#[tokio::test]
async fn etcd_registry_submit_registers_once() {
    let etcd = Etcd::start();
    registry::contract::submit_registers_once(&store(&etcd).await).await;
}

#[tokio::test]
async fn etcd_registry_phases_and_finish() {
    let etcd = Etcd::start();
    registry::contract::phases_and_finish(&store(&etcd).await).await;
}

#[tokio::test]
async fn etcd_registry_live_counts_follow_claims() {
    let etcd = Etcd::start();
    registry::contract::live_counts_follow_claims(&store(&etcd).await, TTL).await;
}

#[tokio::test]
async fn etcd_registry_history_pages_and_forgetting() {
    let etcd = Etcd::start();
    registry::contract::history_pages_and_forgetting(&store(&etcd).await).await;
}

/// Two coordinator replicas: one leads, the other stands by until the leader's lease goes.
#[tokio::test]
async fn etcd_registry_leadership_follows_the_lease() {
    let etcd = Etcd::start();
    registry::contract::leadership_follows_the_lease(&store(&etcd).await).await;
}

/// A shard whose worker died (its lease expired mid-attempt) runs again within a few claims,
/// not only once the job has no fresh shard left: the chaos load test saw a killed worker's
/// shard wait minutes behind a long job's pending shards.
#[tokio::test]
async fn etcd_a_dead_workers_shard_is_claimed_again_soon() {
    use rewind_common::JobId;
    use rewind_common::shard_store::ShardStore;

    let etcd = Etcd::start();
    let s = store(&etcd).await;
    let job = JobId::generate();
    let shards = hours(491_000, 60);
    s.create_job(&job, &shards, 3).await.unwrap();
    let dying = s.grant_lease(TTL).await.unwrap();
    let lost = s.claim(&job, dying, "dies").await.unwrap().unwrap();
    // Its lease expires (no keep-alive): the attempt is lost.
    tokio::time::sleep(TTL + Duration::from_secs(2)).await;
    let lease = s.grant_lease(Duration::from_secs(30)).await.unwrap();
    let mut order = Vec::new();
    while let Some(c) = s.claim(&job, lease, "lives").await.unwrap() {
        order.push((c.shard, c.attempt));
    }
    let at = order
        .iter()
        .position(|(shard, _)| *shard == lost.shard)
        .expect("the lost shard is claimed again");
    assert_eq!(order[at].1, 2, "as its second attempt");
    assert_eq!(order.len(), 60, "every shard once");
    assert!(
        at < 12,
        "the lost shard came {at}th of 60 claims; it should not wait for the fresh ones"
    );
}

/// A tenant's cap holds fleet-wide: eight claimants racing over two jobs of one tenant capped
/// at 3 never hold more than 3 of its shards at once, reach 3, and finish every shard; another
/// tenant claims while the capped one is full; a place comes back when an attempt fails, is
/// released, or its worker's lease expires.
#[tokio::test]
async fn etcd_a_tenant_cap_holds_under_racing_claimants() {
    use rewind_common::JobId;
    use rewind_common::shard_store::{ShardDone, ShardStore, StoreError, TenantCap};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let etcd = Etcd::start();
    let s = store(&etcd).await;
    let acme = TenantCap {
        tenant: "acme".into(),
        max: 3,
    };
    let jobs = [JobId::generate(), JobId::generate()];
    s.create_job(&jobs[0], &hours(470_000, 20), 3)
        .await
        .unwrap();
    s.create_job(&jobs[1], &hours(471_000, 20), 3)
        .await
        .unwrap();
    let (held, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut tasks = Vec::new();
    for w in 0..8usize {
        let (s, jobs, acme) = (s.clone(), jobs.clone(), acme.clone());
        let (held, most) = (held.clone(), most.clone());
        tasks.push(tokio::spawn(async move {
            let lease = s.grant_lease(Duration::from_secs(30)).await.unwrap();
            let mut done = 0;
            let mut idle = 0;
            while idle < 40 {
                let job = &jobs[(w + done) % 2];
                let Some(c) = s
                    .claim_capped(job, lease, &format!("w{w}"), Some(&acme))
                    .await
                    .unwrap()
                else {
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                idle = 0;
                let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(30)).await;
                held.fetch_sub(1, Ordering::SeqCst);
                let record = ShardDone {
                    attempt: c.attempt,
                    manifest_key: format!("m/{}", c.shard),
                    counts: Default::default(),
                };
                s.commit(&c, record).await.unwrap();
                done += 1;
            }
            done
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 40, "every shard of both jobs committed once");
    let most = most.load(Ordering::SeqCst);
    assert!(
        most <= 3,
        "{most} of the tenant's shards ran at once, over its cap of 3"
    );
    assert_eq!(most, 3, "the claimants reached the cap");

    // Full: the capped tenant gets nothing more; another tenant still claims.
    let job = JobId::generate();
    s.create_job(&job, &hours(472_000, 10), 3).await.unwrap();
    let cap = |tenant: &str| TenantCap {
        tenant: tenant.into(),
        max: 1,
    };
    let (one, other) = (cap("solo"), cap("other"));
    let lease = s.grant_lease(Duration::from_secs(30)).await.unwrap();
    let claim = |lease, cap| {
        let (s, job) = (s.clone(), job.clone());
        async move { s.claim_capped(&job, lease, "w", Some(cap)).await.unwrap() }
    };
    let first = claim(lease, &one).await.unwrap();
    assert!(claim(lease, &one).await.is_none(), "full at 1");
    let theirs = claim(lease, &other).await;
    assert!(theirs.is_some(), "another tenant's cap is its own");
    s.release(&theirs.unwrap()).await.unwrap();
    // A failed attempt gives its place back, and so does a released one.
    s.fail(&first, "boom", true).await.unwrap();
    let second = claim(lease, &one).await.unwrap();
    s.release(&second).await.unwrap();
    // A dead worker's place goes with its lease.
    let dying = s.grant_lease(TTL).await.unwrap();
    let zombie = claim(dying, &one).await.unwrap();
    assert!(
        claim(lease, &one).await.is_none(),
        "the dying worker holds it"
    );
    tokio::time::sleep(TTL + Duration::from_secs(2)).await;
    let taker = claim(lease, &one).await;
    assert!(
        taker.is_some(),
        "the place came back with the dead worker's lease"
    );
    // The dead worker wakes up and ends its attempt every way it can: each is fenced, and none
    // frees the place the live claimant now holds.
    let done = ShardDone {
        attempt: zombie.attempt,
        manifest_key: "m/zombie".into(),
        counts: Default::default(),
    };
    assert!(matches!(
        s.commit(&zombie, done).await,
        Err(StoreError::Fenced { .. })
    ));
    assert!(matches!(
        s.fail(&zombie, "late", true).await,
        Err(StoreError::Fenced { .. })
    ));
    assert!(matches!(
        s.release(&zombie).await,
        Err(StoreError::Fenced { .. })
    ));
    assert!(
        claim(lease, &one).await.is_none(),
        "the live claimant still holds the tenant's one place"
    );
    s.release(&taker.unwrap()).await.unwrap();
    assert!(
        claim(lease, &one).await.is_some(),
        "free once the live claimant ends"
    );
}

/// The leader folds a long job's done records (ADR 35): progress, the shard list and the live
/// counts read the same before and after, a commit retried after its reply was lost still
/// finds itself committed, two folders at once fold each record once, and dropping the job's
/// keys drops the folds too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_folding_done_records_changes_nothing_readers_see() {
    use rewind_common::JobId;
    use rewind_common::shard_store::{ShardCounts, ShardDone, ShardStore, StoreError};

    let etcd = Etcd::start();
    let s = store(&etcd).await;
    let mut kv = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    let mut keys = async |job: &JobId, kind: &str| {
        let opts = etcd_client::GetOptions::new()
            .with_prefix()
            .with_count_only();
        let key = format!("/rewind/test/jobs/{job}/{kind}");
        kv.get(key, Some(opts)).await.unwrap().count()
    };
    let done = |shard: rewind_common::ShardId, i: u64| ShardDone {
        attempt: 1,
        manifest_key: format!("out/_rewind/m/{shard}-1.json"),
        counts: ShardCounts {
            recovered: i,
            bytes: 1000 + i,
            ..ShardCounts::default()
        },
    };
    let job = JobId::generate();
    let shards = hours(500_000, 300);
    s.create_job(&job, &shards, 3).await.unwrap();
    let lease = s.grant_lease(Duration::from_secs(30)).await.unwrap();
    let mut committed = std::collections::HashMap::new();
    for i in 0..300 {
        let c = s.claim(&job, lease, "w").await.unwrap().unwrap();
        s.commit(&c, done(c.shard, i)).await.unwrap();
        committed.insert(c.shard, (c.clone(), done(c.shard, i)));
    }
    let before = (
        s.progress(&job).await.unwrap(),
        s.shards(&job).await.unwrap(),
    );
    let sum = |d: Vec<ShardDone>| d.iter().map(|d| d.counts.recovered).sum::<u64>();
    let counted = sum(s.counts_snapshot(&job).await.unwrap().0);
    assert_eq!(counted, (0..300).sum::<u64>());

    assert_eq!(
        registry::JobRegistry::fold_done(&s, &job).await.unwrap(),
        240
    );
    assert_eq!(
        (keys(&job, "done/").await, keys(&job, "folded/").await),
        (60, 2)
    );
    let after = (
        s.progress(&job).await.unwrap(),
        s.shards(&job).await.unwrap(),
    );
    assert_eq!(after, before, "folding changed what readers see");
    assert_eq!(sum(s.counts_snapshot(&job).await.unwrap().0), counted);
    // Below the threshold nothing more is folded.
    assert_eq!(registry::JobRegistry::fold_done(&s, &job).await.unwrap(), 0);

    // The first shard's commit, retried as if its reply had been lost: it is folded now.
    let (retried, first_done) = committed[&shards[0]].clone();
    s.commit(&retried, first_done.clone()).await.unwrap();
    let other = ShardDone {
        attempt: 2,
        ..first_done
    };
    assert!(matches!(
        s.commit(&retried, other).await,
        Err(StoreError::Fenced { .. })
    ));

    // Two folders at once (a leadership hand-over): every record folded once.
    let job2 = JobId::generate();
    let shards2 = hours(510_000, 480);
    s.create_job(&job2, &shards2, 3).await.unwrap();
    for i in 0..480 {
        let c = s.claim(&job2, lease, "w").await.unwrap().unwrap();
        s.commit(&c, done(c.shard, i)).await.unwrap();
    }
    let s2 = store(&etcd).await;
    let (a, b) = tokio::join!(
        registry::JobRegistry::fold_done(&s, &job2),
        registry::JobRegistry::fold_done(&s2, &job2)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a + b <= 480, "folded {a} + {b}");
    let p = s.progress(&job2).await.unwrap();
    assert_eq!((p.done, p.pending), (480, 0));
    let states = s.shards(&job2).await.unwrap();
    assert_eq!(states.len(), 480);
    assert_eq!(
        sum(s.counts_snapshot(&job2).await.unwrap().0),
        (0..480).sum::<u64>()
    );

    // Dropping a job's shard keys (the leader does it when the job finishes) drops its folds.
    s.compact(&job).await.unwrap();
    assert_eq!(keys(&job, "").await, 0);
}

/// Progress and running counts of many jobs read together (the leader's pass, the workers'
/// poll: a few txns for all) are each job's own, in order, across txn boundaries; a job that
/// does not exist gets its own error without spoiling the others.
#[tokio::test]
async fn etcd_many_jobs_read_at_once_read_as_each_alone() {
    use rewind_common::JobId;
    use rewind_common::shard_store::{ShardDone, ShardStore, StoreError};

    let etcd = Etcd::start();
    let s = store(&etcd).await;
    let lease = s.grant_lease(Duration::from_secs(30)).await.unwrap();
    let mut jobs = Vec::new();
    for i in 0..60 {
        // Ids made in the same second share their prefix: a taken one is drawn again, as the
        // coordinator's submit does.
        let job = loop {
            let job = JobId::generate();
            match s.create_job(&job, &hours(520_000 + i * 10, 4), 1).await {
                Err(StoreError::JobExists(_)) => continue,
                created => break created.map(|()| job).unwrap(),
            }
        };
        // Job i: i % 4 shards claimed, of which i % 3 committed (when there are that many),
        // one failed when i is a multiple of 5.
        let mut claims = Vec::new();
        for _ in 0..(i % 4) {
            claims.push(s.claim(&job, lease, "w").await.unwrap().unwrap());
        }
        for c in claims.iter().take((i % 3) as usize) {
            let done = ShardDone {
                attempt: c.attempt,
                manifest_key: "m".into(),
                counts: Default::default(),
            };
            s.commit(c, done).await.unwrap();
        }
        if i % 5 == 0
            && let Some(c) = claims.last()
            && s.running(&job).await.unwrap() > 0
        {
            let _ = s.fail(c, "boom", false).await;
        }
        jobs.push(job);
        if i == 30 {
            jobs.push(JobId::generate()); // never created
        }
    }
    let trips = || rewind_etcd::ROUND_TRIPS.load(std::sync::atomic::Ordering::Relaxed);
    let before = trips();
    let together = s.progress_of(&jobs).await;
    let running = s.running_of(&jobs).await;
    let used = trips() - before;
    // 61 jobs: 3 txns of progress and 1 of running counts, plus a read of the meta of each job
    // this store has not claimed from (16 of them; later passes find them cached).
    assert!(used <= 24, "{used} round trips for 61 jobs");
    assert_eq!((together.len(), running.len()), (jobs.len(), jobs.len()));
    let mut seen_failed = 0;
    for ((job, p), r) in jobs.iter().zip(together).zip(running) {
        match s.progress(job).await {
            Ok(alone) => {
                let p = p.unwrap();
                assert_eq!(p, alone, "{job}");
                assert_eq!(r.unwrap(), alone.running, "{job}");
                seen_failed += p.failed;
            }
            Err(StoreError::JobNotFound(_)) => {
                assert!(matches!(p, Err(StoreError::JobNotFound(_))), "{p:?}");
                assert_eq!(r.unwrap(), 0);
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(seen_failed > 0, "some jobs have a failed shard");
}
