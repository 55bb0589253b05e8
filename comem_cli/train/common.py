"""What the training stages (sft.py, grpo.py) share: loading the base model, checkpoints on disk,
and the end of a successful run (save `final/`, evaluate it as every memory backend will load it,
write the report, then publish `final/`). Chat prompts become token ids with memory/hf.chat_ids.

Output rules, for every stage: `final/` and the report are replaced only at the very end of a
successful run (written to temporary siblings, then renamed), so a run that fails or is
interrupted leaves the previous ones intact. Only `checkpoints/` may gain complete checkpoints of
the failed run (to resume from).

torch, transformers, datasets and peft are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from comem_cli.devices import cuda_available
from comem_cli.rollouts import atomic_write_json

CHECKPOINTS = "checkpoints"
FINAL = "final"


# ---------------------------------------------------------------------------------------------
# The machine and the model


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


def no_activation_checkpointing(config_class: Any) -> dict[str, bool]:
    """The trainer-config setting that turns activation checkpointing off (trl turns it on by default:
    a third more compute, for memory these models do not need), under the name this transformers
    takes (it renamed `gradient_checkpointing`, and the old name warns on every run). trl's own use of
    the old property name warns too; that warning is silenced here."""
    import dataclasses
    import warnings

    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    names = {field.name for field in dataclasses.fields(config_class)}
    return {"activation_checkpointing": False} if "activation_checkpointing" in names else {"gradient_checkpointing": False}


def bf16_compute(model: Any, cuda: bool) -> bool:
    """Whether training computes in bfloat16 (the trainer's `bf16`): a CUDA model loaded in bfloat16,
    or a float32 model on a CPU with native bfloat16 (AMX or AVX512-BF16, which oneDNN uses: SmolLM2's
    forward and backward passes ~1.6x faster), under autocast with the weights kept in float32."""
    import torch

    if cuda:
        return model.dtype == torch.bfloat16
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def lora_config(r: int, alpha: int) -> Any:
    """LoRA adapters on every linear layer (merged into the weights when `final/` is saved)."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


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


# ---------------------------------------------------------------------------------------------
# Files: checkpoints, final/ (files are written with rollouts.atomic_write_*)


def replace_dir(tmp: Path, target: Path) -> None:
    """Put the complete directory `tmp` at `target`, replacing what was there (rename, never a half state)."""
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}-{int(time.time() * 1000)}"
        os.rename(target, old)
    os.rename(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def prepare_output(output_dir: str | os.PathLike[str]) -> Path:
    """The output folder, created, without the temporary `final/` copies of an earlier run that died."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cleanup_tmp(out)
    return out


def cleanup_tmp(output_dir: Path) -> None:
    for tmp in output_dir.glob(f".{FINAL}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest `checkpoint-N` holding a trainer_state.json (a save cut short lacks it)."""
    if not folder.is_dir():
        return None
    found = []
    for p in folder.iterdir():
        if p.is_dir() and p.name.startswith("checkpoint-") and p.name[11:].isdigit() and (p / "trainer_state.json").is_file():
            found.append((int(p.name[11:]), p))
    return max(found)[1] if found else None


def resume_checkpoint(checkpoints: Path, resume: bool) -> Path | None:
    """The checkpoint `--resume` continues from (None without --resume); UserError when there is none."""
    if not resume:
        return None
    from comem_cli.errors import UserError

    found = last_complete_checkpoint(checkpoints)
    if found is None:
        raise UserError(f"--resume: no complete checkpoint under {checkpoints}")
    return found


def save_final(model: Any, tokenizer: Any, output_dir: Path, *, merge_lora: bool) -> Path:
    """Save model + tokenizer into a temporary sibling of output_dir/final (`publish_final` renames it)."""
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


def reload_final(path: Path, dtype: Any, cuda: bool) -> Any:
    """A just-saved checkpoint, loaded as every backend will load it (for the after-training evaluation)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.to("cuda") if cuda else model


# ---------------------------------------------------------------------------------------------
# The end of a successful run


def publish_final(trained: Any, tokenizer: Any, out: Path, *, merge_lora: bool, dtype: Any, cuda: bool,
                  evaluate: Callable[[Any], float] | None, report: Callable[[float | None], dict], report_name: str,
                  also_write: Callable[[dict], None] | None = None) -> dict:
    """Save `final/` aside, evaluate the saved checkpoint (`evaluate(model)`, None: no evaluation),
    build the report from that score (`report(after)`), write `also_write(report)` (e.g. a curve)
    and the report, then put `final/` in place. Any failure removes the aside copy and leaves the
    previous `final/` and report as they were. Returns the report."""
    tmp_final = save_final(trained, tokenizer, out, merge_lora=merge_lora)
    try:
        after = evaluate(reload_final(tmp_final, dtype, cuda)) if evaluate is not None else None
        result = report(after)
        if also_write is not None:
            also_write(result)
        atomic_write_json(out / report_name, result)
        replace_dir(tmp_final, out / FINAL)
    except BaseException:
        shutil.rmtree(tmp_final, ignore_errors=True)
        raise
    return result
