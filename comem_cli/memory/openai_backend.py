"""The `openai` memory backend: any OpenAI-compatible server (a `vllm serve` process, a hosted
API) reached through litellm as `openai/<served name>` with an api_base.

Each request carries the schedule's priority (rule 7 of memory/schedule.py) as vLLM's `priority`
body field, which a server started with `--scheduling-policy priority` honours (lower first). A
server that rejects the field (vLLM's default FCFS policy, other providers) answers with an error
naming it: the request is sent again without it, and this backend stops sending it.
"""

from __future__ import annotations

import threading

from comem_cli.memory.base import Cancelled


class OpenAIBackend:
    """Any OpenAI-compatible endpoint through litellm (`openai/<served name>` + api_base)."""

    name = "openai"
    takes_priority = True  # MemoryContext passes `priority=` (schedule rule 7)

    def __init__(self, model: str, api_base: str | None = None, *, timeout_s: float = 300.0, temperature: float = 0.0,
                 send_priority: bool = True):
        self.model = model if "/" in model else f"openai/{model}"
        self.api_base, self.timeout_s, self.temperature = api_base, timeout_s, temperature
        self.send_priority = send_priority
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()

    def summarize(self, messages, *, max_tokens, request_id, priority: int | None = None):
        from comem_cli.llm import CallFailed, complete

        if request_id in self._cancelled:
            raise Cancelled(request_id)
        call = dict(model=self.model, api_base=self.api_base, max_tokens=max_tokens, temperature=self.temperature,
                    timeout_s=self.timeout_s, retries=0)
        if priority is not None and self.send_priority:
            try:
                reply = complete(messages, extra_body={"priority": int(priority)}, **call)
            except CallFailed as e:
                if "priority" not in str(e).lower() or type(e).__name__ != "CallFailed":
                    raise
                self.send_priority = False  # the server does not schedule by priority: plain requests from now on
                reply = complete(messages, **call)
        else:
            reply = complete(messages, **call)
        if request_id in self._cancelled:  # the answer came too late to be wanted
            raise Cancelled(request_id)
        return reply.content

    def cancel(self, request_id):
        with self._lock:
            self._cancelled.add(request_id)

    def close(self):
        pass
