//! `meridian-bench`: the dev deployment, benchmarks and simulated providers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use meridian_bench::{compare, dev};
use meridian_sim::{SimConfig, SimProvider, Storage};

/// Meridian's bench toolkit: a local deployment to try things, and side-by-side
/// benchmarks against other proxies on this machine.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start a complete local deployment: simulated providers and the real edge on
    /// 127.0.0.1 (HTTP 8080, HTTPS 8443, admin 9901). Ctrl-C stops everything.
    Dev {
        /// Directory for the generated config, certificates and data.
        #[arg(long, default_value = ".dev")]
        dir: PathBuf,
        /// Keep provider objects on disk under DIR/data instead of in memory.
        #[arg(long)]
        disk: bool,
    },
    /// Compare the edge with nginx and with direct access: requests/s, latency at a
    /// fixed rate, CPU per request. Build with --release first for meaningful numbers.
    Compare {
        /// Seconds per phase.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Fixed request rate for 1 KiB responses.
        #[arg(long, default_value_t = 2000.0)]
        rate_small: f64,
        /// Fixed request rate for 1 MiB responses.
        #[arg(long, default_value_t = 200.0)]
        rate_large: f64,
        /// Client connections.
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Also write the markdown report to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Send GETs at a fixed rate (open loop, coordinated-omission corrected) and print
    /// latency quantiles.
    Load {
        /// Target address (host:port).
        #[arg(long)]
        target: SocketAddr,
        /// Request path.
        #[arg(long, default_value = "/")]
        path: String,
        /// Requests per second.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Seconds to run.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Keep-alive connections.
        #[arg(long, default_value_t = 32)]
        connections: usize,
    },
    /// Subscribe many lightweight edge clients to one real control plane and time
    /// API change -> ACK, and control-plane memory per edge. Build with --release.
    PushScale {
        /// Edge clients (all in this process, one shared QUIC endpoint).
        #[arg(long, default_value_t = 1000)]
        edges: usize,
        /// API changes to time.
        #[arg(long, default_value_t = 20)]
        changes: usize,
        /// Use the HTTP/2 transport instead of QUIC.
        #[arg(long)]
        h2: bool,
    },
    /// Run one simulated provider (an S3-style object store) until killed. Its
    /// impairments can be changed while it runs: `PUT /_sim/impair` with a JSON body
    /// such as {"latency_ms": 50, "bandwidth_bps": 1000000, "error_rate": 0.1,
    /// "stall_rate": 0.01}.
    Upstream {
        /// Listening address.
        #[arg(long)]
        addr: SocketAddr,
        /// Keep objects in this directory instead of memory.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Name reported in `x-sim-provider`.
        #[arg(long, default_value = "upstream")]
        name: String,
        /// Milliseconds added before every response head.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Response-body bytes per second over all responses (0: unlimited).
        #[arg(long, default_value_t = 0)]
        bandwidth_bps: u64,
        /// Fraction of requests answered 503.
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
        /// Fraction of response bodies that stop halfway.
        #[arg(long, default_value_t = 0.0)]
        stall_rate: f64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("MERIDIAN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Cmd::Dev { dir, disk } => dev::run(dev::DevOptions { dir, disk }).await,
            Cmd::PushScale { edges, changes, h2 } => {
                let transport = if h2 {
                    meridian_edge::config::PushTransport::H2
                } else {
                    meridian_edge::config::PushTransport::Quic
                };
                let report = meridian_bench::push_scale::run(meridian_bench::push_scale::ScaleOptions {
                    edges,
                    changes,
                    transport,
                })
                .await?;
                println!("{report}");
                Ok(())
            }
            Cmd::Compare {
                duration,
                rate_small,
                rate_large,
                connections,
                out,
            } => {
                let report = compare::run(compare::CompareOptions {
                    duration: Duration::from_secs(duration),
                    rate_small,
                    rate_large,
                    connections,
                    out,
                })
                .await?;
                println!("{report}");
                Ok(())
            }
            Cmd::Load {
                target,
                path,
                rate,
                duration,
                connections,
            } => {
                let spec = meridian_bench::load::LoadSpec {
                    target,
                    host: "localhost".into(),
                    path,
                    rate,
                    duration: Duration::from_secs(duration),
                    connections,
                };
                let r = meridian_bench::load::fixed_rate(&spec).await?;
                println!(
                    "ok={} errors={} p50={:.3}ms p99={:.3}ms p99.9={:.3}ms max={:.3}ms",
                    r.ok,
                    r.errors,
                    r.ms(0.5),
                    r.ms(0.99),
                    r.ms(0.999),
                    r.latency_us.max() as f64 / 1000.0
                );
                Ok(())
            }
            Cmd::Upstream {
                addr,
                dir,
                name,
                latency_ms,
                bandwidth_bps,
                error_rate,
                stall_rate,
            } => {
                let impairments = meridian_sim::Impairments {
                    latency_ms,
                    bandwidth_bps,
                    error_rate,
                    stall_rate,
                };
                impairments.check().map_err(anyhow::Error::msg)?;
                let storage = dir.map_or(Storage::Memory, Storage::Disk);
                let p = SimProvider::start(SimConfig {
                    name,
                    addr,
                    storage,
                    tls: None,
                    objects: None,
                })
                .await?;
                p.set_impairments(impairments);
                tokio::signal::ctrl_c().await?;
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
