//! What the edge and the control plane record the same way: the Prometheus recorder
//! (one per process, histogram buckets fit for a CDN) and the log streams
//! (diagnostics human or JSON on stderr; the access log as its own JSON stream).
//!
//! This crate only sets up recording; it never opens a socket. Each binary serves the
//! rendered text on its own admin listener.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

pub use metrics_exporter_prometheus::PrometheusHandle;

mod hist;

pub use hist::{SecondsHistogram, seconds_histogram};

/// Upper bounds of every `_seconds` histogram: 1 ms (a cache hit next door) to 60 s
/// (a large object over a slow link).
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// How often histogram samples are folded into their buckets between scrapes, so
/// that memory stays bounded however rarely Prometheus comes.
const UPKEEP: Duration = Duration::from_secs(5);

static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder, installed as the global `metrics` recorder on first use.
///
/// When something else installed a global recorder first (a test harness), the
/// handle renders an empty page rather than failing the binary.
pub fn recorder() -> &'static PrometheusHandle {
    RECORDER.get_or_init(|| {
        // The only refusal is an empty bucket list, which SECONDS_BUCKETS is not.
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        let upkeep = handle.clone();
        let _ = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP);
                    upkeep.run_upkeep();
                }
            });
        handle
    })
}

/// The exposition text of every metric recorded so far.
pub fn render() -> String {
    let mut text = recorder().render();
    hist::render_into(&mut text);
    text
}

/// The `status` label of an HTTP status code: `1xx` ... `5xx` (anything else counts
/// as `5xx`), so that both binaries label answers alike.
pub fn status_class(code: u16) -> &'static str {
    match code / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How diagnostics are written.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per line.
    Json,
}

/// Where the access log goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessLog {
    /// JSON lines on stdout.
    Stdout,
    /// JSON lines appended to this file; [`AccessFile::reopen`] follows rotation.
    File(PathBuf),
    /// Not written.
    Off,
}

impl std::str::FromStr for AccessLog {
    type Err = std::convert::Infallible;

    /// `stdout`, `off`, or a file path.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "stdout" | "-" => AccessLog::Stdout,
            "off" | "none" => AccessLog::Off,
            path => AccessLog::File(PathBuf::from(path)),
        })
    }
}

/// The `tracing` target of access-log events; events of any other target are
/// diagnostics.
pub const ACCESS_TARGET: &str = "meridian::access";

/// Logging could not start.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The access-log file could not be opened for appending.
    #[error("access log {path}: {source}")]
    AccessFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// The access-log file, reopened on request so that log rotation can move it away.
#[derive(Clone, Debug)]
pub struct AccessFile {
    path: PathBuf,
    file: std::sync::Arc<Mutex<File>>,
}

impl AccessFile {
    fn open(path: &std::path::Path) -> Result<AccessFile, LogError> {
        let file = open_append(path).map_err(|source| LogError::AccessFile {
            path: path.to_owned(),
            source,
        })?;
        Ok(AccessFile {
            path: path.to_owned(),
            file: std::sync::Arc::new(Mutex::new(file)),
        })
    }

    /// Opens the path again (creating it if rotation moved it away); lines written
    /// from now on go to the new file. On failure the old file keeps receiving them.
    pub fn reopen(&self) -> Result<(), LogError> {
        let fresh = open_append(&self.path).map_err(|source| LogError::AccessFile {
            path: self.path.clone(),
            source,
        })?;
        *self.file.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }
}

/// One access-log line's writer: holds the file for the line, so lines never
/// interleave.
pub struct AccessLine<'a>(std::sync::MutexGuard<'a, File>);

impl io::Write for AccessLine<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for AccessFile {
    type Writer = AccessLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        AccessLine(self.file.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Installs the global subscriber: diagnostics on stderr in `format`, filtered by
/// `MERIDIAN_LOG` (default `info`); access-log events as flat JSON lines to `access`,
/// whatever the diagnostics' level. Returns the access-log file, when there is one,
/// for reopening after rotation.
pub fn init_logging(format: LogFormat, access: &AccessLog) -> Result<Option<AccessFile>, LogError> {
    use tracing_subscriber::filter::{FilterFn, filter_fn};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer, fmt};

    // A quiet `MERIDIAN_LOG=warn` is about diagnostics: the access log stays on.
    let level = std::env::var("MERIDIAN_LOG").unwrap_or_else(|_| "info".to_owned());
    // With the access log off, its events are disabled at their call sites.
    let access_level = if *access == AccessLog::Off { "off" } else { "info" };
    let filter = EnvFilter::try_new(format!("{level},{ACCESS_TARGET}={access_level}"))
        .or_else(|_| EnvFilter::try_new(format!("info,{ACCESS_TARGET}={access_level}")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let not_access = FilterFn::new(|m| m.target() != ACCESS_TARGET);
    let diagnostics = match format {
        LogFormat::Human => fmt::layer().with_writer(io::stderr).with_filter(not_access).boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .with_writer(io::stderr)
            .with_filter(not_access)
            .boxed(),
    };
    let access_layer = |writer| {
        fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(writer)
            .with_filter(filter_fn(|m| m.target() == ACCESS_TARGET))
            .boxed()
    };
    let mut reopen = None;
    let access = match access {
        AccessLog::Stdout => Some(access_layer(fmt::writer::BoxMakeWriter::new(io::stdout))),
        AccessLog::File(path) => {
            let file = AccessFile::open(path)?;
            reopen = Some(file.clone());
            Some(access_layer(fmt::writer::BoxMakeWriter::new(file)))
        }
        AccessLog::Off => None,
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(diagnostics)
        .with(access)
        .try_init();
    Ok(reopen)
}

fn open_append(path: &std::path::Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_log_destinations_parse() {
        assert_eq!("stdout".parse::<AccessLog>(), Ok(AccessLog::Stdout));
        assert_eq!("off".parse::<AccessLog>(), Ok(AccessLog::Off));
        assert_eq!(
            "/var/log/a.log".parse::<AccessLog>(),
            Ok(AccessLog::File("/var/log/a.log".into()))
        );
    }

    #[test]
    fn seconds_histograms_have_cdn_buckets() {
        recorder();
        metrics::histogram!("meridian_test_duration_seconds").record(0.002);
        let text = render();
        assert!(
            text.contains("meridian_test_duration_seconds_bucket{le=\"0.001\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("meridian_test_duration_seconds_bucket{le=\"0.0025\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("meridian_test_duration_seconds_bucket{le=\"60\"} 1"),
            "{text}"
        );
    }
}
