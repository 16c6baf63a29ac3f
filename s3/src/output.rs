//! Outputs in an S3 bucket. Large files go up as multipart uploads with one part buffered at a
//! time (bounded memory); a file dropped before `finish` aborts its upload, so nothing partial
//! ever becomes visible. Small files are single PUTs.

use std::io::{self, Write};
use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketVersioningStatus, CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use rewind_common::storage::{
    IoStats, ObjectMeta, OutputFile, OutputStore, StorageError, StoredVersion, Written, check_key,
};

use crate::client::S3Client;
use crate::retry::{Failure, classify};
use crate::source::{list_objects, version_pages};

#[derive(Debug, Clone)]
pub struct S3Output {
    client: S3Client,
    bucket: Arc<str>,
    prefix: Arc<str>,
    part_size: usize,
    /// Whether the bucket keeps versions, once asked.
    versioned: Arc<std::sync::OnceLock<bool>>,
}

impl S3Output {
    pub fn new(client: S3Client, bucket: &str, prefix: &str, part_size: usize) -> S3Output {
        S3Output {
            client,
            bucket: bucket.into(),
            prefix: prefix.into(),
            part_size,
            versioned: Arc::default(),
        }
    }

    fn full(&self, key: &str) -> Result<String, StorageError> {
        check_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }

    /// Whether the bucket keeps versions, asked of the store.
    fn ask_versioned(&self) -> Result<bool, StorageError> {
        let (client, bucket) = (self.client.clone(), self.bucket.clone());
        let what = format!(
            "the versioning of s3://{bucket} with {}",
            self.client.identity
        );
        let asked = self.client.block(async move {
            client
                .send(&what, || {
                    client.sdk.get_bucket_versioning().bucket(&*bucket).send()
                })
                .await
                .map(|out| out.status() == Some(&BucketVersioningStatus::Enabled))
        });
        match asked {
            Ok(on) => Ok(on),
            // A store without the API (s3s-fs), or with an answer the SDK cannot read (moto
            // 5.2): a probe object gets a version id exactly when the bucket keeps versions.
            Err(e) if !e.is_retryable() => {
                tracing::debug!(error = %e, "GetBucketVersioning failed; probing");
                let probe = format!(
                    "_rewind/probe/versioning-{}",
                    rewind_common::JobId::generate()
                );
                let written = self.put(&probe, b"")?;
                match written.version {
                    Some(v) => {
                        self.delete_version(&probe, &v)?;
                        Ok(true)
                    }
                    None => {
                        self.delete(&probe)?;
                        Ok(false)
                    }
                }
            }
            Err(e) => Err(e),
        }
    }

    /// What a request about `key` needs: the client, the bucket, the full key and its name for
    /// messages.
    fn request(&self, key: &str) -> Result<(S3Client, Arc<str>, String, String), StorageError> {
        Ok((
            self.client.clone(),
            self.bucket.clone(),
            self.full(key)?,
            self.what(key),
        ))
    }

    fn what(&self, key: &str) -> String {
        format!(
            "s3://{}/{}{key} with {}",
            self.bucket, self.prefix, self.client.identity
        )
    }
}

/// Puts one object (retried: the body is shared bytes).
async fn put_object(
    client: &S3Client,
    bucket: &str,
    key: &str,
    body: Bytes,
    what: &str,
) -> Result<Written, StorageError> {
    let size = body.len() as u64;
    let out = client
        .send(what, || {
            client
                .sdk
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(ByteStream::from(body.clone()))
                .send()
        })
        .await?;
    Ok(Written {
        size,
        version: out.version_id().map(str::to_string),
    })
}

impl OutputStore for S3Output {
    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    fn create(&self, key: &str) -> Result<Box<dyn OutputFile>, StorageError> {
        Ok(Box::new(S3File {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: self.full(key)?,
            what: self.what(key),
            part_size: self.part_size,
            buf: Vec::new(),
            upload: None,
            size: 0,
            done: false,
        }))
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<Written, StorageError> {
        let (client, bucket, full) = (self.client.clone(), self.bucket.clone(), self.full(key)?);
        let (what, body) = (self.what(key), Bytes::copy_from_slice(bytes));
        self.client
            .block(async move { put_object(&client, &bucket, &full, body, &what).await })
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let (client, bucket, full, what) = self.request(key)?;
        self.client.block(async move {
            let what = what.as_str();
            // The whole read is one retried unit: a body cut mid-way starts over (small objects).
            let got = client
                .retry
                .run(&client.stats, what, || {
                    let req = client.sdk.get_object().bucket(&*bucket).key(&full);
                    async move {
                        let out = req.send().await.map_err(|e| classify(e, what))?;
                        let body = out
                            .body
                            .collect()
                            .await
                            .map_err(|e| Failure::Transient(crate::retry::chain(&e)))?;
                        Ok(body.into_bytes().to_vec())
                    }
                })
                .await;
            match got {
                Ok(bytes) => Ok(Some(bytes)),
                Err(StorageError::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        let (client, bucket, root) = (
            self.client.clone(),
            self.bucket.clone(),
            self.prefix.clone(),
        );
        let full = self.full(prefix)?;
        let what = format!("listing {}", self.what(prefix));
        self.client.block(async move {
            let mut out = list_objects(&client, &bucket, &full, &what, false).await?;
            for o in &mut out {
                o.key = o.key[root.len()..].to_string();
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
    }

    fn sweep_unfinished(&self, prefix: &str) -> Result<u64, StorageError> {
        let (client, bucket) = (self.client.clone(), self.bucket.clone());
        let full = self.full(prefix)?;
        let what = format!("listing the unfinished uploads of {}", self.what(prefix));
        self.client.block(async move {
            let mut uploads = Vec::new();
            let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
            loop {
                let page = client
                    .send(&what, || {
                        client
                            .sdk
                            .list_multipart_uploads()
                            .bucket(&*bucket)
                            .prefix(&full)
                            .set_key_marker(key_marker.clone())
                            .set_upload_id_marker(id_marker.clone())
                            .send()
                    })
                    .await?;
                for u in page.uploads() {
                    if let (Some(key), Some(id)) = (u.key(), u.upload_id()) {
                        uploads.push((key.to_string(), id.to_string()));
                    }
                }
                if page.is_truncated() != Some(true) {
                    break;
                }
                key_marker = page.next_key_marker().map(str::to_string);
                id_marker = page.next_upload_id_marker().map(str::to_string);
                if key_marker.is_none() && id_marker.is_none() {
                    break;
                }
            }
            for (key, id) in &uploads {
                let what = format!("aborting the unfinished upload of s3://{bucket}/{key}");
                let aborted = client
                    .send(&what, || {
                        client
                            .sdk
                            .abort_multipart_upload()
                            .bucket(&*bucket)
                            .key(key)
                            .upload_id(id)
                            .send()
                    })
                    .await;
                match aborted {
                    Ok(_) | Err(StorageError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(uploads.len() as u64)
        })
    }

    fn delete(&self, key: &str) -> Result<(), StorageError> {
        let (client, bucket, full, what) = self.request(key)?;
        self.client.block(async move {
            let what = what.as_str();
            let deleted = client
                .send(what, || {
                    client
                        .sdk
                        .delete_object()
                        .bucket(&*bucket)
                        .key(&full)
                        .send()
                })
                .await;
            match deleted {
                Ok(_) | Err(StorageError::NotFound { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    fn copy(&self, from: &str, to: &str) -> Result<(), StorageError> {
        let (client, bucket) = (self.client.clone(), self.bucket.clone());
        let (src, dst, what) = (self.full(from)?, self.full(to)?, self.what(from));
        self.client.block(async move {
            copy_object(&client, &bucket, &src, &dst, what.as_str())
                .await
                .map(drop)
        })
    }

    fn delete_many(&self, keys: &[String]) -> Result<(), StorageError> {
        use aws_sdk_s3::types::{Delete, ObjectIdentifier};
        for chunk in keys.chunks(1000) {
            let mut ids = Vec::with_capacity(chunk.len());
            for k in chunk {
                ids.push(
                    ObjectIdentifier::builder()
                        .key(self.full(k)?)
                        .build()
                        .map_err(|e| StorageError::Unavailable {
                            what: self.what(k),
                            why: e.to_string(),
                        })?,
                );
            }
            let delete = Delete::builder()
                .set_objects(Some(ids))
                .quiet(true)
                .build()
                .map_err(|e| StorageError::Unavailable {
                    what: self.what(&chunk[0]),
                    why: e.to_string(),
                })?;
            let (client, bucket) = (self.client.clone(), self.bucket.clone());
            let what = format!(
                "{} (and {} more keys)",
                self.what(&chunk[0]),
                chunk.len() - 1
            );
            let out = self.client.block(async move {
                let what = what.as_str();
                client
                    .send(what, || {
                        client
                            .sdk
                            .delete_objects()
                            .bucket(&*bucket)
                            .delete(delete.clone())
                            .send()
                    })
                    .await
            })?;
            // Per-key failures come back in the answer, not as an error of the request.
            if let Some(e) = out.errors().first() {
                return Err(StorageError::Unavailable {
                    what: self.what(e.key().unwrap_or_default()),
                    why: format!(
                        "DeleteObjects: {} {} ({} keys not deleted)",
                        e.code().unwrap_or_default(),
                        e.message().unwrap_or_default(),
                        out.errors().len()
                    ),
                });
            }
        }
        Ok(())
    }

    fn promote(&self, from: &str, to: &str) -> Result<Written, StorageError> {
        let (client, bucket) = (self.client.clone(), self.bucket.clone());
        let (src, dst, what) = (self.full(from)?, self.full(to)?, self.what(to));
        self.client.block(async move {
            let what = what.as_str();
            let copied = copy_object(&client, &bucket, &src, &dst, what).await;
            let version = match copied {
                Ok(out) => out.version_id().map(str::to_string),
                // Promoted before (a commit run again): `to` is there, `from` is gone.
                Err(StorageError::NotFound { .. }) => None,
                Err(e) => return Err(e),
            };
            let head = client
                .send(what, || {
                    client.sdk.head_object().bucket(&*bucket).key(&dst).send()
                })
                .await?;
            let deleted = client
                .send(what, || {
                    client.sdk.delete_object().bucket(&*bucket).key(&src).send()
                })
                .await;
            match deleted {
                Ok(_) | Err(StorageError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
            Ok(Written {
                size: head.content_length().unwrap_or(0).max(0) as u64,
                version: version.or_else(|| head.version_id().map(str::to_string)),
            })
        })
    }

    fn with_stats(&self, stats: Arc<IoStats>) -> Arc<dyn OutputStore> {
        Arc::new(S3Output {
            client: self.client.with_stats(stats),
            ..self.clone()
        })
    }

    fn put_if_absent(&self, key: &str, bytes: &[u8]) -> Result<bool, StorageError> {
        let (client, bucket, full, what) = self.request(key)?;
        let body = Bytes::copy_from_slice(bytes);
        self.client.block(async move {
            let put = client
                .send(&what, || {
                    client
                        .sdk
                        .put_object()
                        .bucket(&*bucket)
                        .key(&full)
                        .if_none_match("*")
                        .body(ByteStream::from(body.clone()))
                        .send()
                })
                .await;
            match put {
                Ok(_) => Ok(true),
                // 412: something is there. (409: a concurrent conditional write won.)
                Err(StorageError::Denied { why, .. } | StorageError::Changed { why, .. })
                    if why.contains("PreconditionFailed")
                        || why.contains("412")
                        || why.contains("ConditionalRequestConflict") =>
                {
                    Ok(false)
                }
                Err(e) => Err(e),
            }
        })
    }

    fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>, StorageError> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let (client, bucket, full, what) = self.request(key)?;
        let range = format!("bytes={start}-{}", start + len - 1);
        self.client.block(async move {
            let what = what.as_str();
            client
                .retry
                .run(&client.stats, what, || {
                    let req = client
                        .sdk
                        .get_object()
                        .bucket(&*bucket)
                        .key(&full)
                        .range(&range);
                    async move {
                        let out = req.send().await.map_err(|e| classify(e, what))?;
                        let body = out
                            .body
                            .collect()
                            .await
                            .map_err(|e| Failure::Transient(crate::retry::chain(&e)))?;
                        Ok(body.into_bytes().to_vec())
                    }
                })
                .await
        })
    }

    fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let (client, bucket, full, what) = self.request(key)?;
        let key = key.to_string();
        self.client.block(async move {
            let head = client
                .send(&what, || {
                    client.sdk.head_object().bucket(&*bucket).key(&full).send()
                })
                .await;
            match head {
                Ok(h) => Ok(Some(ObjectMeta {
                    key,
                    size: h.content_length().unwrap_or(0).max(0) as u64,
                    etag: h.e_tag().map(str::to_string),
                    version: h.version_id().filter(|v| *v != "null").map(str::to_string),
                })),
                Err(StorageError::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn versioned(&self) -> Result<bool, StorageError> {
        if let Some(on) = self.versioned.get() {
            return Ok(*on);
        }
        let on = self.ask_versioned()?;
        Ok(*self.versioned.get_or_init(|| on))
    }

    fn remove(&self, key: &str) -> Result<Option<String>, StorageError> {
        let (client, bucket, full, what) = self.request(key)?;
        self.client.block(async move {
            let deleted = client
                .send(&what, || {
                    client
                        .sdk
                        .delete_object()
                        .bucket(&*bucket)
                        .key(&full)
                        .send()
                })
                .await;
            match deleted {
                Ok(out) => Ok(out
                    .version_id()
                    .filter(|v| *v != "null")
                    .map(str::to_string)),
                Err(StorageError::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn versions(&self, key: &str) -> Result<Vec<StoredVersion>, StorageError> {
        let (client, bucket, full) = (self.client.clone(), self.bucket.clone(), self.full(key)?);
        let what = format!("listing the versions of {}", self.what(key));
        self.client.block(async move {
            // (latest, last modified, version) of every version and delete marker of exactly
            // `full`.
            let mut all: Vec<(bool, i64, StoredVersion)> = Vec::new();
            let when = |t: Option<&aws_sdk_s3::primitives::DateTime>| {
                t.and_then(|t| t.to_millis().ok()).unwrap_or(0)
            };
            version_pages(&client, &bucket, &full, &what, |page| {
                for v in page.versions().iter().filter(|v| v.key() == Some(&*full)) {
                    all.push((
                        v.is_latest() == Some(true),
                        when(v.last_modified()),
                        StoredVersion {
                            version: v.version_id().unwrap_or("null").to_string(),
                            delete_marker: false,
                            size: v.size().unwrap_or(0).max(0) as u64,
                            etag: v.e_tag().map(str::to_string),
                        },
                    ));
                }
                for m in page
                    .delete_markers()
                    .iter()
                    .filter(|m| m.key() == Some(&*full))
                {
                    all.push((
                        m.is_latest() == Some(true),
                        when(m.last_modified()),
                        StoredVersion {
                            version: m.version_id().unwrap_or("null").to_string(),
                            delete_marker: true,
                            size: 0,
                            etag: None,
                        },
                    ));
                }
            })
            .await?;
            // Newest first: the latest, then by time (stores keep seconds only); the listing
            // gives each key's versions newest first, which a stable sort keeps for ties.
            all.sort_by_key(|v| std::cmp::Reverse((v.0, v.1)));
            Ok(all.into_iter().map(|(_, _, v)| v).collect())
        })
    }

    fn restore_version(&self, key: &str, version: &str) -> Result<Written, StorageError> {
        let (client, bucket, full, what) = self.request(key)?;
        let source = format!("{bucket}/{}?versionId={version}", encode_key(&full));
        self.client.block(async move {
            let out = client
                .send(&what, || {
                    client
                        .sdk
                        .copy_object()
                        .bucket(&*bucket)
                        .copy_source(&source)
                        .key(&full)
                        .send()
                })
                .await?;
            let head = client
                .send(&what, || {
                    client.sdk.head_object().bucket(&*bucket).key(&full).send()
                })
                .await?;
            Ok(Written {
                size: head.content_length().unwrap_or(0).max(0) as u64,
                version: out.version_id().or(head.version_id()).map(str::to_string),
            })
        })
    }

    fn delete_version(&self, key: &str, version: &str) -> Result<(), StorageError> {
        let (client, bucket, full, what) = self.request(key)?;
        let version = version.to_string();
        self.client.block(async move {
            let deleted = client
                .send(&what, || {
                    client
                        .sdk
                        .delete_object()
                        .bucket(&*bucket)
                        .key(&full)
                        .version_id(&version)
                        .send()
                })
                .await;
            match deleted {
                Ok(_) | Err(StorageError::NotFound { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }
}

struct Upload {
    id: String,
    parts: Vec<CompletedPart>,
}

/// A file being written: bytes gather in one part-sized buffer; a full buffer is uploaded as
/// the next part (the first full buffer starts the multipart upload).
struct S3File {
    client: S3Client,
    bucket: Arc<str>,
    key: String,
    what: String,
    part_size: usize,
    buf: Vec<u8>,
    upload: Option<Upload>,
    size: u64,
    done: bool,
}

impl S3File {
    fn upload_part(&mut self) -> Result<(), StorageError> {
        let body = Bytes::from(std::mem::take(&mut self.buf));
        let (client, bucket, key, what) = (
            self.client.clone(),
            self.bucket.clone(),
            self.key.clone(),
            self.what.clone(),
        );
        let upload_id = self.upload.as_ref().map(|u| u.id.clone());
        let number = self.upload.as_ref().map_or(1, |u| u.parts.len() as i32 + 1);
        let (id, part) = self.client.block(async move {
            let what = what.as_str();
            let id = match upload_id {
                Some(id) => id,
                None => {
                    let created = client
                        .send(what, || {
                            client
                                .sdk
                                .create_multipart_upload()
                                .bucket(&*bucket)
                                .key(&key)
                                .send()
                        })
                        .await?;
                    created
                        .upload_id()
                        .ok_or_else(|| StorageError::Unavailable {
                            what: what.to_string(),
                            why: "CreateMultipartUpload returned no upload id".into(),
                        })?
                        .to_string()
                }
            };
            let uploaded = client
                .send(what, || {
                    client
                        .sdk
                        .upload_part()
                        .bucket(&*bucket)
                        .key(&key)
                        .upload_id(&id)
                        .part_number(number)
                        .body(ByteStream::from(body.clone()))
                        .send()
                })
                .await?;
            let part = CompletedPart::builder()
                .set_e_tag(uploaded.e_tag().map(str::to_string))
                .part_number(number)
                .build();
            Ok((id, part))
        })?;
        let upload = self.upload.get_or_insert(Upload {
            id,
            parts: Vec::new(),
        });
        upload.parts.push(part);
        self.buf = Vec::with_capacity(self.part_size);
        Ok(())
    }
}

impl S3File {
    /// Whether the object now stored under the key has the size written; its VersionId.
    fn confirm_size(&self) -> Result<Option<String>, StorageError> {
        let (client, bucket, key, what) = (
            self.client.clone(),
            self.bucket.clone(),
            self.key.clone(),
            self.what.clone(),
        );
        let size = self.size;
        self.client.block(async move {
            let what = what.as_str();
            let head = client
                .send(what, || {
                    client.sdk.head_object().bucket(&*bucket).key(&key).send()
                })
                .await?;
            let stored = head.content_length().unwrap_or(-1);
            if stored != size as i64 {
                return Err(StorageError::Unavailable {
                    what: what.to_string(),
                    why: format!(
                        "multipart upload not confirmed: {stored} bytes stored, {size} written"
                    ),
                });
            }
            Ok(head.version_id().map(str::to_string))
        })
    }
}

impl Write for S3File {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.done {
            return Err(io::Error::other("file already finished"));
        }
        let room = self.part_size - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        self.size += n as u64;
        if self.buf.len() >= self.part_size {
            self.upload_part().map_err(io::Error::other)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl OutputFile for S3File {
    fn finish(mut self: Box<Self>) -> Result<Written, StorageError> {
        if self.upload.is_none() {
            // Smaller than one part: a single PUT.
            let (client, bucket, key, what) = (
                self.client.clone(),
                self.bucket.clone(),
                self.key.clone(),
                self.what.clone(),
            );
            let body = Bytes::from(std::mem::take(&mut self.buf));
            let written = self
                .client
                .block(async move { put_object(&client, &bucket, &key, body, &what).await })?;
            self.done = true;
            return Ok(written);
        }
        if !self.buf.is_empty() {
            self.upload_part()?;
        }
        let Some(upload) = self.upload.take() else {
            unreachable!("checked above")
        };
        let (client, bucket, key, what) = (
            self.client.clone(),
            self.bucket.clone(),
            self.key.clone(),
            self.what.clone(),
        );
        let (id, parts) = (upload.id.clone(), upload.parts.clone());
        let version = self.client.block(async move {
            let what = what.as_str();
            let done = client
                .send(what, || {
                    client
                        .sdk
                        .complete_multipart_upload()
                        .bucket(&*bucket)
                        .key(&key)
                        .upload_id(&id)
                        .multipart_upload(
                            CompletedMultipartUpload::builder()
                                .set_parts(Some(parts.clone()))
                                .build(),
                        )
                        .send()
                })
                .await?;
            Ok(done.version_id().map(str::to_string))
        });
        match version {
            Ok(version) => {
                self.done = true;
                Ok(Written {
                    size: self.size,
                    version,
                })
            }
            // A 200 whose body the SDK cannot parse (some S3-compatible stores name the
            // result element differently): the upload completed if the object is there with
            // our size.
            Err(StorageError::Denied { why, .. }) if why.starts_with("200:") => {
                match self.confirm_size() {
                    Ok(version) => {
                        self.done = true;
                        Ok(Written {
                            size: self.size,
                            version,
                        })
                    }
                    Err(e) => {
                        self.upload = Some(upload); // aborted on drop
                        Err(e)
                    }
                }
            }
            Err(e) => {
                self.upload = Some(upload); // aborted on drop
                Err(e)
            }
        }
    }
}

impl Drop for S3File {
    fn drop(&mut self) {
        // An unfinished upload is aborted so its parts do not linger (and cost) in the bucket.
        if !self.done
            && let Some(upload) = self.upload.take()
        {
            let req = self
                .client
                .sdk
                .abort_multipart_upload()
                .bucket(&*self.bucket)
                .key(&self.key)
                .upload_id(upload.id);
            self.client.handle.spawn(async move {
                if let Err(e) = req.send().await {
                    tracing::warn!(error = %crate::retry::chain(&e), "aborting a multipart upload failed");
                }
            });
        }
    }
}

/// A key as a copy source wants it: percent-encoded, `/` kept.
/// A server-side copy of `src` to `dst` (full keys) in `bucket`.
async fn copy_object(
    client: &S3Client,
    bucket: &str,
    src: &str,
    dst: &str,
    what: &str,
) -> Result<aws_sdk_s3::operation::copy_object::CopyObjectOutput, StorageError> {
    // The copy source is `bucket/key`, URL-encoded.
    let source = format!("{bucket}/{}", encode_key(src));
    client
        .send(what, || {
            client
                .sdk
                .copy_object()
                .bucket(bucket)
                .copy_source(&source)
                .key(dst)
                .send()
        })
        .await
}

fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
