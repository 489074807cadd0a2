//! What an action tells the page it lands on. Only a code and numbers
//! travel in the address, never text, so a link made elsewhere cannot put
//! words in the dashboard's mouth.

use axum::response::{IntoResponse, Redirect, Response};
use serde::{Deserialize, Serialize};

/// What was done, from the `done` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Done {
    Cancelled,
    Retried,
    Approved,
    Drained,
    Triggered,
    Redriven,
    Verified,
}

/// The query parameters an action's redirect adds.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct NoticeQuery {
    pub(crate) done: Option<Done>,
    /// How many (bulk actions).
    pub(crate) n: Option<u64>,
    /// How many a bulk retry left alone because their tenant's quota
    /// refused them.
    #[serde(default)]
    pub(crate) refused: Option<u64>,
}

impl NoticeQuery {
    /// The sentence to show, if any.
    pub(crate) fn message(&self) -> Option<String> {
        let done = self.done?;
        let what = match done {
            Done::Cancelled => "cancelled",
            Done::Retried => "queued again",
            Done::Approved => "approved",
            Done::Drained => "The agent is draining: it finishes its jobs and claims no more.",
            Done::Triggered => "A run is due now; the leading replica starts it.",
            Done::Redriven => "The notification is pending again.",
            Done::Verified => "Verification asked for.",
        };
        let jobs = |n: u64| format!("{n} job{}", if n == 1 { "" } else { "s" });
        Some(match (done, self.n) {
            (Done::Cancelled | Done::Retried | Done::Approved, Some(n)) => match self.refused {
                Some(r) if r > 0 => format!(
                    "{} {what}; {} left as they were: the quota of live jobs of their tenant is full.",
                    jobs(n),
                    jobs(r)
                ),
                _ => format!("{} {what}.", jobs(n)),
            },
            (Done::Cancelled | Done::Retried | Done::Approved, None) => format!("Job {what}."),
            _ => what.to_owned(),
        })
    }

    /// The redirect to `path` telling `done` (Post/Redirect/Get).
    pub(crate) fn redirect(path: &str, done: Done, n: Option<u64>) -> Response {
        Redirect::to(&Self::to(path, done, n)).into_response()
    }

    /// The redirect after a bulk action: `n` done, `refused` refused by
    /// quotas.
    pub(crate) fn redirect_bulk(path: &str, done: Done, n: u64, refused: u64) -> Response {
        let mut to = Self::to(path, done, Some(n));
        if refused > 0 {
            to.push_str(&format!("&refused={refused}"));
        }
        Redirect::to(&to).into_response()
    }

    /// The address of `path` telling `done`.
    pub(crate) fn to(path: &str, done: Done, n: Option<u64>) -> String {
        let code = serde_json::to_value(done)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let sep = if path.contains('?') { '&' } else { '?' };
        match n {
            Some(n) => format!("{path}{sep}done={code}&n={n}"),
            None => format!("{path}{sep}done={code}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bulk_notice_counts_and_a_single_one_does_not() {
        let q = NoticeQuery {
            done: Some(Done::Cancelled),
            n: Some(3),
            refused: None,
        };
        assert_eq!(q.message().unwrap(), "3 jobs cancelled.");
        let q = NoticeQuery {
            done: Some(Done::Retried),
            n: None,
            refused: None,
        };
        assert_eq!(q.message().unwrap(), "Job queued again.");
        assert_eq!(
            NoticeQuery::to("/jobs?state=dead", Done::Retried, Some(2)),
            "/jobs?state=dead&done=retried&n=2"
        );
        let q = NoticeQuery {
            done: Some(Done::Retried),
            n: Some(2),
            refused: Some(1),
        };
        assert_eq!(
            q.message().unwrap(),
            "2 jobs queued again; 1 job left as they were: the quota of live jobs of their tenant is full."
        );
    }
}
