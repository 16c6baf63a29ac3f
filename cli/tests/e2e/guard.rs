//! Guarded replays end to end: three days into a topic (tansu), with dependent sinks in a
//! directory and in Azure (Azurite) and a Druid datasource (the stand-in); the second day's
//! replay fails (an hour of the archive cannot be read), so days 1 and 3 are replayed, their
//! sinks cleared and their backups dropped, and day 2 is restored byte for byte. The run is
//! killed in the middle of day 1's backup and resumed; the webhook receiver gets one message
//! per day and one for the job, with the metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::{self, seed};
use rewind_testkit::azure::Azurite;
use rewind_testkit::http::{Druid, Webhook};
use rewind_testkit::kafka::{PRODUCER_OPTION, Tansu};
use rewind_testkit::{archived_events, files_below};
use serde_json::Value;

const REWIND: &str = env!("CARGO_BIN_EXE_rewind");
const ORG: &str = "TN-guard";
const DAYS: [&str; 3] = ["2024-04-01", "2024-04-02", "2024-04-03"];

fn rewind(env: &[(&'static str, String)], args: &[&str]) -> Output {
    Command::new(REWIND)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap()
}

/// What a sink holds: relative path -> bytes.
pub(crate) fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    files_below(dir)
        .into_iter()
        .map(|f| {
            (
                f.strip_prefix(dir).unwrap().to_string_lossy().into_owned(),
                std::fs::read(&f).unwrap(),
            )
        })
        .collect()
}

#[test]
fn three_days_guarded_one_fails_and_is_restored() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("archive");
    // 3 days, a few small objects an hour.
    common::generate(&src, ORG, "2024-04-01T00", "72", "0.01", &seed("1604"), &[]);
    let events_by_day: BTreeMap<String, BTreeSet<String>> = {
        let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for e in archived_events(&src) {
            // main_stream/YYYY/MM/DD/HH
            let p: Vec<&str> = e.hour_dir.split('/').collect();
            let day = format!("{}-{}-{}", p[1], p[2], p[3]);
            m.entry(day)
                .or_default()
                .insert(e.value["event_id"].as_str().unwrap().to_string());
        }
        m
    };
    // Day 2 fails: one of its hours cannot be listed (a file where its directory should be).
    let hour = src.join("main_stream/2024/04/02/05");
    std::fs::remove_dir_all(&hour).unwrap();
    std::fs::write(&hour, b"not a directory").unwrap();

    // Dependent sinks: files of each day in a directory and in Azure; a Druid datasource.
    let local = tmp.path().join("sinks/unique");
    let az = Azurite::start();
    az.create_container("sinks");
    let raw = tmp.path().join("raw-seed");
    for (i, day) in DAYS.iter().enumerate() {
        for n in 0..3 {
            let body = format!(
                "{{\"day\":\"{day}\",\"n\":{n},\"pad\":\"{}\"}}\n",
                "x".repeat(i * 10 + n)
            );
            let f = local.join(format!("{day}/part-{n}.json"));
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(&f, &body).unwrap();
            let f = raw.join(format!("{day}/part-{n}.json"));
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(&f, &body).unwrap();
        }
    }
    az.upload_dir(&raw, "sinks", "raw/");
    let local_before = snapshot(&local);
    let az_before = az.list("sinks", "raw/");
    let druid = Druid::start("telemetry-events", &DAYS);
    let hook = Webhook::start(1); // its first POST fails: retried
    let broker = Tansu::start();
    broker.create_topic("telemetry.raw", 2);

    let guard = tmp.path().join("guard.json");
    std::fs::write(
        &guard,
        serde_json::json!({
            "ingest": {"outputKafkaTopic": "telemetry.raw", "dependentSinkSources": [
                {"type": "local", "prefix": local.to_str().unwrap()},
                {"type": "azure", "prefix": "raw"},
                {"type": "druid", "prefix": "telemetry-events"}
            ]},
            "failed": {"outputKafkaTopic": "telemetry.failed", "dependentSinkSources": []}
        })
        .to_string(),
    )
    .unwrap();
    let dest = tmp.path().join("manifests");
    let brokers = broker.brokers();
    let druid_url = druid.url();
    let hook_url = hook.url();
    let args: Vec<&str> = vec![
        "replay",
        "--guard",
        guard.to_str().unwrap(),
        "--stream",
        "ingest",
        "--source",
        src.to_str().unwrap(),
        "--org",
        ORG,
        "--start",
        DAYS[0],
        "--end",
        DAYS[2],
        "--dest",
        dest.to_str().unwrap(),
        "--brokers",
        &brokers,
        "--kafka-option",
        PRODUCER_OPTION,
        "--max-attempts",
        "1",
        "--druid-url",
        &druid_url,
        "--notify",
        &hook_url,
        "--guard-base",
        "azure=az://sinks",
        "--workers",
        "4",
    ];
    let env = az.env();

    // Killed after day 1's plan and two of its moves; resumed.
    let mut killed_env = env.clone();
    killed_env.push(("REWIND_FAILPOINT", "guard-step-then-die".into()));
    killed_env.push(("REWIND_FAILPOINT_AFTER", "3".into()));
    let killed = rewind(&killed_env, &args);
    assert!(!killed.status.success(), "the fail point killed it");
    let state_dir = dest.join("_rewind/guards");
    let states = files_below(&state_dir);
    assert_eq!(states.len(), 1, "{states:?}");
    let job = states[0]
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    // Nothing lost meanwhile: every object of day 1 is in place or in its backup.
    let day1_local: Vec<String> = snapshot(&local)
        .keys()
        .filter(|k| k.contains("2024-04-01/"))
        .cloned()
        .collect();
    assert_eq!(
        day1_local.len(),
        3,
        "moved or backed up, never gone: {day1_local:?}"
    );

    let mut resume = args.clone();
    resume.extend(["--resume", &job, "--json"]);
    let out = rewind(&env, &resume);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let states: Vec<&str> = summary["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        ["succeeded", "failed_restored", "succeeded"],
        "{summary}"
    );

    // Days 1 and 3: every event in the topic exactly once.
    let want: usize = [DAYS[0], DAYS[2]]
        .iter()
        .map(|d| events_by_day[*d].len())
        .sum();
    let records = broker.read_all("telemetry.raw", 2, want, Duration::from_secs(60));
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for r in &records {
        let v: Value = serde_json::from_slice(&r.value).unwrap();
        *seen
            .entry(v["event_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    for day in [DAYS[0], DAYS[2]] {
        for id in &events_by_day[day] {
            assert_eq!(seen.get(id), Some(&1), "{day}: event {id}");
        }
    }
    assert_eq!(
        summary["days"][0]["events_replayed"],
        events_by_day[DAYS[0]].len() as u64
    );

    // Sinks: days 1 and 3 cleared with their backups gone; day 2 as it was, byte for byte.
    let now = snapshot(&local);
    let day2 = |m: &BTreeMap<String, Vec<u8>>| -> BTreeMap<String, Vec<u8>> {
        m.iter()
            .filter(|(k, _)| k.starts_with("2024-04-02/"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    assert_eq!(day2(&now), day2(&local_before));
    assert!(
        now.keys().all(|k| k.starts_with("2024-04-02/")),
        "days 1 and 3 cleared, no backup left: {:?}",
        now.keys().collect::<Vec<_>>()
    );
    let az_now = az.list("sinks", "raw/");
    let az_day2: Vec<_> = az_before
        .iter()
        .filter(|(k, _)| k.starts_with("2024-04-02/"))
        .cloned()
        .collect();
    assert_eq!(
        az_now, az_day2,
        "azure: day 2 back, days 1 and 3 and backups gone"
    );

    // Druid: days 1 and 3 killed, day 2 used again.
    let segs = druid.segments();
    assert_eq!(segs.len(), 1, "{segs:?}");
    assert!(segs[0].id.contains("2024-04-02") && segs[0].used);
    assert_eq!(druid.kills().len(), 2);

    // Messages: three days and the job (the first POST failed and was retried).
    let msgs = hook.messages();
    let kinds: Vec<(&str, &str)> = msgs
        .iter()
        .map(|m| (m["kind"].as_str().unwrap(), m["state"].as_str().unwrap()))
        .collect();
    assert!(
        kinds.ends_with(&[
            ("day", "succeeded"),
            ("day", "failed_restored"),
            ("day", "succeeded"),
            ("job", "failed")
        ]),
        "{kinds:?}"
    );
    let n = msgs.len();
    let d1 = &msgs[n - 4];
    assert_eq!(d1["day"], DAYS[0]);
    assert_eq!(d1["events_replayed"], events_by_day[DAYS[0]].len() as u64);
    let deleted = &d1["files_deleted"];
    assert_eq!(deleted[local.to_str().unwrap()], 3, "{d1}");
    assert_eq!(deleted["az://sinks/raw"], 3, "{d1}");
    assert!(
        msgs[n - 3]["error"].as_str().unwrap().contains("failed"),
        "{}",
        msgs[n - 3]
    );
    assert!(d1["duration_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn bad_guards_stop_before_anything_is_touched() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("archive");
    std::fs::create_dir_all(&src).unwrap();
    let sink = tmp.path().join("sink/2024-04-01");
    std::fs::create_dir_all(&sink).unwrap();
    std::fs::write(sink.join("a.json"), b"{}").unwrap();
    let guard = tmp.path().join("guard.json");
    let write = |v: Value| std::fs::write(&guard, v.to_string()).unwrap();
    let m = tmp.path().join("m").to_str().unwrap().to_string();
    let run = |stream: &str, start: &str, extra: &[&str]| -> Output {
        let mut a = vec![
            "replay",
            "--guard",
            guard.to_str().unwrap(),
            "--stream",
            stream,
            "--source",
            src.to_str().unwrap(),
            "--org",
            ORG,
            "--start",
            start,
            "--end",
            "2024-04-01",
            "--dest",
            &m,
            "--brokers",
            "127.0.0.1:9",
        ];
        a.extend_from_slice(extra);
        rewind(&[], &a)
    };
    let base = |extra: &[&str]| run("ingest", "2024-04-01", extra);
    let sink_root = tmp.path().join("sink");
    write(
        serde_json::json!({"ingest": {"outputKafkaTopic": "t", "dependentSinkSources": [
        {"type": "local", "prefix": sink_root.to_str().unwrap()}]}}),
    );
    for (out, named) in [
        (run("other", "2024-04-01", &[]), "--stream other"),
        (base(&["--notify", "http://127.0.0.1:9/hook"]), "--notify"),
        (run("ingest", "2024-04-01T05", &[]), "whole days"),
    ] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{named}: {stderr}");
        assert!(stderr.contains(named), "{named}: {stderr}");
    }
    write(
        serde_json::json!({"ingest": {"outputKafkaTopic": "t", "dependentSinkSources": [
        {"type": "druid", "prefix": "ds"}]}}),
    );
    let out = base(&[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--druid-url"));
    let out = base(&["--druid-url", "http://127.0.0.1:9"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Druid at http://127.0.0.1:9"));
    assert_eq!(snapshot(&sink_root).len(), 1, "nothing touched");
}

/// The same with the archive in Azure (Azurite), the guard in YAML and the state in Azure: both
/// days replayed exactly once, the Azure sink cleared and its backups dropped.
#[test]
fn guarded_replay_from_an_archive_in_azure() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("archive");
    common::generate(&src, ORG, "2024-04-01T00", "48", "0.01", &seed("1605"), &[]);
    let want: BTreeSet<String> = archived_events(&src)
        .iter()
        .map(|e| e.value["event_id"].as_str().unwrap().to_string())
        .collect();
    let az = Azurite::start();
    az.create_container("archive");
    az.create_container("sinks");
    az.upload_dir(&src, "archive", "");
    let seed_dir = tmp.path().join("seed");
    for day in ["2024-04-01", "2024-04-02"] {
        let f = seed_dir.join(format!("{day}/x.json"));
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, day).unwrap();
    }
    az.upload_dir(&seed_dir, "sinks", "denorm/");
    let broker = Tansu::start();
    broker.create_topic("t.raw", 2);
    let guard = tmp.path().join("guard.yaml");
    std::fs::write(
        &guard,
        "ingest:\n  outputKafkaTopic: t.raw\n  dependentSinkSources:\n    - type: azure\n      prefix: az://sinks/denorm\n",
    )
    .unwrap();
    let dest = "az://sinks/manifests".to_string();
    let brokers = broker.brokers();
    let out = rewind(
        &az.env(),
        &[
            "replay",
            "--guard",
            guard.to_str().unwrap(),
            "--stream",
            "ingest",
            "--source",
            "az://archive",
            "--org",
            ORG,
            "--start",
            "2024-04-01",
            "--end",
            "2024-04-02",
            "--dest",
            &dest,
            "--brokers",
            &brokers,
            "--kafka-option",
            PRODUCER_OPTION,
            "--json",
        ],
    );
    let summary = common::ok(&out);
    assert_eq!(summary["state"], "succeeded", "{summary}");
    assert_eq!(summary["events_replayed"], want.len() as u64);
    let records = broker.read_all("t.raw", 2, want.len(), Duration::from_secs(60));
    let got: Vec<String> = records
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.value).unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(got.len(), want.len(), "exactly once");
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), want);
    let left = az.list("sinks", "denorm/");
    assert!(left.is_empty(), "cleared, backups dropped: {left:?}");
}

/// SIGTERM during a day's replay: that day's sinks are restored, no later day starts, exit 130;
/// `--resume` then runs the interrupted day and the rest.
#[test]
fn an_interrupted_day_is_restored_and_resumed() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("archive");
    common::generate(&src, ORG, "2024-04-01T00", "48", "0.01", &seed("1606"), &[]);
    let sink = tmp.path().join("sink");
    for day in ["2024-04-01", "2024-04-02"] {
        let f = sink.join(format!("{day}/x.json"));
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, day).unwrap();
    }
    let before = snapshot(&sink);
    let broker = Tansu::start();
    broker.create_topic("t", 1);
    let guard = tmp.path().join("guard.json");
    std::fs::write(
        &guard,
        serde_json::json!({"s": {"outputKafkaTopic": "t", "dependentSinkSources": [
            {"type": "local", "prefix": sink.to_str().unwrap()}]}})
        .to_string(),
    )
    .unwrap();
    let dest = tmp.path().join("m");
    let brokers = broker.brokers();
    let args: Vec<&str> = vec![
        "replay",
        "--guard",
        guard.to_str().unwrap(),
        "--stream",
        "s",
        "--source",
        src.to_str().unwrap(),
        "--org",
        ORG,
        "--start",
        "2024-04-01",
        "--end",
        "2024-04-02",
        "--dest",
        dest.to_str().unwrap(),
        "--brokers",
        &brokers,
        "--kafka-option",
        PRODUCER_OPTION,
    ];
    // Every shard pauses before its commit: day 1's replay is still running when stopped.
    let child = Command::new(REWIND)
        .args(&args)
        .env("REWIND_FAILPOINT", "pause-before-shard-commit")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let state = dest.join("_rewind/guards");
    let t0 = std::time::Instant::now();
    while files_below(&state).is_empty() || snapshot(&sink).contains_key("2024-04-01/x.json") {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "day 1 never cleared"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("--resume"), "{stderr}");
    assert_eq!(snapshot(&sink), before, "day 1 restored, day 2 untouched");
    let job = files_below(&state)[0]
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let mut resume = args.clone();
    resume.extend(["--resume", &job, "--json"]);
    let summary = common::ok(&rewind(&[], &resume));
    assert_eq!(summary["state"], "succeeded", "{summary}");
    assert!(
        snapshot(&sink).is_empty(),
        "both days cleared, backups dropped"
    );
}
