"""What the memory model reads under a window smaller than the transcript (`transcript.fit_input`):
the task gives way before steps do, the newest steps are always shown, the request fits, and
training's prompts are the pipeline's own."""

from __future__ import annotations

import re

from comem_cli.memory.transcript import Fitted, fit_input, memory_messages, request_tokens, summary_input
from comem_cli.trajectories import Step, Trajectory

ISSUE = "Fix count_words in words.py: it counts empty strings."
TASK = f"<pr_description>\n{ISSUE}\n</pr_description>\n\n<instructions>\n" + "Follow the rules. " * 330 + "\n</instructions>"


def steps(n: int, observation_chars: int = 1500, reply_chars: int = 200) -> list[Step]:
    return [Step(response=f"THOUGHT: look at part {i}. " + "reason " * (reply_chars // 7) + f"\n\n```bash\ncat src/part{i}.py\n```",
                 action=f"cat src/part{i}.py", observation=f"def part{i}():\n" + "    x = 1\n" * (observation_chars // 10))
            for i in range(n)]


def shown(messages: list[dict[str, str]]) -> list[int]:
    return [int(i) for i in re.findall(r'<step index="(\d+)">', messages[-1]["content"])]


def test_everything_that_fits_is_sent_as_it_is():
    few = steps(3, observation_chars=300)
    assert summary_input(ISSUE, few, context=8192) == memory_messages(ISSUE, few)


def test_a_long_task_gives_way_before_any_step_is_left_out():
    many = steps(6)
    budget = 2048
    fitted = fit_input(TASK, many, budget)
    assert request_tokens(fitted.messages) <= budget
    assert shown(fitted.messages) == list(range(6)) and fitted.first == 0 and fitted.task_cut
    user = fitted.messages[-1]["content"]
    assert ISSUE in user and "characters elided" in user  # the issue (the task's head) stays, the rest is cut
    task_shown = user.partition("<task>\n")[2].partition("\n</task>")[0]
    assert len(task_shown) < len(TASK) // 3
    # the same transcript before this order: the whole task kept, all but the newest step left out
    whole_task = memory_messages(TASK, many[5:], first_index=5)
    assert request_tokens(whole_task) > budget // 2


def test_a_short_task_is_kept_and_the_oldest_steps_go_with_the_cut_stated():
    many = steps(40)
    fitted = fit_input(ISSUE, many, 2048)
    assert not fitted.task_cut and fitted.first > 0 and request_tokens(fitted.messages) <= 2048
    assert shown(fitted.messages) == list(range(fitted.first, 40))  # the newest steps, in order
    assert f"steps 0 to {fitted.first - 1} were left out to fit the input" in fitted.messages[-1]["content"]


def test_a_budget_below_the_instruction_still_gives_the_newest_step():
    fitted = fit_input(TASK, steps(5, observation_chars=20_000, reply_chars=20_000), 300)
    assert isinstance(fitted, Fitted) and shown(fitted.messages) == [4]


def test_training_prompts_are_the_pipelines_own_input():
    from comem_cli.train.samples import build_samples, memory_input

    trajectory = Trajectory(id="t1", source="mini-swe-agent", task=TASK, system="You are a shell agent.", steps=steps(12), path="t1")
    samples = build_samples([trajectory], 2, max_prompt_tokens=2048, count_tokens=lambda text: len(text) // 4)
    assert samples and any(s.task_cut for s in samples)
    for s in samples:
        covered = trajectory.steps[:s.cutoff]
        assert memory_input(s) == summary_input(TASK, covered, context=2048 + 256, max_summary_tokens=256)
        assert s.history == covered[s.history_start:] and request_tokens(memory_input(s)) <= 2048


def test_a_tokenizer_that_counts_more_than_the_estimate_is_obeyed():
    """Code can take more than a token per 3 characters: where the backend knows its tokenizer, the
    request fits by the tokenizer's count too (here one token per character)."""
    many = steps(12)
    dense = summary_input(ISSUE, many, context=4096, max_summary_tokens=256, count_tokens=len)
    estimated = summary_input(ISSUE, many, context=4096, max_summary_tokens=256)
    assert sum(len(m["content"]) + 8 for m in dense) + 64 <= 4096 - 256 < sum(len(m["content"]) + 8 for m in estimated) + 64
    assert shown(dense)[-1] == shown(estimated)[-1] == 11  # the newest step is always there
