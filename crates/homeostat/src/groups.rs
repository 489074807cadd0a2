//! The process groups of the jobs an agent runs, kept in a file beside its
//! state file (`<state file>.jobs`): an agent killed with SIGKILL cannot
//! kill its jobs' programs, so the next agent started on that state file
//! kills the groups it finds there before it claims anything. A group is
//! killed only while a process in it still carries the job's id in its
//! environment (its leader may be gone: the parent-death signal killed it,
//! not what it started), so a group id used again by something else is
//! left alone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Running jobs' process groups: group id → job id.
#[derive(Debug)]
pub(crate) struct Groups {
    path: PathBuf,
    running: Mutex<BTreeMap<u32, String>>,
}

impl Groups {
    /// The groups file of the agent whose state file is `state_file`.
    pub(crate) fn beside(state_file: &Path) -> Self {
        Self {
            path: crate::agent::beside(state_file, "jobs"),
            running: Mutex::default(),
        }
    }

    /// Kills the groups a previous agent on this file left running; returns
    /// how many it killed.
    pub(crate) async fn kill_left_behind(&self) -> usize {
        let left: BTreeMap<u32, String> = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        let mut killed = 0;
        for (pgid, job) in &left {
            if group_runs_job(*pgid, job) {
                tracing::warn!(job = %job, pgid, "killing a job's programs a previous agent left running");
                crate::exec::kill_group(*pgid).await;
                killed += 1;
            }
        }
        self.write(&BTreeMap::new());
        killed
    }

    /// Notes a job's group as running.
    pub(crate) fn started(&self, pgid: u32, job: &str) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.insert(pgid, job.to_owned());
        self.write(&running);
    }

    /// Notes a job's group as gone.
    pub(crate) fn ended(&self, pgid: u32) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.remove(&pgid);
        self.write(&running);
    }

    fn write(&self, running: &BTreeMap<u32, String>) {
        let text = serde_json::to_string(running).unwrap_or_else(|_| "{}".into());
        let tmp = self.path.with_extension("jobs.tmp");
        let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot record running jobs' process groups");
        }
    }
}

/// Whether a live process of group `pgid` runs job `job` (its environment
/// says so).
fn group_runs_job(pgid: u32, job: &str) -> bool {
    let wanted = format!("HOMEOSTAT_JOB_ID={job}");
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| in_group(*pid, pgid))
        .any(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == wanted.as_bytes()))
        })
}

/// Whether process `pid` is alive (not a zombie) in group `pgid`.
fn in_group(pid: u32, pgid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // "pid (comm) state ppid pgrp ...": the name may hold anything, so
        // the fields are read after its closing parenthesis.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return false;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let group = fields.nth(1).and_then(|g| g.parse::<u32>().ok());
        state != Some("Z") && group == Some(pgid)
    })
}
