"""What LiteLLM's own settings still take off the gateway route, against an A/A noise floor.

    python benchmarks/gateway_settings.py [--variants a,b,...] [--rounds N] [--rounds8 N]
                                          [--tag NAME] [--out DIR]

One demo stack (chat model only, route: gateway) per variant, each its own project on free
127.0.0.1 ports, brought up one after another and all running while measured; requests go
through nginx + LiteLLM to every stack in shuffled, interleaved rounds
(benchmarks/http_load.py), so a shared machine's drift falls on all alike. Two stacks are the
unchanged baseline (`baseline`, `baseline_again`): their difference is the noise floor of the
run, and a setting only counts as a gain (`beats_noise`) when it beats the pooled baselines by
more than that, both in p50 and in the paired per-round gain. Measures non-streamed chat
p50/p95 at concurrency 1 and 8 and the first streamed token at concurrency 1. A variant whose
`up` fails is recorded (`up_failed`) and left out. Not part of CI.

Each variant differs from the baseline in one LiteLLM setting: its environment, a command
option, a `litellm_settings` key or its image. The stack carries it through a benchmark-only
hook: `up` runs as `python gateway_settings.py --llmstack-with VARIANT up`, which wraps
`llmstack.plan.desired` in that process and changes only the LiteLLM service it returns (no
stack.yaml field, nothing in the package). Writes DIR/gateway-settings-<date>[-TAG].json and
prints the figures; every stack is removed (`down --volumes`) at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402
import http_load  # noqa: E402
from harness import BenchStack  # noqa: E402
from http_load import Target  # noqa: E402

MAX_TOKENS = 8
OPEN_RATE = (100_000, 100_000)  # measure the path, not the limiter
# LiteLLM 1.108.7-m1 plus httptools 0.6.4 (a wheel, nothing else): uvicorn's `http="auto"`
# takes httptools when it imports, h11 otherwise (the m1 image has no httptools).
HTTPTOOLS_IMAGE = "llmstack-bench/litellm:1.108.7-m1-httptools"


@dataclass(frozen=True)
class Variant:
    """One LiteLLM setting changed against the baseline (all empty: the baseline)."""

    why: str
    env: dict[str, str] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)  # command option -> value
    settings: dict[str, Any] = field(default_factory=dict)  # litellm_settings keys
    image: str | None = None


VARIANTS: dict[str, Variant] = {
    "baseline": Variant("the stack as `up` renders it"),
    "baseline_again": Variant("the same again: the A/A noise floor"),
    "httpx_transport": Variant(
        "DISABLE_AIOHTTP_TRANSPORT=True: the OpenAI client's httpx transport instead of "
        "LiteLLM's aiohttp one (http_handler.py should_use_aiohttp_transport)",
        env={"DISABLE_AIOHTTP_TRANSPORT": "True"}),
    "httptools": Variant(
        "uvicorn parses HTTP with httptools instead of h11 (uvicorn http='auto')",
        image=HTTPTOOLS_IMAGE),
    "httptools_again": Variant("httptools on a second stack: does its gain repeat?",
                               image=HTTPTOOLS_IMAGE),
    "workers_2": Variant("--num_workers 2: two uvicorn worker processes",
                         options={"--num_workers": "2"}),
    "no_streaming_logging": Variant(
        "litellm_settings.disable_streaming_logging: no per-chunk logging work on streams "
        "(streaming_handler.py; also no success callbacks for streams)",
        settings={"disable_streaming_logging": True}),
    "no_message_logging": Variant(
        "litellm_settings.turn_off_message_logging: logging objects without the messages",
        settings={"turn_off_message_logging": True}),
}
BASELINES = ("baseline", "baseline_again")


def log(message: str) -> None:
    print(f"[gateway-settings] {message}", file=sys.stderr, flush=True)


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --- The hook: `up` with one LiteLLM setting changed ------------------------------------------


def changed(service: Any, variant: Variant) -> Any:
    """The LiteLLM ServiceSpec with the variant's setting applied."""
    command = list(service.command)
    for option, value in variant.options.items():
        if option in command:
            command[command.index(option) + 1] = value
        else:
            command += [option, value]
    config = dict(service.config)
    if variant.settings:
        data = yaml.safe_load(config["litellm.yaml"])
        data["litellm_settings"].update(variant.settings)
        config["litellm.yaml"] = yaml.safe_dump(data, sort_keys=False).encode()
    return dataclasses.replace(service, command=command, env={**service.env, **variant.env},
                               config=config, image=variant.image or service.image)


def llmstack_with(variant: Variant, argv: list[str]) -> None:
    """Run the llmstack CLI with plan.desired wrapped so LiteLLM gets `variant`."""
    from llmstack import cli, names, plan

    original = plan.desired

    def desired(*args: Any, **kwargs: Any) -> list[Any]:
        return [changed(s, variant) if s.service == names.LITELLM else s
                for s in original(*args, **kwargs)]

    plan.desired = desired  # type: ignore[assignment]
    sys.argv = ["llmstack", *argv]
    cli.main()


def up_cmd(name: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--llmstack-with", name, "up"]


# --- The run -----------------------------------------------------------------------------------


def strip_direct(stack: BenchStack) -> None:
    """Only the chat model on the gateway route (harness adds a direct twin)."""
    data = stack.spec()
    data["models"] = [m for m in data["models"] if m["name"] != harness.DIRECT_MODEL]
    (stack.root / "stack.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def by_round(got: http_load.Collected, target: str, per_round: int) -> dict[int, float]:
    """{round: mean seconds of `target`'s successful requests in it}. interleaved() records
    `per_round` samples a round (every target's burst), in order, failures included."""
    sums: dict[int, list[float]] = {}
    for index, sample in enumerate(got.samples):
        if sample.target == target and sample.status == 200:
            sums.setdefault(index // per_round, []).append(sample.seconds)
    return {r: sum(v) / len(v) for r, v in sums.items()}


def paired(rounds: dict[str, dict[int, float]], name: str, against: list[str]) -> float:
    """Median over rounds of (mean of `against` in that round - `name` in that round), ms:
    each round's requests ran within the same second or so, so drift cancels."""
    diffs = [sum(rounds[b][r] for b in against) / len(against) - rounds[name][r]
             for r in rounds[name] if all(r in rounds[b] for b in against)]
    return round(statistics.median(diffs) * 1000, 2) if diffs else float("nan")


def judge(per: dict[str, dict[str, Any]], key: str) -> dict[str, Any]:
    """Each variant's p50 against the pooled baselines, and the A/A gap as the noise floor;
    also the paired per-round gain (drift cancels) and the A/A paired gap."""
    pooled = http_load.summary(per["baseline"]["_raw"][key] + per["baseline_again"]["_raw"][key])
    a, b = (per[n][key]["p50"] for n in BASELINES)
    noise = round(abs(a - b), 2)
    rounds = {n: figures["_rounds"][key] for n, figures in per.items()}
    paired_noise = abs(paired(rounds, "baseline_again", ["baseline"]))
    out: dict[str, Any] = {"baseline_pooled_p50": pooled["p50"], "aa_gap_ms": noise,
                           "aa_gap_pct": round(100 * noise / pooled["p50"], 2),
                           "aa_paired_gap_ms": paired_noise}
    for name, figures in per.items():
        if name in BASELINES:
            continue
        gain = round(pooled["p50"] - figures[key]["p50"], 2)
        paired_gain = paired(rounds, name, list(BASELINES))
        out[name] = {"gain_ms": gain, "gain_pct": round(100 * gain / pooled["p50"], 2),
                     "paired_gain_ms": paired_gain,
                     "beats_noise": gain > noise and paired_gain > paired_noise}
    return out


def run(names: list[str], rounds: int, rounds8: int, out: Path, tag: str) -> dict[str, Any]:
    docker = harness.client()
    stacks: dict[str, BenchStack] = {}
    loads: dict[str, list[float]] = {"start": load()}
    ups: dict[str, float] = {}
    failed: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="llmstack-gateway-settings-") as tmp:
        try:
            first: BenchStack | None = None
            for name in names:
                root = Path(tmp) / name
                project = harness.unique_project("bench-g")
                if first is None:
                    stack = first = BenchStack.create(root, project, embed=False)
                else:
                    stack = first.clone(root, project)
                stack.rewrite(rate=OPEN_RATE)
                strip_direct(stack)
                stacks[name] = stack
                log(f"up {name} ({project})")
                up = harness.run_timed(up_cmd(name), cwd=root, timeout=900)
                if up.returncode != 0 and name not in BASELINES:
                    # A setting the stack cannot start with is a finding, not the end of the run.
                    failed[name] = up.stderr.strip().splitlines()[-12:]
                    log(f"{name}: up failed, measured without it")
                    continue
                up.check(f"llmstack up ({name})")
                ups[name] = round(up.seconds, 1)
            loads["after_up"] = load()
            model = next(iter(stacks.values())).chat_model
            targets = [Target(n, "127.0.0.1", s.local_port, "/v1/chat/completions",
                              key=s.keys.master) for n, s in stacks.items() if n not in failed]

            def chat(c: http_load.Client, t: Target) -> http_load.Sample:
                return c.chat(t, model, MAX_TOKENS)

            def first_token(c: http_load.Client, t: Target) -> http_load.Sample:
                return c.first_token(t, model, MAX_TOKENS)

            started = time.monotonic()
            phases = [("chat_c1", chat, rounds, 1), ("first_token_c1", first_token, rounds, 1)]
            if rounds8:
                phases.append(("chat_c8", chat, rounds8, 8))
            per: dict[str, dict[str, Any]] = {t.name: {"_raw": {}} for t in targets}
            for key, op, count, conc in phases:
                log(f"{key}: {count} rounds over {len(targets)} stacks")
                got = http_load.interleaved(targets, op, count, conc, seed=17,
                                            deadline=time.monotonic() + 900, warmup=3)
                for t in targets:
                    values = got.ok_seconds(t.name)
                    per[t.name]["_raw"][key] = values
                    per[t.name]["_rounds"] = per[t.name].get("_rounds", {})
                    per[t.name]["_rounds"][key] = by_round(got, t.name, len(targets) * conc)
                    per[t.name][key] = {**http_load.summary(values), "failed": sum(
                        1 for s in got.samples if s.target == t.name and s.status != 200)}
                loads[key] = load()
            seconds = round(time.monotonic() - started, 1)
        finally:
            for s in stacks.values():
                s.cli("down", "--volumes", timeout=300)
                harness.cleanup(docker, s.project)
    verdicts = {key: judge(per, key) for key in per["baseline"] if not key.startswith("_")}
    for figures in per.values():
        figures.pop("_raw")
        figures.pop("_rounds")
    result = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "what": "nginx (HTTP) + LiteLLM + llama.cpp, non-streamed chat (max_tokens 8, "
                "temperature 0) and first streamed token; one stack per variant, interleaved",
        "cpus": os.cpu_count(), "load_average": loads, "rounds": rounds, "rounds_c8": rounds8,
        "seconds": seconds, "up_seconds": ups, "up_failed": failed,
        "variants": {n: dataclasses.asdict(VARIANTS[n]) for n in names},
        "figures": per, "verdicts": verdicts,
    }
    out.mkdir(parents=True, exist_ok=True)
    suffix = f"-{tag}" if tag else ""
    path = out / f"gateway-settings-{dt.date.today().isoformat()}{suffix}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {path}")
    return result


def table(result: dict[str, Any]) -> str:
    """The figures as a markdown table (ms; gain against the pooled baselines)."""
    keys = list(result["verdicts"])
    head = "| variant | " + " | ".join(f"{k} p50 | p95 | gain | paired" for k in keys) + " |"
    rows = [head, "|" + " --- |" * (1 + 4 * len(keys))]
    for name, figures in result["figures"].items():
        cells = []
        for k in keys:
            verdict = result["verdicts"][k].get(name)
            if verdict:
                gain = f"{verdict['gain_ms']:+.1f} ({verdict['gain_pct']:+.1f}%)"
                pair = f"{verdict['paired_gain_ms']:+.1f}"
            else:
                gain = f"A/A gap {result['verdicts'][k]['aa_gap_ms']:.1f}"
                pair = f"A/A {result['verdicts'][k]['aa_paired_gap_ms']:.1f}"
            cells += [f"{figures[k]['p50']:.1f}", f"{figures[k]['p95']:.1f}", gain, pair]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--llmstack-with":
        llmstack_with(VARIANTS[sys.argv[2]], sys.argv[3:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated, from: " + ", ".join(VARIANTS))
    parser.add_argument("--rounds", type=int, default=40, help="rounds at concurrency 1")
    parser.add_argument("--rounds8", type=int, default=10, help="rounds at concurrency 8 (0: none)")
    parser.add_argument("--tag", default="", help="suffix of the result file name")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    names = [*BASELINES, *(n for n in args.variants.split(",") if n and n not in BASELINES)]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    result = run(names, args.rounds, args.rounds8, args.out, args.tag)
    print(table(result))
    print(json.dumps({"load_average": result["load_average"], "verdicts": result["verdicts"]},
                     indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
