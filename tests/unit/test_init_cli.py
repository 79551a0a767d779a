"""`llmstack init` and the CLI's user-facing behaviour, through the real command (a separate
process with CI=true and no TTY, as a user or a CI job runs it). No Docker needed."""

from __future__ import annotations

import json
import re
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

import llmstack
from llmstack import initialize, secrets, tls
from tests.helpers import REPO, cli

FILES = [".env", "certs/ca.crt", "certs/tls.crt", "certs/tls.key"]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def snapshot(root: Path) -> dict[str, bytes]:
    return {name: (root / name).read_bytes() for name in [*FILES, "stack.yaml"]}


def assert_no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    cli("init", str(root), check=True)
    return root


# --- init ---------------------------------------------------------------------------------------


def test_init_in_an_empty_folder(tmp_path: Path) -> None:
    proc = cli("init", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^created\s+\S*stack\.yaml$", proc.stdout, re.M)
    assert re.search(r"^created\s+\S*\.env$", proc.stdout, re.M)
    assert "SANs: localhost, 127.0.0.1" in proc.stdout
    assert (tmp_path / "stack.yaml").read_text() == initialize.starter()
    assert mode(tmp_path / ".env") == 0o600
    keys = secrets.load_keys(tmp_path / ".env")
    assert keys.master not in proc.stdout + proc.stderr  # never printed
    assert mode(tmp_path / "certs" / "tls.key") == 0o600
    assert not (tmp_path / "certs" / "ca.key").exists()  # the CA key is used once, not kept
    assert tls.inspect(tmp_path / "certs").names == ["localhost", "127.0.0.1", "::1"]
    assert ".env" in (tmp_path / ".gitignore").read_text().splitlines()
    # The new folder validates as it is.
    assert cli("validate", cwd=tmp_path).returncode == 0


def test_init_with_a_domain_puts_it_on_the_certificate_and_in_stack_yaml(tmp_path: Path) -> None:
    cli("init", str(tmp_path), "--domain", "api.example.com", check=True)
    assert yaml.safe_load((tmp_path / "stack.yaml").read_text())["domain"] == "api.example.com"
    out = subprocess.run(["openssl", "x509", "-in", str(tmp_path / "certs" / "tls.crt"),
                          "-noout", "-ext", "subjectAltName"], capture_output=True, text=True,
                         check=True).stdout
    assert "DNS:api.example.com" in out and "DNS:localhost" in out and "IP Address:127.0.0.1" \
        in out


def test_second_init_keeps_every_secret_byte_identical(project: Path) -> None:
    before = snapshot(project)
    proc = cli("init", str(project))
    assert proc.returncode == 0, proc.stderr
    assert snapshot(project) == before
    assert re.search(r"^kept\s+\S*\.env\s+\(existing keys kept", proc.stdout, re.M)
    assert re.search(r"^kept\s+\S*tls\.crt\s+\(existing certificate kept", proc.stdout, re.M)
    assert re.search(r"^kept\s+\S*stack\.yaml", proc.stdout, re.M)
    assert not list(project.glob(".env.bak-*"))


def test_force_backs_up_and_regenerates_secrets(project: Path) -> None:
    before = snapshot(project)
    old_keys = secrets.load_keys(project / ".env")
    proc = cli("init", str(project), "--force")
    assert proc.returncode == 0, proc.stderr
    assert "regenerated" in proc.stdout and "backed up" in proc.stdout
    new_keys = secrets.load_keys(project / ".env")
    assert new_keys.master != old_keys.master and new_keys.internal != old_keys.internal
    assert mode(project / ".env") == 0o600
    backups = list(project.glob(".env.bak-*"))
    assert len(backups) == 1
    assert backups[0].read_bytes() == before[".env"]
    assert mode(backups[0]) == 0o600
    for name in ("ca.crt", "tls.crt", "tls.key"):
        saved = list((project / "certs").glob(f"{name}.bak-*"))
        assert len(saved) == 1, name
        assert saved[0].read_bytes() == before[f"certs/{name}"]
        assert (project / "certs" / name).read_bytes() != before[f"certs/{name}"]
        if name.endswith(".key"):
            assert mode(saved[0]) == 0o600, name
    assert (project / "stack.yaml").read_bytes() == before["stack.yaml"]


def test_force_twice_keeps_both_backups(project: Path) -> None:
    cli("init", str(project), "--force", check=True)
    cli("init", str(project), "--force", check=True)
    assert len(list(project.glob(".env.bak-*"))) == 2
    assert len(list((project / "certs").glob("tls.key.bak-*"))) == 2


def test_users_stack_yaml_is_never_overwritten(tmp_path: Path) -> None:
    mine = "# my own stack, not valid on purpose\nproject: [\n"
    (tmp_path / "stack.yaml").write_text(mine)
    for args in (("init",), ("init", "--force"), ("init", "--profile", "gpu", "--force")):
        proc = cli(*args, str(tmp_path))
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "stack.yaml").read_text() == mine
        assert "never overwritten" in proc.stdout


def test_init_refuses_a_world_readable_env(project: Path) -> None:
    (project / ".env").chmod(0o644)
    before = (project / ".env").read_bytes()
    proc = cli("init", str(project))
    assert proc.returncode == 1
    assert f"error: {project / '.env'} is readable by other users (mode 0644)" in proc.stderr
    assert f"hint: run: chmod 600 {project / '.env'}" in proc.stderr
    assert (project / ".env").read_bytes() == before
    assert_no_traceback(proc)


def test_init_reports_a_corrupt_env_line_without_its_value(project: Path) -> None:
    env = project / ".env"
    lines = [*env.read_text().splitlines(), "sk-oops-pasted-secret"]
    env.write_text("\n".join(lines) + "\n")
    proc = cli("init", str(project))
    assert proc.returncode == 1
    assert f"{env}:{len(lines)}: not a KEY=VALUE line" in proc.stderr
    assert "oops-pasted-secret" not in proc.stderr + proc.stdout
    assert_no_traceback(proc)


@pytest.mark.parametrize(("args", "message"), [
    (("--domain", "bad;domain"), "--domain 'bad;domain' must be a DNS name"),
    (("--domain", "::1%x; set $llmstack_key_ok 1; #"), "without a scope ID"),
    (("--profile", "tpu"), "--profile 'tpu' is not known"),
])
def test_init_rejects_bad_options(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    proc = cli("init", str(tmp_path), *args)
    assert proc.returncode == 1
    assert message in proc.stderr
    assert not (tmp_path / ".env").exists()
    assert_no_traceback(proc)


def test_init_json(tmp_path: Path) -> None:
    proc = cli("init", str(tmp_path), "--json")
    steps = json.loads(proc.stdout)["steps"]
    assert [s["action"] for s in steps] == ["created"] * 3


# --- validate: one clear message, exit 1, no traceback ------------------------------------------


def test_misspelt_key_names_file_line_field_and_fix(project: Path) -> None:
    stack = project / "stack.yaml"
    text = stack.read_text()
    stack.write_text(text.replace("\ndomain:", "\ndomian:"))
    line = next(i for i, ln in enumerate(stack.read_text().splitlines(), 1)
                if ln.startswith("domian:"))
    proc = cli("validate", cwd=project)
    assert proc.returncode == 1
    assert f"{stack}:{line}: domian: is not a known key" in proc.stderr
    assert "fix: did you mean 'domain'?" in proc.stderr
    assert "is invalid (1 problem)" in proc.stderr
    assert proc.stdout == ""
    assert_no_traceback(proc)


def test_gpu_given_twice_names_file_line_field_value_and_fix(project: Path) -> None:
    stack = project / "stack.yaml"
    data = yaml.safe_load(stack.read_text())
    data["models"] = [
        {"name": "a", "backend": "vllm", "source": "hf:org/a", "gpus": [0]},
        {"name": "b", "backend": "vllm", "source": "hf:org/b", "gpus": [0]},
    ]
    stack.write_text(yaml.safe_dump(data, sort_keys=False))
    line = [i for i, ln in enumerate(stack.read_text().splitlines(), 1) if "gpus" in ln][1]
    proc = cli("validate", cwd=project)
    assert proc.returncode == 1
    assert (f"{stack}:{line}: models[1].gpus: GPU 0 is already given to model 'a' (got [0])"
            in proc.stderr)
    assert "fix: give each model its own GPUs, or set gpu_share: true" in proc.stderr
    assert_no_traceback(proc)


def test_validate_json_lists_problems(project: Path) -> None:
    stack = project / "stack.yaml"
    stack.write_text(stack.read_text().replace("\ndomain:", "\ndomian:")
                     .replace("burst: 20", "burst: lots"))
    proc = cli("validate", "--json", cwd=project)
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert data["error"] == "SpecError"
    assert [p["path"] for p in data["problems"]] == ["domian", "rate_limit.burst"]


def test_validate_ok(project: Path) -> None:
    proc = cli("validate", cwd=project)
    assert proc.returncode == 0
    assert "valid (models: deepseek-coder, qwen-coder, mistral, smollm2-embed)" in proc.stdout


def test_missing_stack_yaml_says_run_init(tmp_path: Path) -> None:
    proc = cli("validate", cwd=tmp_path)
    assert proc.returncode == 1
    assert "stack.yaml: (file): does not exist" in proc.stderr
    assert "llmstack init" in proc.stderr
    assert_no_traceback(proc)


def test_render_writes_config_without_secrets_and_is_idempotent(project: Path) -> None:
    proc = cli("render", cwd=project)
    assert proc.returncode == 0, proc.stderr
    files = sorted(p.name for p in (project / "config").iterdir())
    assert files == ["edge.mtail", "health.json", "litellm.yaml", "nginx.conf"]
    assert re.findall(r"^wrote ", proc.stdout, re.M) == ["wrote "] * 4
    keys = secrets.load_keys(project / ".env")
    for path in (project / "config").iterdir():
        data = path.read_text()
        assert keys.master not in data and keys.internal not in data
        assert "sk-" not in data
    again = cli("render", cwd=project)
    assert re.findall(r"^unchanged ", again.stdout, re.M) == ["unchanged "] * 4


# --- the CLI itself -----------------------------------------------------------------------------


def test_version_matches_the_package() -> None:
    proc = cli("--version")
    assert proc.returncode == 0
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert proc.stdout.strip() == f"llmstack {version}" == f"llmstack {llmstack.__version__}"


def test_help_has_examples_and_exit_codes() -> None:
    proc = cli("--help")
    assert proc.returncode == 0
    for command in ("init", "validate", "render", "plan", "up", "status", "logs", "down"):
        assert re.search(rf"^\s+{command}\s", proc.stdout, re.M), command
    assert "Examples:" in proc.stdout
    assert re.search(r"^\s+llmstack init --domain api\.example\.com\s+#", proc.stdout, re.M)
    assert "Exit codes" in proc.stdout


HELP_IMPORTS = """
import json, sys
sys.argv = ["llmstack", "--help"]
from llmstack import cli
try:
    cli.main()
except SystemExit:
    pass
heavy = ("docker", "paramiko", "cryptography", "jinja2", "pydantic", "requests")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy)), file=sys.stderr)
"""


def test_help_does_not_import_docker_or_other_heavy_libraries() -> None:
    proc = subprocess.run([sys.executable, "-c", HELP_IMPORTS], capture_output=True, text=True,
                          timeout=60)
    assert "Usage:" in proc.stdout
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == []


def test_unknown_command_is_a_user_error_without_traceback() -> None:
    proc = cli("frobnicate")
    assert proc.returncode == 1
    assert "No such command 'frobnicate'" in proc.stderr
    assert_no_traceback(proc)


def test_no_arguments_shows_help() -> None:
    proc = cli()
    assert proc.returncode == 0
    assert "Usage:" in proc.stdout + proc.stderr
    assert_no_traceback(proc)
