"""Drive the real vLLM engine (from the separate `.venv-vllm`) for comem's tests.

Importable from any environment (no vllm / torch import at module level):

* :func:`vllm_python` - the interpreter that has vLLM (`.venv-vllm`'s here), or None.
* :func:`build_tiny_model_in_vllm_venv` - the tiny random Llama of `tiny_models`, built by
  `.venv-vllm`'s interpreter (the main venv has no torch).
* :func:`start_vllm_server` / :func:`stop_vllm_server` - vLLM's OpenAI-compatible server on
  127.0.0.1, waited for on `/health` (or :func:`launch_vllm_server` then
  :func:`wait_for_vllm_server`, to do other work while it starts): the product's launcher
  (comem_cli/latency/engines.py) with a small CPU test configuration.
* :func:`run_engine_check` - the in-process `VLLMBackend` checks (or the no-repeat rule's), in a
  `.venv-vllm` child.

Run as a module inside `.venv-vllm` (``PYTHONPATH=<repo>``)::

    python -m comem_cli.testing.vllm_check build DIR     # writes the tiny model, prints JSON
    python -m comem_cli.testing.vllm_check engine DIR    # in-process VLLMBackend checks, prints JSON
    python -m comem_cli.testing.vllm_check repeats DIR   # the no-repeat rule in the engine, prints JSON

The last line on stdout is the JSON result.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from comem_cli.errors import UserError
from comem_cli.latency.engines import (REPO, VENV_VLLM, child_env, free_port, launch, server_command,  # noqa: F401
                                       stop_process_group, vllm_python, wait_healthy)

# Engine settings that keep a CPU test start short: eager, a tiny context, a small fixed KV cache
# (an explicit size also skips vLLM's CPU warm-up pass).
TEST_MAX_MODEL_LEN = 2048
TEST_KV_CACHE_BYTES = 256 * 1024**2


def _python() -> str:
    py = vllm_python()
    if py is None:
        raise RuntimeError(f"{VENV_VLLM} does not exist (run scripts/setup-vllm.sh)")
    return py


def _env(python: str) -> dict[str, str]:
    """The product's environment of a CPU vLLM child (its executor in the engine-core process: a
    faster start), offline."""
    env = child_env(python, "cpu")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return env


# ---------------------------------------------------------------------------- the tiny model

def build_tiny_model(path: str | Path, seed: int = 0) -> Path:
    """Build the tiny test model into `path` with this interpreter (needs torch + transformers):
    :func:`comem_cli.testing.tiny_models.build_tiny_causal_lm` (a random Llama whose greedy
    decoding never emits EOS, so every generation runs to its max_tokens)."""
    from comem_cli.testing.tiny_models import build_tiny_causal_lm

    return Path(build_tiny_causal_lm(Path(path), seed=seed))


def build_tiny_model_in_vllm_venv(path: str | Path, seed: int = 0, timeout: float = 300) -> Path:
    """Build the tiny model with `.venv-vllm`'s interpreter (callable from the main venv)."""
    py = _python()
    proc = subprocess.run(
        [py, "-m", "comem_cli.testing.vllm_check", "build", str(path), "--seed", str(seed)],
        env=_env(py), capture_output=True, text=True, timeout=timeout, cwd=str(REPO),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"building the tiny model failed:\n{proc.stderr[-4000:]}")
    return Path(path)


def run_engine_check(model_dir: str | Path, *, check: str = "engine", log_dir: str | Path | None = None,
                     timeout: float = 480) -> dict:
    """Run :func:`check_engine` (or `check="repeats"`: :func:`check_repeats`) in `.venv-vllm`
    (callable from the main venv); returns its report. The child's full output is kept in
    ``report["log_path"]`` (beside the model, or in `log_dir`)."""
    py = _python()
    log_path = (Path(log_dir) / f"{check}.log") if log_dir else Path(str(model_dir).rstrip("/") + f".{check}.log")
    proc = subprocess.run(
        [py, "-m", "comem_cli.testing.vllm_check", check, str(model_dir)],
        env=_env(py), capture_output=True, text=True, timeout=timeout, cwd=str(REPO),
    )
    log_path.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"engine check failed (rc={proc.returncode}); log {log_path}:\n"
                           f"{(proc.stdout + proc.stderr)[-4000:]}")
    report = json.loads(lines[-1])
    report["log_path"] = str(log_path)
    return report


# ---------------------------------------------------------------------------- the server

def launch_vllm_server(model_dir: str | Path, port: int, *, log_path: str | Path | None = None,
                       served_model_name: str | None = None, max_model_len: int = TEST_MAX_MODEL_LEN,
                       extra_args: list[str] | None = None) -> subprocess.Popen:
    """Start vLLM's OpenAI-compatible server on 127.0.0.1:`port` with the product's launcher, without
    waiting for it (see :func:`wait_for_vllm_server`). Its output goes to `log_path` (default: a file
    beside `model_dir`), kept as ``proc.log_path``."""
    py = _python()
    cmd = server_command(py, str(model_dir), port, served_name=served_model_name, max_model_len=max_model_len,
                         enforce_eager=True, kv_cache_memory_bytes=TEST_KV_CACHE_BYTES, disable_log_stats=True)
    log_path = Path(log_path) if log_path else Path(str(model_dir).rstrip("/") + f".server-{port}.log")
    proc = launch(cmd + list(extra_args or []), _env(py), log_path)
    proc.log_path = str(log_path)  # type: ignore[attr-defined]
    proc.port = port  # type: ignore[attr-defined]
    return proc


def wait_for_vllm_server(proc: subprocess.Popen, port: int | None = None, *, timeout: float = 300) -> None:
    """Wait until the server's `/health` answers 200. Raises RuntimeError with the log's tail (after
    stopping it) if it exits or is not healthy within `timeout` s."""
    log_path = Path(proc.log_path)  # type: ignore[attr-defined]
    try:
        wait_healthy(proc, port or proc.port, timeout=timeout, name="vLLM server", log_path=log_path)  # type: ignore[attr-defined]
    except UserError as e:
        stop_vllm_server(proc)
        raise RuntimeError(f"{e}; log tail:\n{log_path.read_text(errors='replace')[-4000:]}") from None


def start_vllm_server(model_dir: str | Path, port: int, *, timeout: float = 300,
                      log_path: str | Path | None = None, served_model_name: str | None = None,
                      max_model_len: int = TEST_MAX_MODEL_LEN, extra_args: list[str] | None = None) -> subprocess.Popen:
    """:func:`launch_vllm_server` then :func:`wait_for_vllm_server` (~35 s on a 2-core CPU with the
    tiny model). Stop it with :func:`stop_vllm_server`. OpenAI base URL: ``http://127.0.0.1:{port}/v1``."""
    proc = launch_vllm_server(model_dir, port, log_path=log_path, served_model_name=served_model_name,
                              max_model_len=max_model_len, extra_args=extra_args)
    wait_for_vllm_server(proc, port, timeout=timeout)
    return proc


def stop_vllm_server(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM the server's process group (API server + engine core), SIGKILL if it lingers."""
    stop_process_group(proc, timeout=timeout)


# ---------------------------------------------------------------------------- in-process checks

def check_engine(model_dir: str | Path) -> dict:
    """Load `model_dir` in a VLLMBackend and exercise it from a thread pool; returns a JSON-able
    report (the test asserts on it)."""
    from concurrent.futures import ThreadPoolExecutor

    from comem_cli.memory.vllm_engine import Cancelled, VLLMBackend

    report: dict = {}
    t0 = time.monotonic()
    backend = VLLMBackend(
        str(model_dir),
        max_model_len=TEST_MAX_MODEL_LEN,
        kv_cache_memory_bytes=TEST_KV_CACHE_BYTES,
        dtype="float32",
        max_num_seqs=8,
    )
    report["load_s"] = round(time.monotonic() - t0, 2)
    report["engine_kwargs"] = {k: v for k, v in backend.engine_kwargs.items() if k != "model"}
    try:
        system = {"role": "system", "content": "Summarize what the agent did. Only what happened."}
        history = " ".join(f"step {i}: ran pytest, test failed, fixed code." for i in range(40))
        report["count_tokens_history"] = backend.count_tokens(history)

        def job(i: int, max_tokens: int) -> dict:
            msgs = [system, {"role": "user", "content": f"task: fix the bug\n{history}\nTHOUGHT {i}"}]
            t = time.monotonic()
            try:
                text = backend.summarize(msgs, max_tokens=max_tokens, request_id=f"job-{i}")
            except Cancelled:
                return {"id": i, "cancelled": True, "s": round(time.monotonic() - t, 3)}
            except Exception as e:  # noqa: BLE001
                return {"id": i, "error": f"{type(e).__name__}: {e}"}
            u = backend.usage(f"job-{i}") or {}
            return {"id": i, "text": text, "max_tokens": max_tokens, "s": round(time.monotonic() - t, 3),
                    "completion_tokens": u.get("completion_tokens"), "cached_tokens": u.get("cached_tokens"),
                    "prompt_tokens": u.get("prompt_tokens"), "finish_reason": u.get("finish_reason")}

        # Warm-up (also measures the decode speed, to size the long job).
        t = time.monotonic()
        warm = job(100, 32)
        report["warmup"] = warm
        per_tok = max((time.monotonic() - t) / 32, 1e-3)
        report["s_per_token_single"] = round(per_tok, 4)

        with ThreadPoolExecutor(max_workers=5) as pool:
            long_tokens = TEST_MAX_MODEL_LEN - 600
            t = time.monotonic()
            fut_long = pool.submit(job, 99, long_tokens)
            futs = [pool.submit(job, i, 24 + 8 * i) for i in range(4)]
            time.sleep(max(1.0, 20 * per_tok))  # the long job is generating by now
            backend.cancel("job-99")
            t_cancel = time.monotonic()
            long = fut_long.result(timeout=120)
            long["returned_after_cancel_s"] = round(time.monotonic() - t_cancel, 3)
            long["full_run_estimate_s"] = round(long_tokens * per_tok, 1)
            results = [f.result(timeout=300) for f in futs]
            report["concurrent_s"] = round(time.monotonic() - t, 2)
        report["jobs"] = results
        report["long"] = long
        # The engine keeps serving after the abort, and nothing is left running in it.
        report["after_cancel"] = job(7, 16)
        report["unfinished_in_engine"] = backend._engine.get_num_unfinished_requests()
        # Cancel before start -> Cancelled without reaching the engine.
        backend.cancel("job-8")
        report["cancel_before_start"] = job(8, 16)
        # close() while a job is generating: the job raises Cancelled, close() returns.
        with ThreadPoolExecutor(max_workers=1) as pool:
            fut = pool.submit(job, 50, TEST_MAX_MODEL_LEN - 600)
            time.sleep(max(0.5, 10 * per_tok))
            t = time.monotonic()
            backend.close()
            report["close_s"] = round(time.monotonic() - t, 2)
            report["pending_at_close"] = fut.result(timeout=60)
        report["summarize_after_close"] = job(51, 8)
    finally:
        backend.close()  # idempotent
    report["loop_thread_alive"] = backend._thread.is_alive()
    return report


def check_repeats(model_dir: str | Path, max_tokens: int = 48) -> dict:
    """The no-repeat rule in the engine: a list prompt decoded greedily without the rule and with it
    (one engine; the rule is asked for per request). Returns the replies and how many of their
    `REPLY_NGRAM`-token sequences occurred earlier in them."""
    from comem_cli.memory.repeats import REPLY_NGRAM, repeated_ngrams
    from comem_cli.memory.vllm_engine import VLLMBackend

    backend = VLLMBackend(str(model_dir), max_model_len=TEST_MAX_MODEL_LEN, kv_cache_memory_bytes=TEST_KV_CACHE_BYTES,
                          dtype="float32", max_num_seqs=2)
    messages = [{"role": "user", "content": "Continue this list: qop_int, qop_int, qop_int, qop_int"}]
    report: dict = {}
    try:
        for name, n in (("loose", 0), ("guarded", REPLY_NGRAM)):
            backend.no_repeat = n
            text = backend.summarize(messages, max_tokens=max_tokens, request_id=name)
            ids = backend._tokenizer.encode(text, add_special_tokens=False)
            report[name] = {"text": text, "repeats": repeated_ngrams(ids),
                            "completion_tokens": (backend.usage(name) or {}).get("completion_tokens")}
    finally:
        backend.close()
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m comem_cli.testing.vllm_check")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the tiny test model into DIR")
    b.add_argument("dir")
    b.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("engine", help="in-process VLLMBackend checks on the model in DIR")
    e.add_argument("dir")
    r = sub.add_parser("repeats", help="the no-repeat rule in the engine, on the model in DIR")
    r.add_argument("dir")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    if args.cmd == "build":
        out = {"dir": str(build_tiny_model(args.dir, seed=args.seed))}
    elif args.cmd == "repeats":
        out = check_repeats(args.dir)
    else:
        out = check_engine(args.dir)
    out["wall_s"] = round(time.monotonic() - t0, 2)
    sys.stdout.flush()
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
