//! The dashboard's pages at a million jobs, on PostgreSQL.
//!
//! `HOMEOSTAT_TEST_DATABASE_URL=postgres://… cargo bench -p homeostat-api
//!  --bench dashboard -- [--jobs N] [--runs N] [--backlog] [--agents N] [--exact]`
//!
//! Loads N jobs (default 1,000,000) in one statement, spread over the last
//! 24 hours as a busy control plane keeps them until retention: 95 %
//! succeeded, 2 % dead, 2.5 % queued over four queues, 0.3 % running on 50
//! agents, 0.2 % scheduled. With `--backlog`, every job is queued instead
//! (a backlog, the moment an operator looks at it). `--agents N` adds N
//! agents beside the 50 (a fleet, a tenth of them offline). `--exact`
//! counts the live jobs at every read however long that takes (what the
//! store did before it counted a large backlog behind the reads). Then renders
//! each page and `/metrics` through the router (store queries, templates;
//! no socket) `--runs` times and reports the median and the slowest, first
//! on the freshly loaded table (no ANALYZE: what a new database does before
//! autovacuum's first pass) and then after ANALYZE.

// Percentiles, rates and scaled sizes: float arithmetic on measured
// figures, converted back where a value cannot leave its range.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use homeostat_api::{ApiSettings, ApiState, router};
use homeostat_model::{ApiScope, NewAgent, PlanTier};
use homeostat_store::{NewBootstrapToken, Store, StoreClock, StoreOptions};
use http_body_util::BodyExt;
use tower::ServiceExt;

const PAGES: [&str; 9] = [
    "/",
    "/metrics",
    "/jobs",
    "/jobs?state=dead",
    "/jobs?state=awaiting_approval",
    "/jobs?queue=q1&state=queued",
    "/agents",
    "/audit",
    "/notifications",
];

/// One statement that writes `$1` jobs; ids are UUIDv7-shaped (time first)
/// so that "newest first" walks the primary key as it does in production.
const LOAD: &str = "
WITH a AS (SELECT array_agg(id ORDER BY id) AS ids FROM agents),
     g AS (SELECT n, (extract(epoch FROM now()) * 1000)::bigint - ($1 - n) * (86400000 / $1) AS t,
                  n % 1000 AS r
           FROM generate_series(1, $1) AS n)
INSERT INTO jobs (id, tenant_id, created_at, timeout_ms, priority, max_attempts, base_priority,
    effective_priority, run_at, queued_at, attempt, lease_token, updated_at, state, queue,
    lease_expires_at, started_at, finished_at, lease_agent, kind, payload, fingerprint,
    last_error, result)
SELECT (lpad(to_hex(t), 12, '0') || '7' || substr(md5(n::text), 1, 3) || '8'
        || substr(md5(n::text), 4, 15))::uuid,
    $2, t, 60000, 0, 3, 0, 0,
    CASE WHEN r >= 998 THEN t + 86400000 ELSE t END, t,
    CASE WHEN r < 970 OR r >= 995 THEN 1 ELSE 0 END, n, t,
    (CASE WHEN $3 THEN 'queued' WHEN r < 950 THEN 'succeeded' WHEN r < 970 THEN 'dead' WHEN r < 995 THEN 'queued'
          WHEN r < 998 THEN 'running' ELSE 'scheduled' END)::job_state,
    'q' || (n % 4),
    CASE WHEN r >= 995 AND r < 998 THEN t + 60000 END,
    CASE WHEN r < 970 OR (r >= 995 AND r < 998) THEN t END,
    CASE WHEN r < 970 THEN t + 1000 END,
    CASE WHEN r < 970 OR (r >= 995 AND r < 998) THEN a.ids[1 + n % 50] END,
    'build', '{\"repo\":\"web\",\"n\":' || n || '}', 'web@' || n,
    CASE WHEN r >= 950 AND r < 970 THEN 'exit 3: disk full' END,
    CASE WHEN r < 950 THEN '{\"ok\":true}' END
FROM g, a";

/// `$1` more agents, registered over the last day, every tenth offline.
const FLEET: &str = "
INSERT INTO agents (id, tenant_id, name, labels, queues, status, last_heartbeat_at, registered_at)
SELECT md5('agent' || n)::uuid, $2, 'fleet-' || n, '{}', ARRAY['q' || (n % 4)],
    CASE WHEN n % 10 = 0 THEN 'offline' ELSE 'online' END,
    (extract(epoch FROM now()) * 1000)::bigint - (n % 10) * 1000,
    (extract(epoch FROM now()) * 1000)::bigint - n * 1000
FROM generate_series(1, $1) AS n";

struct Args {
    jobs: i64,
    runs: usize,
    backlog: bool,
    agents: i64,
    exact: bool,
}

fn args() -> Args {
    let mut args = Args {
        jobs: 1_000_000,
        runs: 21,
        backlog: false,
        agents: 0,
        exact: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut number = |name: &str| it.next().and_then(|v| v.parse().ok()).expect(name);
        match flag.as_str() {
            "--jobs" => args.jobs = number("--jobs N"),
            "--runs" => args.runs = number("--runs N") as usize,
            "--agents" => args.agents = number("--agents N"),
            "--backlog" => args.backlog = true,
            "--exact" => args.exact = true,
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

async fn render(app: &axum::Router, path: &str, key: &str) -> Duration {
    let req = Request::get(path)
        .header("cookie", format!("homeostat_session={key}"))
        .body(Body::empty())
        .unwrap();
    let started = Instant::now();
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let took = started.elapsed();
    assert!(
        status.is_success(),
        "{path}: {status} {}",
        String::from_utf8_lossy(&body)
    );
    took
}

async fn measure(app: &axum::Router, key: &str, runs: usize, label: &str) {
    println!("{label}");
    println!("{:<32} {:>10} {:>10}", "page", "median ms", "max ms");
    for path in PAGES {
        for _ in 0..3 {
            render(app, path, key).await;
        }
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            times.push(render(app, path, key).await);
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{path:<32} {:>10.1} {:>10.1}",
            ms(times[runs / 2]),
            ms(times[runs - 1])
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Args {
        jobs,
        runs,
        backlog,
        agents,
        exact,
    } = args();
    let test = homeostat_testkit::postgres()
        .await
        .expect("HOMEOSTAT_TEST_DATABASE_URL for the dashboard benchmark");
    let url = homeostat_testkit::pg_url().unwrap();
    let schema = test.schema().unwrap().to_owned();
    let options = StoreOptions {
        clock: StoreClock::system(),
        cheap_count: if exact {
            Duration::MAX
        } else {
            StoreOptions::default().cheap_count
        },
        ..StoreOptions::default()
    };
    let store = Store::connect_postgres(homeostat_testkit::pg_connect(&url, &schema), options)
        .await
        .unwrap();
    let tenant = store
        .create_tenant("bench", PlanTier::Standard, "bench")
        .await
        .unwrap();
    let bootstrap = store
        .issue_bootstrap_token(
            &NewBootstrapToken {
                tenant_id: Some(tenant.id),
                ttl: Duration::from_secs(3600),
                uses: 50,
            },
            "bench",
        )
        .await
        .unwrap()
        .secret;
    for i in 0..50 {
        let agent = NewAgent {
            name: format!("agent-{i}"),
            labels: Default::default(),
            queues: vec![format!("q{}", i % 4)],
        };
        store.register_agent(&bootstrap, &agent).await.unwrap();
    }
    let key = store
        .issue_api_key(ApiScope::Admin, None, "bench")
        .await
        .unwrap()
        .secret;

    let pool = homeostat_testkit::pg_pool(&url, &schema, 1).await;
    let started = Instant::now();
    sqlx::query(LOAD)
        .bind(jobs)
        .bind(tenant.id.as_uuid())
        .bind(backlog)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(FLEET)
        .bind(agents)
        .bind(tenant.id.as_uuid())
        .execute(&pool)
        .await
        .unwrap();
    println!(
        "loaded {jobs} jobs and {agents} more agents in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let state = ApiState::new(
        store.clone(),
        ApiSettings::default(),
        None,
        Default::default(),
    );
    let app = router(state);
    measure(&app, &key, runs, "fresh table, no ANALYZE").await;
    sqlx::query("ANALYZE jobs, agents")
        .execute(&pool)
        .await
        .unwrap();
    measure(&app, &key, runs, "after ANALYZE").await;
    pool.close().await;
    store.close().await;
    test.cleanup().await;
}
