"""The k-step-off schedule of one run: every rule of the summarizing arms, in one I/O-free class.

No threads, no sleeping, no clock of its own: the caller passes `now` to every method. Two drivers
run this very class: the threaded `MemoryContext` (memory/pipeline.py, real runs) and the
virtual-time simulation of `comem bench latency` (latency/simulation.py).

The life of a run, as the driver tells it:

    completed(response_tokens, observation_tokens, now)  after each step ends
    plan(now) -> Wait | Use                             before each main-model call; on Wait the
    waited(wait, now)                                   driver blocks until the job ends or
                                                        `wait.until`, reports it, and plans again
    start(now) -> Job | None                            a memory worker is free for this run
    finish(job, now, summary=... | error=...)           the memory model answered
    expire(now), close(now)                             give up on old jobs; end of run
    drain() -> [Submit() | Cancel(job) | Prewarm(job)]  what the driver must do now

The rules, in the order `plan` applies them:

1. Launch. After step n-1 ends, a job summarizing steps 0..n-1 (cut-off n) is launched when the
   period says so (n % every == 0) or, with `launch_tokens`, when the steps not yet covered by any
   launch hold that many tokens (`threshold`: when the raw tail reaches 80% of the budget). At most
   one job per run runs; launches behind it wait as `queued`, and when a memory worker becomes
   free the newest queued launch runs and older queued ones are `superseded` (they would be stale).
   When the memory model is served by the main engine itself (`memory_engine="main"`, comem only),
   a token-triggered launch must also pay off there (`_pays_off`): the decode work it spares the
   agent's next calls (mean reply tokens x tokens it removes from the view x steps ahead, taken as
   the steps so far) must be PAYOFF_MARGIN times the decode work of writing it (summary tokens x
   its context); the margin covers what the estimate leaves out (the summary's prefill, and the
   prefix-cache break of each swap, after which the raw tail is prefilled again).
2. Deadline waits (`sync`: k = 0, `paper`: k = 1 only). Preparing step n, the newest job with
   cut-off + k <= n that is still unfinished is waited for.
3. Budget. If the raw tail after the newest finished summary is over `wait_tokens`
   (`raw_budget`; 95% of it for `threshold`), a newer live job, or one launched now, is waited
   for when the arm blocks; `comem` waits only if that job is already `k` steps stale and it is
   expected to land within about one agent step (measured; with no summary measured yet, only if
   it is younger than one agent step), and masks otherwise.
4. Never wait on a failing memory model: after an error or garbage the next over-budget step
   masks; after a timeout the memory model is not used again in this run (no waits, no launches).
5. Mask fallback. If the tail is still over the budget, the oldest raw observations are elided
   (placeholders) until it fits within 75% of the budget. The cut only moves forward (in jumps,
   thanks to that headroom) until the next summary swap: between two moves or swaps the prompt
   only grows at its end. Every over-budget step is recorded as a mask fallback.
6. View. The newest finished summary and the raw tail after its cut-off: every step is in the view.
7. Pre-warm (`prewarm`). When a summary is done, the prompt the next call will start with (system,
   task, this summary, the raw tail so far) is sent to the main model with max_tokens=1, so that a
   prefix-caching server has it cached by then; not when the agent is already waiting for this
   summary (its real call comes at once), nor after the run ended.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from comem_cli.config import PAPER_EVERY, PAPER_K, THRESHOLD_BLOCK, THRESHOLD_START, MemoryConfig
from comem_cli.views import MASK_PLACEHOLDER, estimate_tokens

MASK_HEADROOM = 0.75  # a mask fallback elides observations until the tail fits in this share of the budget
PAYOFF_MARGIN = 2.0  # memory on the main engine: a launch spares this many times its decode work (measured)
LIVE = ("queued", "running")


@dataclass(frozen=True)
class Policy:
    """What distinguishes the summarizing arms; built from a MemoryConfig by `policy_for`."""

    arm: str
    every: int | None  # launch after step n when n % every == 0 (None: no periodic launches)
    launch_tokens: int | None  # launch when this many raw tokens are not covered by any launch
    launch_from: Literal["launch", "summary"]  # measure those tokens from the newest launch or summary
    deadline: int | None  # wait for a job at step cut-off + deadline (None: never on a deadline)
    wait_tokens: int  # over this many raw-tail tokens, a summary is worth waiting for
    budget: int  # raw_budget: over it and not waiting, mask
    stale: int  # a budget wait only on a job at least this many steps old (comem's k)
    blocking: bool  # budget waits whatever the memory model's measured speed (sync, paper, threshold)
    timeout_s: float
    shared: bool = False  # the memory model is served by the main engine: launches must pay off there
    summary_tokens: int = 2048
    observation_cap: int = 500  # tokens of an observation the memory model sees (max_observation_chars / 4)
    prewarm: bool = False  # rule 7


def policy_for(config: MemoryConfig) -> Policy:
    arm, budget = config.arm, config.raw_budget
    if arm == "comem" and config.k == 0:
        arm = "sync"
    common = dict(budget=budget, timeout_s=config.timeout_s, launch_from="launch", prewarm=config.prewarm)
    if arm == "sync":
        return Policy(arm="sync", every=config.every or 1, launch_tokens=None, deadline=0, wait_tokens=budget, stale=0,
                      blocking=True, **common)
    if arm == "paper":
        return Policy(arm="paper", every=PAPER_EVERY, launch_tokens=None, deadline=PAPER_K, wait_tokens=budget, stale=0,
                      blocking=True, **common)
    if arm == "threshold":
        return Policy(arm="threshold", every=None, launch_tokens=int(THRESHOLD_START * budget), deadline=None,
                      wait_tokens=int(THRESHOLD_BLOCK * budget), stale=0, blocking=True,
                      **{**common, "launch_from": "summary"})
    if arm == "comem":
        return Policy(arm="comem", every=config.every, launch_tokens=config.launch_tokens or None, deadline=None,
                      wait_tokens=budget, stale=config.k, blocking=False, shared=config.memory_engine == "main",
                      summary_tokens=config.max_summary_tokens, observation_cap=config.max_observation_chars // 4,
                      **common)
    raise ValueError(f"arm {arm!r} does not summarize")


@dataclass(eq=False)
class Job:
    """One summary job: steps 0..cutoff-1. Times are the driver's clock."""

    id: int
    cutoff: int
    queued: float
    deadline: int | None = None
    started: float | None = None
    finished: float | None = None
    consumed: float | None = None
    status: str = "queued"  # queued | running | done | failed | timeout | superseded | cancelled
    error: str | None = None
    summary: str | None = field(default=None, repr=False)
    check: dict[str, Any] | None = field(default=None, repr=False)  # the swap-time check's verdict, if any
    request: Any = field(default=None, repr=False)  # the driver's handle (the simulated requests)

    @property
    def live(self) -> bool:
        return self.status in LIVE

    def record(self) -> dict[str, Any]:
        keep = ("id", "cutoff", "deadline", "queued", "started", "finished", "consumed", "status", "error", "check")
        return {"kind": "job", **{k: getattr(self, k) for k in keep},
                "summary_tokens": estimate_tokens(self.summary or ""), "summary": self.summary}


@dataclass(frozen=True)
class Wait:
    job: Job
    reason: str  # deadline | budget
    step: int
    start: float
    until: float  # give up (time the job out) at this time


@dataclass(frozen=True)
class Use:
    """The view for the next call: the summary (or None) and the observations masked before `mask_before`."""

    job: Job | None
    mask_before: int

    @property
    def cutoff(self) -> int | None:
        return self.job.cutoff if self.job is not None else None


@dataclass(frozen=True)
class Submit:
    """Hand this run a memory worker: when one is free, call `start` (pools serve first come, first served)."""


@dataclass(frozen=True)
class Cancel:
    job: Job


@dataclass(frozen=True)
class Prewarm:
    """Send the prompt the next call will start with, `job`'s summary swapped in, with max_tokens=1 (rule 7)."""

    job: Job


Command = Union[Submit, Cancel, Prewarm]


class Schedule:
    """The summarizing arms' rules for one run (see the module docstring)."""

    def __init__(self, policy: Policy, ids: itertools.count | None = None):
        self.policy = policy
        self.ids = ids or itertools.count()
        self.jobs: list[Job] = []
        self.response_tokens: list[int] = []
        self.observation_tokens: list[int] = []
        self.step_ended: list[float] = []
        self.ticket = False  # a Submit is out and not yet started
        self.unresponsive = False  # a job timed out: the memory model is not used again in this run
        self.mask_before = 0
        self.mask_cutoff: int | None = None  # the summary cut-off the mask was computed for
        self.waits: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.outbox: list[Command] = []
        self._waited: set[int] = set()  # jobs waited for while preparing the current step
        self.waiting_on: Job | None = None  # the job the driver blocks on (between plan's Wait and waited)
        self.closed = False

    # -- facts -----------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return len(self.response_tokens)

    def best(self) -> Job | None:
        """The newest finished summary."""
        done = [j for j in self.jobs if j.status == "done"]
        return max(done, key=lambda j: j.cutoff) if done else None

    def running(self) -> Job | None:
        return next((j for j in self.jobs if j.status == "running"), None)

    def raw_tokens(self, start: int, mask_before: int = 0) -> int:
        """Tokens of the raw tail from step `start`, observations before `mask_before` elided."""
        total = 0
        for i in range(start, self.n):
            total += self.response_tokens[i]
            total += MASK_TOKENS if i < mask_before else self.observation_tokens[i]
        return total

    def covered(self) -> int:
        """Steps covered by the newest launch (or by the newest summary, for `launch_from='summary'`)."""
        wanted = ("queued", "running", "done", "failed")  # after a failure, the next launch waits for new tokens
        if self.policy.launch_from == "summary":
            wanted = ("running", "done")
        return max((j.cutoff for j in self.jobs if j.status in wanted), default=0)

    def agent_step_s(self) -> float | None:
        """Mean time between two step ends (agent step: main call + command + any wait)."""
        t = self.step_ended
        return (t[-1] - t[0]) / (len(t) - 1) if len(t) >= 2 else None

    def memory_job_s(self) -> float | None:
        """Mean time from launch to summary of the finished jobs."""
        spans = [j.finished - j.queued for j in self.jobs if j.status == "done"]
        return sum(spans) / len(spans) if spans else None

    # -- the driver's calls ----------------------------------------------------------------------
    def completed(self, response_tokens: int, observation_tokens: int, now: float) -> None:
        """Step n-1 ended (n = steps so far): launch if the period or the token trigger says so."""
        self.response_tokens.append(response_tokens)
        self.observation_tokens.append(observation_tokens)
        self.step_ended.append(now)
        self._waited.clear()
        self._launch_if_due(now)

    def restore(self, steps: list[tuple[int, int]], summaries: list[Job], now: float) -> None:
        """A resumed run (`fix --resume`): the recorded steps (response, observation tokens) and the
        summaries made before, as if this schedule had lived through them; then the launch rule once
        (a summary that was in flight when the run died is launched again)."""
        for response, observation in steps:
            self.response_tokens.append(response)
            self.observation_tokens.append(observation)
        self.jobs.extend(summaries)
        self._launch_if_due(now)

    def _launch_if_due(self, now: float) -> None:
        if self.closed or self.unresponsive:
            return
        n, p = self.n, self.policy
        due = p.every is not None and n % p.every == 0
        if p.launch_tokens is not None and self.raw_tokens(self.covered()) >= p.launch_tokens:
            due = due or p.launch_from == "launch" or not any(j.live for j in self.jobs)
            due = due and (not p.shared or self._pays_off())
        if due and n > self.covered():
            self.launch(now)

    def launch(self, now: float) -> Job:
        job = Job(id=next(self.ids), cutoff=self.n, queued=now,
                  deadline=None if self.policy.deadline is None else self.n + self.policy.deadline)
        self.jobs.append(job)
        if self.running() is None and not self.ticket:
            self.ticket = True
            self.outbox.append(Submit())
        return job

    def start(self, now: float) -> Job | None:
        """A memory worker is free for this run: the newest queued launch runs, older ones are superseded."""
        self.ticket = False
        queued = [j for j in self.jobs if j.status == "queued"]
        if not queued or self.closed:
            return None
        for old in queued[:-1]:
            self._end(old, "superseded", now)
        job = queued[-1]
        job.status, job.started = "running", now
        return job

    def finish(self, job: Job, now: float, *, summary: str | None = None, error: str | None = None,
               timed_out: bool = False, check: dict[str, Any] | None = None) -> None:
        """The memory model answered: a summary, or an error (garbage counts as an error; a request
        that timed out in the backend counts as a timeout). `check`: what the swap-time check said,
        kept with the job so that the step that uses it can show it."""
        if job.status != "running":  # timed out or cancelled meanwhile: the answer is not wanted
            return
        if timed_out:
            self._timeout(job, now, error)
            return
        job.summary = summary if error is None else None
        job.check = check
        self._end(job, "done" if error is None else "failed", now, error)
        if error is None and self.policy.prewarm and self.waiting_on is not job and not self.closed:
            self.outbox.append(Prewarm(job))

    def expire(self, now: float) -> None:
        """Give up on jobs older than the timeout, even when nobody waits for them."""
        for job in self.jobs:
            if job.live and now - job.queued >= self.policy.timeout_s:
                self._timeout(job, now)

    def plan(self, now: float) -> Wait | Use:
        """Preparing step n: a wait (the driver blocks, calls `waited`, then `plan` again) or the view."""
        self.expire(now)
        n, p = self.n, self.policy
        if p.deadline is not None:
            due = [j for j in self.jobs if j.deadline is not None and j.deadline <= n and j.status != "superseded"]
            if due and due[-1].live and due[-1].id not in self._waited:
                return self._wait(due[-1], "deadline", now)
        best = self.best()
        start = best.cutoff if best else 0
        if self.raw_tokens(start) > p.wait_tokens and not self.unresponsive and not self._failing():
            newer = [j for j in self.jobs if j.live and j.cutoff > start]
            job = newer[-1] if newer else (self.launch(now) if n > start else None)
            if job is not None and job.id not in self._waited and self._worth_waiting(job, now):
                return self._wait(job, "budget", now)
        return self._use(best, now)

    def waited(self, wait: Wait, now: float) -> None:
        """The driver's wait ended (the job finished, or `wait.until` passed: then it times out)."""
        self.waiting_on = None
        if wait.job.live:
            self._timeout(wait.job, now)
        self.waits.append({"kind": "wait", "job": wait.job.id, "reason": wait.reason, "step": wait.step,
                           "start": wait.start, "end": now})

    def close(self, now: float) -> None:
        """The run ended: pending jobs are cancelled, running ones aborted."""
        self.closed = True
        for job in self.jobs:
            if job.live:
                if job.status == "running":
                    self.outbox.append(Cancel(job))
                self._end(job, "cancelled", now)

    def drain(self) -> list[Command]:
        out, self.outbox = self.outbox, []
        return out

    # -- inside ----------------------------------------------------------------------------------
    def _failing(self) -> bool:
        ended = [j for j in self.jobs if not j.live and j.status != "superseded"]
        return bool(ended) and ended[-1].status in ("failed", "timeout")

    def _pays_off(self) -> bool:
        """Rule 1, memory on the main engine: a summary of steps 0..n-1 spares more decode work than it costs."""
        n, summary = self.n, self.policy.summary_tokens
        best = self.best()
        removed = self.raw_tokens(best.cutoff) if best else self.raw_tokens(0) - summary
        reply = sum(self.response_tokens) / n
        context = sum(self.response_tokens) + sum(min(o, self.policy.observation_cap) for o in self.observation_tokens)
        return reply * removed * n > PAYOFF_MARGIN * summary * (context + summary / 2)

    def _worth_waiting(self, job: Job, now: float) -> bool:
        p = self.policy
        if p.blocking:
            return True
        if self.n - job.cutoff < p.stale:  # fresher than the staleness the user accepts: mask meanwhile
            return False
        memory, step, age = self.memory_job_s(), self.agent_step_s(), now - job.queued
        if step is None:
            return True
        if memory is None:  # no summary measured yet: a job older than one agent step is presumed slow
            return age <= step
        return memory - age <= step  # expected to land within about one agent step

    def _wait(self, job: Job, reason: str, now: float) -> Wait:
        self._waited.add(job.id)
        self.waiting_on = job
        return Wait(job=job, reason=reason, step=self.n, start=now, until=job.queued + self.policy.timeout_s)

    def _use(self, best: Job | None, now: float) -> Use:
        start = best.cutoff if best else 0
        if self.mask_cutoff != start:  # a swap: the prompt changes anyway, so the mask restarts
            self.mask_cutoff, self.mask_before = start, 0
        mask = max(self.mask_before, start)
        raw = self.raw_tokens(start)
        if self.raw_tokens(start, mask) > self.policy.budget:
            target = MASK_HEADROOM * self.policy.budget
            while mask < self.n - 1 and self.raw_tokens(start, mask) > target:
                mask += 1
            self.mask_before = mask
        use = Use(job=best, mask_before=self.mask_before if self.mask_before > start else 0)
        if raw > self.policy.budget:  # over the budget: record the fallback (masking what can be masked)
            self.events.append({"kind": "mask_fallback", "step": self.n, "mask_before": use.mask_before,
                                "raw_tokens": raw, "tokens_after_mask": self.raw_tokens(start, use.mask_before), "at": now})
        if best is not None and best.consumed is None:
            best.consumed = now
            self.events.append(best.record())
        return use

    def _timeout(self, job: Job, now: float, error: str | None = None) -> None:
        self.outbox.append(Cancel(job))
        self._end(job, "timeout", now, error or f"no summary after {self.policy.timeout_s:g} s")
        if not self.unresponsive:
            self.unresponsive = True
            self.events.append({"kind": "memory_unresponsive", "job": job.id, "at": now,
                                "note": "the memory model timed out: not used again in this run (masking instead)"})
        for other in self.jobs:
            if other.status == "queued":
                self._end(other, "cancelled", now)

    def _end(self, job: Job, status: str, now: float, error: str | None = None) -> None:
        was_running = job.status == "running"
        job.status, job.error = status, error
        job.finished = job.finished if job.finished is not None else now
        if status in ("failed", "timeout"):
            self.events.append({"kind": "memory_failure", "job": job.id, "status": status, "error": error, "at": now})
        if was_running and not self.closed and any(j.status == "queued" for j in self.jobs) and not self.ticket:
            self.ticket = True
            self.outbox.append(Submit())

    def totals(self) -> dict[str, Any]:
        return {
            "arm": self.policy.arm,
            "summaries": sum(j.status == "done" for j in self.jobs),
            "memory_jobs": len(self.jobs),
            "memory_failures": sum(j.status in ("failed", "timeout") for j in self.jobs),
            "waits": len(self.waits),
            "wait_s": round(sum(w["end"] - w["start"] for w in self.waits), 3),
            "mask_fallbacks": sum(e["kind"] == "mask_fallback" for e in self.events),
            "memory_unresponsive": self.unresponsive,
        }


MASK_TOKENS = estimate_tokens(MASK_PLACEHOLDER.format(step=100))
