//! A strict, allocation-free JSON value scanner over a byte slice.
//!
//! [`scan_value`] validates one JSON value starting at `b[0]` (which must not be whitespace) and
//! returns where it ends. For a top-level object it also records the spans of the fields Rewind
//! extracts (see [`FieldId`]), so the decoder splits events and extracts their top-level fields in
//! one pass. It never recurses (the nesting is tracked in a caller-provided stack), never panics on
//! any input and reports three results: complete, incomplete (more bytes are needed), or an error
//! at a byte position.
//!
//! UTF-8 is not validated here: the decoder validates each complete event once, in bulk.

/// The top-level fields of an event that Rewind extracts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldId {
    EventId = 0,
    Cid,
    OrgId,
    EventType,
    Domain,
    SchemaVersion,
    ArrivalEpoch,
    Timestamp,
    Data,
}

impl FieldId {
    pub const ALL: [FieldId; 9] = [
        FieldId::EventId,
        FieldId::Cid,
        FieldId::OrgId,
        FieldId::EventType,
        FieldId::Domain,
        FieldId::SchemaVersion,
        FieldId::ArrivalEpoch,
        FieldId::Timestamp,
        FieldId::Data,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FieldId::EventId => "event_id",
            FieldId::Cid => "cid",
            FieldId::OrgId => "org_id",
            FieldId::EventType => "event_type",
            FieldId::Domain => "domain",
            FieldId::SchemaVersion => "schema_version",
            FieldId::ArrivalEpoch => "arrival_epoch",
            FieldId::Timestamp => "timestamp",
            FieldId::Data => "data",
        }
    }

    /// The field a top-level member name is, if Rewind extracts it.
    pub fn from_name(name: &str) -> Option<FieldId> {
        FieldId::from_key(name.as_bytes())
    }

    fn from_key(key: &[u8]) -> Option<FieldId> {
        Some(match key {
            b"event_id" => FieldId::EventId,
            b"cid" => FieldId::Cid,
            b"org_id" => FieldId::OrgId,
            b"event_type" => FieldId::EventType,
            b"domain" => FieldId::Domain,
            b"schema_version" => FieldId::SchemaVersion,
            b"arrival_epoch" => FieldId::ArrivalEpoch,
            b"timestamp" => FieldId::Timestamp,
            b"data" => FieldId::Data,
            _ => return None,
        })
    }
}

/// The JSON type of a scanned value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// A string; the span covers its content without the quotes.
    String {
        escaped: bool,
    },
    Number,
    Bool,
    Null,
    Object,
    Array,
}

/// Where a field's value lies inside the event's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub kind: ValueKind,
}

impl Span {
    /// The value's JSON text, quotes included for strings.
    pub fn json_range(&self) -> std::ops::Range<usize> {
        match self.kind {
            ValueKind::String { .. } => self.start - 1..self.end + 1,
            _ => self.start..self.end,
        }
    }
}

/// The spans of the extracted top-level fields (the last occurrence wins on duplicate keys).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fields {
    spans: [Option<Span>; 9],
}

impl Fields {
    pub fn get(&self, id: FieldId) -> Option<Span> {
        self.spans[id as usize]
    }

    pub fn any(&self) -> bool {
        self.spans.iter().any(Option::is_some)
    }
}

/// Why a value is not valid JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyntaxError {
    ExpectedValue,
    ExpectedKey,
    ExpectedColon,
    ExpectedCommaOrEnd,
    InvalidEscape,
    ControlCharInString,
    InvalidNumber,
    InvalidLiteral,
    TooDeep,
}

impl SyntaxError {
    pub fn describe(self) -> &'static str {
        match self {
            SyntaxError::ExpectedValue => "expected a JSON value",
            SyntaxError::ExpectedKey => "expected a string key or '}'",
            SyntaxError::ExpectedColon => "expected ':' after an object key",
            SyntaxError::ExpectedCommaOrEnd => "expected ',' or the end of the object/array",
            SyntaxError::InvalidEscape => "invalid escape sequence in string",
            SyntaxError::ControlCharInString => "unescaped control character in string",
            SyntaxError::InvalidNumber => "invalid number",
            SyntaxError::InvalidLiteral => "invalid literal (expected true, false or null)",
            SyntaxError::TooDeep => "nesting too deep",
        }
    }
}

// Returned by value on the hot path: boxing the large variant would cost an allocation per event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// The value ends at `end` (exclusive); `fields` is filled when it is an object.
    Complete {
        end: usize,
        kind: ValueKind,
        fields: Fields,
    },
    /// The slice ended inside the value.
    Incomplete,
    /// Not valid JSON at byte `pos`.
    Error { pos: usize, error: SyntaxError },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Value,
    ObjectFirst,
    ObjectKey,
    After,
    ArrayFirst,
}

const fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Index of the first byte at or after `i` that is not JSON whitespace, or `b.len()`.
#[inline(always)]
pub fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_ws(b[i]) {
        i += 1;
    }
    i
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

#[inline]
fn has_zero_byte(v: u64) -> u64 {
    v.wrapping_sub(ONES) & !v & HIGHS
}

/// Index of the first `"`, `\` or control byte at or after `i`, or `b.len()`.
/// Reads eight bytes at a time: the first flagged byte of a word is always a true match.
#[inline]
fn find_string_special(b: &[u8], mut i: usize) -> usize {
    while let Some(chunk) = b.get(i..i + 8) {
        let x = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        let quote = has_zero_byte(x ^ (ONES * b'"' as u64));
        let backslash = has_zero_byte(x ^ (ONES * b'\\' as u64));
        let control = x.wrapping_sub(ONES * 0x20) & !x & HIGHS;
        let hits = quote | backslash | control;
        if hits != 0 {
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < b.len() && b[i] != b'"' && b[i] != b'\\' && b[i] >= 0x20 {
        i += 1;
    }
    i
}

enum Step {
    Done(usize, bool),
    Incomplete,
    Error(usize, SyntaxError),
}

/// Scans a string whose opening quote is at `b[open]`; returns the index of the closing quote.
///
/// This and the other token scanners are inlined into `scan_value` (they were calls returning
/// a `Step` through memory): the decoder alone ran 10–17% faster (`REWIND_BENCH_ONLY=rewind
/// cargo bench -p rewind-worker --bench decode`, docs/performance.md).
#[inline(always)]
fn scan_string(b: &[u8], open: usize) -> Step {
    let mut i = open + 1;
    let mut escaped = false;
    loop {
        i = find_string_special(b, i);
        let Some(&c) = b.get(i) else {
            return Step::Incomplete;
        };
        match c {
            b'"' => return Step::Done(i, escaped),
            b'\\' => {
                escaped = true;
                let Some(&e) = b.get(i + 1) else {
                    return Step::Incomplete;
                };
                match e {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                    b'u' => {
                        for k in 2..6 {
                            match b.get(i + k) {
                                None => return Step::Incomplete,
                                Some(h) if h.is_ascii_hexdigit() => {}
                                Some(_) => return Step::Error(i + k, SyntaxError::InvalidEscape),
                            }
                        }
                        i += 6;
                    }
                    _ => return Step::Error(i + 1, SyntaxError::InvalidEscape),
                }
            }
            _ => return Step::Error(i, SyntaxError::ControlCharInString),
        }
    }
}

/// Scans a number starting at `b[i]`; returns the index just past it.
#[inline(always)]
fn scan_number(b: &[u8], start: usize) -> Step {
    let mut i = start;
    let at = |i: usize| b.get(i).copied();
    if at(i) == Some(b'-') {
        i += 1;
    }
    match at(i) {
        None => return Step::Incomplete,
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            while matches!(at(i), Some(b'0'..=b'9')) {
                i += 1;
            }
        }
        Some(_) => return Step::Error(i, SyntaxError::InvalidNumber),
    }
    if at(i) == Some(b'.') {
        i += 1;
        match at(i) {
            None => return Step::Incomplete,
            Some(b'0'..=b'9') => {}
            Some(_) => return Step::Error(i, SyntaxError::InvalidNumber),
        }
        while matches!(at(i), Some(b'0'..=b'9')) {
            i += 1;
        }
    }
    if matches!(at(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(at(i), Some(b'+' | b'-')) {
            i += 1;
        }
        match at(i) {
            None => return Step::Incomplete,
            Some(b'0'..=b'9') => {}
            Some(_) => return Step::Error(i, SyntaxError::InvalidNumber),
        }
        while matches!(at(i), Some(b'0'..=b'9')) {
            i += 1;
        }
    }
    // A number may legally end at the end of the slice only if more bytes cannot extend it;
    // the caller cannot know that, so a number touching the end is incomplete.
    if i == b.len() {
        return Step::Incomplete;
    }
    Step::Done(i, false)
}

#[inline(always)]
fn scan_literal(b: &[u8], i: usize) -> Step {
    let word: &[u8] = match b[i] {
        b't' => b"true",
        b'f' => b"false",
        _ => b"null",
    };
    for (k, &w) in word.iter().enumerate() {
        match b.get(i + k) {
            None => return Step::Incomplete,
            Some(&c) if c == w => {}
            Some(_) => return Step::Error(i + k, SyntaxError::InvalidLiteral),
        }
    }
    Step::Done(i + word.len(), false)
}

/// Validates the JSON value starting at `b[0]` and extracts the top-level fields of an object.
///
/// `stack` is scratch space (reused across calls to avoid allocation); `max_depth` bounds nesting.
pub fn scan_value(b: &[u8], max_depth: usize, stack: &mut Vec<bool>) -> Scan {
    stack.clear();
    let mut fields = Fields::default();
    let mut i = 0;
    let mut state = State::Value;
    let mut top_kind = ValueKind::Null;
    // The top-level field whose value is being scanned, and where that value starts.
    let mut current: Option<(FieldId, usize)> = None;

    macro_rules! step {
        ($e:expr) => {
            match $e {
                Step::Done(end, escaped) => (end, escaped),
                Step::Incomplete => return Scan::Incomplete,
                Step::Error(pos, error) => return Scan::Error { pos, error },
            }
        };
    }

    loop {
        match state {
            State::Value | State::ArrayFirst => {
                i = skip_ws(b, i);
                let Some(&c) = b.get(i) else {
                    return Scan::Incomplete;
                };
                if state == State::ArrayFirst && c == b']' {
                    stack.pop();
                    i += 1;
                    state = State::After;
                    continue;
                }
                let depth = stack.len();
                let kind;
                match c {
                    b'{' | b'[' => {
                        if depth >= max_depth {
                            return Scan::Error {
                                pos: i,
                                error: SyntaxError::TooDeep,
                            };
                        }
                        let is_object = c == b'{';
                        stack.push(is_object);
                        if depth == 0 {
                            top_kind = if is_object {
                                ValueKind::Object
                            } else {
                                ValueKind::Array
                            };
                        }
                        i += 1;
                        state = if is_object {
                            State::ObjectFirst
                        } else {
                            State::ArrayFirst
                        };
                        continue;
                    }
                    b'"' => {
                        let (close, escaped) = step!(scan_string(b, i));
                        kind = ValueKind::String { escaped };
                        if depth == 1
                            && let Some((field, _)) = current.take()
                        {
                            fields.spans[field as usize] = Some(Span {
                                start: i + 1,
                                end: close,
                                kind,
                            });
                        }
                        i = close + 1;
                    }
                    b'-' | b'0'..=b'9' => {
                        let (end, _) = step!(scan_number(b, i));
                        kind = ValueKind::Number;
                        i = end;
                    }
                    b't' | b'f' | b'n' => {
                        let (end, _) = step!(scan_literal(b, i));
                        kind = if c == b'n' {
                            ValueKind::Null
                        } else {
                            ValueKind::Bool
                        };
                        i = end;
                    }
                    _ => {
                        return Scan::Error {
                            pos: i,
                            error: SyntaxError::ExpectedValue,
                        };
                    }
                }
                if depth == 0 {
                    return Scan::Complete {
                        end: i,
                        kind,
                        fields,
                    };
                }
                state = State::After;
            }
            State::ObjectFirst | State::ObjectKey => {
                i = skip_ws(b, i);
                let Some(&c) = b.get(i) else {
                    return Scan::Incomplete;
                };
                if c == b'}' && state == State::ObjectFirst {
                    stack.pop();
                    i += 1;
                    state = State::After;
                    continue;
                }
                if c != b'"' {
                    return Scan::Error {
                        pos: i,
                        error: SyntaxError::ExpectedKey,
                    };
                }
                let (close, escaped) = step!(scan_string(b, i));
                let key_field = if stack.len() == 1 {
                    if escaped {
                        unescape(&b[i + 1..close]).and_then(|k| FieldId::from_key(k.as_bytes()))
                    } else {
                        FieldId::from_key(&b[i + 1..close])
                    }
                } else {
                    None
                };
                i = skip_ws(b, close + 1);
                match b.get(i) {
                    None => return Scan::Incomplete,
                    Some(b':') => i += 1,
                    Some(_) => {
                        return Scan::Error {
                            pos: i,
                            error: SyntaxError::ExpectedColon,
                        };
                    }
                }
                if let Some(field) = key_field {
                    current = Some((field, skip_ws(b, i)));
                }
                state = State::Value;
            }
            State::After => {
                // A container value of a top-level field just closed: record its span.
                if stack.len() == 1
                    && let Some((field, start)) = current.take()
                {
                    let kind = match b[start] {
                        b'{' => ValueKind::Object,
                        b'[' => ValueKind::Array,
                        b't' | b'f' => ValueKind::Bool,
                        b'n' => ValueKind::Null,
                        _ => ValueKind::Number,
                    };
                    fields.spans[field as usize] = Some(Span {
                        start,
                        end: i,
                        kind,
                    });
                }
                let Some(&in_object) = stack.last() else {
                    return Scan::Complete {
                        end: i,
                        kind: top_kind,
                        fields,
                    };
                };
                i = skip_ws(b, i);
                let Some(&c) = b.get(i) else {
                    return Scan::Incomplete;
                };
                match (c, in_object) {
                    (b',', true) => {
                        i += 1;
                        state = State::ObjectKey;
                    }
                    (b',', false) => {
                        i += 1;
                        state = State::Value;
                    }
                    (b'}', true) | (b']', false) => {
                        stack.pop();
                        i += 1;
                        if stack.is_empty() {
                            return Scan::Complete {
                                end: i,
                                kind: top_kind,
                                fields,
                            };
                        }
                    }
                    _ => {
                        return Scan::Error {
                            pos: i,
                            error: SyntaxError::ExpectedCommaOrEnd,
                        };
                    }
                }
            }
        }
    }
}

/// Decodes the content of a JSON string (without quotes) that contains escapes.
/// Returns `None` for an invalid escape or a lone surrogate.
pub fn unescape(content: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(content.len());
    let mut i = 0;
    while i < content.len() {
        let c = content[i];
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let e = *content.get(i + 1)?;
        i += 2;
        let simple = match e {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let hi = hex4(content.get(i..i + 4)?)?;
                i += 4;
                let code = if (0xD800..0xDC00).contains(&hi) {
                    if content.get(i..i + 2)? != b"\\u" {
                        return None;
                    }
                    let lo = hex4(content.get(i + 2..i + 6)?)?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return None;
                    }
                    i += 6;
                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                } else if (0xDC00..0xE000).contains(&hi) {
                    return None;
                } else {
                    hi
                };
                let ch = char::from_u32(code)?;
                let mut tmp = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut tmp).as_bytes());
                continue;
            }
            _ => return None,
        };
        out.push(simple);
    }
    String::from_utf8(out).ok()
}

fn hex4(h: &[u8]) -> Option<u32> {
    let mut v = 0u32;
    for &c in h {
        v = v * 16 + (c as char).to_digit(16)?;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(s: &str) -> Scan {
        scan_value(s.as_bytes(), 64, &mut Vec::new())
    }

    fn field(s: &str, f: FieldId) -> Option<&str> {
        match scan(s) {
            Scan::Complete { fields, .. } => fields.get(f).map(|sp| &s[sp.start..sp.end]),
            other => panic!("not complete: {other:?}"),
        }
    }

    #[test]
    fn extracts_top_level_fields_only() {
        let s = r#"{"event_id":"a1","data":{"event_id":"inner","x":[1,{"y":2}]},"schema_version":3,"cid":null}"#;
        assert_eq!(field(s, FieldId::EventId), Some("a1"));
        assert_eq!(
            field(s, FieldId::Data),
            Some(r#"{"event_id":"inner","x":[1,{"y":2}]}"#)
        );
        assert_eq!(field(s, FieldId::SchemaVersion), Some("3"));
        assert_eq!(field(s, FieldId::Cid), Some("null"));
        assert_eq!(field(s, FieldId::Domain), None);
    }

    #[test]
    fn strings_with_braces_and_escapes_stay_intact() {
        let s = r#"{"event_id":"x}{\"y\":1}{","data":"}{"}"#;
        match scan(s) {
            Scan::Complete { end, .. } => assert_eq!(end, s.len()),
            other => panic!("{other:?}"),
        }
        assert_eq!(field(s, FieldId::EventId), Some(r#"x}{\"y\":1}{"#));
    }

    #[test]
    fn escaped_keys_are_recognised() {
        let s = r#"{"event\u005fid":"k"}"#;
        assert_eq!(field(s, FieldId::EventId), Some("k"));
    }

    #[test]
    fn incomplete_and_errors() {
        assert_eq!(scan(r#"{"a":"b"#), Scan::Incomplete);
        assert_eq!(scan(r#"{"a":12"#), Scan::Incomplete);
        assert_eq!(scan(r#"{"a":tr"#), Scan::Incomplete);
        assert!(matches!(
            scan(r#"{"a" 1}"#),
            Scan::Error {
                pos: 5,
                error: SyntaxError::ExpectedColon
            }
        ));
        assert!(matches!(
            scan("{\"a\":\"x\ny\"}"),
            Scan::Error {
                error: SyntaxError::ControlCharInString,
                ..
            }
        ));
        assert!(matches!(
            scan(r#"{"a":01}"#),
            Scan::Error {
                error: SyntaxError::ExpectedCommaOrEnd,
                ..
            }
        ));
        assert!(matches!(
            scan(r#"{"a":"\q"}"#),
            Scan::Error {
                error: SyntaxError::InvalidEscape,
                ..
            }
        ));
        assert!(matches!(
            scan(r#"{"a":[1,]}"#),
            Scan::Error {
                error: SyntaxError::ExpectedValue,
                ..
            }
        ));
        assert!(matches!(
            scan(r#"{"a":nul}"#),
            Scan::Error {
                error: SyntaxError::InvalidLiteral,
                ..
            }
        ));
    }

    #[test]
    fn depth_is_bounded() {
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert!(matches!(
            scan(&deep),
            Scan::Error {
                error: SyntaxError::TooDeep,
                pos: 64
            }
        ));
        let ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(matches!(scan(&ok), Scan::Complete { .. }));
    }

    #[test]
    fn special_byte_search_matches_naive() {
        let inputs: [&[u8]; 5] = [
            b"abcdefghijklmnop\"",
            b"abc\\defgh",
            b"\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\x01",
            b"0123456789abcdef",
            b"",
        ];
        let naive = |input: &[u8], start: usize| {
            (start..input.len())
                .find(|&k| input[k] == b'"' || input[k] == b'\\' || input[k] < 0x20)
                .unwrap_or(input.len())
        };
        for input in inputs {
            for start in 0..=input.len() {
                assert_eq!(find_string_special(input, start), naive(input, start));
            }
        }
        // Every byte value at every place of a word, after any other byte (a borrow between
        // the bytes of a word must never hide the first special byte nor invent one).
        for before in 0..=255u8 {
            for b in 0..=255u8 {
                for at in 0..8 {
                    let mut word = [b'a'; 16];
                    if at > 0 {
                        word[at - 1] = before;
                    }
                    word[at] = b;
                    assert_eq!(
                        find_string_special(&word, 0),
                        naive(&word, 0),
                        "{before:#x} then {b:#x} at {at}"
                    );
                }
            }
        }
    }

    #[test]
    fn field_names_are_recognised_exactly() {
        for id in FieldId::ALL {
            let name = id.name().as_bytes();
            assert_eq!(FieldId::from_key(name), Some(id));
            // Same length, one byte off anywhere: not the field.
            for at in 0..name.len() {
                let mut other = name.to_vec();
                other[at] ^= 0x20;
                assert_eq!(FieldId::from_key(&other), None, "{other:?}");
            }
            assert_eq!(FieldId::from_key(&name[1..]), None);
            assert_eq!(FieldId::from_key(&[name, b"x"].concat()), None);
        }
        for other in [
            &b""[..],
            b"org_ix",
            b"domaim",
            b"Data",
            b"event-id",
            b"timestamps",
        ] {
            assert_eq!(FieldId::from_key(other), None, "{other:?}");
        }
    }

    #[test]
    fn unescape_handles_surrogates() {
        assert_eq!(
            unescape(br"a\n\u00e9\ud83d\ude00").as_deref(),
            Some("a\né😀")
        );
        assert_eq!(unescape(br"\ud83d"), None);
        assert_eq!(unescape(br"\ude00"), None);
    }
}
