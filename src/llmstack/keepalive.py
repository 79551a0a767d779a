"""Idle keep-alive timeouts on every hop, ordered so that a client side always gives up on an
idle connection before its server closes it.

When a server closes an idle connection at the moment its client writes the next request onto
it, that request fails (LiteLLM: `Cannot write to closing transport`, an error to the user) and
neither nginx nor LiteLLM retries a POST. Ordering the timeouts removes the race by
construction: the client only reuses connections its server is still waiting on.

Hop by hop (client -> server), with the real defaults read in their sources:

- nginx -> LiteLLM: nginx's upstream `keepalive_timeout` (default 60 s) against LiteLLM's
  uvicorn `timeout_keep_alive` (default 5 s, `litellm --keepalive_timeout`). Before this
  module, nginx kept idle connections 12 times longer than LiteLLM did.
- LiteLLM -> each model server: LiteLLM 1.108.7's aiohttp transport (`TCPConnector
  keepalive_timeout`, from the env var AIOHTTP_KEEPALIVE_TIMEOUT, an int, default 15 s;
  litellm/constants.py) against each backend's `idle_keepalive_s` (llama.cpp and vLLM: 5 s).
  One aiohttp session serves every backend, so the shortest server decides. aiohttp checks
  a pooled connection's idle time when it takes it (`t1 - t0 <= keepalive_timeout`).
- clients -> nginx: nginx's own `keepalive_timeout 65s`; the clients' idle timeouts are
  their own (the OpenAI SDKs use httpx's 5 s), and they retry a stale connection themselves.

No retry is added: LiteLLM 1.108.7 can only retry by exception class (router `retry_policy`),
and a write onto a closed connection arrives as the same InternalServerError as a model's own
500, which must not run twice; aiohttp retries a reused connection only for idempotent
methods, and nginx passes a failed POST to no other server unless told `non_idempotent`.
"""

from __future__ import annotations

from collections.abc import Iterable

# LiteLLM's server side (uvicorn): how long it keeps an idle connection from nginx.
LITELLM_SERVER_S = 75
# nginx's client side towards LiteLLM: nginx's default, well below LITELLM_SERVER_S.
EDGE_UPSTREAM_S = 60
# LiteLLM's client side when no backend closes idle connections: aiohttp's own default.
LITELLM_CLIENT_DEFAULT_S = 15
# The client gives up after at most this share of the server's timeout: the server counts
# idle time from the end of its write, the client from when it has read the whole answer
# (later), so the margin also covers a slow reader.
CLIENT_SHARE = 0.5


def litellm_client_s(server_timeouts: Iterable[int | None]) -> int:
    """AIOHTTP_KEEPALIVE_TIMEOUT for LiteLLM: half the shortest idle keep-alive of the model
    servers behind it (at least 1 s; aiohttp's default when none of them closes idle ones)."""
    closing = [t for t in server_timeouts if t is not None]
    if not closing:
        return LITELLM_CLIENT_DEFAULT_S
    return max(1, int(min(closing) * CLIENT_SHARE))

