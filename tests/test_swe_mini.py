"""swe-mini: the images build, every record is sound in the SWE-bench 5 schema, and the official harness
(swebench 5.x, run offline on the local images) grades it: gold resolves, the base fails exactly the
FAIL_TO_PASS tests, a patch that breaks PASS_TO_PASS or does not apply is not resolved.

Real Docker, real images (built from PyPI source distributions on first use), the real harness.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from comem_cli.bench.datasets import HARNESS_FIELDS
from comem_cli.bench.harness import harness_evaluate
from comem_cli.bench.swe_mini import build_swe_mini_images, load_swe_mini
from comem_cli.config import SandboxConfig
from comem_cli.sandbox import Sandbox

pytestmark = pytest.mark.docker

INSTANCES = load_swe_mini()
IDS = [i["instance_id"] for i in INSTANCES]
BY_ID = {i["instance_id"]: i for i in INSTANCES}
SWEBENCH_FIELDS = {"instance_id", "repo", "base_commit", "problem_statement", "patch", "test_patch", "FAIL_TO_PASS",
                   "PASS_TO_PASS", "version", "environment_setup_commit", "created_at", "hints_text"}
REPORT_FIELDS = {"patch_is_None", "patch_exists", "patch_successfully_applied", "resolved"}
TESTS_STATUS_KEYS = {"FAIL_TO_PASS", "PASS_TO_PASS", "FAIL_TO_FAIL", "PASS_TO_FAIL"}
# A change that fixes nothing (a new, unrelated file): the harness runs the tests on the buggy base.
NO_FIX = "diff --git a/COMEM_NOTE.txt b/COMEM_NOTE.txt\nnew file mode 100644\n--- /dev/null\n+++ b/COMEM_NOTE.txt\n" \
         "@@ -0,0 +1 @@\n+not a fix\n"

# A "fix" for the more-itertools task that makes FAIL_TO_PASS pass but yields keys instead of items on
# the hashable path, which breaks a PASS_TO_PASS test (test_custom_key).
BREAKS_P2P_ID = "more-itertools__more-itertools-mini-1"
BREAKS_P2P = """\
diff --git a/more_itertools/recipes.py b/more_itertools/recipes.py
--- a/more_itertools/recipes.py
+++ b/more_itertools/recipes.py
@@ -518,10 +518,10 @@ def unique_everseen(iterable, key=None):
         try:
             if k not in seenset:
                 seenset_add(k)
-                yield element
+                yield k
         except TypeError:
             if k not in seenlist:
-                seenlist_add(element)
+                seenlist_add(k)
                 yield element
 
 
"""


@pytest.fixture(scope="module")
def images(docker_client):
    """Build what is missing (minutes, once), then check that a second build is a no-op."""
    build_swe_mini_images()
    start = time.time()
    names = build_swe_mini_images()
    assert time.time() - start < 30, "build.sh must skip images that exist"
    for name in names:
        docker_client.images.get(name)
    return names


@pytest.fixture(scope="module")
def reports(images, tmp_path_factory):
    """The official harness on every instance with its gold patch and with a change that fixes nothing,
    and on a patch that breaks PASS_TO_PASS and one that does not apply: {(id, kind): report}."""
    toolz = BY_ID["pytoolz__toolz-mini-1"]
    bad = toolz["patch"].replace("            d = dtemp = d[k]\n", "            d = dtemp = d[key]\n")
    assert bad != toolz["patch"]
    rounds = {
        "gold": {iid: BY_ID[iid]["patch"] for iid in IDS},
        "no_fix": {iid: NO_FIX for iid in IDS},
        "odd": {BREAKS_P2P_ID: BREAKS_P2P, toolz["instance_id"]: bad},
    }
    def grade(kind: str) -> dict:  # the rounds are separate harness runs (one prediction per instance each), side by side
        patches = rounds[kind]
        preds = {iid: {"instance_id": iid, "model_name_or_path": f"test-{kind}", "model_patch": p} for iid, p in patches.items()}
        got = harness_evaluate(INSTANCES, preds, tmp_path_factory.mktemp(kind), workers=2, timeout=300, label=kind)
        assert set(got) == set(patches)
        return {(iid, kind): report for iid, report in got.items()}

    from concurrent.futures import ThreadPoolExecutor

    out = {}
    with ThreadPoolExecutor(len(rounds)) as pool:
        for got in pool.map(grade, rounds):
            out.update(got)
    return out


def test_records_follow_the_swebench5_schema():
    """Every record is one the official harness builds a test spec from (swebench's own make_test_spec)."""
    from swebench.harness.utils import make_test_spec

    assert len(INSTANCES) >= 6
    assert len(set(IDS)) == len(IDS)
    assert len({i["repo"] for i in INSTANCES}) >= 6, "each task is a different real project"
    for inst in INSTANCES:
        assert SWEBENCH_FIELDS | set(HARNESS_FIELDS) <= set(inst), inst["instance_id"]
        assert inst["log_parser"] == "parse_log_pytest" and inst["eval_type"] == "pass_and_fail"
        for key in ("FAIL_TO_PASS", "PASS_TO_PASS"):
            assert isinstance(inst[key], str), f"{key} is a JSON string, as in SWE-bench"
            tests = json.loads(inst[key])
            assert isinstance(tests, list) and tests and all(isinstance(t, str) and " " not in t for t in tests)
        spec = make_test_spec(inst)
        assert spec.image == inst["image"] and spec.FAIL_TO_PASS == json.loads(inst["FAIL_TO_PASS"])
        assert not set(spec.FAIL_TO_PASS) & set(spec.PASS_TO_PASS)
        assert re.fullmatch(r"[0-9a-f]{40}", inst["base_commit"])
        assert inst["environment_setup_commit"] == inst["base_commit"]
        assert re.fullmatch(r"comem-swe-mini-[a-z0-9-]+:[\w.-]+", inst["image"])
        assert inst["patch"].startswith("diff --git") and inst["test_patch"].startswith("diff --git")
        test_files = set(re.findall(r"^diff --git a/\S+ b/(\S+)", inst["test_patch"], re.M))
        gold_files = set(re.findall(r"^diff --git a/\S+ b/(\S+)", inst["patch"], re.M))
        assert test_files and not test_files & gold_files, "the gold patch does not touch the tests"
        script = spec.eval_script
        assert inst["test_patch"].rstrip("\n") in script, "the eval script applies the test patch"
        run = script.split(": '>>>>> Start Test Output'\n")[1].split("\n")[0]
        assert run.startswith("python -m pytest -rA"), run
        assert all(t.split("::")[0] in run for t in spec.FAIL_TO_PASS + spec.PASS_TO_PASS), "it runs every listed test"
        assert "SWEBENCH_TEST_EXIT_CODE=$?" in script, "the harness records the test command's exit status"
        assert "diff --git" not in inst["problem_statement"], "the issue describes the symptom, not the fix"


def _run_in_image(inst: dict, files: dict[str, str], command: str) -> tuple[int, str]:
    """A command in a fresh container of the instance image, with `files` under /tmp/chk."""
    with Sandbox(SandboxConfig(image=inst["image"], command_timeout_s=60)) as sb:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, text in files.items():
                data = text.encode()
                info = tarfile.TarInfo(f"chk/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        sb.container.put_archive("/tmp", buf.getvalue())
        result = sb.execute(command)
        return result.returncode, result.output


def test_images_hold_the_buggy_base_commit_and_not_the_tests(images):
    command = (
        "set -e; git rev-parse HEAD; git rev-list --count HEAD; git status --porcelain | wc -l; "
        "python -c 'import sys; print(sys.prefix)'; python -m pytest --version >/dev/null; "
        "git apply --check /tmp/chk/test.diff; git apply --check /tmp/chk/gold.diff; "
        "if git apply --check --reverse /tmp/chk/test.diff 2>/dev/null; then echo TESTS-ALREADY-THERE; fi; "
        "if git apply --check --reverse /tmp/chk/gold.diff 2>/dev/null; then echo FIX-ALREADY-THERE; fi"
    )

    def check(inst):
        return _run_in_image(inst, {"test.diff": inst["test_patch"], "gold.diff": inst["patch"]}, command)

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(zip(IDS, pool.map(check, INSTANCES)))
    for iid, (rc, out) in results.items():
        assert rc == 0, f"{iid}: {out}"
        head, count, dirty, prefix = out.split()[:4]
        assert head == BY_ID[iid]["base_commit"], f"{iid}: image HEAD {head} != base_commit"
        assert (count, dirty) == ("1", "0"), f"{iid}: a single clean commit"
        assert prefix == "/opt/venv", f"{iid}: python on PATH is the venv's"
        assert "ALREADY-THERE" not in out, f"{iid}: {out}"


@pytest.mark.parametrize("iid", IDS)
def test_gold_patch_resolves(reports, iid):
    report = reports[(iid, "gold")]
    assert REPORT_FIELDS <= set(report) and set(report["tests_status"]) == TESTS_STATUS_KEYS
    assert report["patch_exists"] and not report["patch_is_None"] and report["patch_successfully_applied"]
    assert report["resolved"] is True and report["status"] == "resolved", json.dumps(report, indent=1)
    inst = BY_ID[iid]
    assert sorted(report["tests_status"]["FAIL_TO_PASS"]["success"]) == sorted(json.loads(inst["FAIL_TO_PASS"]))
    assert sorted(report["tests_status"]["PASS_TO_PASS"]["success"]) == sorted(json.loads(inst["PASS_TO_PASS"]))
    log = open(f"{report['harness_logs']}/test_output.txt").read()
    assert ">>>>> Start Test Output" in log and ">>>>> Test Exit Code: 0" in log, "the test files pass as a whole once fixed"


@pytest.mark.parametrize("iid", IDS)
def test_without_a_fix_exactly_fail_to_pass_fails(reports, iid):
    report = reports[(iid, "no_fix")]
    inst = BY_ID[iid]
    assert report["patch_successfully_applied"] is True and report["resolved"] is False
    status = report["tests_status"]
    assert status["FAIL_TO_PASS"]["success"] == []
    assert sorted(status["FAIL_TO_PASS"]["failure"]) == sorted(json.loads(inst["FAIL_TO_PASS"]))
    assert sorted(status["PASS_TO_PASS"]["success"]) == sorted(json.loads(inst["PASS_TO_PASS"]))
    assert status["PASS_TO_PASS"]["failure"] == []


def test_a_patch_that_breaks_pass_to_pass_does_not_resolve(reports):
    report = reports[(BREAKS_P2P_ID, "odd")]
    assert report["patch_successfully_applied"] is True
    assert report["resolved"] is False
    status = report["tests_status"]
    assert status["FAIL_TO_PASS"]["failure"] == []
    assert "tests/test_recipes.py::UniqueEverseenTests::test_custom_key" in status["PASS_TO_PASS"]["failure"]


def test_a_patch_that_does_not_apply_is_not_resolved(reports, docker_client):
    report = reports[("pytoolz__toolz-mini-1", "odd")]
    assert report["patch_exists"] is True
    assert report["patch_successfully_applied"] is False
    assert report["resolved"] is False and report["status"] == "error" and report["error"] == "the patch does not apply"
    assert ">>>>> Patch Apply Failed" in open(f"{report['harness_logs']}/run_instance.log").read()
    for kind in ("gold", "no_fix", "odd"):
        assert not docker_client.containers.list(all=True, filters={"name": f"comem-{kind}-"}), "containers are removed"
