"""SFT warm-up of the memory model on teacher summaries (docs/design.md, section 6), with trl's `SFTTrainer`.

`teacher_summaries(samples, teacher_model)` asks a teacher (any litellm model) for the summary of
each sample's memory input, i.e. exactly the messages the memory model is sent
(`samples.memory_input`), and returns `(messages, summary)` pairs; replies the inference pipeline
would reject (`transcript.looks_like_summary`) are dropped. `train_sft(pairs, settings, ...)` fine-tunes the
base model on them in trl's conversational prompt-completion format (loss on the summary only).

`recorded_summaries(trajectories)` takes the other source: the summaries a comem run's memory
model actually wrote (meta.json keeps every finished job with its text and cut-off), paired with
the exact input that job was sent.

Output layout (same rules as grpo.py, see common.py: replaced only at the end of a successful run):

    final/              Hugging Face checkpoint (LoRA merged), tokenizer included
    sft_report.json     config, per-step loss, eval loss before / after when eval pairs are given
    checkpoints/        trl checkpoints (`checkpoint-N`), `resume=True` continues from the newest
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

from comem_cli.devices import cuda_available
from comem_cli.memory.hf import chat_ids
from comem_cli.train.common import (
    CHECKPOINTS,
    FINAL,
    bf16_compute,
    cleanup_tmp,
    load_for_training,
    lora_config,
    no_activation_checkpointing,
    prepare_output,
    publish_final,
    quiet_progress,
    resume_checkpoint,
)
from comem_cli.train.policy import PolicyError
from comem_cli.train.samples import Sample, memory_input
from comem_cli.train.settings import SFTSettings

__all__ = ["TeacherError", "teacher_summaries", "train_sft"]

REPORT = "sft_report.json"

Pair = tuple[list[dict[str, str]], str]


class TeacherError(PolicyError):
    """The teacher model could not answer (one-line message)."""


def teacher_summaries(
    samples: Sequence[Sample],
    teacher_model: str,
    api_base: str | None = None,
    *,
    max_tokens: int = 2048,
    workers: int = 4,
    retries: int = 3,
    timeout_s: float = 600.0,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[Pair]:
    """(memory input, teacher summary) for each sample whose summary looks like one.

    Raises TeacherError when the teacher endpoint fails (after `retries`); a sample whose input
    overflows the teacher's context is skipped.
    """
    from comem_cli.memory.transcript import looks_like_summary
    from comem_cli.train.policy import LitellmPolicy, PolicyContextOverflow

    client = LitellmPolicy(teacher_model, api_base, max_tokens=max_tokens, timeout_s=timeout_s, retries=retries,
                           workers=1)
    done = [0]
    lock = threading.Lock()

    def one(sample: Sample) -> Pair | None:
        messages = memory_input(sample)
        try:
            text = client.propose(messages)
        except PolicyContextOverflow:
            text = None
        except PolicyError as e:
            raise TeacherError(str(e).replace("policy model", "teacher model", 1)) from None
        with lock:
            done[0] += 1
            if on_progress is not None:
                on_progress(done[0], len(samples))
        return (messages, text.strip()) if text and looks_like_summary(text) else None

    if workers <= 1 or len(samples) <= 1:
        results = [one(s) for s in samples]
    else:
        with ThreadPoolExecutor(max_workers=min(workers, len(samples))) as pool:
            results = list(pool.map(one, samples))
    return [r for r in results if r is not None]


def recorded_summaries(trajectories) -> list[Pair]:
    """(memory input, summary) for every finished memory job recorded in comem runs."""
    from comem_cli.memory.transcript import looks_like_summary, memory_messages

    pairs: list[Pair] = []
    for t in trajectories:
        if t.source != "comem":
            continue
        try:
            meta = json.loads((Path(t.path) / "meta.json").read_text())
        except (OSError, ValueError):
            continue
        for job in meta.get("memory_jobs") or []:
            text, cutoff = job.get("summary"), job.get("cutoff")
            if job.get("status") == "done" and isinstance(text, str) and looks_like_summary(text) \
                    and isinstance(cutoff, int) and 0 < cutoff <= len(t.steps):
                pairs.append((memory_messages(t.task, t.steps[:cutoff]), text))
    return pairs


def _rows(pairs: Sequence[Pair]) -> list[dict[str, Any]]:
    return [{"prompt": list(messages), "completion": [{"role": "assistant", "content": summary}]}
            for messages, summary in pairs]


def completion_loss(model: Any, tokenizer: Any, pairs: Sequence[Pair]) -> float:
    """Mean per-token negative log-likelihood of the summaries given their prompts (teacher forcing)."""
    import torch

    if not pairs:
        return math.nan
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for messages, summary in pairs:
            prompt = chat_ids(tokenizer, list(messages))
            full = chat_ids(tokenizer, [*messages, {"role": "assistant", "content": summary}], add_generation_prompt=False)
            if full[:len(prompt)] != prompt or len(full) <= len(prompt):
                continue
            ids = torch.tensor([full], device=device)
            with torch.inference_mode():
                logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
            target = ids[0, len(prompt):]
            total += torch.nn.functional.cross_entropy(logits, target, reduction="sum").item()
            count += int(target.numel())
    finally:
        model.train(was_training)
    return total / count if count else math.nan


def train_sft(
    pairs: Sequence[Pair],
    settings: SFTSettings | None = None,
    *,
    base_model: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    eval_pairs: Sequence[Pair] = (),
    on_log: Callable[[dict], None] | None = None,
    progress_bar: bool = False,
    extra_config: dict[str, Any] | None = None,
) -> dict:
    """Fine-tune `base_model` on (messages, summary) pairs; return the report (also in output_dir/sft_report.json).

    `settings`: the hyper-parameters (`SFTSettings`, its defaults when None); its `max_length`
    (tokens of prompt + summary) drops longer pairs rather than truncating them (a cut would remove
    the summary, which comes last). Raises UserError on bad input; `final/` is only replaced when the
    run succeeds.
    """
    settings = settings if settings is not None else SFTSettings()
    with quiet_progress(not progress_bar):
        return _train_sft(pairs, settings, base_model=base_model, output_dir=output_dir, eval_pairs=eval_pairs,
                          on_log=on_log, progress_bar=progress_bar, extra_config=extra_config)


def _train_sft(pairs, s: SFTSettings, *, base_model, output_dir, eval_pairs, on_log, progress_bar, extra_config) -> dict:
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from comem_cli.errors import UserError

    if not pairs:
        raise UserError("no SFT pairs (teacher summaries) to train on")
    if s.steps < 1:
        raise UserError(f"--steps must be positive, got {s.steps}")
    out = prepare_output(output_dir)
    ckpt_dir = out / CHECKPOINTS
    resume_from = resume_checkpoint(ckpt_dir, s.resume)
    if not s.resume and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)

    model, tokenizer = load_for_training(base_model)
    tokenizer.padding_side = "right"  # training batches; save_final writes the tokenizer left-padded
    cuda = cuda_available()
    if cuda:
        model = model.to("cuda")
    dropped = 0
    max_length = s.max_length
    if max_length is not None:
        kept = []
        for messages, summary in pairs:
            n = len(chat_ids(tokenizer, [*messages])) + len(tokenizer(summary, add_special_tokens=False)["input_ids"]) + 8
            if n <= max_length:
                kept.append((messages, summary))
        dropped = len(pairs) - len(kept)
        pairs = kept
        if not pairs:
            raise UserError(f"every SFT pair is longer than max_length={max_length} tokens")
    started = time.time()
    eval_pairs = list(eval_pairs)
    before = completion_loss(model, tokenizer, eval_pairs) if eval_pairs else None

    config_kwargs: dict[str, Any] = dict(
        output_dir=str(ckpt_dir), max_steps=s.steps, learning_rate=s.lr, lr_scheduler_type="constant", warmup_steps=0,
        per_device_train_batch_size=s.batch_size, gradient_accumulation_steps=s.grad_accum, max_length=None,
        completion_only_loss=True, logging_steps=1, save_strategy="steps", save_steps=max(1, s.save_every),
        save_total_limit=s.keep_checkpoints, seed=s.seed, data_seed=s.seed, report_to="none", use_cpu=not cuda,
        bf16=bf16_compute(model, cuda), fp16=False, **no_activation_checkpointing(SFTConfig),
        disable_tqdm=not progress_bar, dataloader_num_workers=0, dataset_num_proc=None, shuffle_dataset=True,
    )
    config_kwargs.update(extra_config or {})
    args = SFTConfig(**config_kwargs)

    class _Log(TrainerCallback):
        def on_log(self, args_, state, control, logs=None, **kwargs):
            if logs and "loss" in logs and on_log is not None:
                on_log({"step": state.global_step, "max_steps": state.max_steps, "loss": float(logs["loss"]),
                        "learning_rate": logs.get("learning_rate")})

    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(_rows(pairs)),
                         processing_class=tokenizer, peft_config=lora_config(s.lora_r, s.lora_alpha) if s.lora else None,
                         callbacks=[_Log()])
    trainer.remove_callback(PrinterCallback)
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

        def report(after: float | None) -> dict:
            return {
                "stage": "sft",
                "config": {"base_model": str(base_model), "lr": s.lr, "steps": s.steps, "lora": s.lora, "batch_size": s.batch_size,
                           "grad_accum": s.grad_accum, "max_length": max_length, "seed": s.seed},
                "pairs": len(pairs), "pairs_dropped_too_long": dropped, "eval_pairs": len(eval_pairs),
                "eval_loss_before": before, "eval_loss_after": after,
                "steps_done": trainer.state.global_step, "train_seconds": round(time.time() - started, 1),
                "final": str(out / FINAL), "checkpoints": str(ckpt_dir),
                "resumed_from": str(resume_from) if resume_from else None,
                "steps": _steps_log(trainer.state.log_history),
            }

        return publish_final(trainer.model, tokenizer, out, merge_lora=s.lora, dtype=model.dtype, cuda=cuda,
                             evaluate=(lambda m: completion_loss(m, tokenizer, eval_pairs)) if eval_pairs else None,
                             report=report, report_name=REPORT)
    finally:
        cleanup_tmp(out)


def _steps_log(history: list[dict]) -> list[dict]:
    """One record per logged step (loss, learning rate, gradient norm), from trl's log history."""
    steps = {}
    for entry in history:
        if "loss" in entry and "step" in entry:
            steps[int(entry["step"])] = {"step": int(entry["step"]), "loss": float(entry["loss"]),
                                         "learning_rate": entry.get("learning_rate"), "grad_norm": entry.get("grad_norm")}
    return [steps[k] for k in sorted(steps)]

