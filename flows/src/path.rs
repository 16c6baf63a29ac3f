//! JSONPath (RFC 9535) queries over events, with a fast path for singular queries.
//!
//! Every path is parsed by `serde_json_path` (the RFC's grammar, filters, `match()` / `search()`
//! regex functions). A singular query (names and indexes only, e.g. `$.data.amount.currency`) is
//! also kept as a list of segments: conditions on such a path read the one value they need from
//! the event's text without building the whole event.

use std::fmt;

use serde_json::Value;
use serde_json_path::JsonPath;

/// One step of a normalized path: a member name or an array index.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Seg {
    Name(String),
    Index(i64),
}

/// A compiled JSONPath.
#[derive(Clone)]
pub struct Path {
    text: String,
    query: JsonPath,
    /// The segments when the query is singular (RFC 9535 §2.3.5.1).
    singular: Option<Vec<Seg>>,
}

impl fmt::Debug for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Path({})", self.text)
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Path {
    pub fn parse(text: &str) -> Result<Path, String> {
        let query = JsonPath::parse(text).map_err(|e| format!("invalid JSONPath {text:?}: {e}"))?;
        Ok(Path {
            text: text.to_string(),
            query,
            singular: singular_segments(text),
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// Selects at most one node (only names and indexes).
    pub fn is_singular(&self) -> bool {
        self.singular.is_some()
    }

    /// `$` itself.
    pub fn is_root(&self) -> bool {
        self.singular.as_ref().is_some_and(|s| s.is_empty())
    }

    /// The nodes selected, in the order the query yields them.
    pub fn query<'v>(&self, v: &'v Value) -> Vec<&'v Value> {
        self.query.query(v).all()
    }

    /// Where the selected nodes are, as owned normalized paths (so the value can then change).
    pub fn locate(&self, v: &Value) -> Vec<Vec<Seg>> {
        use serde_json_path::PathElement;
        // A singular path with no negative index is its own location, when it exists.
        if let Some(segs) = self.raw_segments() {
            let mut cur = v;
            for seg in segs {
                let next = match (seg, cur) {
                    (Seg::Name(n), Value::Object(m)) => m.get(n),
                    (Seg::Index(i), Value::Array(a)) => {
                        usize::try_from(*i).ok().and_then(|i| a.get(i))
                    }
                    _ => None,
                };
                match next {
                    Some(n) => cur = n,
                    None => return Vec::new(),
                }
            }
            return vec![segs.to_vec()];
        }
        self.query
            .query_located(v)
            .iter()
            .map(|node| {
                node.location()
                    .iter()
                    .map(|e| match e {
                        PathElement::Name(n) => Seg::Name((*n).to_string()),
                        PathElement::Index(i) => Seg::Index(*i as i64),
                    })
                    .collect()
            })
            .collect()
    }

    /// The segments of a singular path without negative indexes (readable from text).
    pub fn raw_segments(&self) -> Option<&[Seg]> {
        let segs = self.singular.as_deref()?;
        (!segs.iter().any(|s| matches!(s, Seg::Index(i) if *i < 0))).then_some(segs)
    }

    /// The one value a singular path selects, read from the event's text without parsing the
    /// rest of it; `None` when the path is not singular, has a negative index, or selects
    /// nothing.
    pub fn raw_get<'a>(&self, text: &'a str) -> Option<Option<&'a str>> {
        self.raw_segments().map(|segs| raw_get(text, segs))
    }
}

/// The segments of a singular query written in the usual forms (`.name`, `['name']`, `["name"]`,
/// `[3]`, `[-1]`); anything else is `None` (and handled by the general query).
fn singular_segments(p: &str) -> Option<Vec<Seg>> {
    let mut s = p.strip_prefix('$')?;
    let mut segs = Vec::new();
    while !s.is_empty() {
        if let Some(r) = s.strip_prefix('.') {
            let end = r
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || !c.is_ascii()))
                .unwrap_or(r.len());
            if end == 0 || r.starts_with(|c: char| c.is_ascii_digit()) {
                return None;
            }
            segs.push(Seg::Name(r[..end].to_string()));
            s = &r[end..];
        } else if let Some(r) = s.strip_prefix('[') {
            let close = r.find(']')?;
            let inner = &r[..close];
            let quoted = |q: char| {
                inner
                    .strip_prefix(q)
                    .and_then(|x| x.strip_suffix(q))
                    .filter(|x| !x.contains(['\\', '\'', '"']))
            };
            if let Some(name) = quoted('\'').or_else(|| quoted('"')) {
                segs.push(Seg::Name(name.to_string()));
            } else if !inner.is_empty()
                && inner
                    .strip_prefix('-')
                    .unwrap_or(inner)
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            {
                segs.push(Seg::Index(inner.parse().ok()?));
            } else {
                return None;
            }
            s = &r[close + 1..];
        } else {
            return None;
        }
    }
    Some(segs)
}

/// Follows `segs` through the JSON `text` without building anything (see [`crate::raw`]).
pub fn raw_get<'a>(text: &'a str, segs: &[Seg]) -> Option<&'a str> {
    crate::raw::get(text, segs)
}

/// Equality of JSON values where numbers compare by value (`1.0 == 1`), as RFC 9535 compares.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => match (x.as_u64(), y.as_u64()) {
                (Some(x), Some(y)) => x == y,
                _ => x.as_f64().is_some() && x.as_f64() == y.as_f64(),
            },
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// The kind of a value, for messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A normalized path as text, `$['data']['items'][0]`, for messages.
pub fn display(segs: &[Seg]) -> String {
    let mut s = String::from("$");
    for seg in segs {
        match seg {
            Seg::Name(n) => {
                s.push_str("['");
                s.push_str(&n.replace('\\', "\\\\").replace('\'', "\\'"));
                s.push_str("']");
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn singular_paths_are_recognised() {
        let p = |s: &str| singular_segments(s);
        assert_eq!(p("$"), Some(vec![]));
        assert_eq!(
            p("$.data.amount.currency"),
            Some(vec![
                Seg::Name("data".into()),
                Seg::Name("amount".into()),
                Seg::Name("currency".into())
            ])
        );
        assert_eq!(
            p("$['a b'][2].x[-1]"),
            Some(vec![
                Seg::Name("a b".into()),
                Seg::Index(2),
                Seg::Name("x".into()),
                Seg::Index(-1)
            ])
        );
        for general in ["$..a", "$.a[*]", "$.a[?@.b > 1]", "$.a[1:2]", "$['a','b']"] {
            assert_eq!(p(general), None, "{general}");
        }
    }

    #[test]
    fn raw_reads_agree_with_the_general_query() {
        let text = r#"{"a":{"b":[1,{"c":"x\"y"},3]},"s":"\u00e9","a2":1,"a":{"b":[9,{"c":"last"}]},"n":1.50}"#;
        let v: Value = serde_json::from_str(text).unwrap();
        for path in [
            "$.a.b[1].c",
            "$.a.b[0]",
            "$.s",
            "$.n",
            "$.missing",
            "$.a.b[7]",
            "$.n.x",
            "$.a.b.c",
            "$",
        ] {
            let p = Path::parse(path).unwrap();
            let raw = p.raw_get(text).unwrap();
            let raw: Option<Value> = raw.map(|r| serde_json::from_str(r).unwrap());
            let general = p.query(&v).first().map(|v| (*v).clone());
            assert_eq!(raw, general, "{path}");
        }
        assert_eq!(
            Path::parse("$.n").unwrap().raw_get(text),
            Some(Some("1.50"))
        );
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(json_eq(&json!(1), &serde_json::from_str("1.0").unwrap()));
        assert!(json_eq(&json!({"a": [2]}), &json!({"a": [2]})));
        assert!(!json_eq(&json!("1"), &json!(1)));
    }

    #[test]
    fn invalid_paths_are_refused() {
        for bad in ["data.x", "$.a[", "$[?@.a ==]", "$.a[?match(@.b)]"] {
            assert!(Path::parse(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod locate_tests {
    use super::*;

    #[test]
    fn singular_locations_agree_with_the_query() {
        let v: Value = serde_json::from_str(r#"{"a":{"b":[1,{"c":2}]},"n":null}"#).unwrap();
        for p in [
            "$.a.b[1].c",
            "$.a.b[0]",
            "$.n",
            "$.a.x",
            "$.a.b[5]",
            "$.a.b.c",
            "$",
            "$.a.b[-1]",
        ] {
            let path = Path::parse(p).unwrap();
            let general: Vec<Vec<Seg>> = path
                .query
                .query_located(&v)
                .iter()
                .map(|n| {
                    n.location()
                        .iter()
                        .map(|e| match e {
                            serde_json_path::PathElement::Name(n) => Seg::Name((*n).to_string()),
                            serde_json_path::PathElement::Index(i) => Seg::Index(*i as i64),
                        })
                        .collect()
                })
                .collect();
            assert_eq!(path.locate(&v), general, "{p}");
        }
    }
}
