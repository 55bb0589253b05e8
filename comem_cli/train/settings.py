"""The settings of `comem train-memory` and of its training stages, as pydantic models (no torch here:
the command line reads the defaults for its --help).

- `TrainSettings`: every option of `comem train-memory`, its default and its bounds, declared once.
  The command's options default to None ("not given") and the model fills in the rest
  (`train_settings`); `--help` reads the defaults from here (`train_default`).
- `GRPOSettings`: the hyper-parameters of `grpo.train_grpo`.
- `SFTSettings`: the hyper-parameters of `sft.train_sft`.

A value out of bounds is a `UserError` with one line naming the flag (`settings_error`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from comem_cli.config import DEFAULT_SUMMARY_CAP, default_of, memory_default
from comem_cli.errors import UserError

Reward = Literal["action", "recall"]
Stage = Literal["sft", "grpo"]
REWARDS: tuple[str, ...] = get_args(Reward)
STAGES: tuple[str, ...] = get_args(Stage)


class TrainSettings(BaseModel):
    """`comem train-memory`: one field per option (the option is the field's name, `-` for `_`)."""

    model_config = ConfigDict(extra="forbid")

    # inputs and outputs
    rollouts: list[Path] = []  # none: the bundled sample of real runs
    output: Path = Path("memory-model")
    base_model: str | None = None
    # the stages
    stage: Stage | None = None  # None: SFT when there are pairs for it (a teacher, recorded summaries), then GRPO
    reward: Reward | None = None  # None: action with a policy model, else recall (`grpo_reward`)
    policy_model: str | None = None
    policy_api_base: str | None = None
    teacher: str | None = None
    teacher_api_base: str | None = None
    # samples
    k: int = Field(memory_default("k"), ge=1)
    only_resolved: bool = False
    max_history_tokens: int | None = Field(16_000, ge=1)
    max_prompt_tokens: int | None = Field(None, ge=64)  # None: the base model's context minus max_summary_tokens
    max_per_trajectory: int | None = Field(None, ge=1)
    max_summary_tokens: int = Field(DEFAULT_SUMMARY_CAP, ge=8)
    # optimization
    group_size: int = Field(16, ge=2)
    lr: float = Field(1e-6, gt=0)
    kl: float = Field(0.01, ge=0)
    steps: int = Field(100, ge=1)
    sft_steps: int | None = Field(None, ge=1)  # None: steps
    sft_lr: float | None = Field(None, gt=0)  # None: lr, at least 1e-5
    lora: bool = False
    save_every: int = Field(50, ge=1)
    resume: bool = False
    seed: int = 0
    threads: int | None = Field(None, ge=1)
    # the held-out evaluation
    eval_fraction: float = Field(0.2, ge=0.0, le=0.9)
    eval_trajectories: list[Path] = []  # none: the eval_fraction split of the rollouts' tasks
    eval_samples: int = Field(8, ge=0)
    dry_run: bool = False

    @property
    def grpo_reward(self) -> Reward:
        """The reward GRPO trains on: --reward, else action with a policy model and recall without."""
        return self.reward or ("action" if self.policy_model else "recall")

    @property
    def sft_steps_used(self) -> int:
        return self.sft_steps or self.steps

    @property
    def sft_lr_used(self) -> float:
        return self.sft_lr or max(self.lr, 1e-5)


def train_default(field: str) -> Any:
    """A TrainSettings field's default, for the --help of the option that sets it (declared once, in the model)."""
    return default_of(TrainSettings, field)


def train_choices(field: str) -> tuple[str, ...]:
    """The values of a TrainSettings choice field (its Literal, None left out), for --help."""
    return tuple(v for arg in get_args(TrainSettings.model_fields[field].annotation) for v in get_args(arg))


def train_settings(given: dict[str, Any]) -> TrainSettings:
    """The settings of a run: the options `given` over the model's defaults (an option given as None
    was not given: the default holds); a value out of bounds is a UserError of one line."""
    try:
        return TrainSettings(**{name: value for name, value in given.items() if value is not None})
    except ValidationError as e:
        raise UserError(settings_error(e)) from None


BOUNDS = {"greater_than_equal": "at least", "less_than_equal": "at most", "greater_than": "more than",
          "less_than": "less than"}


def settings_error(error: ValidationError) -> str:
    """A settings model's ValidationError in one line, each field named as its flag:
    `--eval-fraction must be at most 0.9 (got 5.0)`, `--reward must be one of action, recall (got 'nope')`."""
    parts = []
    for item in error.errors():
        flag = "--" + str(item["loc"][0]).replace("_", "-") if item["loc"] else "a setting"
        kind, ctx = item["type"], item.get("ctx") or {}
        if kind == "extra_forbidden":
            parts.append(f"{flag} is not a setting")
            continue
        if kind == "literal_error":
            what = "must be one of " + ", ".join(re.findall(r"'([^']*)'", str(ctx.get("expected", ""))))
        elif kind in BOUNDS:
            what = f"must be {BOUNDS[kind]} {next(iter(ctx.values()))}"
        else:
            what = "is invalid: " + " ".join(str(item["msg"]).split())
        parts.append(f"{flag} {what} (got {item.get('input')!r})")
    return "; ".join(parts)


class GRPOSettings(BaseModel):
    """The hyper-parameters of `grpo.train_grpo` (the data, the model paths and the callbacks are its arguments).

    One optimizer step = `prompts_per_step` samples x `group_size` summaries (split into micro
    batches of `micro_batch_size` completions; None: all at once). `eval_max_samples` caps the
    held-out samples scored before and after (greedy summaries), drawn with `seed` (None: all).
    `use_vllm=None`: when CUDA and vllm are both available. `garbage_reward`: the reward of a summary
    the pipeline would reject, without asking the policy (None: the policy scores it like any other).
    `reward`: "action" (a policy acts on each summary) or "recall" (no policy)."""

    model_config = ConfigDict(extra="forbid")

    reward: Reward = "action"
    group_size: int = Field(16, ge=2)  # GRPO compares summaries within a group
    lr: float = 1e-6
    kl: float = Field(0.01, ge=0)
    max_summary_tokens: int = Field(2048, ge=1)
    steps: int = Field(100, ge=1)
    lora: bool = False
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    save_every: int = 50
    keep_checkpoints: int | None = Field(2, ge=1)
    resume: bool = False
    seed: int = 0
    prompts_per_step: int = Field(1, ge=1)
    micro_batch_size: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, gt=0)
    garbage_reward: float | None = 0.0
    eval_before: bool = True
    eval_max_samples: int | None = Field(64, ge=0)
    eval_batch_size: int = Field(8, ge=1)
    use_vllm: bool | None = None
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=1)
    logging_steps: int = Field(1, ge=1)


class SFTSettings(BaseModel):
    """The hyper-parameters of `sft.train_sft`. `max_length` (tokens of prompt + summary) drops longer
    pairs rather than truncating them (None: keep all)."""

    model_config = ConfigDict(extra="forbid")

    lr: float = 1e-5
    steps: int = Field(100, ge=1)
    lora: bool = False
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_length: int | None = Field(None, ge=1)
    save_every: int = 50
    keep_checkpoints: int | None = Field(2, ge=1)
    resume: bool = False
    seed: int = 0
