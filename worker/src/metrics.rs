//! Prometheus metrics of a worker process (`rewind-worker --metrics-listen`). Names start with
//! `rewind_`; labels are bounded (outcomes, not job ids).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowLabel {
    pub flow: String,
    pub outcome: String,
}

#[derive(Clone, Debug)]
pub struct WorkerMetrics {
    /// Events matched by each flow (as named in the job's flow config), by what followed:
    /// matched, repaired, failed, unrecoverable, filtered.
    pub flow_events: Family<FlowLabel, Counter>,
    /// Attempts ended, by outcome: committed, fenced, failed, released.
    pub attempts: Family<OutcomeLabel, Counter>,
    /// Events decoded, by outcome: recovered, filtered, failed, unrecoverable. Moves while
    /// shards run.
    pub events: Family<OutcomeLabel, Counter>,
    pub bytes_read: Counter,
    pub objects_read: Counter,
    pub shards_running: Gauge,
    pub shard_seconds: Histogram,
    pub lease_losses: Counter,
    /// Calls to etcd that failed and were retried.
    pub store_retries: Counter,
    /// Kafka records handed to the producer (`produced`) and acknowledged by the brokers
    /// (`acknowledged`).
    pub kafka_messages: Family<OutcomeLabel, Counter>,
    /// Seconds from handing a record to the producer to its acknowledgement (batching, the
    /// network and the brokers' acks=all write), per acknowledged record.
    pub kafka_produce_seconds: Histogram,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        WorkerMetrics {
            flow_events: Family::default(),
            attempts: Family::default(),
            events: Family::default(),
            bytes_read: Counter::default(),
            objects_read: Counter::default(),
            shards_running: Gauge::default(),
            shard_seconds: Histogram::new(exponential_buckets(0.25, 2.0, 14)),
            lease_losses: Counter::default(),
            store_retries: Counter::default(),
            kafka_messages: Family::default(),
            kafka_produce_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        }
    }
}

impl WorkerMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("rewind");
        r.register(
            "worker_attempts",
            "Shard attempts ended, by outcome",
            self.attempts.clone(),
        );
        r.register(
            "events",
            "Events decoded by this process, by outcome",
            self.events.clone(),
        );
        r.register(
            "flow_events",
            "Events matched by each repair flow, by what followed",
            self.flow_events.clone(),
        );
        r.register(
            "bytes_read",
            "Archive bytes read (as stored)",
            self.bytes_read.clone(),
        );
        r.register(
            "objects_read",
            "Archive objects read",
            self.objects_read.clone(),
        );
        r.register(
            "shards_running",
            "Shard attempts running in this process",
            self.shards_running.clone(),
        );
        r.register(
            "shard_duration_seconds",
            "Duration of shard attempts",
            self.shard_seconds.clone(),
        );
        r.register(
            "lease_losses",
            "Worker leases found expired (process paused or cut off from etcd)",
            self.lease_losses.clone(),
        );
        r.register(
            "store_retries",
            "etcd calls retried after an error",
            self.store_retries.clone(),
        );
        r.register(
            "kafka_messages",
            "Kafka records produced and acknowledged",
            self.kafka_messages.clone(),
        );
        r.register(
            "kafka_produce_latency_seconds",
            "Time from producing a Kafka record to its acknowledgement",
            self.kafka_produce_seconds.clone(),
        );
    }

    pub fn outcome(family: &Family<OutcomeLabel, Counter>, outcome: &str) -> Counter {
        family
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .clone()
    }
}
