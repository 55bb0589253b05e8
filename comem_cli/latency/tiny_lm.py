"""A tiny, real causal LM built on the spot: a randomly initialised Llama with a byte-level BPE
tokenizer trained on the fly (a few seconds on CPU); nothing is downloaded.

`comem bench latency --serving local` times real forward passes on two of them, and the tests
use them as real memory and policy models. The directory written is a standard Hugging Face
checkpoint (``config.json``, ``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json``
with a ``chat_template``) that transformers and vLLM both load. torch, transformers and tokenizers
are imported inside the function.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "build_tiny_causal_lm"]

BOS, EOS, PAD, IM_START, IM_END = "<|bos|>", "<|eos|>", "<|pad|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, IM_START, IM_END]

# ChatML-like: every turn is "<|im_start|>role\ncontent<|im_end|>\n".
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _training_corpus() -> list[str]:
    """Text that looks like what the memory model reads: shell sessions, Python, agent steps,
    markdown summaries. Built from a few fragments so the BPE merges cover the usual words."""
    commands = [
        "ls -la", "cat README.md", "cat src/app/main.py", "grep -rn 'def parse' src/",
        "pytest -q tests/test_parser.py", "pytest tests/ -x", "python -m pip install -e .",
        "git diff", "git status --short", "sed -n '10,40p' lib/utils.py", "find . -name '*.py'",
        "python setup.py test", "head -n 20 docs/index.md", "tail -f logs/server.log",
        "mkdir -p build && cd build", "echo $PATH", "wc -l data/input.csv",
    ]
    paths = [
        "src/app/main.py", "tests/test_parser.py", "lib/utils.py", "README.md", "setup.py",
        "pyproject.toml", "docs/index.md", "src/app/models/user.py", "tests/conftest.py",
    ]
    observations = [
        "1 failed, 12 passed in 0.31s", "FAILED tests/test_parser.py::test_empty - AssertionError",
        "Traceback (most recent call last):", "  File \"src/app/main.py\", line 42, in parse",
        "TypeError: expected str, got NoneType", "ModuleNotFoundError: No module named 'yaml'",
        "(no output)", "13 passed in 0.40s", "error: pathspec 'fix' did not match any file(s)",
        "Successfully installed app-0.1.0",
    ]
    code = [
        "def parse(text: str) -> list[str]:\n    if not text:\n        return []\n    return text.split(',')",
        "class Parser:\n    def __init__(self, sep=','):\n        self.sep = sep\n\n    def run(self, line):\n        return line.strip().split(self.sep)",
        "import os\nimport sys\nfrom pathlib import Path\n\nfor name in sorted(os.listdir('.')):\n    print(name)",
        "def test_empty():\n    assert parse('') == []\n\ndef test_two():\n    assert parse('a,b') == ['a', 'b']",
        "with open(path, encoding='utf-8') as f:\n    data = json.load(f)\nreturn {k: v for k, v in data.items() if v is not None}",
    ]
    summary = (
        "## Task\nFix the bug in {p} so that the failing test passes.\n\n"
        "## Files\n- {p}: read, edited the parse function\n- {q}: ran the tests\n\n"
        "## Tried\n1. Ran `{c}`: {o}\n2. Read {q} and found the cause.\n\n"
        "## Test status\n{o}\n\n## Open questions\nNone so far.\n"
    )
    lines: list[str] = []
    for i in range(160):
        c = commands[i % len(commands)]
        o = observations[(i * 3) % len(observations)]
        p = paths[i % len(paths)]
        q = paths[(i * 5 + 1) % len(paths)]
        lines.append(f"step {i}: ran pytest, test failed, fixed code.")
        lines.append(f"THOUGHT: I should look at {p} first, then run the tests.\nACTION: {c}\nOBSERVATION: {o}")
        lines.append(code[i % len(code)])
        lines.append(summary.format(p=p, q=q, c=c, o=o))
        lines.append(f"$ {c}\n{o}\n$ cat {q}")
    lines.append("".join(chr(c) for c in range(32, 127)))  # every printable ASCII character
    return lines


def build_tiny_causal_lm(
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    vocab_size: int = 512,
    hidden_size: int = 64,
    layers: int = 2,
) -> Path:
    """Write a tiny random Llama + trained byte-level BPE tokenizer + chat template to `path`.

    Deterministic for a given `seed` (same bytes on disk). The output head's rows of the special
    tokens are zero, so greedy decoding never produces EOS: generation always runs to its token
    limit, which gives tests exact lengths. Attention uses head_dim 64 (2 query heads, 1 KV head)
    whatever `hidden_size` is, a size vLLM's CPU attention supports. float32, safetensors,
    ``max_position_embeddings`` 4096.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)

    # -- tokenizer
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_training_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    _normalize_tokenizer_config(out)

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}

    # -- model
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        initializer_range=0.5,  # wide logits: a random model that does not collapse on one token
        bos_token_id=ids[BOS],
        # Chat turns end with <|im_end|>; a real model trained on this template would stop there.
        eos_token_id=[ids[IM_END], ids[EOS]],
        pad_token_id=ids[PAD],
        tie_word_embeddings=False,
    )
    devnull_rng = torch.random.fork_rng(devices=[])
    with devnull_rng:  # leave the caller's global RNG as it was
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32).eval()
    with torch.no_grad():
        for token_id in ids.values():
            model.lm_head.weight[token_id].zero_()
    model.generation_config.bos_token_id = ids[BOS]
    model.generation_config.eos_token_id = [ids[IM_END], ids[EOS]]
    model.generation_config.pad_token_id = ids[PAD]
    model.save_pretrained(out, safe_serialization=True)
    return out


def _normalize_tokenizer_config(out: Path) -> None:
    """Make tokenizer_config.json loadable by older transformers too (e.g. the one vLLM pins):
    a known tokenizer class, and the chat template inside the file as well as in
    chat_template.jinja."""
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg.pop("backend", None)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
