//! Object access: reading archive objects ([`ObjectSource`]) and writing outputs
//! ([`OutputStore`]), with the local-directory implementations. The S3 implementations come
//! behind the same traits, so everything above them is shared.
//!
//! The traits are synchronous on purpose: the pipeline that uses them is CPU-bound and runs on
//! a blocking thread; an async store bridges into it (see `docs/architecture.md`).

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

/// One stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Key relative to the store's root, `/`-separated.
    pub key: String,
    pub size: u64,
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
            StorageError::NotFound { .. } | StorageError::InvalidKey { .. } => false,
        }
    }
}

/// Where archived objects are read from.
pub trait ObjectSource: Send + Sync {
    /// A human description for messages, e.g. `dir /data/archive`.
    fn describe(&self) -> String;
    /// Every object whose key starts with `prefix`, sorted by key.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError>;
    /// Streams one object from its first byte.
    fn open(&self, key: &str) -> Result<Box<dyn Read + Send>, StorageError>;
}

/// An output being written; invisible to readers of the store until [`OutputFile::finish`].
pub trait OutputFile: Write + Send {
    /// Makes the file visible under its key; returns its size in bytes.
    fn finish(self: Box<Self>) -> Result<u64, StorageError>;
}

/// Where outputs (Parquet files, failed records, manifests) are written.
pub trait OutputStore: Send + Sync {
    fn describe(&self) -> String;
    /// Starts writing `key`.
    fn create(&self, key: &str) -> Result<Box<dyn OutputFile>, StorageError>;
    /// Writes a small object atomically.
    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), StorageError>;
    /// Reads a small object, `None` when it does not exist.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError>;
    /// Every finished object under `prefix`, sorted by key.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError>;
    /// Deletes `key`; deleting a missing key is not an error.
    fn delete(&self, key: &str) -> Result<(), StorageError>;
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
    let path = root.join(key);
    debug_assert!(
        path.components()
            .all(|c| !matches!(c, Component::ParentDir))
    );
    Ok(path)
}

/// Lists regular files below `dir` (recursively), as keys relative to `root`.
fn walk(root: &Path, dir: &Path, out: &mut Vec<ObjectMeta>) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        if entry.file_name().to_str().is_none() {
            // Object keys are UTF-8; never skip such a file silently.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} has a name that is not valid UTF-8", path.display()),
            ));
        }
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            walk(root, &path, out)?;
        } else if file_type.is_file() || (file_type.is_symlink() && path.is_file()) {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let key = rel
                .components()
                .filter_map(|c| c.as_os_str().to_str())
                .collect::<Vec<_>>()
                .join("/");
            out.push(ObjectMeta {
                key,
                size: entry.metadata()?.len(),
            });
        }
    }
    Ok(())
}

fn list_dir(root: &Path, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
    check_key(prefix)?;
    // Walk the deepest directory the prefix names, then filter on the full prefix.
    let dir_part = match prefix.rfind('/') {
        Some(i) => &prefix[..i],
        None => "",
    };
    let mut out = Vec::new();
    walk(root, &root.join(dir_part), &mut out)
        .map_err(|e| StorageError::io(format!("listing {}/{prefix}", root.display()), e))?;
    out.retain(|o| o.key.starts_with(prefix));
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

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

    fn open(&self, key: &str) -> Result<Box<dyn Read + Send>, StorageError> {
        let path = join(&self.root, key)?;
        let file =
            fs::File::open(&path).map_err(|e| StorageError::io(path.display().to_string(), e))?;
        Ok(Box::new(file))
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
    fn finish(mut self: Box<Self>) -> Result<u64, StorageError> {
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
        Ok(size)
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

    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), StorageError> {
        let mut file = self.create(key)?;
        file.write_all(bytes)
            .map_err(|e| StorageError::io(key.to_string(), e))?;
        file.finish().map(|_| ())
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape_the_root() {
        for bad in ["/etc/passwd", "a/../../b", "..", "a//b", "a\\b", "./a"] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
        for good in ["", "a", "a/b/", "main_stream/2024/04/01/00/"] {
            assert!(check_key(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn local_output_is_atomic_and_listable() {
        let dir = tempfile::tempdir().unwrap();
        let out = LocalOutput::new(dir.path());
        let mut f = out.create("x/y/part-1.parquet").unwrap();
        f.write_all(b"hello").unwrap();
        assert!(out.list("x/").unwrap().is_empty(), "visible before finish");
        assert_eq!(f.finish().unwrap(), 5);
        let listed = out.list("x/").unwrap();
        assert_eq!(
            listed,
            vec![ObjectMeta {
                key: "x/y/part-1.parquet".into(),
                size: 5
            }]
        );
        // An abandoned file leaves nothing.
        let g = out.create("x/y/part-2.parquet").unwrap();
        drop(g);
        assert_eq!(out.list("").unwrap().len(), 1);
        assert_eq!(fs::read_dir(dir.path().join("x/y")).unwrap().count(), 1);
        out.delete("x/y/part-1.parquet").unwrap();
        out.delete("x/y/part-1.parquet").unwrap();
        assert!(out.list("x/").unwrap().is_empty());
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
        src.open("p/other")
            .unwrap()
            .read_to_string(&mut body)
            .unwrap();
        assert_eq!(body, "p/other");
        assert!(matches!(
            src.open("p/missing"),
            Err(StorageError::NotFound { .. })
        ));
        assert!(src.open("../etc/passwd").is_err());
    }
}
