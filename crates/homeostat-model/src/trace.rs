//! Spans that continue a W3C trace context and hand it on: the server's
//! spans for requests, enqueues, claims and completions, and the agent
//! runtime's span for a job's work (docs/telemetry.md).
//!
//! These spans have their own target, [`SPANS`]: they exist to be exported
//! over OTLP, so a subscriber that does not export them (homeostat's logs)
//! leaves them disabled, and with no exporter they cost a callsite's cached
//! interest check. Whether a span is exported is the subscriber's choice;
//! here a disabled span is simply one without a trace context.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of the spans made to be exported, not logged.
pub const SPANS: &str = "homeostat_trace";

/// The span context a `traceparent` names, if it is a valid one (the form
/// [`crate::validate_traceparent`] checks, ids not all zero).
fn parse(traceparent: &str) -> Option<SpanContext> {
    crate::validate_traceparent(traceparent).ok()?;
    let mut parts = traceparent.split('-');
    let (_version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let context = SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::NONE,
    );
    context.is_valid().then_some(context)
}

/// Makes `span` a child of the remote span `traceparent` names. Call it
/// before the span is entered; an invalid `traceparent`, or a disabled
/// span, leaves the span as it is.
pub fn continue_from(span: &tracing::Span, traceparent: &str) {
    if span.is_disabled() {
        return;
    }
    if let Some(parent) = parse(traceparent) {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
    }
}

/// The `traceparent` that makes a remote span a child of `span`, if `span`
/// is exported (a disabled span, or one under a subscriber without
/// OpenTelemetry, has none).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    let span = context.span();
    let c = span.span_context();
    c.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            c.trace_id(),
            c.span_id(),
            c.trace_flags().to_u8()
        )
    })
}

/// [`traceparent`] of the current span.
pub fn current() -> Option<String> {
    traceparent(&tracing::Span::current())
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn a_traceparent_is_read_as_a_remote_parent() {
        let c = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(c.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.span_id().to_string(), "00f067aa0ba902b7");
        assert!(c.is_sampled());
        assert!(c.is_remote());
        // All-zero ids are invalid in W3C trace context: no parent.
        assert!(parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
        assert!(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01").is_none());
        assert!(parse("not-a-traceparent").is_none());
    }
}
