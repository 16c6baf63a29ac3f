//! Every job a recorded change of its destination, reversible: two jobs, a keyed repair,
//! rollback, re-apply, rollback --to, on a local directory, a versioned bucket (moto) and an
//! unversioned one (s3s-fs). After each step the dataset a reader globbing `**/*.parquet` sees
//! (every row, with its partition) equals what it must be; a repair and a rollback killed
//! between two of their steps are finished by running them again.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::{self, seed};
use rewind_testkit::parquet_rows;
use rewind_testkit::s3::S3Server;
use serde_json::Value;

const REWIND: &str = env!("CARGO_BIN_EXE_rewind");
const ORG: &str = "TN-ch";

/// Where the jobs write and how to read what is there.
struct Dest<'a> {
    url: String,
    /// Flags and environment that reach it.
    flags: Vec<String>,
    env: Vec<(&'static str, String)>,
    /// Whether the store keeps versions (the changes record them).
    versioned: bool,
    /// Copies the destination into a directory, to read it like a reader does.
    fetch: Box<dyn Fn(&Path) + 'a>,
    /// Jobs write a Delta table (`--table-format delta`), read with the `deltalake` package.
    delta: bool,
}

impl Dest<'_> {
    fn rewind(&self, args: &[&str], extra_env: &[(&str, &str)]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(self.flags.iter().map(String::as_str));
        Command::new(REWIND)
            .args(&all)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .envs(extra_env.iter().copied())
            .output()
            .unwrap()
    }

    /// Every row a reader of the destination sees, with its partition, sorted.
    fn dataset(&self) -> Vec<String> {
        let local = tempfile::tempdir().unwrap();
        (self.fetch)(local.path());
        let mut rows: Vec<String> = parquet_rows(local.path())
            .iter()
            .map(Value::to_string)
            .collect();
        rows.sort();
        rows
    }

    fn run_job(&self, src: &Path, start: &str, end: &str) -> String {
        let out = self.rewind(
            &[
                "run",
                "--source",
                src.to_str().unwrap(),
                "--org",
                ORG,
                "--start",
                start,
                "--end",
                end,
                "--dest",
                &self.url,
                "--json",
                "--table-format",
                if self.delta { "delta" } else { "parquet" },
            ],
            &[],
        );
        common::ok(&out)["job_id"].as_str().unwrap().to_string()
    }

    /// `rewind changes --json`, newest first.
    fn changes(&self) -> Vec<Value> {
        let out = self.rewind(&["changes", "--dest", &self.url, "--json"], &[]);
        common::ok(&out).as_array().unwrap().clone()
    }

    fn act(&self, args: &[&str]) -> Output {
        let mut all = args.to_vec();
        all.extend(["--dest", &self.url]);
        self.rewind(&all, &[])
    }
}

fn ok_text(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The walk every store goes through.
fn two_jobs_rolled_back_and_applied_again(dest: &Dest<'_>) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("archive");
    common::generate(
        &src,
        ORG,
        "2024-05-01T00",
        "3",
        "0.1",
        &seed("5"),
        &["--compression", "mixed"],
    );
    assert!(dest.dataset().is_empty());
    let first_job = dest.run_job(&src, "2024-05-01T00", "2024-05-01T01");
    let after_first = dest.dataset();
    assert!(!after_first.is_empty());
    let second_job = dest.run_job(&src, "2024-05-01T01", "2024-05-01T02");
    let after_both = dest.dataset();
    assert!(after_both.len() > after_first.len());

    let log = dest.changes();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0]["job"], second_job.as_str());
    assert_eq!(log[1]["job"], first_job.as_str());
    assert!(
        log.iter()
            .all(|c| c["kind"] == "recover" && c["state"] == "applied")
    );
    let (first, second) = (
        log[1]["id"].as_str().unwrap().to_string(),
        log[0]["id"].as_str().unwrap().to_string(),
    );
    // Every visible object of the job is in its change, with rows for the data files.
    let data: Vec<&Value> = log[0]["objects"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["key"].as_str().unwrap().ends_with(".parquet"))
        .collect();
    assert!(!data.is_empty());
    assert!(
        data.iter()
            .all(|o| o["after"]["rows"].as_u64().unwrap() > 0)
    );
    let versions = log[0]["objects"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["after"]["version"].is_string())
        .count();
    let expected = if dest.versioned { data.len() + 2 } else { 0 };
    assert_eq!(
        versions, expected,
        "versions recorded where the store keeps them"
    );

    // A keyed repair across both jobs' files (hour 01 is in both): 4 keys deleted, 3 rows
    // replaced; killed after its intent and first step, then run again.
    let (repair_args, after_repair) = keyed_repair(&after_both, tmp.path());
    let mut args: Vec<&str> = vec!["repair", "--dataset", &dest.url, "--key", "event_id"];
    args.extend(repair_args.iter().map(String::as_str));
    let killed = dest.rewind(
        &args,
        &[
            ("REWIND_FAILPOINT", "change-step-then-die"),
            ("REWIND_FAILPOINT_AFTER", "2"),
        ],
    );
    assert!(!killed.status.success(), "the fail point killed the repair");
    let again = ok_text(&dest.rewind(&args, &[]));
    assert!(again.contains("nothing changed"), "{again}");
    assert_eq!(dest.dataset(), after_repair);
    let repair = dest.changes()[0].clone();
    assert_eq!(repair["kind"], "repair");
    let repair = repair["id"].as_str().unwrap().to_string();
    let dry = ok_text(&dest.act(&["rollback", "--dry-run"]));
    assert!(
        dry.contains("would be rolled back") && dry.contains(".parquet"),
        "{dry}"
    );
    assert_eq!(dest.dataset(), after_repair, "a dry run changes nothing");
    ok_text(&dest.act(&["rollback"]));
    assert_eq!(dest.dataset(), after_both);
    ok_text(&dest.act(&["reapply", &repair]));
    assert_eq!(dest.dataset(), after_repair);
    // The second job cannot go while the repair, touching its files, is in effect.
    let refused = dest.act(&["rollback", &second]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains(&repair));
    ok_text(&dest.act(&["rollback"]));
    assert_eq!(dest.dataset(), after_both);

    // Undo the second job: its rows are gone for every reader.
    ok_text(&dest.act(&["rollback", &second]));
    assert_eq!(dest.dataset(), after_first);
    // Run again with its id: done already, nothing changes.
    let again = ok_text(&dest.act(&["rollback", &second]));
    assert!(again.contains("already"), "{again}");
    assert_eq!(dest.dataset(), after_first);

    ok_text(&dest.act(&["reapply", &second]));
    assert_eq!(dest.dataset(), after_both);

    // A rollback killed between its steps (after its intent and three objects: `_SUCCESS`, the
    // manifest, one data file) is finished by running it again.
    let killed = dest.rewind(
        &["rollback", "--to", &first, "--dest", &dest.url],
        &[
            ("REWIND_FAILPOINT", "change-step-then-die"),
            ("REWIND_FAILPOINT_AFTER", "4"),
        ],
    );
    assert!(!killed.status.success(), "the fail point killed it");
    let half = dest.dataset();
    assert!(
        half != after_first && half != after_both,
        "stopped half-way"
    );
    ok_text(&dest.act(&["rollback", "--to", &first]));
    assert_eq!(dest.dataset(), after_first);

    // The first can go now, and come back.
    let refused = dest.act(&["reapply", &first]);
    assert_eq!(refused.status.code(), Some(2), "never rolled back");
    ok_text(&dest.act(&["rollback", &first]));
    assert!(dest.dataset().is_empty());
    ok_text(&dest.act(&["reapply", &first]));
    assert_eq!(dest.dataset(), after_first);

    // The history only grew: 2 jobs, a repair, 6 rollbacks (one by --to), 3 re-applies.
    let log = dest.changes();
    let kinds: Vec<&str> = log.iter().map(|c| c["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "reapply", "rollback", "rollback", "reapply", "rollback", "rollback", "reapply",
            "rollback", "repair", "recover", "recover"
        ],
        "{log:#?}"
    );
    let state = |id: &str| {
        log.iter()
            .find(|c| c["id"] == id)
            .map(|c| c["state"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(state(&repair), "rolled_back");
    assert_eq!(state(&second), "rolled_back");
    assert_eq!(state(&first), "applied");
}

/// A repair of `rows` (the dataset as `Dest::dataset` gives it): the arguments (keys file and
/// rows file written below `dir`) and the rows it must leave, computed here.
fn keyed_repair(rows: &[String], dir: &Path) -> (Vec<String>, Vec<String>) {
    let parsed: Vec<Value> = rows
        .iter()
        .map(|r| serde_json::from_str(r).unwrap())
        .collect();
    let mut ids: Vec<String> = parsed
        .iter()
        .map(|r| r["event_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids.dedup();
    // Spread over the dataset: every 97th id.
    let picked: Vec<&String> = ids.iter().step_by(97).take(7).collect();
    assert_eq!(picked.len(), 7);
    let (delete, update) = picked.split_at(4);
    let keys = dir.join("keys.txt");
    std::fs::write(
        &keys,
        delete.iter().map(|k| format!("{k}\n")).collect::<String>(),
    )
    .unwrap();
    let mut lines = String::new();
    for id in update {
        let mut row = parsed
            .iter()
            .find(|r| r["event_id"] == id.as_str())
            .unwrap()
            .clone();
        let obj = row.as_object_mut().unwrap();
        obj.remove("_partition");
        obj.insert("event_type".into(), "REPAIRED".into());
        let data = obj["data"].to_string();
        obj.insert("data".into(), Value::String(data));
        lines.push_str(&format!("{row}\n"));
    }
    let updates = dir.join("rows.jsonl");
    std::fs::write(&updates, lines).unwrap();
    let expected: Vec<String> = parsed
        .into_iter()
        .filter(|r| !delete.contains(&&r["event_id"].as_str().unwrap().to_string()))
        .map(|mut r| {
            if update.contains(&&r["event_id"].as_str().unwrap().to_string()) {
                r["event_type"] = "REPAIRED".into();
            }
            r.to_string()
        })
        .collect();
    let mut expected = expected;
    expected.sort();
    let args = vec![
        "--delete".to_string(),
        keys.display().to_string(),
        "--update".to_string(),
        updates.display().to_string(),
    ];
    (args, expected)
}

#[test]
fn changes_in_a_local_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let dest = Dest {
        url: out.display().to_string(),
        flags: Vec::new(),
        env: Vec::new(),
        versioned: false,
        fetch: Box::new(|to: &Path| copy_dir(&out, to)),
        delta: false,
    };
    two_jobs_rolled_back_and_applied_again(&dest);
    // What rollbacks displaced waits outside every reader's glob until it expires.
    let kept = rewind_testkit::files_below(&out.join("_rewind/staging"));
    assert!(!kept.is_empty());
    assert!(
        kept.iter()
            .all(|p| p.extension().is_some_and(|e| e == "kept"))
    );
}

fn copy_dir(from: &Path, to: &Path) {
    for f in rewind_testkit::files_below(from) {
        let rel = f.strip_prefix(from).unwrap();
        let target = to.join(rel);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&f, &target).unwrap();
    }
}

fn s3_dest<'a>(server: &'a S3Server, bucket: &'static str, versioned: bool) -> Dest<'a> {
    Dest {
        url: format!("s3://{bucket}/lake"),
        flags: vec![
            "--endpoint-url".into(),
            server.endpoint(),
            "--force-path-style".into(),
        ],
        env: server.env(),
        versioned,
        fetch: Box::new(move |to: &Path| {
            server.download_prefix(bucket, "lake/", to);
        }),
        delta: false,
    }
}

/// A versioned bucket: rollbacks leave delete markers and restore versions.
#[test]
fn changes_in_a_versioned_bucket() {
    let server = S3Server::start_moto();
    server.create_bucket("versioned-lake", true);
    two_jobs_rolled_back_and_applied_again(&s3_dest(&server, "versioned-lake", true));
}

/// An unversioned bucket: what a rollback displaces is kept under `_rewind/staging/`.
#[test]
fn changes_in_an_unversioned_bucket() {
    let server = S3Server::start_s3s();
    server.create_bucket("plain-lake", false);
    two_jobs_rolled_back_and_applied_again(&s3_dest(&server, "plain-lake", false));
    let kept = server.list("plain-lake", "lake/_rewind/staging/");
    assert!(!kept.is_empty());
    assert!(kept.iter().all(|(k, _)| k.ends_with(".kept")), "{kept:?}");
}

/// What the Python `deltalake` package (an independent reader) sees in the Delta table of
/// `dest`: every row at `version` (the newest when `None`) in `Dest::dataset`'s shape (the
/// partition column under `_partition`), sorted; and the operations of its history, oldest
/// first.
fn delta_view(dest: &Dest<'_>, version: Option<u64>) -> (Vec<String>, Vec<String>) {
    let local = tempfile::tempdir().unwrap();
    (dest.fetch)(local.path());
    let script = r#"
import json, os, sys
import deltalake
t = deltalake.DeltaTable(sys.argv[1])
if sys.argv[2] != "-":
    t.load_as_version(int(sys.argv[2]))
ops = [h.get("operation") for h in sorted(t.history(), key=lambda h: h["version"])]
print(json.dumps(ops))
for row in t.to_pyarrow_table().to_pylist():
    date = row.pop("date")
    if row.get("data") is not None:
        row["data"] = json.loads(row["data"])
    row["_partition"] = {"date": date}
    print(json.dumps(row))
sys.stdout.flush()
os._exit(0)
"#;
    let v = version.map_or("-".to_string(), |v| v.to_string());
    let out = Command::new("python3")
        .args(["-c", script, local.path().to_str().unwrap(), &v])
        .output()
        .unwrap();
    let text = ok_text(&out);
    let mut lines = text.lines();
    let ops: Vec<String> = serde_json::from_str(lines.next().unwrap()).unwrap();
    let mut rows: Vec<String> = lines
        .map(|l| serde_json::from_str::<Value>(l).unwrap().to_string())
        .collect();
    rows.sort();
    (rows, ops)
}

fn delta_rows(dest: &Dest<'_>) -> Vec<String> {
    delta_view(dest, None).0
}

fn delta_ops(dest: &Dest<'_>) -> Vec<String> {
    delta_view(dest, None).1
}

/// The walk on a Delta table: every job, repair, rollback and re-apply is one commit of the
/// table's log, seen whole by an independent reader (`deltalake`), time travel included; killed
/// after its commit and run again, a command never commits twice.
fn delta_table_walk(dest: &Dest<'_>) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("archive");
    common::generate(
        &src,
        ORG,
        "2024-05-01T00",
        "3",
        "0.1",
        &seed("6"),
        &["--compression", "mixed"],
    );
    let first_job = dest.run_job(&src, "2024-05-01T00", "2024-05-01T01");
    let (after_first, ops) = delta_view(dest, None);
    assert!(!after_first.is_empty());
    assert_eq!(ops, ["CREATE TABLE", "WRITE"]);
    let second_job = dest.run_job(&src, "2024-05-01T01", "2024-05-01T03");
    let after_both = delta_rows(dest);
    assert!(after_both.len() > after_first.len());
    // Each job's files, counted by the reader, are exactly what its change says it added.
    let log = dest.changes();
    assert_eq!(log.len(), 2);
    for (c, job, version) in [(&log[1], &first_job, 1), (&log[0], &second_job, 2)] {
        assert_eq!(c["job"], job.as_str());
        let table = &c["table"];
        assert_eq!(table["format"], "delta");
        assert_eq!(table["version"], version);
        assert_eq!(table["app_id"], format!("rewind-job-{job}").as_str());
        let added = table["added"].as_array().unwrap();
        assert!(!added.is_empty());
        // Data files are the table's, never objects the change moves.
        assert!(
            c["objects"]
                .as_array()
                .unwrap()
                .iter()
                .all(|o| { !o["key"].as_str().unwrap().ends_with(".parquet") })
        );
    }
    let added_rows = |c: &Value| -> u64 {
        c["table"]["added"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["rows"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(added_rows(&log[1]), after_first.len() as u64);
    assert_eq!(
        added_rows(&log[0]),
        (after_both.len() - after_first.len()) as u64
    );
    let (first, second) = (
        log[1]["id"].as_str().unwrap().to_string(),
        log[0]["id"].as_str().unwrap().to_string(),
    );

    // A keyed repair (rewrites are new files: remove + add), killed right after its commit
    // and before its record: the table holds the repair already, and running it again commits
    // nothing more.
    let (repair_args, after_repair) = keyed_repair(&after_both, tmp.path());
    let mut args: Vec<&str> = vec![
        "repair",
        "--dataset",
        &dest.url,
        "--key",
        "event_id",
        "--table-format",
        "delta",
    ];
    args.extend(repair_args.iter().map(String::as_str));
    let killed = dest.rewind(
        &args,
        &[
            ("REWIND_FAILPOINT", "change-step-then-die"),
            ("REWIND_FAILPOINT_AFTER", "2"),
        ],
    );
    assert!(!killed.status.success(), "the fail point killed the repair");
    let (rows, ops) = delta_view(dest, None);
    assert_eq!(rows, after_repair, "the commit is whole");
    assert_eq!(ops.last().map(String::as_str), Some("UPDATE"));
    let again = ok_text(&dest.rewind(&args, &[]));
    assert!(again.contains("nothing changed"), "{again}");
    assert_eq!(delta_ops(dest), ops, "run again, it committed nothing more");
    let repair = dest.changes()[0].clone();
    assert_eq!(repair["kind"], "repair");
    assert!(
        repair["table"]["version"].is_null(),
        "its commit was the killed run's"
    );
    assert!(!repair["table"]["removed"].as_array().unwrap().is_empty());
    let repair = repair["id"].as_str().unwrap().to_string();

    ok_text(&dest.act(&["rollback"]));
    assert_eq!(delta_rows(dest), after_both);
    ok_text(&dest.act(&["reapply", &repair]));
    assert_eq!(delta_rows(dest), after_repair);
    // The second job cannot go while the repair, which rewrote its files, is in effect.
    let refused = dest.act(&["rollback", &second]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains(&repair));

    // rollback --to the first job (the repair, then the second job), killed right after the
    // first rollback's commit; run again, it finishes without committing that one twice.
    let before = delta_ops(dest).len();
    let killed = dest.rewind(
        &["rollback", "--to", &first, "--dest", &dest.url],
        &[
            ("REWIND_FAILPOINT", "change-step-then-die"),
            ("REWIND_FAILPOINT_AFTER", "2"),
        ],
    );
    assert!(!killed.status.success(), "the fail point killed it");
    let (rows, ops) = delta_view(dest, None);
    assert_eq!(rows, after_both, "the repair's rollback is committed whole");
    assert_eq!(ops.len(), before + 1);
    ok_text(&dest.act(&["rollback", "--to", &first]));
    let (rows, ops) = delta_view(dest, None);
    assert_eq!(rows, after_first);
    assert_eq!(ops.len(), before + 2, "one commit per rollback: {ops:?}");

    // Time travel sees each job's version as it was.
    assert_eq!(delta_view(dest, Some(1)).0, after_first);
    assert_eq!(delta_view(dest, Some(2)).0, after_both);

    ok_text(&dest.act(&["reapply", &second]));
    assert_eq!(delta_rows(dest), after_both);
    assert_eq!(
        delta_ops(dest),
        [
            "CREATE TABLE",
            "WRITE",
            "WRITE",
            "UPDATE",
            "ROLLBACK",
            "REAPPLY",
            "ROLLBACK",
            "ROLLBACK",
            "REAPPLY"
        ]
    );
}

#[test]
fn delta_table_in_a_local_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("table");
    std::fs::create_dir_all(&out).unwrap();
    let dest = Dest {
        url: out.display().to_string(),
        flags: Vec::new(),
        env: Vec::new(),
        versioned: false,
        fetch: Box::new(|to: &Path| copy_dir(&out, to)),
        delta: true,
    };
    delta_table_walk(&dest);
    // Nothing of the table is moved aside: its files stay for time travel.
    assert!(
        rewind_testkit::files_below(&out.join("_rewind/staging"))
            .iter()
            .all(|p| !p.to_string_lossy().ends_with(".parquet.kept"))
    );
}

#[test]
fn delta_table_in_a_versioned_bucket() {
    let server = S3Server::start_moto();
    server.create_bucket("delta-lake", true);
    let dest = Dest {
        delta: true,
        ..s3_dest(&server, "delta-lake", true)
    };
    delta_table_walk(&dest);
}

#[test]
fn delta_table_in_an_unversioned_bucket() {
    let server = S3Server::start_s3s();
    server.create_bucket("delta-plain", false);
    let dest = Dest {
        delta: true,
        ..s3_dest(&server, "delta-plain", false)
    };
    delta_table_walk(&dest);
}

/// A Delta table at --dest that does not fit the job's output (other columns, other
/// partitioning) is refused before anything runs, naming what does not fit; the table is left
/// as it was.
#[test]
fn a_delta_table_of_another_layout_is_refused() {
    use std::sync::Arc;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("archive");
    common::generate(&src, ORG, "2024-05-01T00", "1", "0.05", &seed("7"), &[]);
    let table = tmp.path().join("table");
    let store: Arc<dyn rewind_common::storage::OutputStore> =
        Arc::new(rewind_common::storage::LocalOutput::new(&table));
    let other = arrow_schema::Schema::new(vec![arrow_schema::Field::new(
        "order_id",
        arrow_schema::DataType::Int64,
        false,
    )]);
    rewind_delta::DeltaTable::new(store.clone())
        .create(&other, &[])
        .unwrap();
    let before = rewind_testkit::files_below(&table);
    let out = Command::new(REWIND)
        .args([
            "run",
            "--source",
            src.to_str().unwrap(),
            "--org",
            ORG,
            "--start",
            "2024-05-01T00",
            "--end",
            "2024-05-01T01",
            "--dest",
            table.to_str().unwrap(),
            "--table-format",
            "delta",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("does not fit") && stderr.contains("event_id") && stderr.contains("date"),
        "{stderr}"
    );
    assert_eq!(
        rewind_testkit::files_below(&table),
        before,
        "nothing written"
    );
}
