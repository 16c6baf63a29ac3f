//! The archive in an S3 bucket: paginated listing of one hour prefix at a time, pinned reads
//! (VersionId, else If-Match on the ETag) streamed through a bounded channel, resumed with a
//! ranged GET from the last byte received when a connection drops mid-body.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use rewind_common::storage::{
    IoStats, ObjectMeta, ObjectSource, StorageError, all_pages, check_key,
};
use tokio::sync::mpsc;

use crate::client::S3Client;
use crate::retry::{Failure, classify};

/// Chunks buffered per open object (hyper hands out up to ~16 KiB per chunk).
pub(crate) const CHANNEL_CHUNKS: usize = 64;

#[derive(Debug, Clone)]
pub struct S3Source {
    client: S3Client,
    bucket: Arc<str>,
    prefix: Arc<str>,
    read_ahead: usize,
    versioned: bool,
}

impl S3Source {
    /// Opens the source with one small listing, which also decides how listings pin objects:
    /// with VersionIds (ListObjectVersions) where the store lists versions, else with ETags
    /// (a store without version support, or a role allowed ListBucket but not
    /// ListBucketVersions). Wrong credentials or a missing bucket fail here, before any work.
    pub async fn open(
        client: S3Client,
        bucket: &str,
        prefix: &str,
        read_ahead: usize,
    ) -> Result<S3Source, StorageError> {
        let what = &format!("s3://{bucket}/{prefix} with {}", client.identity);
        let versions = client
            .send(what, || {
                client
                    .sdk
                    .list_object_versions()
                    .bucket(bucket)
                    .prefix(prefix)
                    .max_keys(1)
                    .send()
            })
            .await;
        let versioned = match versions {
            Ok(_) => true,
            Err(StorageError::Denied { .. }) => {
                // Not implemented, or not allowed: plain listings must work then.
                client
                    .send(what, || {
                        client
                            .sdk
                            .list_objects_v2()
                            .bucket(bucket)
                            .prefix(prefix)
                            .max_keys(1)
                            .send()
                    })
                    .await?;
                false
            }
            Err(e) => return Err(e),
        };
        Ok(S3Source {
            bucket: bucket.into(),
            prefix: prefix.into(),
            read_ahead,
            versioned,
            client,
        })
    }

    fn what(&self, key: &str) -> String {
        format!(
            "s3://{}/{}{key} with {}",
            self.bucket, self.prefix, self.client.identity
        )
    }
}

impl ObjectSource for S3Source {
    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        all_pages(|each| self.list_pages(prefix, each))
    }

    fn list_pages(
        &self,
        prefix: &str,
        each: &mut dyn FnMut(Vec<ObjectMeta>) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        check_key(prefix)?;
        let full: Arc<str> = format!("{}{prefix}", self.prefix).into();
        let what: Arc<str> = format!("listing {}", self.what(prefix)).into();
        let root = self.prefix.len();
        // One listing page per round trip to the runtime; the pages come in key order.
        let mut cursor = Some(if self.versioned {
            Page::Versions(None)
        } else {
            Page::Objects(None)
        });
        while let Some(at) = cursor {
            let (client, bucket, full, what) = (
                self.client.clone(),
                self.bucket.clone(),
                full.clone(),
                what.clone(),
            );
            let (mut page, next) = self.client.block(async move {
                Ok(match at {
                    Page::Versions(markers) => {
                        let (out, next) =
                            version_page(&client, &bucket, &full, &what, markers).await?;
                        let page: Vec<ObjectMeta> = latest_versions(&out).collect();
                        (page, next.map(|m| Page::Versions(Some(m))))
                    }
                    Page::Objects(token) => {
                        let (page, next) =
                            objects_page(&client, &bucket, &full, &what, true, token).await?;
                        (page, next.map(|t| Page::Objects(Some(t))))
                    }
                })
            })?;
            for o in &mut page {
                o.key = o.key[root..].to_string();
            }
            page.sort_by(|a, b| a.key.cmp(&b.key));
            each(page)?;
            cursor = next;
        }
        Ok(())
    }

    fn open(&self, meta: &ObjectMeta) -> Result<Box<dyn Read + Send>, StorageError> {
        check_key(&meta.key)?;
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let job = Download {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: format!("{}{}", self.prefix, meta.key),
            meta: meta.clone(),
            what: self.what(&meta.key),
        };
        self.client.handle.spawn(async move {
            let end = job.run(&tx).await;
            let _ = tx.send(end.map(|()| None)).await;
        });
        Ok(Box::new(BodyReader {
            rx,
            current: Bytes::new(),
            ended: false,
        }))
    }

    fn read_ahead(&self) -> usize {
        self.read_ahead
    }

    fn with_stats(&self, stats: Arc<IoStats>) -> Arc<dyn ObjectSource> {
        Arc::new(S3Source {
            client: self.client.with_stats(stats),
            ..self.clone()
        })
    }
}

/// Every object under `prefix` (full keys; ListObjectsV2, every page). `pin` fills in ETags a
/// store did not list.
pub(crate) async fn list_objects(
    client: &S3Client,
    bucket: &str,
    prefix: &str,
    what: &str,
    pin: bool,
) -> Result<Vec<ObjectMeta>, StorageError> {
    let mut out = Vec::new();
    let mut token = Some(None);
    while let Some(after) = token {
        let (page, next) = objects_page(client, bucket, prefix, what, pin, after).await?;
        out.extend(page);
        token = next.map(Some);
    }
    Ok(out)
}

/// One page of ListObjectsV2 under `prefix` from `token` (`None`: the first), and the next
/// page's token when there is one. With `pin`, objects listed without an ETag (some
/// S3-compatible stores list none) are asked for once each (HEAD), so the pin holds.
async fn objects_page(
    client: &S3Client,
    bucket: &str,
    prefix: &str,
    what: &str,
    pin: bool,
    token: Option<String>,
) -> Result<(Vec<ObjectMeta>, Option<String>), StorageError> {
    let page = client
        .send(what, || {
            client
                .sdk
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .set_continuation_token(token.clone())
                .send()
        })
        .await?;
    let mut out: Vec<ObjectMeta> = page
        .contents()
        .iter()
        .filter_map(|o| {
            Some(ObjectMeta {
                key: o.key()?.to_string(),
                size: o.size().unwrap_or(0).max(0) as u64,
                etag: o.e_tag().map(str::to_string),
                version: None,
            })
        })
        .collect();
    let next = page
        .next_continuation_token()
        .filter(|_| page.is_truncated().unwrap_or(false))
        .map(str::to_string);
    for o in out.iter_mut().filter(|o| pin && o.etag.is_none()) {
        let head = client
            .send(what, || {
                client.sdk.head_object().bucket(bucket).key(&o.key).send()
            })
            .await?;
        o.etag = head.e_tag().map(str::to_string);
        o.size = head.content_length().unwrap_or(0).max(0) as u64;
    }
    Ok((out, next))
}

/// Where the next page of a paged listing starts.
enum Page {
    /// ListObjectsV2 from this continuation token (`None`: the first page).
    Objects(Option<String>),
    /// ListObjectVersions from these markers.
    Versions(VersionMarkers),
}

/// Where a ListObjectVersions page starts: after this key and version (`None`: the first).
type VersionMarkers = Option<(Option<String>, Option<String>)>;

/// Every page of ListObjectVersions under `prefix`, handed to `each` in order.
pub(crate) async fn version_pages(
    client: &S3Client,
    bucket: &str,
    prefix: &str,
    what: &str,
    mut each: impl FnMut(&aws_sdk_s3::operation::list_object_versions::ListObjectVersionsOutput),
) -> Result<(), StorageError> {
    let mut markers: VersionMarkers = None;
    loop {
        let (page, next) = version_page(client, bucket, prefix, what, markers).await?;
        each(&page);
        match next {
            Some(m) => markers = Some(m),
            None => return Ok(()),
        }
    }
}

/// One page of ListObjectVersions from `markers`, and where the next one starts.
async fn version_page(
    client: &S3Client,
    bucket: &str,
    prefix: &str,
    what: &str,
    markers: VersionMarkers,
) -> Result<
    (
        aws_sdk_s3::operation::list_object_versions::ListObjectVersionsOutput,
        VersionMarkers,
    ),
    StorageError,
> {
    let (key_marker, version_marker) = markers.unwrap_or_default();
    let page = client
        .send(what, || {
            client
                .sdk
                .list_object_versions()
                .bucket(bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.clone())
                .set_version_id_marker(version_marker.clone())
                .send()
        })
        .await?;
    let key_marker = page.next_key_marker().map(str::to_string);
    let version_marker = page.next_version_id_marker().map(str::to_string);
    let next = (page.is_truncated().unwrap_or(false) && key_marker.is_some())
        .then_some((key_marker, version_marker));
    Ok((page, next))
}

/// The latest version of each key a ListObjectVersions page lists (a key whose latest entry is
/// a delete marker has no `is_latest` version: it is gone).
fn latest_versions(
    page: &aws_sdk_s3::operation::list_object_versions::ListObjectVersionsOutput,
) -> impl Iterator<Item = ObjectMeta> + '_ {
    page.versions().iter().filter_map(|v| {
        if v.is_latest() != Some(true) {
            return None;
        }
        Some(ObjectMeta {
            key: v.key()?.to_string(),
            size: v.size().unwrap_or(0).max(0) as u64,
            etag: v.e_tag().map(str::to_string),
            // "null" is the version of objects written while versioning was off.
            version: v
                .version_id()
                .filter(|id| *id != "null")
                .map(str::to_string),
        })
    })
}

/// One object's bytes, as `Some(chunk)` messages ending with `None`, or an error.
pub(crate) type Msg = Result<Option<Bytes>, StorageError>;

struct Download {
    client: S3Client,
    bucket: Arc<str>,
    key: String,
    meta: ObjectMeta,
    what: String,
}

impl Download {
    /// Sends the pinned object's bytes. A body cut mid-way is resumed from the next byte with
    /// the same pin; every resume counts as a retry and the resumes are bounded.
    async fn run(&self, tx: &mpsc::Sender<Msg>) -> Result<(), StorageError> {
        let what = self.what.as_str();
        let mut offset = 0u64;
        let mut resumes = 0u32;
        let retry = self.client.retry;
        loop {
            let resp = retry
                .run(&self.client.stats, what, || self.get(offset))
                .await?;
            if self.meta.version.is_none()
                && let (Some(planned), Some(now)) = (&self.meta.etag, resp.e_tag())
                && planned != now
            {
                return Err(StorageError::Changed {
                    what: what.to_string(),
                    why: format!("ETag was {planned} when planned, now {now}"),
                });
            }
            let mut body = resp.body;
            let cut = loop {
                match body.next().await {
                    Some(Ok(chunk)) => {
                        offset += chunk.len() as u64;
                        if tx.send(Ok(Some(chunk))).await.is_err() {
                            return Ok(()); // the reader went away
                        }
                    }
                    Some(Err(e)) => break crate::retry::chain(&e),
                    None => {
                        if offset != self.meta.size {
                            return Err(StorageError::Changed {
                                what: what.to_string(),
                                why: format!(
                                    "{} bytes when planned, the body ended after {offset}",
                                    self.meta.size
                                ),
                            });
                        }
                        return Ok(());
                    }
                }
            };
            if offset == self.meta.size {
                return Ok(()); // cut after the last byte: nothing is missing
            }
            resumes += 1;
            if resumes >= retry.max_attempts {
                return Err(StorageError::Unavailable {
                    what: what.to_string(),
                    why: format!(
                        "body cut at byte {offset}: {cut} (gave up after {resumes} resumes)"
                    ),
                });
            }
            tracing::debug!(what = %what.to_string(), offset, error = %cut, "object body cut; resuming with a ranged GET");
            self.client.stats.resumed.fetch_add(1, Ordering::Relaxed);
            self.client.stats.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(retry.delay(resumes)).await;
        }
    }

    async fn get(
        &self,
        offset: u64,
    ) -> Result<aws_sdk_s3::operation::get_object::GetObjectOutput, Failure> {
        if offset > 0 && offset >= self.meta.size {
            // Nothing left to read; a ranged GET past the end would be a 416.
            return Err(Failure::Final(StorageError::Changed {
                what: self.what.clone(),
                why: format!("more than the planned {} bytes", self.meta.size),
            }));
        }
        let mut req = self
            .client
            .sdk
            .get_object()
            .bucket(&*self.bucket)
            .key(&self.key);
        match (&self.meta.version, &self.meta.etag) {
            (Some(v), _) => req = req.version_id(v),
            (None, Some(etag)) => req = req.if_match(etag),
            (None, None) => {}
        }
        if offset > 0 {
            req = req.range(format!("bytes={offset}-"));
        }
        let what = self.what.as_str();
        req.send().await.map_err(|e| match classify(e, what) {
            Failure::Final(StorageError::NotFound { what }) => {
                Failure::Final(StorageError::Changed {
                    what,
                    why: match &self.meta.version {
                        Some(v) => format!("version {v} no longer exists"),
                        None => "the object was deleted".into(),
                    },
                })
            }
            other => other,
        })
    }
}

/// The reading end: blocks the calling (blocking-pool) thread for the next chunk.
pub(crate) struct BodyReader {
    rx: mpsc::Receiver<Msg>,
    current: Bytes,
    ended: bool,
}

impl BodyReader {
    /// Reads what a download task sends: chunks, then `None` at the end, or an error.
    pub(crate) fn new(rx: mpsc::Receiver<Msg>) -> BodyReader {
        BodyReader {
            rx,
            current: Bytes::new(),
            ended: false,
        }
    }
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Ok(Some(chunk))) => self.current = chunk,
                Some(Ok(None)) => self.ended = true,
                Some(Err(e)) => return Err(io::Error::other(e)),
                None => {
                    return Err(io::Error::other(StorageError::Unavailable {
                        what: "S3 download".into(),
                        why: "the download task ended without finishing the object".into(),
                    }));
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}
