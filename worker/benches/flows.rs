//! The cost of repair flows: the shard pipeline's event path (decode, route, rows, Parquet)
//! with no treatment against the same with a three-flow config, on generated events, in the
//! same run. The target: flows cost at most 30% of throughput when about 10% of events match,
//! and events no flow changed are never re-serialised (counted here).
//!
//!     cargo bench -p rewind-worker --bench flows              # 128 MB of generated events
//!     REWIND_BENCH_MB=32 cargo bench -p rewind-worker --bench flows
//!
//! CPU time is this thread's (`/proc/thread-self/schedstat`); best of 3, the two configs run
//! alternately; compare ratios.

use rewind_common::job::{JobSpec, Treatment};
use rewind_common::storage::LocalOutput;
use rewind_common::{HourRange, JobId, Layout, OrgId};
use rewind_worker::decode::{Decoder, DecoderConfig, Item};
use rewind_worker::route::{Outcome, Router, Scratch, Seen};
use rewind_worker::sink::ParquetSink;

const FLOWS: &str = r#"{"flows": [
  {"name": "fix-currency",
   "conditions": [{"op": "Test", "path": "$.event_type", "value": {"value": "transaction-created"}},
                  {"op": "Test", "path": "$.data.amount.currency", "value": {"regex": "^(brl|usd)$"}}],
   "steps": [{"op": "Replace", "path": "$.data.amount.currency", "match": "(?U)^.*$", "value": "BRL"},
             {"op": "Cast", "path": "$.data.installments", "from": "Numeric", "to": "String"}]},
  {"name": "eur-statements", "outcome": "unrecoverable",
   "conditions": [{"op": "Test", "path": "$.domain", "value": {"value": "statements"}},
                  {"op": "Test", "path": "$.data.amount.currency", "value": {"value": "EUR"}}]},
  {"name": "big-payments",
   "conditions": [{"op": "Test", "path": "$.event_type", "value": {"value": "payment-received"}},
                  {"op": "Test", "path": "$.data.items", "value": {"size": {"gt": 2}}}],
   "steps": [{"op": "Remove", "path": "$.data.description"}]}
]}"#;

fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    s.split_whitespace()
        .next()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1e9
}

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    events: u64,
    matched: u64,
    reserialised: u64,
}

fn router(flows: Option<&str>) -> Router {
    let spec = JobSpec {
        job: JobId::generate(),
        org: OrgId::parse("TN-bench").unwrap(),
        range: HourRange::parse("2024-01-01T00", "2024-01-01T00", 10).unwrap(),
        layout: Layout::default(),
        arrival_filter: false,
        max_event_bytes: 16 << 20,
        max_attempts: 1,
        treatment: Treatment {
            flows: flows.map(str::to_string),
            ..Treatment::default()
        },
        sink: Default::default(),
        object: None,
        places: rewind_common::request::JobLocations::new(
            rewind_common::Location::Local("/nonexistent/source".into()),
            rewind_common::Location::Local("/nonexistent/dest".into()),
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
    Router::new(&spec, 128).unwrap()
}

/// One pass of the event path; with `out`, rows are written as Parquet there.
fn pass(data: &[u8], r: &Router, out: Option<&LocalOutput>) -> Tally {
    let mut t = Tally::default();
    let mut d = Decoder::new(data, DecoderConfig::default());
    let mut scratch = Scratch::default();
    let mut n = 0;
    let discard = LocalOutput::new(std::env::temp_dir().join("rewind-bench-flows-unused"));
    let mut sink = ParquetSink::new(out.unwrap_or(&discard), |i| format!("part-{i}.parquet"));
    while let Some(Item::Event(ev)) = d.next().unwrap() {
        t.events += 1;
        match r.route(&ev, &mut scratch, None) {
            Outcome::Recovered {
                row,
                repaired,
                flow,
            } => {
                t.matched += u64::from(flow.is_some());
                t.reserialised += u64::from(repaired.is_some());
                sink.rows().append(&row);
            }
            Outcome::Unrecoverable { .. } | Outcome::Failed { .. } | Outcome::Filtered { .. } => {
                t.matched += 1;
            }
        }
        if out.is_some() {
            sink.maybe_flush().unwrap();
        } else if sink.rows().len() == 16384 {
            n += 1;
            std::hint::black_box(sink.rows().finish(&rewind_worker::record::schema()));
        }
    }
    if out.is_some() {
        std::hint::black_box(sink.finish().unwrap());
    }
    std::hint::black_box(n);
    t
}

/// Best of 3 for each of `a` and `b`, run alternately so both see the same machine.
fn best_of(data: &[u8], a: impl Fn() -> Tally, b: impl Fn() -> Tally) -> [(f64, Tally); 2] {
    let mut out = [(0.0f64, Tally::default()); 2];
    for _ in 0..3 {
        for (slot, f) in out.iter_mut().zip([&a as &dyn Fn() -> Tally, &b]) {
            let c0 = cpu_seconds();
            let tally = f();
            let cpu = (cpu_seconds() - c0).max(1e-9);
            *slot = (slot.0.max(data.len() as f64 / 1e6 / cpu), tally);
        }
    }
    out
}

fn main() {
    // The allocator settings the `rewind` binary runs with (glibc arenas and thresholds).
    rewind_common::malloc::tune_allocator();
    let mb: usize = std::env::var("REWIND_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    let data = rewind_gen::sample_bytes(7, "TN-bench", mb << 20);
    let dir = tempfile::tempdir().unwrap();
    let out = LocalOutput::new(dir.path());
    let (plain, with) = (router(None), router(Some(FLOWS)));
    println!(
        "input: {:.0} MB of generated events, best of 3",
        data.len() as f64 / 1e6
    );
    for (label, parquet) in [
        ("decode + route + rows", None),
        ("decode + route + rows + Parquet", Some(&out)),
    ] {
        let [(base, t0), (flows, t1)] = best_of(
            &data,
            || pass(&data, &plain, parquet),
            || pass(&data, &with, parquet),
        );
        println!(
            "{label:<34} no flows {base:>6.0} MB/CPU-s | three flows {flows:>6.0} MB/CPU-s | cost {:>4.1}%",
            (1.0 - flows / base) * 100.0
        );
        println!(
            "  events {}: matched {} ({:.1}%), re-serialised {} (no flows: {})",
            t1.events,
            t1.matched,
            t1.matched as f64 * 100.0 / t1.events.max(1) as f64,
            t1.reserialised,
            t0.reserialised
        );
    }
    // Dedup: what the table of seen keys costs per event, and its memory per distinct event.
    let dedup_pass = |seen: Option<&mut Seen>| {
        let mut d = Decoder::new(&data[..], DecoderConfig::default());
        let mut scratch = Scratch::default();
        let mut seen = seen;
        let mut kept = 0u64;
        while let Some(Item::Event(ev)) = d.next().unwrap() {
            if let Outcome::Recovered { .. } = plain.route(&ev, &mut scratch, seen.as_deref_mut()) {
                kept += 1;
            }
        }
        kept
    };
    // Best of 3 each, alternating, like the flows above.
    let (mut without, mut with) = (f64::MAX, f64::MAX);
    let mut seen = Seen::new(rewind_common::job::DedupKey::EventIdTimestamp);
    let mut kept = 0;
    for _ in 0..3 {
        let c0 = cpu_seconds();
        dedup_pass(None);
        without = without.min(cpu_seconds() - c0);
        seen = Seen::new(rewind_common::job::DedupKey::EventIdTimestamp);
        let c0 = cpu_seconds();
        kept = dedup_pass(Some(&mut seen));
        with = with.min(cpu_seconds() - c0);
    }
    println!(
        "dedup (event_id,timestamp): {} distinct events kept, table {:.1} MB = {:.0} bytes per event, cost {:.1}% of decode + route",
        kept,
        seen.bytes() as f64 / 1e6,
        seen.bytes() as f64 / seen.len().max(1) as f64,
        (with / without - 1.0) * 100.0
    );
}
