//! The `homeostat` command.

mod config;
mod logging;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// homeostat: a self-healing control plane for fleets of agents that run jobs.
///
/// Agents register, heartbeat and pull jobs over HTTP; reconciliation
/// controllers keep the queue converging: dead agents go offline and their
/// jobs are reclaimed, stuck jobs are re-queued, failures are retried with
/// backoff, expired tokens and approvals are swept, notifications get through.
///
/// Exit codes: 0 success; 1 a runtime failure (database unreachable, port
/// taken); 2 bad usage or configuration.
#[derive(Debug, Parser)]
#[command(name = "homeostat", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the control plane: the HTTP API and the controllers.
    ///
    /// On an embedded SQLite database in the data directory by default; on
    /// PostgreSQL (shared by N replicas) with `--database-url`. Applies
    /// migrations, creates and prints an admin API key on the first start,
    /// and stops cleanly on SIGTERM or SIGINT.
    Run(RunArgs),
    /// Checks or prints configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// A TOML configuration file (see `homeostat config default`).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// PostgreSQL URL (overrides the file and HOMEOSTAT_DATABASE_URL).
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// Listen address (overrides the file and HOMEOSTAT_LISTEN).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<String>,
    /// Data directory of the embedded SQLite database.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validates a configuration file (with the environment applied), as
    /// `run` would read it; prints the problem and exits with 2 if any.
    Check {
        /// The file.
        file: PathBuf,
    },
    /// Prints the commented default configuration.
    Default,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config(ConfigCommand::Default) => {
            print!("{}", config::DEFAULT_FILE);
            ExitCode::SUCCESS
        }
        Command::Config(ConfigCommand::Check { file }) => match config::Config::load(Some(&file)) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("homeostat: {}: {e}", file.display());
                ExitCode::from(2)
            }
        },
        Command::Run(args) => {
            let mut config = match config::Config::load(args.config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("homeostat: configuration: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Some(url) = args.database_url {
                config.database_url = Some(url);
            }
            if let Some(listen) = args.listen {
                config.listen = listen;
            }
            if let Some(dir) = args.data_dir {
                config.data_dir = dir;
            }
            serve::main(config)
        }
    }
}
