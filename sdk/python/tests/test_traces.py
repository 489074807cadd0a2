"""Reports carry the job's trace context: against a server exporting
traces over OTLP to a receiver built on the OTLP protobufs (PyPI's
opentelemetry-proto, the receiver of the server's own telemetry test), the
completion's request span is a child of the job's claim, in the
enqueuer's trace."""

import json
import pathlib
import secrets
import subprocess
import sys
import tempfile
import threading

import pytest

from homeostat import Agent, Client

from conftest import ROOT, Server, wait_for

RECEIVER = ROOT / "crates" / "homeostat" / "tests" / "support" / "otlp_receiver.py"


@pytest.fixture
def receiver():
    try:
        import opentelemetry.proto.collector.trace.v1.trace_service_pb2  # noqa: F401
    except ImportError:
        pytest.fail("opentelemetry-proto is missing: pip install opentelemetry-proto (.ci/run does)")
    d = pathlib.Path(tempfile.mkdtemp(prefix="homeostat-otlp-"))
    spans, port_file = d / "spans.jsonl", d / "port"
    process = subprocess.Popen([sys.executable, str(RECEIVER), str(spans), str(port_file)])
    port = wait_for("the receiver listens", lambda: port_file.exists() and port_file.read_text())
    yield spans, int(port)
    process.kill()
    process.wait()


def received(spans: pathlib.Path):
    if not spans.exists():
        return []
    return [json.loads(line) for line in spans.read_text().splitlines()]


def test_a_report_continues_the_jobs_trace(receiver):
    spans, port = receiver
    server = Server(
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    try:
        admin = Client(server.url, server.admin_key)
        tenant_id = admin.create_tenant("traced")["id"]
        token = admin.create_bootstrap_token(tenant_id)
        reg = Client(server.url).register(token, "py", ["traced"])
        client = Client(server.url, reg.credential)
        trace_id, root = secrets.token_hex(16), secrets.token_hex(8)
        job_id = admin.enqueue(
            "traced", "scan", tenant_id=tenant_id, traceparent=f"00-{trace_id}-{root}-01"
        )["id"]
        seen = {}

        def handler(job, stop):
            seen["traceparent"] = job.traceparent
            return {"ok": True}

        stop = threading.Event()
        thread = threading.Thread(target=lambda: Agent(client, claim_wait=1).run(handler, stop))
        thread.start()
        wait_for("the job succeeded", lambda: admin.job(job_id)["state"] == "succeeded")
        stop.set()
        thread.join(timeout=30)

        def trace():
            mine = [s for s in received(spans) if s["trace_id"] == trace_id]
            names = {s["name"] for s in mine}
            if {"job.claim", "POST /v1/agent/jobs/{id}/complete"} <= names:
                return mine
            return None

        mine = wait_for("the claim and the completion were exported", trace)
        claim = next(s for s in mine if s["name"] == "job.claim")
        completion = next(s for s in mine if s["name"] == "POST /v1/agent/jobs/{id}/complete")
        # The handler was given the claim's span; the report continued it.
        assert seen["traceparent"] == f"00-{trace_id}-{claim['span_id']}-01"
        assert completion["parent_span_id"] == claim["span_id"]
        assert completion["attributes"]["homeostat.job.id"] == job_id
    finally:
        server.stop()
