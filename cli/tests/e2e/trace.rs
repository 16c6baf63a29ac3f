//! OpenTelemetry traces end to end: an OTLP/gRPC receiver runs in this test; the CLI, the
//! coordinator and two workers export to it through the standard `OTEL_*` variables. One job
//! must be one trace: `rewind.submit` (CLI) -> `rewind.job` (coordinator) -> one `rewind.shard`
//! per hour (workers) and `rewind.job.commit` (the leader).

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use rewind_testkit::servers::{Etcd, Proc, free_port, wait_port};

const REWIND: &str = env!("CARGO_BIN_EXE_rewind");
const COORDINATOR: [&str; 2] = [env!("CARGO_BIN_EXE_rewind"), "coordinator"];
const WORKER: [&str; 2] = [env!("CARGO_BIN_EXE_rewind"), "worker"];

#[derive(Debug, Clone)]
struct Got {
    service: String,
    name: String,
    trace: Vec<u8>,
    id: Vec<u8>,
    parent: Vec<u8>,
}

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Got>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    AnyValue::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    got.push(Got {
                        service: service.clone(),
                        name: s.name,
                        trace: s.trace_id,
                        id: s.span_id,
                        parent: s.parent_span_id,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[test]
fn one_job_is_one_trace_across_cli_coordinator_and_workers() {
    let receiver = Receiver::default();
    let otlp_port = free_port();
    {
        let receiver = receiver.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                tonic::transport::Server::builder()
                    .add_service(TraceServiceServer::new(receiver))
                    .serve(([127, 0, 0, 1], otlp_port).into())
                    .await
                    .unwrap();
            });
        });
    }
    assert!(wait_port(otlp_port, Duration::from_secs(10)));
    let endpoint = format!("http://127.0.0.1:{otlp_port}");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ];

    let tmp = tempfile::tempdir().unwrap();
    let etcd = Etcd::start();
    let api = free_port();
    let _coordinator = Proc::spawn_with_env(
        COORDINATOR,
        &[
            "--listen".to_string(),
            format!("127.0.0.1:{api}"),
            "--etcd".into(),
            etcd.endpoint(),
        ],
        tmp.path().join("coordinator.log"),
        &env,
    );
    let _workers: Vec<Proc> = (0..2)
        .map(|n| {
            Proc::spawn_with_env(
                WORKER,
                &[
                    "--etcd".to_string(),
                    etcd.endpoint(),
                    "--slots".into(),
                    "1".into(),
                ],
                tmp.path().join(format!("worker-{n}.log")),
                &env,
            )
        })
        .collect();
    assert!(wait_port(api, Duration::from_secs(20)));
    let src = tmp.path().join("archive");
    let gen_out = Command::new(REWIND)
        .args(["gen", "--out", src.to_str().unwrap(), "--org", "TN-trace"])
        .args([
            "--start",
            "2024-04-01T00",
            "--hours",
            "3",
            "--object-mb",
            "0.1",
        ])
        .output()
        .unwrap();
    assert!(gen_out.status.success());
    let out = Command::new(REWIND)
        .args(["submit", "--coordinator", &format!("127.0.0.1:{api}")])
        .args(["--source", src.to_str().unwrap(), "--org", "TN-trace"])
        .args(["--start", "2024-04-01T00", "--end", "2024-04-01T02"])
        .args([
            "--dest",
            tmp.path().join("out").to_str().unwrap(),
            "--wait",
            "--json",
        ])
        .envs(env)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Spans arrive in batches; wait for the whole tree.
    let deadline = Instant::now() + Duration::from_secs(30);
    let spans = loop {
        let spans = receiver.0.lock().unwrap().clone();
        let count = |n: &str| spans.iter().filter(|s| s.name == n).count();
        if count("rewind.submit") >= 1
            && count("rewind.job") >= 1
            && count("rewind.shard") >= 3
            && count("rewind.job.commit") >= 1
        {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "spans so far: {:?}",
            spans
                .iter()
                .map(|s| (&s.service, &s.name))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let by_name: HashMap<&str, Vec<&Got>> = spans.iter().fold(HashMap::new(), |mut m, s| {
        m.entry(s.name.as_str()).or_default().push(s);
        m
    });
    let submit = by_name["rewind.submit"][0];
    let job = by_name["rewind.job"][0];
    assert_eq!(submit.service, "rewind");
    assert_eq!(job.service, "rewind-coordinator");
    assert_eq!(job.trace, submit.trace, "the job continues the CLI's trace");
    assert_eq!(job.parent, submit.id);
    let shards = &by_name["rewind.shard"];
    assert_eq!(shards.len(), 3, "one span per hour shard");
    for s in shards {
        assert_eq!(s.service, "rewind-worker");
        assert_eq!(s.trace, submit.trace);
        assert_eq!(s.parent, job.id, "shard spans are children of the job span");
    }
    let commit = by_name["rewind.job.commit"][0];
    assert_eq!(
        (commit.trace.clone(), commit.parent.clone()),
        (submit.trace.clone(), job.id.clone())
    );
}
