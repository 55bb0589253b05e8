"""What a summary must keep, and how well it keeps it: the facts, the scores and the swap-time check.

One definition of each for the three places that need it: `comem bench memory` (the quality
benchmark), the pipeline's check of a summary before the view uses it (memory/pipeline.py), and
`train-memory`'s recall reward. No I/O: steps in, numbers and verdicts out.

Facts are what an agent's commands use, read off each command by `comem_cli.shell`: the files they
name (the file name of each path; a test id `tests/t.py::test_x` gives `t.py` and `test_x`) and the
names they search for or run (function, class and test names: a word of the command spelled with
an underscore or a capital inside, as `count_words` or `QuerySet`, or an identifier of that kind
in its code). A text *names* a fact when the fact stands in it as a word of its own (any case).

- forward facts of a cut-off: the facts that the agent's commands after it use and that already
  stood in the steps before it (its covered steps). A summary that names them kept what the agent
  went on to need. `forward_recall` is the fraction named.
- artifacts: the files the covered steps created or changed (`> f`, `sed -i`, `tee`, `cp` ...);
  `artifact_recall` is the fraction named.
- sections: the fixed headings (`transcript.SECTIONS`) present; lines repeated across sections.
- compression: the summary's tokens over the covered steps' (what they take in a view).
- the recall reward (`recall_reward`, `train-memory --reward recall`): the recalls, weighted by
  the headings present, 0 for a summary not shorter than its input, halved for one cut at the cap.

The swap-time check (`check`): a summary that lands has been written while the agent took more
steps; their forward facts are known. A summary missing most headings or with nothing under any,
longer than its cap, or not shorter than the steps it covers is `rejected` (the view keeps the raw
steps); one that misses forward facts of those steps is `patched`: the missing facts are added under
it as one short line (cheaper than a new summary, and the raw tail stays short); else `passed`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

from comem_cli.memory.transcript import SECTIONS, StepLike
from comem_cli.shell import parse_command_line
from comem_cli.views import estimate_tokens

CAP_MARGIN = 1.25  # a summary may exceed --max-summary-tokens by this factor (token estimates differ by tokenizer)
MIN_NAME = 4  # shorter words are not names
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEADING = re.compile(r"^\s*(?:#{1,6}\s*|\*\*)\s*(.+?)\s*(?:\*\*)?\s*:?\s*$")
_HEADINGS = {s.lower(): s for s in SECTIONS}


def name_like(word: str) -> bool:
    core = word.strip("_")
    return (len(core) >= MIN_NAME and not core.isdigit()
            and ("_" in core or bool(re.search(r"[a-z][A-Z]", core))))


def _spellings(word: str, text: str) -> list[str]:
    """How `word` (lower-case, as the shell reader keeps words) is spelled in `text`."""
    return [m.group() for m in re.finditer(rf"(?i)(?<![\w]){re.escape(word)}(?![\w])", text)]


def action_facts(action: str | None) -> set[str]:
    """The facts one command uses: file names and names (see the module docstring)."""
    if not action:
        return set()
    facts: set[str] = set()
    for command in parse_command_line(action):
        for path in command.paths:
            file, _, test = path.partition("::")
            name = file.rsplit("/", 1)[-1]
            if "." in name.strip("."):  # a file, not a directory
                facts.add(name)
            facts |= {part.split("[")[0] for part in test.split("::") if part}
        facts |= {w for w in command.words if any(name_like(s) for s in _spellings(w, action))}
        for code in command.code:
            facts |= {n for n in IDENTIFIER.findall(code) if name_like(n)}
    return facts


def artifacts(steps: Sequence[StepLike]) -> set[str]:
    """The files the steps' commands created or changed (file names)."""
    found: set[str] = set()
    for step in steps:
        for command in parse_command_line(step.action or ""):
            found |= {w.rsplit("/", 1)[-1] for w in command.writes if "." in w.rsplit("/", 1)[-1].strip(".")}
    return found


def names(text: str, fact: str) -> bool:
    """Whether `text` names `fact` as a word of its own (any case; `a/words.py` names `words.py`)."""
    return re.search(rf"(?i)(?<![\w-]){re.escape(fact)}(?![\w])", text) is not None


def step_text(step: StepLike) -> str:
    return f"{step.response}\n{step.action or ''}\n{step.observation}"


def forward_facts(covered: Sequence[StepLike], later: Sequence[StepLike]) -> set[str]:
    """Facts that the `later` steps' commands use and that stood in the `covered` steps."""
    wanted = set().union(*(action_facts(s.action) for s in later)) if later else set()
    if not wanted:
        return set()
    seen = "\n".join(step_text(s) for s in covered)
    return {f for f in wanted if names(seen, f)}


def covered_tokens(steps: Sequence[StepLike]) -> int:
    """What the steps take in a view (the reply and the observation each)."""
    return sum(estimate_tokens(s.response) + estimate_tokens(s.observation) for s in steps)


def sections(summary: str) -> dict[str, list[str]]:
    """The summary's fixed sections present, each with its non-empty lines (other headings end a section)."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in (summary or "").splitlines():
        heading = _HEADING.match(line)
        if heading and (line.lstrip().startswith("#") or line.strip().startswith("**")):
            title = _HEADINGS.get(heading.group(1).strip().lower())
            current = found.setdefault(title, []) if title else None
            continue
        if current is not None and line.strip():
            current.append(line.strip())
    return found


def recall(facts: set[str], summary: str) -> tuple[float | None, list[str]]:
    """The fraction of `facts` the summary names (None with no facts), and the missing ones."""
    if not facts:
        return None, []
    missing = sorted(f for f in facts if not names(summary, f))
    return 1 - len(missing) / len(facts), missing


@dataclass
class Quality:
    """The scores of one summary of the steps before a cut-off."""

    forward_recall: float | None
    artifact_recall: float | None
    sections_complete: float  # the share of the fixed headings present
    repeated_lines: int  # content lines that stand in more than one section
    compression: float  # summary tokens / covered tokens
    missing: list[str] = field(default_factory=list)  # forward facts not named


def score(summary: str, covered: Sequence[StepLike], later: Sequence[StepLike]) -> Quality:
    """Score `summary` of `covered` against the steps the agent took after them."""
    forward, missing = recall(forward_facts(covered, later), summary)
    artifact, _ = recall(artifacts(covered), summary)
    found = sections(summary)
    counts: dict[str, int] = {}
    for lines in found.values():
        for line in set(lines):
            counts[line] = counts.get(line, 0) + 1
    return Quality(forward_recall=forward, artifact_recall=artifact,
                   sections_complete=len(found) / len(SECTIONS),
                   repeated_lines=sum(n - 1 for n in counts.values() if n > 1),
                   compression=estimate_tokens(summary) / max(1, covered_tokens(covered)), missing=missing)


W_FORWARD, W_ARTIFACT = 0.7, 0.3  # the recall reward: what the agent goes on to use weighs most
CUT_FACTOR = 0.5  # a summary cut at its token cap lost its end (and is usually a loop)


def recall_reward(quality: Quality, *, cut: bool = False) -> float | None:
    """`train-memory --reward recall`, in [0, 1]: the weighted forward and artifact recall (the ones
    that have facts), times 0.5 + 0.5 x the share of headings present (a summary with the names but
    none of the shape the view expects earns half; headings alone earn 0), 0 for a summary not
    shorter than the steps it covers (the swap-time check rejects it), x CUT_FACTOR when the summary
    was `cut` at its token cap. None when the covered steps hold no fact to recall: such a summary
    tells good from bad by its shape only, so training leaves it out rather than reward headings."""
    parts = [(value, weight) for value, weight in ((quality.forward_recall, W_FORWARD),
                                                   (quality.artifact_recall, W_ARTIFACT)) if value is not None]
    if not parts:
        return None
    if quality.compression >= 1:
        return 0.0
    recalled = sum(value * weight for value, weight in parts) / sum(weight for _, weight in parts)
    return recalled * (0.5 + 0.5 * quality.sections_complete) * (CUT_FACTOR if cut else 1.0)


@dataclass
class Check:
    """The swap-time verdict on one summary: `text` is what the view may use (None when rejected)."""

    verdict: str  # passed | patched | rejected
    text: str | None
    reason: str = ""
    missing: list[str] = field(default_factory=list)

    def event(self, job: int) -> dict:
        """The record of this check in the step's `memory` list (trajectory.jsonl)."""
        return {"kind": "summary_check", "summary_check": self.verdict, "job": job, "missing": self.missing,
                **({"reason": self.reason} if self.reason else {})}


def check(summary: str, covered: Sequence[StepLike], since: Sequence[StepLike], *, max_summary_tokens: int) -> Check:
    """Check a summary of `covered` that landed after the agent took `since` (see the module docstring)."""
    found = sections(summary)
    absent = [s for s in SECTIONS if s not in found]
    if len(absent) > len(SECTIONS) // 2:
        return Check("rejected", None, f"sections missing: {', '.join(absent)}")
    if not any(found.values()):
        return Check("rejected", None, "every section is empty")
    tokens, input_tokens = estimate_tokens(summary), covered_tokens(covered)
    if tokens > max_summary_tokens * CAP_MARGIN:
        return Check("rejected", None, f"{tokens} tokens, over --max-summary-tokens {max_summary_tokens}")
    if tokens >= input_tokens:
        return Check("rejected", None, f"{tokens} tokens, not shorter than the {input_tokens} of the steps it covers")
    _, missing = recall(forward_facts(covered, since), summary)
    if not missing:
        return Check("passed", summary)
    span = "step 0" if len(covered) == 1 else f"steps 0 to {len(covered) - 1}"
    patched = f"{summary.rstrip()}\n\nAlso in {span}, and used by the agent since: {', '.join(missing)}."
    return Check("patched", patched, missing=missing)
