//! What one replica counts, another sees: the jobs a replica completes are
//! counted in its memory and written within a few seconds, before it reads
//! the counts itself, and when it closes.

use homeostat_testkit::{self as backends, agent, completions, tenant, wakes, woken};

use std::time::{Duration, Instant};

use homeostat_model::{
    JobState, NewJob, NewStep, NewWorkflow, PlanTier, StepCondition, WorkflowState,
};
use homeostat_store::{Completion, Store, StoreClock};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_sees_the_jobs_another_completed_once_it_wrote_its_counts() {
    let Some(test) = backends::postgres().await else {
        return;
    };
    let one = test
        .replica_on(StoreClock::system())
        .await
        .expect("PostgreSQL");
    let two = test
        .replica_on(StoreClock::system())
        .await
        .expect("PostgreSQL");
    let t = tenant(&test, "acme", PlanTier::Standard).await;
    let a = agent(&test, Some(t), &["q"]).await;
    let jobs: Vec<NewJob> = (0..4).map(|_| NewJob::new("q", "build")).collect();
    one.enqueue_batch(t, &jobs).await.unwrap();
    let claimed = one.claim(a, 4, Duration::from_secs(60)).await.unwrap();
    let done: Vec<Completion> = completions(&claimed);
    one.complete_batch(a, &done).await.unwrap();

    let succeeded = |store: &Store| {
        let store = store.clone();
        async move {
            let since = store.now() - jiff::SignedDuration::from_secs(3600);
            store
                .finished_per_minute(since)
                .await
                .unwrap()
                .iter()
                .map(|m| m.succeeded)
                .sum::<u64>()
        }
    };
    // Written within a few seconds, without the first replica reading or
    // closing.
    let deadline = Instant::now() + Duration::from_secs(30);
    while succeeded(&two).await < 4 {
        assert!(Instant::now() < deadline, "the counts were never written");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(succeeded(&two).await, 4);
    // Counted since then: written when the replica closes.
    let jobs: Vec<NewJob> = (0..2).map(|_| NewJob::new("q", "build")).collect();
    one.enqueue_batch(t, &jobs).await.unwrap();
    let claimed = one.claim(a, 2, Duration::from_secs(60)).await.unwrap();
    let done: Vec<Completion> = completions(&claimed);
    one.complete_batch(a, &done).await.unwrap();
    one.close().await;
    assert_eq!(succeeded(&two).await, 6);
    two.close().await;
    test.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_wake_claims_waiting_on_another_replica_only_for_what_its_own_did_not_cover() {
    let Some(test) = backends::postgres().await else {
        return;
    };
    let one = test.replica().await.expect("PostgreSQL");
    let two = test.replica().await.expect("PostgreSQL");
    let t = tenant(&test, "acme", PlanTier::Standard).await;
    one.listening().await;
    two.listening().await;
    let mut here = Vec::new();
    let mut there = Vec::new();
    for _ in 0..2 {
        let a = agent(&test, Some(t), &["builds"]).await;
        here.push(one.queued_waiter(a, None, 1).await.unwrap());
    }
    for _ in 0..3 {
        let a = agent(&test, Some(t), &["builds"]).await;
        there.push(two.queued_waiter(a, None, 1).await.unwrap());
    }
    // A marker: a waiter on the second replica for a queue of its own.
    // Announcements arrive in order, so once the marker's has, so has every
    // earlier one.
    let marker = agent(&test, Some(t), &["marker"]).await;
    let mut marker_waiter = two.queued_waiter(marker, None, 1).await.unwrap();

    // One job: the enqueueing replica's own waiter takes it; nothing is
    // announced to the other.
    one.enqueue(t, &NewJob::new("builds", "b")).await.unwrap();
    assert!(woken(&mut here[0]).await);
    // Three more: one left here, two announced.
    let jobs: Vec<NewJob> = (0..3).map(|_| NewJob::new("builds", "b")).collect();
    one.enqueue_batch(t, &jobs).await.unwrap();
    assert!(woken(&mut here[1]).await);
    one.enqueue(t, &NewJob::new("marker", "m")).await.unwrap();
    wakes(&mut marker_waiter, "the marker").await;
    let mut woke = Vec::new();
    for w in &mut there {
        woke.push(woken(w).await);
    }
    assert_eq!(
        woke,
        [true, true, false],
        "the other replica woke more claims than the jobs needed"
    );
    one.close().await;
    two.close().await;
    test.cleanup().await;
}

/// A step's completion moves the steps that need it in its own statement
/// on the replica that leased it, and through the trigger on any other:
/// a join whose parents finish one each way is released by the second
/// completion, in that completion's transaction, whichever comes first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_is_released_whichever_replica_completes_its_parents() {
    let Some(test) = backends::postgres().await else {
        return;
    };
    let one = test.replica().await.expect("PostgreSQL");
    let two = test.replica().await.expect("PostgreSQL");
    two.listening().await;
    let t = tenant(&test, "acme", PlanTier::Standard).await;
    let a = agent(&test, Some(t), &["ci"]).await;
    let step = |name: &str, needs: &[&str]| NewStep {
        name: name.into(),
        job: NewJob::new("ci", name),
        needs: needs.iter().map(|n| (*n).to_owned()).collect(),
        when: StepCondition::OnSuccess,
    };
    // First the leasing replica's own completion, then the other's; then
    // the other way round.
    for leasing_first in [true, false] {
        let wf = one
            .submit_workflow(
                t,
                &NewWorkflow {
                    name: "fan-in".into(),
                    steps: vec![step("a", &[]), step("b", &[]), step("join", &["a", "b"])],
                },
                "test",
            )
            .await
            .unwrap();
        let claimed = one.claim(a, 10, Duration::from_secs(60)).await.unwrap();
        assert_eq!(claimed.len(), 2, "a and b");
        let done = completions(&claimed);
        let (first, second) = if leasing_first {
            (&one, &two)
        } else {
            (&two, &one)
        };
        first.complete_batch(a, &done[..1]).await.unwrap();
        let join = wf.steps.iter().find(|s| s.name == "join").unwrap().job_id;
        let pending = test.get_job(join).await.unwrap();
        assert_eq!(pending.state, JobState::Pending, "one need left");
        // A claim waiting on the other replica hears of the release, by
        // the trigger's NOTIFY or by the completion statement's.
        let mut waiting = two.queued_waiter(a, None, 1).await.unwrap();
        second.complete_batch(a, &done[1..]).await.unwrap();
        let released = test.get_job(join).await.unwrap();
        assert_eq!(
            released.state,
            JobState::Queued,
            "leasing first: {leasing_first}"
        );
        wakes(&mut waiting, "the claim waiting for the join").await;
        let claimed = two.claim(a, 10, Duration::from_secs(60)).await.unwrap();
        let ctx = claimed[0].workflow.as_ref().unwrap();
        assert_eq!((ctx.step.as_str(), ctx.succeeded), ("join", 2));
        two.complete_batch(a, &completions(&claimed)).await.unwrap();
        let wf = test.workflow(wf.id).await.unwrap();
        assert_eq!(wf.state, WorkflowState::Succeeded);
    }
    one.close().await;
    two.close().await;
    test.cleanup().await;
}
