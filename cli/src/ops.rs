//! The services' operations endpoint: Prometheus `/metrics`, `/healthz`, `/readyz`.

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
/// `addr`, with `extra` routes (a coordinator's `/api/v1/`), until the process ends.
pub async fn serve_ops(
    addr: std::net::SocketAddr,
    registry: prometheus_client::registry::Registry,
    refresh: Hook<()>,
    ready: Hook<Result<(), String>>,
    extra: Option<axum::Router>,
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
    let app = match extra {
        Some(r) => app.merge(r),
        None => app,
    };
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
