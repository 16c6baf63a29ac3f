//! Reading and editing events as text. The text is JSON the decoder has validated already, so
//! these functions only find boundaries (they never validate, and never panic on any input: on
//! text that is not JSON they answer `None`). Everything outside an edited value keeps its
//! bytes.

use std::ops::Range;

use crate::path::Seg;

fn ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// The end of the string starting at `b[i] == '"'` (after its closing quote).
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        let k = j + memchr::memchr2(b'"', b'\\', b.get(j..)?)?;
        if b[k] == b'"' {
            return Some(k + 1);
        }
        j = k + 2;
    }
}

/// Quotes and brackets: what a container scan stops at.
static STRUCTURAL: [bool; 256] = {
    let mut t = [false; 256];
    t[b'"' as usize] = true;
    t[b'{' as usize] = true;
    t[b'[' as usize] = true;
    t[b'}' as usize] = true;
    t[b']' as usize] = true;
    t
};

/// The end of the value starting at `b[i]`.
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                // Jump to the next quote or bracket.
                j += b.get(j..)?.iter().position(|&c| STRUCTURAL[c as usize])?;
                match b[j] {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    _ => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                }
                j += 1;
            }
        }
        _ => {
            let n = b[i..]
                .iter()
                .position(|c| matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .unwrap_or(b.len() - i);
            (n > 0).then_some(i + n)
        }
    }
}

/// One member of an object or element of an array: where it starts (its key, for members) and
/// where its value lies.
#[derive(Debug, Clone, Copy)]
struct Item {
    start: usize,
    value: (usize, usize),
}

/// Whether the member name at `text[range]` (quotes included) is `want`.
fn name_is(text: &str, range: Range<usize>, want: &str) -> bool {
    let Some(raw) = text.get(range.start + 1..range.end - 1) else {
        return false;
    };
    if !raw.contains('\\') {
        return raw == want;
    }
    text.get(range)
        .and_then(|quoted| serde_json::from_str::<String>(quoted).ok())
        .is_some_and(|name| name == want)
}

/// The item `seg` selects in the container at `b[i]`, with the items just before and after it
/// (for removal). Duplicate names: the last one, as a parse keeps.
fn find(text: &str, i: usize, seg: &Seg) -> Option<(Item, Option<Item>, Option<Item>)> {
    let b = text.as_bytes();
    let (object, close) = match (b.get(i)?, seg) {
        (b'{', Seg::Name(_)) => (true, b'}'),
        (b'[', Seg::Index(_)) => (false, b']'),
        _ => return None,
    };
    let mut found: Option<(Item, Option<Item>, Option<Item>)> = None;
    let mut prev: Option<Item> = None;
    let mut j = ws(b, i + 1);
    if *b.get(j)? == close {
        return None;
    }
    let mut n = 0i64;
    loop {
        let start = j;
        let hit = if object {
            let end = string_end(b, j)?;
            let Seg::Name(want) = seg else { return None };
            let hit = name_is(text, j..end, want);
            j = ws(b, end);
            if *b.get(j)? != b':' {
                return None;
            }
            j = ws(b, j + 1);
            hit
        } else {
            matches!(seg, Seg::Index(want) if *want == n)
        };
        let end = value_end(b, j)?;
        let item = Item {
            start,
            value: (j, end),
        };
        if hit {
            found = Some((item, prev, None));
        } else if let Some((_, _, next @ None)) = &mut found {
            *next = Some(item);
            if !object {
                // Indexes are unique: nothing later can change the answer.
                return found;
            }
        }
        prev = Some(item);
        n += 1;
        j = ws(b, end);
        match *b.get(j)? {
            b',' => j = ws(b, j + 1),
            c if c == close => return found,
            _ => return None,
        }
    }
}

/// The number of elements of the array that is `text` (`None` if it is not one).
pub fn array_len(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    let i = ws(b, 0);
    if *b.get(i)? != b'[' {
        return None;
    }
    let mut j = ws(b, i + 1);
    if *b.get(j)? == b']' {
        return Some(0);
    }
    let mut n = 0;
    loop {
        j = ws(b, value_end(b, j)?);
        n += 1;
        match *b.get(j)? {
            b',' => j = ws(b, j + 1),
            b']' => return Some(n),
            _ => return None,
        }
    }
}

/// Where the value `segs` selects lies in `text`, and the range that removing it (with its key
/// and one separating comma) takes out.
pub fn locate(text: &str, segs: &[Seg]) -> Option<(Range<usize>, Range<usize>)> {
    let b = text.as_bytes();
    let first = ws(b, 0);
    if segs.is_empty() {
        let value = first..value_end(b, first)?;
        return Some((value.clone(), value));
    }
    // Containers are found from their first byte: the root's end is never needed.
    let mut value = first..first;
    let mut removal = value.clone();
    for seg in segs {
        let (item, prev, next) = find(text, value.start, seg)?;
        value = item.value.0..item.value.1;
        removal = match (next, prev) {
            (Some(next), _) => item.start..next.start,
            (None, Some(prev)) => prev.value.1..item.value.1,
            (None, None) => item.start..item.value.1,
        };
    }
    Some((value, removal))
}

/// The JSON text of the value `segs` selects.
pub fn get<'a>(text: &'a str, segs: &[Seg]) -> Option<&'a str> {
    let (value, _) = locate(text, segs)?;
    text.get(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Seg {
        Seg::Name(s.into())
    }

    #[test]
    fn finds_values_and_removal_ranges() {
        let t = r#" {"a" : 1 , "b":{"c":"x\"}","d":[1, {"e":null}, "]"]}, "a":2} "#;
        assert_eq!(get(t, &[name("a")]), Some("2"));
        assert_eq!(get(t, &[name("b"), name("c")]), Some(r#""x\"}""#));
        assert_eq!(
            get(t, &[name("b"), name("d"), Seg::Index(1), name("e")]),
            Some("null")
        );
        assert_eq!(
            get(t, &[name("b"), name("d"), Seg::Index(2)]),
            Some(r#""]""#)
        );
        assert_eq!(get(t, &[name("b"), name("d"), Seg::Index(3)]), None);
        assert_eq!(get(t, &[name("z")]), None);
        assert_eq!(get(t, &[name("a"), name("x")]), None);
        assert_eq!(array_len(r#" [1, {"e":[2,3]}, "],"] "#), Some(3));
        assert_eq!(array_len("[ ]"), Some(0));
        assert_eq!(array_len("[1,"), None);
        assert_eq!(array_len("{}"), None);
        let remove = |segs: &[Seg]| {
            let (_, r) = locate(t, segs).unwrap();
            format!("{}{}", &t[..r.start], &t[r.end..])
        };
        // Middle member: up to the next key. Last member: from the previous value.
        assert_eq!(remove(&[name("b")]), r#" {"a" : 1 , "a":2} "#);
        assert_eq!(
            remove(&[name("a")]),
            r#" {"a" : 1 , "b":{"c":"x\"}","d":[1, {"e":null}, "]"]}} "#
        );
        assert!(
            remove(&[name("b"), name("d"), Seg::Index(0)]).contains(r#""d":[{"e":null}, "]"]"#)
        );
        assert!(remove(&[name("b"), name("d"), Seg::Index(1), name("e")]).contains(r#"{}"#));
        let esc = r#"{"k\u0031":5}"#;
        assert_eq!(get(esc, &[name("k1")]), Some("5"));
    }

    #[test]
    fn never_panics_on_broken_text() {
        for t in [
            "",
            "{",
            "{\"a\"",
            "{\"a\":",
            "[1,",
            "\"abc",
            "{\"a\" 1}",
            "}",
            "{\"a\":1 x}",
        ] {
            let _ = get(t, &[name("a")]);
            let _ = get(t, &[Seg::Index(0)]);
        }
    }
}
