//! `meridian-cp`: the Meridian control plane.
//!
//! Serving (admin API, push to edges) lands with the control-plane work; the durable
//! store it will use is in place (`meridian_cp::store`). Until then edges read their
//! fleet from their own config file, in the same model (`meridian-proto`) the control
//! plane will push.

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
    /// Serve the admin API and push snapshots to edges (not implemented yet).
    Serve {
        /// Path of the control plane's TOML config.
        #[arg(long, short)]
        config: PathBuf,
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
        Command::Serve { config } => {
            eprintln!(
                "error: meridian-cp cannot serve yet (config {} not read); edges run from their own config file",
                config.display()
            );
            ExitCode::from(2)
        }
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
