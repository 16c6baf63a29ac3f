//! Google Cloud Storage for the tests: `gcp-storage-emulator` (Python, pip; in memory) on a free
//! loopback port, serving GCS's JSON API. Buckets are created, archives uploaded and outputs
//! read back with Python's standard library speaking that API directly, a client independent of
//! Rewind's.
//!
//! The emulator ignores two things GCS does and Rewind relies on: a read of a given generation
//! (`generation=G`; it serves the live object) and the write precondition `ifGenerationMatch=0`
//! (create only if absent). Rewind reaches it through a small proxy of this module that
//! answers those as GCS documents them — 404 for a generation that is not the live one (an
//! unversioned bucket keeps no other), 412 for a create of an object that exists — from the
//! emulator's own metadata, and forwards everything else. What no test here shows: pagination
//! (the emulator returns every object in one page) and authentication (it takes any request;
//! Rewind sends none when `STORAGE_EMULATOR_HOST` is set).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::proxy::Message;
use crate::servers::{ChildGuard, free_port, wait_port};

/// A running emulator, and the proxy that gives it GCS's preconditions.
pub struct GcsEmulator {
    port: u16,
    proxy: u16,
    _child: ChildGuard,
}

const PRELUDE: &str = r#"
import json, os, sys, urllib.request, urllib.parse
BASE = sys.argv[1]
def call(method, path, body=None, ctype="application/octet-stream"):
    req = urllib.request.Request(BASE + path, data=body, method=method)
    if body is not None:
        req.add_header("content-type", ctype)
    with urllib.request.urlopen(req) as r:
        return r.read()
def q(s):
    return urllib.parse.quote(s, safe="")
def names(bucket, prefix):
    got = json.loads(call("GET", "/storage/v1/b/%s/o?prefix=%s" % (q(bucket), q(prefix))))
    return [(i["name"], int(i["size"])) for i in got.get("items", [])]
"#;

impl GcsEmulator {
    pub fn start() -> GcsEmulator {
        let port = free_port();
        let child = Command::new("gcp-storage-emulator")
            .args([
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--in-memory",
                "-q",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting gcp-storage-emulator (run scripts/test.sh, which installs it)");
        assert!(
            wait_port(port, Duration::from_secs(20)),
            "gcp-storage-emulator did not listen on {port}"
        );
        GcsEmulator {
            port,
            proxy: preconditions_proxy(port),
            _child: ChildGuard(Some(child)),
        }
    }

    /// Where Rewind talks to it: the proxy.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.proxy)
    }

    /// The emulator itself (the tests' own client).
    fn direct(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment of a process that should use this emulator.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![("STORAGE_EMULATOR_HOST", self.url())]
    }

    fn py(&self, script: &str, args: &[&str]) -> String {
        let base = self.direct();
        let all: Vec<&str> = std::iter::once(base.as_str())
            .chain(args.iter().copied())
            .collect();
        crate::servers::python("GCS emulator client", &format!("{PRELUDE}{script}"), &all)
    }

    pub fn create_bucket(&self, name: &str) {
        self.py(
            "call('POST', '/storage/v1/b?project=test', json.dumps({'name': sys.argv[2]}).encode(), 'application/json')",
            &[name],
        );
    }

    /// Uploads every file below `dir` to `bucket` under `prefix`; how many.
    pub fn upload_dir(&self, dir: &Path, bucket: &str, prefix: &str) -> usize {
        let out = self.py(
            "n = 0\n\
             for root, _, files in os.walk(sys.argv[2]):\n\
             \x20   for f in files:\n\
             \x20       p = os.path.join(root, f)\n\
             \x20       name = sys.argv[4] + os.path.relpath(p, sys.argv[2])\n\
             \x20       call('POST', '/upload/storage/v1/b/%s/o?uploadType=media&name=%s' % (q(sys.argv[3]), q(name)), open(p, 'rb').read())\n\
             \x20       n += 1\n\
             print(n)\n",
            &[dir.to_str().unwrap(), bucket, prefix],
        );
        out.trim().parse().unwrap_or(0)
    }

    /// Object names and sizes below `prefix` (names relative to it), sorted.
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<(String, u64)> {
        let out = self.py(
            "for n, s in names(sys.argv[2], sys.argv[3]):\n\
             \x20   print(json.dumps([n[len(sys.argv[3]):], s]))\n",
            &[bucket, prefix],
        );
        let mut got: Vec<(String, u64)> = out
            .lines()
            .map(|l| serde_json::from_str(l).expect("a listing line"))
            .collect();
        got.sort();
        got
    }

    /// Downloads every object below `prefix` into `dir` (paths relative to the prefix); how
    /// many.
    pub fn download_prefix(&self, bucket: &str, prefix: &str, dir: &Path) -> usize {
        let out = self.py(
            "n = 0\n\
             for name, _ in names(sys.argv[2], sys.argv[3]):\n\
             \x20   p = os.path.join(sys.argv[4], name[len(sys.argv[3]):])\n\
             \x20   os.makedirs(os.path.dirname(p), exist_ok=True)\n\
             \x20   open(p, 'wb').write(call('GET', '/storage/v1/b/%s/o/%s?alt=media' % (q(sys.argv[2]), q(name))))\n\
             \x20   n += 1\n\
             print(n)\n",
            &[bucket, prefix, dir.to_str().unwrap()],
        );
        out.trim().parse().unwrap_or(0)
    }
}

/// Starts the proxy in front of the emulator on `upstream`; its port.
fn preconditions_proxy(upstream: u16) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            std::thread::spawn(move || {
                let _ = relay(conn, upstream);
            });
        }
    });
    port
}

fn relay(conn: std::net::TcpStream, upstream: u16) -> std::io::Result<()> {
    let mut reader = std::io::BufReader::new(conn.try_clone()?);
    let mut writer = conn;
    // One request per connection (the emulator speaks HTTP/1.0 and closes after each answer).
    if let Some(req) = Message::read(&mut reader)? {
        let answer = match precondition(&req, upstream)? {
            Some(refusal) => refusal,
            None => crate::proxy::forward(&req, upstream)?,
        };
        answer.write(&mut writer, true)?;
    }
    Ok(())
}

/// The request's path and its query parameters (decoded).
fn split(target: &str) -> (String, Vec<(String, String)>) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let params = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), decode(v))
        })
        .collect();
    (path.to_string(), params)
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The live generation of `bucket`/`name` on the emulator, if the object exists.
fn live_generation(upstream: u16, bucket: &str, name: &str) -> std::io::Result<Option<String>> {
    let enc: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let req = Message {
        first: format!("GET /storage/v1/b/{bucket}/o/{enc} HTTP/1.1"),
        headers: vec![("host".into(), "127.0.0.1".into())],
        body: Vec::new(),
    };
    let answer = crate::proxy::forward(&req, upstream)?;
    if !answer.first.contains(" 200 ") {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
    Ok(v["generation"].as_str().map(str::to_string))
}

fn refusal(status: &str, code: u16, message: String) -> Message {
    Message {
        first: format!("HTTP/1.1 {status}"),
        headers: vec![("content-type".into(), "application/json".into())],
        body: serde_json::json!({"error": {"code": code, "message": message}})
            .to_string()
            .into_bytes(),
    }
}

/// GCS's answer where a precondition fails, or None to forward the request.
fn precondition(req: &Message, upstream: u16) -> std::io::Result<Option<Message>> {
    let mut parts = req.first.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, params) = split(target);
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    // A read of one generation: 404 unless it is the live one.
    if method == "GET"
        && let Some(generation) = param("generation")
        && let Some(rest) = path
            .strip_prefix("/storage/v1/b/")
            .or_else(|| path.strip_prefix("/download/storage/v1/b/"))
        && let Some((bucket, name)) = rest.split_once("/o/")
    {
        let name = decode(name);
        if live_generation(upstream, bucket, &name)?.as_deref() != Some(generation.as_str()) {
            return Ok(Some(refusal(
                "404 Not Found",
                404,
                format!("No such object: {bucket}/{name} (generation {generation})"),
            )));
        }
    }
    // A create only if absent: 412 when the object exists.
    if method == "POST"
        && param("ifGenerationMatch").as_deref() == Some("0")
        && let Some(rest) = path.strip_prefix("/upload/storage/v1/b/")
        && let Some(bucket) = rest.strip_suffix("/o")
        && let Some(name) = param("name")
        && live_generation(upstream, bucket, &name)?.is_some()
    {
        return Ok(Some(refusal(
            "412 Precondition Failed",
            412,
            format!("At least one of the pre-conditions you specified did not hold: {name}"),
        )));
    }
    Ok(None)
}
