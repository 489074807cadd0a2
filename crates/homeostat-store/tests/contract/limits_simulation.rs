//! A simulation of agents, operators, sweeps and (on PostgreSQL) replicas
//! that die, interleaved at random under a few seeds, checking after every
//! step what the agents themselves run: never more jobs of a key at once
//! than its limit, never more starts of a key in any window than its rate;
//! and at the end that every job still live runs to its end.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use homeostat_model::{
    AgentId, JobId, JobLimit, JobState, LimitSpec, LimitStrategy, NewJob, PlanTier, Rate,
};
use homeostat_store::{Completion, Failure, JobFilter, Store};
use homeostat_testkit::{TestStore, agents, at, on_both_backends, tenant};

const LEASE: Duration = Duration::from_secs(20);
const LEASE_MS: i64 = 20_000;
const MAX: usize = 2;
const RATE: usize = 3;
const MAX_U32: u32 = 2;
const RATE_U32: u32 = 3;
const WINDOW_SECS: u64 = 10;
const WINDOW_MS: i64 = 10_000;

/// A job an agent runs: its lease as the agent knows it, and its keys.
struct Held {
    agent: AgentId,
    token: i64,
    lease_until: i64,
    keys: Vec<String>,
}

struct Sim<'a> {
    test: &'a TestStore,
    rng: fastrand::Rng,
    replicas: Vec<Store>,
    agents: Vec<AgentId>,
    now_ms: i64,
    jobs: Vec<JobId>,
    keys_of: HashMap<JobId, Vec<String>>,
    held: BTreeMap<JobId, Held>,
    starts: HashMap<String, Vec<i64>>,
    /// The most jobs of one key seen running at once, so that a run that
    /// never filled a key (and so proved nothing) fails.
    peak: usize,
}

impl Sim<'_> {
    fn store(&mut self) -> Store {
        let i = self.rng.usize(..self.replicas.len());
        self.replicas[i].clone()
    }

    fn now(&self) -> jiff::Timestamp {
        at(0) + jiff::SignedDuration::from_millis(self.now_ms)
    }

    fn set_clock(&self) {
        self.test.clock.set(self.now().into());
    }

    /// What the agents run now, per key, checked against the limits.
    fn check(&mut self, step: usize, what: &str) {
        let mut running: HashMap<&str, usize> = HashMap::new();
        for h in self.held.values().filter(|h| h.lease_until > self.now_ms) {
            for k in &h.keys {
                *running.entry(k.as_str()).or_default() += 1;
            }
        }
        for (key, n) in running {
            if key.starts_with("conc:") || key.starts_with("rr:") {
                self.peak = self.peak.max(n);
                assert!(
                    n <= MAX,
                    "step {step} ({what}): {n} jobs of {key} run at once, limit {MAX}"
                );
            }
        }
        for (key, starts) in &self.starts {
            let mut sorted = starts.clone();
            sorted.sort_unstable();
            for w in sorted.windows(RATE + 1) {
                assert!(
                    w[RATE] - w[0] >= WINDOW_MS,
                    "step {step} ({what}): {} starts of {key} within {} ms: {w:?}",
                    RATE + 1,
                    w[RATE] - w[0]
                );
            }
        }
    }

    async fn enqueue(&mut self, t: homeostat_model::TenantId) {
        let n = 1 + self.rng.usize(..3);
        let mut batch = Vec::new();
        for _ in 0..n {
            let mut job = NewJob::new("q", "k");
            let conc = if self.rng.bool() {
                JobLimit::new("conc", self.rng.usize(..3).to_string())
            } else {
                JobLimit::new("rr", self.rng.usize(..2).to_string())
            };
            job.limits = vec![conc];
            if self.rng.u8(..3) == 0 {
                job.limits
                    .push(JobLimit::new("rated", self.rng.usize(..2).to_string()));
            }
            batch.push(job);
        }
        let store = self.store();
        let enqueued = store.enqueue_batch(t, &batch).await.unwrap();
        for (e, job) in enqueued.iter().zip(&batch) {
            self.jobs.push(e.id);
            let keys = job
                .limits
                .iter()
                .map(|l| format!("{}:{}", l.limit, l.key.as_deref().unwrap()))
                .collect();
            self.keys_of.insert(e.id, keys);
        }
    }

    async fn claim(&mut self) {
        let agent = self.agents[self.rng.usize(..self.agents.len())];
        let n = 1 + self.rng.u32(..3);
        let store = self.store();
        for c in store.claim(agent, n, LEASE).await.unwrap() {
            let keys = self.keys_of[&c.id].clone();
            for k in keys.iter().filter(|k| k.starts_with("rated:")) {
                self.starts.entry(k.clone()).or_default().push(self.now_ms);
            }
            self.held.insert(
                c.id,
                Held {
                    agent,
                    token: c.lease_token,
                    lease_until: self.now_ms + LEASE_MS,
                    keys,
                },
            );
        }
    }

    /// A random job an agent runs whose lease it still has.
    fn pick_held(&mut self) -> Option<JobId> {
        let live: Vec<JobId> = self
            .held
            .iter()
            .filter(|(_, h)| h.lease_until > self.now_ms)
            .map(|(id, _)| *id)
            .collect();
        (!live.is_empty()).then(|| live[self.rng.usize(..live.len())])
    }

    async fn finish(&mut self, how: u8) {
        let Some(id) = self.pick_held() else { return };
        let h = self.held.remove(&id).unwrap();
        let store = self.store();
        match how {
            0 => {
                let c = Completion {
                    id,
                    lease_token: h.token,
                    result: None,
                };
                store.complete_batch(h.agent, &[c]).await.unwrap();
            }
            1 => {
                let f = Failure {
                    agent: h.agent,
                    id,
                    lease_token: h.token,
                    error: "simulated",
                    permanent: false,
                };
                // A job cancelled meanwhile refuses the report: the agent
                // stops it all the same.
                let _ = store.fail(&f).await;
            }
            _ => {
                let _ = store.release_job(h.agent, id, h.token).await;
            }
        }
    }

    /// Every agent heartbeats what it runs: what is no longer its own
    /// (cancelled, reclaimed) it stops.
    async fn heartbeat(&mut self) {
        let store = self.store();
        for agent in self.agents.clone() {
            let mine: Vec<(JobId, i64)> = self
                .held
                .iter()
                .filter(|(_, h)| h.agent == agent && h.lease_until > self.now_ms)
                .map(|(id, h)| (*id, h.token))
                .collect();
            if mine.is_empty() {
                continue;
            }
            let kept = store.heartbeat_jobs(agent, &mine, LEASE).await.unwrap();
            for ((id, _), kept) in mine.iter().zip(kept) {
                if kept {
                    self.held.get_mut(id).unwrap().lease_until = self.now_ms + LEASE_MS;
                } else {
                    self.held.remove(id);
                }
            }
        }
    }

    /// Time passes; an agent stops a job whose lease it could not renew.
    async fn advance(&mut self, ms: i64) {
        self.now_ms += ms;
        self.set_clock();
        let now = self.now_ms;
        self.held.retain(|_, h| h.lease_until > now);
    }
}

async fn no_key_ever_runs_past_its_limits_whatever_happens(test: &TestStore) {
    let store: &Store = test;
    let t = tenant(store, "acme", PlanTier::Free).await;
    let conc = LimitSpec {
        max_running: Some(MAX_U32),
        ..LimitSpec::default()
    };
    store
        .set_limit("conc", &conc, "operator:test")
        .await
        .unwrap();
    let rr = LimitSpec {
        strategy: LimitStrategy::RoundRobin,
        ..conc.clone()
    };
    store.set_limit("rr", &rr, "operator:test").await.unwrap();
    let rated = LimitSpec {
        rate: Some(Rate {
            starts: RATE_U32,
            per_secs: WINDOW_SECS,
        }),
        ..LimitSpec::default()
    };
    store
        .set_limit("rated", &rated, "operator:test")
        .await
        .unwrap();
    let agents = agents(store, Some(t), &["q"], 3).await;
    for seed in 1..=3u64 {
        let mut replicas = vec![store.clone()];
        if let Some(r) = test.replica().await {
            replicas.push(r);
        }
        let mut sim = Sim {
            test,
            rng: fastrand::Rng::with_seed(seed),
            replicas,
            agents: agents.clone(),
            now_ms: seed as i64 * 10_000_000,
            jobs: Vec::new(),
            keys_of: HashMap::new(),
            held: BTreeMap::new(),
            starts: HashMap::new(),
            peak: 0,
        };
        sim.set_clock();
        for step in 0..250 {
            let what = match sim.rng.u8(..20) {
                0..=3 => {
                    sim.enqueue(t).await;
                    "enqueue"
                }
                4..=7 => {
                    sim.claim().await;
                    "claim"
                }
                8..=9 => {
                    sim.finish(0).await;
                    "complete"
                }
                10 => {
                    sim.finish(1).await;
                    "fail"
                }
                11 => {
                    sim.finish(2).await;
                    "release"
                }
                12 => {
                    if !sim.jobs.is_empty() {
                        let id = sim.jobs[sim.rng.usize(..sim.jobs.len())];
                        let _ = sim.store().cancel(id, "operator:test").await;
                    }
                    "cancel"
                }
                13 => {
                    sim.heartbeat().await;
                    "heartbeat"
                }
                14..=15 => {
                    let ms = 500 + sim.rng.i64(0..8000);
                    sim.advance(ms).await;
                    "time passes"
                }
                16 => {
                    let s = sim.store();
                    s.requeue_expired_leases(100, None, None).await.unwrap();
                    s.promote_scheduled(100, None).await.unwrap();
                    "sweeps"
                }
                17..=18 => {
                    sim.store().admit_waiting("test").await.unwrap();
                    "admission"
                }
                _ => {
                    // A replica dies: what it kept in memory is gone; a
                    // new one takes its place.
                    if let Some(fresh) = test.replica().await {
                        let i = sim.rng.usize(..sim.replicas.len());
                        sim.replicas[i] = fresh;
                    }
                    "a replica dies"
                }
            };
            sim.check(step, what);
        }

        // Then the agents work through everything left: each job not
        // cancelled ends, and the limits hold to the end.
        let mut rounds = 0;
        loop {
            let live = store
                .list_jobs(&JobFilter::default(), None, 1000)
                .await
                .unwrap()
                .items
                .into_iter()
                .filter(|j| sim.keys_of.contains_key(&j.id) && !j.state.is_terminal())
                .count();
            if live == 0 {
                break;
            }
            rounds += 1;
            assert!(rounds < 2000, "seed {seed}: {live} jobs never ended");
            sim.advance(1000).await;
            let s = sim.store();
            s.requeue_expired_leases(100, None, None).await.unwrap();
            s.promote_scheduled(100, None).await.unwrap();
            s.admit_waiting("test").await.unwrap();
            sim.claim().await;
            sim.check(rounds, "draining");
            while sim.pick_held().is_some() {
                sim.finish(0).await;
            }
        }
        let waiting = store
            .list_jobs(
                &JobFilter {
                    state: Some(JobState::Waiting),
                    ..JobFilter::default()
                },
                None,
                10,
            )
            .await
            .unwrap();
        assert!(waiting.items.is_empty());
        assert_eq!(sim.peak, MAX, "seed {seed}: no key was ever full");
        let saturated = sim.starts.values().any(|starts| {
            let mut sorted = starts.clone();
            sorted.sort_unstable();
            sorted.windows(RATE).any(|w| w[RATE - 1] - w[0] < WINDOW_MS)
        });
        assert!(saturated, "seed {seed}: no rate was ever used up");
    }
}

on_both_backends!(no_key_ever_runs_past_its_limits_whatever_happens);
