"""`--serving local | endpoint`: the replay in wall-clock time, with real threads and the real
`MemoryContext` (the same Schedule as the simulation, driven by threads).

`local`: real tiny transformers models on this machine (one for the main model, a smaller one for
the memory model), timing real forward passes over the real prompts (tokenized by the tiny model's
own tokenizer, the last `LOCAL_MAX_PROMPT` tokens kept) with the recorded reply length forced
(capped at `LOCAL_MAX_REPLY`); each model serves one request at a time and has no prefix cache.
`endpoint`: see latency/endpoint.py.
"""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from typing import Any, Callable

from comem_cli.config import MemoryConfig
from comem_cli.latency.results import RunStat, StepStat, Variant, summarize_runs
from comem_cli.latency.workload import Replay, Workload, summary_text
from comem_cli.memory.hf import chat_ids
from comem_cli.memory.pipeline import MemoryPool, context_for

LOCAL_MAX_PROMPT = 1024  # tiny-model tokens kept (the end of the prompt) in --serving local
LOCAL_MAX_REPLY = 24  # forced reply tokens per main call in --serving local
LOCAL_MAX_SUMMARY = 48  # forced summary tokens per memory job in --serving local


class LocalModel:
    """A tiny real transformers model serving one request at a time (wall-clock timing)."""

    batches = False  # a summary is then one request (MemoryContext writes sections in parallel only on batching servers)

    def __init__(self, path: Path):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.model_max_length = 10**9  # prompts are cut to LOCAL_MAX_PROMPT below, not by the tokenizer
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.lock = threading.Lock()
        self.generate([{"role": "user", "content": "warm up " * 200}], 4)  # first-call overheads off the clock

    def generate(self, messages: list[dict[str, str]], n_tokens: int) -> None:
        torch = self.torch
        ids = chat_ids(self.tokenizer, messages)[-LOCAL_MAX_PROMPT:]
        import warnings

        with self.lock, torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x = torch.tensor([ids])
            out = self.model(input_ids=x, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            for _ in range(max(n_tokens - 1, 0)):  # forced length: EOS is ignored
                out = self.model(input_ids=token, past_key_values=past, use_cache=True)
                past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)


class _ServedMemory:
    """A memory backend (MemoryContext's interface) that times a real call and returns a placeholder:
    `max_tokens` forced (a section's share, or 1 for the prefill of a sectioned summary), at most
    `summary_tokens`."""

    name = "latency-replay"

    def __init__(self, server, summary_tokens: int, text: Callable[[int, int], str]):
        self.server, self.summary_tokens, self.text = server, summary_tokens, text
        self.parallel = getattr(server, "batches", True)

    def summarize(self, messages, *, max_tokens, request_id):
        tokens = min(max_tokens, self.summary_tokens)
        if self.server is not None:  # None: a memory model that costs nothing (the limit)
            self.server.generate(messages, tokens)
        return self.text(messages[-1]["content"].count("<step index="), tokens)

    def cancel(self, request_id):
        pass  # the call in progress finishes; MemoryContext ignores its result

    def close(self):
        pass


def replay_realtime(replays: list[Replay], v: Variant, concurrency: int, *, main_server, memory_server,
                    workload: Workload, config: MemoryConfig, serving: str, reply_cap: int | None,
                    summary_tokens: int, prewarm_config=None) -> dict[str, Any]:
    from comem_cli.rollouts import Span, StepRecord, ViewInfo

    n_runs = max(len(replays), concurrency)
    order = [replays[i % len(replays)] for i in range(n_runs)]
    counter = itertools.count()
    stats: list[RunStat] = []
    lock = threading.Lock()
    pool = MemoryPool(config.workers, name="latency-memory")

    def one_run(replay: Replay) -> RunStat:
        stat = RunStat(start=time.time())
        steps: list = []
        mconfig = config.model_copy(update={"arm": v.arm, "k": v.k or 0, "every": v.every, "launch_tokens": v.launch_tokens,
                                            "max_summary_tokens": summary_tokens, "prewarm": v.prewarm})
        backend = warm = None
        if v.summarizes:
            backend = _ServedMemory(None if v.free else memory_server, summary_tokens,
                                    lambda c, tokens: summary_text(tokens, c, replay.id))
            if v.prewarm and prewarm_config is not None:  # the pipeline's own pre-warm hook
                from comem_cli.models import LitellmModel

                warm = LitellmModel(prewarm_config).prewarm
        ctx = context_for(mconfig, replay.system, replay.task, backend, pool=pool, prewarm=warm)
        for n, step in enumerate(replay.steps):
            view, events = ctx.prepare(steps)
            wait_s = sum(e["end"] - e["start"] for e in events if e.get("kind") == "wait")
            pieces = workload.view_pieces(view)
            reply = replay.reply_tokens[n] if reply_cap is None else min(replay.reply_tokens[n], reply_cap)
            t0 = time.time()
            main_server.generate(view.messages, reply)
            t1 = time.time()
            if replay.command_s[n] > 0:
                time.sleep(replay.command_s[n])
            t2 = time.time()
            stat.command_s += t2 - t1
            stat.steps.append(StepStat(main_s=t1 - t0, wait_s=wait_s, prompt_tokens=sum(t for _, t in pieces), cached_tokens=None,
                                       command_s=t2 - t1))
            steps.append(StepRecord(step=n, view=ViewInfo(), response=step.response, action=step.action,
                                    observation=step.observation, model=Span(start=t0, end=t1), command=Span(start=t1, end=t2)))
            ctx.completed(steps)
        totals = ctx.close()
        if v.summarizes:
            stat.memory_s = totals.get("memory_s") or 0.0
            stat.hidden_s = (totals.get("hidden_fraction") or 0.0) * stat.memory_s
            stat.waits, stat.wait_s = totals.get("waits", 0), totals.get("wait_s", 0.0)
            stat.masks = totals.get("mask_fallbacks", 0)
            stat.jobs_run = sum(1 for j in totals.get("jobs", []) if j.get("started") is not None and j.get("finished") is not None)
        stat.end = time.time()
        return stat

    def worker():
        while True:
            i = next(counter)
            if i >= n_runs:
                return
            stat = one_run(order[i])
            with lock:
                stats.append(stat)

    started = time.time()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(concurrency, n_runs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pool.close()
    return summarize_runs(v, concurrency, serving, stats, time.time() - started)
