//! Traces: every tool call is a `tracing` span carrying OpenTelemetry's GenAI and MCP
//! semantic-convention attributes, and [`JsonlTraceLayer`] writes each finished span as one
//! JSON line (the default exporter: a file any OTLP collector's filelog receiver, `jq` or a
//! notebook can read).
//!
//! A tool call's span is named `execute_tool {tool}` and carries `gen_ai.operation.name`
//! (`execute_tool`), `gen_ai.tool.name`, `mcp.method.name` (`tools/call`),
//! `gen_ai.tool.call.arguments.hash` (BLAKE3 of the arguments' JSON: the call is traceable
//! without its arguments, which may be private, in the trace), and on completion `outcome`
//! (`ok` or `tool_error`) and `error.type`. It is the child of its request's span: every
//! request and notification the transports serve is a span too ([`crate::traced`]). The line
//! adds the span's name, id, its parent's id, start time and duration.

use std::io::Write;
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tracing::Subscriber;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// The hash a trace records for a tool call's arguments: `blake3:` and the hex digest of
/// their JSON.
pub fn arguments_hash(arguments: &impl serde::Serialize) -> String {
    let json = serde_json::to_vec(arguments).unwrap_or_default();
    format!("blake3:{}", blake3::hash(&json).to_hex())
}

/// A `tracing` layer writing each closed span, with its fields, as one JSON line to `W`.
#[derive(Debug)]
pub struct JsonlTraceLayer<W> {
    out: Mutex<W>,
}

impl<W: Write> JsonlTraceLayer<W> {
    /// Lines go to `out` (a file, or a buffer in tests), one write per span.
    pub fn new(out: W) -> Self {
        Self {
            out: Mutex::new(out),
        }
    }
}

/// What a span collects while open.
struct Open {
    fields: Map<String, Value>,
    started: Instant,
    start_unix_nanos: u128,
}

struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), format!("{value:?}").into());
    }
}

impl<S, W> Layer<S> for JsonlTraceLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: Write + 'static,
{
    fn on_new_span(&self, attributes: &Attributes<'_>, id: &Id, context: Context<'_, S>) {
        let mut fields = Map::new();
        attributes.record(&mut Fields(&mut fields));
        if let Some(span) = context.span(id) {
            span.extensions_mut().insert(Open {
                fields,
                started: Instant::now(),
                start_unix_nanos: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            });
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, context: Context<'_, S>) {
        if let Some(span) = context.span(id)
            && let Some(open) = span.extensions_mut().get_mut::<Open>()
        {
            values.record(&mut Fields(&mut open.fields));
        }
    }

    fn on_close(&self, id: Id, context: Context<'_, S>) {
        let Some(span) = context.span(&id) else {
            return;
        };
        let Some(open) = span.extensions_mut().remove::<Open>() else {
            return;
        };
        let mut line = Map::new();
        line.insert("name".into(), span.name().into());
        // tracing's ids are unique among open spans: with the start time they tie a tool
        // call's span to its request's.
        line.insert("span_id".into(), id.into_u64().into());
        if let Some(parent) = span.parent() {
            line.insert("parent_id".into(), parent.id().into_u64().into());
        }
        line.insert(
            "start_unix_nanos".into(),
            Value::from(u64::try_from(open.start_unix_nanos).unwrap_or(u64::MAX)),
        );
        line.insert(
            "duration_ms".into(),
            (open.started.elapsed().as_secs_f64() * 1e3).into(),
        );
        line.insert("attributes".into(), Value::Object(open.fields));
        let mut text = Value::Object(line).to_string();
        text.push('\n');
        let mut out = self
            .out
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // A trace that cannot be written must not fail the call it describes.
        let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    }
}

/// Spans exported to an OpenTelemetry collector over OTLP/HTTP (protobuf), batched on the
/// SDK's own thread: what a deployment sends to Jaeger, Tempo or any OTLP endpoint instead of
/// (or beside) the JSONL file. `endpoint` is the collector's traces URL
/// (`http://127.0.0.1:4318/v1/traces`); spans carry `service.name` = `service`. Keep the
/// provider: [`SdkTracerProvider::shutdown`](opentelemetry_sdk::trace::SdkTracerProvider::shutdown)
/// flushes the last batch at exit.
///
/// # Errors
///
/// [`Error::Transport`](crate::Error::Transport) when the exporter cannot be built (a bad
/// endpoint).
#[cfg(feature = "otlp")]
#[cfg_attr(docsrs, doc(cfg(feature = "otlp")))]
pub fn otlp_layer<S>(
    endpoint: &str,
    service: &str,
) -> crate::Result<(impl Layer<S>, opentelemetry_sdk::trace::SdkTracerProvider)>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;
    crate::serving::install_crypto_provider();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .build()
        .map_err(|error| crate::Error::Transport {
            transport: "otlp",
            source: Box::new(error),
        })?;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("mlinfra-agent"));
    Ok((layer, provider))
}
