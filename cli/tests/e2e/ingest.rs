//! `rewind ingest` end to end: a landing zone of 200 objects with arbitrary names (concatenated
//! and line-delimited JSON, some gzipped), 5% damaged, 10% dropped twice under other names,
//! ingested into a trusted zone with `--dedup event_id`. The trusted zone must hold exactly the
//! archive's undamaged events once each (read back with pyarrow's Hive partitioning), every
//! landing object must be in `processed/date=<today>/` byte for byte, and runs killed at every
//! step (and by kill -9 at random moments) followed by a rerun must give the same result.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::{self, seed};
use rewind_testkit::files_below;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_rewind");
pub(crate) const ORG: &str = "TN-ingest";

/// Event slices of a concatenated JSON file, found independently (serde_json).
fn events_of(bytes: &[u8]) -> Vec<(usize, usize, String)> {
    let mut it = serde_json::Deserializer::from_slice(bytes).into_iter::<Value>();
    let mut out = Vec::new();
    let mut start = 0;
    while let Some(v) = it.next() {
        let v = v.unwrap();
        let end = it.byte_offset();
        let s = start
            + bytes[start..end]
                .iter()
                .take_while(|b| b.is_ascii_whitespace())
                .count();
        out.push((s, end, v["event_id"].as_str().unwrap().to_string()));
        start = end;
    }
    out
}

/// Builds the landing zone; returns the event ids the trusted zone must hold.
pub(crate) fn landing_zone(pending: &Path, scratch: &Path) -> BTreeSet<String> {
    common::generate(
        scratch,
        ORG,
        "2024-04-01T00",
        "67",
        "0.004",
        &seed("1701"),
        &["--compression", "none"],
    );
    let mut files = files_below(scratch);
    files.sort();
    files.truncate(200);
    let mut want = BTreeSet::new();
    fs::create_dir_all(pending.join("nested/deeper")).unwrap();
    for (n, f) in files.iter().enumerate() {
        let bytes = fs::read(f).unwrap();
        let evs = events_of(&bytes);
        let (name, body): (String, Vec<u8>) = match n % 20 {
            // Damaged: the last event cut in half.
            0 => {
                let (s, e, _) = evs.last().unwrap();
                for (_, _, id) in &evs[..evs.len() - 1] {
                    want.insert(id.clone());
                }
                (
                    format!("damaged-{n}.json"),
                    bytes[..s + (e - s) / 2].to_vec(),
                )
            }
            // Line-delimited.
            1..=4 => {
                let mut out = Vec::new();
                for (s, e, id) in &evs {
                    out.extend_from_slice(&bytes[*s..*e]);
                    out.push(b'\n');
                    want.insert(id.clone());
                }
                (format!("nested/lines-{n}.ndjson"), out)
            }
            // Gzipped, no telling name.
            5..=8 => {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(&bytes).unwrap();
                evs.iter().for_each(|(_, _, id)| {
                    want.insert(id.clone());
                });
                (format!("nested/deeper/blob-{n}"), gz.finish().unwrap())
            }
            _ => {
                evs.iter().for_each(|(_, _, id)| {
                    want.insert(id.clone());
                });
                (format!("events-{n}.json"), bytes)
            }
        };
        fs::write(pending.join(&name), &body).unwrap();
        // 10% dropped twice, under another name.
        if n % 10 == 3 {
            fs::write(pending.join(format!("again-{n}.json")), &body).unwrap();
        }
    }
    want
}

/// `rewind ingest --source SOURCE --dest TRUSTED --org … --json` and `extra`.
pub(crate) fn ingest_cmd(source: &str, trusted: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args([
        "ingest",
        "--source",
        source,
        "--dest",
        trusted.to_str().unwrap(),
    ])
    .args(["--org", ORG, "--json"])
    .args(extra);
    c
}

fn ingest(pending: &Path, trusted: &Path, env: &[(&str, &str)]) -> Output {
    ingest_cmd(
        pending.to_str().unwrap(),
        trusted,
        &["--dedup", "event_id", "--workers", "2"],
    )
    .envs(env.iter().copied())
    .output()
    .unwrap()
}

/// The trusted zone read back with pyarrow's Hive partitioning: event id -> copies, and rows
/// whose partition columns disagree with their own fields.
pub(crate) fn trusted_rows(trusted: &Path) -> (BTreeMap<String, usize>, Vec<Value>) {
    let script = r#"
import sys, json, datetime
import pyarrow.dataset as ds
t = ds.dataset(sys.argv[1], format="parquet", partitioning="hive").to_table()
ids, bad = {}, []
for r in t.to_pylist():
    ids[r["event_id"]] = ids.get(r["event_id"], 0) + 1
    d = datetime.datetime.fromisoformat(r["timestamp"].replace("Z", "+00:00")).astimezone(datetime.timezone.utc)
    if (r["domain_event_type"], r["year"], r["month"], r["day"]) != (f'{r["domain"]}-{r["event_type"]}', d.year, d.month, d.day):
        bad.append(r["event_id"])
print(json.dumps({"ids": ids, "bad": bad[:5]}))
"#;
    let out = Command::new("python3")
        .args(["-c", script, trusted.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids = v["ids"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap() as usize))
        .collect();
    (ids, v["bad"].as_array().unwrap().clone())
}

fn check(
    landing: &Path,
    before: &BTreeMap<String, Vec<u8>>,
    trusted: &Path,
    want: &BTreeSet<String>,
) {
    let (ids, bad) = trusted_rows(trusted);
    assert!(bad.is_empty(), "rows in the wrong partition: {bad:?}");
    let twice: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "events twice: {:?}",
        &twice[..twice.len().min(5)]
    );
    let got: BTreeSet<String> = ids.into_keys().collect();
    assert_eq!(
        got.len(),
        want.len(),
        "{} missing, {} extra",
        want.difference(&got).count(),
        got.difference(want).count()
    );
    assert_eq!(&got, want);
    // Every landing object moved, byte for byte.
    assert!(
        files_below(&landing.join("pending")).is_empty(),
        "pending is empty"
    );
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let processed = landing.join(format!("processed/date={today}"));
    let moved: BTreeMap<String, Vec<u8>> = files_below(&processed)
        .into_iter()
        .map(|f| {
            (
                f.strip_prefix(&processed)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
                fs::read(&f).unwrap(),
            )
        })
        .collect();
    assert_eq!(&moved, before, "processed holds exactly what was pending");
    // Nothing left open or staged.
    assert!(files_below(&trusted.join("_rewind/ingest")).is_empty());
}

pub(crate) fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    files_below(dir)
        .into_iter()
        .map(|f| {
            (
                f.strip_prefix(dir).unwrap().to_string_lossy().into_owned(),
                fs::read(&f).unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_landing_zone_is_ingested_once_deduplicated_and_moved() {
    let tmp = tempfile::tempdir().unwrap();
    let landing = tmp.path().join("landing");
    let pending = landing.join("pending");
    let trusted = tmp.path().join("trusted");
    let want = landing_zone(&pending, &tmp.path().join("gen"));
    let before = snapshot(&pending);
    assert_eq!(before.len(), 220);
    let out = ingest(&pending, &trusted, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["consumed"], 220, "{report}");
    assert!(report["duplicates"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(
        report["failed_by_reason"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum::<u64>(),
        report["failed"].as_u64().unwrap()
    );
    assert!(
        report["failed"].as_u64().unwrap() >= 10,
        "the damaged tails: {report}"
    );
    check(&landing, &before, &trusted, &want);
    // Nothing pending: nothing happens.
    let again = ingest(&pending, &trusted, &[]);
    assert!(again.status.success());
    assert_eq!(
        serde_json::from_slice::<Value>(&again.stdout).unwrap()["state"],
        "nothing_pending"
    );
    // Re-dropping a file ingests nothing twice.
    let (name, body) = before
        .iter()
        .find(|(k, _)| k.starts_with("events-"))
        .unwrap();
    fs::write(pending.join(format!("redrop-{name}")), body).unwrap();
    let out = ingest(&pending, &trusted, &[]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["published"], 0, "{report}");
    assert!(report["duplicates"].as_u64().unwrap() > 0);
    let (ids, _) = trusted_rows(&trusted);
    assert!(ids.values().all(|n| *n == 1));
    assert_eq!(ids.len(), want.len());
}

/// Killed after every step in turn (each run resumes what the last left and dies one step
/// later), then by kill -9 at random moments; a last run finishes: the same result.
#[test]
fn ingest_killed_at_any_moment_is_finished_by_the_next_run() {
    let tmp = tempfile::tempdir().unwrap();
    let landing = tmp.path().join("landing");
    let pending = landing.join("pending");
    let trusted = tmp.path().join("trusted");
    let want = landing_zone(&pending, &tmp.path().join("gen"));
    let before = snapshot(&pending);
    for after in ["1", "2", "3", "4", "5", "6"] {
        let out = ingest(
            &pending,
            &trusted,
            &[
                ("REWIND_FAILPOINT", "ingest-step-then-die"),
                ("REWIND_FAILPOINT_AFTER", after),
            ],
        );
        assert!(!out.status.success(), "step {after}: the fail point struck");
    }
    // kill -9 at random moments.
    let mut rng = seed("1702")
        .bytes()
        .fold(7u64, |a, b| a.wrapping_mul(31).wrapping_add(b as u64));
    for _ in 0..3 {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = 200 + (rng >> 33) % 2500;
        let mut child = ingest_cmd(
            pending.to_str().unwrap(),
            &trusted,
            &["--dedup", "event_id"],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill();
        let _ = child.wait();
    }
    let out = ingest(&pending, &trusted, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check(&landing, &before, &trusted, &want);
}

#[test]
fn bad_ingests_are_refused_before_anything_moves() {
    let tmp = tempfile::tempdir().unwrap();
    let pending = tmp.path().join("landing/pending");
    fs::create_dir_all(&pending).unwrap();
    fs::write(pending.join("a.json"), b"{}").unwrap();
    let trusted = tmp.path().join("trusted");
    let base = |extra: &[&str]| {
        let mut a = vec![
            "ingest",
            "--source",
            pending.to_str().unwrap(),
            "--dest",
            trusted.to_str().unwrap(),
            "--org",
            ORG,
        ];
        a.extend_from_slice(extra);
        Command::new(BIN).args(&a).output().unwrap()
    };
    let elsewhere = tmp.path().join("elsewhere");
    let inside = pending.join("sub");
    for (out, named) in [
        (base(&["--dedup", "cid"]), "--dedup"),
        (base(&["--partition-by", "x={nope}"]), "--partition-by"),
        (
            base(&["--processed", elsewhere.to_str().unwrap()]),
            "--processed",
        ),
        (
            base(&["--processed", inside.to_str().unwrap()]),
            "--processed",
        ),
    ] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{named}: {stderr}");
        assert!(stderr.contains(named), "{named}: {stderr}");
    }
    assert!(
        pending.join("a.json").exists() && !trusted.exists(),
        "nothing touched"
    );
}

/// The same landing zone in a bucket (moto: server-side copies, DeleteObjects), the trusted
/// zone in a directory: every event once, every object under `processed/date=…/` byte for byte,
/// nothing left pending.
#[test]
fn a_landing_zone_in_a_bucket_is_ingested_and_moved() {
    use rewind_testkit::s3::S3Server;
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("landing/pending");
    let trusted = tmp.path().join("trusted");
    let want = landing_zone(&local, &tmp.path().join("gen"));
    let before = snapshot(&local);
    let s3 = S3Server::start_moto();
    s3.create_bucket("landing", false);
    s3.upload_dir("landing", "zone/pending/", &local);
    let endpoint = s3.endpoint();
    let out = ingest_cmd(
        "s3://landing/zone/pending/",
        &trusted,
        &[
            "--dedup",
            "event_id",
            "--endpoint-url",
            &endpoint,
            "--force-path-style",
        ],
    )
    .envs(s3.env())
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ids, bad) = trusted_rows(&trusted);
    assert!(bad.is_empty() && ids.values().all(|n| *n == 1));
    assert_eq!(ids.into_keys().collect::<BTreeSet<_>>(), want);
    assert!(s3.list("landing", "zone/pending/").is_empty());
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let prefix = format!("zone/processed/date={today}/");
    let moved: BTreeMap<String, Vec<u8>> = s3
        .list("landing", &prefix)
        .into_iter()
        .map(|(k, _)| {
            let body = s3.get("landing", &k).unwrap();
            (k[prefix.len()..].to_string(), body)
        })
        .collect();
    assert_eq!(moved, before);
}

/// `--watch`: batches as objects land, one change each; SIGTERM lets the batch under way finish
/// (never half a batch: its objects are all published and moved, or all still pending) and
/// exits 0.
#[test]
fn watch_ingests_as_objects_land_and_stops_between_batches() {
    let tmp = tempfile::tempdir().unwrap();
    let landing = tmp.path().join("landing");
    let pending = landing.join("pending");
    let trusted = tmp.path().join("trusted");
    let archive = tmp.path().join("gen");
    common::generate(
        &archive,
        ORG,
        "2024-04-01T00",
        "6",
        "0.004",
        &seed("1703"),
        &["--compression", "none"],
    );
    let mut files = files_below(&archive);
    files.sort();
    fs::create_dir_all(&pending).unwrap();
    let drop_batch = |range: std::ops::Range<usize>| {
        for (n, f) in files[range].iter().enumerate() {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            // Written under a hidden name, then renamed: a reader never sees half a file.
            let tmp_name = pending.join(format!(".{name}.part"));
            fs::write(&tmp_name, fs::read(f).unwrap()).unwrap();
            fs::rename(&tmp_name, pending.join(format!("{n}-{name}"))).unwrap();
        }
    };
    let drained = |what: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        while !files_below(&pending).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: still pending"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    drop_batch(0..6);
    let mut child = ingest_cmd(
        pending.to_str().unwrap(),
        &trusted,
        &["--watch", "--interval", "1"],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    drained("the first batch");
    drop_batch(6..12);
    drained("the second batch");
    drop_batch(12..18);
    std::thread::sleep(Duration::from_millis(1200));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let left = files_below(&pending).len();
    assert!(
        left == 0 || left == 6,
        "never half a batch: {left} of 6 left"
    );
    assert!(files_below(&trusted.join("_rewind/ingest/open")).is_empty());
    let (ids, _) = trusted_rows(&trusted);
    assert!(ids.values().all(|n| *n == 1));
    let want: BTreeSet<String> = files[..if left == 0 { 18 } else { 12 }]
        .iter()
        .flat_map(|f| {
            events_of(&fs::read(f).unwrap())
                .into_iter()
                .map(|(_, _, id)| id)
        })
        .collect();
    assert_eq!(ids.into_keys().collect::<BTreeSet<_>>(), want);
    let changes = files_below(&trusted.join("_rewind/changes")).len();
    assert!(changes >= 2, "one change per batch: {changes}");
}

/// The same landing zone in Azure Blob Storage (Azurite): every event once, every object moved
/// to `processed/date=…/` byte for byte.
#[test]
fn a_landing_zone_in_azure_is_ingested_and_moved() {
    use rewind_testkit::azure::Azurite;
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("landing/pending");
    let trusted = tmp.path().join("trusted");
    let want = landing_zone(&local, &tmp.path().join("gen"));
    let before = snapshot(&local);
    let az = Azurite::start();
    az.create_container("landing");
    az.upload_dir(&local, "landing", "zone/pending/");
    let out = ingest_cmd(
        "az://landing/zone/pending/",
        &trusted,
        &["--dedup", "event_id"],
    )
    .envs(az.env())
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ids, bad) = trusted_rows(&trusted);
    assert!(bad.is_empty() && ids.values().all(|n| *n == 1));
    assert_eq!(ids.into_keys().collect::<BTreeSet<_>>(), want);
    assert!(az.list("landing", "zone/pending/").is_empty());
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let moved = tmp.path().join("moved");
    let prefix = format!("zone/processed/date={today}/");
    assert_eq!(az.download_prefix("landing", &prefix, &moved), before.len());
    assert_eq!(snapshot(&moved), before);
}
