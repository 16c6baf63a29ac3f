//! Azure Blob Storage (`az://CONTAINER[/PREFIX]`) behind the same traits as S3, through the
//! `object_store` crate's Azure client (already built for Delta tables; the official Azure SDK
//! for Rust would add a second HTTP stack and its own runtime conventions for the same calls).
//!
//! The account and credentials come from the process's environment, never from a request:
//! `AZURE_STORAGE_ACCOUNT_NAME` with `AZURE_STORAGE_ACCOUNT_KEY` (shared key) or
//! `AZURE_STORAGE_SAS_TOKEN`, Azure AD workload identity (`AZURE_CLIENT_ID`, `AZURE_TENANT_ID`,
//! `AZURE_FEDERATED_TOKEN_FILE`), managed identity, or the emulator
//! (`AZURE_STORAGE_USE_EMULATOR=true`, `AZURITE_BLOB_STORAGE_URL`); `AZURE_STORAGE_ENDPOINT`
//! overrides the account's URL. Reads are pinned by ETag (`If-Match`): an object overwritten
//! since it was listed is an error, never other bytes. Blob versions are not used: changes keep
//! what they displace under `_rewind/staging/`, as on an unversioned bucket.

use std::io::{Read, Write};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use object_store::azure::{MicrosoftAzure, MicrosoftAzureBuilder};
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, MultipartUpload, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload,
};
use rewind_common::storage::{
    IoStats, ObjectMeta, ObjectSource, OutputFile, OutputStore, StorageError, Written, all_pages,
    check_key,
};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use crate::client::{LIST_PAGE, block_on, paged};
use crate::source::{BodyReader, CHANNEL_CHUNKS};

/// A container and prefix, as a source and as an output.
#[derive(Clone)]
pub struct AzureStore {
    store: Arc<MicrosoftAzure>,
    container: Arc<str>,
    prefix: Arc<str>,
    handle: Handle,
    part_size: usize,
    read_ahead: usize,
}

impl std::fmt::Debug for AzureStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "az://{}/{}", self.container, self.prefix)
    }
}

/// An object_store error as ours, naming `what`.
fn storage_error(what: &str, e: object_store::Error) -> StorageError {
    use object_store::Error as E;
    let why = redact_sas(&e.to_string());
    match e {
        E::NotFound { .. } => StorageError::NotFound { what: what.into() },
        E::Precondition { .. } | E::NotModified { .. } => StorageError::Changed {
            what: what.into(),
            why,
        },
        E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::InvalidPath { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::UnknownConfigurationKey { .. } => StorageError::Denied {
            what: what.into(),
            why,
        },
        // (object_store retries transient failures itself, with backoff, before this.)
        _ => StorageError::Unavailable {
            what: what.into(),
            why,
        },
    }
}

/// A message with every SAS signature in it masked: object_store's errors quote the request
/// URL, whose query carries a SAS token's `sig` when that is the credential.
fn redact_sas(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find("sig=") {
        let (head, tail) = rest.split_at(i + 4);
        out.push_str(head);
        out.push_str("REDACTED");
        let end = tail
            .find(|c: char| c == '&' || c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// An ETag as one form: listings give it bare, headers quoted.
fn tag(e: Option<String>) -> Option<String> {
    e.map(|t| t.trim_matches('"').to_string())
}

impl AzureStore {
    /// Opens `az://container/prefix` with credentials from the environment; one small listing
    /// checks the container and the credentials before any work.
    pub async fn open(
        container: &str,
        prefix: &str,
        part_size: usize,
        read_ahead: usize,
    ) -> Result<AzureStore, StorageError> {
        let env = MicrosoftAzureBuilder::from_env();
        Self::open_with(env, container, prefix, part_size, read_ahead).await
    }

    /// [`AzureStore::open`] with the account and credentials of `builder`.
    pub async fn open_with(
        builder: MicrosoftAzureBuilder,
        container: &str,
        prefix: &str,
        part_size: usize,
        read_ahead: usize,
    ) -> Result<AzureStore, StorageError> {
        let what = format!("az://{container}/{prefix}");
        let store = builder
            .with_container_name(container)
            .build()
            .map_err(|e| StorageError::Denied {
                what: what.clone(),
                why: format!("{e} (set AZURE_STORAGE_ACCOUNT_NAME and a credential)"),
            })?;
        let me = AzureStore {
            store: Arc::new(store),
            container: container.into(),
            prefix: prefix.into(),
            handle: Handle::current(),
            part_size: part_size.max(5 << 20),
            read_ahead,
        };
        let (store, path) = (me.store.clone(), me.dir_path(""));
        let mut listing = store.list(path.as_ref());
        if let Some(Err(e)) = listing.next().await {
            return Err(storage_error(&what, e));
        }
        Ok(me)
    }

    fn full(&self, key: &str) -> Result<String, StorageError> {
        check_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }

    fn path(&self, key: &str) -> Result<Path, StorageError> {
        let full = self.full(key)?;
        Path::parse(&full).map_err(|e| StorageError::InvalidKey {
            key: key.to_string(),
            why: if e.to_string().is_empty() {
                "not a valid blob name"
            } else {
                "not a valid blob name (empty or '.' segments, or illegal characters)"
            },
        })
    }

    /// The directory whose listing holds every key starting with `prefix` (its part up to the
    /// last `/`; `None` for the container's root).
    fn dir_path(&self, prefix: &str) -> Option<Path> {
        let full = format!("{}{prefix}", self.prefix);
        let dir = match full.rfind('/') {
            Some(i) => &full[..i],
            None => "",
        };
        (!dir.is_empty()).then(|| Path::from(dir))
    }

    fn what(&self, key: &str) -> String {
        format!("az://{}/{}{key}", self.container, self.prefix)
    }

    fn block<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, StorageError>> + Send + 'static,
    ) -> Result<T, StorageError> {
        block_on(&self.handle, fut)
    }

    fn listing(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        all_pages(|each| self.listing_pages(prefix, each))
    }

    /// The blobs under `prefix`, a page of up to [`LIST_PAGE`] at a time, in key order (Azure
    /// lists blobs in lexicographic order).
    fn listing_pages(
        &self,
        prefix: &str,
        each: &mut dyn FnMut(Vec<ObjectMeta>) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        if !prefix.is_empty() {
            check_key(prefix.trim_end_matches('/'))?;
        }
        let (store, dir) = (self.store.clone(), self.dir_path(prefix));
        let full = format!("{}{prefix}", self.prefix);
        let root = self.prefix.clone();
        let what = format!("listing {}", self.what(prefix));
        let producer_what = what.clone();
        paged(
            &self.handle,
            &what,
            |tx| async move {
                let what = producer_what;
                let mut page = Vec::new();
                let mut stream = store.list(dir.as_ref());
                while let Some(item) = stream.next().await {
                    let m = item.map_err(|e| storage_error(&what, e))?;
                    let key = m.location.as_ref();
                    if !key.starts_with(&full) {
                        continue;
                    }
                    page.push(ObjectMeta {
                        key: key[root.len()..].to_string(),
                        size: m.size,
                        etag: tag(m.e_tag),
                        version: None,
                    });
                    if page.len() >= LIST_PAGE {
                        page.sort_by(|a, b| a.key.cmp(&b.key));
                        if tx.send(Ok(Some(std::mem::take(&mut page)))).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                page.sort_by(|a, b| a.key.cmp(&b.key));
                if !page.is_empty() && tx.send(Ok(Some(page))).await.is_err() {
                    return Ok(());
                }
                let _ = tx.send(Ok(None)).await;
                Ok(())
            },
            each,
        )
    }
}

impl ObjectSource for AzureStore {
    fn describe(&self) -> String {
        format!("az://{}/{}", self.container, self.prefix)
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
        let path = self.path(&meta.key)?;
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let (store, what, meta) = (self.store.clone(), self.what(&meta.key), meta.clone());
        self.handle.spawn(async move {
            let options = GetOptions {
                if_match: meta.etag.as_ref().map(|t| format!("\"{t}\"")),
                ..GetOptions::default()
            };
            let end = match store.get_opts(&path, options).await {
                Err(e) => Err(storage_error(&what, e)),
                Ok(got) if got.meta.size != meta.size => Err(StorageError::Changed {
                    what: what.clone(),
                    why: format!("{} bytes now, {} when listed", got.meta.size, meta.size),
                }),
                Ok(got) => {
                    let mut body = got.into_stream();
                    let mut end = Ok(());
                    while let Some(chunk) = body.next().await {
                        match chunk {
                            Ok(c) => {
                                if tx.send(Ok(Some(c))).await.is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                end = Err(storage_error(&what, e));
                                break;
                            }
                        }
                    }
                    end
                }
            };
            let _ = tx.send(end.map(|()| None)).await;
        });
        Ok(Box::new(BodyReader::new(rx)))
    }

    fn read_ahead(&self) -> usize {
        self.read_ahead
    }

    fn with_stats(&self, _stats: Arc<IoStats>) -> Arc<dyn ObjectSource> {
        // (object_store retries inside its client; it does not report them.)
        Arc::new(self.clone())
    }
}

/// A file being written: parts of `part_size` go up as blocks as they fill; `finish` commits
/// the block list (the blob appears whole), a drop without it aborts.
struct AzureFile {
    store: AzureStore,
    what: String,
    path: Path,
    buf: Vec<u8>,
    upload: Option<Box<dyn MultipartUpload>>,
    size: u64,
}

impl AzureFile {
    fn flush_part(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let part = PutPayload::from(std::mem::take(&mut self.buf));
        let upload = match self.upload.take() {
            Some(u) => u,
            None => {
                let (store, path, what) = (
                    self.store.store.clone(),
                    self.path.clone(),
                    self.what.clone(),
                );
                self.store
                    .block(async move {
                        store
                            .put_multipart(&path)
                            .await
                            .map_err(|e| storage_error(&what, e))
                    })
                    .map_err(std::io::Error::other)?
            }
        };
        let mut upload = upload;
        let fut = upload.put_part(part);
        let what = self.what.clone();
        let done = self
            .store
            .block(async move { fut.await.map_err(|e| storage_error(&what, e)) });
        self.upload = Some(upload);
        done.map_err(std::io::Error::other)
    }
}

impl Write for AzureFile {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        self.size += data.len() as u64;
        if self.buf.len() >= self.store.part_size {
            self.flush_part()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl OutputFile for AzureFile {
    fn finish(mut self: Box<Self>) -> Result<Written, StorageError> {
        let size = self.size;
        match self.upload.take() {
            None => {
                // Small: one PUT.
                let body = Bytes::from(std::mem::take(&mut self.buf));
                let (store, path, what) = (
                    self.store.store.clone(),
                    self.path.clone(),
                    self.what.clone(),
                );
                self.store.block(async move {
                    store
                        .put(&path, body.into())
                        .await
                        .map_err(|e| storage_error(&what, e))
                })?;
            }
            Some(upload) => {
                self.upload = Some(upload);
                self.flush_part().map_err(|e| StorageError::Unavailable {
                    what: self.what.clone(),
                    why: e.to_string(),
                })?;
                let mut upload = self.upload.take().expect("an upload");
                let what = self.what.clone();
                self.store.block(async move {
                    upload.complete().await.map_err(|e| storage_error(&what, e))
                })?;
            }
        }
        Ok(Written {
            size,
            version: None,
        })
    }
}

impl Drop for AzureFile {
    fn drop(&mut self) {
        if let Some(mut upload) = self.upload.take() {
            let _ = self.store.block(async move {
                let _ = upload.abort().await;
                Ok(())
            });
        }
    }
}

impl OutputStore for AzureStore {
    fn describe(&self) -> String {
        format!("az://{}/{}", self.container, self.prefix)
    }

    fn create(&self, key: &str) -> Result<Box<dyn OutputFile>, StorageError> {
        Ok(Box::new(AzureFile {
            store: self.clone(),
            what: self.what(key),
            path: self.path(key)?,
            buf: Vec::new(),
            upload: None,
            size: 0,
        }))
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<Written, StorageError> {
        let (store, path, what) = (self.store.clone(), self.path(key)?, self.what(key));
        let body = Bytes::copy_from_slice(bytes);
        let size = body.len() as u64;
        self.block(async move {
            store
                .put(&path, body.into())
                .await
                .map_err(|e| storage_error(&what, e))?;
            Ok(Written {
                size,
                version: None,
            })
        })
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let (store, path, what) = (self.store.clone(), self.path(key)?, self.what(key));
        self.block(async move {
            match store.get(&path).await {
                Ok(got) => Ok(Some(
                    got.bytes()
                        .await
                        .map_err(|e| storage_error(&what, e))?
                        .to_vec(),
                )),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(storage_error(&what, e)),
            }
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        self.listing(prefix)
    }

    fn delete(&self, key: &str) -> Result<(), StorageError> {
        let (store, path, what) = (self.store.clone(), self.path(key)?, self.what(key));
        self.block(async move {
            match store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(storage_error(&what, e)),
            }
        })
    }

    fn copy(&self, from: &str, to: &str) -> Result<(), StorageError> {
        let (store, src, dst) = (self.store.clone(), self.path(from)?, self.path(to)?);
        let what = self.what(from);
        self.block(async move {
            store
                .copy(&src, &dst)
                .await
                .map_err(|e| storage_error(&what, e))
        })
    }

    fn promote(&self, from: &str, to: &str) -> Result<Written, StorageError> {
        let (store, src, dst) = (self.store.clone(), self.path(from)?, self.path(to)?);
        let what = self.what(to);
        self.block(async move {
            match store.copy(&src, &dst).await {
                Ok(()) => {}
                // Promoted already: the source is gone and the target is there.
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(storage_error(&what, e)),
            }
            let head = store
                .head(&dst)
                .await
                .map_err(|e| storage_error(&what, e))?;
            match store.delete(&src).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(storage_error(&what, e)),
            }
            Ok(Written {
                size: head.size,
                version: None,
            })
        })
    }

    fn sweep_unfinished(&self, prefix: &str) -> Result<u64, StorageError> {
        // Blocks staged and never committed are invisible to listings; Azure discards them
        // after a week. Say so rather than pretend there were none.
        Err(StorageError::Denied {
            what: format!("unfinished writes under {}", self.what(prefix)),
            why: "Azure does not list uncommitted blocks here; it discards them after 7 days"
                .into(),
        })
    }

    fn with_stats(&self, _stats: Arc<IoStats>) -> Arc<dyn OutputStore> {
        Arc::new(self.clone())
    }

    fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let (store, path, what) = (self.store.clone(), self.path(key)?, self.what(key));
        let key = key.to_string();
        self.block(async move {
            match store.head(&path).await {
                Ok(m) => Ok(Some(ObjectMeta {
                    key,
                    size: m.size,
                    etag: tag(m.e_tag),
                    version: None,
                })),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(storage_error(&what, e)),
            }
        })
    }

    fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>, StorageError> {
        let (store, path, what) = (self.store.clone(), self.path(key)?, self.what(key));
        self.block(async move {
            let options = GetOptions {
                range: Some(GetRange::Bounded(start..start.saturating_add(len))),
                ..GetOptions::default()
            };
            match store.get_opts(&path, options).await {
                Ok(got) => Ok(got
                    .bytes()
                    .await
                    .map_err(|e| storage_error(&what, e))?
                    .to_vec()),
                Err(e) => Err(storage_error(&what, e)),
            }
        })
    }

    fn put_if_absent(&self, key: &str, bytes: &[u8]) -> Result<bool, StorageError> {
        let (store, path, what) = (self.store.clone(), self.path(key)?, self.what(key));
        let body = Bytes::copy_from_slice(bytes);
        self.block(async move {
            let opts = PutOptions {
                mode: PutMode::Create,
                ..PutOptions::default()
            };
            match store.put_opts(&path, body.into(), opts).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
                Err(e) => Err(storage_error(&what, e)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sas_signatures_never_reach_a_message() {
        let m = "Error performing GET http://a/c?restype=container&sv=2021&sig=abc%2Bdef%3D&se=x in 3ms";
        let r = super::redact_sas(m);
        assert!(!r.contains("abc%2Bdef"), "{r}");
        assert!(r.contains("sig=REDACTED&se=x in 3ms"), "{r}");
        assert_eq!(super::redact_sas("no secret"), "no secret");
    }
}
