//! Flows: conditions that pick events, steps that repair them, and where they end.

use std::borrow::Cow;

use regex::Regex;
use serde::Deserialize;
use serde_json::{Number, Value};

use crate::path::{Path, Seg, display, json_eq, kind};

/// A flow config that cannot be used: where (flow, condition or step) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{place}: {problem}")]
pub struct FlowError {
    pub place: String,
    pub problem: String,
}

fn err(place: impl Into<String>, problem: impl Into<String>) -> FlowError {
    FlowError {
        place: place.into(),
        problem: problem.into(),
    }
}

/// What happens to an event that matches no flow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unmatched {
    #[default]
    Pass,
    Unrecoverable,
}

/// Where the events a flow matches end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowOutcome {
    /// Repaired by the steps (if any) and recovered.
    #[default]
    Recovered,
    /// Written to the unrecoverable output, untouched.
    Unrecoverable,
    /// Dropped, counted as filtered.
    Filtered,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigDef {
    flows: Vec<Value>,
    #[serde(default)]
    unmatched: Unmatched,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlowDef {
    name: String,
    #[serde(default)]
    conditions: Vec<Value>,
    #[serde(default)]
    steps: Vec<Value>,
    #[serde(default)]
    outcome: FlowOutcome,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CondDef {
    op: String,
    path: String,
    value: TestDef,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum TestDef {
    Value(Value),
    Regex(String),
    Size(SizeDef),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SizeDef {
    pub eq: Option<u64>,
    pub gt: Option<u64>,
    pub lt: Option<u64>,
}

impl SizeDef {
    fn holds(&self, n: u64) -> bool {
        self.eq.is_none_or(|x| n == x)
            && self.gt.is_none_or(|x| n > x)
            && self.lt.is_none_or(|x| n < x)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepDef {
    op: String,
    path: String,
    #[serde(rename = "match")]
    pattern: Option<String>,
    value: Option<Value>,
    from: Option<String>,
    to: Option<String>,
}

/// A regular expression and its whole-value form (`\A(?:…)\z`).
#[derive(Debug, Clone)]
struct Pattern {
    any: Regex,
    whole: Regex,
}

/// Compiles a regex of a flow config. Snowplow configs come from the JVM, where the inline flag
/// `(?U)` means Unicode character classes (always on here); in Rust it would swap greediness, so a
/// leading `U` flag is dropped.
pub fn compile_regex(pattern: &str) -> Result<Regex, String> {
    let cleaned = java_flags(pattern);
    regex::RegexBuilder::new(&cleaned)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("invalid regex {pattern:?}: {e}"))
}

fn java_flags(pattern: &str) -> Cow<'_, str> {
    if let Some(rest) = pattern.strip_prefix("(?")
        && let Some(close) = rest.find(')')
    {
        let flags = &rest[..close];
        if flags.contains('U') && flags.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-') {
            let kept: String = flags.chars().filter(|c| *c != 'U').collect();
            let tail = &rest[close + 1..];
            return if kept.is_empty() || kept == "-" {
                Cow::Owned(tail.to_string())
            } else {
                Cow::Owned(format!("(?{kept}){tail}"))
            };
        }
    }
    Cow::Borrowed(pattern)
}

impl Pattern {
    fn new(pattern: &str) -> Result<Pattern, String> {
        let any = compile_regex(pattern)?;
        let whole = compile_regex(&format!(r"\A(?:{})\z", java_flags(pattern)))?;
        Ok(Pattern { any, whole })
    }
}

#[derive(Debug, Clone)]
enum Test {
    Equals(Value),
    Regex(Regex),
    Size(SizeDef),
}

impl Test {
    /// Decides from a value's JSON text when that needs no parsing (strings without escapes,
    /// numbers, literals); `None` when the value must be parsed.
    fn holds_on_raw(&self, raw: &str) -> Option<bool> {
        let plain_string = raw
            .strip_prefix('"')
            .and_then(|r| r.strip_suffix('"'))
            .filter(|s| !s.contains('\\'));
        let scalar =
            raw.starts_with(|c: char| c == '-' || c == 't' || c == 'f' || c.is_ascii_digit());
        match self {
            Test::Equals(Value::String(want)) => match plain_string {
                Some(s) => Some(s == want),
                None if !raw.starts_with('"') => Some(false),
                None => None,
            },
            Test::Regex(r) => match plain_string {
                Some(s) => Some(r.is_match(s)),
                None if scalar => Some(r.is_match(raw)),
                None if raw.starts_with('"') => None,
                None => Some(false),
            },
            Test::Size(t) => match plain_string {
                Some(s) => Some(t.holds(s.chars().count() as u64)),
                // Arrays are counted in the text; objects are parsed (duplicate names count once).
                None => crate::raw::array_len(raw).map(|n| t.holds(n as u64)),
            },
            Test::Equals(_) => None,
        }
    }

    fn holds_on(&self, v: &Value) -> bool {
        match self {
            Test::Equals(x) => json_eq(v, x),
            Test::Regex(r) => match v {
                Value::String(s) => r.is_match(s),
                Value::Number(n) => r.is_match(&n.to_string()),
                Value::Bool(b) => r.is_match(if *b { "true" } else { "false" }),
                _ => false,
            },
            Test::Size(t) => match v {
                Value::String(s) => t.holds(s.chars().count() as u64),
                Value::Array(a) => t.holds(a.len() as u64),
                Value::Object(o) => t.holds(o.len() as u64),
                _ => false,
            },
        }
    }
}

#[derive(Debug, Clone)]
struct Condition {
    path: Path,
    test: Test,
}

impl Condition {
    /// A singular path tests the value it selects; any other path tests its node list: `value`
    /// and `regex` hold when some node passes, `size` counts the nodes. A missing path fails
    /// the condition.
    fn holds(&self, doc: &mut Doc<'_, '_>) -> bool {
        if self.path.is_singular() {
            if let Some(raw) = doc.raw_node(&self.path) {
                let Some(raw) = raw else { return false };
                if let Some(answer) = self.test.holds_on_raw(raw) {
                    return answer;
                }
            }
            return doc.node(&self.path).is_some_and(|v| self.test.holds_on(&v));
        }
        let Some(v) = doc.value() else { return false };
        let nodes = self.path.query(v);
        match &self.test {
            Test::Size(t) => t.holds(nodes.len() as u64),
            test => nodes.iter().any(|n| test.holds_on(n)),
        }
    }
}

/// JSON types a Cast converts between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JsonType {
    Numeric,
    String,
    Boolean,
    Array,
}

impl JsonType {
    fn parse(s: &str, to: bool) -> Option<JsonType> {
        Some(match s {
            "Numeric" => JsonType::Numeric,
            "String" => JsonType::String,
            "Boolean" => JsonType::Boolean,
            "Array" | "List" if to => JsonType::Array,
            _ => return None,
        })
    }

    fn of(v: &Value) -> Option<JsonType> {
        match v {
            Value::Number(_) => Some(JsonType::Numeric),
            Value::String(_) => Some(JsonType::String),
            Value::Bool(_) => Some(JsonType::Boolean),
            Value::Array(_) => Some(JsonType::Array),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Replace { pattern: Pattern, value: Value },
    Remove { pattern: Option<Pattern> },
    Cast { from: JsonType, to: JsonType },
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Replace { .. } => "Replace",
            Op::Remove { .. } => "Remove",
            Op::Cast { .. } => "Cast",
        }
    }
}

#[derive(Debug, Clone)]
struct Step {
    path: Path,
    op: Op,
}

/// How far a regex covers a value: the JSON text of non-strings, the content of strings.
enum Coverage {
    Whole,
    Partial,
    None,
}

fn value_text(v: &Value) -> Cow<'_, str> {
    match v {
        Value::String(s) => Cow::Borrowed(s),
        Value::Number(n) => Cow::Owned(n.to_string()),
        Value::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
        Value::Null => Cow::Borrowed("null"),
        other => Cow::Owned(serde_json::to_string(other).unwrap_or_default()),
    }
}

fn coverage(p: &Pattern, text: &str) -> Coverage {
    if p.whole.is_match(text) {
        Coverage::Whole
    } else if p.any.is_match(text) {
        Coverage::Partial
    } else {
        Coverage::None
    }
}

fn get_mut<'v>(v: &'v mut Value, segs: &[Seg]) -> Option<&'v mut Value> {
    let mut cur = v;
    for seg in segs {
        cur = match (seg, cur) {
            (Seg::Name(n), Value::Object(m)) => m.get_mut(n)?,
            (Seg::Index(i), Value::Array(a)) => a.get_mut(usize::try_from(*i).ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// What a step does to one node.
enum Edit {
    Unchanged,
    Set(Value),
    Delete,
}

impl Step {
    /// The edit of one node, decided from its value alone.
    fn edit(&self, target: &Value) -> Result<Edit, String> {
        match &self.op {
            Op::Replace { pattern, value } => {
                let text = value_text(target);
                match (coverage(pattern, &text), value) {
                    (Coverage::None, _) => Ok(Edit::Unchanged),
                    (Coverage::Whole, Value::String(rep)) => Ok(Edit::Set(Value::String(
                        pattern.whole.replace(&text, rep.as_str()).into_owned(),
                    ))),
                    (Coverage::Whole, value) => Ok(Edit::Set(value.clone())),
                    (Coverage::Partial, Value::String(rep)) if target.is_string() => Ok(Edit::Set(
                        Value::String(pattern.any.replace_all(&text, rep.as_str()).into_owned()),
                    )),
                    (Coverage::Partial, _) => Err(format!(
                        "the match covers only part of {}; a partial Replace needs a string \
                         value and a string value to replace in",
                        kind(target)
                    )),
                }
            }
            Op::Remove { pattern: None } => Ok(Edit::Delete),
            Op::Remove {
                pattern: Some(pattern),
            } => {
                let text = value_text(target);
                match coverage(pattern, &text) {
                    Coverage::None => Ok(Edit::Unchanged),
                    Coverage::Whole => Ok(Edit::Delete),
                    Coverage::Partial if target.is_string() => Ok(Edit::Set(Value::String(
                        pattern.any.replace_all(&text, "").into_owned(),
                    ))),
                    Coverage::Partial => Err(format!(
                        "the match covers only part of {}; only strings lose part of their \
                         content",
                        kind(target)
                    )),
                }
            }
            Op::Cast { from, to } => cast(target, *from, *to),
        }
    }

    /// Applies the step to every node its path selects in a parsed event; returns whether
    /// anything changed.
    fn apply(&self, v: &mut Value) -> Result<bool, String> {
        let mut locations = self.path.locate(v);
        if locations.is_empty() {
            return Err(format!("{} selects nothing", self.path));
        }
        // Removing array elements shifts the ones after them: work from the last node back.
        locations.sort();
        locations.dedup();
        locations.reverse();
        let mut changed = false;
        for at in &locations {
            changed |= self
                .apply_at(v, at)
                .map_err(|e| format!("at {}: {e}", display(at)))?;
        }
        Ok(changed)
    }

    fn apply_at(&self, root: &mut Value, at: &[Seg]) -> Result<bool, String> {
        let missing = || "the node is gone (removed by this step)".to_string();
        let target = get_mut(root, at).ok_or_else(missing)?;
        match self.edit(target)? {
            Edit::Unchanged => Ok(false),
            Edit::Set(v) => {
                *target = v;
                Ok(true)
            }
            Edit::Delete => {
                let Some((last, parent_at)) = at.split_last() else {
                    return Err("cannot remove the whole event".into());
                };
                match (last, get_mut(root, parent_at)) {
                    (Seg::Name(n), Some(Value::Object(m))) => m.shift_remove(n).map(|_| true),
                    (Seg::Index(i), Some(Value::Array(a))) => {
                        usize::try_from(*i).ok().filter(|i| *i < a.len()).map(|i| {
                            a.remove(i);
                            true
                        })
                    }
                    _ => None,
                }
                .ok_or_else(missing)
            }
        }
    }

    /// Applies a step whose path is singular to the event's text: the selected value is parsed
    /// alone and its new text spliced in; every other byte stays.
    fn apply_text(&self, text: &mut String) -> Result<bool, String> {
        let Some(segs) = self.path.raw_segments() else {
            return Err("internal: not a singular path".into());
        };
        let Some((value, removal)) = crate::raw::locate(text, segs) else {
            return Err(format!("{} selects nothing", self.path));
        };
        let at = |e: String| format!("at {}: {e}", display(segs));
        let target: Value = serde_json::from_str(&text[value.clone()])
            .map_err(|e| at(format!("the value cannot be read: {e}")))?;
        match self.edit(&target).map_err(at)? {
            Edit::Unchanged => Ok(false),
            Edit::Set(v) => {
                let new = serde_json::to_string(&v).map_err(|e| at(e.to_string()))?;
                text.replace_range(value, &new);
                Ok(true)
            }
            Edit::Delete => {
                text.replace_range(removal, "");
                Ok(true)
            }
        }
    }
}

fn cast(target: &Value, from: JsonType, to: JsonType) -> Result<Edit, String> {
    if JsonType::of(target) != Some(from) {
        return Err(format!("expected {from:?}, found {}", kind(target)));
    }
    if from == to {
        return Ok(Edit::Unchanged);
    }
    let new = match (target, to) {
        (v, JsonType::Array) => Value::Array(vec![v.clone()]),
        (Value::Number(n), JsonType::String) => Value::String(n.to_string()),
        (Value::Number(n), JsonType::Boolean) => match n.as_f64() {
            Some(0.0) => Value::Bool(false),
            Some(1.0) => Value::Bool(true),
            _ => return Err(format!("cannot cast {n} to Boolean (only 0 and 1)")),
        },
        (Value::String(s), JsonType::Numeric) => match s.trim().parse::<Number>() {
            Ok(n) => Value::Number(n),
            Err(_) => return Err(format!("cannot cast {s:?} to Numeric")),
        },
        (Value::String(s), JsonType::Boolean) => match s.trim() {
            t if t.eq_ignore_ascii_case("true") => Value::Bool(true),
            t if t.eq_ignore_ascii_case("false") => Value::Bool(false),
            _ => {
                return Err(format!(
                    "cannot cast {s:?} to Boolean (only true and false)"
                ));
            }
        },
        (Value::Bool(b), JsonType::String) => Value::String(b.to_string()),
        (Value::Bool(b), JsonType::Numeric) => Value::Number(Number::from(u8::from(*b))),
        (v, to) => return Err(format!("cannot cast {} to {to:?}", kind(v))),
    };
    Ok(Edit::Set(new))
}

/// What the caller already knows of an event's top-level members: for a member name, `None`
/// when it does not know, `Some(None)` when the member is absent, `Some(Some(json))` with the
/// member's JSON text (the last occurrence, as a parse would keep).
pub type TopLevel<'h, 'a> = &'h dyn Fn(&str) -> Option<Option<&'a str>>;

/// An event being looked at: its text, and the parsed value once something needed it.
pub struct Doc<'h, 'a> {
    text: &'a str,
    top: Option<TopLevel<'h, 'a>>,
    value: Option<Value>,
    tried: bool,
}

impl<'h, 'a> Doc<'h, 'a> {
    pub fn new(text: &'a str, top: Option<TopLevel<'h, 'a>>) -> Doc<'h, 'a> {
        Doc {
            text,
            top,
            value: None,
            tried: false,
        }
    }

    /// The whole event, parsed once.
    pub fn value(&mut self) -> Option<&Value> {
        if !self.tried {
            self.tried = true;
            self.value = serde_json::from_str(self.text).ok();
        }
        self.value.as_ref()
    }

    fn take_value(&mut self) -> Option<Value> {
        self.value();
        self.value.take()
    }

    /// The JSON text of the node a singular path selects, read without parsing the event, and
    /// starting from a top-level member the caller located already when it can. `None` when
    /// the text cannot be read this way (the event is parsed already, or the path is general).
    fn raw_node(&self, path: &Path) -> Option<Option<&'a str>> {
        if self.tried {
            return None;
        }
        match (self.top, path.raw_segments()) {
            (Some(top), Some([Seg::Name(first), rest @ ..])) => match top(first) {
                Some(member) => Some(member.and_then(|m| crate::path::raw_get(m, rest))),
                None => path.raw_get(self.text),
            },
            _ => path.raw_get(self.text),
        }
    }

    /// The node a singular path selects, parsed.
    fn node(&mut self, path: &Path) -> Option<Cow<'_, Value>> {
        if let Some(raw) = self.raw_node(path) {
            return raw
                .and_then(|r| serde_json::from_str(r).ok())
                .map(Cow::Owned);
        }
        let v = self.value()?;
        path.query(v).into_iter().next().map(Cow::Borrowed)
    }
}

#[derive(Debug, Clone)]
struct Flow {
    name: String,
    conditions: Vec<Condition>,
    steps: Vec<Step>,
    outcome: FlowOutcome,
}

/// What the flows did with one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// No flow matched and unmatched events pass: the original bytes go on.
    Pass,
    /// A flow matched and changed nothing: the original bytes go on.
    Unchanged { flow: usize },
    /// A flow repaired the event: this text replaces it.
    Changed { flow: usize, text: String },
    /// Routed to the unrecoverable output (by a flow, or because no flow matched).
    Unrecoverable { flow: Option<usize>, reason: String },
    /// Dropped by a flow.
    Filtered { flow: usize },
    /// A step could not apply.
    Failed {
        flow: usize,
        step: usize,
        reason: String,
    },
}

/// A validated flow config, ready to apply.
#[derive(Debug, Clone, Default)]
pub struct FlowSet {
    flows: Vec<Flow>,
    unmatched: Unmatched,
}

impl FlowSet {
    /// Parses a flow config, JSON or YAML, and validates every path, regex and op.
    pub fn parse(text: &str) -> Result<FlowSet, FlowError> {
        let value: Value = if text.trim_start().starts_with('{') {
            serde_json::from_str(text)
                .map_err(|e| err("flow config", format!("invalid JSON: {e}")))?
        } else {
            serde_yaml_ng::from_str(text)
                .map_err(|e| err("flow config", format!("invalid YAML: {e}")))?
        };
        let def: ConfigDef =
            serde_json::from_value(value).map_err(|e| err("flow config", e.to_string()))?;
        let mut flows: Vec<Flow> = Vec::with_capacity(def.flows.len());
        for (i, raw) in def.flows.into_iter().enumerate() {
            let place = match raw.get("name").and_then(Value::as_str) {
                Some(n) => format!("flow {n:?} (flows[{i}])"),
                None => format!("flows[{i}]"),
            };
            let f: FlowDef = serde_json::from_value(raw).map_err(|e| err(&place, e.to_string()))?;
            if f.name.trim().is_empty() {
                return Err(err(place, "name must not be empty"));
            }
            if flows.iter().any(|g| g.name == f.name) {
                return Err(err(place, "another flow has the same name"));
            }
            if f.outcome != FlowOutcome::Recovered && !f.steps.is_empty() {
                return Err(err(
                    place,
                    "a flow with outcome unrecoverable or filtered has no steps (its events are \
                     kept as they were)",
                ));
            }
            let conditions = f
                .conditions
                .into_iter()
                .enumerate()
                .map(|(c, raw)| {
                    compile_condition(raw).map_err(|e| err(format!("{place} conditions[{c}]"), e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let steps = f
                .steps
                .into_iter()
                .enumerate()
                .map(|(s, raw)| {
                    let op = raw
                        .get("op")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_string();
                    compile_step(raw).map_err(|e| err(format!("{place} steps[{s}] ({op})"), e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            flows.push(Flow {
                name: f.name,
                conditions,
                steps,
                outcome: f.outcome,
            });
        }
        Ok(FlowSet {
            flows,
            unmatched: def.unmatched,
        })
    }

    /// No flow, unmatched events pass: every event goes on untouched.
    pub fn is_noop(&self) -> bool {
        self.flows.is_empty() && self.unmatched == Unmatched::Pass
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    pub fn name(&self, flow: usize) -> &str {
        self.flows.get(flow).map_or("", |f| f.name.as_str())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.flows.iter().map(|f| f.name.as_str())
    }

    /// The step's op name, for records.
    pub fn step_op(&self, flow: usize, step: usize) -> &'static str {
        self.flows
            .get(flow)
            .and_then(|f| f.steps.get(step))
            .map_or("", |s| s.op.name())
    }

    /// Runs a flow's steps: the repaired text (`None` when nothing changed), or the failing
    /// step and why. When every step names one node the text is edited in place; otherwise the
    /// event is parsed, edited and written back.
    fn run_steps(
        &self,
        flow: &Flow,
        text: &str,
        doc: &mut Doc<'_, '_>,
    ) -> Result<Option<String>, (usize, String)> {
        let mut changed = false;
        if flow.steps.iter().all(|s| s.path.raw_segments().is_some()) {
            let mut out = text.to_string();
            for (s, step) in flow.steps.iter().enumerate() {
                changed |= step.apply_text(&mut out).map_err(|e| (s, e))?;
            }
            return Ok(changed.then_some(out));
        }
        let mut value = doc.take_value().ok_or_else(|| {
            (
                0,
                "the event cannot be parsed as a JSON value (nesting too deep?)".to_string(),
            )
        })?;
        for (s, step) in flow.steps.iter().enumerate() {
            changed |= step.apply(&mut value).map_err(|e| (s, e))?;
        }
        if !changed {
            return Ok(None);
        }
        serde_json::to_string(&value).map(Some).map_err(|e| {
            (
                flow.steps.len().saturating_sub(1),
                format!("serialising the repaired event: {e}"),
            )
        })
    }

    /// Runs the first flow whose conditions all hold. The event's text is parsed only when a
    /// condition needs more than one value, or a flow with steps matched.
    pub fn apply(&self, text: &str) -> Applied {
        self.apply_with(text, None)
    }

    /// [`FlowSet::apply`], with what the caller knows of the event's top-level members.
    pub fn apply_with<'a>(&self, text: &'a str, top: Option<TopLevel<'_, 'a>>) -> Applied {
        let mut doc = Doc::new(text, top);
        for (i, flow) in self.flows.iter().enumerate() {
            if !flow.conditions.iter().all(|c| c.holds(&mut doc)) {
                continue;
            }
            return match flow.outcome {
                FlowOutcome::Unrecoverable => Applied::Unrecoverable {
                    flow: Some(i),
                    reason: format!("flow {:?} routes it to unrecoverable", flow.name),
                },
                FlowOutcome::Filtered => Applied::Filtered { flow: i },
                FlowOutcome::Recovered if flow.steps.is_empty() => Applied::Unchanged { flow: i },
                FlowOutcome::Recovered => match self.run_steps(flow, text, &mut doc) {
                    Ok(Some(text)) => Applied::Changed { flow: i, text },
                    Ok(None) => Applied::Unchanged { flow: i },
                    Err((step, reason)) => Applied::Failed {
                        flow: i,
                        step,
                        reason,
                    },
                },
            };
        }
        match self.unmatched {
            Unmatched::Pass => Applied::Pass,
            Unmatched::Unrecoverable => Applied::Unrecoverable {
                flow: None,
                reason: "no flow matched (unmatched: unrecoverable)".into(),
            },
        }
    }
}

fn compile_condition(raw: Value) -> Result<Condition, String> {
    let def: CondDef = serde_json::from_value(raw).map_err(|e| e.to_string())?;
    if def.op != "Test" {
        return Err(format!(
            "unknown condition op {:?}; the only one is Test",
            def.op
        ));
    }
    let path = Path::parse(&def.path)?;
    let test = match def.value {
        TestDef::Value(v) => Test::Equals(v),
        TestDef::Regex(r) => Test::Regex(compile_regex(&r)?),
        TestDef::Size(s) => {
            if s == SizeDef::default() {
                return Err("size needs at least one of eq, gt, lt".into());
            }
            Test::Size(s)
        }
    };
    Ok(Condition { path, test })
}

fn compile_step(raw: Value) -> Result<Step, String> {
    let def: StepDef = serde_json::from_value(raw).map_err(|e| e.to_string())?;
    let path = Path::parse(&def.path)?;
    let refuse = |field: &str, present: bool| {
        if present {
            Err(format!("{} takes no {field:?}", def.op))
        } else {
            Ok(())
        }
    };
    let op = match def.op.as_str() {
        "Replace" => {
            refuse("from", def.from.is_some())?;
            refuse("to", def.to.is_some())?;
            let pattern = def.pattern.as_deref().ok_or("Replace needs \"match\"")?;
            let value = def.value.clone().ok_or("Replace needs \"value\"")?;
            Op::Replace {
                pattern: Pattern::new(pattern)?,
                value,
            }
        }
        "Remove" => {
            refuse("value", def.value.is_some())?;
            refuse("from", def.from.is_some())?;
            refuse("to", def.to.is_some())?;
            if path.is_root() {
                return Err("cannot remove the whole event ($)".into());
            }
            Op::Remove {
                pattern: def.pattern.as_deref().map(Pattern::new).transpose()?,
            }
        }
        "Cast" => {
            refuse("match", def.pattern.is_some())?;
            refuse("value", def.value.is_some())?;
            let from = def.from.as_deref().ok_or("Cast needs \"from\"")?;
            let to = def.to.as_deref().ok_or("Cast needs \"to\"")?;
            Op::Cast {
                from: JsonType::parse(from, false).ok_or_else(|| {
                    format!("unknown \"from\" type {from:?}; one of Numeric, String, Boolean")
                })?,
                to: JsonType::parse(to, true).ok_or_else(|| {
                    format!("unknown \"to\" type {to:?}; one of Numeric, String, Boolean, Array")
                })?,
            }
        }
        other => {
            return Err(format!(
                "unknown step op {other:?}; one of Replace, Remove, Cast"
            ));
        }
    };
    Ok(Step { path, op })
}
