"""How alike two bash actions are: the GRPO reward of train-memory and the action consistency of `comem bench memory`
(docs/design.md, section 6): how functionally equivalent a proposed bash action is to the recorded one.

`action_reward(proposed, recorded)` is in [0, 1]. `proposed` is either a whole model reply, whose
single ```bash block is taken with `comem_cli.agent.parse_action` (exactly the agent's rule, so a
reply the agent would reject scores 0.0), or a bare command. A text is read as a reply when it
holds a ``` fence or starts with "THOUGHT" (force either reading with `reply=True/False`).
An empty action, or an empty recorded action, scores 0.0. Identical commands (after stripping
surrounding whitespace) score exactly 1.0.

A command line is read by `comem_cli.shell` (programs, subcommands, paths, words, flags, line
ranges, code; the main command is the first that is not trivial, such as `cd dir`).

Score of two simple commands, each level counting only if the level above matched:

    score = 0.30 x program        1 same, 0.6 related, 0 different (then the score is 0)
          + 0.10 x subcommand     1 if equal (or neither has one), else 0 and the arguments count 0
          + 0.60 x arguments

Related programs (0.6): viewers `cat head tail nl less more sed(-n) bat`; searchers
`grep rg ag ack`; listers `ls find tree fd`; test runners `pytest tox nox`; in-place editors
`sed -i perl -i`; and two programs of one binary (`sed -n` / `sed -i`).

    arguments = weighted mean of the parts present on either side: paths 0.4, words 0.5, flags 0.1
    (no arguments on either side counts 1), where
    paths: soft Jaccard; two paths match 1.0 if equal or one is the other's suffix of >= 2
           components (`/testbed/a/b.py` ~ `a/b.py`), 0.7 for `b.py` ~ `a/b.py`, 0.6 for the same
           basename, else 0.4 x the fraction of leading directories they share;
    words: mean of the Jaccard of the word sets and, where a viewer shows a line range
           (`sed -n '5,9p' f`, `head -n 9 f`, `nl -ba f | sed -n '5,9p'`: a range piped after a
           viewer is folded into it), the overlap of the ranges (intersection over union);
    flags: Jaccard of the sets.
    With code on either side: arguments = 0.3 x the above + 0.7 x code^2, code being the difflib
    ratio over word / punctuation tokens (squared so that two different edits of one file stay
    apart: ratio 0.83 -> 0.69).

The main commands' score is discounted by the rest of a compound command:
functional = main x (0.80 + 0.20 x others), others being the mean best-match score of the commands
beside the main ones, trivial ones such as `cd dir` included (1.0 when neither side has any):
`grep foo x.py | head` vs `grep foo x.py` keeps 0.80. Finally reward = 0.95 x functional + 0.05 x surface, surface being the difflib ratio
of the two command texts: it only orders otherwise-equivalent spellings (identical outranks
equivalent) and never lifts an unrelated command above 0.05.

Typical values: `cat ./a/b.py` vs `cat a/b.py` 0.99; `grep -n foo x.py` vs `grep foo x.py` 0.94;
`python3 r.py` vs `python r.py` 0.99; same file, other grep pattern or line range 0.7-0.8;
`cat x.py` vs `head -n 20 x.py` 0.56; `cat a.py` vs `cat b.py` 0.41; `git diff` vs `git status`
0.31; `ls -R` vs `python r.py` 0.0.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from pydantic import BaseModel

from comem_cli.agent import parse_action
from comem_cli.errors import FormatError
from comem_cli.shell import VIEWERS, Command, main_command, parse_command_line  # noqa: F401 (parse_command_line: re-exported)

# Weights (see the module docstring).
W_PROGRAM, W_SUBCOMMAND, W_ARGS = 0.30, 0.10, 0.60
RELATED_PROGRAM = 0.6
W_PATHS, W_WORDS, W_FLAGS = 0.4, 0.5, 0.1
W_ARGS_WITH_CODE, W_CODE = 0.3, 0.7  # arguments = 0.3 * paths/words/flags + 0.7 * code_similarity ** 2
OTHERS_FLOOR = 0.80  # functional = main * (OTHERS_FLOOR + (1 - OTHERS_FLOOR) * others)
W_SURFACE = 0.05
MAX_TOKENS = 2000  # code / surface similarity looks at most at this many tokens per side

RELATED_GROUPS = [
    VIEWERS,
    {"grep", "rg", "ag", "ack"},
    {"ls", "find", "tree", "fd"},
    {"pytest", "tox", "nox"},
    {"sed -i", "perl -i"},
]
_CODE_TOKENS = re.compile(r"\w+|[^\w\s]")


class RewardBreakdown(BaseModel):
    """The parts of one reward, for reports. Part scores are None where they did not apply."""

    reward: float
    parsed: bool  # False when the proposed reply had no single bash block (reward 0)
    reason: str = ""
    proposed_action: str | None = None
    recorded_action: str = ""
    proposed_program: str | None = None
    recorded_program: str | None = None
    program: float = 0.0
    subcommand: float = 0.0
    arguments: float | None = None
    paths: float | None = None
    words: float | None = None
    flags: float | None = None
    code: float | None = None
    others: float = 0.0
    main: float = 0.0
    functional: float = 0.0
    surface: float = 0.0


# ---------------------------------------------------------------------------------------------
# Similarities


def _jaccard(a: set[str], b: set[str]) -> float | None:
    if not a and not b:
        return None
    return len(a & b) / len(a | b)


def path_similarity(a: str, b: str) -> float:
    if a == b:
        return 1.0
    ca, cb = [c for c in a.split("/") if c], [c for c in b.split("/") if c]
    if not ca or not cb:
        return 0.0
    short, long_ = (ca, cb) if len(ca) <= len(cb) else (cb, ca)
    if long_[-len(short):] == short:
        return 1.0 if len(short) >= 2 else 0.7
    if ca[-1] == cb[-1]:
        return 0.6
    common = 0
    for x, y in zip(ca, cb):
        if x != y:
            break
        common += 1
    return 0.4 * common / max(len(ca), len(cb))


def lines_similarity(a: tuple[int, int] | None, b: tuple[int, int] | None) -> float | None:
    """Overlap (intersection over union) of two line ranges; 0 when only one side has one."""
    if a is None and b is None:
        return None
    if a is None or b is None:
        return 0.0
    overlap = min(a[1], b[1]) - max(a[0], b[0]) + 1
    union = max(a[1], b[1]) - min(a[0], b[0]) + 1
    return max(0, overlap) / union if union > 0 else 0.0


def paths_similarity(a: set[str], b: set[str]) -> float | None:
    """Soft Jaccard: every path's best match on the other side counts as its share of the intersection."""
    if not a and not b:
        return None
    if not a or not b:
        return 0.0
    best_a = sum(max(path_similarity(x, y) for y in b) for x in a)
    best_b = sum(max(path_similarity(x, y) for x in a) for y in b)
    matched = (best_a + best_b) / 2
    return matched / (len(a) + len(b) - matched)


def _code_tokens(text: str) -> list[str]:
    return _CODE_TOKENS.findall(text)[:MAX_TOKENS]


def sequence_similarity(a: str, b: str) -> float:
    """difflib ratio over word / punctuation tokens (whitespace and layout do not count)."""
    ta, tb = _code_tokens(a), _code_tokens(b)
    if not ta and not tb:
        return 1.0 if a.strip() == b.strip() else 0.0
    return difflib.SequenceMatcher(None, ta, tb, autojunk=False).ratio()


def program_similarity(a: Command, b: Command) -> float:
    if a.program == b.program:
        return 1.0
    if a.family == b.family:
        return RELATED_PROGRAM
    for group in RELATED_GROUPS:
        if a.program in group and b.program in group:
            return RELATED_PROGRAM
    return 0.0


def _weighted(parts: list[tuple[float | None, float]]) -> float | None:
    present = [(score, weight) for score, weight in parts if score is not None]
    if not present:
        return None
    return sum(s * w for s, w in present) / sum(w for _, w in present)


@dataclass
class Comparison:
    """The parts of comparing two simple commands; `score` is the hierarchical main score."""

    program: float = 0.0
    subcommand: float = 0.0
    arguments: float | None = None
    paths: float | None = None
    words: float | None = None
    flags: float | None = None
    code: float | None = None
    score: float = 0.0


def compare_commands(a: Command, b: Command) -> Comparison:
    """program -> subcommand -> arguments, each level counting only if the one above matched."""
    out = Comparison(program=program_similarity(a, b))
    if out.program == 0:
        return out
    out.subcommand = 1.0 if a.subcommand == b.subcommand else 0.0
    out.paths = paths_similarity(a.paths, b.paths)
    out.words = _weighted([(_jaccard(a.words, b.words), 1.0), (lines_similarity(a.lines, b.lines), 1.0)])
    out.flags = _jaccard(a.flags, b.flags)
    args = _weighted([(out.paths, W_PATHS), (out.words, W_WORDS), (out.flags, W_FLAGS)])
    if a.code or b.code:
        out.code = sequence_similarity("\n".join(a.code), "\n".join(b.code)) if a.code and b.code else 0.0
    arguments = _weighted([(args, W_ARGS_WITH_CODE), (None if out.code is None else out.code ** 2, W_CODE)])
    out.arguments = 1.0 if arguments is None else arguments
    out.score = W_PROGRAM * out.program + W_SUBCOMMAND * out.subcommand + W_ARGS * out.subcommand * out.arguments
    return out


def others_similarity(a: list[Command], b: list[Command]) -> float:
    """The commands beside the main ones: each one's best match on the other side (1.0 when neither has any)."""
    if not a and not b:
        return 1.0
    if not a or not b:
        return 0.0
    best_a = sum(max(compare_commands(x, y).score for y in b) for x in a)
    best_b = sum(max(compare_commands(x, y).score for x in a) for y in b)
    return (best_a + best_b) / (len(a) + len(b))


# ---------------------------------------------------------------------------------------------
# The reward


def _looks_like_reply(text: str) -> bool:
    return "```" in text or bool(re.match(r"\s*THOUGHT\b", text))


def reward_breakdown(proposed: str | None, recorded: str, *, reply: bool | None = None) -> RewardBreakdown:
    """The reward with its parts. `reply`: True/False forces how `proposed` is read; None guesses."""
    recorded = (recorded or "").strip()
    if proposed is None:
        return RewardBreakdown(reward=0.0, parsed=False, reason="no proposed action", recorded_action=recorded)
    as_reply = _looks_like_reply(proposed) if reply is None else reply
    if as_reply:
        try:
            action = parse_action(proposed)
        except FormatError as e:
            return RewardBreakdown(reward=0.0, parsed=False, reason=f"unparseable reply: {e}", recorded_action=recorded)
    else:
        action = proposed.strip()
    out = RewardBreakdown(reward=0.0, parsed=bool(action), proposed_action=action, recorded_action=recorded)
    if not action:
        out.reason = "empty proposed action"
        return out
    if not recorded:
        out.reason = "empty recorded action"
        return out
    if action == recorded:
        return out.model_copy(update=dict(reward=1.0, program=1.0, subcommand=1.0, others=1.0, main=1.0,
                                          functional=1.0, surface=1.0, reason="identical"))

    out.surface = sequence_similarity(action, recorded)
    commands_p, commands_r = parse_command_line(action), parse_command_line(recorded)
    main_p, main_r = main_command(commands_p), main_command(commands_r)
    out.proposed_program = main_p.program if main_p else None
    out.recorded_program = main_r.program if main_r else None
    if main_p is not None and main_r is not None:
        parts = compare_commands(main_p, main_r)
        for name in ("program", "subcommand", "arguments", "paths", "words", "flags", "code"):
            setattr(out, name, getattr(parts, name))
        out.main = parts.score
        out.others = others_similarity([c for c in commands_p if c is not main_p], [c for c in commands_r if c is not main_r])
        out.functional = out.main * (OTHERS_FLOOR + (1 - OTHERS_FLOOR) * out.others)
    out.reward = min(1.0, max(0.0, (1 - W_SURFACE) * out.functional + W_SURFACE * out.surface))
    out.reason = "scored"
    return out


def action_reward(proposed: str | None, recorded: str, *, reply: bool | None = None) -> float:
    """Functional equivalence of `proposed` (a reply or a bare command) to the `recorded` action, in [0, 1]."""
    return reward_breakdown(proposed, recorded, reply=reply).reward
