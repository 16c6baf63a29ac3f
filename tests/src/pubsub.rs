//! Google Cloud Pub/Sub for the tests. Google's Pub/Sub emulator (Java, from the Google Cloud
//! CLI) serves the REST API Rewind uses, but it comes only from Google's own package repository,
//! which a fresh machine here cannot reach: when it is installed (`$REWIND_PUBSUB_EMULATOR`, or
//! the Google Cloud CLI's `platform/pubsub-emulator`), the tests run against it
//! (`REWIND_PUBSUB_EMULATOR=none` forces the stand-in); otherwise
//! against [`StandIn`], a small server of this module implementing the same REST surface
//! (topics get/create/publish, subscriptions create/pull/acknowledge, the error bodies) as
//! Google documents it. Messages are read back with Python's standard library speaking REST,
//! independently of Rewind's client.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::servers::{ChildGuard, free_port, wait_port};

/// One message as a subscriber pulls it.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub data: Vec<u8>,
    pub attributes: HashMap<String, String>,
    pub ordering_key: String,
    pub message_id: String,
}

impl Pulled {
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.get(name).map(String::as_str)
    }
}

/// Google's emulator, if this machine has it.
fn emulator_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("REWIND_PUBSUB_EMULATOR") {
        // `none`: the stand-in even where the emulator is installed (what CI runs).
        return (p != "none").then(|| PathBuf::from(p));
    }
    [
        "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator",
        "/usr/share/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

enum Server {
    Emulator { _child: ChildGuard },
    StandIn(StandIn),
}

/// A Pub/Sub server: Google's emulator when installed, else the stand-in.
pub struct PubSub {
    port: u16,
    server: Server,
}

impl PubSub {
    pub fn start() -> PubSub {
        match emulator_bin() {
            Some(bin) => {
                let port = free_port();
                let child = Command::new(bin)
                    .args(["--host=127.0.0.1", &format!("--port={port}")])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("starting the Pub/Sub emulator");
                assert!(
                    wait_port(port, Duration::from_secs(60)),
                    "the Pub/Sub emulator did not listen on {port}"
                );
                PubSub {
                    port,
                    server: Server::Emulator {
                        _child: ChildGuard(Some(child)),
                    },
                }
            }
            None => {
                let s = StandIn::start(0);
                PubSub {
                    port: s.port(),
                    server: Server::StandIn(s),
                }
            }
        }
    }

    /// Which server runs: "Google's emulator" or "the stand-in".
    pub fn kind(&self) -> &'static str {
        match self.server {
            Server::Emulator { .. } => "Google's emulator",
            Server::StandIn(_) => "the stand-in",
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The environment of a process that should use this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![("PUBSUB_EMULATOR_HOST", self.host())]
    }

    fn py(&self, script: &str, args: &[&str]) -> String {
        let prelude = format!(
            "import json, sys, base64, urllib.request, urllib.error\n\
             BASE = 'http://{}'\n\
             def call(method, path, body=None):\n\
             \x20   data = None if body is None else json.dumps(body).encode()\n\
             \x20   req = urllib.request.Request(BASE + path, data=data, method=method)\n\
             \x20   req.add_header('content-type', 'application/json')\n\
             \x20   with urllib.request.urlopen(req) as r:\n\
             \x20       return json.loads(r.read() or b'{{}}')\n",
            self.host()
        );
        crate::servers::python("Pub/Sub client", &format!("{prelude}{script}"), args)
    }

    /// Creates `projects/{project}/topics/{topic}` and a subscription `{topic}-sub` on it
    /// (message ordering on); the topic's full name.
    pub fn create_topic(&self, project: &str, topic: &str) -> String {
        self.py(
            "t = 'projects/%s/topics/%s' % (sys.argv[1], sys.argv[2])\n\
             call('PUT', '/v1/' + t)\n\
             call('PUT', '/v1/projects/%s/subscriptions/%s-sub' % (sys.argv[1], sys.argv[2]), \
             {'topic': t, 'enableMessageOrdering': True, 'ackDeadlineSeconds': 600})\n",
            &[project, topic],
        );
        format!("projects/{project}/topics/{topic}")
    }

    /// Every message published to the topic since its subscription was made, in the order
    /// pulled (acknowledged as read), until a pull returns none.
    pub fn pull_all(&self, project: &str, topic: &str) -> Vec<Pulled> {
        let out = self.py(
            "sub = '/v1/projects/%s/subscriptions/%s-sub' % (sys.argv[1], sys.argv[2])\n\
             empty = 0\n\
             while empty < 2:\n\
             \x20   got = call('POST', sub + ':pull', {'maxMessages': 1000, 'returnImmediately': True})\n\
             \x20   msgs = got.get('receivedMessages', [])\n\
             \x20   if not msgs:\n\
             \x20       empty += 1\n\
             \x20       continue\n\
             \x20   empty = 0\n\
             \x20   for m in msgs:\n\
             \x20       print(json.dumps(m['message']))\n\
             \x20   call('POST', sub + ':acknowledge', {'ackIds': [m['ackId'] for m in msgs]})\n",
            &[project, topic],
        );
        out.lines()
            .map(|l| {
                let m: Value = serde_json::from_str(l).expect("a message line");
                Pulled {
                    data: base64::engine::general_purpose::STANDARD
                        .decode(m["data"].as_str().unwrap_or_default())
                        .expect("base64 data"),
                    attributes: m["attributes"]
                        .as_object()
                        .map(|o| {
                            o.iter()
                                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                                .collect()
                        })
                        .unwrap_or_default(),
                    ordering_key: m["orderingKey"].as_str().unwrap_or("").to_string(),
                    message_id: m["messageId"].as_str().unwrap_or("").to_string(),
                }
            })
            .collect()
    }
}

#[derive(Default)]
struct State {
    topics: HashMap<String, Vec<String>>,
    /// Subscription -> (topic, queued messages).
    subs: HashMap<String, (String, Vec<Value>)>,
    next_id: u64,
}

/// A Pub/Sub REST stand-in: in memory, one queue per subscription, publish all or nothing.
/// `fail_first` publish calls are refused with 503 UNAVAILABLE (nothing stored), as a busy
/// service answers.
pub struct StandIn {
    server: crate::http::Server,
    refused: Arc<AtomicU64>,
}

fn error(code: u16, status: &str, message: &str) -> (u16, String) {
    (
        code,
        json!({"error": {"code": code, "message": message, "status": status}}).to_string(),
    )
}

impl StandIn {
    pub fn start(fail_first: u64) -> StandIn {
        let state = Arc::new(Mutex::new(State::default()));
        let refused = Arc::new(AtomicU64::new(0));
        let r = refused.clone();
        let server = crate::http::serve(Arc::new(move |method, path, body| {
            let mut st = state.lock().unwrap();
            let path = path.split('?').next().unwrap_or("");
            let Some(name) = path.strip_prefix("/v1/") else {
                return error(404, "NOT_FOUND", "no such resource");
            };
            let body: Value = serde_json::from_str(body).unwrap_or(Value::Null);
            if let Some(topic) = name.strip_suffix(":publish") {
                if !st.topics.contains_key(topic) {
                    return error(404, "NOT_FOUND", "Topic not found");
                }
                if r.load(Ordering::Relaxed) < fail_first {
                    r.fetch_add(1, Ordering::Relaxed);
                    return error(
                        503,
                        "UNAVAILABLE",
                        "The service was unable to fulfill your request (injected)",
                    );
                }
                let msgs = body["messages"].as_array().cloned().unwrap_or_default();
                if msgs.is_empty() || msgs.len() > 1000 {
                    return error(
                        400,
                        "INVALID_ARGUMENT",
                        "a publish takes 1 to 1000 messages",
                    );
                }
                let mut ids = Vec::new();
                for mut m in msgs {
                    if m["data"].as_str().is_none_or(|d| d.is_empty()) && m["attributes"].is_null()
                    {
                        return error(
                            400,
                            "INVALID_ARGUMENT",
                            "a message needs data or attributes",
                        );
                    }
                    st.next_id += 1;
                    let id = st.next_id.to_string();
                    m["messageId"] = Value::String(id.clone());
                    ids.push(id);
                    let subs = st.topics[topic].clone();
                    for s in subs {
                        if let Some((_, q)) = st.subs.get_mut(&s) {
                            q.push(m.clone());
                        }
                    }
                }
                return (200, json!({"messageIds": ids}).to_string());
            }
            if let Some(sub) = name.strip_suffix(":pull") {
                let Some((_, q)) = st.subs.get_mut(sub) else {
                    return error(404, "NOT_FOUND", "Subscription not found");
                };
                let n = body["maxMessages"].as_u64().unwrap_or(100) as usize;
                let take: Vec<Value> = q.drain(..n.min(q.len())).collect();
                let received: Vec<Value> = take
                    .into_iter()
                    .map(|m| json!({"ackId": m["messageId"], "message": m}))
                    .collect();
                return (200, json!({"receivedMessages": received}).to_string());
            }
            if name.ends_with(":acknowledge") {
                return (200, "{}".into());
            }
            match (
                method,
                name.contains("/topics/"),
                name.contains("/subscriptions/"),
            ) {
                ("PUT", true, _) => {
                    if st.topics.contains_key(name) {
                        return error(409, "ALREADY_EXISTS", "Topic already exists");
                    }
                    st.topics.insert(name.to_string(), Vec::new());
                    (200, json!({"name": name}).to_string())
                }
                ("GET", true, _) => match st.topics.get(name) {
                    Some(_) => (200, json!({"name": name}).to_string()),
                    None => error(404, "NOT_FOUND", "Topic not found"),
                },
                ("PUT", _, true) => {
                    let topic = body["topic"].as_str().unwrap_or("").to_string();
                    let Some(subs) = st.topics.get_mut(&topic) else {
                        return error(404, "NOT_FOUND", "Topic not found");
                    };
                    subs.push(name.to_string());
                    st.subs
                        .insert(name.to_string(), (topic.clone(), Vec::new()));
                    (200, json!({"name": name, "topic": topic}).to_string())
                }
                _ => error(404, "NOT_FOUND", "no such resource"),
            }
        }));
        StandIn { server, refused }
    }

    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// Publish calls refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

impl PubSub {
    /// The stand-in with `fail_first` publish calls refused (503): the busy-service case, which
    /// Google's emulator cannot be made to show.
    pub fn start_busy(fail_first: u64) -> PubSub {
        let s = StandIn::start(fail_first);
        PubSub {
            port: s.port(),
            server: Server::StandIn(s),
        }
    }

    /// Publish calls the stand-in refused (0 for the emulator).
    pub fn refused(&self) -> u64 {
        match &self.server {
            Server::StandIn(s) => s.refused(),
            Server::Emulator { .. } => 0,
        }
    }
}
