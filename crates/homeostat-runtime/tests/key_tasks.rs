//! Long-running work per key under tokio's paused time: a keyed
//! controller keeps one task per object that tails the object's feed and
//! checkpoints how far it got through an event loop, under its lease. A
//! task starts with its object, restarts on a new generation from its
//! checkpoint, stops when its object goes; shutdown waits for each task's
//! final flush so the next leader resumes exactly there; a deposed
//! leader's tasks stop and their late writes are refused.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::{exact, wait_until};
use homeostat_runtime::{
    Action, BoxError, BoxFuture, Clock, Context, Ensured, EventLoop, InMemoryLeaseStore, KeyHandle,
    KeyTasks, KeyedOptions, Manager, Reconciler, TaskContext, TokioClock, keep_latest,
};
use prometheus_client::registry::Registry;

const S: Duration = Duration::from_secs(1);
const NAME: &str = "tails";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Started {
        key: String,
        generation: u64,
        epoch: u64,
        from: u64,
    },
    Stopped {
        key: String,
        generation: u64,
        epoch: u64,
        at: SystemTime,
        /// Whether its final flush was written.
        flushed: bool,
    },
}

/// The objects (key → generation) and their feeds (key → items published,
/// numbered from 0), and the store the tasks write to: per key the
/// checkpoint (the next item to apply), written only under the live lease.
#[derive(Default)]
struct World {
    objects: Mutex<HashMap<String, u64>>,
    feeds: Mutex<HashMap<String, u64>>,
    checkpoints: Mutex<HashMap<String, u64>>,
    /// Every item applied: key, item, the applying task's epoch.
    applied: Mutex<Vec<(String, u64, u64)>>,
    events: Mutex<Vec<Event>>,
    ensured: Mutex<Vec<(String, Ensured)>>,
}

impl World {
    fn with(objects: &[(&str, u64, u64)]) -> Arc<Self> {
        let world = Self::default();
        for (key, generation, items) in objects {
            world
                .objects
                .lock()
                .unwrap()
                .insert((*key).into(), *generation);
            world.feeds.lock().unwrap().insert((*key).into(), *items);
        }
        Arc::new(world)
    }

    fn publish(&self, key: &str, more: u64) {
        *self.feeds.lock().unwrap().get_mut(key).unwrap() += more;
    }

    fn applied(&self) -> Vec<(String, u64, u64)> {
        self.applied.lock().unwrap().clone()
    }

    fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    fn starts(&self, key: &str) -> Vec<(u64, u64, u64)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Started {
                    key: k,
                    generation,
                    epoch,
                    from,
                } if k == key => Some((generation, epoch, from)),
                _ => None,
            })
            .collect()
    }

    fn stops(&self, key: &str) -> Vec<(u64, u64, bool)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Stopped {
                    key: k,
                    generation,
                    epoch,
                    flushed,
                    ..
                } if k == key => Some((generation, epoch, flushed)),
                _ => None,
            })
            .collect()
    }

    fn checkpoint(&self, key: &str) -> Option<u64> {
        self.checkpoints.lock().unwrap().get(key).copied()
    }
}

struct Tails {
    world: Arc<World>,
    leases: Arc<InMemoryLeaseStore>,
    tasks: KeyTasks<String>,
}

impl Reconciler for Tails {
    type Key = String;

    fn name(&self) -> &str {
        NAME
    }

    fn resync(&self) -> Duration {
        Duration::from_secs(600)
    }

    async fn keys(&self, _ctx: &Context) -> Result<Vec<String>, BoxError> {
        Ok(self.world.objects.lock().unwrap().keys().cloned().collect())
    }

    async fn reconcile(&self, key: String, ctx: Context) -> Result<Action, BoxError> {
        let generation = self.world.objects.lock().unwrap().get(&key).copied();
        match generation {
            None => {
                self.tasks.stop(&ctx, &key).await?;
            }
            Some(generation) => {
                let world = Arc::clone(&self.world);
                let leases = Arc::clone(&self.leases);
                let k = key.clone();
                let ensured = self
                    .tasks
                    .ensure(&ctx, key.clone(), generation, move |task| {
                        tail(world, leases, k, task)
                    })
                    .await?;
                self.world.ensured.lock().unwrap().push((key, ensured));
            }
        }
        Ok(Action::Done)
    }
}

/// A key's task: applies its feed's items from the checkpoint on, once a
/// second, and records how far it got; the checkpoint is flushed every 5 s
/// and when the task stops, under the lease that started it.
async fn tail(
    world: Arc<World>,
    leases: Arc<InMemoryLeaseStore>,
    key: String,
    task: TaskContext,
) -> Result<(), BoxError> {
    let epoch = task.fence().expect("an exclusive controller's task").epoch;
    let from = world.checkpoint(&key).unwrap_or(0);
    world.events.lock().unwrap().push(Event::Started {
        key: key.clone(),
        generation: task.generation(),
        epoch,
        from,
    });
    let store = Arc::clone(&world);
    let checkpoints = EventLoop::spawn(
        "checkpoints",
        5 * S,
        keep_latest,
        move |batch: HashMap<String, u64>| -> BoxFuture<'static, Result<(), BoxError>> {
            let fenced_in = leases.current(NAME).is_some_and(|l| l.epoch == epoch);
            let store = Arc::clone(&store);
            Box::pin(async move {
                if !fenced_in {
                    return Err("fenced: another replica leads".into());
                }
                store.checkpoints.lock().unwrap().extend(batch);
                Ok(())
            })
        },
    );
    let mut next = from;
    loop {
        let published = world.feeds.lock().unwrap().get(&key).copied().unwrap_or(0);
        while next < published {
            world
                .applied
                .lock()
                .unwrap()
                .push((key.clone(), next, epoch));
            next += 1;
            checkpoints.record(key.clone(), next);
        }
        tokio::select! {
            () = task.stopped() => break,
            () = tokio::time::sleep(S) => {}
        }
    }
    let flushed = checkpoints.close().await.is_ok();
    world.events.lock().unwrap().push(Event::Stopped {
        key,
        generation: task.generation(),
        epoch,
        at: task.clock().now(),
        flushed,
    });
    Ok(())
}

fn replica(
    clock: TokioClock,
    leases: &Arc<InMemoryLeaseStore>,
    world: &Arc<World>,
    holder: &str,
) -> (Manager, KeyHandle<String>) {
    let mut registry = Registry::default();
    let mut builder = Manager::builder()
        .clock(Arc::new(clock))
        .lease_store(Arc::clone(leases))
        .lease_ttl(15 * S)
        .holder(holder)
        .metrics(&mut registry)
        .seed(3);
    let tails = Tails {
        world: Arc::clone(world),
        leases: Arc::clone(leases),
        tasks: KeyTasks::new(),
    };
    let handle = builder
        .register_keyed(tails, exact(), KeyedOptions::default())
        .unwrap();
    (builder.start().unwrap(), handle)
}

fn leases(clock: TokioClock) -> Arc<InMemoryLeaseStore> {
    Arc::new(InMemoryLeaseStore::new(Arc::new(clock)))
}

/// Each (key, item) of `feeds` applied exactly once.
fn assert_each_applied_once(world: &World, feeds: &[(&str, u64)]) {
    let mut applied: Vec<(String, u64)> = world
        .applied()
        .into_iter()
        .map(|(k, i, _)| (k, i))
        .collect();
    applied.sort();
    let mut expected: Vec<(String, u64)> = feeds
        .iter()
        .flat_map(|(k, n)| (0..*n).map(|i| ((*k).to_owned(), i)))
        .collect();
    expected.sort();
    assert_eq!(applied, expected);
}

#[tokio::test(start_paused = true)]
async fn a_task_runs_per_object_restarts_on_a_new_generation_and_stops_when_the_object_goes() {
    let clock = TokioClock::at_test_epoch();
    let leases = leases(clock);
    let world = World::with(&[("a", 1, 3), ("b", 1, 2)]);
    let (manager, keys) = replica(clock, &leases, &world, "m");
    wait_until("both objects' items are applied", 5 * S, || {
        world.applied().len() == 5
    })
    .await;
    assert_eq!(world.starts("a"), [(1, 1, 0)]);
    assert_eq!(world.starts("b"), [(1, 1, 0)]);
    wait_until("the status shows both tasks", 5 * S, || {
        manager.controller_status(NAME).unwrap().tasks == 2
    })
    .await;

    // A new generation of a: its task stops (its final flush written) and
    // one starts from that checkpoint; b's runs on untouched.
    world.objects.lock().unwrap().insert("a".into(), 2);
    keys.enqueue("a".into());
    wait_until("a restarts", 5 * S, || world.starts("a").len() == 2).await;
    assert_eq!(world.stops("a"), [(1, 1, true)]);
    assert_eq!(world.starts("a")[1], (2, 1, 3), "resumes at its checkpoint");
    assert_eq!(world.starts("b").len(), 1);
    world.publish("a", 2);
    wait_until("a's new items are applied", 5 * S, || {
        world.applied().len() == 7
    })
    .await;

    // The same generation again: nothing restarts.
    keys.enqueue("a".into());
    wait_until("a is reconciled again", 5 * S, || {
        world
            .ensured
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k == "a")
            .count()
            == 3
    })
    .await;
    let ensured: Vec<Ensured> = world
        .ensured
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, _)| k == "a")
        .map(|(_, e)| *e)
        .collect();
    assert_eq!(
        ensured,
        [Ensured::Started, Ensured::Restarted, Ensured::Unchanged]
    );

    // b goes: its task stops after writing where it got.
    world.objects.lock().unwrap().remove("b");
    keys.enqueue("b".into());
    wait_until("b stops", 5 * S, || world.stops("b").len() == 1).await;
    assert_eq!(world.stops("b"), [(1, 1, true)]);
    assert_eq!(world.checkpoint("b"), Some(2));
    wait_until("the status shows one task", 5 * S, || {
        manager.controller_status(NAME).unwrap().tasks == 1
    })
    .await;

    let report = manager.shutdown(10 * S).await;
    assert!(report.timed_out.is_empty(), "{report:?}");
    assert_eq!(world.stops("a"), [(1, 1, true), (2, 1, true)]);
    assert_eq!(world.checkpoint("a"), Some(5));
    assert_each_applied_once(&world, &[("a", 5), ("b", 2)]);
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_every_final_flush_and_the_next_leader_resumes_exactly_there() {
    let clock = TokioClock::at_test_epoch();
    let leases = leases(clock);
    let world = World::with(&[("a", 1, 4), ("b", 1, 4), ("c", 1, 4)]);
    let (first, _) = replica(clock, &leases, &world, "first");
    wait_until("the first items are applied", 5 * S, || {
        world.applied().len() == 12
    })
    .await;
    for key in ["a", "b", "c"] {
        world.publish(key, 3);
    }
    wait_until("more items are applied", 2 * S, || {
        world.applied().len() == 21
    })
    .await;
    // The periodic flush has not written them: the final one must.
    for key in ["a", "b", "c"] {
        assert!(world.checkpoint(key).is_none_or(|c| c < 7), "{key}");
    }

    let report = first.shutdown(10 * S).await;
    assert!(report.timed_out.is_empty(), "{report:?}");
    for key in ["a", "b", "c"] {
        assert_eq!(world.stops(key), [(1, 1, true)], "{key}");
        assert_eq!(world.checkpoint(key), Some(7), "{key}");
    }
    assert!(leases.current(NAME).is_none(), "the lease was given back");

    for key in ["a", "b", "c"] {
        world.publish(key, 2);
    }
    let (second, _) = replica(clock, &leases, &world, "second");
    wait_until("the second leader applies the rest", 5 * S, || {
        world.applied().len() == 27
    })
    .await;
    for key in ["a", "b", "c"] {
        assert_eq!(world.starts(key)[1], (1, 2, 7), "{key}");
    }
    assert_each_applied_once(&world, &[("a", 9), ("b", 9), ("c", 9)]);
    second.shutdown(10 * S).await;
}

#[tokio::test(start_paused = true)]
async fn a_deposed_leaders_tasks_stop_and_the_next_leader_resumes_from_the_last_checkpoint_written()
{
    let clock = TokioClock::at_test_epoch();
    let leases = leases(clock);
    let world = World::with(&[("a", 1, 10)]);
    let (old, _) = replica(clock, &leases, &world, "old");
    wait_until("a checkpoint is written", 10 * S, || {
        world.checkpoint("a") == Some(10)
    })
    .await;
    world.publish("a", 5);
    wait_until("more items are applied", 2 * S, || {
        world.applied().len() == 15
    })
    .await;

    // An operator hands the lease over; a new replica takes it.
    leases.revoke(NAME);
    let revoked_at = clock.now();
    let (new, _) = replica(clock, &leases, &world, "new");
    wait_until("the old leader's task stops", 15 * S, || {
        !world.stops("a").is_empty()
    })
    .await;
    wait_until("the new leader's task starts", 15 * S, || {
        world.starts("a").len() == 2
    })
    .await;
    world.publish("a", 3);
    wait_until("every item is applied", 10 * S, || {
        let applied = world.applied();
        (0..18).all(|i| applied.iter().any(|(_, item, _)| *item == i))
    })
    .await;

    // The old task stopped within the lease's renewal deadline, and its
    // last flush was refused: it no longer led.
    let Some(Event::Stopped { at, flushed, .. }) = world
        .events()
        .into_iter()
        .find(|e| matches!(e, Event::Stopped { epoch: 1, .. }))
    else {
        panic!("{:?}", world.events());
    };
    assert!(!flushed);
    assert!(
        at.duration_since(revoked_at).unwrap() <= 10 * S,
        "stopped {:?} after the lease was taken",
        at.duration_since(revoked_at)
    );
    // The new leader started where the last write left it, and applied
    // only from there: nothing lost, and only what came after the last
    // checkpoint written done twice.
    let (_, new_epoch, from) = world.starts("a")[1];
    assert!(new_epoch > 1);
    assert!((10..=15).contains(&from), "{from}");
    let by_new: Vec<u64> = world
        .applied()
        .into_iter()
        .filter(|(_, _, e)| *e == new_epoch)
        .map(|(_, i, _)| i)
        .collect();
    assert_eq!(by_new, (from..18).collect::<Vec<_>>());
    assert!(
        world
            .applied()
            .iter()
            .all(|(_, _, e)| *e == 1 || *e == new_epoch)
    );
    new.shutdown(10 * S).await;
    old.shutdown(10 * S).await;
    assert_eq!(world.checkpoint("a"), Some(18));
}
