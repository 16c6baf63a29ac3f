//! Streaming decoder for archive objects: JSON events concatenated with no delimiter
//! (`{..}{..}`), optionally separated by whitespace or newlines (NDJSON).
//!
//! Every byte of the input ends up in exactly one of: an [`Event`], a [`Damaged`] range, or the
//! whitespace between them. Damage never stops the decoder: it reports the damaged range and
//! resynchronises at the next plausible event start.
//!
//! Memory: the decoder holds a read buffer (`read_buffer` bytes, default 256 KiB) plus at most one
//! event (bounded by `max_event_bytes`). An event larger than that is skipped with a streaming
//! structural skipper and reported with the first [`RAW_PREFIX`] bytes of it.
//!
//! # Resynchronisation
//! When the bytes at the current position do not form a valid JSON object, the damaged range
//! starts there and ends at the first candidate `{` after it from which a complete, valid JSON
//! object parses that plausibly is an event:
//! - it has at least one of the top-level fields Rewind extracts,
//! - the next non-whitespace byte after it is not `,` `}` `]` `:` (those mean it was nested),
//! - and either the next non-whitespace byte is `{`, or the byte before the candidate is not
//!   `:` `,` `[` (which would make it a nested value of the damaged event).

use std::io::{self, Read};

use crate::scan::{Fields, Scan, SyntaxError, ValueKind, scan_value, skip_ws};

/// How many bytes of an oversized event or damaged range are kept for the failed record.
pub const RAW_PREFIX: usize = 64 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct DecoderConfig {
    /// Largest event accepted, in bytes (default 16 MiB).
    pub max_event_bytes: usize,
    /// Deepest nesting accepted (default 128, as serde_json).
    pub max_depth: usize,
    /// Bytes requested from the reader at a time.
    pub read_buffer: usize,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        DecoderConfig {
            max_event_bytes: 16 * 1024 * 1024,
            max_depth: 128,
            read_buffer: 256 * 1024,
        }
    }
}

/// One decoded event: its original bytes and the spans of its top-level fields.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    /// Offset of the event's first byte in the (decompressed) object.
    pub offset: u64,
    /// The original bytes, exactly as archived (validated as UTF-8 once, by the decoder).
    pub text: &'a str,
    pub fields: Fields,
}

impl<'a> Event<'a> {
    /// The event as text.
    pub fn text(&self) -> &'a str {
        self.text
    }

    /// The original bytes, exactly as archived.
    pub fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }
}

/// What is wrong with a damaged range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// The object ended inside an event.
    Truncated,
    /// Bytes that are not valid JSON (garbage between events, a broken event).
    Syntax { at: u64, error: SyntaxError },
    /// A complete event that is not valid UTF-8.
    InvalidUtf8 { at: u64 },
    /// A complete JSON value that is not an object.
    NotAnObject { kind: ValueKind },
    /// An event larger than `max_event_bytes`.
    TooLarge { limit: usize },
    /// The (compressed) stream itself is corrupt; nothing after `at` could be read.
    CorruptStream { message: String },
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::Truncated => write!(f, "truncated: the object ends inside an event"),
            Damage::Syntax { at, error } => {
                write!(f, "invalid JSON: {} at byte {at}", error.describe())
            }
            Damage::InvalidUtf8 { at } => write!(f, "invalid UTF-8 at byte {at}"),
            Damage::NotAnObject { kind } => {
                let what = match kind {
                    ValueKind::Array => "an array",
                    ValueKind::String { .. } => "a string",
                    ValueKind::Number => "a number",
                    ValueKind::Bool => "a boolean",
                    ValueKind::Null => "null",
                    ValueKind::Object => "an object",
                };
                write!(f, "not an object: the value is {what}")
            }
            Damage::TooLarge { limit } => {
                write!(f, "event larger than --max-event-bytes ({limit} bytes)")
            }
            Damage::CorruptStream { message } => {
                write!(f, "corrupt compressed stream: {message}")
            }
        }
    }
}

impl Damage {
    /// A short stable name for counting and filtering.
    pub fn code(&self) -> &'static str {
        match self {
            Damage::Truncated => "truncated",
            Damage::Syntax { .. } => "syntax",
            Damage::InvalidUtf8 { .. } => "invalid_utf8",
            Damage::NotAnObject { .. } => "not_an_object",
            Damage::TooLarge { .. } => "too_large",
            Damage::CorruptStream { .. } => "corrupt_stream",
        }
    }
}

/// A damaged byte range: where, how long, why, and (a prefix of) its bytes.
#[derive(Debug, Clone)]
pub struct Damaged<'a> {
    pub offset: u64,
    pub length: u64,
    pub damage: Damage,
    /// The damaged bytes, or their first [`RAW_PREFIX`] bytes when `raw_truncated`.
    pub raw: &'a [u8],
    pub raw_truncated: bool,
}

#[derive(Debug)]
pub enum Item<'a> {
    Event(Event<'a>),
    Damaged(Damaged<'a>),
}

/// Marks reader errors that mean "the stream is corrupt" (routed as damage) rather than
/// "the read failed" (an I/O error that fails the shard so it can be retried).
pub fn is_corrupt_stream(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput | io::ErrorKind::UnexpectedEof
    )
}

pub struct Decoder<R> {
    reader: R,
    cfg: DecoderConfig,
    buf: Vec<u8>,
    /// How many bytes the next read asks for (zeroed first): twice what the last read gave, within
    /// [`MIN_READ`, `read_buffer`]. A network body hands over ~16 KiB per read; zeroing a whole
    /// `read_buffer` before each cost ~2% of a run over small S3 objects.
    next_read: usize,
    /// Absolute offset of `buf[0]`.
    base: u64,
    /// Next unconsumed byte in `buf`.
    pos: usize,
    eof: bool,
    stack: Vec<bool>,
    /// Kept prefix of an oversized event (the buffer moves on without it).
    oversize_raw: Vec<u8>,
    stream_error: Option<String>,
}

/// The first read of an object asks for at most this much (later ones follow what reads give).
const FIRST_READ: usize = 64 * 1024;
/// Reads never ask for less than this (unless `read_buffer` is smaller).
const MIN_READ: usize = 8 * 1024;

enum Candidate {
    Accept,
    Reject,
    NeedMore,
}

impl<R: Read> Decoder<R> {
    pub fn new(reader: R, cfg: DecoderConfig) -> Self {
        Decoder {
            reader,
            cfg,
            buf: Vec::with_capacity(cfg.read_buffer * 2),
            next_read: cfg.read_buffer.min(FIRST_READ),
            base: 0,
            pos: 0,
            eof: false,
            stack: Vec::with_capacity(cfg.max_depth.min(1024)),
            oversize_raw: Vec::new(),
            stream_error: None,
        }
    }

    /// Bytes consumed from the reader so far.
    pub fn bytes_read(&self) -> u64 {
        self.base + self.buf.len() as u64
    }

    /// Drops `buf[..keep]` and reads more. Returns how far indices moved left.
    fn refill(&mut self, keep: usize) -> io::Result<usize> {
        if keep > 0 {
            self.buf.drain(..keep);
            self.base += keep as u64;
            self.pos -= keep.min(self.pos);
        }
        if self.eof {
            return Ok(keep);
        }
        let len = self.buf.len();
        self.buf.resize(len + self.next_read.max(1), 0);
        loop {
            match self.reader.read(&mut self.buf[len..]) {
                Ok(n) => {
                    self.buf.truncate(len + n);
                    self.next_read = (2 * n).clamp(
                        MIN_READ.min(self.cfg.read_buffer),
                        self.cfg.read_buffer.max(1),
                    );
                    if n == 0 {
                        self.eof = true;
                    }
                    return Ok(keep);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_corrupt_stream(&e) => {
                    self.buf.truncate(len);
                    self.eof = true;
                    self.stream_error = Some(e.to_string());
                    return Ok(keep);
                }
                Err(e) => {
                    self.buf.truncate(len);
                    return Err(e);
                }
            }
        }
    }

    /// The next event or damaged range; `None` at the end of the object.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> io::Result<Option<Item<'_>>> {
        loop {
            self.pos = skip_ws(&self.buf, self.pos);
            if self.pos == self.buf.len() {
                if self.eof {
                    return Ok(self.stream_error.take().map(|message| {
                        let at = self.bytes_read();
                        Item::Damaged(Damaged {
                            offset: at,
                            length: 0,
                            damage: Damage::CorruptStream { message },
                            raw: &[],
                            raw_truncated: false,
                        })
                    }));
                }
                let keep = self.pos;
                self.refill(keep)?;
                continue;
            }
            let start = self.pos;
            let window_end = self
                .buf
                .len()
                .min(start.saturating_add(self.cfg.max_event_bytes));
            let window_full = window_end == start.saturating_add(self.cfg.max_event_bytes);
            match scan_value(
                &self.buf[start..window_end],
                self.cfg.max_depth,
                &mut self.stack,
            ) {
                Scan::Complete { end, kind, fields } => {
                    let end = start + end;
                    self.pos = end;
                    if kind != ValueKind::Object {
                        return Ok(Some(self.damaged(start, end, Damage::NotAnObject { kind })));
                    }
                    let text = match simdutf8::compat::from_utf8(&self.buf[start..end]) {
                        Ok(text) => text,
                        Err(e) => {
                            let at = self.base + (start + e.valid_up_to()) as u64;
                            return Ok(Some(self.damaged(start, end, Damage::InvalidUtf8 { at })));
                        }
                    };
                    return Ok(Some(Item::Event(Event {
                        offset: self.base + start as u64,
                        text,
                        fields,
                    })));
                }
                Scan::Incomplete if window_full => return self.skip_oversized().map(Some),
                Scan::Incomplete if !self.eof => {
                    self.refill(start)?;
                }
                Scan::Incomplete => return self.resync(Damage::Truncated).map(Some),
                Scan::Error { pos, error } => {
                    let at = self.base + (start + pos) as u64;
                    return self.resync(Damage::Syntax { at, error }).map(Some);
                }
            }
        }
    }

    fn damaged(&self, start: usize, end: usize, damage: Damage) -> Item<'_> {
        let length = (end - start) as u64;
        let kept = (end - start).min(RAW_PREFIX);
        Item::Damaged(Damaged {
            offset: self.base + start as u64,
            length,
            damage,
            raw: &self.buf[start..start + kept],
            raw_truncated: kept < end - start,
        })
    }

    /// The bytes at `self.pos` are damaged: find where the next event starts.
    ///
    /// Candidates are searched within `max_event_bytes` of the damaged range's start; a longer
    /// damaged range is reported in pieces of that size. Every decision depends on byte
    /// positions only, never on how the input happened to be buffered.
    fn resync(&mut self, damage: Damage) -> io::Result<Item<'_>> {
        let limit = self.cfg.max_event_bytes;
        let mut start = self.pos;
        let mut search = start + 1;
        loop {
            let window_end = self.buf.len().min(start + limit);
            let found = self.buf[search.min(window_end)..window_end]
                .iter()
                .position(|&b| b == b'{')
                .map(|k| search + k);
            let Some(c) = found else {
                if self.eof || window_end == start + limit {
                    let end = trim_ws_end(&self.buf, start, window_end);
                    self.pos = window_end;
                    return Ok(self.damaged(start, end, damage));
                }
                let shift = self.refill(start)?;
                start -= shift;
                search = window_end - shift;
                continue;
            };
            match self.try_candidate(start, c) {
                Candidate::Accept => {
                    let end = trim_ws_end(&self.buf, start, c);
                    self.pos = c;
                    return Ok(self.damaged(start, end, damage));
                }
                Candidate::Reject => search = c + 1,
                Candidate::NeedMore => {
                    let shift = self.refill(start)?;
                    start -= shift;
                    search = c - shift;
                }
            }
        }
    }

    fn try_candidate(&mut self, damaged_start: usize, c: usize) -> Candidate {
        let window_end = self
            .buf
            .len()
            .min(c.saturating_add(self.cfg.max_event_bytes));
        let window_full = window_end == c.saturating_add(self.cfg.max_event_bytes);
        let end = match scan_value(
            &self.buf[c..window_end],
            self.cfg.max_depth,
            &mut self.stack,
        ) {
            Scan::Complete { end, fields, .. } if fields.any() => c + end,
            Scan::Complete { .. } | Scan::Error { .. } => return Candidate::Reject,
            Scan::Incomplete if self.eof || window_full => return Candidate::Reject,
            Scan::Incomplete => return Candidate::NeedMore,
        };
        let next = skip_ws(&self.buf, end);
        let next_byte = match self.buf.get(next) {
            Some(&b) => Some(b),
            None if self.eof => None,
            None => return Candidate::NeedMore,
        };
        if matches!(next_byte, Some(b',' | b'}' | b']' | b':')) {
            return Candidate::Reject;
        }
        if next_byte == Some(b'{') {
            return Candidate::Accept;
        }
        let prev = self.buf[damaged_start..c]
            .iter()
            .rev()
            .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
        if matches!(prev, Some(b':' | b',' | b'[')) {
            Candidate::Reject
        } else {
            Candidate::Accept
        }
    }

    /// The event at `self.pos` is larger than `max_event_bytes`: skip it structurally without
    /// buffering it, keeping its first bytes for the failed record.
    fn skip_oversized(&mut self) -> io::Result<Item<'_>> {
        let start_abs = self.base + self.pos as u64;
        self.oversize_raw.clear();
        let mut depth: usize = 0;
        // A top-level string ends with its closing quote, a container when its depth returns to 0.
        let top_string = self.buf[self.pos] == b'"';
        let mut in_string = false;
        let mut escape = false;
        let mut i = self.pos;
        loop {
            while i < self.buf.len() {
                let b = self.buf[i];
                i += 1;
                if in_string {
                    if escape {
                        escape = false;
                    } else if b == b'\\' {
                        escape = true;
                    } else if b == b'"' {
                        in_string = false;
                        if top_string && depth == 0 {
                            return Ok(self.finish_oversized(start_abs, i, false));
                        }
                    }
                    continue;
                }
                match b {
                    b'"' => in_string = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            return Ok(self.finish_oversized(start_abs, i, false));
                        }
                    }
                    _ => {}
                }
            }
            if self.eof {
                let end = self.buf.len();
                return Ok(self.finish_oversized(start_abs, end, true));
            }
            // Keep the first bytes, drop the rest of what was scanned, read on.
            let room = RAW_PREFIX.saturating_sub(self.oversize_raw.len());
            let take = room.min(i - self.pos);
            let from = self.pos;
            self.oversize_raw
                .extend_from_slice(&self.buf[from..from + take]);
            self.pos = i;
            let keep = i;
            let shift = self.refill(keep)?;
            i -= shift;
        }
    }

    fn finish_oversized(&mut self, start_abs: u64, end: usize, truncated: bool) -> Item<'_> {
        let room = RAW_PREFIX.saturating_sub(self.oversize_raw.len());
        let take = room.min(end - self.pos);
        let from = self.pos;
        self.oversize_raw
            .extend_from_slice(&self.buf[from..from + take]);
        self.pos = end;
        let length = self.base + end as u64 - start_abs;
        let damage = if truncated {
            Damage::Truncated
        } else {
            Damage::TooLarge {
                limit: self.cfg.max_event_bytes,
            }
        };
        Item::Damaged(Damaged {
            offset: start_abs,
            length,
            damage,
            raw: &self.oversize_raw,
            raw_truncated: (self.oversize_raw.len() as u64) < length,
        })
    }
}

fn trim_ws_end(buf: &[u8], start: usize, mut end: usize) -> usize {
    while end > start && matches!(buf[end - 1], b' ' | b'\t' | b'\n' | b'\r') {
        end -= 1;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::FieldId;

    /// A reader that returns at most `chunk` bytes per read, to exercise buffer boundaries.
    pub(crate) struct Chunked<'a> {
        pub data: &'a [u8],
        pub chunk: usize,
    }

    impl Read for Chunked<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.data.len().min(self.chunk).min(out.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[derive(Debug, PartialEq)]
    enum Out {
        Ev(u64, String),
        Bad(u64, u64, &'static str),
    }

    fn decode_with(data: &[u8], chunk: usize, cfg: DecoderConfig) -> Vec<Out> {
        let mut d = Decoder::new(Chunked { data, chunk }, cfg);
        let mut out = Vec::new();
        while let Some(item) = d.next().unwrap() {
            out.push(match item {
                Item::Event(e) => Out::Ev(e.offset, e.text().to_string()),
                Item::Damaged(x) => Out::Bad(x.offset, x.length, x.damage.code()),
            });
        }
        out
    }

    fn decode(data: &[u8]) -> Vec<Out> {
        let small = DecoderConfig {
            read_buffer: 7,
            ..DecoderConfig::default()
        };
        let a = decode_with(data, 3, small);
        let b = decode_with(data, usize::MAX, DecoderConfig::default());
        assert_eq!(a, b, "result depends on buffer boundaries");
        a
    }

    fn ev(offset: u64, s: &str) -> Out {
        Out::Ev(offset, s.to_string())
    }

    const A: &str = r#"{"event_id":"a","data":{"s":"x}{y"}}"#;
    const B: &str = r#"{"event_id":"b","data":[1,2,{"k":"\"}{\""}]}"#;

    #[test]
    fn concatenated_and_ndjson() {
        let cat = format!("{A}{B}");
        assert_eq!(
            decode(cat.as_bytes()),
            vec![ev(0, A), ev(A.len() as u64, B)]
        );
        let nd = format!("{A}\n{B}\r\n  \n");
        assert_eq!(
            decode(nd.as_bytes()),
            vec![ev(0, A), ev(A.len() as u64 + 1, B)]
        );
        assert_eq!(decode(b""), vec![]);
        assert_eq!(decode(b" \n\t "), vec![]);
    }

    #[test]
    fn truncated_tail() {
        let s = format!("{A}{}", &B[..20]);
        assert_eq!(
            decode(s.as_bytes()),
            vec![ev(0, A), Out::Bad(A.len() as u64, 20, "truncated")]
        );
    }

    #[test]
    fn truncated_event_followed_by_a_complete_one() {
        // A writer crashed mid-event and the next event was appended after it.
        let broken = r#"{"event_id":"t","data":{"note":"cut he"#;
        let s = format!("{A}{broken}{B}{A}");
        let b_at = (A.len() + broken.len()) as u64;
        assert_eq!(
            decode(s.as_bytes()),
            vec![
                ev(0, A),
                Out::Bad(A.len() as u64, broken.len() as u64, "syntax"),
                ev(b_at, B),
                ev(b_at + B.len() as u64, A),
            ]
        );
    }

    #[test]
    fn garbage_between_events() {
        let s = format!("{A}\x00\x01garbage{{ not json {B}");
        let garbage = "\x00\x01garbage{ not json ";
        assert_eq!(
            decode(s.as_bytes()),
            vec![
                ev(0, A),
                Out::Bad(A.len() as u64, garbage.len() as u64 - 1, "syntax"),
                ev((A.len() + garbage.len()) as u64, B),
            ]
        );
    }

    #[test]
    fn invalid_utf8_fails_only_that_event() {
        let mut s = A.as_bytes().to_vec();
        let bad: &[u8] = b"{\"event_id\":\"u\",\"data\":\"\xff\xfe\"}";
        s.extend_from_slice(bad);
        s.extend_from_slice(B.as_bytes());
        assert_eq!(
            decode(&s),
            vec![
                ev(0, A),
                Out::Bad(A.len() as u64, bad.len() as u64, "invalid_utf8"),
                ev((A.len() + bad.len()) as u64, B),
            ]
        );
    }

    #[test]
    fn nesting_too_deep() {
        let deep = format!(
            r#"{{"event_id":"d","data":{}1{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        let s = format!("{A}{deep}{B}");
        assert_eq!(
            decode(s.as_bytes()),
            vec![
                ev(0, A),
                Out::Bad(A.len() as u64, deep.len() as u64, "syntax"),
                ev((A.len() + deep.len()) as u64, B),
            ]
        );
    }

    #[test]
    fn values_that_are_not_objects() {
        let s = format!("{A}[1,2] \"str\" 42 null{B}");
        let o = A.len() as u64;
        assert_eq!(
            decode(s.as_bytes()),
            vec![
                ev(0, A),
                Out::Bad(o, 5, "not_an_object"),
                Out::Bad(o + 6, 5, "not_an_object"),
                Out::Bad(o + 12, 2, "not_an_object"),
                Out::Bad(o + 15, 4, "not_an_object"),
                ev(o + 19, B),
            ]
        );
    }

    #[test]
    fn oversized_events_are_skipped_with_bounded_memory() {
        let big = format!(
            r#"{{"event_id":"big","data":"{}","more":[{}]}}"#,
            "x".repeat(5000),
            "{\"k\":\"}\"},".repeat(300) + "1"
        );
        let s = format!("{A}{big}{B}");
        let cfg = DecoderConfig {
            max_event_bytes: 1000,
            read_buffer: 64,
            ..DecoderConfig::default()
        };
        let expected = vec![
            ev(0, A),
            Out::Bad(A.len() as u64, big.len() as u64, "too_large"),
            ev((A.len() + big.len()) as u64, B),
        ];
        assert_eq!(decode_with(s.as_bytes(), 5, cfg), expected);
        // Also when the whole event arrives in one read.
        let cfg = DecoderConfig {
            max_event_bytes: 1000,
            ..DecoderConfig::default()
        };
        assert_eq!(decode_with(s.as_bytes(), usize::MAX, cfg), expected);
        // The decoder never held the whole oversized event.
        let mut d = Decoder::new(
            Chunked {
                data: s.as_bytes(),
                chunk: 64,
            },
            DecoderConfig {
                max_event_bytes: 1000,
                read_buffer: 64,
                ..DecoderConfig::default()
            },
        );
        while d.next().unwrap().is_some() {
            assert!(
                d.buf.capacity() < 4 * 1024,
                "buffer grew to {}",
                d.buf.capacity()
            );
        }
    }

    #[test]
    fn nested_objects_of_a_broken_event_are_not_taken_as_events() {
        let broken = r#"{"event_id":"n","data":{"event_id":"inner"},"x":bad}"#;
        assert_eq!(
            decode(broken.as_bytes()),
            vec![Out::Bad(0, broken.len() as u64, "syntax")]
        );
        let broken = r#"{"event_id":"n","data":{"event_id":"inner"}"#;
        assert_eq!(
            decode(broken.as_bytes()),
            vec![Out::Bad(0, broken.len() as u64, "truncated")]
        );
    }

    #[test]
    fn corrupt_stream_is_reported_after_what_was_read() {
        struct Failing<'a>(&'a [u8], bool);
        impl Read for Failing<'_> {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                if self.1 {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "bad deflate"));
                }
                self.1 = true;
                let n = self.0.len().min(out.len());
                out[..n].copy_from_slice(&self.0[..n]);
                Ok(n)
            }
        }
        let s = format!("{A}{}", &B[..10]);
        let mut d = Decoder::new(Failing(s.as_bytes(), false), DecoderConfig::default());
        let mut codes = Vec::new();
        while let Some(item) = d.next().unwrap() {
            codes.push(match item {
                Item::Event(_) => "event".to_string(),
                Item::Damaged(x) => format!("{}@{}", x.damage.code(), x.offset),
            });
        }
        let (a, b) = (A.len(), A.len() + 10);
        assert_eq!(
            codes,
            vec![
                "event".to_string(),
                format!("truncated@{a}"),
                format!("corrupt_stream@{b}")
            ]
        );
    }

    #[test]
    fn other_read_errors_propagate() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset"))
            }
        }
        let mut d = Decoder::new(Broken, DecoderConfig::default());
        assert_eq!(d.next().unwrap_err().kind(), io::ErrorKind::ConnectionReset);
    }

    #[test]
    fn fields_are_extracted() {
        let mut d = Decoder::new(A.as_bytes(), DecoderConfig::default());
        let Some(Item::Event(e)) = d.next().unwrap() else {
            panic!("no event");
        };
        let span = e.fields.get(FieldId::Data).unwrap();
        assert_eq!(&e.text()[span.start..span.end], r#"{"s":"x}{y"}"#);
    }
}
