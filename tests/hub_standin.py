"""A local stand-in for the Hugging Face Hub: the HTTP routes huggingface_hub uses to download.

Run as `python3 -c <this file> CONFIG.json` (stdlib only, Python 3.11) in a container on a
stack's network, or on 127.0.0.1. It serves real files under the Hub's API, as read in
huggingface_hub 1.33's file_download.py / hf_api.py / utils/_http.py:

  GET  /api/models/{org}/{name}/revision/{rev}   repository info: sha (the commit), siblings
                                                  with size, blobId and lfs.sha256
  GET  /api/models/{org}/{name}/tree/{rev}[/dir]  the file list (snapshot_download)
  HEAD /{org}/{name}/resolve/{rev}/{path}         X-Repo-Commit, ETag and X-Linked-Etag (the
  GET  ...                                        sha256 of the file, as for an LFS file),
                                                  X-Linked-Size, Content-Length, Accept-Ranges;
                                                  GET with Range answers 206 + Content-Range
  errors as the Hub sends them: 401/403 with X-Error-Code GatedRepo, 404 with RepoNotFound,
  RevisionNotFound or EntryNotFound (X-Error-Message alongside)

For the tests: GET /_stats counts requests and file bytes served; CONFIG's "token" makes every
repository gated (no token: 401, another token: 403, as the Hub answers an account without
access); "cut_after" closes the first file download after that many bytes; "corrupt" flips a
byte of every file download (the ETag still names the true sha256); "rate" sends file bytes
at most that fast (bytes a second), so that a download can be interrupted midway.

CONFIG: {"port": 8080, "token": null, "cut_after": 0, "corrupt": false, "rate": 0,
         "repos": {"ORG/NAME": {"commit": "<40 hex>", "files": {"PATH": "/local/file"}}}}
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

CHUNK = 1 << 20
LOCK = threading.Lock()
STATS = {"head": 0, "get": 0, "bytes": 0, "info": 0, "tree": 0, "refused": 0}


def file_facts(path: str) -> dict[str, Any]:
    sha256 = hashlib.sha256()
    size = os.path.getsize(path)
    git = hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            sha256.update(chunk)
            git.update(chunk)
    return {"local": path, "size": size, "sha256": sha256.hexdigest(), "oid": git.hexdigest()}


class Hub:
    def __init__(self, config: dict[str, Any]) -> None:
        self.token = config.get("token")
        self.cut_after = int(config.get("cut_after") or 0)
        self.corrupt = bool(config.get("corrupt"))
        self.rate = int(config.get("rate") or 0)
        self.repos = {repo: {"commit": r["commit"],
                             "files": {p: file_facts(local) for p, local in r["files"].items()}}
                      for repo, r in config["repos"].items()}


HUB: Hub


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"hub: {self.client_address[0]} " + format % args + "\n")

    # --- answers ------------------------------------------------------------------------

    def error(self, status: int, code: str | None, message: str,
              headers: dict[str, str] | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def json(self, data: Any) -> None:
        body = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def allowed(self, repo: str) -> bool:
        if not HUB.token:
            return True
        sent = self.headers.get("Authorization", "")
        if sent == f"Bearer {HUB.token}":
            return True
        with LOCK:
            STATS["refused"] += 1
        message = (f"Access to model {repo} is restricted. You must have access to it and be "
                   "authenticated to access it. Please log in." if not sent else
                   f"Access to model {repo} is restricted and you are not in the authorized "
                   "list. Visit https://huggingface.co/" + repo + " to ask for access.")
        self.error(401 if not sent else 403, "GatedRepo", message)
        return False

    def repo(self, repo: str, rev: str) -> dict[str, Any] | None:
        found = HUB.repos.get(repo)
        if found is None:
            self.error(404, "RepoNotFound", "Repository not found")
            return None
        if not self.allowed(repo):
            return None
        if rev not in ("main", found["commit"]):
            self.error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return None
        return found

    # --- routes ---------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self.route()

    def do_GET(self) -> None:
        self.route()

    def route(self) -> None:
        path = unquote(urlsplit(self.path).path)
        if path == "/_stats":
            with LOCK:
                return self.json(dict(STATS))
        if path == "/health":
            return self.json({"ok": True})
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/(.+)", path)
        if match:
            return self.info(match.group(1), match.group(2))
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path)
        if match:
            return self.tree(match.group(1), match.group(2), (match.group(3) or "").strip("/"))
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if match:
            return self.resolve(match.group(1), match.group(2), match.group(3))
        return self.error(404, None, "Not Found")

    def info(self, repo: str, rev: str) -> None:
        found = self.repo(repo, rev)
        if found is None:
            return
        with LOCK:
            STATS["info"] += 1
        self.json({"_id": repo, "id": repo, "modelId": repo, "sha": found["commit"],
                   "private": False, "gated": "auto" if HUB.token else False, "downloads": 0,
                   "likes": 0, "tags": [], "lastModified": "2026-01-01T00:00:00.000Z",
                   "siblings": [{"rfilename": p, "size": f["size"], "blobId": f["oid"],
                                 "lfs": {"sha256": f["sha256"], "size": f["size"],
                                         "pointerSize": 134}}
                                for p, f in sorted(found["files"].items())]})

    def tree(self, repo: str, rev: str, folder: str) -> None:
        found = self.repo(repo, rev)
        if found is None:
            return
        with LOCK:
            STATS["tree"] += 1
        entries = [{"type": "file", "oid": f["oid"], "size": f["size"], "path": p,
                    "lfs": {"oid": f["sha256"], "size": f["size"], "pointerSize": 134}}
                   for p, f in sorted(found["files"].items())
                   if not folder or p.startswith(folder + "/")]
        self.json(entries)

    def resolve(self, repo: str, rev: str, name: str) -> None:
        found = self.repo(repo, rev)
        if found is None:
            return
        facts = found["files"].get(name)
        if facts is None:
            return self.error(404, "EntryNotFound", f"{name} does not exist on \"{rev}\"",
                              {"X-Repo-Commit": found["commit"]})
        size = facts["size"]
        start, end = 0, size - 1
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if ranged:
            start = int(ranged.group(1))
            end = min(int(ranged.group(2)), size - 1) if ranged.group(2) else size - 1
            if start >= size:
                return self.error(416, None, "Range Not Satisfiable",
                                  {"Content-Range": f"bytes */{size}"})
        etag = f'"{facts["sha256"]}"'
        self.send_response(206 if ranged else 200)
        for header, value in (("X-Repo-Commit", found["commit"]), ("ETag", etag),
                              ("X-Linked-Etag", etag), ("X-Linked-Size", str(size)),
                              ("Accept-Ranges", "bytes"),
                              ("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(end - start + 1))):
            self.send_header(header, value)
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        with LOCK:
            STATS["head" if self.command == "HEAD" else "get"] += 1
        if self.command == "HEAD":
            return None
        return self.send_file(facts["local"], start, end)

    def send_file(self, local: str, start: int, end: int) -> None:
        cut = 0
        with LOCK:
            if HUB.cut_after:
                cut, HUB.cut_after = HUB.cut_after, 0
        sent = 0
        with open(local, "rb") as handle:
            handle.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = handle.read(min(CHUNK, left))
                if not chunk:
                    break
                if HUB.corrupt and sent == 0:
                    chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                if cut and sent + len(chunk) >= cut:
                    self.wfile.write(chunk[:cut - sent])
                    self.wfile.flush()
                    with LOCK:
                        STATS["bytes"] += cut - sent
                    self.close_connection = True
                    self.connection.close()  # the connection drops mid-file
                    return
                self.wfile.write(chunk)
                if HUB.rate:
                    time.sleep(len(chunk) / HUB.rate)
                sent += len(chunk)
                left -= len(chunk)
                with LOCK:
                    STATS["bytes"] += len(chunk)


def main() -> None:
    global HUB
    config = json.loads(sys.argv[1])
    HUB = Hub(config)
    server = ThreadingHTTPServer(("0.0.0.0", int(config.get("port", 8080))), Handler)
    print("hub: ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
