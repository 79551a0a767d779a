"""Fetch one `hf:` source into the Hugging Face cache: runs inside the fetch container.

`python3 -c <this file> REQUEST.json` in one of llmstack's own images (LiteLLM's, which has
python3 and huggingface_hub), on the engine's host, with the cache volume at HF_HOME and
HF_TOKEN / HF_ENDPOINT in its environment only. Stdlib and huggingface_hub; nothing of
llmstack is importable here. huggingface_hub does the Hub's protocol: the resolve and metadata
routes, ETags, resuming a `.incomplete` file with a Range request, the cache layout.

huggingface_hub 1.33 downloads into a process-unique temporary file and drops it on failure
(its PR #4228), so an interrupted run starts again from zero. For a file served over plain HTTP
(not Xet, whose own chunk cache already survives a restart) this script therefore downloads the
blob itself first: into `blobs/<etag>.llmstack-partial`, continued with a Range request after
Ctrl-C or a dropped connection, checked against the ETag, then renamed to `blobs/<etag>`;
hf_hub_download then only links it into `snapshots/<commit>/` (its "blob exists" path) and
writes the refs. A partial file is never where a server looks.

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
PARTIAL = ".llmstack-partial"  # our resumable download of a blob, beside huggingface_hub's
ATTEMPTS = 5  # connections per file: a dropped one continues where it stopped
STALE_SECONDS = 600  # huggingface_hub's temporary files untouched this long are left-overs
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
    """(commit, [{name, size, etag, url, xet}]) of the revision: the metadata route gives the
    commit and the files of a whole repository, the resolve route (HEAD) each file's ETag,
    size and download location."""
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url

    names = [file]
    if not file:
        info = HfApi().model_info(repo, revision=revision)
        if not info.sha:
            raise FetchFailed("endpoint", "the endpoint's repository info has no commit (sha)")
        revision, names = info.sha, [s.rfilename for s in info.siblings or []]
    commit, files = "", []
    for name in names:
        asked = hf_hub_url(repo, name, revision=revision)
        meta = get_hf_file_metadata(asked)
        if not meta.commit_hash or not meta.etag:
            raise FetchFailed("endpoint", "the endpoint's answer has no X-Repo-Commit or ETag: "
                              "it does not speak the Hugging Face Hub API")
        commit = commit or meta.commit_hash
        # Served by the endpoint itself: download by commit, never by a branch that may move.
        url = hf_hub_url(repo, name, revision=commit) if meta.location == asked else \
            meta.location
        files.append({"name": name, "size": meta.size, "etag": meta.etag, "url": url,
                      "xet": meta.xet_file_data is not None})
    return commit or revision, files


def blob_dir(cache: str, repo: str) -> str:
    return os.path.join(cache, "hub", "models--" + repo.replace("/", "--"), "blobs")


def on_disk(blobs: str, files: list[dict[str, Any]]) -> tuple[int, int]:
    """(bytes of the files on disk, complete or partial; bytes of complete files)."""
    total = complete = 0
    try:
        names = os.listdir(blobs)
    except OSError:
        names = []
    for f in files:
        etag = str(f["etag"])
        if etag in names:
            size = os.path.getsize(os.path.join(blobs, etag))
            total, complete = total + size, complete + size
            continue
        partial = [n for n in names if n.startswith(etag + ".") and
                   (n.endswith(".incomplete") or n.endswith(PARTIAL))]
        total += max((os.path.getsize(os.path.join(blobs, n)) for n in partial), default=0)
    return total, complete


def drop_stale(blobs: str, files: list[dict[str, Any]]) -> None:
    """huggingface_hub's temporary files of these blobs left by a killed run (unique names,
    never reused): gone once nothing has written to them for STALE_SECONDS."""
    try:
        names = os.listdir(blobs)
    except OSError:
        return
    for f in files:
        for name in names:
            path = os.path.join(blobs, name)
            if name.startswith(f"{f['etag']}.") and name.endswith(".incomplete") and \
                    time.time() - os.path.getmtime(path) > STALE_SECONDS:
                os.remove(path)


def prefill(repo: str, f: dict[str, Any], blobs: str, endpoint: str) -> None:
    """Download one plain-HTTP blob to blobs/<etag>, resuming our partial file with Range
    requests (across runs and dropped connections) and checking it before it is renamed (its
    sha256 goes into f["sha256"])."""
    from urllib.parse import urlsplit

    import httpx
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    blob = os.path.join(blobs, str(f["etag"]))
    partial = blob + PARTIAL
    if os.path.exists(blob):
        return
    os.makedirs(blobs, exist_ok=True)
    url = str(f["url"])
    # The token goes to the Hub only, never to a storage host it redirects to.
    same = urlsplit(url).netloc == urlsplit(endpoint).netloc
    base = build_hf_headers() if same else {}
    base["Accept-Encoding"] = "identity"
    size = f["size"]
    for attempt in range(ATTEMPTS):
        have = os.path.getsize(partial) if os.path.exists(partial) else 0
        if size is not None and have >= size:
            break
        headers = {**base, **({"Range": f"bytes={have}-"} if have else {})}
        try:
            with get_session().stream("GET", url, headers=headers, follow_redirects=True,
                                      timeout=httpx.Timeout(60.0, connect=20.0)) as resp:
                hf_raise_for_status(resp)
                mode = "ab" if have and resp.status_code == 206 else "wb"
                with open(partial, mode) as out:
                    for chunk in resp.iter_bytes(1 << 20):
                        out.write(chunk)
            if size is None:
                break
        except httpx.TransportError:
            if attempt == ATTEMPTS - 1:
                raise
    sha256, ok = digest(partial, str(f["etag"]))
    if not ok:
        os.remove(partial)
        raise FetchFailed("checksum", f"{f['name']}: the downloaded bytes do not match the "
                          f"Hub's checksum {f['etag']} (got sha256 {sha256}); the file was "
                          "deleted")
    os.chmod(partial, 0o644)
    os.replace(partial, blob)
    f["sha256"] = sha256


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
             total: int) -> None:
    """Fetch every file at `commit` in a thread (plain-HTTP blobs by `prefill`, then
    huggingface_hub for the rest and the cache's links and refs); report progress from the
    sizes on disk every second."""
    from huggingface_hub import constants, hf_hub_download

    blobs = blob_dir(cache, repo)
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            for f in files:
                if not f["xet"]:
                    prefill(repo, f, blobs, constants.ENDPOINT)
                hf_hub_download(repo, f["name"], revision=commit)
        except BaseException as exc:  # reported by the main thread
            result["error"] = exc

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    while True:
        worker.join(PROGRESS_SECONDS)
        have, _ = on_disk(blobs, files)
        emit("progress", bytes=have, total=total)
        if not worker.is_alive():
            break
    if "error" in result:
        raise result["error"]


def verify(repo: str, commit: str, files: list[dict[str, Any]], cache: str
           ) -> list[dict[str, Any]]:
    """Every file's sha256 against its ETag (a blob `prefill` checked in this run is not read
    again); a mismatch deletes the blob and its link."""
    blobs = blob_dir(cache, repo)
    snapshot = os.path.join(os.path.dirname(blobs), "snapshots", commit)
    out = []
    for f in files:
        blob = os.path.join(blobs, str(f["etag"]))
        sha256, ok = (f["sha256"], True) if f.get("sha256") else digest(blob, str(f["etag"]))
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
    drop_stale(blobs, files)
    have, complete = on_disk(blobs, files)
    os.makedirs(cache, exist_ok=True)
    usage = shutil.disk_usage(cache)
    need = max(total - have, 0)
    emit("plan", commit=commit, files=len(files), total=total, cached=complete, partial=have -
         complete, need=need, free=usage.free)
    if need > usage.free:
        raise FetchFailed("disk", f"needs {need / 1e9:.2f} GB more in the cache volume, "
                          f"{usage.free / 1e9:.2f} GB free on the engine's host")
    before = have
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
