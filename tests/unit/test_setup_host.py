"""scripts/setup-host.sh on the hosts users have, driven through stub commands.

No Docker CE can be installed here, so the hosts are recorded: what `dpkg-query`, `docker`,
`id`, `systemctl` answer on each kind of host (Ubuntu with Docker CE, a normal user in the docker
group, a fresh Debian root, a Mac without dpkg). The stubs log every call, so the tests see what
the script would have installed or started.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "setup-host.sh"

# `docker info` / `docker version` of an engine that answers (recorded on Docker CE 27.3.1).
DOCKER_ANSWERS = """#!/bin/bash
echo "docker $*" >> "$CALLS"
case "$1" in
  info) echo "Server Version: 27.3.1"; exit 0 ;;
  version) echo "27.3.1"; exit 0 ;;
esac
"""
DOCKER_SILENT = """#!/bin/bash
echo "docker $*" >> "$CALLS"
echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock." >&2
exit 1
"""


def _stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(body)
    path.chmod(0o755)


def _dpkg(installed: set[str]) -> str:
    cases = "\n".join(f'  {pkg}) echo -n "install ok installed"; exit 0 ;;' for pkg in installed)
    return f"""#!/bin/bash
echo "dpkg-query $*" >> "$CALLS"
pkg="${{@: -1}}"
case "$pkg" in
{cases}
esac
echo "dpkg-query: no packages found matching $pkg" >&2
exit 1
"""


def run(tmp_path: Path, *, docker: str | None, uid: int, installed: set[str] | None,
        extra: dict[str, str] | None = None, env: dict[str, str] | None = None
        ) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """setup-host.sh with only the stubs (and bash's own basics) on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    calls.touch()
    if docker is not None:
        _stub(bin_dir, "docker", docker)
    _stub(bin_dir, "id", f'#!/bin/bash\necho {uid}\n')
    if installed is not None:
        _stub(bin_dir, "dpkg-query", _dpkg(installed))
    for tool in ("apt-get", "dockerd", "systemctl"):
        if tool in (extra or {}):
            _stub(bin_dir, tool, (extra or {})[tool])
    for tool in ("cat", "rm", "sleep", "tail", "printf", "nohup", "touch", "basename"):
        real = subprocess.run(["bash", "-c", f"command -v {tool}"], capture_output=True,
                              text=True).stdout.strip()
        if real and real.startswith("/"):
            os.symlink(real, bin_dir / tool)
    full_env = {"PATH": str(bin_dir), "CALLS": str(calls), "DOCKER_WAIT_S": "2",
                "DOCKERD_LOG": str(tmp_path / "dockerd.log"),
                "DOCKER_PIDFILE": str(tmp_path / "docker.pid"), **(env or {})}
    proc = subprocess.run(["/bin/bash", str(SCRIPT)], env=full_env, capture_output=True,
                          text=True, timeout=60)
    return proc, calls.read_text().splitlines()


RECORD = '#!/bin/bash\necho "$(basename "$0") $*" >> "$CALLS"\n'


@pytest.mark.parametrize("uid", [0, 1000])
def test_an_engine_that_answers_is_left_alone_root_or_not(tmp_path: Path, uid: int) -> None:
    """Ubuntu with Docker CE (or a user in the docker group): nothing installed or started."""
    proc, calls = run(tmp_path, docker=DOCKER_ANSWERS, uid=uid, installed={"docker-ce"},
                      extra={"apt-get": RECORD, "dockerd": RECORD, "systemctl": RECORD})
    assert proc.returncode == 0, proc.stderr
    assert "nothing to install" in proc.stderr
    assert not [c for c in calls if c.split()[0] in ("apt-get", "dockerd", "systemctl")]


def test_docker_ce_installed_but_stopped_is_started_never_replaced(tmp_path: Path) -> None:
    """Docker CE installed (dpkg says so), engine down, root with systemd: start it."""
    flag = tmp_path / "started"
    docker = f"""#!/bin/bash
echo "docker $*" >> "$CALLS"
[ -e {flag} ] && exit 0
exit 1
"""
    systemctl = f'#!/bin/bash\necho "systemctl $*" >> "$CALLS"\ntouch {flag}\n'
    proc, calls = run(tmp_path, docker=docker, uid=0, installed={"docker-ce", "containerd.io"},
                      extra={"apt-get": RECORD, "systemctl": systemctl},
                      env={"SYSTEMD_DIR": str(tmp_path)})  # systemd runs
    assert proc.returncode == 0, proc.stderr
    assert "systemctl start docker" in calls
    assert not [c for c in calls if c.startswith("apt-get")]
    assert "engine installed (docker-ce)" in proc.stderr


def test_a_user_whose_engine_is_down_is_told_how_to_start_it(tmp_path: Path) -> None:
    proc, calls = run(tmp_path, docker=DOCKER_SILENT, uid=1000, installed={"docker-ce"},
                      extra={"apt-get": RECORD})
    assert proc.returncode == 1
    assert "is installed (docker-ce) but does not answer" in proc.stderr
    assert "docker group" in proc.stderr
    assert not [c for c in calls if c.startswith("apt-get")]


def test_a_fresh_debian_root_gets_docker_io(tmp_path: Path) -> None:
    """No engine package, no dockerd: as root on an apt host, docker.io is installed."""
    flag = tmp_path / "installed"
    apt = f'#!/bin/bash\necho "apt-get $*" >> "$CALLS"\ntouch {flag}\n'
    docker = f"""#!/bin/bash
echo "docker $*" >> "$CALLS"
[ -e {flag} ] && exit 0
exit 1
"""
    proc, calls = run(tmp_path, docker=docker, uid=0, installed=set(), extra={"apt-get": apt})
    assert proc.returncode == 0, proc.stderr
    assert "apt-get install -y docker.io" in calls


@pytest.mark.parametrize(("uid", "installed"), [(1000, set()), (0, None)])
def test_without_an_engine_a_normal_user_or_a_host_without_apt_gets_instructions(
        tmp_path: Path, uid: int, installed: set[str] | None) -> None:
    proc, calls = run(tmp_path, docker=None, uid=uid, installed=installed)
    assert proc.returncode == 1
    assert "no Docker engine here" in proc.stderr and "DOCKER_HOST" in proc.stderr
    assert not [c for c in calls if c.startswith("apt-get")]


def test_refusing_engine_installs_is_honoured(tmp_path: Path) -> None:
    proc, calls = run(tmp_path, docker=DOCKER_SILENT, uid=0, installed=set(),
                      extra={"apt-get": RECORD}, env={"LLMSTACK_NO_ENGINE_INSTALL": "1"})
    assert proc.returncode == 1 and "LLMSTACK_NO_ENGINE_INSTALL=1" in proc.stderr
    assert not [c for c in calls if c.startswith("apt-get")]


def test_the_user_setup_installs_no_test_tools() -> None:
    """sshd, host nginx, docker-compose and debootstrap belong to the test setup alone."""
    user = (SCRIPT.parent / "install.sh").read_text() + SCRIPT.read_text()
    for tool in ("openssh-server", "nginx-light", "docker-compose"):
        assert tool not in user
    tests = (SCRIPT.parent / "setup-test-host.sh").read_text()
    for tool in ("openssh-server", "nginx-light", "docker-compose", "debootstrap"):
        assert tool in tests
    assert "setup-test-host.sh" in (SCRIPT.parent / "test.sh").read_text()


def test_systemctl_without_systemd_starts_dockerd_itself(tmp_path: Path) -> None:
    """A container or CI machine: systemctl installed, systemd not running (the CI case)."""
    flag = tmp_path / "started"
    docker = f"""#!/bin/bash
echo "docker $*" >> "$CALLS"
[ -e {flag} ] && exit 0
exit 1
"""
    dockerd = f'#!/bin/bash\necho "dockerd $*" >> "$CALLS"\ntouch {flag}\nexec sleep 5\n'
    proc, calls = run(tmp_path, docker=docker, uid=0, installed={"docker.io"},
                      extra={"apt-get": RECORD, "systemctl": RECORD, "dockerd": dockerd},
                      env={"SYSTEMD_DIR": str(tmp_path / "no-systemd")})
    assert proc.returncode == 0, proc.stderr
    assert "dockerd " in calls and not [c for c in calls if c.startswith(("apt-get", "systemctl"))]
