//! `meridian-cp`: the Meridian control plane.
//!
//! A skeleton for now: the command line is in place so deployments and docs can
//! name it, but serving (registry, admin API, durable store, push to edges) lands
//! with the control-plane work. Until then edges read providers from their own
//! config file, in the same model (`meridian-proto`) the control plane will push.

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
    /// Serve the admin API and push snapshots to edges (not implemented yet).
    Serve {
        /// Path of the control plane's TOML config.
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve { config } => {
            eprintln!(
                "error: meridian-cp cannot serve yet (config {} not read); edges run from their own config file",
                config.display()
            );
            ExitCode::from(2)
        }
    }
}
