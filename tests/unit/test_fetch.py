"""`hf:` sources fetched by `up` before the models start (fetch.py, lock.py, hf_fetch.py) on the
fake engine: the fetch container's settings, the pins in stack.lock, what a second `up` does,
the errors a person reads, and the checksum rule of the script in the fetch container.

The real huggingface_hub against a Hub stand-in: tests/integration/test_hf_sources.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmstack import deploy, fetch, hf_fetch, hfcache, lock, names
from llmstack.errors import ExitCode, FetchError, SourceAccessError, UserError
from llmstack.initialize import init
from llmstack.project import Loaded, load
from tests.fake_engine import FakeEngine

REPO_ID = "bartowski/Qwen2.5-Coder-7B-Instruct-GGUF"
FILE = "Qwen2.5-Coder-7B-Instruct-Q4_K_M.gguf"
SOURCE = f"hf:{REPO_ID}/{FILE}"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
SHA = "ab" * 32
SERVICE = names.model_service("coder")
TASK = f"fetch-{SERVICE}"
TOKEN = "hf_secretsecretsecret"


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def event(self, service: str, state: str, detail: str = "") -> None:
        self.seen.append((service, state, detail))

    def states(self) -> list[str]:
        return [state for _, state, _ in self.seen]


def ok_run(commit: str = COMMIT, size: int = 4_683_073_888) -> tuple[int, list[str]]:
    lines = [{"event": "plan", "commit": commit, "files": 1, "total": size, "cached": 0,
              "need": size, "free": 50 * 10**9},
             {"event": "progress", "bytes": 0, "total": size},
             {"event": "progress", "bytes": size // 2, "total": size},
             {"event": "verifying", "files": 1},
             {"event": "done", "commit": commit, "downloaded": size, "seconds": 12.5,
              "files": [{"name": FILE, "size": size, "sha256": SHA}]}]
    return 0, ["Fetching 1 files", *(json.dumps(x) for x in lines)]


def error_run(kind: str, status: int | None = None, message: str = "said") -> tuple[int, list[str]]:
    return 3, [json.dumps({"event": "error", "kind": kind, "status": status, "message": message})]


def project(tmp_path: Path, source: str = SOURCE, backend: str = "llamacpp",
            env: dict[str, str] | None = None) -> Loaded:
    init(tmp_path)
    data = yaml.safe_load((tmp_path / "stack.yaml").read_text())
    data["models"] = [{"name": "coder", "backend": backend, "source": source,
                       "gpus": [0] if backend in ("vllm", "tgi") else "cpu"}]
    (tmp_path / "stack.yaml").write_text(yaml.safe_dump(data))
    with (tmp_path / ".env").open("a") as handle:
        handle.writelines(f"{k}={v}\n" for k, v in (env or {}).items())
    return load(tmp_path)


@pytest.fixture
def loaded(tmp_path: Path) -> Loaded:
    return project(tmp_path, env={"HF_TOKEN": TOKEN})


@pytest.fixture
def engine(loaded: Loaded) -> FakeEngine:
    return FakeEngine(project=loaded.spec.project)


def request_of(engine: FakeEngine, run: int = -1) -> dict[str, Any]:
    return dict(json.loads(engine.task_runs[run].command[-1]))


# --- the fetch container --------------------------------------------------------------------


def test_fetch_task_runs_huggingface_hub_into_the_cache_with_the_token_in_its_env_only(
        loaded: Loaded) -> None:
    model = loaded.spec.models[0]
    task = fetch.fetch_task(loaded.spec, model, "main", {"HF_TOKEN": TOKEN})
    assert task.image == loaded.spec.images.for_key("litellm")
    assert task.entrypoint == ["python3"] and task.command[:2] == ["-c", fetch.script()]
    assert json.loads(task.command[2]) == {
        "repo": REPO_ID, "file": FILE, "revision": "main",
        "marker": f"llmstack/fetched/models--bartowski--Qwen2.5-Coder-7B-Instruct-GGUF/"
                  f"{{commit}}/{FILE}.json"}
    assert task.env["HF_TOKEN"] == TOKEN and task.secret_env == ("HF_TOKEN",)
    assert task.env["HF_HOME"] == hfcache.MOUNT
    assert not any(TOKEN in part for part in task.command)
    assert [(m.source, m.target, m.read_only) for m in task.mounts] == \
        [(names.HF_CACHE_VOLUME, hfcache.MOUNT, False)]


def test_hub_settings_prefer_env_file_then_environment_and_check_the_endpoint() -> None:
    assert fetch.hub_settings({"HF_TOKEN": "a"}, {"HF_TOKEN": "b", "HF_ENDPOINT": "http://m/"}) \
        == {"HF_TOKEN": "a", "HF_ENDPOINT": "http://m"}
    assert fetch.hub_settings({}, {}) == {}
    with pytest.raises(UserError, match="HF_ENDPOINT is not an http"):
        fetch.hub_settings({"HF_ENDPOINT": "mirror.example.com"}, {})


def test_the_fetch_script_is_what_the_container_runs() -> None:
    assert fetch.script() == Path(hf_fetch.__file__).read_text()


# --- up: fetch once, pin, then only look ---------------------------------------------------------


def test_first_up_fetches_pins_and_serves_the_pinned_commit(loaded: Loaded,
                                                            engine: FakeEngine) -> None:
    engine.tasks[TASK] = [ok_run()]
    events = Events()
    deploy.up(loaded, engine, events, local_engine=False)
    assert engine.calls.index(f"run {TASK}") < engine.calls.index(f"start {SERVICE}")
    assert request_of(engine)["revision"] == "main"
    pins = lock.read(loaded.paths.lock)
    assert pins == {SOURCE: lock.Locked(REPO_ID, FILE, "main", COMMIT,
                                        (lock.LockedFile(FILE, 4_683_073_888, SHA),))}
    model = engine.containers[SERVICE]
    assert f"/hf/hub/models--bartowski--Qwen2.5-Coder-7B-Instruct-GGUF/snapshots/{COMMIT}/" \
        f"{FILE}" in json.dumps(deploy.compute(loaded, engine)[0][1].command)
    assert model.status == "running"
    states = [s for svc, s, _ in events.seen if svc == SERVICE]
    assert states[:5] == ["fetching", "downloading", "downloading", "verifying", "fetched"]
    detail = dict((s, d) for svc, s, d in events.seen if svc == SERVICE)
    assert detail["fetching"] == f"commit {COMMIT[:12]}: 4.7 GB in 1 file(s), 4.7 GB to " \
        "download, 50.0 GB free"
    assert detail["fetched"] == f"4.7 GB in 12.5s, commit {COMMIT[:12]}"


def test_second_up_only_looks_for_the_pinned_files(loaded: Loaded, engine: FakeEngine) -> None:
    engine.tasks[TASK] = [ok_run()]
    deploy.up(loaded, engine, Events(), local_engine=False)
    events = Events()
    result = deploy.up(loaded, engine, events, local_engine=False)
    assert not result.changed
    assert len(engine.task_runs) == 1
    assert (SERVICE, "cached", f"{REPO_ID}/{FILE} at {COMMIT[:12]} (4.7 GB)") in events.seen


def test_a_pinned_source_missing_on_this_host_is_fetched_at_the_pinned_commit(
        loaded: Loaded, engine: FakeEngine) -> None:
    engine.tasks[TASK] = [ok_run()]
    deploy.up(loaded, engine, Events(), local_engine=False)
    other_host = FakeEngine(project=loaded.spec.project,
                            absent={hfcache.marker(REPO_ID, COMMIT, FILE)},
                            tasks={TASK: [ok_run()]})
    deploy.up(loaded, other_host, Events(), local_engine=False)
    assert request_of(other_host)["revision"] == COMMIT


def test_lock_keeps_only_the_sources_of_stack_yaml(loaded: Loaded, engine: FakeEngine) -> None:
    stale = lock.Locked("org/old", "old.gguf", "main", "f" * 40)
    lock.write(loaded.paths.lock, {"hf:org/old/old.gguf": stale})
    engine.tasks[TASK] = [ok_run()]
    fetch.ensure(loaded, engine, Events())
    assert list(lock.read(loaded.paths.lock)) == [SOURCE]


def test_a_stack_without_hf_sources_fetches_nothing_and_writes_no_lock(tmp_path: Path) -> None:
    init(tmp_path)
    loaded = load(tmp_path)
    engine = FakeEngine(project=loaded.spec.project)
    assert fetch.ensure(loaded, engine, Events()) == {}
    assert engine.task_runs == [] and not loaded.paths.lock.exists()


def test_missing_fetch_image_is_named_with_its_fix(loaded: Loaded, engine: FakeEngine) -> None:
    engine.missing_images = {loaded.spec.images.for_key("litellm")}
    with pytest.raises(FetchError, match="runs the model fetch") as info:
        fetch.ensure(loaded, engine, Events())
    assert "llmstack images build" in info.value.hint


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("run", "error", "message", "hint"), [
    (error_run("gated", 403), SourceAccessError,
     f"{REPO_ID} is gated and the Hub refused HF_TOKEN for it (HTTP 403)",
     f"accept the repository's terms at https://huggingface.co/{REPO_ID}"),
    (error_run("unauthorized", 401), SourceAccessError,
     "the Hub refused the token in HF_TOKEN (HTTP 401)", "HF_TOKEN=hf_... in .env"),
    (error_run("not_found", 404), SourceAccessError,
     f"repository {REPO_ID} was not found on https://huggingface.co (HTTP 404)",
     "check ORG/REPO in stack.yaml"),
    (error_run("revision", 404), SourceAccessError, f"{REPO_ID} has no revision 'main'",
     "write an existing branch, tag or commit after @"),
    (error_run("file", 404), SourceAccessError, f"{REPO_ID} has no file {FILE!r}",
     "check the name in the repository's file list"),
    (error_run("network", None, "connection refused"), FetchError,
     "the engine's host cannot reach https://huggingface.co: connection refused",
     "downloads resume"),
    (error_run("endpoint"), FetchError,
     "https://huggingface.co does not answer as a Hugging Face Hub: said", "HF_ENDPOINT"),
    (error_run("disk", None, "needs 4.68 GB more in the cache volume, 2.10 GB free"),
     FetchError, "needs 4.68 GB more in the cache volume, 2.10 GB free", "free space"),
    (error_run("checksum", None, "do not match"), FetchError, "do not match",
     "download it again"),
    ((137, ["Killed"]), FetchError, "the fetch failed (exit 137): Killed", "downloads resume"),
])
def test_a_failed_fetch_names_the_model_the_source_and_the_fix(
        loaded: Loaded, engine: FakeEngine, run: tuple[int, list[str]], error: type,
        message: str, hint: str) -> None:
    engine.tasks[TASK] = [run]
    with pytest.raises(error) as info:
        deploy.up(loaded, engine, Events(), local_engine=False)
    assert f"model 'coder' (source: {SOURCE}): {message}" in info.value.message
    assert hint in info.value.hint
    assert info.value.exit_code == (ExitCode.CONFIG if error is SourceAccessError
                                    else ExitCode.RUNTIME)
    assert TOKEN not in info.value.message + info.value.hint
    assert SERVICE not in engine.containers and not loaded.paths.lock.exists()


def test_gated_without_a_token_says_so(tmp_path: Path) -> None:
    loaded = project(tmp_path)
    engine = FakeEngine(project=loaded.spec.project, tasks={TASK: [error_run("gated", 401)]})
    with pytest.raises(SourceAccessError, match="refused access without a token"):
        fetch.ensure(loaded, engine, Events(), environ={})
    assert engine.task_runs[0].secret_env == () and "HF_TOKEN" not in engine.task_runs[0].env


def test_an_unreadable_lock_is_a_clear_error(loaded: Loaded) -> None:
    loaded.paths.lock.write_text('{"version": 9, "sources": {}}')
    with pytest.raises(UserError, match=r"not a stack\.lock llmstack understands"):
        lock.read(loaded.paths.lock)
    loaded.paths.lock.write_text("{")
    with pytest.raises(UserError, match="cannot be read") as info:
        lock.read(loaded.paths.lock)
    assert "delete it to fetch the sources again" in info.value.hint


# --- what a person reads -----------------------------------------------------------------------


@pytest.mark.parametrize(("done", "total", "rate", "text"), [
    (45_100_000, 98_400_000, 12_300_000.0, "45.1 MB / 98.4 MB (45%), 12.3 MB/s, ETA 4s"),
    (0, 4_700_000_000, None, "0 B / 4.7 GB (0%)"),
    (98_400_000, 98_400_000, 50e6, "98.4 MB / 98.4 MB (100%), 50.0 MB/s"),
])
def test_progress_detail(done: int, total: int, rate: float | None, text: str) -> None:
    assert fetch.progress_detail(done, total, rate) == text


# --- the script in the fetch container: the checksum rule --------------------------------------


def test_digest_checks_an_lfs_sha256_and_a_git_blob_id(tmp_path: Path) -> None:
    small = tmp_path / "config.json"
    small.write_bytes(b"hello\n")
    sha = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
    assert hf_fetch.digest(str(small), sha) == (sha, True)
    # git hash-object of "hello\n"
    assert hf_fetch.digest(str(small), "ce013625030ba8dba906f756967f9e9ca394464a") == (sha, True)
    assert hf_fetch.digest(str(small), "0" * 64) == (sha, False)
    assert hf_fetch.digest(str(small), "0" * 40) == (sha, False)


def test_progress_counts_complete_and_partial_blobs(tmp_path: Path) -> None:
    import os

    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (blobs / "a").write_bytes(b"x" * 10)
    (blobs / f"b{hf_fetch.PARTIAL}").write_bytes(b"x" * 4)  # ours, resumable
    (blobs / "c.1a2b3c4d.incomplete").write_bytes(b"x" * 3)  # huggingface_hub's (Xet)
    files = [{"etag": "a"}, {"etag": "b"}, {"etag": "c"}, {"etag": "d"}]
    assert hf_fetch.on_disk(str(blobs), files) == (17, 10)
    # A temporary file of huggingface_hub's left by a killed run goes; a fresh one stays.
    (blobs / "d.99999999.incomplete").write_bytes(b"x")
    old = os.path.getmtime(blobs / "c.1a2b3c4d.incomplete") - hf_fetch.STALE_SECONDS - 1
    os.utime(blobs / "c.1a2b3c4d.incomplete", (old, old))
    hf_fetch.drop_stale(str(blobs), files)
    assert sorted(os.listdir(blobs)) == ["a", f"b{hf_fetch.PARTIAL}", "d.99999999.incomplete"]


# --- plan ------------------------------------------------------------------------------------


def test_plan_shows_each_hf_source_its_pin_size_and_whether_the_host_has_it(
        loaded: Loaded, engine: FakeEngine) -> None:
    assert [s.line() for s in fetch.states(loaded, engine)] == [
        f"  coder                {SOURCE}: not pinned yet: `up` fetches it (size known then)"]
    engine.tasks[TASK] = [ok_run()]
    fetch.ensure(loaded, engine, Events())
    (state,) = fetch.states(loaded, engine)
    assert state.line().endswith(f"pinned at {COMMIT[:12]}, 4.7 GB, in the cache")
    engine.absent = {hfcache.marker(REPO_ID, COMMIT, FILE)}
    (state,) = fetch.states(loaded, engine)
    assert state.to_dict() == {"model": "coder", "source": SOURCE, "commit": COMMIT,
                               "size": 4_683_073_888, "cached": False,
                               "download": 4_683_073_888}
    assert state.line().endswith(f"pinned at {COMMIT[:12]}: `up` downloads 4.7 GB")


def test_plan_cli_lists_the_downloads(loaded: Loaded, engine: FakeEngine,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from llmstack import cli

    monkeypatch.setattr(cli, "_engine", lambda host, project: engine)
    engine.tasks[TASK] = [ok_run()]
    fetch.ensure(loaded, engine, Events())
    engine.absent = {hfcache.marker(REPO_ID, COMMIT, FILE)}
    text = CliRunner().invoke(cli.app, ["plan", "-C", str(loaded.paths.root)]).output
    assert "Model downloads (hf: sources, into llmstack-hf-cache on the engine's host" in text
    assert f"{SOURCE}: pinned at {COMMIT[:12]}: `up` downloads 4.7 GB" in text
    out = json.loads(CliRunner().invoke(cli.app, ["plan", "-C", str(loaded.paths.root),
                                                  "--json"]).output)
    assert out["sources"][0]["download"] == 4_683_073_888


# --- ollama: tags, pulled through Ollama's API (its documented responses) ----------------------
# No Ollama image here: a local server answers /api/tags and /api/pull as Ollama's API
# reference documents them, and the real pull script (ollama_pull.py) runs against it.


class OllamaApi:
    """GET /api/tags and a streamed POST /api/pull, on 127.0.0.1."""

    def __init__(self, have: list[str], pull: list[dict[str, Any]], status: int = 200) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        api = self
        self.pulled: list[dict[str, Any]] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def send(self, code: int, body: bytes, kind: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                models = [{"name": t, "model": t, "size": 1} for t in have]
                self.send(200, json.dumps({"models": models}).encode(), "application/json")

            def do_POST(self) -> None:
                api.pulled.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                if status != 200:
                    return self.send(status, json.dumps(pull[0]).encode(), "application/json")
                return self.send(200, b"".join(json.dumps(x).encode() + b"\n" for x in pull),
                                 "application/x-ndjson")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


DIGEST = "sha256:" + "c6eb396dbd59" * 5 + "abcd"
DOCUMENTED_PULL = [
    {"status": "pulling manifest"},
    {"status": "pulling c6eb396dbd59", "digest": DIGEST, "total": 4_920_753_328,
     "completed": 241_970},
    {"status": "pulling c6eb396dbd59", "digest": DIGEST, "total": 4_920_753_328,
     "completed": 4_920_753_328},
    {"status": "verifying sha256 digest"}, {"status": "writing manifest"},
    {"status": "success"}]


def ollama_project(tmp_path: Path, api: OllamaApi, monkeypatch: pytest.MonkeyPatch
                   ) -> tuple[Loaded, FakeEngine]:
    loaded = project(tmp_path, source="ollama:llama3.1:8b", backend="ollama")
    monkeypatch.setattr(fetch, "ollama_url", lambda project, model: api.url)
    engine = FakeEngine(project=loaded.spec.project)
    engine.ensure_network()
    return loaded, engine


def test_ollama_tag_is_pulled_through_its_api_after_its_container_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    api = OllamaApi(have=["other:latest"], pull=DOCUMENTED_PULL)
    loaded, engine = ollama_project(tmp_path, api, monkeypatch)
    events = Events()
    deploy.up(loaded, engine, events, local_engine=False)
    assert engine.calls.index(f"start {SERVICE}") < engine.calls.index(f"run pull-{SERVICE}")
    assert api.pulled == [{"model": "llama3.1:8b"}]
    assert (SERVICE, "downloading", "242.0 kB / 4.9 GB (0%)") in events.seen
    assert any(e[:2] == (SERVICE, "pulled") and e[2].startswith("llama3.1:8b: 4.9 GB in")
               for e in events.seen)


def test_an_ollama_tag_already_there_is_not_pulled_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    api = OllamaApi(have=["llama3.1:8b"], pull=DOCUMENTED_PULL)
    loaded, engine = ollama_project(tmp_path, api, monkeypatch)
    events = Events()
    fetch.pull_ollama(loaded.spec, engine, events)
    assert api.pulled == [] and (SERVICE, "present", "llama3.1:8b") in events.seen


@pytest.mark.parametrize(("pull", "status", "error", "message"), [
    ([{"status": "pulling manifest"},
      {"error": "pull model manifest: file does not exist"}], 200, SourceAccessError,
     "Ollama's registry has no model 'llama3.1:8b': pull model manifest: file does not exist"),
    ([{"error": "pull model manifest: Get \"https://registry.ollama.ai/v2/library/llama3.1/"
                "manifests/8b\": dial tcp: lookup registry.ollama.ai: no such host"}], 500,
     FetchError, "Ollama could not download 'llama3.1:8b': pull model manifest"),
])
def test_a_failed_ollama_pull_names_the_model_and_the_fix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pull: list[dict[str, Any]],
        status: int, error: type, message: str) -> None:
    api = OllamaApi(have=[], pull=pull, status=status)
    loaded, engine = ollama_project(tmp_path, api, monkeypatch)
    with pytest.raises(error) as info:
        fetch.pull_ollama(loaded.spec, engine, Events())
    assert f"model 'coder' (source: ollama:llama3.1:8b): {message}" in info.value.message
