//! Azurite, the Azure Storage emulator (`npm install azurite`), for tests: started on a free
//! loopback port with its data in a temporary directory. `scripts/test.sh` installs it under
//! `~/.cache/rewind-tools/azurite` (or set `REWIND_AZURITE` to an `azurite-blob` binary).
//! Containers are created with a Shared Key-signed REST call (the emulator's well-known account
//! and key); blobs are seeded and read back through `object_store`, like Rewind itself.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures::StreamExt;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::servers::{ChildGuard, fast_tempdir, free_port, wait_port};

/// The emulator's well-known development account and key (public, documented by Microsoft).
pub const ACCOUNT: &str = "devstoreaccount1";
pub const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

pub struct Azurite {
    pub port: u16,
    _child: ChildGuard,
    _dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
}

fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("REWIND_AZURITE") {
        return p.into();
    }
    let cached = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
        .join(".cache/rewind-tools/azurite/node_modules/.bin/azurite-blob");
    if cached.is_file() {
        return cached;
    }
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("azurite-blob"))
            .find(|f| f.is_file())
    });
    on_path.expect("azurite-blob is not installed: run scripts/test.sh, which installs it")
}

impl Azurite {
    pub fn start() -> Azurite {
        let dir = fast_tempdir();
        let port = free_port();
        let child = std::process::Command::new(binary())
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(dir.path())
            .args(["--silent", "--skipApiVersionCheck"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting azurite-blob");
        assert!(
            wait_port(port, Duration::from_secs(30)),
            "azurite did not listen on {port}"
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        Azurite {
            port,
            _child: ChildGuard(Some(child)),
            _dir: dir,
            rt,
        }
    }

    /// The blob service's URL (path-style: the account is the first path segment).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Environment for a process that talks to this emulator (object_store's variables).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_STORAGE_USE_EMULATOR", "true".into()),
            ("AZURITE_BLOB_STORAGE_URL", self.url()),
            ("AZURE_STORAGE_ACCOUNT_NAME", ACCOUNT.into()),
            ("AZURE_STORAGE_ACCOUNT_KEY", ACCOUNT_KEY.into()),
        ]
    }

    /// Creates a container (Create Container, signed with the account's Shared Key).
    pub fn create_container(&self, name: &str) {
        let date = chrono::Utc::now()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let version = "2021-08-06";
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{ACCOUNT}/{ACCOUNT}/{name}\nrestype:container"
        );
        let key = base64::engine::general_purpose::STANDARD
            .decode(ACCOUNT_KEY)
            .unwrap();
        let mac = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
            to_sign.as_bytes(),
        );
        let signature = base64::engine::general_purpose::STANDARD.encode(mac.as_ref());
        let request = format!(
            "PUT /{ACCOUNT}/{name}?restype=container HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\
             x-ms-date: {date}\r\nx-ms-version: {version}\r\n\
             Authorization: SharedKey {ACCOUNT}:{signature}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n",
            self.port
        );
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        let status = answer.lines().next().unwrap_or_default().to_string();
        assert!(
            status.contains(" 201 ") || status.contains(" 409 "),
            "creating container {name}: {answer}"
        );
    }

    fn store(&self, container: &str) -> Arc<dyn ObjectStore> {
        Arc::new(
            MicrosoftAzureBuilder::new()
                .with_endpoint(format!("{}/{ACCOUNT}", self.url()))
                .with_account(ACCOUNT)
                .with_access_key(ACCOUNT_KEY)
                .with_container_name(container)
                .with_allow_http(true)
                .build()
                .unwrap(),
        )
    }

    /// Uploads every file below `dir` to `container` under `prefix` (keys are paths relative to
    /// `dir`); how many.
    pub fn upload_dir(&self, dir: &Path, container: &str, prefix: &str) -> usize {
        let store = self.store(container);
        let files = crate::files_below(dir);
        self.rt.block_on(async {
            for f in &files {
                let rel = f
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                let key = object_store::path::Path::from(format!("{prefix}{rel}"));
                store
                    .put(&key, std::fs::read(f).unwrap().into())
                    .await
                    .unwrap();
            }
        });
        files.len()
    }

    /// Every blob of `container` under `prefix` (key relative to it, size).
    pub fn list(&self, container: &str, prefix: &str) -> Vec<(String, u64)> {
        let store = self.store(container);
        self.rt.block_on(async {
            let mut out = Vec::new();
            let mut s = store.list(None);
            while let Some(m) = s.next().await {
                let m = m.unwrap();
                let key = m.location.to_string();
                if let Some(rel) = key.strip_prefix(prefix) {
                    out.push((rel.to_string(), m.size));
                }
            }
            out.sort();
            out
        })
    }

    /// Downloads every blob under `prefix` into `dir` (keys relative to the prefix); how many.
    pub fn download_prefix(&self, container: &str, prefix: &str, dir: &Path) -> usize {
        let store = self.store(container);
        let blobs = self.list(container, prefix);
        self.rt.block_on(async {
            for (rel, _) in &blobs {
                let key = object_store::path::Path::from(format!("{prefix}{rel}"));
                let bytes = store.get(&key).await.unwrap().bytes().await.unwrap();
                let target = dir.join(rel);
                std::fs::create_dir_all(target.parent().unwrap()).unwrap();
                std::fs::write(target, bytes).unwrap();
            }
        });
        blobs.len()
    }
}
