//! The source layout: where an hour's objects live, as a template such as
//! `main_stream/{YYYY}/{MM}/{DD}/{HH}/`, or a day's, as `dt={YYYY}-{MM}-{DD}/` (no `{HH}`: a
//! shard is then one day).

use serde::{Deserialize, Serialize};

use crate::error::RequestError;
use crate::ids::OrgId;
use crate::range::Hour;

pub const DEFAULT_LAYOUT: &str = "main_stream/{YYYY}/{MM}/{DD}/{HH}/";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Year,
    Month,
    Day,
    Hour,
    Org,
    OrgLower,
}

/// A validated layout template. Placeholders: `{YYYY}` `{MM}` `{DD}` (required) and `{HH}`
/// (without it, the layout is by day: every day has its own prefix), `{org}` and `{org_lower}`. Rendered prefixes are relative,
/// use `/`, end with `/`, and contain no empty, `.` or `..` segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Layout {
    template: String,
    parts: Vec<Part>,
}

impl Layout {
    pub fn parse(template: &str) -> Result<Layout, RequestError> {
        let bad = |m: String| RequestError::new("--layout", m);
        if template.starts_with('/') || template.contains('\\') || template.contains("//") {
            return Err(bad(format!(
                "{template:?} must be a relative path with '/' separators and no empty segment"
            )));
        }
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| bad(format!("{template:?} has an unclosed '{{'")))?;
            let name = &rest[open + 1..open + close];
            parts.push(match name {
                "YYYY" => Part::Year,
                "MM" => Part::Month,
                "DD" => Part::Day,
                "HH" => Part::Hour,
                "org" => Part::Org,
                "org_lower" => Part::OrgLower,
                other => {
                    return Err(bad(format!(
                        "unknown placeholder {{{other}}} in {template:?}; known: {{YYYY}} {{MM}} \
                         {{DD}} {{HH}} {{org}} {{org_lower}}"
                    )));
                }
            });
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(bad(format!("{template:?} has an unmatched '}}'")));
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        // No date at all: an undated layout (Kafka Connect's default partitioner,
        // `topics/<topic>/partition=<p>/…`), whose objects a range cannot pick: the job lists
        // everything below it and picks records by their archived timestamps (`--envelope`).
        let dated = parts
            .iter()
            .any(|p| matches!(p, Part::Year | Part::Month | Part::Day | Part::Hour));
        for needed in [Part::Year, Part::Month, Part::Day] {
            if dated && !parts.contains(&needed) {
                return Err(bad(format!(
                    "{template:?} must contain {{YYYY}}, {{MM}} and {{DD}} (and {{HH}} for an \
                     archive by hour) so that every day has its own prefix"
                )));
            }
        }
        // Every literal segment must itself be safe.
        for part in &parts {
            if let Part::Literal(text) = part {
                for segment in text.split('/').filter(|s| !s.is_empty()) {
                    if segment == "." || segment == ".." {
                        return Err(bad(format!("{template:?} contains a {segment:?} segment")));
                    }
                }
            }
        }
        let mut template = template.to_string();
        if !template.ends_with('/') {
            template.push('/');
            parts.push(Part::Literal("/".into()));
        }
        Ok(Layout { template, parts })
    }

    pub fn template(&self) -> &str {
        &self.template
    }

    /// Whether objects are grouped by day (no `{HH}`): a shard then reads one day.
    pub fn is_daily(&self) -> bool {
        !self.is_undated() && !self.parts.contains(&Part::Hour)
    }

    /// Whether the layout has no date: a job lists everything below it once, and picks records
    /// by their archived timestamps (only with `--envelope`).
    pub fn is_undated(&self) -> bool {
        !self
            .parts
            .iter()
            .any(|p| matches!(p, Part::Year | Part::Month | Part::Day | Part::Hour))
    }

    /// The prefix holding one hour's objects, e.g. `main_stream/2024/04/01/12/`.
    pub fn prefix(&self, hour: Hour, org: &OrgId) -> String {
        let mut out = String::with_capacity(self.template.len() + 8);
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Year => out.push_str(&format!("{:04}", hour.year())),
                Part::Month => out.push_str(&format!("{:02}", hour.month())),
                Part::Day => out.push_str(&format!("{:02}", hour.day())),
                Part::Hour => out.push_str(&format!("{:02}", hour.hour())),
                Part::Org => out.push_str(org.as_str()),
                Part::OrgLower => out.push_str(&org.as_str().to_ascii_lowercase()),
            }
        }
        out
    }
}

impl TryFrom<String> for Layout {
    type Error = RequestError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Layout::parse(&value)
    }
}

impl From<Layout> for String {
    fn from(value: Layout) -> Self {
        value.template
    }
}

impl Default for Layout {
    fn default() -> Self {
        Layout::parse(DEFAULT_LAYOUT)
            .unwrap_or_else(|_| unreachable!("the default layout is valid"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::range::HourRange;

    #[test]
    fn renders_hour_prefixes() {
        let org = OrgId::parse("TN-Ab").unwrap();
        let hour = HourRange::parse("2024-04-01T07", "2024-04-01T07", 1)
            .unwrap()
            .first;
        assert_eq!(
            Layout::default().prefix(hour, &org),
            "main_stream/2024/04/01/07/"
        );
        let l = Layout::parse("{org_lower}/events/{YYYY}-{MM}-{DD}/{HH}").unwrap();
        assert_eq!(l.prefix(hour, &org), "tn-ab/events/2024-04-01/07/");
        assert!(!l.is_daily());
        let day = Layout::parse("dt={YYYY}-{MM}-{DD}").unwrap();
        assert!(day.is_daily());
        assert_eq!(day.prefix(hour, &org), "dt=2024-04-01/");
        let connect = Layout::parse("topics/orders").unwrap();
        assert!(connect.is_undated() && !connect.is_daily());
        assert_eq!(connect.prefix(hour, &org), "topics/orders/");
    }

    #[test]
    fn rejects_unsafe_or_ambiguous_templates() {
        for bad in [
            "/abs/{YYYY}/{MM}/{DD}/{HH}/",
            "../{YYYY}/{MM}/{DD}/{HH}/",
            "a/../{YYYY}/{MM}/{DD}/{HH}/",
            "a//{YYYY}/{MM}/{DD}/{HH}/",
            "a\\{YYYY}/{MM}/{DD}/{HH}/",
            "{YYYY}/{MM}/",
            "topics/t/{HH}/",
            "{YYYY}/{MM}/{DD}/{HH}/{nope}/",
            "{YYYY}/{MM}/{DD}/{HH",
        ] {
            let err = Layout::parse(bad).unwrap_err();
            assert_eq!(err.field, "--layout", "{bad}");
        }
    }
}
