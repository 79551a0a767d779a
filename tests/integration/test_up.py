"""`llmstack up` on the real engine: the demo stack answers through nginx."""

from __future__ import annotations

import pytest
import requests
from openai import OpenAI

from tests.helpers import Stack

pytestmark = pytest.mark.integration


def test_demo_stack_answers_a_real_chat_through_nginx(demo_stack: Stack) -> None:
    health = requests.get(demo_stack.base_url.replace("/v1", "/health"), timeout=10)
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    client = OpenAI(api_key=demo_stack.key, base_url=demo_stack.base_url)
    ids = {m.id for m in client.models.list().data}
    assert {"deepseek-coder", "qwen-coder", "mistral", "smollm2-embed"} <= ids
    reply = client.chat.completions.create(
        model="deepseek-coder", messages=[{"role": "user", "content": "Say hello"}],
        max_tokens=16)
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens > 0
