//! The job spec and where a job's outputs live in the destination.

use serde::{Deserialize, Serialize};

use crate::ids::{JobId, OrgId, ShardId};
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
}

impl SinkSpec {
    /// The job's rate limits (Kafka replays only).
    pub fn limits(&self) -> (Option<u64>, Option<u64>) {
        match self {
            SinkSpec::Kafka(k) => (k.max_events_per_sec, k.max_bytes_per_sec),
            SinkSpec::Parquet => (None, None),
        }
    }
}

pub const DEFAULT_CHECKPOINT_EVENTS: u64 = 10_000;

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

/// The keys of a job's outputs. Everything of one job sits below `execution_id={job}/`, so two
/// executions into the same destination never mix, and deleting a job is deleting one prefix.
/// Names starting with `_` are ignored by Hive-style readers (Spark, pyarrow, DuckDB globs on
/// `*.parquet`).
#[derive(Debug, Clone)]
pub struct OutputKeys {
    job: JobId,
}

impl OutputKeys {
    pub fn new(job: &JobId) -> OutputKeys {
        OutputKeys { job: job.clone() }
    }

    /// `execution_id={job}/`: the prefix of every output of the job, in both stores.
    pub fn job_prefix(&self) -> String {
        format!("execution_id={}/", self.job)
    }

    /// A Parquet file of one shard attempt, in its Hive partition.
    pub fn data_file(&self, org: &OrgId, shard: ShardId, attempt: u32, n: u32) -> String {
        format!(
            "execution_id={}/org_id={}/date={}/part-{shard}-a{attempt}-{n}.zstd.parquet",
            self.job,
            org,
            shard.hour().date_string()
        )
    }

    /// The failed records of one shard attempt (in the failed-output store).
    pub fn failed_file(&self, shard: ShardId, attempt: u32) -> String {
        format!("execution_id={}/failed-{shard}-a{attempt}.jsonl", self.job)
    }

    /// The manifest a shard attempt writes before it commits.
    /// The unrecoverable events of one shard attempt (in the unrecoverable-output store).
    pub fn unrecoverable_file(&self, shard: ShardId, attempt: u32) -> String {
        format!(
            "execution_id={}/unrecoverable-{shard}-a{attempt}.jsonl",
            self.job
        )
    }

    pub fn shard_manifest(&self, shard: ShardId, attempt: u32) -> String {
        format!(
            "execution_id={}/_rewind/shards/{shard}-a{attempt}.json",
            self.job
        )
    }

    /// A Kafka replay's progress in a shard (see [`KafkaCheckpoint`]).
    pub fn checkpoint(&self, shard: ShardId) -> String {
        format!("execution_id={}/_rewind/checkpoints/{shard}.json", self.job)
    }

    /// The objects a shard reads, listed and pinned when the job was planned.
    pub fn shard_plan(&self, shard: ShardId) -> String {
        format!("{}{shard}.json", self.plan_prefix())
    }

    pub fn plan_prefix(&self) -> String {
        format!("execution_id={}/_rewind/plan/", self.job)
    }

    pub fn job_manifest(&self) -> String {
        format!("execution_id={}/_manifest.json", self.job)
    }

    pub fn success_marker(&self) -> String {
        format!("execution_id={}/_SUCCESS", self.job)
    }
}

/// One output file, as listed in manifests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFileEntry {
    pub key: String,
    pub size: u64,
    pub rows: u64,
    /// The object's VersionId when the destination bucket is versioned (rollback needs it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// What one archive object contributed to a shard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectStats {
    pub key: String,
    pub size: u64,
    /// The content tag and version that were read (pinned when the job was planned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Decompressed bytes decoded.
    pub decoded_bytes: u64,
    pub compression: String,
    pub events: u64,
    pub damaged: u64,
}

/// Written by a shard attempt next to its outputs; the shard's done record points to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardManifest {
    pub job: JobId,
    pub shard: ShardId,
    pub attempt: u32,
    pub prefix: String,
    pub files: Vec<OutputFileEntry>,
    pub failed_file: Option<OutputFileEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unrecoverable_file: Option<OutputFileEntry>,
    pub objects: Vec<ObjectStats>,
    pub skipped_objects: Vec<String>,
    pub counts: crate::shard_store::ShardCounts,
    /// Failed records by reason code.
    pub failed_by_reason: std::collections::BTreeMap<String, u64>,
    /// Filtered events by reason: event_type, domain, filter, arrival, flow, duplicate.
    #[serde(default)]
    pub filtered_by_reason: std::collections::BTreeMap<String, u64>,
}

/// The objects one shard reads, listed when the job was planned (the coordinator stores one per
/// shard; the embedded mode keeps them in memory). Workers read exactly these versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPlan {
    pub shard: ShardId,
    pub prefix: String,
    pub objects: Vec<crate::storage::ObjectMeta>,
    /// Why the prefix could not be listed when the job was planned: the shard's attempts list
    /// it themselves (and fail with the reason if they cannot either).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlisted: Option<String>,
}
