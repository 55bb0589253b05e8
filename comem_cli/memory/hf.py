"""The `transformers` memory backend: a Hugging Face causal LM run in this process.

`TransformersBackend` loads a model from a local checkpoint directory, a hub id (offline when it
is in the local cache) or a ``.gguf`` file, on CPU or on a GPU when one is there. It is called
from the memory thread pool: requests wait their turn (first come, first served) and generate one
at a time. ``cancel(request_id)`` takes a waiting request out of the queue at once, and stops a
generating one at its next token (a StoppingCriteria that watches the cancelled set); either way
its ``summarize()`` raises :class:`Cancelled`. Decoding is greedy, and a reply never repeats an
8-token sequence of its own (`memory.repeats`, applied by :class:`NoRepeatInReply`).

Importing this module is instant: torch and transformers are imported when a backend is built.
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["Cancelled", "NoRepeatInReply", "TransformersBackend", "chat_ids", "convert_gguf", "load_model_and_tokenizer"]

_KEEP = 4096  # how many usage records / cancelled ids are remembered


from comem_cli.devices import cuda_available  # noqa: E402
from comem_cli.memory.base import Cancelled, admit, generation_limit  # noqa: E402  (shared by every backend)
from comem_cli.memory.repeats import REPLY_NGRAM, ReplyRepeats  # noqa: E402


# ---------------------------------------------------------------------------- loading


def _torch_dtype(torch: Any, dtype: str | None, device: str) -> Any:
    """"auto": float32 on CPU (bf16 matmuls are slow on most CPUs), bfloat16 (else float16) on
    CUDA. Otherwise a torch dtype name such as "float32", "bfloat16", "float16"."""
    if dtype is None or dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16", "float": "float32"}
    name = aliases.get(dtype, dtype)
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r} (use auto, float32, bfloat16 or float16)")
    return value


def _dtype_kwarg(value: Any) -> dict[str, Any]:
    """transformers >= 4.56 calls it `dtype`, older releases `torch_dtype`."""
    import transformers
    from packaging.version import Version

    key = "dtype" if Version(transformers.__version__.split("+")[0]) >= Version("4.56") else "torch_dtype"
    return {key: value}


def _is_gguf(model: str) -> bool:
    return model.lower().endswith(".gguf")


def load_model_and_tokenizer(
    model: str, *, dtype: Any = None, dequantize_gguf: bool = False
) -> tuple[Any, Any]:
    """(model, tokenizer) for a checkpoint directory, a hub id or a .gguf file path.

    A hub id is looked up in the local cache first (no network), then fetched when the cache
    lacks it. A GGUF file is read with transformers' GGUF loader (needs the `gguf` and
    `accelerate` packages); `dequantize_gguf` unpacks every weight to a plain dense model (needed
    to save it again)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = _dtype_kwarg(dtype) if dtype is not None else {}
    if _is_gguf(model):
        path = Path(model).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no such GGUF file: {path}")
        src, extra = str(path.parent), {"gguf_file": path.name}
        if dequantize_gguf:
            try:
                from transformers import GgufConfig  # transformers >= 5

                extra["quantization_config"] = GgufConfig(dequantize=True)
            except ImportError:  # older releases always dequantize
                pass
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=path.name)
        lm = AutoModelForCausalLM.from_pretrained(src, **extra, **kwargs)
        return lm, tokenizer

    local = Path(model).expanduser()
    if local.exists():
        tokenizer = AutoTokenizer.from_pretrained(str(local))
        lm = AutoModelForCausalLM.from_pretrained(str(local), **kwargs)
        return lm, tokenizer
    try:  # a hub id already in the cache: no network
        tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
        lm = AutoModelForCausalLM.from_pretrained(model, local_files_only=True, **kwargs)
    except OSError:
        tokenizer = AutoTokenizer.from_pretrained(model)
        lm = AutoModelForCausalLM.from_pretrained(model, **kwargs)
    return lm, tokenizer


def chat_ids(tokenizer: Any, messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> list[int]:
    """Token ids of chat messages through the chat template (transformers 5 returns a BatchEncoding).
    The training stages, the GRPO policy and the latency benchmark's local models all tokenize with it."""
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    if hasattr(out, "keys") and "input_ids" in out:
        out = out["input_ids"]
    return list(out)


class NoRepeatInReply:
    """A logits processor for `generate()`: no row's reply repeats an `n`-token sequence of its own
    (`memory.repeats`); the reply is what follows `prompt_len` (the width of the left-padded prompt
    batch), so the prompt may still be copied."""

    def __init__(self, prompt_len: int, n: int = REPLY_NGRAM):
        ReplyRepeats(n)  # checks n
        self.prompt_len, self.n = prompt_len, n
        self._rows: list[ReplyRepeats] = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        replies = input_ids[:, self.prompt_len:].tolist()
        if not self._rows:
            self._rows = [ReplyRepeats(self.n) for _ in replies]
        for i, (reply, repeats) in enumerate(zip(replies, self._rows)):
            banned = repeats.banned(reply)
            if banned:
                scores[i, list(banned)] = float("-inf")
        return scores


def convert_gguf(gguf_path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Dequantize a GGUF checkpoint and save it as a regular transformers directory (float32
    safetensors, tokenizer.json, tokenizer_config.json with the chat template). Not atomic:
    callers write into a temporary directory and rename it (see memory/smollm2.smollm2_dir)."""
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lm, tokenizer = load_model_and_tokenizer(str(gguf_path), dtype=torch.float32, dequantize_gguf=True)
    # The weights are plain tensors now; drop what marks the model as GGUF-quantized, which
    # save_pretrained refuses to serialize.
    if getattr(lm, "hf_quantizer", None) is not None:
        lm.hf_quantizer = None
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    if hasattr(lm, "is_quantized"):
        try:
            lm.is_quantized = False
        except AttributeError:  # a read-only property in some releases
            pass
    lm.config.name_or_path = str(out)
    lm.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    cfg_path = out / "tokenizer_config.json"
    if cfg_path.is_file():  # a tokenizer class and a template that older loaders understand too
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        for key in ("backend", "is_local", "local_files_only"):  # loading details, not settings
            cfg.pop(key, None)
        max_len = getattr(lm.config, "max_position_embeddings", None)
        if isinstance(max_len, int) and cfg.get("model_max_length", 0) > max_len:
            cfg["model_max_length"] = max_len
        template = getattr(tokenizer, "chat_template", None)
        if isinstance(template, str) and "chat_template" not in cfg:
            cfg["chat_template"] = template
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


# ---------------------------------------------------------------------------- the backend


class TransformersBackend:
    """Memory-model backend running a Hugging Face causal LM with transformers.

    Parameters
    ----------
    model:
        A local checkpoint directory, a hub id (offline when cached), or a path to a .gguf file.
    device:
        "cpu", "cuda", "cuda:1", ...; default: CUDA when available, else CPU.
    dtype:
        "auto" (float32 on CPU, bfloat16/float16 on GPU), "float32", "bfloat16", "float16".
    temperature:
        0 means greedy decoding; above 0 samples, seeded with `seed` on every request.
    """

    name = "transformers"
    parallel = False  # one request at a time: a summary is one request

    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        dtype: str = "auto",
        temperature: float = 0.0,
        seed: int = 0,
    ) -> None:
        import torch

        self.model_name = str(model)
        self.device = device or ("cuda" if cuda_available() else "cpu")
        self.temperature = float(temperature)
        self.seed = int(seed)
        self.dtype = _torch_dtype(torch, dtype, self.device)

        lm, tokenizer = load_model_and_tokenizer(self.model_name, dtype=self.dtype)
        self._model = lm.to(self.device).eval()
        self._tokenizer = tokenizer
        self._tok_lock = threading.Lock()  # a fast tokenizer shared by threads can raise "Already borrowed"

        cfg = self._model.config
        self.max_model_len: int | None = getattr(cfg, "max_position_embeddings", None)
        self.context = self.max_model_len  # the window requests are fitted to (memory/base.py)
        self._eos_ids = self._collect_eos_ids()
        pad = tokenizer.pad_token_id
        self._pad_id = pad if pad is not None else (self._eos_ids[0] if self._eos_ids else 0)

        # Scheduling state, all guarded by _cond.
        self._cond = threading.Condition()
        self._queue: collections.deque[object] = collections.deque()  # waiting tickets, FIFO
        self._busy = False
        self._active: str | None = None
        self._active_tokens = 0
        self._closed = False
        self._cancelled: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._usage: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()

    # ------------------------------------------------------------------ public API

    def __enter__(self) -> TransformersBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def active_request(self) -> str | None:
        """The request id generating right now (None when idle)."""
        return self._active

    @property
    def active_tokens(self) -> int:
        """How many tokens the generating request has produced so far (0 when idle)."""
        return self._active_tokens if self._active is not None else 0

    @property
    def waiting(self) -> int:
        """How many requests wait for their turn."""
        with self._cond:
            return len(self._queue)

    def count_tokens(self, text: str) -> int:
        with self._tok_lock:
            return len(self._tokenizer.encode(text, add_special_tokens=False))

    def render(self, messages: list[dict]) -> list[int]:
        """OpenAI-style messages -> prompt token ids, through the tokenizer's chat template, or
        "role: content" lines ending in "assistant:" when the tokenizer has none."""
        with self._tok_lock:
            tok = self._tokenizer
            if getattr(tok, "chat_template", None):
                text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                return list(tok.encode(text, add_special_tokens=False))  # the template holds any BOS
            text = "\n\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\n\nassistant:"
            return list(tok.encode(text, add_special_tokens=True))

    def summarize(self, messages: list[dict], *, max_tokens: int, request_id: str) -> str:
        """Generate the reply to `messages`, at most `max_tokens` new tokens; return the new text
        (special tokens removed). Requests run one at a time, in arrival order.

        Raises Cancelled when `cancel(request_id)` came before it finished (also before this call
        started) or the backend was closed; ValueError when the prompt leaves no room in the
        model's context."""
        with self._cond:
            admit(request_id, self._closed, self._cancelled)
        prompt_ids = self.render(messages)
        limit = generation_limit(len(prompt_ids), max_tokens, self.max_model_len)

        queued_at = time.time()
        self._wait_for_turn(request_id)
        started_at = time.time()
        try:
            return self._generate(prompt_ids, limit, request_id, queued_at, started_at)
        finally:
            with self._cond:
                self._busy = False
                self._active = None
                self._cancelled.pop(request_id, None)
                self._cond.notify_all()

    def usage(self, request_id: str) -> dict[str, Any] | None:
        """Counts and times of a finished (or stopped) request: prompt_tokens, completion_tokens,
        finish_reason ("stop", "length", "abort"), queued_at / started_at / finished_at (Unix
        times). None when unknown; the newest 4096 requests are kept."""
        with self._cond:
            u = self._usage.get(request_id)
            return dict(u) if u is not None else None

    def cancel(self, request_id: str) -> None:
        """Cancel `request_id`: if it waits its turn it leaves now, if it generates it stops at
        the next token, if it has not been submitted yet it will not run. Its summarize() raises
        Cancelled."""
        with self._cond:
            self._cancelled[request_id] = None
            self._cancelled.move_to_end(request_id)
            while len(self._cancelled) > _KEEP:
                self._cancelled.popitem(last=False)
            self._cond.notify_all()

    def close(self) -> None:
        """Stop the generating request and every waiting one (they raise Cancelled), then free
        the model. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
            deadline = time.monotonic() + 60
            while self._busy and time.monotonic() < deadline:
                self._cond.wait(timeout=0.5)
            model, self._model = self._model, None
        del model
        if self.device.startswith("cuda"):
            try:
                import torch

                torch.cuda.empty_cache()
            except Exception:  # pragma: no cover
                pass

    # ------------------------------------------------------------------ internals

    def _collect_eos_ids(self) -> list[int]:
        ids: list[int] = []
        for source in (getattr(self._model, "generation_config", None), self._model.config):
            value = getattr(source, "eos_token_id", None) if source is not None else None
            for v in (value if isinstance(value, (list, tuple)) else [value]):
                if isinstance(v, int) and v not in ids:
                    ids.append(v)
        tok_eos = self._tokenizer.eos_token_id
        if isinstance(tok_eos, int) and tok_eos not in ids:
            ids.append(tok_eos)
        return ids

    def _must_stop(self, request_id: str) -> bool:
        # Plain reads of a dict / bool: safe without the lock in CPython.
        return self._closed or request_id in self._cancelled

    def _wait_for_turn(self, request_id: str) -> None:
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            try:
                while True:
                    if self._closed:
                        raise Cancelled(f"{request_id}: backend closed")
                    if request_id in self._cancelled:
                        raise Cancelled(request_id)
                    if not self._busy and self._queue[0] is ticket:
                        break
                    self._cond.wait()
            except BaseException:
                self._queue.remove(ticket)
                self._cancelled.pop(request_id, None)
                self._cond.notify_all()  # the head of the queue may have changed
                raise
            self._queue.popleft()
            self._busy = True
            self._active = request_id
            self._active_tokens = 0

    def _record(self, request_id: str, record: dict[str, Any]) -> None:
        with self._cond:
            self._usage[request_id] = record
            self._usage.move_to_end(request_id)
            while len(self._usage) > _KEEP:
                self._usage.popitem(last=False)

    def _generate(self, prompt_ids: list[int], limit: int, request_id: str,
                  queued_at: float, started_at: float) -> str:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

        backend = self

        class StopWhenCancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                backend._active_tokens = input_ids.shape[1] - len(prompt_ids)
                stop = backend._must_stop(request_id)
                return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

        record: dict[str, Any] = {"prompt_tokens": len(prompt_ids), "completion_tokens": 0,
                                  "finish_reason": "abort", "queued_at": queued_at,
                                  "started_at": started_at, "finished_at": None}
        try:
            if self._must_stop(request_id) or self._model is None:
                raise Cancelled(request_id)
            sampling = self.temperature > 0
            gen_config = GenerationConfig(
                max_new_tokens=limit,
                do_sample=sampling,
                temperature=self.temperature if sampling else None,
                top_k=0 if sampling else None,
                top_p=1.0 if sampling else None,
                eos_token_id=self._eos_ids or None,
                pad_token_id=self._pad_id,
            )
            input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
            attention_mask = torch.ones_like(input_ids)
            with torch.inference_mode():
                if sampling:
                    torch.manual_seed(self.seed)
                output = self._model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    generation_config=gen_config,
                    logits_processor=LogitsProcessorList([NoRepeatInReply(len(prompt_ids))]),
                    stopping_criteria=StoppingCriteriaList([StopWhenCancelled()]),
                )
            new_ids = output[0, len(prompt_ids):].tolist()
            record["completion_tokens"] = len(new_ids)
            if self._must_stop(request_id):
                raise Cancelled(request_id)
            record["finish_reason"] = "stop" if new_ids and new_ids[-1] in self._eos_ids else "length"
            with self._tok_lock:
                return self._tokenizer.decode(new_ids, skip_special_tokens=True)
        finally:
            record["finished_at"] = time.time()
            self._record(request_id, record)
