"""The README's ten-line agent, run as written (the server's URL and a
real bootstrap token put in) until SIGTERM."""

import os
import pathlib
import re
import signal
import subprocess
import sys

from conftest import wait_for

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_the_readmes_agent_runs_jobs_and_stops_on_sigterm(server, tenant):
    tenant_id, admin = tenant
    block = re.search(r"## A ten-line agent\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    code_lines = [l for l in block.splitlines() if l.strip()]
    assert len(code_lines) <= 12, "ten lines, and the imports"
    code = block.replace("http://127.0.0.1:8080", server.url).replace(
        "hbt_…", admin.create_bootstrap_token(tenant_id)
    )
    agent = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    good = admin.enqueue("scans", "full-scan", {"target": "10.0.0.0/24"}, tenant_id=tenant_id)
    bad = admin.enqueue("scans", "full-scan", {}, tenant_id=tenant_id)
    wait_for("both ran", lambda: (admin.job(good["id"])["state"], admin.job(bad["id"])["state"])
             == ("succeeded", "dead"))
    agent.send_signal(signal.SIGTERM)
    out, err = agent.communicate(timeout=30)
    assert agent.returncode == 0, err
    assert "completed=1, failed=1" in out, out
    assert admin.job(good["id"])["result"] == {"findings": 0}
