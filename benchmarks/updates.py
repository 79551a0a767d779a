"""Benchmark: `llmstack up` applying a change while clients use the API.

A steady closed-loop load (a few clients, each sending its next request when the last one
is answered: one-token chat completions, and one client streaming) runs before, during and
after `llmstack up` applies a change to stack.yaml (an alias added, a model's arguments
changed, a broken argument). Every response is counted; the longest gap is the longest time
during the command in which no request completed successfully.

    python benchmarks/updates.py [--clients 3] [--lead 3] [--tail 3]

Without --dir it brings up its own chat-only stack (unique name, free 127.0.0.1 ports, the
rate limit raised) and removes it afterwards; prints JSON. Each scenario runs twice: with
the model's default `update` (start-first) and with `update: stop-first`, the in-place
recreate llmstack did before start-first existed, on the same machine in the same run.
tests/integration/test_safe_updates.py drives `change_under_load` for its assertions.

Loops are bounded (a time cap, timeouts on every socket); all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.rotate_key import (
    TIMEOUT_S,
    Outcome,
    _base_url,
    _one,
    _stream,
    llmstack_cmd,
    read_master,
)

UP_TIMEOUT_S = 900.0  # `up` waits up to 600 s for a model; then its rollback
STREAM_TOKENS = 48
Edit = Callable[[dict[str, Any]], None]


@dataclass
class UpdateRun:
    """One change applied under load; `summary()` is the benchmark's JSON."""

    scenario: str
    clients: float
    outcomes: list[Outcome] = field(default_factory=list)
    command_rc: int | None = None
    command_stdout: str = ""
    command_stderr: list[tuple[float, str]] = field(default_factory=list)  # (monotonic, line)
    command_started: float = 0.0
    command_returned: float = 0.0

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    def marker(self, text: str) -> float | None:
        return next((t for t, line in self.command_stderr if text in line), None)

    def longest_gap_ms(self) -> float:
        """The longest time within the command's run with no successful completion."""
        done = sorted(o.done for o in self.outcomes if o.ok
                      and self.command_started <= o.done <= self.command_returned)
        edges = [self.command_started, *done, self.command_returned]
        return round(max(b - a for a, b in itertools.pairwise(edges)) * 1000, 1)

    def summary(self) -> dict[str, Any]:
        statuses: dict[str, int] = {}
        for o in self.outcomes:
            label = str(o.status) if not o.error else o.error.split(":")[0]
            statuses[label] = statuses.get(label, 0) + 1
        streams = [o for o in self.outcomes if o.kind == "stream"]
        switch = self.marker("reloading") or self.marker("switched")
        return {
            "scenario": self.scenario, "clients": self.clients,
            "requests_sent": len(self.outcomes), "failed_requests": len(self.failures),
            "connection_resets_retried": sum(o.resets for o in self.outcomes),
            "statuses": dict(sorted(statuses.items())),
            "streams": len(streams), "streams_complete": sum(s.ok for s in streams),
            "streams_spanning_switch": sum(s.sent < switch < s.done for s in streams)
            if switch else 0,
            "longest_gap_ms": self.longest_gap_ms(),
            "command_s": round(self.command_returned - self.command_started, 1),
            "command_rc": self.command_rc,
        }


def edit_stack(stack_dir: Path, edit: Edit) -> None:
    path = stack_dir / "stack.yaml"
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def change_under_load(stack_dir: Path, scenario: str, edit: Edit, clients: int = 3,
                      lead_s: float = 3.0, tail_s: float = 3.0, retries: int = 1,
                      up_args: tuple[str, ...] = (), stream_tokens: int = STREAM_TOKENS,
                      max_requests: int = 5000, command: str = "up") -> UpdateRun:
    """Load for `lead_s`, then `edit` stack.yaml and run `llmstack COMMAND` (`up`, or
    `rollback`; the load goes on), then
    load for `tail_s` more. The load is closed-loop, so it never outruns a slow CPU model:
    `clients` clients each send their next request as soon as the last one is answered;
    client 0 streams STREAM_TOKENS tokens, the others ask for one-token completions.
    `retries`: resends of a request whose keep-alive connection closed before any answer
    (as the OpenAI SDK does)."""
    base, model = _base_url(stack_dir)
    key = read_master(stack_dir / ".env")
    run = UpdateRun(scenario, float(clients))
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients)
    lock = threading.Lock()
    outcomes: list[Outcome] = []
    stop_at = [time.monotonic() + lead_s + UP_TIMEOUT_S + tail_s]  # cap; set for real below
    # The tail also lasts until one request sent after the command returned is answered: on a
    # slow host a request begun before it can take the whole tail (bounded by TIMEOUT_S).
    answered_after = threading.Event()

    def going() -> bool:
        now = time.monotonic()
        return now < stop_at[0] or (not answered_after.is_set()
                                    and now < stop_at[0] + 2 * TIMEOUT_S)

    def client_loop(index: int, client: httpx.Client) -> None:
        while going() and len(outcomes) < max_requests:
            if index == 0:
                out = _stream(client, base, key, model, stream_tokens, threading.Event())
            else:
                out = _one(client, base, lambda: key, "chat", model, time.monotonic(),
                           retries)
            with lock:
                outcomes.append(out)
            if run.command_returned and out.sent > run.command_returned:
                answered_after.set()

    with httpx.Client(timeout=TIMEOUT_S, limits=limits) as client, \
            ThreadPoolExecutor(max_workers=clients) as pool:
        futures: list[Future[None]] = [pool.submit(client_loop, i, client)
                                       for i in range(clients)]
        time.sleep(lead_s)  # the load's own steady state before the change
        edit_stack(stack_dir, edit)
        run.command_started = time.monotonic()
        proc = subprocess.Popen([*llmstack_cmd(), command, "-C", str(stack_dir), *up_args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, text=True,
                                env={**os.environ, "CI": "true"})
        assert proc.stderr is not None and proc.stdout is not None
        for line in proc.stderr:
            run.command_stderr.append((time.monotonic(), line.rstrip()))
        run.command_stdout = proc.stdout.read()
        run.command_rc = proc.wait(timeout=UP_TIMEOUT_S)
        run.command_returned = time.monotonic()
        stop_at[0] = min(stop_at[0], run.command_returned + tail_s)
        for f in futures:
            f.result(timeout=tail_s + 4 * TIMEOUT_S)
    run.outcomes = sorted(outcomes, key=lambda o: o.sent)
    return run


def add_alias(data: dict[str, Any]) -> None:
    data["models"][0].setdefault("aliases", []).append("added-alias")


def change_args(data: dict[str, Any]) -> None:
    data["models"][0]["args"] = [*data["models"][0].get("args", []), "--batch-size", "256"]


def break_model(data: dict[str, Any]) -> None:
    data["models"][0]["args"] = [*data["models"][0].get("args", []), "--no-such-flag"]


SCENARIOS: dict[str, Edit] = {"alias_added": add_alias, "model_args_changed": change_args,
                              "model_broken": break_model}


def measure(stack_dir: Path, clients: int = 3, lead_s: float = 3.0, tail_s: float = 3.0
            ) -> list[dict[str, Any]]:
    """Each scenario with the default update (start-first) and with stop-first, on the
    running stack in `stack_dir` (restored to its stack.yaml after each)."""
    original = (stack_dir / "stack.yaml").read_text()
    results = []
    try:
        for how in ("start-first", "stop-first"):
            for name, edit in SCENARIOS.items():
                (stack_dir / "stack.yaml").write_text(original)

                def with_update(data: dict[str, Any], edit: Edit = edit, how: str = how
                                ) -> None:
                    data["models"][0]["update"] = how
                    edit(data)

                # The update field alone changes no container: apply it first, unloaded.
                edit_stack(stack_dir, lambda d, how=how: d["models"][0].update(update=how))
                subprocess.run([*llmstack_cmd(), "up", "-C", str(stack_dir)], check=True,
                               capture_output=True, timeout=UP_TIMEOUT_S)
                (stack_dir / "stack.yaml").write_text(original)
                run = change_under_load(stack_dir, f"{name} ({how})", with_update, clients,
                                        lead_s, tail_s)
                results.append(run.summary())
                (stack_dir / "stack.yaml").write_text(original)
                subprocess.run([*llmstack_cmd(), "up", "-C", str(stack_dir)],
                               capture_output=True, timeout=UP_TIMEOUT_S)
    finally:
        (stack_dir / "stack.yaml").write_text(original)
    return results


def main(argv: list[str] | None = None) -> int:
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, help="a running stack's folder (default: bring "
                        "up a temporary one)")
    parser.add_argument("--clients", type=int, default=3, help="clients sending at once")
    parser.add_argument("--lead", type=float, default=3.0, help="seconds of load before up")
    parser.add_argument("--tail", type=float, default=3.0, help="seconds of load after up")
    args = parser.parse_args(argv)
    if args.dir:
        results = measure(args.dir.resolve(), args.clients, args.lead, args.tail)
    else:
        from benchmarks.harness import BenchStack, cleanup, client, unique_project

        root = Path(tempfile.mkdtemp(prefix="bench-updates-"))
        stack = BenchStack.create(root / "stack", unique_project("bench-upd"), embed=False)
        stack.rewrite(rate=(1000, 1000))
        try:
            stack.cli("up").check("llmstack up")
            results = measure(stack.root, args.clients, args.lead, args.tail)
        finally:
            cleanup(client(), stack.project)
    print(json.dumps({"benchmark": "updates", "runs": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
