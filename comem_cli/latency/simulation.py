"""`--serving model`: the replay in VIRTUAL time (a discrete-event simulation; nothing sleeps).

Two engines of `comem_cli.latency.costmodel`, the main model's and the memory model's (or the main
engine for both, `--memory-engine main`), each batching the requests of all concurrent runs with
prefix caching and KV-cache capacity. The summarizing arms run the very `Schedule` class that
`MemoryContext` runs in real runs (comem_cli/memory/schedule.py); this module is only its driver:
a virtual memory pool of `workers` slots shared by all runs (first come, first served, as the
real `MemoryPool`), requests to the engines (a summary's sections as `MemoryContext` sends them:
one 1-token request that prefills their shared input, then one request per section group), and
blocking where the schedule says wait.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import Any, Callable

from comem_cli.config import MemoryConfig
from comem_cli.latency.costmodel import Clock, CostParams, Engine, Request
from comem_cli.latency.results import RunStat, StepStat, Variant, summarize_runs
from comem_cli.latency.workload import Replay, Workload
from comem_cli.memory.pipeline import context_for, overlap
from comem_cli.memory.schedule import Cancel, Schedule, Submit, Use, policy_for
from comem_cli.memory.transcript import section_groups
from comem_cli.views import build_view, estimate_tokens


class _Proc:
    """A generator-based process on the virtual clock. It yields commands: ('sleep', s),
    ('call', engine, request) or ('job', job, give_up_at)."""

    def __init__(self, clock: Clock, gen, on_exit: Callable[[], None], waiters: dict[int, list]):
        self.clock, self.gen, self.on_exit, self.waiters = clock, gen, on_exit, waiters
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

            self.waiters.setdefault(job.id, []).append(wake)
            self.clock.at(give_up_at, wake)
        else:  # pragma: no cover - a bug
            raise RuntimeError(f"unknown command {cmd!r}")


class VirtualPool:
    """The memory thread pool in virtual time: `workers` slots, tickets served first come, first served
    (as `MemoryPool`)."""

    def __init__(self, workers: int):
        self.free = workers
        self.queue: deque[Callable[[], bool]] = deque()  # a ticket returns True when it occupies the slot

    def submit(self, ticket: Callable[[], bool]) -> None:
        self.queue.append(ticket)
        self._run()

    def release(self) -> None:
        self.free += 1
        self._run()

    def _run(self) -> None:
        while self.free and self.queue:
            ticket = self.queue.popleft()
            self.free -= 1
            if not ticket():
                self.free += 1


def simulate(replays: list[Replay], v: Variant, concurrency: int, *, params: CostParams, workload: Workload,
             config: MemoryConfig, serving: str = "model", memory_engine: str = "separate",
             trace: dict[int, dict[str, list]] | None = None) -> dict[str, Any]:
    """Replay `replays` (cycled to max(len, concurrency) runs) with `concurrency` workers, in virtual time.

    `trace`, if given, receives per run index: "steps" = [(prepare time, summary cut-off, waits as
    [(reason, job cut-off, end time)], prompt tokens, cached tokens, mask_before)], "completed" =
    [time each step ended] and "jobs" = [(cut-off, status, queued, started, finished)].
    """
    clock = Clock()
    main = Engine(params.main, clock, "main")
    memory = main if memory_engine == "main" else Engine(params.memory, clock, "memory")
    pool = VirtualPool(config.workers)
    n_runs = max(len(replays), concurrency)
    order = [replays[i % len(replays)] for i in range(n_runs)]
    next_run = itertools.count()
    stats: list[RunStat] = []
    finished_at = [0.0]
    waiters: dict[int, list] = {}
    ids = itertools.count()

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
            memory.forget(("memory", i))
            start_worker()

        _Proc(clock, run_process(i, order[i], stat), done, waiters)

    def wake(job) -> None:
        for fn in waiters.pop(job.id, []):
            fn()

    def run_process(run_id: int, replay: Replay, stat: RunStat):
        steps = replay.steps
        busy: list[tuple[float, float]] = []
        record = trace.setdefault(run_id, {"steps": [], "jobs": [], "completed": []}) if trace is not None else None
        state = {"completed": 0, "waiting_on": None}
        schedule = None
        if not v.summarizes:  # full, mask: the product's own context (virtual time only drives the summarizing arms)
            ctx = context_for(config.model_copy(update={"arm": v.arm}), replay.system, replay.task)
        else:
            mconfig = config.model_copy(update={"arm": v.arm, "k": v.k or 0, "every": v.every, "launch_tokens": v.launch_tokens,
                                                "memory_engine": memory_engine, "max_summary_tokens": workload.summary_tokens})
            schedule = Schedule(policy_for(mconfig), ids=ids)
            groups = section_groups(mconfig.sections)  # the cost model's engines batch concurrent requests

            def finished(job, now):
                schedule.finish(job, now, summary="")
                drain()
                wake(job)
                # as MemoryContext does: not when the agent is blocked on this job (the real call comes at once)
                if v.prewarm and job.status == "done" and state["waiting_on"] is not job:
                    view = build_view(replay.system, replay.task, steps[:state["completed"]],
                                      summary=workload.summary(replay, job.cutoff), summary_cutoff=job.cutoff)
                    main.submit(Request(run=run_id, pieces=workload.view_pieces(view), output_tokens=1, kind="prewarm"))

            def ticket() -> bool:
                job = schedule.start(clock.now)
                drain()
                if job is None:
                    return False
                if v.free:  # a memory model that costs nothing: the summary is there at once
                    pool.release()
                    finished(job, clock.now)
                    return True

                def done(_request, job=job):
                    pool.release()
                    finished(job, clock.now)

                previous = schedule.best() if mconfig.incremental else None
                prev = previous.cutoff if previous is not None else None
                owner = ("memory", run_id)
                if len(groups) == 1:
                    job.request = [Request(run=owner, pieces=workload.memory_pieces(replay, job.cutoff, prev),
                                           output_tokens=workload.summary_tokens, on_done=done)]
                    memory.submit(job.request[0])
                    return True
                # as MemoryContext: the shared input prefilled by a 1-token request, then every section at once
                left = [len(groups)]

                def section_done(request, job=job):
                    left[0] -= 1
                    if left[0] == 0:
                        done(request)

                def fan_out(_request, job=job):
                    for g in groups:
                        job.request.append(Request(run=owner, pieces=workload.memory_pieces(replay, job.cutoff, prev, g),
                                                   output_tokens=workload.summary_tokens // len(groups), on_done=section_done))
                        memory.submit(job.request[-1])

                job.request = [Request(run=owner, pieces=workload.memory_pieces(replay, job.cutoff, prev, groups[0]),
                                       output_tokens=1, on_done=fan_out)]
                memory.submit(job.request[0])
                return True

            def drain():
                for command in schedule.drain():
                    if isinstance(command, Submit):
                        pool.submit(ticket)
                    elif isinstance(command, Cancel):
                        live = [r for r in command.job.request or [] if r.finished is None and not r.cancelled]
                        for request in live:
                            memory.cancel(request)
                        if live:  # the job held one pool slot
                            pool.release()
                        wake(command.job)

        for n in range(len(steps)):
            done_steps = steps[:n]
            wait_s = 0.0
            t_prepare = clock.now
            waits: list[tuple[str, int, float]] = []
            mask_before = 0
            if schedule is None:
                pieces = workload.cached_view((v.arm, config.mask_window, replay.id, n), lambda: ctx.prepare(done_steps)[0])
                cutoff = None
            else:
                while True:
                    decision = schedule.plan(clock.now)
                    drain()
                    if isinstance(decision, Use):
                        break
                    t0 = clock.now
                    state["waiting_on"] = decision.job
                    if decision.job.live:
                        yield "job", decision.job, decision.until
                    state["waiting_on"] = None
                    schedule.waited(decision, clock.now)
                    drain()
                    waits.append((decision.reason, decision.job.cutoff, clock.now))
                    stat.waits += 1
                    wait_s += clock.now - t0
                cutoff, mask_before = decision.cutoff, decision.mask_before
                stat.masks += bool(mask_before)

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
                record["steps"].append((t_prepare, cutoff, waits, request.prompt_tokens, request.cached_tokens, mask_before))
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
            if schedule is not None:
                schedule.completed(estimate_tokens(steps[n].response), estimate_tokens(steps[n].observation), clock.now)
                drain()
        if schedule is not None:
            schedule.close(clock.now)
            drain()
            ran = [j for j in schedule.jobs if j.started is not None and j.finished is not None]
            stat.memory_s = sum(j.finished - j.started for j in ran)
            stat.hidden_s = sum(overlap((j.started, j.finished), busy) for j in ran)
            stat.jobs_run = len(ran)
            if record is not None:
                record["jobs"] = [(j.cutoff, j.status, j.queued, j.started, j.finished) for j in schedule.jobs]

    for _ in range(min(concurrency, n_runs)):
        start_worker()
    clock.run()
    row = summarize_runs(v, concurrency, serving, stats, finished_at[0])
    row["peak_main_batch"] = main.peak_batch
    row["memory_engine"] = memory_engine
    return row
