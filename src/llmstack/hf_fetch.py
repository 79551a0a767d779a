"""Fetch one `hf:` source into the Hugging Face cache: runs inside the fetch container.

`python3 -c <this file> REQUEST.json` in one of llmstack's own images (LiteLLM's, which has
python3 and huggingface_hub), on the engine's host, with the cache volume at HF_HOME and
HF_TOKEN / HF_ENDPOINT in its environment only. Stdlib and huggingface_hub; nothing of
llmstack is importable here. huggingface_hub does the Hub's protocol: the resolve and metadata
routes, ETags, resuming a `.incomplete` file with a Range request, the cache layout.

This script adds what `llmstack up` needs around it, one JSON object a line on stdout:
  plan      the commit the revision resolves to, the files, their total size, what is still
            missing and the free space of the cache (refused before downloading when short)
  progress  bytes on disk of the files so far (complete and `.incomplete`), every second
  done      per file its size and sha256, checked against the Hub's ETag (the sha256 of an
            LFS file, the git blob id of a small one); a file that does not match is deleted
            and the fetch fails, so no server ever loads it
  error     kind (gated | unauthorized | not_found | revision | file | network | endpoint |
            disk | checksum | other), status and message; exit code 3
The request: {"repo", "file" ("" = whole repository), "revision", "marker"}. `marker` is where
a completed fetch records itself (relative to HF_HOME), so a later `up` needs no network.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import threading
import time
from typing import Any

ERROR_EXIT = 3
PROGRESS_SECONDS = 1.0
SHA256_RE = re.compile(r"[0-9a-f]{64}")
SHA1_RE = re.compile(r"[0-9a-f]{40}")


def emit(event: str, **data: Any) -> None:
    print(json.dumps({"event": event, **data}), flush=True)


class FetchFailed(Exception):
    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind, self.status = kind, status


def classify(exc: BaseException) -> FetchFailed:
    """huggingface_hub's and httpx's exceptions as one of the kinds `llmstack` explains."""
    import httpx
    from huggingface_hub import errors

    status = getattr(getattr(exc, "response", None), "status_code", None)
    first = " ".join(str(exc).split())[:400]
    kinds: list[tuple[Any, str]] = [
        (errors.GatedRepoError, "gated"), (errors.RevisionNotFoundError, "revision"),
        (errors.RemoteEntryNotFoundError, "file"), (errors.RepositoryNotFoundError, "not_found"),
        (errors.FileMetadataError, "endpoint"), (errors.LocalEntryNotFoundError, "network"),
        (errors.OfflineModeIsEnabled, "network"), (httpx.TransportError, "network"),
    ]
    for cls, kind in kinds:
        if isinstance(exc, cls):
            return FetchFailed(kind, first, status)
    if isinstance(exc, errors.HfHubHTTPError) and status in (401, 403):
        return FetchFailed("unauthorized", first, status)
    if isinstance(exc, errors.HfHubHTTPError):
        return FetchFailed("other", first, status)
    if isinstance(exc, ConnectionError | TimeoutError):
        return FetchFailed("network", first, status)
    return FetchFailed("other", f"{type(exc).__name__}: {first}", status)


def resolve(repo: str, file: str, revision: str) -> tuple[str, list[dict[str, Any]]]:
    """(commit, [{name, size, etag}]) of the revision, from the Hub's resolve route (one file)
    or its metadata route (a whole repository)."""
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url

    if file:
        meta = get_hf_file_metadata(hf_hub_url(repo, file, revision=revision))
        if not meta.commit_hash or not meta.etag:
            raise FetchFailed("endpoint", "the endpoint's answer has no X-Repo-Commit or ETag: "
                              "it does not speak the Hugging Face Hub API")
        return meta.commit_hash, [{"name": file, "size": meta.size, "etag": meta.etag}]
    info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    if not info.sha:
        raise FetchFailed("endpoint", "the endpoint's repository info has no commit (sha)")
    files = [{"name": s.rfilename, "size": s.size,
              "etag": s.lfs.sha256 if s.lfs else s.blob_id} for s in info.siblings or []]
    return info.sha, files


def blob_dir(cache: str, repo: str) -> str:
    return os.path.join(cache, "hub", "models--" + repo.replace("/", "--"), "blobs")


def on_disk(blobs: str, files: list[dict[str, Any]]) -> tuple[int, int]:
    """(bytes of the files on disk, complete or partial; bytes of complete files)."""
    total = complete = 0
    for f in files:
        blob = os.path.join(blobs, str(f["etag"]))
        for path, done in ((blob, True), (blob + ".incomplete", False)):
            try:
                size = os.path.getsize(path)
            except OSError:
                continue
            total += size
            complete += size if done else 0
            break
    return total, complete


def digest(path: str, etag: str) -> tuple[str, bool]:
    """(sha256 of the file, whether it matches the Hub's ETag): an LFS ETag is the sha256, a
    small file's is its git blob id (sha1 of 'blob SIZE\\0' + data)."""
    sha256 = hashlib.sha256()
    git = hashlib.sha1(f"blob {os.path.getsize(path)}\0".encode())  # git's blob id
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            sha256.update(chunk)
            git.update(chunk)
    got = sha256.hexdigest()
    if SHA256_RE.fullmatch(etag):
        return got, got == etag
    if SHA1_RE.fullmatch(etag):
        return got, git.hexdigest() == etag
    return got, True  # an ETag of another kind: nothing to compare with


def download(repo: str, file: str, commit: str, files: list[dict[str, Any]], cache: str,
             total: int) -> str:
    """Download at `commit` in a thread; report progress from the sizes on disk."""
    from huggingface_hub import hf_hub_download, snapshot_download

    result: dict[str, Any] = {}

    def work() -> None:
        try:
            result["path"] = hf_hub_download(repo, file, revision=commit) if file else \
                snapshot_download(repo, revision=commit)
        except BaseException as exc:  # reported by the main thread
            result["error"] = exc

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    blobs = blob_dir(cache, repo)
    while True:
        worker.join(PROGRESS_SECONDS)
        have, _ = on_disk(blobs, files)
        emit("progress", bytes=have, total=total)
        if not worker.is_alive():
            break
    if "error" in result:
        raise result["error"]
    return str(result["path"])


def verify(repo: str, commit: str, files: list[dict[str, Any]], cache: str
           ) -> list[dict[str, Any]]:
    """Every file's sha256 against its ETag; a mismatch deletes the blob and its link."""
    blobs = blob_dir(cache, repo)
    snapshot = os.path.join(os.path.dirname(blobs), "snapshots", commit)
    out = []
    for f in files:
        blob = os.path.join(blobs, str(f["etag"]))
        sha256, ok = digest(blob, str(f["etag"]))
        if not ok:
            for path in (blob, os.path.join(snapshot, f["name"])):
                if os.path.lexists(path):
                    os.remove(path)
            raise FetchFailed("checksum", f"{f['name']}: the downloaded bytes do not match the "
                              f"Hub's checksum {f['etag']} (got sha256 {sha256}); the file "
                              "was deleted")
        out.append({"name": f["name"], "size": os.path.getsize(blob), "sha256": sha256})
    return out


def fetch(request: dict[str, Any]) -> None:
    repo, file = request["repo"], request["file"]
    revision = request.get("revision") or "main"
    cache = os.environ["HF_HOME"]
    started = time.monotonic()
    commit, files = resolve(repo, file, revision)
    total = sum(int(f["size"] or 0) for f in files)
    blobs = blob_dir(cache, repo)
    _, complete = on_disk(blobs, files)
    os.makedirs(cache, exist_ok=True)
    usage = shutil.disk_usage(cache)
    need = max(total - on_disk(blobs, files)[0], 0)
    emit("plan", commit=commit, files=len(files), total=total, cached=complete, need=need,
         free=usage.free)
    if need > usage.free:
        raise FetchFailed("disk", f"needs {need / 1e9:.2f} GB more in the cache volume, "
                          f"{usage.free / 1e9:.2f} GB free on the engine's host")
    before = complete
    download(repo, file, commit, files, cache, total)
    emit("verifying", files=len(files))
    checked = verify(repo, commit, files, cache)
    marker = os.path.join(cache, request["marker"].replace("{commit}", commit))
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    record = {"repo": repo, "file": file, "revision": revision, "commit": commit,
              "files": checked}
    with open(marker + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(record, handle)
    os.replace(marker + ".tmp", marker)
    emit("done", commit=commit, files=checked, downloaded=max(total - before, 0),
         seconds=round(time.monotonic() - started, 2))


def main() -> int:
    try:
        fetch(json.loads(sys.argv[1]))
    except FetchFailed as exc:
        emit("error", kind=exc.kind, status=exc.status, message=str(exc))
        return ERROR_EXIT
    except Exception as exc:
        failed = classify(exc)
        emit("error", kind=failed.kind, status=failed.status, message=str(failed))
        return ERROR_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
