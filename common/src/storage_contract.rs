//! The storage contract: one suite every backend (local directory, S3 server) must pass, so the
//! pipeline above the traits can rely on the same behaviour everywhere. Panics on a violation.

use std::io::{Read, Write};
use std::sync::Arc;

use crate::storage::{IoStats, ObjectMeta, ObjectSource, OutputStore, StorageError};

/// One backend: an output store and a source over the same root (what one writes the other
/// lists and reads).
pub struct Backend<'a> {
    pub source: &'a dyn ObjectSource,
    pub output: &'a dyn OutputStore,
    /// The store's multipart part size: files are written across several parts.
    pub part_size: usize,
    /// Whether the store keeps object versions (a pinned read then survives an overwrite).
    pub versioned: bool,
    /// Whether the store can list unfinished writes (s3s-fs has no ListMultipartUploads): if
    /// not, `sweep_unfinished` must say so with an error, never pretend there were none.
    pub lists_unfinished: bool,
}

/// Reads a pinned object to the end; the store's error if it cannot (a remote store may report
/// a changed object at the first read rather than at open).
pub fn read_pinned(source: &dyn ObjectSource, meta: &ObjectMeta) -> Result<Vec<u8>, StorageError> {
    let mut r = source.open(meta)?;
    let mut out = Vec::new();
    match r.read_to_end(&mut out) {
        Ok(_) => Ok(out),
        Err(e) => match e.get_ref().and_then(|x| x.downcast_ref::<StorageError>()) {
            Some(StorageError::Changed { what, why }) => Err(StorageError::Changed {
                what: what.clone(),
                why: why.clone(),
            }),
            Some(StorageError::NotFound { what }) => {
                Err(StorageError::NotFound { what: what.clone() })
            }
            _ => Err(StorageError::io("reading", e)),
        },
    }
}

/// A deterministic byte pattern (not compressible to nothing, differs per seed).
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u64)
                .wrapping_mul(2654435761)
                .wrapping_add(seed as u64) as u8
                ^ (i >> 8) as u8
        })
        .collect()
}

pub fn run_all(b: &Backend<'_>) {
    small_objects(b);
    streamed_files(b);
    listing(b);
    pinned_reads(b);
    bad_keys(b);
    killed_writes(b);
    promotion(b);
    versions(b);
}

/// `head` describes what `list` would; a versioned store lists an object's versions newest
/// first with its delete markers, restores an old version as the current one, and undoes a
/// delete by deleting its marker. A store without versions says it has none.
fn versions(b: &Backend<'_>) {
    let o = b.output;
    assert!(o.head("vers/none").unwrap().is_none());
    assert!(o.put_if_absent("vers/lock", b"first").unwrap(), "created");
    assert!(
        !o.put_if_absent("vers/lock", b"second").unwrap(),
        "there already"
    );
    assert_eq!(o.get("vers/lock").unwrap().as_deref(), Some(&b"first"[..]));
    o.delete("vers/lock").unwrap();
    assert!(
        o.put_if_absent("vers/lock", b"third").unwrap(),
        "free again"
    );
    o.delete("vers/lock").unwrap();
    o.put("vers/range", b"0123456789").unwrap();
    assert_eq!(o.get_range("vers/range", 3, 4).unwrap(), b"3456");
    assert_eq!(
        o.get_range("vers/range", 8, 10).unwrap(),
        b"89",
        "to the end"
    );
    o.delete("vers/range").unwrap();
    o.put("vers/k", b"one").unwrap();
    let head = o.head("vers/k").unwrap().expect("there");
    assert_eq!(head.size, 3);
    assert!(head.etag.is_some(), "a content tag");
    let listed = o.list("vers/").unwrap();
    // (s3s-fs lists no ETags.)
    if listed[0].etag.is_some() {
        assert_eq!(listed[0].etag, head.etag, "head and list agree on the tag");
    }
    assert_eq!(o.versioned().unwrap(), b.versioned);
    if !b.versioned {
        assert!(o.versions("vers/k").is_err(), "no versions to list");
        assert_eq!(o.remove("vers/k").unwrap(), None);
        assert!(o.head("vers/k").unwrap().is_none());
        return;
    }
    let first = head.version.clone().expect("a version id");
    o.put("vers/k", b"second").unwrap();
    o.put("vers/kk", b"another key sharing the prefix").unwrap();
    let second = o.head("vers/k").unwrap().unwrap().version.unwrap();
    let marker = o.remove("vers/k").unwrap().expect("a delete marker's id");
    assert!(o.head("vers/k").unwrap().is_none());
    let vs = o.versions("vers/k").unwrap();
    let ids: Vec<(&str, bool)> = vs
        .iter()
        .map(|v| (v.version.as_str(), v.delete_marker))
        .collect();
    assert_eq!(
        ids,
        [
            (marker.as_str(), true),
            (second.as_str(), false),
            (first.as_str(), false)
        ]
    );
    o.delete_version("vers/k", &marker).unwrap();
    assert_eq!(o.get("vers/k").unwrap().as_deref(), Some(&b"second"[..]));
    let w = o.restore_version("vers/k", &first).unwrap();
    assert_eq!(w.size, 3);
    assert_ne!(w.version.as_deref(), Some(first.as_str()), "a new version");
    assert_eq!(o.get("vers/k").unwrap().as_deref(), Some(&b"one"[..]));
    assert_eq!(o.versions("vers/k").unwrap().len(), 3);
    assert!(o.restore_version("vers/k", "no-such-version").is_err());
}

/// A finished object promoted to another key: visible there with the same bytes, gone from its
/// staged key; promoting again answers for the promoted object; nothing to promote is an error.
fn promotion(b: &Backend<'_>) {
    let o = b.output;
    let body = pattern(b.part_size + 17, 9);
    let mut f = o.create("promo/_rewind/staging/a/x.bin.pending").unwrap();
    f.write_all(&body).unwrap();
    f.finish().unwrap();
    let w = o
        .promote("promo/_rewind/staging/a/x.bin.pending", "promo/a/x.bin")
        .unwrap();
    assert_eq!(w.size, body.len() as u64);
    assert_eq!(
        b.versioned,
        w.version.is_some(),
        "a version where the store keeps them"
    );
    assert_eq!(keys(&o.list("promo/").unwrap()), ["promo/a/x.bin"]);
    assert!(
        o.list("promo/_rewind/").unwrap().is_empty(),
        "nothing left where it was staged"
    );
    assert_eq!(o.get("promo/a/x.bin").unwrap().as_deref(), Some(&body[..]));
    let again = o
        .promote("promo/_rewind/staging/a/x.bin.pending", "promo/a/x.bin")
        .unwrap();
    assert_eq!(again.size, body.len() as u64, "idempotent");
    assert!(o.promote("promo/nothing", "promo/none").is_err());
}

/// A writer that dies mid-file (no drop runs: kill -9) leaves an unfinished write that `list`
/// does not show; `sweep_unfinished` finds and discards it, and nothing else.
fn killed_writes(b: &Backend<'_>) {
    let o = b.output;
    o.put("killed/done", b"finished").unwrap();
    let mut f = o.create("killed/half.bin").unwrap();
    f.write_all(&pattern(b.part_size + 10, 4)).unwrap();
    f.flush().unwrap();
    std::mem::forget(f);
    assert_eq!(keys(&o.list("killed/").unwrap()), ["killed/done"]);
    if !b.lists_unfinished {
        assert!(o.sweep_unfinished("killed/").is_err());
        return;
    }
    assert_eq!(
        o.sweep_unfinished("other/").unwrap(),
        0,
        "outside the prefix"
    );
    assert_eq!(o.sweep_unfinished("killed/").unwrap(), 1);
    assert_eq!(o.sweep_unfinished("killed/").unwrap(), 0);
    assert_eq!(keys(&o.list("killed/").unwrap()), ["killed/done"]);
    assert_eq!(
        o.get("killed/done").unwrap().as_deref(),
        Some(&b"finished"[..])
    );
}

fn keys(list: &[ObjectMeta]) -> Vec<&str> {
    list.iter().map(|o| o.key.as_str()).collect()
}

fn small_objects(b: &Backend<'_>) {
    let o = b.output;
    o.put("c/x/a", b"alpha").unwrap();
    o.put("c/x/b", b"bravo!").unwrap();
    o.put("c/y", b"y").unwrap();
    o.put("cx", b"cx").unwrap();
    let listed = o.list("c/x/").unwrap();
    assert_eq!(keys(&listed), ["c/x/a", "c/x/b"]);
    assert_eq!(listed[1].size, 6);
    assert_eq!(o.get("c/x/a").unwrap().as_deref(), Some(&b"alpha"[..]));
    assert_eq!(o.get("c/x/missing").unwrap(), None);
    o.put("c/x/a", b"alpha-2").unwrap();
    assert_eq!(o.get("c/x/a").unwrap().as_deref(), Some(&b"alpha-2"[..]));
    o.delete("c/x/a").unwrap();
    o.delete("c/x/a").unwrap(); // deleting a missing key is fine
    assert_eq!(keys(&o.list("c/").unwrap()), ["c/x/b", "c/y"]);
    // A store counting into stats is the same store.
    let counted = o.with_stats(Arc::new(IoStats::default()));
    assert_eq!(counted.get("c/y").unwrap().as_deref(), Some(&b"y"[..]));
}

fn streamed_files(b: &Backend<'_>) {
    let o = b.output;
    // Several parts plus a tail, written in odd-sized pieces.
    let body = pattern(b.part_size * 2 + b.part_size / 3 + 7, 1);
    let mut f = o.create("big/file.bin").unwrap();
    for piece in body.chunks(100_003) {
        f.write_all(piece).unwrap();
    }
    assert!(o.list("big/").unwrap().is_empty(), "visible before finish");
    let written = f.finish().unwrap();
    assert_eq!(written.size, body.len() as u64);
    assert_eq!(keys(&o.list("big/").unwrap()), ["big/file.bin"]);
    assert!(
        o.get("big/file.bin").unwrap().unwrap() == body,
        "multipart body differs"
    );
    // A file dropped before finish leaves nothing, even after parts went out.
    let mut g = o.create("big/abandoned.bin").unwrap();
    g.write_all(&pattern(b.part_size + 10, 2)).unwrap();
    drop(g);
    assert_eq!(keys(&o.list("big/").unwrap()), ["big/file.bin"]);
    // An empty file is a file.
    let e = o.create("big/empty").unwrap();
    assert_eq!(e.finish().unwrap().size, 0);
    assert_eq!(o.get("big/empty").unwrap().as_deref(), Some(&b""[..]));
}

fn listing(b: &Backend<'_>) {
    // More keys than one S3 listing page (1,000).
    let n = 1005;
    for i in 0..n {
        b.output.put(&format!("many/{i:05}"), b"x").unwrap();
    }
    b.output.put("many-not/0", b"x").unwrap();
    let listed = b.source.list("many/").unwrap();
    assert_eq!(listed.len(), n, "pagination");
    assert!(listed.windows(2).all(|w| w[0].key < w[1].key), "sorted");
    assert!(
        listed.iter().all(|o| o.etag.is_some()),
        "content tags listed"
    );
    assert!(b.source.list("nothing-here/").unwrap().is_empty());
    // A paged listing is the same listing cut in order, in pages of at most 1,000 (a caller
    // grouping a landing zone holds a page, not the whole listing).
    let mut pages = Vec::new();
    b.source
        .list_pages("many/", &mut |page| {
            pages.push(page);
            Ok(())
        })
        .unwrap();
    assert!(
        pages.len() >= 2 && pages.iter().all(|p| !p.is_empty() && p.len() <= 1_000),
        "pages of {:?} objects",
        pages.iter().map(Vec::len).collect::<Vec<_>>()
    );
    assert_eq!(
        pages.concat(),
        listed,
        "the pages are the listing, in order"
    );
    let mut calls = 0;
    let err = b
        .source
        .list_pages("many/", &mut |_| {
            calls += 1;
            Err(StorageError::Unavailable {
                what: "the caller".into(),
                why: "stop here".into(),
            })
        })
        .unwrap_err();
    assert_eq!(calls, 1, "an error from the caller stops the listing");
    assert!(err.to_string().contains("stop here"), "{err}");
    // Streaming reads return the exact bytes, whatever the read size.
    let body = pattern(3 * 1024 * 1024 + 11, 3);
    b.output.put("read/obj", &body).unwrap();
    let meta = &b.source.list("read/").unwrap()[0];
    assert_eq!(meta.size, body.len() as u64);
    let mut r = b.source.open(meta).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1531];
    loop {
        let k = r.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        got.extend_from_slice(&buf[..k]);
    }
    assert!(got == body, "streamed body differs");
}

fn pinned_reads(b: &Backend<'_>) {
    let (src, out) = (b.source, b.output);
    out.put("pin/a", b"first version").unwrap();
    out.put("pin/b", b"to be deleted").unwrap();
    let listed = src.list("pin/").unwrap();
    let (a, del) = (&listed[0], &listed[1]);
    assert_eq!(read_pinned(src, a).unwrap(), b"first version");
    out.put("pin/a", b"second, longer version").unwrap();
    out.delete("pin/b").unwrap();
    if b.versioned {
        assert!(a.version.is_some(), "a versioned listing pins versions");
        assert_eq!(read_pinned(src, a).unwrap(), b"first version");
        assert_eq!(read_pinned(src, del).unwrap(), b"to be deleted");
    } else {
        match read_pinned(src, a) {
            Err(StorageError::Changed { what, .. }) => assert!(what.contains("pin/a"), "{what}"),
            other => panic!("an overwritten object must fail as changed, got {other:?}"),
        }
        match read_pinned(src, del) {
            Err(e @ (StorageError::Changed { .. } | StorageError::NotFound { .. })) => {
                assert!(!e.is_retryable())
            }
            other => panic!("a deleted object must fail, got {other:?}"),
        }
    }
    // A fresh listing sees the new content.
    let relisted = src.list("pin/").unwrap();
    assert_eq!(keys(&relisted), ["pin/a"]);
    assert_eq!(
        read_pinned(src, &relisted[0]).unwrap(),
        b"second, longer version"
    );
}

fn bad_keys(b: &Backend<'_>) {
    for bad in ["../x", "a/../../b", "/etc/passwd", "a//b"] {
        assert!(
            matches!(
                b.output.put(bad, b"x"),
                Err(StorageError::InvalidKey { .. })
            ),
            "{bad}"
        );
        assert!(
            matches!(b.source.list(bad), Err(StorageError::InvalidKey { .. })),
            "{bad}"
        );
        assert!(b.source.open(&ObjectMeta::new(bad, 1)).is_err(), "{bad}");
    }
}
