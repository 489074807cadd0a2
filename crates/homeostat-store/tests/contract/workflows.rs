//! Workflows: steps run in the order of their needs, conditions decide what
//! runs after a failure, a skip carries down, cancel stops every step, and a
//! step reclaimed from a dead agent runs again before its dependents.

use std::collections::HashSet;

use homeostat_model::{
    AgentId, JobId, JobLimit, JobState, KeySource, LimitSelector, LimitSpec, NewJob, NewStep,
    NewWorkflow, PlanTier, StepCondition, Workflow, WorkflowState,
};
use homeostat_store::{Completion, Failure, Store, StoreError};
use homeostat_testkit::{At, agent, at, completions, on_both_backends, t0, tenant, wakes};

use crate::LEASE;

fn step(name: &str, needs: &[&str], when: StepCondition) -> NewStep {
    NewStep {
        name: name.into(),
        job: NewJob::new("ci", name),
        needs: needs.iter().map(|n| (*n).to_owned()).collect(),
        when,
    }
}

fn on_success(name: &str, needs: &[&str]) -> NewStep {
    step(name, needs, StepCondition::OnSuccess)
}

/// Submits a workflow "pipeline" of `steps` for `t` at the test's start.
async fn submit(store: &Store, t: homeostat_model::TenantId, steps: Vec<NewStep>) -> Workflow {
    store
        .at(t0())
        .submit_workflow(
            t,
            &NewWorkflow {
                name: "pipeline".into(),
                steps,
            },
            "test",
        )
        .await
        .unwrap()
}

fn job_of(wf: &Workflow, name: &str) -> JobId {
    wf.steps.iter().find(|s| s.name == name).unwrap().job_id
}

fn state_of(wf: &Workflow, name: &str) -> JobState {
    wf.steps.iter().find(|s| s.name == name).unwrap().state
}

/// Claims everything claimable; the names of the steps claimed.
async fn claim_all(store: &Store, a: AgentId, wf: &Workflow, secs: i64) -> Vec<(String, i64)> {
    let claimed = store.at(at(secs)).claim(a, 100, LEASE).await.unwrap();
    claimed
        .iter()
        .map(|c| {
            let name = wf
                .steps
                .iter()
                .find(|s| s.job_id == c.id)
                .unwrap()
                .name
                .clone();
            (name, c.lease_token)
        })
        .collect()
}

async fn complete(store: &Store, a: AgentId, wf: &Workflow, name: &str, token: i64, secs: i64) {
    store
        .at(at(secs))
        .complete(a, job_of(wf, name), token, None)
        .await
        .unwrap();
}

async fn steps_run_in_the_order_of_their_needs(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Standard).await;
    let a = agent(store, None, &["ci"]).await;
    let wf = submit(
        store,
        t,
        vec![
            on_success("deploy", &["test-a", "test-b"]),
            on_success("test-a", &["build"]),
            on_success("test-b", &["build"]),
            on_success("build", &[]),
        ],
    )
    .await;
    assert_eq!(wf.state, WorkflowState::Running);
    assert_eq!(state_of(&wf, "build"), JobState::Queued);
    assert_eq!(state_of(&wf, "deploy"), JobState::Pending);
    assert_eq!(wf.steps[0].needs, vec!["test-a", "test-b"]);

    let first = claim_all(store, a, &wf, 1).await;
    assert_eq!(
        first.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
        vec!["build"]
    );
    complete(store, a, &wf, "build", first[0].1, 2).await;
    let tests = claim_all(store, a, &wf, 3).await;
    let names: HashSet<&str> = tests.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(names, HashSet::from(["test-a", "test-b"]));
    complete(store, a, &wf, &tests[0].0, tests[0].1, 4).await;
    assert!(
        claim_all(store, a, &wf, 5).await.is_empty(),
        "deploy needs both"
    );
    let now = store.workflow(wf.id).await.unwrap();
    assert_eq!(state_of(&now, "deploy"), JobState::Pending);
    complete(store, a, &wf, &tests[1].0, tests[1].1, 6).await;
    // Released by the completion of its last need, in its transaction.
    let released = store.get_job(job_of(&wf, "deploy")).await.unwrap();
    assert_eq!(released.state, JobState::Queued);
    assert_eq!(released.updated_at, at(6));
    assert_eq!(
        released.deadline,
        Some(at(6) + store.options().default_queue_deadline),
        "its start-by deadline runs from its release"
    );
    let deploy = claim_all(store, a, &wf, 7).await;
    assert_eq!(deploy[0].0, "deploy");
    complete(store, a, &wf, "deploy", deploy[0].1, 8).await;
    assert_eq!(
        store.workflow(wf.id).await.unwrap().state,
        WorkflowState::Succeeded
    );
    let page = store.list_workflows(Some(t), None, 10).await.unwrap();
    assert_eq!(page.items.len(), 1);
    let summary = &page.items[0];
    assert_eq!(
        (summary.id, summary.steps, summary.unfinished),
        (wf.id, 4, 0)
    );
    assert_eq!(summary.state, WorkflowState::Succeeded);
    let other = tenant(store, "globex", PlanTier::Standard).await;
    assert!(
        store
            .list_workflows(Some(other), None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

async fn conditions_decide_what_runs_after_a_failure(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Standard).await;
    let a = agent(store, None, &["ci"]).await;
    let wf = submit(
        store,
        t,
        vec![
            on_success("build", &[]),
            on_success("test", &["build"]),
            on_success("deploy", &["test"]),
            step("report", &["build"], StepCondition::OnFailure),
            step("cleanup", &["deploy"], StepCondition::Always),
        ],
    )
    .await;
    let build = claim_all(store, a, &wf, 1).await;
    store
        .at(at(2))
        .fail(&Failure {
            agent: a,
            id: job_of(&wf, "build"),
            lease_token: build[0].1,
            error: "compile error",
            permanent: true,
        })
        .await
        .unwrap();
    // The failure skipped test, which skipped deploy, whose finish released
    // cleanup (always); report runs because build failed.
    let now = store.workflow(wf.id).await.unwrap();
    assert_eq!(state_of(&now, "build"), JobState::Dead);
    for skipped in ["test", "deploy"] {
        let s = now.steps.iter().find(|s| s.name == skipped).unwrap();
        assert_eq!(
            (s.state, s.skipped),
            (JobState::Cancelled, true),
            "{skipped}"
        );
    }
    let next = claim_all(store, a, &wf, 3).await;
    let names: HashSet<&str> = next.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(names, HashSet::from(["report", "cleanup"]));
    let skipped = store.get_job(job_of(&wf, "test")).await.unwrap();
    assert!(skipped.last_error.unwrap().contains("skipped"));
    assert_eq!(now.state, WorkflowState::Running);
    for (name, token) in &next {
        complete(store, a, &wf, name, *token, 4).await;
    }
    assert_eq!(
        store.workflow(wf.id).await.unwrap().state,
        WorkflowState::Failed
    );
}

async fn a_step_whose_failure_path_is_not_taken_is_skipped(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Standard).await;
    let a = agent(store, None, &["ci"]).await;
    let wf = submit(
        store,
        t,
        vec![
            on_success("build", &[]),
            step("report", &["build"], StepCondition::OnFailure),
        ],
    )
    .await;
    let build = claim_all(store, a, &wf, 1).await;
    complete(store, a, &wf, "build", build[0].1, 2).await;
    let now = store.workflow(wf.id).await.unwrap();
    let report = now.steps.iter().find(|s| s.name == "report").unwrap();
    assert_eq!((report.state, report.skipped), (JobState::Cancelled, true));
    assert_eq!(now.state, WorkflowState::Succeeded, "a skip is no failure");
}

async fn cancel_stops_every_step(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Standard).await;
    let a = agent(store, None, &["ci"]).await;
    let wf = submit(
        store,
        t,
        vec![
            on_success("build", &[]),
            on_success("test", &["build"]),
            step("cleanup", &["test"], StepCondition::Always),
        ],
    )
    .await;
    let build = claim_all(store, a, &wf, 1).await;
    let cancelled = store
        .at(at(2))
        .cancel_workflow(wf.id, "test")
        .await
        .unwrap();
    assert_eq!(cancelled.state, WorkflowState::Cancelled);
    assert_eq!(cancelled.cancelled_at, Some(at(2)));
    assert!(
        cancelled
            .steps
            .iter()
            .all(|s| s.state == JobState::Cancelled)
    );
    // The running step's agent hears of it; its late completion is stale.
    assert!(matches!(
        store
            .at(at(3))
            .complete(a, job_of(&wf, "build"), build[0].1, None)
            .await,
        Err(StoreError::StaleLease { .. })
    ));
    assert!(
        claim_all(store, a, &wf, 4).await.is_empty(),
        "nothing starts"
    );
    // Again: nothing changes.
    let again = store
        .at(at(5))
        .cancel_workflow(wf.id, "test")
        .await
        .unwrap();
    assert_eq!(again.cancelled_at, Some(at(2)));
}

async fn a_step_reclaimed_from_a_dead_agent_runs_again_before_its_dependents(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Standard).await;
    let lost = agent(store, None, &["ci"]).await;
    let wf = submit(
        store,
        t,
        vec![on_success("build", &[]), on_success("test", &["build"])],
    )
    .await;
    claim_all(store, lost, &wf, 1).await;
    // Its agent went silent; the lease ran out and the step is queued again.
    store
        .at(at(1) + LEASE + std::time::Duration::from_secs(1))
        .requeue_expired_leases(100, None, None)
        .await
        .unwrap();
    let now = store.workflow(wf.id).await.unwrap();
    assert_eq!(state_of(&now, "build"), JobState::Queued);
    assert_eq!(
        state_of(&now, "test"),
        JobState::Pending,
        "its need is not done"
    );
    let other = agent(store, None, &["ci"]).await;
    let later = 120;
    let again = claim_all(store, other, &wf, later).await;
    assert_eq!(again[0].0, "build");
    complete(store, other, &wf, "build", again[0].1, later + 1).await;
    let test = claim_all(store, other, &wf, later + 2).await;
    assert_eq!(test.len(), 1);
    assert_eq!(test[0].0, "test");
}

async fn a_wide_fan_in_runs_its_join_once(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Standard).await;
    let a = agent(store, None, &["ci"]).await;
    let parts: Vec<String> = (0..200).map(|i| format!("part-{i}")).collect();
    let mut steps: Vec<NewStep> = parts.iter().map(|p| on_success(p, &[])).collect();
    let needs: Vec<&str> = parts.iter().map(String::as_str).collect();
    steps.push(step("join", &needs, StepCondition::Always));
    let wf = store
        .at(t0())
        .submit_workflow(
            t,
            &NewWorkflow {
                name: "batch".into(),
                steps,
            },
            "test",
        )
        .await
        .unwrap();
    let claimed = store.at(at(1)).claim(a, 200, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 200);
    // Half fail, half succeed, in batches: the join is released once, by
    // the last.
    for (i, c) in claimed.iter().enumerate().skip(100) {
        store
            .at(at(2))
            .fail(&Failure {
                agent: a,
                id: c.id,
                lease_token: c.lease_token,
                error: "no",
                permanent: i % 2 == 0,
            })
            .await
            .unwrap();
    }
    store
        .at(at(3))
        .complete_batch(a, &completions(&claimed[..100]))
        .await
        .unwrap();
    let now = store.workflow(wf.id).await.unwrap();
    // The retryable half is scheduled again: not finished.
    assert_eq!(state_of(&now, "join"), JobState::Pending);
    let retried: Vec<_> = now
        .steps
        .iter()
        .filter(|s| s.state == JobState::Scheduled)
        .collect();
    assert_eq!(retried.len(), 50);
    for s in retried {
        store.at(at(4)).cancel(s.job_id, "test").await.unwrap();
    }
    let join = claim_all(store, a, &wf, 5).await;
    assert_eq!(
        join.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
        vec!["join"]
    );
}

async fn a_released_step_wakes_a_waiting_claim(store: &Store) {
    store.listening().await;
    let t = tenant(store, "acme", PlanTier::Standard).await;
    let builder = agent(store, None, &["ci"]).await;
    let wf = submit(
        store,
        t,
        vec![
            on_success("build", &[]),
            NewStep {
                job: NewJob::new("deploys", "deploy"),
                ..on_success("deploy", &["build"])
            },
        ],
    )
    .await;
    let deployer = agent(store, None, &["deploys"]).await;
    let mut waiting = store.queued_waiter(deployer, None, 1).await.unwrap();
    let build = claim_all(store, builder, &wf, 1).await;
    complete(store, builder, &wf, "build", build[0].1, 2).await;
    // Woken by the release, not by its long poll running out.
    wakes(&mut waiting, "the deployer's claim").await;
    let got = store.at(at(3)).claim(deployer, 1, LEASE).await.unwrap();
    assert_eq!(got[0].id, job_of(&wf, "deploy"));
}

async fn a_retry_reruns_what_failed_and_keeps_what_succeeded(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Standard).await;
    let a = agent(store, None, &["ci"]).await;
    let wf = store
        .at(t0())
        .submit_workflow(
            t,
            &NewWorkflow {
                name: "pipeline".into(),
                steps: vec![
                    on_success("build", &[]),
                    on_success("lint", &[]),
                    on_success("test", &["build", "lint"]),
                    on_success("deploy", &["test"]),
                ],
            },
            "operator:ann",
        )
        .await
        .unwrap();
    let first = claim_all(store, a, &wf, 1).await;
    for (name, token) in &first {
        if name == "build" {
            complete(store, a, &wf, name, *token, 2).await;
        } else {
            store
                .at(at(2))
                .fail(&Failure {
                    agent: a,
                    id: job_of(&wf, name),
                    lease_token: *token,
                    error: "lint errors",
                    permanent: true,
                })
                .await
                .unwrap();
        }
    }
    let failed = store.workflow(wf.id).await.unwrap();
    assert_eq!(failed.state, WorkflowState::Failed);
    let build_result = store.get_job(job_of(&wf, "build")).await.unwrap();

    let retried = store
        .at(at(10))
        .retry_workflow(wf.id, "operator:ann")
        .await
        .unwrap();
    assert_eq!(retried.state, WorkflowState::Running);
    assert_eq!(state_of(&retried, "build"), JobState::Succeeded, "kept");
    assert_eq!(state_of(&retried, "lint"), JobState::Queued);
    assert_eq!(state_of(&retried, "test"), JobState::Pending);
    assert_eq!(state_of(&retried, "deploy"), JobState::Pending);
    let lint = claim_all(store, a, &wf, 11).await;
    assert_eq!(lint.len(), 1);
    assert_eq!(lint[0].0, "lint");
    complete(store, a, &wf, "lint", lint[0].1, 12).await;
    // test needed build (kept) and lint (now succeeded): it runs.
    let test = claim_all(store, a, &wf, 13).await;
    assert_eq!(test[0].0, "test");
    complete(store, a, &wf, "test", test[0].1, 14).await;
    let deploy = claim_all(store, a, &wf, 15).await;
    complete(store, a, &wf, "deploy", deploy[0].1, 16).await;
    let done = store.workflow(wf.id).await.unwrap();
    assert_eq!(done.state, WorkflowState::Succeeded);
    assert_eq!(
        store
            .get_job(job_of(&wf, "build"))
            .await
            .unwrap()
            .finished_at,
        build_result.finished_at,
        "the succeeded step did not run again"
    );
    // Nothing left to retry; a running workflow is not retried.
    assert!(matches!(
        store.retry_workflow(wf.id, "operator:ann").await,
        Err(StoreError::Conflict { .. })
    ));
    let history = store
        .audit_events_of(&format!("workflow:{}", wf.id), 10)
        .await
        .unwrap();
    let actions: Vec<&str> = history.iter().map(|e| e.action.as_str()).collect();
    assert!(actions.contains(&"workflow.submitted"), "{actions:?}");
    assert!(actions.contains(&"workflow.retried"), "{actions:?}");
    assert!(history.iter().all(|e| e.actor == "operator:ann"));
}

/// Three scans, the third needing the second, and a summary that needs
/// them all, whatever became of them.
fn scans_then_summary() -> Vec<NewStep> {
    vec![
        on_success("scan-a", &[]),
        on_success("scan-b", &[]),
        on_success("scan-c", &["scan-b"]),
        step(
            "summary",
            &["scan-a", "scan-b", "scan-c"],
            StepCondition::Always,
        ),
    ]
}

async fn a_join_is_claimed_with_its_needs_results(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Standard).await;
    let a = agent(store, None, &["ci"]).await;
    let wf = store
        .at(t0())
        .submit_workflow(
            t,
            &NewWorkflow {
                name: "batch".into(),
                steps: scans_then_summary(),
            },
            "test",
        )
        .await
        .unwrap();
    let first = store.at(at(1)).claim(a, 10, LEASE).await.unwrap();
    assert_eq!(first.len(), 2);
    let ctx = first[0]
        .workflow
        .as_ref()
        .expect("a step knows its workflow");
    assert_eq!(ctx.workflow_id, wf.id);
    assert!(ctx.needs.is_empty() && ctx.succeeded == 0);
    for c in &first {
        let name = &c.workflow.as_ref().unwrap().step;
        if name == "scan-a" {
            store
                .at(at(2))
                .complete(
                    a,
                    c.id,
                    c.lease_token,
                    Some(serde_json::json!({"findings": 3})),
                )
                .await
                .unwrap();
        } else {
            assert_eq!(name, "scan-b");
            store
                .at(at(2))
                .fail(&Failure {
                    agent: a,
                    id: c.id,
                    lease_token: c.lease_token,
                    error: "unreachable",
                    permanent: true,
                })
                .await
                .unwrap();
        }
    }
    // scan-c was skipped; the summary runs (always), told how each ended.
    let summary = store.at(at(3)).claim(a, 10, LEASE).await.unwrap();
    assert_eq!(summary.len(), 1);
    let ctx = summary[0].workflow.as_ref().unwrap();
    assert_eq!(ctx.step, "summary");
    assert_eq!((ctx.succeeded, ctx.not_succeeded), (1, 2));
    assert_eq!(ctx.needs["scan-a"].state, JobState::Succeeded);
    assert_eq!(
        ctx.needs["scan-a"].result,
        Some(serde_json::json!({"findings": 3}))
    );
    assert_eq!(ctx.needs["scan-b"].state, JobState::Dead);
    assert!(ctx.needs["scan-c"].skipped);
    assert!(!ctx.truncated);
    // A job outside any workflow carries nothing of the kind.
    store
        .at(at(4))
        .enqueue(t, &NewJob::new("ci", "plain"))
        .await
        .unwrap();
    let plain = store.at(at(5)).claim(a, 10, LEASE).await.unwrap();
    assert!(plain[0].workflow.is_none());
}

/// Claims the one step claimable at `secs`: its name, lease token and
/// what it is told of its needs.
async fn claim_one(
    store: &Store,
    a: AgentId,
    wf: &Workflow,
    secs: i64,
) -> (String, i64, homeostat_model::StepContext) {
    let claimed = store.at(at(secs)).claim(a, 10, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    let ctx = claimed[0]
        .workflow
        .clone()
        .expect("a step knows its workflow");
    let name = wf.steps.iter().find(|s| s.job_id == claimed[0].id).unwrap();
    assert_eq!(ctx.step, name.name);
    (ctx.step.clone(), claimed[0].lease_token, ctx)
}

/// The join's last parent ends by a completion (on PostgreSQL the
/// completion's own statement releases the join), then, after a retry, by
/// a failure (the trigger releases it): each claim tells how the needs
/// ended that time, never the time before.
async fn a_join_is_told_how_its_needs_ended_each_time_it_is_released(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Standard).await;
    let a = agent(store, None, &["ci"]).await;
    let wf = submit(store, t, scans_then_summary()).await;
    let fail = |name: &str, token: i64, secs: i64| {
        let id = job_of(&wf, name);
        async move {
            store
                .at(at(secs))
                .fail(&Failure {
                    agent: a,
                    id,
                    lease_token: token,
                    error: "unreachable",
                    permanent: true,
                })
                .await
                .unwrap();
        }
    };
    let first = claim_all(store, a, &wf, 1).await;
    let token = |name: &str| first.iter().find(|(n, _)| n == name).unwrap().1;
    fail("scan-b", token("scan-b"), 2).await;
    store
        .at(at(3))
        .complete(
            a,
            job_of(&wf, "scan-a"),
            token("scan-a"),
            Some(serde_json::json!({"findings": 3})),
        )
        .await
        .unwrap();
    let (_, summary, ctx) = claim_one(store, a, &wf, 4).await;
    assert_eq!((ctx.succeeded, ctx.not_succeeded), (1, 2));
    assert_eq!(ctx.needs.len(), 3);
    assert_eq!(ctx.needs["scan-a"].state, JobState::Succeeded);
    assert_eq!(
        ctx.needs["scan-a"].result,
        Some(serde_json::json!({"findings": 3}))
    );
    assert_eq!(ctx.needs["scan-b"].state, JobState::Dead);
    assert_eq!(ctx.needs["scan-b"].result, None);
    assert!(ctx.needs["scan-c"].skipped && !ctx.needs["scan-a"].skipped);
    assert!(!ctx.truncated);
    fail("summary", summary, 5).await;

    // Run again: scan-b succeeds, scan-c fails and so releases the summary.
    store.at(at(6)).retry_workflow(wf.id, "test").await.unwrap();
    let (name, token_b, ctx) = claim_one(store, a, &wf, 7).await;
    assert_eq!(name, "scan-b");
    assert!(ctx.needs.is_empty());
    store
        .at(at(8))
        .complete(
            a,
            job_of(&wf, "scan-b"),
            token_b,
            Some(serde_json::json!(7)),
        )
        .await
        .unwrap();
    let (name, token_c, ctx) = claim_one(store, a, &wf, 9).await;
    assert_eq!(name, "scan-c");
    assert_eq!((ctx.succeeded, ctx.not_succeeded), (1, 0));
    assert_eq!(ctx.needs["scan-b"].result, Some(serde_json::json!(7)));
    fail("scan-c", token_c, 10).await;
    let (name, _, ctx) = claim_one(store, a, &wf, 11).await;
    assert_eq!(name, "summary");
    assert_eq!((ctx.succeeded, ctx.not_succeeded), (2, 1));
    assert_eq!(ctx.needs["scan-b"].state, JobState::Succeeded);
    assert_eq!(ctx.needs["scan-b"].result, Some(serde_json::json!(7)));
    assert_eq!(ctx.needs["scan-c"].state, JobState::Dead);
    assert!(!ctx.needs["scan-c"].skipped);
    assert_eq!(
        ctx.needs["scan-a"].result,
        Some(serde_json::json!({"findings": 3}))
    );
}

/// Completes `parts` (name, lease token, result) at `secs`: one batch if
/// `together`, else one call each.
async fn complete_parts(
    store: &Store,
    a: AgentId,
    wf: &Workflow,
    parts: &[(String, i64, serde_json::Value)],
    together: bool,
    secs: i64,
) {
    let batch: Vec<Completion> = parts
        .iter()
        .map(|(name, token, result)| Completion {
            id: job_of(wf, name),
            lease_token: *token,
            result: Some(result.clone()),
        })
        .collect();
    if together {
        let done = store.at(at(secs)).complete_batch(a, &batch).await.unwrap();
        assert_eq!(done.completed.len(), parts.len(), "{done:?}");
    } else {
        for c in &batch {
            store
                .at(at(secs))
                .complete(a, c.id, c.lease_token, c.result.clone())
                .await
                .unwrap();
        }
    }
}

/// Needs' results over the bound a claim carries: the first ones, in the
/// order the needs were submitted, and the claim says it was cut — whether
/// the needs finished one by one or in one completion.
async fn a_join_is_told_of_its_needs_results_up_to_the_bound(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Standard).await;
    let a = agent(store, None, &["ci"]).await;
    // Three results of a little over a third of the bound each.
    let big = serde_json::json!("x".repeat(homeostat_model::MAX_NEEDS_RESULTS_BYTES / 3 + 10));
    for (together, secs) in [(false, 1), (true, 20)] {
        let wf = submit(
            store,
            t,
            vec![
                on_success("part-1", &[]),
                on_success("part-2", &[]),
                on_success("part-3", &[]),
                on_success("join", &["part-1", "part-2", "part-3"]),
            ],
        )
        .await;
        let parts: Vec<_> = claim_all(store, a, &wf, secs)
            .await
            .into_iter()
            .map(|(name, token)| (name, token, big.clone()))
            .collect();
        assert_eq!(parts.len(), 3);
        complete_parts(store, a, &wf, &parts, together, secs + 1).await;
        let (name, _, ctx) = claim_one(store, a, &wf, secs + 2).await;
        assert_eq!(name, "join");
        assert_eq!((ctx.succeeded, ctx.not_succeeded), (3, 0), "{together}");
        assert!(ctx.truncated, "{together}");
        assert_eq!(
            ctx.needs.keys().collect::<Vec<_>>(),
            ["part-1", "part-2"],
            "the first two fit ({together})"
        );
    }
}

/// Steps whose needs all finish in one completion, down a chain: each is
/// told its name and every need's result (on PostgreSQL that completion
/// writes it on the step's job, and the claim reads nothing more).
async fn a_step_whose_needs_finish_together_is_told_their_results(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Standard).await;
    let a = agent(store, None, &["ci"]).await;
    let wf = submit(
        store,
        t,
        vec![
            on_success("part-1", &[]),
            on_success("part-2", &[]),
            on_success("join", &["part-1", "part-2"]),
            on_success("after", &["join"]),
        ],
    )
    .await;
    let parts: Vec<_> = claim_all(store, a, &wf, 1)
        .await
        .into_iter()
        .map(|(name, token)| {
            let result = if name == "part-1" {
                serde_json::json!({"n": 1, "s": "a \"quoted\" 'word'"})
            } else {
                serde_json::Value::Null
            };
            (name, token, result)
        })
        .collect();
    assert_eq!(parts.len(), 2);
    complete_parts(store, a, &wf, &parts, true, 2).await;
    let (name, token, ctx) = claim_one(store, a, &wf, 3).await;
    assert_eq!(name, "join");
    assert_eq!((ctx.succeeded, ctx.not_succeeded), (2, 0));
    assert_eq!(ctx.needs.len(), 2);
    assert_eq!(
        ctx.needs["part-1"].result,
        Some(serde_json::json!({"n": 1, "s": "a \"quoted\" 'word'"}))
    );
    assert_eq!(ctx.needs["part-2"].result, Some(serde_json::Value::Null));
    for need in ctx.needs.values() {
        assert_eq!((need.state, need.skipped), (JobState::Succeeded, false));
    }
    assert!(!ctx.truncated);
    let joined = vec![("join".to_owned(), token, serde_json::json!([1, 2]))];
    complete_parts(store, a, &wf, &joined, true, 4).await;
    let (name, _, ctx) = claim_one(store, a, &wf, 5).await;
    assert_eq!(name, "after");
    assert_eq!((ctx.succeeded, ctx.not_succeeded), (1, 0));
    assert_eq!(
        ctx.needs.keys().collect::<Vec<_>>(),
        ["join"],
        "only its own needs"
    );
    assert_eq!(ctx.needs["join"].result, Some(serde_json::json!([1, 2])));
}

/// A step's needs grown at run time are all in what its claim is told,
/// whether the adding step finished last and alone (a completion that
/// finished one need of three) or with the steps it added.
async fn a_step_whose_needs_grew_at_run_time_is_told_of_them_all(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Standard).await;
    let a = agent(store, None, &["ci"]).await;
    for (together, secs) in [(false, 1), (true, 20)] {
        let wf = submit(
            store,
            t,
            vec![
                on_success("discover", &[]),
                on_success("report", &["discover"]),
            ],
        )
        .await;
        let discover = claim_all(store, a, &wf, secs).await;
        assert_eq!(discover.len(), 1);
        let token = discover[0].1;
        let added = vec![on_success("test-0", &[]), on_success("test-1", &[])];
        let grown = store
            .at(at(secs))
            .add_workflow_steps(a, job_of(&wf, "discover"), token, &added, "agent:test")
            .await
            .unwrap();
        let mut parts: Vec<_> = claim_all(store, a, &grown, secs + 1)
            .await
            .into_iter()
            .map(|(name, token)| {
                let result = serde_json::json!(name.clone());
                (name, token, result)
            })
            .collect();
        assert_eq!(parts.len(), 2);
        if !together {
            complete_parts(store, a, &grown, &parts, false, secs + 2).await;
            parts.clear();
        }
        parts.push(("discover".into(), token, serde_json::json!({"files": 2})));
        complete_parts(store, a, &grown, &parts, together, secs + 3).await;
        let (name, _, ctx) = claim_one(store, a, &grown, secs + 4).await;
        assert_eq!(name, "report");
        assert_eq!((ctx.succeeded, ctx.not_succeeded), (3, 0), "{together}");
        assert_eq!(
            ctx.needs.keys().collect::<Vec<_>>(),
            ["discover", "test-0", "test-1"],
            "{together}"
        );
        assert_eq!(
            ctx.needs["test-1"].result,
            Some(serde_json::json!("test-1"))
        );
        assert_eq!(
            ctx.needs["discover"].result,
            Some(serde_json::json!({"files": 2}))
        );
    }
}

async fn a_running_step_fans_out_and_its_dependents_wait_for_the_new_steps(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Standard).await;
    let a = agent(store, None, &["ci"]).await;
    let wf = store
        .at(t0())
        .submit_workflow(
            t,
            &NewWorkflow {
                name: "tests".into(),
                steps: vec![
                    on_success("discover", &[]),
                    step("report", &["discover"], StepCondition::Always),
                ],
            },
            "test",
        )
        .await
        .unwrap();
    let discover = claim_all(store, a, &wf, 1).await;
    let token = discover[0].1;
    // It found three files: a test each, and a merge after them.
    let mut added: Vec<NewStep> = (0..3)
        .map(|i| on_success(&format!("test-{i}"), &[]))
        .collect();
    added.push(on_success(
        "merge",
        &["test-0", "test-1", "test-2", "discover"],
    ));
    let grown = store
        .at(at(2))
        .add_workflow_steps(a, job_of(&wf, "discover"), token, &added, "agent:test")
        .await
        .unwrap();
    assert_eq!(grown.steps.len(), 6);
    assert_eq!(state_of(&grown, "test-0"), JobState::Queued);
    assert_eq!(state_of(&grown, "merge"), JobState::Pending);
    // Bad additions are refused whole: a name taken, a need on another
    // existing step, a stale lease.
    for (bad, why) in [
        (vec![on_success("report", &[])], "already a step"),
        (vec![on_success("x", &["report"])], "may need only"),
    ] {
        let e = store
            .at(at(2))
            .add_workflow_steps(a, job_of(&wf, "discover"), token, &bad, "agent:test")
            .await
            .unwrap_err();
        assert!(e.to_string().contains(why), "{e}");
    }
    assert!(matches!(
        store
            .at(at(2))
            .add_workflow_steps(a, job_of(&wf, "discover"), token + 1, &added, "agent:test")
            .await,
        Err(StoreError::StaleLease { .. })
    ));
    let tests = claim_all(store, a, &grown, 3).await;
    assert_eq!(tests.len(), 3, "the three tests run beside their adder");
    complete(store, a, &grown, "discover", token, 4).await;
    for (name, token) in &tests {
        complete(store, a, &grown, name, *token, 5).await;
    }
    // report waited for the new steps too (it needed their adder): merge
    // and report are released together, merge once discover finished too.
    let last = claim_all(store, a, &grown, 6).await;
    let names: HashSet<&str> = last.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(names, HashSet::from(["merge"]));
    complete(store, a, &grown, "merge", last[0].1, 7).await;
    let report = claim_all(store, a, &grown, 8).await;
    assert_eq!(report[0].0, "report");
    let ctx_steps = store.workflow(wf.id).await.unwrap();
    let report_step = ctx_steps.steps.iter().find(|s| s.name == "report").unwrap();
    assert_eq!(report_step.needs.len(), 5, "{:?}", report_step.needs);
}

/// Steps added at run time cannot grow a workflow past the bound a
/// submitted one has (`MAX_STEPS`), however many calls add them, nor write
/// more needs at once than the bound on them (each of the adding step's
/// dependents needs each new step).
async fn a_workflow_grown_at_run_time_keeps_the_bounds_on_its_steps(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Standard).await;
    let a = agent(store, None, &["ci"]).await;
    let max = homeostat_model::MAX_STEPS;
    // discover, 200 steps that need it, and the rest on a queue no agent
    // takes (so the claim below takes discover alone): 600 below the bound.
    let mut steps = vec![on_success("discover", &[])];
    steps.extend((0..200).map(|i| on_success(&format!("after-{i}"), &["discover"])));
    steps.extend((201..max - 600).map(|i| NewStep {
        job: NewJob::new("elsewhere", "idle"),
        ..on_success(&format!("idle-{i}"), &[])
    }));
    let wf = submit(store, t, steps).await;
    assert_eq!(wf.steps.len(), max - 600);
    let discover = claim_all(store, a, &wf, 1).await;
    assert_eq!(discover.len(), 1, "only discover is claimable");
    let token = discover[0].1;
    let add = |n: usize, prefix: &str| {
        let steps: Vec<NewStep> = (0..n)
            .map(|i| on_success(&format!("{prefix}-{i}"), &[]))
            .collect();
        let id = job_of(&wf, "discover");
        async move {
            store
                .at(at(2))
                .add_workflow_steps(a, id, token, &steps, "agent:test")
                .await
        }
    };
    // 200 dependents × 501 new steps: past the 100,000 needs at once.
    let e = add(501, "wide").await.unwrap_err();
    assert!(e.to_string().contains("at most 100000 at once"), "{e}");
    // 601 more: past the bound on steps.
    let e = add(601, "many").await.unwrap_err();
    assert!(e.to_string().contains(&format!("pass the {max}")), "{e}");
    let unchanged = store.workflow(wf.id).await.unwrap();
    assert_eq!(unchanged.steps.len(), max - 600, "nothing was added");
    // Within both: added; then what would pass the bound is refused.
    let grown = add(100, "found").await.unwrap();
    assert_eq!(grown.steps.len(), max - 500);
    let e = add(501, "more").await.unwrap_err();
    assert!(e.to_string().contains(&format!("pass the {max}")), "{e}");
}

async fn bad_workflows_are_refused_whole(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Standard).await;
    let cycle = NewWorkflow {
        name: "loop".into(),
        steps: vec![on_success("a", &["b"]), on_success("b", &["a"])],
    };
    let err = store
        .at(t0())
        .submit_workflow(t, &cycle, "test")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Invalid(e) if e.message.contains("needs itself")),
        "{err}"
    );
    let mut fingerprinted = on_success("a", &[]);
    fingerprinted.job.fingerprint = Some("x".into());
    let err = store
        .at(t0())
        .submit_workflow(
            t,
            &NewWorkflow {
                name: "fp".into(),
                steps: vec![fingerprinted],
            },
            "test",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Invalid(e) if e.message.contains("step \"a\"")),
        "{err}"
    );
    let jobs = store
        .list_jobs(&homeostat_store::JobFilter::default(), None, 10)
        .await
        .unwrap();
    assert!(jobs.items.is_empty(), "nothing was created");
}

/// Admits what is due until some step is queued: the steps of `wf` that
/// then are. The replica's own admitter may hold admission's lock with the
/// wake-up taken, so admission is asked again (the deadline only guards a
/// hang).
async fn admitted(store: &Store, wf: &Workflow) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        store.admit_waiting("test").await.unwrap();
        let now = store.workflow(wf.id).await.unwrap();
        let queued: Vec<String> = now
            .steps
            .iter()
            .filter(|s| s.state == JobState::Queued)
            .map(|s| s.name.clone())
            .collect();
        if !queued.is_empty() || std::time::Instant::now() > deadline {
            return queued;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Out of `pending`, under a limit: waiting for it, or admitted by it.
fn released(state: JobState) -> bool {
    matches!(state, JobState::Waiting | JobState::Queued)
}

async fn steps_under_limits_wait_for_them_once_released(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Standard).await;
    let a = agent(store, None, &["ci"]).await;
    let one = LimitSpec {
        max_running: Some(1),
        ..LimitSpec::default()
    };
    store
        .set_limit("prod", &one, "operator:test")
        .await
        .unwrap();
    // Tests run one at a time per tenant, by a limit that applies to them.
    let tests = LimitSpec {
        key_from: KeySource::Tenant,
        applies_to: Some(LimitSelector {
            queue: Some("ci".into()),
            kind: Some("test".into()),
        }),
        ..one.clone()
    };
    store
        .set_limit("tests", &tests, "operator:test")
        .await
        .unwrap();
    let under = |name: &str, needs: &[&str], kind: &str, limit: Option<&str>| {
        let mut s = on_success(name, needs);
        s.job.kind = kind.into();
        s.job.limits = limit.map(|l| JobLimit::new(l, "eu")).into_iter().collect();
        s
    };
    let wf = submit(
        store,
        t,
        vec![
            under("build", &[], "build", Some("prod")),
            under("test-a", &["build"], "test", None),
            under("test-b", &["build"], "test", None),
            under("deploy", &["test-a", "test-b"], "deploy", Some("prod")),
        ],
    )
    .await;
    assert_eq!(
        state_of(&wf, "build"),
        JobState::Waiting,
        "a root under a limit waits for it"
    );
    assert_eq!(state_of(&wf, "deploy"), JobState::Pending);
    // A pending step holds no slot: build is admitted beside deploy.
    assert_eq!(admitted(store, &wf).await, ["build"]);
    let build = claim_all(store, a, &wf, 1).await;
    complete(store, a, &wf, "build", build[0].1, 2).await;

    // Released, the tests wait for their limit: one runs at a time. The
    // store's own admission task may have admitted one already.
    let now = store.workflow(wf.id).await.unwrap();
    let tests = [state_of(&now, "test-a"), state_of(&now, "test-b")];
    assert!(tests.iter().all(|s| released(*s)), "{tests:?}");
    assert!(tests.iter().filter(|s| **s == JobState::Queued).count() <= 1);
    let first = admitted(store, &wf).await;
    assert_eq!(first.len(), 1, "{first:?}");
    let claimed = claim_all(store, a, &wf, 3).await;
    assert_eq!(claimed.len(), 1);
    store
        .at(at(4))
        .fail(&Failure {
            agent: a,
            id: job_of(&wf, &claimed[0].0),
            lease_token: claimed[0].1,
            error: "flaky",
            permanent: true,
        })
        .await
        .unwrap();
    let second = admitted(store, &wf).await;
    assert_eq!(second.len(), 1);
    assert_ne!(second, first);
    let claimed = claim_all(store, a, &wf, 5).await;
    complete(store, a, &wf, &claimed[0].0, claimed[0].1, 6).await;
    let failed = store.workflow(wf.id).await.unwrap();
    assert_eq!(failed.state, WorkflowState::Failed);

    // Retried: the failed test waits for its limit again, and deploy,
    // pending again, under its own once its needs succeed.
    let retried = store
        .at(at(10))
        .retry_workflow(wf.id, "operator:ann")
        .await
        .unwrap();
    assert_eq!(state_of(&retried, &first[0]), JobState::Waiting);
    assert_eq!(state_of(&retried, "deploy"), JobState::Pending);
    assert_eq!(admitted(store, &wf).await, first);
    let claimed = claim_all(store, a, &wf, 11).await;
    complete(store, a, &wf, &claimed[0].0, claimed[0].1, 12).await;
    let deploy = state_of(&store.workflow(wf.id).await.unwrap(), "deploy");
    assert!(released(deploy), "{deploy:?}");
    assert_eq!(admitted(store, &wf).await, ["deploy"]);
    let deploy = claim_all(store, a, &wf, 13).await;
    complete(store, a, &wf, "deploy", deploy[0].1, 14).await;
    assert_eq!(
        store.workflow(wf.id).await.unwrap().state,
        WorkflowState::Succeeded
    );
    for name in ["prod", "tests"] {
        let usage = store.limit_usage(name).await.unwrap();
        assert_eq!((usage.holding, usage.waiting), (0, 0), "{name}");
    }

    // A step under a limit that does not exist is refused by name.
    let err = store
        .submit_workflow(
            t,
            &NewWorkflow {
                name: "bad".into(),
                steps: vec![under("ship", &[], "ship", Some("nowhere"))],
            },
            "test",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Invalid(e)
            if e.message.contains("step \"ship\"") && e.message.contains("nowhere")),
        "{err}"
    );
}

async fn retention_takes_a_step_with_its_job_and_a_workflow_with_its_last_step(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Standard).await;
    let a = agent(store, None, &["ci"]).await;
    let wf = submit(
        store,
        t,
        vec![on_success("build", &[]), on_success("test", &["build"])],
    )
    .await;
    let build = claim_all(store, a, &wf, 1).await;
    complete(store, a, &wf, "build", build[0].1, 2).await;
    let test = claim_all(store, a, &wf, 100).await;
    complete(store, a, &wf, "test", test[0].1, 101).await;
    let retention = homeostat_store::JobRetention {
        succeeded: std::time::Duration::from_secs(60),
        failed: std::time::Duration::from_secs(60),
    };
    // build finished 60 s ago, test not yet: build goes, its step with it.
    let deleted = store
        .at(at(63))
        .delete_finished_jobs(retention, 100, None)
        .await
        .unwrap();
    assert_eq!(deleted.ids, [job_of(&wf, "build")]);
    let left = store.workflow(wf.id).await.unwrap();
    assert_eq!(
        left.steps
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["test"]
    );
    assert!(left.steps[0].needs.is_empty(), "its need's rows went too");
    assert_eq!(left.state, WorkflowState::Succeeded);
    // The last step gone, the workflow goes.
    store
        .at(at(200))
        .delete_finished_jobs(retention, 100, None)
        .await
        .unwrap();
    assert!(matches!(
        store.workflow(wf.id).await,
        Err(StoreError::NotFound { .. })
    ));
    let listed = store.list_workflows(None, None, 10).await.unwrap();
    assert!(listed.items.is_empty(), "{:?}", listed.items);
}

on_both_backends!(
    steps_run_in_the_order_of_their_needs,
    conditions_decide_what_runs_after_a_failure,
    a_step_whose_failure_path_is_not_taken_is_skipped,
    cancel_stops_every_step,
    a_step_reclaimed_from_a_dead_agent_runs_again_before_its_dependents,
    a_wide_fan_in_runs_its_join_once,
    a_released_step_wakes_a_waiting_claim,
    a_retry_reruns_what_failed_and_keeps_what_succeeded,
    a_join_is_claimed_with_its_needs_results,
    a_join_is_told_how_its_needs_ended_each_time_it_is_released,
    a_join_is_told_of_its_needs_results_up_to_the_bound,
    a_step_whose_needs_finish_together_is_told_their_results,
    a_step_whose_needs_grew_at_run_time_is_told_of_them_all,
    a_running_step_fans_out_and_its_dependents_wait_for_the_new_steps,
    bad_workflows_are_refused_whole,
    a_workflow_grown_at_run_time_keeps_the_bounds_on_its_steps,
    steps_under_limits_wait_for_them_once_released,
    retention_takes_a_step_with_its_job_and_a_workflow_with_its_last_step,
);
