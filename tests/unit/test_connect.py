"""`llmstack connect CLIENT`: what each client's configuration says, where the key goes (and
where it never goes), the CA per client for HTTPS, and the errors. Pure and through the real
command (a separate process, CI=true, no TTY). The same configurations drive the real clients
in tests/integration/test_clients.py."""

from __future__ import annotations

import shlex
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from llmstack import connect, project, secrets
from llmstack.errors import UserError
from tests.helpers import cli

CA_ENV = ("SSL_CERT_FILE", "NODE_EXTRA_CA_CERTS")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "proj"
    cli("init", str(folder), check=True)
    return folder


def loaded_of(root: Path) -> project.Loaded:
    return project.load(root)


def master(root: Path) -> str:
    return secrets.load_keys(root / ".env").master


def run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cli("connect", *args, cwd=root)


def config(root: Path, client: str, listener: str = "local", with_key: bool = False,
           **kwargs: str | None) -> connect.ClientConfig:
    loaded = loaded_of(root)
    return connect.render(client, loaded.spec, connect.target(loaded, listener, None),
                          connect.client_key(loaded, None), with_key, **kwargs)


def write_spec(root: Path, change: dict[str, object]) -> None:
    data = yaml.safe_load((root / "stack.yaml").read_text())
    data.update(change)
    (root / "stack.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


# --- What each client gets --------------------------------------------------------------------


def test_continue_config_has_every_role_and_the_stacks_models(root: Path) -> None:
    conf = yaml.safe_load(config(root, "continue", with_key=True).text)
    assert conf["schema"] == "v1" and conf["version"] and conf["name"]
    chat, embed = conf["models"]
    assert chat["provider"] == "openai" and chat["model"] == "deepseek-coder"
    assert chat["apiBase"] == "http://127.0.0.1:4000/v1"
    assert chat["apiKey"] == master(root)
    assert chat["roles"] == ["chat", "edit", "apply", "autocomplete"]
    # Continue trims prompts to contextLength - maxTokens: the model's real context.
    assert chat["defaultCompletionOptions"] == {"contextLength": 4096, "maxTokens": 1024}
    assert embed["model"] == "smollm2-embed" and embed["roles"] == ["embed"]
    assert "requestOptions" not in chat  # plain HTTP: no CA


def test_continue_autocomplete_model_gets_its_own_entry(root: Path) -> None:
    conf = yaml.safe_load(config(root, "continue", autocomplete_model="qwen-coder").text)
    roles = {m["model"]: m["roles"] for m in conf["models"]}
    assert roles == {"deepseek-coder": ["chat", "edit", "apply"],
                     "qwen-coder": ["autocomplete"], "smollm2-embed": ["embed"]}


def test_model_option_picks_the_chat_model_of_every_client(root: Path) -> None:
    assert yaml.safe_load(config(root, "aider", model="mistral").text)["model"] == \
        "openai/mistral"
    assert '"model": "mistral"' in config(root, "curl", model="mistral").text
    assert "Model ID: mistral" in config(root, "cline", model="mistral").text
    assert "# model: mistral" in config(root, "openai", model="mistral").text


def test_aider_config(root: Path) -> None:
    conf = yaml.safe_load(config(root, "aider", with_key=True).text)
    assert conf == {"model": "openai/deepseek-coder",
                    "openai-api-base": "http://127.0.0.1:4000/v1",
                    "openai-api-key": master(root), "show-model-warnings": False}


def test_llm_lists_every_chat_name_and_never_holds_the_key(root: Path) -> None:
    result = config(root, "llm", with_key=True)
    models = yaml.safe_load(result.text)
    assert [m["model_id"] for m in models] == ["deepseek-coder", "qwen-coder", "mistral"]
    assert {m["api_base"] for m in models} == {"http://127.0.0.1:4000/v1"}
    assert {m["api_key_name"] for m in models} == {connect.LLM_KEY_ALIAS}
    assert not result.holds_key and master(root) not in result.text
    assert any(f"llm keys set {connect.LLM_KEY_ALIAS}" in n for n in result.notes)


def test_openai_env_and_curl_read_the_key_from_env_without_printing_it(root: Path) -> None:
    env = config(root, "openai").text
    assert master(root) not in env
    proc = subprocess.run(["bash", "-c", env + 'printf "%s\\n%s" "$OPENAI_BASE_URL" '
                           '"$OPENAI_API_KEY"'], capture_output=True, text=True, check=True)
    assert proc.stdout.splitlines() == ["http://127.0.0.1:4000/v1", master(root)]
    curl = config(root, "curl").text
    assert master(root) not in curl
    # The command, with curl swapped for printf, expands to the request curl would send.
    words = subprocess.run(["bash", "-c", "curl() { printf '%s\\n' \"$@\"; }\n" + curl],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert words[1] == "http://127.0.0.1:4000/v1/chat/completions"
    assert f"Authorization: Bearer {master(root)}" in words


def test_cline_settings(root: Path) -> None:
    text = config(root, "cline").text
    assert "API Provider: OpenAI Compatible" in text
    assert "Base URL: http://127.0.0.1:4000/v1" in text
    assert "Model ID: deepseek-coder" in text and "Context Window Size: 4096" in text


# --- HTTPS: the CA the way each client takes it -----------------------------------------------


def test_https_points_each_client_at_the_ca_its_own_way(root: Path) -> None:
    ca = str(root / "certs" / "ca.crt")
    base = "https://localhost/v1"
    conf = yaml.safe_load(config(root, "continue", "https").text)
    assert {m["apiBase"] for m in conf["models"]} == {base}
    assert {m["requestOptions"]["caBundlePath"] for m in conf["models"]} == {ca}
    aider = yaml.safe_load(config(root, "aider", "https").text)
    assert aider["openai-api-base"] == base and aider["set-env"] == [f"SSL_CERT_FILE={ca}"]
    env = config(root, "openai", "https").text
    for name in CA_ENV:
        assert f"export {name}={shlex.quote(ca)}" in env
    assert f"--cacert {shlex.quote(ca)} {base}/chat/completions" in config(root, "curl",
                                                                          "https").text
    llm = config(root, "llm", "https")
    assert any(f"SSL_CERT_FILE={shlex.quote(ca)}" in n for n in llm.notes)
    assert f"NODE_EXTRA_CA_CERTS={shlex.quote(ca)}" in config(root, "cline", "https").text
    for client in ("continue", "aider", "openai", "curl", "llm", "cline"):
        assert "ca.crt" not in config(root, client, "local").text + \
            " ".join(config(root, client, "local").notes)


def test_https_on_another_port_and_address(root: Path) -> None:
    write_spec(root, {"listeners": {"https": {"port": 8443, "bind": "0.0.0.0"}}})
    loaded = loaded_of(root)
    assert connect.target(loaded, "https", None).base_url == "https://localhost:8443/v1"
    assert connect.target(loaded, "https", "10.1.2.3").base_url == "https://10.1.2.3:8443/v1"
    assert connect.target(loaded, "https", "::1").base_url == "https://[::1]:8443/v1"


# --- The key ----------------------------------------------------------------------------------


@pytest.mark.parametrize("client", list(connect.CLIENTS))
@pytest.mark.parametrize("listener", ["local", "https"])
def test_the_key_is_never_printed_without_show_key(root: Path, client: str,
                                                   listener: str) -> None:
    proc = run(root, client, "--listener", listener)
    assert proc.returncode == 0, proc.stderr
    assert master(root) not in proc.stdout + proc.stderr
    assert proc.stdout.strip() and proc.stderr.startswith("# ")  # notes on stderr


@pytest.mark.parametrize("client", ["continue", "aider", "openai", "curl", "cline"])
def test_show_key_prints_it(root: Path, client: str) -> None:
    proc = run(root, client, "--show-key")
    assert proc.returncode == 0, proc.stderr
    assert master(root) in proc.stdout and master(root) not in proc.stderr


@pytest.mark.parametrize("client", list(connect.CLIENTS))
def test_out_writes_the_key_0600_and_prints_it_nowhere(root: Path, tmp_path: Path,
                                                       client: str) -> None:
    target = tmp_path / "deep" / "conf"
    proc = run(root, client, "--out", str(target))
    assert proc.returncode == 0, proc.stderr
    assert master(root) not in proc.stdout + proc.stderr
    text = target.read_text()
    holds = master(root) in text
    assert holds == (client != "llm")  # llm keeps its keys in its own keys.json
    assert stat.S_IMODE(target.stat().st_mode) == (0o600 if holds else 0o644)
    assert ("mode 0600" in proc.stdout) == holds


def test_out_backs_up_a_different_file_and_leaves_an_equal_one(root: Path,
                                                               tmp_path: Path) -> None:
    target = tmp_path / "config.yaml"
    target.write_text("models: [mine]\n")
    proc = run(root, "continue", "--out", str(target))
    assert proc.returncode == 0, proc.stderr
    backups = list(tmp_path.glob("config.yaml.bak-*"))
    assert [b.read_text() for b in backups] == ["models: [mine]\n"]
    assert str(backups[0]) in proc.stdout
    again = run(root, "continue", "--out", str(target))
    assert again.returncode == 0 and "old file" not in again.stdout
    assert len(list(tmp_path.glob("config.yaml.bak-*"))) == 1


def test_key_name_master_is_the_default(root: Path) -> None:
    loaded = loaded_of(root)
    assert connect.client_key(loaded, "master") == connect.client_key(loaded, None)
    assert connect.client_key(loaded, None).value == master(root)


def test_an_unknown_team_key_is_refused(root: Path) -> None:
    """A name that is neither master nor a team key is refused, never answered with the
    master key; a name that could carry syntax is refused first."""
    proc = run(root, "continue", "--key-name", "alice")
    assert proc.returncode == 1
    assert "--key-name 'alice'" in proc.stderr and "team key" in proc.stderr
    assert master(root) not in proc.stdout + proc.stderr and not proc.stdout
    bad = run(root, "continue", "--key-name", "a b;c")
    assert bad.returncode == 1 and "is not a key name" in bad.stderr


def test_a_team_key_gets_a_placeholder_naming_it(root: Path) -> None:
    from llmstack import keyops
    from tests.fake_engine import FakeEngine

    loaded = loaded_of(root)
    issued = keyops.add(loaded, FakeEngine(project=loaded.spec.project), "alice",
                        progress=lambda _: None)
    key = connect.client_key(loaded_of(root), "alice")
    assert key.name == "alice" and key.value is None and "'alice'" in key.where
    proc = run(root, "continue", "--key-name", "alice", "--show-key")
    assert proc.returncode == 0, proc.stderr
    assert issued.key not in proc.stdout + proc.stderr and master(root) not in proc.stdout


def test_a_key_that_cannot_be_read_back_gets_a_placeholder(root: Path) -> None:
    """What team keys will return through the seam: no value, so a placeholder naming the key
    everywhere, even with --show-key, and nothing claims to hold a key."""
    loaded = loaded_of(root)
    key = connect.ClientKey("alice", "team key alice", None)
    for client in connect.CLIENTS:
        result = connect.render(client, loaded.spec, connect.target(loaded, None, None), key,
                                with_key=True)
        assert "<team key alice>" in result.text + " ".join(result.notes)
        assert not result.holds_key


# --- Errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "message", "hint"), [
    (["vim"], "unknown client 'vim'", "continue, cline, aider, llm, openai, curl"),
    (["continue", "--model", "gpt-4"], "--model 'gpt-4' is not a model of this stack",
     "deepseek-coder, qwen-coder, mistral"),
    (["continue", "--model", "smollm2-embed"], "is an embedding model", "deepseek-coder"),
    (["continue", "--autocomplete-model", "x"], "--autocomplete-model 'x'", "qwen-coder"),
    (["aider", "--listener", "wan"], "--listener 'wan' is not a listener", "local, lan, https"),
    (["aider", "--address", "a b"], "--address 'a b'", "--address"),
])
def test_bad_options_exit_1_naming_option_value_and_fix(root: Path, args: list[str],
                                                        message: str, hint: str) -> None:
    proc = run(root, *args)
    assert proc.returncode == 1, proc.stdout
    assert message in proc.stderr and hint in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_wildcard_listener_needs_an_address(root: Path) -> None:
    write_spec(root, {"listeners": {"lan": {"port": 8080, "bind": "0.0.0.0"}}})
    proc = run(root, "openai", "--listener", "lan")
    assert proc.returncode == 1 and "binds 0.0.0.0" in proc.stderr and "--address" in proc.stderr
    ok = run(root, "openai", "--listener", "lan", "--address", "192.168.1.20")
    assert ok.returncode == 0 and "OPENAI_BASE_URL=http://192.168.1.20:8080/v1" in ok.stdout


def test_a_disabled_listener_is_refused_and_the_default_moves_on(root: Path) -> None:
    write_spec(root, {"listeners": {"local": {"port": 4000, "enabled": False},
                                    "https": {"port": 443}}})
    proc = run(root, "curl", "--listener", "local")
    assert proc.returncode == 1 and "listeners.local is disabled" in proc.stderr
    assert connect.target(loaded_of(root), None, None).listener == "https"


def test_a_stack_without_chat_models(root: Path) -> None:
    data = yaml.safe_load((root / "stack.yaml").read_text())
    data["models"] = [m for m in data["models"] if m.get("task") == "embedding"]
    (root / "stack.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match="serves no chat model"):
        config(root, "continue")


def test_ca_path_names_the_ca_where_the_client_runs(root: Path) -> None:
    """A laptop reaching the stack over HTTPS: the CA is copied there, and the configs name
    that copy."""
    proc = run(root, "continue", "--listener", "https", "--address", "llm.example.com",
               "--ca-path", "/home/me/llmstack-ca.crt")
    conf = yaml.safe_load(proc.stdout)
    assert {m["requestOptions"]["caBundlePath"] for m in conf["models"]} == \
        {"/home/me/llmstack-ca.crt"}
    assert {m["apiBase"] for m in conf["models"]} == {"https://llm.example.com/v1"}
    refused = run(root, "continue", "--ca-path", "/x/ca.crt")
    assert refused.returncode == 1 and "--ca-path is for the https listener" in refused.stderr
