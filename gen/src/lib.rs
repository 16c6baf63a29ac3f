#![doc = include_str!("../README.md")]

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

/// A small, fast, portable PRNG (splitmix64): the output never changes across versions.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn chance(&mut self, per_thousand: u64) -> bool {
        self.below(1000) < per_thousand
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn uuid(&mut self) -> String {
        let a = self.next_u64();
        let b = self.next_u64();
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | (b >> 48) & 0x3fff,
            b & 0xffff_ffff_ffff
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    /// A mix of plain, gzip, zstd and gzip without a `.gz` suffix.
    Mixed,
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Compression::None),
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            "mixed" => Ok(Compression::Mixed),
            other => Err(format!(
                "unknown compression {other:?} (none|gzip|zstd|mixed)"
            )),
        }
    }
}

/// What the generated events look like. `easy`: compact JSON in the usual key order (some
/// `data`-first), escapes only where JSON needs them. `hard`, what real archives also hold: 15%
/// of events written with `\uXXXX` escapes (non-ASCII, some ASCII, `\/`, and now and then in
/// the top-level keys), 10% with shuffled top-level keys, 5% pretty-printed, more unicode,
/// numbers of every shape (`-0`, `1E10`, `2.5e-7`, integers past 64 bits) and deeper `data`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Profile {
    #[default]
    Easy,
    Hard,
}

impl std::str::FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "easy" => Ok(Profile::Easy),
            "hard" => Ok(Profile::Hard),
            other => Err(format!("unknown profile {other:?} (easy|hard)")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GenConfig {
    pub org: String,
    /// First hour, as epoch hours.
    pub start_epoch_hour: i64,
    pub hours: u32,
    pub objects_per_hour: u32,
    /// Uncompressed size each object is filled up to.
    pub object_bytes: u64,
    pub seed: u64,
    pub compression: Compression,
    pub profile: Profile,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GenSummary {
    pub objects: u64,
    pub events: u64,
    /// Uncompressed event bytes.
    pub bytes: u64,
    /// Bytes written to disk (after compression).
    pub stored_bytes: u64,
}

const EVENT_TYPES: &[(&str, &str)] = &[
    ("transaction-created", "transactions"),
    ("authorization-approved", "authorizations"),
    ("authorization-denied", "authorizations"),
    ("account-updated", "accounts"),
    ("card-blocked", "cards"),
    ("statement-closed", "statements"),
    ("payment-received", "payments"),
];

const TEXTS: &[&str] = &[
    "Compra aprovada",
    "Pagamento recebido — obrigado!",
    "Loja \"Central\" & Cia",
    "C:\\temp\\recibo.pdf",
    "payload }{ boundary }{\"event_id\":\"fake\"}",
    "linha 1\nlinha 2\ttab",
    "São Paulo · Ação · Übermäßig · 日本語 · 😀🚀",
    "{\"nested\":\"json in a string\"}",
    "\u{0001}control\u{001f}",
    "plain ascii merchant",
    "quote \" and backslash \\ and slash /",
];

const CITIES: &[&str] = &[
    "São Paulo",
    "Rio de Janeiro",
    "Curitiba",
    "Belo Horizonte",
    "New York",
];

fn random_value(rng: &mut Rng, depth: u32) -> Value {
    match rng.below(if depth >= 3 { 4 } else { 6 }) {
        0 => json!(rng.below(1_000_000) as i64 - 500_000),
        1 => json!(rng.below(100_000) as f64 / 100.0),
        2 => json!(*rng.pick(TEXTS)),
        3 => json!(rng.chance(500)),
        4 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let mut m = Map::new();
            for k in 0..rng.below(4) {
                m.insert(
                    format!("k{k}_{}", rng.below(100)),
                    random_value(rng, depth + 1),
                );
            }
            Value::Object(m)
        }
    }
}

fn iso_ms(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// One event filed under the hour starting at `hour_ms`, serialised.
pub fn event(rng: &mut Rng, org: &str, hour_ms: i64) -> String {
    event_with(rng, org, hour_ms, Profile::Easy)
}

/// Numbers as real producers write them (text kept as written under arbitrary precision).
const NUMBERS: &[&str] = &[
    "-0",
    "1E10",
    "2.5e-7",
    "123456789012345678901234567890",
    "-0.000001",
    "3.0",
    "2E+2",
    "-9223372036854775809",
    "0.1",
];

const HARD_TEXTS: &[&str] = &[
    "Ünïcödé ñ ç ß ø å",
    "中文字符 测试 · 日本語のテキスト · 한국어",
    "emoji 😀🚀👍🏽 and a flag 🇧🇷",
    "right-to-left: עברית العربية",
    "zero\u{0}width\u{200b}joiner",
    "tab\there, newline\nthere, \\ backslash",
];

fn hard_value(rng: &mut Rng, depth: u32) -> Value {
    match rng.below(if depth >= 5 { 4 } else { 7 }) {
        0 => {
            let n: &&str = rng.pick(NUMBERS);
            serde_json::from_str(n).unwrap_or(Value::Null)
        }
        1 => json!(*rng.pick(HARD_TEXTS)),
        2 => random_value(rng, 3),
        3 => Value::Null,
        4 => Value::Array(
            (0..rng.below(5))
                .map(|_| hard_value(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let mut m = Map::new();
            for k in 0..rng.below(5) {
                let key = if rng.chance(200) {
                    format!("ключ_{k}")
                } else {
                    format!("f{k}")
                };
                m.insert(key, hard_value(rng, depth + 1));
            }
            Value::Object(m)
        }
    }
}

/// How one event is written.
#[derive(Debug, Clone, Copy, Default)]
struct Style {
    /// Non-ASCII (and some ASCII) characters as `\uXXXX`, `/` as `\/`.
    escaped: bool,
    /// The top-level keys escaped too.
    keys: bool,
    /// Spaces and newlines between tokens.
    pretty: bool,
}

fn write_str(out: &mut String, s: &str, escaped: bool, rng: &mut Rng) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '/' if escaped && rng.chance(500) => out.push_str("\\/"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if escaped && (!c.is_ascii() || rng.chance(50)) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    // Upper or lower case hex: both occur.
                    if rng.chance(500) {
                        out.push_str(&format!("\\u{unit:04X}"));
                    } else {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_value(out: &mut String, v: &Value, style: Style, rng: &mut Rng) {
    let gap = |out: &mut String| {
        if style.pretty {
            out.push_str(if out.len().is_multiple_of(3) {
                "\n  "
            } else {
                " "
            });
        }
    };
    match v {
        Value::String(s) => write_str(out, s, style.escaped, rng),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                gap(out);
                write_value(out, x, style, rng);
            }
            out.push(']');
        }
        Value::Object(m) => {
            out.push('{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                gap(out);
                write_str(out, k, style.escaped, rng);
                out.push(':');
                gap(out);
                write_value(out, x, style, rng);
            }
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// One event, as `profile` writes it.
pub fn event_with(rng: &mut Rng, org: &str, hour_ms: i64, profile: Profile) -> String {
    let (event_type, domain) = *rng.pick(EVENT_TYPES);
    let mut arrival = hour_ms + rng.below(3_600_000) as i64;
    if rng.chance(10) {
        // A late arrival: filed up to two days after it arrived.
        arrival -= (1 + rng.below(48) as i64) * 3_600_000;
    }
    let timestamp = iso_ms(arrival - rng.below(5_000) as i64);
    let items: Vec<Value> = (0..rng.below(4))
        .map(|i| {
            json!({"sku": format!("SKU-{}-{i}", rng.below(10_000)), "qty": 1 + rng.below(5),
                   "price": rng.below(100_000) as f64 / 100.0})
        })
        .collect();
    let mut data = json!({
        "account_id": rng.below(10_000_000),
        "amount": {"value": rng.below(10_000_000) as f64 / 100.0,
                   "currency": *rng.pick(&["BRL", "USD", "brl", "usd", "EUR"])},
        "items": items,
        "description": *rng.pick(TEXTS),
        "merchant": {"name": *rng.pick(TEXTS), "address": {"city": *rng.pick(CITIES), "country": "BR"}},
        "installments": 1 + rng.below(12),
        "extra": random_value(rng, 0),
    });
    if rng.chance(200) {
        data["raw_message"] = json!("0200|4111********1111|000000010000|}{|");
    }
    let hard = profile == Profile::Hard;
    if hard {
        data["note"] = json!(*rng.pick(HARD_TEXTS));
        data["deep"] = hard_value(rng, 0);
        let n: &&str = rng.pick(NUMBERS);
        data["n"] = serde_json::from_str(n).unwrap_or(Value::Null);
    }
    let mut event: Vec<(&str, Value)> = Vec::with_capacity(9);
    let fields = [
        ("event_id", json!(rng.uuid())),
        ("cid", json!(rng.uuid())),
        ("org_id", json!(org)),
        ("event_type", json!(event_type)),
        ("domain", json!(domain)),
        ("schema_version", json!(1 + rng.below(5))),
        ("arrival_epoch", json!(arrival)),
        ("timestamp", json!(timestamp)),
        ("data", data),
    ];
    // Mostly the usual order; sometimes `data` first, as some producers write it; hard: 10%
    // in any order.
    if hard && rng.chance(100) {
        let mut fields: Vec<_> = fields.into_iter().collect();
        for i in (1..fields.len()).rev() {
            fields.swap(i, rng.below(i as u64 + 1) as usize);
        }
        event.extend(fields);
    } else if rng.chance(30) {
        let mut fields = fields.into_iter();
        let last = fields.next_back();
        event.extend(last);
        event.extend(fields);
    } else {
        event.extend(fields);
    }
    // Written by hand so the field order above is what is archived.
    let mut out = String::with_capacity(1024);
    let style = if hard {
        let escaped = rng.chance(150);
        Style {
            escaped,
            keys: escaped && rng.chance(100),
            pretty: rng.chance(50),
        }
    } else {
        Style::default()
    };
    if style.escaped || style.pretty {
        out.push('{');
        for (i, (k, v)) in event.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            if style.pretty {
                out.push_str("\n  ");
            }
            let key_style = Style {
                escaped: style.keys,
                ..style
            };
            write_str(&mut out, k, key_style.escaped, rng);
            out.push_str(if style.pretty { ": " } else { ":" });
            write_value(&mut out, v, style, rng);
        }
        out.push_str(if style.pretty { "\n}" } else { "}" });
        return out;
    }
    out.push('{');
    for (i, (k, v)) in event.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(*k).unwrap_or_default());
        out.push(':');
        out.push_str(&serde_json::to_string(v).unwrap_or_default());
    }
    out.push('}');
    out
}

/// Concatenated events (no delimiter) of at least `bytes` bytes, for benchmarks.
pub fn sample_bytes(seed: u64, org: &str, bytes: usize) -> Vec<u8> {
    sample_bytes_with(seed, org, bytes, Profile::Easy)
}

/// [`sample_bytes`] of a profile (the hard one: escapes, shuffled and escaped keys,
/// pretty-printed events, unicode, numbers of every shape).
pub fn sample_bytes_with(seed: u64, org: &str, bytes: usize, profile: Profile) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(bytes + 4096);
    let hour_ms = 1_711_929_600_000;
    while out.len() < bytes {
        out.extend_from_slice(event_with(&mut rng, org, hour_ms, profile).as_bytes());
    }
    out
}

/// Writes an archive below the directory `out`.
pub fn generate(out: &Path, cfg: &GenConfig) -> io::Result<GenSummary> {
    generate_with(cfg, |key, bytes| {
        let path = out.join(key);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::write(path, bytes)
    })
}

/// Generates an archive, handing each object (its key below the archive's root, and its
/// stored bytes) to `put` in key order.
pub fn generate_with(
    cfg: &GenConfig,
    mut put: impl FnMut(&str, &[u8]) -> io::Result<()>,
) -> io::Result<GenSummary> {
    let mut rng = Rng::new(cfg.seed);
    let mut summary = GenSummary::default();
    let per_hour = cfg.objects_per_hour.max(1);
    for h in 0..cfg.hours as i64 {
        let hour_ms = (cfg.start_epoch_hour + h) * 3_600_000;
        let hour = DateTime::<Utc>::from_timestamp_millis(hour_ms).unwrap_or_default();
        let dir = hour.format("main_stream/%Y/%m/%d/%H").to_string();
        for k in 0..per_hour {
            let second = (k as u64 * 3600 / per_hour as u64) as i64;
            let t = hour + chrono::Duration::seconds(second);
            let ndjson = rng.chance(100);
            let mut body = Vec::with_capacity(cfg.object_bytes as usize + 4096);
            while (body.len() as u64) < cfg.object_bytes {
                body.extend_from_slice(
                    event_with(&mut rng, &cfg.org, hour_ms, cfg.profile).as_bytes(),
                );
                if ndjson {
                    body.push(b'\n');
                }
                summary.events += 1;
            }
            summary.bytes += body.len() as u64;
            summary.objects += 1;
            let mode = match cfg.compression {
                Compression::Mixed => rng.below(4),
                Compression::None => 0,
                Compression::Gzip => 1,
                Compression::Zstd => 2,
            };
            let (suffix, stored) = match mode {
                0 => ("", body),
                1 => (".gz", gzip(&body)?),
                2 => (".zst", zstd::encode_all(&body[..], 3)?),
                _ => ("", gzip(&body)?),
            };
            let name = format!(
                "dataplatform-{}-{:06}-{}-{:08x}{suffix}",
                cfg.org,
                summary.objects,
                t.format("%Y-%m-%d-%H-%M-%S"),
                rng.next_u64() as u32
            );
            summary.stored_bytes += stored.len() as u64;
            put(&format!("{dir}/{name}"), &stored)?;
        }
    }
    Ok(summary)
}

fn gzip(body: &[u8]) -> io::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(body)?;
    enc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_valid_json_with_the_reference_fields() {
        let mut rng = Rng::new(7);
        let mut late = 0;
        let mut braces = 0;
        for _ in 0..2000 {
            let text = event(&mut rng, "TN-1", 1_711_929_600_000);
            let v: Value = serde_json::from_str(&text).unwrap();
            for f in [
                "event_id",
                "cid",
                "org_id",
                "event_type",
                "domain",
                "schema_version",
                "arrival_epoch",
                "timestamp",
                "data",
            ] {
                assert!(v.get(f).is_some(), "{f} missing in {text}");
            }
            if v["arrival_epoch"].as_i64().unwrap() < 1_711_929_600_000 {
                late += 1;
            }
            if text.contains("}{") {
                braces += 1;
            }
        }
        assert!((5..=60).contains(&late), "late arrivals: {late} of 2000");
        assert!(braces > 100, "strings with }}{{: {braces}");
    }

    #[test]
    fn same_seed_same_bytes() {
        assert_eq!(sample_bytes(3, "o", 10_000), sample_bytes(3, "o", 10_000));
        assert_ne!(sample_bytes(3, "o", 10_000), sample_bytes(4, "o", 10_000));
    }
}
