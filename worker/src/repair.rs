//! Keyed repair of a Parquet dataset (any Hive-style layout, written by Rewind or not): delete
//! rows by key, replace rows by key, optionally insert the replacement rows whose key is not
//! there. Only files that may hold an affected key are read, found by the key column's
//! row-group statistics and bloom filters (footers and filters are read with ranged reads);
//! each candidate is read once and rewritten when a row of it changes. The rewrite is one
//! recorded change of the dataset's log (`rewind_common::change::apply`), reversible by
//! `rewind rollback`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, RecordBatch, cast::AsArray};
use arrow_schema::{DataType, Schema, SchemaRef};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::metadata::ParquetMetaData;
use parquet::file::properties::{ReaderProperties, WriterProperties};
use parquet::file::reader::{ChunkReader, FileReader, Length};
use parquet::file::serialized_reader::{ReadOptionsBuilder, SerializedFileReader};
use parquet::file::statistics::Statistics;
use parquet::schema::types::ColumnPath;
use rewind_common::change::{self, ChangeKind, Meta, Op};
use rewind_common::storage::{ObjectMeta, OutputStore, StorageError};
use rewind_common::table::TableFile;
use serde::Serialize;

/// Why a repair cannot be done. `Input` errors name what is wrong and where, and nothing has
/// been written.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Change(#[from] change::ChangeError),
    #[error("{what}: {why}")]
    Parquet { what: String, why: String },
}

fn input(msg: impl Into<String>) -> RepairError {
    RepairError::Input(msg.into())
}

/// A key value: integer and string key columns.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    Int(i64),
    Str(String),
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Int(i) => write!(f, "{i}"),
            Key::Str(s) => f.write_str(s),
        }
    }
}

/// The kind of key a column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Int,
    Str,
}

impl KeyType {
    fn of(t: &DataType) -> Option<KeyType> {
        match t {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Some(KeyType::Str),
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32 => Some(KeyType::Int),
            _ => None,
        }
    }

    /// A key from text (a keys file's line or field).
    pub fn parse(self, text: &str) -> Result<Key, String> {
        match self {
            KeyType::Str => Ok(Key::Str(text.to_string())),
            KeyType::Int => text
                .trim()
                .parse()
                .map(Key::Int)
                .map_err(|_| format!("{text:?} is not an integer")),
        }
    }
}

/// The key of every row of a column (`None` for nulls).
fn keys_of(col: &ArrayRef) -> Result<Vec<Option<Key>>, String> {
    let n = col.len();
    let mut out = Vec::with_capacity(n);
    match col.data_type() {
        DataType::Utf8 => {
            let a = col.as_string::<i32>();
            for i in 0..n {
                out.push(a.is_valid(i).then(|| Key::Str(a.value(i).to_string())));
            }
        }
        DataType::LargeUtf8 => {
            let a = col.as_string::<i64>();
            for i in 0..n {
                out.push(a.is_valid(i).then(|| Key::Str(a.value(i).to_string())));
            }
        }
        DataType::Utf8View => {
            let a = col.as_string_view();
            for i in 0..n {
                out.push(a.is_valid(i).then(|| Key::Str(a.value(i).to_string())));
            }
        }
        t if KeyType::of(t) == Some(KeyType::Int) => {
            let a = arrow_cast_i64(col)?;
            for i in 0..n {
                out.push(a.is_valid(i).then(|| Key::Int(a.value(i))));
            }
        }
        t => return Err(format!("a key column of type {t} (string or integer only)")),
    }
    Ok(out)
}

/// An integer column as i64 values.
fn arrow_cast_i64(col: &ArrayRef) -> Result<arrow_array::Int64Array, String> {
    use arrow_array::types::*;
    let n = col.len();
    macro_rules! widen {
        ($t:ty) => {{
            let a = col.as_primitive::<$t>();
            (0..n)
                .map(|i| a.is_valid(i).then(|| a.value(i) as i64))
                .collect()
        }};
    }
    Ok(match col.data_type() {
        DataType::Int8 => widen!(Int8Type),
        DataType::Int16 => widen!(Int16Type),
        DataType::Int32 => widen!(Int32Type),
        DataType::Int64 => widen!(Int64Type),
        DataType::UInt8 => widen!(UInt8Type),
        DataType::UInt16 => widen!(UInt16Type),
        DataType::UInt32 => widen!(UInt32Type),
        t => return Err(format!("{t} is not an integer type")),
    })
}

/// Ranged reads of one object of a store, for the Parquet reader (footer, bloom filters).
struct Ranged {
    store: Arc<dyn OutputStore>,
    key: String,
    size: u64,
    /// Bytes read, for the report.
    read: Arc<std::sync::atomic::AtomicU64>,
}

impl Length for Ranged {
    fn len(&self) -> u64 {
        self.size
    }
}

impl ChunkReader for Ranged {
    type T = std::io::Cursor<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        let len = self.size.saturating_sub(start);
        Ok(std::io::Cursor::new(self.get_bytes(start, len as usize)?))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let bytes = self
            .store
            .get_range(&self.key, start, length as u64)
            .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))?;
        self.read
            .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(Bytes::from(bytes))
    }
}

/// What the repair does.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub key: String,
    /// Rows with these keys are deleted.
    pub delete: BTreeSet<Key>,
    /// Rows replacing the rows with the same key (one per key), with the dataset's columns
    /// and, for inserts into a partitioned dataset, its partition columns.
    pub update: Option<Rows>,
    /// Insert the update rows whose key is not in the dataset (else they are reported).
    pub upsert: bool,
    pub dry_run: bool,
    /// Who asks (a token's subject), and what to record as the change's spec.
    pub who: Option<String>,
    pub spec: Option<serde_json::Value>,
}

impl Request {
    /// Where each replacement row's key is, and every key the repair looks for.
    fn wanted(&self) -> (BTreeMap<&Key, usize>, BTreeSet<Key>) {
        let update_at: BTreeMap<&Key, usize> = self
            .update
            .as_ref()
            .map(|r| r.keys.iter().enumerate().map(|(i, k)| (k, i)).collect())
            .unwrap_or_default();
        let wanted = self
            .delete
            .iter()
            .cloned()
            .chain(update_at.keys().map(|k| (*k).clone()))
            .collect();
        (update_at, wanted)
    }
}

/// Replacement rows: the batch in the dataset's file schema, their keys, and the partition
/// values each row carries (for inserts).
#[derive(Debug, Clone)]
pub struct Rows {
    pub batch: RecordBatch,
    pub keys: Vec<Key>,
    pub partitions: Vec<BTreeMap<String, String>>,
}

/// One file the repair touched (or, dry, would touch).
#[derive(Debug, Clone, Serialize)]
pub struct FileChange {
    pub key: String,
    pub rows_before: u64,
    pub rows_after: u64,
    pub deleted: u64,
    pub updated: u64,
    /// Inserted (a new file of `--upsert`).
    pub inserted: u64,
    /// A Delta table's files are never overwritten: the new file's key, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub written_as: Option<String>,
}

/// What a repair did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub dry_run: bool,
    pub files_in_dataset: u64,
    /// Files whose statistics and bloom filters may hold an affected key (read whole).
    pub files_read: u64,
    pub files_rewritten: u64,
    pub files_removed: u64,
    pub files_added: u64,
    pub rows_deleted: u64,
    pub rows_updated: u64,
    pub rows_inserted: u64,
    /// Keys asked for that no row had.
    pub delete_keys_not_found: Vec<String>,
    pub update_keys_not_found: Vec<String>,
    /// Bytes read (footers, filters, candidate files) and written.
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub files: Vec<FileChange>,
    /// The recorded change (not on a dry run, nor when nothing changed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
}

/// The Hive partition values of a key's directories.
fn partition_of(key: &str) -> BTreeMap<String, String> {
    let mut segs: Vec<&str> = key.split('/').collect();
    segs.pop();
    segs.iter()
        .filter_map(|s| s.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A file's footer (and reader, for its bloom filters).
struct Footer {
    reader: SerializedFileReader<Ranged>,
    /// Bytes its ranged reads fetched.
    read: Arc<std::sync::atomic::AtomicU64>,
}

impl Footer {
    fn metadata(&self) -> &ParquetMetaData {
        self.reader.metadata()
    }
}

fn parquet_err(what: &str, e: impl std::fmt::Display) -> RepairError {
    RepairError::Parquet {
        what: what.to_string(),
        why: e.to_string(),
    }
}

fn open_footer(store: &Arc<dyn OutputStore>, meta: &ObjectMeta) -> Result<Footer, RepairError> {
    let read = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let ranged = Ranged {
        store: store.clone(),
        key: meta.key.clone(),
        size: meta.size,
        read: read.clone(),
    };
    let options = ReadOptionsBuilder::new()
        .with_reader_properties(
            ReaderProperties::builder()
                .set_read_bloom_filter(true)
                .build(),
        )
        .build();
    let reader = SerializedFileReader::new_with_options(ranged, options)
        .map_err(|e| parquet_err(&meta.key, e))?;
    Ok(Footer { reader, read })
}

/// The Arrow schema of a file.
fn arrow_schema(key: &str, md: &ParquetMetaData) -> Result<SchemaRef, RepairError> {
    parquet::arrow::parquet_to_arrow_schema(
        md.file_metadata().schema_descr(),
        md.file_metadata().key_value_metadata(),
    )
    .map(Arc::new)
    .map_err(|e| parquet_err(key, e))
}

/// Whether a row group may hold one of `keys` (by its statistics, then its bloom filter).
fn may_hold(
    footer: &Footer,
    rg: usize,
    col: usize,
    keys: &BTreeSet<Key>,
) -> Result<bool, RepairError> {
    let md = footer.metadata().row_group(rg);
    let chunk = md.column(col);
    // Keys within the chunk's min/max.
    let candidates: Vec<&Key> = match chunk.statistics() {
        Some(Statistics::Int32(s)) => match (s.min_opt(), s.max_opt()) {
            (Some(lo), Some(hi)) => keys
                .range(Key::Int(*lo as i64)..=Key::Int(*hi as i64))
                .collect(),
            _ => keys.iter().collect(),
        },
        Some(Statistics::Int64(s)) => match (s.min_opt(), s.max_opt()) {
            (Some(lo), Some(hi)) => keys.range(Key::Int(*lo)..=Key::Int(*hi)).collect(),
            _ => keys.iter().collect(),
        },
        Some(Statistics::ByteArray(s)) => match (s.min_bytes_opt(), s.max_bytes_opt()) {
            (Some(lo), Some(hi)) => keys
                .iter()
                .filter(|k| match k {
                    Key::Str(k) => k.as_bytes() >= lo && k.as_bytes() <= hi,
                    Key::Int(_) => true,
                })
                .collect(),
            _ => keys.iter().collect(),
        },
        _ => keys.iter().collect(),
    };
    if candidates.is_empty() {
        return Ok(false);
    }
    let rg_reader = footer
        .reader
        .get_row_group(rg)
        .map_err(|e| parquet_err("reading a row group's bloom filter", e))?;
    let Some(bloom) = rg_reader.get_column_bloom_filter(col) else {
        return Ok(true);
    };
    let physical = chunk.column_type();
    Ok(candidates.iter().any(|k| match k {
        Key::Str(s) => bloom.check(s.as_str()),
        Key::Int(i) => match physical {
            parquet::basic::Type::INT32 => bloom.check(&(*i as i32)),
            _ => bloom.check(i),
        },
    }))
}

fn writer_properties(key: &str) -> WriterProperties {
    let props = crate::sink::writer_properties();
    props
        .into_builder()
        .set_column_bloom_filter_enabled(ColumnPath::from(key), true)
        .set_column_bloom_filter_fpp(ColumnPath::from(key), crate::sink::KEY_FILTER_FPP)
        .build()
}

/// Writes batches as one staged Parquet object; its size.
fn write_file(
    store: &dyn OutputStore,
    staged: &str,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    key_col: &str,
) -> Result<u64, RepairError> {
    let file = store.create(staged)?;
    let mut w = ArrowWriter::try_new(file, schema.clone(), Some(writer_properties(key_col)))
        .map_err(|e| parquet_err(staged, e))?;
    for b in batches {
        w.write(b).map_err(|e| parquet_err(staged, e))?;
    }
    let file = w.into_inner().map_err(|e| parquet_err(staged, e))?;
    Ok(file.finish()?.size)
}

/// The replacement rows in one file's schema: the same columns in its order.
fn rows_for(schema: &SchemaRef, rows: &Rows) -> Result<RecordBatch, RepairError> {
    let src = rows.batch.schema();
    let mut cols = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let (i, g) = src.column_with_name(f.name()).ok_or_else(|| {
            input(format!(
                "--update: the rows have no column {} (the dataset's files do)",
                f.name()
            ))
        })?;
        if g.data_type() != f.data_type() {
            return Err(input(format!(
                "--update: column {} is {} in the rows but {} in the dataset",
                f.name(),
                g.data_type(),
                f.data_type()
            )));
        }
        cols.push(rows.batch.column(i).clone());
    }
    RecordBatch::try_new(schema.clone(), cols)
        .map_err(|e| input(format!("--update: the rows do not fit the dataset: {e}")))
}

/// Whether row `i` of `a` and row `j` of `b` (same schema) are equal.
fn same_row(a: &RecordBatch, i: usize, b: &RecordBatch, j: usize) -> bool {
    a.columns()
        .iter()
        .zip(b.columns())
        .all(|(x, y)| x.slice(i, 1).as_ref() == y.slice(j, 1).as_ref())
}

/// Runs a repair on the dataset `store` is rooted at.
pub fn repair(store: &Arc<dyn OutputStore>, req: &Request) -> Result<Report, RepairError> {
    let shared = store;
    let store: &dyn OutputStore = store.as_ref();
    // A repair stopped half-way is finished first (its intent is in the log).
    change::resume_pending(store)?;
    if req.delete.is_empty() && req.update.as_ref().is_none_or(|r| r.keys.is_empty()) {
        return Err(input(
            "nothing to do: give --delete KEYS and/or --update ROWS",
        ));
    }
    if let Some(rows) = &req.update {
        let mut seen = BTreeSet::new();
        for k in &rows.keys {
            if !seen.insert(k) {
                return Err(input(format!("--update: key {k} is in the rows twice")));
            }
            if req.delete.contains(k) {
                return Err(input(format!("key {k} is both to delete and to update")));
            }
        }
    }
    // A Delta table: its files are what its log says (removed files stay in the store for time
    // travel), rewrites are new files, and the change is one commit removing and adding them.
    let table = store.table();
    let table_files: BTreeMap<String, TableFile> = match &table {
        Some(t) => t.files()?,
        None => BTreeMap::new(),
    };
    let files = match &table {
        Some(_) => table_files
            .values()
            .map(|f| ObjectMeta::new(f.key.clone(), f.size))
            .collect(),
        None => rewind_common::storage::parquet_files(store)?,
    };
    if files.is_empty() {
        return Err(input(format!(
            "no Parquet files in {} (nothing ending in .parquet outside _ and . directories)",
            store.describe()
        )));
    }
    let (update_at, wanted) = req.wanted();

    let mut report = Report {
        dry_run: req.dry_run,
        files_in_dataset: files.len() as u64,
        ..Report::default()
    };
    // 1. Candidates, by footers and filters.
    let (candidates, footer_bytes) = candidates(shared, &files, &req.key, &wanted)?;
    report.bytes_read += footer_bytes;

    // Inserts need their partition values: checked before anything is read or written.
    let layout: BTreeMap<String, String> = match &table {
        Some(t) => t
            .partition_columns()?
            .into_iter()
            .map(|c| (c, String::new()))
            .collect(),
        None => partition_of(&files[0].key),
    };
    if req.upsert
        && let Some(rows) = &req.update
    {
        for (i, have) in rows.partitions.iter().enumerate() {
            if let Some(name) = layout.keys().find(|n| !have.contains_key(*n)) {
                return Err(input(format!(
                    "--upsert: the row with key {} has no value for the partition column \
                     {name}, so it would have no place in the dataset",
                    rows.keys[i]
                )));
            }
        }
    }

    // 2. Each candidate read once, rows deleted and replaced, and (unless dry) the new file
    // staged right away: a few files in memory at a time, on as many threads as there are
    // cores.
    let change_id_hint = rewind_common::JobId::generate();
    let hint = change_id_hint.to_string();
    let staging = format!("_rewind/incoming/{change_id_hint}/");
    let ctx = Rewrite {
        store,
        req,
        update_at: &update_at,
        staging: (!req.dry_run).then_some(staging.as_str()),
        table: table.is_some().then_some(hint.as_str()),
    };
    let outcome = rewrite_all(&ctx, &candidates);
    let cleanup = || {
        if table.is_some() {
            // (The new files of this repair carry its hint in their names.)
            let mark = format!("-repair-{hint}");
            for o in store.list("").unwrap_or_default() {
                if o.key.contains(&mark) {
                    let _ = store.delete(&o.key);
                }
            }
        }
        for o in store.list(&staging).unwrap_or_default() {
            let _ = store.delete(&o.key);
        }
    };
    let rewritten = match outcome {
        Ok(r) => r,
        Err(e) => {
            cleanup();
            return Err(e);
        }
    };
    let mut found: BTreeSet<Key> = BTreeSet::new();
    let mut ops = Vec::new();
    let (mut adds, mut removes): (Vec<TableFile>, Vec<TableFile>) = (Vec::new(), Vec::new());
    let mut changed = Vec::new();
    let mut read = BTreeMap::new();
    for r in rewritten {
        report.files_read += 1;
        report.bytes_read += r.bytes_read;
        report.bytes_written += r.bytes_written;
        found.extend(r.found);
        let Some(fc) = r.change else {
            continue;
        };
        read.insert(fc.key.clone(), r.seen);
        report.rows_deleted += fc.deleted;
        report.rows_updated += fc.updated;
        if let Some(old) = table_files.get(&fc.key) {
            removes.push(old.clone());
            if let Some(new) = &r.staged {
                adds.push(TableFile {
                    key: new.clone(),
                    size: r.bytes_written,
                    rows: Some(fc.rows_after),
                    partition: old.partition.clone(),
                });
            }
        }
        if fc.rows_after == 0 {
            report.files_removed += 1;
            ops.push(Op::Delete {
                key: fc.key.clone(),
            });
        } else {
            report.files_rewritten += 1;
            if let Some(from) = r.staged {
                ops.push(Op::Put {
                    key: fc.key.clone(),
                    from,
                    rows: Some(fc.rows_after),
                });
            }
        }
        changed.push(fc);
    }
    report.files = changed;
    report.delete_keys_not_found = req
        .delete
        .iter()
        .filter(|k| !found.contains(*k))
        .map(Key::to_string)
        .collect();
    let missing_updates: Vec<usize> = update_at
        .iter()
        .filter(|(k, _)| !found.contains(**k))
        .map(|(_, i)| *i)
        .collect();

    // 3. Inserts (--upsert), one new file per partition they fall in; else reported.
    let inserted = (|| -> Result<(), RepairError> {
        let Some(rows) = &req.update else {
            return Ok(());
        };
        if !req.upsert {
            report.update_keys_not_found = missing_updates
                .iter()
                .map(|i| rows.keys[*i].to_string())
                .collect();
            return Ok(());
        }
        let mut inserts: BTreeMap<BTreeMap<String, String>, Vec<usize>> = BTreeMap::new();
        for &i in &missing_updates {
            let p = layout
                .keys()
                .map(|n| (n.clone(), rows.partitions[i][n].clone()))
                .collect();
            inserts.entry(p).or_default().push(i);
        }
        if inserts.is_empty() {
            return Ok(());
        }
        let schema = match candidates.first() {
            Some((_, s)) => s.clone(),
            None => first_schema(shared, &files[0])?,
        };
        let batch = rows_for(&schema, rows)?;
        for (p, idx) in &inserts {
            let dir: String = p.iter().map(|(k, v)| format!("{k}={v}/")).collect();
            let key = format!("{dir}part-repair-{change_id_hint}.zstd.parquet");
            let from = match &table {
                Some(_) => key.clone(),
                None => format!("{staging}{key}.pending"),
            };
            let take: Vec<(usize, usize)> = idx.iter().map(|i| (0, *i)).collect();
            let b = arrow_select::interleave::interleave_record_batch(&[&batch], &take)
                .map_err(|e| parquet_err(&key, e))?;
            let n = b.num_rows() as u64;
            report.rows_inserted += n;
            report.files_added += 1;
            report.files.push(FileChange {
                key: key.clone(),
                rows_before: 0,
                rows_after: n,
                deleted: 0,
                updated: 0,
                inserted: n,
                written_as: None,
            });
            if !req.dry_run {
                let size = write_file(store, &from, &schema, std::slice::from_ref(&b), &req.key)?;
                report.bytes_written += size;
                adds.push(TableFile {
                    key: key.clone(),
                    size,
                    rows: Some(n),
                    partition: p
                        .iter()
                        .map(|(k, v)| (k.clone(), Some(v.clone())))
                        .collect(),
                });
                ops.push(Op::Put {
                    key,
                    from,
                    rows: Some(n),
                });
            }
        }
        Ok(())
    })();
    if let Err(e) = inserted {
        cleanup();
        return Err(e);
    }
    if req.dry_run || ops.is_empty() {
        return Ok(report);
    }

    // 4. One change moves the staged files in (what they replace is kept for a rollback).
    let meta = Meta {
        job: None,
        who: req.who.clone(),
        spec: req.spec.clone(),
        counts: None,
    };
    let applied = match &table {
        Some(_) => {
            let operation = if adds.is_empty() { "DELETE" } else { "UPDATE" };
            change::apply_table(store, ChangeKind::Repair, meta, operation, adds, removes)
        }
        None => change::apply_over(store, ChangeKind::Repair, meta, ops, &read),
    };
    let change = match applied {
        Ok(c) => c,
        // Refused while planning, before its intent: the staged files are nobody's. (After
        // the intent they are the intent's, which the next command on the dataset finishes.)
        Err(e @ (change::ChangeError::Conflict(_) | change::ChangeError::Refused(_))) => {
            cleanup();
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    report.change = Some(change.id);
    Ok(report)
}

/// Files that may hold a key, with their schemas.
type Candidates<'f> = Vec<(&'f ObjectMeta, SchemaRef)>;

/// The files that may hold one of `wanted` (key column statistics, then bloom filters, read
/// with ranged reads of the footers), each with its schema; and the bytes read to decide.
fn candidates<'f>(
    shared: &Arc<dyn OutputStore>,
    files: &'f [ObjectMeta],
    key: &str,
    wanted: &BTreeSet<Key>,
) -> Result<(Candidates<'f>, u64), RepairError> {
    let mut candidates: Vec<(&ObjectMeta, SchemaRef)> = Vec::new();
    let mut bytes = 0;
    for f in files {
        let footer = open_footer(shared, f)?;
        let schema = arrow_schema(&f.key, footer.metadata())?;
        let col = footer
            .metadata()
            .file_metadata()
            .schema_descr()
            .columns()
            .iter()
            .position(|c| c.path().string() == key)
            .ok_or_else(|| {
                input(format!(
                    "--key {key}: {} has no such column (it has {})",
                    f.key,
                    schema
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        let key_type = schema
            .field_with_name(key)
            .ok()
            .and_then(|fd| KeyType::of(fd.data_type()));
        if key_type.is_none() {
            return Err(input(format!(
                "--key {key}: a column of type {} (string or integer keys only)",
                schema
                    .field_with_name(key)
                    .map_or("?".into(), |fd| fd.data_type().to_string())
            )));
        }
        let mut hit = false;
        for rg in 0..footer.metadata().num_row_groups() {
            if may_hold(&footer, rg, col, wanted)? {
                hit = true;
                break;
            }
        }
        bytes += footer.read.load(std::sync::atomic::Ordering::Relaxed);
        if hit {
            candidates.push((f, schema));
        }
    }
    Ok((candidates, bytes))
}

/// One shard of a distributed repair (`rewind repair --coordinator`): the files of its plan
/// pruned and rewritten like a local repair's, staged below the job's `_rewind/jobs/<job>/`
/// (a Delta table's as new files), and the manifest the job commit applies in one change.
pub fn run_repair_shard(
    output: &Arc<dyn OutputStore>,
    spec: &rewind_common::JobSpec,
    shard: rewind_common::ShardId,
    attempt: u32,
    objects: Vec<ObjectMeta>,
) -> Result<(String, rewind_common::job::ShardManifest), RepairError> {
    use rewind_common::job::{ObjectStats, ShardManifest};
    use rewind_common::output::RepairedFile;
    let spec_r = spec
        .repair
        .as_ref()
        .ok_or_else(|| input("not a repair job"))?;
    let store = rewind_delta::open(output.clone())?;
    let keys = rewind_common::OutputKeys::of(spec);
    let input_body = store.get(&keys.repair_input())?.ok_or_else(|| {
        input(format!(
            "the repair input {} is missing",
            keys.repair_input()
        ))
    })?;
    let given: rewind_common::job::RepairInput = serde_json::from_slice(&input_body)
        .map_err(|e| input(format!("{}: {e}", keys.repair_input())))?;
    let mut manifest = ShardManifest {
        job: spec.job.clone(),
        shard,
        attempt,
        prefix: String::new(),
        files: Vec::new(),
        failed_file: None,
        unrecoverable_file: None,
        objects: objects
            .iter()
            .map(|o| ObjectStats {
                key: o.key.clone(),
                size: o.size,
                etag: o.etag.clone(),
                ..ObjectStats::default()
            })
            .collect(),
        skipped_objects: Vec::new(),
        counts: Default::default(),
        failed_by_reason: BTreeMap::new(),
        filtered_by_reason: BTreeMap::new(),
        kafka_offsets: BTreeMap::new(),
        kafka_ranges_complete: true,
        repaired: Vec::new(),
        found_keys: Vec::new(),
        files_read: 0,
        bytes_written: 0,
    };
    if let Some(first) = objects.first() {
        let schema = first_schema(&store, first)?;
        let kt = schema
            .field_with_name(&spec_r.key)
            .ok()
            .and_then(|f| KeyType::of(f.data_type()))
            .ok_or_else(|| {
                input(format!(
                    "--key {}: not a string or integer column of {}",
                    spec_r.key, first.key
                ))
            })?;
        let delete = given
            .delete
            .iter()
            .map(|k| kt.parse(k).map_err(|e| input(format!("--delete: {e}"))))
            .collect::<Result<BTreeSet<Key>, _>>()?;
        let update = match &given.rows {
            Some(text) => Some(read_rows_text(
                text,
                "--update",
                &schema,
                &spec_r.key,
                &BTreeSet::new(),
            )?),
            None => None,
        };
        let req = Request {
            key: spec_r.key.clone(),
            delete,
            update,
            upsert: false,
            dry_run: false,
            who: None,
            spec: None,
        };
        let (update_at, wanted) = req.wanted();
        let (cands, footer_bytes) = candidates(&store, &objects, &req.key, &wanted)?;
        let staging = format!("{}staging/a{attempt}/", keys.job_prefix());
        let hint = format!("{}-a{attempt}", spec.job);
        let ctx = Rewrite {
            store: store.as_ref(),
            req: &req,
            update_at: &update_at,
            staging: Some(staging.as_str()),
            table: store.table().is_some().then_some(hint.as_str()),
        };
        let mut bytes = footer_bytes;
        for r in rewrite_all(&ctx, &cands)? {
            manifest.files_read += 1;
            bytes += r.bytes_read;
            manifest.bytes_written += r.bytes_written;
            manifest
                .found_keys
                .extend(r.found.iter().map(Key::to_string));
            if let Some(fc) = r.change {
                manifest.repaired.push(RepairedFile {
                    key: fc.key,
                    staged: r.staged,
                    size: r.bytes_written,
                    rows_before: fc.rows_before,
                    rows_after: fc.rows_after,
                    deleted: fc.deleted,
                    updated: fc.updated,
                    seen: r.seen,
                });
            }
        }
        manifest.counts.objects = manifest.files_read;
        manifest.counts.bytes = bytes;
    }
    let key = keys.shard_manifest(shard, attempt);
    let body = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| input(format!("serialising the shard manifest: {e}")))?;
    store.put(&key, &body)?;
    Ok((key, manifest))
}

/// What every candidate's rewrite shares.
struct Rewrite<'a> {
    store: &'a dyn OutputStore,
    req: &'a Request,
    update_at: &'a BTreeMap<&'a Key, usize>,
    /// Where rewritten files are staged (`None`: a dry run writes nothing).
    staging: Option<&'a str>,
    /// A table destination: rewrites are new files named with this hint, not staged copies.
    table: Option<&'a str>,
}

/// One candidate, read and (when a row of it changes) rewritten.
struct Rewritten {
    bytes_read: u64,
    bytes_written: u64,
    /// Keys asked for that it holds.
    found: BTreeSet<Key>,
    /// What changes, when something does.
    change: Option<FileChange>,
    /// Where its new content is staged.
    staged: Option<String>,
    /// The file as it was read.
    seen: ObjectMeta,
}

/// Rewrites the candidates on up to one thread per core; results in the candidates' order.
fn rewrite_all(
    ctx: &Rewrite<'_>,
    candidates: &[(&ObjectMeta, SchemaRef)],
) -> Result<Vec<Rewritten>, RepairError> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 8)
        .min(candidates.len().max(1));
    let next = AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<Result<Rewritten, RepairError>>>> =
        candidates.iter().map(|_| Default::default()).collect();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((f, schema)) = candidates.get(i) else {
                        break;
                    };
                    let r = rewrite_one(ctx, f, schema);
                    let failed = r.is_err();
                    *results[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                    if failed {
                        // The others stop at their next file.
                        next.store(candidates.len(), Ordering::Relaxed);
                        break;
                    }
                }
            });
        }
    });
    let mut out = Vec::with_capacity(candidates.len());
    for r in results {
        match r.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(r) => out.push(r?),
            None => continue,
        }
    }
    Ok(out)
}

fn rewrite_one(
    ctx: &Rewrite<'_>,
    f: &ObjectMeta,
    schema: &SchemaRef,
) -> Result<Rewritten, RepairError> {
    let (store, req) = (ctx.store, ctx.req);
    // What is read, to refuse the change if another writer replaces the file meanwhile.
    let seen = store.head(&f.key)?.ok_or_else(|| StorageError::NotFound {
        what: f.key.clone(),
    })?;
    let body = store.get(&f.key)?.ok_or_else(|| StorageError::NotFound {
        what: f.key.clone(),
    })?;
    let bytes_read = body.len() as u64;
    let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(body))
        .and_then(|b| b.with_batch_size(64 * 1024).build())
        .map_err(|e| parquet_err(&f.key, e))?;
    let updates = match &req.update {
        Some(rows) => Some(rows_for(schema, rows)?),
        None => None,
    };
    let mut out = Vec::new();
    let mut found = BTreeSet::new();
    let mut fc = FileChange {
        key: f.key.clone(),
        rows_before: 0,
        rows_after: 0,
        deleted: 0,
        updated: 0,
        inserted: 0,
        written_as: None,
    };
    for batch in reader {
        let batch = batch.map_err(|e| parquet_err(&f.key, e))?;
        let col = batch
            .column_by_name(&req.key)
            .ok_or_else(|| input(format!("{}: no column {}", f.key, req.key)))?;
        let keys = keys_of(col).map_err(|e| input(format!("--key {}: {e}", req.key)))?;
        // (source 0: this batch, 1: the replacement rows; row index)
        let mut take: Vec<(usize, usize)> = Vec::with_capacity(batch.num_rows());
        for (i, k) in keys.iter().enumerate() {
            match k {
                Some(k) if req.delete.contains(k) => {
                    fc.deleted += 1;
                    found.insert(k.clone());
                }
                Some(k) if ctx.update_at.contains_key(k) => {
                    found.insert(k.clone());
                    let j = ctx.update_at[k];
                    // A row that already is its replacement stays (a repair run again changes
                    // nothing).
                    let same = updates.as_ref().is_some_and(|u| same_row(&batch, i, u, j));
                    if same {
                        take.push((0, i));
                    } else {
                        fc.updated += 1;
                        take.push((1, j));
                    }
                }
                _ => take.push((0, i)),
            }
        }
        fc.rows_before += batch.num_rows() as u64;
        fc.rows_after += take.len() as u64;
        if take.is_empty() {
            continue;
        }
        let merged = match &updates {
            Some(u) => arrow_select::interleave::interleave_record_batch(&[&batch, u], &take),
            None => arrow_select::interleave::interleave_record_batch(&[&batch], &take),
        }
        .map_err(|e| parquet_err(&f.key, e))?;
        out.push(merged);
    }
    let mut done = Rewritten {
        bytes_read,
        bytes_written: 0,
        found,
        change: None,
        staged: None,
        seen,
    };
    if fc.deleted + fc.updated == 0 {
        return Ok(done);
    }
    if let Some(staging) = ctx.staging
        && fc.rows_after > 0
    {
        let from = match ctx.table {
            Some(hint) => renamed(&f.key, hint),
            None => format!("{staging}{}.pending", f.key),
        };
        done.bytes_written = write_file(store, &from, schema, &out, &req.key)?;
        if ctx.table.is_some() {
            fc.written_as = Some(from.clone());
        }
        done.staged = Some(from);
    }
    done.change = Some(fc);
    Ok(done)
}

/// The key of a table file's rewrite: its name with this repair's hint (an earlier repair's
/// hint replaced), beside it.
fn renamed(key: &str, hint: &str) -> String {
    let (dir, name) = match key.rsplit_once('/') {
        Some((d, n)) => (format!("{d}/"), n),
        None => (String::new(), key),
    };
    let (stem, ext) = match name.find('.') {
        Some(i) => name.split_at(i),
        None => (name, ""),
    };
    let stem = stem.split("-repair-").next().unwrap_or(stem);
    format!("{dir}{stem}-repair-{hint}{ext}")
}

fn first_schema(store: &Arc<dyn OutputStore>, meta: &ObjectMeta) -> Result<SchemaRef, RepairError> {
    let footer = open_footer(store, meta)?;
    arrow_schema(&meta.key, footer.metadata())
}

/// The dataset's schema and key type, from its first file (for reading keys and rows).
pub fn dataset_schema(
    store: &Arc<dyn OutputStore>,
    key: &str,
) -> Result<(SchemaRef, KeyType, BTreeSet<String>), RepairError> {
    let table = store.table();
    let files = match &table {
        Some(t) => t
            .files()?
            .into_values()
            .map(|f| ObjectMeta::new(f.key, f.size))
            .collect(),
        None => rewind_common::storage::parquet_files(store.as_ref())?,
    };
    let first = files.first().ok_or_else(|| {
        input(format!(
            "no Parquet files in {} (nothing ending in .parquet outside _ and . directories)",
            store.describe()
        ))
    })?;
    let schema = first_schema(store, first)?;
    let field = schema.field_with_name(key).map_err(|_| {
        input(format!(
            "--key {key}: the dataset has no such column (it has {})",
            schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    let kt = KeyType::of(field.data_type()).ok_or_else(|| {
        input(format!(
            "--key {key}: a column of type {} (string or integer keys only)",
            field.data_type()
        ))
    })?;
    let partitions = match &table {
        Some(t) => t.partition_columns()?.into_iter().collect(),
        None => partition_of(&first.key).into_keys().collect(),
    };
    Ok((schema, kt, partitions))
}

/// Keys from a file: one a line (text), or the key column of a Parquet or CSV file.
pub fn read_keys(
    path: &std::path::Path,
    key: &str,
    kt: KeyType,
) -> Result<BTreeSet<Key>, RepairError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| input(format!("--delete {name}: {e}")))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let mut out = BTreeSet::new();
    match ext {
        "parquet" => {
            let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(bytes))
                .and_then(|b| b.build())
                .map_err(|e| input(format!("--delete {name}: {e}")))?;
            for batch in reader {
                let batch = batch.map_err(|e| input(format!("--delete {name}: {e}")))?;
                let col = batch
                    .column_by_name(key)
                    .ok_or_else(|| input(format!("--delete {name}: no column {key}")))?;
                for k in keys_of(col).map_err(|e| input(format!("--delete {name}: {e}")))? {
                    let k = k.ok_or_else(|| input(format!("--delete {name}: a null key")))?;
                    out.insert(normalise(k, kt, &name)?);
                }
            }
        }
        "csv" => {
            let text = String::from_utf8(bytes)
                .map_err(|_| input(format!("--delete {name}: not UTF-8")))?;
            let mut lines = text.lines();
            let header = csv_fields(lines.next().unwrap_or(""));
            let at = header
                .iter()
                .position(|h| h == key)
                .ok_or_else(|| input(format!("--delete {name}: the header has no column {key}")))?;
            for (n, line) in lines.enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let fields = csv_fields(line);
                let v = fields.get(at).ok_or_else(|| {
                    input(format!(
                        "--delete {name} line {}: no field {}",
                        n + 2,
                        at + 1
                    ))
                })?;
                out.insert(
                    kt.parse(v)
                        .map_err(|e| input(format!("--delete {name} line {}: {e}", n + 2)))?,
                );
            }
        }
        _ => {
            let text = String::from_utf8(bytes)
                .map_err(|_| input(format!("--delete {name}: not UTF-8")))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim_end_matches('\r');
                if line.trim().is_empty() {
                    continue;
                }
                out.insert(
                    kt.parse(line)
                        .map_err(|e| input(format!("--delete {name} line {}: {e}", n + 1)))?,
                );
            }
        }
    }
    Ok(out)
}

fn normalise(k: Key, kt: KeyType, name: &str) -> Result<Key, RepairError> {
    match (k, kt) {
        (k @ Key::Int(_), KeyType::Int) | (k @ Key::Str(_), KeyType::Str) => Ok(k),
        (Key::Int(i), KeyType::Str) => Ok(Key::Str(i.to_string())),
        (Key::Str(s), KeyType::Int) => kt
            .parse(&s)
            .map_err(|e| input(format!("--delete {name}: {e}"))),
    }
}

/// The fields of a CSV line (double quotes around a field, `""` inside one).
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.trim_end_matches('\r').chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Replacement rows from a file: Parquet, or JSON lines; each must have the dataset's columns
/// (in any order); partition columns may be given too (they place `--upsert` inserts).
pub fn read_rows(
    path: &std::path::Path,
    schema: &SchemaRef,
    key: &str,
    partitions: &BTreeSet<String>,
) -> Result<Rows, RepairError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| input(format!("--update {name}: {e}")))?;
    let is_parquet = path.extension().is_some_and(|e| e == "parquet");
    let (batch, parts) = if is_parquet {
        let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(bytes))
            .and_then(|b| b.build())
            .map_err(|e| input(format!("--update {name}: {e}")))?;
        let mut batches = Vec::new();
        for b in reader {
            batches.push(b.map_err(|e| input(format!("--update {name}: {e}")))?);
        }
        let rows_schema = batches
            .first()
            .map(|b| b.schema())
            .unwrap_or_else(|| Arc::new(Schema::empty()));
        for f in rows_schema.fields() {
            if schema.field_with_name(f.name()).is_err() && !partitions.contains(f.name()) {
                return Err(input(format!(
                    "--update {name}: column {} is not in the dataset",
                    f.name()
                )));
            }
        }
        let batch = arrow_select::concat::concat_batches(&rows_schema, &batches)
            .map_err(|e| input(format!("--update {name}: {e}")))?;
        let mut parts = vec![BTreeMap::new(); batch.num_rows()];
        for p in partitions {
            if let Some(col) = batch.column_by_name(p) {
                let text = arrow_cast_text(col);
                for (i, v) in text.into_iter().enumerate() {
                    if let Some(v) = v {
                        parts[i].insert(p.clone(), v);
                    }
                }
            }
        }
        (batch, parts)
    } else {
        let text =
            String::from_utf8(bytes).map_err(|_| input(format!("--update {name}: not UTF-8")))?;
        jsonl_batch(&text, &name, schema, partitions)?
    };
    with_keys(batch, parts, &name, key)
}

/// Replacement rows given as JSON lines (a distributed repair's input): as [`read_rows`].
pub fn read_rows_text(
    text: &str,
    name: &str,
    schema: &SchemaRef,
    key: &str,
    partitions: &BTreeSet<String>,
) -> Result<Rows, RepairError> {
    let (batch, parts) = jsonl_batch(text, name, schema, partitions)?;
    with_keys(batch, parts, name, key)
}

type PartitionValues = Vec<BTreeMap<String, String>>;

fn jsonl_batch(
    text: &str,
    name: &str,
    schema: &SchemaRef,
    partitions: &BTreeSet<String>,
) -> Result<(RecordBatch, PartitionValues), RepairError> {
    let mut batches = Vec::new();
    let mut parts = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("--update {name} line {}", n + 1);
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| input(format!("{}: {e}", at())))?;
        let obj = value
            .as_object()
            .ok_or_else(|| input(format!("{}: not a JSON object", at())))?;
        let mut p = BTreeMap::new();
        for (k, v) in obj {
            if partitions.contains(k) && schema.field_with_name(k).is_err() {
                p.insert(
                    k.clone(),
                    v.as_str().map_or_else(|| v.to_string(), str::to_string),
                );
            } else if schema.field_with_name(k).is_err() {
                return Err(input(format!("{}: column {k} is not in the dataset", at())));
            }
        }
        let mut decoder = arrow_json::ReaderBuilder::new(schema.clone())
            .build_decoder()
            .map_err(|e| input(format!("{}: {e}", at())))?;
        decoder
            .decode(line.as_bytes())
            .map_err(|e| input(format!("{}: {e}", at())))?;
        if let Some(b) = decoder
            .flush()
            .map_err(|e| input(format!("{}: {e}", at())))?
        {
            batches.push(b);
            parts.push(p);
        }
    }
    let batch = arrow_select::concat::concat_batches(schema, &batches)
        .map_err(|e| input(format!("--update {name}: {e}")))?;
    Ok((batch, parts))
}

fn with_keys(
    batch: RecordBatch,
    parts: PartitionValues,
    name: &str,
    key: &str,
) -> Result<Rows, RepairError> {
    let col = batch.column_by_name(key).ok_or_else(|| {
        input(format!(
            "--update {name}: the rows have no key column {key}"
        ))
    })?;
    let keys = keys_of(col)
        .map_err(|e| input(format!("--update {name}: {e}")))?
        .into_iter()
        .enumerate()
        .map(|(i, k)| k.ok_or_else(|| input(format!("--update {name}: row {} has no key", i + 1))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Rows {
        batch,
        keys,
        partitions: parts,
    })
}

/// A column's values as text (partition values).
fn arrow_cast_text(col: &ArrayRef) -> Vec<Option<String>> {
    match keys_of(col) {
        Ok(keys) => keys.into_iter().map(|k| k.map(|k| k.to_string())).collect(),
        Err(_) => vec![None; col.len()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Float64Array, Int64Array, StringArray};
    use arrow_schema::Field;
    use rewind_common::change::Log;
    use rewind_common::storage::LocalOutput;

    fn orders_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("order_id", DataType::Int64, false),
            Field::new("amount", DataType::Float64, true),
            Field::new("status", DataType::Utf8, true),
        ]))
    }

    fn orders(ids: std::ops::Range<i64>) -> RecordBatch {
        RecordBatch::try_new(
            orders_schema(),
            vec![
                Arc::new(Int64Array::from_iter_values(ids.clone())),
                Arc::new(Float64Array::from_iter_values(
                    ids.clone().map(|i| i as f64 * 1.5),
                )),
                Arc::new(StringArray::from_iter_values(ids.map(|_| "open"))),
            ],
        )
        .unwrap()
    }

    /// A dataset as Spark writes one: `dt=` partitions, snappy files without bloom filters,
    /// `_SUCCESS` and `.crc` files beside them.
    fn spark_dataset(root: &std::path::Path) {
        let props = WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .set_max_row_group_row_count(Some(250))
            .build();
        for (d, dt) in ["2024-01-01", "2024-01-02", "2024-01-03"]
            .iter()
            .enumerate()
        {
            for part in 0..2i64 {
                let start = (d as i64 * 2 + part) * 1000;
                let dir = root.join(format!("dt={dt}"));
                std::fs::create_dir_all(&dir).unwrap();
                let f =
                    std::fs::File::create(dir.join(format!("part-0000{part}-abc.snappy.parquet")))
                        .unwrap();
                let mut w = ArrowWriter::try_new(f, orders_schema(), Some(props.clone())).unwrap();
                w.write(&orders(start..start + 1000)).unwrap();
                w.close().unwrap();
                std::fs::write(
                    dir.join(format!(".part-0000{part}-abc.snappy.parquet.crc")),
                    b"x",
                )
                .unwrap();
            }
        }
        std::fs::write(root.join("_SUCCESS"), b"").unwrap();
    }

    /// Every (partition, order_id, amount, status) of the dataset, sorted.
    fn content(store: &dyn OutputStore) -> Vec<(String, i64, f64, String)> {
        let mut out = Vec::new();
        for f in rewind_common::storage::parquet_files(store).unwrap() {
            let dt = partition_of(&f.key).get("dt").cloned().unwrap_or_default();
            let body = store.get(&f.key).unwrap().unwrap();
            let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(body))
                .unwrap()
                .build()
                .unwrap();
            for b in reader {
                let b = b.unwrap();
                let ids = b.column(0).as_primitive::<arrow_array::types::Int64Type>();
                let amounts = b
                    .column(1)
                    .as_primitive::<arrow_array::types::Float64Type>();
                let status = b.column(2).as_string::<i32>();
                for i in 0..b.num_rows() {
                    out.push((
                        dt.clone(),
                        ids.value(i),
                        amounts.value(i),
                        status.value(i).to_string(),
                    ));
                }
            }
        }
        out.sort_by(|a, b| a.partial_cmp(b).unwrap());
        out
    }

    fn update_rows(rows: &[(i64, f64, &str, Option<&str>)]) -> Rows {
        let batch = RecordBatch::try_new(
            orders_schema(),
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2))),
            ],
        )
        .unwrap();
        Rows {
            batch,
            keys: rows.iter().map(|r| Key::Int(r.0)).collect(),
            partitions: rows
                .iter()
                .map(|r| {
                    r.3.map(|dt| BTreeMap::from([("dt".to_string(), dt.to_string())]))
                        .unwrap_or_default()
                })
                .collect(),
        }
    }

    #[test]
    fn a_spark_dataset_is_repaired_by_integer_key_reading_only_candidate_files() {
        let dir = tempfile::tempdir().unwrap();
        spark_dataset(dir.path());
        let store: Arc<dyn OutputStore> = Arc::new(LocalOutput::new(dir.path()));
        let before = content(store.as_ref());
        assert_eq!(before.len(), 6000);
        let (_, kt, partitions) = dataset_schema(&store, "order_id").unwrap();
        assert_eq!(kt, KeyType::Int);
        assert_eq!(partitions, BTreeSet::from(["dt".to_string()]));
        let req = Request {
            key: "order_id".into(),
            // Two in the first file, one that no row has.
            delete: BTreeSet::from([Key::Int(10), Key::Int(11), Key::Int(999_999)]),
            // One in the fourth file; one new, inserted into its partition.
            update: Some(update_rows(&[
                (3500, -1.0, "refunded", Some("2024-01-02")),
                (7000, 9.0, "new", Some("2024-01-03")),
            ])),
            upsert: true,
            ..Request::default()
        };
        let dry = repair(
            &store,
            &Request {
                dry_run: true,
                ..req.clone()
            },
        )
        .unwrap();
        assert_eq!(content(store.as_ref()), before, "a dry run writes nothing");
        assert_eq!(dry.files.len(), 3);
        let report = repair(&store, &req).unwrap();
        // Statistics alone rule out four of the six files.
        assert_eq!(report.files_in_dataset, 6);
        assert_eq!(report.files_read, 2, "{report:?}");
        assert_eq!(
            (
                report.rows_deleted,
                report.rows_updated,
                report.rows_inserted
            ),
            (2, 1, 1)
        );
        assert_eq!(report.delete_keys_not_found, vec!["999999".to_string()]);
        assert_eq!((report.files_rewritten, report.files_added), (2, 1));
        let after = content(store.as_ref());
        let mut want: Vec<_> = before
            .iter()
            .filter(|r| r.1 != 10 && r.1 != 11)
            .cloned()
            .map(|mut r| {
                if r.1 == 3500 {
                    (r.2, r.3) = (-1.0, "refunded".into());
                }
                r
            })
            .collect();
        want.push(("2024-01-03".into(), 7000, 9.0, "new".into()));
        want.sort_by(|a, b| a.partial_cmp(b).unwrap());
        assert_eq!(after, want);
        // The same repair again changes nothing.
        let again = repair(&store, &req).unwrap();
        assert!(again.change.is_none(), "{again:?}");
        // One change, and its rollback restores every row.
        let rolled = change::rollback(store.as_ref(), report.change.as_deref(), None).unwrap();
        assert!(!rolled.already);
        assert_eq!(content(store.as_ref()), before);
        // The rewritten files carry a bloom filter on the key (so the next repair prunes by it).
        change::reapply(store.as_ref(), report.change.as_deref().unwrap(), None).unwrap();
        let rewritten = rewind_common::storage::parquet_files(store.as_ref())
            .unwrap()
            .into_iter()
            .find(|f| f.key.starts_with("dt=2024-01-01/part-00000"))
            .unwrap();
        let footer = open_footer(&store, &rewritten).unwrap();
        let rg = footer.reader.get_row_group(0).unwrap();
        assert!(rg.get_column_bloom_filter(0).is_some());
    }

    #[test]
    fn bad_requests_name_the_problem_and_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        spark_dataset(dir.path());
        let store: Arc<dyn OutputStore> = Arc::new(LocalOutput::new(dir.path()));
        let before = content(store.as_ref());
        let err = |req: Request| match repair(&store, &req) {
            Err(RepairError::Input(m)) => m,
            other => panic!("{other:?}"),
        };
        let missing = err(Request {
            key: "customer".into(),
            delete: BTreeSet::from([Key::Int(1)]),
            ..Request::default()
        });
        assert!(
            missing.contains("--key customer") && missing.contains("order_id"),
            "{missing}"
        );
        let twice = err(Request {
            key: "order_id".into(),
            update: Some(update_rows(&[(5, 1.0, "a", None), (5, 2.0, "b", None)])),
            ..Request::default()
        });
        assert!(twice.contains("key 5 is in the rows twice"), "{twice}");
        let both = err(Request {
            key: "order_id".into(),
            delete: BTreeSet::from([Key::Int(5)]),
            update: Some(update_rows(&[(5, 1.0, "a", None)])),
            ..Request::default()
        });
        assert!(both.contains("both to delete and to update"), "{both}");
        let float = err(Request {
            key: "amount".into(),
            delete: BTreeSet::from([Key::Int(5)]),
            ..Request::default()
        });
        assert!(float.contains("string or integer"), "{float}");
        let nowhere = err(Request {
            key: "order_id".into(),
            update: Some(update_rows(&[(123_456, 1.0, "a", None)])),
            upsert: true,
            ..Request::default()
        });
        assert!(nowhere.contains("partition column dt"), "{nowhere}");
        assert_eq!(content(store.as_ref()), before);
        assert!(
            store.list("_rewind/").unwrap().is_empty(),
            "nothing staged or recorded"
        );
    }

    /// A store where another writer replaces a file right after the repair read it.
    struct Meddled {
        inner: LocalOutput,
        victim: String,
        done: std::sync::atomic::AtomicBool,
    }

    impl OutputStore for Meddled {
        fn describe(&self) -> String {
            self.inner.describe()
        }
        fn create(
            &self,
            k: &str,
        ) -> Result<Box<dyn rewind_common::storage::OutputFile>, StorageError> {
            self.inner.create(k)
        }
        fn put(&self, k: &str, b: &[u8]) -> Result<rewind_common::storage::Written, StorageError> {
            self.inner.put(k, b)
        }
        fn get(&self, k: &str) -> Result<Option<Vec<u8>>, StorageError> {
            let got = self.inner.get(k);
            if k == self.victim && !self.done.swap(true, std::sync::atomic::Ordering::Relaxed) {
                // Another writer: the same file, one row fewer.
                std::thread::sleep(std::time::Duration::from_millis(20));
                let mut w = ArrowWriter::try_new(Vec::new(), orders_schema(), None).unwrap();
                w.write(&orders(1..1000)).unwrap();
                self.inner.put(k, &w.into_inner().unwrap()).unwrap();
            }
            got
        }
        fn list(&self, p: &str) -> Result<Vec<ObjectMeta>, StorageError> {
            self.inner.list(p)
        }
        fn delete(&self, k: &str) -> Result<(), StorageError> {
            self.inner.delete(k)
        }
        fn promote(
            &self,
            f: &str,
            t: &str,
        ) -> Result<rewind_common::storage::Written, StorageError> {
            self.inner.promote(f, t)
        }
        fn sweep_unfinished(&self, p: &str) -> Result<u64, StorageError> {
            self.inner.sweep_unfinished(p)
        }
        fn with_stats(&self, s: Arc<rewind_common::storage::IoStats>) -> Arc<dyn OutputStore> {
            self.inner.with_stats(s)
        }
        fn head(&self, k: &str) -> Result<Option<ObjectMeta>, StorageError> {
            self.inner.head(k)
        }
        fn get_range(&self, k: &str, start: u64, len: u64) -> Result<Vec<u8>, StorageError> {
            self.inner.get_range(k, start, len)
        }
        fn put_if_absent(&self, k: &str, b: &[u8]) -> Result<bool, StorageError> {
            self.inner.put_if_absent(k, b)
        }
    }

    /// A file replaced by another writer between the repair's read and its change: the repair
    /// is refused naming the file, the other writer's content stays, nothing is recorded.
    #[test]
    fn a_file_replaced_meanwhile_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        spark_dataset(dir.path());
        let victim = "dt=2024-01-01/part-00000-abc.snappy.parquet".to_string();
        let store: Arc<dyn OutputStore> = Arc::new(Meddled {
            inner: LocalOutput::new(dir.path()),
            victim: victim.clone(),
            done: Default::default(),
        });
        let req = Request {
            key: "order_id".into(),
            delete: BTreeSet::from([Key::Int(10)]),
            ..Request::default()
        };
        let err = repair(&store, &req).unwrap_err().to_string();
        assert!(
            err.contains(&victim) && err.contains("changed since it was read"),
            "{err}"
        );
        let rows = content(store.as_ref());
        assert!(
            !rows.iter().any(|r| r.1 == 0),
            "the other writer's file (no order 0) stays"
        );
        assert!(
            rows.iter().any(|r| r.1 == 10),
            "not deleted from the new content either"
        );
        assert!(Log::new(store.as_ref()).changes().unwrap().is_empty());
        assert!(
            store.list("_rewind/incoming/").unwrap().is_empty(),
            "staged files dropped"
        );
    }

    #[test]
    fn keys_files_in_text_csv_and_parquet() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("k.txt");
        std::fs::write(&text, "a\nb\r\n\nc\n").unwrap();
        let keys = read_keys(&text, "id", KeyType::Str).unwrap();
        assert_eq!(keys.len(), 3);
        let csv = dir.path().join("k.csv");
        std::fs::write(&csv, "name,id\n\"x, y\",7\nz,8\n").unwrap();
        let keys = read_keys(&csv, "id", KeyType::Int).unwrap();
        assert_eq!(keys, BTreeSet::from([Key::Int(7), Key::Int(8)]));
        std::fs::write(&csv, "name,id\nz,eight\n").unwrap();
        let bad = read_keys(&csv, "id", KeyType::Int).unwrap_err().to_string();
        assert!(
            bad.contains("line 2") && bad.contains("not an integer"),
            "{bad}"
        );
        let pq = dir.path().join("k.parquet");
        let f = std::fs::File::create(&pq).unwrap();
        let mut w = ArrowWriter::try_new(f, orders_schema(), None).unwrap();
        w.write(&orders(40..43)).unwrap();
        w.close().unwrap();
        let keys = read_keys(&pq, "order_id", KeyType::Int).unwrap();
        assert_eq!(keys.len(), 3);
    }
}
