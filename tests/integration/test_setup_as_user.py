"""scripts/setup-host.sh as a normal user in the docker group, on this machine's real engine:
it finds the engine answering and installs nothing (no root, no apt, no dpkg change)."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.integration

USER = "llmstack-ci-user"


def _dpkg_state() -> str:
    return subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Status}\\n"],
                          capture_output=True, text=True, check=True).stdout


def test_setup_host_as_a_docker_group_user_installs_nothing() -> None:
    assert os.geteuid() == 0, "creating the test user needs root (CI runs as root)"
    grp.getgrnam("docker")  # Debian's docker.io creates the group
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/bin/bash",
                        "--groups", "docker", USER], check=True)
    # The socket must be the group's (dockerd started by hand makes it root:docker 660).
    sock = Path("/var/run/docker.sock")
    assert grp.getgrgid(sock.stat().st_gid).gr_name == "docker"
    folder = Path(tempfile.mkdtemp(prefix="llmstack-setup-"))  # the user must read it
    try:
        folder.chmod(0o755)
        script = folder / "setup-host.sh"
        shutil.copy(REPO / "scripts" / "setup-host.sh", script)
        script.chmod(0o755)
        before = _dpkg_state()
        proc = subprocess.run(["su", "-s", "/bin/bash", USER, "-c", f"bash {script}"],
                              capture_output=True, text=True, timeout=120,
                              env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    finally:
        shutil.rmtree(folder)
    assert proc.returncode == 0, proc.stderr
    assert "docker engine answers" in proc.stderr and "nothing to install" in proc.stderr
    assert _dpkg_state() == before
