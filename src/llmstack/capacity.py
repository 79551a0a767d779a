"""How many connections nginx may hold, derived from its container's memory limit. Pure.

nginx allocates per connection before any per-client limit applies: `limit_conn` counts a
connection only once its request header is parsed, so one client can open thousands of
half-sent requests. The review measured 3,800 of them growing nginx from 19 to 289 MiB with a
256 MiB limit (an OOM kill takes the whole API down). So the edge's worst case is made to fit
its limit: a fixed part, a part per worker, and a worst case per connection, times
`worker_connections`. Beyond that nginx refuses new connections (and logs "worker_connections
are not enough") instead of growing; `client_header_timeout` frees held slots in seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .spec import Resources, size_bytes

MIB = 1024 * 1024
KIB = 1024
# The master process, the shared zones below and slack for the allocator.
FIXED_MIB = 24
# Zones in shared memory, charged to the container as they fill: per-IP rate and connection
# state (about 128 bytes an address: 32k addresses each) and TLS sessions (about 4k sessions
# a MiB).
ZONE_MIB = {"rate": 4, "conn": 4, "tls_sessions": 4}
WORKER_MIB = 8  # one worker's own code, configuration and OpenSSL contexts
# A connection at its worst: header buffers (1k + 4 x 8k), request pool, a 16k body buffer,
# TLS record buffers, and the upstream side of a proxied request. Checked by the slow-client
# test (tests/integration/test_edge_limits.py), which fills every slot with half-sent headers.
CONNECTION_KIB = 96
HEADER_BUFFER = "1k"
LARGE_HEADER_BUFFERS = (4, "8k")
BODY_BUFFER = "16k"  # larger bodies are spooled to disk (a volume), never to memory
DEFAULT_WORKERS = 2
MAX_WORKERS = 8
MIN_CONNECTIONS = 256  # per worker: fewer cannot carry a team's editors and streams
UNLIMITED_CONNECTIONS = 4096  # per worker, when nginx has no memory limit


@dataclass(frozen=True)
class EdgeCapacity:
    workers: int
    connections: int  # worker_connections: per worker, client and upstream sides together


def workers_for(res: Resources) -> int:
    """One worker per CPU nginx may use (2 without a CPU limit): `auto` would start one per
    host core, 64 on a GPU server, each with its own share of the memory."""
    if res.cpus is None:
        return DEFAULT_WORKERS
    return max(1, min(MAX_WORKERS, math.ceil(res.cpus)))


def fixed_bytes(workers: int) -> int:
    return (FIXED_MIB + sum(ZONE_MIB.values()) + workers * WORKER_MIB) * MIB


def capacity(res: Resources) -> EdgeCapacity:
    """The edge's workers and worker_connections for its resources; connections may fall
    below MIN_CONNECTIONS only when the limit is too small, which `min_memory` reports."""
    workers = workers_for(res)
    if res.memory is None:
        return EdgeCapacity(workers, UNLIMITED_CONNECTIONS)
    free = size_bytes(res.memory) - fixed_bytes(workers)
    per_worker = max(0, free // (CONNECTION_KIB * KIB)) // workers
    return EdgeCapacity(workers, min(UNLIMITED_CONNECTIONS, per_worker))


def min_memory(res: Resources) -> int:
    """The smallest memory limit that gives every worker MIN_CONNECTIONS connections."""
    workers = workers_for(res)
    return fixed_bytes(workers) + workers * MIN_CONNECTIONS * CONNECTION_KIB * KIB
