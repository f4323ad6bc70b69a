//! `meridian-edge`: the edge proxy binary. Parses the command line, installs
//! logging, the metrics recorder and signal handling, and runs the library's
//! [`meridian_edge::Edge`].

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use meridian_edge::{Edge, EdgeConfig};
use meridian_telemetry::{AccessLog, LogFormat, init_logging};
use tokio::signal::unix::{SignalKind, signal};

// A request allocates and frees dozens of small blocks on one worker thread;
// mimalloc's thread-local free lists serve them with less work and fewer cache
// misses than glibc's arenas (measured: `bench/README.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The version `--version` prints, saying how the binary was optimised when it was
/// built by `scripts/build-pgo` (which sets `MERIDIAN_PGO`): benchmark reports
/// print it, so a figure is never read as another build's.
const VERSION: &str = match option_env!("MERIDIAN_PGO") {
    Some(_) => concat!(env!("CARGO_PKG_VERSION"), " (profile-guided)"),
    None => env!("CARGO_PKG_VERSION"),
};

/// Meridian edge: a residency-aware, latency-aware reverse proxy in front of storage
/// providers.
#[derive(Parser, Debug)]
#[command(version = VERSION, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve with the given config. SIGHUP reloads the config file and certificates
    /// (a bad file is refused and the running config kept) and reopens the access-log
    /// file; SIGTERM or SIGINT drain
    /// in-flight requests up to `shutdown.drain_timeout`, then exit 0.
    Run {
        /// Path of the TOML config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Format of the diagnostic log on stderr (level from `MERIDIAN_LOG`, e.g.
        /// `info` or `meridian_edge=debug`).
        #[arg(long, value_enum, default_value_t = LogFormat::Human)]
        log_format: LogFormat,
        /// Where the access log goes: `stdout`, `off`, or a file to append to (reopened
        /// on SIGHUP, for log rotation). One JSON line per request with its routing
        /// decision; `log.access` in the config switches it on and off at reload.
        #[arg(long, default_value = "stdout", value_name = "stdout|off|PATH")]
        access_log: AccessLog,
    },
    /// Check a config file and exit: 0 when it is valid, 1 with the offending key and
    /// line when it is not.
    CheckConfig {
        /// Path of the TOML config file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match check(&file) {
            Ok(()) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run {
            config,
            log_format,
            access_log,
        } => {
            let access_file = match init_logging(log_format, &access_log) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            meridian_edge::record::install();
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(config, access_file)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn check(file: &std::path::Path) -> anyhow::Result<()> {
    let cfg = EdgeConfig::load(file)?;
    // Certificates must also parse, not merely exist.
    if !cfg.tls.certificates.is_empty() {
        meridian_edge::tls::SniResolver::new(&cfg.tls, meridian_edge::tls::crypto_provider())?;
    }
    Ok(())
}

async fn run(path: PathBuf, access_file: Option<meridian_telemetry::AccessFile>) -> anyhow::Result<()> {
    let config = EdgeConfig::load(&path)?;
    // Handlers first: once the listeners are up (readiness answers), a SIGHUP or
    // SIGTERM must be handled, not take the default action and kill the process.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut edge = Edge::start(config).await.context("starting the edge")?;
    tracing::info!(
        http = ?edge.http_addr,
        https = ?edge.https_addr,
        h3 = ?edge.h3_addr,
        admin = ?edge.admin_addr,
        "meridian-edge serving"
    );
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                // After rotation moved the access log away, write to a new file.
                if let Some(f) = &access_file {
                    if let Err(e) = f.reopen() {
                        tracing::error!("cannot reopen the access log, still writing the old file: {e}");
                    }
                }
                match EdgeConfig::load(&path).map_err(anyhow::Error::from).and_then(|c| edge.reload(c).map_err(anyhow::Error::from)) {
                    Ok(()) => tracing::info!(config = %path.display(), "reloaded config and certificates"),
                    Err(e) => tracing::error!(config = %path.display(), "reload refused, keeping the running config: {e:#}"),
                }
            }
        }
    }
    tracing::info!("draining");
    if edge.shutdown().await {
        tracing::info!("drained; exiting");
    } else {
        tracing::warn!("drain deadline passed with requests in flight; exiting");
    }
    Ok(())
}
