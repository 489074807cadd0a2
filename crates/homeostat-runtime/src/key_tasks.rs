//! Long-running work per key: a keyed controller's leader keeps one task
//! per object (a pipeline, a watch, the tail of a feed), started when the
//! object appears, restarted when its spec's generation changes, stopped
//! when it goes away.
//!
//! A task lives for the leadership term of the run that started it: it
//! is told to stop ([`TaskContext::stopped`]) when the lease is lost or
//! given back, when the manager shuts down, or when the reconciler stops
//! or replaces it, and it should then write what it holds (a final flush)
//! under its [`TaskContext::fence`]. At shutdown the manager waits for the
//! tasks, within the grace, before it gives the lease back, so those last
//! writes are not refused; a deposed leader's are. Whatever a task writes
//! as its checkpoint is where the next leader's task starts: the resync
//! that follows a change of leader reconciles every key, and so starts
//! every task again there.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info_span};

use crate::{BoxError, Clock, Context, Fence};

/// What a key's task gets: when to stop, and the lease to write under.
#[derive(Clone)]
pub struct TaskContext {
    generation: u64,
    stop: CancellationToken,
    fence: Option<Fence>,
    clock: Arc<dyn Clock>,
}

impl TaskContext {
    /// The generation of the object the task was started for.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Completes when the task must stop: write what is held, then return.
    pub async fn stopped(&self) {
        self.stop.cancelled().await;
    }

    /// Whether the task has been told to stop.
    pub fn is_stopped(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// The lease of the term that started the task: pass it to every
    /// write, so the store refuses them once another replica leads.
    pub fn fence(&self) -> Option<&Fence> {
        self.fence.as_ref()
    }

    /// The manager's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
}

impl fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskContext")
            .field("generation", &self.generation)
            .field("stopped", &self.is_stopped())
            .field("fence", &self.fence)
            .finish_non_exhaustive()
    }
}

/// What [`KeyTasks::ensure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// The key's task runs at that generation already: left alone.
    Unchanged,
    /// No task ran for the key (or not in this term): one was started.
    Started,
    /// The key's task ran at another generation, or had ended on its own:
    /// it was stopped (and waited for) and a new one started.
    Restarted,
}

struct Running {
    generation: u64,
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

impl Running {
    fn is_live(&self) -> bool {
        !self.stop.is_cancelled() && !self.handle.is_finished()
    }
}

/// One task per key, kept by a [`crate::Reconciler`] (hold it in the
/// reconciler and call it from `reconcile`, which never runs twice at once
/// for a key).
pub struct KeyTasks<K> {
    running: Mutex<HashMap<K, Running>>,
}

impl<K> Default for KeyTasks<K> {
    fn default() -> Self {
        Self {
            running: Mutex::new(HashMap::new()),
        }
    }
}

impl<K> fmt::Debug for KeyTasks<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyTasks")
            .field("tasks", &self.running.lock().unwrap().len())
            .finish()
    }
}

impl<K: Clone + Eq + Hash + fmt::Debug + Send + Sync + 'static> KeyTasks<K> {
    /// No tasks yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps a task running for `key` at `generation`, started by `start`
    /// if there is none in this term, or if the one there is runs another
    /// generation or has ended (it is stopped first, and its final flush
    /// waited for). Fails if the run is cancelled while it waits, or if
    /// the term has ended (this replica no longer leads).
    pub async fn ensure<F, Fut>(
        &self,
        ctx: &Context,
        key: K,
        generation: u64,
        start: F,
    ) -> Result<Ensured, BoxError>
    where
        F: FnOnce(TaskContext) -> Fut,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        let old = {
            let mut running = self.running.lock().unwrap();
            match running.get(&key) {
                Some(task) if task.generation == generation && task.is_live() => {
                    return Ok(Ensured::Unchanged);
                }
                _ => running.remove(&key),
            }
        };
        // A task of an earlier term was stopped with it: nothing to restart.
        let restarted = old.as_ref().is_some_and(|t| !t.stop.is_cancelled());
        if let Some(old) = old {
            stop_and_wait(ctx, &key, old).await?;
        }
        if ctx.term().is_cancelled() {
            return Err("this replica's term has ended; the next leader starts the task".into());
        }
        let stop = ctx.term().child_token();
        let task = start(TaskContext {
            generation,
            stop: stop.clone(),
            fence: ctx.fence().cloned(),
            clock: Arc::clone(ctx.clock()),
        });
        let span = info_span!("key_task", controller = ctx.controller(), key = ?key, generation);
        let controller = ctx.controller().to_owned();
        let shown = format!("{key:?}");
        let handle = ctx.tasks.spawn(
            async move {
                match task.await {
                    Ok(()) => debug!(controller, key = shown, "key task ended"),
                    Err(e) => error!(
                        controller,
                        key = shown,
                        error = crate::run::error_chain(&*e),
                        "key task failed"
                    ),
                }
            }
            .instrument(span),
        );
        self.running.lock().unwrap().insert(
            key,
            Running {
                generation,
                stop,
                handle,
            },
        );
        Ok(if restarted {
            Ensured::Restarted
        } else {
            Ensured::Started
        })
    }

    /// Stops `key`'s task, if one runs, and waits for it to end (its final
    /// flush); whether there was one. Fails if the run is cancelled first
    /// (the task still stops).
    pub async fn stop(&self, ctx: &Context, key: &K) -> Result<bool, BoxError> {
        let task = self.running.lock().unwrap().remove(key);
        match task {
            Some(task) => stop_and_wait(ctx, key, task).await.map(|()| true),
            None => Ok(false),
        }
    }

    /// The generation `key`'s task runs at, if one runs in this term.
    pub fn generation(&self, key: &K) -> Option<u64> {
        let running = self.running.lock().unwrap();
        running
            .get(key)
            .filter(|t| t.is_live())
            .map(|t| t.generation)
    }

    /// How many tasks run now.
    pub fn len(&self) -> usize {
        let running = self.running.lock().unwrap();
        running.values().filter(|t| t.is_live()).count()
    }

    /// Whether no task runs now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

async fn stop_and_wait<K: fmt::Debug>(
    ctx: &Context,
    key: &K,
    mut task: Running,
) -> Result<(), BoxError> {
    task.stop.cancel();
    tokio::select! {
        ended = &mut task.handle => {
            if let Err(e) = ended
                && e.is_panic()
            {
                let message = crate::run::panic_message(&*e.into_panic());
                error!(controller = ctx.controller(), key = ?key, error = message,
                    "key task panicked");
            }
            Ok(())
        }
        () = ctx.cancelled() => {
            Err(format!("cancelled while the task of {key:?} was stopping").into())
        }
    }
}
