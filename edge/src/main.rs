//! `meridian-edge`: the edge proxy binary. Parses the command line, installs
//! logging and signal handling, and runs the library's [`meridian_edge::Edge`].

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use meridian_edge::{Edge, EdgeConfig};
use tokio::signal::unix::{SignalKind, signal};

/// Meridian edge: a residency-aware, latency-aware reverse proxy in front of storage
/// providers.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve with the given config. SIGHUP reloads the config file and certificates
    /// (a bad file is refused and the running config kept); SIGTERM or SIGINT drain
    /// in-flight requests up to `shutdown.drain_timeout`, then exit 0.
    Run {
        /// Path of the TOML config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Log format.
        #[arg(long, value_enum, default_value_t = LogFormat::Human)]
        log_format: LogFormat,
    },
    /// Check a config file and exit: 0 when it is valid, 1 with the offending key and
    /// line when it is not.
    CheckConfig {
        /// Path of the TOML config file.
        file: PathBuf,
    },
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    Human,
    Json,
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
        Command::Run { config, log_format } => {
            init_logging(log_format);
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(config)) {
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

async fn run(path: PathBuf) -> anyhow::Result<()> {
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
        admin = ?edge.admin_addr,
        "meridian-edge serving"
    );
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
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

/// Diagnostics go to stderr, human or JSON as asked; the access log (target
/// `meridian::access`, one line per request with its routing decision) is its own
/// stream: JSON lines on stdout.
fn init_logging(format: LogFormat) {
    use tracing_subscriber::filter::{FilterFn, filter_fn};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer, fmt};

    const ACCESS: &str = "meridian::access";
    let filter = EnvFilter::try_from_env("MERIDIAN_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let not_access = FilterFn::new(|m| m.target() != ACCESS);
    let diagnostics = match format {
        LogFormat::Human => fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(not_access)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(not_access)
            .boxed(),
    };
    let access = fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_writer(std::io::stdout)
        .with_filter(filter_fn(|m| m.target() == ACCESS));
    tracing_subscriber::registry()
        .with(filter)
        .with(diagnostics)
        .with(access)
        .init();
}
