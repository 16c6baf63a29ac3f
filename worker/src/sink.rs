//! Outputs of one shard attempt: Parquet files of recovered events and JSON lines of failed
//! records. Both are written through an `OutputStore` and become visible only when finished.

use std::io::Write;

use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use rewind_common::job::OutputFileEntry;
use rewind_common::storage::{OutputFile, OutputStore, StorageError};
use serde::Serialize;

use crate::record::{Rows, schema};

/// Rows per record batch handed to the Parquet writer.
pub(crate) const BATCH_ROWS: usize = 16 * 1024;
/// Or fewer when the `data` column of a batch grows past this.
pub(crate) const BATCH_BYTES: usize = 32 << 20;
/// A file is closed and a new one started past this many uncompressed bytes.
const FILE_BYTES: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("writing parquet {key}: {source}")]
    Parquet {
        key: String,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("writing {key}: {source}")]
    Io {
        key: String,
        #[source]
        source: std::io::Error,
    },
}

/// The false-positive rate of the bloom filters on keys (`event_id`, a repair's key).
pub const KEY_FILTER_FPP: f64 = 1e-5;

pub fn writer_properties() -> WriterProperties {
    writer_properties_for(None)
}

/// The writer properties for a file whose rows are known before it is opened (a small file
/// written in one batch): its key filter is sized for those rows, not for a full row group —
/// allocating, filling and folding a filter for 256 K rows cost more than writing a file of a
/// few hundred rows (field partitioning makes many such files).
pub fn writer_properties_for(rows: Option<usize>) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default()))
        .set_max_row_group_row_count(Some(256 * 1024))
        .set_max_row_group_bytes(Some(128 << 20))
        .set_dictionary_enabled(false)
        .set_statistics_truncate_length(Some(64))
        .set_created_by(format!("rewind {}", env!("CARGO_PKG_VERSION")));
    // Low-cardinality columns compress best with dictionaries.
    for col in ["org_id", "event_type", "domain", "schema_version"] {
        b = b.set_column_dictionary_enabled(ColumnPath::from(col), true);
    }
    // Min/max of raw JSON text is useless for pruning and costs time.
    b = b.set_column_statistics_enabled(ColumnPath::from("data"), EnabledStatistics::None);
    // A bloom filter on the key keyed repairs look rows up by: `rewind repair --key event_id`
    // reads only the files that may hold a key. A repair asks for many keys at once (1,000 keys
    // against a 1% filter find a false positive in almost every file), so the rate is 1 in
    // 100,000: 1,000 keys read about 1% of the files that hold none. (Sized for a full row group,
    // then folded to what the row group holds, so small files carry small filters.)
    b = b
        .set_column_bloom_filter_enabled(ColumnPath::from("event_id"), true)
        .set_column_bloom_filter_fpp(ColumnPath::from("event_id"), KEY_FILTER_FPP);
    if let Some(rows) = rows {
        b = b.set_column_bloom_filter_max_ndv(ColumnPath::from("event_id"), rows.max(64) as u64);
    }
    b.build()
}

struct OpenFile {
    key: String,
    writer: Encoder,
    rows: u64,
    bytes: u64,
}

/// A file's Parquet encoder. Encoding and zstd are about half of a shard's CPU, so by default
/// they run on a thread of their own, one batch at a time (a rendezvous channel: the shard's
/// thread routes the next batch's rows meanwhile, and at most one batch waits); the file is
/// the same byte for byte. `REWIND_ENCODE_INLINE=1` encodes on the shard's thread (the
/// benchmarks' baseline).
enum Encoder {
    Inline(Box<ArrowWriter<Box<dyn OutputFile>>>),
    Thread {
        tx: std::sync::mpsc::SyncSender<arrow_array::RecordBatch>,
        done: std::thread::JoinHandle<Result<Box<dyn OutputFile>, ParquetError>>,
    },
}

type ParquetError = parquet::errors::ParquetError;

impl Encoder {
    fn new(
        writer: ArrowWriter<Box<dyn OutputFile>>,
        thread: bool,
    ) -> Result<Encoder, ParquetError> {
        if !thread {
            return Ok(Encoder::Inline(Box::new(writer)));
        }
        let (tx, rx) = std::sync::mpsc::sync_channel::<arrow_array::RecordBatch>(0);
        let done = std::thread::Builder::new()
            .name("rewind-encode".into())
            .spawn(move || {
                let mut writer = writer;
                for batch in rx {
                    writer.write(&batch)?;
                }
                writer.into_inner()
            });
        match done {
            Ok(done) => Ok(Encoder::Thread { tx, done }),
            Err(e) => Err(ParquetError::General(format!(
                "starting the encoder thread: {e}"
            ))),
        }
    }

    fn write(&mut self, batch: arrow_array::RecordBatch) -> Result<(), ParquetError> {
        match self {
            Encoder::Inline(w) => w.write(&batch),
            Encoder::Thread { tx, .. } => match tx.send(batch) {
                Ok(()) => Ok(()),
                // The thread ended early: its error says why (`close` returns it).
                Err(_) => Err(ParquetError::General("the encoder stopped".into())),
            },
        }
    }

    /// Writes what is buffered and the footer; the file, to finish.
    fn close(self) -> Result<Box<dyn OutputFile>, ParquetError> {
        match self {
            Encoder::Inline(w) => w.into_inner(),
            Encoder::Thread { tx, done } => {
                drop(tx);
                done.join().unwrap_or_else(|_| {
                    Err(ParquetError::General("the encoder thread panicked".into()))
                })
            }
        }
    }
}

/// Writes the recovered rows of one shard attempt as one or more Parquet files.
pub struct ParquetSink<'a> {
    store: &'a dyn OutputStore,
    key_for: Box<dyn Fn(u32) -> String + Send + 'a>,
    schema: SchemaRef,
    rows: Rows,
    current: Option<OpenFile>,
    files: Vec<OutputFileEntry>,
    next_n: u32,
    /// The batch being written is the file's last (`finish`).
    last_batch: bool,
    /// Encode on a thread of its own (see [`Encoder`]).
    thread: bool,
}

impl<'a> ParquetSink<'a> {
    /// `key_for(n)` names the n-th file of the attempt.
    pub fn new(store: &'a dyn OutputStore, key_for: impl Fn(u32) -> String + Send + 'a) -> Self {
        ParquetSink {
            store,
            key_for: Box::new(key_for),
            schema: schema(),
            rows: Rows::default(),
            current: None,
            files: Vec::new(),
            next_n: 0,
            last_batch: false,
            thread: false,
        }
    }

    /// Encodes on a thread of its own when `on` (unless `REWIND_ENCODE_INLINE=1`).
    pub fn encoder_thread(mut self, on: bool) -> Self {
        self.thread = on && !std::env::var("REWIND_ENCODE_INLINE").is_ok_and(|v| v == "1");
        self
    }

    pub fn rows(&mut self) -> &mut Rows {
        &mut self.rows
    }

    /// Writes the buffered rows out when a batch is full.
    pub fn maybe_flush(&mut self) -> Result<(), SinkError> {
        if self.rows.len() >= BATCH_ROWS || self.rows.buffered_bytes() >= BATCH_BYTES {
            self.flush_batch()?;
        }
        Ok(())
    }

    fn flush_batch(&mut self) -> Result<(), SinkError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let batch_bytes = self.rows.buffered_bytes() as u64;
        let batch = self.rows.finish(&self.schema);
        self.write_batch(batch, batch_bytes)
    }

    /// Writes a batch of rows built elsewhere (`batch_bytes`: their buffered size), in order
    /// with the rows appended here.
    pub fn write_batch(
        &mut self,
        batch: arrow_array::RecordBatch,
        batch_bytes: u64,
    ) -> Result<(), SinkError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.current.is_none() {
            let key = (self.key_for)(self.next_n);
            self.next_n += 1;
            // Written staged; the job commit makes it visible under `key`.
            let file = self.store.create(&rewind_common::output::staged(&key))?;
            let known = self.last_batch.then_some(batch.num_rows());
            let writer = ArrowWriter::try_new(
                file,
                self.schema.clone(),
                Some(writer_properties_for(known)),
            )
            .map_err(|source| SinkError::Parquet {
                key: key.clone(),
                source,
            })?;
            let writer =
                Encoder::new(writer, self.thread).map_err(|source| SinkError::Parquet {
                    key: key.clone(),
                    source,
                })?;
            self.current = Some(OpenFile {
                key,
                writer,
                rows: 0,
                bytes: 0,
            });
        }
        let Some(OpenFile {
            key,
            writer,
            rows,
            bytes,
        }) = self.current.as_mut()
        else {
            unreachable!("a file was just opened")
        };
        let batch_rows = batch.num_rows() as u64;
        if let Err(e) = writer.write(batch) {
            // A stopped encoder thread: its own error is the one to report.
            let key = key.clone();
            let source = match self.current.take() {
                Some(f) => f.writer.close().err().unwrap_or(e),
                None => e,
            };
            return Err(SinkError::Parquet { key, source });
        }
        *rows += batch_rows;
        *bytes += batch_bytes;
        if *bytes >= FILE_BYTES {
            self.close_file()?;
        }
        Ok(())
    }

    fn close_file(&mut self) -> Result<(), SinkError> {
        if let Some(OpenFile {
            key, writer, rows, ..
        }) = self.current.take()
        {
            let file = writer.close().map_err(|source| SinkError::Parquet {
                key: key.clone(),
                source,
            })?;
            while crate::failpoint("hang-before-file-finish") {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
            let written = file.finish()?;
            self.files.push(OutputFileEntry {
                key,
                size: written.size,
                rows,
                version: written.version,
            });
        }
        Ok(())
    }

    /// Flushes and closes; returns the files written (none when no row was recovered).
    pub fn finish(mut self) -> Result<Vec<OutputFileEntry>, SinkError> {
        // A file opened now holds exactly this last batch.
        self.last_batch = true;
        self.flush_batch()?;
        self.close_file()?;
        Ok(std::mem::take(&mut self.files))
    }
}

/// One failed record, as written to the failed output (JSON lines).
#[derive(Debug, Serialize)]
pub struct FailedRecord<'a> {
    pub source_key: &'a str,
    pub byte_offset: u64,
    pub byte_length: u64,
    /// A stable short name of the failure (`truncated`, `syntax`, `invalid_utf8`, …).
    pub code: &'a str,
    pub reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_base64: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub raw_truncated: bool,
    /// The flow that failed the event or routed it here, and the failing step (index, op).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub op: Option<&'a str>,
}

impl<'a> FailedRecord<'a> {
    /// `raw` goes out as text when it is UTF-8, else base64.
    pub fn new(
        source_key: &'a str,
        byte_offset: u64,
        byte_length: u64,
        code: &'a str,
        reason: &'a str,
        raw: &'a [u8],
        raw_truncated: bool,
    ) -> Self {
        use base64::Engine;
        let (raw, raw_base64) = match std::str::from_utf8(raw) {
            Ok(text) => (Some(text), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(raw)),
            ),
        };
        FailedRecord {
            source_key,
            byte_offset,
            byte_length,
            code,
            reason,
            raw,
            raw_base64,
            raw_truncated,
            flow: None,
            step: None,
            op: None,
        }
    }

    /// The record of a whole event (its bytes all kept) at `offset` of `source_key`.
    pub fn of_event(
        source_key: &'a str,
        offset: u64,
        raw: &'a [u8],
        code: &'a str,
        reason: &'a str,
    ) -> Self {
        FailedRecord::new(
            source_key,
            offset,
            raw.len() as u64,
            code,
            reason,
            raw,
            false,
        )
    }

    /// Appends the record as one JSON line to `out`.
    pub fn line(&self, out: &mut Vec<u8>) {
        // (Serialising these fields to memory cannot fail.)
        let _ = serde_json::to_writer(&mut *out, self);
        out.push(b'\n');
    }

    /// Names the flow (and step) the record comes from.
    pub fn with_flow(mut self, flow: Option<&'a str>, step: Option<(usize, &'a str)>) -> Self {
        self.flow = flow;
        self.step = step.map(|s| s.0);
        self.op = step.map(|s| s.1);
        self
    }
}

/// Writes the failed (or unrecoverable) records of one shard attempt; the file exists only if a
/// record was written.
pub struct FailedSink<'a> {
    store: &'a dyn OutputStore,
    key: String,
    file: Option<Box<dyn OutputFile>>,
    records: u64,
}

impl<'a> FailedSink<'a> {
    pub fn new(store: &'a dyn OutputStore, key: String) -> Self {
        FailedSink {
            store,
            key,
            file: None,
            records: 0,
        }
    }

    /// Appends `records` records already written as JSON lines (`FailedRecord::line`).
    pub fn write_lines(&mut self, lines: &[u8], records: u64) -> Result<(), SinkError> {
        if records == 0 {
            return Ok(());
        }
        if self.file.is_none() {
            // Written staged; the job commit makes it visible under `key`.
            self.file = Some(
                self.store
                    .create(&rewind_common::output::staged(&self.key))?,
            );
        }
        let Some(file) = self.file.as_mut() else {
            unreachable!("opened above")
        };
        file.write_all(lines).map_err(|source| SinkError::Io {
            key: self.key.clone(),
            source,
        })?;
        self.records += records;
        Ok(())
    }

    pub fn write(&mut self, record: &FailedRecord<'_>) -> Result<(), SinkError> {
        let mut line = Vec::with_capacity(256 + record.raw.map_or(0, str::len));
        record.line(&mut line);
        self.write_lines(&line, 1)
    }

    pub fn finish(self) -> Result<Option<OutputFileEntry>, SinkError> {
        match self.file {
            None => Ok(None),
            Some(file) => {
                let written = file.finish()?;
                Ok(Some(OutputFileEntry {
                    key: self.key,
                    size: written.size,
                    rows: self.records,
                    version: written.version,
                }))
            }
        }
    }
}
