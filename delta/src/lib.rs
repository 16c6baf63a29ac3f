//! Delta Lake tables as Rewind destinations, through the official `delta_kernel` crate.
//!
//! The table's root is the destination store's root and its data files are the files Rewind
//! writes (the job's Parquet files, a repair's rewrites); the log is read and committed by the
//! kernel's default engine over [`adapter::StoreAdapter`], so the same store, credentials and
//! retries serve the data and the log. Commits are conditional writes of the next log entry
//! (`If-None-Match: *` on S3, a hard link on disk): two writers never both make version N, and
//! the loser commits again over what the winner did. Every commit carries a transaction id
//! (`txn.appId`) and is skipped when that id is in the table already, so a job commit, repair,
//! rollback or re-apply run again after a crash never adds its files twice.

pub mod adapter;
mod dest;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::builder::{MapBuilder, MapFieldNames, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray, StructArray};
use arrow_schema::{DataType, Field, Fields, Schema};
use delta_kernel::committer::FileSystemCommitter;
use delta_kernel::engine::arrow_conversion::TryFromArrow;
use delta_kernel::engine::arrow_data::ArrowEngineData;
use delta_kernel::schema::{StructField, StructType};
use delta_kernel::transaction::create_table::create_table;
use delta_kernel::transaction::data_layout::DataLayout;
use delta_kernel::transaction::{CommitResult, UpdateTableOperation};
use delta_kernel::{FilteredEngineData, Snapshot, SnapshotRef};
use delta_kernel_default_engine::DefaultEngine;
use delta_kernel_default_engine::executor::tokio::TokioBackgroundExecutor;
use rewind_common::storage::{OutputStore, StorageError};
use rewind_common::table::{TableFile, TableFormat, TableLog};
use url::Url;

pub use dest::{DeltaDest, open, open_or_create};

/// The log's directory below the table root.
pub const LOG_DIR: &str = "_delta_log/";

const ENGINE_INFO: &str = concat!("rewind/", env!("CARGO_PKG_VERSION"));

/// Commits lost to other writers before giving up (each retry reads the new versions first).
const MAX_COMMIT_ROUNDS: u32 = 20;

/// A Delta table whose root is a Rewind store's root.
pub struct DeltaTable {
    store: Arc<dyn OutputStore>,
    engine: DefaultEngine<TokioBackgroundExecutor>,
    url: Url,
}

impl std::fmt::Debug for DeltaTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "delta table at {}", self.store.describe())
    }
}

impl DeltaTable {
    pub fn new(store: Arc<dyn OutputStore>) -> DeltaTable {
        let adapter = Arc::new(adapter::StoreAdapter::new(store.clone()));
        let engine = delta_kernel_default_engine::DefaultEngineBuilder::new(adapter).build();
        DeltaTable {
            store,
            engine,
            // The engine has one store; the URL only gives paths below its root.
            url: Url::parse("rewind://table/").expect("a valid URL"),
        }
    }

    fn what(&self) -> String {
        format!("delta table {}", self.store.describe())
    }

    /// Whether the store holds a Delta table (a commit in `_delta_log/`).
    pub fn exists(store: &dyn OutputStore) -> Result<bool, StorageError> {
        Ok(store
            .list(LOG_DIR)?
            .iter()
            .any(|m| m.key.ends_with(".json") || m.key.ends_with(".parquet")))
    }

    /// Creates the table with `schema` plus the partition columns (strings, taken from the data
    /// files' Hive paths), unless it exists. Whether it created it. Two creators at once: one
    /// makes version 0, the other finds it.
    pub fn create(
        &self,
        schema: &Schema,
        partition_columns: &[String],
    ) -> Result<bool, StorageError> {
        if Self::exists(self.store.as_ref())? {
            self.check_layout(schema, partition_columns)?;
            return Ok(false);
        }
        let mut fields: Vec<StructField> = StructType::try_from_arrow(schema)
            .map_err(|e| self.err("converting the schema", e))?
            .fields()
            .cloned()
            .collect();
        for c in partition_columns {
            if !fields.iter().any(|f| f.name() == c) {
                fields.push(StructField::nullable(
                    c,
                    delta_kernel::schema::DataType::STRING,
                ));
            }
        }
        let kernel_schema =
            Arc::new(StructType::try_new(fields).map_err(|e| self.err("building the schema", e))?);
        let mut builder = create_table(self.url.as_str(), kernel_schema, ENGINE_INFO, true);
        if !partition_columns.is_empty() {
            builder = builder
                .with_data_layout(DataLayout::partitioned(partition_columns.iter().cloned()));
        }
        let txn = builder
            .build(&self.engine, Box::new(FileSystemCommitter::new()))
            .map_err(|e| self.err("creating the table", e))?;
        match txn.commit(&self.engine) {
            Ok(CommitResult::Committed(_)) => Ok(true),
            Ok(CommitResult::Conflicted(_)) => {
                self.check_layout(schema, partition_columns)?;
                Ok(false)
            }
            Ok(CommitResult::Retryable(_)) => Err(StorageError::Unavailable {
                what: self.what(),
                why: "creating the table: the commit could not be written".into(),
            }),
            Err(e) => Err(self.err("creating the table", e)),
        }
    }

    /// A table created by someone else must have the columns Rewind writes and partition by
    /// the same columns, or its readers would see files that do not fit.
    fn check_layout(
        &self,
        schema: &Schema,
        partition_columns: &[String],
    ) -> Result<(), StorageError> {
        let snap = self.snapshot()?;
        let table_schema = snap.schema();
        let missing: Vec<&str> = schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .filter(|n| table_schema.field(n).is_none())
            .collect();
        let parts = snap
            .table_configuration()
            .metadata()
            .partition_columns()
            .to_vec();
        if !missing.is_empty() || parts != partition_columns {
            return Err(StorageError::Unfit {
                what: self.what(),
                why: format!(
                    "the table does not fit this job's output (columns missing: [{}]; \
                     partitioned by [{}], the job writes [{}])",
                    missing.join(", "),
                    parts.join(", "),
                    partition_columns.join(", ")
                ),
            });
        }
        Ok(())
    }

    /// The table's current version.
    pub fn snapshot(&self) -> Result<SnapshotRef, StorageError> {
        Snapshot::builder_for(self.url.as_str())
            .build(&self.engine)
            .map_err(|e| self.err("reading the log", e))
    }

    fn err(&self, doing: &str, e: impl std::error::Error + 'static) -> StorageError {
        // A failure of the store below keeps its kind (a timeout may pass, a denial does not).
        let mut source: Option<&(dyn std::error::Error + 'static)> =
            Some(&e as &(dyn std::error::Error + 'static));
        while let Some(s) = source {
            if let Some(se) = s.downcast_ref::<StorageError>() {
                let why = format!("{doing}: {se}");
                return if se.is_retryable() {
                    StorageError::Unavailable {
                        what: self.what(),
                        why,
                    }
                } else {
                    StorageError::Denied {
                        what: self.what(),
                        why,
                    }
                };
            }
            source = s.source();
        }
        StorageError::Denied {
            what: self.what(),
            why: format!("{doing}: {e}"),
        }
    }

    /// The scan metadata batches of `snap`, each row selected when `pick` chose its file (every
    /// live file is offered to `pick` once).
    fn scan_files(
        &self,
        snap: &SnapshotRef,
        mut pick: impl FnMut(TableFile) -> bool,
    ) -> Result<Vec<FilteredEngineData>, StorageError> {
        let scan = snap
            .clone()
            .scan_builder()
            .build()
            .map_err(|e| self.err("scanning the log", e))?;
        let mut out = Vec::new();
        for sm in scan
            .scan_metadata(&self.engine)
            .map_err(|e| self.err("scanning the log", e))?
        {
            let sm = sm.map_err(|e| self.err("scanning the log", e))?;
            let (data, selected) = sm.scan_files.into_parts();
            let data = ArrowEngineData::try_from_engine_data(data)
                .map_err(|e| self.err("reading the scan", e))?;
            let batch = data.record_batch();
            let files = scan_rows(batch).map_err(|why| StorageError::Denied {
                what: self.what(),
                why,
            })?;
            let mut chosen = vec![false; batch.num_rows()];
            for (i, f) in files.into_iter().enumerate() {
                let live = selected.get(i).copied().unwrap_or(true);
                if live && let Some(f) = f {
                    chosen[i] = pick(f);
                }
            }
            out.push(
                FilteredEngineData::try_new(data, chosen)
                    .map_err(|e| self.err("selecting files", e))?,
            );
        }
        Ok(out)
    }

    fn add_batch(&self, add: &[TableFile]) -> Result<RecordBatch, StorageError> {
        let names = MapFieldNames {
            entry: "key_value".to_string(),
            key: "key".to_string(),
            value: "value".to_string(),
        };
        let mut parts = MapBuilder::new(Some(names), StringBuilder::new(), StringBuilder::new());
        for f in add {
            for (k, v) in &f.partition {
                parts.keys().append_value(k);
                match v {
                    Some(v) if !v.is_empty() => parts.values().append_value(v),
                    _ => parts.values().append_null(),
                }
            }
            parts.append(true).map_err(|e| StorageError::Denied {
                what: self.what(),
                why: e.to_string(),
            })?;
        }
        let stats_fields = Fields::from(vec![Field::new("numRecords", DataType::Int64, true)]);
        let stats = StructArray::new(
            stats_fields.clone(),
            vec![Arc::new(Int64Array::from(
                add.iter()
                    .map(|f| f.rows.map(|r| r as i64))
                    .collect::<Vec<_>>(),
            )) as ArrayRef],
            None,
        );
        let now = rewind_common::lifecycle::now_ms();
        let kv = DataType::Struct(Fields::from(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("value", DataType::Utf8, true),
        ]));
        let schema = Schema::new(vec![
            Field::new("path", DataType::Utf8, false),
            Field::new(
                "partitionValues",
                DataType::Map(Arc::new(Field::new("key_value", kv, false)), false),
                false,
            ),
            Field::new("size", DataType::Int64, false),
            Field::new("modificationTime", DataType::Int64, false),
            Field::new("stats", DataType::Struct(stats_fields), true),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from(
                    add.iter().map(|f| f.key.as_str()).collect::<Vec<_>>(),
                )),
                Arc::new(parts.finish()),
                Arc::new(Int64Array::from(
                    add.iter().map(|f| f.size as i64).collect::<Vec<_>>(),
                )),
                Arc::new(Int64Array::from(vec![now; add.len()])),
                Arc::new(stats),
            ],
        )
        .map_err(|e| StorageError::Denied {
            what: self.what(),
            why: format!("building the add actions: {e}"),
        })
    }

    fn commit_once(
        &self,
        snap: &SnapshotRef,
        app_id: &str,
        operation: &str,
        add: &[TableFile],
        remove: &[TableFile],
    ) -> Result<CommitResult, StorageError> {
        let op = match operation {
            "WRITE" => UpdateTableOperation::Write,
            "DELETE" => UpdateTableOperation::Delete,
            "UPDATE" => UpdateTableOperation::Update,
            other => UpdateTableOperation::Custom(other.to_string()),
        };
        let mut txn = snap
            .clone()
            .update_table(op, ENGINE_INFO, true)
            .with_transaction_id(app_id, 0)
            .build(&self.engine, Box::new(FileSystemCommitter::new()))
            .map_err(|e| self.err("starting a commit", e))?;
        if !remove.is_empty() {
            let wanted: BTreeSet<&str> = remove.iter().map(|f| f.key.as_str()).collect();
            let mut found = BTreeSet::new();
            for batch in self.scan_files(snap, |f| {
                let hit = wanted.contains(f.key.as_str());
                if hit {
                    found.insert(f.key);
                }
                hit
            })? {
                txn.remove_files(batch);
            }
            if let Some(gone) = wanted.iter().find(|k| !found.contains(**k)) {
                return Err(StorageError::Changed {
                    what: format!("{gone} in {}", self.what()),
                    why: format!("not in the table's version {}", snap.version()),
                });
            }
        }
        if !add.is_empty() {
            let batch = self.add_batch(add)?;
            txn.add_files(Box::new(ArrowEngineData::new(batch)));
        }
        txn.commit(&self.engine)
            .map_err(|e| self.err("committing", e))
    }
}

/// The files of a scan metadata batch (`None` for rows that are not files).
fn scan_rows(batch: &RecordBatch) -> Result<Vec<Option<TableFile>>, String> {
    let col = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| format!("the scan has no {name} column"))
    };
    let paths = col("path")?.as_string::<i32>();
    let sizes = col("size")?
        .as_any()
        .downcast_ref::<Int64Array>()
        .ok_or("size is not a long")?
        .clone();
    let stats = col("stats")?.as_string::<i32>();
    let constants = col("fileConstantValues")?.as_struct();
    let parts = constants
        .column_by_name("partitionValues")
        .ok_or("no partitionValues")?
        .as_map();
    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        if paths.is_null(i) {
            out.push(None);
            continue;
        }
        let mut partition = BTreeMap::new();
        if parts.is_valid(i) {
            let entries = parts.value(i);
            let keys = entries.column(0).as_string::<i32>();
            let values = entries.column(1).as_string::<i32>();
            for j in 0..entries.len() {
                partition.insert(
                    keys.value(j).to_string(),
                    values.is_valid(j).then(|| values.value(j).to_string()),
                );
            }
        }
        let rows = stats
            .is_valid(i)
            .then(|| serde_json::from_str::<serde_json::Value>(stats.value(i)).ok())
            .flatten()
            .and_then(|v| v.get("numRecords").and_then(|n| n.as_u64()));
        out.push(Some(TableFile {
            key: decode_path(paths.value(i)),
            size: sizes.value(i).max(0) as u64,
            rows,
            partition,
        }));
    }
    Ok(out)
}

/// A log path as a store key (the log stores paths URI-encoded).
fn decode_path(p: &str) -> String {
    let bytes = p.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| p.to_string())
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

impl TableLog for DeltaTable {
    fn format(&self) -> TableFormat {
        TableFormat::Delta
    }

    fn partition_columns(&self) -> Result<Vec<String>, StorageError> {
        Ok(self
            .snapshot()?
            .table_configuration()
            .metadata()
            .partition_columns()
            .to_vec())
    }

    fn files(&self) -> Result<BTreeMap<String, TableFile>, StorageError> {
        let snap = self.snapshot()?;
        let mut out = BTreeMap::new();
        self.scan_files(&snap, |f| {
            out.insert(f.key.clone(), f);
            false
        })?;
        Ok(out)
    }

    fn committed(&self, app_id: &str) -> Result<bool, StorageError> {
        let snap = self.snapshot()?;
        Ok(snap
            .get_app_id_version(app_id, &self.engine)
            .map_err(|e| self.err("reading transaction ids", e))?
            .is_some())
    }

    fn commit(
        &self,
        app_id: &str,
        operation: &str,
        add: &[TableFile],
        remove: &[TableFile],
    ) -> Result<Option<u64>, StorageError> {
        for round in 0..MAX_COMMIT_ROUNDS {
            let snap = self.snapshot()?;
            if snap
                .get_app_id_version(app_id, &self.engine)
                .map_err(|e| self.err("reading transaction ids", e))?
                .is_some()
            {
                return Ok(None);
            }
            match self.commit_once(&snap, app_id, operation, add, remove)? {
                CommitResult::Committed(c) => return Ok(Some(c.commit_version())),
                CommitResult::Conflicted(c) => {
                    tracing::debug!(
                        version = c.conflict_version(),
                        round,
                        "delta commit lost a race; again"
                    );
                }
                CommitResult::Retryable(_) => {
                    std::thread::sleep(Duration::from_millis(100 << round.min(5)));
                }
            }
        }
        Err(StorageError::Unavailable {
            what: self.what(),
            why: format!("{MAX_COMMIT_ROUNDS} commits in a row lost to other writers"),
        })
    }
}
