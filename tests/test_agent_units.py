"""Pure parts of the loop: action parsing, output cutting, views."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from comem_cli.agent import cut_middle, parse_action
from comem_cli.errors import FormatError
from comem_cli.views import build_view


def test_parse_action_takes_exactly_one_bash_block():
    assert parse_action("THOUGHT: x\n\n```bash\nls -la\n```") == "ls -la"
    assert parse_action("```bash\ncat <<'EOF' > f\na\nEOF\n```\ntrailing words") == "cat <<'EOF' > f\na\nEOF"
    for bad in ["no block", "```bash\na\n```\n```bash\nb\n```", "```python\nprint()\n```", "```bash\n\n```"]:
        with pytest.raises(FormatError):
            parse_action(bad)


def test_cut_middle_keeps_head_and_tail():
    text = "HEAD" + "x" * 10_000 + "TAIL"
    cut = cut_middle(text, 1000)
    assert cut.startswith("HEAD") and cut.endswith("TAIL") and len(cut) < 1300
    assert "9008 characters elided" in cut
    assert cut_middle("short", 1000) == "short"


@dataclass
class S:
    response: str
    observation: str


def test_full_view_is_chat_turns_in_order():
    steps = [S(f"r{i}", f"o{i}") for i in range(3)]
    v = build_view("sys", "task", steps)
    assert [m["role"] for m in v.messages] == ["system", "user"] + ["assistant", "user"] * 3
    assert [m["content"] for m in v.messages[2:]] == ["r0", "o0", "r1", "o1", "r2", "o2"]
    assert (v.summary_cutoff, v.raw_start, v.raw_end) == (None, 0, 3)
    s = build_view("sys", "task", steps, summary="SUMMARY", summary_cutoff=2)
    assert "SUMMARY" in s.messages[2]["content"] and [m["content"] for m in s.messages[3:]] == ["r2", "o2"]
    m = build_view("sys", "task", steps, mask_before=2)
    assert m.masked == (0, 1) and "elided" in m.messages[3]["content"] and m.messages[7]["content"] == "o2"
