//! S3-compatible servers for tests, and a fault-injecting proxy to put in front of them.
//!
//! - [`S3Server::start_s3s`]: `s3s-fs` (Rust, files on disk, checks SigV4 signatures, so wrong
//!   credentials are refused; no versioning). The main suite uses it.
//! - [`S3Server::start_moto`]: moto in server mode (Python, in memory, any credentials; has
//!   versioning). Used where versions matter.
//!
//! `scripts/test.sh` installs both when missing. Administration (buckets, seeding archives,
//! reading outputs back) goes through `aws-sdk-s3` on a private runtime, so tests stay plain
//! synchronous functions.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};

use crate::servers::{ChildGuard, fast_tempdir, free_port, wait_port};

pub const ACCESS_KEY: &str = "rewindtestkey";
pub const SECRET_KEY: &str = "rewindtestsecret0123456789";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Kind {
    S3sFs,
    Moto,
}

pub struct S3Server {
    pub kind: S3Kind,
    pub port: u16,
    _child: ChildGuard,
    _dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    client: aws_sdk_s3::Client,
}

fn need(bin: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()));
    assert!(
        found,
        "{bin} is not installed: run scripts/test.sh, which installs it"
    );
}

impl S3Server {
    pub fn start_s3s() -> S3Server {
        need("s3s-fs");
        let dir = fast_tempdir();
        let port = free_port();
        let child = std::process::Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting s3s-fs");
        Self::ready(S3Kind::S3sFs, port, ChildGuard(Some(child)), dir)
    }

    pub fn start_moto() -> S3Server {
        need("moto_server");
        let dir = fast_tempdir();
        let port = free_port();
        let child = std::process::Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting moto_server");
        Self::ready(S3Kind::Moto, port, ChildGuard(Some(child)), dir)
    }

    fn ready(kind: S3Kind, port: u16, child: ChildGuard, dir: tempfile::TempDir) -> S3Server {
        assert!(
            wait_port(port, Duration::from_secs(20)),
            "{kind:?} did not listen on {port}"
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let client = client(&format!("http://127.0.0.1:{port}"), ACCESS_KEY, SECRET_KEY);
        S3Server {
            kind,
            port,
            _child: child,
            _dir: dir,
            rt,
            client,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Environment for a process that talks to this server with the standard AWS chain.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        env_for(ACCESS_KEY, SECRET_KEY)
    }

    pub fn create_bucket(&self, bucket: &str, versioned: bool) {
        self.rt.block_on(async {
            self.client
                .create_bucket()
                .bucket(bucket)
                .send()
                .await
                .expect("create bucket");
            if versioned {
                self.client
                    .put_bucket_versioning()
                    .bucket(bucket)
                    .versioning_configuration(
                        VersioningConfiguration::builder()
                            .status(BucketVersioningStatus::Enabled)
                            .build(),
                    )
                    .send()
                    .await
                    .expect("enable versioning");
            }
        });
    }

    pub fn put(&self, bucket: &str, key: &str, body: &[u8]) {
        self.rt.block_on(async {
            self.client
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(ByteStream::from(body.to_vec()))
                .send()
                .await
                .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
        });
    }

    /// Writes many objects, 16 requests at a time.
    pub fn put_many(&self, bucket: &str, objects: impl IntoIterator<Item = (String, Vec<u8>)>) {
        use futures::StreamExt;
        self.rt.block_on(async {
            futures::stream::iter(objects)
                .map(|(key, body)| async move {
                    self.client
                        .put_object()
                        .bucket(bucket)
                        .key(&key)
                        .body(ByteStream::from(body))
                        .send()
                        .await
                        .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
                })
                .buffer_unordered(16)
                .collect::<Vec<()>>()
                .await;
        });
    }

    pub fn delete(&self, bucket: &str, key: &str) {
        self.rt.block_on(async {
            self.client
                .delete_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .unwrap_or_else(|e| panic!("delete {key}: {e:?}"));
        });
    }

    pub fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        self.rt.block_on(async {
            let out = self
                .client
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .ok()?;
            Some(out.body.collect().await.ok()?.into_bytes().to_vec())
        })
    }

    /// Every key under `prefix` with its size, sorted.
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<(String, u64)> {
        self.rt.block_on(async {
            let mut out = Vec::new();
            let mut token = None;
            loop {
                let page = self
                    .client
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(prefix)
                    .set_continuation_token(token)
                    .send()
                    .await
                    .expect("list");
                for o in page.contents() {
                    out.push((
                        o.key().unwrap_or_default().to_string(),
                        o.size().unwrap_or(0) as u64,
                    ));
                }
                token = page.next_continuation_token().map(str::to_string);
                if token.is_none() {
                    break;
                }
            }
            out.sort();
            out
        })
    }

    /// Uploads every file below `dir` as `prefix` + its relative path.
    pub fn upload_dir(&self, bucket: &str, prefix: &str, dir: &Path) -> usize {
        let mut files = Vec::new();
        walk(dir, &mut files);
        for f in &files {
            let rel = f
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            self.put(
                bucket,
                &format!("{prefix}{rel}"),
                &std::fs::read(f).unwrap(),
            );
        }
        files.len()
    }

    /// Downloads everything under `prefix` into `dir` (relative paths kept).
    pub fn download_prefix(&self, bucket: &str, prefix: &str, dir: &Path) -> usize {
        let keys = self.list(bucket, prefix);
        for (key, _) in &keys {
            let path = dir.join(key.strip_prefix(prefix).unwrap_or(key));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, self.get(bucket, key).unwrap()).unwrap();
        }
        keys.len()
    }
}

/// The environment that gives a child process these static credentials (environment
/// credentials come first in the chain; instance metadata is not probed).
pub fn env_for(access_key: &str, secret_key: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", access_key.to_string()),
        ("AWS_SECRET_ACCESS_KEY", secret_key.to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
        ("AWS_CONFIG_FILE", "/nonexistent/rewind-test".to_string()),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/rewind-test".to_string(),
        ),
    ]
}

/// A plain SDK client with static credentials, path-style, for an endpoint.
pub fn client(endpoint: &str, access_key: &str, secret_key: &str) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https(),
        )
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new(access_key, secret_key, None, None, "test"))
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Which requests the proxy breaks: every n-th request gets a 503 SlowDown, every n-th GET
/// whose response has a body over 4 KiB is cut half-way through the body. 0 = never.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    pub slowdown_every: u64,
    pub reset_every: u64,
}

/// What the proxy did.
#[derive(Debug, Default)]
pub struct FaultCounts {
    pub requests: AtomicU64,
    /// HEAD requests among them.
    pub heads: AtomicU64,
    pub slowdowns: AtomicU64,
    pub resets: AtomicU64,
    body_gets: AtomicU64,
}

/// An HTTP/1.1 proxy between a client and an S3 server that injects faults. Each request gets
/// its own upstream connection (`Connection: close`), which keeps the proxy simple.
pub struct FaultProxy {
    pub port: u16,
    pub counts: Arc<FaultCounts>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    pub fn start(upstream: u16, faults: Faults) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let counts = Arc::new(FaultCounts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (counts.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let c = c.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, upstream, faults, &c);
                });
            }
        });
        FaultProxy { port, counts, stop }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn injected(&self) -> u64 {
        self.counts.slowdowns.load(Ordering::Relaxed) + self.counts.resets.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Reads up to the end of an HTTP head; returns (head, bytes read past it).
fn read_head(s: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return Ok((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

fn serve(
    mut client: TcpStream,
    upstream: u16,
    faults: Faults,
    counts: &FaultCounts,
) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(60)))?;
    let (head, early_body) = read_head(&mut client)?;
    let n = counts.requests.fetch_add(1, Ordering::Relaxed) + 1;
    if head.starts_with("HEAD ") {
        counts.heads.fetch_add(1, Ordering::Relaxed);
    }
    if faults.slowdown_every > 0 && n.is_multiple_of(faults.slowdown_every) {
        counts.slowdowns.fetch_add(1, Ordering::Relaxed);
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
        let resp = format!(
            "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        client.write_all(resp.as_bytes())?;
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    }
    let is_get = head.starts_with("GET ");
    // Same request, on its own upstream connection.
    let mut lines: Vec<&str> = head
        .trim_end_matches("\r\n")
        .split("\r\n")
        .filter(|l| {
            !l.to_ascii_lowercase().starts_with("connection:")
                && !l.to_ascii_lowercase().starts_with("keep-alive:")
        })
        .collect();
    lines.push("Connection: close");
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    up.write_all(format!("{}\r\n\r\n", lines.join("\r\n")).as_bytes())?;
    up.write_all(&early_body)?;
    let mut body_left = header(&head, "content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0)
        .saturating_sub(early_body.len());
    let mut buf = [0u8; 64 * 1024];
    while body_left > 0 {
        let want = body_left.min(buf.len());
        let k = client.read(&mut buf[..want])?;
        if k == 0 {
            break;
        }
        up.write_all(&buf[..k])?;
        body_left -= k;
    }
    let (resp_head, resp_early) = read_head(&mut up)?;
    let length = header(&resp_head, "content-length").and_then(|v| v.parse::<usize>().ok());
    let cut = match length {
        Some(len) if is_get && len > 4096 && resp_head.starts_with("HTTP/1.1 2") => {
            let m = counts.body_gets.fetch_add(1, Ordering::Relaxed) + 1;
            (faults.reset_every > 0 && m.is_multiple_of(faults.reset_every)).then_some(len / 2)
        }
        _ => None,
    };
    client.write_all(resp_head.as_bytes())?;
    let mut sent = 0usize;
    let mut forward = |data: &[u8], client: &mut TcpStream| -> std::io::Result<bool> {
        let take = match cut {
            Some(limit) => data.len().min(limit.saturating_sub(sent)),
            None => data.len(),
        };
        client.write_all(&data[..take])?;
        sent += take;
        Ok(cut.is_some_and(|limit| sent >= limit))
    };
    let mut done = forward(&resp_early, &mut client)?;
    while !done {
        let k = up.read(&mut buf)?;
        if k == 0 {
            break;
        }
        done = forward(&buf[..k], &mut client)?;
    }
    if cut.is_some() {
        counts.resets.fetch_add(1, Ordering::Relaxed);
    }
    let _ = client.shutdown(Shutdown::Both);
    Ok(())
}
