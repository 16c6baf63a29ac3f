//! From a decoded event to exactly one outcome: selection (event type, domain, arrival window,
//! filter expression), then the flows, then the row checks, then dedup.

use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

use rewind_common::OrgId;
use rewind_common::job::{DedupKey, JobSpec};
use rewind_flows::{Applied, FlowSet, Selection};

use crate::decode::Event;
use crate::record::{Row, int_field, string_field};
use crate::scan::{FieldId, Scan, ValueKind, scan_value};

/// Where one event ends.
#[derive(Debug)]
pub enum Outcome<'a> {
    Recovered {
        row: Row<'a>,
        /// The repaired text when a flow changed the event (else the original bytes stand).
        repaired: Option<&'a str>,
        flow: Option<usize>,
    },
    Filtered {
        /// `event_type`, `domain`, `arrival`, `filter`, `flow` or `duplicate`.
        reason: &'static str,
        flow: Option<usize>,
    },
    Failed {
        /// `flow_step` or `invalid_field`.
        code: &'static str,
        reason: String,
        flow: Option<usize>,
        step: Option<usize>,
    },
    Unrecoverable {
        reason: String,
        flow: Option<usize>,
    },
}

/// Buffers a shard attempt reuses from event to event.
#[derive(Debug, Default)]
pub struct Scratch {
    text: String,
    stack: Vec<bool>,
}

/// The event keys a shard has recovered (or seen recovered in the hours before it), as 128-bit
/// hashes: 16 bytes of key plus the table's overhead per distinct event, whatever the id length.
/// The hash is XXH3-128 with a seed drawn per table, over an unambiguous encoding of the key
/// (id length, id, then the timestamp when it is part of the key).
pub struct Seen {
    key: DedupKey,
    seed: u64,
    buf: Vec<u8>,
    set: HashSet<u128, BuildHasherDefault<Low64>>,
}

/// The keys are hashes already: the table uses their low bits as they are.
#[derive(Default)]
struct Low64(u64);

impl Hasher for Low64 {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, i: u128) {
        self.0 = i as u64;
    }
}

impl Seen {
    pub fn new(key: DedupKey) -> Seen {
        Seen {
            key,
            seed: RandomState::new().hash_one(0u8),
            buf: Vec::with_capacity(128),
            set: HashSet::default(),
        }
    }

    /// Records the row's key; false when it was there already. Rows without an event id are
    /// never duplicates.
    pub fn insert(&mut self, row: &Row<'_>) -> bool {
        let Some(id) = row.event_id() else {
            return true;
        };
        let ts = match self.key {
            DedupKey::EventId => None,
            DedupKey::EventIdTimestamp => Some(row.timestamp().unwrap_or("")),
        };
        self.buf.clear();
        self.buf.extend_from_slice(&(id.len() as u64).to_le_bytes());
        self.buf.extend_from_slice(id.as_bytes());
        if let Some(ts) = ts {
            self.buf.extend_from_slice(ts.as_bytes());
        }
        let hash = twox_hash::XxHash3_128::oneshot_with_seed(self.seed, &self.buf);
        self.set.insert(hash)
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Approximate memory held by the table.
    pub fn bytes(&self) -> usize {
        self.set.capacity() * (std::mem::size_of::<u128>() + 1)
    }
}

/// The job's treatment of events, compiled once per shard attempt.
pub struct Router {
    org: OrgId,
    window: Option<(i64, i64)>,
    selection: Selection,
    flows: FlowSet,
    dedup: Option<DedupKey>,
    max_depth: usize,
}

impl Router {
    /// Compiles the spec's selection and flows (validated when the job was requested; an error
    /// here means a spec from elsewhere).
    pub fn new(spec: &JobSpec, max_depth: usize) -> Result<Router, String> {
        let t = &spec.treatment;
        let selection = Selection::parse(&t.event_types, &t.domains, t.filter.as_deref())
            .map_err(|e| e.to_string())?;
        let flows = match &t.flows {
            Some(text) => FlowSet::parse(text).map_err(|e| format!("invalid --flows: {e}"))?,
            None => FlowSet::default(),
        };
        Ok(Router {
            org: spec.org.clone(),
            window: spec.arrival_filter.then(|| spec.range.window_ms()),
            selection,
            flows,
            dedup: t.dedup,
            max_depth,
        })
    }

    pub fn flows(&self) -> &FlowSet {
        &self.flows
    }

    pub fn dedup(&self) -> Option<DedupKey> {
        self.dedup
    }

    /// Decides the event's outcome. `seen` deduplicates recovered rows when dedup is on.
    pub fn route<'a>(
        &self,
        ev: &Event<'a>,
        scratch: &'a mut Scratch,
        seen: Option<&mut Seen>,
    ) -> Outcome<'a> {
        let text = ev.text();
        let field = |id| string_field(text, ev.fields.get(id), id).ok().flatten();
        if let Some(r) = self.selection.reject_names(
            field(FieldId::EventType).as_deref(),
            field(FieldId::Domain).as_deref(),
        ) {
            return Outcome::Filtered {
                reason: r.code(),
                flow: None,
            };
        }
        if let Some((start, end)) = self.window {
            let id = FieldId::ArrivalEpoch;
            match int_field(text, ev.fields.get(id), id) {
                Ok(Some(t)) if (start..end).contains(&t) => {}
                // An arrival_epoch that is not an integer fails the row check below.
                Err(_) => {}
                Ok(_) => {
                    return Outcome::Filtered {
                        reason: "arrival",
                        flow: None,
                    };
                }
            }
        }
        if self.selection.has_filter() && !self.selection.filter_holds(text) {
            return Outcome::Filtered {
                reason: "filter",
                flow: None,
            };
        }
        let (event, flow, repaired) = if self.flows.is_noop() {
            (*ev, None, None)
        } else {
            let top = |name: &str| {
                FieldId::from_name(name).map(|id| ev.fields.get(id).map(|s| &text[s.json_range()]))
            };
            match self.flows.apply_with(text, Some(&top)) {
                Applied::Pass => (*ev, None, None),
                Applied::Unchanged { flow } => (*ev, Some(flow), None),
                Applied::Changed { flow, text: new } => {
                    let Scratch { text: buf, stack } = scratch;
                    *buf = new;
                    let buf: &'a str = buf;
                    match scan_value(buf.as_bytes(), self.max_depth, stack) {
                        Scan::Complete {
                            kind: ValueKind::Object,
                            fields,
                            ..
                        } => (
                            Event {
                                offset: ev.offset,
                                text: buf,
                                fields,
                            },
                            Some(flow),
                            Some(buf),
                        ),
                        _ => {
                            return Outcome::Failed {
                                code: "flow_step",
                                reason: "the repaired event is not a JSON object within the \
                                         nesting limit"
                                    .into(),
                                flow: Some(flow),
                                step: None,
                            };
                        }
                    }
                }
                Applied::Unrecoverable { flow, reason } => {
                    return Outcome::Unrecoverable { reason, flow };
                }
                Applied::Filtered { flow } => {
                    return Outcome::Filtered {
                        reason: "flow",
                        flow: Some(flow),
                    };
                }
                Applied::Failed { flow, step, reason } => {
                    return Outcome::Failed {
                        code: "flow_step",
                        reason,
                        flow: Some(flow),
                        step: Some(step),
                    };
                }
            }
        };
        let row = match Row::extract(&event, &self.org) {
            Ok(row) => row,
            Err(reason) => {
                return Outcome::Failed {
                    code: "invalid_field",
                    reason,
                    flow,
                    step: None,
                };
            }
        };
        if let Some(seen) = seen
            && !seen.insert(&row)
        {
            return Outcome::Filtered {
                reason: "duplicate",
                flow,
            };
        }
        Outcome::Recovered {
            row,
            repaired,
            flow,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{Decoder, DecoderConfig, Item};

    /// Which events of `input` a fresh table keeps, in order.
    fn kept(key: DedupKey, input: &str) -> Vec<bool> {
        let org = OrgId::parse("TN-1").unwrap();
        let mut seen = Seen::new(key);
        let mut d = Decoder::new(input.as_bytes(), DecoderConfig::default());
        let mut out = Vec::new();
        while let Some(Item::Event(e)) = d.next().unwrap() {
            out.push(seen.insert(&Row::extract(&e, &org).unwrap()));
        }
        out
    }

    #[test]
    fn keys_are_the_id_or_the_id_and_timestamp_without_ambiguity() {
        let events = r#"{"event_id":"a","timestamp":"1"}{"event_id":"a","timestamp":"1"}
            {"event_id":"a","timestamp":"2"}{"event_id":"a1","timestamp":""}
            {"event_id":"a","timestamp":"12"}{"event_id":"a1","timestamp":"2"}
            {"timestamp":"1"}{"timestamp":"1"}{"event_id":"\u0061","timestamp":"1"}"#;
        // The id alone: every later "a" and "a1" is a copy; events without an id never are.
        assert_eq!(
            kept(DedupKey::EventId, events),
            [true, false, false, true, false, false, true, true, false]
        );
        // Id and timestamp: ("a1", "") and ("a", "1"+...) must not collide, nor ("a","12") and
        // ("a1","2"). An escaped id is the same id ("\u0061" is "a").
        assert_eq!(
            kept(DedupKey::EventIdTimestamp, events),
            [true, false, true, true, true, true, true, true, false]
        );
    }
}
