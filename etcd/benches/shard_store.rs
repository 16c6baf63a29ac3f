//! Benchmark of the etcd shard store against one real local etcd (started here, data on tmpfs
//! when the machine has /dev/shm):
//!
//! 1. planning + registering a year (8,760 hour shards) as one job: plan, then one submit txn;
//! 2. claim + commit throughput with many concurrent claimants on one job, for several claimant
//!    counts: shards/s = shards / wall time until every shard is committed.
//!
//! 3. etcd's footprint per shard: the bytes a job's keys take while its shards are pending,
//!    running, done, done and folded (ADR 35), and after the leader drops a finished job's shard keys; extrapolated to a
//!    year for 1,000 tenants (docs/scale.md).
//!
//! `cargo bench -p rewind-etcd --bench shard_store` (needs `etcd` on the PATH; with
//! `REWIND_BENCH_ETCD_MEMBERS=3` against a 3-member cluster on this machine; `REWIND_BENCH_SHARDS`
//! sets the shards per throughput run, default 6,000; `REWIND_BENCH_CLAIMANTS` the claimant
//! counts, default `1,8,32,64,1000`; `REWIND_BENCH_JOBS` splits the shards over that many jobs,
//! default 1). Each throughput row also gives the p50/p99/max latency of a
//! claim, the fewest shards any claimant got, and etcd's own CPU seconds and database size.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rewind_common::registry::JobRegistry;
use rewind_common::shard_store::{ShardCounts, ShardDone, ShardStore};
use rewind_common::{HourRange, JobId, Layout, OrgId, ShardId};
use rewind_etcd::EtcdStore;
use rewind_testkit::servers::{Etcd, EtcdCluster};

/// The etcd under test: one member or a cluster, its client URLs and its processes.
struct Target {
    endpoints: Vec<String>,
    pids: Vec<u32>,
}

fn main() {
    let members: usize = std::env::var("REWIND_BENCH_ETCD_MEMBERS")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(1);
    let (_single, _cluster, target) = if members <= 1 {
        let etcd = Etcd::start();
        let t = Target {
            endpoints: vec![etcd.endpoint()],
            pids: vec![etcd.pid()],
        };
        (Some(etcd), None, t)
    } else {
        let cluster = EtcdCluster::start(members);
        let t = Target {
            endpoints: cluster.endpoints(),
            pids: cluster.pids(),
        };
        (None, Some(cluster), t)
    };
    println!("etcd: {} member(s) on this machine", target.pids.len());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench(&target));
}

async fn bench(etcd: &Target) {
    let store = Arc::new(
        EtcdStore::connect(&etcd.endpoints, "/rewind/bench/")
            .await
            .unwrap(),
    );

    // The coordinator compacts etcd's history while it leads; do the same here.
    {
        let store = store.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = store.compact_history(1000).await;
            }
        });
    }

    // 1. A year: plan (one shard per hour with its prefix) and register it.
    let mut plan_times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let range = HourRange::parse("2025-01-01", "2025-12-31", 9000).unwrap();
        let org = OrgId::parse("TN-bench").unwrap();
        let layout = Layout::default();
        let planned: Vec<(ShardId, String)> = range
            .hours()
            .map(|h| (ShardId(h), layout.prefix(h, &org)))
            .collect();
        let ids: Vec<ShardId> = planned.iter().map(|(id, _)| *id).collect();
        let request = rewind_common::JobRequest {
            source: "/archive".into(),
            org: "TN-bench".into(),
            start: "2025-01-01".into(),
            end: "2025-12-31".into(),
            dest: "/out".into(),
            ..Default::default()
        };
        let spec = request.validate(JobId::generate()).unwrap();
        let status = rewind_common::JobStatus {
            phase: rewind_common::JobPhase::Running,
            org: String::new(),
            shards: ids.len() as u64,
            created_ms: 0,
            finished_ms: None,
            message: None,
            summary: None,
        };
        let record = rewind_common::JobRecord {
            spec,
            request,
            created_ms: 0,
            trace_parent: None,
            submitted_by: None,
            retry: None,
        };
        store.submit(&record, &status, &ids).await.unwrap();
        plan_times.push((started.elapsed(), ids.len()));
    }
    plan_times.sort();
    let (median, n) = plan_times[plan_times.len() / 2];
    println!(
        "plan + register a year: {n} shards in {:.1} ms (median of 5; first progress read {:.1} ms)",
        median.as_secs_f64() * 1000.0,
        {
            let job = JobId::generate();
            let ids = year();
            store.create_job(&job, &ids, 3).await.unwrap();
            let t = Instant::now();
            let p = store.progress(&job).await.unwrap();
            assert_eq!(p.pending, 8760);
            t.elapsed().as_secs_f64() * 1000.0
        }
    );

    // 2. Claim + commit throughput.
    let shards: usize = std::env::var("REWIND_BENCH_SHARDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6000);
    let counts: Vec<usize> = std::env::var("REWIND_BENCH_CLAIMANTS")
        .unwrap_or_else(|_| "1,8,32,64,1000".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    println!("claim + commit, {shards} shards per run, against plain puts on the same etcd:");
    println!(
        "claimants (processes)  shards/s  plain puts/s  puts per shard  lost races per shard  \
         claim p50/p99/max ms  fewest per claimant  etcd CPU-s per 1k shards  etcd db MB"
    );
    let job_count: usize = std::env::var("REWIND_BENCH_JOBS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1);
    if job_count > 1 {
        println!(
            "(the shards split over {job_count} jobs; claimant w starts at job w mod {job_count} \
             and moves on when it is drained, as workers spread by the fair order do)"
        );
    }
    for claimants in counts {
        let ids: Vec<ShardId> = HourRange::parse("2020-01-01T00", "2030-01-01T00", 200_000)
            .unwrap()
            .hours()
            .take(shards)
            .map(ShardId)
            .collect();
        let jobs: Vec<JobId> = (0..job_count).map(|_| JobId::generate()).collect();
        let per_job = shards.div_ceil(job_count);
        for (job, ids) in jobs.iter().zip(ids.chunks(per_job)) {
            store.create_job(job, ids, 3).await.unwrap();
        }
        let jobs = Arc::new(jobs);
        let started = Instant::now();
        let etcd_cpu0 = etcd_cpu(etcd);
        let races0 = rewind_etcd::CLAIM_RACES.load(std::sync::atomic::Ordering::Relaxed);
        // Claimants as worker processes would hold them: 8 slots per process, each process
        // with its own connection and its own cache of claimable keys.
        let mut stores = Vec::new();
        for _ in 0..claimants.div_ceil(8) {
            stores.push(Arc::new(
                EtcdStore::connect(&etcd.endpoints, "/rewind/bench/")
                    .await
                    .unwrap(),
            ));
        }
        let mut tasks = Vec::new();
        for w in 0..claimants {
            let (store, jobs) = (stores[w % stores.len()].clone(), jobs.clone());
            tasks.push(tokio::spawn(async move {
                let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
                let name = format!("w{w}");
                let mut n = 0u64;
                let (mut tc, mut tm) = (Duration::ZERO, Duration::ZERO);
                let mut latencies = Vec::new();
                let mut at = w % jobs.len();
                loop {
                    let t = Instant::now();
                    let mut claimed = None;
                    for k in 0..jobs.len() {
                        let job = &jobs[(at + k) % jobs.len()];
                        if let Some(c) = store.claim(job, lease, &name).await.unwrap() {
                            at = (at + k) % jobs.len();
                            claimed = Some(c);
                            break;
                        }
                    }
                    let Some(c) = claimed else {
                        break;
                    };
                    tc += t.elapsed();
                    latencies.push(t.elapsed());
                    let t = Instant::now();
                    let done = ShardDone {
                        attempt: c.attempt,
                        manifest_key: format!(
                            "execution_id={}/_rewind/shards/{}-a1.json",
                            c.job, c.shard
                        ),
                        counts: Default::default(),
                    };
                    store.commit(&c, done).await.unwrap();
                    tm += t.elapsed();
                    n += 1;
                }
                if std::env::var("REWIND_BENCH_LAT").is_ok() && w == 0 {
                    eprintln!(
                        "claimant 0: claim {:.2} ms, commit {:.2} ms",
                        tc.as_secs_f64() * 1e3 / n as f64,
                        tm.as_secs_f64() * 1e3 / n as f64
                    );
                }
                (n, latencies)
            }));
        }
        let (mut total, mut fewest, mut latencies) = (0, u64::MAX, Vec::new());
        for t in tasks {
            let (n, l) = t.await.unwrap();
            total += n;
            fewest = fewest.min(n);
            latencies.extend(l);
        }
        let secs = started.elapsed().as_secs_f64();
        let etcd_cpu = etcd_cpu(etcd) - etcd_cpu0;
        latencies.sort();
        let ms =
            |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
        let db_mb = db_size(etcd).await as f64 / 1e6;
        assert_eq!(total as usize, shards, "every shard committed exactly once");
        let mut done = 0;
        for job in jobs.iter() {
            done += store.progress(job).await.unwrap().done as usize;
            store.compact(job).await.unwrap();
        }
        assert_eq!(done, shards);
        let rate = shards as f64 / secs;
        let puts = plain_puts(etcd, claimants, shards * 2).await;
        let races = rewind_etcd::CLAIM_RACES.load(std::sync::atomic::Ordering::Relaxed) - races0;
        println!(
            "{claimants:>9} ({:>9})  {rate:>8.0}  {puts:>12.0}  {:>14.2}  {:>20.2}  {:>6.1}/{:>5.1}/{:>6.1}  {fewest:>19}  {:>24.2}  {db_mb:>10.1}",
            claimants.div_ceil(8),
            puts / rate,
            races as f64 / shards as f64,
            ms(0.5),
            ms(0.99),
            ms(1.0),
            etcd_cpu / shards as f64 * 1000.0,
        );
    }

    // 3. Footprint: the bytes of one year's keys (8,760 shards) in each state.
    let job = JobId::generate();
    let ids = year();
    let n = ids.len() as f64;
    let prefix = "/rewind/bench/";
    let before = logical_bytes(etcd, prefix).await;
    store.create_job(&job, &ids, 3).await.unwrap();
    let pending = logical_bytes(etcd, prefix).await - before;
    let lease = store.grant_lease(Duration::from_secs(600)).await.unwrap();
    let mut claims = Vec::new();
    while let Some(c) = store.claim(&job, lease, "w").await.unwrap() {
        claims.push(c);
    }
    assert_eq!(claims.len(), ids.len());
    let running = logical_bytes(etcd, prefix).await - before;
    for (i, c) in claims.into_iter().enumerate() {
        // Counts of the size a real hour has (numbers of as many digits).
        let i = i as u64;
        let done = ShardDone {
            attempt: c.attempt,
            manifest_key: format!("execution_id={}/_rewind/shards/{}-a1.json", c.job, c.shard),
            counts: ShardCounts {
                objects: 12,
                bytes: 60_000_000 + i * 7919,
                recovered: 150_000 + i * 13,
                filtered: 1_000 + i,
                failed: i % 7,
                decoded: 151_000 + i * 14 + i % 7,
                produced: 150_000 + i * 13,
                acknowledged: 150_000 + i * 13,
                ..ShardCounts::default()
            },
        };
        store.commit(&c, done).await.unwrap();
    }
    let done = logical_bytes(etcd, prefix).await - before;
    // What the leader's fold (ADR 35) leaves of it.
    while store.fold_done(&job).await.unwrap() > 0 {}
    let folded = logical_bytes(etcd, prefix).await - before;
    store.compact(&job).await.unwrap();
    let dropped = logical_bytes(etcd, prefix).await - before;
    println!(
        "etcd footprint of a year of one job ({} shards), keys + values:",
        ids.len()
    );
    for (state, bytes) in [
        ("all pending", pending),
        ("all running", running),
        ("all done", done),
        ("all done, folded", folded),
        ("finished, shard keys dropped", dropped),
    ] {
        println!(
            "  {state:<30} {:>10} bytes  {:>7.1} bytes per shard  x 1,000 tenants: {:>8.1} MB",
            bytes,
            bytes as f64 / n,
            bytes as f64 * 1000.0 / 1e6
        );
    }
}

/// The shards of a year of hours (2025: 8,760).
fn year() -> Vec<ShardId> {
    HourRange::parse("2025-01-01", "2025-12-31", 9000)
        .unwrap()
        .hours()
        .map(ShardId)
        .collect()
}

/// CPU seconds every etcd member has used (user + system).
fn etcd_cpu(etcd: &Target) -> f64 {
    etcd.pids.iter().map(|p| process_cpu(*p)).sum()
}

/// CPU seconds a process has used (user + system), from /proc.
fn process_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// etcd's database size (bytes on disk, before defragmentation).
async fn db_size(etcd: &Target) -> i64 {
    let mut client = etcd_client::Client::connect(&etcd.endpoints[..1], None)
        .await
        .unwrap();
    client.status().await.map(|s| s.db_size()).unwrap_or(0)
}

/// The bytes of every key and value under `prefix` now (what a year of jobs holds live).
async fn logical_bytes(etcd: &Target, prefix: &str) -> i64 {
    let mut client = etcd_client::Client::connect(&etcd.endpoints, None)
        .await
        .unwrap();
    let resp = client
        .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    resp.kvs()
        .iter()
        .map(|kv| (kv.key().len() + kv.value().len()) as i64)
        .sum()
}

/// The baseline: `n` plain puts of small values by `clients` concurrent clients; puts/s.
async fn plain_puts(etcd: &Target, clients: usize, n: usize) -> f64 {
    let client = etcd_client::Client::connect(&etcd.endpoints, None)
        .await
        .unwrap();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (mut kv, next) = (client.kv_client(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    break;
                }
                kv.put(
                    format!("/rewind/bench/plain/{i:08}"),
                    "{\"attempt\":1}",
                    None,
                )
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let mut kv = client.kv_client();
    kv.delete(
        "/rewind/bench/plain/",
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await
    .unwrap();
    rate
}
