//! A destination store that is a Delta table: the store as it is, plus its table
//! ([`OutputStore::table`]), so the change log and keyed repair work through the table's log.

use std::sync::Arc;

use arrow_schema::Schema;
use rewind_common::storage::{
    IoStats, ObjectMeta, OutputFile, OutputStore, StorageError, StoredVersion, Written,
};
use rewind_common::table::TableLog;

use crate::DeltaTable;

/// A store whose root is a Delta table's root.
pub struct DeltaDest {
    inner: Arc<dyn OutputStore>,
    table: Arc<DeltaTable>,
}

/// The store as a table destination when it holds a Delta table; else the store itself.
pub fn open(store: Arc<dyn OutputStore>) -> Result<Arc<dyn OutputStore>, StorageError> {
    if DeltaTable::exists(store.as_ref())? {
        Ok(wrap(store))
    } else {
        Ok(store)
    }
}

/// The store as a Delta destination, the table created first when there is none (with
/// `schema` and the partition columns).
pub fn open_or_create(
    store: Arc<dyn OutputStore>,
    schema: &Schema,
    partition_columns: &[String],
) -> Result<Arc<dyn OutputStore>, StorageError> {
    let table = DeltaTable::new(store.clone());
    table.create(schema, partition_columns)?;
    Ok(Arc::new(DeltaDest {
        inner: store,
        table: Arc::new(table),
    }))
}

fn wrap(store: Arc<dyn OutputStore>) -> Arc<dyn OutputStore> {
    Arc::new(DeltaDest {
        table: Arc::new(DeltaTable::new(store.clone())),
        inner: store,
    })
}

impl OutputStore for DeltaDest {
    fn describe(&self) -> String {
        format!("delta table {}", self.inner.describe())
    }
    fn create(&self, key: &str) -> Result<Box<dyn OutputFile>, StorageError> {
        self.inner.create(key)
    }
    fn put(&self, key: &str, bytes: &[u8]) -> Result<Written, StorageError> {
        self.inner.put(key, bytes)
    }
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.get(key)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        self.inner.list(prefix)
    }
    fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.inner.delete(key)
    }
    fn promote(&self, from: &str, to: &str) -> Result<Written, StorageError> {
        self.inner.promote(from, to)
    }
    fn sweep_unfinished(&self, prefix: &str) -> Result<u64, StorageError> {
        self.inner.sweep_unfinished(prefix)
    }
    fn with_stats(&self, stats: Arc<IoStats>) -> Arc<dyn OutputStore> {
        Arc::new(DeltaDest {
            inner: self.inner.with_stats(stats),
            table: self.table.clone(),
        })
    }
    fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        self.inner.head(key)
    }
    fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>, StorageError> {
        self.inner.get_range(key, start, len)
    }
    fn put_if_absent(&self, key: &str, bytes: &[u8]) -> Result<bool, StorageError> {
        self.inner.put_if_absent(key, bytes)
    }
    fn versioned(&self) -> Result<bool, StorageError> {
        self.inner.versioned()
    }
    fn remove(&self, key: &str) -> Result<Option<String>, StorageError> {
        self.inner.remove(key)
    }
    fn versions(&self, key: &str) -> Result<Vec<StoredVersion>, StorageError> {
        self.inner.versions(key)
    }
    fn restore_version(&self, key: &str, version: &str) -> Result<Written, StorageError> {
        self.inner.restore_version(key, version)
    }
    fn delete_version(&self, key: &str, version: &str) -> Result<(), StorageError> {
        self.inner.delete_version(key, version)
    }
    fn table(&self) -> Option<Arc<dyn TableLog>> {
        Some(self.table.clone())
    }
}
