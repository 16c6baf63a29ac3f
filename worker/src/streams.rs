//! The stream sinks without a producer library of their own: Amazon Kinesis and Google Cloud
//! Pub/Sub. Each recovered event is one record (Kinesis) or message (Pub/Sub) whose data is the
//! event's bytes (original, or repaired by a flow). Records go out in calls within the service's
//! limits (Kinesis PutRecords: 500 records, 5 MiB; Pub/Sub publish: 1,000 messages, kept under
//! 7 MB of data so the base64 request stays under its 10 MB), several calls in flight; what a
//! call failed for the moment (throughput exceeded, internal failure, 429/5xx) is sent again
//! with backoff and counted, so a throttled service slows the shard instead of failing it. A
//! shard commits only after every record is acknowledged; its progress is checkpointed as for
//! Kafka's at-least-once mode, so a retried shard sends again at most what was in flight after
//! the last checkpoint.
//!
//! Neither has transactions: delivery is at-least-once. Kinesis records have no headers, so
//! lineage travels in the data only when the job asks for the wrapping (`--wrap-lineage`);
//! Pub/Sub messages carry it as attributes (`rewind-job`, `rewind-source-key`, `rewind-offset`,
//! `rewind-event-id`), and with `--ordered` an ordering key from `--key`.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::Histogram;
use rewind_common::ShardId;
use rewind_common::job::{KafkaKey, KinesisSpec, PubSubSpec};
use rewind_flows::Path;
use rewind_s3::kinesis::{Entry, ErrorClass, KinesisClient, KinesisError, PutOutcome};
use rewind_s3::pubsub::{Message, PubSubClient};

use crate::kafka::{KafkaFailure, Position, Refusal};
use crate::record::Row;

/// PutRecords limits: records per call, bytes per call (data and keys), bytes per record.
pub const MAX_RECORDS_PER_CALL: usize = 500;
pub const MAX_BYTES_PER_CALL: usize = 5 << 20;
pub const MAX_RECORD_BYTES: usize = 1 << 20;
/// A partition key's most characters.
pub const MAX_KEY_CHARS: usize = 256;

/// Pub/Sub publish limits as we use them: messages per call, bytes of data and attributes per
/// call and per message (base64 in the JSON request makes 7 MB about 9.4 MB of the 10 MB
/// request limit).
pub const PUBSUB_MAX_MESSAGES_PER_CALL: usize = 1000;
pub const PUBSUB_MAX_BYTES: usize = 7_000_000;
/// An attribute value's and an ordering key's most bytes.
pub const PUBSUB_MAX_ATTRIBUTE: usize = 1024;

/// Lineage attributes of a Pub/Sub message.
pub const ATTR_JOB: &str = "rewind-job";
pub const ATTR_SOURCE_KEY: &str = "rewind-source-key";
pub const ATTR_OFFSET: &str = "rewind-offset";
pub const ATTR_EVENT_ID: &str = "rewind-event-id";

/// Where the records go.
#[derive(Clone)]
enum Target {
    Kinesis(KinesisClient),
    PubSub(PubSubClient),
}

impl Target {
    /// Records per call and bytes per call (each record's own limit is checked where the
    /// record is made).
    fn limits(&self) -> (usize, usize) {
        match self {
            Target::Kinesis(_) => (MAX_RECORDS_PER_CALL, MAX_BYTES_PER_CALL),
            Target::PubSub(_) => (PUBSUB_MAX_MESSAGES_PER_CALL, PUBSUB_MAX_BYTES),
        }
    }

    fn describe(&self) -> String {
        match self {
            Target::Kinesis(c) => format!("Kinesis stream {}", c.stream()),
            Target::PubSub(c) => format!("Pub/Sub topic {}", c.topic()),
        }
    }
}

/// One record as it goes out: data, key (Kinesis: the partition key; Pub/Sub: the ordering
/// key, empty for none) and attributes (Pub/Sub).
#[derive(Debug, Clone)]
pub struct Record {
    pub data: bytes::Bytes,
    pub key: String,
    pub attributes: Vec<(String, String)>,
}

impl Record {
    fn size(&self) -> usize {
        self.data.len()
            + self.key.len()
            + self
                .attributes
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// Calls in flight per shard attempt (one with `--ordered`).
const CALLS_IN_FLIGHT: usize = 4;
/// A batch that has waited this long goes out however small (a throttled job's events trickle).
const LINGER: Duration = Duration::from_millis(100);
/// Without any record acknowledged for this long, the shard fails (retryably).
const NO_PROGRESS_LIMIT: Duration = Duration::from_secs(120);
/// Backoff between calls sent again: from 50 ms, doubling to 5 s, jittered (equal jitter).
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One record waiting for its call.
struct Pending {
    seq: u64,
    record: Record,
}

/// What a call (with its retries) came to.
struct Completion {
    seqs: Vec<u64>,
    latency: Duration,
    result: Result<(), KinesisError>,
}

/// What a finished attempt delivered.
#[derive(Debug)]
pub struct Finished {
    pub put: u64,
    pub acknowledged: u64,
    /// Records put again after the stream failed them for the moment.
    pub retries: u64,
}

/// Sends one shard attempt's events.
pub struct StreamSink {
    target: Target,
    handle: tokio::runtime::Handle,
    key: KafkaKey,
    key_path: Option<Path>,
    wrap: bool,
    ordered: bool,
    job: String,
    shard: ShardId,
    /// The batch being filled, its bytes, its keys (ordered: one record per key), its age.
    batch: Vec<Pending>,
    batch_bytes: usize,
    batch_keys: HashSet<String>,
    batch_since: Option<Instant>,
    /// Records handed over so far (the next sequence number).
    put: u64,
    acknowledged: u64,
    calls_in_flight: usize,
    /// Records allowed in flight (sent or batched, not acknowledged) before `send` waits: the
    /// job's `--checkpoint-events`, so a crash repeats at most about two of those windows.
    max_in_flight: u64,
    /// Records per call: the service's limit, or fewer when the window is smaller.
    batch_cap: usize,
    /// Set when the attempt ends (finished, failed or dropped): calls still retrying give up.
    stop: Arc<std::sync::atomic::AtomicBool>,
    done: crate::kafka::Done,
    positions: VecDeque<(u64, Position)>,
    finished_to: Option<Position>,
    retries: Arc<AtomicU64>,
    failure: Option<KinesisError>,
    tx: mpsc::Sender<Completion>,
    rx: mpsc::Receiver<Completion>,
    latency: Option<Histogram>,
}

fn failure(e: &KinesisError) -> KafkaFailure {
    KafkaFailure {
        message: e.message.clone(),
        retryable: e.class != ErrorClass::Fatal,
    }
}

impl StreamSink {
    /// A Kinesis sink for one shard attempt. Must be called on a thread of a tokio runtime (the
    /// pipeline's blocking threads are): the calls run on that runtime.
    pub fn kinesis(
        spec: &KinesisSpec,
        job: &str,
        shard: ShardId,
        latency: Option<Histogram>,
    ) -> Result<StreamSink, KafkaFailure> {
        let handle = runtime()?;
        let (stream, region, endpoint) = (
            spec.stream.clone(),
            spec.region.clone(),
            spec.endpoint_url.clone(),
        );
        let client = block_on(&handle, async move {
            rewind_s3::kinesis::connect(&stream, region.as_deref(), endpoint.as_deref()).await
        });
        let mut sink = Self::with(
            Target::Kinesis(client),
            handle,
            &spec.key,
            spec.ordered,
            spec.checkpoint_events,
            job,
            shard,
            latency,
        )?;
        sink.wrap = spec.wrap_lineage;
        Ok(sink)
    }

    /// A Pub/Sub sink for one shard attempt (same runtime rule as [`StreamSink::kinesis`]).
    pub fn pubsub(
        spec: &PubSubSpec,
        job: &str,
        shard: ShardId,
        latency: Option<Histogram>,
    ) -> Result<StreamSink, KafkaFailure> {
        let handle = runtime()?;
        let client = PubSubClient::connect(&spec.topic).map_err(|message| KafkaFailure {
            message,
            retryable: false,
        })?;
        Self::with(
            Target::PubSub(client),
            handle,
            &spec.key,
            spec.ordered,
            spec.checkpoint_events,
            job,
            shard,
            latency,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn with(
        target: Target,
        handle: tokio::runtime::Handle,
        key: &KafkaKey,
        ordered: bool,
        checkpoint_events: u64,
        job: &str,
        shard: ShardId,
        latency: Option<Histogram>,
    ) -> Result<StreamSink, KafkaFailure> {
        let key_path = match key {
            KafkaKey::Path(p) => Some(Path::parse(p).map_err(|e| KafkaFailure {
                message: format!("--key {p}: {e}"),
                retryable: false,
            })?),
            _ => None,
        };
        let (per_call, _) = target.limits();
        let (tx, rx) = mpsc::channel();
        Ok(StreamSink {
            target,
            handle,
            key: key.clone(),
            key_path,
            wrap: false,
            ordered,
            job: job.to_string(),
            shard,
            batch: Vec::new(),
            batch_bytes: 0,
            batch_keys: HashSet::new(),
            batch_since: None,
            put: 0,
            acknowledged: 0,
            calls_in_flight: 0,
            max_in_flight: checkpoint_events.max(1),
            batch_cap: per_call.min(checkpoint_events.max(1) as usize),
            stop: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            done: Default::default(),
            positions: VecDeque::new(),
            finished_to: None,
            retries: Arc::new(AtomicU64::new(0)),
            failure: None,
            tx,
            rx,
            latency,
        })
    }

    /// The record for one event, or why it cannot be one (too large, a key or attribute the
    /// service refuses). Deterministic, so every attempt refuses the same events.
    pub fn record(
        &self,
        row: &Row<'_>,
        value: &str,
        source_key: &str,
        at: Position,
    ) -> Result<Record, Refusal> {
        match &self.target {
            Target::Kinesis(_) => self.kinesis_record(row, value, source_key, at),
            Target::PubSub(_) => self.pubsub_record(row, value, source_key, at),
        }
    }

    fn kinesis_record(
        &self,
        row: &Row<'_>,
        value: &str,
        source_key: &str,
        at: Position,
    ) -> Result<Record, Refusal> {
        let key = match self.key_of(row, value) {
            Some(k) if !k.is_empty() => k,
            _ => place_key(self.shard, at),
        };
        let chars = key.chars().count();
        if chars > MAX_KEY_CHARS {
            return Err((
                "kinesis_key",
                format!(
                    "partition key of {chars} characters; Kinesis takes at most {MAX_KEY_CHARS}"
                ),
            ));
        }
        let data = if self.wrap {
            wrap_lineage(&self.job, source_key, at.1, row.event_id(), value)
        } else {
            value.as_bytes().to_vec()
        };
        let size = data.len() + key.len();
        if size > MAX_RECORD_BYTES {
            return Err((
                "kinesis_too_large",
                format!(
                    "a Kinesis record of {size} bytes (data and partition key); the most is \
                     {MAX_RECORD_BYTES}"
                ),
            ));
        }
        Ok(Record {
            data: data.into(),
            key,
            attributes: Vec::new(),
        })
    }

    fn pubsub_record(
        &self,
        row: &Row<'_>,
        value: &str,
        source_key: &str,
        at: Position,
    ) -> Result<Record, Refusal> {
        // Ordering keys only with --ordered (a message without one is delivered in any order).
        let key = if self.ordered {
            self.key_of(row, value).unwrap_or_default()
        } else {
            String::new()
        };
        if key.len() > PUBSUB_MAX_ATTRIBUTE {
            return Err((
                "pubsub_key",
                format!(
                    "ordering key of {} bytes; Pub/Sub takes at most {PUBSUB_MAX_ATTRIBUTE}",
                    key.len()
                ),
            ));
        }
        let mut attributes = vec![
            (ATTR_JOB.to_string(), self.job.clone()),
            (ATTR_SOURCE_KEY.to_string(), source_key.to_string()),
            (ATTR_OFFSET.to_string(), at.1.to_string()),
        ];
        if let Some(id) = row.event_id() {
            attributes.push((ATTR_EVENT_ID.to_string(), id.to_string()));
        }
        if let Some((name, v)) = attributes
            .iter()
            .find(|(_, v)| v.len() > PUBSUB_MAX_ATTRIBUTE)
        {
            return Err((
                "pubsub_attribute",
                format!(
                    "attribute {name} of {} bytes; Pub/Sub takes at most {PUBSUB_MAX_ATTRIBUTE}",
                    v.len()
                ),
            ));
        }
        let record = Record {
            data: bytes::Bytes::copy_from_slice(value.as_bytes()),
            key,
            attributes,
        };
        if record.size() > PUBSUB_MAX_BYTES {
            return Err((
                "pubsub_too_large",
                format!(
                    "a Pub/Sub message of {} bytes (data, attributes, ordering key); the most a \
                     replay sends is {PUBSUB_MAX_BYTES}",
                    record.size()
                ),
            ));
        }
        Ok(record)
    }

    fn key_of(&self, row: &Row<'_>, text: &str) -> Option<String> {
        crate::kafka::key_of(&self.key, self.key_path.as_ref(), row, text).map(|k| k.into_owned())
    }

    /// Queues one record; `after` is the position just after its event (the checkpoint's unit).
    /// Waits while the attempt has its most records or calls in flight.
    pub fn send(&mut self, record: Record, after: Position) -> Result<(), KafkaFailure> {
        self.collect(false)?;
        let size = record.size();
        let (_, bytes_per_call) = self.target.limits();
        let per_call = self.batch_cap;
        // Kinesis may fail part of a call: with --ordered, one record per key per call, so a
        // record sent again never lands after a later one of its key. (A Pub/Sub publish is
        // whole or nothing and keeps its messages' order.)
        let repeats_key = self.ordered
            && matches!(self.target, Target::Kinesis(_))
            && self.batch_keys.contains(&record.key);
        if self.batch.len() >= per_call || self.batch_bytes + size > bytes_per_call || repeats_key {
            self.dispatch()?;
        }
        while self.put - self.done.count >= self.max_in_flight {
            self.collect(true)?;
        }
        if self.ordered && matches!(self.target, Target::Kinesis(_)) {
            self.batch_keys.insert(record.key.clone());
        }
        let seq = self.put;
        self.put += 1;
        self.positions.push_back((seq, after));
        self.batch_bytes += size;
        self.batch.push(Pending { seq, record });
        let since = *self.batch_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= LINGER {
            self.dispatch()?;
        }
        Ok(())
    }

    /// Sends the batch as one call (with its retries) once a call slot is free.
    fn dispatch(&mut self) -> Result<(), KafkaFailure> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let slots = if self.ordered { 1 } else { CALLS_IN_FLIGHT };
        while self.calls_in_flight >= slots {
            self.collect(true)?;
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        self.batch_keys.clear();
        self.batch_since = None;
        let (seqs, records): (Vec<u64>, Vec<Record>) =
            batch.into_iter().map(|p| (p.seq, p.record)).unzip();
        let target = self.target.clone();
        let retries = self.retries.clone();
        let stop = self.stop.clone();
        let tx = self.tx.clone();
        self.calls_in_flight += 1;
        self.handle.spawn(async move {
            let started = Instant::now();
            let result = send_all(&target, records, &retries, &stop).await;
            let _ = tx.send(Completion {
                seqs,
                latency: started.elapsed(),
                result,
            });
        });
        Ok(())
    }

    /// Takes in finished calls (waiting for one when `wait`); the first failure ends the
    /// attempt.
    fn collect(&mut self, wait: bool) -> Result<(), KafkaFailure> {
        if let Some(e) = &self.failure {
            return Err(failure(e));
        }
        let mut block = wait;
        loop {
            let next = if block {
                block = false;
                match self
                    .rx
                    .recv_timeout(NO_PROGRESS_LIMIT + Duration::from_secs(30))
                {
                    Ok(c) => Some(c),
                    Err(_) => {
                        return Err(KafkaFailure {
                            message: format!(
                                "internal error: a call to {} never finished",
                                self.target.describe()
                            ),
                            retryable: true,
                        });
                    }
                }
            } else {
                self.rx.try_recv().ok()
            };
            let Some(c) = next else { break };
            self.calls_in_flight -= 1;
            match c.result {
                Ok(()) => {
                    if let Some(h) = &self.latency {
                        h.observe(c.latency.as_secs_f64());
                    }
                    self.acknowledged += c.seqs.len() as u64;
                    for s in c.seqs {
                        self.done.mark(s);
                    }
                }
                Err(e) => {
                    let f = failure(&e);
                    self.failure = Some(e);
                    return Err(f);
                }
            }
        }
        Ok(())
    }

    /// The position after the last record of the acknowledged prefix (the checkpoint).
    pub fn finished_position(&mut self) -> Option<Position> {
        let _ = self.collect(false);
        let below = self.done.below;
        while let Some(&(seq, pos)) = self.positions.front() {
            if seq >= below {
                break;
            }
            self.finished_to = Some(pos);
            self.positions.pop_front();
        }
        self.finished_to
    }

    pub fn put(&self) -> u64 {
        self.put
    }

    pub fn acknowledged(&self) -> u64 {
        self.acknowledged
    }

    /// Sends what is queued and waits until every record is acknowledged, or the first failure.
    pub fn finish(mut self) -> Result<Finished, KafkaFailure> {
        self.dispatch()?;
        while self.calls_in_flight > 0 {
            self.collect(true)?;
        }
        Ok(Finished {
            put: self.put,
            acknowledged: self.acknowledged,
            retries: self.retries.load(Ordering::Relaxed),
        })
    }
}

impl Drop for StreamSink {
    fn drop(&mut self) {
        // Calls still retrying for a finished or failed attempt stop at their next try.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A partition key for a record without one: its place in the archive (spreads the records
/// evenly over the stream's shards; the same record gets the same key in every attempt).
fn place_key(shard: ShardId, at: Position) -> String {
    format!("{shard}/{}/{}", at.0, at.1)
}

/// `{"rewind":{"job":…,"source_key":…,"offset":…,"event_id":…},"event":EVENT}`: the event's
/// bytes kept exactly inside.
pub fn wrap_lineage(
    job: &str,
    source_key: &str,
    offset: u64,
    event_id: Option<&str>,
    event: &str,
) -> Vec<u8> {
    let mut lineage = serde_json::json!({
        "job": job,
        "source_key": source_key,
        "offset": offset,
    });
    if let Some(id) = event_id {
        lineage["event_id"] = serde_json::Value::String(id.to_string());
    }
    let mut out = Vec::with_capacity(event.len() + 128);
    out.extend_from_slice(b"{\"rewind\":");
    out.extend_from_slice(lineage.to_string().as_bytes());
    out.extend_from_slice(b",\"event\":");
    out.extend_from_slice(event.as_bytes());
    out.push(b'}');
    out
}

impl Target {
    /// One call with `records`: each record's outcome in order (`None`: taken; else the
    /// service's code and message), or why the whole call failed. A Pub/Sub publish is whole
    /// or nothing, so its outcome is all taken or an error.
    async fn call(&self, records: &[Record]) -> Result<PutOutcome, KinesisError> {
        match self {
            Target::Kinesis(client) => {
                let entries: Vec<Entry> = records
                    .iter()
                    .map(|r| Entry {
                        data: r.data.clone(),
                        key: r.key.clone(),
                    })
                    .collect();
                client.put_records(&entries).await
            }
            Target::PubSub(client) => {
                let messages: Vec<Message> = records
                    .iter()
                    .map(|r| Message {
                        data: r.data.clone(),
                        attributes: r.attributes.clone(),
                        ordering_key: r.key.clone(),
                    })
                    .collect();
                client.publish(&messages).await?;
                Ok(vec![None; records.len()])
            }
        }
    }
}

/// Sends `records` until each is acknowledged: the records a call failed for the moment (a
/// Kinesis record throttled within its call, or a whole call refused: throttling, 5xx, a reset)
/// are sent again, and counted, after a jittered backoff that doubles while nothing gets
/// through. Fails on a fatal error, when the attempt has ended, or when nothing got through for
/// [`NO_PROGRESS_LIMIT`].
async fn send_all(
    target: &Target,
    mut records: Vec<Record>,
    retries: &AtomicU64,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<(), KinesisError> {
    let backoff = rewind_s3::RetryPolicy {
        max_attempts: u32::MAX,
        base: BACKOFF_FIRST,
        cap: BACKOFF_MAX,
    };
    // Failed calls in a row since something last got through.
    let mut failures = 0u32;
    let mut progress = Instant::now();
    let mut last: Option<String> = None;
    let mut calls = 0u64;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(KinesisError {
                class: ErrorClass::Transient,
                message: "the attempt ended before this call was acknowledged".into(),
            });
        }
        calls += 1;
        match target.call(&records).await {
            Ok(outcome) => {
                let before = records.len();
                let mut again = Vec::new();
                for (record, result) in records.into_iter().zip(outcome) {
                    let Some((code, message)) = result else {
                        continue;
                    };
                    if rewind_s3::kinesis::class_of(&code) == ErrorClass::Fatal {
                        return Err(KinesisError {
                            class: ErrorClass::Fatal,
                            message: format!("sending to {}: {code}: {message}", target.describe()),
                        });
                    }
                    last = Some(format!("{code}: {message}"));
                    again.push(record);
                }
                if again.is_empty() {
                    return Ok(());
                }
                if again.len() < before {
                    progress = Instant::now();
                    failures = 0;
                }
                records = again;
            }
            Err(e) if e.class == ErrorClass::Fatal => return Err(e),
            Err(e) => last = Some(e.message),
        }
        if progress.elapsed() >= NO_PROGRESS_LIMIT {
            return Err(KinesisError {
                class: ErrorClass::Transient,
                message: format!(
                    "nothing of a call was acknowledged by {} for {} s ({calls} calls); last \
                     error: {}",
                    target.describe(),
                    NO_PROGRESS_LIMIT.as_secs(),
                    last.unwrap_or_default()
                ),
            });
        }
        retries.fetch_add(records.len() as u64, Ordering::Relaxed);
        failures = failures.saturating_add(1);
        tokio::time::sleep(backoff.delay(failures)).await;
    }
}

/// The runtime of the calling (blocking) thread.
fn runtime() -> Result<tokio::runtime::Handle, KafkaFailure> {
    tokio::runtime::Handle::try_current().map_err(|_| KafkaFailure {
        message: "internal error: the stream sinks run inside a tokio runtime".into(),
        retryable: false,
    })
}

fn block_on<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().expect("the runtime runs the task")
}

/// The stream answers and can take records: it exists, is ACTIVE or UPDATING, and the
/// credentials may describe it. Blocking (runs on its own runtime).
pub fn preflight(spec: &KinesisSpec, timeout: Duration) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting a runtime for the Kinesis preflight: {e}"))?;
    let stream = spec.stream.clone();
    let info = rt.block_on(async {
        let client = rewind_s3::kinesis::connect(
            &spec.stream,
            spec.region.as_deref(),
            spec.endpoint_url.as_deref(),
        )
        .await;
        tokio::time::timeout(timeout, client.describe()).await
    });
    match info {
        Err(_) => Err(format!(
            "Kinesis stream {stream}: no answer within {} s{}",
            timeout.as_secs(),
            spec.endpoint_url
                .as_deref()
                .map(|u| format!(" from {u}"))
                .unwrap_or_default()
        )),
        Ok(Err(e)) => Err(e.message),
        Ok(Ok(i)) if i.status == "ACTIVE" || i.status == "UPDATING" => Ok(()),
        Ok(Ok(i)) => Err(format!(
            "Kinesis stream {stream} is {}: it takes records when ACTIVE",
            i.status
        )),
    }
}

/// The topic answers: it exists and the credentials may see it. Blocking (runs on its own
/// runtime).
pub fn preflight_pubsub(spec: &PubSubSpec, timeout: Duration) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting a runtime for the Pub/Sub preflight: {e}"))?;
    let client = PubSubClient::connect(&spec.topic)?;
    match rt.block_on(async { tokio::time::timeout(timeout, client.describe()).await }) {
        Err(_) => Err(format!(
            "Pub/Sub topic {}: no answer within {} s",
            spec.topic,
            timeout.as_secs()
        )),
        Ok(Err(e)) => Err(e.message),
        Ok(Ok(())) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_records_keep_the_event_exactly() {
        let event = r#"{"event_id":"e1","data":{"a":1.50,"s":"\u00e9"}}"#;
        let w = wrap_lineage("job1", "org/2024/01/a.json", 42, Some("e1"), event);
        let v: serde_json::Value = serde_json::from_slice(&w).unwrap();
        assert_eq!(v["rewind"]["job"], "job1");
        assert_eq!(v["rewind"]["source_key"], "org/2024/01/a.json");
        assert_eq!(v["rewind"]["offset"], 42);
        assert_eq!(v["rewind"]["event_id"], "e1");
        // The event's own bytes, escapes and number spellings included.
        let text = String::from_utf8(w).unwrap();
        assert!(text.ends_with(&format!(",\"event\":{event}}}")), "{text}");
    }
}
