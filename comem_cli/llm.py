"""One way to call an LLM: a litellm chat completion with retries, backoff, a per-call timeout
bounded by a deadline, cost, and errors mapped to three exceptions.

Used by the main model (models.py), the OpenAI-compatible memory backend and the training policy.
litellm is imported on first use (it takes seconds), with the bundled price map so that nothing
is fetched at import time; prices of unknown models count as zero.

- `CallFailed`: the provider refused or failed (HTTP 4xx/5xx after the retries, connection,
  garbage); `str()` is one line with the provider's message, shortened.
- `CallOverflow(CallFailed)`: the prompt is longer than the model's context.
- `CallDeadline(CallFailed)`: the caller's deadline passed before an answer came.
- `CallTimeout(CallFailed)`: every try timed out (the memory pipeline stops using such a model).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Any

from comem_cli.caching import cached_tokens as usage_cached_tokens

# litellm's exception classes, by name; only those the installed litellm has are used.
TRANSIENT = ("RateLimitError", "APIConnectionError", "Timeout", "InternalServerError", "ServiceUnavailableError")
FATAL = ("AuthenticationError", "PermissionDeniedError", "NotFoundError", "BadRequestError",
         "UnprocessableEntityError", "APIResponseValidationError", "UnsupportedParamsError", "APIError",
         "OpenAIError")
MIN_CALL_S = 1.0  # a call is never given less than this (a deadline closer than that ends the wait)


class CallFailed(Exception):
    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class CallOverflow(CallFailed):
    pass


class CallDeadline(CallFailed):
    pass


class CallTimeout(CallFailed):
    """The provider did not answer within the call's timeout (after the retries)."""


def import_litellm():
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    import litellm

    litellm.suppress_debug_info = True
    litellm.drop_params = True  # providers that reject e.g. temperature still work
    return litellm


def exception_types(litellm, names: tuple[str, ...]) -> tuple[type, ...]:
    """The classes of `names` that this litellm defines (a missing name must never crash a run)."""
    return tuple(t for t in (getattr(litellm, n, None) for n in names) if isinstance(t, type))


def short(err: BaseException, limit: int = 200) -> str:
    """The provider's message on one line, without litellm's prefixes and stack noise."""
    text = " ".join(str(getattr(err, "message", None) or err).split())
    text = text.replace("litellm.", "")
    text = re.sub(r"^(?:\w+(?:Error|Exception)\s*(?::|-)\s*)+", "", text)  # "NotFoundError: OpenAIException - "...
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_overflow(err: BaseException) -> bool:
    text = str(err).lower()
    return "context" in text and ("length" in text or "window" in text)


@dataclass
class Completion:
    content: str
    prompt_tokens: int
    completion_tokens: int
    cost: float
    start: float
    end: float
    attempts: int = 1
    cached_tokens: int = 0  # prompt tokens the provider served from its prompt cache


def call_kwargs(model: str, api_base: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"model": model}
    if api_base:
        kwargs["api_base"] = api_base
        # OpenAI-compatible local servers rarely check keys, but the client insists on one.
        if model.startswith(("openai/", "hosted_vllm/")) and not os.environ.get("OPENAI_API_KEY"):
            kwargs["api_key"] = "none"
    return kwargs


def complete(messages: list[dict[str, str]], *, model: str, api_base: str | None = None, max_tokens: int,
             temperature: float = 0.0, timeout_s: float = 600.0, retries: int = 0, backoff_s: float = 1.0,
             deadline: float | None = None, extra_body: dict[str, Any] | None = None) -> Completion:
    """One chat completion (`extra_body`: server-specific fields, e.g. vLLM's min_tokens). Transient errors are retried `retries` times with exponential backoff;
    each try waits at most `timeout_s` and never past `deadline` (a time.time() value)."""
    litellm = import_litellm()
    transient = exception_types(litellm, TRANSIENT)
    fatal = exception_types(litellm, FATAL)
    overflow = exception_types(litellm, ("ContextWindowExceededError",))
    timeouts = exception_types(litellm, ("Timeout",))
    kwargs = {**call_kwargs(model, api_base), "temperature": temperature, "max_tokens": max_tokens,
              "num_retries": 0, "max_retries": 0, **({"extra_body": extra_body} if extra_body else {})}
    attempt = 0
    while True:
        timeout = timeout_s
        if deadline is not None:
            left = deadline - time.time()
            if left < MIN_CALL_S:
                raise CallDeadline(f"no time left for a model call ({attempt} tries)")
            timeout = min(timeout, left)
        start = time.time()
        try:
            response = litellm.completion(messages=messages, timeout=timeout, **kwargs)
            break
        except overflow as e:
            raise CallOverflow(short(e)) from None
        except transient as e:
            timed_out = deadline is not None and time.time() >= deadline - 0.5
            if timed_out:
                raise CallDeadline(f"the deadline passed during a model call ({type(e).__name__})") from None
            if attempt >= retries:
                failure = CallTimeout if isinstance(e, timeouts) else CallFailed
                raise failure(f"{type(e).__name__}: {short(e)} (after {attempt + 1} attempts)") from None
            pause = backoff_s * 2**attempt
            if deadline is not None:
                pause = min(pause, max(0.0, deadline - time.time()))
            time.sleep(pause)
            attempt += 1
        except fatal as e:
            if is_overflow(e):
                raise CallOverflow(short(e)) from None
            raise CallFailed(f"{type(e).__name__}: {short(e)}") from None
        except Exception as e:  # the client's own errors (a reply that is not JSON, a closed socket)
            if type(e).__module__.split(".")[0] not in ("litellm", "openai", "httpx", "httpcore", "json", "pydantic"):
                raise
            raise CallFailed(f"{type(e).__name__}: {short(e)}") from None
    end = time.time()
    try:
        content = response.choices[0].message.content or ""
    except (AttributeError, IndexError, TypeError):
        raise CallFailed("the model's reply has no message (malformed response)") from None
    usage = getattr(response, "usage", None)
    try:
        cost = float(litellm.completion_cost(completion_response=response) or 0.0)
    except Exception:
        cost = 0.0  # unknown price: tolerated, counted as free
    return Completion(content=content, prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                      completion_tokens=getattr(usage, "completion_tokens", 0) or 0, cost=cost,
                      start=start, end=end, attempts=attempt + 1, cached_tokens=usage_cached_tokens(usage))
