"""Views: what the main model is sent at one step, as a pure function of the step log.

The step log is never rewritten. A view is: system prompt, task, the summary block (if any), then
the raw tail as real chat turns (assistant reply, observation) in order. Between two summary swaps
the view only grows at its end, which keeps a serving engine's prefix cache warm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

from comem_cli.templates import render

MASK_PLACEHOLDER = "[observation of step {step} elided to save context; re-run the command if you need it]"


class StepLike(Protocol):
    response: str
    observation: str


@dataclass(frozen=True)
class View:
    messages: list[dict[str, str]]
    summary_cutoff: int | None = None
    raw_start: int = 0
    raw_end: int = 0
    masked: tuple[int, ...] = field(default=())


def build_view(
    system: str,
    task: str,
    steps: Sequence[StepLike],
    *,
    summary: str | None = None,
    summary_cutoff: int | None = None,
    mask_before: int = 0,
) -> View:
    """Messages for the next call.

    `summary` covers steps 0..summary_cutoff-1; the raw tail is summary_cutoff..len(steps)-1.
    Observations of raw-tail steps with index < mask_before are replaced by a one-line placeholder.
    """
    start = summary_cutoff if summary is not None and summary_cutoff is not None else 0
    messages = [{"role": "system", "content": system}, {"role": "user", "content": task}]
    if summary is not None:
        messages.append({"role": "user", "content": render("summary_block.j2", summary=summary, cutoff=start)})
    masked = []
    for i in range(start, len(steps)):
        messages.append({"role": "assistant", "content": steps[i].response})
        if i < mask_before:
            masked.append(i)
            messages.append({"role": "user", "content": MASK_PLACEHOLDER.format(step=i)})
        else:
            messages.append({"role": "user", "content": steps[i].observation})
    return View(messages=messages, summary_cutoff=start if summary is not None else None,
                raw_start=start, raw_end=len(steps), masked=tuple(masked))


def estimate_tokens(text: str) -> int:
    """A cheap, tokenizer-free estimate (~4 characters per token) for budgets and planning."""
    return (len(text) + 3) // 4

