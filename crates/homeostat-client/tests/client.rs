//! The client against wiremock: errors keep the server's status and code,
//! the bearer header is sent, retries happen only where repeating is safe,
//! and timeouts hold.

use std::time::{Duration, Instant};

use homeostat_client::{Client, ClientError};
use homeostat_model::wire::{HeartbeatRequest, RegisterRequest};
use homeostat_model::{JobId, NewAgent, NewJob};
use serde_json::json;
use wiremock::matchers::{header, header_exists, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn client(server: &MockServer) -> Client {
    Client::builder(server.uri())
        .token("hsk_secret")
        .timeout(Duration::from_millis(500))
        .retries(3)
        .build()
        .unwrap()
}

fn heartbeat_reply() -> serde_json::Value {
    json!({"heartbeat_interval_secs": 10, "lease_ttl_secs": 60, "drain": false, "lost": [], "cancelled": []})
}

#[tokio::test]
async fn errors_keep_the_servers_status_code_and_message() {
    let server = MockServer::start().await;
    for (status, code) in [
        (400, "malformed"),
        (401, "unauthorized"),
        (403, "forbidden"),
        (404, "not_found"),
        (409, "stale_lease"),
        (413, "too_large"),
        (422, "invalid"),
    ] {
        server.reset().await;
        Mock::given(method("GET"))
            .respond_with(
                ResponseTemplate::new(status)
                    .set_body_json(json!({"code": code, "message": format!("the {code} message")})),
            )
            .expect(1)
            .mount(&server)
            .await;
        let err = client(&server)
            .job(JobId::from_uuid(homeostat_model::new_id()))
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(status));
        assert_eq!(err.code().as_str(), code);
        assert!(
            err.to_string().contains(&format!("the {code} message")),
            "{err}"
        );
    }
    // A proxy's page instead of the API's body: the status, and the text.
    server.reset().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(418).set_body_string("I'm a teapot"))
        .mount(&server)
        .await;
    let err = client(&server).agents().await.unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (Some(418), homeostat_model::ErrorCode::Unknown)
    );
    assert!(err.to_string().contains("teapot"));
}

#[tokio::test]
async fn the_bearer_token_is_sent_and_never_printed() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/agent/heartbeat"))
        .and(header("authorization", "Bearer hsk_secret"))
        .respond_with(ResponseTemplate::new(200).set_body_json(heartbeat_reply()))
        .expect(1)
        .mount(&server)
        .await;
    let c = client(&server);
    c.heartbeat(&HeartbeatRequest::default()).await.unwrap();
    assert!(!format!("{c:?}").contains("hsk_secret"));
}

#[tokio::test]
async fn safe_calls_are_retried_when_the_server_is_unavailable() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/agent/heartbeat"))
        .respond_with(
            ResponseTemplate::new(503)
                .set_body_json(json!({"code": "unavailable", "message": "db down"})),
        )
        .up_to_n_times(2)
        .expect(2)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/agent/heartbeat"))
        .respond_with(ResponseTemplate::new(200).set_body_json(heartbeat_reply()))
        .expect(1)
        .mount(&server)
        .await;
    client(&server)
        .heartbeat(&HeartbeatRequest::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_registration_is_not_repeated_unless_the_server_did_nothing() {
    let server = MockServer::start().await;
    // A gateway error: the registration may have happened; not repeated.
    Mock::given(method("POST"))
        .and(path("/v1/agent/register"))
        .respond_with(ResponseTemplate::new(502))
        .expect(1)
        .mount(&server)
        .await;
    let req = RegisterRequest {
        bootstrap_token: "hsb_x".into(),
        agent: NewAgent {
            name: "a".into(),
            labels: Default::default(),
            queues: vec!["q".into()],
        },
    };
    let err = client(&server).register(&req).await.unwrap_err();
    assert_eq!(err.status(), Some(502));
    server.verify().await;
    // The server's 503 says nothing happened: repeated.
    server.reset().await;
    Mock::given(method("POST"))
        .and(path("/v1/agent/register"))
        .respond_with(
            ResponseTemplate::new(503)
                .set_body_json(json!({"code": "unavailable", "message": "x"})),
        )
        .expect(4)
        .mount(&server)
        .await;
    let err = client(&server).register(&req).await.unwrap_err();
    assert_eq!(err.code(), homeostat_model::ErrorCode::Unavailable);
}

#[tokio::test]
async fn an_enqueue_carries_an_idempotency_key_and_its_retry_the_same_one() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/jobs"))
        .and(header_exists("idempotency-key"))
        .respond_with(
            ResponseTemplate::new(503)
                .set_body_json(json!({"code": "unavailable", "message": "x"})),
        )
        .expect(4)
        .mount(&server)
        .await;
    let _ = client(&server).enqueue(None, &NewJob::new("q", "k")).await;
    let keys: std::collections::HashSet<String> = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| r.headers["idempotency-key"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys.len(), 1, "each retry must present the first key");
}

#[tokio::test]
async fn a_call_times_out() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(10)))
        .mount(&server)
        .await;
    let c = Client::builder(server.uri())
        .timeout(Duration::from_millis(200))
        .retries(0)
        .build()
        .unwrap();
    let started = Instant::now();
    let err = c.agents().await.unwrap_err();
    assert!(matches!(err, ClientError::Transport { .. }), "{err}");
    assert_eq!(err.code(), homeostat_model::ErrorCode::Unreachable);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_url_without_scheme_is_refused() {
    let err = Client::builder("localhost:8080").build().unwrap_err();
    assert!(err.to_string().contains("http://"), "{err}");
}

#[tokio::test]
async fn calls_fail_over_to_the_next_replica() {
    let (down, up) = (MockServer::start().await, MockServer::start().await);
    // One replica answers 503 (stopping), the next one works; a refused
    // connection fails over the same way.
    Mock::given(method("POST"))
        .and(path("/v1/agent/heartbeat"))
        .respond_with(
            ResponseTemplate::new(503)
                .set_body_json(json!({"code": "unavailable", "message": "stopping"})),
        )
        .expect(1)
        .mount(&down)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/agent/heartbeat"))
        .respond_with(ResponseTemplate::new(200).set_body_json(heartbeat_reply()))
        .expect(2)
        .mount(&up)
        .await;
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let replicas = Client::builder(down.uri())
        .failover([up.uri()])
        .token("c")
        .build()
        .unwrap();
    replicas
        .heartbeat(&HeartbeatRequest::default())
        .await
        .unwrap();
    assert_eq!(
        replicas.base_url(),
        up.uri(),
        "later calls stay on the one that works"
    );
    let after_refusal = Client::builder(refused)
        .failover([up.uri()])
        .token("c")
        .build()
        .unwrap();
    after_refusal
        .heartbeat(&HeartbeatRequest::default())
        .await
        .unwrap();
}
