//! Following one upload across the services. A W3C `traceparent` travels in a Kafka header from
//! the upload event through dedup to each stage's result and dead letter: every service's handling
//! of a message is one span ([`Hop`]) of the upload's trace, its trace id in that service's logs.
//! The spans are exported over OTLP (protobuf over HTTP) when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; otherwise they only carry the ids along.
//!
//! The W3C format and the ids come from OpenTelemetry's SDK (its trace-context propagator and
//! tracer), whether or not anything is exported.

use crate::ports::bus::{Delivery, Publication};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Span, SpanContext, SpanKind, Status, TraceContextExt, Tracer, TracerProvider,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use std::collections::HashMap;
use std::sync::OnceLock;

/// The Kafka header (and HTTP header) that carries the trace context.
pub const TRACEPARENT: &str = "traceparent";

const ENDPOINT_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// Where the spans go: the provider [`export`] installed, or one that exports nothing.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

fn tracer() -> SdkTracer {
    PROVIDER
        .get_or_init(|| SdkTracerProvider::builder().build())
        .tracer("prism")
}

/// Exports the spans of this process as `service` to the OTLP endpoint the environment names, if
/// it names one. Returns the provider to shut down (flush) at exit. The first call wins: spans
/// started before it are not exported.
pub fn export_from_environment(service: &str) -> anyhow::Result<Option<SdkTracerProvider>> {
    let Some(endpoint) = ENDPOINT_VARIABLES
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|value| !value.is_empty()))
    else {
        return Ok(None);
    };
    export(service, &endpoint).map(Some)
}

/// Exports the spans of this process to the OTLP/HTTP collector at `endpoint` (its base URL;
/// spans go to `/v1/traces` under it).
pub fn export(service: &str, endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    let traces = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = SpanExporter::builder()
        .with_http()
        .with_endpoint(traces)
        .build()?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_string())
                .build(),
        )
        .build();
    PROVIDER
        .set(provider.clone())
        .map_err(|_| anyhow::anyhow!("spans were already being traced before export was set up"))?;
    tracing::info!(endpoint, "exporting traces over OTLP");
    Ok(provider)
}

/// The trace context `traceparent` names, if it is a valid W3C one.
fn parse(traceparent: &str) -> Option<SpanContext> {
    let carrier = HashMap::from([(TRACEPARENT.to_string(), traceparent.to_string())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    let span = context.span().span_context().clone();
    span.is_valid().then_some(span)
}

fn format(span: &SpanContext) -> Option<String> {
    let mut carrier = HashMap::new();
    let context = Context::new().with_remote_span_context(span.clone());
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// One span of an upload's trace: a service handling a message, or a producer starting a trace.
pub struct Hop {
    span: opentelemetry_sdk::trace::Span,
}

impl Hop {
    /// `service` handling `delivery`: a child of the trace its `traceparent` names, or the first
    /// span of a new trace when it names none (an upload notification from S3).
    pub fn handling(service: &str, delivery: &Delivery) -> Hop {
        let parent = delivery
            .traceparent
            .as_deref()
            .and_then(parse)
            .map(|span| Context::new().with_remote_span_context(span))
            .unwrap_or_default();
        let tracer = tracer();
        let builder = tracer
            .span_builder(format!("{service} {}", delivery.topic))
            .with_kind(SpanKind::Consumer)
            .with_attributes([
                KeyValue::new("messaging.system", "kafka"),
                KeyValue::new("messaging.operation.type", "process"),
                KeyValue::new("messaging.destination.name", delivery.topic.clone()),
                KeyValue::new(
                    "messaging.destination.partition.id",
                    delivery.partition.to_string(),
                ),
                KeyValue::new("messaging.kafka.offset", delivery.offset),
            ]);
        Hop {
            span: tracer.build_with_context(builder, &parent),
        }
    }

    /// The first span of a new trace: `operation` (e.g. an upload) producing a message, a child of
    /// `parent` (a caller's `traceparent`) when that is a valid one.
    pub fn producing(operation: &str, parent: Option<&str>) -> Hop {
        let parent = parent
            .and_then(parse)
            .map(|span| Context::new().with_remote_span_context(span))
            .unwrap_or_default();
        let tracer = tracer();
        let builder = tracer
            .span_builder(operation.to_string())
            .with_kind(SpanKind::Producer);
        Hop {
            span: tracer.build_with_context(builder, &parent),
        }
    }

    /// The `traceparent` of the messages this hop publishes: they are its children.
    pub fn traceparent(&self) -> String {
        format(self.span.span_context()).expect("a hop's span context is always valid")
    }

    /// The trace's id, 32 hex digits: what to search the logs of every service for.
    pub fn trace_id(&self) -> String {
        self.span.span_context().trace_id().to_string()
    }

    /// Ends the span, failed with `reason` (a dead letter) or not.
    pub fn end(mut self, failure: Option<&str>) {
        if let Some(reason) = failure {
            self.span.set_status(Status::error(reason.to_string()));
        }
        self.span.end();
    }
}

/// `publication` (an upload announced) as the first message of a new trace, or of the caller's
/// when `parent` is a valid `traceparent`.
pub fn starting_trace(
    publication: Publication,
    operation: &str,
    parent: Option<&str>,
) -> Publication {
    let hop = Hop::producing(operation, parent);
    let traced = Publication {
        traceparent: Some(hop.traceparent()),
        ..publication
    };
    hop.end(None);
    traced
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(traceparent: Option<&str>) -> Delivery {
        Delivery {
            topic: "prism.uploads".into(),
            partition: 3,
            offset: 42,
            key: None,
            payload: Vec::new(),
            traceparent: traceparent.map(str::to_string),
        }
    }

    const UPSTREAM: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_hop_continues_the_trace_its_message_names_with_a_span_of_its_own() {
        let hop = Hop::handling("dedup", &delivery(Some(UPSTREAM)));
        assert_eq!(hop.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let child = hop.traceparent();
        let parts: Vec<&str> = child.split('-').collect();
        assert_eq!(parts.len(), 4, "{child}");
        assert_eq!(parts[0], "00");
        assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(parts[2], "00f067aa0ba902b7", "the hop's own span id");
        assert_ne!(parts[2], "0000000000000000");
        assert_eq!(parts[3], "01", "sampled, as upstream decided");
        // And the next service continues it again.
        let next = Hop::handling("thumbnail", &delivery(Some(&child)));
        assert_eq!(next.trace_id(), hop.trace_id());
        assert_ne!(next.traceparent(), child);
    }

    #[test]
    fn a_message_without_a_valid_traceparent_starts_a_new_trace() {
        let mut trace_ids = Vec::new();
        for header in [
            None,
            Some("garbage"),
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
        ] {
            let hop = Hop::handling("dedup", &delivery(header));
            let trace_id = hop.trace_id();
            assert_eq!(trace_id.len(), 32, "{header:?}");
            assert_ne!(trace_id, "00000000000000000000000000000000", "{header:?}");
            assert_ne!(trace_id, "4bf92f3577b34da6a3ce929d0e0e4736", "{header:?}");
            assert!(parse(&hop.traceparent()).is_some(), "{header:?}");
            trace_ids.push(trace_id);
        }
        trace_ids.sort();
        trace_ids.dedup();
        assert_eq!(trace_ids.len(), 4, "each a trace of its own");
    }

    #[test]
    fn an_unsampled_trace_stays_unsampled_downstream() {
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let hop = Hop::handling("dedup", &delivery(Some(unsampled)));
        assert!(hop.traceparent().ends_with("-00"), "{}", hop.traceparent());
        assert_eq!(hop.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn a_producer_starts_a_trace_or_continues_its_callers() {
        let root = Hop::producing("upload", None);
        assert!(parse(&root.traceparent()).is_some());
        let continued = Hop::producing("upload", Some(UPSTREAM));
        assert_eq!(continued.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let announced = starting_trace(
            Publication::json("prism.uploads", "k", &"event"),
            "upload",
            Some(UPSTREAM),
        );
        let traceparent = announced.traceparent.expect("a trace");
        assert!(
            traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{traceparent}"
        );
    }
}
