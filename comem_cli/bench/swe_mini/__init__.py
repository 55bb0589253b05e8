"""swe-mini: a small offline benchmark of real PyPI projects with genuine bugs, in the SWE-bench 5 schema.

instances.jsonl holds the task records, each with the fields the official harness builds its test
spec from (`image`, `eval_script`, `log_parser`, `eval_type`, `repo`, `version`, FAIL_TO_PASS,
PASS_TO_PASS); <instance_id>/bug.diff is the patch that puts the bug into the project's released
source when its image is built locally (sandbox/swe-mini/build.sh).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from comem_cli.errors import UserError

SWE_MINI_DIR = Path(__file__).resolve().parent


def load_swe_mini() -> list[dict[str, Any]]:
    """The swe-mini instances (SWE-bench 5 schema)."""
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
