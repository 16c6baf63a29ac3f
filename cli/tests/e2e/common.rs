//! What the end-to-end modules share.

use std::collections::BTreeMap;
use std::path::Path;

use rewind_testkit::{archived_events, expected_row, files_below, parquet_rows, run, stdout_json};
use serde_json::Value;

const REWIND: &str = env!("CARGO_BIN_EXE_rewind");

/// The generator seed: each module's own by default, `REWIND_TEST_SEED` to try other archives.
pub fn seed(default: &str) -> String {
    std::env::var("REWIND_TEST_SEED").unwrap_or_else(|_| default.into())
}

/// Writes an archive with `rewind gen` into `dir`: `hours` hours from `start`, 3 objects of
/// `object_mb` MB an hour; `extra` adds gen flags (`--compression`, ...).
pub fn generate(
    dir: &Path,
    org: &str,
    start: &str,
    hours: &str,
    object_mb: &str,
    seed: &str,
    extra: &[&str],
) {
    let mut args = vec![
        "gen",
        "--out",
        dir.to_str().unwrap(),
        "--org",
        org,
        "--start",
        start,
        "--hours",
        hours,
        "--objects-per-hour",
        "3",
        "--object-mb",
        object_mb,
        "--seed",
        seed,
    ];
    args.extend_from_slice(extra);
    let out = run(REWIND, &args);
    assert!(
        out.status.success(),
        "gen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The JSON summary of a command that must have succeeded.
pub fn ok(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout_json(out)
}

/// Every JSON line of every file below `dir` (failed and unrecoverable records).
pub fn records(dir: &Path) -> Vec<Value> {
    files_below(dir)
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Asserts the command succeeded (its stderr on failure).
pub fn ok_status(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `rewind ARGS` with extra environment (a store's credentials or emulator).
pub fn rewind_with_env(env: &[(&'static str, String)], args: &[&str]) -> std::process::Output {
    std::process::Command::new(REWIND)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap()
}

/// Every Parquet row below `dir`, by event id (partition dropped); an id twice fails.
pub fn rows_by_id(dir: &Path) -> BTreeMap<String, Value> {
    let mut got = BTreeMap::new();
    for mut row in parquet_rows(dir) {
        row.as_object_mut().unwrap().remove("_partition");
        let id = row["event_id"].as_str().unwrap().to_string();
        assert!(got.insert(id.clone(), row).is_none(), "event {id} twice");
    }
    got
}

/// The row every archived event below `src` should become, by event id.
pub fn expected_rows(src: &Path) -> BTreeMap<String, Value> {
    archived_events(src)
        .iter()
        .map(|e| {
            (
                e.value["event_id"].as_str().unwrap().to_string(),
                expected_row(&e.value),
            )
        })
        .collect()
}
