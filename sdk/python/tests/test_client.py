"""The client against a real server: a job's whole life through typed
calls, errors with their codes, and no secret in a repr."""

import pytest

from homeostat import ApiError, Client


def test_a_job_goes_through_its_whole_life(server, tenant):
    tenant_id, admin = tenant
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    enqueued = admin.enqueue("sdk-life", "compile", {"file": "a.c"}, tenant_id=tenant_id, traceparent=tp)
    assert not enqueued["deduplicated"]
    assert admin.job(enqueued["id"])["state"] == "queued"
    token = admin.create_bootstrap_token(tenant_id)
    reg = Client(server.url).register(token, "py-1", ["sdk-life"], {"lang": "python"})
    agent = Client(server.url, reg.credential)

    claimed = agent.claim(capacity=1, wait_secs=5)
    assert [j.id for j in claimed] == [enqueued["id"]]
    job = claimed[0]
    assert (job.kind, job.payload, job.attempt) == ("compile", {"file": "a.c"}, 1)
    assert job.traceparent == tp
    beat = agent.heartbeat([job])
    assert (beat.lost, beat.cancelled, beat.drain) == ([], [], False)
    done = agent.complete(job, {"objects": 1})
    assert done["state"] == "succeeded"
    assert agent.complete(job, {"objects": 1})["state"] == "succeeded", "a resend is harmless"

    shown = admin.job(job.id)
    assert shown["state"] == "succeeded" and shown["result"] == {"objects": 1}
    listed = admin.jobs(queue="sdk-life", state="succeeded")
    assert [j["id"] for j in listed] == [job.id]


def test_a_batch_is_enqueued_whole_and_listed_across_pages(tenant):
    tenant_id, admin = tenant
    jobs = [{"queue": "sdk-batch", "kind": "k", "payload": {"i": i}} for i in range(7)]
    made = admin.enqueue_batch(jobs, tenant_id=tenant_id)
    assert len(made) == 7
    assert len(admin.jobs(queue="sdk-batch", limit=3)) == 7
    with pytest.raises(ApiError) as bad:
        admin.enqueue_batch(jobs + [{"queue": "", "kind": "k"}], tenant_id=tenant_id)
    assert bad.value.status == 422 and bad.value.code == "invalid"
    assert len(admin.jobs(queue="sdk-batch")) == 7, "nothing of a refused batch was written"


def test_errors_carry_the_servers_code(server, admin):
    with pytest.raises(ApiError) as missing:
        admin.job("00000000-0000-7000-8000-000000000000")
    assert (missing.value.status, missing.value.code) == (404, "not_found")
    with pytest.raises(ApiError) as wrong:
        Client(server.url, "hsk_wrong").jobs()
    assert (wrong.value.status, wrong.value.code) == (401, "unauthorized")
    with pytest.raises(ApiError) as down:
        Client("http://127.0.0.1:9", "x").jobs()
    assert down.value.code == "unreachable" and down.value.transient


def test_credentials_never_print(server, tenant):
    tenant_id, admin = tenant
    reg = Client(server.url).register(admin.create_bootstrap_token(tenant_id), "py", ["q"])
    assert reg.credential not in repr(reg)
    assert server.admin_key not in repr(admin)
