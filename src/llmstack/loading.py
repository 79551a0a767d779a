"""How long `up` waits for a model to become ready: as long as it shows progress, up to the
ceiling stack.yaml sets (`models[].load_timeout`).

A fixed deadline is wrong both ways: a 30B model read from a cold disk on its first start needs
far more than the 600 s that a hung one deserves. So a model fails when it has shown no sign of
progress for `STALL_S` (or the ceiling passes first). Progress is anything the engine can see:
new log output, more bytes read from disk, more memory in use, or a readiness probe whose
answer changed (connection refused -> 503 loading). Downloads run before a model starts (the
hf: fetch and Ollama pulls follow their own byte counts, see fetch.py), so what is watched
here is the load. The backend names its load phases from its own log lines, so the user sees
which one a slow model is in. Pure: the engine's readings come in as `Activity` values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .engine.api import Activity

# The longest a model may show no sign of progress; the old fixed deadline, so a model that
# used to become ready still does, and one that hangs fails as early as before.
STALL_S = 600.0
# The ceiling when stack.yaml sets none: a 70B model from a network disk, with some margin.
DEFAULT_CEILING_S = 3600
# How often the container's activity is read (a log and a stats call); probes run every poll.
SAMPLE_S = 5.0
# Growth that counts as progress; smaller changes are the noise of an idle process.
READ_STEP = 1 << 20
MEMORY_STEP = 16 << 20


@dataclass(frozen=True)
class Loading:
    """How `up` waits for one model (ServiceSpec.loading): its ceiling and its backend's load
    phases, (regular expression, phase) pairs matched against its log lines (`\\1` in a phase
    takes the first group, e.g. a percentage)."""

    ceiling_s: float
    field: str  # where the ceiling comes from, for the message: models[N].load_timeout
    phases: tuple[tuple[str, str], ...] = ()
    stall_s: float = STALL_S


@dataclass
class Watch:
    """One model's start, observed poll by poll."""

    loading: Loading
    started: float  # monotonic
    cursor: str = ""  # where the next log read continues (Engine.activity)
    phase: str = "starting"
    last_progress: float = 0.0
    last_sample: float = float("-inf")
    last_outcome: str = ""
    most_read: int = 0
    most_memory: int = 0
    seen: list[str] = field(default_factory=list)  # what counted as progress last time

    def __post_init__(self) -> None:
        self.last_progress = self.started

    def due(self, now: float) -> bool:
        """Whether the container's activity should be read at this poll."""
        return now - self.last_sample >= SAMPLE_S

    def observe(self, now: float, outcome: str, activity: Activity | None) -> str | None:
        """Take one poll's readings (`activity` None when not read this time); None while the
        model may go on loading, else why it failed."""
        signs = []
        if outcome != self.last_outcome:
            if self.last_outcome:
                signs.append(f"probe {self.last_outcome} -> {outcome}")
            self.last_outcome = outcome
        if activity is not None:
            self.last_sample = now
            self.cursor = activity.cursor
            if activity.output.strip():
                signs.append("log output")
                self.phase = phase_of(self.loading.phases, activity.output) or self.phase
            if activity.read_bytes >= self.most_read + READ_STEP:
                signs.append("disk reads")
                self.most_read = activity.read_bytes
            if activity.memory_bytes >= self.most_memory + MEMORY_STEP:
                signs.append("memory growth")
                self.most_memory = activity.memory_bytes
        if signs:
            self.last_progress, self.seen = now, signs
        elapsed, quiet = now - self.started, now - self.last_progress
        if elapsed > self.loading.ceiling_s:
            return (f"not ready after {elapsed:.0f}s, the ceiling {self.loading.field} sets "
                    f"({self.loading.ceiling_s:.0f}s; last phase: {self.phase})")
        stall = min(self.loading.stall_s, self.loading.ceiling_s)
        if quiet > stall:
            return (f"no sign of progress for {quiet:.0f}s (no new log output, disk reads, "
                    f"memory growth or change of its probe's answer; last phase: "
                    f"{self.phase})")
        return None

    def detail(self, now: float) -> str:
        """The waiting line: its phase, and how long since it last showed progress."""
        quiet = now - self.last_progress
        return self.phase + (f", quiet for {quiet:.0f}s" if quiet >= 2 * SAMPLE_S else "")


def phase_of(phases: tuple[tuple[str, str], ...], output: str) -> str | None:
    """The phase the last matching line of `output` names (None when no line matches)."""
    for line in reversed(output.splitlines()):
        for pattern, phase in phases:
            match = re.search(pattern, line)
            if match:
                return match.expand(phase)
    return None
