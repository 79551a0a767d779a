"""llmstack benchmarks: one command, every figure next to its baseline measured in the same run.

    python benchmarks/run.py [--quick] [--out DIR] [--only-up] [--baseline-src DIR]

Brings up the demo stack in its own temporary project (unique name, free 127.0.0.1 ports),
measures, tears everything down, and writes DIR/<date>.md, .json and .png (default
benchmarks/results/); the .md says how each figure was measured. All load goes to 127.0.0.1
or the project's own Docker network and is bounded in request count and time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402
import http_load  # noqa: E402
import report  # noqa: E402
from harness import BenchStack  # noqa: E402
from http_load import Target  # noqa: E402
from report import BASELINE, VARIANTS  # noqa: E402

from llmstack import names, pull, spec  # noqa: E402
from llmstack.backends import BACKENDS  # noqa: E402

# Targets of the issue (benchmarks): value <op> limit.
GATEWAY_P50_MAX_RATIO = 1.10
TTFT_MAX_EXTRA_MS = 5.0
DIRECT_ROUTE_P50_MAX_RATIO = 1.03  # route: direct, against its own container reached directly
DIRECT_ROUTE_TTFT_MAX_EXTRA_MS = 3.0
COLD_UP_MAX_RATIO = 1.3
NOOP_UP_MAX_S = 1.0
NOOP_VS_COMPOSE_MAX_RATIO = 0.5
HELP_MAX_MS = 250.0
STATUS_MAX_S = 0.5  # `llmstack status` with five containers
LIMITER_TOLERANCE = 1  # requests: nginx's ms clock vs the client's view of the arrival spread
NOOP_IMPORTS = ("import llmstack.cli, llmstack.deploy, llmstack.project, "
                "llmstack.engine.containers, docker")  # a no-op `up`'s imports
OPEN_RATE = (100_000, 100_000)  # during latency runs, so they measure the path, not the limiter


@dataclass(frozen=True)
class Budget:
    help_runs: int
    cold_ups: int
    noop_ups: int
    limiter_trials: int
    limiter_count: int
    lat_rounds_c1: int
    lat_rounds_c8: int
    ttft_rounds: int
    rotate_seconds: float
    max_tokens: int
    warmup: int  # unrecorded rounds before each load phase
    embed: bool
    compose_ready: bool  # wait for the compose baseline to answer (and check a chat)
    phase_s: float  # deadline of each load phase


FULL = Budget(help_runs=9, cold_ups=3, noop_ups=7, limiter_trials=3, limiter_count=40,
              lat_rounds_c1=60, lat_rounds_c8=12, ttft_rounds=40, rotate_seconds=10,
              max_tokens=8, warmup=2, embed=True, compose_ready=True, phase_s=120)
QUICK = Budget(help_runs=3, cold_ups=1, noop_ups=2, limiter_trials=1, limiter_count=30,
               lat_rounds_c1=2, lat_rounds_c8=1, ttft_rounds=2, rotate_seconds=2,
               max_tokens=4, warmup=0, embed=False, compose_ready=False, phase_s=20)


def stack_images(stack: BenchStack) -> list[str]:
    """The images the stack runs here (its `images:` source as this engine decides it)."""
    parsed = spec.StackSpec.model_validate(stack.spec())
    return sorted(pull.stack_refs(parsed, parsed.images.effective_source))


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def target(value: float | None, limit: float, op: str, unit: str, what: str,
           baseline: str) -> dict[str, Any]:
    """One target check: `value op limit` (op is '<=' or '<'); None means not measured."""
    met = None if value is None else (value <= limit if op == "<=" else value < limit)
    return {"what": what, "value": value, "op": op, "limit": limit, "unit": unit,
            "baseline": baseline, "met": met}


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


# --- Phases ---------------------------------------------------------------------------------


def bench_help(budget: Budget) -> dict[str, Any]:
    """`llmstack --help` wall time vs a bare interpreter start, interleaved."""
    cli, bare = [], []
    for _ in range(budget.help_runs):
        cli.append(harness.run_timed([*harness.llmstack_cmd(), "--help"], timeout=60)
                   .check("llmstack --help").seconds * 1000)
        bare.append(harness.run_timed([sys.executable, "-c", "pass"], timeout=60)
                    .seconds * 1000)
    value = round(median(cli), 1)
    return {"median_ms": value, "samples_ms": [round(v, 1) for v in cli],
            "baseline_python_ms": round(median(bare), 1),
            "baseline_samples_ms": [round(v, 1) for v in bare],
            "target": target(value, HELP_MAX_MS, "<", "ms", "`llmstack --help` start time",
                             "bare `python -c pass`")}


def up_json(stack: BenchStack, what: str) -> tuple[float, dict[str, Any]]:
    timed = stack.cli("up", "--json", timeout=900).check(what)
    return timed.seconds, json.loads(timed.stdout)


def bench_cold_up(stack: BenchStack, budget: Budget, baseline: str | None = None
                  ) -> dict[str, Any]:
    """`up` with images present and no containers, to ready, vs the slowest service's own
    time from its start to ready (`up --json` ready_seconds); with `baseline`, that source
    folder's llmstack too, interleaved (each cold `up` after a `down`)."""
    samples: list[dict[str, Any]] = []
    before: list[dict[str, Any]] = []
    for i in range(budget.cold_ups):
        for src, into in ((None, samples), (baseline, before)) if baseline else ((None, samples),):
            if into or i or src:
                stack.cli("down", timeout=300).check("llmstack down")
            into.append(_cold_once(stack, src))
            log(f"cold up {i + 1}{' (baseline)' if src else ''}: {into[-1]['wall_s']}s, slowest "
                f"{into[-1]['slowest_service']} {into[-1]['slowest_ready_s']}s")
    if baseline:  # leave the stack as this tree's `up` makes it
        stack.cli("down", timeout=300).check("llmstack down")
        samples.append(_cold_once(stack, None))
    out = _cold_summary(samples)
    if before:
        out["baseline"] = {"src": baseline, **_cold_summary(before)}
    out["target"] = target(out["ratio"], COLD_UP_MAX_RATIO, "<=", "x",
                           "cold `up` to ready / slowest service's own ready time",
                           "slowest service's ready time (same `up`)"
                           + (f"; before: {out['baseline']['ratio']}x" if before else ""))
    return out


def _cold_once(stack: BenchStack, src: str | None) -> dict[str, Any]:
    timed, lines = harness.run_timeline([*harness.llmstack_cmd(), "up", "--json"],
                                        cwd=stack.root, timeout=900, src=src)
    data = json.loads(timed.check("cold llmstack up").stdout)
    wall = timed.seconds
    ready = data.get("ready_seconds") or {}
    slowest = max(ready, key=lambda k: ready[k]) if ready else ""
    return {"wall_s": round(wall, 2), "internal_s": data.get("seconds"),
            "ready_seconds": {k: round(v, 2) for k, v in ready.items()},
            "slowest_service": slowest, "slowest_ready_s": round(ready.get(slowest, 0.0), 2),
            "ratio": round(wall / ready[slowest], 2) if slowest else None,
            "timeline_s": _timeline(lines)}


def _cold_summary(samples: list[dict[str, Any]]) -> dict[str, Any]:
    ratios = [s["ratio"] for s in samples if s["ratio"]]
    mid = sorted(samples, key=lambda s: s["ratio"] or 0)[len(samples) // 2]
    return {"wall_s": mid["wall_s"], "slowest_service": mid["slowest_service"],
            "slowest_ready_s": mid["slowest_ready_s"],
            "ratio": round(median(ratios), 2) if ratios else None,
            "ready_seconds": mid["ready_seconds"], "timeline_s": mid["timeline_s"],
            "samples": samples}


def bench_status(stack: BenchStack, budget: Budget, baseline: str | None = None
                 ) -> dict[str, Any]:
    """`llmstack status --json` wall time on the converged stack (five containers, every
    one probed); with `baseline`, that source folder's llmstack interleaved."""
    ours: list[float] = []
    theirs: list[float] = []
    services = 0
    for _ in range(budget.noop_ups):
        mine = stack.cli("status", "--json", timeout=120).check("llmstack status")
        ours.append(mine.seconds)
        services = len(json.loads(mine.stdout)["services"])
        if baseline:
            theirs.append(stack.cli("status", "--json", timeout=120, src=baseline)
                          .check("llmstack status (baseline)").seconds)
    value = round(median(ours), 3)
    log(f"status: {value}s" + (f", baseline {round(median(theirs), 3)}s" if theirs else ""))
    return {"median_s": value, "samples_s": [round(v, 3) for v in ours],
            "services": services,
            **({"baseline_src": baseline, "baseline_median_s": round(median(theirs), 3),
                "baseline_samples_s": [round(v, 3) for v in theirs]} if theirs else {}),
            "target": target(value, STATUS_MAX_S, "<", "s", "`llmstack status` (median)",
                             "none" + (f"; before: {round(median(theirs), 3)} s"
                                       if theirs else ""))}


def _timeline(lines: list[tuple[float, str]]) -> dict[str, dict[str, float]]:
    """{service: {state: first offset}} from `up`'s progress lines ("SERVICE STATE ...")."""
    out: dict[str, dict[str, float]] = {}
    for offset, line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[1] in ("starting", "ready"):
            out.setdefault(parts[0], {}).setdefault(parts[1], offset)
    return out


def bench_limiter(stack: BenchStack, budget: Budget) -> dict[str, Any]:
    """N requests at once against rate/burst: accepted vs burst + 1 + rate x spread."""
    rate, burst = stack.rate
    key = stack.keys.master
    trials = []
    for i in range(budget.limiter_trials):
        if i:
            # Let the bucket drain completely so each trial starts from an empty bucket.
            time.sleep((burst + budget.limiter_count) / rate + 1)
        got = http_load.burst_at_once("127.0.0.1", stack.local_port, "/v1/models", key,
                                      budget.limiter_count)
        spread_s = got["send_spread_ms"] / 1000
        theory = min(budget.limiter_count, burst + 1 + int(rate * spread_s))
        got["theoretical"] = theory
        got["error"] = got["accepted"] - theory
        trials.append(got)
        log(f"limiter trial {i + 1}: {got['accepted']} accepted of {got['sent']} "
            f"(theory {theory}, spread {got['send_spread_ms']} ms)")
    worst = max(trials, key=lambda t: abs(t["error"]))
    return {"rate_per_s": rate, "burst": burst, "sent": budget.limiter_count,
            "accepted": worst["accepted"], "theoretical": worst["theoretical"],
            "rejected_429": worst["rejected"], "other": worst["other"], "trials": trials,
            "target": target(abs(worst["error"]), LIMITER_TOLERANCE, "<=", "requests",
                             "accepted minus theoretical, absolute (worst trial)",
                             "burst + 1 + rate x send spread")}


def targets_of(stack: BenchStack, docker: Any) -> list[Target]:
    keys = stack.keys
    model_ip = harness.container_ip(docker, stack.project, names.model_service(stack.chat_model))
    litellm_ip = harness.container_ip(docker, stack.project, names.LITELLM)
    path = "/v1/chat/completions"
    chat = next(m for m in stack.spec()["models"] if m["name"] == stack.chat_model)
    port = BACKENDS[chat.get("backend", "llamacpp")].port
    twin = harness.DIRECT_MODEL
    twin_ip = harness.container_ip(docker, stack.project, names.model_service(twin))
    return [
        Target("direct", model_ip, port, path),
        Target("litellm", litellm_ip, names.LITELLM_PORT, path, key=keys.internal),
        Target("nginx_http", "127.0.0.1", stack.local_port, path, key=keys.master),
        Target("nginx_tls", "127.0.0.1", stack.https_port, path, key=keys.master,
               tls_ca=str(stack.ca)),
        # The same server once more (its twin container), and nginx sending it there directly.
        Target("direct_twin", twin_ip, port, path, model=twin),
        Target("route_direct_http", "127.0.0.1", stack.local_port, path, key=keys.master,
               model=twin),
        Target("route_direct_tls", "127.0.0.1", stack.https_port, path, key=keys.master,
               tls_ca=str(stack.ca), model=twin),
    ]


def bench_latency(stack: BenchStack, targets: list[Target], budget: Budget, docker: Any,
                  raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
    model, tokens = stack.chat_model, budget.max_tokens

    def chat(c: http_load.Client, t: Target) -> http_load.Sample:
        return c.chat(t, model, tokens)

    out: dict[str, Any] = {"max_tokens": tokens, "model": model, "temperature": 0}
    peak: dict[str, float] = {}
    for conc, rounds in ((1, budget.lat_rounds_c1), (8, budget.lat_rounds_c8)):
        stop = threading.Event()
        sampler = None
        if conc == 8:
            sampler = threading.Thread(target=_sample_memory, args=(docker, stack.project,
                                                                    peak, stop), daemon=True)
            sampler.start()
        got = http_load.interleaved(targets, chat, rounds, conc, seed=conc,
                                    deadline=time.monotonic() + budget.phase_s,
                                    warmup=budget.warmup)
        stop.set()
        if sampler:
            sampler.join(30)
        per: dict[str, Any] = {}
        for t in targets:
            secs = got.ok_seconds(t.name)
            stats = http_load.summary(secs)
            stats["failed"] = sum(1 for s in got.samples if s.target == t.name and
                                  s.status != 200)
            toks = [s.tokens for s in got.samples if s.target == t.name and s.status == 200]
            stats["completion_tokens"] = round(sum(toks) / len(toks), 2) if toks else 0
            per[t.name] = stats
            raw.setdefault(f"latency_c{conc}", {})[t.name] = [round(v * 1000, 3) for v in secs]
        for name, stats in per.items():
            base = per.get(BASELINE.get(name, "direct"), {})
            for p in ("p50", "p95", "p99"):
                if stats.get(p) and base.get(p):
                    stats[f"{p}_x_direct"] = round(stats[p] / base[p], 3)
        out[f"c{conc}"] = per
        log(f"latency c={conc}: " + ", ".join(f"{n} p50 {s.get('p50')} ms"
                                              for n, s in per.items()))
    out["targets"] = [
        target(out[f"c{c}"][v].get("p50_x_direct"), GATEWAY_P50_MAX_RATIO, "<=", "x",
               f"p50 through {VARIANTS[v]}, c={c}",
               f"direct to llama.cpp, c={c}")
        for c in (1, 8) for v in ("nginx_http", "nginx_tls")
    ] + [
        target(out[f"c{c}"][v].get("p50_x_direct"), DIRECT_ROUTE_P50_MAX_RATIO, "<=", "x",
               f"p50 through {VARIANTS[v]}, c={c}",
               f"direct to the same llama.cpp container, c={c}")
        for c in (1, 8) for v in ("route_direct_http", "route_direct_tls")
    ]
    return out, peak


def _sample_memory(docker: Any, project: str, peak: dict[str, float],
                   stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            for svc, mib in harness.memory_snapshot(docker, project).items():
                peak[svc] = max(peak.get(svc, 0.0), mib)
        except Exception as exc:  # a stats call racing a container: keep sampling
            log(f"memory sample failed: {exc}")
        stop.wait(0.5)


def bench_ttft(stack: BenchStack, targets: list[Target], budget: Budget,
               raw: dict[str, Any]) -> dict[str, Any]:
    model, tokens = stack.chat_model, budget.max_tokens

    def first(c: http_load.Client, t: Target) -> http_load.Sample:
        return c.first_token(t, model, tokens)

    got = http_load.interleaved(targets, first, budget.ttft_rounds, 1, seed=7,
                                deadline=time.monotonic() + budget.phase_s,
                                warmup=budget.warmup)
    per = {}
    for t in targets:
        secs = got.ok_seconds(t.name)
        per[t.name] = http_load.summary(secs)
        per[t.name]["failed"] = sum(1 for s in got.samples if s.target == t.name and
                                    s.status != 200)
        raw.setdefault("ttft", {})[t.name] = [round(v * 1000, 3) for v in secs]
    for name, stats in per.items():
        direct = per.get(BASELINE.get(name, "direct"), {}).get("p50")
        if direct is not None and stats.get("p50") is not None:
            stats["p50_minus_direct_ms"] = round(stats["p50"] - direct, 2)
    log("ttft: " + ", ".join(f"{n} p50 {s.get('p50')} ms" for n, s in per.items()))
    return {"max_tokens": tokens, **per, "targets": [
        target(per[v].get("p50_minus_direct_ms"), TTFT_MAX_EXTRA_MS, "<=", "ms",
               f"first token p50 through {VARIANTS[v]} minus direct",
               "direct to llama.cpp, streaming")
        for v in ("nginx_http", "nginx_tls")] + [
        target(per[v].get("p50_minus_direct_ms"), DIRECT_ROUTE_TTFT_MAX_EXTRA_MS, "<=", "ms",
               f"first token p50 through {VARIANTS[v]} minus direct",
               "direct to the same llama.cpp container, streaming")
        for v in ("route_direct_http", "route_direct_tls")]}


def bench_noop_vs_compose(stack: BenchStack, work: Path, budget: Budget,
                          docker: Any, baseline: str | None = None) -> dict[str, Any]:
    """No-change `llmstack up` vs no-change `docker-compose up -d` of the exported
    equivalent, both stacks up side by side, runs interleaved (with `baseline`, that source
    folder's llmstack's no-change `up` too)."""
    import shutil

    compose_bin = shutil.which("docker-compose")
    other = stack.clone(work / "compose-src", stack.project + "-c")
    out_dir = work / "compose"
    other.cli("export", "compose", "--out", str(out_dir), timeout=120).check("export compose")
    result: dict[str, Any] = {"compose_project": other.project,
                              "compose_file": "llmstack export compose (docker-compose.yml)"}
    if compose_bin is None:
        result["error"] = "docker-compose not installed (apt-get install -y docker-compose)"
        return result
    version = harness.run_timed([compose_bin, "version", "--short"], timeout=60)
    result["compose_version"] = version.stdout.strip()
    cold = harness.run_timed([compose_bin, "up", "-d"], cwd=out_dir, timeout=600)
    cold.check("docker-compose up -d")
    result["compose_cold_up_s"] = round(cold.seconds, 2)
    if budget.compose_ready:
        ready_s = _wait_http_ok(f"http://127.0.0.1:{other.local_port}/health", timeout=300)
        result["compose_cold_to_ready_s"] = round(cold.seconds + ready_s, 2)
        log(f"compose cold up {cold.seconds:.1f}s, ready after {cold.seconds + ready_s:.1f}s")
        result["compose_stack_answers"] = _chat_once(other, "127.0.0.1", other.local_port)
    ours: list[float] = []
    theirs: list[float] = []
    imports: list[float] = []  # what a no-op pays before its first engine call
    before: list[float] = []  # the baseline source's no-change `up`
    fast: list[bool] = []  # whether each no-change `up` took the fast path
    discarded = []
    up_json(stack, "llmstack up (settle)")  # converge first: only no-change runs count
    for _ in range(budget.noop_ups * 2):  # bounded retries if the tree changes under us
        if len(ours) == budget.noop_ups:
            break
        wall, data = up_json(stack, "no-op llmstack up")
        if data.get("changed"):
            # Someone edited templates or code meanwhile (a shared work tree): not a no-op.
            discarded.append([a for a in data.get("actions", []) if a.get("action") != "keep"])
            continue
        ours.append(wall)
        fast.append(bool(data.get("fast")))
        if baseline:
            b = stack.cli("up", "--json", timeout=300, src=baseline).check("baseline up")
            if json.loads(b.stdout).get("changed"):
                raise RuntimeError(f"the baseline's no-change `up` changed something: {b.stdout}")
            before.append(b.seconds)
        t = harness.run_timed([compose_bin, "up", "-d"], cwd=out_dir, timeout=300)
        t.check("no-op docker-compose up -d")
        if "up-to-date" not in t.stderr + t.stdout:
            raise RuntimeError(f"docker-compose recreated something:\n{t.stderr}")
        theirs.append(t.seconds)
        imports.append(harness.run_timed([sys.executable, "-c", NOOP_IMPORTS], timeout=120)
                       .check("imports").seconds)
    down = harness.run_timed([compose_bin, "down"], cwd=out_dir, timeout=300)
    result["compose_down_s"] = round(down.seconds, 2)
    if discarded:
        result["discarded_llmstack_runs"] = discarded
    if not ours:
        raise RuntimeError(f"no `llmstack up` run was a no-op: {discarded}")
    ours_s, theirs_s = round(median(ours), 3), round(median(theirs), 3)
    ratio = round(ours_s / theirs_s, 3) if theirs_s else None
    log(f"no-op up: llmstack {ours_s}s, docker-compose {theirs_s}s")
    result.update({
        "llmstack_s": ours_s, "llmstack_samples_s": [round(v, 3) for v in ours],
        "compose_s": theirs_s, "compose_samples_s": [round(v, 3) for v in theirs],
        "llmstack_imports_s": round(median(imports), 3),
        "fast_path_runs": sum(fast),
        **({"baseline_src": baseline, "baseline_s": round(median(before), 3),
            "baseline_samples_s": [round(v, 3) for v in before],
            "baseline_ratio": round(median(before) / theirs_s, 3) if theirs_s else None}
           if before else {}),
        "ratio": ratio,
        "targets": [
            target(ours_s, NOOP_UP_MAX_S, "<", "s", "no-change `llmstack up` (median)",
                   "no-change `docker-compose up -d`"),
            target(ratio, NOOP_VS_COMPOSE_MAX_RATIO, "<=", "x",
                   "no-change `llmstack up` / no-change `docker-compose up -d`",
                   "no-change `docker-compose up -d`"),
        ]})
    return result


def _wait_http_ok(url: str, timeout: float) -> float:
    import urllib.error
    import urllib.request

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f}s")


def _chat_once(stack: BenchStack, host: str, port: int) -> bool:
    t = Target("check", host, port, "/v1/chat/completions", key=stack.keys.master)
    c = http_load.Client()
    try:
        return c.chat(t, stack.chat_model, 4).status == 200
    finally:
        c.close()


def bench_rotate(stack: BenchStack, budget: Budget) -> dict[str, Any]:
    """benchmarks/rotate_key.py's measure(stack_dir, seconds), written with rotate-key."""
    path = HERE / "rotate_key.py"
    if not path.exists():
        return {"available": False, "note": "not available: benchmarks/rotate_key.py does "
                                            "not exist yet"}
    spec = importlib.util.spec_from_file_location("rotate_key", path)
    if spec is None or spec.loader is None:
        return {"available": False, "note": "not available: cannot load rotate_key.py"}
    module = importlib.util.module_from_spec(spec)
    sys.modules["rotate_key"] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        measured = module.measure(stack.root, budget.rotate_seconds)
    except Exception as exc:
        return {"available": False, "note": f"rotate_key.measure failed: "
                                            f"{type(exc).__name__}: {exc}"[:500]}
    return {"available": True, "seconds": budget.rotate_seconds, **dict(measured)}


def bench_updates(stack: BenchStack) -> dict[str, Any]:
    """benchmarks/updates.py's measure: each change under load, start-first next to
    stop-first (the in-place recreate of earlier versions)."""
    try:
        from benchmarks import updates

        return {"available": True, "runs": updates.measure(stack.root)}
    except Exception as exc:
        return {"available": False, "note": f"updates.measure failed: "
                                            f"{type(exc).__name__}: {exc}"[:500]}


# --- Main -----------------------------------------------------------------------------------


def run(budget: Budget, out: Path, quick: bool, project: str | None,
        skip_updates: bool = False, only_up: bool = False,
        baseline: str | None = None) -> tuple[Path, bool]:
    started = time.monotonic()
    docker = harness.client()
    results: dict[str, Any] = {"meta": {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": "quick" if quick else "full", "budget": asdict(budget),
        "host": {"cpus": os.cpu_count(), "load_avg_start": list(os.getloadavg()),
                 "python": platform.python_version(), "platform": platform.platform(),
                 "docker_engine": docker.version().get("Version")}}}
    raw: dict[str, Any] = {}
    name = project or harness.unique_project()
    loads: dict[str, float] = results["meta"].setdefault("load_avg_1m_after", {})

    def phase_done(phase: str) -> None:
        # Other work on a shared machine shows up here; the figures of a phase with a high
        # load average are noisier (ratios less so: variants are interleaved).
        loads[phase] = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="llmstack-bench-") as tmp:
        work = Path(tmp)
        stack: BenchStack | None = None
        try:
            log("llmstack --help start time")
            results["help_start"] = bench_help(budget)
            phase_done("help_start")
            stack = BenchStack.create(work / "stack", name, embed=budget.embed)
            results["meta"]["project"] = stack.project
            results["meta"]["images"] = {t: (docker.images.get(t).short_id)
                                         for t in stack_images(stack)}
            log(f"cold up of {stack.project} (ports {stack.local_port}/{stack.https_port})")
            results["up_cold"] = bench_cold_up(stack, budget, baseline)
            phase_done("up_cold")
            if only_up:  # `up` and `status` only: the no-op against compose, then status
                log("no-op up vs docker-compose on the exported compose file")
                results["up_noop"] = bench_noop_vs_compose(stack, work, budget, docker,
                                                           baseline)
                phase_done("up_noop")
                results["status"] = bench_status(stack, budget, baseline)
                phase_done("status")
                raise _Done
            results["rate_limiter"] = bench_limiter(stack, budget)  # the starter's limit
            phase_done("rate_limiter")
            idle = harness.memory_snapshot(docker, stack.project)
            log("opening the rate limit for the latency runs")
            stack.rewrite(rate=OPEN_RATE)
            changed, _ = up_json(stack, "llmstack up (rate limit change)")
            results["meta"]["up_after_config_change_s"] = round(changed, 2)
            targets = targets_of(stack, docker)
            lat, peak = bench_latency(stack, targets, budget, docker, raw)
            results["gateway_latency"] = lat
            phase_done("gateway_latency")
            results["memory_mib"] = {"idle": idle, "under_load_peak": peak,
                                     "load": "concurrency-8 latency phase"}
            results["streaming_ttft"] = bench_ttft(stack, targets, budget, raw)
            phase_done("streaming_ttft")
            log("no-op up vs docker-compose on the exported compose file")
            results["up_noop"] = bench_noop_vs_compose(stack, work, budget, docker)
            phase_done("up_noop")
            log("rotate-key")
            results["rotate_key"] = bench_rotate(stack, budget)
            phase_done("rotate_key")
            if not quick and not skip_updates:  # about 10 minutes: six changes
                log("changes under load (start-first vs stop-first)")
                results["updates"] = bench_updates(stack)
                phase_done("updates")
            down = stack.cli("down", "--volumes", timeout=300)
            results["meta"]["down_s"] = round(down.seconds, 2)
        except _Done:
            down = stack.cli("down", "--volumes", timeout=300) if stack else None
            results["meta"]["down_s"] = round(down.seconds, 2) if down else None
        except Exception as exc:
            # Keep what was measured; the report says where it stopped.
            results["error"] = f"{type(exc).__name__}: {exc}"[:4000]
            log(traceback.format_exc())
        finally:
            if stack is not None:
                harness.cleanup(docker, stack.project)
                harness.cleanup(docker, stack.project + "-c")
    results["meta"]["load_avg_end"] = list(os.getloadavg())
    results["meta"]["duration_s"] = round(time.monotonic() - started, 1)
    return report.write(results, raw, out), "error" not in results


class _Done(Exception):
    """--only-up: the phases asked for are measured."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny budget (smoke test)")
    parser.add_argument("--out", type=Path, default=HERE / "results",
                        help="folder for <date>.md/.json/.png (default benchmarks/results)")
    parser.add_argument("--project", help="project name to use (default bench-<random>)")
    parser.add_argument("--skip-updates", action="store_true",
                        help="leave out the changes-under-load phase (about 10 minutes)")
    parser.add_argument("--only-up", action="store_true",
                        help="only `--help`, cold and no-change `up` and `status` (minutes)")
    parser.add_argument("--baseline-src", metavar="DIR",
                        help="also time that source folder's llmstack (e.g. main's src/), "
                        "interleaved, in the up and status phases")
    args = parser.parse_args()

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # run the clean-up in `finally`

    signal.signal(signal.SIGTERM, interrupted)
    budget = QUICK if args.quick else FULL
    md, ok = run(budget, args.out, args.quick, args.project, args.skip_updates, args.only_up,
                 args.baseline_src)
    print(md)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
