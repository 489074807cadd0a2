//! A keyed controller on two replicas sharing a lease store, under random
//! interleavings of changes, failing reconciles and forced handovers of the
//! lease (proptest; each case on its own runtime with paused time).
//!
//! Every change is delivered to both replicas, as a change feed would be.
//! A reconcile applies the version of the object it reads only if its
//! lease epoch is still the store's (a fenced write). Checked once things
//! settle: every key's last change was applied, by a holder of the lease;
//! without a handover, before any resync could have caught it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use homeostat_runtime::{
    Action, Backoff, BoxError, Context, ControllerOptions, InMemoryLeaseStore, KeyedOptions,
    Manager, Reconciler, TokioClock,
};
use proptest::prelude::*;

const KEYS: usize = 4;

#[derive(Debug, Clone)]
enum Op {
    /// Object `key` changes (its version goes up).
    Change(usize),
    /// The next reconcile of `key` fails.
    Fail(usize),
    /// The lease is taken from its holder.
    Handover,
}

#[derive(Default)]
struct World {
    /// Each object's version now.
    version: HashMap<String, u64>,
    /// The version last applied, by key.
    applied: HashMap<String, u64>,
    /// Keys whose next reconcile fails.
    failing: HashMap<String, bool>,
}

#[derive(Clone)]
struct Syncer {
    world: Arc<Mutex<World>>,
    leases: Arc<InMemoryLeaseStore>,
    work: Duration,
}

impl Reconciler for Syncer {
    type Key = String;

    fn name(&self) -> &str {
        "sync"
    }

    fn resync(&self) -> Duration {
        Duration::from_secs(60)
    }

    async fn keys(&self, _ctx: &Context) -> Result<Vec<String>, BoxError> {
        Ok(self.world.lock().unwrap().version.keys().cloned().collect())
    }

    async fn reconcile(&self, key: String, ctx: Context) -> Result<Action, BoxError> {
        let read = self.world.lock().unwrap().version.get(&key).copied();
        tokio::time::sleep(self.work).await;
        let mut world = self.world.lock().unwrap();
        if world.failing.remove(&key).is_some() {
            return Err(format!("{key}: the remote refused").into());
        }
        // The fenced write: only under the lease's current epoch.
        let current = self.leases.current("sync").map(|l| l.epoch);
        if current.is_none() || current != ctx.epoch() {
            return Err("fenced: no longer the leader".into());
        }
        if let Some(v) = read {
            world.applied.insert(key, v);
        }
        Ok(Action::Done)
    }
}

fn ops() -> impl Strategy<Value = Vec<(u64, Op)>> {
    let op = prop_oneof![
        6 => (0..KEYS).prop_map(Op::Change),
        2 => (0..KEYS).prop_map(Op::Fail),
        1 => Just(Op::Handover),
    ];
    prop::collection::vec((0u64..3_000, op), 1..40)
}

fn simulate(events: Vec<(u64, Op)>, work_ms: u64, debounce_ms: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let clock = TokioClock::at_test_epoch();
        let leases = Arc::new(InMemoryLeaseStore::new(Arc::new(clock)));
        let world = Arc::new(Mutex::new(World::default()));
        let syncer = Syncer {
            world: Arc::clone(&world),
            leases: Arc::clone(&leases),
            work: Duration::from_millis(work_ms),
        };
        let mut replicas = Vec::new();
        for holder in ["a", "b"] {
            let mut builder = Manager::builder()
                .clock(Arc::new(clock))
                .lease_store(Arc::clone(&leases))
                .lease_ttl(Duration::from_secs(3))
                .holder(holder);
            let handle = builder
                .register_keyed(
                    syncer.clone(),
                    ControllerOptions::default().jitter(0.0),
                    KeyedOptions::default()
                        .concurrency(2)
                        .debounce(Duration::from_millis(debounce_ms))
                        .backoff(
                            Backoff::new(Duration::from_millis(100))
                                .max_delay(Duration::from_secs(1)),
                        ),
                )
                .unwrap();
            replicas.push((builder.start().unwrap(), handle));
        }
        let mut events = events;
        events.sort_by_key(|(at, _)| *at);
        let handover = events.iter().any(|(_, op)| matches!(op, Op::Handover));
        let mut now = 0;
        for (at, op) in events {
            tokio::time::sleep(Duration::from_millis(at - now)).await;
            now = at;
            match op {
                Op::Change(k) => {
                    let key = format!("k{k}");
                    *world
                        .lock()
                        .unwrap()
                        .version
                        .entry(key.clone())
                        .or_insert(0) += 1;
                    for (_, handle) in &replicas {
                        handle.enqueue(key.clone());
                    }
                }
                Op::Fail(k) => {
                    world.lock().unwrap().failing.insert(format!("k{k}"), true);
                }
                Op::Handover => leases.revoke("sync"),
            }
        }
        // Settle. Without a handover, well within the resync (60 s): the
        // changes alone must have been reconciled. After one, a replica
        // takes the lease at its next try: a change, or its next tick.
        let settle = if handover { 200 } else { 20 };
        tokio::time::sleep(Duration::from_secs(settle)).await;
        {
            let w = world.lock().unwrap();
            for (key, version) in &w.version {
                assert_eq!(
                    w.applied.get(key),
                    Some(version),
                    "{key}'s last change was not applied: {:?} against {:?}",
                    w.applied,
                    w.version
                );
            }
        }
        for (manager, _) in &replicas {
            manager.shutdown(Duration::from_secs(1)).await;
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_keys_last_change_is_applied_by_the_leader(
        events in ops(),
        work_ms in 0u64..400,
        debounce_ms in prop_oneof![Just(0u64), 1u64..300],
    ) {
        simulate(events, work_ms, debounce_ms);
    }
}
