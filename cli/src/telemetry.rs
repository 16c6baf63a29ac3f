//! Logging and trace export, the same for the CLI and the services.

use std::io::IsTerminal;

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
