"""Evaluate a patch on one instance the way the SWE-bench harness does, in a local container.

For each evaluation: a fresh container from the instance's image (the repository already sits at
/testbed at `base_commit`), the model patch applied with the harness's chain of commands (`git apply`,
then `git apply --3way`, then `patch --fuzz`), the test files reset to the base and the test patch
applied, the instance's `test_cmd` run between the harness's log markers, and the log graded by the
`swebench` package (pinned: SWEBENCH_VERSION) with its own parser and grading functions, so that the
report carries the fields of the official harness's report.json. The container is removed on every
path. Also here: loading the swe-mini instances and building their images.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from comem_cli.config import SandboxConfig
from comem_cli.errors import UserError

SWEBENCH_VERSION = "5.0.2"  # the grading logic this module was written against (pip install swebench==5.0.2)
SWE_MINI_DIR = Path(__file__).resolve().parent / "swe_mini"
WORKDIR = "/testbed"
EVAL_DIR = "/tmp/comem_eval"
DEFAULT_LOG_PARSER = "parse_log_pytest"
# The harness's order (swebench.harness.run_evaluation.GIT_APPLY_CMDS, less the --reject variant).
APPLY_CMDS = (
    "git apply --verbose",
    "git apply --verbose --3way",
    "patch --batch --forward --fuzz=5 -p1 -i",
)
_DIFF_FILE = re.compile(r"^diff --git a/(\S+) b/(\S+)", re.M)


def load_swe_mini() -> list[dict[str, Any]]:
    """The swe-mini instances (SWE-bench schema plus `image` and `test_cmd`)."""
    path = SWE_MINI_DIR / "instances.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def build_swe_mini_images(*, force: bool = False, only: list[str] | None = None, timeout: float = 1800) -> list[str]:
    """Build the swe-mini images that are missing (all of them with force=True); returns the image names.

    Runs sandbox/swe-mini/build.sh, which needs PyPI once; its progress lines go to stderr.
    """
    from comem_cli.resources import resource_dir

    script = resource_dir("sandbox") / "swe-mini" / "build.sh"
    env = {**os.environ, "SWE_MINI_DATA": str(SWE_MINI_DIR), "FORCE": "1" if force else "0"}
    if only:
        env["ONLY"] = " ".join(only)
    tail: list[str] = []
    proc = subprocess.Popen(["bash", str(script)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            sys.stderr.write(line)
            tail = (tail + [line.rstrip()])[-20:]
        proc.wait(timeout=timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if proc.returncode != 0:
        reason = next((ln for ln in reversed(tail) if ln.strip()), f"exit status {proc.returncode}")
        raise UserError(f"building the swe-mini images failed: {reason.removeprefix('swe-mini: ')}")
    return sorted({i["image"] for i in load_swe_mini()})


def as_list(value: Any) -> list[str]:
    """FAIL_TO_PASS / PASS_TO_PASS: a JSON-encoded list (SWE-bench) or already a list."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        value = json.loads(value)
    return [str(v) for v in value]


def evaluate(instance: dict[str, Any], model_patch: str | None, *, timeout: int = 600,
             sandbox_config: SandboxConfig | None = None) -> dict[str, Any]:
    """Grade `model_patch` on `instance`; returns the harness's report fields plus the raw `log`.

    Keys: instance_id, patch_is_None, patch_exists, patch_successfully_applied, resolved,
    tests_status (FAIL_TO_PASS / PASS_TO_PASS / FAIL_TO_FAIL / PASS_TO_FAIL, each with success and
    failure lists, present when the tests ran), and beside them: resolution (RESOLVED_FULL /
    _PARTIAL / _NO), status_map (test id -> PASSED/FAILED/...), test_exit_code, timed_out, error,
    duration_s, swebench_version, log. An empty or None patch is not applied; the tests still run on
    the base (so the report shows what fails there) and it is never resolved, as in the harness.
    """
    grading = _swebench()
    from comem_cli.sandbox import Sandbox, docker_client

    iid = instance["instance_id"]
    image = instance.get("image")
    test_cmd = instance.get("test_cmd")
    if not image or not test_cmd:
        raise UserError(f"{iid}: the instance needs `image` and `test_cmd` to be evaluated locally")
    _require_image(docker_client(), image)
    has_patch = bool(model_patch and model_patch.strip())
    f2p, p2p = as_list(instance.get("FAIL_TO_PASS")), as_list(instance.get("PASS_TO_PASS"))
    test_spec = grading.TestSpec(
        instance_id=iid, image=image, eval_script_list=[], repo=instance.get("repo", ""),
        version=str(instance.get("version", "")), FAIL_TO_PASS=f2p, PASS_TO_PASS=p2p,
        log_parser=instance.get("log_parser", DEFAULT_LOG_PARSER), eval_type=grading.EvalType.PASS_AND_FAIL.value,
    )
    config = (sandbox_config or SandboxConfig()).model_copy(
        update={"image": image, "workdir": WORKDIR, "command_timeout_s": int(timeout), "network": False})

    start = time.time()
    log: list[str] = []
    applied = not has_patch
    timed_out = False
    error = None
    with Sandbox(config, labels={"comem.eval": iid[:60]}) as sb:
        base = instance.get("base_commit") or sb.execute("git rev-parse HEAD", timeout=30).output.strip()
        test_patch = instance.get("test_patch") or ""
        files = {"model.diff": _with_newline(model_patch or ""), "test.diff": _with_newline(test_patch),
                 "eval.sh": _eval_script(base, test_patch, test_cmd, grading)}
        _put_files(sb, files)
        if has_patch:
            applied, apply_log = _apply(sb, f"{EVAL_DIR}/model.diff", grading)
            log.append(apply_log)
        if applied:
            result = sb.execute(f"bash {EVAL_DIR}/eval.sh", timeout=int(timeout))
            log.append(result.output)
            if result.timed_out:
                timed_out = True
                error = f"tests timed out after {timeout} s"
                log.append(f"\n\nTimeout error: {timeout} seconds exceeded.\n{grading.TESTS_TIMEOUT}\n")
        else:
            error = "the patch does not apply"
    text = "".join(part if part.endswith("\n") else part + "\n" for part in log)

    with tempfile.TemporaryDirectory(prefix="comem-eval-") as tmp:
        log_path = Path(tmp) / "test_output.txt"
        log_path.write_text(text)
        prediction = {"instance_id": iid, "model_name_or_path": "comem", "model_patch": model_patch or ""}
        report = grading.get_eval_report(test_spec, prediction, str(log_path), include_tests_status=True)[iid]
        status_map, found = grading.get_logs_eval(test_spec, str(log_path))
    if not has_patch:  # nothing to apply: the base's results, never resolved
        report["patch_is_None"] = model_patch is None
        report["patch_exists"] = False
        report["patch_successfully_applied"] = False
        report["resolved"] = False
    resolution = grading.ResolvedStatus.NO.value
    if has_patch and "tests_status" in report:
        resolution = grading.get_resolution_status(report["tests_status"])
    if error is None and applied and not found:
        error = "no test results in the log"
    return {
        "instance_id": iid,
        **report,
        "resolution": resolution,
        "status_map": status_map,
        "test_exit_code": grading.parse_test_exit_code(text),
        "timed_out": timed_out,
        "error": error,
        "duration_s": round(time.time() - start, 3),
        "swebench_version": grading.version,
        "log": text,
    }


# ---------------------------------------------------------------------------------------------- helpers


class _Grading:
    """The parts of the swebench package used here, imported once."""

    def __init__(self) -> None:
        import swebench
        from swebench.harness import constants, grading

        try:
            from swebench.types import TestSpec
        except ImportError:  # swebench < 5
            from swebench.harness.test_spec.test_spec import TestSpec
        self.version = getattr(swebench, "__version__", "?")
        self.TestSpec = TestSpec
        self.EvalType = constants.EvalType
        self.ResolvedStatus = constants.ResolvedStatus
        self.APPLY_PATCH_FAIL = constants.APPLY_PATCH_FAIL
        self.APPLY_PATCH_PASS = constants.APPLY_PATCH_PASS
        self.START_TEST_OUTPUT = constants.START_TEST_OUTPUT
        self.END_TEST_OUTPUT = constants.END_TEST_OUTPUT
        self.TESTS_TIMEOUT = constants.TESTS_TIMEOUT
        self.TEST_EXIT_CODE = getattr(constants, "TEST_EXIT_CODE", ">>>>> Test Exit Code")
        self.get_eval_report = grading.get_eval_report
        self.get_logs_eval = grading.get_logs_eval
        self.get_resolution_status = grading.get_resolution_status
        self.parse_test_exit_code = getattr(grading, "parse_test_exit_code", lambda text: None)


_GRADING: _Grading | None = None
_GRADING_LOCK = threading.Lock()


def _swebench() -> _Grading:
    """swebench.harness imports its whole harness (a few seconds, once per process)."""
    global _GRADING
    with _GRADING_LOCK:
        if _GRADING is None:
            try:
                _GRADING = _Grading()
            except ImportError as e:
                raise UserError(f"evaluation needs the swebench package ({e}): "
                                f"pip install swebench=={SWEBENCH_VERSION}") from None
        return _GRADING


def _require_image(client, image: str) -> None:
    import docker

    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        if image.startswith("comem-swe-mini-"):
            raise UserError(f"Docker image {image!r} not found; build the swe-mini images with "
                            "`bash sandbox/swe-mini/build.sh` (needs PyPI once)") from None
        raise UserError(f"Docker image {image!r} not found; pull or build it first") from None


def _with_newline(text: str) -> str:
    return text if not text or text.endswith("\n") else text + "\n"


def _put_files(sb, files: dict[str, str]) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"comem_eval/{name}")
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    sb.container.put_archive("/tmp", buf.getvalue())


def _apply(sb, patch_path: str, grading: _Grading) -> tuple[bool, str]:
    """The harness's apply chain, restarting from a clean tree after a failed attempt."""
    out: list[str] = []
    last = ""
    for attempt, cmd in enumerate(APPLY_CMDS):
        if attempt:
            sb.execute("git checkout -- . && git clean -fdq", timeout=60)
        result = sb.execute(f"{cmd} {patch_path}", timeout=120)
        if result.returncode == 0:
            return True, "".join(out) + f"{grading.APPLY_PATCH_PASS} ({cmd}):\n{result.output}"
        out.append(f"Failed to apply patch to container: {cmd}\n")
        last = result.output
    sb.execute("git checkout -- . && git clean -fdq", timeout=60)
    if sb.execute(f"git apply --check --reverse {patch_path}", timeout=60).returncode == 0:
        return True, "".join(out) + f"{grading.APPLY_PATCH_PASS}: verified already applied\n"
    return False, "".join(out) + f"{grading.APPLY_PATCH_FAIL}:\n{last}"


def _eval_script(base: str, test_patch: str, test_cmd: str, grading: _Grading) -> str:
    """Like the harness's eval.sh: reset the test files, apply the test patch, run between markers."""
    test_files = sorted({path for m in _DIFF_FILE.finditer(test_patch) for path in m.groups()})
    # a test file the base has is reset to it; one it lacks is removed (the test patch creates it)
    reset = (f"for f in {' '.join(shlex.quote(f) for f in test_files)}; do "
             f"git checkout -q {base} -- \"$f\" 2>/dev/null || rm -f -- \"$f\"; done") if test_files else ":"
    lines = ["#!/bin/bash", "set -uo pipefail", f"cd {WORKDIR}", reset]
    if test_patch.strip():
        lines.append(f"git apply --verbose {EVAL_DIR}/test.diff || echo 'comem: the test patch does not apply'")
    lines += [
        f"echo {shlex.quote(grading.START_TEST_OUTPUT)}",
        test_cmd,
        "rc=$?",
        f"echo {shlex.quote(grading.END_TEST_OUTPUT)}",
        f"echo \"{grading.TEST_EXIT_CODE}: $rc\"",
    ]
    lines.append(reset)
    return "\n".join(lines) + "\n"
