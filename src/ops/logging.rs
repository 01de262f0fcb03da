//! The server's log: one line per event on stderr (journald under systemd), as
//! logfmt text (`time=… level=info target=… msg="…" key=value …`) that people read
//! and key=value parsers split, or as one JSON object per line for pipelines.
//!
//! Dependencies log at `error` only unless the filter names them: hickory's
//! DNSSEC warnings dump internal structures an operator cannot act on; the
//! relay logs what a DNS failure means for delivery itself.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};
use crate::model::visible::logfmt_value;

/// Targets quieted to `error` unless the configured filter mentions them.
const NOISY: &[&str] = &[
    "hickory_net",
    "hickory_proto",
    "hickory_resolver",
    "hickory_server",
];

/// The filter for `level`, with the noisy dependencies quieted; `RUST_LOG` wins.
pub fn filter(level: &str) -> EnvFilter {
    if let Ok(f) = EnvFilter::try_from_default_env() {
        return f;
    }
    let mut spec = level.to_string();
    for target in NOISY.iter().filter(|t| !level.contains(*t)) {
        spec.push_str(&format!(",{target}=error"));
    }
    EnvFilter::try_new(spec).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the global subscriber for `log`.
pub fn init(log: &LogConfig) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(&log.level))
        .with_ansi(false);
    match log.format {
        LogFormat::Text => builder
            .event_format(Logfmt)
            .with_writer(|| VisibleStderr)
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .init(),
    }
}

/// The logfmt text format.
pub struct Logfmt;

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let level = meta.level().as_str().to_ascii_lowercase();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let msg = logfmt_value(&fields.message);
        write!(
            writer,
            "time={time} level={level} target={} msg={msg}",
            meta.target()
        )?;
        for (k, v) in &fields.pairs {
            write!(writer, " {k}={}", logfmt_value(v))?;
        }
        writeln!(writer)
    }
}

/// An event's message and its other fields, in order.
#[derive(Default)]
struct Fields {
    message: String,
    pairs: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}"));
    }
}

impl Fields {
    fn put(&mut self, field: &Field, value: String) {
        match field.name() {
            "message" => self.message = value,
            name => self.pairs.push((name, value)),
        }
    }
}

/// Stderr for text lines, with any control character left in them shown as an
/// escape: a last guard so that nothing from the network drives the terminal
/// or forges a line (the logfmt values are escaped already).
struct VisibleStderr;

impl std::io::Write for VisibleStderr {
    /// tracing-subscriber writes each event whole, so the line end it adds is the last byte.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let (body, end) = match text.strip_suffix('\n') {
            Some(body) => (body, "\n"),
            None => (&*text, ""),
        };
        let line = format!("{}{end}", crate::model::visible::visible(body));
        std::io::stderr().lock().write_all(line.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
