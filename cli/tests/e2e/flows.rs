//! Flows, selection and dedup end to end through `rewind run`: the outputs (Parquet, failed and
//! unrecoverable records) and the counts are checked against an oracle written independently
//! with serde_json over the archive.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use crate::common::{self, ok, records, seed};
use rewind_testkit::{archived_events, expected_row, files_below, parquet_rows, run};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_rewind");

fn generate(dir: &Path, hours: &str) {
    let seed = seed("6");
    common::generate(dir, "TN-f", "2024-05-01T10", hours, "0.2", &seed, &[]);
}

fn rewind_run(src: &Path, dest: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "run",
        "--source",
        src.to_str().unwrap(),
        "--org",
        "TN-f",
        "--start",
        "2024-05-01T10",
        "--end",
        "2024-05-01T11",
        "--dest",
        dest.to_str().unwrap(),
        "--json",
        "--workers",
        "2",
    ];
    args.extend_from_slice(extra);
    run(BIN, &args)
}

fn id(v: &Value) -> String {
    v["event_id"].as_str().unwrap().to_string()
}

const FLOWS: &str = r#"{"flows": [
  {"name": "fix-currency",
   "conditions": [{"op": "Test", "path": "$.event_type", "value": {"value": "transaction-created"}},
                  {"op": "Test", "path": "$.data.amount.currency", "value": {"regex": "^(brl|usd)$"}}],
   "steps": [{"op": "Replace", "path": "$.data.amount.currency", "match": "(?U)^.*$", "value": "BRL"},
             {"op": "Cast", "path": "$.data.installments", "from": "Numeric", "to": "String"}]},
  {"name": "drop-cards", "outcome": "unrecoverable",
   "conditions": [{"op": "Test", "path": "$.domain", "value": {"value": "cards"}}]},
  {"name": "needs-raw",
   "conditions": [{"op": "Test", "path": "$.event_type", "value": {"value": "payment-received"}}],
   "steps": [{"op": "Remove", "path": "$.data.raw_message"}]}
]}"#;

/// What FLOWS must do to an archive: the same rules, written by hand over serde_json values.
#[derive(Default)]
struct Oracle {
    rows: BTreeMap<String, Value>,
    unrecoverable: BTreeSet<String>,
    failed: BTreeSet<String>,
    repaired: u64,
    fix_matched: u64,
    raw_matched: u64,
}

fn oracle(events: &[rewind_testkit::ArchivedEvent]) -> Oracle {
    let mut want_rows = BTreeMap::new();
    let (mut unrecoverable, mut failed) = (BTreeSet::new(), BTreeSet::new());
    let (mut repaired, mut fix_matched, mut raw_matched) = (0u64, 0u64, 0u64);
    for e in events {
        let mut v = e.value.clone();
        let data = &v["data"];
        if v["event_type"] == "transaction-created"
            && matches!(data["amount"]["currency"].as_str(), Some("brl" | "usd"))
        {
            fix_matched += 1;
            repaired += 1;
            v["data"]["amount"]["currency"] = json!("BRL");
            let n = v["data"]["installments"].to_string();
            v["data"]["installments"] = json!(n);
        } else if v["domain"] == "cards" {
            unrecoverable.insert(id(&v));
            continue;
        } else if v["event_type"] == "payment-received" {
            raw_matched += 1;
            let Some(data) = v["data"].as_object_mut() else {
                unreachable!()
            };
            if data.shift_remove("raw_message").is_none() {
                failed.insert(id(&v));
                continue;
            }
            repaired += 1;
        }
        want_rows.insert(id(&v), expected_row(&v));
    }
    Oracle {
        rows: want_rows,
        unrecoverable,
        failed,
        repaired,
        fix_matched,
        raw_matched,
    }
}

#[test]
fn flows_repair_route_and_fail_events_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("archive"), tmp.path().join("out"));
    generate(&src, "2");
    let flows = tmp.path().join("flows.json");
    fs::write(&flows, FLOWS).unwrap();
    let summary = ok(&rewind_run(
        &src,
        &dest,
        &["--flows", flows.to_str().unwrap()],
    ));

    let events = archived_events(&src);
    let Oracle {
        rows: want_rows,
        unrecoverable,
        failed,
        repaired,
        fix_matched,
        raw_matched,
    } = oracle(&events);
    assert!(fix_matched > 20 && !unrecoverable.is_empty() && failed.len() > 20);

    let rows = parquet_rows(&dest);
    let got: BTreeMap<String, Value> = rows
        .into_iter()
        .map(|mut r| {
            r.as_object_mut().unwrap().remove("_partition");
            (id(&r), r)
        })
        .collect();
    assert_eq!(got.len(), want_rows.len());
    for (k, want) in &want_rows {
        assert_eq!(got.get(k), Some(want), "event {k}");
    }

    let job = summary["job_id"].as_str().unwrap();
    let unrec = records(&dest.join(format!("_unrecoverable/execution_id={job}")));
    let fail = records(&dest.join(format!("_failed/execution_id={job}")));
    let ids = |recs: &[Value]| -> BTreeSet<String> {
        recs.iter()
            .map(|r| id(&serde_json::from_str::<Value>(r["raw"].as_str().unwrap()).unwrap()))
            .collect()
    };
    assert_eq!(ids(&unrec), unrecoverable);
    assert_eq!(ids(&fail), failed);
    // Records carry the original bytes, found again at their offset in the object.
    for r in unrec.iter().chain(&fail) {
        let object = fs::read(src.join(r["source_key"].as_str().unwrap())).unwrap();
        let off = r["byte_offset"].as_u64().unwrap() as usize;
        let len = r["byte_length"].as_u64().unwrap() as usize;
        assert_eq!(
            r["raw"].as_str().unwrap().as_bytes(),
            &object[off..off + len]
        );
    }
    for r in &unrec {
        assert_eq!(r["code"], "unrecoverable");
        assert_eq!(r["flow"], "drop-cards");
    }
    for r in &fail {
        assert_eq!(r["code"], "flow_step");
        assert_eq!(
            (&r["flow"], &r["step"], &r["op"]),
            (&json!("needs-raw"), &json!(0), &json!("Remove"))
        );
        assert!(
            r["reason"]
                .as_str()
                .unwrap()
                .contains("$.data.raw_message selects nothing"),
            "{r}"
        );
    }

    let n = |k: &str| summary[k].as_u64().unwrap();
    assert_eq!(n("recovered"), want_rows.len() as u64);
    assert_eq!(n("unrecoverable"), unrecoverable.len() as u64);
    assert_eq!(n("failed"), failed.len() as u64);
    assert_eq!(n("filtered"), 0);
    assert_eq!(n("repaired"), repaired);
    assert_eq!(n("decoded"), events.len() as u64);
    assert_eq!(
        n("recovered") + n("filtered") + n("failed") + n("unrecoverable"),
        n("decoded")
    );
    let f = &summary["flows"];
    assert_eq!(f["fix-currency"]["matched"], fix_matched);
    assert_eq!(f["fix-currency"]["repaired"], fix_matched);
    assert_eq!(f["drop-cards"]["unrecoverable"], unrecoverable.len() as u64);
    assert_eq!(f["needs-raw"]["matched"], raw_matched);
    assert_eq!(f["needs-raw"]["failed"], failed.len() as u64);
    assert_eq!(
        summary["failed_by_reason"]["flow_step"],
        failed.len() as u64
    );
}

#[test]
fn selection_filters_events_by_type_domain_and_expression() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("archive"), tmp.path().join("out"));
    generate(&src, "1");
    let summary = ok(&rewind_run(
        &src,
        &dest,
        &[
            "--event-type",
            "authorization-*",
            "--event-type",
            "payment-received",
            "--domain",
            "authorizations",
            "--filter",
            "@.data.installments > 6 && match(@.data.amount.currency, '(?i)brl')",
        ],
    ));
    let events = archived_events(&src);
    let (mut by_type, mut by_domain, mut by_filter) = (0u64, 0u64, 0u64);
    let mut want = BTreeSet::new();
    for e in &events {
        let v = &e.value;
        let t = v["event_type"].as_str().unwrap();
        if !(t.starts_with("authorization-") || t == "payment-received") {
            by_type += 1;
        } else if v["domain"] != "authorizations" {
            by_domain += 1;
        } else if !(v["data"]["installments"].as_u64().unwrap() > 6
            && v["data"]["amount"]["currency"]
                .as_str()
                .unwrap()
                .eq_ignore_ascii_case("brl"))
        {
            by_filter += 1;
        } else {
            want.insert(id(v));
        }
    }
    assert!(!want.is_empty() && by_domain > 0);
    let got: BTreeSet<String> = parquet_rows(&dest).iter().map(id).collect();
    assert_eq!(got, want);
    let reasons = &summary["filtered_by_reason"];
    assert_eq!(reasons["event_type"], by_type);
    assert_eq!(reasons["domain"], by_domain);
    assert_eq!(reasons["filter"], by_filter);
    assert_eq!(summary["filtered"], by_type + by_domain + by_filter);
}

/// Writes one object per hour made of the given events (event_id, timestamp).
fn dup_archive(dir: &Path, hours: &[&[(&str, &str)]]) {
    for (h, events) in hours.iter().enumerate() {
        let d = dir.join(format!("main_stream/2024/05/01/{:02}", 10 + h));
        fs::create_dir_all(&d).unwrap();
        let body: String = events
            .iter()
            .map(|(id, ts)| {
                json!({"event_id": id, "org_id": "TN-f", "event_type": "x", "timestamp": ts,
                       "data": {"h": h}})
                .to_string()
            })
            .collect();
        fs::write(d.join("events-000001.json"), body).unwrap();
    }
}

#[test]
fn dedup_within_a_shard_and_across_the_hour_before() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("archive");
    dup_archive(
        &src,
        &[
            &[("e1", "t1"), ("e2", "t1"), ("e1", "t1"), ("e1", "t2")],
            &[("e2", "t1"), ("e3", "t1"), ("e3", "t1")],
        ],
    );
    let case = |name: &str, extra: &[&str]| -> (Value, Vec<(String, i64)>) {
        let dest = tmp.path().join(name);
        let s = ok(&rewind_run(&src, &dest, extra));
        let mut rows: Vec<(String, i64)> = parquet_rows(&dest)
            .iter()
            .map(|r| (id(r), r["data"]["h"].as_i64().unwrap()))
            .collect();
        rows.sort();
        (s, rows)
    };
    let row = |id: &str, h: i64| (id.to_string(), h);

    // event_id: e1 kept once in hour 10; e2 of hour 11 dropped (hour 10 has it); e3 once.
    let (s, rows) = case("by-id", &["--dedup", "event_id"]);
    assert_eq!(rows, vec![row("e1", 0), row("e2", 0), row("e3", 1)]);
    assert_eq!(
        (s["duplicates"].as_u64(), s["filtered"].as_u64()),
        (Some(4), Some(4))
    );
    assert_eq!(s["filtered_by_reason"]["duplicate"], 4);

    // event_id,timestamp: (e1, t2) is another event.
    let (s, rows) = case("by-id-ts", &["--dedup", "event_id,timestamp"]);
    assert_eq!(
        rows,
        vec![row("e1", 0), row("e1", 0), row("e2", 0), row("e3", 1)]
    );
    assert_eq!(s["duplicates"], 3);

    // No look-back: each hour alone.
    let (s, rows) = case(
        "no-window",
        &["--dedup", "event_id", "--dedup-window-hours", "0"],
    );
    assert_eq!(
        rows,
        vec![row("e1", 0), row("e2", 0), row("e2", 1), row("e3", 1)]
    );
    assert_eq!(s["duplicates"], 3);

    // Without --dedup everything is recovered.
    let (s, rows) = case("none", &[]);
    assert_eq!(rows.len(), 7);
    assert_eq!(s["duplicates"], 0);
}

#[test]
fn invalid_flows_and_selections_exit_2_naming_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("archive"), tmp.path().join("out"));
    generate(&src, "1");
    let bad = tmp.path().join("bad.yaml");
    fs::write(
        &bad,
        "flows:\n  - name: fix\n    steps:\n      - {op: Replace, path: '$.data.amount[', match: x, value: y}\n",
    )
    .unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--flows", bad.to_str().unwrap()],
            "invalid --flows: flow \"fix\" (flows[0]) steps[0] (Replace): invalid JSONPath",
        ),
        (
            vec!["--flows", "/nonexistent/flows.json"],
            "invalid --flows: cannot read",
        ),
        (vec!["--filter", "@.x =="], "invalid --filter"),
        (vec!["--domain", ""], "invalid --domain"),
        (vec!["--dedup", "cid"], "invalid --dedup"),
        (
            vec!["--unrecoverable-output", "s3://b/../x"],
            "invalid --unrecoverable-output",
        ),
    ];
    for (extra, message) in cases {
        let out = rewind_run(&src, &dest, &extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(message), "{extra:?}: {err}");
        assert!(!dest.exists(), "nothing is written for {extra:?}");
    }
}

#[test]
fn flows_test_reports_what_a_run_would_do_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("archive");
    generate(&src, "2");
    let flows = tmp.path().join("flows.json");
    fs::write(&flows, FLOWS).unwrap();
    let before = files_below(tmp.path());
    let test = |sample: &str| {
        let out = run(
            BIN,
            &[
                "flows",
                "test",
                "--flows",
                flows.to_str().unwrap(),
                "--source",
                src.to_str().unwrap(),
                "--org",
                "TN-f",
                "--start",
                "2024-05-01T10",
                "--end",
                "2024-05-01T11",
                "--sample",
                sample,
                "--show",
                "2",
                "--json",
            ],
        );
        ok(&out)
    };
    // A sample larger than the archive: every event, the same counts as the oracle.
    let events = archived_events(&src);
    let o = oracle(&events);
    let r = test("1000000");
    assert_eq!(r["sampled"], events.len() as u64);
    assert_eq!(r["hours"], 2);
    let f = &r["flows"];
    assert_eq!(f["fix-currency"]["repaired"], o.fix_matched);
    assert_eq!(
        f["drop-cards"]["unrecoverable"],
        o.unrecoverable.len() as u64
    );
    assert_eq!(f["needs-raw"]["failed"], o.failed.len() as u64);
    assert_eq!(f["needs-raw"]["matched"], o.raw_matched);
    assert_eq!(r["unmatched"]["pass"], o.rows.len() as u64 - o.repaired);
    // Diffs name the repaired paths.
    let ex = &f["fix-currency"]["examples"];
    assert_eq!(ex.as_array().unwrap().len(), 2);
    let changes: Vec<&str> = ex[0]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert!(
        changes[0].starts_with("~ $.data.amount.currency: \""),
        "{changes:?}"
    );
    assert!(changes[0].ends_with("-> \"BRL\""), "{changes:?}");
    assert!(
        changes[1].starts_with("~ $.data.installments: "),
        "{changes:?}"
    );
    // needs-raw's examples (the first matched events, whichever the seed) either removed the
    // field or name the step that could not apply.
    let examples = f["needs-raw"]["examples"].as_array().unwrap();
    assert_eq!(examples.len(), 2, "{examples:?}");
    for e in examples {
        match e["failed"].as_str() {
            Some(why) => assert!(why.contains("steps[0] (Remove)"), "{e}"),
            None => assert!(
                e["changes"][0]
                    .as_str()
                    .unwrap()
                    .starts_with("- $.data.raw_message: "),
                "{e}"
            ),
        }
    }
    // A small sample is spread over both hours.
    let r = test("10");
    assert_eq!(r["sampled"], 10);
    assert_eq!(r["hours"], 2);
    assert_eq!(files_below(tmp.path()), before, "nothing is written");
}

#[test]
fn the_bundled_example_flows_run_on_the_bundled_archive() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = run(
        BIN,
        &[
            "flows",
            "test",
            "--flows",
            root.join("examples/flows.yaml").to_str().unwrap(),
            "--source",
            root.join("examples/archive").to_str().unwrap(),
            "--org",
            "TN-demo",
            "--start",
            "2024-04-01",
            "--end",
            "2024-04-02",
            "--json",
        ],
    );
    let r = ok(&out);
    for flow in [
        "fix-currency",
        "scrub-raw-message",
        "blocked-cards-to-review",
    ] {
        assert!(
            r["flows"][flow]["matched"].as_u64().unwrap() > 0,
            "{flow}: {r}"
        );
    }
    assert_eq!(r["flows"]["fix-currency"]["failed"], 0);
}
