//! The agent runtime against a real server on loopback (SQLite): jobs run
//! to success, a retryable failure is retried, a permanent one goes dead, a
//! cancel stops the running job within a heartbeat, a shutdown drains and
//! then releases what still runs, and an outcome the server cannot take is
//! sent again until it can.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use homeostat_api::{ApiSettings, ApiState, router};
use homeostat_client::{Agent, AgentReport, Client, JobError, JobHandler};
use homeostat_model::wire::RegisterRequest;
use homeostat_model::{ApiScope, ClaimedJob, JobId, JobState, NewAgent, NewJob, PlanTier};
use homeostat_store::{NewBootstrapToken, Store};
use homeostat_testkit::TestStore;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

struct Server {
    base: String,
    credential: String,
    test: TestStore,
    store: Store,
    admin: Client,
    agent: Client,
    task: tokio::task::JoinHandle<()>,
    /// Heartbeats the server has received: the protocol's own clock.
    heartbeats: Arc<AtomicU32>,
}

/// A server on loopback with a 1 s heartbeat interval, a tenant, its key,
/// and an agent registered for queue `q`.
async fn server() -> Server {
    server_with(ApiSettings {
        heartbeat_interval: Duration::from_secs(1),
        ..ApiSettings::default()
    })
    .await
}

/// [`server`] with these settings.
async fn server_with(settings: ApiSettings) -> Server {
    let test = homeostat_testkit::sqlite().await;
    let url = format!("sqlite:{}", test.path().unwrap().display());
    // Retries back off for 200 ms, not the default's seconds.
    let options = homeostat_store::StoreOptions {
        retry_initial: Duration::from_millis(200),
        ..Default::default()
    };
    let store = Store::connect(&url, options).await.unwrap();
    let state = ApiState::new(store.clone(), settings, None, Default::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let heartbeats = Arc::new(AtomicU32::new(0));
    let counted = heartbeats.clone();
    let app = router(state).layer(axum::middleware::map_request(
        move |req: axum::extract::Request| {
            let counted = counted.clone();
            async move {
                if req.uri().path() == "/v1/agent/heartbeat" {
                    counted.fetch_add(1, Ordering::SeqCst);
                }
                req
            }
        },
    ));
    let task = tokio::spawn(async move {
        axum::serve(listener, app.into_make_service())
            .await
            .unwrap()
    });
    let tenant = store
        .create_tenant("acme", PlanTier::Standard, "test")
        .await
        .unwrap();
    let key = store
        .issue_api_key(ApiScope::Tenant(tenant.id), None, "test")
        .await
        .unwrap()
        .secret;
    let bootstrap = store
        .issue_bootstrap_token(
            &NewBootstrapToken {
                tenant_id: Some(tenant.id),
                ttl: Duration::from_secs(600),
                uses: 1,
            },
            "test",
        )
        .await
        .unwrap()
        .secret;
    let anonymous = Client::builder(&base).build().unwrap();
    let registered = anonymous
        .register(&RegisterRequest {
            bootstrap_token: bootstrap,
            agent: NewAgent {
                name: "worker".into(),
                labels: Default::default(),
                queues: vec!["q".into()],
            },
        })
        .await
        .unwrap();
    Server {
        base,
        credential: registered.credential.clone(),
        admin: anonymous.with_token(key),
        agent: anonymous.with_token(registered.credential),
        test,
        store,
        task,
        heartbeats,
    }
}

impl Server {
    async fn enqueue(&self, payload: Value, max_attempts: u32) -> JobId {
        let mut job = NewJob::new("q", "k");
        job.payload = payload;
        job.max_attempts = Some(max_attempts);
        self.admin.enqueue(None, &job).await.unwrap().job.id
    }

    /// Polls (with a deadline) until the job is in `state`.
    async fn until(&self, id: JobId, state: JobState) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let job = self.store.get_job(id).await.unwrap();
            if job.state == state {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "job is {} not {state}",
                job.state
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) {
        self.task.abort();
        self.store.close().await;
        self.test.cleanup().await;
    }
}

/// Does what each job's payload says: `ok`, `retry` (fails retryably on
/// its first attempt), `fail` (permanently), `slow` (1.5 s of work), or
/// `hang` (until stopped).
struct Scripted {
    stopped: Arc<AtomicU32>,
}

impl JobHandler for Scripted {
    async fn handle(
        &self,
        job: ClaimedJob,
        stop: CancellationToken,
    ) -> Result<Option<Value>, JobError> {
        match job.payload["do"].as_str().unwrap_or("ok") {
            "retry" if job.attempt == 1 => Err(JobError::retryable("first attempt fails")),
            "fail" => Err(JobError::permanent("bad input")),
            "slow" => {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(1500)) => {}
                    () = stop.cancelled() => {
                        self.stopped.fetch_add(1, Ordering::SeqCst);
                        return Err(JobError::retryable("stopped"));
                    }
                }
                Ok(Some(json!({"attempt": job.attempt})))
            }
            "hang" => {
                stop.cancelled().await;
                self.stopped.fetch_add(1, Ordering::SeqCst);
                Err(JobError::retryable("stopped"))
            }
            _ => Ok(Some(json!({"attempt": job.attempt}))),
        }
    }
}

fn scripted() -> (Scripted, Arc<AtomicU32>) {
    let stopped = Arc::new(AtomicU32::new(0));
    (
        Scripted {
            stopped: stopped.clone(),
        },
        stopped,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_succeed_retry_and_die_as_their_handler_says() {
    let s = server().await;
    let ok = s.enqueue(json!({"do": "ok"}), 3).await;
    let fail = s.enqueue(json!({"do": "fail"}), 3).await;
    let retry = s.enqueue(json!({"do": "retry"}), 3).await;
    let shutdown = CancellationToken::new();
    let (handler, _) = scripted();
    let agent = tokio::spawn(
        Agent::builder(s.agent.clone())
            .concurrency(4)
            .claim_wait(1)
            .run(handler, shutdown.clone()),
    );
    s.until(ok, JobState::Succeeded).await;
    s.until(fail, JobState::Dead).await;
    // The retry waits out its backoff (scheduled), then runs again once
    // promoted: promote it here, as job-scheduler would.
    s.until(retry, JobState::Scheduled).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.store.get_job(retry).await.unwrap().state != JobState::Succeeded {
        s.store.promote_scheduled(100, None).await.unwrap();
        assert!(Instant::now() < deadline, "the retry never succeeded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let job = s.store.get_job(retry).await.unwrap();
    assert_eq!(job.result, Some(json!({"attempt": 2})));
    assert_eq!(job.attempts.len(), 1);
    shutdown.cancel();
    let report = agent.await.unwrap().unwrap();
    assert_eq!((report.completed, report.failed), (2, 2), "{report:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_stops_the_running_job_within_a_heartbeat() {
    let s = server().await;
    let hang = s.enqueue(json!({"do": "hang"}), 3).await;
    let shutdown = CancellationToken::new();
    let (handler, stopped) = scripted();
    let agent = tokio::spawn(
        Agent::builder(s.agent.clone())
            .claim_wait(1)
            .run(handler, shutdown.clone()),
    );
    s.until(hang, JobState::Running).await;
    let beats_before = s.heartbeats.load(Ordering::SeqCst);
    s.admin.cancel(hang).await.unwrap();
    // Wall clock: a hang guard only.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stopped.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the handler was never stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Counted in heartbeats, however slow the machine: the answer to the
    // first heartbeat after the cancel carries it; one may have been in
    // flight as the cancel was written.
    let beats = s.heartbeats.load(Ordering::SeqCst) - beats_before;
    assert!(
        (1..=2).contains(&beats),
        "stopped after {beats} heartbeat(s)"
    );
    shutdown.cancel();
    let report: AgentReport = agent.await.unwrap().unwrap();
    assert_eq!(report.stopped, 1, "{report:?}");
    assert_eq!(
        s.store.get_job(hang).await.unwrap().state,
        JobState::Cancelled
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shutdown_drains_then_releases_what_still_runs() {
    let s = server().await;
    // Several at once: each handler, stopped, returns at once, and none of
    // them may report its stop as a failure while the releases go out.
    let mut hanging = Vec::new();
    for _ in 0..4 {
        hanging.push(s.enqueue(json!({"do": "hang"}), 1).await);
    }
    let shutdown = CancellationToken::new();
    let (handler, _) = scripted();
    let agent = tokio::spawn(
        Agent::builder(s.agent.clone())
            .claim_wait(1)
            .concurrency(4)
            .grace(Duration::from_millis(300))
            .run(handler, shutdown.clone()),
    );
    for id in &hanging {
        s.until(*id, JobState::Running).await;
    }
    shutdown.cancel();
    let report = agent.await.unwrap().unwrap();
    assert_eq!((report.released, report.failed), (4, 0), "{report:?}");
    for id in hanging {
        let job = s.store.get_job(id).await.unwrap();
        assert_eq!(job.state, JobState::Queued);
        assert_eq!(job.attempt, 0, "the release used the job's only attempt");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_lease_stops_the_job() {
    let s = server().await;
    let hang = s.enqueue(json!({"do": "hang"}), 3).await;
    let shutdown = CancellationToken::new();
    let (handler, stopped) = scripted();
    let agent = tokio::spawn(
        Agent::builder(s.agent.clone())
            .claim_wait(1)
            // The job, queued again, is claimed again and hangs: the
            // shutdown gives it little time.
            .grace(Duration::from_millis(300))
            .run(handler, shutdown.clone()),
    );
    s.until(hang, JobState::Running).await;
    // The server takes the job back (as job-recovery does when a lease
    // expires): the next heartbeat says it is lost.
    let job = s.store.get_job(hang).await.unwrap();
    let holder = job.lease_agent.expect("a running job has a holder");
    s.store
        .release_job(holder, hang, job.lease_token)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while stopped.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the handler was never stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    let _ = agent.await.unwrap().unwrap();
    s.stop().await;
}

/// A TCP proxy in front of the server that can be cut: while down, it
/// drops the connections it carries and refuses new ones.
#[derive(Clone)]
struct Cut {
    down: Arc<std::sync::atomic::AtomicBool>,
    cut: Arc<std::sync::Mutex<CancellationToken>>,
}

impl Cut {
    async fn start(upstream: String) -> (Self, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let cut = Cut {
            down: Arc::default(),
            cut: Arc::new(std::sync::Mutex::new(CancellationToken::new())),
        };
        let proxy = cut.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if proxy.down.load(Ordering::SeqCst) {
                    continue; // dropped: the connection closes at once
                }
                let stop = proxy.cut.lock().unwrap().clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = stop.cancelled() => {}
                    }
                });
            }
        });
        (cut, base)
    }

    fn down(&self) {
        self.down.store(true, Ordering::SeqCst);
        let mut cut = self.cut.lock().unwrap();
        cut.cancel();
        *cut = CancellationToken::new();
    }

    fn up(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

/// Cuts the proxy when it finishes its job, before the agent reports it.
struct CutsWhenDone(Cut);

impl JobHandler for CutsWhenDone {
    async fn handle(
        &self,
        _job: ClaimedJob,
        _stop: CancellationToken,
    ) -> Result<Option<Value>, JobError> {
        self.0.down();
        Ok(Some(json!({"done": true})))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outcome_is_sent_again_until_the_server_takes_it() {
    let s = server().await;
    let upstream = s.base.trim_start_matches("http://").to_owned();
    let (cut, base) = Cut::start(upstream).await;
    let agent_client = Client::builder(&base)
        .build()
        .unwrap()
        .with_token(&s.credential);
    let id = s.enqueue(json!({}), 3).await;
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(
        Agent::builder(agent_client)
            .claim_wait(1)
            .run(CutsWhenDone(cut.clone()), shutdown.clone()),
    );
    s.until(id, JobState::Running).await;
    // The job finished and the server is out of reach: no outcome arrives
    // while it is (the client's own retries give up within seconds).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cut.down.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the job never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(s.store.get_job(id).await.unwrap().state, JobState::Running);
    cut.up();
    s.until(id, JobState::Succeeded).await;
    let job = s.store.get_job(id).await.unwrap();
    assert_eq!(job.attempt, 1, "the finished work ran again");
    assert_eq!(job.result, Some(json!({"done": true})));
    shutdown.cancel();
    let report = agent.await.unwrap().unwrap();
    assert_eq!(report.completed, 1, "{report:?}");
    s.stop().await;
}

/// Hangs until stopped, noting when.
struct NotesItsStop(Arc<std::sync::Mutex<Option<std::time::SystemTime>>>);

impl JobHandler for NotesItsStop {
    async fn handle(
        &self,
        _job: ClaimedJob,
        stop: CancellationToken,
    ) -> Result<Option<Value>, JobError> {
        stop.cancelled().await;
        *self.0.lock().unwrap() = Some(std::time::SystemTime::now());
        Err(JobError::retryable("stopped"))
    }
}

/// An agent that no server answers stops its job before the lease it last
/// extended runs out, by the server's own lease time: it never runs on
/// once the server may give the job to another agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_whose_lease_cannot_be_extended_stops_before_the_lease_runs_out() {
    let s = server_with(ApiSettings {
        heartbeat_interval: Duration::from_secs(1),
        lease_ttl: Duration::from_secs(4),
        ..ApiSettings::default()
    })
    .await;
    let upstream = s.base.trim_start_matches("http://").to_owned();
    let (cut, base) = Cut::start(upstream).await;
    let agent_client = Client::builder(&base)
        .build()
        .unwrap()
        .with_token(&s.credential);
    let id = s.enqueue(json!({}), 3).await;
    let stopped = Arc::new(std::sync::Mutex::new(None));
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(
        Agent::builder(agent_client)
            .claim_wait(1)
            .run(NotesItsStop(stopped.clone()), shutdown.clone()),
    );
    s.until(id, JobState::Running).await;
    // One more heartbeat reaches the server (it extends the lease); then
    // none does.
    let seen = s.heartbeats.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.heartbeats.load(Ordering::SeqCst) < seen + 2 {
        assert!(Instant::now() < deadline, "no heartbeat");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cut.down();
    let deadline = Instant::now() + Duration::from_secs(30);
    let at = loop {
        if let Some(at) = *stopped.lock().unwrap() {
            break at;
        }
        assert!(Instant::now() < deadline, "the job ran on past its lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let job = s.store.get_job(id).await.unwrap();
    assert_eq!(
        job.state,
        JobState::Running,
        "the server has not taken it back"
    );
    let lease_end = std::time::SystemTime::from(job.lease_expires_at.unwrap());
    assert!(
        at < lease_end,
        "stopped {:?} after its lease ran out",
        at.duration_since(lease_end).unwrap_or_default()
    );
    shutdown.cancel();
    let report = agent.await.unwrap().unwrap();
    assert_eq!(report.stopped, 1, "{report:?}");
    s.stop().await;
}

/// A job claimed at the end of a long poll that waited longer than a
/// lease runs to its end: its lease starts when the claim is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_claimed_after_a_long_wait_keeps_its_whole_lease() {
    let s = server_with(ApiSettings {
        heartbeat_interval: Duration::from_secs(1),
        lease_ttl: Duration::from_secs(4),
        ..ApiSettings::default()
    })
    .await;
    let (handler, stopped) = scripted();
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(
        Agent::builder(s.agent.clone())
            .claim_wait(20)
            .run(handler, shutdown.clone()),
    );
    // Six heartbeats (the server's 1 s interval) into the agent's first
    // long poll: longer than a lease.
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.heartbeats.load(Ordering::SeqCst) < 6 {
        assert!(Instant::now() < deadline, "no heartbeats");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let id = s.enqueue(json!({"do": "slow"}), 1).await;
    s.until(id, JobState::Succeeded).await;
    shutdown.cancel();
    let report = agent.await.unwrap().unwrap();
    assert_eq!(
        (report.completed, stopped.load(Ordering::SeqCst)),
        (1, 0),
        "{report:?}"
    );
    s.stop().await;
}
