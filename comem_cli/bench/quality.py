"""`comem bench memory`: how much of what the agent needs next a memory model's summaries keep.

Each recorded run is replayed through the comem arm's own `Schedule` (the cut-offs `comem fix`
would launch summaries at, with the same --k / --every / --launch-tokens), the memory model is asked
for each summary exactly as the pipeline asks (`pipeline.write_summary`: the same messages, the
same parallel section requests, the same input fitted to the model's window), and every summary is
scored by `comem_cli.memory.quality` (forward and artifact recall, sections, compression, the
swap-time check, and the recall reward `train-memory --reward recall` trains on). With a judge model, `action_consistency`: the judge acts at the step after the
cut-off once on the full view and once on the summary view, and the training reward
(`comem_cli.reward.action_reward`) compares the two actions.

A summary that failed or came back empty counts 0 in the recall and section means: it kept nothing.
Several memory models, section counts and caps are compared side by side in one run.
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from comem_cli.bench.settings import QualitySettings
from comem_cli.config import MemoryConfig
from comem_cli.errors import UserError
from comem_cli.memory.quality import check, recall_reward, score
from comem_cli.memory.schedule import Schedule, Submit, policy_for
from comem_cli.views import estimate_tokens

PLACEHOLDER = "(summary)"  # what the schedule is told a job returned while the cut-offs are found


def arm_config(settings: QualitySettings, sections: int, cap: int) -> MemoryConfig:
    """The comem arm as `comem fix` would run it with these options (its cut-offs, its cap)."""
    return MemoryConfig(arm="comem", k=settings.k, every=settings.every, launch_tokens=settings.launch_tokens,
                        max_summary_tokens=cap, sections=sections)


def cutoffs(config: MemoryConfig, steps: Sequence[Any]) -> list[int]:
    """The cut-offs the arm's schedule launches summaries at over a recorded run (each summary taken
    as landing at once), those with at least one step after them."""
    schedule = Schedule(policy_for(config))
    found: list[int] = []
    for i, step in enumerate(steps[:-1]):
        schedule.completed(estimate_tokens(step.response), estimate_tokens(step.observation), float(i))
        for command in schedule.drain():
            job = schedule.start(float(i)) if isinstance(command, Submit) else None
            if job is not None:
                found.append(job.cutoff)
                schedule.finish(job, float(i), summary=PLACEHOLDER)
    return found


def spread(values: list[int], n: int | None) -> list[int]:
    """At most `n` of `values`, evenly spread over them (first and last kept)."""
    if n is None or len(values) <= n:
        return values
    if n == 1:
        return [values[len(values) // 2]]
    return [values[round(i * (len(values) - 1) / (n - 1))] for i in range(n)]


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 4) if values else None


class Judge:
    """The action-consistency judge: a main model that acts on two views of the same moment."""

    def __init__(self, model: str, api_base: str | None):
        self.model, self.api_base = model, api_base

    def act(self, messages: list[dict[str, str]]) -> str:
        from comem_cli.llm import complete

        return complete(messages, model=self.model, api_base=self.api_base, max_tokens=1024, retries=2).content

    def consistency(self, trajectory, cutoff: int, summary: str) -> float | None:
        """The training reward of the judge's action on the summary view against its action on the full view."""
        from comem_cli.agent import parse_action
        from comem_cli.errors import FormatError
        from comem_cli.llm import CallFailed
        from comem_cli.reward import action_reward
        from comem_cli.views import build_view

        covered = trajectory.steps[:cutoff]
        try:
            full = parse_action(self.act(build_view(trajectory.system, trajectory.task, covered).messages))
            short = self.act(build_view(trajectory.system, trajectory.task, covered, summary=summary,
                                        summary_cutoff=cutoff).messages)
        except (FormatError, CallFailed):
            return None  # no action to compare with on the full view, or no answer
        return action_reward(short, full)


def load_memory(settings: QualitySettings, model: str | None):
    """The memory backend of one configuration, checked with a one-token request (UserError if it cannot answer)."""
    from comem_cli.llm import short
    from comem_cli.memory.backends import choose_backend, load_backend

    config = MemoryConfig(backend=settings.memory_backend, model=model, api_base=settings.memory_api_base,
                          timeout_s=settings.memory_timeout, context=settings.memory_context)
    if choose_backend(config) == "main":
        raise UserError("comem bench memory needs a memory model: --memory-model DIR or hub id, or openai/<name> with "
                        "--memory-api-base, or --memory-backend transformers (SmolLM2 on this CPU)")
    backend = load_backend(config)
    try:
        backend.summarize([{"role": "user", "content": "Say OK."}], max_tokens=1, request_id="comem-preflight")
    except Exception as e:  # noqa: BLE001 - any failure here is the user's endpoint or model
        backend.close()
        raise UserError(f"memory model {model or '(default)'!r} does not answer: {short(e, 160)}") from None
    return backend


def was_cut(backend, ids: list[str]) -> bool:
    """Whether the summary's requests (not a 1-token prefill) stopped at their token cap, where the
    backend records it (transformers, vLLM); False where it does not."""
    usage = getattr(backend, "usage", None)
    try:
        return any((usage(rid) or {}).get("finish_reason") == "length" for rid in (ids[1:] if len(ids) > 1 else ids))
    except TypeError:  # a backend whose usage() is its totals (openai)
        return False


def measure(settings: QualitySettings, trajectories: list, *, progress=None) -> list[dict[str, Any]]:
    """One row per configuration (memory model x sections x cap) over every trajectory's cut-offs."""
    from comem_cli.memory.pipeline import request_ids, write_summary
    from comem_cli.memory.transcript import section_groups, summary_input

    judge = Judge(settings.judge_model, settings.judge_api_base) if settings.judge_model else None
    rows = []
    for model in settings.memory_models:
        backend = load_memory(settings, model)
        try:
            for sections, cap in itertools.product(settings.sections, settings.max_summary_tokens):
                config = arm_config(settings, sections, cap)
                groups = section_groups(sections if getattr(backend, "parallel", False) else 1)
                scores: dict[str, list[float]] = {k: [] for k in ("forward", "artifact", "sections", "repeated",
                                                                   "compression", "seconds", "consistency", "reward")}
                failures: Counter[str] = Counter()
                verdicts: Counter[str] = Counter()
                done = not_shorter = 0
                for trajectory in trajectories:
                    steps = trajectory.steps
                    for n, cutoff in enumerate(spread(cutoffs(config, steps), settings.max_summaries)):
                        covered, later = steps[:cutoff], steps[cutoff:]
                        messages = summary_input(trajectory.task, covered, max_observation_chars=config.max_observation_chars,
                                                 context=getattr(backend, "context", None), max_summary_tokens=cap,
                                                 count_tokens=getattr(backend, "count_tokens", None))
                        start, ids, cut = time.time(), request_ids(f"{trajectory.id}-{n}", len(groups)), False
                        try:
                            text = write_summary(backend, messages, groups, cap, ids)
                            if not text.strip():
                                raise ValueError("empty summary")
                        except Exception as e:  # noqa: BLE001 - a failed summary kept nothing
                            failures[f"{type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}"] += 1
                            quality = None
                        else:
                            done += 1
                            scores["seconds"].append(time.time() - start)
                            quality, cut = score(text, covered, later), was_cut(backend, ids)
                            scores["compression"].append(quality.compression)
                            not_shorter += quality.compression >= 1
                            scores["repeated"].append(quality.repeated_lines)
                            verdict = check(text, covered, later[:max(1, settings.k)], max_summary_tokens=cap).verdict
                            verdicts[verdict] += 1
                            if judge is not None and (c := judge.consistency(trajectory, cutoff, text)) is not None:
                                scores["consistency"].append(c)
                        kept = quality or score("", covered, later)  # a failed summary kept nothing
                        if kept.forward_recall is not None:
                            scores["forward"].append(kept.forward_recall)
                        if kept.artifact_recall is not None:
                            scores["artifact"].append(kept.artifact_recall)
                        scores["sections"].append(kept.sections_complete)
                        if (value := recall_reward(kept, cut=cut)) is not None:
                            scores["reward"].append(value)
                        if progress is not None:
                            progress()
                asked = done + sum(failures.values())
                rows.append({
                    "memory_model": model or Path(str(getattr(backend, "model_name", "default"))).name,
                    "memory_backend": getattr(backend, "name", settings.memory_backend),
                    "sections": len(groups),  # what was sent: a backend that does not batch gets one request
                    "max_summary_tokens": cap, "k": settings.k, "every": settings.every,
                    "launch_tokens": config.launch_tokens, "trajectories": len(trajectories),
                    "summaries": asked, "failed": sum(failures.values()),
                    "failures": dict(failures.most_common(5)),
                    "forward_recall": _mean(scores["forward"]), "artifact_recall": _mean(scores["artifact"]),
                    "sections_complete": _mean(scores["sections"]), "recall_reward": _mean(scores["reward"]),
                    "repeated_lines": _mean(scores["repeated"]),
                    "compression": _mean(scores["compression"]), "not_shorter": not_shorter,
                    "check_passed": round(verdicts["passed"] / asked, 4) if asked else None,
                    "checks": {v: verdicts[v] for v in ("passed", "patched", "rejected")},
                    "summary_s": _mean(scores["seconds"]),
                    "action_consistency": _mean(scores["consistency"]) if judge is not None else None,
                })
        finally:
            backend.close()
    return rows


def total_summaries(settings: QualitySettings, trajectories: list) -> int:
    per_config = 0
    for cap in settings.max_summary_tokens:
        config = arm_config(settings, 1, cap)
        per_config += sum(len(spread(cutoffs(config, t.steps), settings.max_summaries)) for t in trajectories)
    return per_config * len(settings.sections) * len(settings.memory_models)


def _cell(value, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def show(rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    from comem_cli.ui import console, plain

    table = Table(title="comem bench memory: what the summaries keep", title_justify="left",
                  caption="recall: the share of later-used facts (forward) and of written files (artifact) a summary names; "
                          "reward: train-memory's recall reward; "
                          "compression: summary / covered tokens (how many >= 1); check: used as it is at swap time",
                  caption_justify="left")
    table.add_column("memory model", no_wrap=True, overflow="fold")
    for name in ("sections", "cap", "summaries", "failed", "forward", "artifact", "headings", "reward", "compression",
                 "check", "s each", "consistency"):
        table.add_column(name, justify="right", no_wrap=True)
    for r in rows:
        table.add_row(plain(r["memory_model"]), str(r["sections"]), str(r["max_summary_tokens"]), str(r["summaries"]),
                      str(r["failed"]), _cell(r["forward_recall"]), _cell(r["artifact_recall"]),
                      _cell(r["sections_complete"]), _cell(r.get("recall_reward")), _cell(r["compression"]) + (f" ({r['not_shorter']})" if r["not_shorter"] else ""),
                      _cell(r["check_passed"], "{:.0%}"), _cell(r["summary_s"], "{:.1f}"), _cell(r["action_consistency"]))
    console.print(table)
    for r in rows:
        for reason, count in r["failures"].items():
            console.print(f"[yellow]{plain(r['memory_model'])}[/yellow] sections {r['sections']}, max {r['max_summary_tokens']}: "
                          f"{count} failed: {plain(reason)}", markup=True, highlight=False)


def quality_command(settings: QualitySettings) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from comem_cli.resources import default_trajectories
    from comem_cli.trajectories import discover
    from comem_cli.ui import console, err_console, plain

    paths = list(settings.trajectories) or default_trajectories()
    trajectories, skipped = discover(paths)
    skipped += [(Path(t.path), "fewer than two steps") for t in trajectories if len(t.steps) < 2]
    trajectories = [t for t in trajectories if len(t.steps) >= 2]
    if not trajectories:
        why = f" ({plain(str(skipped[0][0]))}: {plain(skipped[0][1])})" if skipped else ""
        raise UserError(f"no trajectories to score in {', '.join(str(p) for p in paths)}{why}")
    for path, reason in skipped:
        err_console.print(f"skipped {plain(str(path))}: {plain(reason)}", style="yellow", markup=False, soft_wrap=True)
    total = total_summaries(settings, trajectories)
    console.print(f"[bold]comem bench memory[/bold]: {len(trajectories)} trajectories, {total} summaries to write "
                  f"(k {settings.k}, {'--max-summaries ' + str(settings.max_summaries) if settings.max_summaries else 'every cut-off'})")
    with Progress(TextColumn("summaries"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
                  TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task("summaries", total=total)
        rows = measure(settings, trajectories, progress=lambda: bar.advance(task))
    show(rows)
    if settings.json_out:
        settings.json_out.parent.mkdir(parents=True, exist_ok=True)
        settings.json_out.write_text(json.dumps(rows, indent=1))
        console.print(f"rows written to {plain(str(settings.json_out))}")
    return 0
