"""The `openai` memory backend: any OpenAI-compatible server (a `vllm serve` process, a hosted
API) reached through litellm as `openai/<served name>` with an api_base."""

from __future__ import annotations

import threading

from comem_cli.memory.base import Cancelled


class OpenAIBackend:
    """Any OpenAI-compatible endpoint through litellm (`openai/<served name>` + api_base)."""

    name = "openai"

    def __init__(self, model: str, api_base: str | None = None, *, timeout_s: float = 300.0, temperature: float = 0.0):
        self.model = model if "/" in model else f"openai/{model}"
        self.api_base, self.timeout_s, self.temperature = api_base, timeout_s, temperature
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()

    def summarize(self, messages, *, max_tokens, request_id):
        from comem_cli.models import import_litellm

        if request_id in self._cancelled:
            raise Cancelled(request_id)
        litellm = import_litellm()
        kwargs = {"api_base": self.api_base, "api_key": "none"} if self.api_base else {}
        response = litellm.completion(model=self.model, messages=messages, max_tokens=max_tokens,
                                      temperature=self.temperature, timeout=self.timeout_s, num_retries=0, **kwargs)
        if request_id in self._cancelled:  # the answer came too late to be wanted
            raise Cancelled(request_id)
        return response.choices[0].message.content or ""

    def cancel(self, request_id):
        with self._lock:
            self._cancelled.add(request_id)

    def close(self):
        pass
