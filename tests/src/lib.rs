#![doc = include_str!("../README.md")]

pub mod azure;
pub mod browser;
pub mod gcs;
pub mod http;
pub mod kafka;
pub mod kinesis;
pub mod pki;
mod proxy;
pub mod pubsub;
pub mod s3;
pub mod servers;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Output;

use arrow_array::{Array, Int64Array, RecordBatch, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Value, json};

/// Runs a binary with arguments and returns its output (never panics on a non-zero exit).
pub fn run(bin: impl servers::Program, args: &[&str]) -> Output {
    bin.command()
        .args(args)
        .env("REWIND_LOG", "warn")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.describe()))
}

/// Parses the single JSON object a `--json` command prints on stdout.
pub fn stdout_json(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}): {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Every file below `dir`, recursively, sorted.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn decompressed(path: &Path) -> Vec<u8> {
    let raw = fs::read(path).unwrap();
    let mut out = Vec::new();
    match raw.as_slice() {
        [0x1f, 0x8b, ..] => {
            flate2::read::MultiGzDecoder::new(&raw[..])
                .read_to_end(&mut out)
                .unwrap();
        }
        [0x28, 0xb5, 0x2f, 0xfd, ..] => out = zstd::decode_all(&raw[..]).unwrap(),
        _ => out = raw,
    }
    out
}

/// One archived event as the oracle sees it.
#[derive(Debug, Clone)]
pub struct ArchivedEvent {
    /// The hour prefix directory it was filed under (`main_stream/YYYY/MM/DD/HH`).
    pub hour_dir: String,
    pub value: Value,
}

/// Reads every event of an archive with serde_json's stream deserializer (independent of
/// Rewind's decoder). Panics on damage: use it on undamaged archives.
pub fn archived_events(root: &Path) -> Vec<ArchivedEvent> {
    let mut out = Vec::new();
    for path in files_below(root) {
        let rel = path.strip_prefix(root).unwrap();
        let hour_dir = rel.parent().unwrap().to_string_lossy().to_string();
        let bytes = decompressed(&path);
        for v in serde_json::Deserializer::from_slice(&bytes).into_iter::<Value>() {
            out.push(ArchivedEvent {
                hour_dir: hour_dir.clone(),
                value: v.unwrap_or_else(|e| panic!("{}: {e}", path.display())),
            });
        }
    }
    out
}

/// The row Rewind must write for an archived event (the reference schema), as JSON.
pub fn expected_row(v: &Value) -> Value {
    let s = |k: &str| v.get(k).cloned().unwrap_or(Value::Null);
    json!({
        "event_id": s("event_id"), "cid": s("cid"), "org_id": s("org_id"),
        "event_type": s("event_type"), "domain": s("domain"),
        "schema_version": s("schema_version"), "arrival_epoch": s("arrival_epoch"),
        "timestamp": s("timestamp"), "data": s("data"),
    })
}

/// Reads every Parquet file below `dir` into JSON rows; `data` is parsed back to JSON, and the
/// Hive partition values of the path are added as `_partition`.
pub fn parquet_rows(dir: &Path) -> Vec<Value> {
    let mut rows = Vec::new();
    for path in files_below(dir) {
        if path.extension().and_then(|e| e.to_str()) != Some("parquet") {
            continue;
        }
        let partition: BTreeMap<String, String> = path
            .strip_prefix(dir)
            .unwrap()
            .components()
            .filter_map(|c| {
                c.as_os_str()
                    .to_str()?
                    .split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        let file = fs::File::open(&path).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch: RecordBatch = batch.unwrap();
            let schema = batch.schema();
            for row in 0..batch.num_rows() {
                let mut obj = serde_json::Map::new();
                for (i, field) in schema.fields().iter().enumerate() {
                    let col = batch.column(i);
                    let value = if col.is_null(row) {
                        Value::Null
                    } else if let Some(a) = col.as_any().downcast_ref::<StringArray>() {
                        let text = a.value(row);
                        if field.name() == "data" {
                            serde_json::from_str(text)
                                .unwrap_or_else(|e| panic!("data is not JSON ({e}): {text}"))
                        } else {
                            Value::String(text.to_string())
                        }
                    } else if let Some(a) = col.as_any().downcast_ref::<Int64Array>() {
                        json!(a.value(row))
                    } else {
                        panic!("unexpected column type {:?}", col.data_type())
                    };
                    obj.insert(field.name().clone(), value);
                }
                obj.insert("_partition".into(), json!(partition));
                rows.push(Value::Object(obj));
            }
        }
    }
    rows
}
