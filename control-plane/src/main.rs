//! `meridian-cp`: the Meridian control plane.
//!
//! `serve` runs the durable store and the authenticated admin API; push to edges is
//! still to come, so edges read their fleet from their own config file, in the same
//! model (`meridian-proto`) the control plane stores.

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
    },
    /// Print the SHA-256 of a token, for `[[admin.tokens]] sha256` in the config.
    HashToken {
        /// The token.
        token: String,
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
        Command::HashToken { token } => {
            println!("{}", meridian_cp::config::hash_token(&token));
            ExitCode::SUCCESS
        }
        Command::Serve { config } => match serve(&config) {
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

fn serve(path: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MERIDIAN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cfg = meridian_cp::config::CpConfig::load(path)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let api = meridian_cp::api::start(&cfg).await.context("starting the admin API")?;
        tracing::info!(admin = %api.addr, data = %cfg.data_dir.display(), "meridian-cp serving");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stopping");
        anyhow::Ok(())
    })
}
