//! Kinesis replay end to end through `rewind run` against moto's Kinesis (started by the test),
//! read back with boto3: every record's data is an archived event's exact bytes (or wraps them
//! with their lineage), keys follow `--key`, a busy stream slows the replay without losing or
//! repeating a record, and bad requests are refused before anything runs. The kill -9 of a
//! worker mid-replay is in the distributed tests.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use crate::common::{self, ok, records, seed};
use crate::kafka::archived;
use rewind_testkit::kinesis::{Busy, ENV, Kinesis, Record, ThrottleProxy};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_rewind");

fn generate(dir: &Path) {
    let seed = seed("21");
    common::generate(
        dir,
        "TN-k",
        "2024-06-01T00",
        "2",
        "0.2",
        &seed,
        &["--compression", "mixed"],
    );
}

/// `rewind run --sink kinesis` of the first two hours, with the AWS environment moto accepts.
fn replay(src: &Path, dest: &Path, endpoint: &str, extra: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args([
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
        "kinesis",
        "--kinesis-endpoint-url",
        endpoint,
    ])
    .args(extra)
    .env("REWIND_LOG", "warn");
    for (k, v) in ENV {
        cmd.env(k, v);
    }
    cmd.output().expect("running rewind")
}

/// The data of each record, sorted, against the archived events' bytes, sorted: each once.
fn assert_every_event_once(got: &[Record], want: &BTreeMap<(String, u64), Vec<u8>>, what: &str) {
    let mut got: Vec<&[u8]> = got.iter().map(|r| r.data.as_slice()).collect();
    let mut expected: Vec<&[u8]> = want.values().map(Vec::as_slice).collect();
    got.sort();
    expected.sort();
    assert_eq!(got.len(), expected.len(), "{what}: every event once");
    assert!(
        got == expected,
        "{what}: the records are the archived bytes"
    );
}

/// A wrapped record's lineage and the event's exact text inside it.
pub(crate) fn unwrap_record(data: &[u8]) -> (Value, String) {
    let text = std::str::from_utf8(data).expect("UTF-8 data");
    let at = text.find(",\"event\":").expect("a wrapped record");
    let lineage: Value = serde_json::from_str(&text[..at].replacen("{\"rewind\":", "", 1))
        .expect("the lineage object");
    let event = text[at + ",\"event\":".len()..text.len() - 1].to_string();
    (lineage, event)
}

#[test]
fn replay_into_kinesis_is_byte_exact_keyed_and_at_least_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("archive"), tmp.path().join("out"));
    generate(&src);
    let want = archived(&src);
    let kinesis = Kinesis::start();
    kinesis.create_stream("replays", 4);

    let out = replay(
        &src,
        &dest,
        &kinesis.endpoint(),
        &["--kinesis-stream", "replays", "--json"],
    );
    let summary = ok(&out);
    let events = want.len() as u64;
    assert_eq!(summary["recovered"], events, "{summary}");
    assert_eq!(summary["acknowledged"], events, "{summary}");
    assert_eq!(summary["sink"], "kinesis");
    assert_eq!(summary["delivery"], "at-least-once");
    let got = kinesis.read_all("replays");
    assert_every_event_once(&got, &want, "event_id keys");
    // Keyed by event id (the default), spread over the stream's shards.
    for r in &got {
        let v: Value = serde_json::from_slice(&r.data).unwrap();
        assert_eq!(v["event_id"].as_str(), Some(r.key.as_str()));
    }
    let shards: std::collections::BTreeSet<&str> = got.iter().map(|r| r.shard.as_str()).collect();
    assert_eq!(shards.len(), 4, "records on every shard");
    // The destination's change log records the replay, and that it cannot be undone.
    let job = summary["job_id"].as_str().unwrap();
    let change = rewind_testkit::files_below(&dest.join("_rewind/changes"));
    let change: Value = serde_json::from_slice(&fs::read(&change[0]).unwrap()).unwrap();
    assert_eq!(change["job"], job);
    assert_eq!(change["kind"], "replay");
    assert_eq!(change["stream"]["service"], "kinesis");
    assert_eq!(change["stream"]["stream"], "replays");
    assert_eq!(change["stream"]["records"], events);
    let out = rewind_testkit::run(
        BIN,
        &[
            "rollback",
            "--dest",
            dest.to_str().unwrap(),
            change["id"].as_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("cannot be taken back from Kinesis"), "{err}");

    // Lineage wrapped around each event, keys from the record's place in the archive, and the
    // human summary says what the delivery promises.
    kinesis.create_stream("wrapped", 2);
    let out = replay(
        &src,
        &dest,
        &kinesis.endpoint(),
        &[
            "--kinesis-stream",
            "wrapped",
            "--wrap-lineage",
            "--key",
            "none",
            "--ordered",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!(
            "kinesis: {events} records sent, {events} acknowledged"
        )),
        "{text}"
    );
    assert!(text.contains("delivery: at-least-once"), "{text}");
    let got = kinesis.read_all("wrapped");
    assert_eq!(got.len(), want.len());
    let mut seen = BTreeMap::new();
    let job = text.split_whitespace().nth(1).unwrap().to_string();
    for r in &got {
        let (lineage, event) = unwrap_record(&r.data);
        assert_eq!(lineage["job"].as_str(), Some(job.as_str()), "{lineage}");
        let at = (
            lineage["source_key"].as_str().unwrap().to_string(),
            lineage["offset"].as_u64().unwrap(),
        );
        assert_eq!(
            want[&at].as_slice(),
            event.as_bytes(),
            "the event at {at:?} exactly"
        );
        let id: Value = serde_json::from_str(&event).unwrap();
        assert_eq!(lineage["event_id"], id["event_id"]);
        assert!(
            r.key.ends_with(&format!("/{}", at.1)),
            "{} for {at:?}",
            r.key
        );
        *seen.entry(at).or_insert(0) += 1;
    }
    assert!(seen.values().all(|n| *n == 1) && seen.len() == want.len());
}

/// A busy stream: for its first calls, every third record of each PutRecords call fails with
/// ProvisionedThroughputExceededException and every fourth call is refused whole. The replay
/// slows down, puts the failed records again (counted), and every event lands exactly once
/// (Kinesis does not write the records it fails).
#[test]
fn a_busy_stream_slows_the_replay_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("archive"), tmp.path().join("out"));
    generate(&src);
    let want = archived(&src);
    let kinesis = Kinesis::start();
    kinesis.create_stream("busy", 2);
    let proxy = ThrottleProxy::start(
        kinesis.port(),
        Busy {
            calls: 40,
            nth: 3,
            refuse_nth: 4,
        },
    );
    let out = replay(
        &src,
        &dest,
        &proxy.endpoint(),
        &["--kinesis-stream", "busy", "--json"],
    );
    let summary = ok(&out);
    let (failed, refused) = proxy.injected();
    assert!(
        failed > 0 && refused > 0,
        "faults injected: {failed} {refused}"
    );
    let retries = summary["sink_retries"].as_u64().unwrap_or(0);
    assert!(
        retries > failed,
        "{retries} records put again; {failed} failed one by one and {refused} calls refused"
    );
    assert_eq!(summary["acknowledged"], want.len() as u64, "{summary}");
    assert_eq!(summary["failed"], 0);
    assert_every_event_once(&kinesis.read_all("busy"), &want, "busy stream");
}

#[test]
fn bad_kinesis_requests_are_refused_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("archive"), tmp.path().join("out"));
    generate(&src);
    let kinesis = Kinesis::start();
    kinesis.create_stream("replays", 1);
    let refused = |extra: &[&str], code: i32, says: &str| {
        let out = replay(&src, &dest, &kinesis.endpoint(), extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{extra:?}: {err}");
        assert!(err.contains(says), "{extra:?}: {err}");
    };
    refused(&[], 2, "--kinesis-stream: is required with --sink kinesis");
    refused(
        &["--kinesis-stream", "not a name!"],
        2,
        "is not a Kinesis stream name",
    );
    refused(
        &["--kinesis-stream", "replays", "--delivery", "exactly-once"],
        2,
        "a Kinesis replay is at-least-once",
    );
    refused(
        &["--kinesis-stream", "replays", "--topic", "t"],
        2,
        "--topic: applies to --sink kafka or --sink pubsub only",
    );
    refused(
        &["--kinesis-stream", "replays", "--key", "$..x"],
        2,
        "--key",
    );
    // Preflight: a stream that is not there, an endpoint that does not answer.
    refused(
        &["--kinesis-stream", "no-such-stream"],
        1,
        "ResourceNotFoundException",
    );
    let closed = rewind_testkit::servers::free_port();
    let out = replay(
        &src,
        &dest,
        &format!("http://127.0.0.1:{closed}"),
        &["--kinesis-stream", "replays"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("Kinesis stream replays"), "{err}");
    // Nothing ran: no job output, nothing in the stream.
    assert!(!dest.exists() || rewind_testkit::files_below(&dest).is_empty());
    assert!(kinesis.read_all("replays").is_empty());
    // --wrap-lineage belongs to Kinesis.
    let out = rewind_testkit::run(
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
            "2024-06-01T00",
            "--dest",
            dest.to_str().unwrap(),
            "--wrap-lineage",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--wrap-lineage: applies to --sink kinesis only"),
        "{err}"
    );
}

/// Records over Kinesis's 1 MiB, and a partition key over its 256 characters, go to the failed
/// output with the reason and their exact bytes; the others are put and the job succeeds.
#[test]
fn records_over_a_mebibyte_go_to_the_failed_output() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("archive"), tmp.path().join("out"));
    let hour = src.join("main_stream/2024/06/01/00");
    fs::create_dir_all(&hour).unwrap();
    let body: String = (0..12)
        .map(|i| {
            let pad = if i % 4 == 1 { 1_100_000 } else { 100 };
            serde_json::json!({"event_id": format!("e{i}"), "org_id": "TN-k", "data": {"pad": "x".repeat(pad)}})
                .to_string()
        })
        .collect();
    // And a partition key longer than Kinesis takes (256 characters).
    let long = serde_json::json!({"event_id": "k".repeat(300), "org_id": "TN-k", "data": {}});
    fs::write(hour.join("events-000001.json"), body + &long.to_string()).unwrap();
    let want = archived(&src);
    let kinesis = Kinesis::start();
    kinesis.create_stream("small", 1);
    let out = replay(
        &src,
        &dest,
        &kinesis.endpoint(),
        &[
            "--kinesis-stream",
            "small",
            "--max-event-bytes",
            "4000000",
            "--json",
        ],
    );
    let summary = ok(&out);
    assert_eq!(
        summary["failed_by_reason"]["kinesis_too_large"], 3,
        "{summary}"
    );
    assert_eq!(summary["failed_by_reason"]["kinesis_key"], 1, "{summary}");
    assert_eq!(summary["acknowledged"], 9);
    let job = summary["job_id"].as_str().unwrap();
    let mut refused = Vec::new();
    for r in records(&dest.join(format!("_failed/execution_id={job}"))) {
        let reason = r["reason"].as_str().unwrap();
        match r["code"].as_str().unwrap() {
            "kinesis_too_large" => assert!(reason.contains("1048576"), "{r}"),
            "kinesis_key" => assert!(reason.contains("300 characters"), "{r}"),
            other => panic!("{other}: {r}"),
        }
        let key = (
            r["source_key"].as_str().unwrap().to_string(),
            r["byte_offset"].as_u64().unwrap(),
        );
        assert_eq!(want[&key].as_slice(), r["raw"].as_str().unwrap().as_bytes());
        let v: Value = serde_json::from_str(r["raw"].as_str().unwrap()).unwrap();
        refused.push(v["event_id"].as_str().unwrap().to_string());
    }
    refused.sort();
    assert_eq!(refused, ["e1", "e5", "e9", &"k".repeat(300)]);
    assert_eq!(kinesis.read_all("small").len(), 9);
}
