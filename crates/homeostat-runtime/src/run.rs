//! One reconcile run in flight: its future, polled by the controller's own
//! loop, with panics caught so they stay inside the run.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;
use tracing::Span;
use tracing::instrument::Instrumented;

use crate::{BoxError, BoxFuture, Outcome, Reconciled};

type RunFuture = Instrumented<BoxFuture<'static, Result<Reconciled, BoxError>>>;

/// What a run ended with: its own result, or the payload of its panic.
pub(crate) type RunResult = Result<Result<Reconciled, BoxError>, Box<dyn Any + Send>>;

pub(crate) struct InFlight {
    future: RunFuture,
    pub(crate) cancel: CancellationToken,
    pub(crate) started_at: SystemTime,
    pub(crate) deadline: SystemTime,
    pub(crate) span: Span,
    /// Whether the loop has polled it yet.
    pub(crate) polled: bool,
}

impl InFlight {
    pub(crate) fn new(
        future: RunFuture,
        cancel: CancellationToken,
        started_at: SystemTime,
        deadline: SystemTime,
        span: Span,
    ) -> Self {
        Self {
            future,
            cancel,
            started_at,
            deadline,
            span,
            polled: false,
        }
    }

    /// Polls the run to completion. Must not be polled again once it has
    /// completed (the loop drops the run then).
    pub(crate) fn finished(&mut self) -> Finished<'_> {
        Finished(&mut self.future)
    }
}

/// Completes with the run's result, catching a panic in any poll.
pub(crate) struct Finished<'a>(&'a mut RunFuture);

impl Future for Finished<'_> {
    type Output = RunResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<RunResult> {
        let future = &mut *self.0;
        match catch_unwind(AssertUnwindSafe(|| Pin::new(future).poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(result)) => Poll::Ready(Ok(result)),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

/// Outcome, items and error text of a finished run.
pub(crate) fn classify(result: RunResult) -> (Outcome, u64, Option<String>) {
    match result {
        Ok(Ok(done)) => (Outcome::Success, done.items, None),
        Ok(Err(e)) => (Outcome::Error, 0, Some(error_chain(&*e))),
        Err(payload) => (Outcome::Panic, 0, Some(panic_message(&*payload))),
    }
}

/// The error and its sources, joined: "outer: inner: root".
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    let detail = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    format!("panicked: {detail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("claim failed for job 42")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn errors_are_reported_with_their_sources() {
        let e: BoxError = Box::new(Outer(std::io::Error::other("connection reset")));
        let (outcome, items, text) = classify(Ok(Err(e)));
        assert_eq!(outcome, Outcome::Error);
        assert_eq!(items, 0);
        assert_eq!(
            text.as_deref(),
            Some("claim failed for job 42: connection reset")
        );
    }

    #[test]
    fn panics_with_string_payloads_keep_their_message() {
        let payload: Box<dyn Any + Send> = Box::new(format!("index {} out of range", 7));
        let (outcome, _, text) = classify(Err(payload));
        assert_eq!(outcome, Outcome::Panic);
        assert_eq!(text.as_deref(), Some("panicked: index 7 out of range"));
    }
}
