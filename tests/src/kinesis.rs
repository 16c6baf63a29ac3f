//! Amazon Kinesis for the tests: moto's server mode (Python, in memory, any credentials) on a
//! free loopback port; streams created and read back with boto3, a client independent of the
//! Rust SDK Rewind uses. [`ThrottleProxy`] sits between Rewind and moto and makes the stream
//! busy the way Kinesis does: part of a PutRecords call failed with
//! `ProvisionedThroughputExceededException` per record, or whole calls refused.
//!
//! moto's Kinesis is not safe under concurrent writes: each record's sequence number is the
//! shard's highest plus one, so two PutRecords calls at once can give two records the same
//! number and one overwrites the other (records lost that the service acknowledged). Real
//! Kinesis does not do that, and Rewind has several calls in flight, so Rewind always reaches
//! moto through a proxy of this module, which passes one PutRecords call at a time.

use std::io::BufReader;
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::proxy::Message;
use crate::servers::{ChildGuard, free_port, wait_port};

/// Credentials moto accepts (any), for the processes under test.
pub const ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_REGION", "us-east-1"),
];

/// One record as a consumer reads it.
#[derive(Debug, Clone)]
pub struct Record {
    pub shard: String,
    pub sequence: String,
    pub key: String,
    pub data: Vec<u8>,
}

/// A moto server serving Kinesis, behind a proxy that passes one write at a time.
pub struct Kinesis {
    port: u16,
    proxy: ThrottleProxy,
    _child: ChildGuard,
}

/// One write to moto at a time (see the module's doc).
static MOTO_WRITES: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Kinesis {
    pub fn start() -> Kinesis {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting moto_server (run scripts/test.sh, which installs moto)");
        assert!(
            wait_port(port, Duration::from_secs(20)),
            "moto did not listen on {port}"
        );
        Kinesis {
            port,
            proxy: ThrottleProxy::start(port, Busy::default()),
            _child: ChildGuard(Some(child)),
        }
    }

    /// moto's own port (for a [`ThrottleProxy`] in front of it).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where Rewind puts records: the proxy that serialises writes.
    pub fn endpoint(&self) -> String {
        self.proxy.endpoint()
    }

    /// moto itself (reads).
    fn direct(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn boto(&self, script: &str, args: &[&str]) -> String {
        let prelude = format!(
            "import boto3, sys, json, base64\n\
             k = boto3.client('kinesis', endpoint_url='{}', region_name='us-east-1', \
             aws_access_key_id='testing', aws_secret_access_key='testing')\n",
            self.direct()
        );
        crate::servers::python("boto3", &format!("{prelude}{script}"), args)
    }

    /// Creates `name` with `shards` shards and waits until it is ACTIVE.
    pub fn create_stream(&self, name: &str, shards: u32) {
        self.boto(
            "k.create_stream(StreamName=sys.argv[1], ShardCount=int(sys.argv[2]))\n\
             k.get_waiter('stream_exists').wait(StreamName=sys.argv[1], \
             WaiterConfig={'Delay': 0.2, 'MaxAttempts': 50})\n",
            &[name, &shards.to_string()],
        );
    }

    /// Every record of the stream, shard by shard in sequence order, read from TRIM_HORIZON.
    pub fn read_all(&self, name: &str) -> Vec<Record> {
        let out = self.boto(
            "for s in k.list_shards(StreamName=sys.argv[1])['Shards']:\n\
             \x20   it = k.get_shard_iterator(StreamName=sys.argv[1], ShardId=s['ShardId'], \
             ShardIteratorType='TRIM_HORIZON')['ShardIterator']\n\
             \x20   while it:\n\
             \x20       r = k.get_records(ShardIterator=it, Limit=10000)\n\
             \x20       for rec in r['Records']:\n\
             \x20           print(json.dumps({'shard': s['ShardId'], 'seq': rec['SequenceNumber'], \
             'key': rec['PartitionKey'], 'data': base64.b64encode(rec['Data']).decode()}))\n\
             \x20       if not r['Records']:\n\
             \x20           break\n\
             \x20       it = r.get('NextShardIterator')\n",
            &[name],
        );
        out.lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).expect("a record line");
                Record {
                    shard: v["shard"].as_str().unwrap_or_default().to_string(),
                    sequence: v["seq"].as_str().unwrap_or_default().to_string(),
                    key: v["key"].as_str().unwrap_or_default().to_string(),
                    data: base64::engine::general_purpose::STANDARD
                        .decode(v["data"].as_str().unwrap_or_default())
                        .expect("base64"),
                }
            })
            .collect()
    }
}

/// What the proxy does to PutRecords calls.
#[derive(Debug, Clone, Copy, Default)]
pub struct Busy {
    /// Of the first `calls` PutRecords calls, fail every `nth` record of each (per record,
    /// ProvisionedThroughputExceededException) ...
    pub calls: u64,
    pub nth: u64,
    /// ... and refuse every `refuse_nth` call whole (ProvisionedThroughputExceededException);
    /// 0: none.
    pub refuse_nth: u64,
}

/// Between Rewind and moto: forwards every request, and makes PutRecords busy as [`Busy`]
/// says (the records it fails are not forwarded, as Kinesis does not write them).
pub struct ThrottleProxy {
    port: u16,
    failed_records: Arc<AtomicU64>,
    refused_calls: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl ThrottleProxy {
    pub fn start(upstream: u16, busy: Busy) -> ThrottleProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
        let failed_records = Arc::new(AtomicU64::new(0));
        let refused_calls = Arc::new(AtomicU64::new(0));
        let calls = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, r, s) = (failed_records.clone(), refused_calls.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (f, r, calls) = (f.clone(), r.clone(), calls.clone());
                std::thread::spawn(move || {
                    let _ = relay(conn, upstream, busy, &calls, &f, &r);
                });
            }
        });
        ThrottleProxy {
            port,
            failed_records,
            refused_calls,
            stop,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Records failed per record so far, and calls refused whole.
    pub fn injected(&self) -> (u64, u64) {
        (
            self.failed_records.load(Ordering::Relaxed),
            self.refused_calls.load(Ordering::Relaxed),
        )
    }
}

impl Drop for ThrottleProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Forwards one request to moto, one write at a time (see the module's doc).
fn forward(req: &Message, upstream: u16) -> std::io::Result<Message> {
    let _one_at_a_time = MOTO_WRITES.lock().unwrap_or_else(|p| p.into_inner());
    crate::proxy::forward(req, upstream)
}

fn relay(
    conn: TcpStream,
    upstream: u16,
    busy: Busy,
    calls: &AtomicU64,
    failed: &AtomicU64,
    refused: &AtomicU64,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut writer = conn;
    while let Some(req) = Message::read(&mut reader)? {
        let put = req
            .header("x-amz-target")
            .is_some_and(|t| t.ends_with(".PutRecords"));
        let answer = if !put {
            forward(&req, upstream)?
        } else {
            let n = calls.fetch_add(1, Ordering::Relaxed) + 1;
            if n > busy.calls {
                forward(&req, upstream)?
            } else if busy.refuse_nth > 0 && n.is_multiple_of(busy.refuse_nth) {
                refused.fetch_add(1, Ordering::Relaxed);
                Message {
                    first: "HTTP/1.1 400 Bad Request".into(),
                    headers: vec![("content-type".into(), "application/x-amz-json-1.1".into())],
                    body: json!({
                        "__type": "ProvisionedThroughputExceededException",
                        "message": "Rate exceeded for stream (injected by the test proxy)"
                    })
                    .to_string()
                    .into_bytes(),
                }
            } else {
                partly(&req, upstream, busy.nth.max(1), failed)?
            }
        };
        answer.write(&mut writer, false)?;
    }
    Ok(())
}

/// Forwards all but every `nth` record of a PutRecords call; answers for all, the held-back
/// ones failed with ProvisionedThroughputExceededException.
fn partly(req: &Message, upstream: u16, nth: u64, failed: &AtomicU64) -> std::io::Result<Message> {
    let mut body: Value = serde_json::from_slice(&req.body).map_err(std::io::Error::other)?;
    let records = body["Records"].as_array().cloned().unwrap_or_default();
    let fail: Vec<bool> = (0..records.len() as u64)
        .map(|i| i % nth == nth - 1)
        .collect();
    let keep: Vec<Value> = records
        .iter()
        .zip(&fail)
        .filter(|(_, f)| !**f)
        .map(|(r, _)| r.clone())
        .collect();
    let mut results: Vec<Value> = Vec::new();
    if !keep.is_empty() {
        body["Records"] = Value::Array(keep);
        let mut fwd = Message {
            first: req.first.clone(),
            headers: req.headers.clone(),
            body: body.to_string().into_bytes(),
        };
        fwd.headers
            .retain(|(k, _)| !k.eq_ignore_ascii_case("content-length"));
        let answer = forward(&fwd, upstream)?;
        if !answer.first.contains(" 200 ") {
            return Ok(answer);
        }
        let v: Value = serde_json::from_slice(&answer.body).map_err(std::io::Error::other)?;
        results = v["Records"].as_array().cloned().unwrap_or_default();
    }
    let mut put = results.into_iter();
    let mut out = Vec::new();
    let mut failed_here = 0u64;
    for f in fail {
        if f {
            failed_here += 1;
            out.push(json!({
                "ErrorCode": "ProvisionedThroughputExceededException",
                "ErrorMessage": "Rate exceeded for shard (injected by the test proxy)"
            }));
        } else {
            out.push(put.next().unwrap_or(Value::Null));
        }
    }
    failed.fetch_add(failed_here, Ordering::Relaxed);
    Ok(Message {
        first: "HTTP/1.1 200 OK".into(),
        headers: vec![("content-type".into(), "application/x-amz-json-1.1".into())],
        body: json!({"FailedRecordCount": failed_here, "Records": out})
            .to_string()
            .into_bytes(),
    })
}
