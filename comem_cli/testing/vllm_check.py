"""Drive the real vLLM engine (from the separate `.venv-vllm`) for comem's tests.

Importable from any environment (no vllm / torch import at module level):

* :func:`vllm_python` - the interpreter of `.venv-vllm` (or None).
* :func:`build_tiny_model_in_vllm_venv` - the tiny random Llama of `tiny_models`, built by
  `.venv-vllm`'s interpreter (the main venv has no torch).
* :func:`start_vllm_server` / :func:`stop_vllm_server` - vLLM's OpenAI-compatible server on
  127.0.0.1, started from `.venv-vllm`, waited for on `/health` (or :func:`launch_vllm_server`
  then :func:`wait_for_vllm_server`, to do other work while it starts).
* :func:`run_engine_check` - the in-process `VLLMBackend` checks, in a `.venv-vllm` child.

Run as a module inside `.venv-vllm` (``PYTHONPATH=<repo>``)::

    python -m comem_cli.testing.vllm_check build DIR     # writes the tiny model, prints JSON
    python -m comem_cli.testing.vllm_check engine DIR    # in-process VLLMBackend checks, prints JSON

The last line on stdout is the JSON result.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_VLLM = REPO / ".venv-vllm"

# Engine settings that keep a CPU test start short: eager, a tiny context, a small fixed KV cache
# (an explicit size also skips vLLM's CPU warm-up pass).
TEST_MAX_MODEL_LEN = 2048
TEST_KV_CACHE_BYTES = 256 * 1024**2


def vllm_python() -> Path | None:
    """`.venv-vllm/bin/python` when that virtualenv exists."""
    p = VENV_VLLM / "bin" / "python"
    return p if p.exists() else None


def _env(extra: dict[str, str] | None = None, *, fast_start: bool = False) -> dict[str, str]:
    """Environment for `.venv-vllm` children. `fast_start`: run vLLM's CPU model executor inside
    the engine-core process instead of one more spawned worker process
    (VLLM_ENABLE_V1_MULTIPROCESSING=0), which cuts ~15-25 s off every CPU start. Tests only:
    real serving keeps vLLM's default, the layout vLLM's CPU backend supports for binding its
    OpenMP threads to cores."""
    env = dict(os.environ)
    if fast_start:
        env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Don't inherit the main venv's interpreter settings.
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONHOME", None)
    if extra:
        env.update(extra)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------- the tiny model

def build_tiny_model(path: str | Path, seed: int = 0) -> Path:
    """Build the tiny test model into `path` with this interpreter (needs torch + transformers):
    :func:`comem_cli.testing.tiny_models.build_tiny_causal_lm` (a random Llama whose greedy
    decoding never emits EOS, so every generation runs to its max_tokens)."""
    from comem_cli.testing.tiny_models import build_tiny_causal_lm

    return Path(build_tiny_causal_lm(Path(path), seed=seed))


def build_tiny_model_in_vllm_venv(path: str | Path, seed: int = 0, timeout: float = 300) -> Path:
    """Build the tiny model with `.venv-vllm`'s interpreter (callable from the main venv)."""
    py = vllm_python()
    if py is None:
        raise RuntimeError(f"{VENV_VLLM} does not exist (run scripts/setup-vllm.sh)")
    proc = subprocess.run(
        [str(py), "-m", "comem_cli.testing.vllm_check", "build", str(path), "--seed", str(seed)],
        env=_env(), capture_output=True, text=True, timeout=timeout, cwd=str(REPO),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"building the tiny model failed:\n{proc.stderr[-4000:]}")
    return Path(path)


def run_engine_check(model_dir: str | Path, *, timeout: float = 480, fast_start: bool = True) -> dict:
    """Run :func:`check_engine` in `.venv-vllm` (callable from the main venv); returns its report.
    The child's full output is kept in ``report["log_path"]``."""
    py = vllm_python()
    if py is None:
        raise RuntimeError(f"{VENV_VLLM} does not exist (run scripts/setup-vllm.sh)")
    log_path = Path(str(model_dir).rstrip("/") + ".engine.log")
    proc = subprocess.run(
        [str(py), "-m", "comem_cli.testing.vllm_check", "engine", str(model_dir)],
        env=_env(fast_start=fast_start), capture_output=True, text=True, timeout=timeout, cwd=str(REPO),
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

def server_command(model_dir: str | Path, port: int, *, python: str | Path | None = None,
                   max_model_len: int = TEST_MAX_MODEL_LEN, served_model_name: str | None = None,
                   extra_args: list[str] | None = None) -> list[str]:
    """The `python -m vllm.entrypoints.openai.api_server` command line for a CPU memory model."""
    py = str(python or vllm_python() or "python")
    cmd = [
        py, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--max-model-len", str(max_model_len),
        "--enforce-eager",
        "--enable-prefix-caching",
        "--kv-cache-memory-bytes", str(TEST_KV_CACHE_BYTES),
        "--enable-prompt-tokens-details",  # usage.prompt_tokens_details.cached_tokens
        "--disable-log-stats",
        "--uvicorn-log-level", "warning",
    ]
    if served_model_name:
        cmd += ["--served-model-name", served_model_name]
    return cmd + list(extra_args or [])


def launch_vllm_server(model_dir: str | Path, port: int, *, log_path: str | Path | None = None,
                       served_model_name: str | None = None,
                       max_model_len: int = TEST_MAX_MODEL_LEN,
                       extra_args: list[str] | None = None,
                       fast_start: bool = True) -> subprocess.Popen:
    """Start vLLM's OpenAI-compatible server (from `.venv-vllm`) on 127.0.0.1:`port` without
    waiting for it (see :func:`wait_for_vllm_server`); ``fast_start``: see :func:`_env`. Its output
    goes to `log_path` (default: a file beside `model_dir`), kept as ``proc.log_path``."""
    py = vllm_python()
    if py is None:
        raise RuntimeError(f"{VENV_VLLM} does not exist (run scripts/setup-vllm.sh)")
    cmd = server_command(model_dir, port, python=py, max_model_len=max_model_len,
                         served_model_name=served_model_name, extra_args=extra_args)
    log_path = Path(log_path) if log_path else Path(str(model_dir).rstrip("/") + f".server-{port}.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=_env(fast_start=fast_start), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=str(REPO), start_new_session=True)
    proc.log_path = str(log_path)  # type: ignore[attr-defined]
    proc.port = port  # type: ignore[attr-defined]
    return proc


def wait_for_vllm_server(proc: subprocess.Popen, port: int | None = None, *, timeout: float = 300) -> None:
    """Wait until the server's `/health` answers 200. Raises RuntimeError (after stopping it) if it
    exits or is not healthy within `timeout` s."""
    port = port or proc.port  # type: ignore[attr-defined]
    from comem_cli.serving.engines import health_ok

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if health_ok(port):
            return
        time.sleep(0.25)
    rc = proc.poll()
    stop_vllm_server(proc)
    log_path = getattr(proc, "log_path", None)
    tail = Path(log_path).read_text(errors="replace")[-4000:] if log_path else ""
    why = f"exited with {rc}" if rc is not None else f"not healthy after {timeout:.0f} s"
    raise RuntimeError(f"vLLM server {why}; log tail:\n{tail}")


def start_vllm_server(model_dir: str | Path, port: int, *, timeout: float = 300,
                      log_path: str | Path | None = None, served_model_name: str | None = None,
                      max_model_len: int = TEST_MAX_MODEL_LEN,
                      extra_args: list[str] | None = None,
                      fast_start: bool = True) -> subprocess.Popen:
    """Start vLLM's OpenAI-compatible server (from `.venv-vllm`) on 127.0.0.1:`port` and wait until
    `/health` answers 200 (~35 s on a 2-core CPU with the tiny model). Raises RuntimeError (after
    stopping it) if it exits or is not healthy within `timeout` s. Stop it with
    :func:`stop_vllm_server`. OpenAI base URL: ``http://127.0.0.1:{port}/v1``."""
    proc = launch_vllm_server(model_dir, port, log_path=log_path, served_model_name=served_model_name,
                              max_model_len=max_model_len, extra_args=extra_args, fast_start=fast_start)
    wait_for_vllm_server(proc, port, timeout=timeout)
    return proc


def stop_vllm_server(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM the server's process group (API server + engine core), SIGKILL if it lingers."""
    from comem_cli.serving.engines import stop_process_group

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m comem_cli.testing.vllm_check")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the tiny test model into DIR")
    b.add_argument("dir")
    b.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("engine", help="in-process VLLMBackend checks on the model in DIR")
    e.add_argument("dir")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    if args.cmd == "build":
        out = {"dir": str(build_tiny_model(args.dir, seed=args.seed))}
    else:
        out = check_engine(args.dir)
    out["wall_s"] = round(time.monotonic() - t0, 2)
    sys.stdout.flush()
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
