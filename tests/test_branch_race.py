"""Two `comem fix` runs that commit to the same branch at the same moment (same --branch, or two
issues whose titles slug alike): exactly one gets the branch; the other ends with a clear error, its
patch kept in its run dir, and no branch in its meta.json. Real processes, real git, real Docker.

The moment is made, not hoped for: a clean filter in the repository holds each run's `git add`
(inside the commit, after the branch was checked and before it is written) until both are there.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from comem_cli.replay_server import SUBMIT_REPLY, Script, ScriptedServer
from tests.conftest import comem_containers, git
from tests.gates import Gate, install_waiting_filter

pytestmark = [pytest.mark.docker, pytest.mark.stress]

FIX_IT = "THOUGHT: Fix it.\n\n```bash\nsed -i 's/text.split(\" \")/text.split()/' words.py\n```"


@pytest.mark.parametrize("force", [False, True], ids=["new-branch", "force"])
def test_two_runs_finishing_together_do_not_both_take_the_branch(force, words_repo, tmp_path, docker_client):
    flags = ["--branch", "fix/same"] + (["--force"] if force else [])
    if force:  # --force overwrites what the branch held when the run looked, and nothing newer
        git(words_repo, "branch", "fix/same")
    before = git(words_repo, "rev-parse", "fix/same").strip() if force else None
    outs = [tmp_path / "runs-a", tmp_path / "runs-b"]
    with Gate() as gate, ScriptedServer(Script([FIX_IT, SUBMIT_REPLY])) as server:
        install_waiting_filter(words_repo, gate, "words.py")
        procs = [subprocess.Popen(
            [sys.executable, "-m", "comem_cli", "fix", "-r", str(words_repo), "-i", str(words_repo / "ISSUE.md"),
             "-m", "openai/scripted", "--api-base", server.url, "-o", str(out), "--memory", "full", *flags],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}) for out in outs]
        arrived = gate.wait_for(2, 600)
        gate.open()
        results = [(p, *p.communicate(timeout=300)) for p in procs]
    assert arrived, "both runs should reach the commit: " + "".join(out + err for _, out, err in results)
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 1], results
    for _, stdout, stderr in results:
        assert "Traceback" not in stderr and "internal error" not in stderr, stderr

    metas = []
    for out in outs:
        (run_dir,) = list(out.iterdir())
        meta = json.loads((run_dir / "meta.json").read_text())
        assert meta["status"] == "submitted" and comem_containers(docker_client, run_dir.name) == []
        assert "+    return len(text.split())" in (run_dir / "patch.diff").read_text()  # both patches kept
        metas.append(meta)
    (winner,) = [m for m in metas if m["branch"]]
    (loser,) = [m for m in metas if not m["branch"]]
    assert winner["commit"] == git(words_repo, "rev-parse", "fix/same").strip() != before
    assert loser["commit"] is None
    assert ("was moved" if force else "was created") in loser["apply_error"] and "someone else" in loser["apply_error"]
    (loser_stdout,) = [out for p, out, _ in results if p.returncode == 1]
    table = " ".join(re.sub(r"[│┃║]", " ", loser_stdout).split())  # the table's cells, wrapped lines joined
    assert "not created" in table and "by someone else" in table
