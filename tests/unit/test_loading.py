"""The progress-following model load deadline (loading.py): what counts as progress, when a
model fails, and the load phases read from each backend's real log lines."""

from __future__ import annotations

import pytest

from llmstack import loading
from llmstack.backends import BACKENDS
from llmstack.engine.api import Activity
from llmstack.loading import Loading, Watch

LOADING = Loading(ceiling_s=3600.0, field="models[0].load_timeout",
                  phases=BACKENDS["llamacpp"].load_phases)


def quiet(cursor: str = "1", read: int = 0, memory: int = 0) -> Activity:
    return Activity("", cursor, read, memory)


def test_a_model_that_shows_nothing_fails_after_the_stall_window() -> None:
    watch = Watch(LOADING, started=0.0)
    assert watch.observe(0.0, "ERR refused", quiet()) is None
    assert watch.observe(loading.STALL_S, "ERR refused", quiet()) is None
    why = watch.observe(loading.STALL_S + 1, "ERR refused", quiet())
    assert why is not None and why.startswith("no sign of progress for 601s")
    assert "last phase: starting" in why


@pytest.mark.parametrize("sign", ["log", "reads", "memory", "probe"])
def test_each_sign_of_progress_moves_the_deadline(sign: str) -> None:
    watch = Watch(LOADING, started=0.0)
    watch.observe(0.0, "ERR refused", quiet(read=1 << 30, memory=1 << 30))
    t = loading.STALL_S - 10
    seen = {"log": Activity("load_tensors: CPU_Mapped model buffer", "2", 1 << 30, 1 << 30),
            "reads": quiet(read=(1 << 30) + loading.READ_STEP, memory=1 << 30),
            "memory": quiet(read=1 << 30, memory=(1 << 30) + loading.MEMORY_STEP),
            "probe": quiet(read=1 << 30, memory=1 << 30)}[sign]
    outcome = "503" if sign == "probe" else "ERR refused"
    assert watch.observe(t, outcome, seen) is None
    # Silent since: it fails a whole stall window after that sign, not after the start.
    assert watch.observe(t + loading.STALL_S, outcome, quiet(read=1 << 30, memory=1 << 30)) \
        is None
    assert watch.observe(t + loading.STALL_S + 1, outcome, None) is not None


def test_noise_is_not_progress() -> None:
    """A hung process's memory and read counters wobble; small changes and a fall do not
    count, and neither does the first probe answer or an unchanged one."""
    watch = Watch(LOADING, started=0.0)
    watch.observe(0.0, "503", quiet(read=10 << 20, memory=512 << 20))
    for i, t in enumerate(range(60, int(loading.STALL_S) + 61, 60)):
        why = watch.observe(float(t), "503",
                            quiet(read=(10 << 20) + 4096 * i, memory=(500 + i % 3) << 20))
    assert why is not None and why.startswith("no sign of progress")


def test_the_ceiling_ends_a_load_that_keeps_showing_progress() -> None:
    watch = Watch(Loading(120.0, "models[2].load_timeout", LOADING.phases), started=0.0)
    for t in range(0, 121, 5):
        assert watch.observe(float(t), "503", Activity("load_tensors: layer", str(t))) is None
    why = watch.observe(121.0, "503", Activity("load_tensors: layer", "x"))
    assert why == ("not ready after 121s, the ceiling models[2].load_timeout sets (120s; "
                   "last phase: loading tensors)")


def test_a_ceiling_below_the_stall_window_is_the_stall_window() -> None:
    watch = Watch(Loading(60.0, "models[0].load_timeout"), started=0.0)
    watch.observe(0.0, "503", quiet())
    assert watch.observe(61.0, "503", None) is not None


def test_the_cursor_moves_and_activity_is_read_every_few_seconds() -> None:
    watch = Watch(LOADING, started=0.0)
    assert watch.due(0.0)
    watch.observe(0.0, "503", Activity("a", "17"))
    assert watch.cursor == "17"
    assert not watch.due(loading.SAMPLE_S - 0.1) and watch.due(loading.SAMPLE_S)
    watch.observe(1.0, "503", None)  # a poll without a read keeps the cursor
    assert watch.cursor == "17"


def test_the_waiting_line_names_the_phase_and_a_long_silence() -> None:
    watch = Watch(LOADING, started=0.0)
    watch.observe(0.0, "503", Activity("srv    load_model: loading model '/models/x.gguf'", "1"))
    assert watch.detail(1.0) == "reading the GGUF file"
    assert watch.detail(100.0) == "reading the GGUF file, quiet for 100s"


# Log lines as each server prints them while it starts (llama-server of the llamacpp image;
# vLLM v0.11 and TGI 3.3 lines as their sources write them).
PHASES = {
    "llamacpp": [
        ("main: loading model", None),
        ("srv    load_model: loading model '/models/SmolLM2.gguf'", "reading the GGUF file"),
        ("llama_model_loader: loaded meta data with 33 key-value pairs and 272 tensors",
         "reading the GGUF file"),
        ("load_tensors:   CPU_Mapped model buffer size =    82.47 MiB", "loading tensors"),
        ("llama_context: constructing llama_context", "allocating the context and KV cache"),
        ("0.01.208.273 I srv    load_model: initializing, n_slots = 4, n_ctx_slot = 512",
         "allocating the context and KV cache"),
        ("common_init_from_params: warming up the model with an empty run - please wait ...",
         "warming up"),
        ("0.01.210.451 I srv  llama_server: model loaded", "model loaded, starting the server"),
    ],
    "vllm": [
        ("(EngineCore_DP0 pid=213) INFO 10-08 12:00:01 [default_loader.py:267] Loading "
         "safetensors checkpoint shards:  50% Completed | 2/4 [00:41<00:41, 20.6s/it]",
         "loading weights 50%"),
        ("INFO [gpu_model_runner.py:2653] Model loading took 14.2488 GiB and 84.1 seconds",
         "weights loaded, compiling"),
        ("INFO [backends.py:548] Dynamo bytecode transform time: 8.70 s",
         "compiling with torch.compile (slow on a cold cache)"),
        ("INFO [gpu_worker.py:298] Available KV cache memory: 98.51 GiB",
         "measuring memory for the KV cache"),
        ("Capturing CUDA graphs (mixed prefill-decode, PIECEWISE): 100%|", "capturing CUDA graphs"),
        ("(APIServer pid=1) INFO [api_server.py:1839] Starting vLLM API server 0 on "
         "http://0.0.0.0:8000", "starting the API server"),
    ],
    "tgi": [
        ("INFO download: text_generation_launcher: Starting check and download process for "
         "/data/models", None),
        ("INFO shard-manager: text_generation_launcher: Starting shard rank=0",
         "loading shards"),
        ("INFO shard-manager: text_generation_launcher: Waiting for shard to be ready... rank=0",
         "loading shards"),
        ("INFO shard-manager: text_generation_launcher: Shard ready in 31.2s rank=0",
         "shards ready"),
        ("INFO text_generation_router_v3: backends/v3/src/lib.rs:125: Warming up model",
         "warming up"),
    ],
    "ollama": [
        ('level=INFO source=routes.go:1528 msg="Listening on [::]:11434 (version 0.12.6)"',
         "serving, waiting for the model's tag"),
        ('level=INFO source=server.go:400 msg="starting llama server"', "loading the model"),
        ('level=INFO source=server.go:1289 msg="llama runner started in 2.01 seconds"',
         "model loaded, warming up"),
    ],
}


@pytest.mark.parametrize("backend", sorted(PHASES))
def test_each_backend_names_its_load_phases_from_its_own_log_lines(backend: str) -> None:
    phases = BACKENDS[backend].load_phases
    for line, phase in PHASES[backend]:
        assert loading.phase_of(phases, line) == phase, line
    # A chunk of several lines: the last one that names a phase wins.
    chunk = "\n".join(line for line, _ in PHASES[backend]) + "\nsome other line"
    assert loading.phase_of(phases, chunk) == PHASES[backend][-1][1]
