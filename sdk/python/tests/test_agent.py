"""The agent runtime against a real server: runs jobs up to its
concurrency, reports failures as they are, stops a cancelled job, gives
back what is unfinished at shutdown, and stops claiming when drained."""

import threading
import time

from homeostat import Agent, Client, JobError

from conftest import wait_for


def registered(server, admin, tenant_id, queue, name="py"):
    token = admin.create_bootstrap_token(tenant_id)
    reg = Client(server.url).register(token, name, [queue])
    return reg, Client(server.url, reg.credential)


def running_agent(agent, handler):
    stop = threading.Event()
    out = {}
    thread = threading.Thread(target=lambda: out.update(report=agent.run(handler, stop)))
    thread.start()
    return stop, thread, out


def test_jobs_run_up_to_the_concurrency_and_their_results_are_kept(server, tenant):
    tenant_id, admin = tenant
    _, client = registered(server, admin, tenant_id, "sdk-run")
    admin.enqueue_batch(
        [{"queue": "sdk-run", "kind": "square", "payload": {"n": n}} for n in range(12)],
        tenant_id=tenant_id,
    )
    lock, now, most = threading.Lock(), [0], [0]

    def square(job, stop):
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        time.sleep(0.2)
        with lock:
            now[0] -= 1
        return {"square": job.payload["n"] ** 2}

    stop, thread, out = running_agent(Agent(client, concurrency=3, claim_wait=1), square)
    wait_for("every job succeeded", lambda: len(admin.jobs(queue="sdk-run", state="succeeded")) == 12)
    stop.set()
    thread.join(timeout=30)
    assert out["report"].completed == 12
    assert most[0] == 3, f"at most 3 at once, and 3 reached: {most[0]}"
    results = sorted(j["result"]["square"] for j in admin.jobs(queue="sdk-run"))
    assert results == sorted(n * n for n in range(12))


def test_failures_are_reported_as_retryable_or_permanent(server, tenant):
    tenant_id, admin = tenant
    _, client = registered(server, admin, tenant_id, "sdk-fail")
    bad = admin.enqueue("sdk-fail", "bad", tenant_id=tenant_id, max_attempts=3)
    flaky = admin.enqueue("sdk-fail", "flaky", tenant_id=tenant_id, max_attempts=3)

    def handler(job, stop):
        if job.kind == "bad":
            raise JobError("bad input", retryable=False)
        raise RuntimeError("disk full")

    stop, thread, out = running_agent(Agent(client, claim_wait=1), handler)
    wait_for("the bad one is dead", lambda: admin.job(bad["id"])["state"] == "dead")
    wait_for("the flaky one waits for its retry", lambda: admin.job(flaky["id"])["state"] == "scheduled")
    stop.set()
    thread.join(timeout=30)
    assert admin.job(bad["id"])["state"] == "dead"
    flaky_now = admin.job(flaky["id"])
    assert flaky_now["last_error"] == "RuntimeError: disk full"


def test_a_cancelled_job_is_stopped_at_the_next_heartbeat(server, tenant):
    tenant_id, admin = tenant
    _, client = registered(server, admin, tenant_id, "sdk-cancel")
    job = admin.enqueue("sdk-cancel", "long", tenant_id=tenant_id)
    started, stopped_by = threading.Event(), []

    def long(job, stop):
        started.set()
        stop.wait(60)
        stopped_by.append(stop.is_set())
        return "finished anyway"

    stop, thread, out = running_agent(Agent(client, claim_wait=1), long)
    assert started.wait(20)
    admin.cancel(job["id"])
    wait_for("the handler saw the stop", lambda: stopped_by == [True], within=10)
    stop.set()
    thread.join(timeout=30)
    assert out["report"].stopped == 1 and out["report"].completed == 0
    assert admin.job(job["id"])["state"] == "cancelled"


def test_shutdown_gives_back_what_is_unfinished_past_the_grace(server, tenant):
    tenant_id, admin = tenant
    _, client = registered(server, admin, tenant_id, "sdk-release")
    job = admin.enqueue("sdk-release", "long", tenant_id=tenant_id)
    started = threading.Event()

    def long(job, stop):
        started.set()
        stop.wait(60)

    stop, thread, out = running_agent(Agent(client, claim_wait=1, grace=0.5), long)
    assert started.wait(20)
    stop.set()
    thread.join(timeout=30)
    assert out["report"].released == 1
    back = admin.job(job["id"])
    assert back["state"] == "queued" and back["attempt"] == 0, back


def test_a_drained_agent_finishes_what_it_holds_and_claims_nothing_more(server, tenant):
    tenant_id, admin = tenant
    reg, client = registered(server, admin, tenant_id, "sdk-drain")
    first = admin.enqueue("sdk-drain", "k", tenant_id=tenant_id)
    go = threading.Event()

    def handler(job, stop):
        go.wait(20)
        return job.id

    stop = threading.Event()
    agent = Agent(client, claim_wait=1)
    out = {}
    thread = threading.Thread(target=lambda: out.update(report=agent.run(handler, stop)))
    thread.start()
    wait_for("the first job runs", lambda: admin.job(first["id"])["state"] == "running")
    admin.drain_agent(reg.agent_id)
    second = admin.enqueue("sdk-drain", "k", tenant_id=tenant_id)
    wait_for("the agent heard the drain", lambda: agent.draining)
    go.set()
    thread.join(timeout=30)
    assert not thread.is_alive(), "a drained agent ends once its jobs are done"
    assert admin.job(first["id"])["state"] == "succeeded"
    assert admin.job(second["id"])["state"] == "queued"
    assert out["report"].completed == 1


def test_a_job_whose_lease_cannot_be_extended_stops_before_it_runs_out(server, tenant):
    import datetime

    tenant_id, admin = tenant
    _, client = registered(server, admin, tenant_id, "sdk-lease")
    job = admin.enqueue("sdk-lease", "long", tenant_id=tenant_id)
    started, stopped_at = threading.Event(), []

    def long(job, stop):
        started.set()
        stop.wait(60)
        stopped_at.append(datetime.datetime.now(datetime.timezone.utc))

    agent = Agent(client, claim_wait=1)
    stop, thread, out = running_agent(agent, long)
    assert started.wait(20)
    wait_for("the job runs", lambda: admin.job(job["id"])["state"] == "running")
    # From now on no server answers the agent.
    agent.client.base_url = "http://127.0.0.1:9"
    wait_for("the agent stopped the job", lambda: stopped_at, within=30)
    shown = admin.job(job["id"])
    assert shown["state"] == "running", "the server has not taken it back yet"
    lease_end = datetime.datetime.fromisoformat(shown["lease_expires_at"].replace("Z", "+00:00"))
    assert stopped_at[0] < lease_end, (stopped_at[0], lease_end)
    stop.set()
    thread.join(timeout=30)
    assert out["report"].stopped == 1
