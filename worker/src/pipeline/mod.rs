//! One shard attempt, start to end: read the shard's plan and its objects (`read`), decode
//! them, route every event to exactly one outcome and count it (`tally`), hand the recovered
//! ones to the sink (`out`: Parquet or Kafka behind one trait), write the failed and
//! unrecoverable records, finish the outputs and write the shard manifest.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rewind_common::job::{FlowCounts, ObjectStats, OutputKeys, ShardManifest, SinkSpec};
use rewind_common::output::staged;
use rewind_common::storage::{IoStats, ObjectMeta, ObjectSource, OutputStore, StorageError};
use rewind_common::{JobSpec, ShardId};

use crate::decode::{Decoder, DecoderConfig, Item};
use crate::kafka::KafkaFailure;
use crate::route::{Outcome, Router, Scratch, Seen};
use crate::sink::{FailedRecord, FailedSink, SinkError};

mod out;
mod parallel;
mod read;
mod tally;

pub use read::{Codec, open_decoded};

use out::{At, KafkaOut, ParquetOut, Sink, Stream, StreamOut, Taken};
use read::{ReadAhead, names_other_org, pinned_objects, prescan};
use tally::Tally;

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
    /// The attempt was stopped (cancelled job, lost lease, shutdown).
    pub(crate) fn cancelled() -> ShardError {
        ShardError {
            message: "cancelled".into(),
            retryable: false,
        }
    }

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
    /// Its tenant's replay budget (`--tenant-replay-*-per-sec`), shared by the tenant's
    /// attempts in this process.
    pub tenant_throttle: Option<Arc<crate::throttle::Throttle>>,
    /// Where the Kafka sink records each acknowledgement's latency (the worker's metric).
    pub produce_latency: Option<prometheus_client::metrics::histogram::Histogram>,
}

impl ShardEnv {
    /// The rate limits a replayed event waits for: the job's and its tenant's.
    pub(crate) fn throttles(&self) -> Vec<Arc<crate::throttle::Throttle>> {
        self.throttle
            .iter()
            .chain(&self.tenant_throttle)
            .cloned()
            .collect()
    }

    /// Stops this attempt and has it give its shard back uncounted (released, as a stopped
    /// attempt's is), for a reason that is not the shard's: `why` is logged. Its slot is then
    /// free for other shards, the one the attempt waits for among them.
    pub(crate) fn give_back(&self, why: String) -> ShardError {
        self.cancel.store(true, Ordering::Relaxed);
        ShardError {
            message: why,
            retryable: true,
        }
    }
}

/// Objects of a shard are decoded in parallel when they average at least this many bytes.
const PARALLEL_MIN_OBJECT: u64 = 1 << 20;

/// Shard attempts running in this process now.
static RUNNING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Counts an attempt as running while it lives.
struct Running;

impl Running {
    /// Starts counting; whether a core would idle with this attempt running (fewer attempts
    /// than cores): then it uses helper threads (read-ahead, Parquet encoder). A one-hour job
    /// thus uses every core; shards that already fill the cores pay no hand-off.
    fn start() -> (Running, bool) {
        let now = RUNNING.fetch_add(1, Ordering::Relaxed) + 1;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (Running, now < cores)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, Ordering::Relaxed);
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
    // The stores of this attempt count their retries here, for the shard's counts.
    let io = Arc::new(IoStats::default());
    let source = env.source.with_stats(io.clone());
    let output = env.output.with_stats(io.clone());
    let listed = pinned_objects(env, source.as_ref(), output.as_ref(), shard)?;
    let (_running, spare_cores) = Running::start();
    if env.spec.repair.is_some() {
        return crate::repair::run_repair_shard(&output, &env.spec, shard, attempt, listed)
            .map_err(|e| {
                let retryable = match &e {
                    crate::repair::RepairError::Storage(s) => s.is_retryable(),
                    _ => false,
                };
                ShardError {
                    message: e.to_string(),
                    retryable,
                }
            });
    }
    let (todo, other_org): (Vec<ObjectMeta>, Vec<ObjectMeta>) = listed
        .into_iter()
        .partition(|o| !names_other_org(&o.key, env.spec.org.as_str()));
    let attempt_ = Attempt {
        env,
        shard,
        attempt,
        decoder,
        io: &io,
        source: source.as_ref(),
        output: output.as_ref(),
        todo: &todo,
        other_org,
        spare_cores,
    };
    // The sink starts after the dedup look-back: an exactly-once transaction is open no
    // longer than the shard's own events take.
    match &env.spec.sink {
        SinkSpec::Parquet => attempt_.run(|| {
            Ok(ParquetOut::new(
                output.as_ref(),
                &env.spec,
                shard,
                attempt,
                spare_cores,
            ))
        }),
        SinkSpec::Kafka(k) => {
            attempt_.run(|| KafkaOut::new(env, k, output.as_ref(), shard, attempt, &todo))
        }
        SinkSpec::Kinesis(k) => attempt_.run(|| {
            StreamOut::new(
                env,
                Stream::Kinesis(k),
                output.as_ref(),
                shard,
                attempt,
                &todo,
            )
        }),
        SinkSpec::PubSub(p) => attempt_.run(|| {
            StreamOut::new(
                env,
                Stream::PubSub(p),
                output.as_ref(),
                shard,
                attempt,
                &todo,
            )
        }),
    }
}

/// What one attempt reads and where it writes, besides its sink.
struct Attempt<'a> {
    env: &'a ShardEnv,
    shard: ShardId,
    attempt: u32,
    decoder: DecoderConfig,
    io: &'a Arc<IoStats>,
    source: &'a dyn ObjectSource,
    output: &'a dyn OutputStore,
    todo: &'a [ObjectMeta],
    /// Objects named for another org: skipped, and counted.
    other_org: Vec<ObjectMeta>,
    /// A core would idle otherwise: use helper threads.
    spare_cores: bool,
}

impl Attempt<'_> {
    /// The event loop, the same for every sink.
    fn run<S: Sink>(
        self,
        start_sink: impl FnOnce() -> Result<S, ShardError>,
    ) -> Result<(String, ShardManifest), ShardError> {
        let Attempt {
            env,
            shard,
            attempt,
            decoder,
            io,
            source,
            output,
            todo,
            other_org,
            spare_cores,
        } = self;
        let spec: &JobSpec = &env.spec;
        let keys = OutputKeys::new(&spec.job);
        let router = Router::new(spec, decoder.max_depth).map_err(|message| ShardError {
            message,
            retryable: false,
        })?;
        let mut scratch = Scratch::default();
        let mut seen = router.dedup().map(Seen::new);
        // Cross-shard dedup reads the hours before, whatever the sink: the earliest hour keeps
        // the event. (A single-object replay plans no other objects, so its look-back reads
        // nothing.)
        if let Some(seen) = seen.as_mut() {
            prescan(env, &router, source, output, shard, decoder, seen)?;
        }
        let mut sink = start_sink()?;
        let failed_store = env.failed_output.with_stats(io.clone());
        let mut failed = FailedSink::new(failed_store.as_ref(), keys.failed_file(shard, attempt));
        let unrecoverable_store = env.unrecoverable_output.with_stats(io.clone());
        let mut unrecoverable = FailedSink::new(
            unrecoverable_store.as_ref(),
            keys.unrecoverable_file(shard, attempt),
        );
        let flows = router.flows();
        let mut tally = Tally::new(flows);
        tally.counts.objects_skipped = other_org.len() as u64;
        let skipped: Vec<String> = other_org.into_iter().map(|o| o.key).collect();
        let mut objects = Vec::new();
        // Cores to spare, batches the sink takes, no dedup order: objects in parallel.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        // Small objects are not worth a hand-off each (2,000 objects of 1 KB: 0.17 s and 108 MB
        // in parallel, 0.11 s and 33 MB one at a time).
        let large =
            todo.iter().map(|o| o.size).sum::<u64>() >= PARALLEL_MIN_OBJECT * todo.len() as u64;
        // (`REWIND_PARALLEL_OBJECTS=0`: always one object at a time, the benchmarks' baseline;
        // `=1`: in parallel whenever the sink allows, for tests.)
        let wanted = match std::env::var("REWIND_PARALLEL_OBJECTS").as_deref() {
            Ok("0") => false,
            Ok("1") => true,
            _ => spare_cores && large,
        };
        if wanted && seen.is_none() && sink.takes_batches() && todo.len() > 1 {
            objects = parallel::Objects {
                env,
                router: &router,
                source,
                todo,
                decoder,
                threads: threads.clamp(2, 4),
            }
            .run(&mut tally, &mut sink, &mut failed, &mut unrecoverable)?;
        } else {
            let mut reader = ReadAhead::new(source, todo, spare_cores);

            for (i, object) in todo.iter().enumerate() {
                if env.cancel.load(Ordering::Relaxed) {
                    return Err(ShardError::cancelled());
                }
                let opened = reader.open(i)?;
                let mut stats = opened.stats(object);
                let mut dec = Decoder::new(opened.reader, decoder);
                let mut effects = InOrder {
                    sink: &mut sink,
                    failed: &mut failed,
                    unrecoverable: &mut unrecoverable,
                };
                while let Some(item) = dec.next().map_err(|e| ShardError::read(&object.key, e))? {
                    handle_item(
                        item,
                        i,
                        &object.key,
                        &router,
                        &mut scratch,
                        seen.as_mut(),
                        &mut tally,
                        &mut stats,
                        &mut effects,
                    )?;
                    effects.sink.after_item()?;
                }
                stats.decoded_bytes = dec.bytes_read();
                tally.object_done(opened.stored.load(Ordering::Relaxed), &env.progress);
                sink.publish(&env.progress);
                objects.push(stats);
            }
        }
        tally.check()?;
        // Last look before the files become visible: a stopped attempt (cancelled job, lost
        // lease, shutdown) drops its unfinished files here instead of publishing them.
        if env.cancel.load(Ordering::Relaxed) {
            return Err(ShardError::cancelled());
        }
        // Test fail point: the moment between the last look and the files' finish.
        let late = crate::failpoint("late-file-then-die");
        if late {
            tracing::warn!("fail point late-file-then-die: finishing the files in 5 s");
            std::thread::sleep(std::time::Duration::from_secs(5));
        }
        let end = sink.finish()?;
        if late {
            tracing::warn!("fail point late-file-then-die: files finished; dying");
            std::process::abort();
        }
        let p = &env.progress;
        p.produced
            .store(end.produced - end.delivered_before, Ordering::Relaxed);
        p.acknowledged
            .store(end.acknowledged - end.delivered_before, Ordering::Relaxed);
        tally.counts.produced = end.produced;
        tally.counts.acknowledged = end.acknowledged;
        // Refused by the brokers after the fact: failed, not recovered.
        for r in &end.refused {
            tally.refused_later();
            sink_refused(
                &mut failed,
                &r.source_key,
                r.offset,
                &r.raw,
                "kafka_rejected",
                &r.reason,
            )?;
        }
        let failed_file = failed.finish().map_err(ShardError::sink)?;
        let unrecoverable_file = unrecoverable.finish().map_err(ShardError::sink)?;
        tally.counts.retries = io.retries.load(Ordering::Relaxed);
        tally.counts.sink_retries = end.sink_retries;
        let (counts, by_reason, filtered_by) = tally.finish();
        let manifest = ShardManifest {
            job: spec.job.clone(),
            shard,
            attempt,
            prefix: spec.layout.prefix(shard.hour(), &spec.org),
            files: end.files,
            failed_file,
            unrecoverable_file,
            objects,
            skipped_objects: skipped,
            counts,
            failed_by_reason: by_reason,
            filtered_by_reason: filtered_by,
            kafka_offsets: end.offsets,
            kafka_ranges_complete: end.delivered_before == 0,
            repaired: Vec::new(),
            found_keys: Vec::new(),
            files_read: 0,
            bytes_written: 0,
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
}

/// Where one item's outcome goes: the sink, the failed and the unrecoverable outputs.
trait Effects {
    fn take(
        &mut self,
        at: At<'_>,
        row: &crate::record::Row<'_>,
        value: &str,
    ) -> Result<Taken, ShardError>;
    fn failed(&mut self, rec: &FailedRecord<'_>) -> Result<(), ShardError>;
    fn unrecoverable(&mut self, rec: &FailedRecord<'_>) -> Result<(), ShardError>;
}

/// The attempt's own sink and outputs, written as items come (the sequential path).
struct InOrder<'s, 'f, S> {
    sink: &'s mut S,
    failed: &'s mut FailedSink<'f>,
    unrecoverable: &'s mut FailedSink<'f>,
}

impl<S: Sink> Effects for InOrder<'_, '_, S> {
    fn take(
        &mut self,
        at: At<'_>,
        row: &crate::record::Row<'_>,
        value: &str,
    ) -> Result<Taken, ShardError> {
        self.sink.take(at, row, value)
    }
    fn failed(&mut self, rec: &FailedRecord<'_>) -> Result<(), ShardError> {
        self.failed.write(rec).map_err(ShardError::sink)
    }
    fn unrecoverable(&mut self, rec: &FailedRecord<'_>) -> Result<(), ShardError> {
        self.unrecoverable.write(rec).map_err(ShardError::sink)
    }
}

/// Routes one decoded item to exactly one outcome, counts it and hands it on.
#[allow(clippy::too_many_arguments)]
fn handle_item<E: Effects>(
    item: Item<'_>,
    index: usize,
    key: &str,
    router: &Router,
    scratch: &mut Scratch,
    seen: Option<&mut Seen>,
    tally: &mut Tally<'_>,
    stats: &mut ObjectStats,
    effects: &mut E,
) -> Result<(), ShardError> {
    tally.decoded();
    let flows = router.flows();
    match item {
        Item::Event(ev) => {
            stats.events += 1;
            let flow_name = |f: Option<usize>| f.map(|f| flows.name(f));
            match router.route(&ev, scratch, seen) {
                Outcome::Recovered {
                    row,
                    repaired,
                    flow,
                } => {
                    let at = At {
                        index,
                        key,
                        offset: ev.offset,
                        end: ev.offset + ev.bytes().len() as u64,
                    };
                    let value = repaired.unwrap_or(ev.text());
                    match effects.take(at, &row, value)? {
                        Taken::Written | Taken::DeliveredBefore => {
                            tally.recovered(flow, repaired.is_some())
                        }
                        Taken::Filtered(reason) => tally.filtered(reason, flow),
                        Taken::Refused(code, reason) => {
                            tally.failed(code, None);
                            let rec =
                                FailedRecord::of_event(key, ev.offset, ev.bytes(), code, &reason);
                            effects.failed(&rec)?;
                        }
                    }
                }
                Outcome::Filtered { reason, flow } => tally.filtered(reason, flow),
                Outcome::Failed {
                    code,
                    reason,
                    flow,
                    step,
                } => {
                    tally.failed(code, flow);
                    let step = flow.zip(step).map(|(f, s)| (s, flows.step_op(f, s)));
                    let rec = FailedRecord::of_event(key, ev.offset, ev.bytes(), code, &reason)
                        .with_flow(flow_name(flow), step);
                    effects.failed(&rec)?;
                }
                Outcome::Unrecoverable { reason, flow } => {
                    tally.unrecoverable(flow);
                    let rec = FailedRecord::of_event(
                        key,
                        ev.offset,
                        ev.bytes(),
                        "unrecoverable",
                        &reason,
                    )
                    .with_flow(flow_name(flow), None);
                    effects.unrecoverable(&rec)?;
                }
            }
        }
        Item::Damaged(d) => {
            stats.damaged += 1;
            let code = d.damage.code();
            tally.failed(code, None);
            let reason = d.damage.to_string();
            let rec = FailedRecord::new(
                key,
                d.offset,
                d.length,
                code,
                &reason,
                d.raw,
                d.raw_truncated,
            );
            effects.failed(&rec)?;
        }
    }
    Ok(())
}

/// The failed record of an event the sink refused for itself (Kafka: too large, invalid).
fn sink_refused(
    failed: &mut FailedSink<'_>,
    source_key: &str,
    offset: u64,
    raw: &[u8],
    code: &str,
    reason: &str,
) -> Result<(), ShardError> {
    let rec = FailedRecord::of_event(source_key, offset, raw, code, reason);
    failed.write(&rec).map_err(ShardError::sink)
}

/// Deletes everything a shard attempt wrote (a failed or fenced attempt). Best effort: what is
/// left is removed by the job commit's orphan sweep.
pub fn discard_attempt(
    env: &ShardEnv,
    manifest: Option<&ShardManifest>,
    shard: ShardId,
    attempt: u32,
) {
    // An attempt only ever writes staged names (the job commit promotes committed ones), so a
    // worker never deletes a visible output.
    let keys = OutputKeys::new(&env.spec.job);
    if let Some(m) = manifest {
        for f in &m.files {
            let _ = env.output.delete(&staged(&f.key));
        }
    }
    // Files finished before the attempt failed or was stopped: every data file of this attempt
    // sits under one prefix (`part-{shard}-a{attempt}-`).
    let first = staged(&keys.data_file(&env.spec.org, shard, attempt, 0));
    if let Some(prefix) = first.strip_suffix("0.zstd.parquet.pending")
        && let Ok(files) = env.output.list(prefix)
    {
        for f in files {
            let _ = env.output.delete(&f.key);
        }
    }
    let _ = env
        .failed_output
        .delete(&staged(&keys.failed_file(shard, attempt)));
    let _ = env
        .unrecoverable_output
        .delete(&staged(&keys.unrecoverable_file(shard, attempt)));
    let _ = env.output.delete(&keys.shard_manifest(shard, attempt));
}
