"""Soak: a long steady load through the edge with nothing changing. Every request counts.

    python benchmarks/soak.py [--minutes 11] [--requests 12000] [--rate 20] [--clients 4]
                              [--label NAME] [--quick] [--out DIR]

Brings up the demo stack (chat + embedding model) in its own project (unique name, free
127.0.0.1 ports) with a per-IP limit above the paced rate and `--clients` as its concurrency
limit, sends chat, completions (each half streamed) and embeddings from `--clients` keep-alive
connections, and writes DIR/soak-<date>-<label>.md, .json and .png: failures by kind (target
0), p50/p99 latency per minute, memory per container per minute. Run it once with this
checkout and once with an older one (PYTHONPATH) under another --label to compare.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402
import steady  # noqa: E402
from harness import BenchStack  # noqa: E402
from http_load import percentile  # noqa: E402

MEMORY_EVERY_S = 15.0
MAX_TOKENS = 16
# Set by SIGINT/SIGTERM during the load: it ends early and the results are still written.
STOP = threading.Event()
LOADING = threading.Event()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class MemorySampler:
    """Memory of every container of the project every MEMORY_EVERY_S, in a thread."""

    def __init__(self, docker: Any, project: str, t0: float) -> None:
        self.docker, self.project, self.t0 = docker, project, t0
        self.samples: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.is_set():
            at = round(time.monotonic() - self.t0, 1)
            try:
                self.samples.append({"t": at, **harness.memory_snapshot(self.docker,
                                                                         self.project)})
            except Exception as exc:  # a missed sample is reported, the load goes on
                log(f"memory sample failed: {type(exc).__name__}: {exc}")
            self.stop.wait(MEMORY_EVERY_S)

    def __enter__(self) -> MemorySampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)


def per_minute(records: list[steady.Record], memory: list[dict[str, Any]]
               ) -> list[dict[str, Any]]:
    """One row a minute: requests, failures, p50/p99 ms, memory (the minute's last sample)."""
    rows: list[dict[str, Any]] = []
    last = int(max([r.start for r in records] + [s["t"] for s in memory] + [0]) // 60)
    for minute in range(last + 1):
        rs = [r for r in records if int(r.start // 60) == minute]
        ok = sorted(r.seconds for r in rs if r.ok)
        mem = [s for s in memory if int(s["t"] // 60) == minute]
        rows.append({"minute": minute + 1, "requests": len(rs),
                     "failed": sum(1 for r in rs if not r.ok),
                     "p50_ms": round(percentile(ok, 50) * 1000, 1) if ok else None,
                     "p99_ms": round(percentile(ok, 99) * 1000, 1) if ok else None,
                     "memory_mib": {k: v for k, v in mem[-1].items() if k != "t"} if mem else {}})
    return rows


def growth(memory: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per container: first sample, last, max, and the change over the second half of the run
    (a plateau is ~0 there; warm-up happens early)."""
    out: dict[str, dict[str, float]] = {}
    if not memory:
        return out
    half = memory[len(memory) // 2]
    for svc in (k for k in memory[0] if k != "t"):
        values = [s[svc] for s in memory if svc in s]
        out[svc] = {"first": values[0], "last": values[-1], "max": max(values),
                    "second_half_change": round(values[-1] - half.get(svc, values[-1]), 1)}
    return out


def plot(result: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows, memory = result["per_minute"], result["memory_samples"]
    fig, (lat, mem) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=80)
    minutes = [r["minute"] for r in rows if r["p50_ms"] is not None]
    for key in ("p50_ms", "p99_ms"):
        lat.plot(minutes, [r[key] for r in rows if r["p50_ms"] is not None], marker="o",
                 label=key.replace("_ms", ""))
    lat.set_title(f"latency per minute ({result['label']})", fontsize=9)
    lat.set_xlabel("minute", fontsize=8)
    lat.set_ylabel("ms", fontsize=8)
    lat.legend(fontsize=7)
    lat.grid(alpha=0.3)
    for svc in sorted(k for k in (memory[0] if memory else {}) if k != "t"):
        mem.plot([s["t"] / 60 for s in memory], [s.get(svc) for s in memory], label=svc)
    mem.set_title("memory per container", fontsize=9)
    mem.set_xlabel("minute", fontsize=8)
    mem.set_ylabel("MiB", fontsize=8)
    mem.legend(fontsize=6)
    mem.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def markdown(result: dict[str, Any]) -> str:
    meta, total = result["meta"], result["totals"]
    lines = [f"# Soak: steady load, nothing changing ({result['label']}, {meta['date']})", "",
             f"{total['requests']} requests in {total['seconds']} s through the edge "
             f"(127.0.0.1), {meta['clients']} clients paced at {meta['rate']} req/s under a "
             f"per-IP limit of {meta['rate_limit']}; mix: "
             f"{', '.join(meta['mix'])} (max_tokens {MAX_TOKENS}).", "",
             f"**Failed: {total['failed']}** (target 0). "
             f"By kind: {json.dumps(result['failures']) if result['failures'] else 'none'}. "
             f"Status codes: {json.dumps(total['statuses'])}.", "",
             "| minute | requests | failed | p50 ms | p99 ms | " +
             " | ".join(f"{s} MiB" for s in result["services"]) + " |",
             "|---" * (5 + len(result["services"])) + "|"]
    for r in result["per_minute"]:
        mem = " | ".join(str(r["memory_mib"].get(s, "")) for s in result["services"])
        lines.append(f"| {r['minute']} | {r['requests']} | {r['failed']} | {r['p50_ms']} | "
                     f"{r['p99_ms']} | {mem} |")
    lines += ["", "Memory (docker stats: usage less inactive page cache), MiB:", "",
              "| container | first | last | max | change over the second half | limit |",
              "|---|---|---|---|---|---|"]
    for svc, g in result["memory_growth"].items():
        lines.append(f"| {svc} | {g['first']} | {g['last']} | {g['max']} | "
                     f"{g['second_half_change']:+} | {result['limits_mib'].get(svc)} |")
    if result.get("plot"):
        lines += ["", f"![soak]({result['plot']})"]
    if result.get("error"):
        lines += ["", f"Stopped early: {result['error']}"]
    if meta.get("stopped_early"):
        lines += ["", "The load was ended early by a signal (Ctrl-C/SIGTERM)."]
    lines += ["", f"Host: {meta['host']}; load average {meta['load_avg_start']} at the start, "
                  f"{meta['load_avg_end']} at the end (a shared machine)."]
    return "\n".join(lines) + "\n"


def limits_mib(docker: Any, project: str) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for svc, c in sorted(harness.project_containers(docker, project).items()):
        limit = c.attrs["HostConfig"].get("Memory") or 0
        out[svc] = round(limit / 2**20) if limit else None
    return out


def soak(args: argparse.Namespace) -> tuple[Path, bool]:
    docker = harness.client()
    label = args.label
    result: dict[str, Any] = {"label": label, "meta": {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "clients": args.clients, "rate": args.rate, "minutes": args.minutes,
        "max_requests": args.requests, "load_avg_start": list(os.getloadavg()),
        "host": f"{os.cpu_count()} CPUs, {platform.platform()}, Python "
                f"{platform.python_version()}, Docker {docker.version().get('Version')}"}}
    records: list[steady.Record] = []
    memory: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="llmstack-soak-") as tmp:
        stack: BenchStack | None = None
        try:
            stack = BenchStack.create(Path(tmp) / "stack", args.project or
                                      harness.unique_project("soak"), embed=True)
            # The limiter must never decide: its rate above the paced rate, the clients within
            # its concurrency limit.
            limit_rps = max(int(args.rate * 1.5), int(args.rate) + 5)
            data = stack.spec()
            data["rate_limit"] = {"requests_per_second": limit_rps, "burst": limit_rps,
                                  "max_concurrent": args.clients}
            (stack.root / "stack.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
            result["meta"]["rate_limit"] = (f"{limit_rps} r/s, burst {limit_rps}, "
                                            f"{args.clients} concurrent")
            log(f"up {stack.project} on 127.0.0.1:{stack.local_port}")
            stack.cli("up", timeout=600).check("llmstack up")
            result["limits_mib"] = limits_mib(docker, stack.project)
            embed = [m["name"] for m in data["models"] if m.get("task") == "embedding"]
            mix = steady.kinds(stack.chat_model, embed[0] if embed else None, MAX_TOKENS)
            result["meta"]["mix"] = [k.name for k in mix]
            log(f"load: {args.clients} clients, {args.rate} req/s, {args.minutes} min or "
                f"{args.requests} requests")
            t0 = time.monotonic()
            done = [0]

            def progress(record: steady.Record) -> None:
                done[0] += 1
                if done[0] % 1000 == 0:
                    log(f"{done[0]} requests, {len([r for r in records if not r.ok])} failed")

            with MemorySampler(docker, stack.project, t0) as sampler:
                LOADING.set()
                records = steady.run("127.0.0.1", stack.local_port, stack.keys.master, mix,
                                     args.clients, args.rate, args.minutes * 60,
                                     args.requests, on_record=progress, stop=STOP)
                LOADING.clear()
                memory = sampler.samples
        except Exception as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"[:4000]
            log(traceback.format_exc())
        finally:
            if stack is not None:
                harness.cleanup(docker, stack.project)
    statuses: dict[str, int] = {}
    for r in records:
        statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
    result["totals"] = {"requests": len(records), "failed": sum(1 for r in records if not r.ok),
                        "seconds": round(max((r.start + r.seconds for r in records),
                                             default=0.0), 1),
                        "statuses": dict(sorted(statuses.items()))}
    result["failures"] = steady.failures(records)
    result["failed_requests"] = [r.__dict__ for r in records if not r.ok][:200]
    result["services"] = sorted({k for s in memory for k in s if k != "t"})
    result["per_minute"] = per_minute(records, memory)
    result["memory_samples"] = memory
    result["memory_growth"] = growth(memory)
    result.setdefault("limits_mib", {})
    result["meta"]["load_avg_end"] = list(os.getloadavg())
    result["meta"]["stopped_early"] = STOP.is_set()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    stem = f"soak-{dt.date.today().isoformat()}-{label}"
    png = out / f"{stem}.png"
    result["plot"] = png.name if plot(result, png) else None
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    md = out / f"{stem}.md"
    md.write_text(markdown(result))
    ok = "error" not in result and result["totals"]["failed"] == 0
    return md, ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=11.0)
    parser.add_argument("--requests", type=int, default=12000, help="stop after this many")
    parser.add_argument("--rate", type=float, default=20.0, help="requests/s, all clients")
    parser.add_argument("--clients", type=int, default=4, help="= the per-IP concurrency limit")
    parser.add_argument("--label", default="current", help="names the result files")
    parser.add_argument("--quick", action="store_true", help="one minute (smoke run)")
    parser.add_argument("--project", help="project name (default soak-<random>)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.requests = min(args.minutes, 1.0), min(args.requests, 600)

    def interrupted(signum: int, frame: Any) -> None:
        if LOADING.is_set():
            log("stopping the load early; writing what was measured")
            STOP.set()
            return
        raise KeyboardInterrupt  # before the load: run the clean-up in `finally`

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    md, ok = soak(args)
    print(md)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
