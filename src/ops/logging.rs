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
    EnvFilter::try_new(quieted(level)).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// `level` with the noisy dependencies at `error` unless it names them.
fn quieted(level: &str) -> String {
    let mut spec = level.to_string();
    for target in NOISY.iter().filter(|t| !level.contains(*t)) {
        spec.push_str(&format!(",{target}=error"));
    }
    spec
}

/// Swaps the filter of the installed subscriber (set by `init`).
type LevelSetter = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

/// The running server's filter switch; unset until `init`.
static SET_FILTER: std::sync::OnceLock<LevelSetter> = std::sync::OnceLock::new();

/// Installs the global subscriber for `log`; its level can change later with [`set_level`].
pub fn init(log: &LogConfig) {
    // The filter comes last: the reload handle's type names the format and writer.
    let base = tracing_subscriber::fmt().with_ansi(false);
    match log.format {
        LogFormat::Text => {
            let b = base
                .event_format(Logfmt)
                .with_writer(|| VisibleStderr)
                .with_env_filter(filter(&log.level))
                .with_filter_reloading();
            let handle = b.reload_handle();
            let _ = SET_FILTER.set(Box::new(move |f| {
                handle.reload(f).map_err(|e| e.to_string())
            }));
            b.init();
        }
        LogFormat::Json => {
            let b = base
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .with_writer(std::io::stderr)
                .with_env_filter(filter(&log.level))
                .with_filter_reloading();
            let handle = b.reload_handle();
            let _ = SET_FILTER.set(Box::new(move |f| {
                handle.reload(f).map_err(|e| e.to_string())
            }));
            b.init();
        }
    }
}

/// Applies a new `[log] level` (SIGHUP, `tlsrelay reload`); `RUST_LOG`, when
/// set, still wins. Says what happened.
pub fn set_level(level: &str) -> Result<String, String> {
    if std::env::var_os("RUST_LOG").is_some() {
        return Ok("log level kept: RUST_LOG overrides [log] level".into());
    }
    let f =
        EnvFilter::try_new(quieted(level)).map_err(|e| format!("[log] level {level:?}: {e}"))?;
    match SET_FILTER.get() {
        Some(set) => set(f).map(|()| format!("log level {level}")),
        None => Ok("log level kept: no log subscriber of ours".into()),
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
