//! `--partition-by`: where a Parquet row goes below the job's prefix, as a template over the
//! event's reference fields and dates taken from them, e.g.
//! `domain_event_type={domain}-{event_type}/year={ts:YYYY}/month={ts:MM}/day={ts:DD}`.
//!
//! - Each `/`-separated segment is Hive-style, `name=value…`: readers with Hive partitioning
//!   (Spark, DuckDB, pyarrow) see `name` as a column.
//! - Fields: `{event_id}`, `{cid}`, `{org_id}`, `{event_type}`, `{domain}`, `{schema_version}`,
//!   `{timestamp}`, `{arrival_epoch}`; dates: `{ts:YYYY}` `{ts:MM}` `{ts:DD}` `{ts:HH}` from
//!   `timestamp` (RFC 3339, or `YYYY-MM-DD[ HH:MM:SS]`, in UTC) and the same with `arrival:` from
//!   `arrival_epoch` (epoch milliseconds).
//! - Values are escaped as Hive and Spark escape partition values (`%XX` for `/ = : % # ? * "
//!   ' \ [ ] { } ^`, DEL and control characters); an empty value is
//!   `__HIVE_DEFAULT_PARTITION__`. An event without a field the template uses, or with a date that
//!   does not parse, cannot be placed: it goes to the failed output with the reason.

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Timelike, Utc};

use crate::RequestError;

/// A reference field a template may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    EventId,
    Cid,
    OrgId,
    EventType,
    Domain,
    SchemaVersion,
    Timestamp,
    ArrivalEpoch,
}

impl Field {
    const ALL: [(&'static str, Field); 8] = [
        ("event_id", Field::EventId),
        ("cid", Field::Cid),
        ("org_id", Field::OrgId),
        ("event_type", Field::EventType),
        ("domain", Field::Domain),
        ("schema_version", Field::SchemaVersion),
        ("timestamp", Field::Timestamp),
        ("arrival_epoch", Field::ArrivalEpoch),
    ];

    pub fn name(self) -> &'static str {
        Field::ALL
            .iter()
            .find(|(_, f)| *f == self)
            .map(|(n, _)| *n)
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Year,
    Month,
    Day,
    Hour,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(Field),
    /// A part of the date in `timestamp` (false) or `arrival_epoch` (true).
    Date(bool, Part),
}

/// A parsed `--partition-by` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionTemplate {
    text: String,
    segments: Vec<Vec<Piece>>,
}

/// What a template needs of an event: its reference fields, as text.
pub trait Fields {
    fn field(&self, f: Field) -> Option<String>;
}

impl PartitionTemplate {
    pub fn parse(text: &str) -> Result<PartitionTemplate, RequestError> {
        let bad = |why: String| RequestError::new("--partition-by", format!("{text:?}: {why}"));
        let t = text.trim().trim_matches('/');
        if t.is_empty() {
            return Err(bad("is empty".into()));
        }
        let mut segments = Vec::new();
        for seg in t.split('/') {
            let Some((name, _)) = seg.split_once('=') else {
                return Err(bad(format!(
                    "segment {seg:?} is not NAME=VALUE (Hive-style, so readers see NAME as a column)"
                )));
            };
            if name.is_empty()
                || name.starts_with(['_', '.'])
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(bad(format!(
                    "segment {seg:?}: the column name must be letters, digits, _ or - and not \
                     start with _ or . (readers skip such directories)"
                )));
            }
            let mut pieces = Vec::new();
            let mut rest = seg;
            while let Some(open) = rest.find('{') {
                if open > 0 {
                    pieces.push(Piece::Text(literal(&rest[..open]).map_err(&bad)?));
                }
                let close = rest[open..]
                    .find('}')
                    .ok_or_else(|| bad(format!("an unclosed {{ in {seg:?}")))?
                    + open;
                let name = &rest[open + 1..close];
                pieces.push(placeholder(name).map_err(&bad)?);
                rest = &rest[close + 1..];
            }
            if !rest.is_empty() {
                pieces.push(Piece::Text(literal(rest).map_err(&bad)?));
            }
            if !pieces.iter().any(|p| !matches!(p, Piece::Text(_))) {
                return Err(bad(format!(
                    "segment {seg:?} uses no field: every event would land in it"
                )));
            }
            segments.push(pieces);
        }
        Ok(PartitionTemplate {
            text: t.to_string(),
            segments,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The fields the template reads.
    pub fn fields(&self) -> Vec<Field> {
        let mut out = Vec::new();
        for p in self.segments.iter().flatten() {
            let f = match p {
                Piece::Text(_) => continue,
                Piece::Field(f) => *f,
                Piece::Date(false, _) => Field::Timestamp,
                Piece::Date(true, _) => Field::ArrivalEpoch,
            };
            if !out.contains(&f) {
                out.push(f);
            }
        }
        out
    }

    /// The partition path of an event, `a=x/b=y/` (ending in `/`), or why it has none.
    pub fn render(&self, ev: &impl Fields) -> Result<String, String> {
        let mut out = String::new();
        let mut ts: Option<DateTime<Utc>> = None;
        let mut arrival: Option<DateTime<Utc>> = None;
        for seg in &self.segments {
            let mut value = String::new();
            for p in seg {
                match p {
                    Piece::Text(t) => value.push_str(t),
                    Piece::Field(f) => {
                        let v = ev.field(*f).ok_or_else(|| missing(*f))?;
                        value.push_str(&escape(&v));
                    }
                    Piece::Date(from_arrival, part) => {
                        let slot = if *from_arrival { &mut arrival } else { &mut ts };
                        let at = match slot {
                            Some(t) => *t,
                            None => {
                                let t = if *from_arrival {
                                    let v = ev
                                        .field(Field::ArrivalEpoch)
                                        .ok_or_else(|| missing(Field::ArrivalEpoch))?;
                                    v.parse::<i64>()
                                        .ok()
                                        .and_then(DateTime::from_timestamp_millis)
                                        .ok_or_else(|| {
                                            format!(
                                                "partition-by: arrival_epoch {v:?} is not epoch \
                                                 milliseconds"
                                            )
                                        })?
                                } else {
                                    let v = ev
                                        .field(Field::Timestamp)
                                        .ok_or_else(|| missing(Field::Timestamp))?;
                                    parse_timestamp(&v).ok_or_else(|| {
                                        format!("partition-by: timestamp {v:?} is not a date")
                                    })?
                                };
                                *slot = Some(t);
                                t
                            }
                        };
                        value.push_str(&match part {
                            Part::Year => format!("{:04}", at.year()),
                            Part::Month => format!("{:02}", at.month()),
                            Part::Day => format!("{:02}", at.day()),
                            Part::Hour => format!("{:02}", at.hour()),
                        });
                    }
                }
            }
            // `name=` with an empty value: Hive's default partition.
            match value.split_once('=') {
                Some((name, "")) => {
                    out.push_str(name);
                    out.push_str("=__HIVE_DEFAULT_PARTITION__");
                }
                _ => out.push_str(&value),
            }
            out.push('/');
        }
        Ok(out)
    }
}

fn missing(f: Field) -> String {
    format!("partition-by: the event has no {}", f.name())
}

fn literal(s: &str) -> Result<String, String> {
    if s.contains('}') {
        return Err(format!("a stray }} in {s:?}"));
    }
    if s == ".." || s == "." {
        return Err(format!("{s:?} is not a directory name"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '=' | '.')))
    {
        return Err(format!(
            "{c:?} in {s:?}: literal text is letters, digits, _ - . ="
        ));
    }
    Ok(s.to_string())
}

fn placeholder(name: &str) -> Result<Piece, String> {
    if let Some((src, part)) = name.split_once(':') {
        let from_arrival = match src {
            "ts" => false,
            "arrival" => true,
            _ => return Err(format!("{{{name}}}: dates come from ts or arrival")),
        };
        let part = match part {
            "YYYY" => Part::Year,
            "MM" => Part::Month,
            "DD" => Part::Day,
            "HH" => Part::Hour,
            _ => return Err(format!("{{{name}}}: a date part is YYYY, MM, DD or HH")),
        };
        return Ok(Piece::Date(from_arrival, part));
    }
    Field::ALL
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| Piece::Field(*f))
        .ok_or_else(|| {
            let known: Vec<&str> = Field::ALL.iter().map(|(n, _)| *n).collect();
            format!(
                "unknown field {{{name}}}: known are {}, and {{ts:YYYY|MM|DD|HH}}, \
                 {{arrival:YYYY|MM|DD|HH}}",
                known.join(", ")
            )
        })
}

/// A partition value escaped as Hive and Spark escape path names.
pub fn escape(v: &str) -> String {
    if v.is_empty() {
        return "__HIVE_DEFAULT_PARTITION__".into();
    }
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        let special = matches!(
            c,
            '"' | '#'
                | '%'
                | '\''
                | '*'
                | '/'
                | ':'
                | '='
                | '?'
                | '\\'
                | '{'
                | '}'
                | '['
                | ']'
                | '^'
        ) || ('\u{1}'..='\u{1f}').contains(&c)
            || c == '\u{7f}';
        if special {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    // `.` and `..` alone are not directory names.
    if out == "." || out == ".." {
        return out.replace('.', "%2E");
    }
    out
}

/// A `timestamp` as a UTC time: RFC 3339, or `YYYY-MM-DD[(T| )HH:MM:SS[.f]]` taken as UTC.
pub fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for f in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Ev(BTreeMap<&'static str, &'static str>);
    impl Fields for Ev {
        fn field(&self, f: Field) -> Option<String> {
            self.0.get(f.name()).map(|v| v.to_string())
        }
    }

    const T: &str =
        "domain_event_type={domain}-{event_type}/year={ts:YYYY}/month={ts:MM}/day={ts:DD}";

    #[test]
    fn renders_fields_and_dates() {
        let t = PartitionTemplate::parse(T).unwrap();
        let ev = Ev(BTreeMap::from([
            ("domain", "cards"),
            ("event_type", "authorization"),
            ("timestamp", "2024-04-01T23:30:00-03:00"),
        ]));
        assert_eq!(
            t.render(&ev).unwrap(),
            "domain_event_type=cards-authorization/year=2024/month=04/day=02/"
        );
        let t = PartitionTemplate::parse("h={arrival:HH}/d={arrival:YYYY}{arrival:MM}").unwrap();
        let ev = Ev(BTreeMap::from([("arrival_epoch", "1711929600000")]));
        assert_eq!(t.render(&ev).unwrap(), "h=00/d=202404/");
        assert_eq!(t.fields(), [Field::ArrivalEpoch]);
    }

    #[test]
    fn values_are_escaped_as_hive_does_and_missing_fields_are_reasons() {
        assert_eq!(escape("a/b=c:d%"), "a%2Fb%3Dc%3Ad%25");
        assert_eq!(escape("ação é"), "ação é");
        assert_eq!(escape(""), "__HIVE_DEFAULT_PARTITION__");
        assert_eq!(escape(".."), "%2E%2E");
        assert_eq!(escape("x\ny"), "x%0Ay");
        let t = PartitionTemplate::parse("d={domain}").unwrap();
        assert_eq!(
            t.render(&Ev(BTreeMap::from([("domain", "")]))).unwrap(),
            "d=__HIVE_DEFAULT_PARTITION__/"
        );
        assert_eq!(
            t.render(&Ev(BTreeMap::new())).unwrap_err(),
            "partition-by: the event has no domain"
        );
        let t = PartitionTemplate::parse("y={ts:YYYY}").unwrap();
        let e = t
            .render(&Ev(BTreeMap::from([("timestamp", "yesterday")])))
            .unwrap_err();
        assert!(e.contains("not a date"), "{e}");
        assert_eq!(
            t.render(&Ev(BTreeMap::from([("timestamp", "2024-02-29 10:00:00")])))
                .unwrap(),
            "y=2024/"
        );
    }

    #[test]
    fn bad_templates_are_named() {
        for (t, named) in [
            ("", "empty"),
            ("{domain}", "NAME=VALUE"),
            ("_d={domain}", "column name"),
            ("d={nope}", "unknown field {nope}"),
            ("d={ts:YY}", "YYYY, MM, DD or HH"),
            ("d={when:YYYY}", "ts or arrival"),
            ("d={domain", "unclosed"),
            ("d=x", "uses no field"),
            ("d=a b{domain}", "literal text"),
        ] {
            let e = PartitionTemplate::parse(t).unwrap_err().to_string();
            assert!(
                e.contains("--partition-by") && e.contains(named),
                "{t}: {e}"
            );
        }
    }
}
