//! `meridian-cp`: the Meridian control plane.
//!
//! `serve` runs the durable store, the authenticated admin API and push to edges;
//! the other subcommands are the operator's CLI over the admin API.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Meridian control plane: owns providers, jurisdictions, policies and tenants, and
/// pushes them to every edge.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How to reach the admin API.
#[derive(clap::Args, Debug)]
struct ApiArgs {
    /// Admin API, https://host:port.
    #[arg(long, env = "MERIDIAN_SERVER", default_value = "https://127.0.0.1:7070")]
    server: String,
    /// Bearer token.
    #[arg(long, env = "MERIDIAN_TOKEN", hide_env_values = true)]
    token: String,
    /// CA bundle that signed the server's certificate (system roots otherwise).
    #[arg(long, env = "MERIDIAN_CA")]
    ca: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Commits `count` successive fleet versions to the store in DIR, printing
    /// `acked VERSION` after each durable commit. Used by the crash-safety test.
    #[command(hide = true)]
    StoreExercise {
        /// Data directory.
        #[arg(long)]
        data: PathBuf,
        /// How many versions to commit.
        #[arg(long, default_value_t = 1000)]
        count: u32,
    },
    /// Serve the admin API (HTTPS, bearer tokens) over the durable store in
    /// `data_dir`. SIGTERM or SIGINT stops it.
    Serve {
        /// Path of the control plane's TOML config.
        #[arg(long, short)]
        config: PathBuf,
        /// Format of the log on stderr (level from `MERIDIAN_LOG`, e.g. `info`).
        #[arg(long, value_enum, default_value_t = meridian_telemetry::LogFormat::Human)]
        log_format: meridian_telemetry::LogFormat,
    },
    /// Print the SHA-256 of a token, for `[[admin.tokens]] sha256` in the config.
    HashToken {
        /// The token.
        token: String,
    },
    /// Check a fleet file (TOML, or JSON) locally, then make it the fleet.
    Apply {
        #[command(flatten)]
        api: ApiArgs,
        /// The fleet file.
        file: PathBuf,
    },
    /// Show a resource: fleet, policy, providers, groups or tenants.
    Get {
        #[command(flatten)]
        api: ApiArgs,
        /// What to show.
        #[arg(value_parser = ["fleet", "policy", "providers", "groups", "tenants"])]
        what: String,
    },
    /// Stop sending new requests to a provider (in-flight ones finish).
    Drain {
        #[command(flatten)]
        api: ApiArgs,
        /// Provider id.
        provider: String,
    },
    /// Resume a drained provider.
    Undrain {
        #[command(flatten)]
        api: ApiArgs,
        /// Provider id.
        provider: String,
    },
    /// Which providers the policy allows for data of ORIGIN (omit it for an unknown
    /// origin), and with --edge which one that edge would choose by its reports.
    DryRun {
        #[command(flatten)]
        api: ApiArgs,
        /// ISO 3166-1 alpha-2 origin, e.g. CN.
        origin: Option<String>,
        /// Edge id whose view of the providers decides the choice.
        #[arg(long)]
        edge: Option<String>,
    },
    /// Edges subscribed to this control plane.
    Edge {
        #[command(subcommand)]
        command: EdgeCommand,
    },
}

#[derive(Subcommand, Debug)]
enum EdgeCommand {
    /// Every edge (or one): connected or not, transport, the version it runs, its last
    /// ACK and NACK (with the reason), and the providers down for the fleet.
    Status {
        #[command(flatten)]
        api: ApiArgs,
        /// One edge's id; all edges when omitted.
        id: Option<String>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::StoreExercise { data, count } => match store_exercise(&data, count) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Apply { api, file } => cli(api, |t| async move {
            let fleet = meridian_cp::client::read_fleet(&file).map_err(anyhow::Error::msg)?;
            let body = serde_json::to_value(&fleet)?;
            Ok(meridian_cp::client::call(&t, http::Method::PUT, "/v1/fleet", Some(body)).await?)
        }),
        Command::Get { api, what } => cli(api, |t| async move {
            Ok(meridian_cp::client::call(&t, http::Method::GET, &format!("/v1/{what}"), None).await?)
        }),
        Command::Drain { api, provider } => cli(api, |t| async move {
            let path = format!("/v1/providers/{provider}/drain");
            Ok(meridian_cp::client::call(&t, http::Method::POST, &path, None).await?)
        }),
        Command::Undrain { api, provider } => cli(api, |t| async move {
            let path = format!("/v1/providers/{provider}/undrain");
            Ok(meridian_cp::client::call(&t, http::Method::POST, &path, None).await?)
        }),
        Command::Edge {
            command: EdgeCommand::Status { api, id },
        } => cli(api, |t| async move {
            let path = match id {
                Some(id) => format!("/v1/edges/{id}"),
                None => "/v1/edges".to_owned(),
            };
            Ok(meridian_cp::client::call(&t, http::Method::GET, &path, None).await?)
        }),
        Command::DryRun { api, origin, edge } => cli(api, |t| async move {
            let body = serde_json::json!({ "origin": origin, "edge": edge });
            Ok(meridian_cp::client::call(&t, http::Method::POST, "/v1/dry-run", Some(body)).await?)
        }),
        Command::HashToken { token } => {
            println!("{}", meridian_cp::config::hash_token(&token));
            ExitCode::SUCCESS
        }
        Command::Serve { config, log_format } => match serve(&config, log_format) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn store_exercise(data: &std::path::Path, count: u32) -> anyhow::Result<()> {
    use std::io::Write;
    let store = meridian_cp::store::Store::open(data)?;
    let mut fleet: meridian_proto::Fleet =
        serde_json::from_str(r#"{"policy":{"rules":[{"name":"any","origin":"*","allow":["*"]}]}}"#)?;
    let mut out = std::io::stdout().lock();
    for i in 0..count {
        fleet.tenants.push(meridian_proto::Tenant {
            id: format!("t{i}"),
            home: "DE".parse()?,
            bindings: vec![meridian_proto::Binding {
                host: Some(format!("t{i}.test")),
                path_prefix: None,
            }],
        });
        let version = store.commit(&fleet)?;
        writeln!(out, "acked {version}")?;
        out.flush()?;
    }
    Ok(())
}

fn serve(path: &std::path::Path, log_format: meridian_telemetry::LogFormat) -> anyhow::Result<()> {
    use anyhow::Context;
    // The control plane writes no access log: API calls are counted in its metrics.
    let _ = meridian_telemetry::init_logging(log_format, &meridian_telemetry::AccessLog::Off)?;
    meridian_telemetry::recorder();
    let cfg = meridian_cp::config::CpConfig::load(path)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        // Handler first, so a SIGTERM right after start-up still stops it cleanly.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let cp = meridian_cp::server::start(&cfg)
            .await
            .context("starting the control plane")?;
        tracing::info!(
            admin = %cp.api.addr,
            push_quic = ?cp.push.as_ref().and_then(|p| p.quic_addr),
            push_h2 = ?cp.push.as_ref().and_then(|p| p.h2_addr),
            telemetry = ?cp.telemetry.as_ref().map(|t| t.addr),
            data = %cfg.data_dir.display(),
            "meridian-cp serving"
        );
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stopping");
        anyhow::Ok(())
    })
}

/// Runs one API call and prints its JSON answer.
fn cli<F, Fut>(api: ApiArgs, call: F) -> ExitCode
where
    F: FnOnce(meridian_cp::client::Target) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<serde_json::Value>>,
{
    let target = meridian_cp::client::Target {
        server: api.server,
        token: api.token,
        ca: api.ca,
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(call(target)));
    match result {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string()));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
