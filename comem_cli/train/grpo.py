"""GRPO on the memory model (docs/design.md, section 6), with trl's `GRPOTrainer`.

One dataset row per sample: the prompt is the memory model's input (`samples.memory_input`, chat
messages), plus the sample's index. For every prompt trl draws a group of G summaries
(`group_size`); each summary is put into the view the agent would have seen
(`samples.policy_view`), the frozen policy proposes the next action from it, and the reward is
`reward.action_reward(proposal, sample.target_action)` in [0, 1]. trl normalizes the rewards within
each group (reward minus the group mean, over the group std) into advantages and adds the KL to
the reference model, weighted by `kl` (trl's `beta`).

With `reward="recall"` no policy is needed: the reward is `memory.quality.recall_reward` of the
summary against the sample's covered steps and the actions after its cut-off (`later_actions`),
the very scores `comem bench memory` reports; a summary that ran to `max_summary_tokens` counts as
cut. Only one sample per cut-off with facts to recall is trained on (`recall_samples`).

A summary the inference pipeline would reject (`transcript.looks_like_summary`: too short, or not
text) is never shown to the agent in a run, so it gets `garbage_reward` (0.0) without asking the
policy. A view too long for the policy's context scores 0.0 too (counted in the log as
`policy_overflow`); any other policy failure (`policy.PolicyError`) stops training.

Generation: vLLM (trl `use_vllm`, colocated) when CUDA and vllm are available, transformers
otherwise. LoRA (`lora=True`, peft, all linear layers) or full fine-tuning.

Layout of `output_dir`:

    final/              Hugging Face checkpoint (LoRA merged into the weights; tokenizer too):
                        plain `from_pretrained` loads it, so every memory backend does
    train_report.json   config, per-step reward mean / std, loss, KL, eval reward before / after
    reward_curve.png    reward (mean +- std) per step, eval before / after, loss and KL
    checkpoints/        trl checkpoints every `save_every` steps and at the end (`checkpoint-N`),
                        `--resume` continues from the newest complete one

`final/`, the report and the curve are replaced only at the very end of a successful run (see
common.py, shared with the SFT stage): a run that fails or is interrupted leaves the previous ones
intact.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from comem_cli.devices import cuda_available
from comem_cli.memory.hf import NoRepeatInReply, chat_ids
from comem_cli.rollouts import atomic_write_bytes, atomic_write_json
from comem_cli.train.common import (
    CHECKPOINTS,
    FINAL,
    bf16_compute,
    cleanup_tmp,
    eos_ids,
    load_for_training,
    lora_config,
    no_activation_checkpointing,
    prepare_output,
    publish_final,
    quiet_progress,
    resume_checkpoint,
    vllm_available,
)
from comem_cli.train.samples import Sample, memory_input, policy_view
from comem_cli.train.settings import REWARDS, GRPOSettings
from comem_cli.trajectories import Step

__all__ = ["REWARDS", "GRPOSettings", "evaluate_reward", "evaluate_rewards", "generate_summaries", "recall_samples",
           "train_grpo", "write_reward_curve"]

REPORT = "train_report.json"
CURVE = "reward_curve.png"
STATE = "comem_grpo.json"  # in checkpoints/: what a resumed run needs that trl does not keep


# ---------------------------------------------------------------------------------------------
# Evaluation (greedy summaries -> policy -> reward)


def _completion_text(completion: Any) -> str:
    if isinstance(completion, list):  # conversational: [{"role": "assistant", "content": ...}]
        return "".join(str(m.get("content") or "") for m in completion if isinstance(m, dict))
    return str(completion)


def generate_summaries(model: Any, tokenizer: Any, samples: Sequence[Sample], max_summary_tokens: int, *,
                       batch_size: int = 8, prompt_fn: Callable[[Sample], list[dict[str, str]]] = memory_input,
                       on_progress: Callable[[int, int], None] | None = None) -> list[str]:
    """Greedy summaries of `samples` with transformers (left-padded batches), decoded as the transformers
    backend decodes (`NoRepeatInReply`); `on_progress(done, total)` after each batch."""
    import torch
    from transformers import LogitsProcessorList

    device = next(model.parameters()).device
    stop = eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop[0] if stop else 0)
    was_training = model.training
    model.eval()
    out: list[str] = []
    try:
        for start in range(0, len(samples), batch_size):
            prompts = [chat_ids(tokenizer, prompt_fn(s)) for s in samples[start:start + batch_size]]
            width = max(len(p) for p in prompts)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
            with torch.inference_mode():
                gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_summary_tokens,
                                     do_sample=False, eos_token_id=stop or None, pad_token_id=pad,
                                     temperature=None, top_p=None, top_k=None,
                                     logits_processor=LogitsProcessorList([NoRepeatInReply(width)]))
            out.extend(tokenizer.decode(row[width:], skip_special_tokens=True) for row in gen)
            if on_progress is not None:
                on_progress(len(out), len(samples))
    finally:
        model.train(was_training)
    return out


class _Scorer:
    """summaries -> rewards through the policy, with a cache of (sample, summary) answers."""

    def __init__(self, policy: Any, garbage_reward: float | None = 0.0, cache_size: int = 100_000):
        self.policy = policy
        self.garbage_reward = garbage_reward
        self.cache: dict[tuple[int, str], float] = {}
        self.cache_size = cache_size
        self.overflows = 0
        self.garbage = 0
        self.calls = 0

    def totals(self) -> dict[str, int]:
        """What the report and each step's log count."""
        return {"policy_calls": self.calls, "policy_overflows": self.overflows, "garbage_summaries": self.garbage}

    def __call__(self, samples: Sequence[Sample], summaries: Sequence[str], keys: Sequence[int],
                 lengths: Sequence[int] | None = None) -> list[float]:
        from comem_cli.memory.transcript import looks_like_summary
        from comem_cli.reward import action_reward

        rewards: list[float | None] = [None] * len(summaries)
        todo: dict[tuple[int, str], list[int]] = {}
        for n, (sample, summary, key) in enumerate(zip(samples, summaries, keys)):
            if self.garbage_reward is not None and not looks_like_summary(summary):
                rewards[n] = self.garbage_reward
                self.garbage += 1
            elif (key, summary) in self.cache:
                rewards[n] = self.cache[(key, summary)]
            else:
                todo.setdefault((key, summary), []).append(n)
        if todo:
            order = list(todo)
            views = [policy_view(samples[todo[k][0]], k[1]) for k in order]
            many = getattr(self.policy, "propose_many", None)
            if many is not None:
                replies = many(views, skip_overflow=True)
            else:
                replies = [self.policy.propose(v) for v in views]
            self.calls += len(views)
            if len(self.cache) > self.cache_size:
                self.cache.clear()
            for k, reply in zip(order, replies):
                if reply is None:
                    self.overflows += 1
                    value = 0.0
                else:
                    value = action_reward(reply, samples[todo[k][0]].target_action)
                    self.cache[k] = value
                for n in todo[k]:
                    rewards[n] = value
        return [float(r) for r in rewards]  # type: ignore[arg-type]


class _RecallScorer:
    """summaries -> `quality.recall_reward` (no model): the summary against the sample's covered
    steps and the actions after its cut-off; `lengths` (tokens) tell a summary cut at the cap."""

    def __init__(self, max_summary_tokens: int):
        self.max_summary_tokens = max_summary_tokens
        self.cut = 0

    def totals(self) -> dict[str, int]:
        return {"cut_summaries": self.cut}

    def __call__(self, samples: Sequence[Sample], summaries: Sequence[str], keys: Sequence[int],
                 lengths: Sequence[int] | None = None) -> list[float]:
        from comem_cli.memory.quality import recall_reward, score

        rewards = []
        for n, (sample, summary) in enumerate(zip(samples, summaries)):
            cut = lengths is not None and lengths[n] >= self.max_summary_tokens
            self.cut += cut
            value = recall_reward(score(summary, sample.history, _later(sample)), cut=cut)
            rewards.append(0.0 if value is None else float(value))
        return rewards


def _later(sample: Sample) -> list[Step]:
    return [Step(response="", action=action) for action in sample.later_actions]


def recall_samples(samples: Sequence[Sample]) -> list[Sample]:
    """What `reward="recall"` trains on: one sample per cut-off (the lags of one cut-off share their
    prompt and their reward), only those whose covered steps hold facts to recall."""
    from comem_cli.memory.quality import recall_reward, score

    seen: set[tuple[str, int]] = set()
    kept = []
    for sample in samples:
        key = (sample.trajectory_id, sample.cutoff)
        if key not in seen:
            seen.add(key)
            if recall_reward(score("", sample.history, _later(sample))) is not None:
                kept.append(sample)
    return kept


def _scorer(reward: str, policy: Any, garbage_reward: float | None, max_summary_tokens: int) -> Any:
    """The reward of a batch of summaries: the policy's actions (`action`) or the recall (`recall`)."""
    from comem_cli.errors import UserError

    if reward == "recall":
        return _RecallScorer(max_summary_tokens)
    if reward != "action":
        raise UserError(f"--reward must be one of {', '.join(REWARDS)} (got {reward!r})")
    if policy is None:
        raise UserError("--reward action needs --policy-model (the frozen policy that acts on each summary)")
    return _Scorer(policy, garbage_reward)


def evaluate_rewards(model_dir_or_model: Any, samples: Sequence[Sample], policy: Any, max_summary_tokens: int, *,
                     tokenizer: Any = None, batch_size: int = 8, garbage_reward: float | None = 0.0,
                     prompt_fn: Callable[[Sample], list[dict[str, str]]] = memory_input, reward: str = "action",
                     on_progress: Callable[[int, int], None] | None = None) -> list[float]:
    """The reward of the greedy summary of each sample (model: a directory / hub id, or a loaded model + tokenizer)."""
    if not samples:
        return []
    if isinstance(model_dir_or_model, (str, os.PathLike)):
        model, tokenizer = load_for_training(model_dir_or_model)
        if cuda_available():
            model = model.to("cuda")
    else:
        model = model_dir_or_model
        if tokenizer is None:
            raise ValueError("evaluate_rewards: pass tokenizer= with a loaded model")
    summaries = generate_summaries(model, tokenizer, samples, max_summary_tokens, batch_size=batch_size, prompt_fn=prompt_fn,
                                   on_progress=on_progress)
    lengths = [len(tokenizer(s, add_special_tokens=False)["input_ids"]) for s in summaries]
    scorer = _scorer(reward, policy, garbage_reward, max_summary_tokens)
    return scorer(samples, summaries, list(range(len(samples))), lengths)


def evaluate_reward(model_dir_or_model: Any, samples: Sequence[Sample], policy: Any, max_summary_tokens: int,
                    **kwargs: Any) -> float:
    """Mean reward of greedy summaries on `samples` (nan when there are none)."""
    rewards = evaluate_rewards(model_dir_or_model, samples, policy, max_summary_tokens, **kwargs)
    return sum(rewards) / len(rewards) if rewards else math.nan


# ---------------------------------------------------------------------------------------------
# Report and curve


def write_reward_curve(report: dict, path: Path) -> None:
    """PNG: reward mean +- std per step with eval before / after; loss and KL below."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    steps = report.get("steps", [])
    x = [s["step"] for s in steps]
    mean = [s.get("reward_mean") for s in steps]
    std = [s.get("reward_std") or 0.0 for s in steps]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    if x:
        top.plot(x, mean, color="tab:blue", label="train reward (group samples)")
        top.fill_between(x, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                         color="tab:blue", alpha=0.15, label="+- std")
    for key, color, label in (("eval_reward_before", "tab:gray", "eval before"), ("eval_reward_after", "tab:green", "eval after")):
        value = report.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            top.axhline(value, color=color, linestyle="--", label=f"{label} ({value:.3f})")
    top.set_ylabel("reward")
    top.set_ylim(-0.02, 1.02)
    top.legend(loc="lower right", fontsize=8)
    top.set_title("comem train-memory: GRPO")
    losses = [(s["step"], s["loss"]) for s in steps if s.get("loss") is not None]
    kls = [(s["step"], s["kl"]) for s in steps if s.get("kl") is not None]
    if losses:
        bottom.plot(*zip(*losses), color="tab:red", label="loss")
    if kls:
        twin = bottom.twinx()
        twin.plot(*zip(*kls), color="tab:purple", linestyle="--", label="KL")
        twin.set_ylabel("KL")
        twin.legend(loc="upper right", fontsize=8)
    bottom.set_xlabel("step")
    bottom.set_ylabel("loss")
    if losses:
        bottom.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=100)
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _step_record(logs: dict, step: int) -> dict | None:
    if "reward" not in logs:
        return None
    record = {"step": step, "reward_mean": logs.get("reward"), "reward_std": logs.get("reward_std"),
              "loss": logs.get("loss"), "kl": logs.get("kl"), "learning_rate": logs.get("learning_rate"),
              "grad_norm": logs.get("grad_norm"), "step_time": logs.get("step_time"), "entropy": logs.get("entropy"),
              "completion_length": logs.get("completions/mean_length"),
              "frac_reward_zero_std": logs.get("frac_reward_zero_std")}
    for key in ("policy_overflow", "garbage_summaries", "policy_calls", "cut_summaries"):
        if key in logs:
            record[key] = logs[key]
    return {k: (float(v) if isinstance(v, (int, float)) and k != "step" else v) for k, v in record.items()}


# ---------------------------------------------------------------------------------------------
# Training


def train_grpo(
    samples_train: Sequence[Sample],
    samples_eval: Sequence[Sample],
    settings: GRPOSettings | None = None,
    *,
    base_model: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    policy: Any = None,
    on_log: Callable[[dict], None] | None = None,
    on_eval: Callable[[int, int], None] | None = None,
    prompt_fn: Callable[[Sample], list[dict[str, str]]] = memory_input,
    progress_bar: bool = False,
    extra_config: dict[str, Any] | None = None,
) -> dict:
    """Train the memory model with GRPO; return the report (also written to output_dir/train_report.json).

    `settings`: the hyper-parameters (`GRPOSettings`, its defaults when None). `policy`: the frozen
    policy of `reward="action"` (none for "recall", which trains on `recall_samples(samples_train)`).
    `on_log(record)` gets every logged step: {"step", "max_steps", "reward_mean", "reward_std",
    "loss", "kl", ...}; `on_eval(done, total)` follows the held-out evaluation.
    `prompt_fn` builds the memory model's prompt from a sample (default `memory_input`, exactly
    what the pipeline sends; tests pass a shorter instruction to stay fast on CPU). `extra_config`
    goes into trl's GRPOConfig over comem's.
    Raises `PolicyError` (the policy failed) or `UserError` (bad input): `final/` is then untouched.
    """
    s = settings if settings is not None else GRPOSettings()
    samples_train, samples_eval = list(samples_train), list(samples_eval)
    scorer = _scorer(s.reward, policy, s.garbage_reward, s.max_summary_tokens)
    if s.reward == "recall":
        samples_train, samples_eval = recall_samples(samples_train), recall_samples(samples_eval)
    total, micro = _check_inputs(samples_train, s.group_size, s.steps, s.prompts_per_step, s.micro_batch_size)
    cuda = cuda_available()
    use_vllm = _use_vllm(s.use_vllm, cuda)
    with quiet_progress(not progress_bar):
        out = prepare_output(output_dir)
        ckpt_dir = out / CHECKPOINTS
        resume_from = resume_checkpoint(ckpt_dir, s.resume)
        saved = json.loads((ckpt_dir / STATE).read_text()) if s.resume and (ckpt_dir / STATE).is_file() else {}
        eval_set = _eval_subset(samples_eval, s.eval_max_samples, s.seed)
        model, tokenizer = load_for_training(base_model)
        if cuda:
            model = model.to("cuda")
        started = time.time()

        def score(m: Any) -> float:
            return evaluate_reward(m, eval_set, policy, s.max_summary_tokens, tokenizer=tokenizer,
                                   batch_size=s.eval_batch_size, garbage_reward=s.garbage_reward, prompt_fn=prompt_fn,
                                   reward=s.reward, on_progress=on_eval)

        before = saved.get("eval_reward_before")
        if before is None and s.eval_before and eval_set:
            before = score(model)
        if not s.resume and ckpt_dir.exists():
            # A fresh run (model and policy are known to work by now): older checkpoints would mix with the new ones.
            shutil.rmtree(ckpt_dir)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        config_record = {
            "base_model": str(base_model), "reward": s.reward,
            "policy": getattr(policy, "name", type(policy).__name__) if policy is not None else None,
            "group_size": s.group_size, "lr": s.lr, "kl": s.kl, "max_summary_tokens": s.max_summary_tokens, "steps": s.steps,
            "lora": s.lora, "lora_r": s.lora_r if s.lora else None, "lora_alpha": s.lora_alpha if s.lora else None,
            "seed": s.seed, "prompts_per_step": s.prompts_per_step, "temperature": s.temperature, "use_vllm": bool(use_vllm),
            "train_samples": len(samples_train), "eval_samples": len(eval_set), "garbage_reward": s.garbage_reward,
        }
        atomic_write_json(ckpt_dir / STATE, {"eval_reward_before": before, "config": config_record})

        dataset = _dataset(samples_train, prompt_fn)
        config = dict(
            output_dir=str(ckpt_dir), max_steps=s.steps, learning_rate=s.lr, beta=s.kl, num_generations=s.group_size,
            max_completion_length=s.max_summary_tokens, per_device_train_batch_size=micro,
            gradient_accumulation_steps=total // micro, temperature=s.temperature, logging_steps=s.logging_steps,
            save_steps=max(1, s.save_every), save_total_limit=s.keep_checkpoints, seed=s.seed, data_seed=s.seed,
            disable_tqdm=not progress_bar,
        )
        if use_vllm:
            config.update(_vllm_settings(model, tokenizer, dataset, s.max_summary_tokens, s.vllm_gpu_memory_utilization))
        config.update(extra_config or {})
        trainer = _trainer(model, tokenizer, dataset, _reward_function(scorer, samples_train), config,
                           cuda=cuda, use_vllm=use_vllm, peft_config=lora_config(s.lora_r, s.lora_alpha) if s.lora else None,
                           on_log=on_log)
        try:
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

            def report(after: float | None) -> dict:
                return {
                    "stage": "grpo",
                    "config": config_record,
                    "eval_reward_before": before,
                    "eval_reward_after": after,
                    "steps_done": trainer.state.global_step,
                    "train_seconds": round(time.time() - started, 1),
                    **scorer.totals(),
                    "final": str(out / FINAL),
                    "checkpoints": str(ckpt_dir),
                    "resumed_from": str(resume_from) if resume_from else None,
                    "steps": _steps_log(trainer.state.log_history),
                }

            return publish_final(trainer.model, tokenizer, out, merge_lora=s.lora, dtype=model.dtype, cuda=cuda,
                                 evaluate=score if eval_set else None, report=report, report_name=REPORT,
                                 also_write=lambda r: write_reward_curve(r, out / CURVE))
        finally:
            cleanup_tmp(out)


def _check_inputs(samples_train: list[Sample], group_size: int, steps: int, prompts_per_step: int,
                  micro_batch_size: int | None) -> tuple[int, int]:
    """(completions per optimizer step, completions per micro batch); UserError on bad input."""
    from comem_cli.errors import UserError

    if not samples_train:
        raise UserError("no training samples")
    if group_size < 2:
        raise UserError(f"--group-size must be at least 2 (GRPO compares summaries within a group), got {group_size}")
    if steps < 1:
        raise UserError(f"--steps must be positive, got {steps}")
    total = group_size * prompts_per_step
    micro = micro_batch_size or total
    if total % micro:
        raise UserError(f"micro batch size {micro} must divide group size x prompts per step = {total}")
    return total, micro


def _use_vllm(wanted: bool | None, cuda: bool) -> bool:
    """Generate with vLLM: when asked, or (None) when CUDA and vllm are both there."""
    if wanted is None:
        return cuda and vllm_available()
    if wanted and not cuda:
        from comem_cli.errors import UserError

        raise UserError("vLLM generation needs a CUDA GPU")
    return bool(wanted)


def _eval_subset(samples_eval: list[Sample], most: int | None, seed: int) -> list[Sample]:
    """The held-out samples scored before and after training: at most `most`, drawn with `seed`."""
    if most is not None and len(samples_eval) > most:
        return random.Random(seed).sample(samples_eval, most)
    return samples_eval


def _dataset(samples_train: list[Sample], prompt_fn: Callable[[Sample], list[dict[str, str]]]) -> Any:
    """One row per sample: the memory model's prompt, and the sample's index (for the reward)."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": prompt_fn(s), "sample_index": i} for i, s in enumerate(samples_train)])


LOGGED = {"policy_overflows": "policy_overflow"}  # a total's name in each step's log, where it differs


def _reward_function(scorer: Any, samples_train: list[Sample]) -> Callable[..., list[float]]:
    """trl's reward function: the summaries of a batch -> rewards (the policy's actions, or the
    recall), logging what the scorer counts in the batch (policy calls, overflows, garbage or cut
    summaries). trl names the function in its logs: `rewards/summary_reward/mean`."""

    def summary_reward(prompts, completions, sample_index, completion_ids=None, log_metric=None, **_: Any) -> list[float]:
        before = scorer.totals()
        rows = [samples_train[i] for i in sample_index]
        lengths = [len(ids) for ids in completion_ids] if completion_ids is not None else None
        rewards = scorer(rows, [_completion_text(c) for c in completions], list(sample_index), lengths)
        if log_metric is not None:
            for key, value in scorer.totals().items():
                log_metric(LOGGED.get(key, key), float(value - before[key]))
        return rewards

    return summary_reward


def _vllm_settings(model: Any, tokenizer: Any, dataset: Any, max_summary_tokens: int, memory_utilization: float) -> dict:
    """Colocated vLLM generation, its KV cache sized for the longest prompt + summary (not the model's context)."""
    longest = max(len(chat_ids(tokenizer, row["prompt"])) for row in dataset)
    limit = getattr(model.config, "max_position_embeddings", None) or (longest + max_summary_tokens)
    return dict(vllm_mode="colocate", vllm_gpu_memory_utilization=memory_utilization,
                vllm_max_model_length=min(int(limit), longest + max_summary_tokens + 16))


def _trainer(model: Any, tokenizer: Any, dataset: Any, reward: Callable, config: dict, *, cuda: bool, use_vllm: bool,
             peft_config: Any, on_log: Callable[[dict], None] | None) -> Any:
    """trl's GRPOTrainer with comem's fixed settings (constant lr, no warm-up, saves every save_steps,
    no reports, CPU or CUDA) over `config`, reporting each logged step to `on_log`."""
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    settings = dict(
        lr_scheduler_type="constant", warmup_steps=0, save_strategy="steps", report_to="none", use_cpu=not cuda,
        bf16=bf16_compute(model, cuda), fp16=False, **no_activation_checkpointing(GRPOConfig),
        remove_unused_columns=False, dataloader_num_workers=0, use_vllm=bool(use_vllm), log_completions=False,
    )
    settings.update(config)

    class _Log(TrainerCallback):
        def on_log(self, args_, state, control, logs=None, **kwargs):
            record = _step_record(logs or {}, state.global_step)
            if record is not None and on_log is not None:
                on_log({**record, "max_steps": state.max_steps})

    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=GRPOConfig(**settings), train_dataset=dataset,
                          processing_class=tokenizer, peft_config=peft_config, callbacks=[_Log()])
    trainer.remove_callback(PrinterCallback)  # no raw log dicts on stdout: on_log is the live view
    return trainer


def _steps_log(history: list[dict]) -> list[dict]:
    """One record per logged step, from trl's log history (restored from the checkpoint on --resume)."""
    steps: dict[int, dict] = {}
    for entry in history:
        record = _step_record(entry, int(entry.get("step", 0)))
        if record is not None:
            steps[record["step"]] = record
    return [steps[k] for k in sorted(steps)]
