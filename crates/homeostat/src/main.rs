//! The `homeostat` command.

mod agent;
mod cli;
mod config;
mod connections;
mod exec;
mod groups;
mod logging;
mod output;
mod serve;
mod stalls;

use std::path::PathBuf;
use std::process::ExitCode;

/// jemalloc, with a background thread that hands freed pages back to the
/// system about a second after they are freed (the decay is set at build
/// time, `.cargo/config.toml`). With the system's allocator, the memory of
/// 10,000 long polls stayed with the process after they ended, and each
/// idle long poll held about 37 KiB of it against about 21 KiB here:
/// docs/benchmarks.md, "the allocator".
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use clap::{Parser, Subcommand};

/// homeostat: a self-healing control plane for fleets of agents that run jobs.
///
/// Agents register, heartbeat and pull jobs over HTTP; reconciliation
/// controllers keep the queue converging: dead agents go offline and their
/// jobs are reclaimed, stuck jobs are re-queued, failures are retried with
/// backoff, expired tokens and approvals are swept, notifications get through.
///
/// Exit codes: 0 success; 1 failure; 2 bad usage or configuration; 3 not
/// found; 4 conflict (the entity's state does not allow it); 5 the server
/// or the database is unreachable.
///
/// The operator's commands (jobs, agents, controllers, tokens, tenants,
/// notifications, audit) talk to a server (--server or HOMEOSTAT_SERVER)
/// with an API key (--token or HOMEOSTAT_TOKEN); -o json for scripts.
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
    /// and stops cleanly on SIGTERM or SIGINT. Exports traces over OTLP
    /// when OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_TRACES_EXPORTER=otlp) is
    /// set (docs/telemetry.md).
    Run(RunArgs),
    /// Runs a program for each job an agent claims.
    ///
    /// Registers once with a bootstrap token and keeps the credential in a
    /// state file (a restart reuses it). Each job runs CMD with its payload
    /// on standard input and HOMEOSTAT_JOB_ID, HOMEOSTAT_JOB_KIND,
    /// HOMEOSTAT_JOB_QUEUE and HOMEOSTAT_JOB_ATTEMPT in its environment (and
    /// TRACEPARENT, the job's W3C trace context, when it has one). With
    /// OTEL_EXPORTER_OTLP_ENDPOINT set, the agent exports a span for each
    /// job's work (docs/telemetry.md).
    /// Exit 0 completes the job with standard output as its result (JSON if
    /// it parses, else a string); exit 75 fails it as retryable; any other
    /// exit fails it as permanent, with the end of standard error as the
    /// error. A cancellation, a lost lease (or one the agent could not
    /// extend in time) or the job's timeout stops the program's process
    /// group: SIGTERM, then SIGKILL half a second later. SIGTERM or SIGINT
    /// stops claiming and lets
    /// running jobs finish (--grace); a second one gives them back at once.
    Agent(AgentCmd),
    /// Makes a new admin API key in the database directly, for when the one
    /// the first start printed is lost; prints it once.
    ///
    /// Reads the database as `run` does (--config, --database-url,
    /// --data-dir, HOMEOSTAT_*); the server may be running. The key is
    /// audited (actor `homeostat:admin-key`); revoke the lost one with
    /// `homeostat tokens revoke ID`.
    AdminKey(StoreArgs),
    /// Copies the embedded SQLite database to a new file while the server
    /// runs: a consistent snapshot of one moment, checked by opening it.
    ///
    /// Reads the database as `run` does (--config, --data-dir, HOMEOSTAT_*).
    /// The copy is private to its owner. To restore, stop the server, put
    /// the copy in place of `homeostat.db` in the data directory (removing
    /// `homeostat.db-wal` and `homeostat.db-shm`) and start it. PostgreSQL
    /// is backed up with pg_dump (docs/server.md, "Backups"); exit 2.
    Backup(BackupArgs),
    /// Asks the server on this machine whether it is ready (GET /readyz),
    /// for a container's or a supervisor's health check.
    ///
    /// The address is the configuration's `api.probes_listen`, else its
    /// `listen`, as `run` reads them (--config, HOMEOSTAT_*), a wildcard
    /// address meaning loopback; or --url. Exit 0 ready, 1 not ready (the
    /// failing check is printed), 5 unreachable.
    Probe(ProbeArgs),
    /// Checks or prints configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Jobs: enqueue, list, show, cancel, retry, approve, watch.
    Jobs(Operate<cli::Jobs>),
    /// Agents: list, show, drain, resume, credentials, revoke.
    Agents(Operate<cli::Agents>),
    /// Controllers: list, trigger, plan.
    Controllers(Operate<cli::Controllers>),
    /// Bootstrap tokens and API keys: create, list, revoke.
    Tokens(Operate<cli::Tokens>),
    /// Tenants: create, list, usage.
    Tenants(Operate<cli::Tenants>),
    /// Limits by key on how many jobs run at once and how often they
    /// start: list, show, set, delete.
    Limits(Operate<cli::Limits>),
    /// Workflows, steps that are jobs needing other steps: submit, show,
    /// cancel, retry.
    Workflows(Operate<cli::Workflows>),
    /// Notifications that could not be delivered: list, redrive.
    Notifications(Operate<cli::Notifications>),
    /// The audit log: verify its hash chain.
    Audit(Operate<cli::Audit>),
    /// Prints shell completions (bash, zsh, fish, …).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// An operator's command: the connection, and what to do.
#[derive(Debug, clap::Args)]
struct Operate<T: clap::Subcommand> {
    #[command(flatten)]
    connection: cli::Connection,
    #[command(subcommand)]
    command: T,
}

#[derive(Debug, clap::Args)]
struct AgentCmd {
    /// The server's URL; several (repeated, or separated by commas) are
    /// replicas of one control plane, failed over between when one cannot
    /// be reached or answers 502-504.
    #[arg(
        long,
        env = "HOMEOSTAT_SERVER",
        value_name = "URL",
        value_delimiter = ',',
        required = true
    )]
    server: Vec<String>,
    /// A bootstrap token, to register (not needed once registered).
    #[arg(
        long,
        env = "HOMEOSTAT_BOOTSTRAP_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    bootstrap_token: Option<String>,
    /// A queue to claim from (repeat for several).
    #[arg(long = "queue", value_name = "QUEUE", required = true)]
    queues: Vec<String>,
    /// The agent's name (default: the host's name).
    #[arg(long)]
    name: Option<String>,
    /// A label, key=value (repeat for several).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Jobs run at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    concurrency: u32,
    /// Where the agent keeps its credential.
    #[arg(long, default_value = "homeostat-agent.json", value_name = "FILE")]
    state_file: PathBuf,
    /// Seconds running jobs may finish after SIGTERM before they are given
    /// back.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    grace: u64,
    /// Run one job, then exit.
    #[arg(long)]
    once: bool,
    /// The program and its arguments, after `--exec`.
    #[arg(long, num_args = 1.., required = true, allow_hyphen_values = true, value_name = "CMD")]
    exec: Vec<String>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

#[derive(Debug, clap::Args)]
struct ProbeArgs {
    /// A TOML configuration file (see `homeostat config default`).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// The server's base URL, instead of the configuration's address.
    #[arg(long, value_name = "URL")]
    url: Option<String>,
}

#[derive(Debug, clap::Args)]
struct BackupArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The new file to write (refused if it exists).
    #[arg(long, value_name = "FILE")]
    to: PathBuf,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Listen address (overrides the file and HOMEOSTAT_LISTEN).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<String>,
}

/// Where the database is, as `run` finds it.
#[derive(Debug, clap::Args)]
struct StoreArgs {
    /// A TOML configuration file (see `homeostat config default`).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// PostgreSQL URL (overrides the file and HOMEOSTAT_DATABASE_URL).
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// Data directory of the embedded SQLite database.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

impl StoreArgs {
    /// The configuration with these arguments applied; exits 2 on a bad one.
    fn load(self) -> Result<config::Config, ExitCode> {
        let mut config = match config::Config::load(self.config.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("homeostat: configuration: {e}");
                return Err(ExitCode::from(2));
            }
        };
        if let Some(url) = self.database_url {
            config.database_url = Some(url);
        }
        if let Some(dir) = self.data_dir {
            config.data_dir = dir;
        }
        Ok(config)
    }
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
            output::emit(config::DEFAULT_FILE);
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
        Command::Jobs(o) => cli::main(o.connection, cli::Command::Jobs(o.command)),
        Command::Agents(o) => cli::main(o.connection, cli::Command::Agents(o.command)),
        Command::Controllers(o) => cli::main(o.connection, cli::Command::Controllers(o.command)),
        Command::Tokens(o) => cli::main(o.connection, cli::Command::Tokens(o.command)),
        Command::Tenants(o) => cli::main(o.connection, cli::Command::Tenants(o.command)),
        Command::Limits(o) => cli::main(o.connection, cli::Command::Limits(o.command)),
        Command::Workflows(o) => cli::main(o.connection, cli::Command::Workflows(o.command)),
        Command::Notifications(o) => {
            cli::main(o.connection, cli::Command::Notifications(o.command))
        }
        Command::Audit(o) => cli::main(o.connection, cli::Command::Audit(o.command)),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "homeostat", &mut script);
            output::emit(&String::from_utf8_lossy(&script));
            ExitCode::SUCCESS
        }
        Command::Agent(cmd) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let telemetry =
                match logging::init_with_traces(config::LogFormat::Auto, "info", "homeostat-agent")
                {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!("homeostat: {e}");
                        return ExitCode::from(2);
                    }
                };
            let name = cmd.name.unwrap_or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .map(|h| h.trim().to_owned())
                    .ok()
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| "agent".to_owned())
            });
            let args = agent::AgentArgs {
                servers: cmd.server,
                bootstrap_token: cmd.bootstrap_token,
                queues: cmd.queues,
                name,
                labels: cmd.labels.into_iter().collect(),
                concurrency: cmd.concurrency,
                state_file: cmd.state_file,
                grace: std::time::Duration::from_secs(cmd.grace),
                once: cmd.once,
                exec: cmd.exec,
            };
            let code = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt.block_on(agent::run(args)),
                Err(e) => {
                    eprintln!("homeostat: cannot start the runtime: {e}");
                    ExitCode::FAILURE
                }
            };
            telemetry.shutdown();
            code
        }
        Command::Run(args) => {
            let mut config = match args.store.load() {
                Ok(c) => c,
                Err(code) => return code,
            };
            if let Some(listen) = args.listen {
                config.listen = listen;
            }
            serve::main(config)
        }
        Command::AdminKey(args) => match args.load() {
            Ok(config) => serve::admin_key(config),
            Err(code) => code,
        },
        Command::Probe(args) => {
            let url = match args.url {
                Some(url) => url,
                None => match config::Config::load(args.config.as_deref()) {
                    Ok(config) => config.local_url(),
                    Err(e) => {
                        eprintln!("homeostat: configuration: {e}");
                        return ExitCode::from(2);
                    }
                },
            };
            cli::probe(&url)
        }
        Command::Backup(args) => match args.store.load() {
            Ok(config) => serve::backup(config, &args.to),
            Err(code) => code,
        },
    }
}
