//! The ops, conditions, casts and errors of flows, with the Snowplow examples.

use serde_json::{Value, json};

use crate::{Applied, FlowSet};

fn set(config: Value) -> FlowSet {
    FlowSet::parse(&config.to_string()).unwrap_or_else(|e| panic!("{e}"))
}

fn one_flow(conditions: Value, steps: Value) -> FlowSet {
    set(json!({"flows": [{"name": "f", "conditions": conditions, "steps": steps}]}))
}

/// Applies and returns the repaired event (or the original when unchanged).
fn repaired(flows: &FlowSet, event: &str) -> Result<String, String> {
    match flows.apply(event) {
        Applied::Changed { text, .. } => Ok(text),
        Applied::Unchanged { .. } | Applied::Pass => Ok(event.to_string()),
        Applied::Failed { step, reason, .. } => Err(format!("step {step}: {reason}")),
        other => panic!("{other:?}"),
    }
}

const EVENT: &str = r#"{"event_id":"e1","event_type":"transaction-created","data":{"amount":{"value":12.50,"currency":"brl"},"items":[{"sku":"a","qty":1},{"sku":"b","qty":3},{"sku":"c","qty":5}],"raw_message":"0200|4111 }{|","installments":3,"flag":1,"note":"card 4111-1111 ok"}}"#;

#[test]
fn the_issue_example_repairs_the_event_keeping_order_and_numbers() {
    let flows = one_flow(
        json!([
            {"op": "Test", "path": "$.data.amount.currency", "value": {"regex": "^(brl|usd)$"}},
            {"op": "Test", "path": "$.event_type", "value": {"value": "transaction-created"}},
            {"op": "Test", "path": "$.data.items", "value": {"size": {"gt": 0}}}
        ]),
        json!([
            {"op": "Replace", "path": "$.data.amount.currency", "match": "(?U)^.*$", "value": "BRL"},
            {"op": "Remove", "path": "$.data.raw_message", "match": "(?U)^.*$"},
            {"op": "Cast", "path": "$.data.installments", "from": "Numeric", "to": "String"}
        ]),
    );
    let out = repaired(&flows, EVENT).unwrap();
    assert_eq!(
        out,
        r#"{"event_id":"e1","event_type":"transaction-created","data":{"amount":{"value":12.50,"currency":"BRL"},"items":[{"sku":"a","qty":1},{"sku":"b","qty":3},{"sku":"c","qty":5}],"installments":"3","flag":1,"note":"card 4111-1111 ok"}}"#
    );
    // Conditions that do not hold: the flow does not apply, the bytes pass.
    let usd = EVENT.replace("\"brl\"", "\"EUR\"");
    assert_eq!(flows.apply(&usd), Applied::Pass);
}

#[test]
fn replace_whole_partial_groups_and_non_strings() {
    let f = |path: &str, m: &str, v: Value| {
        one_flow(
            json!([]),
            json!([{"op": "Replace", "path": path, "match": m, "value": v}]),
        )
    };
    let get = |text: &str, ptr: &str| -> Value {
        serde_json::from_str::<Value>(text)
            .unwrap()
            .pointer(ptr)
            .cloned()
            .unwrap()
    };
    // Partial: every match inside the string.
    let out = repaired(&f("$.data.note", r"\d{4}-\d{4}", json!("****")), EVENT).unwrap();
    assert_eq!(get(&out, "/data/note"), json!("card **** ok"));
    // Capture groups.
    let out = repaired(
        &f("$.data.note", r"card (\d+)-(\d+)", json!("$2/$1")),
        EVENT,
    )
    .unwrap();
    assert_eq!(get(&out, "/data/note"), json!("1111/4111 ok"));
    // Whole value replaced by a non-string value.
    let out = repaired(
        &f("$.data.amount.currency", "^brl$", json!({"code": 986})),
        EVENT,
    )
    .unwrap();
    assert_eq!(get(&out, "/data/amount/currency"), json!({"code": 986}));
    // A number matched as its text.
    let out = repaired(&f("$.data.flag", "^1$", json!(true)), EVENT).unwrap();
    assert_eq!(get(&out, "/data/flag"), json!(true));
    // No match: unchanged, original bytes.
    assert_eq!(
        f("$.data.note", "zzz", json!("x")).apply(EVENT),
        Applied::Unchanged { flow: 0 }
    );
    // A partial match on a number cannot be replaced.
    let e = repaired(&f("$.data.amount.value", r"\.5", json!("x")), EVENT).unwrap_err();
    assert!(e.contains("only part of a number"), "{e}");
    // Filtered path: every selected node.
    let out = repaired(
        &f("$.data.items[?@.qty > 2].sku", "^.*$", json!("BIG")),
        EVENT,
    )
    .unwrap();
    assert_eq!(
        get(&out, "/data/items"),
        json!([{"sku":"a","qty":1},{"sku":"BIG","qty":3},{"sku":"BIG","qty":5}])
    );
}

#[test]
fn remove_fields_content_and_array_elements() {
    let f = |path: &str, m: Option<&str>| {
        let mut step = json!({"op": "Remove", "path": path});
        if let Some(m) = m {
            step["match"] = json!(m);
        }
        one_flow(json!([]), json!([step]))
    };
    let v = |text: String| serde_json::from_str::<Value>(&text).unwrap();
    let out = v(repaired(&f("$.data.raw_message", None), EVENT).unwrap());
    assert!(out["data"].get("raw_message").is_none());
    // Key order of what remains is kept.
    let keys: Vec<&String> = out["data"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["amount", "items", "installments", "flag", "note"]);
    // Part of a string.
    let out = v(repaired(&f("$.data.note", Some(r" \d{4}-\d{4}")), EVENT).unwrap());
    assert_eq!(out["data"]["note"], json!("card ok"));
    // Several array elements: indexes stay right.
    let out = v(repaired(&f("$.data.items[?@.qty >= 3]", None), EVENT).unwrap());
    assert_eq!(out["data"]["items"], json!([{"sku":"a","qty":1}]));
    // Whole-match regex on an object removes it.
    let out = v(repaired(&f("$.data.amount", Some("(?U)^.*$")), EVENT).unwrap());
    assert!(out["data"].get("amount").is_none());
    // The whole event cannot be removed.
    let e = FlowSet::parse(
        &json!({"flows":[{"name":"f","steps":[{"op":"Remove","path":"$"}]}]}).to_string(),
    )
    .unwrap_err();
    assert!(e.problem.contains("whole event"), "{e}");
}

#[test]
fn casts_between_types() {
    let cast = |event: &str, from: &str, to: &str| {
        repaired(
            &one_flow(
                json!([]),
                json!([{"op": "Cast", "path": "$.x", "from": from, "to": to}]),
            ),
            event,
        )
    };
    let ok = |event: &str, from: &str, to: &str, want: &str| {
        assert_eq!(cast(event, from, to).unwrap(), want, "{event} {from}->{to}");
    };
    ok(r#"{"x":12.50}"#, "Numeric", "String", r#"{"x":"12.50"}"#);
    ok(r#"{"x":1}"#, "Numeric", "Boolean", r#"{"x":true}"#);
    ok(r#"{"x":0}"#, "Numeric", "Boolean", r#"{"x":false}"#);
    ok(r#"{"x":" 42 "}"#, "String", "Numeric", r#"{"x":42}"#);
    ok(r#"{"x":"TRUE"}"#, "String", "Boolean", r#"{"x":true}"#);
    ok(r#"{"x":false}"#, "Boolean", "String", r#"{"x":"false"}"#);
    ok(r#"{"x":true}"#, "Boolean", "Numeric", r#"{"x":1}"#);
    ok(r#"{"x":"a"}"#, "String", "Array", r#"{"x":["a"]}"#);
    ok(r#"{"x":7}"#, "Numeric", "List", r#"{"x":[7]}"#);
    ok(r#"{"x":7}"#, "Numeric", "Numeric", r#"{"x":7}"#);
    for (event, from, to, why) in [
        (r#"{"x":2}"#, "Numeric", "Boolean", "only 0 and 1"),
        (r#"{"x":"12a"}"#, "String", "Numeric", "cannot cast"),
        (r#"{"x":"yes"}"#, "String", "Boolean", "only true and false"),
        (
            r#"{"x":"1"}"#,
            "Numeric",
            "String",
            "expected Numeric, found a string",
        ),
        (r#"{"y":1}"#, "Numeric", "String", "selects nothing"),
    ] {
        let e = cast(event, from, to).unwrap_err();
        assert!(e.contains(why), "{event}: {e}");
    }
}

#[test]
fn snowplow_cast_numeric_to_boolean_on_a_filtered_path() {
    let flows = one_flow(
        json!([{"op": "Test", "path": "$.items[?@.kind == 'flag']", "value": {"size": {"gt": 0}}}]),
        json!([{"op": "Cast", "path": "$.items[?@.kind == 'flag'].on", "from": "Numeric", "to": "Boolean"}]),
    );
    let out = repaired(
        &flows,
        r#"{"items":[{"kind":"flag","on":1},{"kind":"n","on":1},{"kind":"flag","on":0}]}"#,
    )
    .unwrap();
    assert_eq!(
        out,
        r#"{"items":[{"kind":"flag","on":true},{"kind":"n","on":1},{"kind":"flag","on":false}]}"#
    );
    // The condition fails (no flag item): nothing applies.
    assert_eq!(
        flows.apply(r#"{"items":[{"kind":"n","on":1}]}"#),
        Applied::Pass
    );
}

#[test]
fn conditions_value_regex_size() {
    let test = |path: &str, t: Value, event: &str| {
        let f = one_flow(json!([{"op": "Test", "path": path, "value": t}]), json!([]));
        f.apply(event) == (Applied::Unchanged { flow: 0 })
    };
    let ev = r#"{"a":1.0,"s":"héllo","b":true,"arr":[1,2,3],"o":{"k":1},"n":null}"#;
    assert!(test("$.a", json!({"value": 1}), ev));
    assert!(!test("$.a", json!({"value": "1"}), ev));
    assert!(test("$.o", json!({"value": {"k": 1.0}}), ev));
    assert!(test("$.n", json!({"value": null}), ev));
    assert!(!test("$.missing", json!({"value": null}), ev));
    assert!(test("$.s", json!({"regex": "^h.llo$"}), ev));
    assert!(test("$.b", json!({"regex": "^true$"}), ev));
    assert!(test("$.a", json!({"regex": r"^1\.0$"}), ev));
    assert!(!test("$.o", json!({"regex": ".*"}), ev));
    assert!(test("$.s", json!({"size": {"eq": 5}}), ev));
    assert!(test("$.arr", json!({"size": {"gt": 2, "lt": 4}}), ev));
    assert!(!test("$.arr", json!({"size": {"gt": 3}}), ev));
    assert!(test("$.o", json!({"size": {"eq": 1}}), ev));
    assert!(!test("$.a", json!({"size": {"eq": 0}}), ev));
    // Non-singular paths: any node for value/regex, node count for size.
    assert!(test("$.arr[*]", json!({"value": 2}), ev));
    assert!(test("$.arr[?@ > 1]", json!({"size": {"eq": 2}}), ev));
    assert!(test("$..k", json!({"value": 1}), ev));
    // All conditions must hold; the first matching flow wins.
    let f = set(json!({"flows": [
        {"name": "one", "conditions": [{"op":"Test","path":"$.a","value":{"value":1}}, {"op":"Test","path":"$.b","value":{"value":false}}]},
        {"name": "two", "conditions": [{"op":"Test","path":"$.a","value":{"value":1}}]},
        {"name": "three", "conditions": []}
    ]}));
    assert_eq!(f.apply(ev), Applied::Unchanged { flow: 1 });
    assert_eq!(f.name(1), "two");
}

#[test]
fn outcomes_and_unmatched_events() {
    let f = set(json!({"unmatched": "unrecoverable", "flows": [
        {"name": "drop-test", "outcome": "unrecoverable", "conditions": [{"op":"Test","path":"$.org_id","value":{"regex":"^TEST-"}}]},
        {"name": "skip", "outcome": "filtered", "conditions": [{"op":"Test","path":"$.event_type","value":{"value":"ping"}}]},
        {"name": "keep", "conditions": [{"op":"Test","path":"$.event_type","value":{"value":"x"}}]}
    ]}));
    assert!(matches!(
        f.apply(r#"{"org_id":"TEST-1"}"#),
        Applied::Unrecoverable { flow: Some(0), .. }
    ));
    assert_eq!(
        f.apply(r#"{"event_type":"ping"}"#),
        Applied::Filtered { flow: 1 }
    );
    assert_eq!(
        f.apply(r#"{"event_type":"x"}"#),
        Applied::Unchanged { flow: 2 }
    );
    assert!(matches!(
        f.apply(r#"{"event_type":"y"}"#),
        Applied::Unrecoverable { flow: None, .. }
    ));
    assert!(FlowSet::parse(r#"{"flows": []}"#).unwrap().is_noop());
}

#[test]
fn yaml_configs_are_accepted() {
    let f = FlowSet::parse(
        "flows:\n  - name: fix\n    conditions:\n      - {op: Test, path: $.c, value: {value: brl}}\n    steps:\n      - {op: Replace, path: $.c, match: '^.*$', value: BRL}\n",
    )
    .unwrap();
    // Untouched values keep their bytes.
    assert_eq!(
        repaired(&f, r#"{"c":"brl","n":1e3,"m":0.10}"#).unwrap(),
        r#"{"c":"BRL","n":1e3,"m":0.10}"#
    );
}

#[test]
fn invalid_configs_name_the_flow_the_step_and_the_problem() {
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"flows":[{"name":"a","steps":[{"op":"Replace","path":"data.x","match":"x","value":"y"}]}]}),
            "flow \"a\" (flows[0]) steps[0] (Replace)",
            "invalid JSONPath",
        ),
        (
            json!({"flows":[{"name":"a","steps":[{"op":"Replace","path":"$.x","match":"(","value":"y"}]}]}),
            "steps[0] (Replace)",
            "invalid regex",
        ),
        (
            json!({"flows":[{"name":"a","steps":[{"op":"Rename","path":"$.x"}]}]}),
            "steps[0] (Rename)",
            "unknown step op",
        ),
        (
            json!({"flows":[{"name":"a","steps":[{"op":"Replace","path":"$.x","value":"y"}]}]}),
            "steps[0]",
            "needs \"match\"",
        ),
        (
            json!({"flows":[{"name":"a","steps":[{"op":"Cast","path":"$.x","from":"Numeric","to":"Date"}]}]}),
            "steps[0] (Cast)",
            "unknown \"to\" type",
        ),
        (
            json!({"flows":[{"name":"a","steps":[{"op":"Remove","path":"$.x","value":1}]}]}),
            "steps[0] (Remove)",
            "takes no \"value\"",
        ),
        (
            json!({"flows":[{"name":"a","conditions":[{"op":"Equals","path":"$.x","value":{"value":1}}]}]}),
            "conditions[0]",
            "unknown condition op",
        ),
        (
            json!({"flows":[{"name":"a","conditions":[{"op":"Test","path":"$.x","value":{"regex":"[a"}}]}]}),
            "conditions[0]",
            "invalid regex",
        ),
        (
            json!({"flows":[{"name":"a","conditions":[{"op":"Test","path":"$.x","value":{"size":{}}}]}]}),
            "conditions[0]",
            "at least one of eq",
        ),
        (
            json!({"flows":[{"name":"a","conditions":[{"op":"Test","path":"$.x","value":{"like":"x"}}]}]}),
            "conditions[0]",
            "unknown variant",
        ),
        (
            json!({"flows":[{"name":"a"},{"name":"a"}]}),
            "flows[1]",
            "same name",
        ),
        (
            json!({"flows":[{"name":"a","outcome":"lost"}]}),
            "flows[0]",
            "unknown variant",
        ),
        (
            json!({"flows":[{"name":"a","outcome":"unrecoverable","steps":[{"op":"Remove","path":"$.x"}]}]}),
            "flows[0]",
            "has no steps",
        ),
        (json!({"flows":[{"nam":"a"}]}), "flows[0]", "unknown field"),
        (json!({"flow":[]}), "flow config", "unknown field"),
        (
            json!({"flows":[], "unmatched": "drop"}),
            "flow config",
            "unknown variant",
        ),
    ];
    for (config, place, problem) in cases {
        let e = FlowSet::parse(&config.to_string()).unwrap_err();
        assert!(e.place.contains(place), "{config}: place {e}");
        assert!(e.problem.contains(problem), "{config}: problem {e}");
    }
    let e = FlowSet::parse("flows: [").unwrap_err();
    assert!(e.problem.contains("invalid YAML"), "{e}");
    let e = FlowSet::parse("{\"flows\": ").unwrap_err();
    assert!(e.problem.contains("invalid JSON"), "{e}");
}

#[test]
fn java_unicode_flag_is_not_lazy_here() {
    let r = crate::flow::compile_regex("(?U)a.*b").unwrap();
    assert_eq!(r.find("a1b2b").unwrap().as_str(), "a1b2b");
    let r = crate::flow::compile_regex("(?iU)^abc$").unwrap();
    assert!(r.is_match("ABC"));
}

#[test]
fn failing_steps_name_the_step() {
    let f = one_flow(
        json!([]),
        json!([
            {"op": "Replace", "path": "$.a", "match": ".*", "value": "x"},
            {"op": "Cast", "path": "$.missing", "from": "String", "to": "Numeric"}
        ]),
    );
    assert_eq!(
        f.apply(r#"{"a":"b"}"#),
        Applied::Failed {
            flow: 0,
            step: 1,
            reason: "$.missing selects nothing".into()
        }
    );
    assert_eq!(f.step_op(0, 1), "Cast");
}

#[test]
fn top_level_hints_give_the_same_answers() {
    let flows = set(json!({"flows": [
        {"name": "a", "conditions": [{"op": "Test", "path": "$.t", "value": {"value": "x"}},
                                     {"op": "Test", "path": "$.d.c", "value": {"regex": "^b"}}]},
        {"name": "b", "conditions": [{"op": "Test", "path": "$.missing", "value": {"value": null}}]},
        {"name": "c", "conditions": [{"op": "Test", "path": "$['d'].n", "value": {"size": {"eq": 2}}}]}
    ]}));
    for event in [
        r#"{"t":"x","d":{"c":"brl"}}"#,
        r#"{"t":"x","d":{"c":"usd"}}"#,
        r#"{"t":"y","d":{"c":"brl","n":[1,2]}}"#,
        r#"{"d":{"c":"brl"},"missing":null}"#,
        r#"{"t":"x","d":{"c":"usd"},"t":"z","d":{"c":"bb","n":"ab"}}"#,
    ] {
        let v: Value = serde_json::from_str(event).unwrap();
        let texts: Vec<(String, String)> = v
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
        let top = |name: &str| -> Option<Option<&str>> {
            Some(
                texts
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.as_str()),
            )
        };
        assert_eq!(
            flows.apply_with(event, Some(&top)),
            flows.apply(event),
            "{event}"
        );
    }
}

#[test]
fn steps_on_single_nodes_edit_the_text_in_place() {
    let flows = one_flow(
        json!([]),
        json!([
            {"op": "Replace", "path": "$.a.c", "match": "^.*$", "value": "BRL"},
            {"op": "Remove", "path": "$.a.raw"},
            {"op": "Cast", "path": "$['a'].n[1]", "from": "Numeric", "to": "String"},
            {"op": "Remove", "path": "$.a.n[0]"}
        ]),
    );
    let event = "{ \"s\": \"caf\\u00e9\",\n  \"a\": {\"raw\": \"x\", \"c\" : \"brl\", \"n\": [1, 2.50, 1e3]},\n  \"z\": 1E2 }";
    assert_eq!(
        repaired(&flows, event).unwrap(),
        "{ \"s\": \"caf\\u00e9\",\n  \"a\": {\"c\" : \"BRL\", \"n\": [\"2.50\", 1e3]},\n  \"z\": 1E2 }"
    );
    // The same steps through a parsed event (a general path forces it) give the same value.
    let general = one_flow(
        json!([]),
        json!([
            {"op": "Replace", "path": "$.a.c", "match": "^.*$", "value": "BRL"},
            {"op": "Remove", "path": "$.a.raw"},
            {"op": "Cast", "path": "$['a'].n[1]", "from": "Numeric", "to": "String"},
            {"op": "Remove", "path": "$.a.n[0]"},
            {"op": "Replace", "path": "$..c", "match": "^zzz$", "value": "q"}
        ]),
    );
    let parsed = |t: String| serde_json::from_str::<Value>(&t).unwrap();
    assert_eq!(
        parsed(repaired(&general, event).unwrap()),
        parsed(repaired(&flows, event).unwrap())
    );
}
