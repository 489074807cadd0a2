//! The operator's commands: jobs, agents, controllers, tokens, tenants,
//! notifications and the audit log, through the API with an API key.
//!
//! Exit codes: 0 success, 1 failure, 2 usage, 3 not found, 4 conflict,
//! 5 server unreachable or unavailable.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use homeostat_client::{Client, ClientError, JobQuery};
use homeostat_model::operator::{
    KeyRole, NewApiKeyRequest, NewBootstrapTokenRequest, NewTenantRequest,
};
use homeostat_model::{
    AgentId, ErrorCode, JobId, NewJob, NewWorkflow, NotificationId, PlanTier, TenantId, TokenId,
    Workflow, WorkflowId,
};
use serde_json::Value;

use crate::output::{self, Column, Format, outln};

/// Where the server is and who is asking.
#[derive(Debug, Clone, Args)]
pub(crate) struct Connection {
    /// The server's URL.
    #[arg(
        long,
        env = "HOMEOSTAT_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    server: String,
    /// An API key (admin, tenant or viewer).
    #[arg(long, env = "HOMEOSTAT_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Output: a table for people, JSON for scripts (jsonl: a line per item).
    #[arg(long, short = 'o', value_enum, default_value = "table", global = true)]
    output: Format,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Jobs {
    /// Enqueues a job.
    Enqueue {
        /// Its queue.
        #[arg(long)]
        queue: String,
        /// Its kind.
        #[arg(long)]
        kind: String,
        /// Its input, as JSON.
        #[arg(long, value_parser = parse_json)]
        payload: Option<Value>,
        /// Its tenant (admin keys; a tenant key enqueues for its own).
        #[arg(long)]
        tenant: Option<TenantId>,
        /// Priority, -1000 to 1000: higher is claimed first.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i32,
        /// Deduplicates: while a job of the tenant with this fingerprint is
        /// live (in any queue, of any kind), enqueueing another adds an
        /// occurrence to it instead (said as "deduplicated").
        #[arg(long)]
        fingerprint: Option<String>,
        /// Attempts allowed.
        #[arg(long)]
        max_attempts: Option<u32>,
        /// Seconds one attempt may take.
        #[arg(long)]
        timeout: Option<u64>,
        /// When it may run (RFC 3339, e.g. 2026-12-24T18:00:00Z): scheduled
        /// until then.
        #[arg(long, value_name = "TIME")]
        run_at: Option<jiff::Timestamp>,
        /// When it expires if it has not started (RFC 3339; default: an
        /// hour after it may run).
        #[arg(long, value_name = "TIME")]
        deadline: Option<jiff::Timestamp>,
        /// Waits for an operator's approval until this time (RFC 3339),
        /// and expires if none comes.
        #[arg(long, value_name = "TIME")]
        approval_expires_at: Option<jiff::Timestamp>,
        /// The same key within 24 h answers the first enqueue again instead
        /// of enqueueing another (safe to rerun a script).
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
        /// Puts the job under a limit: `NAME=KEY`, or `NAME` for a limit
        /// that takes its key from the tenant or the payload (repeat, up
        /// to 4; see `homeostat limits`).
        #[arg(long = "limit", value_name = "NAME[=KEY]", value_parser = parse_job_limit)]
        limits: Vec<homeostat_model::JobLimit>,
    },
    /// Lists jobs, newest first.
    List {
        /// Only this state.
        #[arg(long)]
        state: Option<String>,
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Only this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<TenantId>,
        /// Only those this agent holds or held last.
        #[arg(long)]
        agent: Option<AgentId>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Shows a job, its failed attempts and its history.
    Show { id: JobId },
    /// Cancels a live job.
    Cancel { id: JobId },
    /// Queues a dead or expired job again with fresh attempts.
    Retry { id: JobId },
    /// Approves a job awaiting approval.
    Approve { id: JobId },
    /// Follows a job until it ends; exits 0 when it succeeded, 1 otherwise.
    Watch {
        id: JobId,
        /// Seconds between looks.
        #[arg(long, default_value_t = 1)]
        every: u64,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum Agents {
    /// Lists agents, by name.
    List {
        /// Only agents in this status (online, draining, offline).
        #[arg(long)]
        status: Option<homeostat_model::AgentStatus>,
    },
    /// Shows an agent.
    Show { id: AgentId },
    /// Drains an agent: it finishes its jobs and claims no more.
    Drain { id: AgentId },
    /// Undoes a drain: the agent claims again.
    Resume { id: AgentId },
    /// Lists an agent's credentials (never a secret), revoked ones too.
    Credentials { id: AgentId },
    /// Revokes an agent's credentials: its next request is refused (401),
    /// it is offline, and its running jobs are queued again at once. For a
    /// lost or compromised host; the agent must register anew to come back.
    Revoke { id: AgentId },
    /// Removes an offline agent: its row is deleted and its credentials
    /// revoked (its past jobs keep its id; the audit log keeps its name).
    /// An agent that is not offline is refused (exit 4): revoke it, or
    /// drain it and let it stop, first. agent-health removes agents offline
    /// past `controllers.agent_health.forget_after` by itself.
    Remove { id: AgentId },
}

#[derive(Debug, Subcommand)]
pub(crate) enum Controllers {
    /// Each controller: last run, outcome, next run, leader.
    List,
    /// Runs a controller now.
    Trigger { name: String },
    /// What a controller's run would change now (a dry run).
    Plan { name: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum TokenType {
    /// Lets agents register.
    Bootstrap,
    /// A bearer key for the API (`api_key`, as the API writes a key's
    /// kind and an actor's name; `api-key` is accepted too).
    #[value(name = "api_key", alias = "api-key")]
    ApiKey,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Tokens {
    /// Creates a bootstrap token or an API key; its secret is shown once.
    Create {
        /// What to create.
        #[arg(long = "type", value_enum)]
        kind: TokenType,
        /// The tenant (bootstrap tokens for its agents; tenant API keys).
        #[arg(long)]
        tenant: Option<TenantId>,
        /// An API key's role: admin, tenant or viewer.
        #[arg(long, value_parser = parse_role)]
        role: Option<KeyRole>,
        /// Lifetime in seconds.
        #[arg(long)]
        ttl: Option<u64>,
        /// Registrations a bootstrap token allows.
        #[arg(long, default_value_t = 1)]
        uses: u32,
    },
    /// Lists tokens (metadata, never secrets).
    List {
        #[arg(long = "type", value_enum, default_value = "api_key")]
        kind: TokenType,
    },
    /// Revokes a token or key.
    Revoke { id: TokenId },
}

#[derive(Debug, Subcommand)]
pub(crate) enum Tenants {
    /// Creates a tenant.
    Create {
        name: String,
        /// free, standard or premium: the weight (1, 2, 4) of its share of
        /// the agents it shares with other tenants.
        #[arg(long, default_value = "standard", value_parser = parse_tier)]
        tier: PlanTier,
    },
    /// Lists tenants.
    List,
    /// A tenant's live jobs and queues against its quotas.
    Usage { id: homeostat_model::TenantId },
}

#[derive(Debug, Subcommand)]
pub(crate) enum Notifications {
    /// Notifications that could not be delivered.
    Dead,
    /// Sends a dead notification again.
    Redrive { id: NotificationId },
}

#[derive(Debug, Subcommand)]
pub(crate) enum Audit {
    /// Asks the server to walk the audit log's hash chain (its
    /// audit-chain-verify leader does) and follows the walk; exits 0 if the
    /// chain is intact, 1 at a break or if the walk stopped.
    Verify {
        /// Print the verification asked for and exit, without following it
        /// (`audit verifications` shows it later, from any replica).
        #[arg(long)]
        no_wait: bool,
    },
    /// The latest verifications of the chain, newest first.
    Verifications,
}

fn parse_json(s: &str) -> Result<Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not JSON: {e}"))
}

fn parse_role(s: &str) -> Result<KeyRole, String> {
    serde_json::from_value(Value::String(s.to_owned()))
        .map_err(|_| format!("{s:?}: the role is admin, tenant or viewer"))
}

fn parse_job_limit(s: &str) -> Result<homeostat_model::JobLimit, String> {
    let (limit, key) = match s.split_once('=') {
        Some((limit, key)) => (limit, Some(key.to_owned())),
        None => (s, None),
    };
    if limit.is_empty() {
        return Err(format!("{s:?}: give the limit as NAME=KEY or NAME"));
    }
    Ok(homeostat_model::JobLimit {
        limit: limit.to_owned(),
        key,
    })
}

/// `N/SECONDS`: at most N starts in any window of SECONDS.
fn parse_rate(s: &str) -> Result<homeostat_model::Rate, String> {
    let bad = || format!("{s:?}: give the rate as STARTS/SECONDS, e.g. 10/60");
    let (starts, secs) = s.split_once('/').ok_or_else(bad)?;
    Ok(homeostat_model::Rate {
        starts: starts.trim().parse().map_err(|_| bad())?,
        per_secs: secs
            .trim()
            .trim_end_matches('s')
            .parse()
            .map_err(|_| bad())?,
    })
}

#[derive(Debug, Subcommand)]
pub(crate) enum Workflows {
    /// Submits a workflow from a JSON or YAML file ("-": standard input,
    /// JSON when it opens with "{"), every step at once: {"name", "steps":
    /// [{"name", "job": {"queue", "kind", …}, "needs": ["step", …], "when":
    /// "on_success|on_failure|always"}]} (docs/workflows.md).
    Submit {
        #[arg(value_parser = parse_workflow_file)]
        file: NewWorkflow,
        /// Its tenant (admin keys; a tenant key submits for its own).
        #[arg(long)]
        tenant: Option<TenantId>,
    },
    /// Lists the newest workflows with their states.
    List {
        /// How many (1 to 500).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Shows a workflow and each step's state.
    Show { id: WorkflowId },
    /// Cancels a workflow: its steps not finished are cancelled (a running
    /// one's agent learns it at its next heartbeat) and none starts.
    Cancel { id: WorkflowId },
    /// Retries a finished workflow: its steps that did not finish well run
    /// again, each once its needs have; succeeded steps keep their results.
    Retry { id: WorkflowId },
}

fn parse_workflow_file(path: &str) -> Result<NewWorkflow, String> {
    let text = if path == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| format!("standard input: {e}"))?
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?
    };
    let workflow: NewWorkflow = if is_yaml(path, &text) {
        serde_norway::from_str(&text).map_err(|e| format!("{path}: not a workflow: {e}"))?
    } else {
        serde_json::from_str(&text).map_err(|e| format!("{path}: not a workflow: {e}"))?
    };
    workflow
        .validate()
        .map_err(|e| format!("{path}: {}: {}", e.field, e.message))?;
    Ok(workflow)
}

/// A workflow file is YAML by its name (`.yaml`, `.yml`), JSON by its name
/// (`.json`), and otherwise (standard input) JSON when it opens with `{`.
fn is_yaml(path: &str, text: &str) -> bool {
    let ext = std::path::Path::new(path)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("yaml" | "yml") => true,
        Some("json") => false,
        _ => !text.trim_start().starts_with('{'),
    }
}

const STEP_COLUMNS: &[Column] = &[
    ("STEP", "name"),
    ("STATE", "state"),
    ("NEEDS", "needs"),
    ("WHEN", "when"),
    ("JOB", "job_id"),
];

fn show_workflow(out: Format, workflow: &Workflow) {
    match out {
        Format::Table => {
            outln!(
                "workflow {} {}: {}",
                workflow.id,
                workflow.name,
                workflow.state.as_str()
            );
            let rows: Vec<Value> = workflow
                .steps
                .iter()
                .map(|s| {
                    let state = if s.skipped {
                        "skipped".to_owned()
                    } else {
                        s.state.to_string()
                    };
                    serde_json::json!({
                        "name": s.name,
                        "state": state,
                        "needs": s.needs.join(","),
                        "when": s.when.as_str(),
                        "job_id": s.job_id,
                    })
                })
                .collect();
            output::list(out, STEP_COLUMNS, &rows);
        }
        Format::Id => outln!("{}", workflow.id),
        _ => output::one(out, &[], workflow),
    }
}

const WORKFLOW_COLUMNS: &[Column] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("STATE", "state"),
    ("STEPS", "steps"),
    ("UNFINISHED", "unfinished"),
    ("CREATED", "created_at"),
];

async fn workflows(client: &Client, out: Format, command: Workflows) -> Result<(), ClientError> {
    let workflow = match command {
        Workflows::List { limit } => {
            output::list(out, WORKFLOW_COLUMNS, &client.workflows(limit).await?);
            return Ok(());
        }
        Workflows::Submit { file, tenant } => client.submit_workflow(tenant, &file).await?,
        Workflows::Show { id } => client.workflow(id).await?,
        Workflows::Cancel { id } => client.cancel_workflow(id).await?,
        Workflows::Retry { id } => client.retry_workflow(id).await?,
    };
    show_workflow(out, &workflow);
    Ok(())
}

#[derive(Debug, Subcommand)]
pub(crate) enum Limits {
    /// Lists limits with what holds and waits under each.
    List,
    /// Shows a limit and its busiest keys.
    Show { name: String },
    /// Creates or changes a limit (the values given replace all of its
    /// values). Jobs name it at enqueue (`jobs enqueue --limit NAME=KEY`),
    /// or it applies to every job of `--queue`/`--kind`.
    Set {
        /// Its name: letters, digits and . _ - (not . or .., and not starting with -)
        name: String,
        /// Jobs of one key queued or running at once.
        #[arg(long)]
        max_running: Option<u32>,
        /// Starts of one key per window: STARTS/SECONDS, e.g. 10/60.
        #[arg(long, value_parser = parse_rate)]
        rate: Option<homeostat_model::Rate>,
        /// When a key is full: wait (in order), round_robin (keys take
        /// turns at the agents), cancel_newest (the new job is cancelled),
        /// cancel_oldest (the oldest running job is cancelled).
        #[arg(long, default_value = "wait")]
        strategy: homeostat_model::LimitStrategy,
        /// Where a job's key comes from: job (named at enqueue), tenant, or
        /// a JSON pointer into the payload like /customer.
        #[arg(long, default_value = "job")]
        key_from: homeostat_model::KeySource,
        /// Whose jobs share a key: tenant (each tenant has its own keys,
        /// so no tenant can fill or see another's) or shared (every
        /// tenant's jobs of a key share its slots, e.g. one upstream
        /// account).
        #[arg(long, default_value = "tenant")]
        scope: homeostat_model::LimitScope,
        /// Applies to every job of this queue without being named.
        #[arg(long)]
        queue: Option<String>,
        /// Applies to every job of this kind without being named.
        #[arg(long)]
        kind: Option<String>,
    },
    /// Deletes a limit: jobs waiting on it alone are queued.
    Delete { name: String },
}

fn parse_tier(s: &str) -> Result<PlanTier, String> {
    serde_json::from_value(Value::String(s.to_owned()))
        .map_err(|_| format!("{s:?}: the tier is free, standard or premium"))
}

/// One command of the CLI, ready to run.
#[derive(Debug)]
// Parsed once per process from the command line: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Command {
    Jobs(Jobs),
    Agents(Agents),
    Controllers(Controllers),
    Tokens(Tokens),
    Tenants(Tenants),
    Notifications(Notifications),
    Audit(Audit),
    Limits(Limits),
    Workflows(Workflows),
}

const JOB_COLUMNS: &[Column] = &[
    ("ID", "id"),
    ("STATE", "state"),
    ("QUEUE", "queue"),
    ("KIND", "kind"),
    ("ATTEMPT", "attempt"),
    ("CREATED", "created_at"),
];
const JOB_FIELDS: &[Column] = &[
    ("id", "id"),
    ("tenant", "tenant_id"),
    ("queue", "queue"),
    ("kind", "kind"),
    ("state", "state"),
    ("attempt", "attempt"),
    ("max attempts", "max_attempts"),
    ("occurrences", "occurrences"),
    ("agent", "lease_agent"),
    ("last error", "last_error"),
    ("result", "result"),
    ("created", "created_at"),
    ("finished", "finished_at"),
];
const AGENT_COLUMNS: &[Column] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("STATUS", "status"),
    ("QUEUES", "queues"),
    ("LAST HEARTBEAT", "last_heartbeat_at"),
];
const TENANT_COLUMNS: &[Column] = &[("ID", "id"), ("NAME", "name"), ("TIER", "tier")];
const TOKEN_COLUMNS: &[Column] = &[
    ("ID", "id"),
    ("KIND", "kind"),
    ("TENANT", "tenant_id"),
    ("ADMIN", "admin"),
    ("USES LEFT", "uses_left"),
    ("EXPIRES", "expires_at"),
    ("REVOKED", "revoked_at"),
];
const CONTROLLER_COLUMNS: &[Column] = &[
    ("NAME", "name"),
    ("LEADER", "leader_replica"),
    ("RUNNING", "running"),
    ("LAST OUTCOME", "last_run.outcome"),
    ("ITEMS", "last_run.items"),
    ("LAST RUN", "last_run.started_at"),
    ("NEXT RUN", "next_run"),
    ("FAILURES", "consecutive_failures"),
    ("KEYS WAITING", "keys.waiting"),
];
const VERIFICATION_COLUMNS: &[Column] = &[
    ("ID", "id"),
    ("STATE", "state"),
    ("CHECKED", "checked"),
    ("OF", "total"),
    ("BREAK AT", "first_break.seq"),
    ("BY", "requested_by"),
    ("ASKED", "requested_at"),
];

const VERIFICATION_FIELDS: &[Column] = &[
    ("id", "id"),
    ("state", "state"),
    ("checked", "checked"),
    ("total", "total"),
    ("first seq", "first_seq"),
    ("break at", "first_break.seq"),
    ("break", "first_break.reason"),
    ("error", "error"),
    ("asked by", "requested_by"),
    ("asked at", "requested_at"),
    ("finished at", "finished_at"),
];

const LIMIT_COLUMNS: &[Column] = &[
    ("NAME", "name"),
    ("MAX RUNNING", "spec.max_running"),
    ("RATE", "rate"),
    ("STRATEGY", "spec.strategy"),
    ("KEY FROM", "spec.key_from"),
    ("SCOPE", "spec.scope"),
    ("HOLDING", "holding"),
    ("WAITING", "waiting"),
    ("BY RATE", "delayed_by_rate"),
    ("KEYS", "active_keys"),
];
const KEY_COLUMNS: &[Column] = &[
    ("KEY", "key"),
    ("TENANT", "tenant"),
    ("RUNNING", "running"),
    ("QUEUED", "queued"),
    ("STOPPING", "stopping"),
    ("WAITING", "waiting"),
    ("RECENT STARTS", "recent_starts"),
];

/// A limit's values as people read them: the rate as `N/Ss`.
fn limit_row(usage: &homeostat_model::LimitUsage) -> Value {
    let mut row = serde_json::to_value(usage).unwrap_or_default();
    if let Some(rate) = usage.limit.spec.rate {
        row["rate"] = Value::String(format!("{}/{}s", rate.starts, rate.per_secs));
    }
    row
}

async fn limits(client: &Client, out: Format, command: Limits) -> Result<(), ClientError> {
    match command {
        Limits::List => {
            let all = client.limits().await?;
            match out {
                Format::Table => {
                    let rows: Vec<Value> = all.iter().map(limit_row).collect();
                    output::list(out, LIMIT_COLUMNS, &rows);
                }
                _ => output::list(out, LIMIT_COLUMNS, &all),
            }
        }
        Limits::Show { name } => {
            let usage = client.limit(&name).await?;
            match out {
                Format::Table => {
                    output::one(out, LIMIT_COLUMNS, &limit_row(&usage));
                    if let Some(on) = &usage.limit.spec.applies_to {
                        outln!(
                            "applies to queue {} kind {}",
                            on.queue.as_deref().unwrap_or("*"),
                            on.kind.as_deref().unwrap_or("*")
                        );
                    }
                    if !usage.hottest.is_empty() {
                        outln!("\nbusiest keys:");
                        output::list(out, KEY_COLUMNS, &usage.hottest);
                    }
                }
                _ => output::one(out, &[], &usage),
            }
        }
        Limits::Set {
            name,
            max_running,
            rate,
            strategy,
            key_from,
            scope,
            queue,
            kind,
        } => {
            let applies_to = (queue.is_some() || kind.is_some())
                .then_some(homeostat_model::LimitSelector { queue, kind });
            let spec = homeostat_model::LimitSpec {
                max_running,
                rate,
                strategy,
                key_from,
                scope,
                applies_to,
            };
            let limit = client.set_limit(&name, &spec).await?;
            match out {
                Format::Table => outln!("limit {} set", limit.name),
                Format::Id => outln!("{}", limit.name),
                _ => output::one(out, &[], &limit),
            }
        }
        Limits::Delete { name } => {
            client.delete_limit(&name).await?;
            match out {
                Format::Table => outln!("limit {name} deleted"),
                Format::Id => outln!("{name}"),
                _ => output::one(out, &[], &serde_json::json!({"deleted": name})),
            }
        }
    }
    Ok(())
}

const NOTIFICATION_COLUMNS: &[Column] = &[
    ("ID", "id"),
    ("EVENT", "event"),
    ("ATTEMPTS", "attempts"),
    ("LAST ERROR", "last_error"),
];

/// `homeostat probe`: whether the server at `url` is ready.
pub(crate) fn probe(url: &str) -> ExitCode {
    let ready = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            let client = Client::builder(url)
                .retries(0)
                .build()
                .map_err(|e| e.to_string())?;
            Ok(rt.block_on(client.ready()))
        });
    match ready {
        Ok(Ok(_)) => {
            println!("ready");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) if e.status() == Some(503) => {
            println!("not ready: {e}");
            ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            eprintln!("homeostat: {e}");
            crate::agent::exit_code(&e)
        }
        Err(e) => {
            eprintln!("homeostat: {e}");
            ExitCode::from(2)
        }
    }
}

/// Runs a command; prints the error with what to do next, and maps it to
/// the exit code.
pub(crate) fn main(connection: Connection, command: Command) -> ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("homeostat: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&connection, command)) {
        Ok(code) => code,
        Err(e) => {
            let hint = match e.code() {
                ErrorCode::Unauthorized => " (check --token or HOMEOSTAT_TOKEN)",
                ErrorCode::Forbidden => " (this needs a key with another role)",
                ErrorCode::Unreachable => {
                    " (is the server running at --server or HOMEOSTAT_SERVER?)"
                }
                _ => "",
            };
            eprintln!("homeostat: {e}{hint}");
            crate::agent::exit_code(&e)
        }
    }
}

async fn run(c: &Connection, command: Command) -> Result<ExitCode, ClientError> {
    let mut builder = Client::builder(&c.server).retries(2);
    if let Some(token) = &c.token {
        builder = builder.token(token);
    }
    let client = builder.build()?;
    let out = c.output;
    match command {
        Command::Jobs(j) => return jobs(&client, out, j).await,
        Command::Agents(Agents::List { status }) => {
            output::list(out, AGENT_COLUMNS, &client.agents_in(status).await?)
        }
        Command::Agents(Agents::Show { id }) => {
            output::one(out, AGENT_COLUMNS_AS_FIELDS, &client.agent(id).await?)
        }
        Command::Agents(Agents::Drain { id }) => {
            output::one(out, AGENT_COLUMNS_AS_FIELDS, &client.drain(id).await?)
        }
        Command::Agents(Agents::Resume { id }) => {
            output::one(out, AGENT_COLUMNS_AS_FIELDS, &client.resume(id).await?)
        }
        Command::Agents(Agents::Remove { id }) => {
            let removed = client.remove_agent(id).await?;
            match out {
                Format::Table => outln!("{id} ({}) removed", removed.name),
                Format::Id => outln!("{id}"),
                Format::Json | Format::Jsonl => output::one(out, &[], &removed),
            }
        }
        Command::Agents(Agents::Credentials { id }) => {
            output::list(out, TOKEN_COLUMNS, &client.agent_credentials(id).await?)
        }
        Command::Agents(Agents::Revoke { id }) => {
            let revoked = client.revoke_agent(id).await?;
            match out {
                Format::Table => outln!(
                    "{id}: {} credential(s) revoked, offline; {} running job(s) reclaimed",
                    revoked.credentials.len(),
                    revoked.reclaimed.len()
                ),
                Format::Id => outln!("{id}"),
                Format::Json | Format::Jsonl => output::one(out, &[], &revoked),
            }
        }
        Command::Controllers(Controllers::List) => {
            let controllers = client.controllers().await?;
            // Plain data: serializing it cannot fail.
            let mut controllers = serde_json::to_value(controllers)
                .unwrap_or_default()
                .as_array()
                .cloned()
                .unwrap_or_default();
            if out == Format::Table {
                for c in &mut controllers {
                    // The API gives Unix milliseconds; people read times.
                    output::millis_as_time(&mut c["next_run"]);
                    if let Some(run) = c.get_mut("last_run").filter(|r| r.is_object()) {
                        output::millis_as_time(&mut run["started_at"]);
                    }
                }
            }
            output::list(out, CONTROLLER_COLUMNS, &controllers)
        }
        Command::Controllers(Controllers::Trigger { name }) => {
            client.trigger(&name).await?;
            if out == Format::Table {
                outln!("{name}: a run is due now");
            }
        }
        Command::Controllers(Controllers::Plan { name }) => {
            let plan = client.plan(&name).await?;
            match out {
                Format::Table => {
                    outln!("{name} would change {} item(s)", plan.count);
                    let items: Vec<Value> = plan
                        .items
                        .iter()
                        .map(|c| serde_json::to_value(c).unwrap_or_default())
                        .collect();
                    output::emit(&output::table(
                        &[
                            ("SUBJECT", "subject"),
                            ("FROM", "from"),
                            ("TO", "to"),
                            ("WHY", "why"),
                        ],
                        &items,
                    ));
                }
                _ => output::one(out, &[], &plan),
            }
        }
        Command::Tokens(t) => tokens(&client, out, t).await?,
        Command::Limits(l) => limits(&client, out, l).await?,
        Command::Workflows(w) => workflows(&client, out, w).await?,
        Command::Tenants(Tenants::Create { name, tier }) => {
            let t = client
                .create_tenant(&NewTenantRequest { name, tier })
                .await?;
            output::one(out, &[("id", "id"), ("name", "name"), ("tier", "tier")], &t);
        }
        Command::Tenants(Tenants::List) => {
            output::list(out, TENANT_COLUMNS, &client.tenants().await?)
        }
        Command::Tenants(Tenants::Usage { id }) => output::one(
            out,
            &[
                ("live jobs", "live_jobs"),
                ("  quota", "limits.live_jobs"),
                ("live queues", "live_queues"),
                ("  quota", "limits.live_queues"),
                ("enqueue rate /s", "limits.enqueue_rate"),
                ("  burst", "limits.enqueue_burst"),
            ],
            &client.tenant_usage(id).await?,
        ),
        Command::Notifications(Notifications::Dead) => output::list(
            out,
            NOTIFICATION_COLUMNS,
            &client.dead_notifications().await?,
        ),
        Command::Notifications(Notifications::Redrive { id }) => {
            let n = client.redrive_notification(id).await?;
            output::one(
                out,
                &[("id", "id"), ("event", "event"), ("state", "state")],
                &n,
            );
        }
        Command::Audit(Audit::Verify { no_wait: true }) => {
            let v = client.request_audit_verification().await?;
            output::one(out, VERIFICATION_FIELDS, &v);
        }
        Command::Audit(Audit::Verify { no_wait: false }) => return verify(&client, out).await,
        Command::Audit(Audit::Verifications) => output::list(
            out,
            VERIFICATION_COLUMNS,
            &client.audit_verifications().await?,
        ),
    }
    Ok(ExitCode::SUCCESS)
}

const AGENT_COLUMNS_AS_FIELDS: &[Column] = &[
    ("id", "id"),
    ("name", "name"),
    ("tenant", "tenant_id"),
    ("status", "status"),
    ("queues", "queues"),
    ("labels", "labels"),
    ("last heartbeat", "last_heartbeat_at"),
    ("registered", "registered_at"),
];

async fn jobs(client: &Client, out: Format, j: Jobs) -> Result<ExitCode, ClientError> {
    match j {
        Jobs::Enqueue {
            queue,
            kind,
            payload,
            tenant,
            priority,
            fingerprint,
            max_attempts,
            timeout,
            run_at,
            deadline,
            approval_expires_at,
            idempotency_key,
            limits,
        } => {
            let mut job = NewJob::new(queue, kind);
            job.limits = limits;
            job.payload = payload.unwrap_or(Value::Null);
            job.priority = priority;
            job.fingerprint = fingerprint;
            job.max_attempts = max_attempts;
            job.timeout_secs = timeout;
            job.run_at = run_at;
            job.deadline = deadline;
            job.approval_expires_at = approval_expires_at;
            let e = match idempotency_key {
                Some(key) => client.enqueue_once(tenant, &job, &key).await?,
                None => client.enqueue(tenant, &job).await?,
            };
            match out {
                Format::Table => outln!(
                    "{} {} ({} occurrence{})",
                    e.job.id,
                    if e.enqueued.deduplicated {
                        "deduplicated"
                    } else {
                        "enqueued"
                    },
                    e.enqueued.occurrences,
                    if e.enqueued.occurrences == 1 { "" } else { "s" }
                ),
                _ => output::one(out, &[], &e),
            }
        }
        Jobs::List {
            state,
            queue,
            kind,
            tenant,
            agent,
            limit,
        } => {
            let query = JobQuery {
                state,
                queue,
                kind,
                tenant_id: tenant,
                agent_id: agent,
                after: None,
                limit: Some(limit.clamp(1, 500)),
            };
            output::list(out, JOB_COLUMNS, &client.list_jobs(&query).await?.items);
        }
        Jobs::Show { id } => {
            let detail = client.job(id).await?;
            match out {
                Format::Table => {
                    output::one(out, JOB_FIELDS, &detail.job);
                    for status in &detail.limit_status {
                        let verb = if status.blocking {
                            "waiting for"
                        } else {
                            "under"
                        };
                        outln!("{verb} {}", status.describe());
                    }
                    if !detail.job.attempts.is_empty() {
                        outln!("\nfailed attempts:");
                        output::list(
                            out,
                            &[
                                ("ATTEMPT", "attempt"),
                                ("AGENT", "agent_id"),
                                ("FAILED", "failed_at"),
                                ("ERROR", "error"),
                            ],
                            &detail.job.attempts,
                        );
                    }
                    if !detail.history.is_empty() {
                        outln!("\nhistory:");
                        output::list(
                            out,
                            &[("AT", "at"), ("ACTION", "action"), ("ACTOR", "actor")],
                            &detail.history,
                        );
                    }
                }
                _ => output::one(out, &[], &detail),
            }
        }
        Jobs::Cancel { id } => output::one(out, JOB_FIELDS, &client.cancel(id).await?),
        Jobs::Retry { id } => output::one(out, JOB_FIELDS, &client.retry(id).await?),
        Jobs::Approve { id } => output::one(out, JOB_FIELDS, &client.approve(id).await?),
        Jobs::Watch { id, every } => {
            let mut last = None;
            loop {
                let job = client.job(id).await?.job;
                if last != Some(job.state) {
                    match out {
                        Format::Table => outln!("{} {}", job.updated_at, job.state),
                        _ => outln!(
                            "{}",
                            serde_json::json!({"at": job.updated_at, "state": job.state})
                        ),
                    }
                    last = Some(job.state);
                }
                if job.state.is_terminal() {
                    return Ok(if job.state == homeostat_model::JobState::Succeeded {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    });
                }
                tokio::time::sleep(Duration::from_secs(every.max(1))).await;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn tokens(client: &Client, out: Format, t: Tokens) -> Result<(), ClientError> {
    let created = match t {
        Tokens::Create {
            kind: TokenType::Bootstrap,
            tenant,
            ttl,
            uses,
            ..
        } => {
            client
                .create_bootstrap_token(&NewBootstrapTokenRequest {
                    tenant_id: tenant,
                    ttl_secs: ttl.unwrap_or(24 * 3600),
                    uses,
                })
                .await?
        }
        Tokens::Create {
            kind: TokenType::ApiKey,
            tenant,
            role,
            ttl,
            ..
        } => {
            let role = role.unwrap_or(if tenant.is_some() {
                KeyRole::Tenant
            } else {
                KeyRole::Viewer
            });
            client
                .create_api_key(&NewApiKeyRequest {
                    role,
                    tenant_id: tenant,
                    ttl_secs: ttl,
                })
                .await?
        }
        Tokens::List { kind } => {
            let list = match kind {
                TokenType::Bootstrap => client.bootstrap_tokens().await?,
                TokenType::ApiKey => client.api_keys().await?,
            };
            output::list(out, TOKEN_COLUMNS, &list);
            return Ok(());
        }
        Tokens::Revoke { id } => {
            client.revoke(id).await?;
            if out == Format::Table {
                outln!("{id} revoked");
            }
            return Ok(());
        }
    };
    match out {
        Format::Table => {
            outln!("{} created; its secret, shown this once:", created.info.id);
            outln!("{}", created.secret);
        }
        _ => output::one(out, &[], &created),
    }
    Ok(())
}

async fn verify(client: &Client, out: Format) -> Result<ExitCode, ClientError> {
    use homeostat_model::operator::VerificationState;
    use std::io::IsTerminal;
    // The server's audit-chain-verify leader walks the chain; a bar follows
    // the walk's stored progress, on a terminal only.
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} events")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.enable_steady_tick(Duration::from_millis(100));
        b
    });
    let asked = std::time::Instant::now();
    let mut hinted = false;
    let v = client
        .verify_audit(Duration::from_millis(500), |v| {
            // The leader looks every few seconds; a walk pending much longer
            // has nobody to walk it.
            if v.state == VerificationState::Pending
                && !hinted
                && asked.elapsed() > Duration::from_secs(30)
            {
                hinted = true;
                let hint = "still waiting for a replica to walk the chain: is \
                    audit-chain-verify enabled and leading (`homeostat controllers list`)?";
                match &bar {
                    Some(b) => b.println(hint),
                    None => eprintln!("{hint}"),
                }
            }
            if let Some(b) = &bar {
                b.set_message(match v.state {
                    VerificationState::Pending => "waiting for the audit-chain-verify leader",
                    _ => "verifying the audit chain",
                });
                b.set_length(v.total);
                b.set_position(v.checked);
            }
        })
        .await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let v = v?;
    match out {
        Format::Table => match (&v.state, &v.first_break) {
            (VerificationState::Intact, _) => outln!(
                "the chain is intact: {} event(s) checked from #{}",
                v.checked,
                v.first_seq.unwrap_or(1)
            ),
            (VerificationState::Broken, Some(b)) => {
                outln!(
                    "BROKEN at #{}: {} ({} event(s) checked)",
                    b.seq,
                    b.reason,
                    v.checked
                )
            }
            _ => outln!(
                "the walk stopped: {}",
                v.error.as_deref().unwrap_or("no reason recorded")
            ),
        },
        _ => output::one(out, VERIFICATION_FIELDS, &v),
    }
    Ok(if v.state == VerificationState::Intact {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
