//! Decode-only throughput, in MB of input per CPU-second, against serde_json on the same bytes.
//!
//!     cargo bench -p rewind-worker --bench decode            # 256 MB of generated events
//!     REWIND_BENCH_MB=64 cargo bench -p rewind-worker --bench decode
//!     REWIND_BENCH_PROFILE=hard cargo bench -p rewind-worker --bench decode   # the hard profile
//!     REWIND_BENCH_ONLY=rewind cargo bench ...   # Rewind's decoder alone, no serde_json runs
//!
//! CPU time is this thread's on-CPU time (`/proc/thread-self/schedstat`), so the figures are
//! per CPU-second whatever else the machine is doing; compare the ratios, not absolute times.

use rewind_common::OrgId;
use rewind_worker::decode::{Decoder, DecoderConfig, Item};
use rewind_worker::record::Rows;

fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    s.split_whitespace()
        .next()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1e9
}

fn measure(name: &str, bytes: usize, reps: usize, mut f: impl FnMut() -> u64) -> f64 {
    let mut best = 0.0f64;
    let mut check = 0;
    for _ in 0..reps {
        let c0 = cpu_seconds();
        check = f();
        let cpu = (cpu_seconds() - c0).max(1e-9);
        let rate = bytes as f64 / 1e6 / cpu;
        best = best.max(rate);
    }
    println!("{name:<44} {best:>8.0} MB/CPU-s   (items: {check})");
    best
}

fn main() {
    // The allocator settings the `rewind` binary runs with (glibc arenas and thresholds).
    rewind_common::malloc::tune_allocator();
    let mb: usize = std::env::var("REWIND_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    // REWIND_BENCH_PROFILE=hard: the `rewind gen --profile hard` events (escapes, shuffled and
    // escaped keys, pretty-printed events, unicode, numbers of every shape).
    let profile: rewind_gen::Profile = std::env::var("REWIND_BENCH_PROFILE")
        .unwrap_or_else(|_| "easy".into())
        .parse()
        .unwrap();
    let data = rewind_gen::sample_bytes_with(42, "TN-bench", mb << 20, profile);
    let org = OrgId::parse("TN-bench").unwrap();
    println!(
        "input: {:.0} MB of generated events ({profile:?} profile), best of 3",
        data.len() as f64 / 1e6
    );

    let ours = measure(
        "rewind decoder (split + fields + UTF-8)",
        data.len(),
        3,
        || {
            let mut d = Decoder::new(&data[..], DecoderConfig::default());
            let mut n = 0;
            while let Some(item) = d.next().unwrap() {
                if let Item::Event(_) = item {
                    n += 1;
                }
            }
            n
        },
    );
    let rows = measure("rewind decoder + row extraction", data.len(), 3, || {
        let mut d = Decoder::new(&data[..], DecoderConfig::default());
        let mut rows = Rows::default();
        let schema = rewind_worker::record::schema();
        let mut n = 0;
        while let Some(Item::Event(e)) = d.next().unwrap() {
            rows.push(&e, &org, None);
            n += 1;
            if rows.len() == 16384 {
                std::hint::black_box(rows.finish(&schema));
            }
        }
        n
    });
    // REWIND_BENCH_ONLY=rewind: Rewind's decoder alone (A/B of two builds).
    if std::env::var("REWIND_BENCH_ONLY").is_ok_and(|v| v == "rewind") {
        return;
    }
    let validate = measure(
        "serde_json stream, validate only (IgnoredAny)",
        data.len(),
        3,
        || {
            let mut n = 0;
            for v in
                serde_json::Deserializer::from_slice(&data).into_iter::<serde::de::IgnoredAny>()
            {
                std::hint::black_box(v.unwrap());
                n += 1;
            }
            n
        },
    );
    let full = measure(
        "serde_json stream, full parse (Value)",
        data.len(),
        3,
        || {
            let mut n = 0;
            for v in serde_json::Deserializer::from_slice(&data).into_iter::<serde_json::Value>() {
                std::hint::black_box(v.unwrap());
                n += 1;
            }
            n
        },
    );
    println!(
        "ratios: ours/serde_json-validate {:.2}x, ours/serde_json-Value {:.2}x, with rows {:.2}x of decode-only",
        ours / validate,
        ours / full,
        rows / ours
    );
}
