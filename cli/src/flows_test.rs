//! `rewind flows test`: runs a flow config on a sample of real events and shows what it would
//! do, per flow, with before/after diffs of a few events. Writes nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;
use rewind_common::job::Treatment;
use rewind_common::request::DEFAULT_MAX_EVENT_BYTES;
use rewind_common::{HourRange, JobId, JobSpec, Layout, Location, OrgId, RequestError};
use rewind_flows::{Applied, FlowSet};
use rewind_worker::decode::{Decoder, DecoderConfig, Item};
use rewind_worker::pipeline::open_decoded;
use serde_json::{Value, json};

use crate::{Failure, S3Args};

#[derive(Debug, Args)]
pub struct FlowsTestArgs {
    /// The flow config to try (JSON or YAML).
    #[arg(long, value_name = "FILE")]
    pub flows: PathBuf,
    /// The archive: a directory, s3://BUCKET[/PREFIX], gs://BUCKET[/PREFIX] or az://CONTAINER[/PREFIX].
    #[arg(long)]
    pub source: String,
    #[arg(long)]
    pub org: String,
    /// First hour, YYYY-MM-DD or YYYY-MM-DDTHH (UTC).
    #[arg(long)]
    pub start: String,
    /// Last hour, inclusive.
    #[arg(long)]
    pub end: String,
    #[arg(long, default_value = rewind_common::layout::DEFAULT_LAYOUT)]
    pub layout: String,
    /// Events to sample, spread over the hours of the range.
    #[arg(long, default_value_t = 1000)]
    pub sample: usize,
    /// Events shown (before/after) per flow.
    #[arg(long, default_value_t = 3)]
    pub show: usize,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub s3: S3Args,
}

/// What one flow did to the sample.
#[derive(Debug, Default, serde::Serialize)]
struct FlowReport {
    matched: u64,
    repaired: u64,
    unchanged: u64,
    failed: u64,
    unrecoverable: u64,
    filtered: u64,
    examples: Vec<Value>,
}

pub fn run(args: FlowsTestArgs) -> Result<(), Failure> {
    let text = std::fs::read_to_string(&args.flows).map_err(|e| {
        RequestError::new(
            "--flows",
            format!("cannot read {}: {e}", args.flows.display()),
        )
    })?;
    let flows = FlowSet::parse(&text).map_err(|e| RequestError::new("--flows", e.to_string()))?;
    let org = OrgId::parse(&args.org)?;
    let range = HourRange::parse(
        &args.start,
        &args.end,
        rewind_common::range::DEFAULT_MAX_HOURS,
    )?;
    let layout = Layout::parse(&args.layout)?;
    let location = Location::parse("--source", &args.source, &org)?;
    if args.sample == 0 {
        return Err(Failure::BadRequest(
            "invalid --sample: must be at least 1".into(),
        ));
    }
    let s3 = args.s3.options();
    s3.validate()?;
    let spec = JobSpec {
        job: JobId::generate(),
        org,
        range,
        layout,
        arrival_filter: false,
        max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
        max_attempts: 1,
        treatment: Treatment::default(),
        sink: Default::default(),
        object: None,
        // Only the source is read; nothing is written.
        places: rewind_common::request::JobLocations::new(
            location.clone(),
            Location::Local("/nonexistent".into()),
        ),
        table_format: Default::default(),
        repair: None,
        guard: None,
        tenant_max_shards: None,
        tenant_budget: None,
        partition_by: None,
        ingest: false,
        ingest_to: None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::Job(format!("starting the runtime: {e}")))?;
    let (source, plans) = runtime.block_on(async {
        let source = rewind_s3::open_source(&location, &s3)
            .await
            .map_err(|e| Failure::Job(format!("opening the source: {e}")))?;
        let plans = rewind_coordinator::plan::pin(source.clone(), &spec)
            .await
            .map_err(|e| Failure::Job(format!("listing the source: {e}")))?;
        Ok::<_, Failure>((source, plans))
    })?;

    let names: Vec<String> = flows.names().map(str::to_string).collect();
    let mut reports: Vec<FlowReport> = names.iter().map(|_| FlowReport::default()).collect();
    let (mut sampled, mut unmatched, mut unmatched_unrecoverable, mut damaged) = (0u64, 0, 0, 0);
    let mut hours_read = 0;
    // Spread over the hours that have objects (a range often has many empty hours).
    let with_objects = plans.iter().filter(|p| p.objects > 0).count();
    let per_hour = args.sample.div_ceil(with_objects.max(1)).max(1);
    let cfg = DecoderConfig::default();
    // Storage is synchronous and may wait on the runtime: read from a blocking thread.
    let (sampled_out, reports_out) = runtime.block_on(async {
        tokio::task::spawn_blocking(move || -> Result<_, Failure> {
            'hours: for packed in &plans {
                let plan = packed.unpack();
                let mut taken = 0;
                if !plan.objects.is_empty() {
                    hours_read += 1;
                }
                for object in &plan.objects {
                    let raw = source
                        .open(object)
                        .map_err(|e| Failure::Job(format!("opening {}: {e}", object.key)))?;
                    let (_, reader) = open_decoded(raw)
                        .map_err(|e| Failure::Job(format!("reading {}: {e}", object.key)))?;
                    let mut dec = Decoder::new(reader, cfg);
                    while let Some(item) = dec
                        .next()
                        .map_err(|e| Failure::Job(format!("reading {}: {e}", object.key)))?
                    {
                        let ev = match item {
                            Item::Event(ev) => ev,
                            Item::Damaged(_) => {
                                damaged += 1;
                                continue;
                            }
                        };
                        sampled += 1;
                        taken += 1;
                        let show = |r: &FlowReport| r.examples.len() < args.show;
                        let at = format!("{}@{}", object.key, ev.offset);
                        match flows.apply(ev.text()) {
                            Applied::Pass => unmatched += 1,
                            Applied::Unrecoverable { flow: None, .. } => {
                                unmatched_unrecoverable += 1
                            }
                            Applied::Unrecoverable { flow: Some(f), .. } => {
                                reports[f].matched += 1;
                                reports[f].unrecoverable += 1;
                            }
                            Applied::Filtered { flow } => {
                                reports[flow].matched += 1;
                                reports[flow].filtered += 1;
                            }
                            Applied::Unchanged { flow } => {
                                reports[flow].matched += 1;
                                reports[flow].unchanged += 1;
                            }
                            Applied::Changed { flow, text } => {
                                let r = &mut reports[flow];
                                r.matched += 1;
                                r.repaired += 1;
                                if show(r) {
                                    let before: Value =
                                        serde_json::from_str(ev.text()).unwrap_or(Value::Null);
                                    let after: Value =
                                        serde_json::from_str(&text).unwrap_or(Value::Null);
                                    let mut changes = Vec::new();
                                    diff("$", &before, &after, &mut changes);
                                    r.examples.push(json!({"at": at, "changes": changes}));
                                }
                            }
                            Applied::Failed { flow, step, reason } => {
                                let op = flows.step_op(flow, step);
                                let r = &mut reports[flow];
                                r.matched += 1;
                                r.failed += 1;
                                if show(r) {
                                    r.examples.push(json!({"at": at,
                                        "failed": format!("steps[{step}] ({op}): {reason}")}));
                                }
                            }
                        }
                        if sampled as usize >= args.sample {
                            break 'hours;
                        }
                        if taken >= per_hour {
                            continue 'hours;
                        }
                    }
                }
            }
            Ok((
                json!({"sampled": sampled, "hours": hours_read, "damaged_skipped": damaged,
                       "unmatched": {"pass": unmatched, "unrecoverable": unmatched_unrecoverable}}),
                reports,
            ))
        })
        .await
        .map_err(|e| Failure::Job(format!("sampling: {e}")))?
    })?;
    if args.json {
        let by_flow: BTreeMap<&str, &FlowReport> =
            names.iter().map(String::as_str).zip(&reports_out).collect();
        let mut out = sampled_out;
        out["flows"] = serde_json::to_value(by_flow).unwrap_or(Value::Null);
        println!("{out}");
        return Ok(());
    }
    println!(
        "sampled {} events from {} hours of {} ({} damaged ranges skipped); nothing written",
        sampled_out["sampled"], sampled_out["hours"], location, sampled_out["damaged_skipped"]
    );
    for (name, r) in names.iter().zip(&reports_out) {
        println!(
            "flow {name}: {} matched: {} repaired, {} unchanged, {} failed, {} unrecoverable, {} filtered",
            r.matched, r.repaired, r.unchanged, r.failed, r.unrecoverable, r.filtered
        );
        for ex in &r.examples {
            println!("  {}", ex["at"].as_str().unwrap_or(""));
            if let Some(f) = ex["failed"].as_str() {
                println!("    failed: {f}");
            }
            for c in ex["changes"].as_array().into_iter().flatten() {
                println!("    {}", c.as_str().unwrap_or(""));
            }
        }
    }
    println!(
        "no flow matched: {} pass, {} unrecoverable",
        sampled_out["unmatched"]["pass"], sampled_out["unmatched"]["unrecoverable"]
    );
    Ok(())
}

/// The differences between two values as lines: `- path: old`, `+ path: new`, `~ path: old -> new`.
fn diff(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    const CUT: usize = 80;
    let short = |v: &Value| {
        let s = v.to_string();
        match s.char_indices().nth(CUT) {
            Some((i, _)) => format!("{}…", &s[..i]),
            None => s,
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                let p = format!("{path}.{k}");
                match y.get(k) {
                    Some(w) => diff(&p, v, w, out),
                    None => out.push(format!("- {p}: {}", short(v))),
                }
            }
            for (k, w) in y {
                if !x.contains_key(k) {
                    out.push(format!("+ {path}.{k}: {}", short(w)));
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                diff(&format!("{path}[{i}]"), v, w, out);
            }
        }
        _ if a == b => {}
        _ => out.push(format!("~ {path}: {} -> {}", short(a), short(b))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_name_changed_removed_and_added_paths() {
        let a = json!({"a": {"c": "brl", "raw": "x", "n": [1, 2]}, "k": 1});
        let b = json!({"a": {"c": "BRL", "n": [1, 3]}, "k": 1, "new": true});
        let mut out = Vec::new();
        diff("$", &a, &b, &mut out);
        assert_eq!(
            out,
            vec![
                "~ $.a.c: \"brl\" -> \"BRL\"",
                "- $.a.raw: \"x\"",
                "~ $.a.n[1]: 2 -> 3",
                "+ $.new: true"
            ]
        );
    }
}
