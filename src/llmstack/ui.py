"""How progress and results reach a person (TTY), a log (plain lines) or a program (JSON)."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, TextIO


def interactive(stream: TextIO | None = None) -> bool:
    """Live output only for a person at a terminal; CI=true or no TTY gets plain lines.
    (Streams default to sys.stdout/stderr as they are at the call, not at import.)"""
    return (stream or sys.stdout).isatty() and \
        os.environ.get("CI", "").lower() not in ("1", "true", "yes")


class PlainReporter:
    """One line per state change; 'waiting' and 'downloading' lines at most every 5 s per
    service."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.last: dict[str, tuple[str, float]] = {}

    def event(self, service: str, state: str, detail: str = "") -> None:
        now = time.monotonic()
        prev = self.last.get(service)
        if state in ("waiting", "downloading") and prev and prev[0] == state and \
                now - prev[1] < 5:
            return
        self.last[service] = (state, now)
        print(f"{service:<28} {state:<10} {detail}".rstrip(), file=self.stream, flush=True)


class LiveReporter:
    """A table of services redrawn in place on a terminal."""

    SPIN = "|/-\\"

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.rows: dict[str, tuple[str, str]] = {}
        self.drawn = 0
        self.tick = 0

    def event(self, service: str, state: str, detail: str = "") -> None:
        self.rows[service] = (state, detail)
        self.tick += 1
        if self.drawn:
            self.stream.write(f"\x1b[{self.drawn}F")
        for name, (st, det) in self.rows.items():
            mark = "ok" if st == "ready" else self.SPIN[self.tick % 4] \
                if st in ("waiting", "downloading") else "."
            self.stream.write(f"\x1b[2K {mark:<2} {name:<28} {st:<10} {det}"[:160] + "\n")
        self.drawn = len(self.rows)
        self.stream.flush()


class QuietReporter:
    def event(self, service: str, state: str, detail: str = "") -> None:
        pass


def reporter(json_mode: bool) -> Any:
    if json_mode:
        return PlainReporter(sys.stderr) if not interactive(sys.stderr) else QuietReporter()
    return LiveReporter() if interactive(sys.stderr) else PlainReporter()


def emit_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))
