//! `homeostat agent`: registers once (the credential is kept in a state
//! file), then runs a program for each job it claims, until SIGTERM or
//! SIGINT drains it (a second signal releases what still runs at once).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use homeostat_client::{Agent, Client, ClientError, JobError, JobHandler};
use homeostat_model::wire::{HeartbeatRequest, RegisterRequest};
use homeostat_model::{ClaimedJob, ErrorCode, NewAgent};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::exec::Exec;

/// What `homeostat agent` was asked.
#[derive(Debug, Clone)]
pub(crate) struct AgentArgs {
    /// Replicas of one control plane, the first tried first.
    pub(crate) servers: Vec<String>,
    pub(crate) bootstrap_token: Option<String>,
    pub(crate) queues: Vec<String>,
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) concurrency: u32,
    pub(crate) state_file: PathBuf,
    pub(crate) grace: Duration,
    pub(crate) once: bool,
    pub(crate) exec: Vec<String>,
}

/// What the state file keeps: the agent and its credential, whatever URL
/// reaches its control plane (`server` notes where it registered).
#[derive(Debug, Serialize, Deserialize)]
struct State {
    server: String,
    agent_id: String,
    credential: String,
}

/// The first pause before trying an unreachable server again at start.
const START_RETRY_INITIAL: std::time::Duration = std::time::Duration::from_secs(1);
/// The longest pause between two tries at start.
const START_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs `call` until it succeeds or fails in a way `again` does not accept
/// (then its error), trying again with backoff: an agent started before its
/// server, or during an outage, waits for it instead of exiting.
async fn until_reachable<T, F, Fut>(
    what: &str,
    again: fn(&ClientError) -> bool,
    mut call: F,
) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut pause = START_RETRY_INITIAL;
    loop {
        match call().await {
            Err(e) if again(&e) => {
                tracing::warn!(error = %e, retry_in_secs = pause.as_secs(), "{what}: the control plane is out of reach; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(START_RETRY_MAX);
            }
            other => return other,
        }
    }
}

fn load(path: &Path) -> Result<Option<State>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| format!("the state file {} is not readable: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!(
            "cannot read the state file {}: {e}",
            path.display()
        )),
    }
}

/// Writes the state readable by its owner only: it holds a credential.
fn save(path: &Path, state: &State) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(serde_json::to_string_pretty(state)?.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| format!("cannot write the state file {}: {e}", path.display()))
}

/// The control plane is out of reach or unavailable (a repeatable call).
fn out_of_reach(e: &ClientError) -> bool {
    e.code().is_out_of_reach()
}

/// The call did not happen: it never reached a server, or the server said
/// it did nothing (503). Only then is a registration sent again, which
/// would otherwise use its token twice.
fn nothing_happened(e: &ClientError) -> bool {
    e.never_sent() || e.status() == Some(503)
}

/// Exit codes shared with the CLI.
pub(crate) fn exit_code(e: &ClientError) -> ExitCode {
    ExitCode::from(match e.code() {
        ErrorCode::NotFound => 3,
        ErrorCode::Conflict | ErrorCode::StaleLease => 4,
        ErrorCode::Unreachable | ErrorCode::Unavailable => 5,
        _ => 1,
    })
}

/// The agent's client: from the state file, or registered now.
async fn credential(args: &AgentArgs) -> Result<Client, (ExitCode, String)> {
    let fail = |code: u8, msg: String| (ExitCode::from(code), msg);
    let anonymous = Client::builder(&args.servers[0])
        .failover(args.servers[1..].iter().cloned())
        .build()
        .map_err(|e| fail(2, e.to_string()))?;
    let state = load(&args.state_file).map_err(|m| fail(1, m))?;
    if let Some(state) = state {
        let client = anonymous.with_token(&state.credential);
        // Proves the credential before any claim.
        let beat = HeartbeatRequest::default();
        let proven = until_reachable("proving the saved credential", out_of_reach, || {
            client.heartbeat(&beat)
        })
        .await;
        return match proven {
            Ok(_) => {
                tracing::info!(agent = %state.agent_id, "resuming with the saved credential");
                Ok(client)
            }
            Err(e) if e.code() == ErrorCode::Unauthorized => Err(fail(
                1,
                format!(
                    "the server refused this agent's saved credential (revoked, or another \
                     control plane's?); delete {} and start again with a new --bootstrap-token",
                    args.state_file.display()
                ),
            )),
            Err(e) => Err((exit_code(&e), e.to_string())),
        };
    }
    let Some(token) = &args.bootstrap_token else {
        return Err(fail(
            2,
            format!(
                "no saved credential in {}: pass --bootstrap-token (or \
                 HOMEOSTAT_BOOTSTRAP_TOKEN) to register",
                args.state_file.display(),
            ),
        ));
    };
    let req = RegisterRequest {
        bootstrap_token: token.clone(),
        agent: NewAgent {
            name: args.name.clone(),
            labels: args.labels.clone(),
            queues: args.queues.clone(),
        },
    };
    // A registration that never reached a server may be sent again; one
    // that did is not (it would use the token twice).
    let registered = until_reachable("registering", nothing_happened, || {
        anonymous.register(&req)
    })
    .await
        .map_err(|e| {
        let hint = if e.code() == ErrorCode::Unauthorized {
            ": the bootstrap token is unknown, expired or used up; ask an operator for a new one"
        } else {
            ""
        };
        (exit_code(&e), format!("{e}{hint}"))
    })?;
    save(
        &args.state_file,
        &State {
            server: args.servers.join(","),
            agent_id: registered.agent_id.to_string(),
            credential: registered.credential.clone(),
        },
    )
    .map_err(|m| fail(1, m))?;
    tracing::info!(agent = %registered.agent_id, state_file = %args.state_file.display(), "registered");
    Ok(anonymous.with_token(registered.credential))
}

/// A file kept beside the state file: `<state file>.<what>`.
pub(crate) fn beside(state_file: &Path, what: &str) -> PathBuf {
    let mut name = state_file.as_os_str().to_owned();
    name.push(".");
    name.push(what);
    PathBuf::from(name)
}

/// `--once`: the program's handler, stopping the agent after its first job.
#[derive(Debug)]
struct Once {
    exec: Exec,
    done: CancellationToken,
}

impl JobHandler for Once {
    async fn handle(
        &self,
        job: ClaimedJob,
        stop: CancellationToken,
    ) -> Result<Option<Value>, JobError> {
        let result = self.exec.handle(job, stop).await;
        self.done.cancel();
        result
    }
}

pub(crate) async fn run(args: AgentArgs) -> ExitCode {
    // Before anything else, even with the server out of reach: what a
    // killed agent left running must not run on beside the next attempt.
    let groups = std::sync::Arc::new(crate::groups::Groups::beside(&args.state_file));
    let killed = groups.kill_left_behind().await;
    if killed > 0 {
        tracing::warn!(
            killed,
            "killed the programs of jobs a previous agent left running"
        );
    }
    // Signals are heard from the start: a SIGTERM while the agent waits for
    // its control plane stops it cleanly, not by the signal's default
    // action.
    let (shutdown, abort) = (CancellationToken::new(), CancellationToken::new());
    tokio::spawn(signals(shutdown.clone(), abort.clone()));
    let proven = tokio::select! {
        c = credential(&args) => c,
        () = shutdown.cancelled() => {
            tracing::info!("stopped before the control plane was reached");
            return ExitCode::SUCCESS;
        }
    };
    let client = match proven {
        Ok(c) => c,
        Err((code, message)) => {
            eprintln!("homeostat agent: {message}");
            return code;
        }
    };
    let pdeathsig = crate::exec::pdeathsig_works().await;
    if !pdeathsig {
        tracing::warn!(
            "setpriv (util-linux) cannot set a parent-death signal here: a job's program outlives a killed agent until the next agent starts"
        );
    }
    let exec = Exec {
        program: args.exec[0].clone(),
        args: args.exec[1..].to_vec(),
        groups,
        pdeathsig,
    };
    let agent = Agent::builder(client)
        .queues(args.queues.clone())
        .concurrency(if args.once { 1 } else { args.concurrency })
        .grace(args.grace)
        .abort_on(abort)
        .keep_outcomes_in(beside(&args.state_file, "outcomes"));
    let ran = if args.once {
        let handler = Once {
            exec,
            done: shutdown.clone(),
        };
        agent.run(handler, shutdown).await
    } else {
        agent.run(exec, shutdown).await
    };
    match ran {
        Ok(report) => {
            tracing::info!(?report, "agent stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("homeostat agent: {e}");
            exit_code(&e)
        }
    }
}

/// The first SIGTERM or SIGINT drains; the second releases at once. The
/// handlers are installed by this call, before the returned future runs.
fn signals(
    shutdown: CancellationToken,
    abort: CancellationToken,
) -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            return;
        };
        stop_on(&mut term, &mut int, shutdown, abort).await;
    }
}

async fn stop_on(
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
    shutdown: CancellationToken,
    abort: CancellationToken,
) {
    for token in [shutdown, abort] {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!(
            "stopping: {}",
            if token.is_cancelled() {
                "again"
            } else {
                "draining"
            }
        );
        token.cancel();
    }
}
