"""The GRPO action reward on real actions from the mini-swe-agent trajectories bundled with comem."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comem_cli.reward import action_reward, parse_command_line, reward_breakdown
from comem_cli.trajectories import discover
from tests.conftest import MINI


# Real recorded actions (each is checked to occur in the bundled data below).
CAT_VALIDATORS = "cat ./django/contrib/auth/validators.py"
CAT_QDP = "cat astropy/io/ascii/qdp.py"
GREP_NO = 'grep -n \'if v == "NO":\' astropy/io/ascii/qdp.py'
GREP_READ = 'grep -i "READ" astropy/io/ascii/qdp.py'
SED_QDP = "sed -n '60,80p' astropy/io/ascii/qdp.py"
GREP_EXISTS = 'grep -n "class Exists" django/db/models/expressions.py'
GREP_SUBQUERY = 'grep -n "class Subquery" django/db/models/expressions.py'
HEAD_EXPRESSIONS = "head -n 20 django/db/models/expressions.py"
SED_1199 = "sed -n '1199,1225p' django/db/models/expressions.py"
SED_1199_1224 = "sed -n '1199,1224p' django/db/models/expressions.py"
NL_LOADER = "nl -ba django/db/migrations/loader.py | sed -n '80,100p'"
PYTHON = "python reproduce_issue.py"
PYTHON3 = "python3 reproduce_issue.py"
LS = "ls -R"
GIT_DIFF = "git diff"
PYTEST = "pytest testing/logging"
REAL = [CAT_VALIDATORS, CAT_QDP, GREP_NO, GREP_READ, SED_QDP, GREP_EXISTS, GREP_SUBQUERY, HEAD_EXPRESSIONS, SED_1199,
        SED_1199_1224, NL_LOADER, PYTHON, PYTHON3, LS, GIT_DIFF, PYTEST]

# Equivalent spellings of real actions.
EQUIVALENT = [
    (CAT_VALIDATORS, "cat django/contrib/auth/validators.py"),
    (GREP_NO, 'grep \'if v == "NO":\' astropy/io/ascii/qdp.py'),
    (PYTHON3, PYTHON),
    (CAT_QDP, "cat /testbed/astropy/io/ascii/qdp.py"),
    (NL_LOADER, "nl -ba ./django/db/migrations/loader.py | sed -n 80,100p"),
    (GIT_DIFF, "git --no-pager diff"),
    (PYTEST, "python -m pytest testing/logging"),
]
# Same program (or a related one) on the same target, or the same program elsewhere.
RELATED = [
    (GREP_EXISTS, GREP_SUBQUERY),  # same file, other pattern
    (SED_1199, "sed -n '1141,1190p' django/db/models/expressions.py"),  # same file, other lines
    (HEAD_EXPRESSIONS, "cat django/db/models/expressions.py"),  # a related viewer
    (CAT_QDP, CAT_VALIDATORS),  # same program, another file
    (GREP_NO, 'grep -n "def _line_type" astropy/io/ascii/qdp.py'),
]
UNRELATED = [(LS, PYTHON), (GIT_DIFF, GREP_READ), (CAT_QDP, PYTEST), (SED_QDP, "rm reproduce_issue.py"), (PYTHON3, GREP_NO)]


@pytest.fixture(scope="module")
def trajectories():
    return discover([MINI])[0]


@pytest.fixture(scope="module")
def actions(trajectories) -> list[str]:
    return [s.action for t in trajectories for s in t.steps if s.action is not None]


def test_the_pairs_are_real(actions):
    recorded = set(actions)
    for action in REAL:
        assert action in recorded, action


def test_identical_is_one():
    for action in REAL:
        assert action_reward(action, action) == 1.0
        assert action_reward(f"  {action}\n", action) == 1.0


def test_equivalent_is_high():
    for a, b in EQUIVALENT:
        assert 0.8 <= action_reward(a, b) < 1.0, (a, b, reward_breakdown(a, b))
        assert 0.8 <= action_reward(b, a) < 1.0, (b, a)


def test_related_is_medium():
    for a, b in RELATED:
        assert 0.3 <= action_reward(a, b) <= 0.85, (a, b, reward_breakdown(a, b))


def test_unrelated_is_low():
    for a, b in UNRELATED:
        assert action_reward(a, b) <= 0.2, (a, b, reward_breakdown(a, b))
        assert action_reward(b, a) <= 0.2, (b, a)


def test_ordering():
    identical = min(action_reward(a, a) for a, _ in EQUIVALENT)
    equivalent = [action_reward(a, b) for a, b in EQUIVALENT]
    related = [action_reward(a, b) for a, b in RELATED]
    unrelated = [action_reward(a, b) for a, b in UNRELATED]
    assert identical > max(equivalent)
    assert min(equivalent) > max(related)
    assert min(related) > max(unrelated)
    # finer: the same file with overlapping lines beats disjoint lines; the same file beats another file
    assert action_reward(SED_1199, SED_1199_1224) > action_reward(SED_1199, "sed -n '1141,1190p' django/db/models/expressions.py")
    assert action_reward(GREP_EXISTS, GREP_SUBQUERY) > action_reward(GREP_EXISTS, 'grep -n "class Subquery" django/db/models/query.py')


def test_structure_of_the_breakdown():
    b = reward_breakdown(GREP_NO, 'grep \'if v == "NO":\' astropy/io/ascii/qdp.py')
    assert (b.program, b.subcommand, b.paths, b.words, b.flags) == (1.0, 1.0, 1.0, 1.0, 0.0)
    b = reward_breakdown("git status", GIT_DIFF)
    assert (b.program, b.subcommand) == (1.0, 0.0) and b.reward < 0.4
    b = reward_breakdown(NL_LOADER, "nl -ba django/db/migrations/loader.py | sed -n '90,110p'")
    assert b.words == pytest.approx(11 / 31)  # the line ranges overlap on 11 of 31 lines
    heredoc = "cat <<'EOF' > reproduce_issue.py\nfrom astropy.table import Table\nTable.read('test.qdp', format='ascii.qdp')\nEOF"
    b = reward_breakdown(heredoc, heredoc.replace("test.qdp", "other.qdp"))
    assert b.code is not None and 0.8 < b.code < 1.0 and b.paths == 1.0
    [cat] = parse_command_line(heredoc)
    assert cat.program == "cat" and cat.paths == {"reproduce_issue.py"} and "Table.read" in cat.code[0]


def test_replies_and_unparseable_replies():
    reply = f"THOUGHT: read the file.\n\n```bash\n{CAT_QDP}\n```"
    assert action_reward(reply, CAT_QDP) == 1.0
    two = f"THOUGHT: both.\n\n```bash\n{CAT_QDP}\n```\n\n```bash\n{LS}\n```"
    assert action_reward(two, CAT_QDP) == 0.0
    assert "unparseable" in reward_breakdown(two, CAT_QDP).reason
    assert action_reward("THOUGHT: I will read qdp.py next.", CAT_QDP) == 0.0  # no block at all
    assert action_reward("```bash\n\n```", CAT_QDP) == 0.0
    assert action_reward(None, CAT_QDP) == 0.0
    assert action_reward("", CAT_QDP) == 0.0 and action_reward(CAT_QDP, "") == 0.0
    assert action_reward("I will read qdp.py next.", CAT_QDP, reply=True) == 0.0


def test_cd_and_pipes_count_a_little():
    # a cd or a pipe stage beside the main command keeps 0.80 of its score (the cwd or output changes)
    assert 0.7 < action_reward("cd /testbed && git diff", GIT_DIFF) < 0.85
    assert 0.7 < action_reward(f"{GREP_READ} | head -20", GREP_READ) < 0.85


def test_robust_to_odd_commands():
    for odd in ['echo "unbalanced', "cat <<'EOF' > x.py\nprint(1)", "a |", "&& ;", "# only a comment", "2>&1", "'''", "\\"]:
        for other in (odd, CAT_QDP, PYTHON):
            assert 0.0 <= action_reward(odd, other) <= 1.0
            assert 0.0 <= action_reward(other, odd) <= 1.0


def test_every_recorded_reply_scores_one_against_its_own_action(trajectories):
    for t in trajectories:
        for s in t.steps:
            if s.action is not None:
                assert action_reward(s.response, s.action) == 1.0, (t.id, s.action)
            else:  # the agent rejected it: no single bash block
                assert action_reward(s.response, "ls") == 0.0


def test_random_real_pairs_are_in_range_and_mostly_low(actions):
    rng = random.Random(0)
    rewards = [action_reward(rng.choice(actions), rng.choice(actions)) for _ in range(800)]
    assert all(0.0 <= r <= 1.0 for r in rewards)
    assert sorted(rewards)[len(rewards) // 2] < 0.2  # most pairs of actions are unrelated
    consecutive = [action_reward(a, b) for a, b in zip(actions, actions[1:]) if a != b]
    assert sum(consecutive) / len(consecutive) < 0.5


COMMAND_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=120)
SHELLISH = st.lists(st.sampled_from(["cat", "grep", "-n", "'a b'", '"x', "|", "&&", ";", "\n", "a/b.py", "./a/b.py", "<<EOF",
                                     "EOF", "python3", "-c", "sed", "-i", "'s/a/b/'", "$(pwd)", ">", "2>&1", "\\"]),
                    max_size=14).map(" ".join)


@settings(max_examples=200, deadline=None)
@given(st.one_of(COMMAND_TEXT, SHELLISH), st.one_of(COMMAND_TEXT, SHELLISH))
def test_property_range(proposed, recorded):
    assert 0.0 <= action_reward(proposed, recorded) <= 1.0


@settings(max_examples=200, deadline=None)
@given(st.one_of(COMMAND_TEXT, SHELLISH).filter(lambda c: c.strip() and "```" not in c and not c.lstrip().startswith("THOUGHT")))
def test_property_identity(command):
    assert action_reward(command, command) == 1.0
    assert action_reward(f"THOUGHT: x\n\n```bash\n{command.strip()}\n```", command) == 1.0
