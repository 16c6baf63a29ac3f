//! The Kafka sink: each recovered event is produced as one record whose value is the event's
//! bytes (original, or repaired by a flow), keyed as the job says, with lineage headers. A shard
//! commits only after every record it produced is acknowledged (at-least-once).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{
    BorrowedMessage, DeliveryResult, Header, Headers, Message, OwnedHeaders, Timestamp,
};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rewind_common::ShardId;
use rewind_common::job::{Delivery, KafkaKey, KafkaSpec};
use rewind_common::output::OffsetRange;
use rewind_flows::Path;

use crate::record::Row;

/// Headers every record carries, so a consumer can trace (and drop duplicates of) a replay.
pub const HEADER_JOB: &str = "rewind-job";
pub const HEADER_SOURCE_KEY: &str = "rewind-source-key";
pub const HEADER_OFFSET: &str = "rewind-offset";
pub const HEADER_EVENT_ID: &str = "rewind-event-id";
/// The shard attempt that produced the record (1 for the first): a checker can tell a retry's
/// copies from the first attempt's.
pub const HEADER_ATTEMPT: &str = "rewind-attempt";

/// The delivery opaque of a transaction's marker record.
const MARKER: usize = usize::MAX;

/// How long `finish` waits for the last acknowledgements beyond the delivery timeout.
const FLUSH_GRACE: Duration = Duration::from_secs(10);
/// The delivery timeout unless the job sets `message.timeout.ms` / `delivery.timeout.ms`.
const DEFAULT_DELIVERY_TIMEOUT_MS: u64 = 120_000;

/// A record the broker refused for itself (too large, invalid): its event goes to the failed
/// output with the reason; the shard goes on.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub source_key: String,
    pub offset: u64,
    pub raw: Vec<u8>,
    pub reason: String,
}

/// Why producing cannot go on, and whether another attempt may succeed.
#[derive(Debug, Clone)]
pub struct KafkaFailure {
    pub message: String,
    pub retryable: bool,
}

/// Where records in flight were read, by sequence number: (source key, byte offset).
type Origins = std::collections::HashMap<usize, (std::sync::Arc<str>, u64)>;

#[derive(Default)]
struct Ctx {
    acknowledged: AtomicU64,
    rejected: Mutex<Vec<Rejected>>,
    failure: Mutex<Option<KafkaFailure>>,
    /// Whether `failure` is set: read before every record without taking the lock.
    failing: std::sync::atomic::AtomicBool,
    /// Records finished (acknowledged or refused), by sequence number.
    done: Mutex<Done>,
    /// How many records `done` holds: the sender's in-flight count without taking the lock.
    settled: AtomicU64,
    /// The bytes (key and value) of those records.
    settled_bytes: AtomicU64,
    /// Where each record in flight was read (source key, offset), kept only when the records
    /// carry no lineage headers (a faithful replay of archived records), so a refused record is
    /// still reported with its place in the archive.
    origins: Option<Mutex<Origins>>,
    /// Acknowledgement latencies, when someone collects them.
    latency: Option<Histogram>,
    /// The offsets the brokers gave the acknowledged records, by partition.
    offsets: Mutex<std::collections::BTreeMap<i32, OffsetRange>>,
}

/// Which records are finished: all below `below`, and those marked in `bits`.
///
/// Acknowledgements arrive out of order (one partition's batch before another's), so the
/// records above `below` are a bitmap (bit `i` of the words is record `base + i`): marking is
/// constant time and allocates only when the window grows, where a set of numbers paid a tree
/// insert and remove per record on the delivery thread.
#[derive(Default)]
pub(crate) struct Done {
    pub(crate) below: u64,
    /// The record of the first word's lowest bit: a multiple of 64, at most `below`.
    base: u64,
    bits: std::collections::VecDeque<u64>,
    pub(crate) count: u64,
}

impl Done {
    pub(crate) fn mark(&mut self, seq: u64) {
        self.count += 1;
        let Some(d) = seq.checked_sub(self.base) else {
            return;
        };
        let word = (d / 64) as usize;
        if self.bits.len() <= word {
            self.bits.resize(word + 1, 0);
        }
        self.bits[word] |= 1 << (d % 64);
        while self.bits.front() == Some(&u64::MAX) {
            self.bits.pop_front();
            self.base += 64;
        }
        // Every bit below `below` is set, so the first word's run of ones ends at the first
        // unfinished record.
        self.below = self.base
            + self
                .bits
                .front()
                .map_or(0, |w| u64::from(w.trailing_ones()));
    }
}

impl ClientContext for Ctx {}

/// What an error means for the replay.
enum Class {
    /// This record only (too large, invalid): failed output.
    Record,
    /// Nothing will get through (topic gone, not authorised): the shard fails for good.
    Fatal,
    /// The broker may come back: the shard fails and is retried.
    Transient,
}

fn classify(e: &KafkaError) -> Class {
    use RDKafkaErrorCode as C;
    match e.rdkafka_error_code() {
        Some(
            C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::InvalidMessage
            | C::InvalidRecord
            | C::InvalidArgument,
        ) => Class::Record,
        Some(
            C::UnknownTopicOrPartition
            | C::UnknownTopic
            | C::InvalidTopic
            | C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::SaslAuthenticationFailed
            | C::Authentication,
        ) => Class::Fatal,
        _ => Class::Transient,
    }
}

/// What librdkafka holds for a record until it is acknowledged, about: its key and value, each
/// header's name and value, and its own structures. The sender and the delivery callback both
/// count from the record itself, so the two always agree.
fn record_weight(key: Option<&[u8]>, value: Option<&[u8]>, headers: Option<&impl Headers>) -> u64 {
    let headers: usize = headers.map_or(0, |h| {
        (0..h.count())
            .map(|i| {
                let h = h.get(i);
                h.key.len() + h.value.map_or(0, <[u8]>::len) + HEADER_OVERHEAD
            })
            .sum()
    });
    (key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len) + headers + RECORD_OVERHEAD) as u64
}

/// librdkafka's own bytes per record (the message structure, its allocation, the header list)
/// and per header: counted so that a shard's records in flight weigh what they cost in memory.
/// Hard-profile events of ~780 bytes with the five lineage headers weigh ~1.5 KB, twice their
/// key and value.
const RECORD_OVERHEAD: usize = 256;
const HEADER_OVERHEAD: usize = 64;

/// At most this much weight of records in flight per shard (besides `--checkpoint-events`
/// records): the worker's memory stays bounded whatever the events weigh (librdkafka holds each
/// record until it is acknowledged).
const MAX_IN_FLIGHT_BYTES: u64 = 32 << 20;

fn header<'a>(msg: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a [u8]> {
    let headers = msg.headers()?;
    (0..headers.count()).find_map(|i| {
        let h = headers.get(i);
        (h.key == name).then_some(h.value).flatten()
    })
}

impl Ctx {
    fn mark(&self, seq: usize, msg: &BorrowedMessage<'_>) {
        self.done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .mark(seq as u64);
        self.settled_bytes.fetch_add(
            record_weight(msg.key(), msg.payload(), msg.headers()),
            Ordering::Relaxed,
        );
        self.settled.fetch_add(1, Ordering::Release);
    }

    /// Records why producing cannot go on (the first reason stays).
    fn fail(&self, f: KafkaFailure) {
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        failure.get_or_insert(f);
        self.failing.store(true, Ordering::Release);
    }

    /// Takes what the sender noted of where a record was read (faithful replays only).
    fn forget(&self, seq: usize) -> Option<(std::sync::Arc<str>, u64)> {
        let origins = self.origins.as_ref()?;
        origins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&seq)
    }

    /// Where a record was read: what the sender noted for it, or its lineage headers.
    fn origin<'m>(&self, seq: usize, header: impl Fn(&str) -> Option<&'m [u8]>) -> (String, u64) {
        if let Some((key, offset)) = self.forget(seq) {
            return (key.to_string(), offset);
        }
        let text = |name| {
            header(name)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        (
            text(HEADER_SOURCE_KEY),
            text(HEADER_OFFSET).parse().unwrap_or(0),
        )
    }
}

impl ProducerContext for Ctx {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        if seq == MARKER {
            // The transaction's marker: not an event; its failure fails the commit.
            if let Err((e, _)) = result {
                self.fail(KafkaFailure {
                    message: format!("producing the record in the control topic: {e}"),
                    retryable: true,
                });
            }
            return;
        }
        if result.is_ok() {
            self.forget(seq);
        }
        match result {
            Ok(msg) => {
                self.acknowledged.fetch_add(1, Ordering::Relaxed);
                self.mark(seq, msg);
                let at = OffsetRange {
                    first: msg.offset(),
                    last: msg.offset(),
                };
                self.offsets
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(msg.partition())
                    .and_modify(|r| *r = r.span(at))
                    .or_insert(at);
                // librdkafka stamps a record with the wall clock when it is produced (unless
                // the topic uses the brokers' append time, which says nothing of the wait).
                if let (Some(h), Timestamp::CreateTime(at)) = (&self.latency, msg.timestamp()) {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as i64);
                    h.observe(now.saturating_sub(at).max(0) as f64 / 1000.0);
                }
            }
            Err((e, msg)) => match classify(e) {
                Class::Record => {
                    let (source_key, offset) = self.origin(seq, |name| header(msg, name));
                    let rejected = Rejected {
                        source_key,
                        offset,
                        raw: msg.payload().unwrap_or_default().to_vec(),
                        reason: format!("the broker refused the record: {e}"),
                    };
                    self.rejected
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(rejected);
                    self.mark(seq, msg);
                }
                class => self.fail(KafkaFailure {
                    message: format!("producing to Kafka: {e}"),
                    retryable: matches!(class, Class::Transient),
                }),
            },
        }
    }
}

/// The producer settings of a job (the job's `--kafka-option`s last, so they win, then its
/// secrets, resolved in this process).
pub fn client_config(spec: &KafkaSpec) -> Result<ClientConfig, String> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &spec.brokers)
        .set("compression.type", &spec.compression)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set(
            "message.timeout.ms",
            DEFAULT_DELIVERY_TIMEOUT_MS.to_string(),
        );
    if spec.ordered {
        c.set("max.in.flight.requests.per.connection", "1");
    }
    if spec.delivery == Delivery::ExactlyOnce {
        // A shard's transaction must outlive its slowest delivery.
        c.set(
            "transaction.timeout.ms",
            (TRANSACTION_TIMEOUT_S * 1000).to_string(),
        );
    }
    for (k, v) in &spec.options {
        c.set(k, v);
    }
    // A delivery may not outlive its transaction: a transaction timeout set below our delivery
    // timeout brings ours down with it (a delivery timeout the job sets itself stays).
    let own_delivery_timeout = !spec
        .options
        .iter()
        .any(|(k, _)| k == "message.timeout.ms" || k == "delivery.timeout.ms");
    if spec.delivery == Delivery::ExactlyOnce && own_delivery_timeout {
        let t = transaction_timeout_ms(spec).min(DEFAULT_DELIVERY_TIMEOUT_MS);
        c.set("message.timeout.ms", t.to_string());
    }
    apply_secrets(&mut c, spec)?;
    Ok(c)
}

/// Resolves the job's secret properties in this process and sets them.
fn apply_secrets(c: &mut ClientConfig, spec: &KafkaSpec) -> Result<(), String> {
    for (k, r) in &spec.secrets {
        let value = r
            .resolve()
            .map_err(|e| format!("--kafka-secret {k}={r}: {e}"))?;
        c.set(k, value);
    }
    Ok(())
}

/// Whether librdkafka takes the job's settings (ours with `--kafka-option` over them): a property
/// it does not know or a value it refuses is a bad request, named before anything runs.
pub fn check_settings(spec: &KafkaSpec) -> Result<(), String> {
    let mut config = client_config(spec)?;
    if spec.delivery == Delivery::ExactlyOnce {
        config.set("transactional.id", "rewind-settings-check");
    }
    config
        .create::<rdkafka::producer::BaseProducer>()
        .map(drop)
        .map_err(|e| format!("invalid --kafka-option: librdkafka refuses the settings: {e}"))
}

/// Checks before a job starts that the brokers answer and the topic exists, so a wrong broker
/// list or topic is one clear error instead of every shard failing.
pub fn preflight(spec: &KafkaSpec, timeout: Duration) -> Result<Preflight, String> {
    let producer: ThreadedProducer<Ctx> = client_config(spec)?
        .create_with_context(Ctx::default())
        .map_err(|e| format!("Kafka settings: {e}"))?;
    // All topics: asking for one by name makes brokers with auto-creation create it.
    let md = producer
        .client()
        .fetch_metadata(None, timeout)
        .map_err(|e| format!("Kafka brokers {} do not answer: {e}", spec.brokers))?;
    let topic = md
        .topics()
        .iter()
        .find(|t| t.name() == spec.topic)
        .ok_or_else(|| format!("topic {} is not on brokers {}", spec.topic, spec.brokers))?;
    if let Some(e) = topic.error() {
        return Err(format!(
            "topic {} on brokers {}: {}",
            spec.topic,
            spec.brokers,
            RDKafkaErrorCode::from(e)
        ));
    }
    if topic.partitions().is_empty() {
        return Err(format!("topic {} has no partitions", spec.topic));
    }
    if spec.delivery == Delivery::ExactlyOnce {
        let control = spec.control_topic();
        if !md.topics().iter().any(|t| t.name() == control) {
            return Err(format!(
                "--delivery exactly-once records committed shards in topic {control}: create it \
                 (1 partition is enough) on brokers {}",
                spec.brokers
            ));
        }
        // The brokers must run transactions: one, now, writing a probe record to the control
        // topic (an empty transaction would not reach the brokers' EndTxn at all, so a broker
        // with half the transaction API would pass and fail every shard's commit later).
        // One id per check: two submits checked at once by one coordinator must not fence
        // each other.
        static CHECKS: AtomicU64 = AtomicU64::new(0);
        let probe: ThreadedProducer<Ctx> = client_config(spec)?
            .set(
                "transactional.id",
                format!(
                    "rewind-preflight-{}-{}",
                    std::process::id(),
                    CHECKS.fetch_add(1, Ordering::Relaxed)
                ),
            )
            .create_with_context(Ctx::default())
            .map_err(|e| format!("Kafka settings: {e}"))?;
        let refused = |e: &dyn std::fmt::Display| {
            format!(
                "--delivery exactly-once needs Kafka transactions, and brokers {} refused one: {e}",
                spec.brokers
            )
        };
        probe
            .init_transactions(timeout)
            .and_then(|()| probe.begin_transaction())
            .map_err(|e| refused(&e))?;
        let body = serde_json::json!({"preflight": true}).to_string();
        let record = BaseRecord::with_opaque_to(&control, MARKER)
            .key(PREFLIGHT_KEY)
            .payload(&body);
        probe.send(record).map_err(|(e, _)| refused(&e))?;
        probe.commit_transaction(timeout).map_err(|e| refused(&e))?;
        if let Some(f) = probe.context().failure.lock().ok().and_then(|f| f.clone()) {
            return Err(refused(&f.message));
        }
        // Where this job's markers can start: every shard transaction begins after this, so a
        // marker lookup reads from here, not the whole history of the control topic.
        let partitions = md
            .topics()
            .iter()
            .find(|t| t.name() == control)
            .map_or(0, |t| t.partitions().len() as i32);
        let mut control_from = Vec::new();
        for p in 0..partitions {
            let (_, high) = probe
                .client()
                .fetch_watermarks(&control, p, timeout)
                .map_err(|e| format!("reading the offsets of {control}: {e}"))?;
            control_from.push(high);
        }
        return Ok(Preflight {
            partitions: topic.partitions().len() as u32,
            control_from,
        });
    }
    Ok(Preflight {
        partitions: topic.partitions().len() as u32,
        control_from: Vec::new(),
    })
}

/// What the preflight learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preflight {
    /// Partitions of the target topic.
    pub partitions: u32,
    /// Exactly-once: the control topic's end offsets before the job, per partition.
    pub control_from: Vec<i64>,
}

/// The key of the record each exactly-once preflight commits to the control topic (never a
/// marker: markers are `<job>/<shard>`).
pub const PREFLIGHT_KEY: &str = "rewind-preflight";

/// The key of a shard's completion marker in the control topic.
fn marker_key(job: &str, shard: ShardId) -> String {
    format!("{job}/{shard}")
}

/// How long a marker lookup waits for a transaction open on the control topic to end before
/// its attempt gives the shard back. A live attempt's transaction holds the topic's stable
/// offset only between its marker and its commit (milliseconds); one held longer is most
/// likely a dead attempt's, which ends only when its shard runs again (its producer is then
/// fenced) or the brokers time it out, and waiting for it in a slot could keep that shard
/// from ever getting one.
const GIVE_BACK_AFTER: Duration = Duration::from_secs(5);
/// How long a marker lookup may take to read the control topic to its end.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(120);
/// `transaction.timeout.ms` of the shards' producers, in seconds.
const TRANSACTION_TIMEOUT_S: u64 = 300;

/// The transaction timeout a job's producers run with: ours, or the job's own setting.
fn transaction_timeout_ms(spec: &KafkaSpec) -> u64 {
    spec.options
        .iter()
        .find(|(k, _)| k == "transaction.timeout.ms")
        .and_then(|(_, v)| v.parse::<u64>().ok())
        .unwrap_or(TRANSACTION_TIMEOUT_S * 1000)
}

/// How far an exactly-once replay of a shard is committed to Kafka, by the markers its
/// transactions committed to the control topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// No transaction of the shard committed.
    Nothing,
    /// Transactions committed every event before `position` (the event at `object_key`,
    /// object `position.0` of the shard, offset `position.1`, is the first not produced).
    UpTo {
        position: Position,
        object_key: String,
    },
    /// The shard's last transaction committed: nothing is left to produce.
    All,
}

/// A marker's value: which attempt committed it and how far its transaction reached.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct MarkerValue {
    job: String,
    shard: String,
    attempt: u32,
    /// `false` for a part of the shard (a transaction committed before the transaction timeout
    /// came near); markers without it (older versions) committed whole shards.
    #[serde(default = "yes")]
    done: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    object_index: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    object_key: Option<String>,
    #[serde(default)]
    offset: u64,
}

fn yes() -> bool {
    true
}

impl Committed {
    fn of(value: &[u8]) -> Result<Committed, String> {
        let m: MarkerValue =
            serde_json::from_slice(value).map_err(|e| format!("an unreadable marker: {e}"))?;
        if m.done {
            return Ok(Committed::All);
        }
        match (m.object_index, m.object_key) {
            (Some(i), Some(key)) => Ok(Committed::UpTo {
                position: (i, m.offset),
                object_key: key,
            }),
            _ => Err("a marker of a part without its position".into()),
        }
    }

    /// The further of two (markers of one shard, in any order).
    fn max(self, other: Committed) -> Committed {
        match (self, other) {
            (Committed::All, _) | (_, Committed::All) => Committed::All,
            (Committed::Nothing, x) | (x, Committed::Nothing) => x,
            (a @ Committed::UpTo { position: p, .. }, b @ Committed::UpTo { position: q, .. }) => {
                if p >= q {
                    a
                } else {
                    b
                }
            }
        }
    }
}

/// Why a marker lookup gave no answer.
#[derive(Debug, Clone)]
pub enum LookupError {
    /// Reading the control topic failed.
    Failed(KafkaFailure),
    /// A transaction left open holds the control topic's stable offset back (the text says
    /// where), so a marker could be out of sight. It ends when its producer is fenced — its
    /// shard's next attempt starts — or the brokers time it out (Kafka; some brokers never
    /// do). The attempt gives its shard back, uncounted, rather than hold a slot that the
    /// dead attempt's shard may need.
    Blocked(String),
}

impl From<KafkaFailure> for LookupError {
    fn from(f: KafkaFailure) -> LookupError {
        LookupError::Failed(f)
    }
}

/// How far an exactly-once replay of this shard is committed to Kafka (an attempt that died
/// after one of its transactions committed): the markers of its transactions in the control
/// topic, read with `read_committed`.
/// `stop` ends a wait for open transactions (the attempt is being stopped).
pub fn committed(
    spec: &KafkaSpec,
    job: &str,
    shard: ShardId,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<Committed, LookupError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let fail = |e: String| KafkaFailure {
        message: format!("reading the control topic {}: {e}", spec.control_topic()),
        retryable: true,
    };
    let control = spec.control_topic();
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &spec.brokers)
        .set("group.id", format!("rewind-marker-{job}"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed");
    for (k, v) in &spec.options {
        if k.starts_with("security.") || k.starts_with("sasl.") || k.starts_with("ssl.") {
            config.set(k, v);
        }
    }
    apply_secrets(&mut config, spec).map_err(|e| KafkaFailure {
        message: e,
        retryable: false,
    })?;
    let consumer: BaseConsumer = config.create().map_err(|e| fail(e.to_string()))?;
    // The same client reading uncommitted: its high watermarks bound where a marker committed
    // before this check can be.
    config.set("isolation.level", "read_uncommitted");
    let uncommitted: BaseConsumer = config.create().map_err(|e| fail(e.to_string()))?;
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(15))
        .map_err(|e| fail(e.to_string()))?;
    let partitions = md
        .topics()
        .iter()
        .find(|t| t.name() == control)
        .map(|t| t.partitions().len() as i32)
        .ok_or_else(|| fail("the topic does not exist".into()))?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    let mut reached = Vec::new();
    let started = std::time::Instant::now();
    let stopped = || {
        stop.load(std::sync::atomic::Ordering::Relaxed)
            .then(|| KafkaFailure {
                message: "stopped while reading the control topic".into(),
                retryable: true,
            })
    };
    for p in 0..partitions {
        // This job's markers are after the offsets its preflight saw (older jobs: the start).
        let from = spec.control_from.get(p as usize).copied();
        let watermark = |c: &BaseConsumer| {
            c.fetch_watermarks(&control, p, Duration::from_secs(15))
                .map_err(|e| fail(e.to_string()))
        };
        // A read_committed client's end is the last stable offset: a transaction left open
        // (another shard's attempt that died before its commit) holds it back, and a marker
        // committed after that transaction began would stay out of sight. Wait until the
        // stable offset passes everything written before this check.
        let (_, high) = watermark(&uncommitted)?;
        let stable = loop {
            let (low, stable) = watermark(&consumer)?;
            if stable >= high {
                break stable.max(low);
            }
            if let Some(f) = stopped() {
                return Err(f.into());
            }
            if started.elapsed() >= GIVE_BACK_AFTER {
                return Err(LookupError::Blocked(format!(
                    "partition {p} of {control} has a transaction open (stable offset {stable}, \
                     end {high}) for over {}s: a dead attempt's, which ends when its shard runs \
                     again; giving this shard back meanwhile",
                    GIVE_BACK_AFTER.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let start = from.map_or(rdkafka::Offset::Beginning, rdkafka::Offset::Offset);
        tpl.add_partition_offset(&control, p, start)
            .map_err(|e| fail(e.to_string()))?;
        // Nothing committed to read from where the lookup starts: at its end already.
        reached.push(from.is_some_and(|f| f >= stable) || stable == 0);
    }
    consumer.assign(&tpl).map_err(|e| fail(e.to_string()))?;
    let want = marker_key(job, shard);
    let mut found = Committed::Nothing;
    // "Not committed" is answered only by having read every partition to its end (the consumer
    // reports each end: enable.partition.eof), never by a quiet spell: a broker that stalls
    // makes the lookup wait, up to its deadline, and then fail (the attempt is retried).
    while !reached.iter().all(|r| *r) {
        if let Some(f) = stopped() {
            return Err(f.into());
        }
        if started.elapsed() >= LOOKUP_TIMEOUT {
            return Err(fail(format!(
                "could not read it to its end within {}s; the attempt is retried",
                LOOKUP_TIMEOUT.as_secs()
            ))
            .into());
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) if m.key() == Some(want.as_bytes()) => {
                let this = Committed::of(m.payload().unwrap_or_default()).map_err(fail)?;
                found = found.max(this);
                if found == Committed::All {
                    return Ok(found);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                if let Some(r) = reached.get_mut(p as usize) {
                    *r = true;
                }
            }
            Some(Err(e)) => return Err(fail(e.to_string()).into()),
            None => {}
        }
    }
    Ok(found)
}

/// An event's key as `--key` says (`path` is the parsed `KafkaKey::Path`): its event id, its
/// cid, none, or the value at the path — a string as is, other values as their JSON text, null
/// as none. Kafka record keys, Kinesis partition keys and Pub/Sub ordering keys alike.
pub(crate) fn key_of<'a>(
    key: &KafkaKey,
    path: Option<&Path>,
    row: &'a Row<'_>,
    text: &'a str,
) -> Option<std::borrow::Cow<'a, str>> {
    match key {
        KafkaKey::EventId => row.event_id().map(std::borrow::Cow::Borrowed),
        KafkaKey::Cid => row.cid().map(std::borrow::Cow::Borrowed),
        KafkaKey::None => None,
        KafkaKey::Path(_) => {
            let raw = path?.raw_get(text)??;
            match serde_json::from_str::<serde_json::Value>(raw) {
                Ok(serde_json::Value::String(s)) => Some(std::borrow::Cow::Owned(s)),
                Ok(serde_json::Value::Null) | Err(_) => None,
                Ok(_) => Some(std::borrow::Cow::Borrowed(raw)),
            }
        }
    }
}

/// Where a shard's replay is: the next event to produce is at `offset` in object
/// `object_index` (everything before is finished).
pub type Position = (usize, u64);

/// An exactly-once shard's transactions: each commits with a marker saying how far the shard
/// is delivered. A transaction is committed, and the next begun, once it has been open for half
/// the transaction timeout, so a shard of any length (throttled, a slow broker) commits in parts
/// the brokers never abort for their age; a retried attempt resumes after the last part.
struct Txn {
    control_topic: String,
    marker_key: String,
    job: String,
    shard: String,
    attempt: u32,
    /// How long a transaction stays open before the next record commits it.
    budget: Duration,
    /// When the open transaction's first record was produced (the brokers' timer starts then).
    open_since: Option<std::time::Instant>,
}

impl Txn {
    fn marker(&self, upto: Option<(Position, &str)>) -> String {
        let value = MarkerValue {
            job: self.job.clone(),
            shard: self.shard.clone(),
            attempt: self.attempt,
            done: upto.is_none(),
            object_index: upto.map(|((i, _), _)| i),
            object_key: upto.map(|(_, k)| k.to_string()),
            offset: upto.map_or(0, |((_, o), _)| o),
        };
        serde_json::to_string(&value).unwrap_or_default()
    }
}

/// What a finished attempt delivered.
#[derive(Debug)]
pub struct Finished {
    pub produced: u64,
    pub acknowledged: u64,
    /// Records the brokers refused for themselves (at-least-once only).
    pub rejected: Vec<Rejected>,
    pub offsets: std::collections::BTreeMap<i32, OffsetRange>,
}

/// Produces one shard attempt's events.
pub struct KafkaSink {
    txn: Option<Txn>,
    /// Exactly-once: a transaction is begun and not yet committed or aborted.
    txn_open: bool,
    producer: ThreadedProducer<Ctx>,
    topic: String,
    key: KafkaKey,
    key_path: Option<Path>,
    job: String,
    /// The attempt's number, as its header carries it.
    attempt: String,
    produced: u64,
    timeout: Duration,
    /// Records allowed in flight (produced, not finished) before `send` waits.
    max_in_flight: u64,
    /// The bytes (keys and values) of the records handed to the producer so far.
    produced_bytes: u64,
    /// The position after each record in flight, by sequence number (oldest first).
    positions: std::collections::VecDeque<(u64, Position)>,
    /// The position after the last finished record of the contiguous finished prefix.
    finished_to: Option<Position>,
    /// The position after the last record produced, and its object's key.
    last_after: Option<(Position, String)>,
    /// With an envelope: the topic's partition count, when records keep their partition.
    partitions: Option<i32>,
    /// Whether Rewind's lineage headers are added (always without an envelope).
    lineage: bool,
    /// The offset header's text, its buffer reused from record to record.
    offset_text: String,
    /// The source key of the records being noted in `Ctx::origins` (one per object, shared).
    origin_key: std::sync::Arc<str>,
}

/// Why one event was not produced: a failed record's code and reason.
pub type Refusal = (&'static str, String);

impl KafkaSink {
    /// A producer for one shard attempt. For exactly-once it is transactional, with an id
    /// derived from job and shard: starting it fences an earlier attempt's producer (whose open
    /// transaction is aborted), then the shard's transaction begins.
    pub fn new(
        spec: &KafkaSpec,
        job: &str,
        shard: ShardId,
        attempt: u32,
        latency: Option<Histogram>,
    ) -> Result<KafkaSink, KafkaFailure> {
        let mut config = client_config(spec).map_err(|message| KafkaFailure {
            message,
            retryable: false,
        })?;
        let exactly_once = spec.delivery == Delivery::ExactlyOnce;
        if exactly_once {
            config.set("transactional.id", format!("rewind-{job}-{shard}"));
        }
        let timeout_ms = ["delivery.timeout.ms", "message.timeout.ms"]
            .iter()
            .find_map(|k| config.get(k).and_then(|v| v.parse::<u64>().ok()))
            .unwrap_or(DEFAULT_DELIVERY_TIMEOUT_MS);
        let lineage = spec.envelope.is_none() || spec.lineage_headers;
        let producer: ThreadedProducer<Ctx> = config
            .create_with_context(Ctx {
                latency,
                origins: (!lineage).then(Default::default),
                ..Ctx::default()
            })
            .map_err(|e| KafkaFailure {
                message: format!("Kafka settings: {e}"),
                retryable: false,
            })?;
        let key_path = match &spec.key {
            KafkaKey::Path(p) => Some(Path::parse(p).map_err(|message| KafkaFailure {
                message,
                retryable: false,
            })?),
            _ => None,
        };
        let txn = if exactly_once {
            let init = Duration::from_secs(60);
            producer
                .init_transactions(init)
                .and_then(|()| producer.begin_transaction())
                .map_err(|e| KafkaFailure {
                    message: format!("starting the shard's Kafka transaction: {e}"),
                    retryable: true,
                })?;
            let half = Duration::from_millis(transaction_timeout_ms(spec) / 2);
            Some(Txn {
                control_topic: spec.control_topic(),
                marker_key: marker_key(job, shard),
                job: job.to_string(),
                shard: shard.to_string(),
                attempt,
                budget: half.max(Duration::from_secs(1)),
                open_since: None,
            })
        } else {
            None
        };
        let partitions = if spec.preserve_partition {
            let md = producer
                .client()
                .fetch_metadata(Some(&spec.topic), Duration::from_secs(30))
                .map_err(|e| KafkaFailure {
                    message: format!("reading topic {}'s partitions: {e}", spec.topic),
                    retryable: true,
                })?;
            let n = md
                .topics()
                .iter()
                .find(|t| t.name() == spec.topic)
                .map_or(0, |t| t.partitions().len());
            Some(n as i32)
        } else {
            None
        };
        Ok(KafkaSink {
            partitions,
            lineage,
            offset_text: String::new(),
            origin_key: std::sync::Arc::from(""),
            txn_open: txn.is_some(),
            txn,
            producer,
            topic: spec.topic.clone(),
            key: spec.key.clone(),
            key_path,
            job: job.to_string(),
            attempt: attempt.to_string(),
            produced: 0,
            produced_bytes: 0,
            timeout: Duration::from_millis(timeout_ms) + FLUSH_GRACE,
            max_in_flight: spec.checkpoint_events.max(1),
            positions: std::collections::VecDeque::new(),
            finished_to: None,
            last_after: None,
        })
    }

    /// How far every record is finished (acknowledged or refused): the position to resume a
    /// retried attempt from. `None` until the first record is.
    pub fn finished_position(&mut self) -> Option<Position> {
        let below = self
            .producer
            .context()
            .done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .below;
        while let Some(&(seq, pos)) = self.positions.front() {
            if seq >= below {
                break;
            }
            self.finished_to = Some(pos);
            self.positions.pop_front();
        }
        self.finished_to
    }

    fn in_flight(&self) -> u64 {
        self.produced - self.producer.context().settled.load(Ordering::Acquire)
    }

    fn in_flight_bytes(&self) -> u64 {
        let settled = self
            .producer
            .context()
            .settled_bytes
            .load(Ordering::Relaxed);
        self.produced_bytes.saturating_sub(settled)
    }

    /// Records handed to the producer so far.
    pub fn produced(&self) -> u64 {
        self.produced
    }

    /// Where the acknowledged records went: offsets by partition.
    pub fn offsets(&self) -> std::collections::BTreeMap<i32, OffsetRange> {
        self.producer
            .context()
            .offsets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records the brokers acknowledged so far.
    pub fn acknowledged(&self) -> u64 {
        self.producer.context().acknowledged.load(Ordering::Relaxed)
    }

    fn failed(&self) -> Option<KafkaFailure> {
        let ctx = self.producer.context();
        if !ctx.failing.load(Ordering::Acquire) {
            return None;
        }
        ctx.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The record key of an event.
    fn key_of<'a>(&self, row: &'a Row<'_>, text: &'a str) -> Option<std::borrow::Cow<'a, str>> {
        key_of(&self.key, self.key_path.as_ref(), row, text)
    }

    /// Exactly-once: commits the open transaction, with a marker of how far it reached, once
    /// it has been open for its budget, and begins the next. Called before each record (and
    /// before the throttle's wait for it), so a transaction stays open for at most its budget
    /// plus one record's wait.
    pub fn maybe_commit_part(&mut self) -> Result<(), KafkaFailure> {
        let Some(txn) = &self.txn else {
            return Ok(());
        };
        let (Some(since), Some((pos, key))) = (txn.open_since, &self.last_after) else {
            return Ok(());
        };
        if since.elapsed() < txn.budget {
            return Ok(());
        }
        let marker = txn.marker(Some((*pos, key)));
        let rejected = self.settle()?;
        let committed = self.commit(&marker, &rejected);
        self.txn_open = false;
        committed?;
        self.producer
            .begin_transaction()
            .map_err(|e| KafkaFailure {
                message: format!("beginning the shard's next Kafka transaction: {e}"),
                retryable: true,
            })?;
        self.txn_open = true;
        if let Some(txn) = &mut self.txn {
            txn.open_since = None;
        }
        Ok(())
    }

    /// Produces one event of object `source_key`; `after` is the position just after it
    /// (object index, offset). A record the client refuses at once for itself (too large) is
    /// returned as the reason; a failure of the producer stops the shard. Waits while too many
    /// records are in flight.
    pub fn send(
        &mut self,
        row: &Row<'_>,
        value: &str,
        archived: Option<&rewind_common::envelope::Record>,
        source_key: &str,
        offset: u64,
        after: Position,
    ) -> Result<Option<Refusal>, KafkaFailure> {
        if let Some(f) = self.failed() {
            return Err(f);
        }
        // An archived record goes out with its value, key, headers, timestamp and partition.
        let partition = match (archived, self.partitions) {
            (Some(r), Some(count)) => match r.partition {
                Some(p) if p < count => Some(p),
                Some(p) => {
                    return Ok(Some((
                        "partition",
                        format!(
                            "archived in partition {p}; topic {} has {count} partitions",
                            self.topic
                        ),
                    )));
                }
                None => {
                    return Ok(Some((
                        "envelope",
                        "envelope: no partition to preserve".to_string(),
                    )));
                }
            },
            _ => None,
        };
        self.maybe_commit_part()?;
        while self.in_flight() >= self.max_in_flight
            || (self.in_flight() > 0 && self.in_flight_bytes() >= MAX_IN_FLIGHT_BYTES)
        {
            std::thread::sleep(Duration::from_millis(1));
            if let Some(f) = self.failed() {
                return Err(f);
            }
        }
        let key: Option<std::borrow::Cow<'_, [u8]>> = match archived {
            Some(r) => r.key.as_deref().map(std::borrow::Cow::Borrowed),
            None => self.key_of(row, value).map(|k| match k {
                std::borrow::Cow::Borrowed(k) => std::borrow::Cow::Borrowed(k.as_bytes()),
                std::borrow::Cow::Owned(k) => std::borrow::Cow::Owned(k.into_bytes()),
            }),
        };
        let seq = self.produced as usize;
        if let Some(origins) = &self.producer.context().origins {
            if &*self.origin_key != source_key {
                self.origin_key = std::sync::Arc::from(source_key);
            }
            origins
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(seq, (self.origin_key.clone(), offset));
        }
        let mut headers = OwnedHeaders::new_with_capacity(5);
        if let Some(r) = archived {
            for (name, v) in &r.headers {
                headers = headers.insert(Header {
                    key: name.as_str(),
                    value: v.as_deref(),
                });
            }
        }
        if self.lineage {
            use std::fmt::Write;
            self.offset_text.clear();
            let _ = write!(self.offset_text, "{offset}");
            headers = headers
                .insert(Header {
                    key: HEADER_JOB,
                    value: Some(self.job.as_str()),
                })
                .insert(Header {
                    key: HEADER_SOURCE_KEY,
                    value: Some(source_key),
                })
                .insert(Header {
                    key: HEADER_OFFSET,
                    value: Some(self.offset_text.as_str()),
                })
                .insert(Header {
                    key: HEADER_ATTEMPT,
                    value: Some(self.attempt.as_str()),
                });
            if let Some(id) = row.event_id() {
                headers = headers.insert(Header {
                    key: HEADER_EVENT_ID,
                    value: Some(id),
                });
            }
        }
        let payload: Option<&[u8]> = match archived {
            Some(r) => r.value.as_deref(),
            None => Some(value.as_bytes()),
        };
        let bytes = record_weight(key.as_deref(), payload, Some(&headers));
        let mut record: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(&self.topic, seq).headers(headers);
        if let Some(p) = payload {
            record = record.payload(p);
        }
        if let Some(k) = key.as_deref() {
            record = record.key(k);
        }
        if let Some(t) = archived.and_then(|r| r.timestamp) {
            record = record.timestamp(t);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    self.produced += 1;
                    self.produced_bytes += bytes;
                    self.positions.push_back((seq as u64, after));
                    match &mut self.last_after {
                        Some((pos, key)) if key == source_key => *pos = after,
                        last => *last = Some((after, source_key.to_string())),
                    }
                    if let Some(txn) = &mut self.txn {
                        txn.open_since.get_or_insert_with(std::time::Instant::now);
                    }
                    return Ok(None);
                }
                Err((e, back)) => match e.rdkafka_error_code() {
                    // The local queue is full: wait for deliveries to make room.
                    Some(RDKafkaErrorCode::QueueFull) => {
                        if let Some(f) = self.failed() {
                            return Err(f);
                        }
                        std::thread::sleep(Duration::from_millis(2));
                        record = back;
                    }
                    _ => {
                        // It never reached the producer: what was noted of it goes.
                        self.producer.context().forget(seq);
                        return match classify(&e) {
                            Class::Record => Ok(Some((
                                "kafka_rejected",
                                format!("the producer refused the record: {e}"),
                            ))),
                            class => Err(KafkaFailure {
                                message: format!("producing to Kafka: {e}"),
                                retryable: matches!(class, Class::Transient),
                            }),
                        };
                    }
                },
            }
        }
    }

    /// Waits until every record is acknowledged or refused. Returns the records the brokers
    /// refused for themselves; fails when any delivery failed otherwise or did not finish.
    pub fn finish(mut self) -> Result<Finished, KafkaFailure> {
        let rejected = self.settle()?;
        let acknowledged = self.acknowledged();
        if let Some(txn) = &self.txn {
            let committed = self.commit(&txn.marker(None), &rejected);
            self.txn_open = false;
            committed?;
        }
        Ok(Finished {
            produced: self.produced,
            acknowledged,
            rejected,
            offsets: self.offsets(),
        })
    }

    /// Waits until every record produced so far is acknowledged or refused; returns the
    /// refused ones not returned before.
    fn settle(&self) -> Result<Vec<Rejected>, KafkaFailure> {
        let flushed = self.producer.flush(self.timeout);
        if let Some(f) = self.failed() {
            return Err(f);
        }
        if let Err(e) = flushed {
            return Err(KafkaFailure {
                message: format!(
                    "waiting for Kafka acknowledgements: {e} ({} of {} acknowledged)",
                    self.acknowledged(),
                    self.produced
                ),
                retryable: true,
            });
        }
        let rejected = std::mem::take(
            &mut *self
                .producer
                .context()
                .rejected
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let acknowledged = self.acknowledged();
        // Exactly-once fails at the first refusal, so only at-least-once returns refusals (all
        // at the end): settled, every record is acknowledged or among them.
        if acknowledged + rejected.len() as u64 != self.produced {
            return Err(KafkaFailure {
                message: format!(
                    "{} records produced but {acknowledged} acknowledged and {} refused",
                    self.produced,
                    rejected.len()
                ),
                retryable: true,
            });
        }
        Ok(rejected)
    }

    /// Commits the open transaction with its marker. A record refused inside a transaction
    /// leaves it abortable only: the shard fails (for good: the record would be refused again).
    fn commit(&self, marker: &str, rejected: &[Rejected]) -> Result<(), KafkaFailure> {
        let Some(txn) = &self.txn else {
            return Ok(());
        };
        let abort = |message: String, retryable: bool| {
            let _ = self.producer.abort_transaction(self.timeout);
            KafkaFailure { message, retryable }
        };
        if let Some(r) = rejected.first() {
            return Err(abort(
                format!(
                    "{} at {}@{} (in an exactly-once transaction, which was aborted)",
                    r.reason, r.source_key, r.offset
                ),
                false,
            ));
        }
        let marker = BaseRecord::with_opaque_to(&txn.control_topic, MARKER)
            .key(txn.marker_key.as_bytes())
            .payload(marker.as_bytes());
        if let Err((e, _)) = self.producer.send(marker) {
            return Err(abort(format!("producing the shard's marker: {e}"), true));
        }
        // A test hook: die with the marker written and the transaction open (a kill or a
        // pause at this moment leaves it open on the control topic until it is fenced).
        if crate::failpoint("before-kafka-commit") {
            let _ = self.producer.flush(self.timeout);
            std::process::abort();
        }
        self.producer
            .commit_transaction(self.timeout)
            .map_err(|e| {
                abort(
                    format!("committing the shard's Kafka transaction: {e}"),
                    true,
                )
            })?;
        // A test hook: die between a Kafka commit and the shard's commit.
        if crate::failpoint("after-kafka-commit") {
            std::process::abort();
        }
        Ok(())
    }
}

/// How long an attempt that ends without its commit waits for its transaction's abort.
const ABORT_TIMEOUT: Duration = Duration::from_secs(5);

impl Drop for KafkaSink {
    /// An exactly-once attempt that ends without committing (stopped, failed, its shard given
    /// back) aborts its open transaction: until it ends, read_committed readers of the topic
    /// and of the control topic could not see past it (the brokers time it out only after
    /// `transaction.timeout.ms`, and some brokers never do).
    fn drop(&mut self) {
        if self.txn_open {
            let _ = self.producer.abort_transaction(ABORT_TIMEOUT);
        }
    }
}

/// What the coordinator core asks of the sinks: at submit the Kafka checks (settings, brokers,
/// topic, and transactions for exactly-once) and the Kinesis stream's (it exists, is active,
/// the credentials may describe it); a Delta destination opened (and created on first
/// use, with the reference schema, partitioned by `date`) at submit and at commit.
#[derive(Debug, Clone, Copy, Default)]
pub struct KafkaChecks;

/// The partition columns of the Delta tables jobs write (the day of the archive hour, from the
/// data files' `date=` directory).
pub const DELTA_PARTITION_COLUMNS: &[&str] = &["date"];

impl rewind_common::lifecycle::SinkCheck for KafkaChecks {
    fn destination(
        &self,
        spec: &rewind_common::JobSpec,
        dest: std::sync::Arc<dyn rewind_common::storage::OutputStore>,
    ) -> Result<
        std::sync::Arc<dyn rewind_common::storage::OutputStore>,
        rewind_common::storage::StorageError,
    > {
        match spec.table_format {
            // A repair works on whatever the dataset is (a Delta table by its log).
            rewind_common::table::TableFormat::Parquet if spec.repair.is_some() => {
                rewind_delta::open(dest)
            }
            rewind_common::table::TableFormat::Parquet => Ok(dest),
            rewind_common::table::TableFormat::Delta => {
                let columns: Vec<String> = DELTA_PARTITION_COLUMNS
                    .iter()
                    .map(|c| c.to_string())
                    .collect();
                rewind_delta::open_or_create(dest, &crate::record::schema(), &columns)
            }
        }
    }

    fn check_settings(&self, spec: &rewind_common::JobSpec) -> Result<(), String> {
        match &spec.sink {
            rewind_common::job::SinkSpec::Kafka(k) => check_settings(k),
            _ => Ok(()),
        }
    }

    fn preflight(&self, spec: &mut rewind_common::JobSpec) -> Result<(), String> {
        match &mut spec.sink {
            rewind_common::job::SinkSpec::Kafka(k) => {
                k.control_from = preflight(k, Duration::from_secs(15))?.control_from;
            }
            rewind_common::job::SinkSpec::Kinesis(k) => {
                crate::streams::preflight(k, Duration::from_secs(15))?;
            }
            rewind_common::job::SinkSpec::PubSub(p) => {
                crate::streams::preflight_pubsub(p, Duration::from_secs(15))?;
            }
            rewind_common::job::SinkSpec::Parquet => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_records_are_counted_in_any_order() {
        // Several windows' worth, acknowledged out of order in strides (one partition's batch
        // before another's), in reverse, and in order; `below` is always the first gap.
        let n = 1_000u64;
        let mut orders: Vec<Vec<u64>> = vec![(0..n).collect(), (0..n).rev().collect()];
        orders.push((0..7).flat_map(|p| (p..n).step_by(7)).collect());
        orders.push((0..n).map(|i| (i * 389) % n).collect());
        for order in orders {
            let mut done = Done::default();
            let mut seen = std::collections::BTreeSet::new();
            for &seq in &order {
                done.mark(seq);
                seen.insert(seq);
                let first_gap = (0..=n).find(|s| !seen.contains(s)).unwrap();
                assert_eq!(done.below, first_gap, "after marking {seq}");
            }
            assert_eq!(done.count, n);
            assert_eq!(done.below, n);
            assert!(done.bits.len() <= 1, "finished words are dropped");
        }
    }

    fn txn() -> Txn {
        Txn {
            control_topic: "t.rewind-control".into(),
            marker_key: "j/2024060100".into(),
            job: "j".into(),
            shard: "2024060100".into(),
            attempt: 2,
            budget: Duration::from_secs(1),
            open_since: None,
        }
    }

    /// An at-least-once replay of `topic` with lineage headers, uncompressed.
    fn test_spec(brokers: String, topic: &str) -> KafkaSpec {
        KafkaSpec {
            envelope: None,
            preserve_partition: false,
            lineage_headers: true,
            brokers,
            topic: topic.into(),
            key: KafkaKey::EventId,
            compression: "none".into(),
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

    fn test_sink(spec: &KafkaSpec) -> KafkaSink {
        let shard = ShardId(rewind_common::Hour::from_epoch_hours(0));
        KafkaSink::new(spec, "job", shard, 1, None).unwrap()
    }

    /// Whatever the events weigh, a shard keeps at most `MAX_IN_FLIGHT_BYTES` of records in
    /// flight (besides the `--checkpoint-events` count): against a broker cut off after the
    /// first exchanges, 512 KiB events stop being handed to the producer at the cap (librdkafka
    /// would queue a gigabyte), until the deliveries time out and the shard fails.
    #[test]
    fn records_in_flight_are_bounded_in_bytes() {
        let (broker, proxy) = rewind_testkit::kafka::Tansu::start_behind_proxy(64 << 10);
        broker.create_topic("window", 1);
        let spec = KafkaSpec {
            lineage_headers: false,
            options: vec![("message.timeout.ms".into(), "3000".into())],
            ..test_spec(format!("127.0.0.1:{}", proxy.port), "window")
        };
        let mut sink = test_sink(&spec);
        let org = rewind_common::OrgId::parse("TN-1").unwrap();
        let pad = "x".repeat(1 << 19);
        let mut accepted = 0;
        let failure = loop {
            assert!(
                accepted < 200,
                "{accepted} x 512 KiB handed to the producer, none acknowledged"
            );
            let text = format!(r#"{{"event_id":"e{accepted}","org_id":"TN-1","data":"{pad}"}}"#);
            let mut d = crate::decode::Decoder::new(text.as_bytes(), Default::default());
            let Ok(Some(crate::decode::Item::Event(ev))) = d.next() else {
                panic!("the test's event decodes")
            };
            let row = crate::record::Row::extract(&ev, &org).unwrap();
            match sink.send(&row, ev.text(), None, "a/b.json", 0, (0, 0)) {
                Ok(None) => accepted += 1,
                Ok(Some(refusal)) => panic!("refused: {refusal:?}"),
                Err(f) => break f,
            }
        };
        assert!(proxy.is_cut(), "the broker was cut off");
        assert!(
            (1..=(MAX_IN_FLIGHT_BYTES >> 19) as usize + 1).contains(&accepted),
            "{accepted} records of 512 KiB in flight"
        );
        assert!(failure.retryable, "{}", failure.message);
    }

    /// A record weighs the same in flight when it is sent and when it is acknowledged (key,
    /// value, every header, librdkafka's share), so the window empties exactly: lineage
    /// headers, archived records' own headers (none, empty, large), tombstones.
    #[test]
    fn records_weigh_the_same_sent_and_acknowledged() {
        let broker = rewind_testkit::kafka::Tansu::start();
        broker.create_topic("weights", 2);
        let mut spec = test_spec(broker.brokers(), "weights");
        let org = rewind_common::OrgId::parse("TN-1").unwrap();
        let big = vec![b'h'; 3000];
        let archived: Vec<rewind_common::envelope::Record> = (0..40)
            .map(|i| rewind_common::envelope::Record {
                value: (i % 7 != 0).then(|| format!("value {i}").into_bytes()),
                key: (i % 3 != 0).then(|| format!("k{i}").into_bytes()),
                headers: (0..i % 4)
                    .map(|h| {
                        let value = match h {
                            0 => None,
                            1 => Some(Vec::new()),
                            _ => Some(big[..i * 50].to_vec()),
                        };
                        (format!("h{h}"), value)
                    })
                    .collect(),
                timestamp: None,
                partition: None,
            })
            .collect();
        for with_envelope in [false, true] {
            if with_envelope {
                spec.envelope = Some("value=$.v".into());
                spec.lineage_headers = false;
            }
            let mut sink = test_sink(&spec);
            let mut plain_bytes = 0;
            for (i, archived) in archived.iter().enumerate() {
                let text = format!(
                    r#"{{"event_id":"e{i}","org_id":"TN-1","data":"{}"}}"#,
                    "d".repeat(i * 37)
                );
                let mut d = crate::decode::Decoder::new(text.as_bytes(), Default::default());
                let Ok(Some(crate::decode::Item::Event(ev))) = d.next() else {
                    panic!("the test's event decodes")
                };
                let row = crate::record::Row::extract(&ev, &org).unwrap();
                let record = with_envelope.then_some(archived);
                plain_bytes += match record {
                    Some(r) => {
                        r.key.as_ref().map_or(0, Vec::len) + r.value.as_ref().map_or(0, Vec::len)
                    }
                    None => ev.text().len() + format!("e{i}").len(),
                };
                let sent = sink.send(&row, ev.text(), record, "a/b.json", i as u64 * 100, (0, 0));
                assert!(matches!(sent, Ok(None)), "{sent:?}");
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while sink.in_flight() > 0 {
                assert!(std::time::Instant::now() < deadline, "not acknowledged");
                std::thread::sleep(Duration::from_millis(10));
            }
            let settled = sink
                .producer
                .context()
                .settled_bytes
                .load(Ordering::Relaxed);
            assert_eq!(settled, sink.produced_bytes, "envelope: {with_envelope}");
            assert!(
                sink.produced_bytes as usize >= plain_bytes + 40 * RECORD_OVERHEAD,
                "librdkafka's share is counted"
            );
            assert_eq!(sink.in_flight_bytes(), 0);
            sink.finish().unwrap();
        }
    }

    /// A record the brokers refuse is reported with where it was read: from its lineage
    /// headers, or — records replayed faithfully carry none — from what the sender noted.
    #[test]
    fn refused_records_are_reported_with_their_place_in_the_archive() {
        let with_headers = Ctx::default();
        let headers = |name: &str| match name {
            HEADER_SOURCE_KEY => Some(&b"a/b.json"[..]),
            HEADER_OFFSET => Some(&b"1200"[..]),
            _ => None,
        };
        assert_eq!(with_headers.origin(7, headers), ("a/b.json".into(), 1200));
        let faithful = Ctx {
            origins: Some(Default::default()),
            ..Ctx::default()
        };
        let noted = || faithful.origins.as_ref().unwrap().lock().unwrap();
        noted().insert(7, (std::sync::Arc::from("c/d.json"), 42));
        assert_eq!(faithful.origin(7, |_| None), ("c/d.json".into(), 42));
        assert!(noted().is_empty(), "taken once reported");
    }

    #[test]
    fn markers_say_how_far_a_shard_is_committed() {
        let t = txn();
        let part = t.marker(Some(((3, 1200), "a/b.json")));
        let up_to = Committed::of(part.as_bytes()).unwrap();
        assert_eq!(
            up_to,
            Committed::UpTo {
                position: (3, 1200),
                object_key: "a/b.json".into()
            }
        );
        assert_eq!(
            Committed::of(t.marker(None).as_bytes()).unwrap(),
            Committed::All
        );
        // Markers of whole shards written before parts existed.
        let old = br#"{"job":"j","shard":"2024060100","attempt":1}"#;
        assert_eq!(Committed::of(old).unwrap(), Committed::All);
        let torn = br#"{"job":"j","shard":"2024060100","attempt":1,"done":false}"#;
        assert!(Committed::of(torn).is_err(), "a part without its position");
        assert!(Committed::of(b"{").is_err());
    }

    #[test]
    fn the_furthest_marker_wins_in_any_order() {
        let at = |i, o| Committed::UpTo {
            position: (i, o),
            object_key: format!("k{i}"),
        };
        let all = [Committed::Nothing, at(0, 500), at(1, 10), at(1, 900)];
        for rotate in 0..all.len() {
            let mut v = all.to_vec();
            v.rotate_left(rotate);
            let m = v.into_iter().fold(Committed::Nothing, Committed::max);
            assert_eq!(m, at(1, 900));
        }
        assert_eq!(at(2, 0).max(Committed::All), Committed::All);
        assert_eq!(Committed::All.max(Committed::Nothing), Committed::All);
    }
}
