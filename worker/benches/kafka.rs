//! Replay throughput against its ceiling: a plain rdkafka producer sending the same values to
//! the same broker (tansu, started here) in the same run. Rewind's side is the shard event path
//! with the Kafka sink: decode, route, produce, wait for every acknowledgement. The target:
//! Rewind at >= 70% of the plain producer's events per second (wall clock).
//!
//!     cargo bench -p rewind-worker --bench kafka             # 64 MB of generated events
//!     REWIND_BENCH_MB=16 cargo bench -p rewind-worker --bench kafka
//!
//! Needs tansu (scripts/test.sh installs it). Both producers use the same settings (acks=all,
//! idempotence, linger.ms=5, the compression given by REWIND_BENCH_COMPRESSION, default lz4);
//! best of 3, alternating.

use std::time::{Duration, Instant};

use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rewind_common::job::{Delivery, JobSpec, KafkaKey, KafkaSpec, SinkSpec, Treatment};
use rewind_common::{HourRange, JobId, Layout, OrgId};
use rewind_testkit::kafka::Tansu;
use rewind_worker::decode::{Decoder, DecoderConfig, Item};
use rewind_worker::kafka::{KafkaSink, client_config};
use rewind_worker::route::{Outcome, Router, Scratch};

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
        checkpoint_events: rewind_common::job::DEFAULT_CHECKPOINT_EVENTS,
        max_events_per_sec: None,
        max_bytes_per_sec: None,
        ordered: false,
    }
}

fn rewind(data: &[u8], k: &KafkaSpec) -> u64 {
    let job = JobSpec {
        job: JobId::generate(),
        org: OrgId::parse("TN-bench").unwrap(),
        range: HourRange::parse("2024-01-01T00", "2024-01-01T00", 10).unwrap(),
        layout: Layout::default(),
        arrival_filter: false,
        max_event_bytes: 16 << 20,
        max_attempts: 1,
        treatment: Treatment::default(),
        sink: SinkSpec::Kafka(Box::new(k.clone())),
        object: None,
        places: rewind_common::request::JobLocations::new(
            rewind_common::Location::Local("/nonexistent/source".into()),
            rewind_common::Location::Local("/nonexistent/dest".into()),
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
    let router = Router::new(&job, 128).unwrap();
    let shard = rewind_common::ShardId(rewind_common::Hour::from_epoch_hours(0));
    let mut sink = KafkaSink::new(k, "bench", shard, 1, None).unwrap();
    let mut d = Decoder::new(data, DecoderConfig::default());
    let mut scratch = Scratch::default();
    while let Some(Item::Event(ev)) = d.next().unwrap() {
        if let Outcome::Recovered { row, repaired, .. } = router.route(&ev, &mut scratch, None) {
            let value = repaired.unwrap_or(ev.text());
            assert!(
                sink.send(&row, value, None, "bench/object", ev.offset, (0, ev.offset))
                    .unwrap()
                    .is_none()
            );
        }
    }
    let done = sink.finish().unwrap();
    assert!(done.rejected.is_empty());
    done.acknowledged
}

fn plain(values: &[(Vec<u8>, Vec<u8>)], k: &KafkaSpec) -> u64 {
    let producer: ThreadedProducer<_> = client_config(k).unwrap().create().unwrap();
    for (key, value) in values {
        let mut record = BaseRecord::<[u8], [u8]>::to(&k.topic)
            .payload(value)
            .key(key);
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

fn main() {
    let mb: usize = std::env::var("REWIND_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let compression =
        std::env::var("REWIND_BENCH_COMPRESSION").unwrap_or_else(|_| "lz4".to_string());
    let data = rewind_gen::sample_bytes(3, "TN-bench", mb << 20);
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
        values.push((key, ev.bytes().to_vec()));
    }
    let broker = Tansu::start();
    println!(
        "input: {:.0} MB, {} events, compression {compression}, tansu in memory on the same machine; best of 3",
        data.len() as f64 / 1e6,
        values.len()
    );
    let (mut best_plain, mut best_rewind) = (0.0f64, 0.0f64);
    for round in 0..3 {
        for which in ["plain", "rewind"] {
            let topic = format!("bench-{which}-{round}");
            broker.create_topic(&topic, 6);
            let k = spec(&broker.brokers(), &topic, &compression);
            let t = Instant::now();
            let n = if which == "plain" {
                plain(&values, &k)
            } else {
                rewind(&data, &k)
            };
            let rate = n as f64 / t.elapsed().as_secs_f64();
            assert_eq!(n, values.len() as u64);
            let best = if which == "plain" {
                &mut best_plain
            } else {
                &mut best_rewind
            };
            *best = best.max(rate);
        }
    }
    println!(
        "plain rdkafka producer {best_plain:>9.0} events/s | rewind decode+route+produce {best_rewind:>9.0} events/s | ratio {:.2}",
        best_rewind / best_plain
    );
}
