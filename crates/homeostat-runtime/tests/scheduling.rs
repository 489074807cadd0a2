//! Scheduling semantics of the manager, under tokio's paused time.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use homeostat_runtime::{
    Clock, ControllerOptions, Manager, ManagerError, Outcome, Reconciled, RunReason, TokioClock,
};
use prometheus_client::registry::Registry;

const S: Duration = Duration::from_secs(1);

fn builder(clock: &TokioClock, registry: &mut Registry) -> homeostat_runtime::ManagerBuilder {
    Manager::builder()
        .clock(Arc::new(*clock))
        .metrics(registry)
        .seed(7)
}

#[tokio::test(start_paused = true)]
async fn jitter_stays_within_bounds_and_differs_between_ticks() {
    let clock = TokioClock::at_test_epoch();
    let mut registry = Registry::default();
    let (jittered, jp) = TestController::quick("jittered", 10 * S);
    let (steady, sp) = TestController::quick("steady", 10 * S);
    let manager = start(
        builder(&clock, &mut registry),
        vec![
            (jittered, ControllerOptions::default().jitter(0.1)),
            (steady, exact()),
        ],
    );
    tokio::time::sleep(Duration::from_secs(400)).await;
    manager.shutdown(S).await;

    let gaps = |probe: &Probe| -> Vec<f64> {
        let runs = probe.runs();
        runs.windows(2)
            .map(|w| secs(w[0].scheduled_at, w[1].scheduled_at))
            .collect()
    };
    let jittered_gaps = gaps(&jp);
    assert!(jittered_gaps.len() >= 30, "{} gaps", jittered_gaps.len());
    for gap in &jittered_gaps {
        assert!((9.0..=11.0).contains(gap), "gap {gap}s outside 10s ± 10%");
    }
    let mut distinct = jittered_gaps.clone();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup();
    assert!(
        distinct.len() > jittered_gaps.len() / 2,
        "jitter must be drawn afresh each tick: {jittered_gaps:?}"
    );
    assert!(gaps(&sp).iter().all(|gap| *gap == 10.0), "{:?}", gaps(&sp));
}

#[tokio::test(start_paused = true)]
async fn run_on_start_runs_at_once_while_the_other_waits_for_its_first_tick() {
    let clock = TokioClock::at_test_epoch();
    let t0 = clock.now();
    let mut registry = Registry::default();
    let (eager, ep) = TestController::quick("eager", 30 * S);
    let (patient, pp) = TestController::quick("patient", 30 * S);
    let manager = start(
        builder(&clock, &mut registry),
        vec![
            (eager, exact().run_on_start(true)),
            (patient, exact().run_on_start(false)),
        ],
    );
    wait_until("the eager controller ran", S, || ep.count() == 1).await;
    assert_eq!(ep.runs()[0].started_at, t0);
    assert_eq!(ep.runs()[0].reason, RunReason::Start);
    assert_eq!(pp.count(), 0);
    assert_eq!(
        manager.controller_status("patient").unwrap().next_run,
        Some(t0 + 30 * S)
    );

    wait_until("the patient controller ran", 31 * S, || pp.count() == 1).await;
    assert_eq!(pp.runs()[0].started_at, t0 + 30 * S);
    assert_eq!(pp.runs()[0].reason, RunReason::Tick);
    manager.shutdown(S).await;
}

#[tokio::test(start_paused = true)]
async fn a_slow_run_skips_ticks_and_never_overlaps() {
    let clock = TokioClock::at_test_epoch();
    let mut registry = Registry::default();
    let (slow, probe) = TestController::slow("slow", S, Duration::from_millis(3500));
    let manager = start(
        builder(&clock, &mut registry),
        vec![(slow, exact().timeout(10 * S))],
    );
    tokio::time::sleep(Duration::from_millis(10_500)).await;

    // Runs start at 0, 4 and 8 s; the ticks at 1-3, 5-7 and 9-10 s find a run
    // still going.
    let starts: Vec<f64> = probe
        .runs()
        .iter()
        .map(|r| secs(probe.runs()[0].started_at, r.started_at))
        .collect();
    assert_eq!(starts, vec![0.0, 4.0, 8.0]);
    assert_eq!(probe.max_active(), 1);
    assert_eq!(outcomes(&registry, "slow", "skipped_overlap"), 8.0);
    assert_eq!(outcomes(&registry, "slow", "success"), 2.0);
    manager.shutdown(10 * S).await;
}

#[tokio::test(start_paused = true)]
async fn a_timeout_cancels_the_run_and_is_recorded() {
    let clock = TokioClock::at_test_epoch();
    let mut registry = Registry::default();
    let (stuck, probe) = TestController::stuck("stuck", 60 * S);
    let manager = start(
        builder(&clock, &mut registry),
        vec![(stuck, exact().timeout(2 * S))],
    );
    wait_until("the run timed out", 3 * S, || {
        outcomes(&registry, "stuck", "timeout") == 1.0
    })
    .await;

    let run = &probe.runs()[0];
    assert!(run.ctx.is_cancelled(), "the run's cancellation must fire");
    assert_eq!(probe.active(), 0, "the timed-out run must be dropped");
    let status = manager.controller_status("stuck").unwrap();
    let last = status.last_run.unwrap();
    assert_eq!(last.outcome, Outcome::Timeout);
    assert_eq!(last.duration, 2 * S);
    assert!(last.error.unwrap().contains("timed out after 2s"));
    assert_eq!(status.consecutive_failures, 1);
    assert!(!status.running);
    manager.shutdown(S).await;
}

#[tokio::test(start_paused = true)]
async fn a_panic_is_isolated_and_counted_and_the_schedule_goes_on() {
    let clock = TokioClock::at_test_epoch();
    let mut registry = Registry::default();
    let (panicky, pp) = TestController::new("panicky", 5 * S, |_, _| async {
        if true {
            panic!("boom in reconcile");
        }
        Ok(Reconciled::nothing())
    });
    let (healthy, hp) = TestController::quick("healthy", S);
    let manager = start(
        builder(&clock, &mut registry),
        vec![(panicky, exact()), (healthy, exact())],
    );
    tokio::time::sleep(Duration::from_millis(20_500)).await;

    assert!(
        pp.count() >= 3,
        "the panicking controller keeps its schedule"
    );
    assert_eq!(outcomes(&registry, "panicky", "panic"), pp.count() as f64);
    assert_eq!(hp.count(), 21, "the other controller is unaffected");
    assert_eq!(outcomes(&registry, "healthy", "success"), 21.0);
    let last = manager
        .controller_status("panicky")
        .unwrap()
        .last_run
        .unwrap();
    assert_eq!(last.outcome, Outcome::Panic);
    assert_eq!(last.error.as_deref(), Some("panicked: boom in reconcile"));
    let report = manager.shutdown(S).await;
    assert_eq!(report.stopped, vec!["panicky", "healthy"]);
}

#[tokio::test(start_paused = true)]
async fn failures_retry_with_backoff_and_success_resets_it() {
    let clock = TokioClock::at_test_epoch();
    let mut registry = Registry::default();
    // Fails four times, then succeeds.
    let (flaky, fp) = TestController::new("flaky", 60 * S, |_, n| async move {
        if n < 4 {
            Err(format!("database blip #{n}").into())
        } else {
            Ok(Reconciled::items(3))
        }
    });
    // Always fails: the retry delay is capped at its interval.
    let (broken, bp) =
        TestController::new("broken", 5 * S, |_, _| async { Err("still broken".into()) });
    let manager = start(
        builder(&clock, &mut registry),
        vec![(flaky, exact()), (broken, exact())],
    );
    tokio::time::sleep(Duration::from_millis(80_500)).await;

    let offsets = |probe: &Probe| -> Vec<f64> {
        let runs = probe.runs();
        runs.iter()
            .map(|r| secs(runs[0].started_at, r.started_at))
            .collect()
    };
    assert_eq!(offsets(&fp), vec![0.0, 1.0, 3.0, 7.0, 15.0, 75.0]);
    let reasons: Vec<RunReason> = fp.runs().iter().map(|r| r.reason).collect();
    assert_eq!(
        reasons,
        [
            RunReason::Start,
            RunReason::Retry,
            RunReason::Retry,
            RunReason::Retry,
            RunReason::Retry,
            RunReason::Tick
        ]
    );
    let status = manager.controller_status("flaky").unwrap();
    assert_eq!(status.consecutive_failures, 0);
    assert_eq!(status.last_run.unwrap().items, 3);
    assert_eq!(outcomes(&registry, "flaky", "error"), 4.0);

    assert_eq!(
        offsets(&bp)[..7],
        [0.0, 1.0, 3.0, 7.0, 12.0, 17.0, 22.0],
        "delays 1, 2, 4 s, then capped at the 5 s interval"
    );
    let broken_status = manager.controller_status("broken").unwrap();
    assert_eq!(broken_status.consecutive_failures as usize, bp.count());
    assert_eq!(
        broken_status.last_run.unwrap().error.as_deref(),
        Some("still broken")
    );
    manager.shutdown(S).await;
}

#[tokio::test(start_paused = true)]
async fn triggers_run_at_once_and_coalesce_while_a_run_is_going() {
    let clock = TokioClock::at_test_epoch();
    let mut registry = Registry::default();
    let (slow, probe) = TestController::slow("on-demand", 3600 * S, 5 * S);
    let manager = start(
        builder(&clock, &mut registry),
        vec![(slow, exact().run_on_start(false))],
    );
    let t0 = clock.now();
    manager.trigger("on-demand").unwrap();
    wait_until("the triggered run started", S, || probe.count() == 1).await;
    assert_eq!(probe.runs()[0].started_at, t0);

    for _ in 0..3 {
        manager.trigger("on-demand").unwrap();
    }
    tokio::time::sleep(30 * S).await;
    let runs = probe.runs();
    assert_eq!(
        runs.len(),
        2,
        "three triggers during a run make one more run"
    );
    assert_eq!(runs[1].reason, RunReason::Trigger);
    assert_eq!(secs(t0, runs[1].started_at), 5.0, "right after the first");
    assert_eq!(probe.max_active(), 1);
    assert!(matches!(
        manager.trigger("nope"),
        Err(ManagerError::UnknownController(name)) if name == "nope"
    ));
    manager.shutdown(S).await;
}

#[tokio::test(start_paused = true)]
async fn status_and_metrics_describe_each_controller() {
    let clock = TokioClock::at_test_epoch();
    let t0 = clock.now();
    let mut registry = Registry::default();
    let (quick, _) = TestController::quick("quick", 10 * S);
    let manager = start(builder(&clock, &mut registry), vec![(quick, exact())]);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let status = manager.status();
    assert_eq!(status.len(), 1);
    let quick = &status[0];
    assert_eq!(quick.name, "quick");
    assert!(quick.exclusive && quick.leader && !quick.running);
    assert_eq!(quick.last_success_at, Some(t0));
    assert_eq!(quick.next_run, Some(t0 + 10 * S));
    assert_eq!(quick.last_run.as_ref().unwrap().outcome, Outcome::Success);

    let labels = "{controller=\"quick\"}";
    assert_eq!(outcomes(&registry, "quick", "success"), 1.0);
    assert_eq!(
        metric(
            &registry,
            &format!("homeostat_controller_reconcile_items_total{labels}")
        ),
        1.0
    );
    assert_eq!(
        metric(&registry, &format!("homeostat_controller_leader{labels}")),
        1.0
    );
    assert_eq!(
        metric(
            &registry,
            &format!("homeostat_controller_reconcile_duration_seconds_count{labels}")
        ),
        1.0
    );
    let last_success = metric(
        &registry,
        &format!("homeostat_controller_last_success_timestamp_seconds{labels}"),
    );
    assert_eq!(last_success, 1_767_225_600.0);

    manager.shutdown(S).await;
    assert_eq!(
        metric(&registry, &format!("homeostat_controller_leader{labels}")),
        0.0,
        "leadership is released at shutdown"
    );
    assert_eq!(manager.controller_status("quick").unwrap().next_run, None);
}

#[tokio::test]
async fn registration_rejects_bad_configuration_with_the_controller_named() {
    let mut builder = Manager::builder();
    let (a, _) = TestController::quick("a", S);
    builder.register(a, exact()).unwrap();
    let (again, _) = TestController::quick("a", S);
    let err = builder.register(again, exact()).unwrap_err();
    assert_eq!(err.to_string(), "controller \"a\" is already registered");

    let (zero, _) = TestController::quick("zero", Duration::ZERO);
    let err = builder.register(zero, exact()).unwrap_err();
    assert!(matches!(err, ManagerError::ZeroInterval(ref n) if n == "zero"));

    let (jitter, _) = TestController::quick("jitter", S);
    let err = builder
        .register(jitter, ControllerOptions::default().jitter(1.5))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "controller \"jitter\": jitter 1.5 is outside 0.0..1.0"
    );

    let (timeout, _) = TestController::quick("timeout", S);
    let err = builder
        .register(timeout, exact().timeout(Duration::ZERO))
        .unwrap_err();
    assert!(matches!(err, ManagerError::ZeroTimeout(_)));

    let (empty, _) = TestController::quick("", S);
    assert!(matches!(
        builder.register(empty, exact()),
        Err(ManagerError::EmptyName)
    ));

    let err = Manager::builder()
        .lease_ttl(Duration::from_millis(10))
        .start()
        .unwrap_err();
    assert!(matches!(err, ManagerError::LeaseTtl { .. }));
}

#[tokio::test(start_paused = true)]
async fn a_run_sees_the_status_of_its_managers_controllers() {
    let clock = TokioClock::at_test_epoch();
    let mut registry = Registry::default();
    let (watcher, wp) = TestController::new("watcher", 10 * S, |ctx, _| async move {
        let names: Vec<String> = ctx.manager_status().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["watcher", "watched"]);
        Ok(Reconciled::items(names.len() as u64))
    });
    let (watched, _) = TestController::quick("watched", 10 * S);
    let manager = start(
        builder(&clock, &mut registry),
        vec![(watcher, exact()), (watched, exact())],
    );
    wait_until("the watcher ran", S, || wp.count() == 1).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let last = manager
        .controller_status("watcher")
        .unwrap()
        .last_run
        .unwrap();
    assert_eq!((last.outcome, last.items), (Outcome::Success, 2));
    manager.shutdown(S).await;
}

#[tokio::test(start_paused = true)]
async fn plans_are_asked_by_name_and_default_to_unsupported() {
    let clock = TokioClock::at_test_epoch();
    let mut registry = Registry::default();
    let (quick, probe) = TestController::quick("quick", 60 * S);
    let manager = start(
        builder(&clock, &mut registry),
        vec![(quick, exact().run_on_start(false))],
    );
    let plan = manager.plan("quick").await.unwrap();
    assert_eq!(plan.count, 0);
    assert!(plan.note.unwrap().contains("does not support dry runs"));
    assert_eq!(probe.count(), 0, "a plan is not a run");
    assert!(matches!(
        manager.plan("nope").await,
        Err(ManagerError::UnknownController(_))
    ));
    manager.shutdown(S).await;
}

#[tokio::test(start_paused = true)]
async fn a_run_that_asks_to_run_again_comes_back_before_its_interval() {
    let clock = TokioClock::at_test_epoch();
    let mut registry = Registry::default();
    // A sweep with three batches to do: at once after the first two, then
    // in 5 s (sooner than its minute), then as its interval says.
    let (sweep, probe) = TestController::new("sweep", 60 * S, |_, n| async move {
        Ok(match n {
            0 | 1 => Reconciled::items(1000).again_after(Duration::ZERO),
            2 => Reconciled::items(10).again_after(5 * S),
            // Later than the next tick: the tick wins.
            3 => Reconciled::nothing().again_after(600 * S),
            _ => Reconciled::nothing(),
        })
    });
    let manager = start(builder(&clock, &mut registry), vec![(sweep, exact())]);
    tokio::time::sleep(Duration::from_secs(130)).await;
    manager.shutdown(S).await;
    let runs = probe.runs();
    let offsets: Vec<f64> = runs
        .iter()
        .map(|r| secs(runs[0].started_at, r.started_at))
        .collect();
    assert_eq!(offsets, [0.0, 0.0, 0.0, 5.0, 65.0, 125.0]);
    let reasons: Vec<RunReason> = runs.iter().map(|r| r.reason).collect();
    assert_eq!(
        reasons,
        [
            RunReason::Start,
            RunReason::Again,
            RunReason::Again,
            RunReason::Again,
            RunReason::Tick,
            RunReason::Tick
        ]
    );
}
