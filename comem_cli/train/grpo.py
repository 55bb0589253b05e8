"""GRPO on the memory model (SPEC 4), with trl's `GRPOTrainer`.

One dataset row per sample: the prompt is the memory model's input (`samples.memory_input`, chat
messages), plus the sample's index. For every prompt trl draws a group of G summaries
(`group_size`); each summary is put into the view the agent would have seen
(`samples.policy_view`), the frozen policy proposes the next action from it, and the reward is
`reward.action_reward(proposal, sample.target_action)` in [0, 1]. trl normalizes the rewards within
each group (reward minus the group mean, over the group std) into advantages and adds the KL to
the reference model, weighted by `kl` (trl's `beta`).

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

`final/`, the report and the curve are replaced only at the very end of a successful run (written
to temporary siblings, then renamed): a run that fails or is interrupted leaves the previous ones
intact. Only `checkpoints/` may gain complete checkpoints of the failed run (to resume from).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from comem_cli.train.samples import Sample, memory_input, policy_view

__all__ = ["evaluate_reward", "evaluate_rewards", "generate_summaries", "train_grpo", "write_reward_curve"]

CHECKPOINTS = "checkpoints"
FINAL = "final"
REPORT = "train_report.json"
CURVE = "reward_curve.png"
STATE = "comem_grpo.json"  # in checkpoints/: what a resumed run needs that trl does not keep


# ---------------------------------------------------------------------------------------------
# Helpers shared with sft.py


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def load_for_training(base_model: str | os.PathLike[str]) -> tuple[Any, Any]:
    """(model, tokenizer) to train: float32 on CPU, bfloat16 on CUDA; left padding; a chat template required."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from comem_cli.errors import UserError

    name = str(base_model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        dtype = torch.bfloat16 if cuda_available() and torch.cuda.is_bf16_supported() else torch.float32
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load base model {name!r}: {first[:200]}") from None
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"base model {name!r} has no chat template: the memory model is prompted with chat messages")
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def chat_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Prompt token ids through the chat template (transformers 5 returns a BatchEncoding)."""
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(out, "keys") and "input_ids" in out:
        out = out["input_ids"]
    return list(out)


def replace_dir(tmp: Path, target: Path) -> None:
    """Put the complete directory `tmp` at `target`, replacing what was there (rename, never a half state)."""
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}-{int(time.time() * 1000)}"
        os.rename(target, old)
    os.rename(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_final(model: Any, tokenizer: Any, output_dir: Path, *, merge_lora: bool) -> Path:
    """Save model + tokenizer into a temporary sibling of output_dir/final (renamed later by `commit_final`)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{FINAL}.tmp-", dir=output_dir))
    if merge_lora and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model = getattr(model, "module", model)
    model.config.use_cache = True
    model.save_pretrained(tmp, safe_serialization=True)
    padding = tokenizer.padding_side
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(tmp)
    tokenizer.padding_side = padding
    return tmp


@contextlib.contextmanager
def quiet_progress(quiet: bool = True):
    """Hide transformers' / datasets' own progress bars (loading, saving, tokenizing) while training:
    the caller shows progress through `on_log`. Restores the previous settings."""
    if not quiet:
        yield
        return
    import datasets.utils.logging as dl
    import transformers.utils.logging as tl

    was = (tl.is_progress_bar_enabled(), dl.is_progress_bar_enabled())
    tl.disable_progress_bar()
    dl.disable_progress_bar()
    try:
        yield
    finally:
        if was[0]:
            tl.enable_progress_bar()
        if was[1]:
            dl.enable_progress_bar()


def reload_final(path: Path, dtype: Any, cuda: bool) -> Any:
    """The just-saved final checkpoint, loaded as every backend will load it (for the after-eval)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.to("cuda") if cuda else model


def cleanup_tmp(output_dir: Path) -> None:
    for tmp in output_dir.glob(f".{FINAL}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Evaluation (greedy summaries -> policy -> reward)


def _completion_text(completion: Any) -> str:
    if isinstance(completion, list):  # conversational: [{"role": "assistant", "content": ...}]
        return "".join(str(m.get("content") or "") for m in completion if isinstance(m, dict))
    return str(completion)


def generate_summaries(model: Any, tokenizer: Any, samples: Sequence[Sample], max_summary_tokens: int, *,
                       batch_size: int = 8, prompt_fn: Callable[[Sample], list[dict[str, str]]] = memory_input) -> list[str]:
    """Greedy summaries of `samples` with transformers (left-padded batches)."""
    import torch

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
                                     temperature=None, top_p=None, top_k=None)
            out.extend(tokenizer.decode(row[width:], skip_special_tokens=True) for row in gen)
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

    def __call__(self, samples: Sequence[Sample], summaries: Sequence[str], keys: Sequence[int]) -> list[float]:
        from comem_cli.memory.transcript import looks_like_summary
        from comem_cli.train.reward import action_reward

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


def evaluate_rewards(model_dir_or_model: Any, samples: Sequence[Sample], policy: Any, max_summary_tokens: int, *,
                     tokenizer: Any = None, batch_size: int = 8, garbage_reward: float | None = 0.0,
                     prompt_fn: Callable[[Sample], list[dict[str, str]]] = memory_input) -> list[float]:
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
    summaries = generate_summaries(model, tokenizer, samples, max_summary_tokens, batch_size=batch_size, prompt_fn=prompt_fn)
    return _Scorer(policy, garbage_reward)(samples, summaries, list(range(len(samples))))


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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)


def _step_record(logs: dict, step: int) -> dict | None:
    if "reward" not in logs:
        return None
    record = {"step": step, "reward_mean": logs.get("reward"), "reward_std": logs.get("reward_std"),
              "loss": logs.get("loss"), "kl": logs.get("kl"), "learning_rate": logs.get("learning_rate"),
              "grad_norm": logs.get("grad_norm"), "step_time": logs.get("step_time"), "entropy": logs.get("entropy"),
              "completion_length": logs.get("completions/mean_length"),
              "frac_reward_zero_std": logs.get("frac_reward_zero_std")}
    for key in ("policy_overflow", "garbage_summaries", "policy_calls"):
        if key in logs:
            record[key] = logs[key]
    return {k: (float(v) if isinstance(v, (int, float)) and k != "step" else v) for k, v in record.items()}


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest `checkpoint-N` holding a trainer_state.json (a save cut short lacks it)."""
    if not folder.is_dir():
        return None
    found = []
    for p in folder.iterdir():
        if p.is_dir() and p.name.startswith("checkpoint-") and p.name[11:].isdigit() and (p / "trainer_state.json").is_file():
            found.append((int(p.name[11:]), p))
    return max(found)[1] if found else None


# ---------------------------------------------------------------------------------------------
# Training


def train_grpo(
    samples_train: Sequence[Sample],
    samples_eval: Sequence[Sample],
    *,
    base_model: str | os.PathLike[str],
    policy: Any,
    output_dir: str | os.PathLike[str],
    group_size: int = 16,
    lr: float = 1e-6,
    kl: float = 0.01,
    max_summary_tokens: int = 2048,
    steps: int = 100,
    lora: bool = False,
    lora_r: int = 16,
    lora_alpha: int = 32,
    save_every: int = 50,
    keep_checkpoints: int | None = 2,
    resume: bool = False,
    seed: int = 0,
    on_log: Callable[[dict], None] | None = None,
    prompts_per_step: int = 1,
    micro_batch_size: int | None = None,
    temperature: float = 1.0,
    garbage_reward: float | None = 0.0,
    eval_before: bool = True,
    eval_max_samples: int | None = 64,
    eval_batch_size: int = 8,
    use_vllm: bool | None = None,
    vllm_gpu_memory_utilization: float = 0.3,
    logging_steps: int = 1,
    progress_bar: bool = False,
    extra_config: dict[str, Any] | None = None,
    prompt_fn: Callable[[Sample], list[dict[str, str]]] = memory_input,
) -> dict:
    """Train the memory model with GRPO; return the report (also written to output_dir/train_report.json).

    One optimizer step = `prompts_per_step` samples x `group_size` summaries (split into micro
    batches of `micro_batch_size` completions, default all at once). `eval_max_samples` caps the
    held-out samples scored before and after (greedy summaries), drawn with `seed`.
    `use_vllm=None` means: when CUDA and vllm are both available. `on_log(record)` gets every
    logged step: {"step", "max_steps", "reward_mean", "reward_std", "loss", "kl", ...}.
    `prompt_fn` builds the memory model's prompt from a sample (default `memory_input`, exactly
    what the pipeline sends; tests pass a shorter instruction to stay fast on CPU).
    Raises `PolicyError` (the policy failed) or `UserError` (bad input): `final/` is then untouched.
    """
    args = dict(locals())
    with quiet_progress(not progress_bar):
        return _train_grpo(**args)


def _train_grpo(samples_train, samples_eval, *, base_model, policy, output_dir, group_size, lr, kl, max_summary_tokens,
                steps, lora, lora_r, lora_alpha, save_every, keep_checkpoints, resume, seed, on_log, prompts_per_step,
                micro_batch_size, temperature, garbage_reward, eval_before, eval_max_samples, eval_batch_size,
                use_vllm, vllm_gpu_memory_utilization, logging_steps, progress_bar, extra_config, prompt_fn) -> dict:
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from comem_cli.errors import UserError

    if not samples_train:
        raise UserError("no training samples")
    if group_size < 2:
        raise UserError(f"--group-size must be at least 2 (GRPO compares summaries within a group), got {group_size}")
    if steps < 1:
        raise UserError(f"--steps must be positive, got {steps}")
    samples_train, samples_eval = list(samples_train), list(samples_eval)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cleanup_tmp(out)
    ckpt_dir = out / CHECKPOINTS
    state_path = ckpt_dir / STATE
    resume_from = None
    saved_state: dict = {}
    if resume:
        resume_from = last_complete_checkpoint(ckpt_dir)
        if resume_from is None:
            raise UserError(f"--resume: no complete checkpoint under {ckpt_dir}")
        if state_path.is_file():
            saved_state = json.loads(state_path.read_text())
    total = group_size * prompts_per_step
    micro = micro_batch_size or total
    if total % micro:
        raise UserError(f"micro batch size {micro} must divide group size x prompts per step = {total}")

    cuda = cuda_available()
    if use_vllm is None:
        use_vllm = cuda and vllm_available()
    if use_vllm and not cuda:
        raise UserError("vLLM generation needs a CUDA GPU")

    eval_set = samples_eval
    if eval_max_samples is not None and len(eval_set) > eval_max_samples:
        eval_set = random.Random(seed).sample(eval_set, eval_max_samples)

    model, tokenizer = load_for_training(base_model)
    if cuda:
        model = model.to("cuda")
    started = time.time()
    before = saved_state.get("eval_reward_before")
    if before is None and eval_before and eval_set:
        before = evaluate_reward(model, eval_set, policy, max_summary_tokens, tokenizer=tokenizer,
                                 batch_size=eval_batch_size, garbage_reward=garbage_reward, prompt_fn=prompt_fn)
    if not resume and ckpt_dir.exists():
        # A fresh run (model and policy are known to work by now): older checkpoints would mix with the new ones.
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    config_record = {
        "base_model": str(base_model), "policy": getattr(policy, "name", type(policy).__name__),
        "group_size": group_size, "lr": lr, "kl": kl, "max_summary_tokens": max_summary_tokens, "steps": steps,
        "lora": lora, "lora_r": lora_r if lora else None, "lora_alpha": lora_alpha if lora else None,
        "seed": seed, "prompts_per_step": prompts_per_step, "temperature": temperature, "use_vllm": bool(use_vllm),
        "train_samples": len(samples_train), "eval_samples": len(eval_set), "garbage_reward": garbage_reward,
    }
    write_atomic(state_path, json.dumps({"eval_reward_before": before, "config": config_record}, indent=2).encode())

    scorer = _Scorer(policy, garbage_reward)

    def action_reward(prompts, completions, sample_index, log_metric=None, **_: Any) -> list[float]:
        overflows, garbage, calls = scorer.overflows, scorer.garbage, scorer.calls
        rows = [samples_train[i] for i in sample_index]
        rewards = scorer(rows, [_completion_text(c) for c in completions], list(sample_index))
        if log_metric is not None:
            log_metric("policy_overflow", float(scorer.overflows - overflows))
            log_metric("garbage_summaries", float(scorer.garbage - garbage))
            log_metric("policy_calls", float(scorer.calls - calls))
        return rewards

    dataset = Dataset.from_list([{"prompt": prompt_fn(s), "sample_index": i} for i, s in enumerate(samples_train)])

    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    bf16 = bool(cuda and model.dtype == torch.bfloat16)
    config_kwargs: dict[str, Any] = dict(
        output_dir=str(ckpt_dir),
        max_steps=steps,
        learning_rate=lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        beta=kl,
        num_generations=group_size,
        max_completion_length=max_summary_tokens,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=total // micro,
        temperature=temperature,
        logging_steps=logging_steps,
        save_strategy="steps",
        save_steps=max(1, save_every),
        save_total_limit=keep_checkpoints,
        seed=seed,
        data_seed=seed,
        report_to="none",
        use_cpu=not cuda,
        bf16=bf16,
        fp16=False,
        gradient_checkpointing=False,
        disable_tqdm=not progress_bar,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_vllm=bool(use_vllm),
        log_completions=False,
    )
    if use_vllm:
        # vLLM sizes its KV cache for the model's context unless told: the longest prompt + summary is enough
        longest = max(len(chat_ids(tokenizer, row["prompt"])) for row in dataset)
        limit = getattr(model.config, "max_position_embeddings", None) or (longest + max_summary_tokens)
        config_kwargs.update(vllm_mode="colocate", vllm_gpu_memory_utilization=vllm_gpu_memory_utilization,
                             vllm_max_model_length=min(int(limit), longest + max_summary_tokens + 16))
    config_kwargs.update(extra_config or {})
    args = GRPOConfig(**config_kwargs)

    class _Log(TrainerCallback):
        def on_log(self, args_, state, control, logs=None, **kwargs):
            record = _step_record(logs or {}, state.global_step)
            if record is not None and on_log is not None:
                on_log({**record, "max_steps": state.max_steps})

    trainer = GRPOTrainer(model=model, reward_funcs=action_reward, args=args, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=peft_config, callbacks=[_Log()])
    trainer.remove_callback(PrinterCallback)  # no raw log dicts on stdout: on_log is the live view
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        trained = trainer.model
        tmp_final = save_final(trained, tokenizer, out, merge_lora=lora)
        try:
            after = None
            if eval_set:
                final_model = reload_final(tmp_final, model.dtype, cuda)
                after = evaluate_reward(final_model, eval_set, policy, max_summary_tokens, tokenizer=tokenizer,
                                        batch_size=eval_batch_size, garbage_reward=garbage_reward, prompt_fn=prompt_fn)
            steps_log: dict[int, dict] = {}
            for entry in trainer.state.log_history:  # restored from the checkpoint on --resume
                record = _step_record(entry, int(entry.get("step", 0)))
                if record is not None:
                    steps_log[record["step"]] = record
            report = {
                "stage": "grpo",
                "config": config_record,
                "eval_reward_before": before,
                "eval_reward_after": after,
                "steps_done": trainer.state.global_step,
                "train_seconds": round(time.time() - started, 1),
                "policy_calls": scorer.calls,
                "policy_overflows": scorer.overflows,
                "garbage_summaries": scorer.garbage,
                "final": str(out / FINAL),
                "checkpoints": str(ckpt_dir),
                "resumed_from": str(resume_from) if resume_from else None,
                "steps": [steps_log[k] for k in sorted(steps_log)],
            }
            write_reward_curve(report, out / CURVE)
            write_atomic(out / REPORT, (json.dumps(report, indent=2) + "\n").encode())
            replace_dir(tmp_final, out / FINAL)
        except BaseException:
            shutil.rmtree(tmp_final, ignore_errors=True)
            raise
    finally:
        cleanup_tmp(out)
    return report
