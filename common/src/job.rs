//! The job spec: what a job reads, how it treats events, where they go. What it writes (output
//! keys, manifests, plans) is in `crate::output`.

use serde::{Deserialize, Serialize};

use crate::ids::{JobId, OrgId};
use crate::layout::Layout;
use crate::range::HourRange;

/// Everything a worker needs to know about a job to run any of its shards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub job: JobId,
    pub org: OrgId,
    pub range: HourRange,
    pub layout: Layout,
    /// Keep only events whose `arrival_epoch` falls inside `range`.
    pub arrival_filter: bool,
    pub max_event_bytes: usize,
    pub max_attempts: u32,
    /// The selection, flows and dedup every shard applies (see [`Treatment`]).
    #[serde(default)]
    pub treatment: Treatment,
    /// Where recovered events go.
    #[serde(default)]
    pub sink: SinkSpec,
    /// Only this archive object (its key below the source), when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// Source, destination, failed and unrecoverable outputs, resolved.
    pub places: crate::request::JobLocations,
    /// What the destination is: a Parquet dataset or a Delta table.
    #[serde(default, skip_serializing_if = "crate::table::TableFormat::is_parquet")]
    pub table_format: crate::table::TableFormat,
    /// The `--partition-by` template (checked), or the reference layout when None.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_by: Option<String>,
    /// A landing-zone ingest: shards are the source's objects by size, not hours.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ingest: bool,
    /// A distributed ingest: where its commit publishes and moves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest_to: Option<crate::request::IngestTarget>,
    /// A keyed repair of the dataset at the destination, its file rewrites spread over the
    /// workers (each shard a group of the dataset's files) instead of reading an archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair: Option<RepairSpec>,
    /// A guarded replay: the job runs its days one by one, each as a job of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<crate::guard::GuardRequest>,
    /// The most shards of this job's tenant (org) that run at once across the fleet: the
    /// coordinator's `--tenant-max-shards` when it accepted the job (never the request's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_max_shards: Option<u32>,
    /// The budgets this job's tenant shares across the fleet: the coordinator's when it
    /// accepted the job (never the request's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_budget: Option<TenantBudget>,
}

/// What one tenant's jobs share across the fleet, per second (each worker process takes the
/// share its running attempts are of the tenant's running attempts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TenantBudget {
    /// Events replayed into a stream sink (Kafka, Kinesis, Pub/Sub).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_events_per_sec: Option<u64>,
    /// Bytes of event values replayed into a stream sink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_bytes_per_sec: Option<u64>,
    /// Requests to the source's object store: listings and object reads, any job kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_requests_per_sec: Option<u64>,
}

/// A distributed keyed repair. The keys and rows themselves are in the destination
/// (`OutputKeys::repair_input`, written at submit): a job record stays small.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairSpec {
    pub key: String,
    pub delete_keys: u64,
    pub update_rows: u64,
}

/// What a distributed repair deletes and replaces, as submitted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairInput {
    pub delete: Vec<String>,
    /// Replacement rows, JSON lines with the dataset's columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<String>,
}

/// Where recovered events go. (Externally tagged: internally tagged enums break numbers under
/// serde_json's arbitrary_precision.)
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkSpec {
    /// Hive-partitioned Parquet in the destination.
    #[default]
    Parquet,
    /// Produced to a Kafka topic; the destination keeps manifests and records only.
    Kafka(Box<KafkaSpec>),
    /// Put into an Amazon Kinesis data stream (at-least-once: Kinesis has no transactions);
    /// the destination keeps manifests, checkpoints and records only.
    Kinesis(Box<KinesisSpec>),
    /// Published to a Google Cloud Pub/Sub topic (at-least-once); the destination keeps
    /// manifests, checkpoints and records only.
    PubSub(Box<PubSubSpec>),
}

/// A Pub/Sub replay target. Credentials come from the standard Google chain of each process
/// that publishes (or `PUBSUB_EMULATOR_HOST`); nothing secret is stored here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PubSubSpec {
    /// `projects/PROJECT/topics/TOPIC`.
    pub topic: String,
    /// With `ordered`: where each message's ordering key comes from (`--key`).
    pub key: KafkaKey,
    #[serde(default = "default_checkpoint_events")]
    pub checkpoint_events: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_events_per_sec: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes_per_sec: Option<u64>,
    /// Ordering keys from `key`, one publish request in flight: subscribers with message
    /// ordering see each key's events in archive order within a shard.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ordered: bool,
}

/// A Pub/Sub topic as `--topic` names it: `projects/PROJECT/topics/TOPIC`.
pub fn check_pubsub_topic(s: &str) -> Result<(), String> {
    let shape = "give projects/PROJECT/topics/TOPIC";
    let parts: Vec<&str> = s.split('/').collect();
    let ["projects", project, "topics", topic] = parts.as_slice() else {
        return Err(format!("{s:?}: {shape}"));
    };
    let project_ok = (6..=30).contains(&project.len())
        && project.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.' || b == b':'
        })
        && project.as_bytes()[0].is_ascii_lowercase();
    if !project_ok {
        return Err(format!(
            "{s:?}: {project:?} is not a Google Cloud project id"
        ));
    }
    let topic_ok = (3..=255).contains(&topic.len())
        && topic.as_bytes()[0].is_ascii_alphabetic()
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~+%".contains(&b))
        && !topic.starts_with("goog");
    if !topic_ok {
        return Err(format!(
            "{s:?}: {topic:?} is not a Pub/Sub topic name (3-255 of letters, digits, - _ . ~ + %, \
             starting with a letter, not with goog)"
        ));
    }
    Ok(())
}

/// A Kinesis replay target. Credentials come from the standard AWS chain of each process that
/// puts records; nothing secret is stored here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KinesisSpec {
    /// The stream's name, or its ARN (`arn:aws:kinesis:REGION:ACCOUNT:stream/NAME`).
    pub stream: String,
    /// The AWS region (default: from the AWS environment or profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// A Kinesis-compatible endpoint instead of AWS's (tests, LocalStack, moto).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// Where each record's partition key comes from (`--key`; `none`: a key from the
    /// record's place in the archive, which spreads records over the stream's shards).
    pub key: KafkaKey,
    /// The shard's progress is saved after about this many acknowledged records (or a second),
    /// and at most this many are in flight; a crash repeats at most about twice this.
    #[serde(default = "default_checkpoint_events")]
    pub checkpoint_events: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_events_per_sec: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes_per_sec: Option<u64>,
    /// Keep the archive's order per partition key within a shard: one PutRecords call in
    /// flight, at most one record per key in each call.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ordered: bool,
    /// Each record's data is `{"rewind":{lineage},"event":EVENT}` instead of the event's bytes
    /// (Kinesis records have no headers).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wrap_lineage: bool,
}

/// A Kafka replay target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaSpec {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    pub topic: String,
    pub key: KafkaKey,
    /// none, gzip, snappy, lz4 or zstd.
    pub compression: String,
    /// librdkafka properties, applied last (security.protocol, sasl.*, ssl.*, …).
    #[serde(default)]
    pub options: Vec<(String, String)>,
    /// Exactly-once: where this job's markers can start in each partition of the control
    /// topic (its end offsets at submit), so a marker lookup never reads older history.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub control_from: Vec<i64>,
    /// Secret librdkafka properties, by reference: each process resolves them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<(String, crate::secret::SecretRef)>,
    pub delivery: Delivery,
    /// At-least-once: the shard's progress is saved after about this many acknowledged records
    /// (or a second), and at most this many are in flight; a crash repeats at most twice this.
    #[serde(default = "default_checkpoint_events")]
    pub checkpoint_events: u64,
    /// The job's whole rate, across all its workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_events_per_sec: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes_per_sec: Option<u64>,
    /// Keep the archive's order per key within a shard: one request in flight per broker
    /// connection, idempotent producer.
    #[serde(default)]
    pub ordered: bool,
    /// Archived Kafka records: the `--envelope` mapping (checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub preserve_partition: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lineage_headers: bool,
}

impl SinkSpec {
    /// The job's rate limits (stream replays only).
    pub fn limits(&self) -> (Option<u64>, Option<u64>) {
        match self {
            SinkSpec::Kafka(k) => (k.max_events_per_sec, k.max_bytes_per_sec),
            SinkSpec::Kinesis(k) => (k.max_events_per_sec, k.max_bytes_per_sec),
            SinkSpec::PubSub(k) => (k.max_events_per_sec, k.max_bytes_per_sec),
            SinkSpec::Parquet => (None, None),
        }
    }

    /// A stream sink's name (`kafka`, `kinesis`, `pubsub`); none for files.
    pub fn name(&self) -> Option<&'static str> {
        match self {
            SinkSpec::Parquet => None,
            SinkSpec::Kafka(_) => Some("kafka"),
            SinkSpec::Kinesis(_) => Some("kinesis"),
            SinkSpec::PubSub(_) => Some("pubsub"),
        }
    }

    /// A replay into a stream (Kafka, Kinesis, Pub/Sub) rather than files.
    pub fn is_stream(&self) -> bool {
        !matches!(self, SinkSpec::Parquet)
    }

    /// What the job promises about each event's delivery, for its summary: none for files
    /// (a shard's files are published whole or not at all).
    pub fn delivery(&self) -> Option<&'static str> {
        match self {
            SinkSpec::Parquet => None,
            SinkSpec::Kafka(k) if k.delivery == Delivery::ExactlyOnce => Some("exactly-once"),
            SinkSpec::Kafka(_) => Some("at-least-once"),
            SinkSpec::Kinesis(_) | SinkSpec::PubSub(_) => Some("at-least-once"),
        }
    }
}

/// The default `--checkpoint-events`: the records a replay keeps in flight per shard (and saves
/// its progress between). Fewer keep a broker whose acknowledgements take ~70 ms from being
/// kept busy (`cargo bench -p rewind-worker --bench kafka`: 10,000 reached 0.88 of a plain
/// producer, 50,000 0.99).
pub const DEFAULT_CHECKPOINT_EVENTS: u64 = 50_000;

/// A Kinesis stream as `--kinesis-stream` names it: a name (1-128 of `a-zA-Z0-9_.-`) or a
/// stream ARN.
pub fn check_kinesis_stream(s: &str) -> Result<(), String> {
    let name = match s.strip_prefix("arn:") {
        Some(rest) => {
            let parts: Vec<&str> = rest.splitn(5, ':').collect();
            match parts.as_slice() {
                [_, "kinesis", region, account, resource]
                    if !region.is_empty() && !account.is_empty() =>
                {
                    resource.strip_prefix("stream/").ok_or_else(|| {
                        format!(
                            "{s:?} is not a stream ARN (arn:aws:kinesis:REGION:ACCOUNT:stream/NAME)"
                        )
                    })?
                }
                _ => {
                    return Err(format!(
                        "{s:?} is not a stream ARN (arn:aws:kinesis:REGION:ACCOUNT:stream/NAME)"
                    ));
                }
            }
        }
        None => s,
    };
    if name.is_empty()
        || name.len() > 128
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        return Err(format!(
            "{name:?} is not a Kinesis stream name (1-128 of a-z, A-Z, 0-9, _ . -)"
        ));
    }
    Ok(())
}

fn default_checkpoint_events() -> u64 {
    DEFAULT_CHECKPOINT_EVENTS
}

/// How far a Kafka replay of a shard got: every event before `offset` in object
/// `object_index` (and in the objects before it) is acknowledged. A retried attempt produces
/// from there (it still routes the events before, for the failed records and counts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaCheckpoint {
    pub attempt: u32,
    pub object_index: usize,
    pub object_key: String,
    pub offset: u64,
}

/// What the record key is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaKey {
    EventId,
    Cid,
    None,
    /// A singular JSONPath into the event; a string value is the key as is, other values their
    /// JSON text.
    Path(String),
}

impl KafkaKey {
    pub fn parse(s: &str) -> Result<KafkaKey, String> {
        match s.trim() {
            "event_id" => Ok(KafkaKey::EventId),
            "cid" => Ok(KafkaKey::Cid),
            "none" => Ok(KafkaKey::None),
            p if p.starts_with('$') => {
                let path = rewind_flows::Path::parse(p)?;
                if !path.is_singular() {
                    return Err(format!(
                        "{p:?} may select several values; a key path selects one (names and indexes only)"
                    ));
                }
                Ok(KafkaKey::Path(p.to_string()))
            }
            other => Err(format!(
                "{other:?}: one of event_id, cid, none or a JSONPath such as $.data.account_id"
            )),
        }
    }
}

/// Delivery guarantee of a Kafka replay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// Every event is acknowledged before its shard commits; a retried shard produces again
    /// from its last checkpoint.
    #[default]
    AtLeastOnce,
    /// Each shard is one Kafka transaction, with a completion marker in the control topic.
    ExactlyOnce,
}

impl KafkaSpec {
    /// Where exactly-once replays record each committed shard (it must exist).
    pub fn control_topic(&self) -> String {
        format!("{}.rewind-control", self.topic)
    }
}

/// What a job does to events between decoding and the sink: select, repair, deduplicate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Treatment {
    /// Keep only these event types (exact or glob); empty keeps all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_types: Vec<String>,
    /// Keep only these domains (exact or glob); empty keeps all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
    /// An RFC 9535 filter expression with `@` the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// The flow config (JSON or YAML text), validated when the job was requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flows: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup: Option<DedupKey>,
    /// Hours before a shard whose events also count as seen (Parquet output).
    #[serde(default)]
    pub dedup_window_hours: u32,
}

/// What makes two events the same for `--dedup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DedupKey {
    EventId,
    EventIdTimestamp,
}

impl DedupKey {
    pub fn parse(s: &str) -> Option<DedupKey> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        match parts.as_slice() {
            ["event_id"] => Some(DedupKey::EventId),
            ["event_id", "timestamp"] | ["timestamp", "event_id"] => {
                Some(DedupKey::EventIdTimestamp)
            }
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DedupKey::EventId => "event_id",
            DedupKey::EventIdTimestamp => "event_id,timestamp",
        }
    }
}

/// What one flow did in a shard (or a job).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowCounts {
    /// Events whose conditions all held (this flow was the first to match).
    pub matched: u64,
    /// Matched and changed by the steps (re-serialised once).
    pub repaired: u64,
    pub unrecoverable: u64,
    pub filtered: u64,
    /// A step could not apply.
    pub failed: u64,
}

impl FlowCounts {
    pub fn add(&mut self, o: &FlowCounts) {
        self.matched += o.matched;
        self.repaired += o.repaired;
        self.unrecoverable += o.unrecoverable;
        self.filtered += o.filtered;
        self.failed += o.failed;
    }
}

/// Adds counts by name into `into`.
pub fn add_counts<V: Clone + Default>(
    into: &mut std::collections::BTreeMap<String, V>,
    from: &std::collections::BTreeMap<String, V>,
    add: impl Fn(&mut V, &V),
) {
    for (k, v) in from {
        add(into.entry(k.clone()).or_default(), v);
    }
}

// What a job writes lives in `crate::output`; these paths stay valid.
pub use crate::output::{
    ObjectStats, OutputFileEntry, OutputKeys, PackedPlan, ShardManifest, ShardPlan,
};
