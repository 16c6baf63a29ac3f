//! Small HTTP/1.1 stand-ins for services no real server of can run here, implementing the
//! documented APIs Rewind calls, with state the tests inspect:
//! - [`Druid`]: the coordinator's metadata and mark-used/unused APIs and the overlord's task API
//!   (kill), over an in-memory list of segments;
//! - [`Webhook`]: a receiver (Slack incoming webhooks or any JSON endpoint) recording every POST.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

pub(crate) type Handler = Arc<dyn Fn(&str, &str, &str) -> (u16, String) + Send + Sync>;

/// Serves `handler(method, path, body) -> (status, body)` on a free loopback port until dropped.
pub(crate) struct Server {
    pub(crate) port: u16,
}

pub(crate) fn serve(handler: Handler) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let handler = handler.clone();
            std::thread::spawn(move || {
                let _ = answer(conn, &handler);
            });
        }
    });
    Server { port }
}

fn answer(conn: TcpStream, handler: &Handler) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        let (status, out) = handler(&method, &path, &String::from_utf8_lossy(&body));
        let mut w = &conn;
        write!(
            w,
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{out}",
            out.len()
        )?;
        w.flush()?;
    }
}

/// One segment of the Druid stand-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub id: String,
    pub datasource: String,
    /// `start/end`, ISO-8601 instants.
    pub interval: String,
    pub used: bool,
}

#[derive(Debug, Default)]
struct DruidState {
    segments: Vec<Segment>,
    kills: Vec<(String, String)>,
}

/// A Druid coordinator + overlord stand-in.
pub struct Druid {
    server: Server,
    state: Arc<Mutex<DruidState>>,
}

impl Druid {
    /// With one used segment per day of `days` (`YYYY-MM-DD`) for `datasource`.
    pub fn start(datasource: &str, days: &[&str]) -> Druid {
        let state = Arc::new(Mutex::new(DruidState::default()));
        for d in days {
            let next = chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d")
                .unwrap()
                .succ_opt()
                .unwrap();
            state.lock().unwrap().segments.push(Segment {
                id: format!("{datasource}_{d}_v1"),
                datasource: datasource.into(),
                interval: format!("{d}T00:00:00.000Z/{next}T00:00:00.000Z"),
                used: true,
            });
        }
        let st = state.clone();
        let server = serve(Arc::new(move |method, path, body| {
            druid_api(&st, method, path, body)
        }));
        Druid { server, state }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.server.port)
    }

    pub fn segments(&self) -> Vec<Segment> {
        self.state.lock().unwrap().segments.clone()
    }

    /// The kill tasks submitted: (datasource, interval).
    pub fn kills(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().kills.clone()
    }
}

fn druid_api(state: &Mutex<DruidState>, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = state.lock().unwrap();
    let parts: Vec<&str> = path.split('?').next().unwrap_or("").split('/').collect();
    match (method, parts.as_slice()) {
        ("GET", ["", "status"]) => (200, json!({"version": "stand-in"}).to_string()),
        (
            "GET",
            [
                "",
                "druid",
                "coordinator",
                "v1",
                "metadata",
                "datasources",
                ds,
                "segments",
            ],
        ) => {
            let used: Vec<Value> = s
                .segments
                .iter()
                .filter(|g| g.datasource == *ds && g.used)
                .map(|g| json!({"dataSource": g.datasource, "interval": g.interval, "identifier": g.id}))
                .collect();
            (200, Value::Array(used).to_string())
        }
        ("POST", ["", "druid", "coordinator", "v1", "datasources", ds, op])
            if *op == "markUnused" || *op == "markUsed" =>
        {
            let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
            let ids: Vec<String> = v["segmentIds"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i.as_str().map(str::to_string))
                .collect();
            let used = *op == "markUsed";
            let mut n = 0;
            for g in s.segments.iter_mut() {
                if g.datasource == *ds && ids.contains(&g.id) && g.used != used {
                    g.used = used;
                    n += 1;
                }
            }
            (200, json!({"numChangedSegments": n}).to_string())
        }
        ("POST", ["", "druid", "indexer", "v1", "task"]) => {
            let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
            if v["type"] != "kill" {
                return (400, json!({"error": "only kill tasks"}).to_string());
            }
            let ds = v["dataSource"].as_str().unwrap_or_default().to_string();
            let interval = v["interval"].as_str().unwrap_or_default().to_string();
            let (a, b) = interval.split_once('/').unwrap_or(("", ""));
            // A kill deletes the unused segments inside the interval.
            s.segments.retain(|g| {
                let (ga, gb) = g.interval.split_once('/').unwrap_or(("", ""));
                !(g.datasource == ds && !g.used && ga >= a && gb <= b)
            });
            s.kills.push((ds.clone(), interval));
            (
                200,
                json!({"task": format!("kill_{ds}_{}", s.kills.len())}).to_string(),
            )
        }
        _ => (
            404,
            json!({"error": format!("{method} {path}")}).to_string(),
        ),
    }
}

/// A webhook receiver: records the JSON body of every POST; `fail_first` POSTs get a 500.
pub struct Webhook {
    server: Server,
    got: Arc<Mutex<Vec<Value>>>,
}

impl Webhook {
    pub fn start(fail_first: usize) -> Webhook {
        let got = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(Mutex::new(0usize));
        let g = got.clone();
        let server = serve(Arc::new(move |method, _path, body| {
            if method != "POST" {
                return (200, "{}".into());
            }
            let mut n = seen.lock().unwrap();
            *n += 1;
            if *n <= fail_first {
                return (500, "{}".into());
            }
            g.lock()
                .unwrap()
                .push(serde_json::from_str(body).unwrap_or(Value::String(body.into())));
            (200, "ok".into())
        }));
        Webhook { server, got }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.server.port)
    }

    pub fn messages(&self) -> Vec<Value> {
        self.got.lock().unwrap().clone()
    }
}
