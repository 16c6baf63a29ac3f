//! Trace context across processes: a job is one trace. The CLI's call carries its context in
//! gRPC metadata; the coordinator stores the job span's W3C `traceparent` in the job record;
//! workers and the leader parent their shard and commit spans on it. Without an OTLP exporter
//! configured, these are no-ops.

use std::collections::HashMap;

use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The W3C `traceparent` of a span (None when tracing export is off).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let mut carrier = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&span.context(), &mut carrier)
    });
    carrier.remove("traceparent")
}

/// Makes `span` a child of the context a `traceparent` names.
pub fn set_parent(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(tp) = traceparent else {
        return;
    };
    let carrier = HashMap::from([("traceparent".to_string(), tp.to_string())]);
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
    let _ = span.set_parent(cx);
}

/// Injects a span's context into gRPC-style string headers.
pub fn inject(span: &tracing::Span, headers: &mut HashMap<String, String>) {
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&span.context(), headers));
}

/// Makes `span` a child of the context found in string headers (e.g. gRPC metadata).
pub fn set_parent_from(span: &tracing::Span, headers: &HashMap<String, String>) {
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(headers));
    let _ = span.set_parent(cx);
}
