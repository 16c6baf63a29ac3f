//! End to end on S3 through the binaries: an archive in a bucket recovered to Parquet in another
//! bucket, embedded and distributed, read back and compared event by event with the archive.
//!
//! Server: s3s-fs, because it checks request signatures (the wrong-credentials case needs a
//! server that refuses them) and needs no versioning here. A fault proxy between Rewind and
//! s3s-fs throttles (503 SlowDown) and cuts bodies mid-way in the embedded case.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::{self, seed};
use rewind_testkit::s3::{FaultProxy, Faults, S3Server, env_for};
use rewind_testkit::servers::{Etcd, Proc, free_port, wait_port};
use rewind_testkit::{archived_events, expected_row, files_below, parquet_rows, stdout_json};
use serde_json::Value;

const REWIND: &str = env!("CARGO_BIN_EXE_rewind");
const COORDINATOR: [&str; 2] = [env!("CARGO_BIN_EXE_rewind"), "coordinator"];
const WORKER: [&str; 2] = [env!("CARGO_BIN_EXE_rewind"), "worker"];
const ORG: &str = "TN-s3";
/// The archive bucket, as Pismo names it: `{org}` is filled with the lowercase org id.
const ARCHIVE: &str = "pismo-dataplatform-tn-s3";

fn generate(dir: &Path, hours: &str) {
    let seed = seed("77");
    let extra = ["--compression", "mixed"];
    common::generate(dir, ORG, "2024-04-01T00", hours, "0.3", &seed, &extra);
}

fn rewind(env: &[(&'static str, String)], args: &[&str]) -> Output {
    Command::new(REWIND)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap()
}

/// The Parquet of one job, downloaded from the bucket, compared with the archive.
fn assert_exact(server: &S3Server, bucket: &str, prefix: &str, src: &Path, job: &str) {
    let local = tempfile::tempdir().unwrap();
    let exec = format!("{prefix}execution_id={job}/");
    server.download_prefix(bucket, &exec, local.path());
    let mut got = BTreeMap::new();
    for mut row in parquet_rows(local.path()) {
        row.as_object_mut().unwrap().remove("_partition");
        let id = row["event_id"].as_str().unwrap().to_string();
        assert!(got.insert(id.clone(), row).is_none(), "event {id} twice");
    }
    let want: BTreeMap<String, Value> = archived_events(src)
        .iter()
        .map(|e| {
            (
                e.value["event_id"].as_str().unwrap().to_string(),
                expected_row(&e.value),
            )
        })
        .collect();
    assert_eq!(got.len(), want.len(), "event count");
    for (id, row) in &want {
        assert_eq!(got.get(id), Some(row), "event {id} differs");
    }
    assert!(
        server.get(bucket, &format!("{exec}_SUCCESS")).is_some(),
        "no _SUCCESS"
    );
    // Every data file in the bucket is in the manifest, and nothing else is.
    let manifest: Value = serde_json::from_slice(
        &server
            .get(bucket, &format!("{exec}_manifest.json"))
            .unwrap(),
    )
    .unwrap();
    let mut listed: Vec<String> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["key"].as_str().unwrap().to_string())
        .collect();
    listed.sort();
    let stored: Vec<String> = server
        .list(bucket, &exec)
        .into_iter()
        .map(|(k, _)| k[prefix.len()..].to_string())
        .filter(|k| k.ends_with(".parquet"))
        .collect();
    assert_eq!(stored, listed);
}

/// Embedded: s3://{org} archive -> Parquet on S3 through a proxy that throttles every 9th
/// request and cuts every 4th object body half-way. Exact output, retries counted.
#[test]
fn embedded_recovery_from_s3_to_s3_through_faults_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("archive");
    generate(&src, "3");
    let server = S3Server::start_s3s();
    server.create_bucket(ARCHIVE, false);
    server.create_bucket("recovered", false);
    assert!(server.upload_dir(ARCHIVE, "", &src) >= 9);
    let proxy = FaultProxy::start(
        server.port,
        Faults {
            slowdown_every: 9,
            reset_every: 4,
        },
    );
    let out = rewind(
        &server.env(),
        &[
            "run",
            "--source",
            "s3://pismo-dataplatform-{org}",
            "--org",
            ORG,
            "--start",
            "2024-04-01T00",
            "--end",
            "2024-04-01T02",
            "--dest",
            "s3://recovered/rewind/out",
            "--endpoint-url",
            &proxy.endpoint(),
            "--force-path-style",
            "--workers",
            "2",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = stdout_json(&out);
    assert_eq!(summary["state"], "succeeded");
    assert_eq!(summary["source"], format!("s3://{ARCHIVE}/"));
    assert!(proxy.injected() > 0, "the proxy injected no fault");
    assert!(summary["retries"].as_u64().unwrap() > 0, "{summary}");
    let job = summary["job_id"].as_str().unwrap();
    assert_exact(&server, "recovered", "rewind/out/", &src, job);
}

/// Wrong credentials: exit 1 at once, the message names the bucket and the identity, and
/// nothing is written (certainly no _SUCCESS).
#[test]
fn wrong_credentials_exit_1_and_write_nothing() {
    let server = S3Server::start_s3s();
    server.create_bucket(ARCHIVE, false);
    server.create_bucket("recovered", false);
    server.put(ARCHIVE, "main_stream/2024/04/01/00/x.json", b"{}");
    let started = Instant::now();
    let out = rewind(
        &env_for("rewindtestkey", "wrong-secret"),
        &[
            "run",
            "--source",
            &format!("s3://{ARCHIVE}"),
            "--org",
            ORG,
            "--start",
            "2024-04-01T00",
            "--end",
            "2024-04-01T00",
            "--dest",
            "s3://recovered/out",
            "--endpoint-url",
            &server.endpoint(),
            "--force-path-style",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(ARCHIVE) && stderr.contains("credential chain"),
        "{stderr}"
    );
    assert!(
        stderr.contains("SignatureDoesNotMatch") || stderr.contains("403"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(20), "not fast");
    assert!(server.list("recovered", "").is_empty());
}

/// Distributed: coordinator and worker read and write S3 with the standard credential chain.
/// One job runs to an exact result; a second job is submitted with no worker running, one of
/// its objects is overwritten, and that shard fails naming the object and what changed while
/// the other hours succeed.
#[test]
fn distributed_recovery_on_s3_and_a_pinned_object_changed_after_planning() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("archive");
    generate(&src, "2");
    let server = S3Server::start_s3s();
    server.create_bucket(ARCHIVE, false);
    server.create_bucket("recovered", false);
    server.upload_dir(ARCHIVE, "", &src);
    let env = server.env();
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let etcd = Etcd::start();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _coordinator = Proc::spawn_with_env(
        COORDINATOR,
        &[
            "--listen",
            &addr,
            "--etcd",
            &etcd.endpoint(),
            "--lease-ttl",
            "3",
        ]
        .map(String::from),
        tmp.path().join("coordinator.log"),
        &env_ref,
    );
    assert!(wait_port(port, Duration::from_secs(20)));
    let endpoint = server.endpoint();
    let submit = |extra: &[&str]| -> String {
        let mut args = vec![
            "submit",
            "--coordinator",
            &addr,
            "--source",
            "s3://pismo-dataplatform-{org}",
            "--org",
            ORG,
            "--start",
            "2024-04-01T00",
            "--end",
            "2024-04-01T01",
            "--dest",
            "s3://recovered/dist",
            "--endpoint-url",
            &endpoint,
            "--force-path-style",
        ];
        args.extend_from_slice(extra);
        let out = rewind(&env, &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // Submitted before any worker runs: the plan is pinned now.
    let changed_job = submit(&["--max-attempts", "2"]);
    let victim = server
        .list(ARCHIVE, "main_stream/2024/04/01/01/")
        .into_iter()
        .next()
        .unwrap()
        .0;
    let mut body = server.get(ARCHIVE, &victim).unwrap();
    body.reverse(); // same size, other bytes
    server.put(ARCHIVE, &victim, &body);

    let worker = Proc::spawn_with_env(
        WORKER,
        &[
            "--etcd",
            &etcd.endpoint(),
            "--slots",
            "2",
            "--lease-ttl",
            "3",
            "--poll-ms",
            "100",
        ]
        .map(String::from),
        tmp.path().join("worker.log"),
        &env_ref,
    );
    let wait = |job: &str| -> (Option<i32>, Value) {
        let out = rewind(&env, &["watch", job, "--coordinator", &addr, "--json"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let last = text.lines().last().unwrap_or("{}").to_string();
        (
            out.status.code(),
            serde_json::from_str(&last).unwrap_or(Value::Null),
        )
    };
    let (code, status) = wait(&changed_job);
    assert_eq!(code, Some(1), "{status} {}", worker.log_text());
    let out = rewind(
        &env,
        &["status", &changed_job, "--coordinator", &addr, "--json"],
    );
    let status = stdout_json(&out);
    let text = status.to_string();
    assert!(
        text.contains(&victim) && text.contains("changed since the job was planned"),
        "{text}"
    );
    assert!(text.contains("ETag"), "{text}");

    // Put the object back as it was; a new job (new plan) recovers everything exactly.
    body.reverse();
    server.put(ARCHIVE, &victim, &body);
    let job = submit(&[]);
    let (code, _) = wait(&job);
    assert_eq!(code, Some(0), "{}", worker.log_text());
    assert_exact(&server, "recovered", "dist/", &src, &job);
    // The job's plan (the pinned objects) stays next to its outputs.
    let plans = server.list(
        "recovered",
        &format!("dist/execution_id={job}/_rewind/plan/"),
    );
    assert_eq!(plans.len(), 2);
}

/// Roles: with `--source-role-arn` the source is read with credentials from STS AssumeRole.
/// Server: moto, which serves STS and S3 on one endpoint and accepts any credentials, so the
/// positive case shows the role path works end to end; the negative case (STS unreachable)
/// shows the role is really used: the job fails at once, naming the role.
#[test]
fn source_role_is_assumed_through_sts() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("archive");
    generate(&src, "1");
    let server = S3Server::start_moto();
    server.create_bucket(ARCHIVE, false);
    server.upload_dir(ARCHIVE, "", &src);
    let role = "arn:aws:iam::123456789012:role/rewind-recovery";
    let dest = tmp.path().join("out");
    let job = |sts: &str| {
        let mut env = server.env();
        env.push(("AWS_ENDPOINT_URL_STS", sts.to_string()));
        rewind(
            &env,
            &[
                "run",
                "--source",
                "s3://pismo-dataplatform-{org}",
                "--source-role-arn",
                role,
                "--source-external-id",
                "ext-42",
                "--role-session-name",
                "rewind-test",
                "--org",
                ORG,
                "--start",
                "2024-04-01T00",
                "--end",
                "2024-04-01T00",
                "--dest",
                dest.to_str().unwrap(),
                "--endpoint-url",
                &server.endpoint(),
                "--force-path-style",
                "--json",
            ],
        )
    };
    let ok = job(&server.endpoint());
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let summary = stdout_json(&ok);
    let want = archived_events(&src).len() as u64;
    assert_eq!(summary["recovered"], want);

    let dead = format!("http://127.0.0.1:{}", free_port());
    let failed = job(&dead);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(role) && stderr.contains(ARCHIVE),
        "{stderr}"
    );
}

/// `rewind gen --out s3://…` writes into a bucket the very archive it writes into a directory
/// (same seed: same keys, same bytes); refused credentials fail with exit 1 naming the bucket.
#[test]
fn gen_writes_the_same_archive_into_a_bucket() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("archive");
    generate(&src, "2");
    let server = S3Server::start_s3s();
    server.create_bucket(ARCHIVE, false);
    let seed = seed("77");
    let args = |out: &str| -> Vec<String> {
        [
            "gen",
            "--out",
            out,
            "--org",
            ORG,
            "--start",
            "2024-04-01T00",
            "--hours",
            "2",
            "--objects-per-hour",
            "3",
            "--object-mb",
            "0.3",
            "--seed",
            &seed,
            "--compression",
            "mixed",
            "--endpoint-url",
            &server.endpoint(),
            "--force-path-style",
        ]
        .map(String::from)
        .to_vec()
    };
    let argv = args("s3://pismo-dataplatform-{org}/backup");
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = rewind(&server.env(), &argv);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut local: Vec<(String, Vec<u8>)> = files_below(&src)
        .into_iter()
        .map(|p| {
            let key = p.strip_prefix(&src).unwrap().to_str().unwrap().to_string();
            (key, std::fs::read(&p).unwrap())
        })
        .collect();
    local.sort();
    let stored: Vec<(String, Vec<u8>)> = server
        .list(ARCHIVE, "backup/")
        .into_iter()
        .map(|(k, _)| {
            let bytes = server.get(ARCHIVE, &k).unwrap();
            (k["backup/".len()..].to_string(), bytes)
        })
        .collect();
    assert_eq!(local.len(), 6);
    assert_eq!(stored, local);

    let argv = args("s3://pismo-dataplatform-{org}/refused");
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = rewind(&env_for("AKIAWRONG", "wrong-secret"), &argv);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("writing s3://{ARCHIVE}/refused: ")) && stderr.contains("403"),
        "{stderr}"
    );
    assert!(server.list(ARCHIVE, "refused/").is_empty());
}
