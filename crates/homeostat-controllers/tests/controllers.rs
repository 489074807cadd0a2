//! Each built-in controller on both backends: seed a state, reconcile,
//! assert exactly the expected transitions; reconcile again, assert nothing
//! changes; a deposed leader's run changes nothing.

use homeostat_testkit::{self as backends, At, agent, at, on_both_backends, t0, tenant};

use std::time::Duration;

use homeostat_controllers::*;
use homeostat_model::{JobId, JobState, NewJob, PlanTier};
use homeostat_runtime::{Controller, Fence, LeaseStore};
use homeostat_store::{JobFilter, NewBootstrapToken, Store};
use jiff::Timestamp;

const LEASE: Duration = Duration::from_secs(60);

/// Runs `controller` once at `when`, under a live lease of its own.
async fn run_at<C: Controller>(
    store: &Store,
    controller: &C,
    when: Timestamp,
) -> Result<u64, String> {
    let fence = fence(store, controller.name()).await;
    run_fenced(store, controller, when, Some(fence)).await
}

async fn run_fenced<C: Controller>(
    store: &Store,
    controller: &C,
    when: Timestamp,
    fence: Option<Fence>,
) -> Result<u64, String> {
    let ctx = backends::context_at(store, controller.name(), when, fence);
    controller
        .reconcile(ctx)
        .await
        .map(|r| r.items)
        .map_err(|e| e.to_string())
}

/// The dry run of `controller` at `when`.
async fn plan_at<C: Controller>(
    store: &Store,
    controller: &C,
    when: Timestamp,
) -> homeostat_runtime::Plan {
    let ctx = backends::context_at(store, controller.name(), when, None);
    controller.plan(ctx).await.unwrap()
}

/// Subjects and transitions of a plan, sorted.
fn changes(plan: &homeostat_runtime::Plan) -> Vec<(String, String, String)> {
    let mut out: Vec<_> = plan
        .items
        .iter()
        .map(|i| (i.subject.clone(), i.from.clone(), i.to.clone()))
        .collect();
    out.sort();
    out
}

async fn fence(store: &Store, name: &str) -> Fence {
    let lease = store
        .acquire(name, "test-replica", Duration::from_secs(300))
        .await
        .unwrap()
        .unwrap();
    Fence {
        name: name.into(),
        epoch: lease.epoch,
    }
}

fn config() -> ControllersConfig {
    ControllersConfig::default()
}

async fn state(store: &Store, id: JobId) -> JobState {
    store.get_job(id).await.unwrap().state
}

async fn agent_health_takes_silent_agents_offline_and_reclaims_their_jobs(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let alive = agent(store, Some(t), &["q"]).await;
    let silent = agent(store, Some(t), &["q"]).await;
    let mut last_try = NewJob::new("q", "k");
    last_try.max_attempts = Some(1);
    let retried = store
        .at(t0())
        .enqueue(t, &NewJob::new("q", "k"))
        .await
        .unwrap()
        .id;
    store
        .at(t0())
        .claim(silent, 1, Duration::from_secs(3600))
        .await
        .unwrap();
    let doomed = store.at(t0()).enqueue(t, &last_try).await.unwrap().id;
    store
        .at(t0())
        .claim(silent, 1, Duration::from_secs(3600))
        .await
        .unwrap();
    store.at(at(60)).heartbeat_agents(&[alive]).await.unwrap();

    let controller = AgentHealth::new(store.clone(), config().agent_health);
    // Listening since t0: a start judges nobody's silence.
    assert_eq!(run_at(store, &controller, t0()).await.unwrap(), 0);
    assert_eq!(
        store.get_agent(silent).await.unwrap().status,
        homeostat_model::AgentStatus::Online
    );
    // 100 s after the last heartbeat of `silent`, 40 s after `alive`'s.
    let plan = plan_at(store, &controller, at(100)).await;
    let mut expected = vec![
        (
            format!("agent:{silent}"),
            "online".to_string(),
            "offline".to_string(),
        ),
        (
            format!("job:{retried}"),
            "running".to_string(),
            "queued".to_string(),
        ),
        (
            format!("job:{doomed}"),
            "running".to_string(),
            "dead".to_string(),
        ),
    ];
    expected.sort();
    assert_eq!(
        (plan.count, changes(&plan)),
        (3, expected),
        "the plan is what the run does"
    );
    assert_eq!(run_at(store, &controller, at(100)).await.unwrap(), 3);
    assert_eq!(plan_at(store, &controller, at(100)).await.count, 0);
    assert_eq!(
        store.get_agent(silent).await.unwrap().status,
        homeostat_model::AgentStatus::Offline
    );
    assert_eq!(
        store.get_agent(alive).await.unwrap().status,
        homeostat_model::AgentStatus::Online
    );
    assert_eq!(
        state(store, retried).await,
        JobState::Queued,
        "re-queued at once"
    );
    assert_eq!(
        state(store, doomed).await,
        JobState::Dead,
        "no attempts left"
    );
    let due = store
        .at(at(100))
        .claim_due_notifications(10, LEASE, None)
        .await
        .unwrap();
    let mut events: Vec<_> = due.iter().map(|n| n.event.as_str()).collect();
    events.sort();
    assert_eq!(events, ["agent.offline", "job.dead"]);
    assert_eq!(run_at(store, &controller, at(100)).await.unwrap(), 0);
}

async fn job_recovery_requeues_expired_leases_and_expires_overdue_jobs(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let a = agent(store, Some(t), &["q"]).await;
    let stuck = store
        .at(t0())
        .enqueue(t, &NewJob::new("q", "k"))
        .await
        .unwrap()
        .id;
    store
        .at(t0())
        .claim(a, 1, Duration::from_secs(30))
        .await
        .unwrap();
    let mut late = NewJob::new("other", "k");
    late.deadline = Some(at(50));
    let overdue = store.at(t0()).enqueue(t, &late).await.unwrap().id;
    let waiting = store
        .at(t0())
        .enqueue(t, &NewJob::new("other", "k"))
        .await
        .unwrap()
        .id;

    let controller = recovery(store);
    // It has heard the store since 10 s: the lease that ran out at 30 s
    // counts.
    assert_eq!(run_at(store, &controller, at(10)).await.unwrap(), 0);
    let plan = plan_at(store, &controller, at(60)).await;
    let mut expected = vec![
        (
            format!("job:{stuck}"),
            "running".to_string(),
            "queued".to_string(),
        ),
        (
            format!("job:{overdue}"),
            "queued".to_string(),
            "expired".to_string(),
        ),
    ];
    expected.sort();
    assert_eq!(changes(&plan), expected);
    assert_eq!(run_at(store, &controller, at(60)).await.unwrap(), 2);
    let job = store.get_job(stuck).await.unwrap();
    assert_eq!((job.state, job.attempt), (JobState::Queued, 1));
    assert_eq!(state(store, overdue).await, JobState::Expired);
    assert_eq!(
        state(store, waiting).await,
        JobState::Queued,
        "default deadline is 60 min"
    );
    assert_eq!(run_at(store, &controller, at(60)).await.unwrap(), 0);
    // The default deadline: an hour after the job was due (the re-queued
    // job started once already, so no deadline applies to it).
    assert_eq!(run_at(store, &controller, at(3601)).await.unwrap(), 1);
    assert_eq!(state(store, waiting).await, JobState::Expired);
}

fn recovery(store: &Store) -> JobRecovery {
    let config = config();
    JobRecovery::new(
        store.clone(),
        config.job_recovery,
        config.agent_health.stale_after,
    )
}

/// Leases that ran out while the control plane was down wait for their
/// agents to be heard (agent-health's stale timeout, 90 s) before they
/// count; leases that run out after it came back count at once.
async fn job_recovery_reclaims_no_healthy_lease_after_an_outage(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let (alive, gone) = (
        agent(store, Some(t), &["q"]).await,
        agent(store, Some(t), &["q"]).await,
    );
    let mut held = Vec::new();
    for a in [alive, gone] {
        store
            .at(t0())
            .enqueue(t, &NewJob::new("q", "k"))
            .await
            .unwrap();
        let claimed = store
            .at(t0())
            .claim(a, 1, Duration::from_secs(30))
            .await
            .unwrap();
        held.push((claimed[0].id, claimed[0].lease_token));
    }
    let controller = recovery(store);
    assert_eq!(run_at(store, &controller, at(10)).await.unwrap(), 0);
    // The store was out of reach from 10 s to 300 s (runs every 60 s): both
    // leases ran out at 30 s, neither agent could renew them.
    assert_eq!(
        run_at(store, &controller, at(300)).await.unwrap(),
        0,
        "reclaimed the moment the store came back"
    );
    let renew = |when: i64| {
        let job = [held[0]];
        async move {
            let renewed = store
                .at(at(when))
                .heartbeat_jobs(alive, &job, Duration::from_secs(30))
                .await
                .unwrap();
            assert_eq!(renewed, [true]);
        }
    };
    renew(305).await;
    assert_eq!(run_at(store, &controller, at(330)).await.unwrap(), 0);
    renew(360).await;
    renew(385).await;
    assert_eq!(run_at(store, &controller, at(380)).await.unwrap(), 0);
    // 90 s after the store came back the silent agent's lease counts; the
    // heartbeating one's is whole.
    assert_eq!(run_at(store, &controller, at(395)).await.unwrap(), 1);
    assert_eq!(state(store, held[0].0).await, JobState::Running);
    assert_eq!(state(store, held[1].0).await, JobState::Queued);
}

async fn job_timeout_fails_attempts_past_their_timeout(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let a = agent(store, Some(t), &["q"]).await;
    let mut quick = NewJob::new("q", "k");
    quick.timeout_secs = Some(30);
    let id = store.at(t0()).enqueue(t, &quick).await.unwrap().id;
    store
        .at(t0())
        .claim(a, 1, Duration::from_secs(3600))
        .await
        .unwrap();
    let controller = JobTimeout::new(store.clone(), config().job_timeout);
    assert_eq!(plan_at(store, &controller, at(29)).await.count, 0);
    assert_eq!(plan_at(store, &controller, at(31)).await.count, 1);
    assert_eq!(run_at(store, &controller, at(29)).await.unwrap(), 0);
    assert_eq!(run_at(store, &controller, at(31)).await.unwrap(), 1);
    let job = store.get_job(id).await.unwrap();
    assert_eq!(job.state, JobState::Scheduled);
    assert_eq!(job.last_error.as_deref(), Some("attempt timed out"));
    assert_eq!(run_at(store, &controller, at(31)).await.unwrap(), 0);
}

async fn job_scheduler_promotes_due_jobs(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let mut delayed = NewJob::new("q", "k");
    delayed.run_at = Some(at(10));
    let mut later = delayed.clone();
    later.run_at = Some(at(20));
    let first = store.at(t0()).enqueue(t, &delayed).await.unwrap().id;
    let second = store.at(t0()).enqueue(t, &later).await.unwrap().id;
    let controller = JobScheduler::new(store.clone(), config().job_scheduler);
    let plan = plan_at(store, &controller, at(15)).await;
    assert_eq!(
        changes(&plan),
        [(
            format!("job:{first}"),
            "scheduled".to_string(),
            "queued".to_string()
        )]
    );
    assert_eq!(plan.items[0].why, "run time reached");
    assert_eq!(run_at(store, &controller, at(15)).await.unwrap(), 1);
    assert_eq!(state(store, first).await, JobState::Queued);
    assert_eq!(state(store, second).await, JobState::Scheduled);
    assert_eq!(run_at(store, &controller, at(15)).await.unwrap(), 0);
}

async fn a_sweep_that_stops_at_its_batch_cap_asks_to_run_again_at_once(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    // 105 due jobs against 100 batches of 1 a run.
    let mut delayed = NewJob::new("q", "k");
    delayed.run_at = Some(at(10));
    store
        .at(t0())
        .enqueue_batch(t, &vec![delayed; 105])
        .await
        .unwrap();
    let mut settings = config().job_scheduler;
    settings.batch = 1;
    let controller = JobScheduler::new(store.clone(), settings);
    let fence = fence(store, controller.name()).await;
    let run = || async {
        let ctx = backends::context_at(store, controller.name(), at(15), Some(fence.clone()));
        controller.reconcile(ctx).await.unwrap()
    };
    let first = run().await;
    assert_eq!(first.items, 100);
    assert_eq!(
        first.again,
        Some(Duration::ZERO),
        "the backlog is not drained"
    );
    let second = run().await;
    assert_eq!(second.items, 5);
    assert_eq!(second.again, None, "drained: the interval applies");
}

async fn approval_expiration_and_token_cleanup_sweep_what_expired(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let mut gated = NewJob::new("q", "k");
    gated.approval_expires_at = Some(at(100));
    let id = store.at(t0()).enqueue(t, &gated).await.unwrap().id;
    let approvals = ApprovalExpiration::new(store.clone(), config().approval_expiration);
    assert_eq!(run_at(store, &approvals, at(99)).await.unwrap(), 0);
    assert_eq!(run_at(store, &approvals, at(101)).await.unwrap(), 1);
    assert_eq!(state(store, id).await, JobState::Expired);
    assert_eq!(run_at(store, &approvals, at(101)).await.unwrap(), 0);

    store
        .at(t0())
        .issue_bootstrap_token(
            &NewBootstrapToken {
                tenant_id: None,
                ttl: Duration::from_secs(60),
                uses: 1,
            },
            "operator:test",
        )
        .await
        .unwrap();
    let tokens = TokenCleanup::new(store.clone(), config().token_cleanup);
    assert_eq!(plan_at(store, &tokens, at(61)).await.count, 1);
    assert_eq!(run_at(store, &tokens, at(30)).await.unwrap(), 0);
    assert_eq!(run_at(store, &tokens, at(61)).await.unwrap(), 1);
    assert_eq!(run_at(store, &tokens, at(61)).await.unwrap(), 0);
}

async fn job_retention_deletes_finished_jobs_past_retention(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let id = store
        .at(t0())
        .enqueue(t, &NewJob::new("q", "k"))
        .await
        .unwrap()
        .id;
    store.at(at(1)).cancel(id, "operator:test").await.unwrap();
    let controller = JobRetention::new(store.clone(), config().job_retention);
    let day = 24 * 3600;
    assert_eq!(
        changes(&plan_at(store, &controller, at(day + 2)).await),
        [(
            format!("job:{id}"),
            "cancelled".to_string(),
            "deleted".to_string()
        )]
    );
    assert_eq!(run_at(store, &controller, at(day)).await.unwrap(), 0);
    assert_eq!(run_at(store, &controller, at(day + 2)).await.unwrap(), 1);
    assert!(store.get_job(id).await.is_err());
    assert_eq!(run_at(store, &controller, at(day + 2)).await.unwrap(), 0);
}

async fn audit_retention_removes_old_events_and_keeps_the_chain(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await; // one audit event at t0
    let _ = t;
    let year = 365 * 24 * 3600;
    let mut cfg = config().audit_retention;
    cfg.dry_run = true;
    let dry = AuditRetention::new(store.clone(), cfg.clone());
    assert_eq!(run_at(store, &dry, at(year + 10)).await.unwrap(), 0);
    assert_eq!(store.audit_events(0, 10).await.unwrap().len(), 1, "dry run");
    cfg.dry_run = false;
    let controller = AuditRetention::new(store.clone(), cfg);
    assert_eq!(run_at(store, &controller, at(year - 10)).await.unwrap(), 0);
    assert_eq!(run_at(store, &controller, at(year + 10)).await.unwrap(), 1);
    let report = store.verify_audit_chain(&mut |_| {}).await.unwrap();
    assert_eq!(report.first_break, None);
    let events = store.audit_events(0, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].action, "audit.retention");
    assert!(events[0].actor.starts_with("controller:audit-retention@"));
    assert_eq!(run_at(store, &controller, at(year + 10)).await.unwrap(), 0);
}

async fn audit_chain_verify_walks_when_asked_or_due_and_reports_a_break_once(store: &Store) {
    use homeostat_model::operator::VerificationState::{Broken, Intact};
    tenant(store, "acme", PlanTier::Free).await;
    tenant(store, "globex", PlanTier::Free).await;
    let cfg = config().audit_chain_verify;
    let controller = AuditChainVerify::new(store.clone(), cfg.clone());
    let latest = || async { store.audit_verifications(1).await.unwrap().remove(0) };
    // Nothing asked for yet: the controller asks itself, and walks.
    assert_eq!(run_at(store, &controller, at(10)).await.unwrap(), 2);
    let first = latest().await;
    assert_eq!(
        (first.state, first.checked, first.requested_by.as_str()),
        (Intact, 2, homeostat_controllers::AUDIT_VERIFY_ACTOR)
    );
    store
        .pool_for_tests()
        .execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = 1")
        .await
        .unwrap();
    // Within `every` and unasked: no walk.
    assert_eq!(run_at(store, &controller, at(20)).await.unwrap(), 0);
    assert_eq!(latest().await.id, first.id);
    // Asked for: walked at the next run, the break stored on the row.
    let asked = store
        .at(at(30))
        .request_audit_verification("operator:alice")
        .await
        .unwrap();
    let err = run_at(store, &controller, at(31)).await.unwrap_err();
    assert!(err.contains("audit chain broken at event 1"), "{err}");
    let walked = store.audit_verification(asked.id).await.unwrap();
    assert_eq!(
        (walked.state, walked.first_break.map(|b| b.seq)),
        (Broken, Some(1))
    );
    // Due again after `every`: walked unasked, the same break.
    let due = at(30) + jiff::SignedDuration::try_from(cfg.every).unwrap();
    assert!(run_at(store, &controller, due).await.is_err());
    assert_eq!(latest().await.state, Broken);
    assert_ne!(latest().await.id, asked.id);
    let due = store
        .at(due)
        .claim_due_notifications(10, LEASE, None)
        .await
        .unwrap();
    assert_eq!(due.len(), 1, "one notification for one break");
    assert_eq!(due[0].event, "audit.chain_broken");
}

async fn a_deposed_leader_changes_nothing(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let mut delayed = NewJob::new("q", "k");
    delayed.run_at = Some(at(10));
    let id = store.at(t0()).enqueue(t, &delayed).await.unwrap().id;
    let controller = JobScheduler::new(store.clone(), config().job_scheduler);
    let old = fence(store, "job-scheduler").await;
    let lease = store
        .acquire("job-scheduler", "test-replica", LEASE)
        .await
        .unwrap()
        .unwrap();
    store.release(&lease).await.unwrap();
    store
        .acquire("job-scheduler", "another-replica", LEASE)
        .await
        .unwrap()
        .unwrap();
    let err = run_fenced(store, &controller, at(20), Some(old))
        .await
        .unwrap_err();
    assert!(err.contains("no longer held"), "{err}");
    assert_eq!(state(store, id).await, JobState::Scheduled);
}

async fn a_low_priority_job_is_not_starved_by_a_flood(store: &Store) {
    // Bound: at 2 points a minute a job of priority 0 reaches the ceiling of
    // 300 after 150 minutes; there the earliest turn goes first, and its
    // turn is the earliest (ties with the first flood batch aside). Fair
    // share does not help it: the flood is of a higher priority.
    let small = tenant(store, "small", PlanTier::Free).await;
    let big = tenant(store, "big", PlanTier::Premium).await;
    let worker = agent(store, None, &["q"]).await;
    let controller = QueuePriority::new(store.clone(), config().queue_priority);
    let mine = store
        .at(t0())
        .enqueue(small, &NewJob::new("q", "k"))
        .await
        .unwrap()
        .id;
    // Every minute the big tenant enqueues 10 jobs and the worker takes 5:
    // its backlog only grows.
    let mut claimed_at = None;
    for minute in 0..=240 {
        let now = at(minute * 60);
        let urgent = NewJob {
            priority: 200,
            ..NewJob::new("q", "k")
        };
        let flood = vec![urgent; 10];
        store.at(now).enqueue_batch(big, &flood).await.unwrap();
        run_at(store, &controller, now).await.unwrap();
        let got = store.at(now).claim(worker, 5, LEASE).await.unwrap();
        let done: Vec<_> = got
            .iter()
            .map(|c| homeostat_store::Completion {
                id: c.id,
                lease_token: c.lease_token,
                result: None,
            })
            .collect();
        store.at(now).complete_batch(worker, &done).await.unwrap();
        if got.iter().any(|c| c.id == mine) {
            claimed_at = Some(minute);
            break;
        }
    }
    let minute = claimed_at.expect("the small tenant's job was never claimed");
    assert!(
        minute <= 201,
        "claimed after {minute} minutes; bound is 201"
    );
    let backlog = store
        .list_jobs(
            &JobFilter {
                tenant_id: Some(big),
                state: Some(JobState::Queued),
                ..JobFilter::default()
            },
            None,
            1000,
        )
        .await
        .unwrap();
    assert!(backlog.items.len() > 500, "the flood was still queued");
}

async fn workflows_releases_steps_the_trigger_left_pending(store: &Store) {
    use homeostat_model::{NewStep, NewWorkflow, StepCondition};
    let t = tenant(store, "acme", PlanTier::Free).await;
    let a = agent(store, None, &["ci"]).await;
    let step = |name: &str, needs: &[&str]| NewStep {
        name: name.into(),
        job: NewJob::new("ci", name),
        needs: needs.iter().map(|n| (*n).to_owned()).collect(),
        when: StepCondition::OnSuccess,
    };
    let wf = store
        .at(t0())
        .submit_workflow(
            t,
            &NewWorkflow {
                name: "pipeline".into(),
                steps: vec![step("build", &[]), step("deploy", &["build"])],
            },
            "test",
        )
        .await
        .unwrap();
    let deploy = wf.steps[1].job_id;
    // Counts gone wrong (by hand): the build's finish leaves the deploy
    // waiting for a need that does not exist.
    store
        .pool_for_tests()
        .execute("UPDATE workflow_steps SET needs_left = needs_left + 1")
        .await
        .unwrap();
    let build = store.at(at(1)).claim(a, 1, LEASE).await.unwrap();
    store
        .at(at(2))
        .complete(a, build[0].id, build[0].lease_token, None)
        .await
        .unwrap();
    assert_eq!(state(store, deploy).await, JobState::Pending);

    let controller = Workflows::new(store.clone(), config().workflows);
    let plan = plan_at(store, &controller, at(3)).await;
    assert_eq!(
        changes(&plan),
        vec![(
            format!("job:{deploy}"),
            "pending".into(),
            "released or skipped".into()
        )]
    );
    assert_eq!(run_at(store, &controller, at(3)).await.unwrap(), 1);
    assert_eq!(state(store, deploy).await, JobState::Queued);
    assert_eq!(run_at(store, &controller, at(4)).await.unwrap(), 0);
    let audited = store.audit_events_of("workflows", 10).await.unwrap();
    assert_eq!(audited.len(), 1);
    assert_eq!(audited[0].action, "workflows.repaired");
    assert!(audited[0].actor.starts_with("controller:workflows@"));
    // A deposed leader changes nothing.
    store
        .pool_for_tests()
        .execute("UPDATE workflow_steps SET needs_left = 1")
        .await
        .unwrap();
    store
        .pool_for_tests()
        .execute(
            "UPDATE jobs SET state = 'pending' WHERE workflow_id IS NOT NULL AND state = 'queued'",
        )
        .await
        .unwrap();
    let stale = Fence {
        name: "workflows".into(),
        epoch: 999,
    };
    assert!(
        run_fenced(store, &controller, at(5), Some(stale))
            .await
            .is_err()
    );
    assert_eq!(state(store, deploy).await, JobState::Pending);
}

/// Agents each running one job, all heartbeating at t0.
async fn fleet(store: &Store, n: usize) -> (Vec<homeostat_model::AgentId>, Vec<JobId>) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let mut agents = Vec::new();
    let mut jobs = Vec::new();
    for _ in 0..n {
        let a = agent(store, Some(t), &["q"]).await;
        jobs.push(
            store
                .at(t0())
                .enqueue(t, &NewJob::new("q", "k"))
                .await
                .unwrap()
                .id,
        );
        store
            .at(t0())
            .claim(a, 1, Duration::from_secs(3600))
            .await
            .unwrap();
        agents.push(a);
    }
    (agents, jobs)
}

async fn agent_health_reclaims_nothing_after_an_outage_of_the_control_plane(store: &Store) {
    let (agents, jobs) = fleet(store, 4).await;
    // The control plane was down for 10 minutes (far past the 90 s stale
    // timeout); it restarts: a new controller, every heartbeat 600 s old.
    let controller = AgentHealth::new(store.clone(), config().agent_health);
    assert_eq!(run_at(store, &controller, at(600)).await.unwrap(), 0);
    // The agents resume heartbeating (within their 10 s period)…
    store.at(at(605)).heartbeat_agents(&agents).await.unwrap();
    // …so a full stale timeout later nobody is silent, nothing reclaimed.
    assert_eq!(run_at(store, &controller, at(630)).await.unwrap(), 0);
    assert_eq!(run_at(store, &controller, at(695)).await.unwrap(), 0);
    for a in &agents {
        assert_eq!(
            store.get_agent(*a).await.unwrap().status,
            homeostat_model::AgentStatus::Online
        );
    }
    for j in &jobs {
        assert_eq!(state(store, *j).await, JobState::Running, "a job ran twice");
    }
}

/// Runs cancelled at their timeout while the store hung say nothing: a
/// first run after three intervals without a success hears anew.
async fn agent_health_hears_anew_after_runs_that_never_finished(store: &Store) {
    let (agents, jobs) = fleet(store, 2).await;
    let controller = AgentHealth::new(store.clone(), config().agent_health);
    store.at(at(0)).heartbeat_agents(&agents).await.unwrap();
    assert_eq!(run_at(store, &controller, at(10)).await.unwrap(), 0);
    // No run finished from 10 s to 600 s (the database hung, each run was
    // cancelled): every heartbeat is 600 s old, and none of it counts.
    assert_eq!(run_at(store, &controller, at(600)).await.unwrap(), 0);
    store.at(at(605)).heartbeat_agents(&agents).await.unwrap();
    assert_eq!(run_at(store, &controller, at(695)).await.unwrap(), 0);
    for j in &jobs {
        assert_eq!(state(store, *j).await, JobState::Running, "a job ran twice");
    }
}

async fn agent_health_brakes_a_mass_offline_then_confirms_it(store: &Store) {
    let (agents, jobs) = fleet(store, 4).await;
    let controller = AgentHealth::new(store.clone(), config().agent_health);
    assert_eq!(run_at(store, &controller, t0()).await.unwrap(), 0);
    // One agent keeps heartbeating; three (75 %) fall silent for real.
    store
        .at(at(60))
        .heartbeat_agents(&agents[..1])
        .await
        .unwrap();
    assert_eq!(
        run_at(store, &controller, at(100)).await.unwrap(),
        0,
        "the brake let a mass offline through at once"
    );
    let due = store
        .at(at(100))
        .claim_due_notifications(10, LEASE, None)
        .await
        .unwrap();
    assert_eq!(
        due.iter().map(|n| n.event.as_str()).collect::<Vec<_>>(),
        ["agents.mass_silence"]
    );
    assert_eq!(due[0].payload["silent"], 3);
    // The next run still sees them silent: confirmed, offline, reclaimed.
    store
        .at(at(125))
        .heartbeat_agents(&agents[..1])
        .await
        .unwrap();
    assert_eq!(run_at(store, &controller, at(130)).await.unwrap(), 6);
    for a in &agents[1..] {
        assert_eq!(
            store.get_agent(*a).await.unwrap().status,
            homeostat_model::AgentStatus::Offline
        );
    }
    assert_eq!(state(store, jobs[0]).await, JobState::Running);
    for j in &jobs[1..] {
        assert_eq!(state(store, *j).await, JobState::Queued);
    }
}

async fn token_cleanup_forgets_idempotency_keys_past_their_lifetime(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let jobs = [NewJob::new("q", "k")];
    let life = homeostat_store::IDEMPOTENCY_LIFETIME;
    let first = store
        .at(t0())
        .enqueue_once(t, "deploy-1", &jobs, life)
        .await
        .unwrap();
    assert!(!first.replayed);
    let controller = TokenCleanup::new(store.clone(), config().token_cleanup);
    // Within its lifetime the key stays and answers again.
    assert_eq!(run_at(store, &controller, at(23 * 3600)).await.unwrap(), 0);
    let again = store
        .at(at(23 * 3600))
        .enqueue_once(t, "deploy-1", &jobs, life)
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.enqueued, first.enqueued);
    // Past it, the key is deleted, and the same key enqueues anew.
    assert_eq!(run_at(store, &controller, at(25 * 3600)).await.unwrap(), 1);
    let later = store
        .at(at(25 * 3600))
        .enqueue_once(t, "deploy-1", &jobs, life)
        .await
        .unwrap();
    assert!(!later.replayed);
}

on_both_backends!(
    agent_health_hears_anew_after_runs_that_never_finished,
    job_recovery_reclaims_no_healthy_lease_after_an_outage,
    token_cleanup_forgets_idempotency_keys_past_their_lifetime,
    agent_health_reclaims_nothing_after_an_outage_of_the_control_plane,
    agent_health_brakes_a_mass_offline_then_confirms_it,
    agent_health_takes_silent_agents_offline_and_reclaims_their_jobs,
    job_recovery_requeues_expired_leases_and_expires_overdue_jobs,
    job_timeout_fails_attempts_past_their_timeout,
    job_scheduler_promotes_due_jobs,
    a_sweep_that_stops_at_its_batch_cap_asks_to_run_again_at_once,
    approval_expiration_and_token_cleanup_sweep_what_expired,
    job_retention_deletes_finished_jobs_past_retention,
    audit_retention_removes_old_events_and_keeps_the_chain,
    audit_chain_verify_walks_when_asked_or_due_and_reports_a_break_once,
    a_deposed_leader_changes_nothing,
    a_low_priority_job_is_not_starved_by_a_flood,
    workflows_releases_steps_the_trigger_left_pending,
);
