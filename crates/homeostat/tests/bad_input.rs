//! Bad input against a running server: a seeded generator sends 10,000
//! malformed, mistyped, oversized, deeply nested, unauthenticated and
//! cross-tenant requests. Not one is a 5xx; every refusal is a JSON error
//! with a documented code; and the store is unchanged after them (its
//! counts, and an intact audit chain of the same length).

mod common;

use std::time::{Duration, Instant};

use common::{client, data_dir, get_json, post_json, ready};
use serde_json::{Value, json};

/// The codes the API documents.
const CODES: &[&str] = &[
    "malformed",
    "unauthorized",
    "forbidden",
    "not_found",
    "method_not_allowed",
    "conflict",
    "stale_lease",
    "too_large",
    "invalid",
    "timeout",
];

/// A tiny deterministic generator (xorshift), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[usize::try_from(self.next() % items.len() as u64).unwrap()]
    }
}

/// What the generator sends: method, path, headers' token, body bytes.
struct Request {
    method: reqwest::Method,
    path: String,
    token: Option<String>,
    content_type: Option<&'static str>,
    body: Vec<u8>,
}

fn bodies(rng: &mut Rng) -> (Option<&'static str>, Vec<u8>) {
    let json = Some("application/json");
    match rng.next() % 12 {
        0 => (json, b"{".to_vec()),
        1 => (json, b"[1, 2".to_vec()),
        2 => (json, vec![0xff, 0xfe, b'{', 0x80]),
        3 => (json, br#"{"capacity": "many"}"#.to_vec()),
        4 => (json, br#"{"queue": 7, "kind": []}"#.to_vec()),
        5 => (
            json,
            br#"{"unknown_field": true, "another": null}"#.to_vec(),
        ),
        6 => (json, "[".repeat(5_000).into_bytes()),
        7 => (json, vec![b' '; 2 * 1024 * 1024]),
        8 => (json, br#"{"lease_token": 1e400}"#.to_vec()),
        9 => (Some("text/plain"), b"name=acme".to_vec()),
        10 => (None, br#"{"name": 1}"#.to_vec()),
        _ => (
            json,
            br#"{"name": "", "tier": "platinum", "jobs": "no"}"#.to_vec(),
        ),
    }
}

fn request(rng: &mut Rng, tokens: &[Option<String>], ids: &[String]) -> Request {
    let id = rng.pick(ids).clone();
    let paths = [
        "/v1/jobs".to_owned(),
        format!("/v1/jobs/{id}"),
        format!("/v1/jobs/{id}/cancel"),
        format!("/v1/jobs/{id}/approve"),
        format!("/v1/agent/jobs/{id}/complete"),
        format!("/v1/agent/jobs/{id}/fail"),
        "/v1/agent/claim".to_owned(),
        "/v1/agent/heartbeat".to_owned(),
        "/v1/agent/register".to_owned(),
        "/v1/tenants".to_owned(),
        "/v1/api-keys".to_owned(),
        "/v1/bootstrap-tokens".to_owned(),
        format!("/v1/tokens/{id}/revoke"),
        format!("/v1/agents/{id}/drain"),
        "/v1/signals/alertmanager".to_owned(),
        format!("/v1/notifications/{id}/redrive"),
        "/v1/jobs?limit=99999999999&state=sleeping".to_owned(),
        "/v1/jobs?after=%00%ff&colour=red".to_owned(),
        "/v1/audit?after=-1&limit=0".to_owned(),
        format!("/v1/controllers/{id}/trigger"),
    ];
    let path = rng.pick(&paths).clone();
    let methods = [
        reqwest::Method::POST,
        reqwest::Method::POST,
        reqwest::Method::GET,
        reqwest::Method::DELETE,
    ];
    let method = rng.pick(&methods).clone();
    let (content_type, body) = if method == reqwest::Method::POST {
        bodies(rng)
    } else {
        (None, Vec::new())
    };
    Request {
        method,
        path,
        token: rng.pick(tokens).clone(),
        content_type,
        body,
    }
}

/// What must not change: counts of what exists, and the audit chain.
async fn snapshot(c: &reqwest::Client, s: &common::Server, admin: &str) -> Value {
    let jobs = get_json(c, s.url("/v1/jobs?limit=500"), admin).await;
    let tenants = get_json(c, s.url("/v1/tenants"), admin).await;
    let keys = get_json(c, s.url("/v1/api-keys"), admin).await;
    let agents = get_json(c, s.url("/v1/agents?limit=1000"), admin).await["items"].clone();
    let audit = get_json(c, s.url("/v1/audit?limit=1000"), admin).await;
    let verify = common::verify_audit(c, s, admin).await;
    json!({
        "jobs": jobs["items"],
        "tenants": tenants["items"],
        "keys": keys["items"].as_array().unwrap().iter().map(|k| k["revoked_at"].clone()).collect::<Vec<_>>(),
        "agents": agents,
        "audit": audit["items"].as_array().unwrap().len(),
        "chain_break": verify["first_break"],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_bad_requests_change_nothing_and_never_fail_the_server() {
    let dir = data_dir();
    let c = client();
    let server = common::start(&dir);
    ready(&c, &server).await;
    let admin = server.admin_key().unwrap();
    // Two tenants with a job each; a tenant key for the first.
    let mut ids = vec![
        "not-an-id".to_owned(),
        "%2e%2e%2f".to_owned(),
        "x".repeat(3000),
    ];
    let mut tenant_keys = Vec::new();
    for name in ["acme", "globex"] {
        let t = post_json(
            &c,
            server.url("/v1/tenants"),
            Some(&admin),
            &json!({"name": name}),
        )
        .await;
        let job = post_json(
            &c,
            server.url("/v1/jobs"),
            Some(&admin),
            &json!({"tenant_id": t["id"], "queue": "q", "kind": "k"}),
        )
        .await;
        ids.push(job["id"].as_str().unwrap().to_owned());
        ids.push(t["id"].as_str().unwrap().to_owned());
        let key = post_json(
            &c,
            server.url("/v1/api-keys"),
            Some(&admin),
            &json!({"role": "tenant", "tenant_id": t["id"]}),
        )
        .await;
        tenant_keys.push(key["secret"].as_str().unwrap().to_owned());
    }
    // A key revoked before the run.
    let revoked = post_json(
        &c,
        server.url("/v1/api-keys"),
        Some(&admin),
        &json!({"role": "viewer"}),
    )
    .await;
    post_json(
        &c,
        server.url(&format!(
            "/v1/tokens/{}/revoke",
            revoked["id"].as_str().unwrap()
        )),
        Some(&admin),
        &json!({}),
    )
    .await;
    let before = snapshot(&c, &server, &admin).await;

    let tokens = vec![
        None,
        Some("hsk_wrong".to_owned()),
        Some(revoked["secret"].as_str().unwrap().to_owned()),
        Some(tenant_keys[0].clone()),
        Some("Basic".to_owned()),
    ];
    let started = Instant::now();
    let total = 10_000;
    let workers = 8;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (c, base, tokens, ids) = (c.clone(), server.url(""), tokens.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (u64::try_from(w).unwrap() + 1));
            for _ in 0..total / workers {
                let r = request(&mut rng, &tokens, &ids);
                let mut req = c.request(r.method.clone(), format!("{base}{}", r.path));
                if let Some(t) = &r.token {
                    req = req.bearer_auth(t);
                }
                if let Some(ct) = r.content_type {
                    req = req.header("content-type", ct);
                }
                let oversized = r.body.len() > 1024 * 1024;
                if oversized {
                    // The server may answer before reading it all and close
                    // the connection: keep it out of the shared pool.
                    req = req.header("connection", "close");
                }
                let res = match req.body(r.body).send().await {
                    Ok(res) => res,
                    // Refused before it was read (a 401 or 413 answered
                    // early, the connection closed under the upload).
                    Err(e) if oversized && e.is_request() => continue,
                    Err(e) => panic!("{} {}: {e:?}", r.method, r.path),
                };
                let status = res.status();
                let text = res.text().await.unwrap();
                assert!(
                    status.as_u16() < 500,
                    "{} {} answered {status}: {text}",
                    r.method,
                    r.path
                );
                if !status.is_success() {
                    let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| {
                        panic!(
                            "{} {} answered {status} without JSON: {text}",
                            r.method, r.path
                        )
                    });
                    let code = body["code"].as_str().unwrap_or_default();
                    assert!(
                        CODES.contains(&code),
                        "{} {}: undocumented code in {text}",
                        r.method,
                        r.path
                    );
                    assert!(body["message"].is_string());
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(60),
        "{total} requests took {took:?}"
    );
    let after = snapshot(&c, &server, &admin).await;
    assert_eq!(before, after, "a bad request changed the store");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
