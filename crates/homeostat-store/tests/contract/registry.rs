//! Tokens and agents.

use std::time::Duration;

use homeostat_model::AgentStatus;
use homeostat_model::{ApiScope, NewAgent, PlanTier};
use homeostat_store::AgentFilter;
use homeostat_store::{NewBootstrapToken, Store, StoreError};
use homeostat_testkit::{At, agent, agents, at, job, on_both_backends, t0, tenant};

use crate::LEASE;

async fn tokens_are_hashed_consumed_and_cleaned_up(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Premium).await;
    let boot = store
        .at(t0())
        .issue_bootstrap_token(
            &NewBootstrapToken {
                tenant_id: Some(t),
                ttl: Duration::from_secs(600),
                uses: 1,
            },
            "operator:test",
        )
        .await
        .unwrap();
    let spec = NewAgent {
        name: "runner-1".into(),
        labels: [("zone".to_string(), "eu-1".to_string())].into(),
        queues: vec!["builds".into()],
    };
    let (agent, credential) = store
        .at(at(1))
        .register_agent(&boot.secret, &spec)
        .await
        .unwrap();
    assert_eq!(agent.tenant_id, Some(t));
    assert_eq!(
        store
            .at(at(2))
            .authenticate_agent(&credential.secret)
            .await
            .unwrap(),
        agent.id
    );
    // One use only.
    assert!(matches!(
        store.at(at(2)).register_agent(&boot.secret, &spec).await,
        Err(StoreError::Unauthorized { .. })
    ));
    assert!(
        store
            .at(at(2))
            .authenticate_agent("hsa_nope")
            .await
            .is_err()
    );

    let key = store
        .at(t0())
        .issue_api_key(ApiScope::Tenant(t), None, "operator:test")
        .await
        .unwrap();
    let who = store
        .at(at(3))
        .authenticate_api_key(&key.secret)
        .await
        .unwrap();
    assert_eq!(who.scope, ApiScope::Tenant(t));
    store
        .at(at(4))
        .revoke_token(key.info.id, "operator:test")
        .await
        .unwrap();
    assert!(
        store
            .at(at(5))
            .authenticate_api_key(&key.secret)
            .await
            .is_err()
    );
    let expiring = store
        .at(t0())
        .issue_bootstrap_token(
            &NewBootstrapToken {
                tenant_id: None,
                ttl: Duration::from_secs(10),
                uses: 5,
            },
            "operator:test",
        )
        .await
        .unwrap();
    assert!(matches!(
        store
            .at(at(11))
            .register_agent(&expiring.secret, &spec)
            .await,
        Err(StoreError::Unauthorized { .. })
    ));

    // No secret is ever in the audit log.
    let log = serde_json::to_string(&store.audit_events(0, 1000).await.unwrap()).unwrap();
    for secret in [
        &boot.secret,
        &credential.secret,
        &key.secret,
        &expiring.secret,
    ] {
        assert!(!log.contains(secret.as_str()));
    }
    // Used-up, revoked and expired tokens go; the live credential stays.
    assert_eq!(
        store
            .at(at(20))
            .delete_dead_tokens(100, None)
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        store
            .at(at(20))
            .delete_dead_tokens(100, None)
            .await
            .unwrap(),
        0
    );
    assert!(
        store
            .at(at(21))
            .authenticate_agent(&credential.secret)
            .await
            .is_ok()
    );
}

async fn agents_heartbeat_in_batches_and_drain(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let ids = agents(store, Some(t), &["q"], 5).await;
    assert_eq!(store.at(at(50)).heartbeat_agents(&ids).await.unwrap(), 5);
    let a = store.get_agent(ids[0]).await.unwrap();
    assert_eq!(a.last_heartbeat_at, at(50));
    store
        .at(at(51))
        .drain_agent(ids[0], "operator:test")
        .await
        .unwrap();
    store.at(at(52)).enqueue(t, &job("q")).await.unwrap();
    let err = store.at(at(53)).claim(ids[0], 1, LEASE).await.unwrap_err();
    assert!(err.to_string().contains("draining"), "{err}");
    assert_eq!(
        store
            .at(at(53))
            .claim(ids[1], 1, LEASE)
            .await
            .unwrap()
            .len(),
        1
    );
    let mine = AgentFilter {
        tenant_id: Some(t),
        status: None,
    };
    assert_eq!(
        store
            .list_agents(&mine, None, 100)
            .await
            .unwrap()
            .items
            .len(),
        5
    );
}

/// A flush of more heartbeats than one statement writes (a server's second
/// of a large fleet) records every one, and brings back online every agent
/// that was offline, in whichever statement it fell.
async fn a_large_flush_of_heartbeats_records_every_agent(store: &Store) {
    let t = tenant(store, "fleet", PlanTier::Free).await;
    let ids = agents(store, Some(t), &["q"], 600).await;
    let silent = store
        .at(at(1_000))
        .mark_silent_agents_offline(Duration::from_secs(90), 1_000, None)
        .await
        .unwrap();
    assert_eq!(silent.len(), 600);
    let heard: Vec<_> = ids.iter().map(|id| (*id, at(1_001))).collect();
    let statuses = store.at(at(1_002)).record_heartbeats(&heard).await.unwrap();
    assert_eq!(statuses.len(), 600);
    assert!(
        statuses.iter().all(|(_, s)| *s == AgentStatus::Online),
        "an agent heard stayed offline"
    );
    for id in [ids[0], ids[299], ids[599]] {
        let a = store.get_agent(id).await.unwrap();
        assert_eq!(
            (a.status, a.last_heartbeat_at),
            (AgentStatus::Online, at(1_001))
        );
    }
    let offline = AgentFilter {
        tenant_id: Some(t),
        status: Some(AgentStatus::Offline),
    };
    let page = store.list_agents(&offline, None, 1_000).await.unwrap();
    assert!(page.items.is_empty(), "{} still offline", page.items.len());
}

async fn agents_list_by_status_in_pages(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let ids = agents(store, Some(t), &["q"], 7).await;
    let platform = agent(store, None, &["q"]).await;
    // Two go offline, one drains.
    store
        .at(at(1_000))
        .heartbeat_agents(&ids[2..])
        .await
        .unwrap();
    store
        .at(at(1_000))
        .heartbeat_agents(&[platform])
        .await
        .unwrap();
    let off = store
        .at(at(1_050))
        .mark_silent_agents_offline(Duration::from_secs(90), 100, None)
        .await
        .unwrap();
    assert_eq!(off.len(), 2);
    store.drain_agent(ids[2], "operator:test").await.unwrap();

    let by = |status, tenant_id| AgentFilter { tenant_id, status };
    let offline = store
        .list_agents(&by(Some(AgentStatus::Offline), None), None, 100)
        .await
        .unwrap();
    let mut got: Vec<_> = offline.items.iter().map(|a| a.id).collect();
    got.sort();
    let mut want = ids[..2].to_vec();
    want.sort();
    assert_eq!(got, want, "the status filter");
    assert!(
        offline
            .items
            .iter()
            .all(|a| a.status == AgentStatus::Offline)
    );
    let draining = store
        .list_agents(&by(Some(AgentStatus::Draining), Some(t)), None, 100)
        .await
        .unwrap();
    assert_eq!(draining.items.len(), 1);
    // Pages of three, by name, every agent once.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_agents(&by(None, None), after, 3).await.unwrap();
        assert!(page.items.len() <= 3);
        seen.extend(page.items.iter().map(|a| (a.name.clone(), a.id)));
        match page.next_cursor {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 8);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "pages follow the names");
}

async fn departed_agents_age_out_with_their_credentials(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let token = NewBootstrapToken {
        tenant_id: Some(t),
        ttl: Duration::from_secs(3600),
        uses: 3,
    };
    let token = store
        .at(t0())
        .issue_bootstrap_token(&token, "operator:test")
        .await
        .unwrap();
    let mut agents = Vec::new();
    for name in ["stays", "departed", "recent"] {
        let new = NewAgent {
            name: name.into(),
            labels: Default::default(),
            queues: vec!["q".into()],
        };
        let (agent, credential) = store
            .at(t0())
            .register_agent(&token.secret, &new)
            .await
            .unwrap();
        // Verified once: the credential is in the store's cache.
        assert_eq!(
            store.authenticate_agent(&credential.secret).await.unwrap(),
            agent.id
        );
        agents.push((agent.id, credential.secret));
    }
    let [
        (stays, _),
        (departed, departed_secret),
        (recent, recent_secret),
    ] = &agents[..]
    else {
        unreachable!()
    };
    let stale = Duration::from_secs(90);
    store
        .at(at(1_000))
        .heartbeat_agents(&[*stays, *recent])
        .await
        .unwrap();
    let off = store
        .at(at(1_050))
        .mark_silent_agents_offline(stale, 100, None)
        .await
        .unwrap();
    assert_eq!(off, vec![*departed]);
    store
        .at(at(2_000))
        .heartbeat_agents(&[*stays])
        .await
        .unwrap();
    let off = store
        .at(at(2_050))
        .mark_silent_agents_offline(stale, 100, None)
        .await
        .unwrap();
    assert_eq!(off, vec![*recent]);

    // Unheard for 1,500 s at 2,100: only the agent last heard at t0.
    let forgotten = store
        .at(at(2_100))
        .forget_departed_agents(Duration::from_secs(1_500), 100, None)
        .await
        .unwrap();
    assert_eq!(forgotten, 1);
    assert!(matches!(
        store.get_agent(*departed).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(
        matches!(
            store.authenticate_agent(departed_secret).await,
            Err(StoreError::Unauthorized { .. })
        ),
        "its credential is revoked, though it was verified before"
    );
    assert_eq!(
        store.authenticate_agent(recent_secret).await.unwrap(),
        *recent
    );
    assert_eq!(
        store.get_agent(*recent).await.unwrap().status,
        AgentStatus::Offline
    );
    assert_eq!(
        store.get_agent(*stays).await.unwrap().status,
        AgentStatus::Online
    );
    let events = store.audit_events(0, 1000).await.unwrap();
    let event = events
        .iter()
        .find(|e| e.action == "agents.forgotten")
        .expect("an agents.forgotten event");
    assert_eq!(event.details["count"], 1);
    // Nothing more to forget.
    assert_eq!(
        store
            .at(at(2_100))
            .forget_departed_agents(Duration::from_secs(1_500), 100, None)
            .await
            .unwrap(),
        0
    );
}

async fn concurrent_registrations_take_only_the_uses_left(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    for uses in [1, 3] {
        let token = NewBootstrapToken {
            tenant_id: Some(t),
            ttl: Duration::from_secs(3600),
            uses,
        };
        let token = store
            .at(t0())
            .issue_bootstrap_token(&token, "operator:test")
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for i in 0..50 {
            let (store, secret) = (store.clone(), token.secret.clone());
            tasks.push(tokio::spawn(async move {
                let new = NewAgent {
                    name: format!("racer-{uses}-{i}"),
                    labels: Default::default(),
                    queues: vec!["q".into()],
                };
                store.register_agent(&secret, &new).await
            }));
        }
        let (mut registered, mut refused) = (0, 0);
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => registered += 1,
                Err(StoreError::Unauthorized { .. }) => refused += 1,
                Err(e) => panic!("neither registered nor refused: {e}"),
            }
        }
        assert_eq!((registered, refused), (uses, 50 - uses), "{uses}-use token");
        let tokens = store
            .list_tokens(homeostat_model::TokenKind::Bootstrap, Some(t))
            .await
            .unwrap();
        let info = tokens.iter().find(|i| i.id == token.info.id).unwrap();
        assert_eq!(info.uses_left, Some(0), "never below zero");
    }
    let mine = AgentFilter {
        tenant_id: Some(t),
        status: None,
    };
    let agents = store.list_agents(&mine, None, 100).await.unwrap();
    assert_eq!(agents.items.len(), 4);
}

/// Revoking an agent: its credential stops working (it was cached as
/// verified), it is offline, its running jobs are queued again at once with
/// the attempt counted, and the audit log names who did it.
async fn a_revoked_agent_is_refused_and_its_jobs_reclaimed(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let token = NewBootstrapToken {
        tenant_id: Some(t),
        ttl: Duration::from_secs(3600),
        uses: 2,
    };
    let token = store
        .at(t0())
        .issue_bootstrap_token(&token, "operator:test")
        .await
        .unwrap();
    let new = |name: &str| NewAgent {
        name: name.into(),
        labels: Default::default(),
        queues: vec!["q".into()],
    };
    let (bad, secret) = store
        .register_agent(&token.secret, &new("compromised"))
        .await
        .unwrap();
    let (good, _) = store
        .register_agent(&token.secret, &new("fine"))
        .await
        .unwrap();
    assert_eq!(
        store.authenticate_agent(&secret.secret).await.unwrap(),
        bad.id
    );
    for _ in 0..3 {
        store.at(at(1)).enqueue(t, &job("q")).await.unwrap();
    }
    let held = store.at(at(2)).claim(bad.id, 2, LEASE).await.unwrap();
    let other = store.at(at(2)).claim(good.id, 1, LEASE).await.unwrap();
    let revoked = store
        .at(at(3))
        .revoke_agent(bad.id, "api_key:ops")
        .await
        .unwrap();
    assert_eq!(revoked.agent.status, AgentStatus::Offline);
    assert_eq!(revoked.credentials, vec![secret.info.id]);
    let mut reclaimed = revoked.reclaimed.clone();
    reclaimed.sort();
    let mut ids: Vec<_> = held.iter().map(|c| c.id).collect();
    ids.sort();
    assert_eq!(reclaimed, ids);
    assert!(matches!(
        store.authenticate_agent(&secret.secret).await,
        Err(StoreError::Unauthorized { .. })
    ));
    for c in &held {
        let job = store.get_job(c.id).await.unwrap();
        assert_eq!(
            (job.state, job.attempt),
            (homeostat_model::JobState::Queued, 1)
        );
    }
    assert_eq!(
        store.get_job(other[0].id).await.unwrap().state,
        homeostat_model::JobState::Running,
        "another agent's job was touched"
    );
    let creds = store.agent_credentials(bad.id).await.unwrap();
    assert_eq!(creds.len(), 1);
    assert_eq!(creds[0].revoked_at, Some(at(3)));
    let events = store
        .audit_events_of(&format!("agent:{}", bad.id), 10)
        .await
        .unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.action == "agent.revoked" && e.actor == "api_key:ops"),
        "{events:?}"
    );
    // Again: nothing left to revoke or reclaim. An unknown agent: 404.
    let again = store.revoke_agent(bad.id, "api_key:ops").await.unwrap();
    assert!(again.credentials.is_empty() && again.reclaimed.is_empty());
    let unknown = homeostat_model::AgentId::at(jiff::Timestamp::now());
    assert!(matches!(
        store.revoke_agent(unknown, "api_key:ops").await,
        Err(StoreError::NotFound { .. })
    ));
}

/// A dashboard session ends after idling, at its age, at sign-out and with
/// its key; a request within the idle time keeps it alive.
async fn dashboard_sessions_end_by_idle_age_sign_out_and_key(store: &Store) {
    use homeostat_store::SessionLimits;
    let limits = SessionLimits {
        idle: Duration::from_secs(600),
        max_age: Duration::from_secs(3600),
    };
    let key = store
        .at(t0())
        .issue_api_key(ApiScope::Viewer, None, "operator:test")
        .await
        .unwrap();
    let kept = store.at(t0()).start_session(key.info.id).await.unwrap();
    let idle = store.at(t0()).start_session(key.info.id).await.unwrap();
    let out = store.at(t0()).start_session(key.info.id).await.unwrap();
    assert_ne!(kept, idle);
    let who = store.at(at(300)).session(&kept, limits).await.unwrap();
    assert_eq!((who.token_id, who.scope), (key.info.id, ApiScope::Viewer));
    store.at(at(300)).end_session(&out).await.unwrap();
    assert!(store.at(at(301)).session(&out, limits).await.is_err());
    // `kept` was used at 300 s: alive at 800 s; `idle` was not: ended.
    assert!(store.at(at(800)).session(&kept, limits).await.is_ok());
    assert!(store.at(at(800)).session(&idle, limits).await.is_err());
    // Used every 500 s, it still ends at its age.
    for t in [1300, 1800, 2300, 2800, 3300] {
        assert!(store.at(at(t)).session(&kept, limits).await.is_ok(), "{t}");
    }
    assert!(store.at(at(3601)).session(&kept, limits).await.is_err());
    assert_eq!(
        store
            .at(at(3601))
            .delete_ended_sessions(limits, 100)
            .await
            .unwrap(),
        2,
        "the idle one and the old one"
    );
    // A revoked key ends its sessions.
    let fresh = store.at(at(3700)).start_session(key.info.id).await.unwrap();
    assert!(store.at(at(3701)).session(&fresh, limits).await.is_ok());
    store
        .at(at(3702))
        .revoke_token(key.info.id, "operator:test")
        .await
        .unwrap();
    assert!(matches!(
        store.at(at(3703)).session(&fresh, limits).await,
        Err(StoreError::Unauthorized { .. })
    ));
    // The server's secret is made once and kept.
    let secret = store.server_secret("test").await.unwrap();
    assert_eq!(secret.len(), 32);
    assert_eq!(store.server_secret("test").await.unwrap(), secret);
    assert_ne!(store.server_secret("other").await.unwrap(), secret);
}

/// Every step of an agent's life is in the audit log: registered, drained,
/// resumed, offline, back online, revoked, removed. A revoked agent's late
/// heartbeat does not bring it back; only an offline agent is removed.
async fn an_agents_lifecycle_is_audited(store: &Store) {
    let t = tenant(store, "acme", PlanTier::Free).await;
    let (a, b) = (
        agent(store, Some(t), &["q"]).await,
        agent(store, Some(t), &["q"]).await,
    );
    let stale = Duration::from_secs(90);
    store
        .at(at(10))
        .drain_agent(a, "api_key:ops")
        .await
        .unwrap();
    store
        .at(at(11))
        .resume_agent(a, "api_key:ops")
        .await
        .unwrap();
    let err = store
        .at(at(12))
        .remove_agent(a, "api_key:ops")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { reason, .. } if reason.contains("online")),
        "{err}"
    );
    let off = store
        .at(at(200))
        .mark_silent_agents_offline(stale, 100, None)
        .await
        .unwrap();
    assert_eq!(off.len(), 2);
    // Heard again: online, audited once for the batch.
    assert_eq!(store.at(at(210)).heartbeat_agents(&[a]).await.unwrap(), 1);
    assert_eq!(
        store.get_agent(a).await.unwrap().status,
        AgentStatus::Online
    );
    assert_eq!(
        store.get_agent(b).await.unwrap().status,
        AgentStatus::Offline
    );
    // Revoked, then a heartbeat heard before the revocation is written: it
    // stays offline.
    store
        .at(at(220))
        .revoke_agent(a, "api_key:ops")
        .await
        .unwrap();
    store.at(at(221)).heartbeat_agents(&[a]).await.unwrap();
    assert_eq!(
        store.get_agent(a).await.unwrap().status,
        AgentStatus::Offline
    );
    let removed = store
        .at(at(230))
        .remove_agent(a, "api_key:ops")
        .await
        .unwrap();
    assert_eq!(removed.id, a);
    assert!(matches!(
        store.get_agent(a).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.remove_agent(a, "api_key:ops").await,
        Err(StoreError::NotFound { .. })
    ));

    let events = store.audit_events(0, 1000).await.unwrap();
    let about = |e: &homeostat_model::AuditEvent| {
        e.subject == format!("agent:{a}")
            || e.details["ids"]
                .as_array()
                .is_some_and(|ids| ids.contains(&serde_json::json!(a)))
    };
    let actions: Vec<&str> = events
        .iter()
        .filter(|e| about(e))
        .map(|e| e.action.as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "agent.registered",
            "agent.draining",
            "agent.resumed",
            "agents.offline",
            "agents.online",
            "agent.revoked",
            "agent.removed"
        ]
    );
    let removal = events.iter().find(|e| e.action == "agent.removed").unwrap();
    assert_eq!(removal.actor, "api_key:ops");
    assert_eq!(removal.details["name"], removed.name.as_str());
    let back = events.iter().find(|e| e.action == "agents.online").unwrap();
    assert_eq!(back.details["ids"], serde_json::json!([a]));
}

on_both_backends!(
    a_large_flush_of_heartbeats_records_every_agent,
    an_agents_lifecycle_is_audited,
    dashboard_sessions_end_by_idle_age_sign_out_and_key,
    a_revoked_agent_is_refused_and_its_jobs_reclaimed,
    concurrent_registrations_take_only_the_uses_left,
    departed_agents_age_out_with_their_credentials,
    tokens_are_hashed_consumed_and_cleaned_up,
    agents_heartbeat_in_batches_and_drain,
    agents_list_by_status_in_pages,
);
