"""Training samples for the memory model (docs/design.md, section 6), built from recorded trajectories.

For a trajectory step `t` whose action parsed (steps with a format error are never targets) and
each lag `j` in 1..k with `t - j >= 1` (at least one step to summarize):

    history     = steps 0 .. t-j-1   -> what the memory model summarizes
    raw_tail    = steps t-j .. t-1   -> shown verbatim after the summary, as at inference with lag j
    target      = the action of step t

so a trajectory with actions at steps T contributes sum over t in T of min(k, t - 1) samples
(t >= 2). This trains "as we infer": the summary is j steps stale when the policy acts.

`max_history_tokens` caps the memory model's input: the OLDEST history steps are dropped until the
serialized history fits (~4 characters per token; at least one step is kept), and the sample
records `history_capped` and `history_start`. `max_prompt_tokens` bounds the whole prompt
(instruction + task + history; the model's context minus the summary's length) the way the
pipeline fits a request into the memory model's window (`transcript.fit_input`: observations cut,
then the task and the replies, then old steps dropped; `task_cut`, `history_capped`): the sample
keeps that very prompt. One that cannot fit (a bound below the instruction itself) is left out;
`report` counts all three.

`memory_input` is what the memory model reads (the instruction of prompts/memory_instruction.j2
first, then the task, then one THOUGHT / ACTION / OBSERVATION block per step, long observations
cut head + tail: successive samples of one trajectory share a growing prefix). `policy_view` is
what the frozen policy is shown to propose the next action: `views.build_view` with the summary
block and the raw tail as chat turns, the view the agent itself would have sent.
"""

from __future__ import annotations

import functools
import random
import statistics
from collections import Counter
from typing import Callable, Iterable, Sequence

from pydantic import BaseModel

from comem_cli.memory.transcript import (MAX_OBSERVATION_CHARS, cut_observation, fit_input, memory_messages,  # noqa: F401  (re-exported)
                                         step_block, window_count)
from comem_cli.trajectories import Step, Trajectory
from comem_cli.views import build_view, estimate_tokens

_EMPTY = Step(response="", action=None, observation="")


class Sample(BaseModel):
    trajectory_id: str
    task_id: str
    task: str
    system: str
    t: int  # the index of the target step
    lag: int  # j: the summary covers steps 0..t-lag-1
    history: list[Step]  # steps history_start .. t-lag-1 (history_start = 0 unless capped)
    raw_tail: list[Step]  # steps t-lag .. t-1
    target_action: str  # the action actually taken at step t
    later_actions: list[str] = []  # every action from the cut-off to the end of the run (the recall reward's "later")
    history_start: int = 0
    history_capped: bool = False
    history_tokens: int = 0  # estimated tokens of the serialized history
    task_cut: bool = False  # the task was cut head + tail to fit max_prompt_tokens
    resolved: bool | None = None  # whether the trajectory's run resolved its task, when known
    prompt: list[dict[str, str]] | None = None  # the memory model's input fitted to max_prompt_tokens (the pipeline's own)
    observation_chars: int = MAX_OBSERVATION_CHARS  # how much of each observation the prompt shows (head + tail)

    @property
    def cutoff(self) -> int:
        """The summary's cut-off: it covers steps 0..cutoff-1."""
        return self.t - self.lag


def memory_input(sample: Sample, max_observation_chars: int = MAX_OBSERVATION_CHARS) -> list[dict[str, str]]:
    """The messages the memory model is sent for `sample`: exactly what the pipeline sends in a run."""
    if sample.prompt is not None:
        return sample.prompt
    return memory_messages(sample.task, sample.history, first_index=sample.history_start,
                           max_observation_chars=max_observation_chars)


def shown_history(sample: Sample) -> list[Step]:
    """The history steps as the memory model's prompt shows their observations (cut head + tail)."""
    return [s.model_copy(update={"observation": cut_observation(s.observation, sample.observation_chars)})
            for s in sample.history]


def policy_view(sample: Sample, summary: str | None) -> list[dict[str, str]]:
    """The view the policy proposes the next action from: summary block, then the raw tail verbatim.

    With `summary=None` (a no-memory baseline) it is the full view of the steps the sample holds.
    """
    if summary is None:
        return build_view(sample.system, sample.task, [*sample.history, *sample.raw_tail]).messages
    steps = [_EMPTY] * sample.cutoff + list(sample.raw_tail)  # steps before the cut-off are never rendered
    return build_view(sample.system, sample.task, steps, summary=summary, summary_cutoff=sample.cutoff).messages


def valid_pairs(trajectory: Trajectory, k: int) -> list[tuple[int, int]]:
    """The (t, lag) pairs a trajectory yields: t has an action, 1 <= lag <= k, t - lag >= 1."""
    return [(t, j) for t, step in enumerate(trajectory.steps) if step.action is not None
            for j in range(1, k + 1) if t - j >= 1]


def build_samples(
    trajectories: Iterable[Trajectory],
    k: int,
    *,
    max_history_tokens: int | None = None,
    seed: int = 0,
    max_observation_chars: int = MAX_OBSERVATION_CHARS,
    max_per_trajectory: int | None = None,
    max_prompt_tokens: int | None = None,
    count_tokens: Callable[[str], int] = estimate_tokens,
    report: dict[str, int] | None = None,
    progress: Callable[[], None] | None = None,
) -> list[Sample]:
    """Every valid (t, lag) sample, in trajectory / step / lag order.

    `max_per_trajectory` keeps a random subset (drawn with `seed`, order kept) of each trajectory's
    samples, so that very long runs do not dominate. `count_tokens` counts a text's tokens (the
    model's tokenizer when known). `report`, when given, receives the counts of samples whose task
    was cut, whose history was capped, and that were left out as too long. `progress()` is called
    after each trajectory (counting a long run's tokens with a real tokenizer takes seconds).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1 (the summary is at least one step stale), got {k}")
    if max_history_tokens is not None and max_history_tokens < 1:
        raise ValueError(f"max_history_tokens must be positive, got {max_history_tokens}")
    if max_prompt_tokens is not None and max_prompt_tokens < 64:
        raise ValueError(f"max_prompt_tokens must be at least 64, got {max_prompt_tokens}")
    counts = report if report is not None else {}
    for key in ("task_cut", "history_capped", "too_long"):
        counts.setdefault(key, 0)
    rng = random.Random(seed)
    samples: list[Sample] = []
    for trajectory in trajectories:
        samples.extend(_trajectory_samples(trajectory, k, rng, counts, max_history_tokens=max_history_tokens,
                                           max_observation_chars=max_observation_chars,
                                           max_per_trajectory=max_per_trajectory, max_prompt_tokens=max_prompt_tokens,
                                           count_tokens=count_tokens))
        if progress is not None:
            progress()
    return samples


def _trajectory_samples(trajectory: Trajectory, k: int, rng: random.Random, counts: dict[str, int], *,
                        max_history_tokens: int | None, max_observation_chars: int, max_per_trajectory: int | None,
                        max_prompt_tokens: int | None, count_tokens: Callable[[str], int]) -> list[Sample]:
    """The samples of one trajectory (see `build_samples`)."""
    samples: list[Sample] = []
    pairs = valid_pairs(trajectory, k)
    if max_per_trajectory is not None and len(pairs) > max_per_trajectory:
        pairs = sorted(rng.sample(pairs, max_per_trajectory))
    if not pairs:
        return samples
    if max_prompt_tokens is not None:
        return _fitted_samples(trajectory, pairs, counts, max_prompt_tokens, max_history_tokens=max_history_tokens,
                               max_observation_chars=max_observation_chars, count_tokens=count_tokens)
    tokens = [count_tokens(step_block(i, s, max_observation_chars)) + 1 for i, s in enumerate(trajectory.steps)]
    for t, lag in pairs:
        cutoff = t - lag
        start, total = 0, sum(tokens[:cutoff])
        if max_history_tokens is not None:
            while total > max_history_tokens and cutoff - start > 1:
                total -= tokens[start]
                start += 1
        counts["history_capped"] += start > 0
        samples.append(_sample(trajectory, t, lag, start, total))
    return samples


def _sample(trajectory: Trajectory, t: int, lag: int, start: int, tokens: int, task: str | None = None,
            **fields) -> Sample:
    """The sample (t, lag) of `trajectory`, its history from step `start`; `task` as its prompt shows it."""
    cutoff = t - lag
    return Sample(trajectory_id=trajectory.id, task_id=trajectory.task_id or trajectory.id,
                  task=trajectory.task if task is None else task, **fields, system=trajectory.system, t=t, lag=lag, history=trajectory.steps[start:cutoff],
                  raw_tail=trajectory.steps[cutoff:t], target_action=trajectory.steps[t].action,
                  later_actions=[s.action for s in trajectory.steps[cutoff:] if s.action], history_start=start,
                  history_capped=start > 0, history_tokens=tokens, resolved=trajectory.resolved)


def _fitted_samples(trajectory: Trajectory, pairs: list[tuple[int, int]], counts: dict[str, int], max_prompt_tokens: int, *,
                    max_history_tokens: int | None, max_observation_chars: int,
                    count_tokens: Callable[[str], int]) -> list[Sample]:
    """The samples of one trajectory whose prompt is the pipeline's own input fitted to
    `max_prompt_tokens` (`transcript.fit_input`, counted as the pipeline counts against a model
    whose tokenizer it knows: `transcript.window_count`); a prompt that cannot fit (a bound below
    the instruction itself) is left out."""
    count = window_count(max_prompt_tokens, functools.lru_cache(maxsize=256)(count_tokens))
    budget = max_prompt_tokens
    if max_history_tokens is not None:
        budget = min(budget, max_history_tokens + count(memory_messages(trajectory.task, [])))
    samples: list[Sample] = []
    for t, lag in pairs:
        fitted = fit_input(trajectory.task, trajectory.steps[:t - lag], budget, max_observation_chars=max_observation_chars,
                           count=count)
        used = count(fitted.messages)
        if used > max_prompt_tokens:
            counts["too_long"] += 1
            continue
        counts["task_cut"] += fitted.task_cut
        counts["history_capped"] += fitted.first > 0
        samples.append(_sample(trajectory, t, lag, fitted.first, used - count(memory_messages(fitted.task, [])),
                               task=fitted.task, task_cut=fitted.task_cut, prompt=fitted.messages,
                               observation_chars=fitted.observation_chars))
    return samples


def split_by_task(samples: Sequence[Sample], eval_fraction: float = 0.2, seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """(train, eval) with no task in both: whole tasks are drawn for eval (at least one, never all, when 0 < fraction)."""
    if not 0 <= eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    tasks = sorted({s.task_id for s in samples})
    random.Random(seed).shuffle(tasks)
    n_eval = round(eval_fraction * len(tasks))
    if eval_fraction > 0 and len(tasks) >= 2:
        n_eval = min(max(n_eval, 1), len(tasks) - 1)
    held_out = set(tasks[:n_eval])
    return [s for s in samples if s.task_id not in held_out], [s for s in samples if s.task_id in held_out]


def _summary(values: list[int]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "median": 0.0, "p90": 0.0, "max": 0.0}
    ordered = sorted(values)
    return {"mean": round(statistics.fmean(values), 1), "median": float(statistics.median(values)),
            "p90": float(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]), "max": float(ordered[-1])}


def sample_stats(samples: Sequence[Sample]) -> dict:
    """What `train-memory --dry-run` reports about a sample set."""
    from comem_cli.shell import main_command, parse_command_line

    programs: Counter[str] = Counter()
    for s in samples:
        main = main_command(parse_command_line(s.target_action))
        programs[main.program if main else "(none)"] += 1
    return {
        "samples": len(samples),
        "trajectories": len({s.trajectory_id for s in samples}),
        "tasks": len({s.task_id for s in samples}),
        "by_lag": dict(sorted(Counter(s.lag for s in samples).items())),
        "from_resolved_runs": sum(1 for s in samples if s.resolved),
        "history_capped": sum(1 for s in samples if s.history_capped),
        "task_cut": sum(1 for s in samples if s.task_cut),
        "history_steps": _summary([len(s.history) for s in samples]),
        "history_tokens": _summary([s.history_tokens for s in samples]),
        "raw_tail_tokens": _summary([sum(estimate_tokens(x.response) + estimate_tokens(x.observation) for x in s.raw_tail)
                                     for s in samples]),
        "target_programs": dict(programs.most_common(10)),
    }
