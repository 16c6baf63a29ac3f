//! Publishing a landing-zone ingest: each Parquet file the ingest job wrote (staged below its
//! execution) is moved to its place in the trusted zone, and with dedup its rows whose key is in
//! the trusted zone already (the partitions the batch touches) or earlier in the batch are
//! dropped on the way: the file is rewritten without them. Idempotent: a file already in place
//! (an earlier, interrupted publish) is kept as it is and its keys count as seen, so running it
//! again decides exactly as the first run did.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use arrow_array::{Array, BooleanArray, RecordBatch, StringArray};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rewind_common::job::OutputFileEntry;
use rewind_common::storage::{OutputStore, StorageError};

/// A staged file and where it goes.
#[derive(Debug, Clone)]
pub struct Move {
    pub staged: String,
    pub to: String,
    /// Its rows (from the job's manifest).
    pub rows: u64,
}

#[derive(Debug, Default)]
pub struct Published {
    pub files: Vec<OutputFileEntry>,
    /// Rows dropped as duplicates of the trusted zone or of the batch.
    pub duplicates: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{key}: {why}")]
    File { key: String, why: String },
}

fn file_err(key: &str, e: impl std::fmt::Display) -> PublishError {
    PublishError::File {
        key: key.to_string(),
        why: e.to_string(),
    }
}

fn read(store: &dyn OutputStore, key: &str) -> Result<Vec<RecordBatch>, PublishError> {
    read_columns(store, key, None)
}

/// The file's batches, only `columns` of them when given (the dedup keys: a file is read whole
/// only when it must be rewritten).
fn read_columns(
    store: &dyn OutputStore,
    key: &str,
    columns: Option<&[String]>,
) -> Result<Vec<RecordBatch>, PublishError> {
    let body = store.get(key)?.ok_or_else(|| file_err(key, "is gone"))?;
    let mut builder = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(body))
        .map_err(|e| file_err(key, e))?;
    if let Some(cols) = columns {
        let mask = parquet::arrow::ProjectionMask::columns(
            builder.parquet_schema(),
            cols.iter().map(String::as_str),
        );
        builder = builder.with_projection(mask);
    }
    let reader = builder.build().map_err(|e| file_err(key, e))?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(key, e))
}

/// The dedup key of each row (`\0`-joined values of `columns`; a row missing one has none).
fn keys(
    key: &str,
    batch: &RecordBatch,
    columns: &[String],
) -> Result<Vec<Option<String>>, PublishError> {
    let mut cols = Vec::new();
    for c in columns {
        let col = batch
            .column_by_name(c)
            .ok_or_else(|| file_err(key, format!("no column {c}")))?;
        let text = col
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| file_err(key, format!("column {c} is not text")))?;
        cols.push(text);
    }
    Ok((0..batch.num_rows())
        .map(|i| {
            let mut k = String::new();
            for (n, c) in cols.iter().enumerate() {
                if c.is_null(i) {
                    return None;
                }
                if n > 0 {
                    k.push('\0');
                }
                k.push_str(c.value(i));
            }
            Some(k)
        })
        .collect())
}

/// The partition directory of a key (`a=x/b=y/` of `a=x/b=y/part-….parquet`).
fn dir_of(key: &str) -> &str {
    key.rfind('/').map_or("", |i| &key[..=i])
}

/// Moves every staged file to its place (see the module's doc). `dedup`: the key columns
/// (`event_id`, or `event_id` and `timestamp`); `own`: a name part only this job's files have
/// (`part-<job>-`), so its own files already in place are not taken for the trusted zone's.
pub fn publish(
    store: &Arc<dyn OutputStore>,
    moves: &[Move],
    dedup: Option<&[String]>,
    own: &str,
) -> Result<Published, PublishError> {
    let mut out = Published::default();
    let mut seen: HashSet<String> = HashSet::new();
    if let Some(cols) = dedup {
        let dirs: BTreeSet<&str> = moves.iter().map(|m| dir_of(&m.to)).collect();
        for dir in dirs {
            for o in store.list(dir)? {
                let name = o.key.rsplit('/').next().unwrap_or("");
                if o.key[dir.len()..].contains('/')
                    || !name.ends_with(".parquet")
                    || name.contains(own)
                {
                    continue;
                }
                for b in read_columns(store.as_ref(), &o.key, Some(cols))? {
                    seen.extend(keys(&o.key, &b, cols)?.into_iter().flatten());
                }
            }
        }
    }
    for m in moves {
        // Published by an earlier run: as it is; its keys are seen.
        if let Some(meta) = store.head(&m.to)? {
            let mut rows = m.rows;
            if let Some(cols) = dedup {
                rows = 0;
                for b in read_columns(store.as_ref(), &m.to, Some(cols))? {
                    rows += b.num_rows() as u64;
                    seen.extend(keys(&m.to, &b, cols)?.into_iter().flatten());
                }
            }
            out.files.push(OutputFileEntry {
                key: m.to.clone(),
                size: meta.size,
                rows,
                version: meta.version,
            });
            store.delete(&m.staged)?;
            continue;
        }
        // Neither in place nor staged: every row was a duplicate (an earlier run dropped it).
        if store.head(&m.staged)?.is_none() {
            continue;
        }
        // Without dedup, or when none of its keys was seen (nor repeats in the file itself),
        // the file goes as it is; dedup reads the keys first, the whole file only when some of
        // its rows go.
        let whole = match dedup {
            None => true,
            Some(cols) => {
                let mut fresh = Vec::new();
                let mut any_dup = false;
                for b in read_columns(store.as_ref(), &m.staged, Some(cols))? {
                    for k in keys(&m.staged, &b, cols)? {
                        any_dup |= k.as_ref().is_some_and(|k| seen.contains(k));
                        fresh.push(k);
                    }
                }
                if !any_dup {
                    let mut mine = HashSet::new();
                    any_dup = fresh.iter().flatten().any(|k| !mine.insert(k.as_str()));
                }
                if !any_dup {
                    seen.extend(fresh.into_iter().flatten());
                }
                !any_dup
            }
        };
        if whole {
            let w = store.promote(&m.staged, &m.to)?;
            out.files.push(OutputFileEntry {
                key: m.to.clone(),
                size: w.size,
                rows: m.rows,
                version: w.version,
            });
            continue;
        }
        let cols = dedup.expect("only a dedup drops rows");
        let batches = read(store.as_ref(), &m.staged)?;
        let mut kept = Vec::new();
        let (mut rows, mut dropped) = (0u64, 0u64);
        for b in batches {
            let mask: BooleanArray = keys(&m.staged, &b, cols)?
                .into_iter()
                .map(|k| Some(k.is_none_or(|k| seen.insert(k))))
                .collect();
            let f = arrow_select::filter::filter_record_batch(&b, &mask)
                .map_err(|e| file_err(&m.staged, e))?;
            dropped += (b.num_rows() - f.num_rows()) as u64;
            rows += f.num_rows() as u64;
            if f.num_rows() > 0 {
                kept.push(f);
            }
        }
        out.duplicates += dropped;
        if dropped == 0 {
            let w = store.promote(&m.staged, &m.to)?;
            out.files.push(OutputFileEntry {
                key: m.to.clone(),
                size: w.size,
                rows,
                version: w.version,
            });
            continue;
        }
        if rows > 0 {
            // Rewritten without the duplicates, through a staged name.
            let tmp = format!("{}.dedup", m.staged);
            let schema = kept[0].schema();
            let file = store.create(&tmp)?;
            let mut w = ArrowWriter::try_new(file, schema, Some(crate::sink::writer_properties()))
                .map_err(|e| file_err(&m.to, e))?;
            for b in &kept {
                w.write(b).map_err(|e| file_err(&m.to, e))?;
            }
            w.into_inner().map_err(|e| file_err(&m.to, e))?.finish()?;
            let written = store.promote(&tmp, &m.to)?;
            out.files.push(OutputFileEntry {
                key: m.to.clone(),
                size: written.size,
                rows,
                version: written.version,
            });
        }
        store.delete(&m.staged)?;
    }
    Ok(out)
}
