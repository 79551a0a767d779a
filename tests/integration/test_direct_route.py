"""`route: direct`: the request body's model as the real nginx image reads it.

nginx picks a direct-routed model's container from the top-level "model" of the body, with
the PCRE map that llmstack renders (render.BODY_MODEL_RE). This runs that map, as rendered,
in llmstack's nginx image behind the same `mirror` that reads the body first, and sends it
bodies a real client may send: the model must be the top-level one or none (then the gateway
answers). The routes themselves are checked on a live stack in test_api_guide.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from llmstack import capacity, render, spec
from llmstack.images import NGINX
from tests.helpers import REPO, free_port, wait_for

pytestmark = pytest.mark.integration

LABEL = {"llmstack.test": "direct-route"}

CONF = """
worker_processes 1;
pid /tmp/nginx.pid;
error_log stderr warn;
events {{ worker_connections 64; }}
http {{
    client_body_temp_path /tmp/body;
    proxy_temp_path /tmp/proxy;
    fastcgi_temp_path /tmp/fastcgi;
    uwsgi_temp_path /tmp/uwsgi;
    scgi_temp_path /tmp/scgi;
    client_body_buffer_size {body_buffer};
    access_log off;
{body_map}
    server {{
        listen 8081;
        location / {{ return 200 "[$http_x_model]"; }}
    }}
    server {{
        listen 8080;
        location / {{
            mirror /_read;
            mirror_request_body on;
            proxy_set_header X-Model $llmstack_body_model;
            proxy_pass http://127.0.0.1:8081;
        }}
        location = /_read {{ internal; return 204; }}
    }}
}}
"""


def body_map() -> str:
    """The `map $request_body` block of a rendered nginx.conf (the golden direct case)."""
    conf = render.render(spec.load_file(REPO / "tests" / "golden" / "direct" / "stack.yaml")
                         ).files()["nginx.conf"].decode()
    start = conf.index("    map $request_body $llmstack_body_model {")
    return conf[start:conf.index("\n    }\n", start) + 7]


@pytest.fixture(scope="module")
def reader(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder: Path = tmp_path_factory.mktemp("nginx")
    (folder / "nginx.conf").write_text(CONF.format(body_map=body_map(),
                                                   body_buffer=capacity.BODY_BUFFER))
    folder.chmod(0o755)
    (folder / "nginx.conf").chmod(0o644)
    port = free_port()
    container = docker_client.containers.run(
        NGINX.tag, entrypoint=["nginx"], command=["-c", "/conf/nginx.conf", "-g", "daemon off;"],
        detach=True, labels=LABEL, ports={"8080/tcp": ("127.0.0.1", port)},
        volumes={str(folder): {"bind": "/conf", "mode": "ro"}})
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        wait_for(lambda: _answers(url), 30, what="nginx answering")
        yield url
    finally:
        container.remove(force=True)


def _answers(url: str) -> bool:
    try:
        return requests.post(url, data=b"{}", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def model_of(url: str, body: str | bytes) -> str:
    resp = requests.post(url, data=body if isinstance(body, bytes) else body.encode(),
                         headers={"Content-Type": "application/json"}, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.text.removeprefix("[").removesuffix("]")


MESSAGES = [{"role": "user", "content": 'say "model": "b" and {"model":"b"} ]}'}]
CASES = [
    ("plain", {"model": "a"}, "a"),
    ("last key, SDK order", {"messages": MESSAGES, "model": "a", "stream": True}, "a"),
    ("nested metadata first", {"metadata": {"model": "b"}, "model": "a"}, "a"),
    ("tool schema with a model property",
     {"tools": [{"type": "function", "function": {"name": "f", "parameters": {
         "type": "object", "properties": {"model": {"type": "string", "default": "b"}}}}}],
      "model": "a"}, "a"),
    ("numbers, booleans, null before it",
     {"max_tokens": 5, "temperature": 0.5, "stop": None, "echo": False, "model": "a"}, "a"),
    ("alias with dots and colons", {"model": "qwen2.5:7b-instruct"}, "qwen2.5:7b-instruct"),
    ("only nested", {"metadata": {"model": "b"}}, ""),
    ("no model", {"input": "model"}, ""),
    ("model not a string", {"model": ["a"]}, ""),
]


@pytest.mark.parametrize(("body", "expected"), [(json.dumps(b), e) for _, b, e in CASES]
                         + [(json.dumps(b, indent=2), e) for _, b, e in CASES[:3]],
                         ids=[c[0] for c in CASES] + [c[0] + ", indented" for c in CASES[:3]])
def test_the_top_level_model_or_none(reader: str, body: str, expected: str) -> None:
    assert model_of(reader, body) == expected


def test_bodies_it_cannot_read_leave_the_model_empty(reader: str) -> None:
    """Empty means the gateway answers: escapes, a non-object, a body spooled to disk."""
    assert model_of(reader, r'{"model":"\u0061"}') == ""
    assert model_of(reader, '["model", "a"]') == ""
    assert model_of(reader, b"") == ""
    # A body much larger than the 16k body buffer is spooled to disk, not read (about 20k
    # still fits: the first read lands in the header buffer).
    big = json.dumps({"messages": [{"role": "user", "content": "x" * 60_000}], "model": "a"})
    assert model_of(reader, big) == ""
    fits = json.dumps({"messages": [{"role": "user", "content": "x" * 12_000}], "model": "a"})
    assert model_of(reader, fits) == "a"
