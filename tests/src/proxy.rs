//! What the tests' HTTP proxies share: one HTTP/1.1 message read and written whole, and a
//! request forwarded to a server on the loopback.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

/// An HTTP/1.1 request or response: its first line, headers and body.
pub(crate) struct Message {
    pub(crate) first: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Message {
    pub(crate) fn read(r: &mut impl BufRead) -> std::io::Result<Option<Message>> {
        let mut first = String::new();
        if r.read_line(&mut first)? == 0 {
            return Ok(None);
        }
        let mut headers = Vec::new();
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            r.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
        Ok(Some(Message {
            first: first.trim_end().to_string(),
            headers,
            body,
        }))
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn write(&self, w: &mut impl Write, close: bool) -> std::io::Result<()> {
        let mut head = format!("{}\r\n", self.first);
        for (k, v) in &self.headers {
            if k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("connection") {
                continue;
            }
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("content-length: {}\r\n", self.body.len()));
        if close {
            head.push_str("connection: close\r\n");
        }
        head.push_str("\r\n");
        w.write_all(head.as_bytes())?;
        w.write_all(&self.body)?;
        w.flush()
    }
}

/// Sends `req` to the server on `upstream` (a connection of its own) and reads its answer.
pub(crate) fn forward(req: &Message, upstream: u16) -> std::io::Result<Message> {
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    req.write(&mut up, true)?;
    let mut r = BufReader::new(up);
    Message::read(&mut r)?.ok_or_else(|| std::io::Error::other("no answer upstream"))
}
