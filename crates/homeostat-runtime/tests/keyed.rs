//! Keyed controllers under tokio's paused time: keys deduplicated while
//! one runs, never reconciled twice at once, requeues and per-key backoff
//! on time, debounce, a resync and a new leader listing every key, lost
//! leadership cancelling what runs, and shutdown.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::{exact, metric, secs, wait_until};
use homeostat_runtime::{
    Action, BoxError, Clock, Context, ControllerOptions, InMemoryLeaseStore, KeyCounts, KeyHandle,
    KeyedOptions, Manager, ObjectStatus, READY, Reconciler, TokioClock,
};
use prometheus_client::registry::Registry;

const S: Duration = Duration::from_secs(1);

/// One reconcile of a key: when it started and ended (`None`: it did not
/// end, it was dropped), under which lease epoch.
#[derive(Debug, Clone)]
struct Call {
    key: String,
    started: SystemTime,
    ended: Option<SystemTime>,
    epoch: Option<u64>,
    /// Dropped before it ended (its run was cancelled).
    dropped: bool,
}

type Script = dyn Fn(&str, usize) -> (Duration, Result<Action, String>) + Send + Sync;

/// A reconciler whose every reconcile of key `k`, the `n`th of that key,
/// works `script(k, n).0` then answers `script(k, n).1`; it records each
/// call and the most reconciles of one key at once.
#[derive(Clone)]
struct Recorder {
    name: String,
    clock: TokioClock,
    keys: Arc<Mutex<Vec<String>>>,
    calls: Arc<Mutex<Vec<Call>>>,
    active: Arc<Mutex<HashMap<String, usize>>>,
    most_at_once: Arc<Mutex<usize>>,
    script: Arc<Script>,
}

impl Recorder {
    fn new(
        name: &str,
        clock: TokioClock,
        script: impl Fn(&str, usize) -> (Duration, Result<Action, String>) + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            clock,
            keys: Arc::default(),
            calls: Arc::default(),
            active: Arc::default(),
            most_at_once: Arc::default(),
            script: Arc::new(script),
        }
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn of(&self, key: &str) -> Vec<Call> {
        self.calls().into_iter().filter(|c| c.key == key).collect()
    }
}

/// Counts a reconcile of a key in and out, even when it is dropped.
struct Active {
    recorder: Recorder,
    key: String,
    call: usize,
}

impl Drop for Active {
    fn drop(&mut self) {
        *self
            .recorder
            .active
            .lock()
            .unwrap()
            .get_mut(&self.key)
            .unwrap() -= 1;
        let mut calls = self.recorder.calls.lock().unwrap();
        let call = &mut calls[self.call];
        call.dropped = call.ended.is_none();
    }
}

impl Reconciler for Recorder {
    type Key = String;

    fn name(&self) -> &str {
        &self.name
    }

    fn resync(&self) -> Duration {
        Duration::from_secs(600)
    }

    async fn keys(&self, _ctx: &Context) -> Result<Vec<String>, BoxError> {
        Ok(self.keys.lock().unwrap().clone())
    }

    async fn reconcile(&self, key: String, ctx: Context) -> Result<Action, BoxError> {
        let call = {
            let mut calls = self.calls.lock().unwrap();
            calls.push(Call {
                key: key.clone(),
                started: self.clock.now(),
                ended: None,
                epoch: ctx.epoch(),
                dropped: false,
            });
            calls.len() - 1
        };
        {
            let mut active = self.active.lock().unwrap();
            let n = active.entry(key.clone()).or_insert(0);
            *n += 1;
            let mut most = self.most_at_once.lock().unwrap();
            *most = (*most).max(*n);
        }
        let _active = Active {
            recorder: self.clone(),
            key: key.clone(),
            call,
        };
        let nth = self.calls().iter().filter(|c| c.key == key).count() - 1;
        let (work, answer) = (self.script)(&key, nth);
        tokio::time::sleep(work).await;
        self.calls.lock().unwrap()[call].ended = Some(self.clock.now());
        answer.map_err(Into::into)
    }
}

fn manager(
    clock: &TokioClock,
    registry: &mut Registry,
    recorder: &Recorder,
    keyed: KeyedOptions,
) -> (Manager, KeyHandle<String>) {
    let mut builder = Manager::builder()
        .clock(Arc::new(*clock))
        .metrics(registry)
        .seed(7);
    let handle = builder
        .register_keyed(recorder.clone(), exact(), keyed)
        .unwrap();
    (builder.start().unwrap(), handle)
}

fn done(work: Duration) -> (Duration, Result<Action, String>) {
    (work, Ok(Action::Done))
}

#[tokio::test(start_paused = true)]
async fn changes_to_a_key_while_it_runs_make_one_more_reconcile_never_a_concurrent_one() {
    let clock = TokioClock::at_test_epoch();
    let mut registry = Registry::default();
    let recorder = Recorder::new("sync", clock, |_, _| done(5 * S));
    let (manager, keys) = manager(
        &clock,
        &mut registry,
        &recorder,
        KeyedOptions::default().concurrency(4),
    );
    keys.enqueue("a".into());
    keys.enqueue("b".into());
    wait_until("a runs", S, || recorder.of("a").len() == 1).await;
    // Ten changes of a while it runs, and of b.
    for _ in 0..10 {
        keys.enqueue("a".into());
        keys.enqueue("b".into());
        tokio::time::sleep(S / 10).await;
    }
    wait_until("both ran twice", 20 * S, || {
        recorder
            .of("a")
            .iter()
            .filter(|c| c.ended.is_some())
            .count()
            == 2
            && recorder
                .of("b")
                .iter()
                .filter(|c| c.ended.is_some())
                .count()
                == 2
    })
    .await;
    tokio::time::sleep(20 * S).await;
    assert_eq!(recorder.of("a").len(), 2, "{:?}", recorder.of("a"));
    assert_eq!(recorder.of("b").len(), 2);
    assert_eq!(*recorder.most_at_once.lock().unwrap(), 1);
    let a = recorder.of("a");
    assert!(
        a[1].started >= a[0].ended.unwrap(),
        "the second began after the first ended"
    );
    // a and b ran side by side.
    assert_eq!(a[0].started, recorder.of("b")[0].started);
    assert_eq!(keys.depth(), (0, 0));
    manager.shutdown(S).await;
}

#[tokio::test(start_paused = true)]
async fn concurrency_bounds_the_keys_reconciled_at_once() {
    let clock = TokioClock::at_test_epoch();
    let mut registry = Registry::default();
    let recorder = Recorder::new("sync", clock, |_, _| done(10 * S));
    let (manager, keys) = manager(
        &clock,
        &mut registry,
        &recorder,
        KeyedOptions::default().concurrency(3),
    );
    for k in 0..7 {
        keys.enqueue(format!("k{k}"));
    }
    // The status shows the queue as the run works it.
    wait_until("three run", S, || recorder.calls().len() == 3).await;
    let status = manager.controller_status("sync").unwrap();
    assert_eq!(
        status.keys,
        Some(KeyCounts {
            waiting: 4,
            active: 3
        })
    );
    wait_until("all ran", 60 * S, || {
        recorder
            .calls()
            .iter()
            .filter(|c| c.ended.is_some())
            .count()
            == 7
    })
    .await;
    let t0 = recorder.calls()[0].started;
    let mut starts: Vec<f64> = recorder
        .calls()
        .iter()
        .map(|c| secs(t0, c.started))
        .collect();
    starts.sort_by(f64::total_cmp);
    assert_eq!(starts, [0.0, 0.0, 0.0, 10.0, 10.0, 10.0, 20.0]);
    let status = manager.controller_status("sync").unwrap();
    assert_eq!(status.keys, Some(KeyCounts::default()));
    manager.shutdown(S).await;
}

#[tokio::test(start_paused = true)]
async fn a_requeue_comes_back_on_time_and_failures_back_off_per_key_until_a_success_resets_them() {
    let clock = TokioClock::at_test_epoch();
    let mut registry = Registry::default();
    // "cert" asks to be looked at again in 30 s; "flaky" fails three times,
    // succeeds, then fails once more after a change.
    let recorder = Recorder::new("sync", clock, |key, n| match (key, n) {
        ("cert", _) => (Duration::ZERO, Ok(Action::RequeueAfter(30 * S))),
        ("flaky", 0..=2 | 4) => (Duration::ZERO, Err(format!("attempt {n} failed"))),
        _ => done(Duration::ZERO),
    });
    let (manager, keys) = manager(&clock, &mut registry, &recorder, KeyedOptions::default());
    let t0 = clock.now();
    keys.enqueue("cert".into());
    keys.enqueue("flaky".into());
    tokio::time::sleep(100 * S).await;
    let at = |key: &str| -> Vec<f64> {
        recorder
            .of(key)
            .iter()
            .map(|c| secs(t0, c.started))
            .collect()
    };
    assert_eq!(at("cert"), [0.0, 30.0, 60.0, 90.0]);
    assert_eq!(at("flaky"), [0.0, 1.0, 3.0, 7.0], "backoff 1, 2, 4 s");
    // After its success a change fails once: its backoff starts again.
    keys.enqueue("flaky".into());
    tokio::time::sleep(5 * S).await;
    assert_eq!(at("flaky")[4..], [100.0, 101.0]);
    assert_eq!(
        metric(
            &registry,
            "homeostat_controller_key_retries_total{controller=\"sync\"}"
        ),
        4.0
    );
    manager.shutdown(S).await;
}

#[tokio::test(start_paused = true)]
async fn a_debounced_key_waits_until_its_changes_stop() {
    let clock = TokioClock::at_test_epoch();
    let mut registry = Registry::default();
    let recorder = Recorder::new("sync", clock, |_, _| done(Duration::ZERO));
    let (manager, keys) = manager(
        &clock,
        &mut registry,
        &recorder,
        KeyedOptions::default().debounce(5 * S),
    );
    let t0 = clock.now();
    for _ in 0..4 {
        keys.enqueue("noisy".into());
        tokio::time::sleep(2 * S).await;
    }
    tokio::time::sleep(20 * S).await;
    let starts: Vec<f64> = recorder
        .of("noisy")
        .iter()
        .map(|c| secs(t0, c.started))
        .collect();
    assert_eq!(
        starts,
        [11.0],
        "5 s after the last of four changes 2 s apart"
    );
    manager.shutdown(S).await;
}

#[tokio::test(start_paused = true)]
async fn a_resync_reconciles_every_key_without_a_change() {
    let clock = TokioClock::at_test_epoch();
    let mut registry = Registry::default();
    let recorder = Recorder::new("sync", clock, |_, _| done(Duration::ZERO));
    *recorder.keys.lock().unwrap() = vec!["x".into(), "y".into()];
    let (manager, _keys) = manager(&clock, &mut registry, &recorder, KeyedOptions::default());
    let t0 = clock.now();
    tokio::time::sleep(1300 * S).await;
    for key in ["x", "y"] {
        let starts: Vec<f64> = recorder
            .of(key)
            .iter()
            .map(|c| secs(t0, c.started))
            .collect();
        assert_eq!(starts, [0.0, 600.0, 1200.0], "{key}");
    }
    manager.shutdown(S).await;
}

#[tokio::test(start_paused = true)]
async fn losing_the_lease_cancels_reconciles_and_the_next_leader_takes_every_key() {
    let clock = TokioClock::at_test_epoch();
    let leases = Arc::new(InMemoryLeaseStore::new(Arc::new(clock)));
    let recorder = Recorder::new("sync", clock, |_, _| done(60 * S));
    *recorder.keys.lock().unwrap() = vec!["a".into(), "b".into()];
    let replica = |holder: &str, registry: &mut Registry| {
        let mut builder = Manager::builder()
            .clock(Arc::new(clock))
            .lease_store(Arc::clone(&leases))
            .lease_ttl(15 * S)
            .holder(holder)
            .metrics(registry);
        let handle = builder
            .register_keyed(
                recorder.clone(),
                ControllerOptions::default().jitter(0.0).timeout(300 * S),
                KeyedOptions::default(),
            )
            .unwrap();
        (builder.start().unwrap(), handle)
    };
    let (mut ra, mut rb) = (Registry::default(), Registry::default());
    let (a, _) = replica("a", &mut ra);
    wait_until("a reconciles both", S, || recorder.calls().len() == 2).await;
    let first_epoch = recorder.calls()[0].epoch;
    // An operator hands the lease over; b is there to take it.
    leases.revoke("sync");
    let (b, _) = replica("b", &mut rb);
    // a notices at its next renewal and drops what it ran; b, leading from
    // its first run, lists every key again and reconciles them.
    wait_until("a's reconciles were dropped", 10 * S, || {
        recorder
            .calls()
            .iter()
            .filter(|c| c.epoch == first_epoch)
            .all(|c| c.dropped)
    })
    .await;
    wait_until("b reconciled both", 120 * S, || {
        recorder
            .calls()
            .iter()
            .filter(|c| c.ended.is_some())
            .count()
            == 2
    })
    .await;
    let finished: Vec<Call> = recorder
        .calls()
        .into_iter()
        .filter(|c| c.ended.is_some())
        .collect();
    assert!(
        finished.iter().all(|c| c.epoch > first_epoch),
        "{finished:?}"
    );
    let mut keys: Vec<&str> = finished.iter().map(|c| c.key.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["a", "b"]);
    assert!(!a.controller_status("sync").unwrap().leader);
    a.shutdown(S).await;
    b.shutdown(S).await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_reconciles_finish_within_the_grace_and_cancels_the_rest() {
    let clock = TokioClock::at_test_epoch();
    let mut registry = Registry::default();
    let recorder = Recorder::new("sync", clock, |key, _| match key {
        "quick" => done(2 * S),
        _ => done(100 * S),
    });
    let (manager, keys) = manager(&clock, &mut registry, &recorder, KeyedOptions::default());
    keys.enqueue("quick".into());
    keys.enqueue("slow".into());
    wait_until("both run", S, || recorder.calls().len() == 2).await;
    let report = manager.shutdown(5 * S).await;
    assert_eq!(report.timed_out, ["sync"], "{report:?}");
    assert!(recorder.of("quick")[0].ended.is_some());
    assert!(recorder.of("slow")[0].ended.is_none());
    assert_eq!(
        recorder.active.lock().unwrap().values().sum::<usize>(),
        0,
        "the slow reconcile was dropped, not left running"
    );
}

/// Objects with a generation; a reconcile acts only on a generation its
/// status has not observed, and fails while an object is marked broken.
#[derive(Default)]
struct Specs {
    generations: Mutex<HashMap<String, u64>>,
    broken: Mutex<Vec<String>>,
    statuses: Mutex<HashMap<String, ObjectStatus>>,
    /// (key, generation) of each reconcile that did the work.
    acted: Mutex<Vec<(String, u64)>>,
    reconciles: Mutex<usize>,
}

struct Converge(Arc<Specs>, TokioClock);

impl Reconciler for Converge {
    type Key = String;

    fn name(&self) -> &str {
        "converge"
    }

    fn resync(&self) -> Duration {
        Duration::from_secs(60)
    }

    async fn keys(&self, _ctx: &Context) -> Result<Vec<String>, BoxError> {
        Ok(self.0.generations.lock().unwrap().keys().cloned().collect())
    }

    async fn reconcile(&self, key: String, _ctx: Context) -> Result<Action, BoxError> {
        *self.0.reconciles.lock().unwrap() += 1;
        let generation = self.0.generations.lock().unwrap()[&key];
        let mut status = self
            .0
            .statuses
            .lock()
            .unwrap()
            .get(&key)
            .cloned()
            .unwrap_or_default();
        if status.is_current(generation) {
            return Ok(Action::Done);
        }
        self.0.acted.lock().unwrap().push((key.clone(), generation));
        status.observe(generation);
        let broken = self.0.broken.lock().unwrap().contains(&key);
        let (ready, reason) = if broken {
            (false, "Broken")
        } else {
            (true, "Synced")
        };
        status.set_ready(ready, reason, "", self.1.now());
        self.0.statuses.lock().unwrap().insert(key, status);
        if broken {
            return Err("broken".into());
        }
        Ok(Action::Done)
    }
}

#[tokio::test(start_paused = true)]
async fn an_unchanged_generation_is_a_no_op_and_a_new_one_or_a_failure_acts_again() {
    let clock = TokioClock::at_test_epoch();
    let specs = Arc::new(Specs::default());
    specs
        .generations
        .lock()
        .unwrap()
        .extend([("a".to_owned(), 1), ("b".to_owned(), 1)]);
    let mut registry = Registry::default();
    let mut builder = Manager::builder()
        .clock(Arc::new(clock))
        .metrics(&mut registry)
        .seed(7);
    let keys = builder
        .register_keyed(
            Converge(Arc::clone(&specs), clock),
            exact(),
            KeyedOptions::default(),
        )
        .unwrap();
    let manager = builder.start().unwrap();
    let acted = || specs.acted.lock().unwrap().clone();
    wait_until("both act once", S, || acted().len() == 2).await;

    // Change events and a resync with no new generation: reconciled, and
    // nothing done.
    for _ in 0..3 {
        keys.enqueue("a".into());
        tokio::time::sleep(S).await;
    }
    tokio::time::sleep(61 * S).await;
    assert!(*specs.reconciles.lock().unwrap() >= 7);
    assert_eq!(acted().len(), 2, "{:?}", acted());

    // A new generation acts once; a failure leaves the object not ready,
    // so its retry acts again on the same generation.
    specs.generations.lock().unwrap().insert("a".into(), 2);
    specs.broken.lock().unwrap().push("b".into());
    specs.generations.lock().unwrap().insert("b".into(), 2);
    keys.enqueue("a".into());
    keys.enqueue("b".into());
    wait_until("b is retried", 10 * S, || {
        acted().iter().filter(|(k, g)| k == "b" && *g == 2).count() == 2
    })
    .await;
    assert_eq!(
        acted().iter().filter(|(k, _)| k == "a").collect::<Vec<_>>(),
        [&("a".to_owned(), 1), &("a".to_owned(), 2)]
    );
    let b = specs.statuses.lock().unwrap()["b"].clone();
    assert_eq!(b.observed_generation, Some(2));
    assert_eq!(b.condition(READY).unwrap().reason, "Broken");
    manager.shutdown(S).await;
}
