//! `--envelope`: archives of Kafka records (one JSON envelope per record, written by a Kafka
//! sink or a dumper) replayed as the records they were: where in each envelope its value, key,
//! headers, timestamp and partition are. A mapping is a preset or a list of
//! `part=PATH[:encoding]`, e.g. `value=$.payload:string,key=$.key:string,headers=$.headers:pairs,timestamp=$.ts,partition=$.partition`.
//!
//! - Paths are `$` (the whole envelope) or `$.name.name…` (object members).
//! - `value` and `key` encodings: `json` (the member's JSON text, byte for byte as archived),
//!   `string` (a JSON string's content), `base64` (a JSON string of Base64: the bytes). A
//!   missing or `null` key means no key; a missing value is an error (a `null` one a tombstone).
//! - `headers` forms: `object` (`{"name": "value", …}`), `pairs` (`["name", "value", …]`, as
//!   kcat writes them), `list` (`[{"key": "name", "value": "value"}, …]`), `list-base64` (the
//!   same with Base64 values). A `null` header value is a header without a value.
//! - `timestamp`: epoch milliseconds (a number, or a string of digits); `partition`: a number.

use serde_json::value::RawValue;

use crate::RequestError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json,
    String,
    Base64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderForm {
    Object,
    Pairs,
    List,
    ListBase64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Path(Vec<String>);

/// A parsed `--envelope` mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    value: (Path, Encoding),
    key: Option<(Path, Encoding)>,
    headers: Option<(Path, HeaderForm)>,
    timestamp: Option<Path>,
    partition: Option<Path>,
}

/// Headers as archived: name, value (None: a header without a value).
pub type Headers = Vec<(String, Option<Vec<u8>>)>;

/// One record as it was archived.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// None: a tombstone.
    pub value: Option<Vec<u8>>,
    pub key: Option<Vec<u8>>,
    pub headers: Headers,
    pub timestamp: Option<i64>,
    pub partition: Option<i32>,
}

/// The presets: name, mapping, and what they are for.
pub const PRESETS: [(&str, &str, &str); 3] = [
    (
        "kcat",
        "value=$.payload:string,key=$.key:string,headers=$.headers:pairs,timestamp=$.ts,partition=$.partition",
        "kcat -C -J (and kafkacat): payload and key as strings, headers as [name, value, …]",
    ),
    (
        "aiven-jsonl",
        "value=$.value:base64,key=$.key:base64,headers=$.headers:list-base64,timestamp=$.timestamp",
        "Aiven's S3/GCS sinks, format.output.type=jsonl, fields key,value,offset,timestamp,headers (Base64 values, the default encoding)",
    ),
    (
        "json",
        "value=$.value:json,key=$.key:string,headers=$.headers:object,timestamp=$.timestamp,partition=$.partition",
        "an in-house dumper's JSON: the value as JSON, key as a string, headers as an object",
    ),
];

fn parse_path(p: &str) -> Result<Path, String> {
    let p = p.trim();
    if p == "$" {
        return Ok(Path(Vec::new()));
    }
    let rest = p
        .strip_prefix("$.")
        .ok_or_else(|| format!("path {p:?} must be $ or start with $."))?;
    let parts: Vec<String> = rest.split('.').map(str::to_string).collect();
    if parts.iter().any(|s| s.is_empty()) {
        return Err(format!("path {p:?} has an empty member name"));
    }
    Ok(Path(parts))
}

impl Envelope {
    pub fn parse(text: &str) -> Result<Envelope, RequestError> {
        let bad = |m: String| RequestError::new("--envelope", m);
        let t = text.trim();
        let mapping = PRESETS
            .iter()
            .find(|(n, _, _)| *n == t)
            .map_or(t, |(_, m, _)| *m);
        let (mut value, mut key, mut headers, mut timestamp, mut partition) =
            (None, None, None, None, None);
        for item in mapping.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (part, spec) = item.split_once('=').ok_or_else(|| {
                let presets: Vec<&str> = PRESETS.iter().map(|(n, _, _)| *n).collect();
                bad(format!(
                    "{item:?}: give a preset ({}) or PART=PATH[:ENCODING] items",
                    presets.join(", ")
                ))
            })?;
            let (path, enc) = match spec.rsplit_once(':') {
                Some((p, e)) => (p, Some(e)),
                None => (spec, None),
            };
            let path = parse_path(path).map_err(&bad)?;
            let encoding = |e: Option<&str>, default: Encoding| match e {
                None => Ok(default),
                Some("json") => Ok(Encoding::Json),
                Some("string") => Ok(Encoding::String),
                Some("base64") => Ok(Encoding::Base64),
                Some(other) => Err(bad(format!(
                    "{part}: encoding {other:?} is json, string or base64"
                ))),
            };
            match part.trim() {
                "value" => value = Some((path, encoding(enc, Encoding::Json)?)),
                "key" => key = Some((path, encoding(enc, Encoding::String)?)),
                "headers" => {
                    let form = match enc {
                        None | Some("object") => HeaderForm::Object,
                        Some("pairs") => HeaderForm::Pairs,
                        Some("list") => HeaderForm::List,
                        Some("list-base64") => HeaderForm::ListBase64,
                        Some(other) => {
                            return Err(bad(format!(
                                "headers: form {other:?} is object, pairs, list or list-base64"
                            )));
                        }
                    };
                    headers = Some((path, form));
                }
                "timestamp" | "partition" if enc.is_some() => {
                    return Err(bad(format!("{part}: a number, no encoding")));
                }
                "timestamp" => timestamp = Some(path),
                "partition" => partition = Some(path),
                other => {
                    return Err(bad(format!(
                        "unknown part {other:?}: value, key, headers, timestamp or partition"
                    )));
                }
            }
        }
        let value = value.ok_or_else(|| bad(format!("{t:?} says nothing of the value")))?;
        Ok(Envelope {
            value,
            key,
            headers,
            timestamp,
            partition,
        })
    }

    /// Whether the mapping says where the timestamp is.
    pub fn has_timestamp(&self) -> bool {
        self.timestamp.is_some()
    }

    /// Whether the mapping says where the partition is.
    pub fn has_partition(&self) -> bool {
        self.partition.is_some()
    }

    /// The record an envelope holds, or why it holds none.
    pub fn extract(&self, text: &str) -> Result<Record, String> {
        let root: &RawValue =
            serde_json::from_str(text).map_err(|e| format!("envelope: not JSON ({e})"))?;
        let value = match find(root, &self.value.0)? {
            None => return Err(format!("envelope: no value at {}", show(&self.value.0))),
            Some(v) if v.get() == "null" => None,
            Some(v) => Some(decode(v, self.value.1, "value")?),
        };
        let key = match &self.key {
            None => None,
            Some((p, enc)) => match find(root, p)? {
                None => None,
                Some(v) if v.get() == "null" => None,
                Some(v) => Some(decode(v, *enc, "key")?),
            },
        };
        let mut headers = Vec::new();
        if let Some((p, form)) = &self.headers
            && let Some(h) = find(root, p)?
            && h.get() != "null"
        {
            headers = decode_headers(h, *form)?;
        }
        let number = |p: &Option<Path>, what: &str| -> Result<Option<i64>, String> {
            let Some(p) = p else { return Ok(None) };
            let Some(v) = find(root, p)? else {
                return Ok(None);
            };
            let s = v.get().trim_matches('"');
            if s == "null" {
                return Ok(None);
            }
            s.parse::<i64>()
                .map(Some)
                .map_err(|_| format!("envelope: {what} {} is not an integer", v.get()))
        };
        let timestamp = number(&self.timestamp, "timestamp")?;
        let partition = match number(&self.partition, "partition")? {
            None => None,
            Some(p) => Some(
                i32::try_from(p)
                    .ok()
                    .filter(|p| *p >= 0)
                    .ok_or_else(|| format!("envelope: partition {p} is not a partition"))?,
            ),
        };
        Ok(Record {
            value,
            key,
            headers,
            timestamp,
            partition,
        })
    }
}

fn show(p: &Path) -> String {
    if p.0.is_empty() {
        "$".into()
    } else {
        format!("$.{}", p.0.join("."))
    }
}

/// The member at `path` (None when an object on the way lacks it).
fn find<'a>(root: &'a RawValue, path: &Path) -> Result<Option<&'a RawValue>, String> {
    let mut cur = root;
    for name in &path.0 {
        let text = cur.get().trim_start();
        if !text.starts_with('{') {
            return Ok(None);
        }
        // (Member names with escapes come back owned; a duplicate name keeps the last.)
        let members: std::collections::BTreeMap<std::borrow::Cow<'a, str>, &'a RawValue> =
            serde_json::from_str(cur.get()).map_err(|e| format!("envelope: {e}"))?;
        match members.get(name.as_str()) {
            Some(v) => cur = v,
            None => return Ok(None),
        }
    }
    Ok(Some(cur))
}

fn string_of(v: &RawValue, what: &str) -> Result<String, String> {
    serde_json::from_str::<String>(v.get())
        .map_err(|_| format!("envelope: {what} {} is not a string", excerpt(v.get())))
}

fn excerpt(s: &str) -> String {
    if s.len() > 40 {
        let mut end = 40;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    } else {
        s.to_string()
    }
}

fn decode(v: &RawValue, enc: Encoding, what: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    match enc {
        Encoding::Json => Ok(v.get().as_bytes().to_vec()),
        Encoding::String => string_of(v, what).map(String::into_bytes),
        Encoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(string_of(v, what)?)
            .map_err(|e| format!("envelope: {what} is not Base64 ({e})")),
    }
}

fn decode_headers(h: &RawValue, form: HeaderForm) -> Result<Headers, String> {
    let bad = || format!("envelope: headers {} are not {form:?}", excerpt(h.get()));
    let text_value = |v: &RawValue, b64: bool| -> Result<Option<Vec<u8>>, String> {
        if v.get() == "null" {
            return Ok(None);
        }
        decode(
            v,
            if b64 {
                Encoding::Base64
            } else {
                Encoding::String
            },
            "header value",
        )
        .map(Some)
    };
    match form {
        HeaderForm::Object => {
            let m: Vec<(String, &RawValue)> =
                serde_json::from_str::<std::collections::BTreeMap<String, &RawValue>>(h.get())
                    .map_err(|_| bad())?
                    .into_iter()
                    .collect();
            m.into_iter()
                .map(|(k, v)| Ok((k, text_value(v, false)?)))
                .collect()
        }
        HeaderForm::Pairs => {
            let items: Vec<&RawValue> = serde_json::from_str(h.get()).map_err(|_| bad())?;
            if !items.len().is_multiple_of(2) {
                return Err(bad());
            }
            items
                .chunks(2)
                .map(|kv| Ok((string_of(kv[0], "header name")?, text_value(kv[1], false)?)))
                .collect()
        }
        HeaderForm::List | HeaderForm::ListBase64 => {
            #[derive(serde::Deserialize)]
            struct Item<'a> {
                key: String,
                #[serde(borrow)]
                value: Option<&'a RawValue>,
            }
            let items: Vec<Item<'_>> = serde_json::from_str(h.get()).map_err(|_| bad())?;
            items
                .into_iter()
                .map(|i| {
                    let v = match i.value {
                        None => None,
                        Some(v) => text_value(v, form == HeaderForm::ListBase64)?,
                    };
                    Ok((i.key, v))
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_mappings_read_records() {
        let e = Envelope::parse("kcat").unwrap();
        let r = e
            .extract(r#"{"topic":"t","partition":3,"offset":9,"tstype":"create","ts":1711929600123,"broker":1,"headers":["trace","abc","empty",null],"key":"k-1","payload":"{\"a\": 1}"}"#)
            .unwrap();
        assert_eq!(r.value.as_deref(), Some(&b"{\"a\": 1}"[..]));
        assert_eq!(r.key.as_deref(), Some(&b"k-1"[..]));
        assert_eq!(
            r.headers,
            vec![
                ("trace".into(), Some(b"abc".to_vec())),
                ("empty".into(), None)
            ]
        );
        assert_eq!((r.timestamp, r.partition), (Some(1711929600123), Some(3)));

        let e = Envelope::parse("json").unwrap();
        let r = e
            .extract(r#"{"value": {"b":  [1, 2.50]}, "key": null, "headers": {"h": "v"}, "timestamp": "17", "partition": 0}"#)
            .unwrap();
        // The value's JSON text as archived, spacing and number text kept.
        assert_eq!(r.value.as_deref(), Some(&br#"{"b":  [1, 2.50]}"#[..]));
        assert_eq!(r.key, None);
        assert_eq!(r.timestamp, Some(17));

        let e = Envelope::parse("aiven-jsonl").unwrap();
        let r = e
            .extract(r#"{"key":"a2V5","value":"dmFs","offset":1,"timestamp":5,"headers":[{"key":"h","value":"aGk="}]}"#)
            .unwrap();
        assert_eq!(r.value.as_deref(), Some(&b"val"[..]));
        assert_eq!(r.key.as_deref(), Some(&b"key"[..]));
        assert_eq!(r.headers, vec![("h".into(), Some(b"hi".to_vec()))]);
        assert_eq!(r.partition, None);

        let e = Envelope::parse("value=$.rec.v:string").unwrap();
        assert_eq!(
            e.extract(r#"{"rec": {"v": "x"}}"#)
                .unwrap()
                .value
                .as_deref(),
            Some(&b"x"[..])
        );
        // A null value is a tombstone.
        assert_eq!(e.extract(r#"{"rec": {"v": null}}"#).unwrap().value, None);
    }

    #[test]
    fn bad_envelopes_and_mappings_say_what() {
        let e = Envelope::parse("kcat").unwrap();
        for (text, says) in [
            ("nope", "not JSON"),
            (r#"{"key": "k"}"#, "no value at $.payload"),
            (r#"{"payload": 5}"#, "not a string"),
            (r#"{"payload": "x", "headers": ["a"]}"#, "headers"),
            (r#"{"payload": "x", "partition": -1}"#, "not a partition"),
            (r#"{"payload": "x", "ts": "soon"}"#, "timestamp"),
        ] {
            let e = e.extract(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
        let e = Envelope::parse("value=$.v:base64").unwrap();
        assert!(e.extract(r#"{"v": "%%%"}"#).unwrap_err().contains("Base64"));
        for (m, says) in [
            ("unknown", "preset"),
            ("key=$.k", "nothing of the value"),
            ("value=payload", "must be $"),
            ("value=$.v:hex", "json, string or base64"),
            ("value=$.v,headers=$.h:csv", "object, pairs"),
            ("value=$.v,offset=$.o", "unknown part"),
            ("value=$.v,timestamp=$.t:json", "no encoding"),
        ] {
            let e = Envelope::parse(m).unwrap_err().to_string();
            assert!(e.contains("--envelope") && e.contains(says), "{m}: {e}");
        }
    }
}
