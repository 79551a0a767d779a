"""Results of one benchmark run: <date>.json (every figure and its raw samples), <date>.md
(tables, targets, notes on misses) and <date>.png (latency distributions)."""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from pathlib import Path
from typing import Any

VARIANTS = {"direct": "direct to llama.cpp", "litellm": "LiteLLM",
            "nginx_http": "nginx + LiteLLM (HTTP)", "nginx_tls": "nginx + LiteLLM (TLS)",
            "direct_twin": "direct to llama.cpp (route: direct model's container)",
            "route_direct_http": "nginx, route: direct (HTTP)",
            "route_direct_tls": "nginx, route: direct (TLS)"}
# What each variant's ratio is taken against: its own model's container, reached directly.
BASELINE = {"route_direct_http": "direct_twin", "route_direct_tls": "direct_twin"}

# Why a target can be missed on this design, and what would close it; printed under a
# missed target next to the run's own numbers.
WHY_MISSED = {
    "gateway": (
        "Nearly all of the overhead is LiteLLM's (compare the LiteLLM row with the nginx rows: "
        "nginx, HTTP or TLS, adds about a millisecond). LiteLLM is a Python (FastAPI) proxy: "
        "parsing, routing, its hooks and a second HTTP hop cost a fixed slice of CPU per "
        "request, and with a tiny model on 2 cores a whole answer takes only tens of ms, so the "
        "fixed cost is a large fraction (with a larger model or longer answers the same "
        "milliseconds are a few percent). At concurrency 8 the model's own queueing grows "
        "and the ratio shrinks. Closing "
        "it: `route: direct` for the model (docs/ROUTES.md; the route: direct rows), where "
        "LiteLLM's features are not needed; or give LiteLLM more workers on a host with "
        "spare cores."),
    "gateway_direct": (
        "LiteLLM is out of this path: what remains is one nginx hop (a worker process to be "
        "scheduled, the body read before the upstream is chosen, TLS records). nginx's own "
        "work is about a millisecond (2026-11-25, quieter host); on 2 cores shared with other "
        "sessions (load average in the header: well above 2 means other work competed) every "
        "extra process on the path waits for a CPU, and that wait, not nginx's work, is the "
        "gap. At concurrency 8 the two identical model containers queue on the same 2 cores "
        "and the interleaved ratios swing both ways within one run. Closing it: measure on a "
        "quiet host, or one with a core to spare for nginx."),
    "ttft": (
        "The first token waits for LiteLLM to parse the request, open its own upstream stream "
        "and re-emit the first chunk; its per-request CPU cost (see gateway overhead) lands "
        "entirely before the first token, and nginx adds about a millisecond. Closing it: the "
        "same bypass as above for streaming requests to single-backend models (nginx already "
        "streams unbuffered): `route: direct`."),
    "ttft_direct": (
        "LiteLLM is out of this path; nginx relays the first chunk as it arrives (unbuffered). "
        "The gap is the same scheduling wait as for the route: direct latency rows: on a "
        "loaded 2-core host the nginx worker waits for a CPU before and after the model "
        "writes. Closing it: measure on a quiet host."),
    "cold_up": (
        "Besides the slowest service's own start, `up` pays, one after another: interpreter "
        "start and imports; preflight (a throwaway container checks the model volume); a health "
        "stage that must be ready before anything else can be probed; creating each container "
        "and filling its config volume through a temporary container, sequentially; and an "
        "nginx stage that starts only once LiteLLM is ready. Closing it: create the containers "
        "and fill the config volumes concurrently (or write configs through the service's own "
        "created container, no temporary one), start health with everything else, and start "
        "nginx as soon as the LiteLLM container runs (its name resolves then; readiness is not "
        "needed to load the config)."),
    "noop_abs": (
        "A no-change `up` takes the fast path (quickup.py) only when its record matches: "
        "the runs that did not (see fast_path_runs in the JSON) paid the full path: Python, "
        "the Docker SDK and pydantic imports, rendering and a dozen engine calls. What is left "
        "of a fast run is Python's start and typer's import (the console script imports the "
        "CLI module before the fast path runs)."),
    "noop_ratio": (
        "See the no-change `up` row: a run that took the full path (a changed input, a "
        "container stopped meanwhile, another session's load) counts at full cost; the fast "
        "path itself is one container list and a few image inspections over the local socket."),
    "status": (
        "`status` loads the stack (pydantic, jinja2: it compares each container's config hash "
        "with the rendered one), imports the Docker SDK (requests, paramiko), inspects every "
        "container and probes every service in one exec in the health container (a Python "
        "start inside it). On a loaded 2-core host each part stretches. Closing it: answer "
        "from the fast path's record as `up` does (the record's digest proves the rendered "
        "hashes unchanged) with container inspections and the exec over the local socket, "
        "without the SDK or pydantic."),
    "help": (
        "Import time of typer/click and the package at start. Closing it: keep heavy imports "
        "(docker, pydantic, jinja2) inside the commands that need them."),
    "limiter": (
        "nginx's leaky bucket counts in ms from its own clock; a spread of arrivals larger than "
        "the client saw, or a request landing on the ms edge, shifts the count by one or two."),
}
KEYS_BY_SECTION = {"gateway_latency": "gateway", "streaming_ttft": "ttft", "up_cold": "cold_up",
                   "help_start": "help", "rate_limiter": "limiter", "status": "status"}


def all_targets(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(WHY_MISSED key, target) of every section, in the results' order."""
    out: list[tuple[str, dict[str, Any]]] = []
    for section, data in results.items():
        if not isinstance(data, dict):
            continue
        key = KEYS_BY_SECTION.get(section, section)
        if "target" in data:
            out.append((key, data["target"]))
        for i, t in enumerate(data.get("targets", [])):
            if section == "up_noop":
                key = "noop_abs" if i == 0 else "noop_ratio"
            direct = "route: direct" in t.get("what", "")
            out.append((key + "_direct" if direct else key, t))
    return out


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        value = f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return f"{value} {unit}".strip()


def _met(flag: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "not measured"}[flag]


def markdown(results: dict[str, Any], png: str | None) -> str:
    meta = results["meta"]
    host = meta["host"]
    lines = [
        f"# llmstack benchmarks, {meta['date'][:10]} ({meta['mode']} run)",
        "",
        f"`python benchmarks/run.py{' --quick' if meta['mode'] == 'quick' else ''}` on "
        f"{host['cpus']} CPUs ({host['platform']}), Docker Engine {host['docker_engine']}, "
        f"Python {host['python']}; load average at start "
        f"{', '.join(f'{v:.2f}' for v in host['load_avg_start'])}, at end "
        f"{', '.join(f'{v:.2f}' for v in meta.get('load_avg_end', []))} (the machine is "
        "shared: baselines are measured in the same run, interleaved where possible). "
        f"Demo stack as project `{meta.get('project')}` on free 127.0.0.1 ports; run took "
        f"{meta['duration_s']} s. Raw samples are in the JSON file.",
        "",
    ]
    if meta.get("load_avg_1m_after"):
        phases = ", ".join(f"{k} {v}" for k, v in meta["load_avg_1m_after"].items())
        lines += ["1-minute load average after each phase (the load phases keep both CPUs "
                  f"busy themselves; well above 2 means other work competed): {phases}.", ""]
    if results.get("error"):
        lines += ["**The run stopped early**: " + results["error"].replace("\n", " "), ""]
    lines += [
        "## Targets",
        "",
        "| figure | measured | baseline (same run) | target | met |",
        "| --- | --- | --- | --- | --- |",
    ]
    missed: dict[str, list[str]] = {}
    for key, t in all_targets(results):
        lines.append(f"| {t['what']} | {_fmt(t['value'], t['unit'])} | {t['baseline']} | "
                     f"{t['op']} {_fmt(t['limit'], t['unit'])} | {_met(t['met'])} |")
        if t["met"] is False:
            missed.setdefault(key, []).append(t["what"])
    lines.append("")
    for section in (_latency_section, _ttft_section, _up_section, _limiter_section,
                    _memory_section, _rotate_section, _updates_section,
                    _help_section):
        text = section(results)
        if text:
            lines.append(text)
    if png:
        lines += ["## Latency distributions", "", f"![latency distributions]({png})", "",
                  f"[{png}]({png}): per variant, chat completion at concurrency 1 and 8, "
                  "and streaming time to first token.", ""]
    if missed:
        lines += ["## Missed targets: why, and what would close it", ""]
        for key, whats in missed.items():
            lines.append(f"- **{'; '.join(whats)}**: {WHY_MISSED.get(key, '')}")
        lines.append("")
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).rstrip() + "\n"


def _latency_section(results: dict[str, Any]) -> str:
    lat = results.get("gateway_latency")
    if not lat:
        return ""
    rows = [f"## Gateway overhead\n\nNon-streaming chat completion (`{lat['model']}`, "
            f"max_tokens {lat['max_tokens']}, temperature 0); variants interleaved in shuffled "
            "rounds, at concurrency 8 each round is a burst of 8 simultaneous requests. "
            "Keep-alive connections; direct and LiteLLM reached on the project network by "
            "container IP. The rate limit is opened for these runs (they measure the path, not "
            "the limiter). The chat model runs twice, as two identical llama.cpp containers: "
            "`deepseek-coder` behind LiteLLM (route: gateway) and its twin `bench-direct` on "
            "route: direct; each route's `x direct` is against its own container reached "
            "directly. Times in ms.\n"]
    for conc in (1, 8):
        per = lat.get(f"c{conc}", {})
        rows += [f"\n**Concurrency {conc}**\n",
                 "| path | n | p50 | p95 | p99 | p50 x direct | p95 x direct | p99 x direct | "
                 "failed | tokens |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | "
                 "--- |"]
        for name, s in per.items():
            rows.append(f"| {VARIANTS.get(name, name)} | {s.get('n')} | {_fmt(s.get('p50'))} | "
                        f"{_fmt(s.get('p95'))} | {_fmt(s.get('p99'))} | "
                        f"{_fmt(s.get('p50_x_direct'))} | {_fmt(s.get('p95_x_direct'))} | "
                        f"{_fmt(s.get('p99_x_direct'))} | {s.get('failed')} | "
                        f"{s.get('completion_tokens')} |")
    return "\n".join(rows) + "\n"


def _ttft_section(results: dict[str, Any]) -> str:
    t = results.get("streaming_ttft")
    if not t:
        return ""
    rows = ["## Streaming: time to first token\n",
            f"`stream: true`, max_tokens {t['max_tokens']}; time from sending the request to "
            "the first SSE chunk carrying content; concurrency 1, interleaved. Times in ms.\n",
            "| path | n | p50 | p95 | p99 | p50 minus direct | failed |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for name in VARIANTS:
        s = t.get(name, {})
        rows.append(f"| {VARIANTS[name]} | {s.get('n')} | {_fmt(s.get('p50'))} | "
                    f"{_fmt(s.get('p95'))} | {_fmt(s.get('p99'))} | "
                    f"{_fmt(s.get('p50_minus_direct_ms'))} | {s.get('failed')} |")
    return "\n".join(rows) + "\n"


def _up_section(results: dict[str, Any]) -> str:
    cold, noop = results.get("up_cold", {}), results.get("up_noop", {})
    rows = ["## `llmstack up`\n"]
    if cold:
        rows += [f"Cold `up` (images present, no containers) to every service ready: "
                 f"{cold['wall_s']} s wall (median-ratio sample of {len(cold['samples'])}); "
                 f"slowest service {cold['slowest_service']} took {cold['slowest_ready_s']} s "
                 f"to be ready: **{cold['ratio']}x**. Per service, as `up --json` reports it "
                 f"(ready_seconds: from the launch of its batch to ready): "
                 + ", ".join(f"{k} {v}" for k, v in cold["ready_seconds"].items()) + ".",
                 "", "Where that sample's time went (seconds from process start, from `up`'s "
                 "progress lines):", "", "| service | starting | ready |", "| --- | --- | --- |"]
        rows += [f"| {svc} | {_fmt(ev.get('starting'))} | {_fmt(ev.get('ready'))} |"
                 for svc, ev in cold.get("timeline_s", {}).items()]
        rows += [f"| (process exit) | | {cold['wall_s']} |", ""]
        rows += _cold_breakdown(cold)
        rows += ["",
                 "| sample | wall s | slowest | its ready s | ratio |",
                 "| --- | --- | --- | --- | --- |"]
        for i, s in enumerate(cold["samples"], 1):
            rows.append(f"| {i} | {s['wall_s']} | {s['slowest_service']} | "
                        f"{s['slowest_ready_s']} | {s['ratio']} |")
        rows.append("")
    if noop.get("error"):
        rows.append(f"No-change `up` vs docker-compose: {noop['error']}\n")
    elif noop:
        rows += [
            f"No-change `up`, interleaved with `docker-compose up -d` (docker-compose "
            f"{noop.get('compose_version')}) on the file `llmstack export compose` wrote for an "
            f"identical second project (`{noop['compose_project']}`, up beside it):", "",
            "| command | median s | samples s |", "| --- | --- | --- |",
            f"| `llmstack up` (no change) | {noop['llmstack_s']} | "
            f"{', '.join(map(str, noop['llmstack_samples_s']))} |",
            f"| `docker-compose up -d` (no change) | {noop['compose_s']} | "
            f"{', '.join(map(str, noop['compose_samples_s']))} |", "",
            f"The full path's imports alone (Python start, the CLI, pydantic, the Docker SDK: "
            f"what a no-change `up` paid before the fast path, and still pays when it falls "
            f"back) take {noop.get('llmstack_imports_s')} s (median, same run).", "",
            f"Ratio {noop['ratio']}x. For scale: `docker-compose up -d` of the exported stack "
            f"from nothing returned after {noop['compose_cold_up_s']} s (compose does not wait "
            "for readiness)" + (
                f"; its stack answered /health after {noop['compose_cold_to_ready_s']} s and a "
                f"chat: {'yes' if noop.get('compose_stack_answers') else 'no'}."
                if "compose_cold_to_ready_s" in noop else "."), ""]
    if noop.get("baseline_s") is not None:
        rows += [f"Before (the llmstack of `{noop['baseline_src']}`, interleaved in the same "
                 f"rounds): no-change `up` {noop['baseline_s']} s (samples "
                 f"{', '.join(map(str, noop['baseline_samples_s']))}), ratio "
                 f"{noop['baseline_ratio']}x; after: {noop['llmstack_s']} s, {noop['ratio']}x "
                 f"({noop.get('fast_path_runs')} of {len(noop['llmstack_samples_s'])} runs took "
                 "the fast path).", ""]
    if cold.get("baseline"):
        b = cold["baseline"]
        rows += [f"Cold `up` before (the llmstack of `{b['src']}`, interleaved): "
                 f"{b['wall_s']} s wall, slowest {b['slowest_service']} {b['slowest_ready_s']} "
                 f"s, **{b['ratio']}x** (samples: "
                 + ", ".join(f"{x['wall_s']} s / {x['ratio']}x" for x in b["samples"])
                 + "); timeline of its median sample: "
                 + ", ".join(f"{k} {v.get('starting')}->{v.get('ready')}"
                             for k, v in b["timeline_s"].items()) + ".", ""]
    status = results.get("status")
    if status:
        rows += [f"`llmstack status --json` on the converged stack ({status['services']} "
                 f"services, each probed): median {status['median_s']} s (samples "
                 f"{', '.join(map(str, status['samples_s']))})"
                 + (f"; before (`{status['baseline_src']}`, interleaved): "
                    f"{status['baseline_median_s']} s (samples "
                    f"{', '.join(map(str, status['baseline_samples_s']))})"
                    if "baseline_median_s" in status else "") + ".", ""]
    if noop.get("discarded_llmstack_runs"):
        rows += [f"Discarded `llmstack up` runs that were not no-ops (the tree changed during "
                 f"the run): {json.dumps(noop['discarded_llmstack_runs'])}", ""]
    meta = results["meta"]
    if "up_after_config_change_s" in meta:
        rows.append(f"`up` after a rate-limit change (nginx recreated): "
                    f"{meta['up_after_config_change_s']} s; `down --volumes`: "
                    f"{meta.get('down_s', 'n/a')} s.\n")
    return "\n".join(rows) + "\n"


def _cold_breakdown(cold: dict[str, Any]) -> list[str]:
    """wall = before the first start + launching (earlier stages, containers, config
    volumes) + the slowest service's own time + after it (later stages, exit)."""
    timeline = cold.get("timeline_s") or {}
    slowest = timeline.get(cold.get("slowest_service", ""), {})
    starts = [ev["starting"] for ev in timeline.values() if "starting" in ev]
    if not starts or "ready" not in slowest:
        return []
    before = min(starts)
    own = cold["slowest_ready_s"]
    launch = slowest["ready"] - own - before
    after = cold["wall_s"] - slowest["ready"]
    return [f"Breakdown of that sample: {before:.2f} s before the first container starts "
            f"(interpreter, imports, render, plan, preflight) + {launch:.2f} s of earlier stages "
            f"and creating containers and filling config volumes + {own:.2f} s "
            f"{cold['slowest_service']}'s own time + {after:.2f} s after it (later stages, "
            f"exit) = {cold['wall_s']} s; the target leaves {0.3 * own:.2f} s for everything but "
            "the slowest service.", ""]


def _limiter_section(results: dict[str, Any]) -> str:
    lim = results.get("rate_limiter")
    if not lim:
        return ""
    rows = ["## Rate limiter exactness\n",
            f"Demo limit {lim['rate_per_s']} r/s, burst {lim['burst']}: {lim['sent']} "
            "authenticated `GET /v1/models` on separate connections, written after one "
            "barrier. Theoretical accepted = burst + 1 + floor(rate x send spread).\n",
            "| trial | sent | accepted (200) | 429 | other | send spread ms | theoretical |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for i, t in enumerate(lim["trials"], 1):
        rows.append(f"| {i} | {t['sent']} | {t['accepted']} | {t['rejected']} | {t['other']} "
                    f"| {t['send_spread_ms']} | {t['theoretical']} |")
    return "\n".join(rows) + "\n"


def _memory_section(results: dict[str, Any]) -> str:
    mem = results.get("memory_mib")
    if not mem:
        return ""
    rows = ["## Memory per container (MiB)\n",
            "Engine stats API, one-shot, usage less inactive page cache (as `docker stats`). "
            f"Under load: peak of samples every 0.5 s during the {mem['load']}.\n",
            "| service | idle | under load (peak) |", "| --- | --- | --- |"]
    for svc in sorted(set(mem["idle"]) | set(mem["under_load_peak"])):
        rows.append(f"| {svc} | {_fmt(mem['idle'].get(svc))} | "
                    f"{_fmt(mem['under_load_peak'].get(svc))} |")
    total_idle = sum(mem["idle"].values())
    total_load = sum(mem["under_load_peak"].values())
    rows.append(f"| **total** | {total_idle:.1f} | {total_load:.1f} |")
    return "\n".join(rows) + "\n"


def _rotate_section(results: dict[str, Any]) -> str:
    rot = results.get("rotate_key")
    if rot is None:
        return ""
    if not rot.get("available"):
        return f"## Rotate-key\n\n{rot.get('note')}.\n"
    rows = ["## Rotate-key cutover\n", "| figure | value |", "| --- | --- |"]
    rows += [f"| {k} | {_fmt(v) if not isinstance(v, dict | list) else json.dumps(v)} |"
             for k, v in rot.items() if k != "available"]
    return "\n".join(rows) + "\n"


def _updates_section(results: dict[str, Any]) -> str:
    upd = results.get("updates")
    if upd is None:
        return ""
    if not upd.get("available"):
        return f"## Changes under load\n\n{upd.get('note')}.\n"
    rows = ["## Changes under load\n",
            "`llmstack up` applying a change while 3 closed-loop clients (one streaming) send "
            "chat completions; start-first next to stop-first (the in-place recreate of "
            "earlier versions). Target: 0 failed with start-first.\n",
            "| change | requests | failed | longest gap (ms) | streams complete | up (s) | "
            "exit |", "| --- | --- | --- | --- | --- | --- | --- |"]
    rows += [f"| {r['scenario']} | {r['requests_sent']} | {r['failed_requests']} | "
             f"{_fmt(r['longest_gap_ms'])} | {r['streams_complete']}/{r['streams']} | "
             f"{_fmt(r['command_s'])} | {r['command_rc']} |" for r in upd["runs"]]
    return "\n".join(rows) + "\n"


def _help_section(results: dict[str, Any]) -> str:
    h = results.get("help_start")
    if not h:
        return ""
    return ("## Start time\n\n"
            f"`llmstack --help`: median {h['median_ms']} ms of {len(h['samples_ms'])} runs "
            f"(samples {', '.join(map(str, h['samples_ms']))}); bare `python -c pass` "
            f"{h['baseline_python_ms']} ms.\n")


def plot(raw: dict[str, Any], path: Path) -> bool:
    """Box plots of the latency samples per variant; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = [(k, t) for k, t in (("latency_c1", "chat completion, concurrency 1"),
                                  ("latency_c8", "chat completion, concurrency 8"),
                                  ("ttft", "streaming: first token"))
              if any(raw.get(k, {}).values())]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), dpi=80)
    axes = axes if len(panels) > 1 else [axes]
    for ax, (key, title) in zip(axes, panels, strict=True):
        names = [n for n in VARIANTS if raw[key].get(n)]
        ax.boxplot([raw[key][n] for n in names], whis=(1, 99), showfliers=True,
                   flierprops={"markersize": 2})
        ax.set_xticks(range(1, len(names) + 1),
                      [VARIANTS[n].replace(" + ", "\n+ ") for n in names], fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("ms", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("llmstack latency: whiskers p1-p99", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write(results: dict[str, Any], raw: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stem = dt.date.today().isoformat()
    png = out / f"{stem}.png"
    has_plot = plot(raw, png)
    results["plot"] = png.name if has_plot else None
    if not has_plot:
        results["plot_note"] = "matplotlib not installed: pip install -e '.[bench]'"
    data = {**results, "samples_ms": raw}
    (out / f"{stem}.json").write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    md = out / f"{stem}.md"
    md.write_text(markdown(results, png.name if has_plot else None))
    return md


def main(argv: list[str]) -> int:
    """Re-render <date>.md from its .json (after a change to this file's text)."""
    for name in argv:
        path = Path(name)
        results = json.loads(path.read_text())
        results.pop("samples_ms", None)
        path.with_suffix(".md").write_text(markdown(results, results.get("plot")))
        print(path.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
