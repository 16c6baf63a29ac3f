//! Pub/Sub replay end to end through `rewind run`: against Google's Pub/Sub emulator when the
//! machine has it, else the testkit's stand-in of the same REST API (see
//! `rewind_testkit::pubsub`); messages pulled back with a client independent of Rewind's. Every
//! message's data is an archived event's exact bytes, its attributes point back at them, ordering
//! keys follow `--key` with `--ordered`, a busy topic slows the replay without losing or
//! repeating a message, and bad requests are refused before anything runs.

use std::collections::BTreeMap;
use std::path::Path;

use crate::common::{self, ok, seed};
use crate::kafka::archived;
use rewind_testkit::pubsub::{PubSub, Pulled};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_rewind");
const PROJECT: &str = "rewind-tests";

fn generate(dir: &Path) {
    let seed = seed("23");
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

/// `rewind run --sink pubsub` of the first two hours, against `ps`.
fn replay(src: &Path, dest: &Path, ps: &PubSub, extra: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args([
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
            "pubsub",
        ])
        .args(extra)
        .env("REWIND_LOG", "warn")
        .envs(ps.env())
        .output()
        .expect("running rewind")
}

/// Each message's data against the archive, by the position its attributes name: the exact
/// bytes, each position once.
fn assert_every_event_once(
    got: &[Pulled],
    want: &BTreeMap<(String, u64), Vec<u8>>,
    job: &str,
    what: &str,
) {
    let mut seen = BTreeMap::new();
    for m in got {
        assert_eq!(m.attribute("rewind-job"), Some(job), "{what}");
        let at = (
            m.attribute("rewind-source-key").unwrap().to_string(),
            m.attribute("rewind-offset")
                .unwrap()
                .parse::<u64>()
                .unwrap(),
        );
        assert_eq!(
            want[&at].as_slice(),
            m.data.as_slice(),
            "{what}: the event at {at:?}"
        );
        let v: Value = serde_json::from_slice(&m.data).unwrap();
        assert_eq!(
            m.attribute("rewind-event-id"),
            v["event_id"].as_str(),
            "{what}"
        );
        *seen.entry(at).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), want.len(), "{what}: every event");
    assert!(seen.values().all(|n| *n == 1), "{what}: each once");
}

#[test]
fn replay_into_pubsub_is_byte_exact_with_lineage_and_ordering_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("archive"), tmp.path().join("out"));
    generate(&src);
    let want = archived(&src);
    let ps = PubSub::start();
    eprintln!("Pub/Sub server: {}", ps.kind());
    let topic = ps.create_topic(PROJECT, "replays");
    let summary = ok(&replay(&src, &dest, &ps, &["--topic", &topic, "--json"]));
    let events = want.len() as u64;
    assert_eq!(summary["recovered"], events, "{summary}");
    assert_eq!(summary["acknowledged"], events, "{summary}");
    assert_eq!(summary["sink"], "pubsub");
    assert_eq!(summary["delivery"], "at-least-once");
    let job = summary["job_id"].as_str().unwrap();
    let got = ps.pull_all(PROJECT, "replays");
    assert_every_event_once(&got, &want, job, "unordered");
    assert!(
        got.iter().all(|m| m.ordering_key.is_empty()),
        "no ordering keys unasked"
    );

    // --ordered with one key for every event of the org: each hour's events arrive in archive
    // order (hours run in parallel, so only within an hour).
    let topic = ps.create_topic(PROJECT, "ordered");
    let out = replay(
        &src,
        &dest,
        &ps,
        &["--topic", &topic, "--ordered", "--key", "$.org_id"],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("delivery: at-least-once"), "{text}");
    let job = text.split_whitespace().nth(1).unwrap().to_string();
    let got = ps.pull_all(PROJECT, "ordered");
    assert_every_event_once(&got, &want, &job, "ordered");
    let mut last: BTreeMap<String, (String, u64)> = BTreeMap::new();
    for m in &got {
        assert_eq!(m.ordering_key, "TN-k");
        let source = m.attribute("rewind-source-key").unwrap().to_string();
        let hour = source.rsplit_once('/').unwrap().0.to_string();
        let at = (
            source,
            m.attribute("rewind-offset").unwrap().parse().unwrap(),
        );
        if let Some(prev) = last.insert(hour, at.clone()) {
            assert!(
                prev < at,
                "out of order within an hour: {prev:?} then {at:?}"
            );
        }
    }
}

/// A busy topic: the first publish calls are refused (503 UNAVAILABLE, nothing stored). The
/// replay backs off, publishes them again (counted) and every event arrives exactly once.
#[test]
fn a_busy_topic_slows_the_replay_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("archive"), tmp.path().join("out"));
    generate(&src);
    let want = archived(&src);
    let ps = PubSub::start_busy(4);
    let topic = ps.create_topic(PROJECT, "busy");
    let summary = ok(&replay(&src, &dest, &ps, &["--topic", &topic, "--json"]));
    assert_eq!(ps.refused(), 4);
    let retries = summary["sink_retries"].as_u64().unwrap_or(0);
    assert!(
        retries >= 4,
        "{retries} messages published again\n{summary}"
    );
    let job = summary["job_id"].as_str().unwrap();
    assert_every_event_once(&ps.pull_all(PROJECT, "busy"), &want, job, "busy topic");
}

#[test]
fn bad_pubsub_requests_are_refused_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("archive"), tmp.path().join("out"));
    generate(&src);
    let ps = PubSub::start_busy(0);
    let topic = ps.create_topic(PROJECT, "replays");
    let refused = |extra: &[&str], code: i32, says: &str| {
        let out = replay(&src, &dest, &ps, extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{extra:?}: {err}");
        assert!(err.contains(says), "{extra:?}: {err}");
    };
    refused(&[], 2, "--topic: is required with --sink pubsub");
    refused(&["--topic", "replays"], 2, "projects/PROJECT/topics/TOPIC");
    refused(
        &["--topic", "projects/rewind-tests/topics/goog-x"],
        2,
        "is not a Pub/Sub topic name",
    );
    refused(
        &["--topic", &topic, "--delivery", "exactly-once"],
        2,
        "a Pub/Sub replay is at-least-once",
    );
    refused(
        &["--topic", &topic, "--key", "cid"],
        2,
        "--key: with --sink pubsub it names the ordering key: give --ordered too",
    );
    refused(
        &["--topic", &topic, "--brokers", "127.0.0.1:9092"],
        2,
        "--brokers: applies to --sink kafka only",
    );
    refused(
        &["--topic", "projects/rewind-tests/topics/missing"],
        1,
        "Topic not found",
    );
    assert!(!dest.exists() || rewind_testkit::files_below(&dest).is_empty());
    assert!(ps.pull_all(PROJECT, "replays").is_empty());
}
