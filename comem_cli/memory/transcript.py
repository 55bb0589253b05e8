"""What the memory model reads: instruction first, then the task, then the steps.

One implementation for inference (the pipeline) and training (train/samples.py): the model is
trained on exactly the input it gets in production. The layout is cache-friendly: successive
summary jobs of one run share instruction + task + older steps as a growing prefix, so a
prefix-caching server prefills only the new steps. Long observations are cut head + tail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from comem_cli.config import DEFAULT_SUMMARY_CAP
from comem_cli.templates import render

MAX_OBSERVATION_CHARS = 2000
# The summary's fixed sections, as memory_instruction.j2 names them (a test checks they agree).
SECTIONS = ("Task", "Files and code state", "Actions and outcomes", "Tests", "Open questions")
_ACTION_BLOCK = re.compile(r"```(?:bash|mswea_bash_command)[ \t]*\n.*?\n?```", re.DOTALL)


class StepLike(Protocol):
    response: str
    action: str | None
    observation: str


def cut_observation(text: str, max_chars: int = MAX_OBSERVATION_CHARS) -> str:
    """Head and tail of a long observation, with a note saying how much was elided."""
    if len(text) <= max_chars:
        return text
    half = max(max_chars // 2, 1)
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters elided ...]\n{text[-half:]}"


def step_block(index: int, step: StepLike, max_observation_chars: int = MAX_OBSERVATION_CHARS,
               max_thought_chars: int | None = None) -> str:
    """One step as the memory model reads it: THOUGHT (the reply minus its command, cut head + tail to
    `max_thought_chars` when given), ACTION, OBSERVATION."""
    thought = _ACTION_BLOCK.sub("", step.response).strip() if step.action is not None else step.response.strip()
    thought = re.sub(r"^THOUGHT:\s*", "", thought)
    if max_thought_chars is not None:
        thought = cut_observation(thought, max_thought_chars)
    action = step.action if step.action is not None else "(none: the reply had no single bash block)"
    observation = cut_observation(step.observation, max_observation_chars)
    return f'<step index="{index}">\nTHOUGHT: {thought}\n\nACTION:\n{action}\n\nOBSERVATION:\n{observation}\n</step>'


def section_groups(n: int) -> list[tuple[str, ...]]:
    """The summary's sections split into `n` (1..5) consecutive groups, one request each; with fewer
    groups than sections the first sections share a request (the task is a sentence or two)."""
    n = max(1, min(n, len(SECTIONS)))
    if n == 1:
        return [SECTIONS]
    extra = len(SECTIONS) - n  # the first group takes the sections the others leave
    return [SECTIONS[:extra + 1]] + [(s,) for s in SECTIONS[extra + 1:]]


@dataclass(frozen=True)
class SummaryRequest:
    """One request of a summary: the sections it asks for (`for_sections`) and the tokens it may write."""

    sections: tuple[str, ...]
    max_tokens: int


def summary_requests(groups: Sequence[tuple[str, ...]], max_summary_tokens: int) -> list[list[SummaryRequest]]:
    """How one summary becomes requests, in waves (a wave is sent once the one before it is answered;
    the summary is the last wave's answers joined in order): one request for the whole summary; or,
    with several section `groups`, a 1-token request that prefills their shared input, then one request
    per group at once, the cap shared among them. The real pipeline and the latency simulation both
    send a summary as this says."""
    if len(groups) == 1:
        return [[SummaryRequest(tuple(groups[0]), max_summary_tokens)]]
    budget = max(1, max_summary_tokens // len(groups))
    return [[SummaryRequest(tuple(groups[0]), 1)], [SummaryRequest(tuple(g), budget) for g in groups]]


def memory_messages(task: str, steps: Sequence[StepLike], *, first_index: int = 0, previous: str | None = None,
                    max_observation_chars: int = MAX_OBSERVATION_CHARS,
                    max_thought_chars: int | None = None) -> list[dict[str, str]]:
    """Ask for a summary of `steps` (numbered from `first_index`).

    `previous` (incremental mode) is an earlier summary of steps 0..first_index-1; without it,
    first_index > 0 means the oldest steps were left out to fit the input.
    """
    blocks = "\n\n".join(step_block(first_index + i, s, max_observation_chars, max_thought_chars)
                         for i, s in enumerate(steps))
    last = first_index + len(steps) - 1
    if previous is not None:
        prefix = f"<previous_summary steps=\"0-{first_index - 1}\">\n{previous}\n</previous_summary>\n\n"
        ask = f"Write the summary of steps 0 to {last}: the previous summary updated with the new steps."
    else:
        prefix = ""
        dropped = f" (steps 0 to {first_index - 1} were left out to fit the input)" if first_index > 0 else ""
        ask = f"Write the summary of steps {first_index} to {last}{dropped}."
    user = f"<task>\n{task}\n</task>\n\n{prefix}<transcript>\n{blocks}\n</transcript>\n\n{ask}"
    return [{"role": "system", "content": render("memory_instruction.j2")}, {"role": "user", "content": user}]


SHORT_OBSERVATION_CHARS = 400  # observations are cut to this (at most) before the task gives way
TIGHT_OBSERVATION_CHARS, TIGHT_THOUGHT_CHARS = 200, 300  # then to these, with the task cut, before steps are left out
TASK_SHARE = 6  # a task cut to fit takes at most 1/6 of the input (the agent's own view holds it whole)
CHARS_PER_TOKEN = 3  # a safe (dense) estimate for fitting a request into a model's window: code tokenizes at ~3-4
ROOM = 64  # tokens left over for the chat template's own


def request_tokens(messages: list[dict[str, str]]) -> int:
    """A safe estimate of a request's tokens (dense text, chat template included)."""
    return sum(len(m["content"]) // CHARS_PER_TOKEN + 8 for m in messages) + ROOM


def window_count(budget: int, count_tokens: Callable[[str], int] | None = None) -> Callable[[list[dict[str, str]]], int]:
    """How a request is counted against `budget` tokens: the dense estimate (`request_tokens`); where
    the model's tokenizer is known (`count_tokens`, a text's tokens), the larger of the estimate and
    the tokenizer's count (code and symbols can take more than a token per 3 characters). The
    tokenizer only runs on a request the estimate lets fit."""
    if count_tokens is None:
        return request_tokens

    def count(messages: list[dict[str, str]]) -> int:
        estimate = request_tokens(messages)
        if estimate > budget:
            return estimate
        return max(estimate, sum(count_tokens(m["content"]) + 8 for m in messages) + ROOM)

    return count


@dataclass(frozen=True)
class Fitted:
    """A memory-model input fitted to a budget: its messages, the first step it shows (the ones
    before were left out, or are covered by the summary it starts from), the task as it shows it
    and how much of each observation it shows (head + tail)."""

    messages: list[dict[str, str]]
    first: int
    task: str
    task_cut: bool
    observation_chars: int


def summary_input(task: str, steps: Sequence[StepLike], *, previous: tuple[int, str] | None = None,
                  max_observation_chars: int = MAX_OBSERVATION_CHARS, context: int | None = None,
                  max_summary_tokens: int = DEFAULT_SUMMARY_CAP, fold: tuple[int, str] | None = None,
                  count_tokens: Callable[[str], int] | None = None) -> list[dict[str, str]]:
    """The memory model's input for a summary of all of `steps`: with `previous` = (cut-off, text) of
    an earlier summary (incremental mode) that covers fewer steps, that summary and the steps after
    it. One function for the pipeline, `comem bench memory`, training and the latency benchmark's
    workload. With `context` (the memory model's window, in tokens) the request always fits with room
    for the summary (`fit_input`), counted by `window_count` (with the model's `count_tokens` where
    the backend has one)."""
    if previous is not None and previous[0] < len(steps):
        messages = memory_messages(task, steps[previous[0]:], first_index=previous[0], previous=previous[1],
                                   max_observation_chars=max_observation_chars)
    else:
        messages = memory_messages(task, steps, max_observation_chars=max_observation_chars)
    if context is None:
        return messages
    budget = context - min(max_summary_tokens, context // 2)
    count = window_count(budget, count_tokens)
    if count(messages) <= budget:
        return messages
    return fit_input(task, steps, budget, max_observation_chars=max_observation_chars, fold=fold, count=count).messages


def fit_input(task: str, steps: Sequence[StepLike], budget: int, *, max_observation_chars: int = MAX_OBSERVATION_CHARS,
              fold: tuple[int, str] | None = None, count: Callable[[list[dict[str, str]]], int] = request_tokens) -> Fitted:
    """The input for a summary of all of `steps` in at most `budget` tokens (`count`ed), giving way in
    this order until it fits: observations cut shorter (the oldest steps folded in through `fold`,
    the newest earlier summary (cut-off, text), where that fits); then the task cut to its share of
    the budget and the replies and observations cut shorter still (the steps are what only the
    summary will carry on: the agent's own view always holds the task); then the oldest steps left
    out, and the request says which; past that, observations, the task and the replies cut further.
    The result may still exceed the budget only for a budget smaller than the instruction itself."""
    def build(first: int, prior: str | None, chars: int, task_text: str = task, thought: int | None = None) -> Fitted:
        return Fitted(memory_messages(task_text, steps[first:], first_index=first, previous=prior,
                                      max_observation_chars=chars, max_thought_chars=thought), first, task_text,
                      task_text != task, chars)

    starts = [(0, None)] + ([fold] if fold is not None and 0 < fold[0] < len(steps) else [])
    short = max(SHORT_OBSERVATION_CHARS, max_observation_chars // 4)
    for chars in (max_observation_chars, short):
        for first, prior in starts:  # everything, or the oldest steps folded in through the newest summary
            if count((fitted := build(first, prior, chars)).messages) <= budget:
                return fitted
    overhead = count(memory_messages("", []))
    room_chars = max(400, (budget - overhead) * CHARS_PER_TOKEN // TASK_SHARE)
    task_text = task if len(task) <= room_chars else cut_observation(task, room_chars)
    chars, thought = min(short, TIGHT_OBSERVATION_CHARS), TIGHT_THOUGHT_CHARS
    for first, prior in starts:
        if count((fitted := build(first, prior, chars, task_text, thought)).messages) <= budget:
            return fitted
    low, high = 1, max(1, len(steps) - 1)  # else the fewest oldest steps to leave out so that the rest fits
    while low < high:
        middle = (low + high) // 2
        if count(build(middle, None, chars, task_text, thought).messages) <= budget:
            high = middle
        else:
            low = middle + 1
    first = min(low, max(0, len(steps) - 1))
    fitted = build(first, None, chars, task_text, thought)
    while count(fitted.messages) > budget and chars > 50:
        chars //= 2
        fitted = build(first, None, chars, task_text, thought)
    while count(fitted.messages) > budget and len(task_text) > 200:
        task_text = cut_observation(task_text, len(task_text) // 2)
        fitted = build(first, None, chars, task_text, thought)
    while count(fitted.messages) > budget and thought > 50:  # last, the replies themselves
        thought //= 2
        fitted = build(first, None, chars, task_text, thought)
    return fitted


def for_sections(messages: list[dict[str, str]], sections: Sequence[str]) -> list[dict[str, str]]:
    """The same request asking for `sections` (a group of `SECTIONS`) only: one sentence added to its
    last line, so the requests of one summary share everything before it and a prefix-caching
    server prefills their input once."""
    if tuple(sections) == SECTIONS:
        return messages
    one = len(sections) == 1
    headings = ", ".join(f"## {h}" for h in sections)
    last = messages[-1]
    only = (f" Write only {'this section' if one else 'these sections'} of it, "
            f"under {'its heading' if one else 'their headings'}: {headings}.")
    return [*messages[:-1], {**last, "content": last["content"] + only}]


def looks_like_summary(text: str) -> bool:
    """Reject garbage: empty output, or output that is mostly not words."""
    stripped = (text or "").strip()
    if len(stripped) < 20:
        return False
    letters = sum(c.isalpha() for c in stripped)
    return letters / len(stripped) > 0.3
