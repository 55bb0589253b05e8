"""`comem train-memory`'s settings (train/settings.py): every option is a TrainSettings field whose
default and bounds live in the model only; the command's options default to None (not given) and
--help reads the defaults from the model; a bad value is one line and exit 2. No torch needed."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from comem_cli import cli
from comem_cli.errors import UserError
from comem_cli.train.settings import GRPOSettings, SFTSettings, TrainSettings, train_choices, train_default, train_settings
from tests.conftest import run_cli
from tests.test_bad_input import assert_clean_error


def options() -> dict[str, object]:
    return {name: p.default for name, p in inspect.signature(cli.train_memory).parameters.items()}


def test_every_option_is_a_settings_field_and_defaults_to_not_given():
    assert set(options()) == set(TrainSettings.model_fields)
    assert {name: info.default for name, info in options().items() if info.default is not None} == {}


def test_options_not_given_leave_the_model_defaults():
    settings = train_settings({name: None for name in options()})
    assert settings == TrainSettings()
    assert settings.k == train_default("k") == 2 and settings.output == Path("memory-model") and settings.rollouts == []
    assert settings.grpo_reward == "recall" and settings.sft_steps_used == 100 and settings.sft_lr_used == 1e-5
    given = train_settings({"lr": 1e-3, "steps": 7, "lora": True, "policy_model": "openai/p", "resume": None})
    assert (given.lr, given.steps, given.lora, given.resume, given.grpo_reward) == (1e-3, 7, True, False, "action")
    assert (given.sft_steps_used, given.sft_lr_used) == (7, 1e-3)
    assert train_choices("reward") == ("action", "recall") and train_choices("stage") == ("sft", "grpo")


@pytest.mark.parametrize("given, message", [
    ({"reward": "nope"}, "--reward must be one of action, recall (got 'nope')"),
    ({"stage": "rl"}, "--stage must be one of sft, grpo (got 'rl')"),
    ({"eval_fraction": 5.0}, "--eval-fraction must be at most 0.9 (got 5.0)"),
    ({"group_size": 1, "k": 0}, "--k must be at least 1 (got 0); --group-size must be at least 2 (got 1)"),
    ({"lr": 0.0}, "--lr must be more than 0"),
    ({"max_prompt_tokens": 10}, "--max-prompt-tokens must be at least 64 (got 10)"),
    ({"max_history_tokens": 0}, "--max-history-tokens must be at least 1 (got 0)"),
    ({"bogus": 1}, "--bogus is not a setting"),
])
def test_bad_values_are_one_line_user_errors(given, message):
    with pytest.raises(UserError) as err:
        train_settings(given)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_stage_settings_have_the_former_defaults():
    grpo = GRPOSettings()
    assert (grpo.reward, grpo.group_size, grpo.lr, grpo.kl, grpo.max_summary_tokens, grpo.steps, grpo.save_every,
            grpo.keep_checkpoints, grpo.eval_max_samples, grpo.use_vllm, grpo.garbage_reward) == \
        ("action", 16, 1e-6, 0.01, 2048, 100, 50, 2, 64, None, 0.0)
    sft = SFTSettings()
    assert (sft.lr, sft.steps, sft.batch_size, sft.grad_accum, sft.max_length, sft.keep_checkpoints) == (1e-5, 100, 4, 1, None, 2)


def test_help_shows_the_defaults_and_the_choices():
    r = run_cli("train-memory", "--help", env={"COLUMNS": "400", "NO_COLOR": "1"})
    assert r.returncode == 0, r.stderr
    for text in ("GRPO learning rate. (default: 1e-06)", "(default: 16)", "(default: 1024)", "(default: 0.2)",
                 "(default: --full)", "(default: --no-resume)", "(default: memory-model)", "[action|recall]", "[sft|grpo]"):
        assert text in r.stdout, text


def test_bad_values_through_the_command_line():
    assert_clean_error(run_cli("train-memory", "--reward", "nope", "--dry-run"), "--reward must be one of action, recall")
    assert_clean_error(run_cli("train-memory", "--eval-fraction", "5", "--dry-run"), "--eval-fraction must be at most 0.9")
    assert_clean_error(run_cli("train-memory", "--stage", "rl", "--dry-run"), "--stage must be one of sft, grpo")
