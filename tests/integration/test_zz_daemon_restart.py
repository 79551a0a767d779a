"""The Docker daemon goes down under a running stack, then comes back.

Named to run last: it stops the engine every other test uses. It needs a local engine that
scripts/setup-host.sh can start (the CI and developer machines); elsewhere it is skipped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import requests

from tests.helpers import REPO, Stack, wait_for

pytestmark = pytest.mark.integration

PIDFILE = Path("/var/run/docker.pid")


def _dockerd_pid() -> int | None:
    try:
        pid = int(PIDFILE.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def test_daemon_restart_brings_the_stack_back(fresh_stack: Stack) -> None:
    if os.geteuid() != 0 or _dockerd_pid() is None:
        pytest.skip("needs root and a local dockerd started by scripts/setup-host.sh")
    fresh_stack.cli("up", check=True)
    pid = _dockerd_pid()
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    try:
        wait_for(lambda: _dockerd_pid() is None, timeout=60, what="dockerd to stop")
        down = fresh_stack.cli("status")
        assert down.returncode == 2
        assert "cannot reach the Docker engine" in down.stderr
        assert "Traceback" not in down.stderr
    finally:
        subprocess.run(["bash", str(REPO / "scripts" / "setup-host.sh")], check=True,
                       capture_output=True, timeout=180)

    def healthy() -> bool:
        proc = fresh_stack.cli("status", "--json")
        return proc.returncode == 0 and json.loads(proc.stdout)["healthy"]

    # The restart policy brings every container back; nginx retries until its upstreams
    # resolve again.
    wait_for(healthy, timeout=240, interval=2, what="every service healthy after restart")
    resp = requests.post(fresh_stack.base_url + "/chat/completions", timeout=60,
                         headers={"Authorization": f"Bearer {fresh_stack.key}"},
                         json={"model": "deepseek-coder", "max_tokens": 4,
                               "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 200
    assert fresh_stack.cli("up").stdout.startswith("Nothing to do")
