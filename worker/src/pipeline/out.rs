//! Where a shard's recovered events go: the [`Sink`] seam, with Parquet files and a Kafka topic
//! behind it. The event loop hands each recovered event to the sink and counts what the sink
//! says; everything sink-specific (row groups, producing, acknowledgement checkpoints, resuming
//! a retried replay, transactions) stays on this side of the seam.

use std::sync::Arc;

use rewind_common::job::{
    Delivery, KafkaCheckpoint, KafkaSpec, KinesisSpec, OutputFileEntry, OutputKeys,
};
use rewind_common::storage::{ObjectMeta, OutputStore};
use rewind_common::{JobSpec, ShardId};

use super::{Progress, ShardEnv, ShardError};
use crate::kafka::{KafkaSink, Rejected};
use crate::record::Row;
use crate::sink::ParquetSink;
use crate::streams::StreamSink;
use crate::throttle::Throttle;

/// Where one recovered event is: its object (index and key), its byte offset and the offset
/// just after it.
#[derive(Debug, Clone, Copy)]
pub(super) struct At<'a> {
    pub index: usize,
    pub key: &'a str,
    pub offset: u64,
    pub end: u64,
}

/// What a sink did with one recovered event.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Taken {
    /// Written (or handed to the producer).
    Written,
    /// Delivered by an earlier attempt of the shard: counted as recovered, not sent again.
    DeliveredBefore,
    /// Not for this job after all (an archived record outside the range): filtered, with why.
    Filtered(&'static str),
    /// The sink refused it for itself (too large, invalid; no partition): a failed record with
    /// this code and reason.
    Refused(&'static str, String),
}

/// A finished sink: the files it wrote, what it delivered, and events refused after the fact.
#[derive(Debug, Default)]
pub(super) struct SinkEnd {
    pub files: Vec<OutputFileEntry>,
    /// Kafka: records produced and acknowledged, counting those delivered by earlier attempts.
    pub produced: u64,
    pub acknowledged: u64,
    /// Of those, delivered by earlier attempts.
    pub delivered_before: u64,
    pub refused: Vec<Rejected>,
    /// Kafka: where this attempt's records went, by partition.
    pub offsets: std::collections::BTreeMap<i32, rewind_common::output::OffsetRange>,
    /// Kinesis: records put again after the stream failed them for the moment.
    pub sink_retries: u64,
}

/// The seam between the event loop and an output.
pub(super) trait Sink {
    /// One recovered event: its row and its bytes as they go out (repaired or as archived).
    fn take(&mut self, at: At<'_>, row: &Row<'_>, value: &str) -> Result<Taken, ShardError>;
    /// After every decoded item (Parquet flushes a full row group).
    fn after_item(&mut self) -> Result<(), ShardError> {
        Ok(())
    }
    /// After every object: what the live progress shows besides the event counts.
    fn publish(&self, _p: &Progress) {}
    /// Everything delivered and durable; called only when the attempt is to commit.
    fn finish(self) -> Result<SinkEnd, ShardError>;
    /// Whether it takes whole batches of rows built elsewhere ([`Sink::write_batch`]): then a
    /// shard's objects may be decoded and routed in parallel.
    fn takes_batches(&self) -> bool {
        false
    }
    fn write_batch(
        &mut self,
        _batch: arrow_array::RecordBatch,
        _bytes: u64,
    ) -> Result<(), ShardError> {
        Err(ShardError {
            message: "internal error: this sink takes events one by one".into(),
            retryable: false,
        })
    }
}

/// Hive-partitioned Parquet in the destination: the reference layout (`org_id=…/date=…` of the
/// shard's hour, one file sequence), or `--partition-by` (a file sequence per partition).
pub(super) enum ParquetOut<'a> {
    Reference(Box<ParquetSink<'a>>),
    Partitioned(Box<Partitioned<'a>>),
}

/// At most this many partitions have a file open at once in one attempt; the least recently
/// written one is closed to open another (memory stays bounded whatever the template).
const OPEN_PARTITIONS: usize = 16;

pub(super) struct Partitioned<'a> {
    output: &'a dyn OutputStore,
    template: rewind_common::partition::PartitionTemplate,
    keys: OutputKeys,
    shard: ShardId,
    attempt: u32,
    /// Open files by partition, with when each was last written.
    open: std::collections::HashMap<String, (ParquetSink<'a>, u64)>,
    /// Files started per partition (the next file's number).
    started: std::collections::HashMap<String, u32>,
    files: Vec<OutputFileEntry>,
    clock: u64,
}

impl<'a> ParquetOut<'a> {
    /// `spare_cores`: encode the reference layout's file on a thread of its own (a core would
    /// idle otherwise; see `run_shard`).
    pub fn new(
        output: &'a dyn OutputStore,
        spec: &JobSpec,
        shard: ShardId,
        attempt: u32,
        spare_cores: bool,
    ) -> Self {
        let keys = OutputKeys::new(&spec.job);
        match spec
            .partition_by
            .as_deref()
            .and_then(|t| rewind_common::partition::PartitionTemplate::parse(t).ok())
        {
            None => {
                let org = spec.org.clone();
                ParquetOut::Reference(Box::new(
                    ParquetSink::new(output, move |n| keys.data_file(&org, shard, attempt, n))
                        .encoder_thread(spare_cores),
                ))
            }
            Some(template) => ParquetOut::Partitioned(Box::new(Partitioned {
                output,
                template,
                keys,
                shard,
                attempt,
                open: Default::default(),
                started: Default::default(),
                files: Vec::new(),
                clock: 0,
            })),
        }
    }
}

impl<'a> Partitioned<'a> {
    fn sink(&mut self, partition: String) -> Result<&mut ParquetSink<'a>, ShardError> {
        self.clock += 1;
        if !self.open.contains_key(&partition) {
            if self.open.len() >= OPEN_PARTITIONS {
                let oldest = self
                    .open
                    .iter()
                    .min_by_key(|(_, (_, t))| *t)
                    .map(|(k, _)| k.clone())
                    .expect("partitions are open");
                if let Some((sink, _)) = self.open.remove(&oldest) {
                    self.files.extend(sink.finish().map_err(ShardError::sink)?);
                }
            }
            let first = self.started.get(&partition).copied().unwrap_or(0);
            let (keys, shard, attempt, p) = (
                self.keys.clone(),
                self.shard,
                self.attempt,
                partition.clone(),
            );
            // File numbers go on where the partition's last file (closed to make room) stopped.
            let sink = ParquetSink::new(self.output, move |n| {
                keys.partition_file(&p, shard, attempt, first + n)
            });
            self.started.insert(partition.clone(), first + 1);
            self.open.insert(partition.clone(), (sink, self.clock));
        }
        let entry = self.open.get_mut(&partition).expect("just opened");
        entry.1 = self.clock;
        Ok(&mut entry.0)
    }
}

impl Sink for ParquetOut<'_> {
    fn take(&mut self, _: At<'_>, row: &Row<'_>, _: &str) -> Result<Taken, ShardError> {
        match self {
            ParquetOut::Reference(sink) => sink.rows().append(row),
            ParquetOut::Partitioned(p) => {
                let partition = match p.template.render(row) {
                    Ok(path) => path,
                    Err(reason) => return Ok(Taken::Refused("partition", reason)),
                };
                p.sink(partition)?.rows().append(row);
            }
        }
        Ok(Taken::Written)
    }

    fn takes_batches(&self) -> bool {
        matches!(self, ParquetOut::Reference(_))
    }

    fn write_batch(
        &mut self,
        batch: arrow_array::RecordBatch,
        bytes: u64,
    ) -> Result<(), ShardError> {
        match self {
            ParquetOut::Reference(sink) => sink.write_batch(batch, bytes).map_err(ShardError::sink),
            ParquetOut::Partitioned(_) => Err(ShardError {
                message: "internal error: a partitioned output takes rows one by one".into(),
                retryable: false,
            }),
        }
    }

    fn after_item(&mut self) -> Result<(), ShardError> {
        match self {
            ParquetOut::Reference(sink) => sink.maybe_flush().map_err(ShardError::sink),
            ParquetOut::Partitioned(p) => {
                for (sink, _) in p.open.values_mut() {
                    sink.maybe_flush().map_err(ShardError::sink)?;
                }
                Ok(())
            }
        }
    }

    fn finish(self) -> Result<SinkEnd, ShardError> {
        let files = match self {
            ParquetOut::Reference(sink) => sink.finish().map_err(ShardError::sink)?,
            ParquetOut::Partitioned(p) => {
                let mut p = *p;
                let mut open: Vec<_> = p.open.drain().collect();
                open.sort_by(|a, b| a.0.cmp(&b.0));
                for (_, (sink, _)) in open {
                    p.files.extend(sink.finish().map_err(ShardError::sink)?);
                }
                p.files
            }
        };
        Ok(SinkEnd {
            files,
            ..SinkEnd::default()
        })
    }
}

/// A Kafka topic: one producer per attempt (a transaction for exactly-once), checkpoints of
/// the acknowledged prefix for at-least-once, and a retried attempt resuming after what an
/// earlier one delivered.
pub(super) struct KafkaOut<'a> {
    kafka: KafkaSink,
    /// Archived Kafka records: each event is an envelope (`--envelope`).
    envelope: Option<rewind_common::envelope::Envelope>,
    /// An undated layout: the range's window (ms) that records' timestamps must fall in.
    window: Option<(i64, i64)>,
    throttles: Vec<Arc<Throttle>>,
    /// Everything before this position was delivered by an earlier attempt.
    resume: Option<crate::kafka::Position>,
    resumed: u64,
    checkpoints: Checkpoints,
    output: &'a dyn OutputStore,
    checkpoint_key: String,
    attempt: u32,
    todo: &'a [ObjectMeta],
}

impl<'a> KafkaOut<'a> {
    /// Starts the producer and finds where an earlier attempt's delivery reached: for
    /// exactly-once the shard's marker on the control topic (committed: nothing to produce),
    /// for at-least-once the last checkpoint.
    pub fn new(
        env: &ShardEnv,
        k: &KafkaSpec,
        output: &'a dyn OutputStore,
        shard: ShardId,
        attempt: u32,
        todo: &'a [ObjectMeta],
    ) -> Result<Self, ShardError> {
        let spec = &env.spec;
        let kafka = KafkaSink::new(
            k,
            spec.job.as_str(),
            shard,
            attempt,
            env.produce_latency.clone(),
        )
        .map_err(ShardError::kafka)?;
        let checkpoint_key = OutputKeys::new(&spec.job).checkpoint(shard);
        let resume = if k.delivery == Delivery::ExactlyOnce {
            // Committed to Kafka already, whole or in part (an attempt died after one of its
            // transactions committed): produce only what no transaction committed.
            use crate::kafka::{Committed, LookupError};
            let found = match crate::kafka::committed(k, spec.job.as_str(), shard, &env.cancel) {
                Ok(found) => found,
                Err(LookupError::Failed(f)) => return Err(ShardError::kafka(f)),
                Err(LookupError::Blocked(why)) => return Err(env.give_back(why)),
            };
            match found {
                Committed::Nothing => None,
                Committed::All => Some((todo.len(), 0)),
                Committed::UpTo {
                    position,
                    object_key,
                } => {
                    if todo.get(position.0).is_none_or(|o| o.key != object_key) {
                        // The shard's objects are pinned by its plan: a marker naming another
                        // object is not ours to trust, and producing could duplicate.
                        return Err(ShardError {
                            message: format!(
                                "the control topic's marker for shard {shard} names object \
                                 {object_key} at {}, which is not the shard's object there",
                                position.0
                            ),
                            retryable: false,
                        });
                    }
                    Some(position)
                }
            }
        } else {
            read_checkpoint(output, &checkpoint_key, todo)
        };
        let envelope = match &k.envelope {
            None => None,
            Some(e) => {
                Some(
                    rewind_common::envelope::Envelope::parse(e).map_err(|e| ShardError {
                        message: e.to_string(),
                        retryable: false,
                    })?,
                )
            }
        };
        Ok(KafkaOut {
            kafka,
            envelope,
            window: spec.layout.is_undated().then(|| spec.range.window_ms()),
            throttles: env.throttles(),
            resume,
            resumed: 0,
            checkpoints: Checkpoints {
                every: match k.delivery {
                    Delivery::AtLeastOnce => k.checkpoint_events,
                    _ => u64::MAX,
                },
                ..Checkpoints::default()
            },
            output,
            checkpoint_key,
            attempt,
            todo,
        })
    }
}

impl Sink for KafkaOut<'_> {
    fn take(&mut self, at: At<'_>, row: &Row<'_>, value: &str) -> Result<Taken, ShardError> {
        // An archived record: what goes out is in its envelope; under an undated layout its
        // timestamp says whether the range holds it.
        let archived = match &self.envelope {
            None => None,
            Some(e) => match e.extract(value) {
                Ok(r) => Some(r),
                Err(reason) => return Ok(Taken::Refused("envelope", reason)),
            },
        };
        if let (Some(r), Some((start, end))) = (&archived, self.window) {
            match r.timestamp {
                Some(t) if (start..end).contains(&t) => {}
                Some(_) => return Ok(Taken::Filtered("time")),
                None => {
                    return Ok(Taken::Refused(
                        "envelope",
                        "envelope: no timestamp to place the record in the range".into(),
                    ));
                }
            }
        }
        // Acknowledged in an earlier attempt: counted, not produced.
        if self.resume.is_some_and(|r| (at.index, at.offset) < r) {
            self.resumed += 1;
            return Ok(Taken::DeliveredBefore);
        }
        if !self.throttles.is_empty() {
            // A transaction due to commit does so before the wait, not after it.
            self.kafka.maybe_commit_part().map_err(ShardError::kafka)?;
            for t in &self.throttles {
                t.acquire(value.len() as u64);
            }
        }
        let refused = self
            .kafka
            .send(
                row,
                value,
                archived.as_ref(),
                at.key,
                at.offset,
                (at.index, at.end),
            )
            .map_err(ShardError::kafka)?;
        let kafka = &mut self.kafka;
        self.checkpoints.maybe_write(
            || kafka.finished_position(),
            self.output,
            &self.checkpoint_key,
            self.attempt,
            self.todo,
        );
        Ok(match refused {
            Some((code, reason)) => Taken::Refused(code, reason),
            None => Taken::Written,
        })
    }

    fn publish(&self, p: &Progress) {
        use std::sync::atomic::Ordering;
        p.produced.store(self.kafka.produced(), Ordering::Relaxed);
        p.acknowledged
            .store(self.kafka.acknowledged(), Ordering::Relaxed);
    }

    fn finish(self) -> Result<SinkEnd, ShardError> {
        let done = self.kafka.finish().map_err(ShardError::kafka)?;
        let (produced, acknowledged, refused) = (done.produced, done.acknowledged, done.rejected);
        // Everything is acknowledged: a retry (a crash before the shard's commit) produces
        // nothing again.
        write_done_checkpoint(self.output, &self.checkpoint_key, self.attempt, self.todo);
        Ok(SinkEnd {
            files: Vec::new(),
            produced: produced + self.resumed,
            acknowledged: acknowledged + self.resumed,
            delivered_before: self.resumed,
            refused,
            offsets: done.offsets,
            sink_retries: 0,
        })
    }
}

/// A Kinesis stream or a Pub/Sub topic: calls with their retries, checkpoints of the
/// acknowledged prefix (neither has transactions: always at-least-once), and a retried attempt
/// resuming after what an earlier one delivered.
pub(super) struct StreamOut<'a> {
    sink: StreamSink,
    throttles: Vec<Arc<Throttle>>,
    /// Everything before this position was delivered by an earlier attempt.
    resume: Option<crate::kafka::Position>,
    resumed: u64,
    checkpoints: Checkpoints,
    output: &'a dyn OutputStore,
    checkpoint_key: String,
    attempt: u32,
    todo: &'a [ObjectMeta],
}

impl<'a> StreamOut<'a> {
    pub fn new(
        env: &ShardEnv,
        k: Stream<'_>,
        output: &'a dyn OutputStore,
        shard: ShardId,
        attempt: u32,
        todo: &'a [ObjectMeta],
    ) -> Result<Self, ShardError> {
        let spec = &env.spec;
        let sink = match k {
            Stream::Kinesis(k) => {
                StreamSink::kinesis(k, spec.job.as_str(), shard, env.produce_latency.clone())
            }
            Stream::PubSub(p) => {
                StreamSink::pubsub(p, spec.job.as_str(), shard, env.produce_latency.clone())
            }
        }
        .map_err(ShardError::kafka)?;
        let checkpoint_events = match k {
            Stream::Kinesis(k) => k.checkpoint_events,
            Stream::PubSub(p) => p.checkpoint_events,
        };
        let checkpoint_key = OutputKeys::new(&spec.job).checkpoint(shard);
        Ok(StreamOut {
            sink,
            throttles: env.throttles(),
            resume: read_checkpoint(output, &checkpoint_key, todo),
            resumed: 0,
            checkpoints: Checkpoints {
                every: checkpoint_events,
                ..Checkpoints::default()
            },
            output,
            checkpoint_key,
            attempt,
            todo,
        })
    }
}

/// Which of the batching stream sinks a [`StreamOut`] sends to.
pub(super) enum Stream<'a> {
    Kinesis(&'a KinesisSpec),
    PubSub(&'a rewind_common::job::PubSubSpec),
}

impl Sink for StreamOut<'_> {
    fn take(&mut self, at: At<'_>, row: &Row<'_>, value: &str) -> Result<Taken, ShardError> {
        // Refused the same way by every attempt, delivered before or not.
        let entry = match self.sink.record(row, value, at.key, (at.index, at.offset)) {
            Ok(e) => e,
            Err((code, reason)) => return Ok(Taken::Refused(code, reason)),
        };
        if self.resume.is_some_and(|r| (at.index, at.offset) < r) {
            self.resumed += 1;
            return Ok(Taken::DeliveredBefore);
        }
        for t in &self.throttles {
            t.acquire(value.len() as u64);
        }
        self.sink
            .send(entry, (at.index, at.end))
            .map_err(ShardError::kafka)?;
        let sink = &mut self.sink;
        self.checkpoints.maybe_write(
            || sink.finished_position(),
            self.output,
            &self.checkpoint_key,
            self.attempt,
            self.todo,
        );
        Ok(Taken::Written)
    }

    fn publish(&self, p: &Progress) {
        use std::sync::atomic::Ordering;
        p.produced.store(self.sink.put(), Ordering::Relaxed);
        p.acknowledged
            .store(self.sink.acknowledged(), Ordering::Relaxed);
    }

    fn finish(self) -> Result<SinkEnd, ShardError> {
        let done = self.sink.finish().map_err(ShardError::kafka)?;
        // Everything is acknowledged: a retry (a crash before the shard's commit) sends nothing
        // again.
        write_done_checkpoint(self.output, &self.checkpoint_key, self.attempt, self.todo);
        Ok(SinkEnd {
            files: Vec::new(),
            produced: done.put + self.resumed,
            acknowledged: done.acknowledged + self.resumed,
            delivered_before: self.resumed,
            refused: Vec::new(),
            offsets: Default::default(),
            sink_retries: done.retries,
        })
    }
}

/// When a stream replay saves how far its acknowledgements reached.
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
        finished: impl FnOnce() -> Option<crate::kafka::Position>,
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
        let Some(pos) = finished() else {
            return;
        };
        if self.written == Some(pos) {
            return;
        }
        let cp = KafkaCheckpoint {
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

/// The checkpoint of a shard whose every record is acknowledged (past its last object). Best
/// effort: without it a retry resumes from the last periodic checkpoint instead.
fn write_done_checkpoint(output: &dyn OutputStore, key: &str, attempt: u32, todo: &[ObjectMeta]) {
    let end = KafkaCheckpoint {
        attempt,
        object_index: todo.len(),
        object_key: String::new(),
        offset: 0,
    };
    if let Ok(body) = serde_json::to_vec(&end) {
        let _ = output.put(key, &body);
    }
}

/// The checkpoint an earlier attempt left, when it still names this shard's objects.
fn read_checkpoint(
    output: &dyn OutputStore,
    key: &str,
    todo: &[ObjectMeta],
) -> Option<crate::kafka::Position> {
    let body = output.get(key).ok()??;
    let cp: KafkaCheckpoint = serde_json::from_slice(&body).ok()?;
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
