"""The main model, reached through litellm: retries with backoff, cost, and errors mapped to exit statuses.

litellm is imported on first use (it takes seconds), with the bundled price map so that nothing is
fetched at import time. Prices of unknown models count as zero instead of crashing the run.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from comem_cli.caching import cache_saving, cached_tokens, mark_cache_control
from comem_cli.config import ModelConfig
from comem_cli.errors import ApiError, ContextOverflow, UserError


def import_litellm():
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    import litellm

    litellm.suppress_debug_info = True
    litellm.drop_params = True  # providers that reject e.g. temperature still work
    return litellm


@dataclass
class ModelReply:
    content: str
    prompt_tokens: int
    completion_tokens: int
    cost: float
    start: float
    end: float
    cached_tokens: int = 0  # prompt tokens the provider served from its cache
    cache_saved: float = 0.0  # dollars those cached tokens saved (caching.cache_saving)


def short(err: BaseException, limit: int = 200) -> str:
    """The provider's message on one line, without litellm's prefixes and stack noise."""
    text = " ".join(str(getattr(err, "message", None) or err).split())
    for prefix in ("litellm.", "OpenAIException - ", "AnthropicException - "):
        text = text.replace(prefix, "")
    return text[:limit]


class LitellmModel:
    """Any litellm model name: `openai/gpt-5`, `anthropic/claude-...`, `openai/<name>` + api_base..."""

    def __init__(self, config: ModelConfig):
        self.config = config
        self.cost = 0.0
        self.calls = 0

    def _kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"model": self.config.name, "temperature": self.config.temperature,
                                  "max_tokens": self.config.max_tokens, "timeout": self.config.timeout_s}
        if self.config.api_base:
            kwargs["api_base"] = self.config.api_base
            # OpenAI-compatible local servers rarely check keys, but the client insists on one.
            if self.config.name.startswith(("openai/", "hosted_vllm/")) and not os.environ.get("OPENAI_API_KEY"):
                kwargs["api_key"] = "none"
        return kwargs

    def preflight(self) -> None:
        """Fail fast (UserError) on an unknown provider or a missing API key, before any container starts."""
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
        real call (SPEC 3.5, the swap cost). Never raises: a failed pre-warm only costs a cache miss."""
        start = time.time()
        try:
            response = import_litellm().completion(messages=mark_cache_control(messages, self.config.name),
                                                   **{**self._kwargs(), "max_tokens": 1}, num_retries=0)
        except Exception as e:
            return {"ok": False, "start": start, "end": time.time(), "error": short(e)}
        usage = getattr(response, "usage", None)
        return {"ok": True, "start": start, "end": time.time(), "prompt_tokens": getattr(usage, "prompt_tokens", None), "error": None}

    def query(self, messages: list[dict[str, str]]) -> ModelReply:
        litellm = import_litellm()
        transient = (litellm.RateLimitError, litellm.APIConnectionError, litellm.Timeout,
                     litellm.InternalServerError, litellm.ServiceUnavailableError)
        attempt = 0
        while True:
            start = time.time()
            try:
                response = litellm.completion(messages=mark_cache_control(messages, self.config.name), **self._kwargs())
                break
            except litellm.ContextWindowExceededError as e:
                raise ContextOverflow(short(e)) from None
            except transient as e:
                if attempt >= self.config.retries:
                    raise ApiError(f"{type(e).__name__}: {short(e)} (after {attempt + 1} attempts)") from None
                time.sleep(self.config.backoff_s * 2**attempt)
                attempt += 1
            except (litellm.AuthenticationError, litellm.NotFoundError, litellm.BadRequestError,
                    litellm.PermissionDeniedError, litellm.APIError) as e:
                if "context" in str(e).lower() and ("length" in str(e).lower() or "window" in str(e).lower()):
                    raise ContextOverflow(short(e)) from None
                raise ApiError(f"{type(e).__name__}: {short(e)}") from None
        end = time.time()
        content = response.choices[0].message.content or ""
        usage = getattr(response, "usage", None)
        try:
            cost = float(litellm.completion_cost(completion_response=response) or 0.0)
        except Exception:
            cost = 0.0  # unknown price: tolerated, counted as free
        self.cost += cost
        self.calls += 1
        cached = cached_tokens(usage)
        return ModelReply(
            content=content,
            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
            cost=cost,
            start=start,
            end=end,
            cached_tokens=cached,
            cache_saved=cache_saving(litellm, self.config.name, cached),
        )
