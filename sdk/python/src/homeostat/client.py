"""A typed client of homeostat's HTTP API (docs/api.md; the contract is
``/openapi.json``): jobs for tenants and operators, and the agent protocol.

Errors the server answers come back as :class:`ApiError` with the stable
``code`` of its JSON error body; a server that cannot be reached is an
:class:`ApiError` with ``status`` 0 and code ``unreachable``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

__all__ = ["ApiError", "ClaimedJob", "Client", "HeartbeatReply", "Registration"]

JSON = Any


class ApiError(Exception):
    """An answer that is not a success, or no answer at all."""

    def __init__(self, operation: str, status: int, code: str, message: str) -> None:
        super().__init__(f"{operation}: {message} ({status} {code})")
        self.operation = operation
        self.status = status
        self.code = code
        self.message = message

    @property
    def transient(self) -> bool:
        """Whether sending the same request again may succeed."""
        return self.status in (0, 408, 429, 502, 503, 504)


@dataclass(frozen=True)
class ClaimedJob:
    """A job an agent claimed: run it, then report it under ``lease_token``."""

    id: str
    tenant_id: str
    queue: str
    kind: str
    payload: JSON
    attempt: int
    max_attempts: int
    lease_token: int
    timeout_secs: int
    #: The W3C trace context it was enqueued with: continue the trace.
    traceparent: Optional[str] = None
    raw: Mapping[str, JSON] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, j: Mapping[str, JSON]) -> "ClaimedJob":
        return cls(
            id=j["id"],
            tenant_id=j["tenant_id"],
            queue=j["queue"],
            kind=j["kind"],
            payload=j.get("payload"),
            attempt=j["attempt"],
            max_attempts=j["max_attempts"],
            lease_token=j["lease_token"],
            timeout_secs=j.get("timeout_secs", 0),
            traceparent=j.get("traceparent"),
            raw=j,
        )


@dataclass(frozen=True)
class Registration:
    """What registering an agent gave: its id and its credential (a secret)."""

    agent_id: str
    credential: str
    tenant_id: Optional[str]

    def __repr__(self) -> str:  # the credential never prints
        return f"Registration(agent_id={self.agent_id!r}, tenant_id={self.tenant_id!r})"


@dataclass(frozen=True)
class HeartbeatReply:
    """The server's answer to a heartbeat."""

    heartbeat_interval_secs: int
    lease_ttl_secs: int
    drain: bool
    lost: List[str]
    cancelled: List[str]


class Client:
    """A client of the server at ``base_url`` (``http://host:8080``) with an
    API key or an agent's credential as ``token``."""

    def __init__(self, base_url: str, token: Optional[str] = None, timeout: float = 30.0) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"the server URL must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout = timeout

    def __repr__(self) -> str:  # the token never prints
        return f"Client({self.base_url!r})"

    def with_token(self, token: str) -> "Client":
        """The same server with another credential."""
        return Client(self.base_url, token, self.timeout)

    # --- transport -------------------------------------------------------

    def _call(
        self,
        operation: str,
        method: str,
        path: str,
        body: Optional[JSON] = None,
        timeout: Optional[float] = None,
        headers: Optional[Mapping[str, str]] = None,
    ) -> JSON:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("accept", "application/json")
        req.add_header("user-agent", "homeostat-python/0.1.0")
        if data is not None:
            req.add_header("content-type", "application/json")
        if self._token:
            req.add_header("authorization", f"Bearer {self._token}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as res:
                text = res.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                err = json.loads(raw)
                code, message = err.get("code", "unknown"), err.get("message", "")
            except ValueError:
                code, message = "unknown", raw.decode(errors="replace")[:500]
            raise ApiError(operation, e.code, code, message) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ApiError(operation, 0, "unreachable", f"the server did not answer: {reason}") from None
        return json.loads(text) if text else None

    # --- jobs --------------------------------------------------------------

    def enqueue(
        self,
        queue: str,
        kind: str,
        payload: JSON = None,
        *,
        tenant_id: Optional[str] = None,
        idempotency_key: Optional[str] = None,
        **options: JSON,
    ) -> Dict[str, JSON]:
        """Enqueues one job (``options``: priority, fingerprint, max_attempts,
        timeout_secs, run_at, deadline, limits, …): its id, and whether it
        was deduplicated by fingerprint. An admin key names the tenant."""
        job: Dict[str, JSON] = {"queue": queue, "kind": kind, **options}
        if payload is not None:
            job["payload"] = payload
        if tenant_id is not None:
            job["tenant_id"] = tenant_id
        headers = {"idempotency-key": idempotency_key} if idempotency_key else None
        return self._call("enqueueing a job", "POST", "/v1/jobs", job, headers=headers)

    def enqueue_batch(
        self, jobs: Sequence[Mapping[str, JSON]], *, tenant_id: Optional[str] = None
    ) -> List[Dict[str, JSON]]:
        """Enqueues up to 1,000 jobs at once, all or none; one answer each."""
        body: Dict[str, JSON] = {"jobs": list(jobs)}
        if tenant_id is not None:
            body["tenant_id"] = tenant_id
        return self._call("enqueueing jobs", "POST", "/v1/jobs", body)["jobs"]

    def job(self, job_id: str) -> Dict[str, JSON]:
        """One job, with its attempts."""
        return self._call("reading a job", "GET", f"/v1/jobs/{_seg(job_id)}")

    def jobs(
        self,
        *,
        state: Optional[str] = None,
        queue: Optional[str] = None,
        kind: Optional[str] = None,
        limit: int = 100,
    ) -> List[Dict[str, JSON]]:
        """Jobs, newest first, every page."""
        params: Dict[str, JSON] = {"limit": limit}
        for k, v in (("state", state), ("queue", queue), ("kind", kind)):
            if v is not None:
                params[k] = v
        out: List[Dict[str, JSON]] = []
        while True:
            page = self._call("listing jobs", "GET", "/v1/jobs?" + urllib.parse.urlencode(params))
            out.extend(page["items"])
            if not page.get("next_cursor"):
                return out
            params["after"] = page["next_cursor"]

    def cancel(self, job_id: str) -> Dict[str, JSON]:
        """Cancels a live job (a running one's agent stops it at its next
        heartbeat)."""
        return self._call("cancelling a job", "POST", f"/v1/jobs/{_seg(job_id)}/cancel", {})

    # --- operators ---------------------------------------------------------

    def create_tenant(self, name: str, tier: Optional[str] = None) -> Dict[str, JSON]:
        """A tenant (admin key)."""
        body: Dict[str, JSON] = {"name": name}
        if tier:
            body["tier"] = tier
        return self._call("creating a tenant", "POST", "/v1/tenants", body)

    def create_bootstrap_token(self, tenant_id: Optional[str], uses: int = 1) -> str:
        """A bootstrap token for ``uses`` agents of the tenant (none: platform
        agents); its secret, shown once (admin key)."""
        body = {"tenant_id": tenant_id, "uses": uses}
        return self._call("creating a bootstrap token", "POST", "/v1/bootstrap-tokens", body)["secret"]

    def drain_agent(self, agent_id: str) -> Dict[str, JSON]:
        """Tells an agent to finish what it holds and claim nothing more."""
        return self._call("draining an agent", "POST", f"/v1/agents/{_seg(agent_id)}/drain", {})

    # --- the agent protocol -------------------------------------------------

    def register(
        self,
        bootstrap_token: str,
        name: str,
        queues: Sequence[str],
        labels: Optional[Mapping[str, str]] = None,
    ) -> Registration:
        """Registers an agent with a bootstrap token."""
        body = {
            "bootstrap_token": bootstrap_token,
            "agent": {"name": name, "queues": list(queues), "labels": dict(labels or {})},
        }
        r = self._call("registering an agent", "POST", "/v1/agent/register", body)
        return Registration(r["agent_id"], r["credential"], r.get("tenant_id"))

    def claim(
        self, capacity: int, wait_secs: int = 0, queues: Optional[Sequence[str]] = None
    ) -> List[ClaimedJob]:
        """Up to ``capacity`` jobs, waiting up to ``wait_secs`` (50 at most)
        for one when none is queued (a long poll)."""
        body: Dict[str, JSON] = {"capacity": capacity, "wait_secs": wait_secs}
        if queues is not None:
            body["queues"] = list(queues)
        r = self._call("claiming jobs", "POST", "/v1/agent/claim", body, timeout=wait_secs + 15)
        return [ClaimedJob.from_json(j) for j in r["jobs"]]

    def heartbeat(self, held: Sequence[ClaimedJob], incarnation: Optional[uuid.UUID] = None) -> HeartbeatReply:
        """The agent is alive and still works on ``held``: their leases are
        extended; the reply says what to stop."""
        body: Dict[str, JSON] = {"jobs": [{"id": j.id, "lease_token": j.lease_token} for j in held]}
        if incarnation is not None:
            body["incarnation"] = str(incarnation)
        r = self._call("heartbeating", "POST", "/v1/agent/heartbeat", body)
        return HeartbeatReply(
            r["heartbeat_interval_secs"], r["lease_ttl_secs"], r["drain"], r["lost"], r["cancelled"]
        )

    def complete(self, job: ClaimedJob, result: JSON = None) -> Dict[str, JSON]:
        """Reports success (safe to send again: a resend answers the job)."""
        body: Dict[str, JSON] = {"lease_token": job.lease_token}
        if result is not None:
            body["result"] = result
        path = f"/v1/agent/jobs/{_seg(job.id)}/complete"
        return self._call("completing a job", "POST", path, body, headers=_trace(job))

    def fail(self, job: ClaimedJob, error: str, retryable: bool = True) -> Dict[str, JSON]:
        """Reports a failure: retried after the server's backoff while
        attempts are left and ``retryable``, else dead."""
        body = {"lease_token": job.lease_token, "error": error, "retryable": retryable}
        path = f"/v1/agent/jobs/{_seg(job.id)}/fail"
        return self._call("failing a job", "POST", path, body, headers=_trace(job))

    def release(self, job: ClaimedJob) -> None:
        """Gives a job back to its queue; its attempt does not count."""
        body = {"lease_token": job.lease_token, "reason": "shutdown"}
        path = f"/v1/agent/jobs/{_seg(job.id)}/release"
        self._call("releasing a job", "POST", path, body, headers=_trace(job))


def _trace(job: ClaimedJob) -> Optional[Dict[str, str]]:
    """The job's trace context for a report on it: a server exporting
    traces makes the report's span a child of the job's claim
    (docs/telemetry.md). A handler that makes spans of its own continues
    ``job.traceparent`` itself."""
    return {"traceparent": job.traceparent} if job.traceparent else None


def _seg(value: str) -> str:
    return urllib.parse.quote(str(value), safe="")
