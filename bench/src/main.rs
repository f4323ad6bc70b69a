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
        /// Rounds per size: each runs every target once closed loop and then once at
        /// the fixed rate, `--duration` each, in a rotated order, so drift on a shared
        /// machine is spread over all of them; figures are over all rounds, and each
        /// ratio is also listed round by round with a 95 % interval. A multiple of
        /// four (the targets) runs every target once in every position.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=100))]
        rounds: u32,
        /// Response sizes to measure, comma-separated: `1k` (1 KiB at --rate-small, the
        /// proxies' per-request work) and `1m` (1 MiB at --rate-large, moving bytes).
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = [compare::Size::Small, compare::Size::Large])]
        sizes: Vec<compare::Size>,
        /// Also write the markdown report to this file.
        #[arg(long)]
        out: Option<PathBuf>,
        /// An edge build to measure, NAME=PATH (e.g. `plain=target/release/meridian-edge`
        /// `pgo=target/pgo/release/meridian-edge`, see scripts/build-pgo); repeatable:
        /// each runs side by side with the others, nginx and HAProxy. Default: the
        /// `meridian-edge` beside this binary, named `meridian`.
        #[arg(long = "edge", value_name = "NAME=PATH", value_parser = parse_edge)]
        edges: Vec<(String, PathBuf)>,
        /// Give the proxies one CPU to themselves (the first this process may use, CPU 0
        /// on most machines), one worker each, and run the load generator, the
        /// provider and wrk on the other CPUs, so a proxy's CPU is not
        /// shaped by where the kernel places the provider and the clients (a deployment
        /// does not run them on the proxy's cores). Needs two CPUs or more.
        #[arg(long)]
        pin: bool,
    },
    /// Load a target with a request mix, open loop at a fixed rate
    /// (coordinated-omission corrected) or closed loop; print latency quantiles
    /// (HDR histogram) and optionally JSON.
    Load {
        /// Target address (host:port).
        #[arg(long)]
        target: SocketAddr,
        /// `Host` header.
        #[arg(long, default_value = "localhost")]
        host: String,
        /// GET this path, PATH[:WEIGHT]; repeatable.
        #[arg(long = "get")]
        gets: Vec<String>,
        /// Store an object of SIZE (e.g. 1MiB) first, then GET it, SIZE[:WEIGHT];
        /// repeatable: the object-size mix.
        #[arg(long = "object")]
        objects: Vec<String>,
        /// PUT a body of SIZE, SIZE[:WEIGHT]; repeatable: the request-size mix.
        #[arg(long = "put")]
        puts: Vec<String>,
        /// Requests per second (open loop).
        #[arg(long, default_value_t = 1000.0, conflicts_with = "closed")]
        rate: f64,
        /// Closed loop: each connection sends as fast as answers come.
        #[arg(long)]
        closed: bool,
        /// Speak HTTP/2 instead of HTTP/1.1 (prior knowledge, or ALPN with --ca).
        #[arg(long, conflicts_with = "h3")]
        h2: bool,
        /// Speak HTTP/3 over QUIC (needs --ca).
        #[arg(long, requires = "ca")]
        h3: bool,
        /// Speak TLS to the target, trusting this CA (PEM); `--host` is the server name.
        #[arg(long, value_name = "PEM")]
        ca: Option<PathBuf>,
        /// Seconds to run.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Concurrent workers: HTTP/1.1 connections, or HTTP/2 streams in flight.
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Write the result as JSON to FILE (`-` for stdout, instead of the summary).
        #[arg(long)]
        json: Option<PathBuf>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Run a world scenario (bench/scenarios/*.toml): edges, providers and users in
    /// network namespaces with delays from geography on the wire, the real control
    /// plane and edges, timed events; prints the report (markdown). Needs root.
    World {
        /// The scenario file.
        scenario: PathBuf,
        /// Seconds of probing before the users start.
        #[arg(long, default_value_t = 5)]
        warmup: u64,
        /// Also write the report to this file.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also write every request to this file as CSV: user group, start and
        /// completion (ms from the scenario's start), status, provider, size, and the
        /// oracle's completion for it.
        #[arg(long)]
        records: Option<PathBuf>,
        /// `namespaces` (delay on the wire; root), `loopback` (delay relays), or
        /// `auto`: namespaces when they can be made here.
        #[arg(long, default_value = "auto", value_parser = ["auto", "namespaces", "loopback"])]
        network: String,
    },
    /// HTTP/3 against HTTP/2 (TLS) through one edge, same upstream, same run:
    /// requests/s, latency at a fixed rate, edge CPU per request. Build with --release.
    Protocols {
        /// Seconds per phase.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Fixed request rate for 1 KiB responses.
        #[arg(long, default_value_t = 2000.0)]
        rate: f64,
        /// Streams in flight.
        #[arg(long, default_value_t = 32)]
        streams: usize,
        /// Also write the markdown report to this file.
        #[arg(long)]
        out: Option<PathBuf>,
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
    /// Drive an edge binary built to write a profile (`-Cprofile-generate`) with the
    /// workload a profile-guided build learns from: every protocol, small and large
    /// objects, uploads, refusals; then stop it with SIGTERM so it writes the profile.
    /// Used by `scripts/build-pgo`; fails if any request fails or the edge does not
    /// exit 0.
    Train {
        /// The edge binary to drive.
        #[arg(long)]
        edge: PathBuf,
        /// Seconds per load phase (seven phases).
        #[arg(long, default_value_t = 5)]
        duration: u64,
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
            Cmd::World {
                scenario,
                warmup,
                out,
                records,
                network,
            } => {
                use meridian_bench::world::run::NetworkMode;
                let opts = meridian_bench::world::WorldOptions {
                    scenario,
                    warmup: Duration::from_secs(warmup),
                    records,
                    network: match network.as_str() {
                        "namespaces" => NetworkMode::Namespaces,
                        "loopback" => NetworkMode::Loopback,
                        _ => NetworkMode::Auto,
                    },
                };
                let report = tokio::task::spawn_blocking(move || meridian_bench::world::run(&opts)).await??;
                if let Some(out) = out {
                    std::fs::write(&out, &report)?;
                }
                println!("{report}");
                Ok(())
            }
            Cmd::Protocols {
                duration,
                rate,
                streams,
                out,
            } => {
                let report = meridian_bench::protocols::run_protocols(meridian_bench::protocols::ProtocolOptions {
                    duration: Duration::from_secs(duration),
                    rate,
                    streams,
                    out,
                })
                .await?;
                println!("{report}");
                Ok(())
            }
            Cmd::Train { edge, duration } => {
                let report = meridian_bench::train::run_training(meridian_bench::train::TrainOptions {
                    edge,
                    duration: Duration::from_secs(duration),
                })
                .await?;
                println!("{report}");
                Ok(())
            }
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
                rounds,
                sizes,
                out,
                edges,
                pin,
            } => {
                let report = compare::run(compare::CompareOptions {
                    duration: Duration::from_secs(duration),
                    rate_small,
                    rate_large,
                    connections,
                    rounds: rounds as usize,
                    sizes,
                    out,
                    edges,
                    pin,
                })
                .await?;
                println!("{report}");
                Ok(())
            }
            Cmd::Load {
                target,
                host,
                gets,
                objects,
                puts,
                rate,
                closed,
                h2,
                h3,
                ca,
                duration,
                connections,
                json,
                quiet,
            } => {
                use meridian_bench::load::{self, Op};
                let mut ops = Vec::new();
                for g in &gets {
                    let (path, w) = load::parse_weighted(g).map_err(anyhow::Error::msg)?;
                    ops.push(Op::get(&path, w));
                }
                for o in &objects {
                    let (size, w) = load::parse_weighted(o).map_err(anyhow::Error::msg)?;
                    let size = load::parse_bytes(&size).map_err(anyhow::Error::msg)?;
                    let path = format!("/bench/obj-{size}");
                    meridian_bench::load::store_object(target, &host, &path, size).await?;
                    let mut op = Op::get(&path, w);
                    op.name = format!("GET {}", load::human_bytes(size));
                    ops.push(op);
                }
                for p in &puts {
                    let (size, w) = load::parse_weighted(p).map_err(anyhow::Error::msg)?;
                    ops.push(Op::put(load::parse_bytes(&size).map_err(anyhow::Error::msg)?, w));
                }
                if ops.is_empty() {
                    ops.push(Op::get("/", 1));
                }
                let spec = load::LoadSpec {
                    target,
                    host,
                    mode: if closed {
                        load::Mode::Closed
                    } else {
                        load::Mode::Open { rate }
                    },
                    proto: if h3 {
                        load::Proto::H3
                    } else if h2 {
                        load::Proto::H2
                    } else {
                        load::Proto::H1
                    },
                    duration: Duration::from_secs(duration),
                    connections,
                    ops,
                    progress: !quiet,
                    tls: match &ca {
                        Some(path) => Some(load::roots_from_pem(path)?),
                        None => None,
                    },
                };
                let r = load::run(&spec).await?;
                match json {
                    Some(p) if p.as_os_str() == "-" => println!("{}", serde_json::to_string_pretty(&r.to_json())?),
                    Some(p) => {
                        std::fs::write(&p, serde_json::to_string_pretty(&r.to_json())?)?;
                        print!("{}", r.summary());
                    }
                    None => print!("{}", r.summary()),
                }
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

/// `NAME=PATH` for `compare --edge`: a name for the report's rows (not one of the
/// other targets') and an edge binary.
fn parse_edge(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s.split_once('=').ok_or_else(|| format!("`{s}`: expected NAME=PATH"))?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(format!("`{name}`: an edge's name is letters, digits, `-` and `_`"));
    }
    if matches!(name, "direct" | "nginx" | "haproxy") {
        return Err(format!("`{name}` names another target of the comparison"));
    }
    Ok((name.to_owned(), PathBuf::from(path)))
}

#[cfg(test)]
mod tests {
    use super::parse_edge;

    #[test]
    fn an_edge_is_a_name_and_a_path_and_the_name_is_its_own() {
        assert_eq!(
            parse_edge("pgo=target/pgo/release/meridian-edge").unwrap(),
            ("pgo".to_owned(), "target/pgo/release/meridian-edge".into())
        );
        for (arg, says) in [
            ("target/release/meridian-edge", "expected NAME=PATH"),
            ("=x", "an edge's name"),
            ("a b=x", "an edge's name"),
            ("nginx=x", "names another target"),
        ] {
            let e = parse_edge(arg).unwrap_err();
            assert!(e.contains(says), "{arg}: {e}");
        }
    }
}
