//! The hot path (enqueue, claim, heartbeat, completion) keeps its index
//! plans whatever the statistics and the plan cache say: a table that grew
//! after the store's statements were first prepared, and was never
//! analyzed, is still read through its indexes.

use homeostat_testkit::{self as backends, At, agent, at, completions, tenant};

use std::time::{Duration, Instant};

use homeostat_model::{NewJob, PlanTier};
use homeostat_store::{Completion, Store, StoreOptions};

/// How the jobs table has been read so far, as PostgreSQL counts it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Reads {
    seq_tup_read: i64,
    idx_tup_fetch: i64,
    updated: i64,
    inserted: i64,
}

async fn reads(admin: &sqlx::PgPool, schema: &str) -> Reads {
    let (seq_tup_read, idx_tup_fetch, updated, inserted): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT seq_tup_read, COALESCE(idx_tup_fetch, 0), n_tup_upd, n_tup_ins FROM pg_stat_user_tables
         WHERE schemaname = $1 AND relname = 'jobs'",
    )
    .bind(schema)
    .fetch_one(admin)
    .await
    .unwrap();
    Reads {
        seq_tup_read,
        idx_tup_fetch,
        updated,
        inserted,
    }
}

/// Backends publish their counters a moment after they go idle (up to
/// seconds later), all of a backend's at once: waits until `updated` row
/// updates and `inserted` inserts are counted, so that every read done
/// before them is counted too.
async fn reads_after(admin: &sqlx::PgPool, schema: &str, updated: i64, inserted: i64) -> Reads {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = reads(admin, schema).await;
        if r.updated >= updated && r.inserted >= inserted {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "table statistics never counted {updated} updates and {inserted} inserts: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_and_completions_keep_their_index_plans_on_a_grown_unanalyzed_table() {
    let Some(url) = backends::pg_url() else {
        return;
    };
    // One connection: every statement below is prepared, and executed more
    // than five times, on it.
    let options = StoreOptions {
        max_connections: 1,
        ..StoreOptions::default()
    };
    let test = backends::postgres_with(options).await.unwrap();
    let schema = test.schema().unwrap().to_owned();
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    let raw = backends::pg_pool(&url, &schema, 1).await;
    sqlx::query("ALTER TABLE jobs SET (autovacuum_enabled = false)")
        .execute(&raw)
        .await
        .unwrap();
    let store: &Store = &test;
    let tenant = tenant(store, "acme", PlanTier::Standard).await;
    let agent = agent(store, Some(tenant), &["q"]).await;

    // Warm the statements on a near-empty table: past five executions a
    // statement may switch to a generic plan made for this size.
    let lifecycle = |round: i64, batch: u32| async move {
        let claimed = store
            .at(at(round))
            .claim(agent, batch, Duration::from_secs(60))
            .await
            .unwrap();
        for c in &claimed {
            store
                .at(at(round))
                .heartbeat_job(agent, c.id, c.lease_token, Duration::from_secs(60))
                .await
                .unwrap();
        }
        let done: Vec<Completion> = completions(&claimed);
        let batch = store
            .at(at(round))
            .complete_batch(agent, &done)
            .await
            .unwrap();
        assert!(batch.stale.is_empty());
        claimed.len()
    };
    for round in 1..=8 {
        store
            .at(at(round))
            .enqueue(tenant, &NewJob::new("q", "build"))
            .await
            .unwrap();
        assert_eq!(lifecycle(round, 1).await, 1);
    }

    // Grow the table to 100,000 queued jobs without analyzing it.
    for chunk in 0..100 {
        let jobs: Vec<NewJob> = (0..1000).map(|_| NewJob::new("q", "build")).collect();
        store
            .at(at(100 + chunk))
            .enqueue_batch(tenant, &jobs)
            .await
            .unwrap();
    }
    let analyzed: Option<i64> = sqlx::query_scalar(
        "SELECT analyze_count + autoanalyze_count FROM pg_stat_user_tables
         WHERE schemaname = $1 AND relname = 'jobs'",
    )
    .bind(&schema)
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(analyzed, Some(0), "the table must stay unanalyzed");

    // The growth's own reads (hundreds of thousands of index fetches) are
    // published late: counted in `before` only once its inserts are.
    let before = reads_after(&admin, &schema, 3 * 8, 8 + 100_000).await;
    const ROUNDS: i64 = 5;
    for round in 0..ROUNDS {
        // An enqueue reads the queue's head and the tenant's last turn
        // (fair share): two index probes, not a scan of the 100,000.
        store
            .at(at(1000 + round))
            .enqueue(tenant, &NewJob::new("q", "build"))
            .await
            .unwrap();
        assert_eq!(lifecycle(1000 + round, 10).await, 10);
    }
    // Each job: claimed, heartbeated, completed.
    let after = reads_after(
        &admin,
        &schema,
        before.updated + ROUNDS * 10 * 3,
        before.inserted + ROUNDS,
    )
    .await;
    assert_eq!(
        after.seq_tup_read, before.seq_tup_read,
        "an enqueue, claim, heartbeat or completion scanned the jobs table"
    );
    let fetched = after.idx_tup_fetch - before.idx_tup_fetch;
    assert!(
        fetched < 2_000,
        "{fetched} rows fetched through indexes for {} jobs: the claims read the whole queue",
        ROUNDS * 10
    );
    admin.close().await;
    raw.close().await;
    test.cleanup().await;
}

/// Each statement of a job's life (enqueue, both shapes of claim, lease
/// extension, agents' heartbeats, completion) is planned a few times per
/// connection, then runs its cached plan. Planning a claim anew each time
/// cost a tenth of a millisecond a claim; the enqueue was planned anew on
/// every call, 0.8 ms of the database's time each (more than running it):
/// its custom plans, which see how long each array is, always looked
/// cheaper than a generic plan that guesses ten rows (docs/benchmarks.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_life_reuses_its_cached_plans() {
    if backends::pg_url().is_none() {
        return;
    }
    let options = StoreOptions {
        max_connections: 1,
        ..StoreOptions::default()
    };
    let test = backends::postgres_with(options).await.unwrap();
    let store: &Store = &test;
    let tenant = tenant(store, "acme", PlanTier::Standard).await;
    let one = agent(store, Some(tenant), &["q"]).await;
    let two = agent(store, Some(tenant), &["q", "r"]).await;
    let lease = Duration::from_secs(60);
    // Batches whose sizes, and claims whose limits, differ from call to call.
    for n in [1u32, 2, 3, 1, 2, 3, 1, 2, 3, 1] {
        let jobs: Vec<NewJob> = (0..2 * n).map(|_| NewJob::new("q", "build")).collect();
        store.enqueue_batch(tenant, &jobs).await.unwrap();
        for agent in [one, two] {
            let claimed = store.claim(agent, n, lease).await.unwrap();
            assert_eq!(claimed.len(), n as usize);
            let held: Vec<_> = claimed.iter().map(|c| (c.id, c.lease_token)).collect();
            let extended = store.heartbeat_jobs(agent, &held, lease).await.unwrap();
            assert!(extended.iter().all(|x| *x));
            store.heartbeat_agents(&[agent]).await.unwrap();
            store
                .complete_batch(agent, &completions(&claimed))
                .await
                .unwrap();
        }
    }
    let homeostat_store::PoolForTests::Postgres(pool) = store.pool_for_tests() else {
        unreachable!("a PostgreSQL test store")
    };
    let plans: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT regexp_replace(left(statement, 60), '\\s+', ' ', 'g'), generic_plans, custom_plans
         FROM pg_prepared_statements WHERE generic_plans + custom_plans >= 10",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let statements = |start: &str| plans.iter().filter(|p| p.0.starts_with(start)).count();
    assert!(statements("WITH tenant AS MATERIALIZED") == 1, "{plans:?}");
    let claims = statements("UPDATE jobs SET state = 'running'") + statements("WITH agent AS");
    assert!(claims == 2, "one per claim shape: {plans:?}");
    assert!(statements("UPDATE jobs SET") >= 3, "{plans:?}");
    assert!(statements("UPDATE agents") == 1, "{plans:?}");
    let replanned: Vec<_> = plans.iter().filter(|(_, _, custom)| *custom > 5).collect();
    assert!(
        replanned.is_empty(),
        "planned anew on each of 10 calls (statement, cached plan used, planned): {replanned:?}"
    );
    test.cleanup().await;
}
