//! Random workflows run by random agents, under a few seeds: steps with
//! random needs and conditions; each claimed step succeeds, fails for good,
//! fails to be retried, is cancelled, or is lost with its agent (its lease
//! runs out and it is queued again). Checked at every claim: every step it
//! needs has finished, as its condition asks. At the end: every step has
//! finished, and a step ran exactly when its condition held over how its
//! needs ended (skipped otherwise).

use std::collections::HashMap;
use std::time::Duration;

use homeostat_model::{
    JobId, JobState, NewJob, NewStep, NewWorkflow, PlanTier, StepCondition, WorkflowState,
};
use homeostat_store::{Completion, Failure, Store};
use homeostat_testkit::{At, agent, at, on_both_backends, tenant};

const LEASE: Duration = Duration::from_secs(20);

fn n32(n: usize) -> u32 {
    u32::try_from(n).unwrap()
}

fn random_workflow(rng: &mut fastrand::Rng, n: usize) -> NewWorkflow {
    let steps = (0..n)
        .map(|i| {
            let mut needs: Vec<String> = (0..i)
                .filter(|_| rng.u8(0..100) < 15)
                .map(|j| format!("s{j}"))
                .collect();
            needs.truncate(4);
            let when = match rng.u8(0..10) {
                0..=5 => StepCondition::OnSuccess,
                6..=7 => StepCondition::OnFailure,
                _ => StepCondition::Always,
            };
            NewStep {
                name: format!("s{i}"),
                job: NewJob {
                    max_attempts: Some(2),
                    ..NewJob::new("sim", "step")
                },
                needs,
                when,
            }
        })
        .collect();
    NewWorkflow {
        name: "sim".into(),
        steps,
    }
}

async fn random_workflows_run_each_step_exactly_when_its_condition_holds(store: &Store) {
    // What the seeds exercised, all together: the check is not empty.
    let (mut skipped, mut ran_again, mut runs) = (0, 0, 0);
    for seed in [1u64, 2, 3] {
        let mut rng = fastrand::Rng::with_seed(seed);
        let t = tenant(store, &format!("t{seed}"), PlanTier::Standard).await;
        let agents = [
            agent(store, None, &["sim"]).await,
            agent(store, None, &["sim"]).await,
        ];
        let spec = random_workflow(&mut rng, 30);
        let mut now = 1_000 * seed as i64;
        let wf = store
            .at(at(now))
            .submit_workflow(t, &spec, "sim")
            .await
            .unwrap();
        let name_of: HashMap<JobId, String> = wf
            .steps
            .iter()
            .map(|s| (s.job_id, s.name.clone()))
            .collect();
        let spec_of: HashMap<&str, &NewStep> =
            spec.steps.iter().map(|s| (s.name.as_str(), s)).collect();
        let mut ran: HashMap<String, u32> = HashMap::new();
        for _round in 0..400 {
            now += 1;
            let state = store.workflow(wf.id).await.unwrap();
            if state.state != WorkflowState::Running {
                break;
            }
            let a = agents[rng.usize(0..2)];
            let claimed = store
                .at(at(now))
                .claim(a, rng.u32(1..5), LEASE)
                .await
                .unwrap();
            if claimed.is_empty() {
                // Nothing claimable: let leases of lost steps run out and
                // retries come due.
                now += 30;
                store
                    .at(at(now))
                    .requeue_expired_leases(100, None, None)
                    .await
                    .unwrap();
                store
                    .at(at(now))
                    .promote_scheduled(100, None)
                    .await
                    .unwrap();
                continue;
            }
            let by_name: HashMap<&str, JobState> = state
                .steps
                .iter()
                .map(|s| (s.name.as_str(), s.state))
                .collect();
            let mut done = Vec::new();
            for c in &claimed {
                let name = &name_of[&c.id];
                let step = spec_of[name.as_str()];
                // Every need finished, as the condition asks.
                let failed = step
                    .needs
                    .iter()
                    .filter(|n| {
                        let s = by_name[n.as_str()];
                        assert!(s.is_terminal(), "{name} started before {n} finished ({s})");
                        s != JobState::Succeeded
                    })
                    .count();
                assert!(
                    step.when.holds(n32(failed), n32(step.needs.len())),
                    "{name} started though its condition {:?} does not hold",
                    step.when
                );
                *ran.entry(name.clone()).or_insert(0) += 1;
                match rng.u8(0..10) {
                    0..=5 => done.push(Completion {
                        id: c.id,
                        lease_token: c.lease_token,
                        result: None,
                    }),
                    6 | 7 => {
                        store
                            .at(at(now))
                            .fail(&Failure {
                                agent: a,
                                id: c.id,
                                lease_token: c.lease_token,
                                error: "sim",
                                permanent: rng.bool(),
                            })
                            .await
                            .unwrap();
                    }
                    8 => {
                        store.at(at(now)).cancel(c.id, "sim").await.unwrap();
                    }
                    // Lost with its agent: nothing is reported.
                    _ => {}
                }
            }
            store.at(at(now)).complete_batch(a, &done).await.unwrap();
        }
        let end = store.workflow(wf.id).await.unwrap();
        assert_ne!(
            end.state,
            WorkflowState::Running,
            "seed {seed} never finished"
        );
        let final_state: HashMap<&str, JobState> = end
            .steps
            .iter()
            .map(|s| (s.name.as_str(), s.state))
            .collect();
        skipped += end.steps.iter().filter(|s| s.skipped).count();
        ran_again += ran.values().filter(|&&n| n > 1).count();
        runs += ran.len();
        for s in &end.steps {
            assert!(s.state.is_terminal(), "{} is {}", s.name, s.state);
            let step = spec_of[s.name.as_str()];
            let failed = step
                .needs
                .iter()
                .filter(|n| final_state[n.as_str()] != JobState::Succeeded)
                .count();
            let holds = step.when.holds(n32(failed), n32(step.needs.len()));
            assert_eq!(
                s.skipped,
                !holds,
                "seed {seed}: {} skipped {} though its condition {}",
                s.name,
                s.skipped,
                if holds { "holds" } else { "does not hold" }
            );
            assert_eq!(
                ran.contains_key(&s.name),
                holds,
                "seed {seed}: {} ran {:?} times, its condition holding: {holds}",
                s.name,
                ran.get(&s.name)
            );
        }
    }
    assert!(
        skipped > 5 && ran_again > 2 && runs > 30,
        "skipped {skipped}, ran again {ran_again}, ran {runs}"
    );
}

on_both_backends!(random_workflows_run_each_step_exactly_when_its_condition_holds);
