//! Runs a job as a program: the payload on standard input (a workflow
//! step: `{"payload", "workflow"}`, how its needs ended beside it), the
//! job's facts in `HOMEOSTAT_JOB_*` (and `HOMEOSTAT_WORKFLOW_*`) variables, in a process group of its own so that a
//! cancellation, a lost lease or a timeout kills everything it started.
//! The program dies with its agent (a parent-death signal, set by
//! util-linux's `setpriv` where it is installed), and its group is recorded
//! ([`Groups`]) so that the next agent kills what a killed one left.
//!
//! Exit 0 completes the job with standard output as its result (JSON if it
//! parses, else a string); exit 75 (`EX_TEMPFAIL`) fails it as retryable;
//! any other exit fails it as permanent. The error is the tail of standard
//! error.

use std::process::Stdio;
use std::sync::Arc;

use homeostat_client::{JobError, JobHandler};
use homeostat_model::ClaimedJob;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::groups::Groups;

/// The exit code that asks for another attempt (sysexits' `EX_TEMPFAIL`).
pub(crate) const RETRY_EXIT_CODE: i32 = 75;
/// Most of standard output kept as the result.
const MAX_RESULT: usize = 64 * 1024;
/// Most of standard error kept as the error (its end).
const MAX_ERROR: usize = 4 * 1024;

/// A program run for each job.
#[derive(Debug, Clone)]
pub(crate) struct Exec {
    pub(crate) program: String,
    pub(crate) args: Vec<String>,
    /// Where running jobs' process groups are recorded.
    pub(crate) groups: Arc<Groups>,
    /// Whether `setpriv --pdeathsig` works here.
    pub(crate) pdeathsig: bool,
}

/// Whether `setpriv` can give a program a parent-death signal here.
pub(crate) async fn pdeathsig_works() -> bool {
    tokio::process::Command::new("setpriv")
        .args(["--pdeathsig", "KILL", "--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// Notes a job's group as gone when dropped, however the job ends.
struct Recorded<'a> {
    groups: &'a Groups,
    pgid: u32,
}

impl Drop for Recorded<'_> {
    fn drop(&mut self) {
        self.groups.ended(self.pgid);
    }
}

/// Reads all of `from`, keeping at most `keep` bytes (the first ones, or
/// with `tail` the last ones).
async fn read_bounded(mut from: impl AsyncRead + Unpin, keep: usize, tail: bool) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > keep {
            if tail {
                kept.drain(..kept.len() - keep);
            } else {
                kept.truncate(keep + 1);
            }
        }
    }
    kept
}

/// Kills the process group `pgid` (the job's program and its children).
pub(crate) async fn kill_group(pgid: u32) {
    signal_group(pgid, "KILL").await;
}

async fn signal_group(pgid: u32, signal: &str) {
    // kill(2) through libc needs `unsafe`, which this workspace denies; the
    // `kill` command sends the same signal to the group.
    let _ = tokio::process::Command::new("kill")
        .args([&format!("-{signal}"), "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status()
        .await;
}

/// How long a stopped program has between SIGTERM and SIGKILL: well inside
/// the margin an agent keeps before a lease it could not extend runs out.
const TERM_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

impl JobHandler for Exec {
    async fn handle(
        &self,
        job: ClaimedJob,
        stop: CancellationToken,
    ) -> Result<Option<Value>, JobError> {
        // With a parent-death signal the program is killed if the agent
        // dies (SIGKILL, a crash) instead of running on unsupervised.
        let mut command = if self.pdeathsig {
            let mut c = tokio::process::Command::new("setpriv");
            c.args(["--pdeathsig", "KILL", "--"]).arg(&self.program);
            c
        } else {
            tokio::process::Command::new(&self.program)
        };
        if let Some(step) = &job.workflow {
            command
                .env("HOMEOSTAT_WORKFLOW_ID", step.workflow_id.to_string())
                .env("HOMEOSTAT_WORKFLOW_STEP", &step.step);
        }
        // The job's trace, for the program to continue (the W3C variable
        // OpenTelemetry's SDKs read): the agent's span of this job's work
        // when it exports traces, else the context the claim gave.
        match &job.traceparent {
            Some(tp) => command.env("TRACEPARENT", tp),
            None => command.env_remove("TRACEPARENT"),
        };
        let mut child = command
            .args(&self.args)
            .env("HOMEOSTAT_JOB_ID", job.id.to_string())
            .env("HOMEOSTAT_JOB_KIND", &job.kind)
            .env("HOMEOSTAT_JOB_QUEUE", &job.queue)
            .env("HOMEOSTAT_JOB_ATTEMPT", job.attempt.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| JobError::permanent(format!("cannot start {}: {e}", self.program)))?;
        let pgid = child.id().unwrap_or_default();
        self.groups.started(pgid, &job.id.to_string());
        let _recorded = Recorded {
            groups: &self.groups,
            pgid,
        };
        let mut stdin = child.stdin.take().expect("piped");
        // A workflow step reads its payload beside how its needs ended
        // (docs/workflows.md); any other job, its payload alone.
        let payload = match &job.workflow {
            Some(step) => serde_json::json!({"payload": job.payload, "workflow": step}).to_string(),
            None => job.payload.to_string(),
        };
        // A program that does not read its input must not block the job.
        let feed = tokio::spawn(async move {
            let _ = stdin.write_all(payload.as_bytes()).await;
        });
        let stdout = tokio::spawn(read_bounded(
            child.stdout.take().expect("piped"),
            MAX_RESULT,
            false,
        ));
        let stderr = tokio::spawn(read_bounded(
            child.stderr.take().expect("piped"),
            MAX_ERROR,
            true,
        ));
        let status = tokio::select! {
            s = child.wait() => s,
            () = stop.cancelled() => {
                // SIGTERM first, so the program may note it stopped; then
                // the group goes, whatever it does.
                signal_group(pgid, "TERM").await;
                let _ = tokio::time::timeout(TERM_GRACE, child.wait()).await;
                kill_group(pgid).await;
                let _ = child.wait().await;
                feed.abort();
                return Err(JobError::retryable("stopped"));
            }
        };
        feed.abort();
        let out = stdout.await.unwrap_or_default();
        let err = stderr.await.unwrap_or_default();
        // Anything it left running in its group goes with it.
        kill_group(pgid).await;
        let status =
            status.map_err(|e| JobError::retryable(format!("waiting for the program: {e}")))?;
        let error_tail = String::from_utf8_lossy(&err).trim().to_owned();
        match status.code() {
            Some(0) => {
                if out.len() > MAX_RESULT {
                    return Err(JobError::permanent(format!(
                        "the result (standard output) is over {MAX_RESULT} bytes"
                    )));
                }
                let text = String::from_utf8_lossy(&out).trim().to_owned();
                if text.is_empty() {
                    return Ok(None);
                }
                Ok(Some(
                    serde_json::from_str(&text).unwrap_or(Value::String(text)),
                ))
            }
            Some(RETRY_EXIT_CODE) => Err(JobError::retryable(describe(&error_tail, "exit 75"))),
            Some(code) => Err(JobError::permanent(describe(
                &error_tail,
                &format!("exit {code}"),
            ))),
            // Killed from outside (the OOM killer, an operator): not the
            // job's own verdict, so another attempt, while attempts last.
            None => {
                use std::os::unix::process::ExitStatusExt;
                let how = match status.signal() {
                    Some(signal) => format!("killed by signal {signal}"),
                    None => "killed by a signal".to_owned(),
                };
                Err(JobError::retryable(describe(&error_tail, &how)))
            }
        }
    }
}

fn describe(stderr_tail: &str, how: &str) -> String {
    if stderr_tail.is_empty() {
        how.to_owned()
    } else {
        format!("{how}: {stderr_tail}")
    }
}
