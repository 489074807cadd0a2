//! What keeps a fleet cheap: heartbeats written together about once a
//! second (at the time each arrived), credentials verified from memory with
//! revocations seen by every replica within the check interval.

use std::time::Duration;

use homeostat_api::ApiSettings;
use homeostat_model::{AgentId, TokenKind};
use homeostat_store::{REVOCATION_CHECK, Store};
use homeostat_testkit::{At, at, on_both_backends};
use serde_json::json;

use crate::Api;

/// Settings whose periodic write never comes during a test: writes happen
/// at the test's checkpoints.
fn written_by_hand() -> ApiSettings {
    ApiSettings {
        heartbeat_flush: Duration::from_secs(3600),
        ..ApiSettings::default()
    }
}

async fn heartbeats_are_written_together_at_the_time_each_arrived(store: &Store) {
    let api = Api::with_settings(store, written_by_hand()).await;
    let _ = api.state.checkpoint_heartbeats().await;
    let mut agents = Vec::new();
    for _ in 0..20 {
        agents.push(api.agent(None, &["builds"]).await);
    }
    let registered = store
        .get_agent(agents[0].0.parse().unwrap())
        .await
        .unwrap()
        .last_heartbeat_at;
    store.at(at(100));
    for (_, cred) in &agents {
        let hb = api.post("/v1/agent/heartbeat", cred, json!({})).await;
        assert_eq!(hb.status, 200, "{}", hb.text);
    }
    for (id, _) in &agents {
        let a = store.get_agent(id.parse().unwrap()).await.unwrap();
        assert_eq!(a.last_heartbeat_at, registered, "written before its time");
    }
    // Written five seconds after they arrived: at the time they arrived.
    store.at(at(105));
    let written = api.state.checkpoint_heartbeats().await.unwrap();
    assert_eq!(written, 20, "twenty heartbeats in one write");
    for (id, _) in &agents {
        let a = store.get_agent(id.parse().unwrap()).await.unwrap();
        assert_eq!(a.last_heartbeat_at, at(100));
    }
    api.stop().await;
}

async fn a_drained_agent_is_told_so_once_its_heartbeat_is_written(store: &Store) {
    let api = Api::with_settings(store, written_by_hand()).await;
    let (id, cred) = api.agent(None, &["builds"]).await;
    let hb = api.post("/v1/agent/heartbeat", &cred, json!({})).await;
    assert_eq!(hb.body["drain"], false);
    let drained = api
        .post(&format!("/v1/agents/{id}/drain"), &api.admin, json!({}))
        .await;
    assert!(drained.status.is_success(), "{}", drained.text);
    api.post("/v1/agent/heartbeat", &cred, json!({})).await;
    api.state.checkpoint_heartbeats().await.unwrap();
    let hb = api.post("/v1/agent/heartbeat", &cred, json!({})).await;
    assert_eq!(hb.body["drain"], true, "{}", hb.text);
    api.stop().await;
}

async fn an_offline_agent_heard_again_is_online_after_the_write(store: &Store) {
    let api = Api::with_settings(store, written_by_hand()).await;
    let (id, cred) = api.agent(None, &["builds"]).await;
    let id: AgentId = id.parse().unwrap();
    let off = store
        .at(at(1_000))
        .mark_silent_agents_offline(Duration::from_secs(90), 100, None)
        .await
        .unwrap();
    assert_eq!(off, vec![id]);
    api.post("/v1/agent/heartbeat", &cred, json!({})).await;
    api.state.checkpoint_heartbeats().await.unwrap();
    let a = store.get_agent(id).await.unwrap();
    assert_eq!(a.status.as_str(), "online");
    assert_eq!(a.last_heartbeat_at, at(1_000));
    api.stop().await;
}

on_both_backends!(
    heartbeats_are_written_together_at_the_time_each_arrived,
    a_drained_agent_is_told_so_once_its_heartbeat_is_written,
    an_offline_agent_heard_again_is_online_after_the_write,
);

/// Revokes `agent`'s credential through `store`.
async fn revoke_credential(store: &Store, agent: &str) {
    let token = store
        .list_tokens(TokenKind::AgentCredential, None)
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.agent_id.map(|a| a.to_string()).as_deref() == Some(agent))
        .expect("the agent's credential");
    store.revoke_token(token.id, "operator:test").await.unwrap();
}

/// Two replicas: the agent is known to `there`; `here` revokes it. Here it
/// is refused at once; there, every request from `REVOCATION_CHECK` after
/// the revocation on is refused.
async fn a_revoked_credential_is_refused_on_every_replica_within_the_check(
    here: &Store,
    there: &Store,
) {
    let api_here = Api::new(here).await;
    let api_there = Api::new(there).await;
    let (id, cred) = api_here.agent(None, &["builds"]).await;
    for api in [&api_here, &api_there] {
        let hb = api.post("/v1/agent/heartbeat", &cred, json!({})).await;
        assert_eq!(hb.status, 200, "{}", hb.text);
    }
    revoke_credential(here, &id).await;
    let hb = api_here.post("/v1/agent/heartbeat", &cred, json!({})).await;
    assert_eq!(hb.status, 401, "the revoking replica still took it");
    // The bound itself, not a wait for something else to happen.
    tokio::time::sleep(REVOCATION_CHECK).await;
    let hb = api_there
        .post("/v1/agent/heartbeat", &cred, json!({}))
        .await;
    assert_eq!(
        hb.status, 401,
        "another replica took a credential revoked {REVOCATION_CHECK:?} ago"
    );
    let claim = api_there
        .post(
            "/v1/agent/claim",
            &cred,
            json!({"capacity": 1, "wait_secs": 0}),
        )
        .await;
    assert_eq!(claim.status, 401);
    api_here.stop().await;
    api_there.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_a_revoked_credential_is_refused_on_every_replica_within_the_check() {
    let test = homeostat_testkit::sqlite().await;
    let url = format!("sqlite:{}", test.path().unwrap().display());
    let there = Store::connect(&url, test.options().clone()).await.unwrap();
    a_revoked_credential_is_refused_on_every_replica_within_the_check(&test, &there).await;
    there.close().await;
    test.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_revoked_credential_is_refused_on_every_replica_within_the_check() {
    let Some(test) = homeostat_testkit::postgres().await else {
        return;
    };
    let there = test.replica().await.unwrap();
    a_revoked_credential_is_refused_on_every_replica_within_the_check(&test, &there).await;
    there.close().await;
    test.cleanup().await;
}
