//! Pieces shared by the CLI and the services (`rewind coordinator`, `rewind worker`) of the one
//! `rewind` binary.

use std::io::IsTerminal;

pub mod args;
pub mod config;

/// Tracing export, when enabled; flushes what is buffered when shut down or dropped.
#[derive(Default)]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Telemetry {
    pub fn shutdown(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.force_flush();
            let _ = p.shutdown();
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// OTLP trace export is on when an OTLP endpoint is configured the standard way
/// (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) and not turned off
/// (`OTEL_TRACES_EXPORTER=none`, `OTEL_SDK_DISABLED=true`).
fn otlp_enabled() -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.is_empty());
    !std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v == "none")
        && !std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v == "true")
        && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

fn otlp_provider(
    service: &str,
) -> Result<
    (
        opentelemetry_sdk::trace::SdkTracerProvider,
        tokio::runtime::Runtime,
    ),
    String,
> {
    // The gRPC exporter's connection lives on a small runtime of its own, so export works
    // whatever runtime (or none) the program uses.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp")
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let exporter = {
        let _guard = runtime.enter();
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| e.to_string())?
    };
    let service_name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_string());
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service_name)
                .build(),
        )
        .build();
    Ok((provider, runtime))
}

/// Logs to stderr: JSON lines when stderr is not a terminal (services, CI), text otherwise.
/// The filter comes from `REWIND_LOG` (default `default_level`). With an OTLP endpoint in the
/// standard `OTEL_*` variables, Rewind's spans are also exported as traces (W3C trace context
/// propagated over gRPC and through the job record to workers).
pub fn init_logging(default_level: &str, service: &str) -> Telemetry {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let json = !std::io::stderr().is_terminal();
    let filter = tracing_subscriber::EnvFilter::try_from_env("REWIND_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let fmt = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    };
    let mut telemetry = Telemetry::default();
    let otel = if otlp_enabled() {
        match otlp_provider(service) {
            Ok((provider, runtime)) => {
                let tracer = provider.tracer("rewind");
                opentelemetry::global::set_text_map_propagator(
                    opentelemetry_sdk::propagation::TraceContextPropagator::new(),
                );
                telemetry.provider = Some(provider);
                telemetry.runtime = Some(runtime);
                // Rewind's own spans, whatever REWIND_LOG lets through to the logs.
                let only_ours = tracing_subscriber::filter::filter_fn(|m| {
                    m.is_span() && m.target().starts_with("rewind")
                });
                Some(
                    tracing_opentelemetry::layer()
                        .with_tracer(tracer)
                        .with_filter(only_ours),
                )
            }
            Err(e) => {
                eprintln!("warning: OTLP trace export disabled: {e}");
                None
            }
        }
    } else {
        None
    };
    tracing_subscriber::registry().with(fmt).with(otel).init();
    telemetry
}

/// The runtime of a service: two async threads (the work is on the blocking pool or in etcd)
/// and at most `max_blocking` blocking threads.
pub fn service_runtime(max_blocking: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(max_blocking)
        .enable_all()
        .build()
}

/// Runs a service: its runtime, then etcd (retried until it answers), then `body`. Failing to
/// start the runtime or to reach etcd for good is exit code 1, said on stderr.
pub fn run_service<F, Fut>(
    max_blocking: usize,
    etcd: &args::EtcdArgs,
    endpoints: &[String],
    body: F,
) -> std::process::ExitCode
where
    F: FnOnce(rewind_etcd::EtcdStore) -> Fut,
    Fut: std::future::Future<Output = std::process::ExitCode>,
{
    let runtime = match service_runtime(max_blocking) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        match etcd.connect(endpoints).await {
            Ok(store) => body(store).await,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::ExitCode::from(1)
            }
        }
    })
}

/// `--etcd http://a:2379,http://b:2379` as a list; an empty list is an error naming the flag.
pub fn etcd_endpoints(value: &str) -> Result<Vec<String>, String> {
    let list: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            if s.contains("://") {
                s.to_string()
            } else {
                format!("http://{s}")
            }
        })
        .collect();
    if list.is_empty() {
        return Err(
            "invalid --etcd: give at least one endpoint, e.g. http://127.0.0.1:2379".into(),
        );
    }
    Ok(list)
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// A future returned by an ops hook.
pub type Hook<T> = std::sync::Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>> + Send + Sync,
>;

#[derive(Clone)]
struct OpsState {
    registry: std::sync::Arc<prometheus_client::registry::Registry>,
    refresh: Hook<()>,
    ready: Hook<Result<(), String>>,
}

/// Serves `/metrics` (Prometheus text format; `refresh` runs before each scrape), `/healthz`
/// (the process answers) and `/readyz` (`ready` says whether it can work: etcd reachable) on
/// `addr`, until the process ends.
pub async fn serve_ops(
    addr: std::net::SocketAddr,
    registry: prometheus_client::registry::Registry,
    refresh: Hook<()>,
    ready: Hook<Result<(), String>>,
) -> std::io::Result<()> {
    use axum::extract::State;
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::get;

    async fn metrics(State(s): State<OpsState>) -> impl IntoResponse {
        (s.refresh)().await;
        let mut body = String::new();
        match prometheus_client::encoding::text::encode(&mut body, &s.registry) {
            Ok(()) => (
                StatusCode::OK,
                [(
                    header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                body,
            ),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/plain")],
                e.to_string(),
            ),
        }
    }
    async fn readyz(State(s): State<OpsState>) -> impl IntoResponse {
        match (s.ready)().await {
            Ok(()) => (StatusCode::OK, "ready\n".to_string()),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        }
    }
    let state = OpsState {
        registry: std::sync::Arc::new(registry),
        refresh,
        ready,
    };
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(listen = %addr, "serving /metrics, /healthz, /readyz");
    axum::serve(listener, app).await
}

/// Readiness of a process that needs etcd: etcd answers within 2 s.
pub fn etcd_ready(store: rewind_etcd::EtcdStore) -> Hook<Result<(), String>> {
    std::sync::Arc::new(move || {
        let store = store.clone();
        Box::pin(async move {
            use rewind_common::registry::JobRegistry as _;
            match tokio::time::timeout(std::time::Duration::from_secs(2), store.leader()).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!(
                    "etcd at {} did not answer in 2 s",
                    store.endpoints().join(",")
                )),
            }
        })
    })
}

/// Bearer-token check for the gRPC API: `authorization: Bearer <token>`, compared in constant
/// time. Health and reflection stay open (probes and tooling need no secret).
#[derive(Clone)]
pub struct RequireToken {
    token: std::sync::Arc<Vec<u8>>,
}

impl RequireToken {
    /// Reads the token from a file (surrounding whitespace ignored); an empty token is refused.
    pub fn from_file(path: &std::path::Path) -> Result<RequireToken, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("invalid --auth-token-file {}: {e}", path.display()))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(format!(
                "invalid --auth-token-file {}: it is empty",
                path.display()
            ));
        }
        Ok(RequireToken {
            token: std::sync::Arc::new(token.as_bytes().to_vec()),
        })
    }
}

/// Equal in time independent of where the inputs differ (only their lengths leak).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl tonic::service::Interceptor for RequireToken {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::as_bytes);
        match given {
            Some(t) if constant_time_eq(t, &self.token) => Ok(req),
            Some(_) => Err(tonic::Status::unauthenticated("invalid bearer token")),
            None => Err(tonic::Status::unauthenticated(
                "missing bearer token (authorization: Bearer <token>)",
            )),
        }
    }
}

/// Server TLS from PEM files; with `client_ca`, clients must present a certificate it signed.
pub fn server_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
    client_ca: Option<&std::path::Path>,
) -> Result<tonic::transport::ServerTlsConfig, String> {
    let read = |flag: &str, p: &std::path::Path| {
        std::fs::read(p).map_err(|e| format!("invalid {flag} {}: {e}", p.display()))
    };
    let identity =
        tonic::transport::Identity::from_pem(read("--tls-cert", cert)?, read("--tls-key", key)?);
    let mut tls = tonic::transport::ServerTlsConfig::new().identity(identity);
    if let Some(ca) = client_ca {
        tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(
            "--tls-client-ca",
            ca,
        )?));
    }
    Ok(tls)
}

/// Registers `rewind_etcd_requests_total` and `rewind_etcd_errors_total` (this process's etcd
/// round trips) and returns the hook that brings them up to date before a scrape.
pub fn etcd_metrics(registry: &mut prometheus_client::registry::Registry) -> Hook<()> {
    use prometheus_client::metrics::counter::Counter;
    use std::sync::atomic::Ordering;
    let requests = Counter::<u64>::default();
    let errors = Counter::<u64>::default();
    let r = registry.sub_registry_with_prefix("rewind");
    r.register("etcd_requests", "Requests sent to etcd", requests.clone());
    r.register("etcd_errors", "etcd requests that failed", errors.clone());
    std::sync::Arc::new(move || {
        let (requests, errors) = (requests.clone(), errors.clone());
        Box::pin(async move {
            let total = rewind_etcd::ROUND_TRIPS.load(Ordering::Relaxed);
            requests.inc_by(total.saturating_sub(requests.get()));
            let failed = rewind_etcd::ERRORS.load(Ordering::Relaxed);
            errors.inc_by(failed.saturating_sub(errors.get()));
        })
    })
}

/// Chooses the TLS crypto provider once per process: the gRPC stack (ring) and the AWS SDK
/// (aws-lc-rs) both bring one, and rustls refuses to guess between two.
pub fn init_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_bytes_and_lengths() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn etcd_endpoints_need_one() {
        assert_eq!(
            etcd_endpoints("a:1, http://b:2").unwrap(),
            vec!["http://a:1".to_string(), "http://b:2".to_string()]
        );
        assert!(etcd_endpoints(" , ").is_err());
    }
}
