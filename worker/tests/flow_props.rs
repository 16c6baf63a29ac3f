//! Property tests of the event router with flows.
//!
//! 1. A flow config that changes nothing (no flows; flows that match but whose steps find
//!    nothing to change; flows that match nothing) leaves every event byte-identical: the router
//!    never hands a re-serialised event on.
//! 2. A repair changes only what its step names: the repaired event is the original with that
//!    one field replaced, in the original key order.

use proptest::prelude::*;
use rewind_common::job::{JobSpec, Treatment};
use rewind_common::{HourRange, JobId, Layout, OrgId};
use rewind_worker::decode::{Decoder, DecoderConfig, Item};
use rewind_worker::route::{Outcome, Router, Scratch};
use serde_json::{Map, Value};

mod common;
use common::{json_value, tricky_string as text};

/// An event as archived: compact or pretty, keys in any order.
fn event() -> impl Strategy<Value = String> {
    (text(), json_value(), text(), any::<bool>(), any::<bool>()).prop_map(
        |(id, data, kind, data_first, pretty)| {
            let mut m = Map::new();
            if data_first {
                m.insert("data".into(), data.clone());
            }
            m.insert("event_id".into(), Value::String(id));
            m.insert("event_type".into(), Value::String(kind));
            if !data_first {
                m.insert("data".into(), data);
            }
            let v = Value::Object(m);
            if pretty {
                serde_json::to_string_pretty(&v).unwrap()
            } else {
                serde_json::to_string(&v).unwrap()
            }
        },
    )
}

fn router(flows: Option<&str>) -> Router {
    let spec = JobSpec {
        job: JobId::generate(),
        org: OrgId::parse("TN-1").unwrap(),
        range: HourRange::parse("2024-01-01T00", "2024-01-01T00", 10).unwrap(),
        layout: Layout::default(),
        arrival_filter: false,
        max_event_bytes: 1 << 20,
        max_attempts: 1,
        treatment: Treatment {
            flows: flows.map(str::to_string),
            ..Treatment::default()
        },
        sink: Default::default(),
        object: None,
        places: rewind_common::request::JobLocations::new(
            rewind_common::Location::Local("/nonexistent/source".into()),
            rewind_common::Location::Local("/nonexistent/dest".into()),
        ),
        table_format: Default::default(),
        repair: None,
        guard: None,
        tenant_max_shards: None,
        tenant_budget: None,
        partition_by: None,
        ingest: false,
        ingest_to: None,
    };
    Router::new(&spec, 128).unwrap()
}

/// Routes one event; returns the bytes the sink would get and the repaired flag.
fn route(r: &Router, text: &str) -> (Vec<u8>, bool) {
    let mut dec = Decoder::new(text.as_bytes(), DecoderConfig::default());
    let Ok(Some(Item::Event(ev))) = dec.next() else {
        panic!("not one event: {text}")
    };
    let mut scratch = Scratch::default();
    match r.route(&ev, &mut scratch, None) {
        Outcome::Recovered { repaired, .. } => match repaired {
            Some(t) => (t.as_bytes().to_vec(), true),
            None => (ev.bytes().to_vec(), false),
        },
        other => panic!("{other:?} for {text}"),
    }
}

const NO_CHANGE: &[&str] = &[
    r#"{"flows": []}"#,
    "flows: []\nunmatched: pass\n",
    r#"{"flows": [{"name": "all", "conditions": []}]}"#,
    r#"{"flows": [{"name": "never", "conditions": [{"op": "Test", "path": "$.nope", "value": {"value": 1}}],
                   "steps": [{"op": "Remove", "path": "$.data"}]}]}"#,
    r#"{"flows": [{"name": "no-op", "steps": [
        {"op": "Replace", "path": "$.event_id", "match": "^\\x00never$", "value": "x"},
        {"op": "Remove", "path": "$.event_type", "match": "^\\x00never$"},
        {"op": "Cast", "path": "$.event_id", "from": "String", "to": "String"}]}]}"#,
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn configs_that_change_nothing_keep_every_byte(ev in event()) {
        let routers: Vec<Router> = std::iter::once(router(None))
            .chain(NO_CHANGE.iter().map(|c| router(Some(c))))
            .collect();
        for r in &routers {
            let (bytes, repaired) = route(r, &ev);
            prop_assert!(!repaired);
            prop_assert_eq!(bytes, ev.as_bytes().to_vec());
        }
    }

    #[test]
    fn a_repair_changes_only_its_field_in_place(ev in event(), new in text()) {
        let config = serde_json::json!({"flows": [{"name": "r", "steps": [
            {"op": "Replace", "path": "$.event_type", "match": "(?s)^.*$", "value": new.replace('$', "$$")}]}]});
        let (bytes, _) = route(&router(Some(&config.to_string())), &ev);
        let got: Value = serde_json::from_slice(&bytes).unwrap();
        let mut want: Value = serde_json::from_str(&ev).unwrap();
        want["event_type"] = Value::String(new);
        prop_assert_eq!(&got, &want);
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        prop_assert_eq!(keys(&got), keys(&want));
        // Every number keeps its text.
        prop_assert_eq!(serde_json::to_string(&got["data"]).unwrap(), serde_json::to_string(&want["data"]).unwrap());
    }
}
