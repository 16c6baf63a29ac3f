//! End to end through the `rewind` binary: generate an archive, recover it, read the Parquet
//! back and compare every event with what was archived (read independently with serde_json).
//! No server is needed: this is the embedded mode.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use crate::common::{self, seed};
use rewind_testkit::{archived_events, expected_row, files_below, parquet_rows, run, stdout_json};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_rewind");

fn generate(dir: &Path, start: &str, hours: &str, compression: &str, extra: &[&str]) {
    let seed = seed("20240401");
    let mut args = vec!["--compression", compression];
    args.extend_from_slice(extra);
    common::generate(dir, "TN-e2e", start, hours, "0.2", &seed, &args);
}

fn recover(src: &Path, dest: &Path, start: &str, end: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "run",
        "--source",
        src.to_str().unwrap(),
        "--org",
        "TN-e2e",
        "--start",
        start,
        "--end",
        end,
        "--dest",
        dest.to_str().unwrap(),
        "--json",
        "--workers",
        "3",
    ];
    args.extend_from_slice(extra);
    let out = run(BIN, &args);
    assert!(
        out.status.success(),
        "run failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout_json(&out)
}

fn by_event_id(rows: impl IntoIterator<Item = Value>) -> BTreeMap<String, Value> {
    let mut map = BTreeMap::new();
    for row in rows {
        let id = row["event_id"].as_str().unwrap().to_string();
        assert!(
            map.insert(id.clone(), row).is_none(),
            "event {id} appears twice"
        );
    }
    map
}

#[test]
fn recovers_exactly_the_events_of_the_range() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("archive"), tmp.path().join("out"));
    // Four hours across midnight; recover the middle two (one per day) with the arrival filter.
    generate(&src, "2024-04-01T22", "4", "mixed", &[]);
    let summary = recover(
        &src,
        &dest,
        "2024-04-01T23",
        "2024-04-02T00",
        &["--arrival-filter"],
    );

    let (lo, hi) = (1_712_012_400_000i64, 1_712_019_600_000i64); // 2024-04-01T23 .. 2024-04-02T01
    let in_hours = ["main_stream/2024/04/01/23", "main_stream/2024/04/02/00"];
    let archived: Vec<_> = archived_events(&src)
        .into_iter()
        .filter(|e| in_hours.contains(&e.hour_dir.as_str()))
        .collect();
    let expected: Vec<_> = archived
        .iter()
        .filter(|e| (lo..hi).contains(&e.value["arrival_epoch"].as_i64().unwrap()))
        .collect();
    assert!(
        archived.len() > expected.len(),
        "the sample must contain late arrivals to filter"
    );

    let job = summary["job_id"].as_str().unwrap().to_string();
    let rows = parquet_rows(&dest);
    for row in &rows {
        let p = &row["_partition"];
        assert_eq!(p["execution_id"], job.as_str());
        assert_eq!(p["org_id"], "TN-e2e");
    }
    // Partition date = the date of the hour shard the event was filed under.
    let date_of: BTreeMap<String, String> = expected
        .iter()
        .map(|e| {
            (
                e.value["event_id"].as_str().unwrap().to_string(),
                e.hour_dir[12..22].replace('/', "-"),
            )
        })
        .collect();
    for row in &rows {
        let id = row["event_id"].as_str().unwrap();
        assert_eq!(
            row["_partition"]["date"].as_str(),
            date_of.get(id).map(String::as_str),
            "{id}"
        );
    }
    let got = by_event_id(rows.into_iter().map(|mut r| {
        r.as_object_mut().unwrap().remove("_partition");
        r
    }));
    let want = by_event_id(expected.iter().map(|e| expected_row(&e.value)));
    assert_eq!(got.len(), want.len());
    for (id, row) in &want {
        assert_eq!(got.get(id), Some(row), "event {id} differs");
    }

    assert_eq!(summary["state"], "succeeded");
    assert_eq!(summary["shards"], 2);
    assert_eq!(summary["objects"], 6);
    assert_eq!(summary["recovered"], want.len() as u64);
    assert_eq!(summary["filtered"], (archived.len() - want.len()) as u64);
    assert_eq!(summary["failed"], 0);
    let exec = dest.join(format!("execution_id={job}"));
    assert!(exec.join("_SUCCESS").exists());
    let manifest: Value =
        serde_json::from_slice(&fs::read(exec.join("_manifest.json")).unwrap()).unwrap();
    let manifest_rows: u64 = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rows"].as_u64().unwrap())
        .sum();
    assert_eq!(manifest_rows, want.len() as u64);
    assert!(!dest.join("_failed").exists() || files_below(&dest.join("_failed")).is_empty());
}

#[test]
fn two_runs_into_one_destination_stay_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("archive"), tmp.path().join("out"));
    generate(&src, "2024-02-29T10", "2", "none", &[]);
    let all = recover(&src, &dest, "2024-02-29", "2024-02-29", &[]);
    let one = recover(&src, &dest, "2024-02-29T11", "2024-02-29T11", &[]);
    let (a, b) = (
        all["job_id"].as_str().unwrap(),
        one["job_id"].as_str().unwrap(),
    );
    assert_ne!(a, b);
    assert_eq!(all["shards"], 24, "a date means the whole day");
    let total = archived_events(&src).len() as u64;
    assert_eq!(all["recovered"], total);
    let rows = parquet_rows(&dest);
    let per_job = |job: &str| {
        rows.iter()
            .filter(|r| r["_partition"]["execution_id"] == job)
            .count() as u64
    };
    assert_eq!(per_job(a), total);
    assert_eq!(per_job(b), one["recovered"].as_u64().unwrap());
    assert!(per_job(b) > 0 && per_job(b) < total);
    for job in [a, b] {
        assert!(dest.join(format!("execution_id={job}/_SUCCESS")).exists());
    }
}

#[test]
fn damage_is_routed_to_failed_records_and_the_rest_recovered() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("archive"), tmp.path().join("out"));
    generate(&src, "2024-04-01T05", "1", "none", &[]);
    let objects = files_below(&src);
    assert_eq!(objects.len(), 3);
    let all_ids: BTreeSet<String> = archived_events(&src)
        .iter()
        .map(|e| e.value["event_id"].as_str().unwrap().to_string())
        .collect();

    // Event boundaries of each object, found independently.
    let bounds = |bytes: &[u8]| -> Vec<usize> {
        let mut it = serde_json::Deserializer::from_slice(bytes).into_iter::<Value>();
        let mut ends = vec![];
        while it.next().is_some() {
            ends.push(it.byte_offset());
        }
        ends
    };
    let id_at = |bytes: &[u8], from: usize| -> String {
        let v: Value = serde_json::Deserializer::from_slice(&bytes[from..])
            .into_iter()
            .next()
            .unwrap()
            .unwrap();
        v["event_id"].as_str().unwrap().to_string()
    };
    let mut lost = BTreeSet::new();
    // 1. A truncated tail: the last event is cut in half.
    let mut a = fs::read(&objects[0]).unwrap();
    let ends = bounds(&a);
    let last_start = ends[ends.len() - 2];
    lost.insert(id_at(&a, last_start));
    a.truncate(last_start + (ends[ends.len() - 1] - last_start) / 2);
    fs::write(&objects[0], &a).unwrap();
    // 2. Garbage between two events, and an event with invalid UTF-8 in a string.
    let mut b = fs::read(&objects[1]).unwrap();
    let ends = bounds(&b);
    let (g, u) = (ends[3], ends[10]);
    lost.insert(id_at(&b, u));
    let quote = b[u..].iter().position(|&c| c == b'"').unwrap() + u;
    let close = b[quote + 1..].iter().position(|&c| c == b'"').unwrap() + quote + 1;
    b.insert(close, 0xff);
    b.splice(g..g, b"\x00garbage{oops".iter().copied());
    fs::write(&objects[1], &b).unwrap();
    // 3. An event cut in the middle and followed directly by the next one.
    let mut c = fs::read(&objects[2]).unwrap();
    let ends = bounds(&c);
    let (s, e) = (ends[5], ends[6]);
    lost.insert(id_at(&c, s));
    c.drain(s + (e - s) / 2..e);
    fs::write(&objects[2], &c).unwrap();

    let summary = recover(&src, &dest, "2024-04-01T05", "2024-04-01T05", &[]);
    assert_eq!(
        summary["state"], "succeeded",
        "damage does not fail the job"
    );
    assert_eq!(summary["failed"], 4);
    let reasons = &summary["failed_by_reason"];
    assert_eq!(reasons["truncated"], 1);
    assert_eq!(reasons["syntax"], 2);
    assert_eq!(reasons["invalid_utf8"], 1);

    let recovered: BTreeSet<String> = parquet_rows(&dest)
        .iter()
        .map(|r| r["event_id"].as_str().unwrap().to_string())
        .collect();
    let want: BTreeSet<String> = all_ids.difference(&lost).cloned().collect();
    assert_eq!(
        recovered, want,
        "every undamaged event is recovered, nothing else"
    );
    assert_eq!(summary["recovered"], want.len() as u64);

    let job = summary["job_id"].as_str().unwrap();
    let failed_dir = dest.join(format!("_failed/execution_id={job}"));
    let mut records = Vec::new();
    for f in files_below(&failed_dir) {
        for line in fs::read_to_string(&f).unwrap().lines() {
            records.push(serde_json::from_str::<Value>(line).unwrap());
        }
    }
    assert_eq!(records.len(), 4);
    for r in &records {
        let key = r["source_key"].as_str().unwrap();
        assert!(
            key.starts_with("main_stream/2024/04/01/05/dataplatform-TN-e2e-"),
            "{key}"
        );
        assert!(r["reason"].as_str().unwrap().len() > 5);
        let (off, len) = (
            r["byte_offset"].as_u64().unwrap() as usize,
            r["byte_length"].as_u64().unwrap() as usize,
        );
        let object = fs::read(src.join(key)).unwrap();
        let raw: Vec<u8> = match (&r["raw"], &r["raw_base64"]) {
            (Value::String(s), _) => s.as_bytes().to_vec(),
            (_, Value::String(b)) => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.decode(b).unwrap()
            }
            _ => panic!("no raw bytes in {r}"),
        };
        assert_eq!(raw, object[off..off + len], "raw bytes of {r}");
    }
    assert!(
        records.iter().any(|r| r["raw_base64"].is_string()),
        "invalid UTF-8 goes out as base64"
    );
}

#[test]
fn bad_requests_exit_2_name_the_argument_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("archive");
    fs::create_dir_all(&src).unwrap();
    let dest = tmp.path().join("out");
    let s = src.to_str().unwrap().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "--org",
                "TN-1",
                "--start",
                "2024-02-30",
                "--end",
                "2024-03-01",
            ],
            "--start",
        ),
        (
            vec![
                "--org",
                "TN-1",
                "--start",
                "2024-03-02",
                "--end",
                "2024-03-01",
            ],
            "--end",
        ),
        (
            vec![
                "--org",
                "TN-1",
                "--start",
                "2024-03-01T25",
                "--end",
                "2024-03-01",
            ],
            "--start",
        ),
        (
            vec![
                "--org",
                "../etc",
                "--start",
                "2024-03-01",
                "--end",
                "2024-03-01",
            ],
            "--org",
        ),
        (
            vec![
                "--org",
                "a/b",
                "--start",
                "2024-03-01",
                "--end",
                "2024-03-01",
            ],
            "--org",
        ),
        (
            vec![
                "--org",
                "TN-1",
                "--start",
                "2020-01-01",
                "--end",
                "2024-03-01",
            ],
            "--max-range-hours",
        ),
        (
            vec![
                "--org",
                "TN-1",
                "--start",
                "2024-03-01",
                "--end",
                "2024-03-01",
                "--layout",
                "../{YYYY}/{MM}/{DD}/{HH}",
            ],
            "--layout",
        ),
        (
            vec![
                "--org",
                "TN-1",
                "--start",
                "2024-03-01",
                "--end",
                "2024-03-01",
                "--table-format",
                "delta",
                "--sink",
                "kafka",
                "--brokers",
                "127.0.0.1:9",
                "--topic",
                "t",
            ],
            "--table-format",
        ),
    ];
    for (extra, named) in cases {
        let mut args = vec!["run", "--source", &s, "--dest", dest.to_str().unwrap()];
        args.extend(extra.iter());
        let out = run(BIN, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(
            stderr.contains(named),
            "{extra:?}: message does not name {named}: {stderr}"
        );
        assert!(!dest.exists(), "{extra:?} wrote something");
    }
    let missing = tmp.path().join("nope");
    let out = run(
        BIN,
        &[
            "run",
            "--source",
            missing.to_str().unwrap(),
            "--org",
            "TN-1",
            "--start",
            "2024-03-01",
            "--end",
            "2024-03-01",
            "--dest",
            dest.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--source"));
    assert!(!dest.exists());
}

#[test]
fn a_shard_that_fails_every_attempt_fails_the_job_with_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("archive"), tmp.path().join("out"));
    generate(&src, "2024-04-01T00", "2", "none", &[]);
    // The second hour's prefix cannot be listed: a file stands where its directory should be.
    let hour = src.join("main_stream/2024/04/01/01");
    fs::remove_dir_all(&hour).unwrap();
    fs::write(&hour, b"not a directory").unwrap();
    let out = run(
        BIN,
        &[
            "run",
            "--source",
            src.to_str().unwrap(),
            "--org",
            "TN-e2e",
            "--start",
            "2024-04-01T00",
            "--end",
            "2024-04-01T01",
            "--dest",
            dest.to_str().unwrap(),
            "--json",
            "--max-attempts",
            "2",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = stdout_json(&out);
    assert_eq!(summary["state"], "failed");
    assert_eq!(summary["shards_done"], 1);
    let failed = &summary["failed_shards"][0];
    assert_eq!(failed["shard"], "2024040101");
    assert_eq!(failed["attempts"], 2);
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("main_stream/2024/04/01/01/"),
        "{failed}"
    );
    let job = summary["job_id"].as_str().unwrap();
    let exec = dest.join(format!("execution_id={job}"));
    assert!(
        !exec.join("_SUCCESS").exists(),
        "a failed job has no _SUCCESS"
    );
    let manifest: Value =
        serde_json::from_slice(&fs::read(exec.join("_manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["state"], "failed");
}

/// Ctrl-C or SIGTERM during `rewind run`: the job stops, its partial output is removed —
/// committed shards' files too, since nothing a reader might glob may stay without `_SUCCESS` —
/// the message says what happened and the exit code is 130. (Each commit waits 10 s here, fail
/// point `pause-before-shard-commit`, so the signal always lands mid-job: for SIGTERM after one
/// shard committed, for SIGINT while the first one is still open.)
#[test]
fn interrupted_run_stops_and_leaves_nothing_behind() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    for (signal, committed_first) in [("TERM", true), ("INT", false)] {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dest) = (tmp.path().join("archive"), tmp.path().join("out"));
        generate(&src, "2024-04-01T00", "4", "none", &[]);
        let child = Command::new(BIN)
            .args(["run", "--source", src.to_str().unwrap(), "--org", "TN-e2e"])
            .args(["--start", "2024-04-01T00", "--end", "2024-04-01T03"])
            .args(["--dest", dest.to_str().unwrap(), "--workers", "1"])
            .env("REWIND_FAILPOINT", "pause-before-shard-commit")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut guard = rewind_testkit::servers::ChildGuard(Some(child));
        // Attempts write staged names (`….parquet.pending`) that the job commit promotes.
        let parquet = |dir: &Path| -> usize {
            files_below(dir)
                .iter()
                .filter(|f| f.to_string_lossy().contains(".parquet"))
                .count()
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while parquet(&dest) == 0 {
            assert!(Instant::now() < deadline, "no output appeared");
            std::thread::sleep(Duration::from_millis(20));
        }
        if committed_first {
            // The first shard commits after its 10 s pause; the second is then under way.
            let first = parquet(&dest);
            while parquet(&dest) <= first {
                assert!(Instant::now() < deadline, "no second shard started");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        guard.signal(signal);
        let out = guard.0.take().unwrap().wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(130), "SIG{signal}: {err}");
        assert!(err.contains("was removed, nothing of it is kept"), "{err}");
        assert!(
            files_below(&dest).is_empty(),
            "SIG{signal}: left behind {:?}",
            files_below(&dest)
        );
    }
}

/// An archive organised by day (`dt={YYYY}-{MM}-{DD}/`, no hour directory): a shard is one day,
/// and the output holds exactly the events the same archive by hour gives; a range cut inside a
/// day is refused unless the arrival filter keeps its hours.
#[test]
fn archives_by_day_are_read_one_day_a_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let hourly = tmp.path().join("hourly");
    generate(&hourly, "2024-04-01T20", "8", "mixed", &[]);
    // The same objects, by day: main_stream/YYYY/MM/DD/HH/name -> daily/dt=YYYY-MM-DD/HH-name.
    let daily = tmp.path().join("daily");
    for f in files_below(&hourly) {
        let rel: Vec<String> = f
            .strip_prefix(&hourly)
            .unwrap()
            .iter()
            .map(|c| c.to_string_lossy().into_owned())
            .collect();
        let [_, y, m, d, h, name] = rel.as_slice() else {
            panic!("unexpected archive path {rel:?}")
        };
        let to = daily.join(format!("daily/dt={y}-{m}-{d}/{h}-{name}"));
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(&f, &to).unwrap();
    }
    let layout = ["--layout", "daily/dt={YYYY}-{MM}-{DD}"];
    let by_day = tmp.path().join("by-day");
    let summary = recover(&daily, &by_day, "2024-04-01", "2024-04-02", &layout);
    assert_eq!(summary["shards"], 2, "one shard a day: {summary}");
    let by_hour = tmp.path().join("by-hour");
    recover(&hourly, &by_hour, "2024-04-01", "2024-04-02", &[]);
    let got = by_event_id(parquet_rows(&by_day).into_iter().map(|mut r| {
        r.as_object_mut().unwrap().remove("_partition");
        r
    }));
    let want = by_event_id(parquet_rows(&by_hour).into_iter().map(|mut r| {
        r.as_object_mut().unwrap().remove("_partition");
        r
    }));
    assert!(!got.is_empty());
    assert_eq!(got, want);

    // Hours inside a day: refused without the arrival filter, exact with it.
    let cut = tmp.path().join("cut");
    let s = daily.to_str().unwrap().to_string();
    let out = run(
        BIN,
        &[
            "run",
            "--source",
            &s,
            "--org",
            "TN-e2e",
            "--start",
            "2024-04-01T22",
            "--end",
            "2024-04-02T01",
            "--dest",
            cut.to_str().unwrap(),
            layout[0],
            layout[1],
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--start") && stderr.contains("by day"),
        "{stderr}"
    );
    assert!(!cut.exists());
    let mut extra = layout.to_vec();
    extra.push("--arrival-filter");
    recover(&daily, &cut, "2024-04-01T22", "2024-04-02T01", &extra);
    let filtered = tmp.path().join("cut-hourly");
    recover(
        &hourly,
        &filtered,
        "2024-04-01T22",
        "2024-04-02T01",
        &["--arrival-filter"],
    );
    let strip = |dir: &Path| {
        by_event_id(parquet_rows(dir).into_iter().map(|mut r| {
            r.as_object_mut().unwrap().remove("_partition");
            r
        }))
    };
    // Whole days are read, so late arrivals archived in other hours of those days count too:
    // everything the hourly archive gives, and only events that arrived in the hours asked.
    let (got, hourly_got) = (strip(&cut), strip(&filtered));
    assert!(hourly_got.keys().all(|k| got.contains_key(k)));
    let (from, to) = (1_712_008_800_000_i64, 1_712_023_200_000_i64); // 04-01T22, 04-02T02 UTC
    for row in got.values() {
        let t = row["arrival_epoch"].as_i64().unwrap();
        assert!((from..to).contains(&t), "arrived outside the hours: {row}");
    }
}

/// `--partition-by`: every row lands in the partition its own fields say, values escaped as
/// Hive does, readable by an independent reader with Hive partitioning (pyarrow); an event
/// without a field the template uses, or whose timestamp is not a date, is a failed record
/// with the reason.
#[test]
fn partition_by_places_each_row_by_its_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("archive"), tmp.path().join("out"));
    generate(&src, "2024-04-01T00", "3", "none", &[]);
    // Hand-made events: a domain needing escapes, one without a domain, one whose timestamp
    // is not a date, one in another UTC day than its local one.
    let odd = [
        (
            r#""domain":"a/b=c %d","timestamp":"2024-04-01T01:00:00Z""#,
            true,
        ),
        (r#""timestamp":"2024-04-01T01:00:00Z""#, false),
        (r#""domain":"cards","timestamp":"yesterday""#, false),
        (
            r#""domain":"cards","timestamp":"2024-04-01T22:30:00-03:00""#,
            true,
        ),
    ];
    let mut text = String::new();
    for (n, (fields, _)) in odd.iter().enumerate() {
        text.push_str(&format!(
            r#"{{"event_id":"odd-{n}","cid":"c","org_id":"TN-e2e","event_type":"x","schema_version":1,"arrival_epoch":1711933200000,{fields},"data":{{}}}}"#
        ));
    }
    fs::write(src.join("main_stream/2024/04/01/01/odd.json"), text).unwrap();
    let template =
        "domain_event_type={domain}-{event_type}/year={ts:YYYY}/month={ts:MM}/day={ts:DD}";
    let summary = recover(
        &src,
        &dest,
        "2024-04-01T00",
        "2024-04-01T02",
        &["--partition-by", template],
    );
    let archived = archived_events(&src).len() as u64;
    assert_eq!(summary["failed_by_reason"]["partition"], 2, "{summary}");
    assert_eq!(summary["recovered"].as_u64().unwrap(), archived - 2);
    let failed: Vec<Value> = files_below(&dest.join("_failed"))
        .iter()
        .flat_map(|f| {
            fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    let reasons: BTreeSet<&str> = failed
        .iter()
        .filter(|r| r["code"] == "partition")
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons.contains("partition-by: the event has no domain")
            && reasons
                .iter()
                .any(|r| r.contains("\"yesterday\" is not a date")),
        "{reasons:?}"
    );
    assert!(
        files_below(&dest).iter().any(|f| f
            .to_string_lossy()
            .contains("domain_event_type=a%2Fb%3Dc %25d-x/")),
        "escaped as Hive escapes"
    );

    // Read back with pyarrow's Hive partitioning: each row's partition columns are what its
    // own domain, event_type and timestamp (in UTC) say.
    let job = summary["job_id"].as_str().unwrap();
    let script = r#"
import sys, json, datetime
import pyarrow.dataset as ds
t = ds.dataset(sys.argv[1], format="parquet", partitioning="hive").to_table()
bad, n = [], 0
for r in t.to_pylist():
    n += 1
    ts = r["timestamp"].replace("Z", "+00:00")
    d = datetime.datetime.fromisoformat(ts).astimezone(datetime.timezone.utc)
    want = (f'{r["domain"]}-{r["event_type"]}', d.year, d.month, d.day)
    got = (r["domain_event_type"], r["year"], r["month"], r["day"])
    if want != got:
        bad.append([r["event_id"], list(want), list(got)])
print(json.dumps({"rows": n, "bad": bad[:5]}))
"#;
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            dest.join(format!("execution_id={job}")).to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(read["rows"].as_u64().unwrap(), archived - 2, "{read}");
    assert_eq!(read["bad"], serde_json::json!([]), "{read}");
}

/// The hard profile (`rewind gen --profile hard`: `\uXXXX` escapes in values and keys,
/// shuffled keys, pretty-printed events, unicode, numbers of every shape, deep data): every
/// event recovered exactly as an independent parser reads it, none failed.
#[test]
fn hard_archives_are_recovered_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("archive"), tmp.path().join("out"));
    generate(&src, "2024-04-01T00", "3", "mixed", &["--profile", "hard"]);
    let summary = recover(&src, &dest, "2024-04-01T00", "2024-04-01T02", &[]);
    let archived = archived_events(&src);
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(summary["recovered"], archived.len() as u64, "{summary}");
    let got = by_event_id(parquet_rows(&dest).into_iter().map(|mut r| {
        r.as_object_mut().unwrap().remove("_partition");
        r
    }));
    let want = by_event_id(archived.iter().map(|e| expected_row(&e.value)));
    assert_eq!(got.len(), want.len());
    for (id, row) in &want {
        assert_eq!(got.get(id), Some(row), "event {id} differs");
    }
}

/// `rewind retry`: a job with one hour it could not read fails; the hour is fixed; the retry
/// runs only that shard into the same execution, which gets its complete manifest and
/// `_SUCCESS`, every event exactly once, the other shards' files untouched. The retry is a
/// change linked to the job's; rolling it back brings the failed execution back as it was.
#[test]
fn retry_runs_only_the_failed_shards_and_is_a_change() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("archive"), tmp.path().join("out"));
    generate(&src, "2024-04-01T00", "4", "none", &[]);
    let hour = src.join("main_stream/2024/04/01/02");
    let saved = tmp.path().join("saved-hour");
    fs::rename(&hour, &saved).unwrap();
    fs::write(&hour, b"not a directory").unwrap();
    let args = |extra: &[&'static str]| {
        let mut a = vec![
            "run",
            "--source",
            src.to_str().unwrap(),
            "--org",
            "TN-e2e",
            "--start",
            "2024-04-01T00",
            "--end",
            "2024-04-01T03",
            "--dest",
            dest.to_str().unwrap(),
            "--json",
            "--max-attempts",
            "1",
        ];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let out = run(
        BIN,
        &args(&[]).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(out.status.code(), Some(1));
    let summary = stdout_json(&out);
    let job = summary["job_id"].as_str().unwrap().to_string();
    assert_eq!(summary["shards_failed"], 1, "{summary}");
    let exec = dest.join(format!("execution_id={job}"));
    let before: BTreeMap<String, Vec<u8>> = files_below(&exec)
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "parquet"))
        .map(|f| (f.to_string_lossy().into_owned(), fs::read(&f).unwrap()))
        .collect();
    let manifest_before = fs::read(exec.join("_manifest.json")).unwrap();

    // Fixed: the retry runs that shard only.
    fs::remove_file(&hour).unwrap();
    fs::rename(&saved, &hour).unwrap();
    let retry = |job: &str| {
        run(
            BIN,
            &["retry", job, "--dest", dest.to_str().unwrap(), "--json"],
        )
    };
    let out = retry(&job);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = stdout_json(&out);
    assert_eq!(summary["state"], "succeeded", "{summary}");
    assert_eq!(summary["shards_done"], 4);
    assert!(exec.join("_SUCCESS").exists());
    for (f, bytes) in &before {
        assert_eq!(
            &fs::read(f).unwrap(),
            bytes,
            "{f}: a done shard's file is untouched"
        );
    }
    let want = by_event_id(archived_events(&src).iter().map(|e| expected_row(&e.value)));
    let got = by_event_id(parquet_rows(&dest).into_iter().map(|mut r| {
        r.as_object_mut().unwrap().remove("_partition");
        r
    }));
    assert_eq!(got.len(), want.len(), "every event exactly once");
    assert_eq!(got, want);
    // Nothing more to retry.
    let again = retry(&job);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("nothing to retry"));

    // The retry is a change of its own, linked to the job's; rolling it back restores the
    // failed execution exactly.
    let changes = run(
        BIN,
        &["changes", "--dest", dest.to_str().unwrap(), "--json"],
    );
    let listed: Value = serde_json::from_slice(&changes.stdout).unwrap();
    let text = listed.to_string();
    assert!(text.contains("\"retries\""), "{text}");
    let rb = run(BIN, &["rollback", "--dest", dest.to_str().unwrap()]);
    assert!(
        rb.status.success(),
        "{}",
        String::from_utf8_lossy(&rb.stderr)
    );
    assert!(!exec.join("_SUCCESS").exists());
    assert_eq!(
        fs::read(exec.join("_manifest.json")).unwrap(),
        manifest_before
    );
    let after: BTreeMap<String, Vec<u8>> = files_below(&exec)
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "parquet"))
        .map(|f| (f.to_string_lossy().into_owned(), fs::read(&f).unwrap()))
        .collect();
    assert_eq!(after, before, "the retried shard's files are gone again");
}

/// `rewind retry --failed-events --flows F`: the job's failed records (a producer's bad
/// `schema_version`, and a truncated tail) go through decoding and a new flow again: what now
/// recovers lands in the same destination as a new job, what still fails is a new failed set,
/// the old set is marked handled, and no event is recovered twice.
#[test]
fn failed_events_are_retried_through_a_new_flow_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("archive"), tmp.path().join("out"));
    generate(&src, "2024-04-01T00", "2", "none", &[]);
    let mut odd = String::new();
    for n in 0..5 {
        odd.push_str(&format!(
            r#"{{"event_id":"bad-{n}","cid":"c","org_id":"TN-e2e","event_type":"x","domain":"d","schema_version":"v3","arrival_epoch":1711933200000,"timestamp":"2024-04-01T01:00:00Z","data":{{"n":{n}}}}}"#
        ));
    }
    odd.push_str(r#"{"event_id":"cut-1","cid":"c","org_id":"TN-e2e","data":{"n":"#);
    fs::write(src.join("main_stream/2024/04/01/01/odd.json"), &odd).unwrap();
    let summary = recover(&src, &dest, "2024-04-01T00", "2024-04-01T01", &[]);
    let job = summary["job_id"].as_str().unwrap().to_string();
    assert_eq!(summary["failed"], 6, "{summary}");
    let flows = tmp.path().join("fix.yaml");
    fs::write(
        &flows,
        "flows:\n  - name: fix-version\n    conditions:\n      - {op: Test, path: $.schema_version, value: {regex: \"^v[0-9]+$\"}}\n    steps:\n      - {op: Replace, path: $.schema_version, match: \"^v([0-9]+)$\", value: \"$1\"}\n      - {op: Cast, path: $.schema_version, from: String, to: Numeric}\n",
    )
    .unwrap();
    let retry = || {
        run(
            BIN,
            &[
                "retry",
                &job,
                "--dest",
                dest.to_str().unwrap(),
                "--failed-events",
                "--flows",
                flows.to_str().unwrap(),
                "--json",
            ],
        )
    };
    let out = retry();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = stdout_json(&out);
    assert_eq!(again["recovered"], 5, "{again}");
    assert_eq!(again["failed"], 1, "the truncated one fails again: {again}");
    let rows = parquet_rows(&dest);
    let ids: Vec<&str> = rows
        .iter()
        .map(|r| r["event_id"].as_str().unwrap())
        .collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "no event twice");
    assert_eq!(ids.len(), archived_events_valid(&src) + 5);
    for r in rows
        .iter()
        .filter(|r| r["event_id"].as_str().unwrap().starts_with("bad-"))
    {
        assert_eq!(r["schema_version"], 3, "{r}");
    }
    // The old failed set is handled: a second retry is refused.
    let second = retry();
    assert_eq!(second.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&second.stderr).contains("retried already"));
}

/// The generated (undamaged) events of an archive, leaving out the hand-made object `odd.json`.
fn archived_events_valid(src: &Path) -> usize {
    files_below(src)
        .iter()
        .filter(|f| f.file_name().unwrap() != "odd.json")
        .map(|f| {
            serde_json::Deserializer::from_slice(&fs::read(f).unwrap())
                .into_iter::<Value>()
                .count()
        })
        .sum()
}

/// `rewind ui --dest D`: the status page without servers, from the destination's change log and
/// manifests, in headless Chromium: both jobs listed, a failed job's heat map with its failed
/// hour and why.
#[test]
fn ui_shows_a_destinations_jobs_without_servers() {
    use rewind_testkit::servers::{Proc, chromium_dom, free_port, wait_port};
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("archive"), tmp.path().join("out"));
    generate(&src, "2024-04-01T00", "3", "none", &[]);
    let ok = recover(&src, &dest, "2024-04-01T00", "2024-04-01T02", &[]);
    let hour = src.join("main_stream/2024/04/01/02");
    fs::remove_dir_all(&hour).unwrap();
    fs::write(&hour, b"not a directory").unwrap();
    // And a damaged object: its cut tail is a failed record.
    fs::write(
        src.join("main_stream/2024/04/01/00/damaged.json"),
        br#"{"event_id":"ok-1","org_id":"TN-e2e"}{"event_id":"cut","data":{"x":"#,
    )
    .unwrap();
    let args = [
        "run",
        "--source",
        src.to_str().unwrap(),
        "--org",
        "TN-e2e",
        "--start",
        "2024-04-01T00",
        "--end",
        "2024-04-01T02",
        "--dest",
        dest.to_str().unwrap(),
        "--json",
        "--max-attempts",
        "1",
    ];
    let failed = stdout_json(&run(BIN, &args));
    assert_eq!(failed["failed_by_reason"]["truncated"], 1, "{failed}");
    let (ok_job, failed_job) = (
        ok["job_id"].as_str().unwrap().to_string(),
        failed["job_id"].as_str().unwrap().to_string(),
    );
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let ui = Proc::spawn(
        [BIN, "ui"],
        &[
            "--dest".to_string(),
            dest.to_string_lossy().into(),
            "--listen".into(),
            listen,
        ],
        tmp.path().join("ui.log"),
    );
    assert!(
        wait_port(port, std::time::Duration::from_secs(20)),
        "{}",
        ui.log_text()
    );
    let list = chromium_dom(&format!("http://127.0.0.1:{port}/"));
    assert!(list.contains(&format!("data-job=\"{ok_job}\"")), "{list}");
    assert!(
        list.contains(&format!("data-job=\"{failed_job}\"")),
        "{list}"
    );
    // Newest first, with its kind.
    assert!(list.find(&failed_job) < list.find(&ok_job));
    assert!(list.contains("<td>recovery</td>"), "{list}");
    let page = chromium_dom(&format!("http://127.0.0.1:{port}/#job={failed_job}"));
    assert!(
        page.contains("data-shard=\"2024040102\" data-state=\"failed\""),
        "{page}"
    );
    assert_eq!(page.matches("data-state=\"done\"").count(), 2, "{page}");
    assert!(page.contains("Not a directory"), "the reason: {page}");
    // Failed events by reason, with the first records and where they came from.
    assert!(page.contains("data-reason=\"truncated\""), "{page}");
    assert!(
        page.contains("main_stream/2024/04/01/00/damaged.json"),
        "the first record's object: {page}"
    );
}

/// One hour's objects decoded in parallel (cores to spare) and one at a time
/// (`REWIND_PARALLEL_OBJECTS=0`) give the same summary, the same rows and the same failed
/// records in the same order — damaged objects included.
#[test]
fn parallel_objects_write_what_one_at_a_time_writes() {
    use rewind_testkit::servers::Program;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("archive");
    generate(&src, "2024-04-01T05", "1", "none", &[]);
    let objects = files_below(&src);
    // Garbage inside two objects, and a cut-off tail in a third.
    for (n, object) in objects.iter().enumerate() {
        let mut b = fs::read(object).unwrap();
        let mid = b.len() / 2;
        let at = mid + b[mid..].iter().position(|c| *c == b'}').unwrap() + 1;
        b.splice(at..at, format!("#garbage-{n}#").bytes());
        if n == 2 {
            b.truncate(b.len() - 17);
        }
        fs::write(object, &b).unwrap();
    }
    let run_with = |parallel: &str, dest: &Path| -> Value {
        let out = BIN
            .command()
            .args([
                "run",
                "--source",
                src.to_str().unwrap(),
                "--org",
                "TN-e2e",
                "--start",
                "2024-04-01T05",
                "--end",
                "2024-04-01T05",
                "--dest",
                dest.to_str().unwrap(),
                "--json",
            ])
            .env("REWIND_PARALLEL_OBJECTS", parallel)
            .env("REWIND_LOG", "warn")
            .output()
            .unwrap();
        stdout_json(&out)
    };
    let (one, par) = (tmp.path().join("one"), tmp.path().join("par"));
    let (a, b) = (run_with("0", &one), run_with("1", &par));
    for field in [
        "state",
        "objects",
        "bytes",
        "decoded",
        "recovered",
        "failed",
        "failed_by_reason",
        "files",
    ] {
        assert_eq!(a[field], b[field], "{field}: {a} vs {b}");
    }
    assert_eq!(a["failed_by_reason"].as_object().unwrap().len(), 2, "{a}");
    let rows = |dest: &Path| {
        by_event_id(parquet_rows(dest).into_iter().map(|mut r| {
            // (The path holds the job id, which differs.)
            r.as_object_mut().unwrap().remove("_partition");
            r
        }))
    };
    let recovered = rows(&one);
    assert_eq!(recovered.len() as u64, a["recovered"].as_u64().unwrap());
    assert_eq!(recovered, rows(&par));
    let failed = |dest: &Path| -> Vec<String> {
        files_below(&dest.join("_failed"))
            .iter()
            .filter(|f| !f.to_string_lossy().contains("_rewind"))
            .flat_map(|f| {
                String::from_utf8(fs::read(f).unwrap())
                    .unwrap()
                    .lines()
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let (fa, fb) = (failed(&one), failed(&par));
    assert_eq!(fa.len() as u64, a["failed"].as_u64().unwrap());
    assert_eq!(fa, fb, "the same failed records, in the same order");
}

/// The binary starts itself again once with glibc's allocator settings (one arena per four
/// cores, mmap threshold 32 MiB, trim threshold 64 MiB: `common/src/malloc.rs`), same process, same
/// arguments; a variable the environment sets is left as it is.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn the_binary_tunes_glibcs_allocator_once_and_keeps_an_operators_choice() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    const VARS: [&str; 3] = [
        "MALLOC_ARENA_MAX",
        "MALLOC_MMAP_THRESHOLD_",
        "MALLOC_TRIM_THRESHOLD_",
    ];
    // A worker whose etcd never answers: it retries (and says so on stderr) until killed.
    let args = ["worker", "--etcd", "http://127.0.0.1:9", "--slots", "1"];
    let environ_of = |operator: &[(&str, &str)]| {
        let mut cmd = Command::new(BIN);
        cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
        for var in VARS {
            cmd.env_remove(var);
        }
        cmd.envs(operator.iter().copied());
        let mut child = cmd.spawn().unwrap();
        // Its first line is written by `main` past the point where it would start again.
        let mut line = String::new();
        BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("etcd unreachable"), "{line}");
        let pid = child.id();
        let environ = fs::read(format!("/proc/{pid}/environ")).unwrap();
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        let mut vars: Vec<String> = environ
            .split(|b| *b == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .filter(|v| VARS.iter().any(|var| v.starts_with(&format!("{var}="))))
            .collect();
        vars.sort();
        let argv: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        (vars, argv)
    };

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (vars, argv) = environ_of(&[]);
    assert_eq!(
        vars,
        [
            format!("MALLOC_ARENA_MAX={}", cores.div_ceil(4)),
            "MALLOC_MMAP_THRESHOLD_=33554432".to_string(),
            "MALLOC_TRIM_THRESHOLD_=67108864".to_string(),
        ]
    );
    assert_eq!(argv[0], BIN, "argv[0] is kept");
    assert_eq!(argv[1..], args, "the arguments are kept");

    // An operator's settings are left alone; the others are still filled in.
    let (vars, argv) = environ_of(&[
        ("MALLOC_ARENA_MAX", "3"),
        ("MALLOC_MMAP_THRESHOLD_", "131072"),
    ]);
    assert_eq!(
        vars,
        [
            "MALLOC_ARENA_MAX=3",
            "MALLOC_MMAP_THRESHOLD_=131072",
            "MALLOC_TRIM_THRESHOLD_=67108864"
        ],
    );
    assert_eq!(argv[1..], args);

    // All three set: each is kept as it is.
    let all = [
        ("MALLOC_ARENA_MAX", "2"),
        ("MALLOC_MMAP_THRESHOLD_", "1048576"),
        ("MALLOC_TRIM_THRESHOLD_", "2097152"),
    ];
    let (vars, _) = environ_of(&all);
    assert_eq!(
        vars,
        [
            "MALLOC_ARENA_MAX=2",
            "MALLOC_MMAP_THRESHOLD_=1048576",
            "MALLOC_TRIM_THRESHOLD_=2097152"
        ]
    );
}
