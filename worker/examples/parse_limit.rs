//! The parse limit `bench/compare.py` sets beside `rewind run` and DuckDB: every file under a
//! directory read and its concatenated events (`{..}{..}`, any whitespace between) parsed by
//! serde_json into the event's top-level fields, `data` kept as raw JSON text — what decoding
//! alone costs with the usual Rust JSON parser, before any column is built or page written.
//!
//!     cargo run --release -p rewind-worker --example parse_limit -- DIR
//!
//! Prints `{"events": N, "bytes": B, "files": F}`; one thread. A file that does not parse to
//! its end exits 1 naming the file and the byte offset: the limit is only a limit for an
//! archive every event of which it reads.

use std::borrow::Cow;
use std::path::Path;

use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Deserialize)]
#[allow(dead_code)] // read to be parsed, not used
struct Event<'a> {
    #[serde(borrow)]
    event_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    cid: Option<Cow<'a, str>>,
    #[serde(borrow)]
    org_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    domain: Option<Cow<'a, str>>,
    #[serde(borrow)]
    timestamp: Option<Cow<'a, str>>,
    // Numbers of every shape (3, "3", 1.7e12): kept as their JSON text.
    #[serde(borrow)]
    schema_version: Option<&'a RawValue>,
    #[serde(borrow)]
    arrival_epoch: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: parse_limit DIR");
        std::process::exit(2);
    };
    let mut paths = Vec::new();
    if let Err(e) = files(Path::new(&dir), &mut paths) {
        eprintln!("listing {dir}: {e}");
        std::process::exit(2);
    }
    paths.sort();
    let (mut events, mut bytes) = (0u64, 0u64);
    for path in &paths {
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("reading {}: {e}", path.display());
                std::process::exit(2);
            }
        };
        bytes += data.len() as u64;
        let mut stream = serde_json::Deserializer::from_slice(&data).into_iter::<Event<'_>>();
        for item in stream.by_ref() {
            match item {
                Ok(_) => events += 1,
                Err(e) => {
                    eprintln!(
                        "{}: stops parsing at byte {}: {e}",
                        path.display(),
                        stream.byte_offset()
                    );
                    std::process::exit(1);
                }
            }
        }
    }
    println!(
        "{{\"events\": {events}, \"bytes\": {bytes}, \"files\": {}}}",
        paths.len()
    );
}
