"""What metrics cost: p50 through the gateway (nginx + LiteLLM) with `observability.metrics`
on vs off, in one run.

    python benchmarks/metrics_cost.py [--rounds N] [--out DIR]

Two demo stacks (chat model only, the same stack.yaml but for `observability.metrics`) run side
by side, each in its own project on free 127.0.0.1 ports; requests go to both in shuffled,
interleaved rounds (benchmarks/http_load.py), so drift of a shared machine falls on both
alike. Writes DIR/metrics-cost-<date>.json and prints the figures. Target: on within 2% of off.
Both stacks are removed at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402
import http_load  # noqa: E402
from harness import BenchStack  # noqa: E402
from http_load import Target  # noqa: E402

TARGET_RATIO = 1.02
MAX_TOKENS = 8
OPEN_RATE = (100_000, 100_000)  # measure the path, not the limiter


def log(message: str) -> None:
    print(f"[metrics-cost] {message}", file=sys.stderr, flush=True)


def make(root: Path, metrics: bool) -> BenchStack:
    stack = BenchStack.create(root, harness.unique_project("bench-m"), embed=False)
    stack.rewrite(rate=OPEN_RATE)
    data = stack.spec()
    data["observability"] = {"metrics": metrics}
    (stack.root / "stack.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return stack


def run(rounds: int, out: Path) -> dict[str, Any]:
    docker = harness.client()
    stacks: dict[str, BenchStack] = {}
    with tempfile.TemporaryDirectory(prefix="llmstack-metrics-cost-") as tmp:
        try:
            for name, on in (("metrics_on", True), ("metrics_off", False)):
                stacks[name] = make(Path(tmp) / name, on)
                stacks[name].cli("up", timeout=900).check(f"llmstack up ({name})")
            targets = [Target(name, "127.0.0.1", s.local_port, "/v1/chat/completions",
                              key=s.keys.master) for name, s in stacks.items()]
            model = stacks["metrics_on"].chat_model

            def chat(c: http_load.Client, t: Target) -> http_load.Sample:
                return c.chat(t, model, MAX_TOKENS)

            started = time.monotonic()
            got = http_load.interleaved(targets, chat, rounds, 1, seed=18,
                                        deadline=time.monotonic() + 600, warmup=5)
            per = {t.name: {**http_load.summary(got.ok_seconds(t.name)),
                            "failed": sum(1 for s in got.samples
                                          if s.target == t.name and s.status != 200)}
                   for t in targets}
        finally:
            for s in stacks.values():
                s.cli("down", "--volumes", timeout=300)
                harness.cleanup(docker, s.project)
    ratio = round(per["metrics_on"]["p50"] / per["metrics_off"]["p50"], 4)
    result = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "what": "p50 of a non-streamed chat (max_tokens 8, temperature 0) through nginx + "
                "LiteLLM + llama.cpp, concurrency 1, interleaved between two stacks",
        "rounds": rounds, "seconds": round(time.monotonic() - started, 1), **per,
        "p50_on_over_off": ratio, "target": f"<= {TARGET_RATIO}",
        "met": ratio <= TARGET_RATIO,
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"metrics-cost-{dt.date.today().isoformat()}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {path}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    result = run(args.rounds, args.out)
    print(json.dumps(result, indent=2))
    return 0 if result["met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
