//! A shard's objects decoded and routed in parallel, their output handed on in object order.
//!
//! Used when cores would idle otherwise (`Running`), the sink takes whole batches (the
//! reference Parquet layout) and no dedup state orders the events. Decode threads take the next
//! object in turn, decode and route it into Arrow batches (the same rows the sequential path
//! builds), failed and unrecoverable records as JSON lines, and the object's tally, and send
//! them through the object's own bounded channel; the attempt's thread drains the channels in
//! object order, so the files, the failed records and the counts are those of the sequential
//! path (only batch boundaries differ). Memory stays bounded: each decode thread holds one
//! object's current batch, and each channel at most one piece more; the decode threads share the
//! sequential path's batch size between them (`BATCH_BYTES / threads` each), so events at
//! `--max-event-bytes` keep the shard as small as one thread would.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};

use arrow_array::RecordBatch;
use rewind_common::job::ObjectStats;
use rewind_common::storage::{ObjectMeta, ObjectSource};

use super::out::{At, Sink, Taken};
use super::tally::Tally;
use super::{Effects, ShardEnv, ShardError, handle_item};
use crate::decode::{Decoder, DecoderConfig};
use crate::record::{Row, Rows, schema};
use crate::route::{Router, Scratch};
use crate::sink::{BATCH_BYTES, BATCH_ROWS, FailedRecord, FailedSink};

/// Failed-record lines a decode thread buffers before sending them on.
const LINES_BYTES: usize = 4 << 20;

/// What a decode thread sends for its object, in order.
enum Piece<'f> {
    Batch(RecordBatch, u64),
    Failed(Vec<u8>, u64),
    Unrecoverable(Vec<u8>, u64),
    Done {
        stats: ObjectStats,
        stored: u64,
        tally: Box<Tally<'f>>,
    },
    Error(ShardError),
}

/// One object's outputs as its decode thread collects them.
struct Collect<'t, 'f> {
    rows: Rows,
    schema: arrow_schema::SchemaRef,
    tx: &'t SyncSender<Piece<'f>>,
    /// A batch is sent once its `data` column holds this many bytes.
    batch_bytes: usize,
    failed: (Vec<u8>, u64),
    unrecoverable: (Vec<u8>, u64),
}

/// The receiver is gone: the attempt stopped (an earlier object failed, or it was cancelled).
struct Gone;

impl<'f> Collect<'_, 'f> {
    /// Sends what is buffered; all of it when `all`, else only what is full.
    fn send(&mut self, all: bool) -> Result<(), Gone> {
        if !self.rows.is_empty()
            && (all
                || self.rows.len() >= BATCH_ROWS
                || self.rows.buffered_bytes() >= self.batch_bytes)
        {
            let bytes = self.rows.buffered_bytes() as u64;
            let batch = self.rows.finish(&self.schema);
            self.tx.send(Piece::Batch(batch, bytes)).map_err(|_| Gone)?;
        }
        for (which, failed) in [(0, &mut self.failed), (1, &mut self.unrecoverable)] {
            if failed.1 > 0 && (all || failed.0.len() >= LINES_BYTES) {
                let (lines, n) = std::mem::take(failed);
                let piece = if which == 0 {
                    Piece::Failed(lines, n)
                } else {
                    Piece::Unrecoverable(lines, n)
                };
                self.tx.send(piece).map_err(|_| Gone)?;
            }
        }
        Ok(())
    }
}

impl Effects for Collect<'_, '_> {
    fn take(&mut self, _: At<'_>, row: &Row<'_>, _: &str) -> Result<Taken, ShardError> {
        self.rows.append(row);
        Ok(Taken::Written)
    }
    fn failed(&mut self, rec: &FailedRecord<'_>) -> Result<(), ShardError> {
        rec.line(&mut self.failed.0);
        self.failed.1 += 1;
        Ok(())
    }
    fn unrecoverable(&mut self, rec: &FailedRecord<'_>) -> Result<(), ShardError> {
        rec.line(&mut self.unrecoverable.0);
        self.unrecoverable.1 += 1;
        Ok(())
    }
}

/// What the parallel path needs besides the sink and outputs.
pub(super) struct Objects<'a> {
    pub env: &'a ShardEnv,
    pub router: &'a Router,
    pub source: &'a dyn ObjectSource,
    pub todo: &'a [ObjectMeta],
    pub decoder: DecoderConfig,
    /// Decode threads to run.
    pub threads: usize,
}

impl Objects<'_> {
    /// Decodes and routes every object, hands their outputs on in order; the objects' stats.
    pub fn run<S: Sink>(
        self,
        tally: &mut Tally<'_>,
        sink: &mut S,
        failed: &mut FailedSink<'_>,
        unrecoverable: &mut FailedSink<'_>,
    ) -> Result<Vec<ObjectStats>, ShardError> {
        let n = self.todo.len();
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..n).map(|_| sync_channel(1)).unzip();
        // Each object's sender goes to the thread that takes it (dropped with it, even on a
        // panic: the attempt's thread then sees the channel close instead of waiting).
        let senders = Mutex::new(senders.into_iter().map(Some).collect::<Vec<_>>());
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            for _ in 0..self.threads.min(n) {
                scope.spawn(|| self.decode_loop(&senders, &next, &stop));
            }
            let drained = (|| {
                let mut objects = Vec::with_capacity(n);
                for (i, rx) in receivers.iter().enumerate() {
                    loop {
                        if self.env.cancel.load(Ordering::Relaxed) {
                            return Err(ShardError::cancelled());
                        }
                        match rx.recv() {
                            Ok(Piece::Batch(batch, bytes)) => sink.write_batch(batch, bytes)?,
                            Ok(Piece::Failed(lines, k)) => {
                                failed.write_lines(&lines, k).map_err(ShardError::sink)?
                            }
                            Ok(Piece::Unrecoverable(lines, k)) => unrecoverable
                                .write_lines(&lines, k)
                                .map_err(ShardError::sink)?,
                            Ok(Piece::Done {
                                stats,
                                stored,
                                tally: t,
                            }) => {
                                tally.absorb(*t);
                                tally.object_done(stored, &self.env.progress);
                                sink.publish(&self.env.progress);
                                objects.push(stats);
                                break;
                            }
                            Ok(Piece::Error(e)) => return Err(e),
                            Err(_) => {
                                return Err(ShardError {
                                    message: format!(
                                        "internal error: the decode thread of {} stopped",
                                        self.todo[i].key
                                    ),
                                    retryable: true,
                                });
                            }
                        }
                    }
                }
                Ok(objects)
            })();
            // Stopped early: the decode threads stop at their next send or object.
            stop.store(true, Ordering::Relaxed);
            drop(receivers);
            drained
        })
    }

    fn decode_loop<'f>(
        &'f self,
        senders: &Mutex<Vec<Option<SyncSender<Piece<'f>>>>>,
        next: &AtomicUsize,
        stop: &AtomicBool,
    ) {
        let mut scratch = Scratch::default();
        loop {
            if stop.load(Ordering::Relaxed) || self.env.cancel.load(Ordering::Relaxed) {
                return;
            }
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(tx) = senders
                .lock()
                .ok()
                .and_then(|mut s| s.get_mut(i).and_then(Option::take))
            else {
                return;
            };
            match self.decode_one(i, &tx, &mut scratch) {
                Ok(Ok(())) => {}
                Ok(Err(Gone)) => return,
                Err(e) => {
                    if tx.send(Piece::Error(e)).is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// One object, start to end.
    fn decode_one<'f>(
        &'f self,
        i: usize,
        tx: &SyncSender<Piece<'f>>,
        scratch: &mut Scratch,
    ) -> Result<Result<(), Gone>, ShardError> {
        let object = &self.todo[i];
        let raw = self
            .source
            .open(object)
            .map_err(|e| ShardError::storage(&format!("opening {}", object.key), &e))?;
        // (This thread is the read-ahead: no other.)
        let opened = super::read::decoded(raw, object, false)?;
        let mut stats = opened.stats(object);
        let mut tally = Tally::new(self.router.flows());
        let mut collect = Collect {
            rows: Rows::default(),
            schema: schema(),
            tx,
            batch_bytes: BATCH_BYTES / self.threads.max(1),
            failed: Default::default(),
            unrecoverable: Default::default(),
        };
        let mut dec = Decoder::new(opened.reader, self.decoder);
        while let Some(item) = dec.next().map_err(|e| ShardError::read(&object.key, e))? {
            handle_item(
                item,
                i,
                &object.key,
                self.router,
                scratch,
                None,
                &mut tally,
                &mut stats,
                &mut collect,
            )?;
            if let Err(g) = collect.send(false) {
                return Ok(Err(g));
            }
        }
        stats.decoded_bytes = dec.bytes_read();
        if let Err(g) = collect.send(true) {
            return Ok(Err(g));
        }
        let done = Piece::Done {
            stats,
            stored: opened.stored.load(Ordering::Relaxed),
            tally: Box::new(tally),
        };
        Ok(tx.send(done).map_err(|_| Gone))
    }
}
