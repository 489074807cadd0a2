"""The agent runtime, with the semantics of the Rust one (homeostat-client's
``Agent``): it claims jobs up to its free capacity with long polls, runs
each in a thread of its own with a handler, heartbeats itself and its
running jobs in one call at the server's interval, stops a job whose
cancellation arrives, whose lease is lost or whose timeout passes, and on
shutdown stops claiming, lets running jobs finish until a grace, then
releases the rest (their attempt does not count). Outcomes the server
cannot take yet are sent again while the job is still the agent's.

A handler is ``handler(job, stop) -> result``: ``stop`` is a
``threading.Event`` set when the job must stop (its result is then
ignored); the result (anything JSON) is kept on the job; raising
:class:`JobError` fails it as it says, any other exception fails it as
retryable.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

from .client import ApiError, ClaimedJob, Client

__all__ = ["Agent", "AgentReport", "JobError"]

log = logging.getLogger("homeostat.agent")

Handler = Callable[[ClaimedJob, threading.Event], Any]

# Retries of an outcome the server could not take: until it is taken, or
# the job is no longer the agent's.
_RESEND_FIRST, _RESEND_MAX = 0.2, 5.0

# Why a job stopped that shutdown gives back (counted as released).
_PAST_GRACE = "shutting down past the grace"


class JobError(Exception):
    """A job's failure: ``retryable`` ones run again after the server's
    backoff while attempts are left; the others go dead."""

    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


@dataclass
class AgentReport:
    """What a run did."""

    completed: int = 0
    failed: int = 0
    stopped: int = 0
    released: int = 0


class _Running:
    def __init__(self, job: ClaimedJob, lease_until: float) -> None:
        self.job = job
        self.stop = threading.Event()
        self.why: Optional[str] = None  # why it was stopped
        self.thread: Optional[threading.Thread] = None
        # When its lease runs out at the earliest (monotonic), as this agent
        # knows it: from when the claim was answered, or the last heartbeat
        # that extended it was sent.
        self.lease_until = lease_until


def _stop_margin(ttl: float) -> float:
    """How long before its lease runs out a job this agent could not extend
    is stopped: a quarter of the lease, at least a second."""
    return min(max(ttl / 4, 1.0), ttl / 2)


class Agent:
    """Runs jobs for a registered agent: ``client`` carries its credential."""

    def __init__(
        self,
        client: Client,
        *,
        concurrency: int = 1,
        queues: Optional[Sequence[str]] = None,
        claim_wait: int = 30,
        grace: float = 30.0,
    ) -> None:
        if not 1 <= concurrency <= 100:
            raise ValueError("concurrency must be within 1..=100")
        if not 0 <= claim_wait <= 50:
            raise ValueError("claim_wait must be within 0..=50 seconds")
        self.client = client
        self.concurrency = concurrency
        self.queues = list(queues) if queues is not None else None
        self.claim_wait = claim_wait
        self.grace = grace
        self.incarnation = uuid.uuid4()
        self._lock = threading.Lock()
        self._running: Dict[str, _Running] = {}
        self._free = threading.Semaphore(concurrency)
        self._report = AgentReport()
        self._drained = threading.Event()
        self._heartbeat_every = 10.0
        self._lease_ttl = 0.0  # from the heartbeat replies

    @property
    def draining(self) -> bool:
        """Whether an operator drained the agent (heard in a heartbeat)."""
        return self._drained.is_set()

    # --- the run -----------------------------------------------------------

    def run(self, handler: Handler, stop: threading.Event) -> AgentReport:
        """Runs jobs until ``stop`` is set (or an operator drains the agent
        and its jobs are done), then shuts down as the module says."""
        # The first heartbeat tells the lease before anything is claimed;
        # a server out of reach is waited for, a refused credential is final.
        pause = 1.0
        while not stop.is_set():
            try:
                reply = self.client.heartbeat([], self.incarnation)
            except ApiError as e:
                if not e.transient:
                    raise
                log.warning("the control plane is out of reach; trying again: %s", e)
                stop.wait(pause)
                pause = min(pause * 2, 30.0)
                continue
            self._heartbeat_every = float(reply.heartbeat_interval_secs or 10)
            self._lease_ttl = float(reply.lease_ttl_secs)
            break
        if stop.is_set():
            return self._report
        beating = threading.Thread(target=self._heartbeats, args=(stop,), daemon=True, name="homeostat-heartbeat")
        beating.start()
        watching = threading.Thread(target=self._keep_to_leases, args=(stop,), daemon=True, name="homeostat-leases")
        watching.start()
        claiming = threading.Thread(
            target=self._claims, args=(handler, stop), daemon=True, name="homeostat-claims"
        )
        claiming.start()
        while not stop.is_set():
            if self._drained.is_set() and not self._held():
                break
            stop.wait(0.1)
        stop.set()
        self._shut_down()
        return self._report

    def _claims(self, handler: Handler, stop: threading.Event) -> None:
        backoff = 0.5
        while not stop.is_set() and not self._drained.is_set():
            # Capacity first: a claim asks only for what can run now.
            if not self._free.acquire(timeout=0.2):
                continue
            free = 1
            while free < self.concurrency and self._free.acquire(blocking=False):
                free += 1
            try:
                jobs = self.client.claim(free, self.claim_wait, self.queues)
                # A long poll waits before the server claims: the leases
                # start when it answers.
                answered = time.monotonic()
                backoff = 0.5
            except ApiError as e:
                for _ in range(free):
                    self._free.release()
                log.warning("claim failed, retrying in %.1fs: %s", backoff, e)
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            for _ in range(free - len(jobs)):
                self._free.release()
            for job in jobs:
                if stop.is_set():
                    # Claimed while shutting down: given back at once.
                    self._release(job)
                    self._free.release()
                    continue
                self._start(job, handler, answered + self._lease_ttl)

    def _start(self, job: ClaimedJob, handler: Handler, lease_until: float) -> None:
        running = _Running(job, lease_until)
        with self._lock:
            self._running[job.id] = running
        running.thread = threading.Thread(
            target=self._work, args=(running, handler), daemon=True, name=f"homeostat-job-{job.id}"
        )
        running.thread.start()

    def _work(self, running: _Running, handler: Handler) -> None:
        job = running.job
        timer = None
        if job.timeout_secs:
            timer = threading.Timer(job.timeout_secs, self._stop_job, args=(job.id, "timed out"))
            timer.daemon = True
            timer.start()
        outcome: Any
        try:
            outcome = ("complete", handler(job, running.stop))
        except JobError as e:
            outcome = ("fail", e.message, e.retryable)
        except Exception as e:  # noqa: BLE001 - a handler's bug fails its job, not the agent
            outcome = ("fail", f"{type(e).__name__}: {e}", True)
        finally:
            if timer is not None:
                timer.cancel()
        try:
            if running.stop.is_set():
                # Cancelled, lost, timed out, or past the grace: the server
                # decides this job's fate, not its result.
                if running.why != _PAST_GRACE:
                    with self._lock:
                        self._report.stopped += 1
                log.info("job %s stopped: %s", job.id, running.why)
                return
            self._send(job, outcome, running.stop)
        finally:
            with self._lock:
                self._running.pop(job.id, None)
            self._free.release()

    def _send(self, job: ClaimedJob, outcome: Any, stopped: threading.Event) -> None:
        wait = _RESEND_FIRST
        while True:
            try:
                if outcome[0] == "complete":
                    self.client.complete(job, outcome[1])
                    with self._lock:
                        self._report.completed += 1
                else:
                    self.client.fail(job, outcome[1], outcome[2])
                    with self._lock:
                        self._report.failed += 1
                return
            except ApiError as e:
                if not e.transient:
                    # Stale (reclaimed meanwhile) or refused: not ours to report.
                    log.warning("outcome of job %s not taken: %s", job.id, e)
                    return
                if stopped.wait(wait):
                    return  # lost or cancelled meanwhile
                wait = min(wait * 2, _RESEND_MAX)

    # --- heartbeats ----------------------------------------------------------

    def _held(self) -> List[ClaimedJob]:
        with self._lock:
            return [r.job for r in self._running.values()]

    def _heartbeats(self, stop: threading.Event) -> None:
        while True:
            held = self._held()
            sent = time.monotonic()
            try:
                reply = self.client.heartbeat(held, self.incarnation)
            except ApiError as e:
                log.warning("heartbeat failed: %s", e)
                wait = 0.25  # sent again soon, not an interval later
            else:
                self._heartbeat_every = float(reply.heartbeat_interval_secs or 10)
                self._lease_ttl = float(reply.lease_ttl_secs)
                wait = self._heartbeat_every
                gone = set(reply.lost) | set(reply.cancelled)
                with self._lock:
                    for job in held:
                        running = self._running.get(job.id)
                        if running is not None and job.id not in gone:
                            running.lease_until = max(running.lease_until, sent + self._lease_ttl)
                if reply.drain and not self._drained.is_set():
                    log.info("drained by an operator: finishing what is held, claiming nothing")
                    self._drained.set()
                for job_id in reply.cancelled:
                    self._stop_job(job_id, "cancelled")
                for job_id in reply.lost:
                    self._stop_job(job_id, "lease lost")
            # Beats go on through shutdown: held jobs keep their leases
            # while they finish within the grace.
            if stop.is_set() and not self._held():
                return
            end = time.monotonic() + wait
            while time.monotonic() < end:
                if stop.is_set() and not self._held():
                    return
                time.sleep(min(0.1, max(0.0, end - time.monotonic())))

    def _keep_to_leases(self, stop: threading.Event) -> None:
        """Stops every job whose lease this agent could not extend in time,
        before the server may give it to another agent."""
        while not (stop.is_set() and not self._held()):
            time.sleep(0.1)
            ttl = self._lease_ttl
            if not ttl:
                continue
            now, margin = time.monotonic(), _stop_margin(ttl)
            with self._lock:
                late = [r.job.id for r in self._running.values() if r.lease_until - margin <= now]
            for job_id in late:
                log.warning("job %s: its lease could not be extended in time; stopping it", job_id)
                self._stop_job(job_id, "its lease could not be extended in time")

    def _stop_job(self, job_id: str, why: str) -> None:
        with self._lock:
            running = self._running.get(job_id)
        if running is not None and not running.stop.is_set():
            running.why = why
            running.stop.set()

    # --- shutdown ------------------------------------------------------------

    def _shut_down(self) -> None:
        deadline = time.monotonic() + self.grace
        while self._held() and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._lock:
            left = list(self._running.values())
        for running in left:
            running.why = _PAST_GRACE
            running.stop.set()
            if self._release(running.job):
                with self._lock:
                    self._report.released += 1
        for running in left:
            if running.thread is not None:
                running.thread.join(timeout=5)

    def _release(self, job: ClaimedJob) -> bool:
        try:
            self.client.release(job)
            return True
        except ApiError as e:
            log.warning("could not give job %s back (its lease will run out): %s", job.id, e)
            return False
