"""`llmstack connect CLIENT`: a ready configuration for an editor assistant, a CLI or an SDK.

Pure: stack.yaml, the project's paths and a key in; text out. Each client gets the base URL of
one listener (always ending in /v1: every client below appends /chat/completions to it), the
model for each of its roles, and for HTTPS the local CA (certs/ca.crt) the way that client
takes one: Continue's `requestOptions.caBundlePath`, `SSL_CERT_FILE` for Python clients
(httpx, which the OpenAI SDK, `llm` and aider's LiteLLM use, reads it), `NODE_EXTRA_CA_CERTS`
for Node clients, `--cacert` for curl.

The key's value is written only when the caller passes it (`--out` files, mode 0600, or
`--show-key`); otherwise the text carries a placeholder naming where the key is, or, for
shell output, a command that reads it from `.env` on this host.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import endpoints, secrets
from .errors import UserError
from .project import Loaded
from .spec import ModelSpec, StackSpec

CLIENTS: dict[str, str] = {
    "continue": "Continue (VS Code, JetBrains, the `cn` CLI): config.yaml",
    "cline": "Cline (VS Code): its OpenAI Compatible provider settings",
    "aider": "aider: .aider.conf.yml",
    "llm": "Simon Willison's llm: extra-openai-models.yaml",
    "openai": "the OpenAI SDKs (Python, Node) and most OpenAI tools: environment variables",
    "curl": "curl: one chat request",
}
MASTER_KEY_NAME = "master"
KEY_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
LLM_KEY_ALIAS = "llmstack"  # the name `llm keys set` stores the key under
# Continue's prompt budget is contextLength - maxTokens: keep room for the prompt.
CONTINUE_MAX_TOKENS = 1024


@dataclass(frozen=True)
class ClientKey:
    """The key a client sends. `value` is None where llmstack cannot read it back (a team
    key is shown once); `shell` is a command printing it on this host, where there is one."""

    name: str
    where: str
    value: str | None
    shell: str | None = None


@dataclass(frozen=True)
class Target:
    """Where clients connect: the base URL and, for HTTPS, the CA file to trust."""

    listener: str
    base_url: str
    ca_file: Path | None


@dataclass(frozen=True)
class ClientConfig:
    client: str
    text: str
    target_file: str  # where the client reads it (a hint for --out)
    holds_key: bool  # the key's value is in `text`
    notes: list[str] = field(default_factory=list)


# --- Key --------------------------------------------------------------------------------------


def client_key(loaded: Loaded, key_name: str | None) -> ClientKey:
    """The key `connect` configures: the master key (default, or `--key-name master`), else
    the team key NAME.

    Team keys are shown once and stored hashed, so their value cannot be read back here:
    every client gets a placeholder naming the key (never a wrong key).
    """
    if key_name is None or key_name == MASTER_KEY_NAME:
        env = loaded.paths.env
        return ClientKey(MASTER_KEY_NAME, f"{secrets.MASTER} in {env}", loaded.keys().master,
                         f"sed -n 's/^{secrets.MASTER}=//p' {shlex.quote(str(env))}")
    if not KEY_NAME_RE.fullmatch(key_name):
        raise UserError(f"--key-name {key_name!r} is not a key name",
                        "use letters, digits, '.', '_' and '-' (at most 64), or leave "
                        "--key-name out for the master key")
    return team_key(loaded, key_name)


def team_key(loaded: Loaded, name: str) -> ClientKey:
    """A team key (`llmstack keys add NAME`): it was shown once and is stored only as a hash,
    so clients get a placeholder naming it, never a value."""
    store = loaded.team_keys()
    if not store.has(name):
        known = ", ".join(k.name for k in store.keys) or "none yet"
        raise UserError(f"--key-name {name!r}: there is no team key of that name (team keys: "
                        f"{known})",
                        f"`llmstack keys add {name}` makes one; leave --key-name out (or use "
                        f"--key-name {MASTER_KEY_NAME}) for {secrets.MASTER} in "
                        f"{loaded.paths.env}")
    return ClientKey(name, f"the team key {name!r} (shown once by `llmstack keys add`; "
                     "llmstack keeps only its hash)", None)


# --- Target and models ------------------------------------------------------------------------


def target(loaded: Loaded, listener: str | None, address: str | None,
           ca_path: str | None = None) -> Target:
    """The listener clients use: the one named, else local, then https, then lan. For https
    the CA file is the project's certs/ca.crt, or `ca_path`: where a copy of it lies on the
    machine the client runs on."""
    spec = loaded.spec
    enabled = [n for n in endpoints.LISTENERS if getattr(spec.listeners, n).enabled]
    if listener is None:
        listener = next(n for n in ("local", "https", "lan") if n in enabled)
    elif listener not in endpoints.LISTENERS:
        raise UserError(f"--listener {listener!r} is not a listener",
                        f"use one of: {', '.join(endpoints.LISTENERS)}")
    elif listener not in enabled:
        raise UserError(f"--listener {listener}: listeners.{listener} is disabled in "
                        "stack.yaml", f"use one of: {', '.join(enabled)}, or set "
                        f"listeners.{listener}.enabled: true and run `llmstack up`")
    lst = getattr(spec.listeners, listener)
    if address is not None:
        from .spec import host_name
        try:
            address = host_name(address)
        except ValueError as exc:
            raise UserError(f"--address {address!r} {exc}", "use e.g. --address 192.168.1.20"
                            ) from None
    elif listener != "https" and lst.bind in endpoints.WILDCARDS:
        raise UserError(f"--listener {listener}: listeners.{listener} binds {lst.bind} (every "
                        "address), so connect cannot know which one your clients reach",
                        "pass --address HOST: this host's IP or name as clients see it")
    from . import tls
    if ca_path is not None and listener != "https":
        raise UserError(f"--ca-path is for the https listener, not {listener}",
                        "add --listener https, or leave --ca-path out")
    ca = (Path(ca_path) if ca_path else loaded.paths.certs / tls.CA_CERT) \
        if listener == "https" else None
    return Target(listener, endpoints.url(spec, listener, address), ca)


def chat_models(spec: StackSpec) -> list[ModelSpec]:
    return [m for m in spec.models if m.task == "chat"]


def pick_model(spec: StackSpec, name: str | None, option: str = "--model") -> tuple[str, int]:
    """A chat model's public name (default: the first chat model) and its context length."""
    chats = chat_models(spec)
    served = ", ".join(n for m in chats for n in m.public_names)
    if not chats:
        raise UserError("stack.yaml serves no chat model (every model has task: embedding)",
                        "add a model with task: chat to stack.yaml")
    if name is None:
        return chats[0].name, chats[0].context
    for model in chats:
        if name in model.public_names:
            return name, model.context
    embedding = any(name in m.public_names for m in spec.models)
    raise UserError(f"{option} {name!r} " + ("is an embedding model" if embedding
                                             else "is not a model of this stack"),
                    f"use one of: {served}")


# --- The clients ------------------------------------------------------------------------------


def render(client: str, spec: StackSpec, where: Target, key: ClientKey, with_key: bool,
           model: str | None = None, autocomplete_model: str | None = None) -> ClientConfig:
    """`client`'s configuration. The key's value goes into the text only `with_key`; the
    notes never carry it."""
    if client not in CLIENTS:
        raise UserError(f"unknown client {client!r}", f"use one of: {', '.join(CLIENTS)}")
    chat, context = pick_model(spec, model)
    secret = key.value if with_key and key.value is not None else None
    key_text = secret or f"<{key.where}>"
    args = _Args(spec, where, key, secret, key_text, chat, context)
    if client == "continue":
        return _continue(args, pick_model(spec, autocomplete_model or chat,
                                          "--autocomplete-model")[0])
    return {"cline": _cline, "aider": _aider, "llm": _llm, "openai": _openai,
            "curl": _curl}[client](args)


@dataclass(frozen=True)
class _Args:
    spec: StackSpec
    where: Target
    key: ClientKey
    secret: str | None
    key_text: str
    model: str
    context: int

    @property
    def ca(self) -> str | None:
        return str(self.where.ca_file) if self.where.ca_file else None

    @property
    def shell_key(self) -> str:
        """The key in a shell word: the value, a command reading it, or the placeholder."""
        return shlex.quote(self.secret) if self.secret else self.shell_key_ref

    @property
    def shell_key_ref(self) -> str:
        """The key in a shell word for notes, never its value: a command reading it on this
        host, or the placeholder."""
        if self.key.shell:
            return f'"$({self.key.shell})"'
        return shlex.quote(f"<{self.key.where}>")

    def key_note(self, how: str) -> list[str]:
        if self.secret:
            return []
        if self.key.value is None:
            return [f"the key: {how} with the value of team key {self.key.name!r} (shown once, "
                    "when the key was made)"]
        return [f"the key is not shown: {how} with {self.key.where}, or run again with "
                "--out FILE (written 0600) or --show-key"]


def _dump(data: object) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=1000)


def _continue(a: _Args, autocomplete: str) -> ClientConfig:
    def entry(name: str, roles: list[str], context: int) -> dict[str, object]:
        model: dict[str, object] = {
            "name": f"{name} (llmstack)", "provider": "openai", "model": name,
            "apiBase": a.where.base_url, "apiKey": a.key_text, "roles": roles,
            "defaultCompletionOptions": {"contextLength": context,
                                         "maxTokens": min(CONTINUE_MAX_TOKENS, context // 4)},
        }
        if a.ca:
            model["requestOptions"] = {"caBundlePath": a.ca}
        return model

    roles = ["chat", "edit", "apply"]
    models = []
    if autocomplete == a.model:
        models.append(entry(a.model, [*roles, "autocomplete"], a.context))
    else:
        models.append(entry(a.model, roles, a.context))
        models.append(entry(autocomplete, ["autocomplete"],
                            pick_model(a.spec, autocomplete)[1]))
    for m in a.spec.models:
        if m.task == "embedding":
            embed = entry(m.name, ["embed"], m.context)
            del embed["defaultCompletionOptions"]
            models.append(embed)
            break
    text = _dump({"name": f"{a.spec.project} (llmstack)", "version": "1.0.0", "schema": "v1",
                  "models": models})
    notes = ["VS Code / JetBrains: save as ~/.continue/config.yaml (or --out it there); "
             "the `cn` CLI: cn --config FILE"]
    notes += a.key_note("replace the apiKey values")
    return ClientConfig("continue", text, "~/.continue/config.yaml", a.secret is not None, notes)


def _cline(a: _Args) -> ClientConfig:
    lines = ["# Cline: Settings (gear icon) > API Configuration",
             "API Provider: OpenAI Compatible",
             f"Base URL: {a.where.base_url}",
             f"OpenAI Compatible API Key: {a.key_text}",
             f"Model ID: {a.model}",
             f"Context Window Size: {a.context}"]
    if a.ca:
        lines += ["# HTTPS with the stack's own CA: start VS Code with it trusted, e.g.",
                  f"#   NODE_EXTRA_CA_CERTS={shlex.quote(a.ca)} code",
                  "# (or add it to the system's trust store: VS Code uses system certificates)"]
    notes = ["paste these into Cline's settings (it keeps them in VS Code, not in a file)"]
    notes += a.key_note("fill in the API Key")
    return ClientConfig("cline", "\n".join(lines) + "\n", "Cline settings", a.secret is not None,
                        notes)


def _aider(a: _Args) -> ClientConfig:
    conf: dict[str, object] = {"model": f"openai/{a.model}",
                               "openai-api-base": a.where.base_url,
                               "openai-api-key": a.key_text,
                               "show-model-warnings": False}
    if a.ca:
        # aider's requests go through LiteLLM and httpx, which read SSL_CERT_FILE.
        conf["set-env"] = [f"SSL_CERT_FILE={a.ca}"]
    notes = ["save as .aider.conf.yml in your home or the repository's root (or pass "
             "--config FILE)"]
    notes += a.key_note("replace openai-api-key")
    return ClientConfig("aider", _dump(conf), ".aider.conf.yml", a.secret is not None, notes)


def _llm(a: _Args) -> ClientConfig:
    models = [{"model_id": name, "model_name": name, "api_base": a.where.base_url,
               "api_key_name": LLM_KEY_ALIAS}
              for m in chat_models(a.spec) for name in m.public_names]
    set_key = f"llm keys set {LLM_KEY_ALIAS} --value {a.shell_key_ref}"
    notes = ['save as "$(dirname "$(llm logs path)")/extra-openai-models.yaml"',
             f"then store the key once: {set_key}"]
    if a.ca:
        notes.append(f"HTTPS: export SSL_CERT_FILE={shlex.quote(a.ca)} before running llm")
    notes.append(f"ask: llm -m {a.model} 'Hello'")
    return ClientConfig("llm", _dump(models), "extra-openai-models.yaml", False, notes)


def _openai(a: _Args) -> ClientConfig:
    lines = [f"export OPENAI_BASE_URL={shlex.quote(a.where.base_url)}",
             f"export OPENAI_API_KEY={a.shell_key}"]
    if a.ca:
        lines += [f"export SSL_CERT_FILE={shlex.quote(a.ca)}  # Python: httpx, the OpenAI SDK",
                  f"export NODE_EXTRA_CA_CERTS={shlex.quote(a.ca)}  # Node: the OpenAI SDK"]
    lines.append(f"# model: {a.model}  (every model: client.models.list())")
    notes = ["eval \"$(llmstack connect openai ...)\", or add the lines to your shell profile "
             "or the tool's .env; OpenAI() then needs no arguments"]
    if not a.secret and a.key.shell:
        notes.append("OPENAI_API_KEY reads the key from .env on this host; --show-key or "
                     "--out FILE (0600) put the value itself")
    elif not a.secret:
        notes += a.key_note("set OPENAI_API_KEY")
    return ClientConfig("openai", "\n".join(lines) + "\n", ".env / shell profile",
                        a.secret is not None, notes)


def _curl(a: _Args) -> ClientConfig:
    body = json.dumps({"model": a.model, "messages": [{"role": "user", "content": "Say hello"}],
                       "max_tokens": 32})
    ca = f"--cacert {shlex.quote(a.ca)} " if a.ca else ""
    text = (f"curl -sS {ca}{shlex.quote(a.where.base_url + '/chat/completions')} \\\n"
            f"  -H \"Authorization: Bearer \"{a.shell_key} \\\n"
            "  -H 'Content-Type: application/json' \\\n"
            f"  -d {shlex.quote(body)}\n")
    notes = ["one chat request: run it in a shell (llmstack connect curl | sh)"]
    if not a.secret and a.key.shell:
        notes.append("the Authorization header reads the key from .env on this host")
    elif not a.secret:
        notes += a.key_note("replace the key")
    return ClientConfig("curl", text, "a shell script", a.secret is not None, notes)
