//! The Kinesis sink: each recovered event is put as one record whose data is the event's bytes
//! (original, or repaired by a flow; or wrapped with its lineage, `--wrap-lineage`), with a
//! partition key as `--key` says. Records go out in PutRecords calls within the service's
//! limits (500 records, 5 MiB), several calls in flight; the records a call failed for the
//! moment (throughput exceeded, internal failure) are put again with backoff and counted, so a
//! throttled stream slows the shard instead of failing it. A shard commits only after every
//! record is acknowledged; its progress is checkpointed as for Kafka's at-least-once mode, so a
//! retried shard puts again at most what was in flight after the last checkpoint.
//!
//! Kinesis has no transactions and no headers: delivery is at-least-once, and lineage travels
//! in the data only when the job asks for the wrapping.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::Histogram;
use rewind_common::ShardId;
use rewind_common::job::{KafkaKey, KinesisSpec};
use rewind_flows::Path;
use rewind_s3::kinesis::{Entry, ErrorClass, KinesisClient, KinesisError};

use crate::kafka::{KafkaFailure, Position, Refusal};
use crate::record::Row;

/// PutRecords limits: records per call, bytes per call (data and keys), bytes per record.
pub const MAX_RECORDS_PER_CALL: usize = 500;
pub const MAX_BYTES_PER_CALL: usize = 5 << 20;
pub const MAX_RECORD_BYTES: usize = 1 << 20;
/// A partition key's most characters.
pub const MAX_KEY_CHARS: usize = 256;

/// Calls in flight per shard attempt (one with `--ordered`).
const CALLS_IN_FLIGHT: usize = 4;
/// A batch that has waited this long goes out however small (a throttled job's events trickle).
const LINGER: Duration = Duration::from_millis(100);
/// Without any record acknowledged for this long, the shard fails (retryably).
const NO_PROGRESS_LIMIT: Duration = Duration::from_secs(120);
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One record waiting for its call.
struct Pending {
    seq: u64,
    entry: Entry,
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

/// Puts one shard attempt's events.
pub struct KinesisSink {
    client: KinesisClient,
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
    /// Records allowed in flight (put, not acknowledged) before `send` waits.
    max_in_flight: u64,
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

impl KinesisSink {
    /// A sink for one shard attempt. Must be called on a thread of a tokio runtime (the
    /// pipeline's blocking threads are): the calls run on that runtime.
    pub fn new(
        spec: &KinesisSpec,
        job: &str,
        shard: ShardId,
        latency: Option<Histogram>,
    ) -> Result<KinesisSink, KafkaFailure> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| KafkaFailure {
            message: "internal error: the Kinesis sink runs inside a tokio runtime".into(),
            retryable: false,
        })?;
        let (stream, region, endpoint) = (
            spec.stream.clone(),
            spec.region.clone(),
            spec.endpoint_url.clone(),
        );
        let client = block_on(&handle, async move {
            rewind_s3::kinesis::connect(&stream, region.as_deref(), endpoint.as_deref()).await
        });
        let key_path = match &spec.key {
            KafkaKey::Path(p) => Some(Path::parse(p).map_err(|e| KafkaFailure {
                message: format!("--key {p}: {e}"),
                retryable: false,
            })?),
            _ => None,
        };
        let (tx, rx) = mpsc::channel();
        Ok(KinesisSink {
            client,
            handle,
            key: spec.key.clone(),
            key_path,
            wrap: spec.wrap_lineage,
            ordered: spec.ordered,
            job: job.to_string(),
            shard,
            batch: Vec::new(),
            batch_bytes: 0,
            batch_keys: HashSet::new(),
            batch_since: None,
            put: 0,
            acknowledged: 0,
            calls_in_flight: 0,
            max_in_flight: spec.checkpoint_events.max(MAX_RECORDS_PER_CALL as u64),
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

    /// The record for one event, or why it cannot be one (too large, a key Kinesis refuses).
    /// Deterministic, so every attempt refuses the same events.
    pub fn record(
        &self,
        row: &Row<'_>,
        value: &str,
        source_key: &str,
        at: Position,
    ) -> Result<Entry, Refusal> {
        let key = match self.key_of(row, value) {
            Some(k) if k.is_empty() => place_key(self.shard, at),
            Some(k) => k,
            None => place_key(self.shard, at),
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
        Ok(Entry {
            data: data.into(),
            key,
        })
    }

    fn key_of(&self, row: &Row<'_>, text: &str) -> Option<String> {
        match &self.key {
            KafkaKey::EventId => row.event_id().map(str::to_string),
            KafkaKey::Cid => row.cid().map(str::to_string),
            KafkaKey::None => None,
            KafkaKey::Path(_) => {
                let raw = self.key_path.as_ref()?.raw_get(text)??;
                match serde_json::from_str::<serde_json::Value>(raw) {
                    Ok(serde_json::Value::String(s)) => Some(s),
                    Ok(serde_json::Value::Null) | Err(_) => None,
                    Ok(_) => Some(raw.to_string()),
                }
            }
        }
    }

    /// Queues one record; `after` is the position just after its event (the checkpoint's unit).
    /// Waits while the attempt has its most records or calls in flight.
    pub fn send(&mut self, entry: Entry, after: Position) -> Result<(), KafkaFailure> {
        self.collect(false)?;
        let size = entry.data.len() + entry.key.len();
        let repeats_key = self.ordered && self.batch_keys.contains(&entry.key);
        if self.batch.len() >= MAX_RECORDS_PER_CALL
            || self.batch_bytes + size > MAX_BYTES_PER_CALL
            || repeats_key
        {
            self.dispatch()?;
        }
        while self.put - self.done.count >= self.max_in_flight {
            self.collect(true)?;
        }
        if self.ordered {
            self.batch_keys.insert(entry.key.clone());
        }
        let seq = self.put;
        self.put += 1;
        self.positions.push_back((seq, after));
        self.batch_bytes += size;
        self.batch.push(Pending { seq, entry });
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
        let (seqs, entries): (Vec<u64>, Vec<Entry>) =
            batch.into_iter().map(|p| (p.seq, p.entry)).unzip();
        let client = self.client.clone();
        let retries = self.retries.clone();
        let tx = self.tx.clone();
        self.calls_in_flight += 1;
        self.handle.spawn(async move {
            let started = Instant::now();
            let result = put_all(&client, entries, &retries).await;
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
                            message: "internal error: a Kinesis call never finished".into(),
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

/// Puts `entries` until each is acknowledged: the records a call failed for the moment are
/// put again (and counted) after a backoff that doubles while nothing gets through. Fails on a
/// fatal error, or when nothing got through for [`NO_PROGRESS_LIMIT`].
async fn put_all(
    client: &KinesisClient,
    mut entries: Vec<Entry>,
    retries: &AtomicU64,
) -> Result<(), KinesisError> {
    let mut backoff = BACKOFF_FIRST;
    let mut progress = Instant::now();
    let mut last: Option<String> = None;
    let mut calls = 0u64;
    loop {
        calls += 1;
        match client.put_records(&entries).await {
            Ok(outcome) => {
                let before = entries.len();
                let mut again = Vec::new();
                for (entry, result) in entries.into_iter().zip(outcome) {
                    let Some((code, message)) = result else {
                        continue;
                    };
                    if rewind_s3::kinesis::class_of(&code) == ErrorClass::Fatal {
                        return Err(KinesisError {
                            class: ErrorClass::Fatal,
                            message: format!(
                                "putting records into Kinesis stream {}: {code}: {message}",
                                client.stream()
                            ),
                        });
                    }
                    last = Some(format!("{code}: {message}"));
                    again.push(entry);
                }
                if again.is_empty() {
                    return Ok(());
                }
                if again.len() < before {
                    progress = Instant::now();
                    backoff = BACKOFF_FIRST;
                }
                entries = again;
            }
            Err(e) if e.class == ErrorClass::Fatal => return Err(e),
            Err(e) => last = Some(e.message),
        }
        if progress.elapsed() >= NO_PROGRESS_LIMIT {
            return Err(KinesisError {
                class: ErrorClass::Transient,
                message: format!(
                    "no record of a call was acknowledged by Kinesis stream {} for {} s ({calls} \
                     calls); last error: {}",
                    client.stream(),
                    NO_PROGRESS_LIMIT.as_secs(),
                    last.unwrap_or_default()
                ),
            });
        }
        retries.fetch_add(entries.len() as u64, Ordering::Relaxed);
        tokio::time::sleep(jitter(backoff)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Between half and all of `d` (so the shards of a throttled stream do not retry in step).
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos()) as u64;
    let half = d.as_micros() as u64 / 2;
    Duration::from_micros(half + nanos % (half + 1))
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

    #[test]
    fn jitter_stays_between_half_and_all() {
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(200));
            assert!(j >= Duration::from_millis(100) && j <= Duration::from_millis(200));
        }
    }
}
