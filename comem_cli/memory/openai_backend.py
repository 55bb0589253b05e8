"""The `openai` memory backend: any OpenAI-compatible server (a `vllm serve` process, a hosted
API) reached through litellm as `openai/<served name>` with an api_base."""

from __future__ import annotations

import threading

from comem_cli.memory.base import Cancelled


class OpenAIBackend:
    """Any OpenAI-compatible endpoint through litellm (`openai/<served name>` + api_base)."""

    name = "openai"
    parallel = True  # a serving engine batches concurrent requests (and, vLLM / SGLang, caches prefixes)

    def __init__(self, model: str, api_base: str | None = None, *, timeout_s: float = 300.0, temperature: float = 0.0):
        self.model = model if "/" in model else f"openai/{model}"
        self.api_base, self.timeout_s, self.temperature = api_base, timeout_s, temperature
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()

    def summarize(self, messages, *, max_tokens, request_id):
        from comem_cli.llm import complete

        if request_id in self._cancelled:
            raise Cancelled(request_id)
        reply = complete(messages, model=self.model, api_base=self.api_base, max_tokens=max_tokens,
                         temperature=self.temperature, timeout_s=self.timeout_s, retries=0)
        if request_id in self._cancelled:  # the answer came too late to be wanted
            raise Cancelled(request_id)
        return reply.content

    def cancel(self, request_id):
        with self._lock:
            self._cancelled.add(request_id)

    def close(self):
        pass
