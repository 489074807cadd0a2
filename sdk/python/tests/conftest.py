"""A real `homeostat run` for the tests: a fresh SQLite data directory, a
free port, agents heartbeating every second. The binary is HOMEOSTAT_BIN,
or this repository's debug build."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import tempfile
import threading
import time
from typing import Iterator, Tuple

import pytest

from homeostat import Client

ROOT = pathlib.Path(__file__).resolve().parents[3]


class Server:
    def __init__(self, **extra_env: str) -> None:
        binary = os.environ.get("HOMEOSTAT_BIN", str(ROOT / "target" / "debug" / "homeostat"))
        self.dir = tempfile.mkdtemp(prefix="homeostat-sdk-")
        env = {
            k: v for k, v in os.environ.items() if not k.startswith("HOMEOSTAT_")
        }
        env.update(
            HOMEOSTAT_LOG_FORMAT="json",
            HOMEOSTAT_API__HEARTBEAT_INTERVAL="1s",
            HOMEOSTAT_API__LEASE_TTL="5s",
            **extra_env,
        )
        self.process = subprocess.Popen(
            [binary, "run", "--listen", "127.0.0.1:0", "--data-dir", self.dir],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.admin_key = self.process.stdout.readline().strip()  # the notice
        while not self.admin_key.startswith("hsk_"):
            self.admin_key = self.process.stdout.readline().strip()
        self.address = ""
        deadline = time.monotonic() + 60
        while not self.address:
            line = self.process.stderr.readline()
            assert line, "the server exited before it listened"
            assert time.monotonic() < deadline, "the server never listened"
            try:
                fields = json.loads(line).get("fields", {})
            except ValueError:
                continue
            if fields.get("message") == "homeostat listening":
                self.address = fields["address"]
        # Keep draining its logs so it never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()
        self.url = f"http://{self.address}"

    def _drain(self) -> None:
        for _ in self.process.stderr:
            pass

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.stop()


@pytest.fixture
def admin(server: Server) -> Client:
    return Client(server.url, server.admin_key)


@pytest.fixture
def tenant(admin: Client, request: pytest.FixtureRequest) -> Tuple[str, Client]:
    """A tenant of this test's own, and a client with an admin key naming it."""
    t = admin.create_tenant(request.node.name[:60])
    return t["id"], admin


def wait_for(what: str, condition, within: float = 20.0):
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)
