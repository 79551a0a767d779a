"""Pull one model into a running Ollama through Ollama's own API: runs in the pull container.

`python3 -c <this file> BASE_URL TAG` in one of llmstack's own images, on the project's
network (BASE_URL is the Ollama container's, e.g. http://<project>-model-x:11434). Stdlib only.
As documented in Ollama's API reference (docs/api.md):

  GET  /api/tags   {"models": [{"name": "llama3.1:8b", "model": "llama3.1:8b", ...}]}: a tag
                   already there is not pulled again
  POST /api/pull   {"model": TAG}: a stream of JSON lines, {"status": "pulling manifest"},
                   {"status": "pulling <digest>", "digest", "total", "completed"} per layer,
                   {"status": "verifying sha256 digest"}, {"status": "writing manifest"},
                   {"status": "success"}; a failure is a line (or a body) {"error": "..."}

It prints what `llmstack up` reads from the hf fetch too, one JSON object a line: progress
(bytes of every layer so far, and their total), done (pulled: whether it downloaded) or error
(kind: not_found | network | other); exit code 3 on an error.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

ERROR_EXIT = 3
PROGRESS_SECONDS = 1.0
TIMEOUT = 600.0  # the longest silence of the pull stream


def emit(event: str, **data: Any) -> None:
    print(json.dumps({"event": event, **data}), flush=True)


def names(tags: dict[str, Any]) -> set[str]:
    return {str(m.get(k)) for m in tags.get("models") or [] for k in ("name", "model")
            if m.get(k)}


def present(tag: str, have: set[str]) -> bool:
    """Whether `tag` is among the pulled models (a bare name means NAME:latest)."""
    return tag in have or (":" not in tag and f"{tag}:latest" in have)


def kind_of(error: str) -> str:
    text = error.lower()
    if "file does not exist" in text or "not found" in text:
        return "not_found"
    if any(w in text for w in ("dial tcp", "no such host", "timeout", "connection refused",
                               "tls", "i/o timeout", "network")):
        return "network"
    return "other"


def pull(base: str, tag: str) -> int:
    started = time.monotonic()
    with urllib.request.urlopen(f"{base}/api/tags", timeout=30) as resp:
        if present(tag, names(json.load(resp))):
            emit("done", pulled=False, seconds=round(time.monotonic() - started, 2))
            return 0
    request = urllib.request.Request(f"{base}/api/pull", method="POST",
                                     data=json.dumps({"model": tag}).encode(),
                                     headers={"Content-Type": "application/json"})
    layers: dict[str, tuple[int, int]] = {}  # digest: (completed, total)
    last = 0.0
    try:
        resp = urllib.request.urlopen(request, timeout=TIMEOUT)
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        try:
            message = str(json.loads(body).get("error") or body)
        except ValueError:
            message = body or str(exc)
        emit("error", kind=kind_of(message), status=exc.code, message=message[:400])
        return ERROR_EXIT
    with resp:
        for raw in resp:
            if not raw.strip():
                continue
            line = json.loads(raw)
            if line.get("error"):
                message = str(line["error"])
                emit("error", kind=kind_of(message), status=None, message=message[:400])
                return ERROR_EXIT
            if line.get("digest") and line.get("total"):
                layers[line["digest"]] = (int(line.get("completed") or 0), int(line["total"]))
            now = time.monotonic()
            if layers and now - last >= PROGRESS_SECONDS:
                last = now
                emit("progress", bytes=sum(c for c, _ in layers.values()),
                     total=sum(t for _, t in layers.values()))
            if line.get("status") == "success":
                size = sum(t for _, t in layers.values())
                emit("done", pulled=True, downloaded=size,
                     seconds=round(time.monotonic() - started, 2))
                return 0
    emit("error", kind="other", status=None, message="the pull stream ended without success")
    return ERROR_EXIT


def main() -> int:
    base, tag = sys.argv[1].rstrip("/"), sys.argv[2]
    try:
        return pull(base, tag)
    except (OSError, ValueError) as exc:
        emit("error", kind="other", status=None,
             message=f"Ollama at {base} did not answer: {type(exc).__name__}: {exc}"[:400])
        return ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
