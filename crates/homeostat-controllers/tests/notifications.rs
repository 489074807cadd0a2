//! The notifier against a real local HTTP server, through the
//! notification-dispatch controller, on both backends.

use homeostat_testkit::{self as backends, At, at, on_both_backends, t0};

use std::time::Duration;

use homeostat_controllers::notifier::{SIGNATURE_HEADER, Secret, sign};
use homeostat_controllers::{NotificationDispatch, Notifier, Settings};
use homeostat_model::{NotificationId, NotificationState};
use homeostat_runtime::Controller;
use homeostat_store::Store;
use jiff::Timestamp;
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn dispatcher(store: &Store, notifier: Notifier) -> NotificationDispatch {
    NotificationDispatch::new(
        store.clone(),
        notifier,
        Settings::every(Duration::from_secs(15), 100),
    )
}

async fn run(store: &Store, controller: &NotificationDispatch, when: Timestamp) -> u64 {
    let ctx = backends::context_at(store, controller.name(), when, None);
    controller.reconcile(ctx).await.unwrap().items
}

async fn notify(store: &Store) -> NotificationId {
    store
        .at(t0())
        .add_notification("job.dead", &json!({"job_id": "j-1", "reason": "exit 1"}))
        .await
        .unwrap()
}

async fn state(store: &Store, id: NotificationId) -> NotificationState {
    store.get_notification(id).await.unwrap().state
}

async fn a_webhook_delivery_is_signed_and_sent(store: &Store) {
    crypto();
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let sink = Notifier::webhook(
        format!("{}/hook", server.uri()),
        Some(Secret::new("hunter2")),
    )
    .unwrap();
    let id = notify(store).await;
    assert_eq!(run(store, &dispatcher(store, sink), t0()).await, 1);
    assert_eq!(state(store, id).await, NotificationState::Sent);

    let request = &server.received_requests().await.unwrap()[0];
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["event"], "job.dead");
    assert_eq!(body["payload"]["reason"], "exit 1");
    let signature = request
        .headers
        .get(SIGNATURE_HEADER)
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(signature, sign("hunter2", &request.body));
    assert!(!String::from_utf8_lossy(&request.body).contains("hunter2"));
}

async fn a_failed_delivery_is_retried_after_the_backoff(store: &Store) {
    crypto();
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(502))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let controller = dispatcher(store, Notifier::webhook(server.uri(), None).unwrap());
    let id = notify(store).await;
    assert_eq!(run(store, &controller, t0()).await, 0);
    let n = store.get_notification(id).await.unwrap();
    assert_eq!((n.state, n.attempts), (NotificationState::Pending, 1));
    assert_eq!(
        n.next_attempt_at,
        at(120),
        "2 minutes after the first failure"
    );
    assert!(n.last_error.unwrap().contains("502"));
    assert_eq!(run(store, &controller, at(60)).await, 0, "not due yet");
    assert_eq!(run(store, &controller, at(120)).await, 1);
    assert_eq!(state(store, id).await, NotificationState::Sent);
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}

async fn a_client_error_is_permanent_and_raises_notification_dead(store: &Store) {
    crypto();
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&server)
        .await;
    let controller = dispatcher(store, Notifier::webhook(server.uri(), None).unwrap());
    let id = notify(store).await;
    // The job.dead notification dies at once and raises notification.dead...
    assert_eq!(run(store, &controller, t0()).await, 1);
    assert_eq!(state(store, id).await, NotificationState::Dead);
    // ...which, sent on the next run to the same sink, dies too and raises
    // nothing more.
    assert_eq!(run(store, &controller, at(15)).await, 1);
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
    assert_eq!(run(store, &controller, at(3600)).await, 0);
}

async fn five_failures_are_the_end(store: &Store) {
    crypto();
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    let controller = dispatcher(store, Notifier::webhook(server.uri(), None).unwrap());
    let id = notify(store).await;
    let mut when = t0();
    for attempt in 1..=5 {
        run(store, &controller, when).await;
        let n = store.get_notification(id).await.unwrap();
        assert_eq!(n.attempts, attempt);
        when = n.next_attempt_at;
    }
    assert_eq!(state(store, id).await, NotificationState::Dead);
    // Rate limiting (429) and timeouts (408) are retried, not permanent.
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429))
        .mount(&server)
        .await;
    let controller = dispatcher(store, Notifier::webhook(server.uri(), None).unwrap());
    let id = notify(store).await;
    run(store, &controller, at(100_000)).await;
    assert_eq!(state(store, id).await, NotificationState::Pending);
}

async fn slack_gets_text_and_fan_out_needs_every_sink(store: &Store) {
    crypto();
    let slack = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&slack)
        .await;
    let broken = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&broken)
        .await;
    let id = notify(store).await;
    let fan_out = Notifier::FanOut(vec![
        Notifier::slack(slack.uri()).unwrap(),
        Notifier::webhook(broken.uri(), None).unwrap(),
    ]);
    run(store, &dispatcher(store, fan_out), t0()).await;
    assert_eq!(
        state(store, id).await,
        NotificationState::Pending,
        "one sink failed"
    );
    let body: serde_json::Value =
        serde_json::from_slice(&slack.received_requests().await.unwrap()[0].body).unwrap();
    assert_eq!(
        body,
        json!({"text": "*job.dead*: job_id=j-1 reason=exit 1"})
    );

    // An unreachable sink is a transient failure, and its error names no URL.
    let gone = Notifier::slack("http://127.0.0.1:9/services/T000/B000/secret-token").unwrap();
    let id = store
        .at(t0())
        .add_notification("agent.offline", &json!({}))
        .await
        .unwrap();
    run(store, &dispatcher(store, gone), at(600)).await;
    let n = store.get_notification(id).await.unwrap();
    assert_eq!(n.state, NotificationState::Pending);
    assert!(!n.last_error.unwrap().contains("secret-token"));
}

on_both_backends!(
    a_webhook_delivery_is_signed_and_sent,
    a_failed_delivery_is_retried_after_the_backoff,
    a_client_error_is_permanent_and_raises_notification_dead,
    five_failures_are_the_end,
    slack_gets_text_and_fan_out_needs_every_sink,
);
