//! Outcomes an agent has decided but the server has not yet taken, kept in
//! a file when the agent is given one: a job that finished while its
//! control plane was out of reach is reported by the next process started
//! on that file, instead of running again because its agent was restarted
//! before the server heard. Each outcome is written before it is first
//! sent and removed once the server has answered (or the job is no longer
//! the agent's), so a SIGKILL at any moment leaves nothing finished
//! unreported.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use homeostat_model::JobId;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::agent::JobError;

/// A job's outcome as decided by its handler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub(crate) enum Outcome {
    Completed { result: Option<Value> },
    Failed { message: String, retryable: bool },
}

impl From<Result<Option<Value>, JobError>> for Outcome {
    fn from(r: Result<Option<Value>, JobError>) -> Self {
        match r {
            Ok(result) => Self::Completed { result },
            Err(e) => Self::Failed {
                message: e.message,
                retryable: e.retryable,
            },
        }
    }
}

/// An outcome waiting for the server, under the lease it was decided in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Pending {
    pub(crate) lease_token: i64,
    #[serde(flatten)]
    pub(crate) outcome: Outcome,
}

/// The unsent outcomes, in memory and (if given a path) on disk.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    path: Option<PathBuf>,
    pending: Mutex<BTreeMap<JobId, Pending>>,
}

impl Outbox {
    /// An outbox kept in `path` (none: kept in memory only), with what a
    /// previous process left there. A file that cannot be read is reported
    /// and started afresh: those jobs heal by their leases, as without one.
    pub(crate) fn open(path: Option<PathBuf>) -> Self {
        let left = path.as_ref().map_or_else(BTreeMap::new, |p| {
            match std::fs::read_to_string(p) {
                Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
                    tracing::warn!(path = %p.display(), error = %e, "the unsent outcomes file is not readable; starting without it");
                    BTreeMap::new()
                }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "cannot read the unsent outcomes file; starting without it");
                    BTreeMap::new()
                }
            }
        });
        Self {
            path,
            pending: Mutex::new(left),
        }
    }

    /// Whether outcomes outlive this process.
    pub(crate) fn persistent(&self) -> bool {
        self.path.is_some()
    }

    /// What is waiting to be sent.
    pub(crate) fn pending(&self) -> Vec<(JobId, Pending)> {
        self.lock().iter().map(|(id, p)| (*id, p.clone())).collect()
    }

    /// Keeps an outcome until [`Outbox::sent`] (nothing to keep without a
    /// file: the sending task holds it).
    pub(crate) fn keep(&self, id: JobId, pending: Pending) {
        if !self.persistent() {
            return;
        }
        let mut all = self.lock();
        all.insert(id, pending);
        self.write(&all);
    }

    /// Forgets an outcome the server answered (or that is no longer ours).
    pub(crate) fn sent(&self, id: JobId) {
        if !self.persistent() {
            return;
        }
        let mut all = self.lock();
        if all.remove(&id).is_some() {
            self.write(&all);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<JobId, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the file at once (a rename), readable by its owner only:
    /// results are the jobs' own data.
    fn write(&self, all: &BTreeMap<JobId, Pending>) {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let Some(path) = &self.path else { return };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let written = (|| -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&serde_json::to_vec(all)?)?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot record unsent outcomes");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_kept_by_one_process_are_found_by_the_next() {
        let dir = std::env::temp_dir().join(format!("outbox-{}", homeostat_model::new_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.json.outcomes");
        let id = || JobId::from_uuid(homeostat_model::new_id());
        let (done, failed, forgotten) = (id(), id(), id());
        let first = Outbox::open(Some(path.clone()));
        first.keep(
            done,
            Pending {
                lease_token: 3,
                outcome: Ok(Some(serde_json::json!({"n": 1}))).into(),
            },
        );
        first.keep(
            failed,
            Pending {
                lease_token: 4,
                outcome: Err(JobError::permanent("bad input")).into(),
            },
        );
        first.keep(
            forgotten,
            Pending {
                lease_token: 5,
                outcome: Ok(None).into(),
            },
        );
        first.sent(forgotten);
        drop(first);

        let next = Outbox::open(Some(path.clone()));
        let mut left = next.pending();
        left.sort_by_key(|(_, p)| p.lease_token);
        assert_eq!(left.len(), 2, "{left:?}");
        assert_eq!(left[0].0, done);
        assert_eq!(
            left[0].1.outcome,
            Outcome::Completed {
                result: Some(serde_json::json!({"n": 1}))
            }
        );
        assert_eq!(left[1].0, failed);
        assert_eq!(
            left[1].1.outcome,
            Outcome::Failed {
                message: "bad input".into(),
                retryable: false
            }
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unreadable_file_starts_empty() {
        let dir = std::env::temp_dir().join(format!("outbox-{}", homeostat_model::new_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.json.outcomes");
        std::fs::write(&path, "{not json").unwrap();
        assert!(Outbox::open(Some(path)).pending().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
