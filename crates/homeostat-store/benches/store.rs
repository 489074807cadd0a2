//! Store throughput and sweep latency, on SQLite and PostgreSQL.
//!
//! `cargo bench -p homeostat-store --bench store -- [--backend sqlite|postgres|both]
//!  [--jobs N] [--workers N] [--batch N] [--runs N] [--only store|baseline] [--sweep-rows N]
//!  [--skip-lifecycle] [--skip-sweeps] [--plans] [--cold | --steady [--producers N] |
//!  --limited KEYS | --slots-at-claim KEYS | --workflows] [--fair-share-turn-ms MS]`
//!
//! `--limited KEYS` pairs each lifecycle with one whose every job is under
//! a limit of 2 running per key over KEYS keys (docs/flow-control.md);
//! `--slots-at-claim KEYS` with a sketch of the other design, where a
//! claim takes its jobs' slots and no job is admitted first: plain jobs,
//! and beside each claim and completion a statement that takes and frees
//! their keys' slots (2 per key over KEYS keys) in a table of counters,
//! refusing a key that is full, as such a claim would;
//! `--workflows` with one whose jobs are workflow steps, in workflows of
//! 1,000: 500 pairs, the second of each needing the first
//! (docs/workflows.md).
//! `--cold` pairs each analyzed lifecycle with one on a table never
//! analyzed; `--steady` with one whose jobs producers (2 by default, so that
//! on two cores they enqueue faster than the workers drain) enqueue while
//! the workers drain them. Both replace the raw-SQL side of the pair.
//!
//! PostgreSQL comes from `HOMEOSTAT_TEST_DATABASE_URL`; every run uses a
//! fresh schema (dropped afterwards) and SQLite a fresh file.

// Percentiles, rates and scaled sizes: float arithmetic on measured
// figures, converted back where a value cannot leave its range.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use homeostat_model::{AgentId, Id, NewJob, PlanTier};
use homeostat_runtime::ManualClock;
use homeostat_store::{
    Ageing, Completion, JobRetention, NewBootstrapToken, PoolForTests, Store, StoreClock,
    StoreOptions,
};
use jiff::{SignedDuration, Timestamp};
use sqlx::AssertSqlSafe;

struct Args {
    backends: Vec<&'static str>,
    jobs: usize,
    workers: usize,
    sweep_rows: Vec<usize>,
    lifecycle: bool,
    sweeps: bool,
    plans: bool,
    batches: Vec<u32>,
    runs: usize,
    /// Run only one side of the lifecycle pair (for profiling one of them).
    only: Option<String>,
    /// Compare the analyzed lifecycle with a cold or steady one instead of
    /// with the raw-SQL baseline.
    against: Option<Load>,
    /// Producer tasks of the steady load.
    producers: usize,
    /// Compare the lifecycle with jobs of another shape (under limits, in
    /// workflows) instead of with the raw-SQL baseline.
    shape: Shape,
    /// Fair share's turn (`StoreOptions::fair_share_turn`); 0 turns it off.
    fair_share_turn: Duration,
}

/// Single-job enqueues the store bench times one after another.
const SINGLE_ENQUEUES: usize = 3_000;

fn args() -> Args {
    let mut a = Args {
        backends: vec!["sqlite", "postgres"],
        jobs: 100_000,
        workers: 8,
        sweep_rows: vec![100_000, 1_000_000],
        lifecycle: true,
        sweeps: true,
        plans: false,
        batches: vec![10, 100],
        runs: 5,
        only: None,
        against: None,
        producers: 2,
        shape: Shape::Plain,
        fair_share_turn: StoreOptions::default().fair_share_turn,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--backend" => {
                a.backends = match it.next().as_deref() {
                    Some("sqlite") => vec!["sqlite"],
                    Some("postgres") => vec!["postgres"],
                    _ => vec!["sqlite", "postgres"],
                }
            }
            "--jobs" => a.jobs = it.next().and_then(|v| v.parse().ok()).expect("--jobs N"),
            "--workers" => a.workers = it.next().and_then(|v| v.parse().ok()).expect("--workers N"),
            "--sweep-rows" => {
                a.sweep_rows = vec![
                    it.next()
                        .and_then(|v| v.parse().ok())
                        .expect("--sweep-rows N"),
                ]
            }
            "--batch" => {
                a.batches = vec![it.next().and_then(|v| v.parse().ok()).expect("--batch N")]
            }
            "--runs" => a.runs = it.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--only" => a.only = it.next().filter(|v| v == "store" || v == "baseline"),
            "--skip-lifecycle" => a.lifecycle = false,
            "--skip-sweeps" => a.sweeps = false,
            "--plans" => a.plans = true,
            "--limited" => {
                a.shape = Shape::Limited(
                    it.next()
                        .and_then(|v| v.parse().ok())
                        .expect("--limited KEYS"),
                )
            }
            "--slots-at-claim" => {
                a.shape = Shape::SlotsAtClaim(
                    it.next()
                        .and_then(|v| v.parse().ok())
                        .expect("--slots-at-claim KEYS"),
                )
            }
            "--workflows" => a.shape = Shape::Workflows,
            "--fair-share-turn-ms" => {
                a.fair_share_turn = Duration::from_millis(
                    it.next()
                        .and_then(|v| v.parse().ok())
                        .expect("--fair-share-turn-ms MS"),
                )
            }
            "--cold" => a.against = Some(Load::Cold),
            "--steady" => a.against = Some(Load::Steady),
            "--producers" => {
                a.producers = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--producers N")
            }
            _ => {}
        }
    }
    a
}

/// A fresh database and how to drop it.
struct Db {
    store: Store,
    url: String,
    schema: Option<String>,
}

/// A fresh database whose store runs on `clock`: the system clock for the
/// lifecycle (as in production), a manual one for the sweeps, whose rows
/// are seeded at fixed times.
async fn fresh(backend: &str, clock: StoreClock, fair_share_turn: Duration) -> Db {
    let options = StoreOptions {
        max_connections: 16,
        clock,
        fair_share_turn,
        ..StoreOptions::default()
    };
    match backend {
        "sqlite" => {
            let path =
                std::env::temp_dir().join(format!("homeostat-bench-{}.db", Id::now_v7().simple()));
            let url = format!("sqlite:{}", path.display());
            Db {
                store: Store::connect(&url, options).await.unwrap(),
                url: path.display().to_string(),
                schema: None,
            }
        }
        _ => {
            let url = std::env::var("HOMEOSTAT_TEST_DATABASE_URL")
                .expect("HOMEOSTAT_TEST_DATABASE_URL for the PostgreSQL benchmark");
            let schema = format!("hs_bench_{}", Id::now_v7().simple());
            let admin = sqlx::PgPool::connect(&url).await.unwrap();
            sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                .execute(&admin)
                .await
                .unwrap();
            admin.close().await;
            let connect = url
                .parse::<sqlx::postgres::PgConnectOptions>()
                .unwrap()
                .options([("search_path", schema.as_str())]);
            Db {
                store: Store::connect_postgres(connect, options).await.unwrap(),
                url,
                schema: Some(schema),
            }
        }
    }
}

impl Db {
    async fn drop_all(self) {
        self.store.close().await;
        match self.schema {
            Some(schema) => {
                let admin = sqlx::PgPool::connect(&self.url).await.unwrap();
                sqlx::query(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                    .execute(&admin)
                    .await
                    .unwrap();
                admin.close().await;
            }
            None => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", self.url));
                }
            }
        }
    }

    async fn exec(&self, sql: String) {
        self.store.pool_for_tests().execute(&sql).await.unwrap();
    }

    async fn plan(&self, sql: &str) -> String {
        let rows: Vec<String> = match self.store.pool_for_tests() {
            PoolForTests::Sqlite(pool) => {
                let rows: Vec<(i64, i64, i64, String)> =
                    sqlx::query_as(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                        .fetch_all(pool)
                        .await
                        .unwrap();
                rows.into_iter().map(|r| r.3).collect()
            }
            PoolForTests::Postgres(pool) => {
                sqlx::query_scalar(AssertSqlSafe(format!("EXPLAIN (COSTS OFF) {sql}")))
                    .fetch_all(pool)
                    .await
                    .unwrap()
            }
        };
        rows.join("\n")
    }
}

fn t0() -> Timestamp {
    Timestamp::from_second(1_767_225_600).unwrap()
}

fn at(secs: i64) -> Timestamp {
    t0() + SignedDuration::from_secs(secs)
}

async fn platform_agents(db: &Db, n: usize) -> Vec<AgentId> {
    let token = db
        .store
        .issue_bootstrap_token(
            &NewBootstrapToken {
                tenant_id: None,
                ttl: Duration::from_secs(3600),
                uses: n as u32,
            },
            "bench",
        )
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..n {
        let (agent, _) = db
            .store
            .register_agent(
                &token.secret,
                &homeostat_model::NewAgent {
                    name: format!("worker-{i}"),
                    labels: Default::default(),
                    queues: vec!["bench".into()],
                },
            )
            .await
            .unwrap();
        ids.push(agent.id);
    }
    ids
}

/// How the jobs meet the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    /// Enqueued first, then `VACUUM ANALYZE` (as the baseline's table is,
    /// and as autovacuum would after a bulk load), then drained.
    Analyzed,
    /// Enqueued first, never analyzed (autovacuum off), then drained.
    Cold,
    /// Enqueued by a producer in the same process while the workers drain,
    /// faster than they can: a table that grows as it is drained.
    Steady,
}

/// What the jobs of a lifecycle are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Independent jobs.
    Plain,
    /// Every job under a limit of 2 running per key over this many keys.
    Limited(usize),
    /// Plain jobs, with the writes of slots taken at claim over this many
    /// keys beside each claim and completion (a sketch of that design).
    SlotsAtClaim(usize),
    /// Workflow steps: workflows of 1,000, 500 pairs whose second needs
    /// its first.
    Workflows,
}

impl Shape {
    fn describe(self) -> String {
        match self {
            Shape::Plain => "plain".into(),
            Shape::Limited(keys) => format!("limited (2 per key, {keys} keys)"),
            Shape::SlotsAtClaim(keys) => {
                format!("slots taken at claim (sketch, 2 per key, {keys} keys)")
            }
            Shape::Workflows => "in workflows (pairs, 1,000 a workflow)".into(),
        }
    }
}

/// The full lifecycle through the store's API: jobs per second drained,
/// and the batch enqueue rate.
async fn lifecycle(
    db: &Db,
    jobs: usize,
    workers: usize,
    batch: u32,
    load: Load,
    producers: usize,
    shape: Shape,
) -> (Run, f64) {
    if matches!(shape, Shape::Limited(_)) {
        let two = homeostat_model::LimitSpec {
            max_running: Some(2),
            ..Default::default()
        };
        db.store.set_limit("per-key", &two, "bench").await.unwrap();
    }
    let slots = match shape {
        Shape::SlotsAtClaim(keys) => Some(Arc::new(SlotCounters::create(db, keys).await)),
        _ => None,
    };
    let tenant = db
        .store
        .create_tenant("bench", PlanTier::Standard, "bench")
        .await
        .unwrap();
    let agents = platform_agents(db, workers).await;
    if db.store.backend() == "postgres" {
        db.exec("ALTER TABLE jobs SET (autovacuum_enabled = false)".into())
            .await;
    }
    let enqueue = {
        let store = db.store.clone();
        move |chunk: usize, total: usize| {
            let store = store.clone();
            async move {
                let new: Vec<NewJob> = (0..chunk)
                    .map(|i| {
                        let mut job = NewJob::new("bench", "noop");
                        if let Shape::Limited(keys) = shape {
                            job.limits = vec![homeostat_model::JobLimit::new(
                                "per-key",
                                (i % keys).to_string(),
                            )];
                        }
                        job
                    })
                    .collect();
                let start = Instant::now();
                if shape == Shape::Workflows {
                    let steps: Vec<homeostat_model::NewStep> = (0..chunk)
                        .map(|i| homeostat_model::NewStep {
                            name: format!("s{i}"),
                            job: NewJob::new("bench", "noop"),
                            needs: if i % 2 == 1 {
                                vec![format!("s{}", i - 1)]
                            } else {
                                vec![]
                            },
                            when: homeostat_model::StepCondition::OnSuccess,
                        })
                        .collect();
                    let workflow = homeostat_model::NewWorkflow {
                        name: "bench".into(),
                        steps,
                    };
                    assert!(total.is_multiple_of(chunk), "whole workflows");
                    for _ in 0..total / chunk {
                        store
                            .submit_workflow(tenant.id, &workflow, "bench")
                            .await
                            .unwrap();
                    }
                    return total as f64 / start.elapsed().as_secs_f64();
                }
                for _ in 0..total / chunk {
                    store.enqueue_batch(tenant.id, &new).await.unwrap();
                }
                if !total.is_multiple_of(chunk) {
                    store
                        .enqueue_batch(tenant.id, &new[..total % chunk])
                        .await
                        .unwrap();
                }
                total as f64 / start.elapsed().as_secs_f64()
            }
        }
    };
    let mut enqueue_rate = f64::NAN;
    match load {
        Load::Analyzed | Load::Cold => {
            enqueue_rate = enqueue(1000, jobs).await;
            if load == Load::Analyzed {
                match db.store.backend() {
                    "postgres" => db.exec("VACUUM ANALYZE jobs".into()).await,
                    _ => db.exec("ANALYZE".into()).await,
                }
            }
        }
        Load::Steady => {}
    }
    let producing = Arc::new(std::sync::atomic::AtomicBool::new(load == Load::Steady));
    // Under limits an empty claim does not mean the queue is drained: jobs
    // wait to be admitted as slots free.
    let completed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let cpu_before = process_cpu_secs();
    let timed = Timed::start(db).await;
    let producer = (load == Load::Steady).then(|| {
        let producing = Arc::clone(&producing);
        let enqueue = enqueue.clone();
        tokio::spawn(async move {
            // Several producers, each enqueueing its share: one alone, on
            // two cores shared with the workers and PostgreSQL, enqueues no
            // faster than they drain, and the run would measure it instead.
            let n = producers.max(1);
            let start = Instant::now();
            let tasks: Vec<_> = (0..n)
                .map(|i| {
                    let share = jobs / n + if i == 0 { jobs % n } else { 0 };
                    tokio::spawn(enqueue.clone()(1000, share))
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            producing.store(false, std::sync::atomic::Ordering::Release);
            jobs as f64 / start.elapsed().as_secs_f64()
        })
    });
    let mut tasks = Vec::new();
    for agent in agents {
        let store = db.store.clone();
        let producing = Arc::clone(&producing);
        let completed = Arc::clone(&completed);
        let slots = slots.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0usize;
            let (mut in_claim, mut in_complete) = (Duration::ZERO, Duration::ZERO);
            let mut waiter = None;
            loop {
                // Read before the claim: an empty claim after the producer
                // finished means the queue is drained.
                let still_producing = producing.load(std::sync::atomic::Ordering::Acquire);
                let t = Instant::now();
                let claimed = store
                    .claim(agent, batch, Duration::from_secs(300))
                    .await
                    .unwrap();
                in_claim += t.elapsed();
                if claimed.is_empty() {
                    // Under limits or needs, an empty claim does not mean
                    // the rest is drained: it is admitted or released as
                    // jobs finish.
                    let admitting = matches!(shape, Shape::Limited(_) | Shape::Workflows)
                        && completed.load(std::sync::atomic::Ordering::Acquire) < jobs;
                    if admitting {
                        // As an agent's long poll (src/long_poll.rs in the
                        // API): wait for a wake-up, begun before a second
                        // look so that none is missed. Spinning on empty
                        // claims took the cores admission needs (limited
                        // jobs 1.28x a second at batch 100 without it).
                        // The bound only guards a lost wake-up.
                        match waiter.take() {
                            None => {
                                waiter =
                                    Some(store.queued_waiter(agent, None, batch).await.unwrap());
                            }
                            Some(mut w) => {
                                let _ =
                                    tokio::time::timeout(Duration::from_millis(20), w.changed())
                                        .await;
                            }
                        }
                        continue;
                    }
                    if still_producing {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                    if std::env::var_os("HOMEOSTAT_BENCH_SPLIT").is_some() {
                        eprintln!("worker: claim {in_claim:?}, complete {in_complete:?}");
                    }
                    return done;
                }
                waiter = None;
                let completions: Vec<Completion> = claimed
                    .iter()
                    .map(|c| Completion {
                        id: c.id,
                        lease_token: c.lease_token,
                        result: None,
                    })
                    .collect();
                let granted = match &slots {
                    Some(slots) => slots.take(&claimed).await,
                    None => Vec::new(),
                };
                let t = Instant::now();
                let batch = store.complete_batch(agent, &completions).await.unwrap();
                in_complete += t.elapsed();
                if let Some(slots) = &slots {
                    slots.free(granted).await;
                }
                done += batch.completed.len();
                completed.fetch_add(batch.completed.len(), std::sync::atomic::Ordering::AcqRel);
            }
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await.unwrap();
    }
    if let Some(producer) = producer {
        enqueue_rate = producer.await.unwrap();
    }
    let run = timed.finish(db, jobs).await;
    if let Some(slots) = slots {
        slots.report().await;
    }
    if std::env::var_os("HOMEOSTAT_BENCH_SPLIT").is_some() {
        eprintln!(
            "client CPU: {:.2} s for {:.2} s of wall time",
            process_cpu_secs() - cpu_before,
            jobs as f64 / run.rate
        );
    }
    assert_eq!(done, jobs, "every job completed once");
    (run, enqueue_rate)
}

/// One lifecycle run: jobs per second and, on PostgreSQL, WAL bytes per job.
struct Run {
    rate: f64,
    wal_per_job: Option<f64>,
}

impl Run {
    /// The side `--only` left out.
    fn skipped() -> Run {
        Run {
            rate: f64::NAN,
            wal_per_job: None,
        }
    }

    fn wal(&self) -> String {
        self.wal_per_job
            .map(|b| format!(" ({b:.0} B of WAL a job)"))
            .unwrap_or_default()
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The WAL position in bytes (PostgreSQL), to count what a run wrote.
async fn wal_position(db: &Db) -> Option<i64> {
    match db.store.pool_for_tests() {
        PoolForTests::Sqlite(_) => None,
        PoolForTests::Postgres(pool) => Some(
            sqlx::query_scalar("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")
                .fetch_one(pool)
                .await
                .unwrap(),
        ),
    }
}

/// A timed phase: its start, the WAL position then (PostgreSQL), and the
/// profiler switched on for it.
struct Timed {
    start: Instant,
    wal_start: Option<i64>,
}

impl Timed {
    async fn start(db: &Db) -> Timed {
        let wal_start = wal_position(db).await;
        perf_ctl("enable");
        Timed {
            start: Instant::now(),
            wal_start,
        }
    }

    /// Ends the phase after `jobs` jobs: their rate and WAL a job.
    async fn finish(self, db: &Db, jobs: usize) -> Run {
        let rate = jobs as f64 / self.start.elapsed().as_secs_f64();
        perf_ctl("disable");
        let wal_end = wal_position(db).await;
        if let (Some(a), Some(b), Some(_)) = (
            self.wal_start,
            wal_end,
            std::env::var_os("HOMEOSTAT_BENCH_SPLIT"),
        ) {
            // For pg_walinspect: pg_get_wal_stats(lsn(a), lsn(b), true).
            let lsn = |p: i64| format!("{:X}/{:X}", p >> 32, p & 0xffff_ffff);
            eprintln!("WAL of the timed phase: {} to {}", lsn(a), lsn(b));
        }
        Run {
            rate,
            wal_per_job: self
                .wal_start
                .zip(wal_end)
                .map(|(a, b)| (b - a) as f64 / jobs as f64),
        }
    }
}

/// Switches a `perf record --control fifo:PATH -D -1` on or off around a
/// timed phase, when `HOMEOSTAT_BENCH_PERF_FIFO` names that fifo, so a
/// profile holds the timed phase alone.
fn perf_ctl(command: &str) {
    if let Some(path) = std::env::var_os("HOMEOSTAT_BENCH_PERF_FIFO") {
        std::fs::write(path, format!("{command}\n")).expect("writing to the perf control fifo");
    }
}

/// CPU time (user + system) of this process so far, from /proc (Linux).
fn process_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}

/// A table `name` of slot counters, 2 per key for `keys` keys (0 to
/// `keys - 1`), for the sketches of `--slots-at-claim`. Room is left on
/// each page, so that a counter's update stays on its page and touches no
/// index (a HOT update).
fn slot_table(name: &str, keys: usize) -> String {
    format!(
        "CREATE TABLE {name} (key BIGINT PRIMARY KEY, running INT NOT NULL,
           max_running INT NOT NULL) WITH (fillfactor = 50);
         INSERT INTO {name} SELECT i, 0, 2 FROM generate_series(0, {keys} - 1) i;"
    )
}

/// The CTEs that take (`take`: only where the key has room) or give back
/// the slots counted in a CTE `k(key, n)` from table `name`, as CTE `t`
/// returning each key changed and its `n`. The counters are locked in key
/// order first, so that two statements never wait for each other's.
fn slot_update(name: &str, take: bool) -> String {
    let (sign, room) = if take {
        ('+', " AND s.running + k.n <= s.max_running")
    } else {
        ('-', "")
    };
    format!(
        "l AS (SELECT s.key FROM {name} s JOIN k ON s.key = k.key ORDER BY s.key FOR UPDATE),
         t AS (UPDATE {name} s SET running = s.running {sign} k.n FROM k, l
               WHERE s.key = k.key AND l.key = k.key{room}
               RETURNING s.key, k.n)"
    )
}

/// The slots of the sketch of `--slots-at-claim`: one counter row per key,
/// taken beside each claim and freed beside each completion, as a claim
/// that admits its own jobs would (in its own statement there).
struct SlotCounters {
    pool: sqlx::PgPool,
    keys: i64,
    /// Jobs whose key was full when claimed: that design would have set
    /// them aside until their key had room.
    refused: std::sync::atomic::AtomicUsize,
}

impl SlotCounters {
    async fn create(db: &Db, keys: usize) -> SlotCounters {
        let PoolForTests::Postgres(pool) = db.store.pool_for_tests() else {
            panic!("--slots-at-claim sketches the PostgreSQL claim only");
        };
        sqlx::raw_sql(AssertSqlSafe(slot_table("bench_slots", keys)))
            .execute(pool)
            .await
            .unwrap();
        sqlx::raw_sql("VACUUM ANALYZE bench_slots")
            .execute(pool)
            .await
            .unwrap();
        SlotCounters {
            pool: pool.clone(),
            keys: keys as i64,
            refused: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Takes the claimed jobs' slots (each job's key drawn from its id);
    /// the keys taken and how many each.
    async fn take(&self, claimed: &[homeostat_store::ClaimedJob]) -> Vec<(i64, i32)> {
        let ids: Vec<String> = claimed.iter().map(|c| c.id.to_string()).collect();
        let granted: Vec<(i64, i32)> = sqlx::query_as(AssertSqlSafe(format!(
            "WITH k AS (
               SELECT abs(hashtext(id)::bigint) % $2 AS key, count(*)::int AS n
               FROM unnest($1::text[]) AS id GROUP BY 1),
             {}
             SELECT key, n FROM t",
            slot_update("bench_slots", true)
        )))
        .bind(&ids)
        .bind(self.keys)
        .fetch_all(&self.pool)
        .await
        .unwrap();
        let taken: usize = granted.iter().map(|(_, n)| *n as usize).sum();
        self.refused
            .fetch_add(claimed.len() - taken, std::sync::atomic::Ordering::Relaxed);
        granted
    }

    async fn free(&self, granted: Vec<(i64, i32)>) {
        let (keys, counts): (Vec<i64>, Vec<i32>) = granted.into_iter().unzip();
        sqlx::query(AssertSqlSafe(format!(
            "WITH k AS (SELECT * FROM unnest($1::bigint[], $2::int[]) AS k(key, n)),
             {}
             SELECT count(*) FROM t",
            slot_update("bench_slots", false)
        )))
        .bind(&keys)
        .bind(&counts)
        .execute(&self.pool)
        .await
        .unwrap();
    }

    async fn report(&self) {
        let held: i64 = sqlx::query_scalar("SELECT COALESCE(SUM(running), 0) FROM bench_slots")
            .fetch_one(&self.pool)
            .await
            .unwrap();
        assert_eq!(held, 0, "every slot taken was freed");
        println!(
            "  slots at claim: {} jobs found their key full",
            self.refused.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
}

/// The minimal claim and complete statements on a bare table; with
/// `slots: Some(keys)` (PostgreSQL), the claim also takes each job's slot
/// of its key (2 per key, the job's id modulo `keys`) in a table of
/// counters, refusing a full key, and the completion frees it, inside
/// those two statements: what slots taken at claim would add to them.
async fn baseline(db: &Db, jobs: usize, workers: usize, batch: u32, slots: Option<usize>) -> Run {
    match db.store.pool_for_tests() {
        PoolForTests::Sqlite(read) => {
            assert!(slots.is_none(), "slots at claim are sketched on PostgreSQL");
            // A single write connection, as the store writes through.
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(read.connect_options().as_ref().clone())
                .await
                .unwrap();
            sqlx::raw_sql(
                "CREATE TABLE bare (id INTEGER PRIMARY KEY, state TEXT NOT NULL, payload TEXT NOT NULL);
                 CREATE INDEX bare_queued ON bare (id) WHERE state = 'queued';",
            )
            .execute(&pool)
            .await
            .unwrap();
            sqlx::query(AssertSqlSafe(format!(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {jobs})
                 INSERT INTO bare (state, payload) SELECT 'queued', 'null' FROM n"
            )))
            .execute(&pool)
            .await
            .unwrap();
            let timed = Timed::start(db).await;
            let mut tasks = Vec::new();
            for _ in 0..workers {
                let pool = pool.clone();
                tasks.push(tokio::spawn(async move {
                    let mut done = 0;
                    loop {
                        // Single statements in autocommit, as the store runs them.
                        let ids: Vec<i64> = sqlx::query_scalar(
                            "UPDATE bare SET state = 'running' WHERE id IN
                               (SELECT id FROM bare WHERE state = 'queued' ORDER BY id LIMIT CAST(? AS INTEGER))
                             RETURNING id",
                        )
                        .bind(i64::from(batch))
                        .fetch_all(&pool)
                        .await
                        .unwrap();
                        if ids.is_empty() {
                            return done;
                        }
                        sqlx::query(
                            "UPDATE bare SET state = 'done' WHERE id IN (SELECT value FROM json_each(?))",
                        )
                        .bind(serde_json::to_string(&ids).unwrap())
                        .execute(&pool)
                        .await
                        .unwrap();
                        done += ids.len();
                    }
                }));
            }
            let mut done = 0;
            for t in tasks {
                done += t.await.unwrap();
            }
            let run = timed.finish(db, jobs).await;
            assert_eq!(done, jobs);
            run
        }
        PoolForTests::Postgres(pool) => {
            let pool = pool.clone();
            sqlx::raw_sql(AssertSqlSafe(format!(
                "CREATE TABLE bare (id BIGSERIAL PRIMARY KEY, state TEXT NOT NULL, payload TEXT NOT NULL);
                 CREATE INDEX bare_queued ON bare (id) WHERE state = 'queued';
                 {}
                 INSERT INTO bare (state, payload) SELECT 'queued', 'null' FROM generate_series(1, {jobs});",
                slot_table("slots", slots.unwrap_or(0))
            )))
            .execute(&pool)
            .await
            .unwrap();
            sqlx::raw_sql("VACUUM ANALYZE bare, slots")
                .execute(&pool)
                .await
                .unwrap();
            let (claim, complete) = match slots {
                None => (
                    "UPDATE bare SET state = 'running' WHERE id IN
                       (SELECT id FROM bare WHERE state = 'queued' ORDER BY id LIMIT $1
                        FOR UPDATE SKIP LOCKED)
                     RETURNING id"
                        .to_owned(),
                    "UPDATE bare SET state = 'done' WHERE id = ANY($1)".to_owned(),
                ),
                // A job whose key is full is left queued.
                Some(keys) => (
                    format!(
                        "WITH c AS (SELECT id, id % {keys} AS key FROM bare WHERE state = 'queued'
                                    ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED),
                         k AS (SELECT key, count(*)::int AS n FROM c GROUP BY key),
                         {}
                         UPDATE bare SET state = 'running' FROM c
                         WHERE bare.id = c.id AND c.key IN (SELECT key FROM t)
                         RETURNING bare.id",
                        slot_update("slots", true)
                    ),
                    format!(
                        "WITH d AS (UPDATE bare SET state = 'done' WHERE id = ANY($1)
                                    RETURNING id % {keys} AS key),
                         k AS (SELECT key, count(*)::int AS n FROM d GROUP BY key),
                         {}
                         SELECT count(*) FROM t",
                        slot_update("slots", false)
                    ),
                ),
            };
            let sql = Arc::new((claim, complete));
            let timed = Timed::start(db).await;
            let mut tasks = Vec::new();
            for _ in 0..workers {
                let pool = pool.clone();
                let sql = Arc::clone(&sql);
                tasks.push(tokio::spawn(async move {
                    let (claim, complete) = (sql.0.as_str(), sql.1.as_str());
                    let mut done = 0;
                    loop {
                        let ids: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(claim))
                            .bind(i64::from(batch))
                            .fetch_all(&pool)
                            .await
                            .unwrap();
                        if ids.is_empty() {
                            // Under slots, an empty claim may only have met
                            // full keys.
                            let queued: bool = sqlx::query_scalar(
                                "SELECT EXISTS (SELECT 1 FROM bare WHERE state = 'queued')",
                            )
                            .fetch_one(&pool)
                            .await
                            .unwrap();
                            if slots.is_none() || !queued {
                                return done;
                            }
                            continue;
                        }
                        sqlx::query(AssertSqlSafe(complete))
                            .bind(&ids)
                            .execute(&pool)
                            .await
                            .unwrap();
                        done += ids.len();
                    }
                }));
            }
            let mut done = 0;
            for t in tasks {
                done += t.await.unwrap();
            }
            let run = timed.finish(db, jobs).await;
            assert_eq!(done, jobs);
            run
        }
    }
}

/// The bare claim and completion with and without slots taken in their
/// own statements, one run each: what such slots cost a job, and the ratio
/// that cost predicts for the store, whose plain jobs ran at `store_rate`
/// in this run.
async fn slots_in_the_claim(backend: &str, args: &Args, batch: u32, keys: usize, store_rate: f64) {
    let mut rates = Vec::new();
    for slots in [None, Some(keys)] {
        let db = fresh(backend, StoreClock::system(), args.fair_share_turn).await;
        rates.push(
            baseline(&db, args.jobs, args.workers, batch, slots)
                .await
                .rate,
        );
        db.drop_all().await;
    }
    let extra_us = (1.0 / rates[1] - 1.0 / rates[0]) * 1e6;
    println!(
        "  bare claim {:.0} jobs/s, with slots in its statements {:.0} jobs/s: {extra_us:.1} µs a job more, \
         which on the store's plain {store_rate:.0} jobs/s predicts a ratio of {:.2}",
        rates[0],
        rates[1],
        1.0 / (1.0 + extra_us * 1e-6 * store_rate)
    );
}

/// UUID v7 text for an id created at `ms` (SQL expression over row number `i`).
fn v7(db: &Db, ms: i64, salt: &str) -> String {
    let (hi, lo) = (ms >> 16, ms & 0xffff);
    match db.store.pool_for_tests() {
        PoolForTests::Sqlite(_) => format!("printf('%08x-%04x-7000-{salt}-%012x', {hi}, {lo}, i)"),
        PoolForTests::Postgres(_) => format!(
            "(lpad(to_hex({hi}), 8, '0') || '-' || lpad(to_hex({lo}), 4, '0') || '-7000-{salt}-' || lpad(to_hex(i), 12, '0'))::uuid"
        ),
    }
}

fn series(db: &Db, n: usize) -> String {
    match db.store.pool_for_tests() {
        PoolForTests::Sqlite(_) => format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) SELECT i FROM n"
        ),
        PoolForTests::Postgres(_) => format!("SELECT i FROM generate_series(1, {n}) AS g(i)"),
    }
}

/// Fills the jobs table to `rows` jobs that no sweep wants (finished just
/// now), then makes 1,000 rows eligible for each sweep. Ids carry their
/// creation time, as real ones do.
async fn seed_sweeps(db: &Db, rows: usize) {
    let tenant = db
        .store
        .create_tenant("sweeps", PlanTier::Free, "bench")
        .await
        .unwrap();
    let tid = match db.store.pool_for_tests() {
        PoolForTests::Sqlite(_) => format!("'{}'", tenant.id),
        PoolForTests::Postgres(_) => format!("'{}'::uuid", tenant.id),
    };
    let now = at(0).as_millisecond();
    let month_ago = now - 30 * 86_400_000;
    let insert = |id: String, created: i64, n: usize| {
        format!(
            "INSERT INTO jobs (id, tenant_id, queue, kind, payload, priority, base_priority,
               effective_priority, state, attempt, max_attempts, timeout_ms, run_at, queued_at,
               deadline_at, lease_token, created_at, updated_at, finished_at)
             SELECT {id}, {tid}, 'bench', 'noop', 'null', 0, 0, 0, 'succeeded', 1, 3, 3600000,
               {created}, {created}, {created} + 3600000, 1, {created}, {now}, {now}
             FROM ({}) AS s",
            series(db, n)
        )
    };
    db.exec(insert(v7(db, now, "8000"), now, rows - 1000)).await;
    // Finished a month ago: past every retention.
    db.exec(insert(v7(db, month_ago, "a000"), month_ago, 1000))
        .await;
    db.exec(format!(
        "UPDATE jobs SET finished_at = {month_ago}, updated_at = {month_ago} WHERE created_at = {month_ago}"
    ))
    .await;
    platform_agents(db, 1).await;
    let eligible = [
        "state = 'running', lease_expires_at = {now} - 1000, timeout_at = {now} + 3600000, finished_at = NULL",
        "state = 'running', lease_expires_at = {now} + 3600000, timeout_at = {now} - 1000, finished_at = NULL",
        "state = 'scheduled', run_at = {now} - 1000, finished_at = NULL",
        "state = 'queued', attempt = 0, deadline_at = {now} - 1000, finished_at = NULL",
        "state = 'awaiting_approval', approval_expires_at = {now} - 1000, finished_at = NULL",
    ];
    for (k, set) in eligible.iter().enumerate() {
        let set = set.replace("{now}", &now.to_string());
        let offset = k * (rows / 6).max(1000);
        db.exec(format!(
            "UPDATE jobs SET {set} WHERE id IN (SELECT id FROM jobs WHERE state = 'succeeded'
               AND finished_at = {now} ORDER BY id LIMIT 1000 OFFSET {offset})"
        ))
        .await;
    }
    if db.store.backend() == "postgres" {
        db.exec("VACUUM ANALYZE jobs".into()).await;
    } else {
        db.exec("ANALYZE".into()).await;
    }
}

async fn sweeps(db: &Db, rows: usize, plans: bool) -> Vec<(&'static str, f64, u64)> {
    seed_sweeps(db, rows).await;
    let now = at(0);
    let s = &db.store;
    let clock = s
        .options()
        .clock
        .as_manual()
        .expect("the sweeps run on a manual clock");
    let mut out = Vec::new();
    macro_rules! time {
        ($name:literal, $call:expr) => {{
            let start = Instant::now();
            let changed = $call;
            out.push(($name, start.elapsed().as_secs_f64() * 1000.0, changed));
        }};
    }
    if plans {
        for (name, sql) in plan_queries(now.as_millisecond()) {
            println!(
                "plan {name} ({}):\n{}\n",
                db.store.backend(),
                db.plan(&sql).await
            );
        }
    }
    time!(
        "requeue_expired_leases",
        s.requeue_expired_leases(1000, None, None)
            .await
            .unwrap()
            .changed
    );
    time!(
        "time_out_running",
        s.time_out_running(1000, None).await.unwrap().changed
    );
    time!(
        "promote_scheduled",
        s.promote_scheduled(1000, None).await.unwrap().changed
    );
    time!(
        "expire_overdue_queued",
        s.expire_overdue_queued(1000, None).await.unwrap().changed
    );
    time!(
        "expire_approvals",
        s.expire_approvals(1000, None).await.unwrap().changed
    );
    clock.set(at(600).into());
    time!(
        "recompute_priorities",
        s.recompute_priorities(
            Ageing {
                bonus_per_minute: 1,
                cap: 100
            },
            1000,
            None
        )
        .await
        .unwrap()
    );
    clock.set(now.into());
    time!(
        "delete_finished_jobs",
        s.delete_finished_jobs(JobRetention::default(), 1000, None)
            .await
            .unwrap()
            .changed
    );
    clock.set(at(3600).into());
    time!(
        "mark_silent_agents_offline",
        s.mark_silent_agents_offline(Duration::from_secs(90), 1000, None)
            .await
            .unwrap()
            .len() as u64
    );
    time!(
        "reclaim_offline_agent_jobs",
        s.reclaim_offline_agent_jobs(1000, None)
            .await
            .unwrap()
            .changed
    );
    out
}

fn plan_queries(now: i64) -> Vec<(&'static str, String)> {
    let cutoff = now - 86_400_000;
    vec![
        ("requeue_expired_leases", format!("SELECT id FROM jobs WHERE state = 'running' AND lease_expires_at < {now} LIMIT 1000")),
        ("time_out_running", format!("SELECT id FROM jobs WHERE state = 'running' AND timeout_at < {now} LIMIT 1000")),
        ("promote_scheduled", format!("SELECT id FROM jobs WHERE state = 'scheduled' AND run_at <= {now} LIMIT 1000")),
        ("expire_overdue_queued", format!("SELECT id FROM jobs WHERE state = 'queued' AND attempt = 0 AND deadline_at < {now} LIMIT 1000")),
        ("expire_approvals", format!("SELECT id FROM jobs WHERE state = 'awaiting_approval' AND approval_expires_at < {now} LIMIT 1000")),
        ("recompute_priorities", format!("SELECT id FROM jobs WHERE state = 'queued' AND effective_priority <> base_priority + ({now} - queued_at) / 60000 LIMIT 1000")),
        ("mark_silent_agents_offline", format!("SELECT id FROM agents WHERE status <> 'offline' AND last_heartbeat_at < {now} LIMIT 1000")),
        ("claim (one queue)", "SELECT id FROM jobs WHERE state = 'queued' AND queue = 'bench' ORDER BY effective_priority DESC, queued_at LIMIT 100".to_string()),
        ("delete_finished_jobs (id bound for the cutoff)", format!("SELECT id FROM jobs WHERE id < '{}' AND state IN ('succeeded', 'cancelled') AND finished_at < {cutoff} LIMIT 1000", Id::from_u128((cutoff as u128) << 80))),
    ]
}

async fn heartbeats(db: &Db, n: usize) -> f64 {
    let (series, id) = match db.store.pool_for_tests() {
        PoolForTests::Sqlite(_) => (
            format!(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) SELECT i FROM n"
            ),
            "printf('00000000-0000-7000-9000-%012x', i)",
        ),
        PoolForTests::Postgres(_) => (
            format!("SELECT i FROM generate_series(1, {n}) AS g(i)"),
            "('00000000-0000-7000-9000-' || lpad(to_hex(i), 12, '0'))::uuid",
        ),
    };
    let queues = match db.store.pool_for_tests() {
        PoolForTests::Sqlite(_) => "'[\"q\"]'",
        PoolForTests::Postgres(_) => "ARRAY['q']",
    };
    db.exec(format!(
        "INSERT INTO agents (id, name, labels, queues, status, last_heartbeat_at, registered_at)
         SELECT {id}, 'a' || i, '{{}}', {queues}, 'online', 0, 0 FROM ({series}) AS s"
    ))
    .await;
    let ids: Vec<AgentId> = (1..=n)
        .map(|i| Id::parse_str(&format!("00000000-0000-7000-9000-{i:012x}")).unwrap())
        .map(AgentId::from)
        .collect();
    let start = Instant::now();
    let updated = db.store.heartbeat_agents(&ids).await.unwrap();
    assert_eq!(updated as usize, n);
    start.elapsed().as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Arc::new(args());
    for backend in args.backends.clone() {
        if args.lifecycle {
            for batch in args.batches.clone() {
                // Store and baseline alternate, so a noisy neighbour
                // weighs on both; the ratio is taken within each pair.
                let other = match (args.shape, args.against) {
                    (Shape::Limited(_) | Shape::SlotsAtClaim(_) | Shape::Workflows, _) => {
                        args.shape.describe()
                    }
                    (Shape::Plain, Some(load)) => format!("{load:?}").to_lowercase(),
                    (Shape::Plain, None) => "raw SQL".into(),
                };
                let (mut store, mut raw, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
                for run in 1..=args.runs {
                    let (s, enqueue_rate) = if args.only.as_deref() == Some("baseline") {
                        (Run::skipped(), f64::NAN)
                    } else {
                        let db = fresh(backend, StoreClock::system(), args.fair_share_turn).await;
                        let s = lifecycle(
                            &db,
                            args.jobs,
                            args.workers,
                            batch,
                            Load::Analyzed,
                            args.producers,
                            Shape::Plain,
                        )
                        .await;
                        db.drop_all().await;
                        s
                    };
                    let r = if args.shape != Shape::Plain {
                        let db = fresh(backend, StoreClock::system(), args.fair_share_turn).await;
                        let (r, shaped_enqueue) = lifecycle(
                            &db,
                            args.jobs,
                            args.workers,
                            batch,
                            Load::Analyzed,
                            args.producers,
                            args.shape,
                        )
                        .await;
                        db.drop_all().await;
                        println!(
                            "{backend} {} batch={batch} run {run}: {:.0} jobs/s against {:.0} plain, ratio {:.2}; enqueue {shaped_enqueue:.0} jobs/s",
                            args.shape.describe(),
                            r.rate,
                            s.rate,
                            r.rate / s.rate
                        );
                        if let Shape::SlotsAtClaim(keys) = args.shape {
                            slots_in_the_claim(backend, &args, batch, keys, s.rate).await;
                        }
                        r
                    } else if let Some(load) = args.against {
                        let db = fresh(backend, StoreClock::system(), args.fair_share_turn).await;
                        let (r, other_enqueue) = lifecycle(
                            &db,
                            args.jobs,
                            args.workers,
                            batch,
                            load,
                            args.producers,
                            Shape::Plain,
                        )
                        .await;
                        db.drop_all().await;
                        println!(
                            "{backend} {load:?} batch={batch} run {run}: {:.0} jobs/s against {:.0} analyzed, ratio {:.2}; enqueue {other_enqueue:.0} jobs/s",
                            r.rate,
                            s.rate,
                            r.rate / s.rate
                        );
                        r
                    } else if args.only.as_deref() == Some("store") {
                        Run::skipped()
                    } else {
                        let db = fresh(backend, StoreClock::system(), args.fair_share_turn).await;
                        let r = baseline(&db, args.jobs, args.workers, batch, None).await;
                        db.drop_all().await;
                        r
                    };
                    // Against a baseline, the store's share of its rate;
                    // against another load or shape, that one's share of
                    // the store's.
                    let this_ratio = if args.against.is_some() || args.shape != Shape::Plain {
                        r.rate / s.rate
                    } else {
                        s.rate / r.rate
                    };
                    println!(
                        "{backend} lifecycle batch={batch} run {run}: store {:.0} jobs/s{}, {other} {:.0} jobs/s{}, ratio {this_ratio:.2}; batch enqueue {enqueue_rate:.0} jobs/s",
                        s.rate,
                        s.wal(),
                        r.rate,
                        r.wal(),
                    );
                    ratio.push(this_ratio);
                    store.push(s.rate);
                    raw.push(r.rate);
                }
                println!(
                    "{backend} lifecycle batch={batch} jobs={} workers={} median of {}: store {:.0} jobs/s, {other} {:.0} jobs/s, ratio {:.2}",
                    args.jobs,
                    args.workers,
                    args.runs,
                    median(&mut store),
                    median(&mut raw),
                    median(&mut ratio)
                );
            }
            let db = fresh(backend, StoreClock::system(), args.fair_share_turn).await;
            let tenant = db
                .store
                .create_tenant("enqueue", PlanTier::Free, "bench")
                .await
                .unwrap();
            let batch: Vec<NewJob> = (0..10_000).map(|_| NewJob::new("bench", "noop")).collect();
            let start = Instant::now();
            db.store.enqueue_batch(tenant.id, &batch).await.unwrap();
            let enqueue_ms = start.elapsed().as_secs_f64() * 1000.0;
            // One job at a time, as most producers enqueue (an HTTP
            // request each): what a single enqueue's statements cost.
            let one = [NewJob::new("bench", "noop")];
            let start = Instant::now();
            for _ in 0..SINGLE_ENQUEUES {
                db.store.enqueue_batch(tenant.id, &one).await.unwrap();
            }
            let single_per_sec = SINGLE_ENQUEUES as f64 / start.elapsed().as_secs_f64();
            let hb_ms = heartbeats(&db, 10_000).await;
            println!(
                "{backend} batch enqueue of 10,000 jobs: {enqueue_ms:.1} ms; single enqueues, one at a time: {single_per_sec:.0} a second; heartbeats of 10,000 agents: {hb_ms:.1} ms"
            );
            db.drop_all().await;
        }
        if args.sweeps {
            for rows in args.sweep_rows.clone() {
                let db = fresh(
                    backend,
                    StoreClock::manual(ManualClock::new(at(0).into())),
                    args.fair_share_turn,
                )
                .await;
                let timings = sweeps(&db, rows, args.plans).await;
                db.drop_all().await;
                for (name, ms, changed) in timings {
                    println!("{backend} sweep rows={rows} {name}: {ms:.1} ms ({changed} changed)");
                }
            }
        }
    }
}
