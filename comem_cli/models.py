"""The main model, reached through litellm (comem_cli/llm.py): retries with backoff, cost, and
errors mapped to exit statuses (api_error, context_overflow, time_limit)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from comem_cli.caching import cache_saving, mark_cache_control
from comem_cli.config import ModelConfig
from comem_cli.errors import ApiError, ContextOverflow, TimeLimit, UserError
from comem_cli.llm import CallDeadline, CallFailed, CallOverflow, Completion, import_litellm, short  # noqa: F401  (re-exported)


@dataclass
class ModelReply(Completion):
    """A main-model reply: the completion, and the dollars its cached prompt tokens saved."""

    cache_saved: float = 0.0  # caching.cache_saving


class LitellmModel:
    """Any litellm model name: `openai/gpt-5`, `anthropic/claude-...`, `openai/<name>` + api_base..."""

    def __init__(self, config: ModelConfig):
        self.config = config
        self.cost = 0.0
        self.calls = 0

    def _call(self, messages: list[dict[str, str]], *, max_tokens: int, retries: int, deadline: float | None):
        from comem_cli.llm import complete

        c = self.config
        return complete(mark_cache_control(messages, c.name), model=c.name, api_base=c.api_base, max_tokens=max_tokens, temperature=c.temperature,
                        timeout_s=c.timeout_s, retries=retries, backoff_s=c.backoff_s, deadline=deadline)

    def preflight(self) -> None:
        """Fail fast (UserError) on an unknown provider or a missing API key, before any container starts."""
        import os

        litellm = import_litellm()
        try:
            _, provider, _, _ = litellm.get_llm_provider(self.config.name, api_base=self.config.api_base)
        except Exception as e:
            raise UserError(f"unknown model {self.config.name!r}: {short(e, 120)}") from None
        if self.config.api_base:
            return
        for key in [k for k, v in os.environ.items() if k.endswith("_API_KEY") and not v.strip()]:
            del os.environ[key]  # an empty key is a missing key (litellm would count it as set)
        check = litellm.validate_environment(model=self.config.name)
        missing = check.get("missing_keys") or []
        if missing:
            raise UserError(f"model {self.config.name!r} ({provider}) needs {', '.join(missing)} in the environment")

    def prewarm(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        """Send `messages` with max_tokens=1 so a prefix-caching server has them cached for the next
        real call (the swap cost). Never raises: a failed pre-warm only costs a cache miss."""
        start = time.time()
        try:
            reply = self._call(messages, max_tokens=1, retries=0, deadline=None)
        except CallFailed as e:
            return {"ok": False, "start": start, "end": time.time(), "error": str(e)[:200]}
        return {"ok": True, "start": start, "end": time.time(), "prompt_tokens": reply.prompt_tokens, "error": None}

    def query(self, messages: list[dict[str, str]], deadline: float | None = None) -> ModelReply:
        """One reply. Each try waits at most the configured timeout and never past `deadline`."""
        try:
            reply = self._call(messages, max_tokens=self.config.max_tokens, retries=self.config.retries, deadline=deadline)
        except CallOverflow as e:
            raise ContextOverflow(str(e)) from None
        except CallDeadline as e:
            raise TimeLimit(f"time limit reached during a model call: {e}") from None
        except CallFailed as e:
            raise ApiError(str(e)) from None
        self.cost += reply.cost
        self.calls += 1
        return ModelReply(content=reply.content, prompt_tokens=reply.prompt_tokens,
                          completion_tokens=reply.completion_tokens, cost=reply.cost, start=reply.start, end=reply.end,
                          cached_tokens=reply.cached_tokens,
                          cache_saved=cache_saving(import_litellm(), self.config.name, reply.cached_tokens))
