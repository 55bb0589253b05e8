"""The context arms the agent loop calls, and the threaded driver of the summarizing arms.

Every arm implements one interface used by the agent loop:
    prepare(steps) -> (view, events)   before each main-model call
    completed(steps)                   after each step
    close() -> totals                  at the end of the run

`full` sends everything; `mask` elides old observations; `sync`, `paper`, `threshold` and `comem`
summarize. Their rules (when to launch, which summary a view uses, when to wait, when to mask)
are all in `comem_cli.memory.schedule.Schedule`; `MemoryContext` here only drives that schedule
with real threads and a real clock: it runs jobs on the memory pool, blocks when the schedule
says wait, and builds the view the schedule chose. The virtual-time simulation of `comem bench
latency` drives the same Schedule class.

The memory pool is a fixed number of daemon threads shared by all runs of a process (capacity:
`MemoryConfig.workers`). Daemon threads matter: a memory server that never answers must not keep
the process alive after the run has ended (its request is cancelled and abandoned).
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import Counter
from typing import Any, Callable

from comem_cli.config import DEFAULT_MEMORY_WORKERS, MemoryConfig
from comem_cli.llm import CallTimeout
from comem_cli.memory.quality import check
from comem_cli.memory.schedule import Cancel, Job, Prewarm, Schedule, Submit, Use, Wait, policy_for
from comem_cli.memory.transcript import for_sections, looks_like_summary, section_groups, summary_input, summary_requests
from comem_cli.parallel import in_parallel
from comem_cli.views import View, build_view, estimate_tokens

_POOL: "MemoryPool | None" = None
_POOL_LOCK = threading.Lock()
_JOB_IDS = itertools.count()


class MemoryPool:
    """`workers` daemon threads running submitted callables first come, first served."""

    def __init__(self, workers: int = DEFAULT_MEMORY_WORKERS, name: str = "comem-memory"):
        self.workers = workers
        self.tasks: queue.SimpleQueue = queue.SimpleQueue()
        for i in range(workers):
            threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True).start()

    def submit(self, fn: Callable[[], None]) -> None:
        self.tasks.put(fn)

    def close(self) -> None:
        """Let the idle workers end (a worker blocked in a call ends with it, or with the process)."""
        for _ in range(self.workers):
            self.tasks.put(None)

    def _loop(self) -> None:
        while True:
            fn = self.tasks.get()
            if fn is None:
                return
            try:
                fn()
            except Exception:  # pragma: no cover - a driver bug must not kill the worker
                pass


def shared_pool(workers: int = DEFAULT_MEMORY_WORKERS) -> MemoryPool:
    """One memory pool per process, shared by all runs (a bench runs many at once)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = MemoryPool(workers)
        return _POOL


class FullContext:
    """Arm `full`: every step verbatim (the prompt grows linearly with the run)."""

    arm = "full"

    def __init__(self, system: str, task: str):
        self.system, self.task = system, task

    def prepare(self, steps) -> tuple[View, list[dict[str, Any]]]:
        return build_view(self.system, self.task, steps), []

    def completed(self, steps) -> None:
        pass

    def close(self) -> dict[str, Any]:
        return {"arm": self.arm}


class MaskContext(FullContext):
    """Arm `mask`: observations older than `window` steps become a one-line placeholder.

    The cut moves in blocks of `window` steps, so the prompt prefix changes only every `window`
    steps, which keeps prefix caches useful.
    """

    arm = "mask"

    def __init__(self, system: str, task: str, window: int = 5):
        super().__init__(system, task)
        self.window = window

    def prepare(self, steps) -> tuple[View, list[dict[str, Any]]]:
        w = max(self.window, 1)
        mask_before = max(0, (len(steps) - self.window) // w * w) if self.window else len(steps)
        return build_view(self.system, self.task, steps, mask_before=mask_before), []


def context_for(config: MemoryConfig, system: str, task: str, backend=None, *, pool=None,
                prewarm: Callable[[list[dict[str, str]]], dict[str, Any]] | None = None):
    """The context strategy of `config.arm`: FullContext, MaskContext, or a MemoryContext (the
    summarizing arms; they need `backend`). The one place an arm becomes a context (comem fix,
    bench, and the latency replays)."""
    if config.arm == "full":
        return FullContext(system, task)
    if config.arm == "mask":
        return MaskContext(system, task, window=config.mask_window)
    return MemoryContext(config, system, task, backend, pool=pool, prewarm=prewarm)


class MemoryContext:
    """Arms `sync`, `paper`, `threshold` and `comem`: the schedule driven by threads and the wall clock."""

    def __init__(self, config: MemoryConfig, system: str, task: str, backend, *,
                 pool=None, on_wait: Callable[[Job, str], None] | None = None,
                 prewarm: Callable[[list[dict[str, str]]], dict[str, Any]] | None = None,
                 clock: Callable[[], float] = time.time):
        self.config, self.system, self.task, self.backend = config, system, task, backend
        self.schedule = Schedule(policy_for(config), ids=_JOB_IDS)
        self.arm = self.schedule.policy.arm
        self.k, self.every = config.k, config.every
        self.pool = pool or shared_pool(config.workers)
        self.on_wait = on_wait  # observer (progress display, tests)
        self.prewarm = prewarm  # sends the next swapped prompt with max_tokens=1 (prefix-cache warm-up)
        self.clock = clock
        # the requests that write one summary: its sections in parallel where the backend batches them
        self.groups = section_groups(config.sections if getattr(backend, "parallel", False) else 1)
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)  # notified whenever a job ends
        self.steps: list = []
        self.late: list[dict[str, Any]] = []  # events from worker threads (pre-warms)
        self.reported = (0, 0, 0)  # how many waits / events / late events earlier steps already recorded
        self.checks: Counter[str] = Counter()  # swap-time check verdicts (memory/quality.py)

    @property
    def jobs(self) -> list[Job]:
        return self.schedule.jobs

    @property
    def closed(self) -> bool:
        return self.schedule.closed

    # -- the schedule's commands -----------------------------------------------------------------
    def _drain(self) -> list[Job]:
        """Carry out what the schedule asked for (call with the lock held). Returns the jobs whose
        summary to pre-warm the main model with: an HTTP call, made once the lock is released."""
        warm = []
        for command in self.schedule.drain():
            if isinstance(command, Submit):
                self.pool.submit(self._work)
            elif isinstance(command, Cancel):
                for request_id in self._request_ids(command.job):
                    self.backend.cancel(request_id)
            elif isinstance(command, Prewarm) and self.prewarm is not None:
                warm.append(command.job)
        self.changed.notify_all()
        return warm

    def completed(self, steps) -> None:
        with self.lock:
            now = self.clock()
            for step in steps[len(self.steps):]:
                self.schedule.completed(estimate_tokens(step.response), estimate_tokens(step.observation), now)
            self.steps = list(steps)
            self._drain()

    def _work(self) -> None:
        """On a memory worker: run the job the schedule picks for this run, if any."""
        with self.lock:
            job = self.schedule.start(self.clock())
            self._drain()
            if job is None:
                return
            history = self.steps[:job.cutoff]
            best = self.schedule.best()
        earlier = (best.cutoff, best.summary) if best is not None and best.summary else None
        verdict = None
        try:  # the request fits the memory model's window (folded through the newest summary, or cut)
            messages = summary_input(self.task, history, max_observation_chars=self.config.max_observation_chars,
                                     previous=earlier if self.config.incremental else None, fold=earlier,
                                     context=getattr(self.backend, "context", None),
                                     max_summary_tokens=self.config.max_summary_tokens,
                                     count_tokens=getattr(self.backend, "count_tokens", None))
            text = write_summary(self.backend, messages, self.groups, self.config.max_summary_tokens,
                                 self._request_ids(job))
            error = None if looks_like_summary(text) else "garbage summary (too short or not text)"
            timed_out = False
            if error is None and self.config.check:  # against the steps the agent took while it was written
                with self.lock:
                    since = self.steps[job.cutoff:]
                verdict = check(text, history, since, max_summary_tokens=self.config.max_summary_tokens)
                with self.lock:
                    self.late.append(verdict.event(job.id))
                    self.checks[verdict.verdict] += 1
                text = verdict.text
                if text is None:
                    error = f"rejected by the swap-time check: {verdict.reason}"
        except Exception as e:  # a memory failure never ends the run
            text, error = None, f"{type(e).__name__}: {str(e)[:200]}"
            timed_out = isinstance(e, (TimeoutError, CallTimeout))  # the backends' contract (memory/base.py)
        with self.lock:
            self.schedule.finish(job, self.clock(), summary=text, error=error, timed_out=timed_out,
                                 check=verdict and {"verdict": verdict.verdict, "missing": verdict.missing})
            warm = self._drain()
            steps = list(self.steps)
        for done in warm:  # rule 7: the prompt the next call will start with (system, task, summary, raw tail)
            view = build_view(self.system, self.task, steps, summary=done.summary, summary_cutoff=done.cutoff)
            result = self.prewarm(view.messages)
            with self.lock:
                self.late.append({"kind": "prewarm", "job": done.id, **result})

    def _request_ids(self, job: Job) -> list[str]:
        return request_ids(job.id, len(self.groups))

    def restore(self, steps, summaries: list[dict[str, Any]]) -> None:
        """A resumed run (`fix --resume`): the recorded steps and the summaries made before them (their
        job records), as if this context had lived through them; a summary that was due or in flight
        when the run died is launched again."""
        with self.lock:
            now = self.clock()
            jobs = [Job(id=next(self.schedule.ids), cutoff=r["cutoff"], queued=r.get("queued") or now,
                        deadline=r.get("deadline"), started=r.get("started"), finished=r.get("finished"),
                        consumed=r.get("consumed"), status="done", summary=r["summary"]) for r in summaries]
            self.schedule.restore([(estimate_tokens(s.response), estimate_tokens(s.observation)) for s in steps], jobs, now)
            self.steps = list(steps)
            self._drain()

    # -- views -----------------------------------------------------------------------------------
    def prepare(self, steps) -> tuple[View, list[dict[str, Any]]]:
        with self.lock:
            while True:
                decision = self.schedule.plan(self.clock())
                self._drain()
                if isinstance(decision, Use):
                    break
                self._block(decision)
            use: Use = decision
            job = use.job
            view = build_view(self.system, self.task, steps, summary=job.summary if job else None,
                              summary_cutoff=job.cutoff if job else None, mask_before=use.mask_before)
            seen = self.reported
            s = self.schedule
            self.reported = (len(s.waits), len(s.events), len(self.late))
            return view, s.waits[seen[0]:] + s.events[seen[1]:] + self.late[seen[2]:]

    def _block(self, wait: Wait) -> None:
        """Block until the job ends or the wait gives up (lock held; released while waiting)."""
        if self.on_wait:
            self.on_wait(wait.job, wait.reason)
        while wait.job.live and self.clock() < wait.until:
            self.changed.wait(timeout=min(max(wait.until - self.clock(), 0.0), 1.0))
        self.schedule.waited(wait, self.clock())
        self._drain()

    # -- the end ---------------------------------------------------------------------------------
    def close(self) -> dict[str, Any]:
        with self.lock:
            self.schedule.close(self.clock())
            self._drain()
        return self.totals()

    @property
    def waits(self) -> list[dict[str, Any]]:
        return self.schedule.waits

    def bill(self) -> dict[str, Any]:
        """Tokens and dollars the memory model's requests cost, where its backend bills them (`bill()`)."""
        bill = getattr(self.backend, "bill", None)
        return bill() if callable(bill) else {}

    @property
    def cost(self) -> float:
        """Dollars the summaries cost so far (the main model writing them bills them): part of --cost-limit."""
        return float(self.bill().get("memory_cost", 0.0))

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.schedule.events

    def totals(self) -> dict[str, Any]:
        jobs = self.schedule.jobs
        ran = [j for j in jobs if j.started is not None and j.finished is not None]
        memory_s = sum(j.finished - j.started for j in ran)
        busy = [(s.model.start, s.model.end) for s in self.steps] + [(s.command.start, s.command.end) for s in self.steps if s.command]
        hidden = sum(overlap((j.started, j.finished), busy) for j in ran)
        return {
            **self.schedule.totals(), "k": self.k, "every": self.every,
            "memory_backend": getattr(self.backend, "name", None),
            "summary_checks": {v: self.checks[v] for v in ("passed", "patched", "rejected")},
            **self.bill(),
            "memory_s": round(memory_s, 3),
            "hidden_fraction": round(hidden / memory_s, 4) if memory_s > 0 else None,
            "jobs": [j.record() for j in jobs],
            # after the last step's view (e.g. a last pre-warm, a failure while the last command ran)
            "late_events": self.schedule.events[self.reported[1]:] + self.late[self.reported[2]:],
        }


def write_summary(backend, messages: list[dict[str, str]], groups: list[tuple[str, ...]], max_summary_tokens: int,
                  ids: list[str]) -> str:
    """One summary from the memory model, sent as `summary_requests` says (the requests of a wave at
    once). `ids`: the request ids (`request_ids`). `comem bench memory` asks through this very function."""
    ids_left = iter(ids)
    parts: list[str] = []
    for wave in summary_requests(groups, max_summary_tokens):
        asks = [lambda r=r, rid=next(ids_left): backend.summarize(for_sections(messages, r.sections), max_tokens=r.max_tokens,
                                                                  request_id=rid) for r in wave]
        parts = [asks[0]()] if len(asks) == 1 else in_parallel(asks)
    return parts[0] if len(groups) == 1 else "\n\n".join(part.strip() for part in parts)


def request_ids(job_id: int | str, groups: int) -> list[str]:
    """The backend request ids of one summary: one, or the prefill and one per section group."""
    if groups == 1:
        return [f"comem-{job_id}"]
    return [f"comem-{job_id}-prefill"] + [f"comem-{job_id}-{i}" for i in range(groups)]


def overlap(interval: tuple[float, float], spans: list[tuple[float, float]]) -> float:
    """Seconds of `interval` covered by the union of `spans`."""
    a, b = interval
    total, cursor = 0.0, a
    for s, e in sorted(spans):
        s, e = max(s, cursor), min(e, b)
        if e > s:
            total += e - s
            cursor = e
    return total

