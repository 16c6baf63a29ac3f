//! Replay throughput against its ceiling: a plain rdkafka producer sending the same values to
//! the same broker (tansu, started here) in the same run — once bare, once with the five lineage
//! headers Rewind adds to each record (the same bytes on the wire). Rewind's side is one shard
//! attempt as a worker runs it (`run_shard`): the input cut into objects of 5 MB in a local
//! directory (REWIND_BENCH_OBJECT_MB), read, decoded, routed and produced, every
//! acknowledgement awaited. The target (issue 19): Rewind at >= 90% of the plain producer's
//! events per second (wall clock).
//!
//!     cargo bench -p rewind-worker --bench kafka             # 256 MB of generated events
//!     REWIND_BENCH_MB=64 REWIND_BENCH_ROUNDS=3 cargo bench -p rewind-worker --bench kafka
//!     REWIND_BENCH_PROFILE=hard cargo bench -p rewind-worker --bench kafka   # the hard profile
//!     REWIND_BENCH_ONLY=rewind cargo bench ...     # one contender alone (for `perf record`)
//!
//! Runs under a second are skewed by the producer's flush at the end (its wait moves in steps
//! of ~100 ms), so keep the input large enough for runs of several seconds.
//!
//! Needs tansu (scripts/test.sh installs it). Both producers use the same settings (acks=all,
//! idempotence, linger.ms=5, the compression given by REWIND_BENCH_COMPRESSION, default lz4);
//! best of 3 (REWIND_BENCH_ROUNDS), alternating. Also prints the CPU per 1,000 events of each.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rewind_common::job::{
    Delivery, JobSpec, KafkaKey, KafkaSpec, OutputKeys, ShardPlan, SinkSpec, Treatment,
};
use rewind_common::storage::{LocalOutput, LocalSource, ObjectMeta, OutputStore};
use rewind_common::{HourRange, JobId, Layout, OrgId, ShardId};
use rewind_testkit::kafka::Tansu;
use rewind_worker::decode::{Decoder, DecoderConfig, Item};
use rewind_worker::kafka::{
    HEADER_ATTEMPT, HEADER_EVENT_ID, HEADER_JOB, HEADER_OFFSET, HEADER_SOURCE_KEY, client_config,
};
use rewind_worker::pipeline::{ShardEnv, run_shard};

fn spec(brokers: &str, topic: &str, compression: &str) -> KafkaSpec {
    KafkaSpec {
        envelope: None,
        preserve_partition: false,
        lineage_headers: false,
        brokers: brokers.to_string(),
        topic: topic.to_string(),
        key: KafkaKey::EventId,
        compression: compression.to_string(),
        options: vec![],
        secrets: vec![],
        control_from: vec![],
        delivery: Delivery::AtLeastOnce,
        checkpoint_events: std::env::var("REWIND_BENCH_CHECKPOINT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(rewind_common::job::DEFAULT_CHECKPOINT_EVENTS),
        max_events_per_sec: None,
        max_bytes_per_sec: None,
        ordered: false,
    }
}

/// Rewind's side: one shard attempt (`run_shard`, as a worker runs it) over the input cut into
/// objects of `object_mb` in a local directory, producing to the topic. Returns the records the
/// brokers acknowledged.
fn rewind(objects: &Objects, k: &KafkaSpec) -> u64 {
    let job = JobSpec {
        job: JobId::generate(),
        org: OrgId::parse("TN-bench").unwrap(),
        range: objects.range,
        layout: Layout::default(),
        arrival_filter: false,
        max_event_bytes: 16 << 20,
        max_attempts: 1,
        treatment: Treatment::default(),
        sink: SinkSpec::Kafka(Box::new(k.clone())),
        object: None,
        places: rewind_common::request::JobLocations::new(
            rewind_common::Location::Local(objects.source.path().into()),
            rewind_common::Location::Local(objects.dest.path().into()),
        ),
        table_format: Default::default(),
        repair: None,
        guard: None,
        tenant_max_shards: None,
        tenant_budget: None,
        partition_by: None,
        ingest: false,
        ingest_to: None,
    };
    let shard = ShardId(objects.range.first);
    let output = Arc::new(LocalOutput::new(objects.dest.path()));
    let plan = ShardPlan {
        shard,
        prefix: objects.prefix.clone(),
        objects: objects.listed.clone(),
        unlisted: None,
    };
    output
        .put(
            &OutputKeys::of(&job).shard_plan(shard),
            &serde_json::to_vec(&plan).unwrap(),
        )
        .unwrap();
    let env = ShardEnv {
        spec: Arc::new(job),
        source: Arc::new(LocalSource::new(objects.source.path()).unwrap()),
        output: output.clone(),
        failed_output: output.clone(),
        unrecoverable_output: output,
        progress: Default::default(),
        cancel: Default::default(),
        throttle: None,
        tenant_throttle: None,
        produce_latency: None,
    };
    let (_, manifest) = run_shard(&env, shard, 1, DecoderConfig::default()).unwrap();
    assert_eq!(manifest.counts.failed, 0);
    manifest.counts.acknowledged
}

/// The input as a worker finds it: objects of one hour in a local directory.
struct Objects {
    source: tempfile::TempDir,
    dest: tempfile::TempDir,
    range: HourRange,
    prefix: String,
    listed: Vec<ObjectMeta>,
}

impl Objects {
    /// Cuts `data` into objects of about `object_mb` at event boundaries.
    fn write(data: &[u8], object_mb: usize) -> Objects {
        let range = HourRange::parse("2024-04-01T00", "2024-04-01T00", 10).unwrap();
        let prefix = Layout::default().prefix(range.first, &OrgId::parse("TN-bench").unwrap());
        let source = tempfile::tempdir().unwrap();
        let dest = tempfile::tempdir().unwrap();
        let mut cuts = vec![0];
        let mut d = Decoder::new(data, DecoderConfig::default());
        while let Some(Item::Event(ev)) = d.next().unwrap() {
            let end = (ev.offset as usize) + ev.bytes().len();
            if end - cuts[cuts.len() - 1] >= object_mb << 20 {
                cuts.push(end);
            }
        }
        if *cuts.last().unwrap() < data.len() {
            cuts.push(data.len());
        }
        let mut listed = Vec::new();
        for (i, w) in cuts.windows(2).enumerate() {
            let key = format!("{prefix}part-{i:04}.json");
            let path = source.path().join(&key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &data[w[0]..w[1]]).unwrap();
            listed.push(ObjectMeta::new(key, (w[1] - w[0]) as u64));
        }
        Objects {
            source,
            dest,
            range,
            prefix,
            listed,
        }
    }
}

/// A plain producer sending the values with their keys; with `lineage`, also the five headers
/// Rewind adds to each record (job, source key, offset, attempt, event id), so the two send the
/// same bytes.
fn plain(values: &[(Vec<u8>, Vec<u8>, u64)], k: &KafkaSpec, lineage: bool) -> u64 {
    let producer: ThreadedProducer<_> = client_config(k).unwrap().create().unwrap();
    let job = JobId::generate().to_string();
    for (key, value, offset) in values {
        let mut record = BaseRecord::<[u8], [u8]>::to(&k.topic)
            .payload(value)
            .key(key);
        if lineage {
            let offset = offset.to_string();
            record = record.headers(
                OwnedHeaders::new_with_capacity(5)
                    .insert(h(HEADER_JOB, job.as_bytes()))
                    .insert(h(HEADER_SOURCE_KEY, b"bench/object"))
                    .insert(h(HEADER_OFFSET, offset.as_bytes()))
                    .insert(h(HEADER_ATTEMPT, b"1"))
                    .insert(h(HEADER_EVENT_ID, key)),
            );
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    std::thread::sleep(Duration::from_millis(1));
                    record = back;
                }
            }
        }
    }
    producer.flush(Duration::from_secs(300)).unwrap();
    values.len() as u64
}

/// CPU seconds of this process (every thread: the producer's included, not the broker's) and of
/// the calling thread.
fn cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name's closing parenthesis; utime and stime are the 12th/13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    let process = (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / 100.0;
    let thread = std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1e9;
    (process, thread)
}

fn h<'a>(key: &'a str, value: &'a [u8]) -> Header<'a, &'a [u8]> {
    Header {
        key,
        value: Some(value),
    }
}

fn main() {
    // The allocator settings the `rewind` binary runs with (glibc arenas and thresholds).
    rewind_common::malloc::tune_allocator();
    let mb: usize = std::env::var("REWIND_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let compression =
        std::env::var("REWIND_BENCH_COMPRESSION").unwrap_or_else(|_| "lz4".to_string());
    // REWIND_BENCH_PROFILE=hard: the `rewind gen --profile hard` events (escapes, shuffled and
    // escaped keys, pretty-printed events, unicode, numbers of every shape).
    let profile: rewind_gen::Profile = std::env::var("REWIND_BENCH_PROFILE")
        .unwrap_or_else(|_| "easy".into())
        .parse()
        .unwrap();
    let data = rewind_gen::sample_bytes_with(3, "TN-bench", mb << 20, profile);
    // The plain producer gets the values already split (its side does no decoding at all).
    let mut values = Vec::new();
    let mut d = Decoder::new(&data[..], DecoderConfig::default());
    while let Some(Item::Event(ev)) = d.next().unwrap() {
        let v: serde_json::Value = serde_json::from_slice(ev.bytes()).unwrap();
        let key = v["event_id"]
            .as_str()
            .unwrap_or_default()
            .as_bytes()
            .to_vec();
        values.push((key, ev.bytes().to_vec(), ev.offset));
    }
    // Rewind reads objects of 5 MB (REWIND_BENCH_OBJECT_MB) from a local directory.
    let object_mb = std::env::var("REWIND_BENCH_OBJECT_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let objects = Objects::write(&data, object_mb);
    let rounds: usize = std::env::var("REWIND_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let broker = Tansu::start();
    println!(
        "input: {:.0} MB ({profile:?} profile), {} events, compression {compression}, tansu in memory on the same machine; best of {rounds}",
        data.len() as f64 / 1e6,
        values.len()
    );
    const WHO: [&str; 3] = ["plain", "plain+headers", "rewind"];
    // REWIND_BENCH_ONLY=rewind (or plain, plain+headers): that contender alone, for a profiler.
    let only = std::env::var("REWIND_BENCH_ONLY").ok();
    // Best events/s of each, with the CPU per 1,000 events of that run (ms: the process with
    // the producer's threads, and the sending thread).
    let mut best = [(0.0f64, 0.0f64, 0.0f64); 3];
    for round in 0..rounds {
        for (i, which) in WHO.iter().enumerate() {
            if only.as_deref().is_some_and(|o| o != *which) {
                continue;
            }
            let topic = format!("bench-{}-{round}", i);
            broker.create_topic(&topic, 6);
            let k = spec(&broker.brokers(), &topic, &compression);
            let t = Instant::now();
            let c0 = cpu();
            let n = match *which {
                "plain" => plain(&values, &k, false),
                "plain+headers" => plain(&values, &k, true),
                _ => rewind(&objects, &k),
            };
            let rate = n as f64 / t.elapsed().as_secs_f64();
            let c1 = cpu();
            assert_eq!(n, values.len() as u64);
            if rate > best[i].0 {
                let per_k = |a: f64, b: f64| (b - a) * 1e6 / n as f64;
                best[i] = (rate, per_k(c0.0, c1.0), per_k(c0.1, c1.1));
            }
        }
    }
    for (i, which) in WHO.iter().enumerate() {
        let (rate, process, thread) = best[i];
        println!(
            "{which:<14} {rate:>9.0} events/s   CPU per 1,000 events: {process:.1} ms (process, producer threads included), {thread:.1} ms (sending thread)"
        );
    }
    println!(
        "ratio rewind / plain producer: {:.2}; rewind / plain producer sending the same lineage headers: {:.2}",
        best[2].0 / best[0].0,
        best[2].0 / best[1].0
    );
}
