//! The in-process cluster: the coordinator core (its leader loop) and three worker loops over a
//! real etcd registry, all in this test process. The same library code the binaries run, with
//! no processes or gRPC in between: what the process-level tests in `distributed` see through
//! the CLI, this one checks at the seams (registry phases, summaries, live counters).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rewind_common::lifecycle::{JobPhase, JobStatus};
use rewind_common::registry::JobRegistry;
use rewind_common::shard_store::ShardStore;
use rewind_common::{JobId, JobRequest};
use rewind_coordinator::core::Coordinator;
use rewind_coordinator::driver::{LeaderConfig, lead};
use rewind_etcd::EtcdStore;
use rewind_testkit::servers::Etcd;
use rewind_worker::daemon::{DaemonConfig, run_daemon};
use rewind_worker::kafka::KafkaChecks;

use crate::common;
use crate::distributed::{assert_exact_output, expected};

const ORG: &str = "TN-cluster";

async fn wait_finished(registry: &EtcdStore, job: &JobId) -> JobStatus {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let status = registry.status(job).await.unwrap();
        if status.phase.finished() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "job {job} did not finish: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The runtime the in-process cluster runs on: two threads, as on the CI machine.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .enable_all()
        .build()
        .unwrap()
}

/// The coordinator's leader loop and `workers` worker loops (one slot each, 50 ms polls) over
/// one etcd store, in this process.
struct Cluster {
    core: Coordinator<EtcdStore>,
    stop: tokio::sync::watch::Sender<bool>,
    leader: tokio::task::JoinHandle<()>,
    workers: Vec<
        tokio::task::JoinHandle<
            Result<rewind_worker::daemon::DaemonStats, rewind_common::shard_store::StoreError>,
        >,
    >,
}

impl Cluster {
    fn start(store: &EtcdStore, workers: usize) -> Cluster {
        let core = Coordinator::new(store.clone(), Arc::new(KafkaChecks));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let leader = tokio::spawn(lead(
            core.clone(),
            LeaderConfig {
                id: "c1".into(),
                lease_ttl: Duration::from_secs(2),
                tick: Duration::from_millis(100),
                compact_every: None,
                compact_keep: 1000,
                metrics: Default::default(),
            },
            stopped.clone(),
        ));
        let workers = (0..workers)
            .map(|n| {
                tokio::spawn(run_daemon(
                    store.clone(),
                    DaemonConfig {
                        id: format!("w{n}"),
                        slots: 1,
                        lease_ttl: Duration::from_secs(2),
                        poll: Duration::from_millis(50),
                        grace: Duration::from_secs(5),
                        metrics: Default::default(),
                        attempt_ended: None,
                    },
                    stopped.clone(),
                ))
            })
            .collect();
        Cluster {
            core,
            stop,
            leader,
            workers,
        }
    }

    /// Stops every loop; each must end cleanly.
    async fn stop(self) {
        let _ = self.stop.send(true);
        for w in self.workers {
            w.await.unwrap().unwrap();
        }
        self.leader.await.unwrap();
    }
}

#[test]
fn in_process_cluster_runs_one_job_exactly_and_cancels_another() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("archive"), tmp.path().join("out"));
    let hours = 6;
    common::generate(
        &src,
        ORG,
        "2024-04-01T00",
        &hours.to_string(),
        "0.3",
        &common::seed("31337"),
        &[],
    );
    let want = expected(&src, hours);
    let etcd = Etcd::start();
    let runtime = runtime();
    runtime.block_on(async {
        let store = EtcdStore::connect(&[etcd.endpoint()], "/rewind/cluster/")
            .await
            .unwrap();
        let cluster = Cluster::start(&store, 3);
        let core = cluster.core.clone();
        let admin = rewind_coordinator::access::Scope::all("test");
        let request = |end: &str| JobRequest {
            source: src.to_string_lossy().into(),
            org: ORG.into(),
            start: "2024-04-01T00".into(),
            end: end.into(),
            dest: dest.to_string_lossy().into(),
            ..JobRequest::default()
        };

        // One job to its end: exact output, the summary in the registry, the job inactive.
        let last = format!("2024-04-01T{:02}", hours - 1);
        let first = core
            .submit(request(&last), &tracing::Span::none(), &admin)
            .await
            .unwrap();
        assert_eq!(first.shards, hours as u64);
        assert!(
            store
                .active_jobs()
                .await
                .unwrap()
                .contains(&(first.job.clone(), JobPhase::Running))
        );
        let status = wait_finished(&store, &first.job).await;
        assert_eq!(status.phase, JobPhase::Succeeded, "{status:?}");
        let summary = status.summary.expect("a finished job has its summary");
        assert_eq!(summary.recovered, want.len() as u64);
        assert_eq!(summary.shards_done, hours as u64);
        assert!(
            !store
                .active_jobs()
                .await
                .unwrap()
                .iter()
                .any(|(j, _)| j == &first.job)
        );
        assert_exact_output(&dest, first.job.as_str(), &want);

        // A bad request is refused before anything exists.
        let bad = core
            .submit(request("2024-03-01"), &tracing::Span::none(), &admin)
            .await
            .unwrap_err();
        assert!(
            matches!(bad, rewind_coordinator::core::CoreError::BadRequest(_)),
            "{bad:?}"
        );

        // Another, cancelled at once: it ends cancelled, without _SUCCESS.
        let second = core
            .submit(request(&last), &tracing::Span::none(), &admin)
            .await
            .unwrap();
        let asked = core.cancel(&second.job, &admin).await.unwrap();
        assert!(
            matches!(asked.phase, JobPhase::Cancelling | JobPhase::Cancelled),
            "{asked:?}"
        );
        let status = wait_finished(&store, &second.job).await;
        assert_eq!(status.phase, JobPhase::Cancelled, "{status:?}");
        let exec = dest.join(format!("execution_id={}", second.job));
        assert!(exec.join("_manifest.json").exists());
        assert!(!exec.join("_SUCCESS").exists());
        // Cancelling a finished job changes nothing.
        assert_eq!(
            core.cancel(&first.job, &admin).await.unwrap().phase,
            JobPhase::Succeeded
        );

        cluster.stop().await;
    });
}

/// Fair sharing (worker/src/fair.rs): tenant A's backfill holds both worker slots with many
/// shards left; tenant B's interactive job, submitted after, runs on the next freed slots and
/// finishes while A's backfill still has most of its shards to do. (Claiming in submission
/// order, as before, would run all of A's shards first.)
#[test]
fn an_urgent_job_of_another_tenant_runs_beside_a_backfill_holding_every_slot() {
    let tmp = tempfile::tempdir().unwrap();
    let (src_a, src_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let dest = tmp.path().join("out");
    let (hours_a, hours_b) = (40, 4);
    let seed = common::seed("4242");
    common::generate(
        &src_a,
        "TN-a",
        "2024-04-01T00",
        &hours_a.to_string(),
        "0.2",
        &seed,
        &[],
    );
    common::generate(
        &src_b,
        "TN-b",
        "2024-04-01T00",
        &hours_b.to_string(),
        "0.2",
        &seed,
        &[],
    );
    let etcd = Etcd::start();
    let runtime = runtime();
    runtime.block_on(async {
        let store = EtcdStore::connect(&[etcd.endpoint()], "/rewind/fair/")
            .await
            .unwrap();
        let cluster = Cluster::start(&store, 2);
        let core = cluster.core.clone();
        let admin = rewind_coordinator::access::Scope::all("test");
        let request = |src: &std::path::Path, org: &str, hours: u32, priority: &str| JobRequest {
            source: src.to_string_lossy().into(),
            org: org.into(),
            start: "2024-04-01T00".into(),
            end: format!(
                "2024-04-{:02}T{:02}",
                1 + (hours - 1) / 24,
                (hours - 1) % 24
            ),
            dest: dest.join(org).to_string_lossy().into(),
            priority: Some(priority.into()),
            ..JobRequest::default()
        };

        // A priority that is not one of the three is refused, naming the flag.
        let bad = request(&src_b, "TN-b", hours_b, "urgent");
        let err = core
            .submit(bad, &tracing::Span::none(), &admin)
            .await
            .unwrap_err();
        assert!(format!("{err}").contains("--priority"), "{err}");

        let a = core
            .submit(
                request(&src_a, "TN-a", hours_a, "backfill"),
                &tracing::Span::none(),
                &admin,
            )
            .await
            .unwrap();
        assert_eq!(a.shards, hours_a as u64);
        // Both slots busy with A's shards, a few done.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let p = store.progress(&a.job).await.unwrap();
            if p.done >= 2 && p.running == 2 {
                break;
            }
            assert!(Instant::now() < deadline, "A never filled the slots: {p:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let b = core
            .submit(
                request(&src_b, "TN-b", hours_b, "interactive"),
                &tracing::Span::none(),
                &admin,
            )
            .await
            .unwrap();
        // Workers see B at their next poll (50 ms here: longer than one of these tiny shards,
        // unlike production's hour shards); from then on every freed slot goes to B until all
        // of B's shards are claimed.
        let a_at_start = loop {
            let p = store.progress(&b.job).await.unwrap();
            if p.running + p.done > 0 {
                break store.progress(&a.job).await.unwrap();
            }
            assert!(Instant::now() < deadline, "B never started: {p:?}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        // The moment B's last shard is done (its commit by the leader comes after).
        loop {
            let p = store.progress(&b.job).await.unwrap();
            if p.done + p.failed == hours_b as u64 {
                break;
            }
            assert!(Instant::now() < deadline, "B never finished: {p:?}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let a_after = store.progress(&a.job).await.unwrap();
        let status = wait_finished(&store, &b.job).await;
        assert_eq!(status.phase, JobPhase::Succeeded, "{status:?}");
        // While B ran, A finished only the shards it had in flight (at most 2) and those
        // claimed once all of B's were running (at most 2): nowhere near its remaining ~30.
        let a_meanwhile = a_after.done - a_at_start.done;
        assert!(
            a_meanwhile <= 5,
            "A finished {a_meanwhile} shards while B's {hours_b} ran: {a_at_start:?} -> {a_after:?}"
        );
        assert!(a_after.pending > 20, "{a_after:?}");
        // And A goes on to its end exactly.
        let status = wait_finished(&store, &a.job).await;
        assert_eq!(status.phase, JobPhase::Succeeded, "{status:?}");
        assert_eq!(status.summary.unwrap().shards_done, hours_a as u64);

        cluster.stop().await;
    });
}

/// The worker loop's waits are woken by events, not only by its ticks: with a poll of a minute,
/// a job submitted before the worker starts is claimed when the poller first lists it, the
/// leader (as `rewind run` drives it) hears of each ended attempt at once, and a shutdown ends
/// the idle slots' waits. Each step would otherwise wait a whole minute.
#[test]
fn an_idle_worker_wakes_for_a_new_job_an_ended_attempt_and_its_shutdown() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("archive"), tmp.path().join("out"));
    common::generate(
        &src,
        ORG,
        "2024-04-01T00",
        "2",
        "0.05",
        &common::seed("7"),
        &[],
    );
    let want = expected(&src, 2);
    runtime().block_on(async {
        let store = rewind_common::shard_store::InMemoryShardStore::new();
        let core = Coordinator::new(store.clone(), Arc::new(KafkaChecks));
        let admin = rewind_coordinator::access::Scope::all("test");
        let request = JobRequest {
            source: src.to_string_lossy().into(),
            org: ORG.into(),
            start: "2024-04-01T00".into(),
            end: "2024-04-01T01".into(),
            dest: dest.to_string_lossy().into(),
            ..JobRequest::default()
        };
        let job = core
            .submit(request, &tracing::Span::none(), &admin)
            .await
            .unwrap()
            .job;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let ended = Arc::new(tokio::sync::Notify::new());
        let minute = Duration::from_secs(60);
        let worker = tokio::spawn(run_daemon(
            store.clone(),
            DaemonConfig {
                id: "w".into(),
                slots: 3,
                lease_ttl: Duration::from_secs(30),
                poll: minute,
                grace: Duration::from_secs(1),
                metrics: Default::default(),
                attempt_ended: Some(ended.clone()),
            },
            stopped,
        ));
        // The leader's loop of `rewind run`, waiting for nothing but ended attempts.
        let lead = async {
            loop {
                core.drive_once(None).await.unwrap();
                let status = store.status(&job).await.unwrap();
                if status.phase.finished() {
                    return status;
                }
                ended.notified().await;
            }
        };
        let status = tokio::time::timeout(Duration::from_secs(20), lead)
            .await
            .expect("the job ran and ended without waiting for a poll tick");
        assert_eq!(status.phase, JobPhase::Succeeded, "{status:?}");
        assert_exact_output(&dest, job.as_str(), &want);
        let _ = stop.send(true);
        let stats = tokio::time::timeout(Duration::from_secs(20), worker)
            .await
            .expect("the idle slots stopped without waiting for a poll tick")
            .unwrap()
            .unwrap();
        assert_eq!(stats.committed, 2);
    });
}
