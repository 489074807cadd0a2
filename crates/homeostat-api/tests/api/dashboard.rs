//! The dashboard through the router, on both backends: every page renders
//! on an empty and on a busy store; signing in; a viewer's action and a
//! form without its CSRF token are refused and change nothing; actions are
//! audited as the signed-in key; bulk actions preview before they act; a
//! tenant key sees its own jobs only.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use homeostat_model::{ApiScope, JobState};
use homeostat_store::Store;
use homeostat_testkit::on_both_backends;
use http_body_util::BodyExt;
use serde_json::json;

use crate::{Answer, Api};

const PAGES: [&str; 8] = [
    "/",
    "/jobs",
    "/agents",
    "/limits",
    "/controllers",
    "/audit",
    "/notifications",
    "/controllers/job-recovery/plan",
];

impl Api {
    /// The session a browser that signed in with `key` holds: one per key,
    /// started as a sign-in starts it. A key that does not authenticate
    /// gets itself as the cookie, which no session is.
    async fn session_of(&self, key: &str) -> String {
        if let Some(id) = self.sessions.lock().unwrap().get(key) {
            return id.clone();
        }
        let Ok(identity) = self.store.authenticate_api_key(key).await else {
            return key.to_owned();
        };
        let id = self.store.start_session(identity.token_id).await.unwrap();
        self.sessions
            .lock()
            .unwrap()
            .insert(key.to_owned(), id.clone());
        id
    }

    /// A page as a browser signed in with `key` asks for it.
    async fn page(&self, path: &str, key: &str) -> Answer {
        let session = self.session_of(key).await;
        let req = Request::get(path)
            .header("cookie", format!("homeostat_session={session}"))
            .body(Body::empty())
            .unwrap();
        self.send(req).await
    }

    /// A form posted by a browser signed in with `key` (none: signed out).
    async fn form(&self, path: &str, key: Option<&str>, fields: &[(&str, &str)]) -> Answer {
        let body = form_body(fields.iter().copied());
        let mut req =
            Request::post(path).header("content-type", "application/x-www-form-urlencoded");
        if let Some(key) = key {
            let session = self.session_of(key).await;
            req = req.header("cookie", format!("homeostat_session={session}"));
        }
        self.send(req.body(Body::from(body)).unwrap()).await
    }

    /// The CSRF token the pages give `key`'s forms.
    async fn csrf(&self, key: &str) -> String {
        let page = self.page("/jobs", key).await;
        let at = page
            .text
            .find("name=\"csrf\" value=\"")
            .expect("a form with a CSRF token")
            + "name=\"csrf\" value=\"".len();
        page.text[at..].split('"').next().unwrap().to_owned()
    }

    async fn key(&self, scope: ApiScope) -> (String, String) {
        let issued = self
            .store
            .issue_api_key(scope, None, "operator:test")
            .await
            .unwrap();
        (issued.info.id.to_string(), issued.secret)
    }

    async fn job_state(&self, id: &str) -> JobState {
        self.store.get_job(id.parse().unwrap()).await.unwrap().state
    }
}

async fn redirect_of(
    api: &Api,
    req: Request<Body>,
) -> (StatusCode, Option<String>, Option<String>) {
    use tower::ServiceExt;
    let res = api.app.clone().oneshot(req).await.unwrap();
    let header = |name: &str| {
        res.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    (res.status(), header("location"), header("set-cookie"))
}

/// `fields` as a form body (`application/x-www-form-urlencoded`).
fn form_body<'a>(fields: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish()
}

/// What a sign-in answered.
struct SignedIn {
    status: StatusCode,
    location: Option<String>,
    /// The session cookie it set, if any.
    session: Option<String>,
    text: String,
}

/// Posts the sign-in form with `fields`, as a browser that loaded the form
/// first (its token in the form and in the cookie) or, when `from_form` is
/// false, as a page of another site would (neither).
async fn sign_in(api: &Api, fields: &[(&str, &str)], from_form: bool) -> SignedIn {
    use tower::ServiceExt;
    let mut fields: Vec<(&str, String)> = fields.iter().map(|(k, v)| (*k, v.to_string())).collect();
    let mut req =
        Request::post("/login").header("content-type", "application/x-www-form-urlencoded");
    if from_form {
        let res = api
            .app
            .clone()
            .oneshot(Request::get("/login").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("Path=/login"),
            "{cookie}"
        );
        let pair = cookie.split(';').next().unwrap().to_owned();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let page = String::from_utf8_lossy(&body);
        let at = page.find("name=\"csrf\" value=\"").expect("a form token")
            + "name=\"csrf\" value=\"".len();
        let token = page[at..].split('"').next().unwrap().to_owned();
        fields.push(("csrf", token));
        req = req.header("cookie", pair);
    }
    let body = form_body(fields.iter().map(|(k, v)| (*k, v.as_str())));
    let res = api
        .app
        .clone()
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let header = |name: &str| {
        res.headers()
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .find(|v| name != "set-cookie" || v.starts_with("homeostat_session="))
    };
    let (status, location, session) = (res.status(), header("location"), header("set-cookie"));
    let body = res.into_body().collect().await.unwrap().to_bytes();
    SignedIn {
        status,
        location,
        session,
        text: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// A store with something in every state a page shows: queued, running,
/// dead (with its error), awaiting approval, an agent holding a job, a
/// dead notification.
async fn busy(api: &Api) -> (String, String) {
    let (tenant, key) = api.tenant("acme").await;
    let (_, cred) = api.agent(Some(tenant), &["builds"]).await;
    let dead = api
        .enqueue(
            &key,
            json!({"queue": "builds", "kind": "compile", "max_attempts": 1,
                   "fingerprint": "web@main", "payload": {"repo": "web"}}),
        )
        .await;
    let claim = api
        .post(
            "/v1/agent/claim",
            &cred,
            json!({"capacity": 1, "wait_secs": 0}),
        )
        .await;
    let job = &claim.body["jobs"][0];
    assert_eq!(job["id"], json!(dead), "{}", claim.text);
    let failed = api
        .post(
            &format!("/v1/agent/jobs/{dead}/fail"),
            &cred,
            json!({"lease_token": job["lease_token"], "error": "disk full on /var/cache",
                   "retryable": false}),
        )
        .await;
    assert!(failed.status.is_success(), "{}", failed.text);
    for n in 0..12 {
        api.enqueue(
            &key,
            json!({"queue": "builds", "kind": "compile", "payload": {"n": n}}),
        )
        .await;
    }
    api.post(
        "/v1/agent/claim",
        &cred,
        json!({"capacity": 2, "wait_secs": 0}),
    )
    .await;
    let later = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1)).to_string();
    api.enqueue(
        &key,
        json!({"queue": "deploys", "kind": "rollout", "approval_expires_at": later}),
    )
    .await;
    let n = api
        .store
        .add_notification("job.dead", &json!({"job_id": dead}))
        .await
        .unwrap();
    api.store
        .record_delivery(
            n,
            &homeostat_store::Delivery::Failed {
                error: "410 Gone".into(),
                permanent: true,
            },
        )
        .await
        .unwrap();
    (dead, key)
}

async fn every_page_renders_on_an_empty_and_a_busy_store(store: &Store) {
    let api = Api::new(store).await;
    for path in PAGES {
        let page = api.page(path, &api.admin).await;
        assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.text);
        assert!(page.text.starts_with("<!doctype html>"), "{path}");
        assert!(page.text.contains("/assets/htmx.min.js"), "{path}");
    }
    let empty = api.page("/", &api.admin).await.text;
    assert!(empty.contains("Nothing needs a person"), "{empty}");

    let (dead, tenant_key) = busy(&api).await;
    let short = &dead[dead.len() - 8..];
    for path in PAGES {
        let page = api.page(path, &api.admin).await;
        assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.text);
    }
    let overview = api.page("/", &api.admin).await.text;
    for shown in [
        "Dead jobs",
        short,
        "disk full on /var/cache",
        "Waiting for approval",
        "Dead notifications",
        "410 Gone",
    ] {
        assert!(
            overview.contains(shown),
            "the overview lacks {shown:?}:\n{overview}"
        );
    }
    // The chart has a bar for the job that died this minute.
    assert!(
        overview.contains("this minute: 0 succeeded, 1 failed"),
        "{overview}"
    );

    let job = api.page(&format!("/jobs/{dead}"), &api.admin).await;
    assert_eq!(job.status, StatusCode::OK);
    for shown in [
        "st-dead",
        "disk full on /var/cache",
        "&#34;repo&#34;: &#34;web&#34;",
        "Retry",
    ] {
        assert!(
            job.text.contains(shown),
            "the job page lacks {shown:?}:\n{}",
            job.text
        );
    }
    assert!(
        job.text.contains("<dt>Occurrences</dt><dd>1</dd>"),
        "{}",
        job.text
    );
    // A job waiting for approval says by when.
    let gated = api.store.awaiting_approval(10).await.unwrap();
    let page = api
        .page(&format!("/jobs/{}", gated[0].id), &api.admin)
        .await;
    assert!(page.text.contains("<dt>Approval by</dt>"), "{}", page.text);
    // Its failed attempt is listed with the agent that ran it, by name.
    let attempts = &job.text[job.text.find("Failed attempts").unwrap()..];
    assert!(
        !attempts.starts_with("Failed attempts</h2>\n<p class=\"muted\">None."),
        "{attempts}"
    );
    assert!(attempts.contains(">a1</span>"), "{attempts}");
    // Tenants and agents by name, their ids on hover.
    assert!(
        job.text.contains("<dt>Tenant</dt><dd>acme "),
        "{}",
        job.text
    );
    let running = api.page("/jobs?state=running", &api.admin).await.text;
    assert!(running.contains("\">acme</td>"), "{running}");
    assert!(running.contains("\">a1</a>"), "{running}");
    let agents = api.page("/agents", &api.admin).await.text;
    assert!(agents.contains("\">acme</td>"), "{agents}");
    // A queue with jobs waiting and no online agent claiming from it is
    // flagged; one an agent serves is not.
    assert!(
        !overview.contains("Queues no online agent serves"),
        "{overview}"
    );
    api.enqueue(&tenant_key, json!({"queue": "nightly", "kind": "report"}))
        .await;
    // Job counts may lag a few seconds behind a costly count (PostgreSQL on
    // a busy machine): poll for the flag.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let overview = loop {
        let overview = api.page("/", &api.admin).await.text;
        if overview.contains("Queues no online agent serves") {
            break overview;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never flagged: {overview}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let flagged = &overview[overview.find("Queues no online agent serves").unwrap()..];
    assert!(
        flagged.contains("nightly</a> <span class=\"why\">1 job queued"),
        "{flagged}"
    );
    assert!(
        !flagged[..flagged.find("</ul>").unwrap()].contains("builds"),
        "{flagged}"
    );
    assert_eq!(
        job.text.matches("disk full on /var/cache").count(),
        2,
        "{}",
        job.text
    );

    let deads = api.page("/jobs?state=dead", &api.admin).await.text;
    assert!(deads.contains(&dead), "{deads}");
    assert!(
        !deads.contains("st-queued"),
        "a state filter shows other states"
    );
    let by_fingerprint = api
        .page("/jobs?fingerprint=web%40ma", &api.admin)
        .await
        .text;
    assert!(by_fingerprint.contains(&dead), "{by_fingerprint}");
    assert_eq!(
        by_fingerprint.matches("<tr><td><a href=\"/jobs/").count(),
        1
    );

    let agents = api.page("/agents", &api.admin).await.text;
    assert!(
        agents.contains("a1") && agents.contains("builds"),
        "{agents}"
    );

    // Polling (htmx, not a boosted navigation) gets only the live part.
    let req = Request::get("/")
        .header(
            "cookie",
            format!("homeostat_session={}", api.session_of(&api.admin).await),
        )
        .header("hx-request", "true")
        .body(Body::empty())
        .unwrap();
    let fragment = api.send(req).await;
    assert_eq!(fragment.status, StatusCode::OK);
    assert!(!fragment.text.contains("<html"), "{}", fragment.text);
    assert!(fragment.text.contains("Needs attention"));

    let bad = api.page("/jobs?state=sleeping", &api.admin).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.text.contains("state:"), "{}", bad.text);
    let missing = api.page("/jobs/not-a-job", &api.admin).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    api.stop().await;
}

async fn signing_in_sets_an_http_only_strict_cookie(store: &Store) {
    let api = Api::new(store).await;
    let (status, to, _) = redirect_of(&api, Request::get("/").body(Body::empty()).unwrap()).await;
    assert_eq!(
        (status, to.as_deref()),
        (StatusCode::SEE_OTHER, Some("/login"))
    );
    let req = Request::get("/jobs")
        .header("hx-request", "true")
        .body(Body::empty())
        .unwrap();
    let res = {
        use tower::ServiceExt;
        api.app.clone().oneshot(req).await.unwrap()
    };
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()["hx-redirect"], "/login");

    let wrong = sign_in(&api, &[("key", "hsk_not_a_key")], true).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(
        wrong.text.contains("unknown, revoked or expired"),
        "{}",
        wrong.text
    );
    assert!(wrong.session.is_none());
    let unknown_field = sign_in(&api, &[("key", &api.admin), ("remember", "1")], true).await;
    assert!(unknown_field.status.is_client_error());
    assert!(
        unknown_field.text.contains("<!doctype html>"),
        "{}",
        unknown_field.text
    );
    assert!(
        unknown_field.text.contains("remember"),
        "{}",
        unknown_field.text
    );
    let odd_notice = api.page("/jobs?done=exploded", &api.admin).await;
    assert_eq!(odd_notice.status, StatusCode::BAD_REQUEST);
    assert!(odd_notice.text.contains("exploded"), "{}", odd_notice.text);

    // A sign-in form posted from elsewhere (without this site's form
    // token) signs nobody in, even with a live key.
    let forged = sign_in(&api, &[("key", &api.admin)], false).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN, "{}", forged.text);
    assert!(forged.session.is_none());

    let signed = sign_in(&api, &[("key", &api.admin)], true).await;
    assert_eq!(
        (signed.status, signed.location.as_deref()),
        (StatusCode::SEE_OTHER, Some("/"))
    );
    let cookie = signed.session.expect("a session cookie");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    // The cookie is a session, not the key: no API credential.
    let session = cookie.split(';').next().unwrap()["homeostat_session=".len()..].to_owned();
    assert!(!cookie.contains(&api.admin), "{cookie}");
    assert_eq!(
        api.get("/v1/jobs", &session).await.status,
        StatusCode::UNAUTHORIZED
    );
    let by_cookie = |path: &'static str| {
        Request::get(path)
            .header("cookie", format!("homeostat_session={session}"))
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(api.send(by_cookie("/jobs")).await.status, StatusCode::OK);
    // A form token made up by another origin that can set this site's
    // cookies (its nonce and the same value in the form) signs no one in.
    let planted = api
        .send(
            Request::post("/login")
                .header("content-type", "application/x-www-form-urlencoded")
                .header("cookie", "homeostat_login=00112233445566778899aabbccddeeff")
                .body(Body::from(form_body(
                    [
                        ("key", api.admin.as_str()),
                        ("csrf", "00112233445566778899aabbccddeeff"),
                    ]
                    .into_iter(),
                )))
                .unwrap(),
        )
        .await;
    assert_eq!(planted.status, StatusCode::FORBIDDEN, "{}", planted.text);
    // Signed out: a copy of the cookie taken before works no more.
    let csrf = {
        let page = api.send(by_cookie("/jobs")).await.text;
        let at = page.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
        page[at..].split('"').next().unwrap().to_owned()
    };
    let out = api
        .send(
            Request::post("/logout")
                .header("content-type", "application/x-www-form-urlencoded")
                .header("cookie", format!("homeostat_session={session}"))
                .body(Body::from(form_body([("csrf", csrf.as_str())].into_iter())))
                .unwrap(),
        )
        .await;
    assert_eq!(out.status, StatusCode::SEE_OTHER, "{}", out.text);
    let after = api.send(by_cookie("/jobs")).await;
    assert_eq!(
        after.status,
        StatusCode::SEE_OTHER,
        "a copied cookie outlived sign-out"
    );

    // A revoked key's session ends at its next request.
    let (id, viewer) = api.key(ApiScope::Viewer).await;
    assert_eq!(api.page("/", &viewer).await.status, StatusCode::OK);
    api.store
        .revoke_token(id.parse().unwrap(), "operator:test")
        .await
        .unwrap();
    assert_eq!(api.page("/", &viewer).await.status, StatusCode::SEE_OTHER);
    api.stop().await;
}

async fn a_viewer_sees_everything_and_acts_on_nothing(store: &Store) {
    let api = Api::new(store).await;
    let (dead, _) = busy(&api).await;
    let (_, viewer) = api.key(ApiScope::Viewer).await;
    for path in PAGES {
        assert_eq!(
            api.page(path, &viewer).await.status,
            StatusCode::OK,
            "{path}"
        );
    }
    let page = api.page(&format!("/jobs/{dead}"), &viewer).await.text;
    assert!(!page.contains("/retry\""), "a viewer is offered an action");
    let csrf = api.csrf(&viewer).await;
    let agents = api
        .store
        .list_agents(&Default::default(), None, 100)
        .await
        .unwrap()
        .items;
    let refused = [
        format!("/jobs/{dead}/retry"),
        format!("/jobs/{dead}/cancel"),
        format!("/agents/{}/drain", agents[0].id),
        "/controllers/job-recovery/trigger".to_owned(),
        "/audit/verify".to_owned(),
    ];
    for path in &refused {
        let a = api.form(path, Some(&viewer), &[("csrf", &csrf)]).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{path}: {}", a.text);
        assert!(a.text.contains("viewer"), "{path}: {}", a.text);
    }
    let bulk = api
        .form(
            "/jobs/bulk",
            Some(&viewer),
            &[
                ("csrf", &csrf),
                ("action", "cancel"),
                ("queue", "builds"),
                ("confirm", "yes"),
            ],
        )
        .await;
    assert_eq!(bulk.status, StatusCode::FORBIDDEN);
    assert_eq!(api.job_state(&dead).await, JobState::Dead);
    let agent = api.store.get_agent(agents[0].id).await.unwrap();
    assert_eq!(agent.status, homeostat_model::AgentStatus::Online);
    let cancelled = api
        .store
        .list_jobs(
            &homeostat_store::JobFilter {
                state: Some(JobState::Cancelled),
                ..Default::default()
            },
            None,
            10,
        )
        .await
        .unwrap();
    assert!(cancelled.items.is_empty());
    api.stop().await;
}

async fn a_form_without_its_csrf_token_is_refused(store: &Store) {
    let api = Api::new(store).await;
    let (dead, _) = busy(&api).await;
    let (_, other_admin) = api.key(ApiScope::Admin).await;
    let others = api.csrf(&other_admin).await;
    let retry = format!("/jobs/{dead}/retry");
    for fields in [vec![], vec![("csrf", "")], vec![("csrf", others.as_str())]] {
        let a = api.form(&retry, Some(&api.admin), &fields).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{fields:?}: {}", a.text);
        assert!(a.text.contains("CSRF"), "{}", a.text);
    }
    assert_eq!(api.job_state(&dead).await, JobState::Dead);
    // A form with fields of its own but no token is refused for the token
    // (403), not for its fields (422).
    for (path, fields) in [
        ("/jobs/bulk", vec![("queue", "q")]),
        ("/jobs/bulk", vec![]),
        ("/logout", vec![]),
    ] {
        let a = api.form(path, Some(&api.admin), &fields).await;
        assert_eq!(
            a.status,
            StatusCode::FORBIDDEN,
            "{path} {fields:?}: {}",
            a.text
        );
        assert!(a.text.contains("CSRF"), "{}", a.text);
    }
    let signed_out = api.form(&retry, None, &[("csrf", &others)]).await;
    assert_eq!(signed_out.status, StatusCode::SEE_OTHER);
    assert_eq!(api.job_state(&dead).await, JobState::Dead);

    // With its token the action is done, and audited as the key.
    let csrf = api.csrf(&api.admin).await;
    let a = api.form(&retry, Some(&api.admin), &[("csrf", &csrf)]).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text);
    assert_eq!(api.job_state(&dead).await, JobState::Queued);
    let admin_id = api
        .store
        .authenticate_api_key(&api.admin)
        .await
        .unwrap()
        .token_id;
    let history = api
        .store
        .audit_events_of(&format!("job:{dead}"), 100)
        .await
        .unwrap();
    let redriven = history
        .iter()
        .find(|e| e.action == "job.retried")
        .expect("an audit event for the retry");
    assert_eq!(redriven.actor, format!("api_key:{admin_id}"));
    for e in &history {
        assert!(
            !e.details.to_string().contains(&api.admin),
            "a secret in the audit log"
        );
    }
    api.stop().await;
}

async fn bulk_actions_preview_then_act_on_the_filtered_set(store: &Store) {
    let api = Api::new(store).await;
    let (tenant, key) = api.tenant("acme").await;
    for n in 0..5 {
        api.enqueue(
            &key,
            json!({"queue": "reports", "kind": "render", "payload": {"n": n}}),
        )
        .await;
    }
    let keep = api
        .enqueue(&key, json!({"queue": "builds", "kind": "compile"}))
        .await;
    let csrf = api.csrf(&api.admin).await;
    let fields = |confirm: bool| {
        let mut f = vec![
            ("csrf", csrf.clone()),
            ("action", "cancel".to_owned()),
            ("queue", "reports".to_owned()),
            ("tenant", tenant.to_string()),
        ];
        if confirm {
            f.push(("confirm", "yes".to_owned()));
        }
        f
    };
    let preview_fields = fields(false);
    let preview_refs: Vec<(&str, &str)> = preview_fields
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .collect();
    let preview = api
        .form("/jobs/bulk", Some(&api.admin), &preview_refs)
        .await;
    assert_eq!(preview.status, StatusCode::OK, "{}", preview.text);
    assert!(
        preview
            .text
            .contains("This will cancel <strong>5</strong> jobs of the 5"),
        "{}",
        preview.text
    );
    let queued = |api: &Api| {
        let store = api.store.clone();
        async move {
            store
                .list_jobs(
                    &homeostat_store::JobFilter {
                        queue: Some("reports".into()),
                        state: Some(JobState::Queued),
                        ..Default::default()
                    },
                    None,
                    100,
                )
                .await
                .unwrap()
                .items
                .len()
        }
    };
    assert_eq!(queued(&api).await, 5, "a preview changes nothing");

    let confirm_fields = fields(true);
    let confirm_refs: Vec<(&str, &str)> = confirm_fields
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .collect();
    let done = api
        .form("/jobs/bulk", Some(&api.admin), &confirm_refs)
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.text);
    assert_eq!(queued(&api).await, 0);
    assert_eq!(api.job_state(&keep).await, JobState::Queued);
    let cancels = api
        .store
        .audit_page(
            &homeostat_store::AuditFilter {
                action: Some("job.cancelled".into()),
                ..Default::default()
            },
            None,
            100,
        )
        .await
        .unwrap();
    assert_eq!(cancels.len(), 5);

    let everything = api
        .form(
            "/jobs/bulk",
            Some(&api.admin),
            &[("csrf", &csrf), ("action", "cancel")],
        )
        .await;
    assert_eq!(everything.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(everything.text.contains("at least one filter"));
    let odd = api
        .form(
            "/jobs/bulk",
            Some(&api.admin),
            &[("csrf", &csrf), ("action", "delete"), ("queue", "builds")],
        )
        .await;
    assert_eq!(odd.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(api.job_state(&keep).await, JobState::Queued);
    api.stop().await;
}

async fn a_bulk_retry_goes_past_a_tenant_at_its_quota_and_says_so(store: &Store) {
    // Before the server starts (its quota count is then fresh): two
    // tenants with two dead jobs each in `reports`; acme also has two live
    // jobs elsewhere, its whole quota of 2, and bolt none.
    let mut ids = Vec::new();
    for name in ["acme", "bolt"] {
        let t = store
            .create_tenant(name, homeostat_model::PlanTier::Standard, "operator:test")
            .await
            .unwrap();
        let agent = homeostat_testkit::agent(store, Some(t.id), &["reports"]).await;
        for _ in 0..2 {
            store
                .enqueue(t.id, &homeostat_testkit::job("reports"))
                .await
                .unwrap();
        }
        for c in store
            .claim(agent, 10, Duration::from_secs(60))
            .await
            .unwrap()
        {
            store
                .fail(&homeostat_store::Failure {
                    agent,
                    id: c.id,
                    lease_token: c.lease_token,
                    error: "boom",
                    permanent: true,
                })
                .await
                .unwrap();
            ids.push(c.id.to_string());
        }
        if name == "acme" {
            for _ in 0..2 {
                store
                    .enqueue(t.id, &homeostat_testkit::job("other"))
                    .await
                    .unwrap();
            }
        }
    }
    let api = Api::with_settings(store, crate::live_jobs_quota(2)).await;
    let csrf = api.csrf(&api.admin).await;
    let retried = api
        .form(
            "/jobs/bulk",
            Some(&api.admin),
            &[
                ("csrf", csrf.as_str()),
                ("action", "retry"),
                ("queue", "reports"),
                ("confirm", "yes"),
            ],
        )
        .await;
    assert_eq!(retried.status, StatusCode::SEE_OTHER, "{}", retried.text);
    let location = retried.headers["location"].to_str().unwrap().to_owned();
    assert!(
        location.ends_with("done=retried&n=2&refused=2"),
        "{location}"
    );
    let mut states = Vec::new();
    for id in &ids {
        states.push(api.job_state(id).await);
    }
    use JobState::*;
    assert_eq!(
        states,
        [Dead, Dead, Queued, Queued],
        "bolt's jobs are retried past acme's refusals"
    );
    let landed = api.page(&location, &api.admin).await;
    assert!(
        landed.text.contains(
            "2 jobs queued again; 2 jobs left as they were: the quota of live jobs of their tenant is full."
        ),
        "{}",
        landed.text
    );
    api.stop().await;
}

async fn a_tenant_key_sees_only_its_own_jobs(store: &Store) {
    let api = Api::new(store).await;
    let (_, mine) = api.tenant("mine").await;
    let (_, theirs) = api.tenant("theirs").await;
    let own = api.enqueue(&mine, json!({"queue": "q", "kind": "k"})).await;
    let other = api
        .enqueue(&theirs, json!({"queue": "q", "kind": "k"}))
        .await;
    let (status, to, _) = redirect_of(
        &api,
        Request::get("/")
            .header(
                "cookie",
                format!("homeostat_session={}", api.session_of(&mine).await),
            )
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, to.as_deref()),
        (StatusCode::SEE_OTHER, Some("/jobs"))
    );
    let list = api.page("/jobs", &mine).await.text;
    assert!(list.contains(&own) && !list.contains(&other), "{list}");
    // Its quotas, and where it stands: one live job, in one queue.
    assert!(
        list.contains(
            "Your tenant&#x27;s quotas: 1 live jobs of 1000000 · jobs in 1 queues of 1000"
        ) || list
            .contains("Your tenant's quotas: 1 live jobs of 1000000 · jobs in 1 queues of 1000"),
        "{list}"
    );
    let admin_list = api.page("/jobs", &api.admin).await.text;
    assert!(!admin_list.contains("Your tenant"), "{admin_list}");
    assert_eq!(
        api.page(&format!("/jobs/{other}"), &mine).await.status,
        StatusCode::NOT_FOUND
    );
    for path in ["/audit", "/controllers", "/notifications"] {
        assert_eq!(
            api.page(path, &mine).await.status,
            StatusCode::FORBIDDEN,
            "{path}"
        );
    }
    api.stop().await;
}

async fn the_audit_chain_is_verified_with_progress(store: &Store) {
    let api = Api::new(store).await;
    busy(&api).await;
    api.first_walk_over().await;
    let csrf = api.csrf(&api.admin).await;
    let started = api
        .form("/audit/verify", Some(&api.admin), &[("csrf", &csrf)])
        .await;
    assert_eq!(started.status, StatusCode::SEE_OTHER, "{}", started.text);
    let deadline = Instant::now() + Duration::from_secs(20);
    let verdict = loop {
        let fragment = api.page("/audit/verify", &api.admin).await.text;
        // A walk asked for or running polls itself; a finished one stops.
        if !fragment.contains("hx-get") {
            break fragment;
        }
        assert!(Instant::now() < deadline, "the verification never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(verdict.contains("The chain is intact"), "{verdict}");
    assert!(
        verdict.contains("by <code>api_key:"),
        "the admin's own walk: {verdict}"
    );
    let log = api
        .page("/audit?action=agent.registered", &api.admin)
        .await
        .text;
    assert!(
        log.contains("agent.registered") && !log.contains("tenant.created"),
        "{log}"
    );
    api.stop().await;
}

async fn the_limits_page_shows_each_limit_its_busiest_keys_and_what_waits(store: &Store) {
    let api = Api::new(store).await;
    let empty = api.page("/limits", &api.admin).await;
    assert!(empty.text.contains("No limits"), "{}", empty.text);
    let (acme, tenant_key) = api.tenant("acme").await;
    let put = api
        .call(
            axum::http::Method::PUT,
            "/v1/limits/per-customer",
            Some(&api.admin),
            Some(json!({"max_running": 1, "key_from": "/customer"})),
        )
        .await;
    assert_eq!(put.status, StatusCode::CREATED, "{}", put.text);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            api.enqueue(
                &tenant_key,
                json!({"queue": "scans", "kind": "scan", "payload": {"customer": 42},
                       "limits": [{"limit": "per-customer"}]}),
            )
            .await,
        );
    }
    let page = api.page("/limits", &api.admin).await.text;
    for shown in [
        "id=\"limit-per-customer\"",
        "1 at once per key",
        "key from /customer",
        "keys each tenant's own",
        &format!("<code>42</code> <span class=\"muted\">of tenant <code>{acme}</code></span>"),
        "<span class=\"tag\">full</span>",
        "<dt>Waiting</dt><dd>2</dd>",
    ] {
        assert!(
            page.contains(shown),
            "the limits page lacks {shown:?}:\n{page}"
        );
    }
    // The overview counts the queue's jobs waiting for their limits, with a
    // link to them (the counts may be a moment behind: poll).
    let waiting = "<a href=\"/jobs?state=waiting&amp;queue=scans\">2</a>";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let overview = api.page("/", &api.admin).await.text;
        if overview.contains(waiting) {
            assert!(
                overview
                    .contains("<th class=\"n\" title=\"waiting for their limits\">Waiting</th>")
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the overview lacks {waiting:?}:\n{overview}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let job = api
        .page(&format!("/jobs/{}", ids[2]), &api.admin)
        .await
        .text;
    assert!(job.contains("st-waiting"), "{job}");
    assert!(
        job.contains("<dt>Waiting for</dt><dd class=\"limit\"><a href=\"/limits#limit-per-customer\">per-customer:42, 1 of 1 running</a></dd>"),
        "{job}"
    );
    // Tenants do not see limits (they span tenants).
    let tenant_page = api.page("/limits", &tenant_key).await;
    assert_eq!(
        tenant_page.status,
        StatusCode::FORBIDDEN,
        "{}",
        tenant_page.text
    );
    api.stop().await;
}

async fn the_workflow_page_draws_its_steps_and_links_their_jobs(store: &Store) {
    let api = Api::new(store).await;
    let empty = api.page("/workflows", &api.admin).await;
    assert!(empty.text.contains("No workflows"), "{}", empty.text);
    let (_, key) = api.tenant("acme").await;
    let made = api
        .post(
            "/v1/workflows",
            &key,
            json!({"name": "release", "steps": [
                {"name": "build", "job": {"queue": "ci", "kind": "build"}},
                {"name": "test", "job": {"queue": "ci", "kind": "test"}, "needs": ["build"]},
                {"name": "deploy", "job": {"queue": "ci", "kind": "deploy"}, "needs": ["test"]},
            ]}),
        )
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text);
    let id = made.body["id"].as_str().unwrap().to_owned();
    let build = made.body["steps"][0]["job_id"].as_str().unwrap().to_owned();
    let list = api.page("/workflows", &key).await.text;
    assert!(
        list.contains(&format!("href=\"/workflows/{id}\"")),
        "{list}"
    );
    assert!(list.contains("release"), "{list}");
    let page = api.page(&format!("/workflows/{id}"), &key).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    let page = page.text;
    for shown in [
        "<svg",
        "class=\"node node-queued\"",
        "class=\"node node-pending\"",
        "class=\"edge\"",
        &format!("href=\"/jobs/{build}\""),
    ] {
        assert!(
            page.contains(shown),
            "the workflow page lacks {shown:?}:\n{page}"
        );
    }
    // Two edges: build to test, test to deploy; the graph needs nothing
    // from elsewhere.
    assert_eq!(page.matches("class=\"edge\"").count(), 2);
    assert!(!page.contains("<script src=\"http"), "{page}");
    let job = api.page(&format!("/jobs/{build}"), &key).await.text;
    assert!(
        job.contains(&format!("<a href=\"/workflows/{id}\">step build</a>")),
        "{job}"
    );
    // Another tenant's workflow is not found.
    let (_, other) = api.tenant("globex").await;
    let hidden = api.page(&format!("/workflows/{id}"), &other).await;
    assert_eq!(hidden.status, StatusCode::NOT_FOUND);
}

on_both_backends!(
    the_workflow_page_draws_its_steps_and_links_their_jobs,
    the_limits_page_shows_each_limit_its_busiest_keys_and_what_waits,
    every_page_renders_on_an_empty_and_a_busy_store,
    signing_in_sets_an_http_only_strict_cookie,
    a_viewer_sees_everything_and_acts_on_nothing,
    a_form_without_its_csrf_token_is_refused,
    bulk_actions_preview_then_act_on_the_filtered_set,
    a_bulk_retry_goes_past_a_tenant_at_its_quota_and_says_so,
    a_tenant_key_sees_only_its_own_jobs,
    the_audit_chain_is_verified_with_progress,
);
