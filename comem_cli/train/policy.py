"""The frozen policy of GRPO training (docs/design.md, the reward): it reads the view the agent would see and proposes the next action.

Three kinds, one method `propose(messages) -> str` (the whole reply; the reward takes its ```bash block):

- `LitellmPolicy(model, api_base=None)`: any litellm model name (`openai/<served name>` with
  `api_base` for an OpenAI-compatible server such as `vllm serve`), greedy (temperature 0).
- `LocalPolicy(model_dir)`: a local Hugging Face causal LM, greedy, a short `max_new_tokens`.
- `ProgramPolicy(fn)`: a plain Python function `messages -> reply text` (tests, toy tasks).

`propose_many(views, skip_overflow=False)` answers several views (threads for an endpoint, one by
one otherwise); with `skip_overflow` a view too long for the policy answers None.

Every failure to get an answer (endpoint down, authentication, HTTP errors after the retries, a
model that cannot be loaded) raises `PolicyError` whose `str()` is one line: the trainer stops
cleanly on it. A view longer than the policy's context raises `PolicyContextOverflow` (a
`PolicyError`), which the trainer scores as reward 0 instead of stopping, since it concerns one
sample only. `make_policy(spec, api_base)` picks the kind from a `--policy-model` value.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from comem_cli.devices import cuda_available
from comem_cli.memory.hf import chat_ids

__all__ = [
    "LitellmPolicy",
    "LocalPolicy",
    "Policy",
    "PolicyContextOverflow",
    "PolicyError",
    "ProgramPolicy",
    "make_policy",
]

Messages = list[dict[str, str]]


class PolicyError(Exception):
    """The policy could not answer. `str(err)` is a complete one-line message."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class PolicyContextOverflow(PolicyError):
    """The view does not fit the policy model's context (a property of one sample, not of the endpoint)."""


class Policy(Protocol):
    name: str

    def propose(self, messages: Messages) -> str: ...

    def propose_many(self, views: Sequence[Messages], *, skip_overflow: bool = False) -> list[str | None]: ...


class _Sequential:
    name = "policy"

    def propose(self, messages: Messages) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def propose_many(self, views: Sequence[Messages], *, skip_overflow: bool = False) -> list[str | None]:
        """Replies to `views`, in order; with `skip_overflow` a view that overflows answers None."""
        return [self._one(v, skip_overflow) for v in views]

    def _one(self, messages: Messages, skip_overflow: bool) -> str | None:
        try:
            return self.propose(messages)
        except PolicyContextOverflow:
            if skip_overflow:
                return None
            raise

    def close(self) -> None:
        pass


class ProgramPolicy(_Sequential):
    """A Python function `messages -> reply`. Exceptions other than PolicyError are wrapped in one."""

    def __init__(self, fn: Callable[[Messages], str], name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "program")

    def propose(self, messages: Messages) -> str:
        try:
            reply = self.fn(messages)
        except PolicyError:
            raise
        except Exception as e:
            raise PolicyError(f"policy program {self.name!r} failed: {type(e).__name__}: {e}") from None
        return "" if reply is None else str(reply)


class LitellmPolicy(_Sequential):
    """Any litellm model, greedy. Transient errors (rate limit, 5xx, connection, timeout) are retried
    `retries` times with exponential backoff; the client's own hidden retries are turned off."""

    def __init__(self, model: str, api_base: str | None = None, *, max_tokens: int = 1024, timeout_s: float = 300.0,
                 retries: int = 3, backoff_s: float = 1.0, workers: int = 8, temperature: float = 0.0):
        name = model
        if api_base and "/" not in model:
            name = f"openai/{model}"  # a bare served name behind an OpenAI-compatible server
        self.name, self.api_base = name, api_base
        self.max_tokens, self.timeout_s, self.temperature = max_tokens, timeout_s, temperature
        self.retries, self.backoff_s = max(0, retries), backoff_s
        self.workers = max(1, workers)
        self.calls = 0
        self.cost = 0.0
        self._lock = threading.Lock()

    def propose(self, messages: Messages) -> str:
        from comem_cli.llm import CallFailed, CallOverflow, complete

        try:
            reply = complete(messages, model=self.name, api_base=self.api_base, max_tokens=self.max_tokens,
                             temperature=self.temperature, timeout_s=self.timeout_s, retries=self.retries,
                             backoff_s=self.backoff_s)
        except CallOverflow as e:
            raise PolicyContextOverflow(f"policy model {self.name}: context overflow: {e}") from None
        except CallFailed as e:
            raise PolicyError(f"policy model {self.name} failed: {e}") from None
        with self._lock:
            self.calls += 1
            self.cost += reply.cost
        return reply.content

    def propose_many(self, views: Sequence[Messages], *, skip_overflow: bool = False) -> list[str | None]:
        if len(views) <= 1 or self.workers == 1:
            return super().propose_many(views, skip_overflow=skip_overflow)
        with ThreadPoolExecutor(max_workers=min(self.workers, len(views))) as pool:
            # the first exception is re-raised here
            return list(pool.map(lambda v: self._one(v, skip_overflow), views))


class LocalPolicy(_Sequential):
    """A local Hugging Face causal LM (directory or hub id in the local cache), greedy decoding."""

    def __init__(self, model_dir: str | os.PathLike[str], *, max_new_tokens: int = 256, device: str | None = None,
                 max_input_tokens: int | None = None):
        self.name = str(model_dir)
        self.max_new_tokens = max_new_tokens
        self.max_input_tokens = max_input_tokens
        self._lock = threading.Lock()
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            self.device = device or ("cuda" if cuda_available() else "cpu")
            dtype = torch.bfloat16 if self.device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
            self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
            self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(self.device).eval()
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PolicyError(f"cannot load policy model {self.name}: {first[:200]}") from None
        if not getattr(self.tokenizer, "chat_template", None):
            raise PolicyError(f"policy model {self.name} has no chat template")
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if self.max_input_tokens is None and limit:
            self.max_input_tokens = max(1, int(limit) - max_new_tokens)

    def propose(self, messages: Messages) -> str:
        import torch

        ids = chat_ids(self.tokenizer, messages)
        if self.max_input_tokens is not None and len(ids) > self.max_input_tokens:
            raise PolicyContextOverflow(f"policy model {self.name}: the view has {len(ids)} tokens, "
                                        f"more than {self.max_input_tokens}")
        with self._lock, torch.inference_mode():
            input_ids = torch.tensor([ids], device=self.device)
            out = self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                      max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        return self.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)


def make_policy(spec: str, api_base: str | None = None, **kwargs: Any) -> Policy:
    """`--policy-model` value -> a policy: an existing directory is a local model, anything else a litellm name."""
    if api_base is None and Path(spec).expanduser().is_dir():
        return LocalPolicy(Path(spec).expanduser(), **kwargs)
    return LitellmPolicy(spec, api_base, **kwargs)
