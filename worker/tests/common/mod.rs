//! Strategies shared by the worker's property tests.

use proptest::prelude::*;
use serde_json::{Map, Value};

/// Strings that stress JSON splitting and escaping: `}{` inside strings, escapes, unicode,
/// control characters.
pub fn tricky_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9 ]{0,12}",
        Just("}{".to_string()),
        Just("\"}{\"".to_string()),
        Just("a\\b\"c\n\t}".to_string()),
        Just("ção é 日本 😀".to_string()),
        Just("\u{0001}\u{001f}".to_string()),
        "\\PC{0,8}",
    ]
}

/// Nested JSON values, with number text a float round trip would change.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        prop_oneof![
            Just("1.50"),
            Just("1e3"),
            Just("-0.0"),
            Just("123456789012345678901234567890")
        ]
        .prop_map(|n| serde_json::from_str::<Value>(n).unwrap()),
        tricky_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((tricky_string(), inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}
