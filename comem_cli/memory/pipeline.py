"""The context arms, and the asynchronous k-step-off memory pipeline (SPEC section 3).

Every arm implements one interface used by the agent loop:
    prepare(steps) -> (view, events)   before each main-model call
    completed(steps)                   after each step
    close() -> totals                  at the end of the run

`full` sends everything; `mask` elides old observations; `sync` and `comem` summarize. The
summarizing arm is `MemoryContext`, with `k` = how many steps a summary may lag:

1. Launch. After step n-1 completes and n % every == 0, a job summarizing steps 0..n-1
   (cut-off n, deadline n + k) goes to a shared ThreadPoolExecutor. One job per run in flight:
   a newer launch supersedes an older one that has not started; otherwise it queues behind it.
2. Wait. Preparing step n, the newest job whose deadline has arrived is waited for if unfinished
   (the only planned wait). If the raw tail is over `raw_budget` tokens, wait for a newer summary
   (or make one now). Every wait is recorded with its duration and reason.
3. View. System, task, newest finished summary, then the raw tail as chat turns; between two
   swaps the prompt only grows at its end.
4. Failures (errors, timeouts, garbage) never end a run: keep the previous summary and widen the
   raw tail; if that overflows the budget, mask old observations. Each event is recorded.
5. close() cancels what is pending and aborts what runs.

With k = 0 this is the `sync` arm: every launch is waited for at once (the coupled baseline).
"""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from comem_cli.config import MemoryConfig
from comem_cli.memory.transcript import looks_like_summary, memory_messages
from comem_cli.views import View, build_view, estimate_tokens

_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
_JOB_IDS = itertools.count()


def shared_pool(workers: int = 8) -> ThreadPoolExecutor:
    """One memory thread pool per process, shared by all runs (a bench runs many at once)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="comem-memory")
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


@dataclass
class Job:
    """One summary job: steps 0..cutoff-1. Times are wall-clock (time.time())."""

    id: int
    cutoff: int
    deadline: int
    queued: float
    started: float | None = None
    finished: float | None = None
    consumed: float | None = None
    status: str = "queued"  # queued | running | done | failed | timeout | superseded | cancelled
    error: str | None = None
    summary: str | None = field(default=None, repr=False)
    done: threading.Event = field(default_factory=threading.Event, repr=False)
    future: Any = field(default=None, repr=False)
    history: list = field(default_factory=list, repr=False)  # steps 0..cutoff-1, snapshot at launch

    @property
    def live(self) -> bool:
        return self.status in ("queued", "running")

    def record(self) -> dict[str, Any]:
        keep = ("id", "cutoff", "deadline", "queued", "started", "finished", "consumed", "status", "error")
        # The text is kept so that every view can be rebuilt and runs can serve as SFT data.
        return {"kind": "job", **{k: getattr(self, k) for k in keep},
                "summary_tokens": estimate_tokens(self.summary or ""), "summary": self.summary}


class MemoryContext:
    """Arms `sync` (k = 0) and `comem` (k >= 1): the k-step-off pipeline."""

    def __init__(self, config: MemoryConfig, system: str, task: str, backend, *,
                 pool: ThreadPoolExecutor | None = None, on_wait: Callable[[Job, str], None] | None = None,
                 prewarm: Callable[[list[dict[str, str]]], dict[str, Any]] | None = None):
        self.config, self.system, self.task, self.backend = config, system, task, backend
        self.arm = "sync" if config.k == 0 else "comem"
        self.k, self.every = config.k, config.every or max(config.k, 1)
        self.pool = pool or shared_pool()
        self.on_wait = on_wait  # observer (progress display, tests)
        self.prewarm = prewarm  # sends the next swapped prompt with max_tokens=1 (prefix-cache warm-up)
        self.jobs: list[Job] = []
        self.active: Job | None = None  # submitted to the pool (maybe not started yet)
        self.queued: Job | None = None  # waiting for `active` to finish
        self.lock = threading.RLock()
        self.steps: list = []
        self.waits: list[dict[str, Any]] = []
        self.waiting_on: Job | None = None  # the job the agent is blocked on, if any
        self.closed = False
        self.events: list[dict[str, Any]] = []  # consumed jobs, failures and fallbacks
        self.reported = (0, 0)  # how many waits / events earlier steps already recorded

    # -- launching -------------------------------------------------------------------------------
    def completed(self, steps) -> None:
        self.steps = steps
        n = len(steps)
        if n > 0 and n % self.every == 0:
            self.launch(n)

    def launch(self, cutoff: int) -> Job:
        job = Job(id=next(_JOB_IDS), cutoff=cutoff, deadline=cutoff + self.k, queued=time.time(),
                  history=list(self.steps[:cutoff]))
        with self.lock:
            self.jobs.append(job)
            if self.active and self.active.status == "queued" and self.active.future.cancel():
                self._end(self.active, "superseded")
                self.active = None
            if self.active is None:
                self._submit(job)
            else:
                if self.queued:
                    self._end(self.queued, "superseded")
                self.queued = job
        return job

    def _submit(self, job: Job) -> None:
        self.active = job
        job.future = self.pool.submit(self._run, job)

    def _run(self, job: Job) -> None:
        history = job.history
        with self.lock:
            if job.status != "queued":
                return
            job.status, job.started = "running", time.time()
        try:
            previous = self.newest_summary() if self.config.incremental else None
            if previous is not None and previous.cutoff < len(history):
                messages = memory_messages(self.task, history[previous.cutoff:], first_index=previous.cutoff,
                                           previous=previous.summary, max_observation_chars=self.config.max_observation_chars)
            else:
                messages = memory_messages(self.task, history, max_observation_chars=self.config.max_observation_chars)
            text = self.backend.summarize(messages, max_tokens=self.config.max_summary_tokens, request_id=f"comem-{job.id}")
            ok = looks_like_summary(text)
            error = None if ok else "garbage summary (too short or not text)"
        except Exception as e:  # a memory failure never ends the run
            text, ok, error = None, False, f"{type(e).__name__}: {str(e)[:200]}"
        with self.lock:
            if job.status != "running":  # timed out or cancelled meanwhile: the result is not wanted
                return
            job.summary = text if ok else None
            blocked = self.waiting_on is job  # the agent waits for it: its real call comes at once
            self._end(job, "done" if ok else "failed", error)
            steps = list(self.steps)
        if ok and self.prewarm is not None and not blocked and not self.closed:
            # The prompt the next call will start with: system, task, this summary, the raw tail so far.
            view = build_view(self.system, self.task, steps, summary=text, summary_cutoff=job.cutoff)
            result = self.prewarm(view.messages)
            with self.lock:
                self.events.append({"kind": "prewarm", "job": job.id, **result})

    def _end(self, job: Job, status: str, error: str | None = None) -> None:
        """Mark a job terminal and start the queued one, if any (call with the lock held)."""
        job.status, job.error = status, error
        job.finished = job.finished or time.time()
        job.done.set()
        job.history = []  # the snapshot is no longer needed
        if status in ("failed", "timeout"):
            self.events.append({"kind": "memory_failure", "job": job.id, "status": status, "error": error, "at": job.finished})
        if self.active is job:
            self.active = None
            if self.queued is not None:
                nxt, self.queued = self.queued, None
                self._submit(nxt)

    # -- waiting ---------------------------------------------------------------------------------
    def wait(self, job: Job, reason: str, step: int) -> None:
        if self.on_wait:
            self.on_wait(job, reason)
        start = time.time()
        budget = self.config.timeout_s - (start - job.queued)
        with self.lock:
            self.waiting_on = job
        finished = job.done.wait(timeout=max(budget, 0.0))
        self.waiting_on = None
        if not finished:
            with self.lock:
                if job.live:
                    self.backend.cancel(f"comem-{job.id}")
                    self._end(job, "timeout", f"no summary after {self.config.timeout_s:.0f} s")
        self.waits.append({"kind": "wait", "job": job.id, "reason": reason, "step": step, "start": start, "end": time.time()})

    def expire(self) -> None:
        """Give up on a job that has run past the timeout, even if nobody waits for it."""
        now = time.time()
        with self.lock:
            for job in self.jobs:
                if job.live and now - job.queued > self.config.timeout_s:
                    self.backend.cancel(f"comem-{job.id}")
                    self._end(job, "timeout", f"no summary after {self.config.timeout_s:.0f} s")

    # -- views -----------------------------------------------------------------------------------
    def newest_summary(self) -> Job | None:
        done = [j for j in self.jobs if j.status == "done"]
        return max(done, key=lambda j: j.cutoff) if done else None

    def prepare(self, steps) -> tuple[View, list[dict[str, Any]]]:
        n = len(steps)
        self.steps = steps
        self.expire()
        due = [j for j in self.jobs if j.deadline <= n and j.status not in ("superseded",)]
        if due and due[-1].live:  # the newest job whose deadline has arrived
            self.wait(due[-1], "deadline", n)
        best = self.newest_summary()
        if raw_tokens(steps, best.cutoff if best else 0) > self.config.raw_budget:
            newer = [j for j in self.jobs if j.live and j.cutoff > (best.cutoff if best else 0)]
            failing = bool(self.jobs) and self.jobs[-1].status in ("failed", "timeout")
            if newer or not failing:  # do not block on a memory model that just failed
                self.wait(newer[-1] if newer else self.launch(n), "budget", n)
                best = self.newest_summary()
        cutoff = best.cutoff if best else 0
        mask_before = 0
        if raw_tokens(steps, cutoff) > self.config.raw_budget:  # memory failed us: mask instead
            mask_before = n - 1
            self.events.append({"kind": "mask_fallback", "step": n, "at": time.time()})
        if best is not None and best.consumed is None:
            best.consumed = time.time()
            self.events.append(best.record())
        view = build_view(self.system, self.task, steps, summary=best.summary if best else None,
                          summary_cutoff=best.cutoff if best else None, mask_before=mask_before)
        with self.lock:  # events from worker threads (failures) land in the next step's record
            seen_waits, seen_events = self.reported
            self.reported = (len(self.waits), len(self.events))
            return view, self.waits[seen_waits:] + self.events[seen_events:]

    # -- the end ---------------------------------------------------------------------------------
    def close(self) -> dict[str, Any]:
        with self.lock:
            self.closed = True
            for job in self.jobs:
                if job.live:
                    if job.future is not None:
                        job.future.cancel()
                    self.backend.cancel(f"comem-{job.id}")
                    self._end(job, "cancelled")
            self.queued = None
        return self.totals()

    def totals(self) -> dict[str, Any]:
        ran = [j for j in self.jobs if j.started is not None and j.finished is not None]
        memory_s = sum(j.finished - j.started for j in ran)
        busy = [(s.model.start, s.model.end) for s in self.steps] + [(s.command.start, s.command.end) for s in self.steps if s.command]
        hidden = sum(overlap((j.started, j.finished), busy) for j in ran)
        return {
            "arm": self.arm, "k": self.k, "every": self.every,
            "summaries": sum(j.status == "done" for j in self.jobs),
            "memory_jobs": len(self.jobs),
            "memory_failures": sum(j.status in ("failed", "timeout") for j in self.jobs),
            "memory_s": round(memory_s, 3),
            "hidden_fraction": round(hidden / memory_s, 4) if memory_s > 0 else None,
            "waits": len(self.waits),
            "wait_s": round(sum(w["end"] - w["start"] for w in self.waits), 3),
            "mask_fallbacks": sum(e["kind"] == "mask_fallback" for e in self.events),
            "jobs": [j.record() for j in self.jobs],
            "late_events": self.events[self.reported[1]:],  # after the last step's view (e.g. a last pre-warm)
        }


def raw_tokens(steps, start: int) -> int:
    """Tokens of the raw tail steps[start:] (the budget measure; ~4 characters per token)."""
    return sum(estimate_tokens(s.response) + estimate_tokens(s.observation) for s in steps[start:])


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

