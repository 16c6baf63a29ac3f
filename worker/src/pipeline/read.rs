//! Reading a shard: its plan (the pinned objects), the objects opened a few ahead of the one
//! being decoded, each detected as plain, gzip or zstd by its first bytes, and the look-back
//! over earlier hours that cross-shard dedup needs.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rewind_common::job::{OutputKeys, ShardPlan};
use rewind_common::storage::{ObjectMeta, ObjectSource, OutputStore, StorageError};
use rewind_common::{Hour, ShardId};

use super::{ShardEnv, ShardError};
use crate::decode::{Decoder, DecoderConfig, Item};
use crate::route::{Router, Scratch, Seen};

/// The compression of an object, detected from its first bytes (names can lie).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    None,
    Gzip,
    Zstd,
}

impl Codec {
    pub fn detect(head: &[u8]) -> Codec {
        match head {
            [0x1f, 0x8b, ..] => Codec::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Codec::Zstd,
            _ => Codec::None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
        }
    }
}

/// Counts the bytes read through it (the stored, possibly compressed, bytes).
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Opens an object as a stream of its decompressed bytes.
pub fn open_decoded(mut raw: Box<dyn Read + Send>) -> io::Result<(Codec, Box<dyn Read + Send>)> {
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < head.len() {
        match raw.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let codec = Codec::detect(&head[..got]);
    let stream = io::Cursor::new(head[..got].to_vec()).chain(raw);
    let reader: Box<dyn Read + Send> = match codec {
        Codec::None => Box::new(stream),
        Codec::Gzip => Box::new(flate2::read::MultiGzDecoder::new(
            io::BufReader::with_capacity(256 << 10, stream),
        )),
        Codec::Zstd => Box::new(zstd::stream::read::Decoder::new(stream)?),
    };
    Ok((codec, reader))
}

/// Whether an object named like `dataplatform-<org>-<seq>-…` belongs to another org.
/// Objects with other names are read (a per-org bucket holds only that org's objects).
pub(super) fn names_other_org(key: &str, org: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or(key);
    match name.strip_prefix("dataplatform-") {
        Some(rest) => {
            // The org id may itself contain '-': the name is <org>-<seq>-<YYYY>-…, so match the
            // job's org followed by '-' and a digit (the sequence number).
            match rest.get(..org.len()) {
                Some(p) if p.eq_ignore_ascii_case(org) => {
                    !rest[org.len()..].starts_with('-')
                        || !rest[org.len() + 1..].starts_with(|c: char| c.is_ascii_digit())
                }
                _ => true,
            }
        }
        None => false,
    }
}

/// Opens a shard's objects in order, `read_ahead` of them before the one being decoded: for S3
/// each open starts its GET, so several downloads run while this thread decodes.
pub(super) struct ReadAhead<'a> {
    source: &'a dyn ObjectSource,
    /// Decompress compressed objects on a thread of their own ([`Prefetch`]).
    prefetch: bool,
    todo: &'a [ObjectMeta],
    ahead: usize,
    opened: VecDeque<Result<Box<dyn Read + Send>, StorageError>>,
    next: usize,
}

/// One object opened for decoding.
pub(super) struct Opened {
    pub codec: Codec,
    pub reader: Box<dyn Read + Send>,
    /// Stored (possibly compressed) bytes read so far.
    pub stored: Arc<AtomicU64>,
}

impl Opened {
    /// The object's stats before any event is decoded.
    pub fn stats(&self, object: &ObjectMeta) -> rewind_common::job::ObjectStats {
        rewind_common::job::ObjectStats {
            key: object.key.clone(),
            size: object.size,
            etag: object.etag.clone(),
            version: object.version.clone(),
            compression: self.codec.name().into(),
            ..Default::default()
        }
    }
}

impl<'a> ReadAhead<'a> {
    pub fn new(source: &'a dyn ObjectSource, todo: &'a [ObjectMeta], spare_cores: bool) -> Self {
        ReadAhead {
            source,
            prefetch: spare_cores && !std::env::var("REWIND_PREFETCH").is_ok_and(|v| v == "0"),
            todo,
            ahead: source.read_ahead(),
            opened: VecDeque::new(),
            next: 0,
        }
    }

    /// Opens object `i` (objects are taken in order) and starts the ones after it.
    pub fn open(&mut self, i: usize) -> Result<Opened, ShardError> {
        while self.next < self.todo.len() && self.next <= i + self.ahead {
            self.opened
                .push_back(self.source.open(&self.todo[self.next]));
            self.next += 1;
        }
        let object = &self.todo[i];
        let raw = self
            .opened
            .pop_front()
            .unwrap_or_else(|| self.source.open(object))
            .map_err(|e| ShardError::storage(&format!("opening {}", object.key), &e))?;
        decoded(raw, object, self.prefetch)
    }
}

/// An opened object as the decoder reads it: decompressed, its stored bytes counted, and read
/// ahead on a thread of its own when `prefetch` and compressed.
pub(super) fn decoded(
    raw: Box<dyn Read + Send>,
    object: &ObjectMeta,
    prefetch: bool,
) -> Result<Opened, ShardError> {
    {
        let stored = Arc::new(AtomicU64::new(0));
        let counted = Box::new(Counting {
            inner: raw,
            count: stored.clone(),
        });
        let (codec, reader) =
            open_decoded(counted).map_err(|e| ShardError::read(&object.key, e))?;
        Ok(Opened {
            codec,
            // (Plain bytes gain nothing from it: the copy costs what the read saves.)
            reader: if prefetch && codec != Codec::None {
                Prefetch::start(reader)
            } else {
                reader
            },
            stored,
        })
    }
}

/// Cross-shard dedup: the events the previous `dedup_window_hours` hours of the job would
/// recover are marked seen, so this shard drops its copies and the earliest hour keeps the
/// event. Those hours are decoded and routed again (no output): dedup costs that extra read.
pub(super) fn prescan(
    env: &ShardEnv,
    router: &Router,
    source: &dyn ObjectSource,
    output: &dyn OutputStore,
    shard: ShardId,
    decoder: DecoderConfig,
    seen: &mut Seen,
) -> Result<(), ShardError> {
    let spec = &env.spec;
    let mut scratch = Scratch::default();
    for back in 1..=i64::from(spec.treatment.dedup_window_hours) {
        let hour = Hour::from_epoch_hours(shard.hour().epoch_hours() - back);
        if hour < spec.range.first {
            break;
        }
        let objects = pinned_objects(env, source, output, ShardId(hour))?;
        for object in objects
            .iter()
            .filter(|o| !names_other_org(&o.key, spec.org.as_str()))
        {
            if env.cancel.load(Ordering::Relaxed) {
                return Err(ShardError::cancelled());
            }
            let raw = source
                .open(object)
                .map_err(|e| ShardError::storage(&format!("opening {}", object.key), &e))?;
            let (_, reader) = open_decoded(raw).map_err(|e| ShardError::read(&object.key, e))?;
            let mut dec = Decoder::new(reader, decoder);
            while let Some(item) = dec.next().map_err(|e| ShardError::read(&object.key, e))? {
                if let Item::Event(ev) = item {
                    router.route(&ev, &mut scratch, Some(seen));
                }
            }
        }
    }
    Ok(())
}

/// The objects the shard was planned to read (listed now when planning could not list them).
pub(super) fn pinned_objects(
    env: &ShardEnv,
    source: &dyn ObjectSource,
    output: &dyn OutputStore,
    shard: ShardId,
) -> Result<Vec<ObjectMeta>, ShardError> {
    // Written by the coordinator core at submit, one plan object per shard in the destination.
    let key = OutputKeys::of(&env.spec).shard_plan(shard);
    let body = output
        .get(&key)
        .map_err(|e| ShardError::storage(&format!("reading the shard plan {key}"), &e))?
        .ok_or_else(|| ShardError {
            message: format!("the shard plan {key} is missing from {}", output.describe()),
            retryable: false,
        })?;
    let plan = serde_json::from_slice::<ShardPlan>(&body).map_err(|e| ShardError {
        message: format!("the shard plan {key} is not valid: {e}"),
        retryable: false,
    })?;
    if plan.unlisted.is_none() {
        return Ok(plan.objects);
    }
    let mut objects = source.list(&plan.prefix).map_err(|e| {
        ShardError::storage(
            &format!("listing {} in {}", plan.prefix, source.describe()),
            &e,
        )
    })?;
    if let Some(key) = &env.spec.object {
        objects.retain(|o| &o.key == key);
    }
    Ok(objects)
}

/// Bytes read (and decompressed) ahead of the decoder per object.
const PREFETCH_CHUNK: usize = 1 << 20;

/// Reads and decompresses an object on a thread of its own, a few chunks ahead of the decoder:
/// the shard's thread scans and routes while the next bytes arrive (reads, page faults and
/// gzip/zstd leave its path). Errors come back in order, where they happened. Used for
/// compressed objects when a core would idle otherwise; `REWIND_PREFETCH=0` never.
pub(super) struct Prefetch {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    back: std::sync::mpsc::SyncSender<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
    done: bool,
}

impl Prefetch {
    pub(super) fn start(mut inner: Box<dyn Read + Send>) -> Box<dyn Read + Send> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(2);
        // Emptied chunks come back to be filled again (no allocation per chunk).
        let (back, spare) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
        let spawned = std::thread::Builder::new()
            .name("rewind-read".into())
            .spawn(move || {
                loop {
                    let mut buf = spare
                        .try_recv()
                        .unwrap_or_else(|_| Vec::with_capacity(PREFETCH_CHUNK));
                    buf.clear();
                    buf.resize(PREFETCH_CHUNK, 0);
                    let mut filled = 0;
                    let res = loop {
                        match inner.read(&mut buf[filled..]) {
                            Ok(0) => break Ok(()),
                            Ok(n) => {
                                filled += n;
                                if filled == buf.len() {
                                    break Ok(());
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => break Err(e),
                        }
                    };
                    buf.truncate(filled);
                    let end = filled == 0 || res.is_err();
                    // Bytes before an error are delivered first, then the error.
                    if filled > 0 && tx.send(Ok(buf)).is_err() {
                        return;
                    }
                    if let Err(e) = res {
                        let _ = tx.send(Err(e));
                        return;
                    }
                    if end {
                        let _ = tx.send(Ok(Vec::new()));
                        return;
                    }
                }
            });
        match spawned {
            Ok(_) => Box::new(Prefetch {
                rx,
                back,
                chunk: Vec::new(),
                pos: 0,
                done: false,
            }),
            Err(e) => Box::new(FailedRead(Some(e))),
        }
    }
}

impl Read for Prefetch {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            if self.done {
                return Ok(0);
            }
            let old = std::mem::take(&mut self.chunk);
            if old.capacity() > 0 {
                let _ = self.back.try_send(old);
            }
            self.pos = 0;
            match self.rx.recv() {
                Ok(Ok(c)) if c.is_empty() => self.done = true,
                Ok(Ok(c)) => self.chunk = c,
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => {
                    self.done = true;
                    return Err(io::Error::other("the read-ahead thread stopped"));
                }
            }
        }
        let n = out.len().min(self.chunk.len() - self.pos);
        out[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A reader that could not be started: its first read says why.
struct FailedRead(Option<io::Error>);

impl Read for FailedRead {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        match self.0.take() {
            Some(e) => Err(e),
            None => Ok(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_of_other_orgs_are_recognised() {
        let k = "main_stream/2024/04/01/00/";
        assert!(!names_other_org(
            &format!("{k}dataplatform-TN-1-000001-2024-04-01-00-05-00-ab"),
            "TN-1"
        ));
        assert!(!names_other_org(
            &format!("{k}dataplatform-tn-1-000001-2024-04-01-00-05-00-ab.gz"),
            "TN-1"
        ));
        assert!(names_other_org(
            &format!("{k}dataplatform-TN-12-000001-2024-04-01-00-05-00-ab"),
            "TN-1"
        ));
        assert!(names_other_org(
            &format!("{k}dataplatform-XY-000001-2024-04-01-00-05-00-ab"),
            "TN-1"
        ));
        assert!(!names_other_org(&format!("{k}events-000001.json"), "TN-1"));
    }

    #[test]
    fn codecs_are_detected_by_magic_bytes() {
        assert_eq!(Codec::detect(&[0x1f, 0x8b, 8, 0]), Codec::Gzip);
        assert_eq!(Codec::detect(&[0x28, 0xb5, 0x2f, 0xfd]), Codec::Zstd);
        assert_eq!(Codec::detect(b"{\"a\""), Codec::None);
        assert_eq!(Codec::detect(b""), Codec::None);
    }

    /// Read ahead on its own thread: every byte in order, then the reader's error with its
    /// kind (a corrupt stream stays a corrupt stream for the decoder).
    #[test]
    fn prefetch_delivers_bytes_then_the_error_in_order() {
        struct Then {
            left: Vec<u8>,
            fail: bool,
        }
        impl Read for Then {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                if self.left.is_empty() {
                    return if std::mem::take(&mut self.fail) {
                        Err(io::Error::new(io::ErrorKind::InvalidData, "corrupt gzip"))
                    } else {
                        Ok(0)
                    };
                }
                let n = out.len().min(self.left.len()).min(70_001);
                out[..n].copy_from_slice(&self.left[..n]);
                self.left.drain(..n);
                Ok(n)
            }
        }
        let data: Vec<u8> = (0..3_500_000u32).map(|i| (i % 251) as u8).collect();
        let mut r = super::Prefetch::start(Box::new(Then {
            left: data.clone(),
            fail: true,
        }));
        let mut got = Vec::new();
        let mut buf = vec![0u8; 100_000];
        let err = loop {
            match r.read(&mut buf) {
                Ok(0) => panic!("the error is lost"),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => break e,
            }
        };
        assert_eq!(got, data);
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(r.read(&mut buf).unwrap(), 0, "then the end");
        // Without an error: every byte, then the end.
        let mut r = super::Prefetch::start(Box::new(Then {
            left: data.clone(),
            fail: false,
        }));
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        assert_eq!(all, data);
    }
}
