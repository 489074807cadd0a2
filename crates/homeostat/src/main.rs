//! The `homeostat` command.

use clap::Parser;

/// homeostat: a self-healing control plane for fleets of agents that run jobs.
///
/// Agents register, heartbeat and pull jobs over HTTP; reconciliation
/// controllers keep the queue converging: dead agents go offline and their
/// jobs are reclaimed, stuck jobs are re-queued, failures are retried with
/// backoff, expired tokens and approvals are swept, notifications get through.
///
/// This build provides the libraries: the controller runtime, the store
/// (SQLite and PostgreSQL) and the built-in controllers; the `run` and
/// `agent` commands arrive with the HTTP API and the client.
#[derive(Debug, Parser)]
#[command(name = "homeostat", version, about, long_about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
