//! Logs and traces. Logs: JSON in production, human-readable on a
//! terminal, filtered by `RUST_LOG` or the configured level. Traces: the
//! spans homeostat makes to be exported (homeostat_model::trace), sent over
//! OTLP when the standard `OTEL_*` variables ask for it (docs/telemetry.md);
//! otherwise those spans are disabled at their callsites and cost nothing.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// The trace exporter, when there is one: shut it down as the process ends,
/// so the last spans are sent.
#[derive(Debug, Default)]
pub(crate) struct Telemetry(Option<SdkTracerProvider>);

impl Telemetry {
    /// Sends what is left and stops the exporter (call outside the async
    /// runtime: the exporter's client blocks).
    pub(crate) fn shutdown(self) {
        if let Some(provider) = self.0
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "the trace exporter did not shut down cleanly");
        }
    }
}

/// Logs only (the one-shot commands).
pub(crate) fn init(format: LogFormat, level: &str) {
    install(format, level, None);
}

/// Logs, and traces exported as `OTEL_*` asks, under `service` unless
/// `OTEL_SERVICE_NAME` names another. An `OTEL_*` setting homeostat cannot
/// follow is an error, not silence.
pub(crate) fn init_with_traces(
    format: LogFormat,
    level: &str,
    service: &'static str,
) -> Result<Telemetry, String> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let Some(settings) = wanted(env)? else {
        install(format, level, None);
        return Ok(Telemetry::default());
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| format!("the OTLP trace exporter ({}): {e}", settings.endpoint))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if !settings.named {
        resource = resource.with_service_name(service);
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("homeostat");
    install(format, level, Some(tracer));
    tracing::info!(endpoint = %settings.endpoint, "exporting traces over OTLP");
    Ok(Telemetry(Some(provider)))
}

/// What the `OTEL_*` variables ask for.
#[derive(Debug, PartialEq)]
struct Settings {
    /// Where spans go (for the log line; the exporter reads it itself).
    endpoint: String,
    /// Whether the service's name is set by `OTEL_SERVICE_NAME` or
    /// `OTEL_RESOURCE_ATTRIBUTES`.
    named: bool,
}

/// Traces are exported when an OTLP endpoint is set or
/// `OTEL_TRACES_EXPORTER=otlp` (to the default endpoint); not at all when
/// `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`.
fn wanted(env: impl Fn(&str) -> Option<String>) -> Result<Option<Settings>, String> {
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    let endpoint = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| {
        env("OTEL_EXPORTER_OTLP_ENDPOINT").map(|e| format!("{}/v1/traces", e.trim_end_matches('/')))
    });
    let asked = match env("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
        Some("none") => return Ok(None),
        Some("otlp") => true,
        None => false,
        Some(other) => {
            return Err(format!(
                "OTEL_TRACES_EXPORTER={other}: homeostat exports traces over OTLP only (otlp, or none)"
            ));
        }
    };
    if endpoint.is_none() && !asked {
        return Ok(None);
    }
    let protocol =
        env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"));
    if let Some(p) = protocol.as_deref().map(str::trim)
        && p != "http/protobuf"
    {
        return Err(format!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={p}: homeostat exports over http/protobuf only (point it at the collector's HTTP port, 4318)"
        ));
    }
    let named = env("OTEL_SERVICE_NAME").is_some()
        || env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| {
            a.split(',')
                .any(|kv| kv.trim_start().starts_with("service.name="))
        });
    Ok(Some(Settings {
        endpoint: shown(&endpoint.unwrap_or_else(|| "http://localhost:4318/v1/traces".to_owned())),
        named,
    }))
}

/// The endpoint as it may be logged: credentials in its URL
/// (`https://user:secret@host`) are not.
fn shown(endpoint: &str) -> String {
    let (scheme, rest) = endpoint.split_once("://").unwrap_or(("", endpoint));
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => endpoint.to_owned(),
    }
}

fn install(format: LogFormat, level: &str, tracer: Option<opentelemetry_sdk::trace::Tracer>) {
    // The spans made for export are never logged: a log line does not
    // carry them, and without an exporter no layer wants them.
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive(
            format!("{}=off", homeostat_model::trace::SPANS)
                .parse()
                .expect("a valid directive"),
        );
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let logs = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    };
    // Exported: the spans made for it, and the controllers' runs.
    let traces = tracer.map(|tracer| {
        // Without the source location, thread and busy/idle times a span
        // would carry: they say nothing of a job, and cost at every span.
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(
                Targets::new()
                    .with_target(homeostat_model::trace::SPANS, LevelFilter::INFO)
                    .with_target("homeostat_runtime", LevelFilter::INFO),
            )
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .init();
}

#[cfg(test)]
mod tests {
    use super::{Settings, wanted};

    fn env<'a>(vars: &'a [(&str, &str)]) -> impl Fn(&str) -> Option<String> + 'a {
        |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn traces_are_exported_only_when_asked() {
        assert_eq!(wanted(env(&[])), Ok(None));
        assert_eq!(
            wanted(env(&[(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http://collector:4318/"
            )])),
            Ok(Some(Settings {
                endpoint: "http://collector:4318/v1/traces".into(),
                named: false
            }))
        );
        assert_eq!(
            wanted(env(&[
                ("OTEL_TRACES_EXPORTER", "otlp"),
                ("OTEL_SERVICE_NAME", "cp")
            ])),
            Ok(Some(Settings {
                endpoint: "http://localhost:4318/v1/traces".into(),
                named: true
            }))
        );
        let named = wanted(env(&[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c/t"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=prod, service.name=cp",
            ),
        ]));
        assert_eq!(named.unwrap().unwrap().endpoint, "http://c/t");
        for off in [
            [
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_SDK_DISABLED", "true"),
            ],
            [
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_TRACES_EXPORTER", "none"),
            ],
        ] {
            assert_eq!(wanted(env(&off)), Ok(None), "{off:?}");
        }
    }

    #[test]
    fn credentials_in_the_endpoint_are_not_shown() {
        let s = wanted(env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "https://user:s3cret@collector:4318/v1/traces",
        )]))
        .unwrap()
        .unwrap();
        assert_eq!(s.endpoint, "https://***@collector:4318/v1/traces");
        assert_eq!(super::shown("http://c:4318/a@b"), "http://c:4318/a@b");
    }

    #[test]
    fn what_cannot_be_followed_is_refused_by_name() {
        let e = wanted(env(&[("OTEL_TRACES_EXPORTER", "zipkin")])).unwrap_err();
        assert!(e.contains("OTEL_TRACES_EXPORTER=zipkin"), "{e}");
        let e = wanted(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]))
        .unwrap_err();
        assert!(e.contains("OTEL_EXPORTER_OTLP_PROTOCOL=grpc"), "{e}");
    }
}
