"""What the memory model reads: instruction first, then the task, then the steps (SPEC 3.3).

The layout is cache-friendly: successive summary jobs of one run share the instruction + task +
older steps as a growing prefix, so a prefix-caching server only prefills the new steps. Long
observations are cut head + tail before they reach the memory model.
"""

from __future__ import annotations

import re
from typing import Protocol, Sequence

from comem_cli.templates import render

_BASH_BLOCK = re.compile(r"```(?:bash|mswea_bash_command)[ \t]*\n.*?```", re.DOTALL)


class StepLike(Protocol):
    response: str
    action: str | None
    observation: str


def cut(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    half = max_chars // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters cut ...]\n{text[-half:]}"


def thought_of(response: str) -> str:
    """The reply without its command block (the command is shown separately as ACTION)."""
    text = _BASH_BLOCK.sub("", response).strip()
    return re.sub(r"^THOUGHT:\s*", "", text)


def memory_messages(system_task: str, steps: Sequence[StepLike], *, start: int = 0, previous: str | None = None,
                    max_observation_chars: int = 2000) -> list[dict[str, str]]:
    """Messages asking for a summary of steps[start:] (and of `previous`, covering 0..start-1, if given)."""
    items = [
        {"index": start + i, "thought": cut(thought_of(s.response), max_observation_chars),
         "action": s.action if s.action is not None else "(no valid command: format error)",
         "observation": cut(s.observation, max_observation_chars)}
        for i, s in enumerate(steps[start:])
    ]
    user = render("memory_input.j2", task=system_task, steps=items, previous=previous, previous_cutoff=start,
                  first=0, last=len(steps) - 1)
    return [{"role": "system", "content": render("memory_system.j2")}, {"role": "user", "content": user}]


def looks_like_summary(text: str) -> bool:
    """Reject garbage: empty output, or output that is mostly not words."""
    stripped = text.strip()
    if len(stripped) < 20:
        return False
    letters = sum(c.isalpha() for c in stripped)
    return letters / len(stripped) > 0.3
