"""What every memory backend shares: the interface the pipeline calls, and the pieces the local
backends (transformers, vLLM) use to admit and size a request.

A backend takes OpenAI-style messages and returns the summary text; `cancel` makes a waiting or
running request raise `Cancelled`; `close` frees the model. `parallel` says that it serves
concurrent requests in one batch (a serving engine): the pipeline then writes a summary's sections
as parallel requests (`MemoryConfig.sections`), after one 1-token request that prefills their
shared input (so that a prefix cache computes it once). A request that timed out raises
`TimeoutError` or `comem_cli.llm.CallTimeout` (the pipeline then stops using the memory model in
that run); any other exception is an ordinary failure. `context` is the model's window in tokens:
the model config (transformers), `max_model_len` (vLLM, and an OpenAI-compatible server's
`/v1/models` where it says), else `--memory-context`; every request is fitted into it. The factory that picks and builds a
backend is `comem_cli.memory.backends`.
"""

from __future__ import annotations

from typing import Protocol


class Cancelled(Exception):
    """A summary request that was cancelled before or while it ran."""


def admit(request_id: str, closed: bool, cancelled: dict) -> None:
    """Refuse a request up front when the backend is closed or it was cancelled before it started
    (call with the backend's lock held). Shared by the local backends."""
    if closed:
        raise Cancelled(f"{request_id}: backend closed")
    if request_id in cancelled:
        del cancelled[request_id]
        raise Cancelled(request_id)


def generation_limit(prompt_tokens: int, max_tokens: int, context: int | None) -> int:
    """How many tokens a summary may have: max_tokens, capped by what the context leaves."""
    limit = max(1, int(max_tokens))
    if context:
        room = context - prompt_tokens
        if room <= 0:
            raise ValueError(f"prompt of {prompt_tokens} tokens leaves no room for a summary "
                             f"(the model's context is {context} tokens)")
        limit = min(limit, room)
    return limit


class MemoryBackend(Protocol):
    name: str
    parallel: bool
    context: int | None  # the model's window in tokens (None: unknown); every request is fitted into it

    def summarize(self, messages: list[dict[str, str]], *, max_tokens: int, request_id: str) -> str: ...

    def cancel(self, request_id: str) -> None: ...

    def close(self) -> None: ...
