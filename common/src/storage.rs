//! Object access: reading archive objects ([`ObjectSource`]) and writing outputs
//! ([`OutputStore`]), with the local-directory implementations. The S3 implementations come
//! behind the same traits, so everything above them is shared.
//!
//! The traits are synchronous on purpose: the pipeline that uses them is CPU-bound and runs on
//! a blocking thread; an async store bridges into it (see `docs/architecture.md`).

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use serde::{Deserialize, Serialize};

/// One stored object, as listed. A job pins the objects it reads by their listing: `etag` and
/// `version` say which content was listed, and [`ObjectSource::open`] reads exactly that.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    /// Key relative to the store's root, `/`-separated.
    pub key: String,
    pub size: u64,
    /// The object's content tag: the S3 ETag, or for a local file its modification time and size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The S3 VersionId, in a versioned bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl ObjectMeta {
    pub fn new(key: impl Into<String>, size: u64) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size,
            etag: None,
            version: None,
        }
    }
}

/// Counters of the remote calls a store retried, shared by the stores of one shard attempt (see
/// [`ObjectSource::with_stats`]) so the attempt's summary counts its own retries.
#[derive(Debug, Default)]
pub struct IoStats {
    /// Requests retried after a transient failure (throttling, 5xx, timeout, reset).
    pub retries: AtomicU64,
    /// Object bodies resumed with a ranged GET after the connection dropped mid-body.
    pub resumed: AtomicU64,
}

/// A finished output object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub size: u64,
    /// The VersionId the store gave it, in a versioned bucket.
    pub version: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{what}: not found")]
    NotFound { what: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("invalid key {key:?}: {why}")]
    InvalidKey { key: String, why: &'static str },
    /// The object is not the one that was planned (overwritten, or a different version).
    #[error("{what}: changed since the job was planned: {why}")]
    Changed { what: String, why: String },
    /// Access denied, bad or expired credentials, missing bucket: retrying cannot help.
    #[error("{what}: {why}")]
    Denied { what: String, why: String },
    /// The location holds something the request cannot use as asked (a Delta table of another
    /// layout): a bad request, not a fault of the store.
    #[error("{what}: {why}")]
    Unfit { what: String, why: String },
    /// Throttling, 5xx, timeouts and resets that outlasted the retries.
    #[error("{what}: {why}")]
    Unavailable { what: String, why: String },
}

impl StorageError {
    pub fn io(what: impl Into<String>, source: io::Error) -> StorageError {
        if source.kind() == io::ErrorKind::NotFound {
            StorageError::NotFound { what: what.into() }
        } else {
            StorageError::Io {
                what: what.into(),
                source,
            }
        }
    }

    /// Whether retrying the same operation may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            StorageError::Io { source, .. } => !matches!(
                source.kind(),
                io::ErrorKind::PermissionDenied | io::ErrorKind::InvalidInput
            ),
            StorageError::Unavailable { .. } => true,
            StorageError::NotFound { .. }
            | StorageError::InvalidKey { .. }
            | StorageError::Changed { .. }
            | StorageError::Unfit { .. }
            | StorageError::Denied { .. } => false,
        }
    }
}

/// A paged listing (`list`: a source's `list_pages`, given where to hand each page) gathered
/// whole, for `list` where pages are the primitive.
pub fn all_pages(
    list: impl FnOnce(
        &mut dyn FnMut(Vec<ObjectMeta>) -> Result<(), StorageError>,
    ) -> Result<(), StorageError>,
) -> Result<Vec<ObjectMeta>, StorageError> {
    let mut out = Vec::new();
    list(&mut |page| {
        out.extend(page);
        Ok(())
    })?;
    Ok(out)
}

/// Where archived objects are read from.
pub trait ObjectSource: Send + Sync {
    /// A human description for messages, e.g. `dir /data/archive`.
    fn describe(&self) -> String;
    /// Every object whose key starts with `prefix`, sorted by key.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError>;
    /// The objects of [`ObjectSource::list`], handed to `each` a page at a time: each page
    /// sorted by key and every key after the previous page's. A caller that groups or packs
    /// them as they come holds a page, not the whole listing (a landing zone or an undated
    /// archive can hold millions of objects). Sources that list in one go hand over one page.
    /// An error from `each` stops the listing and is returned.
    fn list_pages(
        &self,
        prefix: &str,
        each: &mut dyn FnMut(Vec<ObjectMeta>) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        each(self.list(prefix)?)
    }
    /// Streams exactly the object `meta` lists, from its first byte: the same version, or the
    /// same content tag. An object changed or deleted since it was listed is an error
    /// ([`StorageError::Changed`] / [`StorageError::NotFound`]), never other bytes.
    fn open(&self, meta: &ObjectMeta) -> Result<Box<dyn Read + Send>, StorageError>;
    /// How many objects a shard should open ahead of the one it decodes (concurrent GETs).
    fn read_ahead(&self) -> usize {
        0
    }
    /// The same source, counting its retries into `stats`.
    fn with_stats(&self, stats: Arc<IoStats>) -> Arc<dyn ObjectSource>;
}

/// An output being written; invisible to readers of the store until [`OutputFile::finish`].
pub trait OutputFile: Write + Send {
    /// Makes the file visible under its key.
    fn finish(self: Box<Self>) -> Result<Written, StorageError>;
}

/// Where outputs (Parquet files, failed records, manifests) are written.
pub trait OutputStore: Send + Sync {
    fn describe(&self) -> String;
    /// Starts writing `key`.
    fn create(&self, key: &str) -> Result<Box<dyn OutputFile>, StorageError>;
    /// Writes a small object atomically.
    fn put(&self, key: &str, bytes: &[u8]) -> Result<Written, StorageError>;
    /// Reads a small object, `None` when it does not exist.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError>;
    /// Every finished object under `prefix`, sorted by key.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError>;
    /// Deletes `key`; deleting a missing key is not an error.
    fn delete(&self, key: &str) -> Result<(), StorageError>;
    /// Copies the object `from` to `to` (a server-side copy where the store has one), leaving
    /// `from` in place. A missing `from` is `NotFound`.
    fn copy(&self, from: &str, to: &str) -> Result<(), StorageError> {
        let body = self.get(from)?.ok_or_else(|| StorageError::NotFound {
            what: format!("{from} in {}", self.describe()),
        })?;
        self.put(to, &body).map(drop)
    }
    /// Deletes every key of `keys` (missing ones are not an error). S3 batches them into
    /// DeleteObjects requests of up to 1,000 keys; elsewhere one delete each.
    fn delete_many(&self, keys: &[String]) -> Result<(), StorageError> {
        for k in keys {
            self.delete(k)?;
        }
        Ok(())
    }
    /// Makes the finished object `from` visible as `to` and removes `from` (a rename; on S3 a
    /// server-side copy and a delete). Idempotent: with `from` gone and `to` there, it was
    /// promoted already and `to` is described.
    fn promote(&self, from: &str, to: &str) -> Result<Written, StorageError>;
    /// Discards writes under `prefix` that were started and never finished (a worker killed
    /// mid-file leaves them: temporary files, incomplete multipart uploads, invisible to
    /// `list`); returns how many. Only for prefixes nobody should be writing to any more.
    fn sweep_unfinished(&self, prefix: &str) -> Result<u64, StorageError>;
    /// The same store, counting its retries into `stats`.
    fn with_stats(&self, stats: Arc<IoStats>) -> Arc<dyn OutputStore>;
    /// What is stored at `key` now (size, content tag, version); `None` when nothing is.
    fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError>;
    /// `len` bytes of `key` from `start` (fewer at its end): a Parquet footer, a bloom filter.
    fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>, StorageError> {
        let all = self
            .get(key)?
            .ok_or_else(|| StorageError::NotFound { what: key.into() })?;
        let from = (start as usize).min(all.len());
        let to = from.saturating_add(len as usize).min(all.len());
        Ok(all[from..to].to_vec())
    }
    /// Writes a small object only if nothing is at `key` (S3 `If-None-Match: *`, a local
    /// `create_new`): `false` when something was there already. Stores without conditional
    /// writes say so with an error.
    fn put_if_absent(&self, key: &str, _bytes: &[u8]) -> Result<bool, StorageError> {
        Err(StorageError::Denied {
            what: format!("{key} in {}", self.describe()),
            why: "the store has no conditional writes".into(),
        })
    }
    /// Whether the store keeps every version of an object (an S3 bucket with versioning on).
    fn versioned(&self) -> Result<bool, StorageError> {
        Ok(false)
    }
    /// Deletes `key` like [`OutputStore::delete`]; in a versioned store, returns the version id
    /// of the delete marker it left (deleting that version undoes the delete).
    fn remove(&self, key: &str) -> Result<Option<String>, StorageError> {
        self.delete(key).map(|()| None)
    }
    /// Versioned stores: the versions of exactly `key`, newest first, delete markers included.
    fn versions(&self, key: &str) -> Result<Vec<StoredVersion>, StorageError> {
        Err(unversioned(self.describe(), key))
    }
    /// Versioned stores: makes `version` of `key` the current content again, by a server-side
    /// copy of that version (a new version; nothing is downloaded).
    fn restore_version(&self, key: &str, _version: &str) -> Result<Written, StorageError> {
        Err(unversioned(self.describe(), key))
    }
    /// Versioned stores: deletes one version of `key` for good (a delete marker's: the delete
    /// is undone).
    fn delete_version(&self, key: &str, _version: &str) -> Result<(), StorageError> {
        Err(unversioned(self.describe(), key))
    }
    /// The table whose root is this store's root (a Delta table), when the destination is one:
    /// its data files are what its log says, and changes to them are commits of the log.
    fn table(&self) -> Option<Arc<dyn crate::table::TableLog>> {
        None
    }
}

/// One version of an object in a versioned store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredVersion {
    pub version: String,
    /// A delete marker (the object was deleted while this version was current).
    pub delete_marker: bool,
    pub size: u64,
    pub etag: Option<String>,
}

fn unversioned(store: String, key: &str) -> StorageError {
    StorageError::Denied {
        what: format!("{key} in {store}"),
        why: "the store does not keep object versions".into(),
    }
}

/// A dataset's Parquet files: `*.parquet` below the root, outside `_`- and `.`-named
/// directories and files (Hive and Spark conventions: `_SUCCESS`, `_rewind/`, `_delta_log/`);
/// for a table destination, the files its log has.
pub fn dataset_files(store: &dyn OutputStore) -> Result<Vec<ObjectMeta>, StorageError> {
    if let Some(t) = store.table() {
        return Ok(t
            .files()?
            .into_values()
            .map(|f| ObjectMeta::new(f.key, f.size))
            .collect());
    }
    parquet_files(store)
}

/// The Parquet files below a store's root, outside `_`- and `.`-named directories and files
/// (Hive and Spark conventions: `_SUCCESS`, `_rewind/`, `_delta_log/`), whatever its log says.
pub fn parquet_files(store: &dyn OutputStore) -> Result<Vec<ObjectMeta>, StorageError> {
    Ok(store
        .list("")?
        .into_iter()
        .filter(|o| {
            o.key.ends_with(".parquet")
                && o.key
                    .split('/')
                    .all(|seg| !seg.starts_with('_') && !seg.starts_with('.'))
        })
        .collect())
}

/// Checks that a key stays below the root: relative, `/`-separated, no `.`/`..`/empty segment.
pub fn check_key(key: &str) -> Result<(), StorageError> {
    let bad = |why| {
        Err(StorageError::InvalidKey {
            key: key.to_string(),
            why,
        })
    };
    if key.starts_with('/') || key.contains('\\') || key.contains('\0') {
        return bad("must be relative, with '/' separators");
    }
    let trimmed = key.strip_suffix('/').unwrap_or(key);
    if !trimmed.is_empty()
        && trimmed
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return bad("must not contain empty, '.' or '..' segments");
    }
    Ok(())
}

fn join(root: &Path, key: &str) -> Result<PathBuf, StorageError> {
    check_key(key)?;
    // The key never climbs out of the root (the root itself may be `../archive`).
    debug_assert!(
        Path::new(key)
            .components()
            .all(|c| !matches!(c, Component::ParentDir))
    );
    Ok(root.join(key))
}

/// Hands the regular files below `dir` (recursively) to `each` in key order, as keys relative
/// to `root`. A directory's entries are visited sorted as their keys sort (a subdirectory as its
/// name and '/'), so the walk needs no sort of the whole listing and holds one directory's
/// names at a time.
fn walk(
    root: &Path,
    dir: &Path,
    each: &mut dyn FnMut(ObjectMeta) -> Result<(), StorageError>,
) -> Result<(), WalkError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut sorted = Vec::new();
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            // Object keys are UTF-8; never skip such a file silently.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} has a name that is not valid UTF-8", path.display()),
            )
            .into());
        };
        let file_type = match entry.file_type() {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        if file_type.is_dir() {
            sorted.push((name + "/", path, true));
        } else if file_type.is_file() || (file_type.is_symlink() && path.is_file()) {
            sorted.push((name, path, false));
        }
    }
    sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (_, path, is_dir) in sorted {
        if is_dir {
            walk(root, &path, each)?;
            continue;
        }
        let rel = path.strip_prefix(root).unwrap_or(&path);
        let key = rel
            .components()
            .filter_map(|c| c.as_os_str().to_str())
            .collect::<Vec<_>>()
            .join("/");
        // A file removed between the directory read and now (a temporary file renamed or
        // linked into place by a concurrent writer) is simply not listed.
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        each(ObjectMeta {
            key,
            size: meta.len(),
            etag: Some(local_tag(&meta)),
            version: None,
        })
        .map_err(WalkError::Caller)?;
    }
    Ok(())
}

/// Why a walk stopped: the file system, or the caller.
enum WalkError {
    Io(io::Error),
    Caller(StorageError),
}

impl From<io::Error> for WalkError {
    fn from(e: io::Error) -> Self {
        WalkError::Io(e)
    }
}

/// A local file's content tag: modification time (ns) and size. A rewrite in place changes it.
fn local_tag(meta: &fs::Metadata) -> String {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("{mtime:x}-{:x}", meta.len())
}

fn list_dir(root: &Path, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
    let mut out = Vec::new();
    walk_prefix(root, prefix, &mut |o| {
        out.push(o);
        Ok(())
    })?;
    Ok(out)
}

/// The files whose keys start with `prefix`, handed to `each` in key order.
fn walk_prefix(
    root: &Path,
    prefix: &str,
    each: &mut dyn FnMut(ObjectMeta) -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    check_key(prefix)?;
    // Walk the deepest directory the prefix names, then filter on the full prefix.
    let dir_part = match prefix.rfind('/') {
        Some(i) => &prefix[..i],
        None => "",
    };
    let filtered = &mut |o: ObjectMeta| {
        if o.key.starts_with(prefix) {
            each(o)
        } else {
            Ok(())
        }
    };
    walk(root, &root.join(dir_part), filtered).map_err(|e| match e {
        WalkError::Io(e) => StorageError::io(format!("listing {}/{prefix}", root.display()), e),
        WalkError::Caller(e) => e,
    })
}

/// Objects a local listing hands over per page.
const LOCAL_PAGE: usize = 1_000;

/// An archive laid out in a local directory.
#[derive(Debug, Clone)]
pub struct LocalSource {
    root: PathBuf,
}

impl LocalSource {
    /// Fails when `root` is not an existing directory.
    pub fn new(root: impl Into<PathBuf>) -> io::Result<LocalSource> {
        let root = root.into();
        if !root.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is not a directory", root.display()),
            ));
        }
        Ok(LocalSource { root })
    }
}

impl ObjectSource for LocalSource {
    fn describe(&self) -> String {
        format!("dir {}", self.root.display())
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        list_dir(&self.root, prefix)
    }

    fn list_pages(
        &self,
        prefix: &str,
        each: &mut dyn FnMut(Vec<ObjectMeta>) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let mut page = Vec::new();
        walk_prefix(&self.root, prefix, &mut |o| {
            page.push(o);
            if page.len() >= LOCAL_PAGE {
                each(std::mem::take(&mut page))?;
            }
            Ok(())
        })?;
        if page.is_empty() {
            return Ok(());
        }
        each(page)
    }

    fn open(&self, meta: &ObjectMeta) -> Result<Box<dyn Read + Send>, StorageError> {
        let path = join(&self.root, &meta.key)?;
        let what = || path.display().to_string();
        let file = fs::File::open(&path).map_err(|e| StorageError::io(what(), e))?;
        if let Some(planned) = &meta.etag {
            let now = file.metadata().map_err(|e| StorageError::io(what(), e))?;
            let tag = local_tag(&now);
            if &tag != planned {
                return Err(StorageError::Changed {
                    what: what(),
                    why: format!(
                        "planned {} bytes (tag {planned}), now {} bytes (tag {tag})",
                        meta.size,
                        now.len()
                    ),
                });
            }
        }
        Ok(Box::new(file))
    }

    fn with_stats(&self, _stats: Arc<IoStats>) -> Arc<dyn ObjectSource> {
        Arc::new(self.clone())
    }
}

/// Outputs written below a local directory. Files are written under a hidden temporary name in
/// the same directory and renamed into place when finished, so readers never see partial files.
#[derive(Debug, Clone)]
pub struct LocalOutput {
    root: PathBuf,
}

impl LocalOutput {
    pub fn new(root: impl Into<PathBuf>) -> LocalOutput {
        LocalOutput { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

struct LocalFile {
    tmp: PathBuf,
    path: PathBuf,
    file: Option<io::BufWriter<fs::File>>,
}

impl LocalFile {
    fn writer(&mut self) -> io::Result<&mut io::BufWriter<fs::File>> {
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("file already finished"))
    }
}

impl Write for LocalFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer()?.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.writer()?.flush()
    }
}

impl OutputFile for LocalFile {
    fn finish(mut self: Box<Self>) -> Result<Written, StorageError> {
        let path = self.path.clone();
        let what = || path.display().to_string();
        let file = self.writer().map_err(|e| StorageError::io(what(), e))?;
        file.flush().map_err(|e| StorageError::io(what(), e))?;
        let file = file.get_ref();
        file.sync_data().map_err(|e| StorageError::io(what(), e))?;
        let size = file
            .metadata()
            .map_err(|e| StorageError::io(what(), e))?
            .len();
        fs::rename(&self.tmp, &path).map_err(|e| StorageError::io(what(), e))?;
        self.file = None;
        Ok(Written {
            size,
            version: None,
        })
    }
}

impl Drop for LocalFile {
    fn drop(&mut self) {
        // Unfinished (dropped) files leave nothing behind.
        if self.file.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

fn temp_path(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    path.with_file_name(format!(
        ".{name}.{}-{}.tmp",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

impl OutputStore for LocalOutput {
    fn describe(&self) -> String {
        format!("dir {}", self.root.display())
    }

    fn create(&self, key: &str) -> Result<Box<dyn OutputFile>, StorageError> {
        let path = join(&self.root, key)?;
        let what = || path.display().to_string();
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| StorageError::io(what(), e))?;
        }
        let tmp = temp_path(&path);
        let file = fs::File::create(&tmp).map_err(|e| StorageError::io(what(), e))?;
        Ok(Box::new(LocalFile {
            tmp,
            path,
            file: Some(io::BufWriter::with_capacity(1 << 20, file)),
        }))
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<Written, StorageError> {
        let mut file = self.create(key)?;
        file.write_all(bytes)
            .map_err(|e| StorageError::io(key.to_string(), e))?;
        file.finish()
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let path = join(&self.root, key)?;
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::io(path.display().to_string(), e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        let mut out = list_dir(&self.root, prefix)?;
        // Unfinished temporary files are not objects yet.
        out.retain(|o| !o.key.rsplit('/').next().unwrap_or("").starts_with('.'));
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = join(&self.root, key)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::io(path.display().to_string(), e)),
        }
    }

    fn copy(&self, from: &str, to: &str) -> Result<(), StorageError> {
        let (src, dst) = (join(&self.root, from)?, join(&self.root, to)?);
        let what = || format!("copying {from} to {to} in {}", self.root.display());
        if !src.is_file() {
            return Err(StorageError::NotFound { what: what() });
        }
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent).map_err(|e| StorageError::io(what(), e))?;
        }
        // Through a temporary name, so `to` is never seen half copied.
        let tmp = dst.with_file_name(format!(
            ".{}.{}.tmp",
            dst.file_name().and_then(|n| n.to_str()).unwrap_or("copy"),
            std::process::id()
        ));
        fs::copy(&src, &tmp).map_err(|e| StorageError::io(what(), e))?;
        fs::rename(&tmp, &dst).map_err(|e| StorageError::io(what(), e))
    }

    fn promote(&self, from: &str, to: &str) -> Result<Written, StorageError> {
        let (src, dst) = (join(&self.root, from)?, join(&self.root, to)?);
        let what = || format!("promoting {from} to {to} in {}", self.root.display());
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent).map_err(|e| StorageError::io(what(), e))?;
        }
        match fs::rename(&src, &dst) {
            Ok(()) => {
                // Directories the staged name left empty go too (best effort; S3 has none).
                let mut dir = src.parent();
                while let Some(d) = dir.filter(|d| d.starts_with(&self.root) && *d != self.root) {
                    if fs::remove_dir(d).is_err() {
                        break;
                    }
                    dir = d.parent();
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && dst.is_file() => {}
            Err(e) => return Err(StorageError::io(what(), e)),
        }
        let size = fs::metadata(&dst)
            .map_err(|e| StorageError::io(what(), e))?
            .len();
        Ok(Written {
            size,
            version: None,
        })
    }

    fn sweep_unfinished(&self, prefix: &str) -> Result<u64, StorageError> {
        let mut n = 0;
        for o in list_dir(&self.root, prefix)? {
            let name = o.key.rsplit('/').next().unwrap_or("");
            if name.starts_with('.') && name.ends_with(".tmp") {
                self.delete(&o.key)?;
                n += 1;
            }
        }
        Ok(n)
    }

    fn with_stats(&self, _stats: Arc<IoStats>) -> Arc<dyn OutputStore> {
        Arc::new(self.clone())
    }

    fn put_if_absent(&self, key: &str, bytes: &[u8]) -> Result<bool, StorageError> {
        let path = join(&self.root, key)?;
        let what = || path.display().to_string();
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| StorageError::io(what(), e))?;
        }
        // Written whole under a temporary name, then linked: the link fails when the key exists,
        // and a reader never sees a half-written object.
        let tmp = temp_path(&path);
        fs::write(&tmp, bytes).map_err(|e| StorageError::io(what(), e))?;
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(StorageError::io(what(), e)),
        }
    }

    fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>, StorageError> {
        use std::io::Seek;
        let path = join(&self.root, key)?;
        let what = || path.display().to_string();
        let mut f = fs::File::open(&path).map_err(|e| StorageError::io(what(), e))?;
        f.seek(io::SeekFrom::Start(start))
            .map_err(|e| StorageError::io(what(), e))?;
        let mut out = Vec::with_capacity(len.min(64 << 20) as usize);
        f.take(len)
            .read_to_end(&mut out)
            .map_err(|e| StorageError::io(what(), e))?;
        Ok(out)
    }

    fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let path = join(&self.root, key)?;
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: meta.len(),
                etag: Some(local_tag(&meta)),
                version: None,
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::io(path.display().to_string(), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A local listing walks directories in key order ('-' and '.' sort before '/', a
    /// directory's keys before a longer sibling's), and its pages, 1,000 objects each, are the
    /// listing cut in order; an error from the caller stops the walk.
    #[test]
    fn local_listings_come_in_key_order_and_in_pages() {
        let dir = tempfile::tempdir().unwrap();
        let mut names = vec![
            "h/a-b", "h/a/x", "h/a.c", "h/a/y/z", "h/ab", "h/a0", "h/a/y-", "g/x", "h0",
        ];
        let many: Vec<String> = (0..1_500).map(|i| format!("h/m/{i}")).collect();
        names.extend(many.iter().map(String::as_str));
        for name in &names {
            let path = dir.path().join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, name).unwrap();
        }
        let source = LocalSource::new(dir.path()).unwrap();
        let listed = source.list("h/").unwrap();
        let mut expected: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| n.starts_with("h/"))
            .collect();
        expected.sort_unstable();
        let keys: Vec<&str> = listed.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, expected);
        assert_eq!(
            &keys[..7],
            [
                "h/a-b", "h/a.c", "h/a/x", "h/a/y-", "h/a/y/z", "h/a0", "h/ab"
            ]
        );

        let mut pages = Vec::new();
        source
            .list_pages("h/", &mut |page| {
                pages.push(page);
                Ok(())
            })
            .unwrap();
        assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [1_000, 507]);
        assert_eq!(pages.concat(), listed);

        let err = source
            .list_pages("h/", &mut |_| {
                Err(StorageError::Unavailable {
                    what: "the caller".into(),
                    why: "stop here".into(),
                })
            })
            .unwrap_err();
        assert!(err.to_string().contains("stop here"), "{err}");
        let mut none = 0;
        source
            .list_pages("nothing/", &mut |_| {
                none += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(none, 0, "no page for an empty listing");
    }

    #[test]
    fn keys_cannot_escape_the_root() {
        for bad in ["/etc/passwd", "a/../../b", "..", "a//b", "a\\b", "./a"] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
        for good in ["", "a", "a/b/", "main_stream/2024/04/01/00/"] {
            assert!(check_key(good).is_ok(), "{good}");
        }
    }

    /// A listing while other writers link temporary files into place (a Delta log's commits)
    /// never fails for a file that vanished under it.
    #[test]
    fn listing_survives_concurrent_conditional_writes() {
        let dir = tempfile::tempdir().unwrap();
        let out = Arc::new(LocalOutput::new(dir.path()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..3)
            .map(|w| {
                let (out, stop) = (out.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut n = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 800 {
                        out.put_if_absent(&format!("log/{w}-{n}.json"), b"{}")
                            .unwrap();
                        n += 1;
                    }
                })
            })
            .collect();
        for _ in 0..200 {
            out.list("log/").expect("a listing during writes");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
    }

    #[test]
    fn local_directories_pass_the_storage_contract() {
        let dir = tempfile::tempdir().unwrap();
        let source = LocalSource::new(dir.path()).unwrap();
        let output = LocalOutput::new(dir.path());
        crate::storage_contract::run_all(&crate::storage_contract::Backend {
            source: &source,
            output: &output,
            part_size: 1 << 20,
            versioned: false,
            lists_unfinished: true,
        });
        // Unfinished local files are hidden temporaries that vanish when dropped.
        let g = output.create("x/y/part-2.parquet").unwrap();
        assert!(output.list("x/").unwrap().is_empty());
        drop(g);
        assert!(
            !dir.path().join("x/y").exists()
                || fs::read_dir(dir.path().join("x/y")).unwrap().count() == 0
        );
    }

    #[test]
    fn local_source_lists_a_prefix_sorted() {
        let dir = tempfile::tempdir().unwrap();
        for k in [
            "p/2024/01/01/01/b",
            "p/2024/01/01/01/a",
            "p/2024/01/01/02/c",
            "p/other",
        ] {
            let path = dir.path().join(k);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, k).unwrap();
        }
        let src = LocalSource::new(dir.path()).unwrap();
        let keys: Vec<_> = src
            .list("p/2024/01/01/01/")
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(keys, vec!["p/2024/01/01/01/a", "p/2024/01/01/01/b"]);
        assert!(src.list("p/2024/01/01/03/").unwrap().is_empty());
        let mut body = String::new();
        src.open(&ObjectMeta::new("p/other", 7))
            .unwrap()
            .read_to_string(&mut body)
            .unwrap();
        assert_eq!(body, "p/other");
        assert!(matches!(
            src.open(&ObjectMeta::new("p/missing", 0)),
            Err(StorageError::NotFound { .. })
        ));
        assert!(src.open(&ObjectMeta::new("../etc/passwd", 0)).is_err());
    }
}
