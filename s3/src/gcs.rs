//! Google Cloud Storage (`gs://BUCKET[/PREFIX]`) behind the same traits as S3 and Azure, over
//! GCS's JSON API (list, media download with a pinned generation, media / resumable upload,
//! rewrite, delete) with reqwest.
//!
//! Why not object_store's GCS client, which Azure already uses: it speaks the XML API (lists,
//! multipart uploads), which the emulator we can run does not serve, and the JSON API is what
//! Google's own client libraries use. object_store still gives us the credentials: its GCP
//! provider implements the application default credentials chain (`GOOGLE_APPLICATION_CREDENTIALS`
//! or `GOOGLE_SERVICE_ACCOUNT` — a service account key or an authorized user — gcloud's
//! `application_default_credentials.json`, then the metadata server, which is how GKE workload
//! identity and Compute Engine service accounts reach us), with the cloud-platform scope, cached
//! and refreshed before expiry.
//!
//! `STORAGE_EMULATOR_HOST` (Google's convention) points every call at an emulator instead,
//! without credentials. Reads are pinned by generation: an object replaced since it was listed
//! is an error (`Changed`), never other bytes.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::gcp::{GcpCredentialProvider, GoogleCloudStorageBuilder};
use rewind_common::storage::{
    IoStats, ObjectMeta, ObjectSource, OutputFile, OutputStore, StorageError, Written, all_pages,
    check_key,
};
use serde_json::Value;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use crate::client::{LIST_PAGE, block_on, paged};
use crate::retry::{Failure, RetryPolicy};
use crate::source::{BodyReader, CHANNEL_CHUNKS};

const GOOGLE: &str = "https://storage.googleapis.com";
/// Resumable upload chunks must be multiples of 256 KiB (all but the last).
const CHUNK_UNIT: usize = 256 << 10;

/// A bucket and prefix, as a source and as an output.
#[derive(Clone)]
pub struct GcsStore {
    http: reqwest::Client,
    /// `https://storage.googleapis.com`, or the emulator's address.
    base: Arc<str>,
    bucket: Arc<str>,
    prefix: Arc<str>,
    /// None with an emulator.
    auth: Option<GcpCredentialProvider>,
    handle: Handle,
    part_size: usize,
    read_ahead: usize,
    retry: RetryPolicy,
    stats: Arc<IoStats>,
}

impl std::fmt::Debug for GcsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "gs://{}/{}", self.bucket, self.prefix)
    }
}

/// One HTTP client per process (connection pools, TLS roots loaded once).
pub(crate) fn http_client() -> Result<reqwest::Client, String> {
    static CLIENT: std::sync::OnceLock<Result<reqwest::Client, String>> =
        std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .read_timeout(Duration::from_secs(60))
                .build()
                .map_err(|e| e.to_string())
        })
        .clone()
}

/// Percent-encodes an object name or query value (everything but RFC 3986's unreserved bytes).
pub(crate) fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An emulator's base URL from the environment variable `var` (Google's convention:
/// `STORAGE_EMULATOR_HOST`, `PUBSUB_EMULATOR_HOST`; with or without a scheme).
pub(crate) fn emulator(var: &str) -> Option<String> {
    let host = std::env::var(var).ok()?;
    let host = host.trim().trim_end_matches('/');
    if host.is_empty() {
        return None;
    }
    Some(if host.contains("://") {
        host.to_string()
    } else {
        format!("http://{host}")
    })
}

/// The process's Google credentials: object_store's application default credentials chain,
/// built once so every store and topic of the process shares its cached, refreshed tokens.
pub(crate) fn google_credentials() -> Result<GcpCredentialProvider, String> {
    static CREDS: std::sync::OnceLock<Result<GcpCredentialProvider, String>> =
        std::sync::OnceLock::new();
    CREDS
        .get_or_init(|| {
            // The builder wants a bucket; its credential chain does not use it.
            GoogleCloudStorageBuilder::from_env()
                .with_bucket_name("rewind-credentials-only")
                .build()
                .map(|s| s.credentials().clone())
                .map_err(|e| {
                    format!(
                        "Google credentials: {e} (GOOGLE_APPLICATION_CREDENTIALS, gcloud's \
                         application default credentials or the metadata server)"
                    )
                })
        })
        .clone()
}

/// What a response's status means for the request named `what`.
fn status_failure(what: &str, status: u16, body: &str) -> Failure {
    // The JSON API's error body: {"error":{"code":…,"message":…}}.
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.chars().take(200).collect());
    let why = format!("HTTP {status}: {message}");
    match status {
        404 => Failure::Final(StorageError::NotFound { what: what.into() }),
        412 => Failure::Final(StorageError::Changed {
            what: what.into(),
            why,
        }),
        401 | 403 => Failure::Final(StorageError::Denied {
            what: what.into(),
            why,
        }),
        408 | 429 | 500..=599 => Failure::Transient(format!("{what}: {why}")),
        _ => Failure::Final(StorageError::Denied {
            what: what.into(),
            why,
        }),
    }
}

fn transport_failure(what: &str, e: reqwest::Error) -> Failure {
    Failure::Transient(format!("{what}: {}", crate::retry::chain(&e)))
}

/// An object resource's listing fields as ours (`key` below the store's prefix).
fn meta_of(v: &Value, root: &str) -> Option<ObjectMeta> {
    let name = v["name"].as_str()?;
    let key = name.strip_prefix(root)?;
    Some(ObjectMeta {
        key: key.to_string(),
        size: v["size"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0),
        // The generation pins the exact content (a new write gets a new one).
        etag: v["generation"].as_str().map(str::to_string),
        version: None,
    })
}

impl GcsStore {
    /// Opens `gs://bucket/prefix` with credentials from the environment (or the emulator's
    /// address); one small listing checks the bucket and the credentials before any work.
    pub async fn open(
        bucket: &str,
        prefix: &str,
        part_size: usize,
        read_ahead: usize,
    ) -> Result<GcsStore, StorageError> {
        Self::open_at(
            emulator("STORAGE_EMULATOR_HOST"),
            bucket,
            prefix,
            part_size,
            read_ahead,
        )
        .await
    }

    /// [`GcsStore::open`] against the emulator at `emulator` (none: Google, with credentials).
    pub async fn open_at(
        emulator: Option<String>,
        bucket: &str,
        prefix: &str,
        part_size: usize,
        read_ahead: usize,
    ) -> Result<GcsStore, StorageError> {
        let what = format!("gs://{bucket}/{prefix}");
        let (base, auth) = match emulator {
            Some(base) => (base, None),
            None => {
                let creds = google_credentials().map_err(|why| StorageError::Denied {
                    what: what.clone(),
                    why,
                })?;
                (GOOGLE.to_string(), Some(creds))
            }
        };
        let http = http_client().map_err(|why| StorageError::Unavailable {
            what: what.clone(),
            why,
        })?;
        let me = GcsStore {
            http,
            base: base.into(),
            bucket: bucket.into(),
            prefix: prefix.into(),
            auth,
            handle: Handle::current(),
            part_size: part_size.max(CHUNK_UNIT).div_ceil(CHUNK_UNIT) * CHUNK_UNIT,
            read_ahead,
            retry: RetryPolicy::default(),
            stats: Arc::new(IoStats::default()),
        };
        let url = format!(
            "{}/storage/v1/b/{}/o?maxResults=1&prefix={}",
            me.base,
            enc(bucket),
            enc(prefix)
        );
        me.call(&format!("listing {what}"), move |http| http.get(&url))
            .await?;
        Ok(me)
    }

    fn full(&self, key: &str) -> Result<String, StorageError> {
        check_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }

    fn what(&self, key: &str) -> String {
        format!("gs://{}/{}{key}", self.bucket, self.prefix)
    }

    fn object_url(&self, name: &str) -> String {
        format!(
            "{}/storage/v1/b/{}/o/{}",
            self.base,
            enc(&self.bucket),
            enc(name)
        )
    }

    fn upload_url(&self, name: &str, kind: &str) -> String {
        format!(
            "{}/upload/storage/v1/b/{}/o?uploadType={kind}&name={}",
            self.base,
            enc(&self.bucket),
            enc(name)
        )
    }

    fn block<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, StorageError>> + Send + 'static,
    ) -> Result<T, StorageError> {
        block_on(&self.handle, fut)
    }

    /// The bearer token of this moment (cached and refreshed by the provider), if any.
    async fn token(&self, what: &str) -> Result<Option<String>, Failure> {
        let Some(auth) = &self.auth else {
            return Ok(None);
        };
        match auth.get_credential().await {
            Ok(c) => Ok(Some(c.bearer.clone())),
            Err(e) => Err(Failure::Final(StorageError::Denied {
                what: what.into(),
                why: format!("getting Google credentials: {e}"),
            })),
        }
    }

    /// Sends the request `make` builds (again after transient failures) and returns the
    /// response of a 2xx, or the classified failure.
    async fn call(
        &self,
        what: &str,
        make: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, StorageError> {
        self.retry
            .run(&self.stats, what, || async {
                let mut req = make(&self.http);
                if let Some(t) = self.token(what).await? {
                    req = req.bearer_auth(t);
                }
                let resp = req.send().await.map_err(|e| transport_failure(what, e))?;
                let status = resp.status().as_u16();
                if (200..300).contains(&status) || status == 308 {
                    return Ok(resp);
                }
                let body = resp.text().await.unwrap_or_default();
                Err(status_failure(what, status, &body))
            })
            .await
    }

    /// [`GcsStore::call`], the whole body.
    async fn call_bytes(
        &self,
        what: &str,
        make: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<Bytes, StorageError> {
        let resp = self.call(what, make).await?;
        resp.bytes().await.map_err(|e| StorageError::Unavailable {
            what: what.into(),
            why: e.to_string(),
        })
    }

    /// [`GcsStore::call`], the body as JSON.
    async fn call_json(
        &self,
        what: &str,
        make: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<Value, StorageError> {
        let body = self.call_bytes(what, make).await?;
        serde_json::from_slice(&body).map_err(|e| StorageError::Unavailable {
            what: what.into(),
            why: format!("an answer that is not JSON: {e}"),
        })
    }

    fn listing(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        all_pages(|each| self.listing_pages(prefix, each))
    }

    /// The objects under `prefix`, a page of the JSON API (up to [`LIST_PAGE`]) at a time, in
    /// key order (GCS lists names in lexicographic order).
    fn listing_pages(
        &self,
        prefix: &str,
        each: &mut dyn FnMut(Vec<ObjectMeta>) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        if !prefix.is_empty() {
            check_key(prefix.trim_end_matches('/'))?;
        }
        let me = self.clone();
        let full = format!("{}{prefix}", self.prefix);
        let what = format!("listing {}", self.what(prefix));
        let producer_what = what.clone();
        paged(
            &self.handle,
            &what,
            |tx| async move {
                let what = producer_what;
                let mut page: Option<String> = None;
                loop {
                    let mut url = format!(
                        "{}/storage/v1/b/{}/o?prefix={}&maxResults={LIST_PAGE}\
                         &fields=items(name,size,generation),nextPageToken",
                        me.base,
                        enc(&me.bucket),
                        enc(&full)
                    );
                    if let Some(p) = &page {
                        url.push_str(&format!("&pageToken={}", enc(p)));
                    }
                    let v = me.call_json(&what, |http| http.get(&url)).await?;
                    let mut out: Vec<ObjectMeta> = v["items"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|item| meta_of(item, &me.prefix))
                        .collect();
                    out.sort_by(|a, b| a.key.cmp(&b.key));
                    while !out.is_empty() {
                        let rest = out.split_off(out.len().min(LIST_PAGE));
                        if tx.send(Ok(Some(out))).await.is_err() {
                            return Ok(());
                        }
                        out = rest;
                    }
                    match v["nextPageToken"].as_str() {
                        Some(t) if !t.is_empty() => page = Some(t.to_string()),
                        _ => break,
                    }
                }
                let _ = tx.send(Ok(None)).await;
                Ok(())
            },
            each,
        )
    }

    /// Starts a resumable upload at `url`; its session URI.
    async fn session(&self, url: &str, what: &str) -> Result<String, StorageError> {
        let resp = self
            .call(what, |http| {
                http.post(url)
                    .header("content-type", "application/json")
                    .body("{}")
            })
            .await?;
        resp.headers()
            .get("location")
            .and_then(|l| l.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| StorageError::Unavailable {
                what: what.into(),
                why: "a resumable upload without a session URI".into(),
            })
    }

    /// Uploads `body` as the whole object in one request; `if_absent` makes it fail with
    /// `Changed` (412) when the object exists.
    async fn upload(
        &self,
        name: String,
        what: String,
        body: Bytes,
        if_absent: bool,
    ) -> Result<Written, StorageError> {
        let condition = if if_absent {
            "&ifGenerationMatch=0"
        } else {
            ""
        };
        let size = body.len() as u64;
        if body.is_empty() {
            // An empty object (`_SUCCESS`) as a resumable upload of zero bytes: the emulator
            // cannot take an empty media upload, and GCS takes both.
            let url = format!("{}{condition}", self.upload_url(&name, "resumable"));
            let uri = self.session(&url, &what).await?;
            self.call(&what, |http| {
                http.put(&uri)
                    .header("content-range", "bytes */0")
                    .body(Bytes::new())
            })
            .await?;
        } else {
            let url = format!("{}{condition}", self.upload_url(&name, "media"));
            self.call(&what, |http| {
                http.post(&url)
                    .header("content-type", "application/octet-stream")
                    .body(body.clone())
            })
            .await?;
        }
        Ok(Written {
            size,
            version: None,
        })
    }
}

impl ObjectSource for GcsStore {
    fn describe(&self) -> String {
        format!("gs://{}/{}", self.bucket, self.prefix)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        self.listing(prefix)
    }

    fn list_pages(
        &self,
        prefix: &str,
        each: &mut dyn FnMut(Vec<ObjectMeta>) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        self.listing_pages(prefix, each)
    }

    fn open(&self, meta: &ObjectMeta) -> Result<Box<dyn Read + Send>, StorageError> {
        let name = self.full(&meta.key)?;
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let (me, what, meta) = (self.clone(), self.what(&meta.key), meta.clone());
        self.handle.spawn(async move {
            // The generation listed, exactly: a replaced object is an error, not other bytes.
            let mut url = format!("{}?alt=media", me.object_url(&name));
            if let Some(g) = &meta.etag {
                url.push_str(&format!("&generation={g}"));
            }
            let end = match me.call(&what, |http| http.get(&url)).await {
                Err(StorageError::NotFound { .. }) if meta.etag.is_some() => {
                    Err(StorageError::Changed {
                        what: what.clone(),
                        why: "the generation listed is gone (the object was replaced or deleted)"
                            .into(),
                    })
                }
                Err(e) => Err(e),
                Ok(resp) => {
                    let mut resp = resp;
                    let mut got = 0u64;
                    let mut end = Ok(());
                    loop {
                        match resp.chunk().await {
                            Ok(Some(c)) => {
                                got += c.len() as u64;
                                if tx.send(Ok(Some(c))).await.is_err() {
                                    return;
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                end = Err(StorageError::Unavailable {
                                    what: what.clone(),
                                    why: e.to_string(),
                                });
                                break;
                            }
                        }
                    }
                    match end {
                        Ok(()) if got != meta.size => Err(StorageError::Changed {
                            what: what.clone(),
                            why: format!("{got} bytes read, {} when listed", meta.size),
                        }),
                        other => other,
                    }
                }
            };
            let _ = tx.send(end.map(|()| None)).await;
        });
        Ok(Box::new(BodyReader::new(rx)))
    }

    fn read_ahead(&self) -> usize {
        self.read_ahead
    }

    fn with_stats(&self, stats: Arc<IoStats>) -> Arc<dyn ObjectSource> {
        Arc::new(GcsStore {
            stats,
            ..self.clone()
        })
    }
}

/// A file being written: small ones go up in one request at `finish`; once `part_size` is
/// buffered a resumable upload starts and takes chunks as they fill; `finish` sends the last
/// chunk with the total (the object appears whole). A drop without `finish` cancels the upload.
struct GcsFile {
    store: GcsStore,
    name: String,
    what: String,
    buf: Vec<u8>,
    /// The resumable session's URI, and the bytes it has taken.
    session: Option<(String, u64)>,
    size: u64,
}

impl GcsFile {
    /// Sends the buffer's whole 256 KiB units as the next chunk (`last`: everything, with the
    /// total).
    fn send_chunk(&mut self, last: bool) -> Result<(), StorageError> {
        let (store, name, what) = (self.store.clone(), self.name.clone(), self.what.clone());
        let (uri, sent) = match self.session.take() {
            Some(s) => s,
            None => {
                let url = store.upload_url(&name, "resumable");
                let uri = store.block({
                    let (store, what) = (store.clone(), what.clone());
                    async move { store.session(&url, &what).await }
                })?;
                (uri, 0)
            }
        };
        let take = if last {
            self.buf.len()
        } else {
            self.buf.len() / CHUNK_UNIT * CHUNK_UNIT
        };
        let chunk = Bytes::from(self.buf.drain(..take).collect::<Vec<u8>>());
        let end = sent + chunk.len() as u64;
        let range = match (last, chunk.is_empty()) {
            (true, true) => format!("bytes */{end}"),
            (true, false) => format!("bytes {sent}-{}/{end}", end - 1),
            (false, _) => format!("bytes {sent}-{}/*", end - 1),
        };
        let u = uri.clone();
        store.block({
            let store = store.clone();
            async move {
                store
                    .call(&what, |http| {
                        http.put(&u)
                            .header("content-range", range.clone())
                            .body(chunk.clone())
                    })
                    .await
                    .map(|_| ())
            }
        })?;
        self.session = Some((uri, end));
        Ok(())
    }
}

impl Write for GcsFile {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        self.size += data.len() as u64;
        if self.buf.len() >= self.store.part_size {
            self.send_chunk(false).map_err(std::io::Error::other)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl OutputFile for GcsFile {
    fn finish(mut self: Box<Self>) -> Result<Written, StorageError> {
        let size = self.size;
        if self.session.is_none() {
            let body = Bytes::from(std::mem::take(&mut self.buf));
            let (store, name, what) = (self.store.clone(), self.name.clone(), self.what.clone());
            return self
                .store
                .block(async move { store.upload(name, what, body, false).await });
        }
        self.send_chunk(true)?;
        self.session = None;
        Ok(Written {
            size,
            version: None,
        })
    }
}

impl Drop for GcsFile {
    fn drop(&mut self) {
        // An unfinished resumable upload: cancel it (GCS would drop it after a week anyway).
        if let Some((uri, _)) = self.session.take() {
            let store = self.store.clone();
            let what = self.what.clone();
            let _ = self.store.block(async move {
                let _ = store.call(&what, |http| http.delete(&uri)).await;
                Ok(())
            });
        }
    }
}

impl OutputStore for GcsStore {
    fn describe(&self) -> String {
        format!("gs://{}/{}", self.bucket, self.prefix)
    }

    fn create(&self, key: &str) -> Result<Box<dyn OutputFile>, StorageError> {
        Ok(Box::new(GcsFile {
            store: self.clone(),
            name: self.full(key)?,
            what: self.what(key),
            buf: Vec::new(),
            session: None,
            size: 0,
        }))
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<Written, StorageError> {
        let (me, name, what) = (self.clone(), self.full(key)?, self.what(key));
        let body = Bytes::copy_from_slice(bytes);
        self.block(async move { me.upload(name, what, body, false).await })
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let (me, what) = (self.clone(), self.what(key));
        let url = format!("{}?alt=media", self.object_url(&self.full(key)?));
        self.block(async move {
            match me.call_bytes(&what, |http| http.get(&url)).await {
                Ok(body) => Ok(Some(body.to_vec())),
                Err(StorageError::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        self.listing(prefix)
    }

    fn delete(&self, key: &str) -> Result<(), StorageError> {
        let (me, what) = (self.clone(), self.what(key));
        let url = self.object_url(&self.full(key)?);
        self.block(async move {
            match me.call(&what, |http| http.delete(&url)).await {
                Ok(_) | Err(StorageError::NotFound { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    fn copy(&self, from: &str, to: &str) -> Result<(), StorageError> {
        let (me, what) = (self.clone(), self.what(from));
        let (src, dst) = (self.full(from)?, self.full(to)?);
        self.block(async move { me.rewrite(&src, &dst, &what).await })
    }

    fn promote(&self, from: &str, to: &str) -> Result<Written, StorageError> {
        let (me, what) = (self.clone(), self.what(to));
        let (src, dst) = (self.full(from)?, self.full(to)?);
        self.block(async move {
            match me.rewrite(&src, &dst, &what).await {
                Ok(()) => {}
                // Promoted already: the source is gone and the target is there.
                Err(StorageError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
            let url = me.object_url(&dst);
            let head = me.call_json(&what, |http| http.get(&url)).await?;
            let size = head["size"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let url = me.object_url(&src);
            match me.call(&what, |http| http.delete(&url)).await {
                Ok(_) | Err(StorageError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
            Ok(Written {
                size,
                version: None,
            })
        })
    }

    fn sweep_unfinished(&self, prefix: &str) -> Result<u64, StorageError> {
        // A killed attempt's resumable upload never finalised is not an object: not listed,
        // not visible, and GCS drops it after a week. It cannot be listed either, so say so
        // rather than pretend there was none (as for Azure's uncommitted blocks).
        Err(StorageError::Denied {
            what: format!("unfinished writes under {}", self.what(prefix)),
            why: "GCS does not list unfinished resumable uploads; it drops them after 7 days"
                .into(),
        })
    }

    fn with_stats(&self, stats: Arc<IoStats>) -> Arc<dyn OutputStore> {
        Arc::new(GcsStore {
            stats,
            ..self.clone()
        })
    }

    fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let (me, what) = (self.clone(), self.what(key));
        let url = self.object_url(&self.full(key)?);
        let root = self.prefix.to_string();
        self.block(async move {
            match me.call_json(&what, |http| http.get(&url)).await {
                Ok(v) => Ok(meta_of(&v, &root)),
                Err(StorageError::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>, StorageError> {
        let (me, what) = (self.clone(), self.what(key));
        let url = format!("{}?alt=media", self.object_url(&self.full(key)?));
        let range = format!("bytes={start}-{}", start + len.max(1) - 1);
        self.block(async move {
            let body = me
                .call_bytes(&what, |http| http.get(&url).header("range", range.clone()))
                .await?;
            Ok(body.to_vec())
        })
    }

    fn put_if_absent(&self, key: &str, bytes: &[u8]) -> Result<bool, StorageError> {
        let (me, name, what) = (self.clone(), self.full(key)?, self.what(key));
        let body = Bytes::copy_from_slice(bytes);
        self.block(async move {
            match me.upload(name, what, body, true).await {
                Ok(_) => Ok(true),
                Err(StorageError::Changed { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        })
    }
}

impl GcsStore {
    /// Copies `src` to `dst` inside the bucket (rewrite: any size, in as many calls as GCS
    /// asks for).
    async fn rewrite(&self, src: &str, dst: &str, what: &str) -> Result<(), StorageError> {
        let mut token: Option<String> = None;
        loop {
            let mut url = format!(
                "{}/rewriteTo/b/{}/o/{}",
                self.object_url(src),
                enc(&self.bucket),
                enc(dst)
            );
            if let Some(t) = &token {
                url.push_str(&format!("?rewriteToken={}", enc(t)));
            }
            let v = self
                .call_json(what, |http| {
                    http.post(&url)
                        .header("content-type", "application/json")
                        .body("{}")
                })
                .await?;
            if v["done"].as_bool().unwrap_or(true) {
                return Ok(());
            }
            token = v["rewriteToken"].as_str().map(str::to_string);
            if token.is_none() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_encoded_for_paths_and_queries() {
        assert_eq!(enc("a/b c+d%"), "a%2Fb%20c%2Bd%25");
        assert_eq!(
            enc("main_stream/2024-06-01.json"),
            "main_stream%2F2024-06-01.json"
        );
    }

    #[test]
    fn statuses_are_classified() {
        let f = |s| status_failure("x", s, r#"{"error":{"code":1,"message":"m"}}"#);
        assert!(matches!(
            f(404),
            Failure::Final(StorageError::NotFound { .. })
        ));
        assert!(matches!(
            f(412),
            Failure::Final(StorageError::Changed { .. })
        ));
        assert!(matches!(
            f(403),
            Failure::Final(StorageError::Denied { .. })
        ));
        assert!(matches!(f(429), Failure::Transient(_)));
        assert!(matches!(f(503), Failure::Transient(m) if m.contains("HTTP 503: m")));
    }
}
