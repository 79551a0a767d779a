"""llmstack: one stack.yaml to a running, secured, self-hosted OpenAI-compatible LLM API."""

__version__ = "0.1.0"
