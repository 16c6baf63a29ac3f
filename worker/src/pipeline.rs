//! One shard attempt, start to end: list the hour prefix, stream and decode each object,
//! route every event to exactly one outcome, write the outputs and the shard manifest.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rewind_common::job::SinkSpec;
use rewind_common::job::{FlowCounts, ObjectStats, OutputKeys, ShardManifest, ShardPlan};
use rewind_common::shard_store::ShardCounts;
use rewind_common::storage::{IoStats, ObjectMeta, ObjectSource, OutputStore, StorageError};
use rewind_common::{Hour, JobSpec, ShardId};

use crate::decode::{Decoder, DecoderConfig, Item};
use crate::kafka::{KafkaFailure, KafkaSink};
use crate::route::{Outcome, Router, Scratch, Seen};
use crate::sink::{FailedRecord, FailedSink, ParquetSink, SinkError};

/// Live counters shared by every worker of a process, for progress display.
#[derive(Debug, Default)]
pub struct Progress {
    pub objects: AtomicU64,
    pub bytes: AtomicU64,
    pub recovered: AtomicU64,
    pub filtered: AtomicU64,
    pub failed: AtomicU64,
    pub unrecoverable: AtomicU64,
    /// Kafka: records handed to the producer and acknowledged (updated once per object).
    pub produced: AtomicU64,
    pub acknowledged: AtomicU64,
    /// What each flow did, by flow name (updated once per object).
    pub flows: std::sync::Mutex<BTreeMap<String, FlowCounts>>,
}

/// Why a shard attempt failed, and whether another attempt may succeed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ShardError {
    pub message: String,
    pub retryable: bool,
}

impl ShardError {
    fn storage(context: &str, e: &StorageError) -> ShardError {
        ShardError {
            message: format!("{context}: {e}"),
            retryable: e.is_retryable(),
        }
    }

    /// A read that failed mid-object: the store's error class decides (an object changed since
    /// planning is final; a connection that stayed down is worth another attempt).
    fn read(key: &str, e: io::Error) -> ShardError {
        let retryable = match e.get_ref().and_then(|x| x.downcast_ref::<StorageError>()) {
            Some(s) => s.is_retryable(),
            None => true,
        };
        ShardError {
            message: format!("reading {key}: {e}"),
            retryable,
        }
    }

    fn kafka(e: KafkaFailure) -> ShardError {
        ShardError {
            message: e.message,
            retryable: e.retryable,
        }
    }

    fn sink(e: SinkError) -> ShardError {
        let retryable = match &e {
            SinkError::Storage(s) => s.is_retryable(),
            _ => true,
        };
        ShardError {
            message: format!("writing output: {e}"),
            retryable,
        }
    }
}

/// Where a shard attempt reads and writes.
#[derive(Clone)]
pub struct ShardEnv {
    pub spec: Arc<JobSpec>,
    pub source: Arc<dyn ObjectSource>,
    pub output: Arc<dyn OutputStore>,
    pub failed_output: Arc<dyn OutputStore>,
    pub unrecoverable_output: Arc<dyn OutputStore>,
    pub progress: Arc<Progress>,
    pub cancel: Arc<AtomicBool>,
    /// The job's rate limit, shared by its shards in this process.
    pub throttle: Option<Arc<crate::throttle::Throttle>>,
    /// Where the Kafka sink records each acknowledgement's latency (the worker's metric).
    pub produce_latency: Option<prometheus_client::metrics::histogram::Histogram>,
}

/// The compression of an object, detected from its first bytes (names can lie).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    None,
    Gzip,
    Zstd,
}

impl Codec {
    pub fn detect(head: &[u8]) -> Codec {
        match head {
            [0x1f, 0x8b, ..] => Codec::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Codec::Zstd,
            _ => Codec::None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
        }
    }
}

/// Counts the bytes read through it (the stored, possibly compressed, bytes).
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Opens an object as a stream of its decompressed bytes.
pub fn open_decoded(mut raw: Box<dyn Read + Send>) -> io::Result<(Codec, Box<dyn Read + Send>)> {
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < head.len() {
        match raw.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let codec = Codec::detect(&head[..got]);
    let stream = io::Cursor::new(head[..got].to_vec()).chain(raw);
    let reader: Box<dyn Read + Send> = match codec {
        Codec::None => Box::new(stream),
        Codec::Gzip => Box::new(flate2::read::MultiGzDecoder::new(
            io::BufReader::with_capacity(256 << 10, stream),
        )),
        Codec::Zstd => Box::new(zstd::stream::read::Decoder::new(stream)?),
    };
    Ok((codec, reader))
}

/// Whether an object named like `dataplatform-<org>-<seq>-…` belongs to another org.
/// Objects with other names are read (a per-org bucket holds only that org's objects).
fn names_other_org(key: &str, org: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or(key);
    match name.strip_prefix("dataplatform-") {
        Some(rest) => {
            // The org id may itself contain '-': the name is <org>-<seq>-<YYYY>-…, so match the
            // job's org followed by '-' and a digit (the sequence number).
            match rest.get(..org.len()) {
                Some(p) if p.eq_ignore_ascii_case(org) => {
                    !rest[org.len()..].starts_with('-')
                        || !rest[org.len() + 1..].starts_with(|c: char| c.is_ascii_digit())
                }
                _ => true,
            }
        }
        None => false,
    }
}

/// Runs one attempt of one shard and writes its manifest. Outputs of a failed attempt are left
/// for the caller to discard (they are never referenced by a committed manifest).
pub fn run_shard(
    env: &ShardEnv,
    shard: ShardId,
    attempt: u32,
    decoder: DecoderConfig,
) -> Result<(String, ShardManifest), ShardError> {
    let spec = &env.spec;
    let keys = OutputKeys::new(&spec.job);
    let prefix = spec.layout.prefix(shard.hour(), &spec.org);
    // The stores of this attempt count their retries here, for the shard's counts.
    let io = Arc::new(IoStats::default());
    let source = env.source.with_stats(io.clone());
    let output = env.output.with_stats(io.clone());
    let failed_store = env.failed_output.with_stats(io.clone());
    let listed = pinned_objects(env, source.as_ref(), output.as_ref(), shard)?;
    let router = Router::new(spec, decoder.max_depth).map_err(|message| ShardError {
        message,
        retryable: false,
    })?;
    let mut scratch = Scratch::default();
    let mut seen = router.dedup().map(Seen::new);
    // Cross-shard dedup reads the hours before, whatever the sink: the earliest hour keeps the
    // event. (A single-object replay plans no other objects, so its look-back reads nothing.)
    if let Some(seen) = seen.as_mut() {
        prescan(
            env,
            &router,
            source.as_ref(),
            output.as_ref(),
            shard,
            decoder,
            seen,
        )?;
    }

    let (data_keys, org) = (keys.clone(), spec.org.clone());
    let mut sink = ParquetSink::new(output.as_ref(), move |n| {
        data_keys.data_file(&org, shard, attempt, n)
    });
    let mut kafka = match &spec.sink {
        SinkSpec::Parquet => None,
        SinkSpec::Kafka(k) => {
            let latency = env.produce_latency.clone();
            Some(
                KafkaSink::new(k, spec.job.as_str(), shard, attempt, latency)
                    .map_err(ShardError::kafka)?,
            )
        }
    };
    let checkpoint_key = keys.checkpoint(shard);
    let mut checkpoints = Checkpoints {
        every: match &spec.sink {
            SinkSpec::Kafka(k) if k.delivery == rewind_common::job::Delivery::AtLeastOnce => {
                k.checkpoint_events
            }
            _ => u64::MAX,
        },
        ..Checkpoints::default()
    };
    let mut failed = FailedSink::new(failed_store.as_ref(), keys.failed_file(shard, attempt));
    let unrecoverable_store = env.unrecoverable_output.with_stats(io.clone());
    let mut unrecoverable = FailedSink::new(
        unrecoverable_store.as_ref(),
        keys.unrecoverable_file(shard, attempt),
    );
    let mut counts = ShardCounts::default();
    let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
    let mut filtered_by: BTreeMap<String, u64> = BTreeMap::new();
    let flows = router.flows();
    let mut per_flow: Vec<FlowCounts> = vec![FlowCounts::default(); flows.len()];
    let mut objects = Vec::new();
    let mut skipped = Vec::new();
    let p = &env.progress;

    let (todo, other_org): (Vec<ObjectMeta>, Vec<ObjectMeta>) = listed
        .into_iter()
        .partition(|o| !names_other_org(&o.key, spec.org.as_str()));
    // A retried Kafka replay produces from where the last attempt's acknowledgements reached.
    let resume = match &spec.sink {
        SinkSpec::Kafka(k) if k.delivery == rewind_common::job::Delivery::ExactlyOnce => {
            // Committed to Kafka already (died before the shard's commit): produce nothing.
            crate::kafka::marker_exists(k, spec.job.as_str(), shard, &env.cancel)
                .map_err(ShardError::kafka)?
                .then_some((todo.len(), 0))
        }
        SinkSpec::Kafka(_) => read_checkpoint(output.as_ref(), &checkpoint_key, &todo),
        SinkSpec::Parquet => None,
    };
    let mut resumed = 0u64;
    counts.objects_skipped = other_org.len() as u64;
    skipped.extend(other_org.into_iter().map(|o| o.key));
    // Objects are opened `read_ahead` ahead of the one being decoded: for S3 each open starts
    // its GET, so several downloads run while this thread decodes.
    let ahead = source.read_ahead();
    let mut opened: VecDeque<Result<Box<dyn Read + Send>, StorageError>> = VecDeque::new();
    let mut next_open = 0;

    for (i, object) in todo.iter().enumerate() {
        if env.cancel.load(Ordering::Relaxed) {
            return Err(ShardError {
                message: "cancelled".into(),
                retryable: false,
            });
        }
        while next_open < todo.len() && next_open <= i + ahead {
            opened.push_back(source.open(&todo[next_open]));
            next_open += 1;
        }
        let raw = opened
            .pop_front()
            .unwrap_or_else(|| source.open(object))
            .map_err(|e| ShardError::storage(&format!("opening {}", object.key), &e))?;
        let stored = Arc::new(AtomicU64::new(0));
        let counted = Box::new(Counting {
            inner: raw,
            count: stored.clone(),
        });
        let (codec, reader) =
            open_decoded(counted).map_err(|e| ShardError::read(&object.key, e))?;
        let mut stats = ObjectStats {
            key: object.key.clone(),
            size: object.size,
            etag: object.etag.clone(),
            version: object.version.clone(),
            compression: codec.name().into(),
            ..ObjectStats::default()
        };
        let before = counts.clone();
        let flows_before = per_flow.clone();
        let mut dec = Decoder::new(reader, decoder);
        loop {
            let item = dec.next().map_err(|e| ShardError::read(&object.key, e))?;
            let Some(item) = item else { break };
            counts.decoded += 1;
            match item {
                Item::Event(ev) => {
                    stats.events += 1;
                    let flow_name = |f: Option<usize>| f.map(|f| flows.name(f));
                    match router.route(&ev, &mut scratch, seen.as_mut()) {
                        Outcome::Recovered {
                            row,
                            repaired,
                            flow,
                        } => {
                            if let Some(k) = kafka.as_mut() {
                                // Acknowledged in an earlier attempt: counted, not produced.
                                let done_before = resume.is_some_and(|r| (i, ev.offset) < r);
                                resumed += u64::from(done_before);
                                let value = repaired.unwrap_or(ev.text());
                                let after = (i, ev.offset + ev.bytes().len() as u64);
                                let refused = if done_before {
                                    None
                                } else {
                                    if let Some(t) = &env.throttle {
                                        t.acquire(value.len() as u64);
                                    }
                                    k.send(&row, value, &object.key, ev.offset, after)
                                        .map_err(ShardError::kafka)?
                                };
                                if !done_before {
                                    checkpoints.maybe_write(
                                        k,
                                        output.as_ref(),
                                        &checkpoint_key,
                                        attempt,
                                        &todo,
                                    );
                                }
                                if let Some(reason) = refused {
                                    counts.failed += 1;
                                    kafka_rejected(
                                        &mut failed,
                                        &mut by_reason,
                                        &object.key,
                                        ev.offset,
                                        ev.bytes(),
                                        &reason,
                                    )?;
                                    continue;
                                }
                            } else {
                                sink.rows().append(&row);
                            }
                            counts.recovered += 1;
                            if let Some(f) = flow {
                                per_flow[f].matched += 1;
                                if repaired.is_some() {
                                    per_flow[f].repaired += 1;
                                    counts.repaired += 1;
                                }
                            }
                        }
                        Outcome::Filtered { reason, flow } => {
                            counts.filtered += 1;
                            *filtered_by.entry(reason.into()).or_default() += 1;
                            if reason == "duplicate" {
                                counts.duplicates += 1;
                            }
                            if let Some(f) = flow {
                                per_flow[f].matched += 1;
                                if reason == "flow" {
                                    per_flow[f].filtered += 1;
                                }
                            }
                        }
                        Outcome::Failed {
                            code,
                            reason,
                            flow,
                            step,
                        } => {
                            counts.failed += 1;
                            *by_reason.entry(code.into()).or_default() += 1;
                            if let Some(f) = flow {
                                per_flow[f].matched += 1;
                                if code == "flow_step" {
                                    per_flow[f].failed += 1;
                                }
                            }
                            let step = flow.zip(step).map(|(f, s)| (s, flows.step_op(f, s)));
                            let rec = FailedRecord::new(
                                &object.key,
                                ev.offset,
                                ev.bytes().len() as u64,
                                code,
                                &reason,
                                ev.bytes(),
                                false,
                            )
                            .with_flow(flow_name(flow), step);
                            failed.write(&rec).map_err(ShardError::sink)?;
                        }
                        Outcome::Unrecoverable { reason, flow } => {
                            counts.unrecoverable += 1;
                            if let Some(f) = flow {
                                per_flow[f].matched += 1;
                                per_flow[f].unrecoverable += 1;
                            }
                            let rec = FailedRecord::new(
                                &object.key,
                                ev.offset,
                                ev.bytes().len() as u64,
                                "unrecoverable",
                                &reason,
                                ev.bytes(),
                                false,
                            )
                            .with_flow(flow_name(flow), None);
                            unrecoverable.write(&rec).map_err(ShardError::sink)?;
                        }
                    }
                }
                Item::Damaged(d) => {
                    stats.damaged += 1;
                    counts.failed += 1;
                    let code = d.damage.code();
                    *by_reason.entry(code.into()).or_default() += 1;
                    let reason = d.damage.to_string();
                    let rec = FailedRecord::new(
                        &object.key,
                        d.offset,
                        d.length,
                        code,
                        &reason,
                        d.raw,
                        d.raw_truncated,
                    );
                    failed.write(&rec).map_err(ShardError::sink)?;
                }
            }
            sink.maybe_flush().map_err(ShardError::sink)?;
        }
        stats.decoded_bytes = dec.bytes_read();
        let stored_bytes = stored.load(Ordering::Relaxed);
        counts.objects += 1;
        counts.bytes += stored_bytes;
        // Published per object, keeping atomics out of the per-event loop.
        p.objects.fetch_add(1, Ordering::Relaxed);
        p.bytes.fetch_add(stored_bytes, Ordering::Relaxed);
        p.recovered
            .fetch_add(counts.recovered - before.recovered, Ordering::Relaxed);
        p.filtered
            .fetch_add(counts.filtered - before.filtered, Ordering::Relaxed);
        p.failed
            .fetch_add(counts.failed - before.failed, Ordering::Relaxed);
        p.unrecoverable.fetch_add(
            counts.unrecoverable - before.unrecoverable,
            Ordering::Relaxed,
        );
        if let Some(k) = &kafka {
            p.produced.store(k.produced(), Ordering::Relaxed);
            p.acknowledged.store(k.acknowledged(), Ordering::Relaxed);
        }
        if per_flow != flows_before {
            let mut live = p.flows.lock().unwrap_or_else(|e| e.into_inner());
            for (i, (now, was)) in per_flow.iter().zip(&flows_before).enumerate() {
                let c = live.entry(flows.name(i).to_string()).or_default();
                c.matched += now.matched - was.matched;
                c.repaired += now.repaired - was.repaired;
                c.failed += now.failed - was.failed;
                c.unrecoverable += now.unrecoverable - was.unrecoverable;
                c.filtered += now.filtered - was.filtered;
            }
        }
        objects.push(stats);
    }
    // Every decoded item has exactly one outcome.
    let outcomes = counts.recovered + counts.filtered + counts.failed + counts.unrecoverable;
    if outcomes != counts.decoded {
        return Err(ShardError {
            message: format!(
                "internal error: {} items decoded but {outcomes} outcomes counted",
                counts.decoded
            ),
            retryable: false,
        });
    }
    // Last look before the files become visible: a stopped attempt (cancelled job, lost lease,
    // shutdown) drops its unfinished files here instead of publishing them.
    if env.cancel.load(Ordering::Relaxed) {
        return Err(ShardError {
            message: "cancelled".into(),
            retryable: false,
        });
    }
    if let Some(k) = kafka {
        let (produced, acknowledged, refused) = k.finish().map_err(ShardError::kafka)?;
        let p = &env.progress;
        p.produced.store(produced, Ordering::Relaxed);
        p.acknowledged.store(acknowledged, Ordering::Relaxed);
        counts.produced = produced + resumed;
        counts.acknowledged = acknowledged + resumed;
        // Everything is acknowledged: a retry (a crash before the shard's commit) produces
        // nothing again.
        let end = rewind_common::job::KafkaCheckpoint {
            attempt,
            object_index: todo.len(),
            object_key: String::new(),
            offset: 0,
        };
        if let Ok(body) = serde_json::to_vec(&end) {
            let _ = output.put(&checkpoint_key, &body);
        }
        // Refused by the brokers after the fact: failed, not recovered.
        for r in &refused {
            counts.recovered -= 1;
            counts.failed += 1;
            kafka_rejected(
                &mut failed,
                &mut by_reason,
                &r.source_key,
                r.offset,
                &r.raw,
                &r.reason,
            )?;
        }
    }
    let files = sink.finish().map_err(ShardError::sink)?;
    let failed_file = failed.finish().map_err(ShardError::sink)?;
    let unrecoverable_file = unrecoverable.finish().map_err(ShardError::sink)?;
    counts.retries = io.retries.load(Ordering::Relaxed);
    counts.flows = per_flow
        .into_iter()
        .enumerate()
        .map(|(i, c)| (flows.name(i).to_string(), c))
        .collect();

    let manifest = ShardManifest {
        job: spec.job.clone(),
        shard,
        attempt,
        prefix,
        files,
        failed_file,
        unrecoverable_file,
        objects,
        skipped_objects: skipped,
        counts,
        failed_by_reason: by_reason,
        filtered_by_reason: filtered_by,
    };
    let key = keys.shard_manifest(shard, attempt);
    let body = serde_json::to_vec_pretty(&manifest).map_err(|e| ShardError {
        message: format!("serialising the shard manifest: {e}"),
        retryable: false,
    })?;
    output
        .put(&key, &body)
        .map_err(|e| ShardError::storage(&format!("writing {key}"), &e))?;
    Ok((key, manifest))
}

/// Writes the failed record of an event Kafka refused (too large, invalid) and counts its reason.
fn kafka_rejected(
    failed: &mut FailedSink<'_>,
    by_reason: &mut BTreeMap<String, u64>,
    source_key: &str,
    offset: u64,
    raw: &[u8],
    reason: &str,
) -> Result<(), ShardError> {
    *by_reason.entry("kafka_rejected".into()).or_default() += 1;
    let rec = FailedRecord::new(
        source_key,
        offset,
        raw.len() as u64,
        "kafka_rejected",
        reason,
        raw,
        false,
    );
    failed.write(&rec).map_err(ShardError::sink)
}

/// When a Kafka replay saves how far its acknowledgements reached.
#[derive(Default)]
struct Checkpoints {
    every: u64,
    sends: u64,
    last_write: Option<std::time::Instant>,
    sends_at_last: u64,
    written: Option<crate::kafka::Position>,
}

impl Checkpoints {
    /// Writes a checkpoint every `every` records or every second, when the acknowledged prefix
    /// moved. A failed write is logged: the replay goes on (a crash then repeats more).
    fn maybe_write(
        &mut self,
        sink: &mut KafkaSink,
        output: &dyn OutputStore,
        key: &str,
        attempt: u32,
        todo: &[ObjectMeta],
    ) {
        if self.every == u64::MAX {
            return;
        }
        self.sends += 1;
        let by_count = self.sends - self.sends_at_last >= self.every;
        if !self.sends.is_multiple_of(64) && !by_count {
            return;
        }
        let now = std::time::Instant::now();
        let by_time = self
            .last_write
            .is_none_or(|t| now.duration_since(t) >= std::time::Duration::from_secs(1));
        if !by_count && !by_time {
            return;
        }
        let Some(pos) = sink.finished_position() else {
            return;
        };
        if self.written == Some(pos) {
            return;
        }
        let cp = rewind_common::job::KafkaCheckpoint {
            attempt,
            object_index: pos.0,
            object_key: todo.get(pos.0).map(|o| o.key.clone()).unwrap_or_default(),
            offset: pos.1,
        };
        let written = serde_json::to_vec(&cp)
            .map_err(|e| e.to_string())
            .and_then(|body| output.put(key, &body).map_err(|e| e.to_string()));
        match written {
            Ok(_) => {
                self.written = Some(pos);
                self.last_write = Some(now);
                self.sends_at_last = self.sends;
            }
            Err(e) => tracing::warn!(key, error = %e, "writing a Kafka checkpoint failed"),
        }
    }
}

/// The checkpoint an earlier attempt left, when it still names this shard's objects.
fn read_checkpoint(
    output: &dyn OutputStore,
    key: &str,
    todo: &[ObjectMeta],
) -> Option<crate::kafka::Position> {
    let body = output.get(key).ok()??;
    let cp: rewind_common::job::KafkaCheckpoint = serde_json::from_slice(&body).ok()?;
    let at_end = cp.object_index == todo.len() && cp.object_key.is_empty();
    if at_end
        || todo
            .get(cp.object_index)
            .is_some_and(|o| o.key == cp.object_key)
    {
        Some((cp.object_index, cp.offset))
    } else {
        tracing::warn!(
            key,
            "ignoring a Kafka checkpoint that does not match the shard's objects"
        );
        None
    }
}

/// Cross-shard dedup: the events the previous `dedup_window_hours` hours of the job would
/// recover are marked seen, so this shard drops its copies and the earliest hour keeps the
/// event. Those hours are decoded and routed again (no output): dedup costs that extra read.
fn prescan(
    env: &ShardEnv,
    router: &Router,
    source: &dyn ObjectSource,
    output: &dyn OutputStore,
    shard: ShardId,
    decoder: DecoderConfig,
    seen: &mut Seen,
) -> Result<(), ShardError> {
    let spec = &env.spec;
    let mut scratch = Scratch::default();
    for back in 1..=i64::from(spec.treatment.dedup_window_hours) {
        let hour = Hour::from_epoch_hours(shard.hour().epoch_hours() - back);
        if hour < spec.range.first {
            break;
        }
        let objects = pinned_objects(env, source, output, ShardId(hour))?;
        for object in objects
            .iter()
            .filter(|o| !names_other_org(&o.key, spec.org.as_str()))
        {
            if env.cancel.load(Ordering::Relaxed) {
                return Err(ShardError {
                    message: "cancelled".into(),
                    retryable: false,
                });
            }
            let raw = source
                .open(object)
                .map_err(|e| ShardError::storage(&format!("opening {}", object.key), &e))?;
            let (_, reader) = open_decoded(raw).map_err(|e| ShardError::read(&object.key, e))?;
            let mut dec = Decoder::new(reader, decoder);
            while let Some(item) = dec.next().map_err(|e| ShardError::read(&object.key, e))? {
                if let Item::Event(ev) = item {
                    router.route(&ev, &mut scratch, Some(seen));
                }
            }
        }
    }
    Ok(())
}

/// The objects the shard was planned to read (listed now when planning could not list them).
fn pinned_objects(
    env: &ShardEnv,
    source: &dyn ObjectSource,
    output: &dyn OutputStore,
    shard: ShardId,
) -> Result<Vec<ObjectMeta>, ShardError> {
    // Written by the coordinator core at submit, one plan object per shard in the destination.
    let key = OutputKeys::new(&env.spec.job).shard_plan(shard);
    let body = output
        .get(&key)
        .map_err(|e| ShardError::storage(&format!("reading the shard plan {key}"), &e))?
        .ok_or_else(|| ShardError {
            message: format!("the shard plan {key} is missing from {}", output.describe()),
            retryable: false,
        })?;
    let plan = serde_json::from_slice::<ShardPlan>(&body).map_err(|e| ShardError {
        message: format!("the shard plan {key} is not valid: {e}"),
        retryable: false,
    })?;
    if plan.unlisted.is_none() {
        return Ok(plan.objects);
    }
    let mut objects = source.list(&plan.prefix).map_err(|e| {
        ShardError::storage(
            &format!("listing {} in {}", plan.prefix, source.describe()),
            &e,
        )
    })?;
    if let Some(key) = &env.spec.object {
        objects.retain(|o| &o.key == key);
    }
    Ok(objects)
}

/// Deletes everything a shard attempt wrote (a failed or fenced attempt). Best effort: what is
/// left is removed by the job commit's orphan sweep.
pub fn discard_attempt(
    env: &ShardEnv,
    manifest: Option<&ShardManifest>,
    shard: ShardId,
    attempt: u32,
) {
    let keys = OutputKeys::new(&env.spec.job);
    if let Some(m) = manifest {
        for f in &m.files {
            let _ = env.output.delete(&f.key);
        }
    }
    // Files finished before the attempt failed or was stopped: every data file of this attempt
    // sits under one prefix (`part-{shard}-a{attempt}-`).
    let first = keys.data_file(&env.spec.org, shard, attempt, 0);
    if let Some(prefix) = first.strip_suffix("0.zstd.parquet")
        && let Ok(files) = env.output.list(prefix)
    {
        for f in files {
            let _ = env.output.delete(&f.key);
        }
    }
    let _ = env.failed_output.delete(&keys.failed_file(shard, attempt));
    let _ = env
        .unrecoverable_output
        .delete(&keys.unrecoverable_file(shard, attempt));
    let _ = env.output.delete(&keys.shard_manifest(shard, attempt));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_of_other_orgs_are_recognised() {
        let k = "main_stream/2024/04/01/00/";
        assert!(!names_other_org(
            &format!("{k}dataplatform-TN-1-000001-2024-04-01-00-05-00-ab"),
            "TN-1"
        ));
        assert!(!names_other_org(
            &format!("{k}dataplatform-tn-1-000001-2024-04-01-00-05-00-ab.gz"),
            "TN-1"
        ));
        assert!(names_other_org(
            &format!("{k}dataplatform-TN-12-000001-2024-04-01-00-05-00-ab"),
            "TN-1"
        ));
        assert!(names_other_org(
            &format!("{k}dataplatform-XY-000001-2024-04-01-00-05-00-ab"),
            "TN-1"
        ));
        assert!(!names_other_org(&format!("{k}events-000001.json"), "TN-1"));
    }

    #[test]
    fn codecs_are_detected_by_magic_bytes() {
        assert_eq!(Codec::detect(&[0x1f, 0x8b, 8, 0]), Codec::Gzip);
        assert_eq!(Codec::detect(&[0x28, 0xb5, 0x2f, 0xfd]), Codec::Zstd);
        assert_eq!(Codec::detect(b"{\"a\""), Codec::None);
        assert_eq!(Codec::detect(b""), Codec::None);
    }
}
