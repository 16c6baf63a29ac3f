//! Pieces shared by the `rewind`, `rewind-coordinator` and `rewind-worker` binaries.

use std::io::IsTerminal;

/// Logs to stderr: JSON lines when stderr is not a terminal (services, CI), text otherwise.
/// The filter comes from `REWIND_LOG` (default `default_level`).
pub fn init_logging(default_level: &str) {
    let json = !std::io::stderr().is_terminal();
    let filter = tracing_subscriber::EnvFilter::try_from_env("REWIND_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
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
