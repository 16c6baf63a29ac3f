//! Table formats over a destination (Delta Lake): which data files readers of the table see, and
//! atomic commits that add and remove them. The change log (`change`) and keyed repair work
//! through [`TableLog`] when the destination is a table, so a job, a repair, a rollback and a
//! re-apply are each one table commit; the implementation lives in `rewind-delta`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::storage::StorageError;

/// The layout a job's destination gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TableFormat {
    /// A Hive-style Parquet dataset: files become visible when they are in place.
    #[default]
    Parquet,
    /// A Delta Lake table: files become visible when a commit of the table's log adds them.
    Delta,
}

impl TableFormat {
    pub fn parse(field: &'static str, s: &str) -> Result<TableFormat, crate::RequestError> {
        match s {
            "parquet" => Ok(TableFormat::Parquet),
            "delta" => Ok(TableFormat::Delta),
            other => Err(crate::RequestError::new(
                field,
                format!("{other:?}: expected parquet or delta"),
            )),
        }
    }

    pub fn is_parquet(&self) -> bool {
        *self == TableFormat::Parquet
    }
}

impl std::fmt::Display for TableFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TableFormat::Parquet => "parquet",
            TableFormat::Delta => "delta",
        })
    }
}

/// A data file of a table, as its log records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableFile {
    /// The file's key in the destination store (the table's root is the store's root).
    pub key: String,
    pub size: u64,
    /// Rows, when known (the log's `numRecords`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// Partition column values (a null value is `None`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub partition: BTreeMap<String, Option<String>>,
}

/// What a change did to a table: one commit of the table's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableEffect {
    pub format: TableFormat,
    /// The table version the commit made (`None`: committed by an earlier run of the same
    /// command, found by its transaction id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// The commit's transaction id (Delta `txn.appId`): a command run again never commits twice.
    pub app_id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<TableFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<TableFile>,
}

/// A table's log, over the destination store.
pub trait TableLog: Send + Sync {
    fn format(&self) -> TableFormat;
    /// The table's partition columns (their values are in each file's log entry).
    fn partition_columns(&self) -> Result<Vec<String>, StorageError>;
    /// Every data file in the table's current version, by key.
    fn files(&self) -> Result<BTreeMap<String, TableFile>, StorageError>;
    /// Whether a commit with transaction id `app_id` is in the table.
    fn committed(&self, app_id: &str) -> Result<bool, StorageError>;
    /// Adds and removes files in one commit carrying `app_id`, unless a commit with that id is
    /// there already (then `Ok(None)`: nothing is committed twice). Commits of other writers in
    /// between are retried over; a file to remove that is no longer in the table is a
    /// [`StorageError::Changed`].
    fn commit(
        &self,
        app_id: &str,
        operation: &str,
        add: &[TableFile],
        remove: &[TableFile],
    ) -> Result<Option<u64>, StorageError>;
}

/// The partition values a key's Hive-style path names (`date=2024-01-05/…`), for the given
/// partition columns.
pub fn partition_of(key: &str, columns: &[String]) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    for seg in key.split('/') {
        if let Some((k, v)) = seg.split_once('=')
            && columns.iter().any(|c| c == k)
        {
            let v = (v != "__HIVE_DEFAULT_PARTITION__").then(|| v.to_string());
            out.insert(k.to_string(), v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_values_come_from_the_path() {
        let cols = vec!["date".to_string()];
        let p = partition_of(
            "execution_id=j/org_id=TN/date=2024-01-05/part-1.parquet",
            &cols,
        );
        assert_eq!(p.len(), 1);
        assert_eq!(p["date"].as_deref(), Some("2024-01-05"));
        let p = partition_of("date=__HIVE_DEFAULT_PARTITION__/x.parquet", &cols);
        assert_eq!(p["date"], None);
        assert!(partition_of("x.parquet", &cols).is_empty());
    }

    #[test]
    fn formats_parse_and_print() {
        assert_eq!(
            TableFormat::parse("f", "delta").unwrap(),
            TableFormat::Delta
        );
        assert_eq!(TableFormat::Delta.to_string(), "delta");
        assert!(
            TableFormat::parse("f", "iceberg")
                .unwrap_err()
                .to_string()
                .contains("iceberg")
        );
    }
}
