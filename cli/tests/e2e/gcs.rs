//! Google Cloud Storage end to end, against gcp-storage-emulator (GCS's JSON API, in memory): an
//! archive in one bucket recovered to Parquet in another, read back with an independent client
//! and compared event by event with the archive; its change rolled back and applied again there;
//! a damaged object's bytes in the failed output on GCS; and a missing bucket named before
//! anything is written.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use crate::common::{self, seed};
use rewind_testkit::gcs::GcsEmulator;
use serde_json::Value;

const ORG: &str = "TN-gs";

fn rewind(env: &[(&'static str, String)], args: &[&str]) -> Output {
    common::rewind_with_env(env, args)
}

/// Every row below `prefix` of `bucket`, by event id (partition dropped).
fn rows(gcs: &GcsEmulator, bucket: &str, prefix: &str) -> BTreeMap<String, Value> {
    let local = tempfile::tempdir().unwrap();
    gcs.download_prefix(bucket, prefix, local.path());
    common::rows_by_id(local.path())
}

fn want(src: &Path) -> BTreeMap<String, Value> {
    common::expected_rows(src)
}

/// `rewind run --json` of the archive's first three hours into `dest`, with `env`.
fn job_with(env: &[(&'static str, String)], dest: &str) -> Output {
    rewind(
        env,
        &[
            "run",
            "--source",
            "gs://archive-{org}/raw",
            "--org",
            ORG,
            "--start",
            "2024-04-01T00",
            "--end",
            "2024-04-01T02",
            "--dest",
            dest,
            "--json",
        ],
    )
}

#[test]
fn an_archive_in_gcs_is_recovered_into_gcs_exactly_and_rolled_back() {
    let gcs = GcsEmulator::start();
    gcs.create_bucket("archive-tn-gs");
    gcs.create_bucket("lake");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("archive");
    common::generate(
        &src,
        ORG,
        "2024-04-01T00",
        "3",
        "0.3",
        &seed("43"),
        &["--compression", "mixed"],
    );
    let expected = want(&src);
    // One damaged object among them: its bytes go to the failed output, on GCS too.
    let hour = src.join("main_stream/2024/04/01/01");
    std::fs::write(hour.join("zz-damaged.json"), br#"{"event_id": oops}"#).unwrap();
    assert!(gcs.upload_dir(&src, "archive-tn-gs", "raw/") > 0);
    let env = gcs.env();
    let out = job_with(&env, "gs://lake/recovered");
    let summary = common::ok(&out);
    assert_eq!(summary["failed"], 1, "{summary}");
    let id = summary["job_id"].as_str().unwrap().to_string();
    let exec = format!("recovered/execution_id={id}/");
    assert_eq!(rows(&gcs, "lake", &exec), expected, "every event, exactly");
    let objects = gcs.list("lake", &exec);
    assert!(objects.iter().any(|(k, _)| k == "_SUCCESS"), "{objects:?}");
    assert!(
        !objects.iter().any(|(k, _)| k.contains("_rewind/staging")),
        "staged attempts are promoted or swept: {objects:?}"
    );
    let failed = tempfile::tempdir().unwrap();
    gcs.download_prefix(
        "lake",
        &format!("recovered/_failed/execution_id={id}/"),
        failed.path(),
    );
    let failed = common::records(failed.path());
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["raw"], r#"{"event_id": oops}"#);
    assert!(
        failed[0]["source_key"]
            .as_str()
            .unwrap()
            .ends_with("zz-damaged.json")
    );

    // The job's change, rolled back and applied again in the bucket.
    let changes = |env: &[(&'static str, String)]| -> Value {
        common::ok(&rewind(
            env,
            &["changes", "--dest", "gs://lake/recovered", "--json"],
        ))
    };
    let log = changes(&env);
    assert_eq!(log.as_array().unwrap().len(), 1);
    assert_eq!(log[0]["job"], id.as_str());
    common::ok_status(&rewind(
        &env,
        &["rollback", "--dest", "gs://lake/recovered"],
    ));
    assert!(rows(&gcs, "lake", &exec).is_empty(), "rolled back");
    let change = log[0]["id"].as_str().unwrap().to_string();
    common::ok_status(&rewind(
        &env,
        &["reapply", "--dest", "gs://lake/recovered", &change],
    ));
    assert_eq!(rows(&gcs, "lake", &exec), expected);

    // A bucket that does not exist is named, and nothing is written.
    let before = gcs.list("lake", "");
    let out = job_with(&env, "gs://no-such-lake/x");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("gs://no-such-lake"), "{stderr}");
    assert_eq!(gcs.list("lake", ""), before, "nothing written");
}
