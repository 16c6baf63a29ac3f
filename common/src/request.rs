//! A job request as a user states it (`rewind run` / `rewind submit` flags, the gRPC
//! `JobRequest`), its validation into a [`JobSpec`], and the record the distributed mode keeps.

use serde::{Deserialize, Serialize};

use crate::error::RequestError;
use crate::ids::{JobId, OrgId};
use crate::job::{DedupKey, Delivery, JobSpec, KafkaKey, KafkaSpec, SinkSpec, Treatment};
use crate::layout::{DEFAULT_LAYOUT, Layout};
use crate::location::{Location, S3Options};
use crate::range::{DEFAULT_MAX_HOURS, HourRange};

pub const DEFAULT_MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;
/// No event may be larger than this, whoever asks: a worker holds up to that much per running
/// shard, and offsets plus the limit must not overflow.
pub const MAX_EVENT_BYTES_CEILING: usize = 1 << 30;
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
pub const DEFAULT_DEDUP_WINDOW_HOURS: u32 = 1;
pub const MAX_DEDUP_WINDOW_HOURS: u32 = 24;

/// The job as requested. Strings are validated by [`JobRequest::validate`], which names the
/// offending field the way the CLI spells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRequest {
    pub source: String,
    pub org: String,
    pub start: String,
    pub end: String,
    pub dest: String,
    pub layout: String,
    pub arrival_filter: bool,
    /// Where failed records go; default `<dest>/_failed`.
    pub failed_output: Option<String>,
    pub max_event_bytes: usize,
    pub max_attempts: u32,
    pub max_range_hours: u64,
    /// Endpoint, region and roles when a side is on S3.
    #[serde(default)]
    pub s3: S3Options,
    /// Where unrecoverable events go; default `<dest>/_unrecoverable`.
    #[serde(default)]
    pub unrecoverable_output: Option<String>,
    #[serde(default)]
    pub event_types: Vec<String>,
    #[serde(default)]
    pub domains: Vec<String>,
    /// RFC 9535 filter expression with `@` the event.
    #[serde(default)]
    pub filter: Option<String>,
    /// The flow config's text (JSON or YAML; the CLI reads `--flows FILE`).
    #[serde(default)]
    pub flows: Option<String>,
    /// `event_id` or `event_id,timestamp`.
    #[serde(default)]
    pub dedup: Option<String>,
    #[serde(default = "default_dedup_window")]
    pub dedup_window_hours: u32,
    /// `parquet` (default) or `kafka`.
    #[serde(default)]
    pub sink: Option<String>,
    #[serde(default)]
    pub brokers: Option<String>,
    #[serde(default)]
    pub topic: Option<String>,
    /// event_id (default), cid, none or a JSONPath.
    #[serde(default)]
    pub key: Option<String>,
    /// none (default), gzip, snappy, lz4, zstd.
    #[serde(default)]
    pub compression: Option<String>,
    /// librdkafka properties as `key=value`.
    #[serde(default)]
    pub kafka_options: Vec<String>,
    /// Secret librdkafka properties by reference, `KEY=env:NAME` or `KEY=file:PATH`: each
    /// process resolves them; the values are never stored or shown.
    #[serde(default)]
    pub kafka_secrets: Vec<String>,
    /// at-least-once (default).
    #[serde(default)]
    pub delivery: Option<String>,
    /// Records between progress checkpoints of a Kafka replay (default 50,000).
    #[serde(default)]
    pub checkpoint_events: Option<u64>,
    /// Kafka: the job's rate limits, across all its workers.
    #[serde(default)]
    pub max_events_per_sec: Option<u64>,
    #[serde(default)]
    pub max_bytes_per_sec: Option<u64>,
    /// Kafka: keep the archive's order per key within a shard.
    #[serde(default)]
    pub ordered: bool,
    /// Replay only this archive object (its key below --source).
    #[serde(default)]
    pub object: Option<String>,
    /// `parquet` (default) or `delta`: the destination as a Delta Lake table.
    #[serde(default)]
    pub table_format: Option<String>,
    /// Where each row goes below the job's prefix (`--partition-by`, see
    /// [`crate::partition`]); the reference layout `org_id=…/date=…` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_by: Option<String>,
    /// A landing-zone ingest (`rewind ingest`): the shards are every object below `source`
    /// (any names), in groups by size, instead of the layout's hours.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ingest: bool,
    /// A distributed ingest (`rewind ingest --coordinator`): where its commit publishes and
    /// moves (`dest` is the trusted zone's staging prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest_to: Option<IngestTarget>,
    /// A Kafka replay of archived Kafka records: where each envelope's value, key, headers,
    /// timestamp and partition are (`--envelope`, see [`crate::envelope`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope: Option<String>,
    /// With --envelope: each record to its archived partition.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub preserve_partition: bool,
    /// With --envelope: add Rewind's lineage headers too (by default the records go out as
    /// they were archived).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lineage_headers: bool,
    /// A keyed repair of the dataset at `dest` instead of a recovery (`rewind repair
    /// --coordinator`): the key column, the keys to delete, the replacement rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair: Option<RepairRequest>,
    /// A guarded replay, day by day (`rewind replay --guard --coordinator`): the coordinator
    /// runs each day as a job of this request narrowed to the day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<crate::guard::GuardRequest>,
    /// How the job shares the fleet's worker slots (`--priority`): interactive, normal
    /// (the default) or backfill. See [`Priority`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    /// `--sink kinesis`: the stream's name or ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kinesis_stream: Option<String>,
    /// `--sink kinesis`: a Kinesis-compatible endpoint instead of AWS's (the region is
    /// `s3.region`, `--region`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kinesis_endpoint_url: Option<String>,
    /// `--sink kinesis`: wrap each record as `{"rewind":{lineage},"event":EVENT}`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wrap_lineage: bool,
}

/// A job's claim on the fleet's worker slots when several jobs wait (docs/scheduling.md).
/// Workers share slots between tenants (orgs) in proportion to the weight of each tenant's
/// most urgent running job, and between one tenant's jobs in proportion to their own weights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Priority {
    /// Someone is waiting for it: 8 shares.
    Interactive,
    /// 4 shares.
    #[default]
    Normal,
    /// A long backfill that may take whatever is left: 1 share.
    Backfill,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::Interactive, Priority::Normal, Priority::Backfill];

    pub fn parse(s: &str) -> Result<Priority, RequestError> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str() == s.trim())
            .ok_or_else(|| {
                RequestError::new(
                    "--priority",
                    format!("is {s:?}; expected interactive, normal or backfill"),
                )
            })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Interactive => "interactive",
            Priority::Normal => "normal",
            Priority::Backfill => "backfill",
        }
    }

    /// Its shares of the slots against other jobs.
    pub fn weight(self) -> u32 {
        match self {
            Priority::Interactive => 8,
            Priority::Normal => 4,
            Priority::Backfill => 1,
        }
    }
}

/// Where a distributed ingest's commit publishes and moves: the trusted zone, the landing
/// zone's root, the pending and processed prefixes in it, and the dedup key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestTarget {
    pub trusted: String,
    pub landing: String,
    pub pending: String,
    pub processed: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup: Option<String>,
}

impl IngestTarget {
    /// Checked against the request it belongs to: an ingest, staged below the trusted zone,
    /// reading the pending prefix of the landing zone, moving to another prefix of it.
    fn checked(&self, r: &JobRequest, org: &OrgId) -> Result<IngestTarget, RequestError> {
        let bad = |m: String| RequestError::new("--source", m);
        if !r.ingest {
            return Err(bad("an ingest target without an ingest".into()));
        }
        let trusted = Location::parse("--dest", &self.trusted, org)?;
        let landing = Location::parse("--source", &self.landing, org)?;
        let staging = trusted.join("_rewind/ingest/staging");
        if Location::parse("--dest", &r.dest, org)? != staging {
            return Err(RequestError::new(
                "--dest",
                format!("an ingest stages below {trusted}/_rewind/ingest/staging"),
            ));
        }
        let rel = |p: &str, what: &str| -> Result<(), RequestError> {
            if p.is_empty()
                || !p.ends_with('/')
                || p.split('/').any(|s| s == ".." || s == ".")
                || p.starts_with('/')
            {
                return Err(bad(format!(
                    "{what} {p:?} is not a prefix of the landing zone"
                )));
            }
            Ok(())
        };
        rel(&self.pending, "pending")?;
        rel(&self.processed, "processed")?;
        if self.pending.starts_with(&self.processed) || self.processed.starts_with(&self.pending) {
            return Err(RequestError::new(
                "--processed",
                "must not hold or be inside the pending prefix",
            ));
        }
        if Location::parse("--source", &r.source, org)? != landing.join(&self.pending) {
            return Err(bad(format!(
                "the source must be the pending prefix {}",
                landing.join(&self.pending)
            )));
        }
        if !matches!(
            self.dedup.as_deref(),
            None | Some("event_id") | Some("event_id,timestamp")
        ) {
            return Err(RequestError::new(
                "--dedup",
                "event_id or event_id,timestamp",
            ));
        }
        Ok(self.clone())
    }
}

/// A keyed repair as requested (`rewind repair --coordinator`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairRequest {
    pub key: String,
    #[serde(default)]
    pub delete: Vec<String>,
    /// Replacement rows, JSON lines.
    #[serde(default)]
    pub rows: Option<String>,
}

impl RepairRequest {
    fn spec(&self) -> Result<crate::job::RepairSpec, RequestError> {
        let key = self.key.trim();
        if key.is_empty() {
            return Err(RequestError::new("--key", "is required"));
        }
        let rows = self
            .rows
            .as_deref()
            .map_or(0, |r| r.lines().filter(|l| !l.trim().is_empty()).count());
        if self.delete.is_empty() && rows == 0 {
            return Err(RequestError::new(
                "--delete",
                "nothing to do: give --delete KEYS and/or --update ROWS",
            ));
        }
        Ok(crate::job::RepairSpec {
            key: key.to_string(),
            delete_keys: self.delete.len() as u64,
            update_rows: rows as u64,
        })
    }

    pub fn input(&self) -> crate::job::RepairInput {
        crate::job::RepairInput {
            delete: self.delete.clone(),
            rows: self.rows.clone(),
        }
    }
}

/// An optional flag's value, trimmed; none when missing or blank.
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

fn default_dedup_window() -> u32 {
    DEFAULT_DEDUP_WINDOW_HOURS
}

impl Default for JobRequest {
    fn default() -> Self {
        JobRequest {
            source: String::new(),
            org: String::new(),
            start: String::new(),
            end: String::new(),
            dest: String::new(),
            layout: DEFAULT_LAYOUT.to_string(),
            arrival_filter: false,
            failed_output: None,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            max_range_hours: DEFAULT_MAX_HOURS,
            s3: S3Options::default(),
            unrecoverable_output: None,
            event_types: Vec::new(),
            domains: Vec::new(),
            filter: None,
            flows: None,
            dedup: None,
            dedup_window_hours: DEFAULT_DEDUP_WINDOW_HOURS,
            sink: None,
            brokers: None,
            topic: None,
            key: None,
            compression: None,
            kafka_options: Vec::new(),
            kafka_secrets: Vec::new(),
            delivery: None,
            checkpoint_events: None,
            max_events_per_sec: None,
            max_bytes_per_sec: None,
            ordered: false,
            object: None,
            table_format: None,
            partition_by: None,
            ingest: false,
            ingest_to: None,
            envelope: None,
            preserve_partition: false,
            lineage_headers: false,
            repair: None,
            guard: None,
            priority: None,
            kinesis_stream: None,
            kinesis_endpoint_url: None,
            wrap_lineage: false,
        }
    }
}

impl JobRequest {
    /// The job's priority (an unparsable one was refused at submission).
    pub fn priority(&self) -> Priority {
        self.priority
            .as_deref()
            .and_then(|p| Priority::parse(p).ok())
            .unwrap_or_default()
    }

    /// Checks everything that does not touch storage and returns the spec for `job`.
    pub fn validate(&self, job: JobId) -> Result<JobSpec, RequestError> {
        if self.source.trim().is_empty() {
            return Err(RequestError::new("--source", "is required"));
        }
        if self.dest.trim().is_empty() {
            return Err(RequestError::new("--dest", "is required"));
        }
        let org = OrgId::parse(&self.org)?;
        if let Some(p) = &self.priority {
            Priority::parse(p)?;
        }
        let places = self.locations(&org)?;
        self.s3.validate()?;
        let range = HourRange::parse(&self.start, &self.end, self.max_range_hours)?;
        let layout = Layout::parse(&self.layout)?;
        // An undated layout's objects cannot be picked by a range: only archived Kafka records,
        // whose timestamps say which of them the range holds.
        if layout.is_undated() {
            let timed = self
                .envelope
                .as_deref()
                .filter(|e| !e.trim().is_empty())
                .and_then(|e| crate::envelope::Envelope::parse(e).ok())
                .is_some_and(|e| e.has_timestamp());
            if !timed || self.ingest {
                return Err(RequestError::new(
                    "--layout",
                    format!(
                        "{:?} has no {{YYYY}}, {{MM}} and {{DD}}: a range cannot pick its objects; \
                         that works only for archived Kafka records with a timestamp \
                         (--envelope … timestamp=…), which are then picked one by one",
                        layout.template()
                    ),
                ));
            }
        }
        // An archive by day cannot be cut at hours by its layout: only whole days, unless the
        // arrival filter keeps the hours asked.
        if layout.is_daily()
            && !self.arrival_filter
            && (range.first.hour() != 0 || range.last.hour() != 23)
        {
            return Err(RequestError::new(
                "--start",
                format!(
                    "{} to {}: --layout {} groups objects by day, so a shard reads whole days; \
                     give --start and --end as days, or add --arrival-filter to keep only these \
                     hours",
                    self.start,
                    self.end,
                    layout.template()
                ),
            ));
        }
        if self.max_event_bytes < 64 {
            return Err(RequestError::new(
                "--max-event-bytes",
                "must be at least 64",
            ));
        }
        if self.max_event_bytes > MAX_EVENT_BYTES_CEILING {
            return Err(RequestError::new(
                "--max-event-bytes",
                format!("must be at most {MAX_EVENT_BYTES_CEILING} (1 GiB)"),
            ));
        }
        if self.max_attempts == 0 {
            return Err(RequestError::new("--max-attempts", "must be at least 1"));
        }
        let treatment = self.treatment()?;
        let sink = self.sink()?;
        let object = match self.object.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(key) => {
                crate::storage::check_key(key)
                    .map_err(|e| RequestError::new("--object", e.to_string()))?;
                Some(key.to_string())
            }
        };
        let table_format = match self.table_format.as_deref().map(str::trim) {
            None | Some("") => crate::table::TableFormat::Parquet,
            Some(f) => crate::table::TableFormat::parse("--table-format", f)?,
        };
        if !table_format.is_parquet() && !matches!(sink, SinkSpec::Parquet) {
            return Err(RequestError::new(
                "--table-format",
                "applies to Parquet output only (--sink parquet)",
            ));
        }
        let partition_by = match self.partition_by.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(t) => {
                let t = crate::partition::PartitionTemplate::parse(t)?;
                if !matches!(sink, SinkSpec::Parquet) {
                    return Err(RequestError::new(
                        "--partition-by",
                        "applies to Parquet output only (--sink parquet)",
                    ));
                }
                if !table_format.is_parquet() {
                    return Err(RequestError::new(
                        "--partition-by",
                        "a Delta table is partitioned by date: leave out --partition-by or \
                         --table-format delta",
                    ));
                }
                Some(t.as_str().to_string())
            }
        };
        let ingest_to = match &self.ingest_to {
            None => None,
            Some(t) => Some(t.checked(self, &org)?),
        };
        Ok(JobSpec {
            job,
            org,
            range,
            layout,
            arrival_filter: self.arrival_filter,
            max_event_bytes: self.max_event_bytes,
            max_attempts: self.max_attempts,
            treatment,
            sink,
            object,
            places,
            table_format,
            partition_by,
            ingest: self.ingest,
            ingest_to,
            repair: match &self.repair {
                None => None,
                Some(r) => Some(r.spec()?),
            },
            guard: match &self.guard {
                None => None,
                Some(g) => Some(self.guard_spec(g)?),
            },
            tenant_max_shards: None,
            tenant_budget: None,
        })
    }

    /// A guarded replay's request, checked: a replay of whole days into Kafka.
    fn guard_spec(
        &self,
        g: &crate::guard::GuardRequest,
    ) -> Result<crate::guard::GuardRequest, RequestError> {
        if self.sink.as_deref() != Some("kafka") {
            return Err(RequestError::new(
                "--guard",
                "guards a Kafka replay (--sink kafka)",
            ));
        }
        if self.repair.is_some() || self.object.is_some() {
            return Err(RequestError::new(
                "--guard",
                "replays whole days: leave out --object and repairs",
            ));
        }
        if self.start.contains('T') || self.end.contains('T') {
            return Err(RequestError::new(
                "--start",
                "a guarded replay runs whole days (YYYY-MM-DD)",
            ));
        }
        g.check()?;
        Ok(g.clone())
    }

    /// The sink, checked: a Kafka sink needs brokers and a topic; keys, compression, options
    /// and delivery are validated here so a bad value is refused before anything runs.
    fn sink(&self) -> Result<SinkSpec, RequestError> {
        // Flags of the stream sinks, and which sinks each applies to.
        let stream_flags = [
            ("--brokers", given(&self.brokers).is_some(), "kafka"),
            ("--topic", given(&self.topic).is_some(), "kafka, pubsub"),
            ("--compression", given(&self.compression).is_some(), "kafka"),
            ("--kafka-option", !self.kafka_options.is_empty(), "kafka"),
            ("--kafka-secret", !self.kafka_secrets.is_empty(), "kafka"),
            ("--envelope", given(&self.envelope).is_some(), "kafka"),
            ("--preserve-partition", self.preserve_partition, "kafka"),
            ("--lineage-headers", self.lineage_headers, "kafka"),
            (
                "--kinesis-stream",
                given(&self.kinesis_stream).is_some(),
                "kinesis",
            ),
            (
                "--kinesis-endpoint-url",
                given(&self.kinesis_endpoint_url).is_some(),
                "kinesis",
            ),
            ("--wrap-lineage", self.wrap_lineage, "kinesis"),
            (
                "--key",
                given(&self.key).is_some(),
                "kafka, kinesis, pubsub",
            ),
            (
                "--delivery",
                given(&self.delivery).is_some(),
                "kafka, kinesis, pubsub",
            ),
            (
                "--checkpoint-events",
                self.checkpoint_events.is_some(),
                "kafka, kinesis, pubsub",
            ),
            (
                "--max-events-per-sec",
                self.max_events_per_sec.is_some(),
                "kafka, kinesis, pubsub",
            ),
            (
                "--max-bytes-per-sec",
                self.max_bytes_per_sec.is_some(),
                "kafka, kinesis, pubsub",
            ),
            ("--ordered", self.ordered, "kafka, kinesis, pubsub"),
        ];
        let sink = given(&self.sink).unwrap_or("parquet");
        if let Some((flag, _, sinks)) = stream_flags
            .iter()
            .find(|(_, set, sinks)| *set && !sinks.split(", ").any(|s| s == sink))
        {
            let sinks = sinks.replace(", ", " or --sink ");
            return Err(RequestError::new(
                flag,
                format!("applies to --sink {sinks} only"),
            ));
        }
        let checkpoint_events = self
            .checkpoint_events
            .unwrap_or(crate::job::DEFAULT_CHECKPOINT_EVENTS);
        if !(10..=10_000_000).contains(&checkpoint_events) {
            return Err(RequestError::new(
                "--checkpoint-events",
                "must be between 10 and 10000000",
            ));
        }
        for (flag, v) in [
            ("--max-events-per-sec", self.max_events_per_sec),
            ("--max-bytes-per-sec", self.max_bytes_per_sec),
        ] {
            if v == Some(0) {
                return Err(RequestError::new(flag, "must be at least 1"));
            }
        }
        match sink {
            "parquet" => Ok(SinkSpec::Parquet),
            "kinesis" => self.kinesis_sink(checkpoint_events),
            "pubsub" => self.pubsub_sink(checkpoint_events),
            "kafka" => {
                let brokers = given(&self.brokers).ok_or_else(|| {
                    RequestError::new("--brokers", "is required with --sink kafka")
                })?;
                if brokers.split(',').any(|b| {
                    let b = b.trim();
                    b.is_empty() || b.contains("://") || !b.contains(':')
                }) {
                    return Err(RequestError::new(
                        "--brokers",
                        format!("{brokers:?}: give host:port[,host:port...]"),
                    ));
                }
                let topic = given(&self.topic)
                    .ok_or_else(|| RequestError::new("--topic", "is required with --sink kafka"))?;
                if topic.len() > 249
                    || !topic
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                    || topic == "."
                    || topic == ".."
                {
                    return Err(RequestError::new(
                        "--topic",
                        format!("{topic:?} is not a valid Kafka topic name"),
                    ));
                }
                let key = KafkaKey::parse(given(&self.key).unwrap_or("event_id"))
                    .map_err(|e| RequestError::new("--key", e))?;
                let compression = given(&self.compression).unwrap_or("none");
                if !["none", "gzip", "snappy", "lz4", "zstd"].contains(&compression) {
                    return Err(RequestError::new(
                        "--compression",
                        format!("{compression:?}: one of none, gzip, snappy, lz4, zstd"),
                    ));
                }
                let mut options = Vec::new();
                for o in &self.kafka_options {
                    let Some((k, v)) = o.split_once('=').filter(|(k, _)| !k.trim().is_empty())
                    else {
                        return Err(RequestError::new(
                            "--kafka-option",
                            format!("{o:?}: give key=value"),
                        ));
                    };
                    let k = k.trim();
                    if crate::secret::kafka_secret_key(k) {
                        return Err(RequestError::new(
                            "--kafka-option",
                            format!(
                                "{k} carries a secret: pass it by reference, --kafka-secret \
                                 {k}=env:NAME or {k}=file:PATH (a value given inline would be \
                                 stored with the job and shown by its API)"
                            ),
                        ));
                    }
                    options.push((k.to_string(), v.to_string()));
                }
                let mut secrets = Vec::new();
                for o in &self.kafka_secrets {
                    let Some((k, r)) = o.split_once('=').filter(|(k, _)| !k.trim().is_empty())
                    else {
                        return Err(RequestError::new(
                            "--kafka-secret",
                            format!("{o:?}: give KEY=env:NAME or KEY=file:PATH"),
                        ));
                    };
                    let r = crate::secret::SecretRef::parse(r.trim())
                        .map_err(|e| RequestError::new("--kafka-secret", format!("{k}: {e}")))?;
                    secrets.push((k.trim().to_string(), r));
                }
                let delivery = match given(&self.delivery).unwrap_or("at-least-once") {
                    "at-least-once" => Delivery::AtLeastOnce,
                    "exactly-once" => Delivery::ExactlyOnce,
                    other => {
                        return Err(RequestError::new(
                            "--delivery",
                            format!("{other:?}: one of at-least-once, exactly-once"),
                        ));
                    }
                };
                let envelope = match given(&self.envelope) {
                    None => None,
                    Some(e) => {
                        let parsed = crate::envelope::Envelope::parse(e)?;
                        if self.preserve_partition && !parsed.has_partition() {
                            return Err(RequestError::new(
                                "--preserve-partition",
                                format!("--envelope {e} says nothing of the partition"),
                            ));
                        }
                        Some(e.to_string())
                    }
                };
                for (flag, set) in [
                    ("--preserve-partition", self.preserve_partition),
                    ("--lineage-headers", self.lineage_headers),
                ] {
                    if set && envelope.is_none() {
                        return Err(RequestError::new(flag, "applies with --envelope only"));
                    }
                }
                if envelope.is_some() && given(&self.key).is_some() {
                    return Err(RequestError::new(
                        "--key",
                        "with --envelope each record keeps its archived key",
                    ));
                }
                Ok(SinkSpec::Kafka(Box::new(KafkaSpec {
                    envelope,
                    preserve_partition: self.preserve_partition,
                    lineage_headers: self.lineage_headers,
                    brokers: brokers.to_string(),
                    topic: topic.to_string(),
                    key,
                    compression: compression.to_string(),
                    options,
                    secrets,
                    control_from: Vec::new(),
                    delivery,
                    checkpoint_events,
                    max_events_per_sec: self.max_events_per_sec,
                    max_bytes_per_sec: self.max_bytes_per_sec,
                    ordered: self.ordered,
                })))
            }
            other => Err(RequestError::new(
                "--sink",
                format!("{other:?}: one of parquet, kafka, kinesis, pubsub"),
            )),
        }
    }

    /// `--delivery` of a sink without transactions: at-least-once or nothing. `again` says
    /// what a retried shard may do twice ("put records").
    fn at_least_once_only(&self, service: &str, again: &str) -> Result<(), RequestError> {
        match given(&self.delivery).unwrap_or("at-least-once") {
            "at-least-once" => Ok(()),
            "exactly-once" => Err(RequestError::new(
                "--delivery",
                format!(
                    "exactly-once needs transactions, which {service} does not have: a {service} \
                     replay is at-least-once (a retried shard may {again} again, at most about \
                     two --checkpoint-events windows)"
                ),
            )),
            other => Err(RequestError::new(
                "--delivery",
                format!("{other:?}: a {service} replay is at-least-once"),
            )),
        }
    }

    /// A Pub/Sub sink, checked (the shared stream flags are checked by [`Self::sink`]).
    fn pubsub_sink(&self, checkpoint_events: u64) -> Result<SinkSpec, RequestError> {
        let topic = given(&self.topic).ok_or_else(|| {
            RequestError::new(
                "--topic",
                "is required with --sink pubsub (projects/PROJECT/topics/TOPIC)",
            )
        })?;
        crate::job::check_pubsub_topic(topic).map_err(|e| RequestError::new("--topic", e))?;
        self.at_least_once_only("Pub/Sub", "publish messages")?;
        if given(&self.key).is_some() && !self.ordered {
            return Err(RequestError::new(
                "--key",
                "with --sink pubsub it names the ordering key: give --ordered too",
            ));
        }
        let key = KafkaKey::parse(given(&self.key).unwrap_or("event_id"))
            .map_err(|e| RequestError::new("--key", e))?;
        Ok(SinkSpec::PubSub(Box::new(crate::job::PubSubSpec {
            topic: topic.to_string(),
            key,
            checkpoint_events,
            max_events_per_sec: self.max_events_per_sec,
            max_bytes_per_sec: self.max_bytes_per_sec,
            ordered: self.ordered,
        })))
    }

    /// A Kinesis sink, checked (the shared stream flags are checked by [`Self::sink`]).
    fn kinesis_sink(&self, checkpoint_events: u64) -> Result<SinkSpec, RequestError> {
        let stream = given(&self.kinesis_stream).ok_or_else(|| {
            RequestError::new("--kinesis-stream", "is required with --sink kinesis")
        })?;
        crate::job::check_kinesis_stream(stream)
            .map_err(|e| RequestError::new("--kinesis-stream", e))?;
        self.at_least_once_only("Kinesis", "put records")?;
        let endpoint_url = match given(&self.kinesis_endpoint_url) {
            None => None,
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => Some(u.to_string()),
            Some(u) => {
                return Err(RequestError::new(
                    "--kinesis-endpoint-url",
                    format!("{u:?}: give http://HOST:PORT or https://HOST"),
                ));
            }
        };
        let key = KafkaKey::parse(given(&self.key).unwrap_or("event_id"))
            .map_err(|e| RequestError::new("--key", e))?;
        Ok(SinkSpec::Kinesis(Box::new(crate::job::KinesisSpec {
            stream: stream.to_string(),
            region: given(&self.s3.region).map(str::to_string),
            endpoint_url,
            key,
            checkpoint_events,
            max_events_per_sec: self.max_events_per_sec,
            max_bytes_per_sec: self.max_bytes_per_sec,
            ordered: self.ordered,
            wrap_lineage: self.wrap_lineage,
        })))
    }

    /// Selection, flows and dedup, each checked the way the workers will use it.
    fn treatment(&self) -> Result<Treatment, RequestError> {
        let filter = self.filter.clone().filter(|f| !f.trim().is_empty());
        rewind_flows::Selection::parse(&self.event_types, &self.domains, filter.as_deref())
            .map_err(|e| RequestError::new(e.field, e.problem))?;
        let flows = self.flows.clone().filter(|f| !f.trim().is_empty());
        if let Some(text) = &flows {
            rewind_flows::FlowSet::parse(text)
                .map_err(|e| RequestError::new("--flows", e.to_string()))?;
        }
        let dedup = match self.dedup.as_deref().map(str::trim) {
            None | Some("") | Some("none") => None,
            Some(d) => Some(DedupKey::parse(d).ok_or_else(|| {
                RequestError::new(
                    "--dedup",
                    format!("{d:?}: one of event_id, event_id,timestamp"),
                )
            })?),
        };
        if self.dedup_window_hours > MAX_DEDUP_WINDOW_HOURS {
            return Err(RequestError::new(
                "--dedup-window-hours",
                format!("must be at most {MAX_DEDUP_WINDOW_HOURS}"),
            ));
        }
        Ok(Treatment {
            event_types: self.event_types.clone(),
            domains: self.domains.clone(),
            filter,
            flows,
            dedup,
            dedup_window_hours: self.dedup_window_hours,
        })
    }

    /// The request as APIs show it: role external ids masked unless given by reference
    /// (`env:NAME`, `file:PATH`, which each process resolves); a literal one is stored with the
    /// job, since workers need it to assume the role, but never served.
    pub fn redacted(&self) -> JobRequest {
        let mask = |v: &Option<String>| {
            v.as_ref().map(|v| {
                if crate::secret::SecretRef::parse(v).is_ok() {
                    v.clone()
                } else {
                    crate::secret::MASK.to_string()
                }
            })
        };
        let mut r = self.clone();
        r.s3.source_external_id = mask(&r.s3.source_external_id);
        r.s3.dest_external_id = mask(&r.s3.dest_external_id);
        r
    }

    /// Source, destination and failed-record locations, placeholders filled.
    pub fn locations(&self, org: &OrgId) -> Result<JobLocations, RequestError> {
        let source = Location::parse("--source", &self.source, org)?;
        let dest = Location::parse("--dest", &self.dest, org)?;
        let mut places = JobLocations::new(source, dest);
        if let Some(f) = self.failed_output.as_ref().filter(|f| !f.trim().is_empty()) {
            places.failed = Location::parse("--failed-output", f, org)?;
        }
        if let Some(f) = self
            .unrecoverable_output
            .as_ref()
            .filter(|f| !f.trim().is_empty())
        {
            places.unrecoverable = Location::parse("--unrecoverable-output", f, org)?;
        }
        Ok(places)
    }
}

/// The places of a job, resolved once when its request is validated (placeholders filled,
/// defaults applied): every later step reads them from the spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLocations {
    pub source: Location,
    pub dest: Location,
    /// Failed records: `--failed-output`, else `_failed` below the destination.
    pub failed: Location,
    /// Unrecoverable events: `--unrecoverable-output`, else `_unrecoverable` below it.
    pub unrecoverable: Location,
}

impl JobLocations {
    /// A source and a destination with the default places for failed and unrecoverable.
    pub fn new(source: Location, dest: Location) -> JobLocations {
        JobLocations {
            failed: dest.join("_failed"),
            unrecoverable: dest.join("_unrecoverable"),
            source,
            dest,
        }
    }

    /// Checks the local directories among the locations: the source exists, the destinations
    /// are not files. S3 locations are checked when the job opens them.
    pub fn check_local_paths(&self) -> Result<(), RequestError> {
        if let Location::Local(src) = &self.source
            && !src.is_dir()
        {
            return Err(RequestError::new(
                "--source",
                format!("{} is not a directory", src.display()),
            ));
        }
        for (field, loc) in [
            ("--dest", &self.dest),
            ("--failed-output", &self.failed),
            ("--unrecoverable-output", &self.unrecoverable),
        ] {
            if let Location::Local(path) = loc
                && path.exists()
                && !path.is_dir()
            {
                return Err(RequestError::new(
                    field,
                    format!("{} exists and is not a directory", path.display()),
                ));
            }
        }
        Ok(())
    }
}

/// What the distributed mode stores for a job: everything a worker needs to run any shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub spec: JobSpec,
    pub request: JobRequest,
    pub created_ms: i64,
    /// W3C `traceparent` of the job's span, when traces are exported: shard spans join it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_parent: Option<String>,
    /// The subject of the token that submitted it (a name, never the token), when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_by: Option<String>,
    /// A retry of another job's failed shards (`rewind retry --coordinator`): this job's shards
    /// run into that job's execution, and its commit completes that execution and records the
    /// retry as a change of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryOf>,
}

/// What a retry job retries: the job whose execution it completes, and its mark (change id,
/// the manifest it started from).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryOf {
    pub job: JobId,
    #[serde(flatten)]
    pub mark: crate::change::RetryMark,
}

impl JobRecord {
    /// The spec its shards run with: a retry's shards write into the execution it retries.
    pub fn run_spec(&self) -> JobSpec {
        let mut spec = self.spec.clone();
        if let Some(r) = &self.retry {
            spec.job = r.job.clone();
        }
        spec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> JobRequest {
        JobRequest {
            source: "/archive".into(),
            org: "TN-1".into(),
            start: "2024-04-01T00".into(),
            end: "2024-04-01T05".into(),
            dest: "/out".into(),
            ..JobRequest::default()
        }
    }

    #[test]
    fn kafka_secrets_are_taken_by_reference_only() {
        let mut r = ok();
        r.sink = Some("kafka".into());
        r.brokers = Some("b:9092".into());
        r.topic = Some("t".into());
        r.kafka_options = vec!["sasl.password=hunter2".into()];
        let e = r.validate(JobId::generate()).unwrap_err().to_string();
        assert!(e.contains("--kafka-secret"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        r.kafka_options = vec!["security.protocol=SASL_SSL".into()];
        r.kafka_secrets = vec!["sasl.password=hunter2".into()];
        let e = r.validate(JobId::generate()).unwrap_err().to_string();
        assert!(e.contains("not a reference"), "{e}");
        r.kafka_secrets = vec!["sasl.password=env:KAFKA_PW".into()];
        let spec = r.validate(JobId::generate()).unwrap();
        let stored = serde_json::to_string(&spec).unwrap();
        assert!(stored.contains("env:KAFKA_PW"), "{stored}");
        assert_eq!(
            serde_json::from_str::<JobSpec>(&stored).unwrap(),
            spec,
            "the reference round-trips"
        );
    }

    #[test]
    fn redacted_requests_mask_external_ids() {
        let mut r = ok();
        r.s3.source_external_id = Some("ext-7731".into());
        let shown = serde_json::to_string(&r.redacted()).unwrap();
        assert!(!shown.contains("ext-7731"), "{shown}");
        assert_eq!(r.redacted().s3.dest_external_id, None);
        r.s3.dest_external_id = Some("env:DEST_EXTERNAL_ID".into());
        assert_eq!(
            r.redacted().s3.dest_external_id.as_deref(),
            Some("env:DEST_EXTERNAL_ID"),
            "a reference is no secret"
        );
    }

    #[test]
    fn validate_names_the_field() {
        assert!(ok().validate(JobId::generate()).is_ok());
        type Edit = Box<dyn Fn(&mut JobRequest)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("--source", Box::new(|r| r.source.clear())),
            ("--dest", Box::new(|r| r.dest = " ".into())),
            ("--org", Box::new(|r| r.org = "../x".into())),
            ("--end", Box::new(|r| r.end = "2024-03-01".into())),
            ("--layout", Box::new(|r| r.layout = "{YYYY}/../{MM}".into())),
            ("--max-event-bytes", Box::new(|r| r.max_event_bytes = 1)),
            ("--max-attempts", Box::new(|r| r.max_attempts = 0)),
            (
                "--source",
                Box::new(|r| r.source = "s3://Bad_Bucket".into()),
            ),
            (
                "--failed-output",
                Box::new(|r| r.failed_output = Some("s3://x".into())),
            ),
            ("--s3-part-size-mib", Box::new(|r| r.s3.part_size_mib = 1)),
            (
                "--flows",
                Box::new(|r| {
                    r.flows = Some(r#"{"flows":[{"name":"x","steps":[{"op":"Cast","path":"$.a","from":"Numeric","to":"Date"}]}]}"#.into())
                }),
            ),
            ("--filter", Box::new(|r| r.filter = Some("@.a ==".into()))),
            (
                "--event-type",
                Box::new(|r| r.event_types = vec![String::new()]),
            ),
            ("--dedup", Box::new(|r| r.dedup = Some("cid".into()))),
            (
                "--dedup-window-hours",
                Box::new(|r| r.dedup_window_hours = 25),
            ),
            (
                "--unrecoverable-output",
                Box::new(|r| r.unrecoverable_output = Some("s3://a/../b".into())),
            ),
        ];
        for (field, edit) in cases {
            let mut r = ok();
            edit(&mut r);
            let e = r.validate(JobId::generate()).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn failed_output_defaults_below_dest() {
        let org = OrgId::parse("TN-1").unwrap();
        let l = ok().locations(&org).unwrap();
        assert_eq!(l.failed, Location::Local("/out/_failed".into()));
        let r = JobRequest {
            failed_output: Some("/f".into()),
            ..ok()
        };
        assert_eq!(
            r.locations(&org).unwrap().failed,
            Location::Local("/f".into())
        );
        let r = JobRequest {
            dest: "s3://out-bucket/x".into(),
            ..ok()
        };
        assert_eq!(
            r.locations(&org).unwrap().failed.to_string(),
            "s3://out-bucket/x/_failed"
        );
    }
}
