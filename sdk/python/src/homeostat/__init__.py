"""homeostat for Python: a typed client of the HTTP API and an agent runtime
with the semantics of the Rust one (homeostat-client's `Agent`)."""

from .agent import Agent, AgentReport, JobError
from .client import ApiError, ClaimedJob, Client, Registration

__all__ = [
    "Agent",
    "AgentReport",
    "ApiError",
    "ClaimedJob",
    "Client",
    "JobError",
    "Registration",
]
