//! The agent protocol: register, heartbeat, claim (long poll), complete,
//! fail.

use std::time::Duration;

use axum::http::StatusCode;
use homeostat_store::Store;
use homeostat_testkit::on_both_backends;
use serde_json::{Value, json};

use crate::Api;

async fn registration_spends_the_bootstrap_token(store: &Store) {
    let api = Api::new(store).await;
    let token = api
        .post(
            "/v1/bootstrap-tokens",
            &api.admin,
            json!({"ttl_secs": 600, "uses": 1}),
        )
        .await;
    assert_eq!(token.status, StatusCode::CREATED, "{}", token.text);
    let secret = token.body["secret"].as_str().unwrap().to_owned();
    let body = json!({"bootstrap_token": secret, "agent": {"name": "n1", "queues": ["builds"]}});
    let first = api
        .call(
            axum::http::Method::POST,
            "/v1/agent/register",
            None,
            Some(body.clone()),
        )
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    assert!(first.body["credential"].as_str().unwrap().len() > 20);
    let again = api
        .call(
            axum::http::Method::POST,
            "/v1/agent/register",
            None,
            Some(body),
        )
        .await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED, "{}", again.text);
    assert_eq!(again.code(), "unauthorized");
    // The credential authenticates the agent's calls.
    let cred = first.body["credential"].as_str().unwrap();
    let hb = api.post("/v1/agent/heartbeat", cred, json!({})).await;
    assert_eq!(hb.status, StatusCode::OK, "{}", hb.text);
    assert_eq!(hb.body["lease_ttl_secs"], 60);
    assert_eq!(hb.body["drain"], false);
    let wrong = api
        .post("/v1/agent/heartbeat", "hsa_wrong", json!({}))
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    api.stop().await;
}

async fn a_claim_answers_at_once_when_work_is_queued(store: &Store) {
    let api = Api::new(store).await;
    let (tenant_id, key) = api.tenant("acme").await;
    let (_, cred) = api.agent(Some(tenant_id), &["builds"]).await;
    let id = api
        .enqueue(
            &key,
            json!({"queue": "builds", "kind": "compile", "payload": {"ref": "main"}}),
        )
        .await;
    let claim = api
        .post(
            "/v1/agent/claim",
            &cred,
            json!({"capacity": 5, "wait_secs": 0}),
        )
        .await;
    assert_eq!(claim.status, StatusCode::OK, "{}", claim.text);
    let jobs = claim.body["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["id"], id);
    assert_eq!(jobs[0]["attempt"], 1);
    assert_eq!(jobs[0]["payload"], json!({"ref": "main"}));
    assert!(jobs[0]["lease_token"].as_i64().unwrap() > 0);
    api.stop().await;
}

async fn a_waiting_claim_is_woken_by_an_enqueue(store: &Store) {
    let api = Api::new(store).await;
    let (tenant_id, key) = api.tenant("acme").await;
    let (_, cred) = api.agent(Some(tenant_id), &["builds"]).await;
    let waiting = api.long_poll(&cred, 50);
    // Enqueue once the claim waits (found nothing and parked).
    wait_for_waiter(&api).await;
    let id = api
        .enqueue(&key, json!({"queue": "builds", "kind": "compile"}))
        .await;
    let (waited, body) = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the claim was not woken")
        .unwrap();
    assert_eq!(body["jobs"][0]["id"], id, "{body}");
    assert!(
        waited < Duration::from_secs(50),
        "woken by the wait's end, not the enqueue"
    );
    api.stop().await;
}

/// Polls (with a deadline) until a claim waits for work.
pub(crate) async fn wait_for_waiter(api: &Api) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while api.state.waiting_claims() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no claim started waiting"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn a_claim_with_no_work_answers_empty_when_its_wait_ends(store: &Store) {
    let api = Api::new(store).await;
    let (tenant_id, _) = api.tenant("acme").await;
    let (_, cred) = api.agent(Some(tenant_id), &["builds"]).await;
    let claim = api
        .post(
            "/v1/agent/claim",
            &cred,
            json!({"capacity": 1, "wait_secs": 1}),
        )
        .await;
    assert_eq!(claim.status, StatusCode::OK);
    assert_eq!(claim.body["jobs"], json!([]));
    api.stop().await;
}

async fn claims_out_of_bounds_are_refused_by_field(store: &Store) {
    let api = Api::new(store).await;
    let (_, cred) = api.agent(None, &["builds"]).await;
    let zero = api
        .post("/v1/agent/claim", &cred, json!({"capacity": 0}))
        .await;
    assert_eq!(zero.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(zero.body["message"].as_str().unwrap().contains("capacity"));
    let long = api
        .post(
            "/v1/agent/claim",
            &cred,
            json!({"capacity": 1, "wait_secs": 51}),
        )
        .await;
    assert_eq!(long.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(long.body["message"].as_str().unwrap().contains("wait_secs"));
    let unknown = api
        .post(
            "/v1/agent/claim",
            &cred,
            json!({"capacity": 1, "queue": "x"}),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(unknown.code(), "malformed");
    assert!(
        unknown.body["message"].as_str().unwrap().contains("queue"),
        "{}",
        unknown.text
    );
    api.stop().await;
}

/// Claims one job on `queue` for `cred`: (job id, lease token).
pub(crate) async fn claim_one(api: &Api, cred: &str) -> (String, i64) {
    let claim = api
        .post(
            "/v1/agent/claim",
            cred,
            json!({"capacity": 1, "wait_secs": 0}),
        )
        .await;
    let job = &claim.body["jobs"][0];
    (
        job["id"].as_str().expect("claimed nothing").to_owned(),
        job["lease_token"].as_i64().unwrap(),
    )
}

/// An agent that restarts says so (a new incarnation in its heartbeat):
/// the jobs its previous process held that the new one does not are queued
/// again at once, not when their leases run out.
async fn a_restarted_agents_old_jobs_are_reclaimed_at_once(store: &Store) {
    let api = Api::new(store).await;
    let (tenant_id, key) = api.tenant("acme").await;
    let (_, cred) = api.agent(Some(tenant_id), &["builds"]).await;
    api.enqueue(&key, json!({"queue": "builds", "kind": "k"}))
        .await;
    api.enqueue(&key, json!({"queue": "builds", "kind": "k"}))
        .await;
    let (kept, kept_token) = claim_one(&api, &cred).await;
    let (left, left_token) = claim_one(&api, &cred).await;
    let beat = |incarnation: &str, jobs: Value| {
        let body = json!({"incarnation": incarnation, "jobs": jobs});
        let (api, cred) = (&api, cred.clone());
        async move { api.post("/v1/agent/heartbeat", &cred, body).await }
    };
    let first = "0190a0a0-0000-7000-8000-000000000001";
    let both =
        json!([{"id": kept, "lease_token": kept_token}, {"id": left, "lease_token": left_token}]);
    let answer = beat(first, both.clone()).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(answer.body["lost"], json!([]));
    // The same process again: nothing changes.
    beat(first, both).await;
    let state = |id: &str| {
        let (api, key, id) = (&api, key.clone(), id.to_owned());
        async move { api.get(&format!("/v1/jobs/{id}"), &key).await.body }
    };
    assert_eq!(state(&left).await["state"], "running");
    // A new process that holds only one of them.
    let second = "0190a0a0-0000-7000-8000-000000000002";
    let answer = beat(second, json!([{"id": kept, "lease_token": kept_token}])).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(state(&kept).await["state"], "running");
    let reclaimed = state(&left).await;
    assert_eq!(reclaimed["state"], "queued", "{reclaimed}");
    assert_eq!(
        reclaimed["last_error"], "reclaimed: the agent restarted without it",
        "{reclaimed}"
    );
    let events = api.store.audit_events(0, 1000).await.unwrap();
    assert!(
        events.iter().any(|e| e.action == "jobs.agent_offline"
            && e.details["reason"] == "the agent restarted without them"),
        "{events:?}"
    );
    api.stop().await;
}

async fn a_resent_completion_gets_the_first_answer(store: &Store) {
    let api = Api::new(store).await;
    let (tenant_id, key) = api.tenant("acme").await;
    let (_, cred) = api.agent(Some(tenant_id), &["builds"]).await;
    api.enqueue(&key, json!({"queue": "builds", "kind": "compile"}))
        .await;
    let (id, token) = claim_one(&api, &cred).await;
    let path = format!("/v1/agent/jobs/{id}/complete");
    let body = json!({"lease_token": token, "result": {"artifact": "a.tar"}});
    let first = api.post(&path, &cred, body.clone()).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_eq!(first.body["state"], "succeeded");
    let again = api.post(&path, &cred, body).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.body, first.body);
    // Another token is stale.
    let stale = api
        .post(&path, &cred, json!({"lease_token": token + 1}))
        .await;
    assert_eq!(stale.status, StatusCode::CONFLICT);
    assert_eq!(stale.code(), "stale_lease");
    api.stop().await;
}

async fn another_agent_cannot_report_on_a_job_it_does_not_hold(store: &Store) {
    let api = Api::new(store).await;
    let (tenant_id, key) = api.tenant("acme").await;
    let (_, holder) = api.agent(Some(tenant_id), &["builds"]).await;
    let (_, other) = api.agent(Some(tenant_id), &["builds"]).await;
    api.enqueue(&key, json!({"queue": "builds", "kind": "compile"}))
        .await;
    let (id, token) = claim_one(&api, &holder).await;
    let hijack = api
        .post(
            &format!("/v1/agent/jobs/{id}/complete"),
            &other,
            json!({"lease_token": token}),
        )
        .await;
    assert_eq!(hijack.status, StatusCode::CONFLICT);
    assert_eq!(hijack.code(), "stale_lease");
    let job = api.store.get_job(id.parse().unwrap()).await.unwrap();
    assert_eq!(job.state, homeostat_model::JobState::Running);
    api.stop().await;
}

async fn oversized_results_are_refused_and_the_job_keeps_running(store: &Store) {
    let api = Api::new(store).await;
    let (tenant_id, key) = api.tenant("acme").await;
    let (_, cred) = api.agent(Some(tenant_id), &["builds"]).await;
    api.enqueue(&key, json!({"queue": "builds", "kind": "compile"}))
        .await;
    let (id, token) = claim_one(&api, &cred).await;
    let big = "x".repeat(70 * 1024);
    let res = api
        .post(
            &format!("/v1/agent/jobs/{id}/complete"),
            &cred,
            json!({"lease_token": token, "result": {"log": big}}),
        )
        .await;
    assert_eq!(res.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", res.text);
    assert!(res.body["message"].as_str().unwrap().contains("result"));
    let job = api.store.get_job(id.parse().unwrap()).await.unwrap();
    assert_eq!(job.state, homeostat_model::JobState::Running);
    api.stop().await;
}

async fn a_failure_is_retried_and_resending_it_is_harmless(store: &Store) {
    let api = Api::new(store).await;
    let (tenant_id, key) = api.tenant("acme").await;
    let (_, cred) = api.agent(Some(tenant_id), &["builds"]).await;
    api.enqueue(
        &key,
        json!({"queue": "builds", "kind": "compile", "max_attempts": 3}),
    )
    .await;
    let (id, token) = claim_one(&api, &cred).await;
    let path = format!("/v1/agent/jobs/{id}/fail");
    let body = json!({"lease_token": token, "error": "exit 1", "retryable": true});
    let first = api.post(&path, &cred, body.clone()).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_eq!(first.body["state"], "scheduled");
    let again = api.post(&path, &cred, body).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.body, first.body);
    let job = api.store.get_job(id.parse().unwrap()).await.unwrap();
    assert_eq!(job.attempt, 1, "the resend counted another attempt");
    api.stop().await;
}

async fn a_permanent_failure_is_dead(store: &Store) {
    let api = Api::new(store).await;
    let (tenant_id, key) = api.tenant("acme").await;
    let (_, cred) = api.agent(Some(tenant_id), &["builds"]).await;
    api.enqueue(
        &key,
        json!({"queue": "builds", "kind": "compile", "max_attempts": 3}),
    )
    .await;
    let (id, token) = claim_one(&api, &cred).await;
    let res = api
        .post(
            &format!("/v1/agent/jobs/{id}/fail"),
            &cred,
            json!({"lease_token": token, "error": "bad input", "retryable": false}),
        )
        .await;
    assert_eq!(res.body["state"], "dead", "{}", res.text);
    api.stop().await;
}

async fn the_heartbeat_reply_carries_drain_cancel_and_lost_leases(store: &Store) {
    let api = Api::new(store).await;
    let (tenant_id, key) = api.tenant("acme").await;
    let (agent_id, cred) = api.agent(Some(tenant_id), &["builds"]).await;
    for _ in 0..3 {
        api.enqueue(&key, json!({"queue": "builds", "kind": "compile"}))
            .await;
    }
    let claim = api
        .post(
            "/v1/agent/claim",
            &cred,
            json!({"capacity": 3, "wait_secs": 0}),
        )
        .await;
    let held: Vec<(String, i64)> = claim.body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["id"].as_str().unwrap().to_owned(),
                j["lease_token"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(held.len(), 3);
    // The first is cancelled by its tenant; the second is held with a token
    // that is not its own (as after a reclaim); the third is fine.
    let cancel = api
        .post(&format!("/v1/jobs/{}/cancel", held[0].0), &key, json!({}))
        .await;
    assert_eq!(cancel.status, StatusCode::OK, "{}", cancel.text);
    let drain = api
        .post(
            &format!("/v1/agents/{agent_id}/drain"),
            &api.admin,
            json!({}),
        )
        .await;
    assert_eq!(drain.status, StatusCode::OK, "{}", drain.text);
    let jobs = json!([
        {"id": held[0].0, "lease_token": held[0].1},
        {"id": held[1].0, "lease_token": held[1].1 + 100},
        {"id": held[2].0, "lease_token": held[2].1},
    ]);
    let hb = api
        .post("/v1/agent/heartbeat", &cred, json!({"jobs": jobs}))
        .await;
    assert_eq!(hb.status, StatusCode::OK, "{}", hb.text);
    assert_eq!(hb.body["drain"], true);
    assert_eq!(hb.body["cancelled"], json!([held[0].0]));
    assert_eq!(hb.body["lost"], json!([held[1].0]));
    api.stop().await;
}

async fn a_job_released_at_shutdown_keeps_its_attempt(store: &Store) {
    let api = Api::new(store).await;
    let (tenant_id, key) = api.tenant("acme").await;
    let (_, cred) = api.agent(Some(tenant_id), &["builds"]).await;
    api.enqueue(
        &key,
        json!({"queue": "builds", "kind": "compile", "max_attempts": 1}),
    )
    .await;
    let (id, token) = claim_one(&api, &cred).await;
    let path = format!("/v1/agent/jobs/{id}/release");
    let body = json!({"lease_token": token, "reason": "shutdown"});
    let released = api.post(&path, &cred, body.clone()).await;
    assert_eq!(released.status, StatusCode::OK, "{}", released.text);
    assert_eq!(released.body["state"], "queued");
    assert_eq!(
        released.body["attempt"], 0,
        "the release used up an attempt"
    );
    let again = api.post(&path, &cred, body).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    // Its only attempt is still there: another claim gets it as attempt 1.
    let (again_id, new_token) = claim_one(&api, &cred).await;
    assert_eq!(again_id, id);
    assert!(new_token > token);
    let bad = api
        .post(
            &path,
            &cred,
            json!({"lease_token": new_token, "reason": "bored"}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text);
    api.stop().await;
}

async fn a_batch_completion_completes_what_the_agent_holds(store: &Store) {
    let api = Api::new(store).await;
    let (tenant_id, key) = api.tenant("acme").await;
    let (_, cred) = api.agent(Some(tenant_id), &["builds"]).await;
    let (_, other) = api.agent(Some(tenant_id), &["builds"]).await;
    for _ in 0..3 {
        api.enqueue(&key, json!({"queue": "builds", "kind": "compile"}))
            .await;
    }
    let claim = api
        .post(
            "/v1/agent/claim",
            &cred,
            json!({"capacity": 3, "wait_secs": 0}),
        )
        .await;
    let jobs = claim.body["jobs"].as_array().unwrap().clone();
    let completions: Vec<_> = jobs
        .iter()
        .map(|j| json!({"id": j["id"], "lease_token": j["lease_token"], "result": {"ok": true}}))
        .collect();
    // Another agent presenting the right tokens completes nothing.
    let hijack = api
        .post(
            "/v1/agent/jobs/complete",
            &other,
            json!({"completions": completions}),
        )
        .await;
    assert_eq!(hijack.status, StatusCode::OK, "{}", hijack.text);
    assert_eq!(hijack.body["completed"], json!([]));
    assert_eq!(hijack.body["stale"].as_array().unwrap().len(), 3);
    let done = api
        .post(
            "/v1/agent/jobs/complete",
            &cred,
            json!({"completions": completions}),
        )
        .await;
    assert_eq!(
        done.body["completed"].as_array().unwrap().len(),
        3,
        "{}",
        done.text
    );
    // Resent (the reply was lost): the same answer.
    let again = api
        .post(
            "/v1/agent/jobs/complete",
            &cred,
            json!({"completions": completions}),
        )
        .await;
    assert_eq!(
        again.body["completed"].as_array().unwrap().len(),
        3,
        "{}",
        again.text
    );
    assert_eq!(again.body["stale"], json!([]));
    api.stop().await;
}

async fn a_claim_may_name_some_of_the_agents_queues(store: &Store) {
    let api = Api::new(store).await;
    let (tenant_id, key) = api.tenant("acme").await;
    let (_, cred) = api.agent(Some(tenant_id), &["builds", "deploys"]).await;
    let build = api
        .enqueue(&key, json!({"queue": "builds", "kind": "compile"}))
        .await;
    let deploy = api
        .enqueue(&key, json!({"queue": "deploys", "kind": "ship"}))
        .await;
    let only = api
        .post(
            "/v1/agent/claim",
            &cred,
            json!({"capacity": 10, "wait_secs": 0, "queues": ["deploys"]}),
        )
        .await;
    assert_eq!(only.status, StatusCode::OK, "{}", only.text);
    let ids: Vec<_> = only.body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!(deploy)]);
    let rest = api
        .post(
            "/v1/agent/claim",
            &cred,
            json!({"capacity": 10, "wait_secs": 0}),
        )
        .await;
    assert_eq!(rest.body["jobs"][0]["id"], json!(build));
    let foreign = api
        .post(
            "/v1/agent/claim",
            &cred,
            json!({"capacity": 1, "queues": ["payroll"]}),
        )
        .await;
    assert_eq!(foreign.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        foreign.body["message"]
            .as_str()
            .unwrap()
            .contains("payroll")
    );
    api.stop().await;
}

/// An agent of one tenant that knows (or guesses) another tenant's job id
/// and lease token can neither keep that job alive nor learn anything about
/// it: its heartbeat calls the job lost, its reports are stale, as for a
/// job that does not exist.
async fn an_agent_acts_only_on_leases_it_holds(store: &Store) {
    let api = Api::new(store).await;
    let (t1, key) = api.tenant("acme").await;
    let (t2, _) = api.tenant("globex").await;
    let (_, holder) = api.agent(Some(t1), &["builds"]).await;
    let (_, intruder) = api.agent(Some(t2), &["builds"]).await;
    api.enqueue(&key, json!({"queue": "builds", "kind": "compile"}))
        .await;
    let (id, token) = claim_one(&api, &holder).await;
    let job_id: homeostat_model::JobId = id.parse().unwrap();
    let before = api.store.get_job(job_id).await.unwrap();
    let held = json!({"jobs": [{"id": id, "lease_token": token}]});
    let hb = api
        .post("/v1/agent/heartbeat", &intruder, held.clone())
        .await;
    assert_eq!(hb.status, StatusCode::OK, "{}", hb.text);
    assert_eq!(hb.body["lost"], json!([id]));
    let after = api.store.get_job(job_id).await.unwrap();
    assert_eq!(after.lease_expires_at, before.lease_expires_at, "extended");
    let missing = homeostat_model::JobId::at(jiff::Timestamp::now());
    let fail = json!({"lease_token": token, "error": "x", "retryable": false});
    let complete = json!({"lease_token": token});
    let release = json!({"lease_token": token, "reason": "shutdown"});
    for (op, body) in [
        ("complete", &complete),
        ("fail", &fail),
        ("release", &release),
    ] {
        for target in [id.clone(), missing.to_string()] {
            let res = api
                .post(
                    &format!("/v1/agent/jobs/{target}/{op}"),
                    &intruder,
                    body.clone(),
                )
                .await;
            assert_eq!(res.status, StatusCode::CONFLICT, "{op}: {}", res.text);
            assert_eq!(res.code(), "stale_lease");
        }
    }
    assert_eq!(
        api.store.get_job(job_id).await.unwrap().state,
        homeostat_model::JobState::Running
    );
    // Cancelled: the holder is told; the intruder still hears only "lost".
    let cancel = api
        .post(&format!("/v1/jobs/{id}/cancel"), &key, json!({}))
        .await;
    assert_eq!(cancel.status, StatusCode::OK, "{}", cancel.text);
    let hb = api
        .post("/v1/agent/heartbeat", &intruder, held.clone())
        .await;
    assert_eq!(
        (&hb.body["lost"], &hb.body["cancelled"]),
        (&json!([id]), &json!([]))
    );
    let hb = api.post("/v1/agent/heartbeat", &holder, held).await;
    assert_eq!(
        (&hb.body["lost"], &hb.body["cancelled"]),
        (&json!([]), &json!([id]))
    );
    api.stop().await;
}

/// One agent holds at most `api.max_claims_per_agent` claims open: the next
/// is 429 with `Retry-After`, and a slot comes back when a claim answers.
async fn an_agent_holds_a_bounded_number_of_open_claims(store: &Store) {
    let settings = homeostat_api::ApiSettings {
        max_claims_per_agent: 1,
        ..homeostat_api::ApiSettings::default()
    };
    let api = Api::with_settings(store, settings).await;
    let (tenant_id, key) = api.tenant("acme").await;
    let (_, cred) = api.agent(Some(tenant_id), &["builds"]).await;
    let (_, other) = api.agent(Some(tenant_id), &["builds"]).await;
    let waiting = api.long_poll(&cred, 50);
    wait_for_waiter(&api).await;
    let refused = api
        .post(
            "/v1/agent/claim",
            &cred,
            json!({"capacity": 1, "wait_secs": 0}),
        )
        .await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.text
    );
    assert_eq!(refused.code(), "too_many_claims");
    assert_eq!(refused.headers["retry-after"], "1");
    // Another agent is not held back by this one's claims.
    let theirs = api
        .post(
            "/v1/agent/claim",
            &other,
            json!({"capacity": 1, "wait_secs": 0}),
        )
        .await;
    assert_eq!(theirs.status, StatusCode::OK, "{}", theirs.text);
    api.enqueue(&key, json!({"queue": "builds", "kind": "compile"}))
        .await;
    tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the claim was not woken")
        .unwrap();
    let again = api
        .post(
            "/v1/agent/claim",
            &cred,
            json!({"capacity": 1, "wait_secs": 0}),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    api.stop().await;
}

on_both_backends!(
    a_restarted_agents_old_jobs_are_reclaimed_at_once,
    an_agent_holds_a_bounded_number_of_open_claims,
    an_agent_acts_only_on_leases_it_holds,
    a_claim_may_name_some_of_the_agents_queues,
    a_batch_completion_completes_what_the_agent_holds,
    a_job_released_at_shutdown_keeps_its_attempt,
    registration_spends_the_bootstrap_token,
    a_claim_answers_at_once_when_work_is_queued,
    a_waiting_claim_is_woken_by_an_enqueue,
    a_claim_with_no_work_answers_empty_when_its_wait_ends,
    claims_out_of_bounds_are_refused_by_field,
    a_resent_completion_gets_the_first_answer,
    another_agent_cannot_report_on_a_job_it_does_not_hold,
    oversized_results_are_refused_and_the_job_keeps_running,
    a_failure_is_retried_and_resending_it_is_harmless,
    a_permanent_failure_is_dead,
    the_heartbeat_reply_carries_drain_cancel_and_lost_leases,
);

/// Two replicas on one PostgreSQL database: a claim waiting on one is woken
/// by an enqueue on the other (LISTEN/NOTIFY).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_claim_on_one_replica_is_woken_by_an_enqueue_on_another() {
    let Some(store) = homeostat_testkit::postgres().await else {
        return;
    };
    let replica = store.replica().await.unwrap();
    let one = Api::new(&store).await;
    let two = Api::new(&replica).await;
    let (tenant_id, key) = one.tenant("acme").await;
    let (_, cred) = one.agent(Some(tenant_id), &["builds"]).await;
    let waiting = one.long_poll(&cred, 50);
    wait_for_waiter(&one).await;
    let id = two
        .enqueue(&key, json!({"queue": "builds", "kind": "compile"}))
        .await;
    let (waited, body) = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the claim was not woken")
        .unwrap();
    assert_eq!(body["jobs"][0]["id"], id, "{body}");
    assert!(waited < Duration::from_secs(50));
    one.stop().await;
    two.stop().await;
    replica.close().await;
    store.cleanup().await;
}

/// The replica's listener connection dies (terminated by PostgreSQL): a
/// claim waiting there is still woken by an enqueue on another replica,
/// through the reconnected listener or, while it is down, the slow poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiting_claim_survives_the_loss_of_its_replicas_listener() {
    let Some(store) = homeostat_testkit::postgres().await else {
        return;
    };
    let schema = store.schema().unwrap().to_owned();
    let replica = store.replica().await.unwrap();
    let one = Api::new(&store).await;
    let two = Api::new(&replica).await;
    let (tenant_id, key) = one.tenant("acme").await;
    let (_, cred) = one.agent(Some(tenant_id), &["builds"]).await;
    let waiting = one.long_poll(&cred, 50);
    wait_for_waiter(&one).await;
    // Every listening connection of this schema's replicas.
    let admin =
        homeostat_testkit::pg_pool(&homeostat_testkit::pg_url().unwrap(), "public", 1).await;
    let killed: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE application_name = $1 AND query LIKE 'LISTEN%'",
    )
    .bind(&schema)
    .fetch_all(&admin)
    .await
    .unwrap();
    assert!(!killed.is_empty(), "no listener connection found");
    let id = two
        .enqueue(&key, json!({"queue": "builds", "kind": "compile"}))
        .await;
    let (waited, body) = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the claim was not woken")
        .unwrap();
    assert_eq!(body["jobs"][0]["id"], id, "{body}");
    assert!(waited < Duration::from_secs(50), "woken by the wait's end");
    admin.close().await;
    one.stop().await;
    two.stop().await;
    replica.close().await;
    store.cleanup().await;
}
