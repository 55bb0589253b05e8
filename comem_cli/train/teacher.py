"""The extractive teacher (`train-memory --teacher extractive`): SFT warm-up summaries written by
rules, with no model, from the covered steps only (never from what the agent did after them).

A small base model (SmolLM2-135M) does not know the summary's shape: it rambles, repeats itself,
and seldom copies a file name. The teacher shows it the shape with the facts in it: the five
headings of `prompts/memory_instruction.j2`, the files and names the agent's commands used
(read by `comem_cli.shell`, the reader `memory/quality.py` scores with), the names the replies
and outputs mentioned, what each command returned, the test runs. GRPO with `--reward recall` then improves on it.

Bounded: at most `max_tokens` (estimated, `views.estimate_tokens`); when the steps hold more,
older actions and test runs go first, the files the commands named are kept longest. A summary never
comes out longer than the steps it covers.
"""

from __future__ import annotations

import re
from typing import Sequence

from comem_cli.memory.quality import IDENTIFIER, action_facts, artifacts, covered_tokens, name_like
from comem_cli.memory.transcript import SECTIONS, StepLike
from comem_cli.shell import main_command, parse_command_line
from comem_cli.views import estimate_tokens

__all__ = ["extractive_summary"]

TASK_CHARS = 300
LINE_CHARS = 90
# Short lists: over the held-out cut-offs of the bundled runs, 8 names and 8 seen cost the teacher
# ~0.01 of forward recall against 20 and 16 (the summary fills with actions instead), and a small
# model that learned long lists goes on inventing names once it runs out of ones it can copy.
MAX_NAMES = 8
MAX_SEEN = 8
_TASK_BODY = re.compile(r"<pr_description>\s*(?:Consider the following PR description:\s*)?(.*?)</pr_description>", re.S)
_RETURN_CODE = re.compile(r"<returncode>(-?\d+)</returncode>")
_OUTPUT = re.compile(r"<output>\s*(.*?)\s*(?:</output>|$)", re.S)
_TEST_PROGRAMS = {"pytest", "tox", "nox"}


def _one_line(text: str, chars: int = LINE_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= chars else text[:chars - 3].rstrip() + "..."


def _task(task: str) -> str:
    """The issue itself (mini-swe-agent wraps it in <pr_description> before its instructions)."""
    found = _TASK_BODY.search(task)
    return _one_line(found.group(1) if found else task, TASK_CHARS)


def _outcome(observation: str) -> str:
    """The return code and the last non-empty output line (where errors and results stand)."""
    code = _RETURN_CODE.search(observation)
    body = _OUTPUT.search(observation)
    text = body.group(1) if body else observation
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("<")]
    last = _one_line(lines[-1], 70) if lines else "no output"
    return (f"exit {code.group(1)}: " if code and code.group(1) != "0" else "") + last


def _is_test(action: str) -> bool:
    main = main_command(parse_command_line(action))
    if main is None:
        return False
    return main.program in _TEST_PROGRAMS or (main.program == "python" and any(
        "test" in p.rsplit("/", 1)[-1] or "repro" in p.rsplit("/", 1)[-1] for p in main.paths))


def _files(steps: Sequence[StepLike]) -> list[str]:
    """One line per file the commands named, in the order first used, with how it was used."""
    changed = artifacts(steps)
    order: dict[str, str] = {}
    for step in steps:
        for command in parse_command_line(step.action or ""):
            for path in sorted(command.paths):
                file = path.partition("::")[0]
                if "." in file.rsplit("/", 1)[-1].strip(".") and file not in order:
                    order[file] = "changed" if file.rsplit("/", 1)[-1] in changed else "read"
    return [f"- {path}: {how}" for path, how in order.items()]


def _names(steps: Sequence[StepLike]) -> list[str]:
    """The functions, classes and tests the commands used (not file names), in first-use order, each
    command's in the order its text names them (a list the model can copy as it reads)."""
    seen: dict[str, None] = {}
    for step in steps:
        action = step.action or ""
        for fact in sorted(action_facts(action), key=lambda fact: (action.find(fact) if fact in action else len(action), fact)):
            if "." not in fact:
                seen.setdefault(fact, None)
    return list(seen)


_OUTPUT_FILE = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w-]+\.(?:py|pyx|pyi|c|h|cpp|js|ts|rs|go|java|rb|cfg|toml|ini|txt|rst|md|json|yaml|yml))\b")
_OUTPUT_NAME = re.compile(r"\b(?:def|class)\s+([A-Za-z_]\w*)")


def _seen(steps: Sequence[StepLike], known: set[str]) -> list[str]:
    """Files the outputs listed, functions / classes they showed and names (as `quality` reads them)
    the replies and outputs mentioned, newest first (the agent often goes on to open what a search
    found, or to use what it reasoned about), without those the commands already named."""
    found: dict[str, None] = {}
    for step in reversed(steps):
        text = step.observation
        for match in _OUTPUT_FILE.finditer(text):
            found.setdefault(re.sub(r"^\./", "", match.group(1)), None)
        for match in _OUTPUT_NAME.finditer(text):
            found.setdefault(match.group(1), None)
        for name in IDENTIFIER.findall(f"{step.response}\n{text}"):
            if name_like(name):
                found.setdefault(name, None)
    return [f for f in found if f.rsplit("/", 1)[-1] not in known and f not in known][:MAX_SEEN]


def extractive_summary(task: str, steps: Sequence[StepLike], *, first_index: int = 0, max_tokens: int = 256) -> str:
    """The five sections for `steps` (numbered from `first_index`), at most `max_tokens` and shorter than the steps."""
    files, names = _files(steps), _names(steps)[-MAX_NAMES:]
    seen = _seen(steps, {f.split(": ")[0][2:].rsplit("/", 1)[-1] for f in files} | set(names))
    actions, tests = [], []
    for i, step in enumerate(steps):
        if not step.action:
            continue
        line = f"- step {first_index + i}: `{_one_line(step.action, 60)}` -> {_outcome(step.observation)}"
        (tests if _is_test(step.action) else actions).append(line)
    last = next((s for s in reversed(steps) if s.action), None)
    open_line = (f"- The last command, `{_one_line(last.action, 60)}`, returned: {_outcome(last.observation)}"
                 if last is not None else "- No command has run yet.")
    limit = min(max_tokens, max(16, covered_tokens(steps) - 1))

    def render(keep_actions: int, keep_tests: int, keep_seen: int, keep_open: int, keep_names: int, keep_files: int) -> str:
        state = files[len(files) - keep_files:] + ([f"- names used: {', '.join(names[len(names) - keep_names:])}"] if keep_names else [])
        body = {
            SECTIONS[0]: [_task(task)],
            SECTIONS[1]: state + ([f"- seen in the output: {', '.join(seen[:keep_seen])}"] if keep_seen else []) or ["- none yet"],
            SECTIONS[2]: (actions[len(actions) - keep_actions:] if keep_actions else ["- (older steps left out)"])
            if actions else ["- none yet"],
            SECTIONS[3]: tests[len(tests) - keep_tests:] if keep_tests else ["- none run"],
            SECTIONS[4]: [open_line if keep_open else "- (left out)"],
        }
        return "\n\n".join(f"## {title}\n" + "\n".join(lines) for title, lines in body.items())

    # what goes first when the text is too long: oldest actions, test runs, names seen in outputs,
    # the last result, the names used, and last the oldest files
    keep = [len(actions), len(tests), len(seen), 1, len(names), len(files)]
    text = render(*keep)
    while estimate_tokens(text) > limit and any(keep):
        keep[next(i for i, n in enumerate(keep) if n)] -= 1
        text = render(*keep)
    return text
