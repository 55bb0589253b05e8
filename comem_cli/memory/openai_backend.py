"""The litellm memory backends: `openai`, any OpenAI-compatible server (a `vllm serve` process, a
hosted API) reached as `openai/<served name>` with an api_base; and `main`, the main model itself
writing the summaries where no memory model runs (one request per summary, its prompt laid out for
the provider's prompt cache, its tokens and cost counted apart from the agent's)."""

from __future__ import annotations

import threading

from comem_cli.memory.base import Cancelled


def served_context(api_base: str | None, model: str, timeout_s: float = 5.0) -> int | None:
    """The window an OpenAI-compatible server says it serves `model` with (vLLM's `max_model_len` in
    `/v1/models`); None when it does not say or does not answer."""
    import json
    import urllib.request

    if not api_base:
        return None
    served = model.split("/", 1)[1] if model.startswith(("openai/", "hosted_vllm/")) else model
    try:
        with urllib.request.urlopen(api_base.rstrip("/") + "/models", timeout=timeout_s) as response:
            entries = json.loads(response.read()).get("data") or []
    except Exception:  # noqa: BLE001 - a server that does not list its models is fine
        return None
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and entry.get("id") in (served, model) and isinstance(entry.get("max_model_len"), int):
            return entry["max_model_len"]
    return None


class OpenAIBackend:
    """A chat model through litellm (`openai/<served name>` + api_base, or any litellm name)."""

    def __init__(self, model: str, api_base: str | None = None, *, timeout_s: float = 300.0, temperature: float = 0.0,
                 name: str = "openai", parallel: bool = True, context: int | None = None):
        self.model = model if "/" in model else f"openai/{model}"
        self.api_base, self.timeout_s, self.temperature = api_base, timeout_s, temperature
        self.name = name
        self.context = context  # the model's window (requests are fitted into it); None: unknown
        # A serving engine batches concurrent requests (and, vLLM / SGLang, caches prefixes): the
        # sections of a summary go as parallel requests. A hosted main model bills every request's
        # input: one request per summary.
        self.parallel = parallel
        self.cost, self.prompt_tokens, self.completion_tokens, self.cached_tokens = 0.0, 0, 0, 0
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()

    def summarize(self, messages, *, max_tokens, request_id):
        from comem_cli.caching import mark_cache_control
        from comem_cli.llm import complete

        if request_id in self._cancelled:
            raise Cancelled(request_id)
        reply = complete(mark_cache_control(messages, self.model), model=self.model, api_base=self.api_base,
                         max_tokens=max_tokens, temperature=self.temperature, timeout_s=self.timeout_s, retries=0)
        with self._lock:  # paid for even when it comes too late to be wanted
            self.cost += reply.cost
            self.prompt_tokens += reply.prompt_tokens
            self.completion_tokens += reply.completion_tokens
            self.cached_tokens += reply.cached_tokens
        if request_id in self._cancelled:  # the answer came too late to be wanted
            raise Cancelled(request_id)
        return reply.content

    def bill(self) -> dict[str, float | int]:
        """What the memory model's requests cost so far (the run's totals show it apart)."""
        with self._lock:
            return {"memory_cost": round(self.cost, 6), "memory_prompt_tokens": self.prompt_tokens,
                    "memory_completion_tokens": self.completion_tokens, "memory_cached_tokens": self.cached_tokens}

    def cancel(self, request_id):
        with self._lock:
            self._cancelled.add(request_id)

    def close(self):
        pass
