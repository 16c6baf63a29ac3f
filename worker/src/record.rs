//! From a decoded event to a row of the reference schema, or a reason why it cannot be one.

use std::borrow::Cow;
use std::sync::Arc;

use arrow_array::builder::{Int64Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use rewind_common::OrgId;

use crate::decode::Event;
use crate::scan::{FieldId, Span, ValueKind, unescape};

/// The reference (Pismo) output schema.
pub fn schema() -> SchemaRef {
    let s = |name| Field::new(name, DataType::Utf8, true);
    let i = |name| Field::new(name, DataType::Int64, true);
    Arc::new(Schema::new(vec![
        s("event_id"),
        s("cid"),
        s("org_id"),
        s("event_type"),
        s("domain"),
        i("schema_version"),
        i("arrival_epoch"),
        s("timestamp"),
        s("data"),
    ]))
}

/// What happens to one event.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Recovered,
    Filtered,
    Failed(String),
}

/// The reference columns of one event, validated.
#[derive(Debug)]
pub struct Row<'a> {
    strings: [Option<Cow<'a, str>>; 6],
    schema_version: Option<i64>,
    arrival_epoch: Option<i64>,
    data: Option<&'a str>,
}

impl<'a> Row<'a> {
    /// Extracts the event's fields and checks their types and the org; the reason when the event
    /// cannot be a row.
    pub fn extract(ev: &Event<'a>, org: &OrgId) -> Result<Row<'a>, String> {
        let text = ev.text();
        let mut strings: [Option<Cow<'a, str>>; 6] = Default::default();
        for (slot, id) in strings.iter_mut().zip(STRING_FIELDS) {
            *slot = string_field(text, ev.fields.get(id), id)?;
        }
        let schema_version = int_field(
            text,
            ev.fields.get(FieldId::SchemaVersion),
            FieldId::SchemaVersion,
        )?;
        let arrival_epoch = int_field(
            text,
            ev.fields.get(FieldId::ArrivalEpoch),
            FieldId::ArrivalEpoch,
        )?;
        if let Some(event_org) = &strings[2]
            && !event_org.eq_ignore_ascii_case(org.as_str())
        {
            return Err(format!(
                "org_id {:?} does not match the job's org {:?}",
                truncate(event_org, 64),
                org.as_str()
            ));
        }
        let data = ev
            .fields
            .get(FieldId::Data)
            .map(|span| &text[span.json_range()]);
        Ok(Row {
            strings,
            schema_version,
            arrival_epoch,
            data,
        })
    }

    pub fn event_id(&self) -> Option<&str> {
        self.strings[0].as_deref()
    }

    pub fn cid(&self) -> Option<&str> {
        self.strings[1].as_deref()
    }

    pub fn timestamp(&self) -> Option<&str> {
        self.strings[5].as_deref()
    }
}

impl rewind_common::partition::Fields for Row<'_> {
    fn field(&self, f: rewind_common::partition::Field) -> Option<String> {
        use rewind_common::partition::Field as F;
        let s = |i: usize| self.strings[i].as_deref().map(str::to_string);
        match f {
            F::EventId => s(0),
            F::Cid => s(1),
            F::OrgId => s(2),
            F::EventType => s(3),
            F::Domain => s(4),
            F::Timestamp => s(5),
            F::SchemaVersion => self.schema_version.map(|v| v.to_string()),
            F::ArrivalEpoch => self.arrival_epoch.map(|v| v.to_string()),
        }
    }
}

/// Column builders for a batch of rows.
pub struct Rows {
    strings: [StringBuilder; 6],
    schema_version: Int64Builder,
    arrival_epoch: Int64Builder,
    data: StringBuilder,
    len: usize,
    data_bytes: usize,
}

const STRING_FIELDS: [FieldId; 6] = [
    FieldId::EventId,
    FieldId::Cid,
    FieldId::OrgId,
    FieldId::EventType,
    FieldId::Domain,
    FieldId::Timestamp,
];

fn kind_name(kind: ValueKind) -> &'static str {
    match kind {
        ValueKind::Object => "an object",
        ValueKind::Array => "an array",
        ValueKind::String { .. } => "a string",
        ValueKind::Number => "a number",
        ValueKind::Bool => "a boolean",
        ValueKind::Null => "null",
    }
}

pub(crate) fn string_field<'a>(
    text: &'a str,
    span: Option<Span>,
    id: FieldId,
) -> Result<Option<Cow<'a, str>>, String> {
    let Some(span) = span else {
        return Ok(None);
    };
    let raw = &text[span.start..span.end];
    match span.kind {
        ValueKind::String { escaped: false } => Ok(Some(Cow::Borrowed(raw))),
        ValueKind::String { escaped: true } => unescape(raw.as_bytes())
            .map(|s| Some(Cow::Owned(s)))
            .ok_or_else(|| {
                format!(
                    "field {} has an invalid \\u escape (lone surrogate)",
                    id.name()
                )
            }),
        ValueKind::Null => Ok(None),
        // Scalars keep their exact JSON text: lossless.
        ValueKind::Number | ValueKind::Bool => Ok(Some(Cow::Borrowed(raw))),
        kind @ (ValueKind::Object | ValueKind::Array) => Err(format!(
            "field {} must be a string, found {}",
            id.name(),
            kind_name(kind)
        )),
    }
}

pub(crate) fn int_field(
    text: &str,
    span: Option<Span>,
    id: FieldId,
) -> Result<Option<i64>, String> {
    let Some(span) = span else {
        return Ok(None);
    };
    let raw = &text[span.start..span.end];
    let parsed = match span.kind {
        ValueKind::Null => return Ok(None),
        ValueKind::Number => raw.parse::<i64>().ok().or_else(|| {
            // 1.7e12 or 3.0: accepted when it is exactly an integer.
            raw.parse::<f64>()
                .ok()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        }),
        // A number written as a string ("3") is read as the number it spells.
        ValueKind::String { escaped: false } => raw.trim().parse::<i64>().ok(),
        _ => None,
    };
    parsed.map(Some).ok_or_else(|| {
        format!(
            "field {} must be an integer, found {} {}",
            id.name(),
            kind_name(span.kind),
            truncate(raw, 40)
        )
    })
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

impl Default for Rows {
    fn default() -> Self {
        Rows {
            strings: std::array::from_fn(|_| StringBuilder::new()),
            schema_version: Int64Builder::new(),
            arrival_epoch: Int64Builder::new(),
            data: StringBuilder::new(),
            len: 0,
            data_bytes: 0,
        }
    }
}

impl Rows {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Approximate bytes buffered.
    pub fn buffered_bytes(&self) -> usize {
        self.data_bytes
    }

    /// Extracts the event's fields, applies the org check and the arrival filter, and appends a
    /// row when the event is recovered. Nothing is appended unless the verdict is `Recovered`.
    pub fn push(&mut self, ev: &Event<'_>, org: &OrgId, window: Option<(i64, i64)>) -> Verdict {
        let row = match Row::extract(ev, org) {
            Ok(row) => row,
            Err(reason) => return Verdict::Failed(reason),
        };
        if let Some((start, end)) = window {
            match row.arrival_epoch {
                Some(t) if (start..end).contains(&t) => {}
                _ => return Verdict::Filtered,
            }
        }
        self.append(&row);
        Verdict::Recovered
    }

    /// Appends an extracted row.
    pub fn append(&mut self, row: &Row<'_>) {
        for (builder, value) in self.strings.iter_mut().zip(&row.strings) {
            builder.append_option(value.as_deref());
        }
        self.schema_version.append_option(row.schema_version);
        self.arrival_epoch.append_option(row.arrival_epoch);
        match row.data {
            Some(json) => {
                self.data_bytes += json.len();
                self.data.append_value(json);
            }
            None => self.data.append_null(),
        }
        self.len += 1;
    }

    /// Takes the buffered rows as a batch of the reference schema.
    pub fn finish(&mut self, schema: &SchemaRef) -> RecordBatch {
        let [event_id, cid, org_id, event_type, domain, timestamp] = &mut self.strings;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(event_id.finish()),
            Arc::new(cid.finish()),
            Arc::new(org_id.finish()),
            Arc::new(event_type.finish()),
            Arc::new(domain.finish()),
            Arc::new(self.schema_version.finish()),
            Arc::new(self.arrival_epoch.finish()),
            Arc::new(timestamp.finish()),
            Arc::new(self.data.finish()),
        ];
        self.len = 0;
        self.data_bytes = 0;
        RecordBatch::try_new(schema.clone(), columns)
            .unwrap_or_else(|e| unreachable!("columns match the schema by construction: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{Decoder, DecoderConfig, Item};
    use arrow_array::{Array, Int64Array, StringArray};

    fn verdicts(input: &str, window: Option<(i64, i64)>) -> (Vec<Verdict>, RecordBatch) {
        let org = OrgId::parse("TN-1").unwrap();
        let mut rows = Rows::default();
        let mut d = Decoder::new(input.as_bytes(), DecoderConfig::default());
        let mut out = Vec::new();
        while let Some(Item::Event(e)) = d.next().unwrap() {
            out.push(rows.push(&e, &org, window));
        }
        (out, rows.finish(&schema()))
    }

    #[test]
    fn extracts_the_reference_columns() {
        let (v, batch) = verdicts(
            r#"{"event_id":"e\"1","cid":null,"org_id":"tn-1","event_type":"x","domain":"d","schema_version":"3","arrival_epoch":1.7e12,"timestamp":"t","data":"raw"}
               {"data":{"a":[1,{"b":"}{"}]},"event_id":"e2","schema_version":2}"#,
            None,
        );
        assert_eq!(v, vec![Verdict::Recovered, Verdict::Recovered]);
        let col = |i: usize| {
            batch
                .column(i)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone()
        };
        let int = |i: usize| {
            batch
                .column(i)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .clone()
        };
        assert_eq!(col(0).value(0), "e\"1");
        assert!(col(1).is_null(0));
        assert_eq!(int(5).value(0), 3);
        assert_eq!(int(6).value(0), 1_700_000_000_000);
        assert_eq!(col(8).value(0), "\"raw\"");
        assert_eq!(col(8).value(1), r#"{"a":[1,{"b":"}{"}]}"#);
        assert!(col(2).is_null(1) && int(6).is_null(1));
    }

    #[test]
    fn bad_fields_fail_the_event_with_a_reason() {
        let (v, batch) = verdicts(
            r#"{"event_id":{"x":1}}{"schema_version":1.5}{"arrival_epoch":"soon"}{"org_id":"TN-2"}{"event_id":"\ud800"}"#,
            None,
        );
        let reasons: Vec<String> = v
            .into_iter()
            .map(|v| match v {
                Verdict::Failed(r) => r,
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(
            reasons[0].contains("event_id must be a string, found an object"),
            "{}",
            reasons[0]
        );
        assert!(
            reasons[1].contains("schema_version must be an integer"),
            "{}",
            reasons[1]
        );
        assert!(
            reasons[2].contains("arrival_epoch must be an integer"),
            "{}",
            reasons[2]
        );
        assert!(
            reasons[3].contains("does not match the job's org"),
            "{}",
            reasons[3]
        );
        assert!(reasons[4].contains("lone surrogate"), "{}", reasons[4]);
        assert_eq!(batch.num_rows(), 0, "failed events append nothing");
    }

    #[test]
    fn arrival_filter_keeps_the_window() {
        let (v, batch) = verdicts(
            r#"{"arrival_epoch":99}{"arrival_epoch":100}{"arrival_epoch":199}{"arrival_epoch":200}{"event_id":"no arrival"}"#,
            Some((100, 200)),
        );
        use Verdict::*;
        assert_eq!(v, vec![Filtered, Recovered, Recovered, Filtered, Filtered]);
        assert_eq!(batch.num_rows(), 2);
    }
}
