//! Which events a job selects: event types, domains (exact or glob) and a JSONPath filter.

use regex::Regex;
use serde_json::Value;
use serde_json_path::JsonPath;

/// An exact name or a glob (`*` any run, `?` one character).
#[derive(Debug, Clone)]
pub enum NamePattern {
    Exact(String),
    Glob(Regex),
}

impl NamePattern {
    pub fn parse(text: &str) -> Result<NamePattern, String> {
        if text.is_empty() {
            return Err("must not be empty".into());
        }
        if !text.contains(['*', '?']) {
            return Ok(NamePattern::Exact(text.to_string()));
        }
        let mut re = String::from(r"\A");
        for c in text.chars() {
            match c {
                '*' => re.push_str(".*"),
                '?' => re.push('.'),
                c => re.push_str(&regex::escape(&c.to_string())),
            }
        }
        re.push_str(r"\z");
        Regex::new(&re)
            .map(NamePattern::Glob)
            .map_err(|e| format!("invalid glob {text:?}: {e}"))
    }

    pub fn matches(&self, name: &str) -> bool {
        match self {
            NamePattern::Exact(s) => s == name,
            NamePattern::Glob(r) => r.is_match(name),
        }
    }
}

/// Why an event was not selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    EventType,
    Domain,
    Filter,
}

impl Rejected {
    pub fn code(self) -> &'static str {
        match self {
            Rejected::EventType => "event_type",
            Rejected::Domain => "domain",
            Rejected::Filter => "filter",
        }
    }
}

/// The job's selection. Empty lists select everything.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    event_types: Vec<NamePattern>,
    domains: Vec<NamePattern>,
    filter: Option<JsonPath>,
}

/// A selection argument that cannot be used: the flag and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {problem}")]
pub struct SelectionError {
    pub field: &'static str,
    pub problem: String,
}

impl Selection {
    /// `filter` is an RFC 9535 filter expression with `@` the event, e.g.
    /// `@.data.amount.value > 100 && match(@.data.amount.currency, 'brl|BRL')` (a leading `?`
    /// is accepted).
    pub fn parse(
        event_types: &[String],
        domains: &[String],
        filter: Option<&str>,
    ) -> Result<Selection, SelectionError> {
        let names = |field: &'static str, list: &[String]| {
            list.iter()
                .map(|t| {
                    NamePattern::parse(t).map_err(|problem| SelectionError {
                        field,
                        problem: format!("{t:?}: {problem}"),
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let filter = match filter.map(str::trim).filter(|f| !f.is_empty()) {
            None => None,
            Some(expr) => {
                let expr = expr.strip_prefix('?').unwrap_or(expr);
                Some(
                    JsonPath::parse(&format!("$[?{expr}]")).map_err(|e| SelectionError {
                        field: "--filter",
                        problem: format!("{expr:?} is not a JSONPath filter expression: {e}"),
                    })?,
                )
            }
        };
        Ok(Selection {
            event_types: names("--event-type", event_types)?,
            domains: names("--domain", domains)?,
            filter,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.event_types.is_empty() && self.domains.is_empty() && self.filter.is_none()
    }

    /// Whether the event's type and domain (as extracted) pass; `None` when they do.
    pub fn reject_names(&self, event_type: Option<&str>, domain: Option<&str>) -> Option<Rejected> {
        let pass = |list: &[NamePattern], v: Option<&str>| {
            list.is_empty() || v.is_some_and(|v| list.iter().any(|p| p.matches(v)))
        };
        if !pass(&self.event_types, event_type) {
            return Some(Rejected::EventType);
        }
        if !pass(&self.domains, domain) {
            return Some(Rejected::Domain);
        }
        None
    }

    pub fn has_filter(&self) -> bool {
        self.filter.is_some()
    }

    /// Whether the filter expression holds for the event (true without a filter). The event is
    /// parsed whole for it.
    pub fn filter_holds(&self, text: &str) -> bool {
        let Some(f) = &self.filter else { return true };
        match serde_json::from_str::<Value>(text) {
            Ok(v) => !f.query(&Value::Array(vec![v])).is_empty(),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_exactly_or_by_glob() {
        let s = Selection::parse(
            &["transaction-*".into(), "card-blocked".into()],
            &["tr?nsactions".into(), "cards".into()],
            None,
        )
        .unwrap();
        assert_eq!(
            s.reject_names(Some("transaction-created"), Some("transactions")),
            None
        );
        assert_eq!(s.reject_names(Some("card-blocked"), Some("cards")), None);
        assert_eq!(
            s.reject_names(Some("card-blocked-x"), Some("cards")),
            Some(Rejected::EventType)
        );
        assert_eq!(
            s.reject_names(Some("card-blocked"), Some("accounts")),
            Some(Rejected::Domain)
        );
        assert_eq!(
            s.reject_names(None, Some("cards")),
            Some(Rejected::EventType)
        );
        let all = Selection::parse(&[], &[], None).unwrap();
        assert!(all.is_empty());
        assert_eq!(all.reject_names(None, None), None);
    }

    #[test]
    fn filter_expressions_select_events() {
        let s =
            Selection::parse(&[], &[], Some("?@.data.items[?@.qty > 2] && @.n >= 1.5")).unwrap();
        assert!(s.filter_holds(r#"{"n":1.5,"data":{"items":[{"qty":1},{"qty":3}]}}"#));
        assert!(!s.filter_holds(r#"{"n":1.5,"data":{"items":[{"qty":1}]}}"#));
        assert!(!s.filter_holds(r#"{"n":1,"data":{"items":[{"qty":3}]}}"#));
        let m = Selection::parse(&[], &[], Some("match(@.event_type, 'card-.*')")).unwrap();
        assert!(m.filter_holds(r#"{"event_type":"card-blocked"}"#));
        assert!(!m.filter_holds(r#"{"event_type":"x-card-blocked"}"#));
    }

    #[test]
    fn bad_selections_name_the_flag() {
        let e = Selection::parse(&[], &[], Some("@.a ==")).unwrap_err();
        assert_eq!(e.field, "--filter");
        let e = Selection::parse(&["".into()], &[], None).unwrap_err();
        assert_eq!(e.field, "--event-type");
        let e = Selection::parse(&[], &["".into()], None).unwrap_err();
        assert_eq!(e.field, "--domain");
    }
}
