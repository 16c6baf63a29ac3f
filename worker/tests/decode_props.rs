//! Property tests of the streaming decoder.
//!
//! 1. Random events (nested data, `}{` inside strings, escapes, unicode), serialised and
//!    concatenated with or without whitespace, decode back to exactly the same events and byte
//!    ranges, whatever the read sizes and buffer size.
//! 2. Random damage (bytes flipped, cut, inserted) never panics, and every input byte is covered
//!    exactly once by an event, a damaged range or whitespace between them, independently of
//!    the read sizes.

use std::io::{self, Read};

use proptest::prelude::*;
use rewind_worker::decode::{Decoder, DecoderConfig, Item};
use rewind_worker::scan::FieldId;
use serde_json::{Map, Value};

mod common;
use common::{json_value, tricky_string};

struct Chunked {
    data: Vec<u8>,
    at: usize,
    sizes: Vec<usize>,
    turn: usize,
}

impl Read for Chunked {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let want = self.sizes[self.turn % self.sizes.len()];
        self.turn += 1;
        let n = want.min(out.len()).min(self.data.len() - self.at);
        out[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn event() -> impl Strategy<Value = Value> {
    (tricky_string(), json_value(), any::<i64>()).prop_map(|(id, data, epoch)| {
        let mut m = Map::new();
        m.insert("event_id".into(), Value::String(id));
        m.insert("arrival_epoch".into(), Value::from(epoch));
        m.insert("data".into(), data);
        Value::Object(m)
    })
}

fn separator() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just(""), Just(""), Just("\n"), Just(" \r\n\t")]
}

fn read_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..300, 1..6)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn concatenated_events_round_trip(
        events in prop::collection::vec((event(), separator()), 0..12),
        sizes in read_sizes(),
        read_buffer in 1usize..512,
    ) {
        let mut data = Vec::new();
        let mut expected = Vec::new();
        for (ev, sep) in &events {
            let text = serde_json::to_string(ev).unwrap();
            let reparsed: Value = serde_json::from_str(&text).unwrap();
            expected.push((data.len() as u64, text.clone(), reparsed));
            data.extend_from_slice(text.as_bytes());
            data.extend_from_slice(sep.as_bytes());
        }
        let cfg = DecoderConfig { read_buffer, ..DecoderConfig::default() };
        let mut d = Decoder::new(Chunked { data, at: 0, sizes, turn: 0 }, cfg);
        let mut got = Vec::new();
        while let Some(item) = d.next().unwrap() {
            match item {
                Item::Event(e) => {
                    let span = e.fields.get(FieldId::EventId).unwrap();
                    let id_raw = &e.text()[span.start..span.end];
                    let parsed: Value = serde_json::from_str(e.text()).unwrap();
                    let id: String = serde_json::from_str(&format!("\"{id_raw}\"")).unwrap();
                    prop_assert_eq!(Some(id.as_str()), parsed["event_id"].as_str());
                    let data_span = e.fields.get(FieldId::Data).unwrap();
                    let data: Value = serde_json::from_str(&e.text()[data_span.json_range()]).unwrap();
                    prop_assert_eq!(&data, &parsed["data"]);
                    got.push((e.offset, e.text().to_string(), parsed));
                }
                Item::Damaged(x) => prop_assert!(false, "unexpected damage: {x:?}"),
            }
        }
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn damaged_input_is_fully_accounted_for(
        events in prop::collection::vec((event(), separator()), 1..10),
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 1..6),
        sizes in read_sizes(),
        max_event_bytes in 64usize..4096,
    ) {
        let mut data = Vec::new();
        for (ev, sep) in &events {
            data.extend_from_slice(serde_json::to_string(ev).unwrap().as_bytes());
            data.extend_from_slice(sep.as_bytes());
        }
        for (at, op, byte) in edits {
            if data.is_empty() { break; }
            let i = at.index(data.len());
            match op {
                0 => data[i] = byte,
                1 => { data.truncate(i); }
                _ => data.insert(i, byte),
            }
        }
        let run = |sizes: Vec<usize>, read_buffer: usize| {
            let cfg = DecoderConfig { read_buffer, max_event_bytes, ..DecoderConfig::default() };
            let mut d = Decoder::new(Chunked { data: data.clone(), at: 0, sizes, turn: 0 }, cfg);
            let mut ranges = Vec::new();
            while let Some(item) = d.next().unwrap() {
                ranges.push(match item {
                    Item::Event(e) => {
                        // Valid JSON (IgnoredAny checks the grammar without converting numbers,
                        // so 1e999 is accepted as the grammar allows) and an object.
                        serde_json::from_slice::<serde::de::IgnoredAny>(e.bytes()).unwrap();
                        assert_eq!(e.bytes()[0], b'{');
                        (e.offset, e.bytes().len() as u64, "event".to_string())
                    }
                    Item::Damaged(x) => {
                        if !x.raw_truncated {
                            assert_eq!(x.raw, &data[x.offset as usize..(x.offset + x.length) as usize]);
                        }
                        (x.offset, x.length, x.damage.code().to_string())
                    }
                });
            }
            ranges
        };
        let ranges = run(sizes, 16);
        prop_assert_eq!(&ranges, &run(vec![usize::MAX], 1 << 16));
        let mut at = 0u64;
        for (offset, length, _) in &ranges {
            prop_assert!(*offset >= at, "overlap at {offset}");
            let gap = &data[at as usize..*offset as usize];
            prop_assert!(gap.iter().all(|b| b" \t\r\n".contains(b)), "uncovered bytes {gap:?}");
            at = offset + length;
        }
        prop_assert!(data[at as usize..].iter().all(|b| b" \t\r\n".contains(b)));
    }
}
