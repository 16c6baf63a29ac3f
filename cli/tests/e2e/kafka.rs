//! Kafka replay end to end through `rewind run` against a real Kafka-protocol broker (tansu,
//! started by the test): every value is byte-identical to an archived event, keys follow
//! `--key`, lineage headers point back at the exact bytes in the archive.
//!
//! What tansu 0.6 cannot show: that an aborted transaction stays invisible to read_committed
//! consumers (it leaks aborted records to them), and a broker without transactions refusing
//! exactly-once (every broker we can run here has them). The exactly-once test covers the commit
//! path and the control-topic markers; the crash between the Kafka commit and the shard's commit
//! is in the distributed tests.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::common::{self, ok, records, seed};
use rewind_testkit::kafka::Tansu;
use rewind_testkit::{files_below, run, stdout_json};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_rewind");

fn generate(dir: &Path, hours: &str, compression: &str) {
    let seed = seed("11");
    let extra = ["--compression", compression];
    common::generate(dir, "TN-k", "2024-06-01T00", hours, "0.2", &seed, &extra);
}

fn replay(src: &Path, dest: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--kafka-option", rewind_testkit::kafka::PRODUCER_OPTION];
    args.extend_from_slice(extra);
    replay_as_users_do(src, dest, &args)
}

/// `rewind run --sink kafka` of the first two hours with the producer's own defaults.
fn replay_as_users_do(src: &Path, dest: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "run",
        "--source",
        src.to_str().unwrap(),
        "--org",
        "TN-k",
        "--start",
        "2024-06-01T00",
        "--end",
        "2024-06-01T01",
        "--dest",
        dest.to_str().unwrap(),
        "--sink",
        "kafka",
        "--json",
    ];
    args.extend_from_slice(extra);
    run(BIN, &args)
}

/// Every archived event's exact bytes, by (object key, offset): read independently with
/// serde_json's stream deserializer over the decompressed objects.
pub(crate) fn archived(src: &Path) -> BTreeMap<(String, u64), Vec<u8>> {
    let mut out = BTreeMap::new();
    for path in files_below(src) {
        let key = path
            .strip_prefix(src)
            .unwrap()
            .to_string_lossy()
            .to_string();
        let raw = fs::read(&path).unwrap();
        let bytes = match raw.as_slice() {
            [0x1f, 0x8b, ..] => {
                let mut v = Vec::new();
                std::io::Read::read_to_end(
                    &mut flate2::read::MultiGzDecoder::new(&raw[..]),
                    &mut v,
                )
                .unwrap();
                v
            }
            [0x28, 0xb5, 0x2f, 0xfd, ..] => zstd::decode_all(&raw[..]).unwrap(),
            _ => raw,
        };
        let mut it =
            serde_json::Deserializer::from_slice(&bytes).into_iter::<serde::de::IgnoredAny>();
        let mut start = 0;
        while let Some(v) = it.next() {
            v.unwrap();
            let end = it.byte_offset();
            let s = start
                + bytes[start..end]
                    .iter()
                    .position(|b| !b.is_ascii_whitespace())
                    .unwrap();
            out.insert((key.clone(), s as u64), bytes[s..end].to_vec());
            start = end;
        }
    }
    out
}

/// The records' values are the archived events' bytes, each exactly once (`what` names the case).
fn assert_every_event_once(
    records: &[rewind_testkit::kafka::Record],
    want: &BTreeMap<(String, u64), Vec<u8>>,
    what: &str,
) {
    let mut got: Vec<&[u8]> = records.iter().map(|r| r.value.as_slice()).collect();
    let mut expected: Vec<&[u8]> = want.values().map(Vec::as_slice).collect();
    got.sort();
    expected.sort();
    assert_eq!(got.len(), expected.len(), "{what}: every event once");
    assert_eq!(got, expected, "{what}: every event exactly once");
}

/// `--ordered`: within an hour shard (hours run in parallel), the records of each key are on
/// the topic in archive order (object, then byte offset). Returns how many (key, hour) groups
/// there were.
fn assert_archive_order_per_key(records: &mut [rewind_testkit::kafka::Record]) -> usize {
    records.sort_by_key(|r| (r.partition, r.offset));
    let mut last: BTreeMap<(Vec<u8>, String), (String, u64)> = BTreeMap::new();
    for r in records.iter() {
        let source = r.header("rewind-source-key").unwrap().to_string();
        let hour = source.rsplit_once('/').unwrap().0.to_string();
        let at = (
            source,
            r.header("rewind-offset").unwrap().parse::<u64>().unwrap(),
        );
        if let Some(prev) = last.insert((r.key.clone().unwrap(), hour), at.clone()) {
            assert!(prev < at, "out of order for a key: {prev:?} then {at:?}");
        }
    }
    last.len()
}

#[test]
fn replay_is_byte_exact_keyed_and_traced() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("archive"), tmp.path().join("out"));
    generate(&src, "2", "mixed");
    let broker = Tansu::start();
    broker.create_topic("replay", 3);
    let out = replay(
        &src,
        &dest,
        &[
            "--brokers",
            &broker.brokers(),
            "--topic",
            "replay",
            "--compression",
            "lz4",
        ],
    );
    let summary = ok(&out);
    let want = archived(&src);
    let n = want.len() as u64;
    assert_eq!(summary["recovered"], n);
    assert_eq!(summary["produced"], n);
    assert_eq!(summary["acknowledged"], n);

    let records = broker.read_all("replay", 3, want.len(), Duration::from_secs(60));
    assert_eq!(records.len(), want.len(), "every event once, nothing more");
    let job = summary["job_id"].as_str().unwrap();
    let mut values: Vec<&[u8]> = Vec::new();
    for r in &records {
        // Lineage: the headers point at these exact bytes in the archive.
        let key = r.header("rewind-source-key").unwrap().to_string();
        let offset: u64 = r.header("rewind-offset").unwrap().parse().unwrap();
        assert_eq!(r.header("rewind-job"), Some(job));
        assert_eq!(r.header("rewind-attempt"), Some("1"));
        assert_eq!(
            want.get(&(key.clone(), offset)).map(Vec::as_slice),
            Some(r.value.as_slice()),
            "{key}@{offset}"
        );
        // Keys follow --key (event_id by default), and so does the event-id header.
        let v: Value = serde_json::from_slice(&r.value).unwrap();
        let id = v["event_id"].as_str().unwrap();
        assert_eq!(r.key.as_deref(), Some(id.as_bytes()));
        assert_eq!(r.header("rewind-event-id"), Some(id));
        values.push(&r.value);
    }
    // The multiset of values is the multiset of archived events.
    let mut expected: Vec<&[u8]> = want.values().map(Vec::as_slice).collect();
    values.sort();
    expected.sort();
    assert_eq!(values, expected);
    // No Parquet is written; the manifest is.
    assert!(
        files_below(&dest)
            .iter()
            .all(|f| f.extension().is_none_or(|e| e != "parquet"))
    );
    assert!(
        dest.join(format!("execution_id={job}/_manifest.json"))
            .exists()
    );
}

#[test]
fn keys_by_path_or_none() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("archive");
    generate(&src, "1", "none");
    let broker = Tansu::start();
    broker.create_topic("by-account", 2);
    broker.create_topic("unkeyed", 2);
    for (topic, key) in [("by-account", "$.data.account_id"), ("unkeyed", "none")] {
        let dest = tmp.path().join(topic);
        let out = replay(
            &src,
            &dest,
            &[
                "--brokers",
                &broker.brokers(),
                "--topic",
                topic,
                "--key",
                key,
            ],
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let n = stdout_json(&out)["acknowledged"].as_u64().unwrap() as usize;
        let records = broker.read_all(topic, 2, n, Duration::from_secs(60));
        assert_eq!(records.len(), n);
        for r in &records {
            let v: Value = serde_json::from_slice(&r.value).unwrap();
            match key {
                "none" => assert_eq!(r.key, None),
                _ => assert_eq!(
                    r.key,
                    Some(v["data"]["account_id"].to_string().into_bytes())
                ),
            }
        }
    }
}

#[test]
fn bad_kafka_requests_are_refused_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("archive"), tmp.path().join("out"));
    generate(&src, "1", "none");
    let broker = Tansu::start();
    let b = broker.brokers();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--topic", "t"], "invalid --brokers: is required"),
        (vec!["--brokers", &b], "invalid --topic: is required"),
        (
            vec!["--brokers", "kafka://x:1", "--topic", "t"],
            "invalid --brokers",
        ),
        (vec!["--brokers", &b, "--topic", "a/b"], "invalid --topic"),
        (
            vec!["--brokers", &b, "--topic", "t", "--key", "$..id"],
            "invalid --key",
        ),
        (
            vec!["--brokers", &b, "--topic", "t", "--compression", "brotli"],
            "invalid --compression",
        ),
        (
            vec!["--brokers", &b, "--topic", "t", "--kafka-option", "novalue"],
            "invalid --kafka-option",
        ),
        (
            vec![
                "--brokers",
                &b,
                "--topic",
                "t",
                "--kafka-option",
                "no.such=1",
            ],
            "invalid --kafka-option: librdkafka refuses the settings",
        ),
        (
            vec![
                "--brokers",
                &b,
                "--topic",
                "t",
                "--kafka-option",
                "acks=banana",
            ],
            "invalid --kafka-option: librdkafka refuses the settings",
        ),
        (
            vec!["--brokers", &b, "--topic", "t", "--delivery", "twice"],
            "invalid --delivery",
        ),
        (
            vec!["--brokers", &b, "--topic", "t", "--max-events-per-sec", "0"],
            "invalid --max-events-per-sec: must be at least 1",
        ),
        (
            vec!["--brokers", &b, "--topic", "t", "--checkpoint-events", "1"],
            "invalid --checkpoint-events",
        ),
    ];
    for (extra, message) in cases {
        let out = replay(&src, &dest, &extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(message), "{extra:?}: {err}");
        assert!(!dest.exists());
    }
    // Kafka flags without --sink kafka.
    let out = run(
        BIN,
        &[
            "run",
            "--source",
            src.to_str().unwrap(),
            "--org",
            "TN-k",
            "--start",
            "2024-06-01",
            "--end",
            "2024-06-01",
            "--dest",
            dest.to_str().unwrap(),
            "--topic",
            "t",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--topic: applies to --sink kafka or --sink pubsub only")
    );
    // TLS is built in: a bad CA path is the error (not "built without SSL support"), refused
    // with the settings before anything runs.
    let out = replay(
        &src,
        &dest,
        &[
            "--brokers",
            &b,
            "--topic",
            "t",
            "--kafka-option",
            "security.protocol=ssl",
            "--kafka-option",
            "ssl.ca.location=/nonexistent/ca.pem",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("invalid --kafka-option"), "{err}");
    assert!(err.contains("ssl.ca.location"), "{err}");
    // A topic that does not exist: one clear error at start, exit 1, nothing produced.
    let out = replay(&src, &dest, &["--brokers", &b, "--topic", "missing"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("missing"), "{err}");
}

/// The broker goes away mid-job: deliveries time out, the shard is retried, then fails with the
/// reason; the job fails (exit 1) and reports as produced only what was acknowledged.
#[test]
fn broker_down_mid_job_fails_the_shard_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("archive"), tmp.path().join("out"));
    let out = run(
        BIN,
        &[
            "gen",
            "--out",
            src.to_str().unwrap(),
            "--org",
            "TN-k",
            "--start",
            "2024-06-01T00",
            "--hours",
            "2",
            "--objects-per-hour",
            "3",
            "--object-mb",
            "1",
            "--seed",
            "12",
        ],
    );
    assert!(out.status.success());
    // Cut after ~300 KB of client traffic: metadata passes, the replay (6 MB) is cut short.
    let (broker, proxy) = Tansu::start_behind_proxy(300 << 10);
    broker.create_topic("replay", 2);
    let out = replay(
        &src,
        &dest,
        &[
            "--brokers",
            &format!("127.0.0.1:{}", proxy.port),
            "--topic",
            "replay",
            "--kafka-option",
            "message.timeout.ms=3000",
            "--max-attempts",
            "2",
            "--workers",
            "1",
        ],
    );
    assert!(
        proxy.is_cut(),
        "the proxy cut the broker off ({} bytes up)",
        proxy.bytes_up()
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = stdout_json(&out);
    assert_eq!(summary["state"], "failed");
    let failed = summary["failed_shards"].as_array().unwrap();
    assert!(!failed.is_empty());
    for f in failed {
        assert_eq!(f["attempts"], 2, "{f}");
        let reason = f["reason"].as_str().unwrap();
        assert!(reason.contains("Kafka"), "{reason}");
    }
    // Only committed shards count, and for them everything produced was acknowledged.
    assert_eq!(summary["produced"], summary["acknowledged"]);
}

/// `--max-events-per-sec` over a ten-second replay: the records' producer timestamps show the
/// rate within 10%.
#[test]
fn throttle_holds_the_rate_within_ten_percent() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("archive"), tmp.path().join("out"));
    generate(&src, "1", "none");
    let n = archived(&src).len() as f64;
    let rate = (n / 10.0).round();
    let broker = Tansu::start();
    broker.create_topic("slow", 2);
    let out = replay(
        &src,
        &dest,
        &[
            "--brokers",
            &broker.brokers(),
            "--topic",
            "slow",
            "--max-events-per-sec",
            &rate.to_string(),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records = broker.read_all("slow", 2, n as usize, Duration::from_secs(60));
    assert_eq!(records.len(), n as usize);
    let times: Vec<i64> = records.iter().map(|r| r.timestamp.unwrap()).collect();
    let span_s = (times.iter().max().unwrap() - times.iter().min().unwrap()) as f64 / 1000.0;
    let measured = (n - 1.0) / span_s;
    assert!(
        (measured - rate).abs() <= rate * 0.10,
        "asked {rate}/s, measured {measured:.1}/s over {span_s:.1}s"
    );
}

/// `--ordered`: per key, records come in the archive's order (objects by name, events by
/// offset). `--object`: one object only; an object outside the range is refused.
#[test]
fn ordered_per_key_and_single_object() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("archive");
    generate(&src, "1", "gzip");
    let want = archived(&src);
    let broker = Tansu::start();
    broker.create_topic("ordered", 3);
    let dest = tmp.path().join("ordered");
    let out = replay(
        &src,
        &dest,
        &[
            "--brokers",
            &broker.brokers(),
            "--topic",
            "ordered",
            "--ordered",
            "--key",
            "$.event_type",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut records = broker.read_all("ordered", 3, want.len(), Duration::from_secs(60));
    assert_eq!(records.len(), want.len());
    let groups = assert_archive_order_per_key(&mut records);
    assert_eq!(groups, 7, "the generator's seven event types");

    // One object.
    let object = want.keys().next().unwrap().0.clone();
    let in_object = want.keys().filter(|(k, _)| *k == object).count();
    broker.create_topic("one", 1);
    let dest = tmp.path().join("one");
    let out = replay(
        &src,
        &dest,
        &[
            "--brokers",
            &broker.brokers(),
            "--topic",
            "one",
            "--object",
            &object,
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout_json(&out)["acknowledged"], in_object as u64);
    let records = broker.read_all("one", 1, in_object, Duration::from_secs(60));
    assert_eq!(records.len(), in_object);
    assert!(
        records
            .iter()
            .all(|r| r.header("rewind-source-key") == Some(object.as_str()))
    );
    // An object that is not in the range.
    let out = replay(
        &src,
        &tmp.path().join("none"),
        &[
            "--brokers",
            &broker.brokers(),
            "--topic",
            "one",
            "--object",
            "main_stream/2030/01/01/00/x.json",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--object main_stream/2030/01/01/00/x.json in the job's hours: not found"),
        "{err}"
    );
}

/// `--delivery exactly-once`: each shard is one transaction with a marker in
/// `<topic>.rewind-control`; a read_committed consumer sees every event once. Without the
/// control topic the job is refused at start.
///
/// Not shown here: that an aborted transaction stays invisible to read_committed consumers
/// (tansu 0.6 leaks aborted records to them), and the refusal by a broker without transactions
/// (the brokers we can run here all have them).
#[test]
fn exactly_once_commits_each_shard_with_a_marker() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("archive"), tmp.path().join("out"));
    generate(&src, "2", "none");
    let want = archived(&src);
    let broker = Tansu::start();
    broker.create_topic("eo", 3);
    let args = [
        "--brokers",
        &broker.brokers(),
        "--topic",
        "eo",
        "--delivery",
        "exactly-once",
    ];
    let out = replay(&src, &dest, &args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("create it") && err.contains("eo.rewind-control"),
        "{err}"
    );

    broker.create_topic("eo.rewind-control", 1);
    let out = replay(&src, &dest, &args);
    let summary = ok(&out);
    assert_eq!(summary["acknowledged"], want.len() as u64);
    let records = broker.read_all("eo", 3, want.len(), Duration::from_secs(60));
    assert_every_event_once(&records, &want, "exactly-once");
    let job = summary["job_id"].as_str().unwrap();
    // The replay is a change of the destination's log, which cannot be undone in Kafka.
    let log = run(
        BIN,
        &["changes", "--dest", dest.to_str().unwrap(), "--json"],
    );
    let log = ok(&log);
    assert_eq!(log[0]["kind"], "replay");
    assert_eq!(log[0]["kafka"]["topic"], "eo");
    assert_eq!(log[0]["kafka"]["records"], want.len() as u64);
    // The offsets of its records by partition, as a consumer found them.
    let mut seen: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for r in &records {
        let e = seen
            .entry(r.partition.to_string())
            .or_insert((r.offset, r.offset));
        *e = (e.0.min(r.offset), e.1.max(r.offset));
    }
    let ranges: BTreeMap<String, (i64, i64)> = log[0]["kafka"]["partitions"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(p, r)| {
            (
                p.clone(),
                (r["first"].as_i64().unwrap(), r["last"].as_i64().unwrap()),
            )
        })
        .collect();
    assert_eq!(ranges, seen);
    assert_eq!(log[0]["kafka"]["ranges_complete"], true);
    let undo = run(BIN, &["rollback", "--dest", dest.to_str().unwrap()]);
    assert_eq!(undo.status.code(), Some(2));
    let err = String::from_utf8_lossy(&undo.stderr);
    assert!(err.contains("cannot be taken back from Kafka"), "{err}");
    let markers = broker.read_all("eo.rewind-control", 1, 3, Duration::from_secs(30));
    let mut keys: Vec<String> = markers
        .iter()
        .map(|m| String::from_utf8(m.key.clone().unwrap()).unwrap())
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            format!("{job}/2024060100"),
            format!("{job}/2024060101"),
            // The preflight's transaction, committed before any shard ran.
            "rewind-preflight".to_string()
        ]
    );
}

/// A record the producer refuses for itself (over `message.max.bytes`) goes to the failed output
/// with the reason and its exact bytes; the others are produced and the job succeeds.
#[test]
fn records_too_large_go_to_the_failed_output() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("archive"), tmp.path().join("out"));
    let hour = src.join("main_stream/2024/06/01/00");
    fs::create_dir_all(&hour).unwrap();
    let body: String = (0..30)
        .map(|i| {
            let pad = if i % 6 == 0 { 5000 } else { 100 };
            serde_json::json!({"event_id": format!("e{i}"), "org_id": "TN-k", "data": {"pad": "x".repeat(pad)}})
                .to_string()
        })
        .collect();
    fs::write(hour.join("events-000001.json"), body).unwrap();
    let want = archived(&src);
    let broker = Tansu::start();
    broker.create_topic("small", 1);
    let out = replay(
        &src,
        &dest,
        &[
            "--brokers",
            &broker.brokers(),
            "--topic",
            "small",
            "--kafka-option",
            "message.max.bytes=2000",
        ],
    );
    let summary = ok(&out);
    assert_eq!(
        summary["failed_by_reason"]["kafka_rejected"], 5,
        "{summary}"
    );
    assert_eq!(summary["acknowledged"], 25);
    assert_eq!(summary["recovered"], 25);
    let job = summary["job_id"].as_str().unwrap();
    let mut rejected = Vec::new();
    for r in records(&dest.join(format!("_failed/execution_id={job}"))) {
        assert_eq!(r["code"], "kafka_rejected");
        assert!(r["reason"].as_str().unwrap().contains("refused"), "{r}");
        let key = (
            r["source_key"].as_str().unwrap().to_string(),
            r["byte_offset"].as_u64().unwrap(),
        );
        assert_eq!(want[&key].as_slice(), r["raw"].as_str().unwrap().as_bytes());
        let v: Value = serde_json::from_str(r["raw"].as_str().unwrap()).unwrap();
        rejected.push(v["event_id"].as_str().unwrap().to_string());
    }
    rejected.sort();
    assert_eq!(rejected, ["e0", "e12", "e18", "e24", "e6"]);
    assert_eq!(
        broker
            .read_all("small", 1, 25, Duration::from_secs(30))
            .len(),
        25
    );
}

/// Flows and damage on the way to Kafka: a repaired event's value is its archived bytes with only
/// the edited value changed, an event routed to unrecoverable is not produced, a damaged range
/// goes to the failed output, and every other value is the archived bytes untouched.
#[test]
fn repaired_values_and_damage_on_the_way_to_kafka() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("archive"), tmp.path().join("out"));
    generate(&src, "1", "none");
    let want = archived(&src);
    // Garbage after the last event of one object: its events keep their offsets.
    let first = files_below(&src).into_iter().next().unwrap();
    let mut bytes = fs::read(&first).unwrap();
    let garbage_at = bytes.len() as u64;
    bytes.extend_from_slice(b"\x00\x00GARBAGE");
    fs::write(&first, &bytes).unwrap();
    let flows = tmp.path().join("flows.json");
    fs::write(
        &flows,
        r#"{"flows": [
  {"name": "fix-currency",
   "conditions": [{"op": "Test", "path": "$.event_type", "value": {"value": "transaction-created"}},
                  {"op": "Test", "path": "$.data.amount.currency", "value": {"regex": "^(brl|usd)$"}}],
   "steps": [{"op": "Replace", "path": "$.data.amount.currency", "match": "(?U)^.*$", "value": "BRL"}]},
  {"name": "drop-cards", "outcome": "unrecoverable",
   "conditions": [{"op": "Test", "path": "$.domain", "value": {"value": "cards"}}]}
]}"#,
    )
    .unwrap();
    let broker = Tansu::start();
    broker.create_topic("repaired", 2);
    let out = replay(
        &src,
        &dest,
        &[
            "--brokers",
            &broker.brokers(),
            "--topic",
            "repaired",
            "--flows",
            flows.to_str().unwrap(),
        ],
    );
    let summary = ok(&out);

    // What the flows must do, decided over serde_json values.
    let (mut produced, mut repaired, mut cards) = (BTreeMap::new(), 0u64, 0u64);
    for (at, bytes) in &want {
        let v: Value = serde_json::from_slice(bytes).unwrap();
        if v["domain"] == "cards" {
            cards += 1;
            continue;
        }
        let fix = v["event_type"] == "transaction-created"
            && matches!(
                v["data"]["amount"]["currency"].as_str(),
                Some("brl" | "usd")
            );
        repaired += u64::from(fix);
        produced.insert(at.clone(), (fix, bytes.clone()));
    }
    assert!(
        repaired > 0 && cards > 0,
        "the archive exercises both flows"
    );
    assert_eq!(summary["repaired"], repaired, "{summary}");
    assert_eq!(summary["unrecoverable"], cards);
    assert_eq!(summary["recovered"], produced.len() as u64);
    assert_eq!(summary["acknowledged"], produced.len() as u64);
    assert_eq!(summary["failed"], 1);
    assert_eq!(summary["failed_by_reason"]["syntax"], 1);
    let job = summary["job_id"].as_str().unwrap();
    let failed = records(&dest.join(format!("_failed/execution_id={job}")));
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["byte_offset"], garbage_at);
    assert_eq!(failed[0]["raw"], "\u{0}\u{0}GARBAGE");

    let records = broker.read_all("repaired", 2, produced.len(), Duration::from_secs(60));
    assert_eq!(records.len(), produced.len(), "each produced event once");
    for r in &records {
        let at = (
            r.header("rewind-source-key").unwrap().to_string(),
            r.header("rewind-offset").unwrap().parse::<u64>().unwrap(),
        );
        let (fix, orig) = &produced[&at];
        if !fix {
            assert_eq!(&r.value, orig, "{at:?}: untouched bytes");
            continue;
        }
        // Only the three letters of the currency changed, in place.
        let mut expected: Value = serde_json::from_slice(orig).unwrap();
        expected["data"]["amount"]["currency"] = Value::from("BRL");
        assert_eq!(serde_json::from_slice::<Value>(&r.value).unwrap(), expected);
        assert_eq!(r.value.len(), orig.len());
        let diff: Vec<usize> = (0..orig.len()).filter(|&i| r.value[i] != orig[i]).collect();
        assert!(
            !diff.is_empty() && diff[diff.len() - 1] - diff[0] < 3,
            "{at:?}: bytes changed at {diff:?}"
        );
    }
}

/// `--dedup` on a replay works as for Parquet: within the shard and against the hour before it,
/// so each event is produced once, from the earliest hour that has it.
#[test]
fn dedup_within_and_across_hours_produces_the_earliest_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("archive"), tmp.path().join("out"));
    for (h, events) in [
        &[("e1", "t1"), ("e2", "t1"), ("e1", "t1"), ("e1", "t2")][..],
        &[("e2", "t1"), ("e3", "t1"), ("e3", "t1"), ("e4", "t1")][..],
    ]
    .iter()
    .enumerate()
    {
        let dir = src.join(format!("main_stream/2024/06/01/{h:02}"));
        fs::create_dir_all(&dir).unwrap();
        let body: String = events
            .iter()
            .map(|(id, ts)| {
                serde_json::json!({"event_id": id, "org_id": "TN-k", "timestamp": ts,
                                   "data": {"h": h}})
                .to_string()
            })
            .collect();
        fs::write(dir.join("events-000001.json"), body).unwrap();
    }
    let broker = Tansu::start();
    broker.create_topic("dedup", 1);
    let out = replay(
        &src,
        &dest,
        &[
            "--brokers",
            &broker.brokers(),
            "--topic",
            "dedup",
            "--dedup",
            "event_id",
        ],
    );
    let summary = ok(&out);
    assert_eq!(summary["duplicates"], 4, "{summary}");
    assert_eq!(summary["acknowledged"], 4);
    let mut got: Vec<(String, i64)> = broker
        .read_all("dedup", 1, 4, Duration::from_secs(30))
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_slice(&r.value).unwrap();
            (
                v["event_id"].as_str().unwrap().to_string(),
                v["data"]["h"].as_i64().unwrap(),
            )
        })
        .collect();
    got.sort();
    let want: Vec<(String, i64)> = [("e1", 0), ("e2", 0), ("e3", 1), ("e4", 1)]
        .iter()
        .map(|(id, h)| (id.to_string(), *h))
        .collect();
    assert_eq!(got, want, "e2 of hour 01 is hour 00's copy");
}

/// Secrets go by reference: a property given with `--kafka-secret KEY=file:PATH` is read by the
/// process that connects, and its value is in no output (manifests, records) while the replay
/// works with it; a secret given inline is refused before anything runs; a reference that does
/// not resolve fails the job at its start, naming the reference.
#[test]
fn kafka_secrets_are_resolved_by_reference_and_never_written() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("archive"), tmp.path().join("out"));
    generate(&src, "2", "none");
    let broker = Tansu::start();
    broker.create_topic("secret", 1);
    let value = "rewind-secret-7731";
    let file = tmp.path().join("client-id");
    fs::write(&file, format!("{value}\n")).unwrap();
    let reference = format!("client.id=file:{}", file.display());
    let brokers = broker.brokers();
    let base = ["--brokers", brokers.as_str(), "--topic", "secret"];

    let inline = replay(
        &src,
        &dest,
        &[&base[..], &["--kafka-option", "sasl.password=hunter2"]].concat(),
    );
    assert_eq!(inline.status.code(), Some(2));
    let err = String::from_utf8_lossy(&inline.stderr);
    assert!(err.contains("--kafka-secret"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    assert!(!dest.exists(), "nothing written for a bad request");

    let summary = ok(&replay(
        &src,
        &dest,
        &[&base[..], &["--kafka-secret", &reference]].concat(),
    ));
    let n = archived(&src).len() as u64;
    assert_eq!(summary["acknowledged"], n);
    let mut manifests = 0;
    for f in files_below(&dest) {
        let text = String::from_utf8_lossy(&fs::read(&f).unwrap()).to_string();
        assert!(!text.contains(value), "{} holds the secret", f.display());
        if f.ends_with("_manifest.json") {
            manifests += 1;
            assert!(text.contains("file:"), "the reference is recorded: {text}");
        }
    }
    assert_eq!(manifests, 1);

    let missing = format!("client.id=file:{}", tmp.path().join("nope").display());
    let out = replay(
        &src,
        &dest,
        &[&base[..], &["--kafka-secret", &missing]].concat(),
    );
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--kafka-secret client.id=file:"), "{err}");
}

/// The exactly-once marker lookup answers "not committed" only after reading the control topic
/// to its end, never after a quiet spell: with every Fetch held back for 20 s (metadata and
/// offsets still answer), a committed shard's marker is still found, late. (The lookup used to
/// give up after 15 s without a record and answer "not committed": the retry would have produced
/// the shard a second time.) A shard that never committed is answered "no" once the topic was
/// read to its end, and the lookup starts at the job's own offsets, not the topic's history.
#[test]
fn marker_lookup_waits_out_a_stalled_broker() {
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    use rewind_common::ShardId;
    use rewind_common::job::SinkSpec;
    use rewind_common::lifecycle::JobManifest;
    use rewind_worker::kafka::Committed;

    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("archive"), tmp.path().join("out"));
    generate(&src, "2", "none");
    let (broker, stall) = Tansu::start_behind_fetch_stall();
    broker.create_topic("eo", 1);
    broker.create_topic("eo.rewind-control", 1);
    let brokers = broker.brokers();
    let summary = ok(&replay(
        &src,
        &dest,
        &[
            "--brokers",
            &brokers,
            "--topic",
            "eo",
            "--delivery",
            "exactly-once",
        ],
    ));
    let job = summary["job_id"].as_str().unwrap().to_string();
    let manifest: JobManifest = serde_json::from_slice(
        &fs::read(dest.join(format!("execution_id={job}/_manifest.json"))).unwrap(),
    )
    .unwrap();
    let SinkSpec::Kafka(k) = manifest.spec.sink else {
        panic!("a Kafka job")
    };
    assert_eq!(
        k.control_from.len(),
        1,
        "the job's start in the control topic"
    );
    let stop = AtomicBool::new(false);
    let committed = ShardId::parse("2024060100").unwrap();

    stall.stall_fetches(Duration::from_secs(20));
    let started = Instant::now();
    let found = rewind_worker::kafka::committed(&k, &job, committed, &stop);
    assert!(
        matches!(found, Ok(Committed::All)),
        "a committed marker must be found, however long the broker stalls: {found:?} after {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() >= Duration::from_secs(15), "it waited");

    let never = ShardId::parse("2024060105").unwrap();
    let found = rewind_worker::kafka::committed(&k, &job, never, &stop);
    assert!(matches!(found, Ok(Committed::Nothing)), "{found:?}");
}

/// The producer as users run it: no test-only settings (librdkafka's idempotent producer with
/// up to five requests in flight per connection, lz4), three times over, then `--ordered` on
/// its own. Every archived event arrives exactly once each time, and with `--ordered` in
/// archive order per key within each hour shard. (The other Kafka tests hold one request in flight as a precaution against
/// the test broker; this one shows the defaults against it.)
#[test]
fn default_producer_settings_deliver_every_event_once() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("archive");
    generate(&src, "2", "mixed");
    let want = archived(&src);
    let broker = Tansu::start();
    let brokers = broker.brokers();
    let run_defaults = |topic: &str, dest: &Path, extra: &[&str]| {
        let mut args = vec!["--brokers", brokers.as_str(), "--topic", topic];
        args.extend_from_slice(extra);
        ok(&replay_as_users_do(&src, dest, &args))
    };
    for round in 0..3 {
        let topic = format!("defaults-{round}");
        broker.create_topic(&topic, 3);
        let summary = run_defaults(
            &topic,
            &tmp.path().join(format!("out-{round}")),
            &["--compression", "lz4"],
        );
        assert_eq!(summary["acknowledged"], want.len() as u64);
        let records = broker.read_all(&topic, 3, want.len(), Duration::from_secs(60));
        assert_every_event_once(&records, &want, &format!("round {round}"));
    }

    broker.create_topic("defaults-ordered", 3);
    run_defaults(
        "defaults-ordered",
        &tmp.path().join("out-ordered"),
        &["--ordered", "--key", "$.event_type"],
    );
    let mut records = broker.read_all("defaults-ordered", 3, want.len(), Duration::from_secs(60));
    assert_eq!(records.len(), want.len());
    let groups = assert_archive_order_per_key(&mut records);
    assert_eq!(groups, 14, "seven event types in each of two hours");
}

/// An exactly-once shard longer than the transaction timeout (throttled here to ~8 s against a
/// 4 s timeout) commits in parts: a transaction is committed with a marker of how far it reached
/// once it has been open for half the timeout, and the next begins. Every event arrives exactly
/// once, the shard's markers advance through its objects, and only the last says it is done.
/// (The job used to be refused at start when its byte rate made this predictable, and to fail
/// by the brokers' abort otherwise. Tansu 0.6 does not abort transactions at their timeout, so
/// here the parts are shown, not the abort they avoid.)
#[test]
fn exactly_once_shards_longer_than_the_transaction_timeout_commit_in_parts() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("archive"), tmp.path().join("out"));
    generate(&src, "1", "none");
    let want = archived(&src);
    let rate = (want.len() as f64 / 8.0).round().max(1.0);
    let broker = Tansu::start();
    broker.create_topic("slow", 2);
    broker.create_topic("slow.rewind-control", 1);
    let summary = ok(&replay(
        &src,
        &dest,
        &[
            "--brokers",
            &broker.brokers(),
            "--topic",
            "slow",
            "--delivery",
            "exactly-once",
            "--max-events-per-sec",
            &rate.to_string(),
            "--kafka-option",
            "transaction.timeout.ms=4000",
        ],
    ));
    assert_eq!(summary["acknowledged"], want.len() as u64);
    let records = broker.read_all("slow", 2, want.len(), Duration::from_secs(60));
    assert_every_event_once(&records, &want, "in parts");

    let job = summary["job_id"].as_str().unwrap();
    let markers = broker.read_all("slow.rewind-control", 1, 4, Duration::from_secs(30));
    let parts: Vec<Value> = markers
        .iter()
        .filter(|m| m.key.as_deref() == Some(format!("{job}/2024060100").as_bytes()))
        .map(|m| serde_json::from_slice(&m.value).unwrap())
        .collect();
    assert!(parts.len() >= 3, "at least three transactions: {parts:?}");
    let (last, earlier) = parts.split_last().unwrap();
    assert_eq!(last["done"], true, "{parts:?}");
    let positions: Vec<(u64, u64)> = earlier
        .iter()
        .map(|p| {
            assert_eq!(p["done"], false, "{p}");
            (
                p["object_index"].as_u64().unwrap(),
                p["offset"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "each part ends further into the shard: {positions:?}"
    );
}

/// `rewind run` of two hours of archived Kafka records (`--envelope kcat --preserve-partition`)
/// under `layout` into `topic`.
fn replay_envelopes(
    src: &Path,
    dest: &Path,
    layout: &str,
    brokers: &str,
    topic: &str,
) -> std::process::Output {
    run(
        BIN,
        &[
            "run",
            "--source",
            src.to_str().unwrap(),
            "--org",
            "TN-k",
            "--start",
            "2024-06-01T00",
            "--end",
            "2024-06-01T01",
            "--layout",
            layout,
            "--dest",
            dest.to_str().unwrap(),
            "--sink",
            "kafka",
            "--brokers",
            brokers,
            "--topic",
            topic,
            "--envelope",
            "kcat",
            "--preserve-partition",
            "--kafka-option",
            rewind_testkit::kafka::PRODUCER_OPTION,
            "--json",
        ],
    )
}

/// Archived Kafka records (kcat -J envelopes, line-delimited, in Kafka Connect's time-based
/// layout) replayed faithfully: every record with its archived key, headers (a null value
/// kept), timestamp and — with --preserve-partition — partition, its value byte for byte and
/// no lineage header. Into a topic with fewer partitions, the records of the missing ones are
/// failed records saying why; a broken envelope is a failed record too.
#[test]
fn archived_kafka_records_are_replayed_as_they_were() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("archive");
    /// Key, headers, timestamp, partition.
    type Archived = (Option<String>, Vec<(String, Option<String>)>, i64, i32);
    let mut want: BTreeMap<String, Archived> = BTreeMap::new();
    let mut n = 0;
    for hour in 0..2 {
        let dir = src.join(format!(
            "topics/orders/year=2024/month=06/day=01/hour={hour:02}"
        ));
        fs::create_dir_all(&dir).unwrap();
        for p in 0..4 {
            let mut lines = String::new();
            for i in 0..25 {
                n += 1;
                let value = format!("{{\"order\": {n}, \"note\": \"é \\\"q\\\"\", \"amt\": 1.50}}");
                let key = (i % 5 != 0).then(|| format!("cust-{}", n % 7));
                let headers = vec![
                    ("trace".to_string(), Some(format!("t-{n}"))),
                    ("empty".to_string(), None),
                ];
                let ts = 1717200000000 + hour * 3_600_000 + n as i64;
                let h: Vec<Value> = headers
                    .iter()
                    .flat_map(|(k, v)| {
                        [
                            Value::from(k.clone()),
                            v.clone().map_or(Value::Null, Value::from),
                        ]
                    })
                    .collect();
                let env = serde_json::json!({"topic": "orders", "partition": p, "offset": i,
                    "tstype": "create", "ts": ts, "broker": 1, "headers": h,
                    "key": key, "payload": value});
                lines.push_str(&env.to_string());
                lines.push('\n');
                want.insert(value, (key, headers, ts, p));
            }
            if hour == 1 && p == 3 {
                lines.push_str("{\"topic\": \"orders\", \"partition\": 3, \"ts\": 1}\n");
            }
            fs::write(
                dir.join(format!("orders+{p}+{:010}.json", hour * 25)),
                lines,
            )
            .unwrap();
        }
    }
    let broker = Tansu::start();
    broker.create_topic("orders.replayed", 4);
    broker.create_topic("orders.small", 2);
    let run_into = |topic: &str| {
        let dest = tmp.path().join(format!("out-{topic}"));
        let layout = "topics/orders/year={YYYY}/month={MM}/day={DD}/hour={HH}/";
        replay_envelopes(&src, &dest, layout, &broker.brokers(), topic)
    };
    let out = run_into("orders.replayed");
    let summary = ok(&out);
    assert_eq!(summary["failed_by_reason"]["envelope"], 1, "{summary}");
    assert_eq!(summary["acknowledged"], want.len() as u64);
    let got = broker.read_all("orders.replayed", 4, want.len(), Duration::from_secs(60));
    assert_eq!(got.len(), want.len());
    for r in &got {
        let value = String::from_utf8(r.value.clone()).unwrap();
        let (key, headers, ts, p) = want.get(&value).unwrap_or_else(|| panic!("{value}"));
        assert_eq!(
            r.key
                .as_deref()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            *key
        );
        assert_eq!(r.timestamp, Some(*ts), "{value}");
        assert_eq!(r.partition, *p, "{value}");
        let got_headers: Vec<(String, Option<String>)> = r
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), Some(String::from_utf8_lossy(v).into_owned())))
            .collect();
        // (The harness's reader gives a null header value as empty.)
        let want_headers: Vec<(String, Option<String>)> = headers
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone().unwrap_or_default())))
            .collect();
        assert_eq!(got_headers, want_headers, "no lineage header: {value}");
    }
    let failed = records(&tmp.path().join("out-orders.replayed/_failed"));
    assert!(
        failed[0]["reason"]
            .as_str()
            .unwrap()
            .contains("no value at $.payload")
    );

    // Two partitions: the records of partitions 2 and 3 cannot keep theirs.
    let out = run_into("orders.small");
    let summary = ok(&out);
    assert_eq!(summary["failed_by_reason"]["partition"], 100, "{summary}");
    let failed = records(&tmp.path().join("out-orders.small/_failed"));
    assert!(failed.iter().any(|f| {
        f["reason"]
            .as_str()
            .unwrap()
            .contains("archived in partition 3; topic orders.small has 2 partitions")
    }));
}

/// Kafka Connect's default layout (`topics/<t>/partition=<p>/<t>+<p>+<offset>.json`, no time in
/// the path) as `--layout topics/<t>`: everything below it is read once and the range picks
/// records by their archived timestamps; the others are filtered (`time`), none lost or twice.
#[test]
fn connect_default_layout_picks_records_by_their_timestamps() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("archive");
    let (start, end) = (1_717_200_000_000i64, 1_717_200_000_000i64 + 2 * 3_600_000);
    let mut inside = BTreeMap::new();
    let mut outside = 0;
    for p in 0..3 {
        let dir = src.join(format!("topics/orders/partition={p}"));
        fs::create_dir_all(&dir).unwrap();
        let mut lines = String::new();
        for i in 0..40i64 {
            // Three hours of records: the first two are the range.
            let ts = start + i * 270_000 + p;
            let value = format!("{{\"p\": {p}, \"i\": {i}}}");
            let env = serde_json::json!({"partition": p, "offset": i, "ts": ts, "key": format!("k{i}"),
                "headers": [], "payload": value});
            lines.push_str(&env.to_string());
            lines.push('\n');
            if ts < end {
                inside.insert(value, (ts, p as i32));
            } else {
                outside += 1;
            }
        }
        fs::write(dir.join(format!("orders+{p}+0000000000.json")), lines).unwrap();
    }
    let broker = Tansu::start();
    broker.create_topic("orders.back", 3);
    let dest = tmp.path().join("out");
    let out = replay_envelopes(
        &src,
        &dest,
        "topics/orders",
        &broker.brokers(),
        "orders.back",
    );
    let summary = ok(&out);
    assert_eq!(summary["filtered_by_reason"]["time"], outside, "{summary}");
    assert_eq!(summary["acknowledged"], inside.len() as u64, "{summary}");
    let got = broker.read_all("orders.back", 3, inside.len(), Duration::from_secs(60));
    assert_eq!(got.len(), inside.len());
    for r in &got {
        let v = String::from_utf8(r.value.clone()).unwrap();
        assert_eq!(
            inside.get(&v),
            Some(&(r.timestamp.unwrap(), r.partition)),
            "{v}"
        );
    }
    // Without an envelope timestamp, an undated layout is refused up front.
    let out = run(
        BIN,
        &[
            "run",
            "--source",
            src.to_str().unwrap(),
            "--org",
            "TN-k",
            "--start",
            "2024-06-01",
            "--end",
            "2024-06-01",
            "--layout",
            "topics/orders",
            "--dest",
            dest.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--layout"));
}
