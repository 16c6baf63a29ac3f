//! The Delta table layer on a local directory: creation, commits with transaction ids, removes,
//! lost races, and a table someone else created.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::{Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use rewind_common::storage::{LocalOutput, OutputStore, StorageError};
use rewind_common::table::{TableFile, TableLog};
use rewind_delta::DeltaTable;

fn schema() -> Schema {
    Schema::new(vec![
        Field::new("event_id", DataType::Utf8, true),
        Field::new("n", DataType::Int64, true),
    ])
}

/// Writes a Parquet file of `rows` rows at `key`; its table entry.
fn data_file(store: &dyn OutputStore, key: &str, rows: usize) -> TableFile {
    let batch = RecordBatch::try_new(
        Arc::new(schema()),
        vec![
            Arc::new(StringArray::from(
                (0..rows).map(|i| format!("{key}-{i}")).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from((0..rows as i64).collect::<Vec<_>>())),
        ],
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let written = store.put(key, &buf).unwrap();
    TableFile {
        key: key.to_string(),
        size: written.size,
        rows: Some(rows as u64),
        partition: rewind_common::table::partition_of(key, &["date".to_string()]),
    }
}

fn keys(t: &DeltaTable) -> Vec<String> {
    t.files().unwrap().into_keys().collect()
}

#[test]
fn commits_add_and_remove_files_once_per_transaction_id() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn OutputStore> = Arc::new(LocalOutput::new(dir.path()));
    assert!(!DeltaTable::exists(store.as_ref()).unwrap());
    let t = DeltaTable::new(store.clone());
    assert!(t.create(&schema(), &["date".to_string()]).unwrap());
    assert!(
        !t.create(&schema(), &["date".to_string()]).unwrap(),
        "created twice"
    );
    assert!(DeltaTable::exists(store.as_ref()).unwrap());

    let a = data_file(store.as_ref(), "x/date=2024-01-01/a.parquet", 3);
    let b = data_file(store.as_ref(), "x/date=2024-01-02/b.parquet", 5);
    let v1 = t
        .commit("job-1", "WRITE", &[a.clone(), b.clone()], &[])
        .unwrap();
    assert_eq!(v1, Some(1));
    // The same transaction id again: nothing is committed twice.
    assert_eq!(
        t.commit("job-1", "WRITE", &[a.clone(), b.clone()], &[])
            .unwrap(),
        None
    );
    assert!(t.committed("job-1").unwrap());
    assert!(!t.committed("job-2").unwrap());
    let files = t.files().unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(files[&a.key].rows, Some(3));
    assert_eq!(
        files[&b.key].partition,
        BTreeMap::from([("date".to_string(), Some("2024-01-02".to_string()))])
    );
    assert_eq!(files[&b.key].size, b.size);

    // Remove + add in one commit (a rewrite).
    let b2 = data_file(store.as_ref(), "x/date=2024-01-02/b2.parquet", 4);
    assert_eq!(
        t.commit(
            "repair-1",
            "UPDATE",
            std::slice::from_ref(&b2),
            std::slice::from_ref(&b)
        )
        .unwrap(),
        Some(2)
    );
    assert_eq!(keys(&t), vec![a.key.clone(), b2.key.clone()]);
    // Removing a file the table no longer has is refused, nothing committed.
    let e = t
        .commit("repair-2", "DELETE", &[], std::slice::from_ref(&b))
        .unwrap_err();
    assert!(matches!(e, StorageError::Changed { .. }), "{e}");
    assert!(e.to_string().contains("b.parquet"), "{e}");
    assert_eq!(t.snapshot().unwrap().version(), 2);
}

#[test]
fn writers_racing_for_a_version_both_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn OutputStore> = Arc::new(LocalOutput::new(dir.path()));
    DeltaTable::new(store.clone())
        .create(&schema(), &[])
        .unwrap();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let store = store.clone();
            std::thread::spawn(move || {
                let t = DeltaTable::new(store.clone());
                let f = data_file(store.as_ref(), &format!("f{i}.parquet"), 1);
                t.commit(&format!("w{i}"), "WRITE", &[f], &[]).unwrap()
            })
        })
        .collect();
    let mut versions: Vec<u64> = handles
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .collect();
    versions.sort();
    assert_eq!(versions, vec![1, 2, 3, 4]);
    assert_eq!(keys(&DeltaTable::new(store)).len(), 4);
}

#[test]
fn a_table_of_another_layout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn OutputStore> = Arc::new(LocalOutput::new(dir.path()));
    DeltaTable::new(store.clone())
        .create(&schema(), &[])
        .unwrap();
    let e = DeltaTable::new(store.clone())
        .create(&schema(), &["date".to_string()])
        .unwrap_err();
    assert!(e.to_string().contains("partitioned by []"), "{e}");
    let other = Schema::new(vec![Field::new("other", DataType::Utf8, true)]);
    let e = DeltaTable::new(store).create(&other, &[]).unwrap_err();
    assert!(e.to_string().contains("columns missing: [other]"), "{e}");
}
