//! Azure Blob Storage end to end, against Azurite (a real Azure Storage emulator): an archive in
//! one container recovered to Parquet in another, read back and compared event by event with
//! the archive; its change rolled back and applied again there; and the errors a user meets
//! (wrong key, missing container) named before anything is written.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use crate::common::{self, seed};
use rewind_testkit::azure::Azurite;
use serde_json::Value;

const ORG: &str = "TN-az";

fn rewind(env: &[(&'static str, String)], args: &[&str]) -> Output {
    common::rewind_with_env(env, args)
}

/// Every row below `prefix` of `container`, by event id (partition dropped).
fn rows(az: &Azurite, container: &str, prefix: &str) -> BTreeMap<String, Value> {
    let local = tempfile::tempdir().unwrap();
    az.download_prefix(container, prefix, local.path());
    common::rows_by_id(local.path())
}

fn want(src: &Path) -> BTreeMap<String, Value> {
    common::expected_rows(src)
}

#[test]
fn an_archive_in_azure_is_recovered_into_azure_and_rolled_back() {
    let az = Azurite::start();
    az.create_container("archive-tn-az");
    az.create_container("lake");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("archive");
    common::generate(
        &src,
        ORG,
        "2024-04-01T00",
        "3",
        "0.3",
        &seed("41"),
        &["--compression", "mixed"],
    );
    assert!(az.upload_dir(&src, "archive-tn-az", "raw/") > 0);
    let env = az.env();
    let summary = common::ok(&job_with(&env, "az://lake/recovered"));
    let id = summary["job_id"].as_str().unwrap().to_string();
    let exec = format!("recovered/execution_id={id}/");
    assert_eq!(rows(&az, "lake", &exec), want(&src), "every event, exactly");
    let blobs = az.list("lake", &exec);
    assert!(blobs.iter().any(|(k, _)| k == "_SUCCESS"), "{blobs:?}");
    assert!(
        !blobs.iter().any(|(k, _)| k.contains("_rewind/staging")),
        "staged attempts are promoted or swept: {blobs:?}"
    );

    // The job's change, rolled back and applied again in the container.
    let changes = |env: &[(&'static str, String)]| -> Value {
        common::ok(&rewind(
            env,
            &["changes", "--dest", "az://lake/recovered", "--json"],
        ))
    };
    let log = changes(&env);
    assert_eq!(log.as_array().unwrap().len(), 1);
    assert_eq!(log[0]["job"], id.as_str());
    common::ok_status(&rewind(
        &env,
        &["rollback", "--dest", "az://lake/recovered"],
    ));
    assert!(rows(&az, "lake", &exec).is_empty(), "rolled back");
    let change = log[0]["id"].as_str().unwrap().to_string();
    common::ok_status(&rewind(
        &env,
        &["reapply", "--dest", "az://lake/recovered", &change],
    ));
    assert_eq!(rows(&az, "lake", &exec), want(&src));

    // A wrong key is refused, naming the container, and nothing is written.
    let mut bad = env.clone();
    for (k, v) in bad.iter_mut() {
        if *k == "AZURE_STORAGE_ACCOUNT_KEY" {
            *v = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWs=".into();
        }
    }
    let before = az.list("lake", "");
    let out = job_with(&bad, "az://lake/other");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("az://archive-tn-az"), "{stderr}");
    // A container that does not exist: named too.
    let out = job_with(&env, "az://no-such-lake/x");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("az://no-such-lake"), "{stderr}");
    assert_eq!(az.list("lake", ""), before, "nothing written");
}

/// `rewind run --json` of the archive's first three hours into `dest`, with `env`.
fn job_with(env: &[(&'static str, String)], dest: &str) -> Output {
    rewind(
        env,
        &[
            "run",
            "--source",
            "az://archive-{org}/raw",
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
