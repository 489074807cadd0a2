//! Serves the API's HTTP/1 connections ([`serve`], for a program that
//! embeds homeostat; `homeostat run` uses it) within limits a hostile or
//! broken client cannot push past: a connection must send a request's headers
//! within `header_read_timeout` of opening or of its last answer (silent,
//! header-trickling and idle keep-alive connections are closed), and at
//! most `max_open` connections are open at once. At that bound a new
//! connection takes the place of the oldest idle one (no request in flight;
//! a waiting claim is in flight), so silent connections cannot starve a
//! probe or an agent. A file descriptor is a connection's: the bound is kept
//! under the open-file limit, or accept would fail for everything.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::ApiState;

/// What each connection may do.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request's headers arrive within this of the connection opening or
    /// of its last answer.
    pub header_read_timeout: Duration,
    /// Connections open at once (keep it under the open-file limit: each
    /// is a descriptor).
    pub max_open: usize,
}

impl Default for Limits {
    /// `api.header_read_timeout`'s and a conservative bound's defaults.
    fn default() -> Self {
        Self {
            header_read_timeout: crate::ApiSettings::default().header_read_timeout,
            max_open: 1_000,
        }
    }
}

/// Serves the whole API ([`crate::router`]) of `state` on `listener` until
/// `shutdown` resolves; then waiting claims answer at once, readiness
/// fails, requests in flight finish, and the heartbeats heard last are
/// written ([`ApiState::close`]) before it returns. Close the store (and
/// shut the manager down) after.
///
/// ```no_run
/// # async fn demo(state: homeostat_api::ApiState) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// let stop = tokio_util::sync::CancellationToken::new(); // cancelled on SIGTERM, say
/// homeostat_api::serve(listener, state, homeostat_api::Limits::default(), stop.cancelled_owned())
///     .await;
/// # Ok(())
/// # }
/// ```
pub async fn serve(
    listener: TcpListener,
    state: ApiState,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let stopping = state.shutdown_token();
    // A `Router` served as is is rebuilt for each connection (every route's
    // layered service cloned: ~115 KiB a connection, measured with 400 idle
    // ones); made once, each connection shares it.
    serve_router(listener, crate::router(state.clone()), limits, async move {
        shutdown.await;
        tracing::info!("stopping: finishing in-flight requests");
        stopping.cancel();
    })
    .await;
    state.close().await;
}

/// A connection as the bound sees it.
struct Open {
    /// Requests in flight (a response counts until its body is sent).
    busy: Arc<AtomicUsize>,
    /// Closes it.
    close: CancellationToken,
}

/// The open connections, oldest first: each stays until its socket is
/// closed, so the table's size is the descriptors connections hold.
#[derive(Default)]
struct Table {
    next: u64,
    open: BTreeMap<u64, Open>,
}

impl Table {
    /// Admits one more. At the bound the oldest idle connection not already
    /// closing is told to close (it leaves the table once closed); `None`
    /// when every one is busy, and the new one is refused.
    fn admit(&mut self, max_open: usize) -> Option<(u64, Arc<AtomicUsize>, CancellationToken)> {
        if self.open.len() >= max_open {
            let shed = self
                .open
                .values()
                .find(|c| !c.close.is_cancelled() && c.busy.load(Ordering::Acquire) == 0)?;
            shed.close.cancel();
        }
        let id = self.next;
        self.next += 1;
        let busy = Arc::new(AtomicUsize::new(0));
        let close = CancellationToken::new();
        self.open.insert(
            id,
            Open {
                busy: busy.clone(),
                close: close.clone(),
            },
        );
        Some((id, busy, close))
    }
}

/// Counts a request in flight until dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(busy: &Arc<AtomicUsize>) -> Self {
        busy.fetch_add(1, Ordering::AcqRel);
        Self(busy.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves `app` (any router: the probes', or one that merges homeostat's
/// into a program's own) on `listener` until `stop` resolves, then stops
/// accepting, lets each connection finish its request in flight, and
/// returns once all are closed.
pub async fn serve_router(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    stop: impl Future<Output = ()>,
) {
    let table = Arc::new(Mutex::new(Table::default()));
    let closed = Arc::new(tokio::sync::Notify::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let open = |table: &Mutex<Table>| {
        // A panic while holding it would be a bug here; the table stays
        // usable (its entries are plain data).
        table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .open
            .len()
    };
    tokio::pin!(stop);
    loop {
        // A connection admitted at the bound is one over it until the one
        // it displaced has closed: wait for that before accepting again, so
        // the descriptors held never pass the bound by more than one.
        let mut stopped = false;
        while !stopped && open(&table) > limits.max_open {
            tokio::select! {
                () = closed.notified() => {}
                () = &mut stop => stopped = true,
            }
        }
        if stopped {
            break;
        }
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors (or the like): everything would
                    // fail alike; wait for some to close.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let admitted = table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit(limits.max_open);
        let Some((id, busy, close)) = admitted else {
            // Every open connection has a request in flight: this one is
            // closed rather than left waiting for none.
            tracing::debug!("connection refused: every open connection is busy");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let in_flight = InFlight::new(&busy);
                let app = app.clone();
                async move {
                    let res = app.oneshot(req.map(axum::body::Body::new)).await?;
                    // Busy until the body is sent: the guard lives in the body.
                    Ok::<_, std::convert::Infallible>(res.map(|body| {
                        axum::body::Body::new(body.map_frame(move |frame| {
                            let _ = &in_flight;
                            frame
                        }))
                    }))
                }
            });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        let (table, closed) = (table.clone(), closed.clone());
        tokio::spawn(async move {
            tokio::select! {
                served = conn => {
                    if let Err(e) = served {
                        tracing::debug!(error = %e, "a connection ended in error");
                    }
                }
                () = close.cancelled() => {}
            }
            table
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .open
                .remove(&id);
            closed.notify_one();
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_bound_the_oldest_idle_connection_makes_room() {
        let mut table = Table::default();
        let (_, first_busy, first_close) = table.admit(3).unwrap();
        let (_, _, second_close) = table.admit(3).unwrap();
        let (_, _, third_close) = table.admit(3).unwrap();
        let _in_flight = InFlight::new(&first_busy);
        // The first is busy: the second, oldest of the idle, is told to go
        // (and stays counted until it has closed).
        assert!(table.admit(3).is_some());
        assert!(second_close.is_cancelled());
        assert!(!first_close.is_cancelled() && !third_close.is_cancelled());
        assert_eq!(table.open.len(), 4);
        // The next displaces the third, not the second again.
        assert!(table.admit(3).is_some());
        assert!(third_close.is_cancelled());
    }

    #[test]
    fn with_every_connection_busy_a_new_one_is_refused() {
        let mut table = Table::default();
        let (_, busy, _) = table.admit(1).unwrap();
        let in_flight = InFlight::new(&busy);
        assert!(table.admit(1).is_none());
        drop(in_flight);
        assert!(table.admit(1).is_some());
    }
}
