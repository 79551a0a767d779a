"""LiteLLM callback shipped into LiteLLM's config volume (next to litellm.yaml): refuses a
request for a model that the team key behind it may not use.

nginx checks every key and hands LiteLLM the internal key; for a team key limited to some
models it also sends `X-Llmstack-Models: a,b` (nginx drops any header of that name a client
sends). This hook runs before LiteLLM routes the request: a model outside the list gets 403
JSON naming the key (`X-Llmstack-Key`). No header: the master key or an unrestricted key.
Runs inside the LiteLLM image only (it imports litellm); llmstack itself never imports it.
"""

from __future__ import annotations

from typing import Any

from litellm.integrations.custom_logger import CustomLogger
from litellm.proxy._types import ProxyException

MODELS_HEADER = "x-llmstack-models"
KEY_HEADER = "x-llmstack-key"


def _header(headers: Any, name: str) -> str | None:
    for key, value in dict(headers or {}).items():
        if str(key).lower() == name:
            return str(value)
    return None


class KeyModels(CustomLogger):  # type: ignore[misc]
    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict,
                                  call_type: Any) -> dict:
        headers = (data.get("proxy_server_request") or {}).get("headers")
        allowed = _header(headers, MODELS_HEADER)
        if allowed is None:
            return data
        models = [m for m in allowed.split(",") if m]
        if data.get("model") not in models:
            name = _header(headers, KEY_HEADER) or "?"
            raise ProxyException(
                message=f"API key '{name}' may not use this model; it may use: "
                        f"{', '.join(models) or 'no model'}.",
                type="permission_error", param="model", code=403)
        return data


handler = KeyModels()
