//! A real browser for the status page's tests: headless Chromium driven over WebDriver by
//! Debian's `chromedriver` (package `chromium-driver`, which scripts/test.sh installs), with a
//! small blocking WebDriver client (W3C endpoints: session, url, execute/sync, element, click,
//! value, alert/accept, screenshot). `REWIND_CHROMEDRIVER` and `REWIND_CHROMIUM` name other
//! binaries.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::servers::{ChildGuard, free_port, wait_port};

/// One headless browser session; ended (and its driver stopped) when dropped.
pub struct Browser {
    _driver: ChildGuard,
    port: u16,
    session: String,
}

/// One WebDriver request: status and the answer's `value`.
fn call(port: u16, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("chromedriver answers");
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes())
        .expect("write to chromedriver");
    // chromedriver says `Connection: close` but keeps the socket open: read by Content-Length.
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    let (head, length) = loop {
        let n = s.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break (String::from_utf8_lossy(&raw).into_owned(), None);
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).into_owned();
            raw.drain(..end + 4);
            let length = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            });
            break (head, length);
        }
    };
    while length.is_some_and(|l| raw.len() < l) {
        let n = s.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let rest = String::from_utf8_lossy(&raw).into_owned();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&rest)
    } else {
        rest
    };
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    (status, v["value"].clone())
}

/// The body of a chunked HTTP answer.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session (window 1100 x 800).
    pub fn start() -> Browser {
        let port = free_port();
        let driver = std::process::Command::new(
            std::env::var("REWIND_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into()),
        )
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromedriver (Debian's chromium-driver; scripts/test.sh installs it)");
        let driver = ChildGuard(Some(driver));
        assert!(
            wait_port(port, Duration::from_secs(20)),
            "chromedriver did not listen"
        );
        let binary = std::env::var("REWIND_CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let binary = which(&binary).unwrap_or(binary);
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": {
                "binary": binary,
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1100,800",
                         "--disable-dev-shm-usage"],
            },
        }}});
        let (code, v) = call(port, "POST", "/session", Some(&caps));
        assert_eq!(code, 200, "new WebDriver session: {v}");
        let session = v["sessionId"].as_str().expect("session id").to_string();
        Browser {
            _driver: driver,
            port,
            session,
        }
    }

    fn at(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        call(
            self.port,
            method,
            &format!("/session/{}{path}", self.session),
            body,
        )
    }

    /// Opens `url` (returns once it has loaded).
    pub fn goto(&self, url: &str) {
        let (code, v) = self.at("POST", "/url", Some(&json!({ "url": url })));
        assert_eq!(code, 200, "navigate to {url}: {v}");
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page; its result.
    pub fn exec(&self, script: &str, args: Value) -> Value {
        let (code, v) = self.at(
            "POST",
            "/execute/sync",
            Some(&json!({"script": script, "args": args})),
        );
        assert_eq!(code, 200, "script {script}: {v}");
        v
    }

    /// The page's body now, as HTML without its scripts.
    pub fn html(&self) -> String {
        self.exec(
            "const b = document.body.cloneNode(true); \
             b.querySelectorAll('script').forEach((s) => s.remove()); return b.innerHTML;",
            json!([]),
        )
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// Whether `css` matches an element now.
    pub fn has(&self, css: &str) -> bool {
        self.exec(
            "return !!document.querySelector(arguments[0]);",
            json!([css]),
        )
        .as_bool()
        .unwrap_or(false)
    }

    /// Waits until `test(html)` holds, up to `limit`; the HTML it held for (or the last).
    pub fn wait_until(
        &self,
        limit: Duration,
        test: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        let deadline = Instant::now() + limit;
        loop {
            let html = self.html();
            if test(&html) {
                return Ok(html);
            }
            if Instant::now() > deadline {
                return Err(html);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn element(&self, css: &str) -> String {
        let (code, v) = self.at(
            "POST",
            "/element",
            Some(&json!({"using": "css selector", "value": css})),
        );
        assert_eq!(code, 200, "no element {css}: {v}");
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .expect("element id")
            .to_string()
    }

    /// Clicks the element `css` matches, as a user would (found again if the page redrew it
    /// in between).
    pub fn click(&self, css: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let id = self.element(css);
            let (code, v) = self.at("POST", &format!("/element/{id}/click"), Some(&json!({})));
            if code == 200 {
                return;
            }
            let stale = v["error"] == "stale element reference";
            assert!(stale && Instant::now() < deadline, "click {css}: {v}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Types `text` into the field `css` matches.
    pub fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        let (code, v) = self.at(
            "POST",
            &format!("/element/{id}/value"),
            Some(&json!({ "text": text })),
        );
        assert_eq!(code, 200, "type into {css}: {v}");
    }

    /// Accepts the dialog open now (a `confirm`), waiting up to 5 s for one to open.
    pub fn accept_dialog(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (code, v) = self.at("POST", "/alert/accept", Some(&json!({})));
            if code == 200 {
                return;
            }
            assert!(Instant::now() < deadline, "no dialog opened: {v}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sets the window's size (a screenshot shows the window only).
    pub fn resize(&self, width: u32, height: u32) {
        let (code, v) = self.at(
            "POST",
            "/window/rect",
            Some(&json!({"width": width, "height": height})),
        );
        assert_eq!(code, 200, "resize: {v}");
    }

    /// A PNG of the window.
    pub fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let (code, v) = self.at("GET", "/screenshot", None);
        assert_eq!(code, 200, "screenshot: {v}");
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .expect("base64 PNG")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = call(
            self.port,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        );
    }
}

/// The full path of a program on the PATH (chromedriver wants one).
fn which(name: &str) -> Option<String> {
    if name.contains('/') {
        return Some(name.to_string());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
            .map(|p| p.to_string_lossy().into_owned())
    })
}
