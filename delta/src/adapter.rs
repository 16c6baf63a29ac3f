//! `object_store::ObjectStore` over Rewind's [`OutputStore`]: delta_kernel's default engine reads
//! and writes the table's log through the same store (and S3 client, credentials, roles and
//! retries) as the rest of a job, instead of a second client configured separately.
//!
//! The stores are synchronous and block their thread (ADR 1), so every call runs on the engine
//! runtime's blocking pool. Only what the engine uses is supported: whole and ranged reads,
//! heads, listings, atomic puts (`PutMode::Create` is the store's conditional write, which the
//! log's commits rely on), deletes and copies. Multipart uploads are refused: Rewind writes data
//! files itself and hands the engine only their metadata.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use delta_kernel::object_store::path::Path;
use delta_kernel::object_store::{
    self as os, CopyMode, CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult,
    MultipartUpload, ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use futures::StreamExt;
use futures::stream::BoxStream;
use rewind_common::storage::{ObjectMeta, OutputStore, StorageError};

const NAME: &str = "rewind";

/// The adapter; the table's root is the store's root.
pub struct StoreAdapter {
    store: Arc<dyn OutputStore>,
}

impl StoreAdapter {
    pub fn new(store: Arc<dyn OutputStore>) -> StoreAdapter {
        StoreAdapter { store }
    }
}

impl fmt::Display for StoreAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rewind store {}", self.store.describe())
    }
}

impl fmt::Debug for StoreAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A storage error as an object_store error, kept whole as the source so the table layer can
/// tell a retryable failure from a final one.
fn os_error(path: &str, e: StorageError) -> os::Error {
    match e {
        StorageError::NotFound { .. } => os::Error::NotFound {
            path: path.to_string(),
            source: Box::new(e),
        },
        e => os::Error::Generic {
            store: NAME,
            source: Box::new(e),
        },
    }
}

fn meta(location: &Path, m: &ObjectMeta) -> os::ObjectMeta {
    os::ObjectMeta {
        location: location.clone(),
        // Rewind's stores do not carry modification times; the log's commits carry their own
        // timestamps (commitInfo, in-commit timestamps), which is what history reads.
        last_modified: DateTime::<Utc>::UNIX_EPOCH,
        size: m.size,
        e_tag: m.etag.clone(),
        version: m.version.clone(),
    }
}

/// Runs a blocking store call on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> os::Result<T> + Send + 'static,
) -> os::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| os::Error::Generic {
            store: NAME,
            source: Box::new(e),
        })?
}

fn key(location: &Path) -> String {
    location.as_ref().to_string()
}

#[async_trait::async_trait]
impl ObjectStore for StoreAdapter {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> os::Result<PutResult> {
        let store = self.store.clone();
        let key = key(location);
        let bytes: Bytes = payload.into();
        blocking(move || match opts.mode {
            PutMode::Overwrite => {
                let w = store.put(&key, &bytes).map_err(|e| os_error(&key, e))?;
                Ok(PutResult {
                    e_tag: None,
                    version: w.version,
                    extensions: Default::default(),
                })
            }
            PutMode::Create => {
                if store
                    .put_if_absent(&key, &bytes)
                    .map_err(|e| os_error(&key, e))?
                {
                    Ok(PutResult {
                        e_tag: None,
                        version: None,
                        extensions: Default::default(),
                    })
                } else {
                    Err(os::Error::AlreadyExists {
                        path: key.clone(),
                        source: format!("{key} exists").into(),
                    })
                }
            }
            PutMode::Update(_) => Err(os::Error::NotImplemented {
                operation: "put with PutMode::Update".into(),
                implementer: NAME.into(),
            }),
        })
        .await
    }

    async fn put_multipart_opts(
        &self,
        _location: &Path,
        _opts: PutMultipartOptions,
    ) -> os::Result<Box<dyn MultipartUpload>> {
        Err(os::Error::NotImplemented {
            operation: "put_multipart".into(),
            implementer: NAME.into(),
        })
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> os::Result<GetResult> {
        let store = self.store.clone();
        let location = location.clone();
        blocking(move || {
            let key = key(&location);
            let head = store
                .head(&key)
                .map_err(|e| os_error(&key, e))?
                .ok_or_else(|| os::Error::NotFound {
                    path: key.clone(),
                    source: format!("{key} not found").into(),
                })?;
            let meta = meta(&location, &head);
            options.check_preconditions(&meta)?;
            let (range, data): (Range<u64>, Bytes) = if options.head {
                (0..head.size, Bytes::new())
            } else if let Some(r) = &options.range {
                let r = r.as_range(head.size).map_err(|e| os::Error::Generic {
                    store: NAME,
                    source: Box::new(e),
                })?;
                let bytes = store
                    .get_range(&key, r.start, r.end - r.start)
                    .map_err(|e| os_error(&key, e))?;
                (r, bytes.into())
            } else {
                let bytes = store
                    .get(&key)
                    .map_err(|e| os_error(&key, e))?
                    .ok_or_else(|| os::Error::NotFound {
                        path: key.clone(),
                        source: format!("{key} not found").into(),
                    })?;
                (0..bytes.len() as u64, bytes.into())
            };
            let stream = futures::stream::once(async move { Ok(data) }).boxed();
            Ok(GetResult {
                payload: GetResultPayload::Stream(stream),
                meta,
                range,
                attributes: Default::default(),
                extensions: Default::default(),
            })
        })
        .await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, os::Result<Path>>,
    ) -> BoxStream<'static, os::Result<Path>> {
        let store = self.store.clone();
        locations
            .then(move |location| {
                let store = store.clone();
                async move {
                    let location = location?;
                    blocking(move || {
                        let key = key(&location);
                        store.delete(&key).map_err(|e| os_error(&key, e))?;
                        Ok(location)
                    })
                    .await
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, os::Result<os::ObjectMeta>> {
        let store = self.store.clone();
        let prefix = dir_prefix(prefix);
        futures::stream::once(async move {
            blocking(move || {
                let listed = store.list(&prefix).map_err(|e| os_error(&prefix, e))?;
                Ok(listed
                    .iter()
                    .map(|m| Ok(meta(&Path::from(m.key.as_str()), m)))
                    .collect::<Vec<_>>())
            })
            .await
        })
        .flat_map(|r| match r {
            Ok(items) => futures::stream::iter(items).boxed(),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        })
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> os::Result<ListResult> {
        let store = self.store.clone();
        let prefix = dir_prefix(prefix);
        blocking(move || {
            let listed = store.list(&prefix).map_err(|e| os_error(&prefix, e))?;
            let mut common: Vec<Path> = Vec::new();
            let mut objects = Vec::new();
            for m in &listed {
                let rest = &m.key[prefix.len()..];
                match rest.split_once('/') {
                    Some((dir, _)) => {
                        let p = Path::from(format!("{prefix}{dir}").as_str());
                        if common.last() != Some(&p) {
                            common.push(p);
                        }
                    }
                    None => objects.push(meta(&Path::from(m.key.as_str()), m)),
                }
            }
            common.dedup();
            Ok(ListResult {
                common_prefixes: common,
                objects,
                extensions: Default::default(),
            })
        })
        .await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> os::Result<()> {
        let store = self.store.clone();
        let (from, to) = (key(from), key(to));
        blocking(move || {
            let bytes = store
                .get(&from)
                .map_err(|e| os_error(&from, e))?
                .ok_or_else(|| os::Error::NotFound {
                    path: from.clone(),
                    source: format!("{from} not found").into(),
                })?;
            match options.mode {
                CopyMode::Overwrite => {
                    store.put(&to, &bytes).map_err(|e| os_error(&to, e))?;
                }
                CopyMode::Create => {
                    if !store
                        .put_if_absent(&to, &bytes)
                        .map_err(|e| os_error(&to, e))?
                    {
                        return Err(os::Error::AlreadyExists {
                            path: to.clone(),
                            source: format!("{to} exists").into(),
                        });
                    }
                }
            }
            Ok(())
        })
        .await
    }
}

/// A listing prefix: a path's objects are below `path/`.
fn dir_prefix(prefix: Option<&Path>) -> String {
    match prefix.map(|p| p.as_ref()) {
        None | Some("") => String::new(),
        Some(p) => format!("{}/", p.trim_end_matches('/')),
    }
}
